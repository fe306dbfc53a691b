// Floating-point conversions between f32 and the storage/input dtypes (f16, bf16, fp8 e4m3fn,
// fp8 e5m2), header-only and usable from CUDA device code, so the CPU and CUDA backends produce
// byte-identical pages.
//
// Rules (those of JAX / ml_dtypes casts, SPEC.md §5.2):
// - f32 -> narrower: round to nearest, ties to even, subnormals of the target kept (no flush).
// - No saturation: a value whose rounded magnitude exceeds the largest finite value becomes
//   +-inf (f16, bf16, e5m2) or NaN (e4m3fn, which has no infinity); +-inf -> +-inf, or NaN for
//   e4m3fn.
// - NaN stays NaN with its sign. f16 and e5m2 keep the top payload bits and set the quiet bit
//   (f16: what x86 F16C vcvtps2ph does, so the CPU's F16C path gives these bytes too). bf16 gives
//   the canonical quiet NaN of the sign, 0x7FC0 / 0xFFC0, whatever the payload: ml_dtypes' bfloat16
//   is Eigen::bfloat16, whose float_to_bfloat16_rtne maps every NaN to signbit ? 0xFFC0 : 0x7FC0
//   (f32 0x7FA00000 -> 0x7FC0; kvpages before 1.2 gave 0x7FE0, the payload truncated and the
//   quiet bit set). e4m3fn has the single NaN encoding S.1111.111.
// - narrower -> f32 is exact (every f16/bf16/fp8 value is an f32 value).
// Inputs other than f32 are converted through f32 (exact), which is what a cast f16 -> bf16
// does in JAX as well.
#pragma once

#include <stdint.h>

#include "kvpages/types.h"

#if defined(__CUDACC__)
#define KVP_HD __host__ __device__
#else
#define KVP_HD
#endif

namespace kvp::detail::fp {

KVP_HD inline uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  __builtin_memcpy(&u, &f, sizeof u);
  return u;
#endif
}

KVP_HD inline float f32_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  __builtin_memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// The code of an f32 magnitude (bits a) below the smallest normal of a format with bias kBias and
// kManBits mantissa bits: a / 2^(1 - kBias - kManBits) rounded to nearest even. The scaling is an
// exact f32 product (or 0, with DAZ or FTZ, where the code is 0 anyway), truncated to an integer;
// rounding up is decided by the exact remainder against 1/2, in integer arithmetic on its bits
// (compares would become branches, not vector code). So the caller's rounding mode (fesetround,
// MXCSR.RC) changes nothing. Larger a, which f32_to_small selects away, are first replaced by the
// smallest normal (a select by mask, again branch-free): the conversion to int stays defined for
// them, inf and NaN included, and no product is a subnormal (slow on x86).
template <int kBias, int kManBits>
KVP_HD inline uint32_t f32_to_small_subnormal(uint32_t a) {
  constexpr uint32_t kMinNormal = static_cast<uint32_t>(127 + 1 - kBias) << 23;         // 2^(1 - bias)
  constexpr uint32_t kScale = static_cast<uint32_t>(127 + kBias + kManBits - 1) << 23;  // 2^(bias + M - 1)
  constexpr uint32_t kHalf = 126u << 23;                                                // 0.5
  const uint32_t below = static_cast<uint32_t>(static_cast<int32_t>(a - kMinNormal) >> 31);  // a < kMinNormal
  const float v = f32_from_bits((a & below) | (kMinNormal & ~below)) * f32_from_bits(kScale);
  const uint32_t t = static_cast<uint32_t>(static_cast<int32_t>(v));
  const uint32_t rest = f32_bits(v - static_cast<float>(static_cast<int32_t>(t))) & 0x7FFFFFFFu;  // [0, 1): not -0
  // Up when rest > 1/2, or rest == 1/2 and t is odd: as bit patterns, rest + (t & 1) > 1/2.
  return t + ((kHalf - (rest + (t & 1u))) >> 31);
}

// f32 -> a small IEEE-like format with kExpBits exponent bits (bias 2^(e-1) - 1) and kManBits
// mantissa bits. kFiniteOnly selects the "fn" convention (no infinity, the all-ones pattern is the
// only NaN and exponent all-ones is otherwise a normal binade), as in fp8 e4m3fn.
// Branch-free (both paths computed, then selected) so loops over it vectorize:
// - normal results: rebias the exponent and round the mantissa to nearest-even with integer
//   arithmetic (a carry moves into the exponent field, which is exactly right);
// - subnormal / zero results: f32_to_small_subnormal on the host (it reaches the smallest normal
//   code exactly when it should); on a CUDA device, where nothing can change the rounding mode, the
//   same codes by one f32 add.
template <int kExpBits, int kManBits, bool kFiniteOnly>
KVP_HD inline uint32_t f32_to_small(float f) {
  constexpr int kBias = (1 << (kExpBits - 1)) - 1;
  constexpr int kSignShift = kExpBits + kManBits;
  constexpr int kShift = 23 - kManBits;
  constexpr uint32_t kManMask = (1u << kManBits) - 1u;
  constexpr uint32_t kInf = ((1u << kExpBits) - 1u) << kManBits;
  constexpr uint32_t kMaxFinite = kFiniteOnly ? (kInf | (kManMask - 1u)) : (kInf - 1u);
  constexpr uint32_t kOverflow = kFiniteOnly ? (kInf | kManMask) : kInf;
  constexpr uint32_t kMinNormal = static_cast<uint32_t>(127 + 1 - kBias) << 23;  // 2^(1-bias) as f32 bits
  const uint32_t x = f32_bits(f);
  const uint32_t sign = (x >> 31) << kSignShift;
  const uint32_t a = x & 0x7FFFFFFFu;
  const uint32_t rebased = a - (static_cast<uint32_t>(127 - kBias) << 23);
  const uint32_t rn = (rebased + ((1u << (kShift - 1)) - 1u) + ((rebased >> kShift) & 1u)) >> kShift;
#if defined(__CUDA_ARCH__)
  // The device has no rounding-mode state: one add of 2^(24 - bias - M), whose ulp is the target's
  // subnormal unit, rounds to nearest even (the bits it adds are the code), in fewer registers.
  constexpr uint32_t kMagic = static_cast<uint32_t>(151 - kBias - kManBits) << 23;
  const uint32_t rs = f32_bits(__fadd_rn(f32_from_bits(a), f32_from_bits(kMagic))) - kMagic;
#else
  const uint32_t rs = f32_to_small_subnormal<kBias, kManBits>(a);
#endif
  // Bitwise selects: both paths computed, so compilers can vectorize loops over this function.
  const uint32_t sub_mask = 0u - static_cast<uint32_t>(a < kMinNormal);
  uint32_t r = (rs & sub_mask) | (rn & ~sub_mask);
  const uint32_t ovf_mask = 0u - static_cast<uint32_t>(r > kMaxFinite);  // also +-inf (no saturation)
  r = (kOverflow & ovf_mask) | (r & ~ovf_mask);
  const uint32_t nan = kFiniteOnly ? kOverflow : (kInf | (1u << (kManBits - 1)) | ((a >> kShift) & kManMask));
  const uint32_t nan_mask = 0u - static_cast<uint32_t>(a > 0x7F800000u);
  r = (nan & nan_mask) | (r & ~nan_mask);
  return sign | r;
}

KVP_HD inline uint16_t f16_from_f32(float f) { return static_cast<uint16_t>(f32_to_small<5, 10, false>(f)); }
KVP_HD inline uint8_t e5m2_from_f32(float f) { return static_cast<uint8_t>(f32_to_small<5, 2, false>(f)); }
KVP_HD inline uint8_t e4m3fn_from_f32(float f) { return static_cast<uint8_t>(f32_to_small<4, 3, true>(f)); }

KVP_HD inline uint16_t bf16_from_f32(float f) {
  const uint32_t x = f32_bits(f);
  const uint32_t rounded = (x + 0x7FFFu + ((x >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>((x & 0x7FFFFFFFu) > 0x7F800000u ? (((x >> 16) & 0x8000u) | 0x7FC0u) : rounded);
}

KVP_HD inline float f32_from_bf16(uint16_t h) { return f32_from_bits(static_cast<uint32_t>(h) << 16); }

// Small format -> f32, exactly, branch-free: shift the exponent/mantissa into place and rebias;
// the exponent-all-ones binade gets the extra rebias to f32's all-ones (inf/NaN); subnormals are
// renormalised by an exact f32 subtraction (its operands and result normal f32s, so DAZ and FTZ
// change nothing; its sign dropped, as x - x is -0 when the caller rounds down).
template <int kExpBits, int kManBits>
KVP_HD inline float small_to_f32(uint32_t c) {
  constexpr int kBias = (1 << (kExpBits - 1)) - 1;
  constexpr int kShift = 23 - kManBits;
  constexpr uint32_t kExpMask = ((1u << kExpBits) - 1u) << 23;
  const uint32_t sign = ((c >> (kExpBits + kManBits)) & 1u) << 31;
  uint32_t o = (c & ((1u << (kExpBits + kManBits)) - 1u)) << kShift;
  const uint32_t exp = o & kExpMask;
  o += static_cast<uint32_t>(127 - kBias) << 23;
  const uint32_t inf_nan = o + (static_cast<uint32_t>(128 - (kBias + 1)) << 23);
  const uint32_t min_normal = static_cast<uint32_t>(127 + 1 - kBias) << 23;  // 2^(1-bias)
#if defined(__CUDA_ARCH__)
  const float diff = __fsub_rn(f32_from_bits(o + (1u << 23)), f32_from_bits(min_normal));
#else
  const float diff = f32_from_bits(o + (1u << 23)) - f32_from_bits(min_normal);
#endif
  const uint32_t sub = f32_bits(diff) & 0x7FFFFFFFu;  // code 0 gives -0 when the caller rounds down
  o = exp == kExpMask ? inf_nan : o;
  const uint32_t sub_mask = 0u - static_cast<uint32_t>(exp == 0);  // bitwise select (see above)
  o = (sub & sub_mask) | (o & ~sub_mask);
  return f32_from_bits(sign | o);
}

KVP_HD inline float f32_from_f16(uint16_t h) { return small_to_f32<5, 10>(h); }

// e5m2 is the upper byte of an f16.
KVP_HD inline float f32_from_e5m2(uint8_t b) { return small_to_f32<5, 2>(b); }

KVP_HD inline float f32_from_e4m3fn(uint8_t b) {
  // e4m3fn has no infinity: exponent 1111 is a normal binade except the NaN pattern S.1111.111.
  const uint32_t sign = static_cast<uint32_t>(b & 0x80u) << 24;
  uint32_t o = static_cast<uint32_t>(b & 0x7Fu) << 20;
  const uint32_t exp = o & (0xFu << 23);
  o += 120u << 23;
#if defined(__CUDA_ARCH__)
  const float diff = __fsub_rn(f32_from_bits(o + (1u << 23)), f32_from_bits(121u << 23));
#else
  const float diff = f32_from_bits(o + (1u << 23)) - f32_from_bits(121u << 23);
#endif
  const uint32_t sub = f32_bits(diff) & 0x7FFFFFFFu;  // as in small_to_f32
  const uint32_t sub_mask = 0u - static_cast<uint32_t>(exp == 0);  // bitwise select (see above)
  o = (sub & sub_mask) | (o & ~sub_mask);
  o = (b & 0x7Fu) == 0x7Fu ? 0x7FC00000u : o;
  return f32_from_bits(sign | o);
}

// Decoding keyed by kvp_dtype (for f32, `bits` is the f32 bit pattern).
KVP_HD inline float decode_to_f32(uint32_t bits, kvp_dtype dt) {
  switch (dt) {
    case KVP_DTYPE_F16: return f32_from_f16(static_cast<uint16_t>(bits));
    case KVP_DTYPE_BF16: return f32_from_bf16(static_cast<uint16_t>(bits));
    case KVP_DTYPE_F8_E4M3FN: return f32_from_e4m3fn(static_cast<uint8_t>(bits));
    case KVP_DTYPE_F8_E5M2: return f32_from_e5m2(static_cast<uint8_t>(bits));
    default: return f32_from_bits(bits);
  }
}

}  // namespace kvp::detail::fp
