/**
 * @file kvpages/device.h
 * @brief CUDA devices and copies of a cache's layer pages between the cache's device and host
 *        memory (for tests, tools and backend comparisons).
 *
 * These functions work for CPU and CUDA caches alike, so a program can read back what
 * kvp_concatenate() wrote on a GPU and compare it byte for byte with a CPU cache given the same
 * inputs. For a CPU cache they are plain `memcpy`s and the stream is ignored.
 *
 * @defgroup kvp_device Devices and host copies
 * @ingroup kvpages
 * @{
 */
#ifndef KVPAGES_DEVICE_H
#define KVPAGES_DEVICE_H

#include "kvpages/cache.h"
#include "kvpages/common.h"
#include "kvpages/status.h"
#include "kvpages/types.h"

KVP_BEGIN_DECLS

/**
 * @brief Reports how many CUDA devices this build of kvpages can use.
 *
 * The count is 0 when the library was built without CUDA (::KVP_HAS_CUDA is 0), when no CUDA
 * driver is installed, or when the machine has no GPU; none of these is an error.
 *
 * @param[out] out Receives the number of devices, not NULL.
 * @retval KVP_OK Reported (possibly 0).
 * @retval KVP_ERR_INVALID_ARGUMENT `out` is NULL.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_device_count(int32_t *out);

/**
 * @brief Copies one layer's whole page buffer (kvp_layout_info::layer_bytes bytes, in the
 *        layout of ::KVP_VIEW_PAGES) into host memory.
 *
 * For a CUDA cache the copy is enqueued on `stream` after the work already there (for example
 * a kvp_concatenate() on the same stream) and the call **waits for it** (it synchronises
 * `stream`), so `host_dst` holds the bytes when the call returns. It runs on the cache's device
 * and restores the caller's current device.
 *
 * @param[in] cache Cache handle.
 * @param[in] layer Layer index, < num_hidden_layers.
 * @param[out] host_dst Host buffer of at least `cap` bytes, not NULL; unchanged on failure.
 * @param[in] cap Capacity of `host_dst` in bytes, ≥ layer_bytes.
 * @param[in] stream CUDA stream (NULL = the legacy default stream of the cache's device); ignored
 *            for a CPU cache.
 * @retval KVP_OK Copied.
 * @retval KVP_ERR_INVALID_HANDLE Bad cache handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `host_dst` is NULL or `layer` is out of range.
 * @retval KVP_ERR_BUFFER_TOO_SMALL `cap` is smaller than layer_bytes (the message names both).
 * @retval KVP_ERR_UNSUPPORTED `stream` is being captured into a CUDA graph (a graph cannot wait
 *         for the copy), or `stream` is NULL while a blocking stream of the device captures.
 *         Refused before anything is enqueued: the capture stays valid.
 * @retval KVP_ERR_DEVICE_LOST The cache has a pending asynchronous error.
 * @retval KVP_ERR_DEVICE A CUDA call failed.
 * @ownership `host_dst` is borrowed for the call.
 * @threadsafety May run concurrently with other const calls; not with calls that modify the
 *               same cache.
 * @stream Ordered on `stream`; the call synchronises `stream` before it returns.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_cache_read_layer(const kvp_cache *cache, uint32_t layer, void *host_dst,
                                                 size_t cap, kvp_stream stream);

/**
 * @brief Overwrites one layer's whole page buffer with `size` bytes from host memory (the
 *        inverse of kvp_cache_read_layer()).
 *
 * For a CUDA cache the copy is enqueued on `stream` and the call waits for it, so `host_src`
 * may be reused as soon as the call returns. The bytes are taken as they are (no layout or
 * dtype check): pass what kvp_cache_read_layer() produced for a cache of the same layout.
 *
 * @param[in,out] cache Cache handle.
 * @param[in] layer Layer index, < num_hidden_layers.
 * @param[in] host_src Host buffer of `size` bytes, not NULL.
 * @param[in] size Must equal kvp_layout_info::layer_bytes of the cache.
 * @param[in] stream CUDA stream (NULL = the legacy default stream of the cache's device); ignored
 *            for a CPU cache.
 * @retval KVP_OK Copied.
 * @retval KVP_ERR_INVALID_HANDLE Bad cache handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `host_src` is NULL, `layer` is out of range, or `size`
 *         differs from layer_bytes. The cache is unchanged.
 * @retval KVP_ERR_UNSUPPORTED `stream` is being captured into a CUDA graph (a graph cannot wait
 *         for the copy), or `stream` is NULL while a blocking stream of the device captures.
 *         Refused before anything is enqueued: the capture stays valid and the cache is unchanged.
 * @retval KVP_ERR_DEVICE_LOST The cache has a pending asynchronous error.
 * @retval KVP_ERR_DEVICE A CUDA call failed.
 * @ownership `host_src` is borrowed for the call.
 * @threadsafety Must not run concurrently with other calls on the same cache.
 * @stream Ordered on `stream`; the call synchronises `stream` before it returns.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_cache_write_layer(kvp_cache *cache, uint32_t layer, const void *host_src,
                                                  size_t size, kvp_stream stream);

KVP_END_DECLS

/** @} */
#endif /* KVPAGES_DEVICE_H */
