/* kvp_cache_export_dlpack: zero-copy DLPack export of cache views. */
#include "support.h"

#include <stdlib.h>

#include "kvpages/dlpack.h"

typedef struct fixture {
  kvp_cache *cache;
  kvp_config cfg;
} fixture;

static int make_cache(void **state, kvp_dtype dtype, kvp_layout layout, int64_t head_dim) {
  fixture *f = calloc(1, sizeof *f);
  if (f == NULL) return -1;
  f->cfg = kvp_test_config(3, 2, head_dim, 16, 5, dtype, layout);
  if (kvp_cache_create(&f->cfg, NULL, &f->cache) != KVP_OK) {
    free(f);
    return -1;
  }
  *state = f;
  return 0;
}
static int setup_v2_bf16(void **state) { return make_cache(state, KVP_DTYPE_BF16, KVP_LAYOUT_V2, 128); }
static int setup_v3_bf16(void **state) { return make_cache(state, KVP_DTYPE_BF16, KVP_LAYOUT_V3, 128); }
static int teardown(void **state) {
  fixture *f = *state;
  if (f == NULL) return 0;
  kvp_cache_destroy(f->cache);
  free(f);
  return 0;
}

/* The exported tensor describes exactly the view of kvp_cache_get_view. */
static void assert_matches_view(kvp_cache *cache, uint32_t layer, kvp_view_kind kind, const DLManagedTensor *t) {
  kvp_tensor v;
  int i;
  assert_kvp_ok(kvp_cache_get_view(cache, layer, kind, &v));
  assert_int_equal(t->dl_tensor.ndim, v.ndim);
  assert_non_null(t->dl_tensor.shape);
  assert_non_null(t->dl_tensor.strides);
  for (i = 0; i < v.ndim; ++i) {
    assert_int_equal(t->dl_tensor.shape[i], v.shape[i]);
    assert_int_equal(t->dl_tensor.strides[i], v.strides[i]);
  }
  assert_ptr_equal((char *)t->dl_tensor.data + t->dl_tensor.byte_offset, v.data);
  assert_int_equal(t->dl_tensor.device.device_type, kDLCPU);
  assert_int_equal(t->dl_tensor.device.device_id, 0);
}

static void test_dlpack__every_view_matches_get_view(void **state) {
  fixture *f = *state;
  kvp_view_kind kind;
  uint32_t layer;
  for (layer = 0; layer < 3; ++layer) {
    for (kind = KVP_VIEW_PAGES; kind <= KVP_VIEW_REFERENCE_VALUES; ++kind) {
      DLManagedTensor *t = NULL;
      kvp_tensor pages;
      assert_kvp_ok(kvp_cache_export_dlpack(f->cache, layer, kind, 0, &t));
      assert_non_null(t);
      assert_non_null(t->deleter);
      assert_matches_view(f->cache, layer, kind, t);
      /* data is the start of the layer's buffer; the view starts byte_offset bytes into it. */
      assert_kvp_ok(kvp_cache_get_view(f->cache, layer, KVP_VIEW_PAGES, &pages));
      assert_ptr_equal(t->dl_tensor.data, pages.data);
      t->deleter(t);
    }
  }
}

/* bf16 maps to kDLBfloat 16; the address of key/value element (page, row, head, lane) through
 * the DLPack strides is the one of the v2 layout [P, S, 2H, D] with K/V interleaved per head. */
static void test_dlpack__v2_key_value_addresses_follow_the_layout(void **state) {
  fixture *f = *state;
  const int64_t S = 16, H = 2, D = 128;
  int kv;
  for (kv = 0; kv < 2; ++kv) {
    DLManagedTensor *t = NULL;
    kvp_tensor pages;
    uint64_t rng = 7;
    int n;
    assert_kvp_ok(kvp_cache_export_dlpack(f->cache, 1, kv ? KVP_VIEW_VALUES : KVP_VIEW_KEYS, 0, &t));
    assert_int_equal(t->dl_tensor.dtype.code, kDLBfloat);
    assert_int_equal(t->dl_tensor.dtype.bits, 16);
    assert_int_equal(t->dl_tensor.dtype.lanes, 1);
    assert_int_equal(t->dl_tensor.ndim, 4);
    assert_int_equal(t->dl_tensor.shape[0], 5);
    assert_int_equal(t->dl_tensor.shape[1], S);
    assert_int_equal(t->dl_tensor.shape[2], H);
    assert_int_equal(t->dl_tensor.shape[3], D);
    assert_kvp_ok(kvp_cache_get_view(f->cache, 1, KVP_VIEW_PAGES, &pages));
    for (n = 0; n < 200; ++n) {
      const int64_t p = kvp_test_rand_range(&rng, 0, 4), s = kvp_test_rand_range(&rng, 0, S - 1);
      const int64_t h = kvp_test_rand_range(&rng, 0, H - 1), d = kvp_test_rand_range(&rng, 0, D - 1);
      const int64_t *st = t->dl_tensor.strides;
      const char *got = (const char *)t->dl_tensor.data + t->dl_tensor.byte_offset +
                        2 * (p * st[0] + s * st[1] + h * st[2] + d * st[3]);
      const int64_t expect = ((p * S + s) * 2 * H + 2 * h + kv) * D + d;
      assert_ptr_equal(got, (const char *)pages.data + 2 * expect);
    }
    t->deleter(t);
  }
}

/* Zero-copy: a write through the exported tensor is visible through the cache's own view. */
static void test_dlpack__writes_through_the_tensor_reach_the_cache(void **state) {
  fixture *f = *state;
  DLManagedTensor *t = NULL;
  kvp_tensor keys;
  uint16_t *elem;
  assert_kvp_ok(kvp_cache_export_dlpack(f->cache, 2, KVP_VIEW_KEYS, 0, &t));
  elem = (uint16_t *)((char *)t->dl_tensor.data + t->dl_tensor.byte_offset) +
         (3 * t->dl_tensor.strides[0] + 5 * t->dl_tensor.strides[1] + 1 * t->dl_tensor.strides[2] + 9);
  *elem = 0x3f80; /* bf16 1.0 */
  assert_kvp_ok(kvp_cache_get_view(f->cache, 2, KVP_VIEW_KEYS, &keys));
  assert_int_equal(((uint16_t *)keys.data)[3 * keys.strides[0] + 5 * keys.strides[1] + keys.strides[2] + 9], 0x3f80);
  t->deleter(t);
}

static void test_dlpack__dtype_mapping(void **state) {
  static const struct {
    kvp_dtype dtype;
    uint8_t code, bits;
  } cases[] = {{KVP_DTYPE_F32, kDLFloat, 32}, {KVP_DTYPE_F16, kDLFloat, 16}, {KVP_DTYPE_BF16, kDLBfloat, 16},
               {KVP_DTYPE_F8_E4M3FN, kDLUInt, 8}, {KVP_DTYPE_F8_E5M2, kDLUInt, 8}};
  size_t i;
  (void)state;
  for (i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
    kvp_config cfg = kvp_test_config(1, 2, 128, 32, 3, cases[i].dtype, KVP_LAYOUT_V3);
    kvp_cache *cache = NULL;
    DLManagedTensor *t = NULL;
    assert_kvp_ok(kvp_cache_create(&cfg, NULL, &cache));
    assert_kvp_ok(kvp_cache_export_dlpack(cache, 0, KVP_VIEW_PAGES, 0, &t));
    assert_int_equal(t->dl_tensor.dtype.code, cases[i].code);
    assert_int_equal(t->dl_tensor.dtype.bits, cases[i].bits);
    assert_int_equal(t->dl_tensor.dtype.lanes, 1);
    assert_int_equal(t->dl_tensor.dtype.bits, kvp_dtype_bits(cases[i].dtype));
    assert_matches_view(cache, 0, KVP_VIEW_PAGES, t);
    t->deleter(t);
    assert_kvp_ok(kvp_cache_destroy(cache));
  }
}

/* The deleter never touches the cache: calling it after the cache is gone is fine (ASan). */
static void test_dlpack__deleter_may_run_after_cache_destroy(void **state) {
  fixture *f = *state;
  DLManagedTensor *a = NULL, *b = NULL;
  assert_kvp_ok(kvp_cache_export_dlpack(f->cache, 0, KVP_VIEW_PAGES, 0, &a));
  assert_kvp_ok(kvp_cache_export_dlpack(f->cache, 0, KVP_VIEW_VALUES, 0, &b));
  assert_true(a != b);
  assert_kvp_ok(kvp_cache_destroy(f->cache));
  f->cache = NULL;
  a->deleter(a);
  b->deleter(b);
}

static void test_dlpack__bad_arguments_are_rejected(void **state) {
  fixture *f = *state;
  DLManagedTensor *sentinel = (DLManagedTensor *)&sentinel;
  DLManagedTensor *t = sentinel;
  assert_kvp_status(kvp_cache_export_dlpack(f->cache, 0, KVP_VIEW_PAGES, 0, NULL), KVP_ERR_INVALID_ARGUMENT, "out");
  assert_kvp_status(kvp_cache_export_dlpack(f->cache, 3, KVP_VIEW_PAGES, 0, &t), KVP_ERR_INVALID_ARGUMENT, "3");
  assert_null(t);
  t = sentinel;
  assert_kvp_status(kvp_cache_export_dlpack(f->cache, 0, 6, 0, &t), KVP_ERR_INVALID_ARGUMENT, "6");
  assert_null(t);
  t = sentinel;
  assert_kvp_status(kvp_cache_export_dlpack(f->cache, 0, KVP_VIEW_PAGES, 0x4, &t), KVP_ERR_UNSUPPORTED, "0x4");
  assert_null(t);
  t = sentinel;
  assert_kvp_status(kvp_cache_export_dlpack(NULL, 0, KVP_VIEW_PAGES, 0, &t), KVP_ERR_INVALID_HANDLE, "");
  assert_null(t);
  /* A successful call clears the message. */
  assert_kvp_ok(kvp_cache_export_dlpack(f->cache, 0, KVP_VIEW_PAGES, 0, &t));
  assert_string_equal(kvp_last_error_message(), "");
  t->deleter(t);
}

static void test_dlpack__destroyed_cache_is_rejected(void **state) {
  fixture *f = *state;
  DLManagedTensor *t = NULL;
  kvp_cache *dead = f->cache;
  assert_kvp_ok(kvp_cache_destroy(f->cache));
  f->cache = NULL;
  assert_kvp_status(kvp_cache_export_dlpack(dead, 0, KVP_VIEW_PAGES, 0, &t), KVP_ERR_INVALID_HANDLE, "");
}

/* A handle of another kind (metadata) cast to a cache is rejected without being used. */
static void test_dlpack__wrong_kind_handle_is_rejected(void **state) {
  kvp_metadata *md = NULL;
  DLManagedTensor *t = (DLManagedTensor *)&md; /* any non-NULL sentinel */
  (void)state;
  assert_kvp_ok(kvp_metadata_create_empty(KVP_LAYOUT_V3, 4, 1, 1, 0, &md));
  assert_kvp_status(kvp_cache_export_dlpack((kvp_cache *)(void *)md, 0, KVP_VIEW_PAGES, 0, &t), KVP_ERR_INVALID_HANDLE,
                    "");
  assert_null(t);
  assert_kvp_ok(kvp_metadata_destroy(md));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_dlpack__every_view_matches_get_view, setup_v3_bf16, teardown),
      cmocka_unit_test_setup_teardown(test_dlpack__every_view_matches_get_view, setup_v2_bf16, teardown),
      cmocka_unit_test_setup_teardown(test_dlpack__v2_key_value_addresses_follow_the_layout, setup_v2_bf16, teardown),
      cmocka_unit_test_setup_teardown(test_dlpack__writes_through_the_tensor_reach_the_cache, setup_v3_bf16, teardown),
      cmocka_unit_test(test_dlpack__dtype_mapping),
      cmocka_unit_test_setup_teardown(test_dlpack__deleter_may_run_after_cache_destroy, setup_v3_bf16, teardown),
      cmocka_unit_test_setup_teardown(test_dlpack__bad_arguments_are_rejected, setup_v3_bf16, teardown),
      cmocka_unit_test_setup_teardown(test_dlpack__destroyed_cache_is_rejected, setup_v3_bf16, teardown),
      cmocka_unit_test(test_dlpack__wrong_kind_handle_is_rejected),
  };
  return cmocka_run_group_tests_name("dlpack", tests, NULL, NULL);
}
