// Dtype / layout names and the integer helpers of SPEC.md §1.
#include <cstring>

#include "core/config.hpp"
#include "core/dtype.hpp"
#include "core/math.hpp"
#include "kvpages/types.h"
#include "util/error.hpp"

using namespace kvp::detail;

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

extern "C" {

KVP_API kvp_status kvp_dtype_from_string(const char* name, kvp_dtype* out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(name);
  KVP_REQUIRE_NOT_NULL(out);
  for (const NameEntry& e : kDtypeNames) {
    if (std::strcmp(e.name, name) == 0) {
      *out = e.dtype;
      return KVP_OK;
    }
  }
  fail(KVP_ERR_NOT_FOUND, "kvp_dtype_from_string: unknown dtype name '%.64s'", name);
  KVP_API_END;
}

KVP_API const char* kvp_dtype_name(kvp_dtype dtype) {
  clear_last_error();
  return dtype_name(dtype);
}

KVP_API uint32_t kvp_dtype_bits(kvp_dtype dtype) {
  clear_last_error();
  return dtype_bits(dtype);
}

KVP_API kvp_status kvp_layout_from_string(const char* name, kvp_layout* out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(name);
  KVP_REQUIRE_NOT_NULL(out);
  if (std::strcmp(name, "v3") == 0) {
    *out = KVP_LAYOUT_V3;
  } else if (std::strcmp(name, "v2") == 0) {
    *out = KVP_LAYOUT_V2;
  } else {
    fail(KVP_ERR_NOT_FOUND, "kvp_layout_from_string: unknown layout version '%.64s' (expected v2 or v3)", name);
  }
  KVP_API_END;
}

KVP_API const char* kvp_layout_name(kvp_layout layout) {
  clear_last_error();
  return layout == KVP_LAYOUT_V3 ? "v3" : layout == KVP_LAYOUT_V2 ? "v2" : nullptr;
}

KVP_API kvp_status kvp_cdiv(int64_t a, int64_t b, int64_t* out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  *out = cdiv(a, b);
  KVP_API_END;
}

KVP_API kvp_status kvp_align_to_multiple(int64_t v, int64_t m, int64_t* out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  *out = align_to_multiple(v, m);
  KVP_API_END;
}

KVP_API int64_t kvp_previous_power_of_2(int64_t n) {
  clear_last_error();
  return previous_power_of_2(n);
}

KVP_API kvp_status kvp_dtype_packing(kvp_dtype dtype, int64_t* out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  *out = dtype_packing(dtype);
  KVP_API_END;
}

KVP_API kvp_status kvp_page_size_bytes(int64_t page_size, int64_t num_kv_heads, int64_t head_size, kvp_dtype dtype,
                                       int64_t* out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  *out = page_size_bytes(page_size, num_kv_heads, head_size, dtype);
  KVP_API_END;
}

KVP_API kvp_status kvp_num_slices_per_kv_cache_update_page(int64_t page_size_bytes_v, int64_t* out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  *out = num_slices_per_update_page(page_size_bytes_v);
  KVP_API_END;
}

}  // extern "C"
