// kvp_deserialize_shards_into: loads a set of blobs whose slices (of heads and pages) may differ
// from the target's — a TP 4 save into TP 2 shards or a whole cache, a whole save into shards —
// byte-exact. Every blob is read and checked (header, table, every chunk checksum) and the set's
// coverage of the target proven before the first byte of the target is written.
#include <algorithm>
#include <cstdio>
#include <cstring>

#include "core/config.hpp"
#include "core/math.hpp"
#include "core/serialize.hpp"
#include "core/serialize_transfer.hpp"
#include "util/error.hpp"

namespace kvp::detail::ser {
namespace {

using u64 = unsigned long long;  // for printf

// Random access to a blob in memory (the bounds were checked against the declared size).
class MemoryInput final : public RandomSource {
 public:
  MemoryInput(const void* p, size_t n) : p_(static_cast<const uint8_t*>(p)), n_(n) {}
  void read_at(uint64_t off, void* dst, size_t n, const char* what) override {
    if (off > n_ || n > n_ - off) fail(KVP_ERR_FORMAT_TRUNCATED, "truncated input while reading %s", what);
    std::memcpy(dst, p_ + off, n);
  }

 private:
  const uint8_t* p_;
  size_t n_;
};

// One blob of the set: its source, random access to it and what its header and table say.
struct Input {
  explicit Input(const HostAllocator& alloc) : parsed(alloc) {}
  HostPtr<BufferSource> buffer;
  HostPtr<FileSource> file;
  HostPtr<MemoryInput> memory;
  Parsed parsed;
  Source& source() { return buffer != nullptr ? static_cast<Source&>(*buffer) : *file; }
  RandomSource& random() { return memory != nullptr ? static_cast<RandomSource&>(*memory) : *file; }

  // `len` payload bytes from payload offset `off`, across chunk boundaries.
  void read_payload(uint64_t off, uint8_t* dst, uint64_t len) {
    const Geometry& g = parsed.geo;
    while (len > 0) {
      const uint64_t c = off / g.chunk_bytes, in = off % g.chunk_bytes;
      const uint64_t n = std::min(len, g.chunk_len(c) - in);
      random().read_at(g.chunk_offset(c) + in, dst, static_cast<size_t>(n), "a payload chunk");
      off += n;
      dst += n;
      len -= n;
    }
  }
};

void open_input(Input& in, const kvp_blob_ref& ref, uint32_t i, const Cache& cache, const char* fn) {
  if ((ref.data == nullptr) == (ref.path == nullptr))
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: blobs[%u] must give either data or path", fn, i);
  if (ref.data != nullptr) {
    in.buffer = make_host<BufferSource>(cache.allocator(), ref.data, ref.size, fn);
    in.memory = make_host<MemoryInput>(cache.allocator(), ref.data, ref.size);
  } else {
    in.file = make_host<FileSource>(cache.allocator(), ref.path, fn);
  }
  Parsed& p = in.parsed;
  read_header(in.source(), p, fn);
  check_declared_size(in.source(), p.geo, fn);
  char name[32];
  std::snprintf(name, sizeof name, "blob %u", i);
  check_same_model(cache.config(), p.config, name, true, fn);
  read_table(in.source(), p, fn);
  verify_chunks_at(p.geo, in.random(), cache.allocator(), fn);
}

// Entries [begin, end) of global page `page` come from stored page #k of blob `blob`.
struct Piece {
  int32_t page;
  int64_t begin, end;
  uint32_t blob;
  uint64_t k;
};

// The pieces of every page the set stores in the target's page range, sorted by (page, begin),
// after proving that they tile the target's entries of each such page exactly.
HostVector<Piece> plan_pieces(const Cache& cache, HostVector<HostPtr<Input>>& inputs, const char* fn) {
  const Layout& T = cache.layout();
  const int64_t t0 = T.slot_begin, t1 = T.slot_begin + T.combined_heads;
  const int64_t p0 = T.page_begin, p1 = T.page_begin + T.num_pages;
  HostVector<Piece> pieces(cache.allocator());
  HostVector<int32_t> stored(cache.allocator());  // every page some blob stores, in the target's range
  for (uint32_t i = 0; i < inputs.size(); ++i) {
    const Parsed& p = inputs[i]->parsed;
    const int64_t a = std::max(t0, p.layout.slot_begin), b = std::min(t1, p.layout.slot_begin + p.layout.combined_heads);
    for (uint64_t k = 0; k < p.ids.size(); ++k) {
      const int32_t g = p.ids[k];
      if (g < p0 || g >= p1) continue;
      stored.push_back(g);
      if (a < b) pieces.push_back({g, a, b, i, k});
    }
  }
  std::sort(stored.begin(), stored.end());
  stored.erase(std::unique(stored.begin(), stored.end()), stored.end());
  std::sort(pieces.begin(), pieces.end(), [](const Piece& x, const Piece& y) {
    return x.page != y.page ? x.page < y.page : x.begin < y.begin;
  });
  size_t at = 0;
  for (const int32_t g : stored) {
    int64_t next = t0;  // the first entry of page g not yet covered
    const Piece* last = nullptr;
    for (; at < pieces.size() && pieces[at].page == g; ++at) {
      const Piece& c = pieces[at];
      if (c.begin < next)
        fail(KVP_ERR_FORMAT_MISMATCH, "%s: blobs %u and %u both hold entries [%lld, %lld) of page %d", fn, last->blob,
             c.blob, ll(c.begin), ll(std::min(next, c.end)), g);
      if (c.begin > next) break;
      next = c.end;
      last = &c;
    }
    if (next < t1)
      fail(KVP_ERR_FORMAT_MISMATCH,
           "%s: combined entries [%lld, %lld) of page %d, which the target holds, are in no blob (is a shard's blob "
           "missing?)", fn, ll(next), ll(at < pieces.size() && pieces[at].page == g ? pieces[at].begin : t1), g);
  }
  return pieces;
}

// Writes the pages of `pieces` (all checked): each page of each layer is assembled in host memory
// from the blobs' rows, then copied into the target.
void write_pieces(Cache& cache, HostVector<HostPtr<Input>>& inputs, const HostVector<Piece>& pieces, const char* fn) {
  const Layout& T = cache.layout();
  const int64_t entry = T.storage_head_dim * T.itemsize, rows = T.page_size;
  uint64_t blob_page = 0;
  for (const auto& in : inputs) blob_page = std::max(blob_page, in->parsed.geo.page_bytes);
  HostVector<uint8_t> page(cache.page_bytes(), 0, cache.allocator()), src(blob_page, 0, cache.allocator());
  for (size_t first = 0; first < pieces.size();) {
    size_t end = first;
    while (end < pieces.size() && pieces[end].page == pieces[first].page) ++end;
    const int64_t local = pieces[first].page - T.page_begin;
    for (int64_t l = 0; l < T.num_layers; ++l) {
      for (size_t x = first; x < end; ++x) {
        const Piece& c = pieces[x];
        Input& in = *inputs[c.blob];
        const Geometry& g = in.parsed.geo;
        const Layout& B = in.parsed.layout;
        in.read_payload((static_cast<uint64_t>(l) * g.num_stored + c.k) * g.page_bytes, src.data(), g.page_bytes);
        for (int64_t r = 0; r < rows; ++r)
          std::memcpy(page.data() + (r * T.combined_heads + c.begin - T.slot_begin) * entry,
                      src.data() + (r * B.combined_heads + c.begin - B.slot_begin) * entry,
                      static_cast<size_t>((c.end - c.begin) * entry));
      }
      cache.backend().copy_from_host(cache.layer_data(l) + static_cast<size_t>(local) * cache.page_bytes(), page.data(),
                                     cache.page_bytes(), nullptr, true, fn);
    }
    first = end;
  }
}

}  // namespace

void deserialize_shards_into(Cache& cache, const kvp_blob_ref* blobs, uint32_t num_blobs, const char* fn) {
  cache.check_healthy(fn);
  if (blobs == nullptr || num_blobs == 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: blobs is NULL or num_blobs is 0; give at least one blob", fn);
  HostVector<HostPtr<Input>> inputs(cache.allocator());
  for (uint32_t i = 0; i < num_blobs; ++i) {
    inputs.push_back(make_host<Input>(cache.allocator(), cache.allocator()));
    open_input(*inputs.back(), blobs[i], i, cache, fn);
  }
  const HostVector<Piece> pieces = plan_pieces(cache, inputs, fn);
  write_pieces(cache, inputs, pieces, fn);
}

}  // namespace kvp::detail::ser
