/* Serialization with CUDA caches: the bytes do not depend on the device, so a blob written from
 * a CPU cache loads on the GPU and back, byte for byte. Every test skip()s without a GPU. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support.h"

static int have_gpu(void) {
  int32_t n = 0;
  if (kvp_device_count(&n) != KVP_OK) return 0;
  return KVP_HAS_CUDA && n > 0;
}

static kvp_cache *cache_on(const kvp_config *cfg, kvp_device_type dt) {
  kvp_cache_options o;
  kvp_cache *c = NULL;
  assert_kvp_ok(kvp_cache_options_init(&o, sizeof o));
  o.device_type = dt;
  assert_kvp_ok(kvp_cache_create(cfg, &o, &c));
  return c;
}

static uint8_t *blob_of(const kvp_cache *c, const kvp_serialize_options *o, size_t *n) {
  size_t need = 0, w = 0;
  assert_kvp_ok(kvp_serialized_size(c, o, &need));
  uint8_t *b = malloc(need);
  assert_kvp_ok(kvp_serialize(c, o, b, need, &w));
  assert_int_equal(w, need);
  *n = need;
  return b;
}

static void fill_random(kvp_cache *c, uint64_t seed) {
  kvp_config cfg;
  kvp_layout_info li;
  assert_kvp_ok(kvp_cache_get_config(c, &cfg));
  memset(&li, 0, sizeof li);
  li.struct_size = sizeof li;
  assert_kvp_ok(kvp_cache_get_layout(c, &li));
  for (uint32_t l = 0; l < (uint32_t)cfg.num_hidden_layers; ++l) {
    kvp_tensor t;
    assert_kvp_ok(kvp_cache_get_view(c, l, KVP_VIEW_PAGES, &t));
    for (int64_t i = 0; i < li.layer_bytes; ++i) ((uint8_t *)t.data)[i] = (uint8_t)kvp_test_rand(&seed);
  }
}

static void test_serialize_gpu__cpu_and_gpu_blobs_are_identical(void **state) {
  (void)state;
  if (!have_gpu()) {
    printf("kvpages: no CUDA device\n");
    skip();
  }
  const kvp_layout lays[] = {KVP_LAYOUT_V2, KVP_LAYOUT_V3};
  const int64_t dims[] = {64, 128};
  const kvp_dtype dts[] = {KVP_DTYPE_BF16, KVP_DTYPE_F8_E4M3FN, KVP_DTYPE_F32};
  for (int li = 0; li < 2; ++li)
    for (int di = 0; di < 2; ++di)
      for (int ti = 0; ti < 3; ++ti) {
        kvp_config cfg = kvp_test_config(3, 2, dims[di], 16, 40, dts[ti], lays[li]);
        kvp_cache *cpu = cache_on(&cfg, KVP_DEVICE_CPU);
        fill_random(cpu, (uint64_t)(li * 100 + di * 10 + ti + 1));
        kvp_serialize_options o;
        kvp_serialize_options_init(&o, sizeof o);
        o.chunk_bytes = 100000;
        size_t n = 0, m = 0;
        uint8_t *b = blob_of(cpu, &o, &n);
        /* CPU blob -> new GPU cache -> GPU blob: identical bytes (except nothing). */
        kvp_cache_options co;
        kvp_cache_options_init(&co, sizeof co);
        co.device_type = KVP_DEVICE_CUDA;
        kvp_deserialize_options d;
        kvp_deserialize_options_init(&d, sizeof d);
        d.cache_options = &co;
        kvp_cache *gpu = NULL;
        assert_kvp_ok(kvp_deserialize_new(b, n, &d, &gpu));
        kvp_device_type dt = 0;
        assert_kvp_ok(kvp_cache_get_device(gpu, &dt, NULL));
        assert_int_equal(dt, KVP_DEVICE_CUDA);
        uint8_t *g = blob_of(gpu, &o, &m);
        assert_int_equal(m, n);
        assert_memory_equal(g, b, n);
        /* A scattered subset loaded into other page ids of the GPU cache, read back on the CPU. */
        const int32_t sel[] = {39, 3, 4, 5, 20};
        const int32_t to[] = {0, 10, 11, 30, 31};
        o.page_ids = sel;
        o.num_page_ids = 5;
        size_t ns = 0;
        uint8_t *sb = blob_of(cpu, &o, &ns);
        assert_kvp_ok(kvp_deserialize_into(gpu, sb, ns, to, 5));
        assert_kvp_ok(kvp_deserialize_into(cpu, sb, ns, to, 5));
        o.page_ids = NULL;
        o.num_page_ids = 0;
        free(g);
        free(b);
        b = blob_of(cpu, &o, &n);
        g = blob_of(gpu, &o, &m);
        assert_memory_equal(g, b, n);
        /* A damaged blob leaves the GPU cache unchanged. */
        sb[ns - 20] ^= 1;
        assert_kvp_status(kvp_deserialize_into(gpu, sb, ns, NULL, 0), KVP_ERR_FORMAT_CHECKSUM, "chunk");
        free(g);
        g = blob_of(gpu, &o, &m);
        assert_memory_equal(g, b, n);
        free(sb);
        free(g);
        free(b);
        assert_kvp_ok(kvp_cache_destroy(gpu));
        assert_kvp_ok(kvp_cache_destroy(cpu));
      }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_serialize_gpu__cpu_and_gpu_blobs_are_identical),
  };
  return cmocka_run_group_tests_name("serialize_gpu", tests, NULL, NULL);
}
