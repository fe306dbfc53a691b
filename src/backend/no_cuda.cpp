// Stand-ins for the CUDA backend in builds without CUDA: every request for a device says so.
#include "kvpages/features.h"

#if !KVP_HAS_CUDA
#include "backend/backend.hpp"
#include "util/error.hpp"

namespace kvp::detail {

std::unique_ptr<Backend> make_cuda_backend(int32_t device_id) {
  fail(KVP_ERR_NO_DEVICE, "CUDA device %d requested, but this build of kvpages has no CUDA backend",
       static_cast<int>(device_id));
}

void cuda_memory_stats(int32_t device_id, kvp_memory_stats*) {
  fail(KVP_ERR_NO_DEVICE, "CUDA device %d requested, but this build of kvpages has no CUDA backend",
       static_cast<int>(device_id));
}

int32_t cuda_device_count() noexcept { return 0; }

}  // namespace kvp::detail
#endif
