// The host-memory store: blocks in a hash map, an LRU list of keys, bounded in bytes. The memory
// of the largest block dropped or replaced so far is kept as a spare for the next put (so a store
// at its bound, dropping a block for every block it takes, copies into memory already mapped
// instead of allocating and faulting in fresh pages each time): the store holds at most one
// block more than its bound. put_adopt (a pool's evicted page) takes the caller's block without
// copying it and hands back the spare in exchange.
#include <cstring>
#include <list>
#include <unordered_map>

#include "core/store.hpp"
#include "util/error.hpp"

namespace kvp::detail {
namespace {

class MemoryStore final : public Store {
 public:
  MemoryStore(uint64_t max_bytes, const HostAllocator& a) : max_(max_bytes), alloc_(a), lru_(a), map_(16, StoreKeyHash(), std::equal_to<StoreKey>(), a), order_(a) {}

 private:
  using Lru = std::list<StoreKey, StdAllocator<StoreKey>>;
  struct Entry {
    HostBytes data;
    Lru::iterator at;  // in lru_ (front = least recently used)
    uint64_t number;   // in order_
  };
  using Map = std::unordered_map<StoreKey, Entry, StoreKeyHash, std::equal_to<StoreKey>,
                                 StdAllocator<std::pair<const StoreKey, Entry>>>;

  void touch(Entry& e) { lru_.splice(lru_.end(), lru_, e.at); }

  // Keeps `v`'s memory as the spare if it is larger than the spare's.
  void recycle(HostBytes& v) noexcept {
    if (v.capacity() > spare_.capacity()) spare_.swap(v);
  }

  void drop(Map::iterator it) noexcept {
    bytes_ -= it->second.data.size();
    recycle(it->second.data);
    lru_.erase(it->second.at);
    order_.erase(it->second.number);
    map_.erase(it);
  }

  bool put_is_cheap() const noexcept override { return true; }

  void check_size(size_t n) const {
    if (n > max_)
      fail(KVP_ERR_INVALID_ARGUMENT, "kvp_store_put: a block of %zu bytes exceeds the store's bound of %llu bytes", n,
           static_cast<unsigned long long>(max_));
  }

  // Puts the block in `data` (of at most max_ bytes) under k, the most recent; `data` receives
  // the memory of the block it replaces (or nothing). On an exception nothing changed.
  void insert(const StoreKey& k, HostBytes& data) {
    const size_t n = data.size();
    auto it = map_.find(k);
    if (it == map_.end()) {
      const uint64_t number = order_.add(k);
      Lru::iterator at = lru_.end();
      try {
        at = lru_.insert(lru_.end(), k);
        it = map_.emplace(k, Entry{HostBytes(alloc_), at, number}).first;
      } catch (...) {
        if (at != lru_.end()) lru_.erase(at);
        order_.erase(number);
        throw;
      }
    } else {
      bytes_ -= it->second.data.size();
      touch(it->second);
    }
    it->second.data.swap(data);
    bytes_ += n;
    while (bytes_ > max_) {  // the new block is the most recent: it is never dropped (n <= max_)
      drop(map_.find(lru_.front()));
      ++evictions_;
    }
  }

  void do_put(const StoreKey& k, const void* data, size_t n) override {
    check_size(n);
    const auto* p = static_cast<const uint8_t*>(data);
    HostBytes copy(alloc_);
    if (spare_.capacity() >= n) copy.swap(spare_);
    resize_for_write(copy, n);  // allocates (if the spare is too small) before anything changes
    if (n != 0) std::memcpy(copy.data(), p, n);
    insert(k, copy);
    recycle(copy);  // the replaced block's memory
  }

  void do_put_adopt(const StoreKey& k, HostBytes& block) override {
    if (block.get_allocator() != UninitAllocator<uint8_t>(alloc_)) {
      do_put(k, block.data(), block.size());
      return;
    }
    check_size(block.size());
    insert(k, block);  // block: the replaced one's memory, or none
    recycle(block);
    block.swap(spare_);  // handed back: the spare (say, the memory of a block dropped just now)
  }

  bool blocks_in_memory() const noexcept override { return true; }

  const HostBytes* do_find(const StoreKey& k, bool use) noexcept override {
    auto it = map_.find(k);
    if (it == map_.end()) return nullptr;
    if (use) touch(it->second);
    return &it->second.data;
  }

  bool do_get(const StoreKey& k, void* dst, size_t cap, size_t* size) override {
    auto it = map_.find(k);
    if (it == map_.end()) return false;
    const HostBytes& d = it->second.data;
    *size = d.size();
    if (cap < d.size())
      fail(KVP_ERR_BUFFER_TOO_SMALL, "kvp_store_get: the block has %zu bytes but capacity is %zu", d.size(), cap);
    if (!d.empty()) std::memcpy(dst, d.data(), d.size());
    touch(it->second);
    return true;
  }

  void do_exists(const StoreKey* keys, size_t n, uint8_t* found) override {
    for (size_t i = 0; i < n; ++i) found[i] = map_.count(keys[i]) != 0;
  }

  bool do_remove(const StoreKey& k) override {
    auto it = map_.find(k);
    if (it == map_.end()) return false;
    drop(it);
    return true;
  }

  Usage do_usage() const override {
    return Usage{static_cast<int64_t>(map_.size()), static_cast<int64_t>(bytes_), static_cast<int64_t>(max_)};
  }

  size_t do_list(uint64_t* cursor, StoreKey* keys, size_t cap) override { return order_.list(cursor, keys, cap); }

  kvp_store_scrub_report do_scrub() override {
    kvp_store_scrub_report r;
    std::memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    r.blocks_checked = static_cast<int64_t>(map_.size());
    return r;
  }

  uint64_t max_;
  uint64_t bytes_ = 0;
  HostAllocator alloc_;
  HostBytes spare_{alloc_};  // memory of a dropped or replaced block, for the next put
  Lru lru_;
  Map map_;
  ListOrder order_;
};

}  // namespace

HostPtr<Store> make_memory_store(uint64_t max_bytes, const HostAllocator& alloc) {
  return make_host<MemoryStore>(alloc, max_bytes, alloc);
}

}  // namespace kvp::detail
