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

// Double-buffered transfer between a device backend's memory and pageable host memory, for bulk
// moves such as serialization. It has two pinned host buffers ("slots") of piece_bytes() each.
// Copies between a slot and device memory are enqueued asynchronously, in the order they are
// made, on the legacy stream of the backend's device; fence(k) marks the end of the copies
// enqueued for slot k so far and wait(k) blocks the host until they are done. The host may touch
// a slot only after waiting for its last fence, so while the device moves one slot the host works
// on the other. Errors throw kvp::detail::error. The destructor waits for every fenced copy.
class HostPipe {
 public:
  virtual ~HostPipe() = default;
  virtual size_t piece_bytes() const noexcept = 0;
  virtual uint8_t* slot(int k) const noexcept = 0;
  // Enqueue: n bytes of device memory `src` -> slot k at `offset` (download), or slot k at
  // `offset` -> device memory `dst` (upload). offset + n <= piece_bytes().
  virtual void download(int k, size_t offset, const void* src, size_t n) = 0;
  virtual void upload(int k, size_t offset, void* dst, size_t n) = 0;
  virtual void fence(int k) = 0;
  virtual void wait(int k) = 0;
};

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

  // A HostPipe for bulk copies between this backend's memory and the host, or nullptr where the
  // memory is host memory (CPU: copy directly). CUDA: refused with KVP_ERR_UNSUPPORTED while the
  // legacy stream cannot be used because a graph is being captured.
  virtual std::unique_ptr<HostPipe> host_pipe(const char* function) {
    (void)function;
    return nullptr;
  }

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
