// kvp_cache_* shims.
#include <cstring>
#include <string>

#include "core/cache.hpp"
#include "core/config.hpp"
#include "kvpages/cache.h"
#include "util/error.hpp"
#include "util/handle.hpp"
#include "util/memory.hpp"
#include "util/options.hpp"

using namespace kvp::detail;

extern "C" {

KVP_API kvp_status kvp_cache_options_init(kvp_cache_options* opts, uint32_t struct_size) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(opts);
  init_versioned(opts, struct_size, kCacheOptionsV1Size, KVP_CACHE_OPTIONS_VERSION, "kvp_cache_options_init",
                 "kvp_cache_options");
  KVP_API_END;
}

KVP_API kvp_status kvp_set_host_allocator(const kvp_host_allocator* allocator) {
  KVP_API_BEGIN;
  check_host_allocator(allocator, "kvp_set_host_allocator");
  set_default_host_allocator(allocator);
  KVP_API_END;
}

KVP_API kvp_status kvp_cache_create(const kvp_config* cfg, const kvp_cache_options* opts, kvp_cache** out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  *out = nullptr;
  *out = create_cache(cfg, opts, nullptr, "kvp_cache_create");
  KVP_API_END;
}

KVP_API kvp_status kvp_cache_create_shard(const kvp_config* cfg, int32_t tp_rank, int32_t dp_rank,
                                          const kvp_cache_options* opts, kvp_cache** out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  *out = nullptr;
  const ShardRanks ranks{tp_rank, dp_rank};
  *out = create_cache(cfg, opts, &ranks, "kvp_cache_create_shard");
  KVP_API_END;
}

KVP_API kvp_status kvp_cache_get_shard(const kvp_cache* cache, kvp_shard_info* out) {
  KVP_API_BEGIN;
  const Cache& c = cache_from(cache, "kvp_cache_get_shard");
  KVP_REQUIRE_NOT_NULL(out);
  write_versioned(out, shard_info_of(c.layout(), c.shard()), sizeof(kvp_shard_info), "kvp_cache_get_shard",
                  "kvp_shard_info");
  KVP_API_END;
}

KVP_API kvp_status kvp_config_get_shard(const kvp_config* cfg, int32_t tp_rank, int32_t dp_rank, kvp_shard_info* out) {
  KVP_API_BEGIN;
  const char* fn = "kvp_config_get_shard";
  KVP_REQUIRE_NOT_NULL(out);
  const kvp_config c = read_config(cfg, fn);
  (void)layout_with_pages(c, fn);
  const ShardCoord shard = shard_coord(c, tp_rank, dp_rank, fn);
  write_versioned(out, shard_info_of(shard_layout(c, shard, fn), shard), sizeof(kvp_shard_info), fn,
                  "kvp_shard_info");
  KVP_API_END;
}

KVP_API kvp_status kvp_cache_destroy(kvp_cache* cache) {
  KVP_API_BEGIN;
  handle_delete(cache, "kvp_cache_destroy");
  KVP_API_END;
}

KVP_API kvp_status kvp_cache_get_config(const kvp_cache* cache, kvp_config* out) {
  KVP_API_BEGIN;
  const Cache& c = cache_from(cache, "kvp_cache_get_config");
  KVP_REQUIRE_NOT_NULL(out);
  write_config(out, c.config(), config_wants_v2(out));
  KVP_API_END;
}

KVP_API kvp_status kvp_cache_get_layout(const kvp_cache* cache, kvp_layout_info* out) {
  KVP_API_BEGIN;
  const Cache& c = cache_from(cache, "kvp_cache_get_layout");
  KVP_REQUIRE_NOT_NULL(out);
  write_versioned(out, layout_info_of(c.layout()), sizeof(kvp_layout_info), "kvp_cache_get_layout", "kvp_layout_info");
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
