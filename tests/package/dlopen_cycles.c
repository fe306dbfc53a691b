/* Load/unload cycles of the library as a plugin host does them (issue 17, defect 6): each cycle
 * dlopen()s libkvpages (RTLD_LOCAL), uses it through kvp_get_api with the worker threads busy (a
 * parallel kvp_concatenate and a parallel serialization of >= 256 KiB), and dlclose()s it. After
 * each dlclose the library must really be gone (RTLD_NOLOAD finds nothing) and no thread of it
 * may be left; after a warm-up the resident memory must stay flat. A final fork() checks that no
 * fork handler of an unloaded copy is left behind.
 * Usage: dlopen_cycles <path to libkvpages.so> [cycles]. Set KVP_NUM_THREADS > 1. */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <kvpages.h>

#define CHECK(cond, ...)                                     \
  do {                                                       \
    if (!(cond)) {                                           \
      fprintf(stderr, "dlopen_cycles: FAILED %s: ", #cond);  \
      fprintf(stderr, __VA_ARGS__);                          \
      fputc('\n', stderr);                                   \
      exit(1);                                               \
    }                                                        \
  } while (0)

enum { kHeads = 8, kDim = 128, kPage = 16, kTokens = 320, kPages = kTokens / kPage, kWarmup = 50 };
/* Resident growth allowed after the warm-up: a leak of a thread stack, the handle table or a
 * cache per cycle would exceed it many times over. */
#define RSS_SLACK_BYTES (2L << 20)

static long status_field(const char *name) {
  char line[256];
  long v = -1;
  size_t n = strlen(name);
  FILE *f = fopen("/proc/self/status", "r");
  if (f == NULL) return -1;
  while (fgets(line, sizeof line, f) != NULL)
    if (strncmp(line, name, n) == 0 && line[n] == ':') {
      v = strtol(line + n + 1, NULL, 10);
      break;
    }
  fclose(f);
  return v;
}

static long rss_bytes(void) {
  long size = 0, resident = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f == NULL || fscanf(f, "%ld %ld", &size, &resident) != 2) resident = -1;
  if (f != NULL) fclose(f);
  return resident * sysconf(_SC_PAGESIZE);
}

static kvp_tensor input(float *data) {
  kvp_tensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.dtype = KVP_DTYPE_F32;
  t.ndim = 3;
  t.shape[0] = kTokens;
  t.shape[1] = kHeads;
  t.shape[2] = kDim;
  t.strides[0] = kHeads * kDim;
  t.strides[1] = kDim;
  t.strides[2] = 1;
  t.device_type = KVP_DEVICE_CPU;
  return t;
}

/* One use of the library: a cache, a parallel concatenate, a parallel serialize into `blob`. */
static void use(const kvp_api_v1 *api, const kvp_tensor *k, const kvp_tensor *v, unsigned char *blob, size_t cap) {
  kvp_config_options o;
  kvp_config cfg;
  kvp_cache *cache = NULL;
  kvp_metadata *md = NULL;
  kvp_batch_options bo;
  kvp_batch_request r;
  int32_t ids[kPages], order[1];
  size_t size = 0, written = 0;
  int i;
  CHECK(api->config_options_init(&o, sizeof o) == KVP_OK, "%s", api->last_error_message());
  o.num_hidden_layers = 1;
  o.num_kv_heads = kHeads;
  o.kv_head_dim_size = kDim;
  o.max_model_length = kTokens;
  o.page_size = kPage;
  o.kvdtype = KVP_DTYPE_F32;
  o.flags = KVP_CONFIG_FLAG_NO_SAFETY_MARGIN;
  o.budget_bytes = (int64_t)kPage * kHeads * kDim * 4 * 2 * (kPages + 1);
  CHECK(api->config_create(&o, &cfg) == KVP_OK, "%s", api->last_error_message());
  CHECK(api->cache_create(&cfg, NULL, &cache) == KVP_OK, "%s", api->last_error_message());
  for (i = 0; i < kPages; ++i) ids[i] = i + 1;
  r.num_computed = 0;
  r.num_scheduled = kTokens;
  r.page_ids = ids;
  r.num_pages = kPages;
  CHECK(api->batch_options_init(&bo, sizeof bo) == KVP_OK, "%s", api->last_error_message());
  bo.max_num_reqs = 1;
  bo.max_num_tokens = kTokens;
  CHECK(api->metadata_build(&cfg, &r, 1, &bo, order, &md) == KVP_OK, "%s", api->last_error_message());
  CHECK(api->concatenate(cache, 0, k, v, md, NULL) == KVP_OK, "%s", api->last_error_message());
  CHECK(api->serialized_size(cache, NULL, &size) == KVP_OK && size >= 256 * 1024 && size <= cap, "size %zu", size);
  CHECK(api->serialize(cache, NULL, blob, cap, &written) == KVP_OK, "%s", api->last_error_message());
  CHECK(api->metadata_destroy(md) == KVP_OK, "%s", api->last_error_message());
  CHECK(api->cache_destroy(cache) == KVP_OK, "%s", api->last_error_message());
}

/* The thread count, given up to 1 s to come back to `want`: pthread_join returns when a thread
 * has finished, but the kernel may list it in /proc a moment longer while it is reaped. */
static long settled_threads(long want) {
  const struct timespec ms = {0, 1000000};
  long n = status_field("Threads");
  int i;
  for (i = 0; i < 1000 && n != want; ++i) {
    nanosleep(&ms, NULL);
    n = status_field("Threads");
  }
  return n;
}

int main(int argc, char **argv) {
  const size_t n = (size_t)kTokens * kHeads * kDim, cap = (size_t)8 << 20;
  float *key = malloc(n * sizeof(float)), *value = malloc(n * sizeof(float));
  unsigned char *blob = malloc(cap);
  kvp_tensor k, v;
  long cycles, c, threads0, rss_warm = 0, rss_max = 0, threads_max = 0;
  size_t i;
  pid_t pid;
  int status = 0;

  CHECK(argc >= 2, "usage: dlopen_cycles <libkvpages.so> [cycles]");
  cycles = argc > 2 ? strtol(argv[2], NULL, 10) : 1000;
  CHECK(key != NULL && value != NULL && blob != NULL, "out of memory");
  for (i = 0; i < n; ++i) key[i] = value[i] = (float)(i % 977) * 0.25f;
  memset(blob, 0, cap);
  k = input(key);
  v = input(value);
  threads0 = status_field("Threads");
  for (c = 0; c < cycles; ++c) {
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    kvp_get_api_fn get;
    const kvp_api_v1 *api;
    long threads_in, threads_out, rss;
    CHECK(lib != NULL, "%s", dlerror());
    *(void **)(&get) = dlsym(lib, "kvp_get_api");
    CHECK(get != NULL, "%s", dlerror());
    api = get(KVP_API_VERSION_1);
    CHECK(api != NULL, "version 1 refused");
    use(api, &k, &v, blob, cap);
    threads_in = status_field("Threads");
    CHECK(c > 0 || threads_in > threads0, "the library used no worker thread (threads %ld; set KVP_NUM_THREADS)", threads_in);
    CHECK(dlclose(lib) == 0, "%s", dlerror());
    CHECK(dlopen(argv[1], RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD) == NULL, "cycle %ld: the library stayed loaded", c);
    threads_out = settled_threads(threads0);
    CHECK(threads_out == threads0, "cycle %ld: %ld threads after dlclose, %ld before the first dlopen", c, threads_out,
          threads0);
    if (threads_in > threads_max) threads_max = threads_in;
    rss = rss_bytes();
    if (c == kWarmup - 1) rss_warm = rss;
    if (c >= kWarmup && rss > rss_max) rss_max = rss;
  }
  printf("dlopen_cycles: %ld cycles; threads %ld before, up to %ld while loaded, %ld after each dlclose; ", cycles,
         threads0, threads_max, threads0);
  printf("RSS after %d warm-up cycles %ld KiB, max after %ld KiB (+%ld KiB)\n", kWarmup, rss_warm >> 10,
         rss_max >> 10, (rss_max - rss_warm) >> 10);
#if !defined(__SANITIZE_ADDRESS__) /* the sanitizer's quarantine holds freed memory on purpose */
  CHECK(cycles <= kWarmup || rss_max - rss_warm <= RSS_SLACK_BYTES, "RSS grew by %ld KiB after the warm-up",
        (rss_max - rss_warm) >> 10);
#endif
  pid = fork();
  CHECK(pid >= 0, "fork");
  if (pid == 0) _exit(0);
  CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0, "fork after the cycles");
  free(key);
  free(value);
  free(blob);
  return 0;
}
