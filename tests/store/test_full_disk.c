/* A directory store on a full disk (tests/store/full_disk.sh runs this on a 256 KiB tmpfs): a put
 * that hits ENOSPC is KVP_ERR_IO with the system's reason, the block already under that key stays
 * and reads back, no temporary file is left, and after a removal the store writes again. As a
 * pool's tier 0 (bound far above the disk's size, so ENOSPC really happens; written by the pool's
 * writer thread, so the test flushes it before it counts): the failed write-backs are counted as
 * tier errors, the pool stays consistent, and every page restored
 * afterwards holds the K/V computed for its prompt.
 *
 *   test_full_disk DIR   (DIR: an empty directory on a small filesystem) */
#include "prompt_pages.h"
#include "support.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "kvpages/pool.h"
#include "kvpages/store.h"

#define BLOCK (20 * 1024) /* a 256 KiB disk holds about a dozen */
#define BOUND (64u << 20) /* far above the disk */
#define PS 4
#define LAYERS 2

static const char *g_dir;

static void sub_dir(char *out, size_t cap, const char *name) {
  snprintf(out, cap, "%s/%s", g_dir, name);
}

/* Files in dir: block files and anything else (temporary files of a failed write). */
static void count_files(const char *dir, int *blocks, int *others) {
  *blocks = *others = 0;
  DIR *d = opendir(dir);
  assert_non_null(d);
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    if (e->d_name[0] == '.') continue;
    const size_t n = strlen(e->d_name);
    if (n > 5 && strcmp(e->d_name + n - 5, ".kvpb") == 0) ++*blocks;
    else ++*others;
  }
  closedir(d);
}

static void remove_dir(const char *dir) {
  char path[1024];
  DIR *d = opendir(dir);
  if (d == NULL) return;
  for (struct dirent *e; (e = readdir(d)) != NULL;)
    if (e->d_name[0] != '.') {
      snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
      unlink(path);
    }
  closedir(d);
  rmdir(dir);
}

static kvp_store_key key_of(int n) {
  kvp_store_key k;
  memset(&k, 0, sizeof k);
  k.bytes[0] = (uint8_t)n;
  k.bytes[15] = 0xF0;
  return k;
}

static void test_full_disk__put_fails_and_keeps_the_old_block(void **state) {
  (void)state;
  char dir[512];
  sub_dir(dir, sizeof dir, "puts");
  kvp_store *s = NULL;
  assert_kvp_ok(kvp_store_create_directory(dir, BOUND, NULL, &s));
  static uint8_t block[BLOCK], back[BLOCK];
  int stored = 0;
  kvp_status st = KVP_OK;
  for (; stored < 200; ++stored) {
    memset(block, stored + 1, sizeof block);
    const kvp_store_key k = key_of(stored);
    st = kvp_store_put(s, &k, block, sizeof block);
    if (st != KVP_OK) break;
  }
  assert_int_equal(st, KVP_ERR_IO);
  if (strstr(kvp_last_error_message(), "No space left on device") == NULL)
    fail_msg("the full disk's message lacks the reason: %s", kvp_last_error_message());
  assert_true(stored >= 4 && stored < 200);
  /* replacing a block on the full disk fails too, and the old block stays */
  const kvp_store_key k0 = key_of(0);
  memset(block, 0xEE, sizeof block);
  assert_kvp_status(kvp_store_put(s, &k0, block, sizeof block), KVP_ERR_IO, "No space left on device");
  size_t size = 0;
  assert_kvp_ok(kvp_store_get(s, &k0, back, sizeof back, &size));
  assert_int_equal(size, BLOCK);
  memset(block, 1, sizeof block);
  assert_memory_equal(back, block, BLOCK);
  kvp_store_stats ss = KVP_STORE_STATS_INIT;
  assert_kvp_ok(kvp_store_get_stats(s, &ss));
  assert_int_equal(ss.blocks, stored);
  assert_int_equal(ss.errors, 2);
  int blocks = 0, others = 0;
  count_files(dir, &blocks, &others);
  assert_int_equal(blocks, stored);
  assert_int_equal(others, 0); /* no temporary file left */
  /* room again after a removal: the failed key can be written */
  const kvp_store_key k1 = key_of(1), kf = key_of(stored);
  assert_kvp_ok(kvp_store_remove(s, &k1));
  memset(block, 0x42, sizeof block);
  assert_kvp_ok(kvp_store_put(s, &kf, block, sizeof block));
  assert_kvp_ok(kvp_store_get(s, &kf, back, sizeof back, &size));
  assert_memory_equal(back, block, BLOCK);
  kvp_store_scrub_report r = KVP_STORE_SCRUB_REPORT_INIT;
  assert_kvp_ok(kvp_store_scrub(s, &r));
  assert_int_equal(r.blocks_checked, stored);
  assert_int_equal(r.blocks_damaged, 0);
  assert_kvp_ok(kvp_store_destroy(s));
  remove_dir(dir);
}

/* ---- the pool ------------------------------------------------------------------------------ */

/* Adds prompt number `which` (4 full pages and one token), computes what was not reused, checks
 * what was, frees it; returns the tokens reused. */
static size_t run_prompt(kvp_pool *p, kvp_cache *c, int which) {
  int32_t tok[4 * PS + 1], row[8];
  for (int i = 0; i < 4 * PS + 1; ++i) tok[i] = which * 1000 + i;
  kvp_seq_id s;
  size_t reused = 0, n = 0;
  assert_kvp_ok(kvp_pool_add_sequence(p, tok, 4 * PS + 1, 0, 0, &s, &reused));
  assert_kvp_ok(kvp_pool_get_page_table(p, s, row, 8, &n));
  static uint8_t want[1 << 16];
  for (size_t i = 0; i < 4; ++i)
    for (uint32_t l = 0; l < LAYERS; ++l) {
      size_t nb;
      uint8_t *page = kvp_test_page_bytes(c, l, row[i], &nb);
      assert_true(nb <= sizeof want);
      kvp_test_prompt_kv(tok, (i + 1) * PS, l, want, nb);
      if (i < reused / PS) assert_memory_equal(page, want, nb); /* restored: the bytes computed */
      else memcpy(page, want, nb);
    }
  assert_kvp_ok(kvp_pool_set_computed(p, s, 4 * PS + 1));
  assert_kvp_ok(kvp_pool_free_sequence(p, s));
  assert_kvp_ok(kvp_pool_check_invariants(p));
  return reused;
}

static void test_full_disk__pool_tier_counts_errors_and_restores_only_good_blocks(void **state) {
  (void)state;
  char dir[512];
  sub_dir(dir, sizeof dir, "tier");
  kvp_config cfg = kvp_test_config_len(LAYERS, 2, 128, PS, 12, KVP_DTYPE_F32, KVP_LAYOUT_V3, 64);
  kvp_cache *c = NULL;
  kvp_pool *p = NULL;
  kvp_store *s = NULL;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &c));
  assert_kvp_ok(kvp_pool_create(c, NULL, &p));
  assert_kvp_ok(kvp_store_create_directory(dir, BOUND, NULL, &s));
  assert_kvp_ok(kvp_pool_add_store(p, s));
  /* 40 prompts of 4 pages through an 11-page pool: about 150 evicted pages of 16 KiB each */
  for (int w = 0; w < 40; ++w) assert_int_equal(run_prompt(p, c, w), 0);
  /* the directory tier is written by the pool's writer thread: until the queue is flushed its
   * counters, the store's and the files (a write in progress has a temporary file) still move */
  assert_kvp_ok(kvp_pool_flush_tiers(p, 0));
  kvp_pool_tier_stats t = KVP_POOL_TIER_STATS_INIT;
  assert_kvp_ok(kvp_pool_get_tier_stats(p, 0, &t));
  kvp_store_stats ss = KVP_STORE_STATS_INIT;
  assert_kvp_ok(kvp_store_get_stats(s, &ss));
  printf("# %lld pages written to the full disk, %lld writes failed, %lld blocks held\n",
         (long long)t.blocks_written, (long long)t.errors, (long long)ss.blocks);
  assert_true(t.errors > 0 && t.blocks_written > 0);
  assert_int_equal(ss.blocks, t.blocks_written); /* nothing was dropped: the bound is never reached */
  int blocks = 0, others = 0;
  count_files(dir, &blocks, &others);
  assert_int_equal(blocks, ss.blocks);
  assert_int_equal(others, 0);
  /* every prompt again: run_prompt checks each restored page's bytes */
  size_t restored = 0;
  for (int w = 0; w < 40; ++w) restored += run_prompt(p, c, w);
  assert_kvp_ok(kvp_pool_flush_tiers(p, 0));
  assert_kvp_ok(kvp_pool_get_tier_stats(p, 0, &t));
  assert_true(restored > 0);
  assert_int_equal(t.rejected, 0);
  assert_int_equal((size_t)t.restored_tokens, restored);
  assert_kvp_ok(kvp_pool_destroy(p));
  assert_kvp_ok(kvp_store_destroy(s));
  assert_kvp_ok(kvp_cache_destroy(c));
  remove_dir(dir);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: test_full_disk DIR (an empty directory on a small filesystem; see full_disk.sh)\n");
    return 2;
  }
  g_dir = argv[1];
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_full_disk__put_fails_and_keeps_the_old_block),
      cmocka_unit_test(test_full_disk__pool_tier_counts_errors_and_restores_only_good_blocks),
  };
  return cmocka_run_group_tests_name("full_disk", tests, NULL, NULL);
}
