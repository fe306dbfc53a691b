// Dtype / layout names and the integer helpers of SPEC.md §1.
#include "core/config.hpp"
#include "core/dtype.hpp"
#include "core/math.hpp"
#include "kvpages/types.h"
#include "util/error.hpp"

using namespace kvp::detail;

extern "C" {

KVP_API kvp_status kvp_dtype_from_string(const char* name, kvp_dtype* out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(name);
  KVP_REQUIRE_NOT_NULL(out);
  *out = dtype_from_name(name, "kvp_dtype_from_string");
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
  *out = layout_from_name(name, "kvp_layout_from_string");
  KVP_API_END;
}

KVP_API const char* kvp_layout_name(kvp_layout layout) {
  clear_last_error();
  return layout_name(layout);
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

KVP_API kvp_status kvp_convert(const void* src, kvp_dtype src_dtype, void* dst, kvp_dtype dst_dtype, size_t count) {
  KVP_API_BEGIN;
  convert_elements(src, src_dtype, dst, dst_dtype, count, "kvp_convert");
  KVP_API_END;
}

}  // extern "C"
