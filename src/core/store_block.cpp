#include "core/store_block.hpp"

#include <cstring>

#include "core/cache.hpp"
#include "core/xxh3.hpp"
#include "util/checked.hpp"
#include "util/error.hpp"
#include "util/nontemporal.hpp"

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

namespace {

StoreKey key_at(const uint8_t* p) noexcept {
  StoreKey k;
  k.lo = get64(p);
  k.hi = get64(p + 8);
  return k;
}

// The shape of blocks of this geometry (the offsets and the size follow from it).
BlockShape shape_of(uint64_t fingerprint, uint32_t page_size, uint32_t num_layers, size_t page_bytes) {
  BlockShape s;
  s.fingerprint = fingerprint;
  s.page_size = page_size;
  s.num_layers = num_layers;
  s.page_bytes = page_bytes;
  const size_t tokens = checked_bytes(s.page_size, sizeof(int32_t), "a block's token ids");
  s.data_offset = checked_bytes_add(kHeaderBytes, tokens + 63, "a block header") / 64 * 64;
  const size_t layers = checked_bytes(s.num_layers, s.page_bytes, "a block's layer bytes");
  s.total = checked_bytes_add(checked_bytes_add(s.data_offset, layers, "a block"), kChecksumBytes, "a block");
  return s;
}

}  // namespace

BlockShape block_shape(const Cache& cache) {
  return shape_of(config_fingerprint(cache), static_cast<uint32_t>(cache.layout().page_size),
                  static_cast<uint32_t>(cache.num_layers()), cache.page_bytes());
}

void copy_summed(void* dst, const void* src, size_t n, BlockSum& sum) noexcept {
  constexpr size_t kPiece = 64 << 10;  // stays in L2 between the copy and the sum
  auto* d = static_cast<uint8_t*>(dst);
  const auto* s = static_cast<const uint8_t*>(src);
  for (size_t off = 0; off < n; off += kPiece) {
    const size_t m = n - off < kPiece ? n - off : kPiece;
    copy_nontemporal(d + off, s + off, m);
    sum.add(s + off, m);
  }
}

BlockSum block_start(const BlockShape& s, uint8_t* block, const BlockId& id, const int32_t* tokens) noexcept {
  write_header(s, block, id);
  std::memcpy(block + kHeaderBytes, tokens, sizeof(int32_t) * s.page_size);
  std::memset(block + kHeaderBytes + sizeof(int32_t) * s.page_size, 0,
              s.data_offset - kHeaderBytes - sizeof(int32_t) * s.page_size);
  BlockSum sum;
  sum.add(block, s.data_offset);
  return sum;
}

void block_finish(const BlockShape& s, uint8_t* block, const BlockSum& sum) noexcept {
  put64(block + s.total - kChecksumBytes, sum.value());
}

void block_seal(const BlockShape& s, uint8_t* block, const BlockId& id, const int32_t* tokens) noexcept {
  BlockSum sum = block_start(s, block, id, tokens);
  sum.add(block + s.data_offset, s.total - kChecksumBytes - s.data_offset);
  block_finish(s, block, sum);
}

const char* block_check_head(const BlockShape& s, const uint8_t* block, size_t size, const BlockId& id,
                             const int32_t* tokens, BlockSum* sum) noexcept {
  if (size != s.total) return "size";
  if (get32(block) != kBlockMagic) return "magic";
  if (get32(block + 4) != kBlockVersion) return "version";
  if (get64(block + 8) != s.fingerprint) return "config fingerprint";
  uint8_t expected[kHeaderBytes];
  write_header(s, expected, id);
  if (std::memcmp(block, expected, kHeaderBytes) != 0) return "page key, parent key, salt or geometry";
  if (std::memcmp(block + kHeaderBytes, tokens, sizeof(int32_t) * s.page_size) != 0) return "token ids";
  sum->add(block, s.data_offset);
  return nullptr;
}

bool block_sum_holds(const BlockShape& s, const uint8_t* block, const BlockSum& sum) noexcept {
  return sum.value() == get64(block + s.total - kChecksumBytes);
}

const char* block_check(const BlockShape& s, const uint8_t* block, size_t size, const BlockId& id,
                        const int32_t* tokens) noexcept {
  BlockSum sum;
  if (const char* bad = block_check_head(s, block, size, id, tokens, &sum)) return bad;
  sum.add(block + s.data_offset, s.total - kChecksumBytes - s.data_offset);
  return block_sum_holds(s, block, sum) ? nullptr : "checksum";
}

kvp_store_block_info block_inspect(const uint8_t* b, size_t size, const char* fn) {
  if (size < 4 || get32(b) != kBlockMagic)
    fail(KVP_ERR_FORMAT_MAGIC, "%s: not a page block (%zu bytes, no KVPB magic)", fn, size);
  if (size < kHeaderBytes)
    fail(KVP_ERR_FORMAT_TRUNCATED, "%s: a block of %zu bytes is shorter than its %zu-byte header", fn, size,
         kHeaderBytes);
  if (get32(b + 4) != kBlockVersion)
    fail(KVP_ERR_FORMAT_VERSION, "%s: block format version %u is not supported (this library reads %u)", fn,
         get32(b + 4), kBlockVersion);
  const uint64_t page_bytes = get64(b + 64);
  BlockShape s;
  try {
    s = shape_of(get64(b + 8), get32(b + 56), get32(b + 60), static_cast<size_t>(page_bytes));
  } catch (const error&) {
    fail(KVP_ERR_FORMAT_CORRUPT, "%s: the block's geometry (page size %u, %u layers, %llu bytes per page) is impossible",
         fn, get32(b + 56), get32(b + 60), static_cast<unsigned long long>(page_bytes));
  }
  if (size < s.total)
    fail(KVP_ERR_FORMAT_TRUNCATED, "%s: the block has %zu bytes but its geometry needs %zu", fn, size, s.total);
  if (size > s.total)
    fail(KVP_ERR_FORMAT_CORRUPT, "%s: the block has %zu bytes, more than the %zu its geometry needs", fn, size, s.total);
  kvp_store_block_info info;
  std::memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  info.format_version = kBlockVersion;
  info.fingerprint = s.fingerprint;
  info.key = key_at(b + 16).to_c();
  info.parent = key_at(b + 32).to_c();
  info.salt = get64(b + 48);
  info.page_size = s.page_size;
  info.num_layers = s.num_layers;
  info.page_bytes = s.page_bytes;
  info.block_bytes = s.total;
  info.checksum_ok = XXH3_64bits(b, s.total - kChecksumBytes) == get64(b + s.total - kChecksumBytes);
  return info;
}

}  // namespace kvp::detail
