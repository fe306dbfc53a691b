/* Unit tests of kvpages/store.h: the memory store (round trip, bound, LRU), the directory store
 * (restart, atomic replacement, stale temporary files, bound, scrub of a truncated and a
 * bit-flipped file, a damaged file read, several threads sharing one store), a plug-in store through its vtable (a test store
 * counting its calls), and every bad input with its status, message and proof nothing changed. */
#include "store_blocks.h"
#include "support.h"

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvpages/store.h"

/* ---- helpers ------------------------------------------------------------------------------ */

static int has(kvp_store *s, uint8_t key) {
  const kvp_store_key k = kvp_test_store_key(key);
  uint8_t found = 7;
  assert_kvp_ok(kvp_store_exists(s, &k, 1, &found));
  return found;
}

static kvp_store_stats stats(kvp_store *s) {
  kvp_store_stats st = KVP_STORE_STATS_INIT;
  assert_kvp_ok(kvp_store_get_stats(s, &st));
  return st;
}

static void make_dir(char *path, size_t cap) {
  snprintf(path, cap, "/tmp/kvp_test_store_XXXXXX");
  assert_non_null(mkdtemp(path));
}

static void file_of(char *out, size_t cap, const char *dir, uint8_t key) {
  const kvp_store_key k = kvp_test_store_key(key);
  int at = snprintf(out, cap, "%s/", dir);
  for (int i = 0; i < 16; ++i) at += snprintf(out + at, cap - (size_t)at, "%02x", k.bytes[i]);
  snprintf(out + at, cap - (size_t)at, ".kvpb");
}

static int count_files(const char *dir) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  int n = 0;
  for (struct dirent *e; (e = readdir(d)) != NULL;)
    if (e->d_name[0] != '.') ++n;
  closedir(d);
  return n;
}

static void remove_dir(const char *dir) {
  DIR *d = opendir(dir);
  if (d == NULL) return;
  char p[512];
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    if (e->d_name[0] == '.' && (e->d_name[1] == '\0' || e->d_name[1] == '.')) continue;
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    unlink(p);
  }
  closedir(d);
  rmdir(dir);
}

static kvp_store *open_dir(const char *dir, uint64_t max_bytes) {
  kvp_store_options o = KVP_STORE_OPTIONS_INIT;
  o.flags = KVP_STORE_FLAG_NO_SYNC;
  kvp_store *s = NULL;
  assert_kvp_ok(kvp_store_create_directory(dir, max_bytes, &o, &s));
  return s;
}

/* ---- memory store ------------------------------------------------------------------------- */

static void test_store__memory_round_trip(void **state) {
  (void)state;
  kvp_store *s = NULL;
  assert_kvp_ok(kvp_store_create_memory(1 << 20, NULL, &s));
  kvp_test_store_put(s, 1, 100);
  kvp_test_store_put(s, 2, 0); /* an empty block is a block */
  kvp_test_store_expect_block(s, 1, 100);
  kvp_test_store_expect_block(s, 2, 0);
  kvp_store_key keys[3] = {kvp_test_store_key(1), kvp_test_store_key(3), kvp_test_store_key(2)};
  uint8_t found[3] = {9, 9, 9};
  assert_kvp_ok(kvp_store_exists(s, keys, 3, found));
  assert_int_equal(found[0], 1);
  assert_int_equal(found[1], 0);
  assert_int_equal(found[2], 1);
  /* a miss is its own status; a small buffer gets the size and nothing else */
  uint8_t b[8] = {0};
  size_t n = 0;
  assert_kvp_status(kvp_store_get(s, &keys[1], b, sizeof b, &n), KVP_ERR_NOT_FOUND, "no block under key");
  assert_kvp_status(kvp_store_get(s, &keys[0], b, sizeof b, &n), KVP_ERR_BUFFER_TOO_SMALL, "capacity is 8");
  assert_int_equal(n, 100);
  for (int i = 0; i < 8; ++i) assert_int_equal(b[i], 0);
  /* replace, remove */
  kvp_test_store_put(s, 1, 50);
  kvp_test_store_expect_block(s, 1, 50);
  assert_kvp_ok(kvp_store_remove(s, &keys[0]));
  assert_false(has(s, 1));
  assert_kvp_status(kvp_store_remove(s, &keys[0]), KVP_ERR_NOT_FOUND, "no block");
  kvp_store_stats st = stats(s);
  assert_int_equal(st.blocks, 1);
  assert_int_equal(st.bytes, 0);
  assert_int_equal(st.max_bytes, 1 << 20);
  assert_int_equal(st.puts, 3);
  assert_int_equal(st.hits, 3); /* a too-small buffer is neither a hit nor a miss */
  assert_int_equal(st.misses, 1);
  kvp_store_scrub_report r = KVP_STORE_SCRUB_REPORT_INIT;
  assert_kvp_ok(kvp_store_scrub(s, &r));
  assert_int_equal(r.blocks_checked, 1);
  assert_int_equal(r.blocks_damaged, 0);
  assert_kvp_ok(kvp_store_destroy(s));
}

static void test_store__memory_bound_drops_least_recent(void **state) {
  (void)state;
  kvp_store *s = NULL;
  assert_kvp_ok(kvp_store_create_memory(300, NULL, &s));
  kvp_test_store_put(s, 1, 100);
  kvp_test_store_put(s, 2, 100);
  kvp_test_store_put(s, 3, 100);
  kvp_test_store_expect_block(s, 1, 100); /* 1 is now more recent than 2 */
  assert_true(has(s, 2));  /* exists is not a use */
  kvp_test_store_put(s, 4, 100);          /* over the bound: 2, the least recent, goes */
  assert_false(has(s, 2));
  assert_true(has(s, 1) && has(s, 3) && has(s, 4));
  kvp_test_store_put(s, 5, 200); /* 3 and 1 go */
  assert_false(has(s, 3));
  assert_false(has(s, 1));
  kvp_test_store_expect_block(s, 4, 100);
  kvp_test_store_expect_block(s, 5, 200);
  kvp_store_stats st = stats(s);
  assert_int_equal(st.blocks, 2);
  assert_int_equal(st.bytes, 300);
  assert_int_equal(st.evictions, 3);
  /* a block larger than the bound is refused and nothing changes */
  uint8_t big[301] = {0};
  const kvp_store_key k = kvp_test_store_key(9);
  assert_kvp_status(kvp_store_put(s, &k, big, sizeof big), KVP_ERR_INVALID_ARGUMENT, "exceeds the store's bound of 300");
  kvp_store_stats after = stats(s);
  assert_int_equal(after.blocks, 2);
  assert_int_equal(after.bytes, 300);
  assert_int_equal(after.errors, 1);
  kvp_test_store_expect_block(s, 4, 100);
  kvp_test_store_expect_block(s, 5, 200);
  assert_kvp_ok(kvp_store_destroy(s));
}

/* ---- directory store ---------------------------------------------------------------------- */

static void test_store__directory_survives_restart(void **state) {
  (void)state;
  char dir[64];
  make_dir(dir, sizeof dir);
  kvp_store *s = open_dir(dir, 1 << 20);
  kvp_test_store_put(s, 1, 100);
  kvp_test_store_put(s, 2, 200);
  kvp_test_store_put(s, 3, 1);
  assert_int_equal(count_files(dir), 3);
  assert_kvp_ok(kvp_store_destroy(s));
  /* a new store over the same directory holds the same blocks */
  s = open_dir(dir, 1 << 20);
  kvp_store_stats st = stats(s);
  assert_int_equal(st.blocks, 3);
  assert_int_equal(st.bytes, 3 * 48 + 301);
  kvp_test_store_expect_block(s, 1, 100);
  kvp_test_store_expect_block(s, 2, 200);
  kvp_test_store_expect_block(s, 3, 1);
  assert_false(has(s, 4));
  assert_kvp_ok(kvp_store_destroy(s));
  remove_dir(dir);
}

static void test_store__directory_writes_atomically(void **state) {
  (void)state;
  char dir[64], file[256], junk[256], stale[300];
  make_dir(dir, sizeof dir);
  /* a stale temporary file of an interrupted write goes at open; other files stay */
  file_of(file, sizeof file, dir, 1);
  snprintf(stale, sizeof stale, "%s.tmp.abcdef", file);
  snprintf(junk, sizeof junk, "%s/notes.txt", dir);
  FILE *fp = fopen(stale, "w");
  fputs("half a block", fp);
  fclose(fp);
  fp = fopen(junk, "w");
  fputs("mine", fp);
  fclose(fp);
  kvp_store *s = open_dir(dir, 1 << 20);
  assert_int_equal(access(stale, F_OK), -1);
  assert_int_equal(access(junk, F_OK), 0);
  assert_int_equal(stats(s).blocks, 0);
  /* a replacement leaves one file, of the new size, and no temporary file */
  kvp_test_store_put(s, 1, 300);
  kvp_test_store_put(s, 1, 20);
  assert_int_equal(count_files(dir), 2); /* the block and notes.txt */
  struct stat sb;
  assert_int_equal(stat(file, &sb), 0);
  assert_int_equal(sb.st_size, 48 + 20);
  kvp_test_store_expect_block(s, 1, 20);
  assert_kvp_ok(kvp_store_destroy(s));
  remove_dir(dir);
}

static void test_store__directory_bound_deletes_least_recent(void **state) {
  (void)state;
  char dir[64], f1[256], f2[256];
  make_dir(dir, sizeof dir);
  kvp_store *s = open_dir(dir, 2 * (48 + 100));
  kvp_test_store_put(s, 1, 100);
  kvp_test_store_put(s, 2, 100);
  kvp_test_store_expect_block(s, 1, 100);
  kvp_test_store_put(s, 3, 100); /* full: 2 goes, from the disk too */
  file_of(f1, sizeof f1, dir, 1);
  file_of(f2, sizeof f2, dir, 2);
  assert_int_equal(access(f2, F_OK), -1);
  assert_int_equal(access(f1, F_OK), 0);
  assert_int_equal(count_files(dir), 2);
  assert_int_equal(stats(s).evictions, 1);
  assert_kvp_status(kvp_store_put(s, &(kvp_store_key){{0}}, f1, 2 * (48 + 100) - 47), KVP_ERR_INVALID_ARGUMENT,
                    "exceeds the store's bound");
  assert_int_equal(count_files(dir), 2);
  assert_kvp_ok(kvp_store_destroy(s));
  /* reopened with a smaller bound, the older block goes */
  s = open_dir(dir, 48 + 100);
  assert_int_equal(stats(s).blocks, 1);
  assert_int_equal(count_files(dir), 1);
  assert_kvp_ok(kvp_store_destroy(s));
  remove_dir(dir);
}

static void flip_byte(const char *file, long at) {
  FILE *fp = fopen(file, "r+b");
  assert_non_null(fp);
  fseek(fp, at, SEEK_SET);
  int c = fgetc(fp);
  fseek(fp, at, SEEK_SET);
  fputc(c ^ 0x10, fp);
  fclose(fp);
}

static void test_store__directory_scrub_drops_damaged(void **state) {
  (void)state;
  char dir[64], f1[256], f2[256], f4[256];
  make_dir(dir, sizeof dir);
  kvp_store *s = open_dir(dir, 1 << 20);
  kvp_test_store_put(s, 1, 100);
  kvp_test_store_put(s, 2, 100);
  kvp_test_store_put(s, 3, 100);
  kvp_test_store_put(s, 4, 100);
  assert_kvp_ok(kvp_store_destroy(s));
  file_of(f1, sizeof f1, dir, 1);
  file_of(f2, sizeof f2, dir, 2);
  file_of(f4, sizeof f4, dir, 4);
  assert_int_equal(truncate(f1, 48 + 60), 0); /* truncated */
  flip_byte(f2, 48 + 33);                     /* one bit of the block flipped */
  flip_byte(f4, 10);                          /* one bit of the key in the header */
  s = open_dir(dir, 1 << 20);
  kvp_store_scrub_report r = KVP_STORE_SCRUB_REPORT_INIT;
  assert_kvp_ok(kvp_store_scrub(s, &r));
  assert_int_equal(r.blocks_checked, 4);
  assert_int_equal(r.blocks_damaged, 3);
  assert_int_equal(r.bytes_freed, (48 + 60) + 2 * (48 + 100));
  assert_int_equal(access(f1, F_OK), -1);
  assert_int_equal(access(f2, F_OK), -1);
  assert_int_equal(access(f4, F_OK), -1);
  assert_false(has(s, 1) || has(s, 2) || has(s, 4));
  kvp_test_store_expect_block(s, 3, 100);
  assert_int_equal(stats(s).blocks, 1);
  /* a damaged block found by a read: an error, and the file is gone */
  char f3[256];
  file_of(f3, sizeof f3, dir, 3);
  flip_byte(f3, 48 + 99);
  uint8_t b[128];
  size_t n = 0;
  const kvp_store_key k3 = kvp_test_store_key(3);
  assert_kvp_status(kvp_store_get(s, &k3, b, sizeof b, &n), KVP_ERR_FORMAT_CHECKSUM, "damaged");
  assert_int_equal(access(f3, F_OK), -1);
  assert_kvp_status(kvp_store_get(s, &k3, b, sizeof b, &n), KVP_ERR_NOT_FOUND, "no block");
  assert_kvp_ok(kvp_store_destroy(s));
  remove_dir(dir);
}

/* Several threads on one directory store, whose files are written and read outside its lock:
 * puts (the same keys by several threads at once), gets, exists, removes, scrubs and listings over
 * 24 keys, under a bound that holds 12. No call fails but with a miss, every block read is the one
 * put, and afterwards the counts match the files: in this store, on disk, and in a store reopened. */
enum { kShareKeys = 24, kShareThreads = 4, kShareOps = 400 };

static size_t share_size(uint32_t key) { return 4096 + 64 * (size_t)key; }

static void share_fill(uint8_t *b, uint32_t key, size_t n) {
  for (size_t i = 0; i < n; ++i) b[i] = (uint8_t)(key * 37u + i * 11u + (i >> 8));
}

typedef struct {
  kvp_store *store;
  unsigned seed;
  int failures;
  char first[256];
} share_worker;

static void share_failed(share_worker *w, const char *what) {
  if (w->failures++ == 0) snprintf(w->first, sizeof w->first, "%s: %s", what, kvp_last_error_message());
}

static void *share_main(void *arg) {
  share_worker *w = (share_worker *)arg;
  uint8_t want[4096 + 64 * kShareKeys], got[4096 + 64 * kShareKeys];
  for (int op = 0; op < kShareOps; ++op) {
    const uint32_t key = (uint32_t)(rand_r(&w->seed) % kShareKeys), what = (uint32_t)(rand_r(&w->seed) % 17);
    const kvp_store_key k = kvp_test_store_key(key);
    const size_t n = share_size(key);
    size_t size = 0;
    uint8_t found = 9;
    kvp_status st;
    if (what < 6) {
      share_fill(want, key, n);
      if (kvp_store_put(w->store, &k, want, n) != KVP_OK) share_failed(w, "put");
    } else if (what < 12) {
      st = kvp_store_get(w->store, &k, got, sizeof got, &size);
      share_fill(want, key, n);
      if (st == KVP_OK && (size != n || memcmp(got, want, n) != 0)) share_failed(w, "get read other bytes");
      if (st != KVP_OK && st != KVP_ERR_NOT_FOUND) share_failed(w, "get");
    } else if (what < 14) {
      if (kvp_store_exists(w->store, &k, 1, &found) != KVP_OK || found > 1) share_failed(w, "exists");
    } else if (what < 15) {
      st = kvp_store_remove(w->store, &k);
      if (st != KVP_OK && st != KVP_ERR_NOT_FOUND) share_failed(w, "remove");
    } else if (what < 16) {
      kvp_store_scrub_report r = KVP_STORE_SCRUB_REPORT_INIT;
      if (kvp_store_scrub(w->store, &r) != KVP_OK || r.blocks_damaged != 0) share_failed(w, "scrub");
    } else {
      kvp_store_key page[8];
      uint64_t cursor = 0;
      if (kvp_store_list(w->store, &cursor, page, 8, &size) != KVP_OK) share_failed(w, "list");
      for (size_t i = 0; i < size; ++i) {
        uint32_t j = 0;
        while (j < kShareKeys && memcmp(page[i].bytes, kvp_test_store_key(j).bytes, 16) != 0) ++j;
        if (j == kShareKeys) share_failed(w, "list gave a key never put");
      }
    }
  }
  return NULL;
}

/* The block files of dir: how many, and their bytes. */
static void files_in(const char *dir, int64_t *count, int64_t *bytes) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  *count = *bytes = 0;
  char p[512];
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    if (strstr(e->d_name, ".kvpb") == NULL) continue;
    assert_null(strstr(e->d_name, ".tmp.")); /* no temporary file left behind */
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    struct stat sb;
    assert_int_equal(stat(p, &sb), 0);
    ++*count;
    *bytes += sb.st_size;
  }
  closedir(d);
}

static void test_store__directory_threads_share_one_store(void **state) {
  (void)state;
  char dir[64];
  make_dir(dir, sizeof dir);
  const uint64_t bound = 12 * (48 + share_size(kShareKeys - 1));
  kvp_store *s = open_dir(dir, bound);
  share_worker w[kShareThreads];
  pthread_t t[kShareThreads];
  for (int i = 0; i < kShareThreads; ++i) {
    memset(&w[i], 0, sizeof w[i]);
    w[i].store = s;
    w[i].seed = 1234u + (unsigned)i;
    assert_int_equal(pthread_create(&t[i], NULL, share_main, &w[i]), 0);
  }
  for (int i = 0; i < kShareThreads; ++i) assert_int_equal(pthread_join(t[i], NULL), 0);
  for (int i = 0; i < kShareThreads; ++i)
    if (w[i].failures != 0) fail_msg("thread %d: %d failures, the first: %s", i, w[i].failures, w[i].first);
  const kvp_store_stats st = stats(s);
  int64_t files = 0, bytes = 0;
  files_in(dir, &files, &bytes);
  assert_int_equal(st.blocks, files);
  assert_int_equal(st.bytes, bytes);
  assert_true((uint64_t)st.bytes <= bound);
  assert_true(st.blocks > 0);
  assert_int_equal(st.errors, 0);
  static uint8_t want[4096 + 64 * kShareKeys], got[4096 + 64 * kShareKeys];
  for (uint32_t key = 0; key < kShareKeys; ++key) {
    if (!has(s, (uint8_t)key)) continue;
    const kvp_store_key k = kvp_test_store_key(key);
    size_t size = 0;
    assert_kvp_ok(kvp_store_get(s, &k, got, sizeof got, &size));
    share_fill(want, key, share_size(key));
    assert_int_equal(size, share_size(key));
    assert_memory_equal(got, want, size);
  }
  assert_kvp_ok(kvp_store_destroy(s));
  s = open_dir(dir, bound);
  assert_int_equal(stats(s).blocks, files);
  assert_int_equal(stats(s).bytes, bytes);
  kvp_store_scrub_report r = KVP_STORE_SCRUB_REPORT_INIT;
  assert_kvp_ok(kvp_store_scrub(s, &r));
  assert_int_equal(r.blocks_checked, files);
  assert_int_equal(r.blocks_damaged, 0);
  assert_kvp_ok(kvp_store_destroy(s));
  remove_dir(dir);
}

/* ---- plug-in store ------------------------------------------------------------------------ */

typedef struct counting_store {
  int puts, gets, exists, removes, destroys;
  kvp_store_key key;
  uint8_t data[64];
  size_t size;
  int has;
  kvp_status fail_with; /* returned by every callback when not KVP_OK */
} counting_store;

static kvp_status cs_put(void *u, const kvp_store_key *k, const void *d, size_t n) {
  counting_store *c = (counting_store *)u;
  ++c->puts;
  if (c->fail_with != KVP_OK) return c->fail_with;
  if (n > sizeof c->data) return KVP_ERR_OUT_OF_MEMORY;
  c->key = *k;
  memcpy(c->data, d, n);
  c->size = n;
  c->has = 1;
  return KVP_OK;
}
static kvp_status cs_get(void *u, const kvp_store_key *k, void *dst, size_t cap, size_t *size) {
  counting_store *c = (counting_store *)u;
  ++c->gets;
  if (c->fail_with != KVP_OK) return c->fail_with;
  if (!c->has || memcmp(k, &c->key, sizeof *k) != 0) return KVP_ERR_NOT_FOUND;
  *size = c->size;
  if (cap < c->size) return KVP_ERR_BUFFER_TOO_SMALL;
  memcpy(dst, c->data, c->size);
  return KVP_OK;
}
static kvp_status cs_exists(void *u, const kvp_store_key *keys, size_t n, uint8_t *found) {
  counting_store *c = (counting_store *)u;
  ++c->exists;
  if (c->fail_with != KVP_OK) return c->fail_with;
  for (size_t i = 0; i < n; ++i) found[i] = c->has && memcmp(&keys[i], &c->key, sizeof c->key) == 0 ? 5 : 0;
  return KVP_OK;
}
static kvp_status cs_remove(void *u, const kvp_store_key *k) {
  counting_store *c = (counting_store *)u;
  ++c->removes;
  if (!c->has || memcmp(k, &c->key, sizeof *k) != 0) return KVP_ERR_NOT_FOUND;
  c->has = 0;
  return KVP_OK;
}
static void cs_destroy(void *u) { ++((counting_store *)u)->destroys; }

static kvp_store_vtable counting_vtable(counting_store *c) {
  kvp_store_vtable vt;
  memset(&vt, 0, sizeof vt);
  vt.struct_size = sizeof vt;
  vt.abi_version = KVP_STORE_VTABLE_VERSION;
  vt.user_data = c;
  vt.put = cs_put;
  vt.get = cs_get;
  vt.exists = cs_exists;
  vt.remove = cs_remove;
  vt.destroy = cs_destroy;
  return vt;
}

static void test_store__plugin_through_vtable(void **state) {
  (void)state;
  counting_store c;
  memset(&c, 0, sizeof c);
  kvp_store_vtable vt = counting_vtable(&c);
  kvp_store *s = NULL;
  assert_kvp_ok(kvp_store_create(&vt, &s));
  memset(&vt, 0xAB, sizeof vt); /* the table was copied */
  kvp_test_store_put(s, 1, 40);
  kvp_test_store_expect_block(s, 1, 40);
  assert_true(has(s, 1)); /* the plug-in's 5 comes back as 1 */
  assert_false(has(s, 2));
  uint8_t b[8];
  size_t n = 0;
  const kvp_store_key k1 = kvp_test_store_key(1), k2 = kvp_test_store_key(2);
  assert_kvp_status(kvp_store_get(s, &k2, b, sizeof b, &n), KVP_ERR_NOT_FOUND, "no block");
  assert_kvp_status(kvp_store_get(s, &k1, b, sizeof b, &n), KVP_ERR_BUFFER_TOO_SMALL, "get callback");
  assert_int_equal(n, 40);
  assert_kvp_ok(kvp_store_remove(s, &k1));
  assert_int_equal(c.puts, 1);
  assert_int_equal(c.gets, 3);
  assert_int_equal(c.exists, 2);
  assert_int_equal(c.removes, 1);
  /* a failing plug-in: its status, with the callback named */
  c.fail_with = KVP_ERR_IO;
  assert_kvp_status(kvp_store_put(s, &k1, b, 4), KVP_ERR_IO, "put callback returned KVP_ERR_IO");
  uint8_t f = 0;
  assert_kvp_status(kvp_store_exists(s, &k1, 1, &f), KVP_ERR_IO, "exists callback");
  kvp_store_stats st = stats(s);
  assert_int_equal(st.blocks, -1);
  assert_int_equal(st.bytes, -1);
  assert_int_equal(st.puts, 1);
  assert_int_equal(st.hits, 1);
  assert_int_equal(st.misses, 1);
  assert_int_equal(st.errors, 2);
  kvp_store_scrub_report r = KVP_STORE_SCRUB_REPORT_INIT;
  assert_kvp_status(kvp_store_scrub(s, &r), KVP_ERR_UNSUPPORTED, "plug-in");
  assert_int_equal(c.destroys, 0);
  assert_kvp_ok(kvp_store_destroy(s));
  assert_int_equal(c.destroys, 1);
}

static void test_store__plugin_table_checked(void **state) {
  (void)state;
  counting_store c;
  memset(&c, 0, sizeof c);
  kvp_store *s = (kvp_store *)(uintptr_t)1;
  kvp_store_vtable vt = counting_vtable(&c);
  vt.exists = NULL;
  assert_kvp_status(kvp_store_create(&vt, &s), KVP_ERR_INVALID_ARGUMENT, "kvp_store_vtable.exists must not be NULL");
  assert_null(s);
  vt = counting_vtable(&c);
  vt.abi_version = KVP_STORE_VTABLE_VERSION + 1;
  assert_kvp_status(kvp_store_create(&vt, &s), KVP_ERR_VERSION_MISMATCH, "abi_version");
  vt = counting_vtable(&c);
  vt.struct_size = 8;
  assert_kvp_status(kvp_store_create(&vt, &s), KVP_ERR_VERSION_MISMATCH, "struct_size");
  assert_kvp_status(kvp_store_create(NULL, &s), KVP_ERR_INVALID_ARGUMENT, "vtable");
  assert_int_equal(c.destroys, 0); /* a refused table's user_data stays the caller's */
}

/* ---- bad input ---------------------------------------------------------------------------- */

static void test_store__bad_input_changes_nothing(void **state) {
  (void)state;
  kvp_store *s = (kvp_store *)(uintptr_t)1;
  assert_kvp_status(kvp_store_create_memory(0, NULL, &s), KVP_ERR_INVALID_ARGUMENT, "max_bytes must be > 0");
  assert_null(s);
  kvp_store_options o = KVP_STORE_OPTIONS_INIT;
  o.flags = KVP_STORE_FLAG_NO_SYNC; /* directory stores only */
  assert_kvp_status(kvp_store_create_memory(10, &o, &s), KVP_ERR_INVALID_ARGUMENT, "unknown flags 0x1");
  o.flags = 0x80;
  assert_kvp_status(kvp_store_create_directory("/tmp", 10, &o, &s), KVP_ERR_INVALID_ARGUMENT, "unknown flags 0x80");
  assert_kvp_status(kvp_store_create_directory(NULL, 10, NULL, &s), KVP_ERR_INVALID_ARGUMENT, "path");
  assert_kvp_status(kvp_store_create_directory("/nonexistent-kvp/a/b", 10, NULL, &s), KVP_ERR_IO,
                    "cannot create the directory '/nonexistent-kvp/a/b'");
  assert_null(s);
  assert_kvp_ok(kvp_store_options_init(&o, sizeof o));
  assert_int_equal(o.abi_version, KVP_STORE_OPTIONS_VERSION);

  assert_kvp_ok(kvp_store_create_memory(1000, NULL, &s));
  kvp_test_store_put(s, 1, 10);
  const kvp_store_key k = kvp_test_store_key(1);
  uint8_t b[16];
  size_t n = 77;
  assert_kvp_status(kvp_store_put(s, NULL, b, 1), KVP_ERR_INVALID_ARGUMENT, "key");
  assert_kvp_status(kvp_store_put(s, &k, NULL, 1), KVP_ERR_INVALID_ARGUMENT, "'data' must not be NULL when size is 1");
  assert_kvp_status(kvp_store_get(s, &k, NULL, 4, &n), KVP_ERR_INVALID_ARGUMENT, "'dst' must not be NULL");
  assert_kvp_status(kvp_store_get(s, &k, b, sizeof b, NULL), KVP_ERR_INVALID_ARGUMENT, "size_out");
  assert_kvp_status(kvp_store_get(s, NULL, b, sizeof b, &n), KVP_ERR_INVALID_ARGUMENT, "key");
  assert_kvp_status(kvp_store_exists(s, NULL, 1, b), KVP_ERR_INVALID_ARGUMENT, "'keys' must not be NULL");
  assert_kvp_status(kvp_store_exists(s, &k, 1, NULL), KVP_ERR_INVALID_ARGUMENT, "'found_out' must not be NULL");
  assert_kvp_ok(kvp_store_exists(s, NULL, 0, NULL));
  assert_kvp_status(kvp_store_remove(s, NULL), KVP_ERR_INVALID_ARGUMENT, "key");
  assert_kvp_status(kvp_store_get_stats(s, NULL), KVP_ERR_INVALID_ARGUMENT, "out");
  kvp_store_stats small;
  small.struct_size = 4;
  assert_kvp_status(kvp_store_get_stats(s, &small), KVP_ERR_VERSION_MISMATCH, "struct_size");
  kvp_store_scrub_report rs;
  rs.struct_size = 4;
  assert_kvp_status(kvp_store_scrub(s, &rs), KVP_ERR_VERSION_MISMATCH, "struct_size");
  assert_int_equal(n, 77);
  kvp_store_stats st = stats(s);
  assert_int_equal(st.blocks, 1);
  assert_int_equal(st.bytes, 10);
  assert_int_equal(st.puts, 1);
  kvp_test_store_expect_block(s, 1, 10);
  assert_kvp_ok(kvp_store_destroy(s));
  /* a destroyed handle */
  assert_kvp_status(kvp_store_put(s, &k, b, 1), KVP_ERR_INVALID_HANDLE, "");
  assert_kvp_status(kvp_store_destroy(s), KVP_ERR_INVALID_HANDLE, "");
  assert_kvp_ok(kvp_store_destroy(NULL));
}

/* kvp_store_create_redis without a server (tests/redis/test_store_redis.c has the servers): a
 * build without Redis says so (UNSUPPORTED, and kvp_build_info says redis=off); a build with it
 * refuses a malformed URL before connecting. `out` is NULL either way. */
static void test_store__redis_without_a_server(void **state) {
  (void)state;
  kvp_store *s = (kvp_store *)&s;
  if (strstr(kvp_build_info(), "redis=off") != NULL) {
    assert_kvp_status(kvp_store_create_redis("redis://127.0.0.1:6379", NULL, &s), KVP_ERR_UNSUPPORTED,
                      "built without Redis: KVPAGES_REDIS=OFF");
  } else {
    assert_non_null(strstr(kvp_build_info(), "redis=on"));
    assert_kvp_status(kvp_store_create_redis("redis://127.0.0.1", NULL, &s), KVP_ERR_INVALID_ARGUMENT, "HOST:PORT");
  }
  assert_null(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_store__memory_round_trip),
      cmocka_unit_test(test_store__memory_bound_drops_least_recent),
      cmocka_unit_test(test_store__directory_survives_restart),
      cmocka_unit_test(test_store__directory_writes_atomically),
      cmocka_unit_test(test_store__directory_bound_deletes_least_recent),
      cmocka_unit_test(test_store__directory_scrub_drops_damaged),
      cmocka_unit_test(test_store__directory_threads_share_one_store),
      cmocka_unit_test(test_store__plugin_through_vtable),
      cmocka_unit_test(test_store__plugin_table_checked),
      cmocka_unit_test(test_store__bad_input_changes_nothing),
      cmocka_unit_test(test_store__redis_without_a_server),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
