"""Coverage check: every public C function (tests/abi/gen_api.py --list) has a counterpart in
the Python API, or is listed in LEFT_OUT with the reason. A new C function fails this test until
it is bound or listed."""
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import kvpages  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")

#: C function -> the public Python name that calls it ("Class.method" or "function").
COUNTERPARTS = {
    "kvp_status_name": "KvpagesError.__init__", "kvp_last_error_copy": "last_error_message",
    "kvp_set_misuse_handler": "set_misuse_handler", "kvp_version_number": "version_number",
    "kvp_version_string": "version", "kvp_build_info": "build_info", "kvp_check_abi": "check_abi",
    "kvp_dtype_from_string": "Dtype.parse", "kvp_dtype_name": "Dtype.__str__", "kvp_dtype_bits": "Dtype.bits",
    "kvp_convert": "convert", "kvp_layout_from_string": "Layout.parse", "kvp_layout_name": "Layout.__str__",
    "kvp_cdiv": "cdiv", "kvp_align_to_multiple": "align_to_multiple", "kvp_previous_power_of_2": "previous_power_of_2",
    "kvp_dtype_packing": "Dtype.packing", "kvp_page_size_bytes": "page_size_bytes",
    "kvp_num_slices_per_kv_cache_update_page": "num_slices_per_kv_cache_update_page",
    "kvp_config_init": "Config.defaults", "kvp_config_validate": "Config.validate",
    "kvp_hbm_budget_bytes": "hbm_budget_bytes", "kvp_device_memory_stats": "memory_stats",
    "kvp_config_options_init": "Config.create", "kvp_config_create": "Config.create",
    "kvp_config_get_layout": "Config.layout", "kvp_config_padded_num_slices": "Config.padded_num_slices",
    "kvp_config_plan": "Config.plan", "kvp_cache_options_init": "Cache.__init__", "kvp_cache_create": "Cache.__init__",
    "kvp_cache_destroy": "Cache.close", "kvp_cache_get_config": "Cache.config", "kvp_cache_get_layout": "Cache.layout",
    "kvp_cache_get_device": "Cache.device", "kvp_cache_get_view": "Cache.view",
    "kvp_cache_get_async_error": "Cache.async_error", "kvp_cache_clear_async_error": "Cache.clear_async_error",
    "kvp_metadata_desc_init": "Metadata.from_arrays", "kvp_metadata_create": "Metadata.from_arrays",
    "kvp_metadata_create_empty": "Metadata.empty", "kvp_metadata_destroy": "Metadata.close",
    "kvp_metadata_get_array": "Metadata.array", "kvp_metadata_get_desc": "Metadata.desc",
    "kvp_batch_options_init": "Metadata.build", "kvp_metadata_build": "Metadata.build",
    "kvp_concatenate": "Cache.concatenate", "kvp_pool_options_init": "Pool.__init__", "kvp_pool_create": "Pool.__init__",
    "kvp_pool_destroy": "Pool.close", "kvp_pool_add_sequence": "Pool.add_sequence", "kvp_pool_append": "Pool.append",
    "kvp_pool_set_computed": "Pool.set_computed", "kvp_pool_truncate": "Pool.truncate", "kvp_pool_fork": "Pool.fork",
    "kvp_pool_free_sequence": "Pool.free_sequence", "kvp_pool_get_sequence_shard": "Pool.sequence_shard",
    "kvp_pool_get_shard_stats": "Pool.shard_stats", "kvp_pool_get_sequence_length": "Pool.length",
    "kvp_pool_get_page_table": "Pool.page_table", "kvp_pool_get_slots": "Pool.slots",
    "kvp_pool_get_batch_request": "Pool.batch_request", "kvp_pool_get_page_state": "Pool.page_state",
    "kvp_pool_get_stats": "Pool.stats", "kvp_pool_check_invariants": "Pool.check_invariants",
    "kvp_pool_clear_prefix_cache": "Pool.clear_prefix_cache", "kvp_cache_copy_pages": "Cache.copy_pages",
    "kvp_serialize_options_init": "Cache.save", "kvp_serialized_size": "Cache.serialized_size",
    "kvp_serialize": "Cache.to_bytes", "kvp_serialize_to_writer": "Cache.save", "kvp_serialize_to_file": "Cache.save",
    "kvp_deserialize_options_init": "Cache.load", "kvp_deserialize_new": "Cache.from_bytes",
    "kvp_deserialize_new_from_reader": "Cache.load", "kvp_deserialize_new_from_file": "Cache.load",
    "kvp_deserialize_into": "Cache.load_into", "kvp_deserialize_into_from_reader": "Cache.load_into",
    "kvp_deserialize_into_from_file": "Cache.load_into", "kvp_serialized_inspect": "inspect",
    "kvp_serialized_inspect_file": "inspect", "kvp_config_to_json": "Config.to_json",
    "kvp_config_from_json": "Config.from_json", "kvp_metadata_to_json": "Metadata.to_json",
    "kvp_metadata_from_json": "Metadata.from_json", "kvp_device_count": "device_count",
    "kvp_cache_read_layer": "Cache.read_layer", "kvp_cache_write_layer": "Cache.write_layer",
    "kvp_cache_export_dlpack": "Cache.export_dlpack", "kvp_attention_options_init": "Cache.attention",
    "kvp_attention": "Cache.attention", "kvp_config_get_shard": "Config.shard",
    "kvp_cache_create_shard": "Cache.create_shard", "kvp_cache_get_shard": "Cache.shard",
    "kvp_deserialize_shards_into": "Cache.load_shards", "kvp_cache_group_create": "CacheGroup.__init__",
    "kvp_cache_group_destroy": "CacheGroup.close", "kvp_cache_group_get_num_shards": "CacheGroup.num_shards",
    "kvp_cache_group_get_shard": "CacheGroup.shard", "kvp_cache_group_concatenate": "CacheGroup.concatenate",
    # storage tiers (since 1.4)
    "kvp_pool_add_store": "Pool.add_store", "kvp_pool_get_tier_stats": "Pool.tier_stats",
    "kvp_pool_flush_tiers": "Pool.flush_tiers",
    "kvp_pool_save_sequence": "Pool.save_sequence", "kvp_pool_save_sequence_to_file": "Pool.save_sequence_to_file",
    "kvp_pool_restore_sequence": "Pool.restore_sequence",
    "kvp_pool_restore_sequence_from_file": "Pool.restore_sequence_from_file",
    "kvp_store_options_init": "Store.directory", "kvp_store_create": "Store.plugin",
    "kvp_store_create_memory": "Store.memory", "kvp_store_create_directory": "Store.directory",
    "kvp_store_destroy": "Store.close", "kvp_store_put": "Store.put", "kvp_store_get": "Store.get",
    "kvp_store_exists": "Store.exists", "kvp_store_remove": "Store.remove", "kvp_store_get_stats": "Store.stats",
    "kvp_store_scrub": "Store.scrub", "kvp_store_list": "Store.list", "kvp_store_block_inspect": "inspect_block",
    "kvp_store_create_redis": "Store.redis",
}

#: C functions deliberately without a Python counterpart, and why.
LEFT_OUT = {
    "kvp_last_error_message": "returns a pointer into thread-local storage; last_error_message() uses the "
                              "copying kvp_last_error_copy instead (the header recommends it to bindings)",
    "kvp_set_host_allocator": "a Python allocator callback would run on every allocation of the library, on "
                              "any thread, with the GIL; the lifetime rules of its user_data cannot be kept "
                              "safely from Python",
    "kvp_get_api": "the function table is for dlopen plugin hosts; ctypes binds every symbol by name already",
}


def c_functions():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "abi", "gen_api.py"), "--list"],
                         check=True, capture_output=True, text=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def resolve(path):
    obj = kvpages
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def test_every_c_function_is_bound_or_left_out_with_a_reason():
    names = c_functions()
    assert len(names) > 80
    missing = [n for n in names if n not in COUNTERPARTS and n not in LEFT_OUT]
    assert not missing, "C functions without a Python counterpart (bind them or add them to LEFT_OUT): %s" % missing
    stale = sorted(set(COUNTERPARTS) | set(LEFT_OUT) - set(names))
    assert not [n for n in stale if n not in names], "listed but not in the C API: %s" % stale
    assert all(LEFT_OUT[n] for n in LEFT_OUT)


@pytest.mark.parametrize("c_name", sorted(COUNTERPARTS))
def test_counterpart_exists_and_calls_the_c_function(c_name):
    resolve(COUNTERPARTS[c_name])
    assert hasattr(kvpages.lib, c_name), "%s has no ctypes prototype" % c_name
    sources = "".join(open(os.path.join(os.path.dirname(kvpages.__file__), f)).read()
                      for f in os.listdir(os.path.dirname(kvpages.__file__)) if f.endswith(".py") and f != "_ffi.py")
    assert "lib." + c_name in sources, "%s is never used by the Python API" % c_name
