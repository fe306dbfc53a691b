// Element conversions between the float dtypes on the CPU: the row converters of kvp_convert and
// of kvp_concatenate's strided or mixed-dtype rows. The conversions themselves are
// cpu/convert_kernels.hpp's (shared with cpu_concat.cpp's fused writers); the code here builds one
// row function per dtype pair and instruction-set level and picks the fastest for this machine.
#include <algorithm>
#include <cstring>

#include "backend/backend.hpp"
#include "cpu/convert_kernels.hpp"
#include "cpu/cpu_ops.hpp"
#include "util/cpu_features.hpp"
#include "util/thread_pool.hpp"

namespace kvp::detail {

namespace {

using cvt::Bits;
using cvt::kUseTable;

template <kvp_dtype SD, kvp_dtype DD>
void convert_row(const uint8_t* src, int64_t stride, uint8_t* dst, int64_t n) {
  cvt::convert_strided<CpuIsa::baseline, SD, DD>(src, stride, dst, n);
}

#if KVP_CPU_DISPATCH
// The same rows compiled for AVX2 and for AVX-512 (the arithmetic conversions are branch-free
// lane-wise integer and f32-add code, so the wider vectors give the same bytes 2-3x faster,
// docs/benchmarks.md; f32 <-> f16 use F16C; fp8 <-> f32 and 16 bits -> fp8 have kernels of their own).
template <kvp_dtype SD, kvp_dtype DD>
KVP_TARGET_AVX2 void convert_row_avx2(const uint8_t* src, int64_t stride, uint8_t* dst, int64_t n) {
  cvt::convert_strided<CpuIsa::avx2, SD, DD>(src, stride, dst, n);
}

template <kvp_dtype SD, kvp_dtype DD>
KVP_TARGET_AVX512 void convert_row_avx512(const uint8_t* src, int64_t stride, uint8_t* dst, int64_t n) {
  cvt::convert_strided<CpuIsa::avx512, SD, DD>(src, stride, dst, n);
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
RowFn prepared();

// Two formats narrower than f32 with no kernel of their own (fp8 -> f16 / bf16, f16 <-> bf16)
// above baseline: the row converters of SD -> f32 and f32 -> DD for this CPU, 256 elements at a
// time through a buffer in L1 (one function per pair, the vector code shared). 2-6x the 64K-entry
// tables of f16 <-> bf16 and fp8 -> f16, 1.1-2.2x the 256-entry ones of fp8 -> bf16 at the
// AVX-512 level (0.8-1.6x at AVX2); fp8 -> fp8 keeps its table, which measured as fast.
template <kvp_dtype SD, kvp_dtype DD>
void convert_row_via_f32(const uint8_t* src, int64_t stride, uint8_t* dst, int64_t n) {
  static const RowFn widen = prepared<SD, KVP_DTYPE_F32>(), narrow = prepared<KVP_DTYPE_F32, DD>();
  constexpr int64_t kSrc = sizeof(typename Bits<SD>::type), kDst = sizeof(typename Bits<DD>::type);
  alignas(64) float buf[256];
  for (int64_t d0 = 0; d0 < n; d0 += 256) {
    const int64_t m = std::min<int64_t>(256, n - d0);
    widen(src + d0 * stride * kSrc, stride, reinterpret_cast<uint8_t*>(buf), m);
    narrow(reinterpret_cast<const uint8_t*>(buf), 1, dst + d0 * kDst, m);
  }
}

template <kvp_dtype SD, kvp_dtype DD>
RowFn prepared() {
  if constexpr (SD == DD) {
    return copy_row<sizeof(typename Bits<SD>::type)>;
  } else {
#if KVP_CPU_DISPATCH
    switch (cpu_isa()) {
      case CpuIsa::avx512:
        if constexpr (cvt::kVectorAt<CpuIsa::avx512, SD, DD>) return convert_row_avx512<SD, DD>;
        break;
      case CpuIsa::avx2:
        if constexpr (cvt::kVectorAt<CpuIsa::avx2, SD, DD>) return convert_row_avx2<SD, DD>;
        break;
      default: break;
    }
    if constexpr (kUseTable<SD, DD> && !(cvt::kIsFp8<SD> && cvt::kIsFp8<DD>))
      if (cpu_isa() != CpuIsa::baseline) return convert_row_via_f32<SD, DD>;  // no kernel at this level
#endif
    if constexpr (kUseTable<SD, DD>) (void)cvt::table<SD, DD>();  // build before the first row
    return convert_row<SD, DD>;  // baseline CPUs, and table lookups (wider vectors do not help them)
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
