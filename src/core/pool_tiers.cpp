// The pool's storage tiers (include/kvpages/pool.h, "Storage tiers"): evicted prefix pages are
// written as blocks (core/store_block) to every tier that does not hold them yet (write-through),
// at once where the store's put is cheap and through the writer thread (core/tier_writer) where
// it is slow; add_sequence restores the pages after its
// in-memory match from the tiers, in order (on a device, double-buffered through the backend's
// host pipe). Nothing here fails a pool call: a store error or a block that does not check out is
// counted and treated as a miss.
#include <algorithm>
#include <cstring>

#include "backend/backend.hpp"
#include "core/cache.hpp"
#include "core/pool.hpp"
#include "util/checked.hpp"
#include "util/error.hpp"
#include "util/nontemporal.hpp"

namespace kvp::detail {
namespace {

// A store's complaint about a block itself (damaged file, block of another size): a rejected
// block, not a failing store.
bool block_fault(kvp_status code) noexcept {
  return code == KVP_ERR_BUFFER_TOO_SMALL || (code >= KVP_ERR_FORMAT_MAGIC && code <= KVP_ERR_FORMAT_MISMATCH);
}

}  // namespace

StoreKey Pool::store_key(const Key128& k) const noexcept { return StoreKey{k.lo ^ key_mask_.lo, k.hi ^ key_mask_.hi}; }

Key128 Pool::index_key(const StoreKey& k) const noexcept { return Key128{k.lo ^ key_mask_.lo, k.hi ^ key_mask_.hi}; }

Store& Pool::tier_store(const Tier& t, const char* fn) const {
  return handle_get(t.handle, t.serial, fn, "a store of the pool (kvp_pool_add_store) was destroyed");
}

void Pool::add_store(kvp_store* h) {
  const char* fn = "kvp_pool_add_store";
  store_from(h, fn);
  Cache& c = cache(fn);
  if (!prefix_enabled_)
    fail(KVP_ERR_UNSUPPORTED, "%s: the pool was created with KVP_POOL_FLAG_NO_PREFIX_CACHE: it has no prefix pages to store",
         fn);
  if (num_tiers_ == KVP_POOL_MAX_TIERS)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: the pool already has %u tiers (KVP_POOL_MAX_TIERS)", fn, num_tiers_);
  const uint64_t serial = handle_serial(h);
  for (uint32_t t = 0; t < num_tiers_; ++t)
    if (tiers_[t].serial == serial) fail(KVP_ERR_INVALID_ARGUMENT, "%s: the store is already tier %u of the pool", fn, t);
  if (num_tiers_ == 0) {
    const BlockShape shape = block_shape(c);
    const size_t keys = checked_bytes_add(shape.total, 63, "a pool's block buffers") / 64 * 64;
    const size_t found = checked_bytes_add(keys, checked_bytes(row_len_, sizeof(StoreKey), "a prompt's keys"), "tiers");
    HostBytes out(alloc_);
    out.resize(shape.total);
    auto* mem = static_cast<uint8_t*>(alloc_.allocate(checked_bytes_add(found, row_len_, "tiers"), 64));
    block_buf_.swap(out);
    tier_arrays_ = mem;
    read_buf_ = mem;
    tier_keys_ = reinterpret_cast<StoreKey*>(mem + keys);
    found_ = mem + found;
    block_ = shape;
    key_mask_ = store_key_mask(shape.fingerprint);
  }
  const bool queued = !store_from(h, fn).put_is_cheap();
  if (queued && !writer_) {
    const uint64_t want = write_queue_bytes_ == 0 ? kDefaultWriteQueueBytes : write_queue_bytes_;
    const size_t slots = static_cast<size_t>(std::max<uint64_t>(1, want / block_.total));
    try {
      writer_ = make_host<TierWriter>(alloc_, slots, block_.total, alloc_);
    } catch (...) {
      if (num_tiers_ == 0) {
        alloc_.deallocate(tier_arrays_);  // nothing changed
        tier_arrays_ = nullptr;
        HostBytes(alloc_).swap(block_buf_);
      }
      throw;
    }
  }
  const uint32_t index = num_tiers_++;
  Tier& t = tiers_[index];
  t.handle = h;
  t.serial = serial;
  t.queued = queued;
  std::memset(&t.st, 0, sizeof t.st);
  t.st.struct_size = sizeof t.st;
  if (queued) writer_->add_store(index, h, serial);
}

kvp_pool_tier_stats Pool::tier_stats(uint32_t tier) const {
  if (tier >= num_tiers_)
    fail(KVP_ERR_INVALID_ARGUMENT, "kvp_pool_get_tier_stats: tier %u is out of range: the pool has %u tier(s)", tier,
         num_tiers_);
  kvp_pool_tier_stats st = tiers_[tier].st;
  st.num_tiers = num_tiers_;
  if (tiers_[tier].queued) {
    st.blocks_written += writer_->written(tier);
    st.bytes_written += writer_->bytes(tier);
    st.errors += writer_->errors(tier);
  }
  return st;
}

void Pool::flush_tiers(uint32_t flags) {
  const char* fn = "kvp_pool_flush_tiers";
  if ((flags & ~KVP_POOL_FLUSH_CACHED) != 0) fail(KVP_ERR_INVALID_ARGUMENT, "%s: unknown flags 0x%x", fn, flags);
  if (num_tiers_ == 0) return;
  if ((flags & KVP_POOL_FLUSH_CACHED) != 0) {
    cache(fn).check_healthy(fn);
    int32_t chunk[256] = {};
    const size_t cap = std::min<size_t>(sizeof chunk / sizeof chunk[0], row_len_);
    size_t n = 0;
    const auto write_chunk = [&] {
      mark_held(chunk, n);
      for (size_t i = 0; i < n; ++i) write_back(chunk[i], nullptr, true);
      n = 0;
    };
    for (int32_t p = 1; p < num_pages_; ++p)
      if (pages_[p].indexed && (chunk[n++] = p, n == cap)) write_chunk();
    write_chunk();
  }
  if (writer_) writer_->flush();
}

void Pool::mark_held(const int32_t* pages, size_t n) noexcept {
  for (uint32_t t = 0; t < num_tiers_ && n > 0; ++t) {
    const uint8_t bit = static_cast<uint8_t>(1u << t);
    size_t m = 0;
    for (size_t i = 0; i < n; ++i)
      if ((pages_[pages[i]].stored & bit) == 0) tier_keys_[m++] = store_key(pages_[pages[i]].key);
    if (m == 0) continue;
    try {
      tier_store(tiers_[t], "kvp_pool_flush_tiers").exists(tier_keys_, m, found_);
    } catch (...) {
      ++tiers_[t].st.errors;  // nothing marked: the pages are written
      continue;
    }
    for (size_t i = 0, j = 0; i < n; ++i)
      if ((pages_[pages[i]].stored & bit) == 0 && found_[j++] != 0) pages_[pages[i]].stored |= bit;
  }
}

void Pool::fill_block(int32_t p, const BlockShape& bs, const BlockId& id, const int32_t* tokens, uint8_t* buf,
                      kvp_stream stream, const char* fn) {
  Cache& c = cache(fn);
  const size_t at = static_cast<size_t>(p) * bs.page_bytes;
  if (c.device_type() == KVP_DEVICE_CPU) {  // one pass: each piece is summed right after its copy
    BlockSum sum = block_start(bs, buf, id, tokens);
    for (int64_t l = 0; l < c.num_layers(); ++l)
      copy_summed(bs.layer(buf, l), c.layer_data(l) + at, bs.page_bytes, sum);
    block_finish(bs, buf, sum);
    return;
  }
  for (int64_t l = 0; l < c.num_layers(); ++l)
    c.backend().copy_to_host(bs.layer(buf, l), c.layer_data(l) + at, bs.page_bytes, stream, true, fn);
  block_seal(bs, buf, id, tokens);
}

void Pool::write_back(int32_t p, kvp_stream stream, bool wait) noexcept {
  Page& pg = pages_[p];
  uint32_t now = 0, queued = 0;  // the tiers lacking the block, by how they are written
  for (uint32_t t = 0; t < num_tiers_; ++t)
    if ((pg.stored & (1u << t)) == 0) (tiers_[t].queued ? queued : now) |= 1u << t;
  uint8_t* buf = nullptr;
  if (queued != 0) {
    try {
      buf = writer_->staging(wait);
    } catch (...) {
      buf = nullptr;  // waiting failed (a system error): as good as no room
    }
    if (buf == nullptr) {
      count_tiers(queued, &kvp_pool_tier_stats::dropped);
      queued = 0;
    }
  }
  if ((now | queued) == 0) return;
  try {
    if (buf == nullptr) {
      resize_for_write(block_buf_, block_.total);  // a memory store may have handed back less (or none)
      buf = block_buf_.data();
    }
    fill_block(p, block_, BlockId{store_key(pg.key), store_key(pg.parent), pg.salt},
               tokens_ + static_cast<size_t>(p) * static_cast<size_t>(page_size_), buf, stream,
               "kvp_pool (writing an evicted page to the tiers)");
  } catch (...) {
    count_tiers(now | queued, &kvp_pool_tier_stats::errors);  // the staging block stays free
    return;
  }
  const StoreKey key = store_key(pg.key);
  // The last synchronous tier may take block_buf_ itself (nothing else reads it afterwards).
  const uint32_t adopt = queued == 0 ? 1u << (31 - __builtin_clz(now)) : 0;
  for (uint32_t t = 0; t < num_tiers_; ++t) {
    if ((now & (1u << t)) == 0) continue;
    Tier& tier = tiers_[t];
    try {
      Store& store = tier_store(tier, "kvp_pool (writing an evicted page to a tier)");
      if ((1u << t) == adopt) store.put_adopt(key, block_buf_);
      else store.put(key, buf, block_.total);
      ++tier.st.blocks_written;
      tier.st.bytes_written += static_cast<int64_t>(block_.total);
      pg.stored |= static_cast<uint8_t>(1u << t);
    } catch (...) {
      ++tier.st.errors;
    }
  }
  if (queued == 0) return;
  try {
    writer_->submit(key, queued);
    pg.stored |= static_cast<uint8_t>(queued);
  } catch (...) {
    count_tiers(queued, &kvp_pool_tier_stats::errors);
  }
}

void Pool::count_tiers(uint32_t tiers, int64_t kvp_pool_tier_stats::*counter) noexcept {
  for (uint32_t t = 0; t < num_tiers_; ++t)
    if ((tiers & (1u << t)) != 0) ++(tiers_[t].st.*counter);
}

size_t Pool::restore(int32_t* r, const int32_t* tokens, size_t from, size_t max_hits, uint64_t salt, uint32_t shard,
                     size_t nkeys) noexcept {
  const size_t S = static_cast<size_t>(page_size_);
  // The prompt's chained keys, exactly as the prefix index computes them, from the last page
  // matched in memory (its key is the first restored block's parent: restore_page).
  Key128 parent = from == 0 ? Key128{} : pages_[r[from - 1]].key;
  if (from > 0) tier_keys_[from - 1] = store_key(parent);
  for (size_t i = from; i < max_hits; ++i) {
    const Key128 k = i < nkeys ? scratch_keys_[i] : compute_key(parent, tokens + i * S, salt);
    tier_keys_[i] = store_key(k);
    parent = k;
  }
  HostPtr<HostPipe> pipe;  // a device cache's, taken when the first block is found
  bool piped = false;
  size_t next = from;
  for (uint32_t ti = 0; ti < num_tiers_ && next < max_hits; ++ti) {
    Tier& t = tiers_[ti];
    const size_t asked = max_hits - next;
    size_t got = 0;
    try {
      Store& store = tier_store(t, "kvp_pool_add_sequence");
      store.exists(tier_keys_ + next, asked, found_);
      if (found_[0] && !piped) {
        piped = true;
        pipe = block_pipe();
      }
      while (got < asked && found_[got] && restore_page(store, t, next + got, tokens, salt, shard, r, pipe.get()))
        ++got;
    } catch (...) {
      ++t.st.errors;
    }
    t.st.lookups += static_cast<int64_t>(asked);
    t.st.hits += static_cast<int64_t>(got);
    t.st.misses += static_cast<int64_t>(asked - got);
    t.st.restored_tokens += static_cast<int64_t>(got * S);
    next += got;
  }
  if (pipe) {
    try {
      pipe->wait(0);  // the one synchronisation of the uploads (before the pages are used)
      pipe->wait(1);
    } catch (...) {
      ++tiers_[0].st.errors;  // the cache records the device error too (kvp_cache_get_error)
    }
  }
  return next - from;
}

HostPtr<HostPipe> Pool::block_pipe() const {
  const char* fn = "kvp_pool_add_sequence";
  // Slots of a whole block: the backend's shared pinned buffers when a block fits them (2 MiB on
  // CUDA), else two pinned buffers of a block each, allocated for this call.
  return cache(fn).backend().host_pipe(fn, block_.total);
}

bool Pool::restore_page(Store& store, Tier& t, size_t i, const int32_t* tokens, uint64_t salt, uint32_t shard,
                        int32_t* r, HostPipe* pipe) {
  const size_t S = static_cast<size_t>(page_size_);
  const BlockId id{tier_keys_[i], i == 0 ? store_key(Key128{}) : tier_keys_[i - 1], salt};
  const int32_t* want = tokens + i * S;
  const bool in_place = pipe == nullptr && store.blocks_in_memory();  // no pipe: a host cache
  const int32_t p = in_place ? restore_in_place(store, t, id, want, shard)
                             : restore_copied(store, t, id, want, shard, pipe, static_cast<int>(i & 1));
  if (p < 0) return false;
  std::memcpy(tokens_ + static_cast<size_t>(p) * S, want, sizeof(int32_t) * S);
  Page& pg = pages_[p];
  pg.key = index_key(id.key);
  pg.parent = index_key(id.parent);
  pg.salt = salt;
  pg.key_valid = 1;
  pg.stored = static_cast<uint8_t>(1u << (&t - tiers_));  // that tier holds it: not written there again
  index_insert(p);  // false only if another page holds the key (a collision): kept, not indexed
  r[i] = p;
  return true;
}

int32_t Pool::restore_in_place(Store& store, Tier& t, const BlockId& id, const int32_t* tokens, uint32_t shard) {
  Cache& c = cache("kvp_pool_add_sequence");
  bool ok = false;
  if (!store.read_in_place(id.key, true, [&](const uint8_t* block, size_t size) {
        t.st.bytes_read += static_cast<int64_t>(size);
        ok = block_check(block_, block, size, id, tokens) == nullptr;
      }))
    return -1;  // gone since exists
  if (!ok) {
    ++t.st.rejected;
    return -1;
  }
  // The page after the check, outside the store's lock: taking it may evict a page into this
  // store. The second look copies the block while summing it again (from the cache), so that a
  // block replaced meanwhile is never restored unchecked.
  const int32_t p = alloc_page(shard);
  bool found = false;
  try {
    ok = false;
    found = store.read_in_place(id.key, false, [&](const uint8_t* block, size_t size) {
      BlockSum sum;
      ok = block_check_head(block_, block, size, id, tokens, &sum) == nullptr && load_summed(c, block, p, sum);
    });
  } catch (...) {
    release_page(p);
    throw;
  }
  if (ok) return p;
  if (found) ++t.st.rejected;  // replaced by a bad block since the check (by another thread)
  release_page(p);             // or dropped since: a store bound below two blocks
  return -1;
}

int32_t Pool::restore_copied(Store& store, Tier& t, const BlockId& id, const int32_t* tokens, uint32_t shard,
                             HostPipe* pipe, int k) {
  const char* fn = "kvp_pool_add_sequence";
  if (pipe != nullptr) pipe->wait(k);  // the upload of the page before last from this slot is done
  uint8_t* buf = pipe != nullptr ? pipe->slot(k) : read_buf_;
  size_t size = 0;
  try {
    if (!store.get(id.key, buf, block_.total, &size)) return -1;  // gone since exists
  } catch (const error& e) {
    if (!block_fault(e.code())) throw;
    ++t.st.rejected;
    return -1;
  }
  t.st.bytes_read += static_cast<int64_t>(size);
  if (block_check(block_, buf, size, id, tokens) != nullptr) {
    ++t.st.rejected;
    return -1;
  }
  Cache& c = cache(fn);
  const int32_t p = alloc_page(shard);
  try {
    const size_t pb = block_.page_bytes;
    for (int64_t l = 0; l < c.num_layers(); ++l) {
      uint8_t* dst = c.layer_data(l) + static_cast<size_t>(p) * pb;
      const uint8_t* src = block_.layer(buf, l);
      if (pipe != nullptr) pipe->upload(k, static_cast<size_t>(src - buf), dst, pb);
      else copy_nontemporal(dst, src, pb);  // host memory; a whole block, not read back soon
    }
    if (pipe != nullptr) pipe->fence(k);
  } catch (...) {
    release_page(p);
    throw;
  }
  return p;
}

bool Pool::load_summed(Cache& c, const uint8_t* block, int32_t p, BlockSum sum) const noexcept {
  const size_t pb = block_.page_bytes;
  for (int64_t l = 0; l < c.num_layers(); ++l)
    copy_summed(c.layer_data(l) + static_cast<size_t>(p) * pb, block_.layer(block, l), pb, sum);
  return block_sum_holds(block_, block, sum);
}

}  // namespace kvp::detail
