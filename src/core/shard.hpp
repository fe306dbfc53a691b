// Shards of a cache (SPEC.md §7.3): which slice of the whole layout's combined entries and pages
// one (tensor rank, data rank) of a config holds, its local geometry, and the heads a key/value
// tensor for it carries.
#pragma once

#include <cstdint>

#include "backend/geometry.hpp"
#include "kvpages/cache.h"
#include "kvpages/config.h"

namespace kvp::detail {

// Which shard a caller asks for (kvp_cache_create_shard).
struct ShardRanks {
  int64_t tp_rank, dp_rank;
};

// A shard's coordinates: ranks and the number of slices of each axis (1 = not cut).
struct ShardCoord {
  int64_t tp_rank = 0, tp_size = 1;
  int64_t dp_rank = 0, dp_size = 1;
};

// The coordinates of shard (tp_rank, dp_rank) of a validated config (ranks checked against its
// kv_head_shards and data_parallel_size: INVALID_ARGUMENT naming the range).
ShardCoord shard_coord(const kvp_config& cfg, int64_t tp_rank, int64_t dp_rank, const char* function);

// The geometry of a shard's buffers: the whole layout with the combined axis and the pages cut
// to the shard's slice (slot_begin, page_begin, global_pages set). ShardCoord{} is the whole.
Layout shard_layout(const kvp_config& cfg, const ShardCoord& shard, const char* function);

// KV heads [begin, end).
struct HeadRange {
  int64_t begin = 0, end = 0;
};
// The heads whose keys (kv = 0) or values (kv = 1) a layout's data entries hold.
HeadRange held_heads(const Layout& L, int kv);
// The heads of a local key/value tensor: every head of which keys or values are held.
HeadRange tensor_heads(const Layout& L);

// The public description (kvp_config_get_shard, kvp_cache_get_shard).
kvp_shard_info shard_info_of(const Layout& L, const ShardCoord& shard);

}  // namespace kvp::detail
