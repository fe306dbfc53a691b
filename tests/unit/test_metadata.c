/* Runtime metadata handles: borrowed (zero-copy) and owning (create_empty), getters, handle
 * checks. */
#include <stdio.h>
#include <stdlib.h>

#include "support.h"

static void v3_desc(kvp_metadata_desc *d, const int32_t *pt, const int32_t *cl, const int32_t *qsl,
                    const int32_t *rd) {
  assert_kvp_ok(kvp_metadata_desc_init(d, sizeof *d));
  d->page_size = 4;
  d->pages_tables = pt;
  d->num_reqs = 2;
  d->pages_per_req = 3;
  d->context_lens = cl;
  d->context_lens_len = 2;
  d->query_start_loc = qsl;
  d->query_start_loc_len = 3;
  d->request_distribution = rd;
  d->request_distribution_len = 3;
}

static void test_metadata__desc_init_defaults(void **state) {
  (void)state;
  kvp_metadata_desc d;
  memset(&d, 0x5A, sizeof d);
  assert_kvp_ok(kvp_metadata_desc_init(&d, sizeof d));
  assert_int_equal(d.struct_size, sizeof d);
  assert_int_equal(d.abi_version, KVP_METADATA_DESC_VERSION);
  assert_int_equal(d.version, KVP_LAYOUT_V3);
  assert_int_equal(d.device_type, KVP_DEVICE_CPU);
  assert_null(d.pages_tables);
  assert_int_equal(d.num_reqs, 0);
  assert_kvp_status(kvp_metadata_desc_init(NULL, sizeof d), KVP_ERR_INVALID_ARGUMENT, "desc");
  assert_kvp_status(kvp_metadata_desc_init(&d, 8), KVP_ERR_VERSION_MISMATCH, "");
}

static void test_metadata__borrowed_arrays_are_zero_copy(void **state) {
  (void)state;
  int32_t pt[6] = {1, 2, 0, 3, 0, 0}, cl[2] = {6, 2}, qsl[3] = {0, 1, 3}, rd[3] = {1, 2, 2}, pos[3] = {5, 0, 1};
  kvp_metadata_desc d, back;
  kvp_metadata *md = NULL;
  const int32_t *p;
  int64_t n;
  v3_desc(&d, pt, cl, qsl, rd);
  d.position_ids = pos;
  d.position_ids_len = 3;
  assert_kvp_ok(kvp_metadata_create(&d, &md));
  assert_non_null(md);
  assert_kvp_ok(kvp_metadata_get_array(md, KVP_METADATA_PAGES_TABLES, &p, &n));
  assert_ptr_equal(p, pt);
  assert_int_equal(n, 6);
  assert_kvp_ok(kvp_metadata_get_array(md, KVP_METADATA_CONTEXT_LENS, &p, &n));
  assert_ptr_equal(p, cl);
  assert_int_equal(n, 2);
  assert_kvp_ok(kvp_metadata_get_array(md, KVP_METADATA_QUERY_START_LOC, &p, &n));
  assert_ptr_equal(p, qsl);
  assert_int_equal(n, 3);
  assert_kvp_ok(kvp_metadata_get_array(md, KVP_METADATA_REQUEST_DISTRIBUTION, &p, &n));
  assert_ptr_equal(p, rd);
  assert_int_equal(n, 3);
  assert_kvp_ok(kvp_metadata_get_array(md, KVP_METADATA_POSITION_IDS, &p, &n));
  assert_ptr_equal(p, pos);
  assert_int_equal(n, 3);
  assert_kvp_ok(kvp_metadata_get_array(md, KVP_METADATA_SLOT_MAPPING, &p, &n));
  assert_null(p);
  assert_int_equal(n, 0);
  assert_kvp_ok(kvp_metadata_get_array(md, KVP_METADATA_NUM_SEQS, NULL, NULL));
  assert_kvp_status(kvp_metadata_get_array(md, 99u, &p, &n), KVP_ERR_INVALID_ARGUMENT, "unknown field 99");
  /* caller changes are visible (borrowed, not copied) */
  cl[1] = 3;
  assert_kvp_ok(kvp_metadata_get_array(md, KVP_METADATA_CONTEXT_LENS, &p, &n));
  assert_int_equal(p[1], 3);

  back.struct_size = sizeof back;
  assert_kvp_ok(kvp_metadata_get_desc(md, &back));
  assert_int_equal(back.version, KVP_LAYOUT_V3);
  assert_int_equal(back.page_size, 4);
  assert_ptr_equal(back.pages_tables, pt);
  assert_int_equal(back.num_reqs, 2);
  assert_int_equal(back.pages_per_req, 3);
  assert_ptr_equal(back.position_ids, pos);
  assert_kvp_status(kvp_metadata_get_desc(md, NULL), KVP_ERR_INVALID_ARGUMENT, "out");
  back.struct_size = 4;
  assert_kvp_status(kvp_metadata_get_desc(md, &back), KVP_ERR_VERSION_MISMATCH, "");
  assert_kvp_ok(kvp_metadata_destroy(md));
}

static void test_metadata__structure_errors(void **state) {
  (void)state;
  int32_t pt[6] = {0}, cl[2] = {0}, qsl[3] = {0}, rd[3] = {0}, one[1] = {0};
  kvp_metadata_desc d;
  kvp_metadata *md = (kvp_metadata *)0x1;

  v3_desc(&d, pt, cl, qsl, rd);
  d.context_lens_len = 3;
  assert_kvp_status(kvp_metadata_create(&d, &md), KVP_ERR_INVALID_ARGUMENT, "context_lens has 3 entries");
  assert_null(md);
  v3_desc(&d, pt, cl, qsl, rd);
  d.query_start_loc_len = 2;
  assert_kvp_status(kvp_metadata_create(&d, &md), KVP_ERR_INVALID_ARGUMENT, "query_start_loc has 2 entries");
  v3_desc(&d, pt, cl, qsl, rd);
  d.request_distribution_len = 2;
  assert_kvp_status(kvp_metadata_create(&d, &md), KVP_ERR_INVALID_ARGUMENT, "request_distribution has 2");
  v3_desc(&d, pt, cl, qsl, rd);
  d.num_reqs = -1;
  assert_kvp_status(kvp_metadata_create(&d, &md), KVP_ERR_INVALID_ARGUMENT, "negative");
  v3_desc(&d, NULL, cl, qsl, rd);
  assert_kvp_status(kvp_metadata_create(&d, &md), KVP_ERR_INVALID_ARGUMENT, "pages_tables is NULL");
  v3_desc(&d, pt, cl, NULL, rd);
  d.query_start_loc_len = 0;
  assert_kvp_status(kvp_metadata_create(&d, &md), KVP_ERR_INVALID_ARGUMENT, "needs query_start_loc");
  v3_desc(&d, pt, cl, qsl, NULL);
  d.request_distribution_len = 0;
  assert_kvp_status(kvp_metadata_create(&d, &md), KVP_ERR_INVALID_ARGUMENT, "request_distribution or num_seqs");
  /* ... num_seqs instead of a distribution is fine */
  d.num_seqs = one;
  d.num_seqs_len = 1;
  assert_kvp_ok(kvp_metadata_create(&d, &md));
  assert_kvp_ok(kvp_metadata_destroy(md));
  v3_desc(&d, pt, cl, qsl, rd);
  d.version = 7;
  assert_kvp_status(kvp_metadata_create(&d, &md), KVP_ERR_NOT_FOUND, "version 7");
  v3_desc(&d, pt, cl, qsl, rd);
  d.device_type = 42;
  assert_kvp_status(kvp_metadata_create(&d, &md), KVP_ERR_INVALID_ARGUMENT, "device_type 42");
  v3_desc(&d, pt, cl, qsl, rd);
  d.device_id = 1;
  assert_kvp_status(kvp_metadata_create(&d, &md), KVP_ERR_INVALID_ARGUMENT, "device_id");
  v3_desc(&d, pt, cl, qsl, rd);
  d.page_size = -4;
  assert_kvp_status(kvp_metadata_create(&d, &md), KVP_ERR_INVALID_ARGUMENT, "page_size");
  v3_desc(&d, pt, cl, qsl, rd);
  d.flags = 2; /* unknown flag bits, as the reserved field's before 1.3 */
  assert_kvp_status(kvp_metadata_create(&d, &md), KVP_ERR_UNSUPPORTED, "flags 0x2 has unknown bits");
  v3_desc(&d, pt, cl, qsl, rd);
  d.abi_version = 0;
  assert_kvp_status(kvp_metadata_create(&d, &md), KVP_ERR_VERSION_MISMATCH, "abi_version");
  /* v2 needs num_kv_update_slices; slot_mapping NULL with columns is an error */
  assert_kvp_ok(kvp_metadata_desc_init(&d, sizeof d));
  d.version = KVP_LAYOUT_V2;
  assert_kvp_status(kvp_metadata_create(&d, &md), KVP_ERR_INVALID_ARGUMENT, "num_kv_update_slices");
  d.num_kv_update_slices = one;
  d.num_kv_update_slices_len = 1;
  d.num_slices = 4;
  assert_kvp_status(kvp_metadata_create(&d, &md), KVP_ERR_INVALID_ARGUMENT, "slot_mapping is NULL");
  d.num_slices = 0;
  assert_kvp_ok(kvp_metadata_create(&d, &md));
  assert_kvp_ok(kvp_metadata_destroy(md));
  assert_kvp_status(kvp_metadata_create(NULL, &md), KVP_ERR_INVALID_ARGUMENT, "desc");
  assert_kvp_status(kvp_metadata_create(&d, NULL), KVP_ERR_INVALID_ARGUMENT, "out");
}

static void test_metadata__larger_struct_tail(void **state) {
  (void)state;
  struct {
    kvp_metadata_desc d;
    uint64_t tail;
  } big;
  kvp_metadata *md = NULL;
  int32_t one[1] = {0}, qsl[1] = {0};
  memset(&big, 0, sizeof big);
  assert_kvp_ok(kvp_metadata_desc_init(&big.d, sizeof big.d));
  big.d.struct_size = sizeof big;
  big.d.query_start_loc = qsl;
  big.d.query_start_loc_len = 1;
  big.d.num_seqs = one;
  big.d.num_seqs_len = 1;
  assert_kvp_ok(kvp_metadata_create(&big.d, &md));
  assert_kvp_ok(kvp_metadata_destroy(md));
  big.tail = 1;
  assert_kvp_status(kvp_metadata_create(&big.d, &md), KVP_ERR_UNSUPPORTED, "tail");
}

static void check_zero(const kvp_metadata *md, kvp_metadata_field f, int64_t expect_len) {
  const int32_t *p;
  int64_t n, i;
  assert_kvp_ok(kvp_metadata_get_array(md, f, &p, &n));
  assert_int_equal(n, expect_len);
  for (i = 0; i < n; ++i) assert_int_equal(p[i], 0);
}

static void test_metadata__create_empty_shapes(void **state) {
  (void)state;
  kvp_metadata *md = NULL;
  kvp_metadata_desc d;
  /* v3: num_tokens 16, 6 rows, 4 pages per row */
  assert_kvp_ok(kvp_metadata_create_empty(KVP_LAYOUT_V3, 16, 6, 4, 4, &md));
  check_zero(md, KVP_METADATA_PAGES_TABLES, 24);
  check_zero(md, KVP_METADATA_CONTEXT_LENS, 6);
  check_zero(md, KVP_METADATA_QUERY_START_LOC, 7);
  check_zero(md, KVP_METADATA_NUM_SEQS, 1);
  check_zero(md, KVP_METADATA_POSITION_IDS, 16);
  check_zero(md, KVP_METADATA_REQUEST_DISTRIBUTION, 3);
  check_zero(md, KVP_METADATA_SLOT_MAPPING, 0);
  check_zero(md, KVP_METADATA_NUM_KV_UPDATE_SLICES, 0);
  d.struct_size = sizeof d;
  assert_kvp_ok(kvp_metadata_get_desc(md, &d));
  assert_int_equal(d.version, KVP_LAYOUT_V3);
  assert_int_equal(d.page_size, 4);
  assert_int_equal(d.device_type, KVP_DEVICE_CPU);
  assert_kvp_ok(kvp_metadata_destroy(md));
  /* v2: slot_mapping is [3, num_tokens] (the reference's 1-D shape is fixed) */
  assert_kvp_ok(kvp_metadata_create_empty(KVP_LAYOUT_V2, 16, 6, 4, 0, &md));
  check_zero(md, KVP_METADATA_SLOT_MAPPING, 48);
  check_zero(md, KVP_METADATA_NUM_KV_UPDATE_SLICES, 1);
  check_zero(md, KVP_METADATA_REQUEST_DISTRIBUTION, 0);
  d.struct_size = sizeof d;
  assert_kvp_ok(kvp_metadata_get_desc(md, &d));
  assert_int_equal(d.num_slices, 16);
  assert_int_equal(d.version, KVP_LAYOUT_V2);
  assert_kvp_ok(kvp_metadata_destroy(md));
  /* default layout = v3; zero sizes are fine */
  assert_kvp_ok(kvp_metadata_create_empty(KVP_LAYOUT_DEFAULT, 0, 0, 0, 0, &md));
  check_zero(md, KVP_METADATA_QUERY_START_LOC, 1);
  check_zero(md, KVP_METADATA_REQUEST_DISTRIBUTION, 3);
  assert_kvp_ok(kvp_metadata_destroy(md));

  assert_kvp_status(kvp_metadata_create_empty(KVP_LAYOUT_V3, -1, 6, 4, 4, &md), KVP_ERR_INVALID_ARGUMENT, "num_tokens -1");
  assert_kvp_status(kvp_metadata_create_empty(KVP_LAYOUT_V3, 1, -6, 4, 4, &md), KVP_ERR_INVALID_ARGUMENT, "max_num_reqs -6");
  assert_kvp_status(kvp_metadata_create_empty(KVP_LAYOUT_V3, 1, 6, -4, 4, &md), KVP_ERR_INVALID_ARGUMENT, "max_pages -4");
  assert_kvp_status(kvp_metadata_create_empty(9, 1, 6, 4, 4, &md), KVP_ERR_NOT_FOUND, "version 9");
  assert_kvp_status(kvp_metadata_create_empty(KVP_LAYOUT_V3, 1, 6, 4, 4, NULL), KVP_ERR_INVALID_ARGUMENT, "out");
}

static void test_metadata__handle_checks(void **state) {
  (void)state;
  kvp_metadata *md = NULL;
  kvp_cache *cache = NULL;
  kvp_config cfg = kvp_test_config(1, 1, 8, 4, 4, KVP_DTYPE_F32, KVP_LAYOUT_V3);
  assert_kvp_ok(kvp_metadata_destroy(NULL));
  assert_kvp_ok(kvp_metadata_create_empty(KVP_LAYOUT_V3, 1, 1, 1, 0, &md));
  assert_kvp_ok(kvp_metadata_destroy(md));
  /* destroyed handle (registry) */
  assert_kvp_status(kvp_metadata_destroy(md), KVP_ERR_INVALID_HANDLE, "");
  assert_kvp_status(kvp_metadata_get_array(md, KVP_METADATA_NUM_SEQS, NULL, NULL), KVP_ERR_INVALID_HANDLE, "");
  assert_kvp_status(kvp_metadata_get_array(NULL, KVP_METADATA_NUM_SEQS, NULL, NULL), KVP_ERR_INVALID_HANDLE, "NULL");
  /* wrong kind */
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &cache));
  assert_kvp_status(kvp_metadata_destroy((kvp_metadata *)(void *)cache), KVP_ERR_INVALID_HANDLE, "");
  assert_kvp_ok(kvp_cache_destroy(cache));
}

static void test_metadata__empty_batch_writes_nothing(void **state) {
  (void)state;
  kvp_config cfg = kvp_test_config(1, 2, 8, 4, 5, KVP_DTYPE_F32, KVP_LAYOUT_V3);
  kvp_cache *cache = NULL;
  kvp_metadata *md = NULL;
  kvp_tensor pages, k;
  kvp_layout_info li;
  unsigned char *before;
  float data[2 * 8];
  size_t i;
  int v;
  for (i = 0; i < 16; ++i) data[i] = 1.0f + (float)i;
  k = kvp_test_tensor(data, KVP_DTYPE_F32, 1, 2, 8, KVP_DEVICE_CPU);
  for (v = 0; v < 2; ++v) {
    kvp_layout lay = v == 0 ? KVP_LAYOUT_V3 : KVP_LAYOUT_V2;
    cfg = kvp_test_config(1, 2, 8, 4, 5, KVP_DTYPE_F32, lay);
    assert_kvp_ok(kvp_cache_create(&cfg, NULL, &cache));
    li.struct_size = sizeof li;
    assert_kvp_ok(kvp_cache_get_layout(cache, &li));
    assert_kvp_ok(kvp_cache_get_view(cache, 0, KVP_VIEW_PAGES, &pages));
    for (i = 0; i < (size_t)li.layer_bytes; ++i) ((unsigned char *)pages.data)[i] = (unsigned char)(i * 7 + 3);
    before = (unsigned char *)malloc((size_t)li.layer_bytes);
    memcpy(before, pages.data, (size_t)li.layer_bytes);
    assert_kvp_ok(kvp_metadata_create_empty(lay, 1, 3, 16, 4, &md));
    assert_kvp_ok(kvp_concatenate(cache, 0, &k, &k, md, NULL));
    assert_memory_equal(before, pages.data, (size_t)li.layer_bytes);
    assert_kvp_ok(kvp_metadata_destroy(md));
    /* page size mismatch is rejected */
    assert_kvp_ok(kvp_metadata_create_empty(lay, 1, 3, 16, 8, &md));
    assert_kvp_status(kvp_concatenate(cache, 0, &k, &k, md, NULL), KVP_ERR_INVALID_ARGUMENT, "page_size 8");
    assert_kvp_ok(kvp_metadata_destroy(md));
    /* other layout is rejected */
    assert_kvp_ok(kvp_metadata_create_empty(v == 0 ? KVP_LAYOUT_V2 : KVP_LAYOUT_V3, 1, 3, 16, 4, &md));
    assert_kvp_status(kvp_concatenate(cache, 0, &k, &k, md, NULL), KVP_ERR_INVALID_ARGUMENT, "metadata is for layout");
    assert_kvp_ok(kvp_metadata_destroy(md));
    free(before);
    assert_kvp_ok(kvp_cache_destroy(cache));
  }
}

static void test_metadata__device_metadata_on_cpu_cache_is_rejected(void **state) {
  (void)state;
  kvp_config cfg = kvp_test_config(1, 1, 8, 4, 4, KVP_DTYPE_F32, KVP_LAYOUT_V3);
  kvp_cache *cache = NULL;
  kvp_metadata *md = NULL;
  kvp_metadata_desc d;
  kvp_tensor k;
  float data[8] = {0};
  /* pointers are never dereferenced for device metadata */
  const int32_t *fake = (const int32_t *)(uintptr_t)0x1000;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &cache));
  assert_kvp_ok(kvp_metadata_desc_init(&d, sizeof d));
  d.device_type = KVP_DEVICE_CUDA;
  d.pages_tables = fake;
  d.num_reqs = 1;
  d.pages_per_req = 1;
  d.context_lens = fake;
  d.context_lens_len = 1;
  d.query_start_loc = fake;
  d.query_start_loc_len = 2;
  d.request_distribution = fake;
  d.request_distribution_len = 3;
  assert_kvp_ok(kvp_metadata_create(&d, &md));
  k = kvp_test_tensor(data, KVP_DTYPE_F32, 1, 1, 8, KVP_DEVICE_CPU);
  assert_kvp_status(kvp_concatenate(cache, 0, &k, &k, md, NULL), KVP_ERR_INVALID_ARGUMENT, "CUDA device memory");
  assert_kvp_ok(kvp_metadata_destroy(md));
  assert_kvp_ok(kvp_cache_destroy(cache));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_metadata__desc_init_defaults),
      cmocka_unit_test(test_metadata__borrowed_arrays_are_zero_copy),
      cmocka_unit_test(test_metadata__structure_errors),
      cmocka_unit_test(test_metadata__larger_struct_tail),
      cmocka_unit_test(test_metadata__create_empty_shapes),
      cmocka_unit_test(test_metadata__handle_checks),
      cmocka_unit_test(test_metadata__empty_batch_writes_nothing),
      cmocka_unit_test(test_metadata__device_metadata_on_cpu_cache_is_rejected),
  };
  return cmocka_run_group_tests_name("metadata", tests, NULL, NULL);
}
