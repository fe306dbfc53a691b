//! Shards (since 1.4): the four shards of a TP 2 x DP 2 config hold their slices of the whole
//! cache after the same batch; their blobs (in memory and in files) load into a new whole cache
//! byte for byte; an incomplete set and a rank out of range fail with the library's message and
//! change nothing. A cache group's shards, written with one call, hold the same slices; they
//! are borrowed (the group's deinit destroys them once) and a bad shard tensor is refused by name.
const std = @import("std");
const kv = @import("kvpages.zig");
const t = std.testing;

const H = 4;
const D = 128;
const tokens = 25;

fn shardedConfig() !kv.Config {
    return kv.Config.create(.{ .num_hidden_layers = 2, .num_kv_heads = H, .max_model_length = 64, .head_dim = D, .page_size = 16, .dtype = .bf16, .kv_head_shards = 2, .data_parallel_size = 2, .budget_bytes = 1 << 20 });
}

fn expectMessage(part: []const u8) !void {
    const msg = kv.lastErrorMessage();
    if (std.mem.indexOf(u8, msg, part) == null) {
        std.debug.print("message \"{s}\" lacks \"{s}\"\n", .{ msg, part });
        return error.TestUnexpectedResult;
    }
}

/// A copy of one layer (the caller frees it with t.allocator).
fn layerAlloc(cache: *const kv.Cache, layer: u32) ![]u8 {
    const out = try t.allocator.alloc(u8, try cache.layerBytes());
    errdefer t.allocator.free(out);
    try cache.readLayer(layer, out);
    return out;
}

/// Fails unless `shard` holds its slice of `whole` (a layer `[page][row][combined entry][head dim]`).
fn expectSliceOf(whole: []const u8, wl: kv.LayoutInfo, shard: *const kv.Cache, layer: u32) !void {
    const si = try shard.shard();
    const got = try layerAlloc(shard, layer);
    defer t.allocator.free(got);
    const rows: usize = @intCast(wl.shape[1]);
    const entries: usize = @intCast(wl.storage_num_combined_kv_heads);
    const entry: usize = @intCast(wl.storage_head_dim * wl.itemsize);
    const first: usize = @intCast(si.slot_begin);
    const len: usize = @as(usize, @intCast(si.slot_end - si.slot_begin)) * entry;
    var at: usize = 0;
    for (@intCast(si.page_begin)..@intCast(si.page_end)) |page| for (0..rows) |r| {
        const from = ((page * rows + r) * entries + first) * entry;
        try t.expectEqualSlices(u8, whole[from .. from + len], got[at .. at + len]);
        at += len;
    };
    try t.expectEqual(got.len, at);
}

fn expectSameLayers(a: *const kv.Cache, b: *const kv.Cache) !void {
    for (0..2) |layer| {
        const x = try layerAlloc(a, @intCast(layer));
        defer t.allocator.free(x);
        const y = try layerAlloc(b, @intCast(layer));
        defer t.allocator.free(y);
        try t.expectEqualSlices(u8, x, y);
    }
}

test "shards: each holds its slice of the whole cache; their blobs re-shard into a whole cache" {
    const cfg = try shardedConfig();
    var whole = try kv.Cache.init(&cfg);
    defer whole.deinit();
    const whole_info = try whole.shard();
    try t.expectEqual([4]i64{ 1, 1, 0, cfg.num_pages }, [4]i64{ whole_info.tp_size, whole_info.dp_size, whole_info.page_begin, whole_info.page_end });
    var shards: [4]kv.Cache = undefined;
    for (0..4) |i| {
        const tp: i32 = @intCast(i / 2);
        const dp: i32 = @intCast(i % 2);
        shards[i] = try kv.Cache.initShard(&cfg, tp, dp, .{});
        const info = try shards[i].shard();
        try t.expectEqual(try cfg.shard(tp, dp), info);
        try t.expectEqual([4]i32{ tp, 2, dp, 2 }, [4]i32{ info.tp_rank, info.tp_size, info.dp_rank, info.dp_size });
        try t.expectEqual([3]i64{ 2 * tp, 2 * tp + 2, cfg.num_pages }, [3]i64{ info.head_begin, info.head_end, info.global_pages });
    }
    defer for (&shards) |*s| s.deinit();

    // A prefill on data rank 0's pages 1-2 and one on data rank 1's second page, full K/V.
    const rank1: i32 = @intCast((try cfg.shard(0, 1)).page_begin);
    const requests = [_]kv.BatchRequest{
        .{ .num_computed = 0, .num_scheduled = 20, .page_ids = &.{ 1, 2 } },
        .{ .num_computed = 0, .num_scheduled = 5, .page_ids = &.{rank1 + 1} },
    };
    var md = try kv.Metadata.build(t.allocator, &cfg, &requests, .{}, null);
    defer md.deinit();
    var key: [tokens * H * D]f32 = undefined;
    var value: [tokens * H * D]f32 = undefined;
    for (&key, &value, 0..) |*k, *v, i| {
        k.* = @as(f32, @floatFromInt(i % 251)) / 8 - 15;
        v.* = -k.*;
    }
    for (0..2) |layer| {
        try whole.concatenate(@intCast(layer), f32, &key, &value, .{ tokens, H, D }, &md);
        for (&shards) |*s| try s.concatenate(@intCast(layer), f32, &key, &value, .{ tokens, H, D }, &md);
    }
    const wl = try whole.layout();
    for (0..2) |layer| {
        const w = try layerAlloc(&whole, @intCast(layer));
        defer t.allocator.free(w);
        try t.expect(std.mem.indexOfNone(u8, w, &.{0}) != null);
        for (&shards) |*s| try expectSliceOf(w, wl, s, @intCast(layer));
    }

    // Two blobs in memory, two in files; each says which slice it holds.
    var tmp = t.tmpDir(.{});
    defer tmp.cleanup();
    var path_bufs: [2][256]u8 = undefined;
    var blobs: [4][]u8 = undefined;
    var set: [4]kv.Blob = undefined;
    for (&shards, 0..) |*s, i| {
        blobs[i] = try s.serializeAlloc(t.allocator, .{});
        const info = try kv.inspect(blobs[i], .{ .verify = true });
        try t.expectEqual(try s.shard(), info.shard);
        try t.expect(info.flags & kv.c.KVP_FORMAT_FLAG_SHARD != 0);
        if (i < 2) {
            set[i] = .{ .bytes = blobs[i] };
            continue;
        }
        const path = try std.fmt.bufPrint(&path_bufs[i - 2], ".zig-cache/tmp/{s}/shard{d}.kvps", .{ tmp.sub_path, i });
        try s.saveFile(path, .{});
        set[i] = .{ .path = path };
    }
    defer for (blobs) |b| t.allocator.free(b);
    var copy = try kv.Cache.init(&cfg);
    defer copy.deinit();
    try copy.loadShards(t.allocator, &set);
    try expectSameLayers(&whole, &copy);

    // Without tensor rank 1's blobs the set does not cover the whole cache: nothing is written.
    var target = try kv.Cache.init(&cfg);
    defer target.deinit();
    var pristine = try kv.Cache.init(&cfg);
    defer pristine.deinit();
    try t.expectError(error.FormatMismatch, target.loadShards(t.allocator, set[0..2]));
    try expectMessage("kvp_deserialize_shards_into");
    try expectSameLayers(&target, &pristine);
}

test "shards: a rank out of range is error.InvalidArgument with the library's message" {
    const cfg = try shardedConfig();
    try t.expectError(error.InvalidArgument, kv.Cache.initShard(&cfg, 2, 0, .{}));
    try expectMessage("tp_rank 2 is out of range [0, 2)");
    try t.expectError(error.InvalidArgument, cfg.shard(0, -1));
    try expectMessage("dp_rank -1 is out of range [0, 2)");
}

test "cache group: one call writes every shard its slice; a bad shard tensor is refused by name" {
    const cfg = try shardedConfig();
    var group = try kv.CacheGroup.init(&cfg);
    var group_live = true;
    defer if (group_live) group.deinit();
    try t.expectEqual(@as(u32, 4), try group.numShards());
    var whole = try kv.Cache.init(&cfg);
    defer whole.deinit();
    const rank1: i32 = @intCast((try cfg.shard(0, 1)).page_begin);
    const requests = [_]kv.BatchRequest{
        .{ .num_computed = 0, .num_scheduled = 20, .page_ids = &.{ 1, 2 } },
        .{ .num_computed = 0, .num_scheduled = 5, .page_ids = &.{rank1 + 1} },
    };
    var md = try kv.Metadata.build(t.allocator, &cfg, &requests, .{}, null);
    defer md.deinit();
    var key: [tokens * H * D]f32 = undefined;
    var value: [tokens * H * D]f32 = undefined;
    for (&key, &value, 0..) |*k, *v, i| {
        k.* = @as(f32, @floatFromInt(i % 241)) / 8 - 14;
        v.* = k.* / 2;
    }
    const full = [3]i64{ tokens, H, D };
    const keys: [4][]const f32 = @splat(&key);
    const values: [4][]const f32 = @splat(&value);
    const shapes: [4][3]i64 = @splat(full);
    for (0..2) |layer| {
        try whole.concatenate(@intCast(layer), f32, &key, &value, full, &md);
        try group.concatenate(t.allocator, @intCast(layer), f32, &keys, &values, &shapes, &md);
    }
    const wl = try whole.layout();
    var layers: [2][]u8 = undefined;
    for (&layers, 0..) |*w, layer| w.* = try layerAlloc(&whole, @intCast(layer));
    defer for (layers) |w| t.allocator.free(w);
    try t.expect(std.mem.indexOfNone(u8, layers[0], &.{0}) != null);
    for (0..4) |i| {
        const tp: i32 = @intCast(i / 2);
        const dp: i32 = @intCast(i % 2);
        const s = try group.shard(tp, dp);
        try t.expectEqual(try cfg.shard(tp, dp), try s.shard());
        for (layers, 0..) |w, layer| try expectSliceOf(w, wl, &s, @intCast(layer));
    }

    // Shard 3's tensors with 3 heads (neither all 4 nor its own 2): refused, naming the shard,
    // and no shard changes.
    const bad: [tokens * 3 * D]f32 = @splat(1);
    const bad_keys = [_][]const f32{ &key, &key, &key, &bad };
    const bad_shapes = [_][3]i64{ full, full, full, .{ tokens, 3, D } };
    try t.expectError(error.InvalidArgument, group.concatenate(t.allocator, 0, f32, &bad_keys, &bad_keys, &bad_shapes, &md));
    try expectMessage("shard 3 (tp 1, dp 1)");
    const last = try group.shard(1, 1);
    for (layers, 0..) |w, layer| try expectSliceOf(w, wl, &last, @intCast(layer));
    try t.expectError(error.InvalidArgument, group.shard(2, 0));

    // deinit destroys every shard once: a borrowed handle is dead afterwards, not freed again.
    group.deinit();
    group_live = false;
    try t.expectError(error.InvalidHandle, last.shard());
}
