// CPU backend: page buffers in host memory; operations in the cpu_*.cpp files beside it.
//
// Zero fill without touching memory twice: with the built-in allocator, large buffers are mapped
// anonymously (mmap), which the kernel hands out as zero pages on first touch, so no memset pass
// runs and untouched pages cost no physical memory; small buffers use calloc. A caller-provided
// allocator gives no such guarantee, so its blocks are zero-filled explicitly.
#include <sys/mman.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "backend/backend.hpp"
#include "cpu/cpu_ops.hpp"
#include "util/error.hpp"

namespace kvp::detail {
namespace {

constexpr size_t kMmapThreshold = size_t{1} << 20;  // 1 MiB
constexpr size_t kAlign = 64;

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const HostAllocator& a) : alloc_(a) {}
  kvp_device_type device_type() const noexcept override { return KVP_DEVICE_CPU; }
  int32_t device_id() const noexcept override { return 0; }

  void* alloc_zeroed(size_t bytes) override {
    if (bytes == 0) bytes = 1;
    if (!alloc_.builtin()) {
      void* p = alloc_.allocate(bytes, kAlign);
      std::memset(p, 0, bytes);
      return p;
    }
    if (bytes >= kMmapThreshold) {
      void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED)
        fail(KVP_ERR_OUT_OF_MEMORY, "cannot map %zu bytes of host memory for a page buffer", bytes);
      return p;
    }
    void* p = std::calloc(1, bytes);
    if (p == nullptr) fail(KVP_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes of host memory", bytes);
    return p;
  }

  void release(void* p, size_t bytes) noexcept override {
    if (p == nullptr) return;
    if (bytes == 0) bytes = 1;
    if (!alloc_.builtin()) {
      alloc_.deallocate(p);
    } else if (bytes >= kMmapThreshold) {
      munmap(p, bytes);
    } else {
      std::free(p);
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
  HostAllocator alloc_;
};

}  // namespace

HostPtr<Backend> make_cpu_backend(const HostAllocator& alloc) { return make_host<CpuBackend>(alloc, alloc); }

void cpu_memory_stats(kvp_memory_stats* out) {
  std::FILE* f = std::fopen("/proc/meminfo", "r");
  if (f == nullptr) fail(KVP_ERR_IO, "cannot open /proc/meminfo to read host memory statistics");
  long long total_kb = -1, avail_kb = -1;
  char line[256];
  while (std::fgets(line, sizeof line, f) != nullptr) {
    long long v;
    if (std::sscanf(line, "MemTotal: %lld kB", &v) == 1) total_kb = v;
    if (std::sscanf(line, "MemAvailable: %lld kB", &v) == 1) avail_kb = v;
  }
  std::fclose(f);
  if (total_kb < 0 || avail_kb < 0) fail(KVP_ERR_IO, "/proc/meminfo lacks MemTotal or MemAvailable");
  std::memset(out, 0, sizeof *out);
  out->bytes_total = total_kb * 1024;
  out->bytes_in_use = (total_kb - avail_kb) * 1024;
  out->valid = 1;
}

}  // namespace kvp::detail
