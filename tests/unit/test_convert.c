/* kvp_convert: every pair of the five float dtypes against the test's own codec (tests/support,
 * double arithmetic, independent of the library): every code of each 8- and 16-bit source, and
 * f32 sources made of specials, boundaries, ties and random bit patterns; NaN payloads bit for bit;
 * calls of every short length against one long call (the vector tails); the same bytes under every
 * directed rounding mode and FTZ | DAZ; then in-place and threaded conversions, and bad input
 * (status, message, destination unchanged). Run again at each lower instruction-set level by
 * CMake (KVP_CPU_ISA), like the concatenate tests. */
#include <fenv.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "support.h"

#if defined(__x86_64__) || defined(__SSE__)
#include <xmmintrin.h>
#define KVP_TEST_HAVE_MXCSR 1
#endif

static const kvp_dtype kDtypes[] = {KVP_DTYPE_F32, KVP_DTYPE_F16, KVP_DTYPE_BF16, KVP_DTYPE_F8_E4M3FN,
                                    KVP_DTYPE_F8_E5M2};
#define NUM_DTYPES (sizeof kDtypes / sizeof kDtypes[0])

/* The code the library must produce for source code c: decode exactly, encode with the SPEC's
 * rounding (f32 destinations: the exact value, or the canonical NaN of its sign). */
static uint32_t expected_code(uint32_t c, kvp_dtype src, kvp_dtype dst) {
  if (src == dst) return c;
  return kvp_test_encode(kvp_test_decode(c, src), dst);
}

/* The codec here keeps no NaN payloads (it works on doubles), so a NaN produced from a NaN is
 * compared as "a NaN of the same sign"; every other code exactly. The payload rules themselves are
 * pinned by test_nan_payloads. */
static int same_result(uint32_t got, uint32_t want, kvp_dtype dst) {
  const double g = kvp_test_decode(got, dst), w = kvp_test_decode(want, dst);
  if (isnan(w)) return isnan(g) && signbit(g) == signbit(w);
  return got == want;
}

static void check_codes(const uint32_t *codes, size_t n, kvp_dtype src, kvp_dtype dst) {
  const int ss = kvp_test_dtype_size(src), ds = kvp_test_dtype_size(dst);
  unsigned char *in = malloc(n * (size_t)ss), *out = malloc(n * (size_t)ds);
  assert_non_null(in);
  assert_non_null(out);
  for (size_t i = 0; i < n; ++i) kvp_test_store_code(in + i * (size_t)ss, ss, codes[i]);
  assert_kvp_ok(kvp_convert(in, src, out, dst, n));
  for (size_t i = 0; i < n; ++i) {
    const uint32_t got = kvp_test_load_code(out + i * (size_t)ds, ds);
    const uint32_t want = expected_code(codes[i], src, dst);
    if (!same_result(got, want, dst))
      fail_msg("%s -> %s: code 0x%x gave 0x%x, expected 0x%x", kvp_dtype_name(src), kvp_dtype_name(dst), codes[i],
               got, want);
  }
  free(in);
  free(out);
}

/* Every code of a source of at most 16 bits. */
static void test_every_small_source_code(void **state) {
  (void)state;
  uint32_t *codes = malloc(65536 * sizeof *codes);
  assert_non_null(codes);
  for (size_t s = 1; s < NUM_DTYPES; ++s) {
    const size_t n = (size_t)1 << (8 * kvp_test_dtype_size(kDtypes[s]));
    for (size_t c = 0; c < n; ++c) codes[c] = (uint32_t)c;
    for (size_t d = 0; d < NUM_DTYPES; ++d) check_codes(codes, n, kDtypes[s], kDtypes[d]);
  }
  free(codes);
}

/* f32 sources: specials, every target's boundaries and ties (the codes next to each target code's
 * midpoints), and random patterns. */
static size_t f32_cases(uint32_t *codes, size_t cap) {
  static const uint32_t specials[] = {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u,
                                      0xffc00000u, 0x7fa00000u, 0x7f800001u, 0xff812345u, 0x00000001u,
                                      0x807fffffu, 0x7f7fffffu, 0x477fe000u, 0x477ff000u, 0x43e00000u,
                                      0x43f00000u, 0x47600000u, 0x47700000u, 0x3f800000u, 0x3f808000u};
  size_t n = 0;
  for (size_t i = 0; i < sizeof specials / sizeof specials[0]; ++i) codes[n++] = specials[i];
  /* Around the midpoint between consecutive bf16 codes (low 16 bits 0x8000) and f16/fp8 codes. */
  uint64_t rng = 0x5eed;
  while (n + 3 <= cap / 2) {
    const uint32_t hi = (uint32_t)kvp_test_rand(&rng) & 0xffff0000u;
    codes[n++] = hi | 0x8000u;
    codes[n++] = hi | 0x7fffu;
    codes[n++] = hi | 0x8001u;
  }
  while (n < cap) codes[n++] = (uint32_t)kvp_test_rand(&rng);
  return n;
}

static void test_f32_sources(void **state) {
  (void)state;
  enum { kCases = 200000 };
  uint32_t *codes = malloc(kCases * sizeof *codes);
  assert_non_null(codes);
  const size_t n = f32_cases(codes, kCases);
  for (size_t d = 0; d < NUM_DTYPES; ++d) check_codes(codes, n, KVP_DTYPE_F32, kDtypes[d]);
  free(codes);
}

/* Large enough to run on the thread pool (chunks of 64K elements); the same bytes as element-wise. */
static void test_large_conversion_matches(void **state) {
  (void)state;
  const size_t n = (1u << 20) + 37;
  uint16_t *in = malloc(n * sizeof *in);
  float *out = malloc(n * sizeof *out);
  assert_non_null(in);
  assert_non_null(out);
  uint64_t rng = 7;
  for (size_t i = 0; i < n; ++i) in[i] = (uint16_t)kvp_test_rand(&rng);
  assert_kvp_ok(kvp_convert(in, KVP_DTYPE_BF16, out, KVP_DTYPE_F32, n));
  for (size_t i = 0; i < n; ++i) {
    uint32_t bits;
    memcpy(&bits, &out[i], sizeof bits);
    if (bits != (uint32_t)in[i] << 16) fail_msg("element %zu: 0x%x -> 0x%x", i, in[i], bits);
  }
  free(in);
  free(out);
}

static void test_in_place_same_width(void **state) {
  (void)state;
  uint16_t buf[300], want[300];
  uint64_t rng = 11;
  for (int i = 0; i < 300; ++i) buf[i] = (uint16_t)kvp_test_rand(&rng);
  for (int i = 0; i < 300; ++i) want[i] = (uint16_t)expected_code(buf[i], KVP_DTYPE_BF16, KVP_DTYPE_F16);
  assert_kvp_ok(kvp_convert(buf, KVP_DTYPE_BF16, buf, KVP_DTYPE_F16, 300));
  for (int i = 0; i < 300; ++i)
    if (!same_result(buf[i], want[i], KVP_DTYPE_F16)) fail_msg("element %d: 0x%x, expected 0x%x", i, buf[i], want[i]);
}

/* NaN payloads, bit for bit (the rules of fp_convert.hpp and include/kvpages/types.h):
 * f32 -> bf16: the canonical quiet NaN of the sign, 0x7FC0 / 0xFFC0 (JAX / ml_dtypes);
 * f32 -> f16: sign | 0x7E00 | the top 10 payload bits (what F16C's vcvtps2ph gives);
 * f16 -> f32: exact, a signalling NaN stays signalling (vcvtph2ps would quiet it).
 * Each value fills a whole row of 37 elements, so vector bodies and tails all see it. */
static void test_nan_payloads(void **state) {
  (void)state;
  static const uint32_t kNans[] = {0x7FA00000u, 0xFFA00001u, 0x7F800001u, 0xFF800001u, 0x7FC00000u, 0xFFFFFFFFu,
                                   0x7FBFFFFFu, 0x7F802000u, 0x7F801FFFu, 0xFFC0E000u, 0x7FFFE000u, 0x7F804000u};
  enum { kRow = 37 };
  uint32_t in[kRow], wide[kRow];
  uint16_t out[kRow], half[kRow];
  for (size_t v = 0; v < sizeof kNans / sizeof kNans[0]; ++v) {
    const uint32_t x = kNans[v], sign16 = (x >> 16) & 0x8000u;
    for (int i = 0; i < kRow; ++i) in[i] = x;
    assert_kvp_ok(kvp_convert(in, KVP_DTYPE_F32, out, KVP_DTYPE_BF16, kRow));
    for (int i = 0; i < kRow; ++i)
      if (out[i] != (sign16 | 0x7FC0u)) fail_msg("f32 0x%08x -> bf16 0x%04x [%d]", x, out[i], i);
    assert_kvp_ok(kvp_convert(in, KVP_DTYPE_F32, out, KVP_DTYPE_F16, kRow));
    for (int i = 0; i < kRow; ++i)
      if (out[i] != (sign16 | 0x7E00u | ((x >> 13) & 0x3FFu))) fail_msg("f32 0x%08x -> f16 0x%04x [%d]", x, out[i], i);
  }
  for (uint32_t h = 0x7C01u; h <= 0x7FFFu; h += 0x3Bu) {
    for (int s = 0; s < 2; ++s) {
      const uint32_t code = h | (s ? 0x8000u : 0u);
      for (int i = 0; i < kRow; ++i) half[i] = (uint16_t)code;
      assert_kvp_ok(kvp_convert(half, KVP_DTYPE_F16, wide, KVP_DTYPE_F32, kRow));
      for (int i = 0; i < kRow; ++i)
        if (wide[i] != (((code & 0x8000u) << 16) | 0x7F800000u | ((code & 0x3FFu) << 13)))
          fail_msg("f16 0x%04x -> f32 0x%08x [%d]", code, wide[i], i);
    }
  }
}

/* fp8 NaNs, bit for bit. Into fp8: e4m3fn has the one NaN S.1111.111; e5m2 keeps the sign, sets
 * the quiet bit and keeps the next payload bit (f32 bit 21: f16 bit 8, bf16 bit 5). Out of fp8:
 * f32 gets e5m2's payload at bits 22..21 (e4m3fn: the quiet NaN), f16 the same with its quiet bit
 * set, bf16 the canonical quiet NaN. Rows of 37, as above. */
static void test_fp8_nan_payloads(void **state) {
  (void)state;
  enum { kRow = 37 };
  uint32_t wide[kRow];
  uint16_t half[kRow];
  uint8_t out[kRow];
  for (uint32_t v = 0; v < 64; ++v) {
    /* f32 NaNs with every pattern of payload bits 22..21 and 0, and both signs */
    const uint32_t x = ((v & 32u) << 26) | 0x7F800000u | ((v & 3u) << 21) | (v & 4u ? 1u : 0u) | ((v & 24u) << 16);
    if ((x & 0x7FFFFFFFu) == 0x7F800000u) continue; /* infinity */
    for (int i = 0; i < kRow; ++i) wide[i] = x;
    assert_kvp_ok(kvp_convert(wide, KVP_DTYPE_F32, out, KVP_DTYPE_F8_E5M2, kRow));
    for (int i = 0; i < kRow; ++i)
      if (out[i] != (((x >> 24) & 0x80u) | 0x7Eu | ((x >> 21) & 1u))) fail_msg("f32 0x%08x -> e5m2 0x%02x [%d]", x, out[i], i);
    assert_kvp_ok(kvp_convert(wide, KVP_DTYPE_F32, out, KVP_DTYPE_F8_E4M3FN, kRow));
    for (int i = 0; i < kRow; ++i)
      if (out[i] != (((x >> 24) & 0x80u) | 0x7Fu)) fail_msg("f32 0x%08x -> e4m3fn 0x%02x [%d]", x, out[i], i);
  }
  for (int src = 0; src < 2; ++src) {
    const kvp_dtype sd = src == 0 ? KVP_DTYPE_F16 : KVP_DTYPE_BF16;
    const uint32_t inf = src == 0 ? 0x7C00u : 0x7F80u, bit = src == 0 ? 8u : 5u;
    for (uint32_t code = inf + 1u; code <= 0xFFFFu; code += code == 0x7FFFu ? inf + 2u : 1u) {
      for (int i = 0; i < kRow; ++i) half[i] = (uint16_t)code;
      assert_kvp_ok(kvp_convert(half, sd, out, KVP_DTYPE_F8_E5M2, kRow));
      for (int i = 0; i < kRow; ++i)
        if (out[i] != (((code >> 8) & 0x80u) | 0x7Eu | ((code >> bit) & 1u)))
          fail_msg("%s 0x%04x -> e5m2 0x%02x [%d]", kvp_dtype_name(sd), code, out[i], i);
      assert_kvp_ok(kvp_convert(half, sd, out, KVP_DTYPE_F8_E4M3FN, kRow));
      for (int i = 0; i < kRow; ++i)
        if (out[i] != (((code >> 8) & 0x80u) | 0x7Fu)) fail_msg("%s 0x%04x -> e4m3fn 0x%02x [%d]", kvp_dtype_name(sd), code, out[i], i);
    }
  }
  for (uint32_t code = 0x7Du; code <= 0xFFu; code += code == 0x7Fu ? 0x7Eu : 1u) { /* e5m2 NaNs */
    const uint32_t s = code & 0x80u, m = code & 3u;
    uint8_t in[kRow];
    memset(in, (int)code, sizeof in);
    assert_kvp_ok(kvp_convert(in, KVP_DTYPE_F8_E5M2, wide, KVP_DTYPE_F32, kRow));
    assert_kvp_ok(kvp_convert(in, KVP_DTYPE_F8_E5M2, half, KVP_DTYPE_F16, kRow));
    for (int i = 0; i < kRow; ++i) {
      if (wide[i] != ((s << 24) | 0x7F800000u | (m << 21))) fail_msg("e5m2 0x%02x -> f32 0x%08x [%d]", code, wide[i], i);
      if (half[i] != ((s << 8) | 0x7E00u | (m << 8))) fail_msg("e5m2 0x%02x -> f16 0x%04x [%d]", code, half[i], i);
    }
    assert_kvp_ok(kvp_convert(in, KVP_DTYPE_F8_E5M2, half, KVP_DTYPE_BF16, kRow));
    for (int i = 0; i < kRow; ++i)
      if (half[i] != ((s << 8) | 0x7FC0u)) fail_msg("e5m2 0x%02x -> bf16 0x%04x [%d]", code, half[i], i);
  }
  for (uint32_t code = 0x7Fu; code <= 0xFFu; code += 0x80u) { /* e4m3fn's NaN, both signs */
    const uint32_t s = code & 0x80u;
    uint8_t in[kRow];
    memset(in, (int)code, sizeof in);
    assert_kvp_ok(kvp_convert(in, KVP_DTYPE_F8_E4M3FN, wide, KVP_DTYPE_F32, kRow));
    assert_kvp_ok(kvp_convert(in, KVP_DTYPE_F8_E4M3FN, half, KVP_DTYPE_F16, kRow));
    for (int i = 0; i < kRow; ++i) {
      if (wide[i] != ((s << 24) | 0x7FC00000u)) fail_msg("e4m3fn 0x%02x -> f32 0x%08x [%d]", code, wide[i], i);
      if (half[i] != ((s << 8) | 0x7E00u)) fail_msg("e4m3fn 0x%02x -> f16 0x%04x [%d]", code, half[i], i);
    }
    assert_kvp_ok(kvp_convert(in, KVP_DTYPE_F8_E4M3FN, half, KVP_DTYPE_BF16, kRow));
    for (int i = 0; i < kRow; ++i)
      if (half[i] != ((s << 8) | 0x7FC0u)) fail_msg("e4m3fn 0x%02x -> bf16 0x%04x [%d]", code, half[i], i);
  }
}

/* The source codes of the tests below: the f32 cases (up to f32_cap) for f32, else every code of
 * the dtype, repeated to 65536 entries (room the caller gives). Returns the count. */
static size_t source_codes(kvp_dtype sd, uint32_t *codes, size_t f32_cap) {
  if (sd == KVP_DTYPE_F32) return f32_cases(codes, f32_cap);
  const uint32_t mask = (1u << (8 * kvp_test_dtype_size(sd))) - 1u;
  for (size_t c = 0; c < 65536; ++c) codes[c] = (uint32_t)c & mask;
  return 65536;
}

/* Calls of every length from 1 to 40 (every vector body and tail of each instruction-set level)
 * give the bytes of one call over the same input: every 16-bit code and the f32 cases into every
 * dtype, NaN payloads included. */
static void test_short_calls_match_one_call(void **state) {
  (void)state;
  enum { kCases = 65536 };
  uint32_t *codes = malloc(kCases * sizeof *codes);
  assert_non_null(codes);
  for (size_t s = 0; s < NUM_DTYPES; ++s) {
    const kvp_dtype sd = kDtypes[s];
    const int ss = kvp_test_dtype_size(sd);
    const size_t n = source_codes(sd, codes, kCases);
    unsigned char *in = malloc(n * (size_t)ss), *one = malloc(n * 4), *pieces = malloc(n * 4);
    assert_non_null(in);
    assert_non_null(one);
    assert_non_null(pieces);
    for (size_t i = 0; i < n; ++i) kvp_test_store_code(in + i * (size_t)ss, ss, codes[i]);
    for (size_t d = 0; d < NUM_DTYPES; ++d) {
      const size_t ds = (size_t)kvp_test_dtype_size(kDtypes[d]);
      assert_kvp_ok(kvp_convert(in, sd, one, kDtypes[d], n));
      size_t len = 1;
      for (size_t at = 0; at < n; at += len, len = len % 40 + 1) {
        const size_t m = n - at < len ? n - at : len;
        assert_kvp_ok(kvp_convert(in + at * (size_t)ss, sd, pieces + at * ds, kDtypes[d], m));
      }
      if (memcmp(one, pieces, n * ds) != 0)
        fail_msg("%s -> %s: calls of 1..40 elements differ from one call", kvp_dtype_name(sd), kvp_dtype_name(kDtypes[d]));
    }
    free(in);
    free(one);
    free(pieces);
  }
  free(codes);
}

/* This thread's floating-point environment, saved before and restored after the test that changes
 * it (cmocka setup / teardown, so a failing check leaves the next tests the default). */
typedef struct {
  int rounding;
#if KVP_TEST_HAVE_MXCSR
  unsigned int mxcsr;
#endif
} fp_env;

static int save_fp_env(void **state) {
  static fp_env saved;
  saved.rounding = fegetround();
#if KVP_TEST_HAVE_MXCSR
  saved.mxcsr = _mm_getcsr();
#endif
  *state = &saved;
  return 0;
}

static int restore_fp_env(void **state) {
  const fp_env *saved = *state;
  fesetround(saved->rounding);
#if KVP_TEST_HAVE_MXCSR
  _mm_setcsr(saved->mxcsr);
#endif
  return 0;
}

/* The caller's floating-point environment changes no code: every small source code and the f32
 * cases into every dtype give, with each directed rounding mode (fesetround; a program may set
 * one) and on x86 with flush-to-zero and denormals-are-zero too (-ffast-math programs and
 * torch.set_flush_denormal set them), the bytes of the default environment, which the tests above
 * check against the codec (whose double arithmetic needs the default mode itself). The calls stay
 * under the size kvp_convert hands to its thread pool, so they run on this thread. */
static void test_codes_ignore_the_fp_environment(void **state) {
  static const int kModes[] = {FE_TOWARDZERO, FE_DOWNWARD, FE_UPWARD};
  enum { kCases = 200000 };
  uint32_t *codes = malloc(kCases * sizeof *codes);
  unsigned char *in = malloc(kCases * 4), *want = malloc(kCases * 4), *got = malloc(kCases * 4);
  assert_true(codes && in && want && got);
  for (size_t s = 0; s < NUM_DTYPES; ++s) {
    const kvp_dtype sd = kDtypes[s];
    const int ss = kvp_test_dtype_size(sd);
    const size_t n = source_codes(sd, codes, kCases);
    for (size_t i = 0; i < n; ++i) kvp_test_store_code(in + i * (size_t)ss, ss, codes[i]);
    for (size_t d = 0; d < NUM_DTYPES; ++d) {
      const size_t bytes = n * (size_t)kvp_test_dtype_size(kDtypes[d]);
      assert_kvp_ok(kvp_convert(in, sd, want, kDtypes[d], n));
      for (size_t m = 0; m < sizeof kModes / sizeof kModes[0]; ++m) {
        assert_int_equal(fesetround(kModes[m]), 0);
#if KVP_TEST_HAVE_MXCSR
        if (m == 0) _mm_setcsr(_mm_getcsr() | 0x8040u); /* FTZ | DAZ */
#endif
        memset(got, 0xA5, bytes);
        const kvp_status st = kvp_convert(in, sd, got, kDtypes[d], n);
        restore_fp_env(state);
        assert_kvp_ok(st);
        for (size_t i = 0; i < bytes; ++i)
          if (got[i] != want[i])
            fail_msg("%s -> %s, rounding mode %zu: byte %zu (source code 0x%x) is 0x%02x, 0x%02x by default",
                     kvp_dtype_name(sd), kvp_dtype_name(kDtypes[d]), m, i,
                     codes[i / (size_t)kvp_test_dtype_size(kDtypes[d])], got[i], want[i]);
      }
    }
  }
  free(codes);
  free(in);
  free(want);
  free(got);
}

static void test_zero_count_accepts_null(void **state) {
  (void)state;
  assert_kvp_ok(kvp_convert(NULL, KVP_DTYPE_F32, NULL, KVP_DTYPE_BF16, 0));
}

/* Bad input: status, a message naming the problem, and the destination untouched. */
static void test_bad_input_changes_nothing(void **state) {
  (void)state;
  float src[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  unsigned char dst[32], before[32];
  memset(dst, 0xA5, sizeof dst);
  memcpy(before, dst, sizeof dst);
  assert_kvp_status(kvp_convert(NULL, KVP_DTYPE_F32, dst, KVP_DTYPE_BF16, 8), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_convert(src, KVP_DTYPE_F32, NULL, KVP_DTYPE_BF16, 8), KVP_ERR_INVALID_ARGUMENT, "NULL");
  assert_kvp_status(kvp_convert(src, 99u, dst, KVP_DTYPE_BF16, 8), KVP_ERR_NOT_FOUND, "unknown src_dtype 99");
  assert_kvp_status(kvp_convert(src, KVP_DTYPE_F32, dst, KVP_DTYPE_INVALID, 8), KVP_ERR_NOT_FOUND,
                    "unknown dst_dtype 0");
  assert_kvp_status(kvp_convert(src, KVP_DTYPE_F64, dst, KVP_DTYPE_BF16, 4), KVP_ERR_UNSUPPORTED,
                    "src_dtype fp64 is not converted");
  assert_kvp_status(kvp_convert(src, KVP_DTYPE_F32, dst, KVP_DTYPE_F8_E4M3FNUZ, 8), KVP_ERR_UNSUPPORTED,
                    "dst_dtype fp8_e4m3fnuz");
  assert_kvp_status(kvp_convert(src, KVP_DTYPE_F32, dst, KVP_DTYPE_BF16, SIZE_MAX / 2), KVP_ERR_INVALID_ARGUMENT,
                    "overflows");
  assert_memory_equal(dst, before, sizeof dst);
  /* Overlap: a widening in place, and a shifted window of the same width. */
  assert_kvp_status(kvp_convert(dst, KVP_DTYPE_BF16, dst, KVP_DTYPE_F32, 4), KVP_ERR_INVALID_ARGUMENT, "overlap");
  assert_kvp_status(kvp_convert(dst, KVP_DTYPE_BF16, dst + 2, KVP_DTYPE_F16, 4), KVP_ERR_INVALID_ARGUMENT, "overlap");
  assert_memory_equal(dst, before, sizeof dst);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_small_source_code), cmocka_unit_test(test_f32_sources),
      cmocka_unit_test(test_large_conversion_matches), cmocka_unit_test(test_in_place_same_width),
      cmocka_unit_test(test_zero_count_accepts_null),  cmocka_unit_test(test_bad_input_changes_nothing),
      cmocka_unit_test(test_nan_payloads),             cmocka_unit_test(test_fp8_nan_payloads),
      cmocka_unit_test(test_short_calls_match_one_call),
      cmocka_unit_test_setup_teardown(test_codes_ignore_the_fp_environment, save_fp_env, restore_fp_env),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
