/* A sticky device fault on a CUDA cache's device. After a kernel faults, the device's CUDA context
 * is unusable: every later runtime call returns the fault. The cache must report it through the
 * asynchronous error (a sticky KVP_ERR_DEVICE that names the CUDA error), refuse further work
 * with KVP_ERR_DEVICE_LOST, refuse to clear it, and still be destroyable; CPU caches carry on.
 *
 * Its own program, because the fault breaks the device for the rest of the process. On a GPU the
 * fault is real: a key tensor that points at an unmapped device address. Under the emulated
 * runtime (tests/gpu/cuemu) it is injected. Skips without a GPU ("kvpages: no CUDA device"). */
#include <stdio.h>
#include <stdlib.h>

#include "support.h"

#if KVP_HAS_CUDA
#include <cuda_runtime_api.h>
#endif

#if KVP_HAS_CUDA

static void test_cuda_fault__sticky_fault_is_reported_and_refuses_work(void **state) {
  (void)state;
  kvp_test_require_gpu();
  const int64_t H = 2, D = 128, T = 4;
  kvp_config cfg = kvp_test_config(1, H, D, 16, 8, KVP_DTYPE_BF16, KVP_LAYOUT_V3);
  kvp_cache *gpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CUDA, 0);
  kvp_cache *cpu = kvp_test_cache_on(&cfg, KVP_DEVICE_CPU, 0);
  int32_t page = 1;
  kvp_batch_request req = {0, T, &page, 1};
  kvp_metadata *md = NULL;
  assert_kvp_ok(kvp_metadata_build(&cfg, &req, 1, NULL, NULL, &md));

  const size_t bytes = (size_t)(T * H * D * 2);
  void *dk = NULL, *dv = NULL;
  CUDA_OK(cudaMalloc(&dk, bytes));
  CUDA_OK(cudaMalloc(&dv, bytes));
  CUDA_OK(cudaMemset(dk, 0x3F, bytes));
  CUDA_OK(cudaMemset(dv, 0x3F, bytes));
  CUDA_OK(cudaDeviceSynchronize());
  kvp_tensor k = kvp_test_tensor(dk, KVP_DTYPE_BF16, T, H, D, KVP_DEVICE_CUDA);
  kvp_tensor v = kvp_test_tensor(dv, KVP_DTYPE_BF16, T, H, D, KVP_DEVICE_CUDA);
  assert_kvp_ok(kvp_concatenate(gpu, 0, &k, &v, md, NULL));
  CUDA_OK(cudaDeviceSynchronize());
  kvp_status async = -1;
  assert_kvp_ok(kvp_cache_get_async_error(gpu, &async));
  assert_int_equal(async, KVP_OK);

  /* The fault. */
#if defined(CUEMU_RUNTIME)
  CUDA_OK(cuemu_inject_fault(0));
#else
  kvp_tensor bad = k;
  bad.data = (void *)(uintptr_t)0x1000; /* 16-byte aligned, never mapped */
  assert_kvp_ok(kvp_concatenate(gpu, 0, &bad, &v, md, NULL)); /* enqueued; the kernel faults */
  assert_int_not_equal(cudaDeviceSynchronize(), cudaSuccess);
#endif

  /* Reported as a sticky device error that names the CUDA error. */
  assert_kvp_ok(kvp_cache_get_async_error(gpu, &async));
  assert_int_equal(async, KVP_ERR_DEVICE);
  const char *msg = kvp_last_error_message();
  printf("async error: %s\n", msg);
  assert_non_null(strstr(msg, "sticky fault"));
  assert_non_null(strstr(msg, "cudaError"));
  /* Every call that would use the device is refused; the error cannot be cleared. */
  assert_kvp_status(kvp_concatenate(gpu, 0, &k, &v, md, NULL), KVP_ERR_DEVICE_LOST, "sticky fault");
  uint8_t *host = (uint8_t *)malloc(bytes);
  assert_non_null(host);
  kvp_layout_info li;
  memset(&li, 0, sizeof li);
  li.struct_size = sizeof li;
  assert_kvp_ok(kvp_cache_get_layout(gpu, &li));
  uint8_t *layer = (uint8_t *)malloc((size_t)li.layer_bytes);
  assert_non_null(layer);
  assert_kvp_status(kvp_cache_read_layer(gpu, 0, layer, (size_t)li.layer_bytes, NULL), KVP_ERR_DEVICE_LOST,
                    "destroy the cache");
  assert_kvp_status(kvp_cache_clear_async_error(gpu), KVP_ERR_DEVICE_LOST, "sticky device fault");
  assert_kvp_ok(kvp_cache_get_async_error(gpu, &async));
  assert_int_equal(async, KVP_ERR_DEVICE);

  /* A CPU cache is unaffected. */
  memset(host, 0x3F, bytes);
  kvp_tensor hk = kvp_test_tensor(host, KVP_DTYPE_BF16, T, H, D, KVP_DEVICE_CPU);
  kvp_tensor hv = hk;
  assert_kvp_ok(kvp_concatenate(cpu, 0, &hk, &hv, md, NULL));
  assert_kvp_ok(kvp_cache_read_layer(cpu, 0, layer, (size_t)li.layer_bytes, NULL));

  /* The faulted cache can still be destroyed (its frees report the fault, which is ignored). */
  assert_kvp_ok(kvp_cache_destroy(gpu));
  (void)cudaFree(dk);
  (void)cudaFree(dv);
  free(host);
  free(layer);
  assert_kvp_ok(kvp_metadata_destroy(md));
  assert_kvp_ok(kvp_cache_destroy(cpu));
}

#else /* !KVP_HAS_CUDA */

static void test_cuda_fault__sticky_fault_is_reported_and_refuses_work(void **state) {
  (void)state;
  kvp_test_require_gpu();
}

#endif

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cuda_fault__sticky_fault_is_reported_and_refuses_work),
  };
  return cmocka_run_group_tests_name("cuda_fault", tests, NULL, NULL);
}
