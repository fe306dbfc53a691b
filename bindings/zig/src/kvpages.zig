//! Zig binding of kvpages: the whole C API (kvpages.h and kvpages/dlpack.h) in Zig's idiom.
//!
//! - Handles are structs with `deinit()`; every fallible call returns `Error!T`, whose error set
//!   names every `kvp_status` (`statusError` maps a code, `lastErrorMessage` gives the detail).
//! - Buffers are slices; functions that return memory the caller owns take a
//!   `std.mem.Allocator` (`Config.toJson`, `Cache.serializeAlloc`, `Batch.build`, ...).
//! - Streams are `*std.Io.Writer` / `*std.Io.Reader`; files are paths (saved atomically by C).
//! - Element types are Zig types: `f32`, `f16`, `Bf16`, `F8E4M3`, `F8E5M2`, converted with the
//!   library's own rounding (`convert`, `View.get`/`read`/`write`, `Cache.concatenate`).
//! - `Batch` builds a step's metadata and packs each request's keys and values in the row order
//!   the builder chose, so the decode-first reordering can never scramble tokens.
//!
//! Every struct mirrored here is checked field by field against the translated C headers at
//! compile time.
const std = @import("std");
pub const c = @import("c");

const Allocator = std.mem.Allocator;

// ---------------------------------------------------------------------------------------------
// Errors

/// Every `kvp_status` other than `KVP_OK`, plus `Unknown` for codes newer than these bindings.
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
    FormatMagic,
    FormatVersion,
    FormatTruncated,
    FormatChecksum,
    FormatCorrupt,
    FormatMismatch,
    Internal,
    Unknown,
};

const StatusError = struct { status: c.kvp_status, err: Error };

const status_errors = [_]StatusError{
    .{ .status = c.KVP_ERR_INVALID_ARGUMENT, .err = error.InvalidArgument },
    .{ .status = c.KVP_ERR_INVALID_HANDLE, .err = error.InvalidHandle },
    .{ .status = c.KVP_ERR_NOT_FOUND, .err = error.NotFound },
    .{ .status = c.KVP_ERR_VERSION_MISMATCH, .err = error.VersionMismatch },
    .{ .status = c.KVP_ERR_UNSUPPORTED, .err = error.Unsupported },
    .{ .status = c.KVP_ERR_BUFFER_TOO_SMALL, .err = error.BufferTooSmall },
    .{ .status = c.KVP_ERR_OUT_OF_MEMORY, .err = error.OutOfMemory },
    .{ .status = c.KVP_ERR_OUT_OF_PAGES, .err = error.OutOfPages },
    .{ .status = c.KVP_ERR_IO, .err = error.Io },
    .{ .status = c.KVP_ERR_DEVICE, .err = error.Device },
    .{ .status = c.KVP_ERR_DEVICE_LOST, .err = error.DeviceLost },
    .{ .status = c.KVP_ERR_NO_DEVICE, .err = error.NoDevice },
    .{ .status = c.KVP_ERR_DEVICE_OUT_OF_MEMORY, .err = error.DeviceOutOfMemory },
    .{ .status = c.KVP_ERR_FORMAT_MAGIC, .err = error.FormatMagic },
    .{ .status = c.KVP_ERR_FORMAT_VERSION, .err = error.FormatVersion },
    .{ .status = c.KVP_ERR_FORMAT_TRUNCATED, .err = error.FormatTruncated },
    .{ .status = c.KVP_ERR_FORMAT_CHECKSUM, .err = error.FormatChecksum },
    .{ .status = c.KVP_ERR_FORMAT_CORRUPT, .err = error.FormatCorrupt },
    .{ .status = c.KVP_ERR_FORMAT_MISMATCH, .err = error.FormatMismatch },
    .{ .status = c.KVP_ERR_INTERNAL, .err = error.Internal },
};

/// Maps a non-OK status code to its Zig error (codes these bindings do not know to
/// `error.Unknown`).
pub fn statusError(status: c.kvp_status) Error {
    for (status_errors) |e| if (e.status == status) return e.err;
    return error.Unknown;
}

/// The status code of a Zig error of this binding (null for `error.Unknown`).
pub fn errorStatus(err: Error) ?c.kvp_status {
    for (status_errors) |e| if (e.err == err) return e.status;
    return null;
}

fn check(status: c.kvp_status) Error!void {
    if (status != c.KVP_OK) return statusError(status);
}

/// The library's static name of a status code, e.g. "KVP_ERR_FORMAT_CHECKSUM"
/// ("KVP_ERR_UNKNOWN" for codes it does not know).
pub fn statusName(status: c.kvp_status) [:0]const u8 {
    return std.mem.span(c.kvp_status_name(status));
}

/// The detail message of the last failed call on this thread. Borrowed from the library: valid
/// until the next kvpages call on this thread; empty after a success. `lastErrorAlloc` copies it.
pub fn lastErrorMessage() [:0]const u8 {
    return std.mem.span(c.kvp_last_error_message());
}

/// A copy of this thread's last error message that the caller owns (free with `allocator`).
pub fn lastErrorAlloc(allocator: Allocator) Allocator.Error![:0]u8 {
    const len = c.kvp_last_error_copy(null, 0);
    const buf = try allocator.allocSentinel(u8, len, 0);
    _ = c.kvp_last_error_copy(buf.ptr, len + 1);
    return buf;
}

/// Called with a description on every API misuse the library detects (a destroyed or
/// wrong-kind handle), before the call returns `error.InvalidHandle`. Must not panic.
pub const MisuseHandler = struct {
    context: ?*anyopaque = null,
    onMisuse: *const fn (context: ?*anyopaque, what: [:0]const u8) void,
};

/// Installs `handler` process-wide (`kvp_set_misuse_handler`); null restores the default (none).
/// The handler is borrowed: it must stay valid until it is replaced.
pub fn setMisuseHandler(handler: ?*const MisuseHandler) void {
    if (handler) |h| {
        c.kvp_set_misuse_handler(misuseTrampoline, @constCast(h));
    } else {
        c.kvp_set_misuse_handler(null, null);
    }
}

fn misuseTrampoline(what: [*c]const u8, user_data: ?*anyopaque) callconv(.c) void {
    const h: *const MisuseHandler = @ptrCast(@alignCast(user_data.?));
    h.onMisuse(h.context, std.mem.span(what));
}

// ---------------------------------------------------------------------------------------------
// Versions

/// The version of the headers these bindings were compiled against (MAJOR*10000+MINOR*100+PATCH).
pub const header_version: u32 = c.KVP_VERSION_NUMBER;

/// The version of the loaded library, as `header_version`.
pub fn versionNumber() u32 {
    return c.kvp_version_number();
}

/// The version of the loaded library, "MAJOR.MINOR.PATCH".
pub fn version() [:0]const u8 {
    return std.mem.span(c.kvp_version_string());
}

/// Version, git revision, compiler, backends and CPU level of the loaded library.
pub fn buildInfo() [:0]const u8 {
    return std.mem.span(c.kvp_build_info());
}

/// `error.VersionMismatch` unless the loaded library can serve these headers (same major, not
/// older). Call it once at start-up.
pub fn checkAbi() Error!void {
    return check(c.kvp_check_abi(header_version));
}

comptime {
    if (c.KVP_VERSION_MAJOR != 1) @compileError("these bindings need kvpages 1.x headers");
    if (c.KVP_VERSION_NUMBER < 10500) @compileError("these bindings need kvpages >= 1.5 headers (storage tiers)");
}

// ---------------------------------------------------------------------------------------------
// Element types and conversion

/// Storage or input element type (`kvp_dtype`). The last four are known by name only.
pub const Dtype = enum(u32) {
    f32 = 1,
    f16 = 2,
    bf16 = 3,
    f8_e4m3fn = 4,
    f8_e5m2 = 5,
    f64 = 6,
    f8_e4m3fnuz = 7,
    f8_e4m3b11fnuz = 8,
    f8_e5m2fnuz = 9,
    _,

    /// Looks a dtype up by any spelling the library accepts ("bf16", "bfloat16", "fp8", ...).
    pub fn fromString(text: []const u8) Error!Dtype {
        var buf: [64:0]u8 = undefined;
        var out: c.kvp_dtype = 0;
        try check(c.kvp_dtype_from_string(try nulTerminated(&buf, text), &out));
        return @fromBackingInt(@intCast(out));
    }

    /// The canonical name ("bf16", "fp8_e5m2", ...), or null for an unknown value.
    pub fn name(self: Dtype) ?[:0]const u8 {
        const p = c.kvp_dtype_name(@backingInt(self)) orelse return null;
        return std.mem.span(p);
    }

    /// Width in bits (0 when unknown).
    pub fn bits(self: Dtype) u32 {
        return c.kvp_dtype_bits(@backingInt(self));
    }

    /// Elements per 32-bit word (f32 1, f16/bf16 2, fp8 4).
    pub fn packing(self: Dtype) Error!i64 {
        var out: i64 = 0;
        try check(c.kvp_dtype_packing(@backingInt(self), &out));
        return out;
    }

    /// The dtype of a Zig element type: f32, f16, Bf16, F8E4M3 or F8E5M2.
    pub fn of(comptime T: type) Dtype {
        return switch (T) {
            f32 => .f32,
            f16 => .f16,
            Bf16 => .bf16,
            F8E4M3 => .f8_e4m3fn,
            F8E5M2 => .f8_e5m2,
            else => @compileError("no kvpages dtype for " ++ @typeName(T)),
        };
    }
};

/// A bfloat16 value as its bit pattern (Zig has no bf16 type). Convert slices with `convert`.
pub const Bf16 = enum(u16) {
    _,

    pub fn fromF32(x: f32) Bf16 {
        return convertOne(f32, Bf16, x);
    }

    pub fn toF32(self: Bf16) f32 {
        return convertOne(Bf16, f32, self);
    }
};

/// An fp8 e4m3fn value (finite only, max 448) as its bit pattern.
pub const F8E4M3 = enum(u8) {
    _,

    pub fn fromF32(x: f32) F8E4M3 {
        return convertOne(f32, F8E4M3, x);
    }

    pub fn toF32(self: F8E4M3) f32 {
        return convertOne(F8E4M3, f32, self);
    }
};

/// An fp8 e5m2 value (with infinities, max 57344) as its bit pattern.
pub const F8E5M2 = enum(u8) {
    _,

    pub fn fromF32(x: f32) F8E5M2 {
        return convertOne(f32, F8E5M2, x);
    }

    pub fn toF32(self: F8E5M2) f32 {
        return convertOne(F8E5M2, f32, self);
    }
};

/// Converts `src` into `dst` (same length) with the rounding the cache applies when it stores
/// (`kvp_convert`: nearest-even, no saturation; widening is exact). `dst` is unchanged on error.
pub fn convert(comptime Src: type, comptime Dst: type, src: []const Src, dst: []Dst) Error!void {
    if (src.len != dst.len) return error.InvalidArgument;
    try convertBytes(@ptrCast(src.ptr), Dtype.of(Src), @ptrCast(dst.ptr), Dtype.of(Dst), src.len);
}

fn convertBytes(src: ?*const anyopaque, src_dtype: Dtype, dst: ?*anyopaque, dst_dtype: Dtype, count: usize) Error!void {
    try check(c.kvp_convert(src, @backingInt(src_dtype), dst, @backingInt(dst_dtype), count));
}

/// One element; the five float types always convert, so this cannot fail.
fn convertOne(comptime Src: type, comptime Dst: type, x: Src) Dst {
    var out: [1]Dst = undefined;
    convert(Src, Dst, &.{x}, &out) catch unreachable;
    return out[0];
}

/// Copies `text` into `buf` with a terminating NUL (`error.InvalidArgument` if it does not fit
/// or contains a NUL).
fn nulTerminated(buf: [:0]u8, text: []const u8) Error![:0]const u8 {
    if (text.len >= buf.len or std.mem.indexOfScalar(u8, text, 0) != null) return error.InvalidArgument;
    @memcpy(buf[0..text.len], text);
    buf[text.len] = 0;
    return buf[0..text.len :0];
}

/// A path as C wants it: NUL-terminated, on the stack.
const CPath = struct {
    buf: [std.posix.PATH_MAX - 1:0]u8 = undefined,

    fn of(self: *CPath, path: []const u8) Error![*:0]const u8 {
        return (try nulTerminated(&self.buf, path)).ptr;
    }
};

// ---------------------------------------------------------------------------------------------
// Layout versions and integer helpers of the reference

/// Storage layout of the pages (`kvp_layout`): `.default` is v3.
pub const LayoutVersion = enum(u32) {
    default = 0,
    v2 = 2,
    v3 = 3,
    _,

    /// "v2" or "v3".
    pub fn fromString(text: []const u8) Error!LayoutVersion {
        var buf: [16:0]u8 = undefined;
        var out: c.kvp_layout = 0;
        try check(c.kvp_layout_from_string(try nulTerminated(&buf, text), &out));
        return @fromBackingInt(@intCast(out));
    }

    /// "v2", "v3", or null (also for `.default`).
    pub fn name(self: LayoutVersion) ?[:0]const u8 {
        const p = c.kvp_layout_name(@backingInt(self)) orelse return null;
        return std.mem.span(p);
    }
};

/// `floor((a + b - 1) / b)` with floor division (`error.InvalidArgument` for b = 0 or overflow).
pub fn cdiv(a: i64, b: i64) Error!i64 {
    var out: i64 = 0;
    try check(c.kvp_cdiv(a, b, &out));
    return out;
}

/// `cdiv(v, m) * m`.
pub fn alignToMultiple(v: i64, m: i64) Error!i64 {
    var out: i64 = 0;
    try check(c.kvp_align_to_multiple(v, m, &out));
    return out;
}

/// Largest power of two <= n, 0 for n <= 0.
pub fn previousPowerOf2(n: i64) i64 {
    return c.kvp_previous_power_of_2(n);
}

/// The reference's `get_page_size_bytes` (generic v3 formula; `Config.layout` has true sizes).
pub fn pageSizeBytes(page_size: i64, num_kv_heads: i64, head_size: i64, dtype: Dtype) Error!i64 {
    var out: i64 = 0;
    try check(c.kvp_page_size_bytes(page_size, num_kv_heads, head_size, @backingInt(dtype), &out));
    return out;
}

/// The reference's `get_num_slices_per_kv_cache_update_page`.
pub fn numSlicesPerKvCacheUpdatePage(page_size_bytes: i64) Error!i64 {
    var out: i64 = 0;
    try check(c.kvp_num_slices_per_kv_cache_update_page(page_size_bytes, &out));
    return out;
}

// ---------------------------------------------------------------------------------------------
// Devices and memory budgets

/// Where a cache's pages live (and whose memory a config budgets).
pub const Device = union(enum) {
    cpu,
    /// CUDA device ordinal; needs a kvpages built with CUDA and a GPU.
    cuda: i32,

    fn typeCode(self: Device) c.kvp_device_type {
        return switch (self) {
            .cpu => c.KVP_DEVICE_CPU,
            .cuda => c.KVP_DEVICE_CUDA,
        };
    }

    fn id(self: Device) i32 {
        return switch (self) {
            .cpu => 0,
            .cuda => |n| n,
        };
    }

    fn fromRaw(device_type: c.kvp_device_type, device_id: i32) Device {
        return if (device_type == c.KVP_DEVICE_CUDA) .{ .cuda = device_id } else .cpu;
    }
};

/// `kvp_device_count`: usable CUDA devices (0 without CUDA, a driver or a GPU).
pub fn deviceCount() Error!i32 {
    var n: i32 = 0;
    try check(c.kvp_device_count(&n));
    return n;
}

/// Memory statistics of one device (`kvp_memory_stats`); 0 = absent.
pub const MemoryStats = extern struct {
    bytes_limit: i64 = 0,
    bytes_reservable_limit: i64 = 0,
    bytes_total: i64 = 0,
    bytes_in_use: i64 = 0,
    bytes_reserved: i64 = 0,
    /// Non-zero when the device reported statistics.
    valid: u32 = 0,
    _reserved: u32 = 0,
};

/// How `hbmBudgetBytes` turns statistics into a budget.
pub const BudgetMode = enum(u32) {
    /// `floor(free * util) - margin` (the reference's default).
    free = c.KVP_BUDGET_FREE,
    /// `floor(limit * util) - used - margin`.
    total = c.KVP_BUDGET_TOTAL,
};

/// The reference's safety margin, 256 MiB.
pub const default_safety_margin: i64 = c.KVP_DEFAULT_SAFETY_MARGIN;

/// `kvp_device_memory_stats`: host RAM for `.cpu`, `cudaMemGetInfo` for `.cuda`.
pub fn deviceMemoryStats(device: Device) Error!MemoryStats {
    var out: MemoryStats = .{};
    try check(c.kvp_device_memory_stats(device.typeCode(), device.id(), @ptrCast(&out)));
    return out;
}

/// The reference's per-device budget over `stats` (the minimum over valid devices; 4 GiB when
/// none reported).
pub fn hbmBudgetBytes(stats: []const MemoryStats, utilization: f64, mode: BudgetMode, safety_margin_bytes: i64) Error!i64 {
    var out: i64 = 0;
    const n = std.math.cast(u32, stats.len) orelse return error.InvalidArgument;
    try check(c.kvp_hbm_budget_bytes(@ptrCast(stats.ptr), n, utilization, @backingInt(mode), safety_margin_bytes, &out));
    return out;
}

// ---------------------------------------------------------------------------------------------
// Config and planning

/// Inputs of `Config.create` (every field of `kvp_config_options`); zero means default.
pub const ConfigOptions = struct {
    num_hidden_layers: i64,
    /// Global (unsharded) KV head count.
    num_kv_heads: i64,
    max_model_length: i64,
    /// Head dim used for budgeting (`kv_head_dim_size`); set it or `k_head_dim`/`v_head_dim`.
    head_dim: i64 = 0,
    /// Key head dim; 0 = `head_dim`.
    k_head_dim: i64 = 0,
    /// Value head dim; 0 = `head_dim`. Must equal the key head dim.
    v_head_dim: i64 = 0,
    /// Fraction of the device's memory to budget, (0, 1]; 0 = 0.9.
    hbm_utilization: f64 = 0,
    /// Tokens per page; 0 = 128.
    page_size: i64 = 0,
    dtype: Dtype = .bf16,
    layout: LayoutVersion = .default,
    budget_mode: BudgetMode = .free,
    /// Size pages with the reference's unpadded formula (its `num_pages` exactly).
    reference_budget: bool = false,
    /// No safety margin at all (overrides `safety_margin_bytes`).
    no_safety_margin: bool = false,
    /// > 0: use this per-device budget and read no statistics.
    budget_bytes: i64 = 0,
    /// 0 = 256 MiB (`default_safety_margin`).
    safety_margin_bytes: i64 = 0,
    /// Injected statistics (borrowed for the call); null = read `device`'s.
    memory_stats: ?[]const MemoryStats = null,
    /// The device the cache will live on: its memory is what gets budgeted (host RAM for
    /// `.cpu`, the GPU's for `.cuda`). Create the cache on the same device.
    device: Device = .cpu,
    /// Devices the KV heads are sharded over (tensor parallelism); 0 = 1. Resolved as the
    /// reference does: kept, the dtype upcast (bf16, then fp32) or the heads replicated (the
    /// plan says which and why); the budget is multiplied by the effective shards.
    kv_head_shards: i64 = 0,
    /// Hints stored in the config; 0 = unset.
    max_num_tokens: i64 = 0,
    max_num_reqs: i64 = 0,
    /// Data-parallel page shards (since 1.3): the budget x dp, num_pages a multiple of it; 0 = 1.
    data_parallel_size: i64 = 0,

    fn record(self: ConfigOptions) Error!c.kvp_config_options {
        var o: c.kvp_config_options = undefined;
        try check(c.kvp_config_options_init(&o, @sizeOf(c.kvp_config_options)));
        o.num_hidden_layers = self.num_hidden_layers;
        o.num_kv_heads = self.num_kv_heads;
        o.max_model_length = self.max_model_length;
        o.kv_head_dim_size = self.head_dim;
        o.k_headdim = self.k_head_dim;
        o.v_headdim = self.v_head_dim;
        o.hbm_utilization = self.hbm_utilization;
        o.page_size = self.page_size;
        o.kvdtype = @backingInt(self.dtype);
        o.version = @backingInt(self.layout);
        o.budget_mode = @backingInt(self.budget_mode);
        if (self.reference_budget) o.flags |= c.KVP_CONFIG_FLAG_REFERENCE_BUDGET;
        if (self.no_safety_margin) o.flags |= c.KVP_CONFIG_FLAG_NO_SAFETY_MARGIN;
        o.budget_bytes = self.budget_bytes;
        o.safety_margin_bytes = self.safety_margin_bytes;
        if (self.memory_stats) |s| {
            o.memory_stats = @ptrCast(s.ptr);
            o.num_memory_stats = std.math.cast(u32, s.len) orelse return error.InvalidArgument;
        }
        o.device_type = self.device.typeCode();
        o.device_id = self.device.id();
        o.kv_head_shards = self.kv_head_shards;
        o.max_num_tokens = self.max_num_tokens;
        o.max_num_reqs = self.max_num_reqs;
        o.data_parallel_size = self.data_parallel_size;
        return o;
    }
};

/// The cache configuration (`kvp_config`, the reference's cache metadata): a plain value,
/// layout-identical to C. -1 means "not computed" / "unset".
pub const Config = extern struct {
    struct_size: u32 = @sizeOf(c.kvp_config),
    abi_version: u32 = c.KVP_CONFIG_VERSION,
    num_hidden_layers: i64 = 0,
    max_model_length: i64 = 0,
    num_kv_heads: i64 = 0,
    k_headdim: i64 = 0,
    v_headdim: i64 = 0,
    hbm_utilization: f64 = 0.9,
    page_size: i64 = 128,
    num_pages: i64 = -1,
    max_num_pages_per_req: i64 = -1,
    num_slices_per_kv_cache_update_page: i64 = -1,
    max_num_tokens: i64 = -1,
    max_num_reqs: i64 = -1,
    version: LayoutVersion = .v3,
    kvdtype: Dtype = .bf16,
    /// Data-parallel page shards (since 1.3; 1 = none).
    data_parallel_size: i64 = 1,
    /// Effective KV-head shards after the resolution (since 1.3; 1 = none).
    kv_head_shards: i64 = 1,
    /// The shards asked for when the heads were replicated; 0 = `kv_head_shards`.
    requested_kv_head_shards: i64 = 0,
    /// The `Dtype` asked for when it was upcast, as its code; 0 = `kvdtype`.
    requested_kvdtype: u32 = 0,
    _reserved1: u32 = 0,

    /// Plans a config: derives `num_pages` from the memory budget of `o.device` (or
    /// `o.budget_bytes`) and the other derived fields. Nothing is allocated.
    pub fn create(o: ConfigOptions) Error!Config {
        const opts = try o.record();
        var cfg: Config = .{};
        try check(c.kvp_config_create(&opts, cfg.ptrMut()));
        return cfg;
    }

    /// The reference defaults (`kvp_config_init`): fill the model fields, then `validate`.
    pub fn defaults() Config {
        var cfg: Config = undefined;
        check(c.kvp_config_init(cfg.ptrMut(), @sizeOf(Config))) catch unreachable;
        return cfg;
    }

    /// Checks every field and every size derived from the record (`kvp_config_validate`).
    pub fn validate(self: *const Config) Error!void {
        try check(c.kvp_config_validate(self.ptr()));
    }

    /// Derived geometry (`kvp_config_get_layout`).
    pub fn layout(self: *const Config) Error!LayoutInfo {
        var out: LayoutInfo = .{};
        try check(c.kvp_config_get_layout(self.ptr(), @ptrCast(&out)));
        return out;
    }

    /// "What fits" before anything is allocated (`kvp_config_plan`).
    pub fn plan(self: *const Config) Error!Plan {
        var out: Plan = .{};
        try check(c.kvp_config_plan(self.ptr(), @ptrCast(&out)));
        return out;
    }

    /// The slice shard (`tp_rank`, `dp_rank`) of this config holds, without creating it
    /// (`kvp_config_get_shard`, since 1.4; `Cache.initShard` creates it).
    pub fn shard(self: *const Config, tp_rank: i32, dp_rank: i32) Error!ShardInfo {
        var out: ShardInfo = .{};
        try check(c.kvp_config_get_shard(self.ptr(), tp_rank, dp_rank, @ptrCast(&out)));
        return out;
    }

    /// The reference's `get_padded_num_slices` (<= 0 = the config's defaults).
    pub fn paddedNumSlices(self: *const Config, num_tokens: i64, max_num_reqs: i64) Error!i64 {
        var out: i64 = 0;
        try check(c.kvp_config_padded_num_slices(self.ptr(), num_tokens, max_num_reqs, &out));
        return out;
    }

    pub fn numPages(self: *const Config) i64 {
        return self.num_pages;
    }

    /// The reference's `to_json()` text; the caller owns it (free with `allocator`).
    pub fn toJson(self: *const Config, allocator: Allocator) Error![:0]u8 {
        const Writer = struct {
            fn call(cfg: *const Config, buf: ?[*]u8, cap: usize, written: *usize) c.kvp_status {
                return c.kvp_config_to_json(cfg.ptr(), buf, cap, written);
            }
        };
        return jsonAlloc(allocator, self, Writer.call);
    }

    /// Reads the reference's JSON (`kvp_config_from_json`). Not validated: call `validate`.
    pub fn fromJson(text: []const u8) Error!Config {
        var cfg: Config = .{};
        try check(c.kvp_config_from_json(text.ptr, text.len, cfg.ptrMut()));
        return cfg;
    }

    fn ptr(self: *const Config) *const c.kvp_config {
        return @ptrCast(self);
    }

    fn ptrMut(self: *Config) *c.kvp_config {
        return @ptrCast(self);
    }
};

/// Size-then-fill for the JSON writers: `write(subject, buf, cap, &written)` as in C.
fn jsonAlloc(allocator: Allocator, subject: anytype, comptime write: anytype) Error![:0]u8 {
    var need: usize = 0;
    const st = write(subject, null, 0, &need);
    if (st != c.KVP_ERR_BUFFER_TOO_SMALL) try check(st);
    const buf = try allocator.alloc(u8, need);
    errdefer allocator.free(buf);
    var len: usize = 0;
    try check(write(subject, buf.ptr, buf.len, &len));
    if (len + 1 != buf.len) return error.Internal;
    return buf[0..len :0];
}

/// Geometry derived from a config (`kvp_layout_info`).
pub const LayoutInfo = extern struct {
    struct_size: u32 = @sizeOf(c.kvp_layout_info),
    is_h64: u32 = 0,
    kv_head_packing: i64 = 0,
    storage_num_combined_kv_heads: i64 = 0,
    storage_num_kv_groups: i64 = 0,
    storage_head_dim: i64 = 0,
    itemsize: i64 = 0,
    ndim: i32 = 0,
    _reserved: i32 = 0,
    shape: [5]i64 = @splat(0),
    layer_bytes: i64 = 0,
    page_bytes_per_layer: i64 = 0,
    max_num_seqs: i64 = 0,
};

/// Which slice of a sharded config a cache or a blob holds (`kvp_shard_info`, since 1.4): the
/// tensor and data ranks, the combined entries [`slot_begin`, `slot_end`), the KV heads
/// (`head_begin` is row 0 of a local key/value tensor), the keys and values held, and the global
/// pages [`page_begin`, `page_end`) of `global_pages`. A whole cache: ranks 0 of sizes 1.
pub const ShardInfo = extern struct {
    struct_size: u32 = @sizeOf(c.kvp_shard_info),
    _reserved: u32 = 0,
    tp_rank: i32 = 0,
    tp_size: i32 = 0,
    dp_rank: i32 = 0,
    dp_size: i32 = 0,
    slot_begin: i64 = 0,
    slot_end: i64 = 0,
    head_begin: i64 = 0,
    head_end: i64 = 0,
    key_head_begin: i64 = 0,
    key_head_end: i64 = 0,
    value_head_begin: i64 = 0,
    value_head_end: i64 = 0,
    page_begin: i64 = 0,
    page_end: i64 = 0,
    global_pages: i64 = 0,
};

/// Planning numbers of a config (`kvp_plan`).
pub const Plan = extern struct {
    struct_size: u32 = @sizeOf(c.kvp_plan),
    _reserved: u32 = 0,
    /// Pages per layer, including the reserved null page 0.
    num_pages: i64 = 0,
    usable_pages: i64 = 0,
    page_size: i64 = 0,
    /// True bytes of one page over all layers.
    bytes_per_page: i64 = 0,
    reference_bytes_per_page: i64 = 0,
    bytes_per_token: i64 = 0,
    /// Bytes the cache allocates.
    total_bytes: i64 = 0,
    token_capacity: i64 = 0,
    max_concurrent_seqs: i64 = 0,
    max_num_seqs: i64 = 0,
    // Since 1.3: the sharding resolution.
    data_parallel_size: i64 = 0,
    kv_head_shards: i64 = 0,
    requested_kv_head_shards: i64 = 0,
    /// `KVP_HEAD_SHARDING_*`: none, keep, upcast, replicate.
    head_sharding: u32 = 0,
    requested_kvdtype: Dtype = .bf16,
    kvdtype: Dtype = .bf16,
    _reserved1: u32 = 0,
    /// Storage groups (v3) or combined heads (v2) of every page one device holds.
    units_per_device: i64 = 0,
    /// Pages each data-parallel shard owns.
    pages_per_device: i64 = 0,
    /// Bytes each device allocates.
    bytes_per_device: i64 = 0,
    /// The resolution in words, NUL-terminated UTF-8 (see `shardingMessage`).
    sharding_message: [224]u8 = @splat(0),

    /// The resolution in words, e.g. "upcast fp8_e4m3fn → bf16 because ...".
    pub fn shardingMessage(self: *const Plan) []const u8 {
        return std.mem.sliceTo(&self.sharding_message, 0);
    }
};

// ---------------------------------------------------------------------------------------------
// Tensors and views

/// A strided tensor descriptor (`kvp_tensor`); strides count elements.
pub const Tensor = extern struct {
    data: ?*anyopaque,
    dtype: Dtype,
    ndim: i32,
    shape: [6]i64,
    strides: [6]i64,
    device_type: i32,
    device_id: i32,
};

/// Which view of a layer `Cache.view` and `Cache.exportDlpack` describe (`kvp_view_kind`).
pub const ViewKind = enum(u32) { pages = 0, flat = 1, keys = 2, values = 3, reference_keys = 4, reference_values = 5, _ };

/// A strided view of one layer (no copy); valid until its cache is destroyed. Typed access
/// converts between the storage dtype and the element type asked for (`kvp_convert`), so a
/// bf16 or fp8 cache reads as f32 exactly as it stores. Element access needs a CPU cache.
pub const View = struct {
    t: Tensor,

    pub fn shape(self: *const View) []const i64 {
        return self.t.shape[0..@intCast(self.t.ndim)];
    }

    pub fn dtype(self: View) Dtype {
        return self.t.dtype;
    }

    /// One element as `T` (f32, f16, Bf16, F8E4M3, F8E5M2), or null for a bad index or a view
    /// of device memory.
    pub fn get(self: View, comptime T: type, index: []const i64) ?T {
        const off = self.offset(index) orelse return null;
        var out: [1]T = undefined;
        convertBytes(self.at(off), self.t.dtype, &out, Dtype.of(T), 1) catch return null;
        return out[0];
    }

    /// `get(f32, index)`.
    pub fn getF32(self: View, index: []const i64) ?f32 {
        return self.get(f32, index);
    }

    /// Reads the innermost dimension at `prefix` (ndim - 1 indices) into `out`, whose length
    /// must be that dimension's extent, converting to `T`.
    pub fn read(self: View, comptime T: type, prefix: []const i64, out: []T) Error!void {
        const row = try self.rowOffset(prefix, out.len);
        const stride: i64 = self.t.strides[@intCast(self.t.ndim - 1)];
        if (stride == 1) return convertBytes(self.at(row), self.t.dtype, out.ptr, Dtype.of(T), out.len);
        for (out, 0..) |*x, i| try convertBytes(self.at(row + @as(i64, @intCast(i)) * stride), self.t.dtype, x, Dtype.of(T), 1);
    }

    /// Writes `values` (converted from `T` to the storage dtype) into the innermost dimension at
    /// `prefix`; the inverse of `read`. Nothing is written on an error.
    pub fn write(self: View, comptime T: type, prefix: []const i64, values: []const T) Error!void {
        const row = try self.rowOffset(prefix, values.len);
        const stride: i64 = self.t.strides[@intCast(self.t.ndim - 1)];
        if (stride == 1) return convertBytes(values.ptr, Dtype.of(T), self.at(row), self.t.dtype, values.len);
        for (values, 0..) |*x, i| try convertBytes(x, Dtype.of(T), self.at(row + @as(i64, @intCast(i)) * stride), self.t.dtype, 1);
    }

    /// Element offset of a full index, or null when out of range or not host memory.
    fn offset(self: View, index: []const i64) ?i64 {
        if (self.t.device_type != c.KVP_DEVICE_CPU or index.len != @as(usize, @intCast(self.t.ndim))) return null;
        var off: i64 = 0;
        for (index, 0..) |x, i| {
            if (x < 0 or x >= self.t.shape[i]) return null;
            off += x * self.t.strides[i];
        }
        return off;
    }

    fn rowOffset(self: View, prefix: []const i64, len: usize) Error!i64 {
        if (self.t.device_type != c.KVP_DEVICE_CPU) return error.Unsupported;
        const last: usize = @intCast(self.t.ndim - 1);
        if (prefix.len != last or len != @as(usize, @intCast(self.t.shape[last]))) return error.InvalidArgument;
        var index: [6]i64 = @splat(0);
        @memcpy(index[0..last], prefix);
        return self.offset(index[0 .. last + 1]) orelse error.InvalidArgument;
    }

    fn at(self: View, off: i64) *anyopaque {
        const base: [*]u8 = @ptrCast(self.t.data.?);
        const size: i64 = @intCast(self.t.dtype.bits() / 8);
        return @ptrCast(base + @as(usize, @intCast(off * size)));
    }
};

/// A row-major [T, H, D] host tensor over `data`.
fn hostTensor(comptime T: type, data: []const T, shape: [3]i64) Tensor {
    var t = std.mem.zeroes(Tensor);
    t.data = @ptrCast(@constCast(data.ptr));
    t.dtype = Dtype.of(T);
    t.ndim = 3;
    t.shape[0..3].* = shape;
    t.strides[0] = shape[1] * shape[2];
    t.strides[1] = shape[2];
    t.strides[2] = 1;
    t.device_type = c.KVP_DEVICE_CPU;
    return t;
}

fn hostTensorOrNull(data: ?[]const f32, shape: [3]i64, t: *Tensor) ?*const c.kvp_tensor {
    const d = data orelse return null;
    t.* = hostTensor(f32, d, shape);
    return @ptrCast(t);
}

/// Elements of a tensor of `shape`: error.InvalidArgument for a negative extent or a count that
/// overflows (a wrapped product must never make a short slice look long enough).
fn elements(shape: [3]i64) Error!usize {
    var n: usize = 1;
    for (shape) |x| {
        if (x < 0) return error.InvalidArgument;
        n = std.math.mul(usize, n, @intCast(x)) catch return error.InvalidArgument;
    }
    return n;
}

// ---------------------------------------------------------------------------------------------
// Host allocators

/// Lets the library allocate through a `std.mem.Allocator` (`kvp_host_allocator`): give it to
/// `CacheOptions.allocator`, `Pool.Options.allocator`, `DeserializeOptions.allocator` or
/// `setHostAllocator`. Pinned: `init` it in place and keep it at that address (and its backing
/// allocator alive) until every object created with it is destroyed.
pub const HostAllocator = struct {
    backing: Allocator,
    table: c.kvp_host_allocator,

    const Header = struct { len: usize, alignment: std.mem.Alignment };

    pub fn init(self: *HostAllocator, backing: Allocator) void {
        self.* = .{ .backing = backing, .table = .{ .alloc = alloc, .free = free, .user_data = self } };
    }

    fn alloc(user_data: ?*anyopaque, size: usize, alignment: usize) callconv(.c) ?*anyopaque {
        const self: *HostAllocator = @ptrCast(@alignCast(user_data.?));
        const a = std.mem.Alignment.fromByteUnits(@max(alignment, @alignOf(Header)));
        const offset = a.forward(@sizeOf(Header));
        const total = std.math.add(usize, offset, size) catch return null;
        const base = self.backing.rawAlloc(total, a, @returnAddress()) orelse return null;
        const header: *Header = @ptrCast(@alignCast(base + offset - @sizeOf(Header)));
        header.* = .{ .len = total, .alignment = a };
        return base + offset;
    }

    fn free(user_data: ?*anyopaque, p: ?*anyopaque) callconv(.c) void {
        const self: *HostAllocator = @ptrCast(@alignCast(user_data.?));
        const bytes: [*]u8 = @ptrCast(p.?);
        const header: *Header = @ptrCast(@alignCast(bytes - @sizeOf(Header)));
        const base = bytes - header.alignment.forward(@sizeOf(Header));
        self.backing.rawFree(base[0..header.len], header.alignment, @returnAddress());
    }
};

/// Installs the process-wide default host allocator (`kvp_set_host_allocator`); null restores
/// the built-in one. Only what is allocated afterwards uses it.
pub fn setHostAllocator(allocator: ?*const HostAllocator) Error!void {
    try check(c.kvp_set_host_allocator(if (allocator) |a| &a.table else null));
}

// ---------------------------------------------------------------------------------------------
// Cache

/// Options of a new cache.
pub const CacheOptions = struct {
    device: Device = .cpu,
    /// Host allocator for the cache's memory (borrowed; must outlive the cache); null = built-in.
    allocator: ?*const HostAllocator = null,

    fn record(self: CacheOptions) Error!c.kvp_cache_options {
        var o: c.kvp_cache_options = undefined;
        try check(c.kvp_cache_options_init(&o, @sizeOf(c.kvp_cache_options)));
        o.device_type = self.device.typeCode();
        o.device_id = self.device.id();
        if (self.allocator) |a| o.allocator = &a.table;
        return o;
    }
};

/// What `Cache.serialize*` writes: every page (null) or the chosen ones, in that order.
pub const SerializeOptions = struct {
    pages: ?[]const i32 = null,
    /// Payload bytes per checksummed chunk; 0 = 1 MiB.
    chunk_bytes: u64 = 0,

    fn record(self: SerializeOptions) Error!c.kvp_serialize_options {
        var o: c.kvp_serialize_options = undefined;
        try check(c.kvp_serialize_options_init(&o, @sizeOf(c.kvp_serialize_options)));
        if (self.pages) |p| {
            o.page_ids = p.ptr;
            o.num_page_ids = std.math.cast(u32, p.len) orelse return error.InvalidArgument;
        }
        o.chunk_bytes = self.chunk_bytes;
        return o;
    }
};

/// Options of the `Cache.from*` loaders.
pub const DeserializeOptions = struct {
    device: Device = .cpu,
    allocator: ?*const HostAllocator = null,
    /// Refuse blobs whose load would take more bytes; 0 = 1 GiB plus the input's size when
    /// known; `std.math.maxInt(u64)` = no limit.
    max_cache_bytes: u64 = 0,
};

/// Owns a `kvp_cache`. Call `deinit` exactly once.
pub const Cache = struct {
    handle: *c.kvp_cache,

    /// A CPU cache for `cfg`.
    pub fn init(cfg: *const Config) Error!Cache {
        return initWith(cfg, .{});
    }

    /// A cache on `device` (`error.NoDevice` without that CUDA device). Plan the config with
    /// `ConfigOptions.device` set to the same device so its budget is that device's memory.
    pub fn initOn(cfg: *const Config, where: Device) Error!Cache {
        return initWith(cfg, .{ .device = where });
    }

    pub fn initWith(cfg: *const Config, options: CacheOptions) Error!Cache {
        const o = try options.record();
        var out: ?*c.kvp_cache = null;
        try check(c.kvp_cache_create(cfg.ptr(), &o, &out));
        return .{ .handle = out.? };
    }

    /// The slice tensor rank `tp_rank` and data rank `dp_rank` of a sharded config hold
    /// (`kvp_cache_create_shard`, since 1.4). Its views and layer bytes are the local slice;
    /// `concatenate` takes the whole cache's metadata and the full key/value tensors or only the
    /// shard's heads (`shard()`). A rank out of range is `error.InvalidArgument`.
    pub fn initShard(cfg: *const Config, tp_rank: i32, dp_rank: i32, options: CacheOptions) Error!Cache {
        const o = try options.record();
        var out: ?*c.kvp_cache = null;
        try check(c.kvp_cache_create_shard(cfg.ptr(), tp_rank, dp_rank, &o, &out));
        return .{ .handle = out.? };
    }

    /// Which slice of its config the cache holds (`kvp_cache_get_shard`, since 1.4).
    pub fn shard(self: *const Cache) Error!ShardInfo {
        var out: ShardInfo = .{};
        try check(c.kvp_cache_get_shard(self.handle, @ptrCast(&out)));
        return out;
    }

    pub fn deinit(self: *Cache) void {
        _ = c.kvp_cache_destroy(self.handle);
        self.* = undefined;
    }

    /// The config the cache was created with.
    pub fn config(self: *const Cache) Error!Config {
        var cfg: Config = .{};
        try check(c.kvp_cache_get_config(self.handle, cfg.ptrMut()));
        return cfg;
    }

    pub fn layout(self: *const Cache) Error!LayoutInfo {
        var out: LayoutInfo = .{};
        try check(c.kvp_cache_get_layout(self.handle, @ptrCast(&out)));
        return out;
    }

    pub fn device(self: *const Cache) Error!Device {
        var device_type: c.kvp_device_type = 0;
        var device_id: i32 = 0;
        try check(c.kvp_cache_get_device(self.handle, &device_type, &device_id));
        return Device.fromRaw(device_type, device_id);
    }

    /// Bytes of one layer.
    pub fn layerBytes(self: *const Cache) Error!usize {
        return @intCast((try self.layout()).layer_bytes);
    }

    /// `kvp_cache_read_layer`: copies one layer's bytes into `out` (at least `layerBytes()`).
    pub fn readLayer(self: *const Cache, layer: u32, out: []u8) Error!void {
        try check(c.kvp_cache_read_layer(self.handle, layer, out.ptr, out.len, null));
    }

    /// `kvp_cache_write_layer`: replaces one layer's bytes (`data.len` must be `layerBytes()`).
    pub fn writeLayer(self: *Cache, layer: u32, data: []const u8) Error!void {
        try check(c.kvp_cache_write_layer(self.handle, layer, data.ptr, data.len, null));
    }

    pub fn view(self: *const Cache, layer: u32, kind: ViewKind) Error!View {
        var v: View = undefined;
        try check(c.kvp_cache_get_view(self.handle, layer, @backingInt(kind), @ptrCast(&v.t)));
        return v;
    }

    /// The recorded asynchronous (device) error, or null (a CPU cache never has one).
    pub fn asyncError(self: *const Cache) Error!?Error {
        var st: c.kvp_status = c.KVP_OK;
        try check(c.kvp_cache_get_async_error(self.handle, &st));
        return if (st == c.KVP_OK) null else statusError(st);
    }

    /// Clears a recoverable asynchronous error (`error.DeviceLost` for a sticky device fault).
    pub fn clearAsyncError(self: *Cache) Error!void {
        try check(c.kvp_cache_clear_async_error(self.handle));
    }

    /// Copies whole pages in every layer: page `dst[i]` receives page `src[i]`
    /// (`kvp_cache_copy_pages`; destinations distinct and none of them a source).
    pub fn copyPages(self: *Cache, src: []const i32, dst: []const i32) Error!void {
        if (src.len != dst.len) return error.InvalidArgument;
        try check(c.kvp_cache_copy_pages(self.handle, src.ptr, dst.ptr, src.len, null));
    }

    /// Writes `key`/`value` ([T, H, D] row-major host data of f32, f16 or Bf16) into one layer,
    /// rows in the order of `md` (`Metadata.build`'s order). Prefer `concatenateBatch`, which
    /// packs each request's rows for you. On an error the cache is unchanged.
    pub fn concatenate(self: *Cache, layer: u32, comptime T: type, key: []const T, value: []const T, shape: [3]i64, md: *const Metadata) Error!void {
        const n = try elements(shape);
        if (key.len != n or value.len != n) return error.InvalidArgument;
        var k = hostTensor(T, key, shape);
        var v = hostTensor(T, value, shape);
        try check(c.kvp_concatenate(self.handle, layer, @ptrCast(&k), @ptrCast(&v), md.handle, null));
    }

    /// `kvp_concatenate` with tensor descriptors: keys and values anywhere the cache can read them
    /// (host memory for a CPU cache; device memory of the cache's GPU for a CUDA cache, enqueued on
    /// `stream`, a `cudaStream_t` or null), any input dtype and strides. `concatenate` and
    /// `concatenateBatch` are the host-slice forms. On an error the cache is unchanged.
    pub fn concatenateTensors(self: *Cache, layer: u32, key: Tensor, value: Tensor, md: *const Metadata, stream: c.kvp_stream) Error!void {
        try check(c.kvp_concatenate(self.handle, layer, @ptrCast(&key), @ptrCast(&value), md.handle, stream));
    }

    /// `kvp_attention` with tensor descriptors (device memory, f16/bf16 queries and outputs,
    /// streams), as `concatenateTensors`; `keys` and `values` both null for a read-only call.
    pub fn attentionTensors(self: *Cache, layer: u32, queries: Tensor, keys: ?Tensor, values: ?Tensor, md: *const Metadata, opts: AttentionOptions, out: Tensor, stream: c.kvp_stream) Error!void {
        const raw = try opts.record();
        const k: ?*const c.kvp_tensor = if (keys) |*t| @ptrCast(t) else null;
        const v: ?*const c.kvp_tensor = if (values) |*t| @ptrCast(t) else null;
        try check(c.kvp_attention(self.handle, layer, @ptrCast(&queries), k, v, md.handle, @ptrCast(&raw), @ptrCast(&out), stream));
    }

    /// Writes one step into one layer: `keys[i]` and `values[i]` hold request i's new tokens
    /// ([num_scheduled_i, H, D] row-major; empty for an inactive request), in the caller's
    /// request order. They are packed in the batch's row order (decode rows first) in scratch
    /// memory from the batch's allocator, so no caller repacks by hand.
    pub fn concatenateBatch(self: *Cache, layer: u32, comptime T: type, batch: *const Batch, keys: []const []const T, values: []const []const T) Error!void {
        const k = try batch.packAlloc(batch.allocator, T, keys);
        defer batch.allocator.free(k);
        const v = try batch.packAlloc(batch.allocator, T, values);
        defer batch.allocator.free(v);
        const shape = [3]i64{ @intCast(batch.numTokens()), batch.num_kv_heads, batch.head_dim };
        try self.concatenate(layer, T, k, v, shape, &batch.metadata);
    }

    /// `kvp_attention` on a CPU cache: writes `keys`/`values` into one layer exactly as
    /// `concatenate` with the same metadata would, then attends every query token to its
    /// request's keys and values, read in place from the pages, and stores the result in `out`.
    ///
    /// `shape` is `.{ T, Hq, Hkv, D }`: `queries` and `out` hold [T, Hq, D], `keys` and `values`
    /// [T, Hkv, D], row-major f32 with rows in the order `Metadata.build` returns (`Batch.packRows`
    /// packs per-request data in that order); Hkv is the cache's KV head count and Hq a multiple
    /// of it (query head h reads KV head h / (Hq / Hkv)). With `keys` and `values` both null the
    /// call only reads (keys written before by `concatenate`); one without the other is
    /// error.InvalidArgument. Every row of `out` is written (rows that no processed request owns
    /// become 0); on an error neither the cache nor `out` has changed. For device memory or other
    /// dtypes use `attentionTensors`.
    pub fn attention(self: *Cache, layer: u32, queries: []const f32, keys: ?[]const f32, values: ?[]const f32, shape: [4]i64, md: *const Metadata, opts: AttentionOptions, out: []f32) Error!void {
        const q_shape = [3]i64{ shape[0], shape[1], shape[3] };
        const kv_shape = [3]i64{ shape[0], shape[2], shape[3] };
        const nq = try elements(q_shape);
        const nkv = try elements(kv_shape);
        if (queries.len != nq or out.len != nq) return error.InvalidArgument;
        if (keys) |k| if (k.len != nkv) return error.InvalidArgument;
        if (values) |v| if (v.len != nkv) return error.InvalidArgument;
        var q = hostTensor(f32, queries, q_shape);
        var o = hostTensor(f32, out, q_shape);
        var k: Tensor = undefined;
        var v: Tensor = undefined;
        const raw = try opts.record();
        try check(c.kvp_attention(self.handle, layer, @ptrCast(&q), hostTensorOrNull(keys, kv_shape, &k), hostTensorOrNull(values, kv_shape, &v), md.handle, @ptrCast(&raw), @ptrCast(&o), null));
    }

    /// Exports one view of one layer as a DLPack tensor (no copy). The data is borrowed from the
    /// cache: valid until the cache is destroyed. Release with `DlpackTensor.deinit`, or hand
    /// `managed` to a consumer that calls its deleter.
    pub fn exportDlpack(self: *Cache, layer: u32, kind: ViewKind) Error!DlpackTensor {
        var out: ?*c.DLManagedTensor = null;
        try check(c.kvp_cache_export_dlpack(self.handle, layer, @backingInt(kind), 0, &out));
        return .{ .managed = out.? };
    }

    // -- Serialization: save --

    /// Exact size of the blob for `opts`.
    pub fn serializedSize(self: *const Cache, opts: SerializeOptions) Error!usize {
        const o = try opts.record();
        var out: usize = 0;
        try check(c.kvp_serialized_size(self.handle, &o, &out));
        return out;
    }

    /// Serializes into `buf` and returns the written part (`error.BufferTooSmall` when `buf` is
    /// shorter than `serializedSize`; nothing is written then).
    pub fn serializeInto(self: *const Cache, buf: []u8, opts: SerializeOptions) Error![]u8 {
        const o = try opts.record();
        var written: usize = 0;
        try check(c.kvp_serialize(self.handle, &o, buf.ptr, buf.len, &written));
        return buf[0..written];
    }

    /// Serializes into a new buffer the caller owns (free with `allocator`).
    pub fn serializeAlloc(self: *const Cache, allocator: Allocator, opts: SerializeOptions) Error![]u8 {
        const buf = try allocator.alloc(u8, try self.serializedSize(opts));
        errdefer allocator.free(buf);
        _ = try self.serializeInto(buf, opts);
        return buf;
    }

    /// Streams the blob into `writer`, one chunk at a time (the writer is not flushed).
    /// `error.WriteFailed` when the writer fails; what it received is then an incomplete blob.
    pub fn serializeToWriter(self: *const Cache, writer: *std.Io.Writer, opts: SerializeOptions) (Error || std.Io.Writer.Error)!void {
        const o = try opts.record();
        var stream: WriteStream = .{ .writer = writer };
        const st = c.kvp_serialize_to_writer(self.handle, &o, WriteStream.call, &stream);
        if (stream.failed) return error.WriteFailed;
        try check(st);
    }

    /// Saves to a file, replacing it atomically (`kvp_serialize_to_file`).
    pub fn saveFile(self: *const Cache, path: []const u8, opts: SerializeOptions) Error!void {
        const o = try opts.record();
        var p: CPath = .{};
        try check(c.kvp_serialize_to_file(self.handle, &o, try p.of(path)));
    }

    // -- Serialization: load into a new cache --

    /// A new cache with the blob's config and pages (other pages zero). `bytes` must be
    /// exactly one blob.
    pub fn fromBytes(bytes: []const u8, opts: DeserializeOptions) Error!Cache {
        var d: DeserializeRecord = undefined;
        try d.fill(opts);
        var out: ?*c.kvp_cache = null;
        try check(c.kvp_deserialize_new(bytes.ptr, bytes.len, &d.options, &out));
        return .{ .handle = out.? };
    }

    /// A new cache from a blob read from `reader` (exactly the blob's bytes are consumed).
    pub fn fromReader(reader: *std.Io.Reader, opts: DeserializeOptions) (Error || std.Io.Reader.Error)!Cache {
        var d: DeserializeRecord = undefined;
        try d.fill(opts);
        var stream: ReadStream = .{ .reader = reader };
        var out: ?*c.kvp_cache = null;
        const st = c.kvp_deserialize_new_from_reader(ReadStream.call, &stream, &d.options, &out);
        if (stream.failed) return error.ReadFailed;
        try check(st);
        return .{ .handle = out.? };
    }

    /// A new cache from a blob file.
    pub fn fromFile(path: []const u8, opts: DeserializeOptions) Error!Cache {
        var d: DeserializeRecord = undefined;
        try d.fill(opts);
        var p: CPath = .{};
        var out: ?*c.kvp_cache = null;
        try check(c.kvp_deserialize_new_from_file(try p.of(path), &d.options, &out));
        return .{ .handle = out.? };
    }

    // -- Serialization: load into this cache --

    /// Loads the blob's pages into this cache: its j-th page into `dst_pages[j]`, or to its own
    /// page id when `dst_pages` is null. Every checksum is verified first: on an error the cache
    /// is unchanged.
    pub fn loadBytes(self: *Cache, bytes: []const u8, dst_pages: ?[]const i32) Error!void {
        const ids = try PageIds.of(dst_pages);
        try check(c.kvp_deserialize_into(self.handle, bytes.ptr, bytes.len, ids.ptr, ids.len));
    }

    /// `loadBytes` from a reader.
    pub fn loadReader(self: *Cache, reader: *std.Io.Reader, dst_pages: ?[]const i32) (Error || std.Io.Reader.Error)!void {
        const ids = try PageIds.of(dst_pages);
        var stream: ReadStream = .{ .reader = reader };
        const st = c.kvp_deserialize_into_from_reader(self.handle, ReadStream.call, &stream, ids.ptr, ids.len);
        if (stream.failed) return error.ReadFailed;
        try check(st);
    }

    /// `loadBytes` from a file.
    pub fn loadFile(self: *Cache, path: []const u8, dst_pages: ?[]const i32) Error!void {
        const ids = try PageIds.of(dst_pages);
        var p: CPath = .{};
        try check(c.kvp_deserialize_into_from_file(self.handle, try p.of(path), ids.ptr, ids.len));
    }

    /// Loads a set of blobs whose slices may differ from this cache's: re-sharding
    /// (`kvp_deserialize_shards_into`, since 1.4). Every blob is checked and the set's coverage
    /// proven before the first byte is written: a missing shard, an overlap or another model is
    /// `error.FormatMismatch` and changes nothing. `allocator` holds the C descriptors for the call.
    pub fn loadShards(self: *Cache, allocator: Allocator, blobs: []const Blob) Error!void {
        var arena = std.heap.ArenaAllocator.init(allocator);
        defer arena.deinit();
        const refs = try arena.allocator().alloc(c.kvp_blob_ref, blobs.len);
        for (blobs, refs) |blob, *ref| ref.* = switch (blob) {
            .bytes => |b| .{ .data = b.ptr, .size = b.len, .path = null },
            .path => |p| .{ .data = null, .size = 0, .path = (try arena.allocator().dupeSentinel(u8, p, 0)).ptr },
        };
        const n = std.math.cast(u32, blobs.len) orelse return error.InvalidArgument;
        try check(c.kvp_deserialize_shards_into(self.handle, refs.ptr, n));
    }
};

/// Owns a `kvp_cache_group` (since 1.4): every shard of a sharded config in one process, written
/// with one call per layer. Call `deinit` exactly once. Shard `i` is tensor rank
/// `i / data_parallel_size`, data rank `i % data_parallel_size`; every per-shard slice of its
/// methods is in that order.
pub const CacheGroup = struct {
    handle: *c.kvp_cache_group,

    /// A CPU group for `cfg`: every shard in host memory.
    pub fn init(cfg: *const Config) Error!CacheGroup {
        return initWith(cfg, &.{}, .{});
    }

    /// Shard `i` on device `device_ids[i]` of the type `options.device` names (CUDA ordinals, one
    /// per shard; `options.device`'s ordinal is replaced), or, with no ids, every shard on
    /// `options.device`.
    pub fn initWith(cfg: *const Config, device_ids: []const i32, options: CacheOptions) Error!CacheGroup {
        const o = try options.record();
        const n = std.math.cast(u32, device_ids.len) orelse return error.InvalidArgument;
        var out: ?*c.kvp_cache_group = null;
        try check(c.kvp_cache_group_create(cfg.ptr(), if (n == 0) null else device_ids.ptr, n, &o, &out));
        return .{ .handle = out.? };
    }

    /// Destroys the group and every shard in it: the Caches `shard` returned are invalid after.
    pub fn deinit(self: *CacheGroup) void {
        _ = c.kvp_cache_group_destroy(self.handle);
        self.* = undefined;
    }

    /// `kv_head_shards` x `data_parallel_size` (`kvp_cache_group_get_num_shards`).
    pub fn numShards(self: *const CacheGroup) Error!u32 {
        var n: u32 = 0;
        try check(c.kvp_cache_group_get_num_shards(self.handle, &n));
        return n;
    }

    /// The cache of shard (`tp_rank`, `dp_rank`) (`kvp_cache_group_get_shard`), **borrowed**: the
    /// group owns it. Use it as any Cache while the group lives, but never call its `deinit`
    /// (the library refuses: `kvp_cache_destroy` of a group's shard calls the misuse handler);
    /// it dies with the group's `deinit`.
    pub fn shard(self: *const CacheGroup, tp_rank: i32, dp_rank: i32) Error!Cache {
        var out: ?*c.kvp_cache = null;
        try check(c.kvp_cache_group_get_shard(self.handle, tp_rank, dp_rank, &out));
        return .{ .handle = out.? };
    }

    /// Writes shard `i`'s new keys and values, `keys[i]`/`values[i]` (row-major host data of f32,
    /// f16 or Bf16 of shape `shapes[i]`: the full [T, H, D] or the shard's own heads) into one
    /// layer of every CPU shard; `md` is the whole cache's metadata. The tensor descriptors are
    /// built in memory from `allocator` for the call. Every shard is validated before any is
    /// written: an error names the shard (`lastErrorMessage`) and changes none.
    pub fn concatenate(self: *CacheGroup, allocator: Allocator, layer: u32, comptime T: type, keys: []const []const T, values: []const []const T, shapes: []const [3]i64, md: *const Metadata) Error!void {
        if (values.len != keys.len or shapes.len != keys.len) return error.InvalidArgument;
        const tensors = try allocator.alloc(Tensor, 2 * keys.len);
        defer allocator.free(tensors);
        for (keys, values, shapes, 0..) |k, v, shape, i| {
            const n = try elements(shape);
            if (k.len != n or v.len != n) return error.InvalidArgument;
            tensors[i] = hostTensor(T, k, shape);
            tensors[keys.len + i] = hostTensor(T, v, shape);
        }
        try self.concatenateTensors(layer, tensors[0..keys.len], tensors[keys.len..], md, null);
    }

    /// `kvp_cache_group_concatenate` with tensor descriptors (device memory of shard `i`'s GPU
    /// for CUDA shards, any input dtype and strides): shard `i`'s write is enqueued on
    /// `streams[i]`; null `streams` = every device's legacy default stream (ignored for CPU).
    pub fn concatenateTensors(self: *CacheGroup, layer: u32, keys: []const Tensor, values: []const Tensor, md: *const Metadata, streams: ?[]const c.kvp_stream) Error!void {
        if (values.len != keys.len) return error.InvalidArgument;
        if (streams) |s| if (s.len != keys.len) return error.InvalidArgument;
        const n = std.math.cast(u32, keys.len) orelse return error.InvalidArgument;
        try check(c.kvp_cache_group_concatenate(self.handle, layer, @ptrCast(keys.ptr), @ptrCast(values.ptr), n, md.handle, if (streams) |s| s.ptr else null));
    }
};

/// A DLPack tensor exported by `Cache.exportDlpack`; `deinit` calls its deleter once.
pub const DlpackTensor = struct {
    managed: *c.DLManagedTensor,

    pub fn tensor(self: DlpackTensor) *c.DLTensor {
        return &self.managed.dl_tensor;
    }

    pub fn deinit(self: *DlpackTensor) void {
        if (self.managed.deleter) |d| d(self.managed);
        self.* = undefined;
    }
};

const DeserializeRecord = struct {
    options: c.kvp_deserialize_options,
    cache: c.kvp_cache_options,

    /// Pinned: `options` points at `cache`.
    fn fill(self: *DeserializeRecord, opts: DeserializeOptions) Error!void {
        try check(c.kvp_deserialize_options_init(&self.options, @sizeOf(c.kvp_deserialize_options)));
        self.cache = try (CacheOptions{ .device = opts.device, .allocator = opts.allocator }).record();
        self.options.cache_options = &self.cache;
        self.options.max_cache_bytes = opts.max_cache_bytes;
    }
};

const PageIds = struct {
    ptr: ?[*]const i32,
    len: u32,

    fn of(pages: ?[]const i32) Error!PageIds {
        const p = pages orelse return .{ .ptr = null, .len = 0 };
        return .{ .ptr = p.ptr, .len = std.math.cast(u32, p.len) orelse return error.InvalidArgument };
    }
};

/// Adapts a `*std.Io.Writer` to `kvp_write_fn`; remembers a writer failure.
const WriteStream = struct {
    writer: *std.Io.Writer,
    failed: bool = false,

    fn call(data: ?*const anyopaque, size: usize, user_data: ?*anyopaque) callconv(.c) i32 {
        const self: *WriteStream = @ptrCast(@alignCast(user_data.?));
        const bytes: [*]const u8 = @ptrCast(data.?);
        self.writer.writeAll(bytes[0..size]) catch {
            self.failed = true;
            return 1;
        };
        return 0;
    }
};

/// Adapts a `*std.Io.Reader` to `kvp_read_fn`; remembers a reader failure.
const ReadStream = struct {
    reader: *std.Io.Reader,
    failed: bool = false,

    fn call(dst: ?*anyopaque, size: usize, read_out: [*c]usize, user_data: ?*anyopaque) callconv(.c) i32 {
        const self: *ReadStream = @ptrCast(@alignCast(user_data.?));
        const bytes: [*]u8 = @ptrCast(dst.?);
        read_out.* = self.reader.readSliceShort(bytes[0..size]) catch {
            self.failed = true;
            return 1;
        };
        return 0;
    }
};

/// One blob of a set given to `Cache.loadShards`: in memory or in a file (`kvp_blob_ref`).
pub const Blob = union(enum) {
    bytes: []const u8,
    path: []const u8,
};

/// Header fields of a blob (`kvp_serialized_info`).
pub const SerializedInfo = extern struct {
    struct_size: u32 = @sizeOf(c.kvp_serialized_info),
    format_major: u32 = 0,
    format_minor: u32 = 0,
    header_size: u32 = 0,
    flags: u64 = 0,
    /// `versionNumber()` of the library that wrote the blob.
    writer_version: u32 = 0,
    _reserved: u32 = 0,
    header_checksum: u64 = 0,
    num_stored_pages: u64 = 0,
    first_page_id: u64 = 0,
    last_page_id: u64 = 0,
    page_bytes_per_layer: u64 = 0,
    chunk_bytes: u64 = 0,
    num_chunks: u64 = 0,
    payload_bytes: u64 = 0,
    total_bytes: u64 = 0,
    config: Config = .{},
    /// Since 1.4: the slice the blob holds (a whole cache's blob: ranks 0 of sizes 1).
    shard: ShardInfo = .{},
};

pub const InspectOptions = struct {
    /// Also verify the page table and every chunk checksum (the whole blob must be present).
    verify: bool = false,

    fn flags(self: InspectOptions) u32 {
        return if (self.verify) c.KVP_INSPECT_VERIFY else 0;
    }
};

/// Reads and checks a blob's header (`kvp_serialized_inspect`); `bytes` may be just the header
/// unless `verify` is set.
pub fn inspect(bytes: []const u8, opts: InspectOptions) Error!SerializedInfo {
    var out: SerializedInfo = .{};
    try check(c.kvp_serialized_inspect(bytes.ptr, bytes.len, opts.flags(), @ptrCast(&out)));
    return out;
}

/// `inspect` on a file, streaming.
pub fn inspectFile(path: []const u8, opts: InspectOptions) Error!SerializedInfo {
    var out: SerializedInfo = .{};
    var p: CPath = .{};
    try check(c.kvp_serialized_inspect_file(try p.of(path), opts.flags(), @ptrCast(&out)));
    return out;
}

// ---------------------------------------------------------------------------------------------
// Metadata and the batch builder

/// One request of a step, as the scheduler sees it.
pub const BatchRequest = struct {
    /// Tokens already in the cache.
    num_computed: i64,
    /// Tokens written this step (0 = inactive, no row).
    num_scheduled: i64,
    /// The request's physical pages in logical order (borrowed for the build).
    page_ids: []const i32 = &.{},

    fn record(self: BatchRequest) c.kvp_batch_request {
        return .{ .num_computed = self.num_computed, .num_scheduled = self.num_scheduled, .page_ids = self.page_ids.ptr, .num_pages = @intCast(self.page_ids.len) };
    }
};

/// Options of the batch builder (`kvp_batch_options`); zero means default.
pub const BatchOptions = struct {
    /// Page-table rows; 0 = the config's `max_num_reqs` if set, else the active requests.
    max_num_reqs: i64 = 0,
    /// Token bucket; 0 = the config's `max_num_tokens` if set, else the scheduled tokens.
    max_num_tokens: i64 = 0,
    /// Emit the seed's distribution `[decode, decode, total]`.
    seed_distribution: bool = false,
    /// v2: tight slice columns instead of the full capacity.
    tight_slices: bool = false,
    /// Keep the caller's request order (no decode-first reordering).
    keep_order: bool = false,

    fn record(self: BatchOptions) Error!c.kvp_batch_options {
        var o: c.kvp_batch_options = undefined;
        try check(c.kvp_batch_options_init(&o, @sizeOf(c.kvp_batch_options)));
        o.max_num_reqs = self.max_num_reqs;
        o.max_num_tokens = self.max_num_tokens;
        if (self.seed_distribution) o.flags |= c.KVP_BATCH_FLAG_SEED_DISTRIBUTION;
        if (self.tight_slices) o.flags |= c.KVP_BATCH_FLAG_TIGHT_SLICES;
        if (self.keep_order) o.flags |= c.KVP_BATCH_FLAG_KEEP_ORDER;
        return o;
    }
};

/// One array of a metadata handle (`kvp_metadata_field`).
pub const MetadataField = enum(u32) {
    pages_tables = c.KVP_METADATA_PAGES_TABLES,
    context_lens = c.KVP_METADATA_CONTEXT_LENS,
    query_start_loc = c.KVP_METADATA_QUERY_START_LOC,
    num_seqs = c.KVP_METADATA_NUM_SEQS,
    slot_mapping = c.KVP_METADATA_SLOT_MAPPING,
    num_kv_update_slices = c.KVP_METADATA_NUM_KV_UPDATE_SLICES,
    request_distribution = c.KVP_METADATA_REQUEST_DISTRIBUTION,
    position_ids = c.KVP_METADATA_POSITION_IDS,
};

/// Caller-owned metadata arrays (`kvp_metadata_desc`), for `Metadata.wrap` and
/// `Metadata.describe`. Null = absent. `pages_tables` is `[num_reqs, pages_per_req]` row-major,
/// `slot_mapping` `[3, num_slices]`. Slices of a CUDA device's metadata hold device pointers.
pub const MetadataDesc = struct {
    layout: LayoutVersion = .v3,
    device: Device = .cpu,
    /// 0 = the cache's.
    page_size: i64 = 0,
    num_slices_per_kv_cache_update_page: i64 = 0,
    pages_tables: ?[]const i32 = null,
    num_reqs: i64 = 0,
    pages_per_req: i64 = 0,
    context_lens: ?[]const i32 = null,
    query_start_loc: ?[]const i32 = null,
    num_seqs: ?[]const i32 = null,
    slot_mapping: ?[]const i32 = null,
    num_kv_update_slices: ?[]const i32 = null,
    request_distribution: ?[]const i32 = null,
    position_ids: ?[]const i32 = null,

    fn record(self: MetadataDesc) Error!c.kvp_metadata_desc {
        var d: c.kvp_metadata_desc = undefined;
        try check(c.kvp_metadata_desc_init(&d, @sizeOf(c.kvp_metadata_desc)));
        d.version = @backingInt(self.layout);
        d.device_type = self.device.typeCode();
        d.device_id = self.device.id();
        d.page_size = self.page_size;
        d.num_slices_per_kv_cache_update_page = self.num_slices_per_kv_cache_update_page;
        d.num_reqs = self.num_reqs;
        d.pages_per_req = self.pages_per_req;
        const rows = std.math.mul(i64, self.num_reqs, self.pages_per_req) catch return error.InvalidArgument;
        if (self.pages_tables) |p| if (p.len != rows) return error.InvalidArgument;
        setArray(&d.pages_tables, null, self.pages_tables);
        setArray(&d.context_lens, &d.context_lens_len, self.context_lens);
        setArray(&d.query_start_loc, &d.query_start_loc_len, self.query_start_loc);
        setArray(&d.num_seqs, &d.num_seqs_len, self.num_seqs);
        if (self.slot_mapping) |s| if (s.len % 3 != 0) return error.InvalidArgument;
        setArray(&d.slot_mapping, null, self.slot_mapping);
        d.num_slices = if (self.slot_mapping) |s| @intCast(s.len / 3) else 0;
        setArray(&d.num_kv_update_slices, &d.num_kv_update_slices_len, self.num_kv_update_slices);
        setArray(&d.request_distribution, &d.request_distribution_len, self.request_distribution);
        setArray(&d.position_ids, &d.position_ids_len, self.position_ids);
        return d;
    }

    fn fromRecord(d: c.kvp_metadata_desc) MetadataDesc {
        const num_slices: usize = @intCast(d.num_slices);
        return .{
            .layout = @fromBackingInt(@intCast(d.version)),
            .device = Device.fromRaw(d.device_type, d.device_id),
            .page_size = d.page_size,
            .num_slices_per_kv_cache_update_page = d.num_slices_per_kv_cache_update_page,
            .pages_tables = slice(d.pages_tables, d.num_reqs * d.pages_per_req),
            .num_reqs = d.num_reqs,
            .pages_per_req = d.pages_per_req,
            .context_lens = slice(d.context_lens, d.context_lens_len),
            .query_start_loc = slice(d.query_start_loc, d.query_start_loc_len),
            .num_seqs = slice(d.num_seqs, d.num_seqs_len),
            .slot_mapping = slice(d.slot_mapping, @intCast(3 * num_slices)),
            .num_kv_update_slices = slice(d.num_kv_update_slices, d.num_kv_update_slices_len),
            .request_distribution = slice(d.request_distribution, d.request_distribution_len),
            .position_ids = slice(d.position_ids, d.position_ids_len),
        };
    }
};

fn setArray(ptr: *[*c]const i32, len: ?*i64, array: ?[]const i32) void {
    const a = array orelse return;
    ptr.* = a.ptr;
    if (len) |l| l.* = @intCast(a.len);
}

fn slice(ptr: [*c]const i32, len: i64) ?[]const i32 {
    if (ptr == null) return null;
    return ptr[0..@intCast(len)];
}

/// Owns runtime metadata (`kvp_metadata`). Call `deinit` exactly once.
pub const Metadata = struct {
    handle: *c.kvp_metadata,

    /// The low-level builder (`kvp_metadata_build`): `order_out[row]` (at least
    /// `requests.len` entries, or null) receives the index of the request in each row (-1 past
    /// the active rows). Decode requests come first unless `opts.keep_order`, so keys and
    /// values must be packed in that row order; `Batch.build` does it for you.
    /// `allocator` holds the C request array during the call.
    pub fn build(allocator: Allocator, cfg: *const Config, requests: []const BatchRequest, opts: BatchOptions, order_out: ?[]i32) Error!Metadata {
        const n = std.math.cast(u32, requests.len) orelse return error.InvalidArgument;
        if (order_out) |o| if (o.len < requests.len) return error.InvalidArgument;
        const raw = try allocator.alloc(c.kvp_batch_request, requests.len);
        defer allocator.free(raw);
        for (requests, raw) |r, *out| out.* = r.record();
        const o = try opts.record();
        var out: ?*c.kvp_metadata = null;
        const order: ?[*]i32 = if (order_out) |x| x.ptr else null;
        try check(c.kvp_metadata_build(cfg.ptr(), raw.ptr, n, &o, order, &out));
        return .{ .handle = out.? };
    }

    /// Owning metadata of an empty batch with consistent shapes (`kvp_metadata_create_empty`).
    pub fn createEmpty(layout: LayoutVersion, num_tokens: i64, max_num_reqs: i64, max_pages: i64, page_size: i64) Error!Metadata {
        var out: ?*c.kvp_metadata = null;
        try check(c.kvp_metadata_create_empty(@backingInt(layout), num_tokens, max_num_reqs, max_pages, page_size, &out));
        return .{ .handle = out.? };
    }

    /// Wraps caller-owned arrays without copying (`kvp_metadata_create`): they must outlive
    /// the handle and not change while a call uses it.
    pub fn wrap(desc: MetadataDesc) Error!Metadata {
        const d = try desc.record();
        var out: ?*c.kvp_metadata = null;
        try check(c.kvp_metadata_create(&d, &out));
        return .{ .handle = out.? };
    }

    pub fn deinit(self: *Metadata) void {
        _ = c.kvp_metadata_destroy(self.handle);
        self.* = undefined;
    }

    /// One array (borrowed from the handle), or null when absent.
    pub fn array(self: *const Metadata, field: MetadataField) Error!?[]const i32 {
        var data: [*c]const i32 = null;
        var len: i64 = 0;
        try check(c.kvp_metadata_get_array(self.handle, @backingInt(field), &data, &len));
        return slice(data, len);
    }

    /// Every array with its shape (borrowed from the handle).
    pub fn describe(self: *const Metadata) Error!MetadataDesc {
        var d: c.kvp_metadata_desc = undefined;
        try check(c.kvp_metadata_desc_init(&d, @sizeOf(c.kvp_metadata_desc)));
        try check(c.kvp_metadata_get_desc(self.handle, &d));
        return MetadataDesc.fromRecord(d);
    }

    /// JSON text with the arrays as integer lists; the caller owns it.
    pub fn toJson(self: *const Metadata, allocator: Allocator) Error![:0]u8 {
        const Writer = struct {
            fn call(md: *const Metadata, buf: ?[*]u8, cap: usize, written: *usize) c.kvp_status {
                return c.kvp_metadata_to_json(md.handle, buf, cap, written);
            }
        };
        return jsonAlloc(allocator, self, Writer.call);
    }

    /// Owning metadata from `toJson`'s text.
    pub fn fromJson(text: []const u8) Error!Metadata {
        var out: ?*c.kvp_metadata = null;
        try check(c.kvp_metadata_from_json(text.ptr, text.len, &out));
        return .{ .handle = out.? };
    }
};

/// A step's metadata together with the row order the builder chose, and packing that follows
/// it: give each request's keys and values in your own request order, and `pack` (or
/// `Cache.concatenateBatch`) lays them out in row order. Call `deinit` once.
pub const Batch = struct {
    allocator: Allocator,
    metadata: Metadata,
    /// `order[row]` is the index (into the requests) of the request in that row; -1 past the
    /// active rows.
    order: []i32,
    /// Tokens each request writes, by request index.
    tokens: []usize,
    num_kv_heads: i64,
    head_dim: i64,

    /// Builds the metadata for `requests` (`kvp_metadata_build`) and keeps its row order.
    pub fn build(allocator: Allocator, cfg: *const Config, requests: []const BatchRequest, opts: BatchOptions) Error!Batch {
        const order = try allocator.alloc(i32, requests.len);
        errdefer allocator.free(order);
        const tokens = try allocator.alloc(usize, requests.len);
        errdefer allocator.free(tokens);
        for (requests, tokens) |r, *t| t.* = std.math.cast(usize, r.num_scheduled) orelse 0;
        const md = try Metadata.build(allocator, cfg, requests, opts, order);
        return .{ .allocator = allocator, .metadata = md, .order = order, .tokens = tokens, .num_kv_heads = cfg.num_kv_heads, .head_dim = cfg.k_headdim };
    }

    pub fn deinit(self: *Batch) void {
        self.metadata.deinit();
        self.allocator.free(self.order);
        self.allocator.free(self.tokens);
        self.* = undefined;
    }

    /// Rows of the packed tensors: the scheduled tokens of all requests.
    pub fn numTokens(self: *const Batch) usize {
        var n: usize = 0;
        for (self.tokens) |t| n += t;
        return n;
    }

    /// Packs per-request key (or value) data, [num_scheduled_i, H, D] each in request order,
    /// into `out` ([numTokens(), H, D]) in row order.
    pub fn pack(self: *const Batch, comptime T: type, per_request: []const []const T, out: []T) Error!void {
        return self.packRows(T, @intCast(self.num_kv_heads * self.head_dim), per_request, out);
    }

    /// `pack` into a new buffer the caller owns.
    pub fn packAlloc(self: *const Batch, allocator: Allocator, comptime T: type, per_request: []const []const T) Error![]T {
        const row: usize = @intCast(self.num_kv_heads * self.head_dim);
        const out = try allocator.alloc(T, std.math.mul(usize, self.numTokens(), row) catch return error.InvalidArgument);
        errdefer allocator.free(out);
        try self.packRows(T, row, per_request, out);
        return out;
    }

    /// `pack` with `row_elems` elements per token, e.g. Hq * D for attention queries.
    pub fn packRows(self: *const Batch, comptime T: type, row_elems: usize, per_request: []const []const T, out: []T) Error!void {
        if (per_request.len != self.tokens.len) return error.InvalidArgument;
        for (per_request, self.tokens) |data, t| if (data.len != t * row_elems) return error.InvalidArgument;
        if (out.len != self.numTokens() * row_elems) return error.InvalidArgument;
        var at: usize = 0;
        for (self.order) |request| {
            if (request < 0) break;
            const data = per_request[@intCast(request)];
            @memcpy(out[at..][0..data.len], data);
            at += data.len;
        }
    }
};

// ---------------------------------------------------------------------------------------------
// Attention options

/// `kvp_attention_options` as C sees it (what `AttentionOptions.record` fills); prefer
/// `AttentionOptions`.
pub const AttentionOptionsRecord = extern struct {
    struct_size: u32,
    abi_version: u32,
    softmax_scale: f32,
    logits_soft_cap: f32,
    sliding_window: i32,
    k_scale: f32,
    v_scale: f32,
    num_sinks: u32,
    sinks: ?[*]const f32,
};

/// Options of `Cache.attention` (`kvp_attention_options`). Zero (and null) means default for every
/// field, as in C: `.{}` is plain causal attention with the reference's default scale, no window,
/// no soft cap, no sinks and unit fp8 scales.
pub const AttentionOptions = struct {
    /// Softmax scale σ multiplying every logit; finite and positive. 0 = the reference's default:
    /// 1.0 for a v3 cache, 1/sqrt(head_dim) for a v2 cache. Models pass their own scale, usually
    /// 1/sqrt(head_dim).
    softmax_scale: f32 = 0,
    /// Logit soft cap `s <- cap * tanh(s / cap)` after the scale (and `k_scale`); 0 = no cap.
    logits_soft_cap: f32 = 0,
    /// Sliding window W: a query at position p sees keys p-W+1 … p. 0 = no window; negative is
    /// refused (error.InvalidArgument).
    sliding_window: i32 = 0,
    /// Dequantisation scale of the stored keys (multiplies every logit); 0 = 1.
    k_scale: f32 = 0,
    /// Dequantisation scale of the stored values (multiplies the weighted sum); 0 = 1.
    v_scale: f32 = 0,
    /// Sink logits, one per query head: they take part in the softmax normalisation only
    /// (-inf = no sink). null = no sinks. Borrowed for the call.
    sinks: ?[]const f32 = null,

    /// The C record (`kvp_attention_options_init`, then these fields); it points into `sinks`.
    pub fn record(self: AttentionOptions) Error!AttentionOptionsRecord {
        var r: AttentionOptionsRecord = undefined;
        try check(c.kvp_attention_options_init(@ptrCast(&r), @sizeOf(AttentionOptionsRecord)));
        r.softmax_scale = self.softmax_scale;
        r.logits_soft_cap = self.logits_soft_cap;
        r.sliding_window = self.sliding_window;
        r.k_scale = self.k_scale;
        r.v_scale = self.v_scale;
        if (self.sinks) |s| {
            r.num_sinks = std.math.cast(u32, s.len) orelse return error.InvalidArgument;
            r.sinks = if (s.len > 0) s.ptr else null;
        }
        return r;
    }
};

// ---------------------------------------------------------------------------------------------
// Page pool (kvpages/pool.h)

/// Identifies a sequence of a `Pool` (`kvp_seq_id`): an opaque 32-bit value, a distinct type
/// so it cannot be mixed up with token ids or page ids. Freeing the sequence makes it stale:
/// later calls with it return `error.NotFound`.
pub const SeqId = enum(u32) {
    _,

    /// The raw value, for logging only (0 is never a valid id).
    pub fn value(self: SeqId) u32 {
        return @backingInt(self);
    }

    fn raw(self: SeqId) c.kvp_seq_id {
        return .{ .id = @backingInt(self) };
    }
};

/// Counters of a pool (`kvp_pool_stats`); `free_pages + evictable_pages + used_pages ==
/// total_pages` always holds.
pub const PoolStats = extern struct {
    struct_size: u32,
    max_sequences: u32,
    page_size: i64,
    max_pages_per_sequence: i64,
    total_pages: i64,
    free_pages: i64,
    evictable_pages: i64,
    used_pages: i64,
    indexed_pages: i64,
    num_sequences: i64,
    prompt_tokens: i64,
    reused_tokens: i64,
    evictions: i64,
    cow_copies: i64,
};

/// Counters of one data-parallel shard of a pool (`kvp_pool_shard_stats`, since 1.4): the shard
/// hands out pages `first_page .. end_page`; `free_pages + evictable_pages + used_pages ==
/// total_pages`.
pub const PoolShardStats = extern struct {
    struct_size: u32,
    num_shards: u32,
    first_page: i32,
    end_page: i32,
    total_pages: i64,
    free_pages: i64,
    evictable_pages: i64,
    used_pages: i64,
    num_sequences: i64,
};

/// Counters of one storage tier of a pool (`kvp_pool_tier_stats`, since 1.4): pages looked up
/// and restored (`restored_tokens`), blocks rejected by the checks, evicted pages written (tier 0).
pub const PoolTierStats = extern struct {
    struct_size: u32,
    num_tiers: u32,
    lookups: i64,
    hits: i64,
    misses: i64,
    rejected: i64,
    errors: i64,
    restored_tokens: i64,
    bytes_read: i64,
    blocks_written: i64,
    bytes_written: i64,
    /// Since 1.5: evicted pages not written because the write queue was full.
    dropped: i64,
};

/// Flag bits of `PageState.flags`.
pub const page_flag_null: u32 = c.KVP_PAGE_FLAG_NULL;
pub const page_flag_free: u32 = c.KVP_PAGE_FLAG_FREE;
pub const page_flag_indexed: u32 = c.KVP_PAGE_FLAG_INDEXED;

pub const PageState = struct {
    /// Sequence page-table entries holding the page.
    refcount: u32,
    /// `page_flag_*` bits.
    flags: u32,
};

pub const AddedSequence = struct {
    seq: SeqId,
    /// Prompt tokens served from the prefix cache (a multiple of the page size); they count as
    /// computed, the caller writes the K/V of the rest.
    reused_tokens: usize,
};

pub const SequenceLength = struct {
    length: usize,
    /// Tokens whose K/V is written (the computed watermark).
    computed: usize,
};

/// Owns a `kvp_pool`: the pages of one cache handed to sequences, shared by fork (copy-on-write)
/// and reused across prompts by prefix hash. Call `deinit` exactly once.
///
/// The pool borrows its cache: the `Cache` must outlive the pool (`deinit` the pool first). Not
/// internally synchronised: calls that modify the pool must not run concurrently.
/// Every failed call leaves the pool unchanged.
pub const Pool = struct {
    handle: *c.kvp_pool,

    pub const Options = struct {
        /// Live sequences at most; 0 = the config's default.
        max_sequences: u32 = 0,
        /// Never index pages: no prefix reuse, released pages are freed at once.
        no_prefix_cache: bool = false,
        /// Host allocator of all the pool's memory (borrowed; must outlive the pool).
        allocator: ?*const HostAllocator = null,
        /// Since 1.5: bytes of staging blocks queued for a tier 0 written asynchronously; at
        /// least one block; 0 = 64 MiB.
        write_queue_bytes: u64 = 0,
    };

    pub fn init(cache: *Cache, o: Options) Error!Pool {
        var opts: c.kvp_pool_options = undefined;
        try check(c.kvp_pool_options_init(&opts, @sizeOf(c.kvp_pool_options)));
        opts.max_sequences = o.max_sequences;
        if (o.no_prefix_cache) opts.flags |= c.KVP_POOL_FLAG_NO_PREFIX_CACHE;
        if (o.allocator) |a| opts.allocator = &a.table;
        opts.write_queue_bytes = o.write_queue_bytes;
        var out: ?*c.kvp_pool = null;
        try check(c.kvp_pool_create(cache.handle, &opts, &out));
        return .{ .handle = out.? };
    }

    pub fn deinit(self: *Pool) void {
        _ = c.kvp_pool_destroy(self.handle);
        self.* = undefined;
    }

    /// Adds a sequence holding `tokens`, reusing the longest cached prefix of full pages (with
    /// `reuse_all` false, at least one token is left to compute). `salt` namespaces the prefix cache.
    pub fn addSequence(self: *Pool, tokens: []const i32, salt: u64, reuse_all: bool) Error!AddedSequence {
        return self.add(tokens, salt, if (reuse_all) c.KVP_POOL_ADD_FLAG_REUSE_ALL else 0);
    }

    /// `addSequence` into data-parallel shard `shard` (`KVP_POOL_ADD_IN_SHARD`) instead of the
    /// one the pool would choose (the longest cached prefix that can hold the rest, else the most
    /// free pages). Prefix matching stays within the shard; a shard at or past the config's
    /// `data_parallel_size` is error.InvalidArgument.
    pub fn addSequenceInShard(self: *Pool, tokens: []const i32, salt: u64, reuse_all: bool, shard: u16) Error!AddedSequence {
        const reuse: u32 = if (reuse_all) c.KVP_POOL_ADD_FLAG_REUSE_ALL else 0;
        return self.add(tokens, salt, reuse | c.KVP_POOL_ADD_FLAG_SHARD | (@as(u32, shard) << 16));
    }

    fn add(self: *Pool, tokens: []const i32, salt: u64, flags: u32) Error!AddedSequence {
        var seq: c.kvp_seq_id = .{ .id = 0 };
        var reused: usize = 0;
        try check(c.kvp_pool_add_sequence(self.handle, tokens.ptr, tokens.len, salt, flags, &seq, &reused));
        return .{ .seq = @fromBackingInt(@intCast(seq.id)), .reused_tokens = reused };
    }

    /// Appends tokens (declaring every token already in the sequence computed); copies a shared
    /// partial tail page first.
    pub fn append(self: *Pool, seq: SeqId, tokens: []const i32) Error!void {
        try check(c.kvp_pool_append(self.handle, seq.raw(), tokens.ptr, tokens.len, null));
    }

    /// Declares the K/V of the first `num_tokens` tokens written (full pages enter the prefix index).
    pub fn setComputed(self: *Pool, seq: SeqId, num_tokens: usize) Error!void {
        try check(c.kvp_pool_set_computed(self.handle, seq.raw(), num_tokens));
    }

    pub fn truncate(self: *Pool, seq: SeqId, new_length: usize) Error!void {
        try check(c.kvp_pool_truncate(self.handle, seq.raw(), new_length));
    }

    /// Forks `seq` into `children.len` new sequences sharing all its pages; fills `children`.
    pub fn fork(self: *Pool, seq: SeqId, children: []SeqId) Error!void {
        try check(c.kvp_pool_fork(self.handle, seq.raw(), std.math.cast(u32, children.len) orelse return error.InvalidArgument, @ptrCast(children.ptr)));
    }

    /// Releases the sequence's pages; `seq` becomes stale.
    pub fn freeSequence(self: *Pool, seq: SeqId) Error!void {
        try check(c.kvp_pool_free_sequence(self.handle, seq.raw()));
    }

    pub fn length(self: *const Pool, seq: SeqId) Error!SequenceLength {
        var l: SequenceLength = undefined;
        try check(c.kvp_pool_get_sequence_length(self.handle, seq.raw(), &l.length, &l.computed));
        return l;
    }

    /// Copies the sequence's page ids into `out` and returns the filled part (the rest of `out`
    /// is set to the null page 0). error.BufferTooSmall when `out` is shorter than the page count.
    pub fn pageTable(self: *const Pool, seq: SeqId, out: []i32) Error![]i32 {
        var n: usize = 0;
        try check(c.kvp_pool_get_page_table(self.handle, seq.raw(), out.ptr, out.len, &n));
        return out[0..n];
    }

    /// Fills `out` with the cache slots of positions `start … start + out.len - 1`.
    pub fn slots(self: *const Pool, seq: SeqId, start: usize, out: []i32) Error!void {
        try check(c.kvp_pool_get_slots(self.handle, seq.raw(), start, out.len, out.ptr));
    }

    /// A request for `Batch.build`: computed watermark, pending tokens, and the page ids
    /// copied into `page_buf` (which the result's `page_ids` points into, so it stays valid after
    /// the pool changes). error.BufferTooSmall when `page_buf` is shorter than the page count.
    pub fn batchRequest(self: *const Pool, seq: SeqId, page_buf: []i32) Error!BatchRequest {
        var r: c.kvp_batch_request = undefined;
        try check(c.kvp_pool_get_batch_request(self.handle, seq.raw(), &r));
        const n: usize = @intCast(r.num_pages);
        if (page_buf.len < n) return error.BufferTooSmall;
        if (n > 0) @memcpy(page_buf[0..n], r.page_ids[0..n]);
        return .{ .num_computed = r.num_computed, .num_scheduled = r.num_scheduled, .page_ids = page_buf[0..n] };
    }

    pub fn pageState(self: *const Pool, page: i32) Error!PageState {
        var s: PageState = undefined;
        try check(c.kvp_pool_get_page_state(self.handle, page, &s.refcount, &s.flags));
        return s;
    }

    pub fn stats(self: *const Pool) Error!PoolStats {
        var s = std.mem.zeroes(PoolStats);
        s.struct_size = @sizeOf(PoolStats);
        try check(c.kvp_pool_get_stats(self.handle, @ptrCast(&s)));
        return s;
    }

    /// The data-parallel shard `seq` lives in (0 without shards).
    pub fn sequenceShard(self: *const Pool, seq: SeqId) Error!u32 {
        var shard: u32 = 0;
        try check(c.kvp_pool_get_sequence_shard(self.handle, seq.raw(), &shard));
        return shard;
    }

    /// The counters of one data-parallel shard (a pool without shards has one, shard 0).
    pub fn shardStats(self: *const Pool, shard: u32) Error!PoolShardStats {
        var s = std.mem.zeroes(PoolShardStats);
        s.struct_size = @sizeOf(PoolShardStats);
        try check(c.kvp_pool_get_shard_stats(self.handle, shard, @ptrCast(&s)));
        return s;
    }

    /// Adds `store` as the pool's next storage tier (at most `c.KVP_POOL_MAX_TIERS`): tier 0
    /// receives the prefix pages the pool evicts, `addSequence` restores a prompt's next pages
    /// from the tiers in order. The store is borrowed: it must outlive the pool.
    pub fn addStore(self: *Pool, store: *const Store) Error!void {
        try check(c.kvp_pool_add_store(self.handle, store.handle));
    }

    /// The counters of tier `tier` (in the order the stores were added).
    pub fn tierStats(self: *const Pool, tier: u32) Error!PoolTierStats {
        var s = std.mem.zeroes(PoolTierStats);
        s.struct_size = @sizeOf(PoolTierStats);
        try check(c.kvp_pool_get_tier_stats(self.handle, tier, @ptrCast(&s)));
        return s;
    }

    /// Waits until every write to tier 0 queued so far has reached its store (or failed,
    /// counted in `PoolTierStats.errors`); with `cached`, first writes every cached prefix page
    /// tier 0 does not hold yet (to persist the prefix cache, at exit say). Since 1.5.
    pub fn flushTiers(self: *Pool, cached: bool) Error!void {
        try check(c.kvp_pool_flush_tiers(self.handle, if (cached) c.KVP_POOL_FLUSH_CACHED else 0));
    }

    /// The blob of sequence `seq` (its token ids and its pages' bytes in every layer), which
    /// `restoreSequence` turns into a new sequence of any pool of a compatible cache; the caller
    /// owns it (free with `allocator`). Every token must be computed (`setComputed`).
    pub fn saveSequenceAlloc(self: *Pool, allocator: Allocator, seq: SeqId) Error![]u8 {
        var size: usize = 0;
        const sized = c.kvp_pool_save_sequence(self.handle, seq.raw(), null, 0, &size);
        if (sized != c.KVP_ERR_BUFFER_TOO_SMALL) try check(sized);
        const buf = try allocator.alloc(u8, size);
        errdefer allocator.free(buf);
        try check(c.kvp_pool_save_sequence(self.handle, seq.raw(), buf.ptr, buf.len, &size));
        return buf;
    }

    /// `saveSequenceAlloc` into a file replaced atomically; `sync` false skips the two `fsync`s
    /// (`KVP_POOL_SAVE_FLAG_NO_SYNC`).
    pub fn saveSequenceFile(self: *Pool, seq: SeqId, path: []const u8, sync: bool) Error!void {
        var p: CPath = .{};
        const flags: u32 = if (sync) 0 else c.KVP_POOL_SAVE_FLAG_NO_SYNC;
        try check(c.kvp_pool_save_sequence_to_file(self.handle, seq.raw(), try p.of(path), flags));
    }

    /// A new sequence from a saved blob, checked whole before the pool changes; its full pages
    /// that the prefix index holds are shared, and every token counts as computed. `shard` forces
    /// a data-parallel shard (`KVP_POOL_ADD_IN_SHARD`); null places it as `addSequence` does.
    pub fn restoreSequence(self: *Pool, bytes: []const u8, shard: ?u16) Error!SeqId {
        var seq: c.kvp_seq_id = .{ .id = 0 };
        try check(c.kvp_pool_restore_sequence(self.handle, bytes.ptr, bytes.len, shardFlags(shard), &seq));
        return @fromBackingInt(@intCast(seq.id));
    }

    /// `restoreSequence` from a file written by `saveSequenceFile`.
    pub fn restoreSequenceFile(self: *Pool, path: []const u8, shard: ?u16) Error!SeqId {
        var p: CPath = .{};
        var seq: c.kvp_seq_id = .{ .id = 0 };
        try check(c.kvp_pool_restore_sequence_from_file(self.handle, try p.of(path), shardFlags(shard), &seq));
        return @fromBackingInt(@intCast(seq.id));
    }

    fn shardFlags(shard: ?u16) u32 {
        return if (shard) |s| c.KVP_POOL_ADD_FLAG_SHARD | (@as(u32, s) << 16) else 0;
    }

    /// error.Internal (with the violated invariant in `lastErrorMessage()`) if the bookkeeping
    /// is inconsistent.
    pub fn checkInvariants(self: *const Pool) Error!void {
        try check(c.kvp_pool_check_invariants(self.handle));
    }

    /// Empties the prefix index (after a model or weight change).
    pub fn clearPrefixCache(self: *Pool) Error!void {
        try check(c.kvp_pool_clear_prefix_cache(self.handle));
    }
};

// ---------------------------------------------------------------------------------------------
// Block stores (kvpages/store.h, since 1.4)

/// Owns a `kvp_store`: blocks of bytes under 16-byte keys, bounded in bytes; where a `Pool` keeps
/// the prefix pages it evicts (`Pool.addStore`). Internally synchronised: threads and pools may
/// share one. `deinit` it after the pools that use it.
pub const Store = struct {
    handle: *c.kvp_store,

    /// The key of a block (`kvp_store_key`).
    pub const Key = [16]u8;

    pub const Options = struct {
        /// A directory store does not fsync its files (`KVP_STORE_FLAG_NO_SYNC`): faster; after a
        /// power loss a block may be missing or damaged, which every read and `scrub` detect.
        no_sync: bool = false,
        /// A network store's bound on every connect and command, in ms (`redis`; since 1.5);
        /// 0 = the default, 1000 ms. The memory and directory stores ignore it.
        timeout_ms: u32 = 0,
    };

    /// Content and counters (`kvp_store_stats`); `blocks`, `bytes`, `max_bytes` are -1 for a
    /// plug-in store.
    pub const Stats = extern struct {
        struct_size: u32,
        _reserved: u32,
        blocks: i64,
        bytes: i64,
        max_bytes: i64,
        puts: i64,
        hits: i64,
        misses: i64,
        errors: i64,
        evictions: i64,
    };

    /// What `scrub` found (`kvp_store_scrub_report`).
    pub const ScrubReport = extern struct {
        struct_size: u32,
        _reserved: u32,
        blocks_checked: i64,
        blocks_damaged: i64,
        bytes_freed: i64,
    };

    /// A store in host memory holding at most `max_bytes` of blocks; over the bound the least
    /// recently used blocks are dropped (`kvp_store_create_memory`).
    pub fn memory(max_bytes: u64) Error!Store {
        var out: ?*c.kvp_store = null;
        try check(c.kvp_store_create_memory(max_bytes, null, &out));
        return .{ .handle = out.? };
    }

    /// Opens (creating it if missing) a store in a directory, one file per block, at most
    /// `max_bytes` of files; it survives restarts (`kvp_store_create_directory`).
    pub fn directory(path: []const u8, max_bytes: u64, o: Options) Error!Store {
        var opts: c.kvp_store_options = undefined;
        try check(c.kvp_store_options_init(&opts, @sizeOf(c.kvp_store_options)));
        if (o.no_sync) opts.flags |= c.KVP_STORE_FLAG_NO_SYNC;
        var p: CPath = .{};
        var out: ?*c.kvp_store = null;
        try check(c.kvp_store_create_directory(try p.of(path), max_bytes, &opts, &out));
        return .{ .handle = out.? };
    }

    /// A store in a Redis server (`redis://HOST:PORT[/DB]`) or a Redis Cluster
    /// (`redis+cluster://HOST:PORT[,HOST:PORT...]`), optionally followed by `?prefix=STR` (default
    /// `kvp:`), shared by every process that opens it (`kvp_store_create_redis`, since 1.5). A
    /// server that fails or does not answer within `o.timeout_ms` is `error.Io` (one that timed out
    /// is then skipped for a while: its calls fail at once, see `kvp_store_create_redis`); a
    /// library built without Redis returns `error.Unsupported`.
    pub fn redis(url: []const u8, o: Options) Error!Store {
        var opts: c.kvp_store_options = undefined;
        try check(c.kvp_store_options_init(&opts, @sizeOf(c.kvp_store_options)));
        opts.timeout_ms = o.timeout_ms;
        var buf: [1023:0]u8 = undefined;
        var out: ?*c.kvp_store = null;
        try check(c.kvp_store_create_redis(try nulTerminated(&buf, url), &opts, &out));
        return .{ .handle = out.? };
    }

    pub fn deinit(self: *Store) void {
        _ = c.kvp_store_destroy(self.handle);
        self.* = undefined;
    }

    /// Stores `data` under `key`, replacing the block there.
    pub fn put(self: *const Store, key: *const Key, data: []const u8) Error!void {
        try check(c.kvp_store_put(self.handle, @ptrCast(key), data.ptr, data.len));
    }

    /// The block of `key`, allocated with `allocator` (the caller frees it). error.NotFound for a
    /// missing key; a damaged file of a directory store is an error.Format* (it has been deleted).
    pub fn get(self: *const Store, allocator: Allocator, key: *const Key) (Error || Allocator.Error)![]u8 {
        var block: []u8 = &.{};
        while (true) { // size, then fill; again if a larger block replaced it in between
            var size: usize = 0;
            check(c.kvp_store_get(self.handle, @ptrCast(key), block.ptr, block.len, &size)) catch |err| switch (err) {
                error.BufferTooSmall => {
                    allocator.free(block);
                    block = try allocator.alloc(u8, size);
                    continue;
                },
                else => {
                    allocator.free(block);
                    return err;
                },
            };
            return if (size == block.len) block else allocator.realloc(block, size);
        }
    }

    /// Sets `found[i]` to whether `keys[i]` has a block (one batched query; not a use for the
    /// LRU). error.InvalidArgument when the lengths differ.
    pub fn exists(self: *const Store, keys: []const Key, found: []bool) Error!void {
        if (keys.len != found.len) return error.InvalidArgument;
        try check(c.kvp_store_exists(self.handle, @ptrCast(keys.ptr), keys.len, @ptrCast(found.ptr)));
    }

    /// Removes the block of `key` (error.NotFound if there is none).
    pub fn remove(self: *const Store, key: *const Key) Error!void {
        try check(c.kvp_store_remove(self.handle, @ptrCast(key)));
    }

    pub fn stats(self: *const Store) Error!Stats {
        var s = std.mem.zeroes(Stats);
        s.struct_size = @sizeOf(Stats);
        try check(c.kvp_store_get_stats(self.handle, @ptrCast(&s)));
        return s;
    }

    /// Reads and verifies every block, deleting damaged ones (error.Unsupported for a plug-in store).
    pub fn scrub(self: *const Store) Error!ScrubReport {
        var r = std.mem.zeroes(ScrubReport);
        r.struct_size = @sizeOf(ScrubReport);
        try check(c.kvp_store_scrub(self.handle, @ptrCast(&r)));
        return r;
    }

    /// Every key the store holds, allocated with `allocator` (the caller frees it): since 1.5,
    /// `kvp_store_list` a page at a time (the store locked per page, not across pages) until the
    /// listing is complete. A key present throughout appears at least once; keys put or removed
    /// meanwhile may or may not. error.Unsupported for a plug-in store that cannot list.
    pub fn list(self: *const Store, allocator: Allocator) (Error || Allocator.Error)![]Key {
        var page: [256]Key = undefined;
        var keys: []Key = &.{};
        errdefer allocator.free(keys);
        var cursor: u64 = 0;
        while (true) {
            var n: usize = 0;
            try check(c.kvp_store_list(self.handle, &cursor, @ptrCast(&page), page.len, &n));
            const old = keys.len;
            keys = try allocator.realloc(keys, old + n);
            @memcpy(keys[old..], page[0..n]);
            if (cursor == 0) return keys;
        }
    }

    /// What `inspectBlock` read in a block a pool wrote (`kvp_store_block_info`, since 1.5):
    /// the config's fingerprint, the page's key and its parent's (the prefix chain), the salt, the
    /// geometry (`page_bytes`: of the page in one layer), and `checksum_ok` (1 when it holds).
    pub const BlockInfo = extern struct {
        struct_size: u32,
        format_version: u32,
        fingerprint: u64,
        key: Key,
        parent: Key,
        salt: u64,
        page_size: u32,
        num_layers: u32,
        page_bytes: u64,
        block_bytes: u64,
        checksum_ok: u32,
        _reserved: u32,
    };

    /// The header of a block a pool wrote to a store and whether its checksum holds
    /// (`kvp_store_block_inspect`, since 1.5); bytes that are not a whole block are an error.Format*.
    pub fn inspectBlock(block: []const u8) Error!BlockInfo {
        var info = std.mem.zeroes(BlockInfo);
        info.struct_size = @sizeOf(BlockInfo);
        try check(c.kvp_store_block_inspect(block.ptr, block.len, @ptrCast(&info)));
        return info;
    }
};

// ---------------------------------------------------------------------------------------------
// Layout checks of every struct mirrored above

/// Fails compilation unless `Z` and `C` have the same size and alignment and every field of `Z`
/// sits at the same offset, with the same size, as the field of the same name in `C`.
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
    assertSameLayout(Config, c.kvp_config);
    assertSameLayout(LayoutInfo, c.kvp_layout_info);
    assertSameLayout(Plan, c.kvp_plan);
    assertSameLayout(MemoryStats, c.kvp_memory_stats);
    assertSameLayout(Tensor, c.kvp_tensor);
    assertSameLayout(SerializedInfo, c.kvp_serialized_info);
    assertSameLayout(ShardInfo, c.kvp_shard_info);
    assertSameLayout(AttentionOptionsRecord, c.kvp_attention_options);
    assertSameLayout(PoolStats, c.kvp_pool_stats);
    assertSameLayout(PoolShardStats, c.kvp_pool_shard_stats);
    assertSameLayout(PoolTierStats, c.kvp_pool_tier_stats);
    assertSameLayout(Store.Stats, c.kvp_store_stats);
    assertSameLayout(Store.ScrubReport, c.kvp_store_scrub_report);
    assertSameLayout(Store.BlockInfo, c.kvp_store_block_info);
    if (@sizeOf(Store.Key) != @sizeOf(c.kvp_store_key) or @alignOf(c.kvp_store_key) != 1)
        @compileError("layout of Store.Key differs from kvp_store_key");
    if (@sizeOf(SeqId) != @sizeOf(c.kvp_seq_id) or @alignOf(SeqId) != @alignOf(c.kvp_seq_id) or
        @offsetOf(c.kvp_seq_id, "id") != 0 or @FieldType(c.kvp_seq_id, "id") != u32)
        @compileError("layout of SeqId differs from kvp_seq_id");
    if (@sizeOf(Bf16) != 2 or @sizeOf(F8E4M3) != 1 or @sizeOf(F8E5M2) != 1) @compileError("element sizes changed");
    if (c.KVP_ATTENTION_OPTIONS_VERSION != 1) @compileError("KVP_ATTENTION_OPTIONS_VERSION changed");
    if (c.KVP_CONFIG_VERSION != 2) @compileError("KVP_CONFIG_VERSION changed");
    if (c.KVP_MAX_DIMS != 6) @compileError("KVP_MAX_DIMS changed");
}

// ---------------------------------------------------------------------------------------------
// Tests: full coverage (coverage.zig, api_test.zig) and the shared scenarios below.

test {
    _ = @import("coverage.zig");
    _ = @import("api_test.zig");
    _ = @import("shard_test.zig");
    _ = @import("store_test.zig");
}

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

const TestBatch = struct { md: Metadata, key: [4 * H * D]f32, value: [4 * H * D]f32 };

fn writeBatch(cache: *Cache, cfg: *const Config, batch: *TestBatch) !void {
    const p1 = [_]i32{1};
    const p2 = [_]i32{2};
    const reqs = [_]BatchRequest{
        .{ .num_computed = 0, .num_scheduled = 3, .page_ids = &p1 },
        .{ .num_computed = 5, .num_scheduled = 1, .page_ids = &p2 },
    };
    var order: [2]i32 = undefined;
    batch.md = try Metadata.build(std.testing.allocator, cfg, &reqs, .{}, &order);
    try std.testing.expectEqualSlices(i32, &.{ 1, 0 }, &order);
    for (0..4) |t| for (0..H) |h| for (0..D) |d| {
        batch.key[(t * H + h) * D + d] = token(t, h, d);
        batch.value[(t * H + h) * D + d] = -token(t, h, d);
    };
    try cache.concatenate(1, f32, &batch.key, &batch.value, .{ 4, H, D }, &batch.md);
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
    var batch: TestBatch = undefined;
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

test "tensor descriptors: the same bytes as the slice forms; device memory on a CPU cache is refused" {
    const cfg = try testConfig();
    var a = try Cache.init(&cfg);
    defer a.deinit();
    var b = try Cache.init(&cfg);
    defer b.deinit();
    var batch: TestBatch = undefined;
    try writeBatch(&a, &cfg, &batch);
    defer batch.md.deinit();
    const k = hostTensor(f32, &batch.key, .{ 4, H, D });
    const v = hostTensor(f32, &batch.value, .{ 4, H, D });
    try b.concatenateTensors(1, k, v, &batch.md, null);
    const n = try a.layerBytes();
    const la = try std.testing.allocator.alloc(u8, n);
    defer std.testing.allocator.free(la);
    const lb = try std.testing.allocator.alloc(u8, n);
    defer std.testing.allocator.free(lb);
    try a.readLayer(1, la);
    try b.readLayer(1, lb);
    try std.testing.expectEqualSlices(u8, la, lb);
    var dk = k;
    dk.device_type = c.KVP_DEVICE_CUDA;
    try std.testing.expectError(error.InvalidArgument, b.concatenateTensors(1, dk, v, &batch.md, null));
    try std.testing.expect(std.mem.indexOf(u8, lastErrorMessage(), "device") != null);
    try b.readLayer(1, lb);
    try std.testing.expectEqualSlices(u8, la, lb);
}

test "error path: code, message, nothing changed" {
    const cfg = try testConfig();
    var cache = try Cache.init(&cfg);
    defer cache.deinit();
    var batch: TestBatch = undefined;
    try writeBatch(&cache, &cfg, &batch);
    defer batch.md.deinit();
    const keys = try cache.view(1, .keys);
    const before = keys.getF32(&.{ 1, 0, 0, 5 });
    try std.testing.expectError(error.InvalidArgument, cache.concatenate(2, f32, &batch.key, &batch.value, .{ 4, H, D }, &batch.md));
    try std.testing.expect(std.mem.indexOf(u8, lastErrorMessage(), "layer 2") != null);
    try std.testing.expectEqual(before, keys.getF32(&.{ 1, 0, 0, 5 }));
    try std.testing.expectError(error.InvalidArgument, Config.create(.{ .num_hidden_layers = 0, .num_kv_heads = 1, .max_model_length = 8, .head_dim = 64, .budget_bytes = 1 << 20 }));
    try std.testing.expect(lastErrorMessage().len > 0);
    try std.testing.expectEqual(error.Unknown, statusError(77));
}

test "layers copy through the host; a CUDA cache needs a device" {
    const cfg = try testConfig();
    var a = try Cache.init(&cfg);
    defer a.deinit();
    var batch: TestBatch = undefined;
    try writeBatch(&a, &cfg, &batch);
    defer batch.md.deinit();
    const n = try a.layerBytes();
    const bytes = try std.testing.allocator.alloc(u8, n);
    defer std.testing.allocator.free(bytes);
    const back = try std.testing.allocator.alloc(u8, n);
    defer std.testing.allocator.free(back);
    try a.readLayer(1, bytes);
    try std.testing.expect(std.mem.indexOfNone(u8, bytes, &.{0}) != null);
    var b = try Cache.initOn(&cfg, .cpu);
    defer b.deinit();
    try b.writeLayer(0, bytes);
    try b.readLayer(0, back);
    try std.testing.expectEqualSlices(u8, bytes, back);
    // A wrong size or layer is refused and changes nothing.
    try std.testing.expectError(error.InvalidArgument, b.writeLayer(0, bytes[1..]));
    try std.testing.expectError(error.InvalidArgument, b.writeLayer(2, bytes));
    try std.testing.expectError(error.BufferTooSmall, b.readLayer(0, back[1..]));
    try b.readLayer(0, back);
    try std.testing.expectEqualSlices(u8, bytes, back);
    const devices = try deviceCount();
    try std.testing.expectError(error.NoDevice, Cache.initOn(&cfg, .{ .cuda = devices }));
}

test "a destroyed handle is rejected, not freed twice" {
    const cfg = try testConfig();
    var cache = try Cache.init(&cfg);
    const raw = cache.handle;
    cache.deinit();
    try std.testing.expectEqual(@as(c.kvp_status, c.KVP_ERR_INVALID_HANDLE), c.kvp_cache_destroy(raw));
}

// The pool scenario: a 40-token prompt written through the pool's batch request, a second prompt
// sharing its first 32 tokens served from the prefix cache, a fork with copy-on-write, error
// paths that change nothing, and everything freed.

/// 8 pages of 64 KiB (2 layers x 16 tokens x 2*2 heads x 128 x f32): 7 usable, page 0 is null.
fn poolConfig() !Config {
    return Config.create(.{ .num_hidden_layers = 2, .num_kv_heads = H, .max_model_length = 64, .head_dim = D, .page_size = S, .dtype = .f32, .budget_bytes = 8 << 16 });
}

fn poolKey(seq: usize, pos: usize, h: usize, d: usize) f32 {
    return @floatFromInt(seq * 100000 + pos * 512 + h * 128 + d);
}

/// Writes the pending tokens of `seq` into every layer (key = poolKey(tag, pos, ..), value = its
/// negation) through metadata built from the pool's batch request, then declares them computed.
fn prefill(pool: *Pool, cache: *Cache, cfg: *const Config, seq: SeqId, tag: usize) !void {
    var pages: [4]i32 = undefined;
    const req = try pool.batchRequest(seq, &pages);
    var order: [1]i32 = undefined;
    var md = try Metadata.build(std.testing.allocator, cfg, &.{req}, .{}, &order);
    defer md.deinit();
    const n: usize = @intCast(req.num_scheduled);
    const start: usize = @intCast(req.num_computed);
    var key: [64 * H * D]f32 = undefined;
    var value: [64 * H * D]f32 = undefined;
    for (0..n) |t| for (0..H) |h| for (0..D) |d| {
        key[(t * H + h) * D + d] = poolKey(tag, start + t, h, d);
        value[(t * H + h) * D + d] = -poolKey(tag, start + t, h, d);
    };
    for (0..2) |layer| try cache.concatenate(@intCast(layer), f32, key[0 .. n * H * D], value[0 .. n * H * D], .{ @intCast(n), H, D }, &md);
    try pool.setComputed(seq, start + n);
}

/// Expects positions [from, to) of a page table to hold the K/V written for `tag` in both layers.
fn expectTokens(cache: *const Cache, table: []const i32, from: usize, to: usize, tag: usize) !void {
    for (0..2) |layer| {
        const keys = try cache.view(@intCast(layer), .keys);
        const values = try cache.view(@intCast(layer), .values);
        for (from..to) |pos| for (0..H) |h| for (0..D) |d| {
            const idx = [_]i64{ table[pos / S], @intCast(pos % S), @intCast(h), @intCast(d) };
            try std.testing.expectEqual(@as(?f32, poolKey(tag, pos, h, d)), keys.getF32(&idx));
            try std.testing.expectEqual(@as(?f32, -poolKey(tag, pos, h, d)), values.getF32(&idx));
        };
    }
}

test "pool: data-parallel shards (placement, forced shard, per-shard stats, errors)" {
    const cfg = try Config.create(.{ .num_hidden_layers = 2, .num_kv_heads = H, .max_model_length = 64, .head_dim = D, .page_size = S, .dtype = .f32, .budget_bytes = 8 << 16, .data_parallel_size = 2 });
    var cache = try Cache.init(&cfg);
    defer cache.deinit();
    var pool = try Pool.init(&cache, .{});
    defer pool.deinit();
    const t = std.testing;
    const half: i32 = @intCast(@divExact(cfg.numPages(), 2));
    const s0 = try pool.shardStats(0);
    const s1 = try pool.shardStats(1);
    try t.expectEqual(@as(u32, 2), s0.num_shards);
    try t.expectEqual(@as(i32, 1), s0.first_page);
    try t.expectEqual(half, s0.end_page);
    try t.expectEqual(half, s1.first_page);
    try t.expectEqual(2 * half, s1.end_page);
    const prompt = [_]i32{ 1, 2, 3, 4, 5 };
    const a = try pool.addSequence(&prompt, 0, false); // shard 1 has one more free page
    try t.expectEqual(@as(u32, 1), try pool.sequenceShard(a.seq));
    const b = try pool.addSequenceInShard(&prompt, 0, false, 0);
    try t.expectEqual(@as(u32, 0), try pool.sequenceShard(b.seq));
    var buf: [4]i32 = undefined;
    const table = try pool.pageTable(b.seq, &buf);
    try t.expect(table.len == 1 and table[0] >= 1 and table[0] < half);
    const before = try pool.stats();
    try t.expectError(error.InvalidArgument, pool.addSequenceInShard(&prompt, 0, false, 2));
    try t.expect(std.mem.indexOf(u8, lastErrorMessage(), "shard 2 is out of range") != null);
    try t.expectError(error.InvalidArgument, pool.shardStats(2));
    try t.expectEqual(before, try pool.stats());
    try pool.checkInvariants();
}

test "pool: prefix reuse, fork with copy-on-write, errors that change nothing, free" {
    const cfg = try poolConfig();
    var cache = try Cache.init(&cfg);
    defer cache.deinit();
    var pool = try Pool.init(&cache, .{});
    defer pool.deinit();
    const t = std.testing;
    var st = try pool.stats();
    try t.expectEqual(@as(i64, 8), cfg.numPages());
    try t.expectEqual(@as(i64, 7), st.total_pages);
    try t.expectEqual(@as(i64, S), st.page_size);
    try t.expectEqual(st.total_pages, st.free_pages);
    try t.expectEqual(@as(i64, 4), st.max_pages_per_sequence);

    // Sequence a: a 40-token prompt (3 pages), written through its batch request.
    var prompt_a: [40]i32 = undefined;
    for (&prompt_a, 0..) |*x, i| x.* = @intCast(1000 + i);
    const a = try pool.addSequence(&prompt_a, 0, false);
    try t.expectEqual(@as(usize, 0), a.reused_tokens);
    try t.expectEqual(SequenceLength{ .length = 40, .computed = 0 }, try pool.length(a.seq));
    var pages: [4]i32 = undefined;
    const req = try pool.batchRequest(a.seq, &pages);
    try t.expectEqual(@as(i64, 0), req.num_computed);
    try t.expectEqual(@as(i64, 40), req.num_scheduled);
    try t.expectEqual(@as(usize, 3), req.page_ids.len);
    try prefill(&pool, &cache, &cfg, a.seq, 1);
    try t.expectEqual(SequenceLength{ .length = 40, .computed = 40 }, try pool.length(a.seq));
    var table_a_buf: [4]i32 = undefined;
    const table_a = try pool.pageTable(a.seq, &table_a_buf);
    try t.expectEqual(@as(usize, 3), table_a.len);
    try t.expectEqual(@as(i32, 0), table_a_buf[3]); // padded with the null page
    try t.expectEqualSlices(i32, pages[0..3], table_a);
    try expectTokens(&cache, table_a, 0, 40, 1);
    var slots: [4]i32 = undefined;
    try pool.slots(a.seq, 30, &slots);
    try t.expectEqualSlices(i32, &.{ table_a[1] * S + 14, table_a[1] * S + 15, table_a[2] * S, table_a[2] * S + 1 }, &slots);
    var short: [2]i32 = undefined;
    try t.expectError(error.BufferTooSmall, pool.pageTable(a.seq, &short));

    // Sequence b shares the first 32 tokens: its first 2 pages come from the prefix cache.
    var prompt_b = prompt_a;
    for (prompt_b[32..]) |*x| x.* += 5000;
    const b = try pool.addSequence(&prompt_b, 0, false);
    try t.expectEqual(@as(usize, 32), b.reused_tokens);
    try t.expectEqual(SequenceLength{ .length = 40, .computed = 32 }, try pool.length(b.seq));
    try prefill(&pool, &cache, &cfg, b.seq, 2);
    var table_b_buf: [4]i32 = undefined;
    const table_b = try pool.pageTable(b.seq, &table_b_buf);
    try t.expectEqualSlices(i32, table_a[0..2], table_b[0..2]);
    try t.expect(table_b[2] != table_a[2]);
    try expectTokens(&cache, table_b, 0, 32, 1); // a's bytes, read through b's page table
    try expectTokens(&cache, table_b, 32, 40, 2);
    try expectTokens(&cache, table_a, 32, 40, 1); // a's tail untouched
    try t.expectEqual(PageState{ .refcount = 2, .flags = page_flag_indexed }, try pool.pageState(table_a[0]));
    try t.expectEqual(PageState{ .refcount = 1, .flags = 0 }, try pool.pageState(table_a[2]));
    try t.expectEqual(page_flag_null, (try pool.pageState(0)).flags);

    // Fork b into two children: references, no copies.
    var kids: [2]SeqId = undefined;
    try pool.fork(b.seq, &kids);
    try t.expect(kids[0] != kids[1] and kids[0] != b.seq);
    try t.expectEqual(SequenceLength{ .length = 40, .computed = 40 }, try pool.length(kids[1]));
    try t.expectEqual(@as(u32, 4), (try pool.pageState(table_b[0])).refcount);
    try t.expectEqual(@as(u32, 3), (try pool.pageState(table_b[2])).refcount);
    st = try pool.stats();
    try t.expectEqual(@as(i64, 4), st.num_sequences);
    try t.expectEqual(@as(i64, 4), st.used_pages);
    try t.expectEqual(@as(i64, 2), st.indexed_pages);
    try t.expectEqual(@as(i64, 80), st.prompt_tokens);
    try t.expectEqual(@as(i64, 32), st.reused_tokens);
    try t.expectEqual(@as(i64, 0), st.cow_copies);

    // An append into the shared partial tail copies it first.
    try pool.append(kids[0], &.{7});
    var table_k_buf: [4]i32 = undefined;
    const table_k = try pool.pageTable(kids[0], &table_k_buf);
    try t.expect(table_k[2] != table_b[2]);
    try t.expectEqualSlices(i32, table_b[0..2], table_k[0..2]);
    try expectTokens(&cache, table_k, 32, 40, 2);
    try t.expectEqual(@as(u32, 2), (try pool.pageState(table_b[2])).refcount);
    try t.expectEqual(SequenceLength{ .length = 41, .computed = 40 }, try pool.length(kids[0]));
    st = try pool.stats();
    try t.expectEqual(@as(i64, 1), st.cow_copies);
    try t.expectEqual(@as(i64, 5), st.used_pages);
    try pool.truncate(kids[1], 20);
    try t.expectEqual(@as(u32, 1), (try pool.pageState(table_b[2])).refcount);
    try t.expectEqual(@as(u32, 4), (try pool.pageState(table_b[1])).refcount); // 20 tokens keep 2 pages
    try t.expectEqual(SequenceLength{ .length = 20, .computed = 20 }, try pool.length(kids[1]));
    try pool.checkInvariants();

    // Errors: the code, a message, and the pool unchanged.
    const before = try pool.stats();
    var long: [65]i32 = undefined;
    for (&long, 0..) |*x, i| x.* = @intCast(i);
    try t.expectError(error.InvalidArgument, pool.addSequence(&long, 0, false));
    try t.expect(std.mem.indexOf(u8, lastErrorMessage(), "exceeds max_model_length 64") != null);
    try t.expectEqual(before, try pool.stats());
    try t.expectError(error.OutOfPages, pool.addSequence(long[1..], 0, false)); // 4 pages, 2 free
    try t.expect(std.mem.indexOf(u8, lastErrorMessage(), "needs 4 new page(s)") != null);
    try t.expectEqual(before, try pool.stats());
    try t.expectError(error.InvalidArgument, pool.setComputed(a.seq, 41));
    try t.expectError(error.InvalidArgument, pool.pageState(@intCast(cfg.numPages())));

    // Page copies: a free page receives a's first page; a destination that is also a source fails.
    var free_page: i32 = 0;
    var p: i32 = 1;
    while (p < @as(i32, @intCast(cfg.numPages()))) : (p += 1) {
        if ((try pool.pageState(p)).flags & page_flag_free != 0) free_page = p;
    }
    try t.expect(free_page != 0);
    try cache.copyPages(&.{table_a[0]}, &.{free_page});
    const copied = [_]i32{ free_page, 0, 0 };
    try expectTokens(&cache, &copied, 0, 16, 1);
    try t.expectError(error.InvalidArgument, cache.copyPages(&.{free_page}, &.{free_page}));
    try t.expect(std.mem.indexOf(u8, lastErrorMessage(), "both a source and a destination") != null);

    // Free everything: the indexed pages stay cached (evictable), the rest is free.
    for ([_]SeqId{ a.seq, b.seq, kids[0], kids[1] }) |s| try pool.freeSequence(s);
    try pool.checkInvariants();
    st = try pool.stats();
    try t.expectEqual(st.total_pages, st.free_pages + st.evictable_pages + st.used_pages);
    try t.expectEqual(@as(i64, 0), st.used_pages);
    try t.expectEqual(@as(i64, 0), st.num_sequences);
    try t.expectEqual(@as(i64, 2), st.evictable_pages);
    const freed = st;
    try t.expectError(error.NotFound, pool.freeSequence(a.seq));
    try t.expect(std.mem.indexOf(u8, lastErrorMessage(), "is stale") != null);
    try t.expectError(error.NotFound, pool.append(b.seq, &.{1}));
    try t.expectError(error.NotFound, pool.length(kids[0]));
    try t.expectEqual(freed, try pool.stats());
    try pool.clearPrefixCache();
    st = try pool.stats();
    try t.expectEqual(st.total_pages, st.free_pages);
    try pool.checkInvariants();
}

test "pool options: sequence limit and no prefix cache" {
    const cfg = try poolConfig();
    var cache = try Cache.init(&cfg);
    defer cache.deinit();
    var pool = try Pool.init(&cache, .{ .max_sequences = 2, .no_prefix_cache = true });
    defer pool.deinit();
    const prompt: [33]i32 = @splat(3);
    const a = try pool.addSequence(&prompt, 9, true);
    try pool.setComputed(a.seq, prompt.len);
    try pool.freeSequence(a.seq);
    var st = try pool.stats();
    try std.testing.expectEqual(@as(u32, 2), st.max_sequences);
    try std.testing.expectEqual(@as(i64, 0), st.indexed_pages);
    try std.testing.expectEqual(st.total_pages, st.free_pages);
    const b = try pool.addSequence(&prompt, 9, true);
    try std.testing.expectEqual(@as(usize, 0), b.reused_tokens);
    try std.testing.expect(b.seq != a.seq);
    const e = try pool.addSequence(&.{}, 0, false);
    st = try pool.stats();
    try std.testing.expectError(error.OutOfPages, pool.addSequence(&.{1}, 0, false));
    try std.testing.expect(std.mem.indexOf(u8, lastErrorMessage(), "sequence slots are in use") != null);
    try std.testing.expectEqual(st, try pool.stats());
    try std.testing.expectEqual(SequenceLength{ .length = 0, .computed = 0 }, try pool.length(e.seq));
    try pool.checkInvariants();
}

// The pool's storage tiers: A's two cached pages are evicted into a memory store when the pool
// fills up, and the same prompt again gets them back from the tier with the bytes computed first.
test "pool: a memory tier restores evicted prefix pages" {
    const cfg = try poolConfig();
    var store = try Store.memory(1 << 24);
    defer store.deinit();
    var cache = try Cache.init(&cfg);
    defer cache.deinit();
    var pool = try Pool.init(&cache, .{});
    defer pool.deinit();
    try pool.addStore(&store);
    var prompt_a: [40]i32 = undefined; // 2 full pages and a partial one
    for (&prompt_a, 0..) |*x, i| x.* = @intCast(1000 + i);
    var prompt_b: [64]i32 = undefined;
    for (&prompt_b, 0..) |*x, i| x.* = @intCast(5000 + i);
    var prompt_c: [48]i32 = undefined;
    for (&prompt_c, 0..) |*x, i| x.* = @intCast(7000 + i);
    const a = try pool.addSequence(&prompt_a, 0, false);
    try prefill(&pool, &cache, &cfg, a.seq, 1);
    try pool.freeSequence(a.seq); // its 2 full pages stay cached (evictable)
    const b = try pool.addSequence(&prompt_b, 0, false); // 4 pages
    try prefill(&pool, &cache, &cfg, b.seq, 2);
    const c3 = try pool.addSequence(&prompt_c, 0, false); // 3 pages: 1 free, A's 2 evicted
    try prefill(&pool, &cache, &cfg, c3.seq, 3);
    var st = try pool.tierStats(0);
    try std.testing.expectEqual(@as(u32, 1), st.num_tiers);
    try std.testing.expectEqual(@as(i64, 2), st.blocks_written);
    try std.testing.expectEqual(@as(i64, 0), st.errors);
    try std.testing.expectEqual(@as(i64, 2), (try store.stats()).blocks);
    try pool.freeSequence(c3.seq);

    const again = try pool.addSequence(&prompt_a, 0, false); // from the tier
    try std.testing.expectEqual(@as(usize, 32), again.reused_tokens);
    st = try pool.tierStats(0);
    try std.testing.expectEqual(@as(i64, 2), st.hits);
    try std.testing.expectEqual(@as(i64, 32), st.restored_tokens);
    try std.testing.expectEqual(@as(i64, 0), st.rejected);
    try std.testing.expectEqual(st.lookups, st.hits + st.misses);
    try std.testing.expect(st.bytes_read > 0);

    // every evicted block, listed and inspected (since 1.5)
    const keys = try store.list(std.testing.allocator);
    defer std.testing.allocator.free(keys);
    try std.testing.expect(keys.len >= 2);
    try std.testing.expectEqual((try store.stats()).blocks, @as(i64, @intCast(keys.len)));
    var chained = false;
    for (keys) |k| {
        const block = try store.get(std.testing.allocator, &k);
        defer std.testing.allocator.free(block);
        const info = try Store.inspectBlock(block);
        try std.testing.expectEqualSlices(u8, &k, &info.key);
        try std.testing.expectEqual(@as(u32, 1), info.checksum_ok);
        try std.testing.expectEqual(@as(u32, 16), info.page_size);
        try std.testing.expectEqual(@as(u64, block.len), info.block_bytes);
        for (keys) |other| chained = chained or std.mem.eql(u8, &info.parent, &other);
        block[block.len - 20] ^= 1;
        try std.testing.expectEqual(@as(u32, 0), (try Store.inspectBlock(block)).checksum_ok);
        try std.testing.expectError(error.FormatTruncated, Store.inspectBlock(block[0 .. block.len - 1]));
    }
    try std.testing.expect(chained); // A's second page's parent is its first
    try std.testing.expectError(error.FormatMagic, Store.inspectBlock("not a block"));
    var pages: [4]i32 = undefined;
    try expectTokens(&cache, try pool.pageTable(again.seq, &pages), 0, 32, 1);
    try pool.checkInvariants();

    try std.testing.expectError(error.InvalidArgument, pool.tierStats(1));
    try std.testing.expect(std.mem.indexOf(u8, lastErrorMessage(), "tier") != null);
    try std.testing.expectError(error.InvalidArgument, pool.addStore(&store)); // already a tier
    try std.testing.expectEqual(@as(u32, 1), (try pool.tierStats(0)).num_tiers);
}

// A directory tier is written asynchronously: flushTiers(false) leaves the cached pages
// unwritten, flushTiers(true) persists them once, and a fresh pool over the directory (as after a
// restart) restores the prefix with the bytes computed first.
test "pool: flushTiers persists the prefix cache to a directory tier" {
    var tmp = std.testing.tmpDir(.{});
    defer tmp.cleanup();
    var path_buf: [256]u8 = undefined;
    const path = try std.fmt.bufPrint(&path_buf, ".zig-cache/tmp/{s}/blocks", .{tmp.sub_path});
    const cfg = try poolConfig();
    var store = try Store.directory(path, 1 << 24, .{ .no_sync = true });
    defer store.deinit();
    var prompt_a: [40]i32 = undefined; // 2 full pages and a partial one
    for (&prompt_a, 0..) |*x, i| x.* = @intCast(1000 + i);
    {
        var cache = try Cache.init(&cfg);
        defer cache.deinit();
        var pool = try Pool.init(&cache, .{ .write_queue_bytes = 1 << 20 });
        defer pool.deinit();
        try pool.addStore(&store);
        const a = try pool.addSequence(&prompt_a, 0, false);
        try prefill(&pool, &cache, &cfg, a.seq, 1);
        try pool.flushTiers(false);
        try std.testing.expectEqual(@as(i64, 0), (try pool.tierStats(0)).blocks_written);
        try pool.flushTiers(true);
        try pool.flushTiers(true); // tier 0 holds them: nothing rewritten
        const st = try pool.tierStats(0);
        try std.testing.expectEqual(@as(i64, 2), st.blocks_written);
        try std.testing.expectEqual(@as(i64, 0), st.errors);
        try std.testing.expectEqual(@as(i64, 0), st.dropped);
        try std.testing.expectEqual(@as(i64, 2), (try store.stats()).puts);
    }
    var cache = try Cache.init(&cfg);
    defer cache.deinit();
    var pool = try Pool.init(&cache, .{});
    defer pool.deinit();
    try pool.addStore(&store);
    const again = try pool.addSequence(&prompt_a, 0, false);
    try std.testing.expectEqual(@as(usize, 32), again.reused_tokens);
    var pages: [4]i32 = undefined;
    try expectTokens(&cache, try pool.pageTable(again.seq, &pages), 0, 32, 1);
}

test "pool: a saved sequence restores into another pool; a damaged blob changes nothing" {
    const cfg = try poolConfig();
    var cache_a = try Cache.init(&cfg);
    defer cache_a.deinit();
    var pool_a = try Pool.init(&cache_a, .{});
    defer pool_a.deinit();
    var prompt: [40]i32 = undefined; // 2 full pages and 8 tokens
    for (&prompt, 0..) |*x, i| x.* = @intCast(1000 + i);
    const a = try pool_a.addSequence(&prompt, 3, false);
    try prefill(&pool_a, &cache_a, &cfg, a.seq, 1);
    const blob = try pool_a.saveSequenceAlloc(std.testing.allocator, a.seq);
    defer std.testing.allocator.free(blob);
    var tmp = std.testing.tmpDir(.{});
    defer tmp.cleanup();
    var path_buf: [256]u8 = undefined;
    const path = try std.fmt.bufPrint(&path_buf, ".zig-cache/tmp/{s}/seq.kvpq", .{tmp.sub_path});
    try pool_a.saveSequenceFile(a.seq, path, false);

    var cache_b = try Cache.init(&cfg);
    defer cache_b.deinit();
    var pool_b = try Pool.init(&cache_b, .{});
    defer pool_b.deinit();
    const filler: [20]i32 = @splat(9);
    _ = try pool_b.addSequence(&filler, 0, false); // pool B hands out other page ids
    const b = try pool_b.restoreSequence(blob, null);
    const l = try pool_b.length(b);
    try std.testing.expectEqual(@as(usize, 40), l.length);
    try std.testing.expectEqual(@as(usize, 40), l.computed);
    var pages: [4]i32 = undefined;
    const table = try pool_b.pageTable(b, &pages);
    try expectTokens(&cache_b, table, 0, 40, 1);
    const c2 = try pool_b.restoreSequenceFile(path, 0); // its full pages are shared
    var pages_c: [4]i32 = undefined;
    const table_c = try pool_b.pageTable(c2, &pages_c);
    try std.testing.expectEqualSlices(i32, table[0..2], table_c[0..2]);
    try std.testing.expect(table[2] != table_c[2]);

    const bad = try std.testing.allocator.dupe(u8, blob);
    defer std.testing.allocator.free(bad);
    bad[bad.len - 1] ^= 1;
    const before = try pool_b.stats();
    try std.testing.expectError(error.FormatChecksum, pool_b.restoreSequence(bad, null));
    try std.testing.expect(std.mem.indexOf(u8, lastErrorMessage(), "block 2 of 3") != null);
    try std.testing.expectError(error.InvalidArgument, pool_b.restoreSequence(blob, 1));
    try std.testing.expectEqual(before, try pool_b.stats());
    try pool_b.checkInvariants();
}

// Attention: the worked example E1 of ATTENTION.md §13 (v3, GQA 2:1 with Hkv 1 and Hq 2, D 4, page
// size 4, an f32 cache of exactly 8 pages, σ 0.5): a decode row of context 6 (pages 3, 7) and a
// fresh prefill of 3 tokens (page 5).

const a_hq = 2;
const a_hkv = 1;
const a_d = 4;
const a_layer: u32 = 1;
const a_n = 4 * a_hq * a_d;
const e1_shape = [4]i64{ 4, a_hq, a_hkv, a_d };
const e1_ctx_k = [_]f32{ 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0 };
const e1_ctx_v = [_]f32{ 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 3, 0, 0, 0, 0, 4, 1, 1, 1, 1 };
const e1_q = [_]f32{ 2, 0, 0, 0, 0, 0, 2, 2, 1, 1, 0, 0, 0, 0, 1, 1, 1, -1, 1, -1, 2, 0, 0, 0, 0, 2, 0, 2, 1, 1, 1, 1 };
const e1_k = [_]f32{ 0.5, 0.5, 0.5, 0.5, 1, 0, 1, 0, 0, 1, 0, 1, 1, 1, -1, -1 };
const e1_v = [_]f32{ 2, -2, 2, -2, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0 };
const e1_out = [a_n]f32{
    0.866015, 0.140882, 0.893948, 0.339191, 0.666667, -0.218431, 1.308078, 0.577020,
    1,        0,        0,        0,        1,        0,         0,        0,
    0.880797, 0.119203, 0,        0,        0.731059, 0.268941,  0,        0,
    0.106507, 0.786986, 0.106507, 0,        0.422319, 0.422319,  0.155362, 0,
};
/// E3: E1 with logits_soft_cap 2 (the correct values).
const e3_out = [a_n]f32{
    0.858565, 0.129843, 0.908200, 0.336628, 0.666667, -0.193173, 1.287872, 0.571968,
    1,        0,        0,        0,        1,        0,         0,        0,
    0.863947, 0.136053, 0,        0,        0.715904, 0.284096,  0,        0,
    0.151818, 0.696364, 0.151818, 0,        0.417217, 0.417217,  0.165566, 0,
};
const e1_scaled: AttentionOptions = .{ .softmax_scale = 0.5 };

/// A two-layer f32 config with exactly 8 pages: the budget is 8 pages of the true page size.
fn attentionConfig() !Config {
    var o: ConfigOptions = .{ .num_hidden_layers = 2, .num_kv_heads = a_hkv, .max_model_length = 16, .head_dim = a_d, .page_size = 4, .dtype = .f32, .budget_bytes = 1 << 20 };
    const probe = try Config.create(o);
    o.budget_bytes = 2 * 8 * (try probe.layout()).page_bytes_per_layer;
    const cfg = try Config.create(o);
    try std.testing.expectEqual(@as(i64, 8), cfg.numPages());
    return cfg;
}

/// A cache holding request 0's five cached tokens (page 3 rows 0-3, page 7 row 0); with
/// `step_md`, the step's new tokens written by `concatenate` too.
fn attentionCache(cfg: *const Config, step_md: ?*const Metadata) !Cache {
    var cache = try Cache.init(cfg);
    errdefer cache.deinit();
    const pages = [_]i32{ 3, 7 };
    var order: [1]i32 = undefined;
    var md = try Metadata.build(std.testing.allocator, cfg, &.{.{ .num_computed = 0, .num_scheduled = 5, .page_ids = &pages }}, .{}, &order);
    defer md.deinit();
    try cache.concatenate(a_layer, f32, &e1_ctx_k, &e1_ctx_v, .{ 5, a_hkv, a_d }, &md);
    if (step_md) |s| try cache.concatenate(a_layer, f32, &e1_k, &e1_v, .{ 4, a_hkv, a_d }, s);
    return cache;
}

/// The step: the decode row first, then the fresh prefill.
fn e1Step(cfg: *const Config) !Metadata {
    const row0 = [_]i32{ 3, 7 };
    const row1 = [_]i32{5};
    var order: [2]i32 = undefined;
    const md = try Metadata.build(std.testing.allocator, cfg, &.{
        .{ .num_computed = 5, .num_scheduled = 1, .page_ids = &row0 },
        .{ .num_computed = 0, .num_scheduled = 3, .page_ids = &row1 },
    }, .{}, &order);
    try std.testing.expectEqualSlices(i32, &.{ 0, 1 }, &order);
    return md;
}

fn expectClose(want: []const f32, got: []const f32) !void {
    try std.testing.expectEqual(want.len, got.len);
    for (want, got, 0..) |w, g, i| {
        if (!(@abs(g - w) <= 2e-5 + 2e-5 * @abs(w))) {
            std.debug.print("element {d} (row {d}, head {d}, lane {d}) is {d}, want {d}\n", .{ i, i / (a_hq * a_d), i / a_d % a_hq, i % a_d, g, w });
            return error.TestExpectedApproxEqAbs;
        }
    }
}

fn expectBits(want: []const f32, got: []const f32) !void {
    try std.testing.expectEqual(want.len, got.len);
    for (want, got) |w, g| try std.testing.expectEqual(@as(u32, @bitCast(w)), @as(u32, @bitCast(g)));
}

/// Expects the layers of `a` and `b` to hold the same bytes.
fn expectSameLayer(a: *const Cache, b: *const Cache, layer: u32) !void {
    const n = try a.layerBytes();
    const x = try std.testing.allocator.alloc(u8, n);
    defer std.testing.allocator.free(x);
    const y = try std.testing.allocator.alloc(u8, n);
    defer std.testing.allocator.free(y);
    try a.readLayer(layer, x);
    try b.readLayer(layer, y);
    try std.testing.expectEqualSlices(u8, x, y);
}

test "attention: E1 output, and the fused write stores what concatenate stores" {
    const cfg = try attentionConfig();
    var md = try e1Step(&cfg);
    defer md.deinit();
    var cache = try attentionCache(&cfg, null);
    defer cache.deinit();
    var out: [a_n]f32 = @splat(std.math.nan(f32));
    try cache.attention(a_layer, &e1_q, &e1_k, &e1_v, e1_shape, &md, e1_scaled, &out);
    try expectClose(&e1_out, &out);
    // The new tokens: page 7 row 1, page 5 rows 0-2.
    const keys = try cache.view(a_layer, .keys);
    const values = try cache.view(a_layer, .values);
    const slots = [_][2]i64{ .{ 7, 1 }, .{ 5, 0 }, .{ 5, 1 }, .{ 5, 2 } };
    for (slots, 0..) |slot, r| for (0..a_d) |d| {
        const idx = [_]i64{ slot[0], slot[1], 0, @intCast(d) };
        try std.testing.expectEqual(@as(?f32, e1_k[r * a_d + d]), keys.getF32(&idx));
        try std.testing.expectEqual(@as(?f32, e1_v[r * a_d + d]), values.getF32(&idx));
    };
    try std.testing.expectEqual(@as(?f32, 1), keys.getF32(&.{ 7, 0, 0, 1 })); // cached position 4 kept
    var ref = try attentionCache(&cfg, &md);
    defer ref.deinit();
    try expectSameLayer(&cache, &ref, a_layer);
    try expectSameLayer(&cache, &ref, 0);
}

test "attention: a read-only call gives the fused call's output" {
    const cfg = try attentionConfig();
    var md = try e1Step(&cfg);
    defer md.deinit();
    var fused = try attentionCache(&cfg, null);
    defer fused.deinit();
    var want: [a_n]f32 = undefined;
    try fused.attention(a_layer, &e1_q, &e1_k, &e1_v, e1_shape, &md, e1_scaled, &want);
    var cache = try attentionCache(&cfg, &md); // a fresh copy written by concatenate
    defer cache.deinit();
    var out: [a_n]f32 = @splat(7);
    try cache.attention(a_layer, &e1_q, null, null, e1_shape, &md, e1_scaled, &out);
    try expectBits(&want, &out);
    try expectClose(&e1_out, &out);
    try expectSameLayer(&cache, &fused, a_layer); // read only: the pages equal the fused write's
}

test "attention: padding rows are exact zeros and never written" {
    const cfg = try attentionConfig();
    var md = try e1Step(&cfg);
    defer md.deinit();
    var cache = try attentionCache(&cfg, null);
    defer cache.deinit();
    // T = 6: rows 4 and 5 belong to no request (queries 9, keys and values 7).
    var q: [6 * a_hq * a_d]f32 = @splat(9);
    var k: [6 * a_hkv * a_d]f32 = @splat(7);
    var v: [6 * a_hkv * a_d]f32 = @splat(7);
    @memcpy(q[0..a_n], &e1_q);
    @memcpy(k[0..e1_k.len], &e1_k);
    @memcpy(v[0..e1_v.len], &e1_v);
    var out: [6 * a_hq * a_d]f32 = @splat(std.math.nan(f32));
    try cache.attention(a_layer, &q, &k, &v, .{ 6, a_hq, a_hkv, a_d }, &md, e1_scaled, &out);
    try expectClose(&e1_out, out[0..a_n]);
    const zeros: [2 * a_hq * a_d]f32 = @splat(0);
    try expectBits(&zeros, out[a_n..]);
    var ref = try attentionCache(&cfg, &md);
    defer ref.deinit();
    try expectSameLayer(&cache, &ref, a_layer);
}

test "attention: options reach the library" {
    const cfg = try attentionConfig();
    var md = try e1Step(&cfg);
    defer md.deinit();
    var cache = try attentionCache(&cfg, &md);
    defer cache.deinit();
    var out: [a_n]f32 = undefined;
    try cache.attention(a_layer, &e1_q, null, null, e1_shape, &md, .{ .softmax_scale = 0.5, .logits_soft_cap = 2 }, &out);
    try expectClose(&e3_out, &out);
    // Sinks of 0.5: row 1 (one key, logit 0.5 for both heads) becomes V/2.
    try cache.attention(a_layer, &e1_q, null, null, e1_shape, &md, .{ .softmax_scale = 0.5, .sinks = &.{ 0.5, 0.5 } }, &out);
    try expectClose(&.{ 0.5, 0, 0, 0, 0.5, 0, 0, 0 }, out[a_hq * a_d .. 2 * a_hq * a_d]);
    // `.{}`: the v3 default scale 1.0.
    var one: [a_n]f32 = undefined;
    try cache.attention(a_layer, &e1_q, null, null, e1_shape, &md, .{}, &out);
    try cache.attention(a_layer, &e1_q, null, null, e1_shape, &md, .{ .softmax_scale = 1 }, &one);
    try expectBits(&one, &out);
    try std.testing.expect(@abs(out[0] - e1_out[0]) > 1e-3);
    const r = try (AttentionOptions{ .sliding_window = 3, .sinks = &.{ 1, 2 } }).record();
    try std.testing.expectEqual(@as(u32, @sizeOf(c.kvp_attention_options)), r.struct_size);
    try std.testing.expectEqual(@as(u32, c.KVP_ATTENTION_OPTIONS_VERSION), r.abi_version);
    try std.testing.expectEqual(@as(u32, 2), r.num_sinks);
    try std.testing.expectEqual(@as(f32, 0), r.softmax_scale);
}

test "attention: errors change neither the cache nor out" {
    const cfg = try attentionConfig();
    var md = try e1Step(&cfg);
    defer md.deinit();
    var cache = try attentionCache(&cfg, null);
    defer cache.deinit();
    var pristine = try attentionCache(&cfg, null);
    defer pristine.deinit();
    const t = std.testing;
    const sevens: [a_n]f32 = @splat(7);
    var out = sevens;
    try t.expectError(error.InvalidArgument, cache.attention(a_layer, &e1_q, &e1_k, &e1_v, e1_shape, &md, .{ .softmax_scale = 0.5, .sliding_window = -1 }, &out));
    try t.expect(std.mem.indexOf(u8, lastErrorMessage(), "sliding_window is -1") != null);
    try t.expectError(error.InvalidArgument, cache.attention(a_layer, &e1_q, &e1_k, &e1_v, e1_shape, &md, .{ .sinks = &.{ 0, 0, 0 } }, &out));
    try t.expect(std.mem.indexOf(u8, lastErrorMessage(), "num_sinks is 3") != null);
    try t.expectError(error.InvalidArgument, cache.attention(a_layer, &e1_q, &e1_k, null, e1_shape, &md, e1_scaled, &out));
    try t.expect(std.mem.indexOf(u8, lastErrorMessage(), "both") != null);
    try t.expectError(error.InvalidArgument, cache.attention(2, &e1_q, &e1_k, &e1_v, e1_shape, &md, e1_scaled, &out));
    try t.expect(std.mem.indexOf(u8, lastErrorMessage(), "layer 2") != null);
    try t.expectError(error.InvalidArgument, cache.attention(a_layer, &e1_q, &e1_q, &e1_q, .{ 4, a_hq, 2, a_d }, &md, e1_scaled, &out));
    try t.expect(std.mem.indexOf(u8, lastErrorMessage(), "2 heads") != null);
    // Slice lengths are checked before C sees anything.
    try t.expectError(error.InvalidArgument, cache.attention(a_layer, &e1_q, e1_k[0..12], &e1_v, e1_shape, &md, e1_scaled, &out));
    try t.expectError(error.InvalidArgument, cache.attention(a_layer, &e1_q, &e1_k, &e1_v, e1_shape, &md, e1_scaled, out[0..28]));
    // A shape whose element count wraps around, or a negative extent, is refused (not taken for
    // empty slices).
    try t.expectError(error.InvalidArgument, cache.attention(a_layer, &.{}, null, null, .{ 1 << 30, 1 << 27, 1, 128 }, &md, e1_scaled, out[0..0]));
    try t.expectError(error.InvalidArgument, cache.attention(a_layer, &.{}, null, null, .{ -1, a_hq, 1, a_d }, &md, e1_scaled, out[0..0]));
    try expectBits(&sevens, &out);
    try expectSameLayer(&cache, &pristine, a_layer);
}
