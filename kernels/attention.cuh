// Device code of kvp_attention for CUDA caches (ATTENTION.md §5.8): online softmax in f32 over
// the request's pages, read in place through the page table.
//
// Work decomposition. A block owns one tile of up to kAttnRows query rows (pairs of token and
// query head of one KV head's group, token-major: a decode row's GQA heads share the tile, prefill
// tokens fill it) and one split of the tile's key range (grid.z; long decode contexts are split
// over blocks and combined by attention_merge_kernel). Per step of block_keys key positions the
// keys are widened to f32 into shared memory, the tile's logits computed one (row, key) per
// thread, the online softmax run one row per thread, and each thread accumulates the weighted
// values of its lanes for all rows in registers, reading the values straight from the pages
// (coalesced across lanes). Only the keys a row may see enter its sum: masked keys are excluded by
// selection, never multiplied by a zero weight (ATTENTION.md D-5).
//
// Metadata is checked on the device for every block (the row count, query_start_loc, context
// length, page-table width and every page id the row reads); a violation is recorded in the
// cache's device error record (kernels/device_error.cuh) and the row's output is written as
// zeros where its tokens are known.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "backend/fp_convert.hpp"
#include "kernels/attention_params.hpp"
#include "kernels/device_error.cuh"

namespace kvp::detail::cuda {

// ---- element access

template <kvp_dtype SD>
__device__ __forceinline__ float page_f32(const uint8_t* pages, int64_t elem) {
  if constexpr (SD == KVP_DTYPE_F32) {
    KVP_EMU_CHECK(pages + elem * 4, 4, 4, false, pages);
    return *reinterpret_cast<const float*>(pages + elem * 4);
  } else if constexpr (SD == KVP_DTYPE_F16 || SD == KVP_DTYPE_BF16) {
    KVP_EMU_CHECK(pages + elem * 2, 2, 2, false, pages);
    const uint16_t b = *reinterpret_cast<const uint16_t*>(pages + elem * 2);
    return SD == KVP_DTYPE_F16 ? fp::f32_from_f16(b) : fp::f32_from_bf16(b);
  } else {
    KVP_EMU_CHECK(pages + elem, 1, 1, false, pages);
    return SD == KVP_DTYPE_F8_E4M3FN ? fp::f32_from_e4m3fn(pages[elem]) : fp::f32_from_e5m2(pages[elem]);
  }
}

__device__ __forceinline__ const uint8_t* tensor_at(const InputDesc& t, int64_t token, int64_t head, int64_t d) {
  return static_cast<const uint8_t*>(t.data) + (token * t.st + head * t.sh + d * t.sd) * t.itemsize;
}

__device__ __forceinline__ float load_tensor(const InputDesc& t, int64_t token, int64_t head, int64_t d) {
  const uint8_t* a = tensor_at(t, token, head, d);
  KVP_EMU_CHECK(a, t.itemsize, t.itemsize, false, t.data);
  if (t.itemsize == 4) return *reinterpret_cast<const float*>(a);
  return fp::decode_to_f32(*reinterpret_cast<const uint16_t*>(a), t.dtype);
}

__device__ __forceinline__ void store_tensor(const InputDesc& t, int64_t token, int64_t head, int64_t d, float v) {
  uint8_t* a = const_cast<uint8_t*>(tensor_at(t, token, head, d));
  KVP_EMU_CHECK(a, t.itemsize, t.itemsize, true, t.data);
  if (t.dtype == KVP_DTYPE_F32)
    *reinterpret_cast<float*>(a) = v;
  else
    *reinterpret_cast<uint16_t*>(a) = t.dtype == KVP_DTYPE_F16 ? fp::f16_from_f32(v) : fp::bf16_from_f32(v);
}

// ---- rows

// What a block knows about its request row after the checks.
struct AttnRow {
  int64_t qs, q_len, len;  // query rows [qs, qs + q_len), context length
  int32_t state;           // kRowSkip, kRowBad (zeros where the tokens are known), kRowOk
};
enum : int32_t { kRowSkip = 0, kRowBad = 1, kRowOk = 2 };

// Thread 0: the row header of request row i, checked (violations reported when `report_errors`).
__device__ __forceinline__ AttnRow check_row_header(const AttentionParams& p, int64_t i, bool report_errors) {
  AttnRow r{0, 0, 0, kRowSkip};
  KVP_EMU_CHECK(p.num_rows_ptr, 4, 4, false, p.num_rows_ptr);
  const int64_t n = *p.num_rows_ptr;
  if (n < 0 || n > p.num_reqs) {
    if (report_errors) report(p.err, p.mirror, kDevOpAttention, kDevErrNumSeqs, 2, n, p.num_reqs);
    return r;
  }
  if (i >= n) return r;
  KVP_EMU_CHECK(&p.query_start_loc[i + 1], 4, 4, false, p.query_start_loc);
  const int64_t qs = p.query_start_loc[i], qe = p.query_start_loc[i + 1];
  if (qs < 0 || qe < qs || qe > p.num_tokens) {
    if (report_errors) report(p.err, p.mirror, kDevOpAttention, kDevErrQueryStart, i + 1, qe, p.num_tokens);
    return r;
  }
  r.q_len = qe - qs;
  r.qs = qs;
  if (p.token_starts != nullptr) {  // host-validated: the blocks tile the same rows
    KVP_EMU_CHECK(&p.token_starts[i], 4, 4, false, p.token_starts);
    r.qs = p.token_starts[i];
  }
  r.state = kRowBad;
  KVP_EMU_CHECK(&p.context_lens[i], 4, 4, false, p.context_lens);
  r.len = p.context_lens[i];
  if (p.padding_rows && r.q_len == 0) {  // a data-parallel padding row: reads and writes nothing
    if (r.len != 0 && report_errors) report(p.err, p.mirror, kDevOpAttention, kDevErrPaddingRow, i, r.len, 0);
    r.state = kRowSkip;
    return r;
  }
  if (r.q_len > r.len) {
    if (report_errors) report(p.err, p.mirror, kDevOpAttention, kDevErrQueryLen, i, r.q_len, r.len);
    return r;
  }
  const int64_t pages = (r.len + p.page_size - 1) / p.page_size;
  if (pages > p.pages_per_req) {
    if (report_errors) report(p.err, p.mirror, kDevOpAttention, kDevErrPageIndex, i, pages - 1, p.pages_per_req);
    return r;
  }
  r.state = kRowOk;
  return r;
}

// All threads: every page id of the row's context in range (else the row is bad).
__device__ __forceinline__ void check_row_pages(const AttentionParams& p, int64_t i, AttnRow& row, int* s_bad,
                                               bool report_errors) {
  if (row.state == kRowOk) {
    const int64_t pages = (row.len + p.page_size - 1) / p.page_size;
    for (int64_t k = threadIdx.x; k < pages; k += blockDim.x) {
      const int64_t e = i * p.pages_per_req + k;
      KVP_EMU_CHECK(&p.pages_tables[e], 4, 4, false, p.pages_tables);
      const int64_t page = p.pages_tables[e];
      if ((page < 0 || page >= p.num_pages) && atomicCAS(s_bad, 0, 1) == 0 && report_errors)
        report(p.err, p.mirror, kDevOpAttention, kDevErrPageId, e, page, p.num_pages);
    }
  }
  __syncthreads();
  if (row.state == kRowOk && *s_bad) row.state = kRowBad;
}

// The block's row header and page checks: thread 0 reads the header into shared memory.
__device__ __forceinline__ AttnRow load_row(const AttentionParams& p, int64_t i, bool report_errors) {
  __shared__ int64_t s_hdr[3];
  __shared__ int s_state, s_bad;
  if (threadIdx.x == 0) {
    const AttnRow r = check_row_header(p, i, report_errors);
    s_hdr[0] = r.qs;
    s_hdr[1] = r.q_len;
    s_hdr[2] = r.len;
    s_state = r.state;
    s_bad = 0;
  }
  __syncthreads();
  AttnRow row{s_hdr[0], s_hdr[1], s_hdr[2], s_state};
  check_row_pages(p, i, row, &s_bad, report_errors);
  return row;
}

// Position and allowed key range [lo, hi) of flattened row f of a checked row.
__device__ __forceinline__ void row_keys(const AttentionParams& p, const AttnRow& row, int64_t f, int64_t& lo,
                                         int64_t& hi) {
  const int64_t pos = row.len - row.q_len + f / p.rep;
  hi = pos + 1;
  lo = p.window > 0 && pos - p.window + 1 > 0 ? pos - p.window + 1 : 0;
}

// Key range [k0, k1) of split z of the tile starting at flattened row f0 with nf rows.
__device__ __forceinline__ void split_keys(const AttentionParams& p, const AttnRow& row, int64_t f0, int nf, int z,
                                           int64_t& k0, int64_t& k1) {
  int64_t lo0, hi0, lo1, hi1;
  row_keys(p, row, f0, lo0, hi0);
  row_keys(p, row, f0 + nf - 1, lo1, hi1);
  const int64_t keys = hi1 - lo0;
  k0 = lo0 + keys * z / p.splits;
  k1 = lo0 + keys * (z + 1) / p.splits;
}

// Writes row r of a tile: out = v_scale * acc / l, with the head's sink; `acc` holds the kLanes
// lanes this thread owns (lane d = threadIdx.x + u * blockDim.x).
template <int kLanes>
__device__ __forceinline__ void write_row(const AttentionParams& p, int64_t token, int64_t head, float m, float l,
                                          const float (&acc)[kLanes], bool zero) {
  float scale = 1.0f;
  if (!zero && p.sinks != nullptr) {
    const float sink = p.sinks[head];
    if (sink != -INFINITY) {
      const float mm = m > sink ? m : sink;
      scale = expf(m - mm);
      l = l * scale + expf(sink - mm);
    }
  }
  const float f = zero ? 0.0f : p.v_scale * scale / l;
#pragma unroll
  for (int u = 0; u < kLanes; ++u) {
    const int64_t d = threadIdx.x + static_cast<int64_t>(u) * blockDim.x;
    if (d < p.head_dim) store_tensor(p.out, token, head, d, zero ? 0.0f : acc[u] * f);
  }
}

// ---- the main kernel

// kLanes: lanes of the head dim per thread (head_dim <= kLanes * kAttnThreads).
template <kvp_dtype SD, int kLanes>
__global__ void __launch_bounds__(kAttnThreads) attention_kernel(const AttentionParams p) {
  __shared__ float smem[kAttnSharedFloats];
  __shared__ float s_m[kAttnRows], s_l[kAttnRows], s_alpha[kAttnRows];
  __shared__ int64_t s_lo[kAttnRows], s_hi[kAttnRows];
  const int g = blockIdx.x / p.tiles, tile = blockIdx.x % p.tiles, z = blockIdx.z;
  const int64_t i = blockIdx.y;
  const AttnRow row = load_row(p, i, true);
  const int64_t f0 = static_cast<int64_t>(tile) * kAttnRows;
  const int64_t rows = row.q_len * p.rep;
  if (row.state == kRowSkip || f0 >= rows) {
    finish_block(p.err);
    return;
  }
  const int nf = rows - f0 < kAttnRows ? static_cast<int>(rows - f0) : kAttnRows;
  const int stride = p.dp + 1;  // odd: the (row, key) threads of a warp hit distinct banks
  float* sq = smem;                     // [kAttnRows][stride]
  float* sk = sq + kAttnRows * stride;  // [block_keys][stride]
  float* ss = sk + p.block_keys * stride;  // [kAttnRows][block_keys]
  float acc[kAttnRows][kLanes];
#pragma unroll
  for (int r = 0; r < kAttnRows; ++r)
#pragma unroll
    for (int u = 0; u < kLanes; ++u) acc[r][u] = 0.0f;
  int64_t k0 = 0, k1 = 0;
  if (row.state == kRowOk) split_keys(p, row, f0, nf, z, k0, k1);
  for (int e = threadIdx.x; e < kAttnRows * stride; e += blockDim.x) {
    const int r = e / stride, d = e % stride;
    float v = 0.0f;
    if (row.state == kRowOk && r < nf && d < p.head_dim)
      v = load_tensor(p.q, row.qs + (f0 + r) / p.rep, g * p.rep + (f0 + r) % p.rep, d) * p.logit_scale;
    sq[e] = v;
  }
  if (threadIdx.x < kAttnRows) {
    int64_t lo = 0, hi = 0;
    if (row.state == kRowOk && static_cast<int>(threadIdx.x) < nf) row_keys(p, row, f0 + threadIdx.x, lo, hi);
    s_lo[threadIdx.x] = lo > k0 ? lo : k0;
    s_hi[threadIdx.x] = hi < k1 ? hi : k1;
    s_m[threadIdx.x] = -INFINITY;
    s_l[threadIdx.x] = 0.0f;
  }
  const int32_t* table = p.pages_tables + i * p.pages_per_req;
  const int64_t k_off = (p.h64 ? g : 2 * g) * p.storage_head_dim;
  const int64_t v_off = p.h64 ? k_off + 64 : k_off + p.storage_head_dim;
  __syncthreads();
  for (int64_t j0 = k0; j0 < k1; j0 += p.block_keys) {
    const int nb = k1 - j0 < p.block_keys ? static_cast<int>(k1 - j0) : p.block_keys;
    // Keys of the step, widened to f32.
    for (int e = threadIdx.x; e < nb * p.head_dim; e += blockDim.x) {
      const int k = e / p.head_dim, d = e % p.head_dim;
      const int64_t pos = j0 + k;
      const int64_t slot = static_cast<int64_t>(table[pos / p.page_size]) * p.page_size + pos % p.page_size;
      sk[k * stride + d] = page_f32<SD>(p.pages, slot * p.slot_elems + k_off + d);
    }
    __syncthreads();
    // Logits, one (row, key) per thread, soft-capped.
    for (int e = threadIdx.x; e < kAttnRows * nb; e += blockDim.x) {
      const int r = e / nb, k = e % nb;
      float s = 0.0f;
      for (int d = 0; d < p.head_dim; ++d) s += sq[r * stride + d] * sk[k * stride + d];
      if (p.soft_cap > 0.0f) s = p.soft_cap * tanhf(s / p.soft_cap);
      ss[r * p.block_keys + k] = s;
    }
    __syncthreads();
    // Online softmax, one row per thread: weights of the allowed keys, 0 elsewhere.
    if (threadIdx.x < kAttnRows) {
      const int r = threadIdx.x;
      const int a = s_lo[r] > j0 ? static_cast<int>(s_lo[r] - j0) : 0;
      const int b = s_hi[r] < j0 + nb ? static_cast<int>(s_hi[r] - j0) : nb;
      float bmax = -INFINITY;
      for (int k = a; k < b; ++k) bmax = fmaxf(bmax, ss[r * p.block_keys + k]);
      const float m_new = fmaxf(s_m[r], bmax);
      const float alpha = m_new == -INFINITY ? 1.0f : expf(s_m[r] - m_new);
      float sum = 0.0f;
      for (int k = 0; k < nb; ++k) {
        const float w = k >= a && k < b ? expf(ss[r * p.block_keys + k] - m_new) : 0.0f;
        ss[r * p.block_keys + k] = w;
        sum += w;
      }
      s_l[r] = s_l[r] * alpha + sum;
      s_m[r] = m_new;
      s_alpha[r] = alpha;
    }
    __syncthreads();
    // Weighted values: each thread its lanes, all rows.
#pragma unroll
    for (int r = 0; r < kAttnRows; ++r)
#pragma unroll
      for (int u = 0; u < kLanes; ++u) acc[r][u] *= s_alpha[r];
    for (int k = 0; k < nb; ++k) {
      const int64_t pos = j0 + k;
      const int64_t slot = static_cast<int64_t>(table[pos / p.page_size]) * p.page_size + pos % p.page_size;
      float v[kLanes];
#pragma unroll
      for (int u = 0; u < kLanes; ++u) {
        const int64_t d = threadIdx.x + static_cast<int64_t>(u) * blockDim.x;
        v[u] = d < p.head_dim ? page_f32<SD>(p.pages, slot * p.slot_elems + v_off + d) : 0.0f;
      }
#pragma unroll
      for (int r = 0; r < kAttnRows; ++r) {
        if (pos < s_lo[r] || pos >= s_hi[r]) continue;
        const float w = ss[r * p.block_keys + k];
#pragma unroll
        for (int u = 0; u < kLanes; ++u) acc[r][u] += w * v[u];
      }
    }
    __syncthreads();
  }
  // Rows by constant index (unrolled), so the accumulators stay in registers.
  if (p.splits == 1) {
#pragma unroll
    for (int r = 0; r < kAttnRows; ++r)
      if (r < nf)
        write_row<kLanes>(p, row.qs + (f0 + r) / p.rep, g * p.rep + (f0 + r) % p.rep, s_m[r], s_l[r], acc[r],
                          row.state != kRowOk);
  } else {
    float* part = p.partials +
                  ((static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x) * gridDim.z + z) * kAttnRows * (p.dp + 2);
    if (threadIdx.x < kAttnRows) {
      KVP_EMU_CHECK(part + kAttnRows + threadIdx.x, 4, 4, true, p.partials);
      part[threadIdx.x] = s_m[threadIdx.x];
      part[kAttnRows + threadIdx.x] = s_l[threadIdx.x];
    }
#pragma unroll
    for (int r = 0; r < kAttnRows; ++r)
#pragma unroll
      for (int u = 0; u < kLanes; ++u) {
        const int64_t d = threadIdx.x + static_cast<int64_t>(u) * blockDim.x;
        if (r < nf && d < p.head_dim) {
          KVP_EMU_CHECK(part + 2 * kAttnRows + r * p.dp + d, 4, 4, true, p.partials);
          part[2 * kAttnRows + r * p.dp + d] = acc[r][u];
        }
      }
  }
  finish_block(p.err);
}

// ---- combining the splits

__global__ void __launch_bounds__(kAttnThreads) attention_merge_kernel(const AttentionParams p) {
  const int g = blockIdx.x / p.tiles, tile = blockIdx.x % p.tiles;
  const int64_t i = blockIdx.y;
  const AttnRow row = load_row(p, i, false);  // the main kernel reported any violation
  const int64_t f0 = static_cast<int64_t>(tile) * kAttnRows;
  const int64_t rows = row.q_len * p.rep;
  if (row.state == kRowSkip || f0 >= rows) return;
  const int nf = rows - f0 < kAttnRows ? static_cast<int>(rows - f0) : kAttnRows;
  const float* first = p.partials + (static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x) * p.splits * kAttnRows *
                                        (p.dp + 2);
  const int64_t stride = static_cast<int64_t>(kAttnRows) * (p.dp + 2);
  for (int r = 0; r < nf; ++r) {
    float m = -INFINITY;
    for (int z = 0; z < p.splits; ++z) m = fmaxf(m, first[z * stride + r]);
    float l = 0.0f, acc[kAttnMaxLanesPerThread] = {0.0f, 0.0f, 0.0f, 0.0f};  // the merge keeps all lanes
    for (int z = 0; z < p.splits; ++z) {
      const float* part = first + z * stride;
      if (part[r] == -INFINITY) continue;  // no allowed key for the row in this split
      const float w = expf(part[r] - m);
      l += part[kAttnRows + r] * w;
#pragma unroll
      for (int u = 0; u < kAttnMaxLanesPerThread; ++u) {
        const int64_t d = threadIdx.x + static_cast<int64_t>(u) * blockDim.x;
        if (d < p.head_dim) acc[u] += part[2 * kAttnRows + r * p.dp + d] * w;
      }
    }
    write_row<kAttnMaxLanesPerThread>(p, row.qs + (f0 + r) / p.rep, g * p.rep + (f0 + r) % p.rep, m, l, acc,
                                      row.state != kRowOk);
  }
}

// ---- rows no processed request owns: zeros (block x = token)

__global__ void __launch_bounds__(kAttnThreads) attention_zero_kernel(const AttentionParams p) {
  const int64_t t = blockIdx.x;
  KVP_EMU_CHECK(p.num_rows_ptr, 4, 4, false, p.num_rows_ptr);
  const int64_t n = *p.num_rows_ptr;
  bool owned = false;
  if (n > 0 && n <= p.num_reqs) {
    KVP_EMU_CHECK(&p.query_start_loc[n], 4, 4, false, p.query_start_loc);
    owned = t >= p.query_start_loc[0] && t < p.query_start_loc[n];
  }
  if (owned) return;
  for (int64_t e = threadIdx.x; e < static_cast<int64_t>(p.num_q_heads) * p.head_dim; e += blockDim.x)
    store_tensor(p.out, t, e / p.head_dim, e % p.head_dim, 0.0f);
}

}  // namespace kvp::detail::cuda
