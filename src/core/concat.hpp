// kvp_concatenate core: validation of (cache, layer, key, value, metadata) into a normalized
// "concat job", and dispatch to the CPU or CUDA implementation (SPEC.md §5).
//
// Contract for backends:
// - ConcatJob is plain data (no std:: containers); it can be passed by value to a CUDA kernel.
//   The pointers in it are: `dst` = the layer buffer (device pointer for a CUDA cache); key/value
//   data on the cache's device; `md` arrays where the metadata lives (md.device_type); `runs` in
//   HOST memory (a CUDA backend that wants them must upload them).
// - host_validated == 1: every value was checked on the host (SPEC.md §5 preconditions, bounds,
//   no two writes to the same slot). `runs[0..num_runs)` then lists every write: tokens
//   [src, src+len) of key/value go to flat slots [dst_slot, dst_slot+len) (flat slot =
//   page * page_size + row; consecutive flat slots are consecutive token rows in memory). v3 runs
//   never cross a page; v2 runs may (per-token semantics). total_tokens = Σ len.
// - host_validated == 0 (device-resident metadata on a CUDA cache): runs is nullptr, num_runs = -1;
//   the backend must interpret md itself (mode 2: slot_mapping/num_kv_update_slices; mode 3:
//   pages_tables/context_lens/query_start_loc/request_distribution or num_seqs) and bounds-check
//   every index on the device (skip the write and flag a recoverable async error on violation).
// - Every written token slot gets its whole row written: data lanes converted to the cache dtype
//   with fp_convert.hpp (byte-identical on both backends), padding lanes/heads set to zero.
#pragma once

#include <cstdint>
#include <vector>

#include "core/cache.hpp"
#include "core/config.hpp"
#include "core/metadata.hpp"
#include "kvpages/types.h"

namespace kvp::detail {

// One input tensor [T, H, D], strides in elements.
struct ConcatInput {
  const void* data;
  kvp_dtype dtype;
  int32_t itemsize;
  int64_t stride_t;
  int64_t stride_h;
  int64_t stride_d;
};

// One contiguous write: tokens [src, src + len) -> flat slots [dst_slot, dst_slot + len).
struct ConcatRun {
  int64_t src;
  int64_t dst_slot;
  int64_t len;
};

struct ConcatJob {
  // Destination: the layer buffer and its geometry (Layout is plain data; layout.offset() is
  // host-only, so kernels should use the fields below directly).
  uint8_t* dst;
  Layout layout;
  int32_t mode;  // 2 = v2 (slice list), 3 = v3 (page tables)
  int32_t h64;   // 1 for the v3 head_dim-64 layout
  kvp_dtype cache_dtype;
  int32_t cache_itemsize;
  int64_t num_slots;     // P * S
  int64_t token_elems;   // elements of one token slot (combined_heads * storage_head_dim)
  int64_t num_kv_heads;  // H
  int64_t head_dim;      // D
  // Inputs.
  ConcatInput key;
  ConcatInput value;
  int64_t num_tokens;  // T = key.shape[0]
  // Metadata as given (host or device pointers).
  MetadataArrays md;
  int32_t metadata_on_device;  // 1 when md arrays are CUDA device memory
  int32_t host_validated;      // 1 when runs below are valid
  int64_t num_seqs;            // v3 sequences (host-validated only; -1 otherwise)
  int64_t num_valid_slices;    // v2 n (host-validated only; -1 otherwise)
  // Normalized writes (host memory; see above).
  const ConcatRun* runs;
  int64_t num_runs;
  int64_t total_tokens;
};

// A job plus the storage its `runs` point into.
struct PreparedConcat {
  ConcatJob job;
  std::vector<ConcatRun> runs;
};

// Validates everything (throws INVALID_ARGUMENT naming the offending request/slice and value)
// and fills a job. Nothing is written.
void prepare_concat(const Cache& cache, int64_t layer, const kvp_tensor& key, const kvp_tensor& value,
                    const Metadata& md, PreparedConcat& out, const char* function);

// Validates, then runs the CPU or CUDA implementation.
void concatenate(Cache& cache, int64_t layer, const kvp_tensor& key, const kvp_tensor& value,
                 const Metadata& md, kvp_stream stream, const char* function);

// CPU implementation (src/backend/cpu/concat_cpu.cpp); requires host_validated.
void cpu_concatenate(const ConcatJob& job);

// Instruction-set level of the CPU's arithmetic dtype conversions, chosen once per process from
// CPUID (x86-64: baseline SSE2, AVX2, AVX-512 F/BW/DQ/VL). The environment variable
// KVP_CPU_ISA=baseline|avx2|avx512 lowers it (never above what the CPU has); every level
// writes the same bytes.
enum class CpuIsa { baseline = 0, avx2 = 1, avx512 = 2 };
CpuIsa cpu_isa() noexcept;
const char* cpu_isa_name(CpuIsa isa) noexcept;

// CUDA implementation (src/backend/cuda/); enqueues on `stream`. Non-CUDA builds get a stub in
// core/concat.cpp that throws KVP_ERR_NO_DEVICE.
void cuda_concatenate(Cache& cache, const ConcatJob& job, kvp_stream stream);

}  // namespace kvp::detail
