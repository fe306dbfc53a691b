/* Cache groups (group.h): every shard of a config in one handle against the whole cache, the
 * borrowed shard handles, all-or-nothing creation, a bad input for one shard leaving every shard
 * unchanged, and the plans the shards share (writes across data ranks, attention on tensor ranks)
 * against shards created alone. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shards.h"
#include "support.h"

/* The union of a group's shards equals the whole cache after the same batches, over the layouts,
 * a kept, an upcast and a half-head split, and data ranks. */
static void test_group_union(void **state) {
  (void)state;
  static const struct {
    kvp_layout version;
    int64_t head_dim;
  } layouts[] = {{KVP_LAYOUT_V2, 32}, {KVP_LAYOUT_V3, 128}, {KVP_LAYOUT_V3, 64}};
  const kvp_dtype dtypes[] = {KVP_DTYPE_BF16, KVP_DTYPE_F8_E4M3FN, KVP_DTYPE_F32};
  const int64_t tps[] = {1, 2, 4}, dps[] = {1, 2};
  uint64_t seed = 100;
  for (size_t l = 0; l < 3; ++l)
    for (size_t d = 0; d < 3; ++d)
      for (size_t t = 0; t < 3; ++t)
        for (size_t p = 0; p < 2; ++p) {
          const kvp_config c = kvp_test_sharded_config(layouts[l].version, dtypes[d], 3 + (int64_t)(t % 2),
                                                       layouts[l].head_dim, tps[t], dps[p]);
          kvp_test_group_union(&c, 3, seed++);
        }
}

/* Shard i is (i / dp, i % dp); every borrowed handle describes its slice; ranks out of range. */
static void test_group_shards(void **state) {
  (void)state;
  const kvp_config c = kvp_test_sharded_config(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 4, 128, 2, 2);
  kvp_cache_group *g = NULL;
  assert_kvp_ok(kvp_cache_group_create(&c, NULL, 0, NULL, &g));
  uint32_t n = 0;
  assert_kvp_ok(kvp_cache_group_get_num_shards(g, &n));
  assert_int_equal(n, 4);
  for (int32_t tp = 0; tp < 2; ++tp)
    for (int32_t dp = 0; dp < 2; ++dp) {
      kvp_cache *s = NULL;
      assert_kvp_ok(kvp_cache_group_get_shard(g, tp, dp, &s));
      kvp_shard_info got = KVP_SHARD_INFO_INIT, want = KVP_SHARD_INFO_INIT;
      assert_kvp_ok(kvp_cache_get_shard(s, &got));
      assert_kvp_ok(kvp_config_get_shard(&c, tp, dp, &want));
      assert_memory_equal(&got, &want, sizeof got);
      kvp_device_type dt = KVP_DEVICE_CUDA;
      assert_kvp_ok(kvp_cache_get_device(s, &dt, NULL));
      assert_int_equal(dt, KVP_DEVICE_CPU);
    }
  kvp_cache *s = (kvp_cache *)0x1;
  assert_kvp_status(kvp_cache_group_get_shard(g, 2, 0, &s), KVP_ERR_INVALID_ARGUMENT,
                    "kvp_cache_group_get_shard: tp_rank 2 is out of range [0, 2)");
  assert_kvp_status(kvp_cache_group_get_shard(g, 0, -1, &s), KVP_ERR_INVALID_ARGUMENT, "dp_rank -1 is out of range [0, 2)");
  assert_ptr_equal(s, (kvp_cache *)0x1);
  assert_kvp_ok(kvp_cache_group_destroy(g));

  /* One device per shard (CPU: zeros), a list of the wrong length, a NULL list, a bad device. */
  const int32_t zeros[4] = {0, 0, 0, 0}, bad[4] = {0, 0, 3, 0};
  assert_kvp_ok(kvp_cache_group_create(&c, zeros, 4, NULL, &g));
  assert_kvp_ok(kvp_cache_group_destroy(g));
  g = (kvp_cache_group *)0x1;
  assert_kvp_status(kvp_cache_group_create(&c, zeros, 3, NULL, &g), KVP_ERR_INVALID_ARGUMENT,
                    "num_device_ids is 3 but the config has 4 shards");
  assert_null(g);
  assert_kvp_status(kvp_cache_group_create(&c, NULL, 4, NULL, &g), KVP_ERR_INVALID_ARGUMENT, "device_ids is NULL");
  assert_kvp_status(kvp_cache_group_create(&c, bad, 4, NULL, &g), KVP_ERR_INVALID_ARGUMENT,
                    "kvp_cache_group_create: shard 2 (tp 1, dp 0)");
  assert_null(g);

  /* An unsharded config: a group of one whole cache. */
  const kvp_config whole = kvp_test_sharded_config(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 4, 128, 1, 1);
  assert_kvp_ok(kvp_cache_group_create(&whole, NULL, 0, NULL, &g));
  assert_kvp_ok(kvp_cache_group_get_num_shards(g, &n));
  assert_int_equal(n, 1);
  assert_kvp_ok(kvp_cache_group_destroy(g));
}

/* A borrowed shard cannot be destroyed by itself (and keeps working); it dies with the group. */
static void test_borrowed_handles(void **state) {
  (void)state;
  const kvp_config c = kvp_test_sharded_config(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 4, 128, 2, 1);
  kvp_cache_group *g = NULL;
  assert_kvp_ok(kvp_cache_group_create(&c, NULL, 0, NULL, &g));
  kvp_cache *s = NULL;
  assert_kvp_ok(kvp_cache_group_get_shard(g, 1, 0, &s));
  assert_kvp_status(kvp_cache_destroy(s), KVP_ERR_INVALID_HANDLE,
                    "kvp_cache_destroy: invalid handle: borrowed handle: it belongs to a kvp_cache_group");
  kvp_shard_info si = KVP_SHARD_INFO_INIT;
  assert_kvp_ok(kvp_cache_get_shard(s, &si));
  assert_int_equal(si.tp_rank, 1);
  const size_t bytes = kvp_test_layer_bytes(s);
  unsigned char *b = malloc(bytes);
  assert_non_null(b);
  assert_kvp_ok(kvp_cache_read_layer(s, 0, b, bytes, NULL));
  free(b);
  assert_kvp_ok(kvp_cache_group_destroy(g));
  assert_kvp_status(kvp_cache_get_shard(s, &si), KVP_ERR_INVALID_HANDLE, "destroyed handle");
  assert_kvp_status(kvp_cache_group_destroy(g), KVP_ERR_INVALID_HANDLE, "destroyed handle");
  assert_kvp_ok(kvp_cache_group_destroy(NULL));
}

/* Every allocation failure during creation returns OUT_OF_MEMORY, leaves *out NULL and leaks
 * nothing (the shards already made are destroyed); with enough allocations it succeeds. */
static void test_create_all_or_nothing(void **state) {
  (void)state;
  const kvp_config c = kvp_test_sharded_config(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 4, 128, 2, 2);
  kvp_test_alloc_state st = {-1, 0, 0};
  kvp_host_allocator a = kvp_test_allocator(&st);
  kvp_cache_options o = KVP_CACHE_OPTIONS_INIT;
  o.allocator = &a;
  int failures = 0;
  for (long n = 0;; ++n) {
    st.fail_after = n;
    st.allocations = 0;
    kvp_cache_group *g = (kvp_cache_group *)0x1;
    const kvp_status s = kvp_cache_group_create(&c, NULL, 0, &o, &g);
    if (s == KVP_OK) {
      assert_non_null(g);
      assert_kvp_ok(kvp_cache_group_destroy(g));
      assert_int_equal(st.live, 0);
      break;
    }
    if (s != KVP_ERR_OUT_OF_MEMORY) fail_msg("fail_after=%ld: %s: %s", n, kvp_status_name(s), kvp_last_error_message());
    assert_null(g);
    if (st.live != 0) fail_msg("fail_after=%ld: %ld blocks leaked", n, st.live);
    ++failures;
    assert_true(n < 1000);
  }
  assert_true(failures >= 4 * 2);  /* at least a layer buffer of every shard could fail */
}

/* Layer 0 of every shard of a group, concatenated. */
static unsigned char *group_bytes(const kvp_cache_group *g, int32_t tp, int32_t dp, size_t *size) {
  *size = 0;
  size_t total = 0;
  for (int32_t i = 0; i < tp * dp; ++i) {
    kvp_cache *s = NULL;
    assert_kvp_ok(kvp_cache_group_get_shard(g, i / dp, i % dp, &s));
    total += kvp_test_layer_bytes(s);
  }
  unsigned char *b = malloc(total);
  assert_non_null(b);
  for (int32_t i = 0; i < tp * dp; ++i) {
    kvp_cache *s = NULL;
    assert_kvp_ok(kvp_cache_group_get_shard(g, i / dp, i % dp, &s));
    const size_t n = kvp_test_layer_bytes(s);
    assert_kvp_ok(kvp_cache_read_layer(s, 0, b + *size, n, NULL));
    *size += n;
  }
  return b;
}

/* A bad input for the last shard: the status and message name it and no shard changed, also
 * the ones before it; bad counts and NULLs; then the good call writes every shard. */
static void test_bad_shard_changes_nothing(void **state) {
  (void)state;
  const kvp_config c = kvp_test_sharded_config(KVP_LAYOUT_V3, KVP_DTYPE_BF16, 4, 128, 2, 2);
  kvp_cache_group *g = NULL;
  assert_kvp_ok(kvp_cache_group_create(&c, NULL, 0, NULL, &g));
  static float k[8 * 4 * 128], v[8 * 4 * 128];
  for (size_t e = 0; e < sizeof k / sizeof k[0]; ++e) k[e] = v[e] = 1.0f + (float)(e % 7);
  int32_t p0[] = {1}, p1[] = {9};
  kvp_batch_request reqs[] = {{0, 4, p0, 1}, {0, 4, p1, 1}};  /* one prompt on each data rank */
  kvp_batch_options bo = KVP_BATCH_OPTIONS_INIT;
  bo.flags = KVP_BATCH_FLAG_REQUEST_ORDER;
  kvp_metadata *md = NULL;
  assert_kvp_ok(kvp_metadata_build(&c, reqs, 2, &bo, NULL, &md));
  kvp_tensor keys[4], values[4];
  for (int i = 0; i < 4; ++i) {
    keys[i] = kvp_test_tensor(k, KVP_DTYPE_F32, 8, 4, 128, KVP_DEVICE_CPU);
    values[i] = kvp_test_tensor(v, KVP_DTYPE_F32, 8, 4, 128, KVP_DEVICE_CPU);
  }
  size_t n;
  unsigned char *zero = group_bytes(g, 2, 2, &n);
  for (size_t b = 0; b < n; ++b) assert_int_equal(zero[b], 0);

  keys[3].shape[1] = values[3].shape[1] = 3;  /* neither all 4 heads nor the shard's 2 */
  assert_kvp_status(kvp_cache_group_concatenate(g, 0, keys, values, 4, md, NULL), KVP_ERR_INVALID_ARGUMENT,
                    "kvp_cache_group_concatenate: shard 3 (tp 1, dp 1): key has 3 heads");
  unsigned char *after = group_bytes(g, 2, 2, &n);
  assert_memory_equal(after, zero, n);
  free(after);
  keys[3].shape[1] = values[3].shape[1] = 4;
  assert_kvp_status(kvp_cache_group_concatenate(g, 2, keys, values, 4, md, NULL), KVP_ERR_INVALID_ARGUMENT,
                    "shard 0 (tp 0, dp 0): layer 2 is out of range");
  assert_kvp_status(kvp_cache_group_concatenate(g, 0, keys, values, 3, md, NULL), KVP_ERR_INVALID_ARGUMENT,
                    "num_shards is 3 but the group has 4 shards");
  assert_kvp_status(kvp_cache_group_concatenate(g, 0, NULL, values, 4, md, NULL), KVP_ERR_INVALID_ARGUMENT, "keys");
  assert_kvp_status(kvp_cache_group_concatenate(g, 0, keys, NULL, 4, md, NULL), KVP_ERR_INVALID_ARGUMENT, "values");
  after = group_bytes(g, 2, 2, &n);
  assert_memory_equal(after, zero, n);
  free(after);

  assert_kvp_ok(kvp_cache_group_concatenate(g, 0, keys, values, 4, md, NULL));
  for (int32_t i = 0; i < 4; ++i) {  /* every shard got its heads of its data rank's prompt */
    kvp_cache *s = NULL;
    assert_kvp_ok(kvp_cache_group_get_shard(g, i / 2, i % 2, &s));
    const size_t sn = kvp_test_layer_bytes(s);
    unsigned char *b = malloc(sn);
    assert_non_null(b);
    assert_kvp_ok(kvp_cache_read_layer(s, 0, b, sn, NULL));
    size_t nonzero = 0;
    for (size_t x = 0; x < sn; ++x) nonzero += b[x] != 0;
    assert_true(nonzero > 0);
    free(b);
  }
  free(zero);
  assert_kvp_ok(kvp_metadata_destroy(md));
  assert_kvp_ok(kvp_cache_group_destroy(g));
}

/* v2 slices that cross data ranks (one spans three): each shard of a group writes exactly what
 * the same shard written alone does, through a plan built per call and through the plan the
 * metadata keeps for the whole group (written twice: the second call uses it). */
static void test_slices_across_ranks(void **state) {
  (void)state;
  const kvp_config c = kvp_test_sharded_config(KVP_LAYOUT_V2, KVP_DTYPE_BF16, 4, 32, 2, 4);  /* 8 pages per rank */
  enum { T = 100, N = 8 };
  /* [dst slots; src tokens; lengths]: slots 60..140 cover pages 7 (rank 0) to 17 (rank 2). */
  int32_t slots[3 * 3] = {60, 200, 250, 0, 80, 90, 80, 10, 6};
  int32_t valid[1] = {3};
  static float k[T * 4 * 32], v[T * 4 * 32];
  for (size_t e = 0; e < sizeof k / sizeof k[0]; ++e) {
    k[e] = (float)(e % 97) / 8.0f;
    v[e] = -(float)(e % 89) / 8.0f;
  }
  kvp_metadata *each = kvp_test_v2_metadata(slots, 3, valid), *kept = NULL;
  kvp_metadata_desc d = KVP_METADATA_DESC_INIT;
  assert_kvp_ok(kvp_metadata_get_desc(each, &d));
  d.flags = KVP_METADATA_FLAG_IMMUTABLE;
  assert_kvp_ok(kvp_metadata_create(&d, &kept));
  kvp_cache_group *g = NULL;
  kvp_cache *alone[N];
  kvp_tensor keys[N], values[N];
  assert_kvp_ok(kvp_cache_group_create(&c, NULL, 0, NULL, &g));
  const kvp_tensor kt = kvp_test_tensor(k, KVP_DTYPE_F32, T, 4, 32, KVP_DEVICE_CPU);
  const kvp_tensor vt = kvp_test_tensor(v, KVP_DTYPE_F32, T, 4, 32, KVP_DEVICE_CPU);
  for (int i = 0; i < N; ++i) {
    assert_kvp_ok(kvp_cache_create_shard(&c, i / 4, i % 4, NULL, &alone[i]));
    keys[i] = kt;
    values[i] = vt;
  }
  for (uint32_t layer = 0; layer < 2; ++layer) {
    const kvp_metadata *md = layer == 0 ? each : kept;
    for (int rep = 0; rep < 2; ++rep) assert_kvp_ok(kvp_cache_group_concatenate(g, layer, keys, values, N, md, NULL));
    for (int i = 0; i < N; ++i) assert_kvp_ok(kvp_concatenate(alone[i], layer, &kt, &vt, md, NULL));
  }
  size_t written = 0;
  for (int i = 0; i < N; ++i) {
    kvp_cache *s = NULL;
    assert_kvp_ok(kvp_cache_group_get_shard(g, i / 4, i % 4, &s));
    const size_t n = kvp_test_layer_bytes(s);
    unsigned char *a = malloc(n), *b = malloc(n);
    assert_true(a != NULL && b != NULL);
    for (uint32_t layer = 0; layer < 2; ++layer) {
      assert_kvp_ok(kvp_cache_read_layer(s, layer, a, n, NULL));
      assert_kvp_ok(kvp_cache_read_layer(alone[i], layer, b, n, NULL));
      assert_memory_equal(a, b, n);
      for (size_t x = 0; x < n; ++x) written += a[x] != 0;
    }
    free(a);
    free(b);
    assert_kvp_ok(kvp_cache_destroy(alone[i]));
  }
  assert_true(written > 0);
  assert_kvp_ok(kvp_cache_group_destroy(g));
  assert_kvp_ok(kvp_metadata_destroy(kept));
  assert_kvp_ok(kvp_metadata_destroy(each));
}

/* Fused write + attention on each tensor rank of a group (whose shards share the metadata's
 * write and read plans) gives the bytes and outputs of the same shards created alone. */
static void test_attention_on_group_shards(void **state) {
  (void)state;
  enum { H = 4, D = 128, TP = 2, REP = 2, T_MAX = 15 };
  const kvp_config c = kvp_test_sharded_config(KVP_LAYOUT_V3, KVP_DTYPE_BF16, H, D, TP, 1);
  kvp_cache_group *g = NULL;
  kvp_cache *alone[TP], *member[TP];
  assert_kvp_ok(kvp_cache_group_create(&c, NULL, 0, NULL, &g));
  for (int r = 0; r < TP; ++r) {
    assert_kvp_ok(kvp_cache_create_shard(&c, r, 0, NULL, &alone[r]));
    assert_kvp_ok(kvp_cache_group_get_shard(g, r, 0, &member[r]));
  }
  static float q[T_MAX * REP * H * D], k[T_MAX * H * D], v[T_MAX * H * D], out_a[T_MAX * REP * H * D],
      out_g[T_MAX * REP * H * D];
  uint64_t rng = 7;
  int32_t p0[] = {1, 2}, p1[] = {3};
  for (int step = 0; step < 2; ++step) {
    kvp_batch_request reqs[2] = {{0, 10, p0, 2}, {0, 5, p1, 1}};
    if (step == 1) reqs[0] = (kvp_batch_request){10, 1, p0, 2}, reqs[1] = (kvp_batch_request){5, 1, p1, 1};
    const int64_t T = reqs[0].num_scheduled + reqs[1].num_scheduled;
    kvp_batch_options bo = KVP_BATCH_OPTIONS_INIT;
    bo.flags = KVP_BATCH_FLAG_REQUEST_ORDER;
    kvp_metadata *md = NULL;
    assert_kvp_ok(kvp_metadata_build(&c, reqs, 2, &bo, NULL, &md));
    for (int64_t e = 0; e < T * REP * H * D; ++e) q[e] = (float)kvp_test_rand_range(&rng, -32, 32) / 32.0f;
    for (int64_t e = 0; e < T * H * D; ++e) {
      k[e] = (float)kvp_test_rand_range(&rng, -32, 32) / 32.0f;
      v[e] = (float)kvp_test_rand_range(&rng, -32, 32) / 32.0f;
    }
    for (int r = 0; r < TP; ++r) {
      const int64_t nh = H / TP, h0 = r * nh;
      kvp_tensor qs = kvp_test_tensor(q, KVP_DTYPE_F32, T, REP * H, D, KVP_DEVICE_CPU);
      kvp_tensor ks = kvp_test_tensor(k, KVP_DTYPE_F32, T, H, D, KVP_DEVICE_CPU), vs = ks;
      qs.data = q + h0 * REP * D;
      qs.shape[1] = REP * nh;
      ks.data = k + h0 * D;
      vs.data = v + h0 * D;
      ks.shape[1] = vs.shape[1] = nh;
      kvp_tensor oa = kvp_test_tensor(out_a, KVP_DTYPE_F32, T, REP * nh, D, KVP_DEVICE_CPU);
      kvp_tensor og = kvp_test_tensor(out_g, KVP_DTYPE_F32, T, REP * nh, D, KVP_DEVICE_CPU);
      for (int layer = 0; layer < 2; ++layer) {  /* the second layer goes through the kept plans */
        assert_kvp_ok(kvp_attention(alone[r], (uint32_t)layer, &qs, &ks, &vs, md, NULL, &oa, NULL));
        assert_kvp_ok(kvp_attention(member[r], (uint32_t)layer, &qs, &ks, &vs, md, NULL, &og, NULL));
        assert_memory_equal(out_a, out_g, (size_t)(T * REP * nh * D) * sizeof(float));
      }
    }
    assert_kvp_ok(kvp_metadata_destroy(md));
  }
  for (int r = 0; r < TP; ++r) {
    for (uint32_t layer = 0; layer < 2; ++layer) {
      size_t na, ng;
      unsigned char *a = kvp_test_layer_copy(alone[r], layer, &na), *b = kvp_test_layer_copy(member[r], layer, &ng);
      assert_int_equal(na, ng);
      assert_memory_equal(a, b, na);
      free(a);
      free(b);
    }
    assert_kvp_ok(kvp_cache_destroy(alone[r]));
  }
  assert_kvp_ok(kvp_cache_group_destroy(g));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_group_union),           cmocka_unit_test(test_group_shards),
      cmocka_unit_test(test_borrowed_handles),      cmocka_unit_test(test_create_all_or_nothing),
      cmocka_unit_test(test_bad_shard_changes_nothing),    cmocka_unit_test(test_slices_across_ranks),
      cmocka_unit_test(test_attention_on_group_shards),
  };
  return cmocka_run_group_tests_name("group", tests, NULL, NULL);
}
