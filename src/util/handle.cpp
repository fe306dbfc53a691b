#include "util/handle.hpp"

#include <atomic>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <string>

namespace kvp::detail {
namespace {

// The live handles: an open-addressing set of addresses (linear probing, backward-shift
// deletion), at most half full. Process-wide infrastructure: its table comes from the built-in
// allocator (a handle creation may fail with KVP_ERR_OUT_OF_MEMORY when it must grow) and is
// never shrunk.
class Registry {
 public:
  void add(const void* p) {
    std::unique_lock<std::shared_mutex> lock(mu_);
    if (2 * (size_ + 1) > cap_) grow();
    size_t i = home(p);
    while (slots_[i] != nullptr) {
      if (slots_[i] == p) return;
      i = (i + 1) & (cap_ - 1);
    }
    slots_[i] = p;
    ++size_;
  }

  bool remove(const void* p) noexcept {
    std::unique_lock<std::shared_mutex> lock(mu_);
    size_t i = find(p);
    if (i == kNone) return false;
    // Backward shift: move later members of the probe run into the hole.
    for (size_t j = (i + 1) & (cap_ - 1); slots_[j] != nullptr; j = (j + 1) & (cap_ - 1)) {
      const size_t h = home(slots_[j]);
      if (((j - h) & (cap_ - 1)) >= ((j - i) & (cap_ - 1))) {
        slots_[i] = slots_[j];
        i = j;
      }
    }
    slots_[i] = nullptr;
    --size_;
    return true;
  }

  bool contains(const void* p) noexcept {
    std::shared_lock<std::shared_mutex> lock(mu_);
    return find(p) != kNone;
  }

 private:
  static constexpr size_t kNone = static_cast<size_t>(-1);

  size_t home(const void* p) const noexcept {
    uint64_t x = reinterpret_cast<uintptr_t>(p);
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return static_cast<size_t>(x) & (cap_ - 1);
  }

  size_t find(const void* p) const noexcept {
    if (cap_ == 0) return kNone;
    for (size_t i = home(p); slots_[i] != nullptr; i = (i + 1) & (cap_ - 1))
      if (slots_[i] == p) return i;
    return kNone;
  }

  void grow() {
    const size_t cap = cap_ == 0 ? 64 : 2 * cap_;
    const HostAllocator alloc = HostAllocator::builtin_allocator();
    auto* slots = static_cast<const void**>(alloc.allocate(cap * sizeof(void*), alignof(void*)));
    std::memset(static_cast<void*>(slots), 0, cap * sizeof(void*));
    const void** old = slots_;
    const size_t old_cap = cap_;
    slots_ = slots;
    cap_ = cap;
    for (size_t i = 0; i < old_cap; ++i) {
      if (old[i] == nullptr) continue;
      size_t j = home(old[i]);
      while (slots_[j] != nullptr) j = (j + 1) & (cap_ - 1);
      slots_[j] = old[i];
    }
    alloc_.deallocate(old);
    alloc_ = alloc;
  }

  std::shared_mutex mu_;
  const void** slots_ = nullptr;
  size_t cap_ = 0;
  size_t size_ = 0;
  HostAllocator alloc_ = HostAllocator::builtin_allocator();  // made slots_
};

Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: handles may outlive static dtors
  return *r;
}

std::atomic<MisuseFn> g_misuse_fn{nullptr};
std::atomic<void*> g_misuse_ud{nullptr};

const char* wrong_kind(uint32_t magic) noexcept {
  switch (magic) {
    case kMagicCache: return "wrong handle kind: got a kvp_cache";
    case kMagicMetadata: return "wrong handle kind: got a kvp_metadata";
    case kMagicPool: return "wrong handle kind: got a kvp_pool";
    default: return "not a kvpages handle";
  }
}

}  // namespace

void registry_add(const void* handle) {
#if defined(KVP_API_ARMOR)
  registry().add(handle);
#else
  (void)handle;
#endif
}

bool registry_remove(const void* handle) noexcept {
#if defined(KVP_API_ARMOR)
  return registry().remove(handle);
#else
  (void)handle;
  return true;
#endif
}

bool registry_contains(const void* handle) noexcept {
#if defined(KVP_API_ARMOR)
  return registry().contains(handle);
#else
  (void)handle;
  return true;
#endif
}

handle_header* check_header(const void* h, uint32_t magic, const char* function) {
  if (h == nullptr) misuse(function, "NULL handle");
#if defined(KVP_API_ARMOR)
  if (!registry_contains(h)) misuse(function, "not a live kvpages handle (destroyed or foreign)");
#endif
  auto* hdr = static_cast<handle_header*>(const_cast<void*>(h));
  if (hdr->magic == kMagicDead) misuse(function, "destroyed handle");
  if (hdr->magic != magic) misuse(function, wrong_kind(hdr->magic));
  return hdr;
}

void misuse(const char* function, const char* what) {
  std::string msg = std::string(function) + ": invalid handle: " + what;
  const MisuseFn fn = g_misuse_fn.load();
  if (fn != nullptr) fn(msg.c_str(), g_misuse_ud.load());
  throw error(KVP_ERR_INVALID_HANDLE, std::move(msg));
}

void set_misuse_handler(MisuseFn fn, void* user_data) noexcept {
  g_misuse_ud.store(user_data);
  g_misuse_fn.store(fn);
}

void poison_header(handle_header* hdr) noexcept {
  volatile uint32_t* m = &hdr->magic;
  *m = kMagicDead;
  volatile uint32_t* s = &hdr->state;
  *s = 0;
}

}  // namespace kvp::detail
