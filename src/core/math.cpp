#include "core/math.hpp"

#include <limits>

namespace kvp::detail {

int64_t cdiv(int64_t a, int64_t b) {
  if (b == 0) fail(KVP_ERR_INVALID_ARGUMENT, "cdiv: division by zero");
  // (a + b - 1) // b with Python floor division; the sum is computed without overflow in 128 bits.
  __int128 n = static_cast<__int128>(a) + b - 1;
  __int128 q = n / b;
  if ((n % b != 0) && ((n < 0) != (b < 0))) --q;
  if (q > std::numeric_limits<int64_t>::max() || q < std::numeric_limits<int64_t>::min())
    fail(KVP_ERR_INVALID_ARGUMENT, "cdiv(%lld, %lld) overflows int64", static_cast<long long>(a),
         static_cast<long long>(b));
  return static_cast<int64_t>(q);
}

int64_t align_to_multiple(int64_t v, int64_t m) {
  if (m == 0) fail(KVP_ERR_INVALID_ARGUMENT, "align_to_multiple: multiple must not be zero");
  return checked_mul(cdiv(v, m), m, "align_to_multiple");
}

int64_t previous_power_of_2(int64_t n) noexcept {
  if (n <= 0) return 0;
  return int64_t{1} << (63 - __builtin_clzll(static_cast<unsigned long long>(n)));
}

}  // namespace kvp::detail
