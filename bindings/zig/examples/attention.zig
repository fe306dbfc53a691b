//! Fused attention: write one request's 3 new tokens into layer 0 and attend 4 query heads
//! (grouped over the 2 KV heads) to them in the same call.
const std = @import("std");
const kvpages = @import("kvpages");

pub fn main() !void {
    try kvpages.checkAbi();
    const cfg = try kvpages.Config.create(.{ .num_hidden_layers = 2, .num_kv_heads = 2, .max_model_length = 64, .head_dim = 128, .page_size = 16, .dtype = .f32, .budget_bytes = 1 << 20 });
    var cache = try kvpages.Cache.init(&cfg);
    defer cache.deinit();
    const pages = [_]i32{1};
    var order: [1]i32 = undefined;
    var md = try kvpages.Metadata.build(std.heap.page_allocator, &cfg, &.{.{ .num_computed = 0, .num_scheduled = 3, .page_ids = &pages }}, .{}, &order);
    defer md.deinit();
    var key: [3 * 2 * 128]f32 = undefined;
    var value: [3 * 2 * 128]f32 = undefined;
    for (&key, &value, 0..) |*k, *v, i| {
        k.* = @floatFromInt(i);
        v.* = -k.*;
    }
    const queries: [3 * 4 * 128]f32 = @splat(0); // zero queries: every visible key weighs the same
    var out: [3 * 4 * 128]f32 = undefined;
    const opts: kvpages.AttentionOptions = .{ .softmax_scale = 1.0 / @sqrt(128.0) };
    try cache.attention(0, &queries, &key, &value, .{ 3, 4, 2, 128 }, &md, opts, &out);
    // Token 2 sees tokens 0-2 (causal): the mean of their values (-5, -261, -517).
    const x = out[(2 * 4 + 0) * 128 + 5];
    if (x != -261) return error.Unexpected;
    std.debug.print("token 2, head 0, lane 5 = {d}\n", .{x});
    if (cache.attention(0, &queries, null, null, .{ 3, 4, 2, 128 }, &md, .{ .sliding_window = -1 }, &out)) |_| {
        return error.Unexpected;
    } else |e| {
        std.debug.print("{s}: {s}\n", .{ @errorName(e), kvpages.lastErrorMessage() });
    }
}
