/* Shards against the whole cache (issue 15, SPEC.md §7.3): one config, its whole cache and every
 * shard, the same random ragged batches written to all of them, then the union of the shards'
 * bytes compared with the whole cache's. Uses cmocka asserts: call it from a test. */
#ifndef KVP_TEST_SHARDS_H
#define KVP_TEST_SHARDS_H

#include <stdint.h>

#include "kvpages.h"

/* A sharded config: `tp` requested KV-head shards, `dp` page shards, 8-token pages, 8 pages per
 * data rank, max_model_length 48, max_num_reqs 4 * dp. */
kvp_config kvp_test_sharded_config(kvp_layout version, kvp_dtype dtype, int64_t kv_heads, int64_t head_dim,
                                   int64_t tp, int64_t dp);

/* Where the shards of kvp_test_shard_union live. Shard i (of tp_rank i / dp, dp_rank i % dp) is
 * on CUDA device i % cuda_devices, and `concatenate` writes a batch to it: it gets host key/value
 * tensors and host metadata, copies what it needs to `device` and calls kvp_concatenate (this
 * support library has no CUDA runtime of its own). With `device_metadata` (the metadata goes to
 * the device too) the batches are built with their tokens in row order: device-resident
 * metadata has no token_starts. */
typedef struct kvp_test_shard_placement {
  int32_t cuda_devices;
  int device_metadata;
  void (*concatenate)(const struct kvp_test_shard_placement *where, kvp_cache *shard, int32_t device, uint32_t layer,
                      const kvp_tensor *key, const kvp_tensor *value, const kvp_metadata *md);
} kvp_test_shard_placement;

/* Writes `steps` random ragged batches (seeded) over 2 layers to the whole cache (on the CPU) and
 * to every shard of `cfg` (CPU caches, or placed by `where` when not NULL; alternately with the
 * full key/value tensors and with each shard's own heads) and asserts that every shard holds
 * exactly its slice of the whole cache, that the slices tile it, and that the batches wrote
 * something. */
void kvp_test_shard_union(const kvp_config *cfg, int steps, uint64_t seed, const kvp_test_shard_placement *where);

/* Bytes of layer `layer` of a cache, copied to the host (*size bytes; free()). */
unsigned char *kvp_test_layer_copy(const kvp_cache *cache, uint32_t layer, size_t *size);

/* Asserts that `shard`'s layer `layer` holds exactly its slice of `whole` (a whole cache's layer
 * bytes, geometry `wl`). */
void kvp_test_assert_slice(const unsigned char *whole, const kvp_layout_info *wl, const kvp_cache *shard,
                           uint32_t layer);

#endif
