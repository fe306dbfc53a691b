// kvp_attention shims (include/kvpages/attention.h).
#include "core/attention.hpp"
#include "core/cache.hpp"
#include "core/metadata.hpp"
#include "kvpages/attention.h"
#include "util/error.hpp"
#include "util/options.hpp"

using namespace kvp::detail;

extern "C" {

KVP_API kvp_status kvp_attention_options_init(kvp_attention_options* opts, uint32_t struct_size) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(opts);
  init_versioned(opts, struct_size, sizeof(kvp_attention_options), KVP_ATTENTION_OPTIONS_VERSION,
                 "kvp_attention_options_init", "kvp_attention_options");
  KVP_API_END;
}

KVP_API kvp_status kvp_attention(kvp_cache* cache, uint32_t layer, const kvp_tensor* queries, const kvp_tensor* keys,
                                 const kvp_tensor* values, const kvp_metadata* metadata,
                                 const kvp_attention_options* opts, const kvp_tensor* out, kvp_stream stream) {
  KVP_API_BEGIN;
  Cache& c = cache_from(cache, "kvp_attention");
  const Metadata& m = metadata_from(metadata, "kvp_attention");
  KVP_REQUIRE_NOT_NULL(queries);
  KVP_REQUIRE_NOT_NULL(out);
  attention(c, layer, *queries, keys, values, m, opts, *out, stream, "kvp_attention");
  KVP_API_END;
}

}  // extern "C"
