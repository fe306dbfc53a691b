/**
 * @file kvpages/pool.h
 * @brief The page pool: pages handed to sequences, shared by reference count (fork,
 *        copy-on-write), and reused across requests by prefix hash; plus the cache's page copy.
 *
 * A ::kvp_pool manages the page ids `1 … num_pages-1` of one ::kvp_cache (page 0 is the null
 * page used as page-table padding; it is never handed out). Each sequence owns a page-table row:
 * appending tokens allocates a page whenever a position crosses a page boundary, in O(1).
 *
 * **Sharing.** kvp_pool_fork() gives N children the parent's pages by reference count, without
 * copying. The first append into a partial tail page that another sequence also holds copies
 * that page first (copy-on-write, through kvp_cache_copy_pages(), all layers).
 *
 * **Prefix caching.** A full page whose KV is computed is keyed by XXH3-128 over its token ids,
 * chained with the key of the page before it and seeded with the sequence's salt, and entered in
 * the pool's prefix index. kvp_pool_add_sequence() reuses the longest indexed prefix of a prompt
 * (the token ids of every matched page are compared too, so a hash collision cannot return
 * another prompt's page). When its last holder releases an indexed page, the page stays cached
 * and evictable; cached pages are evicted least-recently-released first, and only when no free
 * page is left. A page in use is never evicted.
 *
 * **Data-parallel shards** (since 1.4). When the cache's config has `data_parallel_size` dp > 1,
 * the pool splits its pages into dp shards: shard `s` hands out the page ids
 * `[s·N/dp, (s+1)·N/dp)` (N = `num_pages`; shard 0 starts at 1, after the null page), each with
 * its own free list and LRU. Every sequence lives in one shard: all its pages (prompt, appends,
 * copy-on-write copies, and its fork children's pages) come from that shard, and only that
 * shard's cached pages are evicted for it. Prefix matching stays within a shard: a prefix
 * cached only in another shard is not reused (it is recomputed in the sequence's shard).
 * kvp_pool_add_sequence() places a sequence (see there, or force a shard with
 * KVP_POOL_ADD_IN_SHARD()); kvp_pool_get_sequence_shard() says where it went and
 * kvp_pool_get_shard_stats() how full each shard is. With dp = 1 there is one shard of all pages.
 *
 * **Storage tiers** (since 1.4). kvp_pool_add_store() gives the pool up to
 * ::KVP_POOL_MAX_TIERS block stores (kvpages/store.h), in order. A cached page the pool evicts is
 * first written as a block (docs/store-format.md) to every tier that does not hold it yet
 * (write-through: a memory tier serves this process while a directory or a shared store keeps the
 * page for a restarted process or another server); kvp_pool_add_sequence(),
 * after its in-memory match, asks the tiers in order for the prompt's next full pages (keyed by
 * the same chained keys, masked with the config's fingerprint so that pools of other models or
 * KV-head slices sharing a store neither find nor overwrite each other's blocks) and restores the blocks that check out (config fingerprint, keys,
 * salt, token ids, checksum) into fresh pages as if computed. Restores happen inside
 * kvp_pool_add_sequence() (on a CPU cache several blocks at once on the library's threads);
 * writes copy the page inside the evicting call, and put it there (a
 * memory store) or on the pool's writer threads (any other store; see kvp_pool_add_store() for
 * what is synchronous and its cost; kvp_pool_flush_tiers() waits for them). A failing store or a
 * damaged block is a miss, never an error of the call. kvp_pool_get_tier_stats() counts them.
 *
 * **When KV counts as computed.** Each sequence has a computed watermark: tokens whose K/V has
 * been written into the cache (or enqueued on the stream the other users of the cache use). Only
 * pages below it enter the prefix index, so a request can never reuse a page whose KV has not
 * been written yet. Reused tokens count as computed; kvp_pool_append() declares every token
 * already in the sequence computed (an autoregressive step appends only after the previous step
 * ran); kvp_pool_set_computed() declares it explicitly (after a prefill chunk).
 *
 * **Lifetime.** The pool borrows its cache: destroy the pool before the cache. A pool whose
 * cache was destroyed can still be destroyed; other calls that need the cache return
 * ::KVP_ERR_INVALID_HANDLE instead of touching freed memory, also when a new cache was created
 * at the destroyed one's address (the pool records its cache's serial, unique in the process).
 *
 * **Thread safety.** A pool is not internally synchronised: calls that modify the same pool must
 * not run concurrently; calls taking a `const kvp_pool *` may run concurrently with each other.
 *
 * **Failures.** Every error leaves the pool exactly as it was (no page allocated, evicted,
 * indexed or released). The one exception is a copy-on-write whose CUDA copy cannot be enqueued:
 * the page taken for the copy is returned, but if it was an evictable cached page it has left
 * the prefix index.
 *
 * @code
 * kvp_pool *pool; kvp_seq_id seq; size_t reused;
 * kvp_pool_create(cache, NULL, &pool);
 * kvp_pool_add_sequence(pool, prompt, n, 0, 0, &seq, &reused);  // reuse a cached prefix
 * // ... write K/V of tokens [reused, n) into the sequence's pages (kvp_pool_get_batch_request) ...
 * kvp_pool_append(pool, seq, &next_token, 1, NULL);             // the prompt now counts as computed
 * kvp_pool_free_sequence(pool, seq);                            // full pages stay cached
 * kvp_pool_destroy(pool);
 * @endcode
 *
 * @defgroup kvp_pool Page pool and prefix cache
 * @ingroup kvpages
 * @{
 */
#ifndef KVPAGES_POOL_H
#define KVPAGES_POOL_H

#include "kvpages/cache.h"
#include "kvpages/common.h"
#include "kvpages/metadata.h"
#include "kvpages/status.h"
#include "kvpages/store.h"
#include "kvpages/types.h"

KVP_BEGIN_DECLS

/** Opaque handle to a page pool. Create with kvp_pool_create(), release with kvp_pool_destroy(). */
typedef struct kvp_pool kvp_pool;

/**
 * @brief Identifies a sequence of a pool: slot index (low 20 bits) and generation (high 12 bits).
 *
 * A plain 32-bit value wrapped in a struct for type safety; it is passed by value like an
 * integer (the same calling convention as `uint32_t` on every supported ABI). The value 0 is
 * never a valid id. Freeing a sequence bumps its slot's generation, so a freed (stale) id is
 * rejected with ::KVP_ERR_NOT_FOUND; slots are reused first-in first-out, so a stale id would
 * only match again after 4095 × `max_sequences` frees.
 */
typedef struct kvp_seq_id {
  uint32_t id; /**< Opaque value; 0 = no sequence. */
} kvp_seq_id;

/** Flag of kvp_pool_options::flags: never index pages (no prefix reuse; released pages are freed at once). */
#define KVP_POOL_FLAG_NO_PREFIX_CACHE (1u << 0)

/**
 * Current value of kvp_pool_options::abi_version. Version 2 (since 1.5) appends
 * `write_queue_bytes`; a caller compiled against version 1 (`struct_size` = 24 on LP64) is still
 * accepted and gets its default.
 */
#define KVP_POOL_OPTIONS_VERSION 2u

/** @brief Options of kvp_pool_create(). Zero means default for every field. */
typedef struct kvp_pool_options {
  uint32_t struct_size;                /**< sizeof(kvp_pool_options). */
  uint32_t abi_version;                /**< ::KVP_POOL_OPTIONS_VERSION. */
  uint32_t max_sequences;              /**< Live sequences at most, 1 … 1048575; 0 = the config's `max_num_reqs` if > 0, else its `get_max_num_seqs()` (a 128k-entry page-table budget). */
  uint32_t flags;                      /**< `KVP_POOL_FLAG_*`. */
  const kvp_host_allocator *allocator; /**< Host allocator for the pool's memory (borrowed, must outlive the pool); NULL = built-in. */
  uint64_t write_queue_bytes;          /**< Since 1.5 (abi_version 2): bytes of staging blocks queued for the tiers whose writes are asynchronous (kvp_pool_add_store()); at least one block is queued whatever the value; 0 = 64 MiB. */
} kvp_pool_options;

/** Static initialiser: all defaults. */
#define KVP_POOL_OPTIONS_INIT KVP__OPTIONS_INIT(kvp_pool_options, KVP_POOL_OPTIONS_VERSION)

/**
 * @brief Fills pool options with defaults.
 * @param[out] opts Options, not NULL.
 * @param[in] struct_size sizeof(kvp_pool_options) as the caller sees it.
 * @retval KVP_OK Filled.
 * @retval KVP_ERR_INVALID_ARGUMENT `opts` is NULL.
 * @retval KVP_ERR_VERSION_MISMATCH `struct_size` smaller than version 1 of the struct.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_pool_options_init(kvp_pool_options *opts, uint32_t struct_size);

/**
 * @brief Creates a page pool over the pages of a cache.
 *
 * All the pool's memory is allocated here, in two blocks: bookkeeping per page (about 64 bytes
 * plus 4 bytes per token slot for the token ids the prefix index compares), the prefix index
 * (8 bytes per page) and a page-table row of `max_num_pages_per_req` entries per sequence slot.
 * No later call allocates (but kvp_pool_add_store(), and the stores a pool writes to), so no
 * later call can fail for lack of memory.
 *
 * @param[in] cache Cache whose pages the pool hands out, not NULL; borrowed: it must outlive
 *            the pool. It must have at least 2 pages (page 0 is the null page).
 * @param[in] opts Options, or NULL for defaults.
 * @param[out] out Receives the new handle, not NULL; set to NULL on failure.
 * @retval KVP_OK Created.
 * @retval KVP_ERR_INVALID_HANDLE `cache` is not a live cache.
 * @retval KVP_ERR_INVALID_ARGUMENT `out` is NULL, the cache has fewer than 2 pages, `max_sequences`
 *         out of range, unknown flags, or the page tables would exceed 2^31 entries.
 * @retval KVP_ERR_VERSION_MISMATCH Unknown options size or version.
 * @retval KVP_ERR_UNSUPPORTED A non-zero tail in a larger options struct.
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted; nothing leaked.
 * @retval KVP_ERR_DEVICE_LOST The cache has a pending asynchronous error.
 * @ownership Caller-owned result: release with kvp_pool_destroy(). Borrows `cache`.
 * @threadsafety Thread-safe with respect to other pools; reads `cache` only.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_pool_create(kvp_cache *cache, const kvp_pool_options *opts,
                                            kvp_pool **out);

/**
 * @brief Releases a pool and all its bookkeeping. NULL is a no-op.
 *
 * Never touches the cache (it may already be destroyed) and does not change page contents.
 *
 * @param[in] pool Handle or NULL.
 * @retval KVP_OK Released (or NULL).
 * @retval KVP_ERR_INVALID_HANDLE Not a live pool handle.
 * @ownership Takes ownership of `pool`; every ::kvp_seq_id of it becomes meaningless.
 * @threadsafety Must not race with other calls on the same pool.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_pool_destroy(kvp_pool *pool);

/** Flag of kvp_pool_add_sequence(): reuse every full cached page, even when the whole prompt hits. */
#define KVP_POOL_ADD_FLAG_REUSE_ALL (1u << 0)
/** Flag of kvp_pool_add_sequence(): place the sequence in the data-parallel shard given in bits
 *  16 … 31 of the flags; build it with KVP_POOL_ADD_IN_SHARD(). @since 1.4 */
#define KVP_POOL_ADD_FLAG_SHARD (1u << 1)
/** Flags of kvp_pool_add_sequence() that place the sequence in data-parallel shard `shard`
 *  (0 … 65535, below the config's `data_parallel_size`): ::KVP_POOL_ADD_FLAG_SHARD with the
 *  shard index in bits 16 … 31. Combine with other flags by `|`. @since 1.4 */
#define KVP_POOL_ADD_IN_SHARD(shard) (KVP_POOL_ADD_FLAG_SHARD | ((uint32_t)(shard) << 16))

/**
 * @brief Adds a sequence with a prompt, reusing the longest cached prefix of full pages.
 *
 * Page `i` of the prompt is reused when a page with the same chained key (token ids of pages
 * 0 … i and `salt`) and the same token ids is in the prefix index and pages 0 … i-1 were reused.
 * By default at most `floor((num_tokens - 1) / page_size)` pages are reused, so at least one
 * prompt token is left to compute (the runtime needs its logits); ::KVP_POOL_ADD_FLAG_REUSE_ALL
 * lifts that limit. The remaining positions get fresh pages (evicting least-recently-released
 * cached pages only when no free page is left). Reused tokens count as computed; the caller
 * writes the K/V of tokens `[*reused_tokens_out, num_tokens)`.
 *
 * **Placement** in a pool with data-parallel shards (see the file overview): with
 * KVP_POOL_ADD_IN_SHARD() in `flags`, the given shard; otherwise the shard whose prefix index
 * holds the longest match of the prompt, provided that shard can also hold the rest (ties: the
 * one with more free plus evictable pages), else the shard with the most free plus evictable
 * pages (ties: the lowest index). Prefix matching stays within the chosen shard.
 *
 * @param[in] pool Pool handle.
 * @param[in] tokens Token ids of the prompt, `num_tokens` entries; may be NULL only when
 *            `num_tokens` is 0 (an empty sequence).
 * @param[in] num_tokens Prompt length, ≤ the config's `max_model_length`.
 * @param[in] salt Prefix-cache namespace (tenant, model, LoRA…): pages only match pages indexed
 *            under the same salt. Inherited by appends and forks. 0 is a valid salt.
 * @param[in] flags 0, ::KVP_POOL_ADD_FLAG_REUSE_ALL, KVP_POOL_ADD_IN_SHARD(), or both `|`-ed.
 * @param[out] seq_out Receives the new sequence id, not NULL; unchanged on failure.
 * **Storage tiers**: when the pool has tiers (kvp_pool_add_store()), the pages after the
 * in-memory match, up to the same limit, are looked up in the tiers in order: one batched
 * `exists` per tier for the remaining pages, then the blocks are read while the prefix continues;
 * each is verified, its bytes copied into a fresh page of every layer, and the page is indexed as
 * computed. A block's head (config fingerprint, keys, salt, geometry, token ids) is always
 * checked before a page is taken for it. From a memory store into a CPU cache, up to 8 blocks at
 * a time are read where they lie, and copied and checksummed in one pass on the library's
 * threads: a block whose checksum fails then ends the restore, and the pages taken for it and for
 * the blocks after it in its group are released (free again; a page evicted for them was written
 * to the tiers first). From any other store, or into a CUDA cache (through two pinned buffers,
 * each block's host-to-device copies overlapping the next block's read, all done before the call
 * returns), a block is verified whole before its page is taken. A store error or a block that
 * fails a check ends the restore from that tier (a miss); damaged bytes never reach a page that
 * is indexed or returned.
 *
 * @param[out] reused_tokens_out Receives the number of reused prompt tokens, those of the
 *             in-memory match plus those restored from tiers (a multiple of `page_size`); may be
 *             NULL; unchanged on failure.
 * @retval KVP_OK Added.
 * @retval KVP_ERR_INVALID_HANDLE Bad pool handle.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL `seq_out`, NULL `tokens` with `num_tokens` > 0, unknown
 *         flags (bits 16 … 31 set without ::KVP_POOL_ADD_FLAG_SHARD), a forced shard not below
 *         `data_parallel_size`, or `num_tokens` above `max_model_length` (the message gives both).
 * @retval KVP_ERR_OUT_OF_PAGES Fewer free plus evictable pages than needed in the sequence's
 *         shard (the message gives needed and available, and names the shard when dp > 1), or
 *         every sequence slot is in use. Nothing changed.
 * @ownership Borrows `tokens` for the call (the pool keeps a copy of the ids).
 * @threadsafety Must not race with other calls on the same pool.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_pool_add_sequence(kvp_pool *pool, const int32_t *tokens,
                                                  size_t num_tokens, uint64_t salt,
                                                  uint32_t flags, kvp_seq_id *seq_out,
                                                  size_t *reused_tokens_out);

/**
 * @brief Appends tokens to a sequence, allocating pages as positions cross page boundaries.
 *
 * First declares every token already in the sequence computed (which may index its full pages,
 * see the file overview). If the sequence's partial tail page is also held by another sequence,
 * it is copied to a fresh page first (copy-on-write, all layers, on `stream`); if only this
 * sequence holds it but it is indexed (after a truncation), it leaves the index instead. The new
 * tokens then take positions `length … length + num_tokens - 1`.
 *
 * @param[in] pool Pool handle.
 * @param[in] seq Sequence id.
 * @param[in] tokens Token ids, `num_tokens` entries; may be NULL only when `num_tokens` is 0.
 * @param[in] num_tokens Tokens to append; the new length must not exceed `max_model_length`.
 * @param[in] stream CUDA stream for the copy-on-write of a CUDA cache (NULL = legacy default
 *            stream); ignored for a CPU cache.
 * @retval KVP_OK Appended.
 * @retval KVP_ERR_INVALID_HANDLE Bad pool handle, or the pool's cache was destroyed.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL `tokens` with `num_tokens` > 0, or the new length would
 *         exceed `max_model_length` (the message gives both).
 * @retval KVP_ERR_NOT_FOUND `seq` is unknown or stale (freed).
 * @retval KVP_ERR_OUT_OF_PAGES Fewer free plus evictable pages than needed in the sequence's
 *         shard (the message gives both, and names the shard when dp > 1).
 * @retval KVP_ERR_DEVICE_LOST The cache has a pending asynchronous error.
 * @retval KVP_ERR_DEVICE The CUDA copy could not be enqueued.
 * @ownership Borrows `tokens` for the call.
 * @threadsafety Must not race with other calls on the same pool or that modify its cache.
 * @stream The copy-on-write is stream-ordered on `stream`: K/V of the copied rows must have been
 *         written before, or enqueued earlier on the same stream. Bookkeeping is synchronous.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_pool_append(kvp_pool *pool, kvp_seq_id seq, const int32_t *tokens,
                                            size_t num_tokens, kvp_stream stream);

/**
 * @brief Declares that the K/V of the first `num_tokens` tokens of a sequence is written.
 *
 * Full pages below the watermark enter the prefix index (unless an identical page is already
 * indexed). The watermark only moves forward; a smaller value is a no-op.
 *
 * @param[in] pool Pool handle.
 * @param[in] seq Sequence id.
 * @param[in] num_tokens New watermark, ≤ the sequence's length.
 * @retval KVP_OK Recorded.
 * @retval KVP_ERR_INVALID_HANDLE Bad pool handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `num_tokens` exceeds the sequence's length.
 * @retval KVP_ERR_NOT_FOUND `seq` is unknown or stale.
 * @threadsafety Must not race with other calls on the same pool.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_pool_set_computed(kvp_pool *pool, kvp_seq_id seq,
                                                  size_t num_tokens);

/**
 * @brief Shortens a sequence, releasing the pages past its new end (last page first).
 * @param[in] pool Pool handle.
 * @param[in] seq Sequence id.
 * @param[in] new_length New length, ≤ the current length (equal is a no-op).
 * @retval KVP_OK Truncated.
 * @retval KVP_ERR_INVALID_HANDLE Bad pool handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `new_length` exceeds the current length.
 * @retval KVP_ERR_NOT_FOUND `seq` is unknown or stale.
 * @threadsafety Must not race with other calls on the same pool.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_pool_truncate(kvp_pool *pool, kvp_seq_id seq, size_t new_length);

/**
 * @brief Forks a sequence into `num_children` new sequences that share all its pages.
 *
 * Children get the parent's tokens, salt, computed watermark and data-parallel shard; every page of the parent gains
 * `num_children` references. Nothing is copied now: a shared partial tail page is copied by the
 * first append into it (kvp_pool_append()).
 *
 * @param[in] pool Pool handle.
 * @param[in] parent Sequence to fork.
 * @param[in] num_children Number of children (0 is a no-op).
 * @param[out] children_out Receives `num_children` ids; may be NULL only when `num_children` is
 *             0; unchanged on failure.
 * @retval KVP_OK Forked.
 * @retval KVP_ERR_INVALID_HANDLE Bad pool handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `children_out` is NULL with `num_children` > 0.
 * @retval KVP_ERR_NOT_FOUND `parent` is unknown or stale.
 * @retval KVP_ERR_OUT_OF_PAGES Fewer free sequence slots than `num_children`.
 * @threadsafety Must not race with other calls on the same pool.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_pool_fork(kvp_pool *pool, kvp_seq_id parent, uint32_t num_children,
                                          kvp_seq_id *children_out);

/**
 * @brief Frees a sequence: releases its pages (last page first, so tails are evicted before
 *        shared prefixes) and invalidates its id.
 *
 * A page whose last holder this was becomes evictable if it is indexed, free otherwise.
 *
 * @param[in] pool Pool handle.
 * @param[in] seq Sequence id.
 * @retval KVP_OK Freed.
 * @retval KVP_ERR_INVALID_HANDLE Bad pool handle.
 * @retval KVP_ERR_NOT_FOUND `seq` is unknown or stale (for example freed twice).
 * @threadsafety Must not race with other calls on the same pool.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_pool_free_sequence(kvp_pool *pool, kvp_seq_id seq);

/**
 * @brief Reports the length (tokens) and computed watermark of a sequence.
 * @param[in] pool Pool handle.
 * @param[in] seq Sequence id.
 * @param[out] length_out Tokens in the sequence; may be NULL.
 * @param[out] computed_out Computed watermark; may be NULL.
 * @retval KVP_OK Reported.
 * @retval KVP_ERR_INVALID_HANDLE Bad pool handle.
 * @retval KVP_ERR_NOT_FOUND `seq` is unknown or stale.
 * @threadsafety May run concurrently with other const calls.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_pool_get_sequence_length(const kvp_pool *pool, kvp_seq_id seq,
                                                         size_t *length_out, size_t *computed_out);

/**
 * @brief Copies a sequence's page-table row: its page ids in logical order, padded with the
 *        null page 0.
 *
 * Size-then-fill: `*count_out` receives the number of pages, `cdiv(length, page_size)`. When
 * `capacity` is at least that, the ids are written and entries `[count, capacity)` are set to 0,
 * so a row of `max_num_pages_per_req` entries comes back ready for a page table.
 *
 * @param[in] pool Pool handle.
 * @param[in] seq Sequence id.
 * @param[out] pages_out Destination of `capacity` entries; may be NULL when `capacity` is 0.
 * @param[in] capacity Entries available in `pages_out`.
 * @param[out] count_out Receives the page count, not NULL (also on ::KVP_ERR_BUFFER_TOO_SMALL).
 * @retval KVP_OK Copied.
 * @retval KVP_ERR_INVALID_HANDLE Bad pool handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `count_out` is NULL, or `pages_out` is NULL with `capacity` > 0.
 * @retval KVP_ERR_NOT_FOUND `seq` is unknown or stale.
 * @retval KVP_ERR_BUFFER_TOO_SMALL `capacity` is below the page count; nothing written to `pages_out`.
 * @threadsafety May run concurrently with other const calls.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_pool_get_page_table(const kvp_pool *pool, kvp_seq_id seq,
                                                    int32_t *pages_out, size_t capacity,
                                                    size_t *count_out);

/**
 * @brief Computes the cache slots (`page * page_size + row`) of positions of a sequence.
 *
 * @param[in] pool Pool handle.
 * @param[in] seq Sequence id.
 * @param[in] start First position.
 * @param[in] count Positions; `start + count` must not exceed the sequence's length.
 * @param[out] slots_out Receives `count` slots; may be NULL only when `count` is 0.
 * @retval KVP_OK Computed.
 * @retval KVP_ERR_INVALID_HANDLE Bad pool handle.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL `slots_out` with `count` > 0, or positions past the end.
 * @retval KVP_ERR_NOT_FOUND `seq` is unknown or stale.
 * @retval KVP_ERR_UNSUPPORTED A slot does not fit in int32 (`num_pages * page_size` ≥ 2^31).
 * @threadsafety May run concurrently with other const calls.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_pool_get_slots(const kvp_pool *pool, kvp_seq_id seq, size_t start,
                                               size_t count, int32_t *slots_out);

/**
 * @brief Fills a request of the batch builder (kvp_metadata_build()) from a sequence, with
 *        no copy: `num_computed` = the computed watermark, `num_scheduled` = length − watermark,
 *        `page_ids` / `num_pages` = the sequence's page-table row.
 *
 * @param[in] pool Pool handle.
 * @param[in] seq Sequence id.
 * @param[out] out Request, not NULL; unchanged on failure.
 * @retval KVP_OK Filled.
 * @retval KVP_ERR_INVALID_HANDLE Bad pool handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `out` is NULL.
 * @retval KVP_ERR_NOT_FOUND `seq` is unknown or stale.
 * @ownership `out->page_ids` borrows the pool's row: valid until the next call that modifies the
 *            pool, or its destruction.
 * @threadsafety May run concurrently with other const calls.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_pool_get_batch_request(const kvp_pool *pool, kvp_seq_id seq,
                                                       kvp_batch_request *out);

/**
 * @brief Reports the data-parallel shard a sequence lives in (all its pages are in that shard's
 *        range, see the file overview); 0 in a pool without shards.
 * @param[in] pool Pool handle.
 * @param[in] seq Sequence id.
 * @param[out] shard_out Receives the shard index, not NULL; unchanged on failure.
 * @retval KVP_OK Reported.
 * @retval KVP_ERR_INVALID_HANDLE Bad pool handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `shard_out` is NULL.
 * @retval KVP_ERR_NOT_FOUND `seq` is unknown or stale.
 * @threadsafety May run concurrently with other const calls.
 * @since 1.4
 */
KVP_API kvp_status KVP_CALL kvp_pool_get_sequence_shard(const kvp_pool *pool, kvp_seq_id seq,
                                                        uint32_t *shard_out);

/** Page state flag: the null page 0 (never handed out). */
#define KVP_PAGE_FLAG_NULL (1u << 0)
/** Page state flag: on the free list (no holder, not indexed). */
#define KVP_PAGE_FLAG_FREE (1u << 1)
/** Page state flag: in the prefix index (reusable by hash). With refcount 0 the page is evictable. */
#define KVP_PAGE_FLAG_INDEXED (1u << 2)

/**
 * @brief Reports the reference count and state of one page.
 * @param[in] pool Pool handle.
 * @param[in] page Page id in `[0, num_pages)`.
 * @param[out] refcount_out Number of sequence page-table entries holding the page; may be NULL.
 * @param[out] flags_out `KVP_PAGE_FLAG_*` bits; may be NULL.
 * @retval KVP_OK Reported.
 * @retval KVP_ERR_INVALID_HANDLE Bad pool handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `page` out of range.
 * @threadsafety May run concurrently with other const calls.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_pool_get_page_state(const kvp_pool *pool, int32_t page,
                                                    uint32_t *refcount_out, uint32_t *flags_out);

/** @brief Counters of a pool (kvp_pool_get_stats()). */
typedef struct kvp_pool_stats {
  uint32_t struct_size;           /**< Set by the caller: sizeof(kvp_pool_stats). */
  uint32_t max_sequences;         /**< Sequence slots. */
  int64_t page_size;              /**< Tokens per page. */
  int64_t max_pages_per_sequence; /**< cdiv(max_model_length, page_size). */
  int64_t total_pages;            /**< Usable pages: num_pages − 1. */
  int64_t free_pages;             /**< Pages on the free list. */
  int64_t evictable_pages;        /**< Indexed pages with no holder (cached, evictable). */
  int64_t used_pages;             /**< Pages with at least one holder. free + evictable + used = total. */
  int64_t indexed_pages;          /**< Pages in the prefix index (evictable or in use). */
  int64_t num_sequences;          /**< Live sequences. */
  int64_t prompt_tokens;          /**< Prompt tokens given to kvp_pool_add_sequence() so far. */
  int64_t reused_tokens;          /**< Of those, tokens served from the prefix cache. */
  int64_t evictions;              /**< Cached pages evicted so far. */
  int64_t cow_copies;             /**< Pages copied on write so far. */
} kvp_pool_stats;

/** Initialiser of an output struct: `struct_size` set, the rest zero (filled by the call). */
#define KVP_POOL_STATS_INIT KVP__OUTPUT_INIT(kvp_pool_stats)

/**
 * @brief Reports a pool's counters.
 * @param[in] pool Pool handle.
 * @param[in,out] out Stats with `struct_size` set, not NULL; the first `struct_size` bytes are
 *                filled.
 * @retval KVP_OK Filled.
 * @retval KVP_ERR_INVALID_HANDLE Bad pool handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `out` is NULL.
 * @retval KVP_ERR_VERSION_MISMATCH `struct_size` smaller than version 1 of the struct.
 * @threadsafety May run concurrently with other const calls.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_pool_get_stats(const kvp_pool *pool, kvp_pool_stats *out);

/** @brief Counters of one data-parallel shard of a pool (kvp_pool_get_shard_stats()). @since 1.4 */
typedef struct kvp_pool_shard_stats {
  uint32_t struct_size;    /**< Set by the caller: sizeof(kvp_pool_shard_stats). */
  uint32_t num_shards;     /**< Shards of the pool: the config's `data_parallel_size` (1 = unsharded). */
  int32_t first_page;      /**< First page id the shard hands out (1 for shard 0: page 0 is the null page). */
  int32_t end_page;        /**< One past its last page id: (shard + 1) · num_pages / num_shards. */
  int64_t total_pages;     /**< Usable pages: end_page − first_page. */
  int64_t free_pages;      /**< Pages on the shard's free list. */
  int64_t evictable_pages; /**< Cached pages of the shard with no holder. */
  int64_t used_pages;      /**< Pages with at least one holder. free + evictable + used = total. */
  int64_t num_sequences;   /**< Live sequences placed in the shard. */
} kvp_pool_shard_stats;

/** Initialiser of an output struct: `struct_size` set, the rest zero (filled by the call). @since 1.4 */
#define KVP_POOL_SHARD_STATS_INIT KVP__OUTPUT_INIT(kvp_pool_shard_stats)

/**
 * @brief Reports the counters of one data-parallel shard of a pool (the pool as a whole:
 *        kvp_pool_get_stats()). A pool without shards has one shard, 0, of all its pages.
 * @param[in] pool Pool handle.
 * @param[in] shard Shard index, below `data_parallel_size`.
 * @param[in,out] out Stats with `struct_size` set, not NULL; the first `struct_size` bytes are
 *                filled; unchanged on failure.
 * @retval KVP_OK Filled.
 * @retval KVP_ERR_INVALID_HANDLE Bad pool handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `out` is NULL, or `shard` is out of range (the message gives
 *         the number of shards).
 * @retval KVP_ERR_VERSION_MISMATCH `struct_size` smaller than version 1 of the struct.
 * @threadsafety May run concurrently with other const calls.
 * @since 1.4
 */
KVP_API kvp_status KVP_CALL kvp_pool_get_shard_stats(const kvp_pool *pool, uint32_t shard,
                                                     kvp_pool_shard_stats *out);

/** Storage tiers a pool may have at most (kvp_pool_add_store()). @since 1.4 */
#define KVP_POOL_MAX_TIERS 4

/**
 * @brief Adds a block store as the pool's next storage tier (see the file overview).
 *
 * Every tier receives the pages the pool evicts (write-through; since 1.5, before: tier 0 only).
 * What is synchronous: before a cached page is reused, inside the call that evicts
 * (kvp_pool_add_sequence(), kvp_pool_append()), its token ids, keys and bytes in every layer are
 * copied into a host block (CUDA: device to host on the stream of the evicting call,
 * synchronously) — one page copy per layer, once, however many tiers receive it. The blocks of
 * all the pages a call evicts are made before the first is reused; on a CPU cache several at
 * once (up to 8, one per thread of the library's pool: copied and checksummed in one pass each).
 * Then:
 * - a memory store (kvp_store_create_memory()) gets the block at once, in that call (its put is
 *   a memory copy);
 * - any other store (directory, plug-in; since 1.5) gets it asynchronously: the block is a
 *   staging block of the pool's write queue (kvp_pool_options::write_queue_bytes), queued once
 *   for all such tiers, and the pool's writer threads (started by the first such tier: for a
 *   directory store one per thread of the library's pool, at most 8, or 8 when it fsyncs (each
 *   put then waits for the disk), never more than the staging blocks; else one) put it into
 *   each of them in tier order, so the evicting call never waits
 *   on a file or a network round trip.
 *   While every such tier is a directory store, several blocks are put at once, one per writer
 *   thread; once one is not (Redis, a plug-in), one block at a time, in queue order. When every
 *   staging block is still queued, the evicted page is not
 *   written to those tiers (kvp_pool_tier_stats::dropped) rather than waited for. A plug-in's
 *   put callback is then called on a writer thread (still one callback at a time per store).
 *   kvp_pool_flush_tiers() waits for the queue; kvp_pool_destroy() drains it (waits for every
 *   queued write) and joins the threads.
 *
 * Each page knows which tiers hold its block from this pool: a page restored from tier t is held
 * by tier t only; a page written or queued since its content last changed is held by the tiers it
 * went to. An eviction writes only the tiers that do not hold the page — also when a tier has
 * dropped the block since (a bounded store, a block removed behind the pool's back): the pool
 * does not ask. A failed write is counted on its tier (kvp_pool_tier_stats::errors), never
 * reported by the evicting call. Every tier is read by kvp_pool_add_sequence().
 *
 * The first tier added allocates two block buffers (the pages' bytes in every layer, plus a
 * header), the prompt's keys and, with the first asynchronous tier, the write queue from the pool's
 * allocator; evictions into a memory store on a CPU cache use up to one block buffer per thread
 * of the library's pool (allocated when first needed, then recycled with the store's memory), and
 * so do restores from a directory store on a CPU cache (read a group of blocks at once on those
 * threads; allocated when first needed, kept by the pool).
 *
 * @param[in] pool Pool handle.
 * @param[in] store Store handle; borrowed: it must outlive the pool (a pool whose store was
 *            destroyed counts its accesses as errors). Several pools may share a store.
 * @retval KVP_OK Added.
 * @retval KVP_ERR_INVALID_HANDLE Bad pool or store handle, or the pool's cache was destroyed.
 * @retval KVP_ERR_INVALID_ARGUMENT The pool already has ::KVP_POOL_MAX_TIERS tiers, or already
 *         has this store.
 * @retval KVP_ERR_UNSUPPORTED The pool was created with ::KVP_POOL_FLAG_NO_PREFIX_CACHE (it keeps
 *         no prefix pages to offload).
 * @retval KVP_ERR_OUT_OF_MEMORY No memory for the buffers (or the writer threads could not be
 *         started); nothing changed.
 * @threadsafety Must not race with other calls on the same pool.
 * @since 1.4
 */
KVP_API kvp_status KVP_CALL kvp_pool_add_store(kvp_pool *pool, kvp_store *store);

/** @brief Counters of one storage tier of a pool (kvp_pool_get_tier_stats()). @since 1.4 */
typedef struct kvp_pool_tier_stats {
  uint32_t struct_size;    /**< Set by the caller: sizeof(kvp_pool_tier_stats). */
  uint32_t num_tiers;      /**< Tiers of the pool. */
  int64_t lookups;         /**< Pages asked of the tier by kvp_pool_add_sequence(). */
  int64_t hits;            /**< Of those, pages restored from it. */
  int64_t misses;          /**< Of those, pages not restored from it: lookups − hits. */
  int64_t rejected;        /**< Blocks read that failed a check (damaged, another config, other token ids). */
  int64_t errors;          /**< Store calls that failed (exists, get, put), and writes of a destroyed store. */
  int64_t restored_tokens; /**< Prompt tokens restored from the tier: hits × page_size. Tokens from
                                memory (the prefix index) are kvp_pool_stats::reused_tokens minus
                                every tier's restored_tokens. */
  int64_t bytes_read;      /**< Block bytes read from the tier. */
  int64_t blocks_written;  /**< Evicted pages written to the tier (to every tier since 1.5; tier 0 only before). */
  int64_t bytes_written;   /**< Their block bytes. Asynchronous writes count when their put is done. */
  int64_t dropped;         /**< Since 1.5: evicted pages not written to the tier because the pool's
                                write queue was full (tiers with asynchronous writes only). */
} kvp_pool_tier_stats;

/** Initialiser of an output struct: `struct_size` set, the rest zero (filled by the call). @since 1.4 */
#define KVP_POOL_TIER_STATS_INIT KVP__OUTPUT_INIT(kvp_pool_tier_stats)

/**
 * @brief Reports the counters of one storage tier of a pool.
 * @param[in] pool Pool handle.
 * @param[in] tier Tier index, below the number of stores added.
 * @param[in,out] out Stats with `struct_size` set, not NULL; the first `struct_size` bytes are
 *                filled; unchanged on failure.
 * @retval KVP_OK Filled.
 * @retval KVP_ERR_INVALID_HANDLE Bad pool handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `out` is NULL, or `tier` is out of range (the message gives
 *         the number of tiers).
 * @retval KVP_ERR_VERSION_MISMATCH `struct_size` smaller than version 1 of the struct.
 * @threadsafety May run concurrently with other const calls.
 * @since 1.4
 */
KVP_API kvp_status KVP_CALL kvp_pool_get_tier_stats(const kvp_pool *pool, uint32_t tier, kvp_pool_tier_stats *out);

/** Flag of kvp_pool_flush_tiers(): first write every cached prefix page to every tier. @since 1.5 */
#define KVP_POOL_FLUSH_CACHED (1u << 0)

/**
 * @brief Waits until every write to the tiers queued so far has reached its store (or failed,
 *        counted in kvp_pool_tier_stats::errors).
 *
 * With ::KVP_POOL_FLUSH_CACHED it first writes every cached prefix page (indexed, so computed,
 * in use or evictable) to every tier that does not already hold its block (as an eviction does,
 * kvp_pool_add_store()), waiting for room in the write queue rather than dropping — so that a
 * process can persist its prefix cache (at exit, say) and a later pool over the same store
 * restores every cached prefix. Whether a tier holds a block is known from this pool's own
 * writes and restores and asked of the tier (one batched exists per tier for up to 256 pages), so
 * blocks another pool, server or earlier process wrote are not written again. The pages stay
 * cached. Without tiers, or with memory stores only and no flag, there is nothing to wait for.
 *
 * @param[in] pool Pool handle.
 * @param[in] flags 0 or ::KVP_POOL_FLUSH_CACHED.
 * @retval KVP_OK Every write queued (and, with the flag, every cached page) has been put or has
 *         failed (counted).
 * @retval KVP_ERR_INVALID_HANDLE Bad pool handle, or (with ::KVP_POOL_FLUSH_CACHED) the pool's
 *         cache was destroyed.
 * @retval KVP_ERR_INVALID_ARGUMENT Unknown flags; nothing was written or waited for.
 * @retval KVP_ERR_DEVICE_LOST (With ::KVP_POOL_FLUSH_CACHED) the cache has a pending
 *         asynchronous error; nothing was written or waited for.
 * @threadsafety Must not race with other calls on the same pool.
 * @stream With ::KVP_POOL_FLUSH_CACHED, a CUDA cache's pages are copied to host on the legacy
 *         default stream, synchronously.
 * @since 1.5
 */
KVP_API kvp_status KVP_CALL kvp_pool_flush_tiers(kvp_pool *pool, uint32_t flags);

/** Flag of kvp_pool_save_sequence_to_file(): skip the two `fsync`s (see there). @since 1.5 */
#define KVP_POOL_SAVE_FLAG_NO_SYNC (1u << 0)

/**
 * @brief Saves one sequence, its token ids and its pages' bytes in every layer, to a blob that
 *        kvp_pool_restore_sequence() turns into a new sequence of any pool of a compatible cache.
 *
 * Size-then-fill: `*size_out` receives the blob's size, `64 + cdiv(length, page_size)` × the
 * block size of one page (docs/store-format.md, "The blob of a sequence"); the blob is written
 * when `capacity` is at least that. The blob is a checksummed header (config fingerprint, salt,
 * token count, geometry) followed by the store block (kvpages/store.h) of each page in order;
 * the last block of a sequence whose length is not a multiple of `page_size` holds the valid
 * token ids followed by zeros, and the page's bytes as the cache holds them (rows past the end
 * included). Every token must be computed (kvp_pool_set_computed()): the blob holds KV the
 * restoring pool will reuse as computed.
 *
 * @param[in] pool Pool handle.
 * @param[in] seq Sequence id.
 * @param[out] dst Destination of `capacity` bytes; may be NULL when `capacity` is 0.
 * @param[in] capacity Bytes available at `dst`.
 * @param[out] size_out Receives the blob's size, not NULL (also on ::KVP_ERR_BUFFER_TOO_SMALL).
 * @retval KVP_OK Written.
 * @retval KVP_ERR_INVALID_HANDLE Bad pool handle, or the pool's cache was destroyed.
 * @retval KVP_ERR_INVALID_ARGUMENT `size_out` is NULL, `dst` is NULL with `capacity` > 0, or not
 *         every token of the sequence is computed (the message gives both counts).
 * @retval KVP_ERR_NOT_FOUND `seq` is unknown or stale.
 * @retval KVP_ERR_BUFFER_TOO_SMALL `capacity` is below the blob's size; nothing written to `dst`.
 * @retval KVP_ERR_OUT_OF_MEMORY No memory for the pages' token ids and keys.
 * @retval KVP_ERR_DEVICE_LOST The cache has a pending asynchronous error.
 * @retval KVP_ERR_DEVICE A device copy failed.
 * @ownership Borrows `dst` for the call.
 * @threadsafety Must not race with other calls on the same pool or that write the sequence's pages.
 * @stream CUDA caches: each page is copied to the host on the legacy default stream, synchronously.
 *         CPU caches: the blocks are filled on the library's threads.
 * @since 1.5
 */
KVP_API kvp_status KVP_CALL kvp_pool_save_sequence(kvp_pool *pool, kvp_seq_id seq, void *dst, size_t capacity,
                                                   size_t *size_out);

/**
 * @brief Saves one sequence (as kvp_pool_save_sequence()) to a file, replacing it atomically.
 *
 * Writes a new file in the target's directory, `fsync`s it, renames it over the target and
 * `fsync`s the directory (::KVP_POOL_SAVE_FLAG_NO_SYNC skips both `fsync`s), exactly as
 * kvp_serialize_to_file(): on any failure a file that existed under the target name is left as
 * it was; the new file keeps the mode bits of the file it replaces; a symbolic link at `path`
 * is followed and stays.
 *
 * @param[in] pool Pool handle.
 * @param[in] seq Sequence id.
 * @param[in] path Destination path, NUL-terminated, not NULL or empty.
 * @param[in] flags 0 or ::KVP_POOL_SAVE_FLAG_NO_SYNC.
 * @retval KVP_OK Written and renamed into place.
 * @retval KVP_ERR_INVALID_HANDLE Bad pool handle, or the pool's cache was destroyed.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL or empty `path`, unknown flags, or not every token of the
 *         sequence is computed.
 * @retval KVP_ERR_NOT_FOUND `seq` is unknown or stale.
 * @retval KVP_ERR_IO Creating, writing, syncing or renaming failed (the message has the OS error).
 * @retval KVP_ERR_OUT_OF_MEMORY No memory for one page's block.
 * @retval KVP_ERR_DEVICE_LOST The cache has a pending asynchronous error.
 * @retval KVP_ERR_DEVICE A device copy failed.
 * @threadsafety Must not race with other calls on the same pool or that write the sequence's pages.
 * @stream CUDA caches: each page is copied to the host on the legacy default stream, synchronously.
 * @since 1.5
 */
KVP_API kvp_status KVP_CALL kvp_pool_save_sequence_to_file(kvp_pool *pool, kvp_seq_id seq, const char *path,
                                                           uint32_t flags);

/**
 * @brief Restores a sequence saved by kvp_pool_save_sequence() as a new sequence of this pool.
 *
 * The pool's cache must have the saved cache's config fingerprint (model shape, dtype, layout,
 * page size, tensor-parallel slice; the number of pages and data-parallel shards may differ).
 * The whole blob is checked before the pool changes: header checksum, fingerprint and geometry,
 * size, and every block (its checksum, its chained key and parent key recomputed from its token
 * ids and the salt, the zeros after the last valid token). Then the sequence is placed as
 * kvp_pool_add_sequence() places a prompt (KVP_POOL_ADD_IN_SHARD() forces a data-parallel
 * shard); its full pages that the shard's prefix index holds (same token ids, same salt, same
 * prefix) are shared by reference count, every other page is written into a fresh page (evicting
 * cached pages only when no free page is left). The new sequence has the saved salt, length and
 * token ids, and every token counts as computed: its full pages enter the prefix index, so a
 * later prompt with that prefix reuses them. kvp_pool_stats::prompt_tokens and `reused_tokens`
 * are not changed.
 *
 * @param[in] pool Pool handle.
 * @param[in] src The blob, `size` bytes; may be NULL only when `size` is 0.
 * @param[in] size Its size in bytes: exactly one blob.
 * @param[in] flags 0 or KVP_POOL_ADD_IN_SHARD().
 * @param[out] seq_out Receives the new sequence id, not NULL; unchanged on failure.
 * @retval KVP_OK Restored.
 * @retval KVP_ERR_INVALID_HANDLE Bad pool handle, or the pool's cache was destroyed.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL `seq_out`, NULL `src` with `size` > 0, unknown flags, a
 *         forced shard not below `data_parallel_size`, or a saved length above this pool's
 *         `max_model_length`.
 * @retval KVP_ERR_FORMAT_TRUNCATED The blob ends before its header or its last block.
 * @retval KVP_ERR_FORMAT_MAGIC Not a sequence blob, or a block without the block magic.
 * @retval KVP_ERR_FORMAT_VERSION A version this library does not read.
 * @retval KVP_ERR_FORMAT_CHECKSUM The header or a block fails its checksum.
 * @retval KVP_ERR_FORMAT_MISMATCH Saved from a cache of another config (the message gives both).
 * @retval KVP_ERR_FORMAT_CORRUPT Inconsistent header, bytes after the last block, or a block whose
 *         keys, salt, geometry or padding do not match (the message names the block).
 * @retval KVP_ERR_OUT_OF_PAGES Fewer free plus evictable pages in the shard than the pages not
 *         shared, or every sequence slot is in use.
 * @retval KVP_ERR_OUT_OF_MEMORY No memory for the token ids and keys.
 * @retval KVP_ERR_DEVICE_LOST The cache has a pending asynchronous error.
 * @retval KVP_ERR_DEVICE A device copy failed: the pages taken are returned, but cached pages
 *         evicted for them have left the prefix index (as a failed copy-on-write). Every
 *         other failure leaves the pool unchanged.
 * @ownership Borrows `src` for the call.
 * @threadsafety Must not race with other calls on the same pool or that use its cache's pages.
 * @stream CUDA caches: each page is copied to the device on the legacy default stream, synchronously.
 *         CPU caches: the blocks are checked and copied on the library's threads.
 * @since 1.5
 */
KVP_API kvp_status KVP_CALL kvp_pool_restore_sequence(kvp_pool *pool, const void *src, size_t size, uint32_t flags,
                                                      kvp_seq_id *seq_out);

/**
 * @brief Restores a sequence (as kvp_pool_restore_sequence()) from a file written by
 *        kvp_pool_save_sequence_to_file().
 *
 * The header is read and checked first; then the whole file is read into host memory (one
 * buffer of its size) and restored. The file must hold exactly one blob.
 *
 * @param[in] pool Pool handle.
 * @param[in] path File path, NUL-terminated, not NULL or empty.
 * @param[in] flags 0 or KVP_POOL_ADD_IN_SHARD().
 * @param[out] seq_out Receives the new sequence id, not NULL; unchanged on failure.
 * @retval KVP_OK Restored.
 * @retval KVP_ERR_IO The file cannot be opened or read, or is not a regular file.
 * @retval KVP_ERR_OUT_OF_MEMORY No memory for the file's bytes.
 * @retval others As kvp_pool_restore_sequence(), with `path` for `src`.
 * @threadsafety Must not race with other calls on the same pool or that use its cache's pages.
 * @since 1.5
 */
KVP_API kvp_status KVP_CALL kvp_pool_restore_sequence_from_file(kvp_pool *pool, const char *path, uint32_t flags,
                                                                kvp_seq_id *seq_out);

/**
 * @brief Checks every invariant of the pool's bookkeeping (O(pages + sequence pages)).
 *
 * Free + evictable + used = total usable pages; each page is in exactly one state and on at most
 * one list; lists are acyclic and consistent with the counters; every reference count equals
 * the number of page-table entries holding the page; no sequence holds the null page or a page
 * twice; every indexed page is found by its key and the index holds nothing else; lengths and
 * watermarks are in range; every shard's lists hold only its own pages, and every sequence's
 * pages are in its shard.
 *
 * @param[in] pool Pool handle.
 * @retval KVP_OK All invariants hold.
 * @retval KVP_ERR_INVALID_HANDLE Bad pool handle.
 * @retval KVP_ERR_INTERNAL An invariant is violated; the message says which, with the page or
 *         sequence involved.
 * @retval KVP_ERR_OUT_OF_MEMORY No memory for the check's scratch counts.
 * @threadsafety May run concurrently with other const calls.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_pool_check_invariants(const kvp_pool *pool);

/**
 * @brief Empties the prefix index: evictable pages become free, pages in use stay with their
 *        holders but will not be reused by hash (use after the model or its weights change).
 * @param[in] pool Pool handle.
 * @retval KVP_OK Cleared.
 * @retval KVP_ERR_INVALID_HANDLE Bad pool handle.
 * @threadsafety Must not race with other calls on the same pool.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_pool_clear_prefix_cache(kvp_pool *pool);

/**
 * @brief Copies whole pages within a cache, in every layer: page `dst_pages[i]` receives the
 *        contents of page `src_pages[i]`.
 *
 * Used for copy-on-write; runs of consecutive ids are copied as one block.
 *
 * @param[in] cache Cache handle.
 * @param[in] src_pages Source page ids, `count` entries in `[0, num_pages)`; may be NULL only
 *            when `count` is 0.
 * @param[in] dst_pages Destination page ids, `count` distinct entries in `[0, num_pages)`, none
 *            of them also a source; may be NULL only when `count` is 0.
 * @param[in] count Number of pages (0 is a no-op).
 * @param[in] stream CUDA stream for a CUDA cache (NULL = the legacy default stream of the
 *            cache's device); ignored for a CPU cache.
 * @retval KVP_OK Copied (for a CUDA cache: enqueued).
 * @retval KVP_ERR_INVALID_HANDLE Bad cache handle.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL arrays with `count` > 0, a page id out of range, a
 *         repeated destination, or a destination that is also a source (the message names the
 *         entry). The cache is unchanged.
 * @retval KVP_ERR_OUT_OF_MEMORY No memory for the validation scratch; the cache is unchanged.
 * @retval KVP_ERR_DEVICE_LOST The cache has a pending asynchronous error.
 * @retval KVP_ERR_DEVICE A CUDA copy could not be enqueued.
 * @ownership Borrows the arrays for the call.
 * @threadsafety Must not run concurrently with other calls that modify the same cache.
 * @stream Stream-ordered on `stream` for CUDA caches; never synchronises the host.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_cache_copy_pages(kvp_cache *cache, const int32_t *src_pages,
                                                 const int32_t *dst_pages, size_t count,
                                                 kvp_stream stream);

KVP_END_DECLS

/** @} */
#endif /* KVPAGES_POOL_H */
