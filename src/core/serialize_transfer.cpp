#include "core/serialize_transfer.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <mutex>
#include <utility>

#include "util/nontemporal.hpp"
#include "util/thread_pool.hpp"

namespace kvp::detail::ser {
namespace {

// The selected pages as runs of adjacent ascending ids (one contiguous range per layer each),
// with their byte offsets inside one layer's share of the payload.
struct RunTable {
  struct Run {
    int64_t first;   // first page id
    uint64_t bytes;  // bytes of the run in one layer
    uint64_t start;  // offset of the run inside one layer's share of the payload
  };
  HostVector<Run> runs;
  uint64_t per_layer = 0;
  size_t page_bytes = 0;
  RunTable(const HostVector<int32_t>& ids, size_t pb) : runs(ids.get_allocator()), page_bytes(pb) {
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

// Runs f(i) for every chunk i, on the thread pool when `parallel` (the exception of the lowest
// failing chunk is rethrown once every chunk has run).
constexpr uint64_t kParallelMinBytes = 256 * 1024;
template <class F>
void for_chunks(uint64_t n, bool parallel, F&& f) {
  const int threads = parallel ? ThreadPool::instance().max_threads() : 1;
  parallel_for(static_cast<int64_t>(n), threads, [&f](int64_t i) { f(static_cast<uint64_t>(i)); });
}

// Bytes per host pass (hash, then copy): small enough that the copy finds them in cache.
constexpr size_t kHostPieceBytes = 64 * 1024;
// Bytes per pread(2) / pwrite(2) of a file: one system call and one hash pass each, small enough
// that the hash finds in cache what the read just wrote (or the write what the hash just read).
constexpr size_t kFilePieceBytes = 256 * 1024;

// How a host pass stores: around the caches into memory nobody reads soon (pages being restored,
// a caller's buffer), or through them into a buffer that is handed on right away (write(2), a
// writer callback, which then read it from cache rather than from memory).
enum class Store { kStream, kCached };

// Host-memory pass over n bytes (at most kHostPieceBytes): hash them into `h` (when given),
// prefetching ahead because one thread's sequential reads alone do not keep enough cache-line
// requests in flight to reach the memory bandwidth; then copy them from cache to `dst` (when
// given). Hashing the source rather than the copy keeps the destination write-only (no read for
// ownership with Store::kStream, see copy_nontemporal).
void hash_copy(Hasher* h, uint8_t* dst, const uint8_t* src, size_t n, Store store = Store::kStream) {
  if (h != nullptr) {
    constexpr size_t kBlock = 4096, kAhead = 4 * kBlock;
    for (size_t off = 0; off < n; off += kBlock) {
      const size_t len = std::min(kBlock, n - off);
      for (size_t a = off + kAhead; a < off + kAhead + len && a < n; a += 64) __builtin_prefetch(src + a, 0, 3);
      h->update(src + off, len);
    }
  }
  if (dst == nullptr) return;
  if (store == Store::kStream)
    copy_nontemporal(dst, src, n);
  else
    std::memcpy(dst, src, n);
}

// Calls f(offset, page_bytes, m) for the next n payload bytes of the (host) cache, in ranges of at
// most `piece` bytes that stay inside one run of pages.
template <class F>
void for_pieces(PageCursor& cur, size_t n, size_t piece, F&& f) {
  for (size_t done = 0; done < n;) {
    const auto seg = cur.next(std::min(n - done, piece));
    f(done, seg.first, seg.second);
    done += seg.second;
  }
}

// Copies the next n payload bytes from the (host) cache to `dst`, hashing them into `h`.
void gather(PageCursor& cur, uint8_t* dst, size_t n, Hasher& h, Store store) {
  for_pieces(cur, n, kHostPieceBytes, [&](size_t off, uint8_t* p, size_t m) { hash_copy(&h, dst + off, p, m, store); });
}

// Copies n host bytes into the next payload positions of the (host) cache; hashes them first when
// `h` is given (the piece is then still in cache when it is copied).
void scatter(PageCursor& cur, const uint8_t* src, size_t n, Hasher* h) {
  for_pieces(cur, n, kHostPieceBytes, [&](size_t off, uint8_t* p, size_t m) { hash_copy(h, p, src + off, m); });
}

// Checks chunk i's stored checksum against the hash of its bytes.
void check_sum(const Geometry& g, uint64_t i, uint64_t stored, const Hasher& h, const char* fn) {
  const uint64_t computed = h.digest();
  if (!sum_ok(stored, computed)) chunk_mismatch(fn, i, g, stored, computed);
}
// The same for chunk i as len bytes at q with its checksum right after.
void check_chunk(const Geometry& g, uint64_t i, const uint8_t* q, size_t len, const Hasher& h, const char* fn) {
  check_sum(g, i, get64(q + len), h, fn);
}

// ---- files: chunks are independent, so every path below runs them on the thread pool, each
// chunk moving between the cache's pages and the file in kFilePieceBytes system calls with no
// staging copy.

uint64_t payload_span(const Geometry& g) { return g.payload_bytes + 8 * g.num_chunks; }

// Threads for a payload: the pool's when it is large enough to be worth waking them.
int threads_for(const Geometry& g) {
  return g.payload_bytes >= kParallelMinBytes ? ThreadPool::instance().max_threads() : 1;
}

// Writes every chunk from the (host) cache's pages to `out`: each piece is hashed, then written
// while still in cache.
void write_chunks_at(const Cache& cache, const RunTable& runs, const Geometry& g, RandomSink& out) {
  for_chunks(g.num_chunks, threads_for(g) > 1, [&](uint64_t i) {
    const size_t len = static_cast<size_t>(g.chunk_len(i));
    const uint64_t off = g.chunk_offset(i);
    PageCursor cur(cache, runs);
    cur.seek(i * g.chunk_bytes);
    Hasher hasher;
    hasher.reset(kSeedChunk0 + i);
    for_pieces(cur, len, kFilePieceBytes, [&](size_t o, uint8_t* p, size_t m) {
      hash_copy(&hasher, nullptr, p, m);
      out.write_at(off + o, p, m);
    });
    uint8_t sum[8];
    put64(sum, hasher.digest());
    out.write_at(off + len, sum, 8);
  });
}

// Reads every chunk from `in` straight into the (host) cache's pages, each piece hashed right
// after it lands; with `verify`, a chunk whose checksum differs throws (the lowest such chunk),
// its bytes already in the pages.
void read_chunks_at(const Cache& cache, const RunTable& runs, const Geometry& g, RandomSource& in,
                    bool verify, const char* fn) {
  for_chunks(g.num_chunks, threads_for(g) > 1, [&](uint64_t i) {
    const size_t len = static_cast<size_t>(g.chunk_len(i));
    const uint64_t off = g.chunk_offset(i);
    PageCursor cur(cache, runs);
    cur.seek(i * g.chunk_bytes);
    Hasher hasher;
    hasher.reset(kSeedChunk0 + i);
    for_pieces(cur, len, kFilePieceBytes, [&](size_t o, uint8_t* p, size_t m) {
      in.read_at(off + o, p, m, "a payload chunk");
      if (verify) hasher.update(p, m);
    });
    if (!verify) return;
    uint8_t sum[8];
    in.read_at(off + len, sum, 8, "a chunk checksum");
    check_sum(g, i, get64(sum), hasher, fn);
  });
}

// ---- device caches: pieces of piece_bytes() through the HostPipe. Pieces may span chunk
// boundaries (a chunk can be as small as 64 bytes); piece j uses slot j % 2.

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
  const Store store = sink.contiguous() != nullptr ? Store::kStream : Store::kCached;
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
          hash_copy(&hasher, out + off, q, m, store);
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
          if (verify) check_chunk(g, i, in, len, hasher, function);
        });
    enqueue_piece(pipe, cur, g, j, false);
  }
  pipe.wait(0);
  pipe.wait(1);
}

}  // namespace

void write_payload(const Cache& cache, const HostVector<int32_t>& ids, const Geometry& g, HostPipe* pipe,
                   Sink& sink) {
  if (g.payload_bytes == 0) return;
  const RunTable runs(ids, cache.page_bytes());
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
      gather(cur, p, len, hasher, Store::kStream);
      put64(p + len, hasher.digest());
    });
    sink.commit(static_cast<size_t>(payload_span(g)));
    return;
  }
  if (RandomSink* out = sink.random_access()) {
    write_chunks_at(cache, runs, g, *out);
    return;
  }
  // Streaming sinks hand each chunk on right away: stage it with ordinary stores.
  PageCursor cur(cache, runs);
  Hasher hasher;
  for (uint64_t i = 0; i < g.num_chunks; ++i) {
    const size_t len = static_cast<size_t>(g.chunk_len(i));
    uint8_t* p = sink.reserve(len + 8);
    hasher.reset(kSeedChunk0 + i);
    gather(cur, p, len, hasher, Store::kCached);
    put64(p + len, hasher.digest());
    sink.commit(len + 8);
  }
}

void read_payload_checked(const Cache& cache, const HostVector<int32_t>& ids, const Geometry& g, Source& src,
                          const char* fn) {
  if (g.payload_bytes == 0) return;
  const RunTable runs(ids, cache.page_bytes());
  HostVector<uint8_t> buf(cache.allocator());
  auto chunk_at = [&](uint64_t i) { return src.take(static_cast<size_t>(g.chunk_len(i)) + 8, buf, "a payload chunk"); };
  if (HostPtr<HostPipe> pipe = cache.backend().host_pipe(fn)) {
    upload_payload(cache, runs, g, *pipe, true, chunk_at, fn);  // checked while staged
    return;
  }
  if (RandomSource* in = src.random_access()) {
    read_chunks_at(cache, runs, g, *in, true, fn);
    src.pos += payload_span(g);
    return;
  }
  if (src.in_memory()) {
    // All chunks are addressable: check and store them in parallel.
    HostVector<const uint8_t*> chunks(cache.allocator());
    for (uint64_t i = 0; i < g.num_chunks; ++i) chunks.push_back(chunk_at(i));
    for_chunks(g.num_chunks, g.payload_bytes >= kParallelMinBytes, [&](uint64_t i) {
      const size_t len = static_cast<size_t>(g.chunk_len(i));
      PageCursor cur(cache, runs);
      cur.seek(i * g.chunk_bytes);
      Hasher hasher;
      hasher.reset(kSeedChunk0 + i);
      scatter(cur, chunks[static_cast<size_t>(i)], len, &hasher);
      check_chunk(g, i, chunks[static_cast<size_t>(i)], len, hasher, fn);
    });
    return;
  }
  PageCursor cur(cache, runs);
  Hasher hasher;
  for (uint64_t i = 0; i < g.num_chunks; ++i) {
    const size_t len = static_cast<size_t>(g.chunk_len(i));
    const uint8_t* q = chunk_at(i);
    hasher.reset(kSeedChunk0 + i);
    scatter(cur, q, len, &hasher);
    check_chunk(g, i, q, len, hasher, fn);
  }
}

void verify_chunks(const Geometry& g, const HostVector<const uint8_t*>& chunks, const char* fn) {
  for_chunks(g.num_chunks, g.payload_bytes >= kParallelMinBytes, [&](uint64_t i) {
    const size_t len = static_cast<size_t>(g.chunk_len(i));
    const uint8_t* q = chunks[static_cast<size_t>(i)];
    Hasher hasher;
    hasher.reset(kSeedChunk0 + i);
    hash_copy(&hasher, nullptr, q, len);
    check_chunk(g, i, q, len, hasher, fn);
  });
}

void store_chunks(const Cache& cache, const HostVector<int32_t>& ids, const Geometry& g,
                  const HostVector<const uint8_t*>& chunks, const char* fn) {
  if (g.payload_bytes == 0) return;
  const RunTable runs(ids, cache.page_bytes());
  if (HostPtr<HostPipe> pipe = cache.backend().host_pipe(fn)) {
    upload_payload(cache, runs, g, *pipe, false, [&](uint64_t i) { return chunks[static_cast<size_t>(i)]; }, fn);
    return;
  }
  for_chunks(g.num_chunks, g.payload_bytes >= kParallelMinBytes, [&](uint64_t i) {
    PageCursor cur(cache, runs);
    cur.seek(i * g.chunk_bytes);
    scatter(cur, chunks[static_cast<size_t>(i)], static_cast<size_t>(g.chunk_len(i)), nullptr);
  });
}

void verify_chunks_at(const Geometry& g, RandomSource& in, const HostAllocator& alloc, const char* fn) {
  if (g.num_chunks == 0) return;
  // One scratch piece per worker; the workers claim chunks in turn. The lowest bad chunk is the
  // one reported, as on every other path.
  const int workers = static_cast<int>(std::min<uint64_t>(static_cast<uint64_t>(threads_for(g)), g.num_chunks));
  HostBuffer<uint8_t> scratch(alloc);
  scratch.allocate(static_cast<size_t>(workers) * kFilePieceBytes);
  std::atomic<uint64_t> next{0};
  std::mutex mu;
  uint64_t bad = std::numeric_limits<uint64_t>::max(), bad_stored = 0, bad_computed = 0;
  parallel_for(workers, workers, [&](int64_t w) {
    uint8_t* buf = scratch.data() + static_cast<size_t>(w) * kFilePieceBytes;
    for (uint64_t i; (i = next.fetch_add(1)) < g.num_chunks;) {
      const size_t len = static_cast<size_t>(g.chunk_len(i));
      const uint64_t off = g.chunk_offset(i);
      Hasher hasher;
      hasher.reset(kSeedChunk0 + i);
      for (size_t o = 0; o < len;) {
        const size_t m = std::min(kFilePieceBytes, len - o);
        in.read_at(off + o, buf, m, "a payload chunk");
        hasher.update(buf, m);
        o += m;
      }
      in.read_at(off + len, buf, 8, "a chunk checksum");
      const uint64_t stored = get64(buf), computed = hasher.digest();
      if (sum_ok(stored, computed)) continue;
      std::lock_guard<std::mutex> lock(mu);
      if (i < bad) {
        bad = i;
        bad_stored = stored;
        bad_computed = computed;
      }
    }
  });
  if (bad != std::numeric_limits<uint64_t>::max()) chunk_mismatch(fn, bad, g, bad_stored, bad_computed);
}

void store_chunks_at(const Cache& cache, const HostVector<int32_t>& ids, const Geometry& g, RandomSource& in,
                     const char* fn) {
  if (g.payload_bytes == 0) return;
  const RunTable runs(ids, cache.page_bytes());
  if (HostPtr<HostPipe> pipe = cache.backend().host_pipe(fn)) {
    HostVector<uint8_t> buf(cache.allocator());  // one chunk, reused
    auto chunk_at = [&](uint64_t i) {
      const size_t n = static_cast<size_t>(g.chunk_len(i)) + 8;
      if (buf.size() < n) buf.resize(n);
      in.read_at(g.chunk_offset(i), buf.data(), n, "a payload chunk");
      return static_cast<const uint8_t*>(buf.data());
    };
    upload_payload(cache, runs, g, *pipe, false, chunk_at, fn);
    return;
  }
  read_chunks_at(cache, runs, g, in, false, fn);
}

}  // namespace kvp::detail::ser
