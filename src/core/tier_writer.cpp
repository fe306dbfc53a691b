#include "core/tier_writer.hpp"

#include <cstring>
#include <new>
#include <system_error>

#include "util/checked.hpp"
#include "util/error.hpp"

namespace kvp::detail {

TierWriter::TierWriter(size_t slots, size_t block_bytes, const HostAllocator& alloc)
    : slots_(slots), block_bytes_(block_bytes), alloc_(alloc) {
  const size_t ring = checked_bytes_add(checked_bytes(slots, block_bytes, "a pool's write queue"), 63,
                                        "a pool's write queue") / 64 * 64;
  const size_t jobs = checked_bytes(slots, sizeof(Job), "a pool's write queue");
  auto* mem = static_cast<uint8_t*>(alloc_.allocate(checked_bytes_add(ring, jobs, "a pool's write queue"), 64));
  // Touched now, once: the evicting calls that fill the staging blocks never take the page
  // faults of their first use (about as long as the copy into them).
  std::memset(mem, 0, ring);
  ring_ = mem;
  jobs_ = reinterpret_cast<Job*>(mem + ring);
  for (size_t i = 0; i < slots; ++i) new (jobs_ + i) Job();
  try {
    thread_ = std::thread([this] { run(); });
  } catch (const std::system_error& e) {
    alloc_.deallocate(mem);
    fail(KVP_ERR_OUT_OF_MEMORY, "kvp_pool_add_store: could not start the pool's writer thread (%s)", e.what());
  }
}

TierWriter::~TierWriter() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_.notify_one();
  thread_.join();
  alloc_.deallocate(ring_);
}

void TierWriter::add_store(uint32_t tier, kvp_store* handle, uint64_t serial) noexcept {
  std::lock_guard<std::mutex> lock(mu_);
  targets_[tier] = Target{handle, serial};
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

// Puts the oldest queued block, outside the lock, until stopped with an empty queue (so the
// destructor drains).
void TierWriter::run() noexcept {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    work_.wait(lock, [this] { return count_ > 0 || stop_; });
    if (count_ == 0) return;
    const size_t slot = head_;
    lock.unlock();
    put_one(slot);
    lock.lock();
    head_ = (head_ + 1) % slots_;
    --count_;
    done_.notify_all();
  }
}

}  // namespace kvp::detail
