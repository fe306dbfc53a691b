// Cache groups (kvp_cache_group_*): every shard of a sharded config in one process, created,
// written and destroyed together. The group owns its shards' cache handles and lends them out
// (util/handle.hpp: kvp_cache_destroy refuses them).
#pragma once

#include <cstdint>

#include "core/cache.hpp"
#include "core/metadata.hpp"
#include "kvpages/group.h"
#include "util/handle.hpp"
#include "util/memory.hpp"

namespace kvp::detail {

class CacheGroup {
 public:
  CacheGroup(const kvp_config& cfg, const HostAllocator& alloc);
  ~CacheGroup();  // destroys the shards made so far
  CacheGroup(const CacheGroup&) = delete;
  CacheGroup& operator=(const CacheGroup&) = delete;

  int64_t size() const noexcept { return static_cast<int64_t>(shards_.size()); }
  // Shard (tp_rank, dp_rank); INVALID_ARGUMENT naming the ranges.
  kvp_cache* shard(int64_t tp_rank, int64_t dp_rank, const char* function) const;

  // kvp_cache_group_concatenate: every shard validated (prepare_concat) before any is written.
  void concatenate(int64_t layer, const kvp_tensor* keys, const kvp_tensor* values, int64_t num_shards,
                   const Metadata& md, const kvp_stream* streams, const char* function);

 private:
  friend kvp_cache_group* create_group(const kvp_config*, const int32_t*, uint32_t, const kvp_cache_options*,
                                       const char*);
  int64_t dp_size() const noexcept { return sharding_of(config_).dp; }
  kvp_config config_;  // the whole config (validated)
  HostAllocator alloc_;
  HostVector<kvp_cache*> shards_;  // shard i = tp_rank * dp_size + dp_rank; lent handles
};

// Creates every shard of `cfg` (all or nothing) and the group's handle. Throws; leaks nothing.
kvp_cache_group* create_group(const kvp_config* cfg, const int32_t* device_ids, uint32_t num_device_ids,
                              const kvp_cache_options* opts, const char* function);

}  // namespace kvp::detail

struct kvp_cache_group : kvp::detail::Handle<kvp::detail::CacheGroup, kvp::detail::kMagicGroup> {};

namespace kvp::detail {
inline CacheGroup& group_from(const kvp_cache_group* h, const char* function) { return handle_get(h, function); }
}  // namespace kvp::detail
