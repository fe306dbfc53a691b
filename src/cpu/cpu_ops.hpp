// The CPU backend's operations (one file each), called by CpuBackend.
#pragma once

#include "backend/jobs.hpp"
#include "util/memory.hpp"

namespace kvp::detail {

// Converts n elements of one row, source elements `src_stride` apart, into n contiguous
// destination elements (cpu_convert.cpp).
using RowFn = void (*)(const uint8_t* src, int64_t src_stride, uint8_t* dst, int64_t n);
// The fastest exact row converter for this machine between f32, f16, bf16, fp8 e4m3fn and fp8
// e5m2 (a copy when the dtypes are equal); null for any other pair.
RowFn row_converter(kvp_dtype src, kvp_dtype dst);

// kvp_concatenate (cpu_concat.cpp); requires host-validated metadata. Scratch memory comes from
// `alloc` (the cache's allocator).
void cpu_concatenate(const ConcatJob& job, const HostAllocator& alloc);

// kvp_attention (cpu_attention.cpp): `write` (when not null) through cpu_concatenate, then the
// attention; requires host-validated metadata. Scratch comes from `alloc` (the cache's allocator),
// all of it before the write, so running out of memory changes nothing.
void cpu_attention(const AttentionJob& job, const ConcatJob* write, const HostAllocator& alloc);

}  // namespace kvp::detail
