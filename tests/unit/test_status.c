/* Unit tests of kvpages/status.h: status names, the thread-local message and its copy function,
 * version queries and the ABI check. */
#include "support.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct code_name {
  kvp_status code;
  const char *name;
} code_name;

#define CN(c) {c, #c}
static const code_name all_codes[] = {
    CN(KVP_OK),
    CN(KVP_ERR_INVALID_ARGUMENT),
    CN(KVP_ERR_INVALID_HANDLE),
    CN(KVP_ERR_NOT_FOUND),
    CN(KVP_ERR_VERSION_MISMATCH),
    CN(KVP_ERR_UNSUPPORTED),
    CN(KVP_ERR_BUFFER_TOO_SMALL),
    CN(KVP_ERR_OUT_OF_MEMORY),
    CN(KVP_ERR_OUT_OF_PAGES),
    CN(KVP_ERR_IO),
    CN(KVP_ERR_DEVICE),
    CN(KVP_ERR_DEVICE_LOST),
    CN(KVP_ERR_NO_DEVICE),
    CN(KVP_ERR_DEVICE_OUT_OF_MEMORY),
    CN(KVP_ERR_FORMAT_MAGIC),
    CN(KVP_ERR_FORMAT_VERSION),
    CN(KVP_ERR_FORMAT_TRUNCATED),
    CN(KVP_ERR_FORMAT_CHECKSUM),
    CN(KVP_ERR_FORMAT_CORRUPT),
    CN(KVP_ERR_FORMAT_MISMATCH),
    CN(KVP_ERR_INTERNAL),
};
#define NUM_CODES (sizeof all_codes / sizeof all_codes[0])

static void test_status__every_code_has_its_name(void **state) {
  (void)state;
  for (size_t i = 0; i < NUM_CODES; i++) {
    const char *n = kvp_status_name(all_codes[i].code);
    assert_non_null(n);
    assert_string_equal(n, all_codes[i].name);
  }
}

static void test_status__unknown_codes_have_a_generic_name(void **state) {
  (void)state;
  static const kvp_status unknown[] = {7, 63, 67, 127, 132, 191, 198, 254, 256, -1, -255, 100000,
                                       INT32_MIN, INT32_MAX};
  for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
    const char *n = kvp_status_name(unknown[i]);
    assert_non_null(n);
    assert_string_equal(n, "KVP_ERR_UNKNOWN");
  }
}

static void test_status__codes_are_distinct_and_in_their_ranges(void **state) {
  (void)state;
  for (size_t i = 0; i < NUM_CODES; i++)
    for (size_t j = i + 1; j < NUM_CODES; j++) assert_true(all_codes[i].code != all_codes[j].code);
  assert_int_equal(KVP_OK, 0);
  assert_in_range(KVP_ERR_INVALID_ARGUMENT, 1, 63);
  assert_in_range(KVP_ERR_BUFFER_TOO_SMALL, 1, 63);
  assert_in_range(KVP_ERR_OUT_OF_MEMORY, 64, 127);
  assert_in_range(KVP_ERR_IO, 64, 127);
  assert_in_range(KVP_ERR_DEVICE, 128, 191);
  assert_in_range(KVP_ERR_DEVICE_OUT_OF_MEMORY, 128, 191);
  assert_in_range(KVP_ERR_FORMAT_MAGIC, 192, 255);
  assert_in_range(KVP_ERR_FORMAT_MISMATCH, 192, 255);
  assert_int_equal(KVP_ERR_INTERNAL, 255);
}

static void test_status__message_set_on_failure_cleared_on_success(void **state) {
  (void)state;
  int64_t r;
  assert_kvp_ok(kvp_cdiv(1, 1, &r));
  assert_non_null(kvp_last_error_message());
  assert_string_equal(kvp_last_error_message(), "");
  assert_int_equal(kvp_cdiv(1, 0, &r), KVP_ERR_INVALID_ARGUMENT);
  assert_true(strlen(kvp_last_error_message()) > 0);
  /* reading it does not clear it */
  assert_true(strlen(kvp_last_error_message()) > 0);
  /* a later failure replaces it */
  kvp_dtype d;
  assert_int_equal(kvp_dtype_from_string("no_such_dtype", &d), KVP_ERR_NOT_FOUND);
  assert_non_null(strstr(kvp_last_error_message(), "no_such_dtype"));
  /* the next successful fallible call clears it */
  assert_kvp_ok(kvp_check_abi(KVP_VERSION_NUMBER));
  assert_string_equal(kvp_last_error_message(), "");
}

static void test_status__last_error_copy_is_snprintf_like(void **state) {
  (void)state;
  kvp_dtype d;
  assert_int_equal(kvp_dtype_from_string("definitely_not_a_dtype", &d), KVP_ERR_NOT_FOUND);
  const char *msg = kvp_last_error_message();
  char full[1024];
  snprintf(full, sizeof full, "%s", msg);
  const size_t len = strlen(full);
  assert_true(len > 0 && len < sizeof full - 1);
  /* cap 0 / NULL buffer: nothing written, the length returned */
  assert_int_equal(kvp_last_error_copy(NULL, 0), len);
  char buf[1024];
  memset(buf, '#', sizeof buf);
  assert_int_equal(kvp_last_error_copy(buf, 0), len);
  assert_int_equal(buf[0], '#');
  assert_int_equal(kvp_last_error_copy(NULL, 16), len);
  /* exact fit */
  memset(buf, '#', sizeof buf);
  assert_int_equal(kvp_last_error_copy(buf, len + 1), len);
  assert_string_equal(buf, full);
  assert_int_equal(buf[len + 1], '#');
  /* truncated: cap - 1 characters and a NUL, nothing beyond cap */
  memset(buf, '#', sizeof buf);
  assert_int_equal(kvp_last_error_copy(buf, 5), len);
  assert_memory_equal(buf, full, 4);
  assert_int_equal(buf[4], '\0');
  assert_int_equal(buf[5], '#');
  memset(buf, '#', sizeof buf);
  assert_int_equal(kvp_last_error_copy(buf, 1), len);
  assert_int_equal(buf[0], '\0');
  assert_int_equal(buf[1], '#');
  /* copying does not clear the message */
  assert_string_equal(kvp_last_error_message(), full);
  /* after a success the copy is empty */
  int64_t r;
  assert_kvp_ok(kvp_cdiv(4, 2, &r));
  memset(buf, '#', sizeof buf);
  assert_int_equal(kvp_last_error_copy(buf, sizeof buf), 0);
  assert_int_equal(buf[0], '\0');
}

static void test_status__version_queries_match_headers(void **state) {
  (void)state;
  assert_int_equal(kvp_version_number(), KVP_VERSION_NUMBER);
  assert_int_equal(KVP_VERSION_NUMBER, KVP_VERSION_MAJOR * 10000 + KVP_VERSION_MINOR * 100 + KVP_VERSION_PATCH);
  assert_non_null(kvp_version_string());
  assert_string_equal(kvp_version_string(), KVP_VERSION_STRING);
  char expect[64];
  snprintf(expect, sizeof expect, "%d.%d.%d", KVP_VERSION_MAJOR, KVP_VERSION_MINOR, KVP_VERSION_PATCH);
  assert_string_equal(kvp_version_string(), expect);
  assert_true(KVP_VERSION_CHECK(KVP_VERSION_MAJOR, KVP_VERSION_MINOR, KVP_VERSION_PATCH));
  assert_true(KVP_VERSION_CHECK(0, 0, 0));
  assert_false(KVP_VERSION_CHECK(KVP_VERSION_MAJOR + 1, 0, 0));
  const char *bi = kvp_build_info();
  assert_non_null(bi);
  assert_non_null(strstr(bi, KVP_VERSION_STRING));
  assert_non_null(strstr(bi, KVP_HAS_CUDA ? "cuda=on" : "cuda=off"));
  /* the CPU conversions' instruction-set level; KVP_CPU_ISA caps it (baseline always gets
   * baseline, avx2 never avx512) */
  const char *isa = strstr(bi, " cpu=");
  assert_non_null(isa);
  isa += 5;
  assert_true(strcmp(isa, "baseline") == 0 || strcmp(isa, "avx2") == 0 || strcmp(isa, "avx512") == 0);
  const char *want = getenv("KVP_CPU_ISA");
  if (want != NULL && strcmp(want, "baseline") == 0) assert_string_equal(isa, "baseline");
  if (want != NULL && strcmp(want, "avx2") == 0) assert_string_not_equal(isa, "avx512");
  assert_ptr_equal(kvp_build_info(), bi); /* built once */
}

static void test_status__check_abi(void **state) {
  (void)state;
  const uint32_t major = KVP_VERSION_MAJOR;
  assert_kvp_ok(kvp_check_abi(KVP_VERSION_NUMBER));
  /* an older header of the same major is fine */
  assert_kvp_ok(kvp_check_abi(major * 10000u));
  /* a newer header (even a patch) may declare what this library lacks */
  assert_kvp_status(kvp_check_abi(KVP_VERSION_NUMBER + 1), KVP_ERR_VERSION_MISMATCH, "");
  assert_kvp_status(kvp_check_abi(KVP_VERSION_NUMBER + 100), KVP_ERR_VERSION_MISMATCH, "");
  /* another major */
  assert_kvp_status(kvp_check_abi((major + 1) * 10000u), KVP_ERR_VERSION_MISMATCH, "");
  if (major > 0) assert_kvp_status(kvp_check_abi((major - 1) * 10000u + 9999u), KVP_ERR_VERSION_MISMATCH, "");
  assert_kvp_status(kvp_check_abi(0xFFFFFFFFu), KVP_ERR_VERSION_MISMATCH, "");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_status__every_code_has_its_name),
      cmocka_unit_test(test_status__unknown_codes_have_a_generic_name),
      cmocka_unit_test(test_status__codes_are_distinct_and_in_their_ranges),
      cmocka_unit_test(test_status__message_set_on_failure_cleared_on_success),
      cmocka_unit_test(test_status__last_error_copy_is_snprintf_like),
      cmocka_unit_test(test_status__version_queries_match_headers),
      cmocka_unit_test(test_status__check_abi),
  };
  return cmocka_run_group_tests_name("status", tests, NULL, NULL);
}
