#include "shards.h"

#include <stdio.h>
#include <stdlib.h>

#include "support.h"

kvp_config kvp_test_sharded_config(kvp_layout version, kvp_dtype dtype, int64_t kv_heads, int64_t head_dim,
                                   int64_t tp, int64_t dp) {
  kvp_config_options o;
  assert_kvp_ok(kvp_config_options_init(&o, sizeof o));
  o.num_hidden_layers = 2;
  o.num_kv_heads = kv_heads;
  o.kv_head_dim_size = head_dim;
  o.max_model_length = 48;
  o.page_size = 8;
  o.kvdtype = dtype;
  o.version = version;
  o.kv_head_shards = tp;
  o.data_parallel_size = dp;
  o.budget_bytes = 1 << 20;
  o.flags = KVP_CONFIG_FLAG_NO_SAFETY_MARGIN;
  kvp_config c;
  assert_kvp_ok(kvp_config_create(&o, &c));
  c.num_pages = 8 * dp;  /* small and a multiple of dp */
  c.max_num_reqs = 4 * dp;
  assert_kvp_ok(kvp_config_validate(&c));
  return c;
}

unsigned char *kvp_test_layer_copy(const kvp_cache *cache, uint32_t layer, size_t *size) {
  *size = kvp_test_layer_bytes(cache);
  unsigned char *b = malloc(*size);
  assert_non_null(b);
  assert_kvp_ok(kvp_cache_read_layer(cache, layer, b, *size, NULL));
  return b;
}

/* One step: 1 or 2 requests on rank 0, up to 2 on each other data rank, each on fresh pages of that rank (page 0 excluded),
 * prompts of 1 .. 20 tokens (whole prefills) or decodes of 1 token after 1 .. 20 computed; the
 * tokens in request order (token_starts), or with `row_order` in row order. */
static kvp_metadata *random_batch(const kvp_config *cfg, uint64_t *rng, int row_order, int64_t *tokens_out) {
  const int64_t dp = cfg->data_parallel_size, per_rank = cfg->num_pages / dp, S = cfg->page_size;
  kvp_batch_request reqs[16];
  static int32_t pages[16][8];
  uint32_t n = 0;
  int64_t T = 0;
  for (int64_t r = 0; r < dp; ++r) {
    int64_t next = r * per_rank + (r == 0 ? 1 : 0);  /* the rank's free pages, in order */
    const int64_t end = (r + 1) * per_rank;
    const int64_t count = kvp_test_rand_range(rng, r == 0 ? 1 : 0, 2);
    for (int64_t i = 0; i < count; ++i) {
      const int decode = kvp_test_rand_range(rng, 0, 1) == 1;
      const int64_t computed = decode ? kvp_test_rand_range(rng, 1, 20) : 0;
      const int64_t scheduled = decode ? 1 : kvp_test_rand_range(rng, 1, 20);
      const int64_t need = (computed + scheduled + S - 1) / S;
      if (next + need > end) break;
      for (int64_t p = 0; p < need; ++p) pages[n][p] = (int32_t)(next++);
      reqs[n] = (kvp_batch_request){computed, scheduled, pages[n], need};
      T += scheduled;
      ++n;
    }
  }
  kvp_batch_options bo = KVP_BATCH_OPTIONS_INIT;
  bo.flags = row_order ? 0 : KVP_BATCH_FLAG_REQUEST_ORDER;
  bo.max_num_tokens = T > 0 ? T : 1;
  kvp_metadata *md = NULL;
  assert_kvp_ok(kvp_metadata_build(cfg, reqs, n, &bo, NULL, &md));
  *tokens_out = T;
  return md;
}

void kvp_test_assert_slice(const unsigned char *whole, const kvp_layout_info *wl, const kvp_cache *shard,
                           uint32_t layer) {
  kvp_shard_info si = KVP_SHARD_INFO_INIT;
  kvp_layout_info sl = {.struct_size = sizeof sl};
  assert_kvp_ok(kvp_cache_get_shard(shard, &si));
  assert_kvp_ok(kvp_cache_get_layout(shard, &sl));
  size_t size;
  unsigned char *b = kvp_test_layer_copy(shard, layer, &size);
  const int64_t S = wl->shape[1], whole_c = wl->storage_num_combined_kv_heads, c = sl.storage_num_combined_kv_heads;
  const int64_t entry = wl->storage_head_dim * wl->itemsize;
  assert_int_equal(si.slot_end - si.slot_begin, c);
  assert_int_equal((size_t)((si.page_end - si.page_begin) * S * c * entry), size);
  for (int64_t p = 0; p < si.page_end - si.page_begin; ++p)
    for (int64_t r = 0; r < S; ++r) {
      const unsigned char *want = whole + (((si.page_begin + p) * S + r) * whole_c + si.slot_begin) * entry;
      const unsigned char *got = b + ((p * S + r) * c) * entry;
      if (memcmp(want, got, (size_t)(c * entry)) != 0)
        fail_msg("shard tp %d dp %d, layer %u: local page %lld row %lld differs from the whole cache", si.tp_rank,
                 si.dp_rank, layer, (long long)p, (long long)r);
    }
  free(b);
}

void kvp_test_shard_union(const kvp_config *cfg, int steps, uint64_t seed, const kvp_test_shard_placement *where) {
  const int64_t tp = cfg->kv_head_shards, dp = cfg->data_parallel_size, n = tp * dp;
  const int64_t H = cfg->num_kv_heads, D = cfg->k_headdim;
  kvp_cache *whole = NULL, *shards[64];
  assert_true(n <= 64);
  assert_kvp_ok(kvp_cache_create(cfg, NULL, &whole));
  for (int64_t i = 0; i < n; ++i) {
    kvp_cache_options o;
    assert_kvp_ok(kvp_cache_options_init(&o, sizeof o));
    if (where != NULL) {
      o.device_type = KVP_DEVICE_CUDA;
      o.device_id = (int32_t)(i % where->cuda_devices);
    }
    assert_kvp_ok(kvp_cache_create_shard(cfg, (int32_t)(i / dp), (int32_t)(i % dp), &o, &shards[i]));
  }
  uint64_t rng = seed;
  for (int step = 0; step < steps; ++step) {
    int64_t T = 0;
    kvp_metadata *md = random_batch(cfg, &rng, where != NULL && where->device_metadata, &T);
    const int64_t rows = T > 0 ? T : 1;
    float *k = malloc((size_t)(rows * H * D) * sizeof(float)), *v = malloc((size_t)(rows * H * D) * sizeof(float));
    assert_true(k != NULL && v != NULL);
    for (int64_t e = 0; e < rows * H * D; ++e) {
      k[e] = (float)kvp_test_rand_range(&rng, -64, 64) / 32.0f;
      v[e] = (float)kvp_test_rand_range(&rng, -64, 64) / 32.0f;
    }
    for (uint32_t layer = 0; layer < 2; ++layer) {
      kvp_tensor kt = kvp_test_tensor(k, KVP_DTYPE_F32, T, H, D, KVP_DEVICE_CPU);
      kvp_tensor vt = kvp_test_tensor(v, KVP_DTYPE_F32, T, H, D, KVP_DEVICE_CPU);
      assert_kvp_ok(kvp_concatenate(whole, layer, &kt, &vt, md, NULL));
      for (int64_t i = 0; i < n; ++i) {
        kvp_shard_info si = KVP_SHARD_INFO_INIT;
        assert_kvp_ok(kvp_cache_get_shard(shards[i], &si));
        kvp_tensor ks = kt, vs = vt;
        if ((step + i + layer) % 2 == 1) {  /* the shard's own heads: a strided view of the full tensors */
          ks.data = k + si.head_begin * D;
          vs.data = v + si.head_begin * D;
          ks.shape[1] = vs.shape[1] = si.head_end - si.head_begin;
        }
        if (where == NULL)
          assert_kvp_ok(kvp_concatenate(shards[i], layer, &ks, &vs, md, NULL));
        else
          where->concatenate(where, shards[i], (int32_t)(i % where->cuda_devices), layer, &ks, &vs, md);
      }
    }
    free(k);
    free(v);
    assert_kvp_ok(kvp_metadata_destroy(md));
  }
  kvp_layout_info wl = {.struct_size = sizeof wl};
  assert_kvp_ok(kvp_cache_get_layout(whole, &wl));
  for (uint32_t layer = 0; layer < 2; ++layer) {
    size_t size;
    unsigned char *w = kvp_test_layer_copy(whole, layer, &size);
    size_t nonzero = 0, total = 0;
    for (size_t b = 0; b < size; ++b) nonzero += w[b] != 0;
    for (int64_t i = 0; i < n; ++i) {
      kvp_test_assert_slice(w, &wl, shards[i], layer);
      total += kvp_test_layer_bytes(shards[i]);
    }
    assert_int_equal(total, size); /* disjoint slices of the right sizes: they tile the layer */
    assert_true(nonzero > 0);
    free(w);
  }
  for (int64_t i = 0; i < n; ++i) assert_kvp_ok(kvp_cache_destroy(shards[i]));
  assert_kvp_ok(kvp_cache_destroy(whole));
}
