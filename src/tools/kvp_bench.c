/* `kvp bench`: a quick look at the library's speed on this machine, through the public API, on
 * the CPU. Three parts, each against the physical limit measured in the same run:
 *   - kvp_concatenate of a Llama-3-8B-shaped layer (8 KV heads x 128, bf16, page 16, v3) for
 *     several token counts, against memcpy of the same K+V bytes;
 *   - kvp_serialize and kvp_deserialize_into of a whole cache, against memcpy of the blob's bytes;
 *   - the page pool: nanoseconds per page allocated and freed, and the time to prefix-match a
 *     128k-token prompt.
 * Every time is the best of repeated runs over at least --min-ms milliseconds. The full
 * benchmarks (more shapes, thread counts, the CUDA backend) are the bench_* executables of the
 * build tree's tests/ folder; see docs/benchmarks.md. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvp_tool.h"

#define BENCH_HEADS 8
#define BENCH_HEAD_DIM 128
#define BENCH_PAGE 16

static double bench_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int bench_fail(const char *what) {
  fprintf(stderr, "kvp bench: %s: %s\n", what, kvp_last_error_message());
  return 1;
}

/* One timed operation; returns 0, or non-zero after reporting why it failed. */
typedef int (*bench_op)(void *arg);

/* Best time of op(arg) over at least min_s seconds (and at least 3 runs); -1 when op fails. */
static double best_time(bench_op op, void *arg, double min_s) {
  const double t_end = bench_now() + min_s;
  double best = 1e30;
  int runs;
  for (runs = 0; runs < 3 || bench_now() < t_end; ++runs) {
    const double t0 = bench_now();
    if (op(arg) != 0) return -1.0;
    const double dt = bench_now() - t0;
    if (dt < best) best = dt;
  }
  return best;
}

typedef struct copy_op {
  void *dst;
  const void *src;
  size_t n;
} copy_op;

static int run_memcpy(void *arg) {
  const copy_op *c = (const copy_op *)arg;
  memcpy(c->dst, c->src, c->n);
  __asm__ __volatile__("" : : "r"(c->dst) : "memory"); /* the copy must happen */
  return 0;
}

/* Best time of memcpy(dst, src, n) over at least min_s seconds. */
static double best_memcpy(void *dst, const void *src, size_t n, double min_s) {
  copy_op c;
  c.dst = dst;
  c.src = src;
  c.n = n;
  return best_time(run_memcpy, &c, min_s);
}

/* A CPU cache for the Llama-3-8B shape with `pages` pages (page 0 included). */
static int make_cache(int64_t layers, int64_t pages, int64_t max_len, kvp_config *cfg, kvp_cache **cache) {
  if (kvp_tool_config_for_pages(cfg, layers, BENCH_HEADS, BENCH_HEAD_DIM, max_len, BENCH_PAGE, KVP_DTYPE_BF16,
                                KVP_LAYOUT_V3, pages) != 0)
    return bench_fail("config");
  if (kvp_cache_create(cfg, NULL, cache) != KVP_OK) return bench_fail("cache");
  return 0;
}

static uint32_t bench_rand(uint32_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 17;
  *s ^= *s << 5;
  return *s;
}

typedef struct concat_op {
  kvp_cache *cache;
  kvp_tensor k, v;
  const kvp_metadata *md;
} concat_op;

static int run_concat(void *arg) {
  const concat_op *c = (const concat_op *)arg;
  return kvp_concatenate(c->cache, 0, &c->k, &c->v, c->md, NULL) != KVP_OK ? bench_fail("concatenate") : 0;
}

/* kvp_concatenate vs memcpy for one token count; prints one table row. */
static int bench_concat_row(kvp_cache *cache, const kvp_config *cfg, int64_t tokens, double min_s) {
  const size_t row_elems = (size_t)BENCH_HEADS * BENCH_HEAD_DIM;
  const size_t in_bytes = (size_t)tokens * row_elems * 2;
  const int64_t usable = cfg->num_pages - 1;
  const int64_t per_req_max = tokens <= 64 ? 1 : 512; /* decode rows, or prefill chunks of 512 */
  const int64_t nreq = (tokens + per_req_max - 1) / per_req_max;
  kvp_batch_request *br = (kvp_batch_request *)calloc((size_t)nreq, sizeof *br);
  int32_t *pages = (int32_t *)malloc(sizeof(int32_t) * (size_t)(usable > 0 ? usable : 1));
  uint16_t *k = (uint16_t *)malloc(in_bytes), *v = (uint16_t *)malloc(in_bytes);
  unsigned char *scratch = (unsigned char *)malloc(2 * in_bytes);
  kvp_metadata *md = NULL;
  concat_op op;
  uint32_t seed = 12345u;
  int64_t i, used = 0, r;
  int rc = 1;
  double best, copy;
  if (br == NULL || pages == NULL || k == NULL || v == NULL || scratch == NULL) {
    fprintf(stderr, "kvp bench: out of memory\n");
    goto out;
  }
  for (i = 0; i < usable; ++i) pages[i] = (int32_t)(i + 1);
  for (i = usable - 1; i > 0; --i) { /* pages handed out in shuffled order, as in a long-running server */
    const int64_t j = (int64_t)(bench_rand(&seed) % (uint32_t)(i + 1));
    const int32_t t = pages[i];
    pages[i] = pages[j];
    pages[j] = t;
  }
  for (r = 0; r < nreq; ++r) {
    const int64_t n = (r + 1) * per_req_max <= tokens ? per_req_max : tokens - r * per_req_max;
    /* Decode rows have some history; prefill chunks start at a page boundary. */
    const int64_t computed = per_req_max == 1 ? 37 : 0;
    const int64_t np = (computed + n + BENCH_PAGE - 1) / BENCH_PAGE;
    if (used + np > usable) {
      fprintf(stderr, "kvp bench: cache too small for %" PRId64 " tokens\n", tokens);
      goto out;
    }
    br[r].num_computed = computed;
    br[r].num_scheduled = n;
    br[r].page_ids = pages + used;
    br[r].num_pages = np;
    used += np;
  }
  for (i = 0; i < (int64_t)(in_bytes / 2); ++i) {
    k[i] = (uint16_t)(0x3f80u + (bench_rand(&seed) & 0x7fu));
    v[i] = (uint16_t)(0xbf80u + (bench_rand(&seed) & 0x7fu));
  }
  /* All decode rows or all prefill chunks: the builder's row order is the request order. */
  if (kvp_metadata_build(cfg, br, (uint32_t)nreq, NULL, NULL, &md) != KVP_OK) {
    rc = bench_fail("metadata");
    goto out;
  }
  op.cache = cache;
  op.md = md;
  op.k = kvp_tool_host_tensor(k, KVP_DTYPE_BF16, tokens, BENCH_HEADS, BENCH_HEAD_DIM);
  op.v = kvp_tool_host_tensor(v, KVP_DTYPE_BF16, tokens, BENCH_HEADS, BENCH_HEAD_DIM);
  /* The first call touches the pages; it is not timed. */
  if (run_concat(&op) != 0 || (best = best_time(run_concat, &op, min_s)) < 0) goto out;
  memcpy(scratch, k, in_bytes); /* touch the destination once */
  copy = best_memcpy(scratch, k, in_bytes, min_s / 2) +
         best_memcpy(scratch + in_bytes, v, in_bytes, min_s / 2);
  printf("  %-8" PRId64 " %-9s %12.2f %10.2f %12.2f %8.2f\n", tokens, per_req_max == 1 ? "decode" : "prefill",
         best * 1e6, (double)(2 * in_bytes) / best / 1e9, (double)(2 * in_bytes) / copy / 1e9, copy / best);
  rc = 0;
out:
  kvp_metadata_destroy(md);
  free(br);
  free(pages);
  free(k);
  free(v);
  free(scratch);
  return rc;
}

static int bench_concatenate(double min_s, int quick) {
  static const int64_t counts[] = {1, 16, 256, 1024, 4096};
  const int n = quick ? 3 : (int)(sizeof counts / sizeof counts[0]);
  kvp_config cfg;
  kvp_cache *cache = NULL;
  int i, rc = 0;
  /* One layer with room for 4096 prefill tokens in pages of 16, plus decode history. */
  if (make_cache(1, 4096 / BENCH_PAGE + 64, 8192, &cfg, &cache) != 0) return 1;
  printf("kvp_concatenate, one layer: %d KV heads x %d, bf16 -> bf16 cache, v3, page %d, shuffled pages\n",
         BENCH_HEADS, BENCH_HEAD_DIM, BENCH_PAGE);
  printf("  %-8s %-9s %12s %10s %12s %8s\n", "tokens", "batch", "time (us)", "GB/s", "memcpy GB/s", "ratio");
  for (i = 0; i < n && rc == 0; ++i) rc = bench_concat_row(cache, &cfg, counts[i], min_s);
  printf("  (GB/s = K+V input bytes per second; ratio = memcpy time / concatenate time for the same bytes;\n"
         "   memcpy runs on one thread; kvpages may use several)\n\n");
  kvp_cache_destroy(cache);
  return rc;
}

typedef struct ser_op {
  kvp_cache *cache;
  void *blob;
  size_t size, written;
} ser_op;

static int run_serialize(void *arg) {
  ser_op *c = (ser_op *)arg;
  return kvp_serialize(c->cache, NULL, c->blob, c->size, &c->written) != KVP_OK ? bench_fail("serialize") : 0;
}

static int run_deserialize_into(void *arg) {
  const ser_op *c = (const ser_op *)arg;
  return kvp_deserialize_into(c->cache, c->blob, c->written, NULL, 0) != KVP_OK ? bench_fail("deserialize") : 0;
}

static int bench_serialization(double min_s, int quick) {
  const int64_t layers = 4, pages = quick ? 64 : 256; /* 64 KiB per page and layer: 16 or 64 MiB */
  kvp_config cfg;
  kvp_cache *cache = NULL;
  void *scratch = NULL;
  ser_op op = {NULL, NULL, 0, 0};
  double best_ser, best_de, copy;
  int rc = 1, l;
  if (make_cache(layers, pages, 4096, &cfg, &cache) != 0) return 1;
  op.cache = cache;
  for (l = 0; l < layers; ++l) { /* fill the cache with something other than zeros */
    kvp_tensor view;
    size_t j, bytes;
    if (kvp_cache_get_view(cache, (uint32_t)l, KVP_VIEW_PAGES, &view) != KVP_OK) {
      rc = bench_fail("view");
      goto out;
    }
    bytes = (size_t)view.shape[0] * (size_t)view.strides[0] * 2;
    for (j = 0; j < bytes; ++j) ((unsigned char *)view.data)[j] = (unsigned char)(j * 131u + (size_t)l);
  }
  if (kvp_serialized_size(cache, NULL, &op.size) != KVP_OK) {
    rc = bench_fail("serialized size");
    goto out;
  }
  op.blob = malloc(op.size);
  scratch = malloc(op.size);
  if (op.blob == NULL || scratch == NULL) {
    fprintf(stderr, "kvp bench: out of memory\n");
    goto out;
  }
  memset(scratch, 1, op.size);
  if ((best_ser = best_time(run_serialize, &op, min_s)) < 0 ||
      (best_de = best_time(run_deserialize_into, &op, min_s)) < 0)
    goto out;
  copy = best_memcpy(scratch, op.blob, op.written, min_s);
  printf("serialization, whole cache: %" PRId64 " layers x %" PRId64 " pages = %.1f MiB blob, XXH3 checksums on\n",
         layers, pages, (double)op.written / (1024.0 * 1024.0));
  printf("  %-22s %10s %10s %8s\n", "operation", "time (ms)", "GB/s", "ratio");
  printf("  %-22s %10.3f %10.2f %8.2f\n", "kvp_serialize", best_ser * 1e3, (double)op.written / best_ser / 1e9,
         copy / best_ser);
  printf("  %-22s %10.3f %10.2f %8.2f\n", "kvp_deserialize_into", best_de * 1e3, (double)op.written / best_de / 1e9,
         copy / best_de);
  printf("  %-22s %10.3f %10.2f %8s\n", "memcpy", copy * 1e3, (double)op.written / copy / 1e9, "1.00");
  printf("  (kvp_deserialize_into verifies every checksum before it writes, so it reads the blob twice;\n"
         "   memcpy runs on one thread; kvpages may use several)\n\n");
  rc = 0;
out:
  free(op.blob);
  free(scratch);
  kvp_cache_destroy(cache);
  return rc;
}

static int bench_pool(double min_s) {
  const int64_t tokens = 131072, pages = tokens / BENCH_PAGE + 2;
  kvp_config cfg;
  kvp_cache *cache = NULL;
  kvp_pool *pool = NULL;
  kvp_pool_options po = KVP_POOL_OPTIONS_INIT;
  int32_t *prompt = (int32_t *)malloc(sizeof(int32_t) * (size_t)tokens);
  double best_alloc = 1e30, best_free = 1e30, best_match = 1e30, t_end;
  int64_t i;
  int runs, rc = 1;
  if (prompt == NULL) {
    fprintf(stderr, "kvp bench: out of memory\n");
    return 1;
  }
  for (i = 0; i < tokens; ++i) prompt[i] = (int32_t)((i * 2654435761u) % 128000u);
  /* A 1-layer cache with 1 KV head keeps the memory small; the pool only does bookkeeping. */
  if (kvp_tool_config_for_pages(&cfg, 1, 1, BENCH_HEAD_DIM, tokens, BENCH_PAGE, KVP_DTYPE_BF16, KVP_LAYOUT_V3,
                                pages) != 0 ||
      kvp_cache_create(&cfg, NULL, &cache) != KVP_OK) {
    free(prompt);
    return bench_fail("cache");
  }
  /* Allocate and free a 128k-token sequence, one page per append, with the prefix cache off (the
   * allocator alone; bench_pool measures the same way). */
  po.max_sequences = 4;
  po.flags = KVP_POOL_FLAG_NO_PREFIX_CACHE;
  if (kvp_pool_create(cache, &po, &pool) != KVP_OK) {
    rc = bench_fail("pool");
    goto out;
  }
  t_end = bench_now() + min_s;
  for (runs = 0; runs < 3 || bench_now() < t_end; ++runs) {
    kvp_seq_id seq;
    double t0, t1, t2;
    if (kvp_pool_add_sequence(pool, NULL, 0, 0, 0, &seq, NULL) != KVP_OK) {
      rc = bench_fail("add sequence");
      goto out;
    }
    t0 = bench_now();
    for (i = 0; i < tokens; i += BENCH_PAGE)
      if (kvp_pool_append(pool, seq, prompt + i, BENCH_PAGE, NULL) != KVP_OK) {
        rc = bench_fail("append");
        goto out;
      }
    t1 = bench_now();
    if (kvp_pool_free_sequence(pool, seq) != KVP_OK) {
      rc = bench_fail("free");
      goto out;
    }
    t2 = bench_now();
    if (t1 - t0 < best_alloc) best_alloc = t1 - t0;
    if (t2 - t1 < best_free) best_free = t2 - t1;
  }
  /* Prefix match, on a pool with the prefix cache on: index the prompt once, then add it again and
   * again (a full hit each time). */
  kvp_pool_destroy(pool);
  pool = NULL;
  po.flags = 0;
  if (kvp_pool_create(cache, &po, &pool) != KVP_OK) {
    rc = bench_fail("pool");
    goto out;
  }
  {
    kvp_seq_id first, again;
    size_t reused = 0;
    if (kvp_pool_add_sequence(pool, prompt, (size_t)tokens, 0, 0, &first, NULL) != KVP_OK ||
        kvp_pool_set_computed(pool, first, (size_t)tokens) != KVP_OK) {
      rc = bench_fail("index the prompt");
      goto out;
    }
    t_end = bench_now() + min_s;
    for (runs = 0; runs < 3 || bench_now() < t_end; ++runs) {
      const double t0 = bench_now();
      double dt;
      if (kvp_pool_add_sequence(pool, prompt, (size_t)tokens, 0, KVP_POOL_ADD_FLAG_REUSE_ALL, &again, &reused) !=
          KVP_OK) {
        rc = bench_fail("prefix match");
        goto out;
      }
      dt = bench_now() - t0;
      if (dt < best_match) best_match = dt;
      if (reused != (size_t)tokens) {
        fprintf(stderr, "kvp bench: the prefix match reused %zu of %" PRId64 " tokens\n", reused, tokens);
        goto out;
      }
      if (kvp_pool_free_sequence(pool, again) != KVP_OK) {
        rc = bench_fail("free");
        goto out;
      }
    }
  }
  if (kvp_pool_check_invariants(pool) != KVP_OK) {
    rc = bench_fail("pool invariants");
    goto out;
  }
  printf("page pool, page %d, a 128k-token sequence (%" PRId64 " pages)\n", BENCH_PAGE, tokens / BENCH_PAGE);
  printf("  allocate, one page per kvp_pool_append  %8.1f ns/page   (target <= 100; prefix cache off)\n",
         best_alloc * 1e9 / (double)(tokens / BENCH_PAGE));
  printf("  free, kvp_pool_free_sequence            %8.1f ns/page   (target <= 100)\n",
         best_free * 1e9 / (double)(tokens / BENCH_PAGE));
  printf("  prefix-match the whole 128k prompt      %8.3f ms        (target < 1)\n\n", best_match * 1e3);
  rc = 0;
out:
  kvp_pool_destroy(pool);
  kvp_cache_destroy(cache);
  free(prompt);
  return rc;
}

int kvp_cmd_bench(int argc, char **argv) {
  int64_t min_ms = -1;
  int quick = 0, i, rc = 0;
  char date[64];
  time_t t = time(NULL);
  struct tm tmv;
  for (i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--quick") == 0) {
      quick = 1;
    } else if (strcmp(argv[i], "--min-ms") == 0 && i + 1 < argc) {
      if (kvp_tool_parse_int(argv[++i], &min_ms) != 0 || min_ms > 60000) {
        fprintf(stderr, "kvp bench: --min-ms needs an integer in [1, 60000]\n");
        return 2;
      }
    } else {
      fprintf(stderr, "usage: kvp bench [--quick] [--min-ms N]\n"
                      "  Times kvp_concatenate, serialization and the page pool on the CPU against memcpy.\n"
                      "  --quick     fewer sizes and 20 ms per measurement unless --min-ms is given (a smoke run)\n"
                      "  --min-ms N  measure each case for at least N ms (default 200); best time counts\n");
      return strcmp(argv[i], "--help") == 0 ? 0 : 2;
    }
  }
  if (min_ms < 0) min_ms = quick ? 20 : 200; /* an explicit --min-ms wins over --quick's 20 */
  gmtime_r(&t, &tmv);
  strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", &tmv);
  printf("%s\n", kvp_build_info());
  printf("device: CPU (%s), date: %s%s\n\n", getenv("KVP_NUM_THREADS") != NULL ? "KVP_NUM_THREADS set" : "all threads",
         date, quick ? ", --quick (numbers are rough)" : "");
  rc = bench_concatenate((double)min_ms / 1e3, quick);
  if (rc == 0) rc = bench_serialization((double)min_ms / 1e3, quick);
  if (rc == 0) rc = bench_pool((double)min_ms / 1e3);
  if (rc == 0)
    printf("More shapes, thread counts, conversions and the CUDA backend: the bench_* executables in the build "
           "tree's tests/ folder (docs/benchmarks.md).\n");
  return rc;
}
