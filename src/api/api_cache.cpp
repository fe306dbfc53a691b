// kvp_cache_* shims.
#include <cstring>
#include <new>

#include "core/cache.hpp"
#include "kvpages/cache.h"
#include "util/error.hpp"
#include "util/handle.hpp"
#include "util/options.hpp"

using namespace kvp::detail;

extern "C" {

KVP_API kvp_status kvp_cache_options_init(kvp_cache_options* opts, uint32_t struct_size) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(opts);
  init_versioned(opts, struct_size, sizeof(kvp_cache_options), KVP_CACHE_OPTIONS_VERSION, "kvp_cache_options_init",
                 "kvp_cache_options");
  KVP_API_END;
}

KVP_API kvp_status kvp_cache_create(const kvp_config* cfg, const kvp_cache_options* opts, kvp_cache** out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  *out = nullptr;
  const kvp_config c = read_config(cfg, "kvp_cache_create");
  kvp_cache_options o;
  if (opts != nullptr) {
    o = read_versioned(opts, sizeof(kvp_cache_options), KVP_CACHE_OPTIONS_VERSION, "kvp_cache_create",
                       "kvp_cache_options");
  } else {
    std::memset(&o, 0, sizeof o);
  }
  const kvp_device_type dev = o.device_type == 0 ? KVP_DEVICE_CPU : o.device_type;
  if (dev != KVP_DEVICE_CPU && dev != KVP_DEVICE_CUDA)
    fail(KVP_ERR_INVALID_ARGUMENT, "kvp_cache_create: unknown device_type %d (expected KVP_DEVICE_CPU or KVP_DEVICE_CUDA)", dev);
  if (dev == KVP_DEVICE_CPU && o.device_id != 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "kvp_cache_create: device_id must be 0 for a CPU cache, got %d", o.device_id);
  if (o.allocator != nullptr && (o.allocator->alloc == nullptr || o.allocator->free == nullptr))
    fail(KVP_ERR_INVALID_ARGUMENT, "kvp_cache_create: allocator must provide both alloc and free");
  // Validate the config before touching any device.
  (void)layout_of(c, "kvp_cache_create");
  if (c.num_pages < 1)
    fail(KVP_ERR_INVALID_ARGUMENT, "kvp_cache_create: num_pages is %lld; create the config with kvp_config_create first",
         static_cast<long long>(c.num_pages));

  void* mem = host_alloc(o.allocator, sizeof(kvp_cache), alignof(kvp_cache));
  kvp_cache* h = static_cast<kvp_cache*>(mem);
  std::memset(h, 0, sizeof *h);
  if (o.allocator != nullptr) h->allocator = *o.allocator;
  try {
    std::unique_ptr<Backend> backend =
        dev == KVP_DEVICE_CPU ? make_cpu_backend(o.allocator) : make_cuda_backend(o.device_id);
    h->impl = new Cache(c, std::move(backend));
    registry_add(h);
  } catch (...) {
    delete h->impl;
    const kvp_host_allocator a = h->allocator;
    host_free(a.alloc != nullptr ? &a : nullptr, h);
    throw;
  }
  h->hdr.magic = kMagicCache;
  h->hdr.state = kStateOpen;
  *out = h;
  KVP_API_END;
}

KVP_API kvp_status kvp_cache_destroy(kvp_cache* cache) {
  KVP_API_BEGIN;
  if (cache == nullptr) return KVP_OK;
  check_header(cache, kMagicCache, "kvp_cache_destroy");
  registry_remove(cache);
  poison_header(&cache->hdr);
  delete cache->impl;
  cache->impl = nullptr;
  const kvp_host_allocator a = cache->allocator;
  host_free(a.alloc != nullptr ? &a : nullptr, cache);
  KVP_API_END;
}

KVP_API kvp_status kvp_cache_get_config(const kvp_cache* cache, kvp_config* out) {
  KVP_API_BEGIN;
  const Cache& c = cache_from(cache, "kvp_cache_get_config");
  KVP_REQUIRE_NOT_NULL(out);
  std::memcpy(out, &c.config(), sizeof(kvp_config));
  KVP_API_END;
}

KVP_API kvp_status kvp_cache_get_layout(const kvp_cache* cache, kvp_layout_info* out) {
  KVP_API_BEGIN;
  const Cache& c = cache_from(cache, "kvp_cache_get_layout");
  KVP_REQUIRE_NOT_NULL(out);
  const kvp_config cfg = c.config();
  return kvp_config_get_layout(&cfg, out);
  KVP_API_END;
}

KVP_API kvp_status kvp_cache_get_device(const kvp_cache* cache, kvp_device_type* device_type_out,
                                        int32_t* device_id_out) {
  KVP_API_BEGIN;
  const Cache& c = cache_from(cache, "kvp_cache_get_device");
  if (device_type_out != nullptr) *device_type_out = c.device_type();
  if (device_id_out != nullptr) *device_id_out = c.device_id();
  KVP_API_END;
}

KVP_API kvp_status kvp_cache_get_view(const kvp_cache* cache, uint32_t layer, kvp_view_kind kind, kvp_tensor* out) {
  KVP_API_BEGIN;
  const Cache& c = cache_from(cache, "kvp_cache_get_view");
  KVP_REQUIRE_NOT_NULL(out);
  c.check_layer(layer, "kvp_cache_get_view");
  *out = c.view(layer, kind);
  KVP_API_END;
}

KVP_API kvp_status kvp_cache_get_async_error(const kvp_cache* cache, kvp_status* out) {
  KVP_API_BEGIN;
  const Cache& c = cache_from(cache, "kvp_cache_get_async_error");
  KVP_REQUIRE_NOT_NULL(out);
  std::string msg;
  const kvp_status st = c.async_error(&msg);
  *out = st;
  if (st != KVP_OK) set_last_error(st, msg.c_str());
  return KVP_OK;
  KVP_API_END;
}

KVP_API kvp_status kvp_cache_clear_async_error(kvp_cache* cache) {
  KVP_API_BEGIN;
  Cache& c = cache_from(cache, "kvp_cache_clear_async_error");
  if (!c.clear_async_error()) {
    std::string msg;
    c.async_error(&msg);
    fail(KVP_ERR_DEVICE_LOST, "kvp_cache_clear_async_error: the cache had a sticky device fault (%s); destroy it",
         msg.c_str());
  }
  KVP_API_END;
}

}  // extern "C"
