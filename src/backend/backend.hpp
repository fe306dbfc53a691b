// Device abstraction: where a cache's buffers live and how bytes move to and from them.
// The CPU backend is always present; the CUDA backend (src/backend/cuda) is compiled when the
// build has CUDA. Core code talks only to this interface; device code lives in kernels/.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "kvpages/cache.h"
#include "kvpages/types.h"

namespace kvp::detail {

class Cache;

class Backend {
 public:
  virtual ~Backend() = default;
  virtual kvp_device_type device_type() const noexcept = 0;
  virtual int32_t device_id() const noexcept = 0;

  // Allocates `bytes` of zero-filled memory. Throws error(KVP_ERR_OUT_OF_MEMORY or
  // KVP_ERR_DEVICE_OUT_OF_MEMORY). Never returns nullptr.
  virtual void* alloc_zeroed(size_t bytes) = 0;
  virtual void release(void* ptr, size_t bytes) noexcept = 0;

  // Byte copies between this backend's memory and the host. For CUDA these are stream-ordered
  // on `stream`; `sync` asks the call to wait for completion before returning (CUDA: refused
  // with KVP_ERR_UNSUPPORTED while `stream` is being captured into a graph, before anything is
  // enqueued, so the caller's capture stays valid). `function` names the API call in errors.
  virtual void copy_to_host(void* host_dst, const void* src, size_t bytes, kvp_stream stream, bool sync,
                            const char* function) = 0;
  virtual void copy_from_host(void* dst, const void* host_src, size_t bytes, kvp_stream stream, bool sync,
                              const char* function) = 0;
  virtual void copy_within(void* dst, const void* src, size_t bytes, kvp_stream stream) = 0;
  virtual void fill_zero(void* dst, size_t bytes, kvp_stream stream) = 0;

  // Called once the cache that owns this backend is constructed (CUDA: installs the hook that
  // reports device-side errors and device faults through the cache's asynchronous error).
  virtual void attach(Cache& cache) { (void)cache; }
};

// CPU backend; `allocator` may be null (built-in: anonymous mappings for large blocks).
std::unique_ptr<Backend> make_cpu_backend(const kvp_host_allocator* allocator);

// CUDA backend for device `device_id`. Throws error(KVP_ERR_NO_DEVICE) when the build has no
// CUDA or the device does not exist.
std::unique_ptr<Backend> make_cuda_backend(int32_t device_id);

// Host allocation through the optional hook (used for bookkeeping objects as well).
void* host_alloc(const kvp_host_allocator* a, size_t bytes, size_t align);
void host_free(const kvp_host_allocator* a, void* ptr) noexcept;

}  // namespace kvp::detail

namespace kvp::detail {
// Memory statistics of CUDA device `device_id` (cudaMemGetInfo: total as bytes_total, total-free as
// bytes_in_use). Throws error(KVP_ERR_NO_DEVICE) without CUDA or device.
void cuda_memory_stats(int32_t device_id, kvp_memory_stats* out);
// Number of CUDA devices usable by this build (0 without CUDA, driver or GPU). Never throws.
int32_t cuda_device_count() noexcept;
}  // namespace kvp::detail
