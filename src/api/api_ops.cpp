// kvp_concatenate shim.
#include "core/cache.hpp"
#include "core/concat.hpp"
#include "core/metadata.hpp"
#include "kvpages/ops.h"
#include "util/error.hpp"

using namespace kvp::detail;

extern "C" {

KVP_API kvp_status kvp_concatenate(kvp_cache* cache, uint32_t layer, const kvp_tensor* key, const kvp_tensor* value,
                                   const kvp_metadata* metadata, kvp_stream stream) {
  KVP_API_BEGIN;
  Cache& c = cache_from(cache, "kvp_concatenate");
  const Metadata& m = metadata_from(metadata, "kvp_concatenate");
  KVP_REQUIRE_NOT_NULL(key);
  KVP_REQUIRE_NOT_NULL(value);
  concatenate(c, layer, *key, *value, m, stream, "kvp_concatenate");
  KVP_API_END;
}

}  // extern "C"
