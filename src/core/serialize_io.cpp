#include "core/serialize_io.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "util/error.hpp"

namespace kvp::detail::ser {

using u64 = unsigned long long;  // for printf

// ---- sinks -------------------------------------------------------------------------------------

uint8_t* StagingSink::reserve(size_t n) {
  if (buf_.size() < n) buf_.resize(n);
  return buf_.data();
}

void StagingSink::commit(size_t n) {
  if (n != 0) emit(buf_.data(), n);
}

void WriterSink::emit(const uint8_t* p, size_t n) {
  const int32_t rc = fn_(p, n, ud_);
  if (rc != 0) fail(KVP_ERR_IO, "%s: the writer callback returned %d after %llu bytes", function_, rc, (u64)written_);
  written_ += n;
}

// ---- sources -----------------------------------------------------------------------------------

void Source::read_growing(HostVector<uint8_t>& buf, size_t n, const char* what) {
  constexpr size_t kStep = 1 << 20;
  size_t done = 0;
  while (done < n) {
    const size_t k = std::min(kStep, n - done);
    if (buf.size() < done + k) buf.resize(done + k);
    read(buf.data() + done, k, what);
    done += k;
  }
}

const uint8_t* Source::take(size_t n, HostVector<uint8_t>& buf, const char* what) {
  if (const uint8_t* p = view(n, what)) return p;
  read_growing(buf, n, what);
  return buf.data();
}

void BufferSource::need(size_t n, const char* what) const {
  if (n_ - pos < n)
    fail(KVP_ERR_FORMAT_TRUNCATED, "%s: truncated input: %s needs %zu bytes at offset %llu but only %llu remain",
         function_, what, n, (u64)pos, (u64)(n_ - pos));
}

void BufferSource::read(void* dst, size_t n, const char* what) {
  need(n, what);
  if (n != 0) std::memcpy(dst, p_ + pos, n);
  pos += n;
}

const uint8_t* BufferSource::view(size_t n, const char* what) {
  need(n, what);
  const uint8_t* p = p_ + pos;
  pos += n;
  return p;
}

void BufferSource::expect_end(const char* function) {
  if (pos != n_)
    fail(KVP_ERR_FORMAT_CORRUPT, "%s: %llu trailing bytes after the end of the blob (%llu bytes); the input must be "
         "exactly one blob", function, (u64)(n_ - pos), (u64)pos);
}

void ReaderSource::read(void* dst, size_t n, const char* what) {
  auto* d = static_cast<uint8_t*>(dst);
  size_t done = 0;
  while (done < n) {
    size_t got = 0;
    const int32_t rc = fn_(d + done, n - done, &got, ud_);
    if (rc != 0)
      fail(KVP_ERR_IO, "%s: the reader callback returned %d at offset %llu", function_, rc, (u64)(pos + done));
    if (got > n - done)
      fail(KVP_ERR_IO, "%s: the reader callback reported %zu bytes for a %zu-byte request", function_, got, n - done);
    if (got == 0)
      fail(KVP_ERR_FORMAT_TRUNCATED, "%s: truncated input: the stream ended at offset %llu, inside %s (%zu more "
           "bytes needed)", function_, (u64)(pos + done), what, n - done);
    done += got;
  }
  pos += n;
}

FileSource::FileSource(const char* path, const char* function) : path_(path), function_(function) {
  fd_ = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) fail(KVP_ERR_IO, "%s: cannot open '%s': %s", function, path, std::strerror(errno));
}

FileSource::~FileSource() { ::close(fd_); }

void FileSource::read(void* dst, size_t n, const char* what) {
  read_at(pos, dst, n, what);
  pos += n;
}

void FileSource::read_at(uint64_t off, void* dst, size_t n, const char* what) {
  const size_t got = read_some(off, dst, n);
  if (got < n)
    fail(KVP_ERR_FORMAT_TRUNCATED, "%s: truncated input: '%s' ends at offset %llu, inside %s (%zu more bytes "
         "needed)", function_, path_, (u64)(off + got), what, n - got);
}

void FileSource::expect_end(const char* function) {
  uint8_t b;
  if (read_some(pos, &b, 1) != 0)
    fail(KVP_ERR_FORMAT_CORRUPT, "%s: '%s' has trailing bytes after the end of the blob (%llu bytes); the file "
         "must be exactly one blob", function, path_, (u64)pos);
}

bool FileSource::known_size(uint64_t* size) const {
  struct stat st;
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) return false;
  *size = static_cast<uint64_t>(st.st_size);
  return true;
}

size_t FileSource::read_some(uint64_t off, void* dst, size_t n) {
  auto* d = static_cast<uint8_t*>(dst);
  size_t done = 0;
  while (done < n) {
    const ssize_t r = ::pread(fd_, d + done, n - done, static_cast<off_t>(off + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      fail(KVP_ERR_IO, "%s: reading '%s' failed: %s", function_, path_, std::strerror(errno));
    }
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  return done;
}

}  // namespace kvp::detail::ser
