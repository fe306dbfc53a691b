// The page pool (include/kvpages/pool.h): O(1) page allocation over intrusive lists, reference
// counts, copy-on-write, and a prefix index (open addressing over chained XXH3-128 keys) with an
// LRU of evictable cached pages. All memory is allocated at creation; operations never allocate,
// and every operation validates completely before it changes anything. With data-parallel page
// shards (the config's data_parallel_size > 1) each shard has its own free list and LRU, every
// sequence lives in one shard, and the prefix index matches pages of the sequence's shard only.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvpages/cache.h"
#include "core/store_block.hpp"
#include "core/tier_writer.hpp"
#include "kvpages/pool.h"
#include "util/handle.hpp"
#include "util/memory.hpp"

namespace kvp::detail {

class Cache;
class HostPipe;

struct Key128 {
  uint64_t lo = 0;
  uint64_t hi = 0;
  bool operator==(const Key128& o) const noexcept { return lo == o.lo && hi == o.hi; }
  bool operator!=(const Key128& o) const noexcept { return !(*this == o); }
};

// Copies whole pages (all layers) within a cache; validates ids (range, distinct destinations,
// destinations disjoint from sources) first. Runs of consecutive ids are copied as one block.
void copy_cache_pages(Cache& cache, const int32_t* src, const int32_t* dst, size_t count,
                      kvp_stream stream, const char* function);

// The size of version 1 of kvp_pool_options (before write_queue_bytes).
constexpr size_t kPoolOptionsV1Size = offsetof(kvp_pool_options, write_queue_bytes);
// The size of version 1 of kvp_pool_tier_stats (before dropped).
constexpr size_t kPoolTierStatsV1Size = offsetof(kvp_pool_tier_stats, dropped);
// The most blocks the pool fills (write-back) or restores (from a memory store) at once, on
// several threads.
constexpr size_t kMaxBlockGroup = 8;

// kvp_pool_options::write_queue_bytes when 0.
constexpr uint64_t kDefaultWriteQueueBytes = uint64_t{64} << 20;

class Pool {
 public:
  // Page states.
  enum : uint8_t { kNull = 0, kFree = 1, kUsed = 2, kEvictable = 3 };

  struct Page {
    Key128 key;     // chained key; valid when key_valid
    Key128 parent;  // key of the page before it (zero for the first page)
    uint64_t salt;
    uint32_t ref;   // holders (page-table entries)
    int32_t prev;   // LRU links (evictable pages)
    int32_t next;   // LRU links, or the free-list link
    uint8_t state;
    uint8_t indexed;
    uint8_t key_valid;
    uint8_t stored;  // bit t: tier t holds (or the writer has queued for it) this page's block:
                     // not written to that tier again
  };

  struct Seq {
    uint64_t salt;
    uint64_t length;
    uint64_t computed;
    uint32_t gen;    // 1 … 4095
    uint32_t alive;
    uint32_t shard;  // data-parallel shard all its pages come from
    uint32_t pad_;
  };

  // One data-parallel shard: pages [first, end) (shard 0 starts at 1, after the null page), its
  // free list and its LRU of evictable cached pages.
  struct Shard {
    int32_t first, end;
    int32_t free_head;
    int32_t lru_head;  // least recently released
    int32_t lru_tail;
    uint32_t num_seqs;
    int64_t n_free, n_evictable;
    int64_t available() const noexcept { return n_free + n_evictable; }
  };

  // The sizes of a pool over `cache` with options `o` (validated; throws INVALID_ARGUMENT).
  struct Shape {
    int64_t P = 0, S = 0, max_len = 0;
    size_t row_len = 0, table_cap = 0;
    uint32_t m = 0;  // max sequences
    uint32_t dp = 1; // data-parallel shards
    bool prefix = true;
    uint64_t write_queue_bytes = 0;  // staging for the slow tiers (kvp_pool_options, 0 = default)
  };
  static Shape shape_of(const Cache& cache, const kvp_pool_options& o, const char* function);

  // Allocates every array through `alloc` (one block) and puts all pages on the free list.
  Pool(kvp_cache* cache_handle, const Shape& shape, const HostAllocator& alloc);
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  kvp_seq_id add_sequence(const int32_t* tokens, size_t n, uint64_t salt, uint32_t flags,
                          size_t* reused_out);
  void append(kvp_seq_id id, const int32_t* tokens, size_t n, kvp_stream stream);
  void set_computed(kvp_seq_id id, size_t n);
  void truncate(kvp_seq_id id, size_t new_length);
  void fork(kvp_seq_id parent, uint32_t k, kvp_seq_id* children);
  void free_sequence(kvp_seq_id id);
  void clear_prefix_cache() noexcept;

  void get_length(kvp_seq_id id, size_t* length, size_t* computed) const;
  void get_page_table(kvp_seq_id id, int32_t* out, size_t capacity, size_t* count) const;
  void get_slots(kvp_seq_id id, size_t start, size_t count, int32_t* out) const;
  void get_batch_request(kvp_seq_id id, kvp_batch_request* out) const;
  void get_page_state(int32_t page, uint32_t* ref, uint32_t* flags) const;
  uint32_t sequence_shard(kvp_seq_id id) const;
  kvp_pool_stats stats() const noexcept;
  kvp_pool_shard_stats shard_stats(uint32_t shard) const;
  void check_invariants() const;  // throws KVP_ERR_INTERNAL

  // Storage tiers (core/pool_tiers.cpp).
  void add_store(kvp_store* store);
  kvp_pool_tier_stats tier_stats(uint32_t tier) const;
  void flush_tiers(uint32_t flags);
  // Sets the "tier holds it" bit of each of the n pages whose block a tier already has (one
  // batched exists per tier; n <= row_len_), so that a flush of cached pages writes only what a
  // tier lacks: blocks another pool, server or earlier process wrote are not written again. A
  // failing exists is counted and marks nothing.
  void mark_held(const int32_t* pages, size_t n) noexcept;

  // Per-sequence save and restore (core/pool_sequence_io.cpp).
  void save_sequence(kvp_seq_id id, void* dst, size_t capacity, size_t* size_out);
  void save_sequence_to_file(kvp_seq_id id, const char* path, uint32_t flags);
  kvp_seq_id restore_sequence(const void* src, size_t size, uint32_t flags, const char* function);
  kvp_seq_id restore_sequence_from_file(const char* path, uint32_t flags);

 private:
  struct Scan;  // what check_invariants() collects
  void allocate_arrays(const Shape& shape);
  void scan_lists(Scan& sc) const;
  void scan_sequences(Scan& sc) const;
  void check_pages(Scan& sc) const;
  void check_index(const Scan& sc) const;
  void scan_shard_lists(uint32_t shard, Scan& sc) const;

  // A prompt's longest indexed prefix in one shard (add_sequence).
  struct Match {
    size_t hits = 0;        // reused pages (their ids in scratch_pages_)
    int64_t free = 0;       // the shard's free pages
    int64_t evictable = 0;  // its evictable pages that are not among the hits
    int64_t available() const noexcept { return free + evictable; }
  };
  Match match_prefix(const int32_t* tokens, size_t max_hits, uint64_t salt, uint32_t shard, size_t& nkeys);
  uint32_t place(const int32_t* tokens, size_t max_hits, uint64_t salt, size_t need_pages, size_t& nkeys);
  const char* shard_note(uint32_t shard, char (&buf)[48]) const noexcept;

  static constexpr uint32_t kIndexBits = 20;
  static constexpr uint32_t kIndexMask = (1u << kIndexBits) - 1;
  static constexpr uint32_t kMaxGen = (1u << (32 - kIndexBits)) - 1;

  uint32_t resolve(kvp_seq_id id, const char* function) const;
  int32_t* row(uint32_t slot) const noexcept { return rows_ + static_cast<size_t>(slot) * row_len_; }
  static uint64_t cdiv_u(uint64_t a, uint64_t b) noexcept { return (a + b - 1) / b; }

  Key128 compute_key(const Key128& parent, const int32_t* tokens, uint64_t salt);
  uint32_t shard_of(int32_t p) const noexcept {
    return dp_ == 1 ? 0 : static_cast<uint32_t>(p / shard_pages_);  // no division in an unsharded pool
  }
  void mark_computed(uint32_t slot, uint64_t n);

  // Page lifecycle (callers have checked availability).
  uint32_t take_slot();
  // Takes n pages of `shard` into out: free ones first, then the least recently released cached
  // ones, whose blocks are written to the tiers that lack them (write_back, on `stream`) before
  // the first page is taken.
  void alloc_pages(uint32_t shard, size_t n, int32_t* out, kvp_stream stream = nullptr);
  int32_t take_page(uint32_t shard);  // the next page alloc_pages takes, without a write-back
  void write_back_lru(uint32_t shard, size_t n, kvp_stream stream) noexcept;  // of the n LRU heads
  void release_page(int32_t p) noexcept;
  void acquire_page(int32_t p) noexcept;
  void free_push(int32_t p) noexcept;
  void lru_push_tail(int32_t p) noexcept;
  void lru_remove(int32_t p) noexcept;

  // Prefix index (open addressing, linear probing, backward-shift deletion).
  size_t home(const Key128& k) const noexcept { return static_cast<size_t>(k.lo) & table_mask_; }
  int32_t index_lookup(const Key128& k, uint32_t shard) const noexcept;  // a page of that shard
  bool index_insert(int32_t p) noexcept;  // false if an equal key is already indexed in p's shard
  void index_remove(int32_t p) noexcept;

  // The cache, checked to be alive and still the one the pool was made for (its serial): a new
  // cache at the address of a destroyed one is refused. Throws INVALID_HANDLE.
  Cache& cache(const char* function) const;

  // Storage tiers (core/pool_tiers.cpp). A tier is a borrowed store, checked by its serial.
  struct Tier {
    kvp_store* handle;
    uint64_t serial;
    bool queued;  // its puts go through the writer threads (the store's put is not cheap)
    kvp_pool_tier_stats st;
  };
  Store& tier_store(const Tier& t, const char* function) const;
  // A prefix-index key as the tiers store it, and back (key_mask_).
  StoreKey store_key(const Key128& k) const noexcept;
  Key128 index_key(const StoreKey& k) const noexcept;
  // Writes the blocks of pages[0, n) to every tier that does not hold them already (each page's
  // `stored` bits), in order, a group of blocks at a time (write_group): each page is copied out
  // once into one block (on `stream`, synchronously), put at once into the stores with a cheap
  // put, and queued once for the writer threads for all the others; with no staging block free,
  // those are dropped (counted), or with `wait` the call waits for one. Never throws: a failure
  // is counted on its tier.
  void write_back(const int32_t* pages, size_t n, kvp_stream stream, bool wait) noexcept;
  // One group of write_back (n <= write_group(c)); c is the pool's cache, or null when it is gone
  // (every block fails).
  void write_back_group(Cache* c, const int32_t* pages, size_t n, kvp_stream stream, bool wait) noexcept;
  // Puts the filled block `buf` of page pg under `key` into the tiers of the mask `now`, at once;
  // the last of them takes `adopt` (the HostBytes holding buf, when nothing reads it afterwards)
  // instead of a copy. Sets the page's bit of each tier written.
  void put_now(Page& pg, const StoreKey& key, uint32_t now, HostBytes* adopt, const uint8_t* buf) noexcept;
  // How many blocks write_back fills at once: on a host cache, one per thread of the library's
  // pool (at most kMaxBlockGroup; copying and summing different blocks on several threads is
  // what reaches the memory's bandwidth), and no more than the writer has staging blocks; on a
  // device cache, one. The group size changes how fast, never what is written.
  size_t write_group(const Cache* c) const noexcept;
  // One block per thread of the library's pool, at most kMaxBlockGroup: how many blocks a group
  // fills (write_group), reads from a directory store (restore_read_group), and how many writer
  // threads put at once into one.
  static size_t thread_group() noexcept;
  // Copies page p (every layer) into block `buf` of shape `bs` and seals it as page `id` holding
  // `tokens` (page_size_ ids). The host version copies and sums in one pass and never fails; the
  // device version copies on `stream`, synchronously.
  void fill_host_block(Cache& c, int32_t p, const BlockShape& bs, const BlockId& id, const int32_t* tokens,
                       uint8_t* buf) const noexcept;
  void fill_block(int32_t p, const BlockShape& bs, const BlockId& id, const int32_t* tokens, uint8_t* buf,
                  kvp_stream stream, const char* function);
  // Adds one to `counter` of every tier in the mask `tiers` (bit t: tier t).
  void count_tiers(uint32_t tiers, int64_t kvp_pool_tier_stats::*counter) noexcept;
  // Restores pages [from, max_hits) of a prompt from the tiers into fresh pages of `shard`, as
  // far as the prefix continues; their ids go to r[from…]. Returns how many (never throws).
  size_t restore(int32_t* r, const int32_t* tokens, size_t from, size_t max_hits, uint64_t salt, uint32_t shard,
                 size_t nkeys) noexcept;
  // A host pipe whose slots hold a whole block (a device cache), else null (a host cache).
  HostPtr<HostPipe> block_pipe() const;
  // The id of page i of the prompt being restored (its key tier_keys_[i]).
  BlockId restore_id(size_t i, uint64_t salt) const noexcept;
  // Restores pages [i, i + n) of a prompt (n <= kMaxBlockGroup) from a store that keeps its
  // blocks in memory into fresh pages r[i…] of a host cache, as far as they continue: returns how
  // many. First look (under the store's lock, no copy): each block's head (keys, salt, geometry,
  // token ids) is checked and the block made the most recent, so that the write-backs of the
  // pages taken next do not drop it; a block missing or with a wrong head ends the run before
  // any page is taken. Then one page per block is taken (outside the lock: taking it may evict a
  // page into the same store), and the second look copies the blocks into their pages, summing
  // them on the way, on several threads; a block whose checksum fails (or that was replaced by
  // a bad one meanwhile) ends the run and its page and those after it are released: a damaged
  // block costs the pages of its group, never wrong KV.
  size_t restore_in_place(Store& store, Tier& t, size_t i, size_t n, const int32_t* tokens, uint64_t salt,
                          uint32_t shard, int32_t* r);
  // Restores pages [i, i + n) of a prompt (n <= thread_group()) from a store whose gets read at once
  // (Store::concurrent_io: the directory store) into fresh pages r[i…] of a host cache, as
  // far as they continue: returns how many. Each block is read into a buffer of its own and
  // checked, on the library's threads, before any page is taken, so a block that is missing or
  // does not check out takes no page (the group's blocks after it were read for nothing); then a
  // page is taken for each block before it and they are copied in, on the threads. A failing
  // store call ends the run like a miss and counts as the tier's error.
  size_t restore_read_group(Store& store, Tier& t, size_t i, size_t n, const int32_t* tokens, uint64_t salt,
                            uint32_t shard, int32_t* r);
  // Restores page i of a prompt from a store through a buffer into a fresh page r[i]; false if the
  // block is missing or does not check out (then it took no page). Throws when the store or the
  // copy fails. With a host pipe (a device cache), the block is read into slot k and uploaded
  // asynchronously, so that the next page is read meanwhile; without one, into read_buf_, then
  // copied into the page with non-temporal stores.
  bool restore_copied(Store& store, Tier& t, size_t i, const int32_t* tokens, uint64_t salt, uint32_t shard,
                      int32_t* r, HostPipe* pipe, int k);
  // Makes fresh page p, just loaded with the block of prompt page i from tier t, that page:
  // its token ids, keys and "held by tier t" bit, indexed; r[i] = p.
  void finish_restore(int32_t p, const Tier& t, size_t i, const int32_t* tokens, uint64_t salt, int32_t* r) noexcept;
  // Copies the layers of a block whose head checked out (sum: its checksum so far) into page p of
  // host cache c, adding them to the checksum; whether the block's checksum holds.
  bool load_summed(Cache& c, const uint8_t* block, int32_t p, BlockSum& sum) const noexcept;

  // Per-sequence save and restore (core/pool_sequence_io.cpp).
  // The sequence in slot `slot` for a save: every token computed, its blocks' shape (throws).
  BlockShape saved_shape(uint32_t slot, const char* function) const;
  // The id of the block of page i of the sequence in `slot`, its token ids written to `pad`
  // (page_size_ of them, zero past the sequence's end); `parent` is the key of page i-1 (zero for
  // page 0) and becomes page i's.
  BlockId saved_page_id(uint32_t slot, size_t i, const BlockShape& bs, Key128& parent, int32_t* pad);
  // Checks every block of a blob whose header checked out, gathering the token ids (num_blocks
  // pages of them, the last page's tail zero) into `tokens`. Throws FORMAT_* naming the block.
  void check_blocks(const uint8_t* blocks, const BlockShape& bs, uint64_t num_tokens, uint64_t salt, int32_t* tokens,
                    const char* function);

  kvp_cache* cache_handle_ = nullptr;
  uint64_t cache_serial_ = 0;  // handle_serial(cache_handle_) when the pool was made
  HostAllocator alloc_;
  void* arrays_ = nullptr;
  bool prefix_enabled_ = true;

  int64_t num_pages_ = 0;   // P (including the null page)
  int64_t page_size_ = 0;   // S
  uint64_t max_length_ = 0; // max_model_length
  size_t row_len_ = 0;      // cdiv(max_model_length, S)
  uint32_t max_seqs_ = 0;
  uint32_t dp_ = 1;         // data-parallel shards
  int64_t shard_pages_ = 0; // num_pages / dp

  Page* pages_ = nullptr;
  int32_t* tokens_ = nullptr;   // [P * S]
  int32_t* table_ = nullptr;    // [table_mask_ + 1], -1 = empty
  size_t table_mask_ = 0;
  Seq* seqs_ = nullptr;         // [max_seqs_]
  int32_t* rows_ = nullptr;     // [max_seqs_ * row_len_]
  uint32_t* slot_ring_ = nullptr;  // FIFO of free sequence slots
  uint32_t ring_head_ = 0;
  uint32_t ring_count_ = 0;
  int32_t* scratch_pages_ = nullptr;  // [row_len_]
  Key128* scratch_keys_ = nullptr;    // [row_len_]: a prompt's chained keys (add_sequence, dp > 1)
  uint8_t* hash_buf_ = nullptr;       // [16 + 4 * S]
  Shard* shards_ = nullptr;           // [dp_]

  Tier tiers_[KVP_POOL_MAX_TIERS] = {};
  uint32_t num_tiers_ = 0;
  BlockShape block_;                  // the blocks of this cache's pages (set by the first tier)
  // Blocks of evicted pages on their way out when no tier queues them (a memory store adopts
  // them, handing back its spare): [kMaxBlockGroup], made by the first tier.
  HostVector<HostBytes> block_bufs_{StdAllocator<HostBytes>(alloc_)};
  // Blocks on their way in beside read_buf_ (restore_read_group): [kMaxBlockGroup - 1], made by
  // the first tier, each sized when a group first needs it.
  HostVector<HostBytes> read_bufs_{StdAllocator<HostBytes>(alloc_)};
  void* tier_arrays_ = nullptr;       // one block from alloc_ holding the three below
  uint8_t* read_buf_ = nullptr;       // [block_.total]: a block on its way in
  StoreKey* tier_keys_ = nullptr;     // [row_len_]: a prompt's chained keys (restore), as store keys
  StoreKey key_mask_;                 // store key = index key ^ mask of the config's fingerprint
  uint8_t* found_ = nullptr;          // [row_len_]: a tier's answer to exists
  uint64_t write_queue_bytes_ = 0;    // kvp_pool_options::write_queue_bytes (0 = default)
  HostPtr<TierWriter> writer_;        // puts for the tiers with a slow put (null if none)

  int64_t n_used_ = 0, n_indexed_ = 0;
  uint32_t n_seqs_ = 0;

  int64_t prompt_tokens_ = 0, reused_tokens_ = 0, evictions_ = 0, cow_copies_ = 0;
};

}  // namespace kvp::detail

// The public handle.
struct kvp_pool : kvp::detail::Handle<kvp::detail::Pool, kvp::detail::kMagicPool> {};

namespace kvp::detail {
// Validates a pool handle (NULL, registry, magic); throws INVALID_HANDLE.
inline Pool& pool_from(const kvp_pool* h, const char* function) { return handle_get(h, function); }
// Creates a pool and its handle over a cache (kvp_pool_create); opts NULL = defaults. Throws.
kvp_pool* create_pool(kvp_cache* cache, const kvp_pool_options* opts, const char* function);
}  // namespace kvp::detail
