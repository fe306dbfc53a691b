// Host-side helpers shared by the CUDA backend: error mapping and the device guard.
// Part of the CUDA backend (src/cuda), compiled only when the build has CUDA.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kvpages/status.h"
#include "util/error.hpp"

namespace kvp::detail {

// Maps a CUDA error to the kvpages status a caller should see:
// allocation failures -> DEVICE_OUT_OF_MEMORY, missing device/driver -> NO_DEVICE, anything else
// -> DEVICE.
kvp_status cuda_status_of(cudaError_t err) noexcept;

// True for errors after which the CUDA context is unusable (the cache must be destroyed).
bool cuda_error_is_sticky(cudaError_t err) noexcept;

// Throws error(cuda_status_of(err), "<function>: <what> failed: <cuda name>: <cuda message>") when
// err != cudaSuccess, after clearing the (non-sticky) per-thread CUDA error state.
void cuda_check(cudaError_t err, const char* function, const char* what);

// Takes `err` back out of the calling thread's last-error state when that state holds it (no-op
// for cudaSuccess), so the caller's own cudaGetLastError() does not report an error a kvpages call
// made and handled. A sticky error stays: the runtime does not clear those.
void forget_error(cudaError_t err) noexcept;

// Sets device `device` as the calling thread's current CUDA device for the guard's lifetime and
// restores the caller's current device afterwards (only calls cudaSetDevice when they differ).
class DeviceGuard {
 public:
  DeviceGuard(int32_t device, const char* function);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
  bool switched_ = false;
};

}  // namespace kvp::detail
