/**
 * @file kvpages/metadata.h
 * @brief Runtime metadata of one step (the reference's `RaggedPagesMetadata`) and the batch
 *        builder that produces it from scheduled requests.
 *
 * A ::kvp_metadata handle describes, for one step of a serving loop, where each request's new
 * tokens go: page tables, context lengths, query start locations, the number of sequences, the
 * v2 slice list `[3, N]` with its count of valid slices, the v3 request distribution and
 * optional position ids. All arrays are `int32_t`.
 *
 * There are two kinds of handles:
 * - **borrowed** (kvp_metadata_create()): the handle points at the caller's arrays, zero-copy.
 *   The arrays may live in host memory or in CUDA device memory (kvp_metadata_desc::device_type).
 *   They must stay valid, and must not change while a call that uses the handle runs (for a
 *   CUDA cache: until the stream has passed the work enqueued with it), until the handle is
 *   destroyed or no longer used. Between calls the caller may change them, unless it created
 *   the handle with ::KVP_METADATA_FLAG_IMMUTABLE.
 * - **owning** (kvp_metadata_build(), kvp_metadata_create_empty(), kvp_metadata_from_json()):
 *   kvpages allocates host arrays and frees them in kvp_metadata_destroy(). Read them with
 *   kvp_metadata_get_array() or kvp_metadata_get_desc(); they never change.
 *
 * **Validation once per step** (since 1.3). kvp_concatenate() and kvp_attention() check every
 * value of host metadata against the cache before they write. When the arrays cannot change
 * (owning handles, and borrowed ones with ::KVP_METADATA_FLAG_IMMUTABLE), the handle keeps the
 * result of that check, the write plan, for each cache it is used with (up to 4 caches, e.g.
 * tensor-parallel shards; beyond that each call checks again): the first call of a step
 * validates, the calls for the other layers only check their own tensors and then copy. A call
 * whose tensors have fewer token rows than the metadata needs validates again and fails as
 * without a plan. Plans take host memory from the default allocator the handle was created
 * with, are kept only once a call succeeded, and are freed with the handle. Metadata in CUDA
 * device memory is checked on the device by every call, as before.
 *
 * **Divergences from the reference, on purpose.** kvp_metadata_create_empty() gives consistent
 * shapes: the v2 `slot_mapping` is `[3, num_tokens]` (the reference allocates a 1-D
 * `[num_tokens]` array that its own write path cannot index), `num_seqs` is `[1]` and
 * `position_ids` is `[num_tokens]` (the reference allocates both as `[max_num_reqs]`). The
 * builder emits the corrected v3 distribution `[decode, decode + prefill, total]` (the seed
 * emitted `[decode, decode, total]`; ::KVP_BATCH_FLAG_SEED_DISTRIBUTION restores it). A
 * metadata `page_size` of 0 means "the cache's page size" instead of a fixed default of 128.
 *
 * @defgroup kvp_metadata Runtime metadata and the batch builder
 * @ingroup kvpages
 * @{
 */
#ifndef KVPAGES_METADATA_H
#define KVPAGES_METADATA_H

#include "kvpages/common.h"
#include "kvpages/config.h"
#include "kvpages/status.h"
#include "kvpages/types.h"

KVP_BEGIN_DECLS

/** Opaque handle to runtime metadata. Release with kvp_metadata_destroy(). */
typedef struct kvp_metadata kvp_metadata;

/** Current value of kvp_metadata_desc::abi_version. */
#define KVP_METADATA_DESC_VERSION 2u

/**
 * Flag of kvp_metadata_desc::flags (since 1.3): the arrays do not change while the handle lives,
 * so kvpages validates them once per cache and reuses the plan for every layer (see the file
 * documentation). Changing the arrays of such a handle is undefined behaviour: calls may write
 * by the old values without checking the new ones. kvp_metadata_get_desc() reports it for owning
 * handles, whose arrays never change. Ignored for metadata in device memory.
 */
#define KVP_METADATA_FLAG_IMMUTABLE 1u

/**
 * @brief Description of caller-owned runtime metadata arrays (all `int32_t`, row-major).
 *
 * Every array comes with its length in elements. An array that a layout does not use may be
 * NULL with length 0. Which arrays kvp_concatenate() needs:
 * - v3: `pages_tables`, `context_lens`, `query_start_loc`, and `request_distribution` (or, if
 *   that is NULL, `num_seqs`, whose element 0 is then the number of sequences);
 * - v2: `slot_mapping` and `num_kv_update_slices`.
 *
 * kvp_metadata_get_desc() fills this struct for any handle, so callers can read owning
 * metadata with it too.
 */
typedef struct kvp_metadata_desc {
  uint32_t struct_size;                 /**< sizeof(kvp_metadata_desc). */
  uint32_t abi_version;                 /**< ::KVP_METADATA_DESC_VERSION. */
  kvp_layout version;                   /**< ::KVP_LAYOUT_V3 or ::KVP_LAYOUT_V2; 0 = v3. Must match the cache it is used with. */
  kvp_device_type device_type;          /**< Where the arrays live: ::KVP_DEVICE_CPU (0 = CPU) or ::KVP_DEVICE_CUDA. */
  int32_t device_id;                    /**< CUDA ordinal of the arrays; 0 for the CPU. */
  uint32_t flags;                       /**< `KVP_METADATA_FLAG_*` bits (since 1.3; version 2 of the struct, where this was a reserved 0); unknown bits: ::KVP_ERR_UNSUPPORTED. */
  int64_t page_size;                    /**< Tokens per page; 0 = the cache's. Non-zero must equal the cache's. */
  int64_t num_slices_per_kv_cache_update_page; /**< Informational copy of the config field; ≤ 0 = unset. */
  const int32_t *pages_tables;          /**< `[num_reqs, pages_per_req]` physical page ids; padding 0. */
  int64_t num_reqs;                     /**< Rows R of `pages_tables` (request slots, ≥ 0). */
  int64_t pages_per_req;                /**< Columns of `pages_tables` (≥ 0). */
  const int32_t *context_lens;          /**< `[context_lens_len]`: KV length after this step per row. */
  int64_t context_lens_len;             /**< Must equal `num_reqs` when `context_lens` is given. */
  const int32_t *query_start_loc;       /**< `[query_start_loc_len]`: cumulative token starts. */
  int64_t query_start_loc_len;          /**< Must equal `num_reqs + 1` when `query_start_loc` is given. */
  const int32_t *num_seqs;              /**< `[num_seqs_len]`: element 0 is the active request count. */
  int64_t num_seqs_len;                 /**< ≥ 1 when `num_seqs` is given (the reference uses 1 or R). */
  const int32_t *slot_mapping;          /**< v2 slices `[3, num_slices]`: rows dst slot, src token, length. */
  int64_t num_slices;                   /**< Columns of `slot_mapping` (slice capacity N). */
  const int32_t *num_kv_update_slices;  /**< `[num_kv_update_slices_len]`: element 0 = valid slices n ≤ N. */
  int64_t num_kv_update_slices_len;     /**< ≥ 1 when `num_kv_update_slices` is given. */
  const int32_t *request_distribution;  /**< v3 `[3]`: decode end, prefill end, number of sequences. */
  int64_t request_distribution_len;     /**< 3 when `request_distribution` is given. */
  const int32_t *position_ids;          /**< Optional `[position_ids_len]` token positions (not used by writes). */
  int64_t position_ids_len;             /**< Length of `position_ids`. */
  /** Optional `[num_reqs]` (since 1.2, abi_version 2): row i's tokens are rows `token_starts[i]
   *  … token_starts[i] + q_len_i - 1` of the keys, values, queries and attention output, where
   *  q_len_i = `query_start_loc[i+1] - query_start_loc[i]`; NULL = they are at
   *  `query_start_loc[i]`. The processed rows' token ranges must tile `[query_start_loc[0],
   *  query_start_loc[n])` exactly (a permutation of the rows' blocks). Host metadata only.
   *  kvp_metadata_build() with ::KVP_BATCH_FLAG_REQUEST_ORDER fills it. */
  const int32_t *token_starts;
  int64_t token_starts_len;             /**< `num_reqs` when `token_starts` is given, else 0. */
} kvp_metadata_desc;

#ifdef __cplusplus
extern "C++" KVP__CONSTEXPR kvp_metadata_desc kvp__metadata_desc_init() noexcept {
  kvp_metadata_desc d = KVP__OPTIONS_INIT(kvp_metadata_desc, KVP_METADATA_DESC_VERSION);
  d.version = KVP_LAYOUT_V3;
  d.device_type = KVP_DEVICE_CPU;
  return d;
}
#define KVP_METADATA_DESC_INIT kvp__metadata_desc_init()
#else
#define KVP_METADATA_DESC_INIT                                                                  \
  {.struct_size = sizeof(kvp_metadata_desc), .abi_version = KVP_METADATA_DESC_VERSION,           \
   .version = KVP_LAYOUT_V3, .device_type = KVP_DEVICE_CPU}
#endif
/**
 * @def KVP_METADATA_DESC_INIT
 * @brief Static initialiser: v3, host arrays, everything else empty.
 */

/**
 * @brief Fills a metadata description with defaults (v3, host arrays, no arrays).
 * @param[out] desc Description to fill, not NULL.
 * @param[in] struct_size sizeof(kvp_metadata_desc) as the caller sees it.
 * @retval KVP_OK Filled.
 * @retval KVP_ERR_INVALID_ARGUMENT `desc` is NULL.
 * @retval KVP_ERR_VERSION_MISMATCH `struct_size` is smaller than version 1 of the struct.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_metadata_desc_init(kvp_metadata_desc *desc, uint32_t struct_size);

/**
 * @brief Wraps caller-owned metadata arrays in a handle, without copying them.
 *
 * Checks the structure only (version, device, non-negative lengths, consistent lengths of
 * `context_lens` / `query_start_loc`, the required arrays of the layout present). The array
 * contents are checked by each call that uses them (kvp_concatenate() checks every value of
 * host arrays against the cache before writing), or, with ::KVP_METADATA_FLAG_IMMUTABLE in
 * `desc->flags`, by the first call per cache only.
 *
 * @param[in] desc Description, not NULL.
 * @param[out] out Receives the handle, not NULL; set to NULL on failure.
 * @retval KVP_OK Created.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL `desc`/`out`, a negative or inconsistent length, a
 *         missing required array, a negative page size, or an unknown device type.
 * @retval KVP_ERR_NOT_FOUND Unknown layout version.
 * @retval KVP_ERR_UNSUPPORTED Unknown bits in `flags`, or a non-zero tail in a larger struct.
 * @retval KVP_ERR_VERSION_MISMATCH Unknown `struct_size` or `abi_version`.
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted.
 * @ownership Caller-owned handle (release with kvp_metadata_destroy()); the arrays stay owned
 *            by the caller and are borrowed for the handle's whole life.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_metadata_create(const kvp_metadata_desc *desc, kvp_metadata **out);

/**
 * @brief Creates owning metadata for an empty batch: every array zero, consistent shapes.
 *
 * Shapes: `pages_tables [max_num_reqs, max_pages]`, `context_lens [max_num_reqs]`,
 * `query_start_loc [max_num_reqs + 1]`, `num_seqs [1]`, `position_ids [num_tokens]`; v2 adds
 * `slot_mapping [3, num_tokens]` and `num_kv_update_slices [1]`; v3 adds
 * `request_distribution [3]`. Using it in kvp_concatenate() writes nothing. (See the file
 * documentation for how this differs from the reference's `create_empty`.)
 *
 * @param[in] version ::KVP_LAYOUT_V3, ::KVP_LAYOUT_V2, or ::KVP_LAYOUT_DEFAULT (v3).
 * @param[in] num_tokens Token capacity (≥ 0).
 * @param[in] max_num_reqs Request rows (≥ 0).
 * @param[in] max_pages Page-table columns (≥ 0).
 * @param[in] page_size Tokens per page (≥ 0; 0 = the cache's).
 * @param[out] out Receives the handle, not NULL; set to NULL on failure.
 * @retval KVP_OK Created.
 * @retval KVP_ERR_INVALID_ARGUMENT `out` is NULL or a size is negative or too large for int32 arrays.
 * @retval KVP_ERR_NOT_FOUND Unknown layout version.
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted.
 * @ownership Caller-owned handle: release with kvp_metadata_destroy().
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_metadata_create_empty(kvp_layout version, int64_t num_tokens,
                                                      int64_t max_num_reqs, int64_t max_pages,
                                                      int64_t page_size, kvp_metadata **out);

/**
 * @brief Releases a metadata handle (and, for owning metadata, its arrays). NULL is a no-op.
 * @param[in] metadata Handle or NULL.
 * @retval KVP_OK Released (or NULL).
 * @retval KVP_ERR_INVALID_HANDLE Not a live metadata handle.
 * @ownership Takes ownership of `metadata`; borrowed arrays are not touched.
 * @threadsafety Must not race with other calls using the same handle.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_metadata_destroy(kvp_metadata *metadata);

/** Selects one array of a ::kvp_metadata for kvp_metadata_get_array(). */
typedef uint32_t kvp_metadata_field;
/** `pages_tables`, `[num_reqs * pages_per_req]`. */
#define KVP_METADATA_PAGES_TABLES 0u
/** `context_lens`, `[num_reqs]`. */
#define KVP_METADATA_CONTEXT_LENS 1u
/** `query_start_loc`, `[num_reqs + 1]`. */
#define KVP_METADATA_QUERY_START_LOC 2u
/** `num_seqs`. */
#define KVP_METADATA_NUM_SEQS 3u
/** `slot_mapping`, `[3 * num_slices]` (row-major `[3, num_slices]`). */
#define KVP_METADATA_SLOT_MAPPING 4u
/** `num_kv_update_slices`. */
#define KVP_METADATA_NUM_KV_UPDATE_SLICES 5u
/** `request_distribution`, `[3]`. */
#define KVP_METADATA_REQUEST_DISTRIBUTION 6u
/** `position_ids`. */
#define KVP_METADATA_POSITION_IDS 7u
/** `token_starts`, `[num_reqs]` (since 1.2). */
#define KVP_METADATA_TOKEN_STARTS 8u

/**
 * @brief Returns one array of a metadata handle and its length in elements.
 *
 * For `KVP_METADATA_SLOT_MAPPING` the length is `3 * num_slices`; for
 * `KVP_METADATA_PAGES_TABLES` it is `num_reqs * pages_per_req`. An absent array gives NULL and
 * length 0. The pointer is a device pointer when the metadata lives on a CUDA device.
 *
 * @param[in] metadata Metadata handle.
 * @param[in] field One of the `KVP_METADATA_*` field values.
 * @param[out] data_out Receives the array pointer; may be NULL.
 * @param[out] len_out Receives the length in elements; may be NULL.
 * @retval KVP_OK Returned.
 * @retval KVP_ERR_INVALID_HANDLE Bad handle.
 * @retval KVP_ERR_INVALID_ARGUMENT Unknown `field`.
 * @ownership The array stays owned by the handle (owning) or by the caller (borrowed); it is
 *            valid while the handle lives.
 * @threadsafety May run concurrently with other calls that only read the same handle.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_metadata_get_array(const kvp_metadata *metadata,
                                                   kvp_metadata_field field,
                                                   const int32_t **data_out, int64_t *len_out);

/**
 * @brief Describes a metadata handle: version, device, page size, flags and every array with
 *        its length.
 *
 * `flags` has ::KVP_METADATA_FLAG_IMMUTABLE for owning handles and for borrowed ones created
 * with it (since 1.3; before, that field was a reserved 0).
 *
 * @param[in] metadata Metadata handle.
 * @param[out] out Description, not NULL; `out->struct_size` must be set (fields the caller's
 *             version lacks are not written); unchanged on failure.
 * @retval KVP_OK Filled.
 * @retval KVP_ERR_INVALID_HANDLE Bad handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `out` is NULL.
 * @retval KVP_ERR_VERSION_MISMATCH `out->struct_size` smaller than version 1 of the struct.
 * @ownership The pointers are borrowed from the handle (see kvp_metadata_get_array()).
 * @threadsafety May run concurrently with other calls that only read the same handle.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_metadata_get_desc(const kvp_metadata *metadata,
                                                  kvp_metadata_desc *out);

/* ------------------------------------------------------------------------------------------- */
/* Batch builder                                                                                */

/** @brief One request of a step, as the scheduler sees it (input of kvp_metadata_build()). */
typedef struct kvp_batch_request {
  int64_t num_computed;    /**< Tokens already in the cache (≥ 0). */
  int64_t num_scheduled;   /**< Tokens written this step (≥ 0; 0 = inactive this step, no row). */
  const int32_t *page_ids; /**< The request's physical pages in logical order (borrowed); may be NULL when `num_pages` is 0. */
  int64_t num_pages;       /**< Entries in `page_ids`; ≥ cdiv(num_computed + num_scheduled, page_size) for active requests. */
} kvp_batch_request;

/** Flag: emit the seed's distribution `[decode, decode, total]` instead of `[decode, decode + prefill, total]`. */
#define KVP_BATCH_FLAG_SEED_DISTRIBUTION (1u << 0)
/** Flag: v2 slice columns = min(round_up(n, slices_per_page), capacity) (HEAD) instead of the full capacity (seed). */
#define KVP_BATCH_FLAG_TIGHT_SLICES (1u << 1)
/** Flag: keep the caller's request order (no decode-first reordering; v3 then requires decodes to come first anyway). */
#define KVP_BATCH_FLAG_KEEP_ORDER (1u << 2)
/** Flag (since 1.2): the step's keys, values and queries are packed in the order of `requests`
 *  (each active request's tokens contiguous, inactive ones taking no rows), and attention writes
 *  its output in that order too. The metadata records where each row's tokens are
 *  (kvp_metadata_desc::token_starts) and `position_ids` follow the same packing, so the caller
 *  never repacks by `order_out`. */
#define KVP_BATCH_FLAG_REQUEST_ORDER (1u << 3)

/** Current value of kvp_batch_options::abi_version. */
#define KVP_BATCH_OPTIONS_VERSION 1u

/** @brief Options of kvp_metadata_build(). Zero means default for every field. */
typedef struct kvp_batch_options {
  uint32_t struct_size;   /**< sizeof(kvp_batch_options). */
  uint32_t abi_version;   /**< ::KVP_BATCH_OPTIONS_VERSION. */
  int64_t max_num_reqs;   /**< Page-table rows R (≥ active requests); 0 = the config's `max_num_reqs` if > 0, else the number of active requests. */
  int64_t max_num_tokens; /**< Token bucket T (≥ scheduled tokens): length of `position_ids` and the T of the v2 slice capacity; 0 = the config's `max_num_tokens` if > 0, else the scheduled token count. */
  uint32_t flags;         /**< `KVP_BATCH_FLAG_*`. */
  uint32_t _reserved0;    /**< Must be 0. */
} kvp_batch_options;

/** Static initialiser: all defaults. */
#define KVP_BATCH_OPTIONS_INIT KVP__OPTIONS_INIT(kvp_batch_options, KVP_BATCH_OPTIONS_VERSION)

/**
 * @brief Fills batch options with defaults (all zero, size and version set).
 * @param[out] opts Options to fill, not NULL.
 * @param[in] struct_size sizeof(kvp_batch_options) as the caller sees it.
 * @retval KVP_OK Filled.
 * @retval KVP_ERR_INVALID_ARGUMENT `opts` is NULL.
 * @retval KVP_ERR_VERSION_MISMATCH `struct_size` is smaller than version 1 of the struct.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_batch_options_init(kvp_batch_options *opts, uint32_t struct_size);

/**
 * @brief Builds the runtime metadata of one step from the scheduled requests (the reference's
 *        `prepare_batch_metadata`), as owning host metadata for the config's layout.
 *
 * Requests with `num_scheduled > 0` are active and get one row each; decode requests
 * (`num_scheduled == 1` and `num_computed > 0`) come first, then the others, each group in the
 * caller's order (a stable partition). Where the step's tokens are in the key, value and query
 * tensors:
 * - with ::KVP_BATCH_FLAG_REQUEST_ORDER (recommended): in the caller's own order — the active
 *   requests of `requests`, in that order, each one's tokens contiguous. The metadata records
 *   each row's position (`token_starts`), and kvp_concatenate() / kvp_attention() read (and
 *   attention writes its output) there: nothing to repack, whatever the row order.
 * - without it: in row order. `order_out[row]` tells which request occupies a row, and the
 *   caller must pack request `order_out[i]`'s tokens as rows `query_start_loc[i] …
 *   query_start_loc[i+1]-1`; packing them in request order instead writes the wrong tokens
 *   without an error whenever the batch was reordered.
 *
 * Arrays produced (R rows, see kvp_batch_options): `pages_tables [R, max_num_pages_per_req]`
 * (page ids in logical order, padded with the null page 0), `context_lens [R]` =
 * `num_computed + num_scheduled` (0 for padding rows), `query_start_loc [R + 1]` (the last value
 * repeated over padding rows), `num_seqs [1]`, `position_ids [T]` (positions
 * `num_computed + t` of each token, in the tokens' packing, padded with 0), with
 * ::KVP_BATCH_FLAG_REQUEST_ORDER `token_starts [R]` (0 for padding rows), and
 * - v3: `request_distribution = [decode, decode + prefill, active]`;
 * - v2: the slice list `slot_mapping [3, N]` (one slice per request and touched page, in row
 *   order; columns dst slot, src token, length; unused columns 0), `num_kv_update_slices [1]`,
 *   with N = the reference's `get_padded_num_slices(T, R)` (kvp_config_padded_num_slices()).
 *
 * Every request is checked: page ids in `[1, num_pages)` (page 0 is the reserved null page),
 * enough pages for its tokens, at most `max_num_pages_per_req` pages, `num_computed +
 * num_scheduled ≤ max_model_length`.
 *
 * **Data-parallel row blocks** (since 1.4; v3 with `data_parallel_size` dp > 1, SPEC.md §7.3):
 * the rows form dp blocks of R/dp; block `s` (rows `[s·R/dp, (s+1)·R/dp)`) holds the active
 * requests whose used pages (the first `cdiv(num_computed + num_scheduled, page_size)`) lie in
 * shard `s`'s range `[s·num_pages/dp, (s+1)·num_pages/dp)`, decode first as above (with
 * ::KVP_BATCH_FLAG_KEEP_ORDER in the caller's order), then that block's padding rows. R must be
 * a multiple of dp; when neither the options nor the config set it, R = dp × the largest number
 * of active requests of one shard. Every row is processed: `request_distribution = [0, 0, R]`
 * and `num_seqs = [R]` (each shard recomputes its own split from its rows). `order_out[i]` is
 * the request of the i-th *active* row in increasing row order (padding rows, those with
 * `context_lens` 0, are skipped), which is also the packing order of the tokens without
 * ::KVP_BATCH_FLAG_REQUEST_ORDER. v2 and dp = 1 are unaffected.
 *
 * @param[in] cfg Config with `num_pages` computed, not NULL; validated first.
 * @param[in] requests Array of `num_requests` requests; may be NULL when `num_requests` is 0.
 * @param[in] num_requests Number of requests.
 * @param[in] opts Options, or NULL for defaults.
 * @param[out] order_out Array of `num_requests` entries, or NULL: entry `row` receives the index
 *             (into `requests`) of the request in that row, -1 past the active rows (with
 *             row blocks: entry `i`, the request of the i-th active row).
 * @param[out] out Receives the owning metadata, not NULL; set to NULL on failure.
 * @retval KVP_OK Built.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL pointer, invalid config, a request out of range (the
 *         message names the request and the value), more active requests than rows, more
 *         tokens than the token bucket, or an array size that does not fit int32; with row
 *         blocks also R not a multiple of dp, a request whose used pages lie in two shards (the
 *         message names the request and both shards), or more active requests of a shard than
 *         R/dp (the message names the shard).
 * @retval KVP_ERR_NOT_FOUND Unknown layout version or dtype in `cfg`.
 * @retval KVP_ERR_UNSUPPORTED Name-only dtype in `cfg`, unknown flag, non-zero reserved field.
 * @retval KVP_ERR_VERSION_MISMATCH Unknown struct sizes.
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted.
 * @ownership Caller-owned handle: release with kvp_metadata_destroy(). `requests` and their
 *            page ids are only read during the call. On failure `order_out` is unchanged.
 * @threadsafety Thread-safe.
 * @since 1.0
 * @code
 * // A prefill of 6 tokens and a decode, keys/values packed as the caller has them: 6 + 1 rows.
 * int32_t pages0[] = {1, 2}, pages1[] = {3};
 * kvp_batch_request reqs[2] = {{0, 6, pages0, 2}, {2, 1, pages1, 1}};
 * kvp_batch_options bo = KVP_BATCH_OPTIONS_INIT;
 * bo.flags = KVP_BATCH_FLAG_REQUEST_ORDER;
 * int32_t order[2];
 * kvp_metadata *md = NULL;
 * if (kvp_metadata_build(&cfg, reqs, 2, &bo, order, &md) == KVP_OK) {
 *   // order = {1, 0}: the decode is row 0, but its token stays at row 6 of the keys/values.
 *   kvp_concatenate(cache, 0, &keys, &values, md, NULL);
 *   kvp_metadata_destroy(md);
 * }
 * @endcode
 */
KVP_API kvp_status KVP_CALL kvp_metadata_build(const kvp_config *cfg,
                                               const kvp_batch_request *requests,
                                               uint32_t num_requests,
                                               const kvp_batch_options *opts, int32_t *order_out,
                                               kvp_metadata **out);

KVP_END_DECLS

/** @} */
#endif /* KVPAGES_METADATA_H */
