#include "workload.h"

#include <stdlib.h>
#include <string.h>

#include "reference.h"

enum { kHeads = 8, kDim = 128, kPage = 16 };

static void fill(float *p, size_t n, uint64_t *rng) {
  size_t i;
  for (i = 0; i < n; ++i) {
    *rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
    p[i] = (float)((int32_t)(*rng >> 40) - (1 << 23)) / (float)(1 << 23);
  }
}

kvp_status kvp_test_workload_init(kvp_test_workload *w, int64_t layers, int64_t tokens, uint64_t seed) {
  const int64_t pages = (tokens + kPage - 1) / kPage;
  const size_t n = (size_t)tokens * kHeads * kDim;
  kvp_config_options o;
  kvp_batch_request r;
  kvp_batch_options bo;
  int32_t *ids = NULL, order[1];
  int64_t i;
  kvp_status st;

  memset(w, 0, sizeof *w);
  w->tokens = tokens;
  kvp_config_options_init(&o, sizeof o);
  o.num_hidden_layers = layers;
  o.num_kv_heads = kHeads;
  o.kv_head_dim_size = kDim;
  o.max_model_length = pages * kPage;
  o.page_size = kPage;
  o.kvdtype = KVP_DTYPE_F32;
  o.version = KVP_LAYOUT_V3;
  o.flags = KVP_CONFIG_FLAG_NO_SAFETY_MARGIN;
  /* f32, no padding at head dim 128: exactly pages + 1 (the null page) fit */
  o.budget_bytes = (int64_t)kPage * kHeads * kDim * (int64_t)sizeof(float) * 2 * layers * (pages + 1);
  if ((st = kvp_config_create(&o, &w->cfg)) != KVP_OK) return st;
  if (w->cfg.num_pages < pages + 1) return KVP_ERR_INVALID_ARGUMENT;
  if ((st = kvp_cache_create(&w->cfg, NULL, &w->cache)) != KVP_OK) return st;
  ids = (int32_t *)malloc((size_t)pages * sizeof *ids);
  w->key = (float *)malloc(n * sizeof(float));
  w->value = (float *)malloc(n * sizeof(float));
  if (ids == NULL || w->key == NULL || w->value == NULL) {
    free(ids);
    kvp_test_workload_free(w);
    return KVP_ERR_OUT_OF_MEMORY;
  }
  for (i = 0; i < pages; ++i) ids[i] = (int32_t)(i + 1);
  r.num_computed = 0;
  r.num_scheduled = tokens;
  r.page_ids = ids;
  r.num_pages = pages;
  kvp_batch_options_init(&bo, sizeof bo);
  bo.max_num_reqs = 1;
  bo.max_num_tokens = tokens;
  st = kvp_metadata_build(&w->cfg, &r, 1, &bo, order, &w->md);
  free(ids);
  if (st != KVP_OK) {
    kvp_test_workload_free(w);
    return st;
  }
  fill(w->key, n, &seed);
  fill(w->value, n, &seed);
  w->k = kvp_test_tensor(w->key, KVP_DTYPE_F32, tokens, kHeads, kDim, KVP_DEVICE_CPU);
  w->v = kvp_test_tensor(w->value, KVP_DTYPE_F32, tokens, kHeads, kDim, KVP_DEVICE_CPU);
  return KVP_OK;
}

void kvp_test_workload_free(kvp_test_workload *w) {
  kvp_metadata_destroy(w->md);
  kvp_cache_destroy(w->cache);
  free(w->key);
  free(w->value);
  memset(w, 0, sizeof *w);
}

kvp_status kvp_test_workload_write(kvp_test_workload *w, uint32_t layer) {
  return kvp_concatenate(w->cache, layer, &w->k, &w->v, w->md, NULL);
}

kvp_status kvp_test_serialize_alloc(const kvp_cache *cache, unsigned char **out, size_t *len) {
  size_t size = 0, written = 0;
  kvp_status st = kvp_serialized_size(cache, NULL, &size);
  *out = NULL;
  *len = 0;
  if (st != KVP_OK) return st;
  *out = (unsigned char *)malloc(size);
  if (*out == NULL) return KVP_ERR_OUT_OF_MEMORY;
  st = kvp_serialize(cache, NULL, *out, size, &written);
  if (st != KVP_OK) {
    free(*out);
    *out = NULL;
    return st;
  }
  *len = written;
  return KVP_OK;
}
