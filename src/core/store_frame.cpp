#include "core/store_frame.hpp"

#include "core/xxh3.hpp"

namespace kvp::detail {
namespace {

constexpr uint64_t kMagicVersion = 0x4650564Bull | 1ull << 32;  // 'KVPF', frame format version 1

void put64(uint8_t* p, uint64_t v) noexcept {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t get64(const uint8_t* p) noexcept {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

void write_frame_header(uint8_t* h, const StoreKey& k, const void* block, size_t n) noexcept {
  write_frame_header(h, k, n, XXH3_64bits(block, n));
}

void write_frame_header(uint8_t* h, const StoreKey& k, size_t n, uint64_t checksum) noexcept {
  put64(h, kMagicVersion);
  put64(h + 8, k.lo);
  put64(h + 16, k.hi);
  put64(h + 24, n);
  put64(h + 32, checksum);
  put64(h + 40, 0);
}

FrameFault check_frame_header(const uint8_t* h, uint64_t frame_bytes, const StoreKey& k) noexcept {
  if (frame_bytes < kFrameHeaderBytes) return {KVP_ERR_FORMAT_TRUNCATED, "shorter than its header"};
  if (get64(h) != kMagicVersion) return {KVP_ERR_FORMAT_MAGIC, "not a block frame of this version"};
  if (get64(h + 8) != k.lo || get64(h + 16) != k.hi) return {KVP_ERR_FORMAT_CORRUPT, "its key is not the one it is stored under"};
  if (get64(h + 24) != frame_bytes - kFrameHeaderBytes) return {KVP_ERR_FORMAT_TRUNCATED, "its size does not match the frame's"};
  return {};
}

FrameFault check_frame_block(const uint8_t* h, const void* block, size_t n) noexcept {
  return check_frame_sum(h, XXH3_64bits(block, n));
}

FrameFault check_frame_sum(const uint8_t* h, uint64_t checksum) noexcept {
  if (checksum != get64(h + 32)) return {KVP_ERR_FORMAT_CHECKSUM, "checksum mismatch"};
  return {};
}

}  // namespace kvp::detail
