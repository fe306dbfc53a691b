// Page geometry of a cache: the plain numbers every backend and kernel needs to address the
// layer buffers (SPEC.md §3). Core derives it from a validated config (core/config.hpp).
#pragma once

#include <cstdint>

#include "kvpages/types.h"

namespace kvp::detail {

// Derived geometry of a validated config (the internal twin of kvp_layout_info). Plain data,
// usable in device code (offset() is host-only).
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

}  // namespace kvp::detail
