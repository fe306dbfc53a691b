#include "core/plan.hpp"

#include <algorithm>

#include "core/cache.hpp"
#include "core/math.hpp"
#include "core/metadata.hpp"
#include "core/rows.hpp"
#include "util/error.hpp"

namespace kvp::detail {

namespace {

// v2 slices into runs.
void runs_v2(const MetadataArrays& m, const Layout& L, int64_t T, Plan& p, const char* fn) {
  if (m.num_kv_update_slices_len < 1 || m.num_kv_update_slices == nullptr)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: v2 metadata has no num_kv_update_slices", fn);
  const int64_t n = m.num_kv_update_slices[0], num_slots = L.global_pages * L.page_size;
  if (n < 0 || n > m.num_slices)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: num_kv_update_slices %lld is out of range [0, %lld] (slot_mapping columns)", fn,
         ll(n), ll(m.num_slices));
  const int32_t* dst = m.slot_mapping;
  const int32_t* src = m.slot_mapping + m.num_slices;
  const int32_t* len = m.slot_mapping + 2 * m.num_slices;
  p.runs.reserve(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    const int64_t l = len[j], d = dst[j], s = src[j];
    if (l < 0) fail(KVP_ERR_INVALID_ARGUMENT, "%s: slice %lld: length %lld is negative", fn, ll(j), ll(l));
    if (l == 0) continue;  // zero-length slices are no-ops (e.g. after data-parallel localization)
    if (d < 0 || d + l > num_slots)
      fail(KVP_ERR_INVALID_ARGUMENT,
           "%s: slice %lld: destination slots [%lld, %lld) are outside the cache's %lld slots (num_pages * page_size)",
           fn, ll(j), ll(d), ll(d + l), ll(num_slots));
    if (s < 0 || s + l > T)
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: slice %lld: source tokens [%lld, %lld) are outside the %lld input tokens", fn,
           ll(j), ll(s), ll(s + l), ll(T));
    p.runs.push_back({s, d, l});
  }
  p.num_valid_slices = n;
}

// v3 page-table rows into runs (one per request and touched page).
void runs_v3(const MetadataArrays& m, const Layout& L, int64_t T, Plan& p, const char* fn) {
  const int64_t n = processed_rows(m, true, fn), W = m.pages_per_req, S = L.page_size;
  check_page_rows(m, L, n, T, false, fn);
  p.runs.reserve(static_cast<size_t>(n));
  for (int64_t r = 0; r < n; ++r) {
    const int64_t qs = token_start(m, r), kv_len = m.context_lens[r];
    const int64_t first = kv_len - (m.query_start_loc[r + 1] - m.query_start_loc[r]);
    for (int64_t pos = first; pos < kv_len;) {
      const int64_t page = m.pages_tables[r * W + pos / S], row = pos % S;
      const int64_t len = std::min(S - row, kv_len - pos);
      p.runs.push_back({qs + (pos - first), page * S + row, len});
      pos += len;
    }
  }
  p.num_seqs = n;
  if (n > 0) p.min_tokens = m.query_start_loc[n];  // the largest end: every q_len is positive
}

bool dst_before(const ConcatRun& a, const ConcatRun& b) { return a.dst_slot < b.dst_slot; }

// The runs in input-token order, the order the writers take them in: each token's rows are then
// read from the input once and in address order, which the core's prefetchers follow, while the
// stores go wherever the pages are without waiting (a decode batch sorted by destination instead
// read its 4 KiB rows at random: 16384 one-token requests of 8 x 128 bf16 took 9.1 ms, and
// 3.4 ms in input order, AMD EPYC Zen 4, one thread). Runs from a builder are in this order
// already.
void sort_by_source(ConcatRun* begin, ConcatRun* end) {
  auto src_before = [](const ConcatRun& a, const ConcatRun& b) { return a.src < b.src; };
  if (!std::is_sorted(begin, end, src_before)) std::sort(begin, end, src_before);
}

// The n runs at `runs` in destination order: `runs` itself where they ascend already, else a
// sorted copy in `copy`.
const ConcatRun* by_destination(const ConcatRun* runs, size_t n, HostVector<ConcatRun>& copy) {
  if (std::is_sorted(runs, runs + n, dst_before)) return runs;
  copy.assign(runs, runs + n);
  std::sort(copy.begin(), copy.end(), dst_before);
  return copy.data();
}

// Refuses two runs that write one slot.
void check_no_overlap(const HostVector<ConcatRun>& runs, const char* fn) {
  HostVector<ConcatRun> copy(runs.get_allocator());
  const ConcatRun* sorted = by_destination(runs.data(), runs.size(), copy);
  for (size_t x = 1; x < runs.size(); ++x) {
    const ConcatRun& p = sorted[x - 1];
    const ConcatRun& c = sorted[x];
    if (c.dst_slot < p.dst_slot + p.len)
      fail(KVP_ERR_INVALID_ARGUMENT,
           "%s: two writes target slot %lld (from input tokens %lld and %lld); destinations must not overlap", fn,
           ll(c.dst_slot), ll(p.src + (c.dst_slot - p.dst_slot)), ll(c.src));
  }
}

// The part of run `r` in global slots [lo, hi), in slots local to lo; false when none.
bool clip_run(const ConcatRun& r, int64_t lo, int64_t hi, ConcatRun& out) {
  const int64_t a = std::max(r.dst_slot, lo), b = std::min(r.dst_slot + r.len, hi);
  if (a >= b) return false;
  out = {r.src + (a - r.dst_slot), a - lo, b - a};
  return true;
}

// A data-parallel shard keeps the parts of the global runs that land in its pages, in its local
// slots; the tokens of other shards' pages are skipped (SPEC.md §7.3).
void keep_local_runs(HostVector<ConcatRun>& runs, const Layout& L) {
  if (L.page_begin == 0 && L.num_pages == L.global_pages) return;
  const int64_t lo = L.page_begin * L.page_size, hi = lo + L.num_pages * L.page_size;
  size_t kept = 0;
  for (const ConcatRun& r : runs)
    if (clip_run(r, lo, hi, runs[kept])) ++kept;
  runs.resize(kept);
}

// The runs of every data rank in [begin, end), one block after the other, each clipped to the
// rank's pages in its local slots and put back in input-token order. The runs come in
// destination order, where those of a rank are a contiguous stretch.
void split_by_rank(Plan& p, const Layout& L, int64_t begin, int64_t end) {
  const int64_t span = L.num_pages * L.page_size;
  HostVector<ConcatRun> out(p.runs.get_allocator());
  out.reserve(p.runs.size() + static_cast<size_t>(end - begin));
  p.ranks.resize(static_cast<size_t>(end - begin));
  p.rank_begin = begin;
  size_t x = 0;
  for (int64_t rank = begin; rank < end; ++rank) {
    const int64_t lo = rank * span, hi = lo + span;
    RankRuns& rr = p.ranks[static_cast<size_t>(rank - begin)];
    rr.first = static_cast<int64_t>(out.size());
    while (x < p.runs.size() && p.runs[x].dst_slot + p.runs[x].len <= lo) ++x;
    ConcatRun c;
    for (size_t y = x; y < p.runs.size() && p.runs[y].dst_slot < hi; ++y)
      if (clip_run(p.runs[y], lo, hi, c)) {
        out.push_back(c);
        rr.tokens += c.len;
      }
    rr.count = static_cast<int64_t>(out.size()) - rr.first;
    sort_by_source(out.data() + rr.first, out.data() + out.size());
  }
  p.runs.swap(out);
}

void build_write(const MetadataArrays& m, const Layout& L, const PlanScope& scope, int64_t T, Plan& p,
                 const char* fn) {
  if (L.v3)
    runs_v3(m, L, T, p, fn);
  else
    runs_v2(m, L, T, p, fn);
  const bool ranks = scope.rank_end - scope.rank_begin > 1;
  if (ranks && !std::is_sorted(p.runs.begin(), p.runs.end(), dst_before))
    std::sort(p.runs.begin(), p.runs.end(), dst_before);  // split_by_rank cuts this order
  check_no_overlap(p.runs, fn);
  for (const ConcatRun& r : p.runs) p.min_tokens = std::max(p.min_tokens, r.src + r.len);  // every shard checks all
  if (ranks) {
    split_by_rank(p, L, scope.rank_begin, scope.rank_end);
  } else {
    keep_local_runs(p.runs, L);
    sort_by_source(p.runs.data(), p.runs.data() + p.runs.size());
  }
  for (const ConcatRun& r : p.runs) p.total_tokens += r.len;
}

// A slot the fused write fills must not be read by any row as cached context: prefix-shared pages
// must not receive new tokens while another row reads them (ATTENTION.md §2.4). `runs` (the
// write's, in destination order); each row looks up the slots of its cached positions.
void check_writes_not_read_elsewhere(const ConcatRun* runs_begin, const ConcatRun* runs_end, const MetadataArrays& m,
                                     const Layout& L, int64_t n, const char* fn) {
  if (runs_begin == runs_end || n == 0) return;
  const int64_t S = L.page_size, W = m.pages_per_req;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t cached = m.context_lens[i] - (m.query_start_loc[i + 1] - m.query_start_loc[i]);
    for (int64_t k = 0; k * S < cached; ++k) {
      const int64_t first = m.pages_tables[i * W + k] * S;
      const int64_t last = first + std::min(S, cached - k * S);  // the cached slots of this page
      // The first run that ends after `first`; it conflicts when it starts before `last`.
      const ConcatRun* it = std::upper_bound(runs_begin, runs_end, first, [](int64_t slot, const ConcatRun& r) {
        return slot < r.dst_slot + r.len;
      });
      if (it != runs_end && it->dst_slot < last) {
        const int64_t slot = std::max(first, it->dst_slot);
        fail(KVP_ERR_INVALID_ARGUMENT,
             "%s: request %lld reads position %lld (page %lld, row %lld) as cached context, but this call writes a new "
             "token into that slot; a page that receives new tokens must not be read by another row",
             fn, ll(i), ll(k * S + (slot - first)), ll(first / S), ll(slot - first));
      }
    }
  }
}

// A data-parallel shard's block of the processed rows (rows [rank·R/dp, (rank+1)·R/dp), SPEC.md
// §7.3), their page tables rewritten to the shard's page ids: every page they read must be its.
void keep_block_rows(const MetadataArrays& m, const Layout& L, Plan& p, const char* fn) {
  const int64_t dp = L.global_pages / L.num_pages, rank = L.page_begin / L.num_pages, R = m.num_reqs;
  if (R % dp != 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: the metadata's %lld request rows do not split into %lld data-parallel blocks",
         fn, ll(R), ll(dp));
  const int64_t r0 = rank * (R / dp), n = std::clamp<int64_t>(p.num_rows - r0, 0, R / dp);
  const int64_t W = m.pages_per_req, S = L.page_size, end = L.page_begin + L.num_pages;
  p.local_tables.assign(static_cast<size_t>(n * W), 0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < cdiv(m.context_lens[r0 + i], S); ++k) {
      const int64_t page = m.pages_tables[(r0 + i) * W + k];
      if (page < L.page_begin || page >= end)
        fail(KVP_ERR_INVALID_ARGUMENT,
             "%s: request %lld, in the block of data rank %lld, reads page %lld, which is not one of the rank's pages "
             "[%lld, %lld)", fn, ll(r0 + i), ll(rank), ll(page), ll(L.page_begin), ll(end));
      p.local_tables[static_cast<size_t>(i * W + k)] = static_cast<int32_t>(page - L.page_begin);
    }
  p.first_row = r0;
  p.num_rows = n;
}

void build_read(const MetadataArrays& m, const Layout& L, int64_t dp_rank, int64_t T, const Plan* write, Plan& p,
                const char* fn) {
  p.num_rows = processed_rows(m, L.v3, fn);
  check_page_rows(m, L, p.num_rows, T, true, fn);
  if (p.num_rows > 0) p.min_tokens = m.query_start_loc[p.num_rows];  // the largest end
  if (is_page_block(L)) keep_block_rows(m, L, p, fn);
  if (write == nullptr) return;
  const RankRuns mine = write->runs_of(dp_rank);  // the runs this cache writes, in its slots
  HostVector<ConcatRun> copy(write->runs.get_allocator());
  const ConcatRun* runs = by_destination(write->runs.data() + mine.first, static_cast<size_t>(mine.count), copy);
  check_writes_not_read_elsewhere(runs, runs + mine.count, is_page_block(L) ? block_view(m, p) : m, L, p.num_rows, fn);
}

}  // namespace

MetadataArrays block_view(const MetadataArrays& m, const Plan& read) {
  MetadataArrays b = m;
  const int64_t r0 = read.first_row, n = read.num_rows;
  b.pages_tables = read.local_tables.data();
  b.num_reqs = n;
  b.context_lens += r0;
  b.context_lens_len = n;
  b.query_start_loc += r0;
  b.query_start_loc_len = n + 1;
  if (b.token_starts != nullptr) {
    b.token_starts += r0;
    b.token_starts_len = n;
  }
  b.request_distribution = nullptr;
  b.request_distribution_len = 0;
  b.num_seqs = nullptr;
  b.num_seqs_len = 0;
  return b;
}

PlanStore::~PlanStore() {
  for (auto& s : slots_) host_delete(alloc_, s.load(std::memory_order_acquire));
}

const Plan* PlanStore::find(uint64_t key, PlanKind kind) const noexcept {
  for (auto& s : slots_) {
    const Plan* p = s.load(std::memory_order_acquire);
    if (p == nullptr) return nullptr;  // append-only: nothing after a free slot
    if (p->key == key && p->kind == kind) return p;
  }
  return nullptr;
}

bool PlanStore::insert(Plan* p) const noexcept {
  for (auto& s : slots_) {
    Plan* cur = nullptr;
    if (s.compare_exchange_strong(cur, p, std::memory_order_acq_rel, std::memory_order_acquire)) return true;
    if (cur->key == p->key && cur->kind == p->kind) return false;  // another call's, equal
  }
  return false;
}

void PlanRef::publish(const Metadata& md) noexcept {
  if (owned_ != nullptr && md.immutable() && md.plans().insert(owned_.get())) owned_.release();
}

PlanRef plan_for(const Cache& cache, const Metadata& md, PlanKind kind, int64_t T, const Plan* write,
                 const char* fn) {
  PlanRef ref;
  const bool keep = md.immutable();
  // A group's shards share write plans; a data rank's reads (its block of rows) are its own.
  const PlanScope scope = cache.plan_scope();
  const uint64_t key = kind != PlanKind::kWrite && is_page_block(cache.layout()) ? cache.id() : scope.key;
  if (keep) {
    ref.plan_ = md.plans().find(key, kind);
    if (ref.plan_ != nullptr && T >= ref.plan_->min_tokens) return ref;
  }
  // A plan the metadata may keep comes from the metadata's allocator (it may outlive the cache).
  const HostAllocator& alloc = keep ? md.plans().allocator() : cache.allocator();
  ref.owned_ = make_host<Plan>(alloc, alloc);
  Plan& p = *ref.owned_;
  p.key = key;
  p.kind = kind;
  const MetadataArrays& m = md.arrays();
  if (kind == PlanKind::kWrite)
    build_write(m, cache.layout(), scope, T, p, fn);
  else
    build_read(m, cache.layout(), cache.shard().dp_rank, T, kind == PlanKind::kFusedRead ? write : nullptr, p, fn);
  ref.plan_ = &p;
  return ref;
}

}  // namespace kvp::detail
