/* Randomized model-based test of kvpages/pool.h: thousands of random operations (add with prefix
 * reuse, append, set_computed, truncate, fork, free, stale ids, clear, eviction under pressure)
 * run against the pool and against a simple reference model written here. After every
 * operation: the status matches the model's prediction, kvp_pool_check_invariants() passes, every
 * page's reference count and state, every sequence's page table, length and watermark, and the
 * pool's counters equal the model's, and every live sequence's K/V (a tag per token written
 * into the cache when the token was added) is intact.
 *
 * The model knows nothing of hashes or links: its prefix index maps (salt, whole token prefix)
 * to a page, its free set is a set, and its LRU is an array in release order. It predicts which
 * pages are reused, when an eviction happens and exactly which page it takes. */
#include "support.h"

#include <stdio.h>
#include <stdlib.h>

#include "kvpages/pool.h"

#define MAXP 64
#define MAXL 64
#define MAXS 12

typedef struct mseq {
  int alive;
  kvp_seq_id id;
  int32_t tok[MAXL];
  size_t len, computed;
  uint64_t salt;
  int32_t pages[MAXL];
} mseq;

typedef struct model {
  int P, S, maxlen, prefix;
  uint32_t ref[MAXP];
  int indexed[MAXP];
  uint64_t isalt[MAXP];
  int iplen[MAXP];
  int32_t itok[MAXP][MAXL];
  int lru[MAXP], nlru;
  int isfree[MAXP], nfree;
  mseq seq[MAXS];
  int64_t evictions, cow, prompt_tokens, reused_tokens;
  /* pool side */
  kvp_cache *cache;
  kvp_pool *pool;
  float *kbase;
  int64_t page_stride, row_stride;
  /* recent prompts for prefix hits, and freed ids for stale checks */
  int32_t hist[8][MAXL];
  size_t hist_len[8];
  int nhist;
  kvp_seq_id stale[8];
  int nstale;
  uint64_t rng;
  long ops[10];
} model;

static int live_count(const model *m) {
  int n = 0;
  for (int i = 0; i < MAXS; ++i) n += m->seq[i].alive;
  return n;
}

static int cdiv(size_t a, int b) { return (int)((a + (size_t)b - 1) / (size_t)b); }

static uint32_t tag_of(const int32_t *tok, size_t pos, uint64_t salt) {
  uint32_t h = 2166136261u ^ (uint32_t)salt;
  for (size_t i = 0; i <= pos; ++i) h = (h ^ (uint32_t)tok[i]) * 16777619u;
  return h % 1000000u + 1u;
}

/* ---- model page bookkeeping ---------------------------------------------------------------- */

static void lru_erase(model *m, int p) {
  for (int i = 0; i < m->nlru; ++i)
    if (m->lru[i] == p) {
      memmove(&m->lru[i], &m->lru[i + 1], sizeof(int) * (size_t)(m->nlru - i - 1));
      --m->nlru;
      return;
    }
  fail_msg("model: page %d not in LRU", p);
}

/* The pool handed out page p for a fresh allocation: it must be free, or (no free page left)
 * the least recently released cached page. */
static void m_take(model *m, int32_t p) {
  assert_in_range(p, 1, m->P - 1);
  if (m->nfree > 0) {
    if (!m->isfree[p]) fail_msg("pool allocated page %d which the model has not free (%d free)", p, m->nfree);
    m->isfree[p] = 0;
    --m->nfree;
  } else {
    if (m->nlru == 0 || m->lru[0] != p)
      fail_msg("pool evicted page %d, model expected LRU head %d", p, m->nlru ? m->lru[0] : -1);
    lru_erase(m, p);
    m->indexed[p] = 0;
    ++m->evictions;
  }
  assert_int_equal(m->ref[p], 0);
  m->ref[p] = 1;
}

static void m_acquire(model *m, int p) {
  if (m->ref[p] == 0) lru_erase(m, p);
  ++m->ref[p];
}

static void m_release(model *m, int p) {
  assert_true(m->ref[p] > 0);
  if (--m->ref[p] > 0) return;
  if (m->indexed[p]) m->lru[m->nlru++] = p;
  else {
    m->isfree[p] = 1;
    ++m->nfree;
  }
}

static int m_find(const model *m, uint64_t salt, const int32_t *tok, int plen) {
  for (int p = 1; p < m->P; ++p)
    if (m->indexed[p] && m->isalt[p] == salt && m->iplen[p] == plen &&
        memcmp(m->itok[p], tok, sizeof(int32_t) * (size_t)plen) == 0)
      return p;
  return -1;
}

static void m_mark_computed(model *m, mseq *s, size_t n) {
  if (n <= s->computed) return;
  if (!m->prefix) {
    s->computed = n;
    return;
  }
  for (size_t i = s->computed / (size_t)m->S; i < n / (size_t)m->S; ++i) {
    const int p = s->pages[i];
    const int plen = (int)(i + 1) * m->S;
    if (!m->indexed[p] && m_find(m, s->salt, s->tok, plen) < 0) {
      m->indexed[p] = 1;
      m->isalt[p] = s->salt;
      m->iplen[p] = plen;
      memcpy(m->itok[p], s->tok, sizeof(int32_t) * (size_t)plen);
    }
  }
  s->computed = n;
}

/* ---- K/V tags in the cache ----------------------------------------------------------------- */

static float *slot_ptr(model *m, int32_t slot) {
  return m->kbase + (slot / m->S) * m->page_stride + (slot % m->S) * m->row_stride;
}

static void write_tags(model *m, const mseq *s, size_t from, size_t to) {
  int32_t slots[MAXL];
  if (to <= from) return;
  assert_kvp_ok(kvp_pool_get_slots(m->pool, s->id, from, to - from, slots));
  for (size_t i = from; i < to; ++i) *slot_ptr(m, slots[i - from]) = (float)tag_of(s->tok, i, s->salt);
}

/* ---- full comparison ----------------------------------------------------------------------- */

static void compare(model *m, long op) {
  kvp_status st = kvp_pool_check_invariants(m->pool);
  if (st != KVP_OK) fail_msg("op %ld: invariants: %s", op, kvp_last_error_message());
  int64_t used = 0, indexed = 0;
  for (int p = 0; p < m->P; ++p) {
    uint32_t ref = 0, fl = 0;
    assert_kvp_ok(kvp_pool_get_page_state(m->pool, p, &ref, &fl));
    uint32_t want = p == 0 ? KVP_PAGE_FLAG_NULL : 0;
    if (p > 0 && m->isfree[p]) want |= KVP_PAGE_FLAG_FREE;
    if (p > 0 && m->indexed[p]) want |= KVP_PAGE_FLAG_INDEXED;
    if (ref != m->ref[p] || fl != want)
      fail_msg("op %ld: page %d: pool ref %u flags %u, model ref %u flags %u", op, p, ref, fl, m->ref[p], want);
    used += m->ref[p] > 0;
    indexed += m->indexed[p];
  }
  kvp_pool_stats ps;
  ps.struct_size = sizeof ps;
  assert_kvp_ok(kvp_pool_get_stats(m->pool, &ps));
  assert_int_equal(ps.free_pages, m->nfree);
  assert_int_equal(ps.evictable_pages, m->nlru);
  assert_int_equal(ps.used_pages, used);
  assert_int_equal(ps.indexed_pages, indexed);
  assert_int_equal(ps.num_sequences, live_count(m));
  assert_int_equal(ps.evictions, m->evictions);
  assert_int_equal(ps.cow_copies, m->cow);
  assert_int_equal(ps.prompt_tokens, m->prompt_tokens);
  assert_int_equal(ps.reused_tokens, m->reused_tokens);
  for (int i = 0; i < MAXS; ++i) {
    const mseq *s = &m->seq[i];
    if (!s->alive) continue;
    size_t len = 0, comp = 0, n = 0;
    int32_t row[MAXL], slots[MAXL];
    assert_kvp_ok(kvp_pool_get_sequence_length(m->pool, s->id, &len, &comp));
    assert_int_equal(len, s->len);
    assert_int_equal(comp, s->computed);
    assert_kvp_ok(kvp_pool_get_page_table(m->pool, s->id, row, MAXL, &n));
    assert_int_equal(n, cdiv(s->len, m->S));
    if (n > 0 && memcmp(row, s->pages, n * sizeof(int32_t)) != 0) fail_msg("op %ld: page table of seq %d differs", op, i);
    assert_kvp_ok(kvp_pool_get_slots(m->pool, s->id, 0, s->len, slots));
    for (size_t pos = 0; pos < s->len; ++pos) {
      const float got = *slot_ptr(m, slots[pos]);
      if (got != (float)tag_of(s->tok, pos, s->salt))
        fail_msg("op %ld: seq %d position %zu (slot %d) holds tag %.0f, want %u", op, i, pos, slots[pos], (double)got,
                 tag_of(s->tok, pos, s->salt));
    }
  }
}

/* ---- operations ---------------------------------------------------------------------------- */

static int pick_live(model *m) {
  int n = live_count(m);
  if (n == 0) return -1;
  int k = (int)kvp_test_rand_range(&m->rng, 0, n - 1);
  for (int i = 0; i < MAXS; ++i)
    if (m->seq[i].alive && k-- == 0) return i;
  return -1;
}

static int free_model_slot(const model *m) {
  for (int i = 0; i < MAXS; ++i)
    if (!m->seq[i].alive) return i;
  return -1;
}

static void random_tokens(model *m, int32_t *t, size_t n) {
  for (size_t i = 0; i < n; ++i) t[i] = (int32_t)kvp_test_rand_range(&m->rng, 0, 2);
}

static void op_add(model *m) {
  int32_t tok[MAXL + 4];
  size_t n = (size_t)kvp_test_rand_range(&m->rng, 0, m->maxlen / 2);
  if (kvp_test_rand_range(&m->rng, 0, 40) == 0) n = (size_t)m->maxlen + 1; /* too long */
  random_tokens(m, tok, n > MAXL ? MAXL + 1 : n);
  if (m->nhist > 0 && kvp_test_rand_range(&m->rng, 0, 2) > 0) {
    /* a prompt sharing a prefix with an earlier one */
    const int h = (int)kvp_test_rand_range(&m->rng, 0, m->nhist - 1);
    size_t keep = (size_t)kvp_test_rand_range(&m->rng, 0, (int64_t)m->hist_len[h]);
    if (keep > n) keep = n;
    memcpy(tok, m->hist[h], sizeof(int32_t) * keep);
  }
  const uint64_t salt = (uint64_t)kvp_test_rand_range(&m->rng, 0, 3) == 0 ? 1 : 0;
  const uint32_t flags = kvp_test_rand_range(&m->rng, 0, 3) == 0 ? KVP_POOL_ADD_FLAG_REUSE_ALL : 0;
  const int slot = free_model_slot(m);

  kvp_status want = KVP_OK;
  int hits = 0, hit_pages[MAXL], hit_evictable = 0;
  if (n > (size_t)m->maxlen) want = KVP_ERR_INVALID_ARGUMENT;
  else if (slot < 0) want = KVP_ERR_OUT_OF_PAGES;
  else {
    if (n > 0 && m->prefix) {
      const int max_hits = (int)((flags & KVP_POOL_ADD_FLAG_REUSE_ALL) ? n / (size_t)m->S : (n - 1) / (size_t)m->S);
      while (hits < max_hits) {
        const int p = m_find(m, salt, tok, (hits + 1) * m->S);
        if (p < 0) break;
        hit_pages[hits++] = p;
        hit_evictable += m->ref[p] == 0;
      }
    }
    if (cdiv(n, m->S) - hits > m->nfree + m->nlru - hit_evictable) want = KVP_ERR_OUT_OF_PAGES;
  }
  kvp_seq_id id = {0};
  size_t reused = 12345;
  kvp_status st = kvp_pool_add_sequence(m->pool, tok, n, salt, flags, &id, &reused);
  if (st != want) fail_msg("add(n=%zu): got %s, model says %s: %s", n, kvp_status_name(st), kvp_status_name(want),
                           kvp_last_error_message());
  if (st != KVP_OK) {
    assert_int_equal(reused, 12345);
    return;
  }
  assert_int_equal(reused, (size_t)hits * (size_t)m->S);
  mseq *s = &m->seq[slot];
  memset(s, 0, sizeof *s);
  s->alive = 1;
  s->id = id;
  s->len = n;
  s->computed = reused;
  s->salt = salt;
  memcpy(s->tok, tok, sizeof(int32_t) * n);
  size_t np = 0;
  assert_kvp_ok(kvp_pool_get_page_table(m->pool, id, s->pages, MAXL, &np));
  assert_int_equal(np, cdiv(n, m->S));
  for (int i = 0; i < hits; ++i) {
    assert_int_equal(s->pages[i], hit_pages[i]);
    m_acquire(m, hit_pages[i]);
  }
  for (size_t i = (size_t)hits; i < np; ++i) m_take(m, s->pages[i]);
  m->prompt_tokens += (int64_t)n;
  m->reused_tokens += (int64_t)reused;
  write_tags(m, s, reused, n); /* the runtime computes the tokens that were not reused */
  if (n > 0) {
    const int h = m->nhist < 8 ? m->nhist++ : (int)kvp_test_rand_range(&m->rng, 0, 7);
    memcpy(m->hist[h], tok, sizeof(int32_t) * n);
    m->hist_len[h] = n;
  }
}

static void op_append(model *m) {
  const int i = pick_live(m);
  if (i < 0) return;
  mseq *s = &m->seq[i];
  size_t k = (size_t)kvp_test_rand_range(&m->rng, 0, 6);
  if (kvp_test_rand_range(&m->rng, 0, 30) == 0) k = (size_t)m->maxlen; /* overflow */
  int32_t tok[MAXL];
  random_tokens(m, tok, k > MAXL ? MAXL : k);
  const size_t L = s->len;
  kvp_status want = KVP_OK;
  int cow = 0;
  if (L + k > (size_t)m->maxlen) want = KVP_ERR_INVALID_ARGUMENT;
  else {
    const int partial = (L % (size_t)m->S) != 0 && k > 0;
    cow = partial && m->ref[s->pages[L / (size_t)m->S]] > 1;
    if (cdiv(L + k, m->S) - cdiv(L, m->S) + cow > m->nfree + m->nlru) want = KVP_ERR_OUT_OF_PAGES;
  }
  kvp_status st = kvp_pool_append(m->pool, s->id, tok, k, NULL);
  if (st != want) fail_msg("append(len %zu + %zu): got %s, model says %s: %s", L, k, kvp_status_name(st),
                           kvp_status_name(want), kvp_last_error_message());
  if (st != KVP_OK) return;
  int32_t row[MAXL];
  size_t np = 0;
  assert_kvp_ok(kvp_pool_get_page_table(m->pool, s->id, row, MAXL, &np));
  assert_int_equal(np, cdiv(L + k, m->S));
  const size_t ti = L / (size_t)m->S;
  if (cow) {
    assert_int_not_equal(row[ti], s->pages[ti]);
    m_take(m, row[ti]);
    m_release(m, s->pages[ti]);
    s->pages[ti] = row[ti];
    ++m->cow;
  }
  m_mark_computed(m, s, L);
  if ((L % (size_t)m->S) != 0 && k > 0 && !cow) m->indexed[s->pages[ti]] = 0; /* written in place */
  for (size_t j = 0; j < (size_t)cdiv(L, m->S); ++j) assert_int_equal(row[j], s->pages[j]);
  for (size_t j = (size_t)cdiv(L, m->S); j < np; ++j) {
    m_take(m, row[j]);
    s->pages[j] = row[j];
  }
  memcpy(s->tok + L, tok, sizeof(int32_t) * k);
  s->len = L + k;
  write_tags(m, s, L, L + k);
}

static void op_set_computed(model *m) {
  const int i = pick_live(m);
  if (i < 0) return;
  mseq *s = &m->seq[i];
  const size_t n = (size_t)kvp_test_rand_range(&m->rng, 0, (int64_t)s->len + 1);
  const kvp_status want = n > s->len ? KVP_ERR_INVALID_ARGUMENT : KVP_OK;
  kvp_status st = kvp_pool_set_computed(m->pool, s->id, n);
  assert_int_equal(st, want);
  if (st == KVP_OK) m_mark_computed(m, s, n);
}

static void op_truncate(model *m) {
  const int i = pick_live(m);
  if (i < 0) return;
  mseq *s = &m->seq[i];
  const size_t n = (size_t)kvp_test_rand_range(&m->rng, 0, (int64_t)s->len + 1);
  const kvp_status want = n > s->len ? KVP_ERR_INVALID_ARGUMENT : KVP_OK;
  kvp_status st = kvp_pool_truncate(m->pool, s->id, n);
  assert_int_equal(st, want);
  if (st != KVP_OK) return;
  for (int j = cdiv(s->len, m->S); j > cdiv(n, m->S); --j) m_release(m, s->pages[j - 1]);
  s->len = n;
  if (s->computed > n) s->computed = n;
}

static void op_fork(model *m) {
  const int i = pick_live(m);
  if (i < 0) return;
  const uint32_t k = (uint32_t)kvp_test_rand_range(&m->rng, 0, 3);
  const int free_slots = MAXS - live_count(m);
  const kvp_status want = (int)k > free_slots ? KVP_ERR_OUT_OF_PAGES : KVP_OK;
  kvp_seq_id kids[4];
  kvp_status st = kvp_pool_fork(m->pool, m->seq[i].id, k, kids);
  assert_int_equal(st, want);
  if (st != KVP_OK) return;
  for (uint32_t c = 0; c < k; ++c) {
    const int slot = free_model_slot(m);
    m->seq[slot] = m->seq[i];
    m->seq[slot].id = kids[c];
    for (int j = 0; j < cdiv(m->seq[i].len, m->S); ++j) m_acquire(m, m->seq[i].pages[j]);
  }
}

static void op_free(model *m) {
  const int i = pick_live(m);
  if (i < 0) return;
  mseq *s = &m->seq[i];
  assert_kvp_ok(kvp_pool_free_sequence(m->pool, s->id));
  for (int j = cdiv(s->len, m->S); j > 0; --j) m_release(m, s->pages[j - 1]);
  s->alive = 0;
  m->stale[m->nstale < 8 ? m->nstale++ : (int)kvp_test_rand_range(&m->rng, 0, 7)] = s->id;
}

static void op_stale(model *m) {
  if (m->nstale == 0) return;
  const kvp_seq_id id = m->stale[kvp_test_rand_range(&m->rng, 0, m->nstale - 1)];
  for (int i = 0; i < MAXS; ++i)
    if (m->seq[i].alive && m->seq[i].id.id == id.id) fail_msg("a freed id 0x%08x was handed out again", id.id);
  int32_t t = 1;
  assert_int_equal(kvp_pool_append(m->pool, id, &t, 1, NULL), KVP_ERR_NOT_FOUND);
  assert_int_equal(kvp_pool_free_sequence(m->pool, id), KVP_ERR_NOT_FOUND);
}

static void op_clear(model *m) {
  assert_kvp_ok(kvp_pool_clear_prefix_cache(m->pool));
  for (int p = 1; p < m->P; ++p) m->indexed[p] = 0;
  for (int i = 0; i < m->nlru; ++i) {
    m->isfree[m->lru[i]] = 1;
    ++m->nfree;
  }
  m->nlru = 0;
}

static void run_model(int S, int P, int maxlen, uint64_t seed, long num_ops, int prefix) {
  model *m = (model *)test_calloc(1, sizeof *m);
  m->prefix = prefix;
  m->S = S;
  m->P = P;
  m->maxlen = maxlen;
  m->rng = seed;
  assert_true(P <= MAXP && maxlen <= MAXL);
  kvp_config cfg = kvp_test_config(1, 1, 128, S, P, KVP_DTYPE_F32, KVP_LAYOUT_V3);
  cfg.max_model_length = maxlen;
  cfg.max_num_pages_per_req = (maxlen + S - 1) / S;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &m->cache));
  kvp_pool_options o = KVP_POOL_OPTIONS_INIT;
  o.max_sequences = MAXS;
  o.flags = prefix ? 0 : KVP_POOL_FLAG_NO_PREFIX_CACHE;
  assert_kvp_ok(kvp_pool_create(m->cache, &o, &m->pool));
  kvp_tensor kt;
  assert_kvp_ok(kvp_cache_get_view(m->cache, 0, KVP_VIEW_KEYS, &kt));
  m->kbase = (float *)kt.data;
  m->page_stride = kt.strides[0];
  m->row_stride = kt.strides[1];
  m->isfree[0] = 0;
  for (int p = 1; p < P; ++p) m->isfree[p] = 1;
  m->nfree = P - 1;
  for (long op = 0; op < num_ops; ++op) {
    const int64_t r = kvp_test_rand_range(&m->rng, 0, 99);
    int kind;
    if (r < 22) kind = 0;
    else if (r < 52) kind = 1;
    else if (r < 60) kind = 2;
    else if (r < 68) kind = 3;
    else if (r < 76) kind = 4;
    else if (r < 95) kind = 5;
    else if (r < 99) kind = 6;
    else kind = 7;
    switch (kind) {
      case 0: op_add(m); break;
      case 1: op_append(m); break;
      case 2: op_set_computed(m); break;
      case 3: op_truncate(m); break;
      case 4: op_fork(m); break;
      case 5: op_free(m); break;
      case 6: op_stale(m); break;
      default:
        if (kvp_test_rand_range(&m->rng, 0, 4) == 0) op_clear(m);
        break;
    }
    ++m->ops[kind];
    compare(m, op);
  }
  /* the run must have exercised what it claims to */
  printf("# S=%d P=%d: %ld ops, %lld evictions, %lld copy-on-writes, %lld of %lld prompt tokens reused\n", S, P,
         num_ops, (long long)m->evictions, (long long)m->cow, (long long)m->reused_tokens,
         (long long)m->prompt_tokens);
  assert_true(m->cow > 10);
  if (prefix) {
    assert_true(m->evictions > 10);
    assert_true(m->reused_tokens > 100);
  } else {
    assert_int_equal(m->evictions + m->reused_tokens, 0);
  }
  while (live_count(m) > 0) op_free(m);
  compare(m, num_ops);
  kvp_pool_stats ps;
  ps.struct_size = sizeof ps;
  assert_kvp_ok(kvp_pool_get_stats(m->pool, &ps));
  assert_int_equal(ps.used_pages, 0);
  assert_int_equal(ps.free_pages + ps.evictable_pages, P - 1);
  assert_kvp_ok(kvp_pool_destroy(m->pool));
  assert_kvp_ok(kvp_cache_destroy(m->cache));
  test_free(m);
}

static void test_pool_model__page4_random_ops(void **state) {
  (void)state;
  run_model(4, 24, 48, 0x9E3779B97F4A7C15ull, 20000, 1);
}

static void test_pool_model__page2_random_ops(void **state) {
  (void)state;
  run_model(2, 32, 40, 0xD1B54A32D192ED03ull, 20000, 1);
}

static void test_pool_model__page8_random_ops(void **state) {
  (void)state;
  run_model(8, 12, 64, 0x2545F4914F6CDD1Dull, 20000, 1);
}

static void test_pool_model__no_prefix_cache_random_ops(void **state) {
  (void)state;
  run_model(4, 20, 48, 0x8CB92BA72F3D8DD7ull, 10000, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pool_model__page4_random_ops),
      cmocka_unit_test(test_pool_model__page2_random_ops),
      cmocka_unit_test(test_pool_model__page8_random_ops),
      cmocka_unit_test(test_pool_model__no_prefix_cache_random_ops),
  };
  return cmocka_run_group_tests_name("pool_model", tests, NULL, NULL);
}
