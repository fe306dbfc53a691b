#include "util/handle.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <mutex>
#include <string>

// AddressSanitizer builds (GCC defines __SANITIZE_ADDRESS__, Clang answers __has_feature): the
// table is a LeakSanitizer root region, since handles point to their objects from it.
#if defined(__SANITIZE_ADDRESS__)
#define KVP_LSAN_ROOTS 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KVP_LSAN_ROOTS 1
#endif
#endif
#if defined(KVP_LSAN_ROOTS)
#include <sanitizer/lsan_interface.h>
#endif

namespace kvp::detail {
namespace {

// The handle table (see handle.hpp): kHandleSlots slots of kHandleSlotBytes in one region that is
// reserved inaccessible and made readable and writable from the start in kCommitBytes steps
// (`committed_`, which only grows until the table is released). A slot is live from
// handle_slot_new until handle_slot_free. Slots are handed out at a cursor that moves forward and
// wraps, skipping live slots. A unit of the region (the OS page, or 4 KiB when that is smaller)
// whose slots are all dead and that the cursor has left is given back to the OS (it reads as zeros
// again), so the memory used follows the live handles, not how many were ever made. Process-wide
// infrastructure: not a caller's allocator; never destroyed (static storage).
class HandleTable {
 public:
  handle_header* allocate() {
    std::lock_guard<std::mutex> lock(mu_);
    if (base_.load(std::memory_order_relaxed) == 0) map_region();
    if (live_ == kHandleSlots) fail(KVP_ERR_OUT_OF_MEMORY, "the handle table is full (%zu live handles)", live_);
    for (;;) {
      const size_t i = cursor_;
      advance_cursor();
      if (!ensure_committed(i)) fail(KVP_ERR_OUT_OF_MEMORY, "the handle table could not grow");
      auto* hdr = slot(i);
      const uint32_t m = hdr->magic.load(std::memory_order_relaxed);
      if (m != 0 && m != kMagicDead) continue;  // live
      std::memset(static_cast<void*>(hdr), 0, kHandleSlotBytes);
      hdr->serial = ++serial_;
      hdr->magic.store(kMagicReserved, std::memory_order_relaxed);
      ++live_;
      ++unit_live_[unit_of(i)];
      return hdr;
    }
  }

  void free(handle_header* hdr) noexcept {
    std::lock_guard<std::mutex> lock(mu_);
    hdr->state.store(0, std::memory_order_relaxed);
    hdr->magic.store(kMagicDead, std::memory_order_release);
    const size_t i = index_of(hdr);
    --live_;
    const size_t u = unit_of(i);
    if (--unit_live_[u] == 0 && u != unit_of(cursor_)) release_unit(u);
  }

  // Lock-free: the slot of p, or nullptr when p is not a slot of the table.
  const handle_header* find(const void* p) const noexcept {
    const uintptr_t base = base_.load(std::memory_order_acquire);
    const uintptr_t off = reinterpret_cast<uintptr_t>(p) - base;
    if (base == 0 || off >= committed_.load(std::memory_order_acquire) || off % kHandleSlotBytes != 0) return nullptr;
    return static_cast<const handle_header*>(p);
  }

  size_t live() noexcept {
    std::lock_guard<std::mutex> lock(mu_);
    return live_;
  }

  void lock() noexcept { mu_.lock(); }
  void unlock() noexcept { mu_.unlock(); }

  // Unmaps the region when no handle is live (then a later handle maps a new one).
  void release() noexcept {
    std::lock_guard<std::mutex> lock(mu_);
    const uintptr_t base = base_.load(std::memory_order_relaxed);
    if (base == 0 || live_ != 0) return;
    base_.store(0, std::memory_order_release);
    committed_.store(0, std::memory_order_release);
#if defined(KVP_LSAN_ROOTS)
    __lsan_unregister_root_region(reinterpret_cast<void*>(base), kRegionBytes);
#endif
    munmap(reinterpret_cast<void*>(base), kRegionBytes);
    cursor_ = 0;
    std::memset(unit_live_, 0, sizeof unit_live_);
  }

 private:
  static constexpr size_t kRegionBytes = kHandleSlots * kHandleSlotBytes;
  static constexpr size_t kCommitBytes = size_t(64) << 10;
  static constexpr size_t kMinUnitBytes = 4096;

  handle_header* slot(size_t i) const noexcept {
    return reinterpret_cast<handle_header*>(base_.load(std::memory_order_relaxed) + i * kHandleSlotBytes);
  }
  size_t index_of(const handle_header* hdr) const noexcept {
    return (reinterpret_cast<uintptr_t>(hdr) - base_.load(std::memory_order_relaxed)) / kHandleSlotBytes;
  }
  size_t unit_of(size_t i) const noexcept { return i * kHandleSlotBytes / unit_bytes_; }

  void map_region() {
    void* p = mmap(nullptr, kRegionBytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) fail(KVP_ERR_OUT_OF_MEMORY, "the handle table could not be mapped (%zu bytes)", kRegionBytes);
    const long page = sysconf(_SC_PAGESIZE);
    unit_bytes_ = page > static_cast<long>(kMinUnitBytes) ? static_cast<size_t>(page) : kMinUnitBytes;
    base_.store(reinterpret_cast<uintptr_t>(p), std::memory_order_release);
#if defined(KVP_LSAN_ROOTS)
    __lsan_register_root_region(p, kRegionBytes);  // handles point to their objects from here
#endif
  }

  bool ensure_committed(size_t i) noexcept {
    const size_t have = committed_.load(std::memory_order_relaxed);
    if ((i + 1) * kHandleSlotBytes <= have) return true;
    void* at = reinterpret_cast<void*>(base_.load(std::memory_order_relaxed) + have);
    if (mprotect(at, kCommitBytes, PROT_READ | PROT_WRITE) != 0) return false;
    committed_.store(have + kCommitBytes, std::memory_order_release);
    return true;
  }

  void advance_cursor() noexcept {
    const size_t left = unit_of(cursor_);
    cursor_ = (cursor_ + 1) % kHandleSlots;
    if (unit_of(cursor_) != left && unit_live_[left] == 0) release_unit(left);
  }

  void release_unit(size_t u) noexcept {
    if (u * unit_bytes_ >= committed_.load(std::memory_order_relaxed)) return;
    madvise(reinterpret_cast<void*>(base_.load(std::memory_order_relaxed) + u * unit_bytes_), unit_bytes_,
            MADV_DONTNEED);
  }

  std::mutex mu_;
  std::atomic<uintptr_t> base_{0};
  std::atomic<size_t> committed_{0};
  // Guarded by mu_:
  size_t unit_bytes_ = kMinUnitBytes;
  size_t cursor_ = 0;
  size_t live_ = 0;
  uint64_t serial_ = 0;
  uint16_t unit_live_[kRegionBytes / kMinUnitBytes] = {};
};

// Constant-initialised and trivially destructible members but the mutex, whose destructor is
// trivial too: the table outlives every static destructor.
HandleTable g_table;

std::atomic<MisuseFn> g_misuse_fn{nullptr};
std::atomic<void*> g_misuse_ud{nullptr};

const char* wrong_kind(uint32_t magic) noexcept {
  switch (magic) {
    case kMagicCache: return "wrong handle kind: got a kvp_cache";
    case kMagicMetadata: return "wrong handle kind: got a kvp_metadata";
    case kMagicPool: return "wrong handle kind: got a kvp_pool";
    case kMagicGroup: return "wrong handle kind: got a kvp_cache_group";
    case kMagicStore: return "wrong handle kind: got a kvp_store";
    default: return "not a kvpages handle";
  }
}

}  // namespace

handle_header* handle_slot_new() { return g_table.allocate(); }
void handle_slot_free(handle_header* hdr) noexcept { g_table.free(hdr); }
size_t handle_slots_live() noexcept { return g_table.live(); }
void handle_table_prepare_fork() noexcept { g_table.lock(); }
void handle_table_after_fork() noexcept { g_table.unlock(); }
void handle_table_release() noexcept { g_table.release(); }

const handle_header* check_header(const void* h, uint32_t magic, const char* function) {
  if (h == nullptr) misuse(function, "NULL handle");
#if defined(KVP_API_ARMOR)
  const handle_header* hdr = g_table.find(h);
  if (hdr == nullptr) misuse(function, "not a kvpages handle (foreign pointer)");
#else
  const auto* hdr = static_cast<const handle_header*>(h);
#endif
  const uint32_t m = hdr->magic.load(std::memory_order_acquire);
  if (m == kMagicDead || m == 0) misuse(function, "destroyed handle");
  if (m != magic) misuse(function, wrong_kind(m));
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

}  // namespace kvp::detail
