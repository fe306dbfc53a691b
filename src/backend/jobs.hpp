// The plain data core hands to a backend: validated jobs for the device operations. No std::
// containers and no pointers into core objects, so a job can be passed by value to a CUDA kernel.
#pragma once

#include <cstdint>

#include "backend/geometry.hpp"
#include "kvpages/types.h"

namespace kvp::detail {

// Runtime metadata arrays (SPEC.md §4) as given: host or device pointers (`device_type`), lengths
// in elements, absent arrays nullptr with length 0.
struct MetadataArrays {
  kvp_layout version = KVP_LAYOUT_V3;
  kvp_device_type device_type = KVP_DEVICE_CPU;
  int32_t device_id = 0;
  int64_t page_size = 0;  // 0 = the cache's
  int64_t num_slices_per_page = -1;
  const int32_t* pages_tables = nullptr;
  int64_t num_reqs = 0;
  int64_t pages_per_req = 0;
  const int32_t* context_lens = nullptr;
  int64_t context_lens_len = 0;
  const int32_t* query_start_loc = nullptr;
  int64_t query_start_loc_len = 0;
  const int32_t* num_seqs = nullptr;
  int64_t num_seqs_len = 0;
  const int32_t* slot_mapping = nullptr;  // [3, num_slices] row-major
  int64_t num_slices = 0;
  const int32_t* num_kv_update_slices = nullptr;
  int64_t num_kv_update_slices_len = 0;
  const int32_t* request_distribution = nullptr;
  int64_t request_distribution_len = 0;
  const int32_t* position_ids = nullptr;
  int64_t position_ids_len = 0;
  const int32_t* token_starts = nullptr;  // host only: row i's first token row; nullptr = query_start_loc[i]
  int64_t token_starts_len = 0;
};

// The first key/value/query/output row of request row i (host-validated metadata).
inline int64_t token_start(const MetadataArrays& m, int64_t i) {
  return m.token_starts != nullptr ? m.token_starts[i] : m.query_start_loc[i];
}

// One tensor [T, H, D] on the cache's device, strides in elements.
struct TensorArg {
  const void* data;
  kvp_dtype dtype;
  int32_t itemsize;
  int64_t stride_t;
  int64_t stride_h;
  int64_t stride_d;
};

// One contiguous write: tokens [src, src + len) -> flat slots [dst_slot, dst_slot + len)
// (flat slot = page * page_size + row; consecutive flat slots are consecutive rows in memory).
struct ConcatRun {
  int64_t src;
  int64_t dst_slot;
  int64_t len;
};

// kvp_concatenate of one layer (SPEC.md §5).
// - host_validated == 1: every value was checked on the host (preconditions, bounds, no two writes
//   to one slot); runs[0 .. num_runs) (HOST memory) list every write. v3 runs never cross a page;
//   v2 runs may (per-token semantics). total_tokens = Σ len.
// - host_validated == 0 (device-resident metadata on a CUDA cache): runs is nullptr, num_runs -1;
//   the backend interprets md itself (v2: slot_mapping / num_kv_update_slices; v3: pages_tables /
//   context_lens / query_start_loc / request_distribution or num_seqs) and bounds-checks every index
//   on the device (skipping the write and flagging a recoverable asynchronous error on violation).
// - Every written token slot gets its whole row: data lanes converted to the cache dtype with
//   backend/fp_convert.hpp (byte-identical on every backend), padding lanes and heads zeroed.
// - On a shard (layout.shard) a row is the whole layout's entries [slot_begin, slot_begin +
//   combined_heads) and the runs are local slots (host-validated: the core has dropped the tokens
//   of other shards' pages); layout.data_entries() of them hold data. Device-resident metadata
//   holds global page ids and slots: the backend checks them against layout.global_pages and
//   skips, silently, the tokens whose page is outside [page_begin, page_begin + num_pages).
// - layout.padding_rows(): v3 rows of query length 0 write nothing (on the device, one with a
//   context_len other than 0 is flagged as the host check does).
// Not zero-initialised: core/concat.cpp's prepare_concat sets every field on every call (a new
// field must be set there too).
struct ConcatJob {
  uint8_t* dst;   // the layer buffer (device pointer for a CUDA cache)
  Layout layout;
  int32_t mode;   // 2 = v2 (slice list), 3 = v3 (page tables)
  int32_t h64;    // 1 for the v3 head_dim-64 layout
  kvp_dtype cache_dtype;
  int32_t cache_itemsize;
  int64_t num_slots;     // P * S
  int64_t token_elems;   // elements of one token slot (combined_heads * storage_head_dim)
  int64_t num_kv_heads;  // H
  int64_t head_dim;      // D
  TensorArg key;
  TensorArg value;
  int64_t head_offset;  // key/value head index of KV head h: h - head_offset (0, or a shard's first head)
  int64_t num_tokens;  // T = key.shape[0]
  MetadataArrays md;
  int32_t metadata_on_device;  // 1 when the md arrays are in device memory
  int32_t host_validated;      // 1 when runs are valid
  int64_t num_seqs;            // v3 sequences (host-validated only; -1 otherwise)
  int64_t num_valid_slices;    // v2 n (host-validated only; -1 otherwise)
  const ConcatRun* runs;
  int64_t num_runs;
  int64_t total_tokens;
  int64_t call_bytes;  // bytes the whole call writes (a group: every shard's), 0 = this job's own;
                       // the CPU writer picks streaming stores from it
};

// Head dims attention supports (the CUDA kernel keeps up to 4 lanes of a row per thread).
constexpr int64_t kMaxAttentionHeadDim = 512;

// kvp_attention of one layer (ATTENTION.md §5.8), read side: Backend::attend performs the fused
// write (a ConcatJob) first, so the pages hold the step's tokens when this job reads them.
// - host_validated == 1: every processed row i < num_rows satisfies 0 < q_len <= context_len,
//   query_start_loc[i + 1] <= num_tokens, cdiv(context_len, page_size) <= pages_per_req, and every
//   page id the row reads is in [0, num_pages), or (layout.padding_rows()) is a padding row:
//   q_len 0 and context_len 0, which reads and writes nothing.
// - host_validated == 0 (device-resident metadata on a CUDA cache): num_rows is -1; the backend
//   reads the row count (request_distribution[2], else num_seqs[0]) and checks every value on the
//   device, skipping what it cannot do safely (its output rows are then zero) and flagging a
//   recoverable asynchronous error (with layout.padding_rows(), also a row of q_len 0 whose
//   context_len is not 0).
// Output rows that no processed row owns are written as zeros.

struct AttentionJob {
  const uint8_t* pages;  // the layer buffer
  Layout layout;
  TensorArg q;           // [num_tokens, num_q_heads, head_dim]
  TensorArg out;         // same shape; dtype f32, f16 or bf16
  int64_t num_tokens;
  int64_t num_q_heads;   // a multiple of layout.num_kv_heads
  MetadataArrays md;
  int32_t metadata_on_device;
  int32_t host_validated;
  int64_t num_rows;      // processed request rows (host-validated only)
  float logit_scale;     // softmax_scale * k_scale
  float soft_cap;        // > 0, or 0 for none
  float v_scale;         // 1 for none
  int32_t window;        // > 0, or 0 for none
  const float* sinks;    // num_q_heads sink logits in HOST memory, or nullptr (-inf = no sink)
  int32_t zero_all;      // 1: every output row is zeroed before the processed rows are written (a
                         // data-parallel shard's block: its rows' tokens need not be contiguous)
};

}  // namespace kvp::detail
