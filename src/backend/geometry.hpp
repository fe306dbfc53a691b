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
  // The slice of the whole cache these buffers hold (a shard, SPEC.md §7.3; core/shard.hpp): the
  // local combined entries are the whole layout's [slot_begin, slot_begin + combined_heads) and
  // the local pages its [page_begin, page_begin + num_pages). A whole cache: 0, 0, num_pages.
  int64_t slot_begin = 0;    // whole-layout combined entry of local entry 0 (v2/v3: 2h + kv; h64: h)
  int64_t page_begin = 0;    // global page id of local page 0
  int64_t global_pages = 0;  // pages of the whole cache: the page ids metadata uses
  bool shard = false;        // a slice of heads or pages, not the whole cache
  int64_t data_parallel_size = 1;  // the config's page shards (of the whole cache, shard or not)

  // Local entries that hold data (the rest of a row is zero padding): whole-layout entries up to
  // 2H (h64: H) that fall in the slice.
  int64_t data_entries() const {
    const int64_t end = h64 ? num_kv_heads : 2 * num_kv_heads;
    const int64_t n = end - slot_begin;
    return n < 0 ? 0 : n < combined_heads ? n : combined_heads;
  }
  // Whether the rows hold only some of the heads (a shard of a KV-head split).
  bool heads_cut() const { return slot_begin != 0 || data_entries() < (h64 ? num_kv_heads : 2 * num_kv_heads); }
  // v3 metadata for a config with data_parallel_size > 1 has its rows in one block per data rank
  // (SPEC.md §7.3), each block's active rows first, then its padding rows: rows of query length
  // 0, which read and write nothing (their context_len must be 0).
  bool padding_rows() const { return v3 && data_parallel_size > 1; }
};

}  // namespace kvp::detail
