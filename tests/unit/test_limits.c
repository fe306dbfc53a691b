/* Overflow and limits tests (issue 17): configs at and just past every bound documented in
 * kvpages/config.h, each call either works or returns a status whose message names the field and
 * leaves its outputs unchanged; regressions for the reproduced defects 1 (pool heap overflow from
 * a huge max_model_length), 2 (metadata_build R x W overflow), 8 (deserialization memory bombs)
 * and 12 (hbm budget near INT64_MAX). Runs under the ASan+UBSan build like every unit test.
 *
 * The base config is the smallest layout: v2, f32, 1 layer, 1 KV head, head dim 1, page size 1:
 * one token slot is 2 x 1 x 4 = 8 bytes, so a page of one layer is 8 bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <xxhash.h>

#include "support.h"

#define FILL 0xA5
#define I32MAX 2147483647LL
#define MiB (1024LL * 1024LL)

static kvp_config base_config(void) {
  kvp_config c;
  assert_kvp_ok(kvp_config_init(&c, sizeof c));
  c.num_hidden_layers = 1;
  c.max_model_length = 16;
  c.num_kv_heads = 1;
  c.k_headdim = 1;
  c.v_headdim = 1;
  c.page_size = 1;
  c.num_pages = 8;
  c.version = KVP_LAYOUT_V2;
  c.kvdtype = KVP_DTYPE_F32;
  return c;
}

/* ---- every call on a config past a bound fails, naming the field, changing nothing ---------- */

static void expect_rejected(const kvp_config *c, const char *field) {
  kvp_layout_info li, li0;
  kvp_plan pl, pl0;
  memset(&li, FILL, sizeof li);
  li.struct_size = sizeof li;
  li0 = li;
  memset(&pl, FILL, sizeof pl);
  pl.struct_size = sizeof pl;
  pl0 = pl;
  assert_kvp_status(kvp_config_validate(c), KVP_ERR_INVALID_ARGUMENT, field);
  assert_kvp_status(kvp_config_get_layout(c, &li), KVP_ERR_INVALID_ARGUMENT, field);
  assert_memory_equal(&li, &li0, sizeof li);
  assert_kvp_status(kvp_config_plan(c, &pl), KVP_ERR_INVALID_ARGUMENT, field);
  assert_memory_equal(&pl, &pl0, sizeof pl);
  kvp_cache *cache = (kvp_cache *)&li; /* any non-NULL value: must become NULL */
  assert_kvp_status(kvp_cache_create(c, NULL, &cache), KVP_ERR_INVALID_ARGUMENT, field);
  assert_null(cache);
}

/* At a bound: the config is valid and every call works (the cache only when it is small), or it
 * is refused by a rule that combines fields, with a message that names the field. */
static void expect_works_or_names(const kvp_config *c, const char *field) {
  kvp_status s = kvp_config_validate(c);
  if (s != KVP_OK) {
    if (strstr(kvp_last_error_message(), field) == NULL)
      fail_msg("%s at its bound: %s '%s' does not name the field", field, kvp_status_name(s), kvp_last_error_message());
    expect_rejected(c, field);
    return;
  }
  kvp_layout_info li;
  li.struct_size = sizeof li;
  assert_kvp_ok(kvp_config_get_layout(c, &li));
  kvp_plan pl;
  pl.struct_size = sizeof pl;
  assert_kvp_ok(kvp_config_plan(c, &pl));
  assert_int_equal(pl.total_bytes, li.layer_bytes * c->num_hidden_layers);
  if (pl.total_bytes > 64 * MiB) return; /* not feasible here: the plan is the check */
  kvp_cache *cache = NULL;
  assert_kvp_ok(kvp_cache_create(c, NULL, &cache));
  assert_kvp_ok(kvp_cache_destroy(cache));
}

typedef struct bound_case {
  const char *field;
  int64_t *(*at)(kvp_config *c); /* the field to set */
  int64_t lo, hi;                /* documented range */
  int optional;                  /* -1 is accepted too */
} bound_case;

static int64_t *f_layers(kvp_config *c) { return &c->num_hidden_layers; }
static int64_t *f_len(kvp_config *c) { return &c->max_model_length; }
static int64_t *f_heads(kvp_config *c) { return &c->num_kv_heads; }
static int64_t *f_page(kvp_config *c) { return &c->page_size; }
static int64_t *f_pages(kvp_config *c) { return &c->num_pages; }
static int64_t *f_tokens(kvp_config *c) { return &c->max_num_tokens; }
static int64_t *f_reqs(kvp_config *c) { return &c->max_num_reqs; }

static void set_field(kvp_config *c, const bound_case *b, int64_t v) { *b->at(c) = v; }

static void test_limits__every_bound_and_one_past(void **state) {
  (void)state;
  const bound_case cases[] = {
      {"num_hidden_layers", f_layers, 1, 65536, 0},
      {"max_model_length", f_len, 1, I32MAX, 0},
      {"num_kv_heads", f_heads, 1, 1LL << 24, 0},
      {"page_size", f_page, 1, 1LL << 24, 0},
      {"num_pages", f_pages, 1, I32MAX, 1},
      {"max_num_tokens", f_tokens, 1, I32MAX, 1},
      {"max_num_reqs", f_reqs, 1, I32MAX - 1, 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
    const bound_case *b = &cases[i];
    kvp_config c = base_config();
    set_field(&c, b, b->lo);
    expect_works_or_names(&c, b->field);
    c = base_config();
    set_field(&c, b, b->hi);
    expect_works_or_names(&c, b->field);
    const int64_t past[] = {b->lo - 1, b->hi + 1, INT64_MAX, INT64_MIN};
    for (size_t k = 0; k < 4; ++k) {
      if (b->optional && past[k] == -1) continue;
      c = base_config();
      set_field(&c, b, past[k]);
      expect_rejected(&c, b->field);
    }
  }
}

/* The head dims are bounded together (v_headdim must equal k_headdim). */
static void test_limits__head_dim_bound(void **state) {
  (void)state;
  const int64_t at[] = {1, 1LL << 24}, past[] = {0, (1LL << 24) + 1, INT64_MAX};
  for (size_t i = 0; i < 2; ++i) {
    kvp_config c = base_config();
    c.k_headdim = c.v_headdim = at[i];
    expect_works_or_names(&c, "k_headdim");
  }
  for (size_t i = 0; i < 3; ++i) {
    kvp_config c = base_config();
    c.k_headdim = c.v_headdim = past[i];
    expect_rejected(&c, "k_headdim");
  }
}

/* Issue 17: kvp_config_validate accepted num_pages or num_hidden_layers = INT64_MAX, and a cache
 * whose bytes overflow int64 although each field is in range. */
static void test_limits__validate_rejects_what_layout_rejects(void **state) {
  (void)state;
  kvp_config c = base_config();
  c.num_pages = INT64_MAX;
  expect_rejected(&c, "num_pages");
  c = base_config();
  c.num_hidden_layers = INT64_MAX;
  expect_rejected(&c, "num_hidden_layers");
  /* 65536 layers x 2^31 - 1 pages x 2^17 bytes (page 2^14 tokens of 8 bytes) > 2^63. */
  c = base_config();
  c.num_hidden_layers = 65536;
  c.num_pages = I32MAX;
  c.page_size = 1LL << 14;
  expect_rejected(&c, "num_hidden_layers");
  /* One layer fewer of a smaller page fits int64: valid, only planned. */
  c.num_hidden_layers = 1;
  expect_works_or_names(&c, "num_hidden_layers");
}

/* Config JSON is read without validation; the bounds apply as soon as the record is used. */
static void test_limits__json_config_inherits_the_bounds(void **state) {
  (void)state;
  const char *j = "{\"num_hidden_layers\": 65537, \"max_model_length\": 16, \"num_kv_heads\": 1, "
                  "\"k_headdim\": 1, \"v_headdim\": 1, \"page_size\": 1, \"num_pages\": 8, \"version\": \"v2\", "
                  "\"_kvdtype_str\": \"float32\"}";
  kvp_config c = KVP_CONFIG_INIT;
  assert_kvp_ok(kvp_config_from_json(j, strlen(j), &c));
  expect_rejected(&c, "num_hidden_layers");
}

/* ---- defect 1: pool rows sized from a wrapped product ----------------------------------------- */

static void test_limits__defect1_pool_huge_max_model_length(void **state) {
  (void)state;
  /* As reproduced: max_model_length 2^62 + 1, page_size 1, f32; the config is now refused. */
  kvp_config c = base_config();
  c.max_model_length = (1LL << 62) + 1;
  expect_rejected(&c, "max_model_length");

  /* At the bound, a pool of 4 sequences would need 4 x (2^31 - 1) page-table entries. */
  c = base_config();
  c.max_model_length = I32MAX;
  kvp_cache *cache = NULL;
  assert_kvp_ok(kvp_cache_create(&c, NULL, &cache));
  kvp_pool_options po;
  assert_kvp_ok(kvp_pool_options_init(&po, sizeof po));
  po.max_sequences = 4;
  kvp_pool *pool = (kvp_pool *)&po;
  assert_kvp_status(kvp_pool_create(cache, &po, &pool), KVP_ERR_INVALID_ARGUMENT, "max_sequences");
  assert_null(pool);
  assert_kvp_ok(kvp_cache_destroy(cache));

  /* Feasible: 2^20 tokens per sequence, 4 sequences, a 2,000-token prompt on 2,048 pages. */
  c.max_model_length = 1LL << 20;
  c.num_pages = 2049;
  assert_kvp_ok(kvp_cache_create(&c, NULL, &cache));
  assert_kvp_ok(kvp_pool_create(cache, &po, &pool));
  int32_t *prompt = malloc(2000 * sizeof *prompt);
  assert_non_null(prompt);
  for (int i = 0; i < 2000; ++i) prompt[i] = i;
  kvp_seq_id seq;
  size_t reused = 1;
  assert_kvp_ok(kvp_pool_add_sequence(pool, prompt, 2000, 0, 0, &seq, &reused));
  assert_int_equal(reused, 0);
  int32_t *pages = malloc(2000 * sizeof *pages);
  assert_non_null(pages);
  size_t count = 0;
  assert_kvp_ok(kvp_pool_get_page_table(pool, seq, pages, 2000, &count));
  assert_int_equal(count, 2000);
  for (size_t i = 0; i < count; ++i) assert_in_range(pages[i], 1, 2048);
  free(pages);
  free(prompt);
  assert_kvp_ok(kvp_pool_destroy(pool));
  assert_kvp_ok(kvp_cache_destroy(cache));
}

/* ---- defect 2: metadata_build R x W ------------------------------------------------------------ */

static void expect_build_rejected(const kvp_config *c, const char *field) {
  const int32_t page = 1;
  kvp_batch_request r = {0, 1, &page, 1};
  int32_t order = -7;
  kvp_metadata *md = (kvp_metadata *)&order;
  assert_kvp_status(kvp_metadata_build(c, &r, 1, NULL, &order, &md), KVP_ERR_INVALID_ARGUMENT, field);
  assert_null(md);
  assert_int_equal(order, -7);
}

static void test_limits__defect2_metadata_build_page_table(void **state) {
  (void)state;
  /* As reproduced: max_model_length 2^61 + 1, page_size 1, max_num_reqs 8. */
  kvp_config c = base_config();
  c.max_model_length = (1LL << 61) + 1;
  c.max_num_reqs = 8;
  c.num_slices_per_kv_cache_update_page = 64; /* min(prev_pow2(16 MiB / 1024), 64): v2 needs it */
  expect_build_rejected(&c, "max_model_length");
  /* At the bound: 8 rows of 2^31 - 1 pages exceed the 2^31-entry page table. */
  c.max_model_length = I32MAX;
  expect_build_rejected(&c, "max_num_pages_per_req");
  /* Feasible: 8 rows of 2^16 pages. */
  c.max_model_length = 1LL << 16;
  const int32_t page = 1;
  kvp_batch_request r = {0, 1, &page, 1};
  kvp_metadata *md = NULL;
  assert_kvp_ok(kvp_metadata_build(&c, &r, 1, NULL, NULL, &md));
  assert_kvp_ok(kvp_metadata_destroy(md));
}

/* ---- defect 12: budget near INT64_MAX ----------------------------------------------------------- */

static void test_limits__defect12_budget_near_int64_max(void **state) {
  (void)state;
  kvp_memory_stats s;
  memset(&s, 0, sizeof s);
  s.bytes_limit = INT64_MAX;
  s.bytes_in_use = 1;
  s.valid = 1;
  /* free = 2^63 - 2 converts to the double 2^63; floor(2^63 x 1.0) = 2^63 does not fit int64:
   * without a margin the budget saturates at INT64_MAX (it was 0). */
  int64_t out = 0;
  assert_kvp_ok(kvp_hbm_budget_bytes(&s, 1, 1.0, KVP_BUDGET_FREE, 0, &out));
  assert_true(out == INT64_MAX);
  /* With the 256 MiB margin the exact result 2^63 - 2^28 fits (it was signed overflow). */
  assert_kvp_ok(kvp_hbm_budget_bytes(&s, 1, 1.0, KVP_BUDGET_FREE, KVP_DEFAULT_SAFETY_MARGIN, &out));
  assert_true(out == (int64_t)(9223372036854775807ULL - 268435455ULL));
  /* Total mode: floor(limit x 1.0) - used - margin = 2^63 - 1 - 2^28. */
  assert_kvp_ok(kvp_hbm_budget_bytes(&s, 1, 1.0, KVP_BUDGET_TOTAL, KVP_DEFAULT_SAFETY_MARGIN, &out));
  assert_true(out == (int64_t)(9223372036854775807ULL - 268435456ULL));
  /* Everything in use and the largest margin: 0, no overflow. */
  s.bytes_in_use = INT64_MAX;
  assert_kvp_ok(kvp_hbm_budget_bytes(&s, 1, 1.0, KVP_BUDGET_TOTAL, INT64_MAX, &out));
  assert_int_equal(out, 0);
}

/* ---- defect 8: deserialization memory bombs ------------------------------------------------------ */

static void wr64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = (uint8_t)(v >> (8 * i));
}

/* The 200-byte blob of a cache of base_config() with no page stored (header, empty table, its
 * checksum), with its config's layers and pages replaced and the header resealed. */
static uint8_t *crafted_blob(int64_t layers, int64_t num_pages, size_t *n) {
  kvp_config c = base_config();
  c.num_pages = 1;
  kvp_cache *cache = NULL;
  assert_kvp_ok(kvp_cache_create(&c, NULL, &cache));
  kvp_serialize_options o;
  assert_kvp_ok(kvp_serialize_options_init(&o, sizeof o));
  const int32_t none = 0;
  o.page_ids = &none;
  o.num_page_ids = 0;
  uint8_t *b = malloc(256);
  assert_non_null(b);
  assert_kvp_ok(kvp_serialize(cache, &o, b, 256, n));
  assert_int_equal(*n, 200);
  assert_kvp_ok(kvp_cache_destroy(cache));
  wr64(b + 24, (uint64_t)layers);     /* num_hidden_layers (docs/serialization-format.md) */
  wr64(b + 24 + 56, (uint64_t)num_pages); /* num_pages */
  wr64(b + 184, XXH3_64bits_withSeed(b, 184, 0));
  return b;
}

static void expect_load_refused(const uint8_t *b, size_t n, uint64_t max_bytes, kvp_status code, const char *substr) {
  kvp_deserialize_options o;
  assert_kvp_ok(kvp_deserialize_options_init(&o, sizeof o));
  o.max_cache_bytes = max_bytes;
  kvp_cache *out = (kvp_cache *)&o;
  assert_kvp_status(kvp_deserialize_new(b, n, &o, &out), code, substr);
  assert_null(out);
}

static void test_limits__defect8_many_layers_within_the_limit(void **state) {
  (void)state;
  size_t n = 0;
  /* As reproduced: 2^26 layers of 8 bytes passed max_cache_bytes = 512 MiB (2.5 GiB RSS). */
  uint8_t *b = crafted_blob(1LL << 26, 1, &n);
  expect_load_refused(b, n, 512 * MiB, KVP_ERR_FORMAT_CORRUPT, "num_hidden_layers");
  free(b);
  /* At the layer bound the per-layer cost counts: 65536 x (8 bytes rounded to 64 + 64) = 8 MiB. */
  b = crafted_blob(65536, 1, &n);
  expect_load_refused(b, n, 8 * MiB - 1, KVP_ERR_FORMAT_MISMATCH, "max_cache_bytes");
  kvp_deserialize_options o;
  assert_kvp_ok(kvp_deserialize_options_init(&o, sizeof o));
  o.max_cache_bytes = 8 * MiB;
  kvp_cache *out = NULL;
  assert_kvp_ok(kvp_deserialize_new(b, n, &o, &out));
  kvp_layout_info li;
  li.struct_size = sizeof li;
  assert_kvp_ok(kvp_cache_get_layout(out, &li));
  assert_int_equal(li.layer_bytes, 8);
  assert_kvp_ok(kvp_cache_destroy(out));
  free(b);
}

typedef struct {
  const uint8_t *p;
  size_t n, pos;
} reader_state;

static int32_t KVP_CALL read_mem(void *dst, size_t size, size_t *got, void *ud) {
  reader_state *r = ud;
  size_t k = r->n - r->pos < size ? r->n - r->pos : size;
  memcpy(dst, r->p + r->pos, k);
  r->pos += k;
  *got = k;
  return 0;
}

static void test_limits__defect8_default_options_bound_a_small_blob(void **state) {
  (void)state;
  size_t n = 0;
  /* 32 layers x 2^28 pages of 8 bytes = 64 GiB declared by a 200-byte blob. */
  uint8_t *b = crafted_blob(32, 1LL << 28, &n);
  expect_load_refused(b, n, 0, KVP_ERR_FORMAT_MISMATCH, "max_cache_bytes");
  kvp_cache *out = (kvp_cache *)&n;
  assert_kvp_status(kvp_deserialize_new(b, n, NULL, &out), KVP_ERR_FORMAT_MISMATCH, "max_cache_bytes");
  assert_null(out);
  reader_state r = {b, n, 0};
  out = (kvp_cache *)&n;
  assert_kvp_status(kvp_deserialize_new_from_reader(read_mem, &r, NULL, &out), KVP_ERR_FORMAT_MISMATCH,
                    "max_cache_bytes");
  assert_null(out);
  char path[] = "/tmp/kvp_limits_XXXXXX";
  const int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, b, n), (ssize_t)n);
  close(fd);
  out = (kvp_cache *)&n;
  assert_kvp_status(kvp_deserialize_new_from_file(path, NULL, &out), KVP_ERR_FORMAT_MISMATCH, "max_cache_bytes");
  assert_null(out);
  unlink(path);
  /* The same blob within the default (1 GiB): 1 layer x 2^27 pages of 8 bytes loads. */
  free(b);
  b = crafted_blob(1, 1LL << 27, &n);
  out = NULL;
  assert_kvp_ok(kvp_deserialize_new(b, n, NULL, &out));
  assert_kvp_ok(kvp_cache_destroy(out));
  free(b);
}

/* A header that declares more or fewer bytes than a buffer holds is refused before any
 * allocation (the declared cache here is 64 GiB and max_cache_bytes allows everything). */
static void test_limits__defect8_declared_size_must_match_the_input(void **state) {
  (void)state;
  size_t n = 0;
  uint8_t *b = crafted_blob(32, 1LL << 28, &n);
  uint8_t *longer = calloc(n + 1, 1);
  assert_non_null(longer);
  memcpy(longer, b, n);
  expect_load_refused(longer, n + 1, UINT64_MAX, KVP_ERR_FORMAT_CORRUPT, "trailing");
  expect_load_refused(b, n - 1, UINT64_MAX, KVP_ERR_FORMAT_TRUNCATED, "declares");
  free(longer);
  free(b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_limits__every_bound_and_one_past),
      cmocka_unit_test(test_limits__head_dim_bound),
      cmocka_unit_test(test_limits__validate_rejects_what_layout_rejects),
      cmocka_unit_test(test_limits__json_config_inherits_the_bounds),
      cmocka_unit_test(test_limits__defect1_pool_huge_max_model_length),
      cmocka_unit_test(test_limits__defect2_metadata_build_page_table),
      cmocka_unit_test(test_limits__defect12_budget_near_int64_max),
      cmocka_unit_test(test_limits__defect8_many_layers_within_the_limit),
      cmocka_unit_test(test_limits__defect8_default_options_bound_a_small_blob),
      cmocka_unit_test(test_limits__defect8_declared_size_must_match_the_input),
  };
  return cmocka_run_group_tests_name("limits", tests, NULL, NULL);
}
