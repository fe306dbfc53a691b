#include "util/atomic_file.hpp"

#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "util/error.hpp"

namespace kvp::detail {
namespace {

constexpr int kNameTries = 100;
// Bytes written between two starts of the writeback of a file that will be synced.
constexpr uint64_t kWriteBackBytes = uint64_t{1} << 20;

// The file a save to `path` replaces: `path`, or the target of a symbolic link at `path`.
HostString resolve_target(const char* path, const char* fn) {
  struct stat st;
  if (::lstat(path, &st) != 0 || !S_ISLNK(st.st_mode)) return HostString(path);
  char resolved[PATH_MAX];
  if (::realpath(path, resolved) == nullptr)
    fail(KVP_ERR_IO, "%s: '%s' is a symbolic link whose target cannot be resolved: %s", fn, path, std::strerror(errno));
  return HostString(resolved);
}

HostString directory_of(const HostString& path) {
  const size_t slash = path.rfind('/');
  if (slash == HostString::npos) return HostString(".");
  return slash == 0 ? HostString("/") : path.substr(0, slash);
}

// "<path>.tmp.XXXXXX" with six random characters.
HostString temp_name(const HostString& path) {
  static std::atomic<uint64_t> counter{0};
  struct timespec ts;
  ::clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t z = (static_cast<uint64_t>(ts.tv_nsec) ^ (static_cast<uint64_t>(::getpid()) << 32)) +
               counter.fetch_add(1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  static const char kChars[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  HostString name = path + ".tmp.";
  for (int i = 0; i < 6; ++i, z /= 62) name += kChars[z % 62];
  return name;
}

// An unnamed file in `dir` (mode 0666 less the umask), or -1 where the filesystem or the kernel
// has no O_TMPFILE, or /proc (needed to link it) is not mounted.
int open_unnamed(const HostString& dir) {
  if (::access("/proc/self/fd", X_OK) != 0) return -1;
  return ::open(dir.c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0666);
}

// A new file under a fresh temporary name next to `target` (mode 0666 less the umask).
int open_named(const HostString& target, HostString* tmp, const char* fn) {
  for (int i = 0; i < kNameTries; ++i) {
    *tmp = temp_name(target);
    const int fd = ::open(tmp->c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0666);
    if (fd >= 0) return fd;
    if (errno != EEXIST) break;
  }
  const int err = errno;
  tmp->clear();
  fail(KVP_ERR_IO, "%s: cannot create a temporary file next to '%s': %s", fn, target.c_str(), std::strerror(err));
}

}  // namespace

AtomicFile::AtomicFile(const char* path, const char* function, Sync sync)
    : target_(resolve_target(path, function)), function_(function), sync_(sync) {
  struct stat old;
  const bool replaces = ::stat(target_.c_str(), &old) == 0;
  fd_ = open_unnamed(directory_of(target_));
  if (fd_ < 0) fd_ = open_named(target_, &tmp_, function);
  if (replaces && ::fchmod(fd_, old.st_mode & 07777) != 0) {
    const int err = errno;
    discard();
    fail(KVP_ERR_IO, "%s: cannot give the new '%s' the mode of the old one: %s", function, target_.c_str(),
         std::strerror(err));
  }
}

AtomicFile::~AtomicFile() { discard(); }

void AtomicFile::discard() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!renamed_ && !tmp_.empty()) ::unlink(tmp_.c_str());
}

void AtomicFile::write(const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail(KVP_ERR_IO, "%s: writing the new '%s' failed: %s", function_, target_.c_str(), std::strerror(errno));
    }
    p += w;
    n -= static_cast<size_t>(w);
    wrote(static_cast<size_t>(w));
  }
}

void AtomicFile::write_at(uint64_t off, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    const ssize_t w = ::pwrite(fd_, p, n, static_cast<off_t>(off));
    if (w < 0) {
      if (errno == EINTR) continue;
      fail(KVP_ERR_IO, "%s: writing the new '%s' failed: %s", function_, target_.c_str(), std::strerror(errno));
    }
    p += w;
    off += static_cast<uint64_t>(w);
    n -= static_cast<size_t>(w);
    wrote(static_cast<size_t>(w));
  }
}

void AtomicFile::wrote(size_t n) noexcept {
#ifdef SYNC_FILE_RANGE_WRITE
  if (sync_ != Sync::kSynced || unsent_.fetch_add(n, std::memory_order_relaxed) + n < kWriteBackBytes) return;
  if (unsent_.exchange(0, std::memory_order_relaxed) < kWriteBackBytes) return;  // another thread started it
  // Starts writing every dirty page not under writeback yet, without waiting; a failure shows
  // in commit()'s fsync.
  (void)::sync_file_range(fd_, 0, 0, SYNC_FILE_RANGE_WRITE);
#else
  (void)n;
#endif
}

// Gives the unnamed file a temporary name (linkat cannot replace the target itself).
void AtomicFile::link_unnamed() {
  char self[64];
  std::snprintf(self, sizeof self, "/proc/self/fd/%d", fd_);
  for (int i = 0; i < kNameTries; ++i) {
    HostString name = temp_name(target_);
    if (::linkat(AT_FDCWD, self, AT_FDCWD, name.c_str(), AT_SYMLINK_FOLLOW) == 0) {
      tmp_ = std::move(name);
      return;
    }
    if (errno != EEXIST) break;
  }
  fail(KVP_ERR_IO, "%s: cannot link the new file next to '%s': %s", function_, target_.c_str(), std::strerror(errno));
}

void AtomicFile::commit() {
  const Sync sync = sync_;
  const char* fn = function_;
  const char* target = target_.c_str();
  if (sync == Sync::kSynced && ::fsync(fd_) != 0) fail(KVP_ERR_IO, "%s: fsync of the new '%s' failed: %s", fn, target, std::strerror(errno));
  // Link and rename back to back: a kill between them is the only way a (complete) temporary
  // file can be left with an unnamed file.
  if (tmp_.empty()) link_unnamed();
  if (::rename(tmp_.c_str(), target) != 0)
    fail(KVP_ERR_IO, "%s: renaming '%s' to '%s' failed: %s", fn, tmp_.c_str(), target, std::strerror(errno));
  renamed_ = true;
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail(KVP_ERR_IO, "%s: closing '%s' failed: %s", fn, target, std::strerror(errno));
  if (sync == Sync::kUnsynced) return;
  const HostString dir = directory_of(target_);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0)
    fail(KVP_ERR_IO, "%s: '%s' was written but its directory '%s' could not be opened for fsync: %s", fn, target,
         dir.c_str(), std::strerror(errno));
  const int rc = ::fsync(dfd);
  const int err = errno;
  ::close(dfd);
  if (rc != 0) fail(KVP_ERR_IO, "%s: '%s' was written but fsync of its directory failed: %s", fn, target, std::strerror(err));
}

}  // namespace kvp::detail
