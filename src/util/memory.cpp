#include "util/memory.hpp"

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <mutex>

#include "util/error.hpp"

namespace kvp::detail {
namespace {

// Constant-initialised with a trivial destructor: usable until the process ends, and released
// with the library's image when it is unloaded.
std::mutex g_default_mu;
std::mutex& default_mutex() { return g_default_mu; }
kvp_host_allocator g_default{};  // alloc == nullptr: built-in; guarded by default_mutex()

}  // namespace

HostAllocator::HostAllocator() noexcept {
  std::lock_guard<std::mutex> lock(default_mutex());
  a_ = g_default;
}

HostAllocator::HostAllocator(const kvp_host_allocator* a) noexcept {
  if (a != nullptr && a->alloc != nullptr) {
    a_ = *a;
  } else {
    std::lock_guard<std::mutex> lock(default_mutex());
    a_ = g_default;
  }
}

void* HostAllocator::allocate(size_t bytes, size_t align) const {
  if (bytes == 0) bytes = 1;
  void* p = nullptr;
  if (a_.alloc != nullptr) {
    p = a_.alloc(a_.user_data, bytes, align);
  } else if (bytes <= static_cast<size_t>(-1) - align) {
    p = std::aligned_alloc(align, (bytes + align - 1) / align * align);
  }
  if (p == nullptr) fail(KVP_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes of host memory", bytes);
  return p;
}

void HostAllocator::deallocate(void* p) const noexcept {
  if (p == nullptr) return;
  if (a_.free != nullptr)
    a_.free(a_.user_data, p);
  else
    std::free(p);
}

void resize_for_write(HostBytes& b, size_t n) {
  const bool fresh = b.capacity() < n;
  b.resize(n);
#if defined(__linux__)
  constexpr int kPopulateWrite = 23;  // MADV_POPULATE_WRITE, absent from older headers
  const uintptr_t page = 4096;
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(b.data()) + page - 1) & ~(page - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(b.data()) + n) & ~(page - 1);
  if (fresh && hi > lo + page) (void)madvise(reinterpret_cast<void*>(lo), hi - lo, kPopulateWrite);
#else
  (void)fresh;
#endif
}

void check_host_allocator(const kvp_host_allocator* a, const char* function) {
  if (a != nullptr && (a->alloc == nullptr || a->free == nullptr))
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: allocator must provide both alloc and free", function);
}

void set_default_host_allocator(const kvp_host_allocator* a) noexcept {
  std::lock_guard<std::mutex> lock(default_mutex());
  if (a != nullptr)
    g_default = *a;
  else
    g_default = kvp_host_allocator{};
}

void host_allocator_prepare_fork() noexcept { default_mutex().lock(); }
void host_allocator_after_fork() noexcept { default_mutex().unlock(); }

}  // namespace kvp::detail
