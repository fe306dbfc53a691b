// Device code of kvp_concatenate for CUDA caches (SPEC.md §5): one kernel template per
// (input dtype, cache dtype, vectorised?) that writes whole token slots of one layer.
//
// Work decomposition. A "row" is one token slot to write. A block owns up to kMaxRowsPerBlock
// rows: first each warp maps rows to (source token, destination slot) — a warp-cooperative
// 32-ary search over the run starts (host-validated metadata) or over query_start_loc
// (device-resident v3 metadata), with every index bounds-checked — then all threads stream the
// rows' chunks: a chunk is 16 bytes of the destination (8 bf16/f16, 4 f32, 16 fp8 lanes of one
// combined entry), loaded from key/value with vector loads when aligned, converted in registers
// with backend/fp_convert.hpp (the CPU backend's code, so the bytes are identical) and stored with
// one 16-byte store. Consecutive threads store consecutive chunks of a slot, so stores are fully
// coalesced; padding lanes and padding entries are written as zeros.
//
// Device-resident v2 metadata uses a second block function: block (j, y) writes slice j's token
// rows y*rows, … and grid-strides over longer slices.
//
// Shards (SPEC.md §7.3). A shard's slot holds the whole layout's combined entries [slot_begin,
// slot_begin + entries): each chunk finds its head from the whole-layout entry, so a slice that
// starts or ends with half a head (only its keys or values) takes the same paths. Device-resident
// metadata names the whole cache's pages: every id is checked against all of them, and tokens on
// pages of other data ranks are skipped without an error.
//
// Errors. Device-resident metadata that breaks a bound is not written; the first violation is
// recorded in a DeviceErrorRecord (claimed with atomicCAS) and mirrored into mapped host memory
// for the host to read without synchronising. The launch that records it still writes every
// valid entry; its last block to finish marks the record "blocking", and every block of a later
// launch reads that first and writes nothing, so a cache with a pending device-side error
// refuses further writes, even from replayed CUDA graphs, until the host clears it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "backend/fp_convert.hpp"
#include "kernels/concat_params.hpp"
#include "kernels/device_error.cuh"

namespace kvp::detail::cuda {

// ------------------------------------------------------------------------------------------------
// Dtype tags: the storage bits of each dtype and its conversions through f32.

struct TF32 {
  using bits = uint32_t;
  static constexpr kvp_dtype id = KVP_DTYPE_F32;
  __device__ static float to_f32(bits b) { return fp::f32_from_bits(b); }
  __device__ static bits from_f32(float f) { return fp::f32_bits(f); }
};
struct TF16 {
  using bits = uint16_t;
  static constexpr kvp_dtype id = KVP_DTYPE_F16;
  __device__ static float to_f32(bits b) { return fp::f32_from_f16(b); }
  __device__ static bits from_f32(float f) { return fp::f16_from_f32(f); }
};
struct TBF16 {
  using bits = uint16_t;
  static constexpr kvp_dtype id = KVP_DTYPE_BF16;
  __device__ static float to_f32(bits b) { return fp::f32_from_bf16(b); }
  __device__ static bits from_f32(float f) { return fp::bf16_from_f32(f); }
};
struct TE4M3 {
  using bits = uint8_t;
  static constexpr kvp_dtype id = KVP_DTYPE_F8_E4M3FN;
  __device__ static float to_f32(bits b) { return fp::f32_from_e4m3fn(b); }
  __device__ static bits from_f32(float f) { return fp::e4m3fn_from_f32(f); }
};
struct TE5M2 {
  using bits = uint8_t;
  static constexpr kvp_dtype id = KVP_DTYPE_F8_E5M2;
  __device__ static float to_f32(bits b) { return fp::f32_from_e5m2(b); }
  __device__ static bits from_f32(float f) { return fp::e5m2_from_f32(f); }
};

// Key and value of different input dtypes: each element is read and converted by its run-time
// dtype (slower, scalar loads; an unusual case).
struct TAny {
  using bits = uint32_t;
};

template <class Out>
__device__ __forceinline__ typename Out::bits convert_any(const InputDesc& in, const void* p) {
  uint32_t b;
  if (in.itemsize == 4)
    b = *static_cast<const uint32_t*>(p);
  else
    b = *static_cast<const uint16_t*>(p);
  if (in.dtype == Out::id) return static_cast<typename Out::bits>(b);
  return Out::from_f32(fp::decode_to_f32(b, in.dtype));
}

template <class In, class Out>
__device__ __forceinline__ typename Out::bits convert(typename In::bits x) {
  if constexpr (std::is_same_v<In, Out>) {
    return x;  // same dtype: bits copied unchanged (NaN payloads included)
  } else {
    return Out::from_f32(In::to_f32(x));
  }
}

// Largest i in [0, n) with load(i) <= key (for a non-decreasing array), or -1. Warp-collective:
// all 32 lanes call it with the same arguments and get the same result; each step narrows the
// range 32-fold with one round of loads, so a search costs ceil(log32 n) dependent loads.
template <class Load>
__device__ __forceinline__ int64_t warp_last_le(const Load& load, int64_t n, int64_t key, int lane) {
  int64_t lo = 0, hi = n;
  if (n <= 0) return -1;
  while (hi - lo > 1) {
    const int64_t step = (hi - lo + 31) / 32;
    const int64_t idx = lo + static_cast<int64_t>(lane) * step;
    const bool le = idx < hi && load(idx) <= key;
    const unsigned m = __ballot_sync(0xFFFFFFFFu, le);
    if (m == 0) return -1;  // load(lo) > key; lo is 0 here (later lo always satisfies the test)
    const int k = 31 - __clz(static_cast<int>(m));
    lo += static_cast<int64_t>(k) * step;
    hi = (lo + step < hi) ? lo + step : hi;
  }
  return load(lo) <= key ? lo : -1;
}

// Maps row `row` of a kRowsRuns / kRowsV3 grid to (source token, destination slot); -1 = skip.
__device__ __forceinline__ void map_row(const ConcatParams& p, int64_t row, int lane, int64_t& src, int64_t& slot) {
  src = -1;
  slot = -1;
  if (row >= p.num_rows) return;
  if (p.mode == kRowsRuns) {
    const int64_t* r = p.runs;
    const int64_t n = p.num_runs;
    int64_t j;
    if (r == nullptr) {
      j = warp_last_le([&](int64_t i) { return p.inl[2 * kMaxInlineRuns + i]; }, n, row, lane);
      if (j < 0) return;
      src = p.inl[j] + (row - p.inl[2 * kMaxInlineRuns + j]);
      slot = p.inl[kMaxInlineRuns + j] + (row - p.inl[2 * kMaxInlineRuns + j]);
    } else {
      j = warp_last_le(
          [&](int64_t i) {
            KVP_EMU_CHECK(&r[2 * n + i], sizeof *r, sizeof *r, false, r);
            return r[2 * n + i];
          },
          n, row, lane);
      if (j < 0) return;
      src = r[j] + (row - r[2 * n + j]);
      slot = r[n + j] + (row - r[2 * n + j]);
    }
    // Host-validated; keep a cheap guard against ever writing outside the layer.
    if (slot < 0 || slot >= p.num_slots || src < 0 || src >= p.num_tokens) src = slot = -1;
    return;
  }
  // kRowsV3: row = token t of key/value.
  const int64_t t = row;
  KVP_EMU_CHECK(p.num_seqs_ptr, sizeof *p.num_seqs_ptr, 4, false, p.num_seqs_ptr);
  const int64_t ns = *p.num_seqs_ptr;
  if (ns < 0 || ns > p.num_reqs) {
    if (lane == 0) report(p.err, p.mirror, kDevOpConcatenate, kDevErrNumSeqs, 2, ns, p.num_reqs);
    return;
  }
  const int32_t* qsl = p.query_start_loc;
  const int64_t i = warp_last_le(
      [&](int64_t k) {
        KVP_EMU_CHECK(&qsl[k], sizeof *qsl, 4, false, qsl);
        return static_cast<int64_t>(qsl[k]);
      },
      ns, t, lane);
  if (i < 0) return;  // before the first request: a padding token
  KVP_EMU_CHECK(&qsl[i + 1], sizeof *qsl, 4, false, qsl);
  KVP_EMU_CHECK(&p.context_lens[i], sizeof *p.context_lens, 4, false, p.context_lens);
  const int64_t qs = qsl[i], qe = qsl[i + 1];
  if (qs < 0 || qe < qs || qe > p.num_tokens) {
    if (lane == 0) report(p.err, p.mirror, kDevOpConcatenate, kDevErrQueryStart, i + 1, qe, p.num_tokens);
    return;
  }
  if (t >= qe) return;  // padding token after the last request
  const int64_t kv = p.context_lens[i];
  const int64_t q_len = qe - qs;
  if (q_len > kv) {
    if (lane == 0) report(p.err, p.mirror, kDevOpConcatenate, kDevErrQueryLen, i, q_len, kv);
    return;
  }
  const int64_t pos = kv - q_len + (t - qs);
  const int64_t lp = pos / p.page_size;
  if (lp >= p.pages_per_req) {
    if (lane == 0) report(p.err, p.mirror, kDevOpConcatenate, kDevErrPageIndex, i, lp, p.pages_per_req);
    return;
  }
  const int64_t e = i * p.pages_per_req + lp;
  KVP_EMU_CHECK(&p.pages_tables[e], sizeof *p.pages_tables, 4, false, p.pages_tables);
  const int64_t page = p.pages_tables[e];
  if (page < 0 || page >= p.global_pages) {
    if (lane == 0) report(p.err, p.mirror, kDevOpConcatenate, kDevErrPageId, e, page, p.global_pages);
    return;
  }
  const int64_t local = page - p.page_begin;
  if (local < 0 || local >= p.num_pages) return;  // another data rank's page
  src = t;
  slot = local * p.page_size + (pos - lp * p.page_size);
}

// Data-parallel v3 metadata (p.padding_rows): the rows of query length 0 are padding, which no
// token maps to; each must have context_len 0. The grid's threads check the rows between them.
__device__ __forceinline__ void check_padding_rows(const ConcatParams& p) {
  KVP_EMU_CHECK(p.num_seqs_ptr, sizeof *p.num_seqs_ptr, 4, false, p.num_seqs_ptr);
  const int64_t ns = *p.num_seqs_ptr;
  if (ns < 0 || ns > p.num_reqs) return;  // map_row reports it
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < ns; i += step) {
    KVP_EMU_CHECK(&p.query_start_loc[i + 1], sizeof *p.query_start_loc, 4, false, p.query_start_loc);
    KVP_EMU_CHECK(&p.context_lens[i], sizeof *p.context_lens, 4, false, p.context_lens);
    const int64_t kv = p.context_lens[i];
    if (p.query_start_loc[i + 1] == p.query_start_loc[i] && kv != 0)
      report(p.err, p.mirror, kDevOpConcatenate, kDevErrPaddingRow, i, kv, 0);
  }
}

// ------------------------------------------------------------------------------------------------
// Writing one 16-byte chunk (or one element when not vectorised) of a token slot.

template <int kBytes>
struct VecUnit;
template <>
struct VecUnit<8> {
  using type = uint2;
};
template <>
struct VecUnit<16> {
  using type = uint4;
};

// x / d, with a shift when d is a power of two (the common v3 geometries): saves the integer
// division sequence in the per-chunk loop.
__device__ __forceinline__ int div_fast(int x, int d, int shift) { return shift >= 0 ? (x >> shift) : (x / d); }

// Where chunk `ch` (of V lanes) of a slot lies: local entry c from lane l0, and what it holds:
// keys (kv = 0) or values of KV head h of the whole layout (h >= p.heads: a padding entry), lanes
// from d0. A shard's local entry c is the whole layout's entry slot_begin + c (v3/v2: 2h + kv;
// h64: h, keys in lanes 0..63 and values in 64..127).
struct ChunkPos {
  int c, l0, h, kv, d0;
};
__device__ __forceinline__ ChunkPos chunk_pos(const ConcatParams& p, int ch, int V) {
  ChunkPos q;
  q.c = div_fast(ch, p.chunks_per_entry, p.cpe_shift);
  q.l0 = (ch - q.c * p.chunks_per_entry) * V;
  const int g = q.c + p.slot_begin;
  if (p.h64) {
    q.h = g;
    q.kv = q.l0 >= 64 ? 1 : 0;
    q.d0 = q.l0 & 63;
  } else {
    q.h = g >> 1;
    q.kv = g & 1;
    q.d0 = q.l0;
  }
  return q;
}

template <class In, class Out, bool kVec>
__device__ __forceinline__ void write_chunk(const ConcatParams& p, int64_t t, int64_t slot, int ch) {
  using IB = typename In::bits;
  using OB = typename Out::bits;
  constexpr int V = kVec ? static_cast<int>(16 / sizeof(OB)) : 1;
  const ChunkPos q = chunk_pos(p, ch, V);
  const int c = q.c, l0 = q.l0, d0 = q.d0;
  alignas(16) OB out[V];
  if (q.h < p.heads && d0 < p.head_dim) {
    const InputDesc& in = q.kv ? p.value : p.key;
    const int64_t h = q.h - p.head_offset;  // the head's index in key/value
    const int nvalid = (p.head_dim - d0) < V ? (p.head_dim - d0) : V;
    if constexpr (std::is_same_v<In, TAny>) {
      const uint8_t* base = static_cast<const uint8_t*>(in.data) +
                            (t * in.st + h * in.sh + static_cast<int64_t>(d0) * in.sd) * in.itemsize;
      KVP_EMU_CHECK(base, in.itemsize, 1, false, in.data);
      KVP_EMU_CHECK(base + static_cast<int64_t>(nvalid - 1) * in.sd * in.itemsize, in.itemsize, 1, false, in.data);
#pragma unroll
      for (int k = 0; k < V; ++k)
        out[k] = k < nvalid ? convert_any<Out>(in, base + static_cast<int64_t>(k) * in.sd * in.itemsize) : OB(0);
    } else {
      const IB* src = static_cast<const IB*>(in.data) + t * in.st + h * in.sh + static_cast<int64_t>(d0) * in.sd;
      KVP_EMU_CHECK(src, sizeof(IB), 1, false, in.data);
      KVP_EMU_CHECK(src + static_cast<int64_t>(nvalid - 1) * in.sd, sizeof(IB), 1, false, in.data);
      if (kVec && nvalid == V && p.in_vec_ok) {
        constexpr int kInBytes = V * static_cast<int>(sizeof(IB));
        constexpr int kUnitBytes = kInBytes >= 16 ? 16 : 8;
        using U = typename VecUnit<kUnitBytes>::type;
        alignas(16) IB vals[V];
#pragma unroll
        for (int k = 0; k < kInBytes / kUnitBytes; ++k)
          reinterpret_cast<U*>(vals)[k] = __ldg(reinterpret_cast<const U*>(src) + k);
#pragma unroll
        for (int k = 0; k < V; ++k) out[k] = convert<In, Out>(vals[k]);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) out[k] = k < nvalid ? convert<In, Out>(src[k * in.sd]) : OB(0);
      }
    }
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = OB(0);
  }
  uint8_t* d = p.dst + slot * p.row_bytes + (static_cast<int64_t>(c) * p.lanes + l0) * static_cast<int64_t>(sizeof(OB));
  KVP_EMU_CHECK(d, sizeof out, kVec ? 16 : sizeof(OB), true, p.dst);
  if constexpr (kVec) {
    *reinterpret_cast<uint4*>(d) = *reinterpret_cast<const uint4*>(out);
  } else {
    *reinterpret_cast<OB*>(d) = out[0];
  }
}

// The common case of a chunk: all V lanes are data lanes of one head and can be read with
// vector loads. Fills the source/destination addresses; false for the other cases (padding,
// partial chunks, unaligned or strided inputs, mixed dtypes), which write_chunk handles.
template <class In, class Out, bool kVec>
__device__ __forceinline__ bool fast_chunk(const ConcatParams& p, int64_t t, int64_t slot, int ch,
                                           const typename In::bits*& src, uint8_t*& dst) {
  if constexpr (!kVec || std::is_same_v<In, TAny>) {
    return false;
  } else {
    using OB = typename Out::bits;
    constexpr int V = static_cast<int>(16 / sizeof(OB));
    if (!p.in_vec_ok) return false;
    const ChunkPos q = chunk_pos(p, ch, V);
    if (q.h >= p.heads || q.d0 + V > p.head_dim) return false;
    const InputDesc& in = q.kv ? p.value : p.key;
    const int64_t h = q.h - p.head_offset;  // the head's index in key/value
    src = static_cast<const typename In::bits*>(in.data) + t * in.st + h * in.sh + q.d0;
    KVP_EMU_CHECK(src, V * sizeof(typename In::bits), 1, false, in.data);
    dst = p.dst + slot * p.row_bytes + (static_cast<int64_t>(q.c) * p.lanes + q.l0) * static_cast<int64_t>(sizeof(OB));
    return true;
  }
}

template <class In, class Out, bool kVec>
__device__ __forceinline__ void write_rows(const ConcatParams& p, const int64_t* s_src, const int64_t* s_slot) {
  const int total = p.rows_per_block * p.chunks_per_row;
  const int step = blockDim.x;
  int it = threadIdx.x;
  if constexpr (kVec && !std::is_same_v<In, TAny>) {
    // Two chunks per iteration with both loads issued before either store, so each thread keeps
    // two 16-byte (or wider) loads in flight.
    using IB = typename In::bits;
    using OB = typename Out::bits;
    constexpr int V = static_cast<int>(16 / sizeof(OB));
    constexpr int kInBytes = V * static_cast<int>(sizeof(IB));
    constexpr int kUnitBytes = kInBytes >= 16 ? 16 : 8;
    using U = typename VecUnit<kUnitBytes>::type;
    for (; it + step < total; it += 2 * step) {
      const int ia = it, ib = it + step;
      const int ra = div_fast(ia, p.chunks_per_row, p.cpr_shift), rb = div_fast(ib, p.chunks_per_row, p.cpr_shift);
      const int cha = ia - ra * p.chunks_per_row, chb = ib - rb * p.chunks_per_row;
      const int64_t sa = s_slot[ra], sb = s_slot[rb];
      const IB* pa = nullptr;
      const IB* pb = nullptr;
      uint8_t* da = nullptr;
      uint8_t* db = nullptr;
      const bool fa = sa >= 0 && fast_chunk<In, Out, kVec>(p, s_src[ra], sa, cha, pa, da);
      const bool fb = sb >= 0 && fast_chunk<In, Out, kVec>(p, s_src[rb], sb, chb, pb, db);
      if (fa && fb) {
        alignas(16) IB va[V];
        alignas(16) IB vb[V];
#pragma unroll
        for (int k = 0; k < kInBytes / kUnitBytes; ++k) {
          reinterpret_cast<U*>(va)[k] = __ldg(reinterpret_cast<const U*>(pa) + k);
          reinterpret_cast<U*>(vb)[k] = __ldg(reinterpret_cast<const U*>(pb) + k);
        }
        alignas(16) OB oa[V];
        alignas(16) OB ob[V];
#pragma unroll
        for (int k = 0; k < V; ++k) {
          oa[k] = convert<In, Out>(va[k]);
          ob[k] = convert<In, Out>(vb[k]);
        }
        KVP_EMU_CHECK(da, 16, 16, true, p.dst);
        KVP_EMU_CHECK(db, 16, 16, true, p.dst);
        *reinterpret_cast<uint4*>(da) = *reinterpret_cast<const uint4*>(oa);
        *reinterpret_cast<uint4*>(db) = *reinterpret_cast<const uint4*>(ob);
      } else {
        if (sa >= 0) write_chunk<In, Out, kVec>(p, s_src[ra], sa, cha);
        if (sb >= 0) write_chunk<In, Out, kVec>(p, s_src[rb], sb, chb);
      }
    }
  }
  for (; it < total; it += step) {
    const int r = div_fast(it, p.chunks_per_row, p.cpr_shift);
    const int ch = it - r * p.chunks_per_row;
    const int64_t slot = s_slot[r];
    if (slot < 0) continue;
    write_chunk<In, Out, kVec>(p, s_src[r], slot, ch);
  }
}

// Host-validated runs and device-resident v3 metadata: grid.x blocks of rows_per_block rows.
template <class In, class Out, bool kVec>
__global__ void __launch_bounds__(kThreads) concat_rows_kernel(const ConcatParams p) {
  __shared__ int64_t s_src[kMaxRowsPerBlock];
  __shared__ int64_t s_slot[kMaxRowsPerBlock];
  __shared__ int s_blocking;
  if (threadIdx.x == 0) s_blocking = load_blocking(p.err);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * p.rows_per_block;
  for (int r = warp; r < p.rows_per_block; r += nwarps) {
    int64_t src, slot;
    map_row(p, row0 + r, lane, src, slot);
    if (lane == 0) {
      s_src[r] = src;
      s_slot[r] = slot;
    }
  }
  if (p.padding_rows) check_padding_rows(p);
  __syncthreads();
  if (s_blocking == 0) write_rows<In, Out, kVec>(p, s_src, s_slot);
  finish_block(p.err);
}

// Device-resident v2 metadata: block (j, y) handles slice j, rows y*rpb + k*gridDim.y*rpb + r.
template <class In, class Out, bool kVec>
__device__ __forceinline__ void v2_block(const ConcatParams& p) {
  __shared__ int64_t s_src[kMaxRowsPerBlock];
  __shared__ int64_t s_slot[kMaxRowsPerBlock];
  __shared__ int64_t s_len, s_dst0, s_src0;
  const int64_t j = blockIdx.x;
  if (threadIdx.x == 0) {
    int64_t len = 0, d0 = 0, s0 = 0;
    const int blocking = load_blocking(p.err);
    KVP_EMU_CHECK(p.num_valid_slices_ptr, sizeof *p.num_valid_slices_ptr, 4, false, p.num_valid_slices_ptr);
    const int64_t n = *p.num_valid_slices_ptr;
    if (n < 0 || n > p.num_slices) {
      report(p.err, p.mirror, kDevOpConcatenate, kDevErrNumSlices, 0, n, p.num_slices);
    } else if (j < n) {
      KVP_EMU_CHECK(&p.slot_mapping[2 * p.num_slices + j], sizeof *p.slot_mapping, 4, false, p.slot_mapping);
      d0 = p.slot_mapping[j];
      s0 = p.slot_mapping[p.num_slices + j];
      len = p.slot_mapping[2 * p.num_slices + j];
      if (len < 0) {
        report(p.err, p.mirror, kDevOpConcatenate, kDevErrSliceLength, j, len, p.page_size);
        len = 0;
      }
    }
    s_len = blocking != 0 ? 0 : len;  // a pending error from an earlier launch: write nothing
    s_dst0 = d0;
    s_src0 = s0;
  }
  __syncthreads();
  const int64_t len = s_len, d0 = s_dst0, s0 = s_src0;
  if (len == 0) return;
  // Slots of the whole cache; a shard writes those of its pages, at local slot - first.
  const int64_t global_slots = p.global_pages * p.page_size, first = p.page_begin * p.page_size;
  const int64_t stride = static_cast<int64_t>(gridDim.y) * p.rows_per_block;
  for (int64_t o0 = static_cast<int64_t>(blockIdx.y) * p.rows_per_block; o0 < len; o0 += stride) {
    if (threadIdx.x < p.rows_per_block) {
      const int64_t o = o0 + threadIdx.x;
      int64_t src = -1, slot = -1;
      if (o < len) {
        const int64_t sl = d0 + o, tk = s0 + o;
        if (sl < 0 || sl >= global_slots) {
          report(p.err, p.mirror, kDevOpConcatenate, kDevErrSlot, j, d0, global_slots);  // names the slice's first slot
        } else if (tk < 0 || tk >= p.num_tokens) {
          report(p.err, p.mirror, kDevOpConcatenate, kDevErrSliceSource, j, s0, p.num_tokens);
        } else if (sl - first >= 0 && sl - first < p.num_slots) {  // else another data rank's slot
          src = tk;
          slot = sl - first;
        }
      }
      s_src[threadIdx.x] = src;
      s_slot[threadIdx.x] = slot;
    }
    __syncthreads();
    write_rows<In, Out, kVec>(p, s_src, s_slot);
    __syncthreads();
  }
}

template <class In, class Out, bool kVec>
__global__ void __launch_bounds__(kThreads) concat_v2_kernel(const ConcatParams p) {
  v2_block<In, Out, kVec>(p);
  finish_block(p.err);
}

}  // namespace kvp::detail::cuda
