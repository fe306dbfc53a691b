#include "core/serialize.hpp"

#include <cstring>

#include "core/config.hpp"
#include "core/dtype.hpp"
#include "core/math.hpp"
#include "core/serialize_transfer.hpp"
#include "util/checked.hpp"
#include "util/error.hpp"
#include "util/options.hpp"

namespace kvp::detail::ser {
namespace {

using u64 = unsigned long long;  // for printf

// Page ids of the whole cache (the blob's table, the caller's) made a shard's local ids, in place
// (a whole cache's, and the first data rank's, are their own).
void make_local(const Cache& cache, HostVector<int32_t>& ids) {
  const int32_t first = static_cast<int32_t>(cache.layout().page_begin);
  if (first != 0)
    for (int32_t& id : ids) id -= first;
}

// Ids unique and in the cache's pages (a shard's: its block): -1 or the first offending index
// (*dup: a duplicate; *bad: the id).
ptrdiff_t check_cache_ids(const Cache& cache, const int32_t* ids, size_t n, bool* dup, int32_t* bad) {
  const Layout& L = cache.layout();
  const ptrdiff_t at = check_ids(ids, n, L.page_begin + L.num_pages, dup, bad, cache.allocator());
  if (at >= 0) return at;
  for (size_t i = 0; i < n; ++i)
    if (ids[i] < L.page_begin) {
      *dup = false;
      *bad = ids[i];
      return static_cast<ptrdiff_t>(i);
    }
  return -1;
}

// Throws INVALID_ARGUMENT for bad ids of the cache, naming the argument `what`.
void require_cache_ids(const Cache& cache, const int32_t* ids, size_t n, const char* what, const char* fn) {
  bool dup = false;
  int32_t bad = 0;
  const ptrdiff_t at = check_cache_ids(cache, ids, n, &dup, &bad);
  if (at < 0) return;
  if (dup) fail(KVP_ERR_INVALID_ARGUMENT, "%s: page id %d appears more than once in %s", fn, bad, what);
  const Layout& L = cache.layout();
  fail(KVP_ERR_INVALID_ARGUMENT, "%s: %s[%td] = %d is out of range [%lld, %lld)%s", fn, what, at, bad,
       static_cast<long long>(L.page_begin), static_cast<long long>(L.page_begin + L.num_pages),
       L.page_begin + L.num_pages < L.global_pages || L.page_begin > 0 ? " (the pages of this shard)" : "");
}

// Throws for bad destination ids of deserialize_into.
void check_dst_ids(const Cache& cache, const int32_t* dst_ids, uint32_t n, const char* fn) {
  if (dst_ids == nullptr && n != 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: dst_page_ids is NULL but num_dst_page_ids is %u", fn, n);
  if (dst_ids != nullptr) require_cache_ids(cache, dst_ids, n, "dst_page_ids", fn);
}

// Throws FORMAT_MISMATCH when the blob holds another slice than the target (a shard's blob loads
// into the same shard; kvp_deserialize_shards_into re-shards).
void check_same_slice(const Cache& cache, const Parsed& p, const char* fn) {
  const ShardCoord &b = p.shard, &t = cache.shard();
  if (b.tp_rank == t.tp_rank && b.tp_size == t.tp_size && b.dp_rank == t.dp_rank && b.dp_size == t.dp_size) return;
  fail(KVP_ERR_FORMAT_MISMATCH,
       "%s: the blob holds slice tp %lld/%lld, dp %lld/%lld but the target cache is slice tp %lld/%lld, dp %lld/%lld; "
       "kvp_deserialize_shards_into loads blobs of other slices", fn, ll(b.tp_rank), ll(b.tp_size), ll(b.dp_rank),
       ll(b.dp_size), ll(t.tp_rank), ll(t.tp_size), ll(t.dp_rank), ll(t.dp_size));
}

// Throws FORMAT_MISMATCH when the blob's cache is not shaped like the target.
void check_same_shape(const Cache& cache, const Parsed& p, const int32_t* dst_ids, uint32_t n, const char* fn) {
  check_same_model(cache.config(), p.config, "the blob", false, fn);
  if (p.geo.page_bytes != cache.page_bytes())
    fail(KVP_ERR_FORMAT_MISMATCH, "%s: the blob's pages have %llu bytes but the target's have %zu", fn,
         (u64)p.geo.page_bytes, cache.page_bytes());
  if (dst_ids != nullptr && n != p.geo.num_stored)
    fail(KVP_ERR_FORMAT_MISMATCH, "%s: the blob holds %llu pages but %u destination page ids were given", fn,
         (u64)p.geo.num_stored, n);
}

}  // namespace

void check_same_model(const kvp_config& t, const kvp_config& b, const char* blob, bool same_pages, const char* fn) {
  const struct {
    const char* name;
    long long blob, target;
  } fields[] = {{"num_hidden_layers", b.num_hidden_layers, t.num_hidden_layers},
                {"num_kv_heads", b.num_kv_heads, t.num_kv_heads},
                {"k_headdim", b.k_headdim, t.k_headdim},
                {"v_headdim", b.v_headdim, t.v_headdim},
                {"page_size", b.page_size, t.page_size},
                {"num_pages", same_pages ? b.num_pages : 0, same_pages ? t.num_pages : 0}};
  for (const auto& f : fields)
    if (f.blob != f.target)
      fail(KVP_ERR_FORMAT_MISMATCH, "%s: %s's %s is %lld but the target cache's is %lld", fn, blob, f.name, f.blob,
           f.target);
  if (b.version != t.version)
    fail(KVP_ERR_FORMAT_MISMATCH, "%s: %s's layout is %s but the target cache's is %s", fn, blob,
         layout_name(b.version), layout_name(t.version));
  if (b.kvdtype != t.kvdtype)
    fail(KVP_ERR_FORMAT_MISMATCH, "%s: %s's dtype is %s but the target cache's is %s", fn, blob, dtype_name(b.kvdtype),
         dtype_name(t.kvdtype));
}

void check_declared_size(const Source& src, const Geometry& g, const char* fn) {
  uint64_t size = 0;
  if (!src.known_size(&size) || size == g.total_bytes) return;
  if (size < g.total_bytes)
    fail(KVP_ERR_FORMAT_TRUNCATED, "%s: truncated input: the header declares a blob of %llu bytes but the input has "
         "%llu", fn, (u64)g.total_bytes, (u64)size);
  fail(KVP_ERR_FORMAT_CORRUPT, "%s: %llu trailing bytes after the end of the blob (%llu bytes); the input must be "
       "exactly one blob", fn, (u64)(size - g.total_bytes), (u64)g.total_bytes);
}

namespace {

// Host or device bytes a new cache for `p` takes: each layer's buffer rounded up to its 64-byte
// alignment plus the bookkeeping of one allocation, and the page-id table.
uint64_t load_bytes(const Parsed& p) {
  constexpr size_t kLayerOverhead = 64;  // the layer's pointer and the allocator's header
  const size_t layer = checked_bytes_add(static_cast<size_t>(p.layout.layer_bytes), 63, "a layer") / 64 * 64;
  const size_t layers = checked_bytes(static_cast<size_t>(p.geo.num_layers),
                                      checked_bytes_add(layer, kLayerOverhead, "a layer"), "the layers");
  return checked_bytes_add(layers, checked_bytes(static_cast<size_t>(p.geo.num_stored), 4, "the page ids"),
                           "the cache");
}

// max_cache_bytes, or the default for 0: KVP_DESERIALIZE_DEFAULT_MAX_BYTES plus the input's size
// when it is known (a blob that carries every page loads with the default options).
uint64_t load_limit(const kvp_deserialize_options& o, const Source& src) {
  if (o.max_cache_bytes != 0) return o.max_cache_bytes;
  uint64_t size = 0;
  return KVP_DESERIALIZE_DEFAULT_MAX_BYTES + (src.known_size(&size) ? size : 0);
}

}  // namespace

Selection read_selection(const Cache& cache, const kvp_serialize_options* opts, const char* function) {
  Selection sel(cache.allocator());
  kvp_serialize_options o{};
  if (opts != nullptr)
    o = read_versioned(opts, sizeof(kvp_serialize_options), KVP_SERIALIZE_OPTIONS_VERSION, function,
                       "kvp_serialize_options");
  if ((o.flags & ~KVP_SERIALIZE_FLAG_NO_SYNC) != 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: kvp_serialize_options.flags 0x%x has bits this library does not know (only "
         "KVP_SERIALIZE_FLAG_NO_SYNC = 0x%x is defined)", function, o.flags, KVP_SERIALIZE_FLAG_NO_SYNC);
  sel.sync = (o.flags & KVP_SERIALIZE_FLAG_NO_SYNC) == 0;
  if (o.chunk_bytes != 0) {
    if (o.chunk_bytes < KVP_SERIALIZE_MIN_CHUNK_BYTES || o.chunk_bytes > KVP_SERIALIZE_MAX_CHUNK_BYTES)
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: chunk_bytes %llu is outside [%u, %u]", function, (u64)o.chunk_bytes,
           KVP_SERIALIZE_MIN_CHUNK_BYTES, KVP_SERIALIZE_MAX_CHUNK_BYTES);
    sel.chunk_bytes = o.chunk_bytes;
  }
  const Layout& L = cache.layout();  // page ids of the whole cache; a shard's are its block
  if (o.page_ids == nullptr) {
    if (o.num_page_ids != 0)
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: page_ids is NULL but num_page_ids is %u", function, o.num_page_ids);
    sel.ids.resize(static_cast<size_t>(L.num_pages));
    for (int64_t p = 0; p < L.num_pages; ++p) sel.ids[static_cast<size_t>(p)] = static_cast<int32_t>(L.page_begin + p);
    return sel;
  }
  require_cache_ids(cache, o.page_ids, o.num_page_ids, "page_ids", function);
  sel.ids.assign(o.page_ids, o.page_ids + o.num_page_ids);
  return sel;
}

Geometry geometry_of(const Cache& cache, const Selection& sel, const char* function) {
  return make_geometry(header_size_for(cache.config(), cache.shard()), static_cast<uint64_t>(cache.num_layers()),
                       sel.ids.size(), cache.page_bytes(), sel.chunk_bytes, KVP_ERR_INVALID_ARGUMENT, function);
}

void serialize(const Cache& cache, const Selection& sel, Sink& sink, const char* function) {
  cache.check_healthy(function);
  const Geometry g = geometry_of(cache, sel, function);
  // Device caches: get the pipe (which may refuse) before anything reaches the sink.
  const HostPtr<HostPipe> pipe = g.payload_bytes > 0 ? cache.backend().host_pipe(function) : nullptr;
  const size_t hs = static_cast<size_t>(g.header_size);
  encode_header(cache.config(), cache.shard(), g, sink.reserve(hs));
  sink.commit(hs);
  const size_t tb = static_cast<size_t>(g.table_bytes);
  encode_table(sel.ids, sink.reserve(tb + 8));
  sink.commit(tb + 8);
  if (cache.layout().page_begin == 0) {
    write_payload(cache, sel.ids, g, pipe.get(), sink);
    return;
  }
  HostVector<int32_t> local(sel.ids, cache.allocator());
  make_local(cache, local);
  write_payload(cache, local, g, pipe.get(), sink);
}

void serialize_to_file(const Cache& cache, const Selection& sel, const char* path, const char* function) {
  cache.check_healthy(function);
  AtomicFile file(path, function, AtomicFile::synced_if(sel.sync));
  FileSink sink(file, cache.allocator());
  serialize(cache, sel, sink, function);
  file.commit();
}

kvp_cache* deserialize_new(Source& src, const kvp_deserialize_options* opts, const char* function) {
  kvp_deserialize_options o{};
  if (opts != nullptr)
    o = read_versioned(opts, sizeof(kvp_deserialize_options), KVP_DESERIALIZE_OPTIONS_VERSION, function,
                       "kvp_deserialize_options");
  if (o.flags != 0 || o._reserved != 0)
    fail(KVP_ERR_UNSUPPORTED, "%s: kvp_deserialize_options.flags and _reserved must be 0", function);
  const HostAllocator alloc;  // before the cache exists: the process default
  Parsed p(alloc);
  read_header(src, p, function);
  check_declared_size(src, p.geo, function);
  const uint64_t need = load_bytes(p), limit = load_limit(o, src);
  if (need > limit)
    fail(KVP_ERR_FORMAT_MISMATCH, "%s: loading the blob needs %llu bytes (%llu layers), more than max_cache_bytes "
         "%llu%s", function, (u64)need, (u64)p.geo.num_layers, (u64)limit,
         o.max_cache_bytes == 0 ? " (the default for 0; set max_cache_bytes to allow more)" : "");
  read_table(src, p, function);
  const ShardRanks ranks{p.shard.tp_rank, p.shard.dp_rank};
  const bool slice = (p.flags & KVP_FORMAT_FLAG_SHARD) != 0;
  // The ids are unique and in the cache's pages (read_table): as many as it has pages means the
  // payload writes every byte of every layer, so the cache need not start zeroed.
  const bool all_pages = p.ids.size() == static_cast<size_t>(p.layout.num_pages);
  kvp_cache* h = create_cache(&p.config, o.cache_options, slice ? &ranks : nullptr, function,
                              all_pages ? Backend::Fill::kOverwritten : Backend::Fill::kZero);
  try {
    const Cache& cache = cache_from(h, function);
    make_local(cache, p.ids);
    read_payload_checked(cache, p.ids, p.geo, src, function);
    src.expect_end(function);
  } catch (...) {
    handle_delete(h, function);
    throw;
  }
  return h;
}

void deserialize_into(Cache& cache, Source& src, const int32_t* dst_ids, uint32_t num_dst_ids, const char* function) {
  cache.check_healthy(function);
  check_dst_ids(cache, dst_ids, num_dst_ids, function);
  Parsed p(cache.allocator());
  read_header(src, p, function);
  check_declared_size(src, p.geo, function);
  check_same_shape(cache, p, dst_ids, num_dst_ids, function);
  check_same_slice(cache, p, function);
  read_table(src, p, function);
  const Layout& L = cache.layout();
  if (dst_ids == nullptr)
    for (size_t j = 0; j < p.ids.size(); ++j)
      if (p.ids[j] >= L.page_begin + L.num_pages)
        fail(KVP_ERR_FORMAT_MISMATCH, "%s: the blob's page %d does not exist in the target cache (%lld pages); "
             "pass dst_page_ids to load it elsewhere", function, p.ids[j], static_cast<long long>(L.num_pages));
  if (dst_ids != nullptr) p.ids.assign(dst_ids, dst_ids + num_dst_ids);
  make_local(cache, p.ids);

  if (RandomSource* in = src.random_access()) {
    // A file: pass 1 reads and checks every chunk through a small reused scratch, pass 2 reads
    // the chunks again, straight into the pages (docs/serialization-format.md, "Reading files").
    src.pos += p.geo.payload_bytes + 8 * p.geo.num_chunks;
    src.expect_end(function);
    verify_chunks_at(p.geo, *in, cache.allocator(), function);
    store_chunks_at(cache, p.ids, p.geo, *in, function);
    return;
  }
  // Pass 1: collect every chunk (pointers into in-memory input, or staged copies of a stream)
  // and verify all checksums before the target is touched.
  HostVector<const uint8_t*> chunks(cache.allocator());
  HostVector<HostVector<uint8_t>> staged(cache.allocator());
  for (uint64_t i = 0; i < p.geo.num_chunks; ++i) {
    const size_t len = static_cast<size_t>(p.geo.chunk_len(i));
    const uint8_t* q = src.view(len + 8, "a payload chunk");
    if (q == nullptr) {
      staged.emplace_back(cache.allocator());
      src.read_growing(staged.back(), len + 8, "a payload chunk");
      q = staged.back().data();
    }
    chunks.push_back(q);
  }
  src.expect_end(function);
  verify_chunks(p.geo, chunks, function);

  // Pass 2: everything checked; write the target.
  store_chunks(cache, p.ids, p.geo, chunks, function);
}

void inspect(Source& src, bool verify, kvp_serialized_info* out, const char* function) {
  check_struct_size(out->struct_size, sizeof(kvp_serialized_info), function, "kvp_serialized_info");
  const HostAllocator alloc;
  Parsed p(alloc);
  read_header(src, p, function);
  if (verify) {
    read_table(src, p, function);
    HostVector<uint8_t> buf(alloc);
    for (uint64_t i = 0; i < p.geo.num_chunks; ++i) {
      const size_t len = static_cast<size_t>(p.geo.chunk_len(i));
      const uint8_t* q = src.take(len + 8, buf, "a payload chunk");
      const uint64_t stored = get64(q + len), computed = XXH3_64bits_withSeed(q, len, kSeedChunk0 + i);
      if (!sum_ok(stored, computed)) chunk_mismatch(function, i, p.geo, stored, computed);
    }
    src.expect_end(function);
  }
  kvp_serialized_info info;
  std::memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  info.format_major = p.major;
  info.format_minor = p.minor;
  info.header_size = static_cast<uint32_t>(p.geo.header_size);
  info.flags = p.flags;
  info.writer_version = p.writer_version;
  info.header_checksum = p.header_checksum;
  info.num_stored_pages = p.geo.num_stored;
  if (!p.ids.empty()) {
    info.first_page_id = static_cast<uint64_t>(p.ids.front());
    info.last_page_id = static_cast<uint64_t>(p.ids.back());
  }
  info.page_bytes_per_layer = p.geo.page_bytes;
  info.chunk_bytes = p.geo.chunk_bytes;
  info.num_chunks = p.geo.num_chunks;
  info.payload_bytes = p.geo.payload_bytes;
  info.total_bytes = p.geo.total_bytes;
  info.config = p.config;
  info.shard = shard_info_of(p.layout, p.shard);
  std::memcpy(out, &info, sizeof info);
}

}  // namespace kvp::detail::ser
