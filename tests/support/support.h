/* Test helpers shared by the cmocka suites. Include after <cmocka.h>'s prerequisites. */
#ifndef KVP_TEST_SUPPORT_H
#define KVP_TEST_SUPPORT_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "kvpages.h"
#include "reference.h"

/* Fails the test with the status name and the library's message unless expr returns KVP_OK. */
#define assert_kvp_ok(expr)                                                             \
  do {                                                                                  \
    kvp_status s_ = (expr);                                                             \
    if (s_ != KVP_OK) fail_msg("%s -> %s: %s", #expr, kvp_status_name(s_), kvp_last_error_message()); \
  } while (0)

/* Asserts expr returns `code` and that the thread's message contains `substr` (may be ""). */
#define assert_kvp_status(expr, code, substr)                                           \
  do {                                                                                  \
    kvp_status s_ = (expr);                                                             \
    if (s_ != (code))                                                                   \
      fail_msg("%s -> %s (expected %s): %s", #expr, kvp_status_name(s_), kvp_status_name(code), \
               kvp_last_error_message());                                               \
    if (strstr(kvp_last_error_message(), (substr)) == NULL)                             \
      fail_msg("%s: message '%s' lacks '%s'", #expr, kvp_last_error_message(), (substr)); \
    if ((code) != KVP_OK && kvp_last_error_message()[0] == '\0')                        \
      fail_msg("%s: empty error message", #expr);                                       \
  } while (0)

/* A host allocator routed through cmocka's test_malloc/test_free (leak checks per test), with an
 * optional countdown: after `fail_after` successful allocations every allocation fails
 * (fail_after < 0 = never). */
typedef struct kvp_test_alloc_state {
  long fail_after;
  long allocations;
  long live;
} kvp_test_alloc_state;

kvp_host_allocator kvp_test_allocator(kvp_test_alloc_state *state);

/* A small standard config (CPU-sized) for tests: explicit budget, no device query. */
kvp_config kvp_test_config(int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t page_size,
                           int64_t num_pages, kvp_dtype dtype, kvp_layout layout);

/* The same with max_model_length max_len (kvp_test_config: 16 pages). */
kvp_config kvp_test_config_len(int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t page_size,
                               int64_t num_pages, kvp_dtype dtype, kvp_layout layout, int64_t max_len);

/* The cache's asynchronous error status (KVP_OK when none is recorded); fails the test if it
 * cannot be read. */
kvp_status kvp_test_async_error(const kvp_cache *cache);

/* Host v2 metadata over caller arrays (borrowed): slot_mapping [3, num_slices] (destination slot,
 * source token, length per column) and the valid-column count num_valid[0]. */
kvp_metadata *kvp_test_v2_metadata(int32_t *slot_mapping, int64_t num_slices, int32_t *num_valid);

/* GPU tests: 1 when this build has CUDA and the machine a CUDA device, else 0. */
int kvp_test_have_gpu(void);
/* Skips the calling test without a GPU (cmocka's skip() does not return), first printing
 * "kvpages: no CUDA device", the line on which ctest reports a GPU test as skipped. */
void kvp_test_require_gpu(void);
/* A new cache on `device` (CUDA: device `device_id`); fails the test if it cannot be created. */
kvp_cache *kvp_test_cache_on(const kvp_config *cfg, kvp_device_type device, int32_t device_id);
/* Bytes of one layer's page buffer (kvp_layout_info.layer_bytes). */
size_t kvp_test_layer_bytes(const kvp_cache *cache);

/* For GPU tests that include <cuda_runtime_api.h>: fails the test, naming the call, unless it
 * returned cudaSuccess. */
#define CUDA_OK(expr)                                                           \
  do {                                                                          \
    cudaError_t e_ = (expr);                                                    \
    if (e_ != cudaSuccess) fail_msg("%s -> %s", #expr, cudaGetErrorString(e_)); \
  } while (0)


#endif
