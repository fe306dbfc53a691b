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

/// Identifies a sequence of a `Pool` (`kvp_seq_id`): an opaque 32-bit value, a distinct type
/// so it cannot be mixed up with token ids or page ids. Freeing the sequence makes it stale:
/// later calls with it return `error.NotFound`.
pub const SeqId = enum(u32) {
    _,

    /// The raw value, for logging only (0 is never a valid id).
    pub fn value(self: SeqId) u32 {
        return @intFromEnum(self);
    }

    fn raw(self: SeqId) c.kvp_seq_id {
        return .{ .id = @intFromEnum(self) };
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

comptime {
    assertSameLayout(AttentionOptionsRecord, c.kvp_attention_options);
    if (c.KVP_ATTENTION_OPTIONS_VERSION != 1) @compileError("KVP_ATTENTION_OPTIONS_VERSION changed");
    if (c.KVP_VERSION_NUMBER < 10100) @compileError("these bindings need kvpages >= 1.1 headers (kvp_attention)");
    assertSameLayout(Tensor, c.kvp_tensor);
    assertSameLayout(BatchRequest, c.kvp_batch_request);
    assertSameLayout(ConfigRecord, c.kvp_config);
    assertSameLayout(PoolStats, c.kvp_pool_stats);
    if (@sizeOf(SeqId) != @sizeOf(c.kvp_seq_id) or @alignOf(SeqId) != @alignOf(c.kvp_seq_id) or
        @offsetOf(c.kvp_seq_id, "id") != 0 or @FieldType(c.kvp_seq_id, "id") != u32)
        @compileError("layout of SeqId differs from kvp_seq_id");
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

/// Where a cache's pages live.
pub const Device = union(enum) {
    cpu,
    /// CUDA device ordinal; needs a kvpages built with CUDA and a GPU.
    cuda: i32,
};

/// `kvp_device_count`: usable CUDA devices (0 without CUDA, a driver or a GPU).
pub fn deviceCount() Error!i32 {
    var n: i32 = 0;
    try check(c.kvp_device_count(&n));
    return n;
}

/// Owns a `kvp_cache` (a distinct opaque type per handle kind). Call `deinit` exactly once.
pub const Cache = struct {
    handle: *c.kvp_cache,

    pub fn init(cfg: *const Config) Error!Cache {
        return initOn(cfg, .cpu);
    }

    /// A cache on `device` (`error.NoDevice` without that CUDA device). Write a CUDA cache from
    /// device memory through the C API (`c.kvp_concatenate` with a stream); `readLayer` and
    /// `writeLayer` work for it as for a CPU cache.
    pub fn initOn(cfg: *const Config, device: Device) Error!Cache {
        var o: c.kvp_cache_options = undefined;
        try check(c.kvp_cache_options_init(&o, @sizeOf(c.kvp_cache_options)));
        switch (device) {
            .cpu => o.device_type = c.KVP_DEVICE_CPU,
            .cuda => |n| {
                o.device_type = c.KVP_DEVICE_CUDA;
                o.device_id = n;
            },
        }
        var out: ?*c.kvp_cache = null;
        try check(c.kvp_cache_create(&cfg.raw, &o, &out));
        return .{ .handle = out.? };
    }

    /// Bytes of one layer.
    pub fn layerBytes(self: *const Cache) Error!usize {
        var li = std.mem.zeroes(c.kvp_layout_info);
        li.struct_size = @sizeOf(c.kvp_layout_info);
        try check(c.kvp_cache_get_layout(self.handle, &li));
        return @intCast(li.layer_bytes);
    }

    /// `kvp_cache_read_layer`: copies one layer's bytes into `out` (at least `layerBytes()`).
    pub fn readLayer(self: *const Cache, layer: u32, out: []u8) Error!void {
        try check(c.kvp_cache_read_layer(self.handle, layer, out.ptr, out.len, null));
    }

    /// `kvp_cache_write_layer`: replaces one layer's bytes (`data.len` must be `layerBytes()`).
    pub fn writeLayer(self: *Cache, layer: u32, data: []const u8) Error!void {
        try check(c.kvp_cache_write_layer(self.handle, layer, data.ptr, data.len, null));
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

    /// Copies whole pages in every layer: page `dst[i]` receives page `src[i]`
    /// (`kvp_cache_copy_pages`; destinations distinct and none of them a source).
    pub fn copyPages(self: *Cache, src: []const i32, dst: []const i32) Error!void {
        if (src.len != dst.len) return error.InvalidArgument;
        try check(c.kvp_cache_copy_pages(self.handle, src.ptr, dst.ptr, src.len, null));
    }

    /// Writes `key`/`value` ([T, H, D] row-major f32) into one layer.
    pub fn concatenate(self: *Cache, layer: u32, key: []const f32, value: []const f32, shape: [3]i64, md: *const Metadata) Error!void {
        const n = try elements(shape);
        if (key.len != n or value.len != n) return error.InvalidArgument;
        var k = hostTensor(key, shape);
        var v = hostTensor(value, shape);
        try check(c.kvp_concatenate(self.handle, layer, @ptrCast(&k), @ptrCast(&v), md.handle, null));
    }

    /// `kvp_attention` on a CPU cache: writes `keys`/`values` into one layer exactly as
    /// `concatenate` with the same metadata would, then attends every query token to its
    /// request's keys and values, read in place from the pages, and stores the result in `out`.
    ///
    /// `shape` is `.{ T, Hq, Hkv, D }`: `queries` and `out` hold [T, Hq, D], `keys` and `values`
    /// [T, Hkv, D], row-major f32 with rows in the order `Metadata.build` returns; Hkv is the
    /// cache's KV head count and Hq a multiple of it (query head h reads KV head h / (Hq / Hkv)).
    /// With `keys` and `values` both null the call only reads (keys written before by
    /// `concatenate`); one without the other is error.InvalidArgument. Every row of `out` is
    /// written (rows that no processed request owns become 0); on an error neither the cache nor
    /// `out` has changed. For device memory or other dtypes call `c.kvp_attention` directly.
    pub fn attention(self: *Cache, layer: u32, queries: []const f32, keys: ?[]const f32, values: ?[]const f32, shape: [4]i64, md: *const Metadata, opts: AttentionOptions, out: []f32) Error!void {
        const q_shape = [3]i64{ shape[0], shape[1], shape[3] };
        const kv_shape = [3]i64{ shape[0], shape[2], shape[3] };
        const nq = try elements(q_shape);
        const nkv = try elements(kv_shape);
        if (queries.len != nq or out.len != nq) return error.InvalidArgument;
        if (keys) |k| if (k.len != nkv) return error.InvalidArgument;
        if (values) |v| if (v.len != nkv) return error.InvalidArgument;
        var q = hostTensor(queries, q_shape);
        var o = hostTensor(out, q_shape);
        var k: Tensor = undefined;
        var v: Tensor = undefined;
        const raw = try opts.record();
        try check(c.kvp_attention(self.handle, layer, @ptrCast(&q), hostTensorOrNull(keys, kv_shape, &k), hostTensorOrNull(values, kv_shape, &v), md.handle, @ptrCast(&raw), @ptrCast(&o), null));
    }
};

fn hostTensorOrNull(data: ?[]const f32, shape: [3]i64, t: *Tensor) ?*const c.kvp_tensor {
    const d = data orelse return null;
    t.* = hostTensor(d, shape);
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
// Page pool (kvpages/pool.h)

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
    };

    pub fn init(cache: *Cache, o: Options) Error!Pool {
        var opts: c.kvp_pool_options = undefined;
        try check(c.kvp_pool_options_init(&opts, @sizeOf(c.kvp_pool_options)));
        opts.max_sequences = o.max_sequences;
        if (o.no_prefix_cache) opts.flags |= c.KVP_POOL_FLAG_NO_PREFIX_CACHE;
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
        var seq: c.kvp_seq_id = .{ .id = 0 };
        var reused: usize = 0;
        const flags: u32 = if (reuse_all) c.KVP_POOL_ADD_FLAG_REUSE_ALL else 0;
        try check(c.kvp_pool_add_sequence(self.handle, tokens.ptr, tokens.len, salt, flags, &seq, &reused));
        return .{ .seq = @enumFromInt(seq.id), .reused_tokens = reused };
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

    /// A request for `Metadata.build`: computed watermark, pending tokens, and the page ids
    /// copied into `page_buf` (which the result points into, so it stays valid after the pool
    /// changes). error.BufferTooSmall when `page_buf` is shorter than the page count.
    pub fn batchRequest(self: *const Pool, seq: SeqId, page_buf: []i32) Error!BatchRequest {
        var r: BatchRequest = undefined;
        try check(c.kvp_pool_get_batch_request(self.handle, seq.raw(), @ptrCast(&r)));
        const n: usize = @intCast(r.num_pages);
        if (page_buf.len < n) return error.BufferTooSmall;
        if (n > 0) @memcpy(page_buf[0..n], r.page_ids.?[0..n]);
        r.page_ids = page_buf.ptr;
        return r;
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

test "layers copy through the host; a CUDA cache needs a device" {
    const cfg = try testConfig();
    var a = try Cache.init(&cfg);
    defer a.deinit();
    var batch: Batch = undefined;
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
    var md = try Metadata.build(cfg, &.{req}, &order);
    defer md.deinit();
    const n: usize = @intCast(req.num_scheduled);
    const start: usize = @intCast(req.num_computed);
    var key: [64 * H * D]f32 = undefined;
    var value: [64 * H * D]f32 = undefined;
    for (0..n) |t| for (0..H) |h| for (0..D) |d| {
        key[(t * H + h) * D + d] = poolKey(tag, start + t, h, d);
        value[(t * H + h) * D + d] = -poolKey(tag, start + t, h, d);
    };
    for (0..2) |layer| try cache.concatenate(@intCast(layer), key[0 .. n * H * D], value[0 .. n * H * D], .{ @intCast(n), H, D }, &md);
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
    try t.expectEqual(@as(i64, 3), req.num_pages);
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
    var li = std.mem.zeroes(c.kvp_layout_info);
    li.struct_size = @sizeOf(c.kvp_layout_info);
    try check(c.kvp_config_get_layout(&probe.raw, &li));
    o.budget_bytes = 2 * 8 * li.page_bytes_per_layer;
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
    var md = try Metadata.build(cfg, &.{.{ .num_computed = 0, .num_scheduled = 5, .page_ids = &pages, .num_pages = 2 }}, &order);
    defer md.deinit();
    try cache.concatenate(a_layer, &e1_ctx_k, &e1_ctx_v, .{ 5, a_hkv, a_d }, &md);
    if (step_md) |s| try cache.concatenate(a_layer, &e1_k, &e1_v, .{ 4, a_hkv, a_d }, s);
    return cache;
}

/// The step: the decode row first, then the fresh prefill.
fn e1Step(cfg: *const Config) !Metadata {
    const row0 = [_]i32{ 3, 7 };
    const row1 = [_]i32{5};
    var order: [2]i32 = undefined;
    const md = try Metadata.build(cfg, &.{
        .{ .num_computed = 5, .num_scheduled = 1, .page_ids = &row0, .num_pages = 2 },
        .{ .num_computed = 0, .num_scheduled = 3, .page_ids = &row1, .num_pages = 1 },
    }, &order);
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
