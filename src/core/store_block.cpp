#include "core/store_block.hpp"

#include <xxhash.h>

#include <cstring>

#include "core/cache.hpp"
#include "util/checked.hpp"
#include "util/error.hpp"

namespace kvp::detail {
namespace {

constexpr uint32_t kBlockMagic = 0x4250564Bu;  // 'KVPB'
constexpr uint32_t kBlockVersion = 1;
constexpr size_t kHeaderBytes = kBlockTokensOffset;
constexpr size_t kChecksumBytes = 8;

void put32(uint8_t* p, uint32_t v) noexcept {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void put64(uint8_t* p, uint64_t v) noexcept {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint32_t get32(const uint8_t* p) noexcept {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
uint64_t get64(const uint8_t* p) noexcept {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// The header a block of `shape` for page `id` has.
void write_header(const BlockShape& s, uint8_t* h, const BlockId& id) noexcept {
  put32(h, kBlockMagic);
  put32(h + 4, kBlockVersion);
  put64(h + 8, s.fingerprint);
  put64(h + 16, id.key.lo);
  put64(h + 24, id.key.hi);
  put64(h + 32, id.parent.lo);
  put64(h + 40, id.parent.hi);
  put64(h + 48, id.salt);
  put32(h + 56, s.page_size);
  put32(h + 60, s.num_layers);
  put64(h + 64, s.page_bytes);
}

}  // namespace

uint64_t config_fingerprint(const Cache& cache) {
  const Layout& L = cache.layout();
  const ShardCoord& sh = cache.shard();
  const int64_t fields[] = {kBlockVersion, L.v3, L.h64, L.dtype, L.itemsize, L.num_layers, L.page_size,
                            L.num_kv_heads, L.head_dim, L.packing, L.combined_heads, L.groups, L.storage_head_dim,
                            L.page_bytes_per_layer, L.slot_begin, sh.tp_rank, sh.tp_size};
  uint8_t bytes[sizeof fields];
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; ++i) put64(bytes + 8 * i, static_cast<uint64_t>(fields[i]));
  return XXH3_64bits(bytes, sizeof bytes);
}

StoreKey store_key_mask(uint64_t fingerprint) noexcept {
  const XXH128_hash_t m = XXH3_128bits_withSeed(&fingerprint, sizeof fingerprint, 0x4B56504Bu);
  return StoreKey{m.low64, m.high64};
}

BlockShape block_shape(const Cache& cache) {
  BlockShape s;
  s.fingerprint = config_fingerprint(cache);
  s.page_size = static_cast<uint32_t>(cache.layout().page_size);
  s.num_layers = static_cast<uint32_t>(cache.num_layers());
  s.page_bytes = cache.page_bytes();
  const size_t tokens = checked_bytes(s.page_size, sizeof(int32_t), "a block's token ids");
  s.data_offset = checked_bytes_add(kHeaderBytes, tokens + 63, "a block header") / 64 * 64;
  const size_t layers = checked_bytes(s.num_layers, s.page_bytes, "a block's layer bytes");
  s.total = checked_bytes_add(checked_bytes_add(s.data_offset, layers, "a block"), kChecksumBytes, "a block");
  return s;
}

void block_seal(const BlockShape& s, uint8_t* block, const BlockId& id, const int32_t* tokens) noexcept {
  write_header(s, block, id);
  std::memcpy(block + kHeaderBytes, tokens, sizeof(int32_t) * s.page_size);
  std::memset(block + kHeaderBytes + sizeof(int32_t) * s.page_size, 0,
              s.data_offset - kHeaderBytes - sizeof(int32_t) * s.page_size);
  put64(block + s.total - kChecksumBytes, XXH3_64bits(block, s.total - kChecksumBytes));
}

const char* block_check(const BlockShape& s, const uint8_t* block, size_t size, const BlockId& id,
                        const int32_t* tokens) noexcept {
  if (size != s.total) return "size";
  if (get32(block) != kBlockMagic) return "magic";
  if (get32(block + 4) != kBlockVersion) return "version";
  if (get64(block + 8) != s.fingerprint) return "config fingerprint";
  uint8_t expected[kHeaderBytes];
  write_header(s, expected, id);
  if (std::memcmp(block, expected, kHeaderBytes) != 0) return "page key, parent key, salt or geometry";
  if (std::memcmp(block + kHeaderBytes, tokens, sizeof(int32_t) * s.page_size) != 0) return "token ids";
  if (XXH3_64bits(block, s.total - kChecksumBytes) != get64(block + s.total - kChecksumBytes)) return "checksum";
  return nullptr;
}

}  // namespace kvp::detail
