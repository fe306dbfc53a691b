/**
 * @file kvpages/config.h
 * @brief The cache configuration (the reference's cache metadata), memory budgeting, derived
 *        geometry and the planning query.
 *
 * A ::kvp_config is a plain value record with every field of the reference's
 * `RaggedPagesCacheMetaData`, in the same order. kvp_config_create() fills it from model
 * hyper-parameters and a memory budget, deriving `num_pages`, `max_num_pages_per_req` and
 * `num_slices_per_kv_cache_update_page`. Callers may also fill a record by hand (for example
 * from JSON): every function that reads a record validates it first.
 *
 * **Budgeting difference from the reference.** The reference sizes a page with the unpadded
 * element count `2 * layers * page_size * kv_heads * head_dim * itemsize`, but the v3 storage
 * pads the head dim to a multiple of 128 and the combined-head count to a multiple of the
 * packing, so whenever padding occurs it allocates more than its budget (×1.33 for head_dim 96,
 * ×2 for fp8 MQA). kvpages budgets with the true padded page size by default; set
 * ::KVP_CONFIG_FLAG_REFERENCE_BUDGET to get the reference's `num_pages` exactly.
 *
 * **Sharding** (since 1.3; version 2 of the record). A config describes the whole cache over a
 * device mesh: `kv_head_shards` tensor-parallel devices each hold a share of every page's KV
 * heads, and `data_parallel_size` data-parallel devices each own a contiguous block of
 * `num_pages / data_parallel_size` pages (page 0, the null page, in block 0). kvp_config_create()
 * resolves a head split that does not divide as the reference does (keep, upcast the dtype to
 * bf16 then fp32, or replicate; see there), records the decision in the config
 * (`kv_head_shards`, `kvdtype`, and what was asked for in `requested_kv_head_shards` /
 * `requested_kvdtype`) and budgets `per-device budget × kv_head_shards × data_parallel_size`;
 * kvp_config_plan() reports the per-device numbers and the decision in words. A version 1 record
 * (kvpages 1.0–1.2, zeros there) is unsharded. kvp_cache_create() allocates the whole cache of
 * such a config (all heads, all pages) in one place.
 *
 * @defgroup kvp_config Configuration and planning
 * @ingroup kvpages
 * @{
 */
#ifndef KVPAGES_CONFIG_H
#define KVPAGES_CONFIG_H

#include "kvpages/common.h"
#include "kvpages/status.h"
#include "kvpages/types.h"

KVP_BEGIN_DECLS

/** Current value of kvp_config::abi_version (2 since 1.3: the sharding fields). */
#define KVP_CONFIG_VERSION 2u

/**
 * @brief The cache configuration: geometry and derived sizes (the reference's 14 seed fields).
 *
 * A value record; copy it freely. Initialise with kvp_config_init() (reference defaults) or
 * ::KVP_CONFIG_INIT, or get one from kvp_config_create(). `-1` means "not computed", as in the
 * reference.
 */
typedef struct kvp_config {
  uint32_t struct_size;                        /**< sizeof(kvp_config) as compiled by the caller. */
  uint32_t abi_version;                        /**< ::KVP_CONFIG_VERSION. */
  int64_t num_hidden_layers;                   /**< Layers (= per-layer buffers), 1 … 65536 (each layer is one buffer). */
  int64_t max_model_length;                    /**< Longest sequence in tokens, 1 … 2^31 − 1 (positions are int32). */
  int64_t num_kv_heads;                        /**< KV heads per layer, 1 … 2^24. */
  int64_t k_headdim;                           /**< Key head dim, 1 … 2^24; drives the layout (64 → packed [K|V] lanes). */
  int64_t v_headdim;                           /**< Value head dim; must equal k_headdim. */
  double hbm_utilization;                      /**< Fraction of device memory to budget, (0, 1]. Default 0.9. */
  int64_t page_size;                           /**< Tokens per page, 1 … 2^24, multiple of the packing; a page of one layer (kvp_page_size_bytes()) at most 16 MiB. Default 128. */
  int64_t num_pages;                           /**< Pages per layer including the null page 0, 1 … 2^31 − 1 (page ids are int32); -1 = not computed. The whole cache (num_pages × page bytes × layers) must fit int64. */
  int64_t max_num_pages_per_req;               /**< cdiv(max_model_length, page_size); -1 = not computed. */
  int64_t num_slices_per_kv_cache_update_page; /**< v2 update batching factor in {1…64}; -1 = not computed. */
  int64_t max_num_tokens;                      /**< Optional hint: tokens per step, 1 … 2^31 − 1; -1 = unset. */
  int64_t max_num_reqs;                        /**< Optional hint: concurrent requests, 1 … 2^31 − 2; -1 = unset. */
  kvp_layout version;                          /**< ::KVP_LAYOUT_V3 (default) or ::KVP_LAYOUT_V2. */
  kvp_dtype kvdtype;                           /**< Storage dtype (default ::KVP_DTYPE_BF16); after an upcast for KV-head sharding, the upcast dtype. */
  /** Data-parallel page shards (the reference's `data_parallel_size`), 1 … 65536; `num_pages` is
   *  a multiple of it and shard `s` owns pages `[s·N/dp, (s+1)·N/dp)`. 0 (a version 1 record) = 1.
   *  @since 1.3 */
  int64_t data_parallel_size;
  /** Effective KV-head shards after resolution (the reference's `kv_head_shards`), 1 … 65536; it
   *  divides the storage groups (v3) or the combined heads (v2). 0 (a version 1 record) = 1.
   *  @since 1.3 */
  int64_t kv_head_shards;
  /** The KV-head shards asked for when the resolution replicated the heads instead (then
   *  `kv_head_shards` is 1); 0 = as `kv_head_shards` (nothing was replicated). @since 1.3 */
  int64_t requested_kv_head_shards;
  /** The dtype asked for when the resolution upcast it to `kvdtype`; 0 = as `kvdtype` (nothing
   *  was upcast). @since 1.3 */
  kvp_dtype requested_kvdtype;
  uint32_t _reserved1; /**< Must be 0. @since 1.3 */
} kvp_config;

/** Static initialiser with the reference defaults; set the model fields afterwards. */
#define KVP_CONFIG_INIT                                                                      \
  {                                                                                          \
    sizeof(kvp_config), KVP_CONFIG_VERSION, 0, 0, 0, 0, 0, 0.9, 128, -1, -1, -1, -1, -1,     \
        KVP_LAYOUT_V3, KVP_DTYPE_BF16, 1, 1, 0, 0, 0                                         \
  }

/**
 * @brief Fills a config record with the reference defaults (page 128, util 0.9, v3, bf16, -1
 *        for the derived fields, 0 for the model fields).
 * @param[out] cfg Record to fill, not NULL: version 2 when `struct_size` is at least version 2's
 *        (since 1.3), else version 1 (`struct_size` and `abi_version` say which).
 * @param[in] struct_size sizeof(kvp_config) as the caller sees it.
 * @retval KVP_OK Filled.
 * @retval KVP_ERR_INVALID_ARGUMENT `cfg` is NULL.
 * @retval KVP_ERR_VERSION_MISMATCH `struct_size` is smaller than version 1 of the struct.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_config_init(kvp_config *cfg, uint32_t struct_size);

/**
 * @brief Checks a config record: known version and dtype, every field within its bound (see
 *        the field docs), derived fields consistent with the formulas, and every size derived
 *        from it (page, layer, whole cache) representable in int64.
 *
 * The sharding fields must be what kvp_config_create() would resolve from the requested
 * shards and dtype (see there) and `num_pages` a multiple of `data_parallel_size`.
 *
 * This is the check every function taking a `const kvp_config *` runs first, so a record it
 * accepts is accepted by kvp_config_get_layout() and kvp_config_plan() (once `num_pages` is
 * computed) and refused by kvp_cache_create() only for want of memory or a device.
 *
 * @param[in] cfg Record, not NULL.
 * @retval KVP_OK Valid.
 * @retval KVP_ERR_INVALID_ARGUMENT A field is out of range or inconsistent (the message names it).
 * @retval KVP_ERR_NOT_FOUND Unknown layout version or dtype.
 * @retval KVP_ERR_UNSUPPORTED A dtype known only by name (fp64, fnuz variants).
 * @retval KVP_ERR_VERSION_MISMATCH Unknown struct_size or abi_version.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_config_validate(const kvp_config *cfg);

/** Memory statistics of one device, the inputs of the reference's budget function. 0 = absent. */
typedef struct kvp_memory_stats {
  int64_t bytes_limit;            /**< Allocator limit; first non-zero of limit, reservable limit, total is used. */
  int64_t bytes_reservable_limit; /**< Reservable limit. */
  int64_t bytes_total;            /**< Physical total. */
  int64_t bytes_in_use;           /**< Bytes in use. */
  int64_t bytes_reserved;         /**< Bytes reserved; used = max(in_use, reserved). */
  uint32_t valid;                 /**< Non-zero when the device reported stats; 0 = skip this device. */
  uint32_t _reserved;             /**< Must be 0. */
} kvp_memory_stats;

/** Budget mode: `max(0, floor(free * util) - margin)` (what the reference's create uses). */
#define KVP_BUDGET_FREE 0u
/** Budget mode: `max(0, floor(limit * util) - used - margin)`. */
#define KVP_BUDGET_TOTAL 1u

/** Safety margin of the reference budget function: 256 MiB. */
#define KVP_DEFAULT_SAFETY_MARGIN 268435456
/** Budget returned when no device reported statistics: 4 GiB. */
#define KVP_FALLBACK_BUDGET 4294967296

/**
 * @brief The reference's per-device budget (`per_device_hbm_budget_bytes`) over a list of
 *        device statistics.
 *
 * For each device with `valid` set and a non-zero limit: `free = max(0, limit - used)`, then the
 * usable bytes by `mode`; the result is the minimum over those devices, or
 * ::KVP_FALLBACK_BUDGET when none reported.
 *
 * @param[in] stats Array of `num_stats` entries; may be NULL when `num_stats` is 0.
 * @param[in] num_stats Number of entries.
 * @param[in] utilization Fraction in (0, 1].
 * @param[in] mode ::KVP_BUDGET_FREE or ::KVP_BUDGET_TOTAL.
 * @param[in] safety_margin_bytes Bytes subtracted, ≥ 0 (reference: ::KVP_DEFAULT_SAFETY_MARGIN).
 * @param[out] out Budget in bytes, not NULL; unchanged on failure.
 * @retval KVP_OK Computed.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL pointer, utilization out of range, negative margin or sizes, unknown mode.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_hbm_budget_bytes(const kvp_memory_stats *stats, uint32_t num_stats,
                                                 double utilization, uint32_t mode,
                                                 int64_t safety_margin_bytes, int64_t *out);

/**
 * @brief Reads the memory statistics of a device: for the CPU the host's total and available
 *        memory (`/proc/meminfo`), for CUDA `cudaMemGetInfo`.
 * @param[in] device_type ::KVP_DEVICE_CPU or ::KVP_DEVICE_CUDA.
 * @param[in] device_id CUDA ordinal (0 for the CPU).
 * @param[out] out Statistics, not NULL; unchanged on failure.
 * @retval KVP_OK Read.
 * @retval KVP_ERR_INVALID_ARGUMENT `out` is NULL or the device type is unknown.
 * @retval KVP_ERR_NO_DEVICE No such device, or no CUDA backend in this build.
 * @retval KVP_ERR_OUT_OF_MEMORY The kernel could not allocate for the read of the host statistics
 *         (the read itself allocates no heap memory, so it works when malloc fails).
 * @retval KVP_ERR_IO The host statistics could not be read.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_device_memory_stats(kvp_device_type device_type, int32_t device_id,
                                                    kvp_memory_stats *out);

/** Flag: size pages with the reference's unpadded formula (reproduces its `num_pages` exactly). */
#define KVP_CONFIG_FLAG_REFERENCE_BUDGET (1u << 0)
/** Flag: no safety margin (overrides kvp_config_options::safety_margin_bytes). */
#define KVP_CONFIG_FLAG_NO_SAFETY_MARGIN (1u << 1)

/** Current value of kvp_config_options::abi_version (2 since 1.3: `data_parallel_size`). */
#define KVP_CONFIG_OPTIONS_VERSION 2u

/**
 * @brief Inputs of kvp_config_create(): the model shape and how to budget memory.
 *
 * Zero means "default" for every field, so a zeroed struct with its size and version set plus the
 * required model fields is valid.
 */
typedef struct kvp_config_options {
  uint32_t struct_size;                 /**< sizeof(kvp_config_options). */
  uint32_t abi_version;                 /**< ::KVP_CONFIG_OPTIONS_VERSION. */
  int64_t num_hidden_layers;            /**< Required, > 0. */
  int64_t num_kv_heads;                 /**< Required, > 0 (global, unsharded count). */
  int64_t max_model_length;             /**< Required, > 0. */
  int64_t kv_head_dim_size;             /**< Head dim used for budgeting; 0 = k_headdim. One of the two is required. */
  int64_t k_headdim;                    /**< Key head dim; 0 = kv_head_dim_size. */
  int64_t v_headdim;                    /**< Value head dim; 0 = kv_head_dim_size. Must equal k_headdim. */
  double hbm_utilization;               /**< (0, 1]; 0 = 0.9. */
  int64_t page_size;                    /**< Tokens per page; 0 = 128. */
  kvp_dtype kvdtype;                    /**< Storage dtype; 0 = bf16. */
  kvp_layout version;                   /**< ::KVP_LAYOUT_V3 / ::KVP_LAYOUT_V2; 0 = v3. */
  uint32_t budget_mode;                 /**< ::KVP_BUDGET_FREE (default, as the reference) or ::KVP_BUDGET_TOTAL. */
  uint32_t flags;                       /**< `KVP_CONFIG_FLAG_*`. */
  int64_t budget_bytes;                 /**< > 0: use this per-device budget, skip statistics. 0 = compute. */
  int64_t safety_margin_bytes;          /**< 0 = 256 MiB; use ::KVP_CONFIG_FLAG_NO_SAFETY_MARGIN for none. */
  const kvp_memory_stats *memory_stats; /**< Injected statistics (borrowed); NULL = read the device. */
  uint32_t num_memory_stats;            /**< Entries in memory_stats. */
  kvp_device_type device_type;          /**< Device whose memory is budgeted; 0 = CPU. */
  int32_t device_id;                    /**< CUDA ordinal. */
  uint32_t _reserved0;                  /**< Must be 0. */
  int64_t kv_head_shards;               /**< Devices the KV heads are sharded over (tensor parallelism, S), 1 … 65536; resolved as kvp_config_create() says; 0 = 1. */
  int64_t max_num_tokens;               /**< Hint stored in the record; 0 = -1 (unset). */
  int64_t max_num_reqs;                 /**< Hint stored in the record; 0 = -1 (unset). */
  int64_t data_parallel_size;           /**< Data-parallel page shards, 1 … 65536; 0 = 1. @since 1.3 */
} kvp_config_options;

#define KVP_CONFIG_OPTIONS_INIT KVP__OPTIONS_INIT(kvp_config_options, KVP_CONFIG_OPTIONS_VERSION)
/**
 * @def KVP_CONFIG_OPTIONS_INIT
 * @brief Static initialiser: everything default, model fields still to be set. Uses designated
 *        initialisers in C so `-Wextra` does not warn about the fields left out.
 */

/**
 * @brief Fills options with defaults (all zero, size and version set).
 * @param[out] opts Options to fill, not NULL.
 * @param[in] struct_size sizeof(kvp_config_options) as the caller sees it.
 * @retval KVP_OK Filled.
 * @retval KVP_ERR_INVALID_ARGUMENT `opts` is NULL.
 * @retval KVP_ERR_VERSION_MISMATCH `struct_size` is smaller than version 1 of the struct.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_config_options_init(kvp_config_options *opts, uint32_t struct_size);

/**
 * @brief Creates a validated config: derives `num_pages` from the memory budget,
 *        `max_num_pages_per_req` and `num_slices_per_kv_cache_update_page` (the reference's
 *        `create()`, with its errors as status codes).
 *
 * **Sharding resolution** (the reference's rules, SPEC.md §7.3), before budgeting. With S =
 * `kv_head_shards` (tensor parallelism) and dp = `data_parallel_size`:
 * - S = 1: nothing to resolve (::KVP_HEAD_SHARDING_NONE).
 * - v3: the unit split over devices is the storage group, G = storage combined heads / packing
 *   (kvp_layout_info::storage_num_kv_groups). If S divides G of the requested dtype, it is kept
 *   (::KVP_HEAD_SHARDING_KEEP). Otherwise bf16, then fp32 (skipping the requested dtype) are
 *   tried and the first whose G is divisible by S becomes `kvdtype` (::KVP_HEAD_SHARDING_UPCAST;
 *   the requested dtype stays in kvp_config::requested_kvdtype). Note that the reference's order
 *   tries bf16 for an fp32 request too, which for head_dim 64 can narrow fp32 to bf16 (3 heads
 *   over 2 devices). If no dtype works, every device holds all heads: `kv_head_shards` = 1, dtype
 *   unchanged, S kept in kvp_config::requested_kv_head_shards (::KVP_HEAD_SHARDING_REPLICATE).
 * - v2: the unit is the combined head (2 × KV heads); S must divide it, else the heads are
 *   replicated as above. v2 never changes the dtype.
 * kvp_config_plan() reports the decision and its reason in words.
 *
 * Budget: `budget_bytes` if > 0, else kvp_hbm_budget_bytes() over `memory_stats` if given, else
 * over the statistics of the device. The per-device budget is multiplied by the effective
 * `kv_head_shards` and by dp, then divided by the bytes of one page over all layers in the final
 * dtype (true padded size, or the reference formula with ::KVP_CONFIG_FLAG_REFERENCE_BUDGET);
 * with dp > 1 `num_pages` is rounded down to a multiple of dp. Nothing is allocated.
 *
 * Which version of ::kvp_config is written: version 2 when the caller opted in, by version 2
 * options (::KVP_CONFIG_OPTIONS_INIT or kvp_config_options_init() with 1.3 headers) or by `out`
 * (see there); a caller built against kvpages 1.0–1.2 has neither and gets version 1, the record
 * it holds, never written past.
 *
 * Rejected (::KVP_ERR_INVALID_ARGUMENT unless noted): layers, KV heads, max length, page size
 * or head dims outside the bounds of ::kvp_config; k_headdim ≠ v_headdim; page size not a multiple of the packing;
 * utilization outside (0, 1]; a page of one layer over 16 MiB (also after an upcast); a budget
 * too small for one page (`num_pages` ≤ 0), or for one page per data-parallel shard (`num_pages`
 * < dp); `kv_head_shards` or `data_parallel_size` negative or over 65536; unknown dtype or layout (::KVP_ERR_NOT_FOUND); fp64 or fnuz dtypes
 * (::KVP_ERR_UNSUPPORTED); non-zero reserved fields or unknown flags (::KVP_ERR_UNSUPPORTED).
 *
 * @param[in] opts Options, not NULL.
 * @param[out] out The config, not NULL; unchanged on failure; set struct_size and abi_version first
 *        — ::KVP_CONFIG_INIT or kvp_config_init() do — to receive the version-2 fields (since 1.3);
 *        otherwise the version-1 record is written (unless `opts` is version 2, which opts in too).
 * @retval KVP_OK Created.
 * @retval KVP_ERR_INVALID_ARGUMENT See above.
 * @retval KVP_ERR_NOT_FOUND Unknown dtype or layout version.
 * @retval KVP_ERR_UNSUPPORTED Name-only dtype, unknown flag, non-zero reserved field.
 * @retval KVP_ERR_VERSION_MISMATCH Unknown options size or version.
 * @retval KVP_ERR_NO_DEVICE The budget device does not exist.
 * @retval KVP_ERR_IO Host memory statistics could not be read.
 * @threadsafety Thread-safe.
 * @since 1.0
 * @code
 * kvp_config_options o = KVP_CONFIG_OPTIONS_INIT;
 * o.num_hidden_layers = 32; o.num_kv_heads = 8; o.kv_head_dim_size = 128;
 * o.max_model_length = 8192; o.budget_bytes = 8LL << 30;
 * kvp_config cfg;
 * if (kvp_config_create(&o, &cfg) != KVP_OK) puts(kvp_last_error_message());
 * @endcode
 */
KVP_API kvp_status KVP_CALL kvp_config_create(const kvp_config_options *opts, kvp_config *out);

/**
 * @brief Geometry derived from a config (the reference's derived properties).
 */
typedef struct kvp_layout_info {
  uint32_t struct_size;                  /**< sizeof(kvp_layout_info); set by the caller. */
  uint32_t is_h64;                       /**< 1 when the v3 head_dim-64 layout ([K|V] in 128 lanes) applies. */
  int64_t kv_head_packing;               /**< 32 / bits of the storage dtype. */
  int64_t storage_num_combined_kv_heads; /**< v3: align(2H, pack), h64: align(H, pack). v2: 2H. */
  int64_t storage_num_kv_groups;         /**< v3: combined / pack. v2: 2H. */
  int64_t storage_head_dim;              /**< v3: align(D, 128), h64: 128. v2: D. */
  int64_t itemsize;                      /**< Bytes per stored element. */
  int32_t ndim;                          /**< Rank of a layer's pages: 5 for v3, 4 for v2. */
  int32_t _reserved;                     /**< 0. */
  int64_t shape[5];                      /**< Shape of a layer's pages (get_shape_and_axes). */
  int64_t layer_bytes;                   /**< Bytes of one layer's buffer. */
  int64_t page_bytes_per_layer;          /**< True bytes of one page of one layer. */
  int64_t max_num_seqs;                  /**< The reference's get_max_num_seqs(): (524288 / pages_per_req) / 4. */
} kvp_layout_info;

/** Initialiser of an output struct: `struct_size` set, the rest zero (filled by the call). */
#define KVP_LAYOUT_INFO_INIT KVP__OUTPUT_INIT(kvp_layout_info)

/**
 * @brief Computes the derived geometry of a config.
 * @param[in] cfg Config, not NULL; validated first (kvp_config_validate()).
 * @param[out] out Info, not NULL; `out->struct_size` must be set; unchanged on failure.
 * @retval KVP_OK Computed.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL pointer or invalid config (message names the field).
 * @retval KVP_ERR_NOT_FOUND Unknown layout version or dtype in `cfg`.
 * @retval KVP_ERR_UNSUPPORTED Name-only dtype in `cfg`.
 * @retval KVP_ERR_VERSION_MISMATCH Unknown struct sizes.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_config_get_layout(const kvp_config *cfg, kvp_layout_info *out);

/**
 * @brief The reference's `get_padded_num_slices(num_tokens, max_num_reqs)`: an upper bound on
 *        the v2 update slices of one step, rounded up to `num_slices_per_kv_cache_update_page`.
 *
 * T = `num_tokens` if > 0, else the config's `max_num_tokens` if > 0, else `max_model_length`;
 * R = `max_num_reqs` if > 0, else the config's if > 0, else get_max_num_seqs();
 * result = round_up(min(2R + T / page_size, T), slices_per_page).
 *
 * @param[in] cfg Config, not NULL; must have a positive `num_slices_per_kv_cache_update_page`.
 * @param[in] num_tokens Tokens this step, or ≤ 0 for the default.
 * @param[in] max_num_reqs Requests this step, or ≤ 0 for the default.
 * @param[out] out Slice capacity, not NULL; unchanged on failure.
 * @retval KVP_OK Computed.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL pointer, invalid config, or slices-per-page not computed.
 * @retval KVP_ERR_NOT_FOUND Unknown layout version or dtype in `cfg`.
 * @retval KVP_ERR_UNSUPPORTED Name-only dtype in `cfg`.
 * @retval KVP_ERR_VERSION_MISMATCH Unknown struct size.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_config_padded_num_slices(const kvp_config *cfg, int64_t num_tokens,
                                                         int64_t max_num_reqs, int64_t *out);

/** @brief Planning numbers of a config, filled by kvp_config_plan(). */
typedef struct kvp_plan {
  uint32_t struct_size;             /**< sizeof(kvp_plan); set by the caller. */
  uint32_t _reserved;               /**< 0. */
  int64_t num_pages;                /**< Pages per layer, including the reserved null page 0. */
  int64_t usable_pages;             /**< num_pages - 1: pages a pool can hand out. */
  int64_t page_size;                /**< Tokens per page. */
  int64_t bytes_per_page;           /**< True bytes of one page over all layers (K and V, padding included). */
  int64_t reference_bytes_per_page; /**< The reference's unpadded page_bytes over all layers. */
  int64_t bytes_per_token;          /**< bytes_per_page / page_size. */
  int64_t total_bytes;              /**< Bytes the cache allocates: num_pages * bytes_per_page. */
  int64_t token_capacity;           /**< Tokens that fit: usable_pages * page_size. */
  int64_t max_concurrent_seqs;      /**< Sequences of max_model_length that fit: usable_pages / max_num_pages_per_req. */
  int64_t max_num_seqs;             /**< The reference's SMEM page-table bound (get_max_num_seqs). */
  int64_t data_parallel_size;       /**< Data-parallel page shards (kvp_config::data_parallel_size). @since 1.3 */
  int64_t kv_head_shards;           /**< Effective KV-head shards (kvp_config::kv_head_shards). @since 1.3 */
  int64_t requested_kv_head_shards; /**< KV-head shards asked for (differs from kv_head_shards when replicated). @since 1.3 */
  uint32_t head_sharding;           /**< What the resolution decided: `KVP_HEAD_SHARDING_*`. @since 1.3 */
  kvp_dtype requested_kvdtype;      /**< The dtype asked for (differs from kvdtype after an upcast). @since 1.3 */
  kvp_dtype kvdtype;                /**< The storage dtype. @since 1.3 */
  uint32_t _reserved1;              /**< 0. @since 1.3 */
  int64_t units_per_device;         /**< Storage groups (v3) or combined heads (v2) of every page that one device holds. @since 1.3 */
  int64_t pages_per_device;         /**< Pages each data-parallel shard owns: num_pages / data_parallel_size (shard 0's include the null page). @since 1.3 */
  int64_t bytes_per_device;         /**< Bytes each device allocates: total_bytes / (kv_head_shards × data_parallel_size). @since 1.3 */
  /** The resolution in words, NUL-terminated, e.g. "upcast fp8_e4m3fn → bf16 because 2 storage
   *  groups do not split over 4 devices (bf16 has 4: 1 per device)". UTF-8. @since 1.3 */
  char sharding_message[224];
} kvp_plan;

/** kvp_plan::head_sharding: one device, nothing to resolve. @since 1.3 */
#define KVP_HEAD_SHARDING_NONE 0u
/** kvp_plan::head_sharding: the heads split over the devices in the requested dtype. @since 1.3 */
#define KVP_HEAD_SHARDING_KEEP 1u
/** kvp_plan::head_sharding: the dtype was changed (bf16, then fp32) so that the heads split. @since 1.3 */
#define KVP_HEAD_SHARDING_UPCAST 2u
/** kvp_plan::head_sharding: no dtype splits the heads; every device holds all of them. @since 1.3 */
#define KVP_HEAD_SHARDING_REPLICATE 3u

/** Initialiser of an output struct: `struct_size` set, the rest zero (filled by the call). */
#define KVP_PLAN_INIT KVP__OUTPUT_INIT(kvp_plan)

/**
 * @brief Answers "what fits" for a config before anything is allocated: totals over all
 *        devices, per-device numbers and the sharding resolution (what was decided and why).
 *
 * @param[in] cfg Config with `num_pages` computed, not NULL; validated first.
 * @param[out] out Plan, not NULL; `out->struct_size` must be set (::KVP_PLAN_INIT); unchanged on
 *        failure. The version-2 fields (since 1.3) are written only when it is exactly
 *        `sizeof(kvp_plan)` of 1.3; otherwise the version-1 plan (kvpages 1.0–1.2, 88 bytes) is
 *        written and `struct_size` says so.
 * @retval KVP_OK Computed.
 * @retval KVP_ERR_INVALID_ARGUMENT NULL pointer, invalid config or `num_pages` < 1.
 * @retval KVP_ERR_NOT_FOUND Unknown layout version or dtype in `cfg`.
 * @retval KVP_ERR_UNSUPPORTED Name-only dtype in `cfg`.
 * @retval KVP_ERR_VERSION_MISMATCH Unknown struct sizes.
 * @threadsafety Thread-safe.
 * @since 1.0
 */
KVP_API kvp_status KVP_CALL kvp_config_plan(const kvp_config *cfg, kvp_plan *out);

KVP_END_DECLS

/** @} */
#endif /* KVPAGES_CONFIG_H */
