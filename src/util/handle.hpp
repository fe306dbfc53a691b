// Handles: the one lifecycle of every public object (cache, pool, metadata). A handle is a small
// block, allocated through the object's HostAllocator, that starts with a {magic, state} header
// and points to the implementation object (made through the same allocator). With API armor a
// registry of live handles is consulted before a pointer is dereferenced, so freed or foreign
// pointers are rejected without reading them (STYLE.md "Handle validation").
#pragma once

#include <cstdint>

#include "kvpages/status.h"
#include "util/error.hpp"
#include "util/memory.hpp"

namespace kvp::detail {

enum : uint32_t {
  kMagicCache = 0x4350564Bu,     // 'KVPC'
  kMagicMetadata = 0x4D50564Bu,  // 'KVPM'
  kMagicPool = 0x5050564Bu,      // 'KVPP'
  kMagicDead = 0xDEADDEADu,
};

enum : uint32_t {
  kStateOpen = 1,
  kStatePoisoned = 2,  // a sticky device fault: only get_async_error and destroy are accepted
};

struct handle_header {
  uint32_t magic;
  uint32_t state;
};

// Registry (API armor). No-ops when built without KVP_API_ARMOR. registry_add throws
// error(KVP_ERR_OUT_OF_MEMORY) when its table cannot grow.
void registry_add(const void* handle);
bool registry_remove(const void* handle) noexcept;
bool registry_contains(const void* handle) noexcept;

// Reports misuse to the installed handler and throws error(KVP_ERR_INVALID_HANDLE).
[[noreturn]] void misuse(const char* function, const char* what);
// The misuse handler (kvp_set_misuse_handler); fn may be null.
using MisuseFn = void (*)(const char* what, void* user_data);
void set_misuse_handler(MisuseFn fn, void* user_data) noexcept;

// Returns the header after checking NULL, registry membership and magic; throws on failure.
handle_header* check_header(const void* h, uint32_t magic, const char* function);

// Overwrites the magic with kMagicDead through a volatile store so the compiler cannot drop it
// as a dead store before the memory is released.
void poison_header(handle_header* hdr) noexcept;

// The layout of every public handle struct: `struct kvp_cache : Handle<Cache, kMagicCache> {};`.
template <class T, uint32_t Magic>
struct Handle {
  using Impl = T;
  static constexpr uint32_t kMagic = Magic;
  handle_header hdr;
  HostAllocator alloc;  // made this block and *impl
  T* impl;
};

// Wraps `impl` in a new registered handle, allocated through impl's allocator; or destroys impl
// and throws.
template <class H>
H* handle_new(HostPtr<typename H::Impl> impl) {
  const HostAllocator alloc = impl.get_deleter().alloc;
  H* h = host_new<H>(alloc);
  h->alloc = alloc;
  try {
    registry_add(h);
  } catch (...) {
    host_delete(alloc, h);
    throw;
  }
  h->impl = impl.release();
  h->hdr.state = kStateOpen;
  h->hdr.magic = H::kMagic;
  return h;
}

// The implementation behind a valid handle; throws INVALID_HANDLE.
template <class H>
typename H::Impl& handle_get(const H* h, const char* function) {
  check_header(h, H::kMagic, function);
  return *h->impl;
}

// Destroys a handle and its implementation; NULL is a no-op.
template <class H>
void handle_delete(H* h, const char* function) {
  if (h == nullptr) return;
  check_header(h, H::kMagic, function);
  registry_remove(h);
  poison_header(&h->hdr);
  const HostAllocator alloc = h->alloc;
  host_delete(alloc, h->impl);
  h->impl = nullptr;
  host_delete(alloc, h);
}

}  // namespace kvp::detail
