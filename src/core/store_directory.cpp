// The directory store: one file "<32 hex digits of the key>.kvpb" per block, replaced atomically
// (util/atomic_file), holding the block's frame (core/store_frame: a 48-byte header, then the
// block). The directory is scanned at open; recency (LRU) is kept in memory,
// seeded from the files' modification times, and a read refreshes the file's times so that the
// order survives a restart. Bounded by the sum of file sizes. Files are written and read outside
// the store's lock (see DirectoryStore).
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
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

// How reading a block file ended: read and verified, gone, or damaged (code and reason).
struct FileRead {
  enum { kOk, kGone, kDamaged } outcome = kOk;
  FrameFault fault;
};

// Reads the frame file `file` of `file_bytes` bytes stored under k and verifies it, its block
// into dst (the caller checked that it fits). Touches no store state (runs without the lock);
// throws IO when the file cannot be opened or read.
FileRead read_frame_file(const HostString& file, uint64_t file_bytes, const StoreKey& k, uint8_t* dst) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) return FileRead{FileRead::kGone, {}};
  if (fd < 0) fail(KVP_ERR_IO, "kvp_store: cannot open the block file '%s': %s", file.c_str(), std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  const auto damaged = [](kvp_status code, const char* what) { return FileRead{FileRead::kDamaged, {code, what}}; };
  uint8_t h[kHeaderBytes];
  if (!read_exact(fd, h, sizeof h, 0)) return damaged(KVP_ERR_FORMAT_TRUNCATED, "shorter than its header");
  if (const FrameFault f = check_frame_header(h, file_bytes, k)) return FileRead{FileRead::kDamaged, f};
  const size_t n = static_cast<size_t>(file_bytes - kHeaderBytes);
  Xxh3Sum sum;  // each piece summed just after it is read (from the cache)
  for (size_t off = 0; off < n; off += kFramePieceBytes) {
    const size_t m = std::min(n - off, kFramePieceBytes);
    if (!read_exact(fd, dst + off, m, kHeaderBytes + off)) return damaged(KVP_ERR_FORMAT_TRUNCATED, "truncated");
    sum.add(dst + off, m);
  }
  if (const FrameFault f = check_frame_sum(h, sum.value())) return FileRead{FileRead::kDamaged, f};
  return FileRead{};
}

// Writes the frame of block (n bytes) under k to `file`, replacing it atomically. No store state.
void write_frame_file(const HostString& file, const StoreKey& k, const void* data, size_t n, bool sync) {
  AtomicFile f(file.c_str(), "kvp_store_put", AtomicFile::synced_if(sync));
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
  f.commit();
}

// Files are written and read without the store's lock (Store::Unlocked), so one call's file I/O
// does not hold up the others (a pool's lookups while its writer threads put, several pools
// sharing the store). The lock covers the bookkeeping; a key being put is marked `writing`, and
// while it is, no other call replaces, evicts, removes or deletes its file (a second put or a
// remove of it waits), so each file operation on a key sees the entry it expects.
class DirectoryStore final : public Store {
 public:
  DirectoryStore(const char* path, uint64_t max_bytes, bool sync, const HostAllocator& a, const char* fn)
      : dir_(path, a), max_(max_bytes), sync_(sync), alloc_(a), lru_(a),
        map_(16, StoreKeyHash(), std::equal_to<StoreKey>(), a), order_(a) {
    if (::mkdir(path, 0777) != 0 && errno != EEXIST)
      fail(KVP_ERR_IO, "%s: cannot create the directory '%s': %s", fn, path, std::strerror(errno));
    scan(fn);
    shrink_to_bound();
  }

  bool concurrent_io() const noexcept override { return true; }
  bool put_waits_for_device() const noexcept override { return sync_; }

 private:
  using Lru = std::list<StoreKey, StdAllocator<StoreKey>>;
  struct Entry {
    uint64_t file_bytes;
    Lru::iterator at;       // in lru_ (front = least recently used)
    uint64_t number;        // in order_
    uint64_t version = 0;   // unique in the store, given when the file is complete (found by the
                            // scan, or put); 0: the key's first put is still writing it
    bool writing = false;   // a put of the key is writing its file
    bool in_store() const noexcept { return version != 0; }
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
      map_.emplace(f.key, Entry{f.bytes, at, order_.add(f.key), ++versions_});
      bytes_ += f.bytes;
      ++blocks_;
    }
  }

  // The entry of k when its block is in the store (not a first put still writing).
  Map::iterator find_block(const StoreKey& k) {
    auto it = map_.find(k);
    return it == map_.end() || !it->second.in_store() ? map_.end() : it;
  }

  void forget(Map::iterator it) noexcept {
    if (it->second.in_store()) {
      bytes_ -= it->second.file_bytes;
      --blocks_;
    }
    lru_.erase(it->second.at);
    order_.erase(it->second.number);
    map_.erase(it);
  }

  // Deletes the least recently used block whose key is not being written; false if none is left.
  bool evict_oldest() noexcept {
    for (const StoreKey& k : lru_) {
      auto it = map_.find(k);
      if (it->second.writing) continue;  // first puts still writing included
      ::unlink(file_of(k).c_str());      // a file that cannot be deleted is forgotten all the same
      forget(it);
      ++evictions_;
      return true;
    }
    return false;
  }

  // Over the bound, evicts until it holds, or until only keys being written are left (their
  // files count once written: the bound can be exceeded by the puts in flight).
  void shrink_to_bound() noexcept {
    while (bytes_ > max_ && evict_oldest()) {
    }
  }

  void wait_not_writing(const StoreKey& k) {
    wait(idle_, [&] {
      auto it = map_.find(k);
      return it == map_.end() || !it->second.writing;
    });
  }

  void do_put(const StoreKey& k, const void* data, size_t n) override {
    if (n > max_ || max_ - n < kHeaderBytes)
      fail(KVP_ERR_INVALID_ARGUMENT,
           "kvp_store_put: a block of %zu bytes (plus its %zu-byte file header) exceeds the store's bound of %llu bytes",
           n, kHeaderBytes, static_cast<unsigned long long>(max_));
    wait_not_writing(k);
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
    it->second.writing = true;
    try {
      const HostString file = file_of(k);
      Unlocked io(*this);
      write_frame_file(file, k, data, n, sync_);
    } catch (...) {
      it = map_.find(k);  // still there: no other call forgets a key being written
      if (fresh) forget(it);
      else it->second.writing = false;
      idle_.notify_all();
      throw;
    }
    it = map_.find(k);
    Entry& e = it->second;
    if (e.in_store()) bytes_ -= e.file_bytes;
    else ++blocks_;
    bytes_ += kHeaderBytes + n;
    e.file_bytes = kHeaderBytes + n;
    e.writing = false;
    e.version = ++versions_;  // unique: a key removed and put again never reads as unchanged
    lru_.splice(lru_.end(), lru_, e.at);
    idle_.notify_all();
    shrink_to_bound();  // never the new block: it is the most recent and alone fits
  }

  // Reads and verifies the block of k, outside the lock, into dst (cap bytes; with scratch: into
  // it, for scrub). False on a miss; a damaged file is deleted and throws its FORMAT status.
  bool read_block(const StoreKey& k, uint8_t* dst, size_t cap, size_t* size, HostVector<uint8_t>* scratch) {
    for (bool retried = false;; retried = true) {
      auto it = find_block(k);
      if (it == map_.end()) return false;
      const uint64_t file_bytes = it->second.file_bytes, version = it->second.version;
      if (file_bytes < kHeaderBytes) {  // found so by the scan at open
        if (it->second.writing) return false;
        damaged(it, KVP_ERR_FORMAT_TRUNCATED, "shorter than its header");
      }
      *size = static_cast<size_t>(file_bytes - kHeaderBytes);
      if (scratch != nullptr) {
        scratch->resize(*size);
        dst = scratch->data();
      } else if (cap < *size) {
        fail(KVP_ERR_BUFFER_TOO_SMALL, "kvp_store_get: the block has %zu bytes but capacity is %zu", *size, cap);
      }
      const HostString file = file_of(k);
      FileRead r;
      {
        Unlocked io(*this);
        r = read_frame_file(file, file_bytes, k, dst);
      }
      it = map_.find(k);
      if (it == map_.end()) return r.outcome == FileRead::kOk;  // removed meanwhile
      if (r.outcome == FileRead::kOk) {
        lru_.splice(lru_.end(), lru_, it->second.at);
        ::utimensat(AT_FDCWD, file.c_str(), nullptr, 0);  // recency for the next open
        return true;
      }
      // Replaced while it was read (or being replaced): read the new file once more.
      if (it->second.writing || it->second.version != version) {
        if (retried) return false;
        continue;
      }
      if (r.outcome == FileRead::kGone) {
        forget(it);
        return false;
      }
      damaged(it, r.fault.code, r.fault.what);
    }
  }

  // Deletes the damaged file of `it` (not being written) and throws `code` with `what`.
  [[noreturn]] void damaged(Map::iterator it, kvp_status code, const char* what) {
    const HostString file = file_of(it->first);
    ::unlink(file.c_str());
    forget(it);
    fail(code, "kvp_store: the block file '%s' is damaged (%s): deleted", file.c_str(), what);
  }

  bool do_get(const StoreKey& k, void* dst, size_t cap, size_t* size) override {
    return read_block(k, static_cast<uint8_t*>(dst), cap, size, nullptr);
  }

  void do_exists(const StoreKey* keys, size_t n, uint8_t* found) override {
    for (size_t i = 0; i < n; ++i) found[i] = find_block(keys[i]) != map_.end();
  }

  bool do_remove(const StoreKey& k) override {
    wait_not_writing(k);
    auto it = find_block(k);
    if (it == map_.end()) return false;
    const HostString file = file_of(k);
    if (::unlink(file.c_str()) != 0 && errno != ENOENT)
      fail(KVP_ERR_IO, "kvp_store_remove: cannot delete '%s': %s", file.c_str(), std::strerror(errno));
    forget(it);
    return true;
  }

  // The keys of the blocks in the store: a first put still writing is left out of its page.
  size_t do_list(uint64_t* cursor, StoreKey* keys, size_t cap) override {
    const size_t n = order_.list(cursor, keys, cap);
    size_t kept = 0;
    for (size_t i = 0; i < n; ++i)
      if (find_block(keys[i]) != map_.end()) keys[kept++] = keys[i];
    return kept;
  }

  Usage do_usage() const override {
    return Usage{static_cast<int64_t>(blocks_), static_cast<int64_t>(bytes_), static_cast<int64_t>(max_)};
  }

  kvp_store_scrub_report do_scrub() override {
    kvp_store_scrub_report r;
    std::memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    HostVector<StoreKey> keys(lru_.begin(), lru_.end(), alloc_);
    HostVector<uint8_t> scratch(alloc_);
    for (const StoreKey& k : keys) {
      const auto it = find_block(k);
      if (it == map_.end()) continue;  // gone, or a first put still writing
      const uint64_t file_bytes = it->second.file_bytes;
      size_t size = 0;
      ++r.blocks_checked;
      try {
        read_block(k, nullptr, 0, &size, &scratch);
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
  uint64_t bytes_ = 0;     // of the blocks in the store (first puts still writing not counted)
  uint64_t blocks_ = 0;    // the same
  uint64_t versions_ = 0;  // the last Entry::version given
  HostAllocator alloc_;
  Lru lru_;
  Map map_;
  ListOrder order_;
  std::condition_variable_any idle_;  // a put of some key ended
};

}  // namespace

HostPtr<Store> make_directory_store(const char* path, uint64_t max_bytes, bool sync, const HostAllocator& alloc,
                                    const char* function) {
  return make_host<DirectoryStore>(alloc, path, max_bytes, sync, alloc, function);
}

}  // namespace kvp::detail
