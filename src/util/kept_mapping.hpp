// One released anonymous mapping kept for reuse: the mapping of the cache released last, given to
// the next cache of the same size and page advice that overwrites every byte of it (a load of a
// blob that holds all pages), so that such a load skips the kernel's zeroing of fresh pages, as
// malloc's reuse of freed heap memory does for a program that allocates and frees the same size
// in a loop. While kept the mapping is advised MADV_FREE: under memory pressure the kernel takes
// its pages back (they then read as zero, which the next owner overwrites anyway).
// Thread-safe; its lock is held across fork() and the mapping is unmapped when the library is
// unloaded (util/lifecycle.cpp).
#pragma once

#include <cstddef>

namespace kvp::detail {

// The largest mapping kept (glibc's largest dynamic mmap threshold): a larger one is unmapped.
constexpr size_t kKeptMappingMaxBytes = size_t{32} << 20;

// The kept mapping if it has `bytes` and the same huge-page advice (it is then no longer kept),
// or nullptr.
void* kept_mapping_take(size_t bytes, bool huge) noexcept;

// Keeps [p, p + bytes) (an anonymous mapping that munmap(p, bytes) releases) instead of the one
// kept so far, which is unmapped; a mapping larger than kKeptMappingMaxBytes is unmapped at once.
void kept_mapping_keep(void* p, size_t bytes, bool huge) noexcept;

// Process lifecycle hooks (util/lifecycle.cpp).
void kept_mapping_prepare_fork() noexcept;
void kept_mapping_after_fork() noexcept;
void kept_mapping_release() noexcept;  // unmaps the kept mapping

}  // namespace kvp::detail
