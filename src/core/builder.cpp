#include "core/builder.hpp"

#include <algorithm>
#include <limits>
#include <utility>

#include "core/config.hpp"
#include "core/math.hpp"
#include "util/error.hpp"
#include "util/memory.hpp"

namespace kvp::detail {

namespace {
constexpr int64_t kI32Max = std::numeric_limits<int32_t>::max();
constexpr uint32_t kKnownFlags = KVP_BATCH_FLAG_SEED_DISTRIBUTION | KVP_BATCH_FLAG_TIGHT_SLICES |
                                  KVP_BATCH_FLAG_KEEP_ORDER | KVP_BATCH_FLAG_REQUEST_ORDER;

struct Slice {
  int64_t dst, src, len;
};

void check_options(const kvp_config& cfg, const kvp_batch_request* reqs, uint32_t num_requests,
                   const kvp_batch_options& opts, const char* fn) {
  (void)layout_of(cfg, fn);  // validates the config
  if (cfg.num_pages < 1)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: config num_pages is %lld; create the config with kvp_config_create first", fn,
         ll(cfg.num_pages));
  if (opts.flags & ~kKnownFlags)
    fail(KVP_ERR_UNSUPPORTED, "%s: unknown batch flags 0x%x", fn, opts.flags & ~kKnownFlags);
  if (opts._reserved0 != 0) fail(KVP_ERR_UNSUPPORTED, "%s: kvp_batch_options._reserved0 must be 0", fn);
  if (opts.max_num_reqs < 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: max_num_reqs %lld is negative", fn, ll(opts.max_num_reqs));
  if (opts.max_num_tokens < 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: max_num_tokens %lld is negative", fn, ll(opts.max_num_tokens));
  if (num_requests > 0 && reqs == nullptr)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: requests is NULL but num_requests is %u", fn, num_requests);
}

// Checks request i of a batch against the config (W pages per request at most).
void check_request(const kvp_config& cfg, const kvp_batch_request& r, uint32_t i, int64_t W, const char* fn) {
  const int64_t S = cfg.page_size, P = cfg.num_pages;
  if (r.num_computed < 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: request %u: num_computed %lld is negative", fn, i, ll(r.num_computed));
  if (r.num_scheduled < 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: request %u: num_scheduled %lld is negative", fn, i, ll(r.num_scheduled));
  if (r.num_pages < 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: request %u: num_pages %lld is negative", fn, i, ll(r.num_pages));
  if (r.num_pages > 0 && r.page_ids == nullptr)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: request %u: page_ids is NULL but num_pages is %lld", fn, i, ll(r.num_pages));
  if (r.num_scheduled == 0) return;
  if (r.num_computed > cfg.max_model_length - r.num_scheduled)
    fail(KVP_ERR_INVALID_ARGUMENT,
         "%s: request %u: num_computed %lld + num_scheduled %lld exceeds max_model_length %lld", fn, i,
         ll(r.num_computed), ll(r.num_scheduled), ll(cfg.max_model_length));
  const int64_t end = r.num_computed + r.num_scheduled;
  if (end > kI32Max)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: request %u: context length %lld does not fit int32", fn, i, ll(end));
  if (r.num_pages > W)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: request %u: %lld pages exceed max_num_pages_per_req %lld", fn, i,
         ll(r.num_pages), ll(W));
  const int64_t need = cdiv(end, S);
  if (r.num_pages < need)
    fail(KVP_ERR_INVALID_ARGUMENT,
         "%s: request %u: has %lld pages but %lld tokens (num_computed %lld + num_scheduled %lld) need %lld", fn, i,
         ll(r.num_pages), ll(end), ll(r.num_computed), ll(r.num_scheduled), ll(need));
  for (int64_t k = 0; k < r.num_pages; ++k) {
    const int64_t pg = r.page_ids[k];
    if (pg == 0)
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: request %u: page_ids[%lld] is the reserved null page 0", fn, i, ll(k));
    if (pg < 0 || pg >= P)
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: request %u: page_ids[%lld] = %lld is out of range [1, %lld)", fn, i, ll(k),
           ll(pg), ll(P));
  }
}

bool is_decode(const kvp_batch_request& r) { return r.num_scheduled == 1 && r.num_computed > 0; }

// Data-parallel row blocks (SPEC.md §7.3): a v3 config with data_parallel_size dp > 1 gives
// each shard the rows [s·R/dp, (s+1)·R/dp) for the requests whose pages it owns.
int64_t row_blocks(const kvp_config& cfg) {
  return cfg.version == KVP_LAYOUT_V3 && cfg.data_parallel_size > 1 ? cfg.data_parallel_size : 1;
}

// The shard owning every used page of active request i (those of its first
// cdiv(num_computed + num_scheduled, page_size) pages), out of `dp`.
int64_t request_shard(const kvp_config& cfg, const kvp_batch_request& r, uint32_t i, int64_t dp, const char* fn) {
  const int64_t per_shard = cfg.num_pages / dp;
  const int64_t used = cdiv(r.num_computed + r.num_scheduled, cfg.page_size);
  const int64_t shard = r.page_ids[0] / per_shard;
  for (int64_t k = 1; k < used; ++k)
    if (r.page_ids[k] / per_shard != shard)
      fail(KVP_ERR_INVALID_ARGUMENT,
           "%s: request %u: page_ids[%lld] = %d is in data-parallel shard %lld but page_ids[0] = %d is in shard %lld "
           "(a request's pages must lie in one shard)",
           fn, i, ll(k), r.page_ids[k], ll(r.page_ids[k] / per_shard), r.page_ids[0], ll(shard));
  return shard;
}

// The active requests (num_scheduled > 0) in row order: decode rows first (stable) unless
// KEEP_ORDER, and with row blocks grouped by shard (the same order inside each block); `decode`
// = the leading decode rows (0 with row blocks). `row[i]`: the row of order[i] (i, or with row
// blocks its place in its shard's block). `start[i]`: its first token in the packing of
// keys/values (row order, or with REQUEST_ORDER the order of the requests).
struct Rows {
  HostVector<uint32_t> order;
  HostVector<int64_t> shard;  // with row blocks: the shard of order[i]
  HostVector<int64_t> row;
  HostVector<int64_t> start;
  int64_t decode = 0;
  int64_t total_tokens = 0;
};

// Token packing: request order (REQUEST_ORDER: each active request's tokens after those of the
// active requests before it) or row order.
void assign_starts(const kvp_batch_request* reqs, uint32_t num_requests, bool request_order, Rows& rows) {
  HostVector<int64_t> by_request(num_requests, 0);  // each request's first token in request order
  for (uint32_t i = 1; i < num_requests; ++i) by_request[i] = by_request[i - 1] + reqs[i - 1].num_scheduled;
  rows.start.reserve(rows.order.size());
  int64_t t = 0;  // the next token in row order
  for (uint32_t idx : rows.order) {
    rows.start.push_back(request_order ? by_request[idx] : t);
    t += reqs[idx].num_scheduled;
  }
}

Rows collect_rows(const kvp_config& cfg, const kvp_batch_request* reqs, uint32_t num_requests,
                  const kvp_batch_options& opts, int64_t W, const char* fn) {
  Rows rows;
  HostVector<uint32_t> other;
  for (uint32_t i = 0; i < num_requests; ++i) {
    const kvp_batch_request& r = reqs[i];
    check_request(cfg, r, i, W, fn);
    if (r.num_scheduled == 0) continue;
    rows.total_tokens += r.num_scheduled;
    if (rows.total_tokens > kI32Max)
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: %lld scheduled tokens do not fit int32", fn, ll(rows.total_tokens));
    if (is_decode(r) && !(opts.flags & KVP_BATCH_FLAG_KEEP_ORDER))
      rows.order.push_back(i);
    else
      other.push_back(i);
  }
  rows.order.insert(rows.order.end(), other.begin(), other.end());
  const int64_t dp = row_blocks(cfg);
  if (dp > 1) {
    HostVector<std::pair<int64_t, uint32_t>> keyed;
    for (uint32_t idx : rows.order) keyed.emplace_back(request_shard(cfg, reqs[idx], idx, dp, fn), idx);
    std::stable_sort(keyed.begin(), keyed.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    for (size_t k = 0; k < keyed.size(); ++k) {
      rows.shard.push_back(keyed[k].first);
      rows.order[k] = keyed[k].second;
    }
    assign_starts(reqs, num_requests, (opts.flags & KVP_BATCH_FLAG_REQUEST_ORDER) != 0, rows);
    return rows;
  }
  while (rows.decode < static_cast<int64_t>(rows.order.size()) && is_decode(reqs[rows.order[static_cast<size_t>(rows.decode)]]))
    ++rows.decode;
  assign_starts(reqs, num_requests, (opts.flags & KVP_BATCH_FLAG_REQUEST_ORDER) != 0, rows);
  return rows;
}

// The number of rows R: the options', else the config's `max_num_reqs`, else as many as the
// active requests need (with row blocks: dp × the largest shard's count). With row blocks R must
// split into dp blocks that each hold their shard's requests.
int64_t count_rows(const kvp_config& cfg, const Rows& rows, const kvp_batch_options& opts, const char* fn) {
  const int64_t N = static_cast<int64_t>(rows.order.size()), dp = row_blocks(cfg);
  HostVector<int64_t> per_shard(static_cast<size_t>(dp), 0);
  for (int64_t sh : rows.shard) ++per_shard[static_cast<size_t>(sh)];
  const int64_t busiest = dp > 1 ? *std::max_element(per_shard.begin(), per_shard.end()) : N;
  const int64_t R = opts.max_num_reqs > 0 ? opts.max_num_reqs : (cfg.max_num_reqs > 0 ? cfg.max_num_reqs : dp * busiest);
  if (N > R)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: %lld active requests exceed max_num_reqs %lld", fn, ll(N), ll(R));
  if (R >= kI32Max) fail(KVP_ERR_INVALID_ARGUMENT, "%s: max_num_reqs %lld does not fit int32", fn, ll(R));
  if (R % dp != 0)
    fail(KVP_ERR_INVALID_ARGUMENT,
         "%s: max_num_reqs %lld is not a multiple of data_parallel_size %lld (v3 rows form one block per shard)", fn,
         ll(R), ll(dp));
  for (int64_t sh = 0; sh < dp; ++sh)
    if (per_shard[static_cast<size_t>(sh)] > R / dp)
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: data-parallel shard %lld has %lld active requests but its row block holds %lld",
           fn, ll(sh), ll(per_shard[static_cast<size_t>(sh)]), ll(R / dp));
  return R;
}

// The row of each active request: i, or with row blocks the next row of its shard's block.
void assign_rows(Rows& rows, int64_t R, int64_t dp) {
  int64_t next = 0, shard = -1;
  for (size_t i = 0; i < rows.order.size(); ++i) {
    if (dp > 1 && rows.shard[i] != shard) {
      shard = rows.shard[i];
      next = shard * (R / dp);
    }
    rows.row.push_back(next++);
  }
}

// The v2 slice list (request by request, page by page) and its padded column count.
HostVector<Slice> v2_slices(const kvp_config& cfg, const kvp_batch_request* reqs, const Rows& rows, int64_t T,
                            int64_t R, const kvp_batch_options& opts, int64_t& columns, const char* fn) {
  const int64_t S = cfg.page_size, P = cfg.num_pages;
  if (cfg.num_slices_per_kv_cache_update_page <= 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: config num_slices_per_kv_cache_update_page is %lld (not computed)", fn,
         ll(cfg.num_slices_per_kv_cache_update_page));
  const int64_t slots = checked_mul(P, S, "num_pages x page_size");
  if (slots > kI32Max)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: num_pages %lld x page_size %lld = %lld flat slots do not fit the int32 slice list",
         fn, ll(P), ll(S), ll(slots));
  HostVector<Slice> slices;
  for (size_t row = 0; row < rows.order.size(); ++row) {
    const kvp_batch_request& r = reqs[rows.order[row]];
    int64_t src = rows.start[row];
    const int64_t a = r.num_computed, e = a + r.num_scheduled;
    const int64_t lp0 = a / S, lp1 = (e - 1) / S;
    for (int64_t lp = lp0; lp <= lp1; ++lp) {
      const int64_t st = lp == lp0 ? a % S : 0;
      const int64_t en = lp == lp1 ? ((e - 1) % S) + 1 : S;
      const int64_t len = en - st;
      slices.push_back({static_cast<int64_t>(r.page_ids[lp]) * S + st, src, len});
      src += len;
    }
  }
  const int64_t cap = builder_padded_num_slices(cfg, T, R);
  const int64_t n = static_cast<int64_t>(slices.size());
  if (n > cap)  // cannot happen with the checks above; keep the reference's invariant explicit
    fail(KVP_ERR_INTERNAL, "%s: %lld slices exceed the padded capacity %lld", fn, ll(n), ll(cap));
  columns = cap;
  if (opts.flags & KVP_BATCH_FLAG_TIGHT_SLICES) {
    const int64_t tight = align_to_multiple(n, cfg.num_slices_per_kv_cache_update_page);
    if (tight < columns) columns = tight;
  }
  if (checked_mul(3, columns, "slot_mapping entries") > (int64_t(1) << 31))
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: slice capacity %lld is too large", fn, ll(columns));
  return slices;
}

// Writes the arrays of an allocated metadata.
// With row blocks (`blocks`) every row counts as processed: num_seqs = R, distribution [0, 0, R]
// (each shard finds its own decode/prefill split from its rows, SPEC.md §7.3).
void fill_metadata(Metadata& m, const kvp_batch_request* reqs, const Rows& rows, bool blocks,
                   const HostVector<Slice>& slices, int64_t columns, const kvp_batch_options& opts) {
  const MetadataArrays& a = m.arrays();
  const int64_t W = a.pages_per_req, R = a.num_reqs, N = static_cast<int64_t>(rows.order.size());
  int32_t* pt = m.mut(a.pages_tables);
  int32_t* cl = m.mut(a.context_lens);
  int32_t* qsl = m.mut(a.query_start_loc);
  int32_t* pos = m.mut(a.position_ids);
  int32_t* ts = m.mut(a.token_starts);  // REQUEST_ORDER only
  int64_t q = 0;
  size_t i = 0;  // the next active request (rows ascending); padding rows stay zero
  qsl[0] = 0;
  for (int64_t row = 0; row < R; ++row) {
    if (i < rows.order.size() && rows.row[i] == row) {
      const kvp_batch_request& r = reqs[rows.order[i]];
      const int64_t start = rows.start[i];
      for (int64_t k = 0; k < r.num_pages; ++k) pt[row * W + k] = r.page_ids[k];
      cl[row] = static_cast<int32_t>(r.num_computed + r.num_scheduled);
      for (int64_t t = 0; t < r.num_scheduled; ++t) pos[start + t] = static_cast<int32_t>(r.num_computed + t);
      if (ts != nullptr) ts[row] = static_cast<int32_t>(start);
      q += r.num_scheduled;
      ++i;
    }
    qsl[row + 1] = static_cast<int32_t>(q);
  }
  m.mut(a.num_seqs)[0] = static_cast<int32_t>(blocks ? R : N);
  if (a.version == KVP_LAYOUT_V2) {
    int32_t* sm = m.mut(a.slot_mapping);
    for (size_t j = 0; j < slices.size(); ++j) {
      sm[0 * columns + static_cast<int64_t>(j)] = static_cast<int32_t>(slices[j].dst);
      sm[1 * columns + static_cast<int64_t>(j)] = static_cast<int32_t>(slices[j].src);
      sm[2 * columns + static_cast<int64_t>(j)] = static_cast<int32_t>(slices[j].len);
    }
    m.mut(a.num_kv_update_slices)[0] = static_cast<int32_t>(slices.size());
  } else {
    int32_t* rd = m.mut(a.request_distribution);
    rd[0] = static_cast<int32_t>(rows.decode);
    rd[1] = static_cast<int32_t>(blocks || (opts.flags & KVP_BATCH_FLAG_SEED_DISTRIBUTION) ? rows.decode : N);
    rd[2] = static_cast<int32_t>(blocks ? R : N);
  }
}

}  // namespace

int64_t builder_padded_num_slices(const kvp_config& c, int64_t num_tokens, int64_t max_reqs) {
  const int64_t T = num_tokens > 0 ? num_tokens : (c.max_num_tokens > 0 ? c.max_num_tokens : c.max_model_length);
  const int64_t R = max_reqs > 0 ? max_reqs : (c.max_num_reqs > 0 ? c.max_num_reqs : max_num_seqs(c));
  int64_t n = checked_add(checked_mul(2, R, "2 * max_num_reqs"), T / c.page_size, "padded slices");
  if (T < n) n = T;
  return align_to_multiple(n, c.num_slices_per_kv_cache_update_page);
}

kvp_metadata* build_metadata(const kvp_config& cfg, const kvp_batch_request* reqs, uint32_t num_requests,
                             const kvp_batch_options& opts, int32_t* order_out, const char* fn) {
  check_options(cfg, reqs, num_requests, opts, fn);
  const int64_t S = cfg.page_size;
  const int64_t W = cfg.max_num_pages_per_req > 0 ? cfg.max_num_pages_per_req : cdiv(cfg.max_model_length, S);
  const bool v2 = cfg.version == KVP_LAYOUT_V2;
  Rows rows = collect_rows(cfg, reqs, num_requests, opts, W, fn);
  const int64_t N = static_cast<int64_t>(rows.order.size());

  // Sizes.
  const int64_t R = count_rows(cfg, rows, opts, fn);
  assign_rows(rows, R, row_blocks(cfg));
  const int64_t T = opts.max_num_tokens > 0 ? opts.max_num_tokens
                                            : (cfg.max_num_tokens > 0 ? cfg.max_num_tokens : rows.total_tokens);
  if (rows.total_tokens > T)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: %lld scheduled tokens exceed the token bucket max_num_tokens %lld", fn,
         ll(rows.total_tokens), ll(T));
  if (T > kI32Max) fail(KVP_ERR_INVALID_ARGUMENT, "%s: max_num_tokens %lld does not fit int32", fn, ll(T));
  if (checked_mul(R, W, "max_num_reqs x max_num_pages_per_req") > (int64_t(1) << 31))
    fail(KVP_ERR_INVALID_ARGUMENT,
         "%s: the page table of max_num_reqs %lld x max_num_pages_per_req %lld entries exceeds 2^31", fn, ll(R),
         ll(W));
  int64_t columns = 0;
  const HostVector<Slice> slices = v2 ? v2_slices(cfg, reqs, rows, T, R, opts, columns, fn) : HostVector<Slice>();

  MetadataArrays s;
  s.version = cfg.version;
  s.page_size = S;
  s.num_slices_per_page = cfg.num_slices_per_kv_cache_update_page;
  s.num_reqs = R;
  s.pages_per_req = W;
  s.context_lens_len = R;
  s.query_start_loc_len = R + 1;
  s.num_seqs_len = 1;
  s.position_ids_len = T;
  if (opts.flags & KVP_BATCH_FLAG_REQUEST_ORDER) s.token_starts_len = R;
  if (v2) {
    s.num_slices = columns;
    s.num_kv_update_slices_len = 1;
  } else {
    s.request_distribution_len = 3;
  }
  const HostAllocator alloc;
  HostPtr<Metadata> m = make_host<Metadata>(alloc, alloc);
  m->allocate(s);
  fill_metadata(*m, reqs, rows, row_blocks(cfg) > 1, slices, columns, opts);
  check_metadata_structure(m->arrays(), fn);
  kvp_metadata* h = handle_new<kvp_metadata>(std::move(m));
  if (order_out != nullptr) {  // written only on success
    for (uint32_t i = 0; i < num_requests; ++i)
      order_out[i] = static_cast<int64_t>(i) < N ? static_cast<int32_t>(rows.order[i]) : -1;
  }
  return h;
}

}  // namespace kvp::detail
