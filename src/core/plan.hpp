// The plan: the validated, reusable result of checking one host metadata against one cache's
// layout (SPEC.md §5, ATTENTION.md §2.4). It does not depend on the layer or on the tensors, and
// it holds for every call whose inputs have at least `min_tokens` token rows. Immutable once
// built; a metadata whose arrays cannot change keeps a few of them (PlanStore), so the 32+ layers
// of a step validate once.
#pragma once

#include <atomic>
#include <cstdint>

#include "backend/jobs.hpp"
#include "util/memory.hpp"

namespace kvp::detail {

class Cache;
class Metadata;

enum class PlanKind : uint32_t {
  kWrite,      // kvp_concatenate and the fused write of attention: the runs
  kRead,       // attention without a write: every row's read pages
  kFusedRead,  // attention after a write: kRead, and no written slot is read as cached context
};

// Which plans a cache uses: those a metadata keeps under `key`, covering data ranks
// [rank_begin, rank_end) (Cache::plan_scope).
struct PlanScope {
  uint64_t key = 0;
  int64_t rank_begin = 0, rank_end = 1;
};

// The runs of one data rank in a plan: runs[first, first + count), `tokens` = Σ len.
struct RankRuns {
  int64_t first = 0, count = 0, tokens = 0;
};

struct Plan {
  explicit Plan(const HostAllocator& alloc) : runs(alloc), ranks(alloc), local_tables(alloc) {}
  uint64_t key = 0;  // Cache::plan_scope().key
  PlanKind kind = PlanKind::kWrite;
  int64_t min_tokens = 0;  // the fewest input token rows the metadata is valid with
  // kWrite: every write, in input-token order (by src), no two overlapping, in the local slots of
  // each data rank the plan covers (its cache's; for a group's shards every rank, one block per
  // rank: `ranks`, empty when the plan covers one rank); Σ len; the v3 rows or v2 slices
  // processed (-1 for the other layout).
  HostVector<ConcatRun> runs;
  HostVector<RankRuns> ranks;
  int64_t rank_begin = 0;
  int64_t total_tokens = 0;
  int64_t num_seqs = -1;
  int64_t num_valid_slices = -1;
  // kRead, kFusedRead: the processed request rows; on a data-parallel shard its block of them,
  // rows [first_row, first_row + num_rows), with their page tables in the shard's page ids.
  int64_t num_rows = -1;
  int64_t first_row = 0;
  HostVector<int32_t> local_tables;

  // The runs of data rank `dp_rank` (one the plan covers).
  RankRuns runs_of(int64_t dp_rank) const noexcept {
    if (ranks.empty()) return {0, static_cast<int64_t>(runs.size()), total_tokens};
    return ranks[static_cast<size_t>(dp_rank - rank_begin)];
  }
};

// Whether a layout is a data-parallel shard's: a block of the pages (attention reads the block of
// request rows of its rank, SPEC.md §7.3).
inline bool is_page_block(const Layout& L) { return L.num_pages != L.global_pages; }

// The metadata a data-parallel shard's attention reads: the rows of the read plan's block, their
// page tables in local page ids (host arrays; no distribution: every row is processed).
MetadataArrays block_view(const MetadataArrays& m, const Plan& read);

// A plan for one call: one a metadata keeps, or one this call built and owns. publish() offers an
// owned plan to the metadata once the call has succeeded (a call that fails keeps nothing).
class PlanRef {
 public:
  PlanRef() = default;
  const Plan& operator*() const noexcept { return *plan_; }
  const Plan* operator->() const noexcept { return plan_; }
  void publish(const Metadata& md) noexcept;

 private:
  friend PlanRef plan_for(const Cache&, const Metadata&, PlanKind, int64_t, const Plan*, const char*);
  const Plan* plan_ = nullptr;
  HostPtr<Plan> owned_;
};

// The plans a metadata keeps: up to kMaxPlans (4 caches or cache groups x 3 kinds: a group's
// shards share their plans), append-only, lock-free to read. A plan is published once (compare-and-swap into a free slot) and freed with the store.
class PlanStore {
 public:
  static constexpr int kMaxPlans = 12;
  explicit PlanStore(const HostAllocator& alloc) noexcept : alloc_(alloc) {}
  ~PlanStore();
  PlanStore(const PlanStore&) = delete;
  PlanStore& operator=(const PlanStore&) = delete;

  // The plan of `kind` under `key` (Cache::plan_scope), or nullptr.
  const Plan* find(uint64_t key, PlanKind kind) const noexcept;
  // Keeps `p` (made with allocator()) unless an equal one is there or the store is full; returns
  // whether it was kept (the store then owns it).
  bool insert(Plan* p) const noexcept;
  const HostAllocator& allocator() const noexcept { return alloc_; }

 private:
  HostAllocator alloc_;
  mutable std::atomic<Plan*> slots_[kMaxPlans] = {};
};

// The plan of `kind` for host metadata `md` on `cache` with T input token rows: the metadata's
// own when it keeps one and T >= its min_tokens, else a new one, validated exactly as without
// plans (throws INVALID_ARGUMENT naming the request/slice and value; OUT_OF_MEMORY). kFusedRead
// needs the call's write plan `write`. Nothing is published here (see PlanRef::publish).
PlanRef plan_for(const Cache& cache, const Metadata& md, PlanKind kind, int64_t T, const Plan* write,
                 const char* function);

}  // namespace kvp::detail
