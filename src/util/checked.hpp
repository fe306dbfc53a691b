// Overflow-checked integer arithmetic: the one helper for every size, count and index bound the
// library computes. Each throws error() naming `what` instead of wrapping.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvp::detail {

// Signed 64-bit sizes derived from caller input: overflow is KVP_ERR_INVALID_ARGUMENT.
int64_t checked_add(int64_t a, int64_t b, const char* what);
int64_t checked_mul(int64_t a, int64_t b, const char* what);

// Byte counts of host allocations (count * element size, sums of parts): a size_t overflow is
// KVP_ERR_OUT_OF_MEMORY (no allocation of that size can succeed).
size_t checked_bytes(size_t count, size_t elem_size, const char* what);
size_t checked_bytes_add(size_t a, size_t b, const char* what);

}  // namespace kvp::detail
