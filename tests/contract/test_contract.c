/* Contract tests (STYLE.md §4.10 item 7) for every function of kvpages/{status,types,config,cache,group}.h:
 * NULL pointers, destroyed / wrong-kind / foreign handles, double destroy, destroy(NULL), the
 * misuse handler, options struct_size / abi_version skew, zeroed options, the thread-local
 * message (empty after success, set after failure, per thread) and an OOM loop over
 * kvp_cache_create with the countdown test allocator. */
#include "support.h"

#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#define FILL 0x5C

/* ---- misuse handler ----------------------------------------------------------------------- */

static int g_misuse_token;
static char g_last_misuse[256];
static int g_misuse_bad_args; /* calls with a wrong user_data or an empty description */

/* No cmocka assertion in here: this runs inside the library (C++ frames), so nothing may jump
 * out of it; the tests check what it recorded. function_called() only fails when a call was not
 * expected, as STYLE.md §4.10 prescribes. */
static void KVP_CALL on_misuse(const char *what, void *user_data) {
  function_called();
  if (user_data != &g_misuse_token || what == NULL || what[0] == '\0') g_misuse_bad_args++;
  snprintf(g_last_misuse, sizeof g_last_misuse, "%s", what ? what : "");
}

static int install_handler(void **state) {
  (void)state;
  kvp_set_misuse_handler(on_misuse, &g_misuse_token);
  g_last_misuse[0] = '\0';
  g_misuse_bad_args = 0;
  return 0;
}

static int remove_handler(void **state) {
  (void)state;
  kvp_set_misuse_handler(NULL, NULL);
  assert_int_equal(g_misuse_bad_args, 0);
  return 0;
}

/* Destroyed and forged handles are detected without reading freed memory only with API armor
 * (the default); skip those cases in a build that says it has none. */
static void require_api_armor(void) {
  if (strstr(kvp_build_info(), "api_armor=off") != NULL) skip();
}

static kvp_config small_config(void) {
  return kvp_test_config(2, 2, 128, 8, 3, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
}

static kvp_cache *new_cache(void) {
  kvp_config cfg = small_config();
  kvp_cache *c = NULL;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &c));
  assert_non_null(c);
  return c;
}

/* Calls every function taking a cache handle with `h` and expects KVP_ERR_INVALID_HANDLE, a
 * message, the misuse handler being called, and every output left unchanged. */
static void expect_every_handle_call_rejected(kvp_cache *h, const char *substr) {
  kvp_config cfg, cfg0;
  kvp_layout_info li, li0;
  kvp_tensor t, t0;
  kvp_device_type dt = 0x7777;
  int32_t id = 0x6666;
  kvp_status as = 0x5555;
  memset(&cfg, FILL, sizeof cfg);
  cfg0 = cfg;
  memset(&li, FILL, sizeof li);
  li.struct_size = sizeof li;
  li0 = li;
  memset(&t, FILL, sizeof t);
  t0 = t;

  expect_function_call(on_misuse);
  assert_kvp_status(kvp_cache_get_config(h, &cfg), KVP_ERR_INVALID_HANDLE, substr);
  assert_memory_equal(&cfg, &cfg0, sizeof cfg);
  expect_function_call(on_misuse);
  assert_kvp_status(kvp_cache_get_layout(h, &li), KVP_ERR_INVALID_HANDLE, substr);
  assert_memory_equal(&li, &li0, sizeof li);
  expect_function_call(on_misuse);
  assert_kvp_status(kvp_cache_get_device(h, &dt, &id), KVP_ERR_INVALID_HANDLE, substr);
  assert_int_equal(dt, 0x7777);
  assert_int_equal(id, 0x6666);
  for (kvp_view_kind k = KVP_VIEW_PAGES; k <= KVP_VIEW_REFERENCE_VALUES; k++) {
    expect_function_call(on_misuse);
    assert_kvp_status(kvp_cache_get_view(h, 0, k, &t), KVP_ERR_INVALID_HANDLE, substr);
    assert_memory_equal(&t, &t0, sizeof t);
  }
  kvp_shard_info si, si0;
  memset(&si, FILL, sizeof si);
  si.struct_size = sizeof si;
  si0 = si;
  expect_function_call(on_misuse);
  assert_kvp_status(kvp_cache_get_shard(h, &si), KVP_ERR_INVALID_HANDLE, substr);
  assert_memory_equal(&si, &si0, sizeof si);
  expect_function_call(on_misuse);
  assert_kvp_status(kvp_cache_get_async_error(h, &as), KVP_ERR_INVALID_HANDLE, substr);
  assert_int_equal(as, 0x5555);
  expect_function_call(on_misuse);
  assert_kvp_status(kvp_cache_clear_async_error(h), KVP_ERR_INVALID_HANDLE, substr);
  if (h != NULL) { /* destroy(NULL) is a documented no-op */
    expect_function_call(on_misuse);
    assert_kvp_status(kvp_cache_destroy(h), KVP_ERR_INVALID_HANDLE, substr);
  }
}

/* ---- handles -------------------------------------------------------------------------------- */

static void test_contract__null_handle(void **state) {
  (void)state;
  expect_every_handle_call_rejected(NULL, "");
}

static void test_contract__destroy_null_is_ok(void **state) {
  (void)state;
  /* not misuse: the handler must not be called (cmocka fails on an unexpected function_called) */
  assert_kvp_ok(kvp_cache_destroy(NULL));
  assert_string_equal(kvp_last_error_message(), "");
}

static void test_contract__destroyed_handle(void **state) {
  (void)state;
  require_api_armor();
  kvp_cache *c = new_cache();
  assert_kvp_ok(kvp_cache_destroy(c));
  expect_every_handle_call_rejected(c, "");
  /* a live cache is unaffected by the rejected calls on a dead one */
  kvp_cache *d = new_cache();
  kvp_config cfg = KVP_CONFIG_INIT;
  assert_kvp_ok(kvp_cache_get_config(d, &cfg));
  assert_kvp_ok(kvp_cache_destroy(d));
}

static void test_contract__double_destroy(void **state) {
  (void)state;
  require_api_armor();
  kvp_cache *c = new_cache();
  assert_kvp_ok(kvp_cache_destroy(c));
  expect_function_call(on_misuse);
  assert_kvp_status(kvp_cache_destroy(c), KVP_ERR_INVALID_HANDLE, "");
  expect_function_call(on_misuse);
  assert_kvp_status(kvp_cache_destroy(c), KVP_ERR_INVALID_HANDLE, "");
}

/* A struct whose first four bytes are another kind's magic ('KVPM', the metadata magic, and
 * 'KVPP', the pool magic), cast through void *. */
static void test_contract__wrong_kind_handle(void **state) {
  (void)state;
  static const uint32_t magics[] = {0x4D50564Bu /* 'KVPM' */, 0x5050564Bu /* 'KVPP' */};
  for (size_t i = 0; i < 2; i++) {
    struct {
      uint32_t magic;
      uint32_t state;
      void *impl;
      unsigned char rest[64];
    } fake;
    memset(&fake, 0, sizeof fake);
    fake.magic = magics[i];
    fake.state = 1;
    void *vp = &fake;
    expect_every_handle_call_rejected((kvp_cache *)vp, "");
  }
}

static void test_contract__foreign_pointer_handle(void **state) {
  (void)state;
  /* random bytes */
  unsigned char junk[128];
  uint64_t seed = 42;
  for (size_t i = 0; i < sizeof junk; i++) junk[i] = (unsigned char)kvp_test_rand(&seed);
  void *vp = junk;
  expect_every_handle_call_rejected((kvp_cache *)vp, "");
  /* a config record is not a cache */
  kvp_config cfg = small_config();
  vp = &cfg;
  expect_every_handle_call_rejected((kvp_cache *)vp, "");
  /* a struct with the cache magic that the library never created ('KVPC', state open) */
  require_api_armor();
  struct {
    uint32_t magic;
    uint32_t state;
    void *impl;
  } forged = {0x4350564Bu, 1, NULL};
  vp = &forged;
  expect_every_handle_call_rejected((kvp_cache *)vp, "");
}

static void test_contract__misuse_message_names_the_function(void **state) {
  (void)state;
  expect_function_call(on_misuse);
  assert_kvp_status(kvp_cache_clear_async_error(NULL), KVP_ERR_INVALID_HANDLE, "kvp_cache_clear_async_error");
  assert_non_null(strstr(g_last_misuse, "kvp_cache_clear_async_error"));
  /* after removing the handler, misuse still returns the status (and calls nothing) */
  kvp_set_misuse_handler(NULL, NULL);
  assert_kvp_status(kvp_cache_destroy((kvp_cache *)(void *)g_last_misuse), KVP_ERR_INVALID_HANDLE, "");
  kvp_set_misuse_handler(on_misuse, &g_misuse_token);
}

/* ---- group handles (group.h) ---------------------------------------------------------------- */

/* Calls every function taking a group handle with `g`: KVP_ERR_INVALID_HANDLE with `substr`, the
 * misuse handler called, outputs unchanged. */
static void expect_every_group_call_rejected(kvp_cache_group *g, const char *substr) {
  uint32_t n = 0x4444;
  kvp_cache *c = (kvp_cache *)(uintptr_t)0x99;
  kvp_tensor kv[1];
  memset(kv, 0, sizeof kv);
  expect_function_call(on_misuse);
  assert_kvp_status(kvp_cache_group_get_num_shards(g, &n), KVP_ERR_INVALID_HANDLE, substr);
  assert_int_equal(n, 0x4444);
  expect_function_call(on_misuse);
  assert_kvp_status(kvp_cache_group_get_shard(g, 0, 0, &c), KVP_ERR_INVALID_HANDLE, substr);
  assert_ptr_equal(c, (kvp_cache *)(uintptr_t)0x99);
  expect_function_call(on_misuse);
  assert_kvp_status(kvp_cache_group_concatenate(g, 0, kv, kv, 1, NULL, NULL), KVP_ERR_INVALID_HANDLE, substr);
  if (g != NULL) { /* destroy(NULL) is a documented no-op */
    expect_function_call(on_misuse);
    assert_kvp_status(kvp_cache_group_destroy(g), KVP_ERR_INVALID_HANDLE, substr);
  }
}

static kvp_cache_group *new_group(void) {
  kvp_config cfg = small_config();
  kvp_cache_group *g = NULL;
  assert_kvp_ok(kvp_cache_group_create(&cfg, NULL, 0, NULL, &g));
  assert_non_null(g);
  return g;
}

/* NULL, destroyed and wrong-kind groups; a group where a cache is expected; a borrowed shard
 * destroyed on its own (refused, and it keeps working until the group goes). */
static void test_contract__group_handles(void **state) {
  (void)state;
  expect_every_group_call_rejected(NULL, "NULL handle");
  assert_kvp_ok(kvp_cache_group_destroy(NULL));
  assert_string_equal(kvp_last_error_message(), "");
  kvp_cache_group *g = new_group();
  kvp_cache *c = new_cache();
  void *vp = c;
  expect_every_group_call_rejected((kvp_cache_group *)vp, "wrong handle kind: got a kvp_cache");
  vp = g;
  expect_every_handle_call_rejected((kvp_cache *)vp, "wrong handle kind: got a kvp_cache_group");
  kvp_cache *s = NULL;
  assert_kvp_ok(kvp_cache_group_get_shard(g, 0, 0, &s));
  expect_function_call(on_misuse);
  assert_kvp_status(kvp_cache_destroy(s), KVP_ERR_INVALID_HANDLE, "borrowed handle");
  kvp_config cfg = KVP_CONFIG_INIT;
  assert_kvp_ok(kvp_cache_get_config(s, &cfg));
  assert_kvp_ok(kvp_cache_group_destroy(g));
  assert_kvp_ok(kvp_cache_destroy(c));
  require_api_armor();
  expect_every_group_call_rejected(g, "destroyed handle");
  expect_every_handle_call_rejected(s, "destroyed handle");
}

static void test_contract__null_pointers_group(void **state) {
  (void)state;
  kvp_config cfg = small_config();
  kvp_cache_group *g = (kvp_cache_group *)(uintptr_t)0x99;
  assert_kvp_status(kvp_cache_group_create(NULL, NULL, 0, NULL, &g), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_null(g);
  assert_kvp_status(kvp_cache_group_create(&cfg, NULL, 0, NULL, NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  g = new_group();
  assert_kvp_status(kvp_cache_group_get_num_shards(g, NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_cache_group_get_shard(g, 0, 0, NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  kvp_tensor kv[1];
  memset(kv, 0, sizeof kv);
  expect_function_call(on_misuse); /* a NULL metadata handle */
  assert_kvp_status(kvp_cache_group_concatenate(g, 0, kv, kv, 1, NULL, NULL), KVP_ERR_INVALID_HANDLE, "NULL");
  int32_t pages[] = {1};
  kvp_batch_request req = {0, 1, pages, 1};
  kvp_metadata *md = NULL;
  assert_kvp_ok(kvp_metadata_build(&cfg, &req, 1, NULL, NULL, &md));
  assert_kvp_status(kvp_cache_group_concatenate(g, 0, NULL, kv, 1, md, NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_cache_group_concatenate(g, 0, kv, NULL, 1, md, NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_ok(kvp_metadata_destroy(md));
  assert_kvp_ok(kvp_cache_group_destroy(g));
}

/* ---- NULL pointers: every function of the four headers -------------------------------------- */

static void test_contract__null_pointers_status_and_types(void **state) {
  (void)state;
  /* status.h: these never fail */
  assert_non_null(kvp_status_name(KVP_OK));
  assert_non_null(kvp_last_error_message());
  assert_true(kvp_last_error_copy(NULL, 0) == strlen(kvp_last_error_message()));
  kvp_set_misuse_handler(NULL, NULL);
  kvp_set_misuse_handler(on_misuse, &g_misuse_token);
  assert_non_null(kvp_version_string());
  assert_non_null(kvp_build_info());
  assert_true(kvp_version_number() > 0);
  assert_kvp_ok(kvp_check_abi(KVP_VERSION_NUMBER));
  /* types.h */
  kvp_dtype d = 0xABCu;
  kvp_layout l = 0xABCu;
  assert_kvp_status(kvp_dtype_from_string(NULL, &d), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_dtype_from_string("bf16", NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_layout_from_string(NULL, &l), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_layout_from_string("v3", NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_int_equal(d, 0xABCu);
  assert_int_equal(l, 0xABCu);
  assert_null(kvp_dtype_name(0xDEADu));
  assert_null(kvp_layout_name(0xDEADu));
  assert_int_equal(kvp_dtype_bits(0xDEADu), 0);
  assert_kvp_status(kvp_cdiv(1, 2, NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_align_to_multiple(1, 2, NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_true(kvp_previous_power_of_2(0) == 0);
  assert_kvp_status(kvp_dtype_packing(KVP_DTYPE_BF16, NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_page_size_bytes(128, 8, 128, KVP_DTYPE_BF16, NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_num_slices_per_kv_cache_update_page(4096, NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  uint16_t bits = 0x3f80u;
  assert_kvp_status(kvp_convert(NULL, KVP_DTYPE_BF16, &bits, KVP_DTYPE_F16, 1), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_convert(&bits, KVP_DTYPE_BF16, NULL, KVP_DTYPE_F16, 1), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_int_equal(bits, 0x3f80u);
}

static void test_contract__null_pointers_config(void **state) {
  (void)state;
  kvp_config cfg = small_config();
  kvp_config_options o;
  assert_kvp_ok(kvp_config_options_init(&o, sizeof o));
  o.num_hidden_layers = 1;
  o.num_kv_heads = 1;
  o.kv_head_dim_size = 128;
  o.max_model_length = 64;
  o.budget_bytes = 1 << 24;
  kvp_layout_info li;
  li.struct_size = sizeof li;
  kvp_plan p;
  p.struct_size = sizeof p;
  int64_t n = 0;
  kvp_memory_stats m;
  memset(&m, 0, sizeof m);
  assert_kvp_status(kvp_config_init(NULL, sizeof(kvp_config)), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_config_validate(NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_hbm_budget_bytes(NULL, 1, 0.9, KVP_BUDGET_FREE, 0, &n), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_hbm_budget_bytes(&m, 1, 0.9, KVP_BUDGET_FREE, 0, NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_device_memory_stats(KVP_DEVICE_CPU, 0, NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_config_options_init(NULL, sizeof o), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_config_create(NULL, &cfg), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_config_create(&o, NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_config_get_layout(NULL, &li), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_config_get_layout(&cfg, NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_config_padded_num_slices(NULL, 0, 0, &n), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_config_padded_num_slices(&cfg, 0, 0, NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_config_plan(NULL, &p), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_config_plan(&cfg, NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  kvp_shard_info si = KVP_SHARD_INFO_INIT;
  assert_kvp_status(kvp_config_get_shard(NULL, 0, 0, &si), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_config_get_shard(&cfg, 0, 0, NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_int_equal(si.struct_size, sizeof si);
  assert_int_equal(si.tp_size, 0); /* untouched */
}

static void test_contract__null_pointers_cache(void **state) {
  (void)state;
  kvp_config cfg = small_config();
  kvp_cache *c = (kvp_cache *)(uintptr_t)0x99;
  assert_kvp_status(kvp_cache_options_init(NULL, sizeof(kvp_cache_options)), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_cache_create(NULL, NULL, &c), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_null(c);
  assert_kvp_status(kvp_cache_create(&cfg, NULL, NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  c = (kvp_cache *)(uintptr_t)0x99;
  assert_kvp_status(kvp_cache_create_shard(NULL, 0, 0, NULL, &c), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_null(c);
  assert_kvp_status(kvp_cache_create_shard(&cfg, 0, 0, NULL, NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  c = new_cache();
  assert_kvp_status(kvp_cache_get_shard(c, NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_cache_get_config(c, NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_cache_get_layout(c, NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_ok(kvp_cache_get_device(c, NULL, NULL)); /* both outputs optional */
  assert_kvp_status(kvp_cache_get_view(c, 0, KVP_VIEW_KEYS, NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_cache_get_async_error(c, NULL), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void test_contract__set_host_allocator(void **state) {
  (void)state;
  kvp_test_alloc_state st = {-1, 0, 0};
  kvp_host_allocator a = kvp_test_allocator(&st);
  kvp_host_allocator half = a;
  half.free = NULL;
  assert_kvp_status(kvp_set_host_allocator(&half), KVP_ERR_INVALID_ARGUMENT, "alloc and free");
  half = a;
  half.alloc = NULL;
  assert_kvp_status(kvp_set_host_allocator(&half), KVP_ERR_INVALID_ARGUMENT, "alloc and free");
  assert_kvp_ok(kvp_set_host_allocator(&a));
  assert_string_equal(kvp_last_error_message(), "");
  kvp_cache *c = new_cache(); /* allocated through the new default, and freed through it later */
  assert_true(st.allocations > 0);
  assert_kvp_ok(kvp_set_host_allocator(NULL)); /* the built-in again; c keeps its allocator */
  const long before = st.allocations;
  kvp_cache *d = new_cache();
  assert_int_equal(st.allocations, before);
  assert_kvp_ok(kvp_cache_destroy(d));
  assert_kvp_ok(kvp_cache_destroy(c));
  assert_int_equal(st.live, 0);
}

/* ---- options struct skew (STYLE.md §4.5) ------------------------------------------------------ */

/* Sizes of version 1 of the options structs on LP64 (fields only ever appended). */
#define KVP_CACHE_OPTIONS_V1_SIZE 24u
#define KVP_CACHE_OPTIONS_V2_SIZE 32u /* 1.2: + flags, _reserved */
#define KVP_CONFIG_OPTIONS_V1_SIZE 152u

typedef struct cache_opts_plus {
  kvp_cache_options o;
  unsigned char tail[8];
} cache_opts_plus;

typedef struct config_opts_plus {
  kvp_config_options o;
  unsigned char tail[8];
} config_opts_plus;

static void test_contract__cache_options_struct_skew(void **state) {
  (void)state;
  if (sizeof(void *) == 8) {
    assert_int_equal(sizeof(kvp_cache_options), KVP_CACHE_OPTIONS_V2_SIZE);
    assert_int_equal(offsetof(kvp_cache_options, flags), KVP_CACHE_OPTIONS_V1_SIZE);
  }
  assert_int_equal(offsetof(cache_opts_plus, tail), sizeof(kvp_cache_options));
  kvp_config cfg = small_config();
  kvp_cache *c = NULL;
  cache_opts_plus big;

  /* current size */
  memset(&big, 0, sizeof big);
  big.o.struct_size = (uint32_t)sizeof(kvp_cache_options);
  big.o.abi_version = KVP_CACHE_OPTIONS_VERSION;
  assert_kvp_ok(kvp_cache_create(&cfg, &big.o, &c));
  assert_kvp_ok(kvp_cache_destroy(c));
  /* v1 size (a 1.0/1.1 caller): accepted, and the bytes after it are not read */
  if (sizeof(void *) == 8) {
    big.o.struct_size = KVP_CACHE_OPTIONS_V1_SIZE;
    big.o.abi_version = 1;
    big.o.flags = 0xFFFFFFFFu;
    big.o._reserved = 0xFFFFFFFFu;
    assert_kvp_ok(kvp_cache_create(&cfg, &big.o, &c));
    assert_kvp_ok(kvp_cache_destroy(c));
    big.o.flags = 0;
    big.o._reserved = 0;
    big.o.abi_version = KVP_CACHE_OPTIONS_VERSION;
  }
  /* a newer caller: current + 8 with a zero tail is accepted */
  big.o.struct_size = (uint32_t)sizeof big;
  assert_kvp_ok(kvp_cache_create(&cfg, &big.o, &c));
  assert_kvp_ok(kvp_cache_destroy(c));
  /* ... with a non-zero tail it is refused: a feature would be silently ignored */
  for (size_t i = 0; i < sizeof big.tail; i++) {
    memset(big.tail, 0, sizeof big.tail);
    big.tail[i] = 1;
    c = (kvp_cache *)(uintptr_t)0x1;
    assert_kvp_status(kvp_cache_create(&cfg, &big.o, &c), KVP_ERR_UNSUPPORTED, "");
    assert_null(c);
  }
  memset(big.tail, 0, sizeof big.tail);
  /* smaller than v1 */
  big.o.struct_size = KVP_CACHE_OPTIONS_V1_SIZE - 8;
  assert_kvp_status(kvp_cache_create(&cfg, &big.o, &c), KVP_ERR_VERSION_MISMATCH, "struct_size");
  big.o.struct_size = 0;
  assert_kvp_status(kvp_cache_create(&cfg, &big.o, &c), KVP_ERR_VERSION_MISMATCH, "struct_size");
  /* abi_version 0 or unknown */
  big.o.struct_size = (uint32_t)sizeof(kvp_cache_options);
  big.o.abi_version = 0;
  assert_kvp_status(kvp_cache_create(&cfg, &big.o, &c), KVP_ERR_VERSION_MISMATCH, "abi_version");
  big.o.abi_version = KVP_CACHE_OPTIONS_VERSION + 1;
  assert_kvp_status(kvp_cache_create(&cfg, &big.o, &c), KVP_ERR_VERSION_MISMATCH, "abi_version");
  /* zeroed with only size and version: valid (CPU, built-in allocator) */
  kvp_cache_options z;
  memset(&z, 0, sizeof z);
  z.struct_size = sizeof z;
  z.abi_version = KVP_CACHE_OPTIONS_VERSION;
  assert_kvp_ok(kvp_cache_create(&cfg, &z, &c));
  kvp_device_type dt;
  assert_kvp_ok(kvp_cache_get_device(c, &dt, NULL));
  assert_int_equal(dt, KVP_DEVICE_CPU);
  assert_kvp_ok(kvp_cache_destroy(c));
  /* zeroed with only the size: abi_version 0 */
  z.abi_version = 0;
  assert_kvp_status(kvp_cache_create(&cfg, &z, &c), KVP_ERR_VERSION_MISMATCH, "abi_version");
  /* kvp_cache_options_init with a larger caller size zero-fills what it knows */
  memset(&big, FILL, sizeof big);
  assert_kvp_ok(kvp_cache_options_init(&big.o, (uint32_t)sizeof big));
  assert_int_equal(big.o.abi_version, KVP_CACHE_OPTIONS_VERSION);
  assert_int_equal(big.o.device_type, 0);
  assert_null(big.o.allocator);
  assert_kvp_ok(kvp_cache_options_init(&big.o, KVP_CACHE_OPTIONS_V1_SIZE));
  assert_int_equal(big.o.struct_size, KVP_CACHE_OPTIONS_V1_SIZE);
}

static kvp_config_options valid_config_options(void) {
  kvp_config_options o;
  memset(&o, 0, sizeof o);
  o.struct_size = sizeof o;
  o.abi_version = KVP_CONFIG_OPTIONS_VERSION;
  o.num_hidden_layers = 2;
  o.num_kv_heads = 2;
  o.kv_head_dim_size = 128;
  o.max_model_length = 512;
  o.budget_bytes = 64LL << 20;
  return o;
}

static void test_contract__config_options_struct_skew(void **state) {
  (void)state;
  if (sizeof(void *) == 8) assert_int_equal(offsetof(kvp_config_options, data_parallel_size), KVP_CONFIG_OPTIONS_V1_SIZE);
  assert_int_equal(offsetof(config_opts_plus, tail), sizeof(kvp_config_options));
  kvp_config ref, out;
  config_opts_plus big;
  memset(&big, 0, sizeof big);
  big.o = valid_config_options();
  /* zeroed options with size + version + the required model fields */
  assert_kvp_ok(kvp_config_create(&big.o, &ref));
  /* current + 8, zero tail: same result */
  big.o.struct_size = (uint32_t)sizeof big;
  memset(&out, FILL, sizeof out);
  assert_kvp_ok(kvp_config_create(&big.o, &out));
  assert_memory_equal(&out, &ref, sizeof out);
  /* non-zero tail */
  big.tail[7] = 0x80;
  kvp_config before;
  memset(&out, FILL, sizeof out);
  before = out;
  assert_kvp_status(kvp_config_create(&big.o, &out), KVP_ERR_UNSUPPORTED, "");
  assert_memory_equal(&out, &before, sizeof out);
  big.tail[7] = 0;
  /* too small, abi 0, unknown abi */
  big.o.struct_size = 16;
  assert_kvp_status(kvp_config_create(&big.o, &out), KVP_ERR_VERSION_MISMATCH, "struct_size");
  big.o.struct_size = (uint32_t)sizeof(kvp_config_options);
  big.o.abi_version = 0;
  assert_kvp_status(kvp_config_create(&big.o, &out), KVP_ERR_VERSION_MISMATCH, "abi_version");
  big.o.abi_version = KVP_CONFIG_OPTIONS_VERSION + 1;
  assert_kvp_status(kvp_config_create(&big.o, &out), KVP_ERR_VERSION_MISMATCH, "abi_version");
  assert_memory_equal(&out, &before, sizeof out);
  /* a zeroed struct with only size and version lacks the required model fields */
  kvp_config_options z;
  memset(&z, 0, sizeof z);
  z.struct_size = sizeof z;
  z.abi_version = KVP_CONFIG_OPTIONS_VERSION;
  /* SPEC §2.2 step 1 checks the head dims first */
  assert_kvp_status(kvp_config_create(&z, &out), KVP_ERR_INVALID_ARGUMENT, "kv_head_dim_size");
  assert_memory_equal(&out, &before, sizeof out);
}

/* kvp_config and the output structs carry struct_size too. */
static void test_contract__record_struct_sizes(void **state) {
  (void)state;
  kvp_config cfg = small_config();
  cfg.struct_size = 8;
  assert_kvp_status(kvp_config_validate(&cfg), KVP_ERR_VERSION_MISMATCH, "struct_size");
  kvp_cache *c = (kvp_cache *)(uintptr_t)0x1;
  assert_kvp_status(kvp_cache_create(&cfg, NULL, &c), KVP_ERR_VERSION_MISMATCH, "struct_size");
  assert_null(c);
  cfg = small_config();
  cfg.abi_version = 0;
  assert_kvp_status(kvp_config_validate(&cfg), KVP_ERR_VERSION_MISMATCH, "abi_version");
  cfg = small_config();
  kvp_plan p;
  memset(&p, 0, sizeof p);
  assert_kvp_status(kvp_config_plan(&cfg, &p), KVP_ERR_VERSION_MISMATCH, "struct_size");
  kvp_layout_info li;
  memset(&li, 0, sizeof li);
  assert_kvp_status(kvp_config_get_layout(&cfg, &li), KVP_ERR_VERSION_MISMATCH, "struct_size");
  kvp_shard_info si;
  memset(&si, 0, sizeof si);
  assert_kvp_status(kvp_config_get_shard(&cfg, 0, 0, &si), KVP_ERR_VERSION_MISMATCH, "struct_size");
  c = (kvp_cache *)(uintptr_t)0x1;
  cfg.struct_size = 8;
  assert_kvp_status(kvp_cache_create_shard(&cfg, 0, 0, NULL, &c), KVP_ERR_VERSION_MISMATCH, "struct_size");
  assert_null(c);
  cfg = small_config();
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &c));
  assert_kvp_status(kvp_cache_get_shard(c, &si), KVP_ERR_VERSION_MISMATCH, "struct_size");
  assert_kvp_ok(kvp_cache_destroy(c));
  kvp_config small;
  assert_kvp_status(kvp_config_init(&small, 4), KVP_ERR_VERSION_MISMATCH, "struct_size");
  kvp_config_options o;
  assert_kvp_status(kvp_config_options_init(&o, 4), KVP_ERR_VERSION_MISMATCH, "struct_size");
  kvp_cache_options co;
  assert_kvp_status(kvp_cache_options_init(&co, 4), KVP_ERR_VERSION_MISMATCH, "struct_size");
}

/* ---- thread-local message ------------------------------------------------------------------ */

static void test_contract__message_empty_after_success_set_after_failure(void **state) {
  (void)state;
  kvp_config cfg = small_config();
  kvp_layout_info li;
  li.struct_size = sizeof li;
  kvp_cache *c = NULL;
  int64_t n;
  /* each pair: a failing call, then a succeeding call of the same function */
  assert_int_equal(kvp_config_get_layout(NULL, &li), KVP_ERR_INVALID_ARGUMENT);
  assert_true(kvp_last_error_message()[0] != '\0');
  assert_kvp_ok(kvp_config_get_layout(&cfg, &li));
  assert_string_equal(kvp_last_error_message(), "");
  assert_int_equal(kvp_cache_create(NULL, NULL, &c), KVP_ERR_INVALID_ARGUMENT);
  assert_true(kvp_last_error_message()[0] != '\0');
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &c));
  assert_string_equal(kvp_last_error_message(), "");
  expect_function_call(on_misuse);
  assert_int_equal(kvp_cache_clear_async_error(NULL), KVP_ERR_INVALID_HANDLE);
  assert_true(kvp_last_error_message()[0] != '\0');
  assert_kvp_ok(kvp_cache_clear_async_error(c));
  assert_string_equal(kvp_last_error_message(), "");
  assert_int_equal(kvp_num_slices_per_kv_cache_update_page(0, &n), KVP_ERR_INVALID_ARGUMENT);
  assert_true(kvp_last_error_message()[0] != '\0');
  assert_kvp_ok(kvp_cache_destroy(c));
  assert_string_equal(kvp_last_error_message(), "");
}

typedef struct thread_result {
  pthread_barrier_t *barrier;
  int which;
  kvp_status status;
  char message[512];
  int message_after_success_empty;
} thread_result;

static void *failing_thread(void *arg) {
  thread_result *r = (thread_result *)arg;
  int64_t out;
  kvp_dtype d;
  if (r->which == 0) r->status = kvp_cdiv(5, 0, &out);
  else r->status = kvp_dtype_from_string("thread_b_dtype", &d);
  /* both threads have failed before either reads its message */
  pthread_barrier_wait(r->barrier);
  snprintf(r->message, sizeof r->message, "%s", kvp_last_error_message());
  pthread_barrier_wait(r->barrier);
  /* a success on this thread clears only this thread's message */
  if (r->which == 0) {
    kvp_cdiv(5, 1, &out);
    r->message_after_success_empty = kvp_last_error_message()[0] == '\0';
  }
  pthread_barrier_wait(r->barrier);
  if (r->which == 1) r->message_after_success_empty = kvp_last_error_message()[0] == '\0';
  return NULL;
}

static void test_contract__two_threads_see_their_own_messages(void **state) {
  (void)state;
  /* the main thread has its own failure too */
  kvp_layout l;
  assert_int_equal(kvp_layout_from_string("main_thread_layout", &l), KVP_ERR_NOT_FOUND);
  pthread_barrier_t barrier;
  assert_int_equal(pthread_barrier_init(&barrier, NULL, 2), 0);
  thread_result a, b;
  memset(&a, 0, sizeof a);
  memset(&b, 0, sizeof b);
  a.barrier = b.barrier = &barrier;
  a.which = 0;
  b.which = 1;
  pthread_t ta, tb;
  assert_int_equal(pthread_create(&ta, NULL, failing_thread, &a), 0);
  assert_int_equal(pthread_create(&tb, NULL, failing_thread, &b), 0);
  pthread_join(ta, NULL);
  pthread_join(tb, NULL);
  pthread_barrier_destroy(&barrier);
  assert_int_equal(a.status, KVP_ERR_INVALID_ARGUMENT);
  assert_int_equal(b.status, KVP_ERR_NOT_FOUND);
  assert_true(a.message[0] != '\0');
  assert_non_null(strstr(a.message, "zero"));
  assert_null(strstr(a.message, "thread_b_dtype"));
  assert_non_null(strstr(b.message, "thread_b_dtype"));
  assert_null(strstr(b.message, "zero"));
  assert_true(a.message_after_success_empty);
  assert_false(b.message_after_success_empty); /* b's message survived a's success */
  /* the main thread's message is untouched by both */
  assert_non_null(strstr(kvp_last_error_message(), "main_thread_layout"));
}

/* ---- OOM loop (STYLE.md §4.10 item 4) ---------------------------------------------------------- */

static void test_contract__cache_create_out_of_memory_loop(void **state) {
  (void)state;
  kvp_config cfg = kvp_test_config(3, 2, 128, 8, 4, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  kvp_test_alloc_state st;
  kvp_host_allocator a = kvp_test_allocator(&st);
  kvp_cache_options o = KVP_CACHE_OPTIONS_INIT;
  o.allocator = &a;
  kvp_cache *c = NULL;
  long n;
  for (n = 0; n < 10000; n++) {
    st.fail_after = n;
    st.allocations = 0;
    st.live = 0;
    c = (kvp_cache *)(uintptr_t)0x1;
    kvp_status s = kvp_cache_create(&cfg, &o, &c);
    if (s == KVP_OK) break;
    if (s != KVP_ERR_OUT_OF_MEMORY)
      fail_msg("fail_after=%ld: %s: %s", n, kvp_status_name(s), kvp_last_error_message());
    assert_true(kvp_last_error_message()[0] != '\0');
    assert_null(c);
    if (st.live != 0) fail_msg("fail_after=%ld: %ld blocks leaked", n, st.live);
    assert_int_equal(st.allocations, n); /* it really ran into the countdown */
  }
  assert_true(n < 10000);
  assert_true(n >= 3); /* at least one buffer per layer goes through the allocator */
  assert_non_null(c);
  assert_true(st.live > 0);
  /* the cache works */
  kvp_layout_info li;
  li.struct_size = sizeof li;
  assert_kvp_ok(kvp_cache_get_layout(c, &li));
  for (uint32_t l = 0; l < 3; l++) {
    kvp_tensor pages, k;
    assert_kvp_ok(kvp_cache_get_view(c, l, KVP_VIEW_PAGES, &pages));
    const unsigned char *b = (const unsigned char *)pages.data;
    for (int64_t i = 0; i < li.layer_bytes; i++) assert_int_equal(b[i], 0);
    memset(pages.data, 0x11 * (int)(l + 1), (size_t)li.layer_bytes);
    assert_kvp_ok(kvp_cache_get_view(c, l, KVP_VIEW_KEYS, &k));
    assert_int_equal(((const unsigned char *)k.data)[0], 0x11 * (l + 1));
  }
  kvp_config got = KVP_CONFIG_INIT;
  assert_kvp_ok(kvp_cache_get_config(c, &got));
  assert_memory_equal(&got, &cfg, sizeof cfg);
  assert_kvp_ok(kvp_cache_destroy(c));
  assert_int_equal(st.live, 0);
  /* cmocka's own leak check at the end of the test covers every test_malloc block */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_contract__null_handle, install_handler, remove_handler),
      cmocka_unit_test_setup_teardown(test_contract__destroy_null_is_ok, install_handler, remove_handler),
      cmocka_unit_test_setup_teardown(test_contract__destroyed_handle, install_handler, remove_handler),
      cmocka_unit_test_setup_teardown(test_contract__double_destroy, install_handler, remove_handler),
      cmocka_unit_test_setup_teardown(test_contract__wrong_kind_handle, install_handler, remove_handler),
      cmocka_unit_test_setup_teardown(test_contract__foreign_pointer_handle, install_handler, remove_handler),
      cmocka_unit_test_setup_teardown(test_contract__misuse_message_names_the_function, install_handler, remove_handler),
      cmocka_unit_test_setup_teardown(test_contract__null_pointers_status_and_types, install_handler, remove_handler),
      cmocka_unit_test_setup_teardown(test_contract__null_pointers_config, install_handler, remove_handler),
      cmocka_unit_test_setup_teardown(test_contract__null_pointers_cache, install_handler, remove_handler),
      cmocka_unit_test_setup_teardown(test_contract__group_handles, install_handler, remove_handler),
      cmocka_unit_test_setup_teardown(test_contract__null_pointers_group, install_handler, remove_handler),
      cmocka_unit_test_setup_teardown(test_contract__set_host_allocator, install_handler, remove_handler),
      cmocka_unit_test_setup_teardown(test_contract__cache_options_struct_skew, install_handler, remove_handler),
      cmocka_unit_test_setup_teardown(test_contract__config_options_struct_skew, install_handler, remove_handler),
      cmocka_unit_test_setup_teardown(test_contract__record_struct_sizes, install_handler, remove_handler),
      cmocka_unit_test_setup_teardown(test_contract__message_empty_after_success_set_after_failure, install_handler, remove_handler),
      cmocka_unit_test_setup_teardown(test_contract__two_threads_see_their_own_messages, install_handler, remove_handler),
      cmocka_unit_test_setup_teardown(test_contract__cache_create_out_of_memory_loop, install_handler, remove_handler),
  };
  return cmocka_run_group_tests_name("contract", tests, NULL, NULL);
}
