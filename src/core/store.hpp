// Block stores (include/kvpages/store.h): the interface every store implements, its handle, and
// the factories of the shipped stores (memory: core/store_memory.cpp, directory:
// core/store_directory.cpp) and of plug-in stores (core/store.cpp). A store maps 16-byte keys
// to byte blocks and knows nothing of what is in them (the pool's block format: core/store_block).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>

#include "kvpages/store.h"
#include "util/handle.hpp"
#include "util/memory.hpp"

namespace kvp::detail {

// A key as two 64-bit words (little-endian bytes 0-7 and 8-15), hashable and comparable.
struct StoreKey {
  uint64_t lo = 0, hi = 0;
  bool operator==(const StoreKey& o) const noexcept { return lo == o.lo && hi == o.hi; }
  static StoreKey from(const kvp_store_key& k) noexcept;
  kvp_store_key to_c() const noexcept;
  // The 16 bytes as 32 lower-case hex digits (no terminator), as store file names and Redis keys
  // spell a key; and back (false unless exactly 32 such digits start at hex).
  void to_hex(char* hex) const noexcept;
  static bool from_hex(const char* hex, StoreKey* key) noexcept;
};
struct StoreKeyHash {
  size_t operator()(const StoreKey& k) const noexcept { return static_cast<size_t>(k.lo ^ (k.hi * 0x9E3779B97F4A7C15ull)); }
};

// A store. The public members take the lock, count, and call the implementation's do_* members;
// those may throw kvp::detail::error (a miss is `false` from do_get, not an exception).
class Store {
 public:
  virtual ~Store() = default;

  void put(const StoreKey& k, const void* data, size_t n);
  // Puts the block.size() bytes of `block` under k, taking its memory where the store keeps
  // blocks in memory from the same allocator (the memory store), else copying them (as put).
  // `block` then holds memory the caller may reuse, of any size (possibly none); on an exception
  // it is unchanged.
  void put_adopt(const StoreKey& k, HostBytes& block);
  // False on a miss; throws BUFFER_TOO_SMALL with *size = the block's size.
  bool get(const StoreKey& k, void* dst, size_t cap, size_t* size);
  void exists(const StoreKey* keys, size_t n, uint8_t* found);
  // False when the key has no block.
  bool remove(const StoreKey& k);
  kvp_store_stats stats();
  kvp_store_scrub_report scrub();
  size_t list(uint64_t* cursor, StoreKey* keys, size_t cap);
  // Whether a put costs about a memory copy (the memory store), so that a pool writes to it
  // inside the evicting call; a slow put (a file, the network, a plug-in) is handed to the
  // pool's writer threads (core/tier_writer).
  virtual bool put_is_cheap() const noexcept { return false; }
  // Whether the store keeps its blocks in its own host memory (the memory store), so that
  // read_in_place serves them without a copy.
  virtual bool blocks_in_memory() const noexcept { return false; }
  // Whether gets and puts on several threads do their I/O at once (the directory store reads and
  // writes its files outside its lock), so that a pool reads several blocks of a prompt on its
  // threads and its writer puts several blocks at once.
  virtual bool concurrent_io() const noexcept { return false; }
  // Whether a put waits for the device (the directory store's fsyncs), so that writer threads
  // beyond the CPUs keep the disk busy while others wait. Only where concurrent_io().
  virtual bool put_waits_for_device() const noexcept { return false; }
  // Where blocks_in_memory(): calls look(find) under the store's lock, where find(k, use) is the
  // block of k where it lies (a const HostBytes*), nullptr on a miss. A `use` counts as a hit (or a
  // miss) and makes the block the most recent, as get does; without it the look changes nothing
  // (a second look at a block just used). look must not throw or call the store; the blocks it
  // found stay as they are until it returns.
  template <class F>
  void read_in_place(F&& look);

 protected:
  // What a shipped store holds (a plug-in: unknown, -1).
  struct Usage {
    int64_t blocks = -1, bytes = -1, max_bytes = -1;
  };
  virtual void do_put(const StoreKey& k, const void* data, size_t n) = 0;
  virtual void do_put_adopt(const StoreKey& k, HostBytes& block) { do_put(k, block.data(), block.size()); }
  virtual bool do_get(const StoreKey& k, void* dst, size_t cap, size_t* size) = 0;
  // The block of k in the store's memory (with `use`, now the most recent); nullptr on a miss
  // (and where the store does not keep blocks in memory).
  virtual const HostBytes* do_find(const StoreKey&, bool) noexcept { return nullptr; }
  virtual void do_exists(const StoreKey* keys, size_t n, uint8_t* found) = 0;
  virtual bool do_remove(const StoreKey& k) = 0;
  virtual Usage do_usage() const { return Usage{}; }
  virtual kvp_store_scrub_report do_scrub();  // default: UNSUPPORTED
  // Lists the keys held, a page at a time: from *cursor (0 = the start) writes up to cap keys to
  // keys and returns how many; *cursor becomes 0 when the listing is complete. Keys added or
  // removed during a listing may or may not appear; a key present throughout appears at least once.
  virtual size_t do_list(uint64_t* cursor, StoreKey* keys, size_t cap);  // default: UNSUPPORTED
  int64_t evictions_ = 0;                     // shipped stores count what their bound dropped

  // Inside a do_* call (the lock held): releases the store's lock while it lives, for file or
  // network I/O that other calls need not wait for; it is held again when this is destroyed (also
  // when unwinding), so the do_* call returns or throws with the lock held.
  class Unlocked {
   public:
    explicit Unlocked(Store& s) : mu_(s.mu_) { mu_.unlock(); }
    ~Unlocked() { mu_.lock(); }
    Unlocked(const Unlocked&) = delete;
    Unlocked& operator=(const Unlocked&) = delete;

   private:
    std::mutex& mu_;
  };
  // Inside a do_* call: waits on cv, the lock released meanwhile, until pred() holds.
  template <class P>
  void wait(std::condition_variable_any& cv, P pred) {
    cv.wait(mu_, pred);
  }

 private:
  template <class F>
  auto counted(F&& f) -> decltype(f());
  std::mutex mu_;
  int64_t puts_ = 0, hits_ = 0, misses_ = 0, errors_ = 0;
};

template <class F>
void Store::read_in_place(F&& look) {
  std::lock_guard<std::mutex> lock(mu_);
  look([this](const StoreKey& k, bool use) {
    const HostBytes* block = do_find(k, use);
    if (use) ++(block != nullptr ? hits_ : misses_);
    return block;
  });
}

// The order in which a shipped store lists its keys: a key gets the next number when it arrives
// and keeps it while it stays, so a listing that resumes after the last number it returned sees
// every key present throughout exactly once, whatever else arrives or leaves meanwhile.
class ListOrder {
 public:
  explicit ListOrder(const HostAllocator& a) : by_number_(std::less<uint64_t>(), a) {}
  // Numbers a new key (may throw; then nothing changed).
  uint64_t add(const StoreKey& k);
  void erase(uint64_t number) noexcept { by_number_.erase(number); }
  // Store::do_list over the keys in number order; the cursor is the next number to list.
  size_t list(uint64_t* cursor, StoreKey* keys, size_t cap) const;

 private:
  using Map = std::map<uint64_t, StoreKey, std::less<uint64_t>, StdAllocator<std::pair<const uint64_t, StoreKey>>>;
  Map by_number_;
  uint64_t next_ = 1;  // 0 is the cursor of a listing's start
};

// A store in host memory bounded by max_bytes, LRU.
HostPtr<Store> make_memory_store(uint64_t max_bytes, const HostAllocator& alloc);
// A store in a directory (created if missing, scanned now), bounded by max_bytes, LRU.
HostPtr<Store> make_directory_store(const char* path, uint64_t max_bytes, bool sync, const HostAllocator& alloc,
                                    const char* function);

// A store in a Redis server or cluster (url: kvp_store_create_redis), every network call bounded
// by timeout_ms; connects now. Built without hiredis: UNSUPPORTED.
HostPtr<Store> make_redis_store(const char* url, uint32_t timeout_ms, const HostAllocator& alloc, const char* function);
// Whether the library was built with the Redis store (kvp_build_info).
bool redis_store_built() noexcept;

}  // namespace kvp::detail

// The public handle.
struct kvp_store : kvp::detail::Handle<kvp::detail::Store, kvp::detail::kMagicStore> {};

namespace kvp::detail {
// Validates a store handle (NULL, registry, magic); throws INVALID_HANDLE.
inline Store& store_from(const kvp_store* h, const char* function) { return handle_get(h, function); }
// A store of a plug-in's callbacks and its handle (kvp_store_create; validated; throws). On
// failure the plug-in's destroy is not called.
kvp_store* create_plugin_store(const kvp_store_vtable* vt, const char* function);
}  // namespace kvp::detail
