// Bulk host copies that bypass the cache on the destination side.
#pragma once

#include <cstddef>

namespace kvp::detail {

// Copies n bytes from src to dst (no overlap), like memcpy, but writes dst with non-temporal
// stores where the CPU has them (x86-64: SSE2 streaming stores, then a store fence). The
// destination's cache lines are not read for ownership first, so a bulk copy moves 2n bytes
// through memory instead of 3n, and it does not evict the caller's working set. Use it for copies
// whose destination is not read again soon (serialization blobs, pages being restored); small
// copies (under 4 KiB) and other architectures use memcpy.
void stream_copy(void* dst, const void* src, size_t n) noexcept;

}  // namespace kvp::detail
