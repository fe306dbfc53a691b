// CPU instruction-set detection for the CPU backend's vectorised paths, chosen once per process.
#pragma once

// x86-64 with GCC or clang: functions can be compiled for AVX2 / AVX-512 next to the baseline
// (KVP_TARGET_AVX2 / KVP_TARGET_AVX512) and picked at run time by cpu_isa().
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define KVP_CPU_DISPATCH 1
#define KVP_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define KVP_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma,f16c")))
#define KVP_ALWAYS_INLINE __attribute__((always_inline))
#else
#define KVP_CPU_DISPATCH 0
#define KVP_ALWAYS_INLINE
#endif

namespace kvp::detail {

// x86-64: baseline (SSE2), AVX2 (with FMA and F16C), AVX-512 (F/BW/DQ/VL, plus FMA and F16C).
// Other CPUs: baseline. F16C (vcvtps2ph / vcvtph2ps) ships on every CPU with AVX2 (Intel since
// Ivy Bridge, AMD since Piledriver); it is still checked, and a CPU without it stays at baseline.
// AVX512-BF16 is not used: vcvtneps2bf16 flushes subnormal inputs to zero and truncates NaN
// payloads, so it cannot give fp_convert.hpp's bytes (see cpu_convert.cpp).
enum class CpuIsa { baseline = 0, avx2 = 1, avx512 = 2 };

// The best level this CPU has, lowered by the environment variable
// KVP_CPU_ISA=baseline|avx2|avx512 (never raised above what the CPU has). Every level computes
// the same bytes; tests run each one.
CpuIsa cpu_isa() noexcept;
const char* cpu_isa_name(CpuIsa isa) noexcept;

}  // namespace kvp::detail
