// kvp_attention launches: the kernels of kernels/attention.cuh for the cache dtype.
#include "kernels/attention.cuh"
#include "kernels/launch.hpp"
#include "kernels/launch_kernel.cuh"
#include "util/error.hpp"

namespace kvp::detail::cuda {
namespace {

cudaError_t launch(void (*kernel)(AttentionParams), dim3 grid, cudaStream_t s, const AttentionParams& p) {
  return launch_kernel(kernel, grid, kAttnThreads, s, p);
}

using Kernel = void (*)(AttentionParams);

template <kvp_dtype SD>
Kernel main_for(int head_dim) {
  if (head_dim <= kAttnThreads) return attention_kernel<SD, 1>;
  if (head_dim <= 2 * kAttnThreads) return attention_kernel<SD, 2>;
  return attention_kernel<SD, kAttnMaxLanesPerThread>;
}

Kernel main_kernel(kvp_dtype cache, int head_dim, const char* fn) {
  switch (cache) {
    case KVP_DTYPE_F32: return main_for<KVP_DTYPE_F32>(head_dim);
    case KVP_DTYPE_F16: return main_for<KVP_DTYPE_F16>(head_dim);
    case KVP_DTYPE_BF16: return main_for<KVP_DTYPE_BF16>(head_dim);
    case KVP_DTYPE_F8_E4M3FN: return main_for<KVP_DTYPE_F8_E4M3FN>(head_dim);
    case KVP_DTYPE_F8_E5M2: return main_for<KVP_DTYPE_F8_E5M2>(head_dim);
    default:
      fail(KVP_ERR_UNSUPPORTED, "%s: cache dtype %u is not a storage dtype", fn, static_cast<unsigned>(cache));
  }
}

}  // namespace

cudaError_t launch_attention(const AttentionParams& p, kvp_dtype cache, dim3 grid, cudaStream_t s, const char* fn) {
  const Kernel kernel = main_kernel(cache, p.head_dim, fn);
  if (p.num_tokens > 0) {
    const cudaError_t e = launch(attention_zero_kernel, dim3(static_cast<unsigned>(p.num_tokens)), s, p);
    if (e != cudaSuccess) return e;
  }
  if (grid.x == 0 || grid.y == 0) return cudaSuccess;
  cudaError_t e = launch(kernel, grid, s, p);
  if (e == cudaSuccess && p.splits > 1) e = launch(attention_merge_kernel, dim3(grid.x, grid.y, 1), s, p);
  return e;
}

}  // namespace kvp::detail::cuda
