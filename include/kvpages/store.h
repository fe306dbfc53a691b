/**
 * @file kvpages/store.h
 * @brief Block stores: where a page pool keeps the prefix pages it evicts (storage tiers), and
 *        the interface an engine implements to plug in its own.
 *
 * A ::kvp_store maps 16-byte keys (::kvp_store_key) to blocks of bytes. The pool writes one block
 * per evicted prefix page (the page's token ids, its prefix-chain link, a fingerprint of the
 * cache's config and the page's bytes in every layer, checksummed: docs/store-format.md) and
 * reads them back when a prompt continues past its in-memory prefix (kvp_pool_add_store()). A
 * store does not interpret blocks; it keeps what it is given, bounded in bytes.
 *
 * Three stores ship: kvp_store_create_memory() (host memory, least recently used blocks dropped
 * over the bound), kvp_store_create_directory() (one file per block, written atomically,
 * surviving restarts, checked by kvp_store_scrub()) and kvp_store_create_redis() (a Redis server
 * or Redis Cluster that many machines share; optional at build time). kvp_store_create() wraps an
 * engine's own (a ::kvp_store_vtable).
 *
 * **Thread safety.** A store is internally synchronised: several pools, on several threads, may
 * share one. A plug-in store's callbacks are called under that lock, one at a time. The
 * directory store reads and writes its files outside the lock (kvp_store_create_directory()).
 *
 * @defgroup kvp_store Block stores (storage tiers)
 * @ingroup kvpages
 * @{
 */
#ifndef KVPAGES_STORE_H
#define KVPAGES_STORE_H

#include "kvpages/cache.h"
#include "kvpages/common.h"
#include "kvpages/status.h"

KVP_BEGIN_DECLS

/** Opaque handle to a block store. Create with a `kvp_store_create*` call, release with
 *  kvp_store_destroy(). @since 1.4 */
typedef struct kvp_store kvp_store;

/** @brief The key of a block: 16 bytes (a pool uses the page's chained XXH3-128 prefix key,
 *         low 64 bits first, each little-endian). @since 1.4 */
typedef struct kvp_store_key {
  uint8_t bytes[16]; /**< The key. */
} kvp_store_key;

/** Current value of kvp_store_vtable::abi_version. Version 2 (since 1.5) appends `list`; a
 *  version-1 table (`struct_size` = `offsetof(kvp_store_vtable, list)`, `abi_version` 1) is still
 *  accepted and lists nothing (kvp_store_list() returns ::KVP_ERR_UNSUPPORTED). @since 1.4 */
#define KVP_STORE_VTABLE_VERSION 2u

/**
 * @brief The callbacks of a plug-in store (kvp_store_create()).
 *
 * Every callback receives `user_data` first and returns ::KVP_OK or an error status; a store
 * error is never fatal to a pool (it counts as a miss or a failed write). Callbacks are called
 * one at a time (the store's lock is held).
 *
 * @warning Callbacks must not unwind (no C++ exception, Rust panic or longjmp through them).
 * @since 1.4
 */
typedef struct kvp_store_vtable {
  uint32_t struct_size; /**< sizeof(kvp_store_vtable). */
  uint32_t abi_version; /**< ::KVP_STORE_VTABLE_VERSION. */
  void *user_data;      /**< Passed to every callback. */
  /** Stores `size` bytes at `data` under `key`, replacing a block already there. */
  kvp_status(KVP_CALL *put)(void *user_data, const kvp_store_key *key, const void *data, size_t size);
  /** Copies the block of `key` to `dst` (`capacity` bytes) and its size to `*size_out`. A
   *  missing key returns ::KVP_ERR_NOT_FOUND; a block larger than `capacity` returns
   *  ::KVP_ERR_BUFFER_TOO_SMALL with its size in `*size_out`. */
  kvp_status(KVP_CALL *get)(void *user_data, const kvp_store_key *key, void *dst, size_t capacity,
                            size_t *size_out);
  /** Sets `found_out[i]` to 1 when `keys[i]` has a block, else 0, for `i < count` (count > 0). */
  kvp_status(KVP_CALL *exists)(void *user_data, const kvp_store_key *keys, size_t count, uint8_t *found_out);
  /** Removes the block of `key`; a missing key returns ::KVP_ERR_NOT_FOUND. */
  kvp_status(KVP_CALL *remove)(void *user_data, const kvp_store_key *key);
  /** Releases the plug-in's state; called once, by kvp_store_destroy() (or by a failing
   *  kvp_store_create() after it accepted the table: never). May be NULL. */
  void(KVP_CALL *destroy)(void *user_data);
  /** Since 1.5 (abi_version 2): lists the keys held, a page at a time, as kvp_store_list()
   *  describes: from `*cursor` (0 = the start) writes up to `capacity` keys (capacity > 0) to
   *  `keys` and their number to `*count_out`, and sets `*cursor` to 0 when the listing is
   *  complete (any other value is the plug-in's own, passed back on the next call). May be NULL:
   *  the store cannot list. */
  kvp_status(KVP_CALL *list)(void *user_data, uint64_t *cursor, kvp_store_key *keys, size_t capacity,
                             size_t *count_out);
} kvp_store_vtable;

/** Flag of kvp_store_options::flags (directory store): do not fsync block files and the
 *  directory (faster; after a power loss a block may be missing or damaged, which scrub and every
 *  read detect). @since 1.4 */
#define KVP_STORE_FLAG_NO_SYNC (1u << 0)

/** Current value of kvp_store_options::abi_version. @since 1.4 */
#define KVP_STORE_OPTIONS_VERSION 1u

/** Timeout of a network store's calls when kvp_store_options::timeout_ms is 0. @since 1.5 */
#define KVP_STORE_DEFAULT_TIMEOUT_MS 1000u

/** @brief Options of the shipped stores. Zero means default for every field. @since 1.4 */
typedef struct kvp_store_options {
  uint32_t struct_size;                /**< sizeof(kvp_store_options). */
  uint32_t abi_version;                /**< ::KVP_STORE_OPTIONS_VERSION. */
  uint32_t flags;                      /**< `KVP_STORE_FLAG_*`. */
  /** Network stores (kvp_store_create_redis()): the bound in milliseconds on a connect and on
   *  every wait for the server, 0 = ::KVP_STORE_DEFAULT_TIMEOUT_MS. Ignored by the memory and directory
   *  stores. (Named `_reserved` and required to be 0 before 1.5: same offset and size.) @since 1.5 */
  uint32_t timeout_ms;
  const kvp_host_allocator *allocator; /**< Host allocator for the store's memory (borrowed, must outlive the store); NULL = built-in. */
} kvp_store_options;

/** Static initialiser: all defaults. @since 1.4 */
#define KVP_STORE_OPTIONS_INIT KVP__OPTIONS_INIT(kvp_store_options, KVP_STORE_OPTIONS_VERSION)

/**
 * @brief Fills store options with defaults.
 * @param[out] opts Options, not NULL.
 * @param[in] struct_size sizeof(kvp_store_options) as the caller sees it.
 * @retval KVP_OK Filled.
 * @retval KVP_ERR_INVALID_ARGUMENT `opts` is NULL.
 * @retval KVP_ERR_VERSION_MISMATCH `struct_size` smaller than version 1 of the struct.
 * @threadsafety Thread-safe.
 * @since 1.4
 */
KVP_API kvp_status KVP_CALL kvp_store_options_init(kvp_store_options *opts, uint32_t struct_size);

/**
 * @brief Creates a store from an engine's callbacks (a plug-in store).
 * @param[in] vtable Callbacks, not NULL; copied (the table need not outlive the call), but its
 *            `user_data` is owned by the store from now on: kvp_store_destroy() calls `destroy`.
 * @param[out] out Receives the new handle, not NULL; set to NULL on failure (then `destroy` is
 *             not called: the caller still owns `user_data`).
 * @retval KVP_OK Created.
 * @retval KVP_ERR_INVALID_ARGUMENT `vtable` or `out` is NULL, or `put`, `get`, `exists` or
 *         `remove` is NULL (the message names it). (`destroy` and `list` may be NULL.)
 * @retval KVP_ERR_VERSION_MISMATCH Unknown table size or version.
 * @retval KVP_ERR_UNSUPPORTED A non-zero tail in a larger table.
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted.
 * @ownership Caller-owned result: release with kvp_store_destroy().
 * @threadsafety Thread-safe.
 * @since 1.4
 */
KVP_API kvp_status KVP_CALL kvp_store_create(const kvp_store_vtable *vtable, kvp_store **out);

/**
 * @brief Creates a store in host memory, bounded in bytes: a put that would exceed the bound
 *        first drops the least recently used blocks (put or read).
 *
 * The memory of the largest block dropped, removed or replaced is kept for the next put, so a
 * store at its bound copies each new block into memory already in use rather than allocating it:
 * the store's memory is its bound plus at most one block.
 * @param[in] max_bytes The bound: the sum of the block sizes held, > 0. A block larger than the
 *            bound is refused.
 * @param[in] opts Options, or NULL for defaults (flags must be 0).
 * @param[out] out Receives the new handle, not NULL; set to NULL on failure.
 * @retval KVP_OK Created.
 * @retval KVP_ERR_INVALID_ARGUMENT `out` is NULL, `max_bytes` is 0, or unknown flags.
 * @retval KVP_ERR_VERSION_MISMATCH Unknown options size or version.
 * @retval KVP_ERR_UNSUPPORTED A non-zero tail in a larger options struct.
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted.
 * @ownership Caller-owned result: release with kvp_store_destroy().
 * @threadsafety Thread-safe.
 * @since 1.4
 */
KVP_API kvp_status KVP_CALL kvp_store_create_memory(uint64_t max_bytes, const kvp_store_options *opts,
                                                    kvp_store **out);

/**
 * @brief Opens (creating it if missing) a store in a directory: one file per block, named by
 *        the key in 32 lower-case hex digits with the suffix `.kvpb`, written atomically.
 *
 * The directory is scanned here: the block files already in it are the store's content (a store
 * survives restarts), ordered by their modification time for the LRU; files of other names are
 * left alone (stale temporary files of an interrupted write, `*.kvpb.tmp.*`, are deleted). Each
 * file holds a 48-byte header (the key, the size and an XXH3-64 checksum of the block), so every
 * read verifies the block: a damaged file is deleted and the read fails with a `KVP_ERR_FORMAT_*`
 * status. Over the bound, the least recently used blocks are deleted. Recency is kept in memory;
 * a read also refreshes the file's times, so the order survives a restart.
 *
 * Calls on several threads write and read their files at the same time: the store's lock covers
 * only its bookkeeping, so an `exists` or a `get` never waits for another thread's file write. A
 * put or a remove of a key waits while another put of the same key writes its file; a get of a
 * key being replaced reads the old block or the new one, whole. A block counts toward the bound
 * (and is visible to `exists`, `get`, `list` and the stats) once its put has written it, so the
 * files on disk can exceed the bound by the blocks being written at that moment.
 *
 * @param[in] path Directory, not NULL. Its parent must exist.
 * @param[in] max_bytes The bound on the sum of the file sizes (blocks plus headers), > 0. If the
 *            scan finds more, the least recent blocks are deleted until it holds.
 * @param[in] opts Options, or NULL for defaults (::KVP_STORE_FLAG_NO_SYNC allowed).
 * @param[out] out Receives the new handle, not NULL; set to NULL on failure.
 * @retval KVP_OK Opened.
 * @retval KVP_ERR_INVALID_ARGUMENT `path` or `out` is NULL, `max_bytes` is 0, or unknown flags.
 * @retval KVP_ERR_IO The directory cannot be created, opened or scanned (the message gives the
 *         path and the system's reason).
 * @retval KVP_ERR_VERSION_MISMATCH Unknown options size or version.
 * @retval KVP_ERR_UNSUPPORTED A non-zero tail in a larger options struct.
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted.
 * @ownership Caller-owned result: release with kvp_store_destroy(). The files stay.
 * @threadsafety Thread-safe. Two stores (or processes) must not share a directory.
 * @since 1.4
 */
KVP_API kvp_status KVP_CALL kvp_store_create_directory(const char *path, uint64_t max_bytes,
                                                       const kvp_store_options *opts, kvp_store **out);

/**
 * @brief Connects a store to a Redis server or a Redis Cluster, which several processes and
 *        machines may share.
 *
 * Each block is one string value named `<prefix><32 lower-case hex digits of the key>`, holding
 * the same 48-byte frame as a directory store's file (the key, the size and an XXH3-64 checksum
 * of the block, then the block: docs/store-format.md), so a get verifies it: a damaged value is
 * deleted and the get fails with a `KVP_ERR_FORMAT_*` status; kvp_store_scrub() checks every
 * value under the prefix (Redis SCAN). A put is a SET, a get a GET, a remove a DEL and
 * kvp_store_exists() one pipelined batch of EXISTS (a cluster: one pipeline per node).
 *
 * **Cluster.** Keys are routed to the master serving their hash slot (CRC16 of the key, or of its
 * `{hash tag}`, mod 16384) from the map CLUSTER SLOTS gives; MOVED redirects reload the map and
 * retry, ASK redirects retry on the named node after ASKING; at most 5 redirects per command.
 *
 * **Bounds and failures.** Redis bounds itself (configure `maxmemory` and an eviction policy such
 * as `allkeys-lru`): kvp_store_get_stats() reports blocks, bytes and max_bytes as -1 and the
 * store counts no evictions. A connect, and every wait on a server while sending or receiving,
 * lasts at most kvp_store_options::timeout_ms; an unreachable, refused or silent server is
 * ::KVP_ERR_IO naming `host:port` and the reason, never a hang; the connection is closed and the
 * next call reconnects. A put that failed so may or may not have replaced the value (whole).
 * A server (a cluster: a node) that did not answer within the timeout is then skipped:
 * for `timeout_ms`, twice that after a second timeout in a row, and so on up to 32 × `timeout_ms`,
 * calls that need it fail at once (::KVP_ERR_IO, "skipped", and when it is tried again) instead of
 * waiting, so that a silent server costs one timeout now and then rather than one per call (a
 * pool's lookups and its writer threads included). An answer ends it. A refused or reset
 * connection costs no wait and is retried at every call.
 *
 * @param[in] url `redis://HOST:PORT[/DB]` (one server, database DB, default 0) or
 *            `redis+cluster://HOST:PORT[,HOST:PORT...]` (seed nodes of a cluster), each optionally
 *            followed by `?prefix=STR`: the prefix of every key (taken literally, default `kvp:`).
 *            Not NULL. HOST is a name or an IPv4 address.
 * @param[in] opts Options, or NULL for defaults (flags must be 0; `timeout_ms` used, `allocator`
 *            for the store's own memory; hiredis allocates with malloc).
 * @param[out] out Receives the new handle, not NULL; set to NULL on failure.
 * @retval KVP_OK Connected (a cluster: its slot map loaded).
 * @retval KVP_ERR_INVALID_ARGUMENT `url` or `out` is NULL, a malformed URL (the message says
 *         what), or unknown flags.
 * @retval KVP_ERR_IO No server answered in time, or it refused (the message gives host:port and
 *         the reason).
 * @retval KVP_ERR_UNSUPPORTED The library was built without Redis (`KVPAGES_REDIS=OFF`, or
 *         hiredis missing; kvp_build_info() says `redis=off`).
 * @retval KVP_ERR_VERSION_MISMATCH Unknown options size or version.
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted.
 * @ownership Caller-owned result: release with kvp_store_destroy() (closes the connections; the
 *            values stay in Redis).
 * @threadsafety Thread-safe (calls on one store take turns on its connections).
 * @since 1.5
 */
KVP_API kvp_status KVP_CALL kvp_store_create_redis(const char *url, const kvp_store_options *opts, kvp_store **out);

/**
 * @brief Releases a store (a plug-in store's `destroy` is called). NULL is a no-op.
 * @param[in] store Handle or NULL.
 * @retval KVP_OK Released (or NULL).
 * @retval KVP_ERR_INVALID_HANDLE Not a live store handle.
 * @ownership Takes ownership of `store`. Pools that use it must be destroyed first.
 * @threadsafety Must not race with any other call on the same store.
 * @since 1.4
 */
KVP_API kvp_status KVP_CALL kvp_store_destroy(kvp_store *store);

/**
 * @brief Stores a block under a key, replacing the block already there.
 * @param[in] store Store handle.
 * @param[in] key Key, not NULL.
 * @param[in] data Bytes, `size` of them; may be NULL only when `size` is 0.
 * @param[in] size Block size.
 * @retval KVP_OK Stored.
 * @retval KVP_ERR_INVALID_HANDLE Bad store handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `key` is NULL, `data` is NULL with `size` > 0, or the block
 *         is larger than a shipped store's bound (the message gives both; nothing changed).
 * @retval KVP_ERR_IO A directory store could not write the file (the old block, if any, stays), or
 *         a Redis server failed or did not answer in time.
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted; nothing changed.
 * @return Or the status a plug-in store's `put` returned.
 * @ownership Borrows `data` for the call (the store copies it).
 * @threadsafety Thread-safe.
 * @since 1.4
 */
KVP_API kvp_status KVP_CALL kvp_store_put(kvp_store *store, const kvp_store_key *key, const void *data,
                                          size_t size);

/**
 * @brief Copies the block of a key into a caller buffer (size, then fill).
 * @param[in] store Store handle.
 * @param[in] key Key, not NULL.
 * @param[out] dst Destination of `capacity` bytes; may be NULL only when `capacity` is 0.
 * @param[in] capacity Bytes available at `dst`.
 * @param[out] size_out Receives the block's size, not NULL (also on ::KVP_ERR_BUFFER_TOO_SMALL).
 * @retval KVP_OK Copied; a read counts as a use for the LRU.
 * @retval KVP_ERR_INVALID_HANDLE Bad store handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `key` or `size_out` is NULL, or `dst` is NULL with
 *         `capacity` > 0.
 * @retval KVP_ERR_NOT_FOUND No block under `key` (a miss).
 * @retval KVP_ERR_BUFFER_TOO_SMALL `capacity` is below the block's size; nothing written to `dst`.
 * @retval KVP_ERR_FORMAT_CHECKSUM A directory store's file or a Redis value was damaged (or
 *         ::KVP_ERR_FORMAT_TRUNCATED, ::KVP_ERR_FORMAT_MAGIC, ::KVP_ERR_FORMAT_CORRUPT): it has been
 *         deleted.
 * @retval KVP_ERR_IO A directory store could not read the file, or a Redis server failed.
 * @return Or the status a plug-in store's `get` returned.
 * @threadsafety Thread-safe.
 * @since 1.4
 */
KVP_API kvp_status KVP_CALL kvp_store_get(kvp_store *store, const kvp_store_key *key, void *dst,
                                          size_t capacity, size_t *size_out);

/**
 * @brief Asks which of several keys have a block (one batched query).
 * @param[in] store Store handle.
 * @param[in] keys Keys, `count` of them; may be NULL only when `count` is 0.
 * @param[in] count Number of keys (0 is a no-op).
 * @param[out] found_out Receives 1 or 0 per key; may be NULL only when `count` is 0.
 * @retval KVP_OK Answered. Does not count as a use for the LRU.
 * @retval KVP_ERR_INVALID_HANDLE Bad store handle.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL `keys` or `found_out` with `count` > 0.
 * @retval KVP_ERR_IO A Redis server failed or did not answer in time.
 * @return Or the status a plug-in store's `exists` returned.
 * @threadsafety Thread-safe.
 * @since 1.4
 */
KVP_API kvp_status KVP_CALL kvp_store_exists(kvp_store *store, const kvp_store_key *keys, size_t count,
                                             uint8_t *found_out);

/**
 * @brief Removes the block of a key.
 * @param[in] store Store handle.
 * @param[in] key Key, not NULL.
 * @retval KVP_OK Removed.
 * @retval KVP_ERR_INVALID_HANDLE Bad store handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `key` is NULL.
 * @retval KVP_ERR_NOT_FOUND No block under `key`.
 * @retval KVP_ERR_IO A directory store could not delete the file, or a Redis server failed.
 * @return Or the status a plug-in store's `remove` returned.
 * @threadsafety Thread-safe.
 * @since 1.4
 */
KVP_API kvp_status KVP_CALL kvp_store_remove(kvp_store *store, const kvp_store_key *key);

/** @brief Content and counters of a store (kvp_store_get_stats()). @since 1.4 */
typedef struct kvp_store_stats {
  uint32_t struct_size; /**< Set by the caller: sizeof(kvp_store_stats). */
  uint32_t _reserved;   /**< 0. */
  int64_t blocks;       /**< Blocks held; -1 for a plug-in or Redis store (unknown). */
  int64_t bytes;        /**< Sum of their sizes (a directory store: of the files, headers included); -1 for a plug-in or Redis store. */
  int64_t max_bytes;    /**< The bound; -1 for a plug-in or Redis store (Redis's maxmemory bounds it). */
  int64_t puts;         /**< Successful puts so far (through this handle). */
  int64_t hits;         /**< Gets that returned a block. */
  int64_t misses;       /**< Gets that returned ::KVP_ERR_NOT_FOUND. */
  int64_t errors;       /**< Calls that failed otherwise (I/O, damaged block, plug-in error…). */
  int64_t evictions;    /**< Blocks a shipped store dropped to stay within its bound. */
} kvp_store_stats;

/** Initialiser of an output struct: `struct_size` set, the rest zero (filled by the call). @since 1.4 */
#define KVP_STORE_STATS_INIT KVP__OUTPUT_INIT(kvp_store_stats)

/**
 * @brief Reports a store's content and counters.
 * @param[in] store Store handle.
 * @param[in,out] out Stats with `struct_size` set, not NULL; the first `struct_size` bytes are
 *                filled.
 * @retval KVP_OK Filled.
 * @retval KVP_ERR_INVALID_HANDLE Bad store handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `out` is NULL.
 * @retval KVP_ERR_VERSION_MISMATCH `struct_size` smaller than version 1 of the struct.
 * @threadsafety Thread-safe.
 * @since 1.4
 */
KVP_API kvp_status KVP_CALL kvp_store_get_stats(kvp_store *store, kvp_store_stats *out);

/** @brief What kvp_store_scrub() found. @since 1.4 */
typedef struct kvp_store_scrub_report {
  uint32_t struct_size;   /**< Set by the caller: sizeof(kvp_store_scrub_report). */
  uint32_t _reserved;     /**< 0. */
  int64_t blocks_checked; /**< Blocks read and verified. */
  int64_t blocks_damaged; /**< Of those, blocks that failed (truncated, checksum, wrong key) and were deleted. */
  int64_t bytes_freed;    /**< File bytes of the deleted blocks. */
} kvp_store_scrub_report;

/** Initialiser of an output struct: `struct_size` set, the rest zero (filled by the call). @since 1.4 */
#define KVP_STORE_SCRUB_REPORT_INIT KVP__OUTPUT_INIT(kvp_store_scrub_report)

/**
 * @brief Reads and verifies every block of a store, deleting damaged ones (repair).
 *
 * A directory store reads every file whole (O(bytes held)); a Redis store reads every value under
 * its prefix (SCAN, then GET each; a cluster: every master). A memory store's blocks cannot be
 * damaged by anything but a memory fault: it reports them all checked and none damaged.
 *
 * @param[in] store Store handle.
 * @param[in,out] report Report with `struct_size` set, not NULL; filled.
 * @retval KVP_OK Scrubbed.
 * @retval KVP_ERR_INVALID_HANDLE Bad store handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `report` is NULL.
 * @retval KVP_ERR_VERSION_MISMATCH `struct_size` smaller than version 1 of the struct.
 * @retval KVP_ERR_UNSUPPORTED A plug-in store (it scrubs itself).
 * @retval KVP_ERR_IO A file could not be read or deleted, or a Redis server failed (the blocks
 *         before it were scrubbed).
 * @threadsafety Thread-safe.
 * @since 1.4
 */
KVP_API kvp_status KVP_CALL kvp_store_scrub(kvp_store *store, kvp_store_scrub_report *report);

/**
 * @brief Lists the keys a store holds, a page at a time (a cursor, like Redis SCAN).
 *
 * Start with `*cursor` = 0 and call again with the cursor the call left until it is 0 again:
 * each call writes up to `capacity` keys (possibly none, and possibly fewer than `capacity`
 * while the listing is not complete) and their number. The store is locked for one call, not
 * across calls, so other threads may put and remove meanwhile: a key present for the whole
 * listing appears at least once; keys put or removed during the listing may or may not appear;
 * a key may appear more than once (the shipped stores list each key at most once, a plug-in
 * store or a network store may repeat one). A listing reads no block and does not count as a
 * use for the LRU.
 *
 * @param[in] store Store handle.
 * @param[in,out] cursor Where to continue, not NULL: 0 to start; set to 0 when the listing is
 *                complete, else to the value to pass next. Left unchanged on failure.
 * @param[out] keys Receives the keys, `capacity` of them at most; not NULL.
 * @param[in] capacity Room at `keys`, > 0.
 * @param[out] count_out Receives the number of keys written, not NULL.
 * @retval KVP_OK Listed a page.
 * @retval KVP_ERR_INVALID_HANDLE Bad store handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `cursor`, `keys` or `count_out` is NULL, or `capacity` is 0;
 *         nothing written.
 * @retval KVP_ERR_UNSUPPORTED A plug-in store without a `list` callback (a version-1 table).
 * @return Or the status a plug-in store's `list` returned.
 * @threadsafety Thread-safe.
 * @since 1.5
 */
KVP_API kvp_status KVP_CALL kvp_store_list(kvp_store *store, uint64_t *cursor, kvp_store_key *keys, size_t capacity,
                                           size_t *count_out);

/** @brief What kvp_store_block_inspect() read in a block the pool wrote (docs/store-format.md).
 *  @since 1.5 */
typedef struct kvp_store_block_info {
  uint32_t struct_size;    /**< Set by the caller: sizeof(kvp_store_block_info). */
  uint32_t format_version; /**< The block format's version (1). */
  uint64_t fingerprint;    /**< The fingerprint of the config that wrote it (model shape, dtype, layout, page size, shard slice). */
  kvp_store_key key;       /**< The page's store key. */
  kvp_store_key parent;    /**< Its parent page's store key (the prefix-chain link). */
  uint64_t salt;           /**< The sequence's salt. */
  uint32_t page_size;      /**< Tokens per page. */
  uint32_t num_layers;     /**< Layers. */
  uint64_t page_bytes;     /**< Bytes of the page in one layer. */
  uint64_t block_bytes;    /**< Bytes of the whole block. */
  uint32_t checksum_ok;    /**< 1 when the block's checksum holds, 0 when it is damaged. */
  uint32_t _reserved;      /**< 0. */
} kvp_store_block_info;

/** Initialiser of an output struct: `struct_size` set, the rest zero (filled by the call). @since 1.5 */
#define KVP_STORE_BLOCK_INFO_INIT KVP__OUTPUT_INIT(kvp_store_block_info)

/**
 * @brief Reads the header of a block a pool wrote to a store (docs/store-format.md) and checks its
 *        checksum, so that tools and engines can see what a store holds without knowing the format.
 *
 * The header must be whole and consistent: magic, version, a geometry whose block size is `size`.
 * A block that passes those is described even when its checksum fails (`checksum_ok` = 0).
 *
 * @param[in] block The block's bytes, `size` of them; may be NULL only when `size` is 0.
 * @param[in] size Bytes at `block`.
 * @param[in,out] out Info with `struct_size` set, not NULL; the first `struct_size` bytes are
 *                filled on success, nothing is written on failure.
 * @retval KVP_OK Read (see `checksum_ok`).
 * @retval KVP_ERR_INVALID_ARGUMENT `out` is NULL, or `block` is NULL with `size` > 0.
 * @retval KVP_ERR_VERSION_MISMATCH `struct_size` smaller than version 1 of the struct.
 * @retval KVP_ERR_FORMAT_MAGIC Not a pool block (no `KVPB` magic).
 * @retval KVP_ERR_FORMAT_VERSION A block format version this library does not know.
 * @retval KVP_ERR_FORMAT_TRUNCATED Shorter than its header or than its geometry says.
 * @retval KVP_ERR_FORMAT_CORRUPT Longer than its geometry says, or an impossible geometry.
 * @threadsafety Thread-safe.
 * @since 1.5
 */
KVP_API kvp_status KVP_CALL kvp_store_block_inspect(const void *block, size_t size, kvp_store_block_info *out);

KVP_END_DECLS

/** @} */
#endif /* KVPAGES_STORE_H */
