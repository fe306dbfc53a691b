/* One batch written to every shard of a sharded config (issue 15): a kvp_cache_group of CPU shards
 * against the unsharded write of the same bytes and against a plain memcpy of those bytes.
 * llama3-8b-like shapes: 8 KV heads x 128, bf16 keys and values into a bf16 v3 cache, page size
 * 16; a decode step of 256 one-token requests (shuffled pages, as a pool hands them out) and a
 * 4096-token prefill (one request). The metadata is immutable (it keeps its plans), as in a
 * serving loop. Per row, microseconds per layer (best of repeated steps of all layers):
 * - memcpy: the batch's new key and value bytes copied once (the physical limit of the write);
 * - whole: kvp_concatenate on the unsharded cache;
 * - group: kvp_cache_group_concatenate on every shard;
 * - one by one: kvp_concatenate on each of the group's shards in turn (the serial peer);
 * ratios: group / whole and group / memcpy.
 * Options: --quick (short runs), --layers N (default 4). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kvpages.h"
#include "bench_support.h"

#define PAGE 16
#define HEADS 8
#define D 128
#define MAX_SHARDS 16

static void check(kvp_status st, const char *what) {
  if (st != KVP_OK) {
    fprintf(stderr, "bench_shards: %s: %s\n", what, kvp_last_error_message());
    exit(1);
  }
}

/* The v3 arrays of one batch: `reqs` requests of `q_len` new tokens each, pages 1 .. of `num_pages`. */
typedef struct batch {
  int64_t reqs, width, tokens;
  int32_t *pt, *cl, *qsl, rd[3];
} batch;

static void make_batch(batch *b, int64_t reqs, int64_t q_len, int64_t num_pages) {
  b->reqs = reqs;
  b->tokens = reqs * q_len;
  b->width = (q_len + PAGE - 1) / PAGE;
  b->pt = calloc((size_t)(reqs * b->width), sizeof(int32_t));
  b->cl = calloc((size_t)reqs, sizeof(int32_t));
  b->qsl = calloc((size_t)reqs + 1, sizeof(int32_t));
  if (q_len == 1) {
    /* Decode: request i writes a random row of its own random page (pages shuffled over the cache). */
    int32_t *pages = malloc((size_t)(num_pages - 1) * sizeof(int32_t));
    for (int64_t p = 0; p < num_pages - 1; ++p) pages[p] = (int32_t)(p + 1);
    for (int64_t p = num_pages - 2; p > 0; --p) {
      const int64_t j = (int64_t)(bench_rand() % (uint64_t)(p + 1));
      const int32_t t = pages[p];
      pages[p] = pages[j];
      pages[j] = t;
    }
    for (int64_t i = 0; i < reqs; ++i) {
      b->pt[i] = pages[i];
      b->cl[i] = (int32_t)(bench_rand() % PAGE + 1);
      b->qsl[i + 1] = (int32_t)(i + 1);
    }
    free(pages);
  } else {
    for (int64_t i = 0; i < reqs; ++i) {
      for (int64_t k = 0; k < b->width; ++k) b->pt[i * b->width + k] = (int32_t)(1 + i * b->width + k);
      b->cl[i] = (int32_t)q_len;
      b->qsl[i + 1] = (int32_t)((i + 1) * q_len);
    }
  }
  b->rd[0] = q_len == 1 ? (int32_t)reqs : 0;
  b->rd[1] = b->rd[2] = (int32_t)reqs;
}

static kvp_metadata *metadata(const batch *b) {
  kvp_metadata_desc d = KVP_METADATA_DESC_INIT;
  kvp_metadata *md = NULL;
  d.flags = KVP_METADATA_FLAG_IMMUTABLE;
  d.pages_tables = b->pt;
  d.num_reqs = b->reqs;
  d.pages_per_req = b->width;
  d.context_lens = b->cl;
  d.context_lens_len = b->reqs;
  d.query_start_loc = b->qsl;
  d.query_start_loc_len = b->reqs + 1;
  d.request_distribution = b->rd;
  d.request_distribution_len = 3;
  check(kvp_metadata_create(&d, &md), "kvp_metadata_create");
  return md;
}

static kvp_config config(int64_t layers, int64_t tp, int64_t dp, int64_t num_pages) {
  kvp_config_options o;
  kvp_config c;
  check(kvp_config_options_init(&o, sizeof o), "kvp_config_options_init");
  o.num_hidden_layers = layers;
  o.num_kv_heads = HEADS;
  o.kv_head_dim_size = D;
  o.max_model_length = 4096;
  o.page_size = PAGE;
  o.kvdtype = KVP_DTYPE_BF16;
  o.version = KVP_LAYOUT_V3;
  o.kv_head_shards = tp;
  o.data_parallel_size = dp;
  o.budget_bytes = (int64_t)1 << 30;
  o.flags = KVP_CONFIG_FLAG_NO_SAFETY_MARGIN;
  check(kvp_config_create(&o, &c), "kvp_config_create");
  c.num_pages = num_pages;
  c.max_num_reqs = 256;
  check(kvp_config_validate(&c), "kvp_config_validate");
  return c;
}

typedef enum { RUN_MEMCPY, RUN_WHOLE, RUN_GROUP, RUN_ONE_BY_ONE } run_kind;

typedef struct run {
  run_kind kind;
  int64_t layers;
  kvp_cache *whole;
  kvp_cache_group *group;
  kvp_cache *shards[MAX_SHARDS];
  uint32_t num_shards;
  kvp_tensor k, v, keys[MAX_SHARDS], values[MAX_SHARDS];
  const kvp_metadata *md;
  void *dst;
  size_t bytes;
} run;

/* Seconds of one step: every layer once. */
static double step_time(const run *r) {
  const double t0 = bench_now_s();
  for (uint32_t l = 0; l < (uint32_t)r->layers; ++l) {
    switch (r->kind) {
      case RUN_MEMCPY:
        memcpy(r->dst, r->k.data, r->bytes / 2);
        memcpy((char *)r->dst + r->bytes / 2, r->v.data, r->bytes / 2);
        break;
      case RUN_WHOLE: check(kvp_concatenate(r->whole, l, &r->k, &r->v, r->md, NULL), "kvp_concatenate"); break;
      case RUN_GROUP:
        check(kvp_cache_group_concatenate(r->group, l, r->keys, r->values, r->num_shards, r->md, NULL),
              "kvp_cache_group_concatenate");
        break;
      case RUN_ONE_BY_ONE:
        for (uint32_t i = 0; i < r->num_shards; ++i)
          check(kvp_concatenate(r->shards[i], l, &r->k, &r->v, r->md, NULL), "kvp_concatenate (shard)");
        break;
    }
  }
  return bench_now_s() - t0;
}

/* Best microseconds per layer over repeated steps of ~min_s. */
static double best_layer_us(run *r, run_kind kind, double min_s) {
  r->kind = kind;
  double best = step_time(r); /* the first step validates and keeps the plans */
  const double start = bench_now_s();
  for (int reps = 0; reps < 5 || bench_now_s() - start < min_s; ++reps) {
    const double t = step_time(r);
    if (t < best) best = t;
  }
  return best * 1e6 / (double)r->layers;
}

static void bench_row(const char *pattern, int64_t reqs, int64_t q_len, int64_t tp, int64_t dp, int64_t layers,
                      double min_s) {
  const int64_t num_pages = 512;
  batch b;
  run r;
  memset(&r, 0, sizeof r);
  make_batch(&b, reqs, q_len, num_pages);
  const kvp_config whole_cfg = config(layers, 1, 1, num_pages), cfg = config(layers, tp, dp, num_pages);
  check(kvp_cache_create(&whole_cfg, NULL, &r.whole), "kvp_cache_create");
  check(kvp_cache_group_create(&cfg, NULL, 0, NULL, &r.group), "kvp_cache_group_create");
  check(kvp_cache_group_get_num_shards(r.group, &r.num_shards), "kvp_cache_group_get_num_shards");
  const size_t n = (size_t)(b.tokens * HEADS * D);
  uint16_t *kv = malloc(n * 2 * sizeof(uint16_t));
  for (size_t i = 0; i < 2 * n; ++i) kv[i] = (uint16_t)(0x3c00 + bench_rand() % 0x800);
  r.k.data = kv;
  r.k.dtype = KVP_DTYPE_BF16;
  r.k.ndim = 3;
  r.k.shape[0] = b.tokens;
  r.k.shape[1] = HEADS;
  r.k.shape[2] = D;
  r.k.strides[0] = HEADS * D;
  r.k.strides[1] = D;
  r.k.strides[2] = 1;
  r.v = r.k;
  r.v.data = kv + n;
  for (uint32_t i = 0; i < r.num_shards; ++i) {
    check(kvp_cache_group_get_shard(r.group, (int32_t)(i / dp), (int32_t)(i % dp), &r.shards[i]), "get_shard");
    r.keys[i] = r.k; /* the full tensors: each shard takes its heads */
    r.values[i] = r.v;
  }
  r.layers = layers;
  r.bytes = n * 2 * sizeof(uint16_t);
  r.dst = malloc(r.bytes);
  memset(r.dst, 1, r.bytes);
  kvp_metadata *md = metadata(&b);
  r.md = md;
  const double t_copy = best_layer_us(&r, RUN_MEMCPY, min_s);
  const double t_whole = best_layer_us(&r, RUN_WHOLE, min_s);
  const double t_group = best_layer_us(&r, RUN_GROUP, min_s);
  const double t_each = best_layer_us(&r, RUN_ONE_BY_ONE, min_s);
  printf("| %s | %lld | %lldx%lld | %.2f | %.1f | %.1f | %.1f | %.1f | %.2f | %.2f |\n", pattern, (long long)b.tokens,
         (long long)tp, (long long)dp, (double)r.bytes / (1 << 20), t_copy, t_whole, t_group, t_each,
         t_group / t_whole, t_group / t_copy);
  fflush(stdout);
  kvp_metadata_destroy(md);
  kvp_cache_group_destroy(r.group);
  kvp_cache_destroy(r.whole);
  free(r.dst);
  free(kv);
  free(b.pt);
  free(b.cl);
  free(b.qsl);
}

int main(int argc, char **argv) {
  int quick = 0;
  int64_t layers = 4;
  for (int i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--quick") == 0) quick = 1;
    else if (strcmp(argv[i], "--layers") == 0 && i + 1 < argc) layers = atoll(argv[++i]);
  }
  const double min_s = quick ? 0.05 : 0.5;
  const char *threads = getenv("KVP_NUM_THREADS");
  char model[256], date[64];
  static const int64_t shardings[][2] = {{1, 1}, {2, 1}, {4, 1}, {2, 2}, {8, 1}, {8, 2}};
  bench_cpu_model(model, sizeof model);
  bench_utc_date(date, sizeof date);
  printf("# One batch to every shard of a group (CPU shards)\n\n");
  printf("- date: %s\n- machine: %s, %ld logical CPUs; threads: KVP_NUM_THREADS=%s\n- library: %s\n", date, model,
         sysconf(_SC_NPROCESSORS_ONLN), threads != NULL ? threads : "(unset: library default)", kvp_build_info());
  printf("- v3, bf16 -> bf16, %d KV heads x %d, page size %d, 512 pages, %lld layers; immutable metadata;\n"
         "  us per layer, best of repeated steps (>= %.2f s per number). shards = kv_head_shards x data_parallel_size.\n"
         "- memcpy: the new key and value bytes copied once; whole: kvp_concatenate on the unsharded cache;\n"
         "  group: kvp_cache_group_concatenate; one by one: kvp_concatenate on each shard in turn.\n\n",
         HEADS, D, PAGE, (long long)layers, min_s);
  printf("| batch | tokens | shards | MiB | memcpy us | whole us | group us | one by one us | group/whole | group/memcpy |\n");
  printf("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n");
  for (size_t s = 0; s < sizeof shardings / sizeof shardings[0]; ++s)
    bench_row("decode", 256, 1, shardings[s][0], shardings[s][1], layers, min_s);
  for (size_t s = 0; s < sizeof shardings / sizeof shardings[0]; ++s)
    bench_row("prefill", 1, 4096, shardings[s][0], shardings[s][1], layers, min_s);
  return 0;
}
