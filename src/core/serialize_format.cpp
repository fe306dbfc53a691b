#include "core/serialize_format.hpp"

#include <algorithm>
#include <cstring>
#include <limits>

#include "core/config.hpp"
#include "kvpages/version.h"
#include "util/error.hpp"

namespace kvp::detail::ser {
namespace {

using u64 = unsigned long long;  // for printf

void put16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
uint16_t get16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
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
  // Format 1.1 (header_size >= 256): the config's sharding fields and the slice held.
  kOffDataParallel = 184,
  kOffKvHeadShards = 192,
  kOffRequestedShards = 200,
  kOffRequestedDtype = 208,  // u32, then 4 reserved bytes
  kOffTpRank = 216,
  kOffDpRank = 224,          // then 16 reserved bytes; the checksum at 248
};
constexpr uint8_t kMagic[4] = {'K', 'V', 'P', 'S'};

bool mul_ok(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }
bool add_ok(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_add_overflow(a, b, out); }

}  // namespace

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

ptrdiff_t check_ids(const int32_t* ids, size_t n, int64_t limit, bool* dup, int32_t* bad, const HostAllocator& alloc) {
  for (size_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= limit) {
      *dup = false;
      *bad = ids[i];
      return static_cast<ptrdiff_t>(i);
    }
  HostVector<int32_t> sorted(ids, ids + n, alloc);
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

uint32_t header_size_for(const kvp_config& c, const ShardCoord& shard) {
  const Sharding s = sharding_of(c);
  const bool sharded = s.dp > 1 || s.shards > 1 || s.requested_shards > 1 || s.requested_dtype != c.kvdtype ||
                       shard.tp_size > 1 || shard.dp_size > 1;
  return sharded ? kHeaderSizeV11 : kHeaderSizeV1;
}

void encode_header(const kvp_config& c, const ShardCoord& shard, const Geometry& g, uint8_t* h) {
  const uint32_t hs = static_cast<uint32_t>(g.header_size);
  const bool slice = shard.tp_size > 1 || shard.dp_size > 1;
  std::memset(h, 0, hs);
  std::memcpy(h + kOffMagic, kMagic, 4);
  put16(h + kOffMajor, static_cast<uint16_t>(kFormatMajor));
  put16(h + kOffMinor, static_cast<uint16_t>(hs == kHeaderSizeV1 ? 0 : 1));
  put32(h + kOffHeaderSize, hs);
  put32(h + kOffWriterVersion, KVP_VERSION_NUMBER);
  put64(h + kOffFlags, slice ? KVP_FORMAT_FLAG_SHARD : 0);
  if (hs >= kHeaderSizeV11) {
    const Sharding s = sharding_of(c);
    puti64(h + kOffDataParallel, s.dp);
    puti64(h + kOffKvHeadShards, s.shards);
    puti64(h + kOffRequestedShards, s.requested_shards);
    put32(h + kOffRequestedDtype, s.requested_dtype);
    puti64(h + kOffTpRank, shard.tp_rank);
    puti64(h + kOffDpRank, shard.dp_rank);
  }
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
  put64(h + hs - 8, XXH3_64bits_withSeed(h, hs - 8, kSeedHeader));
}

void encode_table(const HostVector<int32_t>& ids, uint8_t* t) {
  const size_t tb = 4 * ids.size();
  for (size_t i = 0; i < ids.size(); ++i) put32(t + 4 * i, static_cast<uint32_t>(ids[i]));
  put64(t + tb, XXH3_64bits_withSeed(t, tb, kSeedTable));
}

void read_header(Source& src, Parsed& p, const char* function) {
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
  HostVector<uint8_t> hdr(hs, 0, p.ids.get_allocator());
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
  if ((p.flags & kRequiredFlagsMask & ~kKnownRequiredFlags) != 0)
    fail(KVP_ERR_FORMAT_VERSION, "%s: the blob uses required format flags 0x%08llx this library does not know "
         "(written by kvpages %u)", function, (u64)(p.flags & kRequiredFlagsMask & ~kKnownRequiredFlags),
         p.writer_version);

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
  const bool v11 = p.minor >= 1 && hs >= kHeaderSizeV11;
  if (v11) {
    c.data_parallel_size = geti64(h + kOffDataParallel);
    c.kv_head_shards = geti64(h + kOffKvHeadShards);
    c.requested_kv_head_shards = geti64(h + kOffRequestedShards);
    c.requested_kvdtype = get32(h + kOffRequestedDtype);
  }
  spell_out_sharding(c);
  if ((p.flags & KVP_FORMAT_FLAG_SHARD) != 0 && !v11)
    fail(KVP_ERR_FORMAT_CORRUPT, "%s: the blob is flagged as a shard but has no 1.1 sharding fields", function);
  if (c.num_pages < 1)
    fail(KVP_ERR_FORMAT_CORRUPT, "%s: the blob's config has num_pages %lld", function,
         static_cast<long long>(c.num_pages));
  try {
    if ((p.flags & KVP_FORMAT_FLAG_SHARD) != 0)
      p.shard = shard_coord(c, geti64(h + kOffTpRank), geti64(h + kOffDpRank), function);
    p.layout = shard_layout(c, p.shard, function);
  } catch (const error& e) {
    fail(KVP_ERR_FORMAT_CORRUPT, "%s: the blob's config is invalid (%s: %s)", function, status_name(e.code()),
         e.what());
  }
  const uint64_t page_bytes = get64(h + kOffPageBytes);
  if (page_bytes != static_cast<uint64_t>(p.layout.page_bytes_per_layer))
    fail(KVP_ERR_FORMAT_CORRUPT, "%s: page_bytes %llu in the header differs from %lld derived from the config",
         function, (u64)page_bytes, static_cast<long long>(p.layout.page_bytes_per_layer));
  const uint64_t n = get64(h + kOffNumStored);
  if (n > static_cast<uint64_t>(p.layout.num_pages))
    fail(KVP_ERR_FORMAT_CORRUPT, "%s: the blob claims %llu stored pages but its cache has only %lld pages", function,
         (u64)n, static_cast<long long>(p.layout.num_pages));
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
  const ptrdiff_t at =
      check_ids(p.ids.data(), p.ids.size(), p.config.num_pages, &dup, &bad, p.ids.get_allocator().host());
  if (at >= 0) {
    if (dup) fail(KVP_ERR_FORMAT_CORRUPT, "%s: page id %d appears more than once in the blob", function, bad);
    fail(KVP_ERR_FORMAT_CORRUPT, "%s: stored page id #%td = %u is out of range [0, %lld)", function, at,
         static_cast<uint32_t>(bad), static_cast<long long>(p.config.num_pages));
  }
  const Layout& L = p.layout;  // a shard's blob holds pages of its block only
  for (size_t i = 0; i < p.ids.size(); ++i)
    if (p.ids[i] < L.page_begin || p.ids[i] >= L.page_begin + L.num_pages)
      fail(KVP_ERR_FORMAT_CORRUPT, "%s: stored page id #%zu = %d is outside the shard's pages [%lld, %lld)", function, i,
           p.ids[i], static_cast<long long>(L.page_begin), static_cast<long long>(L.page_begin + L.num_pages));
}

[[noreturn]] void chunk_mismatch(const char* function, uint64_t i, const Geometry& g, uint64_t stored,
                                 uint64_t computed) {
  fail(KVP_ERR_FORMAT_CHECKSUM,
       "%s: checksum mismatch in payload chunk %llu of %llu (payload bytes %llu..%llu): stored %016llx, "
       "computed %016llx",
       function, (u64)i, (u64)g.num_chunks, (u64)(i * g.chunk_bytes), (u64)(i * g.chunk_bytes + g.chunk_len(i)),
       (u64)stored, (u64)computed);
}

}  // namespace kvp::detail::ser
