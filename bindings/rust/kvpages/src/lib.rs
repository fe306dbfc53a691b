//! Safe Rust bindings of kvpages, a paged KV cache for LLM inference.
//!
//! * Handles ([`Cache`], [`Metadata`]) own a `NonNull` pointer, are released exactly once by
//!   `Drop`, are not `Clone`, and are `Send` (kvpages handles may move between threads).
//!   [`Cache`] is also `Sync`: its `&self` methods only call functions the C API documents as
//!   safe to run concurrently on one cache; writes ([`Cache::concatenate`],
//!   [`Cache::attention`]) take `&mut self`.
//! * Every failing call returns [`Error`] with the status code, its name and the library's
//!   thread-local message, read on the same thread right after the call.
//! * [`View`] borrows the cache, so the cache can be neither written nor dropped while a view
//!   of its memory is alive.
//! * [`Pool<'a>`](Pool) mutably borrows its cache, so the cache outlives the pool; the cache is
//!   reached through the pool meanwhile ([`Pool::cache`], [`Pool::cache_mut`]).
use std::ffi::CStr;
use std::fmt;
use std::marker::PhantomData;
use std::os::raw::{c_char, c_void};
use std::ptr::{self, NonNull};

pub use kvpages_sys as sys;

/// View kinds (`KVP_VIEW_*`).
pub use sys::{KVP_VIEW_FLAT, KVP_VIEW_KEYS, KVP_VIEW_PAGES, KVP_VIEW_REFERENCE_KEYS, KVP_VIEW_REFERENCE_VALUES,
              KVP_VIEW_VALUES};
/// Element types (`KVP_DTYPE_*`) and layouts.
pub use sys::{KVP_DTYPE_BF16, KVP_DTYPE_F16, KVP_DTYPE_F32, KVP_DTYPE_F8_E4M3FN, KVP_DTYPE_F8_E5M2, KVP_LAYOUT_V2,
              KVP_LAYOUT_V3};

/// The kind of a failure, from the status code. Codes this crate does not know map to `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    Internal,
    Other,
}

/// A failed kvpages call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The `kvp_status` code.
    pub code: i32,
    /// Its name, e.g. "KVP_ERR_INVALID_ARGUMENT".
    pub name: String,
    /// The library's detail message for the failing call.
    pub message: String,
}

impl Error {
    /// Builds an error for `code` with an explicit message.
    pub fn new(code: i32, message: impl Into<String>) -> Error {
        let name = unsafe { CStr::from_ptr(sys::kvp_status_name(code)) }.to_string_lossy().into_owned();
        Error { code, name, message: message.into() }
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        match self.code {
            sys::KVP_ERR_INVALID_ARGUMENT => ErrorKind::InvalidArgument,
            sys::KVP_ERR_INVALID_HANDLE => ErrorKind::InvalidHandle,
            sys::KVP_ERR_NOT_FOUND => ErrorKind::NotFound,
            sys::KVP_ERR_VERSION_MISMATCH => ErrorKind::VersionMismatch,
            sys::KVP_ERR_UNSUPPORTED => ErrorKind::Unsupported,
            sys::KVP_ERR_BUFFER_TOO_SMALL => ErrorKind::BufferTooSmall,
            sys::KVP_ERR_OUT_OF_MEMORY => ErrorKind::OutOfMemory,
            sys::KVP_ERR_OUT_OF_PAGES => ErrorKind::OutOfPages,
            sys::KVP_ERR_IO => ErrorKind::Io,
            sys::KVP_ERR_DEVICE => ErrorKind::Device,
            sys::KVP_ERR_DEVICE_LOST => ErrorKind::DeviceLost,
            sys::KVP_ERR_NO_DEVICE => ErrorKind::NoDevice,
            sys::KVP_ERR_DEVICE_OUT_OF_MEMORY => ErrorKind::DeviceOutOfMemory,
            sys::KVP_ERR_INTERNAL => ErrorKind::Internal,
            _ => ErrorKind::Other,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

impl std::error::Error for Error {}

/// Result of every fallible call.
pub type Result<T> = std::result::Result<T, Error>;

/// Turns a status into a Result, copying the thread-local message (same thread, right away).
fn check(status: sys::kvp_status) -> Result<()> {
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

/// The loaded library's version, e.g. "1.1.0".
pub fn version() -> String {
    unsafe { CStr::from_ptr(sys::kvp_version_string()) }.to_string_lossy().into_owned()
}

/// Checks that the loaded library is compatible with these bindings (same major, not older).
pub fn check_abi() -> Result<()> {
    check(unsafe { sys::kvp_check_abi(sys::KVP_VERSION_NUMBER) })
}

/// Inputs of [`Config::create`] (`kvp_config_options`); zero means default for every field.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConfigOptions {
    pub num_hidden_layers: i64,
    pub num_kv_heads: i64,
    pub max_model_length: i64,
    pub head_dim: i64,
    pub page_size: i64,
    pub dtype: u32,
    pub layout: u32,
    pub budget_bytes: i64,
    pub hbm_utilization: f64,
    pub flags: u32,
    pub max_num_reqs: i64,
    pub max_num_tokens: i64,
}

/// A validated cache configuration (`kvp_config`, a plain value).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    raw: sys::kvp_config,
}

impl Config {
    /// `kvp_config_create`: derives the number of pages from the memory budget.
    pub fn create(o: &ConfigOptions) -> Result<Config> {
        unsafe {
            let mut opts = std::mem::MaybeUninit::<sys::kvp_config_options>::zeroed().assume_init();
            check(sys::kvp_config_options_init(&mut opts, std::mem::size_of::<sys::kvp_config_options>() as u32))?;
            opts.num_hidden_layers = o.num_hidden_layers;
            opts.num_kv_heads = o.num_kv_heads;
            opts.max_model_length = o.max_model_length;
            opts.kv_head_dim_size = o.head_dim;
            opts.page_size = o.page_size;
            opts.kvdtype = o.dtype;
            opts.version = o.layout;
            opts.budget_bytes = o.budget_bytes;
            opts.hbm_utilization = o.hbm_utilization;
            opts.flags = o.flags;
            opts.max_num_reqs = o.max_num_reqs;
            opts.max_num_tokens = o.max_num_tokens;
            let mut raw = sys::kvp_config::default();
            check(sys::kvp_config_create(&opts, &mut raw))?;
            Ok(Config { raw })
        }
    }

    /// The raw C record.
    pub fn raw(&self) -> &sys::kvp_config {
        &self.raw
    }

    /// Pages per layer, including the reserved null page 0.
    pub fn num_pages(&self) -> i64 {
        self.raw.num_pages
    }

    /// Tokens per page.
    pub fn page_size(&self) -> i64 {
        self.raw.page_size
    }

    /// `kvp_config_get_layout`: the derived geometry.
    pub fn layout(&self) -> Result<sys::kvp_layout_info> {
        let mut li = sys::kvp_layout_info {
            struct_size: std::mem::size_of::<sys::kvp_layout_info>() as u32,
            ..Default::default()
        };
        check(unsafe { sys::kvp_config_get_layout(&self.raw, &mut li) })?;
        Ok(li)
    }
}

/// A kvpages cache: one zero-filled page buffer per layer (CPU).
#[derive(Debug)]
pub struct Cache {
    ptr: NonNull<sys::kvp_cache>,
}

// SAFETY: kvpages handles may be moved between threads; `&self` methods call only functions
// documented as safe to run concurrently on one cache (they take `const kvp_cache *`).
unsafe impl Send for Cache {}
unsafe impl Sync for Cache {}

/// Where a cache's pages live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// Host memory.
    Cpu,
    /// Memory of CUDA device `n` (the ordinal); needs a kvpages built with CUDA and a GPU.
    Cuda(i32),
}

/// `kvp_device_count`: usable CUDA devices (0 without CUDA, a driver or a GPU).
pub fn device_count() -> Result<i32> {
    let mut n = 0i32;
    check(unsafe { sys::kvp_device_count(&mut n) })?;
    Ok(n)
}

impl Cache {
    /// `kvp_cache_create` on the CPU.
    pub fn new(config: &Config) -> Result<Cache> {
        Cache::new_on(config, Device::Cpu)
    }

    /// `kvp_cache_create` on `device`. Without that CUDA device the error kind is
    /// [`ErrorKind::NoDevice`].
    pub fn new_on(config: &Config, device: Device) -> Result<Cache> {
        let mut opts = std::mem::MaybeUninit::<sys::kvp_cache_options>::zeroed();
        check(unsafe { sys::kvp_cache_options_init(opts.as_mut_ptr(), std::mem::size_of::<sys::kvp_cache_options>() as u32) })?;
        let mut opts = unsafe { opts.assume_init() };
        match device {
            Device::Cpu => opts.device_type = sys::KVP_DEVICE_CPU,
            Device::Cuda(n) => {
                opts.device_type = sys::KVP_DEVICE_CUDA;
                opts.device_id = n;
            }
        }
        let mut out: *mut sys::kvp_cache = ptr::null_mut();
        check(unsafe { sys::kvp_cache_create(&config.raw, &opts, &mut out) })?;
        let ptr = NonNull::new(out).ok_or_else(|| Error::new(sys::KVP_ERR_INTERNAL, "kvp_cache_create returned NULL"))?;
        Ok(Cache { ptr })
    }

    /// Bytes of one layer.
    pub fn layer_bytes(&self) -> Result<usize> {
        let mut li = sys::kvp_layout_info { struct_size: std::mem::size_of::<sys::kvp_layout_info>() as u32,
                                            ..Default::default() };
        check(unsafe { sys::kvp_cache_get_layout(self.ptr.as_ptr(), &mut li) })?;
        Ok(li.layer_bytes as usize)
    }

    /// `kvp_cache_read_layer`: a copy of one layer's bytes (for a CUDA cache, on the device's
    /// legacy default stream, waited for).
    pub fn read_layer(&self, layer: u32) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.layer_bytes()?];
        check(unsafe {
            sys::kvp_cache_read_layer(self.ptr.as_ptr(), layer, out.as_mut_ptr() as *mut c_void, out.len(),
                                      ptr::null_mut())
        })?;
        Ok(out)
    }

    /// `kvp_cache_write_layer`: replaces one layer's bytes (`data` must hold exactly
    /// [`Cache::layer_bytes`]).
    pub fn write_layer(&mut self, layer: u32, data: &[u8]) -> Result<()> {
        check(unsafe {
            sys::kvp_cache_write_layer(self.ptr.as_ptr(), layer, data.as_ptr() as *const c_void, data.len(),
                                       ptr::null_mut())
        })
    }

    /// `kvp_concatenate` with caller-described tensors and stream: the way to write a CUDA cache
    /// from device memory (any supported dtype, any strides).
    ///
    /// # Safety
    /// `key` and `value` must describe memory that is valid for their shape and strides, on the
    /// cache's device, and that stays valid and unchanged until the work is done: when the call
    /// returns for a CPU cache, when `stream` reaches it for a CUDA cache. `stream` must be null
    /// (the device's legacy default stream) or a live `cudaStream_t` of the cache's device.
    pub unsafe fn concatenate_raw(&mut self, layer: u32, key: &sys::kvp_tensor, value: &sys::kvp_tensor,
                                  metadata: &Metadata, stream: *mut c_void) -> Result<()> {
        check(sys::kvp_concatenate(self.ptr.as_ptr(), layer, key, value, metadata.ptr.as_ptr(), stream))
    }

    /// The raw handle (still owned by this object).
    pub fn as_ptr(&self) -> *mut sys::kvp_cache {
        self.ptr.as_ptr()
    }

    /// `kvp_cache_get_config`.
    pub fn config(&self) -> Result<Config> {
        let mut raw = sys::kvp_config::default();
        check(unsafe { sys::kvp_cache_get_config(self.ptr.as_ptr(), &mut raw) })?;
        Ok(Config { raw })
    }

    /// `kvp_cache_get_view`: a strided view of one layer that borrows the cache.
    pub fn view(&self, layer: u32, kind: sys::kvp_view_kind) -> Result<View<'_>> {
        let mut t = std::mem::MaybeUninit::<sys::kvp_tensor>::zeroed();
        check(unsafe { sys::kvp_cache_get_view(self.ptr.as_ptr(), layer, kind, t.as_mut_ptr()) })?;
        Ok(View { t: unsafe { t.assume_init() }, _cache: PhantomData })
    }

    /// `kvp_concatenate`: writes new keys and values (`[T, H, D]` row-major f32 slices, rows in
    /// the order returned by [`Metadata::build`]) into one layer.
    pub fn concatenate(&mut self, layer: u32, key: &[f32], value: &[f32], shape: [usize; 3], metadata: &Metadata)
        -> Result<()> {
        let n = elements(&shape)?;
        if key.len() != n || value.len() != n {
            return Err(Error::new(sys::KVP_ERR_INVALID_ARGUMENT,
                                  format!("key/value hold {}/{} elements, shape {:?} needs {}", key.len(),
                                          value.len(), shape, n)));
        }
        let k = host_tensor(key.as_ptr(), shape);
        let v = host_tensor(value.as_ptr(), shape);
        check(unsafe {
            sys::kvp_concatenate(self.ptr.as_ptr(), layer, &k, &v, metadata.ptr.as_ptr(), ptr::null_mut())
        })
    }
}

/// Elements of a tensor of `shape`; an error when the count overflows `usize` (so that a wrapped
/// product can never make a short slice look long enough).
fn elements(shape: &[usize]) -> Result<usize> {
    shape.iter().try_fold(1usize, |n, &x| n.checked_mul(x)).ok_or_else(|| {
        Error::new(sys::KVP_ERR_INVALID_ARGUMENT, format!("shape {:?} has more elements than usize holds", shape))
    })
}

/// Options of [`Cache::attention`] (`kvp_attention_options`, since 1.1). Zero (and `None`) means
/// default for every field, as in C: `AttentionOptions::default()` is plain causal attention with
/// the reference's default scale, no window, no soft cap, no sinks and unit fp8 scales.
///
/// ```
/// let sinks = [0.0f32, -1.0];
/// let o = kvpages::AttentionOptions { softmax_scale: 0.125, sinks: Some(&sinks), ..Default::default() };
/// assert_eq!((o.sliding_window, o.logits_soft_cap), (0, 0.0));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AttentionOptions<'a> {
    /// Softmax scale σ multiplying every logit; finite and positive. 0 = the reference's default:
    /// **1.0 for a v3 cache**, `1/sqrt(head_dim)` for a v2 cache. Models pass their own scale,
    /// usually `1/sqrt(head_dim)`.
    pub softmax_scale: f32,
    /// Logit soft cap: `s <- cap * tanh(s / cap)` after the scale (and `k_scale`), before masking;
    /// 0 = no cap. Must be finite.
    pub logits_soft_cap: f32,
    /// Sliding window W: a query at position p sees keys `p-W+1 ..= p`. 0 = no window; negative
    /// is rejected ([`ErrorKind::InvalidArgument`]).
    pub sliding_window: i32,
    /// Dequantisation scale of the stored keys (multiplies every logit); 0 = 1.
    pub k_scale: f32,
    /// Dequantisation scale of the stored values (multiplies the weighted sum); 0 = 1.
    pub v_scale: f32,
    /// Sink logits, one per query head (they take part in the softmax normalisation only;
    /// `f32::NEG_INFINITY` is no sink). `None` (or an empty slice) = no sinks.
    pub sinks: Option<&'a [f32]>,
}

impl AttentionOptions<'_> {
    /// The C record: `kvp_attention_options_init`, then these fields. `sinks` points into the
    /// borrowed slice, so the record is only used while `self` is borrowed.
    fn raw(&self) -> Result<sys::kvp_attention_options> {
        let mut o = std::mem::MaybeUninit::<sys::kvp_attention_options>::zeroed();
        check(unsafe {
            sys::kvp_attention_options_init(o.as_mut_ptr(), std::mem::size_of::<sys::kvp_attention_options>() as u32)
        })?;
        let mut o = unsafe { o.assume_init() };
        o.softmax_scale = self.softmax_scale;
        o.logits_soft_cap = self.logits_soft_cap;
        o.sliding_window = self.sliding_window;
        o.k_scale = self.k_scale;
        o.v_scale = self.v_scale;
        if let Some(s) = self.sinks {
            o.num_sinks = u32::try_from(s.len())
                .map_err(|_| Error::new(sys::KVP_ERR_INVALID_ARGUMENT, format!("{} sinks", s.len())))?;
            o.sinks = if s.is_empty() { ptr::null() } else { s.as_ptr() };
        }
        Ok(o)
    }
}

impl Cache {
    /// `kvp_attention` on a CPU cache: writes the step's new keys and values into one layer
    /// (exactly as [`Cache::concatenate`] with the same metadata), then computes ragged paged
    /// attention of every query token over its request's keys and values, read in place from the
    /// pages, into `out`.
    ///
    /// `shape` is `[T, Hq, Hkv, D]`: `queries` and `out` hold `[T, Hq, D]`, `kv = Some((keys,
    /// values))` two `[T, Hkv, D]` tensors, all row-major f32 with rows in the order returned by
    /// [`Metadata::build`]; `Hkv` is the cache's KV head count, `Hq` a multiple of it (query head
    /// `h` reads KV head `h / (Hq / Hkv)`). `kv = None` only reads (for keys written before, by
    /// [`Cache::concatenate`]). Every row of `out` is written; rows that no processed request owns
    /// (padding) become 0. On an error neither the cache nor `out` has changed.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(&mut self, layer: u32, queries: &[f32], kv: Option<(&[f32], &[f32])>, shape: [usize; 4],
                     metadata: &Metadata, options: &AttentionOptions<'_>, out: &mut [f32]) -> Result<()> {
        let [t, hq, hkv, d] = shape;
        let (nq, nkv) = (elements(&[t, hq, d])?, elements(&[t, hkv, d])?);
        if queries.len() != nq || out.len() != nq {
            return Err(Error::new(sys::KVP_ERR_INVALID_ARGUMENT,
                                  format!("queries/out hold {}/{} elements, shape {:?} needs {} ([T, Hq, D])",
                                          queries.len(), out.len(), shape, nq)));
        }
        if let Some((key, value)) = kv {
            if key.len() != nkv || value.len() != nkv {
                return Err(Error::new(sys::KVP_ERR_INVALID_ARGUMENT,
                                      format!("keys/values hold {}/{} elements, shape {:?} needs {} ([T, Hkv, D])",
                                              key.len(), value.len(), shape, nkv)));
            }
        }
        let opts = options.raw()?;
        let q = host_tensor(queries.as_ptr(), [t, hq, d]);
        let o = host_tensor(out.as_mut_ptr(), [t, hq, d]);
        let kv = kv.map(|(key, value)| (host_tensor(key.as_ptr(), [t, hkv, d]), host_tensor(value.as_ptr(), [t, hkv, d])));
        let (k, v) = match &kv {
            Some((k, v)) => (k as *const sys::kvp_tensor, v as *const sys::kvp_tensor),
            None => (ptr::null(), ptr::null()),
        };
        check(unsafe {
            sys::kvp_attention(self.ptr.as_ptr(), layer, &q, k, v, metadata.ptr.as_ptr(), &opts, &o, ptr::null_mut())
        })
    }

    /// `kvp_attention` with caller-described tensors and stream: the way to run attention on a
    /// CUDA cache from device memory, or on any cache with f16/bf16 data or other strides.
    /// `keys` and `values` are both `Some` (fused write) or both `None` (read only).
    ///
    /// # Safety
    /// Every descriptor must describe memory that is valid for its shape and strides, on the
    /// cache's device, and that stays valid until the work is done: when the call returns for a
    /// CPU cache, when `stream` reaches it for a CUDA cache. The inputs must not change and
    /// nothing else may use `out`'s memory meanwhile; `out` must be writable. `stream` must be
    /// null (the device's legacy default stream) or a live `cudaStream_t` of the cache's device.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn attention_raw(&mut self, layer: u32, queries: &sys::kvp_tensor, keys: Option<&sys::kvp_tensor>,
                                values: Option<&sys::kvp_tensor>, metadata: &Metadata,
                                options: &AttentionOptions<'_>, out: &sys::kvp_tensor, stream: *mut c_void)
        -> Result<()> {
        let opts = options.raw()?;
        let k = keys.map_or(ptr::null(), |k| k as *const sys::kvp_tensor);
        let v = values.map_or(ptr::null(), |v| v as *const sys::kvp_tensor);
        check(sys::kvp_attention(self.ptr.as_ptr(), layer, queries, k, v, metadata.ptr.as_ptr(), &opts, out, stream))
    }
}

impl Cache {
    /// `kvp_cache_export_dlpack`: a zero-copy DLPack (0.6) tensor of one view. The tensor
    /// borrows the cache (it cannot outlive it) and calls the DLPack deleter when dropped.
    pub fn export_dlpack(&self, layer: u32, kind: sys::kvp_view_kind) -> Result<DlpackTensor<'_>> {
        let mut out: *mut sys::DLManagedTensor = ptr::null_mut();
        check(unsafe { sys::kvp_cache_export_dlpack(self.ptr.as_ptr(), layer, kind, 0, &mut out) })?;
        let ptr = NonNull::new(out)
            .ok_or_else(|| Error::new(sys::KVP_ERR_INTERNAL, "kvp_cache_export_dlpack returned NULL"))?;
        Ok(DlpackTensor { ptr, _cache: PhantomData })
    }
}

/// An owned `DLManagedTensor` exported from a [`Cache`]; its deleter runs on drop.
#[derive(Debug)]
pub struct DlpackTensor<'a> {
    ptr: NonNull<sys::DLManagedTensor>,
    _cache: PhantomData<&'a Cache>,
}

impl<'a> DlpackTensor<'a> {
    /// The DLPack tensor description (shape and strides in elements, `byte_offset` to the view).
    pub fn tensor(&self) -> &sys::DLTensor {
        unsafe { &self.ptr.as_ref().dl_tensor }
    }

    /// Shape of the tensor.
    pub fn shape(&self) -> &[i64] {
        let t = self.tensor();
        unsafe { std::slice::from_raw_parts(t.shape, t.ndim as usize) }
    }

    /// Strides of the tensor, in elements.
    pub fn strides(&self) -> &[i64] {
        let t = self.tensor();
        unsafe { std::slice::from_raw_parts(t.strides, t.ndim as usize) }
    }

    /// Hands the tensor to a DLPack consumer, which must call its deleter exactly once.
    ///
    /// # Safety
    /// The consumer must not use the data after the cache is dropped.
    pub unsafe fn into_raw(self) -> *mut sys::DLManagedTensor {
        let p = self.ptr.as_ptr();
        std::mem::forget(self);
        p
    }
}

impl Drop for DlpackTensor<'_> {
    fn drop(&mut self) {
        unsafe {
            if let Some(deleter) = self.ptr.as_ref().deleter {
                deleter(self.ptr.as_ptr());
            }
        }
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        // Cannot fail for a live handle this object owns; nothing useful to do on error.
        unsafe { sys::kvp_cache_destroy(self.ptr.as_ptr()) };
    }
}

fn host_tensor(data: *const f32, shape: [usize; 3]) -> sys::kvp_tensor {
    let mut t = sys::kvp_tensor {
        data: data as *mut _,
        dtype: sys::KVP_DTYPE_F32,
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

/// A strided view of one layer of a [`Cache`] (no copy).
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    t: sys::kvp_tensor,
    _cache: PhantomData<&'a Cache>,
}

impl<'a> View<'a> {
    /// Extent of each dimension.
    pub fn shape(&self) -> &[i64] {
        &self.t.shape[..self.t.ndim as usize]
    }

    /// Stride of each dimension, in elements.
    pub fn strides(&self) -> &[i64] {
        &self.t.strides[..self.t.ndim as usize]
    }

    /// Element type (`KVP_DTYPE_*`).
    pub fn dtype(&self) -> u32 {
        self.t.dtype
    }

    /// Reads one f32 element; `None` when the index is out of range or the dtype is not f32.
    pub fn get_f32(&self, index: &[i64]) -> Option<f32> {
        if self.t.dtype != sys::KVP_DTYPE_F32 || self.t.device_type != sys::KVP_DEVICE_CPU
            || index.len() != self.t.ndim as usize {
            return None;
        }
        let mut off = 0i64;
        for (i, &x) in index.iter().enumerate() {
            if x < 0 || x >= self.t.shape[i] {
                return None;
            }
            off += x * self.t.strides[i];
        }
        // SAFETY: in bounds of the view, and the cache outlives 'a.
        Some(unsafe { *(self.t.data as *const f32).offset(off as isize) })
    }
}

/// One request of a step for [`Metadata::build`].
#[derive(Debug, Clone)]
pub struct BatchRequest {
    pub num_computed: i64,
    pub num_scheduled: i64,
    pub page_ids: Vec<i32>,
}

/// Runtime metadata of one step (`kvp_metadata`), owning its arrays.
#[derive(Debug)]
pub struct Metadata {
    ptr: NonNull<sys::kvp_metadata>,
}

// SAFETY: owning metadata is plain host memory; moving it between threads is allowed.
unsafe impl Send for Metadata {}

impl Metadata {
    /// `kvp_metadata_build`. Returns the metadata and the row order: `order[row]` is the index
    /// of the request in that row (pack keys/values in this order).
    pub fn build(config: &Config, requests: &[BatchRequest]) -> Result<(Metadata, Vec<usize>)> {
        let raw: Vec<sys::kvp_batch_request> = requests
            .iter()
            .map(|r| sys::kvp_batch_request {
                num_computed: r.num_computed,
                num_scheduled: r.num_scheduled,
                page_ids: r.page_ids.as_ptr(),
                num_pages: r.page_ids.len() as i64,
            })
            .collect();
        let mut order = vec![-1i32; requests.len()];
        let mut out: *mut sys::kvp_metadata = ptr::null_mut();
        check(unsafe {
            sys::kvp_metadata_build(&config.raw, raw.as_ptr(), raw.len() as u32, ptr::null(), order.as_mut_ptr(),
                                    &mut out)
        })?;
        let ptr = NonNull::new(out).ok_or_else(|| Error::new(sys::KVP_ERR_INTERNAL, "kvp_metadata_build returned NULL"))?;
        Ok((Metadata { ptr }, order.into_iter().filter(|&i| i >= 0).map(|i| i as usize).collect()))
    }
}

impl Drop for Metadata {
    fn drop(&mut self) {
        unsafe { sys::kvp_metadata_destroy(self.ptr.as_ptr()) };
    }
}

/// Page state flags of [`Pool::page_state`] (`KVP_PAGE_FLAG_*`).
pub use sys::{KVP_PAGE_FLAG_FREE, KVP_PAGE_FLAG_INDEXED, KVP_PAGE_FLAG_NULL};

impl Cache {
    /// `kvp_cache_copy_pages`: page `dst[i]` receives the contents of page `src[i]`, in every
    /// layer. Destinations must be distinct and none of them a source.
    pub fn copy_pages(&mut self, src: &[i32], dst: &[i32]) -> Result<()> {
        if src.len() != dst.len() {
            return Err(Error::new(sys::KVP_ERR_INVALID_ARGUMENT,
                                  format!("{} source pages but {} destination pages", src.len(), dst.len())));
        }
        check(unsafe {
            sys::kvp_cache_copy_pages(self.ptr.as_ptr(), src.as_ptr(), dst.as_ptr(), src.len(), ptr::null_mut())
        })
    }
}

/// Identifies a sequence of a [`Pool`] (`kvp_seq_id`). Opaque: compare it, copy it, pass it
/// back to the pool that returned it. A freed id is rejected with [`ErrorKind::NotFound`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqId(u32);

impl SeqId {
    /// The raw 32-bit value (never 0 for an id a pool returned).
    pub fn raw(self) -> u32 {
        self.0
    }

    fn c(self) -> sys::kvp_seq_id {
        sys::kvp_seq_id { id: self.0 }
    }
}

/// Inputs of [`Pool::new`] (`kvp_pool_options`); zero means default.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolOptions {
    /// Live sequences at most; 0 = the config's `max_num_reqs` if set, else its default.
    pub max_sequences: u32,
    /// Never index pages: no prefix reuse, released pages are freed at once.
    pub no_prefix_cache: bool,
}

/// Counters of a pool (`kvp_pool_stats`): `free_pages + evictable_pages + used_pages ==
/// total_pages` always holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub max_sequences: u32,
    pub page_size: i64,
    pub max_pages_per_sequence: i64,
    pub total_pages: i64,
    pub free_pages: i64,
    pub evictable_pages: i64,
    pub used_pages: i64,
    pub indexed_pages: i64,
    pub num_sequences: i64,
    pub prompt_tokens: i64,
    pub reused_tokens: i64,
    pub evictions: i64,
    pub cow_copies: i64,
}

/// A page pool (`kvp_pool`): hands the pages of a [`Cache`] to sequences, shares them by
/// reference count (fork, copy-on-write) and reuses computed pages by prefix hash.
///
/// The pool mutably borrows its cache for `'a`, so the cache outlives the pool and nothing
/// else can write it meanwhile; reach it through [`Pool::cache`] (views) and
/// [`Pool::cache_mut`] (concatenate). Calls that modify the pool take `&mut self`; the
/// `&self` methods only call functions the C API documents as safe to run concurrently.
///
/// A pool cannot outlive its cache, and the cache cannot be used directly while a pool holds it:
///
/// ```compile_fail
/// # use kvpages::*;
/// # fn f(cfg: &Config) -> Result<()> {
/// let mut cache = Cache::new(cfg)?;
/// let pool = Pool::new(&mut cache, &PoolOptions::default())?;
/// drop(cache); // error: `cache` is still borrowed by `pool`
/// pool.stats()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Pool<'a> {
    ptr: NonNull<sys::kvp_pool>,
    cache: &'a mut Cache,
}

// SAFETY: the pool is host memory owned by this object and may move between threads; `&self`
// methods call only functions taking `const kvp_pool *`, documented as safe to run concurrently.
unsafe impl Send for Pool<'_> {}
unsafe impl Sync for Pool<'_> {}

impl<'a> Pool<'a> {
    /// `kvp_pool_create` over the pages of `cache`.
    pub fn new(cache: &'a mut Cache, options: &PoolOptions) -> Result<Pool<'a>> {
        unsafe {
            let mut opts = std::mem::MaybeUninit::<sys::kvp_pool_options>::zeroed().assume_init();
            check(sys::kvp_pool_options_init(&mut opts, std::mem::size_of::<sys::kvp_pool_options>() as u32))?;
            opts.max_sequences = options.max_sequences;
            if options.no_prefix_cache {
                opts.flags |= sys::KVP_POOL_FLAG_NO_PREFIX_CACHE;
            }
            let mut out: *mut sys::kvp_pool = ptr::null_mut();
            check(sys::kvp_pool_create(cache.as_ptr(), &opts, &mut out))?;
            let ptr = NonNull::new(out).ok_or_else(|| Error::new(sys::KVP_ERR_INTERNAL, "kvp_pool_create returned NULL"))?;
            Ok(Pool { ptr, cache })
        }
    }

    /// The raw handle (still owned by this object).
    pub fn as_ptr(&self) -> *mut sys::kvp_pool {
        self.ptr.as_ptr()
    }

    /// The cache whose pages this pool hands out (for views).
    pub fn cache(&self) -> &Cache {
        self.cache
    }

    /// The cache, for writes ([`Cache::concatenate`]).
    pub fn cache_mut(&mut self) -> &mut Cache {
        self.cache
    }

    /// `kvp_pool_add_sequence`: adds a sequence with a prompt and returns its id and the number
    /// of prompt tokens reused from the prefix cache (computed already; write the K/V of the
    /// others). `salt` namespaces the prefix cache; `reuse_all` lets a full prompt hit reuse
    /// every page.
    pub fn add_sequence(&mut self, tokens: &[i32], salt: u64, reuse_all: bool) -> Result<(SeqId, usize)> {
        let flags = if reuse_all { sys::KVP_POOL_ADD_FLAG_REUSE_ALL } else { 0 };
        let mut seq = sys::kvp_seq_id::default();
        let mut reused = 0usize;
        check(unsafe {
            sys::kvp_pool_add_sequence(self.ptr.as_ptr(), tokens.as_ptr(), tokens.len(), salt, flags, &mut seq,
                                       &mut reused)
        })?;
        Ok((SeqId(seq.id), reused))
    }

    /// `kvp_pool_append`: declares the sequence's tokens so far computed, then appends `tokens`
    /// (copy-on-write of a shared tail page, allocating pages as needed).
    pub fn append(&mut self, seq: SeqId, tokens: &[i32]) -> Result<()> {
        check(unsafe {
            sys::kvp_pool_append(self.ptr.as_ptr(), seq.c(), tokens.as_ptr(), tokens.len(), ptr::null_mut())
        })
    }

    /// `kvp_pool_set_computed`: the K/V of the first `num_tokens` tokens is written.
    pub fn set_computed(&mut self, seq: SeqId, num_tokens: usize) -> Result<()> {
        check(unsafe { sys::kvp_pool_set_computed(self.ptr.as_ptr(), seq.c(), num_tokens) })
    }

    /// `kvp_pool_truncate`: shortens the sequence to `new_length` tokens.
    pub fn truncate(&mut self, seq: SeqId, new_length: usize) -> Result<()> {
        check(unsafe { sys::kvp_pool_truncate(self.ptr.as_ptr(), seq.c(), new_length) })
    }

    /// `kvp_pool_fork`: `num_children` new sequences sharing all the parent's pages.
    pub fn fork(&mut self, seq: SeqId, num_children: u32) -> Result<Vec<SeqId>> {
        let mut out = vec![sys::kvp_seq_id::default(); num_children as usize];
        check(unsafe { sys::kvp_pool_fork(self.ptr.as_ptr(), seq.c(), num_children, out.as_mut_ptr()) })?;
        Ok(out.into_iter().map(|s| SeqId(s.id)).collect())
    }

    /// `kvp_pool_free_sequence`: releases the sequence's pages and invalidates its id.
    pub fn free_sequence(&mut self, seq: SeqId) -> Result<()> {
        check(unsafe { sys::kvp_pool_free_sequence(self.ptr.as_ptr(), seq.c()) })
    }

    /// `kvp_pool_get_sequence_length`: `(length, computed)` in tokens.
    pub fn length(&self, seq: SeqId) -> Result<(usize, usize)> {
        let (mut length, mut computed) = (0usize, 0usize);
        check(unsafe { sys::kvp_pool_get_sequence_length(self.ptr.as_ptr(), seq.c(), &mut length, &mut computed) })?;
        Ok((length, computed))
    }

    /// `kvp_pool_get_page_table`: the sequence's page ids in logical order (no padding).
    pub fn page_table(&self, seq: SeqId) -> Result<Vec<i32>> {
        let mut count = 0usize;
        check(unsafe { sys::kvp_pool_get_page_table(self.ptr.as_ptr(), seq.c(), ptr::null_mut(), 0, &mut count) })
            .or_else(|e| if e.kind() == ErrorKind::BufferTooSmall { Ok(()) } else { Err(e) })?;
        let mut pages = vec![0i32; count];
        check(unsafe {
            sys::kvp_pool_get_page_table(self.ptr.as_ptr(), seq.c(), pages.as_mut_ptr(), pages.len(), &mut count)
        })?;
        pages.truncate(count);
        Ok(pages)
    }

    /// `kvp_pool_get_slots`: the cache slots (`page * page_size + row`) of positions
    /// `start .. start + count`.
    pub fn slots(&self, seq: SeqId, start: usize, count: usize) -> Result<Vec<i32>> {
        let mut slots = vec![0i32; count];
        check(unsafe { sys::kvp_pool_get_slots(self.ptr.as_ptr(), seq.c(), start, count, slots.as_mut_ptr()) })?;
        Ok(slots)
    }

    /// `kvp_pool_get_batch_request`: the sequence as a request for [`Metadata::build`]
    /// (computed watermark, pending tokens, page ids copied out of the pool).
    pub fn batch_request(&self, seq: SeqId) -> Result<BatchRequest> {
        let mut r = std::mem::MaybeUninit::<sys::kvp_batch_request>::zeroed();
        check(unsafe { sys::kvp_pool_get_batch_request(self.ptr.as_ptr(), seq.c(), r.as_mut_ptr()) })?;
        let r = unsafe { r.assume_init() };
        let page_ids = if r.num_pages > 0 && !r.page_ids.is_null() {
            // SAFETY: the row stays valid until the next call that modifies the pool; `&self`
            // rules that out while it is copied.
            unsafe { std::slice::from_raw_parts(r.page_ids, r.num_pages as usize) }.to_vec()
        } else {
            Vec::new()
        };
        Ok(BatchRequest { num_computed: r.num_computed, num_scheduled: r.num_scheduled, page_ids })
    }

    /// `kvp_pool_get_page_state`: `(refcount, flags)` of a page, flags `KVP_PAGE_FLAG_*`.
    pub fn page_state(&self, page: i32) -> Result<(u32, u32)> {
        let (mut refcount, mut flags) = (0u32, 0u32);
        check(unsafe { sys::kvp_pool_get_page_state(self.ptr.as_ptr(), page, &mut refcount, &mut flags) })?;
        Ok((refcount, flags))
    }

    /// `kvp_pool_get_stats`.
    pub fn stats(&self) -> Result<PoolStats> {
        let mut s = sys::kvp_pool_stats {
            struct_size: std::mem::size_of::<sys::kvp_pool_stats>() as u32,
            ..Default::default()
        };
        check(unsafe { sys::kvp_pool_get_stats(self.ptr.as_ptr(), &mut s) })?;
        Ok(PoolStats {
            max_sequences: s.max_sequences,
            page_size: s.page_size,
            max_pages_per_sequence: s.max_pages_per_sequence,
            total_pages: s.total_pages,
            free_pages: s.free_pages,
            evictable_pages: s.evictable_pages,
            used_pages: s.used_pages,
            indexed_pages: s.indexed_pages,
            num_sequences: s.num_sequences,
            prompt_tokens: s.prompt_tokens,
            reused_tokens: s.reused_tokens,
            evictions: s.evictions,
            cow_copies: s.cow_copies,
        })
    }

    /// `kvp_pool_check_invariants`: [`ErrorKind::Internal`] with a message if one is violated.
    pub fn check_invariants(&self) -> Result<()> {
        check(unsafe { sys::kvp_pool_check_invariants(self.ptr.as_ptr()) })
    }

    /// `kvp_pool_clear_prefix_cache`: empties the prefix index (evictable pages become free).
    pub fn clear_prefix_cache(&mut self) -> Result<()> {
        check(unsafe { sys::kvp_pool_clear_prefix_cache(self.ptr.as_ptr()) })
    }
}

impl Drop for Pool<'_> {
    fn drop(&mut self) {
        // Cannot fail for a live handle this object owns; never touches the cache.
        unsafe { sys::kvp_pool_destroy(self.ptr.as_ptr()) };
    }
}
