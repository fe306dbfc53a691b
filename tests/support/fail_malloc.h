/* Failure injection below the library's host allocator hook: every malloc of the process (libc's
 * and the C++ runtime's included) can be made to fail. Linking these functions into a test
 * replaces malloc for that whole executable. */
#ifndef KVP_TEST_FAIL_MALLOC_H
#define KVP_TEST_FAIL_MALLOC_H

/* 1 when malloc can be made to fail in this build (0 under AddressSanitizer). */
int kvp_test_fail_malloc_available(void);
/* Counting from this call, malloc call n (from 0) and every later one fail with ENOMEM; n < 0
 * disarms. */
void kvp_test_fail_malloc_from(long n);
/* malloc calls counted since the last kvp_test_fail_malloc_from() while armed. */
long kvp_test_malloc_calls(void);

#endif
