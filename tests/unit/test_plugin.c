/* kvp_get_api: the dlopen function table. */
#include "support.h"

#include <stdlib.h>

#include "kvpages/dlpack.h"

typedef struct entry {
  const char *field;
  size_t offset;
  void (*direct)(void);
} entry;

static const entry entries[] = {
#define KVP_API_ENTRY(f) {#f, offsetof(kvp_api_v1, f), (void (*)(void))kvp_##f},
#include "../package/api_names.h"
#undef KVP_API_ENTRY
};
static const size_t num_entries = sizeof entries / sizeof entries[0];

static void test_plugin__version_1_is_served(void **state) {
  const kvp_api_v1 *api = kvp_get_api(KVP_API_VERSION_1);
  (void)state;
  assert_non_null(api);
  assert_int_equal(api->struct_size, sizeof(kvp_api_v1));
  assert_int_equal(api->api_version, KVP_API_VERSION_1);
  assert_ptr_equal(kvp_get_api(KVP_API_VERSION_1), api); /* one static table */
}

static void test_plugin__unknown_versions_get_null(void **state) {
  (void)state;
  assert_null(kvp_get_api(0));
  assert_null(kvp_get_api(KVP_API_VERSION_1 + 1));
  assert_null(kvp_get_api(0xffffffffu));
}

/* Every field points at the function of the same name, fields are in list order and cover the
 * whole struct (no field is missing from api_names.h and none is NULL). */
static void test_plugin__every_field_is_the_named_function(void **state) {
  const kvp_api_v1 *api = kvp_get_api(KVP_API_VERSION_1);
  const size_t first = offsetof(kvp_api_v1, api_version) + sizeof(uint32_t);
  size_t i;
  (void)state;
  assert_int_equal((sizeof(kvp_api_v1) - first) / sizeof(void (*)(void)), num_entries);
  for (i = 0; i < num_entries; ++i) {
    void (*fn)(void);
    memcpy(&fn, (const char *)api + entries[i].offset, sizeof fn);
    if (fn != entries[i].direct) fail_msg("field %s is not kvp_%s", entries[i].field, entries[i].field);
    assert_int_equal(entries[i].offset, first + i * sizeof(void (*)(void)));
  }
}

static void test_plugin__calls_through_the_table_work(void **state) {
  const kvp_api_v1 *api = kvp_get_api(KVP_API_VERSION_1);
  kvp_config cfg = kvp_test_config(2, 2, 128, 16, 4, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  kvp_cache *cache = NULL;
  DLManagedTensor *t = NULL;
  int64_t q = 0;
  (void)state;
  assert_string_equal(api->status_name(KVP_ERR_INVALID_HANDLE), "KVP_ERR_INVALID_HANDLE");
  assert_kvp_ok(api->cdiv(17, 4, &q));
  assert_int_equal(q, 5);
  assert_kvp_ok(api->cache_create(&cfg, NULL, &cache));
  assert_kvp_ok(api->cache_export_dlpack(cache, 1, KVP_VIEW_KEYS, 0, &t));
  assert_int_equal(t->dl_tensor.shape[2], 2);
  t->deleter(t);
  assert_kvp_status(api->cache_export_dlpack(cache, 2, KVP_VIEW_KEYS, 0, &t), KVP_ERR_INVALID_ARGUMENT, "2");
  assert_kvp_ok(api->cache_destroy(cache));
}

/* kvp_get_api neither sets nor clears the thread's message. */
static void test_plugin__get_api_leaves_the_message_alone(void **state) {
  int64_t q;
  (void)state;
  assert_kvp_status(kvp_cdiv(1, 0, &q), KVP_ERR_INVALID_ARGUMENT, "");
  assert_non_null(kvp_get_api(KVP_API_VERSION_1));
  assert_null(kvp_get_api(7));
  assert_true(kvp_last_error_message()[0] != '\0');
}

/* KVP_API_HAS tells a host whether a (later appended) field exists in the loaded table. */
static void test_plugin__api_has_checks_struct_size(void **state) {
  kvp_api_v1 fake;
  (void)state;
  memset(&fake, 0, sizeof fake);
  fake.struct_size = (uint32_t)sizeof fake;
  assert_true(KVP_API_HAS(&fake, status_name));
  assert_true(KVP_API_HAS(&fake, cache_export_dlpack));
  fake.struct_size = (uint32_t)offsetof(kvp_api_v1, cache_export_dlpack);
  assert_false(KVP_API_HAS(&fake, cache_export_dlpack));
  assert_true(KVP_API_HAS(&fake, status_name));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_plugin__version_1_is_served),
      cmocka_unit_test(test_plugin__unknown_versions_get_null),
      cmocka_unit_test(test_plugin__every_field_is_the_named_function),
      cmocka_unit_test(test_plugin__calls_through_the_table_work),
      cmocka_unit_test(test_plugin__get_api_leaves_the_message_alone),
      cmocka_unit_test(test_plugin__api_has_checks_struct_size),
  };
  return cmocka_run_group_tests_name("plugin", tests, NULL, NULL);
}
