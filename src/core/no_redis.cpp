// The Redis store's factory in a build without hiredis (KVPAGES_REDIS=OFF, or AUTO without it).
#include "core/store.hpp"
#include "util/error.hpp"

namespace kvp::detail {

HostPtr<Store> make_redis_store(const char*, uint32_t, const HostAllocator&, const char* fn) {
  fail(KVP_ERR_UNSUPPORTED, "%s: built without Redis: KVPAGES_REDIS=OFF", fn);
}

bool redis_store_built() noexcept { return false; }

}  // namespace kvp::detail
