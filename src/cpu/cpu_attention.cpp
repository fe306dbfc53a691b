// CPU kvp_attention (ATTENTION.md §5.8): flash-style online softmax in f32 over the request's
// pages, read in place through the page table.
//
// Work decomposition. The query rows of one request and one KV head are the pairs (token, query
// head of the group), token-major; a tile is up to 16 of them, so the query heads of a GQA group
// share every key and value they load, and prefill tokens are tiled. A work item is a tile and a
// range of key positions, for one KV head or, when a request's rows fit one tile (decode), for
// several adjacent heads, whose keys and values lie side by side in each slot. Long key ranges
// of few tiles are split so that every thread has work, and the splits' partial softmax states
// are merged afterwards. Items run on the library's thread pool.
//
// Per block of kBlock key positions and per head: the keys and values are widened to f32 (keys
// [key][lane], values [key][lane]; the widening is vectorised per instruction set); the logits of
// the tile's rows are computed vectorised across 16 rows (prefill: queries transposed once per
// item, qt[lane][row]) or, for tiles of at most kFewRows rows, along the lanes with a transposing
// reduction (decode: qr[row][lane]); the online softmax runs across rows; then every row
// accumulates exactly the values of its allowed keys (a contiguous range), so a masked key is
// excluded by selection and never multiplied in (ATTENTION.md D-5). The kernels exist for the
// baseline, AVX2 + FMA and AVX-512 and are picked like the dtype conversions.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>

#include "backend/fp_convert.hpp"
#include "cpu/convert_kernels.hpp"
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
constexpr int kFewRows = 8; // tiles of at most this many rows take the lane-wise logits (qk_few)
constexpr int kMaxItemHeads = 16;  // KV heads of one item at most
constexpr int64_t kMinSplitKeys = 256;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ---- block kernels ------------------------------------------------------------------------------

// Logits of one block: s[k][r] = sum_d qt[d][r] * kb[k][d] for k < nb, vectorised across the 16
// rows (prefill tiles).
using QkFn = void (*)(const float* qt, const float* kb, int nb, int D, int Dp, float* s);
// The same for the first nr rows only, from row-major queries qr[r][Dp], vectorised along the
// lanes (tiles of few rows: a decode token's GQA heads). Key rows past nb, up to nb rounded up to
// the vector width, are read and their results discarded.
using QkFewFn = void (*)(const float* qr, const float* kb, int nb, int nr, int Dp, float* s);
// Online softmax across the 16 rows over one block, in place: s[k][r] becomes the weight of key k
// for row r (0 where the key is not allowed: j0 + k outside [lo[r], hi[r])); updates m and l and
// returns the rescale factor of each row's earlier state in alpha. cap > 0: soft cap first.
using SoftmaxFn = void (*)(float* s, const float* lo, const float* hi, float j0, int nb, float cap, float* m, float* l,
                           float* alpha);
// acc[r] = acc[r] * alpha[r] + sum over k in [a[r], b[r]) of p[k][r] * vb[k] (Dp lanes; the padding
// lanes of vb and acc are zero).
using PvFn = void (*)(const float* p, const float* vb, int Dp, const int* a, const int* b, const float* alpha,
                      float* acc);
// Widens the keys and values of n slots from a storage dtype to f32: D elements at rows[k] into
// kb[k][Dp] and D elements at rows[k] + v_bytes into vb[k][Dp].
using WidenFn = void (*)(const uint8_t* const* rows, int n, int64_t v_bytes, int64_t D, int64_t Dp, float* kb,
                         float* vb);

struct Kernels {
  QkFn qk;
  QkFewFn qk_few;
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

void qk_few_baseline(const float* qr, const float* kb, int nb, int nr, int Dp, float* s) {
  for (int k = 0; k < nb; ++k)
    for (int r = 0; r < nr; ++r) {
      float acc = 0.0f;
      for (int d = 0; d < Dp; ++d) acc += qr[r * Dp + d] * kb[static_cast<size_t>(k) * Dp + d];
      s[k * kRows + r] = acc;
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

void pv_baseline(const float* p, const float* vb, int Dp, const int* a, const int* b, const float* alpha, float* acc) {
  for (int r = 0; r < kRows; ++r) {
    float* o = acc + static_cast<size_t>(r) * Dp;
    if (alpha[r] != 1.0f)
      for (int d = 0; d < Dp; ++d) o[d] *= alpha[r];
    for (int k = a[r]; k < b[r]; ++k) {
      const float w = p[k * kRows + r];
      const float* v = vb + static_cast<size_t>(k) * Dp;
      for (int d = 0; d < Dp; ++d) o[d] += w * v[d];
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

// Sums of two vectors' 128-bit quarters: [x0+x2, x1+x3, y0+y2, y1+y3].
KVP_TARGET_AVX512 KVP_ALWAYS_INLINE inline __m512 half_sums512(__m512 x, __m512 y) {
  return _mm512_add_ps(_mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(1, 0, 1, 0)),
                       _mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(3, 2, 3, 2)));
}

// Element u of the result is the sum of the 16 elements of a[u].
KVP_TARGET_AVX512 KVP_ALWAYS_INLINE inline __m512 sums16_avx512(const __m512* a) {
  __m512 c[4];
  for (int i = 0; i < 4; ++i) {
    // 128-bit quarter L of c[i] holds 4 partial sums of a[4L + i].
    const __m512 x = half_sums512(a[i], a[i + 4]), y = half_sums512(a[i + 8], a[i + 12]);
    c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(3, 1, 3, 1)));
  }
  const __m512 u01 = _mm512_add_ps(_mm512_unpacklo_ps(c[0], c[1]), _mm512_unpackhi_ps(c[0], c[1]));
  const __m512 u23 = _mm512_add_ps(_mm512_unpacklo_ps(c[2], c[3]), _mm512_unpackhi_ps(c[2], c[3]));
  return _mm512_add_ps(_mm512_shuffle_ps(u01, u23, _MM_SHUFFLE(1, 0, 1, 0)),
                       _mm512_shuffle_ps(u01, u23, _MM_SHUFFLE(3, 2, 3, 2)));
}

KVP_TARGET_AVX512 void qk_few_avx512(const float* qr, const float* kb, int nb, int nr, int Dp, float* s) {
  const __m512i column = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32(kRows));
  for (int k0 = 0; k0 < nb; k0 += 16) {
    const __mmask16 keys = static_cast<__mmask16>(nb - k0 >= 16 ? 0xFFFF : (1u << (nb - k0)) - 1u);
    const float* key = kb + static_cast<size_t>(k0) * Dp;
    for (int r = 0; r < nr; ++r) {
      __m512 a[16];
      for (int u = 0; u < 16; ++u) a[u] = _mm512_setzero_ps();
      for (int d = 0; d < Dp; d += 16) {
        const __m512 q = _mm512_load_ps(qr + r * Dp + d);
        for (int u = 0; u < 16; ++u) a[u] = _mm512_fmadd_ps(q, _mm512_load_ps(key + u * Dp + d), a[u]);
      }
      _mm512_mask_i32scatter_ps(s + k0 * kRows + r, keys, column, sums16_avx512(a), 4);
    }
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

KVP_TARGET_AVX512 void pv_avx512(const float* p, const float* vb, int Dp, const int* a, const int* b,
                                 const float* alpha, float* acc) {
  for (int r = 0; r < kRows; ++r) {
    if (a[r] >= b[r] && alpha[r] == 1.0f) continue;
    float* o = acc + static_cast<size_t>(r) * Dp;
    const __m512 sc = _mm512_set1_ps(alpha[r]);
    int d = 0;
    for (; d + 64 <= Dp; d += 64) {  // 4 registers of the row at a time
      __m512 o0 = _mm512_mul_ps(_mm512_load_ps(o + d), sc), o1 = _mm512_mul_ps(_mm512_load_ps(o + d + 16), sc);
      __m512 o2 = _mm512_mul_ps(_mm512_load_ps(o + d + 32), sc), o3 = _mm512_mul_ps(_mm512_load_ps(o + d + 48), sc);
      for (int k = a[r]; k < b[r]; ++k) {
        const __m512 w = _mm512_set1_ps(p[k * kRows + r]);
        const float* v = vb + static_cast<size_t>(k) * Dp + d;
        o0 = _mm512_fmadd_ps(w, _mm512_load_ps(v), o0);
        o1 = _mm512_fmadd_ps(w, _mm512_load_ps(v + 16), o1);
        o2 = _mm512_fmadd_ps(w, _mm512_load_ps(v + 32), o2);
        o3 = _mm512_fmadd_ps(w, _mm512_load_ps(v + 48), o3);
      }
      _mm512_store_ps(o + d, o0);
      _mm512_store_ps(o + d + 16, o1);
      _mm512_store_ps(o + d + 32, o2);
      _mm512_store_ps(o + d + 48, o3);
    }
    for (; d < Dp; d += 16) {  // Dp is a multiple of 16
      __m512 o0 = _mm512_mul_ps(_mm512_load_ps(o + d), sc);
      for (int k = a[r]; k < b[r]; ++k)
        o0 = _mm512_fmadd_ps(_mm512_set1_ps(p[k * kRows + r]), _mm512_load_ps(vb + static_cast<size_t>(k) * Dp + d), o0);
      _mm512_store_ps(o + d, o0);
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

// Element u of the result is the sum of the 8 elements of a[u].
KVP_TARGET_AVX2 KVP_ALWAYS_INLINE inline __m256 sums8_avx2(const __m256* a) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

KVP_TARGET_AVX2 void qk_few_avx2(const float* qr, const float* kb, int nb, int nr, int Dp, float* s) {
  for (int k0 = 0; k0 < nb; k0 += 8) {
    const int nk = std::min(8, nb - k0);
    const float* key = kb + static_cast<size_t>(k0) * Dp;
    for (int r = 0; r < nr; ++r) {
      __m256 a[8];
      for (int u = 0; u < 8; ++u) a[u] = _mm256_setzero_ps();
      for (int d = 0; d < Dp; d += 8) {
        const __m256 q = _mm256_load_ps(qr + r * Dp + d);
        for (int u = 0; u < 8; ++u) a[u] = _mm256_fmadd_ps(q, _mm256_load_ps(key + u * Dp + d), a[u]);
      }
      alignas(32) float sum[8];
      _mm256_store_ps(sum, sums8_avx2(a));
      for (int u = 0; u < nk; ++u) s[(k0 + u) * kRows + r] = sum[u];
    }
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

KVP_TARGET_AVX2 void pv_avx2(const float* p, const float* vb, int Dp, const int* a, const int* b,
                             const float* alpha, float* acc) {
  for (int r = 0; r < kRows; ++r) {
    if (a[r] >= b[r] && alpha[r] == 1.0f) continue;
    float* o = acc + static_cast<size_t>(r) * Dp;
    const __m256 sc = _mm256_set1_ps(alpha[r]);
    int d = 0;
    for (; d + 32 <= Dp; d += 32) {  // 4 registers of the row at a time
      __m256 o0 = _mm256_mul_ps(_mm256_load_ps(o + d), sc), o1 = _mm256_mul_ps(_mm256_load_ps(o + d + 8), sc);
      __m256 o2 = _mm256_mul_ps(_mm256_load_ps(o + d + 16), sc), o3 = _mm256_mul_ps(_mm256_load_ps(o + d + 24), sc);
      for (int k = a[r]; k < b[r]; ++k) {
        const __m256 w = _mm256_set1_ps(p[k * kRows + r]);
        const float* v = vb + static_cast<size_t>(k) * Dp + d;
        o0 = _mm256_fmadd_ps(w, _mm256_load_ps(v), o0);
        o1 = _mm256_fmadd_ps(w, _mm256_load_ps(v + 8), o1);
        o2 = _mm256_fmadd_ps(w, _mm256_load_ps(v + 16), o2);
        o3 = _mm256_fmadd_ps(w, _mm256_load_ps(v + 24), o3);
      }
      _mm256_store_ps(o + d, o0);
      _mm256_store_ps(o + d + 8, o1);
      _mm256_store_ps(o + d + 16, o2);
      _mm256_store_ps(o + d + 24, o3);
    }
    for (; d < Dp; d += 8) {  // Dp is a multiple of 16
      __m256 o0 = _mm256_mul_ps(_mm256_load_ps(o + d), sc);
      for (int k = a[r]; k < b[r]; ++k)
        o0 = _mm256_fmadd_ps(_mm256_set1_ps(p[k * kRows + r]), _mm256_load_ps(vb + static_cast<size_t>(k) * Dp + d), o0);
      _mm256_store_ps(o + d, o0);
    }
  }
}
#endif  // KVP_CPU_DISPATCH

template <kvp_dtype SD>
constexpr int fp_size() {
  return SD == KVP_DTYPE_F32 ? 4 : SD == KVP_DTYPE_F16 || SD == KVP_DTYPE_BF16 ? 2 : 1;
}

// ---- widening the pages to f32 (bit-exact with backend/fp_convert.hpp): the vector forms are
// cpu/convert_kernels.hpp's lane conversions, which kvp_convert uses too.

template <kvp_dtype SD>
KVP_ALWAYS_INLINE inline void widen_scalar(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if constexpr (SD == KVP_DTYPE_F32) {
      std::memcpy(dst + i, src + 4 * i, 4);
    } else if constexpr (SD == KVP_DTYPE_F16 || SD == KVP_DTYPE_BF16) {
      uint16_t c;
      std::memcpy(&c, src + 2 * i, 2);
      dst[i] = SD == KVP_DTYPE_F16 ? fp::f32_from_f16(c) : fp::f32_from_bf16(c);
    } else {
      dst[i] = SD == KVP_DTYPE_F8_E4M3FN ? fp::f32_from_e4m3fn(src[i]) : fp::f32_from_e5m2(src[i]);
    }
  }
}

template <kvp_dtype SD>
void widen_baseline(const uint8_t* const* rows, int n, int64_t v_bytes, int64_t D, int64_t Dp, float* kb, float* vb) {
  for (int k = 0; k < n; ++k) {
    widen_scalar<SD>(rows[k], kb + k * Dp, D);
    widen_scalar<SD>(rows[k] + v_bytes, vb + k * Dp, D);
  }
}

#if KVP_CPU_DISPATCH
template <kvp_dtype SD>
KVP_TARGET_AVX512 KVP_ALWAYS_INLINE inline void widen_row_avx512(const uint8_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 f;
    if constexpr (SD == KVP_DTYPE_F32) {
      f = _mm512_loadu_ps(src + 4 * i);
    } else if constexpr (SD == KVP_DTYPE_BF16) {
      f = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2 * i))), 16));
    } else if constexpr (SD == KVP_DTYPE_F16) {
      f = cvt::f32_from_f16_bits512(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2 * i))));
    } else {
      const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
      f = cvt::f32_from_fp8_512<SD>(b);
    }
    _mm512_storeu_ps(dst + i, f);
  }
  widen_scalar<SD>(src + i * static_cast<int64_t>(fp_size<SD>()), dst + i, n - i);
}

template <kvp_dtype SD>
KVP_TARGET_AVX2 KVP_ALWAYS_INLINE inline void widen_row_avx2(const uint8_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 f;
    if constexpr (SD == KVP_DTYPE_F32) {
      f = _mm256_loadu_ps(reinterpret_cast<const float*>(src + 4 * i));
    } else if constexpr (SD == KVP_DTYPE_BF16) {
      f = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i))), 16));
    } else if constexpr (SD == KVP_DTYPE_F16) {
      f = cvt::f32_from_f16_bits256(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i))));
    } else {
      const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + i)));
      f = cvt::f32_from_fp8_256<SD>(b);
    }
    _mm256_storeu_ps(dst + i, f);
  }
  widen_scalar<SD>(src + i * static_cast<int64_t>(fp_size<SD>()), dst + i, n - i);
}
template <kvp_dtype SD>
KVP_TARGET_AVX512 void widen_avx512(const uint8_t* const* rows, int n, int64_t v_bytes, int64_t D, int64_t Dp, float* kb,
                                    float* vb) {
  for (int k = 0; k < n; ++k) {
    widen_row_avx512<SD>(rows[k], kb + k * Dp, D);
    widen_row_avx512<SD>(rows[k] + v_bytes, vb + k * Dp, D);
  }
}

template <kvp_dtype SD>
KVP_TARGET_AVX2 void widen_avx2(const uint8_t* const* rows, int n, int64_t v_bytes, int64_t D, int64_t Dp, float* kb,
                                float* vb) {
  for (int k = 0; k < n; ++k) {
    widen_row_avx2<SD>(rows[k], kb + k * Dp, D);
    widen_row_avx2<SD>(rows[k] + v_bytes, vb + k * Dp, D);
  }
}
#pragma GCC diagnostic pop  // (pushed before the AVX-512 kernels)
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
  if (isa == CpuIsa::avx512) return {qk_avx512, qk_few_avx512, softmax_avx512, pv_avx512};
  if (isa == CpuIsa::avx2) return {qk_avx2, qk_few_avx2, softmax_avx2, pv_avx2};
#endif
  (void)isa;
  return {qk_baseline, qk_few_baseline, softmax_baseline, pv_baseline};
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

// dst[d * dst_stride] = scale * t[token, head, d] for d < n (f32 rows with unit stride: a plain loop).
void load_row(const TensorArg& t, int64_t token, int64_t head, int64_t n, float scale, float* dst, int64_t dst_stride) {
  const uint8_t* row = static_cast<const uint8_t*>(t.data) + (token * t.stride_t + head * t.stride_h) * t.itemsize;
  if (t.dtype == KVP_DTYPE_F32 && t.stride_d == 1) {
    const float* src = reinterpret_cast<const float*>(row);
    for (int64_t d = 0; d < n; ++d) dst[d * dst_stride] = src[d] * scale;
    return;
  }
  for (int64_t d = 0; d < n; ++d) dst[d * dst_stride] = load_f32(row + d * t.stride_d * t.itemsize, t.dtype) * scale;
}

// t[token, head, d] = scale * src[d] for d < n, rounded once to t's dtype.
void store_row(const TensorArg& t, int64_t token, int64_t head, int64_t n, float scale, const float* src) {
  uint8_t* row = static_cast<uint8_t*>(const_cast<void*>(t.data)) + (token * t.stride_t + head * t.stride_h) * t.itemsize;
  if (t.dtype == KVP_DTYPE_F32 && t.stride_d == 1) {
    float* dst = reinterpret_cast<float*>(row);
    for (int64_t d = 0; d < n; ++d) dst[d] = src[d] * scale;
    return;
  }
  for (int64_t d = 0; d < n; ++d) store_f32(row + d * t.stride_d * t.itemsize, t.dtype, src[d] * scale);
}

// ---- the job -----------------------------------------------------------------------------------

// One tile of KV heads [g0, g0 + ng) and a key range. A tile's rows are the same (token, query head
// of the group) pairs for each of its heads; a request whose rows fit one tile (decode) takes
// several adjacent heads per item, so that each slot is read in one run of whole cache lines.
// part >= 0: the partial state of head h goes to slot part + h * splits of the split buffer.
struct Item {
  int64_t req;     // request row
  int32_t g0, ng;  // KV heads
  int32_t f0, nf;  // flattened query rows [f0, f0 + nf) of the request, nf <= kRows
  int64_t k0, k1;  // key positions
  int64_t part;    // -1: final
  int64_t splits;  // items the tile's key range is split into
};

// A merge of the `splits` partial states at [part, part + splits) into the output of head g0 + h
// of a tile.
struct Merge {
  int64_t item;  // the first of the tile's items (for its rows)
  int32_t h;
  int64_t part, splits;
};

struct Plan {
  const AttentionJob& job;
  Kernels kern;
  WidenFn widen;
  int64_t rep, D, Dp;
  int64_t slot_elems, isz;  // elements per token slot, bytes per element of the pages
  int64_t group = 1;        // KV heads per item for requests whose rows fit one tile
  HostVector<Item> items;
  HostVector<Merge> merges;
  // Split partials: per part, m[16], l[16], acc[16][Dp].
  HostVector<float> partials;
  // Per-worker scratch (64-byte aligned slots), claimed through `busy` (at most 256 workers).
  HostBuffer<float> scratch;
  int64_t scratch_floats = 0;
  std::atomic<bool> busy[256];
  explicit Plan(const AttentionJob& j, const HostAllocator& a)
      : job(j), items(a), merges(a), partials(a), scratch(a) {
    for (auto& b : busy) b.store(false, std::memory_order_relaxed);
  }
};

int64_t qs_of(const AttentionJob& j, int64_t i) { return token_start(j.md, i); }
int64_t qlen_of(const AttentionJob& j, int64_t i) { return j.md.query_start_loc[i + 1] - j.md.query_start_loc[i]; }

// The position p of flattened row f of request i, and its allowed key range [lo, hi).
void row_range(const AttentionJob& j, int64_t i, int64_t f, int64_t rep, int64_t& p, int64_t& lo, int64_t& hi) {
  p = j.md.context_lens[i] - qlen_of(j, i) + f / rep;
  hi = p + 1;
  lo = j.window > 0 ? std::max<int64_t>(0, p - j.window + 1) : 0;
}

// Adjacent KV heads whose keys and values fill about 4 KiB of a slot (at most kMaxItemHeads).
int64_t heads_per_group(const Plan& pl) {
  const Layout& L = pl.job.layout;
  const int64_t head_bytes = (L.h64 ? 1 : 2) * L.storage_head_dim * pl.isz;
  return std::clamp<int64_t>(4096 / head_bytes, 1, std::min<int64_t>(L.num_kv_heads, kMaxItemHeads));
}

// The items (and merges) of one tile: its heads in groups of `group`, its key range [k0, k1) in
// `splits` parts.
void add_tile(Plan& pl, int64_t i, int64_t f0, int64_t nf, int64_t k0, int64_t k1, int64_t group, int64_t splits) {
  const int64_t Hkv = pl.job.layout.num_kv_heads, stride = kRows * (pl.Dp + 2);
  for (int64_t g0 = 0; g0 < Hkv; g0 += group) {
    const int64_t ng = std::min(group, Hkv - g0), first = static_cast<int64_t>(pl.items.size());
    const int64_t part = splits > 1 ? static_cast<int64_t>(pl.partials.size()) / stride : -1;
    for (int64_t s = 0; s < splits; ++s)
      pl.items.push_back(Item{i, static_cast<int32_t>(g0), static_cast<int32_t>(ng), static_cast<int32_t>(f0),
                              static_cast<int32_t>(nf), k0 + (k1 - k0) * s / splits, k0 + (k1 - k0) * (s + 1) / splits,
                              splits > 1 ? part + s : -1, splits});
    if (splits == 1) continue;
    for (int64_t h = 0; h < ng; ++h) pl.merges.push_back(Merge{first, static_cast<int32_t>(h), part + h * splits, splits});
    pl.partials.resize(pl.partials.size() + static_cast<size_t>(ng * splits * stride), 0.0f);
  }
}

// Tiles and splits of every processed row. Long key ranges are split when the tiles alone would
// leave threads idle: a tile gets about its share of 4 items per thread.
void plan_items(Plan& pl, int threads) {
  const AttentionJob& j = pl.job;
  const int64_t Hkv = j.layout.num_kv_heads, target = 4 * static_cast<int64_t>(threads);
  pl.group = heads_per_group(pl);
  int64_t total_keys = 0;
  for (int pass = 0; pass < 2; ++pass)
    for (int64_t i = 0; i < j.num_rows; ++i) {
      const int64_t rows = qlen_of(j, i) * pl.rep, group = rows <= kRows ? pl.group : 1;
      for (int64_t f0 = 0; f0 < rows; f0 += kRows) {
        const int64_t nf = std::min<int64_t>(kRows, rows - f0);
        int64_t p, lo0, hi0, lo1, hi1;
        row_range(j, i, f0, pl.rep, p, lo0, hi0);
        row_range(j, i, f0 + nf - 1, pl.rep, p, lo1, hi1);
        const int64_t keys = hi1 - lo0;
        if (pass == 0) {
          total_keys += keys * Hkv;
          continue;
        }
        int64_t splits = 1;
        if (threads > 1 && total_keys > 0) {
          const int64_t share = (target * keys * group + total_keys - 1) / total_keys;
          splits = std::max<int64_t>(1, std::min<int64_t>(share, keys / kMinSplitKeys));
        }
        add_tile(pl, i, f0, nf, lo0, hi1, group, splits);
      }
    }
}

// The token row and query head of flattened row f of item `it`, for its KV head g.
void row_of(const Plan& pl, const Item& it, int64_t g, int64_t f, int64_t& token, int64_t& head) {
  token = qs_of(pl.job, it.req) + f / pl.rep;
  head = g * pl.rep + f % pl.rep;
}

// Writes the normalised rows of a tile's KV head g: out = v_scale * acc / l, with the head's sink.
void finish_rows(const Plan& pl, const Item& it, int64_t g, const float* m, const float* l, const float* acc) {
  const AttentionJob& j = pl.job;
  for (int r = 0; r < it.nf; ++r) {
    int64_t token, head;
    row_of(pl, it, g, it.f0 + r, token, head);
    float mr = m[r], lr = l[r], scale = 1.0f;
    if (j.sinks != nullptr && j.sinks[head] != kNegInf) {
      const float sink = j.sinks[head];
      const float mm = std::max(mr, sink);
      scale = exp_scalar(mr - mm);
      lr = lr * scale + exp_scalar(sink - mm);
    }
    store_row(j.out, token, head, pl.D, j.v_scale * scale / lr, acc + static_cast<size_t>(r) * pl.Dp);
  }
}

// The running state of one KV head of an item, in the worker's scratch.
struct HeadState {
  float* q;    // queries: qt [Dp][16] (rows kernel) or qr [16][Dp] (few rows)
  float* kb;   // [kBlock][Dp]
  float* vb;   // [kBlock][Dp]
  float* acc;  // [16][Dp]
  alignas(64) float m[kRows];
  alignas(64) float l[kRows];
  alignas(64) float alpha[kRows];
};

// Floats of scratch per KV head of an item, and shared (the logits s [kBlock][16]).
int64_t head_floats(int64_t Dp) { return 2 * kRows * Dp + 2 * kBlock * Dp; }
constexpr int64_t kSharedFloats = kBlock * kRows;

// Sets up head h of an item: scratch, zeroed where read before written (the queries' padding rows
// and lanes, the padding lanes of keys and values, the sums of the tile's rows), queries loaded
// and scaled.
void init_head(const Plan& pl, const Item& it, int64_t h, bool few, float* buf, HeadState& hs) {
  const AttentionJob& j = pl.job;
  const int64_t D = pl.D, Dp = pl.Dp;
  hs.q = buf + kSharedFloats + h * head_floats(Dp);
  hs.kb = hs.q + kRows * Dp;
  hs.vb = hs.kb + kBlock * Dp;
  hs.acc = hs.vb + kBlock * Dp;
  std::memset(hs.q, 0, sizeof(float) * static_cast<size_t>(kRows * Dp));
  if (D != Dp) std::memset(hs.kb, 0, sizeof(float) * static_cast<size_t>(2 * kBlock * Dp));  // kb, vb
  std::memset(hs.acc, 0, sizeof(float) * static_cast<size_t>(it.nf * Dp));  // rows past nf stay unused
  for (int r = 0; r < kRows; ++r) {
    hs.m[r] = kNegInf;
    hs.l[r] = 0.0f;
  }
  for (int r = 0; r < it.nf; ++r) {
    int64_t token, head;
    row_of(pl, it, it.g0 + h, it.f0 + r, token, head);
    if (few)
      load_row(j.q, token, head, D, j.logit_scale, hs.q + r * Dp, 1);
    else
      load_row(j.q, token, head, D, j.logit_scale, hs.q + r, kRows);
  }
}

// Widens block [j0, j0 + nb) of the keys and values of the item's head h into its state. Each slot
// holds the item's heads side by side: while head 0 reads its lines of each slot, the hardware
// prefetcher brings the other heads' lines. One head's values then stay in the L1 cache between
// the widening and its use.
void load_block(const Plan& pl, const Item& it, int64_t h, int64_t j0, int nb, HeadState& hs) {
  const AttentionJob& j = pl.job;
  const int64_t S = j.layout.page_size, Dst = j.layout.storage_head_dim, isz = pl.isz;
  const int32_t* table = j.md.pages_tables + it.req * j.md.pages_per_req;
  const int64_t head_elems = j.layout.h64 ? Dst : 2 * Dst;  // a head's K and V in a slot
  const int64_t v_off = j.layout.h64 ? 64 : Dst;
  const int64_t run0 = (it.g0 + h) * head_elems * isz;
  auto slot_of = [&](int64_t pos) {
    return j.pages + (static_cast<int64_t>(table[pos / S]) * S + pos % S) * pl.slot_elems * isz + run0;
  };
  const uint8_t* rows[kBlock];
  for (int k = 0; k < nb; ++k) rows[k] = slot_of(j0 + k);
  pl.widen(rows, nb, v_off * isz, pl.D, pl.Dp, hs.kb, hs.vb);
  // qk_few reads key rows up to a multiple of 16: keep the ones past the block's end finite.
  const int end = std::min(kBlock, (nb + 15) / 16 * 16);
  if (nb < end) std::memset(hs.kb + nb * pl.Dp, 0, sizeof(float) * static_cast<size_t>((end - nb) * pl.Dp));
}

// One work item, with `buf` as its scratch (Plan::scratch_floats floats).
void run_item(const Plan& pl, const Item& it, float* buf) {
  const AttentionJob& j = pl.job;
  const int64_t D = pl.D, Dp = pl.Dp;
  const bool few = it.nf <= kFewRows;
  float* s = buf;  // [kBlock][16], shared by the heads in turn
  HeadState hs[kMaxItemHeads];
  alignas(64) float lo[kRows], hi[kRows];
  int ia[kRows], ib[kRows];
  for (int r = 0; r < kRows; ++r) {
    lo[r] = 0.0f;
    hi[r] = -1.0f;  // padding rows: nothing allowed
  }
  for (int r = 0; r < it.nf; ++r) {
    int64_t p, rlo, rhi;
    row_range(j, it.req, it.f0 + r, pl.rep, p, rlo, rhi);
    lo[r] = static_cast<float>(std::max(rlo, it.k0));
    hi[r] = static_cast<float>(std::min(rhi, it.k1));
  }
  for (int64_t h = 0; h < it.ng; ++h) init_head(pl, it, h, few, buf, hs[h]);
  for (int64_t j0 = it.k0; j0 < it.k1; j0 += kBlock) {
    const int nb = static_cast<int>(std::min<int64_t>(kBlock, it.k1 - j0));
    for (int r = 0; r < kRows; ++r) {
      ia[r] = static_cast<int>(std::clamp<int64_t>(static_cast<int64_t>(lo[r]) - j0, 0, nb));
      ib[r] = std::max(ia[r], static_cast<int>(std::clamp<int64_t>(static_cast<int64_t>(hi[r]) - j0, 0, nb)));
    }
    for (int64_t h = 0; h < it.ng; ++h) {
      HeadState& e = hs[h];
      load_block(pl, it, h, j0, nb, e);
      if (few)
        pl.kern.qk_few(e.q, e.kb, nb, it.nf, static_cast<int>(Dp), s);
      else
        pl.kern.qk(e.q, e.kb, nb, static_cast<int>(D), static_cast<int>(Dp), s);
      pl.kern.softmax(s, lo, hi, static_cast<float>(j0), nb, j.soft_cap, e.m, e.l, e.alpha);
      pl.kern.pv(s, e.vb, static_cast<int>(Dp), ia, ib, e.alpha, e.acc);
    }
  }
  for (int64_t h = 0; h < it.ng; ++h) {
    if (it.part < 0) {
      finish_rows(pl, it, it.g0 + h, hs[h].m, hs[h].l, hs[h].acc);
      continue;
    }
    float* part = const_cast<float*>(pl.partials.data()) + (it.part + h * it.splits) * kRows * (Dp + 2);
    std::memcpy(part, hs[h].m, sizeof hs[h].m);
    std::memcpy(part + kRows, hs[h].l, sizeof hs[h].l);
    std::memcpy(part + 2 * kRows, hs[h].acc, sizeof(float) * static_cast<size_t>(kRows * Dp));
  }
}

// Combines the partial states of a split tile's head (into the first one's) and writes its rows.
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
  finish_rows(pl, it, it.g0 + mg.h, first, first + kRows, acc);
}

// Rows of `out` that no processed request owns (with zero_all: every row, before the processed
// ones are written): zeros.
void zero_unowned(const AttentionJob& j) {
  const int64_t owned0 = j.num_rows > 0 && !j.zero_all ? j.md.query_start_loc[0] : 0;
  const int64_t owned1 = j.num_rows > 0 && !j.zero_all ? j.md.query_start_loc[j.num_rows] : 0;
  for (int64_t t = 0; t < j.num_tokens; ++t) {
    if (t >= owned0 && t < owned1) continue;
    static const float zeros[kMaxAttentionHeadDim] = {};
    for (int64_t h = 0; h < j.num_q_heads; ++h) store_row(j.out, t, h, j.layout.head_dim, 1.0f, zeros);
  }
}

// Claims one of the `workers` scratch slots for the calling thread (no more run at once).
float* claim_scratch(Plan& pl, int workers, int& slot) {
  float* base = pl.scratch.data();  // 64-byte aligned; scratch_floats is a multiple of 16
  for (;;)
    for (slot = 0; slot < workers; ++slot) {
      bool expected = false;
      if (pl.busy[slot].compare_exchange_strong(expected, true, std::memory_order_acquire))
        return base + static_cast<size_t>(slot) * static_cast<size_t>(pl.scratch_floats);
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
  // Per worker: the shared logits and each head's state (64-byte aligned rows: Dp is a multiple of
  // 16 floats).
  int64_t heads = 1;
  for (const Item& it : pl.items) heads = std::max<int64_t>(heads, it.ng);
  pl.scratch_floats = kSharedFloats + heads * head_floats(pl.Dp);
  const int workers = static_cast<int>(std::min<int64_t>(threads, static_cast<int64_t>(pl.items.size())));
  pl.scratch.allocate(static_cast<size_t>(pl.scratch_floats * workers));
  // Every allocation of the attention is done: from here on it cannot fail (the write takes its
  // own scratch before it writes anything).
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
