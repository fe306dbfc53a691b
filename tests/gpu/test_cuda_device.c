/* Devices and host copies of layer pages (include/kvpages/device.h).
 *
 * The CPU-cache tests run everywhere; the CUDA-cache tests skip() when the build has no CUDA or
 * the machine has no GPU. Run alone with `ctest -L gpu`. */
#include <stdio.h>
#include <stdlib.h>

#include "support.h"

static int32_t device_count(void) {
  int32_t n = -1;
  assert_kvp_ok(kvp_device_count(&n));
  assert_true(n >= 0);
  return n;
}

static void fill_random(uint8_t *p, size_t n, uint64_t *rng) {
  for (size_t i = 0; i < n; ++i) p[i] = (uint8_t)kvp_test_rand(rng);
}

static void test_cuda_device__count_matches_build(void **state) {
  (void)state;
  int32_t n = device_count();
#if !KVP_HAS_CUDA
  assert_int_equal(n, 0);
#else
  (void)n;
#endif
  assert_kvp_status(kvp_device_count(NULL), KVP_ERR_INVALID_ARGUMENT, "out");
}

/* Without a usable GPU, asking for a CUDA cache is a clean NO_DEVICE error, never a crash; with
 * GPUs, an ordinal past the last device is. */
static void test_cuda_device__missing_device_is_no_device(void **state) {
  (void)state;
  kvp_config cfg = kvp_test_config(1, 2, 128, 16, 4, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  kvp_cache_options o;
  kvp_cache *c = (kvp_cache *)&o; /* must be reset to NULL on failure */
  assert_kvp_ok(kvp_cache_options_init(&o, sizeof o));
  o.device_type = KVP_DEVICE_CUDA;
  o.device_id = device_count(); /* one past the last device (0 when there is none) */
  char want[64];
  snprintf(want, sizeof want, "%d", (int)o.device_id);
  assert_kvp_status(kvp_cache_create(&cfg, &o, &c), KVP_ERR_NO_DEVICE, want);
  assert_null(c);
}

static void test_cuda_device__cpu_write_read_roundtrip(void **state) {
  (void)state;
  uint64_t rng = 11;
  kvp_config cfg = kvp_test_config(3, 2, 64, 16, 5, KVP_DTYPE_F16, KVP_LAYOUT_V3);
  kvp_cache *c = kvp_test_cache_on(&cfg, KVP_DEVICE_CPU, 0);
  const size_t n = kvp_test_layer_bytes(c);
  uint8_t *src = (uint8_t *)malloc(n), *back = (uint8_t *)malloc(n + 7), *zero = (uint8_t *)calloc(n, 1);
  assert_non_null(src);
  assert_non_null(back);
  assert_non_null(zero);
  fill_random(src, n, &rng);
  assert_kvp_ok(kvp_cache_write_layer(c, 1, src, n, NULL));
  /* A larger buffer is fine; bytes past the layer are untouched. */
  memset(back, 0xA5, n + 7);
  assert_kvp_ok(kvp_cache_read_layer(c, 1, back, n + 7, NULL));
  assert_memory_equal(back, src, n);
  for (size_t i = n; i < n + 7; ++i) assert_int_equal(back[i], 0xA5);
  /* Other layers are still zero, and the view of layer 1 shows the same bytes. */
  assert_kvp_ok(kvp_cache_read_layer(c, 0, back, n, NULL));
  assert_memory_equal(back, zero, n);
  assert_kvp_ok(kvp_cache_read_layer(c, 2, back, n, NULL));
  assert_memory_equal(back, zero, n);
  kvp_tensor t;
  assert_kvp_ok(kvp_cache_get_view(c, 1, KVP_VIEW_PAGES, &t));
  assert_memory_equal(t.data, src, n);
  free(src);
  free(back);
  free(zero);
  assert_kvp_ok(kvp_cache_destroy(c));
}

static void test_cuda_device__bad_arguments_change_nothing(void **state) {
  (void)state;
  uint64_t rng = 12;
  kvp_config cfg = kvp_test_config(2, 1, 128, 16, 3, KVP_DTYPE_BF16, KVP_LAYOUT_V2);
  kvp_cache *c = kvp_test_cache_on(&cfg, KVP_DEVICE_CPU, 0);
  const size_t n = kvp_test_layer_bytes(c);
  uint8_t *a = (uint8_t *)malloc(n), *b = (uint8_t *)malloc(n), *junk = (uint8_t *)malloc(n + 1);
  assert_non_null(a);
  assert_non_null(b);
  assert_non_null(junk);
  fill_random(a, n, &rng);
  fill_random(junk, n + 1, &rng);
  assert_kvp_ok(kvp_cache_write_layer(c, 0, a, n, NULL));

  char msg[96];
  snprintf(msg, sizeof msg, "%zu", n);
  assert_kvp_status(kvp_cache_write_layer(c, 0, junk, n + 1, NULL), KVP_ERR_INVALID_ARGUMENT, msg);
  assert_kvp_status(kvp_cache_write_layer(c, 0, junk, n - 1, NULL), KVP_ERR_INVALID_ARGUMENT, msg);
  assert_kvp_status(kvp_cache_write_layer(c, 2, junk, n, NULL), KVP_ERR_INVALID_ARGUMENT, "layer 2");
  assert_kvp_status(kvp_cache_write_layer(c, 0, NULL, n, NULL), KVP_ERR_INVALID_ARGUMENT, "host_src");
  assert_kvp_status(kvp_cache_write_layer(NULL, 0, junk, n, NULL), KVP_ERR_INVALID_HANDLE, "");

  memset(b, 0x5A, n);
  assert_kvp_status(kvp_cache_read_layer(c, 0, b, n - 1, NULL), KVP_ERR_BUFFER_TOO_SMALL, msg);
  for (size_t i = 0; i < n; ++i) assert_int_equal(b[i], 0x5A); /* output untouched on failure */
  assert_kvp_status(kvp_cache_read_layer(c, 7, b, n, NULL), KVP_ERR_INVALID_ARGUMENT, "layer 7");
  assert_kvp_status(kvp_cache_read_layer(c, 0, NULL, n, NULL), KVP_ERR_INVALID_ARGUMENT, "host_dst");
  assert_kvp_status(kvp_cache_read_layer(NULL, 0, b, n, NULL), KVP_ERR_INVALID_HANDLE, "");

  /* Nothing changed: layer 0 still holds `a`, layer 1 is still zero. */
  assert_kvp_ok(kvp_cache_read_layer(c, 0, b, n, NULL));
  assert_memory_equal(b, a, n);
  assert_kvp_ok(kvp_cache_read_layer(c, 1, b, n, NULL));
  for (size_t i = 0; i < n; ++i) assert_int_equal(b[i], 0);
  assert_kvp_ok(kvp_cache_destroy(c));
  /* A destroyed handle is rejected without touching it. */
  assert_kvp_status(kvp_cache_read_layer(c, 0, b, n, NULL), KVP_ERR_INVALID_HANDLE, "");
  free(a);
  free(b);
  free(junk);
}

/* CUDA: a new cache is zero, write/read round-trips, the device memory statistics are sane. */
static void test_cuda_device__cuda_cache_zeroed_and_roundtrip(void **state) {
  (void)state;
  if (device_count() == 0) {
    skip();
    return;
  }
  uint64_t rng = 13;
  kvp_config cfg = kvp_test_config(2, 3, 96, 32, 7, KVP_DTYPE_F8_E4M3FN, KVP_LAYOUT_V3);
  kvp_cache *c = kvp_test_cache_on(&cfg, KVP_DEVICE_CUDA, 0);
  kvp_device_type dt = 0;
  int32_t did = -1;
  assert_kvp_ok(kvp_cache_get_device(c, &dt, &did));
  assert_int_equal(dt, KVP_DEVICE_CUDA);
  assert_int_equal(did, 0);
  const size_t n = kvp_test_layer_bytes(c);
  uint8_t *src = (uint8_t *)malloc(n), *back = (uint8_t *)malloc(n);
  assert_non_null(src);
  assert_non_null(back);
  memset(back, 0xFF, n);
  assert_kvp_ok(kvp_cache_read_layer(c, 1, back, n, NULL));
  for (size_t i = 0; i < n; ++i) assert_int_equal(back[i], 0);
  fill_random(src, n, &rng);
  assert_kvp_ok(kvp_cache_write_layer(c, 1, src, n, NULL));
  assert_kvp_ok(kvp_cache_read_layer(c, 1, back, n, NULL));
  assert_memory_equal(back, src, n);
  assert_kvp_ok(kvp_cache_read_layer(c, 0, back, n, NULL));
  for (size_t i = 0; i < n; ++i) assert_int_equal(back[i], 0);
  kvp_status async = -1;
  assert_kvp_ok(kvp_cache_get_async_error(c, &async));
  assert_int_equal(async, KVP_OK);

  kvp_memory_stats ms;
  memset(&ms, 0, sizeof ms);
  assert_kvp_ok(kvp_device_memory_stats(KVP_DEVICE_CUDA, 0, &ms));
  assert_int_equal(ms.valid, 1);
  assert_true(ms.bytes_total > 0);
  /* Our own buffers are allocated, so something is in use, and never more than the total. */
  assert_true(ms.bytes_in_use >= (int64_t)(2 * n));
  assert_true(ms.bytes_in_use <= ms.bytes_total);
  free(src);
  free(back);
  assert_kvp_ok(kvp_cache_destroy(c));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cuda_device__count_matches_build),
      cmocka_unit_test(test_cuda_device__missing_device_is_no_device),
      cmocka_unit_test(test_cuda_device__cpu_write_read_roundtrip),
      cmocka_unit_test(test_cuda_device__bad_arguments_change_nothing),
      cmocka_unit_test(test_cuda_device__cuda_cache_zeroed_and_roundtrip),
  };
  return cmocka_run_group_tests_name("cuda_device", tests, NULL, NULL);
}
