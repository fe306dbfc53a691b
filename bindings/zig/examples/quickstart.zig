//! Plan a small f32 cache, write one request's 3 new tokens into layer 0, read a key back.
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
    try cache.concatenate(0, f32, &key, &value, .{ 3, 2, 128 }, &md);
    const keys = try cache.view(0, .keys); // [pages, page_size, heads, head_dim]
    const x = keys.getF32(&.{ 1, 2, 1, 5 }) orelse return error.Unexpected;
    if (x != 645) return error.Unexpected;
    std.debug.print("token 2, head 1, lane 5 = {d}\n", .{x});
    if (cache.concatenate(9, f32, &key, &value, .{ 3, 2, 128 }, &md)) |_| {
        return error.Unexpected;
    } else |e| {
        std.debug.print("{s}: {s}\n", .{ @errorName(e), kvpages.lastErrorMessage() });
    }
}
