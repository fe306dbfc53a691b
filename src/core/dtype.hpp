// Dtype and layout tables: names (reference spellings), widths, packing, which ones are storage
// types.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvpages/types.h"

namespace kvp::detail {

bool dtype_known(kvp_dtype d) noexcept;
// True for the dtypes a cache can store: f32, f16, bf16, fp8 e4m3fn, fp8 e5m2.
bool dtype_is_storage(kvp_dtype d) noexcept;
// True for the dtypes kvp_concatenate accepts as input: f32, f16, bf16.
bool dtype_is_input(kvp_dtype d) noexcept;
uint32_t dtype_bits(kvp_dtype d) noexcept;       // 0 if unknown
inline uint32_t dtype_size(kvp_dtype d) noexcept { return dtype_bits(d) / 8; }
const char* dtype_name(kvp_dtype d) noexcept;    // canonical name or nullptr
// Packing = 32 / bits; throws INVALID_ARGUMENT (fp64) or NOT_FOUND (unknown).
int64_t dtype_packing(kvp_dtype d);
// The dtype of a name (every spelling of the reference); throws NOT_FOUND naming `function`.
kvp_dtype dtype_from_name(const char* name, const char* function);
// "v2" / "v3", or nullptr; and back (throws NOT_FOUND naming `function`).
const char* layout_name(kvp_layout layout) noexcept;
kvp_layout layout_from_name(const char* name, const char* function);
// Checks a dtype for cache storage; throws NOT_FOUND / UNSUPPORTED with a message.
void require_storage_dtype(kvp_dtype d, const char* function);
// kvp_convert: checks the dtypes (known: NOT_FOUND; not a storage dtype: UNSUPPORTED), the
// pointers and their overlap, then converts on the CPU.
void convert_elements(const void* src, kvp_dtype src_dtype, void* dst, kvp_dtype dst_dtype, size_t count,
                      const char* function);

}  // namespace kvp::detail
