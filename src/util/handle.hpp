// Handle validation (STYLE.md "Handle validation"): every public object starts with a
// {magic, state} header; with API armor a registry of live handles is consulted before the
// pointer is dereferenced, so freed or foreign pointers are rejected without reading them.
#pragma once

#include <cstdint>

#include "kvpages/status.h"
#include "util/error.hpp"

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

// Registry (API armor). No-ops when built without KVP_API_ARMOR.
void registry_add(const void* handle);
bool registry_remove(const void* handle) noexcept;
bool registry_contains(const void* handle) noexcept;

// Reports misuse to the installed handler and throws error(KVP_ERR_INVALID_HANDLE).
[[noreturn]] void misuse(const char* function, const char* what);

const char* magic_name(uint32_t magic) noexcept;

// Returns the header after checking NULL, registry membership and magic; throws on failure.
inline handle_header* check_header(const void* h, uint32_t magic, const char* function) {
  if (h == nullptr) misuse(function, "NULL handle");
#if defined(KVP_API_ARMOR)
  if (!registry_contains(h)) misuse(function, "not a live kvpages handle (destroyed or foreign)");
#endif
  auto* hdr = static_cast<handle_header*>(const_cast<void*>(h));
  if (hdr->magic == kMagicDead) misuse(function, "destroyed handle");
  if (hdr->magic != magic) {
    if (hdr->magic == kMagicCache || hdr->magic == kMagicMetadata || hdr->magic == kMagicPool)
      misuse(function, magic_name(hdr->magic));
    misuse(function, "not a kvpages handle");
  }
  return hdr;
}

// Overwrites the magic with kMagicDead through a volatile store so the compiler cannot drop it
// as a dead store before the memory is released.
void poison_header(handle_header* hdr) noexcept;

}  // namespace kvp::detail
