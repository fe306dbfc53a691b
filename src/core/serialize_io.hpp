// Where a serialized blob goes and comes from: sinks (a caller buffer, a writer callback, a file
// replaced atomically) and sources (a buffer, a reader callback, a file).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvpages/serialize.h"
#include "util/atomic_file.hpp"
#include "util/memory.hpp"

namespace kvp::detail::ser {

// Output with random access (a file): n bytes at blob offset `off`, from any thread and in any
// order, straight from the caller's memory (no staging).
class RandomSink {
 public:
  virtual void write_at(uint64_t off, const uint8_t* p, size_t n) = 0;

 protected:
  ~RandomSink() = default;
};

// Output: the serializer asks for space, fills it, then commits it.
class Sink {
 public:
  virtual ~Sink() = default;
  virtual uint8_t* reserve(size_t n) = 0;
  virtual void commit(size_t n) = 0;
  // Where the rest of the blob will land when it goes to one caller buffer (random access
  // allowed: fill, then commit the whole range); nullptr for streaming sinks.
  virtual uint8_t* contiguous() { return nullptr; }
  // The sink's random access, for what follows the bytes committed so far (nullptr: append only).
  virtual RandomSink* random_access() { return nullptr; }
};

// A caller buffer large enough for the whole blob.
class BufferSink final : public Sink {
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

// Stages each piece in a host buffer, then hands it on (emit).
class StagingSink : public Sink {
 public:
  explicit StagingSink(const HostAllocator& alloc) : buf_(alloc) {}
  uint8_t* reserve(size_t n) override;
  void commit(size_t n) override;

 protected:
  virtual void emit(const uint8_t* p, size_t n) = 0;

 private:
  HostVector<uint8_t> buf_;
};

// A kvp_write_fn callback; a non-zero return is KVP_ERR_IO.
class WriterSink final : public StagingSink {
 public:
  WriterSink(kvp_write_fn fn, void* user_data, const HostAllocator& alloc, const char* function)
      : StagingSink(alloc), fn_(fn), ud_(user_data), function_(function) {}

 protected:
  void emit(const uint8_t* p, size_t n) override;

 private:
  kvp_write_fn fn_;
  void* ud_;
  const char* function_;
  uint64_t written_ = 0;
};

// The temporary file of an atomic replacement: header and table staged and appended, the payload
// written in place by write_at (the file is renamed over the target only once it is whole).
class FileSink final : public StagingSink, public RandomSink {
 public:
  FileSink(AtomicFile& file, const HostAllocator& alloc) : StagingSink(alloc), file_(file) {}
  RandomSink* random_access() override { return this; }
  void write_at(uint64_t off, const uint8_t* p, size_t n) override { file_.write_at(off, p, n); }

 protected:
  void emit(const uint8_t* p, size_t n) override { file_.write(p, n); }

 private:
  AtomicFile& file_;
};

// Input with random access (a regular file): copies exactly the n bytes at blob offset `off` to
// `dst` (throws FORMAT_TRUNCATED when the input ends before them), from any thread.
class RandomSource {
 public:
  virtual void read_at(uint64_t off, void* dst, size_t n, const char* what) = 0;

 protected:
  ~RandomSource() = default;
};

// Input. read() copies exactly n bytes or throws FORMAT_TRUNCATED; view() returns a pointer to
// the next n bytes without copying when the source is in memory (nullptr otherwise).
class Source {
 public:
  virtual ~Source() = default;
  virtual void read(void* dst, size_t n, const char* what) = 0;
  virtual const uint8_t* view(size_t n, const char* what) {
    (void)n;
    (void)what;
    return nullptr;
  }
  // Called after the blob: sources that must hold exactly one blob throw FORMAT_CORRUPT when
  // more input follows.
  virtual void expect_end(const char* function) { (void)function; }
  // True when view() always succeeds for data that is present (the input is in memory).
  virtual bool in_memory() const { return false; }
  // The size of the whole input when it is known before reading (a buffer, a regular file).
  virtual bool known_size(uint64_t* size) const {
    (void)size;
    return false;
  }
  // Random access to the input (nullptr: sequential only). Who reads through it moves `pos` past
  // what it read.
  virtual RandomSource* random_access() { return nullptr; }
  // The next n bytes, viewed in place or read into `buf` (valid until the next call with `buf`).
  // Reading grows `buf` as the data arrives (at most 1 MiB ahead of what was received), so a
  // header that declares huge chunks cannot make us allocate them before the bytes exist.
  const uint8_t* take(size_t n, HostVector<uint8_t>& buf, const char* what);
  void read_growing(HostVector<uint8_t>& buf, size_t n, const char* what);
  uint64_t pos = 0;  // bytes consumed so far
};

class BufferSource final : public Source {
 public:
  BufferSource(const void* p, size_t n, const char* function)
      : p_(static_cast<const uint8_t*>(p)), n_(n), function_(function) {}
  void read(void* dst, size_t n, const char* what) override;
  const uint8_t* view(size_t n, const char* what) override;
  void expect_end(const char* function) override;
  bool in_memory() const override { return true; }
  bool known_size(uint64_t* size) const override {
    *size = n_;
    return true;
  }

 private:
  void need(size_t n, const char* what) const;
  const uint8_t* p_;
  size_t n_;
  const char* function_;
};

// A kvp_read_fn callback; a non-zero return is KVP_ERR_IO, 0 bytes the end of the input.
class ReaderSource final : public Source {
 public:
  ReaderSource(kvp_read_fn fn, void* user_data, const char* function) : fn_(fn), ud_(user_data), function_(function) {}
  void read(void* dst, size_t n, const char* what) override;

 private:
  kvp_read_fn fn_;
  void* ud_;
  const char* function_;
};

// A file that must hold exactly one blob, read with pread(2) (the file offset is never used).
class FileSource final : public Source, public RandomSource {
 public:
  FileSource(const char* path, const char* function);
  ~FileSource() override;
  FileSource(const FileSource&) = delete;
  FileSource& operator=(const FileSource&) = delete;
  void read(void* dst, size_t n, const char* what) override;
  void expect_end(const char* function) override;
  bool known_size(uint64_t* size) const override;
  RandomSource* random_access() override { return this; }
  void read_at(uint64_t off, void* dst, size_t n, const char* what) override;

 private:
  // Up to n bytes at offset `off`: fewer only at the end of the file.
  size_t read_some(uint64_t off, void* dst, size_t n);
  int fd_ = -1;
  const char* path_;
  const char* function_;
};

}  // namespace kvp::detail::ser
