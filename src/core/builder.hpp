// Batch builder (SPEC.md §4.3, §5.1 slice builder, §5.3 distribution): scheduled requests ->
// owning runtime metadata.
#pragma once

#include <cstdint>

#include "core/metadata.hpp"
#include "kvpages/config.h"
#include "kvpages/metadata.h"

namespace kvp::detail {

// `cfg` must already be read (read_config); it is validated here. `opts` is the normalized
// options (struct_size = sizeof, defaults = 0). order_out may be null (num_requests entries).
// Returns the handle of a new owning Metadata; throws on invalid input (nothing written to
// order_out then).
kvp_metadata* build_metadata(const kvp_config& cfg, const kvp_batch_request* requests, uint32_t num_requests,
                             const kvp_batch_options& opts, int32_t* order_out, const char* function);

// The reference's get_padded_num_slices(T, R) for a validated config with slices-per-page > 0.
int64_t builder_padded_num_slices(const kvp_config& cfg, int64_t num_tokens, int64_t max_reqs);

}  // namespace kvp::detail
