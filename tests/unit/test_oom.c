/* Out-of-memory at every allocation. The test allocator (tests/support: cmocka's test_malloc, so
 * every block is leak-checked per test) is installed as the process default with
 * kvp_set_host_allocator(); objects made while it is installed capture it. Each scenario runs
 * the call with allocation N failing, for N = 0, 1, 2, ... until the call succeeds: every failing
 * N must return KVP_ERR_OUT_OF_MEMORY with a message, leak nothing (no live block) and change
 * nothing (caches, pools, output arguments). Under ASan/LSan (scripts/test.sh) nothing else leaks
 * either. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "support.h"

#define LAYERS 2
#define HEADS 2
#define HDIM 64
#define PAGE 16
#define PAGES 24
#define MAX_N 100000 /* the loops end long before: a call makes a bounded number of allocations */

static kvp_test_alloc_state g_alloc;

static int setup(void **state) {
  (void)state;
  memset(&g_alloc, 0, sizeof g_alloc);
  g_alloc.fail_after = -1;
  kvp_host_allocator a = kvp_test_allocator(&g_alloc);
  assert_kvp_ok(kvp_set_host_allocator(&a));
  return 0;
}

static int teardown(void **state) {
  (void)state;
  assert_kvp_ok(kvp_set_host_allocator(NULL));
  assert_int_equal(g_alloc.live, 0);
  return 0;
}

/* Arms the allocator: allocation n (counting from 0) and every later one fail. */
static void fail_from(long n) {
  g_alloc.allocations = 0;
  g_alloc.fail_after = n;
}

static void disarm(void) { g_alloc.fail_after = -1; }

/* One failed attempt: the status, a message, no block left beyond `live_before`. */
static void expect_oom(kvp_status st, long live_before, long n, const char *what) {
  if (st != KVP_ERR_OUT_OF_MEMORY)
    fail_msg("%s with allocation %ld failing: %s (%s), expected KVP_ERR_OUT_OF_MEMORY", what, n, kvp_status_name(st),
             kvp_last_error_message());
  assert_true(kvp_last_error_message()[0] != '\0');
  if (g_alloc.live != live_before)
    fail_msg("%s with allocation %ld failing leaked %ld block(s)", what, n, g_alloc.live - live_before);
}

static kvp_cache *make_cache_of(const kvp_config *cfg) {
  kvp_cache *c = NULL;
  assert_kvp_ok(kvp_cache_create(cfg, NULL, &c));
  /* Recognisable, non-zero pages. */
  const size_t n = kvp_test_layer_bytes(c);
  uint8_t *buf = (uint8_t *)test_malloc(n);
  for (uint32_t l = 0; l < LAYERS; ++l) {
    for (size_t i = 0; i < n; ++i) buf[i] = (uint8_t)(i * 7 + l * 13 + 1);
    assert_kvp_ok(kvp_cache_write_layer(c, l, buf, n, NULL));
  }
  test_free(buf);
  return c;
}

static kvp_cache *make_cache(kvp_layout layout) {
  const kvp_config cfg = kvp_test_config(LAYERS, HEADS, HDIM, PAGE, PAGES, KVP_DTYPE_BF16, layout);
  return make_cache_of(&cfg);
}

/* Copies every layer of a cache (test_malloc'ed; compare with same_layers). */
static uint8_t *snapshot(const kvp_cache *c) {
  const size_t n = kvp_test_layer_bytes(c);
  uint8_t *s = (uint8_t *)test_malloc(n * LAYERS);
  for (uint32_t l = 0; l < LAYERS; ++l) assert_kvp_ok(kvp_cache_read_layer(c, l, s + l * n, n, NULL));
  return s;
}

static void assert_same_layers(const kvp_cache *c, const uint8_t *snap) {
  uint8_t *now = snapshot(c);
  assert_memory_equal(now, snap, kvp_test_layer_bytes(c) * LAYERS);
  test_free(now);
}

static void test_oom__cache_create(void **state) {
  (void)state;
  kvp_config cfg = kvp_test_config(LAYERS, HEADS, HDIM, PAGE, PAGES, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  long n;
  for (n = 0; n < MAX_N; ++n) {
    kvp_cache *c = (kvp_cache *)(uintptr_t)1;
    fail_from(n);
    const kvp_status st = kvp_cache_create(&cfg, NULL, &c);
    disarm();
    if (st == KVP_OK) {
      assert_kvp_ok(kvp_cache_destroy(c));
      break;
    }
    expect_oom(st, 0, n, "kvp_cache_create");
    assert_null(c);
  }
  assert_true(n >= 3); /* the cache, its backend, its layer list, ... each come from the allocator */
}

/* A shard (1.4), and the re-sharding load of two TP-2 shard blobs into a whole cache: every
 * failing allocation leaves the target unchanged (every check comes before the first write). */
static void test_oom__shards(void **state) {
  (void)state;
  kvp_config cfg = kvp_test_config(LAYERS, HEADS, 128, PAGE, PAGES, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  cfg.kv_head_shards = cfg.requested_kv_head_shards = 2;  /* a head per rank */
  assert_kvp_ok(kvp_config_validate(&cfg));
  long n;
  for (n = 0; n < MAX_N; ++n) {
    kvp_cache *c = (kvp_cache *)(uintptr_t)1;
    fail_from(n);
    const kvp_status st = kvp_cache_create_shard(&cfg, 1, 0, NULL, &c);
    disarm();
    if (st == KVP_OK) {
      assert_kvp_ok(kvp_cache_destroy(c));
      break;
    }
    expect_oom(st, 0, n, "kvp_cache_create_shard");
    assert_null(c);
  }
  assert_true(n >= 3);
  kvp_cache *shards[2] = {NULL, NULL};
  uint8_t *blobs[2];
  kvp_blob_ref refs[2];
  for (int r = 0; r < 2; ++r) {
    assert_kvp_ok(kvp_cache_create_shard(&cfg, r, 0, NULL, &shards[r]));
    size_t need = 0, written = 0;
    assert_kvp_ok(kvp_serialized_size(shards[r], NULL, &need));
    blobs[r] = (uint8_t *)test_malloc(need);
    assert_kvp_ok(kvp_serialize(shards[r], NULL, blobs[r], need, &written));
    refs[r] = (kvp_blob_ref){blobs[r], written, NULL};
  }
  kvp_cache *dst = make_cache_of(&cfg);
  uint8_t *snap = snapshot(dst);
  const long base = g_alloc.live;
  for (n = 0; n < MAX_N; ++n) {
    fail_from(n);
    const kvp_status st = kvp_deserialize_shards_into(dst, refs, 2);
    disarm();
    if (st == KVP_OK) break;
    expect_oom(st, base, n, "kvp_deserialize_shards_into");
    assert_same_layers(dst, snap);
  }
  assert_true(n >= 4);
  test_free(snap);
  for (int r = 0; r < 2; ++r) {
    test_free(blobs[r]);
    assert_kvp_ok(kvp_cache_destroy(shards[r]));
  }
  assert_kvp_ok(kvp_cache_destroy(dst));
}

/* kvp_serialize to a buffer, whole cache (parallel path: >= 256 KiB) and one page. */
static void test_oom__serialize(void **state) {
  (void)state;
  kvp_cache *c = make_cache(KVP_LAYOUT_V3);
  const long base = g_alloc.live;
  const int32_t one[1] = {5};
  for (int sel = 0; sel < 2; ++sel) {
    kvp_serialize_options o = KVP_SERIALIZE_OPTIONS_INIT;
    if (sel == 1) {
      o.page_ids = one;
      o.num_page_ids = 1;
    }
    size_t need = 0;
    assert_kvp_ok(kvp_serialized_size(c, &o, &need));
    uint8_t *buf = (uint8_t *)test_malloc(need);
    long n;
    for (n = 0; n < MAX_N; ++n) {
      size_t written = 0;
      fail_from(n);
      const kvp_status st = kvp_serialize(c, &o, buf, need, &written);
      disarm();
      if (st == KVP_OK) {
        assert_int_equal(written, need);
        break;
      }
      expect_oom(st, base, n, "kvp_serialize");
    }
    assert_true(n >= 1);
    test_free(buf);
  }
  assert_kvp_ok(kvp_cache_destroy(c));
}

typedef struct sink {
  uint8_t *data;
  size_t len, cap;
} sink;

static int32_t KVP_CALL write_fn(const void *p, size_t n, void *ud) {
  sink *s = (sink *)ud;
  if (s->len + n > s->cap) return 1;
  memcpy(s->data + s->len, p, n);
  s->len += n;
  return 0;
}

static int32_t KVP_CALL read_fn(void *dst, size_t n, size_t *got, void *ud) {
  sink *s = (sink *)ud;
  size_t k = s->cap - s->len < n ? s->cap - s->len : n;
  if (k > 1000) k = 1000; /* a stream in small pieces */
  memcpy(dst, s->data + s->len, k);
  s->len += k;
  *got = k;
  return 0;
}

static void test_oom__serialize_to_writer_and_file(void **state) {
  (void)state;
  kvp_cache *c = make_cache(KVP_LAYOUT_V2);
  const long base = g_alloc.live;
  size_t need = 0;
  assert_kvp_ok(kvp_serialized_size(c, NULL, &need));
  sink s = {(uint8_t *)test_malloc(need), 0, need};
  long n;
  for (n = 0; n < MAX_N; ++n) {
    s.len = 0;
    fail_from(n);
    const kvp_status st = kvp_serialize_to_writer(c, NULL, write_fn, &s);
    disarm();
    if (st == KVP_OK) break;
    expect_oom(st, base, n, "kvp_serialize_to_writer");
  }
  assert_true(n >= 1);
  assert_int_equal(s.len, need);
  char path[64];
  snprintf(path, sizeof path, "/tmp/kvp_test_oom_%d.kvps", (int)getpid());
  for (n = 0; n < MAX_N; ++n) {
    fail_from(n);
    const kvp_status st = kvp_serialize_to_file(c, NULL, path);
    disarm();
    if (st == KVP_OK) break;
    expect_oom(st, base, n, "kvp_serialize_to_file");
    assert_int_equal(access(path, F_OK), -1); /* nothing replaced or left behind */
  }
  assert_true(n >= 2);
  unlink(path);
  test_free(s.data);
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void test_oom__deserialize_new(void **state) {
  (void)state;
  kvp_cache *c = make_cache(KVP_LAYOUT_V3);
  size_t need = 0, written = 0;
  assert_kvp_ok(kvp_serialized_size(c, NULL, &need));
  uint8_t *blob = (uint8_t *)test_malloc(need);
  assert_kvp_ok(kvp_serialize(c, NULL, blob, need, &written));
  uint8_t *snap = snapshot(c);
  const long base = g_alloc.live;
  for (int from_reader = 0; from_reader < 2; ++from_reader) {
    long n;
    for (n = 0; n < MAX_N; ++n) {
      kvp_cache *d = (kvp_cache *)(uintptr_t)1;
      sink s = {blob, 0, need};
      fail_from(n);
      const kvp_status st = from_reader ? kvp_deserialize_new_from_reader(read_fn, &s, NULL, &d)
                                        : kvp_deserialize_new(blob, need, NULL, &d);
      disarm();
      if (st == KVP_OK) {
        assert_same_layers(d, snap);
        assert_kvp_ok(kvp_cache_destroy(d));
        break;
      }
      expect_oom(st, base, n, from_reader ? "kvp_deserialize_new_from_reader" : "kvp_deserialize_new");
      assert_null(d);
    }
    assert_true(n >= 4);
  }
  test_free(snap);
  test_free(blob);
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void test_oom__deserialize_into(void **state) {
  (void)state;
  kvp_cache *src = make_cache(KVP_LAYOUT_V3);
  const int32_t ids[3] = {2, 3, 9};
  kvp_serialize_options o = KVP_SERIALIZE_OPTIONS_INIT;
  o.page_ids = ids;
  o.num_page_ids = 3;
  size_t need = 0, written = 0;
  assert_kvp_ok(kvp_serialized_size(src, &o, &need));
  uint8_t *blob = (uint8_t *)test_malloc(need);
  assert_kvp_ok(kvp_serialize(src, &o, blob, need, &written));
  kvp_config cfg = kvp_test_config(LAYERS, HEADS, HDIM, PAGE, PAGES, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  kvp_cache *dst = NULL;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &dst)); /* all zero */
  uint8_t *snap = snapshot(dst);
  const long base = g_alloc.live;
  const int32_t to[3] = {7, 1, 20};
  long n;
  for (n = 0; n < MAX_N; ++n) {
    sink s = {blob, 0, need};
    fail_from(n);
    const kvp_status st = kvp_deserialize_into_from_reader(dst, read_fn, &s, to, 3);
    disarm();
    if (st == KVP_OK) break;
    expect_oom(st, base, n, "kvp_deserialize_into_from_reader");
    assert_same_layers(dst, snap); /* verify-then-write: untouched */
  }
  assert_true(n >= 2);
  test_free(snap);
  test_free(blob);
  assert_kvp_ok(kvp_cache_destroy(dst));
  assert_kvp_ok(kvp_cache_destroy(src));
}

static void test_oom__metadata_build_and_create(void **state) {
  (void)state;
  kvp_config cfg = kvp_test_config(LAYERS, HEADS, HDIM, PAGE, PAGES, KVP_DTYPE_BF16, KVP_LAYOUT_V2);
  int32_t pages_a[2] = {1, 2}, pages_b[1] = {3};
  kvp_batch_request reqs[2];
  memset(reqs, 0, sizeof reqs);
  reqs[0].num_computed = 20;
  reqs[0].num_scheduled = 1;
  reqs[0].page_ids = pages_a;
  reqs[0].num_pages = 2;
  reqs[1].num_scheduled = 9;
  reqs[1].page_ids = pages_b;
  reqs[1].num_pages = 1;
  for (int layout = 0; layout < 2; ++layout) {
    cfg.version = layout ? KVP_LAYOUT_V3 : KVP_LAYOUT_V2;
    long n;
    for (n = 0; n < MAX_N; ++n) {
      int32_t order[2] = {-7, -7};
      kvp_metadata *m = (kvp_metadata *)(uintptr_t)1;
      fail_from(n);
      const kvp_status st = kvp_metadata_build(&cfg, reqs, 2, NULL, order, &m);
      disarm();
      if (st == KVP_OK) {
        assert_int_equal(order[0], 0);
        assert_kvp_ok(kvp_metadata_destroy(m));
        break;
      }
      expect_oom(st, 0, n, "kvp_metadata_build");
      assert_null(m);
      assert_int_equal(order[0], -7); /* written only on success */
    }
    assert_true(n >= 3);
  }
  long n;
  for (n = 0; n < MAX_N; ++n) {
    kvp_metadata *m = (kvp_metadata *)(uintptr_t)1;
    fail_from(n);
    const kvp_status st = kvp_metadata_create_empty(KVP_LAYOUT_V3, 64, 8, 4, PAGE, &m);
    disarm();
    if (st == KVP_OK) {
      assert_kvp_ok(kvp_metadata_destroy(m));
      break;
    }
    expect_oom(st, 0, n, "kvp_metadata_create_empty");
    assert_null(m);
  }
  assert_true(n >= 2);
}

static void test_oom__pool_create_append_fork(void **state) {
  (void)state;
  kvp_cache *c = make_cache(KVP_LAYOUT_V3);
  const long base = g_alloc.live;
  kvp_pool *p = NULL;
  long n;
  for (n = 0; n < MAX_N; ++n) {
    p = (kvp_pool *)(uintptr_t)1;
    fail_from(n);
    const kvp_status st = kvp_pool_create(c, NULL, &p);
    disarm();
    if (st == KVP_OK) break;
    expect_oom(st, base, n, "kvp_pool_create");
    assert_null(p);
  }
  assert_true(n >= 2); /* the pool and its arrays (the handle block is the handle table's) */
  int32_t toks[20];
  for (int i = 0; i < 20; ++i) toks[i] = 100 + i;
  kvp_seq_id s;
  assert_kvp_ok(kvp_pool_add_sequence(p, toks, 20, 0, 0, &s, NULL));
  const long with_pool = g_alloc.live;
  /* Operations allocate nothing: each succeeds with every allocation failing. */
  fail_from(0);
  assert_kvp_ok(kvp_pool_append(p, s, toks, 5, NULL));
  kvp_seq_id kids[2];
  assert_kvp_ok(kvp_pool_fork(p, s, 2, kids));
  assert_kvp_ok(kvp_pool_append(p, kids[0], toks, 3, NULL)); /* copy-on-write of the shared tail */
  disarm();
  assert_int_equal(g_alloc.live, with_pool);
  assert_kvp_ok(kvp_pool_check_invariants(p));
  assert_kvp_ok(kvp_pool_destroy(p));
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void test_oom__json(void **state) {
  (void)state;
  kvp_config cfg = kvp_test_config(LAYERS, HEADS, HDIM, PAGE, PAGES, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  char text[2048];
  size_t len = 0;
  assert_kvp_ok(kvp_config_to_json(&cfg, text, sizeof text, &len));
  long n;
  for (n = 0; n < MAX_N; ++n) {
    kvp_config out;
    memset(&out, 0x5A, sizeof out);
    fail_from(n);
    const kvp_status st = kvp_config_from_json(text, len, &out);
    disarm();
    if (st == KVP_OK) {
      assert_int_equal(out.num_pages, cfg.num_pages);
      break;
    }
    expect_oom(st, 0, n, "kvp_config_from_json");
    assert_int_equal(out.num_pages, 0x5A5A5A5A5A5A5A5All); /* untouched */
  }
  assert_int_equal(n, 0); /* it keeps nothing on the heap: short strings stay inline */
  for (n = 0; n < MAX_N; ++n) {
    char buf[2048];
    size_t w = 0;
    fail_from(n);
    const kvp_status st = kvp_config_to_json(&cfg, buf, sizeof buf, &w);
    disarm();
    if (st == KVP_OK) break;
    expect_oom(st, 0, n, "kvp_config_to_json");
  }
  assert_true(n >= 1);
  static const char md_json[] =
      "{\"pages_tables\": [[1, 2, 0], [3, 0, 0]], \"context_lens\": [21, 9], \"query_start_loc\": [0, 1, 10], "
      "\"num_seqs\": [2], \"slot_mapping\": null, \"position_ids\": [20, 0, 1, 2, 3, 4, 5, 6, 7, 8], "
      "\"request_distribution\": [1, 1, 2], \"num_kv_update_slices\": null, \"version\": \"v3\", "
      "\"num_slices_per_kv_cache_update_page\": null, \"page_size\": 16, \"prefill_chunk_size\": 512, "
      "\"ignored\": {\"deep\": [[[1]], {\"x\": \"a long string that the reader must not keep\"}]}}";
  kvp_metadata *m = NULL;
  for (n = 0; n < MAX_N; ++n) {
    m = (kvp_metadata *)(uintptr_t)1;
    fail_from(n);
    const kvp_status st = kvp_metadata_from_json(md_json, strlen(md_json), &m);
    disarm();
    if (st == KVP_OK) break;
    expect_oom(st, 0, n, "kvp_metadata_from_json");
    assert_null(m);
  }
  assert_true(n >= 4);
  const long with_md = g_alloc.live;
  for (n = 0; n < MAX_N; ++n) {
    char buf[4096];
    size_t w = 0;
    fail_from(n);
    const kvp_status st = kvp_metadata_to_json(m, buf, sizeof buf, &w);
    disarm();
    if (st == KVP_OK) {
      assert_non_null(strstr(buf, "\"context_lens\": [21, 9]"));
      break;
    }
    expect_oom(st, with_md, n, "kvp_metadata_to_json");
  }
  assert_true(n >= 1);
  assert_kvp_ok(kvp_metadata_destroy(m));
}

static void test_oom__concatenate(void **state) {
  (void)state;
  kvp_cache *c = make_cache(KVP_LAYOUT_V2);
  uint8_t *snap = snapshot(c);
  enum { T = 40 };
  uint16_t *k = (uint16_t *)test_calloc(T * HEADS * HDIM, sizeof(uint16_t));
  uint16_t *v = (uint16_t *)test_calloc(T * HEADS * HDIM, sizeof(uint16_t));
  for (int i = 0; i < T * HEADS * HDIM; ++i) k[i] = v[i] = (uint16_t)(0x3F80 + (i % 64));
  /* 40 single-token slices: the write plan holds 40 runs (sorted in place for the overlap check). */
  int32_t sm[3 * T], nv[1] = {T};
  for (int j = 0; j < T; ++j) {
    sm[j] = 3 * j + 17;
    sm[T + j] = j;
    sm[2 * T + j] = 1;
  }
  kvp_metadata *md = kvp_test_v2_metadata(sm, T, nv);
  kvp_tensor kt = kvp_test_tensor(k, KVP_DTYPE_BF16, T, HEADS, HDIM, KVP_DEVICE_CPU);
  kvp_tensor vt = kvp_test_tensor(v, KVP_DTYPE_BF16, T, HEADS, HDIM, KVP_DEVICE_CPU);
  const long base = g_alloc.live;
  long n;
  for (n = 0; n < MAX_N; ++n) {
    fail_from(n);
    const kvp_status st = kvp_concatenate(c, 1, &kt, &vt, md, NULL);
    disarm();
    if (st == KVP_OK) break;
    expect_oom(st, base, n, "kvp_concatenate");
    assert_same_layers(c, snap);
  }
  assert_true(n >= 1); /* the runs */
  assert_kvp_ok(kvp_metadata_destroy(md));
  test_free(k);
  test_free(v);
  test_free(snap);
  assert_kvp_ok(kvp_cache_destroy(c));
}

/* The plan kept by metadata whose arrays cannot change (owning; borrowed with the flag): every
 * allocation while it is built fails cleanly (nothing kept, nothing written), the call that
 * succeeds keeps it, and the next layer's call uses it without allocating. v3 and v2. */
static void test_oom__kept_plan(void **state) {
  (void)state;
  for (int layout = 0; layout < 2; ++layout) {
    kvp_cache *c = make_cache(layout ? KVP_LAYOUT_V2 : KVP_LAYOUT_V3);
    uint8_t *snap = snapshot(c);
    int32_t pages[3][2] = {{3, 4}, {5, 6}, {7, 8}}, order[3];
    kvp_batch_request r[3];
    for (int i = 0; i < 3; ++i) {
      r[i].num_computed = i == 2 ? 0 : 5 + i;
      r[i].num_scheduled = i == 2 ? 9 : 1;
      r[i].page_ids = pages[i];
      r[i].num_pages = 2;
    }
    kvp_config cfg;
    assert_kvp_ok(kvp_cache_get_config(c, &cfg));
    kvp_batch_options bo = KVP_BATCH_OPTIONS_INIT;
    bo.flags = KVP_BATCH_FLAG_REQUEST_ORDER;
    kvp_metadata *owning = NULL;
    assert_kvp_ok(kvp_metadata_build(&cfg, r, 3, &bo, order, &owning));
    kvp_metadata_desc d = KVP_METADATA_DESC_INIT;
    assert_kvp_ok(kvp_metadata_get_desc(owning, &d));
    d.flags = KVP_METADATA_FLAG_IMMUTABLE;
    kvp_metadata *borrowed = NULL;
    assert_kvp_ok(kvp_metadata_create(&d, &borrowed));
    enum { T = 11 };
    uint16_t *k = (uint16_t *)test_calloc(T * HEADS * HDIM, sizeof(uint16_t));
    for (int i = 0; i < T * HEADS * HDIM; ++i) k[i] = (uint16_t)(0x3F80 + (i % 64));
    kvp_tensor kt = kvp_test_tensor(k, KVP_DTYPE_BF16, T, HEADS, HDIM, KVP_DEVICE_CPU);
    const kvp_metadata *mds[2] = {owning, borrowed};
    for (int which = 0; which < 2; ++which) {
      const long base = g_alloc.live;
      long n;
      for (n = 0; n < MAX_N; ++n) {
        fail_from(n);
        const kvp_status st = kvp_concatenate(c, 0, &kt, &kt, mds[which], NULL);
        disarm();
        if (st == KVP_OK) break;
        expect_oom(st, base, n, "kvp_concatenate (building the plan)");
        assert_same_layers(c, snap);
      }
      assert_true(n >= 1);
      fail_from(0); /* the plan is kept: the next layer allocates nothing */
      assert_kvp_ok(kvp_concatenate(c, 1, &kt, &kt, mds[which], NULL));
      disarm();
      assert_kvp_ok(kvp_cache_write_layer(c, 0, snap, kvp_test_layer_bytes(c), NULL));
      assert_kvp_ok(kvp_cache_write_layer(c, 1, snap + kvp_test_layer_bytes(c), kvp_test_layer_bytes(c), NULL));
    }
    assert_kvp_ok(kvp_metadata_destroy(borrowed));
    assert_kvp_ok(kvp_metadata_destroy(owning));
    test_free(k);
    test_free(snap);
    assert_kvp_ok(kvp_cache_destroy(c));
  }
}

/* kvp_attention with the fused write: a decode row over a long context (split over the workers
 * when there are several) and a prefill row, v2 and v3. Every failure leaves the pages and `out`
 * as they were: the scratch is allocated before the write. */
static void test_oom__attention(void **state) {
  (void)state;
  enum { T = 41, HQ = 2 * HEADS, DECODE_CTX = 700 };
  for (int layout = 0; layout < 2; ++layout) {
    const kvp_config cfg = kvp_test_config_len(LAYERS, HEADS, HDIM, PAGE, 80, KVP_DTYPE_BF16,
                                               layout ? KVP_LAYOUT_V3 : KVP_LAYOUT_V2, 1024);
    kvp_cache *c = make_cache_of(&cfg);
    uint8_t *snap = snapshot(c);
    int32_t decode_pages[44], prefill_pages[3] = {60, 61, 62}, order[2];
    for (int i = 0; i < 44; ++i) decode_pages[i] = 1 + i;
    kvp_batch_request reqs[2];
    memset(reqs, 0, sizeof reqs);
    reqs[0].num_computed = DECODE_CTX;
    reqs[0].num_scheduled = 1;
    reqs[0].page_ids = decode_pages;
    reqs[0].num_pages = 44;
    reqs[1].num_scheduled = T - 1;
    reqs[1].page_ids = prefill_pages;
    reqs[1].num_pages = 3;
    kvp_metadata *md = NULL;
    assert_kvp_ok(kvp_metadata_build(&cfg, reqs, 2, NULL, order, &md));
    uint16_t *q = (uint16_t *)test_calloc(T * HQ * HDIM, sizeof(uint16_t));
    uint16_t *kv = (uint16_t *)test_calloc(T * HEADS * HDIM, sizeof(uint16_t));
    float *out = (float *)test_malloc(sizeof(float) * T * HQ * HDIM);
    float *out_before = (float *)test_malloc(sizeof(float) * T * HQ * HDIM);
    for (int i = 0; i < T * HQ * HDIM; ++i) q[i] = (uint16_t)(0x3C00 + (i % 97));
    for (int i = 0; i < T * HEADS * HDIM; ++i) kv[i] = (uint16_t)(0x3F80 + (i % 64));
    memset(out, 0xA5, sizeof(float) * T * HQ * HDIM);
    memcpy(out_before, out, sizeof(float) * T * HQ * HDIM);
    const kvp_tensor qt = kvp_test_tensor(q, KVP_DTYPE_BF16, T, HQ, HDIM, KVP_DEVICE_CPU);
    const kvp_tensor kvt = kvp_test_tensor(kv, KVP_DTYPE_BF16, T, HEADS, HDIM, KVP_DEVICE_CPU);
    const kvp_tensor ot = kvp_test_tensor(out, KVP_DTYPE_F32, T, HQ, HDIM, KVP_DEVICE_CPU);
    const long base = g_alloc.live;
    long n;
    for (n = 0; n < MAX_N; ++n) {
      fail_from(n);
      const kvp_status st = kvp_attention(c, 1, &qt, &kvt, &kvt, md, NULL, &ot, NULL);
      disarm();
      if (st == KVP_OK) break;
      expect_oom(st, base, n, "kvp_attention");
      assert_same_layers(c, snap);
      assert_memory_equal(out, out_before, sizeof(float) * T * HQ * HDIM);
    }
    assert_true(n >= 4); /* validation scratch, the write's runs, the work items, the workers' scratch */
    assert_true(memcmp(out, out_before, sizeof(float) * T * HQ * HDIM) != 0);
    assert_kvp_ok(kvp_metadata_destroy(md));
    test_free(q);
    test_free(kv);
    test_free(out);
    test_free(out_before);
    test_free(snap);
    assert_kvp_ok(kvp_cache_destroy(c));
  }
}

/* ---- sweeps through a callback --------------------------------------------------------------- */

/* One call of a sweep: returns its status; `ctx` carries its arguments. */
typedef kvp_status (*oom_call)(void *ctx);
/* After a failed attempt: asserts that nothing changed. */
typedef void (*oom_unchanged)(void *ctx);

/* Runs call with allocation n failing for n = 0, 1, ... until it succeeds: every failure is
 * KVP_ERR_OUT_OF_MEMORY with a message, leaves no block beyond the ones live before, and
 * passes `unchanged` (may be NULL). Returns the number of failing points (n of the success). */
static long sweep(const char *what, oom_call call, oom_unchanged unchanged, void *ctx) {
  const long base = g_alloc.live;
  for (long n = 0; n < MAX_N; ++n) {
    fail_from(n);
    const kvp_status st = call(ctx);
    disarm();
    if (st == KVP_OK) {
      printf("oom: %s: %ld failing allocation points\n", what, n);
      return n;
    }
    expect_oom(st, base, n, what);
    if (unchanged != NULL) unchanged(ctx);
  }
  fail_msg("%s never succeeded", what);
  return -1;
}

/* A blob of a whole cache, or of pages `ids` (test_malloc'ed). */
static uint8_t *serialize_pages(const kvp_cache *c, const int32_t *ids, uint32_t n, size_t *len) {
  kvp_serialize_options o = KVP_SERIALIZE_OPTIONS_INIT;
  o.page_ids = ids;
  o.num_page_ids = n;
  size_t written = 0;
  assert_kvp_ok(kvp_serialized_size(c, &o, len));
  uint8_t *blob = (uint8_t *)test_malloc(*len);
  assert_kvp_ok(kvp_serialize(c, &o, blob, *len, &written));
  return blob;
}

static void write_file(const char *path, const uint8_t *data, size_t len) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, len, f), len);
  assert_int_equal(fclose(f), 0);
}

/* deserialize_into / deserialize_new from a buffer or a file, whole cache (>= 256 KiB: the
 * parallel path) or a few pages. */
typedef struct load_case {
  kvp_cache *dst;        /* into: the target; new: NULL */
  const uint8_t *blob;
  size_t len;
  const char *path;      /* non-NULL: from this file */
  const int32_t *to;     /* into: destination pages */
  uint32_t num_to;
  const uint8_t *snap;   /* into: dst's layers before */
  kvp_cache *made;       /* new: the result */
} load_case;

static kvp_status load_into(void *p) {
  load_case *lc = (load_case *)p;
  return lc->path ? kvp_deserialize_into_from_file(lc->dst, lc->path, lc->to, lc->num_to)
                  : kvp_deserialize_into(lc->dst, lc->blob, lc->len, lc->to, lc->num_to);
}

static void load_into_unchanged(void *p) {
  const load_case *lc = (const load_case *)p;
  assert_same_layers(lc->dst, lc->snap);
}

static kvp_status load_new(void *p) {
  load_case *lc = (load_case *)p;
  lc->made = (kvp_cache *)(uintptr_t)1;
  return lc->path ? kvp_deserialize_new_from_file(lc->path, NULL, &lc->made)
                  : kvp_deserialize_new(lc->blob, lc->len, NULL, &lc->made);
}

static void load_new_unchanged(void *p) { assert_null(((const load_case *)p)->made); }

static void test_oom__deserialize_into_buffer_and_file(void **state) {
  (void)state;
  kvp_cache *src = make_cache(KVP_LAYOUT_V3);
  const int32_t ids[3] = {2, 3, 9}, to[3] = {7, 1, 20};
  char path[64];
  snprintf(path, sizeof path, "/tmp/kvp_test_oom_into_%d.kvps", (int)getpid());
  for (int whole = 0; whole < 2; ++whole) {
    size_t len = 0;
    uint8_t *blob = whole ? serialize_pages(src, NULL, 0, &len) : serialize_pages(src, ids, 3, &len);
    assert_true(whole ? len >= 256 * 1024 : len < 256 * 1024);
    write_file(path, blob, len);
    for (int from_file = 0; from_file < 2; ++from_file) {
      kvp_config cfg = kvp_test_config(LAYERS, HEADS, HDIM, PAGE, PAGES, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
      kvp_cache *dst = NULL;
      assert_kvp_ok(kvp_cache_create(&cfg, NULL, &dst)); /* all zero */
      uint8_t *snap = snapshot(dst);
      load_case lc = {dst, blob, len, from_file ? path : NULL, whole ? NULL : to, whole ? 0u : 3u, snap, NULL};
      const long points = sweep(from_file ? "kvp_deserialize_into_from_file" : "kvp_deserialize_into", load_into,
                                load_into_unchanged, &lc);
      if (from_file) assert_true(points >= 1); /* the file reader's buffer at least */
      if (whole) { /* the whole cache arrived */
        uint8_t *want = snapshot(src);
        assert_same_layers(dst, want);
        test_free(want);
      }
      test_free(snap);
      assert_kvp_ok(kvp_cache_destroy(dst));
    }
    test_free(blob);
  }
  unlink(path);
  assert_kvp_ok(kvp_cache_destroy(src));
}

static void test_oom__deserialize_new_small_and_file(void **state) {
  (void)state;
  kvp_cache *src = make_cache(KVP_LAYOUT_V2);
  const int32_t ids[2] = {4, 11};
  char path[64];
  snprintf(path, sizeof path, "/tmp/kvp_test_oom_new_%d.kvps", (int)getpid());
  for (int whole = 0; whole < 2; ++whole) {
    size_t len = 0;
    uint8_t *blob = whole ? serialize_pages(src, NULL, 0, &len) : serialize_pages(src, ids, 2, &len);
    write_file(path, blob, len);
    for (int from_file = 0; from_file < 2; ++from_file) {
      load_case lc = {NULL, blob, len, from_file ? path : NULL, NULL, 0, NULL, NULL};
      const long points = sweep(from_file ? "kvp_deserialize_new_from_file" : "kvp_deserialize_new", load_new,
                                load_new_unchanged, &lc);
      assert_true(points >= 3); /* the cache, its backend, its layers, ... */
      assert_kvp_ok(kvp_cache_destroy(lc.made));
    }
    test_free(blob);
  }
  unlink(path);
  assert_kvp_ok(kvp_cache_destroy(src));
}

/* Pool operations: each either allocates nothing or fails with KVP_ERR_OUT_OF_MEMORY leaving the
 * pool as it was (counters, every sequence's length and page table). */
enum { POOL_SEQS = 4, POOL_ROW = 16 };

typedef struct pool_state {
  kvp_pool_stats stats;
  size_t len[POOL_SEQS], computed[POOL_SEQS], count[POOL_SEQS];
  int32_t rows[POOL_SEQS][POOL_ROW];
} pool_state;

typedef struct pool_case {
  kvp_pool *p;
  kvp_seq_id seqs[POOL_SEQS]; /* 0 = none */
  int32_t tokens[64];
  int op;
  pool_state before;
} pool_case;

static void read_pool(const pool_case *pc, pool_state *s) {
  memset(s, 0, sizeof *s);
  s->stats.struct_size = sizeof s->stats;
  assert_kvp_ok(kvp_pool_get_stats(pc->p, &s->stats));
  for (int i = 0; i < POOL_SEQS; ++i)
    if (pc->seqs[i].id != 0) {
      assert_kvp_ok(kvp_pool_get_sequence_length(pc->p, pc->seqs[i], &s->len[i], &s->computed[i]));
      assert_kvp_ok(kvp_pool_get_page_table(pc->p, pc->seqs[i], s->rows[i], POOL_ROW, &s->count[i]));
    }
}

static void pool_unchanged(void *p) {
  const pool_case *pc = (const pool_case *)p;
  pool_state now;
  read_pool(pc, &now);
  assert_memory_equal(&now, &pc->before, sizeof now);
}

enum { OP_ADD_REUSE, OP_SET_COMPUTED, OP_TRUNCATE, OP_APPEND, OP_FORK, OP_FREE, OP_CLEAR, OP_CHECK, OP_COUNT };
static const char *const kPoolOps[OP_COUNT] = {"add_sequence (prefix hit)", "set_computed", "truncate", "append",
                                                "fork", "free_sequence", "clear_prefix_cache", "check_invariants"};

static kvp_status pool_op(void *p) {
  pool_case *pc = (pool_case *)p;
  kvp_seq_id out[1] = {{0}};
  kvp_status st = KVP_ERR_INTERNAL;
  read_pool(pc, &pc->before);
  switch (pc->op) {
    case OP_ADD_REUSE: st = kvp_pool_add_sequence(pc->p, pc->tokens, 40, 0, 0, &out[0], NULL); break;
    case OP_SET_COMPUTED: st = kvp_pool_set_computed(pc->p, pc->seqs[1], 33); break;
    case OP_TRUNCATE: st = kvp_pool_truncate(pc->p, pc->seqs[1], 17); break;
    case OP_APPEND: st = kvp_pool_append(pc->p, pc->seqs[1], pc->tokens, 20, NULL); break;
    case OP_FORK: st = kvp_pool_fork(pc->p, pc->seqs[1], 1, out); break;
    case OP_FREE: st = kvp_pool_free_sequence(pc->p, pc->seqs[1]); break;
    case OP_CLEAR: st = kvp_pool_clear_prefix_cache(pc->p); break;
    default: st = kvp_pool_check_invariants(pc->p); break;
  }
  if (st == KVP_OK && out[0].id != 0) pc->seqs[pc->op == OP_FORK ? 3 : 2] = out[0];
  if (st == KVP_OK && pc->op == OP_FREE) pc->seqs[1].id = 0;
  return st;
}

static void test_oom__pool_operations(void **state) {
  (void)state;
  kvp_cache *c = make_cache(KVP_LAYOUT_V3);
  pool_case pc;
  memset(&pc, 0, sizeof pc);
  for (int i = 0; i < 64; ++i) pc.tokens[i] = 1000 + i;
  assert_kvp_ok(kvp_pool_create(c, NULL, &pc.p));
  /* A computed, indexed prompt (sequence 0), so that sequence 1's prompt hits the prefix cache. */
  assert_kvp_ok(kvp_pool_add_sequence(pc.p, pc.tokens, 40, 0, 0, &pc.seqs[0], NULL));
  assert_kvp_ok(kvp_pool_set_computed(pc.p, pc.seqs[0], 40));
  assert_kvp_ok(kvp_pool_add_sequence(pc.p, pc.tokens, 33, 0, 0, &pc.seqs[1], NULL));
  for (pc.op = 0; pc.op < OP_COUNT; ++pc.op) {
    const long points = sweep(kPoolOps[pc.op], pool_op, pool_unchanged, &pc);
    if (pc.op == OP_CHECK) assert_true(points >= 1); /* its scratch counts */
    assert_kvp_ok(kvp_pool_check_invariants(pc.p));
  }
  assert_kvp_ok(kvp_pool_destroy(pc.p));
  assert_kvp_ok(kvp_cache_destroy(c));
}

/* Save and restore of a sequence (since 1.5): to and from a buffer and a file; each failing
 * allocation is KVP_ERR_OUT_OF_MEMORY, leaks nothing and leaves the pool as it was. */
typedef struct seq_case {
  pool_case pc; /* first: pool_unchanged reads it */
  uint8_t *blob;
  size_t size;
  char path[64];
  int op;
} seq_case;

enum { SEQ_SAVE, SEQ_SAVE_FILE, SEQ_RESTORE, SEQ_RESTORE_FILE, SEQ_COUNT };
static const char *const kSeqOps[SEQ_COUNT] = {"save_sequence", "save_sequence_to_file", "restore_sequence",
                                               "restore_sequence_from_file"};

static kvp_status seq_op(void *p) {
  seq_case *sc = (seq_case *)p;
  kvp_pool *pool = sc->pc.p;
  kvp_seq_id out = {0};
  kvp_status st = KVP_ERR_INTERNAL;
  read_pool(&sc->pc, &sc->pc.before);
  switch (sc->op) {
    case SEQ_SAVE: st = kvp_pool_save_sequence(pool, sc->pc.seqs[0], sc->blob, sc->size, &sc->size); break;
    case SEQ_SAVE_FILE: st = kvp_pool_save_sequence_to_file(pool, sc->pc.seqs[0], sc->path, KVP_POOL_SAVE_FLAG_NO_SYNC); break;
    case SEQ_RESTORE: st = kvp_pool_restore_sequence(pool, sc->blob, sc->size, 0, &out); break;
    default: st = kvp_pool_restore_sequence_from_file(pool, sc->path, 0, &out); break;
  }
  if (st == KVP_OK && out.id != 0) st = kvp_pool_free_sequence(pool, out);
  return st;
}

static void test_oom__pool_save_and_restore_sequence(void **state) {
  (void)state;
  kvp_cache *c = make_cache(KVP_LAYOUT_V3);
  seq_case sc;
  memset(&sc, 0, sizeof sc);
  for (int i = 0; i < 64; ++i) sc.pc.tokens[i] = 1000 + i;
  snprintf(sc.path, sizeof sc.path, "/tmp/kvp_test_oom_seq_%d.kvpq", (int)getpid());
  assert_kvp_ok(kvp_pool_create(c, NULL, &sc.pc.p));
  assert_kvp_ok(kvp_pool_add_sequence(sc.pc.p, sc.pc.tokens, 40, 0, 0, &sc.pc.seqs[0], NULL));
  assert_kvp_ok(kvp_pool_set_computed(sc.pc.p, sc.pc.seqs[0], 40));
  assert_int_equal(kvp_pool_save_sequence(sc.pc.p, sc.pc.seqs[0], NULL, 0, &sc.size), KVP_ERR_BUFFER_TOO_SMALL);
  sc.blob = (uint8_t *)test_malloc(sc.size);
  for (sc.op = 0; sc.op < SEQ_COUNT; ++sc.op) {
    const long points = sweep(kSeqOps[sc.op], seq_op, pool_unchanged, &sc);
    assert_true(points >= 1); /* a page's token ids, the blob's tokens, the file's bytes */
    assert_kvp_ok(kvp_pool_check_invariants(sc.pc.p));
  }
  unlink(sc.path);
  test_free(sc.blob);
  assert_kvp_ok(kvp_pool_destroy(sc.pc.p));
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void test_oom__set_host_allocator_rejects_half_allocators(void **state) {
  (void)state;
  kvp_host_allocator half = kvp_test_allocator(&g_alloc);
  half.free = NULL;
  assert_kvp_status(kvp_set_host_allocator(&half), KVP_ERR_INVALID_ARGUMENT, "alloc and free");
  /* The default is unchanged: a new cache still allocates through the test allocator. */
  const long before = g_alloc.live;
  kvp_cache *c = make_cache(KVP_LAYOUT_V3);
  assert_true(g_alloc.live > before);
  assert_kvp_ok(kvp_cache_destroy(c));
  assert_int_equal(g_alloc.live, before);
}

/* Stores and tiers: creating a store, a put (new and replacing), a pool's first tier; each failing
 * allocation leaves the store or pool as it was. A tier that cannot allocate never fails a pool
 * call: the eviction's write is counted as an error. */
static int64_t store_blocks(kvp_store *s) {
  kvp_store_stats st = KVP_STORE_STATS_INIT;
  assert_kvp_ok(kvp_store_get_stats(s, &st));
  return st.blocks;
}

static void put_until_ok(kvp_store *s, const kvp_store_key *k, const uint8_t *data, size_t n, const char *what) {
  const int64_t blocks = store_blocks(s);
  const long base = g_alloc.live;
  long i;
  for (i = 0; i < MAX_N; ++i) {
    fail_from(i);
    const kvp_status st = kvp_store_put(s, k, data, n);
    disarm();
    if (st == KVP_OK) break;
    expect_oom(st, base, i, what);
    assert_int_equal(store_blocks(s), blocks);
  }
  assert_true(i >= 1);
}

/* The Redis store (built with it): its creation parses the URL and sets up its client in the
 * library's allocator before it connects; with allocation N failing it returns OUT_OF_MEMORY with
 * nothing leaked, until it gets as far as connecting (no server on these ports: I/O). */
static void test_oom__redis_store_create(void **state) {
  (void)state;
  if (strstr(kvp_build_info(), "redis=on") == NULL) skip();
  const long base = g_alloc.live;
  long n;
  kvp_status st = KVP_OK;
  for (n = 0; n < MAX_N; ++n) {
    kvp_store *s = (kvp_store *)(uintptr_t)1;
    fail_from(n);
    st = kvp_store_create_redis("redis+cluster://127.0.0.1:1,127.0.0.1:2?prefix=oom:", NULL, &s);
    disarm();
    assert_null(s);
    if (st != KVP_ERR_OUT_OF_MEMORY) break;
    expect_oom(st, base, n, "kvp_store_create_redis");
  }
  assert_true(n >= 1);
  assert_int_equal(st, KVP_ERR_IO);
  assert_int_equal(g_alloc.live, base);
}

static void test_oom__stores_and_tiers(void **state) {
  (void)state;
  uint8_t data[100], back[100];
  for (int i = 0; i < 100; ++i) data[i] = (uint8_t)i;
  const kvp_store_key k1 = {{1}}, k2 = {{2}};
  char dir[64];
  snprintf(dir, sizeof dir, "/tmp/kvp_test_oom_XXXXXX");
  assert_non_null(mkdtemp(dir));
  kvp_store_options o = KVP_STORE_OPTIONS_INIT;
  o.flags = KVP_STORE_FLAG_NO_SYNC;
  for (int kind = 0; kind < 2; ++kind) {
    const long base = g_alloc.live;
    kvp_store *s = NULL;
    long n;
    for (n = 0; n < MAX_N; ++n) {
      s = (kvp_store *)(uintptr_t)1;
      fail_from(n);
      const kvp_status st = kind == 0 ? kvp_store_create_memory(1 << 20, NULL, &s)
                                      : kvp_store_create_directory(dir, 1 << 20, &o, &s);
      disarm();
      if (st == KVP_OK) break;
      expect_oom(st, base, n, kind == 0 ? "kvp_store_create_memory" : "kvp_store_create_directory");
      assert_null(s);
    }
    assert_true(n >= 1);
    put_until_ok(s, &k1, data, sizeof data, "kvp_store_put (new)");
    put_until_ok(s, &k2, data, 10, "kvp_store_put (new)");
    put_until_ok(s, &k1, data + 1, 50, "kvp_store_put (replacing)");
    size_t got = 0;
    assert_kvp_ok(kvp_store_get(s, &k1, back, sizeof back, &got));
    assert_int_equal(got, 50);
    assert_memory_equal(back, data + 1, 50);
    assert_kvp_ok(kvp_store_remove(s, &k1));
    assert_kvp_ok(kvp_store_remove(s, &k2));
    assert_kvp_ok(kvp_store_destroy(s));
    assert_int_equal(g_alloc.live, base);
  }
  rmdir(dir);

  /* a pool's first tier allocates its buffers; a failure adds no tier */
  kvp_cache *c = make_cache(KVP_LAYOUT_V3);
  kvp_pool *p = NULL;
  kvp_store *store = NULL;
  assert_kvp_ok(kvp_pool_create(c, NULL, &p));
  assert_kvp_ok(kvp_store_create_memory(1 << 24, NULL, &store));
  const long base = g_alloc.live;
  kvp_pool_tier_stats ts = KVP_POOL_TIER_STATS_INIT;
  long n;
  for (n = 0; n < MAX_N; ++n) {
    fail_from(n);
    const kvp_status st = kvp_pool_add_store(p, store);
    disarm();
    if (st == KVP_OK) break;
    expect_oom(st, base, n, "kvp_pool_add_store");
    assert_int_equal(kvp_pool_get_tier_stats(p, 0, &ts), KVP_ERR_INVALID_ARGUMENT);
  }
  assert_true(n >= 1);
  /* evictions while the store cannot allocate: the calls succeed, the writes are errors */
  int32_t toks[PAGES * PAGE];
  for (int i = 0; i < PAGES * PAGE; ++i) toks[i] = 7 + i;
  kvp_seq_id s;
  for (int round = 0; round < 2; ++round) {
    if (round == 1) fail_from(0);
    assert_kvp_ok(kvp_pool_add_sequence(p, toks + round, 15 * PAGE, 0, 0, &s, NULL));
    assert_kvp_ok(kvp_pool_set_computed(p, s, 15 * PAGE));
    assert_kvp_ok(kvp_pool_free_sequence(p, s));
    disarm();
  }
  assert_kvp_ok(kvp_pool_get_tier_stats(p, 0, &ts));
  assert_true(ts.errors >= 1);
  assert_int_equal(ts.blocks_written, 0);
  assert_kvp_ok(kvp_pool_check_invariants(p));
  assert_kvp_ok(kvp_pool_destroy(p));
  assert_kvp_ok(kvp_store_destroy(store));

  /* a directory tier 0 is written asynchronously: its first tier also allocates the write
   * queue; a failure of either allocation adds no tier and leaks nothing */
  snprintf(dir, sizeof dir, "/tmp/kvp_test_oom_XXXXXX");
  assert_non_null(mkdtemp(dir));
  assert_kvp_ok(kvp_store_create_directory(dir, 1 << 24, &o, &store));
  assert_kvp_ok(kvp_pool_create(c, NULL, &p));
  const long base2 = g_alloc.live;
  for (n = 0; n < MAX_N; ++n) {
    fail_from(n);
    const kvp_status st = kvp_pool_add_store(p, store);
    disarm();
    if (st == KVP_OK) break;
    expect_oom(st, base2, n, "kvp_pool_add_store");
    assert_int_equal(kvp_pool_get_tier_stats(p, 0, &ts), KVP_ERR_INVALID_ARGUMENT);
  }
  assert_true(n >= 2);
  assert_kvp_ok(kvp_pool_flush_tiers(p, KVP_POOL_FLUSH_CACHED));
  assert_kvp_ok(kvp_pool_destroy(p));
  assert_kvp_ok(kvp_store_destroy(store));
  rmdir(dir);
  assert_kvp_ok(kvp_cache_destroy(c));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_oom__cache_create, setup, teardown),
      cmocka_unit_test_setup_teardown(test_oom__shards, setup, teardown),
      cmocka_unit_test_setup_teardown(test_oom__serialize, setup, teardown),
      cmocka_unit_test_setup_teardown(test_oom__serialize_to_writer_and_file, setup, teardown),
      cmocka_unit_test_setup_teardown(test_oom__deserialize_new, setup, teardown),
      cmocka_unit_test_setup_teardown(test_oom__deserialize_into, setup, teardown),
      cmocka_unit_test_setup_teardown(test_oom__metadata_build_and_create, setup, teardown),
      cmocka_unit_test_setup_teardown(test_oom__pool_create_append_fork, setup, teardown),
      cmocka_unit_test_setup_teardown(test_oom__json, setup, teardown),
      cmocka_unit_test_setup_teardown(test_oom__concatenate, setup, teardown),
      cmocka_unit_test_setup_teardown(test_oom__kept_plan, setup, teardown),
      cmocka_unit_test_setup_teardown(test_oom__attention, setup, teardown),
      cmocka_unit_test_setup_teardown(test_oom__deserialize_into_buffer_and_file, setup, teardown),
      cmocka_unit_test_setup_teardown(test_oom__deserialize_new_small_and_file, setup, teardown),
      cmocka_unit_test_setup_teardown(test_oom__pool_operations, setup, teardown),
      cmocka_unit_test_setup_teardown(test_oom__pool_save_and_restore_sequence, setup, teardown),
      cmocka_unit_test_setup_teardown(test_oom__stores_and_tiers, setup, teardown),
      cmocka_unit_test_setup_teardown(test_oom__redis_store_create, setup, teardown),
      cmocka_unit_test_setup_teardown(test_oom__set_host_allocator_rejects_half_allocators, setup, teardown),
  };
  return cmocka_run_group_tests_name("oom", tests, NULL, NULL);
}
