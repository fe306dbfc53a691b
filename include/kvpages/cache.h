/**
 * @file kvpages/cache.h
 * @brief The cache: one zero-filled page buffer per layer, and views of it.
 *
 * A ::kvp_cache owns `num_hidden_layers` buffers of identical shape (kvp_config_get_layout()),
 * byte-exact to the reference layouts v2 and v3 (with its head_dim-64 case), on the CPU or a
 * CUDA device. Page id `p` means the same token slots in every layer. Views describe the pages
 * as strided tensors without copying.
 *
 * Thread safety of caches: a cache is not internally synchronised. Calls that modify the same
 * cache must not run concurrently; calls taking a `const kvp_cache *` may run concurrently with
 * each other; different caches may be used from different threads at once; a handle may be
 * moved between threads.
 *
 * @defgroup kvp_cache Cache objects
 * @ingroup kvpages
 * @{
 */
#ifndef KVPAGES_CACHE_H
#define KVPAGES_CACHE_H

#include "kvpages/common.h"
#include "kvpages/config.h"
#include "kvpages/status.h"
#include "kvpages/types.h"

KVP_BEGIN_DECLS

/** Opaque handle to a cache. Create with kvp_cache_create(), release with kvp_cache_destroy(). */
typedef struct kvp_cache kvp_cache;

/**
 * @brief A host allocator: given to a cache (kvp_cache_options::allocator) or a pool
 *        (kvp_pool_options::allocator) for their memory, or installed as the process default with
 *        kvp_set_host_allocator().
 *
 * @warning Callbacks must not unwind (no C++ exception, Rust panic or longjmp through them).
 */
typedef struct kvp_host_allocator {
  /** Returns `size` bytes aligned to `align` (a power of two), or NULL on failure. */
  void *(KVP_CALL *alloc)(void *user_data, size_t size, size_t align);
  /** Releases a block returned by `alloc`; `ptr` is never NULL. */
  void(KVP_CALL *free)(void *user_data, void *ptr);
  /** Passed to both callbacks. */
  void *user_data;
} kvp_host_allocator;

/**
 * @brief Installs the process-wide default host allocator: the one the library uses for every
 *        allocation it makes on a caller's behalf that no object-specific allocator covers.
 *
 * Every host allocation the library makes for a caller goes through an allocator: a cache's
 * (kvp_cache_options::allocator: its page buffers, its bookkeeping and the scratch of every call
 * on it), a pool's (kvp_pool_options::allocator: all its memory, allocated at creation), and else
 * this default: metadata handles and their arrays, the batch builder, the JSON readers and
 * writers, and objects created without an allocator of their own (caches created then use it for
 * their pages too). The built-in default is the C library's
 * `aligned_alloc` / `free` (and anonymous mappings for large page buffers).
 *
 * Not routed through any allocator: process-wide infrastructure (the table of handles,
 * the CPU worker threads), the text of error messages, the CUDA runtime's own allocations, the JSON tokenizer's scratch (the current token and the nesting
 * stack), and the DLPack descriptors of kvp_cache_export_dlpack() (see there).
 *
 * Each object and each container keeps the allocator it was created with and frees through it,
 * so replacing the default affects only what is allocated afterwards. Install it before other
 * kvpages calls, or while no other thread is in a kvpages call.
 *
 * @param[in] allocator The new default (copied; its user_data is borrowed and must stay valid
 *            until every block it allocated is freed, i.e. every object created while it was
 *            installed is destroyed), or NULL for the built-in one.
 * @retval KVP_OK Installed.
 * @retval KVP_ERR_INVALID_ARGUMENT `alloc` or `free` is NULL in a non-NULL `allocator`; the
 *         default is unchanged.
 * @threadsafety Not synchronised with allocations in flight on other threads (see above).
 * @since 1.1
 */
KVP_API kvp_status KVP_CALL kvp_set_host_allocator(const kvp_host_allocator *allocator);

/**
 * Current value of kvp_cache_options::abi_version. Version 2 (since 1.2) appends `flags` and
 * `_reserved`; a caller compiled against version 1 (`struct_size` = 24 on LP64, no `flags`)
 * is still accepted and gets the defaults of the new fields.
 */
#define KVP_CACHE_OPTIONS_VERSION 2u

/**
 * Flag of kvp_cache_options::flags (since 1.2): no transparent huge pages for the page buffers.
 *
 * By default a CPU cache of 2 MiB or more with the built-in allocator maps its layer buffers as
 * one mapping aligned to 2 MiB and advises the kernel to back it with huge pages
 * (`madvise(MADV_HUGEPAGE)`), so filling it takes one page fault per 2 MiB instead of one per
 * 4 KiB, however small its layers (a load of a cache is several times faster where the kernel's
 * THP mode is `madvise`). With this flag the
 * buffers are mapped as plain 4 KiB pages and advised `MADV_NOHUGEPAGE`, so they get no huge
 * pages even where the THP mode is `always`: for processes that must not fragment memory or
 * that count resident memory in 4 KiB steps. No effect with a custom allocator (its memory is
 * the allocator's) or on a CUDA cache (its pages are device memory).
 */
#define KVP_CACHE_FLAG_NO_HUGE_PAGES (1u << 0)

/**
 * Flag of kvp_cache_options::flags (since 1.2): touch every page of the new page buffers at
 * creation, in parallel on the library's CPU threads, so the page faults are taken there (on
 * every core) rather than by the first writes (on one). The cache holds its whole size in
 * physical memory from then on; contents stay zero. Useful before a large load or prefill whose
 * writer runs on fewer threads than the machine has. No effect on a CUDA cache; with a custom
 * allocator the buffers are already touched by their zero fill.
 */
#define KVP_CACHE_FLAG_PREFAULT (1u << 1)

/**
 * @brief Options of kvp_cache_create() (and, through kvp_deserialize_options::cache_options, of
 * the kvp_deserialize_new() family). Zero means default for every field.
 */
typedef struct kvp_cache_options {
  uint32_t struct_size;                 /**< sizeof(kvp_cache_options). */
  uint32_t abi_version;                 /**< ::KVP_CACHE_OPTIONS_VERSION. */
  kvp_device_type device_type;          /**< ::KVP_DEVICE_CPU (0 = CPU) or ::KVP_DEVICE_CUDA. */
  int32_t device_id;                    /**< CUDA ordinal; must be 0 for the CPU. */
  const kvp_host_allocator *allocator;  /**< Host allocator (borrowed, must outlive the cache); NULL = built-in. */
  uint32_t flags;                       /**< Since 1.2 (abi_version 2): `KVP_CACHE_FLAG_*` bits; 0 = huge pages, no prefault. Unknown bits: ::KVP_ERR_UNSUPPORTED. */
  uint32_t _reserved;                   /**< Since 1.2: must be 0. */
} kvp_cache_options;

#define KVP_CACHE_OPTIONS_INIT KVP__OPTIONS_INIT(kvp_cache_options, KVP_CACHE_OPTIONS_VERSION)
/**
 * @def KVP_CACHE_OPTIONS_INIT
 * @brief Static initialiser: a CPU cache with the built-in allocator.
 */

/**
 * @brief Fills cache options with defaults.
 * @param[out] opts Options, not NULL.
 * @param[in] struct_size sizeof(kvp_cache_options) as the caller sees it.
 * @retval KVP_OK Filled.
 * @retval KVP_ERR_INVALID_ARGUMENT `opts` is NULL.
 * @retval KVP_ERR_VERSION_MISMATCH `struct_size` smaller than version 1 of the struct.
 * @threadsafety Thread-safe.
 * @since 1.0 (fills at most `struct_size` bytes: a version 1 struct gets no `flags`)
 */
KVP_API kvp_status KVP_CALL kvp_cache_options_init(kvp_cache_options *opts, uint32_t struct_size);

/**
 * @brief Allocates a cache for a config: one zero-filled buffer per layer.
 *
 * On the CPU, the buffers of a cache of 2 MiB or more are one anonymous mapping (each layer
 * starting on 64 bytes, on 2 MiB where it has 2 MiB or more) that comes from the operating system
 * already zeroed, so memory is not touched twice (a smaller cache: calloc per layer); with a custom
 * allocator the library zero-fills what it gets, one block per layer.
 * The mapping is 2 MiB-aligned and advised for transparent huge pages unless
 * ::KVP_CACHE_FLAG_NO_HUGE_PAGES is set (the advice is best effort: a kernel without THP, or
 * with THP `never`, maps 4 KiB pages and the call still succeeds); ::KVP_CACHE_FLAG_PREFAULT
 * touches every page before the call returns. See "Host memory" in the main page.
 * The config is copied.
 *
 * @param[in] cfg Config with `num_pages` computed, not NULL; validated first.
 * @param[in] opts Options, or NULL for defaults (CPU).
 * @param[out] out Receives the new handle, not NULL; set to NULL on failure.
 * @retval KVP_OK Created.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL `cfg`/`out`, invalid config, `num_pages` < 1, bad device fields.
 * @retval KVP_ERR_NOT_FOUND Unknown layout version or dtype in `cfg`.
 * @retval KVP_ERR_UNSUPPORTED Name-only dtype, unknown bits in `flags`, a non-zero `_reserved`, or
 *         a non-zero tail in a larger options struct; nothing is created.
 * @retval KVP_ERR_VERSION_MISMATCH Unknown options size or version.
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted; nothing leaked.
 * @retval KVP_ERR_NO_DEVICE CUDA requested but unavailable in this build or machine.
 * @retval KVP_ERR_DEVICE_OUT_OF_MEMORY Device memory exhausted; nothing leaked.
 * @ownership Caller-owned result: release with kvp_cache_destroy().
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_cache_create(const kvp_config *cfg, const kvp_cache_options *opts,
                                             kvp_cache **out);

/**
 * @brief Releases a cache and its buffers. NULL is a no-op.
 *
 * The handle is poisoned before it is released, so a later call with it returns
 * ::KVP_ERR_INVALID_HANDLE: even a double destroy is detected. Handles live in a table of the
 * library's own that is never handed to anything else, so the check never reads memory that was
 * freed; with API armor (the default) a pointer outside that table is refused without being read.
 * A destroyed handle's address goes to another handle (of any kind) only after about a million
 * (2^20, less the handles live meanwhile) other handles were created; until then every call with
 * the destroyed handle, a double destroy included, is refused and changes nothing. (After that
 * many, the old pointer names the new handle.)
 *
 * On the CPU, the one mapping of a cache of 2 to 32 MiB (built-in allocator) is not unmapped at
 * once: it is kept, advised `MADV_FREE` (the kernel takes its pages back under memory pressure),
 * for the next kvp_deserialize_new() of the same size whose blob holds every page, and unmapped
 * when another cache's mapping is kept instead or the library is unloaded. See "Host memory" in
 * the main page.
 *
 * @param[in] cache Handle or NULL.
 * @retval KVP_OK Released (or NULL).
 * @retval KVP_ERR_INVALID_HANDLE Not a live cache handle.
 * @ownership Takes ownership of `cache`.
 * @threadsafety Must not race with other calls on the same cache.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_cache_destroy(kvp_cache *cache);

/**
 * @brief Copies the config a cache was created with.
 * @param[in] cache Cache handle.
 * @param[out] out Config, not NULL; set struct_size and abi_version first — ::KVP_CONFIG_INIT or
 *        kvp_config_init() do — to receive the version-2 fields (since 1.3); otherwise the
 *        version-1 record is written.
 * @retval KVP_OK Copied.
 * @retval KVP_ERR_INVALID_HANDLE Bad handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `out` is NULL.
 * @threadsafety May run concurrently with other const calls.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_cache_get_config(const kvp_cache *cache, kvp_config *out);

/**
 * @brief Returns the geometry of a cache's layer buffers (see kvp_config_get_layout()).
 * @param[in] cache Cache handle.
 * @param[out] out Info, not NULL, with `struct_size` set.
 * @retval KVP_OK Filled.
 * @retval KVP_ERR_INVALID_HANDLE Bad handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `out` is NULL.
 * @retval KVP_ERR_VERSION_MISMATCH Unknown `struct_size`.
 * @threadsafety May run concurrently with other const calls.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_cache_get_layout(const kvp_cache *cache, kvp_layout_info *out);

/**
 * @brief Reports where a cache lives.
 * @param[in] cache Cache handle.
 * @param[out] device_type_out ::KVP_DEVICE_CPU or ::KVP_DEVICE_CUDA; may be NULL.
 * @param[out] device_id_out CUDA ordinal (0 on the CPU); may be NULL.
 * @retval KVP_OK Reported.
 * @retval KVP_ERR_INVALID_HANDLE Bad handle.
 * @threadsafety May run concurrently with other const calls.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_cache_get_device(const kvp_cache *cache,
                                                 kvp_device_type *device_type_out,
                                                 int32_t *device_id_out);

/** Which view of a layer kvp_cache_get_view() describes. */
typedef uint32_t kvp_view_kind;
/** The layer's pages in the reference shape: v3 `[P,S,G,pack,Dst]`, v2 `[P,S,2H,D]`. */
#define KVP_VIEW_PAGES 0u
/** The reference's `flattened_kv_pages()`: v3 `[P,S,G*pack,Dst]`, v2 `[P,S,2H,D]`. */
#define KVP_VIEW_FLAT 1u
/** The keys, correctly: `[P,S,H,D]` (padding lanes and padding heads excluded; h64 lanes 0..63). */
#define KVP_VIEW_KEYS 2u
/** The values, correctly: `[P,S,H,D]` (h64: lanes 64..127). */
#define KVP_VIEW_VALUES 3u
/** The reference's literal `key_pages`: flattened `[:, :, 0::2, :]` (wrong for head_dim 64; see docs). */
#define KVP_VIEW_REFERENCE_KEYS 4u
/** The reference's literal `value_pages`: flattened `[:, :, 1::2, :]`. */
#define KVP_VIEW_REFERENCE_VALUES 5u

/**
 * @brief Describes a view of one layer's pages as a strided tensor (no copy).
 *
 * The data pointer stays valid until the cache is destroyed; it is a device pointer for a CUDA
 * cache. Writing through it is allowed (the cache does not cache anything about the contents).
 *
 * @param[in] cache Cache handle.
 * @param[in] layer Layer index, < num_hidden_layers.
 * @param[in] kind One of the `KVP_VIEW_*` values.
 * @param[out] out Tensor descriptor, not NULL; unchanged on failure.
 * @retval KVP_OK Described.
 * @retval KVP_ERR_INVALID_HANDLE Bad handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `out` is NULL, `layer` out of range, or unknown `kind`.
 * @ownership The tensor borrows the cache's memory.
 * @threadsafety May run concurrently with other const calls.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_cache_get_view(const kvp_cache *cache, uint32_t layer,
                                               kvp_view_kind kind, kvp_tensor *out);

/**
 * @brief Reports (without clearing) the sticky asynchronous error of a cache.
 *
 * CPU caches never have one. A CUDA cache records here device faults and device-side validation
 * failures of earlier calls; while one is set every other call except kvp_cache_destroy(),
 * this function and kvp_cache_clear_async_error() returns ::KVP_ERR_DEVICE_LOST. For a CUDA cache
 * this call also asks the runtime (one query of the cache's idle internal stream, in relaxed
 * capture mode, so a graph capture in progress stays valid) whether the device has a sticky fault
 * (an illegal address and the like, left by any kernel on that device); such a fault is recorded
 * as a sticky ::KVP_ERR_DEVICE that names the CUDA error and cannot be cleared.
 *
 * @param[in] cache Cache handle.
 * @param[out] out ::KVP_OK or the recorded error code, not NULL.
 * @retval KVP_OK Reported (the recorded error is in `*out`; its message becomes this thread's last message).
 * @retval KVP_ERR_INVALID_HANDLE Bad handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `out` is NULL.
 * @threadsafety May run concurrently with other const calls.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_cache_get_async_error(const kvp_cache *cache, kvp_status *out);

/**
 * @brief Clears a recorded recoverable asynchronous error (a device-side validation failure),
 *        so the cache accepts work again. A sticky CUDA fault cannot be cleared.
 * @param[in] cache Cache handle.
 * @retval KVP_OK Cleared (or nothing was recorded).
 * @retval KVP_ERR_INVALID_HANDLE Bad handle.
 * @retval KVP_ERR_DEVICE_LOST The error is a sticky device fault; destroy the cache.
 * @threadsafety Must not race with other calls on the same cache.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_cache_clear_async_error(kvp_cache *cache);

/* ------------------------------------------------------------------------------------------- */
/* Shards (since 1.4)                                                                            */

/**
 * @brief Which slice of a sharded config one cache holds (kvp_config_get_shard(),
 *        kvp_cache_get_shard()); SPEC.md §7.3 and docs/sharding.md.
 *
 * A config with `kv_head_shards` = S > 1 splits the combined axis of every row over S tensor
 * ranks (v3: the storage groups, h64: its head slots; v2: the 2H combined heads), and one with
 * `data_parallel_size` = dp > 1 splits the pages over dp data ranks in contiguous blocks. The
 * combined axis counts entries of the whole layout: v2 and v3 entry `2h` holds the keys of KV
 * head h and `2h + 1` its values (v3 pads with zero entries up to a multiple of the packing);
 * head_dim-64 entry `h` holds both. A rank may hold only the keys or only the values of a head
 * at either end of its range (v2, and v3 f32, when S does not divide H).
 */
typedef struct kvp_shard_info {
  uint32_t struct_size;     /**< sizeof(kvp_shard_info); set by the caller. */
  uint32_t _reserved;       /**< 0. */
  int32_t tp_rank;          /**< Tensor (KV-head) rank, 0 … `tp_size` - 1. */
  int32_t tp_size;          /**< KV-head slices the heads are cut into: the config's `kv_head_shards` for a shard, 1 for a whole cache. */
  int32_t dp_rank;          /**< Data (page) rank, 0 … `dp_size` - 1. */
  int32_t dp_size;          /**< Page blocks: the config's `data_parallel_size` for a shard, 1 for a whole cache. */
  int64_t slot_begin;       /**< First combined entry held (of the whole layout's combined axis). */
  int64_t slot_end;         /**< One past the last combined entry held (padding entries included). */
  int64_t head_begin;       /**< First KV head of which keys or values are held: head `head_begin` is row 0 of a local key/value tensor. */
  int64_t head_end;         /**< One past the last such head: a local key/value tensor has `head_end - head_begin` heads. */
  int64_t key_head_begin;   /**< Keys held: of heads [`key_head_begin`, `key_head_end`) (empty when begin = end). */
  int64_t key_head_end;     /**< See `key_head_begin`. */
  int64_t value_head_begin; /**< Values held: of heads [`value_head_begin`, `value_head_end`). */
  int64_t value_head_end;   /**< See `value_head_begin`. */
  int64_t page_begin;       /**< Global id of the first page held (its local page 0). */
  int64_t page_end;         /**< One past the global id of the last page held. */
  int64_t global_pages;     /**< Pages of the whole cache (the config's `num_pages`): the page ids metadata uses. */
} kvp_shard_info;

/** Static initialiser of ::kvp_shard_info: `struct_size` set, the rest zero. */
#define KVP_SHARD_INFO_INIT KVP__OUTPUT_INIT(kvp_shard_info)

/**
 * @brief Describes the slice shard (`tp_rank`, `dp_rank`) of a config holds, without creating it.
 * @param[in] cfg Config with `num_pages` computed, not NULL; validated first.
 * @param[in] tp_rank Tensor rank, 0 … `kv_head_shards` - 1.
 * @param[in] dp_rank Data rank, 0 … `data_parallel_size` - 1.
 * @param[out] out Info, not NULL, with `struct_size` set; unchanged on failure.
 * @retval KVP_OK Described.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL pointer, invalid config, `num_pages` < 1, a rank out of range.
 * @retval KVP_ERR_NOT_FOUND Unknown layout version or dtype in `cfg`.
 * @retval KVP_ERR_UNSUPPORTED Name-only dtype in `cfg`.
 * @retval KVP_ERR_VERSION_MISMATCH Unknown `struct_size`.
 * @threadsafety Thread-safe.
 * @since 1.4
 */
KVP_API kvp_status KVP_CALL kvp_config_get_shard(const kvp_config *cfg, int32_t tp_rank, int32_t dp_rank,
                                                 kvp_shard_info *out);

/**
 * @brief Allocates one shard of a sharded config: the slice of every layer that tensor rank
 *        `tp_rank` and data rank `dp_rank` hold (zero-filled), on the device `opts` names.
 *
 * The shard's buffers are its slice only: kvp_cache_get_layout() gives their local geometry
 * (`num_pages / data_parallel_size` pages, `groups / kv_head_shards` storage groups), and views,
 * kvp_cache_read_layer() / kvp_cache_write_layer() and DLPack export describe the local slice;
 * kvp_cache_get_shard() says which global heads and pages it is, kvp_cache_get_config() returns
 * the whole config.
 *
 * kvp_concatenate() on a shard takes the same metadata as the whole cache (global page ids and
 * v2 slices, built once for every shard) and either the full key/value tensors `[T, H, D]`, of
 * which the shard takes its heads, or local ones `[T, head_end - head_begin, D]` holding only
 * its heads (the shapes decide; when the two counts are equal they are the same heads). Tokens
 * whose pages another data rank holds are skipped; a page id outside the whole cache is an
 * error, as for the whole cache, and the union of all shards' bytes after the same calls equals
 * the whole cache's.
 *
 * A shard lives on the CPU or on any CUDA device, and takes host or device-resident metadata
 * there. Device-resident metadata is checked on the device as for a whole cache, page ids and v2
 * slots against the whole cache (kvp_cache_get_async_error()); the tokens of other data ranks'
 * pages are skipped there too.
 *
 * Serialization writes the shard's slice with its coordinates (format 1.1);
 * kvp_deserialize_shards_into() re-shards sets of blobs.
 *
 * kvp_attention() on a KV-head shard takes the query heads of its own KV heads (`[T, rep ×
 * (head_end - head_begin), D]`) and gives their output, as the whole cache gives for those heads.
 * On a data-parallel shard (v3, host metadata) it attends the rows of its rank's block (rows
 * `[rank·R/dp, (rank+1)·R/dp)`, whose pages must all be the rank's) and writes zeros to every
 * other output row, so the sum of the data ranks' outputs is the whole cache's (SPEC.md §7.3).
 *
 * Not yet on shards (::KVP_ERR_UNSUPPORTED, naming the call): kvp_attention() on a shard holding
 * half a head (v2, v3 f32), on a v2 data-parallel shard or with device-resident metadata on a
 * data-parallel shard, and kvp_pool_create() and kvp_cache_copy_pages() on a data-parallel shard.
 *
 * A config with one KV-head shard and one data shard has a single shard, (0, 0), which is the
 * whole cache.
 *
 * @param[in] cfg Config with `num_pages` computed, not NULL; validated first. Copied.
 * @param[in] tp_rank Tensor rank, 0 … `kv_head_shards` - 1.
 * @param[in] dp_rank Data rank, 0 … `data_parallel_size` - 1.
 * @param[in] opts Options (device, allocator, flags) as for kvp_cache_create(), or NULL for a CPU shard.
 * @param[out] out Receives the new handle, not NULL; set to NULL on failure.
 * @retval KVP_OK Created.
 * @retval KVP_ERR_INVALID_ARGUMENT As kvp_cache_create(), or a rank out of range (the message gives the range).
 * @retval KVP_ERR_NOT_FOUND Unknown layout version or dtype in `cfg`.
 * @retval KVP_ERR_UNSUPPORTED As kvp_cache_create().
 * @retval KVP_ERR_VERSION_MISMATCH Unknown options size or version.
 * @retval KVP_ERR_OUT_OF_MEMORY Host memory exhausted; nothing leaked.
 * @retval KVP_ERR_NO_DEVICE CUDA requested but unavailable in this build or machine.
 * @retval KVP_ERR_DEVICE_OUT_OF_MEMORY Device memory exhausted; nothing leaked.
 * @ownership Caller-owned result: release with kvp_cache_destroy().
 * @threadsafety Thread-safe.
 * @since 1.4
 */
KVP_API kvp_status KVP_CALL kvp_cache_create_shard(const kvp_config *cfg, int32_t tp_rank, int32_t dp_rank,
                                                   const kvp_cache_options *opts, kvp_cache **out);

/**
 * @brief Describes which slice of its config a cache holds: a shard's coordinates and global
 *        ranges, or for a whole cache (kvp_cache_create()) ranks 0 of sizes 1 and every entry and page.
 * @param[in] cache Cache handle.
 * @param[out] out Info, not NULL, with `struct_size` set; unchanged on failure.
 * @retval KVP_OK Described.
 * @retval KVP_ERR_INVALID_HANDLE Bad handle.
 * @retval KVP_ERR_INVALID_ARGUMENT `out` is NULL.
 * @retval KVP_ERR_VERSION_MISMATCH Unknown `struct_size`.
 * @threadsafety May run concurrently with other const calls.
 * @since 1.4
 */
KVP_API kvp_status KVP_CALL kvp_cache_get_shard(const kvp_cache *cache, kvp_shard_info *out);

KVP_END_DECLS

/** @} */
#endif /* KVPAGES_CACHE_H */
