// The pool's storage tiers (include/kvpages/pool.h, "Storage tiers"): evicted prefix pages are
// written as blocks (core/store_block) to every tier that does not hold them yet (write-through),
// at once where the store's put is cheap and through the writer threads (core/tier_writer) where
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
#include "util/thread_pool.hpp"

namespace kvp::detail {
namespace {

// A store's complaint about a block itself (damaged file, block of another size): a rejected
// block, not a failing store.
bool block_fault(kvp_status code) noexcept {
  return code == KVP_ERR_BUFFER_TOO_SMALL || (code >= KVP_ERR_FORMAT_MAGIC && code <= KVP_ERR_FORMAT_MISMATCH);
}

constexpr const char* kWriteBackFn = "kvp_pool (writing an evicted page to the tiers)";

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
    HostVector<HostBytes> out{StdAllocator<HostBytes>(alloc_)}, in{StdAllocator<HostBytes>(alloc_)};
    out.reserve(kMaxBlockGroup);
    in.reserve(kMaxBlockGroup - 1);
    for (size_t i = 0; i < kMaxBlockGroup; ++i) out.emplace_back(alloc_);
    for (size_t i = 1; i < kMaxBlockGroup; ++i) in.emplace_back(alloc_);
    out[0].resize(shape.total);  // the others when a group first needs them
    auto* mem = static_cast<uint8_t*>(alloc_.allocate(checked_bytes_add(found, row_len_, "tiers"), 64));
    block_bufs_.swap(out);
    read_bufs_.swap(in);
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
      // Several writer threads only where they can put at once (a first slow tier that cannot
      // makes the writer put one block at a time for good): one per CPU thread of the group where
      // a put is a copy into the page cache, kMaxBlockGroup where each put waits for the disk.
      const Store& s = store_from(h, fn);
      const size_t threads =
          !s.concurrent_io() ? 1 : std::min(slots, s.put_waits_for_device() ? kMaxBlockGroup : thread_group());
      writer_ = make_host<TierWriter>(alloc_, slots, block_.total, threads, alloc_);
    } catch (...) {
      if (num_tiers_ == 0) {
        alloc_.deallocate(tier_arrays_);  // nothing changed
        tier_arrays_ = nullptr;
        HostVector<HostBytes>{StdAllocator<HostBytes>(alloc_)}.swap(block_bufs_);
        HostVector<HostBytes>{StdAllocator<HostBytes>(alloc_)}.swap(read_bufs_);
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
  if (queued) writer_->add_store(index, h, serial, store_from(h, fn).concurrent_io());
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
      write_back(chunk, n, nullptr, true);
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

void Pool::fill_host_block(Cache& c, int32_t p, const BlockShape& bs, const BlockId& id, const int32_t* tokens,
                           uint8_t* buf) const noexcept {
  const size_t at = static_cast<size_t>(p) * bs.page_bytes;
  BlockSum sum = block_start(bs, buf, id, tokens);  // one pass: each piece is summed right after its copy
  for (int64_t l = 0; l < c.num_layers(); ++l) copy_summed(bs.layer(buf, l), c.layer_data(l) + at, bs.page_bytes, sum);
  block_finish(bs, buf, sum);
}

void Pool::fill_block(int32_t p, const BlockShape& bs, const BlockId& id, const int32_t* tokens, uint8_t* buf,
                      kvp_stream stream, const char* fn) {
  Cache& c = cache(fn);
  if (c.device_type() == KVP_DEVICE_CPU) return fill_host_block(c, p, bs, id, tokens, buf);
  const size_t at = static_cast<size_t>(p) * bs.page_bytes;
  for (int64_t l = 0; l < c.num_layers(); ++l)
    c.backend().copy_to_host(bs.layer(buf, l), c.layer_data(l) + at, bs.page_bytes, stream, true, fn);
  block_seal(bs, buf, id, tokens);
}

size_t Pool::thread_group() noexcept {
  return std::max<size_t>(1, std::min<size_t>(kMaxBlockGroup, static_cast<size_t>(ThreadPool::instance().max_threads())));
}

size_t Pool::write_group(const Cache* c) const noexcept {
  if (c == nullptr || c->device_type() != KVP_DEVICE_CPU) return 1;
  return writer_ ? std::min(thread_group(), writer_->slots()) : thread_group();
}

void Pool::write_back(const int32_t* pages, size_t n, kvp_stream stream, bool wait) noexcept {
  Cache* c = nullptr;
  try {
    c = &cache(kWriteBackFn);
  } catch (...) {
    c = nullptr;  // every block fails to fill (counted)
  }
  const size_t group = write_group(c);
  for (size_t i = 0; i < n; i += group) write_back_group(c, pages + i, std::min(group, n - i), stream, wait);
}

void Pool::write_back_group(Cache* c, const int32_t* pages, size_t n, kvp_stream stream, bool wait) noexcept {
  struct Out {
    uint32_t now = 0, queued = 0;  // the tiers lacking the block, by how they are written
    uint8_t* buf = nullptr;        // where its block is filled: a staging block, or block_bufs_[j]
    bool ok = false;               // filled
  } out[kMaxBlockGroup];
  size_t staged = 0;
  for (size_t j = 0; j < n; ++j) {
    Out& o = out[j];
    for (uint32_t t = 0; t < num_tiers_; ++t)
      if ((pages_[pages[j]].stored & (1u << t)) == 0) (tiers_[t].queued ? o.queued : o.now) |= 1u << t;
    if (o.queued != 0) {
      try {
        o.buf = writer_->staging(wait, staged);
      } catch (...) {
        o.buf = nullptr;  // waiting failed (a system error): as good as no room
      }
      if (o.buf == nullptr) {
        count_tiers(o.queued, &kvp_pool_tier_stats::dropped);
        o.queued = 0;
      } else {
        ++staged;
      }
    }
    if (o.buf != nullptr || o.now == 0) continue;
    try {
      resize_for_write(block_bufs_[j], block_.total);  // a memory store may have handed back less (or none)
      o.buf = block_bufs_[j].data();
    } catch (...) {
      count_tiers(o.now, &kvp_pool_tier_stats::errors);
      o.now = 0;
    }
  }
  const auto id_of = [this](const Page& pg) { return BlockId{store_key(pg.key), store_key(pg.parent), pg.salt}; };
  const auto tokens_of = [this](int32_t p) { return tokens_ + static_cast<size_t>(p) * static_cast<size_t>(page_size_); };
  if (c != nullptr && c->device_type() == KVP_DEVICE_CPU) {  // cannot fail: on several threads
    parallel_for_bytes(n, block_.total, [&](size_t j) {
      if (out[j].buf == nullptr) return;
      fill_host_block(*c, pages[j], block_, id_of(pages_[pages[j]]), tokens_of(pages[j]), out[j].buf);
      out[j].ok = true;
    });
  } else if (c != nullptr) {
    for (size_t j = 0; j < n; ++j) {
      if (out[j].buf == nullptr) continue;
      try {
        fill_block(pages[j], block_, id_of(pages_[pages[j]]), tokens_of(pages[j]), out[j].buf, stream, kWriteBackFn);
        out[j].ok = true;
      } catch (...) {
        out[j].ok = false;
      }
    }
  }
  bool submitting = true;  // staged blocks are submitted in order: one that is not ends the queueing
  for (size_t j = 0; j < n; ++j) {
    Out& o = out[j];
    if (o.buf == nullptr) continue;
    if (!o.ok) {
      count_tiers(o.now | o.queued, &kvp_pool_tier_stats::errors);  // its staging block stays free
      submitting = submitting && o.queued == 0;
      continue;
    }
    Page& pg = pages_[pages[j]];
    const StoreKey key = store_key(pg.key);
    put_now(pg, key, o.now, o.queued == 0 ? &block_bufs_[j] : nullptr, o.buf);
    if (o.queued == 0) continue;
    bool queued = submitting;
    if (queued) {
      try {
        writer_->submit(key, o.queued);
      } catch (...) {
        queued = false;
      }
    }
    if (queued) {
      pg.stored |= static_cast<uint8_t>(o.queued);
    } else {
      count_tiers(o.queued, &kvp_pool_tier_stats::errors);
      submitting = false;
    }
  }
}

void Pool::put_now(Page& pg, const StoreKey& key, uint32_t now, HostBytes* adopt, const uint8_t* buf) noexcept {
  const uint32_t last = now == 0 ? 0 : 1u << (31 - __builtin_clz(now));
  for (uint32_t t = 0; t < num_tiers_; ++t) {
    if ((now & (1u << t)) == 0) continue;
    Tier& tier = tiers_[t];
    try {
      Store& store = tier_store(tier, "kvp_pool (writing an evicted page to a tier)");
      if ((1u << t) == last && adopt != nullptr) store.put_adopt(key, *adopt);
      else store.put(key, buf, block_.total);
      ++tier.st.blocks_written;
      tier.st.bytes_written += static_cast<int64_t>(block_.total);
      pg.stored |= static_cast<uint8_t>(1u << t);
    } catch (...) {
      ++tier.st.errors;
    }
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
      // Groups of blocks on the library's threads where the cache is in host memory (no pipe)
      // and the store serves blocks in place or reads them at once; else one block at a time.
      const bool in_place = pipe == nullptr && store.blocks_in_memory();
      const size_t group = in_place ? kMaxBlockGroup : pipe == nullptr && store.concurrent_io() ? thread_group() : 0;
      while (got < asked && found_[got]) {
        if (group == 0) {
          if (!restore_copied(store, t, next + got, tokens, salt, shard, r, pipe.get(),
                              static_cast<int>((next + got) & 1)))
            break;
          ++got;
          continue;
        }
        size_t n = 1;
        while (n < group && got + n < asked && found_[got + n]) ++n;
        const size_t k = in_place ? restore_in_place(store, t, next + got, n, tokens, salt, shard, r)
                                  : restore_read_group(store, t, next + got, n, tokens, salt, shard, r);
        got += k;
        if (k < n) break;
      }
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

BlockId Pool::restore_id(size_t i, uint64_t salt) const noexcept {
  return BlockId{tier_keys_[i], i == 0 ? store_key(Key128{}) : tier_keys_[i - 1], salt};
}

void Pool::finish_restore(int32_t p, const Tier& t, size_t i, const int32_t* tokens, uint64_t salt,
                          int32_t* r) noexcept {
  const size_t S = static_cast<size_t>(page_size_);
  std::memcpy(tokens_ + static_cast<size_t>(p) * S, tokens + i * S, sizeof(int32_t) * S);
  const BlockId id = restore_id(i, salt);
  Page& pg = pages_[p];
  pg.key = index_key(id.key);
  pg.parent = index_key(id.parent);
  pg.salt = salt;
  pg.key_valid = 1;
  pg.stored = static_cast<uint8_t>(1u << (&t - tiers_));  // that tier holds it: not written there again
  index_insert(p);  // false only if another page holds the key (a collision): kept, not indexed
  r[i] = p;
}

size_t Pool::restore_in_place(Store& store, Tier& t, size_t i, size_t n, const int32_t* tokens, uint64_t salt,
                              uint32_t shard, int32_t* r) {
  const size_t S = static_cast<size_t>(page_size_);
  Cache& c = cache("kvp_pool_add_sequence");
  size_t heads = 0;  // the blocks whose heads checked out
  store.read_in_place([&](const auto& find) {
    for (; heads < n; ++heads) {
      const HostBytes* b = find(tier_keys_[i + heads], true);
      if (b == nullptr) return;  // gone since exists
      t.st.bytes_read += static_cast<int64_t>(b->size());
      BlockSum sum;
      if (block_check_head(block_, b->data(), b->size(), restore_id(i + heads, salt), tokens + (i + heads) * S, &sum) !=
          nullptr) {
        ++t.st.rejected;
        return;
      }
    }
  });
  if (heads == 0) return 0;
  int32_t* pages = r + i;
  alloc_pages(shard, heads, pages);
  uint8_t ok[kMaxBlockGroup] = {};
  size_t seen = 0;  // the blocks still there (a store bound below a group's blocks drops some)
  try {
    store.read_in_place([&](const auto& find) {
      const HostBytes* blocks[kMaxBlockGroup];
      while (seen < heads && (blocks[seen] = find(tier_keys_[i + seen], false)) != nullptr) ++seen;
      parallel_for_bytes(seen, block_.total, [&](size_t k) {
        const HostBytes& b = *blocks[k];
        BlockSum sum;
        ok[k] = block_check_head(block_, b.data(), b.size(), restore_id(i + k, salt), tokens + (i + k) * S, &sum) ==
                    nullptr &&
                load_summed(c, b.data(), pages[k], sum);
      });
    });
  } catch (...) {
    for (size_t k = heads; k-- > 0;) release_page(pages[k]);
    throw;
  }
  size_t good = 0;
  while (good < seen && ok[good]) ++good;
  if (good < seen) ++t.st.rejected;  // damaged, or replaced by a bad block since the first look
  for (size_t k = heads; k-- > good;) release_page(pages[k]);
  for (size_t k = 0; k < good; ++k) finish_restore(pages[k], t, i + k, tokens, salt, r);
  return good;
}

size_t Pool::restore_read_group(Store& store, Tier& t, size_t i, size_t n, const int32_t* tokens, uint64_t salt,
                                uint32_t shard, int32_t* r) {
  const size_t S = static_cast<size_t>(page_size_);
  Cache& c = cache("kvp_pool_add_sequence");
  uint8_t* bufs[kMaxBlockGroup] = {read_buf_};
  for (size_t k = 1; k < n; ++k) {
    resize_for_write(read_bufs_[k - 1], block_.total);
    bufs[k] = read_bufs_[k - 1].data();
  }
  struct Read {
    size_t size = 0;
    bool hit = false, ok = false;
    kvp_status failed = KVP_OK;  // what the store's get threw
  } rd[kMaxBlockGroup];
  parallel_for_bytes(n, block_.total, [&](size_t k) {
    const BlockId id = restore_id(i + k, salt);
    try {
      rd[k].hit = store.get(id.key, bufs[k], block_.total, &rd[k].size);
    } catch (const error& e) {
      rd[k].failed = e.code();
    } catch (...) {
      rd[k].failed = KVP_ERR_INTERNAL;
    }
    rd[k].ok = rd[k].hit && block_check(block_, bufs[k], rd[k].size, id, tokens + (i + k) * S) == nullptr;
  });
  size_t good = 0;
  while (good < n && rd[good].ok) ++good;
  for (size_t k = 0; k < n; ++k)
    if (rd[k].hit) t.st.bytes_read += static_cast<int64_t>(rd[k].size);
  if (good < n) {  // what ended the run: a miss counts nothing more, as one block at a time
    if (rd[good].hit || block_fault(rd[good].failed)) ++t.st.rejected;
    else if (rd[good].failed != KVP_OK) ++t.st.errors;
  }
  if (good == 0) return 0;
  int32_t* pages = r + i;
  alloc_pages(shard, good, pages);
  const size_t pb = block_.page_bytes;
  parallel_for_bytes(good, block_.total, [&](size_t k) {
    for (int64_t l = 0; l < c.num_layers(); ++l)
      copy_nontemporal(c.layer_data(l) + static_cast<size_t>(pages[k]) * pb, block_.layer(bufs[k], l), pb);
  });
  for (size_t k = 0; k < good; ++k) finish_restore(pages[k], t, i + k, tokens, salt, r);
  return good;
}

bool Pool::restore_copied(Store& store, Tier& t, size_t i, const int32_t* tokens, uint64_t salt, uint32_t shard,
                          int32_t* r, HostPipe* pipe, int k) {
  const char* fn = "kvp_pool_add_sequence";
  if (pipe != nullptr) pipe->wait(k);  // the upload of the page before last from this slot is done
  uint8_t* buf = pipe != nullptr ? pipe->slot(k) : read_buf_;
  const BlockId id = restore_id(i, salt);
  size_t size = 0;
  try {
    if (!store.get(id.key, buf, block_.total, &size)) return false;  // gone since exists
  } catch (const error& e) {
    if (!block_fault(e.code())) throw;
    ++t.st.rejected;
    return false;
  }
  t.st.bytes_read += static_cast<int64_t>(size);
  if (block_check(block_, buf, size, id, tokens + i * static_cast<size_t>(page_size_)) != nullptr) {
    ++t.st.rejected;
    return false;
  }
  Cache& c = cache(fn);
  int32_t p = -1;
  alloc_pages(shard, 1, &p);
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
  finish_restore(p, t, i, tokens, salt, r);
  return true;
}

bool Pool::load_summed(Cache& c, const uint8_t* block, int32_t p, BlockSum& sum) const noexcept {
  const size_t pb = block_.page_bytes;
  for (int64_t l = 0; l < c.num_layers(); ++l)
    copy_summed(c.layer_data(l) + static_cast<size_t>(p) * pb, block_.layer(block, l), pb, sum);
  return block_sum_holds(block_, block, sum);
}

}  // namespace kvp::detail
