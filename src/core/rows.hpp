// The processed request rows of runtime metadata, checked on the host: what kvp_concatenate (v3)
// and kvp_attention (v3 and v2) both require of them (ATTENTION.md §2.4, SPEC.md §5).
#pragma once

#include <cstdint>

#include "backend/geometry.hpp"
#include "backend/jobs.hpp"

namespace kvp::detail {

// The metadata's layout and page size (0: any) against the cache's.
void check_metadata_layout(const MetadataArrays& m, const Layout& L, const char* function);

// The processed row count n: request_distribution[2] (checked: 0 <= decode <= prefill <= n <=
// num_reqs) when v3 metadata has a distribution, else num_seqs[0] (checked: in [0, num_reqs]).
int64_t processed_rows(const MetadataArrays& m, bool v3, const char* function);

// Rows [0, n) of page-table metadata over T token rows: the arrays are there, query_start_loc is
// non-decreasing from >= 0 up to T, every q_len is positive (1 for the decode rows of a v3
// distribution), context_len >= q_len, cdiv(context_len, page_size) <= pages_per_req, and the page
// ids in range: of every page a row reads (`all_pages`, attention) or of the pages its new tokens
// go to (concatenate); with token_starts, the rows' token blocks tile [query_start_loc[0],
// query_start_loc[n]); the padding rows of Layout::padding_rows() are skipped. Throws
// INVALID_ARGUMENT naming the request and value.
void check_page_rows(const MetadataArrays& m, const Layout& L, int64_t n, int64_t T, bool all_pages,
                     const char* function);

// For metadata in device memory, whose values the device code checks: the arrays it reads are
// there. Page-table rows (v3, and attention on v2): query_start_loc, context_lens, pages_tables
// (when pages_per_req > 0) and the row count (v3: request_distribution or num_seqs; v2: num_seqs);
// v2 writes (`v2_slices`): slot_mapping and num_kv_update_slices.
void check_device_arrays(const MetadataArrays& m, bool v3, bool v2_slices, const char* function);

}  // namespace kvp::detail
