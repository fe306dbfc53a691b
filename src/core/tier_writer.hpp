// The writer threads of a pool whose tiers include stores with a slow put (core/store.hpp,
// put_is_cheap): a bounded FIFO of staging blocks that the pool fills (sealed blocks,
// core/store_block), each with the set of slow tiers it goes to, and threads that put every
// block into each of those stores, in tier order, so that an evicting pool call never waits on a
// file or a network round trip. A block is staged once however many slow tiers receive it. One
// writer per pool, not per store: the pool owns its staging memory and joins its threads on
// destroy, and a store shared by several pools needs no registry of writers (stores are
// internally locked, so their writers simply take turns).
//
// Several blocks are put at once (one per thread) while every slow tier is a store whose puts
// run at once (Store::concurrent_io: the directory store); once a tier is not (Redis, a plug-in),
// one block at a time, in queue order. A slot is free again once it and every block queued
// before it are put, so the queue stays a FIFO for the pool.
//
// Thread use: the pool's thread calls everything; the writer threads touch only the queue (under
// mu_), the staging block each is putting, the stores of the tiers in that block's mask (added
// before the block was submitted) and the atomic counters.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <thread>

#include "core/store.hpp"
#include "kvpages/pool.h"
#include "util/memory.hpp"

namespace kvp::detail {

class TierWriter {
 public:
  // `slots` staging blocks of `block_bytes` each (from `alloc`), and `threads` writer threads
  // (1 <= threads <= slots). Throws OUT_OF_MEMORY.
  TierWriter(size_t slots, size_t block_bytes, size_t threads, const HostAllocator& alloc);
  // Drains: every block queued is put (or fails, counted) before the threads are joined.
  ~TierWriter();
  TierWriter(const TierWriter&) = delete;
  TierWriter& operator=(const TierWriter&) = delete;

  // Pool tier `tier` is the store behind `handle` (checked by its serial before every put);
  // `concurrent`: its puts may run at once (Store::concurrent_io).
  void add_store(uint32_t tier, kvp_store* handle, uint64_t serial, bool concurrent) noexcept;
  // The free staging block `ahead` places after the next one to fill (ahead < slots()), or nullptr
  // when there are not that many free (wait = false), or once there are (wait = true). The
  // blocks stay the caller's until submitted, in order.
  uint8_t* staging(bool wait, size_t ahead = 0);
  // Queues the next staging block, to be put under `key` into the tiers of `tiers` (bit t: tier
  // t, added with add_store).
  void submit(const StoreKey& key, uint32_t tiers);
  size_t slots() const noexcept { return slots_; }
  // Waits until every block submitted so far has been put or has failed.
  void flush();

  // Counters of the puts done by the thread into one tier (read at any time).
  int64_t written(uint32_t tier) const noexcept { return count_of(written_, tier); }
  int64_t bytes(uint32_t tier) const noexcept { return count_of(bytes_, tier); }
  int64_t errors(uint32_t tier) const noexcept { return count_of(errors_, tier); }

 private:
  using Counters = std::atomic<int64_t>[KVP_POOL_MAX_TIERS];
  static int64_t count_of(const Counters& c, uint32_t tier) noexcept { return c[tier].load(std::memory_order_relaxed); }
  void run() noexcept;
  void put_one(size_t slot) noexcept;
  // Stops the threads once the queue is drained, and joins them.
  void stop_threads() noexcept;
  // Under mu_: whether a thread may take the next queued block now.
  bool can_take() const noexcept { return taken_ < count_ && (!serial_ || in_flight_ == 0); }

  struct Job {
    StoreKey key;
    uint32_t tiers = 0;
  };
  struct Target {
    kvp_store* handle = nullptr;
    uint64_t serial = 0;
  };

  size_t slots_, block_bytes_;
  HostAllocator alloc_;
  uint8_t* ring_ = nullptr;  // slots_ x block_bytes_
  Job* jobs_ = nullptr;      // [slots_]
  uint8_t* put_ = nullptr;   // [slots_]: the slot's block is put (waiting for the ones before it)
  Target targets_[KVP_POOL_MAX_TIERS];

  std::mutex mu_;
  std::condition_variable work_;  // the threads wait for blocks (or stop)
  std::condition_variable done_;  // the pool waits for room or for the queue to empty
  size_t head_ = 0;               // oldest queued block
  size_t count_ = 0;              // queued blocks, including those being put
  size_t taken_ = 0;              // of those, from head_ on: taken by a thread
  size_t in_flight_ = 0;          // blocks being put
  bool serial_ = false;           // a tier's puts must not run at once: one block at a time
  bool stop_ = false;

  Counters written_{}, bytes_{}, errors_{};
  HostVector<std::thread> threads_;  // last: started once everything above is ready
};

}  // namespace kvp::detail
