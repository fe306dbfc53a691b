// kvp_cache_export_dlpack: zero-copy DLPack (0.6) export of a cache view.
#include <cstdlib>
#include <cstring>

#include "core/cache.hpp"
#include "kvpages/dlpack.h"
#include "util/error.hpp"
#include "util/handle.hpp"

using namespace kvp::detail;

namespace {

// One malloc'ed block: the managed tensor followed by its shape and strides. It never refers to
// the cache, so the deleter is safe to call after the cache has been destroyed.
struct dlpack_export {
  DLManagedTensor managed;
  int64_t shape[KVP_MAX_DIMS];
  int64_t strides[KVP_MAX_DIMS];
};

extern "C" void kvp_dlpack_deleter(DLManagedTensor* self) noexcept {
  if (self == nullptr) return;
  std::free(self->manager_ctx);  // manager_ctx is the enclosing dlpack_export
}

DLDataType dlpack_dtype(kvp_dtype dtype) {
  DLDataType t;
  t.lanes = 1;
  switch (dtype) {
    case KVP_DTYPE_F32: t.code = kDLFloat; t.bits = 32; break;
    case KVP_DTYPE_F16: t.code = kDLFloat; t.bits = 16; break;
    case KVP_DTYPE_BF16: t.code = kDLBfloat; t.bits = 16; break;
    // DLPack 0.6 has no fp8 codes: export the encoded bytes as uint8.
    case KVP_DTYPE_F8_E4M3FN:
    case KVP_DTYPE_F8_E5M2: t.code = kDLUInt; t.bits = 8; break;
    default:
      fail(KVP_ERR_UNSUPPORTED, "kvp_cache_export_dlpack: dtype %u has no DLPack equivalent",
           static_cast<unsigned>(dtype));
  }
  return t;
}

}  // namespace

extern "C" {

KVP_API kvp_status kvp_cache_export_dlpack(kvp_cache* cache, uint32_t layer, kvp_view_kind kind, uint32_t flags,
                                           DLManagedTensor** out) {
  KVP_API_BEGIN;
  if (out != nullptr) *out = nullptr;
  Cache& c = cache_from(cache, "kvp_cache_export_dlpack");
  KVP_REQUIRE_NOT_NULL(out);
  if (flags != 0)
    fail(KVP_ERR_UNSUPPORTED, "kvp_cache_export_dlpack: unknown flags 0x%x (must be 0)", static_cast<unsigned>(flags));
  c.check_layer(layer, "kvp_cache_export_dlpack");
  c.check_healthy("kvp_cache_export_dlpack");
  const kvp_tensor v = c.view(layer, kind);
  const DLDataType dt = dlpack_dtype(v.dtype);

  auto* e = static_cast<dlpack_export*>(std::malloc(sizeof(dlpack_export)));
  if (e == nullptr)
    fail(KVP_ERR_OUT_OF_MEMORY, "kvp_cache_export_dlpack: cannot allocate %zu bytes for the descriptor",
         sizeof(dlpack_export));
  std::memset(e, 0, sizeof *e);
  uint8_t* base = c.layer_data(layer);
  DLTensor& t = e->managed.dl_tensor;
  t.data = base;
  t.byte_offset = static_cast<uint64_t>(static_cast<uint8_t*>(v.data) - base);
  t.device.device_type = v.device_type == KVP_DEVICE_CUDA ? kDLCUDA : kDLCPU;
  t.device.device_id = v.device_type == KVP_DEVICE_CUDA ? v.device_id : 0;
  t.ndim = v.ndim;
  t.dtype = dt;
  for (int i = 0; i < v.ndim; ++i) {
    e->shape[i] = v.shape[i];
    e->strides[i] = v.strides[i];
  }
  t.shape = e->shape;
  t.strides = e->strides;
  e->managed.manager_ctx = e;
  e->managed.deleter = kvp_dlpack_deleter;
  *out = &e->managed;
  KVP_API_END;
}

}  // extern "C"
