#include "util/handle.hpp"

#include <atomic>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_set>

namespace kvp::detail {
namespace {

struct Registry {
  std::shared_mutex mu;
  std::unordered_set<const void*> live;
};

Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: handles may outlive static dtors
  return *r;
}

std::atomic<kvp_misuse_fn> g_misuse_fn{nullptr};
std::atomic<void*> g_misuse_ud{nullptr};

}  // namespace

void registry_add(const void* handle) {
#if defined(KVP_API_ARMOR)
  Registry& r = registry();
  std::unique_lock<std::shared_mutex> lock(r.mu);
  r.live.insert(handle);
#else
  (void)handle;
#endif
}

bool registry_remove(const void* handle) noexcept {
#if defined(KVP_API_ARMOR)
  Registry& r = registry();
  std::unique_lock<std::shared_mutex> lock(r.mu);
  return r.live.erase(handle) == 1;
#else
  (void)handle;
  return true;
#endif
}

bool registry_contains(const void* handle) noexcept {
#if defined(KVP_API_ARMOR)
  Registry& r = registry();
  std::shared_lock<std::shared_mutex> lock(r.mu);
  return r.live.count(handle) == 1;
#else
  (void)handle;
  return true;
#endif
}

const char* magic_name(uint32_t magic) noexcept {
  switch (magic) {
    case kMagicCache: return "wrong handle kind: got a kvp_cache";
    case kMagicMetadata: return "wrong handle kind: got a kvp_metadata";
    case kMagicPool: return "wrong handle kind: got a kvp_pool";
    default: return "wrong handle kind";
  }
}

void misuse(const char* function, const char* what) {
  std::string msg = std::string(function) + ": invalid handle: " + what;
  kvp_misuse_fn fn = g_misuse_fn.load();
  if (fn != nullptr) fn(msg.c_str(), g_misuse_ud.load());
  throw error(KVP_ERR_INVALID_HANDLE, std::move(msg));
}

void poison_header(handle_header* hdr) noexcept {
  volatile uint32_t* m = &hdr->magic;
  *m = kMagicDead;
  volatile uint32_t* s = &hdr->state;
  *s = 0;
}

}  // namespace kvp::detail

extern "C" KVP_API void kvp_set_misuse_handler(kvp_misuse_fn fn, void* user_data) {
  kvp::detail::g_misuse_ud.store(user_data);
  kvp::detail::g_misuse_fn.store(fn);
}
