#include "core/shard.hpp"

#include <algorithm>
#include <cstring>

#include "core/config.hpp"
#include "core/math.hpp"
#include "util/checked.hpp"
#include "util/error.hpp"

namespace kvp::detail {

ShardCoord shard_coord(const kvp_config& cfg, int64_t tp_rank, int64_t dp_rank, const char* fn) {
  const Sharding s = sharding_of(cfg);
  if (tp_rank < 0 || tp_rank >= s.shards)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: tp_rank %lld is out of range [0, %lld) (the config's kv_head_shards)", fn,
         ll(tp_rank), ll(s.shards));
  if (dp_rank < 0 || dp_rank >= s.dp)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: dp_rank %lld is out of range [0, %lld) (the config's data_parallel_size)", fn,
         ll(dp_rank), ll(s.dp));
  return {tp_rank, s.shards, dp_rank, s.dp};
}

Layout shard_layout(const kvp_config& cfg, const ShardCoord& sh, const char* fn) {
  Layout L = layout_of(cfg, fn);
  if (sh.tp_size == 1 && sh.dp_size == 1) return L;
  // The config's validation guarantees the divisions (SPEC.md §7.3): groups % kv_head_shards,
  // num_pages % data_parallel_size.
  L.groups /= sh.tp_size;
  L.combined_heads /= sh.tp_size;
  L.slot_begin = sh.tp_rank * L.combined_heads;
  L.num_pages /= sh.dp_size;
  L.page_begin = sh.dp_rank * L.num_pages;
  L.shape[0] = L.num_pages;
  L.shape[2] = L.groups;
  L.token_elems = L.combined_heads * L.storage_head_dim;
  L.page_elems = L.page_size * L.token_elems;
  L.layer_elems = L.num_pages * L.page_elems;
  L.layer_bytes = L.layer_elems * L.itemsize;
  L.page_bytes_per_layer = L.page_elems * L.itemsize;
  L.shard = true;
  return L;
}

HeadRange held_heads(const Layout& L, int kv) {
  const int64_t first = L.slot_begin, last = L.slot_begin + L.data_entries();  // data entries [first, last)
  if (L.h64) return {first, std::max(first, last)};
  // Entry 2h + kv holds head h: the heads with first <= 2h + kv < last.
  const int64_t begin = (first - kv + 1) / 2, end = (last - kv + 1) / 2;
  return {begin, std::max(begin, end)};
}

HeadRange tensor_heads(const Layout& L) {
  const HeadRange k = held_heads(L, 0), v = held_heads(L, 1);
  if (k.begin == k.end) return v;
  if (v.begin == v.end) return k;
  return {std::min(k.begin, v.begin), std::max(k.end, v.end)};
}

kvp_shard_info shard_info_of(const Layout& L, const ShardCoord& sh) {
  kvp_shard_info info;
  std::memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  info.tp_rank = static_cast<int32_t>(sh.tp_rank);
  info.tp_size = static_cast<int32_t>(sh.tp_size);
  info.dp_rank = static_cast<int32_t>(sh.dp_rank);
  info.dp_size = static_cast<int32_t>(sh.dp_size);
  info.slot_begin = L.slot_begin;
  info.slot_end = L.slot_begin + L.combined_heads;
  const HeadRange t = tensor_heads(L), k = held_heads(L, 0), v = held_heads(L, 1);
  info.head_begin = t.begin;
  info.head_end = t.end;
  info.key_head_begin = k.begin;
  info.key_head_end = k.end;
  info.value_head_begin = v.begin;
  info.value_head_end = v.end;
  info.page_begin = L.page_begin;
  info.page_end = L.page_begin + L.num_pages;
  info.global_pages = L.global_pages;
  return info;
}

}  // namespace kvp::detail
