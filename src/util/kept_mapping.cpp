#include "util/kept_mapping.hpp"

#include <sys/mman.h>

#include <mutex>

namespace kvp::detail {
namespace {

struct Kept {
  std::mutex mu;
  void* p = nullptr;
  size_t bytes = 0;
  bool huge = false;
};
Kept g_kept;  // constant-initialised: usable from any static constructor or destructor

}  // namespace

void* kept_mapping_take(size_t bytes, bool huge) noexcept {
  std::lock_guard<std::mutex> lock(g_kept.mu);
  if (g_kept.p == nullptr || g_kept.bytes != bytes || g_kept.huge != huge) return nullptr;
  void* p = g_kept.p;
  g_kept.p = nullptr;
  return p;
}

void kept_mapping_keep(void* p, size_t bytes, bool huge) noexcept {
  if (bytes > kKeptMappingMaxBytes) {
    munmap(p, bytes);
    return;
  }
#ifdef MADV_FREE
  (void)madvise(p, bytes, MADV_FREE);  // best effort: a kernel before 4.5 keeps the pages
#endif
  void* old = nullptr;
  size_t old_bytes = 0;
  {
    std::lock_guard<std::mutex> lock(g_kept.mu);
    old = g_kept.p;
    old_bytes = g_kept.bytes;
    g_kept.p = p;
    g_kept.bytes = bytes;
    g_kept.huge = huge;
  }
  if (old != nullptr) munmap(old, old_bytes);
}

void kept_mapping_prepare_fork() noexcept { g_kept.mu.lock(); }
void kept_mapping_after_fork() noexcept { g_kept.mu.unlock(); }

void kept_mapping_release() noexcept {
  std::lock_guard<std::mutex> lock(g_kept.mu);
  if (g_kept.p != nullptr) munmap(g_kept.p, g_kept.bytes);
  g_kept.p = nullptr;
}

}  // namespace kvp::detail
