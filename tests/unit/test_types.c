/* Unit tests of the integer helpers and name maps of kvpages/types.h, and of the budget helper
 * kvp_hbm_budget_bytes() / kvp_device_memory_stats() of kvpages/config.h (SPEC.md §1, §2.4, §7.1).
 *
 * Expected values are either worked by hand in the comments from the formulas of SPEC.md, or
 * computed by an independent test-local reference (floor division in 128-bit arithmetic). */
#include "support.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <unistd.h>

#define GiB (1024LL * 1024LL * 1024LL)
#define MiB (1024LL * 1024LL)
#define SENTINEL ((int64_t)0x5A5A5A5A5A5A5A5ALL)

/* ---- independent reference arithmetic (Python semantics, 128-bit, no overflow) ---------- */

static __int128 ref_floordiv(__int128 a, __int128 b) {
  __int128 q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) q -= 1;
  return q;
}

static __int128 ref_cdiv(__int128 a, __int128 b) { return ref_floordiv(a + b - 1, b); }

static int fits_i64(__int128 v) { return v >= (__int128)INT64_MIN && v <= (__int128)INT64_MAX; }

/* ---- cdiv --------------------------------------------------------------------------------- */

static void test_helpers__cdiv_positive(void **state) {
  (void)state;
  int64_t r = SENTINEL;
  assert_kvp_ok(kvp_cdiv(7, 2, &r));
  assert_int_equal(r, 4); /* (7+1)//2 */
  assert_kvp_ok(kvp_cdiv(8, 2, &r));
  assert_int_equal(r, 4); /* exact */
  assert_kvp_ok(kvp_cdiv(0, 5, &r));
  assert_int_equal(r, 0); /* 4//5 */
  assert_kvp_ok(kvp_cdiv(1, 1, &r));
  assert_int_equal(r, 1);
  assert_kvp_ok(kvp_cdiv(8192, 128, &r));
  assert_int_equal(r, 64);
  assert_kvp_ok(kvp_cdiv(8193, 128, &r));
  assert_int_equal(r, 65);
  assert_kvp_ok(kvp_cdiv(1000, 32, &r));
  assert_int_equal(r, 32); /* 1031//32 = 32 */
}

static void test_helpers__cdiv_negative_operands_use_floor_division(void **state) {
  (void)state;
  int64_t r = SENTINEL;
  /* (-1 + 4 - 1) // 4 = 2 // 4 = 0 */
  assert_kvp_ok(kvp_cdiv(-1, 4, &r));
  assert_int_equal(r, 0);
  /* (-5 + 3) // 4 = -2 // 4 = -1 (floor, not truncation which would give 0) */
  assert_kvp_ok(kvp_cdiv(-5, 4, &r));
  assert_int_equal(r, -1);
  /* (-8 + 3) // 4 = -5 // 4 = -2 */
  assert_kvp_ok(kvp_cdiv(-8, 4, &r));
  assert_int_equal(r, -2);
  /* (5 - 2 - 1) // -2 = 2 // -2 = -1 (Python). */
  assert_kvp_ok(kvp_cdiv(5, -2, &r));
  assert_int_equal(r, -1);
  /* (4 - 3 - 1) // -3 = 0 // -3 = 0 */
  assert_kvp_ok(kvp_cdiv(4, -3, &r));
  assert_int_equal(r, 0);
  /* (7 - 3 - 1) // -3 = 3 // -3 = -1 */
  assert_kvp_ok(kvp_cdiv(7, -3, &r));
  assert_int_equal(r, -1);
  /* (8 - 3 - 1) // -3 = 4 // -3 = -2 (floor of -1.33) */
  assert_kvp_ok(kvp_cdiv(8, -3, &r));
  assert_int_equal(r, -2);
  /* (-7 - 2 - 1) // -2 = -10 // -2 = 5 */
  assert_kvp_ok(kvp_cdiv(-7, -2, &r));
  assert_int_equal(r, 5);
}

static void test_helpers__cdiv_matches_floor_reference_randomized(void **state) {
  (void)state;
  uint64_t seed = 0x1234ABCDull;
  for (int i = 0; i < 20000; i++) {
    int64_t a = kvp_test_rand_range(&seed, -100000, 100000);
    int64_t b = kvp_test_rand_range(&seed, -300, 300);
    if (b == 0) continue;
    int64_t r = SENTINEL;
    assert_kvp_ok(kvp_cdiv(a, b, &r));
    assert_true((__int128)r == ref_cdiv(a, b));
  }
}

static void test_helpers__cdiv_64bit_extremes(void **state) {
  (void)state;
  int64_t r = SENTINEL;
  /* Byte counts beyond 2^31 must work. */
  assert_kvp_ok(kvp_cdiv(80 * GiB, 3, &r));
  assert_true((__int128)r == ref_cdiv(80 * GiB, 3));
  assert_kvp_ok(kvp_cdiv(INT64_MAX, 1, &r));
  assert_true(r == INT64_MAX);
  /* (MAX + 2 - 1) // 2 = 2^62: the intermediate sum exceeds int64 but the result does not. */
  assert_kvp_ok(kvp_cdiv(INT64_MAX, 2, &r));
  assert_true(r == (int64_t)1 << 62);
  assert_kvp_ok(kvp_cdiv(INT64_MIN, 1, &r));
  assert_true(r == INT64_MIN);
  assert_kvp_ok(kvp_cdiv(INT64_MAX, INT64_MAX, &r));
  assert_int_equal(r, 1);
}

static void test_helpers__cdiv_zero_divisor_is_error(void **state) {
  (void)state;
  int64_t r = SENTINEL;
  assert_kvp_status(kvp_cdiv(7, 0, &r), KVP_ERR_INVALID_ARGUMENT, "zero");
  assert_true(r == SENTINEL);
  assert_kvp_status(kvp_cdiv(0, 0, &r), KVP_ERR_INVALID_ARGUMENT, "zero");
  assert_true(r == SENTINEL);
}

static void test_helpers__cdiv_overflow_is_error(void **state) {
  (void)state;
  int64_t r = SENTINEL;
  /* (MIN - 1 - 1) // -1 = 2^63 + 2: not representable. */
  assert_true(!fits_i64(ref_cdiv(INT64_MIN, -1)));
  assert_kvp_status(kvp_cdiv(INT64_MIN, -1, &r), KVP_ERR_INVALID_ARGUMENT, "overflow");
  assert_true(r == SENTINEL);
  assert_true(!fits_i64(ref_cdiv(INT64_MIN + 1, -1)));
  assert_kvp_status(kvp_cdiv(INT64_MIN + 1, -1, &r), KVP_ERR_INVALID_ARGUMENT, "overflow");
  assert_true(r == SENTINEL);
}

static void test_helpers__cdiv_null_out_is_error(void **state) {
  (void)state;
  assert_kvp_status(kvp_cdiv(1, 1, NULL), KVP_ERR_INVALID_ARGUMENT, "");
}

/* ---- align_to_multiple ---------------------------------------------------------------------- */

static void test_helpers__align_to_multiple_values(void **state) {
  (void)state;
  int64_t r = SENTINEL;
  assert_kvp_ok(kvp_align_to_multiple(5, 4, &r));
  assert_int_equal(r, 8);
  assert_kvp_ok(kvp_align_to_multiple(8, 4, &r));
  assert_int_equal(r, 8);
  assert_kvp_ok(kvp_align_to_multiple(0, 4, &r));
  assert_int_equal(r, 0);
  assert_kvp_ok(kvp_align_to_multiple(2, 4, &r)); /* fp8 MQA: align(2H=2, 4) = 4 */
  assert_int_equal(r, 4);
  assert_kvp_ok(kvp_align_to_multiple(96, 128, &r)); /* head_dim 96 pads to 128 */
  assert_int_equal(r, 128);
  assert_kvp_ok(kvp_align_to_multiple(192, 128, &r));
  assert_int_equal(r, 256);
  /* cdiv(-5, 4) * 4 = -1 * 4 = -4 */
  assert_kvp_ok(kvp_align_to_multiple(-5, 4, &r));
  assert_int_equal(r, -4);
  /* cdiv(5, -2) * -2 = -1 * -2 = 2 */
  assert_kvp_ok(kvp_align_to_multiple(5, -2, &r));
  assert_int_equal(r, 2);
  uint64_t seed = 99;
  for (int i = 0; i < 5000; i++) {
    int64_t v = kvp_test_rand_range(&seed, -50000, 50000);
    int64_t m = kvp_test_rand_range(&seed, -200, 200);
    if (m == 0) continue;
    assert_kvp_ok(kvp_align_to_multiple(v, m, &r));
    assert_true((__int128)r == ref_cdiv(v, m) * m);
  }
}

static void test_helpers__align_to_multiple_errors(void **state) {
  (void)state;
  int64_t r = SENTINEL;
  assert_kvp_status(kvp_align_to_multiple(5, 0, &r), KVP_ERR_INVALID_ARGUMENT, "zero");
  assert_true(r == SENTINEL);
  /* cdiv(MAX, 2) * 2 = 2^63: overflows. */
  assert_kvp_status(kvp_align_to_multiple(INT64_MAX, 2, &r), KVP_ERR_INVALID_ARGUMENT, "overflow");
  assert_true(r == SENTINEL);
  assert_kvp_status(kvp_align_to_multiple(INT64_MAX - 3, 1000, &r), KVP_ERR_INVALID_ARGUMENT,
                    "overflow");
  assert_true(r == SENTINEL);
  assert_kvp_status(kvp_align_to_multiple(5, 4, NULL), KVP_ERR_INVALID_ARGUMENT, "");
}

/* ---- previous_power_of_2 -------------------------------------------------------------------- */

static void test_helpers__previous_power_of_2(void **state) {
  (void)state;
  assert_true(kvp_previous_power_of_2(0) == 0);
  assert_true(kvp_previous_power_of_2(-1) == 0);
  assert_true(kvp_previous_power_of_2(-1024) == 0);
  assert_true(kvp_previous_power_of_2(INT64_MIN) == 0);
  assert_true(kvp_previous_power_of_2(1) == 1);
  assert_true(kvp_previous_power_of_2(2) == 2);
  assert_true(kvp_previous_power_of_2(3) == 2);
  assert_true(kvp_previous_power_of_2(5) == 4);
  assert_true(kvp_previous_power_of_2(1023) == 512);
  assert_true(kvp_previous_power_of_2(1024) == 1024);
  assert_true(kvp_previous_power_of_2(1025) == 1024);
  assert_true(kvp_previous_power_of_2(INT64_MAX) == (int64_t)1 << 62);
  /* every exact power p maps to itself, p - 1 to p / 2, p + 1 to p */
  for (int k = 1; k < 63; k++) {
    int64_t p = (int64_t)1 << k;
    assert_true(kvp_previous_power_of_2(p) == p);
    assert_true(kvp_previous_power_of_2(p - 1) == p / 2);
    assert_true(kvp_previous_power_of_2(p + 1) == p);
  }
}

/* ---- dtypes --------------------------------------------------------------------------------- */

static void test_helpers__dtype_packing(void **state) {
  (void)state;
  int64_t p = SENTINEL;
  assert_kvp_ok(kvp_dtype_packing(KVP_DTYPE_F32, &p));
  assert_int_equal(p, 1);
  assert_kvp_ok(kvp_dtype_packing(KVP_DTYPE_F16, &p));
  assert_int_equal(p, 2);
  assert_kvp_ok(kvp_dtype_packing(KVP_DTYPE_BF16, &p));
  assert_int_equal(p, 2);
  assert_kvp_ok(kvp_dtype_packing(KVP_DTYPE_F8_E4M3FN, &p));
  assert_int_equal(p, 4);
  assert_kvp_ok(kvp_dtype_packing(KVP_DTYPE_F8_E5M2, &p));
  assert_int_equal(p, 4);
  /* "any fp8 -> 4": the name-only fp8 variants still have a packing. */
  assert_kvp_ok(kvp_dtype_packing(KVP_DTYPE_F8_E4M3FNUZ, &p));
  assert_int_equal(p, 4);
  assert_kvp_ok(kvp_dtype_packing(KVP_DTYPE_F8_E4M3B11FNUZ, &p));
  assert_int_equal(p, 4);
  assert_kvp_ok(kvp_dtype_packing(KVP_DTYPE_F8_E5M2FNUZ, &p));
  assert_int_equal(p, 4);
}

static void test_helpers__dtype_packing_errors(void **state) {
  (void)state;
  int64_t p = SENTINEL;
  /* 32 % 64 != 0 */
  assert_kvp_status(kvp_dtype_packing(KVP_DTYPE_F64, &p), KVP_ERR_INVALID_ARGUMENT, "fp64");
  assert_true(p == SENTINEL);
  assert_kvp_status(kvp_dtype_packing(KVP_DTYPE_INVALID, &p), KVP_ERR_NOT_FOUND, "");
  assert_true(p == SENTINEL);
  assert_kvp_status(kvp_dtype_packing(77u, &p), KVP_ERR_NOT_FOUND, "77");
  assert_true(p == SENTINEL);
  assert_kvp_status(kvp_dtype_packing(KVP_DTYPE_BF16, NULL), KVP_ERR_INVALID_ARGUMENT, "");
}

static void test_helpers__dtype_bits(void **state) {
  (void)state;
  assert_int_equal(kvp_dtype_bits(KVP_DTYPE_F32), 32);
  assert_int_equal(kvp_dtype_bits(KVP_DTYPE_F16), 16);
  assert_int_equal(kvp_dtype_bits(KVP_DTYPE_BF16), 16);
  assert_int_equal(kvp_dtype_bits(KVP_DTYPE_F8_E4M3FN), 8);
  assert_int_equal(kvp_dtype_bits(KVP_DTYPE_F8_E5M2), 8);
  assert_int_equal(kvp_dtype_bits(KVP_DTYPE_F64), 64);
  assert_int_equal(kvp_dtype_bits(KVP_DTYPE_F8_E4M3FNUZ), 8);
  assert_int_equal(kvp_dtype_bits(KVP_DTYPE_F8_E4M3B11FNUZ), 8);
  assert_int_equal(kvp_dtype_bits(KVP_DTYPE_F8_E5M2FNUZ), 8);
  assert_int_equal(kvp_dtype_bits(KVP_DTYPE_INVALID), 0);
  assert_int_equal(kvp_dtype_bits(10u), 0);
  assert_int_equal(kvp_dtype_bits(0xFFFFFFFFu), 0);
}

typedef struct name_case {
  const char *name;
  kvp_dtype dtype;
} name_case;

static void test_helpers__dtype_from_string_every_reference_spelling(void **state) {
  (void)state;
  static const name_case cases[] = {
      {"bf16", KVP_DTYPE_BF16},
      {"bfloat16", KVP_DTYPE_BF16},
      {"fp16", KVP_DTYPE_F16},
      {"float16", KVP_DTYPE_F16},
      {"fp32", KVP_DTYPE_F32},
      {"float32", KVP_DTYPE_F32},
      {"fp64", KVP_DTYPE_F64},
      {"float64", KVP_DTYPE_F64},
      {"fp8", KVP_DTYPE_F8_E5M2}, /* the reference's "fp8" is e5m2 */
      {"fp8_e4m3fn", KVP_DTYPE_F8_E4M3FN},
      {"float8_e4m3fn", KVP_DTYPE_F8_E4M3FN},
      {"fp8_e5m2", KVP_DTYPE_F8_E5M2},
      {"float8_e5m2", KVP_DTYPE_F8_E5M2},
      {"fp8_e4m3fnuz", KVP_DTYPE_F8_E4M3FNUZ},
      {"float8_e4m3fnuz", KVP_DTYPE_F8_E4M3FNUZ},
      {"fp8_e4m3b11fnuz", KVP_DTYPE_F8_E4M3B11FNUZ},
      {"float8_e4m3b11fnuz", KVP_DTYPE_F8_E4M3B11FNUZ},
      {"fp8_e5m2fnuz", KVP_DTYPE_F8_E5M2FNUZ},
      {"float8_e5m2fnuz", KVP_DTYPE_F8_E5M2FNUZ},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    kvp_dtype d = 0xABCDu;
    assert_kvp_ok(kvp_dtype_from_string(cases[i].name, &d));
    if (d != cases[i].dtype) fail_msg("'%s' -> %u, expected %u", cases[i].name, d, cases[i].dtype);
  }
}

static void test_helpers__dtype_name_is_canonical_and_round_trips(void **state) {
  (void)state;
  static const name_case canon[] = {
      {"fp32", KVP_DTYPE_F32},
      {"fp16", KVP_DTYPE_F16},
      {"bf16", KVP_DTYPE_BF16},
      {"fp8_e4m3fn", KVP_DTYPE_F8_E4M3FN},
      {"fp8_e5m2", KVP_DTYPE_F8_E5M2}, /* not "fp8": the later map entry wins */
      {"fp64", KVP_DTYPE_F64},
      {"fp8_e4m3fnuz", KVP_DTYPE_F8_E4M3FNUZ},
      {"fp8_e4m3b11fnuz", KVP_DTYPE_F8_E4M3B11FNUZ},
      {"fp8_e5m2fnuz", KVP_DTYPE_F8_E5M2FNUZ},
  };
  for (size_t i = 0; i < sizeof canon / sizeof canon[0]; i++) {
    const char *n = kvp_dtype_name(canon[i].dtype);
    assert_non_null(n);
    assert_string_equal(n, canon[i].name);
    kvp_dtype back = 0;
    assert_kvp_ok(kvp_dtype_from_string(n, &back));
    assert_int_equal(back, canon[i].dtype);
  }
  assert_null(kvp_dtype_name(KVP_DTYPE_INVALID));
  assert_null(kvp_dtype_name(10u));
  assert_null(kvp_dtype_name(0xFFFFFFFFu));
}

static void test_helpers__dtype_from_string_unknown_names(void **state) {
  (void)state;
  static const char *bad[] = {"int8", "uint8", "", "BF16", "Fp16", "fp8 ", " fp8",
                              "float4_e2m1fn", "e5m2", "fp8_e5m2x", "bf1"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    kvp_dtype d = 0xABCDu;
    kvp_status s = kvp_dtype_from_string(bad[i], &d);
    if (s != KVP_ERR_NOT_FOUND) fail_msg("'%s' -> %s", bad[i], kvp_status_name(s));
    assert_true(kvp_last_error_message()[0] != '\0');
    assert_int_equal(d, 0xABCDu);
  }
  kvp_dtype d = 0xABCDu;
  assert_kvp_status(kvp_dtype_from_string("int8", &d), KVP_ERR_NOT_FOUND, "int8");
  assert_kvp_status(kvp_dtype_from_string(NULL, &d), KVP_ERR_INVALID_ARGUMENT, "");
  assert_int_equal(d, 0xABCDu);
  assert_kvp_status(kvp_dtype_from_string("bf16", NULL), KVP_ERR_INVALID_ARGUMENT, "");
}

static void test_helpers__layout_names_both_ways(void **state) {
  (void)state;
  kvp_layout l = 0xABCDu;
  assert_kvp_ok(kvp_layout_from_string("v2", &l));
  assert_int_equal(l, KVP_LAYOUT_V2);
  assert_kvp_ok(kvp_layout_from_string("v3", &l));
  assert_int_equal(l, KVP_LAYOUT_V3);
  assert_string_equal(kvp_layout_name(KVP_LAYOUT_V2), "v2");
  assert_string_equal(kvp_layout_name(KVP_LAYOUT_V3), "v3");
  assert_null(kvp_layout_name(KVP_LAYOUT_DEFAULT));
  assert_null(kvp_layout_name(1u));
  assert_null(kvp_layout_name(4u));
  static const char *bad[] = {"v1", "v4", "V3", "", "3", "v3 ", "default"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    l = 0xABCDu;
    kvp_status s = kvp_layout_from_string(bad[i], &l);
    if (s != KVP_ERR_NOT_FOUND) fail_msg("'%s' -> %s", bad[i], kvp_status_name(s));
    assert_int_equal(l, 0xABCDu);
  }
  assert_kvp_status(kvp_layout_from_string("v7", &l), KVP_ERR_NOT_FOUND, "v7");
  assert_kvp_status(kvp_layout_from_string(NULL, &l), KVP_ERR_INVALID_ARGUMENT, "");
  assert_kvp_status(kvp_layout_from_string("v3", NULL), KVP_ERR_INVALID_ARGUMENT, "");
  assert_int_equal(l, 0xABCDu);
}

/* ---- page_size_bytes ------------------------------------------------------------------------ */

/* page_size * align(2H, pack) * cdiv(D,128)*128 * bits / 8, computed here from the formula. */
static int64_t ref_page_size_bytes(int64_t S, int64_t H, int64_t D, int64_t bits) {
  int64_t pack = 32 / bits;
  int64_t comb = (int64_t)(ref_cdiv(2 * H, pack) * pack);
  int64_t pd = (int64_t)(ref_cdiv(D, 128) * 128);
  return S * comb * pd * bits / 8;
}

static void test_helpers__page_size_bytes_values(void **state) {
  (void)state;
  int64_t r = SENTINEL;
  /* SPEC §2.5 row A: 128 * 16 * 128 * 2 = 524,288 */
  assert_kvp_ok(kvp_page_size_bytes(128, 8, 128, KVP_DTYPE_BF16, &r));
  assert_int_equal(r, 524288);
  /* row B fp32: 128 * 16 * 128 * 4 = 1,048,576 */
  assert_kvp_ok(kvp_page_size_bytes(128, 8, 128, KVP_DTYPE_F32, &r));
  assert_int_equal(r, 1048576);
  /* row C fp8: 128 * 16 * 128 * 1 = 262,144 */
  assert_kvp_ok(kvp_page_size_bytes(128, 8, 128, KVP_DTYPE_F8_E4M3FN, &r));
  assert_int_equal(r, 262144);
  /* row D: D = 64 still padded to 128 (h64 ignored) -> 524,288 */
  assert_kvp_ok(kvp_page_size_bytes(128, 8, 64, KVP_DTYPE_BF16, &r));
  assert_int_equal(r, 524288);
  /* row G fp8 MQA: align(2, 4) = 4 -> 128 * 4 * 128 = 65,536 */
  assert_kvp_ok(kvp_page_size_bytes(128, 1, 128, KVP_DTYPE_F8_E5M2, &r));
  assert_int_equal(r, 65536);
  /* row I: D 96 -> 128; 128 * 64 * 128 * 2 = 2,097,152 */
  assert_kvp_ok(kvp_page_size_bytes(128, 32, 96, KVP_DTYPE_BF16, &r));
  assert_int_equal(r, 2097152);
  /* 5 KV heads, D 192, fp8: align(10,4)=12, 192->256: 128 * 12 * 256 = 393,216 */
  assert_kvp_ok(kvp_page_size_bytes(128, 5, 192, KVP_DTYPE_F8_E5M2, &r));
  assert_int_equal(r, 393216);
  /* 16 heads x 80, fp16, page 256: 256 * 32 * 128 * 2 = 2,097,152 */
  assert_kvp_ok(kvp_page_size_bytes(256, 16, 80, KVP_DTYPE_F16, &r));
  assert_int_equal(r, 2097152);
  /* a tiny shape: 1 token, 1 head, D 1, fp32: 1 * 2 * 128 * 4 = 1024 */
  assert_kvp_ok(kvp_page_size_bytes(1, 1, 1, KVP_DTYPE_F32, &r));
  assert_int_equal(r, 1024);
  /* A page above 16 MiB is computable here (only slices reject it): 2048*32*128*4 = 32 MiB */
  assert_kvp_ok(kvp_page_size_bytes(2048, 16, 128, KVP_DTYPE_F32, &r));
  assert_true(r == 32 * MiB);

  static const kvp_dtype dts[] = {KVP_DTYPE_F32, KVP_DTYPE_F16, KVP_DTYPE_BF16,
                                  KVP_DTYPE_F8_E4M3FN, KVP_DTYPE_F8_E5M2};
  uint64_t seed = 7;
  for (int i = 0; i < 2000; i++) {
    int64_t S = kvp_test_rand_range(&seed, 1, 512);
    int64_t H = kvp_test_rand_range(&seed, 1, 64);
    int64_t D = kvp_test_rand_range(&seed, 1, 600);
    kvp_dtype dt = dts[kvp_test_rand_range(&seed, 0, 4)];
    assert_kvp_ok(kvp_page_size_bytes(S, H, D, dt, &r));
    assert_true(r == ref_page_size_bytes(S, H, D, kvp_dtype_bits(dt)));
  }
}

static void test_helpers__page_size_bytes_errors(void **state) {
  (void)state;
  int64_t r = SENTINEL;
  assert_kvp_status(kvp_page_size_bytes(0, 8, 128, KVP_DTYPE_BF16, &r), KVP_ERR_INVALID_ARGUMENT, "page_size");
  assert_kvp_status(kvp_page_size_bytes(-128, 8, 128, KVP_DTYPE_BF16, &r), KVP_ERR_INVALID_ARGUMENT, "page_size");
  assert_kvp_status(kvp_page_size_bytes(128, 0, 128, KVP_DTYPE_BF16, &r), KVP_ERR_INVALID_ARGUMENT, "num_kv_heads");
  assert_kvp_status(kvp_page_size_bytes(128, -1, 128, KVP_DTYPE_BF16, &r), KVP_ERR_INVALID_ARGUMENT, "num_kv_heads");
  assert_kvp_status(kvp_page_size_bytes(128, 8, 0, KVP_DTYPE_BF16, &r), KVP_ERR_INVALID_ARGUMENT, "head_size");
  assert_kvp_status(kvp_page_size_bytes(128, 8, -64, KVP_DTYPE_BF16, &r), KVP_ERR_INVALID_ARGUMENT, "head_size");
  assert_kvp_status(kvp_page_size_bytes(128, 8, 128, KVP_DTYPE_F64, &r), KVP_ERR_INVALID_ARGUMENT, "fp64");
  assert_kvp_status(kvp_page_size_bytes(128, 8, 128, 42u, &r), KVP_ERR_NOT_FOUND, "42");
  assert_kvp_status(kvp_page_size_bytes(128, 8, 128, KVP_DTYPE_INVALID, &r), KVP_ERR_NOT_FOUND, "");
  /* overflow: 2^40 tokens * 2^20 combined heads * 128 lanes * 4 bytes > 2^63 */
  assert_kvp_status(kvp_page_size_bytes((int64_t)1 << 40, (int64_t)1 << 19, 128, KVP_DTYPE_F32, &r),
                    KVP_ERR_INVALID_ARGUMENT, "overflow");
  assert_kvp_status(kvp_page_size_bytes(INT64_MAX, 1, 1, KVP_DTYPE_F8_E5M2, &r),
                    KVP_ERR_INVALID_ARGUMENT, "overflow");
  assert_true(r == SENTINEL);
  assert_kvp_status(kvp_page_size_bytes(128, 8, 128, KVP_DTYPE_BF16, NULL), KVP_ERR_INVALID_ARGUMENT, "");
}

/* ---- num_slices_per_kv_cache_update_page ---------------------------------------------------- */

static void test_helpers__num_slices_values(void **state) {
  (void)state;
  int64_t r = SENTINEL;
  assert_kvp_ok(kvp_num_slices_per_kv_cache_update_page(524288, &r)); /* 32 exactly */
  assert_int_equal(r, 32);
  assert_kvp_ok(kvp_num_slices_per_kv_cache_update_page(1048576, &r)); /* 16 */
  assert_int_equal(r, 16);
  assert_kvp_ok(kvp_num_slices_per_kv_cache_update_page(262144, &r)); /* 64 */
  assert_int_equal(r, 64);
  assert_kvp_ok(kvp_num_slices_per_kv_cache_update_page(2097152, &r)); /* 8 */
  assert_int_equal(r, 8);
  assert_kvp_ok(kvp_num_slices_per_kv_cache_update_page(65536, &r)); /* 256, capped at 64 */
  assert_int_equal(r, 64);
  assert_kvp_ok(kvp_num_slices_per_kv_cache_update_page(1, &r)); /* 2^24, capped */
  assert_int_equal(r, 64);
  assert_kvp_ok(kvp_num_slices_per_kv_cache_update_page(16 * MiB, &r)); /* exactly 1 */
  assert_int_equal(r, 1);
  assert_kvp_ok(kvp_num_slices_per_kv_cache_update_page(8 * MiB + 1, &r)); /* 16MiB//(8MiB+1)=1 */
  assert_int_equal(r, 1);
  assert_kvp_ok(kvp_num_slices_per_kv_cache_update_page(3 * MiB, &r)); /* 16//3 = 5 -> 4 */
  assert_int_equal(r, 4);
  assert_kvp_ok(kvp_num_slices_per_kv_cache_update_page(393216, &r)); /* 42 -> 32 */
  assert_int_equal(r, 32);
  /* independent sweep: result = min(previous_power_of_2(16MiB // b), 64) */
  for (int64_t b = 1; b <= 16 * MiB; b = b * 3 + 1) {
    int64_t n = (16 * MiB) / b;
    int64_t p = 1;
    while (p * 2 <= n) p *= 2;
    if (p > 64) p = 64;
    assert_kvp_ok(kvp_num_slices_per_kv_cache_update_page(b, &r));
    assert_true(r == p);
  }
}

static void test_helpers__num_slices_page_over_16mib_is_error(void **state) {
  (void)state;
  int64_t r = SENTINEL;
  assert_kvp_status(kvp_num_slices_per_kv_cache_update_page(16 * MiB + 1, &r),
                    KVP_ERR_INVALID_ARGUMENT, "Number of slices should be positive");
  assert_true(r == SENTINEL);
  assert_kvp_status(kvp_num_slices_per_kv_cache_update_page(32 * MiB, &r),
                    KVP_ERR_INVALID_ARGUMENT, "Number of slices should be positive");
  assert_kvp_status(kvp_num_slices_per_kv_cache_update_page(INT64_MAX, &r),
                    KVP_ERR_INVALID_ARGUMENT, "Number of slices should be positive");
  assert_true(r == SENTINEL);
  assert_kvp_status(kvp_num_slices_per_kv_cache_update_page(0, &r), KVP_ERR_INVALID_ARGUMENT, "");
  assert_kvp_status(kvp_num_slices_per_kv_cache_update_page(-4096, &r), KVP_ERR_INVALID_ARGUMENT, "");
  assert_true(r == SENTINEL);
  assert_kvp_status(kvp_num_slices_per_kv_cache_update_page(4096, NULL), KVP_ERR_INVALID_ARGUMENT, "");
}

/* ---- kvp_hbm_budget_bytes (SPEC §7.1) -------------------------------------------------------- */

static kvp_memory_stats stats_of(int64_t limit, int64_t reservable, int64_t total, int64_t in_use,
                                 int64_t reserved) {
  kvp_memory_stats s;
  memset(&s, 0, sizeof s);
  s.bytes_limit = limit;
  s.bytes_reservable_limit = reservable;
  s.bytes_total = total;
  s.bytes_in_use = in_use;
  s.bytes_reserved = reserved;
  s.valid = 1;
  return s;
}

static void test_helpers__hbm_budget_spec_example_both_modes(void **state) {
  (void)state;
  kvp_memory_stats s = stats_of(80 * GiB, 0, 0, 15 * GiB, 0);
  int64_t b = SENTINEL;
  /* free: int(65 GiB * 0.9) - 256 MiB = 62,813,896,704 - 268,435,456 = 62,545,461,248 */
  assert_kvp_ok(kvp_hbm_budget_bytes(&s, 1, 0.9, KVP_BUDGET_FREE, KVP_DEFAULT_SAFETY_MARGIN, &b));
  assert_true(b == 62545461248LL);
  /* total: int(80 GiB * 0.9) - 15 GiB - 256 MiB = 77,309,411,328 - 16,106,127,360 - 268,435,456 */
  assert_kvp_ok(kvp_hbm_budget_bytes(&s, 1, 0.9, KVP_BUDGET_TOTAL, KVP_DEFAULT_SAFETY_MARGIN, &b));
  assert_true(b == 60934848512LL);
  /* no margin */
  assert_kvp_ok(kvp_hbm_budget_bytes(&s, 1, 0.9, KVP_BUDGET_FREE, 0, &b));
  assert_true(b == 62813896704LL);
  /* util 1.0: free = 65 GiB */
  assert_kvp_ok(kvp_hbm_budget_bytes(&s, 1, 1.0, KVP_BUDGET_FREE, 0, &b));
  assert_true(b == 65 * GiB);
  assert_kvp_ok(kvp_hbm_budget_bytes(&s, 1, 1.0, KVP_BUDGET_TOTAL, 0, &b));
  assert_true(b == 65 * GiB);
  /* util 0.5 total: 40 GiB - 15 GiB - 1 MiB */
  assert_kvp_ok(kvp_hbm_budget_bytes(&s, 1, 0.5, KVP_BUDGET_TOTAL, MiB, &b));
  assert_true(b == 25 * GiB - MiB);
}

static void test_helpers__hbm_budget_limit_and_used_selection(void **state) {
  (void)state;
  int64_t b = SENTINEL;
  /* limit = first non-zero of limit, reservable, total */
  kvp_memory_stats s = stats_of(0, 40 * GiB, 80 * GiB, 0, 0);
  assert_kvp_ok(kvp_hbm_budget_bytes(&s, 1, 1.0, KVP_BUDGET_FREE, 0, &b));
  assert_true(b == 40 * GiB);
  s = stats_of(0, 0, 24 * GiB, 0, 0);
  assert_kvp_ok(kvp_hbm_budget_bytes(&s, 1, 1.0, KVP_BUDGET_FREE, 0, &b));
  assert_true(b == 24 * GiB);
  s = stats_of(16 * GiB, 40 * GiB, 80 * GiB, 0, 0);
  assert_kvp_ok(kvp_hbm_budget_bytes(&s, 1, 1.0, KVP_BUDGET_FREE, 0, &b));
  assert_true(b == 16 * GiB);
  /* used = max(in_use, reserved) */
  s = stats_of(16 * GiB, 0, 0, 2 * GiB, 6 * GiB);
  assert_kvp_ok(kvp_hbm_budget_bytes(&s, 1, 1.0, KVP_BUDGET_FREE, 0, &b));
  assert_true(b == 10 * GiB);
  s = stats_of(16 * GiB, 0, 0, 7 * GiB, 3 * GiB);
  assert_kvp_ok(kvp_hbm_budget_bytes(&s, 1, 1.0, KVP_BUDGET_FREE, 0, &b));
  assert_true(b == 9 * GiB);
  /* used > limit: free = 0, result clamps to 0 in both modes */
  s = stats_of(8 * GiB, 0, 0, 9 * GiB, 0);
  assert_kvp_ok(kvp_hbm_budget_bytes(&s, 1, 0.9, KVP_BUDGET_FREE, KVP_DEFAULT_SAFETY_MARGIN, &b));
  assert_true(b == 0);
  assert_kvp_ok(kvp_hbm_budget_bytes(&s, 1, 0.9, KVP_BUDGET_TOTAL, KVP_DEFAULT_SAFETY_MARGIN, &b));
  assert_true(b == 0);
  /* margin larger than what is free: clamps to 0 */
  s = stats_of(100 * MiB, 0, 0, 0, 0);
  assert_kvp_ok(kvp_hbm_budget_bytes(&s, 1, 0.9, KVP_BUDGET_FREE, KVP_DEFAULT_SAFETY_MARGIN, &b));
  assert_true(b == 0);
  /* floor(free * util): 1000 bytes * 0.3333 = 333.3 -> 333 */
  s = stats_of(1000, 0, 0, 0, 0);
  assert_kvp_ok(kvp_hbm_budget_bytes(&s, 1, 0.3333, KVP_BUDGET_FREE, 0, &b));
  assert_int_equal(b, 333);
  /* total mode floors limit*util before subtracting used: floor(1000*0.3333) - 100 = 233 */
  s = stats_of(1000, 0, 0, 100, 0);
  assert_kvp_ok(kvp_hbm_budget_bytes(&s, 1, 0.3333, KVP_BUDGET_TOTAL, 0, &b));
  assert_int_equal(b, 233);
  /* free mode: floor(900 * 0.3333) = 299 */
  assert_kvp_ok(kvp_hbm_budget_bytes(&s, 1, 0.3333, KVP_BUDGET_FREE, 0, &b));
  assert_int_equal(b, 299);
}

static void test_helpers__hbm_budget_minimum_over_devices_and_skips(void **state) {
  (void)state;
  int64_t b = SENTINEL;
  kvp_memory_stats s[4];
  s[0] = stats_of(80 * GiB, 0, 0, 10 * GiB, 0); /* free 70 */
  s[1] = stats_of(80 * GiB, 0, 0, 30 * GiB, 0); /* free 50: the minimum */
  s[2] = stats_of(1 * GiB, 0, 0, 0, 0);          /* would be minimum but not valid */
  s[2].valid = 0;
  s[3] = stats_of(0, 0, 0, 0, 0); /* valid but no limit: skipped */
  assert_kvp_ok(kvp_hbm_budget_bytes(s, 4, 1.0, KVP_BUDGET_FREE, 0, &b));
  assert_true(b == 50 * GiB);
  assert_kvp_ok(kvp_hbm_budget_bytes(s, 1, 1.0, KVP_BUDGET_FREE, 0, &b));
  assert_true(b == 70 * GiB);
}

static void test_helpers__hbm_budget_fallback_when_no_device_reports(void **state) {
  (void)state;
  int64_t b = SENTINEL;
  assert_kvp_ok(kvp_hbm_budget_bytes(NULL, 0, 0.9, KVP_BUDGET_FREE, KVP_DEFAULT_SAFETY_MARGIN, &b));
  assert_true(b == 4294967296LL);
  assert_true(KVP_FALLBACK_BUDGET == 4294967296LL);
  kvp_memory_stats s[2];
  s[0] = stats_of(80 * GiB, 0, 0, 0, 0);
  s[0].valid = 0;
  s[1] = stats_of(0, 0, 0, 5 * GiB, 0); /* no limit of any kind */
  b = SENTINEL;
  assert_kvp_ok(kvp_hbm_budget_bytes(s, 2, 0.9, KVP_BUDGET_TOTAL, KVP_DEFAULT_SAFETY_MARGIN, &b));
  assert_true(b == 4294967296LL);
}

static void test_helpers__hbm_budget_errors(void **state) {
  (void)state;
  int64_t b = SENTINEL;
  kvp_memory_stats s = stats_of(80 * GiB, 0, 0, 15 * GiB, 0);
  assert_kvp_status(kvp_hbm_budget_bytes(&s, 1, 0.0, KVP_BUDGET_FREE, 0, &b), KVP_ERR_INVALID_ARGUMENT, "utilization");
  assert_kvp_status(kvp_hbm_budget_bytes(&s, 1, -0.5, KVP_BUDGET_FREE, 0, &b), KVP_ERR_INVALID_ARGUMENT, "utilization");
  assert_kvp_status(kvp_hbm_budget_bytes(&s, 1, 1.01, KVP_BUDGET_FREE, 0, &b), KVP_ERR_INVALID_ARGUMENT, "utilization");
  assert_kvp_status(kvp_hbm_budget_bytes(&s, 1, NAN, KVP_BUDGET_FREE, 0, &b), KVP_ERR_INVALID_ARGUMENT, "utilization");
  assert_kvp_status(kvp_hbm_budget_bytes(&s, 1, INFINITY, KVP_BUDGET_FREE, 0, &b), KVP_ERR_INVALID_ARGUMENT, "utilization");
  assert_kvp_status(kvp_hbm_budget_bytes(&s, 1, 0.9, 2u, 0, &b), KVP_ERR_INVALID_ARGUMENT, "mode");
  assert_kvp_status(kvp_hbm_budget_bytes(&s, 1, 0.9, KVP_BUDGET_FREE, -1, &b), KVP_ERR_INVALID_ARGUMENT, "margin");
  assert_kvp_status(kvp_hbm_budget_bytes(NULL, 1, 0.9, KVP_BUDGET_FREE, 0, &b), KVP_ERR_INVALID_ARGUMENT, "");
  kvp_memory_stats neg = stats_of(-80 * GiB, 0, 0, 0, 0);
  assert_kvp_status(kvp_hbm_budget_bytes(&neg, 1, 0.9, KVP_BUDGET_FREE, 0, &b), KVP_ERR_INVALID_ARGUMENT, "");
  neg = stats_of(80 * GiB, 0, 0, -1, 0);
  assert_kvp_status(kvp_hbm_budget_bytes(&neg, 1, 0.9, KVP_BUDGET_FREE, 0, &b), KVP_ERR_INVALID_ARGUMENT, "");
  assert_true(b == SENTINEL);
  assert_kvp_status(kvp_hbm_budget_bytes(&s, 1, 0.9, KVP_BUDGET_FREE, 0, NULL), KVP_ERR_INVALID_ARGUMENT, "");
}

/* ---- kvp_device_memory_stats ---------------------------------------------------------------- */

static void test_helpers__device_memory_stats_cpu_is_plausible(void **state) {
  (void)state;
  kvp_memory_stats m;
  memset(&m, 0xA5, sizeof m);
  assert_kvp_ok(kvp_device_memory_stats(KVP_DEVICE_CPU, 0, &m));
  assert_true(m.valid != 0);
  /* Some limit is reported and it is the machine's RAM as the kernel reports it. */
  int64_t limit = m.bytes_limit ? m.bytes_limit : (m.bytes_reservable_limit ? m.bytes_reservable_limit : m.bytes_total);
  assert_true(limit > 64 * MiB);
  assert_true(m.bytes_total >= 0 && m.bytes_limit >= 0 && m.bytes_reservable_limit >= 0);
  assert_true(m.bytes_in_use >= 0 && m.bytes_reserved >= 0);
  assert_true(m.bytes_in_use <= limit);
  long pages = sysconf(_SC_PHYS_PAGES);
  long psz = sysconf(_SC_PAGESIZE);
  if (pages > 0 && psz > 0) {
    int64_t phys = (int64_t)pages * psz;
    /* MemTotal and _SC_PHYS_PAGES agree; allow 2% slack, and limit may be below physical RAM
     * (cgroup) but not above it. */
    if (m.bytes_total > 0) {
      assert_true(m.bytes_total <= phys + phys / 50);
      assert_true(m.bytes_total >= phys - phys / 50);
    }
    assert_true(limit <= phys + phys / 50);
  }
  /* The budget over the CPU statistics is positive on a machine with free memory. */
  int64_t b = 0;
  assert_kvp_ok(kvp_hbm_budget_bytes(&m, 1, 0.9, KVP_BUDGET_FREE, 0, &b));
  assert_true(b > 0 && b <= limit);
}

static void test_helpers__device_memory_stats_errors(void **state) {
  (void)state;
  kvp_memory_stats m, before;
  memset(&m, 0xA5, sizeof m);
  before = m;
  assert_kvp_status(kvp_device_memory_stats(99, 0, &m), KVP_ERR_INVALID_ARGUMENT, "99");
  assert_memory_equal(&m, &before, sizeof m);
  assert_kvp_status(kvp_device_memory_stats(-1, 0, &m), KVP_ERR_INVALID_ARGUMENT, "");
  assert_memory_equal(&m, &before, sizeof m);
#if !KVP_HAS_CUDA
  assert_kvp_status(kvp_device_memory_stats(KVP_DEVICE_CUDA, 0, &m), KVP_ERR_NO_DEVICE, "");
  assert_memory_equal(&m, &before, sizeof m);
#endif
  /* No machine has 1000 GPUs. */
  assert_kvp_status(kvp_device_memory_stats(KVP_DEVICE_CUDA, 1000, &m), KVP_ERR_NO_DEVICE, "");
  assert_memory_equal(&m, &before, sizeof m);
  assert_kvp_status(kvp_device_memory_stats(KVP_DEVICE_CPU, 0, NULL), KVP_ERR_INVALID_ARGUMENT, "");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_helpers__cdiv_positive),
      cmocka_unit_test(test_helpers__cdiv_negative_operands_use_floor_division),
      cmocka_unit_test(test_helpers__cdiv_matches_floor_reference_randomized),
      cmocka_unit_test(test_helpers__cdiv_64bit_extremes),
      cmocka_unit_test(test_helpers__cdiv_zero_divisor_is_error),
      cmocka_unit_test(test_helpers__cdiv_overflow_is_error),
      cmocka_unit_test(test_helpers__cdiv_null_out_is_error),
      cmocka_unit_test(test_helpers__align_to_multiple_values),
      cmocka_unit_test(test_helpers__align_to_multiple_errors),
      cmocka_unit_test(test_helpers__previous_power_of_2),
      cmocka_unit_test(test_helpers__dtype_packing),
      cmocka_unit_test(test_helpers__dtype_packing_errors),
      cmocka_unit_test(test_helpers__dtype_bits),
      cmocka_unit_test(test_helpers__dtype_from_string_every_reference_spelling),
      cmocka_unit_test(test_helpers__dtype_name_is_canonical_and_round_trips),
      cmocka_unit_test(test_helpers__dtype_from_string_unknown_names),
      cmocka_unit_test(test_helpers__layout_names_both_ways),
      cmocka_unit_test(test_helpers__page_size_bytes_values),
      cmocka_unit_test(test_helpers__page_size_bytes_errors),
      cmocka_unit_test(test_helpers__num_slices_values),
      cmocka_unit_test(test_helpers__num_slices_page_over_16mib_is_error),
      cmocka_unit_test(test_helpers__hbm_budget_spec_example_both_modes),
      cmocka_unit_test(test_helpers__hbm_budget_limit_and_used_selection),
      cmocka_unit_test(test_helpers__hbm_budget_minimum_over_devices_and_skips),
      cmocka_unit_test(test_helpers__hbm_budget_fallback_when_no_device_reports),
      cmocka_unit_test(test_helpers__hbm_budget_errors),
      cmocka_unit_test(test_helpers__device_memory_stats_cpu_is_plausible),
      cmocka_unit_test(test_helpers__device_memory_stats_errors),
  };
  return cmocka_run_group_tests_name("helpers", tests, NULL, NULL);
}
