// kvp_concatenate for CUDA caches, host side: turns a validated ConcatJob into kernel parameters,
// stages host-resident metadata without allocating or synchronising, and launches the kernels of
// kernels/concat.cuh on the caller's stream.
#include "kvpages/features.h"

#if KVP_HAS_CUDA
#include <cuda_runtime.h>

#include <cstring>

#include "backend/cuda/cuda_backend.hpp"
#include "core/cache.hpp"
#include "core/concat.hpp"
#include "kernels/concat.cuh"

namespace kvp::detail {

namespace {

using namespace kvp::detail::cuda;

// One launch; returns the launch's own error. cudaLaunchKernel reports it directly, so an error
// the caller's earlier CUDA calls left in the thread's last-error state is neither mistaken for
// ours nor cleared. (KVP_CUDA_EMULATION: a host-only emulation of the CUDA runtime used to
// exercise the kernels without a GPU; it is not part of the build.)
cudaError_t launch_kernel(void (*kernel)(ConcatParams), dim3 grid, cudaStream_t s, const ConcatParams& p) {
#if defined(KVP_CUDA_EMULATION)
  return ::cuemu::launch([kernel, p]() { kernel(p); }, grid, dim3(kThreads), s);
#else
  void* args[] = {const_cast<ConcatParams*>(&p)};
  return cudaLaunchKernel(reinterpret_cast<const void*>(kernel), grid, dim3(kThreads), args, 0, s);
#endif
}

template <class In, class Out>
cudaError_t launch_typed(const ConcatParams& p, bool vec, dim3 grid, cudaStream_t s) {
  if constexpr (std::is_same_v<In, TAny>) {
    // Mixed key/value dtypes: element-wise path only (the host chose chunks of one element).
    return launch_kernel(p.mode == kRowsV2 ? concat_v2_kernel<In, Out, false> : concat_rows_kernel<In, Out, false>,
                         grid, s, p);
  } else if (p.mode == kRowsV2) {
    return launch_kernel(vec ? concat_v2_kernel<In, Out, true> : concat_v2_kernel<In, Out, false>, grid, s, p);
  } else {
    return launch_kernel(vec ? concat_rows_kernel<In, Out, true> : concat_rows_kernel<In, Out, false>, grid, s, p);
  }
}

template <class In>
cudaError_t launch_out(kvp_dtype out, const ConcatParams& p, bool vec, dim3 grid, cudaStream_t s, const char* fn) {
  switch (out) {
    case KVP_DTYPE_F32: return launch_typed<In, TF32>(p, vec, grid, s);
    case KVP_DTYPE_F16: return launch_typed<In, TF16>(p, vec, grid, s);
    case KVP_DTYPE_BF16: return launch_typed<In, TBF16>(p, vec, grid, s);
    case KVP_DTYPE_F8_E4M3FN: return launch_typed<In, TE4M3>(p, vec, grid, s);
    case KVP_DTYPE_F8_E5M2: return launch_typed<In, TE5M2>(p, vec, grid, s);
    default:
      fail(KVP_ERR_UNSUPPORTED, "%s: cache dtype %u is not a storage dtype", fn, static_cast<unsigned>(out));
  }
}

cudaError_t launch(kvp_dtype in, kvp_dtype in_value, kvp_dtype out, const ConcatParams& p, bool vec, dim3 grid,
                   cudaStream_t s, const char* fn) {
  if (in != in_value) return launch_out<TAny>(out, p, vec, grid, s, fn);
  switch (in) {
    case KVP_DTYPE_F32: return launch_out<TF32>(out, p, vec, grid, s, fn);
    case KVP_DTYPE_F16: return launch_out<TF16>(out, p, vec, grid, s, fn);
    case KVP_DTYPE_BF16: return launch_out<TBF16>(out, p, vec, grid, s, fn);
    default:
      fail(KVP_ERR_UNSUPPORTED, "%s: input dtype %u is not f32, f16 or bf16", fn, static_cast<unsigned>(in));
  }
}

bool input_vec_ok(const ConcatInput& in, int64_t chunk_elems) {
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

// A kernel cannot be launched into a stream of another device than the current one (the cache's):
// the launch fails with cudaErrorInvalidResourceHandle and nothing of the cache is written. A
// metadata copy enqueued before the launch may still be queued on that stream, so it is waited
// for before its ring slot can be handed out again. Then, where the runtime can say which device
// the stream belongs to (CUDA 12.8+), the caller's mistake is reported as such.
void refuse_foreign_stream(CudaBackend& b, cudaStream_t s, const CudaBackend::Staging& staging, const char* fn) {
  forget_error(cudaErrorInvalidResourceHandle);  // the failed launch's; it is reported below
  if (staging.slot >= 0) forget_error(cudaStreamSynchronize(s));
#if CUDART_VERSION >= 12080
  int stream_device = -1;
  const cudaError_t err = cudaStreamGetDevice(s, &stream_device);
  if (err != cudaSuccess) {
    forget_error(err);
    return;
  }
  if (stream_device != b.device_id())
    fail(KVP_ERR_INVALID_ARGUMENT,
         "%s: the stream belongs to CUDA device %d but the cache is on device %d; enqueue on a stream of "
         "device %d (or NULL, that device's legacy default stream). Nothing was written",
         fn, stream_device, static_cast<int>(b.device_id()), static_cast<int>(b.device_id()));
#else
  (void)b;
  (void)fn;
#endif
}

}  // namespace

void cuda_concatenate(Cache& cache, const ConcatJob& job, kvp_stream stream) {
  const char* fn = "kvp_concatenate";
  CudaBackend& b = cuda_backend_of(cache, fn);
  DeviceGuard guard(b.device_id(), fn);
  b.poll(cache, false);  // device-side errors only: a device fault shows in the calls below
  cache.check_healthy(fn);
  auto s = reinterpret_cast<cudaStream_t>(stream);

  ConcatParams p;
  std::memset(&p, 0, sizeof p);
  const Layout& L = job.layout;
  p.dst = job.dst;
  p.row_bytes = job.token_elems * job.cache_itemsize;
  p.entries = static_cast<int32_t>(L.combined_heads);
  p.lanes = static_cast<int32_t>(L.storage_head_dim);
  p.heads = static_cast<int32_t>(job.num_kv_heads);
  p.head_dim = static_cast<int32_t>(job.head_dim);
  p.h64 = job.h64;
  const int64_t vec_elems = 16 / job.cache_itemsize;
  const bool vec = (p.lanes % vec_elems) == 0 && (p.row_bytes % 16) == 0 &&
                   (reinterpret_cast<uintptr_t>(job.dst) % 16) == 0 && job.key.dtype == job.value.dtype;
  const int64_t V = vec ? vec_elems : 1;
  p.chunks_per_entry = static_cast<int32_t>(p.lanes / V);
  p.chunks_per_row = p.entries * p.chunks_per_entry;
  p.cpe_shift = log2_if_pow2(p.chunks_per_entry);
  p.cpr_shift = log2_if_pow2(p.chunks_per_row);
  p.in_vec_ok = vec && input_vec_ok(job.key, V) && input_vec_ok(job.value, V) ? 1 : 0;
  p.key = InputDesc{job.key.data, job.key.stride_t, job.key.stride_h, job.key.stride_d, job.key.dtype, job.key.itemsize};
  p.value = InputDesc{job.value.data, job.value.stride_t, job.value.stride_h, job.value.stride_d, job.value.dtype,
                      job.value.itemsize};
  p.num_slots = job.num_slots;
  p.num_tokens = job.num_tokens;
  p.page_size = L.page_size;
  p.num_pages = L.num_pages;
  p.err = b.device_error();
  p.mirror = b.mirror_error_device_ptr();

  int capture = 0;
  {
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    cuda_check_for(cache, cudaStreamIsCapturing(s, &cs), fn, "cudaStreamIsCapturing");
    if (cs == cudaStreamCaptureStatusInvalidated)
      fail(KVP_ERR_DEVICE,
           "%s: the stream's graph capture was invalidated by an earlier CUDA call that a capture does not "
           "allow; end it with cudaStreamEndCapture (which reports the failure) and capture again",
           fn);
    capture = cs == cudaStreamCaptureStatusActive ? 1 : 0;
  }

  dim3 grid(1, 1, 1);
  CudaBackend::Staging staging;
  if (job.host_validated) {
    p.mode = kRowsRuns;
    p.num_runs = job.num_runs;
    p.num_rows = job.total_tokens;
    if (job.num_runs <= 0 || job.total_tokens <= 0) return;  // nothing to write
    int64_t* src;
    int64_t* dst;
    int64_t* start;
    if (job.num_runs <= kMaxInlineRuns) {
      src = p.inl;
      dst = p.inl + kMaxInlineRuns;
      start = p.inl + 2 * kMaxInlineRuns;
    } else {
      const size_t bytes = static_cast<size_t>(job.num_runs) * 3 * sizeof(int64_t);
      staging = b.begin_staging(bytes, s, capture != 0, fn);
      src = reinterpret_cast<int64_t*>(staging.host);
      dst = src + job.num_runs;
      start = dst + job.num_runs;
      p.runs = reinterpret_cast<const int64_t*>(staging.device);
    }
    int64_t acc = 0;
    for (int64_t j = 0; j < job.num_runs; ++j) {
      src[j] = job.runs[j].src;
      dst[j] = job.runs[j].dst_slot;
      start[j] = acc;
      acc += job.runs[j].len;
    }
    if (p.runs != nullptr)
      cuda_check_for(cache,
                     cudaMemcpyAsync(staging.device, staging.host,
                                     static_cast<size_t>(job.num_runs) * 3 * sizeof(int64_t), cudaMemcpyHostToDevice, s),
                     fn, "cudaMemcpyAsync (metadata staging)");
    p.rows_per_block = rows_per_block(p.chunks_per_row, p.num_rows, b.sm_count());
    grid.x = static_cast<unsigned>((p.num_rows + p.rows_per_block - 1) / p.rows_per_block);
  } else if (job.mode == 3) {
    const MetadataArrays& md = job.md;
    p.mode = kRowsV3;
    p.num_rows = job.num_tokens;
    if (p.num_rows <= 0 || md.num_reqs <= 0) return;
    p.pages_tables = md.pages_tables;
    p.num_reqs = md.num_reqs;
    p.pages_per_req = md.pages_per_req;
    p.context_lens = md.context_lens;
    p.query_start_loc = md.query_start_loc;
    p.num_seqs_ptr = md.request_distribution != nullptr && md.request_distribution_len >= 3 ? md.request_distribution + 2
                                                                                              : md.num_seqs;
    if (p.pages_tables == nullptr || p.context_lens == nullptr || p.query_start_loc == nullptr || p.num_seqs_ptr == nullptr)
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: v3 metadata lacks pages_tables, context_lens, query_start_loc or the sequence count", fn);
    p.rows_per_block = rows_per_block(p.chunks_per_row, p.num_rows, b.sm_count());
    grid.x = static_cast<unsigned>((p.num_rows + p.rows_per_block - 1) / p.rows_per_block);
  } else {
    const MetadataArrays& md = job.md;
    p.mode = kRowsV2;
    if (md.num_slices <= 0 || job.num_tokens <= 0) return;
    if (md.slot_mapping == nullptr || md.num_kv_update_slices == nullptr)
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: v2 metadata lacks slot_mapping or num_kv_update_slices", fn);
    p.slot_mapping = md.slot_mapping;
    p.num_slices = md.num_slices;
    p.num_valid_slices_ptr = md.num_kv_update_slices;
    // Rows per block from the page size (a slice normally covers at most one page).
    p.rows_per_block = rows_per_block(p.chunks_per_row, md.num_slices * L.page_size, b.sm_count());
    if (p.rows_per_block > L.page_size) p.rows_per_block = static_cast<int32_t>(L.page_size);
    if (md.num_slices > 0x7FFFFFFF)
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: %lld slices exceed the CUDA grid", fn, static_cast<long long>(md.num_slices));
    grid.x = static_cast<unsigned>(md.num_slices);
    int64_t gy = (L.page_size + p.rows_per_block - 1) / p.rows_per_block;
    grid.y = static_cast<unsigned>(gy > 65535 ? 65535 : gy);
  }
  if (grid.x == 0) return;

  const cudaError_t err = launch(job.key.dtype, job.value.dtype, job.cache_dtype, p, vec, grid, s, fn);
  if (err != cudaSuccess) {
    if (err == cudaErrorInvalidResourceHandle) refuse_foreign_stream(b, s, staging, fn);
    cuda_check_for(cache, err, fn, "kernel launch");
  }
  b.finish_staging(staging, s, fn);
}

}  // namespace kvp::detail
#endif  // KVP_HAS_CUDA
