#include "support.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *KVP_CALL test_alloc_fn(void *ud, size_t size, size_t align) {
  kvp_test_alloc_state *st = (kvp_test_alloc_state *)ud;
  if (st->fail_after >= 0 && st->allocations >= st->fail_after) return NULL;
  /* test_malloc gives no alignment guarantee beyond malloc's; over-allocate and stash the
   * original pointer just before the aligned block. */
  size_t a = align < sizeof(void *) ? sizeof(void *) : align;
  unsigned char *raw = (unsigned char *)test_malloc(size + a + sizeof(void *));
  if (raw == NULL) return NULL;
  uintptr_t p = ((uintptr_t)(raw + sizeof(void *)) + (a - 1)) & ~(uintptr_t)(a - 1);
  ((void **)p)[-1] = raw;
  st->allocations++;
  st->live++;
  return (void *)p;
}

static void KVP_CALL test_free_fn(void *ud, void *ptr) {
  kvp_test_alloc_state *st = (kvp_test_alloc_state *)ud;
  st->live--;
  test_free(((void **)ptr)[-1]);
}

kvp_host_allocator kvp_test_allocator(kvp_test_alloc_state *state) {
  kvp_host_allocator a;
  a.alloc = test_alloc_fn;
  a.free = test_free_fn;
  a.user_data = state;
  return a;
}

kvp_config kvp_test_config(int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t page_size,
                           int64_t num_pages, kvp_dtype dtype, kvp_layout layout) {
  return kvp_test_config_len(layers, kv_heads, head_dim, page_size, num_pages, dtype, layout, page_size * 16);
}

kvp_config kvp_test_config_len(int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t page_size,
                               int64_t num_pages, kvp_dtype dtype, kvp_layout layout, int64_t max_len) {
  kvp_config cfg;
  if (kvp_test_sized_config(layers, kv_heads, head_dim, page_size, num_pages, dtype, layout, max_len, &cfg) != KVP_OK)
    fail_msg("kvp_test_config: %s", kvp_last_error_message());
  if (cfg.num_pages != num_pages) fail_msg("kvp_test_config: got %lld pages", (long long)cfg.num_pages);
  return cfg;
}

kvp_metadata *kvp_test_v2_metadata(int32_t *slot_mapping, int64_t num_slices, int32_t *num_valid) {
  kvp_metadata_desc d;
  kvp_metadata *md = NULL;
  assert_kvp_ok(kvp_metadata_desc_init(&d, sizeof d));
  d.version = KVP_LAYOUT_V2;
  d.slot_mapping = slot_mapping;
  d.num_slices = num_slices;
  d.num_kv_update_slices = num_valid;
  d.num_kv_update_slices_len = 1;
  assert_kvp_ok(kvp_metadata_create(&d, &md));
  return md;
}

int kvp_test_have_gpu(void) {
  int32_t n = 0;
  assert_kvp_ok(kvp_device_count(&n));
  return KVP_HAS_CUDA && n > 0;
}

void kvp_test_require_gpu(void) {
  if (kvp_test_have_gpu()) return;
  printf("kvpages: no CUDA device\n");
  skip();
}

kvp_cache *kvp_test_cache_on(const kvp_config *cfg, kvp_device_type device, int32_t device_id) {
  kvp_cache_options o;
  kvp_cache *c = NULL;
  assert_kvp_ok(kvp_cache_options_init(&o, sizeof o));
  o.device_type = device;
  o.device_id = device_id;
  assert_kvp_ok(kvp_cache_create(cfg, &o, &c));
  assert_non_null(c);
  return c;
}

size_t kvp_test_layer_bytes(const kvp_cache *cache) {
  kvp_layout_info li;
  memset(&li, 0, sizeof li);
  li.struct_size = sizeof li;
  assert_kvp_ok(kvp_cache_get_layout(cache, &li));
  return (size_t)li.layer_bytes;
}

kvp_status kvp_test_async_error(const kvp_cache *c) {
  kvp_status st = KVP_ERR_INTERNAL;
  assert_kvp_ok(kvp_cache_get_async_error(c, &st));
  return st;
}
