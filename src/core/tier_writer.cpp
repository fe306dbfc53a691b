#include "core/tier_writer.hpp"

#include <cstring>
#include <new>
#include <system_error>

#include "util/checked.hpp"
#include "util/error.hpp"

namespace kvp::detail {

TierWriter::TierWriter(size_t slots, size_t block_bytes, size_t threads, const HostAllocator& alloc)
    : slots_(slots), block_bytes_(block_bytes), alloc_(alloc), threads_(StdAllocator<std::thread>(alloc)) {
  const size_t ring = checked_bytes_add(checked_bytes(slots, block_bytes, "a pool's write queue"), 63,
                                        "a pool's write queue") / 64 * 64;
  const size_t jobs = checked_bytes(slots, sizeof(Job) + 1, "a pool's write queue");
  auto* mem = static_cast<uint8_t*>(alloc_.allocate(checked_bytes_add(ring, jobs, "a pool's write queue"), 64));
  // Touched now, once: the evicting calls that fill the staging blocks never take the page
  // faults of their first use (about as long as the copy into them).
  std::memset(mem, 0, ring + jobs);
  ring_ = mem;
  jobs_ = reinterpret_cast<Job*>(mem + ring);
  put_ = mem + ring + slots * sizeof(Job);
  for (size_t i = 0; i < slots; ++i) new (jobs_ + i) Job();
  try {
    threads_.reserve(threads);
    for (size_t i = 0; i < threads; ++i) threads_.emplace_back([this] { run(); });
  } catch (const std::exception& e) {
    stop_threads();
    alloc_.deallocate(mem);
    fail(KVP_ERR_OUT_OF_MEMORY, "kvp_pool_add_store: could not start the pool's writer threads (%s)", e.what());
  }
}

TierWriter::~TierWriter() {
  stop_threads();
  alloc_.deallocate(ring_);
}

void TierWriter::stop_threads() noexcept {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_.notify_all();
  for (std::thread& t : threads_) t.join();
  threads_.clear();
}

void TierWriter::add_store(uint32_t tier, kvp_store* handle, uint64_t serial, bool concurrent) noexcept {
  std::lock_guard<std::mutex> lock(mu_);
  targets_[tier] = Target{handle, serial};
  serial_ = serial_ || !concurrent;
}

uint8_t* TierWriter::staging(bool wait, size_t ahead) {
  std::unique_lock<std::mutex> lock(mu_);
  if (ahead >= slots_) return nullptr;
  if (wait) done_.wait(lock, [this, ahead] { return count_ + ahead < slots_; });
  if (count_ + ahead >= slots_) return nullptr;
  // Slots past the queued ones belong to the pool's thread until submit().
  return ring_ + ((head_ + count_ + ahead) % slots_) * block_bytes_;
}

void TierWriter::submit(const StoreKey& key, uint32_t tiers) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_[(head_ + count_) % slots_] = Job{key, tiers};
    ++count_;
  }
  work_.notify_one();
}

void TierWriter::flush() {
  std::unique_lock<std::mutex> lock(mu_);
  done_.wait(lock, [this] { return count_ == 0; });
}

// Puts the block of `slot` into each tier of its job, in tier order; a failure is counted for
// its tier and does not stop the others.
void TierWriter::put_one(size_t slot) noexcept {
  const Job job = jobs_[slot];
  for (uint32_t t = 0; t < KVP_POOL_MAX_TIERS; ++t) {
    if ((job.tiers & (1u << t)) == 0) continue;
    try {
      Store& store = handle_get(targets_[t].handle, targets_[t].serial, "kvp_pool (writing an evicted page to a tier)",
                                "a store of the pool (kvp_pool_add_store) was destroyed");
      store.put(job.key, ring_ + slot * block_bytes_, block_bytes_);
      written_[t].fetch_add(1, std::memory_order_relaxed);
      bytes_[t].fetch_add(static_cast<int64_t>(block_bytes_), std::memory_order_relaxed);
    } catch (...) {
      errors_[t].fetch_add(1, std::memory_order_relaxed);
    }
  }
}

// Takes the next queued block and puts it, outside the lock; then frees the slots that are put
// from the oldest on. Until stopped with nothing left to take (so the destructor drains).
void TierWriter::run() noexcept {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    work_.wait(lock, [this] { return can_take() || (stop_ && taken_ == count_); });
    if (!can_take()) return;
    const size_t slot = (head_ + taken_) % slots_;
    ++taken_;
    ++in_flight_;
    lock.unlock();
    put_one(slot);
    lock.lock();
    --in_flight_;
    put_[slot] = 1;
    while (count_ > 0 && put_[head_] != 0) {
      put_[head_] = 0;
      head_ = (head_ + 1) % slots_;
      --count_;
      --taken_;
    }
    done_.notify_all();
    work_.notify_all();  // one block at a time: the next may go now
  }
}

}  // namespace kvp::detail
