//! Zig binding of kvpages: distinct opaque handle types, errors as Zig error values with the
//! library's message available, and compile-time layout checks of every struct mirrored here
//! against the translated C headers.
const std = @import("std");
pub const c = @import("c");

// ---------------------------------------------------------------------------------------------
// Types mirrored in Zig, checked field by field against C at compile time.

pub const Dtype = enum(u32) { f32 = 1, f16 = 2, bf16 = 3, f8_e4m3fn = 4, f8_e5m2 = 5, _ };
pub const LayoutVersion = enum(u32) { default = 0, v2 = 2, v3 = 3, _ };
pub const ViewKind = enum(u32) { pages = 0, flat = 1, keys = 2, values = 3, reference_keys = 4, reference_values = 5, _ };

pub const Tensor = extern struct {
    data: ?*anyopaque,
    dtype: u32,
    ndim: i32,
    shape: [6]i64,
    strides: [6]i64,
    device_type: i32,
    device_id: i32,
};

pub const BatchRequest = extern struct {
    num_computed: i64,
    num_scheduled: i64,
    page_ids: ?[*]const i32,
    num_pages: i64,
};

pub const ConfigRecord = extern struct {
    struct_size: u32,
    abi_version: u32,
    num_hidden_layers: i64,
    max_model_length: i64,
    num_kv_heads: i64,
    k_headdim: i64,
    v_headdim: i64,
    hbm_utilization: f64,
    page_size: i64,
    num_pages: i64,
    max_num_pages_per_req: i64,
    num_slices_per_kv_cache_update_page: i64,
    max_num_tokens: i64,
    max_num_reqs: i64,
    version: u32,
    kvdtype: u32,
};

/// Fails compilation unless `Z` and `C` have the same size and every field of `Z` sits at the
/// same offset as the field of the same name in `C`.
fn assertSameLayout(comptime Z: type, comptime C: type) void {
    if (@sizeOf(Z) != @sizeOf(C)) @compileError("size of " ++ @typeName(Z) ++ " differs from C");
    if (@alignOf(Z) != @alignOf(C)) @compileError("alignment of " ++ @typeName(Z) ++ " differs from C");
    const info = @typeInfo(Z).@"struct";
    for (info.field_names, info.field_types) |name, T| {
        if (@offsetOf(Z, name) != @offsetOf(C, name))
            @compileError("offset of " ++ @typeName(Z) ++ "." ++ name ++ " differs from C");
        if (@sizeOf(T) != @sizeOf(@FieldType(C, name)))
            @compileError("size of " ++ @typeName(Z) ++ "." ++ name ++ " differs from C");
    }
}

comptime {
    assertSameLayout(Tensor, c.kvp_tensor);
    assertSameLayout(BatchRequest, c.kvp_batch_request);
    assertSameLayout(ConfigRecord, c.kvp_config);
    if (c.KVP_VERSION_MAJOR != 1) @compileError("these bindings need kvpages 1.x headers");
    if (c.KVP_MAX_DIMS != 6) @compileError("KVP_MAX_DIMS changed");
}

// ---------------------------------------------------------------------------------------------
// Errors

pub const Error = error{
    InvalidArgument,
    InvalidHandle,
    NotFound,
    VersionMismatch,
    Unsupported,
    BufferTooSmall,
    OutOfMemory,
    OutOfPages,
    Io,
    Device,
    DeviceLost,
    NoDevice,
    DeviceOutOfMemory,
    Internal,
    Unknown,
};

/// Maps a status code to a Zig error (unknown codes to error.Unknown).
pub fn statusError(status: c.kvp_status) Error {
    return switch (status) {
        c.KVP_ERR_INVALID_ARGUMENT => error.InvalidArgument,
        c.KVP_ERR_INVALID_HANDLE => error.InvalidHandle,
        c.KVP_ERR_NOT_FOUND => error.NotFound,
        c.KVP_ERR_VERSION_MISMATCH => error.VersionMismatch,
        c.KVP_ERR_UNSUPPORTED => error.Unsupported,
        c.KVP_ERR_BUFFER_TOO_SMALL => error.BufferTooSmall,
        c.KVP_ERR_OUT_OF_MEMORY => error.OutOfMemory,
        c.KVP_ERR_OUT_OF_PAGES => error.OutOfPages,
        c.KVP_ERR_IO => error.Io,
        c.KVP_ERR_DEVICE => error.Device,
        c.KVP_ERR_DEVICE_LOST => error.DeviceLost,
        c.KVP_ERR_NO_DEVICE => error.NoDevice,
        c.KVP_ERR_DEVICE_OUT_OF_MEMORY => error.DeviceOutOfMemory,
        c.KVP_ERR_INTERNAL => error.Internal,
        else => error.Unknown,
    };
}

fn check(status: c.kvp_status) Error!void {
    if (status != c.KVP_OK) return statusError(status);
}

/// The detail message of the last failed call on this thread (valid until the next kvpages
/// call on this thread; empty after a success).
pub fn lastErrorMessage() [:0]const u8 {
    return std.mem.span(c.kvp_last_error_message());
}

pub fn version() [:0]const u8 {
    return std.mem.span(c.kvp_version_string());
}

pub fn checkAbi() Error!void {
    return check(c.kvp_check_abi(c.KVP_VERSION_NUMBER));
}

// ---------------------------------------------------------------------------------------------
// Config, cache, metadata

pub const ConfigOptions = struct {
    num_hidden_layers: i64,
    num_kv_heads: i64,
    max_model_length: i64,
    head_dim: i64,
    page_size: i64 = 0,
    dtype: Dtype = .bf16,
    layout: LayoutVersion = .v3,
    budget_bytes: i64 = 0,
};

pub const Config = struct {
    raw: c.kvp_config,

    pub fn create(o: ConfigOptions) Error!Config {
        var opts: c.kvp_config_options = undefined;
        try check(c.kvp_config_options_init(&opts, @sizeOf(c.kvp_config_options)));
        opts.num_hidden_layers = o.num_hidden_layers;
        opts.num_kv_heads = o.num_kv_heads;
        opts.max_model_length = o.max_model_length;
        opts.kv_head_dim_size = o.head_dim;
        opts.page_size = o.page_size;
        opts.kvdtype = @intFromEnum(o.dtype);
        opts.version = @intFromEnum(o.layout);
        opts.budget_bytes = o.budget_bytes;
        var cfg: Config = .{ .raw = undefined };
        try check(c.kvp_config_create(&opts, &cfg.raw));
        return cfg;
    }

    pub fn numPages(self: Config) i64 {
        return self.raw.num_pages;
    }
};

/// A strided view of one layer (no copy); valid until its cache is destroyed.
pub const View = struct {
    t: Tensor,

    pub fn shape(self: *const View) []const i64 {
        return self.t.shape[0..@intCast(self.t.ndim)];
    }

    /// Reads one f32 element, or null for a bad index or another dtype.
    pub fn getF32(self: View, index: []const i64) ?f32 {
        if (self.t.dtype != @intFromEnum(Dtype.f32) or index.len != @as(usize, @intCast(self.t.ndim))) return null;
        var off: i64 = 0;
        for (index, 0..) |x, i| {
            if (x < 0 or x >= self.t.shape[i]) return null;
            off += x * self.t.strides[i];
        }
        const base: [*]const f32 = @ptrCast(@alignCast(self.t.data.?));
        return base[@intCast(off)];
    }
};

/// Owns a `kvp_cache` (a distinct opaque type per handle kind). Call `deinit` exactly once.
pub const Cache = struct {
    handle: *c.kvp_cache,

    pub fn init(cfg: *const Config) Error!Cache {
        var out: ?*c.kvp_cache = null;
        try check(c.kvp_cache_create(&cfg.raw, null, &out));
        return .{ .handle = out.? };
    }

    pub fn deinit(self: *Cache) void {
        _ = c.kvp_cache_destroy(self.handle);
        self.* = undefined;
    }

    pub fn view(self: *const Cache, layer: u32, kind: ViewKind) Error!View {
        var v: View = undefined;
        try check(c.kvp_cache_get_view(self.handle, layer, @intFromEnum(kind), @ptrCast(&v.t)));
        return v;
    }

    /// Writes `key`/`value` ([T, H, D] row-major f32) into one layer.
    pub fn concatenate(self: *Cache, layer: u32, key: []const f32, value: []const f32, shape: [3]i64, md: *const Metadata) Error!void {
        const n: usize = @intCast(shape[0] * shape[1] * shape[2]);
        if (key.len != n or value.len != n) return error.InvalidArgument;
        var k = hostTensor(key, shape);
        var v = hostTensor(value, shape);
        try check(c.kvp_concatenate(self.handle, layer, @ptrCast(&k), @ptrCast(&v), md.handle, null));
    }
};

fn hostTensor(data: []const f32, shape: [3]i64) Tensor {
    var t = std.mem.zeroes(Tensor);
    t.data = @ptrCast(@constCast(data.ptr));
    t.dtype = @intFromEnum(Dtype.f32);
    t.ndim = 3;
    t.shape[0] = shape[0];
    t.shape[1] = shape[1];
    t.shape[2] = shape[2];
    t.strides[0] = shape[1] * shape[2];
    t.strides[1] = shape[2];
    t.strides[2] = 1;
    t.device_type = c.KVP_DEVICE_CPU;
    return t;
}

/// Owns runtime metadata (`kvp_metadata`). Call `deinit` exactly once.
pub const Metadata = struct {
    handle: *c.kvp_metadata,

    /// Builds metadata; `order_out[row]` receives the request index of each row (len = requests).
    pub fn build(cfg: *const Config, requests: []const BatchRequest, order_out: []i32) Error!Metadata {
        if (order_out.len < requests.len) return error.InvalidArgument;
        var out: ?*c.kvp_metadata = null;
        try check(c.kvp_metadata_build(&cfg.raw, @ptrCast(requests.ptr), @intCast(requests.len), null, order_out.ptr, &out));
        return .{ .handle = out.? };
    }

    pub fn deinit(self: *Metadata) void {
        _ = c.kvp_metadata_destroy(self.handle);
        self.* = undefined;
    }
};

// ---------------------------------------------------------------------------------------------
// Tests: the shared binding scenario.

const H = 2;
const D = 128;
const S = 16;

fn testConfig() !Config {
    return Config.create(.{ .num_hidden_layers = 2, .num_kv_heads = H, .max_model_length = 64, .head_dim = D, .page_size = S, .dtype = .f32, .budget_bytes = 1 << 20 });
}

fn token(t: usize, h: usize, d: usize) f32 {
    return @floatFromInt(t * 1000 + h * 256 + d);
}

const Batch = struct { md: Metadata, key: [4 * H * D]f32, value: [4 * H * D]f32 };

fn writeBatch(cache: *Cache, cfg: *const Config, batch: *Batch) !void {
    const p1 = [_]i32{1};
    const p2 = [_]i32{2};
    const reqs = [_]BatchRequest{
        .{ .num_computed = 0, .num_scheduled = 3, .page_ids = &p1, .num_pages = 1 },
        .{ .num_computed = 5, .num_scheduled = 1, .page_ids = &p2, .num_pages = 1 },
    };
    var order: [2]i32 = undefined;
    batch.md = try Metadata.build(cfg, &reqs, &order);
    try std.testing.expectEqualSlices(i32, &.{ 1, 0 }, &order);
    for (0..4) |t| for (0..H) |h| for (0..D) |d| {
        batch.key[(t * H + h) * D + d] = token(t, h, d);
        batch.value[(t * H + h) * D + d] = -token(t, h, d);
    };
    try cache.concatenate(1, &batch.key, &batch.value, .{ 4, H, D }, &batch.md);
}

test "version matches the headers" {
    try checkAbi();
    try std.testing.expect(std.mem.startsWith(u8, version(), "1."));
    try std.testing.expectEqual(@as(u32, c.KVP_VERSION_NUMBER), c.kvp_version_number());
}

test "concatenate a batch and read the tokens back through views" {
    const cfg = try testConfig();
    var cache = try Cache.init(&cfg);
    defer cache.deinit();
    var batch: Batch = undefined;
    try writeBatch(&cache, &cfg, &batch);
    defer batch.md.deinit();
    const keys = try cache.view(1, .keys);
    const values = try cache.view(1, .values);
    const other = try cache.view(0, .keys);
    try std.testing.expectEqualSlices(i64, &.{ cfg.numPages(), S, H, D }, keys.shape());
    for (0..H) |h| for (0..D) |d| {
        const hi: i64 = @intCast(h);
        const di: i64 = @intCast(d);
        try std.testing.expectEqual(@as(?f32, token(0, h, d)), keys.getF32(&.{ 2, 5, hi, di }));
        try std.testing.expectEqual(@as(?f32, -token(0, h, d)), values.getF32(&.{ 2, 5, hi, di }));
        for (0..3) |t| {
            const ti: i64 = @intCast(t);
            try std.testing.expectEqual(@as(?f32, token(t + 1, h, d)), keys.getF32(&.{ 1, ti, hi, di }));
            try std.testing.expectEqual(@as(?f32, -token(t + 1, h, d)), values.getF32(&.{ 1, ti, hi, di }));
        }
        try std.testing.expectEqual(@as(?f32, 0), keys.getF32(&.{ 2, 4, hi, di }));
        try std.testing.expectEqual(@as(?f32, 0), keys.getF32(&.{ 1, 3, hi, di }));
        try std.testing.expectEqual(@as(?f32, 0), other.getF32(&.{ 1, 0, hi, di }));
    };
    try std.testing.expectEqual(@as(?f32, null), keys.getF32(&.{ cfg.numPages(), 0, 0, 0 }));
}

test "error path: code, message, nothing changed" {
    const cfg = try testConfig();
    var cache = try Cache.init(&cfg);
    defer cache.deinit();
    var batch: Batch = undefined;
    try writeBatch(&cache, &cfg, &batch);
    defer batch.md.deinit();
    const keys = try cache.view(1, .keys);
    const before = keys.getF32(&.{ 1, 0, 0, 5 });
    try std.testing.expectError(error.InvalidArgument, cache.concatenate(2, &batch.key, &batch.value, .{ 4, H, D }, &batch.md));
    try std.testing.expect(std.mem.indexOf(u8, lastErrorMessage(), "layer 2") != null);
    try std.testing.expectEqual(before, keys.getF32(&.{ 1, 0, 0, 5 }));
    try std.testing.expectError(error.InvalidArgument, Config.create(.{ .num_hidden_layers = 0, .num_kv_heads = 1, .max_model_length = 8, .head_dim = 64, .budget_bytes = 1 << 20 }));
    try std.testing.expect(lastErrorMessage().len > 0);
    try std.testing.expectEqual(error.Unknown, statusError(77));
}

test "a destroyed handle is rejected, not freed twice" {
    const cfg = try testConfig();
    var cache = try Cache.init(&cfg);
    const raw = cache.handle;
    cache.deinit();
    try std.testing.expectEqual(@as(c.kvp_status, c.KVP_ERR_INVALID_HANDLE), c.kvp_cache_destroy(raw));
}
