#include "util/checked.hpp"

#include "util/error.hpp"

namespace kvp::detail {

int64_t checked_add(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r))
    fail(KVP_ERR_INVALID_ARGUMENT, "%s overflows int64 (%lld + %lld)", what, ll(a), ll(b));
  return r;
}

int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r))
    fail(KVP_ERR_INVALID_ARGUMENT, "%s overflows int64 (%lld x %lld)", what, ll(a), ll(b));
  return r;
}

size_t checked_bytes(size_t count, size_t elem_size, const char* what) {
  size_t r;
  if (__builtin_mul_overflow(count, elem_size, &r))
    fail(KVP_ERR_OUT_OF_MEMORY, "%s: %zu elements of %zu bytes overflow the address space", what, count, elem_size);
  return r;
}

size_t checked_bytes_add(size_t a, size_t b, const char* what) {
  size_t r;
  if (__builtin_add_overflow(a, b, &r))
    fail(KVP_ERR_OUT_OF_MEMORY, "%s: %zu + %zu bytes overflow the address space", what, a, b);
  return r;
}

}  // namespace kvp::detail
