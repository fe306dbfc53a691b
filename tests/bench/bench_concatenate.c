/* Benchmark (not a test): kvp_concatenate throughput on the CPU for several model shapes and
 * token counts 1 .. 16384, as GB/s and as a ratio to the faster of two copies of the same bytes
 * measured in the same run, on 1 thread and on all threads (the process re-runs itself with
 * KVP_NUM_THREADS).
 *
 * Bytes counted: the K and V input bytes of the batch (= the bytes written to the cache when
 * the input dtype equals the cache dtype and the layout has no padding). The baselines copy
 * exactly those bytes (key and value buffers into two pre-touched destination buffers) in the
 * same process: memcpy (ordinary stores below glibc's own non-temporal threshold) and a
 * streaming copy (non-temporal stores whatever the size), single-threaded; the "xN" baselines
 * split the same copies over the row's thread count (helper threads that sleep while kvpages is
 * timed). ratio = the faster baseline's time / concatenate time. A decode batch writes each token
 * to a row of its own page, which no contiguous copy pays for: the "scatter" baseline stores the
 * same input bytes into the same rows (the faster of ordinary and widest non-temporal stores;
 * same-dtype shapes, one thread), the limit for that pattern.
 *
 * Patterns: "decode" = N requests of one token each, each at its own page while the cache stays
 * under 512 MiB (beyond that, requests share pages, one row each); "prefill" = requests of up to
 * 512 tokens each. N < 16 runs decode only, N >= 16 both. Pages are handed out in a shuffled
 * order, as a page pool would after a while.
 *
 * Usage: bench_concatenate [--quick]   (--quick: fewer shapes and token counts)
 * KVP_BENCH_SHAPE=text runs only the shapes whose name contains `text` (e.g. "f32->");
 * KVP_BENCH_PATTERN=decode|prefill runs only that pattern. */
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
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define BENCH_X86 1
#else
#define BENCH_X86 0
#endif

#include "kvpages.h"
#include "bench_support.h"

typedef struct shape {
  const char *name;
  int64_t H, D;
  kvp_layout layout;
  kvp_dtype in, cache;
} shape;

static const shape kShapes[] = {
    {"llama3-8b (8x128)", 8, 128, KVP_LAYOUT_V3, KVP_DTYPE_BF16, KVP_DTYPE_BF16},
    {"mqa (1x128)", 1, 128, KVP_LAYOUT_V3, KVP_DTYPE_BF16, KVP_DTYPE_BF16},
    {"llama3.2-1b (8x64, h64)", 8, 64, KVP_LAYOUT_V3, KVP_DTYPE_BF16, KVP_DTYPE_BF16},
    {"phi3-mini (32x96, padded)", 32, 96, KVP_LAYOUT_V3, KVP_DTYPE_BF16, KVP_DTYPE_BF16},
    {"llama3-8b v2 layout", 8, 128, KVP_LAYOUT_V2, KVP_DTYPE_BF16, KVP_DTYPE_BF16},
    {"llama3-8b f16", 8, 128, KVP_LAYOUT_V3, KVP_DTYPE_F16, KVP_DTYPE_F16},
    {"llama3-8b f32->fp8e4m3", 8, 128, KVP_LAYOUT_V3, KVP_DTYPE_F32, KVP_DTYPE_F8_E4M3FN},
    {"llama3-8b f32->bf16", 8, 128, KVP_LAYOUT_V3, KVP_DTYPE_F32, KVP_DTYPE_BF16},
    {"llama3-8b f32->f16", 8, 128, KVP_LAYOUT_V3, KVP_DTYPE_F32, KVP_DTYPE_F16},
    {"llama3-8b bf16->fp8e4m3", 8, 128, KVP_LAYOUT_V3, KVP_DTYPE_BF16, KVP_DTYPE_F8_E4M3FN},
};
static const int64_t kTokens[] = {1, 4, 16, 64, 256, 1024, 4096, 16384};

#define PAGE 16
#define MAX_TOKENS 16384
#define DECODE_CACHE_BYTES ((int64_t)512 << 20)

static void die(const char *what) {
  fprintf(stderr, "bench_concatenate: %s: %s\n", what, kvp_last_error_message());
  exit(1);
}

/* Best time of repeated calls of fn(arg) until ~min_s elapsed (at least 3 runs). */
typedef void (*run_fn)(void *);
static double best_time(run_fn fn, void *arg, double min_s) {
  double best = 1e30, start = bench_now_s();
  int reps = 0;
  fn(arg); /* warm-up: first touch */
  while (reps < 3 || bench_now_s() - start < min_s) {
    /* batch tiny calls so the clock resolution does not dominate */
    int inner = 1, i;
    double t0, dt;
    if (best < 20e-6) inner = 64;
    t0 = bench_now_s();
    for (i = 0; i < inner; ++i) fn(arg);
    dt = (bench_now_s() - t0) / inner;
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

typedef void (*copy_fn)(void *, const void *, size_t);

typedef struct copy_arg {
  void *dk, *dv;
  const void *sk, *sv;
  size_t bytes;
  copy_fn copy;
} copy_arg;

static void copy_memcpy(void *d, const void *s, size_t n) { memcpy(d, s, n); }

/* n bytes from s to d, whole 64-byte lines with SSE2 non-temporal stores (d 16-byte aligned; every
 * x86-64 CPU has SSE2, and the store width does not matter to a copy that waits on memory), the
 * rest with memcpy. No fence. */
static void stream_lines_sse2(unsigned char *d, const unsigned char *s, int64_t n) {
#if defined(__SSE2__)
  int64_t i;
  for (i = 0; i + 64 <= n; i += 64) {
    const __m128i a = _mm_loadu_si128((const __m128i *)(s + i)), b = _mm_loadu_si128((const __m128i *)(s + i + 16));
    const __m128i c = _mm_loadu_si128((const __m128i *)(s + i + 32)), e = _mm_loadu_si128((const __m128i *)(s + i + 48));
    _mm_stream_si128((__m128i *)(d + i), a);
    _mm_stream_si128((__m128i *)(d + i + 16), b);
    _mm_stream_si128((__m128i *)(d + i + 32), c);
    _mm_stream_si128((__m128i *)(d + i + 48), e);
  }
  memcpy(d + i, s + i, (size_t)(n - i));
#else
  memcpy(d, s, (size_t)n);
#endif
}

/* memcpy with non-temporal stores for the whole 64-byte lines of the destination. */
static void copy_stream(void *dst, const void *src, size_t n) {
  unsigned char *d = (unsigned char *)dst;
  const unsigned char *s = (const unsigned char *)src;
  size_t head = (64 - ((uintptr_t)d & 63)) & 63;
  if (head > n) head = n;
  memcpy(d, s, head);
  stream_lines_sse2(d + head, s + head, (int64_t)(n - head));
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

static void run_copy(void *p) {
  copy_arg *a = (copy_arg *)p;
  a->copy(a->dk, a->sk, a->bytes);
  a->copy(a->dv, a->sv, a->bytes);
}

/* The physical limit of a scattered write: each token's K and V input bytes stored into the cache
 * row of its slot (K then V, not interleaved by head), tokens in input order, one thread, with
 * ordinary stores (memcpy) or non-temporal ones of the widest width the CPU has (one store fence
 * at the end); the faster of the two counts. Only where a row holds the input bytes as they are
 * (same dtype in and out). */
typedef struct scatter_arg {
  unsigned char *layer;
  const unsigned char *k, *v;
  const int64_t *slots;
  int64_t tokens, token_bytes, half; /* half = one token's K (or V) input bytes */
  int stream;
} scatter_arg;

#if BENCH_X86
/* n bytes from s to the 64-byte aligned d: whole 64-byte lines with non-temporal stores. */
__attribute__((target("avx512f"))) static void stream_lines_avx512(unsigned char *d, const unsigned char *s,
                                                                   int64_t n) {
  int64_t i;
  for (i = 0; i + 64 <= n; i += 64) _mm512_stream_si512((__m512i *)(d + i), _mm512_loadu_si512(s + i));
  memcpy(d + i, s + i, (size_t)(n - i));
}
#endif

static void run_scatter(void *p) {
  const scatter_arg *a = (const scatter_arg *)p;
  void (*put)(unsigned char *, const unsigned char *, int64_t) = stream_lines_sse2;
  int64_t t;
#if BENCH_X86
  if (__builtin_cpu_supports("avx512f")) put = stream_lines_avx512;
#endif
  for (t = 0; t < a->tokens; ++t) {
    unsigned char *row = a->layer + a->slots[t] * a->token_bytes;
    if (a->stream) {
      put(row, a->k + t * a->half, a->half);
      put(row + a->half, a->v + t * a->half, a->half);
    } else {
      memcpy(row, a->k + t * a->half, (size_t)a->half);
      memcpy(row + a->half, a->v + t * a->half, (size_t)a->half);
    }
  }
#if defined(__SSE2__)
  if (a->stream) _mm_sfence();
#endif
}

/* The slot of every input token row of a batch the builder made from `reqs` (its row order). */
static void batch_slots(const kvp_batch_request *reqs, const int32_t *order, int nreq, int64_t *slots) {
  int64_t q = 0, t;
  int row;
  for (row = 0; row < nreq; ++row) {
    const kvp_batch_request *r = &reqs[order[row]];
    for (t = 0; t < r->num_scheduled; ++t) {
      const int64_t pos = r->num_computed + t;
      slots[q++] = (int64_t)r->page_ids[pos / PAGE] * PAGE + pos % PAGE;
    }
  }
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
  a->copy((char *)a->dk + lo, (const char *)a->sk + lo, hi - lo);
  a->copy((char *)a->dv + lo, (const char *)a->sv + lo, hi - lo);
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

/* The batch of N tokens in `pattern` ("decode" or "prefill") as requests over the shuffled pages
 * `perm` (num_pages of them); `reqs` and `pages` have room for MAX_TOKENS entries. */
static int make_batch(const char *pattern, int64_t N, const int32_t *perm, int64_t num_pages, kvp_batch_request *reqs,
                      int32_t *pages) {
  int nreq = 0;
  int64_t i, used = 0;
  if (strcmp(pattern, "decode") == 0) {
    /* request i: page i % num_pages, row (i / num_pages + 5 + page % 11) % PAGE: no two share a row */
    for (i = 0; i < N; ++i) {
      const int64_t p = i % num_pages;
      pages[i] = perm[p];
      reqs[i].num_computed = (i / num_pages + 5 + p % 11) % PAGE;
      reqs[i].num_scheduled = 1;
      reqs[i].page_ids = &pages[i];
      reqs[i].num_pages = 1;
    }
    return (int)N;
  }
  while (N > 0) {
    const int64_t n = N < 512 ? N : 512, np = (n + PAGE - 1) / PAGE;
    for (i = 0; i < np; ++i) pages[used + i] = perm[used + i];
    reqs[nreq].num_computed = 0;
    reqs[nreq].num_scheduled = n;
    reqs[nreq].page_ids = &pages[used];
    reqs[nreq].num_pages = np;
    used += np;
    nreq++;
    N -= n;
  }
  return nreq;
}

static void bench_shape(const shape *s, int quick, const char *threads) {
  static const char *const kPatterns[] = {"decode", "prefill"};
  kvp_config_options o;
  kvp_config cfg;
  kvp_layout_info li;
  kvp_cache *cache = NULL;
  const int64_t in_sz = kvp_dtype_bits(s->in) / 8;
  const int64_t elems = (int64_t)MAX_TOKENS * s->H * s->D;
  const char *only_pattern = getenv("KVP_BENCH_PATTERN");
  int64_t pages_needed = MAX_TOKENS / PAGE + 2;
  unsigned char *kin, *vin, *dk, *dv;
  int32_t *perm, *pages_buf, *order;
  int64_t *slots;
  kvp_tensor view;
  kvp_batch_request *reqs;
  size_t ti, pi;
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
    /* decode: one page per request while the cache stays under DECODE_CACHE_BYTES */
    {
      int64_t decode_pages = DECODE_CACHE_BYTES / li.page_bytes_per_layer;
      if (decode_pages > MAX_TOKENS) decode_pages = MAX_TOKENS;
      if (decode_pages + 2 > pages_needed) pages_needed = decode_pages + 2;
    }
    o.budget_bytes = li.page_bytes_per_layer * pages_needed;
  }
  if (kvp_config_create(&o, &cfg) != KVP_OK) die("kvp_config_create");
  if (kvp_cache_create(&cfg, NULL, &cache) != KVP_OK) die("kvp_cache_create");

  kin = (unsigned char *)malloc((size_t)(elems * in_sz));
  vin = (unsigned char *)malloc((size_t)(elems * in_sz));
  dk = (unsigned char *)malloc((size_t)(elems * in_sz));
  dv = (unsigned char *)malloc((size_t)(elems * in_sz));
  perm = (int32_t *)malloc(sizeof(int32_t) * (size_t)cfg.num_pages);
  pages_buf = (int32_t *)malloc(sizeof(int32_t) * MAX_TOKENS);
  reqs = (kvp_batch_request *)malloc(sizeof(kvp_batch_request) * MAX_TOKENS);
  order = (int32_t *)malloc(sizeof(int32_t) * MAX_TOKENS);
  slots = (int64_t *)malloc(sizeof(int64_t) * MAX_TOKENS);
  if (kvp_cache_get_view(cache, 0, KVP_VIEW_PAGES, &view) != KVP_OK) die("kvp_cache_get_view");
  if (!kin || !vin || !dk || !dv || !perm || !pages_buf || !reqs || !order || !slots) {
    fprintf(stderr, "bench_concatenate: out of memory\n");
    exit(1);
  }
  for (i = 0; i < elems * in_sz; ++i) {
    kin[i] = (unsigned char)(bench_rand() & 0x3F); /* finite values in any dtype */
    vin[i] = (unsigned char)(bench_rand() & 0x3F);
  }
  memset(dk, 1, (size_t)(elems * in_sz));
  memset(dv, 1, (size_t)(elems * in_sz));
  for (i = 1; i < cfg.num_pages; ++i) perm[i - 1] = (int32_t)i;
  for (i = cfg.num_pages - 2; i > 0; --i) {
    int64_t j = (int64_t)(bench_rand() % (uint64_t)(i + 1));
    int32_t x = perm[i];
    perm[i] = perm[j];
    perm[j] = x;
  }

  for (ti = 0; ti < sizeof kTokens / sizeof kTokens[0]; ++ti)
    for (pi = 0; pi < 2; ++pi) {
      const int64_t N = kTokens[ti];
      const char *pattern = kPatterns[pi];
      kvp_metadata *md = NULL;
      concat_arg ca;
      copy_arg cp;
      scatter_arg sa;
      char scatter_gbs[16] = "—", scatter_ratio[16] = "—";
      double tc, tm, ts, tmp, tsp, tsc = 0, ts1, best, bestp;
      int nreq;
      const double bytes = (double)(2 * N * s->H * s->D * in_sz);
      if (quick && (N == 4 || N == 64 || N == 4096)) continue;
      if (pi == 1 && N < 16) continue;
      if (only_pattern != NULL && strcmp(only_pattern, pattern) != 0) continue;
      nreq = make_batch(pattern, N, perm, cfg.num_pages - 1, reqs, pages_buf);
      if (kvp_metadata_build(&cfg, reqs, (uint32_t)nreq, NULL, order, &md) != KVP_OK) die("kvp_metadata_build");
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
      cp.copy = copy_memcpy;
      tm = best_time(run_copy, &cp, 0.02);
      tmp = g_copy_threads > 1 ? best_time(run_copy_parallel, &cp, 0.02) : tm;
      cp.copy = copy_stream;
      ts = best_time(run_copy, &cp, 0.02);
      tsp = g_copy_threads > 1 ? best_time(run_copy_parallel, &cp, 0.02) : ts;
      if (s->in == s->cache) {
        batch_slots(reqs, order, nreq, slots);
        sa.layer = (unsigned char *)view.data;
        sa.k = kin;
        sa.v = vin;
        sa.slots = slots;
        sa.tokens = N;
        sa.token_bytes = li.page_bytes_per_layer / PAGE;
        sa.half = s->H * s->D * in_sz;
        sa.stream = 0;
        tsc = best_time(run_scatter, &sa, 0.02);
        sa.stream = 1;
        ts1 = best_time(run_scatter, &sa, 0.02);
        if (ts1 < tsc) tsc = ts1;
      }
      tc = best_time(run_concat, &ca, 0.03);
      if (s->in == s->cache) {
        snprintf(scatter_gbs, sizeof scatter_gbs, "%7.2f", bytes / tsc / 1e9);
        snprintf(scatter_ratio, sizeof scatter_ratio, "%5.2f", tsc / tc);
      }
      best = tm < ts ? tm : ts;
      bestp = tmp < tsp ? tmp : tsp;
      printf("| %-25s | %s | %-4s->%-10s | %-7s | %5" PRId64
             " | %3s | %10.2f | %7.2f | %7.2f | %7.2f | %5.2f | %7s | %5s | %7.2f | %7.2f | %5.2f |\n",
             s->name, kvp_layout_name(s->layout), kvp_dtype_name(s->in), kvp_dtype_name(s->cache), pattern, N, threads,
             tc * 1e6, bytes / tc / 1e9, bytes / tm / 1e9, bytes / ts / 1e9, best / tc, scatter_gbs, scatter_ratio,
             bytes / tmp / 1e9, bytes / tsp / 1e9, bestp / tc);
      fflush(stdout);
      kvp_metadata_destroy(md);
    }
  free(kin);
  free(vin);
  free(dk);
  free(dv);
  free(perm);
  free(pages_buf);
  free(reqs);
  free(order);
  free(slots);
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
    char model[256], date[64], nbuf[32];
    long counts[2];
    int nc = nproc > 1 ? 2 : 1, c;
    bench_cpu_model(model, sizeof model);
    bench_utc_date(date, sizeof date);
    printf("# kvp_concatenate on the CPU\n\n");
    printf("- date: %s\n- machine: %s, %ld logical CPUs\n- library: %s\n", date, model, nproc, kvp_build_info());
    printf("- bytes = K+V input bytes; memcpy / stream = single-thread memcpy and non-temporal-store copy of\n"
           "  the same bytes in the same run; ratio = the faster copy's time / concatenate time (1.00 = as\n"
           "  fast as the faster copy); xN = the same copies split over the row's N threads (the bandwidth\n"
           "  limit for multi-thread rows) and the ratio to the faster of them; scatter = each token's K and V\n"
           "  input bytes stored into its own slot's row, in input order, one thread, the faster of ordinary\n"
           "  and widest non-temporal stores (the limit of a scattered write; same-dtype shapes only), and\n"
           "  its time / concatenate time. Page size %d.\n\n",
           PAGE);
    printf("| shape | layout | dtype in->cache | pattern | tokens | thr | concat us | GB/s | memcpy GB/s "
           "| stream GB/s | ratio | scatter GB/s | ratio scatter | memcpy xN GB/s | stream xN GB/s | ratio xN |\n");
    printf("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
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
