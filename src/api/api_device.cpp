// C API shims of include/kvpages/device.h: device count and host copies of layer pages.
#include <cstring>

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
  const char* fn = "kvp_cache_read_layer";
  Cache& c = cache_from(cache, fn);
  KVP_REQUIRE_NOT_NULL(host_dst);
  c.check_layer(layer, fn);
  const size_t bytes = c.layer_bytes();
  if (cap < bytes)
    fail(KVP_ERR_BUFFER_TOO_SMALL, "%s: cap is %zu bytes but layer %u has %zu bytes", fn, cap,
         static_cast<unsigned>(layer), bytes);
  (void)c.async_error(nullptr);  // polls device-side error flags
  c.check_healthy(fn);
  if (c.device_type() == KVP_DEVICE_CPU)
    std::memcpy(host_dst, c.layer_data(layer), bytes);
  else
    c.backend().copy_to_host(host_dst, c.layer_data(layer), bytes, stream, true, fn);
  KVP_API_END;
}

KVP_API kvp_status KVP_CALL kvp_cache_write_layer(kvp_cache* cache, uint32_t layer, const void* host_src, size_t size,
                                                  kvp_stream stream) {
  KVP_API_BEGIN;
  const char* fn = "kvp_cache_write_layer";
  Cache& c = cache_from(cache, fn);
  KVP_REQUIRE_NOT_NULL(host_src);
  c.check_layer(layer, fn);
  const size_t bytes = c.layer_bytes();
  if (size != bytes)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: size is %zu bytes but layer %u has %zu bytes", fn, size,
         static_cast<unsigned>(layer), bytes);
  (void)c.async_error(nullptr);
  c.check_healthy(fn);
  if (c.device_type() == KVP_DEVICE_CPU)
    std::memcpy(c.layer_data(layer), host_src, bytes);
  else
    c.backend().copy_from_host(c.layer_data(layer), host_src, bytes, stream, true, fn);
  KVP_API_END;
}

}  // extern "C"
