#include "util/atomic_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "util/error.hpp"

namespace kvp::detail {

AtomicFile::AtomicFile(const char* path, const char* function) : path_(path), tmp_(path), function_(function) {
  tmp_ += ".tmp.XXXXXX";
  fd_ = ::mkostemp(tmp_.data(), O_CLOEXEC);
  if (fd_ < 0)
    fail(KVP_ERR_IO, "%s: cannot create a temporary file next to '%s': %s", function, path, std::strerror(errno));
  (void)::fchmod(fd_, 0644);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!renamed_) ::unlink(tmp_.c_str());
}

void AtomicFile::write(const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail(KVP_ERR_IO, "%s: writing '%s' failed: %s", function_, tmp_.c_str(), std::strerror(errno));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void AtomicFile::commit() {
  const char* fn = function_;
  if (::fsync(fd_) != 0) fail(KVP_ERR_IO, "%s: fsync of '%s' failed: %s", fn, tmp_.c_str(), std::strerror(errno));
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail(KVP_ERR_IO, "%s: closing '%s' failed: %s", fn, tmp_.c_str(), std::strerror(errno));
  if (::rename(tmp_.c_str(), path_.c_str()) != 0)
    fail(KVP_ERR_IO, "%s: renaming '%s' to '%s' failed: %s", fn, tmp_.c_str(), path_.c_str(), std::strerror(errno));
  renamed_ = true;
  const size_t slash = path_.rfind('/');
  HostString dir = slash == HostString::npos ? HostString(".") : slash == 0 ? HostString("/") : path_.substr(0, slash);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0)
    fail(KVP_ERR_IO, "%s: '%s' was written but its directory '%s' could not be opened for fsync: %s", fn,
         path_.c_str(), dir.c_str(), std::strerror(errno));
  const int rc = ::fsync(dfd);
  const int err = errno;
  ::close(dfd);
  if (rc != 0)
    fail(KVP_ERR_IO, "%s: '%s' was written but fsync of its directory failed: %s", fn, path_.c_str(), std::strerror(err));
}

}  // namespace kvp::detail
