// Element conversions between the float dtypes on the CPU: the row writers of kvp_concatenate and
// kvp_convert. Every conversion is backend/fp_convert.hpp's, so the bytes are those of the CUDA
// backend and of the reference; the code here only picks the fastest exact way to apply it.
#include <algorithm>
#include <cstring>
#include <type_traits>

#include "backend/backend.hpp"
#include "backend/fp_convert.hpp"
#include "cpu/cpu_ops.hpp"
#include "util/cpu_features.hpp"
#include "util/thread_pool.hpp"

namespace kvp::detail {

namespace {

template <kvp_dtype D>
struct Bits {
  using type = std::conditional_t<D == KVP_DTYPE_F32, uint32_t,
                                  std::conditional_t<D == KVP_DTYPE_F16 || D == KVP_DTYPE_BF16, uint16_t, uint8_t>>;
};

template <kvp_dtype SD>
inline float to_f32(typename Bits<SD>::type c) {
  if constexpr (SD == KVP_DTYPE_F32)
    return fp::f32_from_bits(c);
  else if constexpr (SD == KVP_DTYPE_F16)
    return fp::f32_from_f16(c);
  else if constexpr (SD == KVP_DTYPE_BF16)
    return fp::f32_from_bf16(c);
  else if constexpr (SD == KVP_DTYPE_F8_E4M3FN)
    return fp::f32_from_e4m3fn(c);
  else
    return fp::f32_from_e5m2(c);
}

template <kvp_dtype DD>
inline typename Bits<DD>::type from_f32(float f) {
  if constexpr (DD == KVP_DTYPE_F32)
    return fp::f32_bits(f);
  else if constexpr (DD == KVP_DTYPE_F16)
    return fp::f16_from_f32(f);
  else if constexpr (DD == KVP_DTYPE_BF16)
    return fp::bf16_from_f32(f);
  else if constexpr (DD == KVP_DTYPE_F8_E4M3FN)
    return fp::e4m3fn_from_f32(f);
  else
    return fp::e5m2_from_f32(f);
}

// Sources of 8 or 16 bits convert through a table of every source code (256 or 65,536 entries),
// built once from the same conversion functions (static storage, no allocation; exact by
// construction); 16-bit -> f32 is a shift or a short sequence, faster than the table.
template <kvp_dtype SD, kvp_dtype DD>
constexpr bool kUseTable = SD != DD && (sizeof(typename Bits<SD>::type) == 1 ||
                                        (sizeof(typename Bits<SD>::type) == 2 && DD != KVP_DTYPE_F32));

template <kvp_dtype SD, kvp_dtype DD>
struct Table {
  static constexpr uint32_t kCodes = 1u << (8 * sizeof(typename Bits<SD>::type));
  typename Bits<DD>::type v[kCodes];
  Table() {
    for (uint32_t c = 0; c < kCodes; ++c) v[c] = from_f32<DD>(to_f32<SD>(static_cast<typename Bits<SD>::type>(c)));
  }
};

template <kvp_dtype SD, kvp_dtype DD>
const typename Bits<DD>::type* table() {
  static const Table<SD, DD> t;
  return t.v;
}

// The body of a row conversion, inlined into one function per instruction-set level below. The
// arithmetic conversions are branch-free, so both loops vectorize; strided rows are gathered into
// a small typed buffer first.
template <kvp_dtype SD, kvp_dtype DD>
KVP_ALWAYS_INLINE inline void convert_row_body(const uint8_t* src, int64_t stride, uint8_t* dst, int64_t n) {
  using SrcT = typename Bits<SD>::type;
  using DstT = typename Bits<DD>::type;
  if constexpr (kUseTable<SD, DD>) {
    const DstT* t = table<SD, DD>();
    const int64_t step = stride * static_cast<int64_t>(sizeof(SrcT));
    for (int64_t d = 0; d < n; ++d) {
      SrcT c;
      std::memcpy(&c, src + d * step, sizeof c);
      std::memcpy(dst + d * static_cast<int64_t>(sizeof(DstT)), &t[c], sizeof(DstT));
    }
    return;
  }
  if (stride == 1) {
    for (int64_t d = 0; d < n; ++d) {
      SrcT c;
      std::memcpy(&c, src + d * static_cast<int64_t>(sizeof(SrcT)), sizeof c);
      const DstT o = from_f32<DD>(to_f32<SD>(c));
      std::memcpy(dst + d * static_cast<int64_t>(sizeof(DstT)), &o, sizeof o);
    }
    return;
  }
  constexpr int kChunk = 128;
  SrcT in[kChunk];
  const int64_t step = stride * static_cast<int64_t>(sizeof(SrcT));
  for (int64_t d0 = 0; d0 < n; d0 += kChunk) {
    const int m = static_cast<int>(std::min<int64_t>(kChunk, n - d0));
    for (int i = 0; i < m; ++i) std::memcpy(&in[i], src + (d0 + i) * step, sizeof(SrcT));
    for (int i = 0; i < m; ++i) {
      const DstT o = from_f32<DD>(to_f32<SD>(in[i]));
      std::memcpy(dst + (d0 + i) * static_cast<int64_t>(sizeof(DstT)), &o, sizeof o);
    }
  }
}

template <kvp_dtype SD, kvp_dtype DD>
void convert_row(const uint8_t* src, int64_t stride, uint8_t* dst, int64_t n) {
  convert_row_body<SD, DD>(src, stride, dst, n);
}

#if KVP_CPU_DISPATCH
// The same body compiled for AVX2 and for AVX-512: the arithmetic conversions are branch-free
// lane-wise integer and f32-add code, so the wider vectors give the same bytes 2-3x faster
// (docs/benchmarks.md). Only functions with the default target are inlined into these, never the
// other way round, so no AVX code can reach a CPU without it.
template <kvp_dtype SD, kvp_dtype DD>
KVP_TARGET_AVX2 void convert_row_avx2(const uint8_t* src, int64_t stride, uint8_t* dst, int64_t n) {
  convert_row_body<SD, DD>(src, stride, dst, n);
}

template <kvp_dtype SD, kvp_dtype DD>
KVP_TARGET_AVX512 void convert_row_avx512(const uint8_t* src, int64_t stride, uint8_t* dst, int64_t n) {
  convert_row_body<SD, DD>(src, stride, dst, n);
}
#endif

template <int kSize>
void copy_row(const uint8_t* src, int64_t stride, uint8_t* dst, int64_t n) {
  if (stride == 1) {
    std::memmove(dst, src, static_cast<size_t>(n) * kSize);
  } else {
    const int64_t step = stride * kSize;
    for (int64_t d = 0; d < n; ++d) std::memcpy(dst + d * kSize, src + d * step, kSize);
  }
}

template <kvp_dtype SD, kvp_dtype DD>
RowFn prepared() {
  if constexpr (SD == DD) {
    return copy_row<sizeof(typename Bits<SD>::type)>;
  } else if constexpr (kUseTable<SD, DD>) {
    (void)table<SD, DD>();  // build before the first row
    return convert_row<SD, DD>;  // table lookups: wider vectors do not help
  } else {
#if KVP_CPU_DISPATCH
    switch (cpu_isa()) {
      case CpuIsa::avx512: return convert_row_avx512<SD, DD>;
      case CpuIsa::avx2: return convert_row_avx2<SD, DD>;
      default: break;
    }
#endif
    return convert_row<SD, DD>;
  }
}

template <kvp_dtype SD>
RowFn pick_dst(kvp_dtype dd) {
  switch (dd) {
    case KVP_DTYPE_F32: return prepared<SD, KVP_DTYPE_F32>();
    case KVP_DTYPE_F16: return prepared<SD, KVP_DTYPE_F16>();
    case KVP_DTYPE_BF16: return prepared<SD, KVP_DTYPE_BF16>();
    case KVP_DTYPE_F8_E4M3FN: return prepared<SD, KVP_DTYPE_F8_E4M3FN>();
    case KVP_DTYPE_F8_E5M2: return prepared<SD, KVP_DTYPE_F8_E5M2>();
    default: return nullptr;
  }
}

size_t elem_bytes(kvp_dtype d) {
  switch (d) {
    case KVP_DTYPE_F32: return 4;
    case KVP_DTYPE_F16:
    case KVP_DTYPE_BF16: return 2;
    default: return 1;
  }
}

}  // namespace

RowFn row_converter(kvp_dtype sd, kvp_dtype dd) {
  switch (sd) {
    case KVP_DTYPE_F32: return pick_dst<KVP_DTYPE_F32>(dd);
    case KVP_DTYPE_F16: return pick_dst<KVP_DTYPE_F16>(dd);
    case KVP_DTYPE_BF16: return pick_dst<KVP_DTYPE_BF16>(dd);
    case KVP_DTYPE_F8_E4M3FN: return pick_dst<KVP_DTYPE_F8_E4M3FN>(dd);
    case KVP_DTYPE_F8_E5M2: return pick_dst<KVP_DTYPE_F8_E5M2>(dd);
    default: return nullptr;
  }
}

bool host_convert(const void* src, kvp_dtype src_dtype, void* dst, kvp_dtype dst_dtype, size_t count) {
  const RowFn fn = row_converter(src_dtype, dst_dtype);
  if (fn == nullptr) return false;
  // Chunks of 64K elements over the thread pool: one chunk (the caller alone) below 256K.
  constexpr int64_t kChunk = 65536;
  const int64_t n = static_cast<int64_t>(count);
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const int threads = n < 4 * kChunk ? 1 : ThreadPool::instance().max_threads();
  const int64_t src_size = static_cast<int64_t>(elem_bytes(src_dtype));
  const int64_t dst_size = static_cast<int64_t>(elem_bytes(dst_dtype));
  const auto* s = static_cast<const uint8_t*>(src);
  auto* d = static_cast<uint8_t*>(dst);
  parallel_for(chunks, threads, [&](int64_t c) {
    const int64_t first = c * kChunk;
    fn(s + first * src_size, 1, d + first * dst_size, std::min(kChunk, n - first));
  });
  return true;
}

}  // namespace kvp::detail
