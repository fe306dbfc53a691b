#include "core/cache.hpp"

#include <cstring>

#include "core/dtype.hpp"
#include "util/error.hpp"

namespace kvp::detail {

Cache::Cache(const kvp_config& cfg, std::unique_ptr<Backend> backend)
    : config_(cfg), layout_(layout_of(cfg, "kvp_cache_create")), backend_(std::move(backend)) {
  if (config_.num_pages < 1)
    fail(KVP_ERR_INVALID_ARGUMENT, "kvp_cache_create: num_pages is %lld; create the config with kvp_config_create first",
         static_cast<long long>(config_.num_pages));
  layers_.reserve(static_cast<size_t>(layout_.num_layers));
  try {
    for (int64_t l = 0; l < layout_.num_layers; ++l) layers_.push_back(static_cast<uint8_t*>(backend_->alloc_zeroed(layer_bytes())));
  } catch (...) {
    for (uint8_t* p : layers_) backend_->release(p, layer_bytes());
    layers_.clear();
    throw;
  }
  backend_->attach(*this);
}

Cache::~Cache() {
  for (uint8_t* p : layers_) backend_->release(p, layer_bytes());
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
  const int64_t H = L.num_kv_heads, D = L.head_dim;
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
      const int kv = kind == KVP_VIEW_VALUES ? 1 : 0;
      if (L.h64) {
        t.data = base + static_cast<size_t>(kv * 64 * L.itemsize);
        set4(P, S, H, D, page_stride, row_stride, Dst, 1);
      } else {
        t.data = base + static_cast<size_t>(kv * Dst * L.itemsize);
        set4(P, S, H, D, page_stride, row_stride, 2 * Dst, 1);
      }
      break;
    }
    case KVP_VIEW_REFERENCE_KEYS:
    case KVP_VIEW_REFERENCE_VALUES: {
      // flattened[:, :, 0::2, :] and [:, :, 1::2, :] over all C combined entries and all lanes.
      const int64_t start = kind == KVP_VIEW_REFERENCE_VALUES ? 1 : 0;
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

void Cache::set_async_error(kvp_status code, std::string message, bool sticky) {
  std::lock_guard<std::mutex> lock(async_mu_);
  if (async_code_ != KVP_OK && async_sticky_) return;  // keep the first sticky fault
  async_code_ = code;
  async_sticky_ = sticky;
  async_message_ = std::move(message);
}

kvp_status Cache::async_error(std::string* message) const {
  if (poll_async) poll_async(const_cast<Cache&>(*this));
  std::lock_guard<std::mutex> lock(async_mu_);
  if (message != nullptr) *message = async_message_;
  return async_code_;
}

bool Cache::clear_async_error() {
  if (poll_async) poll_async(*this);
  std::lock_guard<std::mutex> lock(async_mu_);
  if (async_code_ != KVP_OK && async_sticky_) return false;
  async_code_ = KVP_OK;
  async_message_.clear();
  return true;
}

void Cache::check_healthy(const char* function) const {
  std::lock_guard<std::mutex> lock(async_mu_);
  if (async_code_ != KVP_OK)
    fail(KVP_ERR_DEVICE_LOST, "%s: the cache has a pending asynchronous error (%s: %s); read it with "
         "kvp_cache_get_async_error%s", function, kvp_status_name(async_code_), async_message_.c_str(),
         async_sticky_ ? " and destroy the cache" : " and clear it with kvp_cache_clear_async_error");
}

Cache& cache_from(const kvp_cache* h, const char* function) {
  check_header(h, kMagicCache, function);
  return *h->impl;
}

}  // namespace kvp::detail
