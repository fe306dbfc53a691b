/* `kvp bench`: a quick look at the library's speed on this machine, through the public API, on
 * the CPU. Three parts, each against the physical limit measured in the same run:
 *   - kvp_concatenate of one layer of a model's shape (default Llama-3-8B's: 8 KV heads x 128,
 *     bf16; --shape or --hf for another model; page 16, v3) for several token counts, against
 *     memcpy of the same K+V bytes;
 *   - kvp_serialize and kvp_deserialize_into of a whole cache (4 layers, or the model's layers
 *     with --shape / --hf), against memcpy of the blob's bytes;
 *   - the page pool: nanoseconds per page allocated and freed, and the time to prefix-match a
 *     128k-token prompt.
 * Every time is the best of repeated runs over at least --min-ms milliseconds. The results are
 * printed as tables, or as one JSON object with --json. The full benchmarks (more shapes, thread counts, the CUDA backend) are the bench_* executables of the
 * build tree's tests/ folder; see docs/benchmarks.md. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvp_tool.h"

#define BENCH_HEAD_DIM 128 /* of the page pool's one-head cache */
#define BENCH_PAGE 16
#define BENCH_MAX_INPUT_BYTES (64ll << 20) /* largest K (and V) input of a concatenate row */

/* The model shape of the concatenate and serialization parts. */
typedef struct bench_shape {
  int64_t layers; /* of the serialized cache; concatenate writes one layer */
  int64_t kv_heads, head_dim;
  kvp_dtype dtype;
  const char *source; /* "default", "--shape" or the --hf path */
} bench_shape;

/* One row of the concatenate table. */
typedef struct concat_result {
  int64_t tokens;
  const char *batch; /* "decode" or "prefill" */
  double seconds, bytes, memcpy_seconds;
} concat_result;

#define BENCH_MAX_ROWS 5
typedef struct bench_results {
  concat_result concat[BENCH_MAX_ROWS];
  int num_concat;
  int64_t ser_layers, ser_pages;
  double blob_bytes, ser_s, de_s, ser_copy_s;
  double alloc_ns, free_ns, match_ms;
} bench_results;


static int bench_fail(const char *what) {
  fprintf(stderr, "kvp bench: %s: %s\n", what, kvp_last_error_message());
  return 1;
}

/* One timed operation; returns 0, or non-zero after reporting why it failed. */
typedef int (*bench_op)(void *arg);

/* Best time of op(arg) over at least min_s seconds (and at least 3 runs); -1 when op fails. */
static double best_time(bench_op op, void *arg, double min_s) {
  const double t_end = kvp_tool_now() + min_s;
  double best = 1e30;
  int runs;
  for (runs = 0; runs < 3 || kvp_tool_now() < t_end; ++runs) {
    const double t0 = kvp_tool_now();
    if (op(arg) != 0) return -1.0;
    const double dt = kvp_tool_now() - t0;
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

/* A CPU cache of the shape with `layers` layers and `pages` pages (page 0 included). */
static int make_cache(const bench_shape *sh, int64_t layers, int64_t pages, int64_t max_len, kvp_config *cfg,
                      kvp_cache **cache) {
  if (kvp_tool_config_for_pages(cfg, layers, sh->kv_heads, sh->head_dim, max_len, BENCH_PAGE, sh->dtype,
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

/* n random values in [lo, lo + 1) in the dtype, through kvp_convert from f32. */
static int fill_random(void *dst, kvp_dtype dtype, size_t n, float lo, uint32_t *seed) {
  float *f = (float *)malloc(n * sizeof *f);
  size_t i;
  int rc;
  if (f == NULL) return -1;
  for (i = 0; i < n; ++i) f[i] = lo + (float)(bench_rand(seed) & 0xffffu) / 65536.0f;
  rc = kvp_convert(f, KVP_DTYPE_F32, dst, dtype, n) == KVP_OK ? 0 : -1;
  free(f);
  return rc;
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

/* Pages handed out in shuffled order, as in a long-running server. */
static void shuffled_pages(int32_t *pages, int64_t n, uint32_t *seed) {
  int64_t i;
  for (i = 0; i < n; ++i) pages[i] = (int32_t)(i + 1);
  for (i = n - 1; i > 0; --i) {
    const int64_t j = (int64_t)(bench_rand(seed) % (uint32_t)(i + 1));
    const int32_t t = pages[i];
    pages[i] = pages[j];
    pages[j] = t;
  }
}

/* The requests of a batch of `tokens` new tokens: decode rows (with some history) for up to 64
 * tokens, else prefill chunks of 512 starting at a page boundary. Returns the request count, or
 * -1 when the cache is too small. */
static int64_t batch_requests(kvp_batch_request *br, int64_t tokens, int32_t *pages, int64_t usable) {
  const int64_t per_req_max = tokens <= 64 ? 1 : 512;
  const int64_t nreq = (tokens + per_req_max - 1) / per_req_max;
  int64_t r, used = 0;
  for (r = 0; r < nreq; ++r) {
    const int64_t n = (r + 1) * per_req_max <= tokens ? per_req_max : tokens - r * per_req_max;
    const int64_t computed = per_req_max == 1 ? 37 : 0;
    const int64_t np = (computed + n + BENCH_PAGE - 1) / BENCH_PAGE;
    if (used + np > usable) return -1;
    br[r].num_computed = computed;
    br[r].num_scheduled = n;
    br[r].page_ids = pages + used;
    br[r].num_pages = np;
    used += np;
  }
  return nreq;
}

/* kvp_concatenate vs memcpy for one token count into *res. */
static int bench_concat_row(kvp_cache *cache, const kvp_config *cfg, const bench_shape *sh, int64_t tokens,
                            double min_s, concat_result *res) {
  const size_t elems = (size_t)tokens * (size_t)sh->kv_heads * (size_t)sh->head_dim;
  const size_t in_bytes = elems * (kvp_dtype_bits(sh->dtype) / 8);
  const int64_t usable = cfg->num_pages - 1;
  kvp_batch_request *br = (kvp_batch_request *)calloc((size_t)tokens, sizeof *br);
  int32_t *pages = (int32_t *)malloc(sizeof(int32_t) * (size_t)(usable > 0 ? usable : 1));
  unsigned char *k = (unsigned char *)malloc(in_bytes), *v = (unsigned char *)malloc(in_bytes);
  unsigned char *scratch = (unsigned char *)malloc(2 * in_bytes);
  kvp_metadata *md = NULL;
  concat_op op;
  uint32_t seed = 12345u;
  int64_t nreq;
  int rc = 1;
  double best;
  if (br == NULL || pages == NULL || k == NULL || v == NULL || scratch == NULL ||
      fill_random(k, sh->dtype, elems, 1.0f, &seed) != 0 || fill_random(v, sh->dtype, elems, -2.0f, &seed) != 0) {
    fprintf(stderr, "kvp bench: out of memory\n");
    goto out;
  }
  shuffled_pages(pages, usable, &seed);
  if ((nreq = batch_requests(br, tokens, pages, usable)) < 0) {
    fprintf(stderr, "kvp bench: cache too small for %" PRId64 " tokens\n", tokens);
    goto out;
  }
  /* All decode rows or all prefill chunks: the builder's row order is the request order. */
  if (kvp_metadata_build(cfg, br, (uint32_t)nreq, NULL, NULL, &md) != KVP_OK) {
    rc = bench_fail("metadata");
    goto out;
  }
  op.cache = cache;
  op.md = md;
  op.k = kvp_tool_host_tensor(k, sh->dtype, tokens, sh->kv_heads, sh->head_dim);
  op.v = kvp_tool_host_tensor(v, sh->dtype, tokens, sh->kv_heads, sh->head_dim);
  /* The first call touches the pages; it is not timed. */
  if (run_concat(&op) != 0 || (best = best_time(run_concat, &op, min_s)) < 0) goto out;
  memcpy(scratch, k, in_bytes); /* touch the destination once */
  res->tokens = tokens;
  res->batch = tokens <= 64 ? "decode" : "prefill";
  res->seconds = best;
  res->bytes = (double)(2 * in_bytes);
  res->memcpy_seconds =
      best_memcpy(scratch, k, in_bytes, min_s / 2) + best_memcpy(scratch + in_bytes, v, in_bytes, min_s / 2);
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

static int bench_concatenate(const bench_shape *sh, double min_s, int quick, bench_results *res) {
  static const int64_t counts[] = {1, 16, 256, 1024, 4096};
  const int n = quick ? 3 : (int)(sizeof counts / sizeof counts[0]);
  const int64_t row_bytes = sh->kv_heads * sh->head_dim * (int64_t)(kvp_dtype_bits(sh->dtype) / 8);
  kvp_config cfg;
  kvp_cache *cache = NULL;
  int i, rc = 0;
  /* One layer with room for 4096 prefill tokens in pages of 16, plus decode history. */
  if (make_cache(sh, 1, 4096 / BENCH_PAGE + 64, 8192, &cfg, &cache) != 0) return 1;
  res->num_concat = 0;
  for (i = 0; i < n && rc == 0; ++i)
    if (counts[i] * row_bytes <= BENCH_MAX_INPUT_BYTES) /* the largest rows of huge shapes are left out */
      rc = bench_concat_row(cache, &cfg, sh, counts[i], min_s, &res->concat[res->num_concat++]);
  kvp_cache_destroy(cache);
  return rc;
}

static void print_concatenate(const bench_shape *sh, const bench_results *res) {
  int i;
  printf("kvp_concatenate, one layer: %" PRId64 " KV heads x %" PRId64 ", %s -> %s cache, v3, page %d, shuffled pages\n",
         sh->kv_heads, sh->head_dim, kvp_dtype_name(sh->dtype), kvp_dtype_name(sh->dtype), BENCH_PAGE);
  printf("  %-8s %-9s %12s %10s %12s %8s\n", "tokens", "batch", "time (us)", "GB/s", "memcpy GB/s", "ratio");
  for (i = 0; i < res->num_concat; ++i) {
    const concat_result *r = &res->concat[i];
    printf("  %-8" PRId64 " %-9s %12.2f %10.2f %12.2f %8.2f\n", r->tokens, r->batch, r->seconds * 1e6,
           r->bytes / r->seconds / 1e9, r->bytes / r->memcpy_seconds / 1e9, r->memcpy_seconds / r->seconds);
  }
  printf("  (GB/s = K+V input bytes per second; ratio = memcpy time / concatenate time for the same bytes;\n"
         "   memcpy runs on one thread; kvpages may use several)\n\n");
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

/* Fills every layer of the cache with something other than zeros. */
static int fill_cache(kvp_cache *cache, int64_t layers) {
  kvp_layout_info li = KVP_LAYOUT_INFO_INIT;
  int64_t l;
  if (kvp_cache_get_layout(cache, &li) != KVP_OK) return bench_fail("layout");
  for (l = 0; l < layers; ++l) {
    kvp_tensor view;
    int64_t j;
    if (kvp_cache_get_view(cache, (uint32_t)l, KVP_VIEW_PAGES, &view) != KVP_OK) return bench_fail("view");
    for (j = 0; j < li.layer_bytes; ++j) ((unsigned char *)view.data)[j] = (unsigned char)(j * 131 + l);
  }
  return 0;
}

/* Pages of the serialized cache: a blob of about 16 MiB (quick) or 64 MiB, at least one page
 * besides the null page. */
static int64_t ser_pages(const bench_shape *sh, int64_t layers, int quick) {
  const int64_t target = quick ? 16ll << 20 : 64ll << 20;
  int64_t page_bytes = 0, pages;
  if (kvp_page_size_bytes(BENCH_PAGE, sh->kv_heads, sh->head_dim, sh->dtype, &page_bytes) != KVP_OK ||
      page_bytes <= 0)
    return 2;
  pages = target / (page_bytes * layers);
  return pages < 2 ? 2 : pages;
}

static int bench_serialization(const bench_shape *sh, double min_s, int quick, bench_results *res) {
  const int64_t layers = sh->layers, pages = ser_pages(sh, sh->layers, quick);
  kvp_config cfg;
  kvp_cache *cache = NULL;
  void *scratch = NULL;
  ser_op op = {NULL, NULL, 0, 0};
  int rc = 1;
  if (make_cache(sh, layers, pages, 4096, &cfg, &cache) != 0) return 1;
  op.cache = cache;
  if (fill_cache(cache, layers) != 0) goto out;
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
  if ((res->ser_s = best_time(run_serialize, &op, min_s)) < 0 ||
      (res->de_s = best_time(run_deserialize_into, &op, min_s)) < 0)
    goto out;
  res->ser_copy_s = best_memcpy(scratch, op.blob, op.written, min_s);
  res->ser_layers = layers;
  res->ser_pages = cfg.num_pages;
  res->blob_bytes = (double)op.written;
  rc = 0;
out:
  free(op.blob);
  free(scratch);
  kvp_cache_destroy(cache);
  return rc;
}

static void print_serialization(const bench_results *res) {
  const double b = res->blob_bytes;
  printf("serialization, whole cache: %" PRId64 " layers x %" PRId64 " pages = %.1f MiB blob, XXH3 checksums on\n",
         res->ser_layers, res->ser_pages, b / (1024.0 * 1024.0));
  printf("  %-22s %10s %10s %8s\n", "operation", "time (ms)", "GB/s", "ratio");
  printf("  %-22s %10.3f %10.2f %8.2f\n", "kvp_serialize", res->ser_s * 1e3, b / res->ser_s / 1e9,
         res->ser_copy_s / res->ser_s);
  printf("  %-22s %10.3f %10.2f %8.2f\n", "kvp_deserialize_into", res->de_s * 1e3, b / res->de_s / 1e9,
         res->ser_copy_s / res->de_s);
  printf("  %-22s %10.3f %10.2f %8s\n", "memcpy", res->ser_copy_s * 1e3, b / res->ser_copy_s / 1e9, "1.00");
  printf("  (kvp_deserialize_into verifies every checksum before it writes, so it reads the blob twice;\n"
         "   memcpy runs on one thread; kvpages may use several)\n\n");
}

static int bench_pool(double min_s, bench_results *res) {
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
  t_end = kvp_tool_now() + min_s;
  for (runs = 0; runs < 3 || kvp_tool_now() < t_end; ++runs) {
    kvp_seq_id seq;
    double t0, t1, t2;
    if (kvp_pool_add_sequence(pool, NULL, 0, 0, 0, &seq, NULL) != KVP_OK) {
      rc = bench_fail("add sequence");
      goto out;
    }
    t0 = kvp_tool_now();
    for (i = 0; i < tokens; i += BENCH_PAGE)
      if (kvp_pool_append(pool, seq, prompt + i, BENCH_PAGE, NULL) != KVP_OK) {
        rc = bench_fail("append");
        goto out;
      }
    t1 = kvp_tool_now();
    if (kvp_pool_free_sequence(pool, seq) != KVP_OK) {
      rc = bench_fail("free");
      goto out;
    }
    t2 = kvp_tool_now();
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
    t_end = kvp_tool_now() + min_s;
    for (runs = 0; runs < 3 || kvp_tool_now() < t_end; ++runs) {
      const double t0 = kvp_tool_now();
      double dt;
      if (kvp_pool_add_sequence(pool, prompt, (size_t)tokens, 0, KVP_POOL_ADD_FLAG_REUSE_ALL, &again, &reused) !=
          KVP_OK) {
        rc = bench_fail("prefix match");
        goto out;
      }
      dt = kvp_tool_now() - t0;
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
  res->alloc_ns = best_alloc * 1e9 / (double)(tokens / BENCH_PAGE);
  res->free_ns = best_free * 1e9 / (double)(tokens / BENCH_PAGE);
  res->match_ms = best_match * 1e3;
  rc = 0;
out:
  kvp_pool_destroy(pool);
  kvp_cache_destroy(cache);
  free(prompt);
  return rc;
}

static void print_pool(const bench_results *res) {
  printf("page pool, page %d, a 128k-token sequence (%d pages)\n", BENCH_PAGE, 131072 / BENCH_PAGE);
  printf("  allocate, one page per kvp_pool_append  %8.1f ns/page   (target <= 100; prefix cache off)\n", res->alloc_ns);
  printf("  free, kvp_pool_free_sequence            %8.1f ns/page   (target <= 100)\n", res->free_ns);
  printf("  prefix-match the whole 128k prompt      %8.3f ms        (target < 1)\n\n", res->match_ms);
}

/* The JSON output: one object, field names documented in docs/kvp-tool.md. */
static void print_json(const bench_shape *sh, const bench_results *res, int64_t min_ms, int quick, const char *date) {
  int i;
  printf("{\"command\":\"bench\",\"kvpages_version\":\"%s\",\"build_info\":", kvp_version_string());
  kvp_tool_json_string(stdout, kvp_build_info());
  printf(",\"date\":\"%s\",\"device\":\"cpu\",\"threads\":", date);
  kvp_tool_json_string(stdout, getenv("KVP_NUM_THREADS") != NULL ? getenv("KVP_NUM_THREADS") : "all");
  printf(",\"quick\":%s,\"min_ms\":%" PRId64 ",\"shape\":{\"source\":", quick ? "true" : "false", min_ms);
  kvp_tool_json_string(stdout, sh->source);
  printf(",\"layers\":%" PRId64 ",\"kv_heads\":%" PRId64 ",\"head_dim\":%" PRId64
         ",\"dtype\":\"%s\",\"layout\":\"v3\",\"page_size\":%d}",
         sh->layers, sh->kv_heads, sh->head_dim, kvp_dtype_name(sh->dtype), BENCH_PAGE);
  printf(",\"concatenate\":[");
  for (i = 0; i < res->num_concat; ++i) {
    const concat_result *r = &res->concat[i];
    printf("%s{\"tokens\":%" PRId64 ",\"batch\":\"%s\",\"seconds\":%.9g,\"bytes\":%.0f,\"gb_per_s\":%.6g"
           ",\"memcpy_seconds\":%.9g,\"memcpy_gb_per_s\":%.6g,\"ratio\":%.6g}",
           i ? "," : "", r->tokens, r->batch, r->seconds, r->bytes, r->bytes / r->seconds / 1e9, r->memcpy_seconds,
           r->bytes / r->memcpy_seconds / 1e9, r->memcpy_seconds / r->seconds);
  }
  printf("],\"serialization\":{\"layers\":%" PRId64 ",\"pages\":%" PRId64 ",\"blob_bytes\":%.0f"
         ",\"serialize_seconds\":%.9g,\"serialize_gb_per_s\":%.6g,\"deserialize_into_seconds\":%.9g"
         ",\"deserialize_into_gb_per_s\":%.6g,\"memcpy_seconds\":%.9g,\"memcpy_gb_per_s\":%.6g}",
         res->ser_layers, res->ser_pages, res->blob_bytes, res->ser_s, res->blob_bytes / res->ser_s / 1e9, res->de_s,
         res->blob_bytes / res->de_s / 1e9, res->ser_copy_s, res->blob_bytes / res->ser_copy_s / 1e9);
  printf(",\"pool\":{\"page_size\":%d,\"tokens\":131072,\"alloc_ns_per_page\":%.6g,\"free_ns_per_page\":%.6g"
         ",\"prefix_match_ms\":%.6g}}\n",
         BENCH_PAGE, res->alloc_ns, res->free_ns, res->match_ms);
}

static void bench_usage(FILE *f) {
  fprintf(f,
          "usage: kvp bench [options]\n"
          "\n"
          "Times kvp_concatenate, serialization and the page pool on the CPU against memcpy.\n"
          "\n"
          "  --quick             fewer sizes and 20 ms per measurement unless --min-ms is given\n"
          "                      (a smoke run)\n"
          "  --min-ms N          measure each case for at least N ms, 1 to 60000 (default 200);\n"
          "                      the best time counts\n"
          "  --shape L,H,D[,DT]  the model's shape: layers, KV heads, head dim and optionally the\n"
          "                      dtype, e.g. 32,8,128,bf16 (default: Llama-3-8B's 8 KV heads x 128,\n"
          "                      bf16, and a 4-layer cache for serialization)\n"
          "  --hf FILE           the shape of a Hugging Face config.json (as kvp plan --hf)\n"
          "  --dtype NAME        cache and input dtype: " KVP_TOOL_DTYPES "\n"
          "  --json              print one JSON object (fields: docs/kvp-tool.md)\n");
}

static const kvp_tool_opt bench_opts[] = {{"--quick", NULL}, {"--min-ms", "N"},    {"--shape", "L,H,D[,DTYPE]"},
                                          {"--hf", "FILE"},  {"--dtype", "NAME"}, {"--json", NULL},
                                          {NULL, NULL}};

/* Parses "L,H,D" or "L,H,D,DTYPE". Returns NULL on success, else why not. */
static const char *parse_shape(const char *v, bench_shape *sh) {
  char buf[128];
  char *field[5];
  int n = 0;
  char *p;
  if (strlen(v) >= sizeof buf) return "too long";
  strcpy(buf, v);
  for (p = buf; n < 5; ++n) {
    field[n] = p;
    p = strchr(p, ',');
    if (p == NULL) {
      ++n;
      break;
    }
    *p++ = '\0';
  }
  if (n < 3 || n > 4 || p != NULL) return "expected LAYERS,KV_HEADS,HEAD_DIM[,DTYPE], e.g. 32,8,128,bf16";
  if (kvp_tool_parse_int(field[0], &sh->layers) || kvp_tool_parse_int(field[1], &sh->kv_heads) ||
      kvp_tool_parse_int(field[2], &sh->head_dim))
    return "layers, KV heads and head dim must be positive integers, e.g. 32,8,128,bf16";
  if (n == 4 && kvp_tool_parse_dtype(field[3], &sh->dtype) != 0) return "the dtype must be one of " KVP_TOOL_DTYPES;
  return NULL;
}

typedef struct bench_args {
  int64_t min_ms;
  int quick, json;
  bench_shape shape;
  kvp_dtype dtype; /* --dtype: overrides the shape's */
} bench_args;

/* One option's value into ba. Returns NULL when valid, else why not. */
static const char *bench_option(bench_args *ba, const kvp_tool_opt *opt, const char *v) {
  static char err[600];
  if (kvp_tool_is(opt, "--quick")) return ba->quick = 1, NULL;
  if (kvp_tool_is(opt, "--json")) return ba->json = 1, NULL;
  if (kvp_tool_is(opt, "--min-ms"))
    return kvp_tool_parse_int(v, &ba->min_ms) != 0 || ba->min_ms > 60000 ? "expected an integer in [1, 60000]" : NULL;
  if (kvp_tool_is(opt, "--dtype")) return kvp_tool_parse_dtype(v, &ba->dtype) ? "valid values are " KVP_TOOL_DTYPES : NULL;
  if (kvp_tool_is(opt, "--shape")) {
    ba->shape.source = "--shape";
    return parse_shape(v, &ba->shape);
  }
  /* --hf */
  {
    kvp_tool_shape hf;
    if (kvp_tool_read_hf_config(v, &hf, err, sizeof err) != 0) return err;
    ba->shape.layers = hf.layers;
    ba->shape.kv_heads = hf.kv_heads;
    ba->shape.head_dim = hf.head_dim;
    if (hf.dtype != KVP_DTYPE_INVALID) ba->shape.dtype = hf.dtype;
    ba->shape.source = v;
    return NULL;
  }
}

/* Returns -1 to go on, otherwise the exit code. */
static int parse_bench_args(int argc, char **argv, bench_args *ba) {
  kvp_tool_args a;
  const kvp_tool_opt *opt;
  const char *v, *why;
  int r;
  kvp_tool_args_init(&a, argc, argv, "kvp bench", bench_opts);
  while ((r = kvp_tool_next_arg(&a, &opt, &v)) != KVP_TOOL_ARG_END) {
    if (r == KVP_TOOL_ARG_HELP) return bench_usage(stdout), 0;
    if (r == KVP_TOOL_ARG_ERROR) return 2;
    if (r == KVP_TOOL_ARG_POSITIONAL) {
      fprintf(stderr, "kvp bench: unexpected argument '%s'\n\n", v);
      bench_usage(stderr);
      return 2;
    }
    if ((why = bench_option(ba, opt, v)) != NULL) return kvp_tool_bad_value("kvp bench", opt->name, v, why);
  }
  if (ba->dtype != KVP_DTYPE_INVALID) ba->shape.dtype = ba->dtype;
  if (ba->min_ms < 0) ba->min_ms = ba->quick ? 20 : 200; /* an explicit --min-ms wins over --quick's 20 */
  return -1;
}

int kvp_cmd_bench(int argc, char **argv) {
  bench_args ba = {-1, 0, 0, {4, 8, 128, KVP_DTYPE_BF16, "default"}, KVP_DTYPE_INVALID};
  bench_results res;
  double min_s;
  char date[64];
  time_t t = time(NULL);
  struct tm tmv;
  int rc;
  memset(&res, 0, sizeof res);
  if ((rc = parse_bench_args(argc, argv, &ba)) >= 0) return rc;
  min_s = (double)ba.min_ms / 1e3;
  gmtime_r(&t, &tmv);
  strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", &tmv);
  if (!ba.json) {
    printf("%s\n", kvp_build_info());
    printf("device: CPU (%s), date: %s%s\n", getenv("KVP_NUM_THREADS") != NULL ? "KVP_NUM_THREADS set" : "all threads",
           date, ba.quick ? ", --quick (numbers are rough)" : "");
    printf("shape: %" PRId64 " layers, %" PRId64 " KV heads x %" PRId64 ", %s (%s)\n\n", ba.shape.layers,
           ba.shape.kv_heads, ba.shape.head_dim, kvp_dtype_name(ba.shape.dtype), ba.shape.source);
    fflush(stdout);
  }
  rc = bench_concatenate(&ba.shape, min_s, ba.quick, &res);
  if (rc == 0 && !ba.json) print_concatenate(&ba.shape, &res), fflush(stdout);
  if (rc == 0) rc = bench_serialization(&ba.shape, min_s, ba.quick, &res);
  if (rc == 0 && !ba.json) print_serialization(&res), fflush(stdout);
  if (rc == 0) rc = bench_pool(min_s, &res);
  if (rc != 0) return rc;
  if (ba.json) {
    print_json(&ba.shape, &res, ba.min_ms, ba.quick, date);
    return 0;
  }
  print_pool(&res);
  printf("More shapes, thread counts, conversions and the CUDA backend: the bench_* executables in the build "
         "tree's tests/ folder (docs/benchmarks.md).\n");
  return 0;
}
