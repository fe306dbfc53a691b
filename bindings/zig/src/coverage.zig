//! Coverage check: every public C function has a counterpart in this binding or is listed as
//! deliberately left out, with the reason. Two lists of "every public C function" are checked:
//! the functions of the translated headers the binding compiles against (`c`), and the
//! generated list `tests/package/api_names.h` (the fields of `kvp_api_v1`, embedded by
//! build.zig as `api_names`), so a function added to the headers without a binding fails here.
const std = @import("std");
const kvpages = @import("kvpages.zig");
const c = kvpages.c;

/// C function -> the public Zig declaration that calls it (a path from the `kvpages` module).
const Counterpart = struct { c_name: []const u8, zig: []const u8 };

const counterparts = [_]Counterpart{
    .{ .c_name = "kvp_status_name", .zig = "statusName" },
    .{ .c_name = "kvp_last_error_message", .zig = "lastErrorMessage" },
    .{ .c_name = "kvp_last_error_copy", .zig = "lastErrorAlloc" },
    .{ .c_name = "kvp_set_misuse_handler", .zig = "setMisuseHandler" },
    .{ .c_name = "kvp_version_number", .zig = "versionNumber" },
    .{ .c_name = "kvp_version_string", .zig = "version" },
    .{ .c_name = "kvp_build_info", .zig = "buildInfo" },
    .{ .c_name = "kvp_check_abi", .zig = "checkAbi" },
    .{ .c_name = "kvp_dtype_from_string", .zig = "Dtype.fromString" },
    .{ .c_name = "kvp_dtype_name", .zig = "Dtype.name" },
    .{ .c_name = "kvp_dtype_bits", .zig = "Dtype.bits" },
    .{ .c_name = "kvp_convert", .zig = "convert" },
    .{ .c_name = "kvp_layout_from_string", .zig = "LayoutVersion.fromString" },
    .{ .c_name = "kvp_layout_name", .zig = "LayoutVersion.name" },
    .{ .c_name = "kvp_cdiv", .zig = "cdiv" },
    .{ .c_name = "kvp_align_to_multiple", .zig = "alignToMultiple" },
    .{ .c_name = "kvp_previous_power_of_2", .zig = "previousPowerOf2" },
    .{ .c_name = "kvp_dtype_packing", .zig = "Dtype.packing" },
    .{ .c_name = "kvp_page_size_bytes", .zig = "pageSizeBytes" },
    .{ .c_name = "kvp_num_slices_per_kv_cache_update_page", .zig = "numSlicesPerKvCacheUpdatePage" },
    .{ .c_name = "kvp_config_init", .zig = "Config.defaults" },
    .{ .c_name = "kvp_config_validate", .zig = "Config.validate" },
    .{ .c_name = "kvp_hbm_budget_bytes", .zig = "hbmBudgetBytes" },
    .{ .c_name = "kvp_device_memory_stats", .zig = "deviceMemoryStats" },
    .{ .c_name = "kvp_config_options_init", .zig = "Config.create" },
    .{ .c_name = "kvp_config_create", .zig = "Config.create" },
    .{ .c_name = "kvp_config_get_layout", .zig = "Config.layout" },
    .{ .c_name = "kvp_config_padded_num_slices", .zig = "Config.paddedNumSlices" },
    .{ .c_name = "kvp_config_plan", .zig = "Config.plan" },
    .{ .c_name = "kvp_set_host_allocator", .zig = "setHostAllocator" },
    .{ .c_name = "kvp_cache_options_init", .zig = "Cache.initWith" },
    .{ .c_name = "kvp_cache_create", .zig = "Cache.initWith" },
    .{ .c_name = "kvp_cache_destroy", .zig = "Cache.deinit" },
    .{ .c_name = "kvp_cache_get_config", .zig = "Cache.config" },
    .{ .c_name = "kvp_cache_get_layout", .zig = "Cache.layout" },
    .{ .c_name = "kvp_cache_get_device", .zig = "Cache.device" },
    .{ .c_name = "kvp_cache_get_view", .zig = "Cache.view" },
    .{ .c_name = "kvp_cache_get_async_error", .zig = "Cache.asyncError" },
    .{ .c_name = "kvp_cache_clear_async_error", .zig = "Cache.clearAsyncError" },
    .{ .c_name = "kvp_metadata_desc_init", .zig = "Metadata.wrap" },
    .{ .c_name = "kvp_metadata_create", .zig = "Metadata.wrap" },
    .{ .c_name = "kvp_metadata_create_empty", .zig = "Metadata.createEmpty" },
    .{ .c_name = "kvp_metadata_destroy", .zig = "Metadata.deinit" },
    .{ .c_name = "kvp_metadata_get_array", .zig = "Metadata.array" },
    .{ .c_name = "kvp_metadata_get_desc", .zig = "Metadata.describe" },
    .{ .c_name = "kvp_batch_options_init", .zig = "Metadata.build" },
    .{ .c_name = "kvp_metadata_build", .zig = "Batch.build" },
    .{ .c_name = "kvp_concatenate", .zig = "Cache.concatenateBatch" },
    .{ .c_name = "kvp_pool_options_init", .zig = "Pool.init" },
    .{ .c_name = "kvp_pool_create", .zig = "Pool.init" },
    .{ .c_name = "kvp_pool_destroy", .zig = "Pool.deinit" },
    .{ .c_name = "kvp_pool_add_sequence", .zig = "Pool.addSequence" },
    .{ .c_name = "kvp_pool_append", .zig = "Pool.append" },
    .{ .c_name = "kvp_pool_set_computed", .zig = "Pool.setComputed" },
    .{ .c_name = "kvp_pool_truncate", .zig = "Pool.truncate" },
    .{ .c_name = "kvp_pool_fork", .zig = "Pool.fork" },
    .{ .c_name = "kvp_pool_free_sequence", .zig = "Pool.freeSequence" },
    .{ .c_name = "kvp_pool_get_sequence_length", .zig = "Pool.length" },
    .{ .c_name = "kvp_pool_get_page_table", .zig = "Pool.pageTable" },
    .{ .c_name = "kvp_pool_get_slots", .zig = "Pool.slots" },
    .{ .c_name = "kvp_pool_get_batch_request", .zig = "Pool.batchRequest" },
    .{ .c_name = "kvp_pool_get_page_state", .zig = "Pool.pageState" },
    .{ .c_name = "kvp_pool_get_stats", .zig = "Pool.stats" },
    .{ .c_name = "kvp_pool_check_invariants", .zig = "Pool.checkInvariants" },
    .{ .c_name = "kvp_pool_clear_prefix_cache", .zig = "Pool.clearPrefixCache" },
    .{ .c_name = "kvp_pool_get_sequence_shard", .zig = "Pool.sequenceShard" },
    .{ .c_name = "kvp_pool_get_shard_stats", .zig = "Pool.shardStats" },
    .{ .c_name = "kvp_cache_copy_pages", .zig = "Cache.copyPages" },
    .{ .c_name = "kvp_serialize_options_init", .zig = "Cache.serializedSize" },
    .{ .c_name = "kvp_serialized_size", .zig = "Cache.serializedSize" },
    .{ .c_name = "kvp_serialize", .zig = "Cache.serializeAlloc" },
    .{ .c_name = "kvp_serialize_to_writer", .zig = "Cache.serializeToWriter" },
    .{ .c_name = "kvp_serialize_to_file", .zig = "Cache.saveFile" },
    .{ .c_name = "kvp_deserialize_options_init", .zig = "Cache.fromBytes" },
    .{ .c_name = "kvp_deserialize_new", .zig = "Cache.fromBytes" },
    .{ .c_name = "kvp_deserialize_new_from_reader", .zig = "Cache.fromReader" },
    .{ .c_name = "kvp_deserialize_new_from_file", .zig = "Cache.fromFile" },
    .{ .c_name = "kvp_deserialize_into", .zig = "Cache.loadBytes" },
    .{ .c_name = "kvp_deserialize_into_from_reader", .zig = "Cache.loadReader" },
    .{ .c_name = "kvp_deserialize_into_from_file", .zig = "Cache.loadFile" },
    .{ .c_name = "kvp_config_get_shard", .zig = "Config.shard" },
    .{ .c_name = "kvp_cache_create_shard", .zig = "Cache.initShard" },
    .{ .c_name = "kvp_cache_get_shard", .zig = "Cache.shard" },
    .{ .c_name = "kvp_deserialize_shards_into", .zig = "Cache.loadShards" },
    .{ .c_name = "kvp_cache_group_create", .zig = "CacheGroup.initWith" },
    .{ .c_name = "kvp_cache_group_destroy", .zig = "CacheGroup.deinit" },
    .{ .c_name = "kvp_cache_group_get_num_shards", .zig = "CacheGroup.numShards" },
    .{ .c_name = "kvp_cache_group_get_shard", .zig = "CacheGroup.shard" },
    .{ .c_name = "kvp_cache_group_concatenate", .zig = "CacheGroup.concatenateTensors" },
    .{ .c_name = "kvp_serialized_inspect", .zig = "inspect" },
    .{ .c_name = "kvp_serialized_inspect_file", .zig = "inspectFile" },
    .{ .c_name = "kvp_config_to_json", .zig = "Config.toJson" },
    .{ .c_name = "kvp_config_from_json", .zig = "Config.fromJson" },
    .{ .c_name = "kvp_metadata_to_json", .zig = "Metadata.toJson" },
    .{ .c_name = "kvp_metadata_from_json", .zig = "Metadata.fromJson" },
    .{ .c_name = "kvp_device_count", .zig = "deviceCount" },
    .{ .c_name = "kvp_cache_read_layer", .zig = "Cache.readLayer" },
    .{ .c_name = "kvp_cache_write_layer", .zig = "Cache.writeLayer" },
    .{ .c_name = "kvp_cache_export_dlpack", .zig = "Cache.exportDlpack" },
    .{ .c_name = "kvp_attention_options_init", .zig = "AttentionOptions.record" },
    .{ .c_name = "kvp_attention", .zig = "Cache.attention" },
    .{ .c_name = "kvp_pool_add_store", .zig = "Pool.addStore" },
    .{ .c_name = "kvp_pool_get_tier_stats", .zig = "Pool.tierStats" },
    .{ .c_name = "kvp_pool_flush_tiers", .zig = "Pool.flushTiers" },
    .{ .c_name = "kvp_pool_save_sequence", .zig = "Pool.saveSequenceAlloc" },
    .{ .c_name = "kvp_pool_save_sequence_to_file", .zig = "Pool.saveSequenceFile" },
    .{ .c_name = "kvp_pool_restore_sequence", .zig = "Pool.restoreSequence" },
    .{ .c_name = "kvp_pool_restore_sequence_from_file", .zig = "Pool.restoreSequenceFile" },
    .{ .c_name = "kvp_store_options_init", .zig = "Store.directory" },
    .{ .c_name = "kvp_store_create_memory", .zig = "Store.memory" },
    .{ .c_name = "kvp_store_create_directory", .zig = "Store.directory" },
    .{ .c_name = "kvp_store_destroy", .zig = "Store.deinit" },
    .{ .c_name = "kvp_store_put", .zig = "Store.put" },
    .{ .c_name = "kvp_store_get", .zig = "Store.get" },
    .{ .c_name = "kvp_store_exists", .zig = "Store.exists" },
    .{ .c_name = "kvp_store_remove", .zig = "Store.remove" },
    .{ .c_name = "kvp_store_get_stats", .zig = "Store.stats" },
    .{ .c_name = "kvp_store_scrub", .zig = "Store.scrub" },
    .{ .c_name = "kvp_store_list", .zig = "Store.list" },
    .{ .c_name = "kvp_store_block_inspect", .zig = "Store.inspectBlock" },
    .{ .c_name = "kvp_store_create_redis", .zig = "Store.redis" },
};

/// C functions with no Zig counterpart on purpose.
const left_out = [_]struct { c_name: []const u8, reason: []const u8 }{
    .{ .c_name = "kvp_store_create", .reason = "a plug-in store is a table of C callbacks: a Zig program that has its own " ++
        "backend fills a c.kvp_store_vtable with callconv(.c) functions and calls c.kvp_store_create directly" },
    .{ .c_name = "kvp_get_api", .reason = "the dlopen function table for plugin hosts; this binding links the library directly (pkg-config), so every entry is called by name" },
};

/// True when `path` ("Cache.initWith") names a public declaration of the kvpages module.
fn zigDeclExists(comptime path: []const u8) bool {
    @setEvalBranchQuota(10_000);
    comptime var scope: type = kvpages;
    comptime var it = std.mem.splitScalar(u8, path, '.');
    inline while (comptime it.next()) |name| {
        if (!@hasDecl(scope, name)) return false;
        const decl = @field(scope, name);
        if (@TypeOf(decl) == type) scope = decl;
    }
    return true;
}

fn counterpartOf(name: []const u8) ?[]const u8 {
    for (counterparts) |e| if (std.mem.eql(u8, e.c_name, name)) return e.zig;
    return null;
}

fn isLeftOut(name: []const u8) bool {
    for (left_out) |e| if (std.mem.eql(u8, e.c_name, name)) return true;
    return false;
}

/// Every `kvp_*` function declared in the translated headers.
const c_functions = blk: {
    @setEvalBranchQuota(200_000);
    var names: []const []const u8 = &.{};
    for (@typeInfo(c).@"struct".decl_names) |name| {
        if (!std.mem.startsWith(u8, name, "kvp_")) continue;
        if (@typeInfo(@TypeOf(@field(c, name))) == .@"fn") names = names ++ .{name};
    }
    break :blk names;
};

test "coverage: every Zig counterpart named in the table exists" {
    inline for (counterparts) |e| {
        if (!comptime zigDeclExists(e.zig)) {
            std.debug.print("{s}: counterpart {s} does not exist\n", .{ e.c_name, e.zig });
            return error.TestUnexpectedResult;
        }
    }
}

test "coverage: every function of the translated headers is bound or left out with a reason" {
    try std.testing.expect(c_functions.len >= counterparts.len);
    var missing: usize = 0;
    for (c_functions) |name| {
        if (counterpartOf(name) == null and !isLeftOut(name)) {
            std.debug.print("{s} has no Zig counterpart and is not in left_out\n", .{name});
            missing += 1;
        }
    }
    try std.testing.expectEqual(@as(usize, 0), missing);
    // No stale entries: everything listed is a real function.
    for (counterparts) |e| try expectCFunction(e.c_name);
    for (left_out) |e| {
        try expectCFunction(e.c_name);
        try std.testing.expect(e.reason.len > 0);
    }
}

test "coverage: every function of tests/package/api_names.h is bound or left out" {
    const text = @embedFile("api_names");
    var count: usize = 0;
    var it = std.mem.tokenizeAny(u8, text, " \t\r\n");
    while (it.next()) |token| {
        const prefix = "KVP_API_ENTRY(";
        if (!std.mem.startsWith(u8, token, prefix) or !std.mem.endsWith(u8, token, ")")) continue;
        var buf: [128]u8 = undefined;
        const name = try std.fmt.bufPrint(&buf, "kvp_{s}", .{token[prefix.len .. token.len - 1]});
        if (counterpartOf(name) == null and !isLeftOut(name)) {
            std.debug.print("{s} (api_names.h) has no Zig counterpart and is not in left_out\n", .{name});
            return error.TestUnexpectedResult;
        }
        try expectCFunction(name);
        count += 1;
    }
    try std.testing.expect(count >= 90);
}

fn expectCFunction(name: []const u8) !void {
    for (c_functions) |f| if (std.mem.eql(u8, f, name)) return;
    std.debug.print("{s} is not a function of the headers\n", .{name});
    return error.TestUnexpectedResult;
}
