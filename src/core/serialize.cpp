// KVPS 1.0 writer and reader. See docs/serialization-format.md for the byte layout.
#include "core/serialize.hpp"

#include <xxhash.h>
// Debian's libxxhash is built with the x86 dispatcher: route the XXH3 calls through it so that
// the checksum uses AVX2/AVX-512 where the CPU has them (about 2x the SSE2 baseline).
#if defined(__x86_64__) && defined(__has_include)
#if __has_include(<xxh_x86dispatch.h>)
#include <xxh_x86dispatch.h>
#endif
#endif

#include <algorithm>
#include <cinttypes>
#include <cstring>
#include <limits>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "kvpages/version.h"
#include "util/error.hpp"
#include "util/handle.hpp"
#include "util/options.hpp"
#include "util/stream_copy.hpp"

namespace kvp::detail::ser {
namespace {

using u64 = unsigned long long;  // for printf

// ---- little-endian field access (independent of the host byte order) ------------------------
void put16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
void put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void put64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint16_t get16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t get32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
uint64_t get64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
int64_t geti64(const uint8_t* p) {
  const uint64_t u = get64(p);
  int64_t v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}
void puti64(uint8_t* p, int64_t v) {
  uint64_t u;
  std::memcpy(&u, &v, sizeof u);
  put64(p, u);
}

// Header field offsets (format 1.0).
enum : size_t {
  kOffMagic = 0,
  kOffMajor = 4,
  kOffMinor = 6,
  kOffHeaderSize = 8,
  kOffWriterVersion = 12,
  kOffFlags = 16,
  kOffConfig = 24,  // 12 x int64/float64, then version u32, dtype u32
  kOffLayoutVersion = 120,
  kOffDtype = 124,
  kOffPageBytes = 128,
  kOffNumStored = 136,
  kOffChunkBytes = 144,
  kOffPayloadBytes = 152,
  kOffReserved = 160,  // 24 bytes, written as zero, ignored by readers
  kOffChecksum = 184,  // of a 1.0 header; in general header_size - 8
};
constexpr uint8_t kMagic[4] = {'K', 'V', 'P', 'S'};

// RAII XXH3 streaming state.
struct Hasher {
  XXH3_state_t* st;
  Hasher() : st(XXH3_createState()) {
    if (st == nullptr) throw std::bad_alloc();
  }
  ~Hasher() { XXH3_freeState(st); }
  Hasher(const Hasher&) = delete;
  Hasher& operator=(const Hasher&) = delete;
  void reset(uint64_t seed) { XXH3_64bits_reset_withSeed(st, seed); }
  void update(const void* p, size_t n) { XXH3_64bits_update(st, p, n); }
  uint64_t digest() const { return XXH3_64bits_digest(st); }
};

// Checksum comparison. Fuzzing builds (tests/fuzz) accept any checksum so that the fuzzer can
// reach the structural checks behind them; production builds never define this macro.
bool sum_ok(uint64_t stored, uint64_t computed) {
#if defined(FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION)
  (void)stored;
  (void)computed;
  return true;
#else
  return stored == computed;
#endif
}

bool mul_ok(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }
bool add_ok(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_add_overflow(a, b, out); }

// The selected pages as runs of adjacent ascending ids (one contiguous range per layer each),
// with their byte offsets inside one layer's share of the payload.
struct RunTable {
  struct Run {
    int64_t first;   // first page id
    uint64_t bytes;  // bytes of the run in one layer
    uint64_t start;  // offset of the run inside one layer's share of the payload
  };
  std::vector<Run> runs;
  uint64_t per_layer = 0;
  size_t page_bytes = 0;
  RunTable(const std::vector<int32_t>& ids, size_t pb) : page_bytes(pb) {
    for (size_t i = 0; i < ids.size();) {
      size_t j = i + 1;
      while (j < ids.size() && ids[j] == ids[j - 1] + 1) ++j;
      const uint64_t bytes = static_cast<uint64_t>(j - i) * pb;
      runs.push_back({static_cast<int64_t>(ids[i]), bytes, per_layer});
      per_layer += bytes;
      i = j;
    }
  }
};

// Iterates the bytes of the selected pages of every layer, in payload order (layer-major, then
// the order of the ids), as contiguous device ranges.
class PageCursor {
 public:
  PageCursor(const Cache& cache, const RunTable& t) : cache_(cache), t_(t) {}
  // Positions the cursor at payload byte `off` (< payload size).
  void seek(uint64_t off) {
    layer_ = static_cast<int64_t>(off / t_.per_layer);
    const uint64_t r = off % t_.per_layer;
    const auto it = std::upper_bound(t_.runs.begin(), t_.runs.end(), r,
                                     [](uint64_t v, const RunTable::Run& run) { return v < run.start; });
    run_ = static_cast<size_t>(it - t_.runs.begin()) - 1;
    off_ = r - t_.runs[run_].start;
  }
  // Next range of at most `max` bytes (max > 0). Must not be called past the end.
  std::pair<uint8_t*, size_t> next(size_t max) {
    while (off_ == t_.runs[run_].bytes) {
      off_ = 0;
      if (++run_ == t_.runs.size()) {
        run_ = 0;
        ++layer_;
      }
    }
    const RunTable::Run& r = t_.runs[run_];
    uint8_t* base = cache_.layer_data(layer_) + static_cast<size_t>(r.first) * t_.page_bytes + off_;
    const uint64_t left = r.bytes - off_;
    const size_t n = left < max ? static_cast<size_t>(left) : max;
    off_ += n;
    return {base, n};
  }

 private:
  const Cache& cache_;
  const RunTable& t_;
  int64_t layer_ = 0;
  size_t run_ = 0;
  uint64_t off_ = 0;
};

// Runs f(i) for every chunk i, on OpenMP threads when `parallel`. The exception of the lowest
// failing chunk is rethrown afterwards (exceptions never cross the parallel region).
constexpr uint64_t kParallelMinBytes = 256 * 1024;
template <class F>
void for_chunks(uint64_t n, bool parallel, F&& f) {
#if defined(_OPENMP)
  if (parallel && n >= 2) {
    std::exception_ptr err;
    uint64_t err_i = std::numeric_limits<uint64_t>::max();
    std::mutex mu;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < static_cast<int64_t>(n); ++i) {
      try {
        f(static_cast<uint64_t>(i));
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (static_cast<uint64_t>(i) < err_i) {
          err_i = static_cast<uint64_t>(i);
          err = std::current_exception();
        }
      }
    }
    if (err) std::rethrow_exception(err);
    return;
  }
#endif
  (void)parallel;
  for (uint64_t i = 0; i < n; ++i) f(i);
}

[[noreturn]] void chunk_mismatch(const char* function, uint64_t i, const Geometry& g, uint64_t stored,
                                 uint64_t computed);

// Bytes per host pass (hash, then copy): small enough that the copy finds them in cache.
constexpr size_t kHostPieceBytes = 64 * 1024;

// Host-memory pass over n bytes (at most kHostPieceBytes): hash them into `h` (when given),
// prefetching ahead because one thread's sequential reads alone do not keep enough cache-line
// requests in flight to reach the memory bandwidth; then stream them from cache to `dst` (when
// given). Hashing the source rather than the copy keeps the destination write-only (no read for
// ownership, see stream_copy).
void hash_copy(Hasher* h, uint8_t* dst, const uint8_t* src, size_t n) {
  if (h != nullptr) {
    constexpr size_t kBlock = 4096, kAhead = 4 * kBlock;
    for (size_t off = 0; off < n; off += kBlock) {
      const size_t len = std::min(kBlock, n - off);
      for (size_t a = off + kAhead; a < off + kAhead + len && a < n; a += 64) __builtin_prefetch(src + a, 0, 3);
      h->update(src + off, len);
    }
  }
  if (dst != nullptr) stream_copy(dst, src, n);
}

// Copies the next n payload bytes from the (CPU) cache to `dst`, hashing them into `h`.
void gather(PageCursor& cur, uint8_t* dst, size_t n, Hasher& h) {
  for (size_t done = 0; done < n;) {
    const auto seg = cur.next(std::min(n - done, kHostPieceBytes));
    hash_copy(&h, dst + done, seg.first, seg.second);
    done += seg.second;
  }
}

// Copies n host bytes into the next payload positions of the (CPU) cache; hashes them first when
// `h` is given (the piece is then still in cache when it is copied).
void scatter(PageCursor& cur, const uint8_t* src, size_t n, Hasher* h) {
  for (size_t done = 0; done < n;) {
    const auto seg = cur.next(std::min(n - done, kHostPieceBytes));
    hash_copy(h, seg.first, src + done, seg.second);
    done += seg.second;
  }
}

// Device caches: the payload moves through the backend's HostPipe in pieces of piece_bytes(),
// which may span chunk boundaries (a chunk can be as small as 64 bytes), while the host hashes
// and copies the other slot. Piece j uses slot j % 2.
uint64_t num_pieces(const Geometry& g, const HostPipe& pipe) {
  return (g.payload_bytes + pipe.piece_bytes() - 1) / pipe.piece_bytes();
}
size_t piece_len(const Geometry& g, const HostPipe& pipe, uint64_t j) {
  return static_cast<size_t>(std::min<uint64_t>(pipe.piece_bytes(), g.payload_bytes - j * pipe.piece_bytes()));
}

// Enqueues the copies between slot j % 2 and the next piece_len(j) payload bytes of the cache,
// then fences the slot.
void enqueue_piece(HostPipe& pipe, PageCursor& cur, const Geometry& g, uint64_t j, bool download) {
  const int k = static_cast<int>(j & 1);
  const size_t n = piece_len(g, pipe, j);
  for (size_t done = 0; done < n;) {
    const auto seg = cur.next(n - done);
    if (download)
      pipe.download(k, done, seg.first, seg.second);
    else
      pipe.upload(k, done, seg.first, seg.second);
    done += seg.second;
  }
  pipe.fence(k);
}

// The payload in order, cut at chunk boundaries into host passes of at most kHostPieceBytes.
// advance(n, begin, pass, end) covers the next n bytes: begin(i, len) at the first byte of chunk
// i (len bytes long), pass(offset_in_chunk, m) for each pass, end(i, len) after its last byte.
struct ChunkWalk {
  const Geometry& g;
  uint64_t chunk = 0;
  size_t in_chunk = 0, len = 0;

  template <class Begin, class Pass, class End>
  void advance(size_t n, Begin&& begin, Pass&& pass, End&& end) {
    while (n > 0) {
      if (in_chunk == 0) {
        len = static_cast<size_t>(g.chunk_len(chunk));
        begin(chunk, len);
      }
      const size_t m = std::min({n, len - in_chunk, kHostPieceBytes});
      pass(in_chunk, m);
      n -= m;
      in_chunk += m;
      if (in_chunk == len) {
        end(chunk, len);
        ++chunk;
        in_chunk = 0;
      }
    }
  }
};

// Writes the payload of a device cache to `sink` as checksummed chunks: piece j + 1 is on its way
// to the host while piece j is hashed and copied into the sink.
void download_payload(const Cache& cache, const RunTable& runs, const Geometry& g, HostPipe& pipe, Sink& sink) {
  PageCursor cur(cache, runs);
  const uint64_t pieces = num_pieces(g, pipe);
  Hasher hasher;
  ChunkWalk walk{g};
  uint8_t* out = nullptr;
  enqueue_piece(pipe, cur, g, 0, true);
  for (uint64_t j = 0; j < pieces; ++j) {
    if (j + 1 < pieces) enqueue_piece(pipe, cur, g, j + 1, true);  // into the slot piece j - 1 used
    const int k = static_cast<int>(j & 1);
    pipe.wait(k);
    const uint8_t* q = pipe.slot(k);
    walk.advance(
        piece_len(g, pipe, j),
        [&](uint64_t i, size_t len) {
          out = sink.reserve(len + 8);
          hasher.reset(kSeedChunk0 + i);
        },
        [&](size_t off, size_t m) {
          hash_copy(&hasher, out + off, q, m);
          q += m;
        },
        [&](uint64_t, size_t len) {
          put64(out + len, hasher.digest());
          sink.commit(len + 8);
        });
  }
}

// Loads a payload into a device cache. chunk_at(i) returns chunk i's bytes and stored checksum
// (chunk_len(i) + 8 bytes, valid until the next call); it is called once per chunk, in order.
// With `verify`, each chunk's checksum is checked as its last byte is staged, and a mismatch
// throws before that piece is uploaded (earlier pieces may have been). The host fills slot
// j % 2 once the upload of piece j - 2 from it is done, while piece j - 1 moves to the device.
// Returns when every upload is complete.
template <class ChunkAt>
void upload_payload(const Cache& cache, const RunTable& runs, const Geometry& g, HostPipe& pipe, bool verify,
                    ChunkAt&& chunk_at, const char* function) {
  PageCursor cur(cache, runs);
  const uint64_t pieces = num_pieces(g, pipe);
  Hasher hasher;
  ChunkWalk walk{g};
  const uint8_t* in = nullptr;
  for (uint64_t j = 0; j < pieces; ++j) {
    const int k = static_cast<int>(j & 1);
    pipe.wait(k);
    uint8_t* q = pipe.slot(k);
    walk.advance(
        piece_len(g, pipe, j),
        [&](uint64_t i, size_t) {
          in = chunk_at(i);
          if (verify) hasher.reset(kSeedChunk0 + i);
        },
        [&](size_t off, size_t m) {
          hash_copy(verify ? &hasher : nullptr, q, in + off, m);
          q += m;
        },
        [&](uint64_t i, size_t len) {
          if (!verify) return;
          const uint64_t stored = get64(in + len), computed = hasher.digest();
          if (!sum_ok(stored, computed)) chunk_mismatch(function, i, g, stored, computed);
        });
    enqueue_piece(pipe, cur, g, j, false);
  }
  pipe.wait(0);
  pipe.wait(1);
}

// Sorted copy check: ids in [0, limit) and unique. Returns the first offending index or -1 and
// sets *dup when the problem is a duplicate.
ptrdiff_t check_ids(const int32_t* ids, size_t n, int64_t limit, bool* dup, int32_t* bad) {
  for (size_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= limit) {
      *dup = false;
      *bad = ids[i];
      return static_cast<ptrdiff_t>(i);
    }
  std::vector<int32_t> sorted(ids, ids + n);
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 1; i < n; ++i)
    if (sorted[i] == sorted[i - 1]) {
      *dup = true;
      *bad = sorted[i];
      for (size_t k = 0; k < n; ++k)
        if (ids[k] == sorted[i]) return static_cast<ptrdiff_t>(k);
    }
  return -1;
}

void encode_header(const kvp_config& c, const Geometry& g, uint8_t* h) {
  std::memset(h, 0, kHeaderSizeV1);
  std::memcpy(h + kOffMagic, kMagic, 4);
  put16(h + kOffMajor, static_cast<uint16_t>(kFormatMajor));
  put16(h + kOffMinor, static_cast<uint16_t>(kFormatMinor));
  put32(h + kOffHeaderSize, kHeaderSizeV1);
  put32(h + kOffWriterVersion, KVP_VERSION_NUMBER);
  put64(h + kOffFlags, 0);
  const int64_t fields[12] = {c.num_hidden_layers, c.max_model_length, c.num_kv_heads, c.k_headdim,
                              c.v_headdim, 0, c.page_size, c.num_pages, c.max_num_pages_per_req,
                              c.num_slices_per_kv_cache_update_page, c.max_num_tokens, c.max_num_reqs};
  for (int i = 0; i < 12; ++i) puti64(h + kOffConfig + 8 * i, fields[i]);
  uint64_t util_bits;
  std::memcpy(&util_bits, &c.hbm_utilization, sizeof util_bits);
  put64(h + kOffConfig + 8 * 5, util_bits);
  put32(h + kOffLayoutVersion, c.version);
  put32(h + kOffDtype, c.kvdtype);
  put64(h + kOffPageBytes, g.page_bytes);
  put64(h + kOffNumStored, g.num_stored);
  put64(h + kOffChunkBytes, g.chunk_bytes);
  put64(h + kOffPayloadBytes, g.payload_bytes);
  put64(h + kOffChecksum, XXH3_64bits_withSeed(h, kOffChecksum, kSeedHeader));
}

// Reads n bytes of a stream into `buf`, growing it as the data arrives (at most 1 MiB ahead of
// what was received), so a header that declares huge chunks cannot make us allocate them before
// the bytes exist.
void read_growing(Source& src, std::vector<uint8_t>& buf, size_t n, const char* what) {
  constexpr size_t kStep = 1 << 20;
  size_t done = 0;
  while (done < n) {
    const size_t k = std::min(kStep, n - done);
    if (buf.size() < done + k) buf.resize(done + k);
    src.read(buf.data() + done, k, what);
    done += k;
  }
}

// Reads (or views) n bytes: returns a pointer valid until the next call with the same `buf`.
const uint8_t* take(Source& src, size_t n, std::vector<uint8_t>& buf, const char* what) {
  if (const uint8_t* p = src.view(n, what)) return p;
  read_growing(src, buf, n, what);
  return buf.data();
}

[[noreturn]] void chunk_mismatch(const char* function, uint64_t i, const Geometry& g, uint64_t stored,
                                 uint64_t computed) {
  fail(KVP_ERR_FORMAT_CHECKSUM,
       "%s: checksum mismatch in payload chunk %llu of %llu (payload bytes %llu..%llu): stored %016llx, "
       "computed %016llx",
       function, (u64)i, (u64)g.num_chunks, (u64)(i * g.chunk_bytes), (u64)(i * g.chunk_bytes + g.chunk_len(i)),
       (u64)stored, (u64)computed);
}

}  // namespace

// ---- sizes -----------------------------------------------------------------------------------

Geometry make_geometry(uint64_t header_size, uint64_t num_layers, uint64_t num_stored, uint64_t page_bytes,
                       uint64_t chunk_bytes, kvp_status code, const char* function) {
  Geometry g;
  g.header_size = header_size;
  g.num_layers = num_layers;
  g.num_stored = num_stored;
  g.page_bytes = page_bytes;
  g.chunk_bytes = chunk_bytes;
  uint64_t per_layer = 0, total = 0, sums = 0;
  bool ok = mul_ok(num_stored, page_bytes, &per_layer) && mul_ok(per_layer, num_layers, &g.payload_bytes) &&
            mul_ok(num_stored, 4, &g.table_bytes);
  if (ok) {
    g.num_chunks = g.payload_bytes / chunk_bytes + (g.payload_bytes % chunk_bytes != 0 ? 1 : 0);
    ok = mul_ok(g.num_chunks, 8, &sums) && add_ok(header_size, g.table_bytes, &total) && add_ok(total, 8, &total) &&
         add_ok(total, g.payload_bytes, &total) && add_ok(total, sums, &total) &&
         total <= static_cast<uint64_t>(std::numeric_limits<size_t>::max());
  }
  if (!ok)
    fail(code, "%s: blob size overflows (%llu layers x %llu pages x %llu bytes per page)", function, (u64)num_layers,
         (u64)num_stored, (u64)page_bytes);
  g.total_bytes = total;
  return g;
}

Selection read_selection(const Cache& cache, const kvp_serialize_options* opts, const char* function) {
  Selection sel;
  kvp_serialize_options o{};
  if (opts != nullptr)
    o = read_versioned(opts, sizeof(kvp_serialize_options), KVP_SERIALIZE_OPTIONS_VERSION, function,
                       "kvp_serialize_options");
  if (o.flags != 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: kvp_serialize_options.flags must be 0, got 0x%x", function, o.flags);
  if (o.chunk_bytes != 0) {
    if (o.chunk_bytes < KVP_SERIALIZE_MIN_CHUNK_BYTES || o.chunk_bytes > KVP_SERIALIZE_MAX_CHUNK_BYTES)
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: chunk_bytes %llu is outside [%u, %u]", function, (u64)o.chunk_bytes,
           KVP_SERIALIZE_MIN_CHUNK_BYTES, KVP_SERIALIZE_MAX_CHUNK_BYTES);
    sel.chunk_bytes = o.chunk_bytes;
  }
  const int64_t P = cache.config().num_pages;
  if (o.page_ids == nullptr) {
    if (o.num_page_ids != 0)
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: page_ids is NULL but num_page_ids is %u", function, o.num_page_ids);
    sel.ids.resize(static_cast<size_t>(P));
    for (int64_t p = 0; p < P; ++p) sel.ids[static_cast<size_t>(p)] = static_cast<int32_t>(p);
    return sel;
  }
  bool dup = false;
  int32_t bad = 0;
  const ptrdiff_t at = check_ids(o.page_ids, o.num_page_ids, P, &dup, &bad);
  if (at >= 0) {
    if (dup) fail(KVP_ERR_INVALID_ARGUMENT, "%s: page id %d appears more than once in page_ids", function, bad);
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: page_ids[%td] = %d is out of range [0, %lld)", function, at, bad,
         static_cast<long long>(P));
  }
  sel.ids.assign(o.page_ids, o.page_ids + o.num_page_ids);
  return sel;
}

Geometry geometry_of(const Cache& cache, const Selection& sel, const char* function) {
  return make_geometry(kHeaderSizeV1, static_cast<uint64_t>(cache.num_layers()), sel.ids.size(), cache.page_bytes(),
                       sel.chunk_bytes, KVP_ERR_INVALID_ARGUMENT, function);
}

// ---- writer ----------------------------------------------------------------------------------

void serialize(const Cache& cache, const Selection& sel, Sink& sink, const char* function) {
  cache.check_healthy(function);
  const Geometry g = geometry_of(cache, sel, function);
  // Device caches: get the pipe (which may refuse) before anything reaches the sink.
  const std::unique_ptr<HostPipe> pipe = g.payload_bytes > 0 ? cache.backend().host_pipe(function) : nullptr;

  uint8_t* h = sink.reserve(kHeaderSizeV1);
  encode_header(cache.config(), g, h);
  sink.commit(kHeaderSizeV1);

  const size_t tb = static_cast<size_t>(g.table_bytes);
  uint8_t* t = sink.reserve(tb + 8);
  for (size_t i = 0; i < sel.ids.size(); ++i) put32(t + 4 * i, static_cast<uint32_t>(sel.ids[i]));
  put64(t + tb, XXH3_64bits_withSeed(t, tb, kSeedTable));
  sink.commit(tb + 8);

  if (g.payload_bytes == 0) return;
  const RunTable runs(sel.ids, cache.page_bytes());
  if (pipe != nullptr) {
    download_payload(cache, runs, g, *pipe, sink);
    return;
  }
  if (uint8_t* base = sink.contiguous(); base != nullptr && g.payload_bytes >= kParallelMinBytes) {
    // The whole blob lands in one caller buffer: fill the chunks in parallel.
    for_chunks(g.num_chunks, true, [&](uint64_t i) {
      const size_t len = static_cast<size_t>(g.chunk_len(i));
      uint8_t* p = base + i * (g.chunk_bytes + 8);
      PageCursor cur(cache, runs);
      cur.seek(i * g.chunk_bytes);
      Hasher hasher;
      hasher.reset(kSeedChunk0 + i);
      gather(cur, p, len, hasher);
      put64(p + len, hasher.digest());
    });
    sink.commit(static_cast<size_t>(g.payload_bytes + 8 * g.num_chunks));
    return;
  }
  PageCursor cur(cache, runs);
  Hasher hasher;
  for (uint64_t i = 0; i < g.num_chunks; ++i) {
    const size_t len = static_cast<size_t>(g.chunk_len(i));
    uint8_t* p = sink.reserve(len + 8);
    hasher.reset(kSeedChunk0 + i);
    gather(cur, p, len, hasher);
    put64(p + len, hasher.digest());
    sink.commit(len + 8);
  }
}

// ---- sources ---------------------------------------------------------------------------------

void BufferSource::need(size_t n, const char* what) const {
  if (n_ - pos < n)
    fail(KVP_ERR_FORMAT_TRUNCATED, "%s: truncated input: %s needs %zu bytes at offset %llu but only %llu remain",
         function_, what, n, (u64)pos, (u64)(n_ - pos));
}
void BufferSource::read(void* dst, size_t n, const char* what) {
  need(n, what);
  if (n != 0) std::memcpy(dst, p_ + pos, n);
  pos += n;
}
const uint8_t* BufferSource::view(size_t n, const char* what) {
  need(n, what);
  const uint8_t* p = p_ + pos;
  pos += n;
  return p;
}
void BufferSource::expect_end(const char* function) {
  if (pos != n_)
    fail(KVP_ERR_FORMAT_CORRUPT, "%s: %llu trailing bytes after the end of the blob (%llu bytes); the input must be "
         "exactly one blob", function, (u64)(n_ - pos), (u64)pos);
}

// ---- reader ----------------------------------------------------------------------------------

Parsed read_header(Source& src, const char* function) {
  Parsed p;
  uint8_t fixed[16];
  src.read(fixed, 4, "the magic");
  if (std::memcmp(fixed, kMagic, 4) != 0)
    fail(KVP_ERR_FORMAT_MAGIC, "%s: not a kvpages blob: the magic is %02x %02x %02x %02x, expected 'KVPS'", function,
         fixed[0], fixed[1], fixed[2], fixed[3]);
  src.read(fixed + 4, 4, "the format version");
  p.major = get16(fixed + kOffMajor);
  p.minor = get16(fixed + kOffMinor);
  if (p.major != kFormatMajor)
    fail(KVP_ERR_FORMAT_VERSION, "%s: format version %u.%u is not supported (this library reads %u.x)", function,
         p.major, p.minor, kFormatMajor);
  src.read(fixed + 8, 8, "the header size");
  const uint32_t hs = get32(fixed + kOffHeaderSize);
  if (hs < kHeaderSizeV1 || hs > kMaxHeaderSize || hs % 8 != 0)
    fail(KVP_ERR_FORMAT_CORRUPT, "%s: header_size %u is invalid (format %u.%u needs a multiple of 8 in [%u, %u])",
         function, hs, p.major, p.minor, kHeaderSizeV1, kMaxHeaderSize);
  std::vector<uint8_t> hdr(hs);
  std::memcpy(hdr.data(), fixed, 16);
  src.read(hdr.data() + 16, hs - 16, "the header");
  const uint8_t* h = hdr.data();
  p.header_checksum = get64(h + hs - 8);
  const uint64_t computed = XXH3_64bits_withSeed(h, hs - 8, kSeedHeader);
  if (!sum_ok(p.header_checksum, computed))
    fail(KVP_ERR_FORMAT_CHECKSUM, "%s: header checksum mismatch: stored %016llx, computed %016llx", function,
         (u64)p.header_checksum, (u64)computed);

  p.writer_version = get32(h + kOffWriterVersion);
  p.flags = get64(h + kOffFlags);
  if ((p.flags & kRequiredFlagsMask) != 0)
    fail(KVP_ERR_FORMAT_VERSION, "%s: the blob uses required format flags 0x%08llx this library does not know "
         "(written by kvpages %u)", function, (u64)(p.flags & kRequiredFlagsMask), p.writer_version);

  kvp_config& c = p.config;
  std::memset(&c, 0, sizeof c);
  c.struct_size = sizeof(kvp_config);
  c.abi_version = KVP_CONFIG_VERSION;
  c.num_hidden_layers = geti64(h + kOffConfig + 0);
  c.max_model_length = geti64(h + kOffConfig + 8);
  c.num_kv_heads = geti64(h + kOffConfig + 16);
  c.k_headdim = geti64(h + kOffConfig + 24);
  c.v_headdim = geti64(h + kOffConfig + 32);
  const uint64_t util_bits = get64(h + kOffConfig + 40);
  std::memcpy(&c.hbm_utilization, &util_bits, sizeof c.hbm_utilization);
  c.page_size = geti64(h + kOffConfig + 48);
  c.num_pages = geti64(h + kOffConfig + 56);
  c.max_num_pages_per_req = geti64(h + kOffConfig + 64);
  c.num_slices_per_kv_cache_update_page = geti64(h + kOffConfig + 72);
  c.max_num_tokens = geti64(h + kOffConfig + 80);
  c.max_num_reqs = geti64(h + kOffConfig + 88);
  c.version = get32(h + kOffLayoutVersion);
  c.kvdtype = get32(h + kOffDtype);
  try {
    p.layout = layout_of(c, function);
  } catch (const error& e) {
    fail(KVP_ERR_FORMAT_CORRUPT, "%s: the blob's config is invalid (%s: %s)", function, kvp_status_name(e.code()),
         e.what());
  }
  if (c.num_pages < 1)
    fail(KVP_ERR_FORMAT_CORRUPT, "%s: the blob's config has num_pages %lld", function,
         static_cast<long long>(c.num_pages));
  const uint64_t page_bytes = get64(h + kOffPageBytes);
  if (page_bytes != static_cast<uint64_t>(p.layout.page_bytes_per_layer))
    fail(KVP_ERR_FORMAT_CORRUPT, "%s: page_bytes %llu in the header differs from %lld derived from the config",
         function, (u64)page_bytes, static_cast<long long>(p.layout.page_bytes_per_layer));
  const uint64_t n = get64(h + kOffNumStored);
  if (n > static_cast<uint64_t>(c.num_pages))
    fail(KVP_ERR_FORMAT_CORRUPT, "%s: the blob claims %llu stored pages but its cache has only %lld pages", function,
         (u64)n, static_cast<long long>(c.num_pages));
  const uint64_t chunk = get64(h + kOffChunkBytes);
  if (chunk < KVP_SERIALIZE_MIN_CHUNK_BYTES || chunk > KVP_SERIALIZE_MAX_CHUNK_BYTES)
    fail(KVP_ERR_FORMAT_CORRUPT, "%s: chunk_bytes %llu is outside [%u, %u]", function, (u64)chunk,
         KVP_SERIALIZE_MIN_CHUNK_BYTES, KVP_SERIALIZE_MAX_CHUNK_BYTES);
  p.geo = make_geometry(hs, static_cast<uint64_t>(c.num_hidden_layers), n, page_bytes, chunk,
                        KVP_ERR_FORMAT_CORRUPT, function);
  const uint64_t payload = get64(h + kOffPayloadBytes);
  if (payload != p.geo.payload_bytes)
    fail(KVP_ERR_FORMAT_CORRUPT, "%s: payload_bytes %llu in the header differs from %llu derived from the config "
         "and page count", function, (u64)payload, (u64)p.geo.payload_bytes);
  return p;
}

void read_table(Source& src, Parsed& p, const char* function) {
  const uint64_t n = p.geo.num_stored;
  Hasher h;
  h.reset(kSeedTable);
  p.ids.clear();
  // Read in bounded pieces so that memory grows only with the input actually received.
  constexpr uint64_t kPiece = 16384;  // ids per piece
  uint8_t buf[kPiece * 4];
  for (uint64_t done = 0; done < n;) {
    const uint64_t k = std::min(kPiece, n - done);
    const uint8_t* q = src.view(static_cast<size_t>(k * 4), "the page-id table");
    if (q == nullptr) {
      src.read(buf, static_cast<size_t>(k * 4), "the page-id table");
      q = buf;
    }
    h.update(q, static_cast<size_t>(k * 4));
    for (uint64_t i = 0; i < k; ++i) p.ids.push_back(static_cast<int32_t>(get32(q + 4 * i)));
    done += k;
  }
  uint8_t sum[8];
  src.read(sum, 8, "the page-id table checksum");
  const uint64_t stored = get64(sum), computed = h.digest();
  if (!sum_ok(stored, computed))
    fail(KVP_ERR_FORMAT_CHECKSUM, "%s: page-id table checksum mismatch: stored %016llx, computed %016llx", function,
         (u64)stored, (u64)computed);
  // Ids are stored as uint32; a value above INT32_MAX became negative above and fails here.
  bool dup = false;
  int32_t bad = 0;
  const ptrdiff_t at = check_ids(p.ids.data(), p.ids.size(), p.config.num_pages, &dup, &bad);
  if (at >= 0) {
    if (dup) fail(KVP_ERR_FORMAT_CORRUPT, "%s: page id %d appears more than once in the blob", function, bad);
    fail(KVP_ERR_FORMAT_CORRUPT, "%s: stored page id #%td = %u is out of range [0, %lld)", function, at,
         static_cast<uint32_t>(bad), static_cast<long long>(p.config.num_pages));
  }
}

kvp_cache* deserialize_new(Source& src, const kvp_deserialize_options* opts, const char* function) {
  kvp_deserialize_options o{};
  if (opts != nullptr)
    o = read_versioned(opts, sizeof(kvp_deserialize_options), KVP_DESERIALIZE_OPTIONS_VERSION, function,
                       "kvp_deserialize_options");
  if (o.flags != 0 || o._reserved != 0)
    fail(KVP_ERR_UNSUPPORTED, "%s: kvp_deserialize_options.flags and _reserved must be 0", function);

  Parsed p = read_header(src, function);
  uint64_t cache_bytes = 0;
  if (!mul_ok(static_cast<uint64_t>(p.layout.layer_bytes), p.geo.num_layers, &cache_bytes))
    fail(KVP_ERR_FORMAT_CORRUPT, "%s: the blob's cache size overflows 64 bits", function);
  if (o.max_cache_bytes != 0 && cache_bytes > o.max_cache_bytes)
    fail(KVP_ERR_FORMAT_MISMATCH, "%s: the blob's cache needs %llu bytes, more than max_cache_bytes %llu", function,
         (u64)cache_bytes, (u64)o.max_cache_bytes);
  read_table(src, p, function);

  kvp_cache* h = nullptr;
  const kvp_status st = kvp_cache_create(&p.config, o.cache_options, &h);
  if (st != KVP_OK) throw error(st, format("%s: %s", function, kvp_last_error_message()));
  try {
    Cache& c = cache_from(h, function);
    if (p.geo.payload_bytes > 0) {
      const RunTable runs(p.ids, c.page_bytes());
      if (const std::unique_ptr<HostPipe> pipe = c.backend().host_pipe(function)) {
        // Device cache: checked while staged, one chunk after another.
        std::vector<uint8_t> buf;
        upload_payload(
            c, runs, p.geo, *pipe, true,
            [&](uint64_t i) { return take(src, static_cast<size_t>(p.geo.chunk_len(i)) + 8, buf, "a payload chunk"); },
            function);
      } else if (src.in_memory()) {
        // All chunks are addressable: check and store them in parallel.
        std::vector<const uint8_t*> chunks;
        for (uint64_t i = 0; i < p.geo.num_chunks; ++i)
          chunks.push_back(src.view(static_cast<size_t>(p.geo.chunk_len(i)) + 8, "a payload chunk"));
        for_chunks(p.geo.num_chunks, p.geo.payload_bytes >= kParallelMinBytes, [&](uint64_t i) {
          const size_t len = static_cast<size_t>(p.geo.chunk_len(i));
          const uint8_t* q = chunks[static_cast<size_t>(i)];
          PageCursor cur(c, runs);
          cur.seek(i * p.geo.chunk_bytes);
          Hasher hasher;
          hasher.reset(kSeedChunk0 + i);
          scatter(cur, q, len, &hasher);
          const uint64_t stored = get64(q + len), computed = hasher.digest();
          if (!sum_ok(stored, computed)) chunk_mismatch(function, i, p.geo, stored, computed);
        });
      } else {
        PageCursor cur(c, runs);
        Hasher hasher;
        std::vector<uint8_t> buf;
        for (uint64_t i = 0; i < p.geo.num_chunks; ++i) {
          const size_t len = static_cast<size_t>(p.geo.chunk_len(i));
          const uint8_t* q = take(src, len + 8, buf, "a payload chunk");
          hasher.reset(kSeedChunk0 + i);
          scatter(cur, q, len, &hasher);
          const uint64_t stored = get64(q + len), computed = hasher.digest();
          if (!sum_ok(stored, computed)) chunk_mismatch(function, i, p.geo, stored, computed);
        }
      }
    }
    src.expect_end(function);
  } catch (...) {
    kvp_cache_destroy(h);
    throw;
  }
  return h;
}

void deserialize_into(Cache& cache, Source& src, const int32_t* dst_ids, uint32_t num_dst_ids, const char* function) {
  cache.check_healthy(function);
  const kvp_config& t = cache.config();
  if (dst_ids == nullptr && num_dst_ids != 0)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: dst_page_ids is NULL but num_dst_page_ids is %u", function, num_dst_ids);
  if (dst_ids != nullptr) {
    bool dup = false;
    int32_t bad = 0;
    const ptrdiff_t at = check_ids(dst_ids, num_dst_ids, t.num_pages, &dup, &bad);
    if (at >= 0) {
      if (dup) fail(KVP_ERR_INVALID_ARGUMENT, "%s: page id %d appears more than once in dst_page_ids", function, bad);
      fail(KVP_ERR_INVALID_ARGUMENT, "%s: dst_page_ids[%td] = %d is out of range [0, %lld)", function, at, bad,
           static_cast<long long>(t.num_pages));
    }
  }

  Parsed p = read_header(src, function);
  const kvp_config& b = p.config;
  struct Field {
    const char* name;
    long long blob, target;
  };
  const Field fields[] = {{"num_hidden_layers", b.num_hidden_layers, t.num_hidden_layers},
                          {"num_kv_heads", b.num_kv_heads, t.num_kv_heads},
                          {"k_headdim", b.k_headdim, t.k_headdim},
                          {"v_headdim", b.v_headdim, t.v_headdim},
                          {"page_size", b.page_size, t.page_size}};
  for (const Field& f : fields)
    if (f.blob != f.target)
      fail(KVP_ERR_FORMAT_MISMATCH, "%s: the blob's %s is %lld but the target cache's is %lld", function, f.name,
           f.blob, f.target);
  if (b.version != t.version)
    fail(KVP_ERR_FORMAT_MISMATCH, "%s: the blob's layout is %s but the target cache's is %s", function,
         kvp_layout_name(b.version), kvp_layout_name(t.version));
  if (b.kvdtype != t.kvdtype)
    fail(KVP_ERR_FORMAT_MISMATCH, "%s: the blob's dtype is %s but the target cache's is %s", function,
         kvp_dtype_name(b.kvdtype), kvp_dtype_name(t.kvdtype));
  if (p.geo.page_bytes != cache.page_bytes())
    fail(KVP_ERR_FORMAT_MISMATCH, "%s: the blob's pages have %llu bytes but the target's have %zu", function,
         (u64)p.geo.page_bytes, cache.page_bytes());
  if (dst_ids != nullptr && num_dst_ids != p.geo.num_stored)
    fail(KVP_ERR_FORMAT_MISMATCH, "%s: the blob holds %llu pages but %u destination page ids were given", function,
         (u64)p.geo.num_stored, num_dst_ids);

  read_table(src, p, function);
  if (dst_ids == nullptr)
    for (size_t j = 0; j < p.ids.size(); ++j)
      if (p.ids[j] >= t.num_pages)
        fail(KVP_ERR_FORMAT_MISMATCH, "%s: the blob's page %d does not exist in the target cache (%lld pages); "
             "pass dst_page_ids to load it elsewhere", function, p.ids[j], static_cast<long long>(t.num_pages));

  // Pass 1: collect every chunk (pointers into in-memory input, or staged copies of a stream)
  // and verify all checksums before the target is touched.
  std::vector<const uint8_t*> chunks;
  std::vector<std::vector<uint8_t>> staged;
  for (uint64_t i = 0; i < p.geo.num_chunks; ++i) {
    const size_t len = static_cast<size_t>(p.geo.chunk_len(i));
    const uint8_t* q = src.view(len + 8, "a payload chunk");
    if (q == nullptr) {
      staged.emplace_back();
      read_growing(src, staged.back(), len + 8, "a payload chunk");
      q = staged.back().data();
    }
    chunks.push_back(q);
  }
  src.expect_end(function);
  const bool par = p.geo.payload_bytes >= kParallelMinBytes;
  for_chunks(p.geo.num_chunks, par, [&](uint64_t i) {
    const size_t len = static_cast<size_t>(p.geo.chunk_len(i));
    const uint8_t* q = chunks[static_cast<size_t>(i)];
    Hasher hasher;
    hasher.reset(kSeedChunk0 + i);
    hash_copy(&hasher, nullptr, q, len);
    const uint64_t stored = get64(q + len), computed = hasher.digest();
    if (!sum_ok(stored, computed)) chunk_mismatch(function, i, p.geo, stored, computed);
  });

  // Pass 2: everything checked; write the target.
  if (p.geo.payload_bytes == 0) return;
  const std::vector<int32_t> ids = dst_ids != nullptr ? std::vector<int32_t>(dst_ids, dst_ids + num_dst_ids) : p.ids;
  const RunTable runs(ids, cache.page_bytes());
  if (const std::unique_ptr<HostPipe> pipe = cache.backend().host_pipe(function)) {
    upload_payload(cache, runs, p.geo, *pipe, false, [&](uint64_t i) { return chunks[static_cast<size_t>(i)]; },
                   function);
    return;
  }
  for_chunks(p.geo.num_chunks, par, [&](uint64_t i) {
    PageCursor cur(cache, runs);
    cur.seek(i * p.geo.chunk_bytes);
    scatter(cur, chunks[static_cast<size_t>(i)], static_cast<size_t>(p.geo.chunk_len(i)), nullptr);
  });
}

void inspect(Source& src, bool verify, kvp_serialized_info* out, const char* function) {
  if (out->struct_size < sizeof(kvp_serialized_info))
    fail(KVP_ERR_VERSION_MISMATCH, "%s: kvp_serialized_info.struct_size %u is smaller than version 1 (%zu bytes)",
         function, out->struct_size, sizeof(kvp_serialized_info));
  Parsed p = read_header(src, function);
  if (verify) {
    read_table(src, p, function);
    std::vector<uint8_t> buf;
    for (uint64_t i = 0; i < p.geo.num_chunks; ++i) {
      const size_t len = static_cast<size_t>(p.geo.chunk_len(i));
      const uint8_t* q = take(src, len + 8, buf, "a payload chunk");
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
  std::memcpy(out, &info, sizeof info);
}

}  // namespace kvp::detail::ser
