/* The C side of scripts/bench_peers.py (built and loaded through ctypes by scripts/bench-peers.sh):
 * one KV write of N tokens set up for kvpages (kvp_concatenate into a one-layer paged cache) and
 * for the C peers (memcpy and a streaming copy of the same input bytes; ggml set_rows into
 * llama.cpp-style caches [kv_size, H*D]), a timer that runs one peer `inner` times in a C loop,
 * so no Python overhead counts for the C peers, and a timer of one call after the caches were
 * evicted (cold destinations).
 *
 * Slots: a token written to page p at offset s has slot p * PAGE + s, in kvpages and in the peer
 * caches alike; the peer caches (one for K, one for V, [kv_size, H, D] in the cache dtype) are
 * shared with numpy and torch on the Python side. Public APIs only (kvpages.h, ggml.h,
 * ggml-cpu.h). Not a test and not part of the library. */
#define _POSIX_C_SOURCE 200809L
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggml-cpu.h"
#include "ggml.h"
#include "kvpages.h"

#define PAGE 16
#define PREFILL_MAX 512
#define ALIGN 64

enum { PEER_KVPAGES = 0, PEER_MEMCPY = 1, PEER_STREAM = 2, PEER_GGML = 3 };

/* What Python reads (mirrored by a ctypes.Structure in bench_peers.py). */
typedef struct kvpb_bufs {
  void *k_in, *v_in;         /* [N, H, D] in the input dtype */
  int64_t *slots;            /* [N] */
  void *peer_k, *peer_v;     /* [kv_size, H, D] in the cache dtype */
  int64_t kv_size;           /* rows of a peer cache = pages * PAGE */
  int64_t num_requests;      /* requests in the batch */
} kvpb_bufs;

typedef struct kvpb_case {
  kvpb_bufs b;
  int64_t n, h, d, in_size, cache_size;
  int threads;
  kvp_cache *cache;
  kvp_metadata *md;
  kvp_tensor k, v;
  void *copy_k, *copy_v; /* memcpy / streaming copy destinations, [N, H, D] input bytes */
  struct ggml_context *gctx;
  struct ggml_cgraph *graph;
  struct ggml_threadpool *pool;
  struct ggml_cplan plan;
  void *work;
} kvpb_case;

static char g_error[512];

const char *kvpb_error(void) { return g_error; }

static int fail(const char *what) {
  snprintf(g_error, sizeof g_error, "%s: %s", what, kvp_last_error_message());
  return -1;
}

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) {
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return g_rng;
}

static void *alloc_aligned(size_t bytes) {
  void *p = NULL;
  return posix_memalign(&p, ALIGN, bytes ? (bytes + ALIGN - 1) / ALIGN * ALIGN : ALIGN) == 0 ? p : NULL;
}

/* Finite inputs. f32: magnitudes 2^-8 .. 2^3 with random mantissas (activation-like: no
 * subnormal work for any peer's timing), every 16th value an exact f16 rounding tie (low 13 bits
 * 0x1000) so that round-to-nearest-even is exercised, and every 1024th value in f16's subnormal
 * range (2^-24 .. 2^-16). 16-bit: random bits with exponent bit 14 clear (finite in f16 and bf16). */
static void fill_input(void *dst, int64_t count, kvp_dtype dtype) {
  int64_t i;
  if (dtype == KVP_DTYPE_F32) {
    uint32_t *u = (uint32_t *)dst;
    for (i = 0; i < count; ++i) {
      const uint64_t r = rnd();
      const int subnormal = i % 1024 == 7;
      const uint32_t exp = subnormal ? 127u - 24u + (uint32_t)((r >> 32) % 9u) : 127u - 8u + (uint32_t)((r >> 32) % 11u);
      uint32_t mant = (uint32_t)r & 0x7FFFFFu;
      if (i % 16 == 0) mant = (mant & ~0x1FFFu) | 0x1000u;
      u[i] = (uint32_t)(r >> 63) << 31 | exp << 23 | mant;
    }
  } else {
    uint16_t *u = (uint16_t *)dst;
    for (i = 0; i < count; ++i) u[i] = (uint16_t)(rnd() & 0xBFFFu);
  }
}

/* Requests: decode = one token each on its own page at offset 5 + i % 11; prefill = requests of
 * up to PREFILL_MAX tokens from offset 0. Pages come from a shuffled pool (page 0 unused), as a
 * page allocator hands them out after a while. Fills c->b.slots. */
static int build_batch(kvpb_case *c, const kvp_config *cfg, int prefill) {
  const int64_t n = c->n, np = cfg->num_pages;
  int32_t *perm = (int32_t *)malloc(sizeof(int32_t) * (size_t)np);
  kvp_batch_request *reqs = (kvp_batch_request *)calloc((size_t)n, sizeof *reqs);
  int64_t i, used = 0, tok = 0, nreq = 0;
  int rc = 0;
  if (perm == NULL || reqs == NULL) {
    snprintf(g_error, sizeof g_error, "out of memory");
    rc = -1;
    goto done;
  }
  for (i = 1; i < np; ++i) perm[i - 1] = (int32_t)i;
  for (i = np - 2; i > 0; --i) {
    const int64_t j = (int64_t)(rnd() % (uint64_t)(i + 1));
    const int32_t x = perm[i];
    perm[i] = perm[j];
    perm[j] = x;
  }
  while (tok < n) {
    const int64_t len = prefill ? (n - tok < PREFILL_MAX ? n - tok : PREFILL_MAX) : 1;
    const int64_t start = prefill ? 0 : 5 + nreq % 11, pages = (start + len + PAGE - 1) / PAGE;
    reqs[nreq].num_computed = start;
    reqs[nreq].num_scheduled = len;
    reqs[nreq].page_ids = &perm[used];
    reqs[nreq].num_pages = pages;
    for (i = 0; i < len; ++i) c->b.slots[tok + i] = (int64_t)perm[used + (start + i) / PAGE] * PAGE + (start + i) % PAGE;
    used += pages;
    tok += len;
    nreq++;
  }
  c->b.num_requests = nreq;
  if (kvp_metadata_build(cfg, reqs, (uint32_t)nreq, NULL, NULL, &c->md) != KVP_OK) rc = fail("kvp_metadata_build");
done:
  free(perm);
  free(reqs);
  return rc;
}

static int make_cache(kvpb_case *c, kvp_dtype cache_dtype, int prefill, kvp_config *cfg) {
  const int64_t pages = prefill ? (c->n + PREFILL_MAX - 1) / PREFILL_MAX * (PREFILL_MAX / PAGE) + 2 : c->n + 2;
  kvp_config_options o;
  kvp_layout_info li = KVP_LAYOUT_INFO_INIT;
  kvp_config_options_init(&o, sizeof o);
  o.num_hidden_layers = 1;
  o.num_kv_heads = c->h;
  o.kv_head_dim_size = c->d;
  o.max_model_length = 8192;
  o.page_size = PAGE;
  o.kvdtype = cache_dtype;
  o.version = KVP_LAYOUT_V3;
  o.flags = KVP_CONFIG_FLAG_NO_SAFETY_MARGIN;
  o.budget_bytes = 1 << 30;
  if (kvp_config_create(&o, cfg) != KVP_OK || kvp_config_get_layout(cfg, &li) != KVP_OK) return fail("kvp config");
  o.budget_bytes = li.page_bytes_per_layer * pages;
  if (kvp_config_create(&o, cfg) != KVP_OK) return fail("kvp_config_create");
  if (kvp_cache_create(cfg, NULL, &c->cache) != KVP_OK) return fail("kvp_cache_create");
  return 0;
}

static void describe_input(kvpb_case *c, kvp_dtype in) {
  memset(&c->k, 0, sizeof c->k);
  c->k.dtype = in;
  c->k.ndim = 3;
  c->k.shape[0] = c->n;
  c->k.shape[1] = c->h;
  c->k.shape[2] = c->d;
  c->k.strides[0] = c->h * c->d;
  c->k.strides[1] = c->d;
  c->k.strides[2] = 1;
  c->k.device_type = KVP_DEVICE_CPU;
  c->v = c->k;
  c->k.data = c->b.k_in;
  c->v.data = c->b.v_in;
}

/* Two set_rows nodes (K and V) into [kv_size, H*D] caches, as llama.cpp's KV cache writes, in a
 * graph planned once for `threads` threads on a reused ggml threadpool. ggml's set_rows takes f32
 * or f16 rows; bf16 rows go through it as f16 (a byte copy: the same bytes). Only for 16-bit
 * caches: ggml has no fp8 type. */
static int make_ggml(kvpb_case *c, kvp_dtype in) {
  const enum ggml_type tin = in == KVP_DTYPE_F32 ? GGML_TYPE_F32 : GGML_TYPE_F16;
  const enum ggml_type tcache = GGML_TYPE_F16;
  struct ggml_init_params ip = {ggml_tensor_overhead() * 16 + ggml_graph_overhead() + 4096, NULL, true};
  struct ggml_threadpool_params tp = ggml_threadpool_params_default(c->threads);
  struct ggml_tensor *kc, *vc, *kx, *vx, *idx;
  c->gctx = ggml_init(ip);
  if (c->gctx == NULL) {
    snprintf(g_error, sizeof g_error, "ggml_init failed");
    return -1;
  }
  kc = ggml_new_tensor_2d(c->gctx, tcache, c->h * c->d, c->b.kv_size);
  vc = ggml_new_tensor_2d(c->gctx, tcache, c->h * c->d, c->b.kv_size);
  kx = ggml_new_tensor_2d(c->gctx, tin, c->h * c->d, c->n);
  vx = ggml_new_tensor_2d(c->gctx, tin, c->h * c->d, c->n);
  idx = ggml_new_tensor_1d(c->gctx, GGML_TYPE_I64, c->n);
  kc->data = c->b.peer_k; /* before the views: ggml_set_rows views its destination */
  vc->data = c->b.peer_v;
  kx->data = c->b.k_in;
  vx->data = c->b.v_in;
  idx->data = c->b.slots;
  c->graph = ggml_new_graph(c->gctx);
  ggml_build_forward_expand(c->graph, ggml_set_rows(c->gctx, kc, kx, idx));
  ggml_build_forward_expand(c->graph, ggml_set_rows(c->gctx, vc, vx, idx));
  c->pool = ggml_threadpool_new(&tp);
  if (c->pool == NULL) {
    snprintf(g_error, sizeof g_error, "ggml_threadpool_new(%d threads) failed", c->threads);
    return -1;
  }
  c->plan = ggml_graph_plan(c->graph, c->threads, c->pool);
  if (c->plan.work_size > 0) {
    c->work = alloc_aligned(c->plan.work_size);
    if (c->work == NULL) {
      snprintf(g_error, sizeof g_error, "out of memory for ggml's %zu-byte work buffer", c->plan.work_size);
      return -1;
    }
    c->plan.work_data = (uint8_t *)c->work;
  }
  return 0;
}

void kvpb_case_free(kvpb_case *c);

/* A write of n tokens of h heads x d lanes, input dtype `in` into cache dtype `cache`, decode
 * (prefill = 0) or prefill batch; C peers on `threads` threads (kvpages: KVP_NUM_THREADS).
 * NULL on failure (kvpb_error() says why). */
kvpb_case *kvpb_case_new(int64_t h, int64_t d, int in, int cache, int64_t n, int prefill, int threads) {
  kvpb_case *c = (kvpb_case *)calloc(1, sizeof *c);
  kvp_config cfg;
  size_t in_bytes, peer_bytes;
  if (c == NULL) return NULL;
  c->n = n;
  c->h = h;
  c->d = d;
  c->threads = threads;
  c->in_size = kvp_dtype_bits((kvp_dtype)in) / 8;
  c->cache_size = kvp_dtype_bits((kvp_dtype)cache) / 8;
  g_rng = 0x9E3779B97F4A7C15ull ^ (uint64_t)(n * 131 + h * 7 + d + prefill);
  if (make_cache(c, (kvp_dtype)cache, prefill, &cfg) != 0) goto fail;
  c->b.kv_size = cfg.num_pages * PAGE;
  in_bytes = (size_t)(n * h * d * c->in_size);
  peer_bytes = (size_t)(c->b.kv_size * h * d * c->cache_size);
  c->b.k_in = alloc_aligned(in_bytes);
  c->b.v_in = alloc_aligned(in_bytes);
  c->copy_k = alloc_aligned(in_bytes);
  c->copy_v = alloc_aligned(in_bytes);
  c->b.slots = (int64_t *)alloc_aligned(sizeof(int64_t) * (size_t)n);
  c->b.peer_k = calloc(1, peer_bytes); /* zero pages, touched by each peer's warm-up call */
  c->b.peer_v = calloc(1, peer_bytes);
  if (!c->b.k_in || !c->b.v_in || !c->copy_k || !c->copy_v || !c->b.slots || !c->b.peer_k || !c->b.peer_v) {
    snprintf(g_error, sizeof g_error, "out of memory");
    goto fail;
  }
  fill_input(c->b.k_in, n * h * d, (kvp_dtype)in);
  fill_input(c->b.v_in, n * h * d, (kvp_dtype)in);
  memset(c->copy_k, 1, in_bytes);
  memset(c->copy_v, 1, in_bytes);
  if (build_batch(c, &cfg, prefill) != 0) goto fail;
  describe_input(c, (kvp_dtype)in);
  if (c->cache_size == 2 && make_ggml(c, (kvp_dtype)in) != 0) goto fail; /* ggml has no fp8 type */
  return c;
fail:
  kvpb_case_free(c);
  return NULL;
}

void kvpb_case_free(kvpb_case *c) {
  if (c == NULL) return;
  if (c->pool) ggml_threadpool_free(c->pool);
  if (c->gctx) ggml_free(c->gctx);
  kvp_metadata_destroy(c->md);
  kvp_cache_destroy(c->cache);
  free(c->work);
  free(c->b.k_in);
  free(c->b.v_in);
  free(c->copy_k);
  free(c->copy_v);
  free(c->b.slots);
  free(c->b.peer_k);
  free(c->b.peer_v);
  free(c);
}

const kvpb_bufs *kvpb_case_bufs(const kvpb_case *c) { return &c->b; }

/* kvpages' stored K and V rows of the case's slots, [N, H, D] each in the cache dtype, read
 * through the KEYS / VALUES views (padding lanes and h64's other half excluded). */
int kvpb_kvpages_rows(const kvpb_case *c, void *k_out, void *v_out) {
  int which;
  for (which = 0; which < 2; ++which) {
    kvp_tensor t;
    unsigned char *out = (unsigned char *)(which ? v_out : k_out);
    int64_t i, hh, dd;
    const size_t es = (size_t)c->cache_size;
    if (kvp_cache_get_view(c->cache, 0, which ? KVP_VIEW_VALUES : KVP_VIEW_KEYS, &t) != KVP_OK)
      return fail("kvp_cache_get_view");
    for (i = 0; i < c->n; ++i) {
      const int64_t p = c->b.slots[i] / PAGE, s = c->b.slots[i] % PAGE;
      for (hh = 0; hh < c->h; ++hh)
        for (dd = 0; dd < c->d; ++dd) {
          const int64_t off = p * t.strides[0] + s * t.strides[1] + hh * t.strides[2] + dd * t.strides[3];
          memcpy(out + ((i * c->h + hh) * c->d + dd) * es, (const unsigned char *)t.data + off * (int64_t)es, es);
        }
    }
  }
  return 0;
}

static void plain_copy(void *dst, const void *src, size_t n) { memcpy(dst, src, n); }

/* Non-temporal copy at the widest store this compiler targets; dst 64-byte aligned. */
static void stream_copy(void *dst, const void *src, size_t n) {
  unsigned char *d = (unsigned char *)dst;
  const unsigned char *s = (const unsigned char *)src;
  size_t i = 0;
#if defined(__AVX512F__)
  for (; i + 64 <= n; i += 64) _mm512_stream_si512((void *)(d + i), _mm512_loadu_si512((const void *)(s + i)));
#elif defined(__AVX__)
  for (; i + 32 <= n; i += 32)
    _mm256_stream_si256((__m256i *)(d + i), _mm256_loadu_si256((const __m256i *)(s + i)));
#else
  for (; i + 16 <= n; i += 16) _mm_stream_si128((__m128i *)(d + i), _mm_loadu_si128((const __m128i *)(s + i)));
#endif
  memcpy(d + i, s + i, n - i);
  _mm_sfence();
}

/* K and V input bytes into the copy buffers, split over c->threads (OpenMP) in 64-byte-aligned
 * parts. */
static void copy_inputs(kvpb_case *c, int streaming) {
  const size_t bytes = (size_t)(c->n * c->h * c->d * c->in_size);
  const int parts = c->threads;
  const size_t per = (bytes / (size_t)parts + ALIGN - 1) / ALIGN * ALIGN;
  int part;
#pragma omp parallel for num_threads(parts) if (parts > 1)
  for (part = 0; part < parts; ++part) {
    const size_t lo = per * (size_t)part, hi = lo + per < bytes ? lo + per : bytes;
    void (*copy)(void *, const void *, size_t) = streaming ? stream_copy : plain_copy;
    if (lo >= hi) continue;
    copy((unsigned char *)c->copy_k + lo, (const unsigned char *)c->b.k_in + lo, hi - lo);
    copy((unsigned char *)c->copy_v + lo, (const unsigned char *)c->b.v_in + lo, hi - lo);
  }
}

static int run_once(kvpb_case *c, int peer) {
  switch (peer) {
  case PEER_KVPAGES:
    return kvp_concatenate(c->cache, 0, &c->k, &c->v, c->md, NULL) == KVP_OK ? 0 : fail("kvp_concatenate");
  case PEER_MEMCPY:
  case PEER_STREAM:
    copy_inputs(c, peer == PEER_STREAM);
    return 0;
  case PEER_GGML:
    if (c->graph == NULL) {
      snprintf(g_error, sizeof g_error, "no ggml peer for this cache dtype");
      return -1;
    }
    if (ggml_graph_compute(c->graph, &c->plan) == GGML_STATUS_SUCCESS) return 0;
    snprintf(g_error, sizeof g_error, "ggml_graph_compute failed");
    return -1;
  default:
    snprintf(g_error, sizeof g_error, "unknown peer %d", peer);
    return -1;
  }
}

/* Seconds per call of `inner` back-to-back calls of one peer; negative on failure. */
double kvpb_time(kvpb_case *c, int peer, int inner) {
  struct timespec t0, t1;
  int i;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (i = 0; i < inner; ++i)
    if (run_once(c, peer) != 0) return -1.0;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  return ((double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec)) / inner;
}

/* Cold destinations (bench_peers.py --cold): what a layer's write meets in a model step, where the
 * other layers' writes and attention pass between two writes of one layer. kvpb_evict() reads an
 * eviction buffer (KVP_BENCH_EVICT_MIB, default 64 MiB: twice the 32 MiB L3 of the AMD EPYC this
 * was written on) so that no cache level keeps any peer's destination, then reads the K and V
 * inputs back in, as the layer's projection leaves them. Clean lines only: the eviction itself
 * leaves nothing dirty to write back during the timed call. */
static volatile uint64_t g_sink;

static size_t evict_bytes(void) {
  const char *mib = getenv("KVP_BENCH_EVICT_MIB");
  const long v = mib != NULL ? atol(mib) : 0;
  return (size_t)(v > 0 ? v : 64) << 20;
}

static uint64_t read_lines(const void *p, size_t bytes) {
  const unsigned char *b = (const unsigned char *)p;
  uint64_t sum = 0;
  size_t i;
  for (i = 0; i + 8 <= bytes; i += 64) sum += *(const uint64_t *)(const void *)(b + i);
  return sum;
}

int kvpb_evict(kvpb_case *c) {
  static unsigned char *buf;
  static size_t bytes;
  const size_t in_bytes = (size_t)(c->n * c->h * c->d * c->in_size);
  if (buf == NULL) {
    bytes = evict_bytes();
    buf = (unsigned char *)alloc_aligned(bytes);
    if (buf == NULL) {
      snprintf(g_error, sizeof g_error, "out of memory (eviction buffer of %zu MiB)", bytes >> 20);
      return -1;
    }
    memset(buf, 1, bytes);
  }
  g_sink += read_lines(buf, bytes) + read_lines(c->b.k_in, in_bytes) + read_lines(c->b.v_in, in_bytes);
  return 0;
}

/* Seconds of one call of one peer after kvpb_evict(); negative on failure. */
double kvpb_time_cold(kvpb_case *c, int peer) {
  return kvpb_evict(c) != 0 ? -1.0 : kvpb_time(c, peer, 1);
}

/* "ggml <version> (<commit>)" for the header. */
const char *kvpb_ggml_version(void) {
  static char buf[128];
  snprintf(buf, sizeof buf, "ggml %s (llama.cpp %s)", ggml_version(), ggml_commit());
  return buf;
}
