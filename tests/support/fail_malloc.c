/* The test side of the LD_PRELOAD allocation-failure shim (tests/oom/fail_malloc.c): its control
 * functions, found in the process with dlsym. */
#define _GNU_SOURCE
#include "fail_malloc.h"

#include <dlfcn.h>
#include <stdlib.h>

typedef struct shim {
  void (*arm)(long, int);
  long (*disarm)(void);
  long (*attempts)(void);
} shim;

static const shim *the_shim(void) {
  static shim s;
  static int looked;
  if (!looked) {
    looked = 1;
    s.arm = (void (*)(long, int))dlsym(RTLD_DEFAULT, "kvp_oom_shim_arm");
    s.disarm = (long (*)(void))dlsym(RTLD_DEFAULT, "kvp_oom_shim_disarm");
    s.attempts = (long (*)(void))dlsym(RTLD_DEFAULT, "kvp_oom_shim_attempts");
  }
  return s.arm != NULL && s.disarm != NULL && s.attempts != NULL ? &s : NULL;
}

int kvp_test_fail_malloc_available(void) { return the_shim() != NULL; }

void kvp_test_fail_malloc_arm(long n, int only_one) {
  if (the_shim() == NULL) abort(); /* callers check kvp_test_fail_malloc_available() first */
  the_shim()->arm(n, only_one);
}

long kvp_test_fail_malloc_disarm(void) { return the_shim() ? the_shim()->disarm() : 0; }

long kvp_test_malloc_calls(void) { return the_shim() ? the_shim()->attempts() : 0; }
