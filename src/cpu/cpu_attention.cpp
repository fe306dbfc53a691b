// CPU kvp_attention (ATTENTION.md §5.8): flash-style online softmax in f32 over the request's
// pages, read in place through the page table.
//
// Work decomposition. The query rows of one request and one KV head are the pairs (token, query
// head of the group), token-major; a tile is up to 16 of them, so the query heads of a GQA group
// share every key and value they load, and prefill tokens are tiled. A work item is a tile and a
// range of key positions; long key ranges of few tiles (decode) are split so that every thread
// has work, and the splits' partial softmax states are merged afterwards. Items run on the
// library's thread pool.
//
// Per block of kBlock key positions: the keys and values are widened to f32 (keys [key][lane],
// values [key][lane]); the logits of the 16 rows are computed vectorised across rows (queries
// transposed once per item: qt[lane][row]); the online softmax runs across rows; then every
// row accumulates exactly the values of its allowed keys (a contiguous range), so a masked key
// is excluded by selection and never multiplied in (ATTENTION.md D-5). The block kernels exist
// for the baseline, AVX2 + FMA and AVX-512 and are picked like the dtype conversions.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "backend/fp_convert.hpp"
#include "cpu/cpu_ops.hpp"
#include "util/cpu_features.hpp"
#include "util/error.hpp"
#include "util/memory.hpp"
#include "util/thread_pool.hpp"

#if KVP_CPU_DISPATCH
#include <immintrin.h>
#endif

namespace kvp::detail {
namespace {

constexpr int kRows = 16;   // query rows of a tile: one vector of 16 floats
constexpr int kBlock = 32;  // key positions per block
constexpr int64_t kMinSplitKeys = 256;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ---- block kernels ------------------------------------------------------------------------------

// Logits of one block: s[k][r] = sum_d qt[d][r] * kb[k][d] for k < nb.
using QkFn = void (*)(const float* qt, const float* kb, int nb, int D, int Dp, float* s);
// Online softmax across the 16 rows over one block, in place: s[k][r] becomes the weight of key k
// for row r (0 where the key is not allowed: j0 + k outside [lo[r], hi[r])); updates m and l and
// returns the rescale factor of each row's earlier state in alpha. cap > 0: soft cap first.
using SoftmaxFn = void (*)(float* s, const float* lo, const float* hi, float j0, int nb, float cap, float* m, float* l,
                           float* alpha);
// acc[r] = acc[r] * alpha[r] + sum over k in [a[r], b[r]) of p[k][r] * vb[k] (D lanes).
using PvFn = void (*)(const float* p, const float* vb, int D, int Dp, const int* a, const int* b, const float* alpha,
                      float* acc);
// Widens n elements of a storage dtype to f32.
using WidenFn = void (*)(const uint8_t* src, float* dst, int64_t n);

struct Kernels {
  QkFn qk;
  SoftmaxFn softmax;
  PvFn pv;
};

// exp(x) for x <= 0 (and moderately positive), scalar form of the vector kernels below: Cody-Waite
// range reduction and a degree-6 polynomial (relative error < 2e-7); x < -87 gives 0.
KVP_ALWAYS_INLINE inline float exp_scalar(float x) {
  if (!(x >= -87.0f)) return x != x ? x : 0.0f;
  const float n = std::nearbyint(x * 1.44269504f);
  const float r = (x - n * 0.693145752f) - n * 1.42860677e-6f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return std::ldexp(p, static_cast<int>(n));
}

KVP_ALWAYS_INLINE inline float cap_scalar(float s, float cap) {
  const float t = exp_scalar(-2.0f * std::fabs(s / cap));
  const float th = (1.0f - t) / (1.0f + t);
  return cap * (s < 0.0f ? -th : th);
}

// Baseline: plain loops across the 16 rows, which the compiler vectorises with SSE2.
void qk_baseline(const float* qt, const float* kb, int nb, int D, int Dp, float* s) {
  for (int k = 0; k < nb; ++k) {
    float acc[kRows] = {};
    const float* key = kb + static_cast<size_t>(k) * Dp;
    for (int d = 0; d < D; ++d)
      for (int r = 0; r < kRows; ++r) acc[r] += qt[d * kRows + r] * key[d];
    for (int r = 0; r < kRows; ++r) s[k * kRows + r] = acc[r];
  }
}

void softmax_baseline(float* s, const float* lo, const float* hi, float j0, int nb, float cap, float* m, float* l,
                      float* alpha) {
  for (int r = 0; r < kRows; ++r) {
    float bmax = kNegInf;
    for (int k = 0; k < nb; ++k) {
      const float j = j0 + static_cast<float>(k);
      float& x = s[k * kRows + r];
      if (cap > 0.0f) x = cap_scalar(x, cap);
      if (j >= lo[r] && j < hi[r]) bmax = std::max(bmax, x);
    }
    const float m_new = std::max(m[r], bmax);
    alpha[r] = m_new == kNegInf ? 1.0f : exp_scalar(m[r] - m_new);
    float sum = 0.0f;
    for (int k = 0; k < nb; ++k) {
      const float j = j0 + static_cast<float>(k);
      float& x = s[k * kRows + r];
      x = (j >= lo[r] && j < hi[r]) ? exp_scalar(x - m_new) : 0.0f;
      sum += x;
    }
    l[r] = l[r] * alpha[r] + sum;
    m[r] = m_new;
  }
}

void pv_baseline(const float* p, const float* vb, int D, int Dp, const int* a, const int* b, const float* alpha,
                 float* acc) {
  for (int r = 0; r < kRows; ++r) {
    float* o = acc + static_cast<size_t>(r) * Dp;
    if (alpha[r] != 1.0f)
      for (int d = 0; d < D; ++d) o[d] *= alpha[r];
    for (int k = a[r]; k < b[r]; ++k) {
      const float w = p[k * kRows + r];
      const float* v = vb + static_cast<size_t>(k) * Dp;
      for (int d = 0; d < D; ++d) o[d] += w * v[d];
    }
  }
}

#if KVP_CPU_DISPATCH
// GCC 12's AVX-512 headers build some intrinsics on _mm512_undefined_*(), which its own
// uninitialized-use analysis then reports; the values are never read.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// ---- AVX-512: one register holds the 16 rows.

KVP_TARGET_AVX512 KVP_ALWAYS_INLINE inline __m512 exp512(__m512 x) {
  const __m512 lim = _mm512_set1_ps(-87.0f);
  const __mmask16 under = _mm512_cmp_ps_mask(x, lim, _CMP_LT_OQ);  // NaN stays NaN below
  x = _mm512_max_ps(x, lim);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mask_mov_ps(_mm512_mul_ps(p, _mm512_castsi512_ps(e)), under, _mm512_setzero_ps());
}

KVP_TARGET_AVX512 void qk_avx512(const float* qt, const float* kb, int nb, int D, int Dp, float* s) {
  int k = 0;
  for (; k + 8 <= nb; k += 8) {
    __m512 a[8];
    for (int u = 0; u < 8; ++u) a[u] = _mm512_setzero_ps();
    const float* key = kb + static_cast<size_t>(k) * Dp;
    for (int d = 0; d < D; ++d) {
      const __m512 q = _mm512_load_ps(qt + d * kRows);
      for (int u = 0; u < 8; ++u) a[u] = _mm512_fmadd_ps(q, _mm512_set1_ps(key[u * Dp + d]), a[u]);
    }
    for (int u = 0; u < 8; ++u) _mm512_store_ps(s + (k + u) * kRows, a[u]);
  }
  for (; k < nb; ++k) {
    __m512 a = _mm512_setzero_ps();
    const float* key = kb + static_cast<size_t>(k) * Dp;
    for (int d = 0; d < D; ++d) a = _mm512_fmadd_ps(_mm512_load_ps(qt + d * kRows), _mm512_set1_ps(key[d]), a);
    _mm512_store_ps(s + k * kRows, a);
  }
}

KVP_TARGET_AVX512 KVP_ALWAYS_INLINE inline __m512 cap512(__m512 x, __m512 cap) {
  const __m512 y = _mm512_div_ps(x, cap);
  const __m512 ay = _mm512_abs_ps(y);
  const __m512 t = exp512(_mm512_mul_ps(ay, _mm512_set1_ps(-2.0f)));
  __m512 th = _mm512_div_ps(_mm512_sub_ps(_mm512_set1_ps(1.0f), t), _mm512_add_ps(_mm512_set1_ps(1.0f), t));
  th = _mm512_mask_sub_ps(th, _mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_LT_OQ), _mm512_setzero_ps(), th);
  return _mm512_mul_ps(cap, th);
}

KVP_TARGET_AVX512 void softmax_avx512(float* s, const float* lo, const float* hi, float j0, int nb, float cap,
                                      float* m, float* l, float* alpha) {
  const __m512 vlo = _mm512_loadu_ps(lo), vhi = _mm512_loadu_ps(hi), vcap = _mm512_set1_ps(cap);
  const __m512 ninf = _mm512_set1_ps(kNegInf);
  __m512 bmax = ninf;
  for (int k = 0; k < nb; ++k) {
    __m512 x = _mm512_load_ps(s + k * kRows);
    if (cap > 0.0f) {
      x = cap512(x, vcap);
      _mm512_store_ps(s + k * kRows, x);
    }
    const __m512 j = _mm512_set1_ps(j0 + static_cast<float>(k));
    const __mmask16 ok = _mm512_cmp_ps_mask(j, vlo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(j, vhi, _CMP_LT_OQ);
    bmax = _mm512_mask_max_ps(bmax, ok, bmax, x);
  }
  const __m512 m_old = _mm512_loadu_ps(m);
  const __m512 m_new = _mm512_max_ps(m_old, bmax);
  const __mmask16 none = _mm512_cmp_ps_mask(m_new, ninf, _CMP_EQ_OQ);
  const __m512 va = _mm512_mask_mov_ps(exp512(_mm512_sub_ps(m_old, m_new)), none, _mm512_set1_ps(1.0f));
  __m512 sum = _mm512_setzero_ps();
  for (int k = 0; k < nb; ++k) {
    const __m512 j = _mm512_set1_ps(j0 + static_cast<float>(k));
    const __mmask16 ok = _mm512_cmp_ps_mask(j, vlo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(j, vhi, _CMP_LT_OQ);
    const __m512 p = _mm512_maskz_mov_ps(ok, exp512(_mm512_sub_ps(_mm512_load_ps(s + k * kRows), m_new)));
    _mm512_store_ps(s + k * kRows, p);
    sum = _mm512_add_ps(sum, p);
  }
  _mm512_storeu_ps(l, _mm512_fmadd_ps(_mm512_loadu_ps(l), va, sum));
  _mm512_storeu_ps(m, m_new);
  _mm512_storeu_ps(alpha, va);
}

KVP_TARGET_AVX512 void pv_avx512(const float* p, const float* vb, int D, int Dp, const int* a, const int* b,
                                 const float* alpha, float* acc) {
  for (int r = 0; r < kRows; ++r) {
    if (a[r] >= b[r] && alpha[r] == 1.0f) continue;
    float* o = acc + static_cast<size_t>(r) * Dp;
    const __m512 sc = _mm512_set1_ps(alpha[r]);
    for (int d = 0; d < D; d += 64) {  // 4 registers of the row at a time (Dp is a multiple of 16)
      const int nv = std::min(4, (Dp - d) / 16);
      __m512 o4[4];
      for (int u = 0; u < nv; ++u) o4[u] = _mm512_mul_ps(_mm512_load_ps(o + d + 16 * u), sc);
      for (int k = a[r]; k < b[r]; ++k) {
        const __m512 w = _mm512_set1_ps(p[k * kRows + r]);
        const float* v = vb + static_cast<size_t>(k) * Dp + d;
        for (int u = 0; u < nv; ++u) o4[u] = _mm512_fmadd_ps(w, _mm512_load_ps(v + 16 * u), o4[u]);
      }
      for (int u = 0; u < nv; ++u) _mm512_store_ps(o + d + 16 * u, o4[u]);
    }
  }
}

// ---- AVX2 + FMA: the 16 rows in two registers.

KVP_TARGET_AVX2 KVP_ALWAYS_INLINE inline __m256 exp256(__m256 x) {
  const __m256 lim = _mm256_set1_ps(-87.0f);
  const __m256 under = _mm256_cmp_ps(x, lim, _CMP_LT_OQ);
  x = _mm256_max_ps(x, lim);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

KVP_TARGET_AVX2 void qk_avx2(const float* qt, const float* kb, int nb, int D, int Dp, float* s) {
  int k = 0;
  for (; k + 4 <= nb; k += 4) {
    __m256 a[8];
    for (int u = 0; u < 8; ++u) a[u] = _mm256_setzero_ps();
    const float* key = kb + static_cast<size_t>(k) * Dp;
    for (int d = 0; d < D; ++d) {
      const __m256 q0 = _mm256_load_ps(qt + d * kRows), q1 = _mm256_load_ps(qt + d * kRows + 8);
      for (int u = 0; u < 4; ++u) {
        const __m256 kv = _mm256_broadcast_ss(key + u * Dp + d);
        a[2 * u] = _mm256_fmadd_ps(q0, kv, a[2 * u]);
        a[2 * u + 1] = _mm256_fmadd_ps(q1, kv, a[2 * u + 1]);
      }
    }
    for (int u = 0; u < 4; ++u) {
      _mm256_store_ps(s + (k + u) * kRows, a[2 * u]);
      _mm256_store_ps(s + (k + u) * kRows + 8, a[2 * u + 1]);
    }
  }
  for (; k < nb; ++k) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    const float* key = kb + static_cast<size_t>(k) * Dp;
    for (int d = 0; d < D; ++d) {
      const __m256 kv = _mm256_broadcast_ss(key + d);
      a0 = _mm256_fmadd_ps(_mm256_load_ps(qt + d * kRows), kv, a0);
      a1 = _mm256_fmadd_ps(_mm256_load_ps(qt + d * kRows + 8), kv, a1);
    }
    _mm256_store_ps(s + k * kRows, a0);
    _mm256_store_ps(s + k * kRows + 8, a1);
  }
}

KVP_TARGET_AVX2 KVP_ALWAYS_INLINE inline __m256 cap256(__m256 x, __m256 cap) {
  const __m256 y = _mm256_div_ps(x, cap);
  const __m256 sign = _mm256_and_ps(y, _mm256_set1_ps(-0.0f));
  const __m256 ay = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), y);
  const __m256 t = exp256(_mm256_mul_ps(ay, _mm256_set1_ps(-2.0f)));
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 th = _mm256_div_ps(_mm256_sub_ps(one, t), _mm256_add_ps(one, t));
  return _mm256_mul_ps(cap, _mm256_or_ps(th, sign));
}

KVP_TARGET_AVX2 void softmax_avx2(float* s, const float* lo, const float* hi, float j0, int nb, float cap, float* m,
                                  float* l, float* alpha) {
  const __m256 ninf = _mm256_set1_ps(kNegInf), vcap = _mm256_set1_ps(cap), one = _mm256_set1_ps(1.0f);
  for (int h = 0; h < 2; ++h) {  // rows 0-7, then 8-15
    const int o = 8 * h;
    const __m256 vlo = _mm256_loadu_ps(lo + o), vhi = _mm256_loadu_ps(hi + o);
    __m256 bmax = ninf;
    for (int k = 0; k < nb; ++k) {
      __m256 x = _mm256_load_ps(s + k * kRows + o);
      if (cap > 0.0f) {
        x = cap256(x, vcap);
        _mm256_store_ps(s + k * kRows + o, x);
      }
      const __m256 j = _mm256_set1_ps(j0 + static_cast<float>(k));
      const __m256 ok = _mm256_and_ps(_mm256_cmp_ps(j, vlo, _CMP_GE_OQ), _mm256_cmp_ps(j, vhi, _CMP_LT_OQ));
      bmax = _mm256_blendv_ps(bmax, _mm256_max_ps(bmax, x), ok);
    }
    const __m256 m_old = _mm256_loadu_ps(m + o);
    const __m256 m_new = _mm256_max_ps(m_old, bmax);
    const __m256 none = _mm256_cmp_ps(m_new, ninf, _CMP_EQ_OQ);
    const __m256 va = _mm256_blendv_ps(exp256(_mm256_sub_ps(m_old, m_new)), one, none);
    __m256 sum = _mm256_setzero_ps();
    for (int k = 0; k < nb; ++k) {
      const __m256 j = _mm256_set1_ps(j0 + static_cast<float>(k));
      const __m256 ok = _mm256_and_ps(_mm256_cmp_ps(j, vlo, _CMP_GE_OQ), _mm256_cmp_ps(j, vhi, _CMP_LT_OQ));
      const __m256 p = _mm256_and_ps(ok, exp256(_mm256_sub_ps(_mm256_load_ps(s + k * kRows + o), m_new)));
      _mm256_store_ps(s + k * kRows + o, p);
      sum = _mm256_add_ps(sum, p);
    }
    _mm256_storeu_ps(l + o, _mm256_fmadd_ps(_mm256_loadu_ps(l + o), va, sum));
    _mm256_storeu_ps(m + o, m_new);
    _mm256_storeu_ps(alpha + o, va);
  }
}

KVP_TARGET_AVX2 void pv_avx2(const float* p, const float* vb, int D, int Dp, const int* a, const int* b,
                             const float* alpha, float* acc) {
  for (int r = 0; r < kRows; ++r) {
    if (a[r] >= b[r] && alpha[r] == 1.0f) continue;
    float* o = acc + static_cast<size_t>(r) * Dp;
    const __m256 sc = _mm256_set1_ps(alpha[r]);
    for (int d = 0; d < D; d += 64) {  // 8 registers of the row at a time (Dp is a multiple of 16)
      const int nv = std::min(8, (Dp - d) / 8);
      __m256 o8[8];
      for (int u = 0; u < nv; ++u) o8[u] = _mm256_mul_ps(_mm256_load_ps(o + d + 8 * u), sc);
      for (int k = a[r]; k < b[r]; ++k) {
        const __m256 w = _mm256_set1_ps(p[k * kRows + r]);
        const float* v = vb + static_cast<size_t>(k) * Dp + d;
        for (int u = 0; u < nv; ++u) o8[u] = _mm256_fmadd_ps(w, _mm256_load_ps(v + 8 * u), o8[u]);
      }
      for (int u = 0; u < nv; ++u) _mm256_store_ps(o + d + 8 * u, o8[u]);
    }
  }
}
#pragma GCC diagnostic pop
#endif  // KVP_CPU_DISPATCH

// ---- widening the pages to f32 (the conversions of backend/fp_convert.hpp, vectorised per ISA)

template <kvp_dtype SD>
KVP_ALWAYS_INLINE inline void widen_body(const uint8_t* src, float* dst, int64_t n) {
  if constexpr (SD == KVP_DTYPE_F32) {
    std::memcpy(dst, src, static_cast<size_t>(n) * 4);
  } else if constexpr (SD == KVP_DTYPE_F16 || SD == KVP_DTYPE_BF16) {
    for (int64_t i = 0; i < n; ++i) {
      uint16_t c;
      std::memcpy(&c, src + 2 * i, 2);
      dst[i] = SD == KVP_DTYPE_F16 ? fp::f32_from_f16(c) : fp::f32_from_bf16(c);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = SD == KVP_DTYPE_F8_E4M3FN ? fp::f32_from_e4m3fn(src[i]) : fp::f32_from_e5m2(src[i]);
  }
}

template <kvp_dtype SD>
void widen_baseline(const uint8_t* src, float* dst, int64_t n) {
  widen_body<SD>(src, dst, n);
}
#if KVP_CPU_DISPATCH
template <kvp_dtype SD>
KVP_TARGET_AVX2 void widen_avx2(const uint8_t* src, float* dst, int64_t n) {
  widen_body<SD>(src, dst, n);
}
template <kvp_dtype SD>
KVP_TARGET_AVX512 void widen_avx512(const uint8_t* src, float* dst, int64_t n) {
  widen_body<SD>(src, dst, n);
}
#endif

template <kvp_dtype SD>
WidenFn widen_for(CpuIsa isa) {
#if KVP_CPU_DISPATCH
  if (isa == CpuIsa::avx512) return widen_avx512<SD>;
  if (isa == CpuIsa::avx2) return widen_avx2<SD>;
#endif
  (void)isa;
  return widen_baseline<SD>;
}

WidenFn widen_of(kvp_dtype d, CpuIsa isa) {
  switch (d) {
    case KVP_DTYPE_F32: return widen_for<KVP_DTYPE_F32>(isa);
    case KVP_DTYPE_F16: return widen_for<KVP_DTYPE_F16>(isa);
    case KVP_DTYPE_BF16: return widen_for<KVP_DTYPE_BF16>(isa);
    case KVP_DTYPE_F8_E4M3FN: return widen_for<KVP_DTYPE_F8_E4M3FN>(isa);
    default: return widen_for<KVP_DTYPE_F8_E5M2>(isa);
  }
}

Kernels kernels_of(CpuIsa isa) {
#if KVP_CPU_DISPATCH
  if (isa == CpuIsa::avx512) return {qk_avx512, softmax_avx512, pv_avx512};
  if (isa == CpuIsa::avx2) return {qk_avx2, softmax_avx2, pv_avx2};
#endif
  (void)isa;
  return {qk_baseline, softmax_baseline, pv_baseline};
}

// ---- scalar element access

float load_f32(const uint8_t* base, kvp_dtype dt) {
  uint32_t bits = 0;
  std::memcpy(&bits, base, dt == KVP_DTYPE_F32 ? 4 : 2);
  return fp::decode_to_f32(bits, dt);
}

void store_f32(uint8_t* base, kvp_dtype dt, float v) {
  if (dt == KVP_DTYPE_F32) {
    std::memcpy(base, &v, 4);
    return;
  }
  const uint16_t h = dt == KVP_DTYPE_F16 ? fp::f16_from_f32(v) : fp::bf16_from_f32(v);
  std::memcpy(base, &h, 2);
}

// ---- the job -----------------------------------------------------------------------------------

// One tile and key range. part >= 0: the partial state goes to slot `part` of the split buffer.
struct Item {
  int64_t req;     // request row
  int32_t g;       // KV head
  int32_t f0, nf;  // flattened query rows [f0, f0 + nf) of the request, nf <= kRows
  int64_t k0, k1;  // key positions
  int64_t part;    // -1: final
};

// A merge of the `splits` partial states at [part, part + splits) into the output of a tile.
struct Merge {
  int64_t item;  // the first of the tile's items (for its rows)
  int64_t part, splits;
};

struct Plan {
  const AttentionJob& job;
  Kernels kern;
  WidenFn widen;
  int64_t rep, D, Dp;
  int64_t slot_elems, isz;  // elements per token slot, bytes per element of the pages
  HostVector<Item> items;
  HostVector<Merge> merges;
  // Split partials: per part, m[16], l[16], acc[16][Dp].
  HostVector<float> partials;
  // Per-worker scratch, claimed through `busy` (at most 256 workers).
  HostVector<float> scratch;
  int64_t scratch_floats = 0;
  std::atomic<bool> busy[256];
  explicit Plan(const AttentionJob& j, const HostAllocator& a)
      : job(j), items(a), merges(a), partials(a), scratch(a) {
    for (auto& b : busy) b.store(false, std::memory_order_relaxed);
  }
};

int64_t qs_of(const AttentionJob& j, int64_t i) { return j.md.query_start_loc[i]; }
int64_t qlen_of(const AttentionJob& j, int64_t i) { return j.md.query_start_loc[i + 1] - j.md.query_start_loc[i]; }

// The position p of flattened row f of request i, and its allowed key range [lo, hi).
void row_range(const AttentionJob& j, int64_t i, int64_t f, int64_t rep, int64_t& p, int64_t& lo, int64_t& hi) {
  p = j.md.context_lens[i] - qlen_of(j, i) + f / rep;
  hi = p + 1;
  lo = j.window > 0 ? std::max<int64_t>(0, p - j.window + 1) : 0;
}

// Tiles and splits of every processed row.
void plan_items(Plan& pl, int threads) {
  const AttentionJob& j = pl.job;
  const int64_t Hkv = j.layout.num_kv_heads;
  int64_t total_keys = 0;
  for (int pass = 0; pass < 2; ++pass) {
    const int64_t target = 4 * static_cast<int64_t>(threads);
    for (int64_t i = 0; i < j.num_rows; ++i) {
      const int64_t rows = qlen_of(j, i) * pl.rep;
      for (int64_t f0 = 0; f0 < rows; f0 += kRows) {
        const int64_t nf = std::min<int64_t>(kRows, rows - f0);
        int64_t p, lo0, hi0, lo1, hi1;
        row_range(j, i, f0, pl.rep, p, lo0, hi0);
        row_range(j, i, f0 + nf - 1, pl.rep, p, lo1, hi1);
        const int64_t k0 = lo0, k1 = hi1, keys = k1 - k0;
        if (pass == 0) {
          total_keys += keys * Hkv;
          continue;
        }
        // Split long key ranges when the tiles alone would leave threads idle.
        int64_t splits = 1;
        if (threads > 1 && total_keys > 0) {
          const int64_t share = (target * keys * Hkv + total_keys - 1) / total_keys;
          splits = std::max<int64_t>(1, std::min<int64_t>(share, keys / kMinSplitKeys));
        }
        for (int64_t g = 0; g < Hkv; ++g) {
          const int64_t first = static_cast<int64_t>(pl.items.size());
          const int64_t part = splits > 1 ? static_cast<int64_t>(pl.partials.size()) / (kRows * (pl.Dp + 2)) : -1;
          for (int64_t s = 0; s < splits; ++s) {
            const int64_t a = k0 + keys * s / splits, b = k0 + keys * (s + 1) / splits;
            pl.items.push_back(Item{i, static_cast<int32_t>(g), static_cast<int32_t>(f0), static_cast<int32_t>(nf), a, b,
                                    splits > 1 ? part + s : -1});
          }
          if (splits > 1) {
            pl.merges.push_back(Merge{first, part, splits});
            pl.partials.resize(pl.partials.size() + static_cast<size_t>(splits * kRows * (pl.Dp + 2)), 0.0f);
          }
        }
      }
    }
  }
}

// The token row and query head of flattened row f of item `it`.
void row_of(const Plan& pl, const Item& it, int64_t f, int64_t& token, int64_t& head) {
  token = qs_of(pl.job, it.req) + f / pl.rep;
  head = it.g * pl.rep + f % pl.rep;
}

// Writes the normalised rows of a tile: out = v_scale * acc / l, with the head's sink.
void finish_rows(const Plan& pl, const Item& it, const float* m, const float* l, const float* acc) {
  const AttentionJob& j = pl.job;
  for (int r = 0; r < it.nf; ++r) {
    int64_t token, head;
    row_of(pl, it, it.f0 + r, token, head);
    float mr = m[r], lr = l[r], scale = 1.0f;
    if (j.sinks != nullptr && j.sinks[head] != kNegInf) {
      const float sink = j.sinks[head];
      const float mm = std::max(mr, sink);
      scale = exp_scalar(mr - mm);
      lr = lr * scale + exp_scalar(sink - mm);
    }
    const float f = j.v_scale * scale / lr;
    uint8_t* o = static_cast<uint8_t*>(const_cast<void*>(j.out.data)) +
                 (token * j.out.stride_t + head * j.out.stride_h) * j.out.itemsize;
    const float* a = acc + static_cast<size_t>(r) * pl.Dp;
    for (int64_t d = 0; d < pl.D; ++d) store_f32(o + d * j.out.stride_d * j.out.itemsize, j.out.dtype, a[d] * f);
  }
}

// One work item, with `buf` as its scratch (Plan::scratch_floats floats).
void run_item(const Plan& pl, const Item& it, float* buf) {
  const AttentionJob& j = pl.job;
  const int64_t D = pl.D, Dp = pl.Dp, S = j.layout.page_size, W = j.md.pages_per_req;
  float* qt = buf;                    // [Dp][16]
  float* kb = qt + Dp * kRows;        // [kBlock][Dp]
  float* vb = kb + kBlock * Dp;       // [kBlock][Dp]
  float* s = vb + kBlock * Dp;        // [kBlock][16]
  float* acc = s + kBlock * kRows;    // [16][Dp]
  alignas(64) float m[kRows], l[kRows], alpha[kRows], lo[kRows], hi[kRows];
  int ia[kRows], ib[kRows];
  // Everything zero: padding lanes [D, Dp) of queries, keys and values stay zero.
  std::memset(buf, 0, sizeof(float) * static_cast<size_t>(pl.scratch_floats));
  for (int r = 0; r < kRows; ++r) {
    m[r] = kNegInf;
    l[r] = 0.0f;
    lo[r] = 0.0f;
    hi[r] = -1.0f;  // padding rows: nothing allowed
  }
  for (int r = 0; r < it.nf; ++r) {
    int64_t token, head, p, rlo, rhi;
    row_of(pl, it, it.f0 + r, token, head);
    row_range(j, it.req, it.f0 + r, pl.rep, p, rlo, rhi);
    lo[r] = static_cast<float>(std::max(rlo, it.k0));
    hi[r] = static_cast<float>(std::min(rhi, it.k1));
    const uint8_t* q = static_cast<const uint8_t*>(j.q.data) + (token * j.q.stride_t + head * j.q.stride_h) * j.q.itemsize;
    for (int64_t d = 0; d < D; ++d)
      qt[d * kRows + r] = load_f32(q + d * j.q.stride_d * j.q.itemsize, j.q.dtype) * j.logit_scale;
  }
  const int32_t* table = j.md.pages_tables + it.req * W;
  const bool h64 = j.layout.h64;
  const int64_t k_off = (h64 ? it.g : 2 * it.g) * j.layout.storage_head_dim;
  const int64_t v_off = h64 ? k_off + 64 : k_off + j.layout.storage_head_dim;
  for (int64_t j0 = it.k0; j0 < it.k1; j0 += kBlock) {
    const int nb = static_cast<int>(std::min<int64_t>(kBlock, it.k1 - j0));
    for (int k = 0; k < nb; ++k) {
      const int64_t pos = j0 + k;
      const int64_t slot = static_cast<int64_t>(table[pos / S]) * S + pos % S;
      const uint8_t* row = j.pages + slot * pl.slot_elems * pl.isz;
      pl.widen(row + k_off * pl.isz, kb + k * Dp, D);
      pl.widen(row + v_off * pl.isz, vb + k * Dp, D);
    }
    pl.kern.qk(qt, kb, nb, static_cast<int>(D), static_cast<int>(Dp), s);
    pl.kern.softmax(s, lo, hi, static_cast<float>(j0), nb, j.soft_cap, m, l, alpha);
    for (int r = 0; r < kRows; ++r) {
      ia[r] = static_cast<int>(std::clamp<int64_t>(static_cast<int64_t>(lo[r]) - j0, 0, nb));
      ib[r] = static_cast<int>(std::clamp<int64_t>(static_cast<int64_t>(hi[r]) - j0, 0, nb));
      if (ib[r] < ia[r]) ib[r] = ia[r];
    }
    pl.kern.pv(s, vb, static_cast<int>(D), static_cast<int>(Dp), ia, ib, alpha, acc);
  }
  if (it.part < 0) {
    finish_rows(pl, it, m, l, acc);
    return;
  }
  float* part = const_cast<float*>(pl.partials.data()) + it.part * kRows * (Dp + 2);
  std::memcpy(part, m, sizeof m);
  std::memcpy(part + kRows, l, sizeof l);
  std::memcpy(part + 2 * kRows, acc, sizeof(float) * static_cast<size_t>(kRows * Dp));
}

// Combines the partial states of a split tile (into the first one's) and writes its rows.
void run_merge(const Plan& pl, const Merge& mg) {
  const int64_t Dp = pl.Dp, stride = kRows * (Dp + 2);
  const Item& it = pl.items[static_cast<size_t>(mg.item)];
  float* first = const_cast<float*>(pl.partials.data()) + mg.part * stride;
  float* acc = first + 2 * kRows;
  for (int r = 0; r < it.nf; ++r) {
    float m = kNegInf;
    for (int64_t s = 0; s < mg.splits; ++s) m = std::max(m, first[s * stride + r]);
    float l = 0.0f;
    for (int64_t s = 0; s < mg.splits; ++s) {
      const float* part = first + s * stride;
      const float* a = part + 2 * kRows + r * Dp;
      // A split with no allowed key for the row contributes nothing (its m is -inf).
      const float w = part[r] == kNegInf ? 0.0f : exp_scalar(part[r] - m);
      l += part[kRows + r] * w;
      for (int64_t d = 0; d < pl.D; ++d) acc[r * Dp + d] = (s == 0 ? 0.0f : acc[r * Dp + d]) + (w == 0.0f ? 0.0f : a[d] * w);
    }
    first[r] = m;
    first[kRows + r] = l;
  }
  finish_rows(pl, it, first, first + kRows, acc);
}

// Rows of `out` that no processed request owns: zeros.
void zero_unowned(const AttentionJob& j) {
  const int64_t owned0 = j.num_rows > 0 ? j.md.query_start_loc[0] : 0;
  const int64_t owned1 = j.num_rows > 0 ? j.md.query_start_loc[j.num_rows] : 0;
  for (int64_t t = 0; t < j.num_tokens; ++t) {
    if (t >= owned0 && t < owned1) continue;
    for (int64_t h = 0; h < j.num_q_heads; ++h) {
      uint8_t* o = static_cast<uint8_t*>(const_cast<void*>(j.out.data)) +
                   (t * j.out.stride_t + h * j.out.stride_h) * j.out.itemsize;
      for (int64_t d = 0; d < j.layout.head_dim; ++d) store_f32(o + d * j.out.stride_d * j.out.itemsize, j.out.dtype, 0.0f);
    }
  }
}

// Claims one of the `workers` scratch slots for the calling thread (no more run at once).
float* claim_scratch(Plan& pl, int workers, int& slot) {
  // 64-byte aligned slots: scratch_floats is a multiple of 16.
  const auto base = reinterpret_cast<uintptr_t>(pl.scratch.data());
  float* aligned = reinterpret_cast<float*>((base + 63) & ~uintptr_t{63});
  for (;;)
    for (slot = 0; slot < workers; ++slot) {
      bool expected = false;
      if (pl.busy[slot].compare_exchange_strong(expected, true, std::memory_order_acquire))
        return aligned + static_cast<size_t>(slot) * static_cast<size_t>(pl.scratch_floats);
    }
}

}  // namespace

void cpu_attention(const AttentionJob& job, const ConcatJob* write, const HostAllocator& alloc) {
  if (!job.host_validated) fail(KVP_ERR_INTERNAL, "kvp_attention: the CPU path needs host-validated metadata");
  const CpuIsa isa = cpu_isa();
  Plan pl(job, alloc);
  pl.kern = kernels_of(isa);
  pl.widen = widen_of(job.layout.dtype, isa);
  pl.rep = job.num_q_heads / job.layout.num_kv_heads;
  pl.D = job.layout.head_dim;
  pl.Dp = (pl.D + 15) / 16 * 16;
  pl.slot_elems = job.layout.token_elems;
  pl.isz = job.layout.itemsize;
  const int threads = std::min(256, ThreadPool::instance().max_threads());
  plan_items(pl, threads);
  // Per worker: qt, kb, vb, s, acc (64-byte aligned rows: Dp is a multiple of 16 floats).
  pl.scratch_floats = pl.Dp * kRows + 2 * kBlock * pl.Dp + kBlock * kRows + kRows * pl.Dp;
  const int workers = static_cast<int>(std::min<int64_t>(threads, static_cast<int64_t>(pl.items.size())));
  pl.scratch.resize(static_cast<size_t>(pl.scratch_floats * workers + 16));
  // Every allocation is done: from here on nothing fails.
  if (write != nullptr) cpu_concatenate(*write, alloc);
  zero_unowned(job);
  if (pl.items.empty()) return;
  parallel_for(static_cast<int64_t>(pl.items.size()), workers, [&pl, workers](int64_t n) {
    int slot = 0;
    float* buf = claim_scratch(pl, workers, slot);
    run_item(pl, pl.items[static_cast<size_t>(n)], buf);
    pl.busy[slot].store(false, std::memory_order_release);
  });
  parallel_for(static_cast<int64_t>(pl.merges.size()), workers,
               [&pl](int64_t n) { run_merge(pl, pl.merges[static_cast<size_t>(n)]); });
}

}  // namespace kvp::detail
