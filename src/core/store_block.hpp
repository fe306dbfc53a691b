// The block of one prefix page in a store (docs/store-format.md): a header (magic, version, the
// config's fingerprint, the page's chained key, its parent key, the salt, the geometry), the
// page's token ids, the page's bytes in every layer, and an XXH3-64 checksum over all of it.
// The pool fills the layer bytes in place (through the cache's backend) and seals the block;
// on the way back it checks everything before a byte of it reaches the cache.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/store.hpp"
#include "core/xxh3.hpp"

namespace kvp::detail {

class Cache;

// Where a block's token ids start (after the fixed header).
constexpr size_t kBlockTokensOffset = 72;

// The shape of the blocks of one cache's pages.
struct BlockShape {
  uint64_t fingerprint = 0;  // XXH3-64 of the config (config_fingerprint)
  uint32_t page_size = 0;    // tokens per page
  uint32_t num_layers = 0;
  size_t page_bytes = 0;     // bytes of one page in one layer
  size_t data_offset = 0;    // where layer 0's bytes start (64-byte aligned)
  size_t total = 0;          // bytes of a block
  uint8_t* layer(uint8_t* block, int64_t l) const noexcept { return block + data_offset + static_cast<size_t>(l) * page_bytes; }
  const uint8_t* layer(const uint8_t* block, int64_t l) const noexcept {
    return block + data_offset + static_cast<size_t>(l) * page_bytes;
  }
};

// The blocks of `cache`'s pages. Throws INVALID_ARGUMENT if a block would not fit size_t.
BlockShape block_shape(const Cache& cache);

// XXH3-64 over what makes a page's bytes mean the same thing: the storage layout (v2/v3,
// packing, dtype, head geometry), page size, layers, and the tensor-parallel slice of heads.
// The number of pages and the data-parallel page shards do not enter it.
uint64_t config_fingerprint(const Cache& cache);

// Store keys are the prefix index's keys XOR-ed with this mask of the config's fingerprint, so
// pools of different models (or KV-head slices) sharing a store and a salt never overwrite each
// other's blocks; the mask is its own inverse.
StoreKey store_key_mask(uint64_t fingerprint) noexcept;

// What identifies a page: its chained key, its parent's key (zero for a first page), the salt.
struct BlockId {
  StoreKey key, parent;
  uint64_t salt = 0;
};

// A block's checksum (XXH3-64 of every byte before it) computed piece by piece, in order.
using BlockSum = Xxh3Sum;

// Copies n bytes from src to dst (non-temporal stores: the destination is not read for
// ownership) and adds them to `sum`, a piece at a time, so that the checksum reads each piece
// from the cache the copy just loaded it into: a block costs one pass over memory, not two.
// Host memory only; src must not change meanwhile.
void copy_summed(void* dst, const void* src, size_t n, BlockSum& sum) noexcept;

// Writes the header and the token ids (shape.page_size of them) into a block and returns the
// checksum over them; the layer bytes follow, added in order (BlockSum::add or copy_summed),
// and block_finish writes the checksum.
BlockSum block_start(const BlockShape& shape, uint8_t* block, const BlockId& id, const int32_t* tokens) noexcept;
void block_finish(const BlockShape& shape, uint8_t* block, const BlockSum& sum) noexcept;

// block_start and block_finish of a block whose layer bytes are already in place.
void block_seal(const BlockShape& shape, uint8_t* block, const BlockId& id, const int32_t* tokens) noexcept;

// Checks everything of a block of `size` bytes before its layer bytes against the shape, the
// page it should be and its token ids: nullptr if they hold (and *sum holds the checksum over
// them), else what is wrong ("size", "token ids", ...). block_sum_holds then checks the checksum
// of the whole block once its layer bytes were added to *sum in order.
const char* block_check_head(const BlockShape& shape, const uint8_t* block, size_t size, const BlockId& id,
                             const int32_t* tokens, BlockSum* sum) noexcept;
bool block_sum_holds(const BlockShape& shape, const uint8_t* block, const BlockSum& sum) noexcept;

// block_check_head and the checksum over the layer bytes in place: nullptr if the block may be
// restored, else what is wrong ("checksum", "token ids", ...).
const char* block_check(const BlockShape& shape, const uint8_t* block, size_t size, const BlockId& id,
                        const int32_t* tokens) noexcept;

// What the header of a block of `size` bytes says, and whether its checksum holds
// (kvp_store_block_inspect). Throws FORMAT_MAGIC, FORMAT_VERSION, FORMAT_TRUNCATED or
// FORMAT_CORRUPT (with `function` in the message) for what is not a whole block.
kvp_store_block_info block_inspect(const uint8_t* block, size_t size, const char* function);

}  // namespace kvp::detail
