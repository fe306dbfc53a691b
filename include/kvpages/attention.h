/**
 * @file kvpages/attention.h
 * @brief Ragged paged attention over the cache's own pages, fused with the write of the step's
 *        new keys and values.
 *
 * @defgroup kvp_attention Attention
 * @ingroup kvpages
 * @{
 */
#ifndef KVPAGES_ATTENTION_H
#define KVPAGES_ATTENTION_H

#include "kvpages/cache.h"
#include "kvpages/common.h"
#include "kvpages/metadata.h"
#include "kvpages/status.h"
#include "kvpages/types.h"

KVP_BEGIN_DECLS

/** Current value of kvp_attention_options::abi_version. */
#define KVP_ATTENTION_OPTIONS_VERSION 1u

/**
 * @brief Options of kvp_attention(). Zero means default for every field, so a zeroed struct
 *        with its size and version set computes plain causal attention with the reference's
 *        scale.
 */
typedef struct kvp_attention_options {
  uint32_t struct_size;     /**< sizeof(kvp_attention_options). */
  uint32_t abi_version;     /**< ::KVP_ATTENTION_OPTIONS_VERSION. */
  /** Softmax scale σ multiplying every logit; finite and positive. 0 = the reference's default:
   *  **1.0 for a v3 cache**, `1/sqrt(head_dim)` for a v2 cache. Models pass their own scale,
   *  usually `1/sqrt(head_dim)`. */
  float softmax_scale;
  /** Logit soft cap: `s <- cap * tanh(s / cap)` after the scale (and `k_scale`), before masking;
   *  a negative cap acts as its absolute value. 0 = no cap. Must be finite. */
  float logits_soft_cap;
  /** Sliding window W: a query at position p sees keys p-W+1 … p (W = 1: only itself).
   *  0 = no window; negative is rejected. */
  int32_t sliding_window;
  /** Dequantisation scale of the stored keys: every logit is multiplied by it (after σ, before
   *  the cap). 0 = 1. Must be finite and positive. */
  float k_scale;
  /** Dequantisation scale of the stored values: the weighted sum of values is multiplied by it
   *  in f32 before normalisation. 0 = 1. Must be finite and positive. */
  float v_scale;
  /** Number of entries of `sinks`: 0 (no sinks) or the number of query heads. */
  uint32_t num_sinks;
  /** Sink logits, one per query head (host memory, read during the call; for a CUDA cache the
   *  values are copied into the launch, so a captured graph keeps the values of capture time).
   *  A sink takes part in the softmax normalisation and contributes no value; it is neither
   *  scaled nor capped; -infinity is the same as no sink. NULL when `num_sinks` is 0. */
  const float *sinks;
} kvp_attention_options;

#define KVP_ATTENTION_OPTIONS_INIT KVP__OPTIONS_INIT(kvp_attention_options, KVP_ATTENTION_OPTIONS_VERSION)
/**
 * @def KVP_ATTENTION_OPTIONS_INIT
 * @brief Static initialiser: causal attention with the reference's default scale, no window, no
 *        soft cap, no sinks, unit fp8 scales.
 */

/**
 * @brief Fills attention options with defaults (all zero).
 *
 * @param[out] opts Options to fill, not NULL.
 * @param[in] struct_size `sizeof(kvp_attention_options)` as the caller compiled it.
 * @retval KVP_OK Filled.
 * @retval KVP_ERR_INVALID_ARGUMENT `opts` is NULL.
 * @retval KVP_ERR_VERSION_MISMATCH `struct_size` is smaller than version 1 of the struct.
 * @ownership Writes only `*opts`.
 * @threadsafety Thread-safe.
 * @since 1.1
 */
KVP_API kvp_status KVP_CALL kvp_attention_options_init(kvp_attention_options *opts, uint32_t struct_size);

/**
 * @brief Ragged paged attention of one layer: writes the step's new keys and values into the
 *        pages (exactly as kvp_concatenate()), then attends every query token to its request's
 *        keys and values, reading the pages in place through the page table.
 *
 * Shapes: `queries` and `out` are `[T, Hq, D]`, `keys` and `values` `[T, Hkv, D]` (rank 3, any
 * strides in elements), with `Hkv = num_kv_heads`, `D = head_dim` of the cache and `Hq` a
 * multiple of `Hkv`; query head `h` reads KV head `h / (Hq / Hkv)` (grouped-query attention).
 * `queries`, `keys` and `values` are f32, f16 or bf16; `out` is f32, f16 or bf16 and receives
 * one rounding of the f32 result (the reference rounds to the queries' dtype: pass an `out` of
 * that dtype for its numbers). Every tensor lives on the cache's device; `out` must not overlap
 * the other tensors.
 *
 * Metadata: the step's runtime metadata, the same kvp_concatenate() takes. Request row `i`
 * owns token rows `[query_start_loc[i], query_start_loc[i+1])`, the last `q_len` positions of
 * a sequence that is `L = context_lens[i]` tokens long after the step; position `p` lives in page
 * `pages_tables[i][p / page_size]`, row `p % page_size`. Rows `i < n` are processed, with
 * `n = request_distribution[2]` (or `num_seqs[0]` without a distribution) for v3 and
 * `n = num_seqs[0]` for v2. Head dims up to 512 are supported.
 *
 * The write. With `keys` and `values` (both or neither) the call first writes them exactly as
 * kvp_concatenate() with the same metadata would (same validation, same bytes, nothing more: v3
 * through the page tables, v2 through the slice list), and every write happens before any read:
 * a request sees its own new tokens, through the values stored in the cache dtype. A slot the
 * write fills must not be read by any row as cached context (a prefix-shared page must not
 * receive new tokens). Without keys and values the call only reads — for v2 caches and for
 * engines that wrote with kvp_concatenate() before.
 *
 * The attention, for every processed row `i`, new token `t` (token row `r`, position
 * `p = L - q_len + t`) and query head `h` (KV head `g`):
 *
 *     s_j  = σ · k_scale · <q[r,h], K_i[j,g]>          (cap: s_j = cap · tanh(s_j / cap))
 *     A    = { j : 0 <= j <= p, and j > p - W when a window W is set }
 *     m    = max(max_{j in A} s_j, sink_h)
 *     out[r,h] = v_scale · Σ_{j in A} e^{s_j - m} V_i[j,g] / (Σ_{j in A} e^{s_j - m} + e^{sink_h - m})
 *
 * (drop the sink terms without sinks), accumulated in f32 with an online softmax. Keys outside
 * `A` are excluded by selection, never by a weight of zero, and no page slot outside a row's
 * context is read: a NaN left in a page beyond the context cannot reach the output. fp8 pages are
 * widened to f32 on load. Output rows that no processed request owns (padding rows, rows of
 * requests `>= n`) are set to **zero**. Page-table entries past `cdiv(context_len, page_size)` are
 * never read and may hold anything.
 *
 * Validation happens **before anything is written**: handles, tensor shapes, dtypes, devices and
 * overlap (`out` may overlap neither an input nor the cache's pages), options (finite, positive
 * scales; `num_sinks` 0 or `Hq`; sinks finite or -infinity), and for host metadata every
 * value kvp_concatenate() checks plus the reference kernel's preconditions for every processed
 * row (`0 < q_len <= context_len`, `cdiv(context_len, page_size) <= pages_per_req`, every page id
 * the row reads in `[0, num_pages)`, decode rows with `q_len == 1`, non-decreasing
 * `query_start_loc` within the tokens). On any violation the call returns
 * ::KVP_ERR_INVALID_ARGUMENT naming the request and value, and neither the cache nor `out` has
 * changed. Metadata in CUDA device memory is checked by the device code, which skips what it
 * cannot do safely and reports through kvp_cache_get_async_error(), as for kvp_concatenate().
 *
 * On a CUDA cache the call is stream-ordered, never synchronises the host in the steady state and
 * can be captured into a CUDA graph under the same rules as kvp_concatenate().
 *
 * @param[in,out] cache Cache handle (its layer is written when `keys` is given).
 * @param[in] layer Layer index, < num_hidden_layers.
 * @param[in] queries Queries `[T, Hq, D]`, not NULL.
 * @param[in] keys New keys `[T, Hkv, D]`, or NULL to only read.
 * @param[in] values New values `[T, Hkv, D]`; NULL exactly when `keys` is NULL.
 * @param[in] metadata Runtime metadata of the step, not NULL; its version must match the cache's
 *            layout and its page size (when non-zero) the cache's.
 * @param[in] opts Options, or NULL for the defaults.
 * @param[in] out Descriptor of the output `[T, Hq, D]`, not NULL; its data (all `T` rows) is
 *            written.
 * @param[in] stream CUDA stream of the cache's device for a CUDA cache (NULL = that device's
 *            legacy default stream); ignored for a CPU cache (pass NULL).
 * @retval KVP_OK Computed (for a CUDA cache: enqueued).
 * @retval KVP_ERR_INVALID_HANDLE Bad cache or metadata handle.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL `queries` or `out`, `keys` without `values` (or the
 *         reverse), layer out of range, a bad shape, dtype, device or overlap, a head dim above
 *         512, a bad option, or metadata that breaks a rule above. Cache and `out` are
 *         unchanged.
 * @retval KVP_ERR_VERSION_MISMATCH `opts` has a `struct_size` below version 1 or an unknown
 *         `abi_version`.
 * @retval KVP_ERR_UNSUPPORTED `opts` is larger than this library knows and its unknown tail is
 *         not zero; or, CUDA, as for kvp_concatenate() during graph capture.
 * @retval KVP_ERR_DEVICE_LOST The cache has a pending asynchronous error.
 * @retval KVP_ERR_DEVICE A CUDA call failed.
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory (validation or work scratch; CUDA: device scratch or
 *         staging memory) ran out. Everything is allocated before the write: cache and `out` are
 *         unchanged.
 * @ownership Borrows everything for the duration of the call (CUDA: until the stream reaches the
 *            enqueued work).
 * @threadsafety Must not run concurrently with other calls that modify the same cache.
 * @stream Stream-ordered on `stream` for CUDA caches; argument errors are reported synchronously.
 * @since 1.1
 * @code
 * kvp_attention_options ao = KVP_ATTENTION_OPTIONS_INIT;
 * ao.softmax_scale = 1.0f / sqrtf(128.0f);
 * for (uint32_t l = 0; l < layers; ++l) {
 *   // q, k, v: this layer's projections of the step's tokens, in the metadata's row order.
 *   if (kvp_attention(cache, l, &q[l], &k[l], &v[l], md, &ao, &attn_out[l], NULL) != KVP_OK)
 *     fprintf(stderr, "%s\n", kvp_last_error_message());
 * }
 * @endcode
 */
KVP_API kvp_status KVP_CALL kvp_attention(kvp_cache *cache, uint32_t layer, const kvp_tensor *queries,
                                          const kvp_tensor *keys, const kvp_tensor *values,
                                          const kvp_metadata *metadata, const kvp_attention_options *opts,
                                          const kvp_tensor *out, kvp_stream stream);

KVP_END_DECLS

/** @} */
#endif /* KVPAGES_ATTENTION_H */
