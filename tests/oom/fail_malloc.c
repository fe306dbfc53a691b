/* An LD_PRELOAD allocation-failure injector for the OOM shim test (test_oom_shim.c). It replaces
 * malloc, calloc, realloc, posix_memalign, aligned_alloc, memalign and valloc (operator new in
 * libstdc++ calls malloc, so it fails too) and forwards to glibc's own allocator. Disarmed it
 * only forwards. kvp_oom_shim_arm(n, only_one) lets n more allocations through, in any thread,
 * then fails the next one (only_one != 0) or every later one, until kvp_oom_shim_disarm(), which
 * returns how many allocations were attempted since the arm (kvp_oom_shim_attempts() reads it
 * while armed). Tests reach them through tests/support/fail_malloc.h, which finds them with
 * dlsym(RTLD_DEFAULT, ...). glibc only: the
 * __libc_* entry points avoid dlsym(RTLD_NEXT), which itself allocates. Not for ASan builds,
 * whose runtime owns malloc. */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdint.h>

extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t size);
extern void *__libc_memalign(size_t align, size_t size);

static int g_armed, g_only_one;
static long g_left, g_attempts;

__attribute__((visibility("default"))) void kvp_oom_shim_arm(long n, int only_one) {
  __atomic_store_n(&g_attempts, 0, __ATOMIC_SEQ_CST);
  __atomic_store_n(&g_only_one, only_one, __ATOMIC_SEQ_CST);
  __atomic_store_n(&g_left, n, __ATOMIC_SEQ_CST);
  __atomic_store_n(&g_armed, 1, __ATOMIC_SEQ_CST);
}

__attribute__((visibility("default"))) long kvp_oom_shim_attempts(void) {
  return __atomic_load_n(&g_attempts, __ATOMIC_SEQ_CST);
}

__attribute__((visibility("default"))) long kvp_oom_shim_disarm(void) {
  __atomic_store_n(&g_armed, 0, __ATOMIC_SEQ_CST);
  return __atomic_load_n(&g_attempts, __ATOMIC_SEQ_CST);
}

/* 1 when this allocation must fail. */
static int should_fail(void) {
  if (!__atomic_load_n(&g_armed, __ATOMIC_RELAXED)) return 0;
  __atomic_add_fetch(&g_attempts, 1, __ATOMIC_SEQ_CST);
  const long left = __atomic_sub_fetch(&g_left, 1, __ATOMIC_SEQ_CST);
  return __atomic_load_n(&g_only_one, __ATOMIC_RELAXED) ? left == -1 : left < 0;
}

void *malloc(size_t size) {
  if (should_fail()) {
    errno = ENOMEM;
    return NULL;
  }
  return __libc_malloc(size);
}

void *calloc(size_t n, size_t size) {
  if (should_fail()) {
    errno = ENOMEM;
    return NULL;
  }
  return __libc_calloc(n, size);
}

void *realloc(void *p, size_t size) {
  if (size != 0 && should_fail()) {
    errno = ENOMEM;
    return NULL;
  }
  return __libc_realloc(p, size);
}

static int is_pow2(size_t a) { return a != 0 && (a & (a - 1)) == 0; }

int posix_memalign(void **out, size_t align, size_t size) {
  if (!is_pow2(align) || align % sizeof(void *) != 0) return EINVAL;
  if (should_fail()) return ENOMEM;
  void *p = __libc_memalign(align, size);
  if (p == NULL) return ENOMEM;
  *out = p;
  return 0;
}

void *aligned_alloc(size_t align, size_t size) {
  if (!is_pow2(align)) {
    errno = EINVAL;
    return NULL;
  }
  if (should_fail()) {
    errno = ENOMEM;
    return NULL;
  }
  return __libc_memalign(align, size);
}

void *memalign(size_t align, size_t size) {
  if (should_fail()) {
    errno = ENOMEM;
    return NULL;
  }
  return __libc_memalign(align, size);
}

void *valloc(size_t size) {
  if (should_fail()) {
    errno = ENOMEM;
    return NULL;
  }
  return __libc_memalign(4096, size);
}
