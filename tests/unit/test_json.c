/* Config <-> JSON: the reference's exact text (SPEC.md §8.1), Python-repr floats, from_json's
 * leniency (unknown keys, defaults, aliases) and its errors, buffer sizing. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fail_malloc.h"
#include "support.h"

/* SPEC.md §8.1, seed example (row A), as the reference prints it. */
static const char k_row_a[] =
    "{\"num_hidden_layers\": 32, \"max_model_length\": 8192, \"num_kv_heads\": 8, \"k_headdim\": 128, "
    "\"v_headdim\": 128, \"hbm_utilization\": 0.9, \"page_size\": 128, \"num_pages\": 3728, "
    "\"max_num_pages_per_req\": 64, \"num_slices_per_kv_cache_update_page\": 32, \"max_num_tokens\": -1, "
    "\"max_num_reqs\": -1, \"version\": \"v3\", \"_kvdtype_str\": \"bf16\"}";

static kvp_config row_a(void) {
  kvp_config c;
  assert_kvp_ok(kvp_config_init(&c, sizeof c));
  c.num_hidden_layers = 32;
  c.max_model_length = 8192;
  c.num_kv_heads = 8;
  c.k_headdim = 128;
  c.v_headdim = 128;
  c.hbm_utilization = 0.9;
  c.page_size = 128;
  c.num_pages = 3728;
  c.max_num_pages_per_req = 64;
  c.num_slices_per_kv_cache_update_page = 32;
  c.max_num_tokens = -1;
  c.max_num_reqs = -1;
  c.version = KVP_LAYOUT_V3;
  c.kvdtype = KVP_DTYPE_BF16;
  return c;
}

static char *to_json(const kvp_config *c) {
  size_t need = 0, n = 0;
  assert_int_equal(kvp_config_to_json(c, NULL, 0, &need), KVP_ERR_BUFFER_TOO_SMALL);
  char *s = malloc(need);
  assert_kvp_ok(kvp_config_to_json(c, s, need, &n));
  assert_int_equal(n + 1, need);
  assert_int_equal(strlen(s), n);
  return s;
}

static void test_json__config_matches_the_reference_text(void **state) {
  (void)state;
  kvp_config c = row_a();
  char *s = to_json(&c);
  assert_string_equal(s, k_row_a);
  free(s);
  /* The same record built by kvp_config_create from the row-A inputs prints the same text. */
  kvp_config_options o;
  assert_kvp_ok(kvp_config_options_init(&o, sizeof o));
  o.num_hidden_layers = 32;
  o.num_kv_heads = 8;
  o.kv_head_dim_size = 128;
  o.max_model_length = 8192;
  o.budget_bytes = 62545461248LL; /* SPEC.md §2.5 budget */
  kvp_config made;
  assert_kvp_ok(kvp_config_create(&o, &made));
  s = to_json(&made);
  assert_string_equal(s, k_row_a);
  free(s);
}

static void test_json__config_round_trips(void **state) {
  (void)state;
  kvp_config c;
  memset(&c, 0x5A, sizeof c);
  c.struct_size = sizeof c; /* opting in to version 2: every byte of it is written */
  c.abi_version = KVP_CONFIG_VERSION;
  assert_kvp_ok(kvp_config_from_json(k_row_a, strlen(k_row_a), &c));
  kvp_config want = row_a();
  assert_memory_equal(&c, &want, sizeof c);
  char *s = to_json(&c);
  assert_string_equal(s, k_row_a);
  free(s);
  /* Every storage dtype and both layouts, with canonical names. */
  const kvp_dtype dts[] = {KVP_DTYPE_F32, KVP_DTYPE_F16, KVP_DTYPE_BF16, KVP_DTYPE_F8_E4M3FN, KVP_DTYPE_F8_E5M2};
  const char *names[] = {"fp32", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2"};
  for (int i = 0; i < 5; ++i) {
    kvp_config x = row_a();
    x.kvdtype = dts[i];
    x.version = i % 2 ? KVP_LAYOUT_V2 : KVP_LAYOUT_V3;
    char *t = to_json(&x);
    char tail[64];
    snprintf(tail, sizeof tail, "\"version\": \"%s\", \"_kvdtype_str\": \"%s\"}", i % 2 ? "v2" : "v3", names[i]);
    assert_string_equal(t + strlen(t) - strlen(tail), tail);
    kvp_config y = KVP_CONFIG_INIT;
    assert_kvp_ok(kvp_config_from_json(t, strlen(t), &y));
    assert_memory_equal(&x, &y, sizeof x);
    free(t);
  }
}

static void test_json__floats_print_like_python_repr(void **state) {
  (void)state;
  /* Expected texts are Python's repr() of the same doubles. */
  const double v[] = {0.9, 1.0, 0.85, 1e-05, 0.0001, 0.1 + 0.2, 1e16, 1234567890123456.0, 2.5e-07, 1.0 / 3.0, 100.0,
                      123.456, 5e-324, 1.7976931348623157e308, -0.5};
  const char *want[] = {"0.9", "1.0", "0.85", "1e-05", "0.0001", "0.30000000000000004", "1e+16", "1234567890123456.0",
                        "2.5e-07", "0.3333333333333333", "100.0", "123.456", "5e-324", "1.7976931348623157e+308",
                        "-0.5"};
  for (size_t i = 0; i < sizeof v / sizeof v[0]; ++i) {
    kvp_config c = row_a();
    c.hbm_utilization = v[i];
    char *s = to_json(&c);
    char key[96];
    snprintf(key, sizeof key, "\"hbm_utilization\": %s, \"page_size\"", want[i]);
    if (strstr(s, key) == NULL) fail_msg("%g: %s lacks %s", v[i], s, key);
    free(s);
  }
  /* Random doubles read back bit-identical. */
  uint64_t seed = 9;
  for (int i = 0; i < 2000; ++i) {
    uint64_t bits = kvp_test_rand(&seed);
    double d;
    memcpy(&d, &bits, sizeof d);
    if (!isfinite(d)) continue;
    kvp_config c = row_a();
    c.hbm_utilization = d;
    char *s = to_json(&c);
    kvp_config back = KVP_CONFIG_INIT;
    assert_kvp_ok(kvp_config_from_json(s, strlen(s), &back));
    assert_memory_equal(&back.hbm_utilization, &d, sizeof d);
    const char *p = strstr(s, "\"hbm_utilization\": ") + 19;
    assert_true(strtod(p, NULL) == d || (d == 0 && strtod(p, NULL) == 0));
    free(s);
  }
}

static void test_json__from_json_is_lenient_like_the_reference(void **state) {
  (void)state;
  /* Unknown keys (the reference's later fields) are ignored; missing optional ones default;
   * spellings of the reference are accepted; no validation: inconsistent numbers stay. */
  const char *j = "{\"num_hidden_layers\": 2, \"max_model_length\": 100, \"num_kv_heads\": 3, \"k_headdim\": 64, "
                  "\"v_headdim\": 32, \"data_parallel_size\": 4, \"_mixed_layer_configs\": null, "
                  "\"num_pages\": 7, \"_kvdtype_str\": \"bfloat16\", \"page_size\": 5}";
  kvp_config c = KVP_CONFIG_INIT;
  assert_kvp_ok(kvp_config_from_json(j, strlen(j), &c));
  assert_int_equal(c.struct_size, sizeof c);
  assert_int_equal(c.abi_version, KVP_CONFIG_VERSION);
  assert_int_equal(c.num_hidden_layers, 2);
  assert_int_equal(c.num_kv_heads, 3);
  assert_int_equal(c.v_headdim, 32);
  assert_int_equal(c.num_pages, 7);
  assert_int_equal(c.page_size, 5);
  assert_true(c.hbm_utilization == 0.9);
  assert_int_equal(c.max_num_pages_per_req, -1);
  assert_int_equal(c.num_slices_per_kv_cache_update_page, -1);
  assert_int_equal(c.max_num_tokens, -1);
  assert_int_equal(c.max_num_reqs, -1);
  assert_int_equal(c.version, KVP_LAYOUT_V3);
  assert_int_equal(c.kvdtype, KVP_DTYPE_BF16);
  assert_int_not_equal(kvp_config_validate(&c), KVP_OK); /* v_headdim != k_headdim: kept as given */
  const char *e = "{\"num_hidden_layers\": 1, \"max_model_length\": 1, \"num_kv_heads\": 1, \"k_headdim\": 8, "
                  "\"v_headdim\": 8, \"_kvdtype_str\": \"fp8\", \"version\": \"v2\", \"hbm_utilization\": 1}";
  assert_kvp_ok(kvp_config_from_json(e, strlen(e), &c));
  assert_int_equal(c.kvdtype, KVP_DTYPE_F8_E5M2);
  assert_int_equal(c.version, KVP_LAYOUT_V2);
  assert_true(c.hbm_utilization == 1.0);
  /* Not NUL-terminated: only `len` bytes are read. */
  char *copy = malloc(strlen(k_row_a));
  memcpy(copy, k_row_a, strlen(k_row_a));
  assert_kvp_ok(kvp_config_from_json(copy, strlen(k_row_a), &c));
  free(copy);
}

static void test_json__from_json_errors_leave_out_unchanged(void **state) {
  (void)state;
  struct {
    const char *text;
    kvp_status code;
    const char *msg;
  } cases[] = {
      {"{\"max_model_length\": 1, \"num_kv_heads\": 1, \"k_headdim\": 8, \"v_headdim\": 8}", KVP_ERR_INVALID_ARGUMENT,
       "num_hidden_layers"},
      {"{\"num_hidden_layers\": 1, \"max_model_length\": 1, \"num_kv_heads\": 1, \"k_headdim\": 8}",
       KVP_ERR_INVALID_ARGUMENT, "v_headdim"},
      {"{\"num_hidden_layers\": \"32\", \"max_model_length\": 1, \"num_kv_heads\": 1, \"k_headdim\": 8, \"v_headdim\": 8}",
       KVP_ERR_INVALID_ARGUMENT, "integer"},
      {"{\"num_hidden_layers\": 1.5, \"max_model_length\": 1, \"num_kv_heads\": 1, \"k_headdim\": 8, \"v_headdim\": 8}",
       KVP_ERR_INVALID_ARGUMENT, "num_hidden_layers"},
      {"{\"num_hidden_layers\": 18446744073709551615, \"max_model_length\": 1, \"num_kv_heads\": 1, \"k_headdim\": 8, "
       "\"v_headdim\": 8}",
       KVP_ERR_INVALID_ARGUMENT, "int64"},
      {"{\"num_hidden_layers\": 1, \"max_model_length\": 1, \"num_kv_heads\": 1, \"k_headdim\": 8, \"v_headdim\": 8, "
       "\"version\": \"v4\"}",
       KVP_ERR_NOT_FOUND, "v4"},
      {"{\"num_hidden_layers\": 1, \"max_model_length\": 1, \"num_kv_heads\": 1, \"k_headdim\": 8, \"v_headdim\": 8, "
       "\"_kvdtype_str\": \"int8\"}",
       KVP_ERR_NOT_FOUND, "int8"},
      {"{\"num_hidden_layers\": 1, \"max_model_length\": 1, \"num_kv_heads\": 1, \"k_headdim\": 8, \"v_headdim\": 8, "
       "\"hbm_utilization\": \"high\"}",
       KVP_ERR_INVALID_ARGUMENT, "hbm_utilization"},
      {"{\"num_hidden_layers\": 1, ", KVP_ERR_INVALID_ARGUMENT, "malformed"},
      {"[1, 2]", KVP_ERR_INVALID_ARGUMENT, "not an object"},
      {"", KVP_ERR_INVALID_ARGUMENT, "malformed"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
    kvp_config c, before;
    memset(&c, 0x77, sizeof c);
    before = c;
    assert_kvp_status(kvp_config_from_json(cases[i].text, strlen(cases[i].text), &c), cases[i].code, cases[i].msg);
    assert_memory_equal(&c, &before, sizeof c);
  }
  kvp_config c = KVP_CONFIG_INIT;
  assert_kvp_status(kvp_config_from_json(NULL, 0, &c), KVP_ERR_INVALID_ARGUMENT, "json");
  assert_kvp_status(kvp_config_from_json(k_row_a, strlen(k_row_a), NULL), KVP_ERR_INVALID_ARGUMENT, "out");
}

static void test_json__to_json_sizes_and_errors(void **state) {
  (void)state;
  kvp_config c = row_a();
  const size_t len = strlen(k_row_a);
  char buf[400];
  size_t n = 0;
  memset(buf, '#', sizeof buf);
  assert_kvp_status(kvp_config_to_json(&c, buf, len, &n), KVP_ERR_BUFFER_TOO_SMALL, "needs");
  assert_int_equal(n, len + 1);
  for (size_t i = 0; i < sizeof buf; ++i) assert_int_equal(buf[i], '#');
  assert_kvp_ok(kvp_config_to_json(&c, buf, len + 1, &n));
  assert_int_equal(n, len);
  assert_string_equal(buf, k_row_a);
  assert_kvp_status(kvp_config_to_json(&c, NULL, 4, &n), KVP_ERR_INVALID_ARGUMENT, "buf");
  assert_kvp_status(kvp_config_to_json(&c, buf, sizeof buf, NULL), KVP_ERR_INVALID_ARGUMENT, "written_out");
  assert_kvp_status(kvp_config_to_json(NULL, buf, sizeof buf, &n), KVP_ERR_INVALID_ARGUMENT, "");
  c.version = 9;
  assert_kvp_status(kvp_config_to_json(&c, buf, sizeof buf, &n), KVP_ERR_NOT_FOUND, "9");
  c = row_a();
  c.kvdtype = 99;
  assert_kvp_status(kvp_config_to_json(&c, buf, sizeof buf, &n), KVP_ERR_NOT_FOUND, "99");
  c = row_a();
  c.hbm_utilization = NAN;
  assert_kvp_status(kvp_config_to_json(&c, buf, sizeof buf, &n), KVP_ERR_INVALID_ARGUMENT, "finite");
  c = row_a();
  c.struct_size = 4;
  assert_kvp_status(kvp_config_to_json(&c, buf, sizeof buf, &n), KVP_ERR_VERSION_MISMATCH, "struct_size");
}


/* ---- runtime metadata ---------------------------------------------------------------------- */

static char *md_json(const kvp_metadata *m) {
  size_t need = 0, n = 0;
  assert_int_equal(kvp_metadata_to_json(m, NULL, 0, &need), KVP_ERR_BUFFER_TOO_SMALL);
  char *s = malloc(need);
  assert_kvp_ok(kvp_metadata_to_json(m, s, need, &n));
  assert_int_equal(n + 1, need);
  return s;
}

static void assert_same_arrays(const kvp_metadata *a, const kvp_metadata *b) {
  for (kvp_metadata_field f = KVP_METADATA_PAGES_TABLES; f <= KVP_METADATA_POSITION_IDS; ++f) {
    const int32_t *pa = NULL, *pb = NULL;
    int64_t na = -1, nb = -2;
    assert_kvp_ok(kvp_metadata_get_array(a, f, &pa, &na));
    assert_kvp_ok(kvp_metadata_get_array(b, f, &pb, &nb));
    assert_int_equal(na, nb);
    if (na > 0) assert_memory_equal(pa, pb, (size_t)na * sizeof(int32_t));
  }
}

static void test_json__metadata_arrays_are_real_lists_and_round_trip(void **state) {
  (void)state;
  /* v3: two requests, three page-table columns. */
  const int32_t pt[] = {5, 6, 0, 7, 0, 0};
  const int32_t cl[] = {20, 3};
  const int32_t ql[] = {0, 4, 7};
  const int32_t rd[] = {1, 2, 2};
  kvp_metadata_desc d;
  assert_kvp_ok(kvp_metadata_desc_init(&d, sizeof d));
  d.version = KVP_LAYOUT_V3;
  d.page_size = 16;
  d.num_slices_per_kv_cache_update_page = 8;
  d.pages_tables = pt;
  d.num_reqs = 2;
  d.pages_per_req = 3;
  d.context_lens = cl;
  d.context_lens_len = 2;
  d.query_start_loc = ql;
  d.query_start_loc_len = 3;
  d.request_distribution = rd;
  d.request_distribution_len = 3;
  kvp_metadata *m = NULL;
  assert_kvp_ok(kvp_metadata_create(&d, &m));
  char *s = md_json(m);
  assert_string_equal(s, "{\"pages_tables\": [[5, 6, 0], [7, 0, 0]], \"context_lens\": [20, 3], "
                         "\"query_start_loc\": [0, 4, 7], \"num_seqs\": null, \"slot_mapping\": null, "
                         "\"position_ids\": null, \"request_distribution\": [1, 2, 2], "
                         "\"num_kv_update_slices\": null, \"version\": \"v3\", "
                         "\"num_slices_per_kv_cache_update_page\": 8, \"page_size\": 16, "
                         "\"prefill_chunk_size\": 512}");
  kvp_metadata *back = NULL;
  assert_kvp_ok(kvp_metadata_from_json(s, strlen(s), &back));
  /* Absent arrays come back as zero arrays of the create_empty shapes (num_seqs [1]). */
  const int32_t *p = NULL;
  int64_t n = 0;
  assert_kvp_ok(kvp_metadata_get_array(back, KVP_METADATA_PAGES_TABLES, &p, &n));
  assert_int_equal(n, 6);
  assert_memory_equal(p, pt, sizeof pt);
  assert_kvp_ok(kvp_metadata_get_array(back, KVP_METADATA_REQUEST_DISTRIBUTION, &p, &n));
  assert_int_equal(n, 3);
  assert_memory_equal(p, rd, sizeof rd);
  assert_kvp_ok(kvp_metadata_get_array(back, KVP_METADATA_NUM_SEQS, &p, &n));
  assert_int_equal(n, 1);
  assert_int_equal(p[0], 0);
  /* Text -> handle -> text is stable from here on. */
  char *s2 = md_json(back);
  kvp_metadata *back2 = NULL;
  assert_kvp_ok(kvp_metadata_from_json(s2, strlen(s2), &back2));
  char *s3 = md_json(back2);
  assert_string_equal(s2, s3);
  assert_same_arrays(back, back2);
  free(s3);
  free(s2);
  free(s);
  assert_kvp_ok(kvp_metadata_destroy(back2));
  assert_kvp_ok(kvp_metadata_destroy(back));
  assert_kvp_ok(kvp_metadata_destroy(m));

  /* v2: slot mapping [3, 4], position ids [4], one request. */
  const int32_t sm[] = {16, 40, 0, 0, 0, 3, 0, 0, 3, 1, 0, 0};
  const int32_t nk[] = {2};
  const int32_t pi[] = {9, 10, 11, 12};
  const int32_t ns[] = {1};
  assert_kvp_ok(kvp_metadata_desc_init(&d, sizeof d));
  d.version = KVP_LAYOUT_V2;
  d.slot_mapping = sm;
  d.num_slices = 4;
  d.num_kv_update_slices = nk;
  d.num_kv_update_slices_len = 1;
  d.position_ids = pi;
  d.position_ids_len = 4;
  d.num_seqs = ns;
  d.num_seqs_len = 1;
  assert_kvp_ok(kvp_metadata_create(&d, &m));
  s = md_json(m);
  assert_non_null(strstr(s, "\"slot_mapping\": [[16, 40, 0, 0], [0, 3, 0, 0], [3, 1, 0, 0]], "
                            "\"position_ids\": [9, 10, 11, 12], \"request_distribution\": null, "
                            "\"num_kv_update_slices\": [2], \"version\": \"v2\", "
                            "\"num_slices_per_kv_cache_update_page\": null, \"page_size\": 0"));
  assert_kvp_ok(kvp_metadata_from_json(s, strlen(s), &back));
  s2 = md_json(back);
  /* The arrays it had come back equal; query_start_loc gets the create_empty shape [R + 1] = [0]. */
  const kvp_metadata_field present[] = {KVP_METADATA_SLOT_MAPPING, KVP_METADATA_POSITION_IDS,
                                        KVP_METADATA_NUM_KV_UPDATE_SLICES, KVP_METADATA_NUM_SEQS};
  for (int i = 0; i < 4; ++i) {
    const int32_t *pa = NULL, *pb = NULL;
    int64_t na = 0, nb = 0;
    assert_kvp_ok(kvp_metadata_get_array(m, present[i], &pa, &na));
    assert_kvp_ok(kvp_metadata_get_array(back, present[i], &pb, &nb));
    assert_int_equal(na, nb);
    assert_memory_equal(pa, pb, (size_t)na * sizeof(int32_t));
  }
  assert_non_null(strstr(s2, "\"query_start_loc\": [0], "));
  free(s2);
  free(s);
  assert_kvp_ok(kvp_metadata_destroy(back));
  assert_kvp_ok(kvp_metadata_destroy(m));
}

static void test_json__metadata_from_json_rejects_bad_input(void **state) {
  (void)state;
  struct {
    const char *text;
    kvp_status code;
    const char *msg;
  } cases[] = {
      {"{\"pages_tables\": [[1, 2], [3]]}", KVP_ERR_INVALID_ARGUMENT, "equal lengths"},
      {"{\"pages_tables\": [[1, 2]], \"context_lens\": [1, 2]}", KVP_ERR_INVALID_ARGUMENT, "context_lens"},
      {"{\"context_lens\": [1, 2], \"query_start_loc\": [0, 1]}", KVP_ERR_INVALID_ARGUMENT, "query_start_loc"},
      {"{\"num_seqs\": [1, 2]}", KVP_ERR_INVALID_ARGUMENT, "num_seqs"},
      {"{\"context_lens\": [2147483648]}", KVP_ERR_INVALID_ARGUMENT, "int32"},
      {"{\"context_lens\": [-2147483649]}", KVP_ERR_INVALID_ARGUMENT, "int32"},
      {"{\"context_lens\": [1.5]}", KVP_ERR_INVALID_ARGUMENT, "integer"},
      {"{\"context_lens\": 3}", KVP_ERR_INVALID_ARGUMENT, "list"},
      {"{\"slot_mapping\": [[1], [2], [3]]}", KVP_ERR_INVALID_ARGUMENT, "v3 metadata has no slot_mapping"},
      {"{\"version\": \"v2\", \"slot_mapping\": [[1], [2]]}", KVP_ERR_INVALID_ARGUMENT, "3 rows"},
      {"{\"version\": \"v2\", \"request_distribution\": [0, 0, 0]}", KVP_ERR_INVALID_ARGUMENT, "request_distribution"},
      {"{\"version\": \"v5\"}", KVP_ERR_NOT_FOUND, "v5"},
      {"{\"page_size\": -1}", KVP_ERR_INVALID_ARGUMENT, "page_size"},
      {"[]", KVP_ERR_INVALID_ARGUMENT, "not an object"},
      {"{\"pages_tables\": [[1, 2]", KVP_ERR_INVALID_ARGUMENT, "malformed"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
    kvp_metadata *m = (kvp_metadata *)&m;
    assert_kvp_status(kvp_metadata_from_json(cases[i].text, strlen(cases[i].text), &m), cases[i].code, cases[i].msg);
    assert_null(m);
  }
  kvp_metadata *m = NULL;
  assert_kvp_status(kvp_metadata_from_json(NULL, 0, &m), KVP_ERR_INVALID_ARGUMENT, "json");
  assert_kvp_status(kvp_metadata_from_json("{}", 2, NULL), KVP_ERR_INVALID_ARGUMENT, "out");
  size_t n = 0;
  assert_kvp_status(kvp_metadata_to_json(NULL, NULL, 0, &n), KVP_ERR_INVALID_HANDLE, "");
  /* An empty object is an empty v3 batch. */
  assert_kvp_ok(kvp_metadata_from_json("{}", 2, &m));
  char buf[8];
  assert_kvp_status(kvp_metadata_to_json(m, buf, sizeof buf, &n), KVP_ERR_BUFFER_TOO_SMALL, "needs");
  assert_true(n > sizeof buf);
  assert_kvp_ok(kvp_metadata_destroy(m));
}

/* ---- hostile input: nesting, NUL characters, allocation failures ---------------------------- */

/* `{"<key>": [[[...1...]]]}` with `depth` arrays (malloc'ed; the caller frees). */
static char *nested_text(const char *key, size_t depth) {
  const size_t head = strlen(key) + 6;
  char *s = malloc(head + 2 * depth + 3);
  assert_non_null(s);
  size_t n = (size_t)sprintf(s, "{\"%s\": ", key);
  memset(s + n, '[', depth);
  n += depth;
  s[n++] = '1';
  memset(s + n, ']', depth);
  n += depth;
  s[n++] = '}';
  s[n] = '\0';
  return s;
}

/* The depth error: the limit named, the offending text not repeated, a bounded message. */
static void assert_depth_refusal(kvp_status st) {
  if (st != KVP_ERR_INVALID_ARGUMENT)
    fail_msg("expected KVP_ERR_INVALID_ARGUMENT, got %s: %s", kvp_status_name(st), kvp_last_error_message());
  const char *msg = kvp_last_error_message();
  if (strstr(msg, "nested deeper than 64 levels") == NULL) fail_msg("message lacks the depth limit: %s", msg);
  assert_null(strstr(msg, "[["));
  assert_true(strlen(msg) < 200);
}

/* Issue 17, defect 3: arrays nested 100,000 (and 1,000,000) deep overflowed the stack of both
 * readers. They are refused at the depth limit, in bounded stack and memory, output unchanged;
 * also under a key the reader does not keep. */
static void test_json__deep_nesting_is_refused_without_recursion(void **state) {
  (void)state;
  const size_t depths[] = {100000, 1000000};
  const char *config_keys[] = {"num_hidden_layers", "_mixed_layer_configs"};
  const char *metadata_keys[] = {"pages_tables", "context_lens", "prefill_chunk_size"};
  for (size_t d = 0; d < 2; ++d) {
    for (size_t k = 0; k < 2; ++k) {
      char *text = nested_text(config_keys[k], depths[d]);
      kvp_config c, before;
      memset(&c, 0x5A, sizeof c);
      before = c;
      assert_depth_refusal(kvp_config_from_json(text, strlen(text), &c));
      assert_memory_equal(&c, &before, sizeof c);
      free(text);
    }
    for (size_t k = 0; k < 3; ++k) {
      char *text = nested_text(metadata_keys[k], depths[d]);
      kvp_metadata *m = (kvp_metadata *)&m;
      assert_depth_refusal(kvp_metadata_from_json(text, strlen(text), &m));
      assert_null(m);
      free(text);
    }
  }
}

/* The limit is 64 levels, the top-level object included: 63 arrays inside it are read (and
 * ignored under an unknown key), 64 are refused. */
static void test_json__nesting_limit_is_64_levels(void **state) {
  (void)state;
  char *ok = nested_text("unknown", 63);
  char *deep = nested_text("unknown", 64);
  kvp_metadata *m = NULL;
  assert_kvp_ok(kvp_metadata_from_json(ok, strlen(ok), &m));
  assert_kvp_ok(kvp_metadata_destroy(m));
  assert_depth_refusal(kvp_metadata_from_json(deep, strlen(deep), &m));
  assert_null(m);
  /* In a config, the same nesting after the required fields. */
  const char *fields = "{\"num_hidden_layers\": 1, \"max_model_length\": 1, \"num_kv_heads\": 1, \"k_headdim\": 8, "
                       "\"v_headdim\": 8, ";
  char *cfg_ok = malloc(strlen(fields) + strlen(ok));
  char *cfg_deep = malloc(strlen(fields) + strlen(deep));
  sprintf(cfg_ok, "%s%s", fields, ok + 1);
  sprintf(cfg_deep, "%s%s", fields, deep + 1);
  kvp_config c, before;
  assert_kvp_ok(kvp_config_from_json(cfg_ok, strlen(cfg_ok), &c));
  assert_int_equal(c.k_headdim, 8);
  memset(&c, 0x33, sizeof c);
  before = c;
  assert_depth_refusal(kvp_config_from_json(cfg_deep, strlen(cfg_deep), &c));
  assert_memory_equal(&c, &before, sizeof c);
  free(cfg_deep);
  free(cfg_ok);
  free(deep);
  free(ok);
}

/* Issue 17, defect 13: a string with an embedded NUL ("v3\u0000x") read as "v3". It is refused,
 * naming the field. */
static void test_json__strings_with_nul_are_refused(void **state) {
  (void)state;
  const char *model = "{\"num_hidden_layers\": 1, \"max_model_length\": 1, \"num_kv_heads\": 1, \"k_headdim\": 8, "
                      "\"v_headdim\": 8, ";
  const char *tails[] = {"\"version\": \"v3\\u0000x\"}", "\"_kvdtype_str\": \"bf16\\u0000\"}",
                         "\"version\": \"\\u0000\"}"};
  const char *names[] = {"'version'", "'_kvdtype_str'", "'version'"};
  for (int i = 0; i < 3; ++i) {
    char text[256];
    snprintf(text, sizeof text, "%s%s", model, tails[i]);
    kvp_config c, before;
    memset(&c, 0x11, sizeof c);
    before = c;
    assert_kvp_status(kvp_config_from_json(text, strlen(text), &c), KVP_ERR_INVALID_ARGUMENT, "NUL");
    if (strstr(kvp_last_error_message(), names[i]) == NULL) fail_msg("%s: %s", names[i], kvp_last_error_message());
    assert_memory_equal(&c, &before, sizeof c);
  }
  const char *md = "{\"version\": \"v2\\u0000v3\"}";
  kvp_metadata *m = (kvp_metadata *)&m;
  assert_kvp_status(kvp_metadata_from_json(md, strlen(md), &m), KVP_ERR_INVALID_ARGUMENT, "field 'version' contains a NUL");
  assert_null(m);
}

/* Issue 17, defect 13: element errors of a list of rows said "row[0]" without the field. Every
 * element error names the field, the row and the element. */
static void test_json__row_element_errors_name_the_field(void **state) {
  (void)state;
  struct {
    const char *text;
    const char *msg;
  } cases[] = {
      {"{\"pages_tables\": [[1, 2, 3, 1.5]]}", "pages_tables[0][3] must be an integer, got a number"},
      {"{\"pages_tables\": [[1, 2], [3, \"4\"]]}", "pages_tables[1][1] must be an integer, got a string"},
      {"{\"pages_tables\": [[1, 2], [3, 2147483648]]}", "pages_tables[1][1] = 2147483648 does not fit in int32"},
      {"{\"pages_tables\": [[1, 2], 3]}", "pages_tables[1] must be a list of integers"},
      {"{\"pages_tables\": [[1, [2]]]}", "field 'pages_tables' must be a list of rows"},
      {"{\"version\": \"v2\", \"slot_mapping\": [[1], [2], [null]]}", "slot_mapping[2][0] must be an integer, got null"},
      {"{\"position_ids\": [0, -2147483649]}", "position_ids[1] = -2147483649 does not fit in int32"},
      {"{\"context_lens\": [0, [1]]}", "context_lens[1] must be an integer, got a list"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
    kvp_metadata *m = (kvp_metadata *)&m;
    assert_kvp_status(kvp_metadata_from_json(cases[i].text, strlen(cases[i].text), &m), KVP_ERR_INVALID_ARGUMENT,
                      cases[i].msg);
    assert_null(m);
  }
}

/* A parse error names where the text went wrong but does not repeat a long token. */
static void test_json__parse_errors_do_not_dump_the_text(void **state) {
  (void)state;
  const size_t n = 100000;
  char *text = malloc(n + 32);
  size_t k = (size_t)sprintf(text, "{\"version\": \"");
  memset(text + k, 'a', n);
  text[k + n] = '\0'; /* unterminated string */
  kvp_config c, before;
  memset(&c, 0x22, sizeof c);
  before = c;
  assert_kvp_status(kvp_config_from_json(text, strlen(text), &c), KVP_ERR_INVALID_ARGUMENT, "malformed JSON");
  assert_true(strlen(kvp_last_error_message()) < 300);
  assert_null(strstr(kvp_last_error_message(), "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
  assert_memory_equal(&c, &before, sizeof c);
  kvp_metadata *m = (kvp_metadata *)&m;
  assert_kvp_status(kvp_metadata_from_json(text, strlen(text), &m), KVP_ERR_INVALID_ARGUMENT, "malformed JSON");
  assert_true(strlen(kvp_last_error_message()) < 300);
  assert_null(m);
  free(text);
}

/* Issue 17, defect 4: an allocation failure inside the JSON library (its own std::allocator
 * storage, below the host allocator hook) reached a noexcept destructor and terminated the
 * process. Failing malloc call n, for n = 0, 1, ... until the call succeeds, must give
 * KVP_ERR_OUT_OF_MEMORY and leave the output alone, for valid text, malformed text, too-deep
 * text and a NUL string. */
typedef kvp_status (*json_reader)(const char *text, void *out);

static kvp_status read_config(const char *text, void *out) {
  return kvp_config_from_json(text, strlen(text), (kvp_config *)out);
}

static kvp_status read_metadata(const char *text, void *out) {
  kvp_metadata **m = (kvp_metadata **)out;
  const kvp_status st = kvp_metadata_from_json(text, strlen(text), m);
  if (st == KVP_OK) assert_kvp_ok(kvp_metadata_destroy(*m));
  return st;
}

/* Sweeps malloc failures over one call: each failing n gives KVP_ERR_OUT_OF_MEMORY with the
 * output unchanged, or (where the runtime recovers from the failure, e.g. its emergency exception
 * pool) what the call gives without failures. Returns that status. */
static kvp_status sweep_malloc_failures(json_reader read, const char *text, void *out, size_t out_size) {
  unsigned char before[sizeof(kvp_config)], want_out[sizeof(kvp_config)];
  assert_true(out_size <= sizeof before);
  memset(out, 0x6B, out_size);
  memcpy(before, out, out_size);
  const kvp_status want = read(text, out);
  memcpy(want_out, out, out_size);
  for (long n = 0; n < 100000; ++n) {
    memcpy(out, before, out_size);
    kvp_test_fail_malloc_arm(n, 0);
    const kvp_status st = read(text, out);
    const long calls = kvp_test_fail_malloc_disarm();
    if (st != KVP_ERR_OUT_OF_MEMORY && st != want)
      fail_msg("malloc %ld failing: %s (%s), expected %s or KVP_ERR_OUT_OF_MEMORY", n, kvp_status_name(st),
               kvp_last_error_message(), kvp_status_name(want));
    assert_true(kvp_last_error_message()[0] != '\0' || st == KVP_OK);
    if (st == KVP_ERR_OUT_OF_MEMORY && out_size == sizeof(kvp_config)) assert_memory_equal(out, before, out_size);
    if (st != KVP_OK && out_size != sizeof(kvp_config)) assert_null(*(kvp_metadata **)out);
    if (st == KVP_OK && out_size == sizeof(kvp_config)) assert_memory_equal(out, want_out, out_size);
    if (calls <= n) return want; /* nothing failed: every allocation point was swept */
  }
  fail_msg("the call never stopped allocating");
  return KVP_OK;
}

static void test_json__malloc_failures_in_the_parser_are_out_of_memory(void **state) {
  (void)state;
  if (!kvp_test_fail_malloc_available()) skip();
  char *deep = nested_text("pages_tables", 1000);
  char *deep_cfg = nested_text("version", 1000);
  const char *md_ok = "{\"pages_tables\": [[1, 2], [3, 4]], \"context_lens\": [5, 6], \"query_start_loc\": [0, 1, 2], "
                      "\"version\": \"v3\", \"request_distribution\": [0, 0, 2], \"unknown\": {\"a\": [1, \"x\"]}}";
  const char *md_bad[] = {"{\"pages_tables\": [[1, 2], [3]]}", "{\"pages_tables\": [[1, 2]",
                          "{\"version\": \"v3\\u0000\"}", deep};
  kvp_metadata *m = NULL;
  assert_int_equal(sweep_malloc_failures(read_metadata, md_ok, &m, sizeof m), KVP_OK);
  for (int i = 0; i < 4; ++i)
    assert_int_equal(sweep_malloc_failures(read_metadata, md_bad[i], &m, sizeof m), KVP_ERR_INVALID_ARGUMENT);
  kvp_config c;
  assert_int_equal(sweep_malloc_failures(read_config, k_row_a, &c, sizeof c), KVP_OK);
  const char *cfg_bad[] = {"{\"num_hidden_layers\": 1, ", "{\"num_hidden_layers\": \"x\\u0000\"}", deep_cfg};
  for (int i = 0; i < 3; ++i)
    assert_int_equal(sweep_malloc_failures(read_config, cfg_bad[i], &c, sizeof c), KVP_ERR_INVALID_ARGUMENT);
  free(deep_cfg);
  free(deep);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_json__config_matches_the_reference_text),
      cmocka_unit_test(test_json__config_round_trips),
      cmocka_unit_test(test_json__floats_print_like_python_repr),
      cmocka_unit_test(test_json__from_json_is_lenient_like_the_reference),
      cmocka_unit_test(test_json__from_json_errors_leave_out_unchanged),
      cmocka_unit_test(test_json__to_json_sizes_and_errors),
      cmocka_unit_test(test_json__metadata_arrays_are_real_lists_and_round_trip),
      cmocka_unit_test(test_json__metadata_from_json_rejects_bad_input),
      cmocka_unit_test(test_json__deep_nesting_is_refused_without_recursion),
      cmocka_unit_test(test_json__nesting_limit_is_64_levels),
      cmocka_unit_test(test_json__strings_with_nul_are_refused),
      cmocka_unit_test(test_json__row_element_errors_name_the_field),
      cmocka_unit_test(test_json__parse_errors_do_not_dump_the_text),
      cmocka_unit_test(test_json__malloc_failures_in_the_parser_are_out_of_memory),
  };
  return cmocka_run_group_tests_name("json", tests, NULL, NULL);
}
