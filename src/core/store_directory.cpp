// The directory store: one file "<32 hex digits of the key>.kvpb" per block, replaced atomically
// (util/atomic_file), holding the block's frame (core/store_frame: a 48-byte header, then the
// block). The directory is scanned at open; recency (LRU) is kept in memory,
// seeded from the files' modification times, and a read refreshes the file's times so that the
// order survives a restart. Bounded by the sum of file sizes.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <list>
#include <unordered_map>

#include "core/store.hpp"
#include "core/store_frame.hpp"
#include "core/xxh3.hpp"
#include "util/atomic_file.hpp"
#include "util/error.hpp"

namespace kvp::detail {
namespace {

constexpr size_t kHeaderBytes = kFrameHeaderBytes;
constexpr char kSuffix[] = ".kvpb";
constexpr size_t kHexDigits = 32;

// Reads exactly n bytes at offset off; false at end of file.
bool read_exact(int fd, void* dst, size_t n, uint64_t off) {
  auto* p = static_cast<uint8_t*>(dst);
  while (n > 0) {
    const ssize_t r = ::pread(fd, p, n, static_cast<off_t>(off));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) fail(KVP_ERR_IO, "kvp_store: read failed: %s", std::strerror(errno));
    if (r == 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
    off += static_cast<uint64_t>(r);
  }
  return true;
}

// The key of a file name "<32 hex>.kvpb"; false for any other name.
bool parse_name(const char* name, StoreKey* key) {
  return std::strlen(name) == kHexDigits + sizeof kSuffix - 1 && std::strcmp(name + kHexDigits, kSuffix) == 0 &&
         StoreKey::from_hex(name, key);
}

class DirectoryStore final : public Store {
 public:
  DirectoryStore(const char* path, uint64_t max_bytes, bool sync, const HostAllocator& a, const char* fn)
      : dir_(path, a), max_(max_bytes), sync_(sync), alloc_(a), lru_(a),
        map_(16, StoreKeyHash(), std::equal_to<StoreKey>(), a), order_(a) {
    if (::mkdir(path, 0777) != 0 && errno != EEXIST)
      fail(KVP_ERR_IO, "%s: cannot create the directory '%s': %s", fn, path, std::strerror(errno));
    scan(fn);
    while (bytes_ > max_) evict_oldest();
  }

 private:
  using Lru = std::list<StoreKey, StdAllocator<StoreKey>>;
  struct Entry {
    uint64_t file_bytes;
    Lru::iterator at;  // in lru_ (front = least recently used)
    uint64_t number;   // in order_
  };
  using Map = std::unordered_map<StoreKey, Entry, StoreKeyHash, std::equal_to<StoreKey>,
                                 StdAllocator<std::pair<const StoreKey, Entry>>>;

  HostString file_of(const StoreKey& k) const {
    char name[kHexDigits + sizeof kSuffix];
    k.to_hex(name);
    std::memcpy(name + kHexDigits, kSuffix, sizeof kSuffix);
    HostString f = dir_;
    f += '/';
    f += name;
    return f;
  }

  // The block files already there, oldest modification first; stale temporary files of an
  // interrupted write ("*.kvpb.tmp.*") are deleted.
  void scan(const char* fn) {
    DIR* d = ::opendir(dir_.c_str());
    if (d == nullptr) fail(KVP_ERR_IO, "%s: cannot open the directory '%s': %s", fn, dir_.c_str(), std::strerror(errno));
    struct Found {
      StoreKey key;
      uint64_t bytes;
      struct timespec mtime;
    };
    HostVector<Found> found(alloc_);
    try {
      errno = 0;
      while (const struct dirent* e = ::readdir(d)) {
        StoreKey k;
        struct stat st;
        if (std::strstr(e->d_name, ".kvpb.tmp.") != nullptr) {
          ::unlinkat(::dirfd(d), e->d_name, 0);
        } else if (parse_name(e->d_name, &k) && ::fstatat(::dirfd(d), e->d_name, &st, 0) == 0 && S_ISREG(st.st_mode)) {
          found.push_back(Found{k, static_cast<uint64_t>(st.st_size), st.st_mtim});
        }
        errno = 0;
      }
      if (errno != 0) fail(KVP_ERR_IO, "%s: cannot read the directory '%s': %s", fn, dir_.c_str(), std::strerror(errno));
    } catch (...) {
      ::closedir(d);
      throw;
    }
    ::closedir(d);
    std::sort(found.begin(), found.end(), [](const Found& a, const Found& b) {
      return a.mtime.tv_sec != b.mtime.tv_sec ? a.mtime.tv_sec < b.mtime.tv_sec : a.mtime.tv_nsec < b.mtime.tv_nsec;
    });
    for (const Found& f : found) {
      const Lru::iterator at = lru_.insert(lru_.end(), f.key);
      map_.emplace(f.key, Entry{f.bytes, at, order_.add(f.key)});
      bytes_ += f.bytes;
    }
  }

  void forget(Map::iterator it) noexcept {
    bytes_ -= it->second.file_bytes;
    lru_.erase(it->second.at);
    order_.erase(it->second.number);
    map_.erase(it);
  }

  void evict_oldest() noexcept {
    auto it = map_.find(lru_.front());
    ::unlink(file_of(it->first).c_str());  // a file that cannot be deleted is forgotten all the same
    forget(it);
    ++evictions_;
  }

  // Deletes a damaged block and throws `code` with `what`.
  [[noreturn]] void damaged(Map::iterator it, const HostString& file, kvp_status code, const char* what) {
    ::unlink(file.c_str());
    forget(it);
    fail(code, "kvp_store: the block file '%s' is damaged (%s): deleted", file.c_str(), what);
  }

  void do_put(const StoreKey& k, const void* data, size_t n) override {
    if (n > max_ || max_ - n < kHeaderBytes)
      fail(KVP_ERR_INVALID_ARGUMENT,
           "kvp_store_put: a block of %zu bytes (plus its %zu-byte file header) exceeds the store's bound of %llu bytes",
           n, kHeaderBytes, static_cast<unsigned long long>(max_));
    // The entry first (it may need memory), the file next, so a failure leaves both as they were.
    auto it = map_.find(k);
    const bool fresh = it == map_.end();
    if (fresh) {
      const uint64_t number = order_.add(k);
      Lru::iterator at = lru_.end();
      try {
        at = lru_.insert(lru_.end(), k);
        it = map_.emplace(k, Entry{0, at, number}).first;
      } catch (...) {
        if (at != lru_.end()) lru_.erase(at);
        order_.erase(number);
        throw;
      }
    }
    try {
      const HostString file = file_of(k);
      AtomicFile f(file.c_str(), "kvp_store_put");
      const auto* p = static_cast<const uint8_t*>(data);
      Xxh3Sum sum;  // each piece summed just before it is written (read from the cache)
      for (size_t off = 0; off < n; off += kFramePieceBytes) {
        const size_t m = std::min(n - off, kFramePieceBytes);
        sum.add(p + off, m);
        f.write_at(kHeaderBytes + off, p + off, m);
      }
      uint8_t h[kHeaderBytes];
      write_frame_header(h, k, n, sum.value());
      f.write_at(0, h, sizeof h);
      f.commit(sync_ ? AtomicFile::Sync::kSynced : AtomicFile::Sync::kUnsynced);
    } catch (...) {
      if (fresh) forget(it);
      throw;
    }
    bytes_ = bytes_ - it->second.file_bytes + kHeaderBytes + n;
    it->second.file_bytes = kHeaderBytes + n;
    lru_.splice(lru_.end(), lru_, it->second.at);
    while (bytes_ > max_) evict_oldest();  // never the new block: it alone fits
  }

  // Reads and verifies the block of `it` into dst (cap bytes; cap == SIZE_MAX with dst null: into
  // scratch, for scrub). Throws (after deleting a damaged file); false if the file has vanished.
  bool read_block(Map::iterator it, void* dst, size_t cap, size_t* size, HostVector<uint8_t>* scratch) {
    const HostString file = file_of(it->first);
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
      forget(it);
      return false;
    }
    if (fd < 0) fail(KVP_ERR_IO, "kvp_store: cannot open the block file '%s': %s", file.c_str(), std::strerror(errno));
    struct Closer {
      int fd;
      ~Closer() { ::close(fd); }
    } closer{fd};
    uint8_t h[kHeaderBytes];
    if (!read_exact(fd, h, sizeof h, 0)) damaged(it, file, KVP_ERR_FORMAT_TRUNCATED, "shorter than its header");
    if (const FrameFault f = check_frame_header(h, it->second.file_bytes, it->first)) damaged(it, file, f.code, f.what);
    const uint64_t n = it->second.file_bytes - kHeaderBytes;
    *size = static_cast<size_t>(n);
    if (scratch != nullptr) {
      scratch->resize(*size);
      dst = scratch->data();
    } else if (cap < n) {
      fail(KVP_ERR_BUFFER_TOO_SMALL, "kvp_store_get: the block has %zu bytes but capacity is %zu", *size, cap);
    }
    auto* p = static_cast<uint8_t*>(dst);
    Xxh3Sum sum;  // each piece summed just after it is read (from the cache)
    for (size_t off = 0; off < *size; off += kFramePieceBytes) {
      const size_t m = std::min(*size - off, kFramePieceBytes);
      if (!read_exact(fd, p + off, m, kHeaderBytes + off)) damaged(it, file, KVP_ERR_FORMAT_TRUNCATED, "truncated");
      sum.add(p + off, m);
    }
    if (const FrameFault f = check_frame_sum(h, sum.value())) damaged(it, file, f.code, f.what);
    return true;
  }

  bool do_get(const StoreKey& k, void* dst, size_t cap, size_t* size) override {
    auto it = map_.find(k);
    if (it == map_.end() || !read_block(it, dst, cap, size, nullptr)) return false;
    lru_.splice(lru_.end(), lru_, it->second.at);
    ::utimensat(AT_FDCWD, file_of(k).c_str(), nullptr, 0);  // recency for the next open
    return true;
  }

  void do_exists(const StoreKey* keys, size_t n, uint8_t* found) override {
    for (size_t i = 0; i < n; ++i) found[i] = map_.count(keys[i]) != 0;
  }

  bool do_remove(const StoreKey& k) override {
    auto it = map_.find(k);
    if (it == map_.end()) return false;
    const HostString file = file_of(k);
    if (::unlink(file.c_str()) != 0 && errno != ENOENT)
      fail(KVP_ERR_IO, "kvp_store_remove: cannot delete '%s': %s", file.c_str(), std::strerror(errno));
    forget(it);
    return true;
  }

  size_t do_list(uint64_t* cursor, StoreKey* keys, size_t cap) override { return order_.list(cursor, keys, cap); }

  Usage do_usage() const override {
    return Usage{static_cast<int64_t>(map_.size()), static_cast<int64_t>(bytes_), static_cast<int64_t>(max_)};
  }

  kvp_store_scrub_report do_scrub() override {
    kvp_store_scrub_report r;
    std::memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    HostVector<StoreKey> keys(lru_.begin(), lru_.end(), alloc_);
    HostVector<uint8_t> scratch(alloc_);
    for (const StoreKey& k : keys) {
      auto it = map_.find(k);
      const uint64_t file_bytes = it->second.file_bytes;
      size_t size = 0;
      ++r.blocks_checked;
      try {
        read_block(it, nullptr, 0, &size, &scratch);
      } catch (const error& e) {
        if (e.code() == KVP_ERR_IO || e.code() == KVP_ERR_OUT_OF_MEMORY) throw;
        ++r.blocks_damaged;
        r.bytes_freed += static_cast<int64_t>(file_bytes);
      }
    }
    return r;
  }

  HostString dir_;
  uint64_t max_;
  bool sync_;
  uint64_t bytes_ = 0;
  HostAllocator alloc_;
  Lru lru_;
  Map map_;
  ListOrder order_;
};

}  // namespace

HostPtr<Store> make_directory_store(const char* path, uint64_t max_bytes, bool sync, const HostAllocator& alloc,
                                    const char* function) {
  return make_host<DirectoryStore>(alloc, path, max_bytes, sync, alloc, function);
}

}  // namespace kvp::detail
