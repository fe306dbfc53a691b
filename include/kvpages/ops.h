/**
 * @file kvpages/ops.h
 * @brief Operations on cache pages: writing a ragged batch's new keys and values.
 *
 * @defgroup kvp_ops Cache operations
 * @ingroup kvpages
 * @{
 */
#ifndef KVPAGES_OPS_H
#define KVPAGES_OPS_H

#include "kvpages/cache.h"
#include "kvpages/common.h"
#include "kvpages/metadata.h"
#include "kvpages/status.h"
#include "kvpages/types.h"

KVP_BEGIN_DECLS

/**
 * @brief Writes the new keys and values of a ragged batch into one layer's pages (the
 *        reference's `concatenate_to_cache`, for both layouts).
 *
 * `key` and `value` have shape `[T, num_kv_heads, head_dim]` (rank 3, any strides in
 * elements, identical shapes), dtype f32, f16 or bf16, on the cache's device. Each stored
 * element is converted to the cache dtype with round-to-nearest-even and **no saturation**:
 * values beyond the range of fp8 e4m3fn become NaN (it has no infinity), beyond fp8 e5m2, f16
 * or bf16 become ±infinity; NaN stays NaN with its sign (bf16: 0x7FC0 / 0xFFC0; f16: quiet
 * bit set, top payload bits kept; see kvp_convert()). When the input dtype
 * equals the cache dtype the bits are copied unchanged.
 *
 * - **v2** (the slice list): for every slice `j < n = num_kv_update_slices[0]`, tokens
 *   `src_j + o` go to flat slots `dst_j + o` (flat slot = page * page_size + row) for
 *   `o < len_j` — the per-token semantics of the corrected reference, so a slice may start
 *   anywhere (also inside the last page) and may be longer than a page.
 * - **v3** (generic and head_dim-64 layouts): for every request row `i < num_seqs`
 *   (`num_seqs = request_distribution[2]`, or `num_seqs[0]` without a distribution), token
 *   `t < q_len = query_start_loc[i+1] - query_start_loc[i]` (tensor row
 *   `query_start_loc[i] + t`) goes to position `pos = context_lens[i] - q_len + t`, i.e. page
 *   `pages_tables[i][pos / page_size]`, row `pos % page_size`. Padding lanes and padding heads
 *   of every written token slot are written as zeros.
 *
 * Nothing else in the cache changes. **Validation happens before any write** for host
 * metadata: every page id, slot, source index, length and count is checked against the cache
 * and the tensors (v3 additionally checks the reference kernel's preconditions: distribution
 * bounds `0 ≤ d ≤ p ≤ n ≤ R`, decode rows with `q_len == 1`, `0 < q_len ≤ context_len`,
 * `cdiv(context_len, page_size) ≤ pages_per_req`, non-decreasing `query_start_loc`), and two
 * writes to the same slot in one call are rejected. On any violation the call returns
 * ::KVP_ERR_INVALID_ARGUMENT with a message naming the request or slice and the value, and the
 * cache is byte-for-byte unchanged.
 *
 * Metadata in CUDA device memory is accepted only with a CUDA cache; its contents cannot be
 * checked on the host, so the device code checks them and reports violations through the
 * cache's asynchronous error (kvp_cache_get_async_error()) without writing out of bounds.
 *
 * On a CUDA cache the call can be captured into a CUDA graph (stream capture on `stream`).
 * Device-resident metadata is read when the graph runs, so an engine updates its buffers and
 * replays. Host metadata is copied at capture time into the cache's graph staging arena, a fixed
 * amount of memory that is never reused (graphs read it on every replay); when the arena is full
 * the call returns ::KVP_ERR_UNSUPPORTED, enqueues nothing and leaves the capture valid. A graph
 * that contains the call must not be launched after the cache is destroyed.
 *
 * Host metadata is validated against the cache once per metadata handle and cache when its
 * arrays cannot change (owning handles, or kvp_metadata_create() with
 * ::KVP_METADATA_FLAG_IMMUTABLE): the call for the first layer checks every value and keeps the
 * write plan in the handle, and the calls for the other layers check only their own arguments
 * (layer, tensors, token count) before copying (since 1.3; see metadata.h). Other handles are
 * validated by every call.
 *
 * On the CPU, large batches are spread over the library's thread pool (`KVP_NUM_THREADS`, see
 * the main page); the calling thread always works too and never waits for a pool thread that has
 * not started, and small calls (single-token decode steps included) stay on the calling thread.
 * Every instruction-set level of the CPU's vector code writes the same bytes; kvp_build_info()
 * names the level in use. The thresholds and sizes behind these choices are not part of the
 * contract (docs/architecture.md lists the current ones).
 *
 * @param[in,out] cache Cache handle (the layer's pages are written).
 * @param[in] layer Layer index, < num_hidden_layers.
 * @param[in] key New keys `[T, H, D]`, not NULL.
 * @param[in] value New values `[T, H, D]`, not NULL.
 * @param[in] metadata Runtime metadata of the step, not NULL; its version must match the
 *            cache's layout and its page size (when non-zero) the cache's.
 * @param[in] stream CUDA stream of the cache's device for a CUDA cache (NULL = that device's
 *            legacy default stream); ignored for a CPU cache (pass NULL).
 * @retval KVP_OK Written (for a CUDA cache: enqueued).
 * @retval KVP_ERR_INVALID_HANDLE Bad cache or metadata handle.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL tensor, layer out of range, bad tensor shape, dtype
 *         or device, metadata of the wrong version, page size or device, any metadata value
 *         out of range (see above), or a `stream` of another CUDA device than the cache's (with a
 *         CUDA runtime of 12.8 or newer; older ones report ::KVP_ERR_DEVICE). The cache is
 *         unchanged.
 * @retval KVP_ERR_UNSUPPORTED CUDA: `stream` is being captured and the host metadata does not fit
 *         in what is left of the cache's graph staging arena (pass device-resident metadata when
 *         capturing). Nothing is enqueued and the capture stays valid.
 * @retval KVP_ERR_DEVICE_LOST The cache has a pending asynchronous error.
 * @retval KVP_ERR_DEVICE A CUDA call failed (a sticky device fault is also recorded as the
 *         cache's asynchronous error, see kvp_cache_get_async_error()).
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory for the validation scratch or the write plan was
 *         exhausted; the cache is unchanged and no plan is kept.
 * @ownership Borrows everything for the duration of the call (CUDA: until the stream reaches
 *            the enqueued work).
 * @threadsafety Must not run concurrently with other calls that modify the same cache; calls on
 *               different layers of the same cache must not overlap either.
 * @stream Stream-ordered on `stream` for CUDA caches. It does not synchronise the host in the
 *         steady state: host metadata is staged through a ring of buffers, and a call waits only
 *         when every buffer of the ring still feeds queued work, or once, when a batch first
 *         outgrows the buffers and they are reallocated (docs/cuda.md). Argument errors are
 *         reported synchronously.
 * @since 1.0
 * @code
 * // key/value: [T, H, D] bf16 host tensors packed in the builder's row order.
 * for (uint32_t l = 0; l < layers; ++l)
 *   if (kvp_concatenate(cache, l, &key[l], &value[l], md, NULL) != KVP_OK)
 *     fprintf(stderr, "%s\n", kvp_last_error_message());
 * @endcode
 */
KVP_API kvp_status KVP_CALL kvp_concatenate(kvp_cache *cache, uint32_t layer,
                                            const kvp_tensor *key, const kvp_tensor *value,
                                            const kvp_metadata *metadata, kvp_stream stream);

KVP_END_DECLS

/** @} */
#endif /* KVPAGES_OPS_H */
