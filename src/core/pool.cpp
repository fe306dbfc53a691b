#include "core/pool.hpp"

#include <xxhash.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "backend/backend.hpp"
#include "core/cache.hpp"
#include "core/math.hpp"
#include "util/error.hpp"
#include "util/options.hpp"

namespace kvp::detail {

// ---------------------------------------------------------------------------------------------
// Page copies within a cache.

void copy_cache_pages(Cache& cache, const int32_t* src, const int32_t* dst, size_t count,
                      kvp_stream stream, const char* function) {
  cache.refuse_shard(function, true);
  if (count == 0) return;
  const int64_t P = cache.layout().num_pages;
  for (size_t i = 0; i < count; ++i) {
    if (src[i] < 0 || src[i] >= P)
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: src_pages[%zu] = %d is out of range [0, %lld)", function, i,
           src[i], static_cast<long long>(P));
    if (dst[i] < 0 || dst[i] >= P)
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: dst_pages[%zu] = %d is out of range [0, %lld)", function, i,
           dst[i], static_cast<long long>(P));
  }
  if (count > 1 || src[0] == dst[0]) {
    // Destinations must be distinct and must not be sources (otherwise the result would depend on
    // the copy order, and concurrent device copies would race).
    HostVector<int32_t> d(dst, dst + count, cache.allocator()), s(src, src + count, cache.allocator());
    std::sort(d.begin(), d.end());
    std::sort(s.begin(), s.end());
    for (size_t i = 1; i < count; ++i)
      if (d[i] == d[i - 1]) fail(KVP_ERR_INVALID_ARGUMENT, "%s: destination page %d appears twice in dst_pages", function, d[i]);
    for (size_t i = 0, j = 0; i < count && j < count;) {
      if (d[i] == s[j])
        fail(KVP_ERR_INVALID_ARGUMENT, "%s: page %d is both a source and a destination", function, d[i]);
      if (d[i] < s[j]) ++i; else ++j;
    }
  }
  cache.check_healthy(function);
  const size_t pb = cache.page_bytes();
  Backend& be = cache.backend();
  size_t i = 0;
  while (i < count) {
    size_t run = 1;
    while (i + run < count && src[i + run] == src[i] + static_cast<int32_t>(run) &&
           dst[i + run] == dst[i] + static_cast<int32_t>(run))
      ++run;
    for (int64_t l = 0; l < cache.num_layers(); ++l) {
      uint8_t* base = cache.layer_data(l);
      be.copy_within(base + static_cast<size_t>(dst[i]) * pb, base + static_cast<size_t>(src[i]) * pb, run * pb,
                     stream);
    }
    i += run;
  }
}

// ---------------------------------------------------------------------------------------------
// Creation.

Pool::Shape Pool::shape_of(const Cache& cache, const kvp_pool_options& o, const char* fn) {
  const kvp_config& cfg = cache.config();
  Shape sh;
  sh.P = cache.layout().num_pages;
  sh.S = cache.layout().page_size;
  if (sh.P < 2)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: the cache has %lld page(s); a pool needs at least 2 (page 0 is the null page)",
         fn, static_cast<long long>(sh.P));
  if ((o.flags & ~KVP_POOL_FLAG_NO_PREFIX_CACHE) != 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: unknown flags 0x%x in kvp_pool_options.flags", fn, o.flags);
  check_host_allocator(o.allocator, fn);
  sh.prefix = (o.flags & KVP_POOL_FLAG_NO_PREFIX_CACHE) == 0;
  sh.write_queue_bytes = o.write_queue_bytes;
  sh.max_len = cfg.max_model_length;
  sh.row_len = static_cast<size_t>(cdiv(sh.max_len, sh.S));
  uint64_t m = o.max_sequences;
  if (m == 0) {
    if (cfg.max_num_reqs > 0) m = static_cast<uint64_t>(cfg.max_num_reqs);
    else m = static_cast<uint64_t>(std::max<int64_t>(1, cache.layout().max_num_seqs));
    m = std::min<uint64_t>(m, kIndexMask);
  }
  if (m < 1 || m > kIndexMask)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: max_sequences %llu is out of range [1, %u]", fn,
         static_cast<unsigned long long>(m), kIndexMask);
  const int64_t entries = checked_mul(static_cast<int64_t>(m), static_cast<int64_t>(sh.row_len),
                                      "max_sequences x pages per sequence");
  if (entries > (int64_t{1} << 31))
    fail(KVP_ERR_INVALID_ARGUMENT,
         "%s: max_sequences %llu x %zu pages per sequence (max_model_length %lld / page_size %lld) = %lld page-table "
         "entries exceeds 2^31", fn, static_cast<unsigned long long>(m), sh.row_len, static_cast<long long>(sh.max_len),
         static_cast<long long>(sh.S), static_cast<long long>(entries));
  sh.m = static_cast<uint32_t>(m);
  sh.dp = static_cast<uint32_t>(std::max<int64_t>(1, cfg.data_parallel_size));
  if (sh.P % sh.dp != 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: the cache's %lld pages do not split into data_parallel_size %u shards", fn,
         static_cast<long long>(sh.P), sh.dp);
  sh.table_cap = 16;
  while (sh.table_cap < static_cast<size_t>(2 * sh.P)) sh.table_cap <<= 1;
  return sh;
}

// Carves every array out of one block from the allocator.
void Pool::allocate_arrays(const Shape& sh) {
  size_t off = 0;
  auto take = [&off](size_t count, size_t elem, size_t align) {
    off = checked_bytes_add(off, align - 1, "pool arrays") / align * align;
    const size_t at = off;
    off = checked_bytes_add(off, checked_bytes(count, elem, "pool arrays"), "pool arrays");
    return at;
  };
  const size_t P = static_cast<size_t>(sh.P), S = static_cast<size_t>(sh.S);
  const size_t o_pages = take(P, sizeof(Page), alignof(Page));
  const size_t o_tokens = take(checked_bytes(P, S, "pool token slots"), sizeof(int32_t), 64);
  const size_t o_table = take(sh.table_cap, sizeof(int32_t), 64);
  const size_t o_seqs = take(sh.m, sizeof(Seq), alignof(Seq));
  const size_t o_rows = take(checked_bytes(sh.m, sh.row_len, "pool page tables"), sizeof(int32_t), 64);
  const size_t o_ring = take(sh.m, sizeof(uint32_t), 64);
  const size_t o_scratch = take(sh.row_len, sizeof(int32_t), 64);
  const size_t o_keys = take(sh.row_len, sizeof(Key128), 64);
  const size_t o_shards = take(sh.dp, sizeof(Shard), alignof(Shard));
  const size_t o_hash = take(checked_bytes_add(4, S, "pool hash buffer"), sizeof(int32_t), 64);
  arrays_ = alloc_.allocate(checked_bytes_add(off, 63, "pool arrays") / 64 * 64, 64);
  uint8_t* base = static_cast<uint8_t*>(arrays_);
  pages_ = reinterpret_cast<Page*>(base + o_pages);
  tokens_ = reinterpret_cast<int32_t*>(base + o_tokens);
  table_ = reinterpret_cast<int32_t*>(base + o_table);
  seqs_ = reinterpret_cast<Seq*>(base + o_seqs);
  rows_ = reinterpret_cast<int32_t*>(base + o_rows);
  slot_ring_ = reinterpret_cast<uint32_t*>(base + o_ring);
  scratch_pages_ = reinterpret_cast<int32_t*>(base + o_scratch);
  scratch_keys_ = reinterpret_cast<Key128*>(base + o_keys);
  shards_ = reinterpret_cast<Shard*>(base + o_shards);
  hash_buf_ = base + o_hash;
}

Pool::Pool(kvp_cache* cache_handle, const Shape& sh, const HostAllocator& alloc) : alloc_(alloc) {
  allocate_arrays(sh);
  cache_handle_ = cache_handle;
  cache_serial_ = handle_serial(cache_handle);
  prefix_enabled_ = sh.prefix;
  write_queue_bytes_ = sh.write_queue_bytes;
  num_pages_ = sh.P;
  page_size_ = sh.S;
  max_length_ = static_cast<uint64_t>(sh.max_len);
  row_len_ = sh.row_len;
  max_seqs_ = sh.m;
  dp_ = sh.dp;
  shard_pages_ = sh.P / sh.dp;
  table_mask_ = sh.table_cap - 1;
  std::memset(tokens_, 0, sizeof(int32_t) * static_cast<size_t>(sh.P) * static_cast<size_t>(sh.S));
  std::memset(rows_, 0, sizeof(int32_t) * sh.m * sh.row_len);
  for (size_t i = 0; i < sh.table_cap; ++i) table_[i] = -1;
  for (uint32_t i = 0; i < sh.m; ++i) {
    seqs_[i] = Seq{0, 0, 0, 1, 0, 0, 0};
    slot_ring_[i] = i;
  }
  ring_head_ = 0;
  ring_count_ = sh.m;
  // Page 0 is the null page; every shard's pages go on its free list so that its lowest page is
  // handed out first.
  pages_[0] = Page{Key128{}, Key128{}, 0, 0, -1, -1, kNull, 0, 0, 0};
  for (uint32_t d = 0; d < dp_; ++d) {
    Shard& sd = shards_[d];
    sd.first = static_cast<int32_t>(d == 0 ? 1 : d * shard_pages_);
    sd.end = static_cast<int32_t>((d + 1) * shard_pages_);
    sd.free_head = sd.lru_head = sd.lru_tail = -1;
    sd.num_seqs = 0;
    sd.n_free = sd.end - sd.first;
    sd.n_evictable = 0;
    for (int32_t p = sd.end - 1; p >= sd.first; --p) {
      pages_[p] = Page{Key128{}, Key128{}, 0, 0, -1, -1, kFree, 0, 0, 0};
      pages_[p].next = sd.free_head;
      sd.free_head = p;
    }
  }
}

Pool::~Pool() {
  writer_.reset();  // drains the write queue and joins the writer threads
  alloc_.deallocate(arrays_);
  alloc_.deallocate(tier_arrays_);
}

Cache& Pool::cache(const char* fn) const {
  return handle_get(cache_handle_, cache_serial_, fn, "the pool's cache was destroyed");
}

kvp_pool* create_pool(kvp_cache* cache_handle, const kvp_pool_options* opts, const char* fn) {
  Cache& cache = cache_from(cache_handle, fn);
  cache.refuse_shard(fn, true);
  cache.check_healthy(fn);
  kvp_pool_options o;
  std::memset(&o, 0, sizeof o);
  if (opts != nullptr) o = read_versioned(opts, kPoolOptionsV1Size, KVP_POOL_OPTIONS_VERSION, fn, "kvp_pool_options");
  const Pool::Shape sh = Pool::shape_of(cache, o, fn);
  const HostAllocator alloc(o.allocator);
  return handle_new<kvp_pool>(make_host<Pool>(alloc, cache_handle, sh, alloc));
}

// ---------------------------------------------------------------------------------------------
// Sequence ids.

uint32_t Pool::resolve(kvp_seq_id id, const char* function) const {
  const uint32_t slot = id.id & kIndexMask;
  const uint32_t gen = id.id >> kIndexBits;
  if (id.id == 0 || gen == 0 || slot >= max_seqs_)
    fail(KVP_ERR_NOT_FOUND, "%s: sequence id 0x%08x is not a sequence of this pool", function, id.id);
  const Seq& s = seqs_[slot];
  if (!s.alive || s.gen != gen)
    fail(KVP_ERR_NOT_FOUND, "%s: sequence id 0x%08x is stale: its sequence was freed (slot %u is at generation %u%s)",
         function, id.id, slot, s.gen, s.alive ? "" : ", unused");
  return slot;
}

// ---------------------------------------------------------------------------------------------
// Page lifecycle.

void Pool::free_push(int32_t p) noexcept {
  Page& pg = pages_[p];
  pg.state = kFree;
  pg.key_valid = 0;
  pg.stored = 0;
  Shard& sd = shards_[shard_of(p)];
  pg.prev = -1;
  pg.next = sd.free_head;
  sd.free_head = p;
  ++sd.n_free;
}

void Pool::lru_push_tail(int32_t p) noexcept {
  Page& pg = pages_[p];
  Shard& sd = shards_[shard_of(p)];
  pg.state = kEvictable;
  pg.next = -1;
  pg.prev = sd.lru_tail;
  if (sd.lru_tail >= 0) pages_[sd.lru_tail].next = p;
  else sd.lru_head = p;
  sd.lru_tail = p;
  ++sd.n_evictable;
}

void Pool::lru_remove(int32_t p) noexcept {
  Page& pg = pages_[p];
  Shard& sd = shards_[shard_of(p)];
  if (pg.prev >= 0) pages_[pg.prev].next = pg.next;
  else sd.lru_head = pg.next;
  if (pg.next >= 0) pages_[pg.next].prev = pg.prev;
  else sd.lru_tail = pg.prev;
  pg.prev = pg.next = -1;
  --sd.n_evictable;
}

void Pool::alloc_pages(uint32_t shard, size_t n, int32_t* out, kvp_stream stream) {
  const Shard& sd = shards_[shard];
  if (num_tiers_ > 0 && static_cast<int64_t>(n) > sd.n_free)
    write_back_lru(shard, n - static_cast<size_t>(sd.n_free), stream);
  for (size_t k = 0; k < n; ++k) out[k] = take_page(shard);
}

void Pool::write_back_lru(uint32_t shard, size_t n, kvp_stream stream) noexcept {
  int32_t chunk[256];
  int32_t p = shards_[shard].lru_head;
  while (n > 0 && p >= 0) {
    size_t m = 0;
    for (; m < sizeof chunk / sizeof chunk[0] && m < n && p >= 0; p = pages_[p].next) chunk[m++] = p;
    write_back(chunk, m, stream, false);
    n -= m;
  }
}

int32_t Pool::take_page(uint32_t shard) {
  Shard& sd = shards_[shard];
  int32_t p = sd.free_head;
  if (p >= 0) {
    sd.free_head = pages_[p].next;
    --sd.n_free;
  } else {
    p = sd.lru_head;
    if (p < 0) fail(KVP_ERR_INTERNAL, "kvp_pool: no page left after the availability check (please report)");
    lru_remove(p);
    index_remove(p);
    ++evictions_;
  }
  Page& pg = pages_[p];
  pg.state = kUsed;
  pg.ref = 1;
  pg.key_valid = 0;
  pg.stored = 0;
  pg.prev = pg.next = -1;
  ++n_used_;
  return p;
}

void Pool::acquire_page(int32_t p) noexcept {
  Page& pg = pages_[p];
  if (pg.state == kEvictable) {
    lru_remove(p);
    pg.state = kUsed;
    ++n_used_;
  }
  ++pg.ref;
}

void Pool::release_page(int32_t p) noexcept {
  Page& pg = pages_[p];
  if (--pg.ref != 0) return;
  --n_used_;
  if (pg.indexed) lru_push_tail(p);
  else free_push(p);
}

// ---------------------------------------------------------------------------------------------
// Prefix index.

int32_t Pool::index_lookup(const Key128& k, uint32_t shard) const noexcept {
  size_t i = home(k);
  for (;;) {
    const int32_t p = table_[i];
    if (p < 0) return -1;
    if (pages_[p].key == k && shard_of(p) == shard) return p;
    i = (i + 1) & table_mask_;
  }
}

bool Pool::index_insert(int32_t p) noexcept {
  const Key128& k = pages_[p].key;
  size_t i = home(k);
  for (;;) {
    const int32_t q = table_[i];
    if (q < 0) break;
    if (pages_[q].key == k && shard_of(q) == shard_of(p)) return false;
    i = (i + 1) & table_mask_;
  }
  table_[i] = p;
  pages_[p].indexed = 1;
  ++n_indexed_;
  return true;
}

void Pool::index_remove(int32_t p) noexcept {
  if (!pages_[p].indexed) return;
  size_t i = home(pages_[p].key);
  while (table_[i] != p) i = (i + 1) & table_mask_;  // present by construction
  // Backward-shift deletion keeps every probe chain unbroken without tombstones.
  size_t j = i;
  for (;;) {
    j = (j + 1) & table_mask_;
    const int32_t q = table_[j];
    if (q < 0) break;
    const size_t h = home(pages_[q].key);
    // Move q into the hole at i unless its home lies cyclically in (i, j].
    const bool in_range = (i <= j) ? (i < h && h <= j) : (i < h || h <= j);
    if (!in_range) {
      table_[i] = q;
      i = j;
    }
  }
  table_[i] = -1;
  pages_[p].indexed = 0;
  --n_indexed_;
}

Key128 Pool::compute_key(const Key128& parent, const int32_t* tokens, uint64_t salt) {
  std::memcpy(hash_buf_, &parent.lo, 8);
  std::memcpy(hash_buf_ + 8, &parent.hi, 8);
  const size_t tb = sizeof(int32_t) * static_cast<size_t>(page_size_);
  std::memcpy(hash_buf_ + 16, tokens, tb);
  const XXH128_hash_t h = XXH3_128bits_withSeed(hash_buf_, 16 + tb, salt);
  return Key128{h.low64, h.high64};
}

// Moves a sequence's computed watermark forward to n (≤ length), giving keys to the pages that
// become full and computed, and indexing them.
void Pool::mark_computed(uint32_t slot, uint64_t n) {
  Seq& s = seqs_[slot];
  if (n <= s.computed) return;
  const uint64_t S = static_cast<uint64_t>(page_size_);
  const uint64_t first = s.computed / S, last = n / S;  // pages [first, last) become full + computed
  s.computed = n;
  if (!prefix_enabled_) return;
  int32_t* r = row(slot);
  for (uint64_t i = first; i < last; ++i) {
    Page& pg = pages_[r[i]];
    if (!pg.key_valid) {
      const Key128 parent = i == 0 ? Key128{} : pages_[r[i - 1]].key;
      pg.key = compute_key(parent, tokens_ + static_cast<size_t>(r[i]) * S, s.salt);
      pg.parent = parent;
      pg.salt = s.salt;
      pg.key_valid = 1;
    }
    if (!pg.indexed) index_insert(r[i]);
  }
}

// ---------------------------------------------------------------------------------------------
// Operations.

// The longest indexed prefix of a prompt among the pages of one shard (at most max_hits pages),
// with the reused page ids in scratch_pages_. With shards, scratch_keys_ caches the prompt's
// chained keys for the walks of the other shards: the first `nkeys` are computed. (Without, the
// keys are not stored: one walk, and no extra memory traffic on a long prompt.)
Pool::Match Pool::match_prefix(const int32_t* tokens, size_t max_hits, uint64_t salt, uint32_t shard,
                               size_t& nkeys) {
  const size_t S = static_cast<size_t>(page_size_);
  Match m;
  int64_t hit_evictable = 0;
  size_t known = nkeys;
  Key128 parent{};
  for (size_t i = 0; i < max_hits; ++i) {
    const int32_t* t = tokens + i * S;
    Key128 key;
    if (i < known) {
      key = scratch_keys_[i];
    } else {
      key = compute_key(parent, t, salt);
      if (dp_ > 1) scratch_keys_[known++] = key;  // for the walks of the other shards
    }
    const int32_t p = index_lookup(key, shard);
    if (p < 0) break;
    const Page& pg = pages_[p];
    if (pg.salt != salt || pg.parent != parent ||
        std::memcmp(tokens_ + static_cast<size_t>(p) * S, t, sizeof(int32_t) * S) != 0)
      break;  // a hash collision: treat as a miss
    scratch_pages_[i] = p;
    if (pg.state == kEvictable) ++hit_evictable;
    ++m.hits;
    parent = key;
  }
  nkeys = known;
  m.free = shards_[shard].n_free;
  m.evictable = shards_[shard].n_evictable - hit_evictable;
  return m;
}

// The shard of a new sequence: the one holding the longest indexed prefix of the prompt that can
// also hold the rest (ties: more free plus evictable pages, then the lowest index), else the one
// with the most free plus evictable pages (ties: the lowest index).
uint32_t Pool::place(const int32_t* tokens, size_t max_hits, uint64_t salt, size_t need_pages, size_t& nkeys) {
  uint32_t roomiest = 0, best = 0;
  size_t best_hits = 0;
  for (uint32_t d = 0; d < dp_; ++d) {
    const int64_t avail = shards_[d].available();
    if (avail > shards_[roomiest].available()) roomiest = d;
    if (max_hits == 0) continue;
    const Match m = match_prefix(tokens, max_hits, salt, d, nkeys);
    if (m.hits == 0 || static_cast<int64_t>(need_pages - m.hits) > m.available()) continue;
    if (m.hits > best_hits || (m.hits == best_hits && avail > shards_[best].available())) {
      best = d;
      best_hits = m.hits;
    }
  }
  return best_hits > 0 ? best : roomiest;
}

// " in data-parallel shard s of dp" for the messages of a sharded pool, "" for an unsharded one.
const char* Pool::shard_note(uint32_t shard, char (&buf)[48]) const noexcept {
  if (dp_ == 1) return "";
  std::snprintf(buf, sizeof buf, " in data-parallel shard %u of %u", shard, dp_);
  return buf;
}

kvp_seq_id Pool::add_sequence(const int32_t* tokens, size_t n, uint64_t salt, uint32_t flags,
                              size_t* reused_out) {
  const char* fn = "kvp_pool_add_sequence";
  const bool forced = (flags & KVP_POOL_ADD_FLAG_SHARD) != 0;
  const uint32_t known = KVP_POOL_ADD_FLAG_REUSE_ALL | KVP_POOL_ADD_FLAG_SHARD | (forced ? 0xFFFF0000u : 0u);
  if ((flags & ~known) != 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: unknown flags 0x%x", fn, flags);
  if (forced && (flags >> 16) >= dp_)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: shard %u is out of range: the pool has %u data-parallel shard(s)", fn,
         flags >> 16, dp_);
  if (n > 0 && tokens == nullptr) fail(KVP_ERR_INVALID_ARGUMENT, "%s: 'tokens' must not be NULL when num_tokens is %zu", fn, n);
  if (n > max_length_)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: num_tokens %zu exceeds max_model_length %llu", fn, n,
         static_cast<unsigned long long>(max_length_));
  if (ring_count_ == 0)
    fail(KVP_ERR_OUT_OF_PAGES, "%s: all %u sequence slots are in use (raise kvp_pool_options.max_sequences)", fn,
         max_seqs_);
  const uint64_t S = static_cast<uint64_t>(page_size_);
  const size_t need_pages = static_cast<size_t>(cdiv_u(n, S));
  size_t max_hits = 0;
  if (prefix_enabled_ && n > 0) max_hits = (flags & KVP_POOL_ADD_FLAG_REUSE_ALL) ? n / S : (n - 1) / S;

  // Placement and the longest cached prefix in that shard (read-only).
  size_t nkeys = 0;
  const uint32_t shard = forced ? flags >> 16 : dp_ == 1 ? 0 : place(tokens, max_hits, salt, need_pages, nkeys);
  const Match m = match_prefix(tokens, max_hits, salt, shard, nkeys);
  const size_t hits = m.hits;
  const int64_t fresh = static_cast<int64_t>(need_pages - hits);
  if (fresh > m.available()) {
    char buf[48];
    fail(KVP_ERR_OUT_OF_PAGES,
         "%s: needs %lld new page(s) for %zu tokens (%zu reused), but only %lld are free or evictable "
         "(%lld free, %lld evictable)%s",
         fn, static_cast<long long>(fresh), n, hits * S, static_cast<long long>(m.available()),
         static_cast<long long>(m.free), static_cast<long long>(m.evictable), shard_note(shard, buf));
  }

  // Commit.
  const uint32_t slot = take_slot();
  Seq& s = seqs_[slot];
  s.salt = salt;
  s.length = n;
  s.shard = shard;
  ++shards_[shard].num_seqs;
  int32_t* r = row(slot);
  for (size_t i = 0; i < hits; ++i) {
    r[i] = scratch_pages_[i];
    acquire_page(r[i]);
  }
  const size_t restored = num_tiers_ > 0 && hits < max_hits ? restore(r, tokens, hits, max_hits, salt, shard, nkeys) : 0;
  const size_t reused = (hits + restored) * S;
  s.computed = reused;
  alloc_pages(shard, need_pages - hits - restored, r + hits + restored);
  for (size_t i = hits + restored; i < need_pages; ++i) {
    const size_t begin = i * S, cnt = std::min<size_t>(S, n - begin);
    std::memcpy(tokens_ + static_cast<size_t>(r[i]) * S, tokens + begin, sizeof(int32_t) * cnt);
  }
  prompt_tokens_ += static_cast<int64_t>(n);
  reused_tokens_ += static_cast<int64_t>(reused);
  if (reused_out != nullptr) *reused_out = reused;
  return kvp_seq_id{(s.gen << kIndexBits) | slot};
}

void Pool::append(kvp_seq_id id, const int32_t* tokens, size_t n, kvp_stream stream) {
  const char* fn = "kvp_pool_append";
  const uint32_t slot = resolve(id, fn);
  Seq& s = seqs_[slot];
  if (n > 0 && tokens == nullptr) fail(KVP_ERR_INVALID_ARGUMENT, "%s: 'tokens' must not be NULL when num_tokens is %zu", fn, n);
  if (n > max_length_ - s.length)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: appending %zu token(s) to a sequence of %llu would exceed max_model_length %llu",
         fn, n, static_cast<unsigned long long>(s.length), static_cast<unsigned long long>(max_length_));
  Cache& cache = this->cache(fn);
  cache.check_healthy(fn);
  const uint64_t S = static_cast<uint64_t>(page_size_);
  const uint64_t len = s.length;
  int32_t* r = row(slot);
  const bool partial_tail = (len % S) != 0 && n > 0;
  const int32_t tail = partial_tail ? r[len / S] : -1;
  const bool cow = partial_tail && pages_[tail].ref > 1;
  const int64_t fresh = static_cast<int64_t>(cdiv_u(len + n, S) - cdiv_u(len, S)) + (cow ? 1 : 0);
  const Shard& sd = shards_[s.shard];
  if (fresh > sd.available()) {
    char buf[48];
    fail(KVP_ERR_OUT_OF_PAGES,
         "%s: needs %lld new page(s) (%s), but only %lld are free or evictable (%lld free, %lld evictable)%s", fn,
         static_cast<long long>(fresh), cow ? "including a copy-on-write of the shared tail page" : "no copy",
         static_cast<long long>(sd.available()), static_cast<long long>(sd.n_free),
         static_cast<long long>(sd.n_evictable), shard_note(s.shard, buf));
  }

  if (cow) {
    int32_t q = -1;
    alloc_pages(s.shard, 1, &q, stream);
    try {
      copy_cache_pages(cache, &tail, &q, 1, stream, fn);
    } catch (...) {
      release_page(q);
      throw;
    }
    std::memcpy(tokens_ + static_cast<size_t>(q) * S, tokens_ + static_cast<size_t>(tail) * S,
                sizeof(int32_t) * (len % S));
    r[len / S] = q;
    release_page(tail);
    ++cow_copies_;
  }
  // Every token already in the sequence now counts as computed.
  mark_computed(slot, len);
  if (partial_tail && !cow) {
    // Only this sequence holds the tail: it is written in place, so it loses its key.
    Page& pg = pages_[tail];
    if (pg.indexed) index_remove(tail);
    pg.key_valid = 0;
    pg.stored = 0;
  }
  const uint64_t first_new = cdiv_u(len, S);
  alloc_pages(s.shard, static_cast<size_t>(cdiv_u(len + n, S) - first_new), r + first_new, stream);
  uint64_t pos = len;
  size_t done = 0;
  while (done < n) {
    const uint64_t i = pos / S, off = pos % S;
    const size_t cnt = std::min<size_t>(S - off, n - done);
    std::memcpy(tokens_ + static_cast<size_t>(r[i]) * S + off, tokens + done, sizeof(int32_t) * cnt);
    done += cnt;
    pos += cnt;
  }
  s.length = len + n;
}

void Pool::set_computed(kvp_seq_id id, size_t n) {
  const char* fn = "kvp_pool_set_computed";
  const uint32_t slot = resolve(id, fn);
  if (n > seqs_[slot].length)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: num_tokens %zu exceeds the sequence's length %llu", fn, n,
         static_cast<unsigned long long>(seqs_[slot].length));
  mark_computed(slot, n);
}

void Pool::truncate(kvp_seq_id id, size_t new_length) {
  const char* fn = "kvp_pool_truncate";
  const uint32_t slot = resolve(id, fn);
  Seq& s = seqs_[slot];
  if (new_length > s.length)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: new_length %zu exceeds the sequence's length %llu", fn, new_length,
         static_cast<unsigned long long>(s.length));
  const uint64_t S = static_cast<uint64_t>(page_size_);
  const size_t keep = static_cast<size_t>(cdiv_u(new_length, S));
  int32_t* r = row(slot);
  for (size_t i = static_cast<size_t>(cdiv_u(s.length, S)); i > keep; --i) {
    release_page(r[i - 1]);
    r[i - 1] = 0;
  }
  s.length = new_length;
  if (s.computed > new_length) s.computed = new_length;
}

void Pool::fork(kvp_seq_id parent, uint32_t k, kvp_seq_id* children) {
  const char* fn = "kvp_pool_fork";
  const uint32_t ps = resolve(parent, fn);
  if (k > 0 && children == nullptr)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: 'children_out' must not be NULL when num_children is %u", fn, k);
  if (k > ring_count_)
    fail(KVP_ERR_OUT_OF_PAGES, "%s: %u children requested but only %u of %u sequence slots are free", fn, k,
         ring_count_, max_seqs_);
  if (k == 0) return;
  const Seq& par = seqs_[ps];
  const size_t np = static_cast<size_t>(cdiv_u(par.length, static_cast<uint64_t>(page_size_)));
  const int32_t* pr = row(ps);
  for (size_t i = 0; i < np; ++i) pages_[pr[i]].ref += k;
  shards_[par.shard].num_seqs += k;
  for (uint32_t c = 0; c < k; ++c) {
    const uint32_t slot = take_slot();
    Seq& s = seqs_[slot];
    s.salt = par.salt;
    s.length = par.length;
    s.computed = par.computed;
    s.shard = par.shard;
    std::memcpy(row(slot), pr, sizeof(int32_t) * np);
    children[c] = kvp_seq_id{(s.gen << kIndexBits) | slot};
  }
}

// Takes the oldest free sequence slot (FIFO, so a freed slot's generation ages before reuse) and
// marks it alive. The caller has checked that a slot is free.
uint32_t Pool::take_slot() {
  const uint32_t slot = slot_ring_[ring_head_];
  ring_head_ = (ring_head_ + 1) % max_seqs_;
  --ring_count_;
  ++n_seqs_;
  seqs_[slot].alive = 1;
  return slot;
}

void Pool::free_sequence(kvp_seq_id id) {
  const uint32_t slot = resolve(id, "kvp_pool_free_sequence");
  Seq& s = seqs_[slot];
  int32_t* r = row(slot);
  for (size_t i = static_cast<size_t>(cdiv_u(s.length, static_cast<uint64_t>(page_size_))); i > 0; --i) {
    release_page(r[i - 1]);
    r[i - 1] = 0;
  }
  --shards_[s.shard].num_seqs;
  s.alive = 0;
  s.length = s.computed = 0;
  s.gen = s.gen >= kMaxGen ? 1 : s.gen + 1;
  slot_ring_[(ring_head_ + ring_count_) % max_seqs_] = slot;
  ++ring_count_;
  --n_seqs_;
}

void Pool::clear_prefix_cache() noexcept {
  for (size_t i = 0; i <= table_mask_; ++i) {
    const int32_t p = table_[i];
    if (p < 0) continue;
    table_[i] = -1;
    Page& pg = pages_[p];
    pg.indexed = 0;
    if (pg.state == kEvictable) {
      lru_remove(p);
      free_push(p);
    }
  }
  n_indexed_ = 0;
}

// ---------------------------------------------------------------------------------------------
// Queries.

void Pool::get_length(kvp_seq_id id, size_t* length, size_t* computed) const {
  const uint32_t slot = resolve(id, "kvp_pool_get_sequence_length");
  if (length != nullptr) *length = static_cast<size_t>(seqs_[slot].length);
  if (computed != nullptr) *computed = static_cast<size_t>(seqs_[slot].computed);
}

void Pool::get_page_table(kvp_seq_id id, int32_t* out, size_t capacity, size_t* count) const {
  const char* fn = "kvp_pool_get_page_table";
  if (count == nullptr) fail(KVP_ERR_INVALID_ARGUMENT, "%s: 'count_out' must not be NULL", fn);
  if (capacity > 0 && out == nullptr)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: 'pages_out' must not be NULL when capacity is %zu", fn, capacity);
  const uint32_t slot = resolve(id, fn);
  const size_t np = static_cast<size_t>(cdiv_u(seqs_[slot].length, static_cast<uint64_t>(page_size_)));
  *count = np;
  if (capacity < np)
    fail(KVP_ERR_BUFFER_TOO_SMALL, "%s: the sequence has %zu page(s) but capacity is %zu", fn, np, capacity);
  if (np > 0) std::memcpy(out, row(slot), sizeof(int32_t) * np);
  for (size_t i = np; i < capacity; ++i) out[i] = 0;
}

void Pool::get_slots(kvp_seq_id id, size_t start, size_t count, int32_t* out) const {
  const char* fn = "kvp_pool_get_slots";
  if (count > 0 && out == nullptr)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: 'slots_out' must not be NULL when count is %zu", fn, count);
  const uint32_t slot = resolve(id, fn);
  const uint64_t len = seqs_[slot].length;
  if (start > len || count > len - start)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: positions [%zu, %zu + %zu) are past the sequence's length %llu", fn, start,
         start, count, static_cast<unsigned long long>(len));
  const uint64_t S = static_cast<uint64_t>(page_size_);
  if (count > 0 && static_cast<uint64_t>(num_pages_) * S > static_cast<uint64_t>(INT32_MAX))
    fail(KVP_ERR_UNSUPPORTED, "%s: num_pages x page_size = %llu slots do not fit in int32", fn,
         static_cast<unsigned long long>(static_cast<uint64_t>(num_pages_) * S));
  const int32_t* r = row(slot);
  for (size_t i = 0; i < count; ++i) {
    const uint64_t pos = start + i;
    out[i] = static_cast<int32_t>(static_cast<uint64_t>(r[pos / S]) * S + pos % S);
  }
}

void Pool::get_batch_request(kvp_seq_id id, kvp_batch_request* out) const {
  const char* fn = "kvp_pool_get_batch_request";
  if (out == nullptr) fail(KVP_ERR_INVALID_ARGUMENT, "%s: 'out' must not be NULL", fn);
  const uint32_t slot = resolve(id, fn);
  const Seq& s = seqs_[slot];
  kvp_batch_request r;
  std::memset(&r, 0, sizeof r);
  r.num_computed = static_cast<int64_t>(s.computed);
  r.num_scheduled = static_cast<int64_t>(s.length - s.computed);
  r.num_pages = static_cast<int64_t>(cdiv_u(s.length, static_cast<uint64_t>(page_size_)));
  r.page_ids = r.num_pages > 0 ? row(slot) : nullptr;
  *out = r;
}

void Pool::get_page_state(int32_t page, uint32_t* ref, uint32_t* flags) const {
  if (page < 0 || page >= num_pages_)
    fail(KVP_ERR_INVALID_ARGUMENT, "kvp_pool_get_page_state: page %d is out of range [0, %lld)", page,
         static_cast<long long>(num_pages_));
  const Page& pg = pages_[page];
  uint32_t f = 0;
  if (pg.state == kNull) f |= KVP_PAGE_FLAG_NULL;
  if (pg.state == kFree) f |= KVP_PAGE_FLAG_FREE;
  if (pg.indexed) f |= KVP_PAGE_FLAG_INDEXED;
  if (ref != nullptr) *ref = pg.ref;
  if (flags != nullptr) *flags = f;
}

kvp_pool_stats Pool::stats() const noexcept {
  kvp_pool_stats st;
  std::memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  st.max_sequences = max_seqs_;
  st.page_size = page_size_;
  st.max_pages_per_sequence = static_cast<int64_t>(row_len_);
  st.total_pages = num_pages_ - 1;
  for (uint32_t d = 0; d < dp_; ++d) {
    st.free_pages += shards_[d].n_free;
    st.evictable_pages += shards_[d].n_evictable;
  }
  st.used_pages = n_used_;
  st.indexed_pages = n_indexed_;
  st.num_sequences = n_seqs_;
  st.prompt_tokens = prompt_tokens_;
  st.reused_tokens = reused_tokens_;
  st.evictions = evictions_;
  st.cow_copies = cow_copies_;
  return st;
}

uint32_t Pool::sequence_shard(kvp_seq_id id) const { return seqs_[resolve(id, "kvp_pool_get_sequence_shard")].shard; }

kvp_pool_shard_stats Pool::shard_stats(uint32_t shard) const {
  if (shard >= dp_)
    fail(KVP_ERR_INVALID_ARGUMENT, "kvp_pool_get_shard_stats: shard %u is out of range: the pool has %u data-parallel shard(s)",
         shard, dp_);
  const Shard& sd = shards_[shard];
  kvp_pool_shard_stats st;
  std::memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  st.num_shards = dp_;
  st.first_page = sd.first;
  st.end_page = sd.end;
  st.total_pages = sd.end - sd.first;
  st.free_pages = sd.n_free;
  st.evictable_pages = sd.n_evictable;
  st.used_pages = st.total_pages - sd.n_free - sd.n_evictable;
  st.num_sequences = sd.num_seqs;
  return st;
}

// What check_invariants() collects on its way through the lists, sequences and pages.
struct Pool::Scan {
  HostVector<uint32_t> holders;    // page-table entries per page
  HostVector<uint8_t> seen;        // 1 = on the free list, 2 = on the LRU
  HostVector<uint32_t> last_slot;  // duplicate detection per sequence
  int64_t nf = 0, ne = 0, nu = 0, ni = 0;
  Scan(size_t P, const HostAllocator& a) : holders(P, 0, a), seen(P, 0, a), last_slot(P, UINT32_MAX, a) {}
};

namespace {
[[noreturn]] void violated(const char* what) {
  fail(KVP_ERR_INTERNAL, "kvp_pool_check_invariants: invariant violated: %s", what);
}
constexpr const char* kCheckFn = "kvp_pool_check_invariants";
}  // namespace

// Every shard's free list and LRU: every page on at most one list, once, in the right state and
// in the shard's range; the shard's counters match its lists.
void Pool::scan_lists(Scan& sc) const {
  if (pages_[0].state != kNull || pages_[0].ref != 0 || pages_[0].indexed) violated("the null page 0 changed state");
  for (uint32_t d = 0; d < dp_; ++d) scan_shard_lists(d, sc);
}

void Pool::scan_shard_lists(uint32_t d, Scan& sc) const {
  const char* fn = kCheckFn;
  const int64_t P = num_pages_;
  const Shard& sd = shards_[d];
  if (sd.first != (d == 0 ? 1 : static_cast<int64_t>(d) * shard_pages_) || sd.end != (d + 1) * shard_pages_)
    fail(KVP_ERR_INTERNAL, "%s: invariant violated: shard %u has range [%d, %d)", fn, d, sd.first, sd.end);
  int64_t nf = 0, ne = 0;
  for (int32_t p = sd.free_head; p >= 0; p = pages_[p].next) {
    if (p < sd.first || p >= sd.end)
      fail(KVP_ERR_INTERNAL, "%s: invariant violated: free list of shard %u holds page %d", fn, d, p);
    if (sc.seen[p]) fail(KVP_ERR_INTERNAL, "%s: invariant violated: page %d is on a list twice (cycle?)", fn, p);
    sc.seen[p] = 1;
    if (pages_[p].state != kFree || pages_[p].ref != 0 || pages_[p].indexed)
      fail(KVP_ERR_INTERNAL, "%s: invariant violated: page %d on the free list has state %u, refcount %u, indexed %u",
           fn, p, pages_[p].state, pages_[p].ref, pages_[p].indexed);
    if (++nf > P) violated("free list longer than the pool");
  }
  int32_t prev = -1;
  for (int32_t p = sd.lru_head; p >= 0; p = pages_[p].next) {
    if (p < sd.first || p >= sd.end) fail(KVP_ERR_INTERNAL, "%s: invariant violated: LRU of shard %u holds page %d", fn, d, p);
    if (sc.seen[p])
      fail(KVP_ERR_INTERNAL, "%s: invariant violated: page %d is on two lists or twice on the LRU", fn, p);
    sc.seen[p] = 2;
    if (pages_[p].prev != prev) fail(KVP_ERR_INTERNAL, "%s: invariant violated: LRU back link of page %d", fn, p);
    if (pages_[p].state != kEvictable || pages_[p].ref != 0 || !pages_[p].indexed)
      fail(KVP_ERR_INTERNAL, "%s: invariant violated: page %d on the LRU has state %u, refcount %u, indexed %u", fn,
           p, pages_[p].state, pages_[p].ref, pages_[p].indexed);
    prev = p;
    if (++ne > P) violated("LRU longer than the pool");
  }
  if (prev != sd.lru_tail) violated("LRU tail does not match its last element");
  if (nf != sd.n_free || ne != sd.n_evictable)
    fail(KVP_ERR_INTERNAL, "%s: invariant violated: shard %u counts free %lld / evictable %lld, its lists hold %lld / %lld",
         fn, d, static_cast<long long>(sd.n_free), static_cast<long long>(sd.n_evictable), static_cast<long long>(nf),
         static_cast<long long>(ne));
  sc.nf += nf;
  sc.ne += ne;
}

// The sequences: lengths, page tables (each page once per sequence), keys of computed pages.
void Pool::scan_sequences(Scan& sc) const {
  const char* fn = kCheckFn;
  const int64_t P = num_pages_;
  const uint64_t S = static_cast<uint64_t>(page_size_);
  uint32_t live = 0;
  HostVector<uint32_t> per_shard(dp_, 0, HostAllocator());
  for (uint32_t sl = 0; sl < max_seqs_; ++sl) {
    const Seq& s = seqs_[sl];
    if (s.gen == 0 || s.gen > kMaxGen) fail(KVP_ERR_INTERNAL, "%s: invariant violated: slot %u generation %u", fn, sl, s.gen);
    if (!s.alive) continue;
    ++live;
    if (s.shard >= dp_) fail(KVP_ERR_INTERNAL, "%s: invariant violated: sequence slot %u is in shard %u of %u", fn, sl, s.shard, dp_);
    ++per_shard[s.shard];
    if (s.length > max_length_ || s.computed > s.length)
      fail(KVP_ERR_INTERNAL, "%s: invariant violated: sequence slot %u has length %llu, computed %llu (max %llu)", fn,
           sl, static_cast<unsigned long long>(s.length), static_cast<unsigned long long>(s.computed),
           static_cast<unsigned long long>(max_length_));
    const size_t np = static_cast<size_t>(cdiv_u(s.length, S));
    const int32_t* r = row(sl);
    for (size_t i = 0; i < np; ++i) {
      const int32_t p = r[i];
      if (p <= 0 || p >= P)
        fail(KVP_ERR_INTERNAL, "%s: invariant violated: sequence slot %u page %zu is %d", fn, sl, i, p);
      if (shard_of(p) != s.shard)
        fail(KVP_ERR_INTERNAL, "%s: invariant violated: sequence slot %u of shard %u holds page %d of shard %u", fn, sl,
             s.shard, p, shard_of(p));
      if (sc.last_slot[p] == sl)
        fail(KVP_ERR_INTERNAL, "%s: invariant violated: sequence slot %u holds page %d twice", fn, sl, p);
      sc.last_slot[p] = sl;
      ++sc.holders[p];
      if (prefix_enabled_ && i < s.computed / S && !pages_[p].key_valid)
        fail(KVP_ERR_INTERNAL, "%s: invariant violated: computed full page %d of slot %u has no key", fn, p, sl);
    }
  }
  if (live != n_seqs_ || live + ring_count_ != max_seqs_) violated("sequence counts do not add up");
  for (uint32_t d = 0; d < dp_; ++d)
    if (per_shard[d] != shards_[d].num_seqs)
      fail(KVP_ERR_INTERNAL, "%s: invariant violated: shard %u counts %u sequence(s) but holds %u", fn, d,
           shards_[d].num_seqs, per_shard[d]);
}

// Every page: refcount = holders, state matches its list, indexed pages found by their key; the
// counters match what the lists say.
void Pool::check_pages(Scan& sc) const {
  const char* fn = kCheckFn;
  const int64_t P = num_pages_;
  for (int64_t p = 1; p < P; ++p) {
    const Page& pg = pages_[p];
    if (pg.ref != sc.holders[p])
      fail(KVP_ERR_INTERNAL, "%s: invariant violated: page %lld has refcount %u but %u holder(s)", fn,
           static_cast<long long>(p), pg.ref, sc.holders[p]);
    if (pg.state == kUsed) {
      if (pg.ref == 0 || sc.seen[p])
        fail(KVP_ERR_INTERNAL, "%s: invariant violated: used page %lld has refcount %u / is on a list", fn,
             static_cast<long long>(p), pg.ref);
      ++sc.nu;
    } else if ((pg.state == kFree && sc.seen[p] != 1) || (pg.state == kEvictable && sc.seen[p] != 2) ||
               (pg.state != kFree && pg.state != kEvictable)) {
      fail(KVP_ERR_INTERNAL, "%s: invariant violated: page %lld has state %u but is not on its list", fn,
           static_cast<long long>(p), pg.state);
    }
    if (pg.indexed) {
      ++sc.ni;
      if (!pg.key_valid || index_lookup(pg.key, shard_of(static_cast<int32_t>(p))) != static_cast<int32_t>(p))
        fail(KVP_ERR_INTERNAL, "%s: invariant violated: indexed page %lld is not found by its key", fn,
             static_cast<long long>(p));
    }
  }
  if (sc.nu != n_used_)
    fail(KVP_ERR_INTERNAL, "%s: invariant violated: counter used %lld, pages say %lld", fn,
         static_cast<long long>(n_used_), static_cast<long long>(sc.nu));
  if (sc.nf + sc.ne + sc.nu != P - 1)
    fail(KVP_ERR_INTERNAL, "%s: invariant violated: free %lld + evictable %lld + used %lld != %lld usable pages", fn,
         static_cast<long long>(sc.nf), static_cast<long long>(sc.ne), static_cast<long long>(sc.nu),
         static_cast<long long>(P - 1));
}

// The prefix index holds exactly the indexed pages.
void Pool::check_index(const Scan& sc) const {
  const char* fn = kCheckFn;
  int64_t nt = 0;
  for (size_t i = 0; i <= table_mask_; ++i) {
    const int32_t p = table_[i];
    if (p < 0) continue;
    ++nt;
    if (p == 0 || p >= num_pages_ || !pages_[p].indexed)
      fail(KVP_ERR_INTERNAL, "%s: invariant violated: index slot %zu holds page %d which is not indexed", fn, i, p);
  }
  if (nt != sc.ni || sc.ni != n_indexed_)
    fail(KVP_ERR_INTERNAL, "%s: invariant violated: index holds %lld entries, %lld pages flagged, counter %lld", fn,
         static_cast<long long>(nt), static_cast<long long>(sc.ni), static_cast<long long>(n_indexed_));
}

void Pool::check_invariants() const {
  // Diagnostic scratch from the process default: the pool's own allocator serves only what it
  // allocated at creation (operations never allocate from it).
  Scan sc(static_cast<size_t>(num_pages_), HostAllocator());
  scan_lists(sc);
  scan_sequences(sc);
  check_pages(sc);
  check_index(sc);
}

}  // namespace kvp::detail
