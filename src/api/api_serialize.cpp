// kvp_serialize* / kvp_deserialize* / kvp_serialized_* shims: adapt buffers, callbacks and files
// to the core's Sink/Source and run the core inside the API guard.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "core/cache.hpp"
#include "core/serialize.hpp"
#include "kvpages/serialize.h"
#include "util/error.hpp"
#include "util/handle.hpp"
#include "util/options.hpp"

using namespace kvp::detail;
using namespace kvp::detail::ser;

namespace {

using u64 = unsigned long long;

class BufferSink : public Sink {
 public:
  explicit BufferSink(uint8_t* dst) : dst_(dst) {}
  uint8_t* reserve(size_t) override { return dst_ + pos_; }
  void commit(size_t n) override { pos_ += n; }
  uint8_t* contiguous() override { return dst_ + pos_; }
  size_t written() const { return pos_; }

 private:
  uint8_t* dst_;
  size_t pos_ = 0;
};

// Stages each piece in a host buffer, then hands it to a consumer.
class StagingSink : public Sink {
 public:
  uint8_t* reserve(size_t n) override {
    if (buf_.size() < n) buf_.resize(n);
    return buf_.data();
  }
  void commit(size_t n) override {
    if (n != 0) emit(buf_.data(), n);
  }

 protected:
  virtual void emit(const uint8_t* p, size_t n) = 0;

 private:
  std::vector<uint8_t> buf_;
};

class WriterSink : public StagingSink {
 public:
  WriterSink(kvp_write_fn fn, void* ud, const char* function) : fn_(fn), ud_(ud), function_(function) {}

 protected:
  void emit(const uint8_t* p, size_t n) override {
    const int32_t rc = fn_(p, n, ud_);
    if (rc != 0)
      fail(KVP_ERR_IO, "%s: the writer callback returned %d after %llu bytes", function_, rc, (u64)written_);
    written_ += n;
  }

 private:
  kvp_write_fn fn_;
  void* ud_;
  const char* function_;
  uint64_t written_ = 0;
};

class FdSink : public StagingSink {
 public:
  FdSink(int fd, const std::string& path, const char* function) : fd_(fd), path_(path), function_(function) {}

 protected:
  void emit(const uint8_t* p, size_t n) override {
    while (n > 0) {
      const ssize_t w = ::write(fd_, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        fail(KVP_ERR_IO, "%s: writing '%s' failed: %s", function_, path_.c_str(), std::strerror(errno));
      }
      p += w;
      n -= static_cast<size_t>(w);
    }
  }

 private:
  int fd_;
  const std::string& path_;
  const char* function_;
};

class ReaderSource : public Source {
 public:
  ReaderSource(kvp_read_fn fn, void* ud, const char* function) : fn_(fn), ud_(ud), function_(function) {}
  void read(void* dst, size_t n, const char* what) override {
    auto* d = static_cast<uint8_t*>(dst);
    size_t done = 0;
    while (done < n) {
      size_t got = 0;
      const int32_t rc = fn_(d + done, n - done, &got, ud_);
      if (rc != 0)
        fail(KVP_ERR_IO, "%s: the reader callback returned %d at offset %llu", function_, rc, (u64)(pos + done));
      if (got > n - done)
        fail(KVP_ERR_IO, "%s: the reader callback reported %zu bytes for a %zu-byte request", function_, got,
             n - done);
      if (got == 0)
        fail(KVP_ERR_FORMAT_TRUNCATED, "%s: truncated input: the stream ended at offset %llu, inside %s (%zu more "
             "bytes needed)", function_, (u64)(pos + done), what, n - done);
      done += got;
    }
    pos += n;
  }

 private:
  kvp_read_fn fn_;
  void* ud_;
  const char* function_;
};

class FileSource : public Source {
 public:
  FileSource(const char* path, const char* function) : path_(path), function_(function) {
    fd_ = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) fail(KVP_ERR_IO, "%s: cannot open '%s': %s", function, path, std::strerror(errno));
  }
  ~FileSource() override { ::close(fd_); }
  FileSource(const FileSource&) = delete;
  FileSource& operator=(const FileSource&) = delete;
  void read(void* dst, size_t n, const char* what) override {
    const size_t got = read_some(dst, n);
    if (got < n)
      fail(KVP_ERR_FORMAT_TRUNCATED, "%s: truncated input: '%s' ends at offset %llu, inside %s (%zu more bytes "
           "needed)", function_, path_, (u64)(pos + got), what, n - got);
    pos += n;
  }
  void expect_end(const char* function) override {
    uint8_t b;
    if (read_some(&b, 1) != 0)
      fail(KVP_ERR_FORMAT_CORRUPT, "%s: '%s' has trailing bytes after the end of the blob (%llu bytes); the file "
           "must be exactly one blob", function, path_, (u64)pos);
  }

 private:
  size_t read_some(void* dst, size_t n) {
    auto* d = static_cast<uint8_t*>(dst);
    size_t done = 0;
    while (done < n) {
      const ssize_t r = ::read(fd_, d + done, n - done);
      if (r < 0) {
        if (errno == EINTR) continue;
        fail(KVP_ERR_IO, "%s: reading '%s' failed: %s", function_, path_, std::strerror(errno));
      }
      if (r == 0) break;
      done += static_cast<size_t>(r);
    }
    return done;
  }
  int fd_ = -1;
  const char* path_;
  const char* function_;
};

void require_src(const void* src, size_t len, const char* function) {
  if (src == nullptr && len != 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: src is NULL but len is %zu", function, len);
}

void require_path(const char* path, const char* function) {
  if (path == nullptr) fail(KVP_ERR_INVALID_ARGUMENT, "%s: 'path' must not be NULL", function);
  if (path[0] == '\0') fail(KVP_ERR_INVALID_ARGUMENT, "%s: 'path' must not be empty", function);
}

// Writes the blob to a temporary file next to `path`, syncs it, renames it over `path` and syncs
// the directory. The temporary file is removed on any failure.
void write_file_atomically(const Cache& cache, const Selection& sel, const char* path, const char* function) {
  const std::string target(path);
  const size_t slash = target.rfind('/');
  const std::string dir = slash == std::string::npos ? std::string(".") : (slash == 0 ? std::string("/") : target.substr(0, slash));
  std::string tmp = target + ".tmp.XXXXXX";
  std::vector<char> tmpl(tmp.begin(), tmp.end());
  tmpl.push_back('\0');
  const int fd = ::mkostemp(tmpl.data(), O_CLOEXEC);
  if (fd < 0) fail(KVP_ERR_IO, "%s: cannot create a temporary file next to '%s': %s", function, path, std::strerror(errno));
  tmp.assign(tmpl.data());
  bool fd_open = true;
  try {
    (void)::fchmod(fd, 0644);
    FdSink sink(fd, tmp, function);
    serialize(cache, sel, sink, function);
    if (::fsync(fd) != 0) fail(KVP_ERR_IO, "%s: fsync of '%s' failed: %s", function, tmp.c_str(), std::strerror(errno));
    fd_open = false;
    if (::close(fd) != 0) fail(KVP_ERR_IO, "%s: closing '%s' failed: %s", function, tmp.c_str(), std::strerror(errno));
    if (::rename(tmp.c_str(), path) != 0)
      fail(KVP_ERR_IO, "%s: renaming '%s' to '%s' failed: %s", function, tmp.c_str(), path, std::strerror(errno));
  } catch (...) {
    if (fd_open) ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0)
    fail(KVP_ERR_IO, "%s: '%s' was written but its directory '%s' could not be opened for fsync: %s", function, path,
         dir.c_str(), std::strerror(errno));
  const int rc = ::fsync(dfd);
  const int err = errno;
  ::close(dfd);
  if (rc != 0)
    fail(KVP_ERR_IO, "%s: '%s' was written but fsync of its directory failed: %s", function, path, std::strerror(err));
}

}  // namespace

extern "C" {

KVP_API kvp_status kvp_serialize_options_init(kvp_serialize_options* opts, uint32_t struct_size) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(opts);
  init_versioned(opts, struct_size, sizeof(kvp_serialize_options), KVP_SERIALIZE_OPTIONS_VERSION,
                 "kvp_serialize_options_init", "kvp_serialize_options");
  KVP_API_END;
}

KVP_API kvp_status kvp_deserialize_options_init(kvp_deserialize_options* opts, uint32_t struct_size) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(opts);
  init_versioned(opts, struct_size, sizeof(kvp_deserialize_options), KVP_DESERIALIZE_OPTIONS_VERSION,
                 "kvp_deserialize_options_init", "kvp_deserialize_options");
  KVP_API_END;
}

KVP_API kvp_status kvp_serialized_size(const kvp_cache* cache, const kvp_serialize_options* opts, size_t* out) {
  KVP_API_BEGIN;
  const Cache& c = cache_from(cache, "kvp_serialized_size");
  KVP_REQUIRE_NOT_NULL(out);
  const Selection sel = read_selection(c, opts, "kvp_serialized_size");
  *out = static_cast<size_t>(geometry_of(c, sel, "kvp_serialized_size").total_bytes);
  KVP_API_END;
}

KVP_API kvp_status kvp_serialize(const kvp_cache* cache, const kvp_serialize_options* opts, void* dst, size_t cap,
                                 size_t* written_out) {
  KVP_API_BEGIN;
  const char* fn = "kvp_serialize";
  const Cache& c = cache_from(cache, fn);
  KVP_REQUIRE_NOT_NULL(written_out);
  if (dst == nullptr && cap != 0) fail(KVP_ERR_INVALID_ARGUMENT, "%s: dst is NULL but cap is %zu", fn, cap);
  const Selection sel = read_selection(c, opts, fn);
  const size_t need = static_cast<size_t>(geometry_of(c, sel, fn).total_bytes);
  if (cap < need) {
    *written_out = need;
    fail(KVP_ERR_BUFFER_TOO_SMALL, "%s: the blob needs %zu bytes but cap is %zu", fn, need, cap);
  }
  BufferSink sink(static_cast<uint8_t*>(dst));
  serialize(c, sel, sink, fn);
  *written_out = sink.written();
  KVP_API_END;
}

KVP_API kvp_status kvp_serialize_to_writer(const kvp_cache* cache, const kvp_serialize_options* opts, kvp_write_fn fn,
                                           void* user_data) {
  KVP_API_BEGIN;
  const Cache& c = cache_from(cache, "kvp_serialize_to_writer");
  KVP_REQUIRE_NOT_NULL(fn);
  const Selection sel = read_selection(c, opts, "kvp_serialize_to_writer");
  WriterSink sink(fn, user_data, "kvp_serialize_to_writer");
  serialize(c, sel, sink, "kvp_serialize_to_writer");
  KVP_API_END;
}

KVP_API kvp_status kvp_serialize_to_file(const kvp_cache* cache, const kvp_serialize_options* opts, const char* path) {
  KVP_API_BEGIN;
  const Cache& c = cache_from(cache, "kvp_serialize_to_file");
  require_path(path, "kvp_serialize_to_file");
  const Selection sel = read_selection(c, opts, "kvp_serialize_to_file");
  c.check_healthy("kvp_serialize_to_file");
  write_file_atomically(c, sel, path, "kvp_serialize_to_file");
  KVP_API_END;
}

KVP_API kvp_status kvp_deserialize_new(const void* src, size_t len, const kvp_deserialize_options* opts,
                                       kvp_cache** out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  *out = nullptr;
  require_src(src, len, "kvp_deserialize_new");
  BufferSource s(src, len, "kvp_deserialize_new");
  *out = deserialize_new(s, opts, "kvp_deserialize_new");
  KVP_API_END;
}

KVP_API kvp_status kvp_deserialize_new_from_reader(kvp_read_fn fn, void* user_data, const kvp_deserialize_options* opts,
                                                   kvp_cache** out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  *out = nullptr;
  KVP_REQUIRE_NOT_NULL(fn);
  ReaderSource s(fn, user_data, "kvp_deserialize_new_from_reader");
  *out = deserialize_new(s, opts, "kvp_deserialize_new_from_reader");
  KVP_API_END;
}

KVP_API kvp_status kvp_deserialize_new_from_file(const char* path, const kvp_deserialize_options* opts,
                                                 kvp_cache** out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  *out = nullptr;
  require_path(path, "kvp_deserialize_new_from_file");
  FileSource s(path, "kvp_deserialize_new_from_file");
  *out = deserialize_new(s, opts, "kvp_deserialize_new_from_file");
  KVP_API_END;
}

KVP_API kvp_status kvp_deserialize_into(kvp_cache* cache, const void* src, size_t len, const int32_t* dst_page_ids,
                                        uint32_t num_dst_page_ids) {
  KVP_API_BEGIN;
  Cache& c = cache_from(cache, "kvp_deserialize_into");
  require_src(src, len, "kvp_deserialize_into");
  BufferSource s(src, len, "kvp_deserialize_into");
  deserialize_into(c, s, dst_page_ids, num_dst_page_ids, "kvp_deserialize_into");
  KVP_API_END;
}

KVP_API kvp_status kvp_deserialize_into_from_reader(kvp_cache* cache, kvp_read_fn fn, void* user_data,
                                                    const int32_t* dst_page_ids, uint32_t num_dst_page_ids) {
  KVP_API_BEGIN;
  Cache& c = cache_from(cache, "kvp_deserialize_into_from_reader");
  KVP_REQUIRE_NOT_NULL(fn);
  ReaderSource s(fn, user_data, "kvp_deserialize_into_from_reader");
  deserialize_into(c, s, dst_page_ids, num_dst_page_ids, "kvp_deserialize_into_from_reader");
  KVP_API_END;
}

KVP_API kvp_status kvp_deserialize_into_from_file(kvp_cache* cache, const char* path, const int32_t* dst_page_ids,
                                                  uint32_t num_dst_page_ids) {
  KVP_API_BEGIN;
  Cache& c = cache_from(cache, "kvp_deserialize_into_from_file");
  require_path(path, "kvp_deserialize_into_from_file");
  FileSource s(path, "kvp_deserialize_into_from_file");
  deserialize_into(c, s, dst_page_ids, num_dst_page_ids, "kvp_deserialize_into_from_file");
  KVP_API_END;
}

KVP_API kvp_status kvp_serialized_inspect(const void* src, size_t len, uint32_t flags, kvp_serialized_info* out) {
  KVP_API_BEGIN;
  KVP_REQUIRE_NOT_NULL(out);
  require_src(src, len, "kvp_serialized_inspect");
  if ((flags & ~KVP_INSPECT_VERIFY) != 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "kvp_serialized_inspect: unknown flags 0x%x", flags);
  BufferSource s(src, len, "kvp_serialized_inspect");
  inspect(s, (flags & KVP_INSPECT_VERIFY) != 0, out, "kvp_serialized_inspect");
  KVP_API_END;
}

KVP_API kvp_status kvp_serialized_inspect_file(const char* path, uint32_t flags, kvp_serialized_info* out) {
  KVP_API_BEGIN;
  require_path(path, "kvp_serialized_inspect_file");
  KVP_REQUIRE_NOT_NULL(out);
  if ((flags & ~KVP_INSPECT_VERIFY) != 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "kvp_serialized_inspect_file: unknown flags 0x%x", flags);
  FileSource s(path, "kvp_serialized_inspect_file");
  inspect(s, (flags & KVP_INSPECT_VERIFY) != 0, out, "kvp_serialized_inspect_file");
  KVP_API_END;
}

}  // extern "C"
