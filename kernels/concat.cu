// kvp_concatenate launches: picks the kernel template of kernels/concat.cuh for the dtypes.
#include "kernels/concat.cuh"
#include "kernels/launch.hpp"
#include "kernels/launch_kernel.cuh"
#include "util/error.hpp"

namespace kvp::detail::cuda {
namespace {

cudaError_t launch(void (*kernel)(ConcatParams), dim3 grid, cudaStream_t s, const ConcatParams& p) {
  return launch_kernel(kernel, grid, kThreads, s, p);
}

template <class In, class Out>
cudaError_t launch_typed(const ConcatParams& p, bool vec, dim3 grid, cudaStream_t s) {
  if constexpr (std::is_same_v<In, TAny>) {
    // Mixed key/value dtypes: element-wise path only (the host chose chunks of one element).
    return launch(p.mode == kRowsV2 ? concat_v2_kernel<In, Out, false> : concat_rows_kernel<In, Out, false>,
                         grid, s, p);
  } else if (p.mode == kRowsV2) {
    return launch(vec ? concat_v2_kernel<In, Out, true> : concat_v2_kernel<In, Out, false>, grid, s, p);
  } else {
    return launch(vec ? concat_rows_kernel<In, Out, true> : concat_rows_kernel<In, Out, false>, grid, s, p);
  }
}

template <class In>
cudaError_t launch_out(kvp_dtype out, const ConcatParams& p, bool vec, dim3 grid, cudaStream_t s, const char* fn) {
  switch (out) {
    case KVP_DTYPE_F32: return launch_typed<In, TF32>(p, vec, grid, s);
    case KVP_DTYPE_F16: return launch_typed<In, TF16>(p, vec, grid, s);
    case KVP_DTYPE_BF16: return launch_typed<In, TBF16>(p, vec, grid, s);
    case KVP_DTYPE_F8_E4M3FN: return launch_typed<In, TE4M3>(p, vec, grid, s);
    case KVP_DTYPE_F8_E5M2: return launch_typed<In, TE5M2>(p, vec, grid, s);
    default:
      fail(KVP_ERR_UNSUPPORTED, "%s: cache dtype %u is not a storage dtype", fn, static_cast<unsigned>(out));
  }
}

}  // namespace

cudaError_t launch_concat(const ConcatParams& p, kvp_dtype key, kvp_dtype value, kvp_dtype cache, bool vec, dim3 grid,
                          cudaStream_t s, const char* fn) {
  if (key != value) return launch_out<TAny>(cache, p, vec, grid, s, fn);
  switch (key) {
    case KVP_DTYPE_F32: return launch_out<TF32>(cache, p, vec, grid, s, fn);
    case KVP_DTYPE_F16: return launch_out<TF16>(cache, p, vec, grid, s, fn);
    case KVP_DTYPE_BF16: return launch_out<TBF16>(cache, p, vec, grid, s, fn);
    default:
      fail(KVP_ERR_UNSUPPORTED, "%s: input dtype %u is not f32, f16 or bf16", fn, static_cast<unsigned>(key));
  }
}

}  // namespace kvp::detail::cuda
