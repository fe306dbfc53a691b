// Moving a blob's payload between the pages of a cache and a sink or source: the selected pages
// of every layer, cut into checksummed chunks (docs/serialization-format.md). Host caches copy
// directly (large in-memory payloads on the thread pool; files chunk by chunk on the pool with
// pread/pwrite between the pages and the file, no staging copy); device caches go through the
// backend's HostPipe, the device moving one piece while the host hashes and copies the other.
#pragma once

#include <cstdint>

#include "core/cache.hpp"
#include "core/serialize_format.hpp"
#include "core/serialize_io.hpp"
#include "util/memory.hpp"

namespace kvp::detail::ser {

// Writes the payload of pages `ids` (every layer, layer-major) to `sink` as checksummed chunks
// (in place, in any order, when the sink has random access);
// `pipe` is the backend's host_pipe() (nullptr for host caches), taken before the blob started.
void write_payload(const Cache& cache, const HostVector<int32_t>& ids, const Geometry& g, HostPipe* pipe,
                   Sink& sink);

// Reads the payload from `src` into pages `ids` of `cache`, checking each chunk's checksum as it
// is stored (a mismatch throws FORMAT_CHECKSUM with the pages partly written: for new caches).
void read_payload_checked(const Cache& cache, const HostVector<int32_t>& ids, const Geometry& g, Source& src,
                          const char* function);

// The chunks of a payload, chunks[i] pointing at chunk i and its checksum: checks every checksum
// (throws FORMAT_CHECKSUM naming the first bad chunk), or stores verified chunks into pages `ids`.
void verify_chunks(const Geometry& g, const HostVector<const uint8_t*>& chunks, const char* function);
void store_chunks(const Cache& cache, const HostVector<int32_t>& ids, const Geometry& g,
                  const HostVector<const uint8_t*>& chunks, const char* function);

// The same for a random-access source (a file), reading chunk i at g.chunk_offset(i): checks
// every checksum, reading each chunk through a small reused scratch (nothing is written); or
// reads the chunks straight into pages `ids` (unchecked: call after verify_chunks_at).
void verify_chunks_at(const Geometry& g, RandomSource& in, const HostAllocator& alloc, const char* function);
void store_chunks_at(const Cache& cache, const HostVector<int32_t>& ids, const Geometry& g, RandomSource& in,
                     const char* function);

}  // namespace kvp::detail::ser
