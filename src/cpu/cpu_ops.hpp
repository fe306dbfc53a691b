// The CPU backend's operations (one file each), called by CpuBackend.
#pragma once

#include "backend/jobs.hpp"
#include "util/memory.hpp"

namespace kvp::detail {

// kvp_concatenate (cpu_concat.cpp); requires host-validated metadata. Scratch memory comes from
// `alloc` (the cache's allocator).
void cpu_concatenate(const ConcatJob& job, const HostAllocator& alloc);

// kvp_attention (cpu_attention.cpp): `write` (when not null) through cpu_concatenate, then the
// attention; requires host-validated metadata. Scratch comes from `alloc` (the cache's allocator),
// all of it before the write, so running out of memory changes nothing.
void cpu_attention(const AttentionJob& job, const ConcatJob* write, const HostAllocator& alloc);

}  // namespace kvp::detail
