/**
 * @file kvpages/dlpack.h
 * @brief Zero-copy export of a layer's pages and key/value views as DLPack tensors.
 *
 * This is the only kvpages header that includes `<dlpack/dlpack.h>` (Debian's libdlpack-dev,
 * DLPack 0.6: `DLManagedTensor`, no versioned struct). It is optional and is not included by
 * the umbrella header `kvpages.h`; include it after (or instead of) `kvpages.h` when you need
 * DLPack interop.
 *
 * **Element types.** DLPack 0.6 has no fp8 type codes, so the mapping is:
 * | kvpages dtype | DLPack `code`, `bits`, `lanes` |
 * |---|---|
 * | ::KVP_DTYPE_F32 | `kDLFloat`, 32, 1 |
 * | ::KVP_DTYPE_F16 | `kDLFloat`, 16, 1 |
 * | ::KVP_DTYPE_BF16 | `kDLBfloat`, 16, 1 |
 * | ::KVP_DTYPE_F8_E4M3FN, ::KVP_DTYPE_F8_E5M2 | `kDLUInt`, 8, 1 (the raw fp8 bit patterns) |
 *
 * An fp8 cache therefore exports `uint8` tensors holding the encoded bytes; reinterpret them
 * (for example `tensor.view(torch.float8_e4m3fn)`) using kvp_cache_get_config() to learn which
 * fp8 format it is.
 *
 * **Lifetime.** The exported tensor borrows the cache's memory: its data stays valid **until the
 * cache is destroyed**. The exporter does not keep the cache alive; the consumer must call the
 * tensor's `deleter` exactly once, and may do so before or after kvp_cache_destroy() (the
 * deleter only releases the small descriptor, never the cache). Reading or writing the data
 * after the cache was destroyed is undefined behaviour. Bindings that own a cache object keep it
 * referenced for as long as their tensors live (the Python binding does).
 *
 * @defgroup kvp_dlpack DLPack interop
 * @ingroup kvpages
 * @{
 */
#ifndef KVPAGES_DLPACK_H
#define KVPAGES_DLPACK_H

#include <dlpack/dlpack.h>

#include "kvpages/cache.h"
#include "kvpages/common.h"
#include "kvpages/status.h"
#include "kvpages/types.h"

KVP_BEGIN_DECLS

/**
 * @brief Exports one view of one layer as a DLPack tensor, without copying.
 *
 * The tensor describes exactly what kvp_cache_get_view() describes for (`layer`, `kind`): the
 * same shape and the same strides (DLPack strides are in elements too), with `dl_tensor.data`
 * pointing at the start of the layer's buffer and `dl_tensor.byte_offset` at the first element
 * of the view (DLPack asks producers to keep `data` at the allocation and use `byte_offset`).
 * `strides` is always filled (never NULL). The device is `kDLCPU` (id 0) for a CPU cache and
 * `kDLCUDA` with the cache's ordinal for a CUDA cache. The data may be written through the
 * tensor (DLPack 0.6 has no read-only flag).
 *
 * @param[in] cache Cache handle.
 * @param[in] layer Layer index, < num_hidden_layers.
 * @param[in] kind One of the `KVP_VIEW_*` values (::KVP_VIEW_PAGES for the layer's pages).
 * @param[in] flags Reserved, must be 0.
 * @param[out] out Receives the new managed tensor, not NULL; set to NULL on failure.
 * @retval KVP_OK Exported.
 * @retval KVP_ERR_INVALID_HANDLE Bad cache handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `out` is NULL, `layer` out of range, or unknown `kind`.
 * @retval KVP_ERR_UNSUPPORTED A non-zero `flags` value, or a dtype DLPack cannot describe.
 * @retval KVP_ERR_DEVICE_LOST The cache has a pending asynchronous error.
 * @retval KVP_ERR_OUT_OF_MEMORY The descriptor could not be allocated.
 * @ownership Caller-owned result: release it by calling `(*out)->deleter(*out)` exactly once
 *            (never free() it). The descriptor is allocated with the C library's malloc, not
 *            with the cache's host allocator, because it may outlive the cache. The data is
 *            borrowed from the cache and valid until the cache is destroyed.
 * @threadsafety May run concurrently with other calls that only read the same cache; the
 *               deleter may be called from any thread.
 * @since 1.0
 * @code
 * DLManagedTensor *t = NULL;
 * if (kvp_cache_export_dlpack(cache, 0, KVP_VIEW_KEYS, 0, &t) == KVP_OK) {
 *   // hand t to a DLPack consumer, which calls t->deleter(t) when done
 * }
 * @endcode
 */
KVP_API kvp_status KVP_CALL kvp_cache_export_dlpack(kvp_cache *cache, uint32_t layer, kvp_view_kind kind,
                                                    uint32_t flags, DLManagedTensor **out);

KVP_END_DECLS

/** @} */
#endif /* KVPAGES_DLPACK_H */
