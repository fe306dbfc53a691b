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
 * By default a CPU cache with the built-in allocator maps each layer buffer of 2 MiB or more
 * aligned to 2 MiB and advises the kernel to back it with huge pages (`madvise(MADV_HUGEPAGE)`),
 * so filling it takes one page fault per 2 MiB instead of one per 4 KiB (a load of a large
 * cache is several times faster where the kernel's THP mode is `madvise`). With this flag the
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
 * On the CPU, large buffers come from the operating system already zeroed (anonymous mappings),
 * so memory is not touched twice; with a custom allocator the library zero-fills what it gets.
 * Buffers of 2 MiB or more are 2 MiB-aligned and advised for transparent huge pages unless
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

KVP_END_DECLS

/** @} */
#endif /* KVPAGES_CACHE_H */
