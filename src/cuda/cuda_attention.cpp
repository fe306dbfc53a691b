// kvp_attention for CUDA caches, host side: turns a validated AttentionJob into kernel parameters,
// stages what lives in host memory (host-validated metadata, the sinks) without allocating or
// synchronising in the steady state, sizes the grid and the key-range splits, and launches the
// kernels of kernels/attention.cuh on the caller's stream.
#include <cstring>

#include "cuda/cuda_backend.hpp"
#include "kernels/launch.hpp"
#include "util/checked.hpp"

namespace kvp::detail {

namespace {

using namespace kvp::detail::cuda;

constexpr int64_t kSplitKeys = 512;  // fewest key positions worth a split of their own

AttentionParams params_of(const AttentionJob& job) {
  AttentionParams p;
  std::memset(&p, 0, sizeof p);
  const Layout& L = job.layout;
  p.pages = job.pages;
  p.page_size = L.page_size;
  p.num_pages = L.num_pages;
  p.slot_elems = L.token_elems;
  p.storage_head_dim = L.storage_head_dim;
  p.h64 = L.h64 ? 1 : 0;
  p.head_dim = static_cast<int32_t>(L.head_dim);
  p.dp = p.head_dim + (p.head_dim & 1);  // even: the shared-memory row stride dp + 1 is odd
  p.num_kv_heads = static_cast<int32_t>(L.num_kv_heads);
  p.rep = static_cast<int32_t>(job.num_q_heads / L.num_kv_heads);
  const int64_t stride = p.dp + 1;
  const int64_t keys = (kAttnSharedFloats - kAttnRows * stride) / (stride + kAttnRows);
  p.block_keys = static_cast<int32_t>(keys < kAttnMaxBlockKeys ? keys : kAttnMaxBlockKeys);
  p.q = input_desc(job.q);
  p.out = input_desc(job.out);
  p.num_tokens = job.num_tokens;
  p.num_q_heads = static_cast<int32_t>(job.num_q_heads);
  p.logit_scale = job.logit_scale;
  p.soft_cap = job.soft_cap;
  p.v_scale = job.v_scale;
  p.window = job.window;
  p.padding_rows = L.padding_rows() ? 1 : 0;
  return p;
}

// Bytes of the staged host arrays: the metadata of host-validated jobs (query_start_loc,
// context_lens and page tables of the processed rows, the row count, token_starts when given) and
// the sinks.
size_t staged_bytes(const AttentionJob& job) {
  size_t n = job.sinks != nullptr ? static_cast<size_t>(job.num_q_heads) * sizeof(float) : 0;
  if (job.host_validated)
    n += static_cast<size_t>(2 * job.num_rows + 2 + job.num_rows * job.md.pages_per_req) * sizeof(int32_t);
  if (job.host_validated && job.md.token_starts != nullptr) n += static_cast<size_t>(job.num_rows) * sizeof(int32_t);
  return n;
}

// Fills the staging buffer `h` (its device twin `d`) and points the parameters at the device copy;
// device-resident metadata is used in place.
void point_at_metadata(const AttentionJob& job, AttentionParams& p, uint8_t* h, uint8_t* d) {
  size_t off = 0;
  auto put = [&](const void* src, size_t bytes) {
    std::memcpy(h + off, src, bytes);
    uint8_t* at = d + off;
    off += bytes;
    return at;
  };
  if (job.sinks != nullptr)
    p.sinks = reinterpret_cast<const float*>(put(job.sinks, static_cast<size_t>(job.num_q_heads) * sizeof(float)));
  const MetadataArrays& m = job.md;
  if (!job.host_validated) {
    p.pages_tables = m.pages_tables;
    p.num_reqs = m.num_reqs;
    p.pages_per_req = m.pages_per_req;
    p.context_lens = m.context_lens;
    p.query_start_loc = m.query_start_loc;
    p.num_rows_ptr = m.version == KVP_LAYOUT_V3 && m.request_distribution != nullptr ? m.request_distribution + 2
                                                                                        : m.num_seqs;
    return;
  }
  const int64_t n = job.num_rows;
  const auto count = static_cast<int32_t>(n);
  p.num_reqs = n;
  p.pages_per_req = m.pages_per_req;
  p.query_start_loc = reinterpret_cast<const int32_t*>(put(m.query_start_loc, static_cast<size_t>(n + 1) * 4));
  p.context_lens = reinterpret_cast<const int32_t*>(put(m.context_lens, static_cast<size_t>(n) * 4));
  p.pages_tables = reinterpret_cast<const int32_t*>(put(m.pages_tables, static_cast<size_t>(n * m.pages_per_req) * 4));
  p.num_rows_ptr = reinterpret_cast<const int32_t*>(put(&count, 4));
  if (m.token_starts != nullptr)
    p.token_starts = reinterpret_cast<const int32_t*>(put(m.token_starts, static_cast<size_t>(n) * 4));
}

// The grid (x: KV heads x tiles, y: request rows) and the splits of each tile's key range: enough
// blocks to fill the GPU, splits of at least kSplitKeys positions.
dim3 grid_of(const AttentionJob& job, AttentionParams& p, int sm_count) {
  int64_t rows, max_q, max_ctx;
  if (job.host_validated) {
    rows = job.num_rows;
    max_q = 0;
    max_ctx = 0;
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t q = job.md.query_start_loc[i + 1] - job.md.query_start_loc[i];
      max_q = q > max_q ? q : max_q;
      max_ctx = job.md.context_lens[i] > max_ctx ? job.md.context_lens[i] : max_ctx;
    }
  } else {
    rows = job.md.num_reqs;
    max_q = job.num_tokens;
    max_ctx = checked_mul(job.md.pages_per_req, job.layout.page_size, "pages_per_req * page_size");
  }
  p.tiles = static_cast<int32_t>((checked_mul(max_q, p.rep, "query rows") + kAttnRows - 1) / kAttnRows);
  const int64_t blocks = checked_mul(checked_mul(rows, p.num_kv_heads, "blocks"), p.tiles, "blocks");
  int64_t splits = 1;
  if (blocks > 0 && blocks < 2 * static_cast<int64_t>(sm_count)) {
    splits = (2 * static_cast<int64_t>(sm_count) + blocks - 1) / blocks;
    const int64_t by_keys = max_ctx / kSplitKeys > 1 ? max_ctx / kSplitKeys : 1;
    splits = splits < by_keys ? splits : by_keys;
    splits = splits < kAttnMaxSplits ? splits : kAttnMaxSplits;
  }
  p.splits = static_cast<int32_t>(splits);
  return dim3(static_cast<unsigned>(p.num_kv_heads * p.tiles), static_cast<unsigned>(rows), static_cast<unsigned>(splits));
}

}  // namespace

void CudaBackend::attend(const AttentionJob& job, const ConcatJob* write, kvp_stream stream) {
  const char* fn = "kvp_attention";
  DeviceGuard guard(device_, fn);
  poll(false);  // device-side errors only: a device fault shows in the calls below
  check_healthy(fn);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  AttentionParams p = params_of(job);
  p.err = d_error_;
  p.mirror = m_error_dev_;
  dim3 grid = grid_of(job, p, sm_count_);
  if (grid.y > 65535)
    fail(KVP_ERR_UNSUPPORTED, "%s: %u request rows exceed the 65535 a CUDA grid can hold in one launch", fn, grid.y);
  const bool capture = capturing(s, fn);
  // Split partials: fewer splits during a capture if the scratch cannot grow now.
  for (;;) {
    if (p.splits == 1) break;
    const size_t bytes = static_cast<size_t>(grid.x) * grid.y * grid.z * kAttnRows * (p.dp + 2) * sizeof(float);
    p.partials = static_cast<float*>(attention_scratch(bytes, capture, fn));
    if (p.partials != nullptr) break;
    p.splits = p.splits / 2 > 1 ? p.splits / 2 : 1;
    grid.z = static_cast<unsigned>(p.splits);
  }
  // Whatever can fail for lack of memory is settled before the write, which changes the cache.
  const size_t bytes = staged_bytes(job);
  reserve_staging(write != nullptr ? concat_staged_bytes(*write) : 0, bytes, capture, fn);
  if (write != nullptr) concatenate(*write, stream);
  Staging staging;
  if (bytes > 0) {
    staging = begin_staging(bytes, s, capture, fn);
    point_at_metadata(job, p, staging.host, staging.device);
    check(cudaMemcpyAsync(staging.device, staging.host, bytes, cudaMemcpyHostToDevice, s), fn,
          "cudaMemcpyAsync (metadata staging)");
  } else {
    point_at_metadata(job, p, nullptr, nullptr);
  }
  const cudaError_t err = launch_attention(p, job.layout.dtype, grid, s, fn);
  if (err != cudaSuccess) {
    if (err == cudaErrorInvalidResourceHandle) refuse_foreign_stream(s, staging, fn);
    check(err, fn, "kernel launch");
  }
  finish_staging(staging, s, fn);
}

}  // namespace kvp::detail
