// CPU kvp_concatenate: a straight copy with conversion, token rows spread over the library's
// thread pool for large batches. Every written token slot gets its whole row: data lanes converted
// with backend/fp_convert.hpp, padding lanes / heads zeroed.
//
// The writer is chosen once per call and loops over a range of runs and tokens itself, so the
// per-token body is inlined: same-dtype contiguous rows of a common size are fixed-size copies at
// the CPU's vector width (SSE2 16, AVX2 32, AVX-512 64 bytes; KVP_CPU_ISA lowers the level), with
// ordinary or non-temporal stores; contiguous rows of another dtype convert each head with
// cpu/convert_kernels.hpp's conversion for the CPU's level, inlined the same way (non-temporal
// stores through a converted entry in L1); strided or mixed-dtype sources go through
// row_converter head by head.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <initializer_list>
#include <type_traits>

#include "cpu/convert_kernels.hpp"
#include "cpu/cpu_ops.hpp"
#include "util/cpu_features.hpp"
#include "util/error.hpp"
#include "util/memory.hpp"
#include "util/nontemporal.hpp"
#include "util/thread_pool.hpp"

#if KVP_HAVE_NONTEMPORAL
#include <immintrin.h>
#endif

namespace kvp::detail {

namespace {

struct Ctx {
  const ConcatJob* job;
  RowFn kfn, vfn;
  const uint8_t *key, *val;           // token 0's first element
  int64_t key_tok, val_tok;           // bytes between tokens
  int64_t key_head, val_head;         // bytes between heads
  int64_t token_bytes;
  int64_t key_off0, val_off0, head_step;  // byte offsets inside a token row
  // Padding (zeroed on every written row): `pad_lane_bytes` after each of the 2H data entries
  // (generic v3 with D < Dst), and the padding entries [pad_tail_off, token_bytes).
  int64_t entry_bytes, pad_lane_off, pad_lane_bytes, pad_tail_off;
  bool pad_lanes, pad_tail;
  int64_t entry_write_bytes;  // bytes a converting writer writes per K or V head (data + lane padding)
  // The row's data: local entries [0, data_entries), whole-layout entry first_slot on; `heads`
  // whole heads from key/val on when the row holds whole heads (a whole cache, or a shard cut
  // between heads), else 0 (only write_converted handles a half head at either end).
  int64_t first_slot, data_entries, heads;
};

// Loads and stores of one width. Every member is always inlined into the writers below, which carry
// the same target attribute (a function for a wider ISA is only ever reached through cpu_isa()).
struct Scalar {
  static constexpr int kWidth = 8;
  static constexpr CpuIsa kIsa = CpuIsa::baseline;
};

#if KVP_HAVE_NONTEMPORAL
struct Sse2 {
  static constexpr int kWidth = 16;
  static constexpr CpuIsa kIsa = CpuIsa::baseline;
  template <bool kStream>
  KVP_ALWAYS_INLINE static inline void copy(uint8_t* d, const uint8_t* s) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
    if (kStream) _mm_stream_si128(reinterpret_cast<__m128i*>(d), v);
    else _mm_storeu_si128(reinterpret_cast<__m128i*>(d), v);
  }
  template <bool kStream>
  KVP_ALWAYS_INLINE static inline void zero(uint8_t* d) {
    if (kStream) _mm_stream_si128(reinterpret_cast<__m128i*>(d), _mm_setzero_si128());
    else _mm_storeu_si128(reinterpret_cast<__m128i*>(d), _mm_setzero_si128());
  }
};
#endif

#if KVP_CPU_DISPATCH
struct Avx2 {
  static constexpr int kWidth = 32;
  static constexpr CpuIsa kIsa = CpuIsa::avx2;
  template <bool kStream>
  KVP_TARGET_AVX2 static inline void copy(uint8_t* d, const uint8_t* s) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s));
    if (kStream) _mm256_stream_si256(reinterpret_cast<__m256i*>(d), v);
    else _mm256_storeu_si256(reinterpret_cast<__m256i*>(d), v);
  }
  template <bool kStream>
  KVP_TARGET_AVX2 static inline void zero(uint8_t* d) {
    if (kStream) _mm256_stream_si256(reinterpret_cast<__m256i*>(d), _mm256_setzero_si256());
    else _mm256_storeu_si256(reinterpret_cast<__m256i*>(d), _mm256_setzero_si256());
  }
};

struct Avx512 {
  static constexpr int kWidth = 64;
  static constexpr CpuIsa kIsa = CpuIsa::avx512;
  template <bool kStream>
  KVP_TARGET_AVX512 static inline void copy(uint8_t* d, const uint8_t* s) {
    const __m512i v = _mm512_loadu_si512(s);
    if (kStream) _mm512_stream_si512(reinterpret_cast<__m512i*>(d), v);
    else _mm512_storeu_si512(d, v);
  }
  template <bool kStream>
  KVP_TARGET_AVX512 static inline void zero(uint8_t* d) {
    if (kStream) _mm512_stream_si512(reinterpret_cast<__m512i*>(d), _mm512_setzero_si512());
    else _mm512_storeu_si512(d, _mm512_setzero_si512());
  }
};
#endif

// The widest piece at entry offset kOff (aligned to its width, at most kMax bytes, never
// straddling the data/padding boundary kData).
template <int kMax, int kOff, int kData, int kEnd>
constexpr int piece() {
  int w = kMax;
  while (w > 1 && (kOff % w != 0 || kOff + w > kEnd || (kOff < kData && kOff + w > kData))) w /= 2;
  return w;
}

// Bytes [kOff, kEnd) of one entry of kEnd bytes: the first kData copied from s, the rest zeros.
// Pieces narrower than 16 bytes use ordinary stores (only odd sizes have them). With kStream the
// entry must be aligned to V::kWidth.
template <class V, int kData, int kEnd, bool kStream, int kOff = 0>
KVP_ALWAYS_INLINE inline void write_entry(uint8_t* d, const uint8_t* s) {
  if constexpr (kOff < kEnd) {
    constexpr int w = piece<V::kWidth, kOff, kData, kEnd>();
    if constexpr (w >= 16) {
      using P = std::conditional_t<w == V::kWidth, V,
#if KVP_CPU_DISPATCH
                                   std::conditional_t<w == 32, Avx2, Sse2>
#else
                                   V
#endif
                                   >;
      if constexpr (kOff < kData) P::template copy<kStream>(d + kOff, s + kOff);
      else P::template zero<kStream>(d + kOff);
    } else {
      if constexpr (kOff < kData) __builtin_memcpy(d + kOff, s + kOff, w);
      else __builtin_memset(d + kOff, 0, w);
    }
    write_entry<V, kData, kEnd, kStream, kOff + w>(d, s);
  }
}

// The padding entries after the data (h64 padding heads, v3 entries past 2H): ordinary stores.
inline void zero_tail(const Ctx& c, uint8_t* row) {
  if (c.pad_tail) std::memset(row + c.pad_tail_off, 0, static_cast<size_t>(c.token_bytes - c.pad_tail_off));
}

// The writers: `tokens` tokens from run `r` token `off` on, runs in order.
using RangeFn = void (*)(const Ctx& c, int64_t r, int64_t off, int64_t tokens);

// Runs of one token (decode) land on scattered rows: the rows a few runs ahead are prefetched for
// writing, so their cache misses overlap with the copies (a lone thread's stores would otherwise
// wait on one read-for-ownership after another).
constexpr int64_t kPrefetchRuns = 8;

KVP_ALWAYS_INLINE inline void prefetch_run(const Ctx& c, int64_t r) {
  const ConcatJob& j = *c.job;
  if (r + kPrefetchRuns >= j.num_runs) return;
  const uint8_t* next = j.dst + j.runs[r + kPrefetchRuns].dst_slot * c.token_bytes;
  for (int64_t b = 0; b < std::min<int64_t>(c.token_bytes, 1024); b += 64) __builtin_prefetch(next + b, 1, 3);
}

// Walks `tokens` tokens from run `r` token `off` on, runs in order: entry(dst, src) for every key
// and value head of each token, then the row's padding entries. The per-ISA writers below are
// flattened, so `entry` and everything it calls is inlined into them.
template <bool kStream, class Entry>
KVP_ALWAYS_INLINE inline void for_each_entry(const Ctx& c, int64_t r, int64_t off, int64_t tokens, Entry&& entry) {
  const ConcatJob& j = *c.job;
  const int64_t H = c.heads;
  while (tokens > 0) {
    const ConcatRun& run = j.runs[r];
    if (!kStream) prefetch_run(c, r);
    const int64_t n = std::min(run.len - off, tokens);
    const uint8_t* kb = c.key + (run.src + off) * c.key_tok;
    const uint8_t* vb = c.val + (run.src + off) * c.val_tok;
    uint8_t* row = j.dst + (run.dst_slot + off) * c.token_bytes;
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t h = 0; h < H; ++h) {
        entry(row + c.key_off0 + h * c.head_step, kb + h * c.key_head);
        entry(row + c.val_off0 + h * c.head_step, vb + h * c.val_head);
      }
      zero_tail(c, row);
      kb += c.key_tok;
      vb += c.val_tok;
      row += c.token_bytes;
    }
    tokens -= n;
    off = 0;
    ++r;
  }
}

template <class V, int kData, int kPad, bool kStream>
KVP_ALWAYS_INLINE inline void write_fixed_body(const Ctx& c, int64_t r, int64_t off, int64_t tokens) {
  for_each_entry<kStream>(c, r, off, tokens, [](uint8_t* d, const uint8_t* s) KVP_ALWAYS_INLINE {
    write_entry<V, kData, kData + kPad, kStream>(d, s);
  });
}

// One function per (ISA, row bytes, lane padding, streaming); the body is inlined whole.
template <int kData, int kPad, bool kStream>
__attribute__((flatten)) void write_fixed_baseline(const Ctx& c, int64_t r, int64_t off, int64_t tokens) {
#if KVP_HAVE_NONTEMPORAL
  write_fixed_body<Sse2, kData, kPad, kStream>(c, r, off, tokens);
#else
  write_fixed_body<Scalar, kData, kPad, false>(c, r, off, tokens);
#endif
}

#if KVP_CPU_DISPATCH
template <int kData, int kPad, bool kStream>
KVP_TARGET_AVX2 __attribute__((flatten)) void write_fixed_avx2(const Ctx& c, int64_t r, int64_t off, int64_t tokens) {
  write_fixed_body<Avx2, kData, kPad, kStream>(c, r, off, tokens);
}

template <int kData, int kPad, bool kStream>
KVP_TARGET_AVX512 __attribute__((flatten)) void write_fixed_avx512(const Ctx& c, int64_t r, int64_t off,
                                                                    int64_t tokens) {
  write_fixed_body<Avx512, kData, kPad, kStream>(c, r, off, tokens);
}
#endif

// The widths the fixed writers use: the ISA's, lowered to the alignment streaming stores need.
enum class Width { w16 = 0, w32 = 1, w64 = 2 };

// Fixed-size writers for common row sizes (bytes of D lanes, bytes of lane padding).
RangeFn pick_fixed(int64_t row_bytes, int64_t pad_bytes, bool stream, Width width) {
  struct Entry {
    int64_t row, pad;
    RangeFn fn[3][2];  // [width][stream]
  };
#if KVP_CPU_DISPATCH
#define KVP_FIXED(r, p)                                                                     \
  {                                                                                          \
    r, p, {                                                                                  \
      {write_fixed_baseline<r, p, false>, write_fixed_baseline<r, p, true>},                 \
          {write_fixed_avx2<r, p, false>, write_fixed_avx2<r, p, true>},                     \
          {write_fixed_avx512<r, p, false>, write_fixed_avx512<r, p, true>},                 \
    }                                                                                        \
  }
#else
#define KVP_FIXED(r, p)                                                                          \
  {                                                                                               \
    r, p, {                                                                                       \
      {write_fixed_baseline<r, p, false>, write_fixed_baseline<r, p, true>}, {nullptr, nullptr}, \
          {nullptr, nullptr},                                                                     \
    }                                                                                             \
  }
#endif
  static const Entry kTable[] = {
      KVP_FIXED(64, 0),   KVP_FIXED(128, 0),  KVP_FIXED(256, 0),  KVP_FIXED(512, 0),
      KVP_FIXED(192, 64), KVP_FIXED(384, 128), KVP_FIXED(64, 192), KVP_FIXED(128, 384),
      KVP_FIXED(160, 96), KVP_FIXED(96, 160),  KVP_FIXED(320, 192),
  };
#undef KVP_FIXED
  for (const Entry& e : kTable)
    if (e.row == row_bytes && e.pad == pad_bytes) return e.fn[static_cast<int>(width)][stream ? 1 : 0];
  return nullptr;
}

// Converting writers: contiguous source rows of dtype SD into cache rows of dtype DD, each head
// converted by cvt::convert_contiguous at V's level. With ordinary stores the head is converted in
// place and its lane padding zeroed; with streaming stores it is converted into `buf` (in L1, its
// lane padding zero) and the entry streamed out from there (16-byte stores: entries need 16-byte
// alignment only). Streaming batches are memory-bound: there the 256-bit F16C conversion measured
// 5-8 % faster than the 512-bit one (Intel VM, f32 -> f16 at 1024-4096 tokens), while L2-resident
// batches gain ~10 % from the 512-bit one (f16 -> f32 streams with its 256-bit kernel too). The
// other pairs without a table at baseline do the same (they always have); the conversions to fp8
// run at the writer's own level, where their kernels are the faster.
constexpr int64_t kMaxStreamEntry = 4096;

template <class V, kvp_dtype SD, kvp_dtype DD, bool kStream>
constexpr CpuIsa kConvertIsa =
    kStream && V::kIsa == CpuIsa::avx512 && !cvt::kUseTable<SD, DD> && !cvt::kIsFp8<DD> ? CpuIsa::avx2 : V::kIsa;

// kD: the head dim when the writer is compiled for one (its conversion loop then unrolls whole:
// 8 x 64 f32 -> f16 at 1-64 tokens 6-21 % faster, docs/benchmarks.md), 0 for any.
template <class V, kvp_dtype SD, kvp_dtype DD, bool kStream, int64_t kD>
KVP_ALWAYS_INLINE inline void convert_entry(const Ctx& c, uint8_t* d, const uint8_t* s, uint8_t* buf) {
  const int64_t D = kD != 0 ? kD : c.job->head_dim;
  if constexpr (kStream) {
#if KVP_HAVE_NONTEMPORAL
    cvt::convert_contiguous<kConvertIsa<V, SD, DD, kStream>, SD, DD>(s, buf, D);
    for (int64_t b = 0; b < c.entry_write_bytes; b += 16) Sse2::copy<true>(d + b, buf + b);
#endif
  } else {
    cvt::convert_contiguous<kConvertIsa<V, SD, DD, kStream>, SD, DD>(s, d, D);
    if (c.pad_lanes) std::memset(d + c.pad_lane_off, 0, static_cast<size_t>(c.pad_lane_bytes));
  }
}

template <class V, kvp_dtype SD, kvp_dtype DD, bool kStream, int64_t kD>
KVP_ALWAYS_INLINE inline void write_converting_body(const Ctx& c, int64_t r, int64_t off, int64_t tokens) {
  alignas(64) uint8_t buf[kStream ? kMaxStreamEntry : 1];
  if (kStream && c.pad_lanes) std::memset(buf + c.pad_lane_off, 0, static_cast<size_t>(c.pad_lane_bytes));
  for_each_entry<kStream>(c, r, off, tokens, [&c, &buf](uint8_t* d, const uint8_t* s) KVP_ALWAYS_INLINE {
    convert_entry<V, SD, DD, kStream, kD>(c, d, s, buf);
  });
}

template <kvp_dtype SD, kvp_dtype DD, bool kStream, int64_t kD>
__attribute__((flatten)) void write_converting_baseline(const Ctx& c, int64_t r, int64_t off, int64_t tokens) {
#if KVP_HAVE_NONTEMPORAL
  write_converting_body<Sse2, SD, DD, kStream, kD>(c, r, off, tokens);
#else
  write_converting_body<Scalar, SD, DD, false, kD>(c, r, off, tokens);
#endif
}

#if KVP_CPU_DISPATCH
template <kvp_dtype SD, kvp_dtype DD, bool kStream, int64_t kD>
KVP_TARGET_AVX2 __attribute__((flatten)) void write_converting_avx2(const Ctx& c, int64_t r, int64_t off,
                                                                     int64_t tokens) {
  write_converting_body<Avx2, SD, DD, kStream, kD>(c, r, off, tokens);
}

template <kvp_dtype SD, kvp_dtype DD, bool kStream, int64_t kD>
KVP_TARGET_AVX512 __attribute__((flatten)) void write_converting_avx512(const Ctx& c, int64_t r, int64_t off,
                                                                         int64_t tokens) {
  write_converting_body<Avx512, SD, DD, kStream, kD>(c, r, off, tokens);
}
#endif

// The pairs a model's KV write takes (f32 to and from 16 bits, f32 and 16 bits to fp8) have
// converting writers per instruction-set level; the rest (fp8 inputs, f16 <-> bf16) keep the
// baseline one, which converts through a table: a fused writer per level for each of them would
// add about 400 KB of code for paths no model's write takes (kvp_convert has them vectorized).
template <kvp_dtype SD, kvp_dtype DD>
constexpr bool kWriterPerLevel = !cvt::kUseTable<SD, DD> || (cvt::kIsFp8<DD> && !cvt::kIsFp8<SD>);

// The converting writer of one dtype pair for head dim kD (0: any) at the CPU's level.
template <kvp_dtype SD, kvp_dtype DD, int64_t kD>
RangeFn converting_writer_for(bool stream) {
#if KVP_CPU_DISPATCH
  if constexpr (kWriterPerLevel<SD, DD>) {
    switch (cpu_isa()) {
      case CpuIsa::avx512:
        return stream ? write_converting_avx512<SD, DD, true, kD> : write_converting_avx512<SD, DD, false, kD>;
      case CpuIsa::avx2:
        return stream ? write_converting_avx2<SD, DD, true, kD> : write_converting_avx2<SD, DD, false, kD>;
      default: break;
    }
  }
#endif
  // Baseline CPUs (and KVP_CPU_ISA=baseline) share the one for any head dim.
  return stream ? write_converting_baseline<SD, DD, true, 0> : write_converting_baseline<SD, DD, false, 0>;
}

// Head dims with a writer of their own, for the pairs with writers per level: the common ones,
// where the per-head loop is a few instructions and its setup shows.
template <kvp_dtype SD, kvp_dtype DD>
RangeFn converting_writer(bool stream, int64_t head_dim) {
  if constexpr (SD == DD) {
    return nullptr;
  } else {
    if constexpr (kWriterPerLevel<SD, DD>) {
      switch (head_dim) {
        case 64: return converting_writer_for<SD, DD, 64>(stream);
        case 96: return converting_writer_for<SD, DD, 96>(stream);
        case 128: return converting_writer_for<SD, DD, 128>(stream);
        default: break;
      }
    }
    return converting_writer_for<SD, DD, 0>(stream);
  }
}

template <kvp_dtype SD>
RangeFn converting_writer_to(kvp_dtype dd, bool stream, int64_t head_dim) {
  switch (dd) {
    case KVP_DTYPE_F32: return converting_writer<SD, KVP_DTYPE_F32>(stream, head_dim);
    case KVP_DTYPE_F16: return converting_writer<SD, KVP_DTYPE_F16>(stream, head_dim);
    case KVP_DTYPE_BF16: return converting_writer<SD, KVP_DTYPE_BF16>(stream, head_dim);
    case KVP_DTYPE_F8_E4M3FN: return converting_writer<SD, KVP_DTYPE_F8_E4M3FN>(stream, head_dim);
    case KVP_DTYPE_F8_E5M2: return converting_writer<SD, KVP_DTYPE_F8_E5M2>(stream, head_dim);
    default: return nullptr;
  }
}

RangeFn pick_converting(kvp_dtype sd, kvp_dtype dd, bool stream, int64_t head_dim) {
  switch (sd) {
    case KVP_DTYPE_F32: return converting_writer_to<KVP_DTYPE_F32>(dd, stream, head_dim);
    case KVP_DTYPE_F16: return converting_writer_to<KVP_DTYPE_F16>(dd, stream, head_dim);
    case KVP_DTYPE_BF16: return converting_writer_to<KVP_DTYPE_BF16>(dd, stream, head_dim);
    case KVP_DTYPE_F8_E4M3FN: return converting_writer_to<KVP_DTYPE_F8_E4M3FN>(dd, stream, head_dim);
    case KVP_DTYPE_F8_E5M2: return converting_writer_to<KVP_DTYPE_F8_E5M2>(dd, stream, head_dim);
    default: return nullptr;
  }
}

// Local data entry e of a row (kb/vb: the token's first head of the row).
inline void convert_entry_any(const Ctx& c, uint8_t* row, int64_t e, const uint8_t* kb, const uint8_t* vb) {
  const ConcatJob& j = *c.job;
  if (j.h64) {  // head e of the row: [K | V]
    c.kfn(kb + e * c.key_head, j.key.stride_d, row + e * c.entry_bytes + c.key_off0, j.head_dim);
    c.vfn(vb + e * c.val_head, j.value.stride_d, row + e * c.entry_bytes + c.val_off0, j.head_dim);
    return;
  }
  const int64_t g = c.first_slot + e, h = g / 2 - c.first_slot / 2;  // whole-layout entry 2h + kv
  if (g % 2 == 0) c.kfn(kb + h * c.key_head, j.key.stride_d, row + e * c.entry_bytes, j.head_dim);
  else c.vfn(vb + h * c.val_head, j.value.stride_d, row + e * c.entry_bytes, j.head_dim);
  if (c.pad_lanes) std::memset(row + e * c.entry_bytes + c.pad_lane_off, 0, static_cast<size_t>(c.pad_lane_bytes));
}

// Any dtype pair, any strides, any slice of entries: each entry through the row converter, then
// the padding.
void write_converted(const Ctx& c, int64_t r, int64_t off, int64_t tokens) {
  const ConcatJob& j = *c.job;
  while (tokens > 0) {
    const ConcatRun& run = j.runs[r];
    const int64_t n = std::min(run.len - off, tokens);
    for (int64_t t = run.src + off; t < run.src + off + n; ++t) {
      uint8_t* row = j.dst + (run.dst_slot + t - run.src) * c.token_bytes;
      for (int64_t e = 0; e < c.data_entries; ++e) convert_entry_any(c, row, e, c.key + t * c.key_tok, c.val + t * c.val_tok);
      zero_tail(c, row);
    }
    tokens -= n;
    off = 0;
    ++r;
  }
}

struct ParallelWrite {
  const Ctx* c;
  RangeFn fn;
  const int64_t* starts;  // first token of each run
  int64_t chunk_tokens;
  bool stream;
};

void write_chunk(void* p, int64_t chunk) {
  const ParallelWrite& w = *static_cast<const ParallelWrite*>(p);
  const ConcatJob& j = *w.c->job;
  const int64_t k0 = chunk * w.chunk_tokens;
  const int64_t k1 = std::min(j.total_tokens, k0 + w.chunk_tokens);
  const int64_t r = static_cast<int64_t>(std::upper_bound(w.starts, w.starts + j.num_runs, k0) - w.starts) - 1;
  w.fn(*w.c, r, k0 - w.starts[r], k1 - k0);
  if (w.stream) fence_nontemporal();  // order the streaming stores before the chunk is reported done
}

// The write split over `threads` threads in chunks of ~256 KiB (at least 4 per thread), so a
// slow helper holds up little work.
void write_parallel(const Ctx& c, RangeFn fn, bool stream, int threads, const HostAllocator& alloc) {
  const ConcatJob& j = *c.job;
  HostVector<int64_t> starts(static_cast<size_t>(j.num_runs), 0, alloc);
  int64_t acc = 0;
  for (int64_t r = 0; r < j.num_runs; ++r) {
    starts[static_cast<size_t>(r)] = acc;
    acc += j.runs[r].len;
  }
  const int64_t chunk_tokens = std::max<int64_t>(
      1, std::min<int64_t>((int64_t(256) << 10) / c.token_bytes + 1, j.total_tokens / (4 * static_cast<int64_t>(threads))));
  ParallelWrite w{&c, fn, starts.data(), chunk_tokens, stream};
  ThreadPool::instance().run((j.total_tokens + chunk_tokens - 1) / chunk_tokens, threads - 1, write_chunk, &w);
}

// Largest power of two (up to 64) dividing every value: the lowest bit set in any of them.
int64_t common_alignment(std::initializer_list<int64_t> values) {
  uint64_t bits = 64;
  for (int64_t v : values) bits |= static_cast<uint64_t>(v);
  return static_cast<int64_t>(bits & (~bits + 1));
}

// Whether a write's destination is in the CPU caches, which decides between ordinary and
// streaming stores for writes between the two sizes of util/nontemporal.hpp. A model step's write
// (after the other layers' writes, their weights and attention, onto new slots) finds it in
// memory; a loop that writes the same slots again finds it cached. Two ways to tell: the write
// repeats this thread's previous one, which ended less than kRepeatWindow ago (from its second write
// on such a loop keeps its rows cached, even after a first write that streamed them out), or the
// memory says so (lines_cached on one line of kProbeRows rows spread over the write). A wrong
// answer costs time, never bytes.
constexpr int kProbeRows = 4;
constexpr std::chrono::microseconds kRepeatWindow{100};

struct WriteKey {
  const uint8_t* dst;
  int64_t first_slot, last_slot, num_runs, total_tokens;
  bool operator==(const WriteKey& o) const {
    return dst == o.dst && first_slot == o.first_slot && last_slot == o.last_slot && num_runs == o.num_runs &&
           total_tokens == o.total_tokens;
  }
};

thread_local WriteKey t_last_write{};
thread_local std::chrono::steady_clock::time_point t_last_write_end{};

WriteKey write_key(const ConcatJob& j) {
  return {j.dst, j.runs[0].dst_slot, j.runs[j.num_runs - 1].dst_slot, j.num_runs, j.total_tokens};
}

bool destination_cached(const Ctx& c, const WriteKey& key) {
  if (key == t_last_write && std::chrono::steady_clock::now() - t_last_write_end < kRepeatWindow) return true;
  const ConcatJob& j = *c.job;
  const uint8_t* lines[kProbeRows];
  for (int i = 0; i < kProbeRows; ++i) {
    const ConcatRun& run = j.runs[j.num_runs * i / kProbeRows];
    lines[i] = j.dst + (run.dst_slot + run.len * i / kProbeRows) * c.token_bytes;
  }
  return lines_cached(lines, kProbeRows);
}

void remember_write(const WriteKey& key) {
  t_last_write = key;
  t_last_write_end = std::chrono::steady_clock::now();
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
  c.key_tok = job.key.stride_t * job.key.itemsize;
  c.val_tok = job.value.stride_t * job.value.itemsize;
  c.key_head = job.key.stride_h * job.key.itemsize;
  c.val_head = job.value.stride_h * job.value.itemsize;
  const int64_t isz = job.cache_itemsize;
  c.token_bytes = job.token_elems * isz;
  const Layout& L = job.layout;
  const int64_t Dst = L.storage_head_dim, D = job.head_dim;
  c.first_slot = L.slot_begin;
  c.data_entries = L.data_entries();
  // The first head of the row (a shard's may start with its values) in the key/value tensors.
  const int64_t h0 = (job.h64 ? c.first_slot : c.first_slot / 2) - job.head_offset;
  c.key = static_cast<const uint8_t*>(job.key.data) + h0 * c.key_head;
  c.val = static_cast<const uint8_t*>(job.value.data) + h0 * c.val_head;
  c.entry_bytes = Dst * isz;
  c.pad_tail_off = c.data_entries * Dst * isz;  // padding entries (heads) after the data
  if (job.h64) {
    // Head h owns one combined entry: [K (lanes 0..63) | V (lanes 64..127)]; D == 64.
    c.key_off0 = 0;
    c.val_off0 = 64 * isz;
    c.head_step = Dst * isz;
    c.pad_lanes = false;
    c.heads = c.data_entries;
  } else {
    // Entries K_0, V_0, K_1, V_1, ... each Dst lanes (v2: Dst = D, no padding).
    c.key_off0 = 0;
    c.val_off0 = Dst * isz;
    c.head_step = 2 * Dst * isz;
    c.pad_lanes = D < Dst;
    c.heads = c.first_slot % 2 == 0 && c.data_entries % 2 == 0 ? c.data_entries / 2 : 0;
  }
  c.pad_lane_off = D * isz;
  c.pad_lane_bytes = (Dst - D) * isz;
  c.pad_tail = c.pad_tail_off < c.token_bytes;
  c.entry_write_bytes = c.pad_lanes ? c.entry_bytes : D * isz;

  const int64_t total = job.total_tokens;
  const int64_t bytes = total * c.token_bytes;
  // Threads pay off from 256 KiB each where a helper is still awake after the previous job
  // (util/thread_pool.hpp), from 1 MiB where the call must wake it (measured with bench_step; and
  // cold 1 MiB writes whose helper slept: 61-68 us on two threads, 45-47 us on one);
  // single-token and small calls stay on the calling thread (no wake-ups, no allocation).
  ThreadPool& pool = ThreadPool::instance();
  const bool splittable = total >= 64 && bytes >= int64_t(512) << 10;
  const int64_t share = splittable && pool.helpers_awake() ? int64_t(256) << 10 : int64_t(1) << 20;
  const int threads = splittable && bytes >= 2 * share
                          ? static_cast<int>(std::min<int64_t>(pool.max_threads(), bytes / share))
                          : 1;

  // Contiguous rows: the fixed-size writer at the machine's width (same dtype, a table size) or
  // the converting writer. Streaming stores from the bytes per thread util/nontemporal.hpp gives
  // for a destination in or out of the caches (destination_cached), and only on destinations
  // aligned to the store width.
  RangeFn fn = write_converted;
  bool stream = false;
  // A group's shards are written one after the other: what the call writes in all decides.
  const auto per_thread_bytes = static_cast<size_t>(std::max(bytes, job.call_bytes) / threads);
  // Only writes between the two thresholds depend on where the destination is (and pay to ask).
  const bool asked = per_thread_bytes >= nontemporal_threshold(false) && per_thread_bytes < nontemporal_threshold(true);
  const WriteKey key = asked ? write_key(job) : WriteKey{};
  const bool cached = asked && destination_cached(c, key);
  const bool want_stream = KVP_HAVE_NONTEMPORAL && per_thread_bytes >= nontemporal_threshold(cached);
  const int64_t align = common_alignment({static_cast<int64_t>(reinterpret_cast<uintptr_t>(job.dst)), c.token_bytes,
                                          c.head_step, c.val_off0, c.entry_bytes});
  const bool contiguous = job.key.stride_d == 1 && job.value.stride_d == 1;
  const bool whole_heads = c.heads * (job.h64 ? 1 : 2) == c.data_entries;
  if (contiguous && whole_heads && job.key.dtype == job.cache_dtype && job.value.dtype == job.cache_dtype) {
    Width width = Width::w16;
#if KVP_CPU_DISPATCH
    width = cpu_isa() == CpuIsa::avx512 ? Width::w64 : cpu_isa() == CpuIsa::avx2 ? Width::w32 : Width::w16;
#endif
    stream = want_stream && align >= 16;
    if (stream && align < 32) width = Width::w16;
    else if (stream && align < 64 && width == Width::w64) width = Width::w32;
    const RangeFn fixed = pick_fixed(D * isz, c.pad_lanes ? c.pad_lane_bytes : 0, stream, width);
    if (fixed != nullptr) fn = fixed;
    else stream = false;
  } else if (contiguous && whole_heads && job.key.dtype == job.value.dtype) {
    stream = want_stream && align >= 16 && c.entry_write_bytes % 16 == 0 && c.entry_write_bytes <= kMaxStreamEntry;
    const RangeFn converting = pick_converting(job.key.dtype, job.cache_dtype, stream, D);
    if (converting != nullptr) fn = converting;
    else stream = false;
  }

  if (threads <= 1) {
    fn(c, 0, 0, total);
    if (stream) fence_nontemporal();
  } else {
    write_parallel(c, fn, stream, threads, alloc);
  }
  if (asked) remember_write(key);
}

}  // namespace kvp::detail
