/* What the benchmarks share: their clock, their pseudo-random numbers, and what each prints about
 * its run (the CPU and the date). */
#ifndef KVP_BENCH_SUPPORT_H
#define KVP_BENCH_SUPPORT_H

#include <stddef.h>
#include <stdint.h>

/* Seconds on the monotonic clock. */
double bench_now_s(void);

/* The next number of one process-wide xorshift64 sequence (the same sequence in every run). */
uint64_t bench_rand(void);

/* The CPU's model name from /proc/cpuinfo, or "unknown CPU". */
void bench_cpu_model(char *out, size_t n);

/* Now, as "YYYY-MM-DD HH:MM UTC". */
void bench_utc_date(char *out, size_t n);

#endif
