// CPU kvp_concatenate: a straight copy with conversion, token rows spread over the library's
// thread pool for large batches. Every written token slot gets its whole row: data lanes converted
// with backend/fp_convert.hpp, padding lanes / heads zeroed.
#include <algorithm>
#include <cstring>
#include <type_traits>

#include "backend/fp_convert.hpp"
#include "cpu/cpu_ops.hpp"
#include "util/cpu_features.hpp"
#include "util/error.hpp"
#include "util/memory.hpp"
#include "util/nontemporal.hpp"
#include "util/thread_pool.hpp"

namespace kvp::detail {

namespace {

struct Ctx {
  const ConcatJob* job;
  RowFn kfn, vfn;
  size_t token_bytes;
  int64_t key_off0, val_off0, head_step;  // byte offsets inside a token row
  // Padding (zeroed on every written row): `pad_lane_bytes` after each of the 2H data entries
  // (generic v3 with D < Dst), and the padding entries [pad_tail_off, token_bytes).
  int64_t entry_bytes, pad_lane_off, pad_lane_bytes, pad_tail_off;
  bool pad_lanes, pad_tail;
  // Same dtype, contiguous rows of a common size: fixed-size copies (+ fixed lane padding).
  void (*fast)(const Ctx&, const uint8_t*, const uint8_t*, int64_t, int64_t, uint8_t*);
};

template <int kBytes, int kPad, bool kStream>
void write_token_fast(const Ctx& c, const uint8_t* kb, const uint8_t* vb, int64_t kh, int64_t vh, uint8_t* row) {
  const ConcatJob& j = *c.job;
  uint8_t* kd = row + c.key_off0;
  uint8_t* vd = row + c.val_off0;
  for (int64_t h = 0; h < j.num_kv_heads; ++h) {
    if (kStream) {
      copy_nontemporal_fixed<kBytes>(kd + h * c.head_step, kb + h * kh);
      copy_nontemporal_fixed<kBytes>(vd + h * c.head_step, vb + h * vh);
      if (kPad > 0) {
        zero_nontemporal_fixed<kPad>(kd + h * c.head_step + kBytes);
        zero_nontemporal_fixed<kPad>(vd + h * c.head_step + kBytes);
      }
    } else {
      __builtin_memcpy(kd + h * c.head_step, kb + h * kh, kBytes);
      __builtin_memcpy(vd + h * c.head_step, vb + h * vh, kBytes);
      if (kPad > 0) {
        __builtin_memset(kd + h * c.head_step + kBytes, 0, kPad);
        __builtin_memset(vd + h * c.head_step + kBytes, 0, kPad);
      }
    }
  }
}

using FastFn = void (*)(const Ctx&, const uint8_t*, const uint8_t*, int64_t, int64_t, uint8_t*);

// Fixed-size variants for common row sizes (bytes of D lanes, bytes of lane padding); `stream`
// selects non-temporal stores (large batches that would only evict the caches).
FastFn pick_fast(int64_t row_bytes, int64_t pad_bytes, bool stream) {
  struct Entry {
    int64_t row, pad;
    FastFn fn, fn_stream;
  };
#define KVP_FAST(r, p) {r, p, write_token_fast<r, p, false>, write_token_fast<r, p, true>}
  static const Entry kTable[] = {
      KVP_FAST(64, 0),    KVP_FAST(128, 0),  KVP_FAST(256, 0),   KVP_FAST(512, 0),
      KVP_FAST(192, 64),  KVP_FAST(384, 128), KVP_FAST(64, 192), KVP_FAST(128, 384),
      KVP_FAST(160, 96),  KVP_FAST(96, 160), KVP_FAST(320, 192),
  };
#undef KVP_FAST
  for (const Entry& e : kTable)
    if (e.row == row_bytes && e.pad == pad_bytes) return stream ? e.fn_stream : e.fn;
  return nullptr;
}

inline void write_token(const Ctx& c, int64_t s, int64_t slot) {
  const ConcatJob& j = *c.job;
  uint8_t* row = j.dst + static_cast<size_t>(slot) * c.token_bytes;
  const auto* kb = static_cast<const uint8_t*>(j.key.data) + s * j.key.stride_t * j.key.itemsize;
  const auto* vb = static_cast<const uint8_t*>(j.value.data) + s * j.value.stride_t * j.value.itemsize;
  const int64_t kh = j.key.stride_h * j.key.itemsize, vh = j.value.stride_h * j.value.itemsize;
  if (c.fast != nullptr) {
    c.fast(c, kb, vb, kh, vh, row);
  } else {
    for (int64_t h = 0; h < j.num_kv_heads; ++h) {
      c.kfn(kb + h * kh, j.key.stride_d, row + c.key_off0 + h * c.head_step, j.head_dim);
      c.vfn(vb + h * vh, j.value.stride_d, row + c.val_off0 + h * c.head_step, j.head_dim);
    }
  }
  if (c.pad_lanes)
    for (int64_t e = 0; e < 2 * j.num_kv_heads; ++e)
      std::memset(row + e * c.entry_bytes + c.pad_lane_off, 0, static_cast<size_t>(c.pad_lane_bytes));
  if (c.pad_tail) std::memset(row + c.pad_tail_off, 0, c.token_bytes - static_cast<size_t>(c.pad_tail_off));
}

void write_range(const Ctx& c, const ConcatRun* runs, int64_t num_runs, const int64_t* starts, int64_t k0, int64_t k1) {
  if (k0 >= k1) return;
  // First run containing token k0.
  int64_t r = static_cast<int64_t>(std::upper_bound(starts, starts + num_runs, k0) - starts) - 1;
  int64_t k = k0;
  while (k < k1 && r < num_runs) {
    const ConcatRun& run = runs[r];
    const int64_t o0 = k - starts[r];
    const int64_t o1 = std::min(run.len, k1 - starts[r]);
    for (int64_t o = o0; o < o1; ++o) write_token(c, run.src + o, run.dst_slot + o);
    k = starts[r] + o1;
    ++r;
  }
}

struct ParallelWrite {
  const Ctx* c;
  const ConcatJob* job;
  const int64_t* starts;
  int64_t chunk_tokens;
  bool stream;
};

void write_chunk(void* p, int64_t chunk) {
  const ParallelWrite& w = *static_cast<const ParallelWrite*>(p);
  const int64_t k0 = chunk * w.chunk_tokens;
  const int64_t k1 = std::min(w.job->total_tokens, k0 + w.chunk_tokens);
  write_range(*w.c, w.job->runs, w.job->num_runs, w.starts, k0, k1);
  if (w.stream) fence_nontemporal();  // order the streaming stores before the chunk is reported done
}

}  // namespace

void cpu_concatenate(const ConcatJob& job, const HostAllocator& alloc) {
  if (!job.host_validated) fail(KVP_ERR_INTERNAL, "kvp_concatenate: CPU path needs host-validated metadata");
  if (job.num_runs <= 0) return;
  Ctx c;
  c.job = &job;
  c.kfn = row_converter(job.key.dtype, job.cache_dtype);
  c.vfn = row_converter(job.value.dtype, job.cache_dtype);
  if (c.kfn == nullptr || c.vfn == nullptr)
    fail(KVP_ERR_INTERNAL, "kvp_concatenate: no conversion from dtype %u/%u to %u", job.key.dtype, job.value.dtype,
         job.cache_dtype);
  const int64_t isz = job.cache_itemsize;
  c.token_bytes = static_cast<size_t>(job.token_elems * isz);
  const int64_t Dst = job.layout.storage_head_dim;
  const int64_t H = job.num_kv_heads, D = job.head_dim;
  c.entry_bytes = Dst * isz;
  if (job.h64) {
    // Head h owns one combined entry: [K (lanes 0..63) | V (lanes 64..127)]; D == 64.
    c.key_off0 = 0;
    c.val_off0 = 64 * isz;
    c.head_step = Dst * isz;
    c.pad_lanes = false;
    c.pad_tail_off = H * Dst * isz;  // padding heads H .. combined_heads-1
  } else {
    // Entries K_0, V_0, K_1, V_1, ... each Dst lanes (v2: Dst = D, no padding).
    c.key_off0 = 0;
    c.val_off0 = Dst * isz;
    c.head_step = 2 * Dst * isz;
    c.pad_lanes = D < Dst;
    c.pad_tail_off = 2 * H * Dst * isz;  // padding entries 2H .. combined_heads-1
  }
  c.pad_lane_off = D * isz;
  c.pad_lane_bytes = (Dst - D) * isz;
  c.pad_tail = static_cast<size_t>(c.pad_tail_off) < c.token_bytes;
  // Batches writing more than this go around the caches (non-temporal stores), like a large
  // memcpy does.
  constexpr int64_t kStreamBytes = int64_t(16) << 20;
  const bool aligned = (reinterpret_cast<uintptr_t>(job.dst) % 16) == 0 && c.token_bytes % 16 == 0 &&
                       c.head_step % 16 == 0 && c.val_off0 % 16 == 0;
  const bool stream = KVP_HAVE_NONTEMPORAL && aligned &&
                      job.total_tokens * static_cast<int64_t>(c.token_bytes) >= kStreamBytes;
  c.fast = nullptr;
  if (job.key.dtype == job.cache_dtype && job.value.dtype == job.cache_dtype && job.key.stride_d == 1 &&
      job.value.stride_d == 1) {
    c.fast = pick_fast(D * isz, c.pad_lanes ? c.pad_lane_bytes : 0, stream);
    if (c.fast != nullptr) c.pad_lanes = false;  // the fixed-size variant zeroes the lane padding
  }

  const int64_t total = job.total_tokens;
  const int64_t bytes = total * static_cast<int64_t>(c.token_bytes);
  // Threads only pay off when each gets >= 1 MiB to write; single-token and small calls stay on
  // the calling thread (no wake-ups, no allocation).
  constexpr int64_t kBytesPerThread = int64_t(1) << 20;
  const bool parallel = total >= 64 && bytes >= 2 * kBytesPerThread && ThreadPool::instance().max_threads() > 1;
  if (!parallel) {
    for (int64_t r = 0; r < job.num_runs; ++r) {
      const ConcatRun& run = job.runs[r];
      for (int64_t o = 0; o < run.len; ++o) write_token(c, run.src + o, run.dst_slot + o);
    }
    if (stream) fence_nontemporal();
    return;
  }
  HostVector<int64_t> starts(static_cast<size_t>(job.num_runs), 0, alloc);
  int64_t acc = 0;
  for (int64_t r = 0; r < job.num_runs; ++r) {
    starts[static_cast<size_t>(r)] = acc;
    acc += job.runs[r].len;
  }
  const int threads = static_cast<int>(std::min<int64_t>(ThreadPool::instance().max_threads(), bytes / kBytesPerThread));
  // Chunks of ~256 KiB (at least 4 per thread) so a slow helper holds up little work.
  const int64_t chunk_tokens =
      std::max<int64_t>(1, std::min<int64_t>((int64_t(256) << 10) / static_cast<int64_t>(c.token_bytes) + 1,
                                             total / (4 * static_cast<int64_t>(threads))));
  ParallelWrite w{&c, &job, starts.data(), chunk_tokens, stream};
  ThreadPool::instance().run((total + chunk_tokens - 1) / chunk_tokens, threads - 1, write_chunk, &w);
}

}  // namespace kvp::detail
