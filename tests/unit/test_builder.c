/* Batch builder (kvp_metadata_build): SPEC.md §4.3/§4.4 worked batch, §5.1 slice builder,
 * §5.3 / §12 distribution cases, validation. */
#include <stdio.h>
#include <stdlib.h>

#include "support.h"

/* Config of the SPEC §4.4 toy geometry: page 4, max len 16 (4 pages per request), 8 KV heads x
 * 128, bf16 (slices per page 64), `num_pages` pages, one layer. */
static kvp_config toy_config(kvp_layout layout, int64_t num_pages) {
  kvp_config_options o;
  kvp_config cfg;
  assert_kvp_ok(kvp_config_options_init(&o, sizeof o));
  o.num_hidden_layers = 1;
  o.num_kv_heads = 8;
  o.kv_head_dim_size = 128;
  o.max_model_length = 16;
  o.page_size = 4;
  o.kvdtype = KVP_DTYPE_BF16;
  o.version = layout;
  o.flags = KVP_CONFIG_FLAG_NO_SAFETY_MARGIN;
  /* one page of one layer: 4 tokens x 16 combined heads x 128 lanes x 2 bytes (v2: same) */
  o.budget_bytes = 4 * 16 * 128 * 2 * num_pages;
  assert_kvp_ok(kvp_config_create(&o, &cfg));
  assert_int_equal(cfg.num_pages, num_pages);
  assert_int_equal(cfg.max_num_pages_per_req, 4);
  assert_int_equal(cfg.num_slices_per_kv_cache_update_page, 64);
  return cfg;
}

static void get(const kvp_metadata *md, kvp_metadata_field f, const int32_t **p, int64_t *n) {
  assert_kvp_ok(kvp_metadata_get_array(md, f, p, n));
}

static void assert_array(const kvp_metadata *md, kvp_metadata_field f, const int32_t *expect, int64_t n) {
  const int32_t *p;
  int64_t len;
  get(md, f, &p, &len);
  assert_int_equal(len, n);
  if (n > 0) {
    assert_non_null(p);
    assert_memory_equal(p, expect, (size_t)n * sizeof(int32_t));
  }
}

/* The worked batch, given in a shuffled caller order plus one inactive request. */
static int32_t g_p0[] = {1, 2}, g_p1[] = {3}, g_p2[] = {4, 5, 6}, g_p3[] = {7}, g_p4[] = {8};
static void worked_requests(kvp_batch_request r[5]) {
  /* caller index: 0 = R2, 1 = R0, 2 = inactive, 3 = R3, 4 = R1 */
  kvp_batch_request a = {4, 6, g_p2, 3}, b = {5, 1, g_p0, 2}, c = {2, 0, g_p4, 1}, d = {0, 3, g_p3, 1},
                    e = {3, 1, g_p1, 1};
  r[0] = a;
  r[1] = b;
  r[2] = c;
  r[3] = d;
  r[4] = e;
}

static void check_worked_common(const kvp_metadata *md, const int32_t *order) {
  static const int32_t pt[24] = {1, 2, 0, 0, 3, 0, 0, 0, 4, 5, 6, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  static const int32_t cl[6] = {6, 4, 10, 3, 0, 0};
  static const int32_t qsl[7] = {0, 1, 2, 8, 11, 11, 11};
  static const int32_t ns[1] = {4};
  static const int32_t pos[16] = {5, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 0, 0, 0, 0, 0};
  static const int32_t ord[5] = {1, 4, 0, 3, -1};
  assert_array(md, KVP_METADATA_PAGES_TABLES, pt, 24);
  assert_array(md, KVP_METADATA_CONTEXT_LENS, cl, 6);
  assert_array(md, KVP_METADATA_QUERY_START_LOC, qsl, 7);
  assert_array(md, KVP_METADATA_NUM_SEQS, ns, 1);
  assert_array(md, KVP_METADATA_POSITION_IDS, pos, 16);
  assert_memory_equal(order, ord, sizeof ord);
}

static void test_builder__worked_batch_v3(void **state) {
  (void)state;
  kvp_config cfg = toy_config(KVP_LAYOUT_V3, 9);
  kvp_batch_request r[5];
  kvp_batch_options o;
  int32_t order[5];
  kvp_metadata *md = NULL;
  worked_requests(r);
  assert_kvp_ok(kvp_batch_options_init(&o, sizeof o));
  o.max_num_reqs = 6;
  o.max_num_tokens = 16;
  assert_kvp_ok(kvp_metadata_build(&cfg, r, 5, &o, order, &md));
  check_worked_common(md, order);
  {
    static const int32_t head[3] = {2, 4, 4};
    assert_array(md, KVP_METADATA_REQUEST_DISTRIBUTION, head, 3);
  }
  /* v3 metadata has no slice list */
  assert_array(md, KVP_METADATA_SLOT_MAPPING, NULL, 0);
  assert_array(md, KVP_METADATA_NUM_KV_UPDATE_SLICES, NULL, 0);
  {
    kvp_metadata_desc d;
    d.struct_size = sizeof d;
    assert_kvp_ok(kvp_metadata_get_desc(md, &d));
    assert_int_equal(d.version, KVP_LAYOUT_V3);
    assert_int_equal(d.device_type, KVP_DEVICE_CPU);
    assert_int_equal(d.page_size, 4);
    assert_int_equal(d.num_reqs, 6);
    assert_int_equal(d.pages_per_req, 4);
    assert_int_equal(d.num_slices_per_kv_cache_update_page, 64);
  }
  assert_kvp_ok(kvp_metadata_destroy(md));

  /* The seed form of the distribution. */
  o.flags = KVP_BATCH_FLAG_SEED_DISTRIBUTION;
  assert_kvp_ok(kvp_metadata_build(&cfg, r, 5, &o, order, &md));
  {
    static const int32_t seed[3] = {2, 2, 4};
    assert_array(md, KVP_METADATA_REQUEST_DISTRIBUTION, seed, 3);
  }
  assert_kvp_ok(kvp_metadata_destroy(md));
}

static void test_builder__worked_batch_v2(void **state) {
  (void)state;
  kvp_config cfg = toy_config(KVP_LAYOUT_V2, 9);
  kvp_batch_request r[5];
  kvp_batch_options o;
  int32_t order[5];
  kvp_metadata *md = NULL;
  int32_t sm[3 * 64];
  worked_requests(r);
  assert_kvp_ok(kvp_batch_options_init(&o, sizeof o));
  o.max_num_reqs = 6;
  o.max_num_tokens = 16;
  assert_kvp_ok(kvp_metadata_build(&cfg, r, 5, &o, order, &md));
  check_worked_common(md, order);
  memset(sm, 0, sizeof sm);
  /* columns (dst, src, len): (9,0,1) (15,1,1) (20,2,4) (24,6,2) (28,8,3), then zeros up to 64 */
  {
    const int32_t dst[5] = {9, 15, 20, 24, 28}, src[5] = {0, 1, 2, 6, 8}, len[5] = {1, 1, 4, 2, 3};
    int j;
    for (j = 0; j < 5; ++j) {
      sm[0 * 64 + j] = dst[j];
      sm[1 * 64 + j] = src[j];
      sm[2 * 64 + j] = len[j];
    }
  }
  assert_array(md, KVP_METADATA_SLOT_MAPPING, sm, 3 * 64);
  {
    static const int32_t n[1] = {5};
    assert_array(md, KVP_METADATA_NUM_KV_UPDATE_SLICES, n, 1);
  }
  assert_array(md, KVP_METADATA_REQUEST_DISTRIBUTION, NULL, 0);
  assert_kvp_ok(kvp_metadata_destroy(md));

  /* HEAD's tight capacity: min(round_up(5, 64), 64) = 64 as well here. */
  o.flags = KVP_BATCH_FLAG_TIGHT_SLICES;
  assert_kvp_ok(kvp_metadata_build(&cfg, r, 5, &o, order, &md));
  assert_array(md, KVP_METADATA_SLOT_MAPPING, sm, 3 * 64);
  assert_kvp_ok(kvp_metadata_destroy(md));
}

/* SPEC §12 / §5.3 distribution cases (scheduled, context_len) -> bounds. */
static void test_builder__distribution_cases(void **state) {
  (void)state;
  kvp_config cfg = toy_config(KVP_LAYOUT_V3, 16);
  kvp_metadata *md = NULL;
  int32_t pa[] = {1}, pb[] = {2, 3, 4}, pc[] = {5};
  /* scheduled=[4], ctx=[4] -> [0,1,1] */
  {
    kvp_batch_request r[1] = {{0, 4, pa, 1}};
    static const int32_t want[3] = {0, 1, 1};
    assert_kvp_ok(kvp_metadata_build(&cfg, r, 1, NULL, NULL, &md));
    assert_array(md, KVP_METADATA_REQUEST_DISTRIBUTION, want, 3);
    assert_kvp_ok(kvp_metadata_destroy(md));
  }
  /* scheduled=[4,1,0], ctx=[4,9,0] -> [1,2,2] */
  {
    kvp_batch_request r[3] = {{0, 4, pa, 1}, {8, 1, pb, 3}, {0, 0, NULL, 0}};
    static const int32_t want[3] = {1, 2, 2};
    static const int32_t want_order[3] = {1, 0, -1};
    int32_t order[3] = {7, 7, 7};
    assert_kvp_ok(kvp_metadata_build(&cfg, r, 3, NULL, order, &md));
    assert_array(md, KVP_METADATA_REQUEST_DISTRIBUTION, want, 3);
    assert_memory_equal(order, want_order, sizeof want_order);
    assert_kvp_ok(kvp_metadata_destroy(md));
  }
  /* A one-token fresh prompt is not a decode. */
  {
    kvp_batch_request r[2] = {{0, 1, pa, 1}, {2, 1, pc, 1}};
    static const int32_t want[3] = {1, 2, 2};
    static const int32_t want_order[2] = {1, 0};
    int32_t order[2];
    assert_kvp_ok(kvp_metadata_build(&cfg, r, 2, NULL, order, &md));
    assert_array(md, KVP_METADATA_REQUEST_DISTRIBUTION, want, 3);
    assert_memory_equal(order, want_order, sizeof want_order);
    assert_kvp_ok(kvp_metadata_destroy(md));
  }
  /* Empty batch: [0,0,0], query_start_loc = [0]. */
  {
    static const int32_t want[3] = {0, 0, 0};
    static const int32_t qsl[1] = {0};
    assert_kvp_ok(kvp_metadata_build(&cfg, NULL, 0, NULL, NULL, &md));
    assert_array(md, KVP_METADATA_REQUEST_DISTRIBUTION, want, 3);
    assert_array(md, KVP_METADATA_QUERY_START_LOC, qsl, 1);
    assert_kvp_ok(kvp_metadata_destroy(md));
  }
}

static void test_builder__keep_order(void **state) {
  (void)state;
  kvp_config cfg = toy_config(KVP_LAYOUT_V3, 16);
  kvp_metadata *md = NULL;
  int32_t pa[] = {1}, pb[] = {2, 3, 4};
  kvp_batch_request r[2] = {{0, 4, pa, 1}, {8, 1, pb, 3}};
  kvp_batch_options o;
  int32_t order[2];
  static const int32_t want_order[2] = {0, 1};
  static const int32_t want[3] = {0, 2, 2};
  assert_kvp_ok(kvp_batch_options_init(&o, sizeof o));
  o.flags = KVP_BATCH_FLAG_KEEP_ORDER;
  assert_kvp_ok(kvp_metadata_build(&cfg, r, 2, &o, order, &md));
  assert_memory_equal(order, want_order, sizeof want_order);
  assert_array(md, KVP_METADATA_REQUEST_DISTRIBUTION, want, 3);
  assert_kvp_ok(kvp_metadata_destroy(md));
}

/* Randomized batches: every array recomputed independently from the request list. */
static void test_builder__random_batches_match_definition(void **state) {
  (void)state;
  uint64_t rng = 12345;
  int iter;
  for (iter = 0; iter < 200; ++iter) {
    const kvp_layout layout = (iter & 1) ? KVP_LAYOUT_V2 : KVP_LAYOUT_V3;
    kvp_config cfg = toy_config(layout, 64);
    const int64_t S = 4, W = 4;
    int nreq = (int)kvp_test_rand_range(&rng, 0, 6), i, k;
    kvp_batch_request r[6];
    int32_t pages[6][4];
    int32_t order[6];
    int next_page = 1;
    int64_t total = 0, nact = 0, ndec = 0;
    kvp_batch_options o;
    kvp_metadata *md = NULL;
    const int32_t *pt, *cl, *qsl, *ns, *pos, *sm, *nk, *rd;
    int64_t n_pt, n_cl, n_qsl, n_ns, n_pos, n_sm, n_nk, n_rd;
    for (i = 0; i < nreq; ++i) {
      int64_t comp = kvp_test_rand_range(&rng, 0, 12);
      int64_t sched = kvp_test_rand_range(&rng, 0, 16 - comp);
      int64_t np;
      if (kvp_test_rand_range(&rng, 0, 2) == 0 && comp > 0) sched = 1; /* many decodes */
      np = (comp + sched + S - 1) / S;
      if (np < 1) np = 1;
      for (k = 0; k < np; ++k) pages[i][k] = (int32_t)(next_page++);
      r[i].num_computed = comp;
      r[i].num_scheduled = sched;
      r[i].page_ids = pages[i];
      r[i].num_pages = np;
      total += sched;
      if (sched > 0) nact++;
      if (sched == 1 && comp > 0) ndec++;
    }
    assert_kvp_ok(kvp_batch_options_init(&o, sizeof o));
    o.max_num_reqs = (iter % 3 == 0) ? 6 : 0;
    o.max_num_tokens = (iter % 5 == 0) ? 100 : 0;
    assert_kvp_ok(kvp_metadata_build(&cfg, r, (uint32_t)nreq, &o, order, &md));
    get(md, KVP_METADATA_PAGES_TABLES, &pt, &n_pt);
    get(md, KVP_METADATA_CONTEXT_LENS, &cl, &n_cl);
    get(md, KVP_METADATA_QUERY_START_LOC, &qsl, &n_qsl);
    get(md, KVP_METADATA_NUM_SEQS, &ns, &n_ns);
    get(md, KVP_METADATA_POSITION_IDS, &pos, &n_pos);
    get(md, KVP_METADATA_SLOT_MAPPING, &sm, &n_sm);
    get(md, KVP_METADATA_NUM_KV_UPDATE_SLICES, &nk, &n_nk);
    get(md, KVP_METADATA_REQUEST_DISTRIBUTION, &rd, &n_rd);
    {
      const int64_t R = o.max_num_reqs > 0 ? o.max_num_reqs : nact;
      const int64_t T = o.max_num_tokens > 0 ? o.max_num_tokens : total;
      int64_t row, q = 0, nslices = 0, src = 0, seen = 0;
      assert_int_equal(n_pt, R * W);
      assert_int_equal(n_cl, R);
      assert_int_equal(n_qsl, R + 1);
      assert_int_equal(n_ns, 1);
      assert_int_equal(ns[0], nact);
      assert_int_equal(n_pos, T);
      assert_int_equal(qsl[0], 0);
      /* order: a permutation of the active requests, decodes first, each group in caller order */
      for (row = 0; row < nact; ++row) {
        const kvp_batch_request *x = &r[order[row]];
        const int is_dec = x->num_scheduled == 1 && x->num_computed > 0;
        assert_true(x->num_scheduled > 0);
        assert_int_equal(is_dec, row < ndec);
        if (row > 0 && ((row < ndec) == (row - 1 < ndec))) assert_true(order[row] > order[row - 1]);
        for (k = 0; k < W; ++k) assert_int_equal(pt[row * W + k], k < x->num_pages ? x->page_ids[k] : 0);
        assert_int_equal(cl[row], x->num_computed + x->num_scheduled);
        for (k = 0; k < x->num_scheduled; ++k) assert_int_equal(pos[q + k], x->num_computed + k);
        q += x->num_scheduled;
        assert_int_equal(qsl[row + 1], q);
        /* v2: the slices of this request, page by page */
        if (layout == KVP_LAYOUT_V2) {
          int64_t p0 = x->num_computed, e = x->num_computed + x->num_scheduled;
          while (p0 < e) {
            int64_t lp = p0 / S, st = p0 % S, len = S - st;
            if (len > e - p0) len = e - p0;
            assert_int_equal(sm[0 * n_sm / 3 + nslices], x->page_ids[lp] * S + st);
            assert_int_equal(sm[1 * n_sm / 3 + nslices], src);
            assert_int_equal(sm[2 * n_sm / 3 + nslices], len);
            src += len;
            p0 += len;
            nslices++;
          }
        }
      }
      for (i = nact; i < nreq; ++i) assert_int_equal(order[i], -1);
      for (row = nact; row < R; ++row) {
        assert_int_equal(cl[row], 0);
        assert_int_equal(qsl[row + 1], total);
        for (k = 0; k < W; ++k) assert_int_equal(pt[row * W + k], 0);
      }
      for (k = total; k < T; ++k) assert_int_equal(pos[k], 0);
      /* every active request appears exactly once */
      for (i = 0; i < nreq; ++i) {
        int cnt = 0;
        for (row = 0; row < nact; ++row) cnt += order[row] == i;
        assert_int_equal(cnt, r[i].num_scheduled > 0 ? 1 : 0);
        seen += cnt;
      }
      assert_int_equal(seen, nact);
      if (layout == KVP_LAYOUT_V2) {
        /* capacity = round_up(min(2R + T/S, T), 64) with the get_padded_num_slices defaults */
        /* T, R <= 0 fall back to max_model_length (16) and get_max_num_seqs() */
        int64_t Tc = T > 0 ? T : 16, Rc = R > 0 ? R : ((1048576 / 2) / W) / 4;
        int64_t cap;
        cap = 2 * Rc + Tc / S;
        if (cap > Tc) cap = Tc;
        cap = (cap + 63) / 64 * 64;
        assert_int_equal(n_sm, 3 * cap);
        assert_int_equal(n_nk, 1);
        assert_int_equal(nk[0], nslices);
        for (k = nslices; k < cap; ++k) {
          assert_int_equal(sm[k], 0);
          assert_int_equal(sm[cap + k], 0);
          assert_int_equal(sm[2 * cap + k], 0);
        }
        assert_int_equal(n_rd, 0);
      } else {
        assert_int_equal(n_rd, 3);
        assert_int_equal(rd[0], ndec);
        assert_int_equal(rd[1], nact);
        assert_int_equal(rd[2], nact);
        assert_int_equal(n_sm, 0);
      }
    }
    assert_kvp_ok(kvp_metadata_destroy(md));
  }
}

static void test_builder__invalid_requests_are_rejected(void **state) {
  (void)state;
  kvp_config cfg = toy_config(KVP_LAYOUT_V3, 10);
  kvp_metadata *md = (kvp_metadata *)0x1;
  int32_t order[2] = {42, 42};
  int32_t ok_pages[] = {1, 2};
  int32_t null_page[] = {0};
  int32_t big_page[] = {10};
  int32_t neg_page[] = {-3};
  int32_t five[] = {1, 2, 3, 4, 5};
  kvp_batch_request r[2];
  kvp_batch_request good = {0, 5, ok_pages, 2};
  kvp_batch_options o;

  assert_kvp_ok(kvp_batch_options_init(&o, sizeof o));
  r[0] = good;
  r[1] = good;
  r[1].page_ids = null_page;
  r[1].num_pages = 1;
  r[1].num_scheduled = 2;
  assert_kvp_status(kvp_metadata_build(&cfg, r, 2, NULL, order, &md), KVP_ERR_INVALID_ARGUMENT, "null page 0");
  assert_null(md);
  assert_int_equal(order[0], 42); /* unchanged on failure */
  r[1].page_ids = big_page;
  assert_kvp_status(kvp_metadata_build(&cfg, r, 2, NULL, order, &md), KVP_ERR_INVALID_ARGUMENT, "= 10 is out of range");
  r[1].page_ids = neg_page;
  assert_kvp_status(kvp_metadata_build(&cfg, r, 2, NULL, order, &md), KVP_ERR_INVALID_ARGUMENT, "request 1");
  /* too few pages for the tokens */
  r[1] = good;
  r[1].num_pages = 1;
  assert_kvp_status(kvp_metadata_build(&cfg, r, 2, NULL, order, &md), KVP_ERR_INVALID_ARGUMENT, "need 2");
  /* more pages than a page-table row */
  r[1] = good;
  r[1].page_ids = five;
  r[1].num_pages = 5;
  assert_kvp_status(kvp_metadata_build(&cfg, r, 2, NULL, order, &md), KVP_ERR_INVALID_ARGUMENT, "max_num_pages_per_req");
  /* beyond max_model_length (16) */
  r[1] = good;
  r[1].num_computed = 12;
  assert_kvp_status(kvp_metadata_build(&cfg, r, 2, NULL, order, &md), KVP_ERR_INVALID_ARGUMENT, "max_model_length");
  r[1] = good;
  r[1].num_scheduled = -1;
  assert_kvp_status(kvp_metadata_build(&cfg, r, 2, NULL, order, &md), KVP_ERR_INVALID_ARGUMENT, "negative");
  r[1] = good;
  r[1].page_ids = NULL;
  assert_kvp_status(kvp_metadata_build(&cfg, r, 2, NULL, order, &md), KVP_ERR_INVALID_ARGUMENT, "page_ids is NULL");
  /* rows and token bucket */
  r[1] = good;
  o.max_num_reqs = 1;
  assert_kvp_status(kvp_metadata_build(&cfg, r, 2, &o, order, &md), KVP_ERR_INVALID_ARGUMENT, "exceed max_num_reqs 1");
  o.max_num_reqs = 0;
  o.max_num_tokens = 9;
  assert_kvp_status(kvp_metadata_build(&cfg, r, 2, &o, order, &md), KVP_ERR_INVALID_ARGUMENT, "token bucket");
  o.max_num_tokens = 0;
  o.flags = 1u << 20;
  assert_kvp_status(kvp_metadata_build(&cfg, r, 2, &o, order, &md), KVP_ERR_UNSUPPORTED, "flags");
  o.flags = 0;
  o.abi_version = 0;
  assert_kvp_status(kvp_metadata_build(&cfg, r, 2, &o, order, &md), KVP_ERR_VERSION_MISMATCH, "abi_version");
  assert_kvp_status(kvp_metadata_build(&cfg, NULL, 2, NULL, order, &md), KVP_ERR_INVALID_ARGUMENT, "requests is NULL");
  assert_kvp_status(kvp_metadata_build(NULL, r, 2, NULL, order, &md), KVP_ERR_INVALID_ARGUMENT, "");
  assert_kvp_status(kvp_metadata_build(&cfg, r, 2, NULL, order, NULL), KVP_ERR_INVALID_ARGUMENT, "out");
  assert_int_equal(order[0], 42);
  assert_int_equal(order[1], 42);
  /* a config without num_pages */
  {
    kvp_config c2 = cfg;
    c2.num_pages = -1;
    assert_kvp_status(kvp_metadata_build(&c2, r, 2, NULL, order, &md), KVP_ERR_INVALID_ARGUMENT, "num_pages");
  }
  /* the same requests succeed */
  assert_kvp_ok(kvp_metadata_build(&cfg, r, 2, NULL, order, &md));
  assert_kvp_ok(kvp_metadata_destroy(md));
}

static void test_builder__options_init(void **state) {
  (void)state;
  kvp_batch_options o;
  memset(&o, 0xAB, sizeof o);
  assert_kvp_ok(kvp_batch_options_init(&o, sizeof o));
  assert_int_equal(o.struct_size, sizeof o);
  assert_int_equal(o.abi_version, KVP_BATCH_OPTIONS_VERSION);
  assert_int_equal(o.max_num_reqs, 0);
  assert_int_equal(o.flags, 0);
  assert_kvp_status(kvp_batch_options_init(NULL, sizeof o), KVP_ERR_INVALID_ARGUMENT, "opts");
  assert_kvp_status(kvp_batch_options_init(&o, 4), KVP_ERR_VERSION_MISMATCH, "");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_builder__worked_batch_v3),
      cmocka_unit_test(test_builder__worked_batch_v2),
      cmocka_unit_test(test_builder__distribution_cases),
      cmocka_unit_test(test_builder__keep_order),
      cmocka_unit_test(test_builder__random_batches_match_definition),
      cmocka_unit_test(test_builder__invalid_requests_are_rejected),
      cmocka_unit_test(test_builder__options_init),
  };
  return cmocka_run_group_tests_name("builder", tests, NULL, NULL);
}
