// Config validation, derived geometry and creation (SPEC.md §1–2, §7.1).
#pragma once

#include <cstdint>
#include <climits>

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

// Validates a config record (throws with a message naming the field).
void validate_config(const kvp_config& cfg, const char* function);
// Validates and computes the derived geometry. num_pages may be -1 (then P-dependent sizes are 0).
Layout layout_of(const kvp_config& cfg, const char* function);
// The public description of a layout (kvp_config_get_layout, kvp_cache_get_layout).
kvp_layout_info layout_info_of(const Layout& layout);
// Copies a caller struct with size/version checks and zero-fill of fields the caller lacks.
kvp_config read_config(const kvp_config* cfg, const char* function);

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
