/* A progress bar on stderr for long file operations (save, load, inspect), drawn only where a
 * person watches: stderr a terminal (or --progress always). */
#define _POSIX_C_SOURCE 200809L
#include <time.h>
#include <unistd.h>

#include "kvp_tool.h"

#define BAR_WIDTH 30

double kvp_tool_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void draw(kvp_progress *p) {
  const double frac = p->total > 0 ? (double)p->done / (double)p->total : 1.0;
  const int filled = (int)(frac * BAR_WIDTH + 0.5);
  const double secs = kvp_tool_now() - p->started;
  char done[32], total[32];
  int i;
  fprintf(stderr, "\r%-9s [", p->label);
  for (i = 0; i < BAR_WIDTH; ++i) fputc(i < filled ? '#' : '.', stderr);
  fprintf(stderr, "] %3d%%  %s / %s", (int)(frac * 100.0), kvp_tool_fmt_bytes((int64_t)p->done, done, sizeof done),
          kvp_tool_fmt_bytes((int64_t)p->total, total, sizeof total));
  if (secs > 0.05) fprintf(stderr, "  %.0f MiB/s", (double)p->done / secs / (1024.0 * 1024.0));
  fprintf(stderr, "\033[K"); /* erase what a longer earlier line left */
  fflush(stderr);
  p->drawn = kvp_tool_now();
}

void kvp_progress_begin(kvp_progress *p, const char *label, uint64_t total, kvp_progress_mode mode) {
  p->label = label;
  p->total = total;
  p->done = 0;
  p->started = kvp_tool_now();
  p->drawn = 0.0;
  p->enabled = mode == KVP_PROGRESS_ALWAYS ||
               (mode == KVP_PROGRESS_AUTO && isatty(STDERR_FILENO) && total >= (uint64_t)KVP_PROGRESS_MIN_BYTES);
  if (p->enabled) draw(p);
}

void kvp_progress_set(kvp_progress *p, uint64_t done) {
  p->done = done > p->total ? p->total : done;
  if (p->enabled && kvp_tool_now() - p->drawn >= 0.1) draw(p);
}

void kvp_progress_end(kvp_progress *p, int ok) {
  if (!p->enabled) return;
  if (ok) {
    p->done = p->total;
    draw(p);
    fputc('\n', stderr);
  } else {
    fprintf(stderr, "\r\033[K");
  }
  fflush(stderr);
  p->enabled = 0;
}
