// kvp_concatenate for CUDA caches, host side: turns a validated ConcatJob into kernel parameters,
// stages host-resident metadata without allocating or synchronising, and launches the kernels of
// kernels/concat.cuh on the caller's stream.
#include <cstring>

#include "cuda/cuda_backend.hpp"
#include "kernels/launch.hpp"

namespace kvp::detail {

namespace {

using namespace kvp::detail::cuda;

bool input_vec_ok(const TensorArg& in, int64_t chunk_elems) {
  if (in.stride_d != 1) return false;
  const int64_t bytes = chunk_elems * in.itemsize;
  const int64_t align = bytes >= 16 ? 16 : bytes;
  const auto addr = reinterpret_cast<uintptr_t>(in.data);
  return addr % static_cast<uintptr_t>(align) == 0 && (in.stride_t * in.itemsize) % align == 0 &&
         (in.stride_h * in.itemsize) % align == 0;
}

int32_t log2_if_pow2(int32_t v) {
  if (v <= 0 || (v & (v - 1)) != 0) return -1;
  int32_t k = 0;
  while ((1 << k) < v) ++k;
  return k;
}

// Rows per block: about 2048 chunks (8 per thread) per block, fewer when that would leave the
// GPU with less than ~4 blocks per SM.
int32_t rows_per_block(int64_t chunks_per_row, int64_t num_rows, int sm_count) {
  int64_t rpb = 2048 / chunks_per_row;
  if (rpb < 1) rpb = 1;
  if (rpb > kMaxRowsPerBlock) rpb = kMaxRowsPerBlock;
  const int64_t target_blocks = 4 * static_cast<int64_t>(sm_count > 0 ? sm_count : 1);
  const int64_t fill = num_rows / target_blocks;
  if (fill < rpb) rpb = fill < 1 ? 1 : fill;
  return static_cast<int32_t>(rpb);
}

// The geometry part of the parameters; `vec` says whether a chunk is 16 bytes of a slot.
ConcatParams geometry_params(const ConcatJob& job, bool& vec) {
  ConcatParams p;
  std::memset(&p, 0, sizeof p);
  const Layout& L = job.layout;
  p.dst = job.dst;
  p.row_bytes = job.token_elems * job.cache_itemsize;
  p.entries = static_cast<int32_t>(L.combined_heads);
  p.lanes = static_cast<int32_t>(L.storage_head_dim);
  p.heads = static_cast<int32_t>(job.num_kv_heads);
  p.slot_begin = static_cast<int32_t>(L.slot_begin);
  p.head_offset = static_cast<int32_t>(job.head_offset);
  p.head_dim = static_cast<int32_t>(job.head_dim);
  p.h64 = job.h64;
  const int64_t vec_elems = 16 / job.cache_itemsize;
  vec = (p.lanes % vec_elems) == 0 && (p.row_bytes % 16) == 0 && (reinterpret_cast<uintptr_t>(job.dst) % 16) == 0 &&
        job.key.dtype == job.value.dtype;
  const int64_t V = vec ? vec_elems : 1;
  p.chunks_per_entry = static_cast<int32_t>(p.lanes / V);
  p.chunks_per_row = p.entries * p.chunks_per_entry;
  p.cpe_shift = log2_if_pow2(p.chunks_per_entry);
  p.cpr_shift = log2_if_pow2(p.chunks_per_row);
  p.in_vec_ok = vec && input_vec_ok(job.key, V) && input_vec_ok(job.value, V) ? 1 : 0;
  p.key = input_desc(job.key);
  p.value = input_desc(job.value);
  p.num_slots = job.num_slots;
  p.num_tokens = job.num_tokens;
  p.page_size = L.page_size;
  p.num_pages = L.num_pages;
  p.page_begin = L.page_begin;
  p.global_pages = L.global_pages;
  return p;
}

// Host-validated runs: inline in the parameters (up to kMaxInlineRuns) or staged to the device.
// Returns the grid (x == 0: nothing to write).
dim3 runs_grid(CudaBackend& b, const ConcatJob& job, ConcatParams& p, CudaBackend::Staging& staging, cudaStream_t s,
               bool capture, const char* fn) {
  p.mode = kRowsRuns;
  p.num_runs = job.num_runs;
  p.num_rows = job.total_tokens;
  if (job.num_runs <= 0 || job.total_tokens <= 0) return dim3(0, 1, 1);
  int64_t* src;
  if (job.num_runs <= kMaxInlineRuns) {
    src = p.inl;
  } else {
    staging = b.begin_staging(CudaBackend::concat_staged_bytes(job), s, capture, fn);
    src = reinterpret_cast<int64_t*>(staging.host);
    p.runs = reinterpret_cast<const int64_t*>(staging.device);
  }
  const int64_t stride = p.runs != nullptr ? job.num_runs : kMaxInlineRuns;  // [3][stride]: src, dst, start
  int64_t acc = 0;
  for (int64_t j = 0; j < job.num_runs; ++j) {
    src[j] = job.runs[j].src;
    src[stride + j] = job.runs[j].dst_slot;
    src[2 * stride + j] = acc;
    acc += job.runs[j].len;
  }
  if (p.runs != nullptr)
    b.check(cudaMemcpyAsync(staging.device, staging.host, static_cast<size_t>(job.num_runs) * 3 * sizeof(int64_t),
                            cudaMemcpyHostToDevice, s),
            fn, "cudaMemcpyAsync (metadata staging)");
  p.rows_per_block = rows_per_block(p.chunks_per_row, p.num_rows, b.sm_count());
  return dim3(static_cast<unsigned>((p.num_rows + p.rows_per_block - 1) / p.rows_per_block), 1, 1);
}

// Device-resident v3 metadata: one row per key/value token.
dim3 v3_grid(CudaBackend& b, const ConcatJob& job, ConcatParams& p, const char* fn) {
  const MetadataArrays& md = job.md;
  p.mode = kRowsV3;
  p.num_rows = job.num_tokens;
  if (p.num_rows <= 0 || md.num_reqs <= 0) return dim3(0, 1, 1);
  p.pages_tables = md.pages_tables;
  p.num_reqs = md.num_reqs;
  p.pages_per_req = md.pages_per_req;
  p.context_lens = md.context_lens;
  p.query_start_loc = md.query_start_loc;
  p.num_seqs_ptr = md.request_distribution != nullptr ? md.request_distribution + 2 : md.num_seqs;  // core checked them
  p.padding_rows = job.layout.padding_rows() ? 1 : 0;
  p.rows_per_block = rows_per_block(p.chunks_per_row, p.num_rows, b.sm_count());
  return dim3(static_cast<unsigned>((p.num_rows + p.rows_per_block - 1) / p.rows_per_block), 1, 1);
}

// Device-resident v2 metadata: block (j, y) writes slice j.
dim3 v2_grid(CudaBackend& b, const ConcatJob& job, ConcatParams& p, const char* fn) {
  const MetadataArrays& md = job.md;
  const Layout& L = job.layout;
  p.mode = kRowsV2;
  if (md.num_slices <= 0 || job.num_tokens <= 0) return dim3(0, 1, 1);
  p.slot_mapping = md.slot_mapping;
  p.num_slices = md.num_slices;
  p.num_valid_slices_ptr = md.num_kv_update_slices;
  // Rows per block from the page size (a slice normally covers at most one page).
  p.rows_per_block = rows_per_block(p.chunks_per_row, md.num_slices * L.page_size, b.sm_count());
  if (p.rows_per_block > L.page_size) p.rows_per_block = static_cast<int32_t>(L.page_size);
  if (md.num_slices > 0x7FFFFFFF)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: %lld slices exceed the CUDA grid", fn, static_cast<long long>(md.num_slices));
  const int64_t gy = (L.page_size + p.rows_per_block - 1) / p.rows_per_block;
  return dim3(static_cast<unsigned>(md.num_slices), static_cast<unsigned>(gy > 65535 ? 65535 : gy), 1);
}

}  // namespace

size_t CudaBackend::concat_staged_bytes(const ConcatJob& job) {
  if (!job.host_validated || job.num_runs <= kMaxInlineRuns || job.total_tokens <= 0) return 0;
  return static_cast<size_t>(job.num_runs) * 3 * sizeof(int64_t);
}

void CudaBackend::concatenate(const ConcatJob& job, kvp_stream stream) {
  const char* fn = "kvp_concatenate";
  DeviceGuard guard(device_, fn);
  poll(false);  // device-side errors only: a device fault shows in the calls below
  check_healthy(fn);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  bool vec = false;
  ConcatParams p = geometry_params(job, vec);
  p.err = d_error_;
  p.mirror = m_error_dev_;
  const bool capture = capturing(s, fn);
  Staging staging;
  const dim3 grid = job.host_validated ? runs_grid(*this, job, p, staging, s, capture, fn)
                    : job.mode == 3     ? v3_grid(*this, job, p, fn)
                                        : v2_grid(*this, job, p, fn);
  if (grid.x == 0) return;
  const cudaError_t err = launch_concat(p, job.key.dtype, job.value.dtype, job.cache_dtype, vec, grid, s, fn);
  if (err != cudaSuccess) {
    if (err == cudaErrorInvalidResourceHandle) refuse_foreign_stream(s, staging, fn);
    check(err, fn, "kernel launch");
  }
  finish_staging(staging, s, fn);
}

}  // namespace kvp::detail
