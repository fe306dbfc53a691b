// Handles: the one lifecycle of every public object (cache, pool, metadata, cache group). A handle
// is a small block that starts with a {magic, state, serial} header and points to the
// implementation object (made through the object's HostAllocator).
//
// Handle blocks live in the library's own handle table (util/handle.cpp), never in a caller's
// allocator, so that a handle's address keeps its meaning after the handle is destroyed:
//  - the table is one region the library maps for itself and never hands to anything else, so a
//    check of a destroyed handle reads the table, not memory that now belongs to someone else;
//  - slots are handed out in address order, going round the table and skipping live ones, so a
//    destroyed handle's address goes to another handle only after the cursor went round:
//    at least kHandleSlots - 1 - L creations later (L: the handles live in between);
//  - every handle gets a serial that no other handle of the process ever has, so an object that
//    remembers another (a pool its cache) can tell a new handle at the same address from the old.
// With API armor a pointer is checked against the table (inside it, on a slot boundary) before it
// is read, so foreign pointers are rejected without reading them (STYLE.md "Handle validation").
// The check takes no lock.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>

#include "kvpages/status.h"
#include "util/error.hpp"
#include "util/memory.hpp"

namespace kvp::detail {

enum : uint32_t {
  kMagicCache = 0x4350564Bu,     // 'KVPC'
  kMagicMetadata = 0x4D50564Bu,  // 'KVPM'
  kMagicPool = 0x5050564Bu,      // 'KVPP'
  kMagicGroup = 0x4750564Bu,     // 'KVPG'
  kMagicStore = 0x5350564Bu,     // 'KVPS'
  kMagicDead = 0xDEADDEADu,
  kMagicReserved = 0x5245534Bu,  // a slot being filled by handle_new
};

enum : uint32_t {
  kStateOpen = 1,
  kStatePoisoned = 2,  // a sticky device fault: only get_async_error and destroy are accepted
  kStateLent = 3,      // owned by another handle (a group's shard): destroyed only by its owner
};

// Slots of the handle table, and the bytes of each (every handle block fits one).
constexpr size_t kHandleSlots = size_t(1) << 20;
constexpr size_t kHandleSlotBytes = 64;

struct handle_header {
  std::atomic<uint32_t> magic;
  std::atomic<uint32_t> state;
  uint64_t serial;  // unique in the process; set before magic is published
};

// The handle table. handle_slot_new throws error(KVP_ERR_OUT_OF_MEMORY) when the table cannot be
// mapped or grown, or kHandleSlots handles are live; it returns a zeroed slot whose header has a
// fresh serial and the magic kMagicReserved. handle_slot_free poisons the header (kMagicDead) and
// gives the slot back.
handle_header* handle_slot_new();
void handle_slot_free(handle_header* hdr) noexcept;
// Handles live now (for tests of the table and the unload hook).
size_t handle_slots_live() noexcept;
// Process lifecycle hooks (util/lifecycle.cpp): hold the table's lock across fork(), and unmap
// the table when the library is unloaded (only if no handle is live: a leaked one stays readable).
void handle_table_prepare_fork() noexcept;
void handle_table_after_fork() noexcept;
void handle_table_release() noexcept;

// Reports misuse to the installed handler and throws error(KVP_ERR_INVALID_HANDLE).
[[noreturn]] void misuse(const char* function, const char* what);
// The misuse handler (kvp_set_misuse_handler); fn may be null.
using MisuseFn = void (*)(const char* what, void* user_data);
void set_misuse_handler(MisuseFn fn, void* user_data) noexcept;

// Returns the header after checking NULL, table membership (API armor) and magic; throws on
// failure.
const handle_header* check_header(const void* h, uint32_t magic, const char* function);

// The layout of every public handle struct: `struct kvp_cache : Handle<Cache, kMagicCache> {};`.
template <class T, uint32_t Magic>
struct Handle {
  using Impl = T;
  static constexpr uint32_t kMagic = Magic;
  handle_header hdr;
  HostAllocator alloc;  // made *impl
  T* impl;
};

// Wraps `impl` in a new handle from the handle table; or destroys impl and throws.
template <class H>
H* handle_new(HostPtr<typename H::Impl> impl) {
  static_assert(sizeof(H) <= kHandleSlotBytes && alignof(H) <= 16, "a handle must fit a table slot");
  static_assert(offsetof(H, hdr) == 0, "the header starts the handle");
  auto* h = reinterpret_cast<H*>(handle_slot_new());  // throws; impl is then destroyed by its owner
  new (&h->alloc) HostAllocator(impl.get_deleter().alloc);
  h->impl = impl.release();
  h->hdr.state.store(kStateOpen, std::memory_order_relaxed);
  h->hdr.magic.store(H::kMagic, std::memory_order_release);
  return h;
}

// The implementation behind a valid handle; throws INVALID_HANDLE.
template <class H>
typename H::Impl& handle_get(const H* h, const char* function) {
  check_header(h, H::kMagic, function);
  return *h->impl;
}

// The same, and the handle must be the one whose serial was recorded (handle_serial) earlier: a
// new handle at the address of a destroyed one is refused with `what`.
template <class H>
typename H::Impl& handle_get(const H* h, uint64_t serial, const char* function, const char* what) {
  if (check_header(h, H::kMagic, function)->serial != serial) misuse(function, what);
  return *h->impl;
}

// The serial of a valid handle (check it first).
template <class H>
uint64_t handle_serial(const H* h) noexcept {
  return h->hdr.serial;
}

// Marks a new handle as lent by its owner: handle_delete refuses it unless the owner calls it.
template <class H>
void handle_lend(H* h) noexcept {
  h->hdr.state.store(kStateLent, std::memory_order_relaxed);
}

// Destroys a handle and its implementation; NULL is a no-op. A lent handle is refused as misuse
// (INVALID_HANDLE) unless `by_owner`.
template <class H>
void handle_delete(H* h, const char* function, bool by_owner = false) {
  if (h == nullptr) return;
  const handle_header* hdr = check_header(h, H::kMagic, function);
  if (!by_owner && hdr->state.load(std::memory_order_relaxed) == kStateLent)
    misuse(function, "borrowed handle: it belongs to a kvp_cache_group (destroy the group)");
  const HostAllocator alloc = h->alloc;
  typename H::Impl* impl = h->impl;
  h->alloc.~HostAllocator();
  handle_slot_free(&h->hdr);
  host_delete(alloc, impl);
}

}  // namespace kvp::detail
