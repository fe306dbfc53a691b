// CUDA backend, host side: device selection, allocation, copies, memory statistics, the device
// error record and the metadata staging ring (see cuda_backend.hpp).
#include "cuda/cuda_backend.hpp"

#include <algorithm>
#include <cstring>
#include <string>

namespace kvp::detail {

// ------------------------------------------------------------------------------------------------
// Errors and the device guard

kvp_status cuda_status_of(cudaError_t err) noexcept {
  switch (err) {
    case cudaSuccess:
      return KVP_OK;
    case cudaErrorMemoryAllocation:
      return KVP_ERR_DEVICE_OUT_OF_MEMORY;
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorInvalidDevice:
    case cudaErrorDevicesUnavailable:
    case cudaErrorSystemDriverMismatch:
    case cudaErrorCompatNotSupportedOnDevice:
      return KVP_ERR_NO_DEVICE;
    default:
      return KVP_ERR_DEVICE;
  }
}

bool cuda_error_is_sticky(cudaError_t err) noexcept {
  switch (err) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorAssert:
    case cudaErrorECCUncorrectable:
    case cudaErrorLaunchTimeout:
      return true;
    default:
      return false;
  }
}

void cuda_check(cudaError_t err, const char* function, const char* what) {
  if (err == cudaSuccess) return;
  (void)cudaGetLastError();  // clear the non-sticky per-thread error state
  fail(cuda_status_of(err), "%s: %s failed: %s: %s", function, what, cudaGetErrorName(err),
       cudaGetErrorString(err));
}

void forget_error(cudaError_t err) noexcept {
  if (err != cudaSuccess && cudaPeekAtLastError() == err) (void)cudaGetLastError();
}

DeviceGuard::DeviceGuard(int32_t device, const char* function) {
  cuda_check(cudaGetDevice(&previous_), function, "cudaGetDevice");
  if (previous_ != device) {
    cuda_check(cudaSetDevice(device), function, "cudaSetDevice");
    switched_ = true;
  }
}

DeviceGuard::~DeviceGuard() {
  if (switched_) (void)cudaSetDevice(previous_);
}

// ------------------------------------------------------------------------------------------------
// Device discovery and statistics

const char* cuda_backend_kind() noexcept {
#if defined(KVP_CUDA_EMULATION)
  return "cuemu";
#else
  return "on";
#endif
}

int32_t cuda_device_count() noexcept {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return static_cast<int32_t>(n);
}

static void require_device(int32_t device, const char* function) {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    fail(KVP_ERR_NO_DEVICE, "%s: CUDA device %d requested, but CUDA reports no usable device (%s: %s)",
         function, static_cast<int>(device), cudaGetErrorName(err), cudaGetErrorString(err));
  }
  if (device < 0 || device >= n)
    fail(KVP_ERR_NO_DEVICE, "%s: CUDA device %d requested, but this machine has %d CUDA device(s)",
         function, static_cast<int>(device), n);
}

void cuda_memory_stats(int32_t device, kvp_memory_stats* out) {
  const char* fn = "kvp_device_memory_stats";
  require_device(device, fn);
  DeviceGuard guard(device, fn);
  size_t free_bytes = 0, total_bytes = 0;
  cuda_check(cudaMemGetInfo(&free_bytes, &total_bytes), fn, "cudaMemGetInfo");
  std::memset(out, 0, sizeof *out);
  out->bytes_total = static_cast<int64_t>(total_bytes);
  out->bytes_in_use = static_cast<int64_t>(total_bytes - free_bytes);
  out->valid = 1;
}

HostPtr<Backend> make_cuda_backend(int32_t device, const HostAllocator& alloc, const char* function) {
  require_device(device, function);
  return make_host<CudaBackend>(alloc, device, alloc, function);
}

// ------------------------------------------------------------------------------------------------
// CudaBackend

CudaBackend::CudaBackend(int32_t device, const HostAllocator& alloc, const char* fn) : device_(device), alloc_(alloc) {
  DeviceGuard guard(device_, fn);
  try {
    cuda_check(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, device_), fn,
               "cudaDeviceGetAttribute");
    cuda_check(cudaStreamCreateWithFlags(&aux_, cudaStreamNonBlocking), fn, "cudaStreamCreateWithFlags");
    cuda_check(cudaMalloc(reinterpret_cast<void**>(&d_error_), sizeof(DeviceErrorRecord)), fn,
               "cudaMalloc (error record)");
    cuda_check(cudaMemsetAsync(d_error_, 0, sizeof(DeviceErrorRecord), aux_), fn, "cudaMemsetAsync (error record)");
    cuda_check(cudaStreamSynchronize(aux_), fn, "cudaStreamSynchronize");
    cuda_check(cudaHostAlloc(reinterpret_cast<void**>(&m_error_), sizeof(DeviceErrorRecord),
                             cudaHostAllocMapped),
               fn, "cudaHostAlloc (error mirror)");
    std::memset(m_error_, 0, sizeof(DeviceErrorRecord));
    cuda_check(cudaHostGetDevicePointer(reinterpret_cast<void**>(&m_error_dev_), m_error_, 0), fn,
               "cudaHostGetDevicePointer (error mirror)");
    for (int i = 0; i < kSlots; ++i)
      cuda_check(cudaEventCreateWithFlags(&events_[i], cudaEventDisableTiming), fn, "cudaEventCreate");
    grow_slots(kInitialSlotBytes, fn);
    cuda_check(cudaHostAlloc(reinterpret_cast<void**>(&arena_host_), kGraphArenaBytes, cudaHostAllocDefault),
               fn, "cudaHostAlloc (graph arena)");
    cuda_check(cudaMalloc(reinterpret_cast<void**>(&arena_device_), kGraphArenaBytes), fn,
               "cudaMalloc (graph arena)");
  } catch (...) {
    free_all();
    throw;
  }
}

static void free_pipe_buffers(CudaBackend::PipeBuffers& b) noexcept {
  for (int k = 0; k < 2; ++k) {
    if (b.done[k] != nullptr) (void)cudaEventDestroy(b.done[k]);
    if (b.host[k] != nullptr) (void)cudaFreeHost(b.host[k]);
    b.done[k] = nullptr;
    b.host[k] = nullptr;
  }
}

CudaBackend::~CudaBackend() {
  int previous = -1;
  bool switched = false;
  if (cudaGetDevice(&previous) == cudaSuccess && previous != device_)
    switched = cudaSetDevice(device_) == cudaSuccess;
  free_all();
  if (switched) (void)cudaSetDevice(previous);
}

void CudaBackend::free_all() noexcept {
  // Pending kernels may still read staging memory or write the error record.
  if (aux_ != nullptr) (void)cudaDeviceSynchronize();
  for (int i = 0; i < kSlots; ++i) {
    if (events_[i] != nullptr) (void)cudaEventDestroy(events_[i]);
    events_[i] = nullptr;
  }
  if (ring_host_ != nullptr) (void)cudaFreeHost(ring_host_);
  if (ring_device_ != nullptr) (void)cudaFree(ring_device_);
  if (arena_host_ != nullptr) (void)cudaFreeHost(arena_host_);
  if (arena_device_ != nullptr) (void)cudaFree(arena_device_);
  if (attn_scratch_ != nullptr) (void)cudaFree(attn_scratch_);
  attn_scratch_ = nullptr;
  attn_scratch_bytes_ = 0;
  for (int i = 0; i < attn_retired_count_; ++i) (void)cudaFree(attn_retired_[i]);
  attn_retired_count_ = 0;
  free_pipe_buffers(pipe_);
  if (m_error_ != nullptr) (void)cudaFreeHost(m_error_);
  if (d_error_ != nullptr) (void)cudaFree(d_error_);
  if (aux_ != nullptr) (void)cudaStreamDestroy(aux_);
  ring_host_ = ring_device_ = arena_host_ = arena_device_ = nullptr;
  m_error_ = m_error_dev_ = d_error_ = nullptr;
  aux_ = nullptr;
  (void)cudaGetLastError();
}

void* CudaBackend::alloc_zeroed(size_t bytes, const char* fn) {
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, bytes == 0 ? 1 : bytes);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    fail(cuda_status_of(err), "%s: cudaMalloc of %zu bytes on CUDA device %d failed: %s", fn, bytes,
         static_cast<int>(device_), cudaGetErrorString(err));
  }
  // Zero on the internal stream and wait: cudaMemset on the legacy stream would not be ordered
  // before kernels the caller later enqueues on a non-blocking stream.
  err = cudaMemsetAsync(p, 0, bytes, aux_);
  if (err == cudaSuccess) err = cudaStreamSynchronize(aux_);
  if (err != cudaSuccess) {
    (void)cudaFree(p);
    cuda_check(err, fn, "cudaMemset (zero fill)");
  }
  return p;
}

// Zero-filled even where `fill` allows stale memory: cudaMalloc hands out recycled device memory
// and no CUDA run has measured what skipping the memset would save.
void CudaBackend::alloc_layers(size_t n, size_t bytes, Fill, uint8_t** layers) {
  const char* fn = "kvp_cache_create";
  DeviceGuard guard(device_, fn);
  size_t done = 0;
  try {
    for (; done < n; ++done) layers[done] = static_cast<uint8_t*>(alloc_zeroed(bytes, fn));
  } catch (...) {
    release_layers(layers, done, bytes);
    throw;
  }
}

void CudaBackend::release_layers(uint8_t* const* layers, size_t n, size_t) noexcept {
  int previous = -1;
  bool switched = false;
  if (cudaGetDevice(&previous) == cudaSuccess && previous != device_)
    switched = cudaSetDevice(device_) == cudaSuccess;
  for (size_t l = 0; l < n; ++l) (void)cudaFree(layers[l]);  // cudaFree synchronises: pending work finishes first
  (void)cudaGetLastError();
  if (switched) (void)cudaSetDevice(previous);
}

// A copy the host waits for cannot be part of a graph: refuse it before enqueuing anything, so
// the caller's capture is not invalidated by an illegal call.
static void refuse_if_capturing(cudaStream_t s, const char* fn) {
  cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
  const cudaError_t err = cudaStreamIsCapturing(s, &cs);
  if (err == cudaErrorStreamCaptureImplicit) {
    forget_error(err);
    fail(KVP_ERR_UNSUPPORTED,
         "%s: a blocking stream of this device is being captured into a CUDA graph, so the legacy default "
         "stream this call would use cannot be used now; call it outside the capture (or capture on a "
         "non-blocking stream)",
         fn);
  }
  cuda_check(err, fn, "cudaStreamIsCapturing");
  if (cs != cudaStreamCaptureStatusNone)
    fail(KVP_ERR_UNSUPPORTED,
         "%s: the stream is being captured into a CUDA graph, and this call waits for its copy, which a "
         "graph cannot do; call it outside the capture",
         fn);
}

void CudaBackend::copy_to_host(void* host_dst, const void* src, size_t bytes, kvp_stream stream, bool sync,
                               const char* fn) {
  DeviceGuard guard(device_, fn);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (sync) refuse_if_capturing(s, fn);
  cuda_check(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, s), fn, "cudaMemcpyAsync D2H");
  if (sync) cuda_check(cudaStreamSynchronize(s), fn, "cudaStreamSynchronize");
}

void CudaBackend::copy_from_host(void* dst, const void* host_src, size_t bytes, kvp_stream stream, bool sync,
                                 const char* fn) {
  DeviceGuard guard(device_, fn);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (sync) refuse_if_capturing(s, fn);
  cuda_check(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, s), fn, "cudaMemcpyAsync H2D");
  if (sync) cuda_check(cudaStreamSynchronize(s), fn, "cudaStreamSynchronize");
}

void CudaBackend::copy_within(void* dst, const void* src, size_t bytes, kvp_stream stream) {
  const char* fn = "copy_within";
  DeviceGuard guard(device_, fn);
  cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, reinterpret_cast<cudaStream_t>(stream)),
             fn, "cudaMemcpyAsync D2D");
}

// ------------------------------------------------------------------------------------------------
// HostPipe: double-buffered bulk transfers through pinned memory (serialization)

// Allocates both slots and events, or none (throws; current device must be the backend's).
static void alloc_pipe_buffers(CudaBackend::PipeBuffers& b, const char* fn) {
  try {
    for (int k = 0; k < 2; ++k) {
      cuda_check(cudaEventCreateWithFlags(&b.done[k], cudaEventDisableTiming), fn, "cudaEventCreate (host pipe)");
      cuda_check(cudaHostAlloc(reinterpret_cast<void**>(&b.host[k]), b.bytes, cudaHostAllocDefault),
                 fn, "cudaHostAlloc (host pipe)");
    }
  } catch (...) {
    free_pipe_buffers(b);
    throw;
  }
}

namespace {

class CudaHostPipe final : public HostPipe {
 public:
  // Uses `shared` (the backend's buffers) when slots of `min_bytes` fit them and it can claim them
  // through `busy`, and otherwise buffers of its own (slots of the larger size), freed by the
  // destructor.
  CudaHostPipe(int32_t device, CudaBackend::PipeBuffers* shared, std::atomic<bool>* busy, size_t min_bytes,
               const char* fn)
      : device_(device), fn_(fn) {
    bool expected = false;
    if (min_bytes <= shared->bytes && busy->compare_exchange_strong(expected, true, std::memory_order_acquire)) {
      busy_ = busy;
      buf_ = shared;
      try {
        if (!buf_->allocated()) alloc_pipe_buffers(*buf_, fn);
      } catch (...) {
        busy_->store(false, std::memory_order_release);
        throw;
      }
    } else {
      buf_ = &own_;
      own_.bytes = std::max(min_bytes, shared->bytes);
      alloc_pipe_buffers(own_, fn);
    }
  }
  ~CudaHostPipe() override {
    for (int k = 0; k < 2; ++k)
      if (pending_[k]) forget_error(cudaEventSynchronize(buf_->done[k]));
    if (busy_ != nullptr) busy_->store(false, std::memory_order_release);
    if (buf_ == &own_) free_pipe_buffers(own_);
  }
  CudaHostPipe(const CudaHostPipe&) = delete;
  CudaHostPipe& operator=(const CudaHostPipe&) = delete;

  size_t piece_bytes() const noexcept override { return buf_->bytes; }
  uint8_t* slot(int k) const noexcept override { return buf_->host[k]; }

  void download(int k, size_t offset, const void* src, size_t n) override {
    DeviceGuard guard(device_, fn_);
    cuda_check(cudaMemcpyAsync(buf_->host[k] + offset, src, n, cudaMemcpyDeviceToHost, nullptr), fn_,
               "cudaMemcpyAsync D2H (host pipe)");
  }
  void upload(int k, size_t offset, void* dst, size_t n) override {
    DeviceGuard guard(device_, fn_);
    cuda_check(cudaMemcpyAsync(dst, buf_->host[k] + offset, n, cudaMemcpyHostToDevice, nullptr), fn_,
               "cudaMemcpyAsync H2D (host pipe)");
  }
  void fence(int k) override {
    DeviceGuard guard(device_, fn_);
    cuda_check(cudaEventRecord(buf_->done[k], nullptr), fn_, "cudaEventRecord (host pipe)");
    pending_[k] = true;
  }
  void wait(int k) override {
    if (!pending_[k]) return;
    pending_[k] = false;
    cuda_check(cudaEventSynchronize(buf_->done[k]), fn_, "cudaEventSynchronize (host pipe)");
  }

 private:
  int32_t device_;
  const char* fn_;
  std::atomic<bool>* busy_ = nullptr;  // set when using the backend's buffers
  CudaBackend::PipeBuffers* buf_ = nullptr;
  CudaBackend::PipeBuffers own_;
  bool pending_[2] = {false, false};
};

}  // namespace

HostPtr<HostPipe> CudaBackend::host_pipe(const char* fn, size_t min_piece_bytes) {
  DeviceGuard guard(device_, fn);
  refuse_if_capturing(nullptr, fn);
  return make_host<CudaHostPipe>(alloc_, device_, &pipe_, &pipe_busy_, min_piece_bytes, fn);
}

// ------------------------------------------------------------------------------------------------
// Device-side validation errors

static std::string describe_device_error(const DeviceErrorRecord& r) {
  const long long i = static_cast<long long>(r.index), v = static_cast<long long>(r.value),
                  lim = static_cast<long long>(r.limit);
  switch (r.reason) {
    case kDevErrNumSeqs:
      return format("device-resident metadata: request_distribution[2] (num_seqs) is %lld, outside [0, %lld]", v, lim);
    case kDevErrQueryStart:
      return format("device-resident metadata: query_start_loc[%lld] = %lld is decreasing, negative or beyond "
                    "the %lld key/value tokens", i, v, lim);
    case kDevErrQueryLen:
      return format("device-resident metadata: request %lld has q_len %lld greater than its context_lens "
                    "value %lld", i, v, lim);
    case kDevErrPageIndex:
      return format("device-resident metadata: request %lld needs logical page %lld but page tables have "
                    "%lld pages per request", i, v, lim);
    case kDevErrPageId:
      return format("device-resident metadata: page id %lld at entry %lld is outside the cache's %lld pages",
                    v, i, lim);
    case kDevErrNumSlices:
      return format("device-resident metadata: num_kv_update_slices is %lld, outside [0, %lld]", v, lim);
    case kDevErrSliceLength:
      return format("device-resident metadata: slice %lld has negative length %lld", i, v);
    case kDevErrSliceSource:
      return format("device-resident metadata: slice %lld (source tokens from %lld) reads outside the %lld "
                    "key/value tokens", i, v, lim);
    case kDevErrSlot:
      return format("device-resident metadata: slice %lld (destination slots from %lld) writes outside the "
                    "cache's %lld slots", i, v, lim);
    case kDevErrPaddingRow:
      return format("device-resident metadata: request %lld is a padding row (query length 0, "
                    "data_parallel_size > 1) with context_len %lld, not 0", i, v);
    default:
      return format("device-resident metadata: unknown device error reason %d", static_cast<int>(r.reason));
  }
}

static std::string sticky_fault_message(int32_t device, cudaError_t err) {
  return format("CUDA device %d has a sticky fault (%s: %s), left by a kernel or copy on that device (kvpages' "
                "or another library's); its memory, this cache's included, can no longer be used: destroy the "
                "cache",
                static_cast<int>(device), cudaGetErrorName(err), cudaGetErrorString(err));
}

void CudaBackend::check(cudaError_t err, const char* function, const char* what) {
  if (err != cudaSuccess && cuda_error_is_sticky(err))
    set_async_error(KVP_ERR_DEVICE, sticky_fault_message(device_, err), true);
  cuda_check(err, function, what);
}

// While it lives, this thread's calls are in relaxed stream-capture mode: the internal-stream
// query and reset below are then allowed even while the caller (or another thread) captures a
// graph, instead of invalidating that capture. The caller's mode is restored afterwards.
class RelaxedCaptureMode {
 public:
  RelaxedCaptureMode() { ok_ = cudaThreadExchangeStreamCaptureMode(&mode_) == cudaSuccess; }
  ~RelaxedCaptureMode() {
    if (ok_) (void)cudaThreadExchangeStreamCaptureMode(&mode_);
  }
  RelaxedCaptureMode(const RelaxedCaptureMode&) = delete;
  RelaxedCaptureMode& operator=(const RelaxedCaptureMode&) = delete;

 private:
  cudaStreamCaptureMode mode_ = cudaStreamCaptureModeRelaxed;
  bool ok_ = false;
};

void CudaBackend::poll(bool check_device) {
  if (m_error_ == nullptr) return;
  std::lock_guard<std::mutex> lock(poll_mu_);
  if (check_device) {
    // The internal stream is idle (its work is always waited for), so the query costs no wait;
    // on a device with a sticky fault every runtime call returns that fault.
    RelaxedCaptureMode relaxed;
    const cudaError_t err = cudaStreamQuery(aux_);
    if (err != cudaSuccess) {
      forget_error(err);
      if (cuda_error_is_sticky(err)) {
        set_async_error(KVP_ERR_DEVICE, sticky_fault_message(device_, err), true);
        return;
      }
    }
  }
  if (reported_) return;  // waits for the user to clear it (reset_device_errors)
  volatile DeviceErrorRecord* m = m_error_;
  if (m->code == 0) return;
  DeviceErrorRecord r;
  r.code = m->code;
  r.reason = m->reason;
  r.index = m->index;
  r.value = m->value;
  r.limit = m->limit;
  if (r.reason == kDevErrNone) return;  // the kernel has claimed the record but not finished writing it
  const char* op = r.code == kDevOpAttention ? "kvp_attention" : "kvp_concatenate";
  set_async_error(KVP_ERR_INVALID_ARGUMENT,
                  std::string(op) + ": " + describe_device_error(r) +
                      "; invalid entries were skipped, and the cache refuses writes until the error is cleared",
                  false);
  reported_ = true;
}

// The user cleared a reported device-side error: reset the device record so kernels write again.
void CudaBackend::reset_device_errors() {
  std::lock_guard<std::mutex> lock(poll_mu_);
  if (!reported_) return;
  DeviceGuard guard(device_, "kvp_cache_clear_async_error");
  RelaxedCaptureMode relaxed;
  cudaError_t err = cudaMemsetAsync(d_error_, 0, kDeviceErrorResetBytes, aux_);
  if (err == cudaSuccess) err = cudaStreamSynchronize(aux_);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    set_async_error(KVP_ERR_DEVICE, format("resetting the device error record failed: %s", cudaGetErrorString(err)),
                    cuda_error_is_sticky(err));
    return;
  }
  std::memset(m_error_, 0, sizeof(DeviceErrorRecord));
  reported_ = false;
}

// ------------------------------------------------------------------------------------------------
// Launch helpers shared by the operations

bool CudaBackend::capturing(cudaStream_t s, const char* fn) {
  cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(s, &cs), fn, "cudaStreamIsCapturing");
  if (cs == cudaStreamCaptureStatusInvalidated)
    fail(KVP_ERR_DEVICE,
         "%s: the stream's graph capture was invalidated by an earlier CUDA call that a capture does not "
         "allow; end it with cudaStreamEndCapture (which reports the failure) and capture again",
         fn);
  return cs == cudaStreamCaptureStatusActive;
}

// A kernel cannot be launched into a stream of another device than the current one (the cache's):
// the launch fails with cudaErrorInvalidResourceHandle and nothing of the cache is written. A
// metadata copy enqueued before the launch may still be queued on that stream, so it is waited
// for before its ring slot can be handed out again. Then, where the runtime can say which device
// the stream belongs to (CUDA 12.8+), the caller's mistake is reported as such.
void CudaBackend::refuse_foreign_stream(cudaStream_t s, const Staging& staging, const char* fn) {
  forget_error(cudaErrorInvalidResourceHandle);  // the failed launch's; it is reported below
  if (staging.slot >= 0) forget_error(cudaStreamSynchronize(s));
#if CUDART_VERSION >= 12080
  int stream_device = -1;
  const cudaError_t err = cudaStreamGetDevice(s, &stream_device);
  if (err != cudaSuccess) {
    forget_error(err);
    return;
  }
  if (stream_device != device_)
    fail(KVP_ERR_INVALID_ARGUMENT,
         "%s: the stream belongs to CUDA device %d but the cache is on device %d; enqueue on a stream of "
         "device %d (or NULL, that device's legacy default stream). Nothing was written",
         fn, stream_device, static_cast<int>(device_), static_cast<int>(device_));
#else
  (void)fn;
#endif
}

void* CudaBackend::attention_scratch(size_t bytes, bool capture, const char* function) {
  if (bytes <= attn_scratch_bytes_) {
    attn_scratch_captured_ = attn_scratch_captured_ || capture;
    return attn_scratch_;
  }
  if (capture) return nullptr;
  size_t cap = attn_scratch_bytes_ == 0 ? size_t{1} << 20 : attn_scratch_bytes_;
  while (cap < bytes) cap *= 2;
  void* d = nullptr;
  check(cudaMalloc(&d, cap), function, "cudaMalloc (attention scratch)");
  if (attn_scratch_captured_ && attn_retired_count_ < 64) {
    attn_retired_[attn_retired_count_++] = attn_scratch_;  // a replay may write into it (64 doublings: never full)
  } else if (attn_scratch_ != nullptr) {
    (void)cudaFree(attn_scratch_);  // synchronises: no kernel still uses it
  }
  attn_scratch_captured_ = false;
  attn_scratch_ = d;
  attn_scratch_bytes_ = cap;
  return d;
}

// ------------------------------------------------------------------------------------------------
// Staging of host-resident metadata

void CudaBackend::grow_slots(size_t bytes, const char* function) {
  size_t cap = slot_bytes_ == 0 ? kInitialSlotBytes : slot_bytes_;
  while (cap < bytes) cap *= 2;
  // Wait for every kernel that may still read the old slots.
  for (int i = 0; i < kSlots; ++i)
    if (event_pending_[i]) {
      cuda_check(cudaEventSynchronize(events_[i]), function, "cudaEventSynchronize (staging)");
      event_pending_[i] = false;
    }
  uint8_t* h = nullptr;
  uint8_t* d = nullptr;
  cuda_check(cudaHostAlloc(reinterpret_cast<void**>(&h), cap * kSlots, cudaHostAllocDefault), function,
             "cudaHostAlloc (metadata staging)");
  cudaError_t err = cudaMalloc(reinterpret_cast<void**>(&d), cap * kSlots);
  if (err != cudaSuccess) {
    (void)cudaFreeHost(h);
    cuda_check(err, function, "cudaMalloc (metadata staging)");
  }
  if (ring_host_ != nullptr) (void)cudaFreeHost(ring_host_);
  if (ring_device_ != nullptr) (void)cudaFree(ring_device_);
  ring_host_ = h;
  ring_device_ = d;
  slot_bytes_ = cap;
}

CudaBackend::Staging CudaBackend::begin_staging(size_t bytes, cudaStream_t stream, bool capturing,
                                                const char* function) {
  Staging s;
  if (capturing) {
    reserve_staging(bytes, 0, true, function);
    const size_t aligned = (bytes + 255) & ~static_cast<size_t>(255);
    s.host = arena_host_ + arena_used_;
    s.device = arena_device_ + arena_used_;
    arena_used_ += aligned;
    return s;
  }
  if (bytes > slot_bytes_) grow_slots(bytes, function);
  const int i = next_slot_;
  next_slot_ = (next_slot_ + 1) % kSlots;
  if (event_pending_[i]) {
    // Only waits when kSlots calls are still queued on the GPU; normally the event has completed.
    cudaError_t q = cudaEventQuery(events_[i]);
    if (q == cudaErrorNotReady) {
      forget_error(q);  // the runtime also leaves "not ready" in the thread's last-error state
      q = cudaEventSynchronize(events_[i]);
    }
    cuda_check(q, function, "cudaEventSynchronize (staging)");
    event_pending_[i] = false;
  }
  s.slot = i;
  s.host = ring_host_ + static_cast<size_t>(i) * slot_bytes_;
  s.device = ring_device_ + static_cast<size_t>(i) * slot_bytes_;
  return s;
}

void CudaBackend::reserve_staging(size_t first, size_t second, bool capturing, const char* function) {
  if (!capturing) {
    const size_t most = first > second ? first : second;
    if (most > slot_bytes_) grow_slots(most, function);
    return;
  }
  const size_t bytes = ((first + 255) & ~static_cast<size_t>(255)) + ((second + 255) & ~static_cast<size_t>(255));
  if (arena_used_ + bytes > kGraphArenaBytes)
    fail(KVP_ERR_UNSUPPORTED,
         "%s: the stream is being captured into a CUDA graph and the %zu bytes of host-resident metadata do not fit "
         "in the cache's graph staging arena (%zu of %zu bytes left); pass device-resident metadata when capturing "
         "graphs",
         function, bytes, kGraphArenaBytes - arena_used_, kGraphArenaBytes);
}

void CudaBackend::finish_staging(const Staging& s, cudaStream_t stream, const char* function) {
  if (s.slot < 0) return;
  cuda_check(cudaEventRecord(events_[s.slot], stream), function, "cudaEventRecord (staging)");
  event_pending_[s.slot] = true;
}

}  // namespace kvp::detail
