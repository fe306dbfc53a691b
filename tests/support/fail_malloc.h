/* Failure injection below the library's host allocator hook, through the LD_PRELOAD shim
 * tests/oom/fail_malloc.c: every malloc-family call of the process (libc's and the C++ runtime's
 * operator new included) can be made to fail. CMake runs the tests that use it with LD_PRELOAD set
 * (tests/oom/tests.cmake); without the shim (AddressSanitizer builds, a test run by hand) they skip. */
#ifndef KVP_TEST_FAIL_MALLOC_H
#define KVP_TEST_FAIL_MALLOC_H

/* 1 when the shim is loaded into this process. */
int kvp_test_fail_malloc_available(void);
/* Lets n more allocations through (in any thread), then fails the next one (only_one != 0) or
 * every later one, until kvp_test_fail_malloc_disarm(). */
void kvp_test_fail_malloc_arm(long n, int only_one);
/* Stops failing; returns the allocations attempted since the arm. */
long kvp_test_fail_malloc_disarm(void);
/* Allocations attempted since the arm, while armed. */
long kvp_test_malloc_calls(void);

#endif
