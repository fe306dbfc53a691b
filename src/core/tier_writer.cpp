#include "core/tier_writer.hpp"

#include <system_error>

#include "util/checked.hpp"
#include "util/error.hpp"

namespace kvp::detail {

TierWriter::TierWriter(kvp_store* handle, uint64_t serial, size_t slots, size_t block_bytes,
                       const HostAllocator& alloc)
    : handle_(handle), serial_(serial), slots_(slots), block_bytes_(block_bytes), alloc_(alloc) {
  const size_t ring = checked_bytes(slots, block_bytes, "a pool's write queue");
  const size_t keys = checked_bytes(slots, sizeof(StoreKey), "a pool's write queue");
  auto* mem = static_cast<uint8_t*>(alloc_.allocate(checked_bytes_add(ring, keys, "a pool's write queue"), 64));
  ring_ = mem;
  keys_ = reinterpret_cast<StoreKey*>(mem + ring);
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

uint8_t* TierWriter::staging(bool wait) {
  std::unique_lock<std::mutex> lock(mu_);
  if (wait) done_.wait(lock, [this] { return count_ < slots_; });
  if (count_ == slots_) return nullptr;
  // Slots past the queued ones belong to the pool's thread until submit().
  return ring_ + ((head_ + count_) % slots_) * block_bytes_;
}

void TierWriter::submit(const StoreKey& key) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    keys_[(head_ + count_) % slots_] = key;
    ++count_;
  }
  work_.notify_one();
}

void TierWriter::flush() {
  std::unique_lock<std::mutex> lock(mu_);
  done_.wait(lock, [this] { return count_ == 0; });
}

void TierWriter::put_one(size_t slot) noexcept {
  try {
    Store& store = handle_get(handle_, serial_, "kvp_pool (writing an evicted page to tier 0)",
                              "a store of the pool (kvp_pool_add_store) was destroyed");
    store.put(keys_[slot], ring_ + slot * block_bytes_, block_bytes_);
    written_.fetch_add(1, std::memory_order_relaxed);
    bytes_.fetch_add(static_cast<int64_t>(block_bytes_), std::memory_order_relaxed);
  } catch (...) {
    errors_.fetch_add(1, std::memory_order_relaxed);
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
