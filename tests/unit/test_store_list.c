/* Unit tests of kvp_store_list() and kvp_store_block_inspect(): listing the memory, directory and
 * plug-in stores (version-1 table: unsupported; version-2 table: its callback) page by page with
 * capacities 1, 3 and many; a listing while another thread puts and removes sees every key
 * present throughout; the header of real blocks a pool evicted, and of damaged, short, long and
 * foreign bytes; every bad input with its status, message and proof nothing changed. */
#include "store_blocks.h"
#include "support.h"

#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "kvpages/pool.h"
#include "kvpages/store.h"

#define MAX_KEYS 256

/* ---- helpers ------------------------------------------------------------------------------ */

static void put_key(kvp_store *s, uint32_t n) {
  const kvp_store_key k = kvp_test_store_key(n);
  const uint8_t b[8] = {1, 2, 3, 4, 5, 6, 7, (uint8_t)n};
  assert_kvp_ok(kvp_store_put(s, &k, b, sizeof b));
}

/* Lists the whole store with pages of `cap` keys; the key numbers found (key_of) counted in seen. */
static size_t list_all(kvp_store *s, size_t cap, int *seen, size_t seen_cap) {
  kvp_store_key keys[64];
  uint64_t cursor = 0;
  size_t total = 0, calls = 0;
  assert_true(cap <= 64);
  do {
    size_t n = 999;
    assert_kvp_ok(kvp_store_list(s, &cursor, keys, cap, &n));
    assert_true(n <= cap);
    for (size_t i = 0; i < n; ++i) {
      uint32_t id;
      memcpy(&id, keys[i].bytes, sizeof id);
      const kvp_store_key want = kvp_test_store_key(id);
      assert_memory_equal(&keys[i], &want, sizeof want); /* a key that was put, whole */
      assert_true(id < seen_cap);
      ++seen[id];
    }
    total += n;
    assert_true(++calls < 10000);
  } while (cursor != 0);
  return total;
}

/* Every key 0..n-1 listed exactly once with each capacity. */
static void expect_listing(kvp_store *s, uint32_t n) {
  const size_t caps[] = {1, 3, 64};
  for (size_t c = 0; c < sizeof caps / sizeof caps[0]; ++c) {
    int seen[MAX_KEYS] = {0};
    assert_int_equal(list_all(s, caps[c], seen, MAX_KEYS), n);
    for (uint32_t i = 0; i < n; ++i) assert_int_equal(seen[i], 1);
  }
}

static void make_dir(char *path, size_t cap) {
  snprintf(path, cap, "/tmp/kvp_test_store_list_XXXXXX");
  assert_non_null(mkdtemp(path));
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

static kvp_store *open_dir(const char *dir) {
  kvp_store_options o = KVP_STORE_OPTIONS_INIT;
  o.flags = KVP_STORE_FLAG_NO_SYNC;
  kvp_store *s = NULL;
  assert_kvp_ok(kvp_store_create_directory(dir, 1 << 24, &o, &s));
  return s;
}

/* ---- shipped stores ----------------------------------------------------------------------- */

static void test_store_list__memory_pages(void **state) {
  (void)state;
  kvp_store *s = NULL;
  assert_kvp_ok(kvp_store_create_memory(1 << 20, NULL, &s));
  expect_listing(s, 0); /* empty: one call, no key, cursor 0 */
  for (uint32_t i = 0; i < 10; ++i) put_key(s, i);
  put_key(s, 4); /* a replaced block is still one key */
  expect_listing(s, 10);
  const kvp_store_key k = kvp_test_store_key(9);
  assert_kvp_ok(kvp_store_remove(s, &k));
  for (uint32_t i = 10; i < 40; ++i) put_key(s, i);
  put_key(s, 9); /* back, listed after the newer keys */
  expect_listing(s, 40);
  /* a listing reads nothing: no hit, no miss */
  kvp_store_stats st = KVP_STORE_STATS_INIT;
  assert_kvp_ok(kvp_store_get_stats(s, &st));
  assert_int_equal(st.hits + st.misses + st.errors, 0);
  assert_kvp_ok(kvp_store_destroy(s));
}

static void test_store_list__memory_bound_drops_from_listing(void **state) {
  (void)state;
  kvp_store *s = NULL;
  assert_kvp_ok(kvp_store_create_memory(8 * 5, NULL, &s)); /* 5 blocks of 8 bytes */
  for (uint32_t i = 0; i < 12; ++i) put_key(s, i);
  int seen[MAX_KEYS] = {0};
  assert_int_equal(list_all(s, 3, seen, MAX_KEYS), 5);
  for (uint32_t i = 7; i < 12; ++i) assert_int_equal(seen[i], 1); /* the five most recent */
  assert_kvp_ok(kvp_store_destroy(s));
}

static void test_store_list__directory_pages_and_restart(void **state) {
  (void)state;
  char dir[64];
  make_dir(dir, sizeof dir);
  kvp_store *s = open_dir(dir);
  expect_listing(s, 0);
  for (uint32_t i = 0; i < 20; ++i) put_key(s, i);
  expect_listing(s, 20);
  assert_kvp_ok(kvp_store_destroy(s));
  s = open_dir(dir); /* the scanned files are listed */
  expect_listing(s, 20);
  const kvp_store_key k = kvp_test_store_key(3);
  assert_kvp_ok(kvp_store_remove(s, &k));
  put_key(s, 3);
  put_key(s, 20);
  expect_listing(s, 21);
  assert_kvp_ok(kvp_store_destroy(s));
  remove_dir(dir);
}

/* ---- a listing while another thread puts and removes ------------------------------------------ */

typedef struct churn {
  kvp_store *store;
  atomic_int stop;
  int rounds;
} churn;

/* Puts and removes keys 100..199 over and over (keys 0..49 are never touched). */
static void *churn_main(void *arg) {
  churn *c = (churn *)arg;
  const uint8_t b[8] = {0};
  for (uint32_t i = 0; !atomic_load(&c->stop) || c->rounds < 3; ++i) {
    const kvp_store_key k = kvp_test_store_key(100 + i % 100);
    if (kvp_store_put(c->store, &k, b, sizeof b) != KVP_OK) return (void *)1;
    if (i % 3 == 0) {
      const kvp_store_key r = kvp_test_store_key(100 + (i * 7) % 100);
      const kvp_status st = kvp_store_remove(c->store, &r);
      if (st != KVP_OK && st != KVP_ERR_NOT_FOUND) return (void *)1;
    }
    if (i % 100 == 99) ++c->rounds;
  }
  return NULL;
}

static void list_during_churn(kvp_store *s) {
  for (uint32_t i = 0; i < 50; ++i) put_key(s, i);
  churn c;
  c.store = s;
  atomic_init(&c.stop, 0);
  c.rounds = 0;
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, churn_main, &c), 0);
  for (int pass = 0; pass < 20; ++pass) {
    int seen[MAX_KEYS] = {0};
    list_all(s, pass % 2 ? 3 : 1, seen, MAX_KEYS);
    for (uint32_t i = 0; i < 50; ++i) assert_true(seen[i] >= 1); /* present throughout: listed */
    for (uint32_t i = 50; i < 100; ++i) assert_int_equal(seen[i], 0);
  }
  atomic_store(&c.stop, 1);
  void *r = NULL;
  assert_int_equal(pthread_join(t, &r), 0);
  assert_null(r);
  assert_true(c.rounds >= 3);
}

static void test_store_list__while_another_thread_puts(void **state) {
  (void)state;
  kvp_store *s = NULL;
  assert_kvp_ok(kvp_store_create_memory(1 << 20, NULL, &s));
  list_during_churn(s);
  assert_kvp_ok(kvp_store_destroy(s));
  char dir[64];
  make_dir(dir, sizeof dir);
  s = open_dir(dir);
  list_during_churn(s);
  assert_kvp_ok(kvp_store_destroy(s));
  remove_dir(dir);
}

/* ---- plug-in stores ----------------------------------------------------------------------- */

/* A plug-in holding keys 0..count-1 (key_of), listed two at a time from its own cursor. */
typedef struct listing_store {
  uint32_t count;
  int lists;
  size_t last_capacity;
  kvp_status fail_with;
  size_t overflow; /* when non-zero: report this many keys written (a broken plug-in) */
} listing_store;

static kvp_status ls_put(void *u, const kvp_store_key *k, const void *d, size_t n) {
  (void)u, (void)k, (void)d, (void)n;
  return KVP_OK;
}
static kvp_status ls_get(void *u, const kvp_store_key *k, void *dst, size_t cap, size_t *size) {
  (void)u, (void)k, (void)dst, (void)cap, (void)size;
  return KVP_ERR_NOT_FOUND;
}
static kvp_status ls_exists(void *u, const kvp_store_key *keys, size_t n, uint8_t *found) {
  (void)u, (void)keys;
  memset(found, 0, n);
  return KVP_OK;
}
static kvp_status ls_remove(void *u, const kvp_store_key *k) {
  (void)u, (void)k;
  return KVP_ERR_NOT_FOUND;
}
static kvp_status ls_list(void *u, uint64_t *cursor, kvp_store_key *keys, size_t cap, size_t *count) {
  listing_store *p = (listing_store *)u;
  ++p->lists;
  p->last_capacity = cap;
  if (p->fail_with != KVP_OK) return p->fail_with;
  if (p->overflow != 0) {
    *count = p->overflow;
    return KVP_OK;
  }
  /* its own cursor: 1000 + the next key number */
  uint32_t next = *cursor == 0 ? 0 : (uint32_t)(*cursor - 1000);
  size_t n = 0;
  while (n < cap && n < 2 && next < p->count) keys[n++] = kvp_test_store_key(next++);
  *cursor = next < p->count ? 1000 + next : 0;
  *count = n;
  return KVP_OK;
}

static kvp_store_vtable listing_vtable(listing_store *p) {
  kvp_store_vtable vt;
  memset(&vt, 0, sizeof vt);
  vt.struct_size = sizeof vt;
  vt.abi_version = KVP_STORE_VTABLE_VERSION;
  vt.user_data = p;
  vt.put = ls_put;
  vt.get = ls_get;
  vt.exists = ls_exists;
  vt.remove = ls_remove;
  vt.list = ls_list;
  return vt;
}

static void test_store_list__plugin_v2_lists_through_its_callback(void **state) {
  (void)state;
  listing_store p = {7, 0, 0, KVP_OK, 0};
  kvp_store_vtable vt = listing_vtable(&p);
  kvp_store *s = NULL;
  assert_kvp_ok(kvp_store_create(&vt, &s));
  expect_listing(s, 7);
  assert_int_equal(p.lists, 7 + 4 + 4); /* at most two keys a call: capacities 1, 3, 64 */
  /* a large capacity reaches the plug-in bounded (the library converts keys a page at a time) */
  kvp_store_key keys[64];
  uint64_t cursor = 0;
  size_t n = 0;
  assert_kvp_ok(kvp_store_list(s, &cursor, keys, 64, &n));
  assert_int_equal(p.last_capacity, 64);
  /* a failing callback: its status, the callback named, the cursor kept */
  p.fail_with = KVP_ERR_IO;
  cursor = 1002;
  n = 77;
  assert_kvp_status(kvp_store_list(s, &cursor, keys, 3, &n), KVP_ERR_IO, "list callback returned KVP_ERR_IO");
  assert_int_equal(cursor, 1002);
  assert_int_equal(n, 77);
  /* a callback claiming more keys than the capacity */
  p.fail_with = KVP_OK;
  p.overflow = 4;
  assert_kvp_status(kvp_store_list(s, &cursor, keys, 3, &n), KVP_ERR_INTERNAL, "above capacity 3");
  assert_int_equal(cursor, 1002);
  assert_int_equal(n, 77);
  assert_kvp_ok(kvp_store_destroy(s));

  /* a table larger than this library knows: a zero tail is accepted, a non-zero one refused */
  struct {
    kvp_store_vtable vt;
    uint64_t tail;
  } big;
  memset(&big, 0, sizeof big);
  big.vt = listing_vtable(&p);
  big.vt.struct_size = sizeof big;
  assert_kvp_ok(kvp_store_create(&big.vt, &s));
  assert_kvp_ok(kvp_store_destroy(s));
  big.tail = 1;
  assert_kvp_status(kvp_store_create(&big.vt, &s), KVP_ERR_UNSUPPORTED, "tail");
  assert_null(s);
}

static void test_store_list__plugin_v1_table_cannot_list(void **state) {
  (void)state;
  listing_store p = {7, 0, 0, KVP_OK, 0};
  /* a caller compiled against version 1: the table ends before `list`; what follows is not read */
  struct {
    kvp_store_vtable vt;
  } v1;
  memset(&v1, 0xEE, sizeof v1);
  kvp_store_vtable full = listing_vtable(&p);
  memcpy(&v1.vt, &full, offsetof(kvp_store_vtable, list));
  v1.vt.struct_size = (uint32_t)offsetof(kvp_store_vtable, list);
  v1.vt.abi_version = 1;
  kvp_store *s = NULL;
  assert_kvp_ok(kvp_store_create(&v1.vt, &s));
  kvp_store_key keys[4];
  uint64_t cursor = 0;
  size_t n = 77;
  assert_kvp_status(kvp_store_list(s, &cursor, keys, 4, &n), KVP_ERR_UNSUPPORTED, "cannot list");
  assert_int_equal(n, 77);
  assert_int_equal(cursor, 0);
  assert_int_equal(p.lists, 0);
  assert_kvp_ok(kvp_store_destroy(s));
  /* a version-2 table without a list callback: the same */
  kvp_store_vtable vt = listing_vtable(&p);
  vt.list = NULL;
  assert_kvp_ok(kvp_store_create(&vt, &s));
  assert_kvp_status(kvp_store_list(s, &cursor, keys, 4, &n), KVP_ERR_UNSUPPORTED, "kvp_store_list");
  assert_kvp_ok(kvp_store_destroy(s));
  /* below version 1's size, or an unknown version */
  vt = listing_vtable(&p);
  vt.struct_size = (uint32_t)offsetof(kvp_store_vtable, list) - 1;
  assert_kvp_status(kvp_store_create(&vt, &s), KVP_ERR_VERSION_MISMATCH, "struct_size");
  vt = listing_vtable(&p);
  vt.abi_version = KVP_STORE_VTABLE_VERSION + 1;
  assert_kvp_status(kvp_store_create(&vt, &s), KVP_ERR_VERSION_MISMATCH, "abi_version");
  assert_null(s);
}

/* ---- bad input ---------------------------------------------------------------------------- */

static void test_store_list__bad_input_changes_nothing(void **state) {
  (void)state;
  kvp_store *s = NULL;
  assert_kvp_ok(kvp_store_create_memory(1 << 20, NULL, &s));
  for (uint32_t i = 0; i < 5; ++i) put_key(s, i);
  kvp_store_key keys[4], untouched[4];
  memset(keys, 0xCD, sizeof keys);
  memcpy(untouched, keys, sizeof keys);
  uint64_t cursor = 0;
  size_t n = 77;
  assert_kvp_status(kvp_store_list(s, NULL, keys, 4, &n), KVP_ERR_INVALID_ARGUMENT, "cursor");
  assert_kvp_status(kvp_store_list(s, &cursor, NULL, 4, &n), KVP_ERR_INVALID_ARGUMENT, "keys");
  assert_kvp_status(kvp_store_list(s, &cursor, keys, 4, NULL), KVP_ERR_INVALID_ARGUMENT, "count_out");
  assert_kvp_status(kvp_store_list(s, &cursor, keys, 0, &n), KVP_ERR_INVALID_ARGUMENT, "capacity must be > 0");
  assert_kvp_status(kvp_store_list(NULL, &cursor, keys, 4, &n), KVP_ERR_INVALID_HANDLE, "kvp_store_list");
  assert_int_equal(cursor, 0);
  assert_int_equal(n, 77);
  assert_memory_equal(keys, untouched, sizeof keys);
  expect_listing(s, 5);
  kvp_store_stats st = KVP_STORE_STATS_INIT;
  assert_kvp_ok(kvp_store_get_stats(s, &st));
  assert_int_equal(st.blocks, 5);
  assert_int_equal(st.errors, 0);
  assert_kvp_ok(kvp_store_destroy(s));
  assert_kvp_status(kvp_store_list(s, &cursor, keys, 4, &n), KVP_ERR_INVALID_HANDLE, "");
}

/* ---- block inspection ------------------------------------------------------------------------- */

#define LAYERS 2
#define PS 4
#define NP 8
#define SALT 0x5A17u

/* A pool over a memory store evicts the three full pages of a 13-token prompt: the store's blocks
 * are returned in blocks[] (each malloc'ed), their sizes in sizes[], their number. */
static size_t evicted_blocks(uint8_t **blocks, size_t *sizes, size_t cap, size_t *page_bytes) {
  kvp_config cfg = kvp_test_config_len(LAYERS, 2, 64, PS, NP, KVP_DTYPE_F32, KVP_LAYOUT_V3, 64);
  kvp_cache *c = NULL;
  kvp_pool *p = NULL;
  kvp_store *s = NULL;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &c));
  assert_kvp_ok(kvp_pool_create(c, NULL, &p));
  assert_kvp_ok(kvp_store_create_memory(1 << 24, NULL, &s));
  assert_kvp_ok(kvp_pool_add_store(p, s));
  int32_t a[13], b[7 * PS];
  for (int32_t i = 0; i < 13; ++i) a[i] = 1000 + i;
  for (int32_t i = 0; i < 7 * PS; ++i) b[i] = 5000 + i;
  kvp_seq_id q = {0};
  size_t reused = 0;
  assert_kvp_ok(kvp_pool_add_sequence(p, a, 13, SALT, 0, &q, &reused));
  assert_kvp_ok(kvp_pool_set_computed(p, q, 13));
  assert_kvp_ok(kvp_pool_free_sequence(p, q));
  assert_kvp_ok(kvp_pool_add_sequence(p, b, 7 * PS, 99, 0, &q, &reused));
  assert_kvp_ok(kvp_pool_set_computed(p, q, 7 * PS));
  assert_kvp_ok(kvp_pool_free_sequence(p, q));
  kvp_store_key keys[16];
  uint64_t cursor = 0;
  size_t n = 0;
  assert_kvp_ok(kvp_store_list(s, &cursor, keys, 16, &n));
  assert_int_equal(cursor, 0);
  assert_true(n <= cap);
  for (size_t i = 0; i < n; ++i) {
    assert_kvp_status(kvp_store_get(s, &keys[i], NULL, 0, &sizes[i]), KVP_ERR_BUFFER_TOO_SMALL, "capacity");
    blocks[i] = (uint8_t *)malloc(sizes[i]);
    assert_kvp_ok(kvp_store_get(s, &keys[i], blocks[i], sizes[i], &sizes[i]));
    kvp_store_block_info info = KVP_STORE_BLOCK_INFO_INIT;
    assert_kvp_ok(kvp_store_block_inspect(blocks[i], sizes[i], &info));
    assert_memory_equal(&info.key, &keys[i], sizeof keys[i]); /* stored under its own key */
  }
  *page_bytes = kvp_test_layer_bytes(c) / NP;
  assert_kvp_ok(kvp_pool_destroy(p));
  assert_kvp_ok(kvp_store_destroy(s));
  assert_kvp_ok(kvp_cache_destroy(c));
  return n;
}

static void test_store_list__block_inspect_of_evicted_pages(void **state) {
  (void)state;
  uint8_t *blocks[16];
  size_t sizes[16], page_bytes = 0;
  const size_t n = evicted_blocks(blocks, sizes, 16, &page_bytes);
  assert_int_equal(n, 3);
  kvp_store_block_info info[3];
  int parents_in_set = 0;
  for (size_t i = 0; i < n; ++i) {
    kvp_store_block_info *f = &info[i];
    memset(f, 0xAA, sizeof *f);
    f->struct_size = sizeof *f;
    assert_kvp_ok(kvp_store_block_inspect(blocks[i], sizes[i], f));
    assert_int_equal(f->struct_size, sizeof *f);
    assert_int_equal(f->format_version, 1);
    assert_int_equal(f->salt, SALT);
    assert_int_equal(f->page_size, PS);
    assert_int_equal(f->num_layers, LAYERS);
    assert_int_equal(f->page_bytes, page_bytes);
    assert_int_equal(f->block_bytes, sizes[i]);
    assert_true(sizes[i] > LAYERS * page_bytes);
    assert_int_equal(f->checksum_ok, 1);
    assert_int_equal(f->_reserved, 0);
    assert_int_equal(f->fingerprint, info[0].fingerprint); /* one config */
  }
  /* the prefix chain: two of the three pages' parents are pages of the set, the first's is not */
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j) parents_in_set += memcmp(&info[i].parent, &info[j].key, sizeof info[i].key) == 0;
  assert_int_equal(parents_in_set, 2);

  /* a bit flipped in a layer's bytes: still described, its checksum fails */
  kvp_store_block_info f = KVP_STORE_BLOCK_INFO_INIT;
  blocks[0][sizes[0] - 100] ^= 1;
  assert_kvp_ok(kvp_store_block_inspect(blocks[0], sizes[0], &f));
  assert_int_equal(f.checksum_ok, 0);
  assert_memory_equal(&f.key, &info[0].key, sizeof f.key);
  blocks[0][sizes[0] - 100] ^= 1;
  for (size_t i = 0; i < n; ++i) free(blocks[i]);
}

static void test_store_list__block_inspect_refuses_what_is_not_a_block(void **state) {
  (void)state;
  uint8_t *blocks[16];
  size_t sizes[16], page_bytes = 0;
  const size_t n = evicted_blocks(blocks, sizes, 16, &page_bytes);
  assert_true(n >= 1);
  uint8_t *b = blocks[0];
  const size_t size = sizes[0];
  kvp_store_block_info f, untouched;
  memset(&f, 0x5C, sizeof f);
  f.struct_size = sizeof f;
  memcpy(&untouched, &f, sizeof f);
  assert_kvp_status(kvp_store_block_inspect(b, 0, &f), KVP_ERR_FORMAT_MAGIC, "not a page block");
  assert_kvp_status(kvp_store_block_inspect(b, 3, &f), KVP_ERR_FORMAT_MAGIC, "not a page block");
  assert_kvp_status(kvp_store_block_inspect(b, 40, &f), KVP_ERR_FORMAT_TRUNCATED, "shorter than its 72-byte header");
  assert_kvp_status(kvp_store_block_inspect(b, size - 1, &f), KVP_ERR_FORMAT_TRUNCATED, "its geometry needs");
  uint8_t *longer = (uint8_t *)calloc(1, size + 1);
  memcpy(longer, b, size);
  assert_kvp_status(kvp_store_block_inspect(longer, size + 1, &f), KVP_ERR_FORMAT_CORRUPT, "more than");
  free(longer);
  b[0] ^= 0x20; /* magic */
  assert_kvp_status(kvp_store_block_inspect(b, size, &f), KVP_ERR_FORMAT_MAGIC, "no KVPB magic");
  b[0] ^= 0x20;
  b[4] = 9; /* version */
  assert_kvp_status(kvp_store_block_inspect(b, size, &f), KVP_ERR_FORMAT_VERSION, "version 9");
  b[4] = 1;
  b[60] = 0xFF, b[61] = 0xFF, b[62] = 0xFF, b[63] = 0xFF; /* 2^32-1 layers */
  memset(b + 64, 0xFF, 8);                                /* of 2^64-1 bytes each */
  assert_kvp_status(kvp_store_block_inspect(b, size, &f), KVP_ERR_FORMAT_CORRUPT, "impossible");
  const char text[] = "hello, not a block at all";
  assert_kvp_status(kvp_store_block_inspect(text, sizeof text, &f), KVP_ERR_FORMAT_MAGIC, "no KVPB magic");
  /* bad arguments */
  assert_kvp_status(kvp_store_block_inspect(b, size, NULL), KVP_ERR_INVALID_ARGUMENT, "out");
  assert_kvp_status(kvp_store_block_inspect(NULL, 8, &f), KVP_ERR_INVALID_ARGUMENT, "'block' must not be NULL");
  assert_memory_equal(&f, &untouched, sizeof f); /* nothing written by any failure */
  kvp_store_block_info small;
  memset(&small, 0x5C, sizeof small);
  small.struct_size = 8;
  assert_kvp_status(kvp_store_block_inspect(blocks[0], size, &small), KVP_ERR_VERSION_MISMATCH, "struct_size");
  assert_kvp_status(kvp_store_block_inspect(NULL, 0, &f), KVP_ERR_FORMAT_MAGIC, "0 bytes");
  for (size_t i = 0; i < n; ++i) free(blocks[i]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_store_list__memory_pages),
      cmocka_unit_test(test_store_list__memory_bound_drops_from_listing),
      cmocka_unit_test(test_store_list__directory_pages_and_restart),
      cmocka_unit_test(test_store_list__while_another_thread_puts),
      cmocka_unit_test(test_store_list__plugin_v2_lists_through_its_callback),
      cmocka_unit_test(test_store_list__plugin_v1_table_cannot_list),
      cmocka_unit_test(test_store_list__bad_input_changes_nothing),
      cmocka_unit_test(test_store_list__block_inspect_of_evicted_pages),
      cmocka_unit_test(test_store_list__block_inspect_refuses_what_is_not_a_block),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
