/* kvp_concatenate on CUDA caches, checked against the CPU backend byte for byte.
 *
 * Every test skip()s when the build has no CUDA or the machine has no GPU (then the line
 * "kvpages: no CUDA device" is printed and ctest reports the test as skipped). With a GPU:
 *   ctest --test-dir build -L gpu --output-on-failure
 * or run build/tests/test_cuda_concatenate directly. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "gpu_support.h"

#if KVP_HAS_CUDA

/* ------------------------------------------------------------------------------------------ */
/* Helpers                                                                                    */

static uint8_t *read_layer(const kvp_cache *c, uint32_t layer) {
  size_t n = kvp_test_layer_bytes(c);
  uint8_t *p = (uint8_t *)malloc(n);
  assert_non_null(p);
  assert_kvp_ok(kvp_cache_read_layer(c, layer, p, n, NULL));
  return p;
}

/* Fills a layer of several caches with the same random bytes, so untouched slots are visible. */
static uint8_t *prefill(kvp_cache **caches, const uint32_t *layers, int n, uint64_t *rng) {
  size_t bytes = kvp_test_layer_bytes(caches[0]);
  uint8_t *p = (uint8_t *)malloc(bytes);
  assert_non_null(p);
  for (size_t i = 0; i < bytes; ++i) p[i] = (uint8_t)kvp_test_rand(rng);
  for (int k = 0; k < n; ++k) assert_kvp_ok(kvp_cache_write_layer(caches[k], layers[k], p, bytes, NULL));
  return p;
}

static void report_first_difference(const uint8_t *got, const uint8_t *want, size_t n, const char *what) {
  for (size_t i = 0; i < n; ++i)
    if (got[i] != want[i]) fail_msg("%s: first difference at byte %zu: got 0x%02x, want 0x%02x", what, i, got[i], want[i]);
}

/* Reads a layer of `gpu` and fails on its first byte that differs from `want` (n bytes). */
static void expect_layer(const kvp_cache *gpu, uint32_t layer, const uint8_t *want, size_t n, const char *what) {
  uint8_t *got = read_layer(gpu, layer);
  report_first_difference(got, want, n, what);
  free(got);
}

/* Layer 0 of the CPU cache and of the CUDA cache hold the same bytes. */
static void expect_same_layer(const kvp_cache *cpu, const kvp_cache *gpu, size_t n, const char *what) {
  uint8_t *want = read_layer(cpu, 0);
  expect_layer(gpu, 0, want, n, what);
  free(want);
}


/* A random element of an input dtype: mostly ordinary values over a wide range of magnitudes
 * (rounding, subnormals and overflow of the narrow formats), sometimes arbitrary bit patterns
 * (NaN payloads, infinities). */
static void random_element(void *dst, kvp_dtype dt, uint64_t *rng) {
  uint64_t r = kvp_test_rand(rng);
  float f;
  if ((r & 7) == 0) {
    uint32_t bits = (uint32_t)(r >> 32);
    if (dt == KVP_DTYPE_F32) {
      memcpy(dst, &bits, 4);
    } else {
      uint16_t h = (uint16_t)bits;
      memcpy(dst, &h, 2);
    }
    return;
  }
  f = (float)((double)((int64_t)(r >> 11) % 2000001 - 1000000) / 1000000.0);
  f = ldexpf(f, (int)((r >> 3) % 40) - 30);
  if (dt == KVP_DTYPE_F32) {
    memcpy(dst, &f, 4);
  } else {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t h;
    if (dt == KVP_DTYPE_BF16) {
      h = (uint16_t)(u >> 16); /* truncation is fine: any bf16 pattern is a valid input */
    } else {
      /* crude f16: keep sign, clamp exponent; any f16 pattern is a valid input */
      int e = (int)((u >> 23) & 0xFF) - 127 + 15;
      uint16_t s = (uint16_t)((u >> 16) & 0x8000u);
      if (e <= 0) h = s;
      else if (e >= 31) h = (uint16_t)(s | 0x7BFFu);
      else h = (uint16_t)(s | (uint16_t)(e << 10) | (uint16_t)((u >> 13) & 0x3FFu));
    }
    memcpy(dst, &h, 2);
  }
}

/* An input tensor [T, H, D] in host memory with one of several stride patterns, and its copy in
 * device memory with the same strides. */
typedef struct tensor_pair {
  kvp_tensor host, dev;
  void *host_buf, *dev_buf;
  size_t bytes;
} tensor_pair;

/* Gives tp (host_buf and bytes already filled) its device copy, on the current device, and the
 * [T, H, D] descriptors with strides st, sh, sd (elements) for both. */
static void upload_input(tensor_pair *tp, int64_t T, int64_t H, int64_t D, kvp_dtype dt, int64_t st, int64_t sh,
                         int64_t sd) {
  CUDA_OK(cudaMalloc(&tp->dev_buf, tp->bytes));
  CUDA_OK(cudaMemcpy(tp->dev_buf, tp->host_buf, tp->bytes, cudaMemcpyHostToDevice));
  tp->host = kvp_test_tensor_strided(tp->host_buf, dt, T, H, D, st, sh, sd, KVP_DEVICE_CPU);
  tp->dev = tp->host;
  tp->dev.data = tp->dev_buf;
  tp->dev.device_type = KVP_DEVICE_CUDA;
  tp->dev.device_id = kvp_gpu_current_device();
}

static void make_input(tensor_pair *tp, int64_t T, int64_t H, int64_t D, kvp_dtype dt, int stride_mode, uint64_t *rng) {
  int64_t st, sh, sd, n;
  switch (stride_mode) {
    case 1: /* padded heads and rows: [T, H, D + 8] plus 4 spare elements per token */
      sd = 1; sh = D + 8; st = H * (D + 8) + 4; n = T * st; break;
    case 2: /* head-major: [H, T, D] */
      sd = 1; st = D; sh = T * D; n = H * T * D; break;
    case 3: /* every other lane: [T, H, D, 2][..., 0] */
      sd = 2; sh = 2 * D; st = 2 * H * D; n = T * st; break;
    default: /* contiguous */
      sd = 1; sh = D; st = H * D; n = T * st; break;
  }
  if (n < 1) n = 1;
  const uint32_t isz = (uint32_t)kvp_test_dtype_size(dt);
  tp->bytes = (size_t)n * isz;
  tp->host_buf = malloc(tp->bytes);
  assert_non_null(tp->host_buf);
  for (int64_t i = 0; i < n; ++i) random_element((uint8_t *)tp->host_buf + (size_t)i * isz, dt, rng);
  upload_input(tp, T, H, D, dt, st, sh, sd);
}

static void refill_input(tensor_pair *tp, uint64_t *rng) {
  const uint32_t isz = (uint32_t)kvp_test_dtype_size(tp->host.dtype);
  for (size_t i = 0; i < tp->bytes / isz; ++i) random_element((uint8_t *)tp->host_buf + i * isz, tp->host.dtype, rng);
  CUDA_OK(cudaMemcpy(tp->dev_buf, tp->host_buf, tp->bytes, cudaMemcpyHostToDevice));
}

static void free_input(tensor_pair *tp) {
  free(tp->host_buf);
  CUDA_OK(cudaFree(tp->dev_buf));
}

/* A random batch for a config: 1..max_reqs requests over distinct pages drawn from
 * [1, num_pages - 1) (the last page is kept free for the tests), built by the batch builder as
 * owning host metadata with R rows and a T-token bucket. */
static kvp_metadata *random_batch(const kvp_config *cfg, uint64_t *rng, int max_reqs, int64_t R, int64_t T_cap,
                                  int64_t *tokens_out) {
  const int64_t S = cfg->page_size, P = cfg->num_pages;
  int32_t pool[1024];
  int64_t npool = P - 2;
  assert_true(npool <= 1024);
  for (int64_t i = 0; i < npool; ++i) pool[i] = (int32_t)(i + 1);
  for (int64_t i = npool - 1; i > 0; --i) {
    int64_t j = kvp_test_rand_range(rng, 0, i);
    int32_t t = pool[i];
    pool[i] = pool[j];
    pool[j] = t;
  }
  kvp_batch_request reqs[64];
  int n = (int)kvp_test_rand_range(rng, 1, max_reqs);
  int64_t used = 0, tokens = 0;
  int k = 0;
  for (int i = 0; i < n; ++i) {
    int64_t computed = kvp_test_rand_range(rng, 0, 3 * S);
    int64_t sched = (kvp_test_rand(rng) & 1) ? 1 : kvp_test_rand_range(rng, 1, 2 * S + 3);
    if (T_cap > 0 && tokens + sched > T_cap) break;
    int64_t need = (computed + sched + S - 1) / S;
    if (need > cfg->max_num_pages_per_req || used + need > npool) break;
    reqs[k].num_computed = computed;
    reqs[k].num_scheduled = sched;
    reqs[k].page_ids = pool + used;
    reqs[k].num_pages = need;
    used += need;
    tokens += sched;
    ++k;
  }
  assert_true(k >= 1);
  kvp_batch_options bo;
  assert_kvp_ok(kvp_batch_options_init(&bo, sizeof bo));
  bo.max_num_reqs = R > 0 ? R : k;
  bo.max_num_tokens = T_cap > 0 ? T_cap : tokens;
  kvp_metadata *md = NULL;
  assert_kvp_ok(kvp_metadata_build(cfg, reqs, (uint32_t)k, &bo, NULL, &md));
  *tokens_out = T_cap > 0 ? T_cap : tokens;
  return md;
}

/* The batch on the CPU cache's layer 0, and on the CUDA cache's layer 0 with host metadata and
 * layer 1 with a device-resident copy of it: both CUDA layers must equal the CPU layer and no
 * async error may be pending. `before` (when not NULL) is what the layers held before: the batch
 * must have changed it. */
static void expect_both_metadata_paths(kvp_cache *cpu, kvp_cache *gpu, const tensor_pair *k, const tensor_pair *v,
                                       const kvp_metadata *md, const uint8_t *before, const char *what) {
  const size_t n = kvp_test_layer_bytes(cpu);
  char label[256];
  kvp_gpu_metadata dmd;
  kvp_gpu_metadata_make(&dmd, md);
  assert_kvp_ok(kvp_concatenate(cpu, 0, &k->host, &v->host, md, NULL));
  assert_kvp_ok(kvp_concatenate(gpu, 0, &k->dev, &v->dev, md, NULL));
  assert_kvp_ok(kvp_concatenate(gpu, 1, &k->dev, &v->dev, dmd.md, NULL));
  uint8_t *want = read_layer(cpu, 0);
  if (before != NULL) assert_true(memcmp(want, before, n) != 0); /* the batch really wrote something */
  snprintf(label, sizeof label, "%s, host metadata", what);
  expect_layer(gpu, 0, want, n, label);
  snprintf(label, sizeof label, "%s, device metadata", what);
  expect_layer(gpu, 1, want, n, label);
  assert_int_equal(kvp_test_async_error(gpu), KVP_OK);
  free(want);
  kvp_gpu_metadata_free(&dmd);
}

/* ------------------------------------------------------------------------------------------ */
/* Random batches, every layout, dtype pair and several shapes: CUDA == CPU                    */

typedef struct shape_case {
  kvp_layout layout;
  int64_t H, D, S;
} shape_case;

static void run_compare_case(const shape_case *sc, kvp_dtype kin, kvp_dtype vin, kvp_dtype cdt, int stride_mode,
                             uint64_t *rng) {
  kvp_config cfg = kvp_test_config(2, sc->H, sc->D, sc->S, 48, cdt, sc->layout);
  kvp_cache *cpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CPU, 0);
  kvp_cache *gpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CUDA, 0);
  kvp_cache *all[3] = {cpu, gpu, gpu};
  const uint32_t layers[3] = {0, 0, 1};
  uint8_t *before = prefill(all, layers, 3, rng);
  int64_t T = 0;
  kvp_metadata *md = random_batch(&cfg, rng, 6, 0, 0, &T);
  tensor_pair k, v;
  make_input(&k, T, sc->H, sc->D, kin, stride_mode, rng);
  make_input(&v, T, sc->H, sc->D, vin, stride_mode, rng);
  char what[160];
  snprintf(what, sizeof what, "layout v%u%s H=%lld D=%lld S=%lld key %s value %s cache %s strides %d",
           (unsigned)sc->layout, sc->D == 64 && sc->layout == KVP_LAYOUT_V3 ? " (h64)" : "", (long long)sc->H,
           (long long)sc->D, (long long)sc->S, kvp_dtype_name(kin), kvp_dtype_name(vin), kvp_dtype_name(cdt),
           stride_mode);
  expect_both_metadata_paths(cpu, gpu, &k, &v, md, before, what);

  free(before);
  free_input(&k);
  free_input(&v);
  assert_kvp_ok(kvp_metadata_destroy(md));
  assert_kvp_ok(kvp_cache_destroy(gpu));
  assert_kvp_ok(kvp_cache_destroy(cpu));
}

static void test_cuda_concatenate__matches_cpu_every_layout_and_dtype(void **state) {
  (void)state;
  kvp_test_require_gpu();
  static const shape_case shapes[] = {
      {KVP_LAYOUT_V3, 8, 128, 16}, {KVP_LAYOUT_V3, 3, 96, 16}, {KVP_LAYOUT_V3, 1, 128, 32},
      {KVP_LAYOUT_V3, 8, 64, 16},  {KVP_LAYOUT_V3, 3, 64, 16}, /* h64 */
      {KVP_LAYOUT_V2, 8, 128, 16}, {KVP_LAYOUT_V2, 2, 80, 16}, {KVP_LAYOUT_V2, 1, 36, 8},
  };
  static const kvp_dtype inputs[] = {KVP_DTYPE_F32, KVP_DTYPE_F16, KVP_DTYPE_BF16};
  static const kvp_dtype stores[] = {KVP_DTYPE_F32, KVP_DTYPE_F16, KVP_DTYPE_BF16, KVP_DTYPE_F8_E4M3FN,
                                     KVP_DTYPE_F8_E5M2};
  uint64_t rng = 0xC0DA;
  int cases = 0;
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; ++s)
    for (size_t i = 0; i < 3; ++i)
      for (size_t o = 0; o < 5; ++o) {
        /* page_size must be a multiple of the packing (fp8: 4) — all shapes above are. */
        run_compare_case(&shapes[s], inputs[i], inputs[i], stores[o], (int)(cases % 4), &rng);
        ++cases;
      }
  /* Key and value of different dtypes. */
  run_compare_case(&shapes[0], KVP_DTYPE_F32, KVP_DTYPE_BF16, KVP_DTYPE_BF16, 0, &rng);
  run_compare_case(&shapes[5], KVP_DTYPE_F16, KVP_DTYPE_F32, KVP_DTYPE_F8_E5M2, 1, &rng);
  run_compare_case(&shapes[3], KVP_DTYPE_BF16, KVP_DTYPE_F16, KVP_DTYPE_F32, 2, &rng);
  printf("compared %d layout/shape/dtype cases (+3 mixed-dtype cases)\n", cases);
}

/* v2 slices in the per-token form (SPEC §5.1): one longer than several pages and than the
 * kernel's grid stride (so a block loops over it), one that starts inside the last page, one of a
 * single token, one reading source tokens out of order; a column past num_kv_update_slices is
 * ignored. CUDA with host and with device metadata equals the CPU. */
static void test_cuda_concatenate__v2_long_slices_match_cpu(void **state) {
  (void)state;
  kvp_test_require_gpu();
  uint64_t rng = 0x5111CE;
  const int64_t H = 2, D = 64, S = 8, P = 40, T = 48;
  kvp_config cfg = kvp_test_config(2, H, D, S, P, KVP_DTYPE_BF16, KVP_LAYOUT_V2);
  kvp_cache *cpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CPU, 0);
  kvp_cache *gpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CUDA, 0);
  kvp_cache *all[3] = {cpu, gpu, gpu};
  const uint32_t layers[3] = {0, 0, 1};
  uint8_t *before = prefill(all, layers, 3, &rng);
  /* Columns: destination slot, source token, length. */
  int32_t sm[3 * 5] = {(int32_t)S, (int32_t)((P - 1) * S + 3), (int32_t)(10 * S + 2), (int32_t)(20 * S), 0,
                       0, 29, 40, 2, 0,
                       (int32_t)(3 * S + 5), 5, 1, (int32_t)(2 * S), 7};
  int32_t nvalid = 4;
  kvp_metadata *md = kvp_test_v2_metadata(sm, 5, &nvalid);
  tensor_pair k, v;
  make_input(&k, T, H, D, KVP_DTYPE_BF16, 0, &rng);
  make_input(&v, T, H, D, KVP_DTYPE_BF16, 0, &rng);
  expect_both_metadata_paths(cpu, gpu, &k, &v, md, before, "v2 long slices");

  free(before);
  free_input(&k);
  free_input(&v);
  assert_kvp_ok(kvp_metadata_destroy(md));
  assert_kvp_ok(kvp_cache_destroy(gpu));
  assert_kvp_ok(kvp_cache_destroy(cpu));
}

/* Every f16 and bf16 bit pattern, and 458752 f32 patterns (every upper half with seven lower
 * halves: the rounding boundaries, ties and NaN payloads), through each storage dtype on the GPU:
 * byte-identical to the CPU backend. One v2 slice per call writes them as keys and values of a
 * [T, 1, 256] batch, with host and with device metadata. On real hardware this is what shows any
 * difference in how the device executes the shared conversion code (contraction, denormals,
 * intrinsics). */
static void conversion_case(kvp_dtype in, kvp_dtype cdt, const void *patterns, int64_t count) {
  const int64_t D = 256, S = 16;
  const uint32_t isz = (uint32_t)kvp_test_dtype_size(in);
  const int64_t T = count / D;
  kvp_config cfg = kvp_test_config(2, 1, D, S, T / S + 1, cdt, KVP_LAYOUT_V2);
  kvp_cache *cpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CPU, 0);
  kvp_cache *gpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CUDA, 0);
  /* Keys in pattern order, values in reverse order (each pattern lands in both halves). */
  tensor_pair kv[2];
  for (int h = 0; h < 2; ++h) {
    tensor_pair *tp = &kv[h];
    tp->bytes = (size_t)count * isz;
    tp->host_buf = malloc(tp->bytes);
    assert_non_null(tp->host_buf);
    for (int64_t i = 0; i < count; ++i)
      memcpy((uint8_t *)tp->host_buf + (size_t)i * isz,
             (const uint8_t *)patterns + (size_t)(h == 0 ? i : count - 1 - i) * isz, isz);
    upload_input(tp, T, 1, D, in, D, D, 1);
  }
  int32_t sm[3] = {0, 0, (int32_t)T}, nslices = 1;
  kvp_metadata *md = kvp_test_v2_metadata(sm, 1, &nslices);
  char what[96];
  snprintf(what, sizeof what, "every %s pattern -> %s", kvp_dtype_name(in), kvp_dtype_name(cdt));
  expect_both_metadata_paths(cpu, gpu, &kv[0], &kv[1], md, NULL, what);

  free_input(&kv[0]);
  free_input(&kv[1]);
  assert_kvp_ok(kvp_metadata_destroy(md));
  assert_kvp_ok(kvp_cache_destroy(gpu));
  assert_kvp_ok(kvp_cache_destroy(cpu));
}

static void test_cuda_concatenate__conversions_exhaustive(void **state) {
  (void)state;
  kvp_test_require_gpu();
  static const kvp_dtype stores[] = {KVP_DTYPE_F32, KVP_DTYPE_F16, KVP_DTYPE_BF16, KVP_DTYPE_F8_E4M3FN,
                                     KVP_DTYPE_F8_E5M2};
  uint16_t *h16 = (uint16_t *)malloc(65536 * sizeof *h16);
  assert_non_null(h16);
  for (uint32_t i = 0; i < 65536; ++i) h16[i] = (uint16_t)i;
  static const uint32_t lows[7] = {0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF, 0x5A3C};
  const int64_t n32 = 7 * 65536;
  uint32_t *h32 = (uint32_t *)malloc((size_t)n32 * sizeof *h32);
  assert_non_null(h32);
  for (uint32_t hi = 0; hi < 65536; ++hi)
    for (int l = 0; l < 7; ++l) h32[hi * 7 + (uint32_t)l] = (hi << 16) | lows[l];
  for (size_t o = 0; o < sizeof stores / sizeof stores[0]; ++o) {
    conversion_case(KVP_DTYPE_F16, stores[o], h16, 65536);
    conversion_case(KVP_DTYPE_BF16, stores[o], h16, 65536);
    conversion_case(KVP_DTYPE_F32, stores[o], h32, n32);
  }
  free(h16);
  free(h32);
}

/* A decode batch of n requests, request i writing one token at in-page offset `offset` of page
 * first_page + i: n runs that never merge (so n * 24 bytes of staged host metadata). */
static kvp_metadata *decode_batch(const kvp_config *cfg, int n, int64_t offset, int32_t first_page) {
  kvp_batch_request *reqs = (kvp_batch_request *)calloc((size_t)n, sizeof *reqs);
  int32_t *pages = (int32_t *)malloc((size_t)n * sizeof *pages);
  assert_non_null(reqs);
  assert_non_null(pages);
  for (int i = 0; i < n; ++i) {
    pages[i] = first_page + i;
    reqs[i].num_computed = offset;
    reqs[i].num_scheduled = 1;
    reqs[i].page_ids = pages + i;
    reqs[i].num_pages = 1;
  }
  kvp_metadata *md = NULL;
  assert_kvp_ok(kvp_metadata_build(cfg, reqs, (uint32_t)n, NULL, NULL, &md));
  free(reqs);
  free(pages);
  return md;
}

/* Larger batches (hundreds of runs: host metadata goes through the staging ring, and the grid
 * has many blocks), repeated so the ring wraps. */
static void test_cuda_concatenate__large_batches_and_staging_ring(void **state) {
  (void)state;
  kvp_test_require_gpu();
  uint64_t rng = 0xB16;
  kvp_config cfg = kvp_test_config(1, 8, 128, 16, 600, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  kvp_cache *cpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CPU, 0);
  kvp_cache *gpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CUDA, 0);
  kvp_cache *all[2] = {cpu, gpu};
  const uint32_t layers[2] = {0, 0};
  uint8_t *before = prefill(all, layers, 2, &rng);
  const size_t n = kvp_test_layer_bytes(cpu);
  for (int step = 0; step < 80; ++step) {
    int64_t T = 0;
    kvp_metadata *md = random_batch(&cfg, &rng, 64, 0, 0, &T);
    tensor_pair k, v;
    make_input(&k, T, 8, 128, KVP_DTYPE_BF16, 0, &rng);
    make_input(&v, T, 8, 128, KVP_DTYPE_BF16, 0, &rng);
    assert_kvp_ok(kvp_concatenate(cpu, 0, &k.host, &v.host, md, NULL));
    assert_kvp_ok(kvp_concatenate(gpu, 0, &k.dev, &v.dev, md, NULL));
    CUDA_OK(cudaDeviceSynchronize()); /* inputs are freed below */
    free_input(&k);
    free_input(&v);
    assert_kvp_ok(kvp_metadata_destroy(md));
  }
  /* 70 more calls of 40 runs each, all enqueued before the host waits once: the 64-slot ring
   * wraps with its earlier slots' copies still queued, so reusing a slot must wait for them.
   * Every call writes token positions no other call writes (pages 1 + 40 * (step / 16) onwards,
   * offset step % 16), so a copy that read a slot already overwritten by a later call would leave
   * its own positions unwritten. Reusing a slot queries its event, and a "not ready" answer must
   * not be left in this thread's CUDA error state for the caller to find. */
  enum { kDecodeCalls = 70 };
  tensor_pair *dk = (tensor_pair *)calloc(kDecodeCalls, sizeof *dk);
  tensor_pair *dv = (tensor_pair *)calloc(kDecodeCalls, sizeof *dv);
  kvp_metadata **dmd = (kvp_metadata **)calloc(kDecodeCalls, sizeof *dmd);
  assert_non_null(dk);
  assert_non_null(dv);
  assert_non_null(dmd);
  for (int step = 0; step < kDecodeCalls; ++step) {
    dmd[step] = decode_batch(&cfg, 40, step % 16, 1 + 40 * (step / 16));
    make_input(&dk[step], 40, 8, 128, KVP_DTYPE_BF16, 0, &rng);
    make_input(&dv[step], 40, 8, 128, KVP_DTYPE_BF16, 0, &rng);
  }
  CUDA_OK(cudaDeviceSynchronize()); /* the inputs are on the device before the calls start */
  for (int step = 0; step < kDecodeCalls; ++step) {
    assert_kvp_ok(kvp_concatenate(cpu, 0, &dk[step].host, &dv[step].host, dmd[step], NULL));
    assert_kvp_ok(kvp_concatenate(gpu, 0, &dk[step].dev, &dv[step].dev, dmd[step], NULL));
    CUDA_OK(cudaGetLastError());
  }
  CUDA_OK(cudaDeviceSynchronize()); /* inputs are freed below */
  for (int step = 0; step < kDecodeCalls; ++step) {
    free_input(&dk[step]);
    free_input(&dv[step]);
    assert_kvp_ok(kvp_metadata_destroy(dmd[step]));
  }
  free(dk);
  free(dv);
  free(dmd);
  uint8_t *want = read_layer(cpu, 0);
  assert_true(memcmp(want, before, n) != 0);
  expect_layer(gpu, 0, want, n, "80 large v3 batches and 70 decode batches");
  free(want);
  free(before);
  assert_kvp_ok(kvp_cache_destroy(gpu));
  assert_kvp_ok(kvp_cache_destroy(cpu));
}

/* ------------------------------------------------------------------------------------------ */
/* CUDA graphs                                                                                 */


/* Instantiates a captured graph, runs it once on `s`, waits for it and destroys it. */
static void run_graph_once(cudaGraph_t graph, cudaStream_t s) {
  cudaGraphExec_t exec;
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_OK(cudaGraphLaunch(exec, s));
  CUDA_OK(cudaStreamSynchronize(s));
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));
}

/* Copies the arrays of host metadata `src` into the fixed device buffers behind `dst` (same
 * shapes: both built with the same R and T bucket). */
static void update_device_md(kvp_gpu_metadata *dst, const kvp_metadata *src) {
  kvp_metadata_desc a, b;
  assert_kvp_ok(kvp_metadata_desc_init(&a, sizeof a));
  assert_kvp_ok(kvp_metadata_desc_init(&b, sizeof b));
  assert_kvp_ok(kvp_metadata_get_desc(src, &a));
  assert_kvp_ok(kvp_metadata_get_desc(dst->md, &b));
  assert_int_equal(a.num_reqs, b.num_reqs);
  assert_int_equal(a.pages_per_req, b.pages_per_req);
#define COPY_FIELD(ptr, len) \
  if (a.ptr != NULL) kvp_gpu_upload_i32(b.ptr, a.ptr, len)
  COPY_FIELD(pages_tables, a.num_reqs * a.pages_per_req);
  COPY_FIELD(context_lens, a.context_lens_len);
  COPY_FIELD(query_start_loc, a.query_start_loc_len);
  COPY_FIELD(num_seqs, a.num_seqs_len);
  COPY_FIELD(request_distribution, a.request_distribution_len);
#undef COPY_FIELD
}

static void test_cuda_concatenate__graph_capture_and_replay(void **state) {
  (void)state;
  kvp_test_require_gpu();
  uint64_t rng = 0x6A;
  const int64_t H = 8, D = 128, S = 16, R = 8, T = 96;
  kvp_config cfg = kvp_test_config(1, H, D, S, 400, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  kvp_cache *cpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CPU, 0);
  kvp_cache *gpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CUDA, 0);
  kvp_cache *all[2] = {cpu, gpu};
  const uint32_t layers[2] = {0, 0};
  uint8_t *before = prefill(all, layers, 2, &rng);
  const size_t n = kvp_test_layer_bytes(cpu);
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));

  /* Device-resident metadata in fixed buffers, fixed-size inputs: what an engine captures. */
  int64_t tok = 0;
  kvp_metadata *md1 = random_batch(&cfg, &rng, 6, R, T, &tok);
  kvp_gpu_metadata dmd;
  kvp_gpu_metadata_make(&dmd, md1);
  tensor_pair k, v;
  make_input(&k, T, H, D, KVP_DTYPE_BF16, 0, &rng);
  make_input(&v, T, H, D, KVP_DTYPE_BF16, 0, &rng);

  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  kvp_status st = kvp_concatenate(gpu, 0, &k.dev, &v.dev, dmd.md, (kvp_stream)s);
  CUDA_OK(cudaStreamEndCapture(s, &graph));
  assert_kvp_ok(st);
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  /* Capturing ran nothing. */
  uint8_t *got = read_layer(gpu, 0);
  assert_memory_equal(got, before, n);
  free(got);

  for (int round = 0; round < 3; ++round) {
    kvp_metadata *mdr = md1;
    if (round > 0) { /* new batch and new inputs in the same buffers, then replay */
      mdr = random_batch(&cfg, &rng, 6, R, T, &tok);
      update_device_md(&dmd, mdr);
      refill_input(&k, &rng);
      refill_input(&v, &rng);
    }
    assert_kvp_ok(kvp_concatenate(cpu, 0, &k.host, &v.host, mdr, NULL));
    CUDA_OK(cudaGraphLaunch(exec, s));
    CUDA_OK(cudaStreamSynchronize(s));
    expect_same_layer(cpu, gpu, n, "graph replay with device metadata");
    if (round > 0) assert_kvp_ok(kvp_metadata_destroy(mdr));
  }
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));

  /* Host metadata with more runs than fit in the kernel parameters is staged in the graph
   * arena: the graph keeps replaying the captured batch even after eager calls reuse the ring. */
  int64_t ta = 0, tb = 0;
  kvp_metadata *mda = random_batch(&cfg, &rng, 40, 0, 0, &ta);
  kvp_metadata *mdb = random_batch(&cfg, &rng, 40, 0, 0, &tb);
  tensor_pair ka, va, kb, vb;
  make_input(&ka, ta, H, D, KVP_DTYPE_F32, 0, &rng);
  make_input(&va, ta, H, D, KVP_DTYPE_F32, 0, &rng);
  make_input(&kb, tb, H, D, KVP_DTYPE_F16, 0, &rng);
  make_input(&vb, tb, H, D, KVP_DTYPE_F16, 0, &rng);
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  st = kvp_concatenate(gpu, 0, &ka.dev, &va.dev, mda, (kvp_stream)s);
  CUDA_OK(cudaStreamEndCapture(s, &graph));
  assert_kvp_ok(st);
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  /* CPU: A, B, A.  GPU: replay A, eager B, replay A. */
  assert_kvp_ok(kvp_concatenate(cpu, 0, &ka.host, &va.host, mda, NULL));
  assert_kvp_ok(kvp_concatenate(cpu, 0, &kb.host, &vb.host, mdb, NULL));
  assert_kvp_ok(kvp_concatenate(cpu, 0, &ka.host, &va.host, mda, NULL));
  CUDA_OK(cudaGraphLaunch(exec, s));
  assert_kvp_ok(kvp_concatenate(gpu, 0, &kb.dev, &vb.dev, mdb, (kvp_stream)s));
  CUDA_OK(cudaGraphLaunch(exec, s));
  CUDA_OK(cudaStreamSynchronize(s));
  expect_same_layer(cpu, gpu, n, "graph replay with host metadata (graph arena)");
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));

  free_input(&ka);
  free_input(&va);
  free_input(&kb);
  free_input(&vb);
  assert_kvp_ok(kvp_metadata_destroy(mda));
  assert_kvp_ok(kvp_metadata_destroy(mdb));
  free_input(&k);
  free_input(&v);
  kvp_gpu_metadata_free(&dmd);
  assert_kvp_ok(kvp_metadata_destroy(md1));
  CUDA_OK(cudaStreamDestroy(s));
  free(before);
  assert_kvp_ok(kvp_cache_destroy(gpu));
  assert_kvp_ok(kvp_cache_destroy(cpu));
}

/* kvp_cache_read_layer / kvp_cache_write_layer wait for their copy, which a CUDA graph cannot do:
 * on a capturing stream they are refused with KVP_ERR_UNSUPPORTED before anything is enqueued, so
 * the host buffer and the layer are untouched and the capture stays valid (a kvp_concatenate
 * captured around them still replays). kvp_concatenate on a capture the caller has invalidated
 * says so. */
static void test_cuda_concatenate__layer_copies_refused_while_capturing(void **state) {
  (void)state;
  kvp_test_require_gpu();
  uint64_t rng = 0xCAB;
  const int64_t H = 2, D = 128, S = 16;
  kvp_config cfg = kvp_test_config(1, H, D, S, 24, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  kvp_cache *cpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CPU, 0);
  kvp_cache *gpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CUDA, 0);
  kvp_cache *all[2] = {cpu, gpu};
  const uint32_t layers[2] = {0, 0};
  uint8_t *before = prefill(all, layers, 2, &rng);
  const size_t n = kvp_test_layer_bytes(cpu);
  int64_t T = 0;
  kvp_metadata *md = random_batch(&cfg, &rng, 4, 0, 0, &T);
  tensor_pair k, v;
  make_input(&k, T, H, D, KVP_DTYPE_BF16, 0, &rng);
  make_input(&v, T, H, D, KVP_DTYPE_BF16, 0, &rng);
  uint8_t *buf = (uint8_t *)malloc(n), *junk = (uint8_t *)malloc(n);
  assert_non_null(buf);
  assert_non_null(junk);
  memset(buf, 0x5A, n);
  memset(junk, 0xEE, n);
  cudaStream_t s;
  cudaGraph_t graph;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));

  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  kvp_status st_cat = kvp_concatenate(gpu, 0, &k.dev, &v.dev, md, (kvp_stream)s);
  kvp_status st_read = kvp_cache_read_layer(gpu, 0, buf, n, (kvp_stream)s);
  char msg[512];
  snprintf(msg, sizeof msg, "%s", kvp_last_error_message());
  kvp_status st_write = kvp_cache_write_layer(gpu, 0, junk, n, (kvp_stream)s);
  CUDA_OK(cudaStreamEndCapture(s, &graph)); /* still valid */
  assert_kvp_ok(st_cat);
  assert_int_equal(st_read, KVP_ERR_UNSUPPORTED);
  assert_int_equal(st_write, KVP_ERR_UNSUPPORTED);
  if (strstr(msg, "kvp_cache_read_layer") == NULL || strstr(msg, "captured into a CUDA graph") == NULL)
    fail_msg("unexpected message: %s", msg);
  for (size_t i = 0; i < n; ++i) assert_int_equal(buf[i], 0x5A); /* nothing was read */

  /* Nothing ran yet, and the refused write changed nothing. */
  uint8_t *got = read_layer(gpu, 0);
  assert_memory_equal(got, before, n);
  free(got);
  /* The replay writes the captured batch. */
  run_graph_once(graph, s);
  assert_kvp_ok(kvp_concatenate(cpu, 0, &k.host, &v.host, md, NULL));
  expect_same_layer(cpu, gpu, n, "replay of a capture in which layer copies were refused");
  assert_int_equal(kvp_test_async_error(gpu), KVP_OK);
  free(buf);
  free(junk);
  free(before);

  /* A capture the caller has invalidated (cudaMalloc is not allowed while capturing): the call
   * says so instead of failing somewhere inside, the cache is not poisoned, and once the capture
   * is ended the same call works. */
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  void *p = NULL;
  assert_true(cudaMalloc(&p, 256) != cudaSuccess);
  assert_kvp_status(kvp_concatenate(gpu, 0, &k.dev, &v.dev, md, (kvp_stream)s), KVP_ERR_DEVICE,
                    "capture was invalidated");
  assert_true(cudaStreamEndCapture(s, &graph) != cudaSuccess);
  (void)cudaGetLastError();
  assert_kvp_ok(kvp_concatenate(gpu, 0, &k.dev, &v.dev, md, (kvp_stream)s));
  CUDA_OK(cudaStreamSynchronize(s));
  expect_same_layer(cpu, gpu, n, "after an invalidated capture"); /* the same batch again */

  CUDA_OK(cudaStreamDestroy(s));
  free_input(&k);
  free_input(&v);
  assert_kvp_ok(kvp_metadata_destroy(md));
  assert_kvp_ok(kvp_cache_destroy(gpu));
  assert_kvp_ok(kvp_cache_destroy(cpu));
}

/* Host metadata captured into graphs is staged in the cache's graph arena (1 MiB). When it runs
 * out, kvp_concatenate refuses with KVP_ERR_UNSUPPORTED and enqueues nothing: the capture stays
 * valid, and the calls captured before still replay. Outside capture the same batch goes through
 * the staging ring (which grows for it), and small batches (inline runs) still capture. */
static void test_cuda_concatenate__graph_arena_exhausted(void **state) {
  (void)state;
  kvp_test_require_gpu();
  uint64_t rng = 0xA7E;
  const int64_t H = 1, D = 64, S = 16;
  const int nreq = 1000; /* 24000 bytes of runs per call: about 43 calls fill the arena */
  kvp_config cfg = kvp_test_config(1, H, D, S, nreq + 8, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  kvp_cache *cpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CPU, 0);
  kvp_cache *gpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CUDA, 0);
  kvp_cache *all[2] = {cpu, gpu};
  const uint32_t layers[2] = {0, 0};
  uint8_t *before = prefill(all, layers, 2, &rng);
  const size_t n = kvp_test_layer_bytes(cpu);
  kvp_metadata *mda = decode_batch(&cfg, nreq, 3, 1);
  kvp_metadata *mdb = decode_batch(&cfg, nreq, 7, 1);
  tensor_pair ka, va, kb, vb;
  make_input(&ka, nreq, H, D, KVP_DTYPE_BF16, 0, &rng);
  make_input(&va, nreq, H, D, KVP_DTYPE_BF16, 0, &rng);
  make_input(&kb, nreq, H, D, KVP_DTYPE_BF16, 0, &rng);
  make_input(&vb, nreq, H, D, KVP_DTYPE_BF16, 0, &rng);
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));

  cudaGraph_t graph;
  int captured = 0;
  kvp_status st = KVP_OK;
  char msg[512] = "";
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  for (; captured < 200; ++captured) {
    st = kvp_concatenate(gpu, 0, &ka.dev, &va.dev, mda, (kvp_stream)s);
    if (st != KVP_OK) break;
  }
  snprintf(msg, sizeof msg, "%s", kvp_last_error_message());
  kvp_status st_b = kvp_concatenate(gpu, 0, &kb.dev, &vb.dev, mdb, (kvp_stream)s); /* refused as well */
  CUDA_OK(cudaStreamEndCapture(s, &graph)); /* the refusals did not invalidate the capture */
  assert_int_equal(st, KVP_ERR_UNSUPPORTED);
  assert_int_equal(st_b, KVP_ERR_UNSUPPORTED);
  if (strstr(msg, "graph staging arena") == NULL || strstr(msg, "device-resident metadata") == NULL)
    fail_msg("unexpected message: %s", msg);
  assert_in_range(captured, 30, 60);
  printf("graph arena: %d calls of %d runs captured before it ran out\n", captured, nreq);

  /* Replay: exactly batch A (what was captured), none of batch B. */
  run_graph_once(graph, s);
  assert_kvp_ok(kvp_concatenate(cpu, 0, &ka.host, &va.host, mda, NULL));
  uint8_t *want = read_layer(cpu, 0);
  assert_true(memcmp(want, before, n) != 0);
  expect_layer(gpu, 0, want, n, "replay of the calls captured before the arena ran out");
  free(want);

  /* Eager: batch B through the staging ring (24000 bytes: the ring's slots grow). */
  assert_kvp_ok(kvp_concatenate(cpu, 0, &kb.host, &vb.host, mdb, NULL));
  assert_kvp_ok(kvp_concatenate(gpu, 0, &kb.dev, &vb.dev, mdb, (kvp_stream)s));
  CUDA_OK(cudaStreamSynchronize(s));
  expect_same_layer(cpu, gpu, n, "eager call after the capture");

  /* A small batch (inline runs, no staging) still captures and replays. */
  kvp_metadata *mdc = decode_batch(&cfg, 20, 11, 1);
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  st = kvp_concatenate(gpu, 0, &ka.dev, &va.dev, mdc, (kvp_stream)s);
  CUDA_OK(cudaStreamEndCapture(s, &graph));
  assert_kvp_ok(st);
  run_graph_once(graph, s);
  assert_kvp_ok(kvp_concatenate(cpu, 0, &ka.host, &va.host, mdc, NULL));
  expect_same_layer(cpu, gpu, n, "small batch captured after the arena ran out");

  assert_int_equal(kvp_test_async_error(gpu), KVP_OK);
  CUDA_OK(cudaStreamDestroy(s));
  free_input(&ka);
  free_input(&va);
  free_input(&kb);
  free_input(&vb);
  free(before);
  assert_kvp_ok(kvp_metadata_destroy(mda));
  assert_kvp_ok(kvp_metadata_destroy(mdb));
  assert_kvp_ok(kvp_metadata_destroy(mdc));
  assert_kvp_ok(kvp_cache_destroy(gpu));
  assert_kvp_ok(kvp_cache_destroy(cpu));
}

/* ------------------------------------------------------------------------------------------ */
/* Device-side validation                                                                      */

/* A device-resident page id out of range: that page's tokens are not written (everything else
 * is), the async error names the value, the cache refuses work until the error is cleared, and
 * afterwards it works again. */
static void run_bad_device_metadata(kvp_layout layout, uint64_t seed) {
  uint64_t rng = seed;
  const int64_t H = 4, D = 128, S = 16, P = 40;
  kvp_config cfg = kvp_test_config(1, H, D, S, P, KVP_DTYPE_F16, layout);
  kvp_cache *cpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CPU, 0);
  kvp_cache *gpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CUDA, 0);
  kvp_cache *all[2] = {cpu, gpu};
  const uint32_t layers[2] = {0, 0};
  uint8_t *before = prefill(all, layers, 2, &rng);
  const size_t n = kvp_test_layer_bytes(cpu);
  const size_t page_bytes = n / (size_t)P;
  const int32_t spare = (int32_t)(P - 1); /* random_batch never uses the last page */
  int64_t T = 0;
  kvp_metadata *md = NULL;
  kvp_metadata_desc d;
  int64_t bad_index = -1;
  int32_t bad_value = 0;
  /* Draw batches until one has a second row (so some rows stay valid). */
  for (;;) {
    md = random_batch(&cfg, &rng, 5, 0, 0, &T);
    assert_kvp_ok(kvp_metadata_desc_init(&d, sizeof d));
    assert_kvp_ok(kvp_metadata_get_desc(md, &d));
    if (layout == KVP_LAYOUT_V3 ? d.request_distribution[2] >= 2 : d.num_kv_update_slices[0] >= 2) break;
    assert_kvp_ok(kvp_metadata_destroy(md));
  }
  /* Host copy of the arrays we corrupt. */
  int32_t *arr;
  int64_t arr_len;
  if (layout == KVP_LAYOUT_V3) {
    arr_len = d.num_reqs * d.pages_per_req;
    arr = (int32_t *)malloc((size_t)arr_len * 4);
    memcpy(arr, d.pages_tables, (size_t)arr_len * 4);
    /* Row 1's first new token: position ctx - q_len, logical page pos / S. */
    int64_t q_len = d.query_start_loc[2] - d.query_start_loc[1];
    int64_t pos = d.context_lens[1] - q_len;
    bad_index = 1 * d.pages_per_req + pos / S;
  } else {
    arr_len = 3 * d.num_slices;
    arr = (int32_t *)malloc((size_t)arr_len * 4);
    memcpy(arr, d.slot_mapping, (size_t)arr_len * 4);
    bad_index = 1; /* slice 1's destination slot */
  }
  /* Reference: the CPU writes the bad entry's tokens to the spare page instead... */
  kvp_metadata_desc ref = d;
  int32_t *ref_arr = (int32_t *)malloc((size_t)arr_len * 4);
  memcpy(ref_arr, arr, (size_t)arr_len * 4);
  if (layout == KVP_LAYOUT_V3) {
    bad_value = (int32_t)(P + 5);
    ref_arr[bad_index] = spare;
    ref.pages_tables = ref_arr;
  } else {
    /* v2 slice 1: keep its in-page offset, move it to the spare page (len <= S here). */
    int32_t dst = arr[bad_index], len = arr[2 * d.num_slices + bad_index];
    assert_true(len <= S && dst % S + len <= S);
    bad_value = (int32_t)(P * S + 3 + dst % S);
    ref_arr[bad_index] = (int32_t)(spare * S + dst % S);
    ref.slot_mapping = ref_arr;
  }
  kvp_metadata *ref_md = NULL;
  assert_kvp_ok(kvp_metadata_create(&ref, &ref_md));
  tensor_pair k, v;
  make_input(&k, T, H, D, KVP_DTYPE_F32, 0, &rng);
  make_input(&v, T, H, D, KVP_DTYPE_F32, 0, &rng);
  assert_kvp_ok(kvp_concatenate(cpu, 0, &k.host, &v.host, ref_md, NULL));
  uint8_t *want = read_layer(cpu, 0);
  /* ...and on the GPU the spare page keeps its old bytes. */
  memcpy(want + (size_t)spare * page_bytes, before + (size_t)spare * page_bytes, page_bytes);

  kvp_gpu_metadata dmd;
  kvp_gpu_metadata_make(&dmd, md);
  arr[bad_index] = bad_value;
  {
    kvp_metadata_desc dd;
    assert_kvp_ok(kvp_metadata_desc_init(&dd, sizeof dd));
    assert_kvp_ok(kvp_metadata_get_desc(dmd.md, &dd));
    kvp_gpu_upload_i32(layout == KVP_LAYOUT_V3 ? dd.pages_tables : dd.slot_mapping, arr, arr_len);
  }
  /* A valid call captured in a graph before the error: replayed after it, the device itself
   * must refuse to write (the host is not involved in a replay). */
  cudaStream_t s;
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  tensor_pair k2, v2;
  make_input(&k2, T, H, D, KVP_DTYPE_F32, 0, &rng);
  make_input(&v2, T, H, D, KVP_DTYPE_F32, 0, &rng);
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  kvp_status cst = kvp_concatenate(gpu, 0, &k2.dev, &v2.dev, md, (kvp_stream)s);
  CUDA_OK(cudaStreamEndCapture(s, &graph));
  assert_kvp_ok(cst);
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));

  assert_kvp_ok(kvp_concatenate(gpu, 0, &k.dev, &v.dev, dmd.md, NULL)); /* enqueued: no host check possible */
  CUDA_OK(cudaDeviceSynchronize());
  CUDA_OK(cudaGraphLaunch(exec, s));
  CUDA_OK(cudaStreamSynchronize(s));
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));
  CUDA_OK(cudaStreamDestroy(s));
  free_input(&k2);
  free_input(&v2);

  char value_text[32];
  snprintf(value_text, sizeof value_text, "%d", (int)bad_value);
  assert_int_equal(kvp_test_async_error(gpu), KVP_ERR_INVALID_ARGUMENT);
  if (strstr(kvp_last_error_message(), value_text) == NULL ||
      strstr(kvp_last_error_message(), layout == KVP_LAYOUT_V3 ? "page id" : "slot") == NULL)
    fail_msg("async error message '%s' does not name %s", kvp_last_error_message(), value_text);
  /* Refused until cleared. */
  assert_kvp_status(kvp_concatenate(gpu, 0, &k.dev, &v.dev, md, NULL), KVP_ERR_DEVICE_LOST, value_text);
  uint8_t *got = (uint8_t *)malloc(n);
  assert_kvp_status(kvp_cache_read_layer(gpu, 0, got, n, NULL), KVP_ERR_DEVICE_LOST, "clear");
  assert_kvp_ok(kvp_cache_clear_async_error(gpu));
  assert_int_equal(kvp_test_async_error(gpu), KVP_OK);
  assert_kvp_ok(kvp_cache_read_layer(gpu, 0, got, n, NULL));
  report_first_difference(got, want, n, layout == KVP_LAYOUT_V3 ? "v3 bad page id" : "v2 bad slot");

  /* Works again after clearing: the valid reference batch, on both. */
  assert_kvp_ok(kvp_cache_write_layer(cpu, 0, want, n, NULL));
  refill_input(&k, &rng);
  refill_input(&v, &rng);
  assert_kvp_ok(kvp_concatenate(cpu, 0, &k.host, &v.host, md, NULL));
  assert_kvp_ok(kvp_concatenate(gpu, 0, &k.dev, &v.dev, md, NULL));
  free(want);
  want = read_layer(cpu, 0);
  assert_kvp_ok(kvp_cache_read_layer(gpu, 0, got, n, NULL));
  report_first_difference(got, want, n, "after clearing the async error");
  assert_int_equal(kvp_test_async_error(gpu), KVP_OK);

  free(got);
  free(want);
  free(arr);
  free(ref_arr);
  free(before);
  free_input(&k);
  free_input(&v);
  kvp_gpu_metadata_free(&dmd);
  assert_kvp_ok(kvp_metadata_destroy(ref_md));
  assert_kvp_ok(kvp_metadata_destroy(md));
  assert_kvp_ok(kvp_cache_destroy(gpu));
  assert_kvp_ok(kvp_cache_destroy(cpu));
}

/* v3 device metadata whose context length puts a row's tokens past the end of its page-table
 * row: that row is not written (and its neighbour's page-table entries are not used instead);
 * the error names the logical page and the table width. */
static void test_cuda_concatenate__device_page_index_beyond_table(void **state) {
  (void)state;
  kvp_test_require_gpu();
  uint64_t rng = 0x1DE;
  const int64_t H = 2, D = 128, S = 16;
  kvp_config cfg = kvp_test_config(1, H, D, S, 40, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  kvp_cache *cpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CPU, 0);
  kvp_cache *gpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CUDA, 0);
  kvp_cache *all[2] = {cpu, gpu};
  const uint32_t layers[2] = {0, 0};
  uint8_t *before = prefill(all, layers, 2, &rng);
  const size_t n = kvp_test_layer_bytes(cpu);
  kvp_metadata *md = NULL;
  kvp_metadata_desc d;
  int64_t T = 0;
  for (;;) { /* two active rows and a padding row (page ids 0) after them */
    md = random_batch(&cfg, &rng, 2, 3, 0, &T);
    assert_kvp_ok(kvp_metadata_desc_init(&d, sizeof d));
    assert_kvp_ok(kvp_metadata_get_desc(md, &d));
    if (d.num_reqs == 3 && d.request_distribution[2] == 2) break;
    assert_kvp_ok(kvp_metadata_destroy(md));
  }
  /* Reference: only row 0 (num_seqs 1). */
  int32_t ref_dist[3];
  ref_dist[0] = d.request_distribution[0] < 1 ? d.request_distribution[0] : 1;
  ref_dist[1] = d.request_distribution[1] < 1 ? d.request_distribution[1] : 1;
  ref_dist[2] = 1;
  kvp_metadata_desc ref = d;
  ref.request_distribution = ref_dist;
  kvp_metadata *ref_md = NULL;
  assert_kvp_ok(kvp_metadata_create(&ref, &ref_md));
  tensor_pair k, v;
  make_input(&k, T, H, D, KVP_DTYPE_BF16, 0, &rng);
  make_input(&v, T, H, D, KVP_DTYPE_BF16, 0, &rng);
  assert_kvp_ok(kvp_concatenate(cpu, 0, &k.host, &v.host, ref_md, NULL));
  uint8_t *want = read_layer(cpu, 0);
  assert_true(memcmp(want, before, n) != 0);

  /* Device copy with row 1's context length moved past its table: first token at logical page
   * pages_per_req. */
  kvp_gpu_metadata dmd;
  kvp_gpu_metadata_make(&dmd, md);
  int32_t ctx[3] = {d.context_lens[0], 0, d.context_lens[2]};
  const int64_t q_len1 = d.query_start_loc[2] - d.query_start_loc[1];
  ctx[1] = (int32_t)(d.pages_per_req * S + q_len1);
  {
    kvp_metadata_desc dd;
    assert_kvp_ok(kvp_metadata_desc_init(&dd, sizeof dd));
    assert_kvp_ok(kvp_metadata_get_desc(dmd.md, &dd));
    kvp_gpu_upload_i32(dd.context_lens, ctx, 3);
  }
  assert_kvp_ok(kvp_concatenate(gpu, 0, &k.dev, &v.dev, dmd.md, NULL));
  CUDA_OK(cudaDeviceSynchronize());
  assert_int_equal(kvp_test_async_error(gpu), KVP_ERR_INVALID_ARGUMENT);
  char width[48];
  snprintf(width, sizeof width, "have %lld pages per request", (long long)d.pages_per_req);
  if (strstr(kvp_last_error_message(), width) == NULL)
    fail_msg("async error message '%s' lacks '%s'", kvp_last_error_message(), width);
  assert_kvp_ok(kvp_cache_clear_async_error(gpu));
  uint8_t *got = read_layer(gpu, 0);
  report_first_difference(got, want, n, "row past its page table");
  free(got);
  free(want);
  free(before);
  free_input(&k);
  free_input(&v);
  kvp_gpu_metadata_free(&dmd);
  assert_kvp_ok(kvp_metadata_destroy(ref_md));
  assert_kvp_ok(kvp_metadata_destroy(md));
  assert_kvp_ok(kvp_cache_destroy(gpu));
  assert_kvp_ok(kvp_cache_destroy(cpu));
}

static void test_cuda_concatenate__bad_device_page_id_is_async_error(void **state) {
  (void)state;
  kvp_test_require_gpu();
  run_bad_device_metadata(KVP_LAYOUT_V3, 0xBAD1);
  run_bad_device_metadata(KVP_LAYOUT_V2, 0xBAD2);
}

/* Every other device-side check, one corruption at a time on a copy of valid device metadata:
 * the launch reports it through the async error with a message naming the array and the value,
 * writes every entry the corruption leaves valid and nothing else (compared with a CPU cache
 * running the corresponding valid batch), and the cache works again once the error is cleared. */
typedef enum bad_kind {
  BAD_V3_NUM_SEQS,   /* request_distribution[2] past the rows: nothing is written */
  BAD_V3_QUERY_END,  /* the last query_start_loc beyond the tokens: the last request is skipped */
  BAD_V3_QUERY_LEN,  /* q_len > context_lens for request 1: request 1 is skipped */
  BAD_V2_NUM_SLICES, /* num_kv_update_slices past the slices: nothing is written */
  BAD_V2_NEG_LEN,    /* slice 1 of negative length: slice 1 is skipped */
  BAD_V2_SOURCE      /* slice 1 reads past the last token: only its first (valid) token is written */
} bad_kind;

static void run_device_check(bad_kind kind, uint64_t seed) {
  uint64_t rng = seed;
  const kvp_layout layout = kind <= BAD_V3_QUERY_LEN ? KVP_LAYOUT_V3 : KVP_LAYOUT_V2;
  const int64_t H = 2, D = 128, S = 16, P = 40;
  kvp_config cfg = kvp_test_config(1, H, D, S, P, KVP_DTYPE_F16, layout);
  kvp_cache *cpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CPU, 0);
  kvp_cache *gpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CUDA, 0);
  kvp_cache *all[2] = {cpu, gpu};
  const uint32_t layers[2] = {0, 0};
  uint8_t *before = prefill(all, layers, 2, &rng);
  const size_t n = kvp_test_layer_bytes(cpu);
  const size_t row_bytes = n / (size_t)(P * S);
  kvp_metadata *md = NULL;
  kvp_metadata_desc d;
  int64_t T = 0;
  for (;;) { /* at least two requests / slices, slice 1 at least two tokens long */
    md = random_batch(&cfg, &rng, 5, 0, 0, &T);
    assert_kvp_ok(kvp_metadata_desc_init(&d, sizeof d));
    assert_kvp_ok(kvp_metadata_get_desc(md, &d));
    if (layout == KVP_LAYOUT_V3 ? d.request_distribution[2] >= 2
                                : d.num_kv_update_slices[0] >= 2 && d.slot_mapping[2 * d.num_slices + 1] >= 2)
      break;
    assert_kvp_ok(kvp_metadata_destroy(md));
  }
  tensor_pair k, v;
  make_input(&k, T, H, D, KVP_DTYPE_F32, 0, &rng);
  make_input(&v, T, H, D, KVP_DTYPE_F32, 0, &rng);
  kvp_gpu_metadata dmd;
  kvp_gpu_metadata_make(&dmd, md);
  kvp_metadata_desc dd; /* the device copy's arrays */
  assert_kvp_ok(kvp_metadata_desc_init(&dd, sizeof dd));
  assert_kvp_ok(kvp_metadata_get_desc(dmd.md, &dd));

  /* The valid batch the CPU runs for the expected bytes (NULL: nothing is written), and the
   * request whose slots are restored afterwards (-1: none). */
  kvp_metadata_desc ref = d;
  int use_ref = 1;
  int64_t skip_req = -1;
  int32_t rd[3], *arr = NULL;
  char frag[160];
  const int64_t N = d.num_slices;
  switch (kind) {
    case BAD_V3_NUM_SEQS: {
      const int32_t bad = (int32_t)(d.num_reqs + 3);
      memcpy(rd, d.request_distribution, sizeof rd);
      rd[2] = bad;
      kvp_gpu_upload_i32(dd.request_distribution, rd, 3);
      if (dd.num_seqs != NULL) kvp_gpu_upload_i32(dd.num_seqs, &bad, 1);
      use_ref = 0;
      snprintf(frag, sizeof frag, "(num_seqs) is %d, outside [0, %lld]", (int)bad, (long long)d.num_reqs);
      break;
    }
    case BAD_V3_QUERY_END: {
      const int64_t ns = d.request_distribution[2];
      arr = (int32_t *)malloc((size_t)d.query_start_loc_len * 4);
      memcpy(arr, d.query_start_loc, (size_t)d.query_start_loc_len * 4);
      arr[ns] = (int32_t)(T + 5);
      kvp_gpu_upload_i32(dd.query_start_loc, arr, d.query_start_loc_len);
      skip_req = ns - 1;
      snprintf(frag, sizeof frag, "query_start_loc[%lld] = %lld is decreasing, negative or beyond the %lld",
               (long long)ns, (long long)(T + 5), (long long)T);
      break;
    }
    case BAD_V3_QUERY_LEN: {
      const int32_t q_len1 = d.query_start_loc[2] - d.query_start_loc[1];
      arr = (int32_t *)malloc((size_t)d.context_lens_len * 4);
      memcpy(arr, d.context_lens, (size_t)d.context_lens_len * 4);
      arr[1] = q_len1 - 1;
      kvp_gpu_upload_i32(dd.context_lens, arr, d.context_lens_len);
      skip_req = 1;
      snprintf(frag, sizeof frag, "request 1 has q_len %d greater than its context_lens value %d", (int)q_len1,
               (int)(q_len1 - 1));
      break;
    }
    case BAD_V2_NUM_SLICES: {
      const int32_t bad = (int32_t)(N + 1);
      kvp_gpu_upload_i32(dd.num_kv_update_slices, &bad, 1);
      use_ref = 0;
      snprintf(frag, sizeof frag, "num_kv_update_slices is %d, outside [0, %lld]", (int)bad, (long long)N);
      break;
    }
    case BAD_V2_NEG_LEN:
    case BAD_V2_SOURCE: {
      int32_t *bad = (int32_t *)malloc((size_t)(3 * N) * 4);
      arr = (int32_t *)malloc((size_t)(3 * N) * 4);
      memcpy(bad, d.slot_mapping, (size_t)(3 * N) * 4);
      memcpy(arr, d.slot_mapping, (size_t)(3 * N) * 4);
      if (kind == BAD_V2_NEG_LEN) {
        bad[2 * N + 1] = -3;
        arr[2 * N + 1] = 0; /* reference: slice 1 writes nothing */
        snprintf(frag, sizeof frag, "slice 1 has negative length -3");
      } else {
        bad[N + 1] = (int32_t)(T - 1);
        arr[N + 1] = (int32_t)(T - 1); /* reference: only the first token, the last of the input */
        arr[2 * N + 1] = 1;
        snprintf(frag, sizeof frag, "slice 1 (source tokens from %lld) reads outside the %lld key/value tokens",
                 (long long)(T - 1), (long long)T);
      }
      kvp_gpu_upload_i32(dd.slot_mapping, bad, 3 * N);
      free(bad);
      ref.slot_mapping = arr;
      break;
    }
  }
  uint8_t *want;
  if (use_ref) {
    kvp_metadata *ref_md = NULL;
    assert_kvp_ok(kvp_metadata_create(&ref, &ref_md));
    assert_kvp_ok(kvp_concatenate(cpu, 0, &k.host, &v.host, ref_md, NULL));
    assert_kvp_ok(kvp_metadata_destroy(ref_md));
    want = read_layer(cpu, 0);
    if (skip_req >= 0) { /* the skipped request's slots keep their old bytes */
      const int64_t q_len = d.query_start_loc[skip_req + 1] - d.query_start_loc[skip_req];
      for (int64_t pos = d.context_lens[skip_req] - q_len; pos < d.context_lens[skip_req]; ++pos) {
        const int64_t slot = (int64_t)d.pages_tables[skip_req * d.pages_per_req + pos / S] * S + pos % S;
        memcpy(want + (size_t)slot * row_bytes, before + (size_t)slot * row_bytes, row_bytes);
      }
    }
    assert_true(memcmp(want, before, n) != 0);
  } else {
    want = (uint8_t *)malloc(n);
    memcpy(want, before, n);
  }

  assert_kvp_ok(kvp_concatenate(gpu, 0, &k.dev, &v.dev, dmd.md, NULL)); /* enqueued: checked on the device */
  CUDA_OK(cudaDeviceSynchronize());
  assert_int_equal(kvp_test_async_error(gpu), KVP_ERR_INVALID_ARGUMENT);
  if (strstr(kvp_last_error_message(), frag) == NULL)
    fail_msg("case %d: async error message '%s' lacks '%s'", (int)kind, kvp_last_error_message(), frag);
  assert_kvp_ok(kvp_cache_clear_async_error(gpu));
  char what[64];
  snprintf(what, sizeof what, "device check case %d", (int)kind);
  expect_layer(gpu, 0, want, n, what);

  /* Cleared: the valid batch on both caches (both now holding `want`) gives the same bytes. */
  kvp_gpu_metadata_free(&dmd);
  kvp_gpu_metadata_make(&dmd, md);
  assert_kvp_ok(kvp_cache_write_layer(cpu, 0, want, n, NULL));
  assert_kvp_ok(kvp_concatenate(cpu, 0, &k.host, &v.host, md, NULL));
  assert_kvp_ok(kvp_concatenate(gpu, 0, &k.dev, &v.dev, dmd.md, NULL));
  expect_same_layer(cpu, gpu, n, "valid batch after clearing");
  assert_int_equal(kvp_test_async_error(gpu), KVP_OK);

  free(want);
  free(arr);
  free(before);
  free_input(&k);
  free_input(&v);
  kvp_gpu_metadata_free(&dmd);
  assert_kvp_ok(kvp_metadata_destroy(md));
  assert_kvp_ok(kvp_cache_destroy(gpu));
  assert_kvp_ok(kvp_cache_destroy(cpu));
}

static void test_cuda_concatenate__every_device_check_reports_and_skips(void **state) {
  (void)state;
  kvp_test_require_gpu();
  for (int kind = BAD_V3_NUM_SEQS; kind <= BAD_V2_SOURCE; ++kind) run_device_check((bad_kind)kind, 0xC4EC0 + (uint64_t)kind);
}

/* The stream handles an engine may pass: NULL, cudaStreamLegacy, cudaStreamPerThread, a
 * blocking and a non-blocking stream. With each, host metadata (through the staging ring),
 * device metadata and a page copy give the CPU's bytes, and no CUDA error is left behind. */
static void test_cuda_concatenate__stream_handles(void **state) {
  (void)state;
  kvp_test_require_gpu();
  uint64_t rng = 0x57;
  const int64_t H = 4, D = 128;
  kvp_config cfg = kvp_test_config(2, H, D, 16, 300, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  kvp_cache *cpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CPU, 0);
  kvp_cache *gpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CUDA, 0);
  kvp_cache *all[2] = {cpu, gpu};
  const uint32_t layers[2] = {0, 0};
  uint8_t *before = prefill(all, layers, 2, &rng);
  const size_t n = kvp_test_layer_bytes(cpu);
  cudaStream_t blocking, non_blocking;
  CUDA_OK(cudaStreamCreateWithFlags(&blocking, 0));
  CUDA_OK(cudaStreamCreateWithFlags(&non_blocking, cudaStreamNonBlocking));
  const cudaStream_t handles[5] = {NULL, cudaStreamLegacy, cudaStreamPerThread, blocking, non_blocking};
  const char *names[5] = {"NULL", "cudaStreamLegacy", "cudaStreamPerThread", "a blocking stream",
                          "a non-blocking stream"};
  for (int h = 0; h < 5; ++h) {
    int64_t T = 0;
    kvp_metadata *md = random_batch(&cfg, &rng, 48, 0, 0, &T);
    tensor_pair k, v;
    make_input(&k, T, H, D, KVP_DTYPE_BF16, 0, &rng);
    make_input(&v, T, H, D, KVP_DTYPE_BF16, 0, &rng);
    kvp_gpu_metadata dmd;
    kvp_gpu_metadata_make(&dmd, md);
    CUDA_OK(cudaDeviceSynchronize()); /* inputs and metadata are in place */
    const kvp_stream st = (kvp_stream)handles[h];
    const int32_t src_page = h + 1, dst_page = 299;
    assert_kvp_ok(kvp_concatenate(cpu, 0, &k.host, &v.host, md, NULL));
    assert_kvp_ok(kvp_concatenate(cpu, 1, &k.host, &v.host, md, NULL));
    assert_kvp_ok(kvp_cache_copy_pages(cpu, &src_page, &dst_page, 1, NULL));
    assert_kvp_ok(kvp_concatenate(gpu, 0, &k.dev, &v.dev, md, st));
    assert_kvp_ok(kvp_concatenate(gpu, 1, &k.dev, &v.dev, dmd.md, st));
    assert_kvp_ok(kvp_cache_copy_pages(gpu, &src_page, &dst_page, 1, st));
    CUDA_OK(cudaStreamSynchronize(handles[h]));
    CUDA_OK(cudaGetLastError());
    for (uint32_t l = 0; l < 2; ++l) {
      char what[96];
      snprintf(what, sizeof what, "layer %u written on %s", l, names[h]);
      uint8_t *want = read_layer(cpu, l);
      expect_layer(gpu, l, want, n, what);
      free(want);
    }
    kvp_gpu_metadata_free(&dmd);
    free_input(&k);
    free_input(&v);
    assert_kvp_ok(kvp_metadata_destroy(md));
  }
  assert_int_equal(kvp_test_async_error(gpu), KVP_OK);
  CUDA_OK(cudaStreamDestroy(blocking));
  CUDA_OK(cudaStreamDestroy(non_blocking));
  free(before);
  assert_kvp_ok(kvp_cache_destroy(gpu));
  assert_kvp_ok(kvp_cache_destroy(cpu));
}

/* A value to corrupt a metadata entry with: small, boundary or wild. */
static int32_t corrupt_value(uint64_t *rng, int32_t old, int64_t num_pages, int64_t num_slots, int64_t T) {
  switch (kvp_test_rand(rng) % 12) {
    case 0: return -1;
    case 1: return 0;
    case 2: return old + 1;
    case 3: return old - 1;
    case 4: return (int32_t)num_pages;
    case 5: return (int32_t)(num_pages - 1);
    case 6: return (int32_t)num_slots;
    case 7: return (int32_t)T;
    case 8: return (int32_t)(T + 1);
    case 9: return INT32_MAX;
    case 10: return INT32_MIN;
    default: return (int32_t)kvp_test_rand_range(rng, -40, 600);
  }
}

/* Random corruptions (0 to 3 entries) of valid metadata, used from device memory: the kernels
 * never store outside the cache (the emulated runtime aborts on such a store), and whenever the
 * host-side validation accepts the same values as host metadata, the device raises no error and
 * writes exactly what the CPU writes. When the host rejects them, the device may report them
 * (the host also checks what the device does not need to, such as repeated slots). */
static void fuzz_device_metadata(kvp_layout layout, uint64_t seed, int rounds) {
  uint64_t rng = seed;
  const int64_t H = 2, D = 64, S = 16, P = 24;
  kvp_config cfg = kvp_test_config(1, H, D, S, P, KVP_DTYPE_BF16, layout);
  kvp_cache *cpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CPU, 0);
  kvp_cache *gpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CUDA, 0);
  kvp_cache *all[2] = {cpu, gpu};
  const uint32_t layers[2] = {0, 0};
  uint8_t *before = prefill(all, layers, 2, &rng);
  const size_t n = kvp_test_layer_bytes(cpu);
  int accepted = 0, rejected = 0, reported = 0;
  for (int round = 0; round < rounds; ++round) {
    int64_t T = 0;
    kvp_metadata *valid = random_batch(&cfg, &rng, 6, 8, 64, &T);
    kvp_metadata_desc d;
    assert_kvp_ok(kvp_metadata_desc_init(&d, sizeof d));
    assert_kvp_ok(kvp_metadata_get_desc(valid, &d));
    /* Writable copies of every array the kernels read. */
    const int32_t **fields[7] = {&d.pages_tables, &d.context_lens, &d.query_start_loc, &d.num_seqs,
                                 &d.slot_mapping, &d.num_kv_update_slices, &d.request_distribution};
    const int64_t lens[7] = {d.num_reqs * d.pages_per_req, d.context_lens_len, d.query_start_loc_len, d.num_seqs_len,
                             3 * d.num_slices, d.num_kv_update_slices_len, d.request_distribution_len};
    int32_t *copies[7];
    int idx[7], na = 0;
    for (int f = 0; f < 7; ++f) {
      copies[f] = NULL;
      if (*fields[f] == NULL || lens[f] <= 0) continue;
      copies[f] = (int32_t *)malloc((size_t)lens[f] * sizeof(int32_t));
      assert_non_null(copies[f]);
      memcpy(copies[f], *fields[f], (size_t)lens[f] * sizeof(int32_t));
      *fields[f] = copies[f];
      idx[na++] = f;
    }
    const int muts = round % 8 == 0 ? 0 : 1 + (int)(kvp_test_rand(&rng) % 3);
    for (int m = 0; m < muts; ++m) {
      const int f = idx[kvp_test_rand(&rng) % (uint64_t)na];
      const int64_t i = kvp_test_rand_range(&rng, 0, lens[f] - 1);
      copies[f][i] = corrupt_value(&rng, copies[f][i], P, P * S, T);
    }
    kvp_metadata *md = NULL;
    assert_kvp_ok(kvp_metadata_create(&d, &md));
    tensor_pair k, v;
    make_input(&k, T, H, D, KVP_DTYPE_BF16, 0, &rng);
    make_input(&v, T, H, D, KVP_DTYPE_BF16, 0, &rng);
    kvp_gpu_metadata dmd;
    kvp_gpu_metadata_make(&dmd, md);
    const kvp_status host = kvp_concatenate(cpu, 0, &k.host, &v.host, md, NULL);
    assert_kvp_ok(kvp_concatenate(gpu, 0, &k.dev, &v.dev, dmd.md, NULL));
    CUDA_OK(cudaDeviceSynchronize());
    const kvp_status async = kvp_test_async_error(gpu);
    char what[96];
    snprintf(what, sizeof what, "%s device metadata fuzz, round %d (%d corruptions)",
             layout == KVP_LAYOUT_V2 ? "v2" : "v3", round, muts);
    if (host == KVP_OK) {
      ++accepted;
      if (async != KVP_OK) fail_msg("%s: the host accepts it but the device reported: %s", what, kvp_last_error_message());
      expect_same_layer(cpu, gpu, n, what);
    } else {
      assert_int_equal(host, KVP_ERR_INVALID_ARGUMENT);
      ++rejected;
      if (async != KVP_OK) {
        assert_int_equal(async, KVP_ERR_INVALID_ARGUMENT);
        ++reported;
        assert_kvp_ok(kvp_cache_clear_async_error(gpu));
      }
    }
    /* Back to the starting bytes for the next round. */
    assert_kvp_ok(kvp_cache_write_layer(cpu, 0, before, n, NULL));
    assert_kvp_ok(kvp_cache_write_layer(gpu, 0, before, n, NULL));
    kvp_gpu_metadata_free(&dmd);
    free_input(&k);
    free_input(&v);
    assert_kvp_ok(kvp_metadata_destroy(md));
    assert_kvp_ok(kvp_metadata_destroy(valid));
    for (int f = 0; f < 7; ++f) free(copies[f]);
  }
  printf("%s device metadata fuzz: %d rounds, %d accepted by the host (device identical), %d rejected (%d of "
         "them reported by the device)\n",
         layout == KVP_LAYOUT_V2 ? "v2" : "v3", rounds, accepted, rejected, reported);
  /* Both sides of the property were exercised. */
  assert_true(accepted >= rounds / 8);
  assert_true(reported > 0);
  free(before);
  assert_kvp_ok(kvp_cache_destroy(gpu));
  assert_kvp_ok(kvp_cache_destroy(cpu));
}

/* Rounds per layout: 160, or KVP_TEST_FUZZ_ROUNDS (the emulated 132-SM run, where each launch
 * runs many more emulated blocks, uses fewer). */
static void test_cuda_concatenate__device_metadata_fuzz(void **state) {
  (void)state;
  kvp_test_require_gpu();
  const char *env = getenv("KVP_TEST_FUZZ_ROUNDS");
  const int rounds = env != NULL && atoi(env) > 0 ? atoi(env) : 160;
  fuzz_device_metadata(KVP_LAYOUT_V3, 0xF022, rounds);
  fuzz_device_metadata(KVP_LAYOUT_V2, 0xF023, rounds);
}

/* Host-side errors on a CUDA cache are synchronous and change nothing; the caller's current
 * device is restored. */
static void test_cuda_concatenate__host_errors_change_nothing(void **state) {
  (void)state;
  kvp_test_require_gpu();
  uint64_t rng = 0xE44;
  kvp_config cfg = kvp_test_config(1, 2, 128, 16, 20, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  kvp_cache *gpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CUDA, 0);
  kvp_cache *all[1] = {gpu};
  const uint32_t layers[1] = {0};
  uint8_t *before = prefill(all, layers, 1, &rng);
  const size_t n = kvp_test_layer_bytes(gpu);
  int64_t T = 0;
  kvp_metadata *md = random_batch(&cfg, &rng, 4, 0, 0, &T);
  tensor_pair k, v;
  make_input(&k, T, 2, 128, KVP_DTYPE_BF16, 0, &rng);
  make_input(&v, T, 2, 128, KVP_DTYPE_BF16, 0, &rng);
  /* Host tensors for a CUDA cache are rejected. */
  assert_kvp_status(kvp_concatenate(gpu, 0, &k.host, &v.dev, md, NULL), KVP_ERR_INVALID_ARGUMENT, "key");
  /* Host metadata with a page id out of range is rejected before launch. */
  kvp_metadata_desc d;
  assert_kvp_ok(kvp_metadata_desc_init(&d, sizeof d));
  assert_kvp_ok(kvp_metadata_get_desc(md, &d));
  int32_t *pt = (int32_t *)malloc((size_t)(d.num_reqs * d.pages_per_req) * 4);
  memcpy(pt, d.pages_tables, (size_t)(d.num_reqs * d.pages_per_req) * 4);
  int64_t q_len = d.query_start_loc[1] - d.query_start_loc[0];
  pt[(d.context_lens[0] - q_len) / 16] = 999;
  d.pages_tables = pt;
  kvp_metadata *bad = NULL;
  assert_kvp_ok(kvp_metadata_create(&d, &bad));
  int dev_before = -1, dev_after = -2;
  CUDA_OK(cudaGetDevice(&dev_before));
  assert_kvp_status(kvp_concatenate(gpu, 0, &k.dev, &v.dev, bad, NULL), KVP_ERR_INVALID_ARGUMENT, "999");
  CUDA_OK(cudaGetDevice(&dev_after));
  assert_int_equal(dev_before, dev_after);
  uint8_t *got = read_layer(gpu, 0);
  assert_memory_equal(got, before, n);
  assert_int_equal(kvp_test_async_error(gpu), KVP_OK);
  free(got);
  free(pt);
  free(before);
  free_input(&k);
  free_input(&v);
  assert_kvp_ok(kvp_metadata_destroy(bad));
  assert_kvp_ok(kvp_metadata_destroy(md));
  assert_kvp_ok(kvp_cache_destroy(gpu));
}

/* The caller's current device is 0 and the cache lives on device 1 (machines with one GPU skip
 * this; the emulated runtime has two devices, and aborts if a kernel touches memory of a device
 * other than its own). Every call keeps to device 1 and leaves device 0 current, the results match
 * the CPU (layers, page copies, blobs, a blob loaded onto device 1), and a stream of device 0 is
 * refused with nothing written. */
static void test_cuda_concatenate__cache_on_second_device(void **state) {
  (void)state;
  int32_t count = 0;
  assert_kvp_ok(kvp_device_count(&count));
  if (!kvp_test_have_gpu() || count < 2) {
    printf("kvpages: fewer than two CUDA devices\n");
    skip();
    return;
  }
  uint64_t rng = 0xD1;
  const int64_t H = 8, D = 128;
  kvp_config cfg = kvp_test_config(2, H, D, 16, 300, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  CUDA_OK(cudaSetDevice(0));
  kvp_cache *cpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CPU, 0);
  kvp_cache *gpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CUDA, 1);
  assert_int_equal(kvp_gpu_current_device(), 0);
  kvp_device_type dt = KVP_DEVICE_CPU;
  int32_t did = -1;
  assert_kvp_ok(kvp_cache_get_device(gpu, &dt, &did));
  assert_int_equal(dt, KVP_DEVICE_CUDA);
  assert_int_equal(did, 1);
  kvp_cache *all[2] = {cpu, gpu};
  const uint32_t layers[2] = {0, 0};
  uint8_t *before = prefill(all, layers, 2, &rng);
  assert_int_equal(kvp_gpu_current_device(), 0);
  const size_t n = kvp_test_layer_bytes(cpu);

  /* Inputs, device-resident metadata and a stream on device 1; a stream on device 0. */
  int64_t T = 0;
  kvp_metadata *md = random_batch(&cfg, &rng, 48, 0, 0, &T);
  CUDA_OK(cudaSetDevice(1));
  tensor_pair k, v;
  make_input(&k, T, H, D, KVP_DTYPE_BF16, 0, &rng);
  make_input(&v, T, H, D, KVP_DTYPE_BF16, 0, &rng);
  kvp_gpu_metadata dmd;
  kvp_gpu_metadata_make(&dmd, md);
  cudaStream_t s1, s0;
  CUDA_OK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
  CUDA_OK(cudaSetDevice(0));
  CUDA_OK(cudaStreamCreateWithFlags(&s0, cudaStreamNonBlocking));

  /* Refused, with nothing written and no CUDA error left behind: inputs said to be on device 0,
   * and (host-validated metadata, staged: more than 32 runs) a stream of device 0. */
  tensor_pair k0 = k;
  k0.dev.device_id = 0;
  assert_kvp_status(kvp_concatenate(gpu, 0, &k0.dev, &v.dev, md, (kvp_stream)s1), KVP_ERR_INVALID_ARGUMENT, "device");
#if CUDART_VERSION >= 12080
  assert_kvp_status(kvp_concatenate(gpu, 0, &k.dev, &v.dev, md, (kvp_stream)s0), KVP_ERR_INVALID_ARGUMENT,
                    "the stream belongs to CUDA device 0 but the cache is on device 1");
#else
  assert_int_not_equal(kvp_concatenate(gpu, 0, &k.dev, &v.dev, md, (kvp_stream)s0), KVP_OK);
#endif
  assert_int_equal(kvp_gpu_current_device(), 0);
  CUDA_OK(cudaGetLastError());
  assert_int_equal(kvp_test_async_error(gpu), KVP_OK);
  expect_layer(gpu, 0, before, n, "after the refused calls");

  /* Host metadata on device 1's stream into layer 0, device metadata on NULL (device 1's legacy
   * stream) into layer 1; the CPU does the same. */
  assert_kvp_ok(kvp_concatenate(cpu, 0, &k.host, &v.host, md, NULL));
  assert_kvp_ok(kvp_concatenate(cpu, 1, &k.host, &v.host, md, NULL));
  assert_kvp_ok(kvp_concatenate(gpu, 0, &k.dev, &v.dev, md, (kvp_stream)s1));
  assert_int_equal(kvp_gpu_current_device(), 0);
  assert_kvp_ok(kvp_concatenate(gpu, 1, &k.dev, &v.dev, dmd.md, NULL));
  assert_int_equal(kvp_gpu_current_device(), 0);
  CUDA_OK(cudaStreamSynchronize(s1));
  expect_same_layer(cpu, gpu, n, "device 1, host metadata");
  uint8_t *want1 = read_layer(cpu, 1);
  expect_layer(gpu, 1, want1, n, "device 1, device metadata");
  free(want1);

  /* Page copies and serialization keep to device 1 too: same bytes as the CPU cache's. */
  const int32_t src_pages[2] = {3, 4}, dst_pages[2] = {290, 291};
  assert_kvp_ok(kvp_cache_copy_pages(cpu, src_pages, dst_pages, 2, NULL));
  assert_kvp_ok(kvp_cache_copy_pages(gpu, src_pages, dst_pages, 2, (kvp_stream)s1));
  assert_int_equal(kvp_gpu_current_device(), 0);
  CUDA_OK(cudaStreamSynchronize(s1));
  size_t nc = 0, ng = 0, w = 0;
  assert_kvp_ok(kvp_serialized_size(cpu, NULL, &nc));
  assert_kvp_ok(kvp_serialized_size(gpu, NULL, &ng));
  assert_int_equal(nc, ng);
  uint8_t *bc = (uint8_t *)malloc(nc), *bg = (uint8_t *)malloc(ng);
  assert_non_null(bc);
  assert_non_null(bg);
  assert_kvp_ok(kvp_serialize(cpu, NULL, bc, nc, &w));
  assert_kvp_ok(kvp_serialize(gpu, NULL, bg, ng, &w));
  assert_int_equal(kvp_gpu_current_device(), 0);
  assert_memory_equal(bc, bg, nc);
  /* A blob loaded into a new cache on device 1 is that device's and holds the same layers. */
  kvp_cache_options co;
  assert_kvp_ok(kvp_cache_options_init(&co, sizeof co));
  co.device_type = KVP_DEVICE_CUDA;
  co.device_id = 1;
  kvp_deserialize_options dop;
  assert_kvp_ok(kvp_deserialize_options_init(&dop, sizeof dop));
  dop.cache_options = &co;
  kvp_cache *loaded = NULL;
  assert_kvp_ok(kvp_deserialize_new(bc, nc, &dop, &loaded));
  assert_int_equal(kvp_gpu_current_device(), 0);
  assert_kvp_ok(kvp_cache_get_device(loaded, &dt, &did));
  assert_int_equal(did, 1);
  for (uint32_t l = 0; l < 2; ++l) {
    uint8_t *want = read_layer(cpu, l);
    expect_layer(loaded, l, want, n, "blob loaded on device 1");
    free(want);
  }
  assert_kvp_ok(kvp_cache_destroy(loaded));
  free(bc);
  free(bg);

  /* Memory statistics of each device, read with device 0 current; the budget over both is the
   * smaller of the two. */
  kvp_memory_stats ms[2];
  memset(ms, 0, sizeof ms);
  assert_kvp_ok(kvp_device_memory_stats(KVP_DEVICE_CUDA, 0, &ms[0]));
  assert_kvp_ok(kvp_device_memory_stats(KVP_DEVICE_CUDA, 1, &ms[1]));
  assert_int_equal(kvp_gpu_current_device(), 0);
  assert_true(ms[1].bytes_in_use >= (int64_t)(2 * n)); /* the cache's layers are on device 1 */
  int64_t b0 = 0, b1 = 0, both = 0;
  assert_kvp_ok(kvp_hbm_budget_bytes(&ms[0], 1, 0.9, KVP_BUDGET_FREE, KVP_DEFAULT_SAFETY_MARGIN, &b0));
  assert_kvp_ok(kvp_hbm_budget_bytes(&ms[1], 1, 0.9, KVP_BUDGET_FREE, KVP_DEFAULT_SAFETY_MARGIN, &b1));
  assert_kvp_ok(kvp_hbm_budget_bytes(ms, 2, 0.9, KVP_BUDGET_FREE, KVP_DEFAULT_SAFETY_MARGIN, &both));
  assert_int_equal(both, b0 < b1 ? b0 : b1);

  assert_kvp_ok(kvp_cache_destroy(gpu));
  assert_int_equal(kvp_gpu_current_device(), 0);
  free(before);
  free_input(&k);
  free_input(&v);
  kvp_gpu_metadata_free(&dmd);
  assert_kvp_ok(kvp_metadata_destroy(md));
  CUDA_OK(cudaStreamDestroy(s0));
  CUDA_OK(cudaStreamDestroy(s1));
  assert_kvp_ok(kvp_cache_destroy(cpu));
}

#else /* !KVP_HAS_CUDA */

static void test_cuda_concatenate__matches_cpu_every_layout_and_dtype(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_concatenate__v2_long_slices_match_cpu(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_concatenate__conversions_exhaustive(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_concatenate__large_batches_and_staging_ring(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_concatenate__graph_capture_and_replay(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_concatenate__graph_arena_exhausted(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_concatenate__layer_copies_refused_while_capturing(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_concatenate__bad_device_page_id_is_async_error(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_concatenate__device_page_index_beyond_table(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_concatenate__every_device_check_reports_and_skips(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_concatenate__host_errors_change_nothing(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_concatenate__cache_on_second_device(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_concatenate__device_metadata_fuzz(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_concatenate__stream_handles(void **state) { (void)state; kvp_test_require_gpu(); }

#endif

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cuda_concatenate__matches_cpu_every_layout_and_dtype),
      cmocka_unit_test(test_cuda_concatenate__v2_long_slices_match_cpu),
      cmocka_unit_test(test_cuda_concatenate__conversions_exhaustive),
      cmocka_unit_test(test_cuda_concatenate__large_batches_and_staging_ring),
      cmocka_unit_test(test_cuda_concatenate__graph_capture_and_replay),
      cmocka_unit_test(test_cuda_concatenate__graph_arena_exhausted),
      cmocka_unit_test(test_cuda_concatenate__layer_copies_refused_while_capturing),
      cmocka_unit_test(test_cuda_concatenate__bad_device_page_id_is_async_error),
      cmocka_unit_test(test_cuda_concatenate__device_page_index_beyond_table),
      cmocka_unit_test(test_cuda_concatenate__every_device_check_reports_and_skips),
      cmocka_unit_test(test_cuda_concatenate__device_metadata_fuzz),
      cmocka_unit_test(test_cuda_concatenate__stream_handles),
      cmocka_unit_test(test_cuda_concatenate__host_errors_change_nothing),
      cmocka_unit_test(test_cuda_concatenate__cache_on_second_device),
  };
  return cmocka_run_group_tests_name("cuda_concatenate", tests, NULL, NULL);
}
