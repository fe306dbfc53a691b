/* Unit tests of kvpages/cache.h on the CPU: creation and destruction, options, the config and
 * geometry queries, zero-filled buffers (also with a custom allocator whose memory is not zero),
 * no double commit of large buffers, views of every layer, argument errors leaving outputs
 * unchanged, and the (always empty) asynchronous error state of a CPU cache. */
#include "support.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define FILL 0x5C

static kvp_cache *make_cache(const kvp_config *cfg, const kvp_cache_options *opts) {
  kvp_cache *c = (kvp_cache *)(uintptr_t)0x1;
  assert_kvp_ok(kvp_cache_create(cfg, opts, &c));
  assert_non_null(c);
  return c;
}

static void test_cache__create_destroy_defaults(void **state) {
  (void)state;
  kvp_config cfg = kvp_test_config(3, 2, 128, 16, 5, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  kvp_cache *c = make_cache(&cfg, NULL);
  assert_true(kvp_last_error_message()[0] == '\0');
  kvp_device_type dt = -5;
  int32_t id = -5;
  assert_kvp_ok(kvp_cache_get_device(c, &dt, &id));
  assert_int_equal(dt, KVP_DEVICE_CPU);
  assert_int_equal(id, 0);
  /* each output may be NULL */
  assert_kvp_ok(kvp_cache_get_device(c, NULL, &id));
  assert_kvp_ok(kvp_cache_get_device(c, &dt, NULL));
  assert_kvp_ok(kvp_cache_get_device(c, NULL, NULL));
  assert_kvp_ok(kvp_cache_destroy(c));
  assert_kvp_ok(kvp_cache_destroy(NULL));
}

static void test_cache__explicit_options(void **state) {
  (void)state;
  kvp_config cfg = kvp_test_config(1, 1, 64, 8, 3, KVP_DTYPE_F32, KVP_LAYOUT_V3);
  kvp_cache_options o = KVP_CACHE_OPTIONS_INIT;
  kvp_cache *c = make_cache(&cfg, &o);
  assert_kvp_ok(kvp_cache_destroy(c));
  kvp_cache_options o2;
  memset(&o2, FILL, sizeof o2);
  assert_kvp_ok(kvp_cache_options_init(&o2, sizeof o2));
  assert_int_equal(o2.struct_size, sizeof o2);
  assert_int_equal(o2.abi_version, KVP_CACHE_OPTIONS_VERSION);
  assert_int_equal(o2.device_type, 0);
  assert_int_equal(o2.device_id, 0);
  assert_null(o2.allocator);
  assert_memory_equal(&o, &o2, sizeof o);
  o2.device_type = KVP_DEVICE_CPU;
  c = make_cache(&cfg, &o2);
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void test_cache__get_config_round_trip(void **state) {
  (void)state;
  static const kvp_layout lays[] = {KVP_LAYOUT_V2, KVP_LAYOUT_V3};
  static const kvp_dtype dts[] = {KVP_DTYPE_F32, KVP_DTYPE_F16, KVP_DTYPE_BF16, KVP_DTYPE_F8_E4M3FN,
                                  KVP_DTYPE_F8_E5M2};
  for (size_t i = 0; i < 2; i++)
    for (size_t j = 0; j < 5; j++) {
      kvp_config cfg = kvp_test_config(2, 3, 64, 8, 4, dts[j], lays[i]);
      cfg.max_num_tokens = 77; /* hints survive too */
      cfg.max_num_reqs = 5;
      kvp_cache *c = make_cache(&cfg, NULL);
      kvp_config got;
      memset(&got, FILL, sizeof got);
      got.struct_size = sizeof got; /* opting in to version 2: every byte of it is written */
      got.abi_version = KVP_CONFIG_VERSION;
      assert_kvp_ok(kvp_cache_get_config(c, &got));
      assert_memory_equal(&got, &cfg, sizeof cfg);
      /* the cache copied the config: changing ours does not change its */
      cfg.num_pages = 99;
      assert_kvp_ok(kvp_cache_get_config(c, &got));
      assert_int_equal(got.num_pages, 4);
      /* its layout is the config's layout */
      kvp_layout_info a, b;
      memset(&a, 0, sizeof a);
      memset(&b, 0, sizeof b);
      a.struct_size = sizeof a;
      b.struct_size = sizeof b;
      assert_kvp_ok(kvp_cache_get_layout(c, &a));
      assert_kvp_ok(kvp_config_get_layout(&got, &b));
      assert_memory_equal(&a, &b, sizeof a);
      assert_kvp_ok(kvp_cache_destroy(c));
    }
}

/* One buffer per layer with the size of the layout, all zero, for every dtype and layout. */
static void test_cache__new_cache_is_zero_for_every_layer(void **state) {
  (void)state;
  static const kvp_dtype dts[] = {KVP_DTYPE_F32, KVP_DTYPE_F16, KVP_DTYPE_BF16, KVP_DTYPE_F8_E4M3FN,
                                  KVP_DTYPE_F8_E5M2};
  for (size_t j = 0; j < 5; j++) {
    kvp_config cfg = kvp_test_config(4, 3, 96, 16, 6, dts[j], KVP_LAYOUT_V3);
    kvp_cache *c = make_cache(&cfg, NULL);
    kvp_layout_info li;
    li.struct_size = sizeof li;
    assert_kvp_ok(kvp_cache_get_layout(c, &li));
    /* 6 pages * 16 rows * align(6, pack) * 128 lanes * itemsize */
    const int64_t it = kvp_dtype_bits(dts[j]) / 8, pack = 4 / it;
    const int64_t cst = (6 + pack - 1) / pack * pack;
    assert_true(li.layer_bytes == 6 * 16 * cst * 128 * it);
    for (uint32_t l = 0; l < 4; l++) {
      kvp_tensor t;
      assert_kvp_ok(kvp_cache_get_view(c, l, KVP_VIEW_PAGES, &t));
      const unsigned char *b = (const unsigned char *)t.data;
      for (int64_t i = 0; i < li.layer_bytes; i++)
        if (b[i]) fail_msg("dtype %u layer %u byte %lld = %u", dts[j], l, (long long)i, b[i]);
      /* writable */
      memset(t.data, 0xFF, (size_t)li.layer_bytes);
    }
    assert_kvp_ok(kvp_cache_destroy(c));
  }
}

/* With a custom allocator (whose test_malloc memory is filled with a non-zero pattern by
 * cmocka) the library must zero-fill what it gets, route every allocation through the hook and
 * release all of it on destroy (cmocka reports leaked test_malloc blocks). */
static void test_cache__custom_allocator_is_used_and_zero_filled(void **state) {
  (void)state;
  kvp_test_alloc_state st = {-1, 0, 0};
  kvp_host_allocator a = kvp_test_allocator(&st);
  kvp_cache_options o = KVP_CACHE_OPTIONS_INIT;
  o.allocator = &a;
  kvp_config cfg = kvp_test_config(3, 2, 128, 16, 4, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  kvp_cache *c = make_cache(&cfg, &o);
  assert_true(st.allocations >= 3); /* at least one buffer per layer */
  assert_true(st.live >= 3);
  kvp_layout_info li;
  li.struct_size = sizeof li;
  assert_kvp_ok(kvp_cache_get_layout(c, &li));
  for (uint32_t l = 0; l < 3; l++) {
    kvp_tensor t;
    assert_kvp_ok(kvp_cache_get_view(c, l, KVP_VIEW_PAGES, &t));
    const unsigned char *b = (const unsigned char *)t.data;
    for (int64_t i = 0; i < li.layer_bytes; i++)
      if (b[i]) fail_msg("layer %u byte %lld = %u: custom-allocator memory not zero-filled", l, (long long)i, b[i]);
  }
  assert_kvp_ok(kvp_cache_destroy(c));
  assert_int_equal(st.live, 0);
}

static long rss_kib(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  if (!f) return -1;
  long size = 0, resident = 0;
  int n = fscanf(f, "%ld %ld", &size, &resident);
  fclose(f);
  if (n != 2) return -1;
  return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* Large buffers come from the OS already zeroed: creating a 256 MiB cache must not touch (commit)
 * its memory; reading it afterwards still sees zeros. */
static void test_cache__large_buffers_are_not_committed_at_creation(void **state) {
  (void)state;
  /* 2 layers x 512 pages x 128 rows x 16 combined x 128 lanes x 2 B = 2 x 128 MiB */
  kvp_config cfg = kvp_test_config(2, 8, 128, 128, 512, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  long before = rss_kib();
  if (before < 0) skip();
  kvp_cache *c = make_cache(&cfg, NULL);
  long after = rss_kib();
  if (after - before > 32 * 1024)
    fail_msg("creating a 256 MiB cache grew RSS by %ld KiB: memory was touched (zero-filled twice?)", after - before);
  kvp_tensor t;
  assert_kvp_ok(kvp_cache_get_view(c, 1, KVP_VIEW_PAGES, &t));
  const uint64_t *w = (const uint64_t *)t.data;
  for (int64_t i = 0; i < (128LL << 20) / 8; i += 512) assert_true(w[i] == 0);
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void test_cache__views_of_every_layer_and_kind(void **state) {
  (void)state;
  kvp_config cfg = kvp_test_config(3, 2, 128, 8, 2, KVP_DTYPE_F16, KVP_LAYOUT_V3);
  kvp_cache *c = make_cache(&cfg, NULL);
  void *prev = NULL;
  for (uint32_t l = 0; l < 3; l++) {
    for (kvp_view_kind k = KVP_VIEW_PAGES; k <= KVP_VIEW_REFERENCE_VALUES; k++) {
      kvp_tensor t;
      memset(&t, FILL, sizeof t);
      assert_kvp_ok(kvp_cache_get_view(c, l, k, &t));
      assert_non_null(t.data);
      assert_int_equal(t.dtype, KVP_DTYPE_F16);
      assert_int_equal(t.device_type, KVP_DEVICE_CPU);
      assert_true(t.ndim == 4 || t.ndim == 5);
    }
    kvp_tensor t;
    assert_kvp_ok(kvp_cache_get_view(c, l, KVP_VIEW_PAGES, &t));
    assert_true(t.data != prev);
    prev = t.data;
  }
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void test_cache__view_argument_errors_leave_output_unchanged(void **state) {
  (void)state;
  kvp_config cfg = kvp_test_config(3, 2, 128, 8, 2, KVP_DTYPE_BF16, KVP_LAYOUT_V2);
  kvp_cache *c = make_cache(&cfg, NULL);
  kvp_tensor t, before;
  memset(&t, FILL, sizeof t);
  before = t;
  assert_kvp_status(kvp_cache_get_view(c, 3, KVP_VIEW_PAGES, &t), KVP_ERR_INVALID_ARGUMENT, "3");
  assert_memory_equal(&t, &before, sizeof t);
  assert_kvp_status(kvp_cache_get_view(c, 0xFFFFFFFFu, KVP_VIEW_KEYS, &t), KVP_ERR_INVALID_ARGUMENT, "layer");
  assert_memory_equal(&t, &before, sizeof t);
  assert_kvp_status(kvp_cache_get_view(c, 0, 6u, &t), KVP_ERR_INVALID_ARGUMENT, "6");
  assert_memory_equal(&t, &before, sizeof t);
  assert_kvp_status(kvp_cache_get_view(c, 0, 0xFFFFu, &t), KVP_ERR_INVALID_ARGUMENT, "");
  assert_memory_equal(&t, &before, sizeof t);
  assert_kvp_status(kvp_cache_get_view(c, 0, KVP_VIEW_PAGES, NULL), KVP_ERR_INVALID_ARGUMENT, "");
  /* the last valid layer works */
  assert_kvp_ok(kvp_cache_get_view(c, 2, KVP_VIEW_PAGES, &t));
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void test_cache__query_argument_errors(void **state) {
  (void)state;
  kvp_config cfg = kvp_test_config(1, 2, 128, 8, 2, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  kvp_cache *c = make_cache(&cfg, NULL);
  assert_kvp_status(kvp_cache_get_config(c, NULL), KVP_ERR_INVALID_ARGUMENT, "");
  assert_kvp_status(kvp_cache_get_layout(c, NULL), KVP_ERR_INVALID_ARGUMENT, "");
  kvp_layout_info li, lb;
  memset(&li, FILL, sizeof li);
  li.struct_size = 3;
  lb = li;
  assert_kvp_status(kvp_cache_get_layout(c, &li), KVP_ERR_VERSION_MISMATCH, "struct_size");
  assert_memory_equal(&li, &lb, sizeof li);
  assert_kvp_status(kvp_cache_get_async_error(c, NULL), KVP_ERR_INVALID_ARGUMENT, "");
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void test_cache__cpu_cache_has_no_async_error(void **state) {
  (void)state;
  kvp_config cfg = kvp_test_config(1, 2, 128, 8, 2, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  kvp_cache *c = make_cache(&cfg, NULL);
  kvp_status e = 12345;
  assert_kvp_ok(kvp_cache_get_async_error(c, &e));
  assert_int_equal(e, KVP_OK);
  assert_kvp_ok(kvp_cache_clear_async_error(c));
  assert_kvp_ok(kvp_cache_get_async_error(c, &e));
  assert_int_equal(e, KVP_OK);
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void expect_create_error(const kvp_config *cfg, const kvp_cache_options *o, kvp_status code,
                                const char *substr) {
  kvp_cache *c = (kvp_cache *)(uintptr_t)0x1234;
  kvp_status s = kvp_cache_create(cfg, o, &c);
  if (s != code)
    fail_msg("expected %s ('%s'), got %s: %s", kvp_status_name(code), substr, kvp_status_name(s),
             kvp_last_error_message());
  if (strstr(kvp_last_error_message(), substr) == NULL)
    fail_msg("message '%s' lacks '%s'", kvp_last_error_message(), substr);
  assert_null(c); /* documented: set to NULL on failure */
}

static void test_cache__create_rejects_bad_configs(void **state) {
  (void)state;
  const kvp_config good = kvp_test_config(2, 2, 128, 8, 3, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  kvp_config c;
  c = good; c.num_pages = -1;          expect_create_error(&c, NULL, KVP_ERR_INVALID_ARGUMENT, "num_pages");
  c = good; c.num_pages = 0;           expect_create_error(&c, NULL, KVP_ERR_INVALID_ARGUMENT, "num_pages");
  c = good; c.num_hidden_layers = 0;   expect_create_error(&c, NULL, KVP_ERR_INVALID_ARGUMENT, "num_hidden_layers");
  c = good; c.v_headdim = 64;          expect_create_error(&c, NULL, KVP_ERR_INVALID_ARGUMENT, "v_headdim");
  c = good; c.page_size = 7;           expect_create_error(&c, NULL, KVP_ERR_INVALID_ARGUMENT, "page_size");
  c = good; c.kvdtype = 99u;           expect_create_error(&c, NULL, KVP_ERR_NOT_FOUND, "99");
  c = good; c.kvdtype = KVP_DTYPE_F64; expect_create_error(&c, NULL, KVP_ERR_UNSUPPORTED, "fp64");
  c = good; c.version = 4u;            expect_create_error(&c, NULL, KVP_ERR_NOT_FOUND, "version");
  c = good; c.abi_version = 0;         expect_create_error(&c, NULL, KVP_ERR_VERSION_MISMATCH, "abi_version");
  c = good; c.struct_size = 8;         expect_create_error(&c, NULL, KVP_ERR_VERSION_MISMATCH, "struct_size");
  expect_create_error(NULL, NULL, KVP_ERR_INVALID_ARGUMENT, "");
  assert_kvp_status(kvp_cache_create(&good, NULL, NULL), KVP_ERR_INVALID_ARGUMENT, "");
}

static void test_cache__create_rejects_bad_device_fields(void **state) {
  (void)state;
  const kvp_config good = kvp_test_config(1, 2, 128, 8, 3, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  kvp_cache_options o = KVP_CACHE_OPTIONS_INIT;
  o.device_type = 99;
  expect_create_error(&good, &o, KVP_ERR_INVALID_ARGUMENT, "99");
  o = (kvp_cache_options)KVP_CACHE_OPTIONS_INIT;
  o.device_type = KVP_DEVICE_CPU;
  o.device_id = 1; /* must be 0 for the CPU */
  expect_create_error(&good, &o, KVP_ERR_INVALID_ARGUMENT, "device_id");
#if !KVP_HAS_CUDA
  o = (kvp_cache_options)KVP_CACHE_OPTIONS_INIT;
  o.device_type = KVP_DEVICE_CUDA;
  expect_create_error(&good, &o, KVP_ERR_NO_DEVICE, "");
#endif
  o = (kvp_cache_options)KVP_CACHE_OPTIONS_INIT;
  o.device_type = KVP_DEVICE_CUDA;
  o.device_id = 1000;
  expect_create_error(&good, &o, KVP_ERR_NO_DEVICE, "");
  kvp_host_allocator half = {NULL, NULL, NULL};
  o = (kvp_cache_options)KVP_CACHE_OPTIONS_INIT;
  o.allocator = &half; /* an allocator without callbacks */
  expect_create_error(&good, &o, KVP_ERR_INVALID_ARGUMENT, "alloc");
}

/* ---- huge pages and prefault (kvp_cache_options::flags, since 1.2) ---------------------------- */

/* The bracketed mode of /sys/kernel/mm/transparent_hugepage/enabled ("always", "madvise",
 * "never"), or "" where the file is missing (no THP in the kernel). */
static void thp_mode(char *out, size_t cap) {
  out[0] = '\0';
  FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
  if (!f) return;
  char line[256];
  if (fgets(line, sizeof line, f)) {
    const char *a = strchr(line, '['), *b = a ? strchr(a, ']') : NULL;
    if (a && b && (size_t)(b - a - 1) < cap) {
      memcpy(out, a + 1, (size_t)(b - a - 1));
      out[b - a - 1] = '\0';
    }
  }
  fclose(f);
}

/* The kB value of `key` ("Rss", "AnonHugePages") of the mapping of /proc/self/smaps that contains
 * p, or -1 when there is none (or no smaps). */
static long smaps_kb(const void *p, const char *key) {
  FILE *f = fopen("/proc/self/smaps", "r");
  if (!f) return -1;
  char line[512];
  int inside = 0;
  long v = -1;
  const size_t klen = strlen(key);
  while (fgets(line, sizeof line, f)) {
    unsigned long lo, hi;
    char dash;
    /* a mapping's header line: "lo-hi perms offset dev inode path" (field lines are "Key: n kB") */
    if (sscanf(line, "%lx%c%lx ", &lo, &dash, &hi) == 3 && dash == '-') {
      inside = (uintptr_t)p >= lo && (uintptr_t)p < hi;
      continue;
    }
    if (inside && strncmp(line, key, klen) == 0 && line[klen] == ':') {
      v = strtol(line + klen + 1, NULL, 10);
      break;
    }
  }
  fclose(f);
  return v;
}

/* 2 layers x 64 pages x 16 rows x 16 combined (8 K + 8 V heads) x 128 lanes x 4 B = 2 x 8 MiB. */
static kvp_config huge_test_config(void) { return kvp_test_config(2, 8, 128, 16, 64, KVP_DTYPE_F32, KVP_LAYOUT_V3); }

static kvp_cache *make_cache_flags(const kvp_config *cfg, uint32_t flags) {
  kvp_cache_options o = KVP_CACHE_OPTIONS_INIT;
  o.flags = flags;
  return make_cache(cfg, &o);
}

static int64_t layer_bytes_of(const kvp_cache *c) {
  kvp_layout_info li;
  memset(&li, 0, sizeof li);
  li.struct_size = sizeof li;
  assert_kvp_ok(kvp_cache_get_layout(c, &li));
  return li.layer_bytes;
}

/* Every flag combination gives a zeroed cache that holds what is written (the same bytes). */
static void test_cache__flags_give_identical_zeroed_caches(void **state) {
  (void)state;
  const kvp_config cfg = huge_test_config();
  static const uint32_t flags[] = {0, KVP_CACHE_FLAG_NO_HUGE_PAGES, KVP_CACHE_FLAG_PREFAULT,
                                   KVP_CACHE_FLAG_NO_HUGE_PAGES | KVP_CACHE_FLAG_PREFAULT};
  kvp_cache *ref = make_cache_flags(&cfg, 0);
  const int64_t lb = layer_bytes_of(ref);
  assert_true(lb >= (2 << 20));
  unsigned char *pattern = malloc((size_t)lb), *back = malloc((size_t)lb), *zero = calloc(1, (size_t)lb);
  assert_non_null(pattern);
  assert_non_null(back);
  assert_non_null(zero);
  for (int64_t i = 0; i < lb; i++) pattern[i] = (unsigned char)(i * 131 + (i >> 12));
  for (size_t k = 0; k < sizeof flags / sizeof flags[0]; k++) {
    kvp_cache *c = make_cache_flags(&cfg, flags[k]);
    assert_int_equal(layer_bytes_of(c), lb);
    for (uint32_t l = 0; l < 2; l++) {
      kvp_tensor t;
      assert_kvp_ok(kvp_cache_get_view(c, l, KVP_VIEW_PAGES, &t));
      if (memcmp(t.data, zero, (size_t)lb) != 0) fail_msg("flags 0x%x: layer %u is not zeroed", flags[k], l);
      assert_kvp_ok(kvp_cache_write_layer(c, l, pattern, (size_t)lb, NULL));
      assert_kvp_ok(kvp_cache_read_layer(c, l, back, (size_t)lb, NULL));
      assert_memory_equal(back, pattern, (size_t)lb);
    }
    assert_kvp_ok(kvp_cache_destroy(c));
  }
  assert_kvp_ok(kvp_cache_destroy(ref));
  free(pattern);
  free(back);
  free(zero);
}

/* By default a large buffer is advised for huge pages and gets them once touched, where the
 * kernel's THP mode lets advice count; with KVP_CACHE_FLAG_NO_HUGE_PAGES it never does. */
static void test_cache__large_buffers_get_huge_pages_unless_turned_off(void **state) {
  (void)state;
  char mode[32];
  thp_mode(mode, sizeof mode);
  const kvp_config cfg = huge_test_config();
  kvp_cache *on = make_cache_flags(&cfg, 0);
  kvp_cache *off = make_cache_flags(&cfg, KVP_CACHE_FLAG_NO_HUGE_PAGES);
  const int64_t lb = layer_bytes_of(on);
  kvp_tensor ton, toff;
  assert_kvp_ok(kvp_cache_get_view(on, 0, KVP_VIEW_PAGES, &ton));
  assert_kvp_ok(kvp_cache_get_view(off, 0, KVP_VIEW_PAGES, &toff));
  assert_int_equal((uintptr_t)ton.data % (2u << 20), 0); /* 2 MiB-aligned so a huge page can back it */
  memset(ton.data, 0x11, (size_t)lb);
  memset(toff.data, 0x22, (size_t)lb);
  const long huge_on = smaps_kb(ton.data, "AnonHugePages"), huge_off = smaps_kb(toff.data, "AnonHugePages");
  if (huge_on < 0 || huge_off < 0) {
    print_message("no AnonHugePages in /proc/self/smaps (THP mode '%s'): huge page checks skipped\n", mode);
  } else {
    assert_int_equal(huge_off, 0);
    if (strcmp(mode, "always") == 0 || strcmp(mode, "madvise") == 0) {
      if (huge_on == 0) fail_msg("THP mode '%s' but the advised %lld-byte buffer has no huge page", mode, (long long)lb);
    } else {
      print_message("THP mode is '%s' (not always/madvise): not asserting huge pages (got %ld kB)\n",
                    mode[0] ? mode : "absent", huge_on);
    }
  }
  assert_kvp_ok(kvp_cache_destroy(on));
  assert_kvp_ok(kvp_cache_destroy(off));
}

/* Layers under 2 MiB in a cache of 2 MiB or more: they share the cache's one mapping, so they get
 * huge pages too (8 x 1 MiB: 4 faults to fill, not 2048); each layer is its own zeroed buffer
 * (a write of one whole layer changes no other) with either flag. */
static void test_cache__small_layers_share_huge_pages(void **state) {
  (void)state;
  char mode[32];
  thp_mode(mode, sizeof mode);
  /* 8 layers x 8 pages x 16 rows x 16 combined x 128 lanes x 4 B = 8 x 1 MiB */
  const kvp_config cfg = kvp_test_config(8, 8, 128, 16, 8, KVP_DTYPE_F32, KVP_LAYOUT_V3);
  for (int k = 0; k < 2; k++) {
    const uint32_t flags = k ? KVP_CACHE_FLAG_NO_HUGE_PAGES : 0;
    kvp_cache *c = make_cache_flags(&cfg, flags);
    const int64_t lb = layer_bytes_of(c);
    assert_int_equal(lb, 1 << 20);
    unsigned char *zero = calloc(1, (size_t)lb), *fill = malloc((size_t)lb);
    assert_non_null(zero);
    assert_non_null(fill);
    unsigned char *data[8];
    for (uint32_t l = 0; l < 8; l++) {
      kvp_tensor t;
      assert_kvp_ok(kvp_cache_get_view(c, l, KVP_VIEW_PAGES, &t));
      data[l] = (unsigned char *)t.data;
      assert_int_equal((uintptr_t)data[l] % 64, 0);
      if (memcmp(data[l], zero, (size_t)lb) != 0) fail_msg("flags 0x%x: layer %u is not zeroed", flags, l);
    }
    for (uint32_t l = 0; l < 8; l++) {
      memset(fill, (int)(0x10 + l), (size_t)lb);
      assert_kvp_ok(kvp_cache_write_layer(c, l, fill, (size_t)lb, NULL));
    }
    for (uint32_t l = 0; l < 8; l++) {
      memset(fill, (int)(0x10 + l), (size_t)lb);
      if (memcmp(data[l], fill, (size_t)lb) != 0) fail_msg("flags 0x%x: layer %u was overwritten", flags, l);
    }
    const long huge = smaps_kb(data[0], "AnonHugePages");
    if (huge < 0) {
      print_message("no AnonHugePages in /proc/self/smaps (THP mode '%s'): huge page check skipped\n", mode);
    } else if (flags) {
      assert_int_equal(huge, 0);
    } else if (strcmp(mode, "always") == 0 || strcmp(mode, "madvise") == 0) {
      if (huge == 0) fail_msg("THP mode '%s' but 8 layers of 1 MiB got no huge page", mode);
    }
    free(zero);
    free(fill);
    assert_kvp_ok(kvp_cache_destroy(c));
  }
}

/* KVP_CACHE_FLAG_PREFAULT: the buffers are resident when create returns (without it they are not).
 * One cache at a time: the kernel merges adjacent mappings of the same kind into one entry. */
static void test_cache__prefault_makes_buffers_resident(void **state) {
  (void)state;
  const kvp_config cfg = huge_test_config();
  for (int k = 0; k < 4; k++) {
    const uint32_t flags = (k & 1 ? KVP_CACHE_FLAG_NO_HUGE_PAGES : 0) | (k & 2 ? KVP_CACHE_FLAG_PREFAULT : 0);
    kvp_cache *c = make_cache_flags(&cfg, flags);
    const int64_t lb = layer_bytes_of(c);
    for (uint32_t l = 0; l < 2; l++) {
      kvp_tensor t;
      assert_kvp_ok(kvp_cache_get_view(c, l, KVP_VIEW_PAGES, &t));
      const long rss = smaps_kb(t.data, "Rss");
      if (rss < 0) {
        print_message("no Rss in /proc/self/smaps: residency not checked\n");
        continue;
      }
      /* the mapping may have merged with the other layer's: it holds at least this layer */
      if ((flags & KVP_CACHE_FLAG_PREFAULT) && rss < lb / 1024)
        fail_msg("flags 0x%x: prefaulted layer %u has Rss %ld kB < %lld kB", flags, l, rss, (long long)lb / 1024);
      if (!(flags & KVP_CACHE_FLAG_PREFAULT) && rss >= lb / 1024)
        fail_msg("flags 0x%x: untouched layer %u is already resident (%ld kB)", flags, l, rss);
    }
    assert_kvp_ok(kvp_cache_destroy(c));
  }
}

/* Unknown flag bits or a non-zero _reserved: KVP_ERR_UNSUPPORTED with a message, nothing created. */
static void test_cache__bad_flags_are_unsupported(void **state) {
  (void)state;
  const kvp_config cfg = huge_test_config();
  kvp_cache_options o = KVP_CACHE_OPTIONS_INIT;
  const long before = rss_kib();
  o.flags = 1u << 2;
  expect_create_error(&cfg, &o, KVP_ERR_UNSUPPORTED, "flags");
  o.flags = 0x80000000u | KVP_CACHE_FLAG_PREFAULT;
  expect_create_error(&cfg, &o, KVP_ERR_UNSUPPORTED, "flags");
  o.flags = KVP_CACHE_FLAG_PREFAULT;
  o._reserved = 1;
  expect_create_error(&cfg, &o, KVP_ERR_UNSUPPORTED, "_reserved");
  /* a refused PREFAULT faulted nothing in (16 MiB would show) */
  if (before >= 0 && rss_kib() - before > 8 * 1024) fail_msg("a refused create grew RSS by %ld KiB", rss_kib() - before);
}

/* A caller compiled against version 1 (1.0/1.1: no flags, struct_size 24 on LP64) still works, and
 * nothing past its struct is read: the bytes after it are garbage here and would be bad flags. */
static void test_cache__version_1_options_are_accepted(void **state) {
  (void)state;
  const kvp_config cfg = kvp_test_config(1, 1, 64, 8, 3, KVP_DTYPE_F32, KVP_LAYOUT_V3);
  const size_t v1 = offsetof(kvp_cache_options, flags);
  if (sizeof(void *) == 8) assert_int_equal(v1, 24);
  union {
    kvp_cache_options o;
    unsigned char bytes[sizeof(kvp_cache_options) + 16];
  } u;
  memset(&u, 0xFF, sizeof u); /* flags/_reserved bytes beyond v1: all ones */
  assert_kvp_ok(kvp_cache_options_init(&u.o, (uint32_t)v1));
  assert_int_equal(u.o.struct_size, v1);
  for (size_t i = v1; i < sizeof u; i++) assert_int_equal(u.bytes[i], 0xFF); /* init wrote nothing past v1 */
  kvp_cache *c = make_cache(&cfg, &u.o);
  kvp_tensor t;
  assert_kvp_ok(kvp_cache_get_view(c, 0, KVP_VIEW_PAGES, &t));
  assert_true(((const unsigned char *)t.data)[0] == 0);
  assert_kvp_ok(kvp_cache_destroy(c));
  /* abi_version 1 with the v1 size, as a 1.0 caller's KVP_CACHE_OPTIONS_INIT makes it */
  u.o.abi_version = 1;
  c = make_cache(&cfg, &u.o);
  assert_kvp_ok(kvp_cache_destroy(c));
  /* and through a load (kvp_deserialize_options::cache_options) */
  c = make_cache(&cfg, NULL);
  size_t need = 0;
  assert_kvp_ok(kvp_serialized_size(c, NULL, &need));
  void *blob = malloc(need);
  assert_non_null(blob);
  assert_kvp_ok(kvp_serialize(c, NULL, blob, need, &need));
  kvp_deserialize_options d = KVP_DESERIALIZE_OPTIONS_INIT;
  d.cache_options = &u.o;
  kvp_cache *loaded = NULL;
  assert_kvp_ok(kvp_deserialize_new(blob, need, &d, &loaded));
  assert_kvp_ok(kvp_cache_destroy(loaded));
  /* the same load with bad flags in a v2 struct is refused before anything is made */
  kvp_cache_options bad = KVP_CACHE_OPTIONS_INIT;
  bad.flags = 1u << 7;
  d.cache_options = &bad;
  loaded = (kvp_cache *)(uintptr_t)0x1;
  assert_kvp_status(kvp_deserialize_new(blob, need, &d, &loaded), KVP_ERR_UNSUPPORTED, "flags");
  assert_null(loaded);
  /* PREFAULT through a load: same bytes */
  kvp_cache_options pre = KVP_CACHE_OPTIONS_INIT;
  pre.flags = KVP_CACHE_FLAG_PREFAULT;
  d.cache_options = &pre;
  assert_kvp_ok(kvp_deserialize_new(blob, need, &d, &loaded));
  size_t need2 = 0;
  assert_kvp_ok(kvp_serialized_size(loaded, NULL, &need2));
  assert_int_equal(need2, need);
  void *blob2 = malloc(need2);
  assert_non_null(blob2);
  assert_kvp_ok(kvp_serialize(loaded, NULL, blob2, need2, &need2));
  assert_memory_equal(blob, blob2, need);
  free(blob2);
  assert_kvp_ok(kvp_cache_destroy(loaded));
  free(blob);
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void test_cache__options_init_errors(void **state) {
  (void)state;
  kvp_cache_options o, ob;
  memset(&o, FILL, sizeof o);
  ob = o;
  assert_kvp_status(kvp_cache_options_init(&o, 4), KVP_ERR_VERSION_MISMATCH, "struct_size");
  assert_memory_equal(&o, &ob, sizeof o);
  assert_kvp_status(kvp_cache_options_init(NULL, sizeof o), KVP_ERR_INVALID_ARGUMENT, "");
}

/* Several caches live at once and are independent. */
static void test_cache__independent_caches(void **state) {
  (void)state;
  kvp_config cfg = kvp_test_config(1, 1, 128, 8, 2, KVP_DTYPE_F32, KVP_LAYOUT_V2);
  kvp_cache *a = make_cache(&cfg, NULL);
  kvp_cache *b = make_cache(&cfg, NULL);
  kvp_tensor ta, tb;
  assert_kvp_ok(kvp_cache_get_view(a, 0, KVP_VIEW_PAGES, &ta));
  assert_kvp_ok(kvp_cache_get_view(b, 0, KVP_VIEW_PAGES, &tb));
  assert_true(ta.data != tb.data);
  float one = 1.0f;
  memcpy(ta.data, &one, sizeof one);
  float got = -1.0f;
  memcpy(&got, tb.data, sizeof got);
  assert_true(got == 0.0f);
  assert_kvp_ok(kvp_cache_destroy(a));
  assert_kvp_ok(kvp_cache_get_view(b, 0, KVP_VIEW_PAGES, &tb));
  assert_kvp_ok(kvp_cache_destroy(b));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cache__create_destroy_defaults),
      cmocka_unit_test(test_cache__explicit_options),
      cmocka_unit_test(test_cache__get_config_round_trip),
      cmocka_unit_test(test_cache__new_cache_is_zero_for_every_layer),
      cmocka_unit_test(test_cache__custom_allocator_is_used_and_zero_filled),
      cmocka_unit_test(test_cache__large_buffers_are_not_committed_at_creation),
      cmocka_unit_test(test_cache__views_of_every_layer_and_kind),
      cmocka_unit_test(test_cache__view_argument_errors_leave_output_unchanged),
      cmocka_unit_test(test_cache__query_argument_errors),
      cmocka_unit_test(test_cache__cpu_cache_has_no_async_error),
      cmocka_unit_test(test_cache__create_rejects_bad_configs),
      cmocka_unit_test(test_cache__create_rejects_bad_device_fields),
      cmocka_unit_test(test_cache__options_init_errors),
      cmocka_unit_test(test_cache__independent_caches),
      cmocka_unit_test(test_cache__flags_give_identical_zeroed_caches),
      cmocka_unit_test(test_cache__large_buffers_get_huge_pages_unless_turned_off),
      cmocka_unit_test(test_cache__prefault_makes_buffers_resident),
      cmocka_unit_test(test_cache__small_layers_share_huge_pages),
      cmocka_unit_test(test_cache__bad_flags_are_unsupported),
      cmocka_unit_test(test_cache__version_1_options_are_accepted),
  };
  return cmocka_run_group_tests_name("cache", tests, NULL, NULL);
}
