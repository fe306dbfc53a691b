#include "core/rows.hpp"

#include <algorithm>

#include "core/math.hpp"
#include "util/error.hpp"
#include "util/memory.hpp"

namespace kvp::detail {

void check_metadata_layout(const MetadataArrays& m, const Layout& L, const char* fn) {
  if (m.version != (L.v3 ? KVP_LAYOUT_V3 : KVP_LAYOUT_V2))
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: metadata is for layout %s but the cache uses %s", fn,
         m.version == KVP_LAYOUT_V2 ? "v2" : "v3", L.v3 ? "v3" : "v2");
  if (m.page_size != 0 && m.page_size != L.page_size)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: metadata page_size %lld differs from the cache's page_size %lld", fn,
         ll(m.page_size), ll(L.page_size));
}

int64_t processed_rows(const MetadataArrays& m, bool v3, const char* fn) {
  if (v3 && m.request_distribution != nullptr) {
    const int64_t d = m.request_distribution[0], p = m.request_distribution[1], n = m.request_distribution[2];
    if (!(0 <= d && d <= p && p <= n && n <= m.num_reqs))
      fail(KVP_ERR_INVALID_ARGUMENT,
           "%s: request_distribution [%lld, %lld, %lld] must satisfy 0 <= decode <= prefill <= num_seqs <= num_reqs %lld",
           fn, ll(d), ll(p), ll(n), ll(m.num_reqs));
    return n;
  }
  if (m.num_seqs == nullptr || m.num_seqs_len < 1)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s metadata needs %s", fn, v3 ? "v3" : "v2",
         v3 ? "request_distribution or num_seqs" : "num_seqs (the number of rows to attend)");
  const int64_t n = m.num_seqs[0];
  if (n < 0 || n > m.num_reqs)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: num_seqs %lld is out of range [0, num_reqs %lld]", fn, ll(n), ll(m.num_reqs));
  return n;
}

namespace {

int64_t query_len(const MetadataArrays& m, int64_t i) { return m.query_start_loc[i + 1] - m.query_start_loc[i]; }

// q_len, the decode rule and the context length of row i.
void check_row(const MetadataArrays& m, const Layout& L, int64_t i, int64_t T, int64_t decode_rows, const char* fn) {
  const int64_t qs = m.query_start_loc[i], qe = m.query_start_loc[i + 1];
  const int64_t q_len = qe - qs, len = m.context_lens[i];
  if (q_len <= 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: request %lld: query length %lld (query_start_loc %lld -> %lld) must be positive",
         fn, ll(i), ll(q_len), ll(qs), ll(qe));
  if (qe > T)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: request %lld: query_start_loc[%lld] = %lld exceeds the %lld input tokens", fn,
         ll(i), ll(i + 1), ll(qe), ll(T));
  if (i < decode_rows && q_len != 1)
    fail(KVP_ERR_INVALID_ARGUMENT,
         "%s: request %lld: a decode row (before request_distribution[0] = %lld) has query length %lld, not 1", fn,
         ll(i), ll(decode_rows), ll(q_len));
  if (len < q_len)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: request %lld: context_len %lld is smaller than its query length %lld", fn,
         ll(i), ll(len), ll(q_len));
  if (cdiv(len, L.page_size) > m.pages_per_req)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: request %lld: context_len %lld needs %lld pages but pages_per_req is %lld", fn,
         ll(i), ll(len), ll(cdiv(len, L.page_size)), ll(m.pages_per_req));
}

// Whether the processed rows' token blocks [token_starts[i], + q_len_i) tile [lo, hi) =
// [query_start_loc[0], query_start_loc[n]) exactly, in O(n + hi - lo): the rows' blocks add up to
// hi - lo, so they tile it when a walk from lo, block by block (each start owned by one row),
// reaches hi through all n rows. False also when the span is too large for a table (over a million
// rows beyond 16 per request): the caller then checks by sorting.
bool token_blocks_tile(const MetadataArrays& m, int64_t n, bool skip_empty) {
  const int64_t lo = m.query_start_loc[0], hi = m.query_start_loc[n];
  if (hi - lo > 16 * n + (int64_t(1) << 20)) return false;
  HostVector<int32_t> owner(static_cast<size_t>(hi - lo), -1);  // the row whose block starts here
  int64_t blocks = n;
  for (int64_t i = 0; i < n; ++i) {
    if (skip_empty && query_len(m, i) == 0) {
      --blocks;
      continue;
    }
    const int64_t ts = m.token_starts[i];
    if (ts < lo || ts >= hi || owner[static_cast<size_t>(ts - lo)] >= 0) return false;
    owner[static_cast<size_t>(ts - lo)] = static_cast<int32_t>(i);
  }
  int64_t pos = lo, rows = 0;
  for (; pos < hi && owner[static_cast<size_t>(pos - lo)] >= 0; ++rows) {
    const int64_t i = owner[static_cast<size_t>(pos - lo)];
    pos += m.query_start_loc[i + 1] - m.query_start_loc[i];
  }
  return pos == hi && rows == blocks;
}

// token_starts (when given): the processed rows' token blocks are a permutation of the blocks of
// query_start_loc, i.e. they tile [query_start_loc[0], query_start_loc[n]) exactly, so every token
// row is read (and every output row written) once. The error names the first row, in order of
// token_starts, where the tiling breaks (found by sorting, on the error path only).
void check_token_starts(const MetadataArrays& m, int64_t n, bool skip_empty, const char* fn) {
  if (m.token_starts == nullptr || token_blocks_tile(m, n, skip_empty)) return;
  HostVector<int64_t> rows;
  rows.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    if (!skip_empty || query_len(m, i) > 0) rows.push_back(i);
  std::sort(rows.begin(), rows.end(), [&](int64_t a, int64_t b) { return m.token_starts[a] < m.token_starts[b]; });
  int64_t next = m.query_start_loc[0];
  for (int64_t i : rows) {
    if (m.token_starts[i] != next)
      fail(KVP_ERR_INVALID_ARGUMENT,
           "%s: request %lld: token_starts %lld leaves a gap or an overlap (the next free token row is %lld); the rows' "
           "token blocks must tile [query_start_loc[0], query_start_loc[num_seqs])",
           fn, ll(i), ll(m.token_starts[i]), ll(next));
    next += m.query_start_loc[i + 1] - m.query_start_loc[i];
  }
}

}  // namespace

void check_page_rows(const MetadataArrays& m, const Layout& L, int64_t n, int64_t T, bool all_pages, const char* fn) {
  if (n == 0) return;
  if (m.context_lens == nullptr || m.query_start_loc == nullptr)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: metadata needs context_lens and query_start_loc", fn);
  if (m.pages_per_req > 0 && m.pages_tables == nullptr)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: metadata needs pages_tables", fn);
  if (m.query_start_loc[0] < 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: query_start_loc[0] = %lld is negative", fn, ll(m.query_start_loc[0]));
  const int64_t decode_rows = L.v3 && m.request_distribution != nullptr ? m.request_distribution[0] : 0;
  const int64_t S = L.page_size, W = m.pages_per_req;
  const bool blocks = L.padding_rows();
  for (int64_t i = 0; i < n; ++i) {
    if (blocks && query_len(m, i) == 0) {
      if (m.context_lens[i] != 0)
        fail(KVP_ERR_INVALID_ARGUMENT,
             "%s: request %lld: a padding row (query length 0, data_parallel_size > 1) has context_len %lld, not 0", fn,
             ll(i), ll(m.context_lens[i]));
      continue;
    }
    check_row(m, L, i, T, decode_rows, fn);
    const int64_t len = m.context_lens[i];
    const int64_t first = all_pages ? 0 : len - (m.query_start_loc[i + 1] - m.query_start_loc[i]);
    for (int64_t k = first / S; k < cdiv(len, S); ++k) {
      const int64_t page = m.pages_tables[i * W + k];
      if (page < 0 || page >= L.global_pages)
        fail(KVP_ERR_INVALID_ARGUMENT, "%s: request %lld: pages_tables[%lld][%lld] = %lld is out of range [0, %lld)", fn,
             ll(i), ll(i), ll(k), ll(page), ll(L.global_pages));
    }
  }
  check_token_starts(m, n, blocks, fn);
}

void check_device_arrays(const MetadataArrays& m, bool v3, bool v2_slices, const char* fn) {
  if (v2_slices) {
    if (m.num_slices > 0 && (m.slot_mapping == nullptr || m.num_kv_update_slices == nullptr))
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: v2 metadata lacks slot_mapping or num_kv_update_slices", fn);
    return;
  }
  if (m.num_reqs == 0) return;
  if (m.query_start_loc == nullptr || m.context_lens == nullptr || (m.pages_per_req > 0 && m.pages_tables == nullptr))
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s metadata lacks query_start_loc, context_lens or pages_tables", fn,
         v3 ? "v3" : "v2");
  if ((!v3 || m.request_distribution == nullptr) && m.num_seqs == nullptr)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s metadata needs %s", fn, v3 ? "v3" : "v2",
         v3 ? "request_distribution or num_seqs" : "num_seqs (the number of rows to attend)");
}

}  // namespace kvp::detail
