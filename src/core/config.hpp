// Config validation, derived geometry and creation (SPEC.md §1–2, §7.1).
#pragma once

#include <climits>
#include <cstddef>
#include <cstdint>

#include "kvpages/cache.h"
#include "kvpages/config.h"
#include "backend/geometry.hpp"

namespace kvp::detail {

// Bounds of the config fields (include/kvpages/config.h documents them). Positions, context
// lengths and page ids are int32; every dimension of a page is bounded by the 16 MiB a page of one
// layer may have; each layer is one allocation, so their count bounds the per-layer overhead.
constexpr int64_t kMaxLayers = 65536;
constexpr int64_t kMaxModelLength = INT32_MAX;
constexpr int64_t kMaxPageDim = int64_t{1} << 24;  // page_size, num_kv_heads, k_headdim
constexpr int64_t kMaxNumPages = INT32_MAX;
constexpr int64_t kMaxNumTokens = INT32_MAX;
constexpr int64_t kMaxNumReqs = INT32_MAX - 1;  // query_start_loc has max_num_reqs + 1 int32 entries

constexpr int64_t kMaxShards = 65536;  // kv_head_shards, data_parallel_size: devices of one mesh axis

// Sizes of version 1 of the structs that grew in 1.3 (the smallest a caller may hand in).
constexpr size_t kConfigV1Size = offsetof(kvp_config, data_parallel_size);
constexpr size_t kConfigOptionsV1Size = offsetof(kvp_config_options, data_parallel_size);
constexpr size_t kPlanV1Size = offsetof(kvp_plan, data_parallel_size);

// The sharding fields of a record with their "0 = default" spelled out (SPEC.md §7.3).
struct Sharding {
  int64_t dp;                  // data-parallel page shards
  int64_t shards;              // effective KV-head shards
  int64_t requested_shards;    // what was asked for
  kvp_dtype requested_dtype;   // what was asked for
};
Sharding sharding_of(const kvp_config& cfg);

// The reference's KV-head resolution: the shards and dtype for S devices (SPEC.md §7.3).
struct HeadSharding {
  int64_t shards;
  kvp_dtype dtype;
  uint32_t kind;  // KVP_HEAD_SHARDING_*
};
HeadSharding resolve_head_sharding(kvp_layout version, int64_t num_kv_heads, int64_t head_dim, kvp_dtype dtype,
                                   int64_t S);
// What is split over the KV-head devices: v3 storage groups of `dtype`, v2 combined heads.
int64_t head_split_units(kvp_layout version, int64_t num_kv_heads, int64_t head_dim, kvp_dtype dtype);

// Validates a config record (throws with a message naming the field).
void validate_config(const kvp_config& cfg, const char* function);
// Validates and computes the derived geometry. num_pages may be -1 (then P-dependent sizes are 0).
Layout layout_of(const kvp_config& cfg, const char* function);
// Validates a config that must have its pages computed (INVALID_ARGUMENT when num_pages < 1).
Layout layout_with_pages(const kvp_config& cfg, const char* function);
// The public description of a layout (kvp_config_get_layout, kvp_cache_get_layout).
kvp_layout_info layout_info_of(const Layout& layout);
// A version 1 record (zeros) is unsharded: spell that out (1), so every record kvpages holds,
// returns or writes to JSON says so.
void spell_out_sharding(kvp_config& cfg);
// Copies a caller struct with size/version checks and zero-fill of fields the caller lacks;
// spells out the sharding.
kvp_config read_config(const kvp_config* cfg, const char* function);
// Whether a caller's record opted in to version 2 before a call that writes it: struct_size and
// abi_version set to exactly version 2's (KVP_CONFIG_INIT, kvp_config_init()). Uninitialised
// memory of a 1.0–1.2 caller practically never does.
bool config_wants_v2(const kvp_config* out);
// Marks a record as version 2 (`v2`) or version 1 (struct_size, abi_version), as written.
void set_config_version(kvp_config& cfg, bool v2);
// Writes a record into a caller's: version 2 if `v2`, else only the version 1 bytes.
void write_config(kvp_config* out, kvp_config cfg, bool v2);

int64_t max_num_seqs(const kvp_config& cfg);

}  // namespace kvp::detail

namespace kvp::detail {
int64_t page_size_bytes(int64_t page_size, int64_t num_kv_heads, int64_t head_size, kvp_dtype dtype);
int64_t num_slices_per_update_page(int64_t page_size_bytes);
int64_t hbm_budget_bytes(const kvp_memory_stats* stats, uint32_t n, double util, uint32_t mode, int64_t margin);
kvp_config create_config(const kvp_config_options& opts, const char* function);
kvp_plan plan_of(const kvp_config& cfg, const char* function);
int64_t padded_num_slices(const kvp_config& cfg, int64_t num_tokens, int64_t max_reqs, const char* function);
}  // namespace kvp::detail
