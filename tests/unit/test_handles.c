/* Handle identity after address reuse (issue 17, defect 7): a destroyed handle stays destroyed
 * however many handles are created after it. With the C library's allocator, a cache created
 * right after another is destroyed gets the same address; the stale pointer must still be
 * refused (and a double destroy through it must not destroy the new cache), and a pool whose
 * cache was destroyed must never write into a new cache. */
#include <stdlib.h>

#include "support.h"

enum { kNewCaches = 64, kChurn = 2000 };

static kvp_cache *small_cache(void) {
  kvp_config cfg = kvp_test_config(2, 2, 64, 4, 8, KVP_DTYPE_F32, KVP_LAYOUT_V3);
  kvp_cache *c = NULL;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &c));
  return c;
}

/* Every byte of every layer of `c` (through the flat views), seeded. */
static void fill_cache(kvp_cache *c, unsigned seed) {
  uint32_t l;
  for (l = 0; l < 2; ++l) {
    kvp_tensor t;
    int64_t n = 1, i;
    int d;
    assert_kvp_ok(kvp_cache_get_view(c, l, KVP_VIEW_FLAT, &t));
    for (d = 0; d < t.ndim; ++d) n *= t.shape[d];
    for (i = 0; i < n; ++i) ((float *)t.data)[i] = (float)((seed * 131u + (unsigned)i) % 1000u);
  }
}

/* A copy of the cache's bytes (its blob). */
static unsigned char *snapshot(const kvp_cache *c, size_t *len) {
  size_t cap = 0;
  unsigned char *b;
  assert_kvp_ok(kvp_serialized_size(c, NULL, &cap));
  b = (unsigned char *)malloc(cap);
  assert_non_null(b);
  assert_kvp_ok(kvp_serialize(c, NULL, b, cap, len));
  return b;
}

static void assert_unchanged(const kvp_cache *c, const unsigned char *before, size_t len) {
  size_t now_len = 0;
  unsigned char *now = snapshot(c, &now_len);
  assert_int_equal(now_len, len);
  assert_memory_equal(now, before, len);
  free(now);
}

static int g_misuse_calls;
static void on_misuse(const char *what, void *user_data) {
  (void)what;
  (void)user_data;
  ++g_misuse_calls;
}

static void test_handles__stale_cache_is_refused_after_new_caches(void **state) {
  kvp_cache *stale = small_cache(), *fresh[kNewCaches];
  kvp_config cfg;
  unsigned char *before[kNewCaches];
  size_t len[kNewCaches];
  int i;
  (void)state;
  assert_kvp_ok(kvp_cache_destroy(stale));
  for (i = 0; i < kNewCaches; ++i) {
    fresh[i] = small_cache();
    fill_cache(fresh[i], (unsigned)i);
    before[i] = snapshot(fresh[i], &len[i]);
  }
  g_misuse_calls = 0;
  kvp_set_misuse_handler(on_misuse, NULL);
  assert_kvp_status(kvp_cache_get_config(stale, &cfg), KVP_ERR_INVALID_HANDLE, "kvp_cache_get_config: invalid handle");
  assert_kvp_status(kvp_cache_destroy(stale), KVP_ERR_INVALID_HANDLE, "kvp_cache_destroy: invalid handle: destroyed");
  assert_kvp_status(kvp_cache_destroy(stale), KVP_ERR_INVALID_HANDLE, "destroyed");
  kvp_set_misuse_handler(NULL, NULL);
  assert_int_equal(g_misuse_calls, 3);
  for (i = 0; i < kNewCaches; ++i) { /* every new cache is intact and still usable */
    assert_unchanged(fresh[i], before[i], len[i]);
    assert_kvp_ok(kvp_cache_get_config(fresh[i], &cfg));
    assert_kvp_ok(kvp_cache_destroy(fresh[i]));
    free(before[i]);
  }
}

/* Create and destroy handles of every kind, many times: each destroyed handle stays refused. */
static void test_handles__every_destroyed_handle_stays_refused_under_churn(void **state) {
  static void *dead_caches[kChurn], *dead_metadata[kChurn];
  kvp_cache *keep = small_cache();
  kvp_config cfg;
  kvp_metadata_desc desc;
  int i;
  (void)state;
  assert_kvp_ok(kvp_metadata_desc_init(&desc, sizeof desc));
  for (i = 0; i < kChurn; ++i) {
    kvp_cache *c = small_cache();
    kvp_metadata *m = NULL;
    assert_kvp_ok(kvp_metadata_create_empty(KVP_LAYOUT_V3, 8, 2, 4, 4, &m));
    assert_kvp_ok(kvp_cache_destroy(c));
    assert_kvp_ok(kvp_metadata_destroy(m));
    dead_caches[i] = c;
    dead_metadata[i] = m;
  }
  for (i = 0; i < kChurn; ++i) {
    assert_kvp_status(kvp_cache_get_config((kvp_cache *)dead_caches[i], &cfg), KVP_ERR_INVALID_HANDLE, "invalid handle");
    assert_kvp_status(kvp_cache_destroy((kvp_cache *)dead_caches[i]), KVP_ERR_INVALID_HANDLE, "invalid handle");
    assert_kvp_status(kvp_metadata_destroy((kvp_metadata *)dead_metadata[i]), KVP_ERR_INVALID_HANDLE, "invalid handle");
    assert_kvp_status(kvp_metadata_get_desc((kvp_metadata *)dead_metadata[i], &desc), KVP_ERR_INVALID_HANDLE,
                      "invalid handle");
  }
  assert_kvp_ok(kvp_cache_get_config(keep, &cfg));
  assert_kvp_ok(kvp_cache_destroy(keep));
}

/* A pool whose cache was destroyed, with a copy-on-write pending (the next append into the shared
 * tail page copies it within the cache): after new caches are created, the append is refused and
 * no new cache changes; the calls that never touch the cache still work, and destroy works. */
static void test_handles__pool_of_a_destroyed_cache_never_writes_a_new_one(void **state) {
  kvp_cache *c = small_cache(), *fresh[kNewCaches];
  kvp_pool *pool = NULL;
  kvp_seq_id parent, child;
  unsigned char *before[kNewCaches];
  size_t len[kNewCaches], length = 0;
  int32_t toks[6] = {1, 2, 3, 4, 5, 6}, next = 7;
  int i;
  (void)state;
  assert_kvp_ok(kvp_pool_create(c, NULL, &pool));
  assert_kvp_ok(kvp_pool_add_sequence(pool, toks, 6, 0, 0, &parent, NULL));
  assert_kvp_ok(kvp_pool_fork(pool, parent, 1, &child));
  assert_kvp_ok(kvp_cache_destroy(c));
  for (i = 0; i < kNewCaches; ++i) {
    fresh[i] = small_cache();
    fill_cache(fresh[i], 1000u + (unsigned)i);
    before[i] = snapshot(fresh[i], &len[i]);
  }
  assert_kvp_status(kvp_pool_append(pool, child, &next, 1, NULL), KVP_ERR_INVALID_HANDLE, "kvp_pool_append: invalid handle");
  assert_kvp_status(kvp_pool_append(pool, parent, &next, 1, NULL), KVP_ERR_INVALID_HANDLE, "invalid handle");
  /* Nothing changed in the pool either. */
  assert_kvp_ok(kvp_pool_get_sequence_length(pool, child, &length, NULL));
  assert_int_equal(length, 6);
  for (i = 0; i < kNewCaches; ++i) {
    assert_unchanged(fresh[i], before[i], len[i]);
    assert_kvp_ok(kvp_cache_destroy(fresh[i]));
    free(before[i]);
  }
  assert_kvp_ok(kvp_pool_destroy(pool));
}

/* Addresses are reused after about a million creations (the handle table goes round): churn
 * metadata handles until the next handle lands where the pool's destroyed cache was, put a new
 * cache there, and the pool must still tell it from its own (the cache's serial). This relies on
 * the table's order (one slot after another): if no handle lands there, the test fails. */
static void test_handles__pool_tells_a_new_cache_at_its_caches_address(void **state) {
  kvp_cache *c = small_cache(), *fresh = NULL;
  kvp_pool *pool = NULL;
  kvp_seq_id seq;
  kvp_config cfg;
  unsigned char *before;
  size_t len;
  int32_t toks[6] = {1, 2, 3, 4, 5, 6}, next = 7;
  const uintptr_t old = (uintptr_t)c;
  long i;
  (void)state;
  assert_kvp_ok(kvp_pool_create(c, NULL, &pool));
  assert_kvp_ok(kvp_pool_add_sequence(pool, toks, 6, 0, 0, &seq, NULL));
  assert_kvp_ok(kvp_cache_destroy(c));
  for (i = 0; i < 4L << 20 && fresh == NULL; ++i) {
    kvp_metadata *m = NULL;
    assert_kvp_ok(kvp_metadata_create_empty(KVP_LAYOUT_V3, 8, 2, 4, 4, &m));
    assert_kvp_ok(kvp_metadata_destroy(m));
    if ((uintptr_t)m + 64 == old) fresh = small_cache(); /* the next slot is the old cache's */
  }
  if (fresh == NULL || (uintptr_t)fresh != old) fail_msg("no cache landed at the destroyed cache's address");
  fill_cache(fresh, 7);
  before = snapshot(fresh, &len);
  assert_kvp_status(kvp_pool_append(pool, seq, &next, 1, NULL), KVP_ERR_INVALID_HANDLE, "the pool's cache was destroyed");
  assert_unchanged(fresh, before, len);
  assert_kvp_ok(kvp_cache_get_config(fresh, &cfg)); /* the old pointer now names the new cache */
  assert_kvp_ok(kvp_pool_destroy(pool));
  assert_kvp_ok(kvp_cache_destroy(fresh));
  free(before);
}

/* A group handle is refused where a cache, a pool or a metadata is expected, and they where a
 * group is; the group and the cache still work afterwards. */
static void test_handles__group_and_cache_kinds_are_not_interchangeable(void **state) {
  kvp_config cfg = kvp_test_config(2, 2, 64, 4, 8, KVP_DTYPE_F32, KVP_LAYOUT_V3);
  kvp_cache_group *g = NULL;
  kvp_cache *c = small_cache(), *s = NULL;
  kvp_config got;
  uint32_t n = 0;
  void *vp;
  (void)state;
  assert_kvp_ok(kvp_cache_group_create(&cfg, NULL, 0, NULL, &g));
  vp = g;
  assert_kvp_status(kvp_cache_get_config((kvp_cache *)vp, &got), KVP_ERR_INVALID_HANDLE,
                    "wrong handle kind: got a kvp_cache_group");
  assert_kvp_status(kvp_cache_destroy((kvp_cache *)vp), KVP_ERR_INVALID_HANDLE, "got a kvp_cache_group");
  assert_kvp_status(kvp_pool_destroy((kvp_pool *)vp), KVP_ERR_INVALID_HANDLE, "got a kvp_cache_group");
  assert_kvp_status(kvp_metadata_destroy((kvp_metadata *)vp), KVP_ERR_INVALID_HANDLE, "got a kvp_cache_group");
  vp = c;
  assert_kvp_status(kvp_cache_group_get_num_shards((kvp_cache_group *)vp, &n), KVP_ERR_INVALID_HANDLE,
                    "wrong handle kind: got a kvp_cache");
  assert_kvp_status(kvp_cache_group_destroy((kvp_cache_group *)vp), KVP_ERR_INVALID_HANDLE, "got a kvp_cache");
  assert_kvp_ok(kvp_cache_group_get_num_shards(g, &n));
  assert_int_equal(n, 1);
  assert_kvp_ok(kvp_cache_group_get_shard(g, 0, 0, &s));
  vp = s;
  assert_kvp_status(kvp_cache_group_destroy((kvp_cache_group *)vp), KVP_ERR_INVALID_HANDLE, "got a kvp_cache");
  assert_kvp_ok(kvp_cache_get_config(c, &got));
  assert_kvp_ok(kvp_cache_group_destroy(g));
  assert_kvp_ok(kvp_cache_destroy(c));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_handles__stale_cache_is_refused_after_new_caches),
      cmocka_unit_test(test_handles__every_destroyed_handle_stays_refused_under_churn),
      cmocka_unit_test(test_handles__pool_of_a_destroyed_cache_never_writes_a_new_one),
      cmocka_unit_test(test_handles__pool_tells_a_new_cache_at_its_caches_address),
      cmocka_unit_test(test_handles__group_and_cache_kinds_are_not_interchangeable),
  };
  return cmocka_run_group_tests_name("handles", tests, NULL, NULL);
}
