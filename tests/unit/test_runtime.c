/* The CPU runtime (the library's thread pool) under what a process may do around it: fork() after
 * parallel work (pre-fork servers, Python multiprocessing), fork() while another thread runs a
 * parallel job, and an OS that refuses to create threads. Each child runs parallel serializations
 * and concatenates and must exit 0 before a deadline; a hung child is killed and fails the test.
 * KVP_NUM_THREADS is set to 4 before the first call, so the paths use helper threads even on a
 * 2-CPU machine. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "support.h"
#include "workload.h"

enum { kTokens = 512, kDeadlineMs = 60000, kParked = 8 };

/* A thread that waits forever (until its process exits). */
static void *parked_thread(void *arg) {
  (void)arg;
  for (;;) pause();
  return NULL;
}

/* Threads of this process (/proc/self/status), or -1. */
static int thread_count(void) {
  char line[256];
  int n = -1;
  FILE *f = fopen("/proc/self/status", "r");
  if (f == NULL) return -1;
  while (fgets(line, sizeof line, f) != NULL)
    if (sscanf(line, "Threads: %d", &n) == 1) break;
  fclose(f);
  return n;
}

/* Virtual size of this process in bytes (/proc/self/statm), or 0. */
static size_t virtual_bytes(void) {
  unsigned long pages = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f == NULL) return 0;
  if (fscanf(f, "%lu", &pages) != 1) pages = 0;
  fclose(f);
  return (size_t)pages * (size_t)sysconf(_SC_PAGESIZE);
}

/* Waits for the child; kills it after the deadline. Fails the test unless it exited 0. */
static void wait_child(pid_t pid, const char *what) {
  int status = 0, waited_ms = 0;
  for (;;) {
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    assert_int_equal(r, 0);
    if (waited_ms >= kDeadlineMs) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      fail_msg("%s: the child hung (killed after %d s)", what, kDeadlineMs / 1000);
    }
    usleep(10000);
    waited_ms += 10;
  }
  if (!WIFEXITED(status)) fail_msg("%s: the child died of signal %d", what, WIFSIGNALED(status) ? WTERMSIG(status) : -1);
  if (WEXITSTATUS(status) != 0) fail_msg("%s: the child failed at step %d", what, WEXITSTATUS(status));
}

/* In a child: a parallel concatenate into layer 1 and a parallel serialization of the whole cache,
 * the load of `blob` into a new cache (a parallel deserialization) whose own blob must equal it.
 * Returns 0 or the failing step. */
static int child_parallel_work(kvp_test_workload *w, const unsigned char *blob, size_t len) {
  unsigned char *again = NULL, *mine = NULL;
  size_t again_len = 0, mine_len = 0;
  kvp_cache *copy = NULL;
  int rc = 0;
  if (kvp_test_workload_write(w, 1) != KVP_OK) return 10;
  if (kvp_test_serialize_alloc(w->cache, &mine, &mine_len) != KVP_OK) return 11;
  if (mine_len != len) rc = 12;
  if (rc == 0 && kvp_deserialize_new(blob, len, NULL, &copy) != KVP_OK) rc = 13;
  if (rc == 0 && kvp_test_serialize_alloc(copy, &again, &again_len) != KVP_OK) rc = 14;
  if (rc == 0 && (again_len != len || memcmp(again, blob, len) != 0)) rc = 15;
  kvp_cache_destroy(copy);
  free(again);
  free(mine);
  return rc;
}

static void test_runtime__fork_after_parallel_work(void **state) {
  kvp_test_workload w;
  unsigned char *blob;
  size_t len;
  pid_t pid;
  (void)state;
  assert_kvp_ok(kvp_test_workload_init(&w, 2, kTokens, 1));
  assert_kvp_ok(kvp_test_workload_write(&w, 0));
  assert_kvp_ok(kvp_test_serialize_alloc(w.cache, &blob, &len));
  assert_true(len >= 256 * 1024);
  assert_true(thread_count() >= 2); /* the parallel paths started helpers */
  pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    int rc = child_parallel_work(&w, blob, len);
    if (rc == 0 && thread_count() < 2) rc = 20; /* the child made helpers of its own */
    _exit(rc);
  }
  wait_child(pid, "fork after a parallel serialize");
  /* The parent's runtime is untouched. */
  assert_kvp_ok(kvp_test_workload_write(&w, 1));
  free(blob);
  kvp_test_workload_free(&w);
}

typedef struct busy_ctx {
  kvp_test_workload *w;
  volatile int stop;
  int failures;
} busy_ctx;

static void *busy_serializer(void *arg) {
  busy_ctx *c = (busy_ctx *)arg;
  while (!c->stop) {
    unsigned char *b;
    size_t n;
    if (kvp_test_serialize_alloc(c->w->cache, &b, &n) != KVP_OK) ++c->failures;
    free(b);
  }
  return NULL;
}

static void test_runtime__fork_while_another_thread_runs_parallel_jobs(void **state) {
  kvp_test_workload w, mine;
  unsigned char *blob;
  size_t len;
  busy_ctx ctx;
  pthread_t t;
  int i;
  (void)state;
  assert_kvp_ok(kvp_test_workload_init(&w, 2, kTokens, 2));
  assert_kvp_ok(kvp_test_workload_write(&w, 0));
  assert_kvp_ok(kvp_test_workload_init(&mine, 2, kTokens, 3));
  assert_kvp_ok(kvp_test_serialize_alloc(mine.cache, &blob, &len));
  ctx.w = &w;
  ctx.stop = 0;
  ctx.failures = 0;
  assert_int_equal(pthread_create(&t, NULL, busy_serializer, &ctx), 0);
  for (i = 0; i < 10; ++i) { /* forks land at different points of the other thread's jobs */
    const pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) _exit(child_parallel_work(&mine, blob, len));
    wait_child(pid, "fork during another thread's parallel serialize");
  }
  ctx.stop = 1;
  pthread_join(t, NULL);
  assert_int_equal(ctx.failures, 0);
  free(blob);
  kvp_test_workload_free(&mine);
  kvp_test_workload_free(&w);
}

static void test_runtime__thread_creation_failure_falls_back_to_the_caller(void **state) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  (void)state;
  skip(); /* an address-space limit is fatal to the sanitizers' own allocators */
#else
  kvp_test_workload w;
  unsigned char *blob;
  size_t len;
  pid_t pid;
  (void)state;
  assert_kvp_ok(kvp_test_workload_init(&w, 2, kTokens, 4));
  assert_kvp_ok(kvp_test_workload_write(&w, 0));
  assert_kvp_ok(kvp_test_serialize_alloc(w.cache, &blob, &len));
  pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    /* The child's pool starts its helpers on its first parallel job: leave too little address
     * space for a thread stack (8 MiB), enough for the library's small allocations. */
    unsigned char *out = (unsigned char *)malloc(len);
    size_t written = 0;
    struct rlimit lim;
    pthread_t parked[kParked];
    int k;
    if (out == NULL) _exit(30);
    memset(out, 0, len);
    /* The child inherits the stacks of the parent's threads as a cache for new ones: park threads
     * on them first, so that a new thread needs a new mapping. */
    for (k = 0; k < kParked; ++k)
      if (pthread_create(&parked[k], NULL, parked_thread, NULL) != 0) _exit(37);
    lim.rlim_cur = lim.rlim_max = virtual_bytes() + (size_t)4 * 1024 * 1024;
    if (setrlimit(RLIMIT_AS, &lim) != 0) _exit(31);
    if (kvp_serialize(w.cache, NULL, out, len, &written) != KVP_OK) _exit(32);
    if (written != len || memcmp(out, blob, len) != 0) _exit(33);
    if (thread_count() != 1 + kParked) _exit(34); /* no helper could be made: the caller did it all */
    if (kvp_test_workload_write(&w, 1) != KVP_OK) _exit(35);
    if (kvp_serialize(w.cache, NULL, out, len, &written) != KVP_OK) _exit(36);
    _exit(0);
  }
  wait_child(pid, "thread creation refused");
  free(blob);
  kvp_test_workload_free(&w);
#endif
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_runtime__fork_after_parallel_work),
      cmocka_unit_test(test_runtime__fork_while_another_thread_runs_parallel_jobs),
      cmocka_unit_test(test_runtime__thread_creation_failure_falls_back_to_the_caller),
  };
  setenv("KVP_NUM_THREADS", "4", 0);
  return cmocka_run_group_tests_name("runtime", tests, NULL, NULL);
}
