// The frame a shipped store wraps each block in, so that every read verifies it
// (docs/store-format.md): a 48-byte header (magic 'KVPF', version, the key, the block's size and
// its XXH3-64) followed by the block. The directory store writes one frame per file, the Redis
// store one per value.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/store.hpp"
#include "kvpages/status.h"

namespace kvp::detail {

constexpr size_t kFrameHeaderBytes = 48;

// What is wrong with a frame: OK, or a KVP_ERR_FORMAT_* status and the reason (a literal).
struct FrameFault {
  kvp_status code = KVP_OK;
  const char* what = nullptr;
  explicit operator bool() const noexcept { return code != KVP_OK; }
};

// Writes the header of the frame of block (n bytes) under k.
void write_frame_header(uint8_t* header, const StoreKey& k, const void* block, size_t n) noexcept;
// The same for a block whose XXH3-64 (Xxh3Sum) is already known.
void write_frame_header(uint8_t* header, const StoreKey& k, size_t n, uint64_t checksum) noexcept;

// The size of the pieces in which a store writes or reads a block while summing it: a piece is
// summed while it is still in the CPU's cache (before a write, after a read), so the checksum
// costs no pass over memory of its own.
constexpr size_t kFramePieceBytes = size_t(256) << 10;

// Checks the header of a frame of frame_bytes bytes (header included) stored under k: magic,
// version, key and the block size against the frame's. On success the block has
// frame_bytes - kFrameHeaderBytes bytes.
FrameFault check_frame_header(const uint8_t* header, uint64_t frame_bytes, const StoreKey& k) noexcept;

// Checks the block's checksum against its (checked) header.
FrameFault check_frame_block(const uint8_t* header, const void* block, size_t n) noexcept;
// The same for the XXH3-64 of the block, computed piece by piece (Xxh3Sum).
FrameFault check_frame_sum(const uint8_t* header, uint64_t checksum) noexcept;

}  // namespace kvp::detail
