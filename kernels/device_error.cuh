// Device side of the error record (kernels/device_error.hpp), shared by every kernel that reads
// device-resident metadata: the first violation is recorded and mirrored into mapped host memory
// for the host to read without synchronising; the launch that records it finishes its valid work,
// and its last block to finish marks the record "blocking", which later launches read first.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/device_error.hpp"

// Under the emulated runtime (tests/gpu/cuemu), every store and every input read is checked to
// lie inside the buffer it indexes; on a GPU this compiles to nothing.
#if defined(KVP_CUDA_EMULATION)
#define KVP_EMU_CHECK(ptr, bytes, align, write, base) ::cuemu::check_access(ptr, bytes, align, write, base)
#else
#define KVP_EMU_CHECK(ptr, bytes, align, write, base) ((void)0)
#endif

namespace kvp::detail::cuda {

// Records a violation by operation `op` (DeviceErrorOp, its code) in the record and its host
// mirror; the first error wins.
__device__ __forceinline__ void report(DeviceErrorRecord* err, DeviceErrorRecord* mirror, int32_t op, int32_t reason,
                                       int64_t index, int64_t value, int64_t limit) {
  if (atomicCAS(&err->code, 0, op) != 0) return;
  err->reason = reason;
  err->index = index;
  err->value = value;
  err->limit = limit;
  volatile DeviceErrorRecord* m = mirror;
  m->reason = reason;
  m->index = index;
  m->value = value;
  m->limit = limit;
  __threadfence_system();
  m->code = op;
  __threadfence_system();  // also orders the claim before this block's count in finish_block
}

// Start of every block (thread 0): non-zero when an earlier launch recorded a device-side error;
// the block then writes nothing (the cache refuses writes until the host has reported and
// cleared the error). The result is read after the block's first __syncthreads.
__device__ __forceinline__ int load_blocking(const DeviceErrorRecord* err) {
  return *reinterpret_cast<const volatile int32_t*>(&err->blocking);
}

// End of every block: the last block of the launch promotes an error recorded by this launch
// to `blocking` and resets the block counter for the next launch. (A block that recorded an
// error fenced after claiming it, so its claim is visible before its count.)
__device__ __forceinline__ void finish_block(DeviceErrorRecord* err) {
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned total = gridDim.x * gridDim.y * gridDim.z;
    const unsigned prev = atomicAdd(&err->blocks_done, 1u);
    if (prev == total - 1) {
      __threadfence();
      if (*reinterpret_cast<volatile int32_t*>(&err->code) != 0) err->blocking = 1;
      err->blocks_done = 0;
      __threadfence();
    }
  }
}

}  // namespace kvp::detail::cuda
