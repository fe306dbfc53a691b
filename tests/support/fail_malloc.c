/* malloc that a test can make fail: this file defines malloc(), so an executable that uses it
 * (and only such an executable: the support library is static) routes every malloc of the
 * process through here, the C++ runtime's operator new and libc's own (fopen) included. Not in
 * AddressSanitizer builds, whose runtime owns malloc. */
#include "fail_malloc.h"

#include <errno.h>
#include <stddef.h>

#if defined(__SANITIZE_ADDRESS__)

int kvp_test_fail_malloc_available(void) { return 0; }
void kvp_test_fail_malloc_from(long n) { (void)n; }
long kvp_test_malloc_calls(void) { return 0; }

#else

extern void *__libc_malloc(size_t size);

static long g_fail_from = -1;
static long g_calls;

void *malloc(size_t size) {
  const long fail_from = __atomic_load_n(&g_fail_from, __ATOMIC_RELAXED);
  if (fail_from >= 0 && __atomic_fetch_add(&g_calls, 1, __ATOMIC_RELAXED) >= fail_from) {
    errno = ENOMEM;
    return NULL;
  }
  return __libc_malloc(size);
}

int kvp_test_fail_malloc_available(void) { return 1; }

void kvp_test_fail_malloc_from(long n) {
  __atomic_store_n(&g_calls, 0, __ATOMIC_RELAXED);
  __atomic_store_n(&g_fail_from, n, __ATOMIC_RELAXED);
}

long kvp_test_malloc_calls(void) { return __atomic_load_n(&g_calls, __ATOMIC_RELAXED); }

#endif
