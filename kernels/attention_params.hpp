// Launch parameters of the kvp_attention kernels (kernels/attention.cuh): plain data, filled by
// the CUDA backend's host code (src/cuda/cuda_attention.cpp) and passed by value to the kernels.
#pragma once

#include <cstdint>

#include "kernels/concat_params.hpp"
#include "kernels/device_error.hpp"
#include "kvpages/types.h"

namespace kvp::detail::cuda {

constexpr int kAttnThreads = 128;     // threads of a block
constexpr int kAttnRows = 16;         // query rows (token, query head of the group) of a tile
constexpr int kAttnMaxBlockKeys = 64;  // key positions staged per step
constexpr int kAttnSharedFloats = 11264;  // 44 KiB of shared memory: queries, keys, weights
constexpr int kAttnMaxLanesPerThread = 4;  // head dims up to 4 * kAttnThreads = 512
constexpr int kAttnMaxSplits = 32;

// Grid: x = kv_heads * tiles (the tile of query rows of one KV head), y = request rows, z = splits
// of the key range. Every value read from the metadata is checked on the device.
struct AttentionParams {
  // The pages of one layer.
  const uint8_t* pages;
  int64_t page_size, num_pages;
  int64_t slot_elems;    // elements of one token slot
  int64_t storage_head_dim;
  int32_t h64;
  int32_t head_dim, dp;  // dp: head_dim rounded up to an even number (shared-memory row stride dp + 1 is odd)
  int32_t num_kv_heads, rep;
  int32_t tiles;         // tiles of kAttnRows query rows per (request row, KV head)
  int32_t splits;        // gridDim.z
  int32_t block_keys;    // key positions staged per step
  // Queries and output [num_tokens, num_q_heads, head_dim]; dtype f32, f16 or bf16.
  InputDesc q, out;
  int64_t num_tokens;
  int32_t num_q_heads;
  // Metadata, device pointers.
  const int32_t* pages_tables;
  int64_t num_reqs, pages_per_req;
  const int32_t* context_lens;
  const int32_t* query_start_loc;
  const int32_t* token_starts;    // host-validated only: row i's first query/output row; nullptr = query_start_loc[i]
  const int32_t* num_rows_ptr;    // &request_distribution[2] or &num_seqs[0]
  int32_t padding_rows;           // data_parallel_size > 1: rows of query length 0 are padding (context 0)
  // Options.
  float logit_scale, soft_cap, v_scale;
  int32_t window;
  const float* sinks;  // device array [num_q_heads] or nullptr
  // Split partial states: per (x, y, z) block, [kAttnRows] m, [kAttnRows] l, [kAttnRows][dp] acc.
  float* partials;
  DeviceErrorRecord* err;
  DeviceErrorRecord* mirror;
};

}  // namespace kvp::detail::cuda
