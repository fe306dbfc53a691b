// Per-sequence save and restore (include/kvpages/pool.h, "Saving and restoring a sequence";
// docs/store-format.md, "The blob of a sequence"): a 64-byte checksummed header, then the block
// (core/store_block) of each of the sequence's pages in order. A restore checks the whole blob
// before the pool changes, then shares the full pages the prefix index already holds and writes
// the others into fresh pages, which it indexes as computed.
#include <xxhash.h>

#include <algorithm>
#include <cstring>

#include "backend/backend.hpp"
#include "core/cache.hpp"
#include "core/pool.hpp"
#include "core/serialize_format.hpp"
#include "core/serialize_io.hpp"
#include "util/atomic_file.hpp"
#include "util/checked.hpp"
#include "util/error.hpp"
#include "util/nontemporal.hpp"
#include "util/thread_pool.hpp"

namespace kvp::detail {
namespace {

using ser::get32;
using ser::get64;
using ser::put32;
using ser::put64;
using u64 = unsigned long long;  // for printf

constexpr uint32_t kSeqMagic = 0x5150564Bu;  // 'KVPQ'
constexpr uint32_t kSeqVersion = 1;
constexpr size_t kSeqHeaderBytes = 64;
constexpr size_t kSeqChecksumAt = 56;  // XXH3-64 of the header bytes before it

uint64_t pages_of(uint64_t tokens, uint64_t page_size) noexcept { return tokens / page_size + (tokens % page_size != 0); }

void write_seq_header(uint8_t* h, const BlockShape& s, uint64_t salt, uint64_t num_tokens) noexcept {
  put32(h, kSeqMagic);
  put32(h + 4, kSeqVersion);
  put64(h + 8, s.fingerprint);
  put64(h + 16, salt);
  put64(h + 24, num_tokens);
  put32(h + 32, s.page_size);
  put32(h + 36, s.num_layers);
  put64(h + 40, s.page_bytes);
  put64(h + 48, pages_of(num_tokens, s.page_size));
  put64(h + kSeqChecksumAt, XXH3_64bits(h, kSeqChecksumAt));
}

size_t seq_blob_size(const BlockShape& s, uint64_t num_tokens) {
  const uint64_t blocks = pages_of(num_tokens, s.page_size);
  return checked_bytes_add(kSeqHeaderBytes, checked_bytes(static_cast<size_t>(blocks), s.total, "a sequence blob"),
                           "a sequence blob");
}

// What a blob's header says, once it has checked out against this cache (`s`) and the blob's
// size (the header's first 64 bytes at `h`, the whole blob `size` bytes).
struct SeqHeader {
  uint64_t salt = 0;
  uint64_t num_tokens = 0;
  uint64_t num_blocks = 0;
};

SeqHeader read_seq_header(const uint8_t* h, uint64_t size, const BlockShape& s, const char* fn) {
  if (size < kSeqHeaderBytes)
    fail(KVP_ERR_FORMAT_TRUNCATED, "%s: truncated sequence blob: %llu bytes, fewer than its %zu-byte header", fn,
         (u64)size, kSeqHeaderBytes);
  if (get32(h) != kSeqMagic)
    fail(KVP_ERR_FORMAT_MAGIC, "%s: not a sequence blob: magic 0x%08x, expected 0x%08x ('KVPQ')", fn, get32(h),
         kSeqMagic);
  if (get32(h + 4) != kSeqVersion)
    fail(KVP_ERR_FORMAT_VERSION, "%s: sequence blob version %u; this library reads version %u", fn, get32(h + 4),
         kSeqVersion);
  if (XXH3_64bits(h, kSeqChecksumAt) != get64(h + kSeqChecksumAt))
    fail(KVP_ERR_FORMAT_CHECKSUM, "%s: the sequence blob's header checksum does not match (a damaged header)", fn);
  if (get64(h + 8) != s.fingerprint || get32(h + 32) != s.page_size || get32(h + 36) != s.num_layers ||
      get64(h + 40) != s.page_bytes)
    fail(KVP_ERR_FORMAT_MISMATCH,
         "%s: the sequence was saved from a cache of another config (fingerprint 0x%016llx, page size %u, %u layers, "
         "%llu bytes per page and layer); this pool's cache has fingerprint 0x%016llx, page size %u, %u layers, %zu "
         "bytes per page and layer", fn, (u64)get64(h + 8), get32(h + 32), get32(h + 36), (u64)get64(h + 40),
         (u64)s.fingerprint, s.page_size, s.num_layers, s.page_bytes);
  SeqHeader r;
  r.salt = get64(h + 16);
  r.num_tokens = get64(h + 24);
  r.num_blocks = get64(h + 48);
  if (r.num_blocks != pages_of(r.num_tokens, s.page_size))
    fail(KVP_ERR_FORMAT_CORRUPT, "%s: the sequence blob's header announces %llu token(s) in %llu block(s), but they "
         "take %llu page(s) of %u", fn, (u64)r.num_tokens, (u64)r.num_blocks,
         (u64)pages_of(r.num_tokens, s.page_size), s.page_size);
  if (r.num_blocks > (size - kSeqHeaderBytes) / s.total)
    fail(KVP_ERR_FORMAT_TRUNCATED, "%s: truncated sequence blob: %llu bytes hold fewer than the %llu block(s) of "
         "%zu bytes its header announces", fn, (u64)size, (u64)r.num_blocks, s.total);
  if (size != kSeqHeaderBytes + r.num_blocks * s.total)
    fail(KVP_ERR_FORMAT_CORRUPT, "%s: %llu byte(s) follow the sequence blob's last block; it must end there", fn,
         (u64)(size - kSeqHeaderBytes - r.num_blocks * s.total));
  return r;
}

// The status of a block that failed block_check() for `why`.
kvp_status block_status(const char* why) noexcept {
  if (std::strcmp(why, "checksum") == 0) return KVP_ERR_FORMAT_CHECKSUM;
  if (std::strcmp(why, "magic") == 0) return KVP_ERR_FORMAT_MAGIC;
  if (std::strcmp(why, "version") == 0) return KVP_ERR_FORMAT_VERSION;
  if (std::strcmp(why, "config fingerprint") == 0) return KVP_ERR_FORMAT_MISMATCH;
  return KVP_ERR_FORMAT_CORRUPT;
}

// Restore flags: 0 or KVP_POOL_ADD_IN_SHARD(shard).
void check_restore_flags(uint32_t flags, uint32_t dp, const char* fn) {
  const bool forced = (flags & KVP_POOL_ADD_FLAG_SHARD) != 0;
  if ((flags & ~(KVP_POOL_ADD_FLAG_SHARD | (forced ? 0xFFFF0000u : 0u))) != 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: unknown flags 0x%x (0 or KVP_POOL_ADD_IN_SHARD(shard))", fn, flags);
  if (forced && (flags >> 16) >= dp)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: shard %u is out of range: the pool has %u data-parallel shard(s)", fn,
         flags >> 16, dp);
}

void check_path(const char* path, const char* fn) {
  if (path == nullptr || path[0] == '\0') fail(KVP_ERR_INVALID_ARGUMENT, "%s: 'path' must not be NULL or empty", fn);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Save.

BlockShape Pool::saved_shape(uint32_t slot, const char* fn) const {
  const Seq& s = seqs_[slot];
  if (s.computed < s.length)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: only %llu of the sequence's %llu tokens are computed; declare the rest computed "
         "(kvp_pool_set_computed) once their K/V is written", fn, (u64)s.computed, (u64)s.length);
  Cache& c = cache(fn);
  c.check_healthy(fn);
  return block_shape(c);
}

BlockId Pool::saved_page_id(uint32_t slot, size_t i, const BlockShape& bs, Key128& parent, int32_t* pad) {
  const Seq& s = seqs_[slot];
  const size_t S = static_cast<size_t>(page_size_);
  const int32_t p = row(slot)[i];
  const size_t valid = std::min<size_t>(S, static_cast<size_t>(s.length) - i * S);
  std::memcpy(pad, tokens_ + static_cast<size_t>(p) * S, sizeof(int32_t) * valid);
  std::memset(pad + valid, 0, sizeof(int32_t) * (S - valid));
  const StoreKey mask = store_key_mask(bs.fingerprint);
  const Key128 key = compute_key(parent, pad, s.salt);
  const BlockId id{StoreKey{key.lo ^ mask.lo, key.hi ^ mask.hi}, StoreKey{parent.lo ^ mask.lo, parent.hi ^ mask.hi},
                   s.salt};
  parent = key;
  return id;
}

void Pool::save_sequence(kvp_seq_id id, void* dst, size_t capacity, size_t* size_out) {
  const char* fn = "kvp_pool_save_sequence";
  if (size_out == nullptr) fail(KVP_ERR_INVALID_ARGUMENT, "%s: 'size_out' must not be NULL", fn);
  if (capacity > 0 && dst == nullptr)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: 'dst' must not be NULL when capacity is %zu", fn, capacity);
  const uint32_t slot = resolve(id, fn);
  const BlockShape bs = saved_shape(slot, fn);
  const Seq& s = seqs_[slot];
  const size_t size = seq_blob_size(bs, s.length);
  *size_out = size;
  if (capacity < size)
    fail(KVP_ERR_BUFFER_TOO_SMALL, "%s: the sequence's blob takes %zu bytes but capacity is %zu", fn, size, capacity);
  // The keys are a chain (page by page); the blocks are then filled on the library's threads.
  const size_t np = pages_of(s.length, bs.page_size), S = static_cast<size_t>(page_size_);
  HostVector<int32_t> pad(np * S, alloc_);
  HostVector<BlockId> ids(np, alloc_);
  Key128 parent{};
  for (size_t i = 0; i < np; ++i) ids[i] = saved_page_id(slot, i, bs, parent, pad.data() + i * S);
  auto* out = static_cast<uint8_t*>(dst);
  write_seq_header(out, bs, s.salt, s.length);
  uint8_t* blocks = out + kSeqHeaderBytes;
  const int32_t* r = row(slot);
  Cache& c = cache(fn);
  if (c.device_type() != KVP_DEVICE_CPU) {
    for (size_t i = 0; i < np; ++i) fill_block(r[i], bs, ids[i], pad.data() + i * S, blocks + i * bs.total, nullptr, fn);
    return;
  }
  parallel_for_bytes(np, bs.total, [&](size_t i) {
    fill_host_block(c, r[i], bs, ids[i], pad.data() + i * S, blocks + i * bs.total);
  });
}

void Pool::save_sequence_to_file(kvp_seq_id id, const char* path, uint32_t flags) {
  const char* fn = "kvp_pool_save_sequence_to_file";
  check_path(path, fn);
  if ((flags & ~KVP_POOL_SAVE_FLAG_NO_SYNC) != 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: unknown flags 0x%x (0 or KVP_POOL_SAVE_FLAG_NO_SYNC)", fn, flags);
  const uint32_t slot = resolve(id, fn);
  const BlockShape bs = saved_shape(slot, fn);
  const Seq& s = seqs_[slot];
  seq_blob_size(bs, s.length);  // fits size_t
  HostVector<int32_t> pad(static_cast<size_t>(page_size_), alloc_);
  HostVector<uint8_t> block(bs.total, alloc_);
  AtomicFile file(path, fn, AtomicFile::synced_if((flags & KVP_POOL_SAVE_FLAG_NO_SYNC) == 0));
  uint8_t header[kSeqHeaderBytes];
  write_seq_header(header, bs, s.salt, s.length);
  file.write(header, sizeof header);
  Key128 parent{};
  for (size_t i = 0; i < pages_of(s.length, bs.page_size); ++i) {
    const BlockId pid = saved_page_id(slot, i, bs, parent, pad.data());
    fill_block(row(slot)[i], bs, pid, pad.data(), block.data(), nullptr, fn);
    file.write(block.data(), block.size());
  }
  file.commit();
}

// ---------------------------------------------------------------------------------------------
// Restore.

void Pool::check_blocks(const uint8_t* blocks, const BlockShape& bs, uint64_t num_tokens, uint64_t salt,
                        int32_t* tokens, const char* fn) {
  const size_t S = bs.page_size, n = static_cast<size_t>(num_tokens), num_blocks = pages_of(n, S);
  const StoreKey mask = store_key_mask(bs.fingerprint);
  // The token ids and the key chain page by page, then the blocks checked on the library's
  // threads; the first failure in block order is reported (a bad tail is block num_blocks-1's).
  HostVector<BlockId> ids(num_blocks, alloc_);
  HostVector<const char*> why(num_blocks, nullptr, alloc_);
  size_t tail_row = S;  // the row of the last block's first non-zero id past the tokens
  Key128 parent{};
  for (size_t i = 0; i < num_blocks; ++i) {
    int32_t* t = tokens + i * S;
    std::memcpy(t, blocks + i * bs.total + kBlockTokensOffset, sizeof(int32_t) * S);
    for (size_t j = std::min(S, n - i * S); j < S && tail_row == S; ++j)
      if (t[j] != 0) tail_row = j;
    const Key128 key = compute_key(parent, t, salt);
    ids[i] = BlockId{StoreKey{key.lo ^ mask.lo, key.hi ^ mask.hi}, StoreKey{parent.lo ^ mask.lo, parent.hi ^ mask.hi},
                     salt};
    parent = key;
  }
  parallel_for_bytes(num_blocks, bs.total, [&](size_t i) {
    why[i] = block_check(bs, blocks + i * bs.total, bs.total, ids[i], tokens + i * S);
  });
  for (size_t i = 0; i < num_blocks; ++i) {
    if (i + 1 == num_blocks && tail_row < S)
      fail(KVP_ERR_FORMAT_CORRUPT, "%s: block %zu of the sequence blob (its last) holds token id %d at row %zu, past "
           "the sequence's %zu tokens, where 0 belongs", fn, i, tokens[i * S + tail_row], tail_row, n);
    if (why[i] != nullptr)
      fail(block_status(why[i]), "%s: block %zu of %zu of the sequence blob does not check out: its %s", fn, i,
           num_blocks, why[i]);
  }
}

kvp_seq_id Pool::restore_sequence(const void* src, size_t size, uint32_t flags, const char* fn) {
  check_restore_flags(flags, dp_, fn);
  if (size > 0 && src == nullptr) fail(KVP_ERR_INVALID_ARGUMENT, "%s: 'src' must not be NULL when size is %zu", fn, size);
  Cache& c = cache(fn);
  c.check_healthy(fn);
  const BlockShape bs = block_shape(c);
  const auto* blob = static_cast<const uint8_t*>(src);
  const SeqHeader h = read_seq_header(blob, size, bs, fn);
  if (h.num_tokens > max_length_)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: the saved sequence has %llu tokens, above this pool's max_model_length %llu", fn,
         (u64)h.num_tokens, (u64)max_length_);
  if (ring_count_ == 0)
    fail(KVP_ERR_OUT_OF_PAGES, "%s: all %u sequence slots are in use (raise kvp_pool_options.max_sequences)", fn,
         max_seqs_);
  const size_t S = static_cast<size_t>(page_size_), n = static_cast<size_t>(h.num_tokens);
  const size_t need = static_cast<size_t>(h.num_blocks);
  HostVector<int32_t> tokens(need * S, alloc_);
  const uint8_t* blocks = blob + kSeqHeaderBytes;
  check_blocks(blocks, bs, n, h.salt, tokens.data(), fn);

  // Placement and the full pages the prefix index already holds (read-only), as add_sequence.
  const bool forced = (flags & KVP_POOL_ADD_FLAG_SHARD) != 0;
  const size_t max_hits = prefix_enabled_ ? n / S : 0;
  size_t nkeys = 0;
  const uint32_t shard = forced ? flags >> 16 : dp_ == 1 ? 0 : place(tokens.data(), max_hits, h.salt, need, nkeys);
  const Match m = match_prefix(tokens.data(), max_hits, h.salt, shard, nkeys);
  const int64_t fresh = static_cast<int64_t>(need - m.hits);
  if (fresh > m.available()) {
    char buf[48];
    fail(KVP_ERR_OUT_OF_PAGES,
         "%s: needs %lld new page(s) for %zu tokens (%zu shared), but only %lld are free or evictable (%lld free, "
         "%lld evictable)%s", fn, static_cast<long long>(fresh), n, m.hits * S, static_cast<long long>(m.available()),
         static_cast<long long>(m.free), static_cast<long long>(m.evictable), shard_note(shard, buf));
  }

  // Commit: share the hits, write the rest into fresh pages, index the full ones as computed.
  const uint32_t slot = take_slot();
  Seq& s = seqs_[slot];
  s.salt = h.salt;
  s.length = m.hits * S;
  s.computed = m.hits * S;
  s.shard = shard;
  ++shards_[shard].num_seqs;
  const kvp_seq_id id{(s.gen << kIndexBits) | slot};
  int32_t* r = row(slot);
  for (size_t i = 0; i < m.hits; ++i) {
    r[i] = scratch_pages_[i];
    acquire_page(r[i]);
  }
  alloc_pages(shard, need - m.hits, r + m.hits);
  s.length = need * S;  // what a failure below releases
  const bool host = c.device_type() == KVP_DEVICE_CPU;
  const auto load = [&](size_t i) {
    const int32_t p = r[i];
    const uint8_t* b = blocks + i * bs.total;
    for (int64_t l = 0; l < c.num_layers(); ++l) {
      uint8_t* dst = c.layer_data(l) + static_cast<size_t>(p) * bs.page_bytes;
      if (host) copy_nontemporal(dst, bs.layer(b, l), bs.page_bytes);  // not read back soon
      else c.backend().copy_from_host(dst, bs.layer(b, l), bs.page_bytes, nullptr, true, fn);
    }
    std::memcpy(tokens_ + static_cast<size_t>(p) * S, tokens.data() + i * S, sizeof(int32_t) * S);
  };
  try {
    if (host) {  // pages on the library's threads
      parallel_for_bytes(need - m.hits, bs.total, [&](size_t k) { load(m.hits + k); });
    } else {
      for (size_t i = m.hits; i < need; ++i) load(i);
    }
  } catch (...) {
    free_sequence(id);
    throw;
  }
  s.length = n;
  mark_computed(slot, n);
  return id;
}

kvp_seq_id Pool::restore_sequence_from_file(const char* path, uint32_t flags) {
  const char* fn = "kvp_pool_restore_sequence_from_file";
  check_restore_flags(flags, dp_, fn);
  check_path(path, fn);
  const BlockShape bs = block_shape(cache(fn));
  ser::FileSource file(path, fn);
  uint64_t size = 0;
  if (!file.known_size(&size)) fail(KVP_ERR_IO, "%s: '%s' is not a regular file", fn, path);
  // The header first: a file that is no sequence blob of this config is refused before it is read.
  uint8_t header[kSeqHeaderBytes];
  file.read_at(0, header, static_cast<size_t>(std::min<uint64_t>(size, kSeqHeaderBytes)), "the sequence blob's header");
  read_seq_header(header, size, bs, fn);
  HostVector<uint8_t> blob(static_cast<size_t>(size), alloc_);
  file.read_at(0, blob.data(), blob.size(), "the sequence blob");
  return restore_sequence(blob.data(), blob.size(), flags, fn);
}

}  // namespace kvp::detail
