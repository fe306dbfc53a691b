// Launch parameters of the kvp_concatenate kernels (kernels/concat.cuh): plain data, filled by
// the CUDA backend's host code (src/cuda/cuda_concat.cpp) and passed by value to the kernels.
#pragma once

#include <cstdint>

#include "kernels/device_error.hpp"
#include "kvpages/types.h"

namespace kvp::detail::cuda {

constexpr int kThreads = 256;
constexpr int kMaxRowsPerBlock = 64;
constexpr int kMaxInlineRuns = 32;

enum RowMode : int32_t { kRowsRuns = 0, kRowsV3 = 1, kRowsV2 = 2 };

struct InputDesc {
  const void* data;
  int64_t st, sh, sd;  // strides in elements: token, head, lane
  kvp_dtype dtype;     // read at run time only by the mixed-dtype kernels (In = TAny)
  int32_t itemsize;
};

// Kernel parameters (passed by value; about 1 KiB).
struct ConcatParams {
  uint8_t* dst;       // layer buffer
  int64_t row_bytes;  // bytes of one token slot
  int32_t entries;    // combined entries per slot (v3: Cst, v2: 2H; a shard's: its slice)
  int32_t lanes;      // lanes per entry (v3: Dst or 128, v2: D)
  int32_t heads;      // H (of the whole layout)
  int32_t slot_begin;   // whole-layout entry of local entry 0 (a shard's first; 0 for a whole cache)
  int32_t head_offset;  // key/value head of KV head h: h - head_offset
  int32_t head_dim;   // D
  int32_t h64;        // v3 head_dim-64 layout: entry h = [K_h | V_h]
  int32_t chunks_per_entry;
  int32_t chunks_per_row;
  int32_t cpe_shift;  // log2(chunks_per_entry) when it is a power of two, else -1
  int32_t cpr_shift;  // log2(chunks_per_row) when it is a power of two, else -1
  int32_t rows_per_block;
  int32_t in_vec_ok;  // key and value allow vector loads of a chunk
  int32_t mode;       // RowMode
  InputDesc key, value;
  int64_t num_slots;   // P * S (local)
  int64_t num_tokens;  // T
  int64_t page_size;   // S
  int64_t num_pages;   // P (local)
  // Device-resident metadata names the whole cache's pages: ids in [0, global_pages) are valid,
  // those outside [page_begin, page_begin + num_pages) another data rank's (skipped).
  int64_t page_begin;
  int64_t global_pages;
  int64_t num_rows;    // rows enumerated by the grid (runs: total tokens; v3: T)
  // kRowsRuns: run j writes tokens [src_j, src_j + len_j) to slots [dst_j, …); start_j = Σ_{i<j} len_i.
  int64_t num_runs;
  const int64_t* runs;  // device array [3][num_runs] (src, dst, start), or nullptr if inline
  int64_t inl[3 * kMaxInlineRuns];
  // kRowsV3 (device-resident).
  const int32_t* pages_tables;
  int64_t num_reqs;
  int64_t pages_per_req;
  const int32_t* context_lens;
  const int32_t* query_start_loc;
  const int32_t* num_seqs_ptr;  // &request_distribution[2] or &num_seqs[0]
  int32_t padding_rows;         // data_parallel_size > 1: rows of query length 0 must have context 0
  // kRowsV2 (device-resident).
  const int32_t* slot_mapping;  // [3, num_slices]
  int64_t num_slices;
  const int32_t* num_valid_slices_ptr;  // &num_kv_update_slices[0]
  // Error record and its host mirror.
  DeviceErrorRecord* err;
  DeviceErrorRecord* mirror;
};

}  // namespace kvp::detail::cuda
