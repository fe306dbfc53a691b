/* KVP_BATCH_FLAG_REQUEST_ORDER: a mixed batch (prefills and decodes, reordered decode-first by
 * kvp_metadata_build) whose keys, values and queries are packed in the caller's request order
 * must write the same pages and produce the same attention rows as the classic path, where the
 * caller repacks them by order_out. v3 and v2, f32 caches (exact comparisons). Then the metadata
 * arrays (token_starts, position_ids, v2 slice sources), JSON and desc round trips, and borrowed
 * token_starts that do not tile the rows (status, message, nothing written). */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "support.h"

#define H 2
#define HQ 4
#define D 64
#define PAGE 8
#define PAGES 32
#define NREQ 5

/* Requests: prefill 5, decode, prefill 9, decode, decode (decodes have cached tokens). */
static const int64_t kComputed[NREQ] = {0, 6, 0, 11, 3};
static const int64_t kScheduled[NREQ] = {5, 1, 9, 1, 1};
static int32_t g_pages[NREQ][4] = {{1, 2}, {3, 4}, {5, 6}, {7, 8}, {9}};
static const int64_t kNumPages[NREQ] = {1, 1, 2, 2, 1};
#define TOKENS 17

static void make_requests(kvp_batch_request *r) {
  for (int i = 0; i < NREQ; ++i) {
    r[i].num_computed = kComputed[i];
    r[i].num_scheduled = kScheduled[i];
    r[i].page_ids = g_pages[i];
    r[i].num_pages = kNumPages[i];
  }
}

/* The start of request i's tokens in request order. */
static int64_t request_start(int i) {
  int64_t t = 0;
  for (int k = 0; k < i; ++k) t += kScheduled[k];
  return t;
}

/* Copies request-ordered rows (width w floats) into row order by `order`. */
static void repack(const float *by_request, float *by_row, const int32_t *order, int64_t w) {
  int64_t t = 0;
  for (int row = 0; row < NREQ; ++row) {
    const int i = order[row];
    memcpy(by_row + t * w, by_request + request_start(i) * w, (size_t)(kScheduled[i] * w) * sizeof(float));
    t += kScheduled[i];
  }
}

static kvp_metadata *build(const kvp_config *cfg, uint32_t flags, int32_t *order) {
  kvp_batch_request r[NREQ];
  make_requests(r);
  kvp_batch_options bo = KVP_BATCH_OPTIONS_INIT;
  bo.flags = flags;
  kvp_metadata *md = NULL;
  assert_kvp_ok(kvp_metadata_build(cfg, r, NREQ, &bo, order, &md));
  return md;
}

static float *random_rows(int64_t n, uint64_t seed) {
  float *p = malloc((size_t)n * sizeof(float));
  assert_non_null(p);
  for (int64_t i = 0; i < n; ++i) p[i] = (float)kvp_test_rand_range(&seed, -1000, 1000) / 256.0f;
  return p;
}

static unsigned char *layer_bytes(const kvp_cache *c, size_t *n) {
  kvp_layout_info li = KVP_LAYOUT_INFO_INIT;
  assert_kvp_ok(kvp_cache_get_layout(c, &li));
  *n = (size_t)li.layer_bytes;
  unsigned char *b = malloc(*n);
  assert_non_null(b);
  assert_kvp_ok(kvp_cache_read_layer(c, 0, b, *n, NULL));
  return b;
}

/* Both paths on two caches of `layout`: the same pages and the same attention rows. */
static void check_same_as_repacked(kvp_layout layout) {
  const kvp_config cfg = kvp_test_config(1, H, D, PAGE, PAGES, KVP_DTYPE_F32, layout);
  kvp_cache *classic, *ordered;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &classic));
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &ordered));
  int32_t order[NREQ], order2[NREQ];
  kvp_metadata *md_rows = build(&cfg, 0, order);
  kvp_metadata *md_req = build(&cfg, KVP_BATCH_FLAG_REQUEST_ORDER, order2);
  assert_memory_equal(order, order2, sizeof order);
  assert_int_not_equal(order[0], 0); /* the batch was reordered: a decode comes first */

  float *k = random_rows(TOKENS * H * D, 1), *v = random_rows(TOKENS * H * D, 2), *q = random_rows(TOKENS * HQ * D, 3);
  float *k_rows = malloc(sizeof(float) * TOKENS * H * D), *v_rows = malloc(sizeof(float) * TOKENS * H * D);
  float *q_rows = malloc(sizeof(float) * TOKENS * HQ * D);
  repack(k, k_rows, order, H * D);
  repack(v, v_rows, order, H * D);
  repack(q, q_rows, order, HQ * D);
  float *out_rows = calloc(TOKENS * HQ * D, sizeof(float)), *out_req = calloc(TOKENS * HQ * D, sizeof(float));
  float *out_req_in_rows = malloc(sizeof(float) * TOKENS * HQ * D);

  kvp_tensor tk = kvp_test_tensor(k_rows, KVP_DTYPE_F32, TOKENS, H, D, KVP_DEVICE_CPU);
  kvp_tensor tv = kvp_test_tensor(v_rows, KVP_DTYPE_F32, TOKENS, H, D, KVP_DEVICE_CPU);
  kvp_tensor tq = kvp_test_tensor(q_rows, KVP_DTYPE_F32, TOKENS, HQ, D, KVP_DEVICE_CPU);
  kvp_tensor to = kvp_test_tensor(out_rows, KVP_DTYPE_F32, TOKENS, HQ, D, KVP_DEVICE_CPU);
  assert_kvp_ok(kvp_attention(classic, 0, &tq, &tk, &tv, md_rows, NULL, &to, NULL));

  kvp_tensor rk = kvp_test_tensor(k, KVP_DTYPE_F32, TOKENS, H, D, KVP_DEVICE_CPU);
  kvp_tensor rv = kvp_test_tensor(v, KVP_DTYPE_F32, TOKENS, H, D, KVP_DEVICE_CPU);
  kvp_tensor rq = kvp_test_tensor(q, KVP_DTYPE_F32, TOKENS, HQ, D, KVP_DEVICE_CPU);
  kvp_tensor ro = kvp_test_tensor(out_req, KVP_DTYPE_F32, TOKENS, HQ, D, KVP_DEVICE_CPU);
  assert_kvp_ok(kvp_attention(ordered, 0, &rq, &rk, &rv, md_req, NULL, &ro, NULL));

  size_t n1, n2;
  unsigned char *a = layer_bytes(classic, &n1), *b = layer_bytes(ordered, &n2);
  assert_int_equal(n1, n2);
  assert_memory_equal(a, b, n1);
  repack(out_req, out_req_in_rows, order, HQ * D);
  assert_memory_equal(out_rows, out_req_in_rows, sizeof(float) * TOKENS * HQ * D);

  /* kvp_concatenate alone gives the same pages too. */
  kvp_cache *again;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &again));
  assert_kvp_ok(kvp_concatenate(again, 0, &rk, &rv, md_req, NULL));
  unsigned char *c = layer_bytes(again, &n2);
  assert_memory_equal(a, c, n1);

  free(a), free(b), free(c);
  free(k), free(v), free(q), free(k_rows), free(v_rows), free(q_rows), free(out_rows), free(out_req), free(out_req_in_rows);
  assert_kvp_ok(kvp_metadata_destroy(md_rows));
  assert_kvp_ok(kvp_metadata_destroy(md_req));
  assert_kvp_ok(kvp_cache_destroy(again));
  assert_kvp_ok(kvp_cache_destroy(classic));
  assert_kvp_ok(kvp_cache_destroy(ordered));
}

static void test_request_order__v3_same_pages_and_rows(void **state) {
  (void)state;
  check_same_as_repacked(KVP_LAYOUT_V3);
}

static void test_request_order__v2_same_pages_and_rows(void **state) {
  (void)state;
  check_same_as_repacked(KVP_LAYOUT_V2);
}

/* The arrays: token_starts per row, position_ids in request packing, v2 slice sources. */
static void test_request_order__metadata_arrays(void **state) {
  (void)state;
  const kvp_config cfg = kvp_test_config(1, H, D, PAGE, PAGES, KVP_DTYPE_F32, KVP_LAYOUT_V3);
  int32_t order[NREQ];
  kvp_metadata *md = build(&cfg, KVP_BATCH_FLAG_REQUEST_ORDER, order);
  const int32_t *ts, *pos;
  int64_t n_ts, n_pos;
  assert_kvp_ok(kvp_metadata_get_array(md, KVP_METADATA_TOKEN_STARTS, &ts, &n_ts));
  assert_kvp_ok(kvp_metadata_get_array(md, KVP_METADATA_POSITION_IDS, &pos, &n_pos));
  assert_int_equal(n_ts, NREQ);
  assert_int_equal(n_pos, TOKENS);
  for (int row = 0; row < NREQ; ++row) {
    const int i = order[row];
    assert_int_equal(ts[row], request_start(i));
    for (int64_t t = 0; t < kScheduled[i]; ++t) assert_int_equal(pos[request_start(i) + t], kComputed[i] + t);
  }
  kvp_metadata_desc d = KVP_METADATA_DESC_INIT;
  assert_kvp_ok(kvp_metadata_get_desc(md, &d));
  assert_ptr_equal(d.token_starts, ts);
  assert_int_equal(d.token_starts_len, NREQ);
  /* JSON keeps it. */
  size_t len = 0;
  assert_kvp_status(kvp_metadata_to_json(md, NULL, 0, &len), KVP_ERR_BUFFER_TOO_SMALL, "");
  char *text = malloc(len);
  assert_kvp_ok(kvp_metadata_to_json(md, text, len, &len));
  assert_non_null(strstr(text, "\"token_starts\""));
  kvp_metadata *back = NULL;
  assert_kvp_ok(kvp_metadata_from_json(text, strlen(text), &back));
  const int32_t *ts2;
  int64_t n2;
  assert_kvp_ok(kvp_metadata_get_array(back, KVP_METADATA_TOKEN_STARTS, &ts2, &n2));
  assert_int_equal(n2, NREQ);
  assert_memory_equal(ts, ts2, NREQ * sizeof *ts);
  free(text);
  assert_kvp_ok(kvp_metadata_destroy(back));
  assert_kvp_ok(kvp_metadata_destroy(md));
  /* Without the flag: no token_starts, and the JSON does not name it (the reference's format). */
  md = build(&cfg, 0, order);
  assert_kvp_ok(kvp_metadata_get_array(md, KVP_METADATA_TOKEN_STARTS, &ts, &n_ts));
  assert_null(ts);
  assert_int_equal(n_ts, 0);
  assert_kvp_status(kvp_metadata_to_json(md, NULL, 0, &len), KVP_ERR_BUFFER_TOO_SMALL, "");
  text = malloc(len);
  assert_kvp_ok(kvp_metadata_to_json(md, text, len, &len));
  assert_null(strstr(text, "token_starts"));
  free(text);
  assert_kvp_ok(kvp_metadata_destroy(md));
}

/* Borrowed token_starts that leave a gap or overlap: refused by concatenate and attention, nothing
 * written; on device metadata: unsupported. */
static void test_request_order__bad_token_starts_change_nothing(void **state) {
  (void)state;
  const kvp_config cfg = kvp_test_config(1, H, D, PAGE, PAGES, KVP_DTYPE_F32, KVP_LAYOUT_V3);
  kvp_cache *cache;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &cache));
  int32_t order[NREQ];
  kvp_metadata *md = build(&cfg, KVP_BATCH_FLAG_REQUEST_ORDER, order);
  kvp_metadata_desc d = KVP_METADATA_DESC_INIT;
  assert_kvp_ok(kvp_metadata_get_desc(md, &d));
  int32_t bad[NREQ];
  memcpy(bad, d.token_starts, sizeof bad);
  bad[0] = bad[1]; /* two rows read the same tokens, one block is never read */
  d.token_starts = bad;
  kvp_metadata *borrowed = NULL;
  assert_kvp_ok(kvp_metadata_create(&d, &borrowed));
  float *k = random_rows(TOKENS * H * D, 4), *q = random_rows(TOKENS * HQ * D, 5);
  float *out = calloc(TOKENS * HQ * D, sizeof(float));
  kvp_tensor tk = kvp_test_tensor(k, KVP_DTYPE_F32, TOKENS, H, D, KVP_DEVICE_CPU);
  kvp_tensor tq = kvp_test_tensor(q, KVP_DTYPE_F32, TOKENS, HQ, D, KVP_DEVICE_CPU);
  kvp_tensor to = kvp_test_tensor(out, KVP_DTYPE_F32, TOKENS, HQ, D, KVP_DEVICE_CPU);
  size_t n;
  unsigned char *before = layer_bytes(cache, &n);
  assert_kvp_status(kvp_concatenate(cache, 0, &tk, &tk, borrowed, NULL), KVP_ERR_INVALID_ARGUMENT, "token_starts");
  assert_kvp_status(kvp_attention(cache, 0, &tq, &tk, &tk, borrowed, NULL, &to, NULL), KVP_ERR_INVALID_ARGUMENT,
                    "token_starts");
  unsigned char *after = layer_bytes(cache, &n);
  assert_memory_equal(before, after, n);
  for (int64_t i = 0; i < TOKENS * HQ * D; ++i) assert_true(out[i] == 0.0f);
  /* Wrong length, and device arrays. */
  kvp_metadata *none = (kvp_metadata *)0x1;
  d.token_starts_len = NREQ - 1;
  assert_kvp_status(kvp_metadata_create(&d, &none), KVP_ERR_INVALID_ARGUMENT, "token_starts has 4 entries");
  assert_null(none);
  d.token_starts_len = NREQ;
  d.device_type = KVP_DEVICE_CUDA;
  assert_kvp_status(kvp_metadata_create(&d, &none), KVP_ERR_UNSUPPORTED, "host metadata only");
  free(before), free(after), free(k), free(q), free(out);
  assert_kvp_ok(kvp_metadata_destroy(borrowed));
  assert_kvp_ok(kvp_metadata_destroy(md));
  assert_kvp_ok(kvp_cache_destroy(cache));
}

/* A caller built against 1.0/1.1 passes version 1 of kvp_metadata_desc (it ends before
 * token_starts): init, get_desc and create still work, and nothing past its size is written. */
static void test_request_order__version_1_desc_still_works(void **state) {
  (void)state;
  const size_t v1 = offsetof(kvp_metadata_desc, token_starts);
  const kvp_config cfg = kvp_test_config(1, H, D, PAGE, PAGES, KVP_DTYPE_F32, KVP_LAYOUT_V3);
  int32_t order[NREQ];
  kvp_metadata *md = build(&cfg, 0, order);
  unsigned char buf[sizeof(kvp_metadata_desc) + 16];
  memset(buf, 0xA5, sizeof buf);
  kvp_metadata_desc *d = (kvp_metadata_desc *)(void *)buf;
  assert_kvp_ok(kvp_metadata_desc_init(d, (uint32_t)v1));
  assert_int_equal(d->struct_size, v1);
  for (size_t i = v1; i < sizeof buf; ++i) assert_int_equal(buf[i], 0xA5);
  assert_kvp_ok(kvp_metadata_get_desc(md, d));
  assert_int_equal(d->struct_size, v1);
  for (size_t i = v1; i < sizeof buf; ++i) assert_int_equal(buf[i], 0xA5);
  d->abi_version = 1; /* the 0xA5 bytes past struct_size must not be read */
  kvp_metadata *copy = NULL;
  assert_kvp_ok(kvp_metadata_create(d, &copy));
  assert_kvp_ok(kvp_metadata_destroy(copy));
  assert_kvp_status(kvp_metadata_desc_init(d, (uint32_t)v1 - 8), KVP_ERR_VERSION_MISMATCH, "set struct_size");
  assert_kvp_ok(kvp_metadata_destroy(md));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_request_order__v3_same_pages_and_rows),
      cmocka_unit_test(test_request_order__v2_same_pages_and_rows),
      cmocka_unit_test(test_request_order__metadata_arrays),
      cmocka_unit_test(test_request_order__bad_token_starts_change_nothing),
      cmocka_unit_test(test_request_order__version_1_desc_still_works),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
