// Integer helpers with the reference's (Python) semantics in checked 64-bit arithmetic. The
// overflow-checked primitives (checked_add, checked_mul, checked_bytes) live in util/checked.hpp.
#pragma once

#include <cstdint>

#include "util/checked.hpp"
#include "util/error.hpp"

namespace kvp::detail {

// Throw error(KVP_ERR_INVALID_ARGUMENT) on overflow or division by zero.
int64_t cdiv(int64_t a, int64_t b);                // (a + b - 1) // b
int64_t align_to_multiple(int64_t v, int64_t m);   // cdiv(v, m) * m
int64_t previous_power_of_2(int64_t n) noexcept;   // 0 if n <= 0

}  // namespace kvp::detail
