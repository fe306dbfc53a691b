// kvp_concatenate, core side: validation of (cache, layer, key, value, metadata) into a ConcatJob
// (backend/jobs.hpp, the contract with the backends), then the cache's backend writes it
// (SPEC.md §5).
#pragma once

#include <cstdint>

#include "core/cache.hpp"
#include "backend/jobs.hpp"
#include "core/metadata.hpp"
#include "util/memory.hpp"
#include "kvpages/types.h"

namespace kvp::detail {

// A job plus the storage its `runs` point into (the cache's allocator).
struct PreparedConcat {
  ConcatJob job;
  HostVector<ConcatRun> runs;
  explicit PreparedConcat(const HostAllocator& alloc) : job(), runs(alloc) {}
};

// Checks one [T, H, D] input tensor against the cache (rank, dtype, heads, head_dim, device,
// 64-bit offsets); `name` names it in errors.
TensorArg check_input(const Cache& cache, const kvp_tensor& t, const char* name, const char* function);

// Validates everything (throws INVALID_ARGUMENT naming the offending request/slice and value)
// and fills a job. Nothing is written.
void prepare_concat(const Cache& cache, int64_t layer, const kvp_tensor& key, const kvp_tensor& value,
                    const Metadata& md, PreparedConcat& out, const char* function);

// Validates, then has the cache's backend write the job.
void concatenate(Cache& cache, int64_t layer, const kvp_tensor& key, const kvp_tensor& value,
                 const Metadata& md, kvp_stream stream, const char* function);

}  // namespace kvp::detail
