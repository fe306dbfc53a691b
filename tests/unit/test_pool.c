/* Unit tests of kvpages/pool.h on the CPU: page tables and slots across page boundaries, the null
 * page, fork + copy-on-write (K/V written through kvp_metadata_build + kvp_concatenate and read
 * back), prefix reuse giving the same bytes as recomputing, the computed watermark, LRU eviction
 * order, truncation, every error case (each proven to change nothing), handles, options, OOM,
 * and kvp_cache_copy_pages. */
#include "support.h"

#include <stdio.h>
#include <stdlib.h>

#include "kvpages/metadata.h"
#include "kvpages/ops.h"
#include "kvpages/pool.h"

#define LAYERS 2
#define HEADS 2
#define HDIM 128
#define PS 4    /* page size */
#define NP 16   /* pages including the null page */
#define MAXLEN 64

typedef struct fixture {
  kvp_config cfg;
  kvp_cache *cache;
  kvp_pool *pool;
} fixture;

static kvp_config small_config(int64_t num_pages, int64_t max_len) {
  kvp_config cfg = kvp_test_config(LAYERS, HEADS, HDIM, PS, num_pages, KVP_DTYPE_F32, KVP_LAYOUT_V3);
  cfg.max_model_length = max_len;
  cfg.max_num_pages_per_req = (max_len + PS - 1) / PS;
  return cfg;
}

static int setup(void **state) {
  fixture *f = (fixture *)test_calloc(1, sizeof *f);
  f->cfg = small_config(NP, MAXLEN);
  if (kvp_cache_create(&f->cfg, NULL, &f->cache) != KVP_OK) return -1;
  kvp_pool_options o = KVP_POOL_OPTIONS_INIT;
  o.max_sequences = 8;
  if (kvp_pool_create(f->cache, &o, &f->pool) != KVP_OK) return -1;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = (fixture *)*state;
  if (f->pool != NULL) assert_kvp_ok(kvp_pool_check_invariants(f->pool));
  kvp_pool_destroy(f->pool);
  kvp_cache_destroy(f->cache);
  test_free(f);
  return 0;
}

/* ---- helpers ------------------------------------------------------------------------------ */

static kvp_seq_id add(kvp_pool *pool, const int32_t *tokens, size_t n, uint64_t salt, size_t *reused) {
  kvp_seq_id s = {0};
  assert_kvp_ok(kvp_pool_add_sequence(pool, tokens, n, salt, 0, &s, reused));
  assert_int_not_equal(s.id, 0);
  return s;
}

static size_t table(kvp_pool *pool, kvp_seq_id s, int32_t *out, size_t cap) {
  size_t n = 0;
  assert_kvp_ok(kvp_pool_get_page_table(pool, s, out, cap, &n));
  return n;
}

static uint32_t refcount(kvp_pool *pool, int32_t page) {
  uint32_t r = 99, fl = 99;
  assert_kvp_ok(kvp_pool_get_page_state(pool, page, &r, &fl));
  return r;
}

static uint32_t pflags(kvp_pool *pool, int32_t page) {
  uint32_t r = 99, fl = 99;
  assert_kvp_ok(kvp_pool_get_page_state(pool, page, &r, &fl));
  return fl;
}

static kvp_pool_stats stats(kvp_pool *pool) {
  kvp_pool_stats st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  assert_kvp_ok(kvp_pool_get_stats(pool, &st));
  return st;
}

/* Everything observable about a pool, for "nothing changed" checks. */
typedef struct snapshot {
  kvp_pool_stats st;
  uint32_t ref[NP], flags[NP];
} snapshot;

static void snap(kvp_pool *pool, snapshot *s) {
  memset(s, 0, sizeof *s);
  s->st = stats(pool);
  for (int32_t p = 0; p < NP; ++p) assert_kvp_ok(kvp_pool_get_page_state(pool, p, &s->ref[p], &s->flags[p]));
}

static void assert_unchanged(kvp_pool *pool, const snapshot *before) {
  snapshot now;
  snap(pool, &now);
  assert_memory_equal(&now, before, sizeof now);
  assert_kvp_ok(kvp_pool_check_invariants(pool));
}

/* K/V contents of a token: a function of the token ids up to and including its position (what a
 * model's K/V depends on), computed here independently of the library. */
static uint32_t prefix_tag(const int32_t *tokens, size_t pos) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i <= pos; ++i) h = (h ^ (uint32_t)tokens[i]) * 16777619u;
  return h % 100000u + 1u;
}

static float kv_value(uint32_t tag, int layer, int head, int d, int is_value) {
  return (float)(tag * 64u + (uint32_t)layer * 16u + (uint32_t)head * 4u + (uint32_t)(d & 3)) + (is_value ? 0.5f : 0.0f);
}

static float *view_elem(const kvp_tensor *t, int64_t page, int64_t row, int64_t head, int64_t d) {
  return (float *)t->data + page * t->strides[0] + row * t->strides[1] + head * t->strides[2] + d * t->strides[3];
}

/* Writes K/V of positions [from, to) of each sequence through the batch builder and
 * kvp_concatenate, using the pool's page tables (kvp_pool_get_batch_request). The requests are
 * taken from the pool; each must have num_computed == from and num_scheduled == to - from. */
static void write_through_concatenate(fixture *f, const kvp_seq_id *seqs, int32_t *const *tokens, uint32_t n) {
  kvp_batch_request reqs[8];
  int32_t order[8];
  size_t total = 0;
  assert_true(n <= 8);
  for (uint32_t i = 0; i < n; ++i) {
    assert_kvp_ok(kvp_pool_get_batch_request(f->pool, seqs[i], &reqs[i]));
    total += (size_t)reqs[i].num_scheduled;
  }
  kvp_metadata *md = NULL;
  assert_kvp_ok(kvp_metadata_build(&f->cfg, reqs, n, NULL, order, &md));
  float *kbuf = (float *)test_calloc(total * HEADS * HDIM, sizeof(float));
  float *vbuf = (float *)test_calloc(total * HEADS * HDIM, sizeof(float));
  for (int layer = 0; layer < LAYERS; ++layer) {
    size_t row = 0;
    for (uint32_t r = 0; r < n; ++r) {
      if (order[r] < 0) break;
      const kvp_batch_request *q = &reqs[order[r]];
      for (int64_t t = 0; t < q->num_scheduled; ++t, ++row) {
        const uint32_t tag = prefix_tag(tokens[order[r]], (size_t)(q->num_computed + t));
        for (int h = 0; h < HEADS; ++h)
          for (int d = 0; d < HDIM; ++d) {
            kbuf[(row * HEADS + h) * HDIM + d] = kv_value(tag, layer, h, d, 0);
            vbuf[(row * HEADS + h) * HDIM + d] = kv_value(tag, layer, h, d, 1);
          }
      }
    }
    kvp_tensor kt = kvp_test_tensor(kbuf, KVP_DTYPE_F32, (int64_t)total, HEADS, HDIM, KVP_DEVICE_CPU);
    kvp_tensor vt = kvp_test_tensor(vbuf, KVP_DTYPE_F32, (int64_t)total, HEADS, HDIM, KVP_DEVICE_CPU);
    assert_kvp_ok(kvp_concatenate(f->cache, (uint32_t)layer, &kt, &vt, md, NULL));
  }
  test_free(kbuf);
  test_free(vbuf);
  kvp_metadata_destroy(md);
}

/* Checks the K/V of positions [0, len) of a sequence against its token history. */
static void assert_sequence_kv(fixture *f, kvp_seq_id s, const int32_t *tokens, size_t len) {
  int32_t slots[MAXLEN];
  assert_kvp_ok(kvp_pool_get_slots(f->pool, s, 0, len, slots));
  for (int layer = 0; layer < LAYERS; ++layer) {
    kvp_tensor kt, vt;
    assert_kvp_ok(kvp_cache_get_view(f->cache, (uint32_t)layer, KVP_VIEW_KEYS, &kt));
    assert_kvp_ok(kvp_cache_get_view(f->cache, (uint32_t)layer, KVP_VIEW_VALUES, &vt));
    for (size_t pos = 0; pos < len; ++pos) {
      const uint32_t tag = prefix_tag(tokens, pos);
      const int64_t page = slots[pos] / PS, row = slots[pos] % PS;
      for (int h = 0; h < HEADS; ++h)
        for (int d = 0; d < HDIM; d += 37) {
          const float k = *view_elem(&kt, page, row, h, d), v = *view_elem(&vt, page, row, h, d);
          if (k != kv_value(tag, layer, h, d, 0) || v != kv_value(tag, layer, h, d, 1))
            fail_msg("seq %08x pos %zu (page %lld row %lld) layer %d head %d lane %d: got K %f V %f, want %f %f",
                     s.id, pos, (long long)page, (long long)row, layer, h, d, (double)k, (double)v,
                     (double)kv_value(tag, layer, h, d, 0), (double)kv_value(tag, layer, h, d, 1));
        }
    }
  }
}

/* Bytes of one page in one layer (flat view). */
static const uint8_t *page_bytes(kvp_cache *c, uint32_t layer, int32_t page, size_t *nbytes) {
  kvp_tensor t;
  assert_kvp_ok(kvp_cache_get_view(c, layer, KVP_VIEW_FLAT, &t));
  *nbytes = (size_t)t.strides[0] * sizeof(float);
  return (const uint8_t *)t.data + (size_t)page * *nbytes;
}

static void fill_page(kvp_cache *c, int32_t page, uint8_t seed) {
  for (uint32_t l = 0; l < LAYERS; ++l) {
    size_t nb;
    uint8_t *p = (uint8_t *)page_bytes(c, l, page, &nb);
    for (size_t i = 0; i < nb; ++i) p[i] = (uint8_t)(seed + i * 7u + l * 13u);
  }
}

/* ---- tests -------------------------------------------------------------------------------- */

static void test_pool__create_reports_geometry(void **state) {
  fixture *f = (fixture *)*state;
  kvp_pool_stats st = stats(f->pool);
  assert_int_equal(st.total_pages, NP - 1);
  assert_int_equal(st.free_pages, NP - 1);
  assert_int_equal(st.evictable_pages + st.used_pages + st.indexed_pages + st.num_sequences, 0);
  assert_int_equal(st.page_size, PS);
  assert_int_equal(st.max_pages_per_sequence, MAXLEN / PS);
  assert_int_equal(st.max_sequences, 8);
  assert_int_equal(pflags(f->pool, 0), KVP_PAGE_FLAG_NULL);
  for (int32_t p = 1; p < NP; ++p) assert_int_equal(pflags(f->pool, p), KVP_PAGE_FLAG_FREE);
  assert_kvp_ok(kvp_pool_check_invariants(f->pool));
  /* a stats struct of version-1 size but with an old smaller size is refused */
  kvp_pool_stats small;
  small.struct_size = 4;
  assert_kvp_status(kvp_pool_get_stats(f->pool, &small), KVP_ERR_VERSION_MISMATCH, "struct_size");
  assert_kvp_status(kvp_pool_get_stats(f->pool, NULL), KVP_ERR_INVALID_ARGUMENT, "out");
}

static void test_pool__append_across_page_boundaries(void **state) {
  fixture *f = (fixture *)*state;
  kvp_seq_id s = add(f->pool, NULL, 0, 0, NULL);
  int32_t toks[32];
  for (int i = 0; i < 32; ++i) toks[i] = 100 + i;
  const size_t steps[] = {1, 3, 1, 6, 4, 2};
  size_t len = 0;
  int32_t prev_row[MAXLEN / PS] = {0};
  size_t prev_n = 0;
  for (size_t k = 0; k < sizeof steps / sizeof steps[0]; ++k) {
    assert_kvp_ok(kvp_pool_append(f->pool, s, toks + len, steps[k], NULL));
    len += steps[k];
    size_t l2 = 0, c2 = 0;
    assert_kvp_ok(kvp_pool_get_sequence_length(f->pool, s, &l2, &c2));
    assert_int_equal(l2, len);
    assert_int_equal(c2, len - steps[k]); /* append declares the earlier tokens computed */
    int32_t row[MAXLEN / PS + 2];
    memset(row, 0x7F, sizeof row);
    const size_t n = table(f->pool, s, row, MAXLEN / PS);
    assert_int_equal(n, (len + PS - 1) / PS);
    for (size_t i = n; i < MAXLEN / PS; ++i) assert_int_equal(row[i], 0); /* padded with the null page */
    assert_int_equal(row[MAXLEN / PS], 0x7F7F7F7F);                      /* nothing past capacity */
    for (size_t i = 0; i < n; ++i) {
      assert_in_range(row[i], 1, NP - 1);
      for (size_t j = 0; j < i; ++j) assert_int_not_equal(row[i], row[j]);
      if (i < prev_n) assert_int_equal(row[i], prev_row[i]); /* existing pages never move */
      assert_int_equal(refcount(f->pool, row[i]), 1);
    }
    memcpy(prev_row, row, sizeof prev_row);
    prev_n = n;
    int32_t slots[32];
    assert_kvp_ok(kvp_pool_get_slots(f->pool, s, 0, len, slots));
    for (size_t pos = 0; pos < len; ++pos) assert_int_equal(slots[pos], row[pos / PS] * PS + (int32_t)(pos % PS));
    kvp_pool_stats st = stats(f->pool);
    assert_int_equal(st.used_pages, (int64_t)n);
    assert_int_equal(st.free_pages, NP - 1 - (int64_t)n);
    assert_kvp_ok(kvp_pool_check_invariants(f->pool));
  }
  /* a sub-range of slots */
  int32_t two[2], row[MAXLEN / PS];
  table(f->pool, s, row, MAXLEN / PS);
  assert_kvp_ok(kvp_pool_get_slots(f->pool, s, 7, 2, two));
  assert_int_equal(two[0], row[1] * PS + 3);
  assert_int_equal(two[1], row[2] * PS + 0);
}

static void test_pool__null_page_is_never_handed_out(void **state) {
  fixture *f = (fixture *)*state;
  int32_t toks[MAXLEN];
  for (int i = 0; i < MAXLEN; ++i) toks[i] = i;
  /* 15 usable pages: 60 tokens take them all */
  kvp_seq_id s = add(f->pool, toks, 60, 0, NULL);
  int32_t row[MAXLEN / PS];
  assert_int_equal(table(f->pool, s, row, MAXLEN / PS), NP - 1);
  int seen[NP] = {0};
  for (int i = 0; i < NP - 1; ++i) {
    assert_in_range(row[i], 1, NP - 1);
    seen[row[i]]++;
  }
  for (int p = 1; p < NP; ++p) assert_int_equal(seen[p], 1);
  assert_int_equal(refcount(f->pool, 0), 0);
  assert_int_equal(pflags(f->pool, 0), KVP_PAGE_FLAG_NULL);
  assert_int_equal(stats(f->pool).free_pages, 0);
}

static void test_pool__out_of_pages_changes_nothing(void **state) {
  fixture *f = (fixture *)*state;
  int32_t toks[MAXLEN];
  for (int i = 0; i < MAXLEN; ++i) toks[i] = 7 * i + 1;
  kvp_seq_id a = add(f->pool, toks, 50, 0, NULL); /* 13 pages, 2 left */
  snapshot before;
  snap(f->pool, &before);
  kvp_seq_id bogus = {12345};
  kvp_seq_id b = bogus;
  size_t reused = 777;
  assert_kvp_status(kvp_pool_add_sequence(f->pool, toks, 12, 99, 0, &b, &reused), KVP_ERR_OUT_OF_PAGES,
                    "needs 3 new page(s)");
  assert_true(strstr(kvp_last_error_message(), "only 2 are free or evictable") != NULL);
  assert_int_equal(b.id, bogus.id);
  assert_int_equal(reused, 777);
  assert_unchanged(f->pool, &before);
  /* append: 50 -> 62 needs cdiv(62,4) - cdiv(50,4) = 3 pages */
  assert_kvp_status(kvp_pool_append(f->pool, a, toks, 12, NULL), KVP_ERR_OUT_OF_PAGES, "needs 3 new page(s)");
  assert_unchanged(f->pool, &before);
  size_t len = 0, comp = 0;
  assert_kvp_ok(kvp_pool_get_sequence_length(f->pool, a, &len, &comp));
  assert_int_equal(len, 50);
  assert_int_equal(comp, 0); /* the failed append did not mark anything computed */
  /* exactly fitting works */
  assert_kvp_ok(kvp_pool_append(f->pool, a, toks, 10, NULL));
  assert_int_equal(stats(f->pool).free_pages, 0);
}

static void test_pool__max_model_length_is_enforced(void **state) {
  fixture *f = (fixture *)*state;
  int32_t toks[MAXLEN + 1];
  for (int i = 0; i <= MAXLEN; ++i) toks[i] = i;
  snapshot before;
  snap(f->pool, &before);
  kvp_seq_id s = {0};
  assert_kvp_status(kvp_pool_add_sequence(f->pool, toks, MAXLEN + 1, 0, 0, &s, NULL), KVP_ERR_INVALID_ARGUMENT,
                    "exceeds max_model_length 64");
  assert_unchanged(f->pool, &before);
  kvp_config cfg = small_config(40, MAXLEN); /* enough pages for a full-length sequence */
  kvp_cache *c;
  kvp_pool *p;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &c));
  assert_kvp_ok(kvp_pool_create(c, NULL, &p));
  s = add(p, toks, MAXLEN - 2, 0, NULL);
  assert_kvp_status(kvp_pool_append(p, s, toks, 3, NULL), KVP_ERR_INVALID_ARGUMENT, "would exceed max_model_length 64");
  size_t len = 0;
  assert_kvp_ok(kvp_pool_get_sequence_length(p, s, &len, NULL));
  assert_int_equal(len, MAXLEN - 2);
  assert_kvp_ok(kvp_pool_append(p, s, toks, 2, NULL)); /* exactly max_model_length is fine */
  assert_kvp_ok(kvp_pool_check_invariants(p));
  assert_kvp_ok(kvp_pool_destroy(p));
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void test_pool__stale_and_unknown_ids_are_rejected(void **state) {
  fixture *f = (fixture *)*state;
  int32_t toks[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  kvp_seq_id a = add(f->pool, toks, 6, 0, NULL);
  assert_kvp_ok(kvp_pool_free_sequence(f->pool, a));
  snapshot before;
  snap(f->pool, &before);
  size_t n = 0;
  int32_t row[4];
  kvp_seq_id kids[2];
  assert_kvp_status(kvp_pool_free_sequence(f->pool, a), KVP_ERR_NOT_FOUND, "stale");
  assert_kvp_status(kvp_pool_append(f->pool, a, toks, 1, NULL), KVP_ERR_NOT_FOUND, "stale");
  assert_kvp_status(kvp_pool_truncate(f->pool, a, 0), KVP_ERR_NOT_FOUND, "stale");
  assert_kvp_status(kvp_pool_fork(f->pool, a, 2, kids), KVP_ERR_NOT_FOUND, "stale");
  assert_kvp_status(kvp_pool_set_computed(f->pool, a, 0), KVP_ERR_NOT_FOUND, "stale");
  assert_kvp_status(kvp_pool_get_page_table(f->pool, a, row, 4, &n), KVP_ERR_NOT_FOUND, "stale");
  assert_kvp_status(kvp_pool_get_sequence_length(f->pool, a, &n, NULL), KVP_ERR_NOT_FOUND, "stale");
  kvp_seq_id zero = {0}, far = {(1u << 20) | 5000u}, badgen = {(7u << 20) | (a.id & 0xFFFFFu)};
  assert_kvp_status(kvp_pool_append(f->pool, zero, toks, 1, NULL), KVP_ERR_NOT_FOUND, "not a sequence of this pool");
  assert_kvp_status(kvp_pool_append(f->pool, far, toks, 1, NULL), KVP_ERR_NOT_FOUND, "not a sequence of this pool");
  assert_kvp_status(kvp_pool_free_sequence(f->pool, badgen), KVP_ERR_NOT_FOUND, "0x");
  assert_unchanged(f->pool, &before);
  /* the slot is reused by a later sequence under a new generation; the old id stays stale */
  kvp_seq_id ids[8];
  for (int i = 0; i < 8; ++i) ids[i] = add(f->pool, NULL, 0, 0, NULL);
  for (int i = 0; i < 8; ++i) {
    assert_int_not_equal(ids[i].id, a.id);
    for (int j = 0; j < i; ++j) assert_int_not_equal(ids[i].id, ids[j].id);
  }
  assert_kvp_status(kvp_pool_append(f->pool, a, toks, 1, NULL), KVP_ERR_NOT_FOUND, "stale");
  /* all 8 slots in use: another add fails and changes nothing */
  snap(f->pool, &before);
  kvp_seq_id s = {0};
  assert_kvp_status(kvp_pool_add_sequence(f->pool, toks, 4, 0, 0, &s, NULL), KVP_ERR_OUT_OF_PAGES, "sequence slots");
  assert_unchanged(f->pool, &before);
  for (int i = 0; i < 8; ++i) assert_kvp_ok(kvp_pool_free_sequence(f->pool, ids[i]));
}

static void test_pool__argument_errors_change_nothing(void **state) {
  fixture *f = (fixture *)*state;
  int32_t toks[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  kvp_seq_id a = add(f->pool, toks, 6, 0, NULL);
  snapshot before;
  snap(f->pool, &before);
  kvp_seq_id s = {0};
  size_t n = 99;
  int32_t row[4];
  assert_kvp_status(kvp_pool_add_sequence(f->pool, NULL, 3, 0, 0, &s, NULL), KVP_ERR_INVALID_ARGUMENT, "tokens");
  assert_kvp_status(kvp_pool_add_sequence(f->pool, toks, 3, 0, 0, NULL, NULL), KVP_ERR_INVALID_ARGUMENT, "seq_out");
  assert_kvp_status(kvp_pool_add_sequence(f->pool, toks, 3, 0, 0x10, &s, NULL), KVP_ERR_INVALID_ARGUMENT, "flags 0x10");
  assert_kvp_status(kvp_pool_append(f->pool, a, NULL, 2, NULL), KVP_ERR_INVALID_ARGUMENT, "tokens");
  assert_kvp_status(kvp_pool_truncate(f->pool, a, 7), KVP_ERR_INVALID_ARGUMENT, "new_length 7 exceeds");
  assert_kvp_status(kvp_pool_set_computed(f->pool, a, 7), KVP_ERR_INVALID_ARGUMENT, "num_tokens 7 exceeds");
  assert_kvp_status(kvp_pool_fork(f->pool, a, 1, NULL), KVP_ERR_INVALID_ARGUMENT, "children_out");
  assert_kvp_status(kvp_pool_get_page_table(f->pool, a, row, 4, NULL), KVP_ERR_INVALID_ARGUMENT, "count_out");
  assert_kvp_status(kvp_pool_get_page_table(f->pool, a, NULL, 4, &n), KVP_ERR_INVALID_ARGUMENT, "pages_out");
  assert_kvp_status(kvp_pool_get_page_table(f->pool, a, row, 1, &n), KVP_ERR_BUFFER_TOO_SMALL, "2 page(s)");
  assert_int_equal(n, 2); /* size reported with BUFFER_TOO_SMALL */
  assert_kvp_status(kvp_pool_get_page_table(f->pool, a, NULL, 0, &n), KVP_ERR_BUFFER_TOO_SMALL, "capacity is 0");
  int32_t slots[8];
  assert_kvp_status(kvp_pool_get_slots(f->pool, a, 5, 2, slots), KVP_ERR_INVALID_ARGUMENT, "past the sequence's length 6");
  assert_kvp_status(kvp_pool_get_slots(f->pool, a, 0, 2, NULL), KVP_ERR_INVALID_ARGUMENT, "slots_out");
  assert_kvp_status(kvp_pool_get_page_state(f->pool, NP, NULL, NULL), KVP_ERR_INVALID_ARGUMENT, "page 16");
  assert_kvp_status(kvp_pool_get_page_state(f->pool, -1, NULL, NULL), KVP_ERR_INVALID_ARGUMENT, "page -1");
  assert_kvp_status(kvp_pool_get_batch_request(f->pool, a, NULL), KVP_ERR_INVALID_ARGUMENT, "out");
  assert_unchanged(f->pool, &before);
  /* zero-sized operations are no-ops that succeed */
  assert_kvp_ok(kvp_pool_fork(f->pool, a, 0, NULL));
  assert_kvp_ok(kvp_pool_get_slots(f->pool, a, 6, 0, NULL));
  assert_kvp_ok(kvp_pool_truncate(f->pool, a, 6));
  assert_unchanged(f->pool, &before);
}

/* Fork + copy-on-write with K/V written through kvp_concatenate and read back. */
static void test_pool__fork_and_copy_on_write_keep_every_child_correct(void **state) {
  fixture *f = (fixture *)*state;
  int32_t tp[16] = {11, 12, 13, 14, 15, 16}, tc1[16], tc2[16];
  kvp_seq_id parent = add(f->pool, tp, 6, 0, NULL);
  int32_t *tk[1] = {tp};
  write_through_concatenate(f, &parent, tk, 1); /* prefill positions 0..5 */
  assert_sequence_kv(f, parent, tp, 6);

  kvp_seq_id kids[2];
  assert_kvp_ok(kvp_pool_fork(f->pool, parent, 2, kids));
  memcpy(tc1, tp, sizeof tp);
  memcpy(tc2, tp, sizeof tp);
  int32_t prow[4], r1[4], r2[4];
  assert_int_equal(table(f->pool, parent, prow, 4), 2);
  assert_int_equal(table(f->pool, kids[0], r1, 4), 2);
  assert_int_equal(table(f->pool, kids[1], r2, 4), 2);
  assert_memory_equal(prow, r1, 2 * sizeof(int32_t));
  assert_memory_equal(prow, r2, 2 * sizeof(int32_t));
  assert_int_equal(refcount(f->pool, prow[0]), 3);
  assert_int_equal(refcount(f->pool, prow[1]), 3);
  assert_int_equal(stats(f->pool).used_pages, 2);
  assert_int_equal(stats(f->pool).num_sequences, 3);

  /* each sequence samples a different next token: the shared partial tail is copied on write */
  tc1[6] = 21;
  assert_kvp_ok(kvp_pool_append(f->pool, kids[0], &tc1[6], 1, NULL));
  table(f->pool, kids[0], r1, 4);
  assert_int_equal(r1[0], prow[0]);
  assert_int_not_equal(r1[1], prow[1]);
  assert_int_equal(refcount(f->pool, prow[1]), 2);
  assert_int_equal(refcount(f->pool, r1[1]), 1);
  assert_int_equal(stats(f->pool).cow_copies, 1);
  /* the copy holds the tail's bytes in every layer */
  for (uint32_t l = 0; l < LAYERS; ++l) {
    size_t nb;
    const uint8_t *src = page_bytes(f->cache, l, prow[1], &nb);
    const uint8_t *dst = page_bytes(f->cache, l, r1[1], &nb);
    assert_memory_equal(src, dst, nb);
  }
  tc2[6] = 22;
  assert_kvp_ok(kvp_pool_append(f->pool, kids[1], &tc2[6], 1, NULL));
  tp[6] = 23;
  assert_kvp_ok(kvp_pool_append(f->pool, parent, &tp[6], 1, NULL)); /* last holder: written in place */
  assert_int_equal(stats(f->pool).cow_copies, 2);
  table(f->pool, parent, prow, 4);
  table(f->pool, kids[1], r2, 4);
  assert_int_equal(refcount(f->pool, prow[1]), 1);
  assert_int_not_equal(r2[1], prow[1]);
  assert_int_not_equal(r2[1], r1[1]);
  assert_int_equal(refcount(f->pool, prow[0]), 3);

  kvp_seq_id all[3] = {parent, kids[0], kids[1]};
  int32_t *toks[3] = {tp, tc1, tc2};
  write_through_concatenate(f, all, toks, 3); /* one decode token each */
  assert_sequence_kv(f, parent, tp, 7);
  assert_sequence_kv(f, kids[0], tc1, 7);
  assert_sequence_kv(f, kids[1], tc2, 7);

  /* a few more steps crossing into a new page, then every sequence is still right */
  for (int step = 0; step < 3; ++step) {
    tp[7 + step] = 30 + step;
    tc1[7 + step] = 40 + step;
    tc2[7 + step] = 50 + step;
    assert_kvp_ok(kvp_pool_append(f->pool, parent, &tp[7 + step], 1, NULL));
    assert_kvp_ok(kvp_pool_append(f->pool, kids[0], &tc1[7 + step], 1, NULL));
    assert_kvp_ok(kvp_pool_append(f->pool, kids[1], &tc2[7 + step], 1, NULL));
    write_through_concatenate(f, all, toks, 3);
  }
  assert_sequence_kv(f, parent, tp, 10);
  assert_sequence_kv(f, kids[0], tc1, 10);
  assert_sequence_kv(f, kids[1], tc2, 10);
  assert_kvp_ok(kvp_pool_check_invariants(f->pool));
  for (int i = 0; i < 3; ++i) assert_kvp_ok(kvp_pool_free_sequence(f->pool, all[i]));
  kvp_pool_stats st = stats(f->pool);
  assert_int_equal(st.used_pages, 0);
  assert_int_equal(st.free_pages + st.evictable_pages, NP - 1);
}

/* A cached prefix gives the same K/V bytes as computing the prompt from scratch. */
static void test_pool__prefix_reuse_gives_same_bytes_as_recomputing(void **state) {
  fixture *f = (fixture *)*state;
  int32_t ta[16] = {5, 9, 2, 7, 1, 1, 3, 8, 4, 6};
  int32_t tb[16] = {5, 9, 2, 7, 1, 1, 3, 8, 60, 61, 62, 63, 64};
  size_t reused = 99;
  kvp_seq_id a = add(f->pool, ta, 10, 0, &reused);
  assert_int_equal(reused, 0);
  int32_t *tk[1] = {ta};
  write_through_concatenate(f, &a, tk, 1);
  assert_kvp_ok(kvp_pool_set_computed(f->pool, a, 10));
  int32_t arow[4];
  table(f->pool, a, arow, 4);
  assert_true(pflags(f->pool, arow[0]) & KVP_PAGE_FLAG_INDEXED);
  assert_true(pflags(f->pool, arow[1]) & KVP_PAGE_FLAG_INDEXED);
  assert_false(pflags(f->pool, arow[2]) & KVP_PAGE_FLAG_INDEXED); /* partial page */
  assert_kvp_ok(kvp_pool_free_sequence(f->pool, a));
  assert_int_equal(stats(f->pool).evictable_pages, 2);

  kvp_seq_id b = add(f->pool, tb, 13, 0, &reused);
  assert_int_equal(reused, 8);
  int32_t brow[4];
  assert_int_equal(table(f->pool, b, brow, 4), 4);
  assert_int_equal(brow[0], arow[0]);
  assert_int_equal(brow[1], arow[1]);
  kvp_batch_request rq;
  assert_kvp_ok(kvp_pool_get_batch_request(f->pool, b, &rq));
  assert_int_equal(rq.num_computed, 8);
  assert_int_equal(rq.num_scheduled, 5);
  assert_int_equal(rq.num_pages, 4);
  assert_memory_equal(rq.page_ids, brow, 4 * sizeof(int32_t));
  int32_t *tkb[1] = {tb};
  write_through_concatenate(f, &b, tkb, 1); /* only the 5 new tokens */

  /* the same prompt computed from scratch (another salt: no reuse) */
  kvp_seq_id c = add(f->pool, tb, 13, 1234, &reused);
  assert_int_equal(reused, 0);
  write_through_concatenate(f, &c, tkb, 1);
  int32_t sb[13], sc[13];
  assert_kvp_ok(kvp_pool_get_slots(f->pool, b, 0, 13, sb));
  assert_kvp_ok(kvp_pool_get_slots(f->pool, c, 0, 13, sc));
  for (uint32_t l = 0; l < LAYERS; ++l) {
    size_t nb;
    const uint8_t *base = page_bytes(f->cache, l, 0, &nb);
    const size_t row_bytes = nb / PS;
    for (int pos = 0; pos < 13; ++pos) {
      assert_int_not_equal(sb[pos], sc[pos]);
      assert_memory_equal(base + (size_t)sb[pos] * row_bytes, base + (size_t)sc[pos] * row_bytes, row_bytes);
    }
  }
  assert_sequence_kv(f, b, tb, 13);
  kvp_pool_stats st = stats(f->pool);
  assert_int_equal(st.prompt_tokens, 10 + 13 + 13);
  assert_int_equal(st.reused_tokens, 8);
}

static void test_pool__reuse_leaves_one_token_unless_reuse_all(void **state) {
  fixture *f = (fixture *)*state;
  int32_t t[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  kvp_seq_id a = add(f->pool, t, 8, 0, NULL);
  assert_kvp_ok(kvp_pool_set_computed(f->pool, a, 8));
  size_t reused = 0;
  kvp_seq_id b = add(f->pool, t, 8, 0, &reused);
  assert_int_equal(reused, 4); /* page 2 would cover the last token, which must be computed */
  kvp_seq_id c = {0};
  assert_kvp_ok(kvp_pool_add_sequence(f->pool, t, 8, 0, KVP_POOL_ADD_FLAG_REUSE_ALL, &c, &reused));
  assert_int_equal(reused, 8);
  int32_t ra[2], rc[2];
  table(f->pool, a, ra, 2);
  table(f->pool, c, rc, 2);
  assert_memory_equal(ra, rc, sizeof ra);
  assert_int_equal(refcount(f->pool, ra[0]), 3);
  assert_int_equal(refcount(f->pool, ra[1]), 2);
  size_t len = 0, comp = 0;
  assert_kvp_ok(kvp_pool_get_sequence_length(f->pool, c, &len, &comp));
  assert_int_equal(len, 8);
  assert_int_equal(comp, 8);
  /* a 3-token prompt never reuses anything; a different salt neither */
  assert_kvp_ok(kvp_pool_add_sequence(f->pool, t, 3, 0, KVP_POOL_ADD_FLAG_REUSE_ALL, &c, &reused));
  assert_int_equal(reused, 0);
  assert_kvp_ok(kvp_pool_add_sequence(f->pool, t, 8, 1, KVP_POOL_ADD_FLAG_REUSE_ALL, &c, &reused));
  assert_int_equal(reused, 0);
  /* a prompt that differs in the first page reuses nothing even if page 2 matches */
  int32_t u[8] = {1, 2, 3, 9, 5, 6, 7, 8};
  assert_kvp_ok(kvp_pool_add_sequence(f->pool, u, 8, 0, KVP_POOL_ADD_FLAG_REUSE_ALL, &c, &reused));
  assert_int_equal(reused, 0);
  (void)b;
}

static void test_pool__only_computed_pages_are_reused(void **state) {
  fixture *f = (fixture *)*state;
  int32_t t[12] = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8};
  size_t reused = 99;
  kvp_seq_id a = add(f->pool, t, 12, 0, &reused);
  /* a's K/V is not written yet: nothing may be reused */
  kvp_seq_id b = add(f->pool, t, 12, 0, &reused);
  assert_int_equal(reused, 0);
  assert_int_equal(stats(f->pool).indexed_pages, 0);
  assert_kvp_ok(kvp_pool_set_computed(f->pool, a, 5)); /* page 0 */
  assert_int_equal(stats(f->pool).indexed_pages, 1);
  kvp_seq_id c = add(f->pool, t, 12, 0, &reused);
  assert_int_equal(reused, 4);
  assert_kvp_ok(kvp_pool_set_computed(f->pool, a, 3)); /* going back is a no-op */
  size_t comp = 0;
  assert_kvp_ok(kvp_pool_get_sequence_length(f->pool, a, NULL, &comp));
  assert_int_equal(comp, 5);
  /* an append declares everything before it computed */
  int32_t nxt = 77;
  assert_kvp_ok(kvp_pool_append(f->pool, a, &nxt, 1, NULL));
  assert_int_equal(stats(f->pool).indexed_pages, 3);
  /* b computed the same pages independently: they are not indexed twice */
  assert_kvp_ok(kvp_pool_set_computed(f->pool, b, 12));
  assert_int_equal(stats(f->pool).indexed_pages, 3);
  int32_t rb[3];
  table(f->pool, b, rb, 3);
  for (int i = 0; i < 3; ++i) assert_false(pflags(f->pool, rb[i]) & KVP_PAGE_FLAG_INDEXED);
  assert_kvp_ok(kvp_pool_free_sequence(f->pool, b)); /* unindexed duplicates go straight to the free list */
  for (int i = 0; i < 3; ++i) assert_int_equal(pflags(f->pool, rb[i]), KVP_PAGE_FLAG_FREE);
  (void)c;
}

static void test_pool__eviction_is_lru_and_only_when_needed(void **state) {
  fixture *f = (fixture *)*state;
  int32_t ta[8] = {1, 1, 1, 1, 2, 2, 2, 2}, tb[8] = {3, 3, 3, 3, 4, 4, 4, 4}, tc[8] = {5, 5, 5, 5, 6, 6, 6, 6};
  int32_t ra[2], rb[2], rc[2];
  kvp_seq_id a = add(f->pool, ta, 8, 0, NULL), b = add(f->pool, tb, 8, 0, NULL), c = add(f->pool, tc, 8, 0, NULL);
  table(f->pool, a, ra, 2);
  table(f->pool, b, rb, 2);
  table(f->pool, c, rc, 2);
  assert_kvp_ok(kvp_pool_set_computed(f->pool, a, 8));
  assert_kvp_ok(kvp_pool_set_computed(f->pool, b, 8));
  assert_kvp_ok(kvp_pool_set_computed(f->pool, c, 8));
  /* release order a, b, c; within a sequence the last page is released first */
  assert_kvp_ok(kvp_pool_free_sequence(f->pool, a));
  assert_kvp_ok(kvp_pool_free_sequence(f->pool, b));
  assert_kvp_ok(kvp_pool_free_sequence(f->pool, c));
  kvp_pool_stats st = stats(f->pool);
  assert_int_equal(st.free_pages, NP - 1 - 6);
  assert_int_equal(st.evictable_pages, 6);
  /* using all free pages evicts nothing */
  int32_t big[MAXLEN];
  for (int i = 0; i < MAXLEN; ++i) big[i] = 1000 + i;
  kvp_seq_id d = add(f->pool, big, 4 * (NP - 1 - 6), 0, NULL);
  assert_int_equal(stats(f->pool).evictions, 0);
  assert_int_equal(stats(f->pool).evictable_pages, 6);
  /* one more page: a's last page goes first */
  assert_kvp_ok(kvp_pool_append(f->pool, d, big, 1, NULL));
  assert_int_equal(stats(f->pool).evictions, 1);
  assert_false(pflags(f->pool, ra[1]) & KVP_PAGE_FLAG_INDEXED);
  assert_true(pflags(f->pool, ra[0]) & KVP_PAGE_FLAG_INDEXED);
  /* reusing b's first page moves it out of the LRU; a's first page is the next victim */
  size_t reused = 0;
  kvp_seq_id e = add(f->pool, tb, 5, 0, &reused);
  assert_int_equal(reused, 4);
  assert_int_equal(refcount(f->pool, rb[0]), 1);
  assert_int_equal(stats(f->pool).evictions, 2); /* e's second page evicted a's first page */
  assert_false(pflags(f->pool, ra[0]) & KVP_PAGE_FLAG_INDEXED);
  assert_true(pflags(f->pool, rb[1]) & KVP_PAGE_FLAG_INDEXED);
  /* release e: b's first page re-enters the LRU as most recent; victims: b1, c1, c0, b0 */
  assert_kvp_ok(kvp_pool_free_sequence(f->pool, e));
  int32_t expect_order[4] = {rb[1], rc[1], rc[0], rb[0]};
  /* e's own second page was not indexed (not computed) so it went back to the free list: use it */
  assert_kvp_ok(kvp_pool_append(f->pool, d, big, 4, NULL)); /* fills the partial page + 1 new: the free one */
  assert_int_equal(stats(f->pool).evictions, 2);
  for (int k = 0; k < 4; ++k) {
    assert_true(pflags(f->pool, expect_order[k]) & KVP_PAGE_FLAG_INDEXED);
    assert_kvp_ok(kvp_pool_append(f->pool, d, big, 4, NULL));
    assert_int_equal(stats(f->pool).evictions, 3 + k);
    assert_false(pflags(f->pool, expect_order[k]) & KVP_PAGE_FLAG_INDEXED);
    for (int j = k + 1; j < 4; ++j) assert_true(pflags(f->pool, expect_order[j]) & KVP_PAGE_FLAG_INDEXED);
  }
  /* nothing left to evict: in-use pages are never taken */
  snapshot before;
  snap(f->pool, &before);
  assert_kvp_status(kvp_pool_append(f->pool, d, big, 4, NULL), KVP_ERR_OUT_OF_PAGES, "0 free, 0 evictable");
  assert_unchanged(f->pool, &before);
}

static void test_pool__truncate_releases_pages_and_unshares_on_write(void **state) {
  fixture *f = (fixture *)*state;
  int32_t t[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
  kvp_seq_id a = add(f->pool, t, 11, 0, NULL);
  int32_t ra[3];
  table(f->pool, a, ra, 3);
  kvp_seq_id kid;
  assert_kvp_ok(kvp_pool_fork(f->pool, a, 1, &kid));
  /* truncate the child into the middle of a shared full page */
  assert_kvp_ok(kvp_pool_truncate(f->pool, kid, 6));
  int32_t rk[3];
  assert_int_equal(table(f->pool, kid, rk, 3), 2);
  assert_int_equal(refcount(f->pool, ra[2]), 1);
  assert_int_equal(refcount(f->pool, ra[1]), 2);
  int32_t x = 99;
  assert_kvp_ok(kvp_pool_append(f->pool, kid, &x, 1, NULL)); /* shared -> copied, not overwritten */
  table(f->pool, kid, rk, 3);
  assert_int_not_equal(rk[1], ra[1]);
  assert_int_equal(refcount(f->pool, ra[1]), 1);
  assert_int_equal(stats(f->pool).cow_copies, 1);
  /* truncating to 0 releases everything but keeps the id valid */
  assert_kvp_ok(kvp_pool_truncate(f->pool, kid, 0));
  size_t n = 9;
  assert_kvp_ok(kvp_pool_get_page_table(f->pool, kid, NULL, 0, &n));
  assert_int_equal(n, 0);
  assert_int_equal(refcount(f->pool, ra[0]), 1);

  /* an indexed page truncated into and written by its only holder leaves the index */
  assert_kvp_ok(kvp_pool_set_computed(f->pool, a, 11));
  assert_true(pflags(f->pool, ra[1]) & KVP_PAGE_FLAG_INDEXED);
  assert_kvp_ok(kvp_pool_truncate(f->pool, a, 6));
  size_t comp = 0;
  assert_kvp_ok(kvp_pool_get_sequence_length(f->pool, a, NULL, &comp));
  assert_int_equal(comp, 6);
  assert_true(pflags(f->pool, ra[1]) & KVP_PAGE_FLAG_INDEXED); /* contents still intact */
  assert_kvp_ok(kvp_pool_append(f->pool, a, &x, 1, NULL));
  assert_false(pflags(f->pool, ra[1]) & KVP_PAGE_FLAG_INDEXED);
  table(f->pool, a, ra, 3);
  size_t reused = 0;
  kvp_seq_id b = add(f->pool, t, 11, 0, &reused);
  assert_int_equal(reused, 4); /* only the first page still matches */
  (void)b;
}

static void test_pool__fork_needs_free_slots(void **state) {
  fixture *f = (fixture *)*state;
  int32_t t[5] = {1, 2, 3, 4, 5};
  kvp_seq_id a = add(f->pool, t, 5, 0, NULL);
  kvp_seq_id kids[8];
  memset(kids, 0xAB, sizeof kids);
  snapshot before;
  snap(f->pool, &before);
  assert_kvp_status(kvp_pool_fork(f->pool, a, 8, kids), KVP_ERR_OUT_OF_PAGES, "only 7 of 8 sequence slots are free");
  assert_unchanged(f->pool, &before);
  for (int i = 0; i < 8; ++i) assert_int_equal(kids[i].id, 0xABABABABu);
  assert_kvp_ok(kvp_pool_fork(f->pool, a, 7, kids));
  assert_int_equal(refcount(f->pool, 1) + refcount(f->pool, 2), 16);
  for (int i = 0; i < 7; ++i) assert_kvp_ok(kvp_pool_free_sequence(f->pool, kids[i]));
  assert_int_equal(refcount(f->pool, 1) + refcount(f->pool, 2), 2);
}

static void test_pool__clear_prefix_cache(void **state) {
  fixture *f = (fixture *)*state;
  int32_t t[9] = {4, 4, 4, 4, 5, 5, 5, 5, 6};
  kvp_seq_id a = add(f->pool, t, 9, 0, NULL), b = add(f->pool, t, 9, 7, NULL);
  assert_kvp_ok(kvp_pool_set_computed(f->pool, a, 9));
  assert_kvp_ok(kvp_pool_set_computed(f->pool, b, 9));
  assert_kvp_ok(kvp_pool_free_sequence(f->pool, a));
  assert_int_equal(stats(f->pool).indexed_pages, 4);
  assert_int_equal(stats(f->pool).evictable_pages, 2);
  assert_kvp_ok(kvp_pool_clear_prefix_cache(f->pool));
  kvp_pool_stats st = stats(f->pool);
  assert_int_equal(st.indexed_pages, 0);
  assert_int_equal(st.evictable_pages, 0);
  assert_int_equal(st.free_pages, NP - 1 - 3);
  size_t reused = 9;
  add(f->pool, t, 9, 0, &reused);
  assert_int_equal(reused, 0);
  add(f->pool, t, 9, 7, &reused);
  assert_int_equal(reused, 0);
}

static void test_pool__no_prefix_cache_option(void **state) {
  (void)state;
  kvp_config cfg = small_config(NP, MAXLEN);
  kvp_cache *c;
  kvp_pool *p;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &c));
  kvp_pool_options o;
  assert_kvp_ok(kvp_pool_options_init(&o, sizeof o));
  o.flags = KVP_POOL_FLAG_NO_PREFIX_CACHE;
  assert_kvp_ok(kvp_pool_create(c, &o, &p));
  int32_t t[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  kvp_seq_id a = add(p, t, 9, 0, NULL);
  assert_kvp_ok(kvp_pool_set_computed(p, a, 9));
  assert_kvp_ok(kvp_pool_free_sequence(p, a));
  kvp_pool_stats st = stats(p);
  assert_int_equal(st.indexed_pages + st.evictable_pages, 0);
  assert_int_equal(st.free_pages, NP - 1);
  size_t reused = 5;
  add(p, t, 9, 0, &reused);
  assert_int_equal(reused, 0);
  /* default max_sequences: the config's get_max_num_seqs() = 131072 / pages_per_req */
  assert_int_equal(st.max_sequences, 131072 / (MAXLEN / PS));
  assert_kvp_ok(kvp_pool_check_invariants(p));
  assert_kvp_ok(kvp_pool_destroy(p));
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void test_pool__options_are_validated(void **state) {
  fixture *f = (fixture *)*state;
  kvp_pool *p = (kvp_pool *)(uintptr_t)0x1;
  kvp_pool_options o = KVP_POOL_OPTIONS_INIT;
  o.struct_size = 8;
  assert_kvp_status(kvp_pool_create(f->cache, &o, &p), KVP_ERR_VERSION_MISMATCH, "struct_size");
  assert_null(p);
  o = (kvp_pool_options)KVP_POOL_OPTIONS_INIT;
  o.abi_version = 0;
  assert_kvp_status(kvp_pool_create(f->cache, &o, &p), KVP_ERR_VERSION_MISMATCH, "abi_version");
  o = (kvp_pool_options)KVP_POOL_OPTIONS_INIT;
  o.flags = 0x80;
  assert_kvp_status(kvp_pool_create(f->cache, &o, &p), KVP_ERR_INVALID_ARGUMENT, "flags 0x80");
  o = (kvp_pool_options)KVP_POOL_OPTIONS_INIT;
  o.max_sequences = 1u << 20;
  assert_kvp_status(kvp_pool_create(f->cache, &o, &p), KVP_ERR_INVALID_ARGUMENT, "max_sequences 1048576");
  struct {
    kvp_pool_options o;
    uint64_t tail;
  } big;
  memset(&big, 0, sizeof big);
  big.o.struct_size = sizeof big;
  big.o.abi_version = KVP_POOL_OPTIONS_VERSION;
  big.tail = 1;
  assert_kvp_status(kvp_pool_create(f->cache, &big.o, &p), KVP_ERR_UNSUPPORTED, "not zero");
  big.tail = 0;
  assert_kvp_ok(kvp_pool_create(f->cache, &big.o, &p));
  assert_kvp_ok(kvp_pool_destroy(p));
  assert_kvp_status(kvp_pool_options_init(NULL, sizeof o), KVP_ERR_INVALID_ARGUMENT, "opts");
  assert_kvp_status(kvp_pool_options_init(&o, 4), KVP_ERR_VERSION_MISMATCH, "struct_size");
  assert_kvp_status(kvp_pool_create(f->cache, NULL, NULL), KVP_ERR_INVALID_ARGUMENT, "out");
  /* a cache with only the null page cannot back a pool */
  kvp_config one = small_config(1, MAXLEN);
  kvp_cache *c1;
  assert_kvp_ok(kvp_cache_create(&one, NULL, &c1));
  assert_kvp_status(kvp_pool_create(c1, NULL, &p), KVP_ERR_INVALID_ARGUMENT, "at least 2");
  assert_kvp_ok(kvp_cache_destroy(c1));
}

static int misuse_calls = 0;
static void KVP_CALL on_misuse(const char *what, void *ud) {
  (void)what;
  (void)ud;
  ++misuse_calls;
}

static void test_pool__bad_handles_are_detected(void **state) {
  fixture *f = (fixture *)*state;
  kvp_seq_id s = {1u << 20};
  int32_t t = 1;
  kvp_set_misuse_handler(on_misuse, NULL);
  misuse_calls = 0;
  assert_kvp_status(kvp_pool_append(NULL, s, &t, 1, NULL), KVP_ERR_INVALID_HANDLE, "NULL handle");
  assert_kvp_status(kvp_pool_check_invariants((const kvp_pool *)(void *)f->cache), KVP_ERR_INVALID_HANDLE, "");
  kvp_pool *tmp = (kvp_pool *)(uintptr_t)0x1;
  assert_kvp_status(kvp_pool_create((kvp_cache *)(void *)f->pool, NULL, &tmp), KVP_ERR_INVALID_HANDLE,
                    "wrong handle kind: got a kvp_pool");
  assert_null(tmp); /* out is reset on failure */
  kvp_pool *p2;
  assert_kvp_ok(kvp_pool_create(f->cache, NULL, &p2));
  assert_kvp_ok(kvp_pool_destroy(p2));
  assert_kvp_status(kvp_pool_destroy(p2), KVP_ERR_INVALID_HANDLE, "kvp_pool_destroy");
  assert_kvp_status(kvp_pool_get_stats(p2, NULL), KVP_ERR_INVALID_HANDLE, "");
  assert_int_equal(misuse_calls, 5);
  kvp_set_misuse_handler(NULL, NULL);
  assert_kvp_ok(kvp_pool_destroy(NULL));
}

static void test_pool__null_handle_every_function(void **state) {
  (void)state;
  kvp_seq_id s = {1u << 20}, out;
  int32_t t = 1, row[2];
  size_t n = 0;
  uint32_t r = 0;
  kvp_batch_request br;
  kvp_pool_stats st;
  st.struct_size = sizeof st;
  assert_kvp_status(kvp_pool_add_sequence(NULL, &t, 1, 0, 0, &out, NULL), KVP_ERR_INVALID_HANDLE, "kvp_pool_add_sequence");
  assert_kvp_status(kvp_pool_append(NULL, s, &t, 1, NULL), KVP_ERR_INVALID_HANDLE, "kvp_pool_append");
  assert_kvp_status(kvp_pool_set_computed(NULL, s, 0), KVP_ERR_INVALID_HANDLE, "kvp_pool_set_computed");
  assert_kvp_status(kvp_pool_truncate(NULL, s, 0), KVP_ERR_INVALID_HANDLE, "kvp_pool_truncate");
  assert_kvp_status(kvp_pool_fork(NULL, s, 1, &out), KVP_ERR_INVALID_HANDLE, "kvp_pool_fork");
  assert_kvp_status(kvp_pool_free_sequence(NULL, s), KVP_ERR_INVALID_HANDLE, "kvp_pool_free_sequence");
  assert_kvp_status(kvp_pool_get_sequence_length(NULL, s, &n, &n), KVP_ERR_INVALID_HANDLE, "kvp_pool_get_sequence_length");
  assert_kvp_status(kvp_pool_get_page_table(NULL, s, row, 2, &n), KVP_ERR_INVALID_HANDLE, "kvp_pool_get_page_table");
  assert_kvp_status(kvp_pool_get_slots(NULL, s, 0, 1, row), KVP_ERR_INVALID_HANDLE, "kvp_pool_get_slots");
  assert_kvp_status(kvp_pool_get_batch_request(NULL, s, &br), KVP_ERR_INVALID_HANDLE, "kvp_pool_get_batch_request");
  assert_kvp_status(kvp_pool_get_page_state(NULL, 0, &r, &r), KVP_ERR_INVALID_HANDLE, "kvp_pool_get_page_state");
  assert_kvp_status(kvp_pool_get_stats(NULL, &st), KVP_ERR_INVALID_HANDLE, "kvp_pool_get_stats");
  assert_kvp_status(kvp_pool_check_invariants(NULL), KVP_ERR_INVALID_HANDLE, "kvp_pool_check_invariants");
  assert_kvp_status(kvp_pool_clear_prefix_cache(NULL), KVP_ERR_INVALID_HANDLE, "kvp_pool_clear_prefix_cache");
  kvp_pool *p = (kvp_pool *)(uintptr_t)0x1;
  assert_kvp_status(kvp_pool_create(NULL, NULL, &p), KVP_ERR_INVALID_HANDLE, "kvp_pool_create");
  assert_null(p);
  /* a successful call clears the message */
  assert_kvp_ok(kvp_pool_destroy(NULL));
  assert_string_equal(kvp_last_error_message(), "");
}

static void test_pool__cache_destroyed_before_pool(void **state) {
  (void)state;
  kvp_config cfg = small_config(NP, MAXLEN);
  kvp_cache *c;
  kvp_pool *p;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &c));
  assert_kvp_ok(kvp_pool_create(c, NULL, &p));
  int32_t t[3] = {1, 2, 3};
  kvp_seq_id s = add(p, t, 3, 0, NULL);
  assert_kvp_ok(kvp_cache_destroy(c));
  assert_kvp_status(kvp_pool_append(p, s, t, 1, NULL), KVP_ERR_INVALID_HANDLE, "kvp_pool_append");
  size_t len = 0;
  assert_kvp_ok(kvp_pool_get_sequence_length(p, s, &len, NULL));
  assert_int_equal(len, 3);
  assert_kvp_ok(kvp_pool_destroy(p)); /* allowed: never touches the cache */
}

static void test_pool__out_of_memory_leaks_nothing(void **state) {
  fixture *f = (fixture *)*state;
  kvp_test_alloc_state as;
  kvp_host_allocator a = kvp_test_allocator(&as);
  kvp_pool_options o = KVP_POOL_OPTIONS_INIT;
  o.allocator = &a;
  long n;
  for (n = 0; n < 10; ++n) {
    memset(&as, 0, sizeof as);
    as.fail_after = n;
    kvp_pool *p = (kvp_pool *)(uintptr_t)0x1;
    kvp_status st = kvp_pool_create(f->cache, &o, &p);
    if (st == KVP_OK) {
      int32_t t[6] = {1, 2, 3, 4, 5, 6};
      kvp_seq_id s = add(p, t, 6, 0, NULL);
      assert_kvp_ok(kvp_pool_append(p, s, t, 6, NULL));
      assert_kvp_ok(kvp_pool_check_invariants(p));
      assert_kvp_ok(kvp_pool_destroy(p));
      assert_int_equal(as.live, 0);
      break;
    }
    assert_int_equal(st, KVP_ERR_OUT_OF_MEMORY);
    assert_null(p);
    assert_int_equal(as.live, 0);
  }
  assert_true(n >= 2); /* the pool object and its arrays each come from the allocator */
  assert_true(n < 10);
}

static void test_pool__copy_pages_copies_all_layers(void **state) {
  fixture *f = (fixture *)*state;
  for (int32_t p = 0; p < NP; ++p) fill_page(f->cache, p, (uint8_t)(p * 17));
  size_t nb;
  page_bytes(f->cache, 0, 0, &nb);
  const size_t layer_bytes = nb * NP;
  uint8_t *before = (uint8_t *)test_malloc(layer_bytes * LAYERS);
  for (uint32_t l = 0; l < LAYERS; ++l) memcpy(before + l * layer_bytes, page_bytes(f->cache, l, 0, &nb), layer_bytes);
  /* a run (3,4,5 -> 9,10,11) and a single page (1 -> 14) */
  const int32_t src[4] = {3, 4, 5, 1}, dst[4] = {9, 10, 11, 14};
  assert_kvp_ok(kvp_cache_copy_pages(f->cache, src, dst, 4, NULL));
  for (uint32_t l = 0; l < LAYERS; ++l) {
    for (int32_t p = 0; p < NP; ++p) {
      int32_t from = p;
      for (int i = 0; i < 4; ++i)
        if (dst[i] == p) from = src[i];
      assert_memory_equal(page_bytes(f->cache, l, p, &nb), before + l * layer_bytes + (size_t)from * nb, nb);
    }
  }
  for (uint32_t l = 0; l < LAYERS; ++l) memcpy(before + l * layer_bytes, page_bytes(f->cache, l, 0, &nb), layer_bytes);
  const int32_t oob[1] = {NP}, neg[1] = {-1}, one[1] = {2}, dup_d[2] = {6, 6}, two_s[2] = {1, 2}, srcdst[2] = {2, 7};
  assert_kvp_status(kvp_cache_copy_pages(f->cache, oob, one, 1, NULL), KVP_ERR_INVALID_ARGUMENT, "src_pages[0] = 16");
  assert_kvp_status(kvp_cache_copy_pages(f->cache, one, neg, 1, NULL), KVP_ERR_INVALID_ARGUMENT, "dst_pages[0] = -1");
  assert_kvp_status(kvp_cache_copy_pages(f->cache, two_s, dup_d, 2, NULL), KVP_ERR_INVALID_ARGUMENT, "page 6 appears twice");
  assert_kvp_status(kvp_cache_copy_pages(f->cache, two_s, srcdst, 2, NULL), KVP_ERR_INVALID_ARGUMENT,
                    "page 2 is both a source and a destination");
  assert_kvp_status(kvp_cache_copy_pages(f->cache, one, one, 1, NULL), KVP_ERR_INVALID_ARGUMENT, "both a source");
  assert_kvp_status(kvp_cache_copy_pages(f->cache, NULL, one, 1, NULL), KVP_ERR_INVALID_ARGUMENT, "src_pages");
  assert_kvp_status(kvp_cache_copy_pages(f->cache, one, NULL, 1, NULL), KVP_ERR_INVALID_ARGUMENT, "dst_pages");
  assert_kvp_status(kvp_cache_copy_pages(NULL, one, one, 1, NULL), KVP_ERR_INVALID_HANDLE, "");
  assert_kvp_ok(kvp_cache_copy_pages(f->cache, NULL, NULL, 0, NULL));
  for (uint32_t l = 0; l < LAYERS; ++l)
    assert_memory_equal(page_bytes(f->cache, l, 0, &nb), before + l * layer_bytes, layer_bytes);
  test_free(before);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_pool__create_reports_geometry, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pool__append_across_page_boundaries, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pool__null_page_is_never_handed_out, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pool__out_of_pages_changes_nothing, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pool__max_model_length_is_enforced, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pool__stale_and_unknown_ids_are_rejected, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pool__argument_errors_change_nothing, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pool__fork_and_copy_on_write_keep_every_child_correct, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pool__prefix_reuse_gives_same_bytes_as_recomputing, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pool__reuse_leaves_one_token_unless_reuse_all, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pool__only_computed_pages_are_reused, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pool__eviction_is_lru_and_only_when_needed, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pool__truncate_releases_pages_and_unshares_on_write, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pool__fork_needs_free_slots, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pool__clear_prefix_cache, setup, teardown),
      cmocka_unit_test(test_pool__no_prefix_cache_option),
      cmocka_unit_test_setup_teardown(test_pool__options_are_validated, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pool__bad_handles_are_detected, setup, teardown),
      cmocka_unit_test(test_pool__null_handle_every_function),
      cmocka_unit_test(test_pool__cache_destroyed_before_pool),
      cmocka_unit_test_setup_teardown(test_pool__out_of_memory_leaks_nothing, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pool__copy_pages_copies_all_layers, setup, teardown),
  };
  return cmocka_run_group_tests_name("pool", tests, NULL, NULL);
}
