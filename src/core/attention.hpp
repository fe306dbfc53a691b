// kvp_attention, core side (ATTENTION.md): validation of everything into an AttentionJob (and,
// with new keys/values, the ConcatJob of the fused write), then the cache's backend writes and
// attends.
#pragma once

#include <cstdint>

#include "backend/jobs.hpp"
#include "core/cache.hpp"
#include "core/concat.hpp"
#include "core/metadata.hpp"
#include "kvpages/attention.h"
#include "util/memory.hpp"

namespace kvp::detail {

// An attention job plus the storage it points into (the cache's allocator).
struct PreparedAttention {
  AttentionJob job;
  HostVector<float> sinks;
  explicit PreparedAttention(const HostAllocator& alloc) : job(), sinks(alloc) {}
};

// Validates queries, out, options and metadata (and, when `write` is given, that no slot it writes
// is read by any row at another position) and fills a job. Nothing is written.
void prepare_attention(const Cache& cache, int64_t layer, const kvp_tensor& queries, const kvp_tensor& out,
                       const Metadata& md, const kvp_attention_options* opts, const PreparedConcat* write,
                       PreparedAttention& prep, const char* function);

// kvp_attention: validates everything, then (with keys) the fused write, then the attention.
void attention(Cache& cache, int64_t layer, const kvp_tensor& queries, const kvp_tensor* keys,
               const kvp_tensor* values, const Metadata& md, const kvp_attention_options* opts,
               const kvp_tensor& out, kvp_stream stream, const char* function);

}  // namespace kvp::detail
