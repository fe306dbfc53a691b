//! One test (or a few) per group of the C API, through the public Zig API only: errors,
//! versions, dtypes, helpers, config and planning, JSON, caches and views, typed bf16/f16/fp8
//! access, the order-safe batch, metadata, serialization (slices, files, std.Io streams),
//! inspect, DLPack, async errors and host allocators. Bad input: the error, the message, and
//! nothing changed.
const std = @import("std");
const kv = @import("kvpages.zig");
const t = std.testing;

const H = 2;
const D = 128;
const S = 16;
const row = H * D;

/// A two-layer cache shape with 1 MiB of budget: 8 pages (f32) or 16 (bf16).
fn smallConfig(dtype: kv.Dtype) !kv.Config {
    return kv.Config.create(.{ .num_hidden_layers = 2, .num_kv_heads = H, .max_model_length = 64, .head_dim = D, .page_size = S, .dtype = dtype, .budget_bytes = 1 << 20 });
}

fn expectMessage(part: []const u8) !void {
    const msg = kv.lastErrorMessage();
    if (std.mem.indexOf(u8, msg, part) == null) {
        std.debug.print("message \"{s}\" lacks \"{s}\"\n", .{ msg, part });
        return error.TestUnexpectedResult;
    }
}

fn expectSameCaches(a: *const kv.Cache, b: *const kv.Cache) !void {
    const n = try a.layerBytes();
    const x = try t.allocator.alloc(u8, n);
    defer t.allocator.free(x);
    const y = try t.allocator.alloc(u8, n);
    defer t.allocator.free(y);
    for (0..@intCast((try a.config()).num_hidden_layers)) |layer| {
        try a.readLayer(@intCast(layer), x);
        try b.readLayer(@intCast(layer), y);
        try t.expectEqualSlices(u8, x, y);
    }
}

/// Value of request `req`'s token at `pos`, exact in every dtype down to fp8 e4m3.
fn sample(req: usize, pos: usize, i: usize) f32 {
    const x: i64 = @intCast((req * 5 + pos * 3 + i) % 16);
    return @as(f32, @floatFromInt(x - 8)) * 0.25;
}

/// Writes a mixed step (a prefill of 3 on page 1, a decode at position 5 on page 2, a prefill
/// of 2 on page 3) into `layer` through the order-safe batch; keys = sample, values = -sample.
fn writeMixedStep(cache: *kv.Cache, cfg: *const kv.Config, layer: u32) !void {
    const requests = [_]kv.BatchRequest{
        .{ .num_computed = 0, .num_scheduled = 3, .page_ids = &.{1} },
        .{ .num_computed = 5, .num_scheduled = 1, .page_ids = &.{2} },
        .{ .num_computed = 0, .num_scheduled = 2, .page_ids = &.{3} },
    };
    var batch = try kv.Batch.build(t.allocator, cfg, &requests, .{});
    defer batch.deinit();
    try t.expectEqualSlices(i32, &.{ 1, 0, 2 }, batch.order);
    var keys: [3][]const f32 = undefined;
    var values: [3][]const f32 = undefined;
    for (requests, 0..) |r, i| {
        keys[i] = try tokens(i, r, 1);
        values[i] = try tokens(i, r, -1);
    }
    defer for (keys, values) |k, v| {
        t.allocator.free(k);
        t.allocator.free(v);
    };
    try cache.concatenateBatch(layer, f32, &batch, &keys, &values);
}

fn tokens(req: usize, r: kv.BatchRequest, sign: f32) ![]f32 {
    const n: usize = @intCast(r.num_scheduled);
    const out = try t.allocator.alloc(f32, n * row);
    for (0..n) |tok| for (0..row) |i| {
        out[tok * row + i] = sign * sample(req, @as(usize, @intCast(r.num_computed)) + tok, i);
    };
    return out;
}

/// Expects the mixed step's tokens where they belong, read as f32.
fn expectMixedStep(cache: *const kv.Cache, layer: u32) !void {
    const slots = [_]struct { req: usize, pos: usize, page: i64 }{
        .{ .req = 0, .pos = 0, .page = 1 }, .{ .req = 0, .pos = 1, .page = 1 }, .{ .req = 0, .pos = 2, .page = 1 },
        .{ .req = 1, .pos = 5, .page = 2 }, .{ .req = 2, .pos = 0, .page = 3 }, .{ .req = 2, .pos = 1, .page = 3 },
    };
    const keys = try cache.view(layer, .keys);
    const values = try cache.view(layer, .values);
    var got: [D]f32 = undefined;
    for (slots) |s| for (0..H) |h| {
        const at = [_]i64{ s.page, @intCast(s.pos), @intCast(h) };
        try keys.read(f32, &at, &got);
        for (got, 0..) |x, d| try t.expectEqual(sample(s.req, s.pos, h * D + d), x);
        try values.read(f32, &at, &got);
        for (got, 0..) |x, d| try t.expectEqual(-sample(s.req, s.pos, h * D + d), x);
    };
}

// -- Errors and versions ----------------------------------------------------------------------

test "errors: every status code the library names maps to its own error and back" {
    var named: usize = 0;
    for (1..256) |code| {
        const status: i32 = @intCast(code);
        if (std.mem.eql(u8, kv.statusName(status), "KVP_ERR_UNKNOWN")) {
            try t.expectEqual(error.Unknown, kv.statusError(status));
            continue;
        }
        named += 1;
        const err = kv.statusError(status);
        try t.expect(err != error.Unknown);
        try t.expectEqual(@as(?i32, status), kv.errorStatus(err));
    }
    try t.expectEqual(@as(usize, 20), named);
    try t.expectEqual(error.FormatChecksum, kv.statusError(kv.c.KVP_ERR_FORMAT_CHECKSUM));
    try t.expectEqualStrings("KVP_ERR_FORMAT_MISMATCH", kv.statusName(kv.c.KVP_ERR_FORMAT_MISMATCH));
    try t.expectEqual(@as(?i32, null), kv.errorStatus(error.Unknown));
}

test "errors: the message is kept, copied on request and cleared by a success" {
    try t.expectError(error.NotFound, kv.Dtype.fromString("int8"));
    try expectMessage("int8");
    const copy = try kv.lastErrorAlloc(t.allocator);
    defer t.allocator.free(copy);
    try t.expectEqualStrings(kv.lastErrorMessage(), copy);
    _ = try kv.Dtype.fromString("bf16");
    try t.expectEqualStrings("", kv.lastErrorMessage());
}

test "versions: library, headers and build agree" {
    try kv.checkAbi();
    try t.expect(kv.versionNumber() >= kv.header_version);
    try t.expect(kv.versionNumber() / 10000 == kv.header_version / 10000);
    var buf: [32]u8 = undefined;
    const v = kv.versionNumber();
    try t.expectEqualStrings(try std.fmt.bufPrint(&buf, "{d}.{d}.{d}", .{ v / 10000, v / 100 % 100, v % 100 }), kv.version());
    try t.expect(std.mem.startsWith(u8, kv.buildInfo(), "kvpages "));
}

const MisuseLog = struct {
    calls: usize = 0,
    last: [128]u8 = undefined,
    len: usize = 0,

    fn record(context: ?*anyopaque, what: [:0]const u8) void {
        const self: *MisuseLog = @ptrCast(@alignCast(context.?));
        self.calls += 1;
        self.len = @min(what.len, self.last.len);
        @memcpy(self.last[0..self.len], what[0..self.len]);
    }
};

test "misuse handler: a destroyed handle is reported to the handler and refused" {
    const cfg = try smallConfig(.f32);
    var cache = try kv.Cache.init(&cfg);
    const stale = cache;
    cache.deinit();
    var log: MisuseLog = .{};
    const handler: kv.MisuseHandler = .{ .context = &log, .onMisuse = MisuseLog.record };
    kv.setMisuseHandler(&handler);
    defer kv.setMisuseHandler(null);
    try t.expectError(error.InvalidHandle, stale.config());
    try t.expectEqual(@as(usize, 1), log.calls);
    try t.expect(std.mem.indexOf(u8, log.last[0..log.len], "kvp_cache_get_config") != null);
    kv.setMisuseHandler(null);
    try t.expectError(error.InvalidHandle, stale.layout());
    try t.expectEqual(@as(usize, 1), log.calls);
}

// -- Dtypes, conversion and helpers -----------------------------------------------------------

test "dtypes: names, widths, packing, lookups" {
    try t.expectEqual(kv.Dtype.bf16, try kv.Dtype.fromString("bfloat16"));
    try t.expectEqual(kv.Dtype.f8_e5m2, try kv.Dtype.fromString("fp8"));
    try t.expectEqualStrings("fp8_e4m3fn", kv.Dtype.f8_e4m3fn.name().?);
    try t.expectEqual(@as(?[:0]const u8, null), @as(kv.Dtype, @fromBackingInt(@intCast(77))).name());
    try t.expectEqual(@as(u32, 16), kv.Dtype.bf16.bits());
    try t.expectEqual(@as(i64, 4), try kv.Dtype.f8_e4m3fn.packing());
    try t.expectError(error.InvalidArgument, kv.Dtype.f64.packing());
    try t.expectError(error.InvalidArgument, kv.Dtype.fromString("a\x00b"));
    try t.expectEqual(kv.LayoutVersion.v2, try kv.LayoutVersion.fromString("v2"));
    try t.expectEqualStrings("v3", kv.LayoutVersion.v3.name().?);
    try t.expectError(error.NotFound, kv.LayoutVersion.fromString("v4"));
}

test "convert: the library's bit patterns and rounding for every element type" {
    try t.expectEqual(@as(u16, 0x3F80), @backingInt(kv.Bf16.fromF32(1.0)));
    try t.expectEqual(@as(u16, 0x3F80), @backingInt(kv.Bf16.fromF32(1.00390625))); // tie to even
    try t.expectEqual(@as(u16, 0x3F82), @backingInt(kv.Bf16.fromF32(1.01171875)));
    try t.expectEqual(@as(u8, 0x38), @backingInt(kv.F8E4M3.fromF32(1.0)));
    try t.expectEqual(@as(u8, 0x3C), @backingInt(kv.F8E5M2.fromF32(1.0)));
    try t.expect(std.math.isNan(kv.F8E4M3.fromF32(1000).toF32())); // no saturation, no infinity
    try t.expect(std.math.isInf(kv.F8E5M2.fromF32(1e6).toF32()));
    const src = [_]f32{ 0.5, -2, 3.25, 65504 };
    var half: [4]f16 = undefined;
    try kv.convert(f32, f16, &src, &half);
    try t.expectEqualSlices(f16, &.{ 0.5, -2, 3.25, 65504 }, &half);
    var back: [4]f32 = undefined;
    var bf: [4]kv.Bf16 = undefined;
    try kv.convert(f16, kv.Bf16, &half, &bf);
    try kv.convert(kv.Bf16, f32, &bf, &back);
    try t.expectEqualSlices(f32, &.{ 0.5, -2, 3.25, 65536 }, &back); // bf16 rounds 65504 up
    // A length mismatch is refused and dst unchanged.
    try t.expectError(error.InvalidArgument, kv.convert(f32, f32, &src, back[0..3]));
    try t.expectEqualSlices(f32, &.{ 0.5, -2, 3.25, 65536 }, &back);
}

test "helpers: the reference's integer functions" {
    try t.expectEqual(@as(i64, 0), try kv.cdiv(-1, 4));
    try t.expectEqual(@as(i64, -1), try kv.cdiv(5, -2));
    try t.expectError(error.InvalidArgument, kv.cdiv(1, 0));
    try t.expectEqual(@as(i64, 8), try kv.alignToMultiple(5, 4));
    try t.expectEqual(@as(i64, 64), kv.previousPowerOf2(100));
    try t.expectEqual(@as(i64, 0), kv.previousPowerOf2(-3));
    try t.expectEqual(@as(i64, 128 * 16 * 128 * 2), try kv.pageSizeBytes(128, 8, 128, .bf16));
    try t.expectEqual(@as(i64, 32), try kv.numSlicesPerKvCacheUpdatePage(512 << 10));
    try t.expectError(error.InvalidArgument, kv.numSlicesPerKvCacheUpdatePage(32 << 20));
}

// -- Config, planning, budgets ----------------------------------------------------------------

test "config: sharding resolution (SPEC.md 7.3)" {
    // 4 fp8 heads over 4 devices: 2 storage groups do not split, bf16's 4 do: upcast.
    const o: kv.ConfigOptions = .{ .num_hidden_layers = 1, .num_kv_heads = 4, .max_model_length = 4096, .head_dim = 128, .dtype = .f8_e4m3fn, .budget_bytes = 1 << 20, .no_safety_margin = true, .kv_head_shards = 4, .data_parallel_size = 2 };
    const cfg = try kv.Config.create(o);
    try t.expectEqual(kv.Dtype.bf16, cfg.kvdtype);
    try t.expectEqual(@as(u32, @intFromEnum(kv.Dtype.f8_e4m3fn)), cfg.requested_kvdtype);
    try t.expectEqual(@as(i64, 4), cfg.kv_head_shards);
    try t.expectEqual(@as(i64, 2), cfg.data_parallel_size);
    try t.expectEqual(@as(i64, 32), cfg.num_pages);
    const p = try cfg.plan();
    try t.expectEqual(@as(u32, 2), p.head_sharding);
    try t.expectEqual(@as(i64, 16), p.pages_per_device);
    try t.expect(std.mem.startsWith(u8, p.shardingMessage(), "upcast fp8_e4m3fn \u{2192} bf16 because 2 storage groups"));
    var bad = o;
    bad.data_parallel_size = -1;
    try t.expectError(error.InvalidArgument, kv.Config.create(bad));
    try t.expect(std.mem.indexOf(u8, kv.lastErrorMessage(), "data_parallel_size") != null);
}

test "config: every option reaches the planner" {
    const base: kv.ConfigOptions = .{ .num_hidden_layers = 2, .num_kv_heads = 2, .max_model_length = 1000, .head_dim = 96, .page_size = 16, .budget_bytes = 64 << 20 };
    const padded = try kv.Config.create(base);
    var o = base;
    o.reference_budget = true;
    const reference = try kv.Config.create(o);
    try t.expect(reference.num_pages > padded.num_pages); // the unpadded formula fits more
    o = base;
    o.kv_head_shards = 2;
    try t.expectEqual(2 * padded.num_pages, (try kv.Config.create(o)).num_pages);
    o = base;
    o.max_num_tokens = 512;
    o.max_num_reqs = 8;
    o.layout = .v2;
    o.dtype = .f16;
    o.k_head_dim = 96;
    o.v_head_dim = 96;
    o.head_dim = 0;
    o.hbm_utilization = 0.5;
    const hinted = try kv.Config.create(o);
    try t.expectEqual(@as(i64, 512), hinted.max_num_tokens);
    try t.expectEqual(@as(i64, 8), hinted.max_num_reqs);
    try t.expectEqual(kv.LayoutVersion.v2, hinted.version);
    try t.expectEqual(kv.Dtype.f16, hinted.kvdtype);
    try t.expectEqual(@as(f64, 0.5), hinted.hbm_utilization);
    try t.expectEqual(@as(i64, 63), hinted.max_num_pages_per_req);
    // Injected statistics, margin and mode: 1 GiB free, utilization 0.5, no margin = 512 MiB.
    const stats = [_]kv.MemoryStats{.{ .bytes_limit = 1 << 30, .valid = 1 }};
    o = base;
    o.budget_bytes = 0;
    o.memory_stats = &stats;
    o.hbm_utilization = 0.5;
    o.no_safety_margin = true;
    const from_stats = try kv.Config.create(o);
    o.budget_bytes = 512 << 20;
    o.memory_stats = null;
    try t.expectEqual((try kv.Config.create(o)).num_pages, from_stats.num_pages);
    o = base;
    o.budget_bytes = 0;
    o.memory_stats = &stats;
    o.budget_mode = .total;
    o.safety_margin_bytes = 1 << 20;
    const budget = try kv.hbmBudgetBytes(&stats, 0.9, .total, 1 << 20);
    try t.expectEqual(@divFloor(budget, (try padded.plan()).bytes_per_page), (try kv.Config.create(o)).num_pages);
}

test "config: the budget comes from the cache's device" {
    const host = try kv.deviceMemoryStats(.cpu);
    try t.expect(host.valid != 0 and host.bytes_total > 0);
    const cfg = try kv.Config.create(.{ .num_hidden_layers = 2, .num_kv_heads = 2, .max_model_length = 64, .head_dim = 128, .device = .cpu });
    const want = try kv.hbmBudgetBytes(&.{try kv.deviceMemoryStats(.cpu)}, 0.9, .free, kv.default_safety_margin);
    const plan = try cfg.plan();
    if (want > plan.bytes_per_page) try t.expect(@abs(plan.total_bytes - want) <= 64 * plan.bytes_per_page);
    const gpus = try kv.deviceCount();
    if (gpus == 0) {
        try t.expectError(error.NoDevice, kv.Config.create(.{ .num_hidden_layers = 2, .num_kv_heads = 2, .max_model_length = 64, .head_dim = 128, .device = .{ .cuda = 0 } }));
        try t.expectError(error.NoDevice, kv.deviceMemoryStats(.{ .cuda = 0 }));
    }
}

test "config: bad options fail with a message naming the field" {
    try t.expectError(error.InvalidArgument, kv.Config.create(.{ .num_hidden_layers = 2, .num_kv_heads = 2, .max_model_length = 64, .k_head_dim = 128, .v_head_dim = 64, .budget_bytes = 1 << 20 }));
    try expectMessage("v_headdim");
    try t.expectError(error.InvalidArgument, kv.Config.create(.{ .num_hidden_layers = 2, .num_kv_heads = 2, .max_model_length = 64, .head_dim = 128, .budget_bytes = 1 }));
    try t.expectError(error.Unsupported, kv.Config.create(.{ .num_hidden_layers = 2, .num_kv_heads = 2, .max_model_length = 64, .head_dim = 128, .dtype = .f64, .budget_bytes = 1 << 20 }));
}

test "planning: plan, layout, padded slices, defaults and validation" {
    const cfg = try smallConfig(.bf16);
    try cfg.validate();
    const plan = try cfg.plan();
    const info = try cfg.layout();
    try t.expectEqual(cfg.num_pages, plan.num_pages);
    try t.expectEqual(plan.num_pages - 1, plan.usable_pages);
    try t.expectEqual(info.page_bytes_per_layer * 2, plan.bytes_per_page);
    try t.expectEqual(plan.num_pages * info.page_bytes_per_layer, info.layer_bytes);
    try t.expectEqual(@as(i64, 5), info.ndim);
    try t.expect(try cfg.paddedNumSlices(64, 4) > 0);
    var d = kv.Config.defaults();
    try t.expectEqual(@as(i64, 128), d.page_size);
    try t.expectEqual(@as(i64, -1), d.num_pages);
    try t.expectError(error.InvalidArgument, d.validate()); // model fields still 0
    d = cfg;
    d.num_pages = 0;
    try t.expectError(error.InvalidArgument, d.plan());
}

test "json: config and metadata round-trip; bad text is refused" {
    const cfg = try smallConfig(.bf16);
    const text = try cfg.toJson(t.allocator);
    defer t.allocator.free(text);
    try t.expect(std.mem.startsWith(u8, text, "{\"num_hidden_layers\": 2, "));
    try t.expect(std.mem.indexOf(u8, text, "\"_kvdtype_str\": \"bf16\"") != null);
    try t.expectEqual(cfg, try kv.Config.fromJson(text));
    try t.expectError(error.InvalidArgument, kv.Config.fromJson("{\"num_hidden_layers\": 2"));
    try t.expectError(error.NotFound, kv.Config.fromJson("{\"num_hidden_layers\": 2, \"max_model_length\": 64, \"num_kv_heads\": 2, \"k_headdim\": 128, \"v_headdim\": 128, \"_kvdtype_str\": \"int4\"}"));

    var batch = try kv.Batch.build(t.allocator, &cfg, &.{.{ .num_computed = 0, .num_scheduled = 3, .page_ids = &.{1} }}, .{});
    defer batch.deinit();
    const md_text = try batch.metadata.toJson(t.allocator);
    defer t.allocator.free(md_text);
    var md = try kv.Metadata.fromJson(md_text);
    defer md.deinit();
    // The arrays round-trip (the informational num_slices_per_kv_cache_update_page is not read).
    const want = try batch.metadata.describe();
    const got = try md.describe();
    inline for (.{ "pages_tables", "context_lens", "query_start_loc", "num_seqs", "position_ids", "request_distribution" }) |field|
        try t.expectEqualSlices(i32, @field(want, field).?, @field(got, field).?);
    try t.expectEqual(@as(?[]const i32, null), got.slot_mapping);
    try t.expectError(error.InvalidArgument, kv.Metadata.fromJson("[1, 2]"));
}

// -- Caches, typed access, batches ------------------------------------------------------------

test "cache: config, device, layout, async errors; CUDA needs a device" {
    const cfg = try smallConfig(.bf16);
    var cache = try kv.Cache.initOn(&cfg, .cpu);
    defer cache.deinit();
    try t.expectEqual(cfg, try cache.config());
    try t.expectEqual(kv.Device.cpu, try cache.device());
    try t.expectEqual(try cfg.layout(), try cache.layout());
    try t.expectEqual(@as(?kv.Error, null), try cache.asyncError());
    try cache.clearAsyncError();
    if (try kv.deviceCount() == 0) {
        try t.expectError(error.NoDevice, kv.Cache.initOn(&cfg, .{ .cuda = 0 }));
        try expectMessage("CUDA");
    }
}

test "bf16: a mixed batch lands in the right slots and reads back as f32 exactly" {
    const cfg = try smallConfig(.bf16);
    var cache = try kv.Cache.init(&cfg);
    defer cache.deinit();
    try writeMixedStep(&cache, &cfg, 1);
    try expectMixedStep(&cache, 1);
    // The bits are the C library's bf16 conversion of what was written.
    const keys = try cache.view(1, .keys);
    try t.expectEqual(kv.Dtype.bf16, keys.dtype());
    try t.expectEqual(kv.Bf16.fromF32(sample(1, 5, 7)), keys.get(kv.Bf16, &.{ 2, 5, 0, 7 }).?);
    try t.expectEqual(@as(?f32, 0), keys.getF32(&.{ 2, 4, 0, 7 })); // untouched slot
    try t.expectEqual(@as(?f32, null), keys.getF32(&.{ cfg.num_pages, 0, 0, 0 }));
}

test "typed writes: f16 and bf16 inputs, and every cache dtype matches kvp_convert" {
    inline for (.{ kv.Dtype.f32, kv.Dtype.f16, kv.Dtype.bf16, kv.Dtype.f8_e4m3fn, kv.Dtype.f8_e5m2 }) |dtype| {
        const cfg = try smallConfig(dtype);
        var cache = try kv.Cache.init(&cfg);
        defer cache.deinit();
        try writeMixedStep(&cache, &cfg, 0);
        try expectMixedStep(&cache, 0); // the samples are exact in every dtype
        // A bf16 input written through one request's batch equals the f32 input's bytes.
        var other = try kv.Cache.init(&cfg);
        defer other.deinit();
        try writeMixedStep(&other, &cfg, 0);
        var batch = try kv.Batch.build(t.allocator, &cfg, &.{.{ .num_computed = 0, .num_scheduled = 1, .page_ids = &.{4} }}, .{});
        defer batch.deinit();
        var f: [row]f32 = undefined;
        for (&f, 0..) |*x, i| x.* = sample(9, 0, i) * 3.3;
        var b: [row]kv.Bf16 = undefined;
        try kv.convert(f32, kv.Bf16, &f, &b);
        var rounded: [row]f32 = undefined;
        try kv.convert(kv.Bf16, f32, &b, &rounded);
        try cache.concatenateBatch(0, kv.Bf16, &batch, &.{&b}, &.{&b});
        try other.concatenateBatch(0, f32, &batch, &.{&rounded}, &.{&rounded});
        try expectSameCaches(&cache, &other);
        // View.write stores what convert produces.
        const keys = try cache.view(0, .keys);
        var lane: [D]f32 = undefined;
        for (&lane, 0..) |*x, i| x.* = @as(f32, @floatFromInt(i)) * 0.37 - 20;
        try keys.write(f32, &.{ 5, 3, 1 }, &lane);
        var got: [D]f32 = undefined;
        try keys.read(f32, &.{ 5, 3, 1 }, &got);
        var want: [D]f32 = lane;
        try roundTrip(dtype, &want);
        try t.expectEqualSlices(f32, &want, &got);
        try t.expectError(error.InvalidArgument, keys.read(f32, &.{ 5, 3 }, &got));
        try t.expectError(error.InvalidArgument, keys.read(f32, &.{ 5, 3, 1 }, got[1..]));
        try t.expectError(error.InvalidArgument, keys.write(f32, &.{ cfg.num_pages, 0, 0 }, &lane));
    }
}

/// `values` rounded through `dtype` and back.
fn roundTrip(comptime dtype: kv.Dtype, values: []f32) !void {
    const T = switch (dtype) {
        .f32 => f32,
        .f16 => f16,
        .bf16 => kv.Bf16,
        .f8_e4m3fn => kv.F8E4M3,
        .f8_e5m2 => kv.F8E5M2,
        else => unreachable,
    };
    var tmp: [D]T = undefined;
    try kv.convert(f32, T, values, tmp[0..values.len]);
    try kv.convert(T, f32, tmp[0..values.len], values);
}

test "batch: packing follows the row order; bad per-request data changes nothing" {
    const cfg = try smallConfig(.f32);
    var batch = try kv.Batch.build(t.allocator, &cfg, &.{
        .{ .num_computed = 0, .num_scheduled = 2, .page_ids = &.{1} },
        .{ .num_computed = 0, .num_scheduled = 0 },
        .{ .num_computed = 3, .num_scheduled = 1, .page_ids = &.{2} },
    }, .{});
    defer batch.deinit();
    try t.expectEqualSlices(i32, &.{ 2, 0, -1 }, batch.order);
    try t.expectEqual(@as(usize, 3), batch.numTokens());
    const a = [_]u8{ 1, 2 };
    const z = [_]u8{};
    const c3 = [_]u8{3};
    var out: [3]u8 = undefined;
    try batch.packRows(u8, 1, &.{ &a, &z, &c3 }, &out);
    try t.expectEqualSlices(u8, &.{ 3, 1, 2 }, &out);
    try t.expectError(error.InvalidArgument, batch.packRows(u8, 1, &.{ &a, &c3, &c3 }, &out));
    try t.expectError(error.InvalidArgument, batch.packRows(u8, 1, &.{ &a, &z }, &out));
    // Keep-order: the caller's order is kept (v3 then wants the decode first).
    var kept = try kv.Batch.build(t.allocator, &cfg, &.{
        .{ .num_computed = 3, .num_scheduled = 1, .page_ids = &.{2} },
        .{ .num_computed = 0, .num_scheduled = 2, .page_ids = &.{1} },
    }, .{ .keep_order = true, .max_num_reqs = 4 });
    defer kept.deinit();
    try t.expectEqualSlices(i32, &.{ 0, 1 }, kept.order);
    try t.expectEqual(@as(usize, 4 + 1), (try kept.metadata.array(.query_start_loc)).?.len);

    var cache = try kv.Cache.init(&cfg);
    defer cache.deinit();
    var pristine = try kv.Cache.init(&cfg);
    defer pristine.deinit();
    const short: [row]f32 = @splat(1);
    try t.expectError(error.InvalidArgument, cache.concatenateBatch(0, f32, &batch, &.{ &short, &.{}, &short }, &.{ &short, &.{}, &short }));
    try t.expectError(error.InvalidArgument, kv.Batch.build(t.allocator, &cfg, &.{.{ .num_computed = 0, .num_scheduled = 40, .page_ids = &.{1} }}, .{}));
    try expectMessage("request 0");
    try expectSameCaches(&cache, &pristine);
}

test "metadata: empty, wrapped caller arrays, arrays and descriptions" {
    var empty = try kv.Metadata.createEmpty(.v3, 8, 4, 3, 0);
    defer empty.deinit();
    try t.expectEqual(@as(usize, 12), (try empty.array(.pages_tables)).?.len);
    try t.expectEqual(@as(usize, 5), (try empty.array(.query_start_loc)).?.len);
    try t.expectEqual(@as(?[]const i32, null), try empty.array(.slot_mapping));
    const d = try empty.describe();
    try t.expectEqual(@as(i64, 4), d.num_reqs);
    try t.expectEqual(@as(usize, 8), d.position_ids.?.len);

    // The mixed step of writeMixedStep, described by hand: decode row first.
    const cfg = try smallConfig(.f32);
    const pages = [_]i32{ 2, 1, 3 };
    const ctx = [_]i32{ 6, 3, 2 };
    const qsl = [_]i32{ 0, 1, 4, 6 };
    const dist = [_]i32{ 1, 3, 3 };
    var md = try kv.Metadata.wrap(.{ .pages_tables = &pages, .num_reqs = 3, .pages_per_req = 1, .context_lens = &ctx, .query_start_loc = &qsl, .request_distribution = &dist });
    defer md.deinit();
    try t.expectEqual(@as([*]const i32, &pages), (try md.array(.pages_tables)).?.ptr); // no copy
    try t.expectEqual(@as(i64, 3), (try md.describe()).num_reqs);
    var batch = try kv.Batch.build(t.allocator, &cfg, &.{
        .{ .num_computed = 0, .num_scheduled = 3, .page_ids = &.{1} },
        .{ .num_computed = 5, .num_scheduled = 1, .page_ids = &.{2} },
        .{ .num_computed = 0, .num_scheduled = 2, .page_ids = &.{3} },
    }, .{});
    defer batch.deinit();
    const built = try batch.metadata.describe();
    try t.expectEqual(@as(i64, 4), built.pages_per_req); // max_model_length 64 / page_size 16
    const table = built.pages_tables.?;
    try t.expectEqualSlices(i32, &.{ 2, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0 }, table);
    try t.expectEqualSlices(i32, &qsl, built.query_start_loc.?);
    try t.expectEqualSlices(i32, &dist, built.request_distribution.?);
    try t.expectError(error.InvalidArgument, kv.Metadata.wrap(.{ .pages_tables = &pages, .num_reqs = 2, .pages_per_req = 1 }));
}

// -- Serialization, inspect, DLPack -----------------------------------------------------------

/// A bf16 cache holding the mixed step in layer 1.
fn filledCache(cfg: *const kv.Config) !kv.Cache {
    var cache = try kv.Cache.init(cfg);
    errdefer cache.deinit();
    try writeMixedStep(&cache, cfg, 1);
    return cache;
}

test "serialize: slices, sizes, new caches and page selections" {
    const cfg = try smallConfig(.bf16);
    var cache = try filledCache(&cfg);
    defer cache.deinit();
    const blob = try cache.serializeAlloc(t.allocator, .{});
    defer t.allocator.free(blob);
    try t.expectEqual(try cache.serializedSize(.{}), blob.len);
    var loaded = try kv.Cache.fromBytes(blob, .{});
    defer loaded.deinit();
    try expectSameCaches(&cache, &loaded);

    // Pages 1-3 only, loaded into pages 7-9 of a fresh cache.
    var small: [1 << 16]u8 = undefined;
    try t.expectError(error.BufferTooSmall, cache.serializeInto(&small, .{ .pages = &.{ 1, 2, 3 } }));
    const part = try cache.serializeAlloc(t.allocator, .{ .pages = &.{ 1, 2, 3 }, .chunk_bytes = 4096 });
    defer t.allocator.free(part);
    const buf = try t.allocator.alloc(u8, part.len);
    defer t.allocator.free(buf);
    try t.expectEqualSlices(u8, part, try cache.serializeInto(buf, .{ .pages = &.{ 1, 2, 3 }, .chunk_bytes = 4096 }));
    var moved = try kv.Cache.init(&cfg);
    defer moved.deinit();
    try moved.loadBytes(part, &.{ 7, 8, 9 });
    const keys = try moved.view(1, .keys);
    try t.expectEqual(sample(1, 5, 9), keys.getF32(&.{ 8, 5, 0, 9 }).?);
    try t.expectEqual(@as(?f32, 0), keys.getF32(&.{ 2, 5, 0, 9 }));
    try t.expectError(error.InvalidArgument, cache.serializedSize(.{ .pages = &.{ 1, 1 } }));
}

test "serialize: std.Io writers and readers" {
    const cfg = try smallConfig(.bf16);
    var cache = try filledCache(&cfg);
    defer cache.deinit();
    const blob = try cache.serializeAlloc(t.allocator, .{ .pages = &.{ 1, 2, 3 } });
    defer t.allocator.free(blob);
    var sink: std.Io.Writer.Allocating = .init(t.allocator);
    defer sink.deinit();
    try cache.serializeToWriter(&sink.writer, .{ .pages = &.{ 1, 2, 3 } });
    try t.expectEqualSlices(u8, blob, sink.written());
    // A reader with more data after the blob: exactly the blob is consumed.
    const stream = try std.mem.concat(t.allocator, u8, &.{ blob, "tail" });
    defer t.allocator.free(stream);
    var reader: std.Io.Reader = .fixed(stream);
    var loaded = try kv.Cache.fromReader(&reader, .{});
    defer loaded.deinit();
    try t.expectEqualStrings("tail", reader.buffered());
    var into = try kv.Cache.init(&cfg);
    defer into.deinit();
    reader = .fixed(blob);
    try into.loadReader(&reader, null);
    try expectSameCaches(&loaded, &into);
    try expectMixedStep(&into, 1);
    // Failing streams surface as the std.Io errors.
    var failing: std.Io.Writer = .failing;
    try t.expectError(error.WriteFailed, cache.serializeToWriter(&failing, .{}));
    var failing_reader: std.Io.Reader = .failing;
    try t.expectError(error.ReadFailed, kv.Cache.fromReader(&failing_reader, .{}));
}

test "serialize: files, inspect, and format errors that change nothing" {
    var tmp = t.tmpDir(.{});
    defer tmp.cleanup();
    var path_buf: [256]u8 = undefined;
    const path = try std.fmt.bufPrint(&path_buf, ".zig-cache/tmp/{s}/cache.kvps", .{tmp.sub_path});
    const cfg = try smallConfig(.bf16);
    var cache = try filledCache(&cfg);
    defer cache.deinit();
    try cache.saveFile(path, .{ .pages = &.{ 1, 2, 3 } });
    const info = try kv.inspectFile(path, .{ .verify = true });
    try t.expectEqual(@as(u64, 3), info.num_stored_pages);
    try t.expectEqual(@as(u64, 1), info.first_page_id);
    try t.expectEqual(@as(u64, 3), info.last_page_id);
    try t.expectEqual(@as(u32, kv.c.KVP_FORMAT_MAJOR), info.format_major);
    try t.expectEqual(kv.versionNumber(), info.writer_version);
    try t.expectEqual(cfg, info.config);
    var from_file = try kv.Cache.fromFile(path, .{});
    defer from_file.deinit();
    try expectSameCaches(&cache, &from_file);
    var into = try kv.Cache.init(&cfg);
    defer into.deinit();
    try into.loadFile(path, null);
    try expectSameCaches(&cache, &into);

    const blob = try cache.serializeAlloc(t.allocator, .{ .pages = &.{ 1, 2, 3 } });
    defer t.allocator.free(blob);
    const header = try kv.inspect(blob[0..info.header_size], .{});
    try t.expectEqual(info.total_bytes, header.total_bytes);
    try t.expectEqual(blob.len, @as(usize, @intCast(info.total_bytes)));
    // Corruptions: each a format error with a message; the target unchanged.
    var target = try kv.Cache.init(&cfg);
    defer target.deinit();
    var pristine = try kv.Cache.init(&cfg);
    defer pristine.deinit();
    const bad = try t.allocator.dupe(u8, blob);
    defer t.allocator.free(bad);
    bad[bad.len - 10] ^= 0x40;
    try t.expectError(error.FormatChecksum, target.loadBytes(bad, null));
    try t.expect(kv.lastErrorMessage().len > 0);
    try t.expectError(error.FormatChecksum, kv.inspect(bad, .{ .verify = true }));
    try t.expectError(error.FormatTruncated, target.loadBytes(blob[0 .. blob.len - 1], null));
    bad[bad.len - 10] ^= 0x40;
    bad[0] ^= 0xFF;
    try t.expectError(error.FormatMagic, kv.Cache.fromBytes(bad, .{}));
    try t.expectError(error.FormatMagic, target.loadBytes(bad, null));
    const other_cfg = try smallConfig(.f16);
    var other = try kv.Cache.init(&other_cfg);
    defer other.deinit();
    try t.expectError(error.FormatMismatch, other.loadBytes(blob, null));
    try t.expectError(error.FormatMismatch, kv.Cache.fromBytes(blob, .{ .max_cache_bytes = 1024 }));
    try t.expectError(error.Io, kv.Cache.fromFile(".zig-cache/tmp/no/such/file.kvps", .{}));
    try expectMessage("no/such/file.kvps");
    try expectSameCaches(&target, &pristine);
}

test "dlpack: a bf16 keys view exports as kDLBfloat, borrowed from the cache" {
    const cfg = try smallConfig(.bf16);
    var cache = try filledCache(&cfg);
    defer cache.deinit();
    var tensor = try cache.exportDlpack(1, .keys);
    defer tensor.deinit();
    const dl = tensor.tensor();
    const view = try cache.view(1, .keys);
    try t.expectEqual(@as(i32, 4), dl.ndim);
    try t.expectEqual(@as(u8, kv.c.kDLBfloat), dl.dtype.code);
    try t.expectEqual(@as(u8, 16), dl.dtype.bits);
    try t.expectEqual(@as(i32, kv.c.kDLCPU), @as(i32, @intCast(dl.device.device_type)));
    for (view.shape(), 0..) |x, i| try t.expectEqual(x, dl.shape[i]);
    const first: [*]const u8 = @ptrCast(dl.data.?);
    try t.expectEqual(@intFromPtr(view.t.data.?), @intFromPtr(first + dl.byte_offset));
    try t.expectError(error.InvalidArgument, cache.exportDlpack(2, .keys));
}

// -- Host allocators --------------------------------------------------------------------------

test "host allocators: caches and pools allocate through a std.mem.Allocator" {
    // std.testing.allocator fails the test on a leak or a double free.
    var host: kv.HostAllocator = undefined;
    host.init(t.allocator);
    const cfg = try smallConfig(.f32);
    var cache = try kv.Cache.initWith(&cfg, .{ .allocator = &host });
    try writeMixedStep(&cache, &cfg, 0);
    try expectMixedStep(&cache, 0);
    var pool = try kv.Pool.init(&cache, .{ .allocator = &host });
    _ = try pool.addSequence(&.{ 1, 2, 3 }, 0, false);
    pool.deinit();
    const blob = try cache.serializeAlloc(t.allocator, .{});
    defer t.allocator.free(blob);
    var loaded = try kv.Cache.fromBytes(blob, .{ .allocator = &host });
    try expectSameCaches(&cache, &loaded);
    loaded.deinit();
    cache.deinit();
}

const Counting = struct {
    backing: std.mem.Allocator,
    allocations: usize = 0,

    fn allocator(self: *Counting) std.mem.Allocator {
        return .{ .ptr = self, .vtable = &.{ .alloc = alloc, .resize = std.mem.Allocator.noResize, .remap = std.mem.Allocator.noRemap, .free = free } };
    }

    fn alloc(ctx: *anyopaque, len: usize, a: std.mem.Alignment, ret: usize) ?[*]u8 {
        const self: *Counting = @ptrCast(@alignCast(ctx));
        self.allocations += 1;
        return self.backing.rawAlloc(len, a, ret);
    }

    fn free(ctx: *anyopaque, memory: []u8, a: std.mem.Alignment, ret: usize) void {
        const self: *Counting = @ptrCast(@alignCast(ctx));
        self.backing.rawFree(memory, a, ret);
    }
};

test "host allocators: the process default serves objects created while it is installed" {
    var counting: Counting = .{ .backing = t.allocator };
    var host: kv.HostAllocator = undefined;
    host.init(counting.allocator());
    try kv.setHostAllocator(&host);
    var md = kv.Metadata.createEmpty(.v3, 8, 2, 2, 0) catch |e| {
        try kv.setHostAllocator(null);
        return e;
    };
    try kv.setHostAllocator(null);
    try t.expect(counting.allocations > 0);
    md.deinit(); // freed through the allocator it was created with
}
