/* Unit tests of data-parallel page shards (SPEC.md §7.3) in kvpages/pool.h and the batch
 * builder: placement of new sequences (most free pages, longest cached prefix, forced), prefix
 * matching that stays within a shard, eviction within a shard, fork and copy-on-write within a
 * shard, the per-shard queries, every error (status, message, nothing changed), a random walk
 * with dp = 2 and 4 checking every page table against its shard after each operation, and the
 * builder's per-shard row blocks (exact arrays of a worked example, errors), and K/V written
 * through those blocks by kvp_concatenate landing in every sequence's own pages. */
#include "support.h"

#include <stdio.h>
#include <stdlib.h>

#include "kvpages/metadata.h"
#include "kvpages/ops.h"
#include "kvpages/pool.h"

#define PS 4      /* page size */
#define NP 16     /* pages including the null page */
#define MAXLEN 16 /* 4 pages per sequence at most */

typedef struct fixture {
  kvp_config cfg;
  kvp_cache *cache;
  kvp_pool *pool;
} fixture;

static kvp_config shard_config(int64_t num_pages, int64_t dp, kvp_layout layout) {
  kvp_config cfg = kvp_test_config_len(1, 2, 128, PS, num_pages, KVP_DTYPE_F32, layout, MAXLEN);
  cfg.data_parallel_size = dp;
  return cfg;
}

static fixture *make(int64_t num_pages, int64_t dp) {
  fixture *f = (fixture *)test_calloc(1, sizeof *f);
  f->cfg = shard_config(num_pages, dp, KVP_LAYOUT_V3);
  assert_kvp_ok(kvp_cache_create(&f->cfg, NULL, &f->cache));
  kvp_pool_options o = KVP_POOL_OPTIONS_INIT;
  o.max_sequences = 16;
  assert_kvp_ok(kvp_pool_create(f->cache, &o, &f->pool));
  return f;
}

static void release(fixture *f) {
  assert_kvp_ok(kvp_pool_check_invariants(f->pool));
  assert_kvp_ok(kvp_pool_destroy(f->pool));
  assert_kvp_ok(kvp_cache_destroy(f->cache));
  test_free(f);
}

static kvp_seq_id add_flags(fixture *f, const int32_t *tok, size_t n, uint32_t flags, size_t *reused) {
  kvp_seq_id s = {0};
  assert_kvp_ok(kvp_pool_add_sequence(f->pool, tok, n, 0, flags, &s, reused));
  return s;
}

static uint32_t shard_of_seq(fixture *f, kvp_seq_id s) {
  uint32_t sh = 99;
  assert_kvp_ok(kvp_pool_get_sequence_shard(f->pool, s, &sh));
  return sh;
}

static kvp_pool_shard_stats shard_stats(fixture *f, uint32_t shard) {
  kvp_pool_shard_stats st = KVP_POOL_SHARD_STATS_INIT;
  assert_kvp_ok(kvp_pool_get_shard_stats(f->pool, shard, &st));
  return st;
}

/* Every page of `s` lies in its shard's range; returns the page count. */
static size_t assert_pages_in_shard(fixture *f, kvp_seq_id s) {
  const kvp_pool_shard_stats st = shard_stats(f, shard_of_seq(f, s));
  int32_t pages[MAXLEN / PS];
  size_t n = 0;
  assert_kvp_ok(kvp_pool_get_page_table(f->pool, s, pages, MAXLEN / PS, &n));
  for (size_t i = 0; i < n; ++i)
    if (pages[i] < st.first_page || pages[i] >= st.end_page)
      fail_msg("page %d of a sequence in shard [%d, %d)", pages[i], st.first_page, st.end_page);
  return n;
}

static void fill_tokens(int32_t *tok, size_t n, int32_t base) {
  for (size_t i = 0; i < n; ++i) tok[i] = base + (int32_t)i;
}

/* The state the error tests prove unchanged: pool stats, every shard's stats, every page state. */
typedef struct snapshot {
  kvp_pool_stats st;
  kvp_pool_shard_stats sh[4];
  uint32_t ref[2 * NP], flags[2 * NP]; /* the walk's pool has 2 * NP pages */
} snapshot;

static snapshot snap(fixture *f) {
  snapshot s;
  memset(&s, 0, sizeof s);
  s.st.struct_size = sizeof s.st;
  assert_kvp_ok(kvp_pool_get_stats(f->pool, &s.st));
  for (uint32_t d = 0; d < (uint32_t)f->cfg.data_parallel_size; ++d) s.sh[d] = shard_stats(f, d);
  for (int32_t p = 0; p < (int32_t)f->cfg.num_pages; ++p) assert_kvp_ok(kvp_pool_get_page_state(f->pool, p, &s.ref[p], &s.flags[p]));
  return s;
}

static void assert_unchanged(fixture *f, const snapshot *before) {
  const snapshot now = snap(f);
  assert_memory_equal(&now, before, sizeof now);
  assert_kvp_ok(kvp_pool_check_invariants(f->pool));
}

/* ---- shard ranges and placement ------------------------------------------------------------ */

static void test_pool_shards__ranges(void **state) {
  (void)state;
  fixture *f = make(NP, 4);
  const int32_t first[4] = {1, 4, 8, 12}, end[4] = {4, 8, 12, 16};
  for (uint32_t d = 0; d < 4; ++d) {
    const kvp_pool_shard_stats st = shard_stats(f, d);
    assert_int_equal(st.num_shards, 4);
    assert_int_equal(st.first_page, first[d]);
    assert_int_equal(st.end_page, end[d]);
    assert_int_equal(st.total_pages, end[d] - first[d]);
    assert_int_equal(st.free_pages, st.total_pages);
    assert_int_equal(st.used_pages + st.evictable_pages + st.num_sequences, 0);
  }
  kvp_pool_stats all = KVP_POOL_STATS_INIT;
  assert_kvp_ok(kvp_pool_get_stats(f->pool, &all));
  assert_int_equal(all.total_pages, NP - 1);
  release(f);

  /* dp = 1: one shard of every page */
  f = make(NP, 1);
  const kvp_pool_shard_stats st = shard_stats(f, 0);
  assert_int_equal(st.num_shards, 1);
  assert_int_equal(st.first_page, 1);
  assert_int_equal(st.end_page, NP);
  release(f);
}

static void test_pool_shards__placement_most_free(void **state) {
  (void)state;
  fixture *f = make(NP, 2); /* shard 0: pages 1..7 (7), shard 1: 8..15 (8) */
  int32_t tok[8];
  fill_tokens(tok, 8, 100);
  const kvp_seq_id a = add_flags(f, tok, 8, 0, NULL); /* 8 > 7 free: shard 1 */
  assert_int_equal(shard_of_seq(f, a), 1);
  int32_t pages[4];
  size_t n = 0;
  assert_kvp_ok(kvp_pool_get_page_table(f->pool, a, pages, 4, &n));
  assert_int_equal(n, 2);
  assert_int_equal(pages[0], 8); /* the shard's lowest pages first */
  assert_int_equal(pages[1], 9);
  fill_tokens(tok, 8, 200);
  const kvp_seq_id b = add_flags(f, tok, 8, 0, NULL); /* 7 > 6: shard 0 */
  assert_int_equal(shard_of_seq(f, b), 0);
  assert_kvp_ok(kvp_pool_get_page_table(f->pool, b, pages, 4, &n));
  assert_int_equal(pages[0], 1);
  assert_int_equal(pages[1], 2);
  fill_tokens(tok, 4, 300);
  const kvp_seq_id c = add_flags(f, tok, 4, 0, NULL); /* 5 < 6: shard 1 */
  assert_int_equal(shard_of_seq(f, c), 1);
  fill_tokens(tok, 4, 400);
  const kvp_seq_id d = add_flags(f, tok, 4, 0, NULL); /* 5 = 5: tie, the lowest index */
  assert_int_equal(shard_of_seq(f, d), 0);
  assert_int_equal(shard_stats(f, 0).num_sequences, 2);
  assert_int_equal(shard_stats(f, 1).used_pages, 3);
  assert_int_equal(shard_stats(f, 1).free_pages, 5);
  release(f);

  /* dp = 4: shard 0 has 3 usable pages, the others 4 each; ties go to the lowest index */
  f = make(NP, 4);
  const kvp_seq_id e = add_flags(f, tok, 4, 0, NULL);
  assert_int_equal(shard_of_seq(f, e), 1);
  fill_tokens(tok, 4, 500);
  const kvp_seq_id g = add_flags(f, tok, 4, 0, NULL);
  assert_int_equal(shard_of_seq(f, g), 2);
  release(f);
}

/* A sequence with `n` tokens forced into `shard`, computed, then freed: its full pages stay
 * cached (evictable) in that shard. */
static void cache_prompt(fixture *f, const int32_t *tok, size_t n, uint32_t shard) {
  const kvp_seq_id s = add_flags(f, tok, n, KVP_POOL_ADD_IN_SHARD(shard), NULL);
  assert_kvp_ok(kvp_pool_set_computed(f->pool, s, n));
  assert_kvp_ok(kvp_pool_free_sequence(f->pool, s));
}

static void test_pool_shards__placement_longest_prefix(void **state) {
  (void)state;
  fixture *f = make(NP, 2);
  int32_t prompt[16], other[12];
  fill_tokens(prompt, 16, 1000);
  fill_tokens(other, 12, 5000);
  cache_prompt(f, prompt, 12, 0); /* 3 pages of the prompt cached in shard 0 */
  cache_prompt(f, prompt, 4, 1);  /* its first page also cached in shard 1 */
  const kvp_seq_id busy = add_flags(f, other, 12, KVP_POOL_ADD_IN_SHARD(0), NULL);
  /* shard 0: 1 free + 3 evictable; shard 1: 7 free + 1 evictable. The longest match wins. */
  size_t reused = 0;
  const kvp_seq_id s = add_flags(f, prompt, 16, 0, &reused);
  assert_int_equal(shard_of_seq(f, s), 0);
  assert_int_equal(reused, 12);
  assert_int_equal(assert_pages_in_shard(f, s), 4);
  assert_int_equal(shard_stats(f, 0).free_pages, 0);
  assert_kvp_ok(kvp_pool_free_sequence(f->pool, s));

  /* The same prompt again, with one more page needed than shard 0 can give: its match there
   * cannot hold the rest, so shard 1's shorter match is taken (and only shard 1's pages are
   * reused: prefix matching stays within a shard). */
  int32_t more[16];
  fill_tokens(more, 16, 9000);
  const kvp_seq_id filler = add_flags(f, more, 4, KVP_POOL_ADD_IN_SHARD(0), NULL); /* the last free page */
  assert_int_equal(shard_stats(f, 0).evictable_pages, 3);
  assert_int_equal(shard_stats(f, 0).free_pages, 0);
  /* evicts the least recently released cached page: the prompt's third */
  const kvp_seq_id filler2 = add_flags(f, more + 4, 4, KVP_POOL_ADD_IN_SHARD(0), NULL);
  assert_int_equal(shard_stats(f, 0).evictable_pages, 2);
  /* shard 0 would reuse 2 pages and need 2 fresh ones, but has no free or other evictable page */
  const kvp_seq_id t = add_flags(f, prompt, 16, 0, &reused);
  assert_int_equal(shard_of_seq(f, t), 1);
  assert_int_equal(reused, 4);
  assert_int_equal(assert_pages_in_shard(f, t), 4);
  assert_int_equal(shard_stats(f, 0).evictable_pages, 2); /* shard 0's cache untouched */
  assert_kvp_ok(kvp_pool_free_sequence(f->pool, t));
  assert_kvp_ok(kvp_pool_free_sequence(f->pool, filler));
  assert_kvp_ok(kvp_pool_free_sequence(f->pool, filler2));
  assert_kvp_ok(kvp_pool_free_sequence(f->pool, busy));
  release(f);
}

static void test_pool_shards__prefix_stays_within_shard(void **state) {
  (void)state;
  fixture *f = make(NP, 2);
  int32_t prompt[12];
  fill_tokens(prompt, 12, 42);
  cache_prompt(f, prompt, 12, 0);
  kvp_pool_stats st = KVP_POOL_STATS_INIT;
  assert_kvp_ok(kvp_pool_get_stats(f->pool, &st));
  assert_int_equal(st.indexed_pages, 3);
  size_t reused = 99;
  const kvp_seq_id s = add_flags(f, prompt, 12, KVP_POOL_ADD_IN_SHARD(1), &reused);
  assert_int_equal(reused, 0); /* cached only in shard 0: not reused */
  assert_int_equal(shard_of_seq(f, s), 1);
  assert_int_equal(assert_pages_in_shard(f, s), 3);
  /* Once computed, the same pages are cached in both shards, each under the same keys. */
  assert_kvp_ok(kvp_pool_set_computed(f->pool, s, 12));
  assert_kvp_ok(kvp_pool_get_stats(f->pool, &st));
  assert_int_equal(st.indexed_pages, 6);
  const kvp_seq_id u = add_flags(f, prompt, 12, KVP_POOL_ADD_IN_SHARD(0), &reused);
  assert_int_equal(reused, 8); /* at least one token left to compute */
  assert_int_equal(assert_pages_in_shard(f, u), 3);
  assert_kvp_ok(kvp_pool_free_sequence(f->pool, s));
  assert_kvp_ok(kvp_pool_free_sequence(f->pool, u));
  release(f);
}

static void test_pool_shards__forced(void **state) {
  (void)state;
  fixture *f = make(NP, 4);
  int32_t tok[8];
  fill_tokens(tok, 8, 7);
  for (uint32_t d = 0; d < 4; ++d) {
    const kvp_seq_id s = add_flags(f, tok, 8, KVP_POOL_ADD_IN_SHARD(d) | KVP_POOL_ADD_FLAG_REUSE_ALL, NULL);
    assert_int_equal(shard_of_seq(f, s), d);
    assert_int_equal(assert_pages_in_shard(f, s), 2);
  }
  release(f);
  f = make(NP, 1);
  const kvp_seq_id s = add_flags(f, tok, 8, KVP_POOL_ADD_IN_SHARD(0), NULL);
  assert_int_equal(shard_of_seq(f, s), 0);
  release(f);
}

/* ---- eviction, fork and copy-on-write within a shard ------------------------------------------ */

static void test_pool_shards__eviction_within_shard(void **state) {
  (void)state;
  fixture *f = make(NP, 2);
  int32_t a[28], b[32];
  fill_tokens(a, 28, 10);
  fill_tokens(b, 32, 20000);
  cache_prompt(f, a, 16, 0); /* 7 cached pages: shard 0 is all evictable */
  cache_prompt(f, a + 16, 12, 0);
  cache_prompt(f, b, 16, 1); /* 4 cached pages in shard 1, 4 free */
  cache_prompt(f, b + 16, 16, 1);
  assert_int_equal(shard_stats(f, 1).evictable_pages, 8);
  snapshot before = snap(f);
  int32_t fresh[16];
  fill_tokens(fresh, 16, 777);
  const kvp_seq_id s = add_flags(f, fresh, 16, KVP_POOL_ADD_IN_SHARD(1), NULL);
  assert_int_equal(assert_pages_in_shard(f, s), 4);
  assert_int_equal(shard_stats(f, 1).evictable_pages, 4);
  /* shard 0's cached pages are all still there */
  for (int32_t p = 1; p < 8; ++p) assert_int_equal(snap(f).flags[p], before.flags[p]);
  kvp_pool_stats st = KVP_POOL_STATS_INIT;
  assert_kvp_ok(kvp_pool_get_stats(f->pool, &st));
  assert_int_equal(st.evictions, 4);
  assert_int_equal(st.indexed_pages, 7 + 4);
  assert_kvp_ok(kvp_pool_free_sequence(f->pool, s));
  release(f);
}

static void test_pool_shards__fork_and_cow_within_shard(void **state) {
  (void)state;
  fixture *f = make(NP, 2);
  int32_t tok[6];
  fill_tokens(tok, 6, 3);
  const kvp_seq_id parent = add_flags(f, tok, 6, KVP_POOL_ADD_IN_SHARD(1), NULL);
  kvp_seq_id kids[2];
  assert_kvp_ok(kvp_pool_fork(f->pool, parent, 2, kids));
  assert_int_equal(shard_stats(f, 1).num_sequences, 3);
  for (int i = 0; i < 2; ++i) {
    assert_int_equal(shard_of_seq(f, kids[i]), 1);
    const int32_t next = 50 + i;
    assert_kvp_ok(kvp_pool_append(f->pool, kids[i], &next, 1, NULL)); /* copy-on-write of the tail */
    assert_int_equal(assert_pages_in_shard(f, kids[i]), 2);
  }
  kvp_pool_stats st = KVP_POOL_STATS_INIT;
  assert_kvp_ok(kvp_pool_get_stats(f->pool, &st));
  assert_int_equal(st.cow_copies, 2);
  assert_int_equal(shard_stats(f, 0).used_pages, 0);
  assert_int_equal(shard_stats(f, 1).used_pages, 4); /* the shared head, 1 tail + 2 copies */
  const int32_t more[4] = {1, 2, 3, 4};
  assert_kvp_ok(kvp_pool_append(f->pool, parent, more, 4, NULL));
  assert_int_equal(assert_pages_in_shard(f, parent), 3);
  release(f);
}

/* ---- errors ---------------------------------------------------------------------------------- */

static void test_pool_shards__errors_change_nothing(void **state) {
  (void)state;
  fixture *f = make(NP, 2);
  int32_t tok[16];
  fill_tokens(tok, 16, 1);
  const kvp_seq_id a = add_flags(f, tok, 16, KVP_POOL_ADD_IN_SHARD(0), NULL);
  const kvp_seq_id b = add_flags(f, tok, 8, KVP_POOL_ADD_IN_SHARD(0), NULL); /* 1 page left in shard 0 */
  kvp_seq_id s = {0x1234};
  size_t reused = 77;
  uint32_t shard = 77;
  kvp_pool_shard_stats sst, sst0;
  memset(&sst, 0x5C, sizeof sst);
  sst.struct_size = sizeof sst;
  sst0 = sst;
  const snapshot before = snap(f);

  assert_kvp_status(kvp_pool_add_sequence(f->pool, tok, 4, 0, KVP_POOL_ADD_IN_SHARD(2), &s, &reused),
                    KVP_ERR_INVALID_ARGUMENT, "shard 2 is out of range: the pool has 2 data-parallel shard(s)");
  assert_kvp_status(kvp_pool_add_sequence(f->pool, tok, 4, 0, 1u << 16, &s, &reused), KVP_ERR_INVALID_ARGUMENT,
                    "unknown flags 0x10000");
  assert_kvp_status(kvp_pool_add_sequence(f->pool, tok, 8, 0, KVP_POOL_ADD_IN_SHARD(0), &s, &reused),
                    KVP_ERR_OUT_OF_PAGES, "needs 2 new page(s) for 8 tokens (0 reused), but only 1 are free or "
                    "evictable (1 free, 0 evictable) in data-parallel shard 0 of 2");
  const int32_t five[5] = {1, 2, 3, 4, 5};
  assert_kvp_status(kvp_pool_append(f->pool, b, five, 5, NULL), KVP_ERR_OUT_OF_PAGES,
                    "in data-parallel shard 0 of 2");
  assert_kvp_status(kvp_pool_get_shard_stats(f->pool, 2, &sst), KVP_ERR_INVALID_ARGUMENT,
                    "kvp_pool_get_shard_stats: shard 2 is out of range: the pool has 2 data-parallel shard(s)");
  assert_memory_equal(&sst, &sst0, sizeof sst);
  assert_kvp_status(kvp_pool_get_sequence_shard(f->pool, (kvp_seq_id){0x5555}, &shard), KVP_ERR_NOT_FOUND,
                    "kvp_pool_get_sequence_shard");
  assert_int_equal(shard, 77);
  assert_int_equal(s.id, 0x1234);
  assert_int_equal(reused, 77);
  assert_unchanged(f, &before);

  /* the other shard still has room: placement goes there */
  const kvp_seq_id c = add_flags(f, tok, 8, 0, NULL);
  assert_int_equal(shard_of_seq(f, c), 1);
  (void)a;
  release(f);

  /* dp = 1: shard 1 does not exist */
  f = make(NP, 1);
  const snapshot one = snap(f);
  assert_kvp_status(kvp_pool_add_sequence(f->pool, tok, 4, 0, KVP_POOL_ADD_IN_SHARD(1), &s, NULL),
                    KVP_ERR_INVALID_ARGUMENT, "shard 1 is out of range: the pool has 1 data-parallel shard(s)");
  assert_kvp_status(kvp_pool_add_sequence(f->pool, tok, 20, 0, 0, &s, NULL), KVP_ERR_INVALID_ARGUMENT,
                    "exceeds max_model_length");
  assert_unchanged(f, &one);
  release(f);
}

/* ---- random walk --------------------------------------------------------------------------- */

static uint64_t next_rand(uint64_t *x) {
  *x ^= *x << 13;
  *x ^= *x >> 7;
  *x ^= *x << 17;
  return *x;
}

#define WALK_SEQS 12

/* After every operation: the invariants hold, every live sequence's pages are in its shard, and
 * the shards' counters add up to the pool's. A failed operation changes nothing. */
static void check_walk(fixture *f, const kvp_seq_id *live, int nlive) {
  assert_kvp_ok(kvp_pool_check_invariants(f->pool));
  for (int i = 0; i < nlive; ++i) assert_pages_in_shard(f, live[i]);
  kvp_pool_stats st = KVP_POOL_STATS_INIT;
  assert_kvp_ok(kvp_pool_get_stats(f->pool, &st));
  int64_t fr = 0, ev = 0, us = 0, sq = 0;
  for (uint32_t d = 0; d < (uint32_t)f->cfg.data_parallel_size; ++d) {
    const kvp_pool_shard_stats s = shard_stats(f, d);
    assert_int_equal(s.free_pages + s.evictable_pages + s.used_pages, s.total_pages);
    fr += s.free_pages;
    ev += s.evictable_pages;
    us += s.used_pages;
    sq += s.num_sequences;
  }
  assert_int_equal(fr, st.free_pages);
  assert_int_equal(ev, st.evictable_pages);
  assert_int_equal(us, st.used_pages);
  assert_int_equal(sq, st.num_sequences);
  assert_int_equal(sq, nlive);
}

static void walk(int64_t dp, uint64_t seed) {
  fixture *f = make(NP * 2, dp);
  kvp_seq_id live[WALK_SEQS];
  int nlive = 0;
  uint64_t x = seed;
  int32_t tok[MAXLEN];
  long ok = 0, refused = 0;
  for (int step = 0; step < 3000; ++step) {
    const int op = (int)(next_rand(&x) % 7);
    const int k = nlive > 0 ? (int)(next_rand(&x) % (uint64_t)nlive) : -1;
    const snapshot before = snap(f);
    kvp_status st = KVP_OK;
    if (op <= 1 || nlive == 0) {
      if (nlive == WALK_SEQS) continue;
      const size_t n = 1 + next_rand(&x) % MAXLEN;
      const int32_t family = (int32_t)(next_rand(&x) % 3) * 100; /* few prompts: prefix hits */
      fill_tokens(tok, n, family);
      uint32_t flags = (next_rand(&x) % 4 == 0) ? KVP_POOL_ADD_IN_SHARD(next_rand(&x) % (uint64_t)dp) : 0;
      kvp_seq_id s = {0};
      st = kvp_pool_add_sequence(f->pool, tok, n, 0, flags, &s, NULL);
      if (st == KVP_OK) {
        live[nlive++] = s;
        if (flags != 0) assert_int_equal(shard_of_seq(f, s), flags >> 16);
      }
    } else if (op == 2) {
      size_t len = 0;
      assert_kvp_ok(kvp_pool_get_sequence_length(f->pool, live[k], &len, NULL));
      const size_t n = (size_t)(next_rand(&x) % 6);
      if (len + n > MAXLEN) continue;
      fill_tokens(tok, n, (int32_t)step);
      st = kvp_pool_append(f->pool, live[k], tok, n, NULL);
    } else if (op == 3) {
      size_t len = 0;
      assert_kvp_ok(kvp_pool_get_sequence_length(f->pool, live[k], &len, NULL));
      assert_kvp_ok(kvp_pool_set_computed(f->pool, live[k], len));
    } else if (op == 4) {
      const uint32_t n = (uint32_t)(next_rand(&x) % 3);
      if (nlive + (int)n > WALK_SEQS) continue;
      kvp_seq_id kids[2];
      st = kvp_pool_fork(f->pool, live[k], n, kids);
      for (uint32_t c = 0; st == KVP_OK && c < n; ++c) {
        assert_int_equal(shard_of_seq(f, kids[c]), shard_of_seq(f, live[k]));
        live[nlive++] = kids[c];
      }
    } else if (op == 5) {
      size_t len = 0;
      assert_kvp_ok(kvp_pool_get_sequence_length(f->pool, live[k], &len, NULL));
      assert_kvp_ok(kvp_pool_truncate(f->pool, live[k], len / 2));
    } else {
      assert_kvp_ok(kvp_pool_free_sequence(f->pool, live[k]));
      live[k] = live[--nlive];
    }
    if (st == KVP_OK) {
      ++ok;
    } else {
      assert_int_equal(st, KVP_ERR_OUT_OF_PAGES);
      assert_non_null(strstr(kvp_last_error_message(), "data-parallel shard"));
      assert_unchanged(f, &before);
      ++refused;
    }
    check_walk(f, live, nlive);
  }
  assert_true(ok > 1000);
  assert_true(refused > 0); /* the walk ran the shards full */
  kvp_pool_stats st = KVP_POOL_STATS_INIT;
  assert_kvp_ok(kvp_pool_get_stats(f->pool, &st));
  assert_true(st.reused_tokens > 0 && st.evictions > 0 && st.cow_copies > 0);
  for (int i = 0; i < nlive; ++i) assert_kvp_ok(kvp_pool_free_sequence(f->pool, live[i]));
  release(f);
}

static void test_pool_shards__random_walk_dp2(void **state) {
  (void)state;
  walk(2, 0x9E3779B97F4A7C15ull);
}

static void test_pool_shards__random_walk_dp4(void **state) {
  (void)state;
  walk(4, 0xD1B54A32D192ED03ull);
}

/* ---- the batch builder's row blocks ------------------------------------------------------- */

static kvp_metadata *build(const kvp_config *cfg, const kvp_batch_request *reqs, uint32_t n, int64_t R,
                           uint32_t flags, int32_t *order) {
  kvp_batch_options bo = KVP_BATCH_OPTIONS_INIT;
  bo.max_num_reqs = R;
  bo.flags = flags;
  kvp_metadata *md = NULL;
  assert_kvp_ok(kvp_metadata_build(cfg, reqs, n, &bo, order, &md));
  return md;
}

static void expect_array(const kvp_metadata *md, kvp_metadata_field field, const int32_t *want, int64_t n) {
  const int32_t *data = NULL;
  int64_t len = -1;
  assert_kvp_ok(kvp_metadata_get_array(md, field, &data, &len));
  assert_int_equal(len, n);
  for (int64_t i = 0; i < n; ++i)
    if (data[i] != want[i]) fail_msg("field %u [%lld] = %d, expected %d", field, (long long)i, data[i], want[i]);
}

/* The worked example, dp = 2 over 16 pages (shard 0: pages 1..7, shard 1: 8..15), R = 4 rows:
 *   request 0: prefill of 5 tokens, pages {8, 9}       -> shard 1
 *   request 1: decode at position 6, pages {1, 2}      -> shard 0
 *   request 2: decode at position 3, pages {10}        -> shard 1
 *   request 3: inactive (no tokens this step), {3}
 * Rows 0..1 are shard 0's block: request 1, then a padding row. Rows 2..3 are shard 1's block,
 * decode first: request 2, then request 0. */
static void test_pool_shards__builder_blocks(void **state) {
  (void)state;
  const kvp_config cfg = shard_config(NP, 2, KVP_LAYOUT_V3);
  const int32_t p0[] = {8, 9}, p1[] = {1, 2}, p2[] = {10}, p3[] = {3};
  const kvp_batch_request reqs[4] = {{0, 5, p0, 2}, {6, 1, p1, 2}, {3, 1, p2, 1}, {0, 0, p3, 1}};
  int32_t order[4];
  kvp_metadata *md = build(&cfg, reqs, 4, 4, 0, order);
  const int32_t want_order[4] = {1, 2, 0, -1}; /* the requests of the active rows, ascending */
  assert_memory_equal(order, want_order, sizeof order);
  const int32_t pt[16] = {1, 2, 0, 0, /**/ 0, 0, 0, 0, /**/ 10, 0, 0, 0, /**/ 8, 9, 0, 0};
  expect_array(md, KVP_METADATA_PAGES_TABLES, pt, 16);
  const int32_t cl[4] = {7, 0, 4, 5};
  expect_array(md, KVP_METADATA_CONTEXT_LENS, cl, 4);
  const int32_t qsl[5] = {0, 1, 1, 2, 7};
  expect_array(md, KVP_METADATA_QUERY_START_LOC, qsl, 5);
  const int32_t pos[7] = {6, 3, 0, 1, 2, 3, 4};
  expect_array(md, KVP_METADATA_POSITION_IDS, pos, 7);
  const int32_t rd[3] = {0, 0, 4}, ns[1] = {4};
  expect_array(md, KVP_METADATA_REQUEST_DISTRIBUTION, rd, 3);
  expect_array(md, KVP_METADATA_NUM_SEQS, ns, 1);
  assert_kvp_ok(kvp_metadata_destroy(md));

  /* REQUEST_ORDER: tokens packed as the requests come (request 0's five, then 1's, then 2's) */
  md = build(&cfg, reqs, 4, 4, KVP_BATCH_FLAG_REQUEST_ORDER, order);
  assert_memory_equal(order, want_order, sizeof order);
  const int32_t ts[4] = {5, 0, 6, 0};
  expect_array(md, KVP_METADATA_TOKEN_STARTS, ts, 4);
  const int32_t pos_ro[7] = {0, 1, 2, 3, 4, 6, 3};
  expect_array(md, KVP_METADATA_POSITION_IDS, pos_ro, 7);
  expect_array(md, KVP_METADATA_QUERY_START_LOC, qsl, 5);
  assert_kvp_ok(kvp_metadata_destroy(md));

  /* KEEP_ORDER: the caller's order inside each block */
  md = build(&cfg, reqs, 4, 4, KVP_BATCH_FLAG_KEEP_ORDER, order);
  const int32_t order_keep[4] = {1, 0, 2, -1};
  assert_memory_equal(order, order_keep, sizeof order);
  const int32_t cl_keep[4] = {7, 0, 5, 4}, qsl_keep[5] = {0, 1, 1, 6, 7};
  expect_array(md, KVP_METADATA_CONTEXT_LENS, cl_keep, 4);
  expect_array(md, KVP_METADATA_QUERY_START_LOC, qsl_keep, 5);
  assert_kvp_ok(kvp_metadata_destroy(md));

  /* R = 8: blocks of 4 rows, padding after each shard's requests */
  md = build(&cfg, reqs, 4, 8, 0, NULL);
  const int32_t cl8[8] = {7, 0, 0, 0, 4, 5, 0, 0}, rd8[3] = {0, 0, 8};
  expect_array(md, KVP_METADATA_CONTEXT_LENS, cl8, 8);
  expect_array(md, KVP_METADATA_REQUEST_DISTRIBUTION, rd8, 3);
  assert_kvp_ok(kvp_metadata_destroy(md));

  /* no max_num_reqs anywhere: dp x the busiest shard's requests = 2 x 2 rows */
  md = build(&cfg, reqs, 4, 0, 0, NULL);
  expect_array(md, KVP_METADATA_CONTEXT_LENS, cl, 4);
  assert_kvp_ok(kvp_metadata_destroy(md));
}

static void test_pool_shards__builder_v2_and_dp1_unchanged(void **state) {
  (void)state;
  const int32_t p0[] = {8, 9}, p1[] = {1, 2}, p2[] = {10};
  const kvp_batch_request reqs[3] = {{0, 5, p0, 2}, {6, 1, p1, 2}, {3, 1, p2, 1}};
  static const kvp_metadata_field fields[] = {
      KVP_METADATA_PAGES_TABLES, KVP_METADATA_CONTEXT_LENS, KVP_METADATA_QUERY_START_LOC, KVP_METADATA_NUM_SEQS,
      KVP_METADATA_SLOT_MAPPING, KVP_METADATA_NUM_KV_UPDATE_SLICES, KVP_METADATA_POSITION_IDS};
  const kvp_config c1 = shard_config(NP, 1, KVP_LAYOUT_V2), c2 = shard_config(NP, 2, KVP_LAYOUT_V2);
  int32_t o1[3], o2[3];
  kvp_metadata *m1 = build(&c1, reqs, 3, 5, 0, o1), *m2 = build(&c2, reqs, 3, 5, 0, o2);
  assert_memory_equal(o1, o2, sizeof o1);
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; ++i) {
    const int32_t *a = NULL, *b = NULL;
    int64_t la = -1, lb = -2;
    assert_kvp_ok(kvp_metadata_get_array(m1, fields[i], &a, &la));
    assert_kvp_ok(kvp_metadata_get_array(m2, fields[i], &b, &lb));
    assert_int_equal(la, lb);
    if (la > 0) assert_memory_equal(a, b, sizeof(int32_t) * (size_t)la);
  }
  assert_kvp_ok(kvp_metadata_destroy(m1));
  assert_kvp_ok(kvp_metadata_destroy(m2));
}

static void test_pool_shards__builder_errors(void **state) {
  (void)state;
  const kvp_config cfg = shard_config(NP, 2, KVP_LAYOUT_V3);
  const int32_t p0[] = {7, 8}, p1[] = {9}, p2[] = {10}, p3[] = {7, 12};
  kvp_batch_options bo = KVP_BATCH_OPTIONS_INIT;
  int32_t order[2] = {-5, -5};
  kvp_metadata *md = (kvp_metadata *)(uintptr_t)0x1;
  /* pages in two shards */
  kvp_batch_request split[1] = {{0, 5, p0, 2}};
  assert_kvp_status(kvp_metadata_build(&cfg, split, 1, &bo, order, &md), KVP_ERR_INVALID_ARGUMENT,
                    "request 0: page_ids[1] = 8 is in data-parallel shard 1 but page_ids[0] = 7 is in shard 0");
  assert_null(md);
  /* only the used pages count: page 12 past the request's tokens is not checked */
  kvp_batch_request unused[1] = {{0, 3, p3, 2}};
  md = build(&cfg, unused, 1, 2, 0, NULL);
  assert_kvp_ok(kvp_metadata_destroy(md));
  /* R not a multiple of dp */
  kvp_batch_request two[2] = {{0, 1, p1, 1}, {0, 1, p2, 1}};
  bo.max_num_reqs = 3;
  assert_kvp_status(kvp_metadata_build(&cfg, two, 2, &bo, order, &md), KVP_ERR_INVALID_ARGUMENT,
                    "max_num_reqs 3 is not a multiple of data_parallel_size 2");
  /* more requests of a shard than its block holds */
  bo.max_num_reqs = 2;
  assert_kvp_status(kvp_metadata_build(&cfg, two, 2, &bo, order, &md), KVP_ERR_INVALID_ARGUMENT,
                    "data-parallel shard 1 has 2 active requests but its row block holds 1");
  assert_int_equal(order[0], -5);
  assert_int_equal(order[1], -5);
  assert_null(md);
}

/* Sequences of a sharded pool fed to the builder land in their shards' blocks. */
static void test_pool_shards__pool_to_builder(void **state) {
  (void)state;
  fixture *f = make(NP, 2);
  int32_t tok[8];
  fill_tokens(tok, 8, 1);
  kvp_seq_id s[3];
  s[0] = add_flags(f, tok, 5, KVP_POOL_ADD_IN_SHARD(1), NULL);
  s[1] = add_flags(f, tok, 3, KVP_POOL_ADD_IN_SHARD(0), NULL);
  s[2] = add_flags(f, tok, 8, KVP_POOL_ADD_IN_SHARD(1), NULL);
  kvp_batch_request reqs[3];
  for (int i = 0; i < 3; ++i) assert_kvp_ok(kvp_pool_get_batch_request(f->pool, s[i], &reqs[i]));
  int32_t order[3];
  kvp_metadata *md = build(&f->cfg, reqs, 3, 4, 0, order);
  const int32_t want[3] = {1, 0, 2};
  assert_memory_equal(order, want, sizeof order);
  const int32_t cl[4] = {3, 0, 5, 8};
  expect_array(md, KVP_METADATA_CONTEXT_LENS, cl, 4);
  assert_kvp_ok(kvp_metadata_destroy(md));
  release(f);
}

/* The key of position `pos` of sequence `i` in head `h` (values are its negation); exact in f32. */
static float key_of(int i, int64_t pos, int h, int d) { return (float)(i * 100000 + pos * 1000 + h * 128 + d); }

/* Sequences of both shards, with decodes and prefills, written through the builder's row blocks
 * (token packing by order_out, then by REQUEST_ORDER) and kvp_concatenate on the whole cache:
 * every position of every sequence reads back its own key and value through the views. */
static void test_pool_shards__concatenate_through_blocks(void **state) {
  (void)state;
  for (int request_order = 0; request_order < 2; ++request_order) {
    fixture *f = make(NP, 2);
    int32_t tok[16];
    fill_tokens(tok, 16, 1);
    const size_t lens[4] = {5, 9, 3, 12};
    const uint32_t shards[4] = {1, 0, 1, 1};
    kvp_seq_id s[4];
    for (int i = 0; i < 4; ++i) s[i] = add_flags(f, tok + i, lens[i], KVP_POOL_ADD_IN_SHARD(shards[i]), NULL);
    assert_kvp_ok(kvp_pool_set_computed(f->pool, s[1], 8)); /* a decode of 1 token */
    assert_kvp_ok(kvp_pool_set_computed(f->pool, s[3], 11)); /* another */
    kvp_batch_request reqs[4];
    int64_t T = 0;
    for (int i = 0; i < 4; ++i) {
      assert_kvp_ok(kvp_pool_get_batch_request(f->pool, s[i], &reqs[i]));
      T += reqs[i].num_scheduled;
    }
    int32_t order[4];
    kvp_metadata *md = build(&f->cfg, reqs, 4, 8, request_order ? KVP_BATCH_FLAG_REQUEST_ORDER : 0, order);
    const int32_t want_order[4] = {1, 3, 0, 2}; /* shard 0: 1; shard 1: the decode 3, then 0 and 2 */
    assert_memory_equal(order, want_order, sizeof order);
    static float k[16 * 2 * 128], v[16 * 2 * 128];
    int64_t row = 0;
    for (int j = 0; j < 4; ++j) {
      const int i = request_order ? j : order[j];
      for (int64_t t = 0; t < reqs[i].num_scheduled; ++t, ++row)
        for (int h = 0; h < 2; ++h)
          for (int d = 0; d < 128; ++d) {
            k[(row * 2 + h) * 128 + d] = key_of(i, reqs[i].num_computed + t, h, d);
            v[(row * 2 + h) * 128 + d] = -key_of(i, reqs[i].num_computed + t, h, d);
          }
    }
    assert_int_equal(row, T);
    kvp_tensor kt = kvp_test_tensor(k, KVP_DTYPE_F32, T, 2, 128, KVP_DEVICE_CPU);
    kvp_tensor vt = kvp_test_tensor(v, KVP_DTYPE_F32, T, 2, 128, KVP_DEVICE_CPU);
    assert_kvp_ok(kvp_concatenate(f->cache, 0, &kt, &vt, md, NULL));
    assert_kvp_ok(kvp_metadata_destroy(md));
    kvp_tensor kv, vv;
    assert_kvp_ok(kvp_cache_get_view(f->cache, 0, KVP_VIEW_KEYS, &kv));
    assert_kvp_ok(kvp_cache_get_view(f->cache, 0, KVP_VIEW_VALUES, &vv));
    for (int i = 0; i < 4; ++i) {
      int32_t slots[16];
      const int64_t from = reqs[i].num_computed, n = reqs[i].num_scheduled;
      assert_kvp_ok(kvp_pool_get_slots(f->pool, s[i], (size_t)from, (size_t)n, slots));
      for (int64_t t = 0; t < n; ++t)
        for (int h = 0; h < 2; ++h)
          for (int d = 0; d < 128; d += 31) {
            const int64_t page = slots[t] / PS, r = slots[t] % PS;
            const int64_t off = page * kv.strides[0] + r * kv.strides[1] + h * kv.strides[2] + d * kv.strides[3];
            const float want = key_of(i, from + t, h, d);
            if (((const float *)kv.data)[off] != want || ((const float *)vv.data)[off] != -want)
              fail_msg("request order %d: sequence %d position %lld head %d lane %d: key %f, want %f", request_order, i,
                       (long long)(from + t), h, d, (double)((const float *)kv.data)[off], (double)want);
          }
    }
    for (int i = 0; i < 4; ++i) assert_kvp_ok(kvp_pool_free_sequence(f->pool, s[i]));
    release(f);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pool_shards__ranges),
      cmocka_unit_test(test_pool_shards__placement_most_free),
      cmocka_unit_test(test_pool_shards__placement_longest_prefix),
      cmocka_unit_test(test_pool_shards__prefix_stays_within_shard),
      cmocka_unit_test(test_pool_shards__forced),
      cmocka_unit_test(test_pool_shards__eviction_within_shard),
      cmocka_unit_test(test_pool_shards__fork_and_cow_within_shard),
      cmocka_unit_test(test_pool_shards__errors_change_nothing),
      cmocka_unit_test(test_pool_shards__random_walk_dp2),
      cmocka_unit_test(test_pool_shards__random_walk_dp4),
      cmocka_unit_test(test_pool_shards__builder_blocks),
      cmocka_unit_test(test_pool_shards__builder_v2_and_dp1_unchanged),
      cmocka_unit_test(test_pool_shards__builder_errors),
      cmocka_unit_test(test_pool_shards__pool_to_builder),
      cmocka_unit_test(test_pool_shards__concatenate_through_blocks),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
