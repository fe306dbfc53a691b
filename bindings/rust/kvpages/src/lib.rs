//! Safe Rust bindings of kvpages, a paged KV cache for LLM inference.
//!
//! The whole C library is reachable without `unsafe`: planning ([`Config::create`],
//! [`Config::plan`]), caches on the CPU or a CUDA device ([`Cache`]), typed views
//! ([`View`], [`ViewMut`]) with reads and writes of f32, f16, bf16 and fp8 elements, writing a
//! batch ([`Batch`], [`Cache::concatenate_batch`]), shards and cache groups ([`CacheGroup`]),
//! attention, the page pool ([`Pool`]) and its storage tiers ([`Store`]), serialization to and
//! from memory, files and `std::io` streams ([`Cache::serialize`], [`Cache::deserialize`],
//! [`inspect`]), JSON, DLPack export, asynchronous errors and version checks. `tests/coverage.rs`
//! fails when a public C function has no counterpart here and is not on its list of functions
//! left out on purpose (with the reason).
//!
//! * Handles ([`Cache`], [`CacheGroup`], [`Metadata`], [`Pool`]) own a `NonNull` pointer, are
//!   released exactly once by `Drop`, are not `Clone`, and are `Send` (kvpages handles may move
//!   between threads). [`Cache`] is also `Sync`: its `&self` methods only call functions the C
//!   API documents as safe to run concurrently on one cache; writes take `&mut self`. A group's
//!   shard ([`GroupShard`]) is a `&Cache` borrowed from the group: it is never destroyed by
//!   itself and cannot outlive the group.
//! * Every fallible call returns [`Result`]; [`Error`] carries the status code, its name, the
//!   library's thread-local message (read on the same thread right after the call) and a
//!   [`kind`](Error::kind).
//! * [`View`] borrows the cache, so the cache can be neither written nor dropped while a view
//!   of its memory is alive.
//! * The decode-first reordering of the batch builder cannot be got wrong: [`Batch`] remembers
//!   the row order and packs per-request keys and values itself.
//!
//! # Linking
//! `kvpages-sys` finds the library with `pkg-config` (`PKG_CONFIG_PATH=<prefix>/lib/pkgconfig`),
//! `KVPAGES_LIB_DIR`, or builds it from the source tree with the `bundled` feature. This crate's
//! examples and tests get an rpath to the library's directory, so `cargo run --example
//! new_user` works from an install prefix with only `PKG_CONFIG_PATH` set. A program of yours
//! gets the same rpath from a build script (see `build.rs` of this crate):
//!
//! ```toml
//! [dependencies]
//! kvpages = { path = "…/bindings/rust/kvpages" }
//! kvpages-sys = { path = "…/bindings/rust/kvpages-sys" }  # for DEP_KVPAGES_LIBDIR
//! ```
//! ```ignore
//! // build.rs
//! fn main() {
//!     if let Ok(dir) = std::env::var("DEP_KVPAGES_LIBDIR") {
//!         println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
//!     }
//! }
//! ```
use std::ffi::{CStr, CString};
use std::fmt;
use std::os::raw::{c_char, c_void};
use std::path::Path;
use std::ptr;

pub use kvpages_sys as sys;

mod attention;
mod cache;
mod config;
mod dtype;
mod group;
mod metadata;
mod pool;
mod serialize;
mod store;

pub use attention::AttentionOptions;
pub use cache::{device_count, Cache, Device, DlpackTensor, View, ViewKind, ViewMut};
pub use config::{
    device_memory_stats, hbm_budget_bytes, BudgetMode, Config, ConfigOptions, LayoutInfo, MemoryStats, Plan, ShardInfo,
};
pub use dtype::{
    convert, convert_bytes, from_f32_slice, to_f32_vec, Bf16, Dtype, Element, F8E4M3Fn, F8E5M2, InputElement, Layout,
    F16,
};
pub use group::{CacheGroup, GroupShard};
pub use metadata::{Batch, BatchOptions, BatchRequest, HostArrays, Metadata, MetadataField};
pub use pool::{Pool, PoolOptions, PoolShardStats, PoolStats, PoolTierStats, SeqId, KVP_PAGE_FLAG_FREE, KVP_PAGE_FLAG_INDEXED, KVP_PAGE_FLAG_NULL};
pub use serialize::{inspect, inspect_file, BlobRef, DeserializeOptions, SerializeOptions, SerializedInfo};
pub use store::{inspect_block, BlockInfo, ScrubReport, Store, StoreBackend, StoreKey, StoreOptions, StoreStats};

/// The kind of a failure, from the status code (`KVP_ERR_*`). Codes this crate does not know
/// map to `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
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
    /// Serialized data does not start with the kvpages magic.
    FormatMagic,
    /// Serialized data has an unknown format major version.
    FormatVersion,
    /// Serialized data ends before its declared size.
    FormatTruncated,
    /// A checksum of serialized data does not match.
    FormatChecksum,
    /// Serialized data is structurally invalid.
    FormatCorrupt,
    /// Serialized data does not fit the target cache (or the size limit).
    FormatMismatch,
    Internal,
    Other,
}

const KINDS: [(sys::kvp_status, ErrorKind); 20] = [
    (sys::KVP_ERR_INVALID_ARGUMENT, ErrorKind::InvalidArgument),
    (sys::KVP_ERR_INVALID_HANDLE, ErrorKind::InvalidHandle),
    (sys::KVP_ERR_NOT_FOUND, ErrorKind::NotFound),
    (sys::KVP_ERR_VERSION_MISMATCH, ErrorKind::VersionMismatch),
    (sys::KVP_ERR_UNSUPPORTED, ErrorKind::Unsupported),
    (sys::KVP_ERR_BUFFER_TOO_SMALL, ErrorKind::BufferTooSmall),
    (sys::KVP_ERR_OUT_OF_MEMORY, ErrorKind::OutOfMemory),
    (sys::KVP_ERR_OUT_OF_PAGES, ErrorKind::OutOfPages),
    (sys::KVP_ERR_IO, ErrorKind::Io),
    (sys::KVP_ERR_DEVICE, ErrorKind::Device),
    (sys::KVP_ERR_DEVICE_LOST, ErrorKind::DeviceLost),
    (sys::KVP_ERR_NO_DEVICE, ErrorKind::NoDevice),
    (sys::KVP_ERR_DEVICE_OUT_OF_MEMORY, ErrorKind::DeviceOutOfMemory),
    (sys::KVP_ERR_FORMAT_MAGIC, ErrorKind::FormatMagic),
    (sys::KVP_ERR_FORMAT_VERSION, ErrorKind::FormatVersion),
    (sys::KVP_ERR_FORMAT_TRUNCATED, ErrorKind::FormatTruncated),
    (sys::KVP_ERR_FORMAT_CHECKSUM, ErrorKind::FormatChecksum),
    (sys::KVP_ERR_FORMAT_CORRUPT, ErrorKind::FormatCorrupt),
    (sys::KVP_ERR_FORMAT_MISMATCH, ErrorKind::FormatMismatch),
    (sys::KVP_ERR_INTERNAL, ErrorKind::Internal),
];

/// A failed kvpages call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The `kvp_status` code.
    pub code: i32,
    /// Its name, e.g. "KVP_ERR_INVALID_ARGUMENT" (`kvp_status_name`).
    pub name: String,
    /// The library's detail message for the failing call.
    pub message: String,
}

impl Error {
    /// Builds an error for `code` with an explicit message.
    pub fn new(code: i32, message: impl Into<String>) -> Error {
        Error { code, name: status_name(code).to_string(), message: message.into() }
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        KINDS.iter().find(|(c, _)| *c == self.code).map(|(_, k)| *k).unwrap_or(ErrorKind::Other)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

impl std::error::Error for Error {}

impl From<Error> for std::io::Error {
    /// For `?` in functions returning `io::Result`: format errors become `InvalidData`, I/O
    /// errors `Other`, argument errors `InvalidInput`; the message is kept.
    fn from(e: Error) -> std::io::Error {
        use std::io::ErrorKind as Io;
        let kind = match e.kind() {
            ErrorKind::InvalidArgument | ErrorKind::NotFound => Io::InvalidInput,
            ErrorKind::FormatMagic
            | ErrorKind::FormatVersion
            | ErrorKind::FormatTruncated
            | ErrorKind::FormatChecksum
            | ErrorKind::FormatCorrupt
            | ErrorKind::FormatMismatch => Io::InvalidData,
            ErrorKind::OutOfMemory => Io::OutOfMemory,
            _ => Io::Other,
        };
        std::io::Error::new(kind, e)
    }
}

/// Result of every fallible call.
pub type Result<T> = std::result::Result<T, Error>;

/// Turns a status into a Result, copying the thread-local message (same thread, right away).
pub(crate) fn check(status: sys::kvp_status) -> Result<()> {
    if status == sys::KVP_OK {
        return Ok(());
    }
    let message = unsafe {
        let n = sys::kvp_last_error_copy(ptr::null_mut(), 0);
        let mut buf = vec![0u8; n + 1];
        sys::kvp_last_error_copy(buf.as_mut_ptr() as *mut c_char, buf.len());
        buf.truncate(n);
        String::from_utf8_lossy(&buf).into_owned()
    };
    Err(Error::new(status, message))
}

pub(crate) fn invalid(message: impl Into<String>) -> Error {
    Error::new(sys::KVP_ERR_INVALID_ARGUMENT, message)
}

pub(crate) fn internal(message: impl Into<String>) -> Error {
    Error::new(sys::KVP_ERR_INTERNAL, message)
}

/// A static C string as `&'static str` ("" for NULL or non-UTF-8).
pub(crate) fn static_str(p: *const c_char) -> &'static str {
    if p.is_null() {
        return "";
    }
    // SAFETY: the library's static strings live as long as the process.
    unsafe { CStr::from_ptr(p) }.to_str().unwrap_or("")
}

/// A path as a NUL-terminated C string.
pub(crate) fn c_path(path: &Path) -> Result<CString> {
    #[cfg(unix)]
    let bytes = {
        use std::os::unix::ffi::OsStrExt;
        path.as_os_str().as_bytes().to_vec()
    };
    #[cfg(not(unix))]
    let bytes = path.to_str().ok_or_else(|| invalid(format!("path {path:?} is not UTF-8")))?.as_bytes().to_vec();
    CString::new(bytes).map_err(|_| invalid(format!("path {path:?} contains a NUL byte")))
}

/// Elements of a tensor of `shape`; an error when the count overflows `usize` (so that a wrapped
/// product can never make a short slice look long enough).
pub(crate) fn elements(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &x| n.checked_mul(x))
        .ok_or_else(|| invalid(format!("shape {shape:?} has more elements than usize holds")))
}

/// A row-major `[T, H, D]` host tensor descriptor of `dtype` elements at `data`.
pub(crate) fn host_tensor_of(data: *const c_void, dtype: Dtype, shape: [usize; 3]) -> sys::kvp_tensor {
    let mut t = sys::kvp_tensor {
        data: data as *mut _,
        dtype: dtype.to_raw(),
        ndim: 3,
        shape: [0; sys::KVP_MAX_DIMS],
        strides: [0; sys::KVP_MAX_DIMS],
        device_type: sys::KVP_DEVICE_CPU,
        device_id: 0,
    };
    t.shape[..3].copy_from_slice(&[shape[0] as i64, shape[1] as i64, shape[2] as i64]);
    t.strides[..3].copy_from_slice(&[(shape[1] * shape[2]) as i64, shape[2] as i64, 1]);
    t
}

pub(crate) fn host_tensor(data: *const f32, shape: [usize; 3]) -> sys::kvp_tensor {
    host_tensor_of(data as *const c_void, Dtype::F32, shape)
}

/// The static name of a status code (`kvp_status_name`), e.g. "KVP_ERR_IO";
/// "KVP_ERR_UNKNOWN" for codes the library does not know.
pub fn status_name(code: i32) -> &'static str {
    static_str(unsafe { sys::kvp_status_name(code) })
}

/// The loaded library's version, e.g. "1.2.0" (`kvp_version_string`).
pub fn version() -> String {
    static_str(unsafe { sys::kvp_version_string() }).to_string()
}

/// The loaded library's version as MAJOR*10000 + MINOR*100 + PATCH (`kvp_version_number`).
pub fn version_number() -> u32 {
    unsafe { sys::kvp_version_number() }
}

/// A description of the library build: version, revision, compiler, backends, CPU level
/// (`kvp_build_info`).
pub fn build_info() -> &'static str {
    static_str(unsafe { sys::kvp_build_info() })
}

/// Checks that the loaded library is compatible with these bindings (`kvp_check_abi` with the
/// header version they were written against: same major, library not older).
pub fn check_abi() -> Result<()> {
    check(unsafe { sys::kvp_check_abi(sys::KVP_VERSION_NUMBER) })
}

/// The message of the last failed kvpages call on this thread (`kvp_last_error_message`); empty
/// after a success. [`Error::message`] already holds it for calls made through this crate.
pub fn last_error_message() -> String {
    static_str(unsafe { sys::kvp_last_error_message() }).to_string()
}

static MISUSE_HANDLER: std::sync::Mutex<Option<fn(&str)>> = std::sync::Mutex::new(None);

unsafe extern "C" fn misuse_trampoline(what: *const c_char, _user_data: *mut c_void) {
    let text = if what.is_null() { String::new() } else { CStr::from_ptr(what).to_string_lossy().into_owned() };
    let handler = MISUSE_HANDLER.lock().map(|h| *h).unwrap_or(None);
    if let Some(h) = handler {
        // A panic must not unwind into C.
        let _ = std::panic::catch_unwind(|| h(&text));
    }
}

/// Installs a process-wide handler called with a description of every detected API misuse (a
/// bad handle) before the error returns (`kvp_set_misuse_handler`); `None` restores the default
/// (nothing). A panic in the handler is caught. Install it before other threads use the library.
pub fn set_misuse_handler(handler: Option<fn(&str)>) {
    if let Ok(mut h) = MISUSE_HANDLER.lock() {
        *h = handler;
    }
    let f: sys::kvp_misuse_fn = handler.map(|_| misuse_trampoline as unsafe extern "C" fn(*const c_char, *mut c_void));
    unsafe { sys::kvp_set_misuse_handler(f, ptr::null_mut()) };
}

/// `cdiv(a, b)` with floor division, in 64 bits (`kvp_cdiv`).
pub fn cdiv(a: i64, b: i64) -> Result<i64> {
    let mut out = 0;
    check(unsafe { sys::kvp_cdiv(a, b, &mut out) })?;
    Ok(out)
}

/// `cdiv(v, m) * m` (`kvp_align_to_multiple`).
pub fn align_to_multiple(v: i64, m: i64) -> Result<i64> {
    let mut out = 0;
    check(unsafe { sys::kvp_align_to_multiple(v, m, &mut out) })?;
    Ok(out)
}

/// Largest power of two ≤ n, 0 when n ≤ 0 (`kvp_previous_power_of_2`).
pub fn previous_power_of_2(n: i64) -> i64 {
    unsafe { sys::kvp_previous_power_of_2(n) }
}

/// Bytes of one page of one layer in the reference's generic v3 formula (`kvp_page_size_bytes`).
pub fn page_size_bytes(page_size: i64, num_kv_heads: i64, head_size: i64, dtype: Dtype) -> Result<i64> {
    let mut out = 0;
    check(unsafe { sys::kvp_page_size_bytes(page_size, num_kv_heads, head_size, dtype.to_raw(), &mut out) })?;
    Ok(out)
}

/// Update slices per page batch of the v2 kernel (`kvp_num_slices_per_kv_cache_update_page`).
pub fn num_slices_per_kv_cache_update_page(page_size_bytes: i64) -> Result<i64> {
    let mut out = 0;
    check(unsafe { sys::kvp_num_slices_per_kv_cache_update_page(page_size_bytes, &mut out) })?;
    Ok(out)
}
