/**
 * @file kvpages/plugin.h
 * @brief The dlopen entry point: one exported function returns a versioned, append-only table
 *        of every public function, so a plugin host resolves a single symbol.
 *
 * A host that loads kvpages at run time (`dlopen("libkvpages.so.1", RTLD_NOW | RTLD_LOCAL)`)
 * looks up `kvp_get_api` with `dlsym`, calls it with ::KVP_API_VERSION_1 and calls everything
 * else through the returned ::kvp_api_v1. Each field is named after the function without its
 * `kvp_` prefix (`api->cache_create` is kvp_cache_create()).
 *
 * **Stability.** Within major version 1 the table is append-only: fields are never removed,
 * reordered or retyped, and new functions are appended at the end. A host must check
 * `struct_size` before using a field that was appended after the version it was compiled
 * against (see ::KVP_API_HAS). An incompatible change gets a new struct (`kvp_api_v2`) and a new
 * version number for kvp_get_api(), while version 1 stays available.
 *
 * The generated parts of this header are kept in step with the other public headers by
 * `tests/abi/gen_api.py`; the ABI test fails when a public function is missing from the table.
 *
 * @code
 * void *lib = dlopen("libkvpages.so.1", RTLD_NOW | RTLD_LOCAL);
 * kvp_get_api_fn get = (kvp_get_api_fn)dlsym(lib, "kvp_get_api");
 * const kvp_api_v1 *api = get ? get(KVP_API_VERSION_1) : NULL;
 * if (api && api->check_abi(KVP_VERSION_NUMBER) == KVP_OK) {
 *   kvp_config cfg;
 *   api->config_init(&cfg, sizeof cfg);
 * }
 * @endcode
 *
 * @defgroup kvp_plugin Plugin entry point (dlopen)
 * @ingroup kvpages
 * @{
 */
#ifndef KVPAGES_PLUGIN_H
#define KVPAGES_PLUGIN_H

#include "kvpages/common.h"
#include "kvpages/version.h"
/* BEGIN GENERATED INCLUDES (tests/abi/gen_api.py) */
#include "kvpages/status.h"
#include "kvpages/types.h"
#include "kvpages/config.h"
#include "kvpages/cache.h"
#include "kvpages/metadata.h"
#include "kvpages/ops.h"
#include "kvpages/pool.h"
#include "kvpages/serialize.h"
#include "kvpages/json.h"
#include "kvpages/device.h"
#include "kvpages/attention.h"
#include "kvpages/group.h"
#include "kvpages/store.h"
/* END GENERATED INCLUDES */

KVP_BEGIN_DECLS

struct DLManagedTensor; /* from <dlpack/dlpack.h>; see kvpages/dlpack.h */

/** Version 1 of the function table, the argument of kvp_get_api(). */
#define KVP_API_VERSION_1 1u

/**
 * @brief Version 1 of the function table: every public function of kvpages 1.x.
 *
 * Obtain it with kvp_get_api(); never fill one yourself. Fields after `api_version` are
 * function pointers in a fixed, append-only order.
 */
typedef struct kvp_api_v1 {
  uint32_t struct_size; /**< sizeof(kvp_api_v1) in the loaded library; grows when fields are appended. */
  uint32_t api_version; /**< ::KVP_API_VERSION_1. */
  /* BEGIN GENERATED TABLE (tests/abi/gen_api.py; append-only) */
  /** kvp_status_name() */
  const char *(KVP_CALL *status_name)(kvp_status status);
  /** kvp_last_error_message() */
  const char *(KVP_CALL *last_error_message)(void);
  /** kvp_last_error_copy() */
  size_t (KVP_CALL *last_error_copy)(char *buf, size_t cap);
  /** kvp_set_misuse_handler() */
  void (KVP_CALL *set_misuse_handler)(kvp_misuse_fn fn, void *user_data);
  /** kvp_version_number() */
  uint32_t (KVP_CALL *version_number)(void);
  /** kvp_version_string() */
  const char *(KVP_CALL *version_string)(void);
  /** kvp_build_info() */
  const char *(KVP_CALL *build_info)(void);
  /** kvp_check_abi() */
  kvp_status (KVP_CALL *check_abi)(uint32_t header_version_number);
  /** kvp_dtype_from_string() */
  kvp_status (KVP_CALL *dtype_from_string)(const char *name, kvp_dtype *out);
  /** kvp_dtype_name() */
  const char *(KVP_CALL *dtype_name)(kvp_dtype dtype);
  /** kvp_dtype_bits() */
  uint32_t (KVP_CALL *dtype_bits)(kvp_dtype dtype);
  /** kvp_layout_from_string() */
  kvp_status (KVP_CALL *layout_from_string)(const char *name, kvp_layout *out);
  /** kvp_layout_name() */
  const char *(KVP_CALL *layout_name)(kvp_layout layout);
  /** kvp_cdiv() */
  kvp_status (KVP_CALL *cdiv)(int64_t a, int64_t b, int64_t *out);
  /** kvp_align_to_multiple() */
  kvp_status (KVP_CALL *align_to_multiple)(int64_t v, int64_t m, int64_t *out);
  /** kvp_previous_power_of_2() */
  int64_t (KVP_CALL *previous_power_of_2)(int64_t n);
  /** kvp_dtype_packing() */
  kvp_status (KVP_CALL *dtype_packing)(kvp_dtype dtype, int64_t *out);
  /** kvp_page_size_bytes() */
  kvp_status (KVP_CALL *page_size_bytes)(int64_t page_size, int64_t num_kv_heads, int64_t head_size, kvp_dtype dtype, int64_t *out);
  /** kvp_num_slices_per_kv_cache_update_page() */
  kvp_status (KVP_CALL *num_slices_per_kv_cache_update_page)(int64_t page_size_bytes, int64_t *out);
  /** kvp_config_init() */
  kvp_status (KVP_CALL *config_init)(kvp_config *cfg, uint32_t struct_size);
  /** kvp_config_validate() */
  kvp_status (KVP_CALL *config_validate)(const kvp_config *cfg);
  /** kvp_hbm_budget_bytes() */
  kvp_status (KVP_CALL *hbm_budget_bytes)(const kvp_memory_stats *stats, uint32_t num_stats, double utilization, uint32_t mode, int64_t safety_margin_bytes, int64_t *out);
  /** kvp_device_memory_stats() */
  kvp_status (KVP_CALL *device_memory_stats)(kvp_device_type device_type, int32_t device_id, kvp_memory_stats *out);
  /** kvp_config_options_init() */
  kvp_status (KVP_CALL *config_options_init)(kvp_config_options *opts, uint32_t struct_size);
  /** kvp_config_create() */
  kvp_status (KVP_CALL *config_create)(const kvp_config_options *opts, kvp_config *out);
  /** kvp_config_get_layout() */
  kvp_status (KVP_CALL *config_get_layout)(const kvp_config *cfg, kvp_layout_info *out);
  /** kvp_config_padded_num_slices() */
  kvp_status (KVP_CALL *config_padded_num_slices)(const kvp_config *cfg, int64_t num_tokens, int64_t max_num_reqs, int64_t *out);
  /** kvp_config_plan() */
  kvp_status (KVP_CALL *config_plan)(const kvp_config *cfg, kvp_plan *out);
  /** kvp_cache_options_init() */
  kvp_status (KVP_CALL *cache_options_init)(kvp_cache_options *opts, uint32_t struct_size);
  /** kvp_cache_create() */
  kvp_status (KVP_CALL *cache_create)(const kvp_config *cfg, const kvp_cache_options *opts, kvp_cache **out);
  /** kvp_cache_destroy() */
  kvp_status (KVP_CALL *cache_destroy)(kvp_cache *cache);
  /** kvp_cache_get_config() */
  kvp_status (KVP_CALL *cache_get_config)(const kvp_cache *cache, kvp_config *out);
  /** kvp_cache_get_layout() */
  kvp_status (KVP_CALL *cache_get_layout)(const kvp_cache *cache, kvp_layout_info *out);
  /** kvp_cache_get_device() */
  kvp_status (KVP_CALL *cache_get_device)(const kvp_cache *cache, kvp_device_type *device_type_out, int32_t *device_id_out);
  /** kvp_cache_get_view() */
  kvp_status (KVP_CALL *cache_get_view)(const kvp_cache *cache, uint32_t layer, kvp_view_kind kind, kvp_tensor *out);
  /** kvp_cache_get_async_error() */
  kvp_status (KVP_CALL *cache_get_async_error)(const kvp_cache *cache, kvp_status *out);
  /** kvp_cache_clear_async_error() */
  kvp_status (KVP_CALL *cache_clear_async_error)(kvp_cache *cache);
  /** kvp_metadata_desc_init() */
  kvp_status (KVP_CALL *metadata_desc_init)(kvp_metadata_desc *desc, uint32_t struct_size);
  /** kvp_metadata_create() */
  kvp_status (KVP_CALL *metadata_create)(const kvp_metadata_desc *desc, kvp_metadata **out);
  /** kvp_metadata_create_empty() */
  kvp_status (KVP_CALL *metadata_create_empty)(kvp_layout version, int64_t num_tokens, int64_t max_num_reqs, int64_t max_pages, int64_t page_size, kvp_metadata **out);
  /** kvp_metadata_destroy() */
  kvp_status (KVP_CALL *metadata_destroy)(kvp_metadata *metadata);
  /** kvp_metadata_get_array() */
  kvp_status (KVP_CALL *metadata_get_array)(const kvp_metadata *metadata, kvp_metadata_field field, const int32_t **data_out, int64_t *len_out);
  /** kvp_metadata_get_desc() */
  kvp_status (KVP_CALL *metadata_get_desc)(const kvp_metadata *metadata, kvp_metadata_desc *out);
  /** kvp_batch_options_init() */
  kvp_status (KVP_CALL *batch_options_init)(kvp_batch_options *opts, uint32_t struct_size);
  /** kvp_metadata_build() */
  kvp_status (KVP_CALL *metadata_build)(const kvp_config *cfg, const kvp_batch_request *requests, uint32_t num_requests, const kvp_batch_options *opts, int32_t *order_out, kvp_metadata **out);
  /** kvp_concatenate() */
  kvp_status (KVP_CALL *concatenate)(kvp_cache *cache, uint32_t layer, const kvp_tensor *key, const kvp_tensor *value, const kvp_metadata *metadata, kvp_stream stream);
  /** kvp_pool_options_init() */
  kvp_status (KVP_CALL *pool_options_init)(kvp_pool_options *opts, uint32_t struct_size);
  /** kvp_pool_create() */
  kvp_status (KVP_CALL *pool_create)(kvp_cache *cache, const kvp_pool_options *opts, kvp_pool **out);
  /** kvp_pool_destroy() */
  kvp_status (KVP_CALL *pool_destroy)(kvp_pool *pool);
  /** kvp_pool_add_sequence() */
  kvp_status (KVP_CALL *pool_add_sequence)(kvp_pool *pool, const int32_t *tokens, size_t num_tokens, uint64_t salt, uint32_t flags, kvp_seq_id *seq_out, size_t *reused_tokens_out);
  /** kvp_pool_append() */
  kvp_status (KVP_CALL *pool_append)(kvp_pool *pool, kvp_seq_id seq, const int32_t *tokens, size_t num_tokens, kvp_stream stream);
  /** kvp_pool_set_computed() */
  kvp_status (KVP_CALL *pool_set_computed)(kvp_pool *pool, kvp_seq_id seq, size_t num_tokens);
  /** kvp_pool_truncate() */
  kvp_status (KVP_CALL *pool_truncate)(kvp_pool *pool, kvp_seq_id seq, size_t new_length);
  /** kvp_pool_fork() */
  kvp_status (KVP_CALL *pool_fork)(kvp_pool *pool, kvp_seq_id parent, uint32_t num_children, kvp_seq_id *children_out);
  /** kvp_pool_free_sequence() */
  kvp_status (KVP_CALL *pool_free_sequence)(kvp_pool *pool, kvp_seq_id seq);
  /** kvp_pool_get_sequence_length() */
  kvp_status (KVP_CALL *pool_get_sequence_length)(const kvp_pool *pool, kvp_seq_id seq, size_t *length_out, size_t *computed_out);
  /** kvp_pool_get_page_table() */
  kvp_status (KVP_CALL *pool_get_page_table)(const kvp_pool *pool, kvp_seq_id seq, int32_t *pages_out, size_t capacity, size_t *count_out);
  /** kvp_pool_get_slots() */
  kvp_status (KVP_CALL *pool_get_slots)(const kvp_pool *pool, kvp_seq_id seq, size_t start, size_t count, int32_t *slots_out);
  /** kvp_pool_get_batch_request() */
  kvp_status (KVP_CALL *pool_get_batch_request)(const kvp_pool *pool, kvp_seq_id seq, kvp_batch_request *out);
  /** kvp_pool_get_page_state() */
  kvp_status (KVP_CALL *pool_get_page_state)(const kvp_pool *pool, int32_t page, uint32_t *refcount_out, uint32_t *flags_out);
  /** kvp_pool_get_stats() */
  kvp_status (KVP_CALL *pool_get_stats)(const kvp_pool *pool, kvp_pool_stats *out);
  /** kvp_pool_check_invariants() */
  kvp_status (KVP_CALL *pool_check_invariants)(const kvp_pool *pool);
  /** kvp_pool_clear_prefix_cache() */
  kvp_status (KVP_CALL *pool_clear_prefix_cache)(kvp_pool *pool);
  /** kvp_cache_copy_pages() */
  kvp_status (KVP_CALL *cache_copy_pages)(kvp_cache *cache, const int32_t *src_pages, const int32_t *dst_pages, size_t count, kvp_stream stream);
  /** kvp_serialize_options_init() */
  kvp_status (KVP_CALL *serialize_options_init)(kvp_serialize_options *opts, uint32_t struct_size);
  /** kvp_serialized_size() */
  kvp_status (KVP_CALL *serialized_size)(const kvp_cache *cache, const kvp_serialize_options *opts, size_t *out);
  /** kvp_serialize() */
  kvp_status (KVP_CALL *serialize)(const kvp_cache *cache, const kvp_serialize_options *opts, void *dst, size_t cap, size_t *written_out);
  /** kvp_serialize_to_writer() */
  kvp_status (KVP_CALL *serialize_to_writer)(const kvp_cache *cache, const kvp_serialize_options *opts, kvp_write_fn fn, void *user_data);
  /** kvp_serialize_to_file() */
  kvp_status (KVP_CALL *serialize_to_file)(const kvp_cache *cache, const kvp_serialize_options *opts, const char *path);
  /** kvp_deserialize_options_init() */
  kvp_status (KVP_CALL *deserialize_options_init)(kvp_deserialize_options *opts, uint32_t struct_size);
  /** kvp_deserialize_new() */
  kvp_status (KVP_CALL *deserialize_new)(const void *src, size_t len, const kvp_deserialize_options *opts, kvp_cache **out);
  /** kvp_deserialize_new_from_reader() */
  kvp_status (KVP_CALL *deserialize_new_from_reader)(kvp_read_fn fn, void *user_data, const kvp_deserialize_options *opts, kvp_cache **out);
  /** kvp_deserialize_new_from_file() */
  kvp_status (KVP_CALL *deserialize_new_from_file)(const char *path, const kvp_deserialize_options *opts, kvp_cache **out);
  /** kvp_deserialize_into() */
  kvp_status (KVP_CALL *deserialize_into)(kvp_cache *cache, const void *src, size_t len, const int32_t *dst_page_ids, uint32_t num_dst_page_ids);
  /** kvp_deserialize_into_from_reader() */
  kvp_status (KVP_CALL *deserialize_into_from_reader)(kvp_cache *cache, kvp_read_fn fn, void *user_data, const int32_t *dst_page_ids, uint32_t num_dst_page_ids);
  /** kvp_deserialize_into_from_file() */
  kvp_status (KVP_CALL *deserialize_into_from_file)(kvp_cache *cache, const char *path, const int32_t *dst_page_ids, uint32_t num_dst_page_ids);
  /** kvp_serialized_inspect() */
  kvp_status (KVP_CALL *serialized_inspect)(const void *src, size_t len, uint32_t flags, kvp_serialized_info *out);
  /** kvp_serialized_inspect_file() */
  kvp_status (KVP_CALL *serialized_inspect_file)(const char *path, uint32_t flags, kvp_serialized_info *out);
  /** kvp_config_to_json() */
  kvp_status (KVP_CALL *config_to_json)(const kvp_config *cfg, char *buf, size_t cap, size_t *written_out);
  /** kvp_config_from_json() */
  kvp_status (KVP_CALL *config_from_json)(const char *json, size_t len, kvp_config *out);
  /** kvp_metadata_to_json() */
  kvp_status (KVP_CALL *metadata_to_json)(const kvp_metadata *metadata, char *buf, size_t cap, size_t *written_out);
  /** kvp_metadata_from_json() */
  kvp_status (KVP_CALL *metadata_from_json)(const char *json, size_t len, kvp_metadata **out);
  /** kvp_device_count() */
  kvp_status (KVP_CALL *device_count)(int32_t *out);
  /** kvp_cache_read_layer() */
  kvp_status (KVP_CALL *cache_read_layer)(const kvp_cache *cache, uint32_t layer, void *host_dst, size_t cap, kvp_stream stream);
  /** kvp_cache_write_layer() */
  kvp_status (KVP_CALL *cache_write_layer)(kvp_cache *cache, uint32_t layer, const void *host_src, size_t size, kvp_stream stream);
  /** kvp_cache_export_dlpack() */
  kvp_status (KVP_CALL *cache_export_dlpack)(kvp_cache *cache, uint32_t layer, kvp_view_kind kind, uint32_t flags, struct DLManagedTensor **out);
  /** kvp_set_host_allocator() */
  kvp_status (KVP_CALL *set_host_allocator)(const kvp_host_allocator *allocator);
  /** kvp_attention_options_init() */
  kvp_status (KVP_CALL *attention_options_init)(kvp_attention_options *opts, uint32_t struct_size);
  /** kvp_attention() */
  kvp_status (KVP_CALL *attention)(kvp_cache *cache, uint32_t layer, const kvp_tensor *queries, const kvp_tensor *keys, const kvp_tensor *values, const kvp_metadata *metadata, const kvp_attention_options *opts, const kvp_tensor *out, kvp_stream stream);
  /** kvp_convert() */
  kvp_status (KVP_CALL *convert)(const void *src, kvp_dtype src_dtype, void *dst, kvp_dtype dst_dtype, size_t count);
  /** kvp_config_get_shard() */
  kvp_status (KVP_CALL *config_get_shard)(const kvp_config *cfg, int32_t tp_rank, int32_t dp_rank, kvp_shard_info *out);
  /** kvp_cache_create_shard() */
  kvp_status (KVP_CALL *cache_create_shard)(const kvp_config *cfg, int32_t tp_rank, int32_t dp_rank, const kvp_cache_options *opts, kvp_cache **out);
  /** kvp_cache_get_shard() */
  kvp_status (KVP_CALL *cache_get_shard)(const kvp_cache *cache, kvp_shard_info *out);
  /** kvp_deserialize_shards_into() */
  kvp_status (KVP_CALL *deserialize_shards_into)(kvp_cache *cache, const kvp_blob_ref *blobs, uint32_t num_blobs);
  /** kvp_pool_get_sequence_shard() */
  kvp_status (KVP_CALL *pool_get_sequence_shard)(const kvp_pool *pool, kvp_seq_id seq, uint32_t *shard_out);
  /** kvp_pool_get_shard_stats() */
  kvp_status (KVP_CALL *pool_get_shard_stats)(const kvp_pool *pool, uint32_t shard, kvp_pool_shard_stats *out);
  /** kvp_cache_group_create() */
  kvp_status (KVP_CALL *cache_group_create)(const kvp_config *cfg, const int32_t *device_ids, uint32_t num_device_ids, const kvp_cache_options *opts, kvp_cache_group **out);
  /** kvp_cache_group_destroy() */
  kvp_status (KVP_CALL *cache_group_destroy)(kvp_cache_group *group);
  /** kvp_cache_group_get_num_shards() */
  kvp_status (KVP_CALL *cache_group_get_num_shards)(const kvp_cache_group *group, uint32_t *out);
  /** kvp_cache_group_get_shard() */
  kvp_status (KVP_CALL *cache_group_get_shard)(const kvp_cache_group *group, int32_t tp_rank, int32_t dp_rank, kvp_cache **out);
  /** kvp_cache_group_concatenate() */
  kvp_status (KVP_CALL *cache_group_concatenate)(kvp_cache_group *group, uint32_t layer, const kvp_tensor *keys, const kvp_tensor *values, uint32_t num_shards, const kvp_metadata *metadata, const kvp_stream *streams);
  /** kvp_pool_add_store() */
  kvp_status (KVP_CALL *pool_add_store)(kvp_pool *pool, kvp_store *store);
  /** kvp_pool_get_tier_stats() */
  kvp_status (KVP_CALL *pool_get_tier_stats)(const kvp_pool *pool, uint32_t tier, kvp_pool_tier_stats *out);
  /** kvp_store_options_init() */
  kvp_status (KVP_CALL *store_options_init)(kvp_store_options *opts, uint32_t struct_size);
  /** kvp_store_create() */
  kvp_status (KVP_CALL *store_create)(const kvp_store_vtable *vtable, kvp_store **out);
  /** kvp_store_create_memory() */
  kvp_status (KVP_CALL *store_create_memory)(uint64_t max_bytes, const kvp_store_options *opts, kvp_store **out);
  /** kvp_store_create_directory() */
  kvp_status (KVP_CALL *store_create_directory)(const char *path, uint64_t max_bytes, const kvp_store_options *opts, kvp_store **out);
  /** kvp_store_destroy() */
  kvp_status (KVP_CALL *store_destroy)(kvp_store *store);
  /** kvp_store_put() */
  kvp_status (KVP_CALL *store_put)(kvp_store *store, const kvp_store_key *key, const void *data, size_t size);
  /** kvp_store_get() */
  kvp_status (KVP_CALL *store_get)(kvp_store *store, const kvp_store_key *key, void *dst, size_t capacity, size_t *size_out);
  /** kvp_store_exists() */
  kvp_status (KVP_CALL *store_exists)(kvp_store *store, const kvp_store_key *keys, size_t count, uint8_t *found_out);
  /** kvp_store_remove() */
  kvp_status (KVP_CALL *store_remove)(kvp_store *store, const kvp_store_key *key);
  /** kvp_store_get_stats() */
  kvp_status (KVP_CALL *store_get_stats)(kvp_store *store, kvp_store_stats *out);
  /** kvp_store_scrub() */
  kvp_status (KVP_CALL *store_scrub)(kvp_store *store, kvp_store_scrub_report *report);
  /** kvp_store_list() */
  kvp_status (KVP_CALL *store_list)(kvp_store *store, uint64_t *cursor, kvp_store_key *keys, size_t capacity, size_t *count_out);
  /** kvp_store_block_inspect() */
  kvp_status (KVP_CALL *store_block_inspect)(const void *block, size_t size, kvp_store_block_info *out);
  /** kvp_pool_flush_tiers() */
  kvp_status (KVP_CALL *pool_flush_tiers)(kvp_pool *pool, uint32_t flags);
  /** kvp_pool_save_sequence() */
  kvp_status (KVP_CALL *pool_save_sequence)(kvp_pool *pool, kvp_seq_id seq, void *dst, size_t capacity, size_t *size_out);
  /** kvp_pool_save_sequence_to_file() */
  kvp_status (KVP_CALL *pool_save_sequence_to_file)(kvp_pool *pool, kvp_seq_id seq, const char *path, uint32_t flags);
  /** kvp_pool_restore_sequence() */
  kvp_status (KVP_CALL *pool_restore_sequence)(kvp_pool *pool, const void *src, size_t size, uint32_t flags, kvp_seq_id *seq_out);
  /** kvp_pool_restore_sequence_from_file() */
  kvp_status (KVP_CALL *pool_restore_sequence_from_file)(kvp_pool *pool, const char *path, uint32_t flags, kvp_seq_id *seq_out);
  /** kvp_store_create_redis() */
  kvp_status (KVP_CALL *store_create_redis)(const char *url, const kvp_store_options *opts, kvp_store **out);
  /* END GENERATED TABLE */
} kvp_api_v1;

/**
 * @brief True when a table returned by kvp_get_api() is large enough to hold `field` (a field
 *        appended in a later 1.x release than the library the host loaded).
 */
#define KVP_API_HAS(api, field) \
  ((api)->struct_size >= offsetof(kvp_api_v1, field) + sizeof((api)->field))

/**
 * @brief Returns the function table of a version, for hosts that `dlopen` kvpages.
 *
 * @param[in] requested_version ::KVP_API_VERSION_1 (the only version of this library).
 * @return A pointer to a static, immutable table, or NULL when `requested_version` is not
 *         supported. It never sets or clears the thread's error message.
 * @ownership The table is static and lives until the library is unloaded; do not free it.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API const kvp_api_v1 *KVP_CALL kvp_get_api(uint32_t requested_version);

/** Type of kvp_get_api(), for casting the result of `dlsym(lib, "kvp_get_api")`. */
typedef const kvp_api_v1 *(KVP_CALL *kvp_get_api_fn)(uint32_t requested_version);

KVP_END_DECLS

/** @} */
#endif /* KVPAGES_PLUGIN_H */
