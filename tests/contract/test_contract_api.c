/* Contract tests (STYLE.md §4.10 item 7) for every public function that tests/contract/
 * test_contract.c does not cover: kvpages/{metadata,ops,pool,serialize,json,device,dlpack,
 * plugin}.h. For each function: every required pointer argument NULL (one at a time, the other
 * arguments valid) gives the documented status, a message naming the function and the argument,
 * and no change (outputs, cache bytes, pool state); every handle parameter rejects NULL,
 * destroyed, wrong-kind and foreign handles with KVP_ERR_INVALID_HANDLE and a misuse report;
 * destroy(NULL) is KVP_OK and a double destroy is refused; every success leaves the thread's
 * message empty. A completeness test fails when a public function has no contract test in
 * either contract file, and the kvp_get_api() table is checked against the functions. */
#define _POSIX_C_SOURCE 200809L
#include "support.h"

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "kvpages/dlpack.h"

#define FILL 0x5C
#define SENTINEL_PTR ((void *)(uintptr_t)0x1)

/* ---- misuse handler (as in test_contract.c) ------------------------------------------------ */

static int g_misuse_token;
static char g_last_misuse[256];
static int g_misuse_bad_args; /* calls with a wrong user_data or an empty description */

/* No cmocka assertion in here: it runs inside the library (C++ frames), nothing may jump out. */
static void KVP_CALL on_misuse(const char *what, void *user_data) {
  function_called();
  if (user_data != &g_misuse_token || what == NULL || what[0] == '\0') g_misuse_bad_args++;
  snprintf(g_last_misuse, sizeof g_last_misuse, "%s", what ? what : "");
}

/* Destroyed handles are detected without reading freed memory only with API armor (the
 * default); skip those cases in a build that says it has none. */
static void require_api_armor(void) {
  if (strstr(kvp_build_info(), "api_armor=off") != NULL) skip();
}

/* ---- fixture ------------------------------------------------------------------------------- */

#define LAYERS 2
#define HEADS 2
#define HEAD_DIM 128
#define PAGE 8
#define PAGES 4
#define T_NEW 3 /* tokens written by the fixture's metadata */

typedef struct fixture {
  kvp_config cfg;
  kvp_cache *cache;
  kvp_pool *pool;
  kvp_metadata *md; /* owning v3 metadata of one request writing T_NEW tokens into page 1 */
  kvp_seq_id seq;   /* a sequence of 5 tokens in `pool` */
  size_t layer_bytes;
  unsigned char *snap; /* every layer's bytes after setup */
  unsigned char *blob; /* the serialized cache */
  size_t blob_len;
  char dir[64];
  char blob_path[128];
  char out_path[128];
} fixture;

static fixture F;

static uint16_t g_key[T_NEW * HEADS * HEAD_DIM];
static uint16_t g_value[T_NEW * HEADS * HEAD_DIM];
static const int32_t g_tokens[16] = {11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26};

static kvp_tensor make_tensor(uint16_t *data) {
  return kvp_test_tensor(data, KVP_DTYPE_BF16, T_NEW, HEADS, HEAD_DIM, KVP_DEVICE_CPU);
}

static unsigned char *layer_ptr(kvp_cache *c, uint32_t layer) {
  kvp_tensor v;
  if (kvp_cache_get_view(c, layer, KVP_VIEW_PAGES, &v) != KVP_OK) return NULL;
  return (unsigned char *)v.data;
}

static void snapshot_cache(unsigned char *dst) {
  for (uint32_t l = 0; l < LAYERS; l++) memcpy(dst + l * F.layer_bytes, layer_ptr(F.cache, l), F.layer_bytes);
}

static void assert_cache_unchanged(void) {
  for (uint32_t l = 0; l < LAYERS; l++) {
    const unsigned char *p = layer_ptr(F.cache, l);
    assert_non_null(p);
    assert_memory_equal(p, F.snap + l * F.layer_bytes, F.layer_bytes);
  }
}

/* Everything a pool call could change, observed through the public API. */
typedef struct pool_snap {
  kvp_pool_stats st;
  size_t length, computed, count;
  int32_t pages[16];
  uint32_t ref[PAGES], flags[PAGES];
} pool_snap;

static void take_pool_snap(const kvp_pool *p, kvp_seq_id s, pool_snap *o) {
  memset(o, 0, sizeof *o);
  o->st.struct_size = sizeof o->st;
  assert_kvp_ok(kvp_pool_get_stats(p, &o->st));
  assert_kvp_ok(kvp_pool_get_sequence_length(p, s, &o->length, &o->computed));
  assert_kvp_ok(kvp_pool_get_page_table(p, s, o->pages, 16, &o->count));
  for (int32_t i = 0; i < PAGES; i++) assert_kvp_ok(kvp_pool_get_page_state(p, i, &o->ref[i], &o->flags[i]));
  assert_kvp_ok(kvp_pool_check_invariants(p));
}

static void assert_pool_unchanged(const pool_snap *before) {
  pool_snap now;
  take_pool_snap(F.pool, F.seq, &now);
  assert_memory_equal(&now, before, sizeof now);
}

static int count_dir_entries(const char *dir) {
  DIR *d = opendir(dir);
  int n = 0;
  struct dirent *e;
  if (d == NULL) return -1;
  while ((e = readdir(d)) != NULL)
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) n++;
  closedir(d);
  return n;
}

static int setup(void **state) {
  (void)state;
  memset(&F, 0, sizeof F);
  kvp_set_misuse_handler(on_misuse, &g_misuse_token);
  g_last_misuse[0] = '\0';
  g_misuse_bad_args = 0;
  for (size_t i = 0; i < sizeof g_key / sizeof g_key[0]; i++) {
    g_key[i] = (uint16_t)(0x3F80u + (i % 64)); /* bf16 values near 1.0 */
    g_value[i] = (uint16_t)(0xBF80u + (i % 32));
  }

  F.cfg = kvp_test_config(LAYERS, HEADS, HEAD_DIM, PAGE, PAGES, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  if (kvp_cache_create(&F.cfg, NULL, &F.cache) != KVP_OK) return -1;
  kvp_layout_info li;
  li.struct_size = sizeof li;
  if (kvp_cache_get_layout(F.cache, &li) != KVP_OK) return -1;
  F.layer_bytes = (size_t)li.layer_bytes;
  /* pseudo-random bytes, different in every page, so "unchanged" means something (a page copy
   * or a write of the blob below would show) */
  uint64_t seed = 0x5EED;
  for (uint32_t l = 0; l < LAYERS; l++) {
    unsigned char *p = layer_ptr(F.cache, l);
    if (p == NULL) return -1;
    for (size_t i = 0; i < F.layer_bytes; i++) p[i] = (unsigned char)kvp_test_rand(&seed);
  }

  kvp_pool_options po = KVP_POOL_OPTIONS_INIT;
  po.max_sequences = 8;
  if (kvp_pool_create(F.cache, &po, &F.pool) != KVP_OK) return -1;
  size_t reused = 0;
  if (kvp_pool_add_sequence(F.pool, g_tokens, 5, 0, 0, &F.seq, &reused) != KVP_OK) return -1;

  int32_t page1 = 1;
  kvp_batch_request req = {0, T_NEW, &page1, 1};
  if (kvp_metadata_build(&F.cfg, &req, 1, NULL, NULL, &F.md) != KVP_OK) return -1;

  if (kvp_serialized_size(F.cache, NULL, &F.blob_len) != KVP_OK) return -1;
  F.blob = malloc(F.blob_len);
  size_t written = 0;
  if (F.blob == NULL || kvp_serialize(F.cache, NULL, F.blob, F.blob_len, &written) != KVP_OK) return -1;
  if (written != F.blob_len) return -1;
  /* new bytes after serializing: the blob differs from the cache the tests compare against */
  for (uint32_t l = 0; l < LAYERS; l++) {
    unsigned char *p = layer_ptr(F.cache, l);
    for (size_t i = 0; i < F.layer_bytes; i++) p[i] = (unsigned char)kvp_test_rand(&seed);
  }
  F.snap = malloc(LAYERS * F.layer_bytes);
  if (F.snap == NULL) return -1;
  snapshot_cache(F.snap);

  snprintf(F.dir, sizeof F.dir, "/tmp/kvp_contract_api_XXXXXX");
  if (mkdtemp(F.dir) == NULL) return -1;
  snprintf(F.blob_path, sizeof F.blob_path, "%s/blob.kvp", F.dir);
  snprintf(F.out_path, sizeof F.out_path, "%s/out.kvp", F.dir);
  FILE *f = fopen(F.blob_path, "wb");
  if (f == NULL) return -1;
  size_t n = fwrite(F.blob, 1, F.blob_len, f);
  if (fclose(f) != 0 || n != F.blob_len) return -1;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  kvp_set_misuse_handler(NULL, NULL);
  if (F.md != NULL) assert_kvp_ok(kvp_metadata_destroy(F.md));
  if (F.pool != NULL) assert_kvp_ok(kvp_pool_destroy(F.pool));
  if (F.cache != NULL) assert_kvp_ok(kvp_cache_destroy(F.cache));
  free(F.snap);
  free(F.blob);
  if (F.dir[0] != '\0') {
    unlink(F.blob_path);
    unlink(F.out_path);
    rmdir(F.dir);
  }
  memset(&F, 0, sizeof F);
  assert_int_equal(g_misuse_bad_args, 0);
  return 0;
}

/* ---- callbacks ------------------------------------------------------------------------------- */

typedef struct reader {
  const unsigned char *p;
  size_t len, pos;
  int calls;
} reader;

static int32_t KVP_CALL read_mem(void *dst, size_t size, size_t *read_out, void *user_data) {
  reader *r = (reader *)user_data;
  size_t n = r->len - r->pos;
  if (n > size) n = size;
  r->calls++;
  memcpy(dst, r->p + r->pos, n);
  r->pos += n;
  *read_out = n;
  return 0;
}

typedef struct writer {
  size_t bytes;
  int calls;
} writer;

static int32_t KVP_CALL count_writer(const void *data, size_t size, void *user_data) {
  writer *w = (writer *)user_data;
  (void)data;
  w->calls++;
  w->bytes += size;
  return 0;
}

static int32_t KVP_CALL ignore_writer(const void *data, size_t size, void *user_data) {
  (void)data;
  (void)size;
  return user_data == NULL ? 0 : 1;
}

/* ---- assertions ------------------------------------------------------------------------------ */

/* The call returns `code`, and the message is non-empty and names the function and `what`. */
#define EXPECT_FAIL(call, code, fname, what)                                                     \
  do {                                                                                           \
    assert_kvp_status((call), (code), (fname));                                                  \
    if (strstr(kvp_last_error_message(), (what)) == NULL)                                        \
      fail_msg("%s: message '%s' lacks '%s'", #call, kvp_last_error_message(), (what));          \
  } while (0)

/* A NULL pointer argument: KVP_ERR_INVALID_ARGUMENT, the message names the function, the argument
 * and says NULL. No misuse report (a NULL pointer argument is not a bad handle). */
#define EXPECT_NULL_ARG(call, fname, arg)                                                        \
  do {                                                                                           \
    EXPECT_FAIL(call, KVP_ERR_INVALID_ARGUMENT, fname, arg);                                     \
    if (strstr(kvp_last_error_message(), "NULL") == NULL)                                        \
      fail_msg("%s: message '%s' does not say NULL", #call, kvp_last_error_message());           \
  } while (0)

/* What the message of a rejected handle must contain besides the function name and
 * "invalid handle": set by each handle test. */
static const char *g_what1 = "";
static const char *g_what2 = "";

/* A rejected handle: KVP_ERR_INVALID_HANDLE, the misuse handler called once with a description
 * naming the function, the message naming the function and the problem. */
#define EXPECT_BAD_HANDLE_REPORTED_AS(call, fname, misuse_fname)                                 \
  do {                                                                                           \
    g_last_misuse[0] = '\0';                                                                     \
    expect_function_call(on_misuse);                                                             \
    EXPECT_FAIL(call, KVP_ERR_INVALID_HANDLE, fname, "invalid handle");                          \
    if (strstr(kvp_last_error_message(), g_what1) == NULL ||                                     \
        strstr(kvp_last_error_message(), g_what2) == NULL)                                       \
      fail_msg("%s: message '%s' lacks '%s' or '%s'", #call, kvp_last_error_message(), g_what1, \
               g_what2);                                                                         \
    if (strstr(g_last_misuse, misuse_fname) == NULL)                                             \
      fail_msg("%s: misuse report '%s' does not name %s", #call, g_last_misuse, misuse_fname);   \
  } while (0)
#define EXPECT_BAD_HANDLE(call, fname) EXPECT_BAD_HANDLE_REPORTED_AS(call, fname, fname)

static void provoke_error(void) {
  int64_t q;
  assert_int_equal(kvp_cdiv(1, 0, &q), KVP_ERR_INVALID_ARGUMENT);
  assert_true(kvp_last_error_message()[0] != '\0');
}

/* ---- every call taking a handle, with a bad handle --------------------------------------------- */

/* Every function of the new headers taking a kvp_cache *, called with `h`; every other argument
 * valid. Nothing may change: outputs, files, callbacks, the fixture's cache and pool. */
static void expect_every_cache_call_rejected(kvp_cache *h) {
  pool_snap ps;
  take_pool_snap(F.pool, F.seq, &ps);
  kvp_tensor key = make_tensor(g_key), value = make_tensor(g_value);
  int32_t src[1] = {1}, dst[1] = {2};
  int dir_entries = count_dir_entries(F.dir);
  unsigned char *buf = malloc(F.blob_len + F.layer_bytes);
  unsigned char *buf0 = malloc(F.blob_len + F.layer_bytes);
  assert_non_null(buf);
  assert_non_null(buf0);
  memset(buf, FILL, F.blob_len + F.layer_bytes);
  memset(buf0, FILL, F.blob_len + F.layer_bytes);

  kvp_pool *pool = (kvp_pool *)SENTINEL_PTR;
  EXPECT_BAD_HANDLE(kvp_pool_create(h, NULL, &pool), "kvp_pool_create");
  assert_null(pool); /* documented: set to NULL on failure */
  EXPECT_BAD_HANDLE(kvp_concatenate(h, 0, &key, &value, F.md, NULL), "kvp_concatenate");
  float out_buf[T_NEW * HEADS * HEAD_DIM];
  memset(out_buf, FILL, sizeof out_buf);
  kvp_tensor out = kvp_test_tensor(out_buf, KVP_DTYPE_F32, T_NEW, HEADS, HEAD_DIM, KVP_DEVICE_CPU);
  EXPECT_BAD_HANDLE(kvp_attention(h, 0, &key, &key, &value, F.md, NULL, &out, NULL), "kvp_attention");
  for (size_t i = 0; i < sizeof out_buf; i++) assert_int_equal(((unsigned char *)out_buf)[i], FILL);
  EXPECT_BAD_HANDLE(kvp_cache_copy_pages(h, src, dst, 1, NULL), "kvp_cache_copy_pages");
  size_t n = 0x1234;
  EXPECT_BAD_HANDLE(kvp_serialized_size(h, NULL, &n), "kvp_serialized_size");
  assert_int_equal(n, 0x1234);
  EXPECT_BAD_HANDLE(kvp_serialize(h, NULL, buf, F.blob_len, &n), "kvp_serialize");
  assert_int_equal(n, 0x1234);
  writer w = {0, 0};
  EXPECT_BAD_HANDLE(kvp_serialize_to_writer(h, NULL, count_writer, &w), "kvp_serialize_to_writer");
  assert_int_equal(w.calls, 0);
  EXPECT_BAD_HANDLE(kvp_serialize_to_file(h, NULL, F.out_path), "kvp_serialize_to_file");
  assert_int_not_equal(access(F.out_path, F_OK), 0);
  assert_int_equal(count_dir_entries(F.dir), dir_entries); /* no temporary file left */
  EXPECT_BAD_HANDLE(kvp_deserialize_into(h, F.blob, F.blob_len, NULL, 0), "kvp_deserialize_into");
  reader r = {F.blob, F.blob_len, 0, 0};
  EXPECT_BAD_HANDLE(kvp_deserialize_into_from_reader(h, read_mem, &r, NULL, 0), "kvp_deserialize_into_from_reader");
  assert_int_equal(r.calls, 0);
  EXPECT_BAD_HANDLE(kvp_deserialize_into_from_file(h, F.blob_path, NULL, 0), "kvp_deserialize_into_from_file");
  const kvp_blob_ref ref = {F.blob, F.blob_len, NULL};
  EXPECT_BAD_HANDLE(kvp_deserialize_shards_into(h, &ref, 1), "kvp_deserialize_shards_into");
  EXPECT_BAD_HANDLE(kvp_cache_read_layer(h, 0, buf, F.layer_bytes, NULL), "kvp_cache_read_layer");
  EXPECT_BAD_HANDLE(kvp_cache_write_layer(h, 0, buf0, F.layer_bytes, NULL), "kvp_cache_write_layer");
  DLManagedTensor *t = (DLManagedTensor *)SENTINEL_PTR;
  EXPECT_BAD_HANDLE(kvp_cache_export_dlpack(h, 0, KVP_VIEW_KEYS, 0, &t), "kvp_cache_export_dlpack");
  assert_null(t); /* documented: set to NULL on failure */

  assert_memory_equal(buf, buf0, F.blob_len + F.layer_bytes);
  free(buf);
  free(buf0);
  assert_cache_unchanged();
  assert_pool_unchanged(&ps);
}

/* Every function taking a kvp_pool *, called with `h`. */
static void expect_every_pool_call_rejected(kvp_pool *h) {
  pool_snap ps;
  take_pool_snap(F.pool, F.seq, &ps);
  const kvp_seq_id s = F.seq;

  kvp_seq_id seq = {0xABCDu};
  size_t reused = 0x77;
  EXPECT_BAD_HANDLE(kvp_pool_add_sequence(h, g_tokens, 3, 0, 0, &seq, &reused), "kvp_pool_add_sequence");
  assert_int_equal(seq.id, 0xABCDu);
  assert_int_equal(reused, 0x77);
  EXPECT_BAD_HANDLE(kvp_pool_append(h, s, g_tokens, 1, NULL), "kvp_pool_append");
  EXPECT_BAD_HANDLE(kvp_pool_set_computed(h, s, 1), "kvp_pool_set_computed");
  EXPECT_BAD_HANDLE(kvp_pool_truncate(h, s, 1), "kvp_pool_truncate");
  kvp_seq_id child = {0xABCDu};
  EXPECT_BAD_HANDLE(kvp_pool_fork(h, s, 1, &child), "kvp_pool_fork");
  assert_int_equal(child.id, 0xABCDu);
  EXPECT_BAD_HANDLE(kvp_pool_free_sequence(h, s), "kvp_pool_free_sequence");
  size_t len = 0x55, comp = 0x66;
  EXPECT_BAD_HANDLE(kvp_pool_get_sequence_length(h, s, &len, &comp), "kvp_pool_get_sequence_length");
  assert_int_equal(len, 0x55);
  assert_int_equal(comp, 0x66);
  int32_t pages[4] = {-7, -7, -7, -7};
  size_t count = 0x44;
  EXPECT_BAD_HANDLE(kvp_pool_get_page_table(h, s, pages, 4, &count), "kvp_pool_get_page_table");
  assert_int_equal(count, 0x44);
  for (int i = 0; i < 4; i++) assert_int_equal(pages[i], -7);
  int32_t slots[2] = {-9, -9};
  EXPECT_BAD_HANDLE(kvp_pool_get_slots(h, s, 0, 2, slots), "kvp_pool_get_slots");
  assert_int_equal(slots[0], -9);
  assert_int_equal(slots[1], -9);
  kvp_batch_request req, req0;
  memset(&req, FILL, sizeof req);
  req0 = req;
  EXPECT_BAD_HANDLE(kvp_pool_get_batch_request(h, s, &req), "kvp_pool_get_batch_request");
  assert_memory_equal(&req, &req0, sizeof req);
  uint32_t ref = 0x33, flags = 0x22;
  EXPECT_BAD_HANDLE(kvp_pool_get_page_state(h, 1, &ref, &flags), "kvp_pool_get_page_state");
  assert_int_equal(ref, 0x33);
  assert_int_equal(flags, 0x22);
  kvp_pool_stats st, st0;
  memset(&st, FILL, sizeof st);
  st.struct_size = sizeof st;
  st0 = st;
  EXPECT_BAD_HANDLE(kvp_pool_get_stats(h, &st), "kvp_pool_get_stats");
  assert_memory_equal(&st, &st0, sizeof st);
  uint32_t shard = 0x55;
  EXPECT_BAD_HANDLE(kvp_pool_get_sequence_shard(h, s, &shard), "kvp_pool_get_sequence_shard");
  assert_int_equal(shard, 0x55);
  kvp_pool_shard_stats sst, sst0;
  memset(&sst, FILL, sizeof sst);
  sst.struct_size = sizeof sst;
  sst0 = sst;
  EXPECT_BAD_HANDLE(kvp_pool_get_shard_stats(h, 0, &sst), "kvp_pool_get_shard_stats");
  assert_memory_equal(&sst, &sst0, sizeof sst);
  kvp_pool_tier_stats tst, tst0;
  memset(&tst, FILL, sizeof tst);
  tst.struct_size = sizeof tst;
  tst0 = tst;
  EXPECT_BAD_HANDLE(kvp_pool_get_tier_stats(h, 0, &tst), "kvp_pool_get_tier_stats");
  assert_memory_equal(&tst, &tst0, sizeof tst);
  kvp_store *store = NULL;
  assert_kvp_ok(kvp_store_create_memory(1 << 20, NULL, &store));
  EXPECT_BAD_HANDLE(kvp_pool_add_store(h, store), "kvp_pool_add_store");
  assert_kvp_ok(kvp_store_destroy(store));
  EXPECT_BAD_HANDLE(kvp_pool_flush_tiers(h, 0), "kvp_pool_flush_tiers");
  size_t blob_size = 0x55;
  uint8_t blob[8] = {0};
  EXPECT_BAD_HANDLE(kvp_pool_save_sequence(h, s, blob, sizeof blob, &blob_size), "kvp_pool_save_sequence");
  assert_int_equal(blob_size, 0x55);
  EXPECT_BAD_HANDLE(kvp_pool_save_sequence_to_file(h, s, "/nonexistent-dir/seq", 0), "kvp_pool_save_sequence_to_file");
  kvp_seq_id restored = {0xABCDu};
  EXPECT_BAD_HANDLE(kvp_pool_restore_sequence(h, blob, sizeof blob, 0, &restored), "kvp_pool_restore_sequence");
  EXPECT_BAD_HANDLE(kvp_pool_restore_sequence_from_file(h, "/nonexistent-dir/seq", 0, &restored),
                    "kvp_pool_restore_sequence_from_file");
  assert_int_equal(restored.id, 0xABCDu);
  EXPECT_BAD_HANDLE(kvp_pool_check_invariants(h), "kvp_pool_check_invariants");
  EXPECT_BAD_HANDLE(kvp_pool_clear_prefix_cache(h), "kvp_pool_clear_prefix_cache");
  if (h != NULL) EXPECT_BAD_HANDLE(kvp_pool_destroy(h), "kvp_pool_destroy"); /* destroy(NULL) is OK */

  assert_pool_unchanged(&ps);
  assert_cache_unchanged();
}

/* Every function taking a kvp_metadata *, called with `h`. */
static void expect_every_metadata_call_rejected(kvp_metadata *h) {
  pool_snap ps;
  take_pool_snap(F.pool, F.seq, &ps);
  kvp_tensor key = make_tensor(g_key), value = make_tensor(g_value);

  const int32_t *data = (const int32_t *)SENTINEL_PTR;
  int64_t n = 0x1234;
  EXPECT_BAD_HANDLE(kvp_metadata_get_array(h, KVP_METADATA_CONTEXT_LENS, &data, &n), "kvp_metadata_get_array");
  assert_ptr_equal(data, SENTINEL_PTR);
  assert_int_equal(n, 0x1234);
  kvp_metadata_desc d, d0;
  memset(&d, FILL, sizeof d);
  d.struct_size = sizeof d;
  d0 = d;
  EXPECT_BAD_HANDLE(kvp_metadata_get_desc(h, &d), "kvp_metadata_get_desc");
  assert_memory_equal(&d, &d0, sizeof d);
  EXPECT_BAD_HANDLE(kvp_concatenate(F.cache, 0, &key, &value, h, NULL), "kvp_concatenate");
  float out_buf[T_NEW * HEADS * HEAD_DIM];
  memset(out_buf, FILL, sizeof out_buf);
  kvp_tensor out = kvp_test_tensor(out_buf, KVP_DTYPE_F32, T_NEW, HEADS, HEAD_DIM, KVP_DEVICE_CPU);
  EXPECT_BAD_HANDLE(kvp_attention(F.cache, 0, &key, &key, &value, h, NULL, &out, NULL), "kvp_attention");
  for (size_t i = 0; i < sizeof out_buf; i++) assert_int_equal(((unsigned char *)out_buf)[i], FILL);
  char text[64];
  memset(text, FILL, sizeof text);
  size_t written = 0x4321;
  EXPECT_BAD_HANDLE(kvp_metadata_to_json(h, text, sizeof text, &written), "kvp_metadata_to_json");
  assert_int_equal(written, 0x4321);
  for (size_t i = 0; i < sizeof text; i++) assert_int_equal((unsigned char)text[i], FILL);
  if (h != NULL) EXPECT_BAD_HANDLE(kvp_metadata_destroy(h), "kvp_metadata_destroy");

  assert_pool_unchanged(&ps);
  assert_cache_unchanged();
}

/* The fixture objects still work after the rejected calls (a wrong-kind destroy freed nothing). */
static void assert_fixture_alive(void) {
  kvp_config cfg = KVP_CONFIG_INIT;
  assert_kvp_ok(kvp_cache_get_config(F.cache, &cfg));
  assert_memory_equal(&cfg, &F.cfg, sizeof cfg);
  assert_kvp_ok(kvp_pool_check_invariants(F.pool));
  kvp_metadata_desc d;
  d.struct_size = sizeof d;
  assert_kvp_ok(kvp_metadata_get_desc(F.md, &d));
  assert_int_equal(d.version, KVP_LAYOUT_V3);
}

/* ---- handles: NULL, destroyed, wrong kind, foreign ---------------------------------------------- */

/* A call that succeeds clears the message an earlier failure left. */
#define CLEARS(call)                                                                             \
  do {                                                                                           \
    provoke_error();                                                                             \
    assert_kvp_ok(call);                                                                         \
    if (kvp_last_error_message()[0] != '\0')                                                     \
      fail_msg("%s succeeded but left the message '%s'", #call, kvp_last_error_message());       \
  } while (0)

/* Every function of store.h taking a kvp_store *, called with `h`; every other argument valid.
 * Nothing may change: outputs, and the fixture's pool (a store call never touches it). */
static void expect_every_store_call_rejected(kvp_store *h) {
  const kvp_store_key key = {{1, 2, 3}};
  uint8_t data[4] = {9, 9, 9, 9}, found = 0x77;
  size_t size = 0x55;
  EXPECT_BAD_HANDLE(kvp_store_put(h, &key, data, sizeof data), "kvp_store_put");
  EXPECT_BAD_HANDLE(kvp_store_get(h, &key, data, sizeof data, &size), "kvp_store_get");
  assert_int_equal(size, 0x55);
  assert_int_equal(data[0], 9);
  EXPECT_BAD_HANDLE(kvp_store_exists(h, &key, 1, &found), "kvp_store_exists");
  assert_int_equal(found, 0x77);
  EXPECT_BAD_HANDLE(kvp_store_remove(h, &key), "kvp_store_remove");
  kvp_store_stats st, st0;
  memset(&st, FILL, sizeof st);
  st.struct_size = sizeof st;
  st0 = st;
  EXPECT_BAD_HANDLE(kvp_store_get_stats(h, &st), "kvp_store_get_stats");
  assert_memory_equal(&st, &st0, sizeof st);
  kvp_store_scrub_report r, r0;
  memset(&r, FILL, sizeof r);
  r.struct_size = sizeof r;
  r0 = r;
  EXPECT_BAD_HANDLE(kvp_store_scrub(h, &r), "kvp_store_scrub");
  assert_memory_equal(&r, &r0, sizeof r);
  kvp_store_key keys[2], keys0[2];
  memset(keys, FILL, sizeof keys);
  memcpy(keys0, keys, sizeof keys);
  uint64_t cursor = 0x66;
  EXPECT_BAD_HANDLE(kvp_store_list(h, &cursor, keys, 2, &size), "kvp_store_list");
  assert_int_equal(cursor, 0x66);
  assert_int_equal(size, 0x55);
  assert_memory_equal(keys, keys0, sizeof keys);
  if (h != NULL) EXPECT_BAD_HANDLE(kvp_store_destroy(h), "kvp_store_destroy"); /* destroy(NULL) is OK */
  assert_kvp_ok(kvp_pool_check_invariants(F.pool));
}

/* Store handles: NULL, destroyed, of another kind, foreign memory; and a store given to a pool
 * where a pool is expected. */
static void test_contract_api__store_handles(void **state) {
  (void)state;
  g_what1 = "NULL";
  g_what2 = "";
  expect_every_store_call_rejected(NULL);
  EXPECT_BAD_HANDLE(kvp_pool_add_store(F.pool, NULL), "kvp_pool_add_store");
  g_what1 = "wrong handle kind";
  g_what2 = "kvp_pool";
  void *vp = F.pool;
  expect_every_store_call_rejected((kvp_store *)vp);
  g_what2 = "kvp_store";
  kvp_store *s = NULL;
  assert_kvp_ok(kvp_store_create_memory(64, NULL, &s));
  vp = s;
  expect_every_pool_call_rejected((kvp_pool *)vp);
  expect_every_cache_call_rejected((kvp_cache *)vp);
  g_what1 = "";
  g_what2 = "";
  kvp_config cfg = F.cfg;
  vp = &cfg;
  expect_every_store_call_rejected((kvp_store *)vp);
  require_api_armor();
  g_what1 = "destroyed";
  assert_kvp_ok(kvp_store_destroy(s));
  expect_every_store_call_rejected(s);
  EXPECT_BAD_HANDLE(kvp_pool_add_store(F.pool, s), "kvp_pool_add_store");
  assert_fixture_alive();
}

/* NULL pointers of store.h and of the pool's tier calls. */
static void test_contract_api__null_pointers_store(void **state) {
  (void)state;
  kvp_store *s = NULL;
  EXPECT_NULL_ARG(kvp_store_options_init(NULL, sizeof(kvp_store_options)), "kvp_store_options_init", "opts");
  EXPECT_NULL_ARG(kvp_store_create(NULL, &s), "kvp_store_create", "vtable");
  kvp_store_vtable vt;
  memset(&vt, 0, sizeof vt);
  EXPECT_NULL_ARG(kvp_store_create(&vt, NULL), "kvp_store_create", "out");
  EXPECT_NULL_ARG(kvp_store_create_memory(64, NULL, NULL), "kvp_store_create_memory", "out");
  EXPECT_NULL_ARG(kvp_store_create_directory(NULL, 64, NULL, &s), "kvp_store_create_directory", "path");
  EXPECT_NULL_ARG(kvp_store_create_directory("/tmp", 64, NULL, NULL), "kvp_store_create_directory", "out");
  EXPECT_NULL_ARG(kvp_store_create_redis(NULL, NULL, &s), "kvp_store_create_redis", "url");
  EXPECT_NULL_ARG(kvp_store_create_redis("redis://127.0.0.1:1", NULL, NULL), "kvp_store_create_redis", "out");
  assert_null(s);
  assert_kvp_ok(kvp_store_create_memory(64, NULL, &s));
  const kvp_store_key key = {{0}};
  uint8_t b[4];
  size_t n = 0;
  EXPECT_NULL_ARG(kvp_store_put(s, NULL, b, 1), "kvp_store_put", "key");
  EXPECT_NULL_ARG(kvp_store_put(s, &key, NULL, 1), "kvp_store_put", "data");
  EXPECT_NULL_ARG(kvp_store_get(s, NULL, b, 1, &n), "kvp_store_get", "key");
  EXPECT_NULL_ARG(kvp_store_get(s, &key, NULL, 1, &n), "kvp_store_get", "dst");
  EXPECT_NULL_ARG(kvp_store_get(s, &key, b, 1, NULL), "kvp_store_get", "size_out");
  EXPECT_NULL_ARG(kvp_store_exists(s, NULL, 1, b), "kvp_store_exists", "keys");
  EXPECT_NULL_ARG(kvp_store_exists(s, &key, 1, NULL), "kvp_store_exists", "found_out");
  EXPECT_NULL_ARG(kvp_store_remove(s, NULL), "kvp_store_remove", "key");
  EXPECT_NULL_ARG(kvp_store_get_stats(s, NULL), "kvp_store_get_stats", "out");
  EXPECT_NULL_ARG(kvp_store_scrub(s, NULL), "kvp_store_scrub", "report");
  EXPECT_NULL_ARG(kvp_pool_get_tier_stats(F.pool, 0, NULL), "kvp_pool_get_tier_stats", "out");
  kvp_store_key keys[2];
  uint64_t cursor = 0;
  EXPECT_NULL_ARG(kvp_store_list(s, NULL, keys, 2, &n), "kvp_store_list", "cursor");
  EXPECT_NULL_ARG(kvp_store_list(s, &cursor, NULL, 2, &n), "kvp_store_list", "keys");
  EXPECT_NULL_ARG(kvp_store_list(s, &cursor, keys, 2, NULL), "kvp_store_list", "count_out");
  kvp_store_block_info bi = KVP_STORE_BLOCK_INFO_INIT;
  EXPECT_NULL_ARG(kvp_store_block_inspect(b, sizeof b, NULL), "kvp_store_block_inspect", "out");
  EXPECT_NULL_ARG(kvp_store_block_inspect(NULL, 1, &bi), "kvp_store_block_inspect", "block");
  kvp_store_stats st = KVP_STORE_STATS_INIT;
  assert_kvp_ok(kvp_store_get_stats(s, &st));
  assert_int_equal(st.blocks, 0);
  assert_int_equal(st.puts, 0);
  /* and every call succeeding clears the message */
  kvp_store_options o;
  CLEARS(kvp_store_options_init(&o, sizeof o));
  CLEARS(kvp_store_put(s, &key, b, sizeof b));
  CLEARS(kvp_store_get(s, &key, b, sizeof b, &n));
  uint8_t found = 0;
  CLEARS(kvp_store_exists(s, &key, 1, &found));
  assert_int_equal(found, 1);
  CLEARS(kvp_store_get_stats(s, &st));
  kvp_store_scrub_report r = KVP_STORE_SCRUB_REPORT_INIT;
  CLEARS(kvp_store_scrub(s, &r));
  CLEARS(kvp_store_list(s, &cursor, keys, 2, &n));
  assert_int_equal(n, 1);
  assert_int_equal(cursor, 0);
  CLEARS(kvp_store_remove(s, &key));
  kvp_pool *p = NULL;
  assert_kvp_ok(kvp_pool_create(F.cache, NULL, &p));
  CLEARS(kvp_pool_add_store(p, s));
  kvp_pool_tier_stats ts = KVP_POOL_TIER_STATS_INIT;
  CLEARS(kvp_pool_get_tier_stats(p, 0, &ts));
  assert_int_equal(ts.num_tiers, 1);
  CLEARS(kvp_pool_flush_tiers(p, KVP_POOL_FLUSH_CACHED));
  assert_kvp_ok(kvp_pool_destroy(p));
  CLEARS(kvp_store_destroy(s));
  CLEARS(kvp_store_destroy(NULL));
  kvp_store *mem = NULL;
  CLEARS(kvp_store_create_memory(64, NULL, &mem));
  assert_kvp_ok(kvp_store_destroy(mem));
}

static void test_contract_api__null_handles(void **state) {
  (void)state;
  g_what1 = "NULL";
  g_what2 = "";
  expect_every_cache_call_rejected(NULL);
  expect_every_pool_call_rejected(NULL);
  expect_every_metadata_call_rejected(NULL);
}

static void test_contract_api__destroyed_handles(void **state) {
  (void)state;
  require_api_armor();
  g_what1 = "destroyed";
  g_what2 = "";
  kvp_cache *c = NULL;
  assert_kvp_ok(kvp_cache_create(&F.cfg, NULL, &c));
  assert_kvp_ok(kvp_cache_destroy(c));
  expect_every_cache_call_rejected(c);

  kvp_pool *p = NULL;
  assert_kvp_ok(kvp_pool_create(F.cache, NULL, &p));
  assert_kvp_ok(kvp_pool_destroy(p));
  expect_every_pool_call_rejected(p);

  kvp_metadata *owning = NULL, *borrowed = NULL;
  assert_kvp_ok(kvp_metadata_create_empty(KVP_LAYOUT_V3, 4, 1, 2, 0, &owning));
  kvp_metadata_desc d;
  d.struct_size = sizeof d;
  assert_kvp_ok(kvp_metadata_get_desc(F.md, &d));
  assert_kvp_ok(kvp_metadata_create(&d, &borrowed));
  assert_kvp_ok(kvp_metadata_destroy(owning));
  assert_kvp_ok(kvp_metadata_destroy(borrowed));
  expect_every_metadata_call_rejected(owning);
  expect_every_metadata_call_rejected(borrowed);
  assert_fixture_alive();
}

/* Live handles of another kind, cast through void *. */
static void test_contract_api__wrong_kind_handles(void **state) {
  (void)state;
  void *pool = F.pool, *md = F.md, *cache = F.cache;
  g_what1 = "wrong handle kind";
  g_what2 = "kvp_pool";
  expect_every_cache_call_rejected((kvp_cache *)pool);
  g_what2 = "kvp_metadata";
  expect_every_cache_call_rejected((kvp_cache *)md);
  expect_every_pool_call_rejected((kvp_pool *)md);
  g_what2 = "kvp_cache";
  expect_every_pool_call_rejected((kvp_pool *)cache);
  expect_every_metadata_call_rejected((kvp_metadata *)cache);
  g_what2 = "kvp_pool";
  expect_every_metadata_call_rejected((kvp_metadata *)pool);
  assert_fixture_alive();
}

/* Memory the library never handed out: a config record, zeros, a forged header with the right
 * magic (the last only with API armor, which is what rejects it). */
static void test_contract_api__foreign_pointer_handles(void **state) {
  (void)state;
  g_what1 = "";
  g_what2 = "";
  kvp_config cfg = F.cfg;
  void *vp = &cfg;
  expect_every_cache_call_rejected((kvp_cache *)vp);
  expect_every_pool_call_rejected((kvp_pool *)vp);
  expect_every_metadata_call_rejected((kvp_metadata *)vp);
  unsigned char zeros[128];
  memset(zeros, 0, sizeof zeros);
  vp = zeros;
  expect_every_cache_call_rejected((kvp_cache *)vp);
  expect_every_pool_call_rejected((kvp_pool *)vp);
  expect_every_metadata_call_rejected((kvp_metadata *)vp);
  require_api_armor();
  struct {
    uint32_t magic;
    uint32_t state;
    void *impl;
    unsigned char rest[64];
  } forged;
  memset(&forged, 0, sizeof forged);
  forged.state = 1;
  vp = &forged;
  forged.magic = 0x4350564Bu; /* 'KVPC' */
  expect_every_cache_call_rejected((kvp_cache *)vp);
  forged.magic = 0x5050564Bu; /* 'KVPP' */
  expect_every_pool_call_rejected((kvp_pool *)vp);
  forged.magic = 0x4D50564Bu; /* 'KVPM' */
  expect_every_metadata_call_rejected((kvp_metadata *)vp);
  assert_fixture_alive();
}

/* kvp_set_misuse_handler's documentation: `what` describes the misuse, e.g.
 * "kvp_cache_destroy: destroyed handle" -- the function the caller called. */
static void test_contract_api__metadata_to_json_misuse_report_names_it(void **state) {
  (void)state;
  char text[64];
  size_t written = 0;
  void *vp = F.pool;
  g_what1 = "";
  g_what2 = "";
  EXPECT_BAD_HANDLE(kvp_metadata_to_json(NULL, text, sizeof text, &written), "kvp_metadata_to_json");
  EXPECT_BAD_HANDLE(kvp_metadata_to_json((const kvp_metadata *)vp, text, sizeof text, &written),
                    "kvp_metadata_to_json");
}

static void test_contract_api__destroy_null_is_ok(void **state) {
  (void)state;
  /* not misuse: the handler must not be called (cmocka fails on an unexpected function_called) */
  provoke_error();
  assert_kvp_ok(kvp_metadata_destroy(NULL));
  assert_string_equal(kvp_last_error_message(), "");
  provoke_error();
  assert_kvp_ok(kvp_pool_destroy(NULL));
  assert_string_equal(kvp_last_error_message(), "");
}

static void test_contract_api__double_destroy(void **state) {
  (void)state;
  require_api_armor();
  kvp_metadata *owning = NULL, *borrowed = NULL;
  assert_kvp_ok(kvp_metadata_create_empty(KVP_LAYOUT_V2, 4, 1, 2, 0, &owning));
  kvp_metadata_desc d;
  d.struct_size = sizeof d;
  assert_kvp_ok(kvp_metadata_get_desc(F.md, &d));
  assert_kvp_ok(kvp_metadata_create(&d, &borrowed));
  kvp_pool *p = NULL;
  assert_kvp_ok(kvp_pool_create(F.cache, NULL, &p));
  assert_kvp_ok(kvp_metadata_destroy(owning));
  assert_kvp_ok(kvp_metadata_destroy(borrowed));
  assert_kvp_ok(kvp_pool_destroy(p));
  g_what1 = "";
  g_what2 = "";
  for (int i = 0; i < 2; i++) {
    EXPECT_BAD_HANDLE(kvp_metadata_destroy(owning), "kvp_metadata_destroy");
    EXPECT_BAD_HANDLE(kvp_metadata_destroy(borrowed), "kvp_metadata_destroy");
    EXPECT_BAD_HANDLE(kvp_pool_destroy(p), "kvp_pool_destroy");
  }
  /* the borrowed metadata's arrays (F.md's) were not touched */
  assert_fixture_alive();
}

/* pool.h: a pool outlives its cache; with API armor, calls that need the cache are refused. */
static void test_contract_api__pool_of_a_destroyed_cache(void **state) {
  (void)state;
  require_api_armor();
  kvp_cache *c = NULL;
  kvp_pool *p = NULL;
  kvp_seq_id s;
  assert_kvp_ok(kvp_cache_create(&F.cfg, NULL, &c));
  assert_kvp_ok(kvp_pool_create(c, NULL, &p));
  assert_kvp_ok(kvp_pool_add_sequence(p, g_tokens, 3, 0, 0, &s, NULL));
  assert_kvp_ok(kvp_cache_destroy(c));
  g_what1 = "destroyed";
  g_what2 = "";
  EXPECT_BAD_HANDLE(kvp_pool_append(p, s, g_tokens + 3, 1, NULL), "kvp_pool_append");
  size_t len = 0;
  assert_kvp_ok(kvp_pool_get_sequence_length(p, s, &len, NULL));
  assert_int_equal(len, 3); /* the refused append changed nothing */
  assert_kvp_ok(kvp_pool_check_invariants(p));
  assert_kvp_ok(kvp_pool_destroy(p));
}

/* ---- NULL pointer arguments ------------------------------------------------------------------ */

static void test_contract_api__null_pointers_metadata(void **state) {
  (void)state;
  EXPECT_NULL_ARG(kvp_metadata_desc_init(NULL, sizeof(kvp_metadata_desc)), "kvp_metadata_desc_init", "desc");
  EXPECT_NULL_ARG(kvp_batch_options_init(NULL, sizeof(kvp_batch_options)), "kvp_batch_options_init", "opts");

  kvp_metadata_desc d;
  d.struct_size = sizeof d;
  assert_kvp_ok(kvp_metadata_get_desc(F.md, &d));
  kvp_metadata *m = (kvp_metadata *)SENTINEL_PTR;
  EXPECT_NULL_ARG(kvp_metadata_create(NULL, &m), "kvp_metadata_create", "desc");
  assert_null(m);
  EXPECT_NULL_ARG(kvp_metadata_create(&d, NULL), "kvp_metadata_create", "out");
  /* a required array of the layout missing (NULL with a non-zero length) */
  kvp_metadata_desc bad_desc = d;
  bad_desc.pages_tables = NULL;
  m = (kvp_metadata *)SENTINEL_PTR;
  EXPECT_FAIL(kvp_metadata_create(&bad_desc, &m), KVP_ERR_INVALID_ARGUMENT, "kvp_metadata_create", "pages_tables");
  assert_null(m);
  bad_desc = d;
  bad_desc.context_lens = NULL;
  m = (kvp_metadata *)SENTINEL_PTR;
  EXPECT_FAIL(kvp_metadata_create(&bad_desc, &m), KVP_ERR_INVALID_ARGUMENT, "kvp_metadata_create", "context_lens");
  assert_null(m);
  EXPECT_NULL_ARG(kvp_metadata_create_empty(KVP_LAYOUT_V3, 4, 1, 1, 0, NULL), "kvp_metadata_create_empty", "out");

  /* both outputs of get_array are optional */
  assert_kvp_ok(kvp_metadata_get_array(F.md, KVP_METADATA_PAGES_TABLES, NULL, NULL));
  const int32_t *p = NULL;
  assert_kvp_ok(kvp_metadata_get_array(F.md, KVP_METADATA_PAGES_TABLES, &p, NULL));
  assert_ptr_equal(p, d.pages_tables);
  int64_t n = -1;
  assert_kvp_ok(kvp_metadata_get_array(F.md, KVP_METADATA_PAGES_TABLES, NULL, &n));
  assert_int_equal(n, d.num_reqs * d.pages_per_req);
  EXPECT_NULL_ARG(kvp_metadata_get_desc(F.md, NULL), "kvp_metadata_get_desc", "out");

  int32_t page1 = 1;
  kvp_batch_request req = {0, T_NEW, &page1, 1};
  int32_t order[2] = {-5, -5};
  m = (kvp_metadata *)SENTINEL_PTR;
  EXPECT_NULL_ARG(kvp_metadata_build(NULL, &req, 1, NULL, order, &m), "kvp_metadata_build", "cfg");
  assert_null(m);
  m = (kvp_metadata *)SENTINEL_PTR;
  EXPECT_NULL_ARG(kvp_metadata_build(&F.cfg, NULL, 1, NULL, order, &m), "kvp_metadata_build", "requests");
  assert_null(m);
  /* a request's NULL page_ids with pages */
  kvp_batch_request bad = {0, T_NEW, NULL, 1};
  m = (kvp_metadata *)SENTINEL_PTR;
  EXPECT_NULL_ARG(kvp_metadata_build(&F.cfg, &bad, 1, NULL, order, &m), "kvp_metadata_build", "page_ids");
  assert_null(m);
  EXPECT_NULL_ARG(kvp_metadata_build(&F.cfg, &req, 1, NULL, order, NULL), "kvp_metadata_build", "out");
  assert_int_equal(order[0], -5); /* documented: order_out unchanged on failure */
  assert_int_equal(order[1], -5);
  /* opts and order_out are optional; requests may be NULL with 0 requests */
  assert_kvp_ok(kvp_metadata_build(&F.cfg, &req, 1, NULL, NULL, &m));
  assert_kvp_ok(kvp_metadata_destroy(m));
  assert_kvp_ok(kvp_metadata_build(&F.cfg, NULL, 0, NULL, NULL, &m));
  assert_kvp_ok(kvp_metadata_destroy(m));
}

static void test_contract_api__null_pointers_concatenate(void **state) {
  (void)state;
  kvp_tensor key = make_tensor(g_key), value = make_tensor(g_value);
  EXPECT_NULL_ARG(kvp_concatenate(F.cache, 0, NULL, &value, F.md, NULL), "kvp_concatenate", "key");
  EXPECT_NULL_ARG(kvp_concatenate(F.cache, 0, &key, NULL, F.md, NULL), "kvp_concatenate", "value");
  /* a NULL data pointer inside a tensor */
  key.data = NULL;
  EXPECT_FAIL(kvp_concatenate(F.cache, 0, &key, &value, F.md, NULL), KVP_ERR_INVALID_ARGUMENT, "kvp_concatenate", "key");
  assert_cache_unchanged();
  /* the same call with valid tensors writes: the rejected ones were rejected for the NULL */
  key = make_tensor(g_key);
  assert_kvp_ok(kvp_concatenate(F.cache, 0, &key, &value, F.md, NULL));
}

static void test_contract_api__null_pointers_attention(void **state) {
  (void)state;
  kvp_tensor q = make_tensor(g_key), key = make_tensor(g_key), value = make_tensor(g_value);
  float out_buf[T_NEW * HEADS * HEAD_DIM];
  memset(out_buf, FILL, sizeof out_buf);
  kvp_tensor out = kvp_test_tensor(out_buf, KVP_DTYPE_F32, T_NEW, HEADS, HEAD_DIM, KVP_DEVICE_CPU);
  EXPECT_NULL_ARG(kvp_attention_options_init(NULL, sizeof(kvp_attention_options)), "kvp_attention_options_init",
                  "opts");
  EXPECT_NULL_ARG(kvp_attention(F.cache, 0, NULL, &key, &value, F.md, NULL, &out, NULL), "kvp_attention", "queries");
  EXPECT_NULL_ARG(kvp_attention(F.cache, 0, &q, &key, &value, F.md, NULL, NULL, NULL), "kvp_attention", "out");
  EXPECT_FAIL(kvp_attention(F.cache, 0, &q, &key, NULL, F.md, NULL, &out, NULL), KVP_ERR_INVALID_ARGUMENT,
              "kvp_attention", "values");
  EXPECT_FAIL(kvp_attention(F.cache, 0, &q, NULL, &value, F.md, NULL, &out, NULL), KVP_ERR_INVALID_ARGUMENT,
              "kvp_attention", "keys");
  assert_cache_unchanged();
  for (size_t i = 0; i < sizeof out_buf; i++) assert_int_equal(((unsigned char *)out_buf)[i], FILL);
  /* options: NULL is the defaults; struct-size skew as for every size-versioned struct */
  struct {
    kvp_attention_options o;
    unsigned char tail[8];
  } big;
  memset(&big, 0, sizeof big);
  assert_kvp_ok(kvp_attention_options_init(&big.o, sizeof big.o));
  big.o.struct_size = sizeof big;
  assert_kvp_ok(kvp_attention(F.cache, 0, &q, NULL, NULL, F.md, &big.o, &out, NULL)); /* zero tail: accepted */
  big.tail[3] = 1;
  EXPECT_FAIL(kvp_attention(F.cache, 0, &q, NULL, NULL, F.md, &big.o, &out, NULL), KVP_ERR_UNSUPPORTED,
              "kvp_attention", "tail");
  kvp_attention_options small = big.o;
  small.struct_size = 4;
  EXPECT_FAIL(kvp_attention(F.cache, 0, &q, NULL, NULL, F.md, &small, &out, NULL), KVP_ERR_VERSION_MISMATCH,
              "kvp_attention", "struct_size");
  small = big.o;
  small.struct_size = sizeof small;
  small.abi_version = 0;
  EXPECT_FAIL(kvp_attention(F.cache, 0, &q, NULL, NULL, F.md, &small, &out, NULL), KVP_ERR_VERSION_MISMATCH,
              "kvp_attention", "abi_version");
  assert_cache_unchanged();
}

static void test_contract_api__null_pointers_pool(void **state) {
  (void)state;
  pool_snap ps;
  take_pool_snap(F.pool, F.seq, &ps);
  EXPECT_NULL_ARG(kvp_pool_options_init(NULL, sizeof(kvp_pool_options)), "kvp_pool_options_init", "opts");
  EXPECT_NULL_ARG(kvp_pool_create(F.cache, NULL, NULL), "kvp_pool_create", "out");

  kvp_seq_id seq = {0xABCDu};
  size_t reused = 0x77;
  EXPECT_NULL_ARG(kvp_pool_add_sequence(F.pool, NULL, 3, 0, 0, &seq, &reused), "kvp_pool_add_sequence", "tokens");
  assert_int_equal(seq.id, 0xABCDu);
  assert_int_equal(reused, 0x77);
  EXPECT_NULL_ARG(kvp_pool_add_sequence(F.pool, g_tokens, 3, 0, 0, NULL, &reused), "kvp_pool_add_sequence", "seq_out");
  assert_int_equal(reused, 0x77);
  EXPECT_NULL_ARG(kvp_pool_append(F.pool, F.seq, NULL, 1, NULL), "kvp_pool_append", "tokens");
  EXPECT_NULL_ARG(kvp_pool_fork(F.pool, F.seq, 1, NULL), "kvp_pool_fork", "children_out");
  size_t count = 0x44;
  int32_t pages[4] = {-7, -7, -7, -7};
  EXPECT_NULL_ARG(kvp_pool_get_page_table(F.pool, F.seq, pages, 4, NULL), "kvp_pool_get_page_table", "count_out");
  EXPECT_NULL_ARG(kvp_pool_get_page_table(F.pool, F.seq, NULL, 4, &count), "kvp_pool_get_page_table", "pages_out");
  assert_int_equal(count, 0x44);
  for (int i = 0; i < 4; i++) assert_int_equal(pages[i], -7);
  EXPECT_NULL_ARG(kvp_pool_get_slots(F.pool, F.seq, 0, 2, NULL), "kvp_pool_get_slots", "slots_out");
  EXPECT_NULL_ARG(kvp_pool_get_batch_request(F.pool, F.seq, NULL), "kvp_pool_get_batch_request", "out");
  EXPECT_NULL_ARG(kvp_pool_get_stats(F.pool, NULL), "kvp_pool_get_stats", "out");
  EXPECT_NULL_ARG(kvp_pool_get_sequence_shard(F.pool, F.seq, NULL), "kvp_pool_get_sequence_shard", "shard_out");
  EXPECT_NULL_ARG(kvp_pool_get_shard_stats(F.pool, 0, NULL), "kvp_pool_get_shard_stats", "out");
  uint8_t blob[8] = {0};
  size_t blob_size = 0x55;
  EXPECT_NULL_ARG(kvp_pool_save_sequence(F.pool, F.seq, blob, sizeof blob, NULL), "kvp_pool_save_sequence", "size_out");
  EXPECT_NULL_ARG(kvp_pool_save_sequence(F.pool, F.seq, NULL, 8, &blob_size), "kvp_pool_save_sequence", "dst");
  assert_int_equal(blob_size, 0x55);
  EXPECT_NULL_ARG(kvp_pool_save_sequence_to_file(F.pool, F.seq, NULL, 0), "kvp_pool_save_sequence_to_file", "path");
  EXPECT_NULL_ARG(kvp_pool_restore_sequence(F.pool, NULL, 8, 0, &seq), "kvp_pool_restore_sequence", "src");
  EXPECT_NULL_ARG(kvp_pool_restore_sequence(F.pool, blob, sizeof blob, 0, NULL), "kvp_pool_restore_sequence", "seq_out");
  EXPECT_NULL_ARG(kvp_pool_restore_sequence_from_file(F.pool, NULL, 0, &seq), "kvp_pool_restore_sequence_from_file",
                  "path");
  EXPECT_NULL_ARG(kvp_pool_restore_sequence_from_file(F.pool, "/tmp/x", 0, NULL), "kvp_pool_restore_sequence_from_file",
                  "seq_out");
  assert_int_equal(seq.id, 0xABCDu);
  int32_t one[1] = {1}, two[1] = {2};
  EXPECT_NULL_ARG(kvp_cache_copy_pages(F.cache, NULL, two, 1, NULL), "kvp_cache_copy_pages", "src_pages");
  EXPECT_NULL_ARG(kvp_cache_copy_pages(F.cache, one, NULL, 1, NULL), "kvp_cache_copy_pages", "dst_pages");
  assert_cache_unchanged();
  assert_pool_unchanged(&ps);

  /* the documented optional pointers */
  size_t len = 0;
  assert_kvp_ok(kvp_pool_get_sequence_length(F.pool, F.seq, NULL, NULL));
  assert_kvp_ok(kvp_pool_get_sequence_length(F.pool, F.seq, &len, NULL));
  assert_int_equal(len, 5);
  assert_kvp_ok(kvp_pool_get_page_state(F.pool, 0, NULL, NULL));
  assert_kvp_ok(kvp_pool_get_slots(F.pool, F.seq, 0, 0, NULL));
  assert_kvp_ok(kvp_pool_get_page_table(F.pool, F.seq, pages, 4, &count));
  assert_int_equal(count, 1); /* 5 tokens, 8 per page */
  assert_kvp_ok(kvp_pool_append(F.pool, F.seq, NULL, 0, NULL));
  assert_kvp_ok(kvp_pool_fork(F.pool, F.seq, 0, NULL));
  assert_kvp_ok(kvp_cache_copy_pages(F.cache, NULL, NULL, 0, NULL));
  assert_cache_unchanged();
  assert_kvp_ok(kvp_pool_add_sequence(F.pool, NULL, 0, 0, 0, &seq, NULL)); /* an empty sequence */
  assert_kvp_ok(kvp_pool_get_sequence_length(F.pool, seq, &len, NULL));
  assert_int_equal(len, 0);
  assert_kvp_ok(kvp_pool_free_sequence(F.pool, seq));
  kvp_pool *p = NULL;
  assert_kvp_ok(kvp_pool_create(F.cache, NULL, &p)); /* NULL options = defaults */
  assert_kvp_ok(kvp_pool_destroy(p));
}

static void test_contract_api__null_pointers_serialize(void **state) {
  (void)state;
  EXPECT_NULL_ARG(kvp_serialize_options_init(NULL, sizeof(kvp_serialize_options)), "kvp_serialize_options_init", "opts");
  EXPECT_NULL_ARG(kvp_deserialize_options_init(NULL, sizeof(kvp_deserialize_options)), "kvp_deserialize_options_init",
                  "opts");
  int dir_entries = count_dir_entries(F.dir);
  unsigned char *buf = malloc(F.blob_len);
  assert_non_null(buf);
  memset(buf, FILL, F.blob_len);

  EXPECT_NULL_ARG(kvp_serialized_size(F.cache, NULL, NULL), "kvp_serialized_size", "out");
  /* NULL page_ids with a non-zero count in the options */
  kvp_serialize_options so = KVP_SERIALIZE_OPTIONS_INIT;
  so.num_page_ids = 1;
  size_t size = 0x1234;
  EXPECT_FAIL(kvp_serialized_size(F.cache, &so, &size), KVP_ERR_INVALID_ARGUMENT, "kvp_serialized_size", "page_ids");
  assert_int_equal(size, 0x1234);
  size_t written = 0x1234;
  EXPECT_NULL_ARG(kvp_serialize(F.cache, NULL, buf, F.blob_len, NULL), "kvp_serialize", "written_out");
  EXPECT_NULL_ARG(kvp_serialize(F.cache, NULL, NULL, F.blob_len, &written), "kvp_serialize", "dst");
  assert_int_equal(written, 0x1234);
  for (size_t i = 0; i < F.blob_len; i++)
    if (buf[i] != FILL) fail_msg("kvp_serialize wrote byte %zu on failure", i);
  EXPECT_NULL_ARG(kvp_serialize_to_writer(F.cache, NULL, NULL, NULL), "kvp_serialize_to_writer", "fn");
  EXPECT_NULL_ARG(kvp_serialize_to_file(F.cache, NULL, NULL), "kvp_serialize_to_file", "path");
  EXPECT_FAIL(kvp_serialize_to_file(F.cache, NULL, ""), KVP_ERR_INVALID_ARGUMENT, "kvp_serialize_to_file", "path");
  assert_int_equal(count_dir_entries(F.dir), dir_entries);

  kvp_cache *c = (kvp_cache *)SENTINEL_PTR;
  EXPECT_NULL_ARG(kvp_deserialize_new(F.blob, F.blob_len, NULL, NULL), "kvp_deserialize_new", "out");
  EXPECT_NULL_ARG(kvp_deserialize_new(NULL, F.blob_len, NULL, &c), "kvp_deserialize_new", "src");
  assert_null(c);
  reader r = {F.blob, F.blob_len, 0, 0};
  EXPECT_NULL_ARG(kvp_deserialize_new_from_reader(read_mem, &r, NULL, NULL), "kvp_deserialize_new_from_reader", "out");
  assert_int_equal(r.calls, 0);
  c = (kvp_cache *)SENTINEL_PTR;
  EXPECT_NULL_ARG(kvp_deserialize_new_from_reader(NULL, &r, NULL, &c), "kvp_deserialize_new_from_reader", "fn");
  assert_null(c);
  EXPECT_NULL_ARG(kvp_deserialize_new_from_file(F.blob_path, NULL, NULL), "kvp_deserialize_new_from_file", "out");
  c = (kvp_cache *)SENTINEL_PTR;
  EXPECT_NULL_ARG(kvp_deserialize_new_from_file(NULL, NULL, &c), "kvp_deserialize_new_from_file", "path");
  assert_null(c);

  EXPECT_NULL_ARG(kvp_deserialize_into(F.cache, NULL, F.blob_len, NULL, 0), "kvp_deserialize_into", "src");
  EXPECT_NULL_ARG(kvp_deserialize_into_from_reader(F.cache, NULL, &r, NULL, 0), "kvp_deserialize_into_from_reader",
                  "fn");
  EXPECT_NULL_ARG(kvp_deserialize_into_from_file(F.cache, NULL, NULL, 0), "kvp_deserialize_into_from_file", "path");
  EXPECT_NULL_ARG(kvp_deserialize_shards_into(F.cache, NULL, 1), "kvp_deserialize_shards_into", "blobs");
  /* NULL destination ids with a non-zero count */
  EXPECT_FAIL(kvp_deserialize_into(F.cache, F.blob, F.blob_len, NULL, 1), KVP_ERR_INVALID_ARGUMENT,
              "kvp_deserialize_into", "NULL");
  assert_cache_unchanged();

  kvp_serialized_info info, info0;
  memset(&info, FILL, sizeof info);
  info.struct_size = sizeof info;
  info0 = info;
  EXPECT_NULL_ARG(kvp_serialized_inspect(F.blob, F.blob_len, 0, NULL), "kvp_serialized_inspect", "out");
  EXPECT_NULL_ARG(kvp_serialized_inspect(NULL, F.blob_len, 0, &info), "kvp_serialized_inspect", "src");
  EXPECT_NULL_ARG(kvp_serialized_inspect_file(NULL, 0, &info), "kvp_serialized_inspect_file", "path");
  EXPECT_NULL_ARG(kvp_serialized_inspect_file(F.blob_path, 0, NULL), "kvp_serialized_inspect_file", "out");
  assert_memory_equal(&info, &info0, sizeof info);

  /* the documented optional pointers: dst NULL with cap 0 is a size query; NULL options */
  written = 0;
  assert_kvp_status(kvp_serialize(F.cache, NULL, NULL, 0, &written), KVP_ERR_BUFFER_TOO_SMALL, "kvp_serialize");
  assert_int_equal(written, F.blob_len);
  assert_kvp_ok(kvp_serialize(F.cache, NULL, buf, F.blob_len, &written));
  assert_int_equal(written, F.blob_len);
  assert_kvp_ok(kvp_serialized_inspect(buf, written, KVP_INSPECT_VERIFY, &info));
  /* user_data may be NULL */
  assert_kvp_ok(kvp_serialize_to_writer(F.cache, NULL, ignore_writer, NULL));
  free(buf);
}

static void test_contract_api__null_pointers_json(void **state) {
  (void)state;
  char text[1024];
  memset(text, FILL, sizeof text);
  size_t written = 0x1234;
  EXPECT_NULL_ARG(kvp_config_to_json(NULL, text, sizeof text, &written), "kvp_config_to_json", "cfg");
  EXPECT_NULL_ARG(kvp_config_to_json(&F.cfg, text, sizeof text, NULL), "kvp_config_to_json", "written_out");
  EXPECT_NULL_ARG(kvp_config_to_json(&F.cfg, NULL, sizeof text, &written), "kvp_config_to_json", "buf");
  EXPECT_NULL_ARG(kvp_metadata_to_json(F.md, text, sizeof text, NULL), "kvp_metadata_to_json", "written_out");
  EXPECT_NULL_ARG(kvp_metadata_to_json(F.md, NULL, sizeof text, &written), "kvp_metadata_to_json", "buf");
  assert_int_equal(written, 0x1234);
  for (size_t i = 0; i < sizeof text; i++) assert_int_equal((unsigned char)text[i], FILL);
  /* buf may be NULL with cap 0: a size query (the capacity needed, NUL included) */
  size_t len = 0;
  assert_kvp_ok(kvp_config_to_json(&F.cfg, text, sizeof text, &len));
  assert_int_equal(strlen(text), len);
  assert_kvp_status(kvp_config_to_json(&F.cfg, NULL, 0, &written), KVP_ERR_BUFFER_TOO_SMALL, "kvp_config_to_json");
  assert_int_equal(written, len + 1);
  assert_kvp_ok(kvp_metadata_to_json(F.md, text, sizeof text, &len));
  assert_int_equal(strlen(text), len);
  assert_kvp_status(kvp_metadata_to_json(F.md, NULL, 0, &written), KVP_ERR_BUFFER_TOO_SMALL, "kvp_metadata_to_json");
  assert_int_equal(written, len + 1);

  static const char cfg_json[] =
      "{\"num_hidden_layers\": 2, \"max_model_length\": 64, \"num_kv_heads\": 2, \"k_headdim\": 128, "
      "\"v_headdim\": 128}";
  kvp_config out, out0;
  memset(&out, FILL, sizeof out);
  out0 = out;
  EXPECT_NULL_ARG(kvp_config_from_json(NULL, sizeof cfg_json - 1, &out), "kvp_config_from_json", "json");
  EXPECT_NULL_ARG(kvp_config_from_json(cfg_json, sizeof cfg_json - 1, NULL), "kvp_config_from_json", "out");
  assert_memory_equal(&out, &out0, sizeof out);
  assert_kvp_ok(kvp_config_from_json(cfg_json, sizeof cfg_json - 1, &out));
  assert_int_equal(out.num_hidden_layers, 2);

  static const char md_json[] = "{\"version\": \"v3\", \"context_lens\": [4]}";
  kvp_metadata *m = (kvp_metadata *)SENTINEL_PTR;
  EXPECT_NULL_ARG(kvp_metadata_from_json(NULL, sizeof md_json - 1, &m), "kvp_metadata_from_json", "json");
  assert_null(m);
  EXPECT_NULL_ARG(kvp_metadata_from_json(md_json, sizeof md_json - 1, NULL), "kvp_metadata_from_json", "out");
  assert_kvp_ok(kvp_metadata_from_json(md_json, sizeof md_json - 1, &m));
  assert_kvp_ok(kvp_metadata_destroy(m));
}

static void test_contract_api__null_pointers_device(void **state) {
  (void)state;
  EXPECT_NULL_ARG(kvp_device_count(NULL), "kvp_device_count", "out");
  int32_t n = -1;
  assert_kvp_ok(kvp_device_count(&n));
  assert_true(n >= 0);
#if !KVP_HAS_CUDA
  assert_int_equal(n, 0); /* documented: 0 in a build without CUDA */
#endif
  EXPECT_NULL_ARG(kvp_cache_read_layer(F.cache, 0, NULL, F.layer_bytes, NULL), "kvp_cache_read_layer", "host_dst");
  EXPECT_NULL_ARG(kvp_cache_write_layer(F.cache, 0, NULL, F.layer_bytes, NULL), "kvp_cache_write_layer", "host_src");
  EXPECT_NULL_ARG(kvp_cache_export_dlpack(F.cache, 0, KVP_VIEW_KEYS, 0, NULL), "kvp_cache_export_dlpack", "out");
  assert_cache_unchanged();
  /* the checks that come before any device work: layer out of range, short buffer */
  unsigned char *buf = malloc(F.layer_bytes);
  assert_non_null(buf);
  memset(buf, FILL, F.layer_bytes);
  EXPECT_FAIL(kvp_cache_read_layer(F.cache, LAYERS, buf, F.layer_bytes, NULL), KVP_ERR_INVALID_ARGUMENT,
              "kvp_cache_read_layer", "2");
  EXPECT_FAIL(kvp_cache_read_layer(F.cache, 0, buf, F.layer_bytes - 1, NULL), KVP_ERR_BUFFER_TOO_SMALL,
              "kvp_cache_read_layer", "cap");
  for (size_t i = 0; i < F.layer_bytes; i++)
    if (buf[i] != FILL) fail_msg("kvp_cache_read_layer wrote byte %zu on failure", i);
  EXPECT_FAIL(kvp_cache_write_layer(F.cache, LAYERS, buf, F.layer_bytes, NULL), KVP_ERR_INVALID_ARGUMENT,
              "kvp_cache_write_layer", "2");
  EXPECT_FAIL(kvp_cache_write_layer(F.cache, 0, buf, F.layer_bytes + 1, NULL), KVP_ERR_INVALID_ARGUMENT,
              "kvp_cache_write_layer", "size");
  DLManagedTensor *t = (DLManagedTensor *)SENTINEL_PTR;
  EXPECT_FAIL(kvp_cache_export_dlpack(F.cache, LAYERS, KVP_VIEW_KEYS, 0, &t), KVP_ERR_INVALID_ARGUMENT,
              "kvp_cache_export_dlpack", "2");
  assert_null(t);
  t = (DLManagedTensor *)SENTINEL_PTR;
  EXPECT_FAIL(kvp_cache_export_dlpack(F.cache, 0, KVP_VIEW_KEYS, 1, &t), KVP_ERR_UNSUPPORTED,
              "kvp_cache_export_dlpack", "flags");
  assert_null(t);
  assert_cache_unchanged();
  free(buf);
}

/* ---- struct_size of options / output structs ------------------------------------------------- */

static void test_contract_api__struct_size_too_small(void **state) {
  (void)state;
  kvp_metadata_desc d;
  kvp_batch_options b;
  kvp_pool_options p;
  kvp_serialize_options s;
  kvp_deserialize_options ds;
  kvp_attention_options ao;
  EXPECT_FAIL(kvp_attention_options_init(&ao, 4), KVP_ERR_VERSION_MISMATCH, "kvp_attention_options_init",
              "struct_size");
  EXPECT_FAIL(kvp_metadata_desc_init(&d, 4), KVP_ERR_VERSION_MISMATCH, "kvp_metadata_desc_init", "struct_size");
  EXPECT_FAIL(kvp_batch_options_init(&b, 4), KVP_ERR_VERSION_MISMATCH, "kvp_batch_options_init", "struct_size");
  EXPECT_FAIL(kvp_pool_options_init(&p, 4), KVP_ERR_VERSION_MISMATCH, "kvp_pool_options_init", "struct_size");
  EXPECT_FAIL(kvp_serialize_options_init(&s, 4), KVP_ERR_VERSION_MISMATCH, "kvp_serialize_options_init",
              "struct_size");
  EXPECT_FAIL(kvp_deserialize_options_init(&ds, 4), KVP_ERR_VERSION_MISMATCH, "kvp_deserialize_options_init",
              "struct_size");
  /* output structs carry their size too; unchanged on failure */
  memset(&d, FILL, sizeof d);
  d.struct_size = 8;
  kvp_metadata_desc d0 = d;
  EXPECT_FAIL(kvp_metadata_get_desc(F.md, &d), KVP_ERR_VERSION_MISMATCH, "kvp_metadata_get_desc", "struct_size");
  assert_memory_equal(&d, &d0, sizeof d);
  kvp_pool_stats st;
  memset(&st, FILL, sizeof st);
  st.struct_size = 8;
  kvp_pool_stats st0 = st;
  EXPECT_FAIL(kvp_pool_get_stats(F.pool, &st), KVP_ERR_VERSION_MISMATCH, "kvp_pool_get_stats", "struct_size");
  assert_memory_equal(&st, &st0, sizeof st);
  kvp_pool_shard_stats sst;
  memset(&sst, FILL, sizeof sst);
  sst.struct_size = 8;
  kvp_pool_shard_stats sst0 = sst;
  EXPECT_FAIL(kvp_pool_get_shard_stats(F.pool, 0, &sst), KVP_ERR_VERSION_MISMATCH, "kvp_pool_get_shard_stats",
              "struct_size");
  assert_memory_equal(&sst, &sst0, sizeof sst);
  kvp_serialized_info info;
  memset(&info, FILL, sizeof info);
  info.struct_size = 8;
  kvp_serialized_info info0 = info;
  EXPECT_FAIL(kvp_serialized_inspect(F.blob, F.blob_len, 0, &info), KVP_ERR_VERSION_MISMATCH, "kvp_serialized_inspect",
              "struct_size");
  assert_memory_equal(&info, &info0, sizeof info);
  EXPECT_FAIL(kvp_serialized_inspect_file(F.blob_path, 0, &info), KVP_ERR_VERSION_MISMATCH,
              "kvp_serialized_inspect_file", "struct_size");
  assert_memory_equal(&info, &info0, sizeof info);
}

/* ---- the thread-local message ------------------------------------------------------------------ */

/* Each call first finds a failure's message in place and must leave the message empty. */

static void test_contract_api__message_cleared_by_every_success(void **state) {
  (void)state;
  /* metadata.h, ops.h */
  kvp_metadata_desc d;
  CLEARS(kvp_metadata_desc_init(&d, sizeof d));
  d.struct_size = sizeof d;
  CLEARS(kvp_metadata_get_desc(F.md, &d));
  kvp_metadata *borrowed = NULL, *empty = NULL, *built = NULL;
  CLEARS(kvp_metadata_create(&d, &borrowed));
  CLEARS(kvp_metadata_create_empty(KVP_LAYOUT_V2, 8, 2, 2, 0, &empty));
  const int32_t *arr = NULL;
  int64_t n = -1;
  CLEARS(kvp_metadata_get_array(borrowed, KVP_METADATA_CONTEXT_LENS, &arr, &n));
  assert_ptr_equal(arr, d.context_lens);
  assert_int_equal(n, d.context_lens_len);
  kvp_batch_options bo;
  CLEARS(kvp_batch_options_init(&bo, sizeof bo));
  int32_t page2 = 2, order[1] = {-1};
  kvp_batch_request req = {0, T_NEW, &page2, 1};
  CLEARS(kvp_metadata_build(&F.cfg, &req, 1, &bo, order, &built));
  assert_int_equal(order[0], 0);
  kvp_tensor key = make_tensor(g_key), value = make_tensor(g_value);
  CLEARS(kvp_concatenate(F.cache, 1, &key, &value, built, NULL));
  CLEARS(kvp_concatenate(F.cache, 0, &key, &value, borrowed, NULL));
  /* attention.h */
  kvp_attention_options ao;
  CLEARS(kvp_attention_options_init(&ao, sizeof ao));
  float out_buf[T_NEW * HEADS * HEAD_DIM];
  kvp_tensor out = kvp_test_tensor(out_buf, KVP_DTYPE_F32, T_NEW, HEADS, HEAD_DIM, KVP_DEVICE_CPU);
  CLEARS(kvp_attention(F.cache, 0, &key, NULL, NULL, borrowed, &ao, &out, NULL));

  /* json.h */
  char text[4096];
  size_t len = 0;
  CLEARS(kvp_config_to_json(&F.cfg, text, sizeof text, &len));
  kvp_config back = KVP_CONFIG_INIT;
  CLEARS(kvp_config_from_json(text, len, &back));
  assert_int_equal(back.num_pages, F.cfg.num_pages);
  CLEARS(kvp_metadata_to_json(built, text, sizeof text, &len));
  kvp_metadata *from_json = NULL;
  CLEARS(kvp_metadata_from_json(text, len, &from_json));
  CLEARS(kvp_metadata_destroy(from_json));
  CLEARS(kvp_metadata_destroy(borrowed));
  CLEARS(kvp_metadata_destroy(empty));
  CLEARS(kvp_metadata_destroy(built));

  /* pool.h */
  kvp_pool_options po;
  CLEARS(kvp_pool_options_init(&po, sizeof po));
  po.max_sequences = 4;
  kvp_pool *p = NULL;
  CLEARS(kvp_pool_create(F.cache, &po, &p));
  kvp_seq_id s, child;
  size_t reused = 99;
  CLEARS(kvp_pool_add_sequence(p, g_tokens, 5, 7, 0, &s, &reused));
  assert_int_equal(reused, 0);
  CLEARS(kvp_pool_set_computed(p, s, 5));
  CLEARS(kvp_pool_append(p, s, g_tokens + 5, 1, NULL));
  CLEARS(kvp_pool_fork(p, s, 1, &child));
  CLEARS(kvp_pool_truncate(p, child, 2));
  size_t length = 0, computed = 0, count = 0;
  CLEARS(kvp_pool_get_sequence_length(p, s, &length, &computed));
  assert_int_equal(length, 6);
  assert_int_equal(computed, 5);
  int32_t pages[16], slots[6];
  CLEARS(kvp_pool_get_page_table(p, s, pages, 16, &count));
  assert_int_equal(count, 1);
  CLEARS(kvp_pool_get_slots(p, s, 0, 6, slots));
  for (int i = 0; i < 6; i++) assert_int_equal(slots[i], pages[0] * PAGE + i);
  kvp_batch_request br;
  CLEARS(kvp_pool_get_batch_request(p, s, &br));
  assert_int_equal(br.num_computed + br.num_scheduled, 6);
  uint32_t ref = 0, flags = 0;
  CLEARS(kvp_pool_get_page_state(p, 0, &ref, &flags));
  assert_true((flags & KVP_PAGE_FLAG_NULL) != 0);
  kvp_pool_stats st;
  st.struct_size = sizeof st;
  CLEARS(kvp_pool_get_stats(p, &st));
  assert_int_equal(st.num_sequences, 2);
  uint32_t shard = 7;
  CLEARS(kvp_pool_get_sequence_shard(p, s, &shard));
  assert_int_equal(shard, 0);
  kvp_pool_shard_stats sst = KVP_POOL_SHARD_STATS_INIT;
  CLEARS(kvp_pool_get_shard_stats(p, 0, &sst));
  assert_int_equal(sst.num_sequences, 2);
  assert_int_equal(sst.total_pages, st.total_pages);
  CLEARS(kvp_pool_set_computed(p, s, 6));
  size_t blob_size = 0;
  assert_int_equal(kvp_pool_save_sequence(p, s, NULL, 0, &blob_size), KVP_ERR_BUFFER_TOO_SMALL);
  uint8_t *blob = (uint8_t *)test_malloc(blob_size);
  CLEARS(kvp_pool_save_sequence(p, s, blob, blob_size, &blob_size));
  kvp_seq_id restored = {0};
  CLEARS(kvp_pool_restore_sequence(p, blob, blob_size, 0, &restored));
  CLEARS(kvp_pool_free_sequence(p, restored));
  test_free(blob);
  char seq_path[] = "/tmp/kvp_contract_seq_XXXXXX";
  const int seq_fd = mkstemp(seq_path);
  assert_true(seq_fd >= 0);
  close(seq_fd);
  CLEARS(kvp_pool_save_sequence_to_file(p, s, seq_path, KVP_POOL_SAVE_FLAG_NO_SYNC));
  CLEARS(kvp_pool_restore_sequence_from_file(p, seq_path, 0, &restored));
  unlink(seq_path);
  CLEARS(kvp_pool_free_sequence(p, restored));
  CLEARS(kvp_pool_check_invariants(p));
  CLEARS(kvp_pool_free_sequence(p, child));
  CLEARS(kvp_pool_clear_prefix_cache(p));
  CLEARS(kvp_pool_destroy(p));
  int32_t src[1] = {1}, dst[1] = {3};
  CLEARS(kvp_cache_copy_pages(F.cache, src, dst, 1, NULL));

  /* serialize.h */
  kvp_serialize_options so;
  CLEARS(kvp_serialize_options_init(&so, sizeof so));
  size_t need = 0, written = 0;
  CLEARS(kvp_serialized_size(F.cache, &so, &need));
  unsigned char *buf = malloc(need);
  assert_non_null(buf);
  CLEARS(kvp_serialize(F.cache, &so, buf, need, &written));
  assert_int_equal(written, need);
  writer w = {0, 0};
  CLEARS(kvp_serialize_to_writer(F.cache, NULL, count_writer, &w));
  assert_int_equal(w.bytes, need);
  CLEARS(kvp_serialize_to_file(F.cache, NULL, F.out_path));
  kvp_deserialize_options dop;
  CLEARS(kvp_deserialize_options_init(&dop, sizeof dop));
  kvp_cache *c = NULL;
  CLEARS(kvp_deserialize_new(buf, written, &dop, &c));
  CLEARS(kvp_cache_destroy(c));
  reader r = {buf, written, 0, 0};
  CLEARS(kvp_deserialize_new_from_reader(read_mem, &r, NULL, &c));
  CLEARS(kvp_cache_destroy(c));
  CLEARS(kvp_deserialize_new_from_file(F.out_path, NULL, &c));
  CLEARS(kvp_deserialize_into(c, buf, written, NULL, 0));
  r.pos = 0;
  CLEARS(kvp_deserialize_into_from_reader(c, read_mem, &r, NULL, 0));
  CLEARS(kvp_deserialize_into_from_file(c, F.out_path, NULL, 0));
  const kvp_blob_ref blob_ref = {buf, written, NULL};
  CLEARS(kvp_deserialize_shards_into(c, &blob_ref, 1));
  CLEARS(kvp_cache_destroy(c));
  kvp_serialized_info info;
  info.struct_size = sizeof info;
  CLEARS(kvp_serialized_inspect(buf, written, KVP_INSPECT_VERIFY, &info));
  assert_int_equal(info.total_bytes, written);
  CLEARS(kvp_serialized_inspect_file(F.out_path, KVP_INSPECT_VERIFY, &info));
  free(buf);

  /* device.h, dlpack.h */
  int32_t nd = -1;
  CLEARS(kvp_device_count(&nd));
  unsigned char *layer = malloc(F.layer_bytes);
  assert_non_null(layer);
  CLEARS(kvp_cache_read_layer(F.cache, 1, layer, F.layer_bytes, NULL));
  CLEARS(kvp_cache_write_layer(F.cache, 0, layer, F.layer_bytes, NULL));
  free(layer);
  DLManagedTensor *t = NULL;
  CLEARS(kvp_cache_export_dlpack(F.cache, 0, KVP_VIEW_PAGES, 0, &t));
  t->deleter(t);

  /* plugin.h: kvp_get_api neither sets nor clears the message */
  provoke_error();
  assert_non_null(kvp_get_api(KVP_API_VERSION_1));
  assert_true(kvp_last_error_message()[0] != '\0');
}

/* ---- completeness and the plugin table --------------------------------------------------------- */

/* Functions with contract tests in tests/contract/test_contract.c (status.h, types.h, config.h,
 * cache.h, group.h; checked against that file) ... */
static const char *const covered_by_test_contract[] = {
    "kvp_status_name", "kvp_last_error_message", "kvp_last_error_copy", "kvp_set_misuse_handler",
    "kvp_version_number", "kvp_version_string", "kvp_build_info", "kvp_check_abi",
    "kvp_dtype_from_string", "kvp_dtype_name", "kvp_dtype_bits", "kvp_layout_from_string",
    "kvp_layout_name", "kvp_cdiv", "kvp_align_to_multiple", "kvp_previous_power_of_2",
    "kvp_dtype_packing", "kvp_page_size_bytes", "kvp_num_slices_per_kv_cache_update_page",
    "kvp_config_init", "kvp_config_validate", "kvp_hbm_budget_bytes", "kvp_device_memory_stats",
    "kvp_config_options_init", "kvp_config_create", "kvp_config_get_layout",
    "kvp_config_padded_num_slices", "kvp_config_plan", "kvp_cache_options_init", "kvp_cache_create",
    "kvp_cache_destroy", "kvp_cache_get_config", "kvp_cache_get_layout", "kvp_cache_get_device",
    "kvp_cache_get_view", "kvp_cache_get_async_error", "kvp_cache_clear_async_error", "kvp_set_host_allocator",
    "kvp_convert", "kvp_config_get_shard", "kvp_cache_create_shard", "kvp_cache_get_shard",
    "kvp_cache_group_create", "kvp_cache_group_destroy", "kvp_cache_group_get_num_shards",
    "kvp_cache_group_get_shard", "kvp_cache_group_concatenate",
};

/* ... and in this file. */
static const char *const covered_by_this_file[] = {
    /* metadata.h */
    "kvp_metadata_desc_init", "kvp_metadata_create", "kvp_metadata_create_empty", "kvp_metadata_destroy",
    "kvp_metadata_get_array", "kvp_metadata_get_desc", "kvp_batch_options_init", "kvp_metadata_build",
    /* ops.h, attention.h */
    "kvp_concatenate", "kvp_attention_options_init", "kvp_attention",
    /* pool.h */
    "kvp_pool_options_init", "kvp_pool_create", "kvp_pool_destroy", "kvp_pool_add_sequence", "kvp_pool_append",
    "kvp_pool_set_computed", "kvp_pool_truncate", "kvp_pool_fork", "kvp_pool_free_sequence",
    "kvp_pool_get_sequence_length", "kvp_pool_get_page_table", "kvp_pool_get_slots", "kvp_pool_get_batch_request",
    "kvp_pool_get_page_state", "kvp_pool_get_stats", "kvp_pool_check_invariants", "kvp_pool_clear_prefix_cache",
    "kvp_cache_copy_pages", "kvp_pool_get_sequence_shard", "kvp_pool_get_shard_stats", "kvp_pool_add_store",
    "kvp_pool_get_tier_stats", "kvp_pool_flush_tiers",
    "kvp_pool_save_sequence", "kvp_pool_save_sequence_to_file",
    "kvp_pool_restore_sequence", "kvp_pool_restore_sequence_from_file",
    /* store.h (kvp_store_create and kvp_store_create_directory succeeding: tests/unit/test_store.c;
     * kvp_store_create_redis: tests/redis/test_store_redis.c) */
    "kvp_store_options_init", "kvp_store_create", "kvp_store_create_memory", "kvp_store_create_directory",
    "kvp_store_create_redis",
    "kvp_store_destroy", "kvp_store_put", "kvp_store_get", "kvp_store_exists", "kvp_store_remove",
    "kvp_store_get_stats", "kvp_store_scrub", "kvp_store_list",
    /* kvp_store_block_inspect succeeding: tests/unit/test_store_list.c */
    "kvp_store_block_inspect",
    /* serialize.h */
    "kvp_serialize_options_init", "kvp_serialized_size", "kvp_serialize", "kvp_serialize_to_writer",
    "kvp_serialize_to_file", "kvp_deserialize_options_init", "kvp_deserialize_new",
    "kvp_deserialize_new_from_reader", "kvp_deserialize_new_from_file", "kvp_deserialize_into",
    "kvp_deserialize_into_from_reader", "kvp_deserialize_into_from_file", "kvp_serialized_inspect",
    "kvp_serialized_inspect_file", "kvp_deserialize_shards_into",
    /* json.h */
    "kvp_config_to_json", "kvp_config_from_json", "kvp_metadata_to_json", "kvp_metadata_from_json",
    /* device.h, dlpack.h */
    "kvp_device_count", "kvp_cache_read_layer", "kvp_cache_write_layer", "kvp_cache_export_dlpack",
    /* plugin.h */
    "kvp_get_api",
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* Every exported function, from the X-macro list the package and ABI tests use. */
typedef struct api_entry {
  const char *name;
  size_t offset;
  void (*direct)(void);
} api_entry;

static const api_entry api_entries[] = {
#define KVP_API_ENTRY(f) {"kvp_" #f, offsetof(kvp_api_v1, f), (void (*)(void))kvp_##f},
#include "../package/api_names.h"
#undef KVP_API_ENTRY
};

static int covered_count(const char *name) {
  int n = 0;
  for (size_t i = 0; i < COUNT(covered_by_test_contract); i++) n += strcmp(covered_by_test_contract[i], name) == 0;
  for (size_t i = 0; i < COUNT(covered_by_this_file); i++) n += strcmp(covered_by_this_file[i], name) == 0;
  return n;
}

static void test_contract_api__every_public_function_has_a_contract_test(void **state) {
  (void)state;
  int missing = 0;
  for (size_t i = 0; i < COUNT(api_entries); i++) {
    const int n = covered_count(api_entries[i].name);
    if (n == 0) {
      print_error("no contract test for %s (add one to tests/contract/)\n", api_entries[i].name);
      missing++;
    } else if (n > 1) {
      print_error("%s is listed %d times in the coverage tables\n", api_entries[i].name, n);
      missing++;
    }
  }
  assert_int_equal(missing, 0);
  /* kvp_get_api is not in its own table; it is covered here */
  assert_int_equal(covered_count("kvp_get_api"), 1);
  /* no stale name in the tables: every name is a public function */
  for (size_t i = 0; i < COUNT(covered_by_test_contract) + COUNT(covered_by_this_file); i++) {
    const char *name = i < COUNT(covered_by_test_contract) ? covered_by_test_contract[i]
                                                           : covered_by_this_file[i - COUNT(covered_by_test_contract)];
    int found = strcmp(name, "kvp_get_api") == 0;
    for (size_t j = 0; j < COUNT(api_entries); j++) found += strcmp(api_entries[j].name, name) == 0;
    if (found != 1) fail_msg("%s is in a coverage table but is not a public function", name);
  }
  assert_int_equal(COUNT(covered_by_test_contract) + COUNT(covered_by_this_file), COUNT(api_entries) + 1);
}

static void test_contract_api__get_api_table_is_complete(void **state) {
  (void)state;
  assert_null(kvp_get_api(0));
  assert_null(kvp_get_api(KVP_API_VERSION_1 + 1));
  const kvp_api_v1 *api = kvp_get_api(KVP_API_VERSION_1);
  assert_non_null(api);
  assert_int_equal(api->api_version, KVP_API_VERSION_1);
  assert_true(api->struct_size >= sizeof(kvp_api_v1));
  /* the list covers the whole struct: every slot after the header is a listed function */
  const size_t first = offsetof(kvp_api_v1, api_version) + sizeof(uint32_t);
  assert_int_equal((sizeof(kvp_api_v1) - first) / sizeof(void (*)(void)), COUNT(api_entries));
  for (size_t i = 0; i < COUNT(api_entries); i++) {
    void (*fn)(void);
    memcpy(&fn, (const char *)api + api_entries[i].offset, sizeof fn);
    if (fn == NULL) fail_msg("kvp_api_v1 field for %s is NULL", api_entries[i].name);
    if (fn != api_entries[i].direct) fail_msg("kvp_api_v1 field for %s is not %s", api_entries[i].name, api_entries[i].name);
  }
  /* a few fields by name */
  assert_true(api->concatenate == kvp_concatenate);
  assert_true(api->pool_create == kvp_pool_create);
  assert_true(api->deserialize_new_from_file == kvp_deserialize_new_from_file);
  assert_true(api->cache_export_dlpack == kvp_cache_export_dlpack);
  assert_true(api->metadata_destroy == kvp_metadata_destroy);
  /* a bad handle through the table behaves like the direct call */
  g_what1 = "NULL";
  g_what2 = "";
  EXPECT_BAD_HANDLE(api->pool_check_invariants(NULL), "kvp_pool_check_invariants");
}

int main(void) {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(test_contract_api__null_handles),
      T(test_contract_api__destroyed_handles),
      T(test_contract_api__wrong_kind_handles),
      T(test_contract_api__foreign_pointer_handles),
      T(test_contract_api__metadata_to_json_misuse_report_names_it),
      T(test_contract_api__destroy_null_is_ok),
      T(test_contract_api__double_destroy),
      T(test_contract_api__pool_of_a_destroyed_cache),
      T(test_contract_api__null_pointers_metadata),
      T(test_contract_api__null_pointers_concatenate),
      T(test_contract_api__null_pointers_attention),
      T(test_contract_api__null_pointers_pool),
      T(test_contract_api__null_pointers_serialize),
      T(test_contract_api__null_pointers_json),
      T(test_contract_api__null_pointers_device),
      T(test_contract_api__store_handles),
      T(test_contract_api__null_pointers_store),
      T(test_contract_api__struct_size_too_small),
      T(test_contract_api__message_cleared_by_every_success),
      T(test_contract_api__every_public_function_has_a_contract_test),
      T(test_contract_api__get_api_table_is_complete),
  };
#undef T
  return cmocka_run_group_tests_name("contract_api", tests, NULL, NULL);
}
