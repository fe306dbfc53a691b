// The "new user" program in C++: plan a Llama-3-8B-shaped KV cache (32 layers, 8 KV heads, head
// dim 128, bf16) within a 4 GiB budget of the CPU's memory, create it, write two prefills and
// three decode tokens in ONE mixed batch, read the keys and values back, save the pages in use to
// a file, load them into a new cache and compare again. The same program as new_user.c, written
// the C++ way over the C API: handles owned by std::unique_ptr, errors as exceptions.
//
// The batch goes through kvp_metadata_build(), which puts decode requests first: row i of the
// key/value tensors belongs to request order[i], so each request's tokens are packed in that row
// order (the C program shows the other way: KVP_BATCH_FLAG_REQUEST_ORDER, no repacking). Every value is a multiple of 1/64 in [-2, 2), exact in bf16, so what the cache holds
// compares exactly with what was written (kvp_convert turns the bf16 read back into f32).
//
// Usage: new_user_cpp [FILE] (default: new_user_cpp.kvps; removed at the end).
#include <array>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <kvpages.h>

namespace {

constexpr int64_t kLayers = 32, kKvHeads = 8, kHeadDim = 128;
constexpr int64_t kPageSize = 16;  // tokens per page: small pages keep the memory touched small
constexpr int64_t kRow = kKvHeads * kHeadDim;  // elements of one token's keys in one layer

struct Request {
  const char *name;
  int64_t computed, scheduled;  // tokens already in the cache; tokens written now
  std::vector<int32_t> pages;   // the request's pages, in logical order
};

// Prefill, decode, prefill, decode, decode: the builder has to reorder the batch.
const std::vector<Request> kRequests = {
    {"prefill A", 0, 20, {1, 2}}, {"decode B", 3, 1, {3}},         {"prefill C", 0, 5, {4}},
    {"decode D", 17, 1, {5, 6}},  {"decode E", 40, 1, {7, 8, 9}},
};
const std::vector<int32_t> kPagesInUse = {1, 2, 3, 4, 5, 6, 7, 8, 9};

void check(kvp_status s, const char *what) {
  if (s != KVP_OK) throw std::runtime_error(std::string(what) + ": " + kvp_status_name(s) + ": " + kvp_last_error_message());
}

struct CacheDeleter {
  void operator()(kvp_cache *c) const { kvp_cache_destroy(c); }
};
struct MetadataDeleter {
  void operator()(kvp_metadata *m) const { kvp_metadata_destroy(m); }
};
using Cache = std::unique_ptr<kvp_cache, CacheDeleter>;
using Metadata = std::unique_ptr<kvp_metadata, MetadataDeleter>;

enum class Kind { Keys, Values };

// The value written for element e of token t of request r in a layer: exact in bf16.
float element(Kind kind, int64_t layer, size_t r, int64_t t, int64_t e) {
  const int64_t n = ((kind == Kind::Values ? 7919 : 0) + layer * 131 + static_cast<int64_t>(r) * 31 + t * 17 + e * 3) % 256;
  return static_cast<float>(n - 128) / 64.0f;
}

kvp_tensor host_tensor(std::vector<uint16_t> &data, int64_t tokens) {
  kvp_tensor t{};
  t.data = data.data();
  t.dtype = KVP_DTYPE_BF16;
  t.ndim = 3;
  t.shape[0] = tokens;
  t.shape[1] = kKvHeads;
  t.shape[2] = kHeadDim;
  t.strides[0] = kRow;
  t.strides[1] = kHeadDim;
  t.strides[2] = 1;
  t.device_type = KVP_DEVICE_CPU;
  return t;
}

// Plans the cache: the shape, and a budget of 4 GiB of the memory of the device it lives on.
kvp_config plan(int64_t &total_bytes) {
  kvp_config_options o = KVP_CONFIG_OPTIONS_INIT;
  o.num_hidden_layers = kLayers;
  o.num_kv_heads = kKvHeads;
  o.kv_head_dim_size = kHeadDim;
  o.max_model_length = 8192;
  o.page_size = kPageSize;
  o.kvdtype = KVP_DTYPE_BF16;
  o.device_type = KVP_DEVICE_CPU;
  o.budget_bytes = int64_t{4} << 30;
  kvp_config cfg = KVP_CONFIG_INIT;
  check(kvp_config_create(&o, &cfg), "kvp_config_create");
  kvp_plan p = KVP_PLAN_INIT;
  check(kvp_config_plan(&cfg, &p), "kvp_config_plan");
  std::printf("plan: %lld pages of %lld tokens, %lld tokens fit in %lld bytes\n", static_cast<long long>(p.num_pages),
              static_cast<long long>(p.page_size), static_cast<long long>(p.token_capacity),
              static_cast<long long>(p.total_bytes));
  total_bytes = p.total_bytes;
  return cfg;
}

// The batch's keys or values, bf16 [T, H, D], packed in the builder's row order.
std::vector<uint16_t> pack(Kind kind, int64_t layer, const std::vector<int32_t> &order, const int32_t *query_start,
                           int64_t tokens) {
  std::vector<uint16_t> out(static_cast<size_t>(tokens * kRow));
  std::vector<float> row(kRow);
  for (size_t i = 0; i < order.size(); ++i) {
    const auto r = static_cast<size_t>(order[i]);
    for (int64_t t = 0; t < kRequests[r].scheduled; ++t) {
      for (int64_t e = 0; e < kRow; ++e) row[static_cast<size_t>(e)] = element(kind, layer, r, t, e);
      check(kvp_convert(row.data(), KVP_DTYPE_F32, &out[static_cast<size_t>((query_start[i] + t) * kRow)],
                        KVP_DTYPE_BF16, row.size()),
            "kvp_convert");
    }
  }
  return out;
}

// Writes the mixed batch into every layer.
void write_batch(kvp_cache *cache, const kvp_config &cfg) {
  std::vector<kvp_batch_request> batch;
  int64_t tokens = 0;
  for (const Request &r : kRequests) {
    batch.push_back({r.computed, r.scheduled, r.pages.data(), static_cast<int64_t>(r.pages.size())});
    tokens += r.scheduled;
  }
  std::vector<int32_t> order(batch.size());
  kvp_metadata *raw = nullptr;
  check(kvp_metadata_build(&cfg, batch.data(), static_cast<uint32_t>(batch.size()), nullptr, order.data(), &raw),
        "kvp_metadata_build");
  const Metadata md(raw);
  const int32_t *query_start = nullptr;
  check(kvp_metadata_get_array(md.get(), KVP_METADATA_QUERY_START_LOC, &query_start, nullptr), "kvp_metadata_get_array");
  std::printf("rows of the batch, decode first:");
  for (int32_t r : order) std::printf(" [%s]", kRequests[static_cast<size_t>(r)].name);
  std::printf("\n");
  for (int64_t layer = 0; layer < kLayers; ++layer) {
    auto keys = pack(Kind::Keys, layer, order, query_start, tokens);
    auto values = pack(Kind::Values, layer, order, query_start, tokens);
    const kvp_tensor k = host_tensor(keys, tokens), v = host_tensor(values, tokens);
    check(kvp_concatenate(cache, static_cast<uint32_t>(layer), &k, &v, md.get(), nullptr), "kvp_concatenate");
  }
  std::printf("wrote %lld tokens (2 prefills, 3 decodes) into %lld layers\n", static_cast<long long>(tokens),
              static_cast<long long>(kLayers));
}

// Every written key and value of every layer against what was written; returns the mismatches.
// The views are [pages, page_size, heads, head_dim] (strided).
int64_t compare(const kvp_cache *cache) {
  int64_t mismatches = 0;
  for (int64_t layer = 0; layer < kLayers; ++layer) {
    for (Kind kind : {Kind::Keys, Kind::Values}) {
      kvp_tensor view{};
      check(kvp_cache_get_view(cache, static_cast<uint32_t>(layer), kind == Kind::Keys ? KVP_VIEW_KEYS : KVP_VIEW_VALUES,
                               &view),
            "kvp_cache_get_view");
      const auto *base = static_cast<const uint16_t *>(view.data);
      for (size_t r = 0; r < kRequests.size(); ++r) {
        for (int64_t t = 0; t < kRequests[r].scheduled; ++t) {
          const int64_t pos = kRequests[r].computed + t;
          const int64_t page = kRequests[r].pages[static_cast<size_t>(pos / kPageSize)], slot = pos % kPageSize;
          for (int64_t h = 0; h < kKvHeads; ++h) {
            for (int64_t d = 0; d < kHeadDim; ++d) {
              const uint16_t *src = base + page * view.strides[0] + slot * view.strides[1] + h * view.strides[2] +
                                    d * view.strides[3];
              float got = 0;
              check(kvp_convert(src, KVP_DTYPE_BF16, &got, KVP_DTYPE_F32, 1), "kvp_convert");
              mismatches += got != element(kind, layer, r, t, h * kHeadDim + d);
            }
          }
        }
      }
    }
  }
  return mismatches;
}

int run(const std::string &path) {
  check(kvp_check_abi(KVP_VERSION_NUMBER), "kvp_check_abi");
  int64_t total_bytes = 0;
  const kvp_config cfg = plan(total_bytes);
  kvp_cache *raw = nullptr;
  check(kvp_cache_create(&cfg, nullptr, &raw), "kvp_cache_create");
  Cache cache(raw);
  write_batch(cache.get(), cfg);
  int64_t bad = compare(cache.get());
  std::printf("read back: %s\n", bad == 0 ? "every key and value as written" : "MISMATCH");

  kvp_serialize_options save = KVP_SERIALIZE_OPTIONS_INIT;
  save.page_ids = kPagesInUse.data();
  save.num_page_ids = static_cast<uint32_t>(kPagesInUse.size());
  check(kvp_serialize_to_file(cache.get(), &save, path.c_str()), "kvp_serialize_to_file");
  cache.reset();
  std::printf("saved pages 1-%zu to %s\n", kPagesInUse.size(), path.c_str());

  // A load allocates the whole 4 GiB cache (pages the file does not carry are never touched):
  // more than the default limit for a file this small allows, so allow the cache as planned.
  kvp_deserialize_options load = KVP_DESERIALIZE_OPTIONS_INIT;
  load.max_cache_bytes = static_cast<uint64_t>(total_bytes) + (1u << 20);
  check(kvp_deserialize_new_from_file(path.c_str(), &load, &raw), "kvp_deserialize_new_from_file");
  const Cache loaded(raw);
  bad += compare(loaded.get());
  std::printf("loaded into a new cache: %s\n", bad == 0 ? "every key and value as written" : "MISMATCH");
  std::remove(path.c_str());
  return bad == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char **argv) {
  try {
    return run(argc > 1 ? argv[1] : "new_user_cpp.kvps");
  } catch (const std::exception &e) {
    std::fprintf(stderr, "new_user_cpp: %s\n", e.what());
    return 1;
  }
}
