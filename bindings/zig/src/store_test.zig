//! Block stores (since 1.4): a memory store's round trip and counters, a directory store that
//! survives deinit and reopen, and bad input giving the library's error with nothing changed.
//! (The pool's tiers are tested with the pool scenario in kvpages.zig.)
const std = @import("std");
const kv = @import("kvpages.zig");
const t = std.testing;

fn key(first: u8) kv.Store.Key {
    var k: kv.Store.Key = @splat(0);
    k[0] = first;
    return k;
}

const k1 = key(1);
const k2 = key(2);
const k3 = key(3);
const sevens: [100]u8 = @splat(7);

test "store: memory round trip, LRU-free stats and scrub" {
    var store = try kv.Store.memory(1 << 20);
    defer store.deinit();
    try store.put(&k1, "hello");
    try store.put(&k2, &sevens);
    const got = try store.get(t.allocator, &k1);
    defer t.allocator.free(got);
    try t.expectEqualStrings("hello", got);
    const got2 = try store.get(t.allocator, &k2);
    defer t.allocator.free(got2);
    try t.expectEqualSlices(u8, &sevens, got2);
    var found: [3]bool = undefined;
    try store.exists(&.{ k1, k3, k2 }, &found);
    try t.expectEqualSlices(bool, &.{ true, false, true }, &found);
    try store.remove(&k1);
    try t.expectError(error.NotFound, store.remove(&k1));
    try t.expectError(error.NotFound, store.get(t.allocator, &k1));
    const st = try store.stats();
    try t.expectEqual(@as(i64, 1), st.blocks);
    try t.expectEqual(@as(i64, 100), st.bytes);
    try t.expectEqual(@as(i64, 1 << 20), st.max_bytes);
    try t.expectEqual(@as(i64, 2), st.puts);
    try t.expectEqual(@as(i64, 2), st.hits);
    try t.expectEqual(@as(i64, 1), st.misses);
    try t.expectEqual(@as(i64, 0), st.errors);
    const r = try store.scrub();
    try t.expectEqual(@as(i64, 1), r.blocks_checked);
    try t.expectEqual(@as(i64, 0), r.blocks_damaged);
}

test "store: a directory store survives deinit and reopen" {
    var tmp = t.tmpDir(.{});
    defer tmp.cleanup();
    var path_buf: [256]u8 = undefined;
    const path = try std.fmt.bufPrint(&path_buf, ".zig-cache/tmp/{s}/blocks", .{tmp.sub_path});
    {
        var store = try kv.Store.directory(path, 1 << 20, .{});
        defer store.deinit();
        try store.put(&k1, "first block");
        try store.put(&k2, "second block");
    }
    var store = try kv.Store.directory(path, 1 << 20, .{ .no_sync = true });
    defer store.deinit();
    try t.expectEqual(@as(i64, 2), (try store.stats()).blocks);
    const got = try store.get(t.allocator, &k2);
    defer t.allocator.free(got);
    try t.expectEqualStrings("second block", got);
    const r = try store.scrub();
    try t.expectEqual(@as(i64, 2), r.blocks_checked);
    try t.expectEqual(@as(i64, 0), r.blocks_damaged);
}

test "store: bad input gives the library's error and changes nothing" {
    try t.expectError(error.InvalidArgument, kv.Store.memory(0));
    try t.expect(kv.lastErrorMessage().len > 0);
    var store = try kv.Store.memory(64);
    defer store.deinit();
    try t.expectError(error.InvalidArgument, store.put(&k1, &@as([65]u8, @splat(0))));
    const msg = kv.lastErrorMessage();
    try t.expect(std.mem.indexOf(u8, msg, "65") != null and std.mem.indexOf(u8, msg, "64") != null);
    try t.expectEqual(@as(i64, 0), (try store.stats()).blocks);
    var found: [1]bool = undefined;
    try store.exists(&.{k1}, &found);
    try t.expect(!found[0]);
    try t.expectError(error.InvalidArgument, store.exists(&.{ k1, k2 }, &found));
}

test "store: redis, a bad URL and a refused server (unsupported without Redis)" {
    if (std.mem.indexOf(u8, kv.buildInfo(), "redis=on") == null) {
        try t.expectError(error.Unsupported, kv.Store.redis("redis://127.0.0.1:6379", .{}));
        return;
    }
    try t.expectError(error.InvalidArgument, kv.Store.redis("redis://no-port", .{}));
    try t.expect(std.mem.indexOf(u8, kv.lastErrorMessage(), "Redis URL") != null);
    try t.expectError(error.Io, kv.Store.redis("redis://127.0.0.1:1", .{ .timeout_ms = 200 }));
    try t.expect(std.mem.indexOf(u8, kv.lastErrorMessage(), "127.0.0.1:1") != null);
}
