/* Validation once per step (metadata.h, since 1.3): metadata whose arrays cannot change (owning
 * handles, borrowed ones with KVP_METADATA_FLAG_IMMUTABLE) keeps the write plan per cache, and
 * every layer written through it must give exactly the bytes that re-validating each call gives
 * (a borrowed handle without the flag). Also: borrowed arrays that change between calls are
 * followed, one metadata over two caches is checked against each, too few token rows fail as
 * without a plan, the flag's bits and report, and attention through a plan. */
#include <stdlib.h>
#include <string.h>

#include "support.h"

#define LAYERS 32
#define D 64
#define PAGE 4
#define PAGES 96
#define MAX_REQ 12

/* One random step for kvp_metadata_build: decode, prefill or mixed requests over distinct pages. */
typedef struct step {
  kvp_batch_request req[MAX_REQ];
  int32_t pages[MAX_REQ][16];
  int nreq;
  int64_t tokens;
} step;

static void random_step(uint64_t *rng, int kind, step *s) {
  int32_t pool[PAGES - 1];
  for (int i = 0; i < PAGES - 1; ++i) pool[i] = i + 1;
  for (int i = PAGES - 2; i > 0; --i) { /* shuffled page ids: destinations in no particular order */
    const int j = (int)kvp_test_rand_range(rng, 0, i);
    const int32_t t = pool[i];
    pool[i] = pool[j];
    pool[j] = t;
  }
  int next = 0;
  s->nreq = (int)kvp_test_rand_range(rng, 1, MAX_REQ);
  s->tokens = 0;
  for (int i = 0; i < s->nreq; ++i) {
    const int decode = kind == 0 || (kind == 2 && kvp_test_rand_range(rng, 0, 1) == 0);
    kvp_batch_request *r = &s->req[i];
    r->num_computed = decode ? kvp_test_rand_range(rng, 1, 19) : kvp_test_rand_range(rng, 0, 1) * 3;
    r->num_scheduled = decode ? 1 : kvp_test_rand_range(rng, 1, 12);
    r->num_pages = (r->num_computed + r->num_scheduled + PAGE - 1) / PAGE;
    for (int64_t k = 0; k < r->num_pages; ++k) s->pages[i][k] = pool[next++];
    r->page_ids = s->pages[i];
    s->tokens += r->num_scheduled;
  }
}

static kvp_metadata *build_step(const kvp_config *cfg, const step *s, uint32_t flags) {
  kvp_batch_options bo = KVP_BATCH_OPTIONS_INIT;
  bo.flags = flags;
  bo.max_num_reqs = MAX_REQ;
  bo.max_num_tokens = s->tokens;
  int32_t order[MAX_REQ];
  kvp_metadata *md = NULL;
  assert_kvp_ok(kvp_metadata_build(cfg, s->req, (uint32_t)s->nreq, &bo, order, &md));
  return md;
}

/* A borrowed handle over another handle's arrays, with `flags`. */
static kvp_metadata *borrow(const kvp_metadata *of, uint32_t flags) {
  kvp_metadata_desc d = KVP_METADATA_DESC_INIT;
  assert_kvp_ok(kvp_metadata_get_desc(of, &d));
  d.flags = flags;
  kvp_metadata *md = NULL;
  assert_kvp_ok(kvp_metadata_create(&d, &md));
  return md;
}

static void fill_random(uint16_t *p, size_t n, uint64_t *rng) {
  for (size_t i = 0; i < n; ++i) p[i] = (uint16_t)(0x3c00 + kvp_test_rand_range(rng, 0, 0x7ff));
}

static void assert_same_layers(const kvp_cache *a, const kvp_cache *b, uint32_t layers) {
  const size_t n = kvp_test_layer_bytes(a);
  uint8_t *x = (uint8_t *)test_malloc(n), *y = (uint8_t *)test_malloc(n);
  for (uint32_t l = 0; l < layers; ++l) {
    assert_kvp_ok(kvp_cache_read_layer(a, l, x, n, NULL));
    assert_kvp_ok(kvp_cache_read_layer(b, l, y, n, NULL));
    if (memcmp(x, y, n) != 0) fail_msg("layer %u differs", l);
  }
  test_free(x);
  test_free(y);
}

static kvp_cache *new_cache(const kvp_config *cfg) {
  kvp_cache *c = NULL;
  assert_kvp_ok(kvp_cache_create(cfg, NULL, &c));
  return c;
}

/* 32 layers through kept plans (owning and immutable borrowed handles) equal 32 layers each
 * validated afresh (a borrowed handle without the flag), for random v3 and v2 steps. */
static void test_plan__kept_plans_write_the_bytes_of_fresh_validation(void **state) {
  (void)state;
  uint64_t rng = 19;
  for (int layout = 0; layout < 2; ++layout) {
    const kvp_config cfg =
        kvp_test_config(LAYERS, 2, D, PAGE, PAGES, KVP_DTYPE_BF16, layout ? KVP_LAYOUT_V2 : KVP_LAYOUT_V3);
    for (int iter = 0; iter < 12; ++iter) {
      step s;
      random_step(&rng, iter % 3, &s);
      const uint32_t bflags = (iter / 3) % 2 ? KVP_BATCH_FLAG_REQUEST_ORDER : 0;
      kvp_metadata *owning = build_step(&cfg, &s, bflags);
      kvp_metadata *kept = borrow(owning, KVP_METADATA_FLAG_IMMUTABLE);
      kvp_metadata *fresh = borrow(owning, 0);
      kvp_cache *c[3] = {new_cache(&cfg), new_cache(&cfg), new_cache(&cfg)};
      const kvp_metadata *md[3] = {owning, kept, fresh};
      const size_t n = (size_t)s.tokens * 2 * D;
      uint16_t *k = (uint16_t *)test_malloc(n * 2), *v = (uint16_t *)test_malloc(n * 2);
      const kvp_tensor kt = kvp_test_tensor(k, KVP_DTYPE_BF16, s.tokens, 2, D, KVP_DEVICE_CPU);
      const kvp_tensor vt = kvp_test_tensor(v, KVP_DTYPE_BF16, s.tokens, 2, D, KVP_DEVICE_CPU);
      for (uint32_t l = 0; l < LAYERS; ++l) {
        fill_random(k, n, &rng);
        fill_random(v, n, &rng);
        for (int i = 0; i < 3; ++i) assert_kvp_ok(kvp_concatenate(c[i], l, &kt, &vt, md[i], NULL));
      }
      assert_same_layers(c[0], c[2], LAYERS);
      assert_same_layers(c[1], c[2], LAYERS);
      for (int i = 0; i < 3; ++i) assert_kvp_ok(kvp_cache_destroy(c[i]));
      for (int i = 2; i >= 0; --i) assert_kvp_ok(kvp_metadata_destroy((kvp_metadata *)md[i]));
      test_free(k);
      test_free(v);
    }
  }
}

/* v3 borrowed metadata of one decode row: page `page`, context length 3 (slot page*4 + 2). */
typedef struct decode_md {
  int32_t pt[2], cl[1], qsl[2], rd[3];
} decode_md;

static kvp_metadata *decode_metadata(decode_md *a, int32_t page, uint32_t flags) {
  a->pt[0] = page;
  a->pt[1] = 0;
  a->cl[0] = 3;
  a->qsl[0] = 0;
  a->qsl[1] = 1;
  a->rd[0] = a->rd[1] = a->rd[2] = 1;
  kvp_metadata_desc d = KVP_METADATA_DESC_INIT;
  d.flags = flags;
  d.pages_tables = a->pt;
  d.num_reqs = 1;
  d.pages_per_req = 2;
  d.context_lens = a->cl;
  d.context_lens_len = 1;
  d.query_start_loc = a->qsl;
  d.query_start_loc_len = 2;
  d.request_distribution = a->rd;
  d.request_distribution_len = 3;
  kvp_metadata *md = NULL;
  assert_kvp_ok(kvp_metadata_create(&d, &md));
  return md;
}

/* Writes layer `l` through a fresh, flagless handle with the decode row on page `page`. */
static void write_fresh(kvp_cache *c, uint32_t l, int32_t page, const kvp_tensor *k, const kvp_tensor *v) {
  decode_md a;
  kvp_metadata *md = decode_metadata(&a, page, 0);
  assert_kvp_ok(kvp_concatenate(c, l, k, v, md, NULL));
  assert_kvp_ok(kvp_metadata_destroy(md));
}

/* A borrowed handle without the flag whose arrays change between calls writes by the new values:
 * nothing of the first call is kept. (With the flag, changing them is undefined: no test.) */
static void test_plan__borrowed_without_flag_follows_changed_arrays(void **state) {
  (void)state;
  const kvp_config cfg = kvp_test_config(2, 1, D, PAGE, 16, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  kvp_cache *c = new_cache(&cfg), *ref = new_cache(&cfg);
  decode_md a;
  kvp_metadata *md = decode_metadata(&a, 5, 0);
  uint16_t k[D], v[D];
  for (int i = 0; i < D; ++i) k[i] = v[i] = (uint16_t)(0x3f80 + i);
  const kvp_tensor kt = kvp_test_tensor(k, KVP_DTYPE_BF16, 1, 1, D, KVP_DEVICE_CPU);
  const kvp_tensor vt = kvp_test_tensor(v, KVP_DTYPE_BF16, 1, 1, D, KVP_DEVICE_CPU);
  assert_kvp_ok(kvp_concatenate(c, 0, &kt, &vt, md, NULL));
  write_fresh(ref, 0, 5, &kt, &vt);
  a.pt[0] = 9; /* the next layer's row goes to page 9, not 5 */
  assert_kvp_ok(kvp_concatenate(c, 1, &kt, &vt, md, NULL));
  write_fresh(ref, 1, 9, &kt, &vt);
  assert_same_layers(c, ref, 2);
  /* A changed value that is now invalid is refused as on a first call, nothing written. */
  a.pt[0] = 16;
  assert_kvp_status(kvp_concatenate(c, 1, &kt, &vt, md, NULL), KVP_ERR_INVALID_ARGUMENT,
                    "kvp_concatenate: request 0: pages_tables[0][0] = 16 is out of range [0, 16)");
  assert_same_layers(c, ref, 2);
  assert_kvp_ok(kvp_metadata_destroy(md));
  assert_kvp_ok(kvp_cache_destroy(c));
  assert_kvp_ok(kvp_cache_destroy(ref));
}

/* One metadata, two caches of one layout version but different sizes: each is checked against its
 * own. Page 20 is valid in the big cache and out of range in the small one, in either order. */
static void test_plan__one_metadata_two_caches(void **state) {
  (void)state;
  const kvp_config big_cfg = kvp_test_config(2, 2, D, PAGE, 32, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  const kvp_config small_cfg = kvp_test_config(2, 1, D, PAGE, 16, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  kvp_cache *big = new_cache(&big_cfg), *small = new_cache(&small_cfg), *ref = new_cache(&big_cfg);
  decode_md a;
  kvp_metadata *md = decode_metadata(&a, 20, KVP_METADATA_FLAG_IMMUTABLE);
  uint16_t k[2 * D], v[2 * D];
  for (int i = 0; i < 2 * D; ++i) k[i] = v[i] = 0x3f80;
  const kvp_tensor k2 = kvp_test_tensor(k, KVP_DTYPE_BF16, 1, 2, D, KVP_DEVICE_CPU);
  const kvp_tensor v2 = kvp_test_tensor(v, KVP_DTYPE_BF16, 1, 2, D, KVP_DEVICE_CPU);
  const kvp_tensor k1 = kvp_test_tensor(k, KVP_DTYPE_BF16, 1, 1, D, KVP_DEVICE_CPU);
  const kvp_tensor v1 = kvp_test_tensor(v, KVP_DTYPE_BF16, 1, 1, D, KVP_DEVICE_CPU);
  const size_t small_bytes = kvp_test_layer_bytes(small);
  uint8_t *before = (uint8_t *)test_malloc(small_bytes), *after = (uint8_t *)test_malloc(small_bytes);
  assert_kvp_ok(kvp_cache_read_layer(small, 0, before, small_bytes, NULL));
  for (int round = 0; round < 2; ++round) {
    assert_kvp_ok(kvp_concatenate(big, (uint32_t)round, &k2, &v2, md, NULL));
    assert_kvp_status(kvp_concatenate(small, 0, &k1, &v1, md, NULL), KVP_ERR_INVALID_ARGUMENT,
                      "kvp_concatenate: request 0: pages_tables[0][0] = 20 is out of range [0, 16)");
    assert_kvp_ok(kvp_cache_read_layer(small, 0, after, small_bytes, NULL));
    assert_memory_equal(before, after, small_bytes);
  }
  write_fresh(ref, 0, 20, &k2, &v2);
  write_fresh(ref, 1, 20, &k2, &v2);
  assert_same_layers(big, ref, 2);
  /* The small cache first, on a fresh handle: refused, and the big cache still works. */
  kvp_metadata *md2 = decode_metadata(&a, 20, KVP_METADATA_FLAG_IMMUTABLE);
  assert_kvp_ok(kvp_cache_read_layer(small, 1, before, small_bytes, NULL));
  assert_kvp_status(kvp_concatenate(small, 1, &k1, &v1, md2, NULL), KVP_ERR_INVALID_ARGUMENT, "out of range [0, 16)");
  assert_kvp_ok(kvp_cache_read_layer(small, 1, after, small_bytes, NULL));
  assert_memory_equal(before, after, small_bytes);
  assert_kvp_ok(kvp_concatenate(big, 0, &k2, &v2, md2, NULL));
  assert_same_layers(big, ref, 2); /* the same tokens again: unchanged bytes */
  test_free(before);
  test_free(after);
  assert_kvp_ok(kvp_metadata_destroy(md));
  assert_kvp_ok(kvp_metadata_destroy(md2));
  assert_kvp_ok(kvp_cache_destroy(big));
  assert_kvp_ok(kvp_cache_destroy(small));
  assert_kvp_ok(kvp_cache_destroy(ref));
}

/* Fewer token rows than the metadata needs, after a plan was kept: the message of a handle that
 * validates every call, nothing written; the full count works again afterwards. */
static void test_plan__too_few_tokens_fail_as_without_a_plan(void **state) {
  (void)state;
  uint64_t rng = 7;
  for (int layout = 0; layout < 2; ++layout) {
    const kvp_config cfg =
        kvp_test_config(LAYERS, 2, D, PAGE, PAGES, KVP_DTYPE_BF16, layout ? KVP_LAYOUT_V2 : KVP_LAYOUT_V3);
    step s;
    random_step(&rng, 1, &s);
    kvp_metadata *owning = build_step(&cfg, &s, 0);
    kvp_metadata *fresh = borrow(owning, 0);
    kvp_cache *c = new_cache(&cfg);
    const size_t n = (size_t)s.tokens * 2 * D;
    uint16_t *k = (uint16_t *)test_calloc(n, 2);
    const kvp_tensor full = kvp_test_tensor(k, KVP_DTYPE_BF16, s.tokens, 2, D, KVP_DEVICE_CPU);
    const kvp_tensor shortt = kvp_test_tensor(k, KVP_DTYPE_BF16, s.tokens - 1, 2, D, KVP_DEVICE_CPU);
    assert_kvp_ok(kvp_concatenate(c, 0, &full, &full, owning, NULL));
    const size_t lb = kvp_test_layer_bytes(c);
    uint8_t *before = (uint8_t *)test_malloc(lb), *after = (uint8_t *)test_malloc(lb);
    assert_kvp_ok(kvp_cache_read_layer(c, 1, before, lb, NULL));
    assert_int_equal(kvp_concatenate(c, 1, &shortt, &shortt, fresh, NULL), KVP_ERR_INVALID_ARGUMENT);
    char expect[512];
    strncpy(expect, kvp_last_error_message(), sizeof expect - 1);
    expect[sizeof expect - 1] = '\0';
    assert_non_null(strstr(expect, "input tokens"));
    assert_int_equal(kvp_concatenate(c, 1, &shortt, &shortt, owning, NULL), KVP_ERR_INVALID_ARGUMENT);
    assert_string_equal(kvp_last_error_message(), expect);
    assert_kvp_ok(kvp_cache_read_layer(c, 1, after, lb, NULL));
    assert_memory_equal(before, after, lb);
    assert_kvp_ok(kvp_concatenate(c, 1, &full, &full, owning, NULL));
    test_free(before);
    test_free(after);
    test_free(k);
    assert_kvp_ok(kvp_cache_destroy(c));
    assert_kvp_ok(kvp_metadata_destroy(fresh));
    assert_kvp_ok(kvp_metadata_destroy(owning));
  }
}

/* The flag: unknown bits are refused, kvp_metadata_get_desc reports it (owning handles always). */
static void test_plan__flag_bits_and_report(void **state) {
  (void)state;
  decode_md a;
  kvp_metadata *with = decode_metadata(&a, 1, KVP_METADATA_FLAG_IMMUTABLE);
  kvp_metadata *without = decode_metadata(&a, 1, 0);
  kvp_metadata *owning = NULL;
  assert_kvp_ok(kvp_metadata_create_empty(KVP_LAYOUT_V3, 4, 1, 1, 0, &owning));
  kvp_metadata_desc d = KVP_METADATA_DESC_INIT;
  assert_kvp_ok(kvp_metadata_get_desc(with, &d));
  assert_int_equal(d.flags, KVP_METADATA_FLAG_IMMUTABLE);
  assert_kvp_ok(kvp_metadata_get_desc(without, &d));
  assert_int_equal(d.flags, 0);
  assert_kvp_ok(kvp_metadata_get_desc(owning, &d));
  assert_int_equal(d.flags, KVP_METADATA_FLAG_IMMUTABLE);
  kvp_metadata_desc bad = KVP_METADATA_DESC_INIT;
  assert_kvp_ok(kvp_metadata_get_desc(with, &bad));
  kvp_metadata *out = (kvp_metadata *)&a;
  bad.flags = KVP_METADATA_FLAG_IMMUTABLE | 0x80000000u;
  assert_kvp_status(kvp_metadata_create(&bad, &out), KVP_ERR_UNSUPPORTED, "flags 0x80000001 has unknown bits");
  assert_null(out);
  assert_kvp_ok(kvp_metadata_destroy(with));
  assert_kvp_ok(kvp_metadata_destroy(without));
  assert_kvp_ok(kvp_metadata_destroy(owning));
}

/* Attention (fused write, then read only) through kept plans equals attention validated afresh:
 * outputs and pages bitwise. */
static void test_plan__attention_through_a_plan(void **state) {
  (void)state;
  uint64_t rng = 23;
  enum { HQ = 4, L = 4 };
  for (int layout = 0; layout < 2; ++layout) {
    const kvp_config cfg = kvp_test_config(L, 2, D, PAGE, PAGES, KVP_DTYPE_F32, layout ? KVP_LAYOUT_V2 : KVP_LAYOUT_V3);
    for (int iter = 0; iter < 6; ++iter) {
      step s;
      random_step(&rng, iter % 3, &s);
      kvp_metadata *owning = build_step(&cfg, &s, iter % 2 ? KVP_BATCH_FLAG_REQUEST_ORDER : 0);
      kvp_metadata *fresh = borrow(owning, 0);
      kvp_cache *c[2] = {new_cache(&cfg), new_cache(&cfg)};
      const kvp_metadata *md[2] = {owning, fresh};
      const size_t nk = (size_t)s.tokens * 2 * D, nq = (size_t)s.tokens * HQ * D;
      float *k = (float *)test_malloc(nk * 4), *q = (float *)test_malloc(nq * 4);
      float *out[2] = {(float *)test_malloc(nq * 4), (float *)test_malloc(nq * 4)};
      const kvp_tensor kt = kvp_test_tensor(k, KVP_DTYPE_F32, s.tokens, 2, D, KVP_DEVICE_CPU);
      const kvp_tensor qt = kvp_test_tensor(q, KVP_DTYPE_F32, s.tokens, HQ, D, KVP_DEVICE_CPU);
      for (uint32_t l = 0; l < L; ++l) {
        for (size_t i = 0; i < nk; ++i) k[i] = (float)kvp_test_rand_range(&rng, -64, 64) / 32.0f;
        for (size_t i = 0; i < nq; ++i) q[i] = (float)kvp_test_rand_range(&rng, -64, 64) / 32.0f;
        for (int r = 0; r < 2; ++r) {
          const kvp_tensor ot = kvp_test_tensor(out[r], KVP_DTYPE_F32, s.tokens, HQ, D, KVP_DEVICE_CPU);
          assert_kvp_ok(kvp_attention(c[r], l, &qt, &kt, &kt, md[r], NULL, &ot, NULL));
        }
        assert_memory_equal(out[0], out[1], nq * 4);
        for (int r = 0; r < 2; ++r) {
          const kvp_tensor ot = kvp_test_tensor(out[r], KVP_DTYPE_F32, s.tokens, HQ, D, KVP_DEVICE_CPU);
          assert_kvp_ok(kvp_attention(c[r], l, &qt, NULL, NULL, md[r], NULL, &ot, NULL));
        }
        assert_memory_equal(out[0], out[1], nq * 4);
      }
      for (int r = 0; r < 2; ++r) {
        assert_kvp_ok(kvp_cache_destroy(c[r]));
        test_free(out[r]);
      }
      assert_kvp_ok(kvp_metadata_destroy(fresh));
      assert_kvp_ok(kvp_metadata_destroy(owning));
      test_free(k);
      test_free(q);
    }
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_plan__kept_plans_write_the_bytes_of_fresh_validation),
      cmocka_unit_test(test_plan__borrowed_without_flag_follows_changed_arrays),
      cmocka_unit_test(test_plan__one_metadata_two_caches),
      cmocka_unit_test(test_plan__too_few_tokens_fail_as_without_a_plan),
      cmocka_unit_test(test_plan__flag_bits_and_report),
      cmocka_unit_test(test_plan__attention_through_a_plan),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
