/**
 * @file kvpages/group.h
 * @brief Cache groups: every shard of a sharded config, driven by one process.
 *
 * A group is the single-process way to use a sharded config (SPEC.md §7.3): one call creates
 * every shard (tensor rank, data rank) over a list of devices, one call writes a batch to all of
 * them, one call destroys them. Multi-process engines (one process per device, e.g. with NCCL)
 * create their own shard with kvp_cache_create_shard() instead; both write the same bytes.
 *
 * Shard `i` of a group is tensor rank `i / data_parallel_size`, data rank
 * `i % data_parallel_size` (i = tp_rank * data_parallel_size + dp_rank); every per-shard array
 * of this header is in that order.
 *
 * @defgroup kvp_group Cache groups
 * @ingroup kvpages
 * @{
 */
#ifndef KVPAGES_GROUP_H
#define KVPAGES_GROUP_H

#include "kvpages/cache.h"
#include "kvpages/common.h"
#include "kvpages/metadata.h"
#include "kvpages/status.h"
#include "kvpages/types.h"

KVP_BEGIN_DECLS

/** @brief Opaque group of shard caches (since 1.4). */
typedef struct kvp_cache_group kvp_cache_group;

/**
 * @brief Creates every shard of a sharded config (`kv_head_shards` x `data_parallel_size`
 *        caches, zero-filled), shard `i` on device `device_ids[i]`.
 *
 * All or nothing: when any shard cannot be created, the ones already made are destroyed and the
 * error names the shard. A config with one KV-head shard and one data shard makes a group of one
 * whole cache.
 *
 * @param[in] cfg Config with `num_pages` computed, not NULL; validated first. Copied.
 * @param[in] device_ids Device of each shard, of the type `opts` names (CUDA ordinals; 0 for the
 *            CPU), `num_device_ids` entries; NULL when `num_device_ids` is 0.
 * @param[in] num_device_ids The number of shards, or 0: every shard on the device `opts` names
 *            (CPU groups, for tests, benchmarks and CPU serving, pass NULL and 0).
 * @param[in] opts Options for every shard as for kvp_cache_create() (its `device_id` is replaced
 *            by the list's), or NULL for CPU shards.
 * @param[out] out Receives the new handle, not NULL; set to NULL on failure.
 * @retval KVP_OK Created.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL `cfg`/`out`, invalid config, `num_pages` < 1, a device
 *         list of another length than the number of shards, bad device fields.
 * @retval KVP_ERR_NOT_FOUND Unknown layout version or dtype in `cfg`.
 * @retval KVP_ERR_UNSUPPORTED As kvp_cache_create().
 * @retval KVP_ERR_VERSION_MISMATCH Unknown options size or version.
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted; nothing leaked.
 * @retval KVP_ERR_NO_DEVICE CUDA requested but unavailable in this build or machine.
 * @retval KVP_ERR_DEVICE_OUT_OF_MEMORY Device memory exhausted; nothing leaked.
 * @ownership Caller-owned result: release with kvp_cache_group_destroy().
 * @threadsafety Thread-safe.
 * @since 1.4
 * @code
 * // kv_head_shards = 4 over CUDA devices 0-3 (data_parallel_size = 1).
 * kvp_cache_options o = KVP_CACHE_OPTIONS_INIT;
 * o.device_type = KVP_DEVICE_CUDA;
 * const int32_t devices[4] = {0, 1, 2, 3};
 * kvp_cache_group *g = NULL;
 * kvp_status st = kvp_cache_group_create(&cfg, devices, 4, &o, &g);
 * @endcode
 */
KVP_API kvp_status KVP_CALL kvp_cache_group_create(const kvp_config *cfg, const int32_t *device_ids,
                                                   uint32_t num_device_ids, const kvp_cache_options *opts,
                                                   kvp_cache_group **out);

/**
 * @brief Destroys a group and every shard in it. NULL is a no-op.
 *
 * The shard handles kvp_cache_group_get_shard() returned are destroyed with it: a later call
 * with one of them returns ::KVP_ERR_INVALID_HANDLE (as for any destroyed handle).
 *
 * @param[in] group Group handle, or NULL.
 * @retval KVP_OK Destroyed (or NULL).
 * @retval KVP_ERR_INVALID_HANDLE Not a live group handle (the misuse handler is called).
 * @threadsafety Must not run concurrently with any other call on the group or its shards.
 * @since 1.4
 */
KVP_API kvp_status KVP_CALL kvp_cache_group_destroy(kvp_cache_group *group);

/**
 * @brief The number of shards of a group: `kv_head_shards` x `data_parallel_size`.
 * @param[in] group Group handle.
 * @param[out] out The count, not NULL; unchanged on failure.
 * @retval KVP_OK Written.
 * @retval KVP_ERR_INVALID_HANDLE Bad handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `out` is NULL.
 * @threadsafety Thread-safe.
 * @since 1.4
 */
KVP_API kvp_status KVP_CALL kvp_cache_group_get_num_shards(const kvp_cache_group *group, uint32_t *out);

/**
 * @brief Borrows the cache of shard (`tp_rank`, `dp_rank`) of a group.
 *
 * The handle is an ordinary shard cache for every cache call (views, kvp_cache_get_shard(),
 * kvp_cache_read_layer(), kvp_concatenate() on that shard alone, ...) but the group owns it:
 * kvp_cache_destroy() refuses it with ::KVP_ERR_INVALID_HANDLE (the misuse handler is called) and
 * leaves it working, and it dies with the group.
 *
 * @param[in] group Group handle.
 * @param[in] tp_rank Tensor rank, 0 … `kv_head_shards` - 1.
 * @param[in] dp_rank Data rank, 0 … `data_parallel_size` - 1.
 * @param[out] out Receives the borrowed handle, not NULL; unchanged on failure.
 * @retval KVP_OK Written.
 * @retval KVP_ERR_INVALID_HANDLE Bad group handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `out` is NULL, a rank out of range (the message gives the range).
 * @ownership Borrowed: valid until kvp_cache_group_destroy(); never destroy it yourself.
 * @threadsafety Thread-safe.
 * @since 1.4
 */
KVP_API kvp_status KVP_CALL kvp_cache_group_get_shard(const kvp_cache_group *group, int32_t tp_rank,
                                                      int32_t dp_rank, kvp_cache **out);

/**
 * @brief Writes the new keys and values of a ragged batch into one layer of every shard of a
 *        group: kvp_concatenate() on each shard, with every shard validated first.
 *
 * `keys[i]` and `values[i]` are shard `i`'s tensors, on shard `i`'s device: the full tensors
 * `[T, H, D]` or the shard's own heads `[T, head_end - head_begin, D]` (kvp_cache_get_shard()),
 * as for kvp_concatenate() on a shard. One host metadata, built for the whole cache (global page
 * ids, v2 slices), serves every shard; tokens on pages another data rank holds are skipped.
 * Its plan is kept for the whole group (one per metadata, not one per shard) when the metadata
 * keeps plans.
 *
 * **Everything is validated for every shard before anything is written**: on an argument error
 * for any shard the call returns ::KVP_ERR_INVALID_ARGUMENT with a message naming the shard
 * (`shard i (tp r, dp d)`) and no shard changes. Errors of a device while the writes run (after
 * validation) can leave earlier shards written.
 *
 * CUDA shards: shard `i`'s write is enqueued on `streams[i]` (of shard `i`'s device; NULL
 * `streams`, or a NULL entry, = that device's legacy default stream) with no host
 * synchronisation between shards, so the call can be captured into CUDA graphs as
 * kvp_concatenate() can. CPU shards: `streams` is ignored (pass NULL); the shards are written
 * before the call returns, several at a time on the library's thread pool when each shard's
 * write is small (docs/architecture.md).
 *
 * @param[in,out] group Group handle (the layer's pages of every shard are written).
 * @param[in] layer Layer index, < num_hidden_layers.
 * @param[in] keys `num_shards` key tensors, not NULL.
 * @param[in] values `num_shards` value tensors, not NULL.
 * @param[in] num_shards The group's shard count (kvp_cache_group_get_num_shards()).
 * @param[in] metadata Runtime metadata of the step in host memory, not NULL.
 * @param[in] streams `num_shards` CUDA streams, or NULL.
 * @retval KVP_OK Written (CUDA: enqueued on every shard's stream).
 * @retval KVP_ERR_INVALID_HANDLE Bad group or metadata handle.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL `keys`/`values`, `num_shards` other than the group's, or
 *         anything kvp_concatenate() refuses, for any shard (the message names it). No shard changes.
 * @retval KVP_ERR_UNSUPPORTED As kvp_concatenate() (device-resident metadata on a shard); no shard changes.
 * @retval KVP_ERR_DEVICE_LOST A shard has a pending asynchronous error; no shard changes.
 * @retval KVP_ERR_DEVICE A CUDA call failed.
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted; no shard changes and no plan is kept.
 * @ownership Borrows everything for the duration of the call (CUDA: until each stream reaches the
 *            enqueued work).
 * @threadsafety Must not run concurrently with other calls that modify the group or its shards.
 * @stream Shard `i`'s write is stream-ordered on `streams[i]`; argument errors are reported
 *         synchronously.
 * @since 1.4
 */
KVP_API kvp_status KVP_CALL kvp_cache_group_concatenate(kvp_cache_group *group, uint32_t layer, const kvp_tensor *keys,
                                                        const kvp_tensor *values, uint32_t num_shards,
                                                        const kvp_metadata *metadata, const kvp_stream *streams);

KVP_END_DECLS

/** @} */
#endif /* KVPAGES_GROUP_H */
