// The CUDA backend (host side): one CudaBackend per cache, bound to one device at creation.
// Besides the Backend interface it owns what kvp_concatenate needs without allocating or
// synchronising the host in the steady state:
//  - a device error record (checked by every concatenate kernel before writing) and its
//    mapped pinned mirror (written by the kernel on error, read by the host without a sync);
//  - a staging ring for host-resident metadata: kSlots slots, each a pinned host buffer and a
//    device buffer of the same capacity plus an event recorded after the kernel that read it;
//  - a graph arena: pinned + device memory handed out bump-style, never reused, to calls made
//    while the stream is being captured into a CUDA graph (the graph re-reads it on replay);
//  - the buffers of its HostPipe (serialization): two pinned pieces and two events, allocated at
//    the first bulk transfer and kept; a concurrent second transfer gets buffers of its own.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>

#include "backend/backend.hpp"
#include "cuda/cuda_check.hpp"
#include "kernels/concat_params.hpp"
#include "kernels/device_error.hpp"

namespace kvp::detail {

// A validated tensor as the kernels read it (kernels/concat_params.hpp).
inline cuda::InputDesc input_desc(const TensorArg& t) {
  return cuda::InputDesc{t.data, t.stride_t, t.stride_h, t.stride_d, t.dtype, t.itemsize};
}

class CudaBackend final : public Backend {
 public:
  static constexpr int kSlots = 64;
  static constexpr size_t kInitialSlotBytes = 16 * 1024;
  static constexpr size_t kGraphArenaBytes = 1024 * 1024;
  static constexpr size_t kPipePieceBytes = 2 * 1024 * 1024;

  // Pinned slots and their events for a HostPipe (see backend.hpp).
  struct PipeBuffers {
    uint8_t* host[2] = {};
    cudaEvent_t done[2] = {};
    size_t bytes = kPipePieceBytes;  // of each slot
    bool allocated() const noexcept { return host[1] != nullptr; }
  };

  CudaBackend(int32_t device, const HostAllocator& alloc, const char* function);
  ~CudaBackend() override;

  kvp_device_type device_type() const noexcept override { return KVP_DEVICE_CUDA; }
  int32_t device_id() const noexcept override { return device_; }
  // One cudaMalloc per layer, zero-filled.
  void alloc_layers(size_t n, size_t bytes, Fill fill, uint8_t** layers) override;
  void release_layers(uint8_t* const* layers, size_t n, size_t bytes) noexcept override;
  void copy_to_host(void* host_dst, const void* src, size_t bytes, kvp_stream stream, bool sync,
                    const char* function) override;
  void copy_from_host(void* dst, const void* host_src, size_t bytes, kvp_stream stream, bool sync,
                      const char* function) override;
  void copy_within(void* dst, const void* src, size_t bytes, kvp_stream stream) override;
  HostPtr<HostPipe> host_pipe(const char* function, size_t min_piece_bytes = 0) override;
  void concatenate(const ConcatJob& job, kvp_stream stream) override;  // cuda_concat.cpp
  void attend(const AttentionJob& job, const ConcatJob* write, kvp_stream stream) override;  // cuda_attention.cpp

  // cuda_check for calls made on behalf of the cache: a sticky CUDA error (the device faulted) is
  // also recorded as the sticky asynchronous error, so the cache refuses further work.
  void check(cudaError_t err, const char* function, const char* what);
  // Whether `s` is capturing a graph (throws KVP_ERR_DEVICE when its capture was invalidated).
  bool capturing(cudaStream_t s, const char* function);


  // Reads the mirror and records a new device-side error (recoverable). With `check_device`,
  // first asks the runtime whether the device has a sticky fault (one cheap stream query) and
  // records that as a sticky KVP_ERR_DEVICE.
  void poll(bool check_device);

  // A staging region for `bytes` of host-resident metadata: `host` is pinned memory the caller
  // fills, `device` the matching device memory the kernel reads. Call finish_staging(stream)
  // after enqueueing the copy and the kernel. Outside capture this may wait for the kernel that
  // last used the ring slot (only when the ring wraps before the GPU catches up) and may grow
  // the slots (allocation); while `stream` is capturing it takes graph-arena memory instead and
  // never allocates or waits (throws UNSUPPORTED when the arena is exhausted).
  struct Staging {
    uint8_t* host = nullptr;
    uint8_t* device = nullptr;
    int slot = -1;  // ring slot, or -1 for graph-arena memory
  };
  Staging begin_staging(size_t bytes, cudaStream_t stream, bool capturing, const char* function);
  // Makes sure that two begin_staging() calls of `first` and then `second` bytes will neither
  // allocate nor run out of graph-arena memory (throws here instead, before either is made).
  void reserve_staging(size_t first, size_t second, bool capturing, const char* function);
  void finish_staging(const Staging& s, cudaStream_t stream, const char* function);
  // After a launch failed with cudaErrorInvalidResourceHandle: waits out the staged copy and, where
  // the runtime can tell (CUDA 12.8+), throws INVALID_ARGUMENT when `s` belongs to another device.
  void refuse_foreign_stream(cudaStream_t s, const Staging& staging, const char* function);
  // Device scratch of at least `bytes` for split partial states (grown outside graph capture;
  // nullptr when capturing and it is smaller). Reused by every call: calls on one cache do not
  // overlap on the device (ops.h). A buffer a captured graph uses is never freed before the
  // backend: growing past it retires it (a replay may still write into it).
  void* attention_scratch(size_t bytes, bool capturing, const char* function);
  // Bytes concatenate() stages for a host-validated job (0: its runs travel in the launch).
  static size_t concat_staged_bytes(const ConcatJob& job);

  int sm_count() const noexcept { return sm_count_; }

 protected:
  void poll_device() override { poll(true); }
  void reset_device_errors() override;

 private:
  void free_all() noexcept;
  // cudaMalloc of `bytes`, zero-filled on the internal stream (waited for).
  void* alloc_zeroed(size_t bytes, const char* fn);
  void grow_slots(size_t bytes, const char* function);

  int32_t device_;
  HostAllocator alloc_;
  DeviceErrorRecord* d_error_ = nullptr;
  DeviceErrorRecord* m_error_ = nullptr;      // host address of the mapped mirror
  DeviceErrorRecord* m_error_dev_ = nullptr;  // device address of the mapped mirror
  bool reported_ = false;
  std::mutex poll_mu_;  // poll() runs from const calls, which may be concurrent
  int sm_count_ = 0;
  cudaStream_t aux_ = nullptr;  // non-blocking stream for resets

  size_t slot_bytes_ = 0;
  uint8_t* ring_host_ = nullptr;
  uint8_t* ring_device_ = nullptr;
  cudaEvent_t events_[kSlots] = {};
  bool event_pending_[kSlots] = {};
  int next_slot_ = 0;

  void* attn_scratch_ = nullptr;
  size_t attn_scratch_bytes_ = 0;
  bool attn_scratch_captured_ = false;  // a captured graph writes into attn_scratch_
  // Buffers graphs were captured with, freed with the backend (each growth doubles: few).
  void* attn_retired_[64] = {};
  int attn_retired_count_ = 0;

  uint8_t* arena_host_ = nullptr;
  uint8_t* arena_device_ = nullptr;
  size_t arena_used_ = 0;

  // Set while a HostPipe uses pipe_ (a flag, not a mutex: a second transfer on the same thread,
  // from a writer callback, must also see it taken).
  std::atomic<bool> pipe_busy_{false};
  PipeBuffers pipe_;
};

}  // namespace kvp::detail
