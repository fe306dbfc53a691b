/* Benchmark (not a test): kvp_attention on the CPU, llama3-8b shape (8 KV heads, 32 query heads,
 * head dim 128), v3 layout, page size 16, one layer. Tables for 1 thread and for all CPUs (the
 * process re-runs itself with KVP_NUM_THREADS), each against a baseline measured in the same run.
 *
 * Decode: B requests (1, 8, 64) of C tokens of context (1k, 4k, 32k), cache dtype bf16 and
 * fp8 e4m3fn, one query token per request (f32 queries and output). The context is written
 * once with kvp_concatenate (batches built with kvp_metadata_build, each request on its own
 * shuffled pages). Timed: the read-only call (keys/values NULL) and the call with the fused write
 * of the request's new token (position C-1, rewritten with the same values on every repetition).
 * Bytes counted: the K and V lanes attended, B * C * 8 heads * 128 lanes * 2 (K and V) * itemsize;
 * queries, output, page table and the fused write are not counted. The v3 layout pads the head
 * dim to align(D, 128): for D = 128 nothing is padded, so these are exactly the page bytes read.
 * Baseline ("plain read"): the same number of bytes summed as 64-bit integers by the same
 * number of threads, from a contiguous window of the cache's own page memory, interleaved with
 * the kvp calls (best of N each). ratio = plain read time / kvp time (1.00 = as fast as reading
 * the bytes). By default every timed call reads memory that the previous calls did not touch: the
 * cache holds enough requests for at least 2x the last-level cache, each repetition attends the
 * next group of B requests, and the plain read moves its window likewise (--hot turns this off).
 *
 * Prefill: one request, bf16 pages, f32 queries / keys / values / output, causal, scale
 * 1/sqrt(128): fresh prompts of 512 and 2048 tokens (the call writes the whole prompt and
 * attends), and a chunked step of a 2048-token prompt with 1536 tokens cached and 512 new.
 * GFLOP = 2 (QK and PV) * 2 (multiply-add) * 32 heads * 128 * sum over new tokens of the keys it
 * sees (causal). Baseline: the peak f32 multiply-add rate of the same number of threads in the same
 * run (independent FMA chains at the instruction-set level the library uses), interleaved.
 *
 * The context is written with bf16 keys/values, the fused token too. Under each decode table:
 * per cache, the first touch of its page memory (page faults, timed apart) and the fill time.
 *
 * Every shape is checked once: output finite, read-only and fused outputs equal, and (for the
 * smallest context / prompt of each table, or every shape with --verify-all) rows compared with a
 * double-precision evaluation from the generated keys and values, which are multiples of 1/8 in
 * [-2, 2) and so stored exactly by bf16 and fp8 e4m3fn (first and last request of the batch, all
 * 32 heads; prefill: first, middle and last new token). Decode rows smaller than 2x the LLC are
 * checked with two extra calls before timing, larger ones on the first timed repetition (whose
 * fused call then attends the same requests as its read-only call). A mismatch or a failed call
 * exits non-zero; the times themselves are never judged.
 *
 * Usage: bench_attention [--quick] [--reps N] [--only decode|prefill] [--hot] [--thp] [--threads N]
 *          [--contexts LIST] [--batches LIST] [--dtypes LIST] [--prompts LIST] [--verify-all]
 *          [--mem-gib N] [--llc-mib N]
 *   --quick     CI smoke: contexts 256,1024, batches 1,8, prompt 128 (+ chunked 96+32), warm data
 *   --reps N    best of N (default 5; without --reps, a decode row stops after 8 s of timed
 *               calls, with at least 2 repetitions: the reps column)
 *   --hot       let the data stay in the caches (both kvp and the plain read reuse the same bytes)
 *   --thp       madvise(MADV_HUGEPAGE) the cache's page memory before the fill (the library maps it
 *               with plain 4 KiB pages; this shows what transparent huge pages would change)
 *   --threads N run the tables for N threads only (default: 1 and all CPUs)
 *   --mem-gib N at most N GiB for a decode cache (default: MemAvailable minus 2 GiB)
 *   --llc-mib N last-level cache size to size the cold pool with (default: from sysfs / sysconf)
 *   LISTs are comma-separated: --contexts 1024,32768 --batches 64 --dtypes bf16,fp8_e4m3fn */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define BENCH_X86 1
#else
#define BENCH_X86 0
#endif

#include "kvpages.h"
#include "bench_support.h"

#define PAGE 16
#define HKV 8
#define HQ 32
#define HD 128
#define REP (HQ / HKV)
#define TOKV (2 * HKV * HD) /* generated values per token: K heads, then V heads */
#define FILL_TOKENS 8192    /* tokens per kvp_concatenate call while filling */
#define ROW_SECONDS 8.0     /* without --reps: a decode row stops repeating (after >= 2) past this */
#define MAXL 16
#define GIB (1024.0 * 1024.0 * 1024.0)
#define MIB (1024.0 * 1024.0)

/* ---- options ------------------------------------------------------------------------------- */

typedef struct opts {
  int quick, reps, reps_given, hot, thp, threads, verify_all, decode, prefill;
  double mem_gib, llc_mib;
  int64_t contexts[MAXL], batches[MAXL], prompts[MAXL];
  int ncontexts, nbatches, nprompts;
  kvp_dtype dtypes[MAXL];
  int ndtypes;
} opts;

static opts O;

static void usage(void) {
  fprintf(stderr,
          "usage: bench_attention [--quick] [--reps N] [--only decode|prefill] [--hot] [--thp] [--threads N]\n"
          "         [--contexts LIST] [--batches LIST] [--dtypes LIST] [--prompts LIST] [--verify-all]\n"
          "         [--mem-gib N] [--llc-mib N]\n");
  exit(2);
}

static int parse_list(const char *s, int64_t *out) {
  int n = 0;
  char *end;
  while (*s && n < MAXL) {
    long long v = strtoll(s, &end, 10);
    if (end == s || v <= 0) usage();
    out[n++] = v;
    s = *end == ',' ? end + 1 : end;
    if (*end && *end != ',') usage();
  }
  if (n == 0) usage();
  return n;
}

/* The string arguments as given (NULL where absent), read once the defaults are known. */
typedef struct arg_strings {
  const char *only, *contexts, *batches, *dtypes, *prompts;
} arg_strings;

/* Reads argv into O (flags and numbers) and *l (the rest); anything unknown is a usage error. */
static void parse_args(int argc, char **argv, arg_strings *l) {
  int i;
  memset(l, 0, sizeof *l);
  for (i = 1; i < argc; ++i) {
    const char *a = argv[i];
    const int more = i + 1 < argc;
    if (strcmp(a, "--quick") == 0) O.quick = 1;
    else if (strcmp(a, "--hot") == 0) O.hot = 1;
    else if (strcmp(a, "--thp") == 0) O.thp = 1;
    else if (strcmp(a, "--verify-all") == 0) O.verify_all = 1;
    else if (strcmp(a, "--reps") == 0 && more) O.reps = atoi(argv[++i]), O.reps_given = 1;
    else if (strcmp(a, "--threads") == 0 && more) O.threads = atoi(argv[++i]);
    else if (strcmp(a, "--only") == 0 && more) l->only = argv[++i];
    else if (strcmp(a, "--contexts") == 0 && more) l->contexts = argv[++i];
    else if (strcmp(a, "--batches") == 0 && more) l->batches = argv[++i];
    else if (strcmp(a, "--dtypes") == 0 && more) l->dtypes = argv[++i];
    else if (strcmp(a, "--prompts") == 0 && more) l->prompts = argv[++i];
    else if (strcmp(a, "--mem-gib") == 0 && more) O.mem_gib = atof(argv[++i]);
    else if (strcmp(a, "--llc-mib") == 0 && more) O.llc_mib = atof(argv[++i]);
    else usage();
  }
}

/* --only: both tables unless one is named. */
static void select_tables(const char *only) {
  O.decode = O.prefill = 1;
  if (only == NULL) return;
  if (strcmp(only, "decode") == 0) O.prefill = 0;
  else if (strcmp(only, "prefill") == 0) O.decode = 0;
  else usage();
}

/* Contexts, batches and prompts of --quick or of the full run (before the lists given). */
static void default_shapes(void) {
  if (O.quick) {
    static const int64_t c[] = {256, 1024}, b[] = {1, 8}, p[] = {128};
    memcpy(O.contexts, c, sizeof c), O.ncontexts = 2;
    memcpy(O.batches, b, sizeof b), O.nbatches = 2;
    memcpy(O.prompts, p, sizeof p), O.nprompts = 1;
    if (!O.reps_given) O.reps = 3;
    O.hot = 1; /* a few seconds: no pool of 2x the last-level cache */
  } else {
    static const int64_t c[] = {1024, 4096, 32768}, b[] = {1, 8, 64}, p[] = {512, 2048};
    memcpy(O.contexts, c, sizeof c), O.ncontexts = 3;
    memcpy(O.batches, b, sizeof b), O.nbatches = 3;
    memcpy(O.prompts, p, sizeof p), O.nprompts = 2;
  }
}

/* --dtypes (names as kvp_dtype_from_string reads them), else bf16 and fp8 e4m3fn. */
static void parse_dtypes(const char *dts) {
  char buf[256], *tok, *save = NULL;
  O.dtypes[0] = KVP_DTYPE_BF16;
  O.dtypes[1] = KVP_DTYPE_F8_E4M3FN;
  O.ndtypes = 2;
  if (dts == NULL) return;
  snprintf(buf, sizeof buf, "%s", dts);
  O.ndtypes = 0;
  for (tok = strtok_r(buf, ",", &save); tok && O.ndtypes < MAXL; tok = strtok_r(NULL, ",", &save)) {
    kvp_dtype d;
    if (kvp_dtype_from_string(tok, &d) != KVP_OK) {
      fprintf(stderr, "bench_attention: unknown dtype %s\n", tok);
      exit(2);
    }
    O.dtypes[O.ndtypes++] = d;
  }
}

static void sort_ascending(int64_t *a, int n) {
  int x, y;
  for (x = 0; x < n; ++x)
    for (y = x + 1; y < n; ++y)
      if (a[y] < a[x]) {
        int64_t t = a[x];
        a[x] = a[y], a[y] = t;
      }
}

static void parse_opts(int argc, char **argv) {
  arg_strings l;
  memset(&O, 0, sizeof O);
  O.reps = 5;
  parse_args(argc, argv, &l);
  if (O.reps < 1) O.reps = 1;
  select_tables(l.only);
  default_shapes();
  if (l.contexts) O.ncontexts = parse_list(l.contexts, O.contexts);
  if (l.batches) O.nbatches = parse_list(l.batches, O.batches);
  if (l.prompts) O.nprompts = parse_list(l.prompts, O.prompts);
  parse_dtypes(l.dtypes);
  /* ascending order: the smallest context / prompt is the verified one */
  sort_ascending(O.contexts, O.ncontexts);
  sort_ascending(O.prompts, O.nprompts);
}

/* ---- small utilities --------------------------------------------------------------------- */

static void die(const char *what) {
  fprintf(stderr, "bench_attention: %s: %s\n", what, kvp_last_error_message());
  exit(1);
}

static void check(kvp_status s, const char *what) {
  if (s != KVP_OK) {
    fprintf(stderr, "bench_attention: %s: %s: %s\n", what, kvp_status_name(s), kvp_last_error_message());
    exit(1);
  }
}

static void *xmalloc(size_t n) {
  void *p = NULL;
  if (posix_memalign(&p, 64, n ? n : 64) != 0 || p == NULL) {
    fprintf(stderr, "bench_attention: out of memory (%zu bytes)\n", n);
    exit(1);
  }
  return p;
}

/* MemAvailable from /proc/meminfo in bytes, or -1. */
static double mem_available(void) {
  char line[256];
  double v = -1;
  FILE *f = fopen("/proc/meminfo", "r");
  if (f == NULL) return -1;
  while (fgets(line, sizeof line, f) != NULL)
    if (strncmp(line, "MemAvailable:", 13) == 0) {
      v = atof(line + 13) * 1024.0;
      break;
    }
  fclose(f);
  return v;
}

static double mem_total(void) {
  char line[256];
  double v = -1;
  FILE *f = fopen("/proc/meminfo", "r");
  if (f == NULL) return -1;
  while (fgets(line, sizeof line, f) != NULL)
    if (strncmp(line, "MemTotal:", 9) == 0) {
      v = atof(line + 9) * 1024.0;
      break;
    }
  fclose(f);
  return v;
}

/* Bytes a decode cache may take: --mem-gib, else MemAvailable minus a 2 GiB margin. */
static double mem_budget(void) {
  double a;
  if (O.mem_gib > 0) return O.mem_gib * GIB;
  a = mem_available();
  if (a < 0) return 8.0 * GIB; /* no /proc: assume a modest machine */
  return a - 2.0 * GIB;
}

/* The last-level cache: the largest cache of the highest level in sysfs, or sysconf. */
static double llc_bytes(char *src, size_t n) {
  double best = 0;
  int idx, best_level = 0;
  if (O.llc_mib > 0) {
    snprintf(src, n, "--llc-mib");
    return O.llc_mib * MIB;
  }
  snprintf(src, n, "unknown, assumed");
  for (idx = 0; idx < 16; ++idx) {
    char path[128], buf[64];
    int level = 0;
    double size = 0;
    FILE *f;
    snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/level", idx);
    if ((f = fopen(path, "r")) == NULL) continue;
    if (fgets(buf, sizeof buf, f)) level = atoi(buf);
    fclose(f);
    snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", idx);
    if ((f = fopen(path, "r")) == NULL) continue;
    if (fgets(buf, sizeof buf, f)) {
      char *e;
      size = strtod(buf, &e);
      if (*e == 'K') size *= 1024;
      else if (*e == 'M') size *= MIB;
      else if (*e == 'G') size *= GIB;
    }
    fclose(f);
    if (level > best_level || (level == best_level && size > best)) best_level = level, best = size;
  }
  if (best > 0) snprintf(src, n, "sysfs L%d", best_level);
#ifdef _SC_LEVEL3_CACHE_SIZE
  if (best <= 0) {
    long s = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (s > 0) best = (double)s, snprintf(src, n, "sysconf L3");
  }
#endif
  if (best <= 0) best = 32 * MIB;
  return best;
}

/* The instruction-set level the library reports (kvp_build_info "cpu=..."). */
static const char *lib_isa(void) {
  const char *p = strstr(kvp_build_info(), "cpu=");
  if (p == NULL) return "unknown";
  p += 4;
  if (strncmp(p, "avx512", 6) == 0) return "avx512";
  if (strncmp(p, "avx2", 4) == 0) return "avx2";
  if (strncmp(p, "baseline", 8) == 0) return "baseline";
  return "unknown";
}

/* ---- generated data ------------------------------------------------------------------------ */

static uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* The TOKV values (K heads, then V heads, each HD lanes) of token `pos` of request `req`, as
 * integers j in [-16, 15]; the value is j / 8, exact in f32, bf16 and fp8 e4m3fn, so the cache
 * stores it unchanged and the reference can recompute it. */
static void gen_token(uint64_t seed, int64_t req, int64_t pos, int8_t *j) {
  uint64_t x = mix64(seed * 0x100000001B3ull ^ mix64(((uint64_t)req << 32) ^ (uint64_t)pos)) | 1;
  int i = 0;
  while (i < TOKV) {
    uint64_t r;
    int k;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r = x * 0x2545F4914F6CDD1Dull;
    for (k = 0; k < 12 && i < TOKV; ++k) j[i++] = (int8_t)((int)((r >> (4 + 5 * k)) & 31) - 16);
  }
}

static uint16_t g_bf16_of[32]; /* bf16 bits of (j - 16) / 8 */

static void init_tables(void) {
  int j;
  for (j = 0; j < 32; ++j) {
    float f = (float)(j - 16) / 8.0f;
    uint32_t b;
    memcpy(&b, &f, 4);
    g_bf16_of[j] = (uint16_t)(b >> 16); /* exact: few significant bits */
  }
}

/* Query values: uniform in [-2, 2) from (seed, row, head, lane). */
static void gen_queries(uint64_t seed, int64_t row, float *q /* HQ*HD */) {
  uint64_t x = mix64(seed ^ mix64((uint64_t)row * 0x9E37ull + 17)) | 1;
  int i;
  for (i = 0; i < HQ * HD; ++i) {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    q[i] = (float)((x * 0x2545F4914F6CDD1Dull) >> 40) / (float)(1 << 24) * 4.0f - 2.0f;
  }
}

static kvp_tensor tensor3(void *data, kvp_dtype dt, int64_t t, int64_t h, int64_t d) {
  kvp_tensor x;
  memset(&x, 0, sizeof x);
  x.data = data;
  x.dtype = dt;
  x.ndim = 3;
  x.shape[0] = t;
  x.shape[1] = h;
  x.shape[2] = d;
  x.strides[0] = h * d;
  x.strides[1] = d;
  x.strides[2] = 1;
  x.device_type = KVP_DEVICE_CPU;
  return x;
}

/* Writes token (req, pos) into row `row` of K and V input buffers of dtype bf16 or f32. */
static void put_token(uint64_t seed, int64_t req, int64_t pos, void *k, void *v, int64_t row, kvp_dtype dt) {
  int8_t j[TOKV];
  int i;
  gen_token(seed, req, pos, j);
  if (dt == KVP_DTYPE_BF16) {
    uint16_t *kk = (uint16_t *)k + row * HKV * HD, *vv = (uint16_t *)v + row * HKV * HD;
    for (i = 0; i < HKV * HD; ++i) {
      kk[i] = g_bf16_of[j[i] + 16];
      vv[i] = g_bf16_of[j[HKV * HD + i] + 16];
    }
  } else {
    float *kk = (float *)k + row * HKV * HD, *vv = (float *)v + row * HKV * HD;
    for (i = 0; i < HKV * HD; ++i) {
      kk[i] = (float)j[i] / 8.0f;
      vv[i] = (float)j[HKV * HD + i] / 8.0f;
    }
  }
}

/* ---- the bench's own worker threads (for the baselines and data generation) ---------------- *
 * Helpers sleep on a condition variable between jobs, so they take no CPU while kvpages is being
 * timed. The calling thread takes part 0. */

typedef void (*part_fn)(void *arg, int part, int parts);
static int g_threads = 1;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_go = PTHREAD_COND_INITIALIZER, g_done = PTHREAD_COND_INITIALIZER;
static part_fn g_fn;
static void *g_arg;
static unsigned long g_gen;
static int g_left;

static void *helper_main(void *p) {
  const int part = (int)(intptr_t)p;
  unsigned long seen = 0;
  for (;;) {
    part_fn fn;
    void *arg;
    pthread_mutex_lock(&g_mu);
    while (g_gen == seen) pthread_cond_wait(&g_go, &g_mu);
    seen = g_gen;
    fn = g_fn;
    arg = g_arg;
    pthread_mutex_unlock(&g_mu);
    fn(arg, part, g_threads);
    pthread_mutex_lock(&g_mu);
    if (--g_left == 0) pthread_cond_signal(&g_done);
    pthread_mutex_unlock(&g_mu);
  }
  return NULL;
}

static void start_helpers(int threads) {
  int i;
  g_threads = threads;
  for (i = 1; i < threads; ++i) {
    pthread_t t;
    if (pthread_create(&t, NULL, helper_main, (void *)(intptr_t)i) != 0) {
      g_threads = i;
      break;
    }
    pthread_detach(t);
  }
}

static void run_parallel(part_fn fn, void *arg) {
  if (g_threads <= 1) {
    fn(arg, 0, 1);
    return;
  }
  pthread_mutex_lock(&g_mu);
  g_fn = fn;
  g_arg = arg;
  g_left = g_threads - 1;
  ++g_gen;
  pthread_cond_broadcast(&g_go);
  pthread_mutex_unlock(&g_mu);
  fn(arg, 0, g_threads);
  pthread_mutex_lock(&g_mu);
  while (g_left > 0) pthread_cond_wait(&g_done, &g_mu);
  pthread_mutex_unlock(&g_mu);
}

/* Plain read: sum of 64-bit words, split over the threads in 4 KiB-aligned shares. */
typedef struct sum_arg {
  const uint8_t *p;
  size_t bytes;
} sum_arg;
static volatile uint64_t g_sink[256];

static void sum_part(void *a_, int part, int parts) {
  const sum_arg *a = (const sum_arg *)a_;
  const size_t per = (a->bytes / (size_t)parts + 4095) & ~(size_t)4095, lo = per * (size_t)part;
  const size_t hi = lo + per < a->bytes ? lo + per : a->bytes;
  uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
  const uint64_t *w;
  size_t i, n;
  if (lo >= hi) return;
  w = (const uint64_t *)(a->p + lo);
  n = (hi - lo) / 8;
  for (i = 0; i + 8 <= n; i += 8) {
    s0 += w[i], s1 += w[i + 1], s2 += w[i + 2], s3 += w[i + 3];
    s4 += w[i + 4], s5 += w[i + 5], s6 += w[i + 6], s7 += w[i + 7];
  }
  for (; i < n; ++i) s0 += w[i];
  g_sink[part & 255] += s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7;
}

static double time_plain_read(const uint8_t *p, size_t bytes) {
  sum_arg a;
  double t0;
  a.p = p;
  a.bytes = bytes;
  t0 = bench_now_s();
  run_parallel(sum_part, &a);
  return bench_now_s() - t0;
}

/* Peak f32 multiply-add rate: 12 independent chains per thread at the library's ISA level. */
typedef struct fma_arg {
  long iters;
  int isa; /* 2 avx512, 1 avx2+fma, 0 baseline (SSE mul + add) */
} fma_arg;

#if BENCH_X86
__attribute__((target("avx512f"))) static float fma_avx512(long iters) {
  __m512 a[12];
  const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
  long i;
  int u;
  for (u = 0; u < 12; ++u) a[u] = _mm512_set1_ps(1.0f + (float)u);
  for (i = 0; i < iters; ++i)
    for (u = 0; u < 12; ++u) a[u] = _mm512_fmadd_ps(a[u], x, y);
  for (u = 1; u < 12; ++u) a[0] = _mm512_add_ps(a[0], a[u]);
  return _mm512_reduce_add_ps(a[0]);
}
__attribute__((target("avx2,fma"))) static float fma_avx2(long iters) {
  __m256 a[12];
  const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
  float o[8];
  long i;
  int u;
  for (u = 0; u < 12; ++u) a[u] = _mm256_set1_ps(1.0f + (float)u);
  for (i = 0; i < iters; ++i)
    for (u = 0; u < 12; ++u) a[u] = _mm256_fmadd_ps(a[u], x, y);
  for (u = 1; u < 12; ++u) a[0] = _mm256_add_ps(a[0], a[u]);
  _mm256_storeu_ps(o, a[0]);
  return o[0] + o[7];
}
#endif
typedef float v4f __attribute__((vector_size(16)));
static float fma_base(long iters) {
  v4f a[12];
  const v4f x = {0.999999f, 0.999999f, 0.999999f, 0.999999f}, y = {1e-7f, 1e-7f, 1e-7f, 1e-7f};
  long i;
  int u;
  for (u = 0; u < 12; ++u) a[u] = (v4f){1.0f + (float)u, 1.0f, 1.0f, 1.0f};
  for (i = 0; i < iters; ++i)
    for (u = 0; u < 12; ++u) a[u] = a[u] * x + y;
  for (u = 1; u < 12; ++u) a[0] += a[u];
  return a[0][0] + a[0][3];
}
static double fma_flops_per_iter(int isa) { return 12.0 * 2.0 * (isa == 2 ? 16 : isa == 1 ? 8 : 4); }

static void fma_part(void *a_, int part, int parts) {
  const fma_arg *a = (const fma_arg *)a_;
  float r;
  (void)parts;
#if BENCH_X86
  if (a->isa == 2) r = fma_avx512(a->iters);
  else if (a->isa == 1) r = fma_avx2(a->iters);
  else
#endif
    r = fma_base(a->iters);
  g_sink[part & 255] += (uint64_t)r;
}

static int fma_isa(void) {
  const char *l = lib_isa();
#if BENCH_X86
  __builtin_cpu_init();
  if (strcmp(l, "avx512") == 0 && __builtin_cpu_supports("avx512f")) return 2;
  if ((strcmp(l, "avx512") == 0 || strcmp(l, "avx2") == 0) && __builtin_cpu_supports("avx2") &&
      __builtin_cpu_supports("fma"))
    return 1;
#endif
  (void)l;
  return 0;
}

/* ---- caches -------------------------------------------------------------------------------- */

typedef struct bcache {
  kvp_config cfg;
  kvp_layout_info li;
  kvp_cache *cache;
  const uint8_t *pages; /* the layer's page memory */
  size_t layer_bytes;
  int64_t ctx, ppr, nreq; /* context, pages per request, requests laid out */
  int32_t *table;         /* [nreq][ppr] page ids */
  kvp_dtype dtype;
} bcache;

static int64_t page_bytes_of(kvp_dtype dt, int64_t max_len) {
  kvp_config probe;
  kvp_layout_info li;
  kvp_config_init(&probe, sizeof probe);
  probe.num_hidden_layers = 1;
  probe.num_kv_heads = HKV;
  probe.k_headdim = probe.v_headdim = HD;
  probe.max_model_length = max_len;
  probe.page_size = PAGE;
  probe.kvdtype = dt;
  probe.version = KVP_LAYOUT_V3;
  memset(&li, 0, sizeof li);
  li.struct_size = sizeof li;
  check(kvp_config_get_layout(&probe, &li), "kvp_config_get_layout");
  return li.page_bytes_per_layer;
}

/* A one-layer cache with room for `nreq` requests of `ctx` tokens, each on its own pages taken
 * from a shuffled list (as a page pool hands them out after a while). */
static void bcache_create(bcache *c, kvp_dtype dt, int64_t ctx, int64_t nreq) {
  kvp_config_options o;
  kvp_tensor view;
  int64_t i, pages_needed;
  int32_t *perm;
  memset(c, 0, sizeof *c);
  c->dtype = dt;
  c->ctx = ctx;
  c->nreq = nreq;
  c->ppr = (ctx + PAGE - 1) / PAGE;
  pages_needed = nreq * c->ppr + 1; /* + the null page 0 */
  kvp_config_options_init(&o, sizeof o);
  o.num_hidden_layers = 1;
  o.num_kv_heads = HKV;
  o.kv_head_dim_size = HD;
  o.max_model_length = ctx;
  o.page_size = PAGE;
  o.kvdtype = dt;
  o.version = KVP_LAYOUT_V3;
  o.flags = KVP_CONFIG_FLAG_NO_SAFETY_MARGIN;
  o.budget_bytes = page_bytes_of(dt, ctx) * pages_needed;
  check(kvp_config_create(&o, &c->cfg), "kvp_config_create");
  if (c->cfg.num_pages < pages_needed) {
    fprintf(stderr, "bench_attention: config has %" PRId64 " pages, %" PRId64 " needed\n", c->cfg.num_pages,
            pages_needed);
    exit(1);
  }
  memset(&c->li, 0, sizeof c->li);
  c->li.struct_size = sizeof c->li;
  check(kvp_config_get_layout(&c->cfg, &c->li), "kvp_config_get_layout");
  check(kvp_cache_create(&c->cfg, NULL, &c->cache), "kvp_cache_create");
  check(kvp_cache_get_view(c->cache, 0, KVP_VIEW_PAGES, &view), "kvp_cache_get_view");
  c->pages = (const uint8_t *)view.data;
  c->layer_bytes = (size_t)c->li.layer_bytes;
  perm = (int32_t *)xmalloc(sizeof(int32_t) * (size_t)c->cfg.num_pages);
  for (i = 1; i < c->cfg.num_pages; ++i) perm[i - 1] = (int32_t)i;
  for (i = c->cfg.num_pages - 2; i > 0; --i) {
    int64_t j = (int64_t)(bench_rand() % (uint64_t)(i + 1));
    int32_t x = perm[i];
    perm[i] = perm[j];
    perm[j] = x;
  }
  c->table = (int32_t *)xmalloc(sizeof(int32_t) * (size_t)(nreq * c->ppr));
  memcpy(c->table, perm, sizeof(int32_t) * (size_t)(nreq * c->ppr));
  free(perm);
}

static void bcache_destroy(bcache *c) {
  check(kvp_cache_destroy(c->cache), "kvp_cache_destroy");
  free(c->table);
  memset(c, 0, sizeof *c);
}

/* First touch of the layer's page memory (the library maps it anonymously: page faults on first
 * write), one byte per 4 KiB, spread over the bench's threads, so that the fill time below is the
 * time of kvp_concatenate alone. The bytes written are the zeros already there. With --thp the
 * bench first asks the kernel for transparent huge pages on that memory (madvise), which the
 * library does not do itself. Returns the seconds taken. */
typedef struct touch_arg {
  volatile uint8_t *p;
  size_t bytes;
} touch_arg;

static void touch_part(void *a_, int part, int parts) {
  const touch_arg *a = (const touch_arg *)a_;
  const size_t pages = a->bytes / 4096, lo = pages * (size_t)part / (size_t)parts;
  const size_t hi = pages * (size_t)(part + 1) / (size_t)parts;
  size_t i;
  for (i = lo; i < hi; ++i) a->p[i * 4096] = 0;
}

static double bcache_touch(bcache *c) {
  touch_arg a;
  const double t0 = bench_now_s();
  if (O.thp) {
    const uintptr_t lo = ((uintptr_t)c->pages + (2u << 20) - 1) & ~(uintptr_t)((2u << 20) - 1);
    const uintptr_t hi = ((uintptr_t)c->pages + c->layer_bytes) & ~(uintptr_t)((2u << 20) - 1);
#ifdef MADV_HUGEPAGE
    if (hi > lo && madvise((void *)lo, hi - lo, MADV_HUGEPAGE) != 0) perror("bench_attention: madvise(MADV_HUGEPAGE)");
#endif
  }
  a.p = (volatile uint8_t *)c->pages;
  a.bytes = c->layer_bytes;
  run_parallel(touch_part, &a);
  return bench_now_s() - t0;
}

/* Token rows of one fill call, generated in parallel. */
typedef struct gen_arg {
  uint64_t seed;
  const int64_t *req, *pos; /* per token row */
  int64_t n;
  void *k, *v;
  kvp_dtype dt;
} gen_arg;

static void gen_part(void *a_, int part, int parts) {
  const gen_arg *a = (const gen_arg *)a_;
  const int64_t lo = a->n * part / parts, hi = a->n * (part + 1) / parts;
  int64_t r;
  for (r = lo; r < hi; ++r) put_token(a->seed, a->req[r], a->pos[r], a->k, a->v, r, a->dt);
}

/* Writes positions [from, to) of requests [0, nreq) with kvp_concatenate (bf16 or f32 input),
 * batches of up to FILL_TOKENS tokens built with kvp_metadata_build. Returns the seconds spent
 * in kvp_concatenate; *total gets the whole time. */
static double bcache_fill(bcache *c, uint64_t seed, int64_t from, int64_t to, kvp_dtype in_dt, double *total) {
  const size_t isz = kvp_dtype_bits(in_dt) / 8;
  void *k = xmalloc((size_t)FILL_TOKENS * HKV * HD * isz), *v = xmalloc((size_t)FILL_TOKENS * HKV * HD * isz);
  int64_t *rowreq = (int64_t *)xmalloc(sizeof(int64_t) * FILL_TOKENS);
  int64_t *rowpos = (int64_t *)xmalloc(sizeof(int64_t) * FILL_TOKENS);
  kvp_batch_request *reqs = (kvp_batch_request *)xmalloc(sizeof(kvp_batch_request) * (size_t)(c->nreq + 1));
  int64_t *rid = (int64_t *)xmalloc(sizeof(int64_t) * (size_t)(c->nreq + 1));
  int32_t *order = (int32_t *)xmalloc(sizeof(int32_t) * (size_t)(c->nreq + 1));
  double t_cat = 0, t0 = bench_now_s();
  int64_t r = 0, p = from;
  while (r < c->nreq && from < to) {
    int64_t tokens = 0, i, t;
    uint32_t n = 0;
    kvp_metadata *md = NULL;
    const int32_t *qsl = NULL;
    kvp_tensor tk, tv;
    gen_arg ga;
    double tc;
    while (r < c->nreq && tokens < FILL_TOKENS) {
      const int64_t len = (to - p) < (FILL_TOKENS - tokens) ? (to - p) : (FILL_TOKENS - tokens);
      reqs[n].num_computed = p;
      reqs[n].num_scheduled = len;
      reqs[n].page_ids = c->table + r * c->ppr;
      reqs[n].num_pages = c->ppr;
      rid[n] = r;
      ++n;
      tokens += len;
      p += len;
      if (p == to) ++r, p = from;
    }
    check(kvp_metadata_build(&c->cfg, reqs, n, NULL, order, &md), "kvp_metadata_build (fill)");
    check(kvp_metadata_get_array(md, KVP_METADATA_QUERY_START_LOC, &qsl, NULL), "kvp_metadata_get_array");
    for (i = 0; i < (int64_t)n; ++i) {
      const kvp_batch_request *q = &reqs[order[i]];
      for (t = 0; t < q->num_scheduled; ++t) {
        rowreq[qsl[i] + t] = rid[order[i]];
        rowpos[qsl[i] + t] = q->num_computed + t;
      }
    }
    ga.seed = seed, ga.req = rowreq, ga.pos = rowpos, ga.n = tokens, ga.k = k, ga.v = v, ga.dt = in_dt;
    run_parallel(gen_part, &ga);
    tk = tensor3(k, in_dt, tokens, HKV, HD);
    tv = tensor3(v, in_dt, tokens, HKV, HD);
    tc = bench_now_s();
    check(kvp_concatenate(c->cache, 0, &tk, &tv, md, NULL), "kvp_concatenate (fill)");
    t_cat += bench_now_s() - tc;
    kvp_metadata_destroy(md);
  }
  *total = bench_now_s() - t0;
  free(k), free(v), free(rowreq), free(rowpos), free(reqs), free(rid), free(order);
  return t_cat;
}

/* ---- reference ----------------------------------------------------------------------------- */

/* Double-precision attention of one query row (all HQ heads) over positions [0, npos) whose
 * values are in kv[pos][TOKV] (j / 8 as int8). out[HQ][HD]. */
static void ref_row(const float *q, const int8_t *kv, int64_t npos, double scale, double *out, double *logit) {
  int h, d;
  int64_t p;
  for (h = 0; h < HQ; ++h) {
    const int g = h / REP;
    double m = -INFINITY, l = 0;
    for (p = 0; p < npos; ++p) {
      const int8_t *k = kv + p * TOKV + g * HD;
      double s = 0;
      for (d = 0; d < HD; ++d) s += (double)q[h * HD + d] * ((double)k[d] / 8.0);
      logit[p] = s * scale;
      if (logit[p] > m) m = logit[p];
    }
    for (d = 0; d < HD; ++d) out[h * HD + d] = 0;
    for (p = 0; p < npos; ++p) {
      const int8_t *v = kv + p * TOKV + HKV * HD + g * HD;
      const double w = exp(logit[p] - m);
      l += w;
      for (d = 0; d < HD; ++d) out[h * HD + d] += w * ((double)v[d] / 8.0);
    }
    for (d = 0; d < HD; ++d) out[h * HD + d] /= l;
  }
}

#define ATOL 1e-3
#define RTOL 1e-3

/* Max |a - ref| of one row, and whether it is within ATOL + RTOL * |ref|. */
static int cmp_row(const float *a, const double *ref, double *maxerr) {
  int i, ok = 1;
  for (i = 0; i < HQ * HD; ++i) {
    const double e = fabs((double)a[i] - ref[i]);
    if (!(e <= ATOL + RTOL * fabs(ref[i]))) ok = 0;
    if (!(e <= *maxerr)) *maxerr = e; /* NaN propagates */
  }
  return ok;
}

static int all_finite(const float *a, size_t n) {
  size_t i;
  for (i = 0; i < n; ++i)
    if (!isfinite(a[i])) return 0;
  return 1;
}

static double max_diff(const float *a, const float *b, size_t n) {
  double m = 0;
  size_t i;
  for (i = 0; i < n; ++i) {
    const double e = fabs((double)a[i] - (double)b[i]);
    if (!(e <= m)) m = e;
  }
  return m;
}

/* ---- decode -------------------------------------------------------------------------------- */

#define KV_SEED 0x6b76706167657331ull
#define Q_SEED 0x7175657279303031ull
static const double kScale = 0.08838834764831845; /* 1 / sqrt(128) */

typedef struct call_arg {
  kvp_cache *cache;
  kvp_tensor q, k, v, out;
  kvp_metadata *md;
  kvp_attention_options ao;
} call_arg;

static double time_call(const call_arg *a, int fused, const char *what) {
  const double t0 = bench_now_s();
  if (kvp_attention(a->cache, 0, &a->q, fused ? &a->k : NULL, fused ? &a->v : NULL, a->md, &a->ao, &a->out, NULL) !=
      KVP_OK)
    die(what);
  return bench_now_s() - t0;
}

/* One group of `b` requests starting at request `first`: metadata and the fused token. */
typedef struct group {
  kvp_metadata *md;
  int32_t *order;
  uint16_t *k, *v; /* [b][HKV][HD] bf16: the new token (position ctx-1) of each row's request */
} group;

static void group_make(group *g, const bcache *c, int64_t first, int64_t b) {
  kvp_batch_request *reqs = (kvp_batch_request *)xmalloc(sizeof(kvp_batch_request) * (size_t)b);
  int64_t i;
  g->order = (int32_t *)xmalloc(sizeof(int32_t) * (size_t)b);
  g->k = (uint16_t *)xmalloc(sizeof(uint16_t) * (size_t)(b * HKV * HD));
  g->v = (uint16_t *)xmalloc(sizeof(uint16_t) * (size_t)(b * HKV * HD));
  for (i = 0; i < b; ++i) {
    reqs[i].num_computed = c->ctx - 1;
    reqs[i].num_scheduled = 1;
    reqs[i].page_ids = c->table + (first + i) * c->ppr;
    reqs[i].num_pages = c->ppr;
  }
  check(kvp_metadata_build(&c->cfg, reqs, (uint32_t)b, NULL, g->order, &g->md), "kvp_metadata_build");
  for (i = 0; i < b; ++i) {
    g->order[i] += (int32_t)first; /* row i holds request order[i] of the cache */
    put_token(KV_SEED, g->order[i], c->ctx - 1, g->k, g->v, i, KVP_DTYPE_BF16);
  }
  free(reqs);
}

static void set_group(call_arg *a, const group *g) {
  a->md = g->md;
  a->k.data = g->k;
  a->v.data = g->v;
}

static void group_free(group *g) {
  kvp_metadata_destroy(g->md);
  free(g->order), free(g->k), free(g->v);
  memset(g, 0, sizeof *g);
}

/* Notes printed under the table (fills and checks), so that the table's rows stay together. */
static char g_notes[64][400];
static int g_nnotes;
static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...) {
  va_list ap;
  if (g_nnotes >= 64) return;
  va_start(ap, fmt);
  vsnprintf(g_notes[g_nnotes++], sizeof g_notes[0], fmt, ap);
  va_end(ap);
}

static void print_notes(void) {
  int i;
  if (g_nnotes) printf("\n");
  for (i = 0; i < g_nnotes; ++i) printf("- %s\n", g_notes[i]);
  g_nnotes = 0;
  fflush(stdout);
}

/* Checks the outputs of group g (read-only and fused): finite and equal, and with `with_ref` its
 * first and last row against the reference (then a note). Exits on a mismatch. */
static void decode_verify(const bcache *c, const group *g, int64_t b, const float *q, const float *o_ro,
                          const float *o_fu, int with_ref, const char *label) {
  const size_t n = (size_t)(b * HQ * HD);
  double d, maxerr = 0;
  int ok = 1;
  if (!all_finite(o_ro, n) || !all_finite(o_fu, n)) {
    fprintf(stderr, "bench_attention: %s: output not finite\n", label);
    exit(1);
  }
  d = max_diff(o_ro, o_fu, n);
  if (!(d <= ATOL)) {
    fprintf(stderr, "bench_attention: %s: read-only and fused outputs differ by %g\n", label, d);
    exit(1);
  }
  if (with_ref) {
    int8_t *kv = (int8_t *)xmalloc((size_t)(c->ctx * TOKV));
    double *ref = (double *)xmalloc(sizeof(double) * HQ * HD), *logit = (double *)xmalloc(sizeof(double) * (size_t)c->ctx);
    int64_t rows[2], r, p;
    int nr = b > 1 ? 2 : 1, x;
    rows[0] = 0;
    rows[1] = b - 1;
    for (x = 0; x < nr; ++x) {
      r = rows[x];
      for (p = 0; p < c->ctx; ++p) gen_token(KV_SEED, g->order[r], p, kv + p * TOKV);
      ref_row(q + r * HQ * HD, kv, c->ctx, kScale, ref, logit);
      ok &= cmp_row(o_ro + r * HQ * HD, ref, &maxerr);
      ok &= cmp_row(o_fu + r * HQ * HD, ref, &maxerr);
    }
    free(kv), free(ref), free(logit);
    if (!ok) {
      fprintf(stderr, "bench_attention: %s: output differs from the double-precision reference by %g\n", label,
              maxerr);
      exit(1);
    }
    note("check: %s: max |kvp - double reference| %.1e over %d request(s) x 32 heads, read-only vs fused %.1e",
         label, maxerr, nr, d);
  }
}

static void print_decode_header(const char *thr) {
  printf("\n### decode, %s thread%s (KVP_NUM_THREADS=%s)\n\n", thr, strcmp(thr, "1") == 0 ? "" : "s", thr);
  printf("| cache | batch | context | thr | reps | KV read MiB | read-only us | GB/s | ratio | fused us | GB/s | ratio "
         "| plain read GB/s |\n");
  printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  fflush(stdout);
}

static int64_t max_batch(void) {
  int64_t maxb = 0;
  int bi;
  for (bi = 0; bi < O.nbatches; ++bi)
    if (O.batches[bi] > maxb) maxb = O.batches[bi];
  return maxb;
}

/* The decode cache of one dtype and context: how many requests it lays out, and the sizes (in
 * bytes) that decided it. */
typedef struct pool_plan {
  int64_t page_bytes, nreq;        /* nreq 0: not even the smallest batch fits */
  double per_req, staging, budget; /* a request's pages; fill buffers plus a margin; mem_budget() */
} pool_plan;

/* Requests to lay out: the largest batch or, unless --hot, enough for >= 2x the LLC in whole
 * groups of the largest batch; if the memory budget holds fewer, as many whole groups as fit,
 * else the largest batch that fits. */
static pool_plan plan_pool(kvp_dtype dt, int64_t ctx, double llc, int64_t maxb) {
  const int64_t ppr = (ctx + PAGE - 1) / PAGE;
  pool_plan p;
  int64_t want = maxb, fit;
  int bi;
  p.page_bytes = page_bytes_of(dt, ctx);
  p.per_req = (double)(ppr * p.page_bytes);
  p.staging = 2.0 * FILL_TOKENS * HKV * HD * 2 + 64 * MIB;
  p.budget = mem_budget();
  if (!O.hot) {
    const int64_t cold = (int64_t)ceil(2.0 * llc / p.per_req);
    if (cold > want) want = (cold + maxb - 1) / maxb * maxb;
  }
  fit = (int64_t)floor((p.budget - p.staging - (double)p.page_bytes) / p.per_req);
  p.nreq = want <= fit ? want : (fit >= maxb ? fit / maxb * maxb : 0);
  if (p.nreq == 0) /* the largest batch that fits */
    for (bi = 0; bi < O.nbatches; ++bi)
      if (O.batches[bi] <= fit && O.batches[bi] > p.nreq) p.nreq = O.batches[bi];
  return p;
}

static void print_skipped_row(kvp_dtype dt, int64_t b, int64_t ctx, const char *thr, const pool_plan *p) {
  printf("| %s | %" PRId64 " | %" PRId64 " | %s | - | skipped: needs %.2f GiB, %.2f GiB available "
         "(MemAvailable - 2 GiB margin, or --mem-gib) | | | | | | | |\n",
         kvp_dtype_name(dt), b, ctx, thr, (b * p->per_req + p->page_bytes + p->staging) / GIB, p->budget / GIB);
}

static void note_fill(const bcache *c, double llc, double t_touch, double t_fill, double t_cat) {
  const int64_t isz = kvp_dtype_bits(c->dtype) / 8, nreq = c->nreq, ctx = c->ctx;
  note("fill: %s, context %" PRId64 ": %" PRId64 " requests, %.1f MiB of pages%s; first touch%s %.2f s; fill %.2f s, "
       "of which kvp_concatenate %.2f s (%.2f GB/s of bf16 input, %.2f GB/s written)",
       kvp_dtype_name(c->dtype), ctx, nreq, (double)c->layer_bytes / MIB,
       O.hot ? "" : (double)c->layer_bytes >= 2 * llc ? " (>= 2x LLC)" : " (< 2x LLC: memory-limited)",
       O.thp ? " (after MADV_HUGEPAGE)" : "", t_touch, t_fill, t_cat, (double)(nreq * ctx) * TOKV * 2 / t_cat / 1e9,
       (double)(nreq * ctx) * TOKV * (double)isz / t_cat / 1e9);
}

/* One decode row (a batch of `b` on a filled cache): queries, outputs, request groups, the call. */
typedef struct decode_setup {
  const bcache *c;
  int64_t b, used; /* groups made: group 0 for a separate check, then one per timed call */
  double bytes;    /* KV bytes attended by one call */
  int with_ref;
  float *q, *o_ro, *o_fu;
  group *gs;
  call_arg ca;
  char label[128];
} decode_setup;

static void decode_setup_open(decode_setup *s, const bcache *c, int64_t b, int with_ref) {
  const int64_t isz = kvp_dtype_bits(c->dtype) / 8, groups = O.hot ? 1 : c->nreq / b;
  int k;
  s->c = c, s->b = b, s->with_ref = with_ref;
  s->bytes = (double)b * (double)c->ctx * HKV * HD * 2.0 * (double)isz;
  snprintf(s->label, sizeof s->label, "decode %s batch %" PRId64 " context %" PRId64, kvp_dtype_name(c->dtype), b,
           c->ctx);
  s->q = (float *)xmalloc(sizeof(float) * (size_t)(b * HQ * HD));
  s->o_ro = (float *)xmalloc(sizeof(float) * (size_t)(b * HQ * HD));
  s->o_fu = (float *)xmalloc(sizeof(float) * (size_t)(b * HQ * HD));
  for (k = 0; k < b; ++k) gen_queries(Q_SEED, k, s->q + (size_t)k * HQ * HD);
  /* Group 0 for a separate check, then each timed call (read-only, fused, read-only, ...)
   * attends the next group. */
  s->used = groups < 2 * O.reps + 1 ? groups : 2 * O.reps + 1;
  s->gs = (group *)xmalloc(sizeof(group) * (size_t)s->used);
  for (k = 0; k < s->used; ++k) group_make(&s->gs[k], c, k * b, b);
  memset(&s->ca, 0, sizeof s->ca);
  check(kvp_attention_options_init(&s->ca.ao, sizeof s->ca.ao), "kvp_attention_options_init");
  s->ca.ao.softmax_scale = (float)kScale;
  s->ca.cache = c->cache;
  s->ca.q = tensor3(s->q, KVP_DTYPE_F32, b, HQ, HD);
  s->ca.k = tensor3(NULL, KVP_DTYPE_BF16, b, HKV, HD);
  s->ca.v = tensor3(NULL, KVP_DTYPE_BF16, b, HKV, HD);
}

static void decode_setup_close(decode_setup *s) {
  int64_t k;
  for (k = 0; k < s->used; ++k) group_free(&s->gs[k]);
  free(s->gs), free(s->q), free(s->o_ro), free(s->o_fu);
}

/* One call attending group g, into `out`; returns its seconds. */
static double decode_call(decode_setup *s, const group *g, float *out, int fused) {
  set_group(&s->ca, g);
  s->ca.out = tensor3(out, KVP_DTYPE_F32, s->b, HQ, HD);
  return time_call(&s->ca, fused, s->label);
}

typedef struct decode_times {
  double base, ro, fu; /* best seconds: plain read, read-only, fused */
  int reps;
} decode_times;

/* Interleaved repetitions; cold: each call attends the next group, the plain read reads the next
 * window. Without --reps, rows whose repetition takes long get fewer (>= 2). Without a separate
 * check (`separate` 0), the first repetition's outputs are checked. */
static decode_times decode_time(decode_setup *s, int separate) {
  int64_t nwin = (int64_t)(s->c->layer_bytes / (size_t)s->bytes);
  decode_times t;
  double spent = 0;
  int k;
  t.base = t.ro = t.fu = 1e30;
  t.reps = O.reps;
  if (nwin < 1) nwin = 1;
  for (k = 0; k < t.reps; ++k) {
    const group *g1 = &s->gs[(1 + 2 * k) % s->used], *g2 = &s->gs[(2 + 2 * k) % s->used];
    const size_t off = O.hot ? 0 : (size_t)(((k + 1) % nwin) * (int64_t)s->bytes) & ~(size_t)63;
    double t1, t2, t3;
    if (k == 0 && !separate) g2 = g1;
    t1 = time_plain_read(s->c->pages + off, (size_t)s->bytes);
    if (t1 < t.base) t.base = t1;
    t2 = decode_call(s, g1, s->o_ro, 0);
    if (t2 < t.ro) t.ro = t2;
    t3 = decode_call(s, g2, s->o_fu, 1);
    if (t3 < t.fu) t.fu = t3;
    if (k == 0 && !separate) decode_verify(s->c, g1, s->b, s->q, s->o_ro, s->o_fu, s->with_ref, s->label);
    spent += t1 + t2 + t3;
    if (k >= 1 && !O.reps_given && spent + (t1 + t2 + t3) > ROW_SECONDS) t.reps = k + 1; /* the last one */
  }
  return t;
}

static void decode_row(const char *thr, const bcache *c, int64_t b, int with_ref, double llc) {
  decode_setup s;
  decode_times t;
  int separate;
  decode_setup_open(&s, c, b, with_ref);
  /* Small rows: check with two extra calls on group 0. Rows of >= 2x LLC (the data cannot
   * stay in the caches between two calls) are checked on the outputs of the first timed
   * repetition, whose fused call then attends the same group as its read-only call. */
  separate = O.hot || s.bytes < 2 * llc;
  if (separate) {
    decode_call(&s, &s.gs[0], s.o_ro, 0);
    decode_call(&s, &s.gs[0], s.o_fu, 1);
    decode_verify(c, &s.gs[0], b, s.q, s.o_ro, s.o_fu, with_ref, s.label);
  }
  t = decode_time(&s, separate);
  printf("| %s | %" PRId64 " | %" PRId64 " | %s | %d | %.1f | %.1f | %.2f | %.2f | %.1f | %.2f | %.2f | %.2f |\n",
         kvp_dtype_name(c->dtype), b, c->ctx, thr, t.reps, s.bytes / MIB, t.ro * 1e6, s.bytes / t.ro / 1e9,
         t.base / t.ro, t.fu * 1e6, s.bytes / t.fu / 1e9, t.base / t.fu, s.bytes / t.base / 1e9);
  fflush(stdout);
  decode_setup_close(&s);
}

/* The rows of one dtype and context: one cache, filled once, for every batch (those the memory
 * budget does not hold are skipped). */
static void decode_context(const char *thr, kvp_dtype dt, int ci, double llc, int64_t maxb) {
  const int64_t ctx = O.contexts[ci];
  const pool_plan p = plan_pool(dt, ctx, llc, maxb);
  bcache c;
  double t_fill, t_cat, t_touch;
  int bi;
  if (p.nreq == 0) {
    for (bi = 0; bi < O.nbatches; ++bi) print_skipped_row(dt, O.batches[bi], ctx, thr, &p);
    fflush(stdout);
    return;
  }
  bcache_create(&c, dt, ctx, p.nreq);
  t_touch = bcache_touch(&c);
  t_cat = bcache_fill(&c, KV_SEED, 0, ctx, KVP_DTYPE_BF16, &t_fill);
  note_fill(&c, llc, t_touch, t_fill, t_cat);
  for (bi = 0; bi < O.nbatches; ++bi) {
    if (O.batches[bi] > p.nreq) {
      print_skipped_row(dt, O.batches[bi], ctx, thr, &p);
      fflush(stdout);
      continue;
    }
    decode_row(thr, &c, O.batches[bi], O.verify_all || ci == 0, llc);
  }
  bcache_destroy(&c);
}

static void decode_table(const char *thr) {
  char llc_src[64];
  const double llc = llc_bytes(llc_src, sizeof llc_src);
  const int64_t maxb = max_batch();
  int di, ci;
  print_decode_header(thr);
  for (di = 0; di < O.ndtypes; ++di)
    for (ci = 0; ci < O.ncontexts; ++ci) decode_context(thr, O.dtypes[di], ci, llc, maxb);
  print_notes();
}

/* ---- prefill ------------------------------------------------------------------------------- */

/* The prefill cache: a pool of 4 prompts' pages, so the request's pages are shuffled among others;
 * request 0's first `cached` positions filled. */
static void prefill_cache(bcache *c, int64_t prompt, int64_t cached) {
  bcache_create(c, KVP_DTYPE_BF16, prompt, 4);
  bcache_touch(c);
  if (cached > 0) {
    double tot;
    bcache c1 = *c; /* fill only request 0's first `cached` positions */
    c1.nreq = 1;
    bcache_fill(&c1, KV_SEED, 0, cached, KVP_DTYPE_F32, &tot);
  }
}

static kvp_metadata *prefill_metadata(const bcache *c, int64_t cached, int64_t nnew) {
  kvp_batch_request req;
  kvp_metadata *md = NULL;
  int32_t order[1];
  req.num_computed = cached;
  req.num_scheduled = nnew;
  req.page_ids = c->table;
  req.num_pages = c->ppr;
  check(kvp_metadata_build(&c->cfg, &req, 1, NULL, order, &md), "kvp_metadata_build (prefill)");
  return md;
}

/* The f32 buffers of the new tokens: queries, keys, values (generated) and the output. */
typedef struct prefill_bufs {
  float *q, *k, *v, *out;
} prefill_bufs;

/* Generates the new tokens [cached, cached + nnew) of request 0; returns the FLOP count. */
static double prefill_inputs(prefill_bufs *p, int64_t cached, int64_t nnew) {
  int64_t t, visible = 0;
  p->q = (float *)xmalloc(sizeof(float) * (size_t)(nnew * HQ * HD));
  p->out = (float *)xmalloc(sizeof(float) * (size_t)(nnew * HQ * HD));
  p->k = (float *)xmalloc(sizeof(float) * (size_t)(nnew * HKV * HD));
  p->v = (float *)xmalloc(sizeof(float) * (size_t)(nnew * HKV * HD));
  for (t = 0; t < nnew; ++t) {
    gen_queries(Q_SEED + 1, cached + t, p->q + t * HQ * HD);
    /* request 0 of this cache; its data are generated as request id 0 like the fill above */
    put_token(KV_SEED, 0, cached + t, p->k, p->v, t, KVP_DTYPE_F32);
    visible += cached + t + 1;
  }
  return 4.0 * HQ * HD * (double)visible;
}

static void prefill_bufs_free(prefill_bufs *p) {
  free(p->q), free(p->k), free(p->v), free(p->out);
}

static void prefill_call_arg(call_arg *ca, const bcache *c, kvp_metadata *md, const prefill_bufs *p, int64_t nnew) {
  memset(ca, 0, sizeof *ca);
  check(kvp_attention_options_init(&ca->ao, sizeof ca->ao), "kvp_attention_options_init");
  ca->ao.softmax_scale = (float)kScale;
  ca->cache = c->cache;
  ca->md = md;
  ca->q = tensor3(p->q, KVP_DTYPE_F32, nnew, HQ, HD);
  ca->k = tensor3(p->k, KVP_DTYPE_F32, nnew, HKV, HD);
  ca->v = tensor3(p->v, KVP_DTYPE_F32, nnew, HKV, HD);
  ca->out = tensor3(p->out, KVP_DTYPE_F32, nnew, HQ, HD);
}

/* The first, middle and last new token against the reference; exits on a mismatch, else returns
 * the max error. */
static double prefill_verify(const char *label, const float *q, const float *out, int64_t prompt, int64_t cached) {
  const int64_t nnew = prompt - cached;
  int8_t *kv = (int8_t *)xmalloc((size_t)(prompt * TOKV));
  double *ref = (double *)xmalloc(sizeof(double) * HQ * HD);
  double *logit = (double *)xmalloc(sizeof(double) * (size_t)prompt);
  int64_t toks[3], p;
  double maxerr = 0;
  int ok = 1, x;
  toks[0] = 0, toks[1] = nnew / 2, toks[2] = nnew - 1;
  for (p = 0; p < prompt; ++p) gen_token(KV_SEED, 0, p, kv + p * TOKV);
  for (x = 0; x < 3; ++x) {
    ref_row(q + toks[x] * HQ * HD, kv, cached + toks[x] + 1, kScale, ref, logit);
    ok &= cmp_row(out + toks[x] * HQ * HD, ref, &maxerr);
  }
  free(kv), free(ref), free(logit);
  if (!ok) {
    fprintf(stderr, "bench_attention: %s: output differs from the double-precision reference by %g\n", label, maxerr);
    exit(1);
  }
  return maxerr;
}

typedef struct prefill_times {
  double kvp, fma, peak_flops; /* best seconds: kvp_attention, the FMA baseline; the baseline's FLOP */
} prefill_times;

/* Best of O.reps, kvp_attention (fused) interleaved with the FMA baseline of `fma_iters`. */
static prefill_times prefill_time(const call_arg *ca, const char *label, double fma_iters, int isa) {
  prefill_times t;
  fma_arg fa;
  int r;
  t.kvp = t.fma = 1e30;
  fa.iters = (long)fma_iters;
  fa.isa = isa;
  t.peak_flops = fma_flops_per_iter(isa) * (double)fa.iters * g_threads;
  for (r = 0; r < O.reps; ++r) {
    double t0 = bench_now_s(), dt;
    run_parallel(fma_part, &fa);
    dt = bench_now_s() - t0;
    if (dt < t.fma) t.fma = dt;
    dt = time_call(ca, 1, label);
    if (dt < t.kvp) t.kvp = dt;
  }
  return t;
}

static void prefill_row(const char *thr, int64_t prompt, int64_t cached, int verify, double fma_iters, int isa) {
  const int64_t nnew = prompt - cached;
  bcache c;
  kvp_metadata *md;
  prefill_bufs p;
  call_arg ca;
  prefill_times t;
  double flops;
  char label[128], checked[32];
  snprintf(label, sizeof label, "prefill prompt %" PRId64 " cached %" PRId64, prompt, cached);
  prefill_cache(&c, prompt, cached);
  md = prefill_metadata(&c, cached, nnew);
  flops = prefill_inputs(&p, cached, nnew);
  prefill_call_arg(&ca, &c, md, &p, nnew);
  time_call(&ca, 1, label);
  if (!all_finite(p.out, (size_t)(nnew * HQ * HD))) {
    fprintf(stderr, "bench_attention: %s: output not finite\n", label);
    exit(1);
  }
  snprintf(checked, sizeof checked, "not checked");
  if (verify) snprintf(checked, sizeof checked, "%.1e", prefill_verify(label, p.q, p.out, prompt, cached));
  t = prefill_time(&ca, label, fma_iters, isa);
  printf("| %s | %" PRId64 " | %" PRId64 " | %" PRId64 " | %s | %d | %.1f | %.3f | %.1f | %.1f | %.3f | %s |\n",
         cached ? "chunked" : "fresh", prompt, cached, nnew, thr, O.reps, t.kvp * 1e6, flops / 1e9,
         flops / t.kvp / 1e9, t.peak_flops / t.fma / 1e9, (flops / t.kvp) / (t.peak_flops / t.fma), checked);
  fflush(stdout);
  kvp_metadata_destroy(md);
  prefill_bufs_free(&p);
  bcache_destroy(&c);
}

static void prefill_table(const char *thr) {
  const int isa = fma_isa();
  const char *isa_name = isa == 2 ? "AVX-512 FMA" : isa == 1 ? "AVX2 FMA" : "SSE mul+add";
  double iters = 1 << 14, t = 0;
  int i;
  fma_arg fa;
  /* Size the FMA baseline to about 20 ms per run. */
  while (iters < 1e10) {
    double t0 = bench_now_s();
    fa.iters = (long)iters;
    fa.isa = isa;
    run_parallel(fma_part, &fa);
    t = bench_now_s() - t0;
    if (t > 5e-3) break;
    iters *= 4;
  }
  iters = iters * 0.02 / (t > 0 ? t : 1e-3);
  printf("\n### prefill, %s thread%s (KVP_NUM_THREADS=%s; baseline: %s, %d chains per thread)\n\n", thr,
         strcmp(thr, "1") == 0 ? "" : "s", thr, isa_name, 12);
  printf("| case | prompt | cached | new | thr | reps | attention us | GFLOP | GFLOP/s | FMA peak GFLOP/s | "
         "ratio | max err |\n");
  printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  fflush(stdout);
  for (i = 0; i < O.nprompts; ++i) prefill_row(thr, O.prompts[i], 0, O.verify_all || i == 0, iters, isa);
  { /* chunked: the largest prompt, its first 3/4 cached */
    const int64_t p = O.prompts[O.nprompts - 1], cached = p / 4 * 3;
    if (cached > 0) prefill_row(thr, p, cached, 1, iters, isa);
  }
}

/* ---- main ---------------------------------------------------------------------------------- */

static int run_child(char **argv, const char *table, long threads) {
  char nbuf[32];
  pid_t pid;
  fflush(stdout);
  snprintf(nbuf, sizeof nbuf, "%ld", threads);
  pid = fork();
  if (pid == 0) {
    setenv("KVP_NUM_THREADS", nbuf, 1); /* the library's CPU thread pool */
    setenv("KVP_BENCH_CHILD", nbuf, 1);
    setenv("KVP_BENCH_TABLE", table, 1);
    execv("/proc/self/exe", argv);
    perror("execv");
    _exit(127);
  } else if (pid > 0) {
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      fprintf(stderr, "bench_attention: the %s run with %ld thread(s) failed\n", table, threads);
      return 1;
    }
    return 0;
  }
  perror("fork");
  return 1;
}

/* The report's header lines: date, machine, library, shape, options. */
static void print_report_header(long nproc) {
  char model[256], date[64], llc_src[64];
  const double llc = llc_bytes(llc_src, sizeof llc_src);
  const char *isa_env = getenv("KVP_CPU_ISA");
  time_t tt = time(NULL);
  bench_cpu_model(model, sizeof model);
  strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", gmtime(&tt));
  printf("# kvp_attention on the CPU\n\n");
  printf("- date: %s\n- machine: %s, %ld logical CPUs, %.1f GiB memory (%.1f GiB available at start), "
         "last-level cache %.0f MiB (%s)\n",
         date, model, nproc, mem_total() / GIB, mem_available() / GIB, llc / MIB, llc_src);
  printf("- library: %s; CPU kernels: %s%s%s\n", kvp_build_info(), lib_isa(), isa_env ? ", KVP_CPU_ISA=" : "",
         isa_env ? isa_env : "");
  printf("- shape: llama3-8b (8 KV heads, 32 query heads, head dim 128), v3 layout, page size 16, one layer; "
         "f32 queries and output; causal, softmax scale 1/sqrt(128); pages of each request shuffled in the pool\n");
  printf("- options:%s%s%s; best of %d%s\n", O.quick ? " --quick" : "",
         O.hot ? " --hot (data may stay in the caches)"
               : " cold (each timed call reads memory that the calls before it did not)",
         O.thp ? "; --thp: the bench madvises the page memory MADV_HUGEPAGE (the library does not)" : "", O.reps,
         O.reps_given || O.reps <= 2 ? ""
                                     : " (a decode row stops after 8 s of timed calls, with at least 2: "
                                       "see reps)");
}

static void print_decode_intro(void) {
  printf("\n## Decode: one query token per request, context already in the cache\n\n");
  printf("KV read = batch x context x 8 KV heads x 128 lanes x 2 (K and V) x itemsize: the K and V lanes "
         "attended (v3 pads the head dim to align(D, 128): nothing for D = 128). read-only = keys/values "
         "NULL; fused = with the write of each request's new token (position context-1). plain read = "
         "the same bytes summed by the same number of threads from a contiguous window of the cache's "
         "page memory, interleaved; ratio = plain read time / kvp time. Best of `reps`.\n");
}

static void print_prefill_intro(void) {
  printf("\n## Prefill: one request, bf16 pages, f32 queries/keys/values/output, fused write of the new "
         "tokens\n\n");
  printf("GFLOP = 4 x 32 heads x 128 x sum over new tokens of the keys each sees (causal). FMA peak = "
         "independent multiply-add chains on the same number of threads, interleaved; ratio = attention "
         "GFLOP/s / FMA peak. max err = max |kvp - double-precision reference| over the first, middle "
         "and last new token (all 32 heads). Best of `reps`.\n");
}

/* The parent process: the header, then each table run by a child per thread count (1 and all
 * CPUs, or --threads). Returns the exit status: non-zero once a child failed. */
static int run_report(char **argv) {
  const long nproc = sysconf(_SC_NPROCESSORS_ONLN);
  long counts[2];
  int nc, c, rc = 0;
  counts[0] = 1;
  counts[1] = nproc > 0 ? nproc : 1;
  nc = counts[1] > 1 ? 2 : 1;
  if (O.threads > 0) counts[0] = O.threads, nc = 1;
  print_report_header(nproc);
  if (O.decode) {
    print_decode_intro();
    for (c = 0; c < nc && rc == 0; ++c) rc |= run_child(argv, "decode", counts[c]);
  }
  if (O.prefill && rc == 0) {
    print_prefill_intro();
    for (c = 0; c < nc && rc == 0; ++c) rc |= run_child(argv, "prefill", counts[c]);
  }
  return rc;
}

/* A child process: the table KVP_BENCH_TABLE names, with the bench's threads as KVP_BENCH_CHILD. */
static int run_table(const char *child) {
  const char *table = getenv("KVP_BENCH_TABLE");
  start_helpers(atoi(child) > 0 ? atoi(child) : 1);
  if (table != NULL && strcmp(table, "prefill") == 0) prefill_table(child);
  else decode_table(child);
  return 0;
}

int main(int argc, char **argv) {
  const char *child = getenv("KVP_BENCH_CHILD");
  parse_opts(argc, argv);
  init_tables();
  return child == NULL ? run_report(argv) : run_table(child);
}
