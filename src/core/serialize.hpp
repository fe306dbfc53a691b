// Serialization of caches (kvp_serialize* / kvp_deserialize* / kvp_serialized_*): the operations.
// The byte format is in serialize_format, the payload transfer in serialize_transfer, sinks and
// sources in serialize_io.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/cache.hpp"
#include "core/serialize_format.hpp"
#include "core/serialize_io.hpp"
#include "kvpages/serialize.h"
#include "util/memory.hpp"

namespace kvp::detail::ser {

// A checked selection of pages to write.
struct Selection {
  HostVector<int32_t> ids;
  uint64_t chunk_bytes = KVP_SERIALIZE_DEFAULT_CHUNK_BYTES;
  bool sync = true;  // files: fsync before the rename and of the directory after it
  explicit Selection(const HostAllocator& alloc) : ids(alloc) {}
};
Selection read_selection(const Cache& cache, const kvp_serialize_options* opts, const char* function);
Geometry geometry_of(const Cache& cache, const Selection& sel, const char* function);

void serialize(const Cache& cache, const Selection& sel, Sink& sink, const char* function);
// Writes the blob to `path`, replacing the file atomically (util/atomic_file.hpp).
void serialize_to_file(const Cache& cache, const Selection& sel, const char* path, const char* function);

// Operations on a source positioned at the start of a blob.
kvp_cache* deserialize_new(Source& src, const kvp_deserialize_options* opts, const char* function);
void deserialize_into(Cache& cache, Source& src, const int32_t* dst_ids, uint32_t num_dst_ids,
                      const char* function);
// Before anything is allocated: a blob whose input size is known (a buffer, a regular file) must
// declare exactly that many bytes, so a header cannot promise data that is not there.
void check_declared_size(const Source& src, const Geometry& g, const char* function);
// Throws FORMAT_MISMATCH naming `blob` ("the blob", "blob 3") when its config describes another
// model than the target's: layers, heads, head dims, page size, layout, dtype, and with
// `same_pages` the number of pages (the page ids of a re-sharding load mean the same slots).
void check_same_model(const kvp_config& target, const kvp_config& blob_config, const char* blob, bool same_pages,
                      const char* function);
// kvp_deserialize_shards_into (core/serialize_reshard.cpp).
void deserialize_shards_into(Cache& cache, const kvp_blob_ref* blobs, uint32_t num_blobs, const char* function);
// verify = false: header only. Fills `out` (as the public struct, struct_size honoured).
void inspect(Source& src, bool verify, kvp_serialized_info* out, const char* function);

}  // namespace kvp::detail::ser
