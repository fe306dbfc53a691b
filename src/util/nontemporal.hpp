// Non-temporal stores: writes that go around the CPU caches. The destination's cache lines are
// not read for ownership first, so a bulk write moves 2n bytes through memory instead of 3n, and
// it does not evict the caller's working set. For data not read again soon (serialization blobs,
// pages being restored, batches larger than the caches). x86-64 uses SSE2 streaming stores; other
// CPUs plain copies.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#define KVP_HAVE_NONTEMPORAL 1
#else
#define KVP_HAVE_NONTEMPORAL 0
#endif

namespace kvp::detail {

// memcpy (no overlap) with non-temporal stores for the bulk and a store fence at the end; copies
// under 4 KiB use memcpy.
void copy_nontemporal(void* dst, const void* src, size_t n) noexcept;

// kBytes (a multiple of 16) to a 16-byte aligned dst with non-temporal stores, unfenced: the
// caller calls fence_nontemporal() before anything else may read dst.
template <int kBytes>
inline void copy_nontemporal_fixed(uint8_t* dst, const uint8_t* src) noexcept {
#if KVP_HAVE_NONTEMPORAL
  for (int i = 0; i < kBytes; i += 16)
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
#else
  std::memcpy(dst, src, kBytes);
#endif
}

template <int kBytes>
inline void zero_nontemporal_fixed(uint8_t* dst) noexcept {
#if KVP_HAVE_NONTEMPORAL
  const __m128i z = _mm_setzero_si128();
  for (int i = 0; i < kBytes; i += 16) _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), z);
#else
  std::memset(dst, 0, kBytes);
#endif
}

// Orders the non-temporal stores before later stores (and before other threads see a flag).
inline void fence_nontemporal() noexcept {
#if KVP_HAVE_NONTEMPORAL
  _mm_sfence();
#endif
}

}  // namespace kvp::detail
