"""The C ABI through ctypes: loading libkvpages, the structs (layouts checked against the C
compiler by tests/test_kvpages.py) and every function prototype. Internal: the public API is in
the other modules."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any, Callable, List, Optional

_i32, _u32, _i64, _u64, _f64 = ctypes.c_int32, ctypes.c_uint32, ctypes.c_int64, ctypes.c_uint64, ctypes.c_double
_f32, _u8, _vp, _cp, _size = ctypes.c_float, ctypes.c_uint8, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
_P = ctypes.POINTER
MAX_DIMS = 6

#: KVP_VERSION_NUMBER of the headers these bindings were written against (1.5.0: storage tiers).
BINDING_VERSION_NUMBER = 10500

#: KVP_SERIALIZE_FLAG_NO_SYNC (serialize.h, since 1.3): kvp_serialize_options.flags bit.
SERIALIZE_FLAG_NO_SYNC = 1

#: KVP_METADATA_FLAG_IMMUTABLE (metadata.h, since 1.3): kvp_metadata_desc.flags bit.
METADATA_FLAG_IMMUTABLE = 1


# ---------------------------------------------------------------------------------------------
# Structs

class kvp_config(ctypes.Structure):
    _fields_ = [("struct_size", _u32), ("abi_version", _u32), ("num_hidden_layers", _i64),
                ("max_model_length", _i64), ("num_kv_heads", _i64), ("k_headdim", _i64), ("v_headdim", _i64),
                ("hbm_utilization", _f64), ("page_size", _i64), ("num_pages", _i64),
                ("max_num_pages_per_req", _i64), ("num_slices_per_kv_cache_update_page", _i64),
                ("max_num_tokens", _i64), ("max_num_reqs", _i64), ("version", _u32), ("kvdtype", _u32),
                ("data_parallel_size", _i64), ("kv_head_shards", _i64), ("requested_kv_head_shards", _i64),
                ("requested_kvdtype", _u32), ("_reserved1", _u32)]  # since 1.3: sharding


class kvp_memory_stats(ctypes.Structure):
    _fields_ = [("bytes_limit", _i64), ("bytes_reservable_limit", _i64), ("bytes_total", _i64),
                ("bytes_in_use", _i64), ("bytes_reserved", _i64), ("valid", _u32), ("_reserved", _u32)]


class kvp_config_options(ctypes.Structure):
    _fields_ = [("struct_size", _u32), ("abi_version", _u32), ("num_hidden_layers", _i64), ("num_kv_heads", _i64),
                ("max_model_length", _i64), ("kv_head_dim_size", _i64), ("k_headdim", _i64), ("v_headdim", _i64),
                ("hbm_utilization", _f64), ("page_size", _i64), ("kvdtype", _u32), ("version", _u32),
                ("budget_mode", _u32), ("flags", _u32), ("budget_bytes", _i64), ("safety_margin_bytes", _i64),
                ("memory_stats", _P(kvp_memory_stats)), ("num_memory_stats", _u32), ("device_type", _i32),
                ("device_id", _i32), ("_reserved0", _u32), ("kv_head_shards", _i64), ("max_num_tokens", _i64),
                ("max_num_reqs", _i64), ("data_parallel_size", _i64)]  # data_parallel_size: since 1.3


class kvp_layout_info(ctypes.Structure):
    _fields_ = [("struct_size", _u32), ("is_h64", _u32), ("kv_head_packing", _i64),
                ("storage_num_combined_kv_heads", _i64), ("storage_num_kv_groups", _i64), ("storage_head_dim", _i64),
                ("itemsize", _i64), ("ndim", _i32), ("_reserved", _i32), ("shape", _i64 * 5), ("layer_bytes", _i64),
                ("page_bytes_per_layer", _i64), ("max_num_seqs", _i64)]


class kvp_plan(ctypes.Structure):
    _fields_ = [("struct_size", _u32), ("_reserved", _u32), ("num_pages", _i64), ("usable_pages", _i64),
                ("page_size", _i64), ("bytes_per_page", _i64), ("reference_bytes_per_page", _i64),
                ("bytes_per_token", _i64), ("total_bytes", _i64), ("token_capacity", _i64),
                ("max_concurrent_seqs", _i64), ("max_num_seqs", _i64),
                # since 1.3: the sharding resolution
                ("data_parallel_size", _i64), ("kv_head_shards", _i64), ("requested_kv_head_shards", _i64),
                ("head_sharding", _u32), ("requested_kvdtype", _u32), ("kvdtype", _u32), ("_reserved1", _u32),
                ("units_per_device", _i64), ("pages_per_device", _i64), ("bytes_per_device", _i64),
                ("sharding_message", ctypes.c_char * 224)]


class kvp_cache_options(ctypes.Structure):
    _fields_ = [("struct_size", _u32), ("abi_version", _u32), ("device_type", _i32), ("device_id", _i32),
                ("allocator", _vp), ("flags", _u32), ("_reserved", _u32)]  # flags, _reserved: since 1.2


class kvp_tensor(ctypes.Structure):
    _fields_ = [("data", _vp), ("dtype", _u32), ("ndim", _i32), ("shape", _i64 * MAX_DIMS),
                ("strides", _i64 * MAX_DIMS), ("device_type", _i32), ("device_id", _i32)]


class kvp_metadata_desc(ctypes.Structure):
    _fields_ = [("struct_size", _u32), ("abi_version", _u32), ("version", _u32), ("device_type", _i32),
                ("device_id", _i32), ("flags", _u32), ("page_size", _i64),
                ("num_slices_per_kv_cache_update_page", _i64),
                ("pages_tables", _P(_i32)), ("num_reqs", _i64), ("pages_per_req", _i64),
                ("context_lens", _P(_i32)), ("context_lens_len", _i64),
                ("query_start_loc", _P(_i32)), ("query_start_loc_len", _i64),
                ("num_seqs", _P(_i32)), ("num_seqs_len", _i64),
                ("slot_mapping", _P(_i32)), ("num_slices", _i64),
                ("num_kv_update_slices", _P(_i32)), ("num_kv_update_slices_len", _i64),
                ("request_distribution", _P(_i32)), ("request_distribution_len", _i64),
                ("position_ids", _P(_i32)), ("position_ids_len", _i64),
                ("token_starts", _P(_i32)), ("token_starts_len", _i64)]


class kvp_batch_request(ctypes.Structure):
    _fields_ = [("num_computed", _i64), ("num_scheduled", _i64), ("page_ids", _P(_i32)), ("num_pages", _i64)]


class kvp_batch_options(ctypes.Structure):
    _fields_ = [("struct_size", _u32), ("abi_version", _u32), ("max_num_reqs", _i64), ("max_num_tokens", _i64),
                ("flags", _u32), ("_reserved0", _u32)]


class kvp_seq_id(ctypes.Structure):
    _fields_ = [("id", _u32)]


class kvp_pool_options(ctypes.Structure):
    _fields_ = [("struct_size", _u32), ("abi_version", _u32), ("max_sequences", _u32), ("flags", _u32),
                ("allocator", _vp), ("write_queue_bytes", _u64)]  # write_queue_bytes: since 1.5 (abi_version 2)


class kvp_pool_stats(ctypes.Structure):
    _fields_ = [("struct_size", _u32), ("max_sequences", _u32), ("page_size", _i64),
                ("max_pages_per_sequence", _i64), ("total_pages", _i64), ("free_pages", _i64),
                ("evictable_pages", _i64), ("used_pages", _i64), ("indexed_pages", _i64), ("num_sequences", _i64),
                ("prompt_tokens", _i64), ("reused_tokens", _i64), ("evictions", _i64), ("cow_copies", _i64)]


class kvp_pool_shard_stats(ctypes.Structure):  # since 1.4
    _fields_ = [("struct_size", _u32), ("num_shards", _u32), ("first_page", _i32), ("end_page", _i32),
                ("total_pages", _i64), ("free_pages", _i64), ("evictable_pages", _i64), ("used_pages", _i64),
                ("num_sequences", _i64)]


class kvp_serialize_options(ctypes.Structure):
    _fields_ = [("struct_size", _u32), ("abi_version", _u32), ("page_ids", _P(_i32)), ("num_page_ids", _u32),
                ("flags", _u32), ("chunk_bytes", _u64)]


class kvp_deserialize_options(ctypes.Structure):
    _fields_ = [("struct_size", _u32), ("abi_version", _u32), ("cache_options", _P(kvp_cache_options)),
                ("max_cache_bytes", _u64), ("flags", _u32), ("_reserved", _u32)]


class kvp_shard_info(ctypes.Structure):  # since 1.4
    _fields_ = [("struct_size", _u32), ("_reserved", _u32), ("tp_rank", _i32), ("tp_size", _i32), ("dp_rank", _i32),
                ("dp_size", _i32), ("slot_begin", _i64), ("slot_end", _i64), ("head_begin", _i64), ("head_end", _i64),
                ("key_head_begin", _i64), ("key_head_end", _i64), ("value_head_begin", _i64),
                ("value_head_end", _i64), ("page_begin", _i64), ("page_end", _i64), ("global_pages", _i64)]


class kvp_serialized_info(ctypes.Structure):
    _fields_ = [("struct_size", _u32), ("format_major", _u32), ("format_minor", _u32), ("header_size", _u32),
                ("flags", _u64), ("writer_version", _u32), ("_reserved", _u32), ("header_checksum", _u64),
                ("num_stored_pages", _u64), ("first_page_id", _u64), ("last_page_id", _u64),
                ("page_bytes_per_layer", _u64), ("chunk_bytes", _u64), ("num_chunks", _u64),
                ("payload_bytes", _u64), ("total_bytes", _u64), ("config", kvp_config),
                ("shard", kvp_shard_info)]  # shard: since 1.4 (version 3 of the struct)


class kvp_blob_ref(ctypes.Structure):  # since 1.4
    _fields_ = [("data", _vp), ("size", _size), ("path", _cp)]


class kvp_store_key(ctypes.Structure):  # since 1.4
    _fields_ = [("bytes", _u8 * 16)]


StorePutFn = ctypes.CFUNCTYPE(_i32, _vp, _P(kvp_store_key), _vp, _size)
StoreGetFn = ctypes.CFUNCTYPE(_i32, _vp, _P(kvp_store_key), _vp, _size, _P(_size))
StoreExistsFn = ctypes.CFUNCTYPE(_i32, _vp, _P(kvp_store_key), _size, _P(_u8))
StoreRemoveFn = ctypes.CFUNCTYPE(_i32, _vp, _P(kvp_store_key))
StoreDestroyFn = ctypes.CFUNCTYPE(None, _vp)
StoreListFn = ctypes.CFUNCTYPE(_i32, _vp, _P(_u64), _P(kvp_store_key), _size, _P(_size))  # since 1.5


class kvp_store_vtable(ctypes.Structure):  # since 1.4
    _fields_ = [("struct_size", _u32), ("abi_version", _u32), ("user_data", _vp), ("put", StorePutFn),
                ("get", StoreGetFn), ("exists", StoreExistsFn), ("remove", StoreRemoveFn),
                ("destroy", StoreDestroyFn), ("list", StoreListFn)]  # list: since 1.5 (abi_version 2)


class kvp_store_options(ctypes.Structure):  # since 1.4
    _fields_ = [("struct_size", _u32), ("abi_version", _u32), ("flags", _u32), ("timeout_ms", _u32),
                ("allocator", _vp)]  # timeout_ms: since 1.5 (was _reserved)


class kvp_store_stats(ctypes.Structure):  # since 1.4
    _fields_ = [("struct_size", _u32), ("_reserved", _u32), ("blocks", _i64), ("bytes", _i64), ("max_bytes", _i64),
                ("puts", _i64), ("hits", _i64), ("misses", _i64), ("errors", _i64), ("evictions", _i64)]


class kvp_store_scrub_report(ctypes.Structure):  # since 1.4
    _fields_ = [("struct_size", _u32), ("_reserved", _u32), ("blocks_checked", _i64), ("blocks_damaged", _i64),
                ("bytes_freed", _i64)]


class kvp_store_block_info(ctypes.Structure):  # since 1.5
    _fields_ = [("struct_size", _u32), ("format_version", _u32), ("fingerprint", _u64), ("key", kvp_store_key),
                ("parent", kvp_store_key), ("salt", _u64), ("page_size", _u32), ("num_layers", _u32),
                ("page_bytes", _u64), ("block_bytes", _u64), ("checksum_ok", _u32), ("_reserved", _u32)]


class kvp_pool_tier_stats(ctypes.Structure):  # since 1.4
    _fields_ = [("struct_size", _u32), ("num_tiers", _u32), ("lookups", _i64), ("hits", _i64), ("misses", _i64),
                ("rejected", _i64), ("errors", _i64), ("restored_tokens", _i64), ("bytes_read", _i64),
                ("blocks_written", _i64), ("bytes_written", _i64), ("dropped", _i64)]  # dropped: since 1.5


class kvp_attention_options(ctypes.Structure):
    _fields_ = [("struct_size", _u32), ("abi_version", _u32), ("softmax_scale", _f32),
                ("logits_soft_cap", _f32), ("sliding_window", _i32), ("k_scale", _f32),
                ("v_scale", _f32), ("num_sinks", _u32), ("sinks", _P(_f32))]


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int), ("device_id", ctypes.c_int)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", _u8), ("bits", _u8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [("data", _vp), ("device", DLDevice), ("ndim", ctypes.c_int), ("dtype", DLDataType),
                ("shape", _P(_i64)), ("strides", _P(_i64)), ("byte_offset", _u64)]


class DLManagedTensor(ctypes.Structure):
    pass


DLDeleter = ctypes.CFUNCTYPE(None, _P(DLManagedTensor))
DLManagedTensor._fields_ = [("dl_tensor", DLTensor), ("manager_ctx", _vp), ("deleter", DLDeleter)]

#: Every struct mirrored from the headers (the layout test compares each with the C compiler).
STRUCTS = [kvp_config, kvp_memory_stats, kvp_config_options, kvp_layout_info, kvp_plan, kvp_cache_options,
           kvp_tensor, kvp_metadata_desc, kvp_batch_request, kvp_batch_options, kvp_seq_id, kvp_pool_options,
           kvp_pool_stats, kvp_pool_shard_stats, kvp_serialize_options, kvp_deserialize_options, kvp_shard_info,
           kvp_serialized_info, kvp_blob_ref, kvp_attention_options, kvp_store_key, kvp_store_vtable,
           kvp_store_options, kvp_store_stats, kvp_store_scrub_report, kvp_pool_tier_stats, kvp_store_block_info]

WriteFn = ctypes.CFUNCTYPE(_i32, _vp, _size, _vp)
ReadFn = ctypes.CFUNCTYPE(_i32, _vp, _size, _P(_size), _vp)
MisuseFn = ctypes.CFUNCTYPE(None, _cp, _vp)


# ---------------------------------------------------------------------------------------------
# Loading

#: The library file bundled in a wheel (``pip install ./bindings/python``), next to this module.
BUNDLED_LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libkvpages.so.1")


def _candidates() -> List[str]:
    """Where to look, in order: the bundled library, $KVPAGES_LIBRARY, then the system loader."""
    found = []
    if os.path.exists(BUNDLED_LIBRARY):
        found.append(BUNDLED_LIBRARY)
    if os.environ.get("KVPAGES_LIBRARY"):
        found.append(os.environ["KVPAGES_LIBRARY"])
    found.append("libkvpages.so.1")
    system = ctypes.util.find_library("kvpages")
    if system:
        found.append(system)
    return found


def _load() -> ctypes.CDLL:
    errors = []
    for path in _candidates():
        try:
            return ctypes.CDLL(path)
        except OSError as e:  # try the next candidate
            errors.append(str(e))
    raise ImportError("kvpages: cannot load libkvpages.so.1 (install the wheel with `pip install "
                      "./bindings/python`, or set KVPAGES_LIBRARY or LD_LIBRARY_PATH): " + "; ".join(errors))


library = _load()
#: The file the library was loaded from.
library_path: str = library._name


def _fn(name: str, restype: Any, *argtypes: Any) -> Callable[..., Any]:
    f = getattr(library, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


class _Lib:
    """Prototypes, looked up once: ``lib.kvp_cache_create(...)``."""


lib: Any = _Lib()
_ST = _i32  # kvp_status
_SIGNATURES = {
    "kvp_status_name": (_cp, _i32),
    "kvp_last_error_message": (_cp,),
    "kvp_last_error_copy": (_size, _cp, _size),
    "kvp_set_misuse_handler": (None, MisuseFn, _vp),
    "kvp_version_number": (_u32,),
    "kvp_version_string": (_cp,),
    "kvp_build_info": (_cp,),
    "kvp_check_abi": (_ST, _u32),
    "kvp_dtype_from_string": (_ST, _cp, _P(_u32)),
    "kvp_dtype_name": (_cp, _u32),
    "kvp_dtype_bits": (_u32, _u32),
    "kvp_layout_from_string": (_ST, _cp, _P(_u32)),
    "kvp_layout_name": (_cp, _u32),
    "kvp_cdiv": (_ST, _i64, _i64, _P(_i64)),
    "kvp_align_to_multiple": (_ST, _i64, _i64, _P(_i64)),
    "kvp_previous_power_of_2": (_i64, _i64),
    "kvp_dtype_packing": (_ST, _u32, _P(_i64)),
    "kvp_page_size_bytes": (_ST, _i64, _i64, _i64, _u32, _P(_i64)),
    "kvp_num_slices_per_kv_cache_update_page": (_ST, _i64, _P(_i64)),
    "kvp_config_init": (_ST, _P(kvp_config), _u32),
    "kvp_config_validate": (_ST, _P(kvp_config)),
    "kvp_hbm_budget_bytes": (_ST, _P(kvp_memory_stats), _u32, _f64, _u32, _i64, _P(_i64)),
    "kvp_device_memory_stats": (_ST, _i32, _i32, _P(kvp_memory_stats)),
    "kvp_config_options_init": (_ST, _P(kvp_config_options), _u32),
    "kvp_config_create": (_ST, _P(kvp_config_options), _P(kvp_config)),
    "kvp_config_get_layout": (_ST, _P(kvp_config), _P(kvp_layout_info)),
    "kvp_config_padded_num_slices": (_ST, _P(kvp_config), _i64, _i64, _P(_i64)),
    "kvp_config_plan": (_ST, _P(kvp_config), _P(kvp_plan)),
    "kvp_cache_options_init": (_ST, _P(kvp_cache_options), _u32),
    "kvp_cache_create": (_ST, _P(kvp_config), _P(kvp_cache_options), _P(_vp)),
    "kvp_cache_destroy": (_ST, _vp),
    "kvp_cache_get_config": (_ST, _vp, _P(kvp_config)),
    "kvp_cache_get_layout": (_ST, _vp, _P(kvp_layout_info)),
    "kvp_cache_get_device": (_ST, _vp, _P(_i32), _P(_i32)),
    "kvp_cache_get_view": (_ST, _vp, _u32, _u32, _P(kvp_tensor)),
    "kvp_cache_get_async_error": (_ST, _vp, _P(_i32)),
    "kvp_cache_clear_async_error": (_ST, _vp),
    "kvp_metadata_desc_init": (_ST, _P(kvp_metadata_desc), _u32),
    "kvp_metadata_create": (_ST, _P(kvp_metadata_desc), _P(_vp)),
    "kvp_metadata_create_empty": (_ST, _u32, _i64, _i64, _i64, _i64, _P(_vp)),
    "kvp_metadata_destroy": (_ST, _vp),
    "kvp_metadata_get_array": (_ST, _vp, _u32, _P(_P(_i32)), _P(_i64)),
    "kvp_metadata_get_desc": (_ST, _vp, _P(kvp_metadata_desc)),
    "kvp_batch_options_init": (_ST, _P(kvp_batch_options), _u32),
    "kvp_metadata_build": (_ST, _P(kvp_config), _P(kvp_batch_request), _u32, _P(kvp_batch_options), _P(_i32),
                           _P(_vp)),
    # const kvp_tensor * as void *: the binding passes packed descriptors (bytes, see _tensors.py).
    "kvp_concatenate": (_ST, _vp, _u32, _vp, _vp, _vp, _vp),
    "kvp_pool_options_init": (_ST, _P(kvp_pool_options), _u32),
    "kvp_pool_create": (_ST, _vp, _P(kvp_pool_options), _P(_vp)),
    "kvp_pool_destroy": (_ST, _vp),
    "kvp_pool_add_sequence": (_ST, _vp, _P(_i32), _size, _u64, _u32, _P(kvp_seq_id), _P(_size)),
    "kvp_pool_append": (_ST, _vp, kvp_seq_id, _P(_i32), _size, _vp),
    "kvp_pool_set_computed": (_ST, _vp, kvp_seq_id, _size),
    "kvp_pool_truncate": (_ST, _vp, kvp_seq_id, _size),
    "kvp_pool_fork": (_ST, _vp, kvp_seq_id, _u32, _P(kvp_seq_id)),
    "kvp_pool_free_sequence": (_ST, _vp, kvp_seq_id),
    "kvp_pool_get_sequence_length": (_ST, _vp, kvp_seq_id, _P(_size), _P(_size)),
    "kvp_pool_get_page_table": (_ST, _vp, kvp_seq_id, _P(_i32), _size, _P(_size)),
    "kvp_pool_get_slots": (_ST, _vp, kvp_seq_id, _size, _size, _P(_i32)),
    "kvp_pool_get_batch_request": (_ST, _vp, kvp_seq_id, _P(kvp_batch_request)),
    "kvp_pool_get_page_state": (_ST, _vp, _i32, _P(_u32), _P(_u32)),
    "kvp_pool_get_stats": (_ST, _vp, _P(kvp_pool_stats)),
    "kvp_pool_check_invariants": (_ST, _vp),
    "kvp_pool_clear_prefix_cache": (_ST, _vp),
    "kvp_cache_copy_pages": (_ST, _vp, _P(_i32), _P(_i32), _size, _vp),
    "kvp_serialize_options_init": (_ST, _P(kvp_serialize_options), _u32),
    "kvp_serialized_size": (_ST, _vp, _P(kvp_serialize_options), _P(_size)),
    "kvp_serialize": (_ST, _vp, _P(kvp_serialize_options), _vp, _size, _P(_size)),
    "kvp_serialize_to_writer": (_ST, _vp, _P(kvp_serialize_options), WriteFn, _vp),
    "kvp_serialize_to_file": (_ST, _vp, _P(kvp_serialize_options), _cp),
    "kvp_deserialize_options_init": (_ST, _P(kvp_deserialize_options), _u32),
    "kvp_deserialize_new": (_ST, _vp, _size, _P(kvp_deserialize_options), _P(_vp)),
    "kvp_deserialize_new_from_reader": (_ST, ReadFn, _vp, _P(kvp_deserialize_options), _P(_vp)),
    "kvp_deserialize_new_from_file": (_ST, _cp, _P(kvp_deserialize_options), _P(_vp)),
    "kvp_deserialize_into": (_ST, _vp, _vp, _size, _P(_i32), _u32),
    "kvp_deserialize_into_from_reader": (_ST, _vp, ReadFn, _vp, _P(_i32), _u32),
    "kvp_deserialize_into_from_file": (_ST, _vp, _cp, _P(_i32), _u32),
    "kvp_serialized_inspect": (_ST, _vp, _size, _u32, _P(kvp_serialized_info)),
    "kvp_serialized_inspect_file": (_ST, _cp, _u32, _P(kvp_serialized_info)),
    "kvp_config_to_json": (_ST, _P(kvp_config), _cp, _size, _P(_size)),
    "kvp_config_from_json": (_ST, _cp, _size, _P(kvp_config)),
    "kvp_metadata_to_json": (_ST, _vp, _cp, _size, _P(_size)),
    "kvp_metadata_from_json": (_ST, _cp, _size, _P(_vp)),
    "kvp_device_count": (_ST, _P(_i32)),
    "kvp_cache_read_layer": (_ST, _vp, _u32, _vp, _size, _vp),
    "kvp_cache_write_layer": (_ST, _vp, _u32, _vp, _size, _vp),
    "kvp_cache_export_dlpack": (_ST, _vp, _u32, _u32, _u32, _P(_P(DLManagedTensor))),
    "kvp_attention_options_init": (_ST, _P(kvp_attention_options), _u32),
    "kvp_attention": (_ST, _vp, _u32, _vp, _vp, _vp, _vp, _P(kvp_attention_options), _vp, _vp),
    "kvp_convert": (_ST, _vp, _u32, _vp, _u32, _size),
    "kvp_config_get_shard": (_ST, _P(kvp_config), _i32, _i32, _P(kvp_shard_info)),
    "kvp_cache_create_shard": (_ST, _P(kvp_config), _i32, _i32, _P(kvp_cache_options), _P(_vp)),
    "kvp_cache_get_shard": (_ST, _vp, _P(kvp_shard_info)),
    "kvp_deserialize_shards_into": (_ST, _vp, _P(kvp_blob_ref), _u32),
    "kvp_pool_get_sequence_shard": (_ST, _vp, kvp_seq_id, _P(_u32)),
    "kvp_pool_get_shard_stats": (_ST, _vp, _u32, _P(kvp_pool_shard_stats)),
    "kvp_cache_group_create": (_ST, _P(kvp_config), _P(_i32), _u32, _P(kvp_cache_options), _P(_vp)),
    "kvp_cache_group_destroy": (_ST, _vp),
    "kvp_cache_group_get_num_shards": (_ST, _vp, _P(_u32)),
    "kvp_cache_group_get_shard": (_ST, _vp, _i32, _i32, _P(_vp)),
    "kvp_cache_group_concatenate": (_ST, _vp, _u32, _vp, _vp, _u32, _vp, _vp),
    "kvp_pool_add_store": (_ST, _vp, _vp),
    "kvp_pool_get_tier_stats": (_ST, _vp, _u32, _P(kvp_pool_tier_stats)),
    "kvp_pool_flush_tiers": (_ST, _vp, _u32),
    "kvp_store_options_init": (_ST, _P(kvp_store_options), _u32),
    "kvp_store_create": (_ST, _P(kvp_store_vtable), _P(_vp)),
    "kvp_store_create_memory": (_ST, _u64, _P(kvp_store_options), _P(_vp)),
    "kvp_store_create_directory": (_ST, _cp, _u64, _P(kvp_store_options), _P(_vp)),
    "kvp_store_destroy": (_ST, _vp),
    "kvp_store_put": (_ST, _vp, _P(kvp_store_key), _vp, _size),
    "kvp_store_get": (_ST, _vp, _P(kvp_store_key), _vp, _size, _P(_size)),
    "kvp_store_exists": (_ST, _vp, _P(kvp_store_key), _size, _P(_u8)),
    "kvp_store_remove": (_ST, _vp, _P(kvp_store_key)),
    "kvp_store_get_stats": (_ST, _vp, _P(kvp_store_stats)),
    "kvp_store_scrub": (_ST, _vp, _P(kvp_store_scrub_report)),
    "kvp_store_list": (_ST, _vp, _P(_u64), _P(kvp_store_key), _size, _P(_size)),  # since 1.5
    "kvp_store_block_inspect": (_ST, _vp, _size, _P(kvp_store_block_info)),  # since 1.5
    "kvp_pool_save_sequence": (_ST, _vp, kvp_seq_id, _vp, _size, _P(_size)),
    "kvp_pool_save_sequence_to_file": (_ST, _vp, kvp_seq_id, _cp, _u32),
    "kvp_pool_restore_sequence": (_ST, _vp, _vp, _size, _u32, _P(kvp_seq_id)),
    "kvp_pool_restore_sequence_from_file": (_ST, _vp, _cp, _u32, _P(kvp_seq_id)),
    "kvp_store_create_redis": (_ST, _cp, _P(kvp_store_options), _P(_vp)),  # since 1.5
}
#: Per-sequence save and restore (pool.h, since 1.5).
_SEQUENCE_IO_FUNCTIONS = {"kvp_pool_save_sequence", "kvp_pool_save_sequence_to_file", "kvp_pool_restore_sequence",
                          "kvp_pool_restore_sequence_from_file"}
#: The storage-tier functions (store.h and two of pool.h, since 1.4; list and block_inspect since 1.5).
_STORE_FUNCTIONS = {name for name in _SIGNATURES if name.startswith("kvp_store_")} | {
    "kvp_pool_add_store", "kvp_pool_get_tier_stats", "kvp_pool_flush_tiers"}
#: Functions that appeared after 1.0: bound after the version check, so an old library fails with
#: VersionMismatch rather than a missing symbol.
LATER = {"kvp_attention_options_init", "kvp_attention", "kvp_convert", "kvp_config_get_shard",
         "kvp_cache_create_shard", "kvp_cache_get_shard", "kvp_deserialize_shards_into", "kvp_pool_get_sequence_shard",
         "kvp_pool_get_shard_stats", "kvp_cache_group_create", "kvp_cache_group_destroy",
         "kvp_cache_group_get_num_shards", "kvp_cache_group_get_shard", "kvp_cache_group_concatenate"} | _STORE_FUNCTIONS \
    | _SEQUENCE_IO_FUNCTIONS


def bind(names: Optional[set] = None) -> None:
    """Looks up the prototypes (``names``: only those; None: every one not in LATER)."""
    for name, (restype, *argtypes) in _SIGNATURES.items():
        if (names is None and name not in LATER) or (names is not None and name in names):
            setattr(lib, name, _fn(name, restype, *argtypes))


#: kvp_config::abi_version of the record mirrored here (KVP_CONFIG_VERSION; 2 since 1.3).
CONFIG_VERSION = 2


def config_record() -> kvp_config:
    """A zeroed kvp_config that opts in to the version mirrored here (struct_size and abi_version
    set, as KVP_CONFIG_INIT does): a function that writes a record writes all of it, where it
    would write only version 1 into a record without them."""
    c = kvp_config()
    c.struct_size, c.abi_version = ctypes.sizeof(kvp_config), CONFIG_VERSION
    return c


def sized(struct_type: type) -> Any:
    """A zeroed output struct with struct_size set (the C ``*_INIT`` macros of output structs)."""
    s = struct_type()
    s.struct_size = ctypes.sizeof(struct_type)
    return s


bind()
