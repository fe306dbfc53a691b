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

/* Deterministic PRNG for randomized tests. */
uint64_t kvp_test_rand(uint64_t *state);
/* Uniform integer in [lo, hi]. */
int64_t kvp_test_rand_range(uint64_t *state, int64_t lo, int64_t hi);

/* A small standard config (CPU-sized) for tests: explicit budget, no device query. */
kvp_config kvp_test_config(int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t page_size,
                           int64_t num_pages, kvp_dtype dtype, kvp_layout layout);

/* The same with max_model_length max_len (kvp_test_config: 16 pages). */
kvp_config kvp_test_config_len(int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t page_size,
                               int64_t num_pages, kvp_dtype dtype, kvp_layout layout, int64_t max_len);

/* The cache's asynchronous error status (KVP_OK when none is recorded); fails the test if it
 * cannot be read. */
kvp_status kvp_test_async_error(const kvp_cache *cache);

/* Element codes of the input and storage dtypes, computed independently of the library (double
 * arithmetic): exponent bits E, mantissa bits M, fn = finite only (e4m3fn: no infinity, one NaN). */
typedef struct kvp_test_fmt {
  int E, M, fn;
} kvp_test_fmt;
kvp_test_fmt kvp_test_fmt_of(kvp_dtype dtype);
/* Bytes per element. */
int kvp_test_dtype_size(kvp_dtype dtype);
/* The value of a code; NaN codes give a NaN of the code's sign. */
double kvp_test_decode(uint32_t code, kvp_dtype dtype);
/* The code of x, rounded to nearest even without saturation (overflow: infinity, e4m3fn: NaN); a
 * NaN gives the dtype's quiet NaN with x's sign. f32: the code of (float)x. */
uint32_t kvp_test_encode(double x, kvp_dtype dtype);
/* A code of `size` bytes at p (little-endian host), and its store. */
uint32_t kvp_test_load_code(const unsigned char *p, int size);
void kvp_test_store_code(unsigned char *p, int size, uint32_t code);

/* A layer's byte geometry computed from the SPEC formulas, independently of the library: v3 or
 * v2, the head_dim-64 packing, KV heads H, head dim D, page size S, pages P, the pack factor,
 * combined heads per slot C, stored lanes per head Dst, bytes per element isz. */
typedef struct kvp_test_geom {
  int v3, h64;
  int64_t H, D, S, P, pack, C, Dst, isz;
} kvp_test_geom;
kvp_test_geom kvp_test_geom_of(kvp_layout layout, kvp_dtype dtype, int64_t H, int64_t D, int64_t S, int64_t P);
/* Bytes of one token slot (all heads, keys and values, padding included). */
int64_t kvp_test_token_bytes(const kvp_test_geom *g);
/* Byte offset of lane d of K (kv 0) or V (kv 1) of KV head h at flat slot `slot`. */
int64_t kvp_test_elem_off(const kvp_test_geom *g, int64_t slot, int64_t h, int kv, int64_t d);

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

/* A [T, H, D] tensor descriptor over `data` with element strides st, sh, sd (device_id 0). */
kvp_tensor kvp_test_tensor_strided(void *data, kvp_dtype dtype, int64_t T, int64_t H, int64_t D, int64_t st,
                                   int64_t sh, int64_t sd, kvp_device_type device);
/* The same, contiguous and row-major. */
kvp_tensor kvp_test_tensor(void *data, kvp_dtype dtype, int64_t T, int64_t H, int64_t D, kvp_device_type device);

#endif
