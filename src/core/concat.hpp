// kvp_concatenate, core side: validation of (cache, layer, key, value, metadata) into a ConcatJob
// (backend/jobs.hpp, the contract with the backends), then the cache's backend writes it
// (SPEC.md §5).
#pragma once

#include <cstdint>

#include "core/cache.hpp"
#include "backend/jobs.hpp"
#include "core/metadata.hpp"
#include "core/plan.hpp"
#include "kvpages/types.h"

namespace kvp::detail {

// A job plus the plan its `runs` point into (host-validated metadata: in input-token order, no two
// overlapping).
struct PreparedConcat {
  ConcatJob job;  // filled by prepare_concat (not zeroed first: 700 bytes, each call)
  PlanRef plan;
};

// Checks one [T, heads, D] tensor against the cache: rank, dtype (f32, f16 or bf16), `heads`
// heads (`heads_what` says where that number comes from in errors), the cache's head_dim and
// device, 64-bit offsets; `name` names it in errors.
TensorArg check_input(const Cache& cache, const kvp_tensor& t, const char* name, int64_t heads, const char* heads_what,
                      const char* function);

// Validates everything (throws INVALID_ARGUMENT naming the offending request/slice and value)
// and fills a job; with a plan the metadata keeps, only the per-call arguments are checked.
// Nothing is written.
void prepare_concat(const Cache& cache, int64_t layer, const kvp_tensor& key, const kvp_tensor& value,
                    const Metadata& md, PreparedConcat& out, const char* function);

// Validates (once per metadata and cache when the metadata keeps plans), then has the cache's
// backend write the job; the plan is offered to the metadata once the write succeeded.
void concatenate(Cache& cache, int64_t layer, const kvp_tensor& key, const kvp_tensor& value,
                 const Metadata& md, kvp_stream stream, const char* function);

}  // namespace kvp::detail
