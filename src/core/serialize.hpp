// Serialized cache format "KVPS" 1.0 (docs/serialization-format.md): writer, reader, inspector.
// The API shims (src/api/api_serialize.cpp) adapt buffers, callbacks and files to Sink/Source.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/cache.hpp"
#include "core/config.hpp"
#include "kvpages/metadata.h"
#include "kvpages/serialize.h"

namespace kvp::detail::ser {

constexpr uint32_t kFormatMajor = KVP_FORMAT_MAJOR;
constexpr uint32_t kFormatMinor = KVP_FORMAT_MINOR;
constexpr uint32_t kHeaderSizeV1 = 192;      // bytes of a 1.0 header, checksum included
constexpr uint32_t kMaxHeaderSize = 65536;   // readers refuse larger headers
constexpr uint64_t kSeedHeader = 0;          // XXH3 seed of the header checksum
constexpr uint64_t kSeedTable = 1;           // ... of the page-id table checksum
constexpr uint64_t kSeedChunk0 = 2;          // chunk i uses seed kSeedChunk0 + i
constexpr uint64_t kRequiredFlagsMask = 0xFFFFFFFFull;  // low 32 flag bits: reader must know them

// Byte sizes of one blob, all checked for overflow.
struct Geometry {
  uint64_t header_size = kHeaderSizeV1;
  uint64_t num_layers = 0;
  uint64_t num_stored = 0;   // pages carried (per layer)
  uint64_t page_bytes = 0;   // bytes of one page of one layer
  uint64_t chunk_bytes = 0;
  uint64_t payload_bytes = 0;
  uint64_t num_chunks = 0;
  uint64_t table_bytes = 0;  // page ids, checksum excluded
  uint64_t total_bytes = 0;
  uint64_t chunk_len(uint64_t i) const {
    const uint64_t off = i * chunk_bytes;
    return payload_bytes - off < chunk_bytes ? payload_bytes - off : chunk_bytes;
  }
};
// Throws `code` (naming `function`) when a size overflows 64 bits or size_t.
Geometry make_geometry(uint64_t header_size, uint64_t num_layers, uint64_t num_stored, uint64_t page_bytes,
                       uint64_t chunk_bytes, kvp_status code, const char* function);

// A checked selection of pages to write.
struct Selection {
  std::vector<int32_t> ids;
  uint64_t chunk_bytes = KVP_SERIALIZE_DEFAULT_CHUNK_BYTES;
};
Selection read_selection(const Cache& cache, const kvp_serialize_options* opts, const char* function);
Geometry geometry_of(const Cache& cache, const Selection& sel, const char* function);

// Output: the serializer asks for space, fills it, then commits it.
class Sink {
 public:
  virtual ~Sink() = default;
  virtual uint8_t* reserve(size_t n) = 0;
  virtual void commit(size_t n) = 0;
  // Where the rest of the blob will land when it goes to one caller buffer (random access
  // allowed: fill, then commit the whole range); nullptr for streaming sinks.
  virtual uint8_t* contiguous() { return nullptr; }
};
void serialize(const Cache& cache, const Selection& sel, Sink& sink, const char* function);

// Input. read() copies exactly n bytes or throws FORMAT_TRUNCATED; view() returns a pointer to
// the next n bytes without copying when the source is in memory (nullptr otherwise).
class Source {
 public:
  virtual ~Source() = default;
  virtual void read(void* dst, size_t n, const char* what) = 0;
  virtual const uint8_t* view(size_t n, const char* what) { return nullptr; }
  // Called after the blob: sources that must hold exactly one blob throw FORMAT_CORRUPT when
  // more input follows.
  virtual void expect_end(const char* function) {}
  // True when view() always succeeds for data that is present (the input is in memory).
  virtual bool in_memory() const { return false; }
  uint64_t pos = 0;  // bytes consumed so far
};

class BufferSource : public Source {
 public:
  BufferSource(const void* p, size_t n, const char* function)
      : p_(static_cast<const uint8_t*>(p)), n_(n), function_(function) {}
  void read(void* dst, size_t n, const char* what) override;
  const uint8_t* view(size_t n, const char* what) override;
  void expect_end(const char* function) override;
  bool in_memory() const override { return true; }

 private:
  void need(size_t n, const char* what) const;
  const uint8_t* p_;
  size_t n_;
  const char* function_;
};

// Everything the header and page table say, after all checks.
struct Parsed {
  uint32_t major = 0, minor = 0, writer_version = 0;
  uint64_t flags = 0, header_checksum = 0;
  kvp_config config{};
  Layout layout{};
  Geometry geo{};
  std::vector<int32_t> ids;  // filled by read_table()
};
Parsed read_header(Source& src, const char* function);
void read_table(Source& src, Parsed& p, const char* function);

// Operations on a source positioned at the start of a blob.
kvp_cache* deserialize_new(Source& src, const kvp_deserialize_options* opts, const char* function);
void deserialize_into(Cache& cache, Source& src, const int32_t* dst_ids, uint32_t num_dst_ids,
                      const char* function);
// verify = false: header only. Fills `out` (as the public struct, struct_size honoured).
void inspect(Source& src, bool verify, kvp_serialized_info* out, const char* function);

}  // namespace kvp::detail::ser

// ---- JSON (src/core/json.cpp) -------------------------------------------------------------------
#include <string>

namespace kvp::detail::json {
// Python repr() of a finite double: shortest round-trip digits, fixed notation for decimal
// exponents in [-4, 16), else d.ddde±XX; integral values keep ".0".
std::string py_float_repr(double v);
// The reference's to_json() of a config record (not validated; version/dtype must have names).
std::string config_to_json(const kvp_config& c, const char* function);
// The reference's from_json(): unknown keys ignored, required model fields, no validation.
kvp_config config_from_json(const char* text, size_t len, const char* function);
// Runtime metadata with real integer arrays (host arrays only).
std::string metadata_to_json(const kvp_metadata* md, const char* function);
kvp_metadata* metadata_from_json(const char* text, size_t len, const char* function);
}  // namespace kvp::detail::json
