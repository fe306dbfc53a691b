// The one place that maps a device type to its backend.
#include "backend/backend.hpp"
#include "util/error.hpp"

namespace kvp::detail {

HostPtr<Backend> make_backend(kvp_device_type type, int32_t id, const HostAllocator& alloc, uint32_t cache_flags,
                              const char* function) {
  switch (type) {
    case KVP_DEVICE_CPU:
      if (id != 0) fail(KVP_ERR_INVALID_ARGUMENT, "%s: device_id must be 0 for a CPU cache, got %d", function, id);
      return make_cpu_backend(alloc, cache_flags);
    case KVP_DEVICE_CUDA:
      return make_cuda_backend(id, alloc, function);
    default:
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: unknown device_type %d (expected KVP_DEVICE_CPU or KVP_DEVICE_CUDA)",
           function, type);
  }
}

void device_memory_stats(kvp_device_type type, int32_t id, kvp_memory_stats* out) {
  switch (type) {
    case KVP_DEVICE_CPU:
      if (id != 0) fail(KVP_ERR_INVALID_ARGUMENT, "device_id must be 0 for the CPU, got %d", id);
      cpu_memory_stats(out);
      return;
    case KVP_DEVICE_CUDA:
      cuda_memory_stats(id, out);
      return;
    default:
      fail(KVP_ERR_INVALID_ARGUMENT, "unknown device type %d (expected KVP_DEVICE_CPU or KVP_DEVICE_CUDA)", type);
  }
}

}  // namespace kvp::detail
