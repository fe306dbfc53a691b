#include "core/dtype.hpp"

#include <cstring>

#include "backend/backend.hpp"
#include "util/error.hpp"

namespace kvp::detail {

namespace {
struct NameEntry {
  const char* name;
  kvp_dtype dtype;
};
// Every spelling the reference accepts (SPEC.md §2.4); "fp8" means e5m2.
constexpr NameEntry kDtypeNames[] = {
    {"bf16", KVP_DTYPE_BF16},
    {"bfloat16", KVP_DTYPE_BF16},
    {"fp16", KVP_DTYPE_F16},
    {"float16", KVP_DTYPE_F16},
    {"fp32", KVP_DTYPE_F32},
    {"float32", KVP_DTYPE_F32},
    {"fp64", KVP_DTYPE_F64},
    {"float64", KVP_DTYPE_F64},
    {"fp8", KVP_DTYPE_F8_E5M2},
    {"fp8_e4m3fn", KVP_DTYPE_F8_E4M3FN},
    {"float8_e4m3fn", KVP_DTYPE_F8_E4M3FN},
    {"fp8_e4m3fnuz", KVP_DTYPE_F8_E4M3FNUZ},
    {"float8_e4m3fnuz", KVP_DTYPE_F8_E4M3FNUZ},
    {"fp8_e4m3b11fnuz", KVP_DTYPE_F8_E4M3B11FNUZ},
    {"float8_e4m3b11fnuz", KVP_DTYPE_F8_E4M3B11FNUZ},
    {"fp8_e5m2", KVP_DTYPE_F8_E5M2},
    {"float8_e5m2", KVP_DTYPE_F8_E5M2},
    {"fp8_e5m2fnuz", KVP_DTYPE_F8_E5M2FNUZ},
    {"float8_e5m2fnuz", KVP_DTYPE_F8_E5M2FNUZ},
};
}  // namespace

kvp_dtype dtype_from_name(const char* name, const char* function) {
  for (const NameEntry& e : kDtypeNames)
    if (std::strcmp(e.name, name) == 0) return e.dtype;
  fail(KVP_ERR_NOT_FOUND, "%s: unknown dtype name '%.64s'", function, name);
}

const char* layout_name(kvp_layout layout) noexcept {
  return layout == KVP_LAYOUT_V3 ? "v3" : layout == KVP_LAYOUT_V2 ? "v2" : nullptr;
}

kvp_layout layout_from_name(const char* name, const char* function) {
  if (std::strcmp(name, "v3") == 0) return KVP_LAYOUT_V3;
  if (std::strcmp(name, "v2") == 0) return KVP_LAYOUT_V2;
  fail(KVP_ERR_NOT_FOUND, "%s: unknown layout version '%.64s' (expected v2 or v3)", function, name);
}

bool dtype_known(kvp_dtype d) noexcept { return d >= KVP_DTYPE_F32 && d <= KVP_DTYPE_F8_E5M2FNUZ; }

bool dtype_is_storage(kvp_dtype d) noexcept {
  return d == KVP_DTYPE_F32 || d == KVP_DTYPE_F16 || d == KVP_DTYPE_BF16 ||
         d == KVP_DTYPE_F8_E4M3FN || d == KVP_DTYPE_F8_E5M2;
}

bool dtype_is_input(kvp_dtype d) noexcept {
  return d == KVP_DTYPE_F32 || d == KVP_DTYPE_F16 || d == KVP_DTYPE_BF16;
}

uint32_t dtype_bits(kvp_dtype d) noexcept {
  switch (d) {
    case KVP_DTYPE_F32: return 32;
    case KVP_DTYPE_F16:
    case KVP_DTYPE_BF16: return 16;
    case KVP_DTYPE_F64: return 64;
    case KVP_DTYPE_F8_E4M3FN:
    case KVP_DTYPE_F8_E5M2:
    case KVP_DTYPE_F8_E4M3FNUZ:
    case KVP_DTYPE_F8_E4M3B11FNUZ:
    case KVP_DTYPE_F8_E5M2FNUZ: return 8;
    default: return 0;
  }
}

const char* dtype_name(kvp_dtype d) noexcept {
  switch (d) {
    case KVP_DTYPE_F32: return "fp32";
    case KVP_DTYPE_F16: return "fp16";
    case KVP_DTYPE_BF16: return "bf16";
    case KVP_DTYPE_F64: return "fp64";
    case KVP_DTYPE_F8_E4M3FN: return "fp8_e4m3fn";
    case KVP_DTYPE_F8_E5M2: return "fp8_e5m2";
    case KVP_DTYPE_F8_E4M3FNUZ: return "fp8_e4m3fnuz";
    case KVP_DTYPE_F8_E4M3B11FNUZ: return "fp8_e4m3b11fnuz";
    case KVP_DTYPE_F8_E5M2FNUZ: return "fp8_e5m2fnuz";
    default: return nullptr;
  }
}

int64_t dtype_packing(kvp_dtype d) {
  const uint32_t bits = dtype_bits(d);
  if (bits == 0) fail(KVP_ERR_NOT_FOUND, "unknown dtype %u", static_cast<unsigned>(d));
  if (32 % bits != 0)
    fail(KVP_ERR_INVALID_ARGUMENT,
         "dtype %s has %u bits; 32 is not a multiple of it, so it cannot be packed into 32-bit words",
         dtype_name(d), bits);
  return 32 / bits;
}

void require_storage_dtype(kvp_dtype d, const char* function) {
  if (!dtype_known(d)) fail(KVP_ERR_NOT_FOUND, "%s: unknown kvdtype %u", function, static_cast<unsigned>(d));
  if (d == KVP_DTYPE_F64)
    fail(KVP_ERR_UNSUPPORTED,
         "%s: kvdtype fp64 cannot be stored: 32 %% 64 != 0, so it has no packing", function);
  if (!dtype_is_storage(d))
    fail(KVP_ERR_UNSUPPORTED,
         "%s: kvdtype %s is known by name only; storage dtypes are fp32, fp16, bf16, fp8_e4m3fn, fp8_e5m2",
         function, dtype_name(d));
}

namespace {
void require_convertible(kvp_dtype d, const char* role, const char* function) {
  if (!dtype_known(d)) fail(KVP_ERR_NOT_FOUND, "%s: unknown %s %u", function, role, static_cast<unsigned>(d));
  if (!dtype_is_storage(d))
    fail(KVP_ERR_UNSUPPORTED, "%s: %s %s is not converted (fp32, fp16, bf16, fp8_e4m3fn and fp8_e5m2 are)",
         function, role, dtype_name(d));
}
}  // namespace

void convert_elements(const void* src, kvp_dtype src_dtype, void* dst, kvp_dtype dst_dtype, size_t count,
                      const char* function) {
  require_convertible(src_dtype, "src_dtype", function);
  require_convertible(dst_dtype, "dst_dtype", function);
  if (count == 0) return;
  if (src == nullptr || dst == nullptr)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: 'src' and 'dst' must not be NULL when count is %zu", function, count);
  const size_t src_size = dtype_size(src_dtype), dst_size = dtype_size(dst_dtype);
  size_t src_bytes, dst_bytes;
  if (__builtin_mul_overflow(count, src_size, &src_bytes) || __builtin_mul_overflow(count, dst_size, &dst_bytes))
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: count %zu overflows the address space", function, count);
  const auto s = reinterpret_cast<uintptr_t>(src), d = reinterpret_cast<uintptr_t>(dst);
  const bool in_place = s == d && src_size == dst_size;
  if (!in_place && s < d + dst_bytes && d < s + src_bytes)
    fail(KVP_ERR_INVALID_ARGUMENT,
         "%s: 'src' and 'dst' overlap; they must be disjoint, or the same address for dtypes of one width",
         function);
  host_convert(src, src_dtype, dst, dst_dtype, count);
}

}  // namespace kvp::detail
