// The CPU backend's operations (one file each), called by CpuBackend.
#pragma once

#include "backend/jobs.hpp"
#include "util/memory.hpp"

namespace kvp::detail {

// kvp_concatenate (cpu_concat.cpp); requires host-validated metadata. Scratch memory comes from
// `alloc` (the cache's allocator).
void cpu_concatenate(const ConcatJob& job, const HostAllocator& alloc);

// kvp_attention, read side (cpu_attention.cpp); requires host-validated metadata. Scratch comes
// from `alloc` (the cache's allocator), all of it before the work starts.
void cpu_attention(const AttentionJob& job, const HostAllocator& alloc);

}  // namespace kvp::detail
