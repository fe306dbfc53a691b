//! The new user's program: plan a 32-layer, 8-KV-head, head-dim-128 bf16 cache with a 4 GiB
//! budget on the CPU, write two prefills and three decodes in one mixed batch, read the keys
//! back, save the used pages to a file, load them into a new cache and compare.
//! Usage: new_user <file to save to>
const std = @import("std");
const kvpages = @import("kvpages");

const layers = 32;
const heads = 8;
const head_dim = 128;
const row = heads * head_dim; // elements of one token's keys

/// A value of request `req`'s token at `pos`: a multiple of 0.5 in [-50, 50), exact in bf16.
fn sample(layer: usize, req: usize, pos: usize, i: usize) f32 {
    const x: i64 = @intCast((layer * 7 + req * 31 + pos * 13 + i) % 200);
    return @as(f32, @floatFromInt(x - 100)) * 0.5;
}

pub fn main(init: std.process.Init) !void {
    const gpa = init.gpa;
    var args = init.minimal.args.iterate();
    _ = args.skip();
    const path = args.next() orelse return error.MissingPathArgument;
    try kvpages.checkAbi();

    // Plan: the budget is the memory of the device the cache will live on (here the CPU),
    // capped at 4 GiB.
    const cfg = try kvpages.Config.create(.{
        .num_hidden_layers = layers,
        .num_kv_heads = heads,
        .head_dim = head_dim,
        .max_model_length = 8192,
        .dtype = .bf16,
        .device = .cpu,
        .budget_bytes = 4 << 30,
    });
    const plan = try cfg.plan();
    std.debug.print("{d} pages of {d} tokens, {d} MiB\n", .{ plan.num_pages, plan.page_size, plan.total_bytes >> 20 });
    var cache = try kvpages.Cache.initOn(&cfg, .cpu);
    defer cache.deinit();

    // One mixed step, in the scheduler's order: prefill, decode, prefill, decode, decode.
    const requests = [_]kvpages.BatchRequest{
        .{ .num_computed = 0, .num_scheduled = 5, .page_ids = &.{1} },
        .{ .num_computed = 9, .num_scheduled = 1, .page_ids = &.{2} },
        .{ .num_computed = 0, .num_scheduled = 3, .page_ids = &.{3} },
        .{ .num_computed = 127, .num_scheduled = 1, .page_ids = &.{4} },
        .{ .num_computed = 128, .num_scheduled = 1, .page_ids = &.{ 5, 6 } },
    };
    var batch = try kvpages.Batch.build(gpa, &cfg, &requests, .{});
    defer batch.deinit();
    std.debug.print("row order {any}: the decodes come first\n", .{batch.order});

    // Each request's keys and values in request order; the batch packs them in row order.
    for (0..layers) |layer| {
        var keys: [requests.len][]const f32 = undefined;
        var values: [requests.len][]const f32 = undefined;
        for (requests, 0..) |r, i| {
            keys[i] = try newTokens(gpa, layer, i, r, 1);
            values[i] = try newTokens(gpa, layer, i, r, -1);
        }
        defer for (keys, values) |k, v| {
            gpa.free(k);
            gpa.free(v);
        };
        try cache.concatenateBatch(@intCast(layer), f32, &batch, &keys, &values);
    }
    try expectWritten(&cache, &requests);

    // Save only the used pages, load them into a new cache, compare.
    const used = [_]i32{ 1, 2, 3, 4, 5, 6 };
    try cache.saveFile(path, .{ .pages = &used });
    const info = try kvpages.inspectFile(path, .{ .verify = true });
    std.debug.print("saved {d} pages, {d} bytes\n", .{ info.num_stored_pages, info.total_bytes });
    var copy = try kvpages.Cache.init(&cfg);
    defer copy.deinit();
    try copy.loadFile(path, null);
    try expectWritten(&copy, &requests);
    std.debug.print("the loaded cache holds the same keys and values\n", .{});
}

/// Request `req`'s new tokens of one layer, [num_scheduled, H, D] (values: `sign` -1).
fn newTokens(gpa: std.mem.Allocator, layer: usize, req: usize, r: kvpages.BatchRequest, sign: f32) ![]f32 {
    const n: usize = @intCast(r.num_scheduled);
    const out = try gpa.alloc(f32, n * row);
    for (0..n) |t| for (0..row) |i| {
        out[t * row + i] = sign * sample(layer, req, @as(usize, @intCast(r.num_computed)) + t, i);
    };
    return out;
}

/// Reads every written key and value back (bf16 read as f32) and compares.
fn expectWritten(cache: *const kvpages.Cache, requests: []const kvpages.BatchRequest) !void {
    const page_size: usize = @intCast((try cache.config()).page_size);
    var got: [head_dim]f32 = undefined;
    for (0..layers) |layer| {
        const keys = try cache.view(@intCast(layer), .keys); // [pages, page_size, heads, head_dim]
        const values = try cache.view(@intCast(layer), .values);
        for (requests, 0..) |r, req| {
            const first: usize = @intCast(r.num_computed);
            for (first..first + @as(usize, @intCast(r.num_scheduled))) |pos| for (0..heads) |h| {
                const at = [_]i64{ r.page_ids[pos / page_size], @intCast(pos % page_size), @intCast(h) };
                try keys.read(f32, &at, &got);
                for (got, 0..) |x, d| if (x != sample(layer, req, pos, h * head_dim + d)) return error.KeyMismatch;
                try values.read(f32, &at, &got);
                for (got, 0..) |x, d| if (x != -sample(layer, req, pos, h * head_dim + d)) return error.ValueMismatch;
            };
        }
    }
}
