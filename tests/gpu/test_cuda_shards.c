/* Shards on CUDA devices (issue 15, SPEC.md §7.3): the union of the shards, placed round-robin
 * over two devices, equals the whole cache (written on the CPU: the bytes are the same on every
 * backend), with host metadata and with the metadata copied to each shard's device; the padding
 * rows of data-parallel metadata in device memory, for kvp_concatenate and kvp_attention; page ids
 * checked against the whole cache on the device; attention on KV-head and data-parallel shards; a
 * cache group over two devices.
 *
 * Every test skip()s when the build has no CUDA or the machine fewer than two CUDA devices (then
 * "kvpages: no CUDA device" is printed and ctest reports the test as skipped). The emulated
 * runtime (cuemu.test_cuda_shards) has two. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_support.h"
#include "shards.h"

#if KVP_HAS_CUDA

static void require_two_gpus(void) {
  int32_t count = 0;
  kvp_test_require_gpu();
  assert_kvp_ok(kvp_device_count(&count));
  if (count < 2) {
    printf("kvpages: no CUDA device (fewer than two)\n");
    skip();
  }
}

/* A device copy (on the current device) of the elements a host tensor view spans. */
static kvp_tensor tensor_to_device(const kvp_tensor *host, int32_t device) {
  const int64_t isz = host->dtype == KVP_DTYPE_F32 ? 4 : 2;
  int64_t last = 0;
  for (int d = 0; d < host->ndim; ++d) last += (host->shape[d] > 0 ? host->shape[d] - 1 : 0) * host->strides[d];
  kvp_tensor t = *host;
  t.data = kvp_gpu_upload(host->data, (size_t)((last + 1) * isz));
  t.device_type = KVP_DEVICE_CUDA;
  t.device_id = device;
  return t;
}

/* The union test's writer: key, value (and with `device_metadata`, the metadata) copied to the
 * shard's device, written with kvp_concatenate on its legacy stream, no error left behind. */
static void concatenate_on_device(const kvp_test_shard_placement *where, kvp_cache *shard, int32_t device,
                                  uint32_t layer, const kvp_tensor *key, const kvp_tensor *value,
                                  const kvp_metadata *md) {
  const int device_metadata = where->device_metadata;
  const int previous = kvp_gpu_current_device();
  CUDA_OK(cudaSetDevice(device));
  kvp_tensor k = tensor_to_device(key, device), v = tensor_to_device(value, device);
  kvp_gpu_metadata dmd;
  if (device_metadata) kvp_gpu_metadata_make(&dmd, md);
  assert_kvp_ok(kvp_concatenate(shard, layer, &k, &v, device_metadata ? dmd.md : md, NULL));
  CUDA_OK(cudaDeviceSynchronize());
  assert_int_equal(kvp_test_async_error(shard), KVP_OK);
  if (device_metadata) kvp_gpu_metadata_free(&dmd);
  CUDA_OK(cudaFree(k.data));
  CUDA_OK(cudaFree(v.data));
  CUDA_OK(cudaSetDevice(previous));
}

/* Every layout x dtype x H in {3, 4} x TP {1, 2, 4, 8} x DP {1, 2, 4} (the CPU unit test's matrix,
 * 2 steps each instead of 3) with host metadata; with device metadata the subset TP {1, 2, 8} x
 * DP {1, 2}, which keeps the emulated run short and still has KV-head shards (half heads at
 * either end, upcast and replicated splits included), data-parallel shards and both. */
static void run_union(int device_metadata) {
  const struct {
    kvp_layout version;
    int64_t head_dim;
  } layouts[] = {{KVP_LAYOUT_V2, 32}, {KVP_LAYOUT_V3, 32}, {KVP_LAYOUT_V3, 64}};
  const kvp_dtype dtypes[] = {KVP_DTYPE_F32, KVP_DTYPE_BF16, KVP_DTYPE_F8_E4M3FN};
  const int64_t heads[] = {4, 3}, all_tps[] = {1, 2, 4, 8}, all_dps[] = {1, 2, 4}, few_tps[] = {1, 2, 8},
                few_dps[] = {1, 2};
  const int64_t *tps = device_metadata ? few_tps : all_tps, *dps = device_metadata ? few_dps : all_dps;
  const size_t ntp = device_metadata ? 3 : 4, ndp = device_metadata ? 2 : 3;
  const kvp_test_shard_placement where = {2, device_metadata, concatenate_on_device};
  uint64_t seed = 1;
  for (size_t l = 0; l < 3; ++l)
    for (size_t d = 0; d < 3; ++d)
      for (size_t h = 0; h < 2; ++h)
        for (size_t t = 0; t < ntp; ++t)
          for (size_t p = 0; p < ndp; ++p) {
            const kvp_config c = kvp_test_sharded_config(layouts[l].version, dtypes[d], heads[h], layouts[l].head_dim,
                                                         tps[t], dps[p]);
            kvp_test_shard_union(&c, 2, seed++, &where);
          }
}

static void test_cuda_shards__union_host_metadata(void **state) {
  (void)state;
  require_two_gpus();
  run_union(0);
}

static void test_cuda_shards__union_device_metadata(void **state) {
  (void)state;
  require_two_gpus();
  run_union(1);
}

/* ------------------------------------------------------------------------------------------ */
/* Padding rows and page ranges with device-resident metadata                                  */

/* test_shards.c's padding-row example: v3 f32, one head of D = 128, 8-token pages, 8 pages over 2
 * data ranks. Rank 0 has a request on page 1 (2 tokens), rank 1 one on page 5 (1 token); the rows
 * come in one block of 2 per rank, each ending with a padding row (`blocks`), or compact. */
typedef struct padding_case {
  kvp_config cfg;
  int32_t pt[8], cl[4], qsl[5], dist[3];
  int32_t pt2[4], cl2[2], qsl2[3], dist2[3];
  kvp_metadata_desc blocks, compact;
} padding_case;

static void padding_case_init(padding_case *pc) {
  memset(pc, 0, sizeof *pc);
  pc->cfg = kvp_test_config_len(1, 1, 128, 8, 8, KVP_DTYPE_F32, KVP_LAYOUT_V3, 16);
  pc->cfg.data_parallel_size = 2;
  assert_kvp_ok(kvp_config_validate(&pc->cfg));
  const int32_t pt[8] = {1, 0, 0, 0, 5, 0, 0, 0}, cl[4] = {2, 0, 1, 0}, qsl[5] = {0, 2, 2, 3, 3}, dist[3] = {0, 0, 4};
  const int32_t pt2[4] = {1, 0, 5, 0}, cl2[2] = {2, 1}, qsl2[3] = {0, 2, 3}, dist2[3] = {0, 0, 2};
  memcpy(pc->pt, pt, sizeof pt);
  memcpy(pc->cl, cl, sizeof cl);
  memcpy(pc->qsl, qsl, sizeof qsl);
  memcpy(pc->dist, dist, sizeof dist);
  memcpy(pc->pt2, pt2, sizeof pt2);
  memcpy(pc->cl2, cl2, sizeof cl2);
  memcpy(pc->qsl2, qsl2, sizeof qsl2);
  memcpy(pc->dist2, dist2, sizeof dist2);
  kvp_metadata_desc d = KVP_METADATA_DESC_INIT;
  d.pages_tables = pc->pt;
  d.num_reqs = 4;
  d.pages_per_req = 2;
  d.context_lens = pc->cl;
  d.context_lens_len = 4;
  d.query_start_loc = pc->qsl;
  d.query_start_loc_len = 5;
  d.request_distribution = pc->dist;
  d.request_distribution_len = 3;
  pc->blocks = d;
  d.pages_tables = pc->pt2;
  d.num_reqs = 2;
  d.context_lens = pc->cl2;
  d.context_lens_len = 2;
  d.query_start_loc = pc->qsl2;
  d.query_start_loc_len = 3;
  d.request_distribution = pc->dist2;
  pc->compact = d;
}

/* Host metadata from a description (kvp_metadata_destroy). */
static kvp_metadata *host_metadata(const kvp_metadata_desc *d) {
  kvp_metadata *md = NULL;
  assert_kvp_ok(kvp_metadata_create(d, &md));
  return md;
}

/* A device copy, on `device`, of the metadata a description makes (kvp_gpu_metadata_free). */
static kvp_gpu_metadata device_metadata(const kvp_metadata_desc *d, int32_t device) {
  kvp_metadata *host = host_metadata(d);
  kvp_gpu_metadata dmd;
  CUDA_OK(cudaSetDevice(device));
  kvp_gpu_metadata_make(&dmd, host);
  CUDA_OK(cudaSetDevice(0));
  assert_kvp_ok(kvp_metadata_destroy(host));
  return dmd;
}

static unsigned char *layer_of(const kvp_cache *c) {
  const size_t n = kvp_test_layer_bytes(c);
  unsigned char *b = malloc(n);
  assert_non_null(b);
  assert_kvp_ok(kvp_cache_read_layer(c, 0, b, n, NULL));
  return b;
}

/* The async error of a cache on `device` after its work: `want`, with a message naming `text`;
 * cleared after. */
static void expect_async_error(kvp_cache *c, int32_t device, kvp_status want, const char *text) {
  CUDA_OK(cudaSetDevice(device));
  CUDA_OK(cudaDeviceSynchronize());
  CUDA_OK(cudaSetDevice(0));
  assert_int_equal(kvp_test_async_error(c), want);
  if (want != KVP_OK && strstr(kvp_last_error_message(), text) == NULL)
    fail_msg("async error message '%s' does not say '%s'", kvp_last_error_message(), text);
  assert_kvp_ok(kvp_cache_clear_async_error(c));
}

/* kvp_concatenate with the padding rows in device memory: a whole CUDA cache and its two data
 * ranks (one per device) write what the compact rows write on the CPU; a padding row with a
 * context is an asynchronous error naming it. */
static void test_cuda_shards__padding_rows_concatenate(void **state) {
  (void)state;
  require_two_gpus();
  padding_case pc;
  padding_case_init(&pc);
  float k[3 * 128], v[3 * 128];
  for (int i = 0; i < 3 * 128; ++i) {
    k[i] = (float)(i % 7) - 3.0f;
    v[i] = (float)(i % 5) + 0.5f;
  }
  kvp_tensor kh = kvp_test_tensor(k, KVP_DTYPE_F32, 3, 1, 128, KVP_DEVICE_CPU);
  kvp_tensor vh = kvp_test_tensor(v, KVP_DTYPE_F32, 3, 1, 128, KVP_DEVICE_CPU);
  kvp_cache *cpu = kvp_test_cache_on(&pc.cfg, KVP_DEVICE_CPU, 0);
  kvp_metadata *compact = host_metadata(&pc.compact);
  assert_kvp_ok(kvp_concatenate(cpu, 0, &kh, &vh, compact, NULL));
  unsigned char *want = layer_of(cpu);
  const size_t n = kvp_test_layer_bytes(cpu);

  kvp_cache *whole = kvp_test_cache_on(&pc.cfg, KVP_DEVICE_CUDA, 0), *rank[2];
  for (int32_t r = 0; r < 2; ++r) {
    kvp_cache_options o;
    assert_kvp_ok(kvp_cache_options_init(&o, sizeof o));
    o.device_type = KVP_DEVICE_CUDA;
    o.device_id = r;
    assert_kvp_ok(kvp_cache_create_shard(&pc.cfg, 0, r, &o, &rank[r]));
  }
  kvp_tensor kd[2], vd[2];
  kvp_gpu_metadata dmd[2];
  for (int32_t dev = 0; dev < 2; ++dev) {
    CUDA_OK(cudaSetDevice(dev));
    kd[dev] = tensor_to_device(&kh, dev);
    vd[dev] = tensor_to_device(&vh, dev);
    dmd[dev] = device_metadata(&pc.blocks, dev);
  }
  assert_kvp_ok(kvp_concatenate(whole, 0, &kd[0], &vd[0], dmd[0].md, NULL));
  for (int32_t r = 0; r < 2; ++r) assert_kvp_ok(kvp_concatenate(rank[r], 0, &kd[r], &vd[r], dmd[r].md, NULL));
  expect_async_error(whole, 0, KVP_OK, "");
  unsigned char *got = layer_of(whole);
  assert_memory_equal(got, want, n);
  free(got);
  for (int32_t r = 0; r < 2; ++r) {
    expect_async_error(rank[r], r, KVP_OK, "");
    got = layer_of(rank[r]);
    assert_memory_equal(got, want + (size_t)r * (n / 2), n / 2);  /* rank r holds pages [4r, 4r + 4) */
    free(got);
  }

  /* A padding row with a context: flagged on the device, by every rank. */
  pc.cl[1] = 3;
  kvp_gpu_metadata bad = device_metadata(&pc.blocks, 1);
  assert_kvp_ok(kvp_concatenate(rank[1], 0, &kd[1], &vd[1], bad.md, NULL));
  expect_async_error(rank[1], 1, KVP_ERR_INVALID_ARGUMENT, "request 1 is a padding row");
  kvp_gpu_metadata_free(&bad);

  for (int32_t dev = 0; dev < 2; ++dev) {
    CUDA_OK(cudaSetDevice(dev));
    kvp_gpu_metadata_free(&dmd[dev]);
    CUDA_OK(cudaFree(kd[dev].data));
    CUDA_OK(cudaFree(vd[dev].data));
    assert_kvp_ok(kvp_cache_destroy(rank[dev]));
  }
  CUDA_OK(cudaSetDevice(0));
  free(want);
  assert_kvp_ok(kvp_metadata_destroy(compact));
  assert_kvp_ok(kvp_cache_destroy(whole));
  assert_kvp_ok(kvp_cache_destroy(cpu));
}

/* Page ids in device memory name the whole cache's pages: rank 1 checks them against all 8 (a
 * page beyond is an error, and nothing is written), and skips rank 0's pages without one. */
static void test_cuda_shards__device_page_ranges(void **state) {
  (void)state;
  require_two_gpus();
  padding_case pc;
  padding_case_init(&pc);
  float k[3 * 128] = {1.0f}, v[3 * 128] = {2.0f};
  kvp_tensor kh = kvp_test_tensor(k, KVP_DTYPE_F32, 3, 1, 128, KVP_DEVICE_CPU);
  kvp_tensor vh = kvp_test_tensor(v, KVP_DTYPE_F32, 3, 1, 128, KVP_DEVICE_CPU);
  kvp_cache_options o;
  assert_kvp_ok(kvp_cache_options_init(&o, sizeof o));
  o.device_type = KVP_DEVICE_CUDA;
  o.device_id = 1;
  kvp_cache *rank1 = NULL;
  assert_kvp_ok(kvp_cache_create_shard(&pc.cfg, 0, 1, &o, &rank1));
  CUDA_OK(cudaSetDevice(1));
  kvp_tensor kd = tensor_to_device(&kh, 1), vd = tensor_to_device(&vh, 1);
  CUDA_OK(cudaSetDevice(0));
  const size_t n = kvp_test_layer_bytes(rank1);
  unsigned char *zero = calloc(1, n);

  pc.pt2[2] = 8;  /* rank 1's request on page 8: beyond the whole cache */
  kvp_gpu_metadata dmd = device_metadata(&pc.compact, 1);
  assert_kvp_ok(kvp_concatenate(rank1, 0, &kd, &vd, dmd.md, NULL));
  expect_async_error(rank1, 1, KVP_ERR_INVALID_ARGUMENT, "page id 8 at entry 2 is outside the cache's 8 pages");
  unsigned char *got = layer_of(rank1);
  assert_memory_equal(got, zero, n);
  free(got);
  kvp_gpu_metadata_free(&dmd);

  pc.pt2[2] = 3;  /* both requests on rank 0's pages: rank 1 writes nothing */
  dmd = device_metadata(&pc.compact, 1);
  assert_kvp_ok(kvp_concatenate(rank1, 0, &kd, &vd, dmd.md, NULL));
  expect_async_error(rank1, 1, KVP_OK, "");
  got = layer_of(rank1);
  assert_memory_equal(got, zero, n);
  free(got);
  kvp_gpu_metadata_free(&dmd);

  /* v2 slots are global too: slots 30 .. 33 run from rank 0's last page into rank 1's first two
   * slots (local 0, 1), slot 64 is beyond the cache. */
  kvp_config v2 = kvp_test_config_len(1, 1, 4, 8, 8, KVP_DTYPE_F32, KVP_LAYOUT_V2, 16);
  v2.data_parallel_size = 2;
  assert_kvp_ok(kvp_config_validate(&v2));
  kvp_cache *v2rank1 = NULL;
  assert_kvp_ok(kvp_cache_create_shard(&v2, 0, 1, &o, &v2rank1));
  int32_t sm[6] = {30, 64, 0, 2, 4, 1}, nv = 2;
  kvp_metadata *host = kvp_test_v2_metadata(sm, 2, &nv);
  CUDA_OK(cudaSetDevice(1));
  kvp_gpu_metadata_make(&dmd, host);
  CUDA_OK(cudaSetDevice(0));
  float k4[5 * 4], v4[5 * 4];
  for (int i = 0; i < 20; ++i) k4[i] = v4[i] = (float)(i / 4 + 1);  /* token t holds t + 1 */
  kvp_tensor k4h = kvp_test_tensor(k4, KVP_DTYPE_F32, 5, 1, 4, KVP_DEVICE_CPU);
  kvp_tensor v4h = kvp_test_tensor(v4, KVP_DTYPE_F32, 5, 1, 4, KVP_DEVICE_CPU);
  CUDA_OK(cudaSetDevice(1));
  kvp_tensor k4d = tensor_to_device(&k4h, 1), v4d = tensor_to_device(&v4h, 1);
  CUDA_OK(cudaSetDevice(0));
  assert_kvp_ok(kvp_concatenate(v2rank1, 0, &k4d, &v4d, dmd.md, NULL));
  expect_async_error(v2rank1, 1, KVP_ERR_INVALID_ARGUMENT, "writes outside the cache's 64 slots");
  const size_t n2 = kvp_test_layer_bytes(v2rank1);
  float *slots = (float *)layer_of(v2rank1);  /* [32 slots][K 4 lanes | V 4 lanes] */
  for (size_t s = 0; s < n2 / (8 * sizeof(float)); ++s)
    assert_true(slots[s * 8] == (s == 0 ? 3.0f : s == 1 ? 4.0f : 0.0f));
  free(slots);
  kvp_gpu_metadata_free(&dmd);
  assert_kvp_ok(kvp_metadata_destroy(host));

  CUDA_OK(cudaSetDevice(1));
  CUDA_OK(cudaFree(kd.data));
  CUDA_OK(cudaFree(vd.data));
  CUDA_OK(cudaFree(k4d.data));
  CUDA_OK(cudaFree(v4d.data));
  CUDA_OK(cudaSetDevice(0));
  free(zero);
  assert_kvp_ok(kvp_cache_destroy(v2rank1));
  assert_kvp_ok(kvp_cache_destroy(rank1));
}

/* kvp_attention on a whole CUDA cache of a data-parallel config: the padding rows in device
 * memory give the outputs the compact host rows give, and a padding row with a context is an
 * asynchronous error naming it. */
static void test_cuda_shards__padding_rows_attention(void **state) {
  (void)state;
  require_two_gpus();
  padding_case pc;
  padding_case_init(&pc);
  const int64_t T = 3, D = 128;
  float q[3 * 128], k[3 * 128], v[3 * 128];
  uint64_t rng = 0x5AD;
  for (int i = 0; i < 3 * 128; ++i) {
    q[i] = (float)kvp_test_rand_range(&rng, -32, 32) / 16.0f;
    k[i] = (float)kvp_test_rand_range(&rng, -32, 32) / 16.0f;
    v[i] = (float)kvp_test_rand_range(&rng, -32, 32) / 16.0f;
  }
  kvp_tensor qh = kvp_test_tensor(q, KVP_DTYPE_F32, T, 1, D, KVP_DEVICE_CPU);
  kvp_tensor kh = kvp_test_tensor(k, KVP_DTYPE_F32, T, 1, D, KVP_DEVICE_CPU);
  kvp_tensor vh = kvp_test_tensor(v, KVP_DTYPE_F32, T, 1, D, KVP_DEVICE_CPU);
  kvp_cache *gpu = kvp_test_cache_on(&pc.cfg, KVP_DEVICE_CUDA, 0);
  kvp_tensor qd = tensor_to_device(&qh, 0), kd = tensor_to_device(&kh, 0), vd = tensor_to_device(&vh, 0);
  kvp_tensor out[2];
  float got[2][3 * 128];
  for (int i = 0; i < 2; ++i) out[i] = tensor_to_device(&qh, 0);
  kvp_metadata *compact = host_metadata(&pc.compact);
  kvp_gpu_metadata blocks = device_metadata(&pc.blocks, 0);
  assert_kvp_ok(kvp_concatenate(gpu, 0, &kd, &vd, compact, NULL));
  assert_kvp_ok(kvp_attention(gpu, 0, &qd, NULL, NULL, compact, NULL, &out[0], NULL));
  assert_kvp_ok(kvp_attention(gpu, 0, &qd, NULL, NULL, blocks.md, NULL, &out[1], NULL));
  expect_async_error(gpu, 0, KVP_OK, "");
  for (int i = 0; i < 2; ++i) CUDA_OK(cudaMemcpy(got[i], out[i].data, sizeof got[i], cudaMemcpyDeviceToHost));
  assert_memory_equal(got[0], got[1], sizeof got[0]);
  size_t nonzero = 0;
  for (int i = 0; i < 3 * 128; ++i) nonzero += got[0][i] != 0.0f;
  assert_true(nonzero > 0);
  kvp_gpu_metadata_free(&blocks);

  pc.cl[3] = 2;
  blocks = device_metadata(&pc.blocks, 0);
  assert_kvp_ok(kvp_attention(gpu, 0, &qd, NULL, NULL, blocks.md, NULL, &out[1], NULL));
  expect_async_error(gpu, 0, KVP_ERR_INVALID_ARGUMENT, "request 3 is a padding row");
  kvp_gpu_metadata_free(&blocks);

  CUDA_OK(cudaFree(qd.data));
  CUDA_OK(cudaFree(kd.data));
  CUDA_OK(cudaFree(vd.data));
  for (int i = 0; i < 2; ++i) CUDA_OK(cudaFree(out[i].data));
  assert_kvp_ok(kvp_metadata_destroy(compact));
  assert_kvp_ok(kvp_cache_destroy(gpu));
}

/* kvp_attention on the shards of a TP 2 x DP 2 split, round-robin over two devices (a prefill then
 * a decode on each data rank, fused writes of each shard's own K/V heads, 2 query heads per KV
 * head): each KV-head shard gives the whole cache's output for its heads, each data rank for its
 * block's rows and zeros elsewhere, so the sum over data ranks equals the whole cache on the CPU. */
static void test_cuda_shards__attention_on_shards(void **state) {
  (void)state;
  require_two_gpus();
  const kvp_config c = kvp_test_sharded_config(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 4, 128, 2, 2);
  enum { H = 4, D = 128, REP = 2, HQ = REP * H, T_MAX = 15, N = 4 };
  kvp_cache *whole = NULL, *shards[N];
  assert_kvp_ok(kvp_cache_create(&c, NULL, &whole));
  for (int32_t i = 0; i < N; ++i) {
    kvp_cache_options co = KVP_CACHE_OPTIONS_INIT;
    co.device_type = KVP_DEVICE_CUDA;
    co.device_id = i % 2;
    assert_kvp_ok(kvp_cache_create_shard(&c, i / 2, i % 2, &co, &shards[i]));
  }
  static float q[T_MAX * HQ * D], k[T_MAX * H * D], v[T_MAX * H * D], want[T_MAX * HQ * D], got[T_MAX * HQ * D],
      sum[T_MAX * HQ * D];
  static int32_t p0[] = {1, 2}, p1[] = {11};  /* data rank 0's pages, data rank 1's */
  uint64_t rng = 0xA77;
  for (int step = 0; step < 2; ++step) {
    kvp_batch_request reqs[2] = {{0, 10, p0, 2}, {0, 5, p1, 1}};
    if (step == 1) reqs[0] = (kvp_batch_request){10, 1, p0, 2}, reqs[1] = (kvp_batch_request){5, 1, p1, 1};
    const int64_t T = reqs[0].num_scheduled + reqs[1].num_scheduled;
    kvp_batch_options bo = KVP_BATCH_OPTIONS_INIT;
    bo.flags = KVP_BATCH_FLAG_REQUEST_ORDER;
    kvp_metadata *md = NULL;
    assert_kvp_ok(kvp_metadata_build(&c, reqs, 2, &bo, NULL, &md));
    for (int64_t e = 0; e < T * HQ * D; ++e) q[e] = (float)kvp_test_rand_range(&rng, -32, 32) / 32.0f;
    for (int64_t e = 0; e < T * H * D; ++e) {
      k[e] = (float)kvp_test_rand_range(&rng, -32, 32) / 32.0f;
      v[e] = (float)kvp_test_rand_range(&rng, -32, 32) / 32.0f;
    }
    kvp_tensor qt = kvp_test_tensor(q, KVP_DTYPE_F32, T, HQ, D, KVP_DEVICE_CPU);
    kvp_tensor kt = kvp_test_tensor(k, KVP_DTYPE_F32, T, H, D, KVP_DEVICE_CPU);
    kvp_tensor vt = kvp_test_tensor(v, KVP_DTYPE_F32, T, H, D, KVP_DEVICE_CPU);
    kvp_tensor wt = kvp_test_tensor(want, KVP_DTYPE_F32, T, HQ, D, KVP_DEVICE_CPU);
    assert_kvp_ok(kvp_attention(whole, 0, &qt, &kt, &vt, md, NULL, &wt, NULL));
    memset(sum, 0, sizeof sum);
    for (int32_t i = 0; i < N; ++i) {
      const int32_t dev = i % 2;
      const int64_t h0 = 2 * (i / 2), nh = 2;  /* each tensor rank: 2 KV heads, 4 query heads */
      CUDA_OK(cudaSetDevice(dev));
      kvp_tensor qs = qt, ks = kt, vs = vt, os = kvp_test_tensor(got, KVP_DTYPE_F32, T, REP * nh, D, KVP_DEVICE_CPU);
      qs.data = q + h0 * REP * D;
      ks.data = k + h0 * D;
      vs.data = v + h0 * D;
      qs.shape[1] = REP * nh;
      ks.shape[1] = vs.shape[1] = nh;
      memset(got, 0x5C, sizeof got);  /* every output row must be written */
      kvp_tensor qd = tensor_to_device(&qs, dev), kd = tensor_to_device(&ks, dev), vd = tensor_to_device(&vs, dev);
      kvp_tensor od = tensor_to_device(&os, dev);
      assert_kvp_ok(kvp_attention(shards[i], 0, &qd, &kd, &vd, md, NULL, &od, NULL));
      CUDA_OK(cudaMemcpy(got, od.data, sizeof(float) * (size_t)(T * REP * nh * D), cudaMemcpyDeviceToHost));
      assert_int_equal(kvp_test_async_error(shards[i]), KVP_OK);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < REP * nh; ++h)
          for (int64_t d = 0; d < D; ++d) sum[(t * HQ + h0 * REP + h) * D + d] += got[(t * REP * nh + h) * D + d];
      CUDA_OK(cudaFree(qd.data));
      CUDA_OK(cudaFree(kd.data));
      CUDA_OK(cudaFree(vd.data));
      CUDA_OK(cudaFree(od.data));
    }
    for (int64_t e = 0; e < T * HQ * D; ++e)
      if (!(fabsf(want[e] - sum[e]) <= 1e-4f * (1.0f + fabsf(want[e]))))
        fail_msg("step %d: token %lld head %lld lane %lld: %g over the shards, whole cache %g", step,
                 (long long)(e / (HQ * D)), (long long)(e / D % HQ), (long long)(e % D), sum[e], want[e]);
    CUDA_OK(cudaSetDevice(0));
    assert_kvp_ok(kvp_metadata_destroy(md));
  }
  for (int i = 0; i < N; ++i) assert_kvp_ok(kvp_cache_destroy(shards[i]));
  assert_kvp_ok(kvp_cache_destroy(whole));
}

/* A cache group over two devices (TP 2 x DP 2: shards 0, 2 on device 0, 1, 3 on device 1), each
 * shard's keys and values on its device, one stream per device, no host wait in between: the
 * union of its shards equals the whole cache on the CPU. */
static void test_cuda_shards__group_on_two_devices(void **state) {
  (void)state;
  require_two_gpus();
  const kvp_config c = kvp_test_sharded_config(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 4, 128, 2, 2);
  enum { H = 4, D = 128, N = 4, T = 12 };
  kvp_cache_options co = KVP_CACHE_OPTIONS_INIT;
  co.device_type = KVP_DEVICE_CUDA;
  const int32_t devices[N] = {0, 1, 0, 1};
  kvp_cache_group *g = NULL;
  kvp_cache *whole = NULL, *shards[N];
  assert_kvp_ok(kvp_cache_group_create(&c, devices, N, &co, &g));
  assert_kvp_ok(kvp_cache_create(&c, NULL, &whole));
  static int32_t p0[] = {1, 2}, p1[] = {9};  /* one request on each data rank's pages */
  kvp_batch_request reqs[2] = {{0, 10, p0, 2}, {0, 2, p1, 1}};
  kvp_batch_options bo = KVP_BATCH_OPTIONS_INIT;
  bo.flags = KVP_BATCH_FLAG_REQUEST_ORDER;
  kvp_metadata *md = NULL;
  assert_kvp_ok(kvp_metadata_build(&c, reqs, 2, &bo, NULL, &md));
  static float k[T * H * D], v[T * H * D];
  uint64_t rng = 0x6A0;
  for (int e = 0; e < T * H * D; ++e) {
    k[e] = (float)kvp_test_rand_range(&rng, -32, 32) / 16.0f;
    v[e] = (float)kvp_test_rand_range(&rng, -32, 32) / 16.0f;
  }
  kvp_tensor kh = kvp_test_tensor(k, KVP_DTYPE_F32, T, H, D, KVP_DEVICE_CPU);
  kvp_tensor vh = kvp_test_tensor(v, KVP_DTYPE_F32, T, H, D, KVP_DEVICE_CPU);
  assert_kvp_ok(kvp_concatenate(whole, 0, &kh, &vh, md, NULL));
  kvp_tensor keys[N], values[N];
  kvp_stream streams[N];
  cudaStream_t made[2];
  for (int d = 0; d < 2; ++d) {
    CUDA_OK(cudaSetDevice(d));
    CUDA_OK(cudaStreamCreateWithFlags(&made[d], cudaStreamNonBlocking));
  }
  for (int i = 0; i < N; ++i) {
    CUDA_OK(cudaSetDevice(devices[i]));
    keys[i] = tensor_to_device(&kh, devices[i]);
    values[i] = tensor_to_device(&vh, devices[i]);
    streams[i] = (kvp_stream)made[devices[i]];
    assert_kvp_ok(kvp_cache_group_get_shard(g, i / 2, i % 2, &shards[i]));
  }
  CUDA_OK(cudaSetDevice(0));
  assert_kvp_ok(kvp_cache_group_concatenate(g, 0, keys, values, N, md, streams));
  for (int d = 0; d < 2; ++d) {
    CUDA_OK(cudaSetDevice(d));
    CUDA_OK(cudaStreamSynchronize(made[d]));
  }
  kvp_layout_info wl = {.struct_size = sizeof wl};
  assert_kvp_ok(kvp_cache_get_layout(whole, &wl));
  size_t size;
  unsigned char *w = kvp_test_layer_copy(whole, 0, &size);
  for (int i = 0; i < N; ++i) {
    assert_int_equal(kvp_test_async_error(shards[i]), KVP_OK);
    kvp_test_assert_slice(w, &wl, shards[i], 0);
  }
  free(w);
  for (int i = 0; i < N; ++i) {
    CUDA_OK(cudaSetDevice(devices[i]));
    CUDA_OK(cudaFree(keys[i].data));
    CUDA_OK(cudaFree(values[i].data));
  }
  for (int d = 0; d < 2; ++d) {
    CUDA_OK(cudaSetDevice(d));
    CUDA_OK(cudaStreamDestroy(made[d]));
  }
  CUDA_OK(cudaSetDevice(0));
  assert_kvp_ok(kvp_metadata_destroy(md));
  assert_kvp_ok(kvp_cache_group_destroy(g));
  assert_kvp_ok(kvp_cache_destroy(whole));
}

#else

static void test_cuda_shards__group_on_two_devices(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_shards__attention_on_shards(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_shards__union_host_metadata(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_shards__union_device_metadata(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_shards__padding_rows_concatenate(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_shards__device_page_ranges(void **state) { (void)state; kvp_test_require_gpu(); }
static void test_cuda_shards__padding_rows_attention(void **state) { (void)state; kvp_test_require_gpu(); }

#endif

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cuda_shards__union_host_metadata),
      cmocka_unit_test(test_cuda_shards__union_device_metadata),
      cmocka_unit_test(test_cuda_shards__padding_rows_concatenate),
      cmocka_unit_test(test_cuda_shards__device_page_ranges),
      cmocka_unit_test(test_cuda_shards__padding_rows_attention),
      cmocka_unit_test(test_cuda_shards__attention_on_shards),
      cmocka_unit_test(test_cuda_shards__group_on_two_devices),
  };
  return cmocka_run_group_tests_name("cuda_shards", tests, NULL, NULL);
}
