/* GPU tests of kvpages/pool.h: kvp_cache_copy_pages, the pool's copy-on-write, the storage tiers
 * (evicted pages written from device pages, restored into them through the host pipe) and the
 * save and restore of a sequence on a CUDA cache give the same bytes as on a CPU cache. Every
 * test skip()s when the build has no CUDA or the
 * machine has no GPU (then "kvpages: no CUDA device" is printed). */
#include "support.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvpages/device.h"
#include "kvpages/pool.h"

static int make_pair(const kvp_config *cfg, kvp_cache **cpu, kvp_cache **gpu) {
  kvp_cache_options o;
  assert_kvp_ok(kvp_cache_options_init(&o, sizeof o));
  o.device_type = KVP_DEVICE_CUDA;
  kvp_status s = kvp_cache_create(cfg, &o, gpu);
  if (s == KVP_ERR_NO_DEVICE) {
    printf("kvpages: no CUDA device\n");
    return 0;
  }
  assert_kvp_ok(s);
  assert_kvp_ok(kvp_cache_create(cfg, NULL, cpu));
  return 1;
}

/* Same random bytes into every layer of both caches. */
static void fill_both(kvp_cache *cpu, kvp_cache *gpu, uint32_t layers, uint64_t seed) {
  const size_t n = kvp_test_layer_bytes(cpu);
  uint8_t *buf = (uint8_t *)malloc(n);
  assert_non_null(buf);
  for (uint32_t l = 0; l < layers; ++l) {
    for (size_t i = 0; i < n; ++i) buf[i] = (uint8_t)kvp_test_rand(&seed);
    assert_kvp_ok(kvp_cache_write_layer(cpu, l, buf, n, NULL));
    assert_kvp_ok(kvp_cache_write_layer(gpu, l, buf, n, NULL));
  }
  free(buf);
}

static void assert_same_bytes(const kvp_cache *cpu, const kvp_cache *gpu, uint32_t layers) {
  const size_t n = kvp_test_layer_bytes(cpu);
  uint8_t *a = (uint8_t *)malloc(n), *b = (uint8_t *)malloc(n);
  assert_non_null(a);
  assert_non_null(b);
  for (uint32_t l = 0; l < layers; ++l) {
    assert_kvp_ok(kvp_cache_read_layer(cpu, l, a, n, NULL));
    assert_kvp_ok(kvp_cache_read_layer(gpu, l, b, n, NULL));
    assert_memory_equal(a, b, n);
  }
  free(a);
  free(b);
}

static void test_cuda_pool__copy_pages_matches_cpu(void **state) {
  (void)state;
  kvp_config cfg = kvp_test_config(3, 2, 128, 16, 24, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  kvp_cache *cpu = NULL, *gpu = NULL;
  if (!make_pair(&cfg, &cpu, &gpu)) skip();
  fill_both(cpu, gpu, 3, 42);
  const int32_t src[6] = {1, 2, 3, 20, 7, 0}, dst[6] = {10, 11, 12, 5, 23, 9};
  assert_kvp_ok(kvp_cache_copy_pages(cpu, src, dst, 6, NULL));
  assert_kvp_ok(kvp_cache_copy_pages(gpu, src, dst, 6, NULL));
  assert_same_bytes(cpu, gpu, 3);
  /* errors leave the device cache unchanged */
  const int32_t bad[2] = {4, 4};
  assert_kvp_status(kvp_cache_copy_pages(gpu, src, bad, 2, NULL), KVP_ERR_INVALID_ARGUMENT, "appears twice");
  assert_same_bytes(cpu, gpu, 3);
  assert_kvp_ok(kvp_cache_destroy(gpu));
  assert_kvp_ok(kvp_cache_destroy(cpu));
}

static void test_cuda_pool__copy_on_write_matches_cpu(void **state) {
  (void)state;
  kvp_config cfg = kvp_test_config(2, 4, 64, 8, 16, KVP_DTYPE_F16, KVP_LAYOUT_V3);
  kvp_cache *cpu = NULL, *gpu = NULL;
  if (!make_pair(&cfg, &cpu, &gpu)) skip();
  fill_both(cpu, gpu, 2, 7);
  kvp_pool *pc, *pg;
  assert_kvp_ok(kvp_pool_create(cpu, NULL, &pc));
  assert_kvp_ok(kvp_pool_create(gpu, NULL, &pg));
  int32_t t[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  kvp_seq_id a, b, kc[2], kg[2];
  assert_kvp_ok(kvp_pool_add_sequence(pc, t, 11, 0, 0, &a, NULL));
  assert_kvp_ok(kvp_pool_add_sequence(pg, t, 11, 0, 0, &b, NULL));
  assert_kvp_ok(kvp_pool_fork(pc, a, 2, kc));
  assert_kvp_ok(kvp_pool_fork(pg, b, 2, kg));
  for (int i = 0; i < 2; ++i) {
    assert_kvp_ok(kvp_pool_append(pc, kc[i], &t[11], 1, NULL));
    assert_kvp_ok(kvp_pool_append(pg, kg[i], &t[11], 1, NULL));
  }
  int32_t rc[2], rg[2], ra[2];
  size_t n;
  assert_kvp_ok(kvp_pool_get_page_table(pc, kc[1], rc, 2, &n));
  assert_kvp_ok(kvp_pool_get_page_table(pg, kg[1], rg, 2, &n));
  assert_kvp_ok(kvp_pool_get_page_table(pc, a, ra, 2, &n));
  assert_int_equal(rc[1], rg[1]); /* same bookkeeping on both devices */
  assert_int_not_equal(rc[1], ra[1]);
  assert_same_bytes(cpu, gpu, 2);
  kvp_pool_stats st;
  st.struct_size = sizeof st;
  assert_kvp_ok(kvp_pool_get_stats(pg, &st));
  assert_int_equal(st.cow_copies, 2);
  assert_kvp_ok(kvp_pool_check_invariants(pg));
  assert_kvp_ok(kvp_pool_destroy(pg));
  assert_kvp_ok(kvp_pool_destroy(pc));
  assert_kvp_ok(kvp_cache_destroy(gpu));
  assert_kvp_ok(kvp_cache_destroy(cpu));
}

/* A's 3 full pages are evicted from both caches (the GPU pool's tier 0 a directory store,
 * written asynchronously from device pages; the CPU pool's a memory store), then restored into
 * new pages (on the GPU through the pinned, double-buffered host pipe): the restored pages hold
 * A's original bytes and both caches stay byte-identical. */
/* Prompt A (3 full pages and a token) computed and freed, then B (15 pages) evicts A's pages to
 * the tier (a memory store for the CPU pool, a directory for the CUDA pool's writer thread); the
 * pages are scribbled over and A comes back from the tier: both caches hold A's bytes again, on
 * the same pages. `heads` x 128 bf16 with `page` tokens per page over 3 layers. */
static void tiers_restore_matches_cpu(int64_t heads, int64_t page) {
  const size_t na = (size_t)(3 * page + 1), nb = (size_t)(15 * page);
  kvp_config cfg = kvp_test_config_len(3, heads, 128, page, 16, KVP_DTYPE_BF16, KVP_LAYOUT_V3, 16 * page);
  kvp_cache *cpu = NULL, *gpu = NULL;
  if (!make_pair(&cfg, &cpu, &gpu)) skip();
  fill_both(cpu, gpu, 3, 11);
  char dir[] = "/tmp/kvp_cuda_tiers_XXXXXX";
  assert_non_null(mkdtemp(dir));
  kvp_store *ms = NULL, *ds = NULL;
  assert_kvp_ok(kvp_store_create_memory(1 << 26, NULL, &ms));
  kvp_store_options so = KVP_STORE_OPTIONS_INIT;
  so.flags = KVP_STORE_FLAG_NO_SYNC;
  assert_kvp_ok(kvp_store_create_directory(dir, 1 << 26, &so, &ds));
  kvp_pool *pool[2];
  kvp_cache *cache[2] = {cpu, gpu};
  assert_kvp_ok(kvp_pool_create(cpu, NULL, &pool[0]));
  assert_kvp_ok(kvp_pool_create(gpu, NULL, &pool[1]));
  assert_kvp_ok(kvp_pool_add_store(pool[0], ms));
  assert_kvp_ok(kvp_pool_add_store(pool[1], ds));
  int32_t *a = (int32_t *)malloc(sizeof(int32_t) * na), *b = (int32_t *)malloc(sizeof(int32_t) * nb);
  assert_non_null(a);
  assert_non_null(b);
  for (size_t i = 0; i < na; ++i) a[i] = 100 + (int32_t)i;
  for (size_t i = 0; i < nb; ++i) b[i] = 50000 + (int32_t)i;
  const size_t n = kvp_test_layer_bytes(cpu), pb = n / 16;
  uint8_t *before = (uint8_t *)malloc(3 * n), *after = (uint8_t *)malloc(n);
  assert_non_null(before);
  assert_non_null(after);
  int32_t ra[4];
  size_t np;
  for (int d = 0; d < 2; ++d) {
    kvp_seq_id s;
    assert_kvp_ok(kvp_pool_add_sequence(pool[d], a, na, 0, 0, &s, NULL));
    assert_kvp_ok(kvp_pool_set_computed(pool[d], s, na));
    assert_kvp_ok(kvp_pool_get_page_table(pool[d], s, ra, 4, &np));
    assert_kvp_ok(kvp_pool_free_sequence(pool[d], s)); /* 3 cached pages */
    assert_kvp_ok(kvp_pool_add_sequence(pool[d], b, nb, 0, 0, &s, NULL)); /* every page: A's evicted */
    assert_kvp_ok(kvp_pool_free_sequence(pool[d], s));
    assert_kvp_ok(kvp_pool_flush_tiers(pool[d], 0));
    kvp_pool_tier_stats st = KVP_POOL_TIER_STATS_INIT;
    assert_kvp_ok(kvp_pool_get_tier_stats(pool[d], 0, &st));
    assert_int_equal(st.blocks_written, 3);
    assert_int_equal(st.errors + st.dropped, 0);
  }
  for (uint32_t l = 0; l < 3; ++l) { /* A's bytes (the same in both caches) */
    assert_kvp_ok(kvp_cache_read_layer(cpu, l, after, n, NULL));
    for (int i = 0; i < 3; ++i) memcpy(before + l * n + (size_t)i * pb, after + (size_t)ra[i] * pb, pb);
  }
  /* scribble over A's old pages so that only a restore can bring its bytes back */
  memset(after, 0x5A, n);
  for (uint32_t l = 0; l < 3; ++l) {
    assert_kvp_ok(kvp_cache_write_layer(cpu, l, after, n, NULL));
    assert_kvp_ok(kvp_cache_write_layer(gpu, l, after, n, NULL));
  }
  int32_t rr[2][4];
  for (int d = 0; d < 2; ++d) {
    kvp_seq_id s;
    size_t reused = 0;
    assert_kvp_ok(kvp_pool_add_sequence(pool[d], a, na, 0, 0, &s, &reused));
    assert_int_equal(reused, na - 1);
    assert_kvp_ok(kvp_pool_get_page_table(pool[d], s, rr[d], 4, &np));
    for (uint32_t l = 0; l < 3; ++l) {
      assert_kvp_ok(kvp_cache_read_layer(cache[d], l, after, n, NULL));
      for (int i = 0; i < 3; ++i) assert_memory_equal(after + (size_t)rr[d][i] * pb, before + l * n + (size_t)i * pb, pb);
    }
    assert_kvp_ok(kvp_pool_check_invariants(pool[d]));
  }
  assert_memory_equal(rr[0], rr[1], sizeof rr[0]); /* same bookkeeping on both devices */
  assert_same_bytes(cpu, gpu, 3);
  free(before);
  free(after);
  free(a);
  free(b);
  for (int d = 0; d < 2; ++d) assert_kvp_ok(kvp_pool_destroy(pool[d]));
  assert_kvp_ok(kvp_store_destroy(ms));
  assert_kvp_ok(kvp_store_destroy(ds));
  assert_kvp_ok(kvp_cache_destroy(gpu));
  assert_kvp_ok(kvp_cache_destroy(cpu));
  char cmd[96];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  assert_int_equal(system(cmd), 0);
}

static void test_cuda_pool__tiers_restore_matches_cpu(void **state) {
  (void)state;
  tiers_restore_matches_cpu(2, 16); /* 48 KiB blocks: the backend's shared pipe slots */
}

static void test_cuda_pool__tiers_restore_large_blocks(void **state) {
  (void)state;
  tiers_restore_matches_cpu(8, 256); /* 3 MiB blocks: pinned slots of a block, for the call */
}

static void test_cuda_pool__saved_sequence_matches_cpu_across_devices(void **state) {
  (void)state;
  kvp_config cfg = kvp_test_config(2, 4, 64, 8, 16, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  kvp_cache *cpu = NULL, *gpu = NULL;
  if (!make_pair(&cfg, &cpu, &gpu)) skip();
  fill_both(cpu, gpu, 2, 11);
  kvp_pool *pc, *pg;
  assert_kvp_ok(kvp_pool_create(cpu, NULL, &pc));
  assert_kvp_ok(kvp_pool_create(gpu, NULL, &pg));
  int32_t t[20];
  for (int i = 0; i < 20; ++i) t[i] = 100 + 3 * i;
  kvp_seq_id a, b;
  assert_kvp_ok(kvp_pool_add_sequence(pc, t, 20, 9, 0, &a, NULL)); /* 2 full pages and 4 tokens */
  assert_kvp_ok(kvp_pool_add_sequence(pg, t, 20, 9, 0, &b, NULL));
  assert_kvp_ok(kvp_pool_set_computed(pc, a, 20));
  assert_kvp_ok(kvp_pool_set_computed(pg, b, 20));
  size_t nc = 0, ng = 0;
  assert_int_equal(kvp_pool_save_sequence(pc, a, NULL, 0, &nc), KVP_ERR_BUFFER_TOO_SMALL);
  assert_int_equal(kvp_pool_save_sequence(pg, b, NULL, 0, &ng), KVP_ERR_BUFFER_TOO_SMALL);
  assert_int_equal(nc, ng);
  uint8_t *from_cpu = (uint8_t *)malloc(nc), *from_gpu = (uint8_t *)malloc(ng);
  assert_non_null(from_cpu);
  assert_non_null(from_gpu);
  assert_kvp_ok(kvp_pool_save_sequence(pc, a, from_cpu, nc, &nc));
  assert_kvp_ok(kvp_pool_save_sequence(pg, b, from_gpu, ng, &ng));
  assert_memory_equal(from_cpu, from_gpu, nc); /* the blob does not depend on the device */
  /* each pool restores the other device's blob into fresh pages after a filler */
  int32_t filler[8] = {7, 7, 7, 7, 7, 7, 7, 7};
  kvp_seq_id fc, fg, rc, rg;
  assert_kvp_ok(kvp_pool_add_sequence(pc, filler, 8, 1, 0, &fc, NULL));
  assert_kvp_ok(kvp_pool_add_sequence(pg, filler, 8, 1, 0, &fg, NULL));
  assert_kvp_ok(kvp_pool_restore_sequence(pc, from_gpu, ng, 0, &rc));
  assert_kvp_ok(kvp_pool_restore_sequence(pg, from_cpu, nc, 0, &rg));
  int32_t pages_c[3], pages_g[3];
  size_t n;
  assert_kvp_ok(kvp_pool_get_page_table(pg, rg, pages_g, 3, &n));
  assert_kvp_ok(kvp_pool_get_page_table(pc, rc, pages_c, 3, &n));
  assert_int_equal(pages_c[2], pages_g[2]); /* same bookkeeping on both devices: a fresh last page */
  assert_same_bytes(cpu, gpu, 2);
  assert_kvp_ok(kvp_pool_check_invariants(pg));
  free(from_cpu);
  free(from_gpu);
  assert_kvp_ok(kvp_pool_destroy(pg));
  assert_kvp_ok(kvp_pool_destroy(pc));
  assert_kvp_ok(kvp_cache_destroy(gpu));
  assert_kvp_ok(kvp_cache_destroy(cpu));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cuda_pool__copy_pages_matches_cpu),
      cmocka_unit_test(test_cuda_pool__copy_on_write_matches_cpu),
      cmocka_unit_test(test_cuda_pool__tiers_restore_matches_cpu),
      cmocka_unit_test(test_cuda_pool__tiers_restore_large_blocks),
      cmocka_unit_test(test_cuda_pool__saved_sequence_matches_cpu_across_devices),
  };
  return cmocka_run_group_tests_name("cuda_pool", tests, NULL, NULL);
}
