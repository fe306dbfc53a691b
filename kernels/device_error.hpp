// The record a CUDA kernel fills when device-resident metadata fails a bounds check.
// Plain data shared by host code (src/cuda) and device code (kernels/); no CUDA headers.
#pragma once

#include <cstdint>

namespace kvp::detail {

// What was wrong with device-resident metadata (DeviceErrorRecord::reason).
enum DeviceErrorReason : int32_t {
  kDevErrNone = 0,
  kDevErrNumSeqs = 1,         // v3: request_distribution[2] (num_seqs) outside [0, R]
  kDevErrQueryStart = 2,      // v3: query_start_loc not non-decreasing, negative, or beyond the tokens
  kDevErrQueryLen = 3,        // v3: q_len > kv_len (context_lens) for a request with tokens
  kDevErrPageIndex = 4,       // v3: logical page pos / page_size >= pages_per_seq
  kDevErrPageId = 5,          // v3: page id outside the (whole) cache
  kDevErrNumSlices = 6,       // v2: num_kv_update_slices outside [0, N]
  kDevErrSliceLength = 7,     // v2: negative slice length
  kDevErrSliceSource = 8,     // v2: a slice's source token outside the key/value tokens
  kDevErrSlot = 9,            // v2: a slice's destination slot outside the (whole) cache
  kDevErrPaddingRow = 10,     // v3, data_parallel_size > 1: a row of query length 0 has context_len != 0
};

// The operation that recorded an error (DeviceErrorRecord::code).
enum DeviceErrorOp : int32_t { kDevOpConcatenate = 1, kDevOpAttention = 2 };

// First error wins (the kernel claims `code` with atomicCAS, storing its DeviceErrorOp). `index` names the offending array
// element, `value` its value, `limit` the bound it broke.
//
// Refusal is decided per launch, not per block: a launch that finds an error writes all its
// valid entries; the last block of that launch to finish (counted in `blocks_done`) promotes the
// error to `blocking`, and every block of later launches reads `blocking` first and writes
// nothing. So what one call writes never depends on block scheduling.
struct DeviceErrorRecord {
  int32_t code;      // 0 = no error; otherwise the DeviceErrorOp that claimed it
  int32_t reason;    // DeviceErrorReason
  int64_t index;
  int64_t value;
  int64_t limit;
  int32_t blocking;  // set at the end of the launch that recorded the error
  uint32_t blocks_done;  // blocks of the current launch that have finished (reset by the last one)
};
// Bytes the host clears to reset the record (everything before blocks_done, which only the
// kernels touch).
constexpr unsigned long kDeviceErrorResetBytes = 2 * sizeof(int32_t) + 3 * sizeof(int64_t) + sizeof(int32_t);

}  // namespace kvp::detail
