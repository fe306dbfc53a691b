// XXH3 for checksums of large buffers (blobs, blocks): Debian's libxxhash is built with the x86
// dispatcher; routing the XXH3 calls through it makes them use AVX2/AVX-512 where the CPU has
// them (about 2x the SSE2 baseline). The hashes are the same either way.
#pragma once

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack: hashing never allocates
#include <xxhash.h>
#if defined(__x86_64__) && defined(__has_include)
#if __has_include(<xxh_x86dispatch.h>)
#include <xxh_x86dispatch.h>
#endif
#endif

namespace kvp::detail {

// XXH3-64 of bytes given piece by piece, in order: the same value as XXH3_64bits of them all.
class Xxh3Sum {
 public:
  Xxh3Sum() noexcept { XXH3_64bits_reset(&state_); }
  void add(const void* bytes, size_t n) noexcept { XXH3_64bits_update(&state_, bytes, n); }
  uint64_t value() const noexcept { return XXH3_64bits_digest(&state_); }

 private:
  XXH3_state_t state_;
};

}  // namespace kvp::detail
