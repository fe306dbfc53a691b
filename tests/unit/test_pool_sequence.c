/* Unit tests of per-sequence save and restore (kvp_pool_save_sequence, kvp_pool_restore_sequence
 * and their file forms): a sequence restored into another pool (other page ids, other shards)
 * holds every byte of every page it was saved with, shares the full pages the pool already has,
 * and is indexed for later prompts; a partial last page and an empty sequence come back; every
 * bad input and every damaged byte class is refused with its status and message, leaving the
 * pool exactly as it was. K/V is "computed" by a deterministic function of the tokens a page
 * ends with. */
#include "prompt_pages.h"
#include "support.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "kvpages/pool.h"

#define LAYERS 2
#define HEADS 2
#define HDIM 64
#define PS 4  /* page size */
#define NP 16 /* pages including the null page */
#define MAXLEN 64
#define HDR 64 /* the blob's header */

static kvp_cache *make_cache_ps(kvp_dtype dtype, int64_t page_size, int64_t num_pages, int64_t dp, int64_t max_len) {
  kvp_config cfg = kvp_test_config_len(LAYERS, HEADS, HDIM, page_size, num_pages, dtype, KVP_LAYOUT_V3, max_len);
  cfg.data_parallel_size = dp;
  kvp_cache *c = NULL;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &c));
  return c;
}

static kvp_cache *make_cache(int64_t num_pages, int64_t dp) {
  return make_cache_ps(KVP_DTYPE_F32, PS, num_pages, dp, MAXLEN);
}

static kvp_pool *make_pool(kvp_cache *c) {
  kvp_pool *p = NULL;
  assert_kvp_ok(kvp_pool_create(c, NULL, &p));
  return p;
}

/* Destroys a pool, then its cache. */
static void destroy(kvp_pool *p, kvp_cache *c) {
  assert_kvp_ok(kvp_pool_destroy(p));
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void prompt(int32_t *t, size_t n, int32_t base) {
  for (size_t i = 0; i < n; ++i) t[i] = base + (int32_t)i;
}

static size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

/* Adds a prompt, "computes" every page it did not reuse (a partial last page too) and declares
 * every token computed. */
static kvp_seq_id run_prompt(kvp_pool *p, kvp_cache *c, const int32_t *tokens, size_t n, uint64_t salt, uint32_t flags) {
  kvp_seq_id s = {0};
  size_t reused = 0;
  assert_kvp_ok(kvp_pool_add_sequence(p, tokens, n, salt, flags | KVP_POOL_ADD_FLAG_REUSE_ALL, &s, &reused));
  for (size_t i = reused / PS; i * PS < n; ++i)
    for (uint32_t l = 0; l < LAYERS; ++l) {
      size_t nb;
      uint8_t *dst = kvp_test_page_bytes(c, l, kvp_test_page_of(p, s, i), &nb);
      kvp_test_prompt_kv(tokens, min_sz((i + 1) * PS, n), l, dst, nb);
    }
  assert_kvp_ok(kvp_pool_set_computed(p, s, n));
  assert_kvp_ok(kvp_pool_check_invariants(p));
  return s;
}

/* Sequence s of pool p holds n tokens, all computed, with the token ids and the K/V of `tokens`. */
static void expect_sequence(const kvp_pool *p, kvp_cache *c, kvp_seq_id s, const int32_t *tokens, size_t n) {
  size_t len = 0, computed = 0;
  assert_kvp_ok(kvp_pool_get_sequence_length(p, s, &len, &computed));
  assert_int_equal(len, n);
  assert_int_equal(computed, n);
  uint8_t want[1 << 14];
  for (size_t i = 0; i * PS < n; ++i)
    for (uint32_t l = 0; l < LAYERS; ++l) {
      size_t nb;
      const uint8_t *got = kvp_test_page_bytes(c, l, kvp_test_page_of(p, s, i), &nb);
      assert_true(nb <= sizeof want);
      kvp_test_prompt_kv(tokens, min_sz((i + 1) * PS, n), l, want, nb);
      assert_memory_equal(got, want, nb);
    }
}

/* Saves a sequence to a new test_malloc'ed blob (size-then-fill). */
static uint8_t *save(kvp_pool *p, kvp_seq_id s, size_t *size) {
  *size = 0;
  assert_kvp_status(kvp_pool_save_sequence(p, s, NULL, 0, size), KVP_ERR_BUFFER_TOO_SMALL, "capacity is 0");
  assert_true(*size >= HDR);
  uint8_t *blob = (uint8_t *)test_malloc(*size);
  size_t again = 0;
  assert_kvp_ok(kvp_pool_save_sequence(p, s, blob, *size, &again));
  assert_int_equal(again, *size);
  return blob;
}

/* What the pool looks like from outside: stats and every page's refcount and flags. */
typedef struct snapshot {
  kvp_pool_stats st;
  uint32_t ref[4 * NP], flags[4 * NP];
} snapshot;

static void snap(const kvp_pool *p, snapshot *s) {
  memset(s, 0, sizeof *s);
  s->st.struct_size = sizeof s->st;
  assert_kvp_ok(kvp_pool_get_stats(p, &s->st));
  assert_true(s->st.total_pages + 1 <= 4 * NP);
  for (int32_t i = 0; i <= s->st.total_pages; ++i)
    assert_kvp_ok(kvp_pool_get_page_state(p, i, &s->ref[i], &s->flags[i]));
}

static void expect_unchanged(const kvp_pool *p, const snapshot *before) {
  snapshot now;
  snap(p, &now);
  assert_memory_equal(&now, before, sizeof now);
  assert_kvp_ok(kvp_pool_check_invariants(p));
}

/* A restore of `blob` into p fails with `code` and `msg`, and changes nothing. */
static void expect_refused(kvp_pool *p, const uint8_t *blob, size_t size, uint32_t flags, kvp_status code,
                           const char *msg) {
  snapshot before;
  snap(p, &before);
  kvp_seq_id s = {12345};
  assert_kvp_status(kvp_pool_restore_sequence(p, blob, size, flags, &s), code, msg);
  assert_int_equal(s.id, 12345);
  expect_unchanged(p, &before);
}

static void put64le(uint8_t *b, uint64_t v) {
  for (int i = 0; i < 8; ++i) b[i] = (uint8_t)(v >> (8 * i));
}

static void reseal_header(uint8_t *blob) { put64le(blob + 56, XXH3_64bits(blob, 56)); }

/* ---- tests -------------------------------------------------------------------------------- */

static void test_pool_sequence__round_trip_into_another_pool(void **state) {
  (void)state;
  kvp_cache *ca = make_cache(NP, 1), *cb = make_cache(NP, 1);
  kvp_pool *pa = make_pool(ca), *pb = make_pool(cb);
  int32_t a[14], filler[9];
  prompt(a, 14, 1000); /* 3 full pages and 2 tokens */
  prompt(filler, 9, 7000);
  kvp_seq_id sa = run_prompt(pa, ca, a, 14, 5, 0);
  size_t size = 0;
  uint8_t *blob = save(pa, sa, &size);
  /* a file of the same size: one header and 4 blocks */
  assert_int_equal((size - HDR) % 4, 0);
  /* pool B has another allocation history: its first pages are taken */
  kvp_seq_id fb = run_prompt(pb, cb, filler, 9, 5, 0);
  kvp_seq_id sb = {0};
  assert_kvp_ok(kvp_pool_restore_sequence(pb, blob, size, 0, &sb));
  assert_kvp_ok(kvp_pool_check_invariants(pb));
  expect_sequence(pb, cb, sb, a, 14);
  for (size_t i = 0; i < 4; ++i) assert_int_not_equal(kvp_test_page_of(pb, sb, i), kvp_test_page_of(pa, sa, i));
  /* every byte of every page, rows past the end of the last page included */
  for (size_t i = 0; i < 4; ++i)
    for (uint32_t l = 0; l < LAYERS; ++l) {
      size_t na, nb;
      const uint8_t *x = kvp_test_page_bytes(ca, l, kvp_test_page_of(pa, sa, i), &na);
      const uint8_t *y = kvp_test_page_bytes(cb, l, kvp_test_page_of(pb, sb, i), &nb);
      assert_memory_equal(x, y, na);
    }
  /* the restored pages are indexed: a later prompt with that prefix hits them */
  kvp_seq_id s2 = {0};
  size_t reused = 0;
  int32_t longer[17];
  memcpy(longer, a, sizeof a);
  prompt(longer + 14, 3, 90);
  assert_kvp_ok(kvp_pool_add_sequence(pb, a, 13, 5, 0, &s2, &reused));
  assert_int_equal(reused, 3 * PS);
  for (size_t i = 0; i < 3; ++i) assert_int_equal(kvp_test_page_of(pb, s2, i), kvp_test_page_of(pb, sb, i));
  /* the restored sequence goes on like any other: append, save again (same bytes), free */
  assert_kvp_ok(kvp_pool_append(pb, sb, longer + 14, 3, NULL));
  assert_kvp_ok(kvp_pool_truncate(pb, sb, 14));
  size_t size2 = 0;
  uint8_t *blob2 = save(pb, sb, &size2);
  assert_int_equal(size2, size);
  assert_memory_equal(blob2, blob, size);
  assert_kvp_ok(kvp_pool_free_sequence(pb, sb));
  assert_kvp_ok(kvp_pool_free_sequence(pb, s2));
  assert_kvp_ok(kvp_pool_free_sequence(pb, fb));
  assert_kvp_ok(kvp_pool_check_invariants(pb));
  test_free(blob2);
  test_free(blob);
  destroy(pa, ca);
  destroy(pb, cb);
}

static void test_pool_sequence__shares_the_pages_the_pool_has(void **state) {
  (void)state;
  kvp_cache *ca = make_cache(NP, 1), *cb = make_cache(NP, 1);
  kvp_pool *pa = make_pool(ca), *pb = make_pool(cb);
  int32_t a[12];
  prompt(a, 12, 300);
  size_t size = 0;
  uint8_t *blob = save(pa, run_prompt(pa, ca, a, 12, 9, 0), &size);
  /* pool B already computed the first two pages (salt 9) */
  kvp_seq_id pre = run_prompt(pb, cb, a, 8, 9, 0);
  snapshot before;
  snap(pb, &before);
  kvp_seq_id s = {0};
  assert_kvp_ok(kvp_pool_restore_sequence(pb, blob, size, 0, &s));
  expect_sequence(pb, cb, s, a, 12);
  uint32_t ref = 0, flags = 0;
  for (size_t i = 0; i < 2; ++i) {
    assert_int_equal(kvp_test_page_of(pb, s, i), kvp_test_page_of(pb, pre, i));
    assert_kvp_ok(kvp_pool_get_page_state(pb, kvp_test_page_of(pb, s, i), &ref, &flags));
    assert_int_equal(ref, 2);
  }
  assert_kvp_ok(kvp_pool_get_page_state(pb, kvp_test_page_of(pb, s, 2), &ref, &flags));
  assert_int_equal(ref, 1);
  assert_true((flags & KVP_PAGE_FLAG_INDEXED) != 0);
  kvp_pool_stats st = KVP_POOL_STATS_INIT;
  assert_kvp_ok(kvp_pool_get_stats(pb, &st));
  assert_int_equal(st.used_pages, before.st.used_pages + 1);
  assert_int_equal(st.indexed_pages, 3);
  assert_int_equal(st.prompt_tokens, before.st.prompt_tokens); /* a restore is no prompt */
  /* an evictable cached page is shared too; another salt shares nothing */
  assert_kvp_ok(kvp_pool_free_sequence(pb, s));
  assert_kvp_ok(kvp_pool_free_sequence(pb, pre));
  assert_kvp_ok(kvp_pool_get_stats(pb, &st));
  assert_int_equal(st.evictable_pages, 3);
  assert_kvp_ok(kvp_pool_restore_sequence(pb, blob, size, 0, &s));
  assert_kvp_ok(kvp_pool_get_stats(pb, &st));
  assert_int_equal(st.evictable_pages, 0);
  assert_int_equal(st.used_pages, 3);
  kvp_seq_id other = run_prompt(pb, cb, a, 12, 10, 0);
  assert_int_not_equal(kvp_test_page_of(pb, other, 0), kvp_test_page_of(pb, s, 0));
  assert_kvp_ok(kvp_pool_check_invariants(pb));
  test_free(blob);
  destroy(pa, ca);
  destroy(pb, cb);
}

static void test_pool_sequence__lengths_at_the_edges(void **state) {
  (void)state;
  kvp_cache *c = make_cache(NP, 1);
  kvp_pool *p = make_pool(c);
  const size_t lengths[] = {0, 1, PS - 1, PS, PS + 1, 2 * PS};
  int32_t a[2 * PS];
  prompt(a, 2 * PS, 40);
  size_t block = 0;
  for (size_t k = 0; k < sizeof lengths / sizeof lengths[0]; ++k) {
    const size_t n = lengths[k];
    kvp_seq_id s = run_prompt(p, c, a, n, 3, 0);
    size_t size = 0;
    uint8_t *blob = save(p, s, &size);
    const size_t pages = (n + PS - 1) / PS;
    if (pages == 1) block = size - HDR;
    if (n == 0) assert_int_equal(size, HDR);
    else if (block > 0) assert_int_equal(size, HDR + pages * block);
    assert_kvp_ok(kvp_pool_free_sequence(p, s));
    /* the pool B of this test: the same pool, with the pages now cached or free */
    kvp_seq_id r = {0};
    assert_kvp_ok(kvp_pool_restore_sequence(p, blob, size, 0, &r));
    expect_sequence(p, c, r, a, n);
    assert_kvp_ok(kvp_pool_check_invariants(p));
    assert_kvp_ok(kvp_pool_free_sequence(p, r));
    test_free(blob);
  }
  destroy(p, c);
}

static void test_pool_sequence__file_round_trip(void **state) {
  (void)state;
  kvp_cache *ca = make_cache(NP, 1), *cb = make_cache(NP, 1);
  kvp_pool *pa = make_pool(ca), *pb = make_pool(cb);
  int32_t a[10];
  prompt(a, 10, 77);
  kvp_seq_id sa = run_prompt(pa, ca, a, 10, 1, 0);
  char dir[64], path[96];
  snprintf(dir, sizeof dir, "/tmp/kvp_test_seq_XXXXXX");
  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/seq.kvpq", dir);
  /* an existing file keeps its mode */
  FILE *old = fopen(path, "w");
  assert_non_null(old);
  fputs("old", old);
  fclose(old);
  assert_int_equal(chmod(path, 0640), 0);
  assert_kvp_ok(kvp_pool_save_sequence_to_file(pa, sa, path, 0));
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0640);
  size_t size = 0;
  uint8_t *blob = save(pa, sa, &size);
  assert_int_equal((size_t)st.st_size, size);
  FILE *f = fopen(path, "rb");
  uint8_t *file = (uint8_t *)test_malloc(size);
  assert_int_equal(fread(file, 1, size, f), size);
  fclose(f);
  assert_memory_equal(file, blob, size); /* the file is the blob */
  kvp_seq_id sb = {0};
  assert_kvp_ok(kvp_pool_restore_sequence_from_file(pb, path, 0, &sb));
  expect_sequence(pb, cb, sb, a, 10);
  /* NO_SYNC writes the same bytes */
  assert_kvp_ok(kvp_pool_save_sequence_to_file(pb, sb, path, KVP_POOL_SAVE_FLAG_NO_SYNC));
  f = fopen(path, "rb");
  assert_int_equal(fread(file, 1, size, f), size);
  fclose(f);
  assert_memory_equal(file, blob, size);
  /* bad input: nothing changes, an existing file stays */
  snapshot before;
  snap(pb, &before);
  kvp_seq_id s = {12345};
  assert_kvp_status(kvp_pool_save_sequence_to_file(pb, sb, NULL, 0), KVP_ERR_INVALID_ARGUMENT, "'path'");
  assert_kvp_status(kvp_pool_save_sequence_to_file(pb, sb, "", 0), KVP_ERR_INVALID_ARGUMENT, "'path'");
  assert_kvp_status(kvp_pool_save_sequence_to_file(pb, sb, path, 2), KVP_ERR_INVALID_ARGUMENT, "unknown flags 0x2");
  assert_kvp_status(kvp_pool_save_sequence_to_file(pb, sb, "/nonexistent-dir/x", 0), KVP_ERR_IO, "nonexistent");
  assert_kvp_status(kvp_pool_restore_sequence_from_file(pb, NULL, 0, &s), KVP_ERR_INVALID_ARGUMENT, "'path'");
  assert_kvp_status(kvp_pool_restore_sequence_from_file(pb, path, 0, NULL), KVP_ERR_INVALID_ARGUMENT, "seq_out");
  assert_kvp_status(kvp_pool_restore_sequence_from_file(pb, path, 1u << 5, &s), KVP_ERR_INVALID_ARGUMENT,
                    "unknown flags");
  assert_kvp_status(kvp_pool_restore_sequence_from_file(pb, "/nonexistent-dir/x", 0, &s), KVP_ERR_IO, "cannot open");
  assert_kvp_status(kvp_pool_restore_sequence_from_file(pb, dir, 0, &s), KVP_ERR_IO, "");
  /* a truncated file and a file with a byte more */
  assert_int_equal(truncate(path, (off_t)size - 1), 0);
  assert_kvp_status(kvp_pool_restore_sequence_from_file(pb, path, 0, &s), KVP_ERR_FORMAT_TRUNCATED, "truncated");
  assert_int_equal(truncate(path, 10), 0);
  assert_kvp_status(kvp_pool_restore_sequence_from_file(pb, path, 0, &s), KVP_ERR_FORMAT_TRUNCATED, "header");
  f = fopen(path, "wb");
  fwrite(blob, 1, size, f);
  fputc(0, f);
  fclose(f);
  assert_kvp_status(kvp_pool_restore_sequence_from_file(pb, path, 0, &s), KVP_ERR_FORMAT_CORRUPT, "follow");
  assert_int_equal(s.id, 12345);
  expect_unchanged(pb, &before);
  unlink(path);
  rmdir(dir);
  test_free(file);
  test_free(blob);
  destroy(pa, ca);
  destroy(pb, cb);
}

static void test_pool_sequence__bad_input_changes_nothing(void **state) {
  (void)state;
  kvp_cache *c = make_cache(NP, 1);
  kvp_pool *p = make_pool(c);
  int32_t a[10];
  prompt(a, 10, 77);
  kvp_seq_id s = run_prompt(p, c, a, 10, 1, 0);
  size_t size = 0;
  uint8_t *blob = save(p, s, &size);
  snapshot before;
  snap(p, &before);
  /* save */
  size_t got = 99;
  uint8_t small[HDR];
  memset(small, 0xAB, sizeof small);
  assert_kvp_status(kvp_pool_save_sequence(NULL, s, small, sizeof small, &got), KVP_ERR_INVALID_HANDLE, "");
  assert_kvp_status(kvp_pool_save_sequence(p, s, small, sizeof small, NULL), KVP_ERR_INVALID_ARGUMENT, "size_out");
  assert_kvp_status(kvp_pool_save_sequence(p, s, NULL, 5, &got), KVP_ERR_INVALID_ARGUMENT, "'dst'");
  assert_kvp_status(kvp_pool_save_sequence(p, s, small, sizeof small, &got), KVP_ERR_BUFFER_TOO_SMALL,
                    "capacity is 64");
  assert_int_equal(got, size);
  for (size_t i = 0; i < sizeof small; ++i) assert_int_equal(small[i], 0xAB);
  kvp_seq_id s2 = {0};
  assert_kvp_ok(kvp_pool_fork(p, s, 1, &s2));
  assert_kvp_ok(kvp_pool_free_sequence(p, s2));
  assert_kvp_status(kvp_pool_save_sequence(p, s2, small, sizeof small, &got), KVP_ERR_NOT_FOUND, "stale");
  assert_kvp_status(kvp_pool_save_sequence_to_file(p, s2, "/tmp/x", 0), KVP_ERR_NOT_FOUND, "stale");
  /* a sequence whose tokens are not all computed is refused */
  kvp_seq_id half = {0};
  int32_t b[6];
  prompt(b, 6, 900);
  assert_kvp_ok(kvp_pool_add_sequence(p, b, 6, 1, 0, &half, NULL));
  assert_kvp_ok(kvp_pool_set_computed(p, half, 4));
  assert_kvp_status(kvp_pool_save_sequence(p, half, blob, size, &got), KVP_ERR_INVALID_ARGUMENT,
                    "only 4 of the sequence's 6 tokens are computed");
  assert_kvp_status(kvp_pool_save_sequence_to_file(p, half, "/tmp/x", 0), KVP_ERR_INVALID_ARGUMENT, "computed");
  assert_kvp_ok(kvp_pool_free_sequence(p, half));
  /* restore */
  snap(p, &before);
  kvp_seq_id r = {12345};
  assert_kvp_status(kvp_pool_restore_sequence(NULL, blob, size, 0, &r), KVP_ERR_INVALID_HANDLE, "");
  assert_kvp_status(kvp_pool_restore_sequence(p, blob, size, 0, NULL), KVP_ERR_INVALID_ARGUMENT, "seq_out");
  expect_refused(p, NULL, size, 0, KVP_ERR_INVALID_ARGUMENT, "'src'");
  expect_refused(p, NULL, 0, 0, KVP_ERR_FORMAT_TRUNCATED, "header");
  expect_refused(p, blob, size, KVP_POOL_ADD_FLAG_REUSE_ALL, KVP_ERR_INVALID_ARGUMENT, "unknown flags 0x1");
  expect_refused(p, blob, size, 1u << 16, KVP_ERR_INVALID_ARGUMENT, "unknown flags");
  expect_refused(p, blob, size, KVP_POOL_ADD_IN_SHARD(1), KVP_ERR_INVALID_ARGUMENT, "shard 1 is out of range");
  assert_int_equal(r.id, 12345);
  expect_unchanged(p, &before);
  test_free(blob);
  destroy(p, c);
}

static void test_pool_sequence__damaged_blobs_change_nothing(void **state) {
  (void)state;
  kvp_cache *c = make_cache(NP, 1);
  kvp_pool *p = make_pool(c);
  int32_t a[14];
  prompt(a, 14, 1000);
  kvp_seq_id s = run_prompt(p, c, a, 14, 5, 0);
  size_t size = 0;
  uint8_t *blob = save(p, s, &size);
  const size_t block = (size - HDR) / 4, data = 128; /* a block's layer bytes start at 128 for PS 4 */
  uint8_t *bad = (uint8_t *)test_malloc(size + 1);
  /* truncated anywhere, or a byte more */
  const size_t cuts[] = {0, 1, HDR - 1, HDR, HDR + block - 1, size - 1};
  for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; ++k)
    expect_refused(p, blob, cuts[k], 0, KVP_ERR_FORMAT_TRUNCATED, "truncated");
  memcpy(bad, blob, size);
  bad[size] = 0;
  expect_refused(p, bad, size + 1, 0, KVP_ERR_FORMAT_CORRUPT, "1 byte(s) follow");
  /* a bit flipped in the header: magic, then every other header byte (the header checksum) */
  for (size_t at = 0; at < HDR; ++at) {
    memcpy(bad, blob, size);
    bad[at] ^= 0x10;
    expect_refused(p, bad, size, 0, at < 4 ? KVP_ERR_FORMAT_MAGIC : at < 8 ? KVP_ERR_FORMAT_VERSION
                                                                           : KVP_ERR_FORMAT_CHECKSUM,
                   at < 4 ? "magic" : at < 8 ? "version" : "header checksum");
  }
  /* header fields that are wrong but sealed: other version, token count, block count */
  memcpy(bad, blob, size);
  bad[4] = 2;
  reseal_header(bad);
  expect_refused(p, bad, size, 0, KVP_ERR_FORMAT_VERSION, "version 2");
  memcpy(bad, blob, size);
  put64le(bad + 24, 13); /* one token fewer: the last block holds a token past the end */
  reseal_header(bad);
  expect_refused(p, bad, size, 0, KVP_ERR_FORMAT_CORRUPT, "where 0 belongs");
  memcpy(bad, blob, size);
  put64le(bad + 24, 17);
  reseal_header(bad);
  expect_refused(p, bad, size, 0, KVP_ERR_FORMAT_CORRUPT, "17 token(s) in 4 block(s)");
  memcpy(bad, blob, size);
  put64le(bad + 48, 1ull << 60);
  put64le(bad + 24, (1ull << 60) * PS);
  reseal_header(bad);
  expect_refused(p, bad, size, 0, KVP_ERR_FORMAT_TRUNCATED, "truncated");
  memcpy(bad, blob, size);
  put64le(bad + 16, 6); /* another salt: the blocks' keys and salt no longer match */
  reseal_header(bad);
  expect_refused(p, bad, size, 0, KVP_ERR_FORMAT_CORRUPT, "block 0 of 4");
  /* a bit flipped in a block: its header, its token ids, its layer bytes, its checksum */
  const size_t in_block[] = {0, 9, 20, 60, 72, 80, data, data + 1000, block - 1};
  const kvp_status want[] = {KVP_ERR_FORMAT_MAGIC, KVP_ERR_FORMAT_MISMATCH, KVP_ERR_FORMAT_CORRUPT,
                             KVP_ERR_FORMAT_CORRUPT, KVP_ERR_FORMAT_CORRUPT, KVP_ERR_FORMAT_CORRUPT,
                             KVP_ERR_FORMAT_CHECKSUM, KVP_ERR_FORMAT_CHECKSUM, KVP_ERR_FORMAT_CHECKSUM};
  for (size_t b = 0; b < 4; ++b)
    for (size_t k = 0; k < sizeof in_block / sizeof in_block[0]; ++k) {
      memcpy(bad, blob, size);
      bad[HDR + b * block + in_block[k]] ^= 0x01;
      char msg[64];
      snprintf(msg, sizeof msg, "block %zu of 4", b);
      expect_refused(p, bad, size, 0, want[k], b == 3 && in_block[k] == 80 ? "where 0 belongs" : msg);
    }
  /* two blocks swapped: the prefix chain breaks */
  memcpy(bad, blob, size);
  memcpy(bad + HDR, blob + HDR + block, block);
  memcpy(bad + HDR + block, blob + HDR, block);
  expect_refused(p, bad, size, 0, KVP_ERR_FORMAT_CORRUPT, "block 0 of 4");
  /* the undamaged blob still restores */
  kvp_seq_id r = {0};
  assert_kvp_ok(kvp_pool_restore_sequence(p, blob, size, 0, &r));
  expect_sequence(p, c, r, a, 14);
  test_free(bad);
  test_free(blob);
  destroy(p, c);
}

/* Blocks of half a MiB (2 layers, 8 heads x 128, page 32, f32): saved and checked on the
 * library's threads. The blob restores into another pool with the computed bytes and is saved
 * from there byte for byte the same; with two damaged blocks the first in block order is named,
 * and nothing changes. */
static void test_pool_sequence__large_blocks_on_threads(void **state) {
  (void)state;
  enum { BPS = 32, BNP = 12, LEN = 4 * BPS + 5 };
  const kvp_config cfg = kvp_test_config_len(2, 8, 128, BPS, BNP, KVP_DTYPE_F32, KVP_LAYOUT_V3, 512);
  kvp_cache *ca = NULL, *cb = NULL;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &ca));
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &cb));
  kvp_pool *pa = make_pool(ca), *pb = make_pool(cb);
  int32_t a[LEN];
  for (size_t i = 0; i < LEN; ++i) a[i] = 300 + (int32_t)i;
  const kvp_seq_id s = kvp_test_run_prompt(pa, ca, a, LEN, 5, 0, NULL);
  size_t size = 0, size2 = 0;
  assert_kvp_status(kvp_pool_save_sequence(pa, s, NULL, 0, &size), KVP_ERR_BUFFER_TOO_SMALL, "capacity is 0");
  const size_t block = (size - HDR) / 5;
  assert_true(block > (512u << 10));
  uint8_t *blob = (uint8_t *)test_malloc(size), *again = (uint8_t *)test_malloc(size);
  assert_kvp_ok(kvp_pool_save_sequence(pa, s, blob, size, &size));
  kvp_seq_id r = {0};
  assert_kvp_ok(kvp_pool_restore_sequence(pb, blob, size, 0, &r));
  kvp_test_expect_prompt_kv(pb, cb, r, a, 4);
  assert_kvp_ok(kvp_pool_save_sequence(pb, r, again, size, &size2));
  assert_int_equal(size2, size);
  assert_memory_equal(blob, again, size);
  assert_kvp_ok(kvp_pool_free_sequence(pb, r));
  blob[HDR + 3 * block + 1000] ^= 0x01;
  blob[HDR + 2 * block + 1000] ^= 0x01;
  expect_refused(pb, blob, size, 0, KVP_ERR_FORMAT_CHECKSUM, "block 2 of 5");
  test_free(again);
  test_free(blob);
  destroy(pa, ca);
  destroy(pb, cb);
}

static void test_pool_sequence__another_config_is_refused(void **state) {
  (void)state;
  kvp_cache *c = make_cache(NP, 1);
  kvp_pool *p = make_pool(c);
  int32_t a[14];
  prompt(a, 14, 1000);
  size_t size = 0;
  uint8_t *blob = save(p, run_prompt(p, c, a, 14, 5, 0), &size);
  kvp_cache *others[] = {make_cache_ps(KVP_DTYPE_F16, PS, NP, 1, MAXLEN), make_cache_ps(KVP_DTYPE_F32, 8, NP, 1, MAXLEN)};
  const char *msgs[] = {"another config", "page size 4"};
  for (size_t k = 0; k < 2; ++k) {
    kvp_pool *q = make_pool(others[k]);
    expect_refused(q, blob, size, 0, KVP_ERR_FORMAT_MISMATCH, msgs[k]);
    destroy(q, others[k]);
  }
  /* the same model with a shorter max_model_length: the sequence does not fit */
  kvp_cache *shortc = make_cache_ps(KVP_DTYPE_F32, PS, NP, 1, 8);
  kvp_pool *q = make_pool(shortc);
  expect_refused(q, blob, size, 0, KVP_ERR_INVALID_ARGUMENT, "max_model_length 8");
  destroy(q, shortc);
  test_free(blob);
  destroy(p, c);
}

static void test_pool_sequence__out_of_pages_or_slots_changes_nothing(void **state) {
  (void)state;
  kvp_cache *c = make_cache(NP, 1);
  kvp_pool *p = make_pool(c);
  int32_t a[14], b[12 * PS];
  prompt(a, 14, 1000);
  prompt(b, 12 * PS, 5000);
  kvp_seq_id s = run_prompt(p, c, a, 14, 5, 0);
  size_t size = 0;
  uint8_t *blob = save(p, s, &size);
  /* 15 usable pages: A holds 4, B takes 11 more: nothing left but A's pages */
  kvp_seq_id sb = run_prompt(p, c, b, 11 * PS, 5, 0);
  /* A's 3 full pages are shared, its partial last page needs a fresh one */
  expect_refused(p, blob, size, 0, KVP_ERR_OUT_OF_PAGES, "needs 1 new page(s) for 14 tokens (12 shared)");
  assert_kvp_ok(kvp_pool_truncate(p, sb, 10 * PS));
  kvp_seq_id r = {0};
  assert_kvp_ok(kvp_pool_restore_sequence(p, blob, size, 0, &r));
  expect_sequence(p, c, r, a, 14);
  assert_kvp_ok(kvp_pool_free_sequence(p, r));
  assert_kvp_ok(kvp_pool_free_sequence(p, sb));
  assert_kvp_ok(kvp_pool_free_sequence(p, s));
  assert_kvp_ok(kvp_pool_destroy(p));
  /* every sequence slot in use */
  kvp_pool_options o = KVP_POOL_OPTIONS_INIT;
  o.max_sequences = 1;
  assert_kvp_ok(kvp_pool_create(c, &o, &p));
  s = run_prompt(p, c, a, 14, 5, 0);
  expect_refused(p, blob, size, 0, KVP_ERR_OUT_OF_PAGES, "sequence slots");
  assert_kvp_ok(kvp_pool_destroy(p));
  test_free(blob);
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void test_pool_sequence__sharded_pool_restores_into_the_shard(void **state) {
  (void)state;
  kvp_cache *ca = make_cache(NP, 1), *cb = make_cache(2 * NP, 2); /* shards [1, 16) and [16, 32) */
  kvp_pool *pa = make_pool(ca), *pb = make_pool(cb);
  int32_t a[14];
  prompt(a, 14, 1000);
  size_t size = 0;
  uint8_t *blob = save(pa, run_prompt(pa, ca, a, 14, 5, 0), &size);
  for (uint32_t shard = 0; shard < 2; ++shard) {
    kvp_seq_id r = {0};
    assert_kvp_ok(kvp_pool_restore_sequence(pb, blob, size, KVP_POOL_ADD_IN_SHARD(shard), &r));
    uint32_t got = 99;
    assert_kvp_ok(kvp_pool_get_sequence_shard(pb, r, &got));
    assert_int_equal(got, shard);
    for (size_t i = 0; i < 4; ++i) {
      assert_true(kvp_test_page_of(pb, r, i) >= (shard == 0 ? 1 : NP));
      assert_true(kvp_test_page_of(pb, r, i) < (int32_t)((shard + 1) * NP));
    }
    expect_sequence(pb, cb, r, a, 14);
  }
  /* without a forced shard it goes where its prefix is (both shards hold it: the roomier) */
  kvp_seq_id r = {0};
  assert_kvp_ok(kvp_pool_restore_sequence(pb, blob, size, 0, &r));
  uint32_t got = 99;
  assert_kvp_ok(kvp_pool_get_sequence_shard(pb, r, &got));
  assert_int_equal(got, 1);
  uint32_t ref = 0;
  assert_kvp_ok(kvp_pool_get_page_state(pb, kvp_test_page_of(pb, r, 0), &ref, NULL));
  assert_int_equal(ref, 2);
  expect_refused(pb, blob, size, KVP_POOL_ADD_IN_SHARD(2), KVP_ERR_INVALID_ARGUMENT, "2 data-parallel shard(s)");
  assert_kvp_ok(kvp_pool_check_invariants(pb));
  test_free(blob);
  destroy(pa, ca);
  destroy(pb, cb);
}

static void test_pool_sequence__pool_without_prefix_cache(void **state) {
  (void)state;
  kvp_cache *c = make_cache(NP, 1);
  kvp_pool_options o = KVP_POOL_OPTIONS_INIT;
  o.flags = KVP_POOL_FLAG_NO_PREFIX_CACHE;
  kvp_pool *p = NULL;
  assert_kvp_ok(kvp_pool_create(c, &o, &p));
  int32_t a[9];
  prompt(a, 9, 50);
  kvp_seq_id s = run_prompt(p, c, a, 9, 0, 0);
  size_t size = 0;
  uint8_t *blob = save(p, s, &size);
  kvp_seq_id r = {0};
  assert_kvp_ok(kvp_pool_restore_sequence(p, blob, size, 0, &r));
  expect_sequence(p, c, r, a, 9);
  assert_int_not_equal(kvp_test_page_of(p, r, 0), kvp_test_page_of(p, s, 0)); /* nothing indexed, nothing shared */
  kvp_pool_stats st = KVP_POOL_STATS_INIT;
  assert_kvp_ok(kvp_pool_get_stats(p, &st));
  assert_int_equal(st.indexed_pages, 0);
  assert_kvp_ok(kvp_pool_check_invariants(p));
  test_free(blob);
  destroy(p, c);
}

/* ---- the golden blob (tests/data/sequence-v1, README there) ------------------------------------ */

#ifndef KVP_TEST_DATA_DIR
#define KVP_TEST_DATA_DIR "tests/data"
#endif

static unsigned char golden_byte(uint32_t layer, uint64_t page, uint64_t offset) {
  uint64_t v = (uint64_t)layer * 1000003u + page * 10007u + offset * 31u;
  return (unsigned char)((v ^ (v >> 7)) & 0xFF);
}

static void test_pool_sequence__golden_blob_restores_and_is_written_again(void **state) {
  (void)state;
  const char *path = KVP_TEST_DATA_DIR "/sequence-v1/seq-v3-h64-bf16.kvpq";
  kvp_config cfg = kvp_test_config_len(2, 2, 64, 4, 16, KVP_DTYPE_BF16, KVP_LAYOUT_V3, MAXLEN);
  kvp_cache *c = NULL;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &c));
  kvp_pool *p = make_pool(c);
  int32_t tokens[10], filler[5];
  for (int k = 0; k < 10; ++k) tokens[k] = 1000 + 37 * k;
  prompt(filler, 5, 3);
  run_prompt(p, c, filler, 5, 0, 0); /* other page ids than the saving pool's 1, 2, 3 */
  kvp_seq_id s = {0};
  assert_kvp_ok(kvp_pool_restore_sequence_from_file(p, path, 0, &s));
  size_t len = 0, computed = 0;
  assert_kvp_ok(kvp_pool_get_sequence_length(p, s, &len, &computed));
  assert_int_equal(len, 10);
  assert_int_equal(computed, 10);
  /* page j of the sequence holds the pattern of page j + 1 of the saving cache, every byte */
  for (size_t j = 0; j < 3; ++j)
    for (uint32_t l = 0; l < 2; ++l) {
      size_t nb;
      const uint8_t *got = kvp_test_page_bytes(c, l, kvp_test_page_of(p, s, j), &nb);
      assert_int_not_equal(kvp_test_page_of(p, s, j), (int32_t)j + 1);
      for (size_t i = 0; i < nb; ++i)
        if (got[i] != golden_byte(l, j + 1, i)) fail_msg("page %zu layer %u byte %zu", j, l, i);
    }
  /* the token ids and the salt: a prompt with them hits the two full pages */
  kvp_seq_id hit = {0};
  size_t reused = 0;
  assert_kvp_ok(kvp_pool_add_sequence(p, tokens, 10, 0x5EED, 0, &hit, &reused));
  assert_int_equal(reused, 8);
  /* and today's writer writes the same bytes */
  FILE *fp = fopen(path, "rb");
  assert_non_null(fp);
  uint8_t *file = (uint8_t *)test_malloc(1 << 14);
  const size_t n = fread(file, 1, 1 << 14, fp);
  fclose(fp);
  size_t size = 0;
  uint8_t *blob = save(p, s, &size);
  assert_int_equal(size, n);
  assert_memory_equal(blob, file, n);
  test_free(blob);
  test_free(file);
  destroy(p, c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pool_sequence__round_trip_into_another_pool),
      cmocka_unit_test(test_pool_sequence__shares_the_pages_the_pool_has),
      cmocka_unit_test(test_pool_sequence__lengths_at_the_edges),
      cmocka_unit_test(test_pool_sequence__file_round_trip),
      cmocka_unit_test(test_pool_sequence__bad_input_changes_nothing),
      cmocka_unit_test(test_pool_sequence__damaged_blobs_change_nothing),
      cmocka_unit_test(test_pool_sequence__another_config_is_refused),
      cmocka_unit_test(test_pool_sequence__large_blocks_on_threads),
      cmocka_unit_test(test_pool_sequence__out_of_pages_or_slots_changes_nothing),
      cmocka_unit_test(test_pool_sequence__sharded_pool_restores_into_the_shard),
      cmocka_unit_test(test_pool_sequence__pool_without_prefix_cache),
      cmocka_unit_test(test_pool_sequence__golden_blob_restores_and_is_written_again),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
