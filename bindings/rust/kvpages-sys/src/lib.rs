//! Raw declarations of the whole kvpages C API (`include/kvpages/*.h`, library 1.5), written by
//! hand and checked against the headers.
//!
//! Everything here is `unsafe` to call and mirrors the C headers exactly: every public function
//! (the `extern "C"` block), every type (`#[repr(C)]` structs, opaque handles, callback and
//! integer typedefs) and every numeric `KVP_*` constant. Two tests keep it so:
//!
//! * `tests/headers.rs` parses the installed headers (the ones this crate links against) and
//!   fails when a function, a parameter or return type, a struct field, a typedef or a constant
//!   of the headers has no identical counterpart here (the C types are mapped to Rust ones:
//!   `const T *` is `*const T`, `int64_t` is `i64`, …), and compiles a C probe that prints every
//!   constant's value;
//! * `tests/layout.rs` compiles a C probe against the same headers and compares every struct's
//!   size and field offsets.
//!
//! Use the safe `kvpages` crate unless you need the raw API.
//!
//! # Linking
//! `build.rs` finds the library through `pkg-config` (set `PKG_CONFIG_PATH` to
//! `<prefix>/lib/pkgconfig` for a non-system prefix), or `KVPAGES_LIB_DIR`, or builds it from the
//! source tree with the `bundled` feature; in every case it adds an rpath to the library's
//! directory, so binaries, tests and examples run without `LD_LIBRARY_PATH`.
#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_int, c_void};

// ---- Integer typedefs (status.h, types.h, cache.h, metadata.h) ----
pub type kvp_status = i32;
pub type kvp_dtype = u32;
pub type kvp_layout = u32;
pub type kvp_device_type = i32;
pub type kvp_view_kind = u32;
pub type kvp_metadata_field = u32;
/// `struct CUstream_st *` (a `cudaStream_t`); null is the legacy default stream.
pub type kvp_stream = *mut c_void;

macro_rules! constants {
    ($($(#[$doc:meta])* $name:ident: $t:ty = $v:expr;)*) => {
        $($(#[$doc])* pub const $name: $t = $v;)*
        /// Every constant above with its value, for the header check (`tests/headers.rs`).
        #[doc(hidden)]
        pub const CONSTANTS: &[(&str, i128)] = &[$((stringify!($name), $name as i128)),*];
    };
}

constants! {
    // status.h
    KVP_OK: kvp_status = 0;
    KVP_ERR_INVALID_ARGUMENT: kvp_status = 1;
    KVP_ERR_INVALID_HANDLE: kvp_status = 2;
    KVP_ERR_NOT_FOUND: kvp_status = 3;
    KVP_ERR_VERSION_MISMATCH: kvp_status = 4;
    KVP_ERR_UNSUPPORTED: kvp_status = 5;
    KVP_ERR_BUFFER_TOO_SMALL: kvp_status = 6;
    KVP_ERR_OUT_OF_MEMORY: kvp_status = 64;
    KVP_ERR_OUT_OF_PAGES: kvp_status = 65;
    KVP_ERR_IO: kvp_status = 66;
    KVP_ERR_DEVICE: kvp_status = 128;
    KVP_ERR_DEVICE_LOST: kvp_status = 129;
    KVP_ERR_NO_DEVICE: kvp_status = 130;
    KVP_ERR_DEVICE_OUT_OF_MEMORY: kvp_status = 131;
    KVP_ERR_FORMAT_MAGIC: kvp_status = 192;
    KVP_ERR_FORMAT_VERSION: kvp_status = 193;
    KVP_ERR_FORMAT_TRUNCATED: kvp_status = 194;
    KVP_ERR_FORMAT_CHECKSUM: kvp_status = 195;
    KVP_ERR_FORMAT_CORRUPT: kvp_status = 196;
    KVP_ERR_FORMAT_MISMATCH: kvp_status = 197;
    KVP_ERR_INTERNAL: kvp_status = 255;
    // types.h
    KVP_DTYPE_INVALID: kvp_dtype = 0;
    KVP_DTYPE_F32: kvp_dtype = 1;
    KVP_DTYPE_F16: kvp_dtype = 2;
    KVP_DTYPE_BF16: kvp_dtype = 3;
    KVP_DTYPE_F8_E4M3FN: kvp_dtype = 4;
    KVP_DTYPE_F8_E5M2: kvp_dtype = 5;
    KVP_DTYPE_F64: kvp_dtype = 6;
    KVP_DTYPE_F8_E4M3FNUZ: kvp_dtype = 7;
    KVP_DTYPE_F8_E4M3B11FNUZ: kvp_dtype = 8;
    KVP_DTYPE_F8_E5M2FNUZ: kvp_dtype = 9;
    KVP_LAYOUT_DEFAULT: kvp_layout = 0;
    KVP_LAYOUT_V2: kvp_layout = 2;
    KVP_LAYOUT_V3: kvp_layout = 3;
    KVP_DEVICE_CPU: kvp_device_type = 1;
    KVP_DEVICE_CUDA: kvp_device_type = 2;
    KVP_MAX_DIMS: usize = 6;
    // config.h
    KVP_CONFIG_VERSION: u32 = 2;
    KVP_BUDGET_FREE: u32 = 0;
    KVP_BUDGET_TOTAL: u32 = 1;
    KVP_DEFAULT_SAFETY_MARGIN: i64 = 268435456;
    KVP_FALLBACK_BUDGET: i64 = 4294967296;
    KVP_CONFIG_FLAG_REFERENCE_BUDGET: u32 = 1 << 0;
    KVP_CONFIG_FLAG_NO_SAFETY_MARGIN: u32 = 1 << 1;
    KVP_CONFIG_OPTIONS_VERSION: u32 = 2;
    KVP_HEAD_SHARDING_NONE: u32 = 0;
    KVP_HEAD_SHARDING_KEEP: u32 = 1;
    KVP_HEAD_SHARDING_UPCAST: u32 = 2;
    KVP_HEAD_SHARDING_REPLICATE: u32 = 3;
    // cache.h
    KVP_CACHE_OPTIONS_VERSION: u32 = 2;
    KVP_CACHE_FLAG_NO_HUGE_PAGES: u32 = 1 << 0;
    KVP_CACHE_FLAG_PREFAULT: u32 = 1 << 1;
    KVP_VIEW_PAGES: kvp_view_kind = 0;
    KVP_VIEW_FLAT: kvp_view_kind = 1;
    KVP_VIEW_KEYS: kvp_view_kind = 2;
    KVP_VIEW_VALUES: kvp_view_kind = 3;
    KVP_VIEW_REFERENCE_KEYS: kvp_view_kind = 4;
    KVP_VIEW_REFERENCE_VALUES: kvp_view_kind = 5;
    // metadata.h
    KVP_METADATA_DESC_VERSION: u32 = 2;
    KVP_METADATA_FLAG_IMMUTABLE: u32 = 1;
    KVP_METADATA_PAGES_TABLES: kvp_metadata_field = 0;
    KVP_METADATA_CONTEXT_LENS: kvp_metadata_field = 1;
    KVP_METADATA_QUERY_START_LOC: kvp_metadata_field = 2;
    KVP_METADATA_NUM_SEQS: kvp_metadata_field = 3;
    KVP_METADATA_SLOT_MAPPING: kvp_metadata_field = 4;
    KVP_METADATA_NUM_KV_UPDATE_SLICES: kvp_metadata_field = 5;
    KVP_METADATA_REQUEST_DISTRIBUTION: kvp_metadata_field = 6;
    KVP_METADATA_POSITION_IDS: kvp_metadata_field = 7;
    KVP_METADATA_TOKEN_STARTS: kvp_metadata_field = 8;
    KVP_BATCH_FLAG_SEED_DISTRIBUTION: u32 = 1 << 0;
    KVP_BATCH_FLAG_TIGHT_SLICES: u32 = 1 << 1;
    KVP_BATCH_FLAG_KEEP_ORDER: u32 = 1 << 2;
    KVP_BATCH_FLAG_REQUEST_ORDER: u32 = 1 << 3;
    KVP_BATCH_OPTIONS_VERSION: u32 = 1;
    // pool.h
    KVP_POOL_FLAG_NO_PREFIX_CACHE: u32 = 1 << 0;
    KVP_POOL_OPTIONS_VERSION: u32 = 2;
    KVP_POOL_ADD_FLAG_REUSE_ALL: u32 = 1 << 0;
    KVP_POOL_ADD_FLAG_SHARD: u32 = 1 << 1;
    KVP_PAGE_FLAG_NULL: u32 = 1 << 0;
    KVP_PAGE_FLAG_FREE: u32 = 1 << 1;
    KVP_PAGE_FLAG_INDEXED: u32 = 1 << 2;
    KVP_POOL_MAX_TIERS: u32 = 4;
    KVP_POOL_FLUSH_CACHED: u32 = 1 << 0;
    KVP_POOL_SAVE_FLAG_NO_SYNC: u32 = 1 << 0;
    // store.h
    KVP_STORE_VTABLE_VERSION: u32 = 2;
    KVP_STORE_FLAG_NO_SYNC: u32 = 1 << 0;
    KVP_STORE_OPTIONS_VERSION: u32 = 1;
    KVP_STORE_DEFAULT_TIMEOUT_MS: u32 = 1000;
    // serialize.h
    KVP_FORMAT_MAJOR: u32 = 1;
    KVP_FORMAT_MINOR: u32 = 1;
    KVP_FORMAT_FLAG_SHARD: u64 = 1 << 0;
    KVP_SERIALIZE_DEFAULT_CHUNK_BYTES: u64 = 1048576;
    KVP_SERIALIZE_MIN_CHUNK_BYTES: u64 = 64;
    KVP_SERIALIZE_MAX_CHUNK_BYTES: u64 = 1073741824;
    KVP_SERIALIZE_OPTIONS_VERSION: u32 = 1;
    KVP_SERIALIZE_FLAG_NO_SYNC: u32 = 1;
    KVP_DESERIALIZE_OPTIONS_VERSION: u32 = 1;
    KVP_DESERIALIZE_DEFAULT_MAX_BYTES: u64 = 1073741824;
    KVP_INSPECT_VERIFY: u32 = 1 << 0;
    // attention.h
    KVP_ATTENTION_OPTIONS_VERSION: u32 = 1;
    // plugin.h
    KVP_API_VERSION_1: u32 = 1;
}

/// The header version these declarations were written against (1.5.0: storage tiers). The library
/// must be at least this version (`kvp_check_abi`).
pub const KVP_VERSION_NUMBER: u32 = 10500;

// ---- Structs and handles ----

/// `kvp_tensor` (types.h): a non-owning strided tensor, strides in elements.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct kvp_tensor {
    pub data: *mut c_void,
    pub dtype: kvp_dtype,
    pub ndim: i32,
    pub shape: [i64; KVP_MAX_DIMS],
    pub strides: [i64; KVP_MAX_DIMS],
    pub device_type: kvp_device_type,
    pub device_id: i32,
}

/// `kvp_config` (config.h). Since 1.3 (version 2) it ends with the sharding fields, from
/// `data_parallel_size` on.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct kvp_config {
    pub struct_size: u32,
    pub abi_version: u32,
    pub num_hidden_layers: i64,
    pub max_model_length: i64,
    pub num_kv_heads: i64,
    pub k_headdim: i64,
    pub v_headdim: i64,
    pub hbm_utilization: f64,
    pub page_size: i64,
    pub num_pages: i64,
    pub max_num_pages_per_req: i64,
    pub num_slices_per_kv_cache_update_page: i64,
    pub max_num_tokens: i64,
    pub max_num_reqs: i64,
    pub version: kvp_layout,
    pub kvdtype: kvp_dtype,
    pub data_parallel_size: i64,
    pub kv_head_shards: i64,
    pub requested_kv_head_shards: i64,
    pub requested_kvdtype: kvp_dtype,
    pub _reserved1: u32,
}

/// `kvp_memory_stats` (config.h).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct kvp_memory_stats {
    pub bytes_limit: i64,
    pub bytes_reservable_limit: i64,
    pub bytes_total: i64,
    pub bytes_in_use: i64,
    pub bytes_reserved: i64,
    pub valid: u32,
    pub _reserved: u32,
}

/// `kvp_config_options` (config.h); `data_parallel_size` since 1.3 (version 2).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct kvp_config_options {
    pub struct_size: u32,
    pub abi_version: u32,
    pub num_hidden_layers: i64,
    pub num_kv_heads: i64,
    pub max_model_length: i64,
    pub kv_head_dim_size: i64,
    pub k_headdim: i64,
    pub v_headdim: i64,
    pub hbm_utilization: f64,
    pub page_size: i64,
    pub kvdtype: kvp_dtype,
    pub version: kvp_layout,
    pub budget_mode: u32,
    pub flags: u32,
    pub budget_bytes: i64,
    pub safety_margin_bytes: i64,
    pub memory_stats: *const kvp_memory_stats,
    pub num_memory_stats: u32,
    pub device_type: kvp_device_type,
    pub device_id: i32,
    pub _reserved0: u32,
    pub kv_head_shards: i64,
    pub max_num_tokens: i64,
    pub max_num_reqs: i64,
    pub data_parallel_size: i64,
}

/// `kvp_layout_info` (config.h): an output struct, `struct_size` set by the caller.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct kvp_layout_info {
    pub struct_size: u32,
    pub is_h64: u32,
    pub kv_head_packing: i64,
    pub storage_num_combined_kv_heads: i64,
    pub storage_num_kv_groups: i64,
    pub storage_head_dim: i64,
    pub itemsize: i64,
    pub ndim: i32,
    pub _reserved: i32,
    pub shape: [i64; 5],
    pub layer_bytes: i64,
    pub page_bytes_per_layer: i64,
    pub max_num_seqs: i64,
}

/// `kvp_plan` (config.h, filled by `kvp_config_plan`): an output struct; since 1.3 it ends with
/// the sharding resolution, from `data_parallel_size` on (`sharding_message` is NUL-terminated UTF-8).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct kvp_plan {
    pub struct_size: u32,
    pub _reserved: u32,
    pub num_pages: i64,
    pub usable_pages: i64,
    pub page_size: i64,
    pub bytes_per_page: i64,
    pub reference_bytes_per_page: i64,
    pub bytes_per_token: i64,
    pub total_bytes: i64,
    pub token_capacity: i64,
    pub max_concurrent_seqs: i64,
    pub max_num_seqs: i64,
    pub data_parallel_size: i64,
    pub kv_head_shards: i64,
    pub requested_kv_head_shards: i64,
    pub head_sharding: u32,
    pub requested_kvdtype: kvp_dtype,
    pub kvdtype: kvp_dtype,
    pub _reserved1: u32,
    pub units_per_device: i64,
    pub pages_per_device: i64,
    pub bytes_per_device: i64,
    pub sharding_message: [c_char; 224],
}

impl Default for kvp_plan {
    fn default() -> Self {
        // All zero is a valid plan (the C KVP_PLAN_INIT without struct_size); arrays over 32
        // elements have no derived Default on the supported Rust.
        unsafe { std::mem::zeroed() }
    }
}

/// Opaque cache handle (`kvp_cache`).
#[repr(C)]
pub struct kvp_cache {
    _private: [u8; 0],
}

/// Opaque cache group handle (`kvp_cache_group`, group.h, since 1.4).
#[repr(C)]
pub struct kvp_cache_group {
    _private: [u8; 0],
}

/// `kvp_host_allocator` (cache.h). The callbacks must not unwind.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct kvp_host_allocator {
    pub alloc: Option<unsafe extern "C" fn(user_data: *mut c_void, size: usize, align: usize) -> *mut c_void>,
    pub free: Option<unsafe extern "C" fn(user_data: *mut c_void, ptr: *mut c_void)>,
    pub user_data: *mut c_void,
}

/// `kvp_cache_options` (cache.h); `flags` and `_reserved` since 1.2 (abi_version 2).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct kvp_cache_options {
    pub struct_size: u32,
    pub abi_version: u32,
    pub device_type: kvp_device_type,
    pub device_id: i32,
    pub allocator: *const kvp_host_allocator,
    pub flags: u32,
    pub _reserved: u32,
}

/// Opaque runtime-metadata handle (`kvp_metadata`).
#[repr(C)]
pub struct kvp_metadata {
    _private: [u8; 0],
}

/// `kvp_metadata_desc` (metadata.h): caller-owned metadata arrays (all `int32_t`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct kvp_metadata_desc {
    pub struct_size: u32,
    pub abi_version: u32,
    pub version: kvp_layout,
    pub device_type: kvp_device_type,
    pub device_id: i32,
    pub flags: u32,
    pub page_size: i64,
    pub num_slices_per_kv_cache_update_page: i64,
    pub pages_tables: *const i32,
    pub num_reqs: i64,
    pub pages_per_req: i64,
    pub context_lens: *const i32,
    pub context_lens_len: i64,
    pub query_start_loc: *const i32,
    pub query_start_loc_len: i64,
    pub num_seqs: *const i32,
    pub num_seqs_len: i64,
    pub slot_mapping: *const i32,
    pub num_slices: i64,
    pub num_kv_update_slices: *const i32,
    pub num_kv_update_slices_len: i64,
    pub request_distribution: *const i32,
    pub request_distribution_len: i64,
    pub position_ids: *const i32,
    pub position_ids_len: i64,
    pub token_starts: *const i32,
    pub token_starts_len: i64,
}

/// `kvp_batch_request` (metadata.h).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct kvp_batch_request {
    pub num_computed: i64,
    pub num_scheduled: i64,
    pub page_ids: *const i32,
    pub num_pages: i64,
}

/// `kvp_batch_options` (metadata.h).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct kvp_batch_options {
    pub struct_size: u32,
    pub abi_version: u32,
    pub max_num_reqs: i64,
    pub max_num_tokens: i64,
    pub flags: u32,
    pub _reserved0: u32,
}

/// Opaque page-pool handle (`kvp_pool`, pool.h).
#[repr(C)]
pub struct kvp_pool {
    _private: [u8; 0],
}

/// A sequence of a pool (`kvp_seq_id`): a `uint32_t` in a struct, passed by value; 0 = none.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct kvp_seq_id {
    pub id: u32,
}

/// `kvp_pool_options` (pool.h; `write_queue_bytes` since 1.5, `abi_version` 2).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct kvp_pool_options {
    pub struct_size: u32,
    pub abi_version: u32,
    pub max_sequences: u32,
    pub flags: u32,
    pub allocator: *const kvp_host_allocator,
    pub write_queue_bytes: u64,
}

/// `kvp_pool_stats` (pool.h): an output struct.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct kvp_pool_stats {
    pub struct_size: u32,
    pub max_sequences: u32,
    pub page_size: i64,
    pub max_pages_per_sequence: i64,
    pub total_pages: i64,
    pub free_pages: i64,
    pub evictable_pages: i64,
    pub used_pages: i64,
    pub indexed_pages: i64,
    pub num_sequences: i64,
    pub prompt_tokens: i64,
    pub reused_tokens: i64,
    pub evictions: i64,
    pub cow_copies: i64,
}

/// `kvp_pool_shard_stats` (pool.h, since 1.4): an output struct.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct kvp_pool_shard_stats {
    pub struct_size: u32,
    pub num_shards: u32,
    pub first_page: i32,
    pub end_page: i32,
    pub total_pages: i64,
    pub free_pages: i64,
    pub evictable_pages: i64,
    pub used_pages: i64,
    pub num_sequences: i64,
}

/// `kvp_pool_tier_stats` (pool.h, since 1.4; `dropped` since 1.5): an output struct.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct kvp_pool_tier_stats {
    pub struct_size: u32,
    pub num_tiers: u32,
    pub lookups: i64,
    pub hits: i64,
    pub misses: i64,
    pub rejected: i64,
    pub errors: i64,
    pub restored_tokens: i64,
    pub bytes_read: i64,
    pub blocks_written: i64,
    pub bytes_written: i64,
    pub dropped: i64,
}

/// Opaque block store handle (`kvp_store`, store.h, since 1.4).
#[repr(C)]
pub struct kvp_store {
    _private: [u8; 0],
}

/// `kvp_store_key` (store.h, since 1.4): the 16-byte key of a block.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct kvp_store_key {
    pub bytes: [u8; 16],
}

/// `kvp_store_vtable` (store.h, since 1.4): the callbacks of a plug-in store. They must not unwind.
/// `list` is version 2's (since 1.5) and may be `None`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct kvp_store_vtable {
    pub struct_size: u32,
    pub abi_version: u32,
    pub user_data: *mut c_void,
    pub put: Option<
        unsafe extern "C" fn(user_data: *mut c_void, key: *const kvp_store_key, data: *const c_void, size: usize)
            -> kvp_status,
    >,
    pub get: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            key: *const kvp_store_key,
            dst: *mut c_void,
            capacity: usize,
            size_out: *mut usize,
        ) -> kvp_status,
    >,
    pub exists: Option<
        unsafe extern "C" fn(user_data: *mut c_void, keys: *const kvp_store_key, count: usize, found_out: *mut u8)
            -> kvp_status,
    >,
    pub remove: Option<unsafe extern "C" fn(user_data: *mut c_void, key: *const kvp_store_key) -> kvp_status>,
    pub destroy: Option<unsafe extern "C" fn(user_data: *mut c_void)>,
    pub list: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            cursor: *mut u64,
            keys: *mut kvp_store_key,
            capacity: usize,
            count_out: *mut usize,
        ) -> kvp_status,
    >,
}

/// `kvp_store_options` (store.h, since 1.4); zero means default for every field. `timeout_ms`
/// (since 1.5, formerly `_reserved`) bounds a network store's calls, 0 = 1000 ms.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct kvp_store_options {
    pub struct_size: u32,
    pub abi_version: u32,
    pub flags: u32,
    pub timeout_ms: u32,
    pub allocator: *const kvp_host_allocator,
}

/// `kvp_store_stats` (store.h, since 1.4): an output struct.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct kvp_store_stats {
    pub struct_size: u32,
    pub _reserved: u32,
    pub blocks: i64,
    pub bytes: i64,
    pub max_bytes: i64,
    pub puts: i64,
    pub hits: i64,
    pub misses: i64,
    pub errors: i64,
    pub evictions: i64,
}

/// `kvp_store_scrub_report` (store.h, since 1.4): an output struct.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct kvp_store_scrub_report {
    pub struct_size: u32,
    pub _reserved: u32,
    pub blocks_checked: i64,
    pub blocks_damaged: i64,
    pub bytes_freed: i64,
}

/// `kvp_store_block_info` (store.h, since 1.5): an output struct.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct kvp_store_block_info {
    pub struct_size: u32,
    pub format_version: u32,
    pub fingerprint: u64,
    pub key: kvp_store_key,
    pub parent: kvp_store_key,
    pub salt: u64,
    pub page_size: u32,
    pub num_layers: u32,
    pub page_bytes: u64,
    pub block_bytes: u64,
    pub checksum_ok: u32,
    pub _reserved: u32,
}

/// `kvp_serialize_options` (serialize.h).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct kvp_serialize_options {
    pub struct_size: u32,
    pub abi_version: u32,
    pub page_ids: *const i32,
    pub num_page_ids: u32,
    pub flags: u32,
    pub chunk_bytes: u64,
}

/// `kvp_deserialize_options` (serialize.h).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct kvp_deserialize_options {
    pub struct_size: u32,
    pub abi_version: u32,
    pub cache_options: *const kvp_cache_options,
    pub max_cache_bytes: u64,
    pub flags: u32,
    pub _reserved: u32,
}

/// `kvp_serialized_info` (serialize.h): an output struct; since 1.4 (version 3) it ends with
/// `shard`, the slice the blob holds.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct kvp_serialized_info {
    pub struct_size: u32,
    pub format_major: u32,
    pub format_minor: u32,
    pub header_size: u32,
    pub flags: u64,
    pub writer_version: u32,
    pub _reserved: u32,
    pub header_checksum: u64,
    pub num_stored_pages: u64,
    pub first_page_id: u64,
    pub last_page_id: u64,
    pub page_bytes_per_layer: u64,
    pub chunk_bytes: u64,
    pub num_chunks: u64,
    pub payload_bytes: u64,
    pub total_bytes: u64,
    pub config: kvp_config,
    pub shard: kvp_shard_info,
}

/// `kvp_shard_info` (cache.h, since 1.4): which slice of a sharded config a cache or blob holds;
/// an output struct.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct kvp_shard_info {
    pub struct_size: u32,
    pub _reserved: u32,
    pub tp_rank: i32,
    pub tp_size: i32,
    pub dp_rank: i32,
    pub dp_size: i32,
    pub slot_begin: i64,
    pub slot_end: i64,
    pub head_begin: i64,
    pub head_end: i64,
    pub key_head_begin: i64,
    pub key_head_end: i64,
    pub value_head_begin: i64,
    pub value_head_end: i64,
    pub page_begin: i64,
    pub page_end: i64,
    pub global_pages: i64,
}

/// `kvp_blob_ref` (serialize.h, since 1.4): one blob of a set given to
/// `kvp_deserialize_shards_into`, in memory or in a file (exactly one of `data` and `path`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct kvp_blob_ref {
    pub data: *const c_void,
    pub size: usize,
    pub path: *const c_char,
}

/// `kvp_attention_options` (attention.h, since 1.1); zero means default for every field.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct kvp_attention_options {
    pub struct_size: u32,
    pub abi_version: u32,
    pub softmax_scale: f32,
    pub logits_soft_cap: f32,
    pub sliding_window: i32,
    pub k_scale: f32,
    pub v_scale: f32,
    pub num_sinks: u32,
    pub sinks: *const f32,
}

// ---- Callbacks (they must not unwind: no Rust panic may cross them) ----

/// `kvp_misuse_fn` (status.h).
pub type kvp_misuse_fn = Option<unsafe extern "C" fn(what: *const c_char, user_data: *mut c_void)>;
/// `kvp_write_fn` (serialize.h): 0 to continue, anything else stops with `KVP_ERR_IO`.
pub type kvp_write_fn = Option<unsafe extern "C" fn(data: *const c_void, size: usize, user_data: *mut c_void) -> i32>;
/// `kvp_read_fn` (serialize.h): 0 with `*read_out == 0` is the end of input.
pub type kvp_read_fn =
    Option<unsafe extern "C" fn(dst: *mut c_void, size: usize, read_out: *mut usize, user_data: *mut c_void) -> i32>;
/// `kvp_get_api_fn` (plugin.h), the type of `kvp_get_api`.
pub type kvp_get_api_fn = Option<unsafe extern "C" fn(requested_version: u32) -> *const kvp_api_v1>;

// ---- DLPack 0.6 (dlpack/dlpack.h), as used by kvp_cache_export_dlpack ----

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DLDevice {
    pub device_type: c_int,
    pub device_id: c_int,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DLDataType {
    pub code: u8,
    pub bits: u8,
    pub lanes: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DLTensor {
    pub data: *mut c_void,
    pub device: DLDevice,
    pub ndim: c_int,
    pub dtype: DLDataType,
    pub shape: *mut i64,
    pub strides: *mut i64,
    pub byte_offset: u64,
}

#[repr(C)]
pub struct DLManagedTensor {
    pub dl_tensor: DLTensor,
    pub manager_ctx: *mut c_void,
    pub deleter: Option<unsafe extern "C" fn(self_: *mut DLManagedTensor)>,
}

pub const K_DL_CPU: c_int = 1;
pub const K_DL_CUDA: c_int = 2;
pub const K_DL_UINT: u8 = 1;
pub const K_DL_FLOAT: u8 = 2;
pub const K_DL_BFLOAT: u8 = 4;

/// `kvp_api_v1` (plugin.h): the function table of `kvp_get_api`, for hosts that `dlopen`
/// kvpages. Fields are append-only; check `struct_size` before reading a field newer than 1.0.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct kvp_api_v1 {
    pub struct_size: u32,
    pub api_version: u32,
    pub status_name: Option<unsafe extern "C" fn(status: kvp_status) -> *const c_char>,
    pub last_error_message: Option<unsafe extern "C" fn() -> *const c_char>,
    pub last_error_copy: Option<unsafe extern "C" fn(buf: *mut c_char, cap: usize) -> usize>,
    pub set_misuse_handler: Option<unsafe extern "C" fn(fn_: kvp_misuse_fn, user_data: *mut c_void)>,
    pub version_number: Option<unsafe extern "C" fn() -> u32>,
    pub version_string: Option<unsafe extern "C" fn() -> *const c_char>,
    pub build_info: Option<unsafe extern "C" fn() -> *const c_char>,
    pub check_abi: Option<unsafe extern "C" fn(header_version_number: u32) -> kvp_status>,
    pub dtype_from_string: Option<unsafe extern "C" fn(name: *const c_char, out: *mut kvp_dtype) -> kvp_status>,
    pub dtype_name: Option<unsafe extern "C" fn(dtype: kvp_dtype) -> *const c_char>,
    pub dtype_bits: Option<unsafe extern "C" fn(dtype: kvp_dtype) -> u32>,
    pub layout_from_string: Option<unsafe extern "C" fn(name: *const c_char, out: *mut kvp_layout) -> kvp_status>,
    pub layout_name: Option<unsafe extern "C" fn(layout: kvp_layout) -> *const c_char>,
    pub cdiv: Option<unsafe extern "C" fn(a: i64, b: i64, out: *mut i64) -> kvp_status>,
    pub align_to_multiple: Option<unsafe extern "C" fn(v: i64, m: i64, out: *mut i64) -> kvp_status>,
    pub previous_power_of_2: Option<unsafe extern "C" fn(n: i64) -> i64>,
    pub dtype_packing: Option<unsafe extern "C" fn(dtype: kvp_dtype, out: *mut i64) -> kvp_status>,
    pub page_size_bytes: Option<
        unsafe extern "C" fn(
            page_size: i64,
            num_kv_heads: i64,
            head_size: i64,
            dtype: kvp_dtype,
            out: *mut i64,
        ) -> kvp_status,
    >,
    pub num_slices_per_kv_cache_update_page:
        Option<unsafe extern "C" fn(page_size_bytes: i64, out: *mut i64) -> kvp_status>,
    pub config_init: Option<unsafe extern "C" fn(cfg: *mut kvp_config, struct_size: u32) -> kvp_status>,
    pub config_validate: Option<unsafe extern "C" fn(cfg: *const kvp_config) -> kvp_status>,
    pub hbm_budget_bytes: Option<
        unsafe extern "C" fn(
            stats: *const kvp_memory_stats,
            num_stats: u32,
            utilization: f64,
            mode: u32,
            safety_margin_bytes: i64,
            out: *mut i64,
        ) -> kvp_status,
    >,
    pub device_memory_stats: Option<
        unsafe extern "C" fn(device_type: kvp_device_type, device_id: i32, out: *mut kvp_memory_stats) -> kvp_status,
    >,
    pub config_options_init:
        Option<unsafe extern "C" fn(opts: *mut kvp_config_options, struct_size: u32) -> kvp_status>,
    pub config_create:
        Option<unsafe extern "C" fn(opts: *const kvp_config_options, out: *mut kvp_config) -> kvp_status>,
    pub config_get_layout:
        Option<unsafe extern "C" fn(cfg: *const kvp_config, out: *mut kvp_layout_info) -> kvp_status>,
    pub config_padded_num_slices: Option<
        unsafe extern "C" fn(cfg: *const kvp_config, num_tokens: i64, max_num_reqs: i64, out: *mut i64) -> kvp_status,
    >,
    pub config_plan: Option<unsafe extern "C" fn(cfg: *const kvp_config, out: *mut kvp_plan) -> kvp_status>,
    pub cache_options_init: Option<unsafe extern "C" fn(opts: *mut kvp_cache_options, struct_size: u32) -> kvp_status>,
    pub cache_create: Option<
        unsafe extern "C" fn(
            cfg: *const kvp_config,
            opts: *const kvp_cache_options,
            out: *mut *mut kvp_cache,
        ) -> kvp_status,
    >,
    pub cache_destroy: Option<unsafe extern "C" fn(cache: *mut kvp_cache) -> kvp_status>,
    pub cache_get_config: Option<unsafe extern "C" fn(cache: *const kvp_cache, out: *mut kvp_config) -> kvp_status>,
    pub cache_get_layout:
        Option<unsafe extern "C" fn(cache: *const kvp_cache, out: *mut kvp_layout_info) -> kvp_status>,
    pub cache_get_device: Option<
        unsafe extern "C" fn(
            cache: *const kvp_cache,
            device_type_out: *mut kvp_device_type,
            device_id_out: *mut i32,
        ) -> kvp_status,
    >,
    pub cache_get_view: Option<
        unsafe extern "C" fn(
            cache: *const kvp_cache,
            layer: u32,
            kind: kvp_view_kind,
            out: *mut kvp_tensor,
        ) -> kvp_status,
    >,
    pub cache_get_async_error:
        Option<unsafe extern "C" fn(cache: *const kvp_cache, out: *mut kvp_status) -> kvp_status>,
    pub cache_clear_async_error: Option<unsafe extern "C" fn(cache: *mut kvp_cache) -> kvp_status>,
    pub metadata_desc_init: Option<unsafe extern "C" fn(desc: *mut kvp_metadata_desc, struct_size: u32) -> kvp_status>,
    pub metadata_create:
        Option<unsafe extern "C" fn(desc: *const kvp_metadata_desc, out: *mut *mut kvp_metadata) -> kvp_status>,
    pub metadata_create_empty: Option<
        unsafe extern "C" fn(
            version: kvp_layout,
            num_tokens: i64,
            max_num_reqs: i64,
            max_pages: i64,
            page_size: i64,
            out: *mut *mut kvp_metadata,
        ) -> kvp_status,
    >,
    pub metadata_destroy: Option<unsafe extern "C" fn(metadata: *mut kvp_metadata) -> kvp_status>,
    pub metadata_get_array: Option<
        unsafe extern "C" fn(
            metadata: *const kvp_metadata,
            field: kvp_metadata_field,
            data_out: *mut *const i32,
            len_out: *mut i64,
        ) -> kvp_status,
    >,
    pub metadata_get_desc:
        Option<unsafe extern "C" fn(metadata: *const kvp_metadata, out: *mut kvp_metadata_desc) -> kvp_status>,
    pub batch_options_init: Option<unsafe extern "C" fn(opts: *mut kvp_batch_options, struct_size: u32) -> kvp_status>,
    pub metadata_build: Option<
        unsafe extern "C" fn(
            cfg: *const kvp_config,
            requests: *const kvp_batch_request,
            num_requests: u32,
            opts: *const kvp_batch_options,
            order_out: *mut i32,
            out: *mut *mut kvp_metadata,
        ) -> kvp_status,
    >,
    pub concatenate: Option<
        unsafe extern "C" fn(
            cache: *mut kvp_cache,
            layer: u32,
            key: *const kvp_tensor,
            value: *const kvp_tensor,
            metadata: *const kvp_metadata,
            stream: kvp_stream,
        ) -> kvp_status,
    >,
    pub pool_options_init: Option<unsafe extern "C" fn(opts: *mut kvp_pool_options, struct_size: u32) -> kvp_status>,
    pub pool_create: Option<
        unsafe extern "C" fn(
            cache: *mut kvp_cache,
            opts: *const kvp_pool_options,
            out: *mut *mut kvp_pool,
        ) -> kvp_status,
    >,
    pub pool_destroy: Option<unsafe extern "C" fn(pool: *mut kvp_pool) -> kvp_status>,
    pub pool_add_sequence: Option<
        unsafe extern "C" fn(
            pool: *mut kvp_pool,
            tokens: *const i32,
            num_tokens: usize,
            salt: u64,
            flags: u32,
            seq_out: *mut kvp_seq_id,
            reused_tokens_out: *mut usize,
        ) -> kvp_status,
    >,
    pub pool_append: Option<
        unsafe extern "C" fn(
            pool: *mut kvp_pool,
            seq: kvp_seq_id,
            tokens: *const i32,
            num_tokens: usize,
            stream: kvp_stream,
        ) -> kvp_status,
    >,
    pub pool_set_computed:
        Option<unsafe extern "C" fn(pool: *mut kvp_pool, seq: kvp_seq_id, num_tokens: usize) -> kvp_status>,
    pub pool_truncate:
        Option<unsafe extern "C" fn(pool: *mut kvp_pool, seq: kvp_seq_id, new_length: usize) -> kvp_status>,
    pub pool_fork: Option<
        unsafe extern "C" fn(
            pool: *mut kvp_pool,
            parent: kvp_seq_id,
            num_children: u32,
            children_out: *mut kvp_seq_id,
        ) -> kvp_status,
    >,
    pub pool_free_sequence: Option<unsafe extern "C" fn(pool: *mut kvp_pool, seq: kvp_seq_id) -> kvp_status>,
    pub pool_get_sequence_length: Option<
        unsafe extern "C" fn(
            pool: *const kvp_pool,
            seq: kvp_seq_id,
            length_out: *mut usize,
            computed_out: *mut usize,
        ) -> kvp_status,
    >,
    pub pool_get_page_table: Option<
        unsafe extern "C" fn(
            pool: *const kvp_pool,
            seq: kvp_seq_id,
            pages_out: *mut i32,
            capacity: usize,
            count_out: *mut usize,
        ) -> kvp_status,
    >,
    pub pool_get_slots: Option<
        unsafe extern "C" fn(
            pool: *const kvp_pool,
            seq: kvp_seq_id,
            start: usize,
            count: usize,
            slots_out: *mut i32,
        ) -> kvp_status,
    >,
    pub pool_get_batch_request:
        Option<unsafe extern "C" fn(pool: *const kvp_pool, seq: kvp_seq_id, out: *mut kvp_batch_request) -> kvp_status>,
    pub pool_get_page_state: Option<
        unsafe extern "C" fn(
            pool: *const kvp_pool,
            page: i32,
            refcount_out: *mut u32,
            flags_out: *mut u32,
        ) -> kvp_status,
    >,
    pub pool_get_stats: Option<unsafe extern "C" fn(pool: *const kvp_pool, out: *mut kvp_pool_stats) -> kvp_status>,
    pub pool_check_invariants: Option<unsafe extern "C" fn(pool: *const kvp_pool) -> kvp_status>,
    pub pool_clear_prefix_cache: Option<unsafe extern "C" fn(pool: *mut kvp_pool) -> kvp_status>,
    pub cache_copy_pages: Option<
        unsafe extern "C" fn(
            cache: *mut kvp_cache,
            src_pages: *const i32,
            dst_pages: *const i32,
            count: usize,
            stream: kvp_stream,
        ) -> kvp_status,
    >,
    pub serialize_options_init:
        Option<unsafe extern "C" fn(opts: *mut kvp_serialize_options, struct_size: u32) -> kvp_status>,
    pub serialized_size: Option<
        unsafe extern "C" fn(
            cache: *const kvp_cache,
            opts: *const kvp_serialize_options,
            out: *mut usize,
        ) -> kvp_status,
    >,
    pub serialize: Option<
        unsafe extern "C" fn(
            cache: *const kvp_cache,
            opts: *const kvp_serialize_options,
            dst: *mut c_void,
            cap: usize,
            written_out: *mut usize,
        ) -> kvp_status,
    >,
    pub serialize_to_writer: Option<
        unsafe extern "C" fn(
            cache: *const kvp_cache,
            opts: *const kvp_serialize_options,
            fn_: kvp_write_fn,
            user_data: *mut c_void,
        ) -> kvp_status,
    >,
    pub serialize_to_file: Option<
        unsafe extern "C" fn(
            cache: *const kvp_cache,
            opts: *const kvp_serialize_options,
            path: *const c_char,
        ) -> kvp_status,
    >,
    pub deserialize_options_init:
        Option<unsafe extern "C" fn(opts: *mut kvp_deserialize_options, struct_size: u32) -> kvp_status>,
    pub deserialize_new: Option<
        unsafe extern "C" fn(
            src: *const c_void,
            len: usize,
            opts: *const kvp_deserialize_options,
            out: *mut *mut kvp_cache,
        ) -> kvp_status,
    >,
    pub deserialize_new_from_reader: Option<
        unsafe extern "C" fn(
            fn_: kvp_read_fn,
            user_data: *mut c_void,
            opts: *const kvp_deserialize_options,
            out: *mut *mut kvp_cache,
        ) -> kvp_status,
    >,
    pub deserialize_new_from_file: Option<
        unsafe extern "C" fn(
            path: *const c_char,
            opts: *const kvp_deserialize_options,
            out: *mut *mut kvp_cache,
        ) -> kvp_status,
    >,
    pub deserialize_into: Option<
        unsafe extern "C" fn(
            cache: *mut kvp_cache,
            src: *const c_void,
            len: usize,
            dst_page_ids: *const i32,
            num_dst_page_ids: u32,
        ) -> kvp_status,
    >,
    pub deserialize_into_from_reader: Option<
        unsafe extern "C" fn(
            cache: *mut kvp_cache,
            fn_: kvp_read_fn,
            user_data: *mut c_void,
            dst_page_ids: *const i32,
            num_dst_page_ids: u32,
        ) -> kvp_status,
    >,
    pub deserialize_into_from_file: Option<
        unsafe extern "C" fn(
            cache: *mut kvp_cache,
            path: *const c_char,
            dst_page_ids: *const i32,
            num_dst_page_ids: u32,
        ) -> kvp_status,
    >,
    pub serialized_inspect: Option<
        unsafe extern "C" fn(src: *const c_void, len: usize, flags: u32, out: *mut kvp_serialized_info) -> kvp_status,
    >,
    pub serialized_inspect_file:
        Option<unsafe extern "C" fn(path: *const c_char, flags: u32, out: *mut kvp_serialized_info) -> kvp_status>,
    pub config_to_json: Option<
        unsafe extern "C" fn(
            cfg: *const kvp_config,
            buf: *mut c_char,
            cap: usize,
            written_out: *mut usize,
        ) -> kvp_status,
    >,
    pub config_from_json:
        Option<unsafe extern "C" fn(json: *const c_char, len: usize, out: *mut kvp_config) -> kvp_status>,
    pub metadata_to_json: Option<
        unsafe extern "C" fn(
            metadata: *const kvp_metadata,
            buf: *mut c_char,
            cap: usize,
            written_out: *mut usize,
        ) -> kvp_status,
    >,
    pub metadata_from_json:
        Option<unsafe extern "C" fn(json: *const c_char, len: usize, out: *mut *mut kvp_metadata) -> kvp_status>,
    pub device_count: Option<unsafe extern "C" fn(out: *mut i32) -> kvp_status>,
    pub cache_read_layer: Option<
        unsafe extern "C" fn(
            cache: *const kvp_cache,
            layer: u32,
            host_dst: *mut c_void,
            cap: usize,
            stream: kvp_stream,
        ) -> kvp_status,
    >,
    pub cache_write_layer: Option<
        unsafe extern "C" fn(
            cache: *mut kvp_cache,
            layer: u32,
            host_src: *const c_void,
            size: usize,
            stream: kvp_stream,
        ) -> kvp_status,
    >,
    pub cache_export_dlpack: Option<
        unsafe extern "C" fn(
            cache: *mut kvp_cache,
            layer: u32,
            kind: kvp_view_kind,
            flags: u32,
            out: *mut *mut DLManagedTensor,
        ) -> kvp_status,
    >,
    pub set_host_allocator: Option<unsafe extern "C" fn(allocator: *const kvp_host_allocator) -> kvp_status>,
    pub attention_options_init:
        Option<unsafe extern "C" fn(opts: *mut kvp_attention_options, struct_size: u32) -> kvp_status>,
    pub attention: Option<
        unsafe extern "C" fn(
            cache: *mut kvp_cache,
            layer: u32,
            queries: *const kvp_tensor,
            keys: *const kvp_tensor,
            values: *const kvp_tensor,
            metadata: *const kvp_metadata,
            opts: *const kvp_attention_options,
            out: *const kvp_tensor,
            stream: kvp_stream,
        ) -> kvp_status,
    >,
    pub convert: Option<
        unsafe extern "C" fn(
            src: *const c_void,
            src_dtype: kvp_dtype,
            dst: *mut c_void,
            dst_dtype: kvp_dtype,
            count: usize,
        ) -> kvp_status,
    >,
    pub config_get_shard: Option<
        unsafe extern "C" fn(cfg: *const kvp_config, tp_rank: i32, dp_rank: i32, out: *mut kvp_shard_info) -> kvp_status,
    >,
    pub cache_create_shard: Option<
        unsafe extern "C" fn(
            cfg: *const kvp_config,
            tp_rank: i32,
            dp_rank: i32,
            opts: *const kvp_cache_options,
            out: *mut *mut kvp_cache,
        ) -> kvp_status,
    >,
    pub cache_get_shard: Option<unsafe extern "C" fn(cache: *const kvp_cache, out: *mut kvp_shard_info) -> kvp_status>,
    pub deserialize_shards_into: Option<
        unsafe extern "C" fn(cache: *mut kvp_cache, blobs: *const kvp_blob_ref, num_blobs: u32) -> kvp_status,
    >,
    pub pool_get_sequence_shard:
        Option<unsafe extern "C" fn(pool: *const kvp_pool, seq: kvp_seq_id, shard_out: *mut u32) -> kvp_status>,
    pub pool_get_shard_stats: Option<
        unsafe extern "C" fn(pool: *const kvp_pool, shard: u32, out: *mut kvp_pool_shard_stats) -> kvp_status,
    >,
    pub cache_group_create: Option<
        unsafe extern "C" fn(
            cfg: *const kvp_config,
            device_ids: *const i32,
            num_device_ids: u32,
            opts: *const kvp_cache_options,
            out: *mut *mut kvp_cache_group,
        ) -> kvp_status,
    >,
    pub cache_group_destroy: Option<unsafe extern "C" fn(group: *mut kvp_cache_group) -> kvp_status>,
    pub cache_group_get_num_shards:
        Option<unsafe extern "C" fn(group: *const kvp_cache_group, out: *mut u32) -> kvp_status>,
    pub cache_group_get_shard: Option<
        unsafe extern "C" fn(
            group: *const kvp_cache_group,
            tp_rank: i32,
            dp_rank: i32,
            out: *mut *mut kvp_cache,
        ) -> kvp_status,
    >,
    pub cache_group_concatenate: Option<
        unsafe extern "C" fn(
            group: *mut kvp_cache_group,
            layer: u32,
            keys: *const kvp_tensor,
            values: *const kvp_tensor,
            num_shards: u32,
            metadata: *const kvp_metadata,
            streams: *const kvp_stream,
        ) -> kvp_status,
    >,
    pub pool_add_store: Option<unsafe extern "C" fn(pool: *mut kvp_pool, store: *mut kvp_store) -> kvp_status>,
    pub pool_get_tier_stats: Option<
        unsafe extern "C" fn(pool: *const kvp_pool, tier: u32, out: *mut kvp_pool_tier_stats) -> kvp_status,
    >,
    pub store_options_init: Option<unsafe extern "C" fn(opts: *mut kvp_store_options, struct_size: u32) -> kvp_status>,
    pub store_create:
        Option<unsafe extern "C" fn(vtable: *const kvp_store_vtable, out: *mut *mut kvp_store) -> kvp_status>,
    pub store_create_memory: Option<
        unsafe extern "C" fn(max_bytes: u64, opts: *const kvp_store_options, out: *mut *mut kvp_store) -> kvp_status,
    >,
    pub store_create_directory: Option<
        unsafe extern "C" fn(
            path: *const c_char,
            max_bytes: u64,
            opts: *const kvp_store_options,
            out: *mut *mut kvp_store,
        ) -> kvp_status,
    >,
    pub store_destroy: Option<unsafe extern "C" fn(store: *mut kvp_store) -> kvp_status>,
    pub store_put: Option<
        unsafe extern "C" fn(store: *mut kvp_store, key: *const kvp_store_key, data: *const c_void, size: usize)
            -> kvp_status,
    >,
    pub store_get: Option<
        unsafe extern "C" fn(
            store: *mut kvp_store,
            key: *const kvp_store_key,
            dst: *mut c_void,
            capacity: usize,
            size_out: *mut usize,
        ) -> kvp_status,
    >,
    pub store_exists: Option<
        unsafe extern "C" fn(store: *mut kvp_store, keys: *const kvp_store_key, count: usize, found_out: *mut u8)
            -> kvp_status,
    >,
    pub store_remove: Option<unsafe extern "C" fn(store: *mut kvp_store, key: *const kvp_store_key) -> kvp_status>,
    pub store_get_stats: Option<unsafe extern "C" fn(store: *mut kvp_store, out: *mut kvp_store_stats) -> kvp_status>,
    pub store_scrub:
        Option<unsafe extern "C" fn(store: *mut kvp_store, report: *mut kvp_store_scrub_report) -> kvp_status>,
    pub store_list: Option<
        unsafe extern "C" fn(
            store: *mut kvp_store,
            cursor: *mut u64,
            keys: *mut kvp_store_key,
            capacity: usize,
            count_out: *mut usize,
        ) -> kvp_status,
    >,
    pub store_block_inspect:
        Option<unsafe extern "C" fn(block: *const c_void, size: usize, out: *mut kvp_store_block_info) -> kvp_status>,
    pub pool_flush_tiers: Option<unsafe extern "C" fn(pool: *mut kvp_pool, flags: u32) -> kvp_status>,
    pub pool_save_sequence: Option<
        unsafe extern "C" fn(pool: *mut kvp_pool, seq: kvp_seq_id, dst: *mut c_void, capacity: usize, size_out: *mut usize)
            -> kvp_status,
    >,
    pub pool_save_sequence_to_file:
        Option<unsafe extern "C" fn(pool: *mut kvp_pool, seq: kvp_seq_id, path: *const c_char, flags: u32) -> kvp_status>,
    pub pool_restore_sequence: Option<
        unsafe extern "C" fn(pool: *mut kvp_pool, src: *const c_void, size: usize, flags: u32, seq_out: *mut kvp_seq_id)
            -> kvp_status,
    >,
    pub pool_restore_sequence_from_file: Option<
        unsafe extern "C" fn(pool: *mut kvp_pool, path: *const c_char, flags: u32, seq_out: *mut kvp_seq_id)
            -> kvp_status,
    >,
    pub store_create_redis: Option<
        unsafe extern "C" fn(url: *const c_char, opts: *const kvp_store_options, out: *mut *mut kvp_store) -> kvp_status,
    >,
}

extern "C" {
    // status.h
    pub fn kvp_status_name(status: kvp_status) -> *const c_char;
    pub fn kvp_last_error_message() -> *const c_char;
    pub fn kvp_last_error_copy(buf: *mut c_char, cap: usize) -> usize;
    pub fn kvp_set_misuse_handler(fn_: kvp_misuse_fn, user_data: *mut c_void);
    pub fn kvp_version_number() -> u32;
    pub fn kvp_version_string() -> *const c_char;
    pub fn kvp_build_info() -> *const c_char;
    pub fn kvp_check_abi(header_version_number: u32) -> kvp_status;

    // types.h
    pub fn kvp_dtype_from_string(name: *const c_char, out: *mut kvp_dtype) -> kvp_status;
    pub fn kvp_dtype_name(dtype: kvp_dtype) -> *const c_char;
    pub fn kvp_dtype_bits(dtype: kvp_dtype) -> u32;
    pub fn kvp_convert(
        src: *const c_void,
        src_dtype: kvp_dtype,
        dst: *mut c_void,
        dst_dtype: kvp_dtype,
        count: usize,
    ) -> kvp_status;
    pub fn kvp_layout_from_string(name: *const c_char, out: *mut kvp_layout) -> kvp_status;
    pub fn kvp_layout_name(layout: kvp_layout) -> *const c_char;
    pub fn kvp_cdiv(a: i64, b: i64, out: *mut i64) -> kvp_status;
    pub fn kvp_align_to_multiple(v: i64, m: i64, out: *mut i64) -> kvp_status;
    pub fn kvp_previous_power_of_2(n: i64) -> i64;
    pub fn kvp_dtype_packing(dtype: kvp_dtype, out: *mut i64) -> kvp_status;
    pub fn kvp_page_size_bytes(
        page_size: i64,
        num_kv_heads: i64,
        head_size: i64,
        dtype: kvp_dtype,
        out: *mut i64,
    ) -> kvp_status;
    pub fn kvp_num_slices_per_kv_cache_update_page(page_size_bytes: i64, out: *mut i64) -> kvp_status;

    // config.h
    pub fn kvp_config_init(cfg: *mut kvp_config, struct_size: u32) -> kvp_status;
    pub fn kvp_config_validate(cfg: *const kvp_config) -> kvp_status;
    pub fn kvp_hbm_budget_bytes(
        stats: *const kvp_memory_stats,
        num_stats: u32,
        utilization: f64,
        mode: u32,
        safety_margin_bytes: i64,
        out: *mut i64,
    ) -> kvp_status;
    pub fn kvp_device_memory_stats(
        device_type: kvp_device_type,
        device_id: i32,
        out: *mut kvp_memory_stats,
    ) -> kvp_status;
    pub fn kvp_config_options_init(opts: *mut kvp_config_options, struct_size: u32) -> kvp_status;
    pub fn kvp_config_create(opts: *const kvp_config_options, out: *mut kvp_config) -> kvp_status;
    pub fn kvp_config_get_layout(cfg: *const kvp_config, out: *mut kvp_layout_info) -> kvp_status;
    pub fn kvp_config_padded_num_slices(
        cfg: *const kvp_config,
        num_tokens: i64,
        max_num_reqs: i64,
        out: *mut i64,
    ) -> kvp_status;
    pub fn kvp_config_plan(cfg: *const kvp_config, out: *mut kvp_plan) -> kvp_status;

    // cache.h
    pub fn kvp_set_host_allocator(allocator: *const kvp_host_allocator) -> kvp_status;
    pub fn kvp_cache_options_init(opts: *mut kvp_cache_options, struct_size: u32) -> kvp_status;
    pub fn kvp_cache_create(
        cfg: *const kvp_config,
        opts: *const kvp_cache_options,
        out: *mut *mut kvp_cache,
    ) -> kvp_status;
    pub fn kvp_cache_destroy(cache: *mut kvp_cache) -> kvp_status;
    pub fn kvp_cache_get_config(cache: *const kvp_cache, out: *mut kvp_config) -> kvp_status;
    pub fn kvp_cache_get_layout(cache: *const kvp_cache, out: *mut kvp_layout_info) -> kvp_status;
    pub fn kvp_cache_get_device(
        cache: *const kvp_cache,
        device_type_out: *mut kvp_device_type,
        device_id_out: *mut i32,
    ) -> kvp_status;
    pub fn kvp_cache_get_view(
        cache: *const kvp_cache,
        layer: u32,
        kind: kvp_view_kind,
        out: *mut kvp_tensor,
    ) -> kvp_status;
    pub fn kvp_config_get_shard(cfg: *const kvp_config, tp_rank: i32, dp_rank: i32, out: *mut kvp_shard_info)
        -> kvp_status;
    pub fn kvp_cache_create_shard(
        cfg: *const kvp_config,
        tp_rank: i32,
        dp_rank: i32,
        opts: *const kvp_cache_options,
        out: *mut *mut kvp_cache,
    ) -> kvp_status;
    pub fn kvp_cache_get_shard(cache: *const kvp_cache, out: *mut kvp_shard_info) -> kvp_status;
    pub fn kvp_cache_get_async_error(cache: *const kvp_cache, out: *mut kvp_status) -> kvp_status;
    pub fn kvp_cache_clear_async_error(cache: *mut kvp_cache) -> kvp_status;

    // group.h
    pub fn kvp_cache_group_create(
        cfg: *const kvp_config,
        device_ids: *const i32,
        num_device_ids: u32,
        opts: *const kvp_cache_options,
        out: *mut *mut kvp_cache_group,
    ) -> kvp_status;
    pub fn kvp_cache_group_destroy(group: *mut kvp_cache_group) -> kvp_status;
    pub fn kvp_cache_group_get_num_shards(group: *const kvp_cache_group, out: *mut u32) -> kvp_status;
    pub fn kvp_cache_group_get_shard(
        group: *const kvp_cache_group,
        tp_rank: i32,
        dp_rank: i32,
        out: *mut *mut kvp_cache,
    ) -> kvp_status;
    pub fn kvp_cache_group_concatenate(
        group: *mut kvp_cache_group,
        layer: u32,
        keys: *const kvp_tensor,
        values: *const kvp_tensor,
        num_shards: u32,
        metadata: *const kvp_metadata,
        streams: *const kvp_stream,
    ) -> kvp_status;

    // metadata.h
    pub fn kvp_metadata_desc_init(desc: *mut kvp_metadata_desc, struct_size: u32) -> kvp_status;
    pub fn kvp_metadata_create(desc: *const kvp_metadata_desc, out: *mut *mut kvp_metadata) -> kvp_status;
    pub fn kvp_metadata_create_empty(
        version: kvp_layout,
        num_tokens: i64,
        max_num_reqs: i64,
        max_pages: i64,
        page_size: i64,
        out: *mut *mut kvp_metadata,
    ) -> kvp_status;
    pub fn kvp_metadata_destroy(metadata: *mut kvp_metadata) -> kvp_status;
    pub fn kvp_metadata_get_array(
        metadata: *const kvp_metadata,
        field: kvp_metadata_field,
        data_out: *mut *const i32,
        len_out: *mut i64,
    ) -> kvp_status;
    pub fn kvp_metadata_get_desc(metadata: *const kvp_metadata, out: *mut kvp_metadata_desc) -> kvp_status;
    pub fn kvp_batch_options_init(opts: *mut kvp_batch_options, struct_size: u32) -> kvp_status;
    pub fn kvp_metadata_build(
        cfg: *const kvp_config,
        requests: *const kvp_batch_request,
        num_requests: u32,
        opts: *const kvp_batch_options,
        order_out: *mut i32,
        out: *mut *mut kvp_metadata,
    ) -> kvp_status;

    // ops.h
    pub fn kvp_concatenate(
        cache: *mut kvp_cache,
        layer: u32,
        key: *const kvp_tensor,
        value: *const kvp_tensor,
        metadata: *const kvp_metadata,
        stream: kvp_stream,
    ) -> kvp_status;

    // pool.h
    pub fn kvp_pool_options_init(opts: *mut kvp_pool_options, struct_size: u32) -> kvp_status;
    pub fn kvp_pool_create(cache: *mut kvp_cache, opts: *const kvp_pool_options, out: *mut *mut kvp_pool)
        -> kvp_status;
    pub fn kvp_pool_destroy(pool: *mut kvp_pool) -> kvp_status;
    pub fn kvp_pool_add_sequence(
        pool: *mut kvp_pool,
        tokens: *const i32,
        num_tokens: usize,
        salt: u64,
        flags: u32,
        seq_out: *mut kvp_seq_id,
        reused_tokens_out: *mut usize,
    ) -> kvp_status;
    pub fn kvp_pool_append(
        pool: *mut kvp_pool,
        seq: kvp_seq_id,
        tokens: *const i32,
        num_tokens: usize,
        stream: kvp_stream,
    ) -> kvp_status;
    pub fn kvp_pool_set_computed(pool: *mut kvp_pool, seq: kvp_seq_id, num_tokens: usize) -> kvp_status;
    pub fn kvp_pool_truncate(pool: *mut kvp_pool, seq: kvp_seq_id, new_length: usize) -> kvp_status;
    pub fn kvp_pool_fork(
        pool: *mut kvp_pool,
        parent: kvp_seq_id,
        num_children: u32,
        children_out: *mut kvp_seq_id,
    ) -> kvp_status;
    pub fn kvp_pool_free_sequence(pool: *mut kvp_pool, seq: kvp_seq_id) -> kvp_status;
    pub fn kvp_pool_get_sequence_length(
        pool: *const kvp_pool,
        seq: kvp_seq_id,
        length_out: *mut usize,
        computed_out: *mut usize,
    ) -> kvp_status;
    pub fn kvp_pool_get_page_table(
        pool: *const kvp_pool,
        seq: kvp_seq_id,
        pages_out: *mut i32,
        capacity: usize,
        count_out: *mut usize,
    ) -> kvp_status;
    pub fn kvp_pool_get_slots(
        pool: *const kvp_pool,
        seq: kvp_seq_id,
        start: usize,
        count: usize,
        slots_out: *mut i32,
    ) -> kvp_status;
    pub fn kvp_pool_get_batch_request(
        pool: *const kvp_pool,
        seq: kvp_seq_id,
        out: *mut kvp_batch_request,
    ) -> kvp_status;
    pub fn kvp_pool_get_page_state(
        pool: *const kvp_pool,
        page: i32,
        refcount_out: *mut u32,
        flags_out: *mut u32,
    ) -> kvp_status;
    pub fn kvp_pool_get_stats(pool: *const kvp_pool, out: *mut kvp_pool_stats) -> kvp_status;
    pub fn kvp_pool_check_invariants(pool: *const kvp_pool) -> kvp_status;
    pub fn kvp_pool_clear_prefix_cache(pool: *mut kvp_pool) -> kvp_status;
    pub fn kvp_pool_get_sequence_shard(pool: *const kvp_pool, seq: kvp_seq_id, shard_out: *mut u32) -> kvp_status;
    pub fn kvp_pool_get_shard_stats(pool: *const kvp_pool, shard: u32, out: *mut kvp_pool_shard_stats)
        -> kvp_status;
    pub fn kvp_pool_add_store(pool: *mut kvp_pool, store: *mut kvp_store) -> kvp_status;
    pub fn kvp_pool_get_tier_stats(pool: *const kvp_pool, tier: u32, out: *mut kvp_pool_tier_stats) -> kvp_status;
    pub fn kvp_pool_flush_tiers(pool: *mut kvp_pool, flags: u32) -> kvp_status;
    pub fn kvp_pool_save_sequence(
        pool: *mut kvp_pool,
        seq: kvp_seq_id,
        dst: *mut c_void,
        capacity: usize,
        size_out: *mut usize,
    ) -> kvp_status;
    pub fn kvp_pool_save_sequence_to_file(pool: *mut kvp_pool, seq: kvp_seq_id, path: *const c_char, flags: u32)
        -> kvp_status;
    pub fn kvp_pool_restore_sequence(
        pool: *mut kvp_pool,
        src: *const c_void,
        size: usize,
        flags: u32,
        seq_out: *mut kvp_seq_id,
    ) -> kvp_status;
    pub fn kvp_pool_restore_sequence_from_file(
        pool: *mut kvp_pool,
        path: *const c_char,
        flags: u32,
        seq_out: *mut kvp_seq_id,
    ) -> kvp_status;
    pub fn kvp_cache_copy_pages(
        cache: *mut kvp_cache,
        src_pages: *const i32,
        dst_pages: *const i32,
        count: usize,
        stream: kvp_stream,
    ) -> kvp_status;

    // serialize.h
    pub fn kvp_serialize_options_init(opts: *mut kvp_serialize_options, struct_size: u32) -> kvp_status;
    pub fn kvp_serialized_size(
        cache: *const kvp_cache,
        opts: *const kvp_serialize_options,
        out: *mut usize,
    ) -> kvp_status;
    pub fn kvp_serialize(
        cache: *const kvp_cache,
        opts: *const kvp_serialize_options,
        dst: *mut c_void,
        cap: usize,
        written_out: *mut usize,
    ) -> kvp_status;
    pub fn kvp_serialize_to_writer(
        cache: *const kvp_cache,
        opts: *const kvp_serialize_options,
        fn_: kvp_write_fn,
        user_data: *mut c_void,
    ) -> kvp_status;
    pub fn kvp_serialize_to_file(
        cache: *const kvp_cache,
        opts: *const kvp_serialize_options,
        path: *const c_char,
    ) -> kvp_status;
    pub fn kvp_deserialize_options_init(opts: *mut kvp_deserialize_options, struct_size: u32) -> kvp_status;
    pub fn kvp_deserialize_new(
        src: *const c_void,
        len: usize,
        opts: *const kvp_deserialize_options,
        out: *mut *mut kvp_cache,
    ) -> kvp_status;
    pub fn kvp_deserialize_new_from_reader(
        fn_: kvp_read_fn,
        user_data: *mut c_void,
        opts: *const kvp_deserialize_options,
        out: *mut *mut kvp_cache,
    ) -> kvp_status;
    pub fn kvp_deserialize_new_from_file(
        path: *const c_char,
        opts: *const kvp_deserialize_options,
        out: *mut *mut kvp_cache,
    ) -> kvp_status;
    pub fn kvp_deserialize_into(
        cache: *mut kvp_cache,
        src: *const c_void,
        len: usize,
        dst_page_ids: *const i32,
        num_dst_page_ids: u32,
    ) -> kvp_status;
    pub fn kvp_deserialize_into_from_reader(
        cache: *mut kvp_cache,
        fn_: kvp_read_fn,
        user_data: *mut c_void,
        dst_page_ids: *const i32,
        num_dst_page_ids: u32,
    ) -> kvp_status;
    pub fn kvp_deserialize_into_from_file(
        cache: *mut kvp_cache,
        path: *const c_char,
        dst_page_ids: *const i32,
        num_dst_page_ids: u32,
    ) -> kvp_status;
    pub fn kvp_serialized_inspect(
        src: *const c_void,
        len: usize,
        flags: u32,
        out: *mut kvp_serialized_info,
    ) -> kvp_status;
    pub fn kvp_serialized_inspect_file(path: *const c_char, flags: u32, out: *mut kvp_serialized_info) -> kvp_status;
    pub fn kvp_deserialize_shards_into(cache: *mut kvp_cache, blobs: *const kvp_blob_ref, num_blobs: u32)
        -> kvp_status;

    // json.h
    pub fn kvp_config_to_json(
        cfg: *const kvp_config,
        buf: *mut c_char,
        cap: usize,
        written_out: *mut usize,
    ) -> kvp_status;
    pub fn kvp_config_from_json(json: *const c_char, len: usize, out: *mut kvp_config) -> kvp_status;
    pub fn kvp_metadata_to_json(
        metadata: *const kvp_metadata,
        buf: *mut c_char,
        cap: usize,
        written_out: *mut usize,
    ) -> kvp_status;
    pub fn kvp_metadata_from_json(json: *const c_char, len: usize, out: *mut *mut kvp_metadata) -> kvp_status;

    // device.h
    pub fn kvp_device_count(out: *mut i32) -> kvp_status;
    pub fn kvp_cache_read_layer(
        cache: *const kvp_cache,
        layer: u32,
        host_dst: *mut c_void,
        cap: usize,
        stream: kvp_stream,
    ) -> kvp_status;
    pub fn kvp_cache_write_layer(
        cache: *mut kvp_cache,
        layer: u32,
        host_src: *const c_void,
        size: usize,
        stream: kvp_stream,
    ) -> kvp_status;

    // dlpack.h
    pub fn kvp_cache_export_dlpack(
        cache: *mut kvp_cache,
        layer: u32,
        kind: kvp_view_kind,
        flags: u32,
        out: *mut *mut DLManagedTensor,
    ) -> kvp_status;

    // attention.h
    pub fn kvp_attention_options_init(opts: *mut kvp_attention_options, struct_size: u32) -> kvp_status;
    pub fn kvp_attention(
        cache: *mut kvp_cache,
        layer: u32,
        queries: *const kvp_tensor,
        keys: *const kvp_tensor,
        values: *const kvp_tensor,
        metadata: *const kvp_metadata,
        opts: *const kvp_attention_options,
        out: *const kvp_tensor,
        stream: kvp_stream,
    ) -> kvp_status;

    // store.h
    pub fn kvp_store_options_init(opts: *mut kvp_store_options, struct_size: u32) -> kvp_status;
    pub fn kvp_store_create(vtable: *const kvp_store_vtable, out: *mut *mut kvp_store) -> kvp_status;
    pub fn kvp_store_create_memory(max_bytes: u64, opts: *const kvp_store_options, out: *mut *mut kvp_store)
        -> kvp_status;
    pub fn kvp_store_create_directory(
        path: *const c_char,
        max_bytes: u64,
        opts: *const kvp_store_options,
        out: *mut *mut kvp_store,
    ) -> kvp_status;
    pub fn kvp_store_destroy(store: *mut kvp_store) -> kvp_status;
    pub fn kvp_store_put(store: *mut kvp_store, key: *const kvp_store_key, data: *const c_void, size: usize)
        -> kvp_status;
    pub fn kvp_store_get(
        store: *mut kvp_store,
        key: *const kvp_store_key,
        dst: *mut c_void,
        capacity: usize,
        size_out: *mut usize,
    ) -> kvp_status;
    pub fn kvp_store_exists(store: *mut kvp_store, keys: *const kvp_store_key, count: usize, found_out: *mut u8)
        -> kvp_status;
    pub fn kvp_store_remove(store: *mut kvp_store, key: *const kvp_store_key) -> kvp_status;
    pub fn kvp_store_get_stats(store: *mut kvp_store, out: *mut kvp_store_stats) -> kvp_status;
    pub fn kvp_store_scrub(store: *mut kvp_store, report: *mut kvp_store_scrub_report) -> kvp_status;
    pub fn kvp_store_list(
        store: *mut kvp_store,
        cursor: *mut u64,
        keys: *mut kvp_store_key,
        capacity: usize,
        count_out: *mut usize,
    ) -> kvp_status;
    pub fn kvp_store_block_inspect(block: *const c_void, size: usize, out: *mut kvp_store_block_info) -> kvp_status;
    pub fn kvp_store_create_redis(url: *const c_char, opts: *const kvp_store_options, out: *mut *mut kvp_store)
        -> kvp_status; // since 1.5

    // plugin.h
    pub fn kvp_get_api(requested_version: u32) -> *const kvp_api_v1;
}
