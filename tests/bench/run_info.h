/* What every benchmark prints about its run: the CPU and the date. */
#ifndef KVP_BENCH_RUN_INFO_H
#define KVP_BENCH_RUN_INFO_H

#include <stddef.h>

/* The CPU's model name from /proc/cpuinfo, or "unknown CPU". */
void bench_cpu_model(char *out, size_t n);

/* Now, as "YYYY-MM-DD HH:MM UTC". */
void bench_utc_date(char *out, size_t n);

#endif
