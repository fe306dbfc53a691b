#include "util/nontemporal.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace kvp::detail {

namespace {
constexpr long kMaxStreamKib = long(1) << 30;  // 1 TiB: KVP_STREAM_KIB above it is clamped to it
}  // namespace

size_t nontemporal_threshold(bool cached) noexcept {
  static const long env_kib = [] {
    if (const char* env = std::getenv("KVP_STREAM_KIB")) {
      char* end = nullptr;
      const long kib = std::strtol(env, &end, 10);
      if (end != env && *end == 0) return std::clamp<long>(kib, 0, kMaxStreamKib);
    }
    return long(-1);
  }();
  static const size_t cached_threshold = [] {
    long l2 = 0;
#ifdef _SC_LEVEL2_CACHE_SIZE
    l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    if (l2 <= 0) return size_t(2) << 20;
    return std::clamp(static_cast<size_t>(l2), size_t(2) << 20, size_t(8) << 20);
  }();
  if (env_kib >= 0) return static_cast<size_t>(env_kib) << 10;
  return cached ? cached_threshold : size_t(128) << 10;
}

bool lines_cached(const unsigned char* const* lines, int n) noexcept {
  // Each load's address depends on the value before it (through a zero the compiler cannot see),
  // so the loads cannot overlap and the time is the sum of their latencies.
  using Clock = std::chrono::steady_clock;
  constexpr std::chrono::nanoseconds kCachedPerLine{100};  // the clock read included
  static volatile uint64_t zero = 0;
  const uint64_t z = zero;
  uint64_t dep = 0;
  const Clock::time_point t0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    dep = *reinterpret_cast<const volatile unsigned char*>(lines[i] + (dep & z));
    if (Clock::now() - t0 > kCachedPerLine * (i + 1)) return false;
  }
  return true;
}

void copy_nontemporal(void* dst, const void* src, size_t n) noexcept {
#if KVP_HAVE_NONTEMPORAL
  constexpr size_t kMin = 4096;
  if (n < kMin) {
    std::memcpy(dst, src, n);
    return;
  }
  auto* d = static_cast<uint8_t*>(dst);
  const auto* s = static_cast<const uint8_t*>(src);
  // Streaming stores need a 16-byte aligned destination, and write-combining works best on whole
  // 64-byte lines: copy the head up to the next line boundary normally.
  const size_t head = (64 - (reinterpret_cast<uintptr_t>(d) & 63)) & 63;
  std::memcpy(d, s, head);
  d += head;
  s += head;
  n -= head;
  // One whole destination cache line per iteration.
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    // Software prefetch 1 KiB ahead: one thread's hardware prefetch alone leaves the loads short of
    // the memory bandwidth when the source is not in cache (prefetches never fault).
    __builtin_prefetch(s + i + 1024, 0, 3);
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 32));
    const __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 48), e);
  }
  // Streaming stores are weakly ordered: fence them before anything else can observe dst.
  fence_nontemporal();
  std::memcpy(d + i, s + i, n - i);
#else
  std::memcpy(dst, src, n);
#endif
}

}  // namespace kvp::detail
