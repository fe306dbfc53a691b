// The element conversions of the CPU backend between f32, f16, bf16, fp8 e4m3fn and fp8 e5m2, one
// implementation each, inlined into the row converters of cpu_convert.cpp (kvp_convert and the
// strided rows of kvp_concatenate) and into the fused converting writers of cpu_concat.cpp. Every
// conversion is backend/fp_convert.hpp's, so the bytes are those of the CUDA backend and of the
// reference; the code here only picks the fastest exact way to apply it at each instruction-set
// level.
//
// Hardware conversions, each giving fp_convert.hpp's bytes on every input (test_convert and
// test_concatenate check every 16-bit code and random f32 patterns at each level; a one-off check
// of all 2^32 f32 inputs and all 2^16 f16 inputs at both levels, with MXCSR at its default and
// with DAZ|FTZ set in the calling thread, found no difference):
// - f32 -> f16: vcvtps2ph with imm8 = 0 (round to nearest even, whatever MXCSR.RC says;
//   MXCSR.FTZ is ignored, so f16 subnormals are kept; an f32 subnormal rounds to a signed zero
//   with or without DAZ). Overflow gives inf, and a NaN gives sign | 0x7C00 | 0x200 | top 10
//   payload bits, which is fp_convert.hpp's rule for f16 NaNs. The 512-bit form at the AVX-512
//   level, but in the streaming writers of cpu_concat.cpp, which keep the 256-bit one (5-8 %
//   faster there on the Intel VM, docs/benchmarks.md).
// - f16 -> f32: vcvtph2ps is exact except that it quiets a signalling NaN (sets f32 bit 22);
//   fp_convert.hpp keeps the payload as it is, so that bit is cleared again in those lanes.
// - f32 -> bf16 has no kernel here: the portable body, compiled for AVX2 / AVX-512, already is the
//   integer sequence (add 0x7FFF plus the kept lsb, shift; NaN lanes replaced by the canonical
//   quiet NaN), and a hand-written AVX-512 version of it measured 3-5 % slower (docs/benchmarks.md).
//   AVX512-BF16's vcvtneps2bf16 is not used: it treats subnormal inputs as zero (bf16 keeps them)
//   and keeps truncated NaN payloads, so fixing its lanes up costs as much as the sequence itself.
// - f32 / f16 / bf16 -> fp8 e4m3fn / e5m2 (no table above baseline): at the AVX-512 level the
//   16-bit sources in fp8_from_16bit_avx512, the f32 rule on their codes in 16-bit lanes (32 per
//   vector, AVX512BW), 3-4x the 64K-entry table lookup; f32 in fp8_from_f32_avx512, the rule
//   with mask-register selects, 1.5-2.1x the compiler's vectorization of it. At the AVX2 level
//   the same two with compares and blends: 16-bit sources in 16-bit lanes (1.2-2.9x the f32
//   lanes they were widened to before), f32 in f32 lanes (the compiler's own vectorization
//   measured slower than the table there). All checked once against the
//   baseline path on every 16-bit input and all 2^32 f32 inputs, with MXCSR at its default and
//   with DAZ|FTZ set: the same bytes (docs/benchmarks.md).
// - fp8 -> f32 at the AVX2 and AVX-512 levels: the attention kernels' widening (exponent and
//   mantissa moved into place; subnormals by one exact fused 2x - 2^(1-bias) at AVX-512, by the
//   mantissa converted to f32 and scaled at AVX2), 3-6x the table.
// - fp8 -> f16 / bf16 and f16 <-> bf16 go through f32 with the conversions above at those levels
//   (cpu_convert.cpp's row converters: kvp_convert, strided rows), 1.1-6x the tables; baseline
//   CPUs, fp8 -> fp8 and kvp_concatenate's fused writers for these rare pairs keep tables.
//   Checked once on every 8- and 16-bit code at both levels, with and without DAZ|FTZ: the
//   baseline path's bytes.
//
// No conversion depends on the calling thread's floating-point environment: where a kernel
// rounds with f32 arithmetic, the rounding mode is in the instruction ({rn-sae} at AVX-512,
// vroundps' immediate at AVX2), and every f32 operation is exact or on normal numbers, so
// fesetround and DAZ / FTZ change no byte (test_convert checks every 16-bit code and the f32
// cases under each directed rounding mode; a one-off run of all 2^32 f32 inputs into f16 and
// both fp8 formats under each, at every level, matched the default-mode bytes).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "backend/fp_convert.hpp"
#include "util/cpu_features.hpp"

#if KVP_CPU_DISPATCH
#include <immintrin.h>
// GCC 12's AVX-512 intrinsics start from _mm256_undefined_si256() (`__m256i __Y = __Y;`), which
// -Wmaybe-uninitialized reports once inlined (GCC bug 105593, fixed in GCC 13): not a real read.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#endif

namespace kvp::detail::cvt {

template <kvp_dtype D>
struct Bits {
  using type = std::conditional_t<D == KVP_DTYPE_F32, uint32_t,
                                  std::conditional_t<D == KVP_DTYPE_F16 || D == KVP_DTYPE_BF16, uint16_t, uint8_t>>;
};

// The float formats' exponent and mantissa bits (fp8: f32_to_small's parameters).
template <kvp_dtype D>
struct FloatFormat {
  static constexpr int kExp = D == KVP_DTYPE_F16 ? 5 : D == KVP_DTYPE_F8_E4M3FN ? 4 : D == KVP_DTYPE_F8_E5M2 ? 5 : 8;
  static constexpr int kMan = D == KVP_DTYPE_F32        ? 23
                              : D == KVP_DTYPE_F16      ? 10
                              : D == KVP_DTYPE_BF16     ? 7
                              : D == KVP_DTYPE_F8_E4M3FN ? 3
                                                        : 2;
  static constexpr bool kFiniteOnly = D == KVP_DTYPE_F8_E4M3FN;
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

// In portable code, sources of 8 or 16 bits convert through a table of every source code (256 or
// 65,536 entries), built once from the same conversion functions (static storage, no allocation;
// exact by construction); 16-bit -> f32 is a shift or a short sequence, faster than the table.
// Table lookups gain nothing from wider vectors (compiled for AVX2 / AVX-512 they even become
// slow gathers), so the levels above baseline replace them with kernels where they can (below).
template <kvp_dtype SD, kvp_dtype DD>
constexpr bool kUseTable = SD != DD && (sizeof(typename Bits<SD>::type) == 1 ||
                                        (sizeof(typename Bits<SD>::type) == 2 && DD != KVP_DTYPE_F32));

// At the AVX2 and AVX-512 levels fp8 -> f32 and f32 / f16 / bf16 -> fp8 have kernels of their
// own instead of the table (fp8 -> f16 / bf16 and f16 <-> bf16 are composed through f32 by
// cpu_convert.cpp's row converters; fp8 -> fp8 keeps its 256-entry table).
template <kvp_dtype D>
constexpr bool kIsFp8 = D == KVP_DTYPE_F8_E4M3FN || D == KVP_DTYPE_F8_E5M2;

// Whether the conversion is vector code at level I (else a table lookup, the same at every level).
template <CpuIsa I, kvp_dtype SD, kvp_dtype DD>
constexpr bool kVectorAt = !kUseTable<SD, DD> || (I != CpuIsa::baseline && ((kIsFp8<SD> && DD == KVP_DTYPE_F32) ||
                                                                          (!kIsFp8<SD> && kIsFp8<DD>)));

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

// n contiguous elements, portable: a table lookup, or the branch-free arithmetic conversion,
// which the compiler vectorizes for the target of the function it is inlined into.
template <kvp_dtype SD, kvp_dtype DD>
KVP_ALWAYS_INLINE inline void convert_portable(const uint8_t* src, uint8_t* dst, int64_t n) {
  using SrcT = typename Bits<SD>::type;
  using DstT = typename Bits<DD>::type;
  if constexpr (kUseTable<SD, DD>) {
    const DstT* t = table<SD, DD>();
    for (int64_t d = 0; d < n; ++d) {
      SrcT c;
      std::memcpy(&c, src + d * static_cast<int64_t>(sizeof(SrcT)), sizeof c);
      std::memcpy(dst + d * static_cast<int64_t>(sizeof(DstT)), &t[c], sizeof(DstT));
    }
  } else {
    for (int64_t d = 0; d < n; ++d) {
      SrcT c;
      std::memcpy(&c, src + d * static_cast<int64_t>(sizeof(SrcT)), sizeof c);
      const DstT o = from_f32<DD>(to_f32<SD>(c));
      std::memcpy(dst + d * static_cast<int64_t>(sizeof(DstT)), &o, sizeof o);
    }
  }
}

#if KVP_CPU_DISPATCH
// The hardware kernels (n contiguous elements). Only ever called from functions compiled for
// their target or a wider one.
KVP_TARGET_AVX2 inline void f32_to_f16_avx2(const uint8_t* src, uint8_t* dst, int64_t n) {
  int64_t d = 0;
  for (; d + 8 <= n; d += 8) {
    const __m256 v = _mm256_loadu_ps(reinterpret_cast<const float*>(src + 4 * d));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * d), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  for (; d < n; ++d) {
    float f;
    std::memcpy(&f, src + 4 * d, 4);
    const uint16_t o = fp::f16_from_f32(f);
    std::memcpy(dst + 2 * d, &o, 2);
  }
}

KVP_TARGET_AVX512 inline void f32_to_f16_avx512(const uint8_t* src, uint8_t* dst, int64_t n) {
  int64_t d = 0;
  for (; d + 16 <= n; d += 16) {
    const __m512 v = _mm512_loadu_ps(reinterpret_cast<const float*>(src + 4 * d));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 2 * d), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  f32_to_f16_avx2(src + 4 * d, dst + 2 * d, n - d);
}

KVP_TARGET_AVX2 inline void f16_to_f32_avx2(const uint8_t* src, uint8_t* dst, int64_t n) {
  const __m256i exp_mask = _mm256_set1_epi32(0x7FFF);
  const __m256i snan_lo = _mm256_set1_epi32(0x7C00);  // (h & 0x7FFF) in (0x7C00, 0x7E00): sNaN
  const __m256i snan_hi = _mm256_set1_epi32(0x7E00);
  const __m256i quiet = _mm256_set1_epi32(0x00400000);
  int64_t d = 0;
  for (; d + 8 <= n; d += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * d));
    const __m256i f = _mm256_castps_si256(_mm256_cvtph_ps(h));
    const __m256i a = _mm256_and_si256(_mm256_cvtepu16_epi32(h), exp_mask);
    const __m256i snan = _mm256_and_si256(_mm256_cmpgt_epi32(a, snan_lo), _mm256_cmpgt_epi32(snan_hi, a));
    const __m256i o = _mm256_andnot_si256(_mm256_and_si256(snan, quiet), f);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 4 * d), o);
  }
  for (; d < n; ++d) {
    uint16_t h;
    std::memcpy(&h, src + 2 * d, 2);
    const float o = fp::f32_from_f16(h);
    std::memcpy(dst + 4 * d, &o, 4);
  }
}

KVP_TARGET_AVX512 inline __m512i f16_to_f32_avx512_lanes(__m256i h) {
  const __m512i f = _mm512_castps_si512(_mm512_cvtph_ps(h));
  const __m512i a = _mm512_and_si512(_mm512_cvtepu16_epi32(h), _mm512_set1_epi32(0x7FFF));
  const __mmask16 snan = _mm512_cmpgt_epu32_mask(a, _mm512_set1_epi32(0x7C00)) &
                         _mm512_cmplt_epu32_mask(a, _mm512_set1_epi32(0x7E00));
  return _mm512_mask_andnot_epi32(f, snan, _mm512_set1_epi32(0x00400000), f);
}

KVP_TARGET_AVX512 inline void f16_to_f32_avx512(const uint8_t* src, uint8_t* dst, int64_t n) {
  int64_t d = 0;
  for (; d + 16 <= n; d += 16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2 * d));
    _mm512_storeu_si512(dst + 4 * d, f16_to_f32_avx512_lanes(h));
  }
  if (d < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - d)) - 1u);
    const __m256i h = _mm256_maskz_loadu_epi16(m, src + 2 * d);
    _mm512_mask_storeu_epi32(dst + 4 * d, m, f16_to_f32_avx512_lanes(h));
  }
}

// Small formats in 32-bit lanes -> f32, exact (fp_convert.hpp's bytes, NaN payloads included): the
// exponent and mantissa placed at the f32 position and the bias difference added; for a subnormal
// that reads 2^(1-bias-1) (1 + m), which one fused 2x - 2^(1-bias) at {rn-sae} turns into the
// value at AVX-512 (AVX2: m converted to f32 and scaled by a power of two); every operand and
// result is a normal f32 or exact, so neither DAZ nor the caller's rounding mode changes a bit
// (a plain 2x - 2^(1-bias) would give -0 for m = 0 when rounding down);
// all-ones exponents (f16, e5m2: infinity and NaN) and the e4m3fn NaN pattern are patched; the sign
// is or-ed in. Shared with the attention kernels' widening (cpu_attention.cpp).
// f16 (or e5m2 shifted into f16) bits in 32-bit lanes -> f32.
KVP_TARGET_AVX512 KVP_ALWAYS_INLINE inline __m512 f32_from_f16_bits512(__m512i h) {
  const __m512i o = _mm512_slli_epi32(_mm512_and_si512(h, _mm512_set1_epi32(0x7FFF)), 13);
  const __m512i exp = _mm512_and_si512(o, _mm512_set1_epi32(0x0F800000));
  __m512 f = _mm512_castsi512_ps(_mm512_add_epi32(o, _mm512_set1_epi32(112 << 23)));
  // Subnormal (exponent 0): f holds 2^-15 (1 + m/1024); the value is 2 f - 2^-14.
  f = _mm512_mask_fmsub_round_ps(f, _mm512_cmpeq_epi32_mask(exp, _mm512_setzero_si512()), _mm512_set1_ps(2.0f),
                                 _mm512_set1_ps(0x1p-14f), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  f = _mm512_mask_mov_ps(f, _mm512_cmpeq_epi32_mask(exp, _mm512_set1_epi32(0x0F800000)),
                         _mm512_castsi512_ps(_mm512_or_si512(o, _mm512_set1_epi32(0x7F800000))));
  return _mm512_or_ps(f, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_and_si512(h, _mm512_set1_epi32(0x8000)), 16)));
}

// e4m3fn bytes in 32-bit lanes -> f32.
KVP_TARGET_AVX512 KVP_ALWAYS_INLINE inline __m512 f32_from_e4m3fn512(__m512i b) {
  const __m512i mag = _mm512_and_si512(b, _mm512_set1_epi32(0x7F));
  __m512 f = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_slli_epi32(mag, 20), _mm512_set1_epi32(120 << 23)));
  // Subnormal (magnitude below 8): f holds 2^-7 (1 + m/8); the value is 2 f - 2^-6.
  f = _mm512_mask_fmsub_round_ps(f, _mm512_cmplt_epu32_mask(mag, _mm512_set1_epi32(8)), _mm512_set1_ps(2.0f),
                                 _mm512_set1_ps(0x1p-6f), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  f = _mm512_mask_mov_ps(f, _mm512_cmpeq_epi32_mask(mag, _mm512_set1_epi32(0x7F)), _mm512_set1_ps(NAN));
  return _mm512_or_ps(f, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_and_si512(b, _mm512_set1_epi32(0x80)), 24)));
}

KVP_TARGET_AVX2 KVP_ALWAYS_INLINE inline __m256 f32_from_f16_bits256(__m256i h) {
  const __m256i o = _mm256_slli_epi32(_mm256_and_si256(h, _mm256_set1_epi32(0x7FFF)), 13);
  const __m256i exp = _mm256_and_si256(o, _mm256_set1_epi32(0x0F800000));
  __m256 f = _mm256_castsi256_ps(_mm256_add_epi32(o, _mm256_set1_epi32(112 << 23)));
  // Subnormal (exponent 0): the value is m 2^-24.
  const __m256 sub = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(h, _mm256_set1_epi32(0x7FFF))),
                                   _mm256_set1_ps(0x1p-24f));
  f = _mm256_blendv_ps(f, sub, _mm256_castsi256_ps(_mm256_cmpeq_epi32(exp, _mm256_setzero_si256())));
  f = _mm256_blendv_ps(f, _mm256_castsi256_ps(_mm256_or_si256(o, _mm256_set1_epi32(0x7F800000))),
                       _mm256_castsi256_ps(_mm256_cmpeq_epi32(exp, _mm256_set1_epi32(0x0F800000))));
  return _mm256_or_ps(f, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(h, _mm256_set1_epi32(0x8000)), 16)));
}

KVP_TARGET_AVX2 KVP_ALWAYS_INLINE inline __m256 f32_from_e4m3fn256(__m256i b) {
  const __m256i mag = _mm256_and_si256(b, _mm256_set1_epi32(0x7F));
  __m256 f = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_slli_epi32(mag, 20), _mm256_set1_epi32(120 << 23)));
  // Subnormal (magnitude below 8): the value is m 2^-9.
  const __m256 sub = _mm256_mul_ps(_mm256_cvtepi32_ps(mag), _mm256_set1_ps(0x1p-9f));
  f = _mm256_blendv_ps(f, sub, _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(8), mag)));
  f = _mm256_blendv_ps(f, _mm256_set1_ps(NAN), _mm256_castsi256_ps(_mm256_cmpeq_epi32(mag, _mm256_set1_epi32(0x7F))));
  return _mm256_or_ps(f, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x80)), 24)));
}

// fp8 bytes in 32-bit lanes -> f32 (e5m2 is the upper byte of an f16).
template <kvp_dtype SD>
KVP_TARGET_AVX512 KVP_ALWAYS_INLINE inline __m512 f32_from_fp8_512(__m512i b) {
  return SD == KVP_DTYPE_F8_E5M2 ? f32_from_f16_bits512(_mm512_slli_epi32(b, 8)) : f32_from_e4m3fn512(b);
}

template <kvp_dtype SD>
KVP_TARGET_AVX2 KVP_ALWAYS_INLINE inline __m256 f32_from_fp8_256(__m256i b) {
  return SD == KVP_DTYPE_F8_E5M2 ? f32_from_f16_bits256(_mm256_slli_epi32(b, 8)) : f32_from_e4m3fn256(b);
}

// n fp8 codes -> f32 at the AVX-512 level (the tail masked) and at the AVX2 level (the tail through
// a zero-padded copy).
template <kvp_dtype SD>
KVP_TARGET_AVX512 inline void f32_from_fp8_avx512(const uint8_t* src, uint8_t* dst, int64_t n) {
  int64_t d = 0;
  for (; d + 16 <= n; d += 16)
    _mm512_storeu_ps(dst + 4 * d, f32_from_fp8_512<SD>(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + d)))));
  if (d < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - d)) - 1u);
    _mm512_mask_storeu_ps(dst + 4 * d, m, f32_from_fp8_512<SD>(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, src + d))));
  }
}

template <kvp_dtype SD>
KVP_TARGET_AVX2 inline void f32_from_fp8_avx2(const uint8_t* src, uint8_t* dst, int64_t n) {
  int64_t d = 0;
  for (; d + 8 <= n; d += 8)
    _mm256_storeu_ps(reinterpret_cast<float*>(dst + 4 * d),
                     f32_from_fp8_256<SD>(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + d)))));
  if (d < n) {
    uint8_t in[8] = {};
    alignas(32) float out[8];
    std::memcpy(in, src + d, static_cast<size_t>(n - d));
    _mm256_store_ps(out, f32_from_fp8_256<SD>(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(in)))));
    std::memcpy(dst + 4 * d, out, static_cast<size_t>(4 * (n - d)));
  }
}

// Subnormal fp8 codes at the AVX-512 level: f32 magnitudes (bits, >= 0) plus the f32 2^(kMagicExp -
// 127), whose last mantissa bit is worth one fp8 subnormal step; the add rounds to nearest even at
// {rn-sae} (whatever MXCSR says, and no flags), and the bits it adds are the code, up to the
// smallest normal's. DAZ may read an f32 subnormal as 0: its code is 0 either way. kShiftRight
// first moves the bits into place (16-bit codes unpacked into the high halves).
template <int kMagicExp, int kShiftRight = 0>
KVP_TARGET_AVX512 inline __m512i fp8_subnormal_codes_avx512(__m512i a) {
  if constexpr (kShiftRight != 0) a = _mm512_srli_epi32(a, kShiftRight);
  const __m512i magic = _mm512_set1_epi32(kMagicExp << 23);
  const __m512 sum = _mm512_add_round_ps(_mm512_castsi512_ps(a), _mm512_castsi512_ps(magic),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_sub_epi32(_mm512_castps_si512(sum), magic);
}

// The constants of fp_convert.hpp's rule from a float format (kSrcExp / kSrcMan bits: f32 8/23,
// bf16 8/7, f16 5/10) to fp8 (kExpBits / kManBits), in terms of the source's codes, shared by the
// AVX-512 and AVX2 kernels of both source widths. With 16-bit sources every value fits 16-bit lanes.
template <int kSrcExp, int kSrcMan, int kExpBits, int kManBits, bool kFiniteOnly>
struct Fp8Rule {
  static constexpr int kSrcBias = (1 << (kSrcExp - 1)) - 1, kBias = (1 << (kExpBits - 1)) - 1;
  static constexpr int kShift = kSrcMan - kManBits;
  static constexpr int kManMask = (1 << kManBits) - 1;
  static constexpr int kInf = ((1 << kExpBits) - 1) << kManBits;
  static constexpr int kMaxFinite = kFiniteOnly ? (kInf | (kManMask - 1)) : (kInf - 1);
  static constexpr int kOverflow = kFiniteOnly ? (kInf | kManMask) : kInf;
  static constexpr int kRebias = (kSrcBias - kBias) << kSrcMan;  // 0: the normal rule covers subnormals
  static constexpr int kRound = (1 << (kShift - 1)) - 1 - kRebias;  // wraps for codes below the range
  static constexpr int kMinNormal = (kSrcBias - kBias + 1) << kSrcMan;  // the smallest normal fp8's code
  static constexpr int kSrcInf = ((1 << kSrcExp) - 1) << kSrcMan;
  static constexpr int kNan = kInf | (1 << (kManBits - 1));          // e5m2: or-ed with top payload bits
  // 16-bit codes unpacked into the high halves of 32-bit lanes: f16 needs 3 more bits of shift.
  static constexpr int kWiden = kSrcMan + 16 - 23;
  // The codes as (or widened to) f32 bits read value * 2^(kSrcBias - 127) (exact); the subnormal
  // helpers' constants carry that factor: the AVX-512 magic number and the AVX2 step scale.
  static constexpr int kMagicExp = 151 - kBias - kManBits + kSrcBias - 127;
  static constexpr int kStepScaleExp = 127 + kBias + kManBits - 1 + 127 - kSrcBias;
};

// 16-bit floats (kSrcExp exponent bits, kSrcMan mantissa bits: bf16 8/7, f16 5/10) to fp8, 32
// lanes at a time in 16-bit integer arithmetic: fp_convert.hpp's f32_to_small on the source's
// codes directly (every 16-bit float is an f32 whose low bits are zero, so the rounding
// increments shrink with them). Results that stay normal are rebiased and rounded to nearest
// even with one add; results below the smallest normal fp8 come from fp8_subnormal_codes_avx512
// (an f32 add at {rn-sae} in 32-bit lanes, 1.3-1.5x the per-lane variable shifts it replaced, which
// cost Zen 4 as much as everything else here). Overflow gives kOverflow (inf, or NaN for e4m3fn,
// also for inf and NaN inputs there); e5m2 NaNs keep the top payload bits, quiet. Where both
// formats share the exponent (f16 -> e5m2) the normal rule covers the subnormals too.
template <int kSrcExp, int kSrcMan, int kExpBits, int kManBits, bool kFiniteOnly>
KVP_TARGET_AVX512 inline __m512i fp8_from_16bit_avx512_lanes(__m512i x) {
  using C = Fp8Rule<kSrcExp, kSrcMan, kExpBits, kManBits, kFiniteOnly>;
  const __m512i one = _mm512_set1_epi16(1);
  const __m512i a = _mm512_and_si512(x, _mm512_set1_epi16(0x7FFF));
  // Normal results: (a - rebias + half - 1 + lsb) >> shift (lanes below the range wrap; replaced).
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi16(a, C::kShift), one);
  const __m512i biased = _mm512_add_epi16(a, _mm512_set1_epi16(static_cast<int16_t>(C::kRound)));
  __m512i r = _mm512_srli_epi16(_mm512_add_epi16(biased, lsb), C::kShift);
  if constexpr (C::kRebias != 0) {
    // Subnormal results from the codes widened to f32 bits (the unpacks and the pack work within
    // 128-bit lanes and undo each other).
    const __m512i zero = _mm512_setzero_si512();
    const __m512i rs =
        _mm512_packus_epi32(fp8_subnormal_codes_avx512<C::kMagicExp, C::kWiden>(_mm512_unpacklo_epi16(zero, a)),
                            fp8_subnormal_codes_avx512<C::kMagicExp, C::kWiden>(_mm512_unpackhi_epi16(zero, a)));
    r = _mm512_mask_mov_epi16(r, _mm512_cmplt_epu16_mask(a, _mm512_set1_epi16(static_cast<int16_t>(C::kMinNormal))), rs);
  }
  r = _mm512_mask_mov_epi16(r, _mm512_cmpgt_epu16_mask(r, _mm512_set1_epi16(C::kMaxFinite)),
                            _mm512_set1_epi16(C::kOverflow));
  if constexpr (!kFiniteOnly) {
    const __m512i nan = _mm512_or_si512(_mm512_set1_epi16(C::kNan),
                                        _mm512_and_si512(_mm512_srli_epi16(a, C::kShift), _mm512_set1_epi16(C::kManMask)));
    r = _mm512_mask_mov_epi16(r, _mm512_cmpgt_epu16_mask(a, _mm512_set1_epi16(static_cast<int16_t>(C::kSrcInf))), nan);
  }
  // The sign, bit 15 of the source, to bit 7.
  return _mm512_ternarylogic_epi32(r, _mm512_srli_epi16(x, 8), _mm512_set1_epi16(0x80), 0xF8);  // r | (b & c)
}

// f32 to fp8, 16 lanes at a time: fp_convert.hpp's f32_to_small with mask registers for its
// selects (the compiler's vectorization of it spends about twice the instructions on them) and its
// subnormal results from fp8_subnormal_codes_avx512 (the same codes, by one add).
template <int kExpBits, int kManBits, bool kFiniteOnly>
KVP_TARGET_AVX512 inline __m512i fp8_from_f32_avx512_lanes(__m512i x) {
  using C = Fp8Rule<8, 23, kExpBits, kManBits, kFiniteOnly>;
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i a = _mm512_and_si512(x, _mm512_set1_epi32(0x7FFFFFFF));
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(a, C::kShift), one);
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(a, _mm512_set1_epi32(C::kRound)), lsb), C::kShift);
  const __m512i rs = fp8_subnormal_codes_avx512<C::kMagicExp>(a);
  r = _mm512_mask_mov_epi32(r, _mm512_cmplt_epu32_mask(a, _mm512_set1_epi32(C::kMinNormal)), rs);
  r = _mm512_mask_mov_epi32(r, _mm512_cmpgt_epu32_mask(r, _mm512_set1_epi32(C::kMaxFinite)),
                            _mm512_set1_epi32(C::kOverflow));
  if constexpr (!kFiniteOnly) {
    const __m512i nan = _mm512_or_si512(_mm512_set1_epi32(C::kNan),
                                        _mm512_and_si512(_mm512_srli_epi32(a, C::kShift), _mm512_set1_epi32(C::kManMask)));
    r = _mm512_mask_mov_epi32(r, _mm512_cmpgt_epu32_mask(a, _mm512_set1_epi32(C::kSrcInf)), nan);
  }
  return _mm512_ternarylogic_epi32(r, _mm512_srli_epi32(x, 24), _mm512_set1_epi32(0x80), 0xF8);  // r | (b & c)
}

template <int kExpBits, int kManBits, bool kFiniteOnly>
KVP_TARGET_AVX512 inline void fp8_from_f32_avx512(const uint8_t* src, uint8_t* dst, int64_t n) {
  int64_t d = 0;
  for (; d + 16 <= n; d += 16) {
    const __m512i r = fp8_from_f32_avx512_lanes<kExpBits, kManBits, kFiniteOnly>(_mm512_loadu_si512(src + 4 * d));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + d), _mm512_cvtepi32_epi8(r));
  }
  if (d < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - d)) - 1u);
    const __m512i r = fp8_from_f32_avx512_lanes<kExpBits, kManBits, kFiniteOnly>(_mm512_maskz_loadu_epi32(m, src + 4 * d));
    _mm_mask_storeu_epi8(dst + d, m, _mm512_cvtepi32_epi8(r));
  }
}

// Subnormal fp8 codes at the AVX2 level: f32 magnitudes (bits, >= 0) times 2^(kScaleExp - 127),
// exact, which makes one fp8 subnormal step 1.0; rounded to nearest even by vroundps' immediate
// (AVX2 has no per-instruction rounding for an add) and truncated to int. f32 subnormals are
// raised to the smallest normal first (code 0 either way): a multiply by a subnormal takes a
// microcode assist on Zen 4 (1.8x slower writes of data with a few of them).
// kShiftRight first moves the bits into place (16-bit codes unpacked into the high halves).
template <int kScaleExp, int kShiftRight = 0>
KVP_TARGET_AVX2 inline __m256i fp8_subnormal_codes_avx2(__m256i a) {
  if constexpr (kShiftRight != 0) a = _mm256_srli_epi32(a, kShiftRight);
  const __m256 steps = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_max_epi32(a, _mm256_set1_epi32(1 << 23))),
                                     _mm256_castsi256_ps(_mm256_set1_epi32(kScaleExp << 23)));
  return _mm256_cvttps_epi32(_mm256_round_ps(steps, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// The same f32 rule in AVX2's 8 lanes (compares and blends instead of mask registers; a is below
// 2^31 and the results below 2^12, so signed compares order them as unsigned ones would), its
// subnormal results from fp8_subnormal_codes_avx2.
template <int kExpBits, int kManBits, bool kFiniteOnly>
KVP_TARGET_AVX2 inline __m256i fp8_from_f32_avx2_lanes(__m256i x) {
  using C = Fp8Rule<8, 23, kExpBits, kManBits, kFiniteOnly>;
  const __m256i one = _mm256_set1_epi32(1);
  const __m256i a = _mm256_and_si256(x, _mm256_set1_epi32(0x7FFFFFFF));
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(a, C::kShift), one);
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(a, _mm256_set1_epi32(C::kRound)), lsb), C::kShift);
  const __m256i rs = fp8_subnormal_codes_avx2<C::kStepScaleExp>(a);
  r = _mm256_blendv_epi8(r, rs, _mm256_cmpgt_epi32(_mm256_set1_epi32(C::kMinNormal), a));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(C::kOverflow), _mm256_cmpgt_epi32(r, _mm256_set1_epi32(C::kMaxFinite)));
  if constexpr (!kFiniteOnly) {
    const __m256i nan = _mm256_or_si256(_mm256_set1_epi32(C::kNan),
                                        _mm256_and_si256(_mm256_srli_epi32(a, C::kShift), _mm256_set1_epi32(C::kManMask)));
    r = _mm256_blendv_epi8(r, nan, _mm256_cmpgt_epi32(a, _mm256_set1_epi32(C::kSrcInf)));
  }
  return _mm256_or_si256(r, _mm256_and_si256(_mm256_srli_epi32(x, 24), _mm256_set1_epi32(0x80)));
}

// 16-bit floats to fp8 at the AVX2 level, 16 lanes at a time: fp8_from_16bit_avx512_lanes' rule
// with compares and blends (every lane holds a value below 2^15, so signed compares order them as
// unsigned ones would), its subnormal results from fp8_subnormal_codes_avx2 on the codes widened
// to f32 bits (the unpacks and the pack work within 128-bit lanes and undo each other).
template <int kSrcExp, int kSrcMan, int kExpBits, int kManBits, bool kFiniteOnly>
KVP_TARGET_AVX2 inline __m256i fp8_from_16bit_avx2_lanes(__m256i x) {
  using C = Fp8Rule<kSrcExp, kSrcMan, kExpBits, kManBits, kFiniteOnly>;
  const __m256i one = _mm256_set1_epi16(1);
  const __m256i a = _mm256_and_si256(x, _mm256_set1_epi16(0x7FFF));
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi16(a, C::kShift), one);
  const __m256i biased = _mm256_add_epi16(a, _mm256_set1_epi16(static_cast<int16_t>(C::kRound)));
  __m256i r = _mm256_srli_epi16(_mm256_add_epi16(biased, lsb), C::kShift);
  if constexpr (C::kRebias != 0) {
    const __m256i zero = _mm256_setzero_si256();
    const __m256i rs =
        _mm256_packus_epi32(fp8_subnormal_codes_avx2<C::kStepScaleExp, C::kWiden>(_mm256_unpacklo_epi16(zero, a)),
                            fp8_subnormal_codes_avx2<C::kStepScaleExp, C::kWiden>(_mm256_unpackhi_epi16(zero, a)));
    r = _mm256_blendv_epi8(r, rs, _mm256_cmpgt_epi16(_mm256_set1_epi16(static_cast<int16_t>(C::kMinNormal)), a));
  }
  r = _mm256_blendv_epi8(r, _mm256_set1_epi16(C::kOverflow), _mm256_cmpgt_epi16(r, _mm256_set1_epi16(C::kMaxFinite)));
  if constexpr (!kFiniteOnly) {
    const __m256i nan = _mm256_or_si256(_mm256_set1_epi16(C::kNan),
                                        _mm256_and_si256(_mm256_srli_epi16(a, C::kShift), _mm256_set1_epi16(C::kManMask)));
    r = _mm256_blendv_epi8(r, nan, _mm256_cmpgt_epi16(a, _mm256_set1_epi16(static_cast<int16_t>(C::kSrcInf))));
  }
  return _mm256_or_si256(r, _mm256_and_si256(_mm256_srli_epi16(x, 8), _mm256_set1_epi16(0x80)));
}

// 32 elements of f32, f16 or bf16 to fp8 at the AVX2 level: two vectors of 16-bit lanes, or four
// of the f32 rule, packed to bytes (the packs work per 128-bit lane; one permute puts the result
// in order).
template <kvp_dtype SD, int kExpBits, int kManBits, bool kFiniteOnly>
KVP_TARGET_AVX2 inline void fp8_avx2_32(const uint8_t* src, uint8_t* dst) {
  const auto* in = reinterpret_cast<const __m256i*>(src);
  __m256i bytes;
  if constexpr (SD == KVP_DTYPE_F32) {
    __m256i r[4];
    for (int i = 0; i < 4; ++i)
      r[i] = fp8_from_f32_avx2_lanes<kExpBits, kManBits, kFiniteOnly>(_mm256_loadu_si256(in + i));
    const __m256i w = _mm256_packus_epi16(_mm256_packus_epi32(r[0], r[1]), _mm256_packus_epi32(r[2], r[3]));
    bytes = _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));  // dwords were 0 2 4 6 1 3 5 7
  } else {
    using S = FloatFormat<SD>;
    const __m256i r0 =
        fp8_from_16bit_avx2_lanes<S::kExp, S::kMan, kExpBits, kManBits, kFiniteOnly>(_mm256_loadu_si256(in));
    const __m256i r1 =
        fp8_from_16bit_avx2_lanes<S::kExp, S::kMan, kExpBits, kManBits, kFiniteOnly>(_mm256_loadu_si256(in + 1));
    bytes = _mm256_permute4x64_epi64(_mm256_packus_epi16(r0, r1), 0xD8);  // qwords were 0 2 1 3
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), bytes);
}

// n elements: 32 at a time, the tail through a zero-padded copy.
template <kvp_dtype SD, int kExpBits, int kManBits, bool kFiniteOnly>
KVP_TARGET_AVX2 inline void fp8_avx2(const uint8_t* src, uint8_t* dst, int64_t n) {
  constexpr int64_t kSize = sizeof(typename Bits<SD>::type);
  int64_t d = 0;
  for (; d + 32 <= n; d += 32) fp8_avx2_32<SD, kExpBits, kManBits, kFiniteOnly>(src + d * kSize, dst + d);
  if (d < n) {
    alignas(32) uint8_t in[32 * kSize] = {};
    alignas(32) uint8_t out[32];
    std::memcpy(in, src + d * kSize, static_cast<size_t>((n - d) * kSize));
    fp8_avx2_32<SD, kExpBits, kManBits, kFiniteOnly>(in, out);
    std::memcpy(dst + d, out, static_cast<size_t>(n - d));
  }
}

template <int kSrcExp, int kSrcMan, int kExpBits, int kManBits, bool kFiniteOnly>
KVP_TARGET_AVX512 inline void fp8_from_16bit_avx512(const uint8_t* src, uint8_t* dst, int64_t n) {
  int64_t d = 0;
  for (; d + 32 <= n; d += 32) {
    const __m512i x = _mm512_loadu_si512(src + 2 * d);
    const __m512i r = fp8_from_16bit_avx512_lanes<kSrcExp, kSrcMan, kExpBits, kManBits, kFiniteOnly>(x);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + d), _mm512_cvtepi16_epi8(r));
  }
  if (d < n) {
    const __mmask32 m = static_cast<__mmask32>((uint64_t(1) << (n - d)) - 1u);
    const __m512i x = _mm512_maskz_loadu_epi16(m, src + 2 * d);
    const __m512i r = fp8_from_16bit_avx512_lanes<kSrcExp, kSrcMan, kExpBits, kManBits, kFiniteOnly>(x);
    _mm256_mask_storeu_epi8(dst + d, m, _mm512_cvtepi16_epi8(r));
  }
}

// f32, f16 or bf16 -> fp8 at level I (AVX2 or AVX-512).
template <CpuIsa I, kvp_dtype SD, kvp_dtype DD>
KVP_ALWAYS_INLINE inline void to_fp8(const uint8_t* src, uint8_t* dst, int64_t n) {
  using S = FloatFormat<SD>;
  using F = FloatFormat<DD>;
  if constexpr (I == CpuIsa::avx2)
    fp8_avx2<SD, F::kExp, F::kMan, F::kFiniteOnly>(src, dst, n);
  else if constexpr (SD == KVP_DTYPE_F32)
    fp8_from_f32_avx512<F::kExp, F::kMan, F::kFiniteOnly>(src, dst, n);
  else
    fp8_from_16bit_avx512<S::kExp, S::kMan, F::kExp, F::kMan, F::kFiniteOnly>(src, dst, n);
}
#endif

// n contiguous elements at level I: the hardware kernel where there is one, else the portable
// body. Inline it only into a function compiled for level I (KVP_TARGET_AVX2 / KVP_TARGET_AVX512
// or the default target for baseline), so no AVX code can reach a CPU without it.
template <CpuIsa I, kvp_dtype SD, kvp_dtype DD>
KVP_ALWAYS_INLINE inline void convert_contiguous(const uint8_t* src, uint8_t* dst, int64_t n) {
#if KVP_CPU_DISPATCH
  if constexpr (I == CpuIsa::avx2 && SD == KVP_DTYPE_F32 && DD == KVP_DTYPE_F16)
    f32_to_f16_avx2(src, dst, n);
  else if constexpr (I == CpuIsa::avx512 && SD == KVP_DTYPE_F32 && DD == KVP_DTYPE_F16)
    f32_to_f16_avx512(src, dst, n);
  else if constexpr (I == CpuIsa::avx2 && SD == KVP_DTYPE_F16 && DD == KVP_DTYPE_F32)
    f16_to_f32_avx2(src, dst, n);
  else if constexpr (I == CpuIsa::avx512 && SD == KVP_DTYPE_F16 && DD == KVP_DTYPE_F32)
    f16_to_f32_avx512(src, dst, n);
  else if constexpr (I == CpuIsa::avx2 && kIsFp8<SD> && DD == KVP_DTYPE_F32)
    f32_from_fp8_avx2<SD>(src, dst, n);
  else if constexpr (I == CpuIsa::avx512 && kIsFp8<SD> && DD == KVP_DTYPE_F32)
    f32_from_fp8_avx512<SD>(src, dst, n);
  else if constexpr (I != CpuIsa::baseline && !kIsFp8<SD> && kIsFp8<DD>)
    to_fp8<I, SD, DD>(src, dst, n);
  else
#endif
    convert_portable<SD, DD>(src, dst, n);
}

// n elements `stride` source elements apart into n contiguous ones at level I (strided rows are
// gathered into a small buffer first).
template <CpuIsa I, kvp_dtype SD, kvp_dtype DD>
KVP_ALWAYS_INLINE inline void convert_strided(const uint8_t* src, int64_t stride, uint8_t* dst, int64_t n) {
  using SrcT = typename Bits<SD>::type;
  if (stride == 1) {
    convert_contiguous<I, SD, DD>(src, dst, n);
    return;
  }
  constexpr int kChunk = 128;
  SrcT in[kChunk];
  const int64_t step = stride * static_cast<int64_t>(sizeof(SrcT));
  for (int64_t d0 = 0; d0 < n; d0 += kChunk) {
    const int m = static_cast<int>(n - d0 < kChunk ? n - d0 : kChunk);
    for (int i = 0; i < m; ++i) std::memcpy(&in[i], src + (d0 + i) * step, sizeof(SrcT));
    convert_contiguous<I, SD, DD>(reinterpret_cast<const uint8_t*>(in), dst + d0 * int64_t(sizeof(typename Bits<DD>::type)), m);
  }
}

}  // namespace kvp::detail::cvt
