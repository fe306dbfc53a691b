// kvp_cache_group_* shims.
#include "core/group.hpp"
#include "core/metadata.hpp"
#include "kvpages/group.h"
#include "util/error.hpp"
#include "util/handle.hpp"

using namespace kvp::detail;

extern "C" {

KVP_API kvp_status kvp_cache_group_create(const kvp_config* cfg, const int32_t* device_ids, uint32_t num_device_ids,
                                          const kvp_cache_options* opts, kvp_cache_group** out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  *out = nullptr;
  *out = create_group(cfg, device_ids, num_device_ids, opts, "kvp_cache_group_create");
  KVP_API_END;
}

KVP_API kvp_status kvp_cache_group_destroy(kvp_cache_group* group) {
  KVP_API_BEGIN;
  handle_delete(group, "kvp_cache_group_destroy");
  KVP_API_END;
}

KVP_API kvp_status kvp_cache_group_get_num_shards(const kvp_cache_group* group, uint32_t* out) {
  KVP_API_BEGIN;
  const CacheGroup& g = group_from(group, "kvp_cache_group_get_num_shards");
  KVP_REQUIRE_NOT_NULL(out);
  *out = static_cast<uint32_t>(g.size());
  KVP_API_END;
}

KVP_API kvp_status kvp_cache_group_get_shard(const kvp_cache_group* group, int32_t tp_rank, int32_t dp_rank,
                                             kvp_cache** out) {
  KVP_API_BEGIN;
  const CacheGroup& g = group_from(group, "kvp_cache_group_get_shard");
  KVP_REQUIRE_NOT_NULL(out);
  *out = g.shard(tp_rank, dp_rank, "kvp_cache_group_get_shard");
  KVP_API_END;
}

KVP_API kvp_status kvp_cache_group_concatenate(kvp_cache_group* group, uint32_t layer, const kvp_tensor* keys,
                                               const kvp_tensor* values, uint32_t num_shards,
                                               const kvp_metadata* metadata, const kvp_stream* streams) {
  KVP_API_BEGIN;
  const char* fn = "kvp_cache_group_concatenate";
  CacheGroup& g = group_from(group, fn);
  const Metadata& m = metadata_from(metadata, fn);
  KVP_REQUIRE_NOT_NULL(keys);
  KVP_REQUIRE_NOT_NULL(values);
  g.concatenate(layer, keys, values, num_shards, m, streams, fn);
  KVP_API_END;
}

}  // extern "C"
