//! Serve a 40-token prompt through a page pool, then the same prompt again from the prefix cache.
const std = @import("std");
const kvpages = @import("kvpages");

pub fn main() !void {
    const cfg = try kvpages.Config.create(.{ .num_hidden_layers = 2, .num_kv_heads = 2, .max_model_length = 64, .head_dim = 128, .page_size = 16, .dtype = .f32, .budget_bytes = 1 << 20 });
    var cache = try kvpages.Cache.init(&cfg);
    defer cache.deinit(); // deferred first, runs last: the cache must outlive the pool
    var pool = try kvpages.Pool.init(&cache, .{});
    defer pool.deinit();
    var prompt: [40]i32 = undefined;
    for (&prompt, 0..) |*t, i| t.* = @intCast(100 + i);
    const a = try pool.addSequence(&prompt, 0, false);
    var pages: [4]i32 = undefined;
    const req = try pool.batchRequest(a.seq, &pages); // 0 computed, 40 scheduled, 3 page ids copied
    var order: [1]i32 = undefined;
    var md = try kvpages.Metadata.build(std.heap.page_allocator, &cfg, &.{req}, .{}, &order);
    defer md.deinit();
    var key: [40 * 2 * 128]f32 = undefined;
    for (&key, 0..) |*k, i| k.* = @floatFromInt(i);
    for (0..2) |layer| try cache.concatenate(@intCast(layer), f32, &key, &key, .{ 40, 2, 128 }, &md);
    try pool.setComputed(a.seq, 40); // full pages enter the prefix cache
    const b = try pool.addSequence(&prompt, 0, false);
    if (b.reused_tokens != 32) return error.Unexpected; // two full pages; the last 8 tokens are computed again
    var kids: [2]kvpages.SeqId = undefined;
    try pool.fork(b.seq, &kids); // share every page, copy-on-write on append
    for ([_]kvpages.SeqId{ a.seq, b.seq, kids[0], kids[1] }) |s| try pool.freeSequence(s);
    try pool.checkInvariants();
    const st = try pool.stats();
    if (st.used_pages != 0 or st.evictable_pages != 2) return error.Unexpected;
    std.debug.print("{d} free + {d} cached + {d} used = {d} pages\n", .{ st.free_pages, st.evictable_pages, st.used_pages, st.total_pages });
    if (pool.freeSequence(a.seq)) |_| return error.Unexpected else |e| {
        std.debug.print("{s}: {s}\n", .{ @errorName(e), kvpages.lastErrorMessage() }); // NotFound: ... stale
    }
}
