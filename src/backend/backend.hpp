// The device interface: the only way from core down to a device. A cache owns one Backend (the
// CPU's, src/cpu, or a CUDA device's, src/cuda) and core calls it for everything that depends on
// where the pages live: memory, copies, the operations on pages (with jobs core has validated,
// backend/jobs.hpp) and asynchronous device errors. Core never switches on the device type; the
// one place that does is make_backend() (backend/devices.cpp).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "backend/jobs.hpp"
#include "kvpages/cache.h"
#include "kvpages/config.h"
#include "kvpages/types.h"
#include "util/memory.hpp"

namespace kvp::detail {

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

  // ---- memory
  // What a new cache's layer buffers hold: zeros, or anything, because the caller writes every
  // byte of every layer before the cache is seen (kvp_deserialize_new of a blob with all pages).
  enum class Fill { kZero, kOverwritten };
  // Memory for the n layer buffers of a cache, `bytes` each (n >= 1), zero-filled unless `fill`
  // says the caller overwrites it: layer l at layers[l]; the backend may place them all in one
  // allocation. Throws error(KVP_ERR_OUT_OF_MEMORY or KVP_ERR_DEVICE_OUT_OF_MEMORY) with nothing
  // left allocated.
  virtual void alloc_layers(size_t n, size_t bytes, Fill fill, uint8_t** layers) = 0;
  // Frees what alloc_layers(n, bytes, ..., layers) gave.
  virtual void release_layers(uint8_t* const* layers, size_t n, size_t bytes) noexcept = 0;

  // ---- copies
  // Between this backend's memory and the host. For CUDA these are stream-ordered on `stream`;
  // `sync` asks the call to wait for completion before returning (CUDA: refused with
  // KVP_ERR_UNSUPPORTED while `stream` is being captured into a graph, before anything is
  // enqueued, so the caller's capture stays valid). `function` names the API call in errors.
  virtual void copy_to_host(void* host_dst, const void* src, size_t bytes, kvp_stream stream, bool sync,
                            const char* function) = 0;
  virtual void copy_from_host(void* dst, const void* host_src, size_t bytes, kvp_stream stream, bool sync,
                              const char* function) = 0;
  virtual void copy_within(void* dst, const void* src, size_t bytes, kvp_stream stream) = 0;
  // A HostPipe for bulk copies between this backend's memory and the host, with slots of at least
  // `min_piece_bytes` (0: the backend's own size), or nullptr where the memory is host memory (copy
  // directly). CUDA: refused with KVP_ERR_UNSUPPORTED while the legacy stream cannot be used
  // because a graph is being captured.
  virtual HostPtr<HostPipe> host_pipe(const char* function, size_t min_piece_bytes = 0) {
    (void)function;
    (void)min_piece_bytes;
    return nullptr;
  }

  // ---- operations on pages (jobs validated by core)
  virtual void concatenate(const ConcatJob& job, kvp_stream stream) = 0;
  // The fused write and attention of kvp_attention: acquires everything the attention needs
  // (scratch, staging) first, then performs `write` (when not null) exactly as concatenate(), then
  // the attention. A failure to acquire throws before anything is written: cache and `out` are
  // unchanged.
  virtual void attend(const AttentionJob& job, const ConcatJob* write, kvp_stream stream) = 0;

  // ---- asynchronous device errors. The backend owns this state; core only asks.
  // The pending error (polling the device first) and its message.
  kvp_status async_error(std::string* message);
  // Clears a recoverable error (false, and nothing changes, when the error is sticky).
  bool clear_async_error();
  // Throws KVP_ERR_DEVICE_LOST naming `function` when an error is pending (no device poll).
  void check_healthy(const char* function) const;

 protected:
  // Records an error; a sticky one (the device faulted) is kept and never cleared.
  void set_async_error(kvp_status code, std::string message, bool sticky);
  // Device backends: bring the state up to date (device-side error flags, sticky faults).
  virtual void poll_device() {}
  // Device backends: the user cleared a recoverable error; let the device write again.
  virtual void reset_device_errors() {}

 private:
  mutable std::mutex async_mu_;
  std::atomic<bool> async_pending_{false};  // async_code_ != KVP_OK: check_healthy reads it unlocked
  kvp_status async_code_ = KVP_OK;
  bool async_sticky_ = false;
  std::string async_message_;
};

// The backend of a new cache on (type, id). `alloc` serves host allocations (CPU: the page
// buffers too). Throws KVP_ERR_INVALID_ARGUMENT for an unknown device type or a CPU id other than
// 0, KVP_ERR_NO_DEVICE when the build has no CUDA or the device does not exist (messages name
// `function`).
// `cache_flags` are kvp_cache_options::flags, validated (KVP_CACHE_FLAG_*; the CPU backend's page
// buffers follow them, device backends have nothing to apply them to).
HostPtr<Backend> make_backend(kvp_device_type type, int32_t id, const HostAllocator& alloc, uint32_t cache_flags,
                              const char* function);
// Memory statistics of a device (the CPU: the host's total and available memory).
void device_memory_stats(kvp_device_type type, int32_t id, kvp_memory_stats* out);
// Number of CUDA devices usable by this build (0 without CUDA, driver or GPU). Never throws.
int32_t cuda_device_count() noexcept;
// The CUDA backend of this build, for kvp_build_info(): "on", "off", or "cuemu" (the emulated
// runtime of the tests). "on" may still find no device.
const char* cuda_backend_kind() noexcept;

// Converts `count` host elements between f32, f16, bf16, fp8 e4m3fn and fp8 e5m2 with the cache's
// rounding (fp_convert.hpp), on the thread pool when large (src/cpu); src and dst either do not
// overlap or are the same address with equal element sizes. False (nothing written) for any other
// dtype pair.
bool host_convert(const void* src, kvp_dtype src_dtype, void* dst, kvp_dtype dst_dtype, size_t count);

// The implementations behind make_backend() / device_memory_stats() (src/cpu, src/cuda).
HostPtr<Backend> make_cpu_backend(const HostAllocator& alloc, uint32_t cache_flags);
HostPtr<Backend> make_cuda_backend(int32_t device_id, const HostAllocator& alloc, const char* function);
void cpu_memory_stats(kvp_memory_stats* out);
void cuda_memory_stats(int32_t device_id, kvp_memory_stats* out);

}  // namespace kvp::detail
