// One kernel launch on `stream`, returning the launch's own error (cudaLaunchKernel reports it
// directly); under the emulated runtime (tests/gpu/cuemu) the blocks run as fibers.
#pragma once

#include <cuda_runtime.h>

namespace kvp::detail::cuda {

template <class Params>
cudaError_t launch_kernel(void (*kernel)(Params), dim3 grid, unsigned threads, cudaStream_t s, const Params& p) {
#if defined(KVP_CUDA_EMULATION)
  return ::cuemu::launch([kernel, p]() { kernel(p); }, grid, dim3(threads), s);
#else
  void* args[] = {const_cast<Params*>(&p)};
  return cudaLaunchKernel(reinterpret_cast<const void*>(kernel), grid, dim3(threads), args, 0, s);
#endif
}

}  // namespace kvp::detail::cuda
