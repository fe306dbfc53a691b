// C API shims of include/kvpages/device.h: device count and host copies of layer pages.
#include "backend/backend.hpp"
#include "core/cache.hpp"
#include "kvpages/device.h"
#include "util/error.hpp"

using namespace kvp::detail;

extern "C" {

KVP_API kvp_status KVP_CALL kvp_device_count(int32_t* out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  *out = cuda_device_count();
  KVP_API_END;
}

KVP_API kvp_status KVP_CALL kvp_cache_read_layer(const kvp_cache* cache, uint32_t layer, void* host_dst, size_t cap,
                                                 kvp_stream stream) {
  KVP_API_BEGIN;
  const Cache& c = cache_from(cache, "kvp_cache_read_layer");
  KVP_REQUIRE_NOT_NULL(host_dst);
  c.read_layer(layer, host_dst, cap, stream, "kvp_cache_read_layer");
  KVP_API_END;
}

KVP_API kvp_status KVP_CALL kvp_cache_write_layer(kvp_cache* cache, uint32_t layer, const void* host_src, size_t size,
                                                  kvp_stream stream) {
  KVP_API_BEGIN;
  Cache& c = cache_from(cache, "kvp_cache_write_layer");
  KVP_REQUIRE_NOT_NULL(host_src);
  c.write_layer(layer, host_src, size, stream, "kvp_cache_write_layer");
  KVP_API_END;
}

}  // extern "C"
