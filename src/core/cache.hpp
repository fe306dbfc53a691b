// The cache: config + derived layout + one buffer per layer on a backend.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "backend/backend.hpp"
#include "core/config.hpp"
#include "core/plan.hpp"
#include "core/shard.hpp"
#include "kvpages/cache.h"
#include "util/handle.hpp"
#include "util/memory.hpp"

namespace kvp::detail {

class Cache {
 public:
  // Allocates all layer buffers of the whole cache or of one shard of `cfg`: zeroed, or (`fill`
  // kOverwritten) holding anything, for a caller that writes every byte before the cache is seen.
  // Throws on failure, leaking nothing.
  Cache(const kvp_config& cfg, const ShardCoord& shard, HostPtr<Backend> backend, const HostAllocator& alloc,
        Backend::Fill fill = Backend::Fill::kZero);
  ~Cache();
  Cache(const Cache&) = delete;
  Cache& operator=(const Cache&) = delete;

  const kvp_config& config() const noexcept { return config_; }
  const Layout& layout() const noexcept { return layout_; }
  const ShardCoord& shard() const noexcept { return shard_; }
  // Throws UNSUPPORTED naming `function` on a shard (`dp_only`: on a data-parallel shard).
  void refuse_shard(const char* function, bool dp_only = false) const;
  Backend& backend() const noexcept { return *backend_; }
  // Host memory of everything done on this cache's behalf (its allocator, or the process default).
  const HostAllocator& allocator() const noexcept { return alloc_; }
  kvp_device_type device_type() const noexcept { return backend_->device_type(); }
  int32_t device_id() const noexcept { return backend_->device_id(); }
  int64_t num_layers() const noexcept { return layout_.num_layers; }
  // Unique in the process and never reused (a destroyed cache's plans can never match another).
  uint64_t id() const noexcept { return id_; }
  // What a metadata keeps this cache's plans under (core/plan.hpp): its id and its own data rank,
  // or, once it shares the plans of a group (share_plans), the group's key and every data rank.
  PlanScope plan_scope() const noexcept { return plan_scope_; }
  void share_plans(uint64_t key) noexcept { plan_scope_ = {key, 0, shard_.dp_size}; }

  // Raw buffer of a layer (host pointer for CPU caches, device pointer for CUDA caches).
  uint8_t* layer_data(int64_t layer) const noexcept { return layers_[static_cast<size_t>(layer)]; }
  size_t layer_bytes() const noexcept { return static_cast<size_t>(layout_.layer_bytes); }
  size_t page_bytes() const noexcept { return static_cast<size_t>(layout_.page_bytes_per_layer); }

  // Throws INVALID_ARGUMENT naming `function` when the layer index is out of range.
  void check_layer(int64_t layer, const char* function) const;

  // Fills a view descriptor (KVP_VIEW_*).
  kvp_tensor view(int64_t layer, kvp_view_kind kind) const;

  // Whole-layer copies between the pages and host memory (kvp_cache_read_layer / write_layer).
  void read_layer(int64_t layer, void* host_dst, size_t cap, kvp_stream stream, const char* function) const;
  void write_layer(int64_t layer, const void* host_src, size_t size, kvp_stream stream, const char* function);

  // Asynchronous (device) errors: the backend owns the state; see Backend.
  kvp_status async_error(std::string* message) const { return backend_->async_error(message); }
  bool clear_async_error() { return backend_->clear_async_error(); }
  // Throws DEVICE_LOST when an async error is pending (called by every mutating/reading op).
  void check_healthy(const char* function) const { backend_->check_healthy(function); }

 private:
  kvp_config config_;
  ShardCoord shard_;
  Layout layout_;
  uint64_t id_;
  PlanScope plan_scope_;
  HostAllocator alloc_;
  HostPtr<Backend> backend_;
  HostVector<uint8_t*> layers_;
};

// Creates a cache and its handle (kvp_cache_create, and kvp_cache_create_shard with `ranks`): reads and validates the caller's config and options (NULL = defaults),
// builds the backend of the device they name (everything that can be checked is checked before a
// device is touched) and allocates the pages (zeroed unless `fill` says the caller overwrites
// them all: see Cache). Throws; leaks nothing.
// Version 1 of kvp_cache_options (1.0, 1.1) ends before `flags`: the smallest struct_size accepted.
constexpr size_t kCacheOptionsV1Size = offsetof(kvp_cache_options, flags);

kvp_cache* create_cache(const kvp_config* cfg, const kvp_cache_options* opts, const ShardRanks* ranks,
                        const char* function, Backend::Fill fill = Backend::Fill::kZero);

}  // namespace kvp::detail

// The public handle.
struct kvp_cache : kvp::detail::Handle<kvp::detail::Cache, kvp::detail::kMagicCache> {};

namespace kvp::detail {
// Validates a cache handle (NULL, registry, magic); throws INVALID_HANDLE.
inline Cache& cache_from(const kvp_cache* h, const char* function) { return handle_get(h, function); }
}  // namespace kvp::detail
