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

// kvp_attention: validates everything, then (with keys) the fused write, then the attention.
void attention(Cache& cache, int64_t layer, const kvp_tensor& queries, const kvp_tensor* keys,
               const kvp_tensor* values, const Metadata& md, const kvp_attention_options* opts,
               const kvp_tensor& out, kvp_stream stream, const char* function);

}  // namespace kvp::detail
