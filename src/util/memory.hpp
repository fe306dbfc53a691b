// Host memory. Every allocation the library makes on a caller's behalf goes through a
// HostAllocator: the allocator of the object it belongs to (kvp_cache_options::allocator,
// kvp_pool_options::allocator), or else the process default (kvp_set_host_allocator(), built-in
// when none is set). An allocation is always freed through the allocator that made it: objects
// and containers capture their HostAllocator when they are created.
//
// Not through it: process-wide infrastructure (the handle table, the CPU worker threads), error
// messages (exception text and the thread-local message), the CUDA runtime's own allocations, and
// the JSON library's tokenizer scratch (the current token and the nesting stack; what the parse
// keeps goes through it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <type_traits>
#include <string>
#include <utility>
#include <vector>

#include "kvpages/cache.h"
#include "util/checked.hpp"

namespace kvp::detail {

class HostAllocator {
 public:
  // The process default, captured now.
  HostAllocator() noexcept;
  // `a` (copied), or the process default when `a` is null.
  explicit HostAllocator(const kvp_host_allocator* a) noexcept;
  // The built-in allocator, whatever the default: for the library's process-wide infrastructure
  // and for the deleter of an empty HostPtr (which frees nothing), without the default's lock.
  static HostAllocator builtin_allocator() noexcept { return HostAllocator(Builtin{}); }

  // Throws error(KVP_ERR_OUT_OF_MEMORY). bytes == 0 allocates 1 byte. align is a power of two.
  void* allocate(size_t bytes, size_t align) const;
  void deallocate(void* p) const noexcept;
  // True for the built-in allocator (aligned_alloc); large page buffers then use mmap.
  bool builtin() const noexcept { return a_.alloc == nullptr; }
  bool operator==(const HostAllocator& o) const noexcept {
    return a_.alloc == o.a_.alloc && a_.free == o.a_.free && a_.user_data == o.a_.user_data;
  }
  bool operator!=(const HostAllocator& o) const noexcept { return !(*this == o); }

 private:
  struct Builtin {};
  explicit HostAllocator(Builtin) noexcept {}
  kvp_host_allocator a_{};
};

// Replaces the process default (nullptr: the built-in one). Not synchronised with allocations in
// flight on other threads: the caller sets it while no other kvpages call runs.
void set_default_host_allocator(const kvp_host_allocator* a) noexcept;

// Process lifecycle hooks (util/lifecycle.cpp): hold the default's lock across fork() so that the
// child never inherits it locked by a thread it does not have.
void host_allocator_prepare_fork() noexcept;
void host_allocator_after_fork() noexcept;

// Refuses a caller's allocator (NULL: none given) without both alloc and free: INVALID_ARGUMENT.
void check_host_allocator(const kvp_host_allocator* a, const char* function);

// std-compatible allocator over a HostAllocator (default-constructed: the process default).
template <class T>
class StdAllocator {
 public:
  using value_type = T;
  StdAllocator() noexcept = default;
  StdAllocator(const HostAllocator& h) noexcept : h_(h) {}  // NOLINT: implicit by design
  template <class U>
  StdAllocator(const StdAllocator<U>& o) noexcept : h_(o.host()) {}  // NOLINT
  T* allocate(size_t n) {
    if (n > static_cast<size_t>(-1) / sizeof(T)) throw std::bad_alloc();
    return static_cast<T*>(h_.allocate(n * sizeof(T), alignof(T) < 16 ? 16 : alignof(T)));
  }
  void deallocate(T* p, size_t) noexcept { h_.deallocate(p); }
  const HostAllocator& host() const noexcept { return h_; }
  template <class U>
  bool operator==(const StdAllocator<U>& o) const noexcept { return h_ == o.host(); }
  template <class U>
  bool operator!=(const StdAllocator<U>& o) const noexcept { return h_ != o.host(); }
  // Containers keep the allocator they were made with when copied or moved.
  using propagate_on_container_copy_assignment = std::true_type;
  using propagate_on_container_move_assignment = std::true_type;
  using propagate_on_container_swap = std::true_type;

 private:
  HostAllocator h_;
};

template <class T>
using HostVector = std::vector<T, StdAllocator<T>>;

// StdAllocator whose containers leave new elements default-initialised (vector::resize does not
// zero a byte buffer): for buffers written whole before they are read.
template <class T>
class UninitAllocator : public StdAllocator<T> {
 public:
  using StdAllocator<T>::StdAllocator;
  template <class U>
  void construct(U* p) noexcept(std::is_nothrow_default_constructible<U>::value) {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};
// A byte buffer from a HostAllocator that resize() does not zero.
using HostBytes = std::vector<uint8_t, UninitAllocator<uint8_t>>;
using HostString = std::basic_string<char, std::char_traits<char>, StdAllocator<char>>;

// Resizes b to n bytes (new bytes uninitialised, like resize) for a caller about to write them
// all; where that takes new memory, its pages are mapped in with one system call
// (MADV_POPULATE_WRITE, Linux 5.14) instead of a page fault per 4 KiB page on the first write:
// measured 1.7x as fast to fill fresh 2 and 16 MiB blocks on a 2-vCPU VM. Best effort elsewhere.
void resize_for_write(HostBytes& b, size_t n);

// An uninitialised, aligned array of trivial T from a HostAllocator: scratch that is written
// before it is read (a HostVector would zero it first).
template <class T>
class HostBuffer {
 public:
  explicit HostBuffer(const HostAllocator& a) noexcept : alloc_(a) {}
  ~HostBuffer() { alloc_.deallocate(data_); }
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  // Replaces the array by one of n elements (contents undefined). Throws on exhaustion, leaving
  // the old array in place.
  void allocate(size_t n, size_t align = 64) {
    T* p = static_cast<T*>(alloc_.allocate(checked_bytes(n, sizeof(T), "a host buffer"), align));
    alloc_.deallocate(data_);
    data_ = p;
  }
  T* data() const noexcept { return data_; }

 private:
  HostAllocator alloc_;
  T* data_ = nullptr;
};

// new / delete through a HostAllocator.
template <class T, class... Args>
T* host_new(const HostAllocator& a, Args&&... args) {
  void* p = a.allocate(sizeof(T), alignof(T));
  try {
    return new (p) T(std::forward<Args>(args)...);
  } catch (...) {
    a.deallocate(p);
    throw;
  }
}

template <class T>
void host_delete(const HostAllocator& a, T* p) noexcept {
  if (p == nullptr) return;
  p->~T();
  a.deallocate(p);
}

// unique_ptr whose object came from host_new.
// Deleting through a base class pointer needs a virtual destructor and the base at offset 0
// (single inheritance), as for every Backend.
template <class T>
struct HostDeleter {
  HostAllocator alloc;
  HostDeleter() noexcept : alloc(HostAllocator::builtin_allocator()) {}  // an empty HostPtr's: no lock
  explicit HostDeleter(const HostAllocator& a) noexcept : alloc(a) {}
  template <class U>
  HostDeleter(const HostDeleter<U>& o) noexcept : alloc(o.alloc) {}  // NOLINT: derived -> base
  void operator()(T* p) const noexcept { host_delete(alloc, p); }
};
template <class T>
using HostPtr = std::unique_ptr<T, HostDeleter<T>>;

template <class T, class... Args>
HostPtr<T> make_host(const HostAllocator& a, Args&&... args) {
  return HostPtr<T>(host_new<T>(a, std::forward<Args>(args)...), HostDeleter<T>(a));
}

}  // namespace kvp::detail
