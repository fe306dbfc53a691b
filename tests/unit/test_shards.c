/* Shards of a sharded config (SPEC.md §7.3): their geometry, writes with global metadata, the
 * union of the shards against the whole cache, the padding rows of data-parallel metadata, bad
 * input and what shards do not support yet. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "shards.h"
#include "support.h"

static kvp_shard_info config_shard(const kvp_config *c, int32_t tp, int32_t dp) {
  kvp_shard_info si = KVP_SHARD_INFO_INIT;
  assert_kvp_ok(kvp_config_get_shard(c, tp, dp, &si));
  return si;
}

static void assert_heads(const kvp_shard_info *si, int64_t slot0, int64_t slot1, int64_t k0, int64_t k1, int64_t v0,
                         int64_t v1, int64_t h0, int64_t h1) {
  assert_int_equal(si->slot_begin, slot0);
  assert_int_equal(si->slot_end, slot1);
  assert_int_equal(si->key_head_begin, k0);
  assert_int_equal(si->key_head_end, k1);
  assert_int_equal(si->value_head_begin, v0);
  assert_int_equal(si->value_head_end, v1);
  assert_int_equal(si->head_begin, h0);
  assert_int_equal(si->head_end, h1);
}

/* SPEC.md §7.3's head splits: H=8 bf16 over 4 keeps bf16 (2 groups of one head each per rank);
 * H=4 fp8 over 4 upcasts to bf16 (one head per rank); H=1 over 1024 replicates (one slice). */
static void test_spec_head_splits(void **state) {
  (void)state;
  kvp_config keep = kvp_test_sharded_config(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 8, 128, 4, 1);
  assert_int_equal(keep.kv_head_shards, 4);
  kvp_shard_info si = config_shard(&keep, 1, 0);
  assert_int_equal(si.tp_rank, 1);
  assert_int_equal(si.tp_size, 4);
  assert_heads(&si, 4, 8, 2, 4, 2, 4, 2, 4);
  assert_int_equal(si.page_begin, 0);
  assert_int_equal(si.page_end, keep.num_pages);

  kvp_config up = kvp_test_sharded_config(KVP_LAYOUT_V3, KVP_DTYPE_F8_E4M3FN, 4, 128, 4, 1);
  assert_int_equal(up.kvdtype, KVP_DTYPE_BF16);
  assert_int_equal(up.kv_head_shards, 4);
  si = config_shard(&up, 3, 0);
  assert_heads(&si, 6, 8, 3, 4, 3, 4, 3, 4);

  kvp_config rep = kvp_test_sharded_config(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 1, 128, 1024, 1);
  assert_int_equal(rep.kv_head_shards, 1);
  si = config_shard(&rep, 0, 0);
  assert_int_equal(si.tp_size, 1);
  assert_heads(&si, 0, 2, 0, 1, 0, 1, 0, 1);
  assert_kvp_status(kvp_config_get_shard(&rep, 1, 0, &si), KVP_ERR_INVALID_ARGUMENT, "tp_rank 1 is out of range [0, 1)");
}

/* A rank that holds half a head at either end (v2 and v3 f32 with 3 heads over 2), the padding of
 * fp8 with an odd head count, head_dim 64, and the page blocks of data ranks. */
static void test_shard_geometry(void **state) {
  (void)state;
  kvp_config v2 = kvp_test_sharded_config(KVP_LAYOUT_V2, KVP_DTYPE_BF16, 3, 32, 2, 1);
  kvp_shard_info a = config_shard(&v2, 0, 0), b = config_shard(&v2, 1, 0);
  assert_heads(&a, 0, 3, 0, 2, 0, 1, 0, 2);  /* K0 V0 K1 */
  assert_heads(&b, 3, 6, 2, 3, 1, 3, 1, 3);  /* V1 K2 V2 */

  kvp_config f8 = kvp_test_sharded_config(KVP_LAYOUT_V3, KVP_DTYPE_F8_E4M3FN, 3, 32, 2, 1);
  assert_int_equal(f8.kvdtype, KVP_DTYPE_F8_E4M3FN);
  b = config_shard(&f8, 1, 0);
  assert_heads(&b, 4, 8, 2, 3, 2, 3, 2, 3);  /* K2 V2 and two zero entries */

  kvp_config h64 = kvp_test_sharded_config(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 4, 64, 2, 1);
  b = config_shard(&h64, 1, 0);
  assert_heads(&b, 2, 4, 2, 4, 2, 4, 2, 4);

  kvp_config dp = kvp_test_sharded_config(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 4, 128, 2, 4);
  assert_int_equal(dp.num_pages, 32);
  for (int32_t r = 0; r < 4; ++r) {
    kvp_shard_info s = config_shard(&dp, 1, r);
    assert_int_equal(s.dp_rank, r);
    assert_int_equal(s.dp_size, 4);
    assert_int_equal(s.page_begin, 8 * r);
    assert_int_equal(s.page_end, 8 * r + 8);
    assert_int_equal(s.global_pages, 32);
  }
  /* The cache's layout is the local one; its config the whole one. */
  kvp_cache *c = NULL;
  assert_kvp_ok(kvp_cache_create_shard(&dp, 1, 2, NULL, &c));
  kvp_layout_info li = {.struct_size = sizeof li};
  assert_kvp_ok(kvp_cache_get_layout(c, &li));
  assert_int_equal(li.shape[0], 8);
  assert_int_equal(li.storage_num_kv_groups, 2);
  assert_int_equal(li.storage_num_combined_kv_heads, 4);
  kvp_config got = KVP_CONFIG_INIT;
  assert_kvp_ok(kvp_cache_get_config(c, &got));
  assert_int_equal(got.num_pages, 32);
  kvp_shard_info s = KVP_SHARD_INFO_INIT;
  assert_kvp_ok(kvp_cache_get_shard(c, &s));
  assert_int_equal(s.tp_rank, 1);
  assert_int_equal(s.dp_rank, 2);
  assert_int_equal(s.page_begin, 16);
  /* Views: keys of heads 2 and 3, in local entries 0 and 2. */
  kvp_tensor keys, pages;
  assert_kvp_ok(kvp_cache_get_view(c, 0, KVP_VIEW_KEYS, &keys));
  assert_kvp_ok(kvp_cache_get_view(c, 0, KVP_VIEW_PAGES, &pages));
  assert_int_equal(keys.shape[0], 8);
  assert_int_equal(keys.shape[2], 2);
  assert_ptr_equal(keys.data, pages.data);
  assert_kvp_ok(kvp_cache_destroy(c));
  /* A whole cache describes itself as the only slice. */
  assert_kvp_ok(kvp_cache_create(&dp, NULL, &c));
  assert_kvp_ok(kvp_cache_get_shard(c, &s));
  assert_int_equal(s.tp_size, 1);
  assert_int_equal(s.dp_size, 1);
  assert_heads(&s, 0, 8, 0, 4, 0, 4, 0, 4);
  assert_int_equal(s.page_end, 32);
  assert_kvp_ok(kvp_cache_destroy(c));
}

/* Every layout x dtype x head split x data ranks: the union of the shards is the whole cache. */
static void test_union_of_shards(void **state) {
  (void)state;
  const struct {
    kvp_layout version;
    int64_t head_dim;
  } layouts[] = {{KVP_LAYOUT_V2, 32}, {KVP_LAYOUT_V3, 32}, {KVP_LAYOUT_V3, 64}};
  const kvp_dtype dtypes[] = {KVP_DTYPE_F32, KVP_DTYPE_BF16, KVP_DTYPE_F8_E4M3FN};
  const int64_t heads[] = {4, 3}, tps[] = {1, 2, 4, 8}, dps[] = {1, 2, 4};
  int kept = 0, upcast = 0, replicated = 0, half_heads = 0;
  uint64_t seed = 1;
  for (size_t l = 0; l < 3; ++l)
    for (size_t d = 0; d < 3; ++d)
      for (size_t h = 0; h < 2; ++h)
        for (size_t t = 0; t < 4; ++t)
          for (size_t p = 0; p < 3; ++p) {
            const kvp_config c = kvp_test_sharded_config(layouts[l].version, dtypes[d], heads[h], layouts[l].head_dim,
                                                         tps[t], dps[p]);
            if (tps[t] > 1) {
              kept += c.kv_head_shards == tps[t] && c.kvdtype == dtypes[d];
              upcast += c.kvdtype != dtypes[d];
              replicated += c.kv_head_shards == 1;
            }
            if (c.kv_head_shards > 1 && config_shard(&c, 0, 0).slot_end % 2 == 1 && layouts[l].head_dim != 64)
              ++half_heads;
            kvp_test_shard_union(&c, 3, seed++, NULL);
          }
  /* The matrix covers each resolution and the half-head slices. */
  assert_true(kept > 0);
  assert_true(upcast > 0);
  assert_true(replicated > 0);
  assert_true(half_heads > 0);
}

/* Reads local slot `slot` of a CPU shard's layer 0 (v2, f32 cache, one head of D = 4): K lane 0. */
static float v2_key_lane0(const kvp_cache *c, int64_t slot) {
  kvp_tensor keys;
  assert_kvp_ok(kvp_cache_get_view(c, 0, KVP_VIEW_KEYS, &keys));
  return ((const float *)keys.data)[slot * keys.strides[1]];
}

/* SPEC.md §7.3's v2 slice rewrite: slices dst [0, 5, 8, 13], src [0, 1, 2, 4], len [1, 1, 2, 1]
 * with 4-token pages over 2 data ranks of 2 pages: rank 1 writes only (dst 0, src 2, len 2) and
 * (dst 5, src 4, len 1) in its own slots, rank 0 the rest. */
static void test_v2_slice_rewrite(void **state) {
  (void)state;
  kvp_config c = kvp_test_config_len(1, 1, 4, 4, 4, KVP_DTYPE_F32, KVP_LAYOUT_V2, 16);
  c.data_parallel_size = 2;
  assert_kvp_ok(kvp_config_validate(&c));
  kvp_cache *r0 = NULL, *r1 = NULL;
  assert_kvp_ok(kvp_cache_create_shard(&c, 0, 0, NULL, &r0));
  assert_kvp_ok(kvp_cache_create_shard(&c, 0, 1, NULL, &r1));
  int32_t sm[12] = {0, 5, 8, 13, 0, 1, 2, 4, 1, 1, 2, 1}, nv = 4;
  kvp_metadata *md = kvp_test_v2_metadata(sm, 4, &nv);
  float k[5 * 4], v[5 * 4];
  for (int i = 0; i < 20; ++i) k[i] = v[i] = (float)(i / 4 + 1);  /* token t holds t + 1 */
  kvp_tensor kt = kvp_test_tensor(k, KVP_DTYPE_F32, 5, 1, 4, KVP_DEVICE_CPU);
  kvp_tensor vt = kvp_test_tensor(v, KVP_DTYPE_F32, 5, 1, 4, KVP_DEVICE_CPU);
  assert_kvp_ok(kvp_concatenate(r0, 0, &kt, &vt, md, NULL));
  assert_kvp_ok(kvp_concatenate(r1, 0, &kt, &vt, md, NULL));
  const float want1[8] = {3, 4, 0, 0, 0, 5, 0, 0}, want0[8] = {1, 0, 0, 0, 0, 2, 0, 0};
  for (int64_t s = 0; s < 8; ++s) {
    assert_true(v2_key_lane0(r1, s) == want1[s]);
    assert_true(v2_key_lane0(r0, s) == want0[s]);
  }
  assert_kvp_ok(kvp_metadata_destroy(md));
  /* A v2 slice may run across pages (per-token semantics), here across the ranks' boundary:
   * slots 6, 7 are rank 0's, 8, 9 rank 1's local slots 0, 1. */
  int32_t across[3] = {6, 1, 4}, one = 1;
  md = kvp_test_v2_metadata(across, 1, &one);
  assert_kvp_ok(kvp_concatenate(r0, 0, &kt, &vt, md, NULL));
  assert_kvp_ok(kvp_concatenate(r1, 0, &kt, &vt, md, NULL));
  assert_true(v2_key_lane0(r0, 6) == 2 && v2_key_lane0(r0, 7) == 3);
  assert_true(v2_key_lane0(r1, 0) == 4 && v2_key_lane0(r1, 1) == 5 && v2_key_lane0(r1, 2) == 0);
  assert_kvp_ok(kvp_metadata_destroy(md));
  assert_kvp_ok(kvp_cache_destroy(r0));
  assert_kvp_ok(kvp_cache_destroy(r1));
}

/* v3 metadata of a data-parallel config: rows in one block per rank, padding rows (query length
 * 0, context 0) inside; writes the same bytes as the compact rows, refused without dp > 1. */
static void test_padding_rows(void **state) {
  (void)state;
  kvp_config c = kvp_test_config_len(1, 1, 128, 8, 8, KVP_DTYPE_F32, KVP_LAYOUT_V3, 16);
  c.data_parallel_size = 2;
  assert_kvp_ok(kvp_config_validate(&c));
  /* Rank 0: request on page 1 (2 tokens); rank 1: request on page 5 (1 token). */
  int32_t pt[4 * 2] = {1, 0, 0, 0, 5, 0, 0, 0}, cl[4] = {2, 0, 1, 0}, qsl[5] = {0, 2, 2, 3, 3}, dist[3] = {0, 0, 4};
  kvp_metadata_desc d = KVP_METADATA_DESC_INIT;
  d.pages_tables = pt;
  d.num_reqs = 4;
  d.pages_per_req = 2;
  d.context_lens = cl;
  d.context_lens_len = 4;
  d.query_start_loc = qsl;
  d.query_start_loc_len = 5;
  d.request_distribution = dist;
  d.request_distribution_len = 3;
  kvp_metadata *blocks = NULL, *compact = NULL;
  assert_kvp_ok(kvp_metadata_create(&d, &blocks));
  int32_t pt2[2 * 2] = {1, 0, 5, 0}, cl2[2] = {2, 1}, qsl2[3] = {0, 2, 3}, dist2[3] = {0, 0, 2};
  kvp_metadata_desc d2 = d;
  d2.pages_tables = pt2;
  d2.num_reqs = 2;
  d2.context_lens = cl2;
  d2.context_lens_len = 2;
  d2.query_start_loc = qsl2;
  d2.query_start_loc_len = 3;
  d2.request_distribution = dist2;
  assert_kvp_ok(kvp_metadata_create(&d2, &compact));
  float k[3 * 128], v[3 * 128];
  for (int i = 0; i < 3 * 128; ++i) k[i] = v[i] = (float)(i % 7) - 3.0f;
  kvp_tensor kt = kvp_test_tensor(k, KVP_DTYPE_F32, 3, 1, 128, KVP_DEVICE_CPU);
  kvp_tensor vt = kvp_test_tensor(v, KVP_DTYPE_F32, 3, 1, 128, KVP_DEVICE_CPU);
  kvp_cache *a = NULL, *b = NULL;
  assert_kvp_ok(kvp_cache_create(&c, NULL, &a));
  assert_kvp_ok(kvp_cache_create(&c, NULL, &b));
  assert_kvp_ok(kvp_concatenate(a, 0, &kt, &vt, blocks, NULL));
  assert_kvp_ok(kvp_concatenate(b, 0, &kt, &vt, compact, NULL));
  const size_t n = kvp_test_layer_bytes(a);
  unsigned char *x = malloc(n), *y = malloc(n);
  assert_kvp_ok(kvp_cache_read_layer(a, 0, x, n, NULL));
  assert_kvp_ok(kvp_cache_read_layer(b, 0, y, n, NULL));
  assert_memory_equal(x, y, n);
  /* A padding row must have context 0. */
  cl[1] = 3;
  kvp_metadata *bad = NULL;
  assert_kvp_ok(kvp_metadata_create(&d, &bad));
  assert_kvp_status(kvp_concatenate(a, 0, &kt, &vt, bad, NULL), KVP_ERR_INVALID_ARGUMENT,
                    "request 1: a padding row (query length 0, data_parallel_size > 1) has context_len 3");
  assert_kvp_ok(kvp_metadata_destroy(bad));
  /* Without data-parallel ranks a row of query length 0 is refused, as before; nothing changed. */
  kvp_config one = c;
  one.data_parallel_size = 1;
  kvp_cache *o = NULL;
  assert_kvp_ok(kvp_cache_create(&one, NULL, &o));
  assert_kvp_status(kvp_concatenate(o, 0, &kt, &vt, blocks, NULL), KVP_ERR_INVALID_ARGUMENT,
                    "request 1: query length 0");
  memset(y, 0, n);
  assert_kvp_ok(kvp_cache_read_layer(o, 0, x, n, NULL));
  assert_memory_equal(x, y, n);
  free(x);
  free(y);
  assert_kvp_ok(kvp_cache_destroy(o));
  assert_kvp_ok(kvp_cache_destroy(a));
  assert_kvp_ok(kvp_cache_destroy(b));
  assert_kvp_ok(kvp_metadata_destroy(blocks));
  assert_kvp_ok(kvp_metadata_destroy(compact));
}

/* Bad ranks, bad local tensors and bad pages: a status, a message and nothing changed. */
static void test_bad_input(void **state) {
  (void)state;
  kvp_config c = kvp_test_sharded_config(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 4, 128, 2, 2);
  kvp_cache *s = (kvp_cache *)0x1;
  assert_kvp_status(kvp_cache_create_shard(&c, 2, 0, NULL, &s), KVP_ERR_INVALID_ARGUMENT,
                    "tp_rank 2 is out of range [0, 2) (the config's kv_head_shards)");
  assert_null(s);
  assert_kvp_status(kvp_cache_create_shard(&c, 0, -1, NULL, &s), KVP_ERR_INVALID_ARGUMENT,
                    "dp_rank -1 is out of range [0, 2) (the config's data_parallel_size)");
  kvp_shard_info si = KVP_SHARD_INFO_INIT;
  si.tp_rank = 77;
  assert_kvp_status(kvp_config_get_shard(&c, 0, 2, &si), KVP_ERR_INVALID_ARGUMENT, "dp_rank 2 is out of range");
  assert_int_equal(si.tp_rank, 77);
  assert_kvp_status(kvp_config_get_shard(&c, 0, 0, NULL), KVP_ERR_INVALID_ARGUMENT, "out");
  kvp_config no_pages = c;
  no_pages.num_pages = -1;
  assert_kvp_status(kvp_config_get_shard(&no_pages, 0, 0, &si), KVP_ERR_INVALID_ARGUMENT, "num_pages is -1");

  assert_kvp_ok(kvp_cache_create_shard(&c, 1, 1, NULL, &s));
  /* 3 heads: neither all 4 nor the shard's 2. */
  static float k[4 * 4 * 128], v[4 * 4 * 128];
  k[2 * 128] = 1.0f;  /* token 0, head 2, lane 0 */
  int32_t pages[] = {9};
  kvp_batch_request req = {0, 4, pages, 1};
  kvp_metadata *md = NULL;
  assert_kvp_ok(kvp_metadata_build(&c, &req, 1, NULL, NULL, &md));
  kvp_tensor k3 = kvp_test_tensor(k, KVP_DTYPE_F32, 4, 3, 128, KVP_DEVICE_CPU);
  kvp_tensor v3 = kvp_test_tensor(v, KVP_DTYPE_F32, 4, 3, 128, KVP_DEVICE_CPU);
  assert_kvp_status(kvp_concatenate(s, 0, &k3, &v3, md, NULL), KVP_ERR_INVALID_ARGUMENT,
                    "key has 3 heads but this shard holds heads 2");
  /* A page outside the whole cache. */
  int32_t far[] = {16};
  kvp_batch_request bad = {0, 4, far, 1};
  kvp_metadata *md_bad = NULL;
  kvp_config loose = c;
  loose.num_pages = 32;
  assert_kvp_ok(kvp_metadata_build(&loose, &bad, 1, NULL, NULL, &md_bad));
  kvp_tensor k4 = kvp_test_tensor(k, KVP_DTYPE_F32, 4, 4, 128, KVP_DEVICE_CPU);
  kvp_tensor v4 = kvp_test_tensor(v, KVP_DTYPE_F32, 4, 4, 128, KVP_DEVICE_CPU);
  /* Page 16 is in shard 1 of the loose config's 2, so the builder puts the request in row 4, the
   * first row of shard 1's block (max_num_reqs 8: blocks of 4 rows). */
  assert_kvp_status(kvp_concatenate(s, 0, &k4, &v4, md_bad, NULL), KVP_ERR_INVALID_ARGUMENT,
                    "request 4: pages_tables[4][0] = 16 is out of range [0, 16)");
  const size_t n = kvp_test_layer_bytes(s);
  unsigned char *got = malloc(n), *zero = calloc(1, n);
  assert_kvp_ok(kvp_cache_read_layer(s, 0, got, n, NULL));
  assert_memory_equal(got, zero, n);
  /* The good write lands in local page 1 of rank 1 (global page 9): head 2's key is its first. */
  assert_kvp_ok(kvp_concatenate(s, 0, &k4, &v4, md, NULL));
  kvp_tensor keys;
  assert_kvp_ok(kvp_cache_get_view(s, 0, KVP_VIEW_KEYS, &keys));
  const uint16_t *kb = keys.data;
  size_t nonzero = 0;
  assert_kvp_ok(kvp_cache_read_layer(s, 0, got, n, NULL));
  for (size_t b = 0; b < n; ++b) nonzero += got[b] != 0;
  assert_int_equal(kb[keys.strides[0]], 0x3F80);  /* bf16 1.0 at local page 1, row 0, head 2, lane 0 */
  assert_int_equal(nonzero, 2);
  free(got);
  free(zero);
  assert_kvp_ok(kvp_metadata_destroy(md));
  assert_kvp_ok(kvp_metadata_destroy(md_bad));
  assert_kvp_ok(kvp_cache_destroy(s));
}

/* A step of two requests (whole prefills, then decodes after them), the metadata for `cfg`. */
static kvp_metadata *attention_step(const kvp_config *cfg, int step, int64_t *T) {
  static int32_t p0[] = {1, 2}, p1[] = {3};
  kvp_batch_request reqs[2] = {{0, 10, p0, 2}, {0, 5, p1, 1}};
  if (step == 1) reqs[0] = (kvp_batch_request){10, 1, p0, 2}, reqs[1] = (kvp_batch_request){5, 1, p1, 1};
  kvp_batch_options bo = KVP_BATCH_OPTIONS_INIT;
  bo.flags = KVP_BATCH_FLAG_REQUEST_ORDER;
  kvp_metadata *md = NULL;
  assert_kvp_ok(kvp_metadata_build(cfg, reqs, 2, &bo, NULL, &md));
  *T = reqs[0].num_scheduled + reqs[1].num_scheduled;
  return md;
}

/* Attention on each KV-head shard, with its query heads (GQA: 2 per KV head) and the fused write
 * of its own K/V heads, gives the whole cache's output for those heads. */
static void attention_matches(kvp_layout v, kvp_dtype dt, int64_t H, int64_t D, int64_t tp) {
  const kvp_config c = kvp_test_sharded_config(v, dt, H, D, tp, 1);
  assert_int_equal(c.kv_head_shards, tp);
  const int64_t rep = 2, Hq = rep * H, T_MAX = 15;
  kvp_cache *whole = NULL, *shards[8];
  assert_kvp_ok(kvp_cache_create(&c, NULL, &whole));
  for (int64_t r = 0; r < tp; ++r) assert_kvp_ok(kvp_cache_create_shard(&c, (int32_t)r, 0, NULL, &shards[r]));
  float *q = malloc(sizeof(float) * (size_t)(T_MAX * Hq * D)), *k = malloc(sizeof(float) * (size_t)(T_MAX * H * D));
  float *val = malloc(sizeof(float) * (size_t)(T_MAX * H * D)), *want = malloc(sizeof(float) * (size_t)(T_MAX * Hq * D));
  float *got = malloc(sizeof(float) * (size_t)(T_MAX * Hq * D));
  uint64_t rng = (uint64_t)(H * 7 + D + tp);
  for (int step = 0; step < 2; ++step) {
    int64_t T = 0;
    kvp_metadata *md = attention_step(&c, step, &T);
    for (int64_t e = 0; e < T * Hq * D; ++e) q[e] = (float)kvp_test_rand_range(&rng, -32, 32) / 32.0f;
    for (int64_t e = 0; e < T * H * D; ++e) {
      k[e] = (float)kvp_test_rand_range(&rng, -32, 32) / 32.0f;
      val[e] = (float)kvp_test_rand_range(&rng, -32, 32) / 32.0f;
    }
    kvp_tensor qt = kvp_test_tensor(q, KVP_DTYPE_F32, T, Hq, D, KVP_DEVICE_CPU);
    kvp_tensor kt = kvp_test_tensor(k, KVP_DTYPE_F32, T, H, D, KVP_DEVICE_CPU);
    kvp_tensor vt = kvp_test_tensor(val, KVP_DTYPE_F32, T, H, D, KVP_DEVICE_CPU);
    kvp_tensor wt = kvp_test_tensor(want, KVP_DTYPE_F32, T, Hq, D, KVP_DEVICE_CPU);
    assert_kvp_ok(kvp_attention(whole, 0, &qt, &kt, &vt, md, NULL, &wt, NULL));
    for (int64_t r = 0; r < tp; ++r) {
      kvp_shard_info si = KVP_SHARD_INFO_INIT;
      assert_kvp_ok(kvp_cache_get_shard(shards[r], &si));
      const int64_t h0 = si.head_begin, nh = si.head_end - si.head_begin;
      kvp_tensor qs = qt, ks = kt, vs = vt, os = kvp_test_tensor(got, KVP_DTYPE_F32, T, rep * nh, D, KVP_DEVICE_CPU);
      qs.data = q + h0 * rep * D;
      qs.shape[1] = rep * nh;
      ks.data = k + h0 * D;
      vs.data = val + h0 * D;
      ks.shape[1] = vs.shape[1] = nh;
      assert_kvp_ok(kvp_attention(shards[r], 0, &qs, &ks, &vs, md, NULL, &os, NULL));
      for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < rep * nh; ++h)
          for (int64_t d = 0; d < D; ++d) {
            const float w = want[(t * Hq + h0 * rep + h) * D + d], g = got[(t * rep * nh + h) * D + d];
            if (!(fabsf(w - g) <= 1e-5f * (1.0f + fabsf(w))))
              fail_msg("tp %lld rank %lld step %d: token %lld head %lld lane %lld: %g, whole cache %g", (long long)tp,
                       (long long)r, step, (long long)t, (long long)(h0 * rep + h), (long long)d, g, w);
          }
    }
    assert_kvp_ok(kvp_metadata_destroy(md));
  }
  free(q);
  free(k);
  free(val);
  free(want);
  free(got);
  for (int64_t r = 0; r < tp; ++r) assert_kvp_ok(kvp_cache_destroy(shards[r]));
  assert_kvp_ok(kvp_cache_destroy(whole));
}

static void test_attention_on_kv_head_shards(void **state) {
  (void)state;
  attention_matches(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 8, 128, 4);
  attention_matches(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 8, 64, 2);  /* head_dim 64 */
  attention_matches(KVP_LAYOUT_V3, KVP_DTYPE_F8_E4M3FN, 3, 32, 2);  /* a padded last rank */
  attention_matches(KVP_LAYOUT_V2, KVP_DTYPE_F32, 4, 32, 4);
  /* A rank holding half a head cannot attend. */
  const kvp_config c = kvp_test_sharded_config(KVP_LAYOUT_V2, KVP_DTYPE_F32, 3, 32, 2, 1);
  kvp_cache *s = NULL;
  assert_kvp_ok(kvp_cache_create_shard(&c, 0, 0, NULL, &s));
  int64_t T = 0;
  kvp_metadata *md = attention_step(&c, 0, &T);
  float q[15 * 4 * 32] = {0}, o[15 * 4 * 32];
  memset(o, 0x5C, sizeof o);
  kvp_tensor qt = kvp_test_tensor(q, KVP_DTYPE_F32, T, 4, 32, KVP_DEVICE_CPU);
  kvp_tensor ot = kvp_test_tensor(o, KVP_DTYPE_F32, T, 4, 32, KVP_DEVICE_CPU);
  assert_kvp_status(kvp_attention(s, 0, &qt, NULL, NULL, md, NULL, &ot, NULL), KVP_ERR_UNSUPPORTED,
                    "this shard holds only the keys or only the values of a KV head at an end of its range "
                    "(whole-layout entries [0, 3)); attention needs whole heads");
  for (size_t i = 0; i < sizeof o; ++i) assert_int_equal(((unsigned char *)o)[i], 0x5C);
  assert_kvp_ok(kvp_metadata_destroy(md));
  assert_kvp_ok(kvp_cache_destroy(s));
}

/* What shards do not support yet says so, and changes nothing. */
static void test_not_yet_on_shards(void **state) {
  (void)state;
  kvp_config c = kvp_test_sharded_config(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 4, 128, 2, 2);
  kvp_cache *s = NULL;
  assert_kvp_ok(kvp_cache_create_shard(&c, 0, 1, NULL, &s));
  kvp_pool *pool = NULL;
  assert_kvp_status(kvp_pool_create(s, NULL, &pool), KVP_ERR_UNSUPPORTED,
                    "kvp_pool_create: not supported on a shard yet (this cache is shard tp 0/2, dp 1/2)");
  assert_null(pool);
  int32_t src[] = {9}, dst[] = {10};
  assert_kvp_status(kvp_cache_copy_pages(s, src, dst, 1, NULL), KVP_ERR_UNSUPPORTED, "not supported on a shard");
  kvp_tensor q = kvp_test_tensor(NULL, KVP_DTYPE_F32, 0, 4, 128, KVP_DEVICE_CPU);
  kvp_metadata *md = NULL;
  assert_kvp_ok(kvp_metadata_create_empty(KVP_LAYOUT_V3, 1, 4, 1, 8, &md));
  assert_kvp_status(kvp_attention(s, 0, &q, NULL, NULL, md, NULL, &q, NULL), KVP_ERR_UNSUPPORTED,
                    "kvp_attention: attention on a data-parallel shard is not supported yet");
  assert_kvp_ok(kvp_metadata_destroy(md));
  assert_kvp_ok(kvp_cache_destroy(s));
  /* A pool on a KV-head shard (all pages) works. */
  kvp_config tp_only = kvp_test_sharded_config(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 4, 128, 2, 1);
  assert_kvp_ok(kvp_cache_create_shard(&tp_only, 1, 0, NULL, &s));
  assert_kvp_ok(kvp_pool_create(s, NULL, &pool));
  assert_kvp_ok(kvp_pool_destroy(pool));
  assert_kvp_ok(kvp_cache_destroy(s));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_spec_head_splits), cmocka_unit_test(test_shard_geometry),
      cmocka_unit_test(test_union_of_shards),  cmocka_unit_test(test_v2_slice_rewrite),
      cmocka_unit_test(test_padding_rows),     cmocka_unit_test(test_bad_input),
      cmocka_unit_test(test_attention_on_kv_head_shards), cmocka_unit_test(test_not_yet_on_shards),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
