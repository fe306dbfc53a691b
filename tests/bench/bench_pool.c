/* Page pool costs: ns per page allocate / free, per fork, prefix-index insert and the time to
 * prefix-match a 128k-token prompt (page sizes 16 and 128), plus kvp_cache_copy_pages (the
 * copy-on-write path) as GB/s and as a ratio to memcpy of the same bytes in the same run, and the
 * cost of placing a sequence in a pool with 8 data-parallel shards (every shard's prefix index
 * is tried) as a ratio to the same add in an unsharded pool, and the save and restore of an
 * 8k-token sequence (kvp_pool_save_sequence / kvp_pool_restore_sequence: page copies, keys and
 * XXH3 checksums) as GB/s and as a ratio to memcpy of the blob's bytes in the same run.
 *
 *   bench_pool [--reps N]
 *
 * Every figure is the best of N repetitions (default 7). Timings go through the public API
 * (handle validation with API armor included). */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvpages.h"
#include "bench_support.h"

static void check(kvp_status s, const char *what) {
  if (s != KVP_OK) {
    fprintf(stderr, "bench_pool: %s: %s: %s\n", what, kvp_status_name(s), kvp_last_error_message());
    exit(1);
  }
}

static kvp_config make_config_dp(int64_t layers, int64_t heads, int64_t page_size, int64_t num_pages,
                                 int64_t max_len, int64_t dp) {
  kvp_config probe;
  kvp_layout_info li;
  check(kvp_config_init(&probe, sizeof probe), "config_init");
  probe.num_hidden_layers = layers;
  probe.num_kv_heads = heads;
  probe.k_headdim = probe.v_headdim = 128;
  probe.max_model_length = max_len;
  probe.page_size = page_size;
  memset(&li, 0, sizeof li);
  li.struct_size = sizeof li;
  check(kvp_config_get_layout(&probe, &li), "layout");
  kvp_config_options co;
  check(kvp_config_options_init(&co, sizeof co), "options");
  co.num_hidden_layers = layers;
  co.num_kv_heads = heads;
  co.kv_head_dim_size = 128;
  co.max_model_length = max_len;
  co.page_size = page_size;
  co.flags = KVP_CONFIG_FLAG_NO_SAFETY_MARGIN;
  co.budget_bytes = num_pages / dp * li.page_bytes_per_layer * layers; /* per shard: x dp */
  co.data_parallel_size = dp;
  kvp_config cfg;
  check(kvp_config_create(&co, &cfg), "config_create");
  return cfg;
}

static kvp_config make_config(int64_t layers, int64_t heads, int64_t page_size, int64_t num_pages,
                              int64_t max_len) {
  return make_config_dp(layers, heads, page_size, num_pages, max_len, 1);
}

static uint64_t rng_state = 0x243F6A8885A308D3ull;
static uint32_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (uint32_t)rng_state;
}

#define TOKENS_128K 131072

/* Allocation, free, fork and prefix matching at one page size. */
static void bench_page_size(int64_t S, int reps) {
  const int64_t pages_128k = TOKENS_128K / S;
  const int64_t P = 2 * pages_128k + 2;
  kvp_config cfg = make_config(1, 1, S, P, TOKENS_128K);
  kvp_cache *cache;
  check(kvp_cache_create(&cfg, NULL, &cache), "cache_create");
  int32_t *prompt = (int32_t *)malloc(sizeof(int32_t) * TOKENS_128K);
  for (int64_t i = 0; i < TOKENS_128K; ++i) prompt[i] = (int32_t)(rnd() % 128256u);

  kvp_pool_options o = KVP_POOL_OPTIONS_INIT;
  o.max_sequences = 64;
  kvp_pool *pool;
  double best;

  printf("\npage_size %lld: cache of %lld pages (1 layer, 1 KV head, head_dim 128, bf16), 128k-token prompt = %lld pages\n",
         (long long)S, (long long)P, (long long)pages_128k);

  /* 1. allocate / free, one page per call: append page_size tokens to a sequence; free it. */
  o.flags = KVP_POOL_FLAG_NO_PREFIX_CACHE;
  check(kvp_pool_create(cache, &o, &pool), "pool_create");
  double best_alloc = 1e9, best_free = 1e9, best_bulk = 1e9, best_bulk_free = 1e9;
  for (int r = 0; r < reps; ++r) {
    kvp_seq_id s;
    check(kvp_pool_add_sequence(pool, NULL, 0, 0, 0, &s, NULL), "add");
    double t0 = bench_now_s();
    for (int64_t i = 0; i < pages_128k; ++i) check(kvp_pool_append(pool, s, prompt + i * S, (size_t)S, NULL), "append");
    double t1 = bench_now_s();
    check(kvp_pool_free_sequence(pool, s), "free");
    double t2 = bench_now_s();
    if (t1 - t0 < best_alloc) best_alloc = t1 - t0;
    if (t2 - t1 < best_free) best_free = t2 - t1;
    /* bulk: one add_sequence of all pages, one free */
    t0 = bench_now_s();
    check(kvp_pool_add_sequence(pool, prompt, TOKENS_128K, 0, 0, &s, NULL), "add bulk");
    t1 = bench_now_s();
    check(kvp_pool_free_sequence(pool, s), "free bulk");
    t2 = bench_now_s();
    if (t1 - t0 < best_bulk) best_bulk = t1 - t0;
    if (t2 - t1 < best_bulk_free) best_bulk_free = t2 - t1;
  }
  printf("  allocate, 1 page per kvp_pool_append call : %7.1f ns/page\n", 1e9 * best_alloc / (double)pages_128k);
  printf("  allocate, %lld pages in one add_sequence  : %7.1f ns/page (incl. copying %lld token ids/page)\n",
         (long long)pages_128k, 1e9 * best_bulk / (double)pages_128k, (long long)S);
  printf("  free (kvp_pool_free_sequence)             : %7.1f ns/page\n",
         1e9 * (best_free < best_bulk_free ? best_free : best_bulk_free) / (double)pages_128k);

  /* 2. fork: a 1k-token sequence and a 128k-token sequence, one child each, freed again. */
  const int64_t lens[2] = {1024, TOKENS_128K};
  for (int k = 0; k < 2; ++k) {
    kvp_seq_id s;
    check(kvp_pool_add_sequence(pool, prompt, (size_t)lens[k], 0, 0, &s, NULL), "add");
    double best_fork = 1e9, best_ffree = 1e9;
    for (int r = 0; r < reps; ++r) {
      kvp_seq_id kids[8];
      double t0 = bench_now_s();
      for (int i = 0; i < 8; ++i) check(kvp_pool_fork(pool, s, 1, &kids[i]), "fork");
      double t1 = bench_now_s();
      for (int i = 0; i < 8; ++i) check(kvp_pool_free_sequence(pool, kids[i]), "free child");
      double t2 = bench_now_s();
      if ((t1 - t0) / 8 < best_fork) best_fork = (t1 - t0) / 8;
      if ((t2 - t1) / 8 < best_ffree) best_ffree = (t2 - t1) / 8;
    }
    const double np = (double)(lens[k] / S);
    printf("  fork of a %6lld-token sequence (%5.0f pages): %9.0f ns/fork (%5.2f ns/page), child free %5.2f ns/page\n",
           (long long)lens[k], np, 1e9 * best_fork, 1e9 * best_fork / np, 1e9 * best_ffree / np);
    check(kvp_pool_free_sequence(pool, s), "free");
  }
  check(kvp_pool_destroy(pool), "pool_destroy");

  /* 3. prefix cache: index a 128k prompt (hash + insert), then match it (hash + lookup + verify). */
  o.flags = 0;
  check(kvp_pool_create(cache, &o, &pool), "pool_create");
  double best_index = 1e9, best_match = 1e9, best_miss = 1e9;
  size_t reused = 0;
  for (int r = 0; r < reps; ++r) {
    check(kvp_pool_clear_prefix_cache(pool), "clear");
    kvp_seq_id a, b, c;
    check(kvp_pool_add_sequence(pool, prompt, TOKENS_128K, 0, 0, &a, NULL), "add");
    double t0 = bench_now_s();
    check(kvp_pool_set_computed(pool, a, TOKENS_128K), "set_computed");
    double t1 = bench_now_s();
    check(kvp_pool_free_sequence(pool, a), "free"); /* all pages stay cached (evictable) */
    double t2 = bench_now_s();
    check(kvp_pool_add_sequence(pool, prompt, TOKENS_128K, 0, KVP_POOL_ADD_FLAG_REUSE_ALL, &b, &reused), "match");
    double t3 = bench_now_s();
    check(kvp_pool_free_sequence(pool, b), "free");
    /* a miss on the first page: the cheapest path, for reference */
    prompt[0] ^= 1;
    double t4 = bench_now_s();
    check(kvp_pool_add_sequence(pool, prompt, (size_t)S, 0, KVP_POOL_ADD_FLAG_REUSE_ALL, &c, NULL), "miss");
    double t5 = bench_now_s();
    prompt[0] ^= 1;
    check(kvp_pool_free_sequence(pool, c), "free");
    if (t1 - t0 < best_index) best_index = t1 - t0;
    if (t3 - t2 < best_match) best_match = t3 - t2;
    if (t5 - t4 < best_miss) best_miss = t5 - t4;
  }
  if (reused != TOKENS_128K) {
    fprintf(stderr, "bench_pool: expected a full match, reused %zu\n", reused);
    exit(1);
  }
  /* memcpy of the same token bytes, for the ratio */
  int32_t *copy = (int32_t *)malloc(sizeof(int32_t) * TOKENS_128K);
  double best_memcpy = 1e9;
  for (int r = 0; r < reps; ++r) {
    double t0 = bench_now_s();
    memcpy(copy, prompt, sizeof(int32_t) * TOKENS_128K);
    double t1 = bench_now_s();
    if (t1 - t0 < best_memcpy) best_memcpy = t1 - t0;
  }
  const double tok_bytes = (double)sizeof(int32_t) * TOKENS_128K;
  printf("  index 128k computed tokens (hash+insert)  : %7.3f ms (%6.1f ns/page)\n", 1e3 * best_index,
         1e9 * best_index / (double)pages_128k);
  printf("  prefix-match 128k-token prompt, full hit  : %7.3f ms (%6.1f ns/page; %.2f GB/s of token ids, %.2fx memcpy of them at %.2f GB/s)\n",
         1e3 * best_match, 1e9 * best_match / (double)pages_128k, tok_bytes / best_match / 1e9,
         best_memcpy / best_match, tok_bytes / best_memcpy / 1e9);
  printf("  add with a first-page miss                : %7.3f us\n", 1e6 * best_miss);
  free(copy);
  check(kvp_pool_destroy(pool), "pool_destroy");
  check(kvp_cache_destroy(cache), "cache_destroy");
  free(prompt);
}

/* kvp_cache_copy_pages (copy-on-write) vs memcpy of the same bytes. */
static void bench_copy_pages(int reps) {
  const int64_t L = 4, H = 8, S = 16, P = 513, N = 256;
  kvp_config cfg = make_config(L, H, S, P, 8192);
  kvp_cache *cache;
  check(kvp_cache_create(&cfg, NULL, &cache), "cache_create");
  kvp_layout_info li;
  memset(&li, 0, sizeof li);
  li.struct_size = sizeof li;
  check(kvp_cache_get_layout(cache, &li), "layout");
  const size_t pb = (size_t)li.page_bytes_per_layer;
  for (uint32_t l = 0; l < (uint32_t)L; ++l) {
    kvp_tensor t;
    check(kvp_cache_get_view(cache, l, KVP_VIEW_FLAT, &t), "view");
    memset(t.data, (int)(l + 1), pb * (size_t)P);
  }
  int32_t src[256], dst[256];
  /* scattered: sources are the odd pages 1,3,..., destinations the even pages in a shuffled order */
  for (int i = 0; i < N; ++i) {
    src[i] = 2 * i + 1;
    dst[i] = 2 * i + 2;
  }
  for (int i = N - 1; i > 0; --i) {
    int j = (int)(rnd() % (uint32_t)(i + 1)), t = dst[i];
    dst[i] = dst[j];
    dst[j] = t;
  }
  double best = 1e9, best_mc = 1e9;
  uint8_t *a = (uint8_t *)malloc(pb * (size_t)N * (size_t)L), *b = (uint8_t *)malloc(pb * (size_t)N * (size_t)L);
  memset(a, 3, pb * (size_t)N * (size_t)L);
  memset(b, 4, pb * (size_t)N * (size_t)L);
  for (int r = 0; r < reps; ++r) {
    double t0 = bench_now_s();
    check(kvp_cache_copy_pages(cache, src, dst, (size_t)N, NULL), "copy_pages");
    double t1 = bench_now_s();
    memcpy(b, a, pb * (size_t)N * (size_t)L);
    double t2 = bench_now_s();
    if (t1 - t0 < best) best = t1 - t0;
    if (t2 - t1 < best_mc) best_mc = t2 - t1;
  }
  const double bytes = (double)pb * (double)N * (double)L;
  printf("\nkvp_cache_copy_pages: %lld scattered pages x %lld layers (8 KV heads, head_dim 128, bf16, page 16: %zu KiB/page/layer)\n",
         (long long)N, (long long)L, pb / 1024);
  printf("  %.1f MiB in %.3f ms = %.2f GB/s; memcpy of the same bytes %.2f GB/s; ratio %.2f\n", bytes / 1048576.0,
         1e3 * best, bytes / best / 1e9, bytes / best_mc / 1e9, best_mc / best);
  free(a);
  free(b);
  check(kvp_cache_destroy(cache), "cache_destroy");
}

/* Save of an 8k-token sequence to a buffer and its restore into another pool (fresh pages, nothing
 * shared), against memcpy of the blob's bytes. */
static void bench_sequence_io(int reps) {
  const int64_t L = 4, H = 8, S = 16, P = 520, T = 8192;
  kvp_config cfg = make_config(L, H, S, P, T);
  kvp_cache *ca, *cb;
  kvp_pool *pa, *pb;
  check(kvp_cache_create(&cfg, NULL, &ca), "cache_create");
  check(kvp_cache_create(&cfg, NULL, &cb), "cache_create");
  check(kvp_pool_create(ca, NULL, &pa), "pool_create");
  check(kvp_pool_create(cb, NULL, &pb), "pool_create");
  kvp_layout_info li;
  memset(&li, 0, sizeof li);
  li.struct_size = sizeof li;
  check(kvp_cache_get_layout(ca, &li), "layout");
  for (uint32_t l = 0; l < (uint32_t)L; ++l) {
    kvp_tensor t;
    check(kvp_cache_get_view(ca, l, KVP_VIEW_FLAT, &t), "view");
    memset(t.data, (int)(l + 1), (size_t)li.page_bytes_per_layer * (size_t)P);
  }
  int32_t *tokens = (int32_t *)malloc(sizeof(int32_t) * (size_t)T);
  for (int64_t i = 0; i < T; ++i) tokens[i] = (int32_t)(rnd() % 128256u);
  kvp_seq_id seq, r;
  check(kvp_pool_add_sequence(pa, tokens, (size_t)T, 0, 0, &seq, NULL), "add_sequence");
  check(kvp_pool_set_computed(pa, seq, (size_t)T), "set_computed");
  size_t size = 0;
  if (kvp_pool_save_sequence(pa, seq, NULL, 0, &size) != KVP_ERR_BUFFER_TOO_SMALL) check(KVP_ERR_INTERNAL, "size");
  uint8_t *blob = (uint8_t *)malloc(size), *copy = (uint8_t *)malloc(size);
  memset(blob, 0, size);
  memset(copy, 0, size);
  double best_save = 1e9, best_restore = 1e9, best_mc = 1e9;
  for (int rep = 0; rep < reps; ++rep) {
    double t0 = bench_now_s();
    check(kvp_pool_save_sequence(pa, seq, blob, size, &size), "save_sequence");
    double t1 = bench_now_s();
    check(kvp_pool_restore_sequence(pb, blob, size, 0, &r), "restore_sequence");
    double t2 = bench_now_s();
    memcpy(copy, blob, size);
    double t3 = bench_now_s();
    check(kvp_pool_free_sequence(pb, r), "free_sequence");
    check(kvp_pool_clear_prefix_cache(pb), "clear_prefix_cache"); /* the next restore shares nothing */
    if (t1 - t0 < best_save) best_save = t1 - t0;
    if (t2 - t1 < best_restore) best_restore = t2 - t1;
    if (t3 - t2 < best_mc) best_mc = t3 - t2;
  }
  printf("\nsequence save / restore: %lld tokens, %lld layers (8 KV heads, head_dim 128, bf16, page 16), blob %.1f MiB\n",
         (long long)T, (long long)L, (double)size / 1048576.0);
  printf("  save    %.2f GB/s, restore %.2f GB/s; memcpy of the blob %.2f GB/s; ratios %.2f and %.2f\n",
         (double)size / best_save / 1e9, (double)size / best_restore / 1e9, (double)size / best_mc / 1e9,
         best_mc / best_save, best_mc / best_restore);
  free(blob);
  free(copy);
  free(tokens);
  check(kvp_pool_destroy(pa), "pool_destroy");
  check(kvp_pool_destroy(pb), "pool_destroy");
  check(kvp_cache_destroy(ca), "cache_destroy");
  check(kvp_cache_destroy(cb), "cache_destroy");
}

/* kvp_pool_add_sequence of a 16k-token prompt in a pool with dp shards, placed by the pool: a full
 * prefix hit cached in the last shard (the others miss on the first page), and a first-page miss
 * everywhere. Returns the two best times in seconds. */
static void time_placement(int64_t dp, int reps, double *hit, double *miss) {
  const int64_t S = 16, T = 16384, per_shard = T / S + 2;
  kvp_config cfg = make_config_dp(1, 1, S, dp * per_shard, T, dp);
  kvp_cache *cache;
  check(kvp_cache_create(&cfg, NULL, &cache), "cache_create");
  int32_t *prompt = (int32_t *)malloc(sizeof(int32_t) * T);
  for (int64_t i = 0; i < T; ++i) prompt[i] = (int32_t)(rnd() % 128256u);
  kvp_pool_options o = KVP_POOL_OPTIONS_INIT;
  o.max_sequences = 4;
  kvp_pool *pool;
  check(kvp_pool_create(cache, &o, &pool), "pool_create");
  kvp_seq_id a;
  check(kvp_pool_add_sequence(pool, prompt, T, 0, KVP_POOL_ADD_IN_SHARD(dp - 1), &a, NULL), "add");
  check(kvp_pool_set_computed(pool, a, T), "set_computed");
  check(kvp_pool_free_sequence(pool, a), "free");
  *hit = *miss = 1e9;
  for (int r = 0; r < reps; ++r) {
    kvp_seq_id b, c;
    size_t reused = 0;
    double t0 = bench_now_s();
    check(kvp_pool_add_sequence(pool, prompt, T, 0, KVP_POOL_ADD_FLAG_REUSE_ALL, &b, &reused), "hit");
    double t1 = bench_now_s();
    check(kvp_pool_free_sequence(pool, b), "free");
    if (reused != (size_t)T) {
      fprintf(stderr, "bench_pool: expected a full match with dp %lld, reused %zu\n", (long long)dp, reused);
      exit(1);
    }
    prompt[0] ^= 1;
    double t2 = bench_now_s();
    check(kvp_pool_add_sequence(pool, prompt, (size_t)S, 0, KVP_POOL_ADD_FLAG_REUSE_ALL, &c, NULL), "miss");
    double t3 = bench_now_s();
    prompt[0] ^= 1;
    check(kvp_pool_free_sequence(pool, c), "free");
    if (t1 - t0 < *hit) *hit = t1 - t0;
    if (t3 - t2 < *miss) *miss = t3 - t2;
  }
  check(kvp_pool_destroy(pool), "pool_destroy");
  check(kvp_cache_destroy(cache), "cache_destroy");
  free(prompt);
}

static void bench_placement(int reps) {
  double hit1, miss1, hit8, miss8;
  time_placement(1, reps, &hit1, &miss1);
  time_placement(8, reps, &hit8, &miss8);
  printf("\ndata-parallel placement: kvp_pool_add_sequence placed by the pool, page 16, dp 8 vs dp 1\n");
  printf("  16k-token prompt, full prefix hit (in shard 7): %7.1f us vs %7.1f us, ratio %.2f\n", 1e6 * hit8,
         1e6 * hit1, hit8 / hit1);
  printf("  one page, a miss in every shard               : %7.3f us vs %7.3f us, ratio %.2f\n", 1e6 * miss8,
         1e6 * miss1, miss8 / miss1);
}

int main(int argc, char **argv) {
  int reps = 7;
  for (int i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) reps = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: bench_pool [--reps N]\n");
      return 2;
    }
  }
  if (reps < 1) reps = 1;
  char date[64], cpu[256];
  bench_utc_date(date, sizeof date);
  bench_cpu_model(cpu, sizeof cpu);
  printf("bench_pool: %s, device CPU (%s), %s, best of %d\n", kvp_build_info(), cpu, date, reps);
  bench_page_size(16, reps);
  bench_page_size(128, reps);
  bench_copy_pages(reps);
  bench_placement(reps);
  bench_sequence_io(reps);
  return 0;
}
