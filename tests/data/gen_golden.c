/* Writes the golden blobs of tests/data/v1.0/ (see tests/data/README.md), or with --sequence the
 * golden sequence blob of tests/data/sequence-v1/. Run it only when a new format version gets its
 * own golden directory: committed blobs are never regenerated, they are the format's
 * compatibility promise.
 *
 *   build/tests/kvp_gen_golden [--sequence] OUTDIR
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvpages.h"

/* The documented fill pattern: byte `offset` of page `page` of layer `layer`. */
static unsigned char golden_byte(uint32_t layer, uint64_t page, uint64_t offset) {
  uint64_t v = (uint64_t)layer * 1000003u + page * 10007u + offset * 31u;
  return (unsigned char)((v ^ (v >> 7)) & 0xFF);
}

static int check(kvp_status s, const char *what) {
  if (s != KVP_OK) {
    fprintf(stderr, "kvp_gen_golden: %s: %s: %s\n", what, kvp_status_name(s), kvp_last_error_message());
    return 1;
  }
  return 0;
}

/* A shard to write instead of the whole cache: (tp_rank, dp_rank) of `tp` KV-head and `dp` page
 * shards; tp = dp = 1 writes the whole cache. */
typedef struct shard_spec {
  int64_t tp, dp;
  int32_t tp_rank, dp_rank;
} shard_spec;

/* The config of a golden cache of exactly `pages` pages (over tp x dp devices). */
static int golden_config(const char *name, int64_t layers, int64_t heads, int64_t head_dim, int64_t page_size,
                         int64_t pages, kvp_dtype dtype, kvp_layout layout, shard_spec shard, kvp_config *out) {
  kvp_config probe, cfg;
  kvp_layout_info li;
  kvp_config_options o;
  kvp_config_init(&probe, sizeof probe);
  probe.num_hidden_layers = layers;
  probe.num_kv_heads = heads;
  probe.k_headdim = probe.v_headdim = head_dim;
  probe.max_model_length = page_size * 16;
  probe.page_size = page_size;
  probe.kvdtype = dtype;
  probe.version = layout;
  memset(&li, 0, sizeof li);
  li.struct_size = sizeof li;
  if (check(kvp_config_get_layout(&probe, &li), "layout")) return 1;
  kvp_config_options_init(&o, sizeof o);
  o.num_hidden_layers = layers;
  o.num_kv_heads = heads;
  o.kv_head_dim_size = head_dim;
  o.max_model_length = page_size * 16;
  o.page_size = page_size;
  o.kvdtype = dtype;
  o.version = layout;
  o.flags = KVP_CONFIG_FLAG_NO_SAFETY_MARGIN;
  o.kv_head_shards = shard.tp;
  o.data_parallel_size = shard.dp;
  /* The budget is per device: the whole cache's pages over tp x dp devices. */
  o.budget_bytes = li.page_bytes_per_layer * layers * pages / (shard.tp * shard.dp);
  if (check(kvp_config_create(&o, &cfg), "config")) return 1;
  if (cfg.num_pages != pages) {
    fprintf(stderr, "kvp_gen_golden: %s: %lld pages, not %lld\n", name, (long long)cfg.num_pages, (long long)pages);
    return 1;
  }
  *out = cfg;
  return 0;
}

/* Fills every page of every layer of `c` with the pattern of its global page id. */
static int fill_golden(kvp_cache *c, int64_t layers) {
  kvp_layout_info li;
  memset(&li, 0, sizeof li);
  li.struct_size = sizeof li;
  kvp_shard_info si = KVP_SHARD_INFO_INIT;
  if (check(kvp_cache_get_layout(c, &li), "layout") || check(kvp_cache_get_shard(c, &si), "shard info")) return 1;
  for (uint32_t l = 0; l < (uint32_t)layers; ++l) {
    kvp_tensor t;
    if (check(kvp_cache_get_view(c, l, KVP_VIEW_PAGES, &t), "view")) return 1;
    unsigned char *p = (unsigned char *)t.data;
    for (int64_t pg = 0; pg < si.page_end - si.page_begin; ++pg)  /* the pattern of the global page id */
      for (int64_t i = 0; i < li.page_bytes_per_layer; ++i)
        p[pg * li.page_bytes_per_layer + i] = golden_byte(l, (uint64_t)(si.page_begin + pg), (uint64_t)i);
  }
  return 0;
}

static int write_golden(const char *dir, const char *name, int64_t layers, int64_t heads, int64_t head_dim,
                        int64_t page_size, int64_t pages, kvp_dtype dtype, kvp_layout layout, const int32_t *ids,
                        uint32_t nids, uint64_t chunk_bytes, shard_spec shard) {
  kvp_config cfg;
  kvp_cache *c = NULL;
  char path[1024];
  if (golden_config(name, layers, heads, head_dim, page_size, pages, dtype, layout, shard, &cfg)) return 1;
  if (shard.tp * shard.dp > 1) {
    if (check(kvp_cache_create_shard(&cfg, shard.tp_rank, shard.dp_rank, NULL, &c), "shard")) return 1;
  } else if (check(kvp_cache_create(&cfg, NULL, &c), "cache")) {
    return 1;
  }
  if (fill_golden(c, layers)) return 1;
  kvp_serialize_options so;
  kvp_serialize_options_init(&so, sizeof so);
  so.page_ids = ids;
  so.num_page_ids = nids;
  so.chunk_bytes = chunk_bytes;
  snprintf(path, sizeof path, "%s/%s", dir, name);
  if (check(kvp_serialize_to_file(c, &so, path), path)) return 1;
  kvp_cache_destroy(c);
  printf("wrote %s\n", path);
  return 0;
}

/* The golden sequence blob (sequence-v1/): the 10 tokens 1000 + 37 k, salt 0x5EED, saved from a
 * fresh pool (its pages 1, 2, 3) over a v3 bf16 cache of 8 pages filled with the pattern. */
static int write_golden_sequence(const char *dir) {
  const shard_spec whole = {1, 1, 0, 0};
  kvp_config cfg;
  kvp_cache *c = NULL;
  kvp_pool *pool = NULL;
  kvp_seq_id seq;
  int32_t tokens[10];
  char path[1024];
  for (int k = 0; k < 10; ++k) tokens[k] = 1000 + 37 * k;
  if (golden_config("sequence", 2, 2, 64, 4, 8, KVP_DTYPE_BF16, KVP_LAYOUT_V3, whole, &cfg) ||
      check(kvp_cache_create(&cfg, NULL, &c), "cache") || fill_golden(c, 2) ||
      check(kvp_pool_create(c, NULL, &pool), "pool") ||
      check(kvp_pool_add_sequence(pool, tokens, 10, 0x5EED, 0, &seq, NULL), "add_sequence") ||
      check(kvp_pool_set_computed(pool, seq, 10), "set_computed"))
    return 1;
  snprintf(path, sizeof path, "%s/seq-v3-h64-bf16.kvpq", dir);
  if (check(kvp_pool_save_sequence_to_file(pool, seq, path, 0), path)) return 1;
  kvp_pool_destroy(pool);
  kvp_cache_destroy(c);
  printf("wrote %s\n", path);
  return 0;
}

int main(int argc, char **argv) {
  static const int32_t subset[] = {3, 1};
  if (argc == 3 && strcmp(argv[1], "--sequence") == 0) return write_golden_sequence(argv[2]);
  if (argc != 2) {
    fprintf(stderr, "usage: kvp_gen_golden [--sequence] OUTDIR\n");
    return 2;
  }
  static const int32_t shard_subset[] = {7, 5};
  const shard_spec whole = {1, 1, 0, 0}, tp2_dp2_rank11 = {2, 2, 1, 1};
  if (write_golden(argv[1], "whole-v3-h64-bf16.kvps", 2, 2, 64, 4, 3, KVP_DTYPE_BF16, KVP_LAYOUT_V3, NULL, 0, 4096,
                   whole))
    return 1;
  if (write_golden(argv[1], "subset-v2-fp8e4m3.kvps", 2, 1, 8, 4, 5, KVP_DTYPE_F8_E4M3FN, KVP_LAYOUT_V2, subset, 2,
                   64, whole))
    return 1;
  /* Format 1.1: a shard's blob (v1.1/). */
  if (write_golden(argv[1], "shard-v3-h64-bf16-tp2-dp2-r1-1.kvps", 2, 4, 64, 4, 8, KVP_DTYPE_BF16, KVP_LAYOUT_V3,
                   shard_subset, 2, 1024, tp2_dp2_rank11))
    return 1;
  return 0;
}
