#include "core/cache.hpp"

#include <atomic>
#include <cstring>

#include "core/dtype.hpp"
#include "util/error.hpp"
#include "util/options.hpp"

namespace kvp::detail {

namespace {
uint64_t next_cache_id() noexcept {
  static std::atomic<uint64_t> last{0};
  return last.fetch_add(1, std::memory_order_relaxed) + 1;
}
}  // namespace

Cache::Cache(const kvp_config& cfg, const ShardCoord& shard, HostPtr<Backend> backend, const HostAllocator& alloc,
             Backend::Fill fill)
    : config_(cfg),
      shard_(shard),
      layout_(shard_layout(cfg, shard, "kvp_cache_create")),
      id_(next_cache_id()),
      plan_scope_{id_, shard.dp_rank, shard.dp_rank + 1},
      alloc_(alloc),
      backend_(std::move(backend)),
      layers_(StdAllocator<uint8_t*>(alloc)) {
  layers_.resize(static_cast<size_t>(layout_.num_layers));
  backend_->alloc_layers(layers_.size(), layer_bytes(), fill, layers_.data());
}

Cache::~Cache() { backend_->release_layers(layers_.data(), layers_.size(), layer_bytes()); }

void Cache::refuse_shard(const char* fn, bool dp_only) const {
  if (dp_only ? shard_.dp_size > 1 : layout_.shard)
    fail(KVP_ERR_UNSUPPORTED, "%s: not supported on a shard yet (this cache is shard tp %lld/%lld, dp %lld/%lld)", fn,
         static_cast<long long>(shard_.tp_rank), static_cast<long long>(shard_.tp_size),
         static_cast<long long>(shard_.dp_rank), static_cast<long long>(shard_.dp_size));
}

void Cache::check_layer(int64_t layer, const char* function) const {
  if (layer < 0 || layer >= layout_.num_layers)
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: layer %lld is out of range (the cache has %lld layers)", function,
         static_cast<long long>(layer), static_cast<long long>(layout_.num_layers));
}

kvp_tensor Cache::view(int64_t layer, kvp_view_kind kind) const {
  const Layout& L = layout_;
  kvp_tensor t;
  std::memset(&t, 0, sizeof t);
  t.dtype = L.dtype;
  t.device_type = device_type();
  t.device_id = device_id();
  uint8_t* base = layer_data(layer);
  const int64_t P = L.num_pages, S = L.page_size, C = L.combined_heads, Dst = L.storage_head_dim;
  const int64_t D = L.head_dim;
  auto set4 = [&](int64_t d0, int64_t d1, int64_t d2, int64_t d3, int64_t s0, int64_t s1, int64_t s2, int64_t s3) {
    t.ndim = 4;
    t.shape[0] = d0; t.shape[1] = d1; t.shape[2] = d2; t.shape[3] = d3;
    t.strides[0] = s0; t.strides[1] = s1; t.strides[2] = s2; t.strides[3] = s3;
  };
  const int64_t page_stride = S * C * Dst, row_stride = C * Dst;
  switch (kind) {
    case KVP_VIEW_PAGES:
      t.data = base;
      if (L.v3) {
        t.ndim = 5;
        for (int i = 0; i < 5; ++i) t.shape[i] = L.shape[i];
        t.strides[4] = 1;
        t.strides[3] = Dst;
        t.strides[2] = L.packing * Dst;
        t.strides[1] = row_stride;
        t.strides[0] = page_stride;
      } else {
        set4(P, S, C, Dst, page_stride, row_stride, Dst, 1);
      }
      break;
    case KVP_VIEW_FLAT:
      t.data = base;
      set4(P, S, C, Dst, page_stride, row_stride, Dst, 1);
      break;
    case KVP_VIEW_KEYS:
    case KVP_VIEW_VALUES: {
      // The heads whose keys (values) this cache holds: all H of a whole cache.
      const int kv = kind == KVP_VIEW_VALUES ? 1 : 0;
      const HeadRange h = held_heads(L, kv);
      if (L.h64) {
        t.data = base + static_cast<size_t>(((h.begin - L.slot_begin) * Dst + kv * 64) * L.itemsize);
        set4(P, S, h.end - h.begin, D, page_stride, row_stride, Dst, 1);
      } else {
        t.data = base + static_cast<size_t>((2 * h.begin + kv - L.slot_begin) * Dst * L.itemsize);
        set4(P, S, h.end - h.begin, D, page_stride, row_stride, 2 * Dst, 1);
      }
      break;
    }
    case KVP_VIEW_REFERENCE_KEYS:
    case KVP_VIEW_REFERENCE_VALUES: {
      // flattened[:, :, 0::2, :] and [:, :, 1::2, :] over all C combined entries and all lanes (of
      // a shard: its entries whose whole-layout index is even / odd).
      const int64_t start = ((kind == KVP_VIEW_REFERENCE_VALUES ? 1 : 0) + L.slot_begin) % 2;
      const int64_t count = C > start ? (C - start + 1) / 2 : 0;
      t.data = base + static_cast<size_t>(start * Dst * L.itemsize);
      set4(P, S, count, Dst, page_stride, row_stride, 2 * Dst, 1);
      break;
    }
    default:
      fail(KVP_ERR_INVALID_ARGUMENT, "kvp_cache_get_view: unknown view kind %u", static_cast<unsigned>(kind));
  }
  return t;
}

void Cache::read_layer(int64_t layer, void* host_dst, size_t cap, kvp_stream stream, const char* fn) const {
  check_layer(layer, fn);
  if (cap < layer_bytes())
    fail(KVP_ERR_BUFFER_TOO_SMALL, "%s: cap is %zu bytes but layer %lld has %zu bytes", fn, cap,
         static_cast<long long>(layer), layer_bytes());
  (void)async_error(nullptr);  // polls device-side error flags
  check_healthy(fn);
  backend_->copy_to_host(host_dst, layer_data(layer), layer_bytes(), stream, true, fn);
}

void Cache::write_layer(int64_t layer, const void* host_src, size_t size, kvp_stream stream, const char* fn) {
  check_layer(layer, fn);
  if (size != layer_bytes())
    fail(KVP_ERR_INVALID_ARGUMENT, "%s: size is %zu bytes but layer %lld has %zu bytes", fn, size,
         static_cast<long long>(layer), layer_bytes());
  (void)async_error(nullptr);
  check_healthy(fn);
  backend_->copy_from_host(layer_data(layer), host_src, layer_bytes(), stream, true, fn);
}

kvp_cache* create_cache(const kvp_config* config, const kvp_cache_options* opts, const ShardRanks* ranks,
                        const char* fn, Backend::Fill fill) {
  const kvp_config cfg = read_config(config, fn);
  kvp_cache_options o;
  std::memset(&o, 0, sizeof o);
  if (opts != nullptr)
    o = read_versioned(opts, kCacheOptionsV1Size, KVP_CACHE_OPTIONS_VERSION, fn, "kvp_cache_options");
  constexpr uint32_t kKnownFlags = KVP_CACHE_FLAG_NO_HUGE_PAGES | KVP_CACHE_FLAG_PREFAULT;
  if ((o.flags & ~kKnownFlags) != 0)
    fail(KVP_ERR_UNSUPPORTED, "%s: kvp_cache_options.flags 0x%x has bits this library does not know (0x%x)", fn,
         o.flags, o.flags & ~kKnownFlags);
  if (o._reserved != 0)
    fail(KVP_ERR_UNSUPPORTED, "%s: kvp_cache_options._reserved is %u; it must be 0", fn, o._reserved);
  const kvp_device_type dev = o.device_type == 0 ? KVP_DEVICE_CPU : o.device_type;
  check_host_allocator(o.allocator, fn);
  // Validate the config before touching any device (make_backend checks the device type and id).
  (void)layout_with_pages(cfg, fn);
  const ShardCoord shard = ranks != nullptr ? shard_coord(cfg, ranks->tp_rank, ranks->dp_rank, fn) : ShardCoord{};
  const HostAllocator alloc(o.allocator);
  HostPtr<Cache> cache =
      make_host<Cache>(alloc, cfg, shard, make_backend(dev, o.device_id, alloc, o.flags, fn), alloc, fill);
  return handle_new<kvp_cache>(std::move(cache));
}

}  // namespace kvp::detail
