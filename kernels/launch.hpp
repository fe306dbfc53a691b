// Host entry points of the CUDA kernels (defined in kernels/*.cu), called by the CUDA backend's
// host code (src/cuda). Each enqueues one launch on `stream` and returns the launch's own error
// (cudaLaunchKernel reports it directly, so an error the caller's earlier CUDA calls left in the
// thread's last-error state is neither mistaken for ours nor cleared).
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/attention_params.hpp"
#include "kernels/concat_params.hpp"
#include "kvpages/types.h"

namespace kvp::detail::cuda {

// kvp_concatenate: the kernel for (key dtype, value dtype, cache dtype, vectorised?) and p.mode.
// Throws KVP_ERR_UNSUPPORTED (naming `function`) for a dtype without a kernel.
cudaError_t launch_concat(const ConcatParams& p, kvp_dtype key, kvp_dtype value, kvp_dtype cache, bool vec, dim3 grid,
                          cudaStream_t stream, const char* function);

// kvp_attention: the zero-fill of unowned rows (grid.x = tokens), the main kernel for the cache
// dtype (grid: x = KV heads * tiles, y = request rows, z = splits) and, with splits, the merge.
// Returns the first launch error. Throws KVP_ERR_UNSUPPORTED for a dtype without a kernel.
cudaError_t launch_attention(const AttentionParams& p, kvp_dtype cache, dim3 grid, cudaStream_t stream,
                             const char* function);

}  // namespace kvp::detail::cuda
