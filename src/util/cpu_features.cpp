#include "util/cpu_features.hpp"

#include <cstdlib>
#include <cstring>

#if KVP_CPU_DISPATCH
#include <cpuid.h>
#endif

namespace kvp::detail {

const char* cpu_isa_name(CpuIsa isa) noexcept {
  switch (isa) {
    case CpuIsa::avx512: return "avx512";
    case CpuIsa::avx2: return "avx2";
    default: return "baseline";
  }
}

CpuIsa cpu_isa() noexcept {
  static const CpuIsa isa = [] {
    CpuIsa best = CpuIsa::baseline;
#if KVP_CPU_DISPATCH
    __builtin_cpu_init();
    // F16C: CPUID leaf 1, ECX bit 29 (its VEX encoding needs the same OS support as AVX, which
    // __builtin_cpu_supports("avx2") already checks).
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c) best = CpuIsa::avx2;
    if (best == CpuIsa::avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
      best = CpuIsa::avx512;
#endif
    if (const char* env = std::getenv("KVP_CPU_ISA")) {
      CpuIsa want = best;
      if (std::strcmp(env, "baseline") == 0) want = CpuIsa::baseline;
      else if (std::strcmp(env, "avx2") == 0) want = CpuIsa::avx2;
      else if (std::strcmp(env, "avx512") == 0) want = CpuIsa::avx512;
      if (want < best) best = want;
    }
    return best;
  }();
  return isa;
}

}  // namespace kvp::detail
