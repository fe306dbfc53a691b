// CPU backend: page buffers in host memory; operations in the cpu_*.cpp files beside it.
//
// The layer buffers of a cache (built-in allocator): a cache of 2 MiB or more in all is one
// anonymous mapping (mmap) with layer l at l slices, a slice being the layer's bytes rounded up to
// 64 (to 2 MiB from 2 MiB on, so that a large layer starts on a huge page); a smaller cache is one
// calloc per layer. Zero fill without touching memory twice: the kernel hands out a mapping as zero
// pages on first touch (calloc takes fresh memory the same way), so no memset pass runs and
// untouched pages cost no physical memory. A caller-provided allocator gives no such guarantee,
// so it is asked for one block per layer and each is zero-filled explicitly (unless its caller
// overwrites it, below).
//
// Huge pages (kvp_cache_options::flags): the mapping is made 2 MiB-aligned (map 2 MiB more, unmap
// the unaligned head and the tail) and advised MADV_HUGEPAGE, so that where the kernel's THP mode
// is "madvise" or "always" each 2 MiB of it faults in as one huge page, however small its layers
// (a cache of 8 layers of 1 MiB fills with 4 faults, not 2048); the advice is best effort (a
// kernel without THP refuses it and the mapping keeps 4 KiB pages). KVP_CACHE_FLAG_NO_HUGE_PAGES
// maps without alignment and advises MADV_NOHUGEPAGE instead. KVP_CACHE_FLAG_PREFAULT writes one
// zero byte per 4 KiB page (which faults in the whole huge page where there is one), in 2 MiB
// chunks spread over the thread pool.
//
// Reuse (Backend::Fill::kOverwritten): the kernel's zeroing of fresh pages is a third of the time
// of loading a small cache (kvp_deserialize_new of 8 MiB, perf), work that numpy skips because
// malloc hands back freed heap memory. So a released mapping goes to util/kept_mapping (which
// keeps the last one, up to 32 MiB, advised MADV_FREE) and is given to the next cache of the same
// size and page advice whose every byte its caller overwrites (a load of a blob that holds all
// pages); any other cache maps fresh zero pages as before. A small cache's calloc becomes a malloc
// for such a caller.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "backend/backend.hpp"
#include "cpu/cpu_ops.hpp"
#include "util/checked.hpp"
#include "util/error.hpp"
#include "util/kept_mapping.hpp"
#include "util/thread_pool.hpp"

namespace kvp::detail {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;  // 2 MiB, the x86-64 and arm64 (4 KiB granule) PMD size
constexpr size_t kSmallPage = 4096;
constexpr size_t kAlign = 64;

// An anonymous mapping of `bytes` (>= kHugePage) whose start is 2 MiB-aligned; nullptr on failure.
// The over-mapped head and tail are unmapped, so exactly [p, p + bytes) (in whole pages) stays
// mapped and munmap(p, bytes) releases it.
void* map_huge_aligned(size_t bytes) {
  const size_t span = bytes + kHugePage;
  if (span < bytes) return nullptr;
  void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + kHugePage - 1) & ~(uintptr_t{kHugePage} - 1);
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t end = (aligned + bytes + page - 1) & ~(uintptr_t{page} - 1);
  if (aligned > start) munmap(raw, aligned - start);
  if (start + span > end) munmap(reinterpret_cast<void*>(end), start + span - end);
  return reinterpret_cast<void*>(aligned);
}

// Writes a zero byte into every 4 KiB page of [p, p + bytes), 2 MiB per chunk, on the pool.
void prefault(void* p, size_t bytes) {
  auto* base = static_cast<volatile unsigned char*>(p);
  const int64_t chunks = static_cast<int64_t>((bytes + kHugePage - 1) / kHugePage);
  const int threads = static_cast<int>(std::min<int64_t>(chunks, ThreadPool::instance().max_threads()));
  parallel_for(chunks, threads, [&](int64_t c) {
    const size_t lo = static_cast<size_t>(c) * kHugePage;
    const size_t hi = lo + kHugePage < bytes ? lo + kHugePage : bytes;
    for (size_t off = lo; off < hi; off += kSmallPage) base[off] = 0;
  });
}

class CpuBackend final : public Backend {
 public:
  CpuBackend(const HostAllocator& a, uint32_t flags) : alloc_(a), flags_(flags) {}
  kvp_device_type device_type() const noexcept override { return KVP_DEVICE_CPU; }
  int32_t device_id() const noexcept override { return 0; }

  void alloc_layers(size_t n, size_t bytes, Fill fill, uint8_t** layers) override {
    const size_t total = mapped_bytes(n, bytes);
    if (total != 0) {
      void* kept = fill == Fill::kOverwritten ? kept_mapping_take(total, huge_pages()) : nullptr;
      uint8_t* base = static_cast<uint8_t*>(kept != nullptr ? kept : map_page_buffer(total));
      for (size_t l = 0; l < n; ++l) layers[l] = base + l * slice_bytes(bytes);
      if (kept != nullptr) return;  // faulted in already: nothing to prefault
    } else {
      size_t done = 0;
      try {
        for (; done < n; ++done) layers[done] = static_cast<uint8_t*>(alloc_one(bytes, fill));
      } catch (...) {
        release_layers(layers, done, bytes);
        throw;
      }
    }
    if ((flags_ & KVP_CACHE_FLAG_PREFAULT) != 0) {
      if (total != 0) prefault(layers[0], total);
      else for (size_t l = 0; l < n; ++l) prefault(layers[l], bytes);
    }
  }

  void release_layers(uint8_t* const* layers, size_t n, size_t bytes) noexcept override {
    if (n == 0) return;
    if (const size_t total = mapped_bytes(n, bytes)) {
      kept_mapping_keep(layers[0], total, huge_pages());
      return;
    }
    for (size_t l = 0; l < n; ++l) {
      if (alloc_.builtin()) std::free(layers[l]);
      else alloc_.deallocate(layers[l]);
    }
  }

  void copy_to_host(void* dst, const void* src, size_t n, kvp_stream, bool, const char*) override {
    std::memcpy(dst, src, n);
  }
  void copy_from_host(void* dst, const void* src, size_t n, kvp_stream, bool, const char*) override {
    std::memcpy(dst, src, n);
  }
  void copy_within(void* dst, const void* src, size_t n, kvp_stream) override { std::memmove(dst, src, n); }

  void concatenate(const ConcatJob& job, kvp_stream) override { cpu_concatenate(job, alloc_); }
  void attend(const AttentionJob& job, const ConcatJob* write, kvp_stream) override {
    cpu_attention(job, write, alloc_);
  }

 private:
  // A layer's share of the one mapping: its bytes rounded up to 64, or to 2 MiB from 2 MiB on.
  static size_t slice_bytes(size_t bytes) noexcept {
    const size_t align = bytes >= kHugePage ? kHugePage : kAlign;
    return (bytes + align - 1) / align * align;
  }

  // The size of the one mapping of n layers, or 0 where they are allocated one by one (a custom
  // allocator, or a cache under 2 MiB).
  size_t mapped_bytes(size_t n, size_t bytes) const {
    if (!alloc_.builtin()) return 0;
    const size_t total = checked_bytes(n, slice_bytes(bytes), "a cache's layer buffers");
    return total >= kHugePage ? total : 0;
  }

  bool huge_pages() const noexcept { return (flags_ & KVP_CACHE_FLAG_NO_HUGE_PAGES) == 0; }

  // One layer buffer of a cache that is not mapped whole, zero-filled unless `fill` says the
  // caller overwrites it.
  void* alloc_one(size_t bytes, Fill fill) {
    if (bytes == 0) bytes = 1;
    if (alloc_.builtin()) {
      void* p = fill == Fill::kOverwritten ? std::malloc(bytes) : std::calloc(1, bytes);
      if (p == nullptr) fail(KVP_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes of host memory", bytes);
      return p;
    }
    void* p = alloc_.allocate(bytes, kAlign);
    if (fill == Fill::kZero) std::memset(p, 0, bytes);
    return p;
  }

  // The one mapping of a cache's layers (bytes >= kHugePage), advised for huge pages or not.
  void* map_page_buffer(size_t bytes) {
    const bool huge = huge_pages();
    void* p = nullptr;
    if (huge) {
      p = map_huge_aligned(bytes);
    } else {
      p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) p = nullptr;
    }
    if (p == nullptr) fail(KVP_ERR_OUT_OF_MEMORY, "cannot map %zu bytes of host memory for the page buffers", bytes);
#if defined(MADV_HUGEPAGE) && defined(MADV_NOHUGEPAGE)
    // Best effort: EINVAL from a kernel built without THP leaves the mapping as it is.
    (void)madvise(p, bytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
#endif
    return p;
  }

  HostAllocator alloc_;
  uint32_t flags_;  // KVP_CACHE_FLAG_* (validated by create_cache)
};

}  // namespace

HostPtr<Backend> make_cpu_backend(const HostAllocator& alloc, uint32_t flags) {
  return make_host<CpuBackend>(alloc, alloc, flags);
}

namespace {

// The start of /proc/meminfo (MemTotal and MemAvailable are its first lines) into buf, without
// allocating: a stdio FILE would need heap memory, and this read also runs when memory is short.
// Returns the bytes read; an allocation failure of the kernel is KVP_ERR_OUT_OF_MEMORY.
size_t read_meminfo(char* buf, size_t cap) {
  const int fd = ::open("/proc/meminfo", O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    fail(errno == ENOMEM ? KVP_ERR_OUT_OF_MEMORY : KVP_ERR_IO,
         "cannot open /proc/meminfo to read host memory statistics: %s", std::strerror(errno));
  size_t n = 0;
  while (n < cap) {
    const ssize_t r = ::read(fd, buf + n, cap - n);
    if (r == 0) break;
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      const int err = errno;
      ::close(fd);
      fail(err == ENOMEM ? KVP_ERR_OUT_OF_MEMORY : KVP_ERR_IO, "reading /proc/meminfo failed: %s", std::strerror(err));
    }
    n += static_cast<size_t>(r);
  }
  ::close(fd);
  return n;
}

// The value in kB of the line "<key> <value> kB" in text, or -1.
long long meminfo_kb(const char* text, const char* key) {
  const size_t klen = std::strlen(key);
  for (const char* line = text; line != nullptr && *line != '\0'; line = std::strchr(line, '\n')) {
    if (*line == '\n') ++line;
    long long v;
    if (std::strncmp(line, key, klen) == 0 && std::sscanf(line + klen, " %lld kB", &v) == 1) return v;
  }
  return -1;
}

}  // namespace

void cpu_memory_stats(kvp_memory_stats* out) {
  char text[4096];
  text[read_meminfo(text, sizeof text - 1)] = '\0';
  const long long total_kb = meminfo_kb(text, "MemTotal:");
  const long long avail_kb = meminfo_kb(text, "MemAvailable:");
  if (total_kb < 0 || avail_kb < 0) fail(KVP_ERR_IO, "/proc/meminfo lacks MemTotal or MemAvailable");
  std::memset(out, 0, sizeof *out);
  out->bytes_total = total_kb * 1024;
  out->bytes_in_use = (total_kb - avail_kb) * 1024;
  out->valid = 1;
}

}  // namespace kvp::detail
