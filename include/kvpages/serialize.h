/**
 * @file kvpages/serialize.h
 * @brief Saving and loading caches: a versioned, little-endian, checksummed byte format, to and
 *        from caller buffers, callbacks and files.
 *
 * A serialized cache ("blob") holds the full config, the ids of the pages it carries and, for
 * every layer, the bytes of those pages, split into chunks that each carry an XXH3-64 checksum.
 * The format is specified in `docs/serialization-format.md`. The bytes do not depend on where
 * the cache lived: a blob written from a CUDA cache loads into a CPU cache and back.
 *
 * **Untrusted input.** Every reader treats its input as untrusted: a truncated blob, a flipped
 * byte, a wrong magic, an unknown major version, absurd sizes or a config that does not fit the
 * target are reported with a `KVP_ERR_FORMAT_*` status and a message, never by crashing or
 * reading past the input. Sizes read from the input never drive an allocation before the header
 * checksum and field checks have passed, and readers that stream (callbacks, files) allocate as
 * data arrives, never more than one chunk ahead of it. When the input's size is known (a buffer,
 * a regular file) the header must declare exactly that size before anything is allocated. A new
 * cache is bounded by kvp_deserialize_options::max_cache_bytes, which by default (0) allows
 * ::KVP_DESERIALIZE_DEFAULT_MAX_BYTES plus the input's size, so a small blob cannot make a load
 * allocate more than about 1 GiB; the config bounds of kvp_config (at most 65536 layers) apply.
 *
 * **Failure atomicity.** kvp_deserialize_into() and its variants check every checksum of the
 * blob before they write the first byte to the target cache, so on any failure the target is
 * unchanged. kvp_serialize_to_file() replaces the destination file atomically.
 *
 * @defgroup kvp_serialize Serialization
 * @ingroup kvpages
 * @{
 */
#ifndef KVPAGES_SERIALIZE_H
#define KVPAGES_SERIALIZE_H

#include "kvpages/cache.h"
#include "kvpages/common.h"
#include "kvpages/config.h"
#include "kvpages/status.h"
#include "kvpages/types.h"

KVP_BEGIN_DECLS

/** Format major version this library writes and the only one it reads. */
#define KVP_FORMAT_MAJOR 1u
/** Format minor version this library writes (1 since 1.4: blobs of sharded configs carry their
 *  sharding; the others are written as 1.0, byte for byte); it reads any minor of ::KVP_FORMAT_MAJOR. */
#define KVP_FORMAT_MINOR 1u
/** Required format flag (format 1.1, kvp_serialized_info::flags): the blob holds one shard's slice
 *  of its config's heads and pages (kvp_cache_create_shard()); readers that do not know it refuse
 *  the blob. */
#define KVP_FORMAT_FLAG_SHARD (1ull << 0)
/** Default payload bytes per checksummed chunk (1 MiB). */
#define KVP_SERIALIZE_DEFAULT_CHUNK_BYTES 1048576u
/** Smallest accepted chunk size in bytes. */
#define KVP_SERIALIZE_MIN_CHUNK_BYTES 64u
/** Largest accepted chunk size in bytes (1 GiB). */
#define KVP_SERIALIZE_MAX_CHUNK_BYTES 1073741824u

/** Current value of kvp_serialize_options::abi_version. */
#define KVP_SERIALIZE_OPTIONS_VERSION 1u

/**
 * kvp_serialize_options::flags bit (since 1.3): kvp_serialize_to_file() skips its two `fsync`s
 * (of the new file before the rename, of the directory after it). The replacement stays atomic
 * for other processes — they see the old file or the whole new one — but after a power loss or a
 * kernel crash shortly after the call the target may hold the old file, the new one, or an empty
 * or partial file (which a load then rejects by its checksums). For files that only need to
 * outlive the process (session caches, spill files on local disk, tmpfs); what numpy `tofile`,
 * safetensors `save_file` and `torch.save` do by default. No effect on the other sinks.
 */
#define KVP_SERIALIZE_FLAG_NO_SYNC 1u

/**
 * @brief What to serialize: all pages or a chosen list, and the chunk size.
 *
 * Zero means default for every field: a zeroed struct with its size and version set serializes
 * the whole cache in 1 MiB chunks.
 */
typedef struct kvp_serialize_options {
  uint32_t struct_size;   /**< sizeof(kvp_serialize_options). */
  uint32_t abi_version;   /**< ::KVP_SERIALIZE_OPTIONS_VERSION. */
  const int32_t *page_ids; /**< Pages to write, in this order (borrowed); NULL = every page 0 … num_pages-1. Each id in [0, num_pages), no duplicates. */
  uint32_t num_page_ids;  /**< Entries in `page_ids`; must be 0 when `page_ids` is NULL. 0 with a non-NULL `page_ids` writes the config and no page. */
  uint32_t flags;         /**< 0 or ::KVP_SERIALIZE_FLAG_NO_SYNC (since 1.3); other bits must be 0. */
  uint64_t chunk_bytes;   /**< Payload bytes per checksummed chunk; 0 = ::KVP_SERIALIZE_DEFAULT_CHUNK_BYTES; else in [::KVP_SERIALIZE_MIN_CHUNK_BYTES, ::KVP_SERIALIZE_MAX_CHUNK_BYTES]. */
} kvp_serialize_options;

/** Static initialiser: whole cache, default chunk size. */
#define KVP_SERIALIZE_OPTIONS_INIT KVP__OPTIONS_INIT(kvp_serialize_options, KVP_SERIALIZE_OPTIONS_VERSION)

/**
 * @brief Fills serialize options with defaults (whole cache, 1 MiB chunks).
 * @param[out] opts Options to fill, not NULL.
 * @param[in] struct_size sizeof(kvp_serialize_options) as the caller sees it.
 * @retval KVP_OK Filled.
 * @retval KVP_ERR_INVALID_ARGUMENT `opts` is NULL.
 * @retval KVP_ERR_VERSION_MISMATCH `struct_size` is smaller than version 1 of the struct.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_serialize_options_init(kvp_serialize_options *opts, uint32_t struct_size);

/**
 * @brief Writer callback of kvp_serialize_to_writer(): consumes the next `size` bytes of the blob.
 *
 * Called with consecutive pieces of the blob, in order; pieces are at most one chunk plus 8 bytes
 * (or the page-id table) long. `data` is valid only during the call.
 *
 * @param data The bytes, never NULL.
 * @param size Number of bytes, > 0.
 * @param user_data The pointer given to kvp_serialize_to_writer().
 * @return 0 to continue; any other value stops serialization, which then returns ::KVP_ERR_IO
 *         with the value in its message.
 * @warning The callback must not unwind (no C++ exception, Rust panic or longjmp through it).
 */
typedef int32_t(KVP_CALL *kvp_write_fn)(const void *data, size_t size, void *user_data);

/**
 * @brief Reader callback of the `*_from_reader` functions: supplies up to `size` next bytes.
 *
 * @param dst Where to write, never NULL, `size` bytes available.
 * @param size Bytes wanted, > 0.
 * @param read_out Receives how many bytes were written to `dst` (0 … `size`); 0 with a return
 *        value of 0 means end of input. Never NULL.
 * @param user_data The pointer given to the calling function.
 * @return 0 on success (including end of input); any other value aborts the call, which then
 *         returns ::KVP_ERR_IO with the value in its message.
 * @warning The callback must not unwind (no C++ exception, Rust panic or longjmp through it).
 */
typedef int32_t(KVP_CALL *kvp_read_fn)(void *dst, size_t size, size_t *read_out, void *user_data);

/**
 * @brief Computes the exact size in bytes of the blob kvp_serialize() would write.
 *
 * The size depends only on the config, the number of selected pages and the chunk size, so it
 * is exact, not an upper bound.
 *
 * @param[in] cache Cache handle.
 * @param[in] opts Selection and chunk size, or NULL for the whole cache with defaults.
 * @param[out] out Receives the size in bytes, not NULL; unchanged on failure.
 * @retval KVP_OK Computed.
 * @retval KVP_ERR_INVALID_HANDLE Bad cache handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `out` is NULL, a page id is out of range or repeated, `page_ids` is NULL with a non-zero count, a bad chunk size or a non-zero `flags`.
 * @retval KVP_ERR_VERSION_MISMATCH Unknown options size or version.
 * @retval KVP_ERR_UNSUPPORTED Non-zero tail in a larger options struct.
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted while checking the selection.
 * @threadsafety May run concurrently with other const calls on the same cache.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_serialized_size(const kvp_cache *cache, const kvp_serialize_options *opts,
                                                size_t *out);

/**
 * @brief Serializes a cache (or chosen pages of it) into a caller buffer.
 *
 * When `cap` is smaller than the blob, nothing is written to `dst`, `*written_out` receives the
 * required size and ::KVP_ERR_BUFFER_TOO_SMALL is returned (pass `dst` NULL and `cap` 0 to query
 * the size, or use kvp_serialized_size()). For a CUDA cache the pages are copied to the host
 * with synchronous copies on the legacy default stream: finish writing the pages first.
 *
 * @param[in] cache Cache handle.
 * @param[in] opts Selection and chunk size, or NULL for the whole cache with defaults.
 * @param[out] dst Destination, may be NULL only when `cap` is 0.
 * @param[in] cap Capacity of `dst` in bytes.
 * @param[out] written_out Receives the bytes written, or the required size with
 *        ::KVP_ERR_BUFFER_TOO_SMALL; not NULL.
 * @retval KVP_OK Written; `*written_out` bytes of `dst` hold the blob.
 * @retval KVP_ERR_BUFFER_TOO_SMALL `cap` is too small; `*written_out` is the required size.
 * @retval KVP_ERR_INVALID_HANDLE Bad cache handle.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL `written_out`, NULL `dst` with `cap` > 0, or a bad selection (see kvp_serialized_size()).
 * @retval KVP_ERR_VERSION_MISMATCH Unknown options size or version.
 * @retval KVP_ERR_UNSUPPORTED Non-zero tail in a larger options struct; or, for a CUDA cache, a
 *         blocking stream of its device is capturing a CUDA graph (nothing is written).
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted.
 * @retval KVP_ERR_DEVICE A device copy failed.
 * @retval KVP_ERR_DEVICE_LOST The cache has a pending asynchronous error.
 * @ownership `dst` is borrowed.
 * @threadsafety May run concurrently with other const calls on the same cache.
 * @stream Synchronous (legacy default stream) for CUDA caches.
 * @since 1.0
 * @code
 * size_t need = 0, written = 0;
 * kvp_serialized_size(cache, NULL, &need);
 * void *buf = malloc(need);
 * if (kvp_serialize(cache, NULL, buf, need, &written) != KVP_OK) puts(kvp_last_error_message());
 * @endcode
 */
KVP_API kvp_status KVP_CALL kvp_serialize(const kvp_cache *cache, const kvp_serialize_options *opts, void *dst,
                                          size_t cap, size_t *written_out);

/**
 * @brief Serializes a cache (or chosen pages of it) through a writer callback (streaming).
 *
 * The blob is produced in order, one chunk at a time, so memory use stays at about one chunk
 * whatever the cache size. When the callback fails, serialization stops; what it already
 * received is an incomplete blob that readers reject.
 *
 * @param[in] cache Cache handle.
 * @param[in] opts Selection and chunk size, or NULL for the whole cache with defaults.
 * @param[in] fn Writer, not NULL.
 * @param[in] user_data Passed to every call of `fn`; may be NULL.
 * @retval KVP_OK The whole blob was passed to `fn`.
 * @retval KVP_ERR_IO `fn` returned non-zero.
 * @retval KVP_ERR_INVALID_HANDLE Bad cache handle.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL `fn` or a bad selection (see kvp_serialized_size()).
 * @retval KVP_ERR_VERSION_MISMATCH Unknown options size or version.
 * @retval KVP_ERR_UNSUPPORTED Non-zero tail in a larger options struct; or, for a CUDA cache, a
 *         blocking stream of its device is capturing a CUDA graph (nothing is written).
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted.
 * @retval KVP_ERR_DEVICE A device copy failed.
 * @retval KVP_ERR_DEVICE_LOST The cache has a pending asynchronous error.
 * @ownership `user_data` is borrowed for the duration of the call.
 * @threadsafety May run concurrently with other const calls on the same cache.
 * @stream Synchronous (legacy default stream) for CUDA caches.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_serialize_to_writer(const kvp_cache *cache, const kvp_serialize_options *opts,
                                                    kvp_write_fn fn, void *user_data);

/**
 * @brief Serializes a cache (or chosen pages of it) to a file, replacing it atomically.
 *
 * Writes a new file in the target's directory, `fsync`s it, renames it over the target and
 * `fsync`s the directory (::KVP_SERIALIZE_FLAG_NO_SYNC skips both `fsync`s). On any failure the
 * new file is removed and a file that existed under the target name is left as it was: a reader
 * never sees a half-written file under that name.
 * Where the filesystem supports `O_TMPFILE` (ext4, xfs, btrfs, tmpfs on Linux ≥ 3.11, with
 * `/proc` mounted) the new file has no name while it is written and gets the temporary name
 * `TARGET.tmp.XXXXXX` only just before the rename, so a process killed during the save leaves no
 * file behind (except if killed in the instant between the two); elsewhere it is written under
 * that temporary name, which a `kill -9` leaves behind. docs/serialization-format.md has the
 * details.
 *
 * Permissions: the new file keeps the mode bits of the file it replaces; a new file gets
 * `0666 & ~umask`. The owner is the writing user.
 *
 * Symbolic links: a symbolic link at `path` is followed. The file it points to is replaced
 * atomically (the new file is written in that file's directory) and the link itself stays. A link
 * whose target cannot be resolved (dangling, a loop) is refused with ::KVP_ERR_IO and nothing is
 * written.
 *
 * @param[in] cache Cache handle.
 * @param[in] opts Selection and chunk size, or NULL for the whole cache with defaults.
 * @param[in] path Destination path, NUL-terminated, not NULL.
 * @retval KVP_OK Written and renamed into place.
 * @retval KVP_ERR_IO Creating, writing, syncing or renaming failed (the message has the OS error),
 *         or `path` is a symbolic link whose target cannot be resolved.
 * @retval KVP_ERR_INVALID_HANDLE Bad cache handle.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL or empty `path`, or a bad selection (see kvp_serialized_size()).
 * @retval KVP_ERR_VERSION_MISMATCH Unknown options size or version.
 * @retval KVP_ERR_UNSUPPORTED Non-zero tail in a larger options struct; or, for a CUDA cache, a
 *         blocking stream of its device is capturing a CUDA graph (nothing is written).
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted.
 * @retval KVP_ERR_DEVICE A device copy failed.
 * @retval KVP_ERR_DEVICE_LOST The cache has a pending asynchronous error.
 * @threadsafety May run concurrently with other const calls on the same cache; concurrent
 *               writers of the same path each replace the file atomically (the last rename wins).
 * @stream Synchronous (legacy default stream) for CUDA caches.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_serialize_to_file(const kvp_cache *cache, const kvp_serialize_options *opts,
                                                  const char *path);

/** Current value of kvp_deserialize_options::abi_version. */
#define KVP_DESERIALIZE_OPTIONS_VERSION 1u

/**
 * Memory a load may take when kvp_deserialize_options::max_cache_bytes is 0 (1 GiB), on top of
 * the size of the input when that is known (a buffer, a regular file).
 */
#define KVP_DESERIALIZE_DEFAULT_MAX_BYTES 1073741824ull

/** @brief Options of the kvp_deserialize_new() family. Zero means default for every field. */
typedef struct kvp_deserialize_options {
  uint32_t struct_size;                   /**< sizeof(kvp_deserialize_options). */
  uint32_t abi_version;                   /**< ::KVP_DESERIALIZE_OPTIONS_VERSION. */
  const kvp_cache_options *cache_options; /**< Device and allocator of the new cache (borrowed); NULL = a CPU cache. */
  uint64_t max_cache_bytes;               /**< Refuse blobs whose load would take more than this many bytes: every layer's buffer rounded up to 64 bytes plus 64 bytes of bookkeeping per layer, plus 4 bytes per stored page id. 0 = the default, ::KVP_DESERIALIZE_DEFAULT_MAX_BYTES plus the input's size for buffers and regular files (a blob that carries every page of its cache always loads); `UINT64_MAX` = no limit. */
  uint32_t flags;                         /**< Reserved, must be 0. */
  uint32_t _reserved;                     /**< Must be 0. */
} kvp_deserialize_options;

/** Static initialiser: CPU cache, the default size limit. */
#define KVP_DESERIALIZE_OPTIONS_INIT KVP__OPTIONS_INIT(kvp_deserialize_options, KVP_DESERIALIZE_OPTIONS_VERSION)

/**
 * @brief Fills deserialize options with defaults (CPU cache, the default size limit).
 * @param[out] opts Options to fill, not NULL.
 * @param[in] struct_size sizeof(kvp_deserialize_options) as the caller sees it.
 * @retval KVP_OK Filled.
 * @retval KVP_ERR_INVALID_ARGUMENT `opts` is NULL.
 * @retval KVP_ERR_VERSION_MISMATCH `struct_size` is smaller than version 1 of the struct.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_deserialize_options_init(kvp_deserialize_options *opts, uint32_t struct_size);

/**
 * @brief Creates a new cache from a blob in memory.
 *
 * The cache gets the blob's config; the pages the blob carries are loaded at their original
 * page ids and every other page is zero. The whole input must be exactly one blob: trailing
 * bytes are rejected. When the blob holds every page, a CPU cache may get the memory of the
 * cache destroyed last (see kvp_cache_destroy()) instead of fresh zeroed pages, since the load
 * overwrites every byte.
 *
 * @param[in] src The blob, may be NULL only when `len` is 0.
 * @param[in] len Bytes in `src`.
 * @param[in] opts Options, or NULL for defaults (CPU cache, the default size limit).
 * @param[out] out Receives the new cache, not NULL; set to NULL on failure.
 * @retval KVP_OK Created.
 * @retval KVP_ERR_FORMAT_MAGIC The input does not start with the kvpages magic.
 * @retval KVP_ERR_FORMAT_VERSION Unknown format major version or unknown required flags.
 * @retval KVP_ERR_FORMAT_TRUNCATED The input ends before the blob does.
 * @retval KVP_ERR_FORMAT_CHECKSUM A checksum (header, page table or a chunk) does not match.
 * @retval KVP_ERR_FORMAT_CORRUPT Structurally invalid: bad sizes, an invalid config, bad page ids, trailing bytes.
 * @retval KVP_ERR_FORMAT_MISMATCH The cache would exceed `max_cache_bytes`.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL `out`, NULL `src` with `len` > 0, bad cache options.
 * @retval KVP_ERR_VERSION_MISMATCH Unknown options size or version.
 * @retval KVP_ERR_UNSUPPORTED Non-zero reserved field or tail in an options struct; or, for a CUDA
 *         cache, a blocking stream of its device is capturing a CUDA graph (no cache is returned).
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted; nothing leaked.
 * @retval KVP_ERR_NO_DEVICE CUDA requested but not available.
 * @retval KVP_ERR_DEVICE_OUT_OF_MEMORY Device memory exhausted; nothing leaked.
 * @retval KVP_ERR_DEVICE A device copy failed.
 * @ownership Caller-owned result: release with kvp_cache_destroy(). `src` is borrowed.
 * @threadsafety Thread-safe.
 * @stream Synchronous (legacy default stream) for CUDA caches.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_deserialize_new(const void *src, size_t len, const kvp_deserialize_options *opts,
                                                kvp_cache **out);

/**
 * @brief Creates a new cache from a blob read through a callback (streaming).
 *
 * Reads exactly the blob's bytes and no more, so a stream may carry further data after it. The
 * cache (sized by the checked header, subject to `max_cache_bytes`) is allocated before the
 * pages arrive; each chunk is checked before it is stored.
 *
 * @param[in] fn Reader, not NULL.
 * @param[in] user_data Passed to every call of `fn`; may be NULL.
 * @param[in] opts Options, or NULL for defaults.
 * @param[out] out Receives the new cache, not NULL; set to NULL on failure.
 * @retval KVP_OK Created.
 * @retval KVP_ERR_IO `fn` returned non-zero or reported more bytes than asked.
 * @retval KVP_ERR_FORMAT_MAGIC Wrong magic.
 * @retval KVP_ERR_FORMAT_VERSION Unknown format major version or unknown required flags.
 * @retval KVP_ERR_FORMAT_TRUNCATED The input ended early.
 * @retval KVP_ERR_FORMAT_CHECKSUM A checksum does not match.
 * @retval KVP_ERR_FORMAT_CORRUPT Structurally invalid input.
 * @retval KVP_ERR_FORMAT_MISMATCH The cache would exceed `max_cache_bytes`.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL `fn`/`out`, bad cache options.
 * @retval KVP_ERR_VERSION_MISMATCH Unknown options size or version.
 * @retval KVP_ERR_UNSUPPORTED Non-zero reserved field or tail in an options struct; or, for a CUDA
 *         cache, a blocking stream of its device is capturing a CUDA graph (no cache is returned).
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted; nothing leaked.
 * @retval KVP_ERR_NO_DEVICE CUDA requested but not available.
 * @retval KVP_ERR_DEVICE_OUT_OF_MEMORY Device memory exhausted.
 * @retval KVP_ERR_DEVICE A device copy failed.
 * @ownership Caller-owned result: release with kvp_cache_destroy().
 * @threadsafety Thread-safe.
 * @stream Synchronous (legacy default stream) for CUDA caches.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_deserialize_new_from_reader(kvp_read_fn fn, void *user_data,
                                                            const kvp_deserialize_options *opts, kvp_cache **out);

/**
 * @brief Creates a new cache from a blob file (see kvp_deserialize_new()).
 *
 * The file must hold exactly one blob: trailing bytes are rejected.
 *
 * @param[in] path File path, NUL-terminated, not NULL.
 * @param[in] opts Options, or NULL for defaults.
 * @param[out] out Receives the new cache, not NULL; set to NULL on failure.
 * @retval KVP_OK Created.
 * @retval KVP_ERR_IO The file could not be opened or read.
 * @retval KVP_ERR_FORMAT_MAGIC Wrong magic.
 * @retval KVP_ERR_FORMAT_VERSION Unknown format major version or unknown required flags.
 * @retval KVP_ERR_FORMAT_TRUNCATED The file is shorter than the blob.
 * @retval KVP_ERR_FORMAT_CHECKSUM A checksum does not match.
 * @retval KVP_ERR_FORMAT_CORRUPT Structurally invalid input, or trailing bytes.
 * @retval KVP_ERR_FORMAT_MISMATCH The cache would exceed `max_cache_bytes`.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL `path`/`out`, bad cache options.
 * @retval KVP_ERR_VERSION_MISMATCH Unknown options size or version.
 * @retval KVP_ERR_UNSUPPORTED Non-zero reserved field or tail in an options struct; or, for a CUDA
 *         cache, a blocking stream of its device is capturing a CUDA graph (no cache is returned).
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted; nothing leaked.
 * @retval KVP_ERR_NO_DEVICE CUDA requested but not available.
 * @retval KVP_ERR_DEVICE_OUT_OF_MEMORY Device memory exhausted.
 * @retval KVP_ERR_DEVICE A device copy failed.
 * @ownership Caller-owned result: release with kvp_cache_destroy().
 * @threadsafety Thread-safe.
 * @stream Synchronous (legacy default stream) for CUDA caches.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_deserialize_new_from_file(const char *path, const kvp_deserialize_options *opts,
                                                          kvp_cache **out);

/**
 * @brief Loads the pages of a blob in memory into chosen pages of an existing cache.
 *
 * The target must be compatible with the blob: same number of layers, KV heads, head dims,
 * page size, layout version and dtype (its `num_pages` and the planning hints may differ). The
 * blob's j-th page goes to `dst_page_ids[j]` in every layer, or to its original page id when
 * `dst_page_ids` is NULL. Every checksum is verified before the first byte of the target is
 * written, so on any failure the target is unchanged. Pages not named are not touched. The
 * input must be exactly one blob.
 *
 * @param[in,out] cache Target cache.
 * @param[in] src The blob, may be NULL only when `len` is 0.
 * @param[in] len Bytes in `src`.
 * @param[in] dst_page_ids Destination page ids (borrowed), one per page in the blob, each in
 *            [0, num_pages) of the target, no duplicates; NULL = the blob's own page ids.
 * @param[in] num_dst_page_ids Entries in `dst_page_ids`; must be 0 when it is NULL.
 * @retval KVP_OK Loaded.
 * @retval KVP_ERR_INVALID_HANDLE Bad cache handle.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL `src` with `len` > 0; a destination id out of range or repeated; NULL ids with a non-zero count.
 * @retval KVP_ERR_FORMAT_MAGIC Wrong magic.
 * @retval KVP_ERR_FORMAT_VERSION Unknown format major version or unknown required flags.
 * @retval KVP_ERR_FORMAT_TRUNCATED The input ends before the blob does.
 * @retval KVP_ERR_FORMAT_CHECKSUM A checksum does not match.
 * @retval KVP_ERR_FORMAT_CORRUPT Structurally invalid input, or trailing bytes.
 * @retval KVP_ERR_FORMAT_MISMATCH The blob's geometry differs from the target's, the number of
 *         destination ids differs from the blob's page count, or (with NULL ids) a page id of the
 *         blob is outside the target.
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted; the target is unchanged.
 * @retval KVP_ERR_UNSUPPORTED CUDA: a blocking stream of the cache's device is capturing a CUDA
 *         graph; the target is unchanged.
 * @retval KVP_ERR_DEVICE A device copy failed (the target may be partly written).
 * @retval KVP_ERR_DEVICE_LOST The cache has a pending asynchronous error.
 * @ownership `src` and `dst_page_ids` are borrowed.
 * @threadsafety Must not race with other calls on the same cache.
 * @stream Synchronous (legacy default stream) for CUDA caches.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_deserialize_into(kvp_cache *cache, const void *src, size_t len,
                                                 const int32_t *dst_page_ids, uint32_t num_dst_page_ids);

/**
 * @brief Loads the pages of a blob read through a callback into chosen pages of an existing cache.
 *
 * Like kvp_deserialize_into(); the page payload is staged in host memory (allocated chunk by
 * chunk as it arrives) and checked completely before the target is written.
 *
 * @param[in,out] cache Target cache.
 * @param[in] fn Reader, not NULL.
 * @param[in] user_data Passed to every call of `fn`; may be NULL.
 * @param[in] dst_page_ids Destination page ids, or NULL (see kvp_deserialize_into()).
 * @param[in] num_dst_page_ids Entries in `dst_page_ids`.
 * @retval KVP_OK Loaded.
 * @retval KVP_ERR_IO `fn` returned non-zero or reported more bytes than asked.
 * @retval KVP_ERR_INVALID_HANDLE Bad cache handle.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL `fn`, bad destination ids.
 * @retval KVP_ERR_FORMAT_MAGIC Wrong magic.
 * @retval KVP_ERR_FORMAT_VERSION Unknown format major version or unknown required flags.
 * @retval KVP_ERR_FORMAT_TRUNCATED The input ended early.
 * @retval KVP_ERR_FORMAT_CHECKSUM A checksum does not match.
 * @retval KVP_ERR_FORMAT_CORRUPT Structurally invalid input.
 * @retval KVP_ERR_FORMAT_MISMATCH The blob does not fit the target (see kvp_deserialize_into()).
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted; the target is unchanged.
 * @retval KVP_ERR_UNSUPPORTED CUDA: a blocking stream of the cache's device is capturing a CUDA
 *         graph; the target is unchanged.
 * @retval KVP_ERR_DEVICE A device copy failed.
 * @retval KVP_ERR_DEVICE_LOST The cache has a pending asynchronous error.
 * @ownership `dst_page_ids` is borrowed.
 * @threadsafety Must not race with other calls on the same cache.
 * @stream Synchronous (legacy default stream) for CUDA caches.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_deserialize_into_from_reader(kvp_cache *cache, kvp_read_fn fn, void *user_data,
                                                             const int32_t *dst_page_ids,
                                                             uint32_t num_dst_page_ids);

/**
 * @brief Loads the pages of a blob file into chosen pages of an existing cache
 *        (see kvp_deserialize_into()).
 *
 * @param[in,out] cache Target cache.
 * @param[in] path File path, NUL-terminated, not NULL.
 * @param[in] dst_page_ids Destination page ids, or NULL (see kvp_deserialize_into()).
 * @param[in] num_dst_page_ids Entries in `dst_page_ids`.
 * @retval KVP_OK Loaded.
 * @retval KVP_ERR_IO The file could not be opened or read.
 * @retval KVP_ERR_INVALID_HANDLE Bad cache handle.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL `path`, bad destination ids.
 * @retval KVP_ERR_FORMAT_MAGIC Wrong magic.
 * @retval KVP_ERR_FORMAT_VERSION Unknown format major version or unknown required flags.
 * @retval KVP_ERR_FORMAT_TRUNCATED The file is shorter than the blob.
 * @retval KVP_ERR_FORMAT_CHECKSUM A checksum does not match.
 * @retval KVP_ERR_FORMAT_CORRUPT Structurally invalid input, or trailing bytes.
 * @retval KVP_ERR_FORMAT_MISMATCH The blob does not fit the target (see kvp_deserialize_into()).
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted; the target is unchanged.
 * @retval KVP_ERR_UNSUPPORTED CUDA: a blocking stream of the cache's device is capturing a CUDA
 *         graph; the target is unchanged.
 * @retval KVP_ERR_DEVICE A device copy failed.
 * @retval KVP_ERR_DEVICE_LOST The cache has a pending asynchronous error.
 * @ownership `dst_page_ids` is borrowed.
 * @threadsafety Must not race with other calls on the same cache.
 * @stream Synchronous (legacy default stream) for CUDA caches.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_deserialize_into_from_file(kvp_cache *cache, const char *path,
                                                           const int32_t *dst_page_ids, uint32_t num_dst_page_ids);

/** @brief Header fields of a blob, filled by kvp_serialized_inspect(). */
typedef struct kvp_serialized_info {
  uint32_t struct_size;          /**< sizeof(kvp_serialized_info); set by the caller. */
  uint32_t format_major;         /**< Format major version of the blob. */
  uint32_t format_minor;         /**< Format minor version of the blob. */
  uint32_t header_size;          /**< Bytes of the header, its checksum included. */
  uint64_t flags;                /**< Format flags: ::KVP_FORMAT_FLAG_SHARD (1.1), else 0. */
  uint32_t writer_version;       /**< kvp_version_number() of the library that wrote the blob. */
  uint32_t _reserved;            /**< 0. */
  uint64_t header_checksum;      /**< XXH3-64 of the header. */
  uint64_t num_stored_pages;     /**< Pages carried by the blob (per layer). */
  uint64_t first_page_id;        /**< Id of the first stored page (0 when none). */
  uint64_t last_page_id;         /**< Id of the last stored page (0 when none). */
  uint64_t page_bytes_per_layer; /**< Bytes of one page of one layer. */
  uint64_t chunk_bytes;          /**< Payload bytes per chunk. */
  uint64_t num_chunks;           /**< Number of checksummed chunks. */
  uint64_t payload_bytes;        /**< Page bytes over all layers. */
  uint64_t total_bytes;          /**< Size of the whole blob. */
  kvp_config config;             /**< The config stored in the blob. */
  /** Since 1.4 (version 3 of the struct: `struct_size` = sizeof): the slice the blob holds, as
   *  kvp_cache_get_shard() describes a cache (a whole cache: ranks 0 of sizes 1). */
  kvp_shard_info shard;
} kvp_serialized_info;

/**
 * @brief One blob of a set given to kvp_deserialize_shards_into(): in memory or in a file
 *        (exactly one of `data` and `path`).
 * @since 1.4
 */
typedef struct kvp_blob_ref {
  const void *data; /**< The blob in memory (`size` bytes, exactly one blob), or NULL. */
  size_t size;      /**< Bytes at `data`. */
  const char *path; /**< A file holding exactly one blob, or NULL. */
} kvp_blob_ref;

/**
 * @brief Loads a set of blobs whose slices may differ from the target's: re-sharding.
 *
 * The blobs may come from shards of another split (kvp_cache_create_shard(): a TP 4 save into
 * TP 2 shards or into a whole cache, a whole save into TP 8 shards, DP 2 into DP 1) or from whole
 * caches; the target may be a shard or a whole cache. Each blob must describe the target's model:
 * the same layers, KV heads, head dim, page size, num_pages, layout and dtype (a KV-head split
 * that upcast the dtype stores other bytes: it cannot be re-sharded into one that did not). Every
 * page that some blob stores and the target holds is written whole: each of the target's
 * combined entries of it must come from exactly one blob. Pages no blob stores are unchanged.
 *
 * Every blob is read and checked first — header, page table, every chunk checksum — and the set's
 * coverage proven; the target is written only after all checks passed, so a rejected set changes
 * nothing (a read error of a file during the writes can still leave pages partly written). Each
 * page of each layer is assembled in host memory and then copied into the target (for a CUDA
 * cache, a synchronous copy per page): this is for loads and re-sharding, not for a hot path.
 *
 * @param[in] cache Target cache or shard.
 * @param[in] blobs Array of `num_blobs` blob references, not NULL.
 * @param[in] num_blobs Number of blobs, at least 1.
 * @retval KVP_OK Loaded.
 * @retval KVP_ERR_INVALID_HANDLE Bad cache handle.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL `blobs`, no blob, or a reference with both or neither of `data` and `path`.
 * @retval KVP_ERR_IO A file could not be opened or read.
 * @retval KVP_ERR_FORMAT_MAGIC, KVP_ERR_FORMAT_VERSION, KVP_ERR_FORMAT_TRUNCATED, KVP_ERR_FORMAT_CORRUPT,
 *         KVP_ERR_FORMAT_CHECKSUM A blob is damaged (the message names what, as kvp_deserialize_into()).
 * @retval KVP_ERR_FORMAT_MISMATCH A blob of another model (the message names the blob and the
 *         field), two blobs holding the same entries of a page, or entries of a stored page the
 *         target needs that no blob holds (a missing shard). Nothing written.
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted.
 * @retval KVP_ERR_DEVICE A device copy failed.
 * @retval KVP_ERR_DEVICE_LOST The cache has a pending asynchronous error.
 * @ownership Borrows the blobs for the call.
 * @threadsafety Must not race with other calls on the same cache.
 * @since 1.4
 */
KVP_API kvp_status KVP_CALL kvp_deserialize_shards_into(kvp_cache *cache, const kvp_blob_ref *blobs,
                                                        uint32_t num_blobs);

/** Initialiser of an output struct: `struct_size` set, the rest zero (filled by the call). */
#define KVP_SERIALIZED_INFO_INIT KVP__OUTPUT_INIT(kvp_serialized_info)

/** Flag of kvp_serialized_inspect(): also verify the page table and every chunk checksum. */
#define KVP_INSPECT_VERIFY (1u << 0)

/**
 * @brief Reads and checks the header of a blob in memory; optionally verifies every checksum.
 *
 * Without ::KVP_INSPECT_VERIFY only the header (magic, version, header checksum, fields) is
 * checked and `len` may be just the header (the page-id fields are then 0); with it the whole
 * blob must be present and every checksum is verified, with the failing chunk named in the
 * message.
 *
 * @param[in] src Input, may be NULL only when `len` is 0.
 * @param[in] len Bytes in `src`.
 * @param[in] flags 0 or ::KVP_INSPECT_VERIFY.
 * @param[out] out Info, not NULL, with `struct_size` set (::KVP_SERIALIZED_INFO_INIT); unchanged
 *        on failure. Its config has the version-2 fields (since 1.3) only when `struct_size` is
 *        exactly `sizeof(kvp_serialized_info)` of 1.3; otherwise the version-1 info (kvpages
 *        1.0–1.2, config version 1) is written and `struct_size` says so.
 * @retval KVP_OK The header (and with ::KVP_INSPECT_VERIFY the whole blob) is valid.
 * @retval KVP_ERR_FORMAT_MAGIC Wrong magic.
 * @retval KVP_ERR_FORMAT_VERSION Unknown format major version or unknown required flags.
 * @retval KVP_ERR_FORMAT_TRUNCATED The input ends early.
 * @retval KVP_ERR_FORMAT_CHECKSUM A checksum does not match.
 * @retval KVP_ERR_FORMAT_CORRUPT Structurally invalid input.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL `out`, NULL `src` with `len` > 0, unknown `flags`.
 * @retval KVP_ERR_VERSION_MISMATCH `out->struct_size` is too small.
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_serialized_inspect(const void *src, size_t len, uint32_t flags,
                                                   kvp_serialized_info *out);

/**
 * @brief kvp_serialized_inspect() on a file, streaming (memory stays at about one chunk).
 *
 * @param[in] path File path, NUL-terminated, not NULL.
 * @param[in] flags 0 or ::KVP_INSPECT_VERIFY.
 * @param[out] out Info, not NULL, with `struct_size` set (::KVP_SERIALIZED_INFO_INIT); unchanged
 *        on failure. Its config has the version-2 fields (since 1.3) only when `struct_size` is
 *        exactly `sizeof(kvp_serialized_info)` of 1.3; otherwise the version-1 info (kvpages
 *        1.0–1.2, config version 1) is written and `struct_size` says so.
 * @retval KVP_OK Valid.
 * @retval KVP_ERR_IO The file could not be opened or read.
 * @retval KVP_ERR_FORMAT_MAGIC Wrong magic.
 * @retval KVP_ERR_FORMAT_VERSION Unknown format major version or unknown required flags.
 * @retval KVP_ERR_FORMAT_TRUNCATED The file ends early.
 * @retval KVP_ERR_FORMAT_CHECKSUM A checksum does not match.
 * @retval KVP_ERR_FORMAT_CORRUPT Structurally invalid input, or trailing bytes (with ::KVP_INSPECT_VERIFY).
 * @retval KVP_ERR_INVALID_ARGUMENT NULL `path`/`out`, unknown `flags`.
 * @retval KVP_ERR_VERSION_MISMATCH `out->struct_size` is too small.
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_serialized_inspect_file(const char *path, uint32_t flags,
                                                        kvp_serialized_info *out);

KVP_END_DECLS

/** @} */
#endif /* KVPAGES_SERIALIZE_H */
