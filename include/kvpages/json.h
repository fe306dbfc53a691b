/**
 * @file kvpages/json.h
 * @brief The config as JSON text, with the reference's key names, key order, separators and
 *        dtype strings.
 *
 * kvp_config_to_json() writes exactly what the reference's `to_json()` writes for the same
 * record: the 14 fields in declaration order, `", "` and `": "` separators, integers in
 * decimal, `hbm_utilization` as the shortest text that reads back to the same double (Python's
 * `repr`, e.g. `0.9`, `1.0`, `1e-05`), `version` as "v2"/"v3" and `_kvdtype_str` as the
 * canonical dtype name ("bf16", "fp8_e5m2", …). For example:
 *
 * `{"num_hidden_layers": 32, "max_model_length": 8192, "num_kv_heads": 8, "k_headdim": 128,
 * "v_headdim": 128, "hbm_utilization": 0.9, "page_size": 128, "num_pages": 3728,
 * "max_num_pages_per_req": 64, "num_slices_per_kv_cache_update_page": 32, "max_num_tokens": -1,
 * "max_num_reqs": -1, "version": "v3", "_kvdtype_str": "bf16"}`
 *
 * **Sharding** (since 1.3): a sharded record (kvp_config::data_parallel_size or
 * kvp_config::kv_head_shards over 1, or a resolution that changed something) also gets the
 * reference's later keys `"data_parallel_size"` and `"kv_head_shards"` right after
 * `hbm_utilization`, where the reference's HEAD writes them, and, after `_kvdtype_str`,
 * kvpages' own `"requested_kv_head_shards"` (when the heads were replicated) and
 * `"requested_kvdtype"` (the dtype name, when it was upcast). An unsharded record is the seed's
 * text byte for byte.
 *
 * kvp_config_from_json() behaves like the reference's `from_json()`: unknown keys are ignored
 * (the reference's `data_parallel_size` and `kv_head_shards` are read and kept, default 1, and
 * must be at least 1; the two `requested_*` keys default to 0, "as resolved"), the five model
 * fields are required, the others default, and the record is **not validated and
 * nothing is recomputed** — a JSON with inconsistent numbers round-trips as it is. Call
 * kvp_config_validate() on the result before trusting it. Differences from the reference: a value
 * of the wrong JSON type (a string for an integer, a fraction for an integer field, `null`) is an
 * error instead of being stored as is, and non-finite `hbm_utilization` cannot be written.
 *
 * Runtime metadata (kvp_metadata_to_json(), kvp_metadata_from_json()) uses the reference's field
 * names, but **its arrays are real JSON arrays of integers** (`pages_tables` and `slot_mapping`
 * as lists of rows). The reference's `to_json()` prints its tensor fields as their string
 * representation, which cannot be read back; kvpages' text round-trips.
 *
 * @defgroup kvp_json JSON
 * @ingroup kvpages
 * @{
 */
#ifndef KVPAGES_JSON_H
#define KVPAGES_JSON_H

#include "kvpages/common.h"
#include "kvpages/config.h"
#include "kvpages/metadata.h"
#include "kvpages/status.h"
#include "kvpages/types.h"

KVP_BEGIN_DECLS

/**
 * @brief Writes a config as JSON text (the reference's `to_json()`), NUL-terminated.
 *
 * The record is not validated (like the reference), but its layout version and dtype must have
 * names and `hbm_utilization` must be finite.
 *
 * @param[in] cfg Config, not NULL.
 * @param[out] buf Destination, may be NULL only when `cap` is 0.
 * @param[in] cap Capacity of `buf` in bytes, including room for the terminating NUL.
 * @param[out] written_out On success the text length in bytes, excluding the NUL; with
 *             ::KVP_ERR_BUFFER_TOO_SMALL the capacity needed, including the NUL. Not NULL.
 * @retval KVP_OK Written.
 * @retval KVP_ERR_BUFFER_TOO_SMALL `cap` is too small; nothing was written to `buf`.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL `cfg`/`written_out`, NULL `buf` with `cap` > 0, non-finite `hbm_utilization`.
 * @retval KVP_ERR_NOT_FOUND The layout version or dtype has no name.
 * @retval KVP_ERR_VERSION_MISMATCH Unknown `cfg->struct_size` or `abi_version`.
 * @retval KVP_ERR_UNSUPPORTED Non-zero tail in a larger config struct.
 * @ownership `buf` is borrowed.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_config_to_json(const kvp_config *cfg, char *buf, size_t cap, size_t *written_out);

/**
 * @brief Reads a config from JSON text (the reference's `from_json()`); no validation.
 *
 * Required keys: `num_hidden_layers`, `max_model_length`, `num_kv_heads`, `k_headdim`,
 * `v_headdim` (integers). Optional keys and their defaults: `hbm_utilization` 0.9 (a number),
 * `page_size` 128, `num_pages` -1, `max_num_pages_per_req` -1,
 * `num_slices_per_kv_cache_update_page` -1, `max_num_tokens` -1, `max_num_reqs` -1 (integers),
 * `version` "v3" ("v2" or "v3"), `_kvdtype_str` "bf16" (any spelling kvp_dtype_from_string()
 * accepts). Other keys are ignored.
 *
 * Untrusted text: the text is parsed without recursion and without building a document; nesting
 * deeper than 64 levels (the top-level object counts as one) is refused, wherever it is; a string
 * with an embedded NUL (`\u0000`) is refused, naming the key; error messages name the key and the
 * type found, never repeat a value, and quote at most 32 bytes of the text around a syntax error.
 * Memory use is proportional to the kept keys' values, and an allocation failure anywhere,
 * inside the JSON parser included, is ::KVP_ERR_OUT_OF_MEMORY.
 *
 * @param[in] json The text, not NULL; need not be NUL-terminated.
 * @param[in] len Bytes of `json`.
 * @param[out] out Receives the record, not NULL; unchanged on failure; set struct_size and
 *        abi_version first — ::KVP_CONFIG_INIT or kvp_config_init() do — to receive the version-2
 *        fields (since 1.3); otherwise the version-1 record is written.
 * @retval KVP_OK Read.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL pointer, malformed JSON (the message has the position),
 *         nesting deeper than 64 levels, not an object, a missing required key, a string with a
 *         NUL, or a value of the wrong type or range.
 * @retval KVP_ERR_NOT_FOUND Unknown `version` or `_kvdtype_str` string.
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_config_from_json(const char *json, size_t len, kvp_config *out);

/**
 * @brief Writes runtime metadata as JSON text, NUL-terminated, with its arrays as integer lists.
 *
 * Keys, in this order: `pages_tables` (a list of `num_reqs` rows of `pages_per_req` ids),
 * `context_lens`, `query_start_loc`, `num_seqs`, `slot_mapping` (3 rows: destination slots,
 * source tokens, lengths), `position_ids`, `request_distribution`, `num_kv_update_slices` (each
 * a list, or `null` when the handle has no such array), `version` ("v2"/"v3"),
 * `num_slices_per_kv_cache_update_page` (`null` when unset), `page_size` (0 = "the cache's") and
 * `prefill_chunk_size` (always 512, the reference's default; kvpages does not use it). Separators
 * are `", "` and `": "` as in the reference.
 *
 * @param[in] metadata Metadata handle whose arrays live in host memory.
 * @param[out] buf Destination, may be NULL only when `cap` is 0.
 * @param[in] cap Capacity of `buf` in bytes, including room for the terminating NUL.
 * @param[out] written_out On success the text length in bytes, excluding the NUL; with
 *             ::KVP_ERR_BUFFER_TOO_SMALL the capacity needed, including the NUL. Not NULL.
 * @retval KVP_OK Written.
 * @retval KVP_ERR_BUFFER_TOO_SMALL `cap` is too small; nothing was written to `buf`.
 * @retval KVP_ERR_INVALID_HANDLE Bad metadata handle.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL `written_out`, or NULL `buf` with `cap` > 0.
 * @retval KVP_ERR_UNSUPPORTED The arrays live on a CUDA device.
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted.
 * @ownership `buf` is borrowed.
 * @threadsafety May run concurrently with other calls that only read the same handle.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_metadata_to_json(const kvp_metadata *metadata, char *buf, size_t cap,
                                                 size_t *written_out);

/**
 * @brief Creates owning host metadata from JSON text written by kvp_metadata_to_json().
 *
 * The result has the shapes of kvp_metadata_create_empty(): with R rows and P columns from
 * `pages_tables` (or R from `context_lens`, or from `query_start_loc` minus one), T tokens from
 * `slot_mapping` (v2) or `position_ids`: `pages_tables [R, P]`, `context_lens [R]`,
 * `query_start_loc [R + 1]`, `num_seqs [1]`, `position_ids [T]`, and v2 `slot_mapping [3, T]`,
 * `num_kv_update_slices [1]` or v3 `request_distribution [3]`. A `null` or missing array loads
 * as zeros of that shape; an array of another length is rejected. Unknown keys are ignored.
 * Values are only checked to be integers that fit `int32_t`; their meaning is checked by the
 * calls that use the metadata. Untrusted text is handled as by kvp_config_from_json() (64 levels
 * of nesting at most, no NUL in strings, bounded messages); an element error names the key, the
 * row and the element, e.g. `pages_tables[1][3]`.
 *
 * @param[in] json The text, not NULL; need not be NUL-terminated.
 * @param[in] len Bytes of `json`.
 * @param[out] out Receives the new handle, not NULL; set to NULL on failure.
 * @retval KVP_OK Created.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL pointer, malformed JSON, nesting deeper than 64 levels,
 *         not an object, a value of the wrong type or out of int32 range, a string with a NUL,
 *         ragged `pages_tables`, an array of the wrong length, or an array the layout version
 *         does not have.
 * @retval KVP_ERR_NOT_FOUND Unknown `version` string.
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted.
 * @ownership Caller-owned handle: release with kvp_metadata_destroy().
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_metadata_from_json(const char *json, size_t len, kvp_metadata **out);

KVP_END_DECLS

/** @} */
#endif /* KVPAGES_JSON_H */
