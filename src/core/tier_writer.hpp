// The writer thread of a pool whose tier 0 has a slow put (core/store.hpp, put_is_cheap): a
// bounded FIFO of staging blocks that the pool fills (sealed blocks, core/store_block) and one
// thread that puts them into the store, so that an evicting pool call never waits on a file or a
// network round trip. One writer per pool, not per store: the pool owns its staging memory and
// joins its thread on destroy, and a store shared by several pools needs no registry of writers
// (stores are internally locked, so their writers simply take turns).
//
// Thread use: the pool's thread calls everything; the writer thread touches only the queue (under
// mu_), the staging block it is putting, the store and the atomic counters.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <thread>

#include "core/store.hpp"
#include "util/memory.hpp"

namespace kvp::detail {

class TierWriter {
 public:
  // `slots` staging blocks of `block_bytes` each (from `alloc`), written to the store behind
  // `handle` (checked by its serial before every put). Throws OUT_OF_MEMORY.
  TierWriter(kvp_store* handle, uint64_t serial, size_t slots, size_t block_bytes, const HostAllocator& alloc);
  // Drains: every block queued is put (or fails, counted) before the thread is joined.
  ~TierWriter();
  TierWriter(const TierWriter&) = delete;
  TierWriter& operator=(const TierWriter&) = delete;

  // A free staging block to fill, or nullptr when all are queued (wait = false), or once one is
  // free (wait = true). The block stays the caller's until submit().
  uint8_t* staging(bool wait);
  // Queues the block staging() returned, to be put under `key`.
  void submit(const StoreKey& key);
  // Waits until every block submitted so far has been put or has failed.
  void flush();

  // Counters of the puts done by the thread (read at any time).
  int64_t written() const noexcept { return written_.load(std::memory_order_relaxed); }
  int64_t bytes() const noexcept { return bytes_.load(std::memory_order_relaxed); }
  int64_t errors() const noexcept { return errors_.load(std::memory_order_relaxed); }

 private:
  void run() noexcept;
  void put_one(size_t slot) noexcept;

  kvp_store* handle_;
  uint64_t serial_;
  size_t slots_, block_bytes_;
  HostAllocator alloc_;
  uint8_t* ring_ = nullptr;   // slots_ x block_bytes_
  StoreKey* keys_ = nullptr;  // [slots_]

  std::mutex mu_;
  std::condition_variable work_;  // the thread waits for blocks (or stop)
  std::condition_variable done_;  // the pool waits for room or for the queue to empty
  size_t head_ = 0;               // oldest queued block
  size_t count_ = 0;              // queued blocks, including the one being put
  bool stop_ = false;

  std::atomic<int64_t> written_{0}, bytes_{0}, errors_{0};
  std::thread thread_;  // last: started once everything above is ready
};

}  // namespace kvp::detail
