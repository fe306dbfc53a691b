// CPU instruction-set detection for the CPU backend's vectorised paths, chosen once per process.
#pragma once

// x86-64 with GCC or clang: functions can be compiled for AVX2 / AVX-512 next to the baseline
// (KVP_TARGET_AVX2 / KVP_TARGET_AVX512) and picked at run time by cpu_isa().
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define KVP_CPU_DISPATCH 1
#define KVP_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define KVP_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma")))
#define KVP_ALWAYS_INLINE __attribute__((always_inline))
#else
#define KVP_CPU_DISPATCH 0
#define KVP_ALWAYS_INLINE
#endif

namespace kvp::detail {

// x86-64: baseline (SSE2), AVX2 (with FMA), AVX-512 (F/BW/DQ/VL). Other CPUs: baseline.
enum class CpuIsa { baseline = 0, avx2 = 1, avx512 = 2 };

// The best level this CPU has, lowered by the environment variable
// KVP_CPU_ISA=baseline|avx2|avx512 (never raised above what the CPU has). Every level computes
// the same bytes; tests run each one.
CpuIsa cpu_isa() noexcept;
const char* cpu_isa_name(CpuIsa isa) noexcept;

}  // namespace kvp::detail
