/* A progress bar on stderr for long file operations (save, load, inspect), drawn only where a
 * person watches: stderr a terminal (or --progress always). */
#define _POSIX_C_SOURCE 200809L
#include <inttypes.h>
#include <pthread.h>
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

/* ---- Progress of a library call without a callback --------------------------------------------
 * The library's file calls stream with read(2) / pwrite(2) and take no progress callback, so a
 * watcher thread follows the bytes this process reads or writes (/proc/self/io, "rchar" or
 * "wchar") while the call runs. Where that file cannot be read there is no bar. */

typedef struct io_watch {
  pthread_mutex_t lock;
  pthread_cond_t wake;
  int stop;
  kvp_io_direction direction;
  uint64_t base; /* the counter before the call */
  kvp_progress *progress;
} io_watch;

static int read_io_counter(kvp_io_direction direction, uint64_t *out) {
  const char *fmt = direction == KVP_IO_READ ? "rchar: %" SCNu64 : "wchar: %" SCNu64;
  char line[128];
  int found = 0;
  FILE *f = fopen("/proc/self/io", "r");
  if (f == NULL) return -1;
  while (!found && fgets(line, sizeof line, f) != NULL) found = sscanf(line, fmt, out) == 1;
  fclose(f);
  return found ? 0 : -1;
}

static void *watch_io(void *arg) {
  io_watch *w = (io_watch *)arg;
  pthread_mutex_lock(&w->lock);
  while (!w->stop) {
    struct timespec until;
    uint64_t now = 0;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += 100000000L;
    if (until.tv_nsec >= 1000000000L) {
      until.tv_sec += 1;
      until.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&w->wake, &w->lock, &until);
    if (!w->stop && read_io_counter(w->direction, &now) == 0) kvp_progress_set(w->progress, now - w->base);
  }
  pthread_mutex_unlock(&w->lock);
  return NULL;
}

kvp_status kvp_tool_watch_io(kvp_progress *p, kvp_io_direction direction, kvp_status (*call)(void *), void *arg) {
  io_watch w;
  pthread_t thread;
  kvp_status s;
  int watching = p->enabled && read_io_counter(direction, &w.base) == 0;
  if (watching) {
    pthread_mutex_init(&w.lock, NULL);
    pthread_cond_init(&w.wake, NULL);
    w.stop = 0;
    w.direction = direction;
    w.progress = p;
    watching = pthread_create(&thread, NULL, watch_io, &w) == 0;
  }
  s = call(arg);
  if (watching) {
    pthread_mutex_lock(&w.lock);
    w.stop = 1;
    pthread_cond_signal(&w.wake);
    pthread_mutex_unlock(&w.lock);
    pthread_join(thread, NULL);
  }
  return s;
}
