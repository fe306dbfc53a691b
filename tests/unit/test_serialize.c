/* Serialization: round trips (v2, v3, h64, every storage dtype, whole and subsets, other page
 * ids), the documented byte layout (checked with an independent XXH3), every truncation and
 * every single-byte corruption, crafted headers, golden blobs, streaming, files (atomic
 * replace under a failing write), contract cases and OOM. */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t's layout, for the stack-contents regression test */
#include <xxhash.h>
#include <stddef.h>

#include "support.h"

#ifndef KVP_TEST_DATA_DIR
#define KVP_TEST_DATA_DIR "tests/data"
#endif

/* ---- helpers --------------------------------------------------------------------------------- */

static const kvp_dtype k_dtypes[] = {KVP_DTYPE_F32, KVP_DTYPE_F16, KVP_DTYPE_BF16, KVP_DTYPE_F8_E4M3FN,
                                     KVP_DTYPE_F8_E5M2};

static kvp_cache *mk(int64_t L, int64_t H, int64_t D, int64_t S, int64_t P, kvp_dtype dt, kvp_layout lay) {
  kvp_config cfg = kvp_test_config(L, H, D, S, P, dt, lay);
  kvp_cache *c = NULL;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &c));
  return c;
}

static kvp_layout_info info_of(const kvp_cache *c) {
  kvp_layout_info li;
  memset(&li, 0, sizeof li);
  li.struct_size = sizeof li;
  assert_kvp_ok(kvp_cache_get_layout(c, &li));
  return li;
}

static kvp_config config_of(const kvp_cache *c) {
  kvp_config cfg = KVP_CONFIG_INIT;
  assert_kvp_ok(kvp_cache_get_config(c, &cfg));
  return cfg;
}

static uint8_t *layer_ptr(const kvp_cache *c, uint32_t l) {
  kvp_tensor t;
  assert_kvp_ok(kvp_cache_get_view(c, l, KVP_VIEW_PAGES, &t));
  return (uint8_t *)t.data;
}

static size_t cache_bytes(const kvp_cache *c) {
  kvp_layout_info li = info_of(c);
  return (size_t)(li.layer_bytes * config_of(c).num_hidden_layers);
}

static void fill_random(kvp_cache *c, uint64_t seed) {
  kvp_config cfg = config_of(c);
  kvp_layout_info li = info_of(c);
  for (uint32_t l = 0; l < (uint32_t)cfg.num_hidden_layers; ++l) {
    uint8_t *p = layer_ptr(c, l);
    for (int64_t i = 0; i < li.layer_bytes; ++i) p[i] = (uint8_t)kvp_test_rand(&seed);
  }
}

/* All layers' bytes, concatenated (caller frees). */
static uint8_t *snapshot(const kvp_cache *c) {
  kvp_config cfg = config_of(c);
  kvp_layout_info li = info_of(c);
  uint8_t *s = malloc(cache_bytes(c));
  assert_non_null(s);
  for (uint32_t l = 0; l < (uint32_t)cfg.num_hidden_layers; ++l)
    memcpy(s + (size_t)l * (size_t)li.layer_bytes, layer_ptr(c, l), (size_t)li.layer_bytes);
  return s;
}

static void assert_unchanged(const kvp_cache *c, const uint8_t *snap) {
  uint8_t *now = snapshot(c);
  assert_memory_equal(now, snap, cache_bytes(c));
  free(now);
}

static const uint8_t *page_ptr(const kvp_cache *c, uint32_t layer, int64_t page) {
  return layer_ptr(c, layer) + (size_t)page * (size_t)info_of(c).page_bytes_per_layer;
}

static uint8_t *blob_of(const kvp_cache *c, const kvp_serialize_options *o, size_t *n) {
  size_t need = 0, written = 0;
  assert_kvp_ok(kvp_serialized_size(c, o, &need));
  uint8_t *b = malloc(need + 1);
  assert_non_null(b);
  assert_kvp_ok(kvp_serialize(c, o, b, need, &written));
  assert_int_equal(written, need);
  *n = need;
  return b;
}

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24); }
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32); }
static void wr32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = (uint8_t)(v >> (8 * i));
}
static void wr64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = (uint8_t)(v >> (8 * i));
}
/* Re-seals a (1.0-sized or larger) header after an edit, as the format document says. */
static void reseal_header(uint8_t *b) {
  uint32_t hs = rd32(b + 8);
  wr64(b + hs - 8, XXH3_64bits_withSeed(b, hs - 8, 0));
}

/* The small blob used by the exhaustive loops: v2, 2 layers, 1 head, head_dim 8, f32, page 4,
 * 3 pages, 256-byte chunks: 192 + 12 + 8 + 1536 + 6*8 = 1796 bytes. */
static kvp_cache *small_cache(uint64_t seed) {
  kvp_cache *c = mk(2, 1, 8, 4, 3, KVP_DTYPE_F32, KVP_LAYOUT_V2);
  fill_random(c, seed);
  return c;
}
static uint8_t *small_blob(const kvp_cache *c, size_t *n) {
  kvp_serialize_options o;
  kvp_serialize_options_init(&o, sizeof o);
  o.chunk_bytes = 256;
  return blob_of(c, &o, n);
}

/* ---- round trips ---------------------------------------------------------------------------- */

static void roundtrip_whole(int64_t D, kvp_dtype dt, kvp_layout lay, uint64_t seed) {
  kvp_cache *src = mk(2, 2, D, 8, 5, dt, lay);
  fill_random(src, seed);
  size_t n = 0;
  kvp_serialize_options o;
  kvp_serialize_options_init(&o, sizeof o);
  o.chunk_bytes = 1000; /* chunks straddle page boundaries */
  uint8_t *b = blob_of(src, &o, &n);
  kvp_cache *dst = NULL;
  assert_kvp_ok(kvp_deserialize_new(b, n, NULL, &dst));
  kvp_config a = config_of(src), c = config_of(dst);
  assert_memory_equal(&a, &c, sizeof a);
  uint8_t *sa = snapshot(src);
  assert_unchanged(dst, sa);
  free(sa);
  free(b);
  assert_kvp_ok(kvp_cache_destroy(dst));
  assert_kvp_ok(kvp_cache_destroy(src));
}

static void test_serialize__roundtrip_whole_every_layout_and_dtype(void **state) {
  (void)state;
  const int64_t dims[] = {128, 64, 96};
  const kvp_layout lays[] = {KVP_LAYOUT_V2, KVP_LAYOUT_V3};
  uint64_t seed = 1;
  int h64_seen = 0;
  for (size_t li = 0; li < 2; ++li)
    for (size_t di = 0; di < 3; ++di)
      for (size_t ti = 0; ti < sizeof k_dtypes / sizeof k_dtypes[0]; ++ti) {
        roundtrip_whole(dims[di], k_dtypes[ti], lays[li], seed++);
        if (lays[li] == KVP_LAYOUT_V3 && dims[di] == 64) {
          kvp_cache *c = mk(2, 2, 64, 8, 5, k_dtypes[ti], KVP_LAYOUT_V3);
          h64_seen += info_of(c).is_h64 == 1;
          assert_kvp_ok(kvp_cache_destroy(c));
        }
      }
  assert_int_equal(h64_seen, 5); /* the head_dim-64 layout really was exercised */
}

static void test_serialize__subset_loads_into_other_page_ids(void **state) {
  (void)state;
  for (size_t ti = 0; ti < sizeof k_dtypes / sizeof k_dtypes[0]; ++ti) {
    kvp_cache *src = mk(3, 2, 64, 8, 6, k_dtypes[ti], KVP_LAYOUT_V3);
    kvp_cache *dst = mk(3, 2, 64, 8, 10, k_dtypes[ti], KVP_LAYOUT_V3);
    fill_random(src, 100 + ti);
    fill_random(dst, 200 + ti);
    const int32_t sel[] = {4, 1, 2};
    const int32_t to[] = {7, 0, 3};
    kvp_serialize_options o;
  kvp_serialize_options_init(&o, sizeof o);
    o.page_ids = sel;
    o.num_page_ids = 3;
    o.chunk_bytes = 300;
    size_t n = 0;
    uint8_t *b = blob_of(src, &o, &n);
    uint8_t *before = snapshot(dst);
    assert_kvp_ok(kvp_deserialize_into(dst, b, n, to, 3));
    /* Expected: `before` with the three pages replaced, computed here from the source pages. */
    kvp_layout_info li = info_of(dst);
    size_t pb = (size_t)li.page_bytes_per_layer;
    for (uint32_t l = 0; l < 3; ++l)
      for (int j = 0; j < 3; ++j)
        memcpy(before + (size_t)l * (size_t)li.layer_bytes + (size_t)to[j] * pb, page_ptr(src, l, sel[j]), pb);
    assert_unchanged(dst, before);
    free(before);
    free(b);
    assert_kvp_ok(kvp_cache_destroy(src));
    assert_kvp_ok(kvp_cache_destroy(dst));
  }
}

static void test_serialize__subset_new_cache_has_pages_at_original_ids(void **state) {
  (void)state;
  kvp_cache *src = mk(2, 2, 128, 8, 6, KVP_DTYPE_BF16, KVP_LAYOUT_V2);
  fill_random(src, 7);
  const int32_t sel[] = {5, 2};
  kvp_serialize_options o;
  kvp_serialize_options_init(&o, sizeof o);
  o.page_ids = sel;
  o.num_page_ids = 2;
  size_t n = 0;
  uint8_t *b = blob_of(src, &o, &n);
  kvp_cache *dst = NULL;
  assert_kvp_ok(kvp_deserialize_new(b, n, NULL, &dst));
  size_t pb = (size_t)info_of(dst).page_bytes_per_layer;
  uint8_t *zero = calloc(1, pb);
  for (uint32_t l = 0; l < 2; ++l)
    for (int64_t p = 0; p < 6; ++p) {
      const uint8_t *expect = (p == 5 || p == 2) ? page_ptr(src, l, p) : zero;
      assert_memory_equal(page_ptr(dst, l, p), expect, pb);
    }
  /* Into an existing cache with NULL ids: the blob's own ids. */
  kvp_cache *dst2 = mk(2, 2, 128, 8, 6, KVP_DTYPE_BF16, KVP_LAYOUT_V2);
  assert_kvp_ok(kvp_deserialize_into(dst2, b, n, NULL, 0));
  uint8_t *s1 = snapshot(dst);
  assert_unchanged(dst2, s1);
  free(s1);
  free(zero);
  free(b);
  assert_kvp_ok(kvp_cache_destroy(dst2));
  assert_kvp_ok(kvp_cache_destroy(dst));
  assert_kvp_ok(kvp_cache_destroy(src));
}

/* A new cache loaded from a blob may get the memory of the cache destroyed before it (a kept
 * mapping, or malloc's reuse for a small cache): with every page in the blob it holds exactly the
 * blob's bytes, never the old cache's; with some pages, the others are zero; kvp_cache_create
 * always starts from zeros. The old caches are scribbled on before they go. */
static void expect_loads_ignore_freed_caches(int64_t L, int64_t H, int64_t P, kvp_dtype dt) {
  kvp_cache *src = mk(L, H, 128, 16, P, dt, KVP_LAYOUT_V3);
  fill_random(src, 41);
  uint8_t *want = snapshot(src);
  const int32_t sel[] = {1, 3};
  kvp_serialize_options o;
  kvp_serialize_options_init(&o, sizeof o);
  o.page_ids = sel;
  o.num_page_ids = 2;
  size_t n_all = 0, n_sub = 0;
  uint8_t *all = blob_of(src, NULL, &n_all), *sub = blob_of(src, &o, &n_sub);
  const size_t pb = (size_t)info_of(src).page_bytes_per_layer;
  uint8_t *zero = calloc(1, pb);
  for (int round = 0; round < 3; ++round) {
    kvp_cache *a = NULL, *b = NULL, *c = NULL;
    assert_kvp_ok(kvp_deserialize_new(all, n_all, NULL, &a));
    assert_unchanged(a, want);
    fill_random(a, 100 + (uint64_t)round);
    const uint8_t *old = layer_ptr(a, 0);
    assert_kvp_ok(kvp_cache_destroy(a));
    assert_kvp_ok(kvp_deserialize_new(all, n_all, NULL, &a));
    if (cache_bytes(a) >= (2u << 20)) assert_ptr_equal(layer_ptr(a, 0), old); /* the kept mapping */
    assert_unchanged(a, want);
    fill_random(a, 200 + (uint64_t)round);
    assert_kvp_ok(kvp_cache_destroy(a));
    assert_kvp_ok(kvp_deserialize_new(sub, n_sub, NULL, &b));
    for (uint32_t l = 0; l < (uint32_t)L; ++l)
      for (int64_t p = 0; p < P; ++p)
        assert_memory_equal(page_ptr(b, l, p), (p == 1 || p == 3) ? page_ptr(src, l, p) : zero, pb);
    fill_random(b, 300 + (uint64_t)round);
    assert_kvp_ok(kvp_cache_destroy(b));
    kvp_config cfg = config_of(src);
    assert_kvp_ok(kvp_cache_create(&cfg, NULL, &c));
    for (uint32_t l = 0; l < (uint32_t)L; ++l)
      for (int64_t p = 0; p < P; ++p) assert_memory_equal(page_ptr(c, l, p), zero, pb);
    fill_random(c, 400 + (uint64_t)round);
    assert_kvp_ok(kvp_cache_destroy(c));
  }
  free(zero);
  free(sub);
  free(all);
  free(want);
  assert_kvp_ok(kvp_cache_destroy(src));
}

static void test_serialize__new_caches_never_show_freed_caches(void **state) {
  (void)state;
  expect_loads_ignore_freed_caches(2, 8, 16, KVP_DTYPE_F32); /* 4 MiB: one mapping, kept when freed */
  expect_loads_ignore_freed_caches(2, 2, 6, KVP_DTYPE_BF16); /* 96 KiB: a malloc per layer */
}

/* ---- the documented byte layout --------------------------------------------------------------- */

static void test_serialize__layout_matches_the_format_document(void **state) {
  (void)state;
  kvp_cache *c = mk(3, 2, 96, 8, 7, KVP_DTYPE_F16, KVP_LAYOUT_V3);
  fill_random(c, 11);
  const int32_t sel[] = {6, 0, 3, 4};
  kvp_serialize_options o;
  kvp_serialize_options_init(&o, sizeof o);
  o.page_ids = sel;
  o.num_page_ids = 4;
  o.chunk_bytes = 5000;
  size_t n = 0;
  uint8_t *b = blob_of(c, &o, &n);
  kvp_config cfg = config_of(c);
  kvp_layout_info li = info_of(c);
  const uint64_t pb = (uint64_t)li.page_bytes_per_layer;
  const uint64_t payload = 3 * 4 * pb;
  const uint64_t chunks = (payload + 4999) / 5000;
  assert_int_equal(n, 192 + 4 * 4 + 8 + payload + 8 * chunks);
  assert_memory_equal(b, "KVPS", 4);
  assert_int_equal(rd16(b + 4), 1);
  assert_int_equal(rd16(b + 6), 0);
  assert_int_equal(rd32(b + 8), 192);
  assert_int_equal(rd32(b + 12), kvp_version_number());
  assert_int_equal(rd64(b + 16), 0);
  const int64_t fields[12] = {cfg.num_hidden_layers, cfg.max_model_length, cfg.num_kv_heads, cfg.k_headdim,
                              cfg.v_headdim, 0, cfg.page_size, cfg.num_pages, cfg.max_num_pages_per_req,
                              cfg.num_slices_per_kv_cache_update_page, cfg.max_num_tokens, cfg.max_num_reqs};
  for (int i = 0; i < 12; ++i)
    if (i != 5) assert_int_equal((int64_t)rd64(b + 24 + 8 * i), fields[i]);
  double util;
  uint64_t ubits = rd64(b + 64);
  memcpy(&util, &ubits, 8);
  assert_true(util == cfg.hbm_utilization);
  assert_int_equal(rd32(b + 120), KVP_LAYOUT_V3);
  assert_int_equal(rd32(b + 124), KVP_DTYPE_F16);
  assert_int_equal(rd64(b + 128), pb);
  assert_int_equal(rd64(b + 136), 4);
  assert_int_equal(rd64(b + 144), 5000);
  assert_int_equal(rd64(b + 152), payload);
  for (int i = 160; i < 184; ++i) assert_int_equal(b[i], 0);
  assert_int_equal(rd64(b + 184), XXH3_64bits_withSeed(b, 184, 0));
  for (int j = 0; j < 4; ++j) assert_int_equal(rd32(b + 192 + 4 * j), sel[j]);
  assert_int_equal(rd64(b + 208), XXH3_64bits_withSeed(b + 192, 16, 1));
  /* Rebuild the payload from the cache (layer-major, selection order) and check every chunk. */
  uint8_t *expect = malloc(payload);
  size_t at = 0;
  for (uint32_t l = 0; l < 3; ++l)
    for (int j = 0; j < 4; ++j, at += pb) memcpy(expect + at, page_ptr(c, l, sel[j]), pb);
  const uint8_t *q = b + 216;
  for (uint64_t i = 0; i < chunks; ++i) {
    uint64_t len = payload - i * 5000 < 5000 ? payload - i * 5000 : 5000;
    assert_memory_equal(q, expect + i * 5000, len);
    assert_int_equal(rd64(q + len), XXH3_64bits_withSeed(q, len, 2 + i));
    q += len + 8;
  }
  assert_ptr_equal(q, b + n);
  free(expect);
  free(b);
  assert_kvp_ok(kvp_cache_destroy(c));
}

/* Fills 64 KiB of the stack below the caller (where the library's frames will be) so that an
 * XXH3 state (64-byte aligned) at any position there looks seeded with `seed`: its seed field holds
 * `seed`, its external-secret pointer is NULL, and its derived secret is garbage. */
static __attribute__((noinline)) void scribble_stack(uint64_t seed) {
  volatile uint64_t junk[8192] __attribute__((aligned(64)));
  const size_t at_seed = offsetof(XXH3_state_t, seed) % 64 / 8, at_ext = offsetof(XXH3_state_t, extSecret) % 64 / 8;
  for (size_t i = 0; i < 8192; ++i) junk[i] = i % 8 == at_ext ? 0 : i % 8 == at_seed ? seed : 0x5a5a5a5a5a5a5a5aull;
  (void)junk[0];
}

/* Regression: the checksums must not depend on what the stack held before. A seeded XXH3 state on
 * the stack that is not marked unseeded first (XXH3_INITSTATE) keeps a stale derived secret when
 * the stale seed field happens to equal the new seed; stack memory made to look like that for each
 * seed (1: the page table, 2.. : the chunks) triggers it. Every checksum is recomputed here with
 * XXH3 itself, and the blob must load after the same scribbling. */
static void test_serialize__checksums_do_not_depend_on_stack_contents(void **state) {
  (void)state;
  kvp_cache *c = small_cache(77);
  for (uint64_t word = 1; word <= 8; ++word) {
    size_t need = 0, n = 0;
    kvp_serialize_options o;
    kvp_serialize_options_init(&o, sizeof o);
    o.chunk_bytes = 256;
    assert_kvp_ok(kvp_serialized_size(c, &o, &need));
    uint8_t *b = malloc(need);
    scribble_stack(word);
    assert_kvp_ok(kvp_serialize(c, &o, b, need, &n));
    const uint32_t hs = rd32(b + 8);
    const uint64_t table = rd64(b + 136) * 4, chunks = (rd64(b + 152) + 255) / 256;
    const uint8_t *q = b + hs + table + 8;
    assert_int_equal(rd64(q - 8), XXH3_64bits_withSeed(b + hs, table, 1));
    for (uint64_t i = 0; i < chunks; ++i) {
      const uint64_t len = rd64(b + 152) - i * 256 < 256 ? rd64(b + 152) - i * 256 : 256;
      assert_int_equal(rd64(q + len), XXH3_64bits_withSeed(q, len, 2 + i));
      q += len + 8;
    }
    assert_ptr_equal(q, b + n);
    kvp_cache *d = NULL;
    scribble_stack(word);
    assert_kvp_ok(kvp_deserialize_new(b, n, NULL, &d));
    assert_kvp_ok(kvp_cache_destroy(d));
    free(b);
  }
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void test_serialize__size_query_and_buffer_too_small(void **state) {
  (void)state;
  kvp_cache *c = small_cache(3);
  size_t need = 0, got = 0;
  kvp_serialize_options o;
  kvp_serialize_options_init(&o, sizeof o);
  o.chunk_bytes = 256;
  assert_kvp_ok(kvp_serialized_size(c, &o, &need));
  assert_int_equal(need, 192 + 12 + 8 + 1536 + 6 * 8);
  assert_kvp_status(kvp_serialize(c, &o, NULL, 0, &got), KVP_ERR_BUFFER_TOO_SMALL, "needs");
  assert_int_equal(got, need);
  uint8_t *buf = malloc(need);
  memset(buf, 0xAB, need);
  got = 0;
  assert_kvp_status(kvp_serialize(c, &o, buf, need - 1, &got), KVP_ERR_BUFFER_TOO_SMALL, "cap");
  assert_int_equal(got, need);
  for (size_t i = 0; i < need; ++i) assert_int_equal(buf[i], 0xAB);
  free(buf);
  assert_kvp_ok(kvp_cache_destroy(c));
}

/* ---- truncation and corruption ----------------------------------------------------------------- */

static void test_serialize__every_truncation_is_rejected(void **state) {
  (void)state;
  kvp_cache *c = small_cache(5);
  size_t n = 0;
  uint8_t *b = small_blob(c, &n);
  assert_int_equal(n, 1796);
  kvp_cache *target = small_cache(6);
  uint8_t *snap = snapshot(target);
  for (size_t len = 0; len < n; ++len) {
    uint8_t *cut = malloc(len + 1); /* exact-size copy so ASan catches any overread */
    memcpy(cut, b, len);
    kvp_cache *out = (kvp_cache *)&out;
    assert_kvp_status(kvp_deserialize_new(cut, len, NULL, &out), KVP_ERR_FORMAT_TRUNCATED, "truncated");
    assert_null(out);
    assert_kvp_status(kvp_deserialize_into(target, cut, len, NULL, 0), KVP_ERR_FORMAT_TRUNCATED, "truncated");
    kvp_serialized_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    assert_int_equal(kvp_serialized_inspect(cut, len, KVP_INSPECT_VERIFY, &info), KVP_ERR_FORMAT_TRUNCATED);
    free(cut);
  }
  assert_unchanged(target, snap);
  /* The whole blob loads. */
  assert_kvp_ok(kvp_deserialize_into(target, b, n, NULL, 0));
  free(snap);
  free(b);
  assert_kvp_ok(kvp_cache_destroy(target));
  assert_kvp_ok(kvp_cache_destroy(c));
}

/* The status a reader must give for header byte `i` changed to make header_size `hs`. */
static kvp_status expected_for_header_byte(size_t i, const uint8_t *bad, size_t n) {
  if (i < 4) return KVP_ERR_FORMAT_MAGIC;
  if (i < 6) return KVP_ERR_FORMAT_VERSION;
  if (i >= 8 && i < 12) {
    uint32_t hs = rd32(bad + 8);
    if (hs < 192 || hs > 65536 || hs % 8 != 0) return KVP_ERR_FORMAT_CORRUPT;
    if (hs > n) return KVP_ERR_FORMAT_TRUNCATED;
  }
  return KVP_ERR_FORMAT_CHECKSUM;
}

static void test_serialize__every_header_byte_corruption_is_rejected(void **state) {
  (void)state;
  kvp_cache *c = small_cache(8);
  size_t n = 0;
  uint8_t *b = small_blob(c, &n);
  kvp_cache *target = small_cache(9);
  uint8_t *snap = snapshot(target);
  uint8_t *bad = malloc(n);
  int seen[256] = {0};
  for (size_t i = 0; i < 192; ++i)
    for (int x = 1; x < 256; ++x) {
      memcpy(bad, b, n);
      bad[i] ^= (uint8_t)x;
      kvp_status want = expected_for_header_byte(i, bad, n);
      kvp_status got = kvp_deserialize_into(target, bad, n, NULL, 0);
      if (got != want)
        fail_msg("byte %zu ^ 0x%02x: got %s, want %s (%s)", i, x, kvp_status_name(got), kvp_status_name(want),
                 kvp_last_error_message());
      assert_true(kvp_last_error_message()[0] != '\0');
      seen[want & 0xFF] = 1;
      if (x == 0xFF || x == 0x01) {
        kvp_cache *out = NULL;
        assert_int_equal(kvp_deserialize_new(bad, n, NULL, &out), want);
        assert_null(out);
      }
    }
  assert_unchanged(target, snap);
  /* Each expected class really occurred. */
  assert_true(seen[KVP_ERR_FORMAT_MAGIC] && seen[KVP_ERR_FORMAT_VERSION] && seen[KVP_ERR_FORMAT_CHECKSUM] &&
              seen[KVP_ERR_FORMAT_CORRUPT] && seen[KVP_ERR_FORMAT_TRUNCATED]);
  free(bad);
  free(snap);
  free(b);
  assert_kvp_ok(kvp_cache_destroy(target));
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void test_serialize__every_table_and_payload_byte_corruption_is_rejected(void **state) {
  (void)state;
  kvp_cache *c = small_cache(12);
  size_t n = 0;
  uint8_t *b = small_blob(c, &n);
  kvp_cache *target = small_cache(13);
  uint8_t *snap = snapshot(target);
  uint8_t *bad = malloc(n);
  const uint8_t xs[] = {0x01, 0x80, 0xFF};
  for (size_t i = 192; i < n; ++i)
    for (size_t k = 0; k < 3; ++k) {
      memcpy(bad, b, n);
      bad[i] ^= xs[k];
      assert_kvp_status(kvp_deserialize_into(target, bad, n, NULL, 0), KVP_ERR_FORMAT_CHECKSUM, "checksum");
      if (k == 0) {
        kvp_cache *out = NULL;
        assert_kvp_status(kvp_deserialize_new(bad, n, NULL, &out), KVP_ERR_FORMAT_CHECKSUM, "checksum");
        assert_null(out);
      }
    }
  assert_unchanged(target, snap);
  free(bad);
  free(snap);
  free(b);
  assert_kvp_ok(kvp_cache_destroy(target));
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void test_serialize__crafted_headers(void **state) {
  (void)state;
  kvp_cache *c = small_cache(21);
  size_t n = 0;
  uint8_t *b = small_blob(c, &n);
  uint8_t *x = malloc(n + 64);
  kvp_cache *out = NULL;

  /* A newer minor with a longer header (8 more bytes) and an optional flag: readable. */
  memcpy(x, b, 184);
  x[6] = 3; /* minor 3 */
  wr32(x + 8, 200);
  wr64(x + 16, (uint64_t)1 << 40);
  memset(x + 184, 0x5A, 8);
  memcpy(x + 200, b + 192, n - 192);
  reseal_header(x);
  assert_kvp_ok(kvp_deserialize_new(x, n + 8, NULL, &out));
  uint8_t *s = snapshot(c);
  assert_unchanged(out, s);
  free(s);
  assert_kvp_ok(kvp_cache_destroy(out));

  /* A required flag this library does not know (bit 0 is KVP_FORMAT_FLAG_SHARD since 1.4). */
  memcpy(x, b, n);
  wr64(x + 16, 2);
  reseal_header(x);
  assert_kvp_status(kvp_deserialize_new(x, n, NULL, &out), KVP_ERR_FORMAT_VERSION, "flags");
  /* A newer major. */
  memcpy(x, b, n);
  x[4] = 2;
  reseal_header(x);
  assert_kvp_status(kvp_deserialize_new(x, n, NULL, &out), KVP_ERR_FORMAT_VERSION, "2.0");
  /* More stored pages than the cache has. */
  memcpy(x, b, n);
  wr64(x + 136, 4);
  reseal_header(x);
  assert_kvp_status(kvp_deserialize_new(x, n, NULL, &out), KVP_ERR_FORMAT_CORRUPT, "stored pages");
  /* An absurd page count with a consistent payload size. */
  memcpy(x, b, n);
  wr64(x + 80, (uint64_t)1 << 62);
  reseal_header(x);
  assert_int_equal(kvp_deserialize_new(x, n, NULL, &out), KVP_ERR_FORMAT_CORRUPT);
  /* An invalid config (0 KV heads). */
  memcpy(x, b, n);
  wr64(x + 40, 0);
  reseal_header(x);
  assert_kvp_status(kvp_deserialize_new(x, n, NULL, &out), KVP_ERR_FORMAT_CORRUPT, "num_kv_heads");
  /* Unknown dtype. */
  memcpy(x, b, n);
  wr32(x + 124, 77);
  reseal_header(x);
  assert_kvp_status(kvp_deserialize_new(x, n, NULL, &out), KVP_ERR_FORMAT_CORRUPT, "config");
  /* Chunk size below the minimum. */
  memcpy(x, b, n);
  wr64(x + 144, 1);
  reseal_header(x);
  assert_kvp_status(kvp_deserialize_new(x, n, NULL, &out), KVP_ERR_FORMAT_CORRUPT, "chunk_bytes");
  /* Payload size that disagrees with the geometry. */
  memcpy(x, b, n);
  wr64(x + 152, 1535);
  reseal_header(x);
  assert_kvp_status(kvp_deserialize_new(x, n, NULL, &out), KVP_ERR_FORMAT_CORRUPT, "payload_bytes");
  /* Page bytes that disagree with the config. */
  memcpy(x, b, n);
  wr64(x + 128, 512);
  reseal_header(x);
  assert_kvp_status(kvp_deserialize_new(x, n, NULL, &out), KVP_ERR_FORMAT_CORRUPT, "page_bytes");
  /* Page ids out of range or repeated, with a valid table checksum. */
  memcpy(x, b, n);
  wr32(x + 192 + 4, 3);
  wr64(x + 204, XXH3_64bits_withSeed(x + 192, 12, 1));
  assert_kvp_status(kvp_deserialize_new(x, n, NULL, &out), KVP_ERR_FORMAT_CORRUPT, "out of range");
  memcpy(x, b, n);
  wr32(x + 192 + 8, 0);
  wr64(x + 204, XXH3_64bits_withSeed(x + 192, 12, 1));
  assert_kvp_status(kvp_deserialize_new(x, n, NULL, &out), KVP_ERR_FORMAT_CORRUPT, "more than once");
  /* Trailing bytes. */
  memcpy(x, b, n);
  x[n] = 0;
  assert_kvp_status(kvp_deserialize_new(x, n + 1, NULL, &out), KVP_ERR_FORMAT_CORRUPT, "trailing");
  /* Garbage. */
  assert_kvp_status(kvp_deserialize_new("GGUF....", 8, NULL, &out), KVP_ERR_FORMAT_MAGIC, "magic");
  assert_null(out);
  free(x);
  free(b);
  assert_kvp_ok(kvp_cache_destroy(c));
}

/* ---- compatibility of the target ---------------------------------------------------------------- */

static void test_serialize__incompatible_target_is_rejected_unchanged(void **state) {
  (void)state;
  kvp_cache *c = mk(2, 2, 128, 8, 4, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  fill_random(c, 31);
  size_t n = 0;
  uint8_t *b = blob_of(c, NULL, &n);
  struct {
    int64_t L, H, D, S, P;
    kvp_dtype dt;
    kvp_layout lay;
    const char *what;
  } cases[] = {{3, 2, 128, 8, 4, KVP_DTYPE_BF16, KVP_LAYOUT_V3, "num_hidden_layers"},
               {2, 4, 128, 8, 4, KVP_DTYPE_BF16, KVP_LAYOUT_V3, "num_kv_heads"},
               {2, 2, 64, 8, 4, KVP_DTYPE_BF16, KVP_LAYOUT_V3, "k_headdim"},
               {2, 2, 128, 16, 4, KVP_DTYPE_BF16, KVP_LAYOUT_V3, "page_size"},
               {2, 2, 128, 8, 4, KVP_DTYPE_F16, KVP_LAYOUT_V3, "dtype"},
               {2, 2, 128, 8, 4, KVP_DTYPE_BF16, KVP_LAYOUT_V2, "layout"},
               {2, 2, 128, 8, 3, KVP_DTYPE_BF16, KVP_LAYOUT_V3, "does not exist"}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
    kvp_cache *t = mk(cases[i].L, cases[i].H, cases[i].D, cases[i].S, cases[i].P, cases[i].dt, cases[i].lay);
    fill_random(t, 40 + i);
    uint8_t *snap = snapshot(t);
    assert_kvp_status(kvp_deserialize_into(t, b, n, NULL, 0), KVP_ERR_FORMAT_MISMATCH, cases[i].what);
    assert_unchanged(t, snap);
    free(snap);
    assert_kvp_ok(kvp_cache_destroy(t));
  }
  /* Destination ids: wrong count, out of range, repeated, NULL with a count. */
  kvp_cache *t = mk(2, 2, 128, 8, 8, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  fill_random(t, 50);
  uint8_t *snap = snapshot(t);
  const int32_t three[] = {0, 1, 2};
  const int32_t oob[] = {0, 1, 2, 8};
  const int32_t dup[] = {0, 1, 2, 1};
  assert_kvp_status(kvp_deserialize_into(t, b, n, three, 3), KVP_ERR_FORMAT_MISMATCH, "3 destination");
  assert_kvp_status(kvp_deserialize_into(t, b, n, oob, 4), KVP_ERR_INVALID_ARGUMENT, "dst_page_ids[3] = 8");
  assert_kvp_status(kvp_deserialize_into(t, b, n, dup, 4), KVP_ERR_INVALID_ARGUMENT, "more than once");
  assert_kvp_status(kvp_deserialize_into(t, b, n, NULL, 4), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_unchanged(t, snap);
  free(snap);
  assert_kvp_ok(kvp_cache_destroy(t));
  free(b);
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void test_serialize__max_cache_bytes_limits_new_caches(void **state) {
  (void)state;
  kvp_cache *c = small_cache(60);
  size_t n = 0;
  uint8_t *b = small_blob(c, &n);
  kvp_deserialize_options o;
  kvp_deserialize_options_init(&o, sizeof o);
  /* The limit counts the whole load: 2 layers x (768 bytes, a multiple of 64, + 64 bytes of
   * bookkeeping) + 3 stored page ids x 4 bytes = 1676. */
  o.max_cache_bytes = 1675;
  kvp_cache *out = NULL;
  assert_kvp_status(kvp_deserialize_new(b, n, &o, &out), KVP_ERR_FORMAT_MISMATCH, "max_cache_bytes");
  assert_null(out);
  o.max_cache_bytes = 1676;
  assert_kvp_ok(kvp_deserialize_new(b, n, &o, &out));
  assert_kvp_ok(kvp_cache_destroy(out));
  free(b);
  assert_kvp_ok(kvp_cache_destroy(c));
}

/* ---- streaming ---------------------------------------------------------------------------------- */

typedef struct {
  uint8_t *data;
  size_t len, cap, pos;
  long calls, fail_at;
  uint64_t rng;
} stream_buf;

static int32_t KVP_CALL mem_write(const void *data, size_t size, void *ud) {
  stream_buf *s = ud;
  if (s->fail_at >= 0 && s->calls++ >= s->fail_at) return -7;
  if (s->len + size > s->cap) {
    s->cap = (s->len + size) * 2;
    s->data = realloc(s->data, s->cap);
  }
  memcpy(s->data + s->len, data, size);
  s->len += size;
  return 0;
}

static int32_t KVP_CALL mem_read(void *dst, size_t size, size_t *read_out, void *ud) {
  stream_buf *s = ud;
  if (s->fail_at >= 0 && s->calls++ >= s->fail_at) return 42;
  size_t k = (size_t)kvp_test_rand_range(&s->rng, 1, 7); /* small, uneven pieces */
  if (k > size) k = size;
  if (k > s->len - s->pos) k = s->len - s->pos;
  memcpy(dst, s->data + s->pos, k);
  s->pos += k;
  *read_out = k;
  return 0;
}

static void test_serialize__writer_and_reader_stream_the_same_bytes(void **state) {
  (void)state;
  kvp_cache *c = mk(2, 2, 64, 8, 5, KVP_DTYPE_F8_E5M2, KVP_LAYOUT_V3);
  fill_random(c, 70);
  kvp_serialize_options o;
  kvp_serialize_options_init(&o, sizeof o);
  o.chunk_bytes = 700;
  size_t n = 0;
  uint8_t *b = blob_of(c, &o, &n);
  stream_buf w = {0};
  w.fail_at = -1;
  assert_kvp_ok(kvp_serialize_to_writer(c, &o, mem_write, &w));
  assert_int_equal(w.len, n);
  assert_memory_equal(w.data, b, n);

  /* Reader: one blob followed by other data (the reader must stop at the blob's end). */
  stream_buf r = {0};
  r.data = malloc(n + 5);
  memcpy(r.data, b, n);
  memcpy(r.data + n, "tail!", 5);
  r.len = n + 5;
  r.fail_at = -1;
  r.rng = 3;
  kvp_cache *out = NULL;
  assert_kvp_ok(kvp_deserialize_new_from_reader(mem_read, &r, NULL, &out));
  assert_int_equal(r.pos, n);
  uint8_t *s = snapshot(c);
  assert_unchanged(out, s);
  kvp_cache *t = mk(2, 2, 64, 8, 5, KVP_DTYPE_F8_E5M2, KVP_LAYOUT_V3);
  r.pos = 0;
  assert_kvp_ok(kvp_deserialize_into_from_reader(t, mem_read, &r, NULL, 0));
  assert_unchanged(t, s);

  /* Failing callbacks give KVP_ERR_IO and leave the target unchanged. */
  fill_random(t, 71);
  uint8_t *snap = snapshot(t);
  r.pos = 0;
  r.calls = 0;
  r.fail_at = 100;
  assert_kvp_status(kvp_deserialize_into_from_reader(t, mem_read, &r, NULL, 0), KVP_ERR_IO, "42");
  assert_unchanged(t, snap);
  /* A stream that ends early is truncated. */
  r.pos = 0;
  r.fail_at = -1;
  r.len = n - 1;
  assert_kvp_status(kvp_deserialize_into_from_reader(t, mem_read, &r, NULL, 0), KVP_ERR_FORMAT_TRUNCATED, "ended");
  assert_unchanged(t, snap);
  stream_buf wf = {0};
  wf.fail_at = 2;
  assert_kvp_status(kvp_serialize_to_writer(c, &o, mem_write, &wf), KVP_ERR_IO, "-7");

  free(wf.data);
  free(snap);
  free(s);
  free(r.data);
  free(w.data);
  free(b);
  assert_kvp_ok(kvp_cache_destroy(t));
  assert_kvp_ok(kvp_cache_destroy(out));
  assert_kvp_ok(kvp_cache_destroy(c));
}


/* Blobs of 256 KiB and more are produced and checked by several threads: the bytes must equal
 * the streaming (sequential) writer's, and the lowest damaged chunk is the one reported. */
static void test_serialize__parallel_path_matches_streaming_path(void **state) {
  (void)state;
  kvp_cache *c = mk(4, 2, 128, 16, 9, KVP_DTYPE_BF16, KVP_LAYOUT_V3); /* 4 x 9 x 16 KiB = 576 KiB */
  fill_random(c, 120);
  const int32_t sel[] = {8, 0, 1, 2, 5, 6};
  for (int k = 0; k < 2; ++k) {
    kvp_serialize_options o;
    kvp_serialize_options_init(&o, sizeof o);
    o.chunk_bytes = 10000;
    if (k == 1) {
      o.page_ids = sel;
      o.num_page_ids = 6;
    }
    size_t n = 0;
    uint8_t *b = blob_of(c, &o, &n);
    stream_buf w = {0};
    w.fail_at = -1;
    assert_kvp_ok(kvp_serialize_to_writer(c, &o, mem_write, &w));
    assert_int_equal(w.len, n);
    assert_memory_equal(w.data, b, n);
    free(w.data);
    kvp_cache *t = mk(4, 2, 128, 16, 9, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
    fill_random(t, 121);
    uint8_t *snap = snapshot(t);
    const size_t first = 192 + 4 * (k ? 6 : 9) + 8;
    /* Damage chunks 30 and 7: chunk 7 is reported, nothing is written. */
    b[first + 30 * 10008 + 3] ^= 0x10;
    b[first + 7 * 10008 + 9999] ^= 0x01;
    assert_kvp_status(kvp_deserialize_into(t, b, n, NULL, 0), KVP_ERR_FORMAT_CHECKSUM, "chunk 7 ");
    assert_unchanged(t, snap);
    kvp_cache *out = NULL;
    assert_kvp_status(kvp_deserialize_new(b, n, NULL, &out), KVP_ERR_FORMAT_CHECKSUM, "chunk 7 ");
    assert_null(out);
    b[first + 30 * 10008 + 3] ^= 0x10;
    b[first + 7 * 10008 + 9999] ^= 0x01;
    assert_kvp_ok(kvp_deserialize_into(t, b, n, NULL, 0));
    assert_kvp_ok(kvp_deserialize_new(b, n, NULL, &out));
    uint8_t *a = snapshot(out);
    if (k == 0) {
      uint8_t *s0 = snapshot(c);
      assert_unchanged(t, s0);
      assert_memory_equal(a, s0, cache_bytes(c));
      free(s0);
    } else {
      size_t pb = (size_t)info_of(c).page_bytes_per_layer;
      for (uint32_t l = 0; l < 4; ++l)
        for (int j = 0; j < 6; ++j) {
          assert_memory_equal(page_ptr(t, l, sel[j]), page_ptr(c, l, sel[j]), pb);
          assert_memory_equal(page_ptr(out, l, sel[j]), page_ptr(c, l, sel[j]), pb);
        }
    }
    free(a);
    free(snap);
    free(b);
    assert_kvp_ok(kvp_cache_destroy(out));
    assert_kvp_ok(kvp_cache_destroy(t));
  }
  assert_kvp_ok(kvp_cache_destroy(c));
}

/* Bulk copies on the CPU stream whole 64-byte lines to line-aligned addresses and copy the
 * head and tail normally: a blob written at every misalignment, with chunk lengths that leave
 * every tail length, must hold the same bytes and load back the same pages. */
static void test_serialize__any_buffer_alignment_gives_the_same_bytes(void **state) {
  (void)state;
  kvp_cache *c = mk(2, 2, 128, 16, 6, KVP_DTYPE_BF16, KVP_LAYOUT_V3); /* 2 x 6 x 16 KiB = 192 KiB */
  fill_random(c, 130);
  uint8_t *s0 = snapshot(c);
  static const uint32_t chunks[] = {4096, 4097, 5000, 8191, 65536};
  for (size_t k = 0; k < sizeof chunks / sizeof chunks[0]; ++k) {
    kvp_serialize_options o;
    kvp_serialize_options_init(&o, sizeof o);
    o.chunk_bytes = chunks[k];
    size_t n = 0;
    uint8_t *ref = blob_of(c, &o, &n);
    uint8_t *raw = malloc(n + 128);
    assert_non_null(raw);
    for (size_t mis = 0; mis < 64; ++mis) {
      uint8_t *b = raw + mis;
      size_t written = 0;
      memset(raw, 0xA5, n + 128);
      assert_kvp_ok(kvp_serialize(c, &o, b, n, &written));
      assert_int_equal(written, n);
      assert_memory_equal(b, ref, n);
      for (size_t i = 0; i < mis; ++i) assert_int_equal(raw[i], 0xA5); /* nothing written before */
      for (size_t i = n; i < n + 128 - mis; ++i) assert_int_equal(b[i], 0xA5); /* or after */
      kvp_cache *t = mk(2, 2, 128, 16, 6, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
      assert_kvp_ok(kvp_deserialize_into(t, b, n, NULL, 0));
      assert_unchanged(t, s0);
      assert_kvp_ok(kvp_cache_destroy(t));
    }
    free(raw);
    free(ref);
  }
  free(s0);
  assert_kvp_ok(kvp_cache_destroy(c));
}

/* ---- files -------------------------------------------------------------------------------------- */

static uint8_t *read_file(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  fseek(f, 0, SEEK_END);
  long sz = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *d = malloc((size_t)sz + 1);
  size_t got = fread(d, 1, (size_t)sz, f);
  fclose(f);
  assert_int_equal(got, (size_t)sz);
  *n = (size_t)sz;
  return d;
}

static int count_dir_entries(const char *dir) {
  DIR *d = opendir(dir);
  int k = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL)
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) ++k;
  closedir(d);
  return k;
}

static void test_serialize__file_roundtrip_and_inspect(void **state) {
  (void)state;
  char dir[] = "/tmp/kvp_ser_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[256];
  snprintf(path, sizeof path, "%s/cache.kvps", dir);
  kvp_cache *c = mk(2, 2, 96, 8, 4, KVP_DTYPE_F32, KVP_LAYOUT_V3);
  fill_random(c, 80);
  kvp_serialize_options o;
  kvp_serialize_options_init(&o, sizeof o);
  o.chunk_bytes = 4096;
  assert_kvp_ok(kvp_serialize_to_file(c, &o, path));
  size_t n = 0, fn = 0;
  uint8_t *b = blob_of(c, &o, &n);
  uint8_t *f = read_file(path, &fn);
  assert_int_equal(fn, n);
  assert_memory_equal(f, b, n);
  kvp_cache *out = NULL;
  assert_kvp_ok(kvp_deserialize_new_from_file(path, NULL, &out));
  uint8_t *s = snapshot(c);
  assert_unchanged(out, s);
  kvp_cache *t = mk(2, 2, 96, 8, 4, KVP_DTYPE_F32, KVP_LAYOUT_V3);
  assert_kvp_ok(kvp_deserialize_into_from_file(t, path, NULL, 0));
  assert_unchanged(t, s);

  kvp_serialized_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  assert_kvp_ok(kvp_serialized_inspect_file(path, KVP_INSPECT_VERIFY, &info));
  kvp_layout_info li = info_of(c);
  assert_int_equal(info.format_major, 1);
  assert_int_equal(info.format_minor, 0);
  assert_int_equal(info.num_stored_pages, 4);
  assert_int_equal(info.last_page_id, 3);
  assert_int_equal(info.page_bytes_per_layer, (uint64_t)li.page_bytes_per_layer);
  assert_int_equal(info.payload_bytes, 2 * 4 * (uint64_t)li.page_bytes_per_layer);
  assert_int_equal(info.num_chunks, (info.payload_bytes + 4095) / 4096);
  assert_int_equal(info.total_bytes, n);
  assert_int_equal(info.config.num_kv_heads, 2);
  /* Header-only inspection of the first 192 bytes works; verification of a damaged chunk names it. */
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  assert_kvp_ok(kvp_serialized_inspect(b, 192, 0, &info));
  assert_int_equal(info.total_bytes, n);
  b[216 + 2 * (4096 + 8) + 5] ^= 1;
  assert_kvp_status(kvp_serialized_inspect(b, n, KVP_INSPECT_VERIFY, &info), KVP_ERR_FORMAT_CHECKSUM, "chunk 2 ");
  assert_kvp_status(kvp_deserialize_new_from_file("/nonexistent/x.kvps", NULL, &out), KVP_ERR_IO, "x.kvps");
  assert_null(out);

  unlink(path);
  rmdir(dir);
  free(s);
  free(f);
  free(b);
  assert_kvp_ok(kvp_cache_destroy(t));
  assert_kvp_ok(kvp_cache_destroy(c));
}

/* Every fsync(2) of this process, counted (the library's calls resolve to this definition first),
 * then passed on to the C library's. */
static int fsync_calls;
int fsync(int fd) {
  static int (*real_fsync)(int);
  if (real_fsync == NULL) real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
  ++fsync_calls;
  return real_fsync(fd);
}

/* KVP_SERIALIZE_FLAG_NO_SYNC: the same file, replaced atomically, without the two fsyncs. */
static void test_serialize__unsynced_file_save_skips_only_the_fsyncs(void **state) {
  (void)state;
  char dir[] = "/tmp/kvp_ser_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[256];
  snprintf(path, sizeof path, "%s/cache.kvps", dir);
  kvp_cache *c = mk(2, 2, 96, 8, 4, KVP_DTYPE_F32, KVP_LAYOUT_V3);
  fill_random(c, 81);
  kvp_serialize_options o;
  kvp_serialize_options_init(&o, sizeof o);
  o.chunk_bytes = 4096;
  fsync_calls = 0;
  assert_kvp_ok(kvp_serialize_to_file(c, &o, path)); /* the old file to replace */
  assert_int_equal(fsync_calls, 2);                    /* the new file, then its directory */
  fill_random(c, 82);
  o.flags = KVP_SERIALIZE_FLAG_NO_SYNC;
  fsync_calls = 0;
  assert_kvp_ok(kvp_serialize_to_file(c, &o, path));
  assert_int_equal(fsync_calls, 0);
  size_t n = 0, fn = 0;
  uint8_t *b = blob_of(c, &o, &n);
  uint8_t *f = read_file(path, &fn);
  assert_int_equal(fn, n);
  assert_memory_equal(f, b, n);
  DIR *d = opendir(dir); /* replaced in place: no temporary file left beside it */
  int entries = 0;
  for (struct dirent *e; (e = readdir(d)) != NULL;) entries += e->d_name[0] != '.';
  closedir(d);
  assert_int_equal(entries, 1);
  kvp_cache *t = mk(2, 2, 96, 8, 4, KVP_DTYPE_F32, KVP_LAYOUT_V3);
  assert_kvp_ok(kvp_deserialize_into_from_file(t, path, NULL, 0));
  uint8_t *s = snapshot(c);
  assert_unchanged(t, s);
  unlink(path);
  rmdir(dir);
  free(s);
  free(f);
  free(b);
  assert_kvp_ok(kvp_cache_destroy(t));
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void test_serialize__interrupted_file_write_keeps_previous_file(void **state) {
  (void)state;
  char dir[] = "/tmp/kvp_ser_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[256];
  snprintf(path, sizeof path, "%s/cache.kvps", dir);
  kvp_cache *small = small_cache(90);
  assert_kvp_ok(kvp_serialize_to_file(small, NULL, path));
  size_t n0 = 0;
  uint8_t *before = read_file(path, &n0);

  /* A bigger blob with the file size limited to 4 KiB: write() fails part-way (EFBIG). */
  kvp_cache *big = mk(2, 2, 128, 8, 8, KVP_DTYPE_F32, KVP_LAYOUT_V3);
  fill_random(big, 91);
  struct rlimit old, lim;
  assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
  void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
  lim = old;
  lim.rlim_cur = 4096;
  assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
  kvp_status st = kvp_serialize_to_file(big, NULL, path);
  assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
  signal(SIGXFSZ, prev);
  assert_int_equal(st, KVP_ERR_IO);
  assert_non_null(strstr(kvp_last_error_message(), "cache.kvps"));

  size_t n1 = 0;
  uint8_t *after = read_file(path, &n1);
  assert_int_equal(n1, n0);
  assert_memory_equal(after, before, n0);
  assert_int_equal(count_dir_entries(dir), 1); /* no temporary file left behind */
  /* Without the limit the replacement succeeds and the file is the new blob. */
  assert_kvp_ok(kvp_serialize_to_file(big, NULL, path));
  kvp_serialized_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  assert_kvp_ok(kvp_serialized_inspect_file(path, KVP_INSPECT_VERIFY, &info));
  assert_int_equal(info.config.num_pages, 8);
  assert_int_equal(count_dir_entries(dir), 1);

  unlink(path);
  rmdir(dir);
  free(after);
  free(before);
  assert_kvp_ok(kvp_cache_destroy(big));
  assert_kvp_ok(kvp_cache_destroy(small));
}

/* ---- files on the thread pool (issue 19): the payload is written and read in place, chunk by
 * chunk on several threads; deserialize_into verifies the file in a first pass. ------------------ */

static void write_bytes(const char *path, const uint8_t *b, size_t n) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(b, 1, n, f), n);
  assert_int_equal(fclose(f), 0);
}

/* 3 layers x 7 pages of 16 KiB (336 KiB: the parallel path) or 1 page (the sequential one). */
static kvp_cache *file_cache(int64_t pages, uint64_t seed) {
  kvp_cache *c = mk(3, 2, 128, 16, pages, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  fill_random(c, seed);
  return c;
}

/* Chunk sizes that leave every kind of last chunk (64 bytes, uneven, one chunk larger than the
 * payload), whole caches and out-of-order subsets: the file holds the bytes of kvp_serialize, and
 * both file loads give back the pages (deserialize_into leaves the other pages alone). */
static void test_serialize__file_round_trips_at_any_chunk_size(void **state) {
  (void)state;
  char dir[] = "/tmp/kvp_ser_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[256];
  snprintf(path, sizeof path, "%s/c.kvps", dir);
  static const uint64_t chunks[] = {64, 4096, 10000, 65543, 1u << 20};
  const int32_t sel[] = {6, 0, 1, 2, 4}, to[] = {3, 5, 6, 0, 1};
  for (int64_t pages = 1; pages <= 7; pages += 6) {
    kvp_cache *c = file_cache(pages, 140);
    for (size_t k = 0; k < sizeof chunks / sizeof chunks[0]; ++k)
      for (int subset = 0; subset < (pages == 7 ? 2 : 1); ++subset) {
        kvp_serialize_options o;
        kvp_serialize_options_init(&o, sizeof o);
        o.chunk_bytes = chunks[k];
        if (subset) {
          o.page_ids = sel;
          o.num_page_ids = 5;
        }
        size_t n = 0, fn = 0;
        uint8_t *b = blob_of(c, &o, &n);
        assert_kvp_ok(kvp_serialize_to_file(c, &o, path));
        uint8_t *f = read_file(path, &fn);
        assert_int_equal(fn, n);
        assert_memory_equal(f, b, n);

        kvp_cache *out = NULL;
        assert_kvp_ok(kvp_deserialize_new_from_file(path, NULL, &out));
        kvp_cache *t = file_cache(pages, 141);
        uint8_t *before = snapshot(t);
        assert_kvp_ok(kvp_deserialize_into_from_file(t, path, subset ? to : NULL, subset ? 5 : 0));
        const size_t pb = (size_t)info_of(c).page_bytes_per_layer;
        for (uint32_t l = 0; l < 3; ++l)
          for (int64_t p = 0; p < pages; ++p) {
            int j = -1; /* the blob's entry that lands on page p of t */
            for (int q = 0; subset && q < 5; ++q)
              if (to[q] == p) j = q;
            const uint8_t *want_t = !subset ? page_ptr(c, l, p)
                                  : j >= 0  ? page_ptr(c, l, sel[j])
                                            : before + ((size_t)l * (size_t)pages + (size_t)p) * pb;
            assert_memory_equal(page_ptr(t, l, p), want_t, pb);
            int stored = !subset;
            for (int q = 0; subset && q < 5; ++q) stored |= sel[q] == p;
            if (stored) assert_memory_equal(page_ptr(out, l, p), page_ptr(c, l, p), pb);
          }
        free(before);
        free(f);
        free(b);
        assert_kvp_ok(kvp_cache_destroy(t));
        assert_kvp_ok(kvp_cache_destroy(out));
      }
    assert_kvp_ok(kvp_cache_destroy(c));
  }
  unlink(path);
  rmdir(dir);
}

/* A damaged file: deserialize_into reports what the buffer path reports (the lowest bad chunk,
 * a truncation, trailing bytes) and leaves the target byte-identical; deserialize_new returns no
 * cache. Large (parallel) and small (sequential) payloads. */
static void test_serialize__damaged_file_leaves_the_target_unchanged(void **state) {
  (void)state;
  char dir[] = "/tmp/kvp_ser_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[256];
  snprintf(path, sizeof path, "%s/d.kvps", dir);
  for (int64_t pages = 1; pages <= 7; pages += 6) {
    kvp_cache *c = file_cache(pages, 150);
    kvp_serialize_options o;
    kvp_serialize_options_init(&o, sizeof o);
    o.chunk_bytes = 4000;
    size_t n = 0;
    uint8_t *b = blob_of(c, &o, &n);
    const size_t first = 192 + 4 * (size_t)pages + 8;
    const size_t nchunks = (n - first) / 4008;
    assert_true(nchunks >= 12);
    kvp_cache *t = file_cache(pages, 151);
    uint8_t *snap = snapshot(t);
    struct {
      size_t at;       /* byte flipped (SIZE_MAX: none) */
      size_t at2;      /* a second one (SIZE_MAX: none) */
      long len_delta;  /* bytes removed (< 0) or appended (> 0) */
      kvp_status want;
      const char *msg;
    } cases[] = {
        {first + (nchunks - 1) * 4008 + 2, first + 7 * 4008 + 4000 + 3, 0, KVP_ERR_FORMAT_CHECKSUM, "chunk 7 "},
        {first + 11 * 4008, SIZE_MAX, 0, KVP_ERR_FORMAT_CHECKSUM, "chunk 11 "},
        {200, SIZE_MAX, 0, KVP_ERR_FORMAT_CHECKSUM, "table"},
        {SIZE_MAX, SIZE_MAX, -1, KVP_ERR_FORMAT_TRUNCATED, "truncated"},
        {SIZE_MAX, SIZE_MAX, 1, KVP_ERR_FORMAT_CORRUPT, "trailing"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; ++k) {
      uint8_t *bad = malloc(n + 1);
      memcpy(bad, b, n);
      bad[n] = 0;
      if (cases[k].at != SIZE_MAX) bad[cases[k].at] ^= 0x40;
      if (cases[k].at2 != SIZE_MAX) bad[cases[k].at2] ^= 0x01;
      write_bytes(path, bad, (size_t)((long)n + cases[k].len_delta));
      assert_kvp_status(kvp_deserialize_into_from_file(t, path, NULL, 0), cases[k].want, cases[k].msg);
      assert_unchanged(t, snap);
      kvp_cache *out = (kvp_cache *)(uintptr_t)1;
      assert_kvp_status(kvp_deserialize_new_from_file(path, NULL, &out), cases[k].want, cases[k].msg);
      assert_null(out);
      free(bad);
    }
    free(snap);
    free(b);
    assert_kvp_ok(kvp_cache_destroy(t));
    assert_kvp_ok(kvp_cache_destroy(c));
  }
  unlink(path);
  rmdir(dir);
}

/* The file written by a process whose library has one thread (KVP_NUM_THREADS=1, this binary run
 * with --save-one-thread) equals the one written here (main sets 2 threads); each process loads
 * the other's file into the same pages. */
static int save_one_thread(const char *path) {
  kvp_cache *c = file_cache(7, 160);
  kvp_serialize_options o;
  kvp_serialize_options_init(&o, sizeof o);
  o.chunk_bytes = 10000;
  kvp_cache *t = NULL;
  char other[300];
  snprintf(other, sizeof other, "%s.2", path);
  int rc = kvp_serialize_to_file(c, &o, path) == KVP_OK ? 0 : 1;
  rc |= kvp_deserialize_new_from_file(other, NULL, &t) == KVP_OK ? 0 : 2;
  if (rc == 0) {
    rc |= kvp_deserialize_into_from_file(t, path, NULL, 0) == KVP_OK ? 0 : 4;
    const size_t lb = (size_t)info_of(c).layer_bytes;
    for (uint32_t l = 0; l < 3; ++l) rc |= memcmp(layer_ptr(t, l), layer_ptr(c, l), lb) == 0 ? 0 : 8;
    kvp_cache_destroy(t);
  }
  kvp_cache_destroy(c);
  return rc;
}

static void test_serialize__one_and_two_threads_write_the_same_file(void **state) {
  (void)state;
  char dir[] = "/tmp/kvp_ser_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[256], path2[300];
  snprintf(path, sizeof path, "%s/t.kvps", dir);
  snprintf(path2, sizeof path2, "%s.2", path);
  kvp_cache *c = file_cache(7, 160);
  kvp_serialize_options o;
  kvp_serialize_options_init(&o, sizeof o);
  o.chunk_bytes = 10000;
  assert_kvp_ok(kvp_serialize_to_file(c, &o, path2));
  const pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    setenv("KVP_NUM_THREADS", "1", 1);
    execl("/proc/self/exe", "test_serialize", "--save-one-thread", path, (char *)NULL);
    _exit(127);
  }
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
  size_t n1 = 0, n2 = 0;
  uint8_t *f1 = read_file(path, &n1), *f2 = read_file(path2, &n2);
  assert_int_equal(n1, n2);
  assert_memory_equal(f1, f2, n1);
  kvp_cache *t = mk(3, 2, 128, 16, 7, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  assert_kvp_ok(kvp_deserialize_into_from_file(t, path, NULL, 0));
  uint8_t *s = snapshot(c);
  assert_unchanged(t, s);
  free(s);
  free(f1);
  free(f2);
  unlink(path);
  unlink(path2);
  rmdir(dir);
  assert_kvp_ok(kvp_cache_destroy(t));
  assert_kvp_ok(kvp_cache_destroy(c));
}

/* ---- file permissions, symbolic links, interrupted saves (issue 17, defects 9 and 10) ---------- */

static mode_t mode_of(const char *path) {
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  return st.st_mode & 07777;
}

/* Saving over a file keeps its mode: a 0600 file (KV pages reveal prompts) stayed 0644 before. */
static void test_serialize__file_save_keeps_the_mode_of_the_old_file(void **state) {
  (void)state;
  char dir[] = "/tmp/kvp_ser_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[256];
  snprintf(path, sizeof path, "%s/cache.kvps", dir);
  kvp_cache *c = small_cache(31);
  const mode_t modes[] = {0600, 0640, 0604, 0700};
  assert_kvp_ok(kvp_serialize_to_file(c, NULL, path));
  for (int i = 0; i < 4; ++i) {
    assert_int_equal(chmod(path, modes[i]), 0);
    assert_kvp_ok(kvp_serialize_to_file(c, NULL, path));
    assert_int_equal(mode_of(path), modes[i]);
  }
  assert_int_equal(count_dir_entries(dir), 1);
  unlink(path);
  rmdir(dir);
  assert_kvp_ok(kvp_cache_destroy(c));
}

/* A new file gets 0666 less the umask (it got 0644 whatever the umask). */
static void test_serialize__new_file_mode_follows_the_umask(void **state) {
  (void)state;
  char dir[] = "/tmp/kvp_ser_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[256];
  snprintf(path, sizeof path, "%s/cache.kvps", dir);
  kvp_cache *c = small_cache(32);
  const mode_t masks[] = {022, 077, 027, 002};
  const mode_t want[] = {0644, 0600, 0640, 0664};
  const mode_t old = umask(022);
  for (int i = 0; i < 4; ++i) {
    umask(masks[i]);
    const kvp_status st = kvp_serialize_to_file(c, NULL, path);
    umask(old);
    assert_kvp_ok(st);
    if (mode_of(path) != want[i]) fail_msg("umask %03o: mode %03o, want %03o", masks[i], mode_of(path), want[i]);
    assert_int_equal(unlink(path), 0);
  }
  umask(old);
  rmdir(dir);
  assert_kvp_ok(kvp_cache_destroy(c));
}

/* A symbolic link at the path is followed: its target is replaced atomically (mode kept) and the
 * link stays (it was replaced by a regular file). A dangling link is refused, nothing written. */
static void test_serialize__file_save_through_a_symlink_replaces_its_target(void **state) {
  (void)state;
  char dir[] = "/tmp/kvp_ser_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char real[256], link[256], sub[256], dangling[256];
  snprintf(real, sizeof real, "%s/real.kvps", dir);
  snprintf(sub, sizeof sub, "%s/sub", dir);
  snprintf(link, sizeof link, "%s/sub/link.kvps", dir);
  snprintf(dangling, sizeof dangling, "%s/dangling.kvps", dir);
  assert_int_equal(mkdir(sub, 0700), 0);
  assert_int_equal(symlink("../real.kvps", link), 0);
  kvp_cache *a = small_cache(33), *b = small_cache(34);
  assert_kvp_ok(kvp_serialize_to_file(a, NULL, real));
  assert_int_equal(chmod(real, 0600), 0);
  assert_kvp_ok(kvp_serialize_to_file(b, NULL, link));
  struct stat st;
  assert_int_equal(lstat(link, &st), 0);
  assert_true(S_ISLNK(st.st_mode));
  assert_int_equal(mode_of(real), 0600);
  size_t nb = 0, nf = 0;
  uint8_t *want = blob_of(b, NULL, &nb);
  uint8_t *got = read_file(real, &nf);
  assert_int_equal(nf, nb);
  assert_memory_equal(got, want, nb);
  assert_int_equal(count_dir_entries(dir), 2); /* real.kvps and sub: no temporary file */
  assert_int_equal(count_dir_entries(sub), 1);
  /* A link to a missing file. */
  assert_int_equal(symlink("missing/x.kvps", dangling), 0);
  assert_kvp_status(kvp_serialize_to_file(b, NULL, dangling), KVP_ERR_IO, "symbolic link");
  assert_int_equal(count_dir_entries(dir), 3);
  unlink(dangling);
  unlink(link);
  unlink(real);
  rmdir(sub);
  rmdir(dir);
  free(got);
  free(want);
  assert_kvp_ok(kvp_cache_destroy(b));
  assert_kvp_ok(kvp_cache_destroy(a));
}

/* The cache the save-forever child writes (32 MiB), and its blob. */
#define KILL_SEED 35
static kvp_cache *kill_cache(void) {
  kvp_cache *c = mk(4, 8, 128, 16, 32, KVP_DTYPE_F32, KVP_LAYOUT_V3);
  fill_random(c, KILL_SEED);
  return c;
}

/* `test_serialize --save-forever PATH`: saves kill_cache() to PATH until killed. A fresh process
 * (exec), so that nothing of the parent's library state is inherited. */
static int save_forever(const char *path) {
  kvp_cache *c = kill_cache();
  printf("saving\n");
  fflush(stdout);
  for (;;)
    if (kvp_serialize_to_file(c, NULL, path) != KVP_OK) {
      fprintf(stderr, "save-forever: %s\n", kvp_last_error_message());
      return 1;
    }
}

/* 1 when `dir`'s filesystem creates unnamed files (O_TMPFILE). */
static int has_o_tmpfile(const char *dir) {
  const int fd = open(dir, O_TMPFILE | O_WRONLY, 0600);
  if (fd < 0) return 0;
  close(fd);
  return access("/proc/self/fd", X_OK) == 0;
}

/* Files in `dir` other than `target` that are not a complete copy of `blob` (removed as counted).
 * A kill between the link of the finished unnamed file and its rename leaves a complete copy
 * under a temporary name, as docs/serialization-format.md says; anything else is a defect. */
static int count_partial_leftovers(const char *dir, const char *target, const uint8_t *blob, size_t n_blob) {
  DIR *d = opendir(dir);
  int partial = 0;
  struct dirent *e;
  char p[512];
  while ((e = readdir(d)) != NULL) {
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 || strcmp(p, target) == 0) continue;
    size_t n = 0;
    uint8_t *f = read_file(p, &n);
    partial += f == NULL || n != n_blob || memcmp(f, blob, n) != 0;
    free(f);
    unlink(p);
  }
  closedir(d);
  return partial;
}

/* kill -9 during saves (3 of 40 left PATH.tmp.* files): after each kill the directory holds the
 * target, which is the old or the new complete blob, and no partial temporary file. */
static void test_serialize__killed_saves_leave_no_temporary_files(void **state) {
  (void)state;
  char dir[] = "/tmp/kvp_ser_XXXXXX";
  assert_non_null(mkdtemp(dir));
  if (!has_o_tmpfile(dir)) {
    rmdir(dir);
    skip(); /* without O_TMPFILE a killed save leaves its named temporary file: documented */
  }
  char path[256];
  snprintf(path, sizeof path, "%s/cache.kvps", dir);
  kvp_cache *old = small_cache(36), *c = kill_cache();
  size_t n_old = 0, n_new = 0;
  uint8_t *blob_old = blob_of(old, NULL, &n_old), *blob_new = blob_of(c, NULL, &n_new);
  assert_kvp_ok(kvp_serialize_to_file(old, NULL, path));
  uint64_t seed = 37;
  int temporaries = 0;
  for (int kill_no = 0; kill_no < 8; ++kill_no) {
    int out[2];
    assert_int_equal(pipe(out), 0);
    const pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      dup2(out[1], 1);
      execl("/proc/self/exe", "test_serialize", "--save-forever", path, (char *)NULL);
      _exit(127);
    }
    close(out[1]);
    char line[16] = {0};
    assert_true(read(out[0], line, sizeof line - 1) > 0); /* "saving": the cache is made */
    close(out[0]);
    usleep((useconds_t)kvp_test_rand_range(&seed, 1000, 150000));
    assert_int_equal(kill(pid, SIGKILL), 0);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status)); /* it was still saving */
    temporaries += count_partial_leftovers(dir, path, blob_new, n_new);
    size_t n = 0;
    uint8_t *f = read_file(path, &n);
    assert_non_null(f);
    assert_true((n == n_old && memcmp(f, blob_old, n) == 0) || (n == n_new && memcmp(f, blob_new, n) == 0));
    free(f);
  }
  assert_int_equal(temporaries, 0);
  unlink(path);
  rmdir(dir);
  free(blob_new);
  free(blob_old);
  assert_kvp_ok(kvp_cache_destroy(c));
  assert_kvp_ok(kvp_cache_destroy(old));
}

/* ---- golden blobs (tests/data/README.md describes them and the generator) ----------------------- */

static uint8_t golden_byte(uint32_t layer, uint64_t page, uint64_t offset) {
  uint64_t v = (uint64_t)layer * 1000003u + page * 10007u + offset * 31u;
  return (uint8_t)((v ^ (v >> 7)) & 0xFF);
}

/* `name` in tests/data/`version`: a whole cache's blob, or a shard's (format 1.1), whose pages
 * [page_begin, page_end) follow the pattern of their global ids. */
static void check_golden(const char *version, const char *name, int64_t L, int64_t H, int64_t D, int64_t S, int64_t P,
                         kvp_dtype dt, kvp_layout lay, const int32_t *ids, size_t nids) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s/%s", KVP_TEST_DATA_DIR, version, name);
  size_t n = 0;
  uint8_t *b = read_file(path, &n);
  if (b == NULL) fail_msg("cannot read golden blob %s", path);
  kvp_cache *c = NULL;
  assert_kvp_ok(kvp_deserialize_new(b, n, NULL, &c));
  kvp_config cfg = config_of(c);
  assert_int_equal(cfg.num_hidden_layers, L);
  assert_int_equal(cfg.num_kv_heads, H);
  assert_int_equal(cfg.k_headdim, D);
  assert_int_equal(cfg.page_size, S);
  assert_int_equal(cfg.num_pages, P);
  assert_int_equal(cfg.kvdtype, dt);
  assert_int_equal(cfg.version, lay);
  size_t pb = (size_t)info_of(c).page_bytes_per_layer;
  kvp_shard_info si = KVP_SHARD_INFO_INIT;
  assert_kvp_ok(kvp_cache_get_shard(c, &si));
  for (uint32_t l = 0; l < (uint32_t)L; ++l)
    for (int64_t p = si.page_begin; p < si.page_end; ++p) {
      int stored = ids == NULL;
      for (size_t j = 0; j < nids; ++j) stored |= ids[j] == p;
      const uint8_t *q = page_ptr(c, l, p - si.page_begin);
      for (size_t i = 0; i < pb; ++i) {
        uint8_t want = stored ? golden_byte(l, (uint64_t)p, i) : 0;
        if (q[i] != want) fail_msg("%s: layer %u page %lld byte %zu is %u, want %u", name, l, (long long)p, i, q[i], want);
      }
    }
  /* Today's writer produces the same bytes (except the writer version and the header checksum). */
  kvp_serialize_options o;
  kvp_serialize_options_init(&o, sizeof o);
  o.page_ids = ids;
  o.num_page_ids = (uint32_t)nids;
  o.chunk_bytes = rd64(b + 144);
  size_t n2 = 0;
  uint8_t *again = blob_of(c, &o, &n2);
  assert_int_equal(n2, n);
  const size_t hs = rd32(b + 8);
  assert_memory_equal(again, b, 12);
  assert_memory_equal(again + 16, b + 16, hs - 8 - 16);
  assert_memory_equal(again + hs, b + hs, n - hs);
  free(again);
  free(b);
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void test_serialize__golden_blobs_still_load(void **state) {
  (void)state;
  check_golden("v1.0", "whole-v3-h64-bf16.kvps", 2, 2, 64, 4, 3, KVP_DTYPE_BF16, KVP_LAYOUT_V3, NULL, 0);
  const int32_t ids[] = {3, 1};
  check_golden("v1.0", "subset-v2-fp8e4m3.kvps", 2, 1, 8, 4, 5, KVP_DTYPE_F8_E4M3FN, KVP_LAYOUT_V2, ids, 2);
  /* Format 1.1: shard (tp 1, dp 1) of 2 x 2, pages 7 and 5 of its block [4, 8). */
  const int32_t shard_ids[] = {7, 5};
  check_golden("v1.1", "shard-v3-h64-bf16-tp2-dp2-r1-1.kvps", 2, 4, 64, 4, 8, KVP_DTYPE_BF16, KVP_LAYOUT_V3,
               shard_ids, 2);
}

/* ---- contract ----------------------------------------------------------------------------------- */

static void test_serialize__contract(void **state) {
  (void)state;
  kvp_cache *c = small_cache(100);
  size_t n = 0, sz = 0;
  uint8_t *b = small_blob(c, &n);
  kvp_cache *out = NULL;
  assert_kvp_status(kvp_serialized_size(NULL, NULL, &sz), KVP_ERR_INVALID_HANDLE, "");
  assert_kvp_status(kvp_serialized_size(c, NULL, NULL), KVP_ERR_INVALID_ARGUMENT, "out");
  assert_kvp_status(kvp_serialize(NULL, NULL, b, n, &sz), KVP_ERR_INVALID_HANDLE, "");
  assert_kvp_status(kvp_serialize(c, NULL, b, n, NULL), KVP_ERR_INVALID_ARGUMENT, "written_out");
  assert_kvp_status(kvp_serialize(c, NULL, NULL, 5, &sz), KVP_ERR_INVALID_ARGUMENT, "dst");
  assert_kvp_status(kvp_serialize_to_writer(c, NULL, NULL, NULL), KVP_ERR_INVALID_ARGUMENT, "fn");
  assert_kvp_status(kvp_serialize_to_file(c, NULL, NULL), KVP_ERR_INVALID_ARGUMENT, "path");
  assert_kvp_status(kvp_serialize_to_file(c, NULL, ""), KVP_ERR_INVALID_ARGUMENT, "empty");
  assert_kvp_status(kvp_deserialize_new(b, n, NULL, NULL), KVP_ERR_INVALID_ARGUMENT, "out");
  assert_kvp_status(kvp_deserialize_new(NULL, 5, NULL, &out), KVP_ERR_INVALID_ARGUMENT, "src");
  assert_kvp_status(kvp_deserialize_new(NULL, 0, NULL, &out), KVP_ERR_FORMAT_TRUNCATED, "");
  assert_kvp_status(kvp_deserialize_new_from_reader(NULL, NULL, NULL, &out), KVP_ERR_INVALID_ARGUMENT, "fn");
  assert_kvp_status(kvp_deserialize_into(NULL, b, n, NULL, 0), KVP_ERR_INVALID_HANDLE, "");
  assert_kvp_status(kvp_deserialize_into_from_file(c, NULL, NULL, 0), KVP_ERR_INVALID_ARGUMENT, "path");
  assert_kvp_status(kvp_serialized_inspect(b, n, 2, NULL), KVP_ERR_INVALID_ARGUMENT, "out");
  kvp_serialized_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = 8;
  assert_kvp_status(kvp_serialized_inspect(b, n, 0, &info), KVP_ERR_VERSION_MISMATCH, "struct_size");
  info.struct_size = sizeof info;
  assert_kvp_status(kvp_serialized_inspect(b, n, 2, &info), KVP_ERR_INVALID_ARGUMENT, "flags");

  /* Options: versioning and bad selections. */
  kvp_serialize_options o;
  assert_kvp_ok(kvp_serialize_options_init(&o, sizeof o));
  assert_int_equal(o.abi_version, KVP_SERIALIZE_OPTIONS_VERSION);
  o.struct_size = 4;
  assert_kvp_status(kvp_serialized_size(c, &o, &sz), KVP_ERR_VERSION_MISMATCH, "struct_size");
  assert_kvp_ok(kvp_serialize_options_init(&o, sizeof o));
  o.abi_version = 0;
  assert_kvp_status(kvp_serialized_size(c, &o, &sz), KVP_ERR_VERSION_MISMATCH, "abi_version");
  assert_kvp_ok(kvp_serialize_options_init(&o, sizeof o));
  o.flags = 2; /* bit 0 is KVP_SERIALIZE_FLAG_NO_SYNC (1.3); bit 1 is unknown */
  assert_kvp_status(kvp_serialized_size(c, &o, &sz), KVP_ERR_INVALID_ARGUMENT,
                    "flags 0x2 has bits this library does not know");
  o.flags = 0;
  o.chunk_bytes = 63;
  assert_kvp_status(kvp_serialized_size(c, &o, &sz), KVP_ERR_INVALID_ARGUMENT, "chunk_bytes 63");
  o.chunk_bytes = 0;
  const int32_t oob[] = {0, 3};
  const int32_t dup[] = {2, 0, 2};
  const int32_t neg[] = {-1};
  o.page_ids = oob;
  o.num_page_ids = 2;
  assert_kvp_status(kvp_serialized_size(c, &o, &sz), KVP_ERR_INVALID_ARGUMENT, "page_ids[1] = 3");
  o.page_ids = dup;
  o.num_page_ids = 3;
  assert_kvp_status(kvp_serialize(c, &o, b, n, &sz), KVP_ERR_INVALID_ARGUMENT, "page id 2");
  o.page_ids = neg;
  o.num_page_ids = 1;
  assert_kvp_status(kvp_serialized_size(c, &o, &sz), KVP_ERR_INVALID_ARGUMENT, "-1");
  o.page_ids = NULL;
  o.num_page_ids = 2;
  assert_kvp_status(kvp_serialized_size(c, &o, &sz), KVP_ERR_INVALID_ARGUMENT, "NULL");
  /* An empty, non-NULL selection writes the config and no page. */
  o.page_ids = oob;
  o.num_page_ids = 0;
  assert_kvp_ok(kvp_serialized_size(c, &o, &sz));
  assert_int_equal(sz, 192 + 8);
  kvp_deserialize_options d;
  assert_kvp_ok(kvp_deserialize_options_init(&d, sizeof d));
  d.flags = 1;
  assert_kvp_status(kvp_deserialize_new(b, n, &d, &out), KVP_ERR_UNSUPPORTED, "flags");
  assert_null(out);

  /* A destroyed handle. */
  kvp_cache *dead = small_cache(101);
  assert_kvp_ok(kvp_cache_destroy(dead));
  assert_kvp_status(kvp_serialized_size(dead, NULL, &sz), KVP_ERR_INVALID_HANDLE, "");
  assert_kvp_status(kvp_deserialize_into(dead, b, n, NULL, 0), KVP_ERR_INVALID_HANDLE, "");
  /* Success clears the message. */
  assert_kvp_ok(kvp_serialized_size(c, NULL, &sz));
  assert_string_equal(kvp_last_error_message(), "");
  free(b);
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void test_serialize__out_of_memory_leaks_nothing(void **state) {
  (void)state;
  kvp_cache *c = small_cache(110);
  size_t n = 0;
  uint8_t *b = small_blob(c, &n);
  kvp_test_alloc_state st = {0, 0, 0};
  kvp_host_allocator a = kvp_test_allocator(&st);
  kvp_cache_options co;
  kvp_cache_options_init(&co, sizeof co);
  co.allocator = &a;
  kvp_deserialize_options d;
  kvp_deserialize_options_init(&d, sizeof d);
  d.cache_options = &co;
  long k;
  for (k = 0; k < 100; ++k) {
    st.fail_after = k;
    st.allocations = 0;
    kvp_cache *out = NULL;
    kvp_status s = kvp_deserialize_new(b, n, &d, &out);
    if (s == KVP_OK) {
      uint8_t *snap = snapshot(c);
      assert_unchanged(out, snap);
      free(snap);
      assert_kvp_ok(kvp_cache_destroy(out));
      break;
    }
    assert_int_equal(s, KVP_ERR_OUT_OF_MEMORY);
    assert_null(out);
    assert_int_equal(st.live, 0);
  }
  assert_true(k > 0 && k < 100);
  assert_int_equal(st.live, 0);
  free(b);
  assert_kvp_ok(kvp_cache_destroy(c));
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--save-forever") == 0) return save_forever(argv[2]);
  if (argc == 3 && strcmp(argv[1], "--save-one-thread") == 0) return save_one_thread(argv[2]);
  setenv("KVP_NUM_THREADS", "2", 1); /* the file paths below use a helper thread, whatever the CPUs or caller */
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_serialize__roundtrip_whole_every_layout_and_dtype),
      cmocka_unit_test(test_serialize__checksums_do_not_depend_on_stack_contents),
      cmocka_unit_test(test_serialize__subset_loads_into_other_page_ids),
      cmocka_unit_test(test_serialize__subset_new_cache_has_pages_at_original_ids),
      cmocka_unit_test(test_serialize__new_caches_never_show_freed_caches),
      cmocka_unit_test(test_serialize__layout_matches_the_format_document),
      cmocka_unit_test(test_serialize__size_query_and_buffer_too_small),
      cmocka_unit_test(test_serialize__every_truncation_is_rejected),
      cmocka_unit_test(test_serialize__every_header_byte_corruption_is_rejected),
      cmocka_unit_test(test_serialize__every_table_and_payload_byte_corruption_is_rejected),
      cmocka_unit_test(test_serialize__crafted_headers),
      cmocka_unit_test(test_serialize__incompatible_target_is_rejected_unchanged),
      cmocka_unit_test(test_serialize__max_cache_bytes_limits_new_caches),
      cmocka_unit_test(test_serialize__writer_and_reader_stream_the_same_bytes),
      cmocka_unit_test(test_serialize__parallel_path_matches_streaming_path),
      cmocka_unit_test(test_serialize__any_buffer_alignment_gives_the_same_bytes),
      cmocka_unit_test(test_serialize__file_roundtrip_and_inspect),
      cmocka_unit_test(test_serialize__interrupted_file_write_keeps_previous_file),
      cmocka_unit_test(test_serialize__unsynced_file_save_skips_only_the_fsyncs),
      cmocka_unit_test(test_serialize__file_save_keeps_the_mode_of_the_old_file),
      cmocka_unit_test(test_serialize__new_file_mode_follows_the_umask),
      cmocka_unit_test(test_serialize__file_save_through_a_symlink_replaces_its_target),
      cmocka_unit_test(test_serialize__killed_saves_leave_no_temporary_files),
      cmocka_unit_test(test_serialize__file_round_trips_at_any_chunk_size),
      cmocka_unit_test(test_serialize__damaged_file_leaves_the_target_unchanged),
      cmocka_unit_test(test_serialize__one_and_two_threads_write_the_same_file),
      cmocka_unit_test(test_serialize__golden_blobs_still_load),
      cmocka_unit_test(test_serialize__contract),
      cmocka_unit_test(test_serialize__out_of_memory_leaks_nothing),
  };
  return cmocka_run_group_tests_name("serialize", tests, NULL, NULL);
}
