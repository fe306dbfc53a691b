// The cache: config + derived layout + one buffer per layer on a backend.
#pragma once

#include <atomic>
#include <functional>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "backend/backend.hpp"
#include "core/config.hpp"
#include "kvpages/cache.h"
#include "util/handle.hpp"

namespace kvp::detail {

class Cache {
 public:
  // Allocates all layer buffers (zeroed). Throws on failure, leaking nothing.
  Cache(const kvp_config& cfg, std::unique_ptr<Backend> backend);
  ~Cache();
  Cache(const Cache&) = delete;
  Cache& operator=(const Cache&) = delete;

  const kvp_config& config() const noexcept { return config_; }
  const Layout& layout() const noexcept { return layout_; }
  Backend& backend() const noexcept { return *backend_; }
  kvp_device_type device_type() const noexcept { return backend_->device_type(); }
  int32_t device_id() const noexcept { return backend_->device_id(); }
  int64_t num_layers() const noexcept { return layout_.num_layers; }

  // Raw buffer of a layer (host pointer for CPU caches, device pointer for CUDA caches).
  uint8_t* layer_data(int64_t layer) const noexcept { return layers_[static_cast<size_t>(layer)]; }
  size_t layer_bytes() const noexcept { return static_cast<size_t>(layout_.layer_bytes); }
  size_t page_bytes() const noexcept { return static_cast<size_t>(layout_.page_bytes_per_layer); }

  // Throws INVALID_ARGUMENT naming `function` when the layer index is out of range.
  void check_layer(int64_t layer, const char* function) const;

  // Fills a view descriptor (KVP_VIEW_*).
  kvp_tensor view(int64_t layer, kvp_view_kind kind) const;

  // Asynchronous (device) error state. A recoverable error (device-side validation) can be
  // cleared; a sticky one cannot.
  void set_async_error(kvp_status code, std::string message, bool sticky);
  kvp_status async_error(std::string* message) const;
  bool clear_async_error();  // false when the error is sticky
  // Throws DEVICE_LOST when an async error is pending (called by every mutating/reading op).
  void check_healthy(const char* function) const;

  // Hook for backends to poll device-side error flags before reporting state (CUDA). May be null.
  std::function<void(Cache&)> poll_async;
  // Per-backend private state (CUDA: streams, scratch, device error flag). Owned here.
  std::shared_ptr<void> backend_state;

 private:
  kvp_config config_;
  Layout layout_;
  std::unique_ptr<Backend> backend_;
  std::vector<uint8_t*> layers_;
  mutable std::mutex async_mu_;
  kvp_status async_code_ = KVP_OK;
  bool async_sticky_ = false;
  std::string async_message_;
};

}  // namespace kvp::detail

// The public handle: a header for validation plus the implementation.
struct kvp_cache {
  kvp::detail::handle_header hdr;
  kvp::detail::Cache* impl;
  kvp_host_allocator allocator;  // copy of the caller's allocator (alloc == nullptr: built-in)
};

namespace kvp::detail {
// Validates a cache handle (NULL, registry, magic); throws INVALID_HANDLE.
Cache& cache_from(const kvp_cache* h, const char* function);
}  // namespace kvp::detail
