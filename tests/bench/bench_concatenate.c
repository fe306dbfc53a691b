/* Benchmark (not a test): kvp_concatenate throughput on the CPU for several model shapes and
 * token counts 1 .. 16384, as GB/s and as a ratio to memcpy of the same bytes measured in the
 * same run, on 1 thread and on all threads (the process re-runs itself with KVP_NUM_THREADS).
 *
 * Bytes counted: the K and V input bytes of the batch (= the bytes written to the cache when
 * the input dtype equals the cache dtype and the layout has no padding). The memcpy baseline
 * copies exactly those bytes (key and value buffers into two pre-touched destination buffers),
 * single-threaded, in the same process; a second baseline splits that copy over the row's thread
 * count (helper threads that sleep while kvpages is timed).
 *
 * Batches: N <= 64 tokens are N decode requests (one token each, at scattered positions);
 * larger N are prefill requests of up to 512 tokens each. Pages are handed out in a shuffled
 * order, as a page pool would after a while.
 *
 * Usage: bench_concatenate [--quick]   (--quick: fewer shapes and token counts)
 * KVP_BENCH_SHAPE=text runs only the shapes whose name contains `text` (e.g. "f32->"). */
#define _POSIX_C_SOURCE 200809L
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvpages.h"

typedef struct shape {
  const char *name;
  int64_t H, D;
  kvp_layout layout;
  kvp_dtype in, cache;
} shape;

static const shape kShapes[] = {
    {"llama3-8b (8x128)", 8, 128, KVP_LAYOUT_V3, KVP_DTYPE_BF16, KVP_DTYPE_BF16},
    {"llama3.2-1b (8x64, h64)", 8, 64, KVP_LAYOUT_V3, KVP_DTYPE_BF16, KVP_DTYPE_BF16},
    {"phi3-mini (32x96, padded)", 32, 96, KVP_LAYOUT_V3, KVP_DTYPE_BF16, KVP_DTYPE_BF16},
    {"llama3-8b v2 layout", 8, 128, KVP_LAYOUT_V2, KVP_DTYPE_BF16, KVP_DTYPE_BF16},
    {"llama3-8b f32->fp8e4m3", 8, 128, KVP_LAYOUT_V3, KVP_DTYPE_F32, KVP_DTYPE_F8_E4M3FN},
    {"llama3-8b f32->bf16", 8, 128, KVP_LAYOUT_V3, KVP_DTYPE_F32, KVP_DTYPE_BF16},
    {"llama3-8b f32->f16", 8, 128, KVP_LAYOUT_V3, KVP_DTYPE_F32, KVP_DTYPE_F16},
    {"llama3-8b bf16->fp8e4m3", 8, 128, KVP_LAYOUT_V3, KVP_DTYPE_BF16, KVP_DTYPE_F8_E4M3FN},
};
static const int64_t kTokens[] = {1, 4, 16, 64, 256, 1024, 4096, 16384};

#define PAGE 16
#define MAX_TOKENS 16384

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static void die(const char *what) {
  fprintf(stderr, "bench_concatenate: %s: %s\n", what, kvp_last_error_message());
  exit(1);
}

/* Best time of repeated calls of fn(arg) until ~min_s elapsed (at least 3 runs). */
typedef void (*run_fn)(void *);
static double best_time(run_fn fn, void *arg, double min_s) {
  double best = 1e30, start = now_s();
  int reps = 0;
  fn(arg); /* warm-up: first touch */
  while (reps < 3 || now_s() - start < min_s) {
    /* batch tiny calls so the clock resolution does not dominate */
    int inner = 1, i;
    double t0, dt;
    if (best < 20e-6) inner = 64;
    t0 = now_s();
    for (i = 0; i < inner; ++i) fn(arg);
    dt = (now_s() - t0) / inner;
    if (dt < best) best = dt;
    ++reps;
    if (reps > 200000) break;
  }
  return best;
}

typedef struct concat_arg {
  kvp_cache *cache;
  kvp_tensor k, v;
  kvp_metadata *md;
} concat_arg;

static void run_concat(void *p) {
  concat_arg *a = (concat_arg *)p;
  if (kvp_concatenate(a->cache, 0, &a->k, &a->v, a->md, NULL) != KVP_OK) die("kvp_concatenate");
}

typedef struct copy_arg {
  void *dk, *dv;
  const void *sk, *sv;
  size_t bytes;
} copy_arg;

static void run_copy(void *p) {
  copy_arg *a = (copy_arg *)p;
  memcpy(a->dk, a->sk, a->bytes);
  memcpy(a->dv, a->sv, a->bytes);
}

/* The same copy split over `g_copy_threads` threads (the calling one included): the memory
 * bandwidth the library's thread pool could reach at best, the limit for the multi-thread rows.
 * Helpers sleep on a condition variable between copies, so they take no CPU from kvpages while
 * it is being timed. */
static int g_copy_threads = 1;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_go = PTHREAD_COND_INITIALIZER, g_done = PTHREAD_COND_INITIALIZER;
static const copy_arg *g_job;
static unsigned long g_gen;
static int g_left;

static void copy_share(const copy_arg *a, int part, int parts) {
  const size_t per = (a->bytes / (size_t)parts + 63) & ~(size_t)63, lo = per * (size_t)part;
  const size_t hi = lo + per < a->bytes ? lo + per : a->bytes;
  if (lo >= hi) return;
  memcpy((char *)a->dk + lo, (const char *)a->sk + lo, hi - lo);
  memcpy((char *)a->dv + lo, (const char *)a->sv + lo, hi - lo);
}

static void *copy_helper(void *p) {
  const int part = (int)(intptr_t)p;
  unsigned long seen = 0;
  for (;;) {
    const copy_arg *a;
    pthread_mutex_lock(&g_mu);
    while (g_gen == seen) pthread_cond_wait(&g_go, &g_mu);
    seen = g_gen;
    a = g_job;
    pthread_mutex_unlock(&g_mu);
    copy_share(a, part, g_copy_threads);
    pthread_mutex_lock(&g_mu);
    if (--g_left == 0) pthread_cond_signal(&g_done);
    pthread_mutex_unlock(&g_mu);
  }
  return NULL;
}

static void start_copy_helpers(int threads) {
  int i;
  g_copy_threads = threads;
  for (i = 1; i < threads; ++i) {
    pthread_t t;
    if (pthread_create(&t, NULL, copy_helper, (void *)(intptr_t)i) != 0) {
      g_copy_threads = i;
      break;
    }
    pthread_detach(t);
  }
}

static void run_copy_parallel(void *p) {
  const copy_arg *a = (const copy_arg *)p;
  if (g_copy_threads <= 1) {
    run_copy(p);
    return;
  }
  pthread_mutex_lock(&g_mu);
  g_job = a;
  g_left = g_copy_threads - 1;
  ++g_gen;
  pthread_cond_broadcast(&g_go);
  pthread_mutex_unlock(&g_mu);
  copy_share(a, 0, g_copy_threads);
  pthread_mutex_lock(&g_mu);
  while (g_left > 0) pthread_cond_wait(&g_done, &g_mu);
  pthread_mutex_unlock(&g_mu);
}

static void bench_shape(const shape *s, int quick, const char *threads) {
  kvp_config_options o;
  kvp_config cfg;
  kvp_layout_info li;
  kvp_cache *cache = NULL;
  const int64_t pages_needed = MAX_TOKENS / PAGE + 64 + 2;
  const int64_t in_sz = kvp_dtype_bits(s->in) / 8;
  const int64_t elems = (int64_t)MAX_TOKENS * s->H * s->D;
  unsigned char *kin, *vin, *dk, *dv;
  int32_t *perm;
  size_t ti;
  int64_t i;

  kvp_config_options_init(&o, sizeof o);
  o.num_hidden_layers = 1;
  o.num_kv_heads = s->H;
  o.kv_head_dim_size = s->D;
  o.max_model_length = 8192;
  o.page_size = PAGE;
  o.kvdtype = s->cache;
  o.version = s->layout;
  o.flags = KVP_CONFIG_FLAG_NO_SAFETY_MARGIN;
  {
    kvp_config probe;
    kvp_config_init(&probe, sizeof probe);
    probe.num_hidden_layers = 1;
    probe.num_kv_heads = s->H;
    probe.k_headdim = probe.v_headdim = s->D;
    probe.max_model_length = 8192;
    probe.page_size = PAGE;
    probe.kvdtype = s->cache;
    probe.version = s->layout;
    li.struct_size = sizeof li;
    if (kvp_config_get_layout(&probe, &li) != KVP_OK) die("layout");
    o.budget_bytes = li.page_bytes_per_layer * pages_needed;
  }
  if (kvp_config_create(&o, &cfg) != KVP_OK) die("kvp_config_create");
  if (kvp_cache_create(&cfg, NULL, &cache) != KVP_OK) die("kvp_cache_create");

  kin = (unsigned char *)malloc((size_t)(elems * in_sz));
  vin = (unsigned char *)malloc((size_t)(elems * in_sz));
  dk = (unsigned char *)malloc((size_t)(elems * in_sz));
  dv = (unsigned char *)malloc((size_t)(elems * in_sz));
  perm = (int32_t *)malloc(sizeof(int32_t) * (size_t)cfg.num_pages);
  if (!kin || !vin || !dk || !dv || !perm) {
    fprintf(stderr, "bench_concatenate: out of memory\n");
    exit(1);
  }
  for (i = 0; i < elems * in_sz; ++i) {
    kin[i] = (unsigned char)(rnd() & 0x3F); /* finite values in any dtype */
    vin[i] = (unsigned char)(rnd() & 0x3F);
  }
  memset(dk, 1, (size_t)(elems * in_sz));
  memset(dv, 1, (size_t)(elems * in_sz));
  for (i = 1; i < cfg.num_pages; ++i) perm[i - 1] = (int32_t)i;
  for (i = cfg.num_pages - 2; i > 0; --i) {
    int64_t j = (int64_t)(rnd() % (uint64_t)(i + 1));
    int32_t x = perm[i];
    perm[i] = perm[j];
    perm[j] = x;
  }

  for (ti = 0; ti < sizeof kTokens / sizeof kTokens[0]; ++ti) {
    const int64_t N = kTokens[ti];
    kvp_batch_request reqs[64];
    int32_t pages_buf[MAX_TOKENS / PAGE + 64];
    int nreq = 0;
    int64_t used = 0;
    kvp_metadata *md = NULL;
    concat_arg ca;
    copy_arg cp;
    double tc, tm, tmp;
    const double bytes = (double)(2 * N * s->H * s->D * in_sz);
    if (quick && (N == 4 || N == 64 || N == 4096)) continue;
    if (N <= 64) {
      for (i = 0; i < N; ++i) { /* decodes: one page each, position 5 + i */
        pages_buf[used] = perm[used];
        reqs[nreq].num_computed = 5 + i % 11;
        reqs[nreq].num_scheduled = 1;
        reqs[nreq].page_ids = &pages_buf[used];
        reqs[nreq].num_pages = 1;
        used += 1;
        nreq++;
      }
    } else {
      int64_t left = N;
      while (left > 0) {
        const int64_t n = left < 512 ? left : 512, np = (n + PAGE - 1) / PAGE;
        for (i = 0; i < np; ++i) pages_buf[used + i] = perm[used + i];
        reqs[nreq].num_computed = 0;
        reqs[nreq].num_scheduled = n;
        reqs[nreq].page_ids = &pages_buf[used];
        reqs[nreq].num_pages = np;
        used += np;
        nreq++;
        left -= n;
      }
    }
    if (kvp_metadata_build(&cfg, reqs, (uint32_t)nreq, NULL, NULL, &md) != KVP_OK) die("kvp_metadata_build");
    memset(&ca.k, 0, sizeof ca.k);
    ca.k.data = kin;
    ca.k.dtype = s->in;
    ca.k.ndim = 3;
    ca.k.shape[0] = N;
    ca.k.shape[1] = s->H;
    ca.k.shape[2] = s->D;
    ca.k.strides[0] = s->H * s->D;
    ca.k.strides[1] = s->D;
    ca.k.strides[2] = 1;
    ca.k.device_type = KVP_DEVICE_CPU;
    ca.v = ca.k;
    ca.v.data = vin;
    ca.cache = cache;
    ca.md = md;
    cp.dk = dk;
    cp.dv = dv;
    cp.sk = kin;
    cp.sv = vin;
    cp.bytes = (size_t)(N * s->H * s->D * in_sz);
    tm = best_time(run_copy, &cp, 0.02);
    tmp = g_copy_threads > 1 ? best_time(run_copy_parallel, &cp, 0.02) : tm;
    tc = best_time(run_concat, &ca, 0.03);
    printf("| %-26s | %s | %-4s->%-10s | %5" PRId64 " | %3s | %10.2f | %7.2f | %7.2f | %5.2f | %7.2f | %5.2f |\n",
           s->name, kvp_layout_name(s->layout), kvp_dtype_name(s->in), kvp_dtype_name(s->cache), N, threads,
           tc * 1e6, bytes / tc / 1e9, bytes / tm / 1e9, tm / tc, bytes / tmp / 1e9, tmp / tc);
    fflush(stdout);
    kvp_metadata_destroy(md);
  }
  free(kin);
  free(vin);
  free(dk);
  free(dv);
  free(perm);
  kvp_cache_destroy(cache);
}

int main(int argc, char **argv) {
  const int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
  const char *child = getenv("KVP_BENCH_CHILD");
  size_t s;
  if (child == NULL) {
    /* Parent: print the header, then run the table once per thread count in child processes
     * (the library sizes its CPU thread pool from KVP_NUM_THREADS once per process). */
    const long nproc = sysconf(_SC_NPROCESSORS_ONLN);
    char model[256] = "unknown CPU", line[512], date[64], nbuf[32];
    FILE *f = fopen("/proc/cpuinfo", "r");
    time_t t = time(NULL);
    long counts[2];
    int nc = nproc > 1 ? 2 : 1, c;
    if (f != NULL) {
      while (fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, "model name", 10) == 0) {
          char *p = strchr(line, ':');
          if (p != NULL) {
            snprintf(model, sizeof model, "%s", p + 2);
            model[strcspn(model, "\n")] = 0;
          }
          break;
        }
      fclose(f);
    }
    strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", gmtime(&t));
    printf("# kvp_concatenate on the CPU\n\n");
    printf("- date: %s\n- machine: %s, %ld logical CPUs\n- library: %s\n", date, model, nproc, kvp_build_info());
    printf("- bytes = K+V input bytes; memcpy = single-thread memcpy of the same bytes in the same run;\n"
           "  ratio = memcpy time / concatenate time (1.00 = as fast as memcpy); memcpy xN = the same copy\n"
           "  split over the row's N threads (the bandwidth limit for multi-thread rows) and its ratio.\n"
           "  Page size %d.\n\n",
           PAGE);
    printf("| shape | layout | dtype in->cache | tokens | thr | concat us | GB/s | memcpy GB/s | ratio "
           "| memcpy xN GB/s | ratio xN |\n");
    printf("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    fflush(stdout);
    counts[0] = 1;
    counts[1] = nproc;
    for (c = 0; c < nc; ++c) {
      pid_t pid;
      snprintf(nbuf, sizeof nbuf, "%ld", counts[c]);
      pid = fork();
      if (pid == 0) {
        setenv("KVP_NUM_THREADS", nbuf, 1); /* the library's CPU thread pool */
        setenv("KVP_BENCH_CHILD", nbuf, 1);
        execv("/proc/self/exe", argv);
        perror("execv");
        _exit(127);
      } else if (pid > 0) {
        int st = 0;
        waitpid(pid, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) return 1;
      } else {
        perror("fork");
        return 1;
      }
    }
    return 0;
  }
  start_copy_helpers(atoi(child) > 0 ? atoi(child) : 1);
  for (s = 0; s < sizeof kShapes / sizeof kShapes[0]; ++s) {
    const char *only = getenv("KVP_BENCH_SHAPE");
    if (quick && s >= 3) break;
    if (only != NULL && strstr(kShapes[s].name, only) == NULL) continue;
    bench_shape(&kShapes[s], quick, child);
  }
  return 0;
}
