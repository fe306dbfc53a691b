// Config validation, derived geometry and creation (SPEC.md §1–2, §7.1).
#pragma once

#include <cstdint>

#include "kvpages/cache.h"
#include "kvpages/config.h"

namespace kvp::detail {

// Derived geometry of a validated config (the internal twin of kvp_layout_info).
struct Layout {
  bool v3 = true;
  bool h64 = false;
  kvp_dtype dtype = KVP_DTYPE_BF16;
  int64_t itemsize = 2;
  int64_t num_layers = 0;
  int64_t num_pages = 0;          // P
  int64_t page_size = 0;          // S
  int64_t num_kv_heads = 0;       // H
  int64_t head_dim = 0;           // D (k_headdim)
  int64_t packing = 1;            // pack
  int64_t combined_heads = 0;     // Cst (v3) or 2H (v2): entries per token along the combined axis
  int64_t groups = 0;             // G (v3) or 2H (v2)
  int64_t storage_head_dim = 0;   // Dst (v3) or D (v2): lanes per combined entry
  int ndim = 5;
  int64_t shape[5] = {0, 0, 0, 0, 0};
  int64_t token_elems = 0;        // combined_heads * storage_head_dim: elements per (page, row)
  int64_t page_elems = 0;         // page_size * token_elems
  int64_t layer_elems = 0;        // num_pages * page_elems
  int64_t layer_bytes = 0;
  int64_t page_bytes_per_layer = 0;
  int64_t max_num_seqs = 0;

  // Element offset of key (kv = 0) or value (kv = 1) lane d of KV head h at (page, row) inside a
  // layer buffer, per SPEC.md §3. Lanes d < head_dim only.
  int64_t offset(int64_t page, int64_t row, int64_t head, int kv, int64_t d) const {
    const int64_t slot = page * page_size + row;
    if (h64) return (slot * combined_heads + head) * storage_head_dim + kv * 64 + d;
    return (slot * combined_heads + 2 * head + kv) * storage_head_dim + d;
  }
};

// Validates a config record (throws with a message naming the field).
void validate_config(const kvp_config& cfg, const char* function);
// Validates and computes the derived geometry. num_pages may be -1 (then P-dependent sizes are 0).
Layout layout_of(const kvp_config& cfg, const char* function);
// Copies a caller struct with size/version checks and zero-fill of fields the caller lacks.
kvp_config read_config(const kvp_config* cfg, const char* function);

int64_t max_num_seqs(const kvp_config& cfg);

}  // namespace kvp::detail

namespace kvp::detail {
int64_t page_size_bytes(int64_t page_size, int64_t num_kv_heads, int64_t head_size, kvp_dtype dtype);
int64_t num_slices_per_update_page(int64_t page_size_bytes);
int64_t hbm_budget_bytes(const kvp_memory_stats* stats, uint32_t n, double util, uint32_t mode, int64_t margin);
void device_memory_stats(kvp_device_type type, int32_t id, kvp_memory_stats* out);
kvp_config create_config(const kvp_config_options& opts, const char* function);
kvp_plan plan_of(const kvp_config& cfg, const char* function);
int64_t padded_num_slices(const kvp_config& cfg, int64_t num_tokens, int64_t max_reqs, const char* function);
}  // namespace kvp::detail
