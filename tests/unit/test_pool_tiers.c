/* Unit tests of the pool's storage tiers (kvp_pool_add_store): evicted prefix pages are written to
 * every tier (write-through) and restored into a new sequence with the same prompt, with the bytes computed for them
 * originally, also after an in-memory match of its first pages; a different salt, another config (fingerprint), other token ids in a block, a
 * damaged block (in memory through a plug-in, on disk) are misses; a directory tier survives a
 * restart; a sharded pool restores into the sequence's shard; bad input changes nothing; two pools
 * on two threads share a store at once; the invariants hold after every call. Writes to a slow
 * tier 0 (directory, plug-in) are asynchronous: flushed and counted, never blocking the evicting
 * call (a plug-in whose put blocks until released), dropped when the queue is full, drained by
 * destroy; kvp_pool_flush_tiers(KVP_POOL_FLUSH_CACHED) persists the cached prefixes to every
 * tier (all of them when a tier cannot say what it holds); a page a tier already holds is not
 * written to it again (one bit per tier); a memory and a directory tier restore large blocks a
 * group at a time on the library's threads. K/V is "computed" by a deterministic function of the prompt
 * prefix a page ends, so recomputing it gives the bytes to compare with. */
#include "prompt_pages.h"
#include "support.h"

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <xxhash.h>

#include "kvpages/pool.h"
#include "kvpages/store.h"

#define LAYERS 2
#define HEADS 2
#define HDIM 64
#define PS 4 /* page size */
#define NP 8 /* pages including the null page */
#define MAXLEN 64

typedef struct fixture {
  kvp_cache *cache;
  kvp_pool *pool;
  kvp_store *store;
} fixture;

static kvp_cache *make_cache(kvp_dtype dtype, int64_t num_pages, int64_t dp) {
  kvp_config cfg = kvp_test_config_len(LAYERS, HEADS, HDIM, PS, num_pages, dtype, KVP_LAYOUT_V3, MAXLEN);
  cfg.data_parallel_size = dp;
  kvp_cache *c = NULL;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &c));
  return c;
}

static kvp_pool *make_pool(kvp_cache *c, kvp_store *store) {
  kvp_pool *p = NULL;
  assert_kvp_ok(kvp_pool_create(c, NULL, &p));
  if (store != NULL) assert_kvp_ok(kvp_pool_add_store(p, store));
  return p;
}

static int setup(void **state) {
  fixture *f = (fixture *)test_calloc(1, sizeof *f);
  f->cache = make_cache(KVP_DTYPE_F32, NP, 1);
  assert_kvp_ok(kvp_store_create_memory(1 << 24, NULL, &f->store));
  f->pool = make_pool(f->cache, f->store);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = (fixture *)*state;
  assert_kvp_ok(kvp_pool_check_invariants(f->pool));
  assert_kvp_ok(kvp_pool_destroy(f->pool));
  assert_kvp_ok(kvp_store_destroy(f->store));
  assert_kvp_ok(kvp_cache_destroy(f->cache));
  test_free(f);
  return 0;
}

/* ---- helpers ------------------------------------------------------------------------------ */

static kvp_pool_tier_stats tier(kvp_pool *p, uint32_t t) {
  kvp_pool_tier_stats st = KVP_POOL_TIER_STATS_INIT;
  assert_kvp_ok(kvp_pool_get_tier_stats(p, t, &st));
  return st;
}

static void prompt(int32_t *t, size_t n, int32_t base) {
  for (size_t i = 0; i < n; ++i) t[i] = base + (int32_t)i;
}

/* Computes prompt A (13 tokens: 3 full pages), frees it, then fills the pool with prompt B so
 * A's 3 cached pages are evicted (to tier 0). */
static void evict_a(kvp_pool *p, kvp_cache *c, const int32_t *a, uint64_t salt) {
  int32_t b[7 * PS];
  prompt(b, 7 * PS, 5000);
  assert_kvp_ok(kvp_pool_free_sequence(p, kvp_test_run_prompt(p, c, a, 13, salt, 0, NULL)));
  assert_kvp_ok(kvp_pool_free_sequence(p, kvp_test_run_prompt(p, c, b, 7 * PS, 99, 0, NULL)));
  assert_kvp_ok(kvp_pool_check_invariants(p));
}

/* ---- tests -------------------------------------------------------------------------------- */

static void test_pool_tiers__evicted_pages_come_back(void **state) {
  fixture *f = (fixture *)*state;
  int32_t a[13];
  prompt(a, 13, 1000);
  evict_a(f->pool, f->cache, a, 7);
  kvp_pool_tier_stats st = tier(f->pool, 0);
  assert_int_equal(st.num_tiers, 1);
  assert_int_equal(st.blocks_written, 3); /* A's three full pages, evicted for B */
  assert_int_equal(st.errors, 0);
  kvp_store_stats ss = KVP_STORE_STATS_INIT;
  assert_kvp_ok(kvp_store_get_stats(f->store, &ss));
  assert_int_equal(ss.blocks, 3);
  assert_int_equal(st.bytes_written, ss.bytes);

  /* every add_sequence asks: A's and B's first runs found nothing */
  assert_int_equal(st.lookups, 3 + 6);
  assert_int_equal(st.misses, 3 + 6);
  size_t reused = 0;
  kvp_seq_id s = kvp_test_run_prompt(f->pool, f->cache, a, 13, 7, 0, &reused);
  assert_int_equal(reused, 3 * PS); /* every page but the one holding the last token */
  kvp_test_expect_prompt_kv(f->pool, f->cache, s, a, 3);
  size_t len = 0, computed = 0;
  st = tier(f->pool, 0);
  assert_int_equal(st.lookups, 9 + 3);
  assert_int_equal(st.hits, 3);
  assert_int_equal(st.misses, 9);
  assert_int_equal(st.rejected, 0);
  assert_int_equal(st.restored_tokens, 3 * PS);
  assert_int_equal(st.bytes_read, ss.bytes);
  assert_int_equal(st.blocks_written, 3 + 4); /* B's pages evicted for A in turn */
  kvp_pool_stats ps = KVP_POOL_STATS_INIT;
  assert_kvp_ok(kvp_pool_get_stats(f->pool, &ps));
  assert_int_equal(ps.reused_tokens, 3 * PS);
  /* the restored pages are indexed: a second sequence shares them from memory */
  uint32_t ref = 0, flags = 0;
  assert_kvp_ok(kvp_pool_get_page_state(f->pool, kvp_test_page_of(f->pool, s, 0), &ref, &flags));
  assert_true((flags & KVP_PAGE_FLAG_INDEXED) != 0);
  kvp_seq_id s2 = {0};
  assert_kvp_ok(kvp_pool_add_sequence(f->pool, a, 13, 7, 0, &s2, &reused));
  assert_int_equal(reused, 3 * PS);
  assert_int_equal(kvp_test_page_of(f->pool, s2, 2), kvp_test_page_of(f->pool, s, 2));
  assert_int_equal(tier(f->pool, 0).lookups, 12); /* nothing left to ask the tiers */
  assert_kvp_ok(kvp_pool_get_sequence_length(f->pool, s2, &len, &computed));
  assert_int_equal(computed, 3 * PS);
}

/* A prompt whose first page is still in memory continues from the tier, also when another
 * prompt was restored in between (the first restored block's parent is the in-memory page's key,
 * not a key left over from that other restore). */
static void test_pool_tiers__restore_continues_an_in_memory_match(void **state) {
  fixture *f = (fixture *)*state;
  int32_t d[9], e[9], b[7 * PS];
  prompt(d, 9, 100);
  prompt(e, 9, 200);
  prompt(b, 7 * PS, 5000);
  assert_kvp_ok(kvp_pool_free_sequence(f->pool, kvp_test_run_prompt(f->pool, f->cache, d, 9, 0, 0, NULL)));
  assert_kvp_ok(kvp_pool_free_sequence(f->pool, kvp_test_run_prompt(f->pool, f->cache, e, 9, 0, 0, NULL)));
  assert_kvp_ok(kvp_pool_free_sequence(f->pool, kvp_test_run_prompt(f->pool, f->cache, b, 7 * PS, 99, 0, NULL)));
  assert_int_equal(tier(f->pool, 0).blocks_written, 4); /* D's and E's two pages each */
  size_t reused = 0;
  /* D's first page alone comes back (a 5-token prompt reuses at most one page) and stays cached */
  assert_kvp_ok(kvp_pool_free_sequence(f->pool, kvp_test_run_prompt(f->pool, f->cache, d, 5, 0, 0, &reused)));
  assert_int_equal(reused, PS);
  /* E, restored from the tier from its first page */
  assert_kvp_ok(kvp_pool_free_sequence(f->pool, kvp_test_run_prompt(f->pool, f->cache, e, 9, 0, 0, &reused)));
  assert_int_equal(reused, 2 * PS);
  /* D: page 0 from memory, page 1 from the tier */
  const int64_t hits = tier(f->pool, 0).hits;
  kvp_seq_id s = kvp_test_run_prompt(f->pool, f->cache, d, 9, 0, 0, &reused);
  assert_int_equal(reused, 2 * PS);
  assert_int_equal(tier(f->pool, 0).hits, hits + 1);
  assert_int_equal(tier(f->pool, 0).rejected, 0);
  kvp_test_expect_prompt_kv(f->pool, f->cache, s, d, 2);
}

static void test_pool_tiers__other_salt_or_tokens_miss(void **state) {
  fixture *f = (fixture *)*state;
  int32_t a[13];
  prompt(a, 13, 1000);
  evict_a(f->pool, f->cache, a, 7);
  size_t reused = 99;
  const kvp_pool_tier_stats st0 = tier(f->pool, 0);
  kvp_seq_id s = kvp_test_run_prompt(f->pool, f->cache, a, 13, 8, 0, &reused); /* another salt */
  assert_int_equal(reused, 0);
  kvp_pool_tier_stats st = tier(f->pool, 0);
  assert_int_equal(st.lookups - st0.lookups, 3);
  assert_int_equal(st.hits, 0);
  assert_int_equal(st.misses - st0.misses, 3);
  assert_int_equal(st.rejected, 0);
  assert_kvp_ok(kvp_pool_free_sequence(f->pool, s));
  /* a prompt that differs in page 2: pages 0 and 1 come back */
  int32_t a2[13];
  memcpy(a2, a, sizeof a2);
  a2[9] = -5;
  s = kvp_test_run_prompt(f->pool, f->cache, a2, 13, 7, 0, &reused);
  assert_int_equal(reused, 2 * PS);
  kvp_test_expect_prompt_kv(f->pool, f->cache, s, a2, 3);
}

static void test_pool_tiers__another_config_is_a_miss(void **state) {
  (void)state;
  /* bf16 and f16 caches of one shape make blocks of one size: only the fingerprint differs, and
   * it masks the store keys, so the other config's blocks are not even found (nor overwritten) */
  kvp_store *store = NULL;
  assert_kvp_ok(kvp_store_create_memory(1 << 24, NULL, &store));
  kvp_cache *c1 = make_cache(KVP_DTYPE_BF16, NP, 1), *c2 = make_cache(KVP_DTYPE_F16, NP, 1);
  kvp_pool *p1 = make_pool(c1, store), *p2 = make_pool(c2, store);
  int32_t a[13];
  prompt(a, 13, 1000);
  evict_a(p1, c1, a, 7);
  assert_int_equal(tier(p1, 0).blocks_written, 3);
  size_t reused = 99;
  kvp_seq_id s = kvp_test_run_prompt(p2, c2, a, 13, 7, 0, &reused);
  assert_int_equal(reused, 0);
  kvp_pool_tier_stats st = tier(p2, 0);
  assert_int_equal(st.hits, 0);
  assert_int_equal(st.misses, 3);
  assert_int_equal(st.rejected, 0);
  assert_int_equal(st.bytes_read, 0);
  assert_kvp_ok(kvp_pool_free_sequence(p2, s));
  assert_kvp_ok(kvp_pool_check_invariants(p2));
  /* the same config finds them */
  kvp_pool *p3 = make_pool(c1, store);
  assert_kvp_ok(kvp_pool_destroy(p1));
  s = kvp_test_run_prompt(p3, c1, a, 13, 7, 0, &reused);
  assert_int_equal(reused, 3 * PS);
  kvp_test_expect_prompt_kv(p3, c1, s, a, 3);
  assert_kvp_ok(kvp_pool_check_invariants(p3));
  assert_kvp_ok(kvp_pool_destroy(p3));
  assert_kvp_ok(kvp_pool_destroy(p2));
  assert_kvp_ok(kvp_cache_destroy(c1));
  assert_kvp_ok(kvp_cache_destroy(c2));
  assert_kvp_ok(kvp_store_destroy(store));
}

/* ---- a plug-in tier: a map of a few blocks the test can damage -------------------------------- */

#define MAP_SLOTS 16
typedef struct map_store {
  kvp_store_key keys[MAP_SLOTS];
  uint8_t *data[MAP_SLOTS];
  size_t size[MAP_SLOTS];
  int used[MAP_SLOTS];
  int puts, gets, exists, destroys;
  int exists_fails; /* exists returns KVP_ERR_IO while set */
} map_store;

static int map_find(map_store *m, const kvp_store_key *k) {
  for (int i = 0; i < MAP_SLOTS; ++i)
    if (m->used[i] && memcmp(&m->keys[i], k, sizeof *k) == 0) return i;
  return -1;
}
static kvp_status map_put(void *u, const kvp_store_key *k, const void *d, size_t n) {
  map_store *m = (map_store *)u;
  ++m->puts;
  int i = map_find(m, k);
  for (int j = 0; i < 0 && j < MAP_SLOTS; ++j)
    if (!m->used[j]) i = j;
  if (i < 0) return KVP_ERR_OUT_OF_MEMORY;
  free(m->data[i]);
  m->data[i] = (uint8_t *)malloc(n);
  memcpy(m->data[i], d, n);
  m->keys[i] = *k;
  m->size[i] = n;
  m->used[i] = 1;
  return KVP_OK;
}
static kvp_status map_get(void *u, const kvp_store_key *k, void *dst, size_t cap, size_t *size) {
  map_store *m = (map_store *)u;
  ++m->gets;
  const int i = map_find(m, k);
  if (i < 0) return KVP_ERR_NOT_FOUND;
  *size = m->size[i];
  if (cap < m->size[i]) return KVP_ERR_BUFFER_TOO_SMALL;
  memcpy(dst, m->data[i], m->size[i]);
  return KVP_OK;
}
static kvp_status map_exists(void *u, const kvp_store_key *keys, size_t n, uint8_t *found) {
  map_store *m = (map_store *)u;
  ++m->exists;
  if (m->exists_fails) return KVP_ERR_IO;
  for (size_t i = 0; i < n; ++i) found[i] = map_find(m, &keys[i]) >= 0;
  return KVP_OK;
}
static kvp_status map_remove(void *u, const kvp_store_key *k) {
  map_store *m = (map_store *)u;
  const int i = map_find(m, k);
  if (i < 0) return KVP_ERR_NOT_FOUND;
  m->used[i] = 0;
  return KVP_OK;
}
static void map_destroy(void *u) {
  map_store *m = (map_store *)u;
  ++m->destroys;
  for (int i = 0; i < MAP_SLOTS; ++i) free(m->data[i]);
}

static kvp_store *make_map_store(map_store *m) {
  memset(m, 0, sizeof *m);
  kvp_store_vtable vt;
  memset(&vt, 0, sizeof vt);
  vt.struct_size = sizeof vt;
  vt.abi_version = KVP_STORE_VTABLE_VERSION;
  vt.user_data = m;
  vt.put = map_put;
  vt.get = map_get;
  vt.exists = map_exists;
  vt.remove = map_remove;
  vt.destroy = map_destroy;
  kvp_store *s = NULL;
  assert_kvp_ok(kvp_store_create(&vt, &s));
  return s;
}

/* The block of page `i` of a prompt (its token ids start at offset 72 of the block). */
static int block_of_page(map_store *m, const int32_t *tokens, size_t i) {
  for (int j = 0; j < MAP_SLOTS; ++j)
    if (m->used[j] && memcmp(m->data[j] + 72, tokens + i * PS, PS * sizeof(int32_t)) == 0) return j;
  fail_msg("no block holds page %zu", i);
  return -1;
}

/* Re-seals a block's checksum after the test changed it (the last 8 bytes: XXH3-64 of the rest). */
static void reseal(map_store *m, int j) {
  const uint64_t h = XXH3_64bits(m->data[j], m->size[j] - 8);
  for (int b = 0; b < 8; ++b) m->data[j][m->size[j] - 8 + b] = (uint8_t)(h >> (8 * b));
}

static void test_pool_tiers__plugin_tier_and_damaged_blocks(void **state) {
  fixture *f = (fixture *)*state;
  map_store m;
  kvp_store *ms = make_map_store(&m);
  kvp_pool *p = make_pool(f->cache, ms);
  int32_t a[13];
  prompt(a, 13, 1000);
  evict_a(p, f->cache, a, 7);
  /* a plug-in tier 0 is written by the pool's writer thread: wait for it before looking */
  assert_kvp_ok(kvp_pool_flush_tiers(p, 0));
  assert_int_equal(m.puts, 3);
  assert_kvp_ok(kvp_pool_add_store(p, f->store)); /* a second tier, added after A's eviction: empty */
  assert_int_equal(tier(p, 1).blocks_written, 0);
  /* a bit flipped in page 1's layer bytes: pages 0 comes back, the restore stops at 1 */
  const int j1 = block_of_page(&m, a, 1);
  m.data[j1][m.size[j1] - 100] ^= 4;
  int exists0 = m.exists, gets0 = m.gets;
  const kvp_pool_tier_stats t1 = tier(p, 1);
  size_t reused = 0;
  kvp_seq_id s = kvp_test_run_prompt(p, f->cache, a, 13, 7, 0, &reused);
  assert_int_equal(reused, PS);
  kvp_test_expect_prompt_kv(p, f->cache, s, a, 3); /* pages 1 and 2 were recomputed */
  assert_int_equal(m.exists - exists0, 1); /* one batched query */
  assert_int_equal(m.gets - gets0, 2);
  kvp_pool_tier_stats st = tier(p, 0);
  assert_int_equal(st.hits, 1);
  assert_int_equal(st.rejected, 1);
  assert_int_equal(tier(p, 1).lookups - t1.lookups, 2); /* tier 1 was asked for the rest */
  assert_int_equal(tier(p, 1).hits, 0);
  assert_kvp_ok(kvp_pool_free_sequence(p, s));
  assert_kvp_ok(kvp_pool_check_invariants(p));
  assert_kvp_ok(kvp_pool_destroy(p));

  /* other token ids in page 0's block, checksum made right again: refused on the ids */
  p = make_pool(f->cache, ms);
  evict_a(p, f->cache, a, 7); /* its first run restored page 0 and rewrote pages 1 and 2 on eviction */
  assert_kvp_ok(kvp_pool_flush_tiers(p, 0));
  const int64_t rejected0 = tier(p, 0).rejected;
  const int j0 = block_of_page(&m, a, 0);
  m.data[j0][72] ^= 1;
  reseal(&m, j0);
  s = kvp_test_run_prompt(p, f->cache, a, 13, 7, 0, &reused);
  assert_int_equal(reused, 0);
  assert_int_equal(tier(p, 0).rejected - rejected0, 1);
  kvp_test_expect_prompt_kv(p, f->cache, s, a, 3);
  assert_kvp_ok(kvp_pool_check_invariants(p));
  assert_kvp_ok(kvp_pool_destroy(p));
  assert_kvp_ok(kvp_store_destroy(ms));
  assert_int_equal(m.destroys, 1);
}

/* The key under which store s holds the block of the page whose token ids are page_tokens (ps of
 * them, at offset 72 of a block); its bytes go to *block (test_malloc'd) and *size. */
static kvp_store_key stored_page(kvp_store *s, const int32_t *page_tokens, size_t ps, uint8_t **block, size_t *size) {
  kvp_store_key keys[64];
  uint64_t cursor = 0;
  size_t n = 0;
  assert_kvp_ok(kvp_store_list(s, &cursor, keys, 64, &n));
  assert_int_equal(cursor, 0);
  for (size_t i = 0; i < n; ++i) {
    assert_kvp_status(kvp_store_get(s, &keys[i], NULL, 0, size), KVP_ERR_BUFFER_TOO_SMALL, "capacity is 0");
    uint8_t *b = (uint8_t *)test_malloc(*size);
    assert_kvp_ok(kvp_store_get(s, &keys[i], b, *size, size));
    if (memcmp(b + 72, page_tokens, ps * sizeof(int32_t)) == 0) {
      *block = b;
      return keys[i];
    }
    test_free(b);
  }
  fail_msg("the store holds no block of that page");
  return keys[0];
}

/* Flips one byte, `from_end` bytes before the end, of the block a store holds for the page whose
 * token ids are page_tokens, and puts it back (the store's own frame stays valid). */
static void damage_stored_page(kvp_store *s, const int32_t *page_tokens, size_t ps, size_t from_end) {
  uint8_t *b = NULL;
  size_t size = 0;
  const kvp_store_key k = stored_page(s, page_tokens, ps, &b, &size);
  b[size - from_end] ^= 0x10;
  assert_kvp_ok(kvp_store_put(s, &k, b, size));
  test_free(b);
}

/* The large-block tests: blocks of half a MiB (2 layers, 8 heads x 128, page 32, f32); prompt A
 * has six full pages and one more token, prompt B nine pages, enough to evict A's. */
enum { BPS = 32, BNP = 10, A_LEN = 6 * BPS + 1, B_LEN = 9 * BPS };

static kvp_cache *make_large_block_cache(void) {
  kvp_config cfg = kvp_test_config_len(2, 8, 128, BPS, BNP, KVP_DTYPE_F32, KVP_LAYOUT_V3, 512);
  kvp_cache *c = NULL;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &c));
  return c;
}

/* Computes A, then B (which evicts A's six pages to tier 0), restores A whole from the tier (every
 * page with its K/V) and evicts it again with B; flushes the tier's queue after each eviction.
 * Returns the tier's stats after the restore. */
static kvp_pool_tier_stats restore_six_pages(kvp_pool *p, kvp_cache *c, const int32_t *a, const int32_t *b) {
  assert_kvp_ok(kvp_pool_free_sequence(p, kvp_test_run_prompt(p, c, a, A_LEN, 3, 0, NULL)));
  assert_kvp_ok(kvp_pool_free_sequence(p, kvp_test_run_prompt(p, c, b, B_LEN, 3, 0, NULL)));
  assert_kvp_ok(kvp_pool_flush_tiers(p, 0));
  assert_int_equal(tier(p, 0).blocks_written, 6); /* A's six full pages, evicted for B */
  size_t reused = 0;
  kvp_seq_id s = kvp_test_run_prompt(p, c, a, A_LEN, 3, 0, &reused);
  assert_int_equal(reused, 6 * BPS);
  kvp_test_expect_prompt_kv(p, c, s, a, 6);
  const kvp_pool_tier_stats st = tier(p, 0);
  assert_int_equal(st.hits, 6);
  assert_int_equal(st.rejected, 0);
  assert_kvp_ok(kvp_pool_free_sequence(p, s));
  assert_kvp_ok(kvp_pool_free_sequence(p, kvp_test_run_prompt(p, c, b, B_LEN, 3, 0, NULL)));
  assert_kvp_ok(kvp_pool_flush_tiers(p, 0));
  return st;
}

/* Restores A after the test damaged the block of page `bad`: pages 0 to bad - 1 come back, one
 * rejected block ends the restore, the rest is recomputed with the right K/V, and 7 pages are in
 * use (A's six and the last token's: a page taken for the bad block or a later one was given
 * back); the invariants hold; then A is evicted again. Returns the tier's stats after the restore. */
static kvp_pool_tier_stats restore_up_to(kvp_pool *p, kvp_cache *c, const int32_t *a, const int32_t *b, int bad) {
  const kvp_pool_tier_stats st = tier(p, 0);
  kvp_pool_stats before = KVP_POOL_STATS_INIT;
  assert_kvp_ok(kvp_pool_get_stats(p, &before));
  size_t reused = 0;
  kvp_seq_id s = kvp_test_run_prompt(p, c, a, A_LEN, 3, 0, &reused);
  assert_int_equal(reused, (size_t)bad * BPS);
  const kvp_pool_tier_stats st2 = tier(p, 0);
  assert_int_equal(st2.hits - st.hits, bad);
  assert_int_equal(st2.rejected - st.rejected, 1);
  kvp_test_expect_prompt_kv(p, c, s, a, 6); /* the pages from the bad one on recomputed */
  kvp_pool_stats after = KVP_POOL_STATS_INIT;
  assert_kvp_ok(kvp_pool_get_stats(p, &after));
  assert_int_equal(after.used_pages, 7);
  assert_int_equal(after.evictions - before.evictions, 7 - before.free_pages);
  assert_kvp_ok(kvp_pool_check_invariants(p));
  assert_kvp_ok(kvp_pool_free_sequence(p, s));
  assert_kvp_ok(kvp_pool_free_sequence(p, kvp_test_run_prompt(p, c, b, B_LEN, 3, 0, NULL)));
  assert_kvp_ok(kvp_pool_flush_tiers(p, 0));
  return st2;
}

/* A memory tier restores large blocks a group at a time, copied and checked on the library's
 * threads. All six pages of a prompt come back; then a byte flipped in the layer bytes of page
 * 3's block ends the restore there: pages 0 to 2 are restored, the pages taken for pages 3 to 5
 * are released (taken again to recompute them), and no wrong byte is in the cache. */
static void test_pool_tiers__memory_tier_restores_groups_of_large_blocks(void **state) {
  (void)state;
  kvp_cache *c = make_large_block_cache();
  kvp_store *ms = NULL;
  assert_kvp_ok(kvp_store_create_memory(64 << 20, NULL, &ms));
  kvp_pool *p = make_pool(c, ms);
  int32_t a[A_LEN], b[B_LEN];
  prompt(a, A_LEN, 1000);
  prompt(b, B_LEN, 7000);
  restore_six_pages(p, c, a, b);
  damage_stored_page(ms, a + 3 * BPS, BPS, 100);
  restore_up_to(p, c, a, b, 3);
  assert_kvp_ok(kvp_pool_destroy(p));
  assert_kvp_ok(kvp_store_destroy(ms));
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void remove_dir(const char *dir) {
  DIR *d = opendir(dir);
  if (d == NULL) return;
  char path[512];
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    if (e->d_name[0] == '.') continue;
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    unlink(path);
  }
  closedir(d);
  rmdir(dir);
}

/* A directory store (no fsync, 16 MiB) in a new directory whose path goes to dir (64 bytes). */
static kvp_store *make_dir_store(char *dir) {
  strcpy(dir, "/tmp/kvp_test_tiers_XXXXXX");
  assert_non_null(mkdtemp(dir));
  kvp_store_options o = KVP_STORE_OPTIONS_INIT;
  o.flags = KVP_STORE_FLAG_NO_SYNC;
  kvp_store *store = NULL;
  assert_kvp_ok(kvp_store_create_directory(dir, 1 << 24, &o, &store));
  return store;
}

/* A new cache and pool over `store` (a new process, in effect): prompt A's three full pages (salt
 * 7) come back from the tier with their K/V. */
static void expect_new_pool_restores_a(kvp_store *store, const int32_t *a) {
  kvp_cache *c = make_cache(KVP_DTYPE_F32, NP, 1);
  kvp_pool *p = make_pool(c, store);
  size_t reused = 0;
  kvp_seq_id s = kvp_test_run_prompt(p, c, a, 13, 7, 0, &reused);
  assert_int_equal(reused, 3 * PS);
  kvp_test_expect_prompt_kv(p, c, s, a, 3);
  assert_int_equal(tier(p, 0).hits, 3);
  assert_kvp_ok(kvp_pool_check_invariants(p));
  assert_kvp_ok(kvp_pool_destroy(p));
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void test_pool_tiers__directory_tier_survives_restart(void **state) {
  (void)state;
  char dir[64];
  kvp_store *store = make_dir_store(dir);
  kvp_cache *c = make_cache(KVP_DTYPE_F32, NP, 1);
  kvp_pool *p = make_pool(c, store);
  int32_t a[13];
  prompt(a, 13, 1000);
  evict_a(p, c, a, 7);
  assert_kvp_ok(kvp_pool_destroy(p));
  assert_kvp_ok(kvp_cache_destroy(c));
  assert_kvp_ok(kvp_store_destroy(store));
  /* a new process, in effect: new cache (zeroed), pool and store over the same directory */
  kvp_store_options o = KVP_STORE_OPTIONS_INIT;
  o.flags = KVP_STORE_FLAG_NO_SYNC;
  assert_kvp_ok(kvp_store_create_directory(dir, 1 << 24, &o, &store));
  expect_new_pool_restores_a(store, a);
  assert_kvp_ok(kvp_store_destroy(store));
  remove_dir(dir);
}

/* Flips one byte, 100 bytes before the end, of the file in which directory store `dir` holds the
 * block of the page whose token ids are page_tokens (ps of them). */
static void damage_block_file(kvp_store *s, const char *dir, const int32_t *page_tokens, size_t ps) {
  uint8_t *blk = NULL;
  size_t size = 0;
  const kvp_store_key k = stored_page(s, page_tokens, ps, &blk, &size);
  test_free(blk);
  char file[256];
  int at = snprintf(file, sizeof file, "%s/", dir);
  for (int i = 0; i < 16; ++i) at += snprintf(file + at, sizeof file - (size_t)at, "%02x", k.bytes[i]);
  snprintf(file + at, sizeof file - (size_t)at, ".kvpb");
  FILE *fp = fopen(file, "r+b");
  assert_non_null(fp);
  assert_int_equal(fseek(fp, -100, SEEK_END), 0);
  const int ch = fgetc(fp);
  assert_int_equal(fseek(fp, -100, SEEK_END), 0);
  fputc(ch ^ 0x10, fp);
  fclose(fp);
}

/* The same from a directory tier, whose files are read several at once on the library's threads
 * before any page is taken. All six pages come back; a block whose page checksum fails (put back
 * damaged under its key) ends the restore there, and so does a block file damaged on disk (which
 * the store deletes): the pages before it are restored, no page is kept for it or the ones after,
 * no wrong byte is in the cache. */
static void test_pool_tiers__directory_tier_restores_groups_of_large_blocks(void **state) {
  (void)state;
  char dir[64];
  kvp_store *ds = make_dir_store(dir);
  kvp_cache *c = make_large_block_cache();
  kvp_pool *p = make_pool(c, ds);
  int32_t a[A_LEN], b[B_LEN];
  prompt(a, A_LEN, 1000);
  prompt(b, B_LEN, 7000);
  const kvp_pool_tier_stats st = restore_six_pages(p, c, a, b);
  const int64_t block = st.bytes_read / 6;
  assert_int_equal(st.bytes_read, 6 * block);
  assert_true(block > (1 << 19)); /* two layers of 256 KiB and a header */
  for (int round = 0; round < 2; ++round) {
    /* round 0: page 3's block fails the pool's check; round 1: page 1's file fails the store's */
    const int bad = round == 0 ? 3 : 1;
    if (round == 0) damage_stored_page(ds, a + bad * BPS, BPS, 100);
    else damage_block_file(ds, dir, a + bad * BPS, BPS);
    const int64_t read_before = tier(p, 0).bytes_read;
    const kvp_pool_tier_stats st2 = restore_up_to(p, c, a, b, bad);
    assert_int_equal(st2.errors, 0);
    /* the blocks before the bad one (and it, when the store read it whole), and those of its
     * group after it, read for nothing */
    const int64_t read = (st2.bytes_read - read_before) / block;
    assert_true(read >= bad + (round == 0) && read <= 6);
  }
  assert_kvp_ok(kvp_pool_destroy(p));
  assert_kvp_ok(kvp_store_destroy(ds));
  assert_kvp_ok(kvp_cache_destroy(c));
  remove_dir(dir);
}

static void test_pool_tiers__sharded_pool_restores_into_the_shard(void **state) {
  (void)state;
  kvp_store *store = NULL;
  assert_kvp_ok(kvp_store_create_memory(1 << 24, NULL, &store));
  kvp_cache *c = make_cache(KVP_DTYPE_F32, 2 * NP, 2); /* shards [1, 8) and [8, 16) */
  kvp_pool *p = make_pool(c, store);
  int32_t a[13], b[7 * PS];
  prompt(a, 13, 1000);
  prompt(b, 7 * PS, 5000);
  /* A computed in shard 0 and evicted there */
  assert_kvp_ok(kvp_pool_free_sequence(p, kvp_test_run_prompt(p, c, a, 13, 7, KVP_POOL_ADD_IN_SHARD(0), NULL)));
  assert_kvp_ok(kvp_pool_free_sequence(p, kvp_test_run_prompt(p, c, b, 7 * PS, 9, KVP_POOL_ADD_IN_SHARD(0), NULL)));
  assert_int_equal(tier(p, 0).blocks_written, 3);
  /* A again, in shard 1: restored there */
  size_t reused = 0;
  kvp_seq_id s = kvp_test_run_prompt(p, c, a, 13, 7, KVP_POOL_ADD_IN_SHARD(1), &reused);
  assert_int_equal(reused, 3 * PS);
  for (size_t i = 0; i < 4; ++i) {
    assert_true(kvp_test_page_of(p, s, i) >= NP);
    assert_true(kvp_test_page_of(p, s, i) < 2 * NP);
  }
  kvp_test_expect_prompt_kv(p, c, s, a, 3);
  assert_kvp_ok(kvp_pool_check_invariants(p));
  assert_kvp_ok(kvp_pool_destroy(p));
  assert_kvp_ok(kvp_cache_destroy(c));
  assert_kvp_ok(kvp_store_destroy(store));
}

static void test_pool_tiers__bad_input_changes_nothing(void **state) {
  fixture *f = (fixture *)*state;
  assert_kvp_status(kvp_pool_add_store(f->pool, f->store), KVP_ERR_INVALID_ARGUMENT, "already tier 0");
  kvp_store *more[4] = {NULL};
  for (int i = 0; i < 4; ++i) assert_kvp_ok(kvp_store_create_memory(1000, NULL, &more[i]));
  for (int i = 0; i < 3; ++i) assert_kvp_ok(kvp_pool_add_store(f->pool, more[i]));
  assert_kvp_status(kvp_pool_add_store(f->pool, more[3]), KVP_ERR_INVALID_ARGUMENT, "already has 4 tiers");
  kvp_pool_tier_stats st = KVP_POOL_TIER_STATS_INIT;
  assert_kvp_status(kvp_pool_get_tier_stats(f->pool, 4, &st), KVP_ERR_INVALID_ARGUMENT,
                    "tier 4 is out of range: the pool has 4 tier(s)");
  assert_int_equal(st.num_tiers, 0);
  st.struct_size = 4;
  assert_kvp_status(kvp_pool_get_tier_stats(f->pool, 0, &st), KVP_ERR_VERSION_MISMATCH, "struct_size");
  assert_int_equal(tier(f->pool, 3).num_tiers, 4);
  /* a pool without a prefix cache has nothing to offload */
  kvp_pool_options o = KVP_POOL_OPTIONS_INIT;
  o.flags = KVP_POOL_FLAG_NO_PREFIX_CACHE;
  kvp_pool *np = NULL;
  assert_kvp_ok(kvp_pool_create(f->cache, &o, &np));
  assert_kvp_status(kvp_pool_add_store(np, more[3]), KVP_ERR_UNSUPPORTED, "KVP_POOL_FLAG_NO_PREFIX_CACHE");
  st.struct_size = sizeof st;
  assert_kvp_status(kvp_pool_get_tier_stats(np, 0, &st), KVP_ERR_INVALID_ARGUMENT, "the pool has 0 tier(s)");
  assert_kvp_ok(kvp_pool_destroy(np));
  /* a tier destroyed under the pool: its accesses count as errors, the pool goes on */
  int32_t a[13];
  prompt(a, 13, 1000);
  evict_a(f->pool, f->cache, a, 7);
  assert_kvp_ok(kvp_store_destroy(f->store));
  f->store = more[3];
  more[3] = NULL;
  size_t reused = 0;
  kvp_seq_id s = kvp_test_run_prompt(f->pool, f->cache, a, 13, 7, 0, &reused);
  assert_int_equal(reused, 0);
  assert_true(tier(f->pool, 0).errors >= 1);
  kvp_test_expect_prompt_kv(f->pool, f->cache, s, a, 3);
  assert_kvp_ok(kvp_pool_check_invariants(f->pool));
  assert_kvp_ok(kvp_pool_destroy(f->pool));
  f->pool = make_pool(f->cache, NULL);
  for (int i = 0; i < 3; ++i) assert_kvp_ok(kvp_store_destroy(more[i]));
}

/* ---- two pools sharing a store at once ------------------------------------------------------ */

/* One thread's pool over its own cache, sharing `store` with the other thread. No cmocka call in
 * here (it is not thread-safe): failures are counted and asserted by the main thread. */
typedef struct racer {
  kvp_cache *cache;
  kvp_pool *pool;
  int32_t filler_base;
  long failures, mismatches, restored_pages;
} racer;

static uint8_t *page_bytes_of(racer *r, uint32_t layer, int32_t page, size_t *nbytes) {
  kvp_tensor t;
  if (kvp_cache_get_view(r->cache, layer, KVP_VIEW_FLAT, &t) != KVP_OK) return NULL;
  *nbytes = kvp_test_layer_bytes(r->cache) / (size_t)t.shape[0];
  return (uint8_t *)t.data + (size_t)page * *nbytes;
}

/* Adds a prompt; checks the pages it reused (from memory or a tier) hold the prompt's K/V and
 * "computes" the others; frees it. */
static void race_prompt(racer *r, const int32_t *tokens, size_t n, uint64_t salt) {
  kvp_seq_id s = {0};
  size_t reused = 0, len = 0;
  int32_t row[MAXLEN / PS];
  uint8_t want[1 << 14];
  if (kvp_pool_add_sequence(r->pool, tokens, n, salt, 0, &s, &reused) != KVP_OK ||
      kvp_pool_get_page_table(r->pool, s, row, MAXLEN / PS, &len) != KVP_OK) {
    ++r->failures;
    return;
  }
  for (size_t i = 0; i < n / PS; ++i)
    for (uint32_t l = 0; l < LAYERS; ++l) {
      size_t nb = 0;
      uint8_t *page = page_bytes_of(r, l, row[i], &nb);
      if (page == NULL || nb > sizeof want) {
        ++r->failures;
        continue;
      }
      if (i < reused / PS) {
        kvp_test_prompt_kv(tokens, (i + 1) * PS, l, want, nb);
        r->mismatches += memcmp(page, want, nb) != 0;
      } else {
        kvp_test_prompt_kv(tokens, (i + 1) * PS, l, page, nb);
      }
    }
  if (kvp_pool_set_computed(r->pool, s, n) != KVP_OK || kvp_pool_free_sequence(r->pool, s) != KVP_OK ||
      kvp_pool_check_invariants(r->pool) != KVP_OK)
    ++r->failures;
}

/* Four shared prompts in turn, each followed by a filler prompt of this thread's that evicts its
 * pages: both threads put the same keys into the store at the same time, and restore them. */
static void *race(void *arg) {
  racer *r = (racer *)arg;
  int32_t a[13], filler[7 * PS];
  for (int it = 0; it < 200; ++it) {
    prompt(a, 13, 1000 * (1 + it % 4));
    race_prompt(r, a, 13, 7);
    prompt(filler, 7 * PS, r->filler_base + it);
    race_prompt(r, filler, 7 * PS, 99);
  }
  kvp_pool_tier_stats st = KVP_POOL_TIER_STATS_INIT;
  if (kvp_pool_get_tier_stats(r->pool, 0, &st) != KVP_OK || st.errors != 0 || st.rejected != 0) ++r->failures;
  r->restored_pages = (long)st.hits;
  return NULL;
}

static void race_on(kvp_store *store) {
  racer r[2];
  pthread_t th[2];
  for (int i = 0; i < 2; ++i) {
    memset(&r[i], 0, sizeof r[i]);
    r[i].cache = make_cache(KVP_DTYPE_F32, NP, 1);
    r[i].pool = make_pool(r[i].cache, store);
    r[i].filler_base = 100000 * (i + 1);
  }
  for (int i = 0; i < 2; ++i) assert_int_equal(pthread_create(&th[i], NULL, race, &r[i]), 0);
  for (int i = 0; i < 2; ++i) assert_int_equal(pthread_join(th[i], NULL), 0);
  for (int i = 0; i < 2; ++i) {
    assert_int_equal(r[i].failures, 0);
    assert_int_equal(r[i].mismatches, 0);
    assert_true(r[i].restored_pages > 0);
    assert_kvp_ok(kvp_pool_destroy(r[i].pool));
    assert_kvp_ok(kvp_cache_destroy(r[i].cache));
  }
}

/* Two pools, each on its own thread and cache, writing the same keys into one store and restoring
 * them, a memory store and then a directory store, without and with fsync (a syncing directory
 * store gets kMaxBlockGroup writer threads per pool, the other one per library thread): every
 * restored page holds the prompt's K/V, no store error, no rejected block, the invariants hold
 * throughout. */
static void test_pool_tiers__two_pools_share_a_store_at_once(void **state) {
  (void)state;
  kvp_store *store = NULL;
  assert_kvp_ok(kvp_store_create_memory(1 << 24, NULL, &store));
  race_on(store);
  assert_kvp_ok(kvp_store_destroy(store));
  const uint32_t flags[2] = {KVP_STORE_FLAG_NO_SYNC, 0};
  for (int f = 0; f < 2; ++f) {
    char dir[] = "/tmp/kvp_tiers_race_XXXXXX";
    assert_non_null(mkdtemp(dir));
    kvp_store_options o = KVP_STORE_OPTIONS_INIT;
    o.flags = flags[f];
    assert_kvp_ok(kvp_store_create_directory(dir, 1 << 24, &o, &store));
    race_on(store);
    kvp_store_scrub_report rep = KVP_STORE_SCRUB_REPORT_INIT;
    assert_kvp_ok(kvp_store_scrub(store, &rep));
    assert_int_equal(rep.blocks_damaged, 0);
    assert_true(rep.blocks_checked > 0);
    assert_kvp_ok(kvp_store_destroy(store));
    remove_dir(dir);
  }
}

/* ---- asynchronous writes to a slow tier 0 ------------------------------------------------------ */

/* A plug-in tier whose put blocks while its gate is closed and fails while fail_puts is set; it
 * keeps nothing (every key is missing). */
typedef struct gated_store {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int open, fail_puts, puts;
} gated_store;

static kvp_status gated_put(void *u, const kvp_store_key *k, const void *d, size_t n) {
  gated_store *g = (gated_store *)u;
  (void)k, (void)d, (void)n;
  pthread_mutex_lock(&g->mu);
  while (!g->open) pthread_cond_wait(&g->cv, &g->mu);
  ++g->puts;
  const kvp_status st = g->fail_puts ? KVP_ERR_IO : KVP_OK;
  pthread_mutex_unlock(&g->mu);
  return st;
}
static kvp_status gated_get(void *u, const kvp_store_key *k, void *dst, size_t cap, size_t *size) {
  (void)u, (void)k, (void)dst, (void)cap, (void)size;
  return KVP_ERR_NOT_FOUND;
}
static kvp_status gated_exists(void *u, const kvp_store_key *keys, size_t n, uint8_t *found) {
  (void)u, (void)keys;
  memset(found, 0, n);
  return KVP_OK;
}
static kvp_status gated_remove(void *u, const kvp_store_key *k) {
  (void)u, (void)k;
  return KVP_ERR_NOT_FOUND;
}

static kvp_store *make_gated_store(gated_store *g) {
  memset(g, 0, sizeof *g);
  pthread_mutex_init(&g->mu, NULL);
  pthread_cond_init(&g->cv, NULL);
  kvp_store_vtable vt;
  memset(&vt, 0, sizeof vt);
  vt.struct_size = sizeof vt;
  vt.abi_version = KVP_STORE_VTABLE_VERSION;
  vt.user_data = g;
  vt.put = gated_put;
  vt.get = gated_get;
  vt.exists = gated_exists;
  vt.remove = gated_remove;
  kvp_store *s = NULL;
  assert_kvp_ok(kvp_store_create(&vt, &s));
  return s;
}

static void *open_gate(void *u) {
  gated_store *g = (gated_store *)u;
  pthread_mutex_lock(&g->mu);
  g->open = 1;
  pthread_cond_broadcast(&g->cv);
  pthread_mutex_unlock(&g->mu);
  return NULL;
}

static int gated_puts(gated_store *g) {
  pthread_mutex_lock(&g->mu);
  const int n = g->puts;
  pthread_mutex_unlock(&g->mu);
  return n;
}

static kvp_pool *make_pool_queue(kvp_cache *c, kvp_store *store, uint64_t queue_bytes) {
  kvp_pool_options o = KVP_POOL_OPTIONS_INIT;
  o.write_queue_bytes = queue_bytes;
  kvp_pool *p = NULL;
  assert_kvp_ok(kvp_pool_create(c, &o, &p));
  assert_kvp_ok(kvp_pool_add_store(p, store));
  return p;
}

/* Computes prompt A (3 full cached pages after its free), then a sequence C of 1 token grows by
 * kvp_pool_append to 7 pages, evicting A's 3 pages inside the append. Returns C. */
static kvp_seq_id evict_a_by_append(kvp_pool *p, kvp_cache *c, const int32_t *a) {
  assert_kvp_ok(kvp_pool_free_sequence(p, kvp_test_run_prompt(p, c, a, 13, 7, 0, NULL)));
  int32_t t[7 * PS];
  prompt(t, 7 * PS, 7000);
  kvp_seq_id s = {0};
  assert_kvp_ok(kvp_pool_add_sequence(p, t, 1, 3, 0, &s, NULL));
  assert_kvp_ok(kvp_pool_append(p, s, t + 1, 7 * PS - 1, NULL));
  assert_kvp_ok(kvp_pool_check_invariants(p));
  return s;
}

/* A tier 0 whose put blocks does not block kvp_pool_append: with a queue of one block, the first
 * evicted page waits in it and the other two are dropped; released, the queued one is written;
 * failing puts are counted as errors. */
static void test_pool_tiers__blocked_store_does_not_block_append(void **state) {
  fixture *f = (fixture *)*state;
  gated_store g;
  kvp_store *gs = make_gated_store(&g);
  kvp_pool *p = make_pool_queue(f->cache, gs, 1); /* one staging block, whatever the size */
  int32_t a[13];
  prompt(a, 13, 1000);
  kvp_seq_id s = evict_a_by_append(p, f->cache, a); /* returns although the store blocks */
  kvp_pool_stats ps = KVP_POOL_STATS_INIT;
  assert_kvp_ok(kvp_pool_get_stats(p, &ps));
  assert_int_equal(ps.evictions, 3);
  kvp_pool_tier_stats st = tier(p, 0);
  assert_int_equal(st.dropped, 2);
  assert_int_equal(st.blocks_written, 0);
  assert_int_equal(st.errors, 0);
  assert_int_equal(gated_puts(&g), 0);
  open_gate(&g);
  assert_kvp_ok(kvp_pool_flush_tiers(p, 0));
  st = tier(p, 0);
  assert_int_equal(st.blocks_written, 1);
  assert_true(st.bytes_written > 0);
  assert_int_equal(st.dropped, 2);
  assert_int_equal(gated_puts(&g), 1);
  /* failing puts: C's 7 pages computed, flushed as cached pages: 7 errors, nothing dropped */
  pthread_mutex_lock(&g.mu);
  g.fail_puts = 1;
  pthread_mutex_unlock(&g.mu);
  assert_kvp_ok(kvp_pool_set_computed(p, s, 7 * PS));
  assert_kvp_ok(kvp_pool_flush_tiers(p, KVP_POOL_FLUSH_CACHED));
  st = tier(p, 0);
  assert_int_equal(st.errors, 7);
  assert_int_equal(st.blocks_written, 1);
  assert_int_equal(st.dropped, 2);
  assert_int_equal(gated_puts(&g), 1 + 7);
  uint32_t ref = 0, flags = 0; /* the pages stay cached and in use */
  assert_kvp_ok(kvp_pool_get_page_state(p, kvp_test_page_of(p, s, 6), &ref, &flags));
  assert_int_equal(ref, 1);
  assert_true((flags & KVP_PAGE_FLAG_INDEXED) != 0);
  assert_kvp_ok(kvp_pool_check_invariants(p));
  assert_kvp_ok(kvp_pool_destroy(p));
  assert_kvp_ok(kvp_store_destroy(gs));
  pthread_cond_destroy(&g.cv);
  pthread_mutex_destroy(&g.mu);
}

/* kvp_pool_destroy drains: writes still queued behind a blocked put reach the store before it
 * returns (the gate is opened by another thread, before or during the destroy). */
static void test_pool_tiers__destroy_drains_pending_writes(void **state) {
  fixture *f = (fixture *)*state;
  gated_store g;
  kvp_store *gs = make_gated_store(&g);
  kvp_pool *p = make_pool_queue(f->cache, gs, 0); /* the default queue holds all three */
  int32_t a[13];
  prompt(a, 13, 1000);
  evict_a_by_append(p, f->cache, a);
  kvp_pool_tier_stats st = tier(p, 0);
  assert_int_equal(st.dropped, 0);
  assert_int_equal(st.blocks_written, 0);
  pthread_t opener;
  assert_int_equal(pthread_create(&opener, NULL, open_gate, &g), 0);
  assert_kvp_ok(kvp_pool_destroy(p));
  assert_int_equal(gated_puts(&g), 3);
  assert_int_equal(pthread_join(opener, NULL), 0);
  assert_kvp_ok(kvp_store_destroy(gs));
  pthread_cond_destroy(&g.cv);
  pthread_mutex_destroy(&g.mu);
}

static int64_t store_puts(kvp_store *s) {
  kvp_store_stats st = KVP_STORE_STATS_INIT;
  assert_kvp_ok(kvp_store_get_stats(s, &st));
  return st.puts;
}

/* A directory tier 0 is written asynchronously: after a flush every evicted page is counted and
 * restored equal; a page restored from tier 0, or already written, is not written again (by
 * eviction or by a flush of the cached pages); a fresh pool over the store restores it all. */
static void test_pool_tiers__directory_tier_async_no_rewrite(void **state) {
  (void)state;
  char dir[64];
  kvp_store *store = make_dir_store(dir);
  kvp_cache *c = make_cache(KVP_DTYPE_F32, NP, 1);
  kvp_pool *p = make_pool(c, store);
  int32_t a[13], b[7 * PS];
  prompt(a, 13, 1000);
  prompt(b, 7 * PS, 5000);
  evict_a(p, c, a, 7);
  assert_kvp_ok(kvp_pool_flush_tiers(p, 0));
  assert_int_equal(tier(p, 0).blocks_written, 3);
  assert_int_equal(store_puts(store), 3);
  /* A comes back from disk (evicting 4 of B's 7 cached pages, written) */
  size_t reused = 0;
  kvp_seq_id s = kvp_test_run_prompt(p, c, a, 13, 7, 0, &reused);
  assert_int_equal(reused, 3 * PS);
  kvp_test_expect_prompt_kv(p, c, s, a, 3);
  assert_kvp_ok(kvp_pool_free_sequence(p, s));
  assert_kvp_ok(kvp_pool_flush_tiers(p, 0));
  assert_int_equal(tier(p, 0).blocks_written, 3 + 4);
  /* the cached pages: A's 3 (restored from tier 0: skipped) and B's other 3 (written) */
  assert_kvp_ok(kvp_pool_flush_tiers(p, KVP_POOL_FLUSH_CACHED));
  assert_int_equal(tier(p, 0).blocks_written, 3 + 4 + 3);
  assert_kvp_ok(kvp_pool_flush_tiers(p, KVP_POOL_FLUSH_CACHED)); /* nothing new */
  assert_int_equal(tier(p, 0).blocks_written, 10);
  assert_int_equal(store_puts(store), 10);
  assert_int_equal(tier(p, 0).errors, 0);
  assert_int_equal(tier(p, 0).dropped, 0);
  assert_kvp_ok(kvp_pool_check_invariants(p));
  /* a fresh pool (a new cache, zeroed) restores B's 6 reusable pages from disk */
  kvp_cache *c2 = make_cache(KVP_DTYPE_F32, NP, 1);
  kvp_pool *p2 = make_pool(c2, store);
  s = kvp_test_run_prompt(p2, c2, b, 7 * PS, 99, 0, &reused);
  assert_int_equal(reused, 6 * PS);
  kvp_test_expect_prompt_kv(p2, c2, s, b, 6);
  assert_kvp_ok(kvp_pool_check_invariants(p2));
  assert_kvp_ok(kvp_pool_destroy(p2));
  assert_kvp_ok(kvp_cache_destroy(c2));
  assert_kvp_ok(kvp_pool_destroy(p));
  assert_kvp_ok(kvp_cache_destroy(c));
  assert_kvp_ok(kvp_store_destroy(store));
  remove_dir(dir);
}

/* The keys a store holds (at most `cap`). */
static size_t keys_of(kvp_store *s, kvp_store_key *keys, size_t cap) {
  uint64_t cursor = 0;
  size_t n = 0;
  assert_kvp_ok(kvp_store_list(s, &cursor, keys, cap, &n));
  assert_int_equal(cursor, 0);
  return n;
}

/* Whether a store holds every one of n keys. */
static int holds_all(kvp_store *s, const kvp_store_key *keys, size_t n) {
  uint8_t found[16];
  assert_true(n <= sizeof found);
  assert_kvp_ok(kvp_store_exists(s, keys, n, found));
  for (size_t i = 0; i < n; ++i)
    if (!found[i]) return 0;
  return 1;
}

/* Write-through: an evicted page goes to every tier, the memory tier at once (in the evicting
 * call), the directory tier through the writer thread; a page restored from tier 1 is written to
 * tier 0 when evicted again, not back to tier 1. */
static void test_pool_tiers__every_tier_receives_evictions(void **state) {
  fixture *f = (fixture *)*state;
  char dir[64];
  kvp_store *disk = make_dir_store(dir);
  kvp_pool *p = make_pool(f->cache, f->store);
  assert_kvp_ok(kvp_pool_add_store(p, disk));
  int32_t a[13], c[7 * PS];
  prompt(a, 13, 1000);
  prompt(c, 7 * PS, 9000);
  evict_a(p, f->cache, a, 7);
  assert_int_equal(tier(p, 0).blocks_written, 3); /* synchronous: no flush needed */
  assert_kvp_ok(kvp_pool_flush_tiers(p, 0));
  assert_int_equal(tier(p, 1).blocks_written, 3);
  assert_int_equal(store_puts(disk), 3);
  kvp_store_key keys[8];
  assert_int_equal(keys_of(f->store, keys, 8), 3);
  assert_true(holds_all(disk, keys, 3)); /* the same blocks under the same keys */

  /* the memory tier loses A's blocks: A comes back from the disk */
  for (int i = 0; i < 3; ++i) assert_kvp_ok(kvp_store_remove(f->store, &keys[i]));
  size_t reused = 0;
  kvp_seq_id s = kvp_test_run_prompt(p, f->cache, a, 13, 7, 0, &reused);
  assert_int_equal(reused, 3 * PS);
  assert_int_equal(tier(p, 0).hits, 0);
  assert_int_equal(tier(p, 1).hits, 3);
  kvp_test_expect_prompt_kv(p, f->cache, s, a, 3);
  assert_kvp_ok(kvp_pool_free_sequence(p, s));
  assert_kvp_ok(kvp_pool_flush_tiers(p, 0));
  /* C takes every page: A's 3 restored pages go to tier 0 only, B's 3 unwritten ones to both */
  const kvp_pool_tier_stats t0 = tier(p, 0), t1 = tier(p, 1);
  assert_kvp_ok(kvp_pool_free_sequence(p, kvp_test_run_prompt(p, f->cache, c, 7 * PS, 3, 0, NULL)));
  assert_kvp_ok(kvp_pool_flush_tiers(p, 0));
  assert_int_equal(tier(p, 0).blocks_written - t0.blocks_written, 3 + 3);
  assert_int_equal(tier(p, 1).blocks_written - t1.blocks_written, 3);
  assert_int_equal(store_puts(disk), t1.blocks_written + 3);
  assert_true(holds_all(f->store, keys, 3));
  assert_int_equal(tier(p, 0).errors + tier(p, 1).errors + tier(p, 1).dropped, 0);
  assert_kvp_ok(kvp_pool_check_invariants(p));
  assert_kvp_ok(kvp_pool_destroy(p));
  assert_kvp_ok(kvp_store_destroy(disk));
  remove_dir(dir);
}

/* kvp_pool_flush_tiers(KVP_POOL_FLUSH_CACHED) writes every cached page to every tier that lacks
 * it: a page restored from tier 0 goes to tier 1 only. */
static void test_pool_tiers__flush_cached_fills_every_tier(void **state) {
  fixture *f = (fixture *)*state;
  char dir[64];
  kvp_store *disk = make_dir_store(dir);
  kvp_pool *p = make_pool(f->cache, f->store);
  assert_kvp_ok(kvp_pool_add_store(p, disk));
  int32_t a[13];
  prompt(a, 13, 1000);
  kvp_seq_id s = kvp_test_run_prompt(p, f->cache, a, 13, 7, 0, NULL); /* in use: cached pages too */
  assert_kvp_ok(kvp_pool_flush_tiers(p, KVP_POOL_FLUSH_CACHED));
  assert_int_equal(tier(p, 0).blocks_written, 3);
  assert_int_equal(tier(p, 1).blocks_written, 3);
  assert_kvp_ok(kvp_pool_flush_tiers(p, KVP_POOL_FLUSH_CACHED)); /* nothing new */
  assert_int_equal(tier(p, 0).blocks_written, 3);
  assert_int_equal(tier(p, 1).blocks_written, 3);
  assert_int_equal(store_puts(disk), 3);
  assert_kvp_ok(kvp_pool_free_sequence(p, s));
  assert_kvp_ok(kvp_pool_destroy(p));

  /* a fresh pool over a fresh cache and tiers [disk, memory]: A from tier 0, then flushed to tier 1 */
  kvp_store *mem = NULL;
  assert_kvp_ok(kvp_store_create_memory(1 << 24, NULL, &mem));
  kvp_cache *c2 = make_cache(KVP_DTYPE_F32, NP, 1);
  p = make_pool(c2, disk);
  assert_kvp_ok(kvp_pool_add_store(p, mem));
  size_t reused = 0;
  s = kvp_test_run_prompt(p, c2, a, 13, 7, 0, &reused);
  assert_int_equal(reused, 3 * PS);
  kvp_test_expect_prompt_kv(p, c2, s, a, 3);
  assert_kvp_ok(kvp_pool_flush_tiers(p, KVP_POOL_FLUSH_CACHED));
  assert_int_equal(tier(p, 0).blocks_written, 0);
  assert_int_equal(tier(p, 1).blocks_written, 3);
  assert_int_equal(store_puts(disk), 3);
  kvp_store_key keys[8];
  assert_int_equal(keys_of(mem, keys, 8), 3);
  assert_true(holds_all(disk, keys, 3));
  assert_kvp_ok(kvp_pool_free_sequence(p, s));
  assert_kvp_ok(kvp_pool_check_invariants(p));
  assert_kvp_ok(kvp_pool_destroy(p));
  assert_kvp_ok(kvp_cache_destroy(c2));
  assert_kvp_ok(kvp_store_destroy(mem));
  assert_kvp_ok(kvp_store_destroy(disk));
  remove_dir(dir);
}

/* A flush of cached pages asks each tier what it already holds: blocks another pool wrote (a
 * restarted process, or another server on a shared store) are not written again. */
static void test_pool_tiers__flush_cached_skips_blocks_a_tier_holds(void **state) {
  (void)state;
  char dir[64];
  kvp_store *disk = make_dir_store(dir);
  int32_t a[13], b[9];
  prompt(a, 13, 1000);
  prompt(b, 9, 3000);
  kvp_cache *c[2];
  kvp_pool *p[2];
  kvp_seq_id s[2];
  for (int i = 0; i < 2; ++i) { /* both pools compute A themselves, with the store not yet a tier */
    c[i] = make_cache(KVP_DTYPE_F32, NP, 1);
    p[i] = make_pool(c[i], NULL);
    s[i] = kvp_test_run_prompt(p[i], c[i], a, 13, 7, 0, NULL);
    assert_kvp_ok(kvp_pool_add_store(p[i], disk));
  }
  assert_kvp_ok(kvp_pool_flush_tiers(p[0], KVP_POOL_FLUSH_CACHED));
  assert_int_equal(tier(p[0], 0).blocks_written, 3);
  assert_int_equal(store_puts(disk), 3);
  /* the second pool holds the same 3 pages and 2 of its own (B's full pages): only those are written */
  assert_kvp_ok(kvp_pool_free_sequence(p[1], kvp_test_run_prompt(p[1], c[1], b, 9, 7, 0, NULL)));
  assert_kvp_ok(kvp_pool_flush_tiers(p[1], KVP_POOL_FLUSH_CACHED));
  assert_int_equal(tier(p[1], 0).blocks_written, 2);
  assert_int_equal(store_puts(disk), 5);
  kvp_store_key keys[8];
  assert_int_equal(keys_of(disk, keys, 8), 5);
  for (int i = 0; i < 2; ++i) {
    assert_kvp_ok(kvp_pool_free_sequence(p[i], s[i]));
    assert_kvp_ok(kvp_pool_check_invariants(p[i]));
    assert_kvp_ok(kvp_pool_destroy(p[i]));
    assert_kvp_ok(kvp_cache_destroy(c[i]));
  }
  assert_kvp_ok(kvp_store_destroy(disk));
  remove_dir(dir);
}

/* A flush of cached pages whose tier cannot say what it holds (exists fails): every page is
 * written (the tier's error counted once), and a second flush writes nothing again and asks
 * nothing (each page now knows the tier holds it). */
static void test_pool_tiers__flush_cached_writes_when_exists_fails(void **state) {
  (void)state;
  map_store m;
  kvp_store *store = make_map_store(&m);
  kvp_cache *c = make_cache(KVP_DTYPE_F32, NP, 1);
  kvp_pool *p = make_pool(c, store);
  int32_t a[13];
  prompt(a, 13, 1000);
  assert_kvp_ok(kvp_pool_free_sequence(p, kvp_test_run_prompt(p, c, a, 13, 7, 0, NULL)));
  const int asked = m.exists; /* A's lookup */
  m.exists_fails = 1;
  assert_kvp_ok(kvp_pool_flush_tiers(p, KVP_POOL_FLUSH_CACHED));
  kvp_pool_tier_stats st = tier(p, 0);
  assert_int_equal(m.exists, asked + 1);
  assert_int_equal(st.errors, 1);
  assert_int_equal(st.blocks_written, 3);
  assert_int_equal(m.puts, 3);
  m.exists_fails = 0;
  assert_kvp_ok(kvp_pool_flush_tiers(p, KVP_POOL_FLUSH_CACHED));
  assert_int_equal(m.exists, asked + 1);
  assert_int_equal(m.puts, 3);
  assert_int_equal(tier(p, 0).blocks_written, 3);
  assert_kvp_ok(kvp_pool_check_invariants(p));
  /* the blocks are whole: a new pool restores A from them */
  assert_kvp_ok(kvp_pool_destroy(p));
  assert_kvp_ok(kvp_cache_destroy(c));
  expect_new_pool_restores_a(store, a);
  assert_kvp_ok(kvp_store_destroy(store));
}

/* kvp_pool_flush_tiers: without KVP_POOL_FLUSH_CACHED cached pages stay unwritten (a fresh pool
 * finds nothing); with it every cached prefix is written and a fresh pool over the same
 * directory restores it; unknown flags change nothing. */
static void test_pool_tiers__flush_cached_persists_the_prefix_cache(void **state) {
  (void)state;
  char dir[64];
  kvp_store *store = make_dir_store(dir);
  kvp_cache *c = make_cache(KVP_DTYPE_F32, NP, 1);
  kvp_pool *p = make_pool(c, store);
  int32_t a[13];
  prompt(a, 13, 1000);
  kvp_seq_id s = kvp_test_run_prompt(p, c, a, 13, 7, 0, NULL); /* in use: cached pages too */
  assert_kvp_ok(kvp_pool_flush_tiers(p, 0));
  assert_int_equal(tier(p, 0).blocks_written, 0);
  assert_int_equal(store_puts(store), 0);
  kvp_cache *c2 = make_cache(KVP_DTYPE_F32, NP, 1);
  kvp_pool *p2 = make_pool(c2, store);
  size_t reused = 99;
  assert_kvp_ok(kvp_pool_free_sequence(p2, kvp_test_run_prompt(p2, c2, a, 13, 7, 0, &reused)));
  assert_int_equal(reused, 0);
  assert_kvp_ok(kvp_pool_destroy(p2));
  /* bad flags: nothing written or changed */
  const kvp_pool_tier_stats before = tier(p, 0);
  assert_kvp_status(kvp_pool_flush_tiers(p, 2), KVP_ERR_INVALID_ARGUMENT, "unknown flags 0x2");
  kvp_pool_tier_stats after = tier(p, 0);
  assert_memory_equal(&before, &after, sizeof before);
  assert_int_equal(store_puts(store), 0);
  /* the cached prefix persisted: a fresh pool (as after a restart) restores it */
  assert_kvp_ok(kvp_pool_flush_tiers(p, KVP_POOL_FLUSH_CACHED));
  assert_int_equal(tier(p, 0).blocks_written, 3);
  assert_int_equal(store_puts(store), 3);
  assert_kvp_ok(kvp_pool_free_sequence(p, s));
  assert_kvp_ok(kvp_pool_check_invariants(p));
  assert_kvp_ok(kvp_pool_destroy(p));
  assert_kvp_ok(kvp_cache_destroy(c));
  assert_kvp_ok(kvp_cache_destroy(c2));
  expect_new_pool_restores_a(store, a);
  assert_kvp_ok(kvp_store_destroy(store));
  remove_dir(dir);
}

int main(void) {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(test_pool_tiers__evicted_pages_come_back),
      T(test_pool_tiers__restore_continues_an_in_memory_match),
      T(test_pool_tiers__other_salt_or_tokens_miss),
      T(test_pool_tiers__another_config_is_a_miss),
      T(test_pool_tiers__plugin_tier_and_damaged_blocks),
      T(test_pool_tiers__directory_tier_survives_restart),
      T(test_pool_tiers__sharded_pool_restores_into_the_shard),
      T(test_pool_tiers__bad_input_changes_nothing),
      T(test_pool_tiers__two_pools_share_a_store_at_once),
      T(test_pool_tiers__blocked_store_does_not_block_append),
      T(test_pool_tiers__destroy_drains_pending_writes),
      T(test_pool_tiers__directory_tier_async_no_rewrite),
      T(test_pool_tiers__flush_cached_persists_the_prefix_cache),
      T(test_pool_tiers__every_tier_receives_evictions),
      T(test_pool_tiers__flush_cached_fills_every_tier),
      cmocka_unit_test(test_pool_tiers__flush_cached_skips_blocks_a_tier_holds),
      cmocka_unit_test(test_pool_tiers__flush_cached_writes_when_exists_fails),
      cmocka_unit_test(test_pool_tiers__memory_tier_restores_groups_of_large_blocks),
      cmocka_unit_test(test_pool_tiers__directory_tier_restores_groups_of_large_blocks),
  };
#undef T
  return cmocka_run_group_tests(tests, NULL, NULL);
}
