/* The documented concurrent uses (docs/mainpage.md "Threading", pool.h "Thread safety"), run from
 * several threads at once; scripts/test.sh also runs this file under ThreadSanitizer:
 * - writes (kvp_concatenate, both layers) into different caches, while the pool's helpers run;
 * - concurrent read-only serializations of one cache;
 * - const pool calls on one pool, and different pools (each over its own cache) modified at once;
 * - handles created and destroyed on several threads (the handle table), stale ones refused;
 * - the error message is per thread: two threads fail differently and each reads its own.
 * Every result is compared with the same work done on one thread. KVP_NUM_THREADS=4. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "support.h"
#include "workload.h"

enum { kThreads = 4, kTokens = 320, kRounds = 3 };

typedef struct worker {
  int index;
  int failures;
  char why[256];
  void *shared;
} worker;

static pthread_barrier_t g_barrier;

#define WORKER_CHECK(w, cond)                                                                      \
  do {                                                                                              \
    if (!(cond)) {                                                                                  \
      if ((w)->failures++ == 0)                                                                     \
        snprintf((w)->why, sizeof (w)->why, "%s:%d: %s (%s)", __FILE__, __LINE__, #cond, kvp_last_error_message()); \
    }                                                                                               \
  } while (0)

static void run_workers(void *(*fn)(void *), void *shared) {
  pthread_t t[kThreads];
  worker w[kThreads];
  int i;
  assert_int_equal(pthread_barrier_init(&g_barrier, NULL, kThreads), 0);
  for (i = 0; i < kThreads; ++i) {
    memset(&w[i], 0, sizeof w[i]);
    w[i].index = i;
    w[i].shared = shared;
    assert_int_equal(pthread_create(&t[i], NULL, fn, &w[i]), 0);
  }
  for (i = 0; i < kThreads; ++i) pthread_join(t[i], NULL);
  pthread_barrier_destroy(&g_barrier);
  for (i = 0; i < kThreads; ++i)
    if (w[i].failures != 0) fail_msg("thread %d: %d failure(s), first: %s", i, w[i].failures, w[i].why);
}

/* The blob of a workload cache of `seed` with both layers written, made on this thread. */
static unsigned char *reference_blob(uint64_t seed, size_t *len) {
  kvp_test_workload w;
  unsigned char *blob;
  assert_kvp_ok(kvp_test_workload_init(&w, 2, kTokens, seed));
  assert_kvp_ok(kvp_test_workload_write(&w, 0));
  assert_kvp_ok(kvp_test_workload_write(&w, 1));
  assert_kvp_ok(kvp_test_serialize_alloc(w.cache, &blob, len));
  kvp_test_workload_free(&w);
  return blob;
}

typedef struct blobs {
  unsigned char *data[kThreads];
  size_t len[kThreads];
  const kvp_cache *cache; /* for the shared read-only case */
} blobs;

static void *write_own_cache(void *arg) {
  worker *me = (worker *)arg;
  blobs *ref = (blobs *)me->shared;
  int r;
  for (r = 0; r < kRounds; ++r) {
    kvp_test_workload w;
    unsigned char *blob = NULL;
    size_t len = 0;
    WORKER_CHECK(me, kvp_test_workload_init(&w, 2, kTokens, 100 + (uint64_t)me->index) == KVP_OK);
    if (me->failures) return NULL;
    pthread_barrier_wait(&g_barrier);
    WORKER_CHECK(me, kvp_test_workload_write(&w, 0) == KVP_OK);
    WORKER_CHECK(me, kvp_test_workload_write(&w, 1) == KVP_OK);
    WORKER_CHECK(me, kvp_test_serialize_alloc(w.cache, &blob, &len) == KVP_OK);
    WORKER_CHECK(me, len == ref->len[me->index] && memcmp(blob, ref->data[me->index], len) == 0);
    free(blob);
    kvp_test_workload_free(&w);
  }
  return NULL;
}

static void test_threads__concatenate_into_different_caches(void **state) {
  blobs ref;
  int i;
  (void)state;
  for (i = 0; i < kThreads; ++i) ref.data[i] = reference_blob(100 + (uint64_t)i, &ref.len[i]);
  run_workers(write_own_cache, &ref);
  for (i = 0; i < kThreads; ++i) free(ref.data[i]);
}

/* Different layers of one cache, written at once with one fresh metadata per round (owning, then
 * borrowed with KVP_METADATA_FLAG_IMMUTABLE): the first calls race to build and keep its plan.
 * The reference writes each layer on this thread through a handle that validates every call. */
enum { kPlanLayers = 2 * kThreads, kPlanHeads = 2, kPlanDim = 64, kPlanTokens = 7 };

typedef struct plan_shared {
  kvp_cache *cache;
  const kvp_metadata *md;
  uint16_t keys[kPlanLayers][kPlanTokens * kPlanHeads * kPlanDim];
} plan_shared;

/* Two decodes and a prefill of 5 (7 tokens), owning. */
static kvp_metadata *plan_step(const kvp_config *cfg, int round) {
  static int32_t pages[3][2] = {{3, 9}, {4, 12}, {7, 8}};
  kvp_batch_request r[3];
  kvp_metadata *md = NULL;
  int i;
  for (i = 0; i < 3; ++i) {
    r[i].num_computed = i < 2 ? 1 + (round + i) % 6 : 0;
    r[i].num_scheduled = i < 2 ? 1 : 5;
    r[i].page_ids = pages[i];
    r[i].num_pages = 2;
  }
  assert_kvp_ok(kvp_metadata_build(cfg, r, 3, NULL, NULL, &md));
  return md;
}

/* A borrowed handle over `of`'s arrays with `flags`. */
static kvp_metadata *plan_borrow(const kvp_metadata *of, uint32_t flags) {
  kvp_metadata_desc d = KVP_METADATA_DESC_INIT;
  kvp_metadata *b = NULL;
  assert_kvp_ok(kvp_metadata_get_desc(of, &d));
  d.flags = flags;
  assert_kvp_ok(kvp_metadata_create(&d, &b));
  return b;
}

static void *write_shared_layers(void *arg) {
  worker *me = (worker *)arg;
  plan_shared *sh = (plan_shared *)me->shared;
  int l;
  pthread_barrier_wait(&g_barrier);
  for (l = me->index; l < kPlanLayers; l += kThreads) {
    kvp_tensor k = kvp_test_tensor(sh->keys[l], KVP_DTYPE_BF16, kPlanTokens, kPlanHeads, kPlanDim, KVP_DEVICE_CPU);
    WORKER_CHECK(me, kvp_concatenate(sh->cache, (uint32_t)l, &k, &k, sh->md, NULL) == KVP_OK);
  }
  return NULL;
}

static void test_threads__layers_of_one_cache_with_one_metadata(void **state) {
  const kvp_config cfg = kvp_test_config(kPlanLayers, kPlanHeads, kPlanDim, 4, 16, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  plan_shared *sh = (plan_shared *)calloc(1, sizeof *sh);
  kvp_cache *ref = NULL;
  uint64_t rng = 5;
  int round, l;
  size_t i, n;
  unsigned char *a, *b;
  (void)state;
  assert_non_null(sh);
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &sh->cache));
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &ref));
  for (round = 0; round < 2 * kRounds; ++round) {
    kvp_metadata *owner = plan_step(&cfg, round);
    kvp_metadata *kept = round % 2 ? plan_borrow(owner, KVP_METADATA_FLAG_IMMUTABLE) : NULL;
    for (l = 0; l < kPlanLayers; ++l)
      for (i = 0; i < sizeof sh->keys[l] / 2; ++i)
        sh->keys[l][i] = (uint16_t)(0x3c00 + kvp_test_rand_range(&rng, 0, 0x7ff));
    sh->md = kept != NULL ? kept : owner;
    run_workers(write_shared_layers, sh);
    for (l = 0; l < kPlanLayers; ++l) {
      kvp_metadata *fresh = plan_borrow(owner, 0);
      kvp_tensor k = kvp_test_tensor(sh->keys[l], KVP_DTYPE_BF16, kPlanTokens, kPlanHeads, kPlanDim, KVP_DEVICE_CPU);
      assert_kvp_ok(kvp_concatenate(ref, (uint32_t)l, &k, &k, fresh, NULL));
      assert_kvp_ok(kvp_metadata_destroy(fresh));
    }
    assert_kvp_ok(kvp_metadata_destroy(kept));
    assert_kvp_ok(kvp_metadata_destroy(owner));
  }
  n = kvp_test_layer_bytes(ref);
  a = (unsigned char *)malloc(n);
  b = (unsigned char *)malloc(n);
  assert_non_null(a);
  assert_non_null(b);
  for (l = 0; l < kPlanLayers; ++l) {
    assert_kvp_ok(kvp_cache_read_layer(sh->cache, (uint32_t)l, a, n, NULL));
    assert_kvp_ok(kvp_cache_read_layer(ref, (uint32_t)l, b, n, NULL));
    if (memcmp(a, b, n) != 0) fail_msg("layer %d differs from the one-thread reference", l);
  }
  free(a);
  free(b);
  assert_kvp_ok(kvp_cache_destroy(ref));
  assert_kvp_ok(kvp_cache_destroy(sh->cache));
  free(sh);
}

static void *serialize_shared_cache(void *arg) {
  worker *me = (worker *)arg;
  blobs *ref = (blobs *)me->shared;
  int r;
  pthread_barrier_wait(&g_barrier);
  for (r = 0; r < kRounds; ++r) {
    unsigned char *blob = NULL;
    size_t len = 0;
    kvp_config cfg = KVP_CONFIG_INIT;
    WORKER_CHECK(me, kvp_test_serialize_alloc(ref->cache, &blob, &len) == KVP_OK);
    WORKER_CHECK(me, len == ref->len[0] && memcmp(blob, ref->data[0], len) == 0);
    WORKER_CHECK(me, kvp_cache_get_config(ref->cache, &cfg) == KVP_OK && cfg.num_hidden_layers == 2);
    free(blob);
  }
  return NULL;
}

static void test_threads__read_only_serialize_of_one_cache(void **state) {
  kvp_test_workload w;
  blobs ref;
  (void)state;
  assert_kvp_ok(kvp_test_workload_init(&w, 2, kTokens, 7));
  assert_kvp_ok(kvp_test_workload_write(&w, 0));
  assert_kvp_ok(kvp_test_workload_write(&w, 1));
  assert_kvp_ok(kvp_test_serialize_alloc(w.cache, &ref.data[0], &ref.len[0]));
  assert_true(ref.len[0] >= 256 * 1024);
  ref.cache = w.cache;
  run_workers(serialize_shared_cache, &ref);
  free(ref.data[0]);
  kvp_test_workload_free(&w);
}

/* Pools: one shared pool read by every thread (const calls), and one pool per thread over its own
 * cache, modified (add, append across pages, fork, free) while the others do the same. */
typedef struct pools {
  const kvp_pool *shared;
  kvp_seq_id seq;
  size_t length;
  int32_t pages[4];
} pools;

static void *use_pools(void *arg) {
  worker *me = (worker *)arg;
  pools *p = (pools *)me->shared;
  kvp_config cfg = kvp_test_config(2, 2, 64, 4, 64, KVP_DTYPE_F32, KVP_LAYOUT_V3);
  kvp_cache *cache = NULL;
  kvp_pool *own = NULL;
  int32_t toks[10], got[4];
  int r, i;
  for (i = 0; i < 10; ++i) toks[i] = 10 * me->index + i;
  WORKER_CHECK(me, kvp_cache_create(&cfg, NULL, &cache) == KVP_OK);
  WORKER_CHECK(me, kvp_pool_create(cache, NULL, &own) == KVP_OK);
  if (me->failures) return NULL;
  pthread_barrier_wait(&g_barrier);
  for (r = 0; r < 50; ++r) {
    kvp_seq_id s, kids[2];
    size_t len = 0, n = 0;
    WORKER_CHECK(me, kvp_pool_get_sequence_length(p->shared, p->seq, &len, NULL) == KVP_OK && len == p->length);
    WORKER_CHECK(me, kvp_pool_get_page_table(p->shared, p->seq, got, 4, &n) == KVP_OK && n == 3 &&
                         memcmp(got, p->pages, 3 * sizeof(int32_t)) == 0);
    WORKER_CHECK(me, kvp_pool_add_sequence(own, toks, 10, 0, 0, &s, NULL) == KVP_OK);
    WORKER_CHECK(me, kvp_pool_append(own, s, toks, 3, NULL) == KVP_OK);
    WORKER_CHECK(me, kvp_pool_fork(own, s, 2, kids) == KVP_OK);
    WORKER_CHECK(me, kvp_pool_append(own, kids[0], toks, 1, NULL) == KVP_OK); /* copy-on-write */
    WORKER_CHECK(me, kvp_pool_free_sequence(own, kids[0]) == KVP_OK);
    WORKER_CHECK(me, kvp_pool_free_sequence(own, kids[1]) == KVP_OK);
    WORKER_CHECK(me, kvp_pool_free_sequence(own, s) == KVP_OK);
    WORKER_CHECK(me, kvp_pool_check_invariants(own) == KVP_OK);
  }
  WORKER_CHECK(me, kvp_pool_destroy(own) == KVP_OK);
  WORKER_CHECK(me, kvp_cache_destroy(cache) == KVP_OK);
  return NULL;
}

static void test_threads__pools_from_several_threads(void **state) {
  kvp_config cfg = kvp_test_config(2, 2, 64, 4, 16, KVP_DTYPE_F32, KVP_LAYOUT_V3);
  kvp_cache *cache = NULL;
  kvp_pool *pool = NULL;
  pools p;
  int32_t toks[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  size_t n = 0;
  (void)state;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &cache));
  assert_kvp_ok(kvp_pool_create(cache, NULL, &pool));
  assert_kvp_ok(kvp_pool_add_sequence(pool, toks, 10, 0, 0, &p.seq, NULL));
  assert_kvp_ok(kvp_pool_get_page_table(pool, p.seq, p.pages, 4, &n));
  assert_int_equal(n, 3);
  p.shared = pool;
  p.length = 10;
  run_workers(use_pools, &p);
  assert_kvp_ok(kvp_pool_check_invariants(pool));
  assert_kvp_ok(kvp_pool_destroy(pool));
  assert_kvp_ok(kvp_cache_destroy(cache));
}

/* Handles made and destroyed on every thread at once; each thread's dead handles stay refused. */
static void *churn_handles(void *arg) {
  worker *me = (worker *)arg;
  kvp_metadata *dead[200];
  kvp_metadata_desc desc;
  int i;
  kvp_metadata_desc_init(&desc, sizeof desc);
  pthread_barrier_wait(&g_barrier);
  for (i = 0; i < 200; ++i) {
    kvp_metadata *m = NULL;
    WORKER_CHECK(me, kvp_metadata_create_empty(KVP_LAYOUT_V3, 8, 2, 4, 4, &m) == KVP_OK);
    WORKER_CHECK(me, kvp_metadata_get_desc(m, &desc) == KVP_OK);
    WORKER_CHECK(me, kvp_metadata_destroy(m) == KVP_OK);
    dead[i] = m;
  }
  for (i = 0; i < 200; ++i) WORKER_CHECK(me, kvp_metadata_destroy(dead[i]) == KVP_ERR_INVALID_HANDLE);
  return NULL;
}

static void test_threads__handles_created_and_destroyed_on_several_threads(void **state) {
  (void)state;
  run_workers(churn_handles, NULL);
}

/* Two kinds of failure, one per thread parity, both failed before either reads its message. */
static void *fail_my_way(void *arg) {
  worker *me = (worker *)arg;
  kvp_cache *cache = (kvp_cache *)me->shared;
  kvp_tensor view;
  int r;
  for (r = 0; r < 20; ++r) {
    if (me->index % 2 == 0) {
      WORKER_CHECK(me, kvp_cache_get_view(cache, 99, KVP_VIEW_KEYS, &view) == KVP_ERR_INVALID_ARGUMENT);
    } else {
      WORKER_CHECK(me, kvp_cache_destroy((kvp_cache *)&view) == KVP_ERR_INVALID_HANDLE);
    }
    pthread_barrier_wait(&g_barrier); /* every thread has failed its way */
    if (me->index % 2 == 0)
      WORKER_CHECK(me, strstr(kvp_last_error_message(), "kvp_cache_get_view") != NULL &&
                           strstr(kvp_last_error_message(), "99") != NULL);
    else
      WORKER_CHECK(me, strstr(kvp_last_error_message(), "kvp_cache_destroy: invalid handle") != NULL);
    pthread_barrier_wait(&g_barrier);
  }
  return NULL;
}

static void test_threads__error_message_is_per_thread(void **state) {
  kvp_config cfg = kvp_test_config(2, 2, 64, 4, 8, KVP_DTYPE_F32, KVP_LAYOUT_V3);
  kvp_cache *cache = NULL;
  (void)state;
  assert_kvp_ok(kvp_cache_create(&cfg, NULL, &cache));
  run_workers(fail_my_way, cache);
  assert_kvp_ok(kvp_cache_destroy(cache));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_threads__concatenate_into_different_caches),
      cmocka_unit_test(test_threads__layers_of_one_cache_with_one_metadata),
      cmocka_unit_test(test_threads__read_only_serialize_of_one_cache),
      cmocka_unit_test(test_threads__pools_from_several_threads),
      cmocka_unit_test(test_threads__handles_created_and_destroyed_on_several_threads),
      cmocka_unit_test(test_threads__error_message_is_per_thread),
  };
  setenv("KVP_NUM_THREADS", "4", 0);
  return cmocka_run_group_tests_name("threads", tests, NULL, NULL);
}
