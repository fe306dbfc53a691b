/* Out of memory below the library: malloc-family calls (and so operator new, and whatever libgomp,
 * libstdc++ or glibc allocate on the library's behalf) fail through the LD_PRELOAD shim
 * fail_malloc.c (ctest sets LD_PRELOAD). Each scenario runs one call with allocation N failing,
 * N = 0, 1, 2, ... until the call succeeds having made no more than N attempts, twice: once with
 * only allocation N failing (the call's cleanup may allocate again) and once with N and every
 * later one failing. Every failing N must return a status (KVP_ERR_OUT_OF_MEMORY; see
 * accepted_oom_status), never abort or exit; if the process dies, a signal/exit handler names
 * the scenario and N. test_oom_shim__cold_parallel_serialize runs alone in a fresh process (its
 * own ctest entry): the first parallel serialize of a process creates the worker threads. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fail_malloc.h"
#include "support.h"

#define LAYERS 2
#define HEADS 2
#define HDIM 64
#define PAGE 16
#define PAGES 24 /* 384 KiB: serialization of the whole cache takes the parallel path */
#define MAX_POINTS 20000

static const char *volatile g_scenario;
static volatile long g_point = -1;
static volatile int g_only_one;

static void report_death(void) {
  if (g_point < 0) return;
  char line[256];
  const int n = snprintf(line, sizeof line, "test_oom_shim: died in scenario '%s' with allocation %ld %s failing\n",
                         g_scenario, g_point, g_only_one ? "(only)" : "and every later one");
  if (n > 0) (void)!write(2, line, (size_t)n);
}

static void on_signal(int sig) {
  report_death();
  signal(sig, SIG_DFL);
  raise(sig);
}

static int group_setup(void **state) {
  (void)state;
  if (!kvp_test_fail_malloc_available()) {
    fprintf(stderr, "test_oom_shim: run with LD_PRELOAD=libkvp_oom_shim.so (ctest does)\n");
    return -1;
  }
  atexit(report_death);
  signal(SIGABRT, on_signal);
  signal(SIGSEGV, on_signal);
  return 0;
}

/* A scenario: a call on prepared state, and what to release after a success. */
typedef struct scenario {
  const char *name;
  kvp_status (*call)(void *ctx);
  void (*release)(void *ctx); /* after a success; may be NULL */
  void *ctx;
} scenario;

/* Statuses an allocation failure may produce. */
static int accepted_oom_status(kvp_status st) { return st == KVP_ERR_OUT_OF_MEMORY; }

/* Returns the number of failing points the scenario went through in one mode. */
static long sweep_mode(const scenario *s, int only_one) {
  g_scenario = s->name;
  g_only_one = only_one;
  for (long n = 0; n < MAX_POINTS; ++n) {
    g_point = n;
    kvp_test_fail_malloc_arm(n, only_one);
    const kvp_status st = s->call(s->ctx);
    const long attempts = kvp_test_fail_malloc_disarm();
    g_point = -1;
    if (st == KVP_OK) {
      if (s->release) s->release(s->ctx);
      if (attempts <= n) {
        printf("oom-shim: %s: %ld failing allocation points (%s)\n", s->name, n, only_one ? "one" : "from N on");
        return n;
      }
      continue; /* an allocation failed and the call recovered (fewer threads, a fallback) */
    }
    if (!accepted_oom_status(st))
      fail_msg("%s with allocation %ld failing%s: %s (%s)", s->name, n, only_one ? "" : " (and later ones)",
               kvp_status_name(st), kvp_last_error_message());
  }
  fail_msg("%s: still allocating after %d points", s->name, MAX_POINTS);
  return -1;
}

static void sweep(const scenario *s) {
  sweep_mode(s, 0);
  sweep_mode(s, 1);
}

/* ---- shared state ------------------------------------------------------------------------ */

typedef struct world {
  kvp_config cfg;
  kvp_cache *cache, *made;
  kvp_pool *pool;
  kvp_metadata *md;
  uint8_t *blob_whole, *blob_small, *buf;
  size_t whole_len, small_len;
  char path[64], json[4096];
  size_t json_len;
  uint16_t *kv;
  int32_t tokens[64];
  int32_t sm[3 * 40], nv[1];
} world;

static world g;

static uint8_t *serialize_pages(const int32_t *ids, uint32_t n, size_t *len) {
  kvp_serialize_options o = KVP_SERIALIZE_OPTIONS_INIT;
  o.page_ids = ids;
  o.num_page_ids = n;
  size_t written = 0;
  assert_kvp_ok(kvp_serialized_size(g.cache, &o, len));
  uint8_t *b = (uint8_t *)malloc(*len);
  assert_non_null(b);
  assert_kvp_ok(kvp_serialize(g.cache, &o, b, *len, &written));
  return b;
}

static int world_setup(void **state) {
  (void)state;
  static const int32_t small[2] = {3, 7};
  memset(&g, 0, sizeof g);
  g.cfg = kvp_test_config(LAYERS, HEADS, HDIM, PAGE, PAGES, KVP_DTYPE_BF16, KVP_LAYOUT_V2);
  assert_kvp_ok(kvp_cache_create(&g.cfg, NULL, &g.cache));
  g.blob_whole = serialize_pages(NULL, 0, &g.whole_len);
  g.blob_small = serialize_pages(small, 2, &g.small_len);
  assert_true(g.whole_len >= 256 * 1024);
  g.buf = (uint8_t *)malloc(g.whole_len);
  snprintf(g.path, sizeof g.path, "/tmp/kvp_test_oom_shim_%d.kvps", (int)getpid());
  FILE *f = fopen(g.path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(g.blob_whole, 1, g.whole_len, f), g.whole_len);
  fclose(f);
  for (int i = 0; i < 64; ++i) g.tokens[i] = 500 + i;
  return 0;
}

static int world_teardown(void **state) {
  (void)state;
  if (g.pool) assert_kvp_ok(kvp_pool_destroy(g.pool));
  assert_kvp_ok(kvp_cache_destroy(g.cache));
  unlink(g.path);
  free(g.blob_whole);
  free(g.blob_small);
  free(g.buf);
  free(g.kv);
  return 0;
}

/* ---- calls ------------------------------------------------------------------------------- */

static void destroy_made(void *ctx) {
  (void)ctx;
  assert_kvp_ok(kvp_cache_destroy(g.made));
  g.made = NULL;
}

static void destroy_md(void *ctx) {
  (void)ctx;
  assert_kvp_ok(kvp_metadata_destroy(g.md));
  g.md = NULL;
}

static kvp_status call_cache_create(void *ctx) {
  (void)ctx;
  return kvp_cache_create(&g.cfg, NULL, &g.made);
}

static kvp_status call_serialize(void *ctx) {
  static const int32_t one[1] = {5};
  kvp_serialize_options o = KVP_SERIALIZE_OPTIONS_INIT;
  size_t w = 0;
  if (ctx == NULL) o.page_ids = one, o.num_page_ids = 1;
  return kvp_serialize(g.cache, &o, g.buf, g.whole_len, &w);
}

static kvp_status call_serialize_to_file(void *ctx) {
  (void)ctx;
  char p[80];
  snprintf(p, sizeof p, "%s.out", g.path);
  const kvp_status st = kvp_serialize_to_file(g.cache, NULL, p);
  unlink(p);
  return st;
}

static kvp_status call_deserialize_new(void *ctx) {
  return ctx ? kvp_deserialize_new(g.blob_whole, g.whole_len, NULL, &g.made)
             : kvp_deserialize_new(g.blob_small, g.small_len, NULL, &g.made);
}

static kvp_status call_deserialize_new_from_file(void *ctx) {
  (void)ctx;
  return kvp_deserialize_new_from_file(g.path, NULL, &g.made);
}

static kvp_status call_deserialize_into(void *ctx) {
  static const int32_t to[2] = {10, 11};
  return ctx ? kvp_deserialize_into(g.cache, g.blob_whole, g.whole_len, NULL, 0)
             : kvp_deserialize_into(g.cache, g.blob_small, g.small_len, to, 2);
}

static kvp_status call_deserialize_into_from_file(void *ctx) {
  (void)ctx;
  return kvp_deserialize_into_from_file(g.cache, g.path, NULL, 0);
}

static kvp_status call_metadata_build(void *ctx) {
  (void)ctx;
  static const int32_t pa[2] = {1, 2}, pb[1] = {3};
  kvp_batch_request r[2] = {{20, 1, pa, 2}, {0, 9, pb, 1}};
  int32_t order[2];
  return kvp_metadata_build(&g.cfg, r, 2, NULL, order, &g.md);
}

static kvp_status call_pool_create_and_add(void *ctx) {
  (void)ctx;
  kvp_pool *p = NULL;
  kvp_seq_id s;
  kvp_status st = kvp_pool_create(g.cache, NULL, &p);
  if (st != KVP_OK) return st;
  st = kvp_pool_add_sequence(p, g.tokens, 40, 0, 0, &s, NULL);
  if (st == KVP_OK) st = kvp_pool_set_computed(p, s, 40);
  if (st == KVP_OK) st = kvp_pool_append(p, s, g.tokens, 8, NULL);
  if (st == KVP_OK) st = kvp_pool_check_invariants(p);
  const kvp_status d = kvp_pool_destroy(p);
  return st != KVP_OK ? st : d;
}

/* A 40-token sequence saved to a buffer and to a file and restored from both (since 1.5). */
static kvp_status call_pool_save_and_restore(void *ctx) {
  (void)ctx;
  kvp_pool *p = NULL;
  kvp_seq_id s, r;
  size_t size = 0;
  char path[80];
  snprintf(path, sizeof path, "%s.seq", g.path);
  kvp_status st = kvp_pool_create(g.cache, NULL, &p);
  if (st != KVP_OK) return st;
  st = kvp_pool_add_sequence(p, g.tokens, 40, 0, 0, &s, NULL);
  if (st == KVP_OK) st = kvp_pool_set_computed(p, s, 40);
  if (st == KVP_OK) st = kvp_pool_save_sequence(p, s, g.buf, g.whole_len, &size);
  if (st == KVP_OK) st = kvp_pool_restore_sequence(p, g.buf, size, 0, &r);
  if (st == KVP_OK) st = kvp_pool_save_sequence_to_file(p, s, path, KVP_POOL_SAVE_FLAG_NO_SYNC);
  if (st == KVP_OK) st = kvp_pool_restore_sequence_from_file(p, path, 0, &r);
  if (st == KVP_OK) st = kvp_pool_check_invariants(p);
  unlink(path);
  const kvp_status d = kvp_pool_destroy(p);
  return st != KVP_OK ? st : d;
}

static kvp_status call_config_json(void *ctx) {
  (void)ctx;
  kvp_config back = KVP_CONFIG_INIT;
  size_t len = 0;
  kvp_status st = kvp_config_to_json(&g.cfg, g.json, sizeof g.json, &len);
  return st != KVP_OK ? st : kvp_config_from_json(g.json, len, &back);
}

static kvp_status call_metadata_json(void *ctx) {
  (void)ctx;
  static const char md_json[] =
      "{\"pages_tables\": [[1, 2, 0], [3, 0, 0]], \"context_lens\": [21, 9], \"query_start_loc\": [0, 1, 10], "
      "\"num_seqs\": [2], \"version\": \"v3\", \"page_size\": 16, \"other\": {\"x\": [[1], \"a long string\"]}}";
  kvp_metadata *m = NULL;
  size_t len = 0;
  kvp_status st = kvp_metadata_from_json(md_json, strlen(md_json), &m);
  if (st != KVP_OK) return st;
  st = kvp_metadata_to_json(m, g.json, sizeof g.json, &len);
  const kvp_status d = kvp_metadata_destroy(m);
  return st != KVP_OK ? st : d;
}

/* 40 slices of 9 tokens each (360 tokens: split over the worker threads). */
static kvp_status call_concatenate(void *ctx) {
  (void)ctx;
  enum { T = 360 };
  if (g.kv == NULL) {
    g.kv = (uint16_t *)calloc((size_t)T * HEADS * HDIM, sizeof(uint16_t));
    for (int j = 0; j < 40; ++j) g.sm[j] = 9 * j, g.sm[40 + j] = 9 * j, g.sm[80 + j] = 9;
    g.nv[0] = 40;
  }
  kvp_metadata *md = NULL;
  kvp_metadata_desc d;
  assert_kvp_ok(kvp_metadata_desc_init(&d, sizeof d));
  d.version = KVP_LAYOUT_V2;
  d.slot_mapping = g.sm;
  d.num_slices = 40;
  d.num_kv_update_slices = g.nv;
  d.num_kv_update_slices_len = 1;
  kvp_status st = kvp_metadata_create(&d, &md);
  if (st != KVP_OK) return st;
  const kvp_tensor t = kvp_test_tensor(g.kv, KVP_DTYPE_BF16, T, HEADS, HDIM, KVP_DEVICE_CPU);
  st = kvp_concatenate(g.cache, 1, &t, &t, md, NULL);
  const kvp_status dd = kvp_metadata_destroy(md);
  return st != KVP_OK ? st : dd;
}

/* ---- tests ------------------------------------------------------------------------------- */

static void *const WHOLE = (void *)1;

static void test_oom_shim__create_and_metadata(void **state) {
  (void)state;
  const scenario s[] = {
      {"kvp_cache_create", call_cache_create, destroy_made, NULL},
      {"kvp_metadata_build", call_metadata_build, destroy_md, NULL},
      {"kvp_pool create, add, set_computed, append, check", call_pool_create_and_add, NULL, NULL},
      {"kvp_pool save and restore a sequence (buffer, file)", call_pool_save_and_restore, NULL, NULL},
  };
  for (size_t i = 0; i < sizeof s / sizeof s[0]; ++i) sweep(&s[i]);
}

static void test_oom_shim__serialize(void **state) {
  (void)state;
  const scenario s[] = {
      {"kvp_serialize one page", call_serialize, NULL, NULL},
      {"kvp_serialize >= 256 KiB", call_serialize, NULL, WHOLE},
      {"kvp_serialize_to_file", call_serialize_to_file, NULL, NULL},
  };
  for (size_t i = 0; i < sizeof s / sizeof s[0]; ++i) sweep(&s[i]);
}

static void test_oom_shim__deserialize(void **state) {
  (void)state;
  const scenario s[] = {
      {"kvp_deserialize_new small", call_deserialize_new, destroy_made, NULL},
      {"kvp_deserialize_new >= 256 KiB", call_deserialize_new, destroy_made, WHOLE},
      {"kvp_deserialize_new_from_file", call_deserialize_new_from_file, destroy_made, NULL},
      {"kvp_deserialize_into small", call_deserialize_into, NULL, NULL},
      {"kvp_deserialize_into >= 256 KiB", call_deserialize_into, NULL, WHOLE},
      {"kvp_deserialize_into_from_file", call_deserialize_into_from_file, NULL, NULL},
  };
  for (size_t i = 0; i < sizeof s / sizeof s[0]; ++i) sweep(&s[i]);
}

static void test_oom_shim__json_and_concatenate(void **state) {
  (void)state;
  const scenario s[] = {
      {"kvp_config_to_json + kvp_config_from_json", call_config_json, NULL, NULL},
      {"kvp_metadata_from_json + kvp_metadata_to_json", call_metadata_json, NULL, NULL},
      {"kvp_concatenate 360 tokens", call_concatenate, NULL, NULL},
  };
  for (size_t i = 0; i < sizeof s / sizeof s[0]; ++i) sweep(&s[i]);
}

/* Alone in its process: the first parallel serialize, which starts the worker threads, with
 * every allocation point failing in turn (thread creation included). */
static void test_oom_shim__cold_parallel_serialize(void **state) {
  (void)state;
  const scenario s = {"kvp_serialize >= 256 KiB, first parallel call", call_serialize, NULL, WHOLE};
  sweep(&s);
}

static int cold_setup(void **state) {
  (void)state;
  memset(&g, 0, sizeof g);
  g.cfg = kvp_test_config(LAYERS, HEADS, HDIM, PAGE, PAGES, KVP_DTYPE_BF16, KVP_LAYOUT_V2);
  assert_kvp_ok(kvp_cache_create(&g.cfg, NULL, &g.cache));
  assert_kvp_ok(kvp_serialized_size(g.cache, NULL, &g.whole_len));
  g.buf = (uint8_t *)malloc(g.whole_len);
  return 0;
}

static int cold_teardown(void **state) {
  (void)state;
  assert_kvp_ok(kvp_cache_destroy(g.cache));
  free(g.buf);
  return 0;
}

/* argv[1]: run only the tests matching this cmocka filter (ctest runs the cold test alone). */
int main(int argc, char **argv) {
  if (argc > 1)
    cmocka_set_test_filter(argv[1]);
  else
    cmocka_set_skip_filter("*cold*");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_oom_shim__create_and_metadata, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_oom_shim__serialize, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_oom_shim__deserialize, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_oom_shim__json_and_concatenate, world_setup, world_teardown),
      cmocka_unit_test_setup_teardown(test_oom_shim__cold_parallel_serialize, cold_setup, cold_teardown),
  };
  return cmocka_run_group_tests_name("oom_shim", tests, group_setup, NULL);
}
