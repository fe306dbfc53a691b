// The CUDA entry points of the backend interface in builds without CUDA: every request for a
// device says so. Compiled instead of the CUDA backend (CMakeLists.txt).
#include "backend/backend.hpp"
#include "util/error.hpp"

namespace kvp::detail {

HostPtr<Backend> make_cuda_backend(int32_t device_id, const HostAllocator&, const char* function) {
  fail(KVP_ERR_NO_DEVICE, "%s: CUDA device %d requested, but this build of kvpages has no CUDA backend", function,
       static_cast<int>(device_id));
}

void cuda_memory_stats(int32_t device_id, kvp_memory_stats*) {
  fail(KVP_ERR_NO_DEVICE, "CUDA device %d requested, but this build of kvpages has no CUDA backend",
       static_cast<int>(device_id));
}

int32_t cuda_device_count() noexcept { return 0; }

const char* cuda_backend_kind() noexcept { return "off"; }

}  // namespace kvp::detail
