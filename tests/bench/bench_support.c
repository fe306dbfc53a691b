#define _POSIX_C_SOURCE 200809L
#include "bench_support.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

void bench_cpu_model(char *out, size_t n) {
  char line[512];
  FILE *f = fopen("/proc/cpuinfo", "r");
  snprintf(out, n, "unknown CPU");
  if (f == NULL) return;
  while (fgets(line, sizeof line, f) != NULL)
    if (strncmp(line, "model name", 10) == 0) {
      const char *p = strchr(line, ':');
      if (p != NULL) {
        snprintf(out, n, "%s", p + 2);
        out[strcspn(out, "\n")] = '\0';
      }
      break;
    }
  fclose(f);
}

void bench_utc_date(char *out, size_t n) {
  const time_t t = time(NULL);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(out, n, "%Y-%m-%d %H:%M UTC", &tm);
}

double bench_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

uint64_t bench_rand(void) {
  static uint64_t state = 88172645463325252ull;
  state ^= state << 13;
  state ^= state >> 7;
  state ^= state << 17;
  return state;
}
