/* Helpers of the GPU test programs that call the CUDA runtime themselves (tests/gpu/tests.cmake
 * links this file into them; its definitions need <cuda_runtime_api.h> and compile to nothing in
 * builds without CUDA, #if KVP_HAS_CUDA). */
#ifndef KVP_TEST_GPU_SUPPORT_H
#define KVP_TEST_GPU_SUPPORT_H

#include "support.h"

#if KVP_HAS_CUDA
#include <cuda_runtime_api.h>

/* The calling thread's current CUDA device. */
int kvp_gpu_current_device(void);

/* A new device buffer (cudaMalloc) holding a copy of `bytes` host bytes. */
void *kvp_gpu_upload(const void *host, size_t bytes);

/* Copies len int32 values from host `src` over the device array `dev`. */
void kvp_gpu_upload_i32(const int32_t *dev, const int32_t *src, int64_t len);

/* Device-resident copy of host metadata on the current device (every array copied; the handle
 * borrows the copies). */
typedef struct kvp_gpu_metadata {
  kvp_metadata *md;
  void *bufs[8];
  int nbufs;
} kvp_gpu_metadata;
void kvp_gpu_metadata_make(kvp_gpu_metadata *d, const kvp_metadata *host);
void kvp_gpu_metadata_free(kvp_gpu_metadata *d);

#endif
#endif
