/* kvp_attention on CUDA caches, checked against the CPU backend: the same batch on a CPU cache
 * and on a CUDA cache must write the same pages (byte for byte: the fused write is
 * kvp_concatenate's) and produce the same outputs (within f32 accumulation-order differences),
 * with host metadata, device-resident metadata, key-range splits, and from a replayed CUDA graph.
 * Device-resident metadata that breaks a bound is reported through the cache's asynchronous error.
 *
 * Every test skip()s when the build has no CUDA or the machine has no GPU; ctest also runs them
 * against the emulated CUDA runtime (cuemu.test_cuda_attention). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_support.h"

#if KVP_HAS_CUDA

/* One case: the cache, the batch (cached context and new tokens per request) and the options. */
typedef struct scenario {
  kvp_layout layout;
  kvp_dtype cache_dtype, q_dtype, out_dtype;
  int64_t kv_heads, rep, head_dim, page_size;
  int n;                   /* requests */
  int64_t cached[4], fresh[4];
  int64_t padding;         /* token rows after the last request */
  uint32_t batch_flags;    /* kvp_metadata_build flags; 0 = KVP_BATCH_FLAG_KEEP_ORDER */
  kvp_attention_options opts;
  float sinks[64];
} scenario;

typedef struct side {
  kvp_cache *cache;
  void *q, *k, *v, *out; /* host or device buffers */
} side;

static kvp_config config_of(const scenario *sc) {
  return kvp_test_config_len(1, sc->kv_heads, sc->head_dim, sc->page_size, 256, sc->cache_dtype, sc->layout, 2048);
}

/* Values in [-1, 1) in dtype dt (f32, f16 or bf16 encodings by truncation: exact for what they hold). */
static void fill(void *buf, kvp_dtype dt, int64_t n, uint64_t *rng) {
  for (int64_t i = 0; i < n; ++i) {
    const float f = (float)((int64_t)(kvp_test_rand(rng) % 2000) - 1000) / 1000.0f;
    uint32_t u;
    memcpy(&u, &f, 4);
    if (dt == KVP_DTYPE_F32) {
      memcpy((uint8_t *)buf + 4 * i, &f, 4);
    } else if (dt == KVP_DTYPE_BF16) {
      const uint16_t h = (uint16_t)(u >> 16);
      memcpy((uint8_t *)buf + 2 * i, &h, 2);
    } else { /* f16 of a value in [-1, 1): exponent rebias, mantissa truncated */
      const int e = (int)((u >> 23) & 0xFF) - 127 + 15;
      const uint16_t h = (uint16_t)(((u >> 16) & 0x8000u) | (e <= 0 ? 0u : (uint32_t)(e << 10) | ((u >> 13) & 0x3FFu)));
      memcpy((uint8_t *)buf + 2 * i, &h, 2);
    }
  }
}

static float as_f32(const void *buf, kvp_dtype dt, int64_t i) {
  uint32_t u = 0;
  float f;
  if (dt == KVP_DTYPE_F32) {
    memcpy(&f, (const uint8_t *)buf + 4 * i, 4);
    return f;
  }
  uint16_t h;
  memcpy(&h, (const uint8_t *)buf + 2 * i, 2);
  if (dt == KVP_DTYPE_BF16) {
    u = (uint32_t)h << 16;
    memcpy(&f, &u, 4);
    return f;
  }
  const int e = (h >> 10) & 0x1F;
  const float m = (float)(h & 0x3FF);
  f = e == 0 ? ldexpf(m, -24) : ldexpf(1024.0f + m, e - 25);
  return (h & 0x8000) ? -f : f;
}

/* The step's metadata (requests with their cached context as num_computed), built by the batch
 * builder over distinct pages 1, 2, ...; *tokens_out: the token rows including padding. */
static kvp_metadata *step_metadata(const scenario *sc, int context_only, int64_t *tokens_out) {
  const kvp_config cfg = config_of(sc);
  kvp_batch_request reqs[4];
  static int32_t pages[4][64];
  int32_t next = 1;
  int64_t tokens = 0;
  memset(reqs, 0, sizeof reqs);
  for (int i = 0; i < sc->n; ++i) {
    const int64_t len = sc->cached[i] + sc->fresh[i];
    const int64_t np = (len + sc->page_size - 1) / sc->page_size;
    assert_true(np <= 64);
    for (int64_t p = 0; p < np; ++p) pages[i][p] = next++;
    reqs[i].num_computed = context_only ? 0 : sc->cached[i];
    reqs[i].num_scheduled = context_only ? sc->cached[i] : sc->fresh[i];
    reqs[i].page_ids = pages[i];
    reqs[i].num_pages = np;
    tokens += reqs[i].num_scheduled;
  }
  kvp_batch_options bo;
  assert_kvp_ok(kvp_batch_options_init(&bo, sizeof bo));
  bo.flags = sc->batch_flags != 0 ? sc->batch_flags : KVP_BATCH_FLAG_KEEP_ORDER;
  bo.max_num_reqs = sc->n + 1; /* one inactive table row */
  bo.max_num_tokens = tokens + (context_only ? 0 : sc->padding);
  kvp_metadata *md = NULL;
  assert_kvp_ok(kvp_metadata_build(&cfg, reqs, (uint32_t)sc->n, &bo, NULL, &md));
  *tokens_out = bo.max_num_tokens;
  return md;
}


/* Writes the cached context of every request (the same random k/v on both caches). */
static void write_context(const scenario *sc, side *cpu, side *gpu, uint64_t *rng) {
  int64_t T = 0;
  kvp_metadata *md = step_metadata(sc, 1, &T);
  if (T > 0) {
    const int64_t n = T * sc->kv_heads * sc->head_dim;
    float *k = (float *)malloc((size_t)n * 4), *v = (float *)malloc((size_t)n * 4);
    fill(k, KVP_DTYPE_F32, n, rng);
    fill(v, KVP_DTYPE_F32, n, rng);
    kvp_tensor kt = kvp_test_tensor(k, KVP_DTYPE_F32, T, sc->kv_heads, sc->head_dim, KVP_DEVICE_CPU);
    kvp_tensor vt = kvp_test_tensor(v, KVP_DTYPE_F32, T, sc->kv_heads, sc->head_dim, KVP_DEVICE_CPU);
    assert_kvp_ok(kvp_concatenate(cpu->cache, 0, &kt, &vt, md, NULL));
    void *dk = kvp_gpu_upload(k, (size_t)n * 4), *dv = kvp_gpu_upload(v, (size_t)n * 4);
    kt.data = dk;
    vt.data = dv;
    kt.device_type = vt.device_type = KVP_DEVICE_CUDA;
    assert_kvp_ok(kvp_concatenate(gpu->cache, 0, &kt, &vt, md, NULL));
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaFree(dk));
    CUDA_OK(cudaFree(dv));
    free(k);
    free(v);
  }
  assert_kvp_ok(kvp_metadata_destroy(md));
}

/* The layer bytes of both caches are equal. */
static void expect_same_pages(const kvp_cache *cpu, const kvp_cache *gpu) {
  const size_t n = kvp_test_layer_bytes(cpu);
  uint8_t *a = (uint8_t *)malloc(n), *b = (uint8_t *)malloc(n);
  assert_kvp_ok(kvp_cache_read_layer(cpu, 0, a, n, NULL));
  assert_kvp_ok(kvp_cache_read_layer(gpu, 0, b, n, NULL));
  for (size_t i = 0; i < n; ++i)
    if (a[i] != b[i]) fail_msg("the CUDA cache's pages differ from the CPU's at byte %zu", i);
  free(a);
  free(b);
}

/* The outputs agree: f32 within accumulation-order differences, f16/bf16 within a rounding. */
static void expect_close(const void *cpu, const void *gpu, kvp_dtype dt, int64_t n, const char *what) {
  const double tol = dt == KVP_DTYPE_F32 ? 4e-5 : dt == KVP_DTYPE_F16 ? 2e-3 : 1.6e-2;
  for (int64_t i = 0; i < n; ++i) {
    const double a = as_f32(cpu, dt, i), b = as_f32(gpu, dt, i);
    if (!(fabs(a - b) <= tol * (1.0 + fabs(a))))
      fail_msg("%s: element %lld: CUDA %.9g, CPU %.9g", what, (long long)i, b, a);
  }
}

typedef struct run {
  int64_t T;
  size_t q_bytes, kv_bytes, out_bytes;
  void *q, *k, *v, *out_cpu, *out_gpu;
} run;

/* The step's inputs, and the CPU result (fused write). */
static void run_cpu(const scenario *sc, side *cpu, const kvp_metadata *md, run *r, uint64_t *rng) {
  const int64_t Hq = sc->kv_heads * sc->rep;
  r->q_bytes = (size_t)(r->T * Hq * sc->head_dim) * (size_t)kvp_test_dtype_size(sc->q_dtype);
  r->kv_bytes = (size_t)(r->T * sc->kv_heads * sc->head_dim) * 4;
  r->out_bytes = (size_t)(r->T * Hq * sc->head_dim) * (size_t)kvp_test_dtype_size(sc->out_dtype);
  r->q = malloc(r->q_bytes + 1);
  r->k = malloc(r->kv_bytes + 1);
  r->v = malloc(r->kv_bytes + 1);
  r->out_cpu = malloc(r->out_bytes + 1);
  r->out_gpu = malloc(r->out_bytes + 1);
  fill(r->q, sc->q_dtype, r->T * Hq * sc->head_dim, rng);
  fill(r->k, KVP_DTYPE_F32, r->T * sc->kv_heads * sc->head_dim, rng);
  fill(r->v, KVP_DTYPE_F32, r->T * sc->kv_heads * sc->head_dim, rng);
  memset(r->out_cpu, 0xFF, r->out_bytes);
  kvp_tensor q = kvp_test_tensor(r->q, sc->q_dtype, r->T, Hq, sc->head_dim, KVP_DEVICE_CPU);
  kvp_tensor k = kvp_test_tensor(r->k, KVP_DTYPE_F32, r->T, sc->kv_heads, sc->head_dim, KVP_DEVICE_CPU);
  kvp_tensor v = kvp_test_tensor(r->v, KVP_DTYPE_F32, r->T, sc->kv_heads, sc->head_dim, KVP_DEVICE_CPU);
  kvp_tensor o = kvp_test_tensor(r->out_cpu, sc->out_dtype, r->T, Hq, sc->head_dim, KVP_DEVICE_CPU);
  assert_kvp_ok(kvp_attention(cpu->cache, 0, &q, &k, &v, md, &sc->opts, &o, NULL));
}

/* Device copies of the step's inputs and an output pre-filled with NaN patterns. */
static void upload_run(side *gpu, const run *r) {
  gpu->q = kvp_gpu_upload(r->q, r->q_bytes + 1);
  gpu->k = kvp_gpu_upload(r->k, r->kv_bytes + 1);
  gpu->v = kvp_gpu_upload(r->v, r->kv_bytes + 1);
  CUDA_OK(cudaMalloc(&gpu->out, r->out_bytes + 1));
  CUDA_OK(cudaMemset(gpu->out, 0xFF, r->out_bytes + 1));
}

/* The step on the CUDA cache (fused write) on `stream`, through `md`. */
static kvp_status attend_gpu(const scenario *sc, side *gpu, const kvp_metadata *md, const run *r, cudaStream_t s) {
  const int64_t Hq = sc->kv_heads * sc->rep;
  kvp_tensor q = kvp_test_tensor(gpu->q, sc->q_dtype, r->T, Hq, sc->head_dim, KVP_DEVICE_CUDA);
  kvp_tensor k = kvp_test_tensor(gpu->k, KVP_DTYPE_F32, r->T, sc->kv_heads, sc->head_dim, KVP_DEVICE_CUDA);
  kvp_tensor v = kvp_test_tensor(gpu->v, KVP_DTYPE_F32, r->T, sc->kv_heads, sc->head_dim, KVP_DEVICE_CUDA);
  kvp_tensor o = kvp_test_tensor(gpu->out, sc->out_dtype, r->T, Hq, sc->head_dim, KVP_DEVICE_CUDA);
  q.device_id = k.device_id = v.device_id = o.device_id = kvp_gpu_current_device();
  return kvp_attention(gpu->cache, 0, &q, &k, &v, md, &sc->opts, &o, (kvp_stream)s);
}

static void download_out(side *gpu, run *r) {
  CUDA_OK(cudaDeviceSynchronize());
  CUDA_OK(cudaMemcpy(r->out_gpu, gpu->out, r->out_bytes, cudaMemcpyDeviceToHost));
}

static void free_run(side *gpu, run *r) {
  free(r->q);
  free(r->k);
  free(r->v);
  free(r->out_cpu);
  free(r->out_gpu);
  CUDA_OK(cudaFree(gpu->q));
  CUDA_OK(cudaFree(gpu->k));
  CUDA_OK(cudaFree(gpu->v));
  CUDA_OK(cudaFree(gpu->out));
}

/* One scenario on a CPU and a CUDA cache: the same context written to both, the step's inputs on
 * both sides, the CPU call already made (r.out_cpu) and a device copy of the step's metadata. */
typedef struct pair {
  side cpu, gpu;
  run r;
  kvp_metadata *md;
  kvp_gpu_metadata dmd;
} pair;

static void pair_open(pair *p, const scenario *sc, uint64_t seed) {
  uint64_t rng = seed;
  const kvp_config cfg = config_of(sc);
  memset(p, 0, sizeof *p);
  p->cpu.cache = kvp_test_cache_on(&cfg, KVP_DEVICE_CPU, 0);
  p->gpu.cache = kvp_test_cache_on(&cfg, KVP_DEVICE_CUDA, 0);
  write_context(sc, &p->cpu, &p->gpu, &rng);
  p->md = step_metadata(sc, 0, &p->r.T);
  run_cpu(sc, &p->cpu, p->md, &p->r, &rng);
  upload_run(&p->gpu, &p->r);
  if (!(sc->batch_flags & KVP_BATCH_FLAG_REQUEST_ORDER)) kvp_gpu_metadata_make(&p->dmd, p->md);  /* host only */
}

static void pair_close(pair *p) {
  if (p->dmd.md != NULL) kvp_gpu_metadata_free(&p->dmd);
  free_run(&p->gpu, &p->r);
  assert_kvp_ok(kvp_metadata_destroy(p->md));
  assert_kvp_ok(kvp_cache_destroy(p->cpu.cache));
  assert_kvp_ok(kvp_cache_destroy(p->gpu.cache));
}

/* The CUDA output equals the CPU's, and so do the pages. */
static void expect_pair_equal(const scenario *sc, pair *p, const char *what) {
  download_out(&p->gpu, &p->r);
  expect_close(p->r.out_cpu, p->r.out_gpu, sc->out_dtype, p->r.T * sc->kv_heads * sc->rep * sc->head_dim, what);
  expect_same_pages(p->cpu.cache, p->gpu.cache);
}

/* The whole comparison of one scenario; device_md: the CUDA call reads the device copy. */
static void check_scenario(const scenario *sc, int device_md, uint64_t seed) {
  pair p;
  pair_open(&p, sc, seed);
  assert_kvp_ok(attend_gpu(sc, &p.gpu, device_md ? p.dmd.md : p.md, &p.r, NULL));
  expect_pair_equal(sc, &p, device_md ? "device metadata" : "host metadata");
  assert_int_equal(kvp_test_async_error(p.gpu.cache), KVP_OK);
  pair_close(&p);
}

static scenario base(kvp_layout layout, kvp_dtype cache, int64_t kv_heads, int64_t rep, int64_t head_dim) {
  scenario sc;
  memset(&sc, 0, sizeof sc);
  sc.layout = layout;
  sc.cache_dtype = cache;
  sc.q_dtype = KVP_DTYPE_F32;
  sc.out_dtype = KVP_DTYPE_F32;
  sc.kv_heads = kv_heads;
  sc.rep = rep;
  sc.head_dim = head_dim;
  sc.page_size = 16;
  /* a decode, a chunked prefill with context, a fresh prefill; two padding rows */
  sc.n = 3;
  sc.cached[0] = 37, sc.fresh[0] = 1;
  sc.cached[1] = 20, sc.fresh[1] = 13;
  sc.cached[2] = 0, sc.fresh[2] = 9;
  sc.padding = 2;
  assert_kvp_ok(kvp_attention_options_init(&sc.opts, sizeof sc.opts));
  sc.opts.softmax_scale = 1.0f / sqrtf((float)head_dim);
  return sc;
}

static void test_cuda_attention__v3_bf16_gqa4_matches_cpu(void **state) {
  (void)state;
  kvp_test_require_gpu();
  scenario sc = base(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 2, 4, 128);
  check_scenario(&sc, 0, 11);
  check_scenario(&sc, 1, 12);
}

/* Inputs packed in request order (KVP_BATCH_FLAG_REQUEST_ORDER) while the builder moves the
 * decode (request 1) to row 0: the kernels read and write the rows token_starts names. */
static void test_cuda_attention__request_order_matches_cpu(void **state) {
  (void)state;
  kvp_test_require_gpu();
  for (int v2 = 0; v2 < 2; ++v2) {
    scenario sc = base(v2 ? KVP_LAYOUT_V2 : KVP_LAYOUT_V3, KVP_DTYPE_BF16, 2, 2, 128);
    sc.cached[0] = 20, sc.fresh[0] = 13;
    sc.cached[1] = 37, sc.fresh[1] = 1;
    sc.batch_flags = KVP_BATCH_FLAG_REQUEST_ORDER;
    check_scenario(&sc, 0, 21 + (uint64_t)v2);
  }
}

static void test_cuda_attention__h64_fp8_window_cap_sinks_matches_cpu(void **state) {
  (void)state;
  kvp_test_require_gpu();
  scenario sc = base(KVP_LAYOUT_V3, KVP_DTYPE_F8_E4M3FN, 2, 2, 64);
  sc.q_dtype = KVP_DTYPE_F16;
  sc.out_dtype = KVP_DTYPE_BF16;
  sc.opts.sliding_window = 5;
  sc.opts.logits_soft_cap = 3.0f;
  sc.opts.k_scale = 0.5f;
  sc.opts.v_scale = 2.0f;
  for (int h = 0; h < 4; ++h) sc.sinks[h] = (float)h * 0.5f - 1.0f;
  sc.opts.num_sinks = 4;
  sc.opts.sinks = sc.sinks;
  check_scenario(&sc, 0, 21);
  check_scenario(&sc, 1, 22);
}

static void test_cuda_attention__v2_f16_mqa_head_dim_80_matches_cpu(void **state) {
  (void)state;
  kvp_test_require_gpu();
  scenario sc = base(KVP_LAYOUT_V2, KVP_DTYPE_F16, 1, 8, 80);
  sc.out_dtype = KVP_DTYPE_F16;
  check_scenario(&sc, 0, 31);
  check_scenario(&sc, 1, 32);
}

static void test_cuda_attention__head_dim_256_f32_and_e5m2(void **state) {
  (void)state;
  kvp_test_require_gpu();
  scenario sc = base(KVP_LAYOUT_V3, KVP_DTYPE_F32, 1, 1, 256);
  check_scenario(&sc, 0, 41);
  sc = base(KVP_LAYOUT_V3, KVP_DTYPE_F8_E5M2, 2, 1, 256);
  sc.q_dtype = KVP_DTYPE_BF16;
  check_scenario(&sc, 1, 42);
}

/* One long decode row: the key range is split over blocks and the partial states merged. */
static void test_cuda_attention__long_decode_is_split_and_merged(void **state) {
  (void)state;
  kvp_test_require_gpu();
  scenario sc = base(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 1, 4, 64);
  sc.n = 1;
  sc.cached[0] = 1500;
  sc.fresh[0] = 1;
  sc.padding = 0;
  sc.page_size = 32;
  check_scenario(&sc, 0, 51);
  sc.opts.sliding_window = 700;
  check_scenario(&sc, 1, 52);
}

/* Captured once into a graph with device metadata, replayed: the same result as the CPU. */
static void test_cuda_attention__graph_replay_matches_cpu(void **state) {
  (void)state;
  kvp_test_require_gpu();
  scenario sc = base(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 2, 2, 64);
  pair p;
  pair_open(&p, &sc, 61);
  cudaStream_t s;
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  assert_kvp_ok(attend_gpu(&sc, &p.gpu, p.dmd.md, &p.r, s));
  CUDA_OK(cudaStreamEndCapture(s, &graph));
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_OK(cudaGraphLaunch(exec, s));
  CUDA_OK(cudaStreamSynchronize(s));
  expect_pair_equal(&sc, &p, "graph replay");
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));
  CUDA_OK(cudaStreamDestroy(s));
  pair_close(&p);
}

/* A page id out of range in device-resident metadata: reported as kvp_attention's asynchronous
 * error, no read outside the cache (the emulation checks every access), the row's output zero;
 * once cleared, the cache works again. */
static void test_cuda_attention__bad_device_metadata_is_reported(void **state) {
  (void)state;
  kvp_test_require_gpu();
  scenario sc = base(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 1, 2, 64);
  pair p;
  pair_open(&p, &sc, 71);
  kvp_metadata_desc d;
  assert_kvp_ok(kvp_metadata_desc_init(&d, sizeof d));
  assert_kvp_ok(kvp_metadata_get_desc(p.dmd.md, &d));
  const int32_t bad = 100000; /* request 0's first page (a cached position) */
  kvp_gpu_upload_i32(d.pages_tables, &bad, 1);
  /* read only: the fused write would report the bad page itself (kvp_concatenate's check) */
  const int64_t Hq = sc.kv_heads * sc.rep;
  kvp_tensor q = kvp_test_tensor(p.gpu.q, sc.q_dtype, p.r.T, Hq, sc.head_dim, KVP_DEVICE_CUDA);
  kvp_tensor o = kvp_test_tensor(p.gpu.out, sc.out_dtype, p.r.T, Hq, sc.head_dim, KVP_DEVICE_CUDA);
  assert_kvp_ok(kvp_attention(p.gpu.cache, 0, &q, NULL, NULL, p.dmd.md, &sc.opts, &o, NULL));
  download_out(&p.gpu, &p.r);
  assert_int_equal(kvp_test_async_error(p.gpu.cache), KVP_ERR_INVALID_ARGUMENT);
  if (strstr(kvp_last_error_message(), "kvp_attention") == NULL ||
      strstr(kvp_last_error_message(), "page id 100000 at entry 0 ") == NULL)
    fail_msg("message: %s", kvp_last_error_message());
  for (int64_t e = 0; e < Hq * sc.head_dim; ++e) assert_true(as_f32(p.r.out_gpu, sc.out_dtype, e) == 0.0f);
  assert_int_equal(kvp_attention(p.gpu.cache, 0, &q, NULL, NULL, p.dmd.md, &sc.opts, &o, NULL), KVP_ERR_DEVICE_LOST);
  assert_kvp_ok(kvp_cache_clear_async_error(p.gpu.cache));
  const int32_t good = 1;
  kvp_gpu_upload_i32(d.pages_tables, &good, 1);
  assert_kvp_ok(kvp_attention(p.gpu.cache, 0, &q, NULL, NULL, p.dmd.md, &sc.opts, &o, NULL));
  assert_int_equal(kvp_test_async_error(p.gpu.cache), KVP_OK);
  pair_close(&p);
}

/* v2 metadata can leave out the arrays only attention reads (num_seqs, query_start_loc,
 * context_lens). In device memory the host cannot see their values, but it can see that they are
 * missing: the call is refused before anything is enqueued, and nothing changes. */
static void test_cuda_attention__device_metadata_without_arrays_is_refused(void **state) {
  (void)state;
  kvp_test_require_gpu();
  scenario sc = base(KVP_LAYOUT_V2, KVP_DTYPE_F16, 1, 2, 64);
  pair p;
  pair_open(&p, &sc, 81);
  kvp_metadata_desc d;
  assert_kvp_ok(kvp_metadata_desc_init(&d, sizeof d));
  assert_kvp_ok(kvp_metadata_get_desc(p.dmd.md, &d));
  const char *missing[3] = {"num_seqs", "query_start_loc", "context_lens"};
  const int64_t Hq = sc.kv_heads * sc.rep;
  kvp_tensor q = kvp_test_tensor(p.gpu.q, sc.q_dtype, p.r.T, Hq, sc.head_dim, KVP_DEVICE_CUDA);
  kvp_tensor o = kvp_test_tensor(p.gpu.out, sc.out_dtype, p.r.T, Hq, sc.head_dim, KVP_DEVICE_CUDA);
  q.device_id = o.device_id = kvp_gpu_current_device();
  for (int i = 0; i < 3; ++i) {
    kvp_metadata_desc e = d;
    if (i == 0) e.num_seqs = NULL, e.num_seqs_len = 0;
    if (i == 1) e.query_start_loc = NULL, e.query_start_loc_len = 0;
    if (i == 2) e.context_lens = NULL, e.context_lens_len = 0;
    kvp_metadata *bad = NULL;
    assert_kvp_ok(kvp_metadata_create(&e, &bad));
    assert_kvp_status(kvp_attention(p.gpu.cache, 0, &q, NULL, NULL, bad, &sc.opts, &o, NULL), KVP_ERR_INVALID_ARGUMENT,
                      missing[i]);
    assert_kvp_ok(kvp_metadata_destroy(bad));
  }
  download_out(&p.gpu, &p.r);
  for (size_t b = 0; b < p.r.out_bytes; ++b) assert_int_equal(((unsigned char *)p.r.out_gpu)[b], 0xFF);
  assert_int_equal(kvp_test_async_error(p.gpu.cache), KVP_OK);
  pair_close(&p);
}

#else /* !KVP_HAS_CUDA */

static void test_cuda_attention__v3_bf16_gqa4_matches_cpu(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_attention__h64_fp8_window_cap_sinks_matches_cpu(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_attention__request_order_matches_cpu(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_attention__v2_f16_mqa_head_dim_80_matches_cpu(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_attention__head_dim_256_f32_and_e5m2(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_attention__long_decode_is_split_and_merged(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_attention__graph_replay_matches_cpu(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_attention__bad_device_metadata_is_reported(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_attention__device_metadata_without_arrays_is_refused(void **state) { (void)state; kvp_test_require_gpu(); }

#endif

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cuda_attention__v3_bf16_gqa4_matches_cpu),
      cmocka_unit_test(test_cuda_attention__h64_fp8_window_cap_sinks_matches_cpu),
      cmocka_unit_test(test_cuda_attention__request_order_matches_cpu),
      cmocka_unit_test(test_cuda_attention__v2_f16_mqa_head_dim_80_matches_cpu),
      cmocka_unit_test(test_cuda_attention__head_dim_256_f32_and_e5m2),
      cmocka_unit_test(test_cuda_attention__long_decode_is_split_and_merged),
      cmocka_unit_test(test_cuda_attention__graph_replay_matches_cpu),
      cmocka_unit_test(test_cuda_attention__bad_device_metadata_is_reported),
      cmocka_unit_test(test_cuda_attention__device_metadata_without_arrays_is_refused),
  };
  return cmocka_run_group_tests_name("cuda_attention", tests, NULL, NULL);
}
