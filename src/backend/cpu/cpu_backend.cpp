// CPU backend: page buffers in host memory.
//
// Zero fill without touching memory twice: the built-in path maps large buffers anonymously
// (mmap), which the kernel hands out as zero pages on first touch, so no memset pass runs and
// untouched pages cost no physical memory. Small buffers use calloc. A caller-provided allocator
// gives no such guarantee, so its blocks are zero-filled explicitly.
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>

#include "backend/backend.hpp"
#include "util/error.hpp"

namespace kvp::detail {
namespace {

constexpr size_t kMmapThreshold = size_t{1} << 20;  // 1 MiB
constexpr size_t kAlign = 64;

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const kvp_host_allocator* a) {
    if (a != nullptr) {
      alloc_ = *a;
      has_alloc_ = true;
    }
  }
  kvp_device_type device_type() const noexcept override { return KVP_DEVICE_CPU; }
  int32_t device_id() const noexcept override { return 0; }

  void* alloc_zeroed(size_t bytes) override {
    if (bytes == 0) bytes = 1;
    if (has_alloc_) {
      void* p = host_alloc(&alloc_, bytes, kAlign);
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
    if (has_alloc_) {
      host_free(&alloc_, p);
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
  void fill_zero(void* dst, size_t n, kvp_stream) override { std::memset(dst, 0, n); }

 private:
  kvp_host_allocator alloc_{};
  bool has_alloc_ = false;
};

}  // namespace

void* host_alloc(const kvp_host_allocator* a, size_t bytes, size_t align) {
  if (bytes == 0) bytes = 1;
  void* p = nullptr;
  if (a != nullptr && a->alloc != nullptr) {
    p = a->alloc(a->user_data, bytes, align);
  } else {
    p = std::aligned_alloc(align, (bytes + align - 1) / align * align);
  }
  if (p == nullptr) fail(KVP_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes of host memory", bytes);
  return p;
}

void host_free(const kvp_host_allocator* a, void* p) noexcept {
  if (p == nullptr) return;
  if (a != nullptr && a->free != nullptr) {
    a->free(a->user_data, p);
  } else {
    std::free(p);
  }
}

std::unique_ptr<Backend> make_cpu_backend(const kvp_host_allocator* a) { return std::make_unique<CpuBackend>(a); }

}  // namespace kvp::detail
