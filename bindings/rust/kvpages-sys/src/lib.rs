//! Raw declarations of the kvpages C API (`include/kvpages/*.h`), written by hand.
//!
//! Everything here is `unsafe` to call and mirrors the C header exactly; the layout test
//! (`tests/layout.rs`) compiles a C probe against the installed headers and compares every
//! struct size and field offset. Use the safe `kvpages` crate unless you need the raw API.
#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_int, c_void};

pub type kvp_status = i32;
pub type kvp_dtype = u32;
pub type kvp_layout = u32;
pub type kvp_device_type = i32;
pub type kvp_view_kind = u32;
pub type kvp_stream = *mut c_void;

pub const KVP_OK: kvp_status = 0;
pub const KVP_ERR_INVALID_ARGUMENT: kvp_status = 1;
pub const KVP_ERR_INVALID_HANDLE: kvp_status = 2;
pub const KVP_ERR_NOT_FOUND: kvp_status = 3;
pub const KVP_ERR_VERSION_MISMATCH: kvp_status = 4;
pub const KVP_ERR_UNSUPPORTED: kvp_status = 5;
pub const KVP_ERR_BUFFER_TOO_SMALL: kvp_status = 6;
pub const KVP_ERR_OUT_OF_MEMORY: kvp_status = 64;
pub const KVP_ERR_OUT_OF_PAGES: kvp_status = 65;
pub const KVP_ERR_IO: kvp_status = 66;
pub const KVP_ERR_DEVICE: kvp_status = 128;
pub const KVP_ERR_DEVICE_LOST: kvp_status = 129;
pub const KVP_ERR_NO_DEVICE: kvp_status = 130;
pub const KVP_ERR_DEVICE_OUT_OF_MEMORY: kvp_status = 131;
pub const KVP_ERR_INTERNAL: kvp_status = 255;

/// The header version these declarations were written against (1.1.0: `kvp_attention`).
pub const KVP_VERSION_NUMBER: u32 = 10100;

pub const KVP_DTYPE_F32: kvp_dtype = 1;
pub const KVP_DTYPE_F16: kvp_dtype = 2;
pub const KVP_DTYPE_BF16: kvp_dtype = 3;
pub const KVP_DTYPE_F8_E4M3FN: kvp_dtype = 4;
pub const KVP_DTYPE_F8_E5M2: kvp_dtype = 5;
pub const KVP_LAYOUT_DEFAULT: kvp_layout = 0;
pub const KVP_LAYOUT_V2: kvp_layout = 2;
pub const KVP_LAYOUT_V3: kvp_layout = 3;
pub const KVP_DEVICE_CPU: kvp_device_type = 1;
pub const KVP_DEVICE_CUDA: kvp_device_type = 2;
pub const KVP_MAX_DIMS: usize = 6;
pub const KVP_VIEW_PAGES: kvp_view_kind = 0;
pub const KVP_VIEW_FLAT: kvp_view_kind = 1;
pub const KVP_VIEW_KEYS: kvp_view_kind = 2;
pub const KVP_VIEW_VALUES: kvp_view_kind = 3;
pub const KVP_VIEW_REFERENCE_KEYS: kvp_view_kind = 4;
pub const KVP_VIEW_REFERENCE_VALUES: kvp_view_kind = 5;
pub const KVP_CONFIG_VERSION: u32 = 1;
pub const KVP_CONFIG_OPTIONS_VERSION: u32 = 1;
pub const KVP_CACHE_OPTIONS_VERSION: u32 = 1;
pub const KVP_BATCH_OPTIONS_VERSION: u32 = 1;
pub const KVP_CONFIG_FLAG_REFERENCE_BUDGET: u32 = 1 << 0;
pub const KVP_CONFIG_FLAG_NO_SAFETY_MARGIN: u32 = 1 << 1;
pub const KVP_POOL_OPTIONS_VERSION: u32 = 1;
pub const KVP_POOL_FLAG_NO_PREFIX_CACHE: u32 = 1 << 0;
pub const KVP_POOL_ADD_FLAG_REUSE_ALL: u32 = 1 << 0;
pub const KVP_PAGE_FLAG_NULL: u32 = 1 << 0;
pub const KVP_PAGE_FLAG_FREE: u32 = 1 << 1;
pub const KVP_PAGE_FLAG_INDEXED: u32 = 1 << 2;
pub const KVP_ATTENTION_OPTIONS_VERSION: u32 = 1;

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
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct kvp_memory_stats {
    pub bytes_limit: i64,
    pub bytes_reservable_limit: i64,
    pub bytes_total: i64,
    pub bytes_in_use: i64,
    pub bytes_reserved: i64,
    pub valid: u32,
    pub _reserved: u32,
}

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
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct kvp_host_allocator {
    pub alloc: Option<unsafe extern "C" fn(user_data: *mut c_void, size: usize, align: usize) -> *mut c_void>,
    pub free: Option<unsafe extern "C" fn(user_data: *mut c_void, ptr: *mut c_void)>,
    pub user_data: *mut c_void,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct kvp_cache_options {
    pub struct_size: u32,
    pub abi_version: u32,
    pub device_type: kvp_device_type,
    pub device_id: i32,
    pub allocator: *const kvp_host_allocator,
}

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

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
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

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct kvp_batch_request {
    pub num_computed: i64,
    pub num_scheduled: i64,
    pub page_ids: *const i32,
    pub num_pages: i64,
}

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

/// Opaque cache handle (`kvp_cache`).
#[repr(C)]
pub struct kvp_cache {
    _private: [u8; 0],
}

/// Opaque runtime-metadata handle (`kvp_metadata`).
#[repr(C)]
pub struct kvp_metadata {
    _private: [u8; 0],
}

/// Opaque page-pool handle (`kvp_pool`, kvpages/pool.h).
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

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct kvp_pool_options {
    pub struct_size: u32,
    pub abi_version: u32,
    pub max_sequences: u32,
    pub flags: u32,
    pub allocator: *const kvp_host_allocator,
}

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

/// Options of `kvp_attention` (kvpages/attention.h, since 1.1); zero means default for every field.
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

// DLPack 0.6 (dlpack/dlpack.h), as used by kvp_cache_export_dlpack.
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

extern "C" {
    pub fn kvp_status_name(status: kvp_status) -> *const c_char;
    pub fn kvp_last_error_message() -> *const c_char;
    pub fn kvp_last_error_copy(buf: *mut c_char, cap: usize) -> usize;
    pub fn kvp_version_number() -> u32;
    pub fn kvp_version_string() -> *const c_char;
    pub fn kvp_build_info() -> *const c_char;
    pub fn kvp_check_abi(header_version_number: u32) -> kvp_status;

    pub fn kvp_dtype_bits(dtype: kvp_dtype) -> u32;
    pub fn kvp_cdiv(a: i64, b: i64, out: *mut i64) -> kvp_status;

    pub fn kvp_config_init(cfg: *mut kvp_config, struct_size: u32) -> kvp_status;
    pub fn kvp_config_validate(cfg: *const kvp_config) -> kvp_status;
    pub fn kvp_config_options_init(opts: *mut kvp_config_options, struct_size: u32) -> kvp_status;
    pub fn kvp_config_create(opts: *const kvp_config_options, out: *mut kvp_config) -> kvp_status;
    pub fn kvp_config_get_layout(cfg: *const kvp_config, out: *mut kvp_layout_info) -> kvp_status;

    pub fn kvp_cache_options_init(opts: *mut kvp_cache_options, struct_size: u32) -> kvp_status;
    pub fn kvp_cache_create(cfg: *const kvp_config, opts: *const kvp_cache_options, out: *mut *mut kvp_cache)
        -> kvp_status;
    pub fn kvp_cache_destroy(cache: *mut kvp_cache) -> kvp_status;
    pub fn kvp_cache_get_config(cache: *const kvp_cache, out: *mut kvp_config) -> kvp_status;
    pub fn kvp_cache_get_layout(cache: *const kvp_cache, out: *mut kvp_layout_info) -> kvp_status;
    pub fn kvp_cache_get_view(cache: *const kvp_cache, layer: u32, kind: kvp_view_kind, out: *mut kvp_tensor)
        -> kvp_status;
    pub fn kvp_cache_export_dlpack(cache: *mut kvp_cache, layer: u32, kind: kvp_view_kind, flags: u32,
                                   out: *mut *mut DLManagedTensor) -> kvp_status;
    pub fn kvp_device_count(out: *mut i32) -> kvp_status;
    pub fn kvp_cache_read_layer(cache: *const kvp_cache, layer: u32, host_dst: *mut c_void, cap: usize,
                                stream: kvp_stream) -> kvp_status;
    pub fn kvp_cache_write_layer(cache: *mut kvp_cache, layer: u32, host_src: *const c_void, size: usize,
                                 stream: kvp_stream) -> kvp_status;

    pub fn kvp_batch_options_init(opts: *mut kvp_batch_options, struct_size: u32) -> kvp_status;
    pub fn kvp_metadata_build(cfg: *const kvp_config, requests: *const kvp_batch_request, num_requests: u32,
                              opts: *const kvp_batch_options, order_out: *mut i32, out: *mut *mut kvp_metadata)
        -> kvp_status;
    pub fn kvp_metadata_create_empty(version: kvp_layout, num_tokens: i64, max_num_reqs: i64, max_pages: i64,
                                     page_size: i64, out: *mut *mut kvp_metadata) -> kvp_status;
    pub fn kvp_metadata_destroy(metadata: *mut kvp_metadata) -> kvp_status;

    pub fn kvp_concatenate(cache: *mut kvp_cache, layer: u32, key: *const kvp_tensor, value: *const kvp_tensor,
                           metadata: *const kvp_metadata, stream: kvp_stream) -> kvp_status;

    // Since 1.1 (symbol node KVPAGES_1.1).
    pub fn kvp_attention_options_init(opts: *mut kvp_attention_options, struct_size: u32) -> kvp_status;
    pub fn kvp_attention(cache: *mut kvp_cache, layer: u32, queries: *const kvp_tensor, keys: *const kvp_tensor,
                         values: *const kvp_tensor, metadata: *const kvp_metadata,
                         opts: *const kvp_attention_options, out: *const kvp_tensor, stream: kvp_stream)
        -> kvp_status;

    pub fn kvp_pool_options_init(opts: *mut kvp_pool_options, struct_size: u32) -> kvp_status;
    pub fn kvp_pool_create(cache: *mut kvp_cache, opts: *const kvp_pool_options, out: *mut *mut kvp_pool)
        -> kvp_status;
    pub fn kvp_pool_destroy(pool: *mut kvp_pool) -> kvp_status;
    pub fn kvp_pool_add_sequence(pool: *mut kvp_pool, tokens: *const i32, num_tokens: usize, salt: u64, flags: u32,
                                 seq_out: *mut kvp_seq_id, reused_tokens_out: *mut usize) -> kvp_status;
    pub fn kvp_pool_append(pool: *mut kvp_pool, seq: kvp_seq_id, tokens: *const i32, num_tokens: usize,
                           stream: kvp_stream) -> kvp_status;
    pub fn kvp_pool_set_computed(pool: *mut kvp_pool, seq: kvp_seq_id, num_tokens: usize) -> kvp_status;
    pub fn kvp_pool_truncate(pool: *mut kvp_pool, seq: kvp_seq_id, new_length: usize) -> kvp_status;
    pub fn kvp_pool_fork(pool: *mut kvp_pool, parent: kvp_seq_id, num_children: u32, children_out: *mut kvp_seq_id)
        -> kvp_status;
    pub fn kvp_pool_free_sequence(pool: *mut kvp_pool, seq: kvp_seq_id) -> kvp_status;
    pub fn kvp_pool_get_sequence_length(pool: *const kvp_pool, seq: kvp_seq_id, length_out: *mut usize,
                                        computed_out: *mut usize) -> kvp_status;
    pub fn kvp_pool_get_page_table(pool: *const kvp_pool, seq: kvp_seq_id, pages_out: *mut i32, capacity: usize,
                                   count_out: *mut usize) -> kvp_status;
    pub fn kvp_pool_get_slots(pool: *const kvp_pool, seq: kvp_seq_id, start: usize, count: usize,
                              slots_out: *mut i32) -> kvp_status;
    pub fn kvp_pool_get_batch_request(pool: *const kvp_pool, seq: kvp_seq_id, out: *mut kvp_batch_request)
        -> kvp_status;
    pub fn kvp_pool_get_page_state(pool: *const kvp_pool, page: i32, refcount_out: *mut u32, flags_out: *mut u32)
        -> kvp_status;
    pub fn kvp_pool_get_stats(pool: *const kvp_pool, out: *mut kvp_pool_stats) -> kvp_status;
    pub fn kvp_pool_check_invariants(pool: *const kvp_pool) -> kvp_status;
    pub fn kvp_pool_clear_prefix_cache(pool: *mut kvp_pool) -> kvp_status;
    pub fn kvp_cache_copy_pages(cache: *mut kvp_cache, src_pages: *const i32, dst_pages: *const i32, count: usize,
                                stream: kvp_stream) -> kvp_status;
}
