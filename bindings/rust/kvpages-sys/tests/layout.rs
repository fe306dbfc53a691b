//! ctest-style layout parity: every `#[repr(C)]` struct of this crate has the size and field
//! offsets the C compiler computes from the kvpages headers (a C probe is compiled with `cc`).
use kvpages_sys::*;
use std::mem::{size_of, MaybeUninit};
use std::process::Command;

macro_rules! layout {
    ($probe:ident, $rust:ident, $t:ident { $($f:ident),* $(,)? }) => {{
        $probe.push(format!("printf(\"%zu\\n\", sizeof({}));", stringify!($t)));
        $rust.push((format!("sizeof({})", stringify!($t)), size_of::<$t>()));
        $(
            $probe.push(format!("printf(\"%zu\\n\", offsetof({}, {}));", stringify!($t), stringify!($f)));
            $rust.push((format!("offsetof({}, {})", stringify!($t), stringify!($f)), {
                // offset_of! needs Rust 1.77; this works with Debian's 1.63.
                let u = MaybeUninit::<$t>::uninit();
                let base = u.as_ptr();
                unsafe { std::ptr::addr_of!((*base).$f) as usize - base as usize }
            }));
        )*
    }};
}

#[test]
fn struct_layouts_match_c() {
    let mut probe: Vec<String> = Vec::new();
    let mut rust: Vec<(String, usize)> = Vec::new();
    layout!(probe, rust, kvp_config { struct_size, abi_version, num_hidden_layers, max_model_length, num_kv_heads,
        k_headdim, v_headdim, hbm_utilization, page_size, num_pages, max_num_pages_per_req,
        num_slices_per_kv_cache_update_page, max_num_tokens, max_num_reqs, version, kvdtype, data_parallel_size,
        kv_head_shards, requested_kv_head_shards, requested_kvdtype, _reserved1 });
    layout!(probe, rust, kvp_memory_stats { bytes_limit, bytes_reservable_limit, bytes_total, bytes_in_use,
        bytes_reserved, valid, _reserved });
    layout!(probe, rust, kvp_config_options { struct_size, abi_version, num_hidden_layers, num_kv_heads,
        max_model_length, kv_head_dim_size, k_headdim, v_headdim, hbm_utilization, page_size, kvdtype, version,
        budget_mode, flags, budget_bytes, safety_margin_bytes, memory_stats, num_memory_stats, device_type,
        device_id, _reserved0, kv_head_shards, max_num_tokens, max_num_reqs, data_parallel_size });
    layout!(probe, rust, kvp_host_allocator { alloc, free, user_data });
    layout!(probe, rust, kvp_cache_options { struct_size, abi_version, device_type, device_id, allocator, flags,
        _reserved });
    layout!(probe, rust, kvp_tensor { data, dtype, ndim, shape, strides, device_type, device_id });
    layout!(probe, rust, kvp_layout_info { struct_size, is_h64, kv_head_packing, storage_num_combined_kv_heads,
        storage_num_kv_groups, storage_head_dim, itemsize, ndim, _reserved, shape, layer_bytes,
        page_bytes_per_layer, max_num_seqs });
    layout!(probe, rust, kvp_batch_request { num_computed, num_scheduled, page_ids, num_pages });
    layout!(probe, rust, kvp_batch_options { struct_size, abi_version, max_num_reqs, max_num_tokens, flags,
        _reserved0 });
    layout!(probe, rust, kvp_seq_id { id });
    layout!(probe, rust, kvp_pool_options { struct_size, abi_version, max_sequences, flags, allocator,
        write_queue_bytes });
    layout!(probe, rust, kvp_pool_stats { struct_size, max_sequences, page_size, max_pages_per_sequence, total_pages,
        free_pages, evictable_pages, used_pages, indexed_pages, num_sequences, prompt_tokens, reused_tokens,
        evictions, cow_copies });
    layout!(probe, rust, kvp_pool_shard_stats { struct_size, num_shards, first_page, end_page, total_pages,
        free_pages, evictable_pages, used_pages, num_sequences });
    layout!(probe, rust, kvp_attention_options { struct_size, abi_version, softmax_scale, logits_soft_cap,
        sliding_window, k_scale, v_scale, num_sinks, sinks });
    layout!(probe, rust, kvp_plan { struct_size, _reserved, num_pages, usable_pages, page_size, bytes_per_page,
        reference_bytes_per_page, bytes_per_token, total_bytes, token_capacity, max_concurrent_seqs, max_num_seqs,
        data_parallel_size, kv_head_shards, requested_kv_head_shards, head_sharding, requested_kvdtype, kvdtype,
        _reserved1, units_per_device, pages_per_device, bytes_per_device, sharding_message });
    layout!(probe, rust, kvp_metadata_desc { struct_size, abi_version, version, device_type, device_id, flags,
        page_size, num_slices_per_kv_cache_update_page, pages_tables, num_reqs, pages_per_req, context_lens,
        context_lens_len, query_start_loc, query_start_loc_len, num_seqs, num_seqs_len, slot_mapping, num_slices,
        num_kv_update_slices, num_kv_update_slices_len, request_distribution, request_distribution_len,
        position_ids, position_ids_len, token_starts, token_starts_len });
    layout!(probe, rust, kvp_serialize_options { struct_size, abi_version, page_ids, num_page_ids, flags,
        chunk_bytes });
    layout!(probe, rust, kvp_deserialize_options { struct_size, abi_version, cache_options, max_cache_bytes, flags,
        _reserved });
    layout!(probe, rust, kvp_serialized_info { struct_size, format_major, format_minor, header_size, flags,
        writer_version, _reserved, header_checksum, num_stored_pages, first_page_id, last_page_id,
        page_bytes_per_layer, chunk_bytes, num_chunks, payload_bytes, total_bytes, config, shard });
    layout!(probe, rust, kvp_shard_info { struct_size, _reserved, tp_rank, tp_size, dp_rank, dp_size, slot_begin,
        slot_end, head_begin, head_end, key_head_begin, key_head_end, value_head_begin, value_head_end, page_begin,
        page_end, global_pages });
    layout!(probe, rust, kvp_blob_ref { data, size, path });
    layout!(probe, rust, kvp_pool_tier_stats { struct_size, num_tiers, lookups, hits, misses, rejected, errors,
        restored_tokens, bytes_read, blocks_written, bytes_written, dropped });
    layout!(probe, rust, kvp_store_key { bytes });
    layout!(probe, rust, kvp_store_vtable { struct_size, abi_version, user_data, put, get, exists, remove, destroy,
        list });
    layout!(probe, rust, kvp_store_options { struct_size, abi_version, flags, _reserved, allocator });
    layout!(probe, rust, kvp_store_stats { struct_size, _reserved, blocks, bytes, max_bytes, puts, hits, misses, errors,
        evictions });
    layout!(probe, rust, kvp_store_scrub_report { struct_size, _reserved, blocks_checked, blocks_damaged,
        bytes_freed });
    layout!(probe, rust, kvp_store_block_info { struct_size, format_version, fingerprint, key, parent, salt, page_size,
        num_layers, page_bytes, block_bytes, checksum_ok, _reserved });
    // The function table: its size and a field of each end (the field list is tests/headers.rs').
    layout!(probe, rust, kvp_api_v1 { struct_size, api_version, status_name, cache_export_dlpack, convert,
        pool_get_shard_stats, cache_group_concatenate, pool_add_store, store_scrub, store_block_inspect,
        pool_flush_tiers });
    // Pool and attention constants (flags and the options versions) are compared the same way.
    for (name, value) in [
        ("KVP_ATTENTION_OPTIONS_VERSION", KVP_ATTENTION_OPTIONS_VERSION),
        ("KVP_POOL_OPTIONS_VERSION", KVP_POOL_OPTIONS_VERSION),
        ("KVP_CACHE_OPTIONS_VERSION", KVP_CACHE_OPTIONS_VERSION),
        ("KVP_CACHE_FLAG_NO_HUGE_PAGES", KVP_CACHE_FLAG_NO_HUGE_PAGES),
        ("KVP_CACHE_FLAG_PREFAULT", KVP_CACHE_FLAG_PREFAULT),
        ("KVP_POOL_FLAG_NO_PREFIX_CACHE", KVP_POOL_FLAG_NO_PREFIX_CACHE),
        ("KVP_POOL_ADD_FLAG_REUSE_ALL", KVP_POOL_ADD_FLAG_REUSE_ALL),
        ("KVP_PAGE_FLAG_NULL", KVP_PAGE_FLAG_NULL),
        ("KVP_PAGE_FLAG_FREE", KVP_PAGE_FLAG_FREE),
        ("KVP_PAGE_FLAG_INDEXED", KVP_PAGE_FLAG_INDEXED),
        ("KVP_POOL_MAX_TIERS", KVP_POOL_MAX_TIERS),
        ("KVP_POOL_FLUSH_CACHED", KVP_POOL_FLUSH_CACHED),
        ("KVP_STORE_VTABLE_VERSION", KVP_STORE_VTABLE_VERSION),
        ("KVP_STORE_FLAG_NO_SYNC", KVP_STORE_FLAG_NO_SYNC),
        ("KVP_STORE_OPTIONS_VERSION", KVP_STORE_OPTIONS_VERSION),
    ] {
        probe.push(format!("printf(\"%zu\\n\", (size_t){name});"));
        rust.push((name.to_string(), value as usize));
    }
    layout!(probe, rust, DLTensor { data, device, ndim, dtype, shape, strides, byte_offset });
    layout!(probe, rust, DLManagedTensor { dl_tensor, manager_ctx, deleter });

    let dir = std::env::temp_dir().join(format!("kvpages-sys-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("probe.c");
    let exe = dir.join("probe");
    let body = format!(
        "#include <stdio.h>\n#include <stddef.h>\n#include <kvpages.h>\n#include <kvpages/dlpack.h>\n#include <kvpages/plugin.h>\n\
         int main(void) {{\n{}\nreturn 0; }}\n",
        probe.join("\n")
    );
    std::fs::write(&src, body).unwrap();
    let mut cc = Command::new("cc");
    cc.arg("-std=c99");
    for d in env!("KVPAGES_SYS_INCLUDE_DIRS").split(':').filter(|d| !d.is_empty()) {
        cc.arg("-I").arg(d);
    }
    let status = cc.arg(&src).arg("-o").arg(&exe).status().expect("cc not found");
    assert!(status.success(), "compiling the C layout probe failed");
    let out = Command::new(&exe).output().unwrap();
    let c: Vec<usize> = String::from_utf8(out.stdout).unwrap().split_whitespace().map(|s| s.parse().unwrap()).collect();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(c.len(), rust.len());
    let mismatches: Vec<String> = rust
        .iter()
        .zip(c.iter())
        .filter(|((_, r), c)| r != *c)
        .map(|((what, r), c)| format!("{what}: rust {r}, C {c}"))
        .collect();
    assert!(mismatches.is_empty(), "layout mismatches:\n{}", mismatches.join("\n"));
}

#[test]
fn library_version_matches_these_declarations() {
    unsafe {
        assert_eq!(kvp_check_abi(KVP_VERSION_NUMBER), KVP_OK);
        assert_eq!(kvp_version_number() / 10000, KVP_VERSION_NUMBER / 10000);
        assert!(kvp_version_number() >= KVP_VERSION_NUMBER, "the shard functions need a 1.4 library");
    }
}

#[test]
fn attention_options_init_fills_the_zero_defaults() {
    unsafe {
        let mut o = MaybeUninit::<kvp_attention_options>::zeroed().assume_init();
        o.softmax_scale = 3.0;
        assert_eq!(kvp_attention_options_init(&mut o, size_of::<kvp_attention_options>() as u32), KVP_OK);
        assert_eq!((o.struct_size as usize, o.abi_version), (size_of::<kvp_attention_options>(),
                                                              KVP_ATTENTION_OPTIONS_VERSION));
        assert_eq!((o.softmax_scale, o.logits_soft_cap, o.sliding_window, o.k_scale, o.v_scale, o.num_sinks),
                   (0.0, 0.0, 0, 0.0, 0.0, 0));
        assert!(o.sinks.is_null());
        assert_eq!(kvp_attention_options_init(&mut o, 8), KVP_ERR_VERSION_MISMATCH);
    }
}
