//! The cache (`kvpages/cache.h`, `ops.h`, `device.h`, `dlpack.h`): creation on a device,
//! views with typed reads and writes, writing a batch, layer copies, DLPack export and the
//! asynchronous error.
use std::marker::PhantomData;
use std::mem::{size_of, MaybeUninit};
use std::os::raw::c_void;
use std::ptr::{self, NonNull};

use crate::dtype::convert_raw;
use crate::{
    check, elements, host_tensor_of, internal, invalid, sys, Batch, Config, Dtype, Element, Error, InputElement,
    LayoutInfo, Metadata, Result, ShardInfo,
};
use crate::config::empty_shard_info;

/// Where a cache's pages live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// Host memory.
    #[default]
    Cpu,
    /// Memory of CUDA device `n` (the ordinal); needs a kvpages built with CUDA and a GPU.
    Cuda(i32),
}

impl Device {
    /// (`kvp_device_type`, device id).
    pub fn to_raw(self) -> (sys::kvp_device_type, i32) {
        match self {
            Device::Cpu => (sys::KVP_DEVICE_CPU, 0),
            Device::Cuda(n) => (sys::KVP_DEVICE_CUDA, n),
        }
    }

    /// The device of a (`kvp_device_type`, id) pair.
    pub fn from_raw(device_type: sys::kvp_device_type, id: i32) -> Result<Device> {
        match device_type {
            sys::KVP_DEVICE_CPU => Ok(Device::Cpu),
            sys::KVP_DEVICE_CUDA => Ok(Device::Cuda(id)),
            other => Err(invalid(format!("unknown device type {other}"))),
        }
    }
}

/// `kvp_device_count`: usable CUDA devices (0 without CUDA, a driver or a GPU).
pub fn device_count() -> Result<i32> {
    let mut n = 0i32;
    check(unsafe { sys::kvp_device_count(&mut n) })?;
    Ok(n)
}

/// Which view of a layer [`Cache::view`] describes (`KVP_VIEW_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ViewKind {
    /// The layer's pages in the reference shape: v3 `[P,S,G,pack,Dst]`, v2 `[P,S,2H,D]`.
    Pages,
    /// The reference's `flattened_kv_pages()`: v3 `[P,S,G*pack,Dst]`, v2 `[P,S,2H,D]`.
    Flat,
    /// The keys `[P,S,H,D]` (padding excluded).
    Keys,
    /// The values `[P,S,H,D]`.
    Values,
    /// The reference's literal `key_pages` (wrong for head_dim 64).
    ReferenceKeys,
    /// The reference's literal `value_pages`.
    ReferenceValues,
}

impl ViewKind {
    /// The `KVP_VIEW_*` value.
    pub fn to_raw(self) -> sys::kvp_view_kind {
        match self {
            ViewKind::Pages => sys::KVP_VIEW_PAGES,
            ViewKind::Flat => sys::KVP_VIEW_FLAT,
            ViewKind::Keys => sys::KVP_VIEW_KEYS,
            ViewKind::Values => sys::KVP_VIEW_VALUES,
            ViewKind::ReferenceKeys => sys::KVP_VIEW_REFERENCE_KEYS,
            ViewKind::ReferenceValues => sys::KVP_VIEW_REFERENCE_VALUES,
        }
    }
}

/// A kvpages cache: one zero-filled page buffer per layer, on the CPU or a CUDA device.
#[derive(Debug)]
pub struct Cache {
    pub(crate) ptr: NonNull<sys::kvp_cache>,
}

// SAFETY: kvpages handles may be moved between threads; `&self` methods call only functions
// documented as safe to run concurrently on one cache (they take `const kvp_cache *`).
unsafe impl Send for Cache {}
unsafe impl Sync for Cache {}

pub(crate) fn cache_options(device: Device) -> Result<sys::kvp_cache_options> {
    let mut opts = MaybeUninit::<sys::kvp_cache_options>::zeroed();
    check(unsafe { sys::kvp_cache_options_init(opts.as_mut_ptr(), size_of::<sys::kvp_cache_options>() as u32) })?;
    let mut opts = unsafe { opts.assume_init() };
    let (ty, id) = device.to_raw();
    opts.device_type = ty;
    opts.device_id = id;
    Ok(opts)
}

impl Cache {
    /// `kvp_cache_create` on the device the config was budgeted for ([`Config::device`]).
    pub fn new(config: &Config) -> Result<Cache> {
        Cache::new_on(config, config.device)
    }

    /// `kvp_cache_create` on `device`. Without that CUDA device the error kind is
    /// [`ErrorKind::NoDevice`](crate::ErrorKind::NoDevice).
    pub fn new_on(config: &Config, device: Device) -> Result<Cache> {
        let opts = cache_options(device)?;
        let mut out: *mut sys::kvp_cache = ptr::null_mut();
        check(unsafe { sys::kvp_cache_create(&config.raw, &opts, &mut out) })?;
        Cache::from_created(out, "kvp_cache_create")
    }

    /// `kvp_cache_create_shard` (since 1.4) on the device the config was budgeted for: the slice
    /// tensor rank `tp_rank` and data rank `dp_rank` of a sharded config hold. Its views and
    /// layer bytes are the local slice; [`Cache::concatenate`] takes the whole cache's metadata.
    pub fn new_shard(config: &Config, tp_rank: i32, dp_rank: i32) -> Result<Cache> {
        Cache::new_shard_on(config, tp_rank, dp_rank, config.device)
    }

    /// `kvp_cache_create_shard` on `device` (one process per device runs one shard).
    pub fn new_shard_on(config: &Config, tp_rank: i32, dp_rank: i32, device: Device) -> Result<Cache> {
        let opts = cache_options(device)?;
        let mut out: *mut sys::kvp_cache = ptr::null_mut();
        check(unsafe { sys::kvp_cache_create_shard(&config.raw, tp_rank, dp_rank, &opts, &mut out) })?;
        Cache::from_created(out, "kvp_cache_create_shard")
    }

    /// `kvp_cache_get_shard` (since 1.4): which slice of its config this cache holds (a whole
    /// cache: ranks 0 of sizes 1, every entry and page).
    pub fn shard(&self) -> Result<ShardInfo> {
        let mut out = empty_shard_info();
        check(unsafe { sys::kvp_cache_get_shard(self.ptr.as_ptr(), &mut out) })?;
        Ok(out)
    }

    pub(crate) fn from_created(out: *mut sys::kvp_cache, what: &str) -> Result<Cache> {
        let ptr = NonNull::new(out).ok_or_else(|| internal(format!("{what} returned NULL")))?;
        Ok(Cache { ptr })
    }

    /// The raw handle (still owned by this object).
    pub fn as_ptr(&self) -> *mut sys::kvp_cache {
        self.ptr.as_ptr()
    }

    /// `kvp_cache_get_config` (the config knows the cache's device).
    pub fn config(&self) -> Result<Config> {
        let mut raw = Config::empty_record();
        check(unsafe { sys::kvp_cache_get_config(self.ptr.as_ptr(), &mut raw) })?;
        Ok(Config { raw, device: self.device()? })
    }

    /// `kvp_cache_get_device`: where the pages live.
    pub fn device(&self) -> Result<Device> {
        let (mut ty, mut id) = (0, 0);
        check(unsafe { sys::kvp_cache_get_device(self.ptr.as_ptr(), &mut ty, &mut id) })?;
        Device::from_raw(ty, id)
    }

    /// `kvp_cache_get_layout`: the geometry of the layer buffers.
    pub fn layout(&self) -> Result<LayoutInfo> {
        let mut li = LayoutInfo { struct_size: size_of::<LayoutInfo>() as u32, ..Default::default() };
        check(unsafe { sys::kvp_cache_get_layout(self.ptr.as_ptr(), &mut li) })?;
        Ok(li)
    }

    /// Bytes of one layer.
    pub fn layer_bytes(&self) -> Result<usize> {
        Ok(self.layout()?.layer_bytes as usize)
    }

    /// `kvp_cache_get_async_error`: the sticky asynchronous error of a CUDA cache (a device fault
    /// or a device-side validation failure of earlier work), `None` when there is none. CPU
    /// caches never have one.
    pub fn async_error(&self) -> Result<Option<Error>> {
        let mut status = sys::KVP_OK;
        check(unsafe { sys::kvp_cache_get_async_error(self.ptr.as_ptr(), &mut status) })?;
        if status == sys::KVP_OK {
            return Ok(None);
        }
        Ok(Some(Error::new(status, crate::last_error_message())))
    }

    /// `kvp_cache_clear_async_error`: clears a recoverable asynchronous error so the cache
    /// accepts work again; a sticky device fault stays ([`ErrorKind::DeviceLost`](crate::ErrorKind)).
    pub fn clear_async_error(&mut self) -> Result<()> {
        check(unsafe { sys::kvp_cache_clear_async_error(self.ptr.as_ptr()) })
    }

    /// `kvp_cache_read_layer`: a copy of one layer's bytes (for a CUDA cache, on the device's
    /// legacy default stream, waited for).
    pub fn read_layer(&self, layer: u32) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.layer_bytes()?];
        check(unsafe {
            sys::kvp_cache_read_layer(self.ptr.as_ptr(), layer, out.as_mut_ptr() as *mut c_void, out.len(), ptr::null_mut())
        })?;
        Ok(out)
    }

    /// `kvp_cache_write_layer`: replaces one layer's bytes (`data` must hold exactly
    /// [`Cache::layer_bytes`]).
    pub fn write_layer(&mut self, layer: u32, data: &[u8]) -> Result<()> {
        check(unsafe {
            sys::kvp_cache_write_layer(self.ptr.as_ptr(), layer, data.as_ptr() as *const c_void, data.len(), ptr::null_mut())
        })
    }

    /// `kvp_cache_get_view`: a strided view of one layer that borrows the cache.
    pub fn view(&self, layer: u32, kind: ViewKind) -> Result<View<'_>> {
        Ok(View { t: self.raw_view(layer, kind)?, _cache: PhantomData })
    }

    /// A view that writes: borrows the cache mutably.
    pub fn view_mut(&mut self, layer: u32, kind: ViewKind) -> Result<ViewMut<'_>> {
        Ok(ViewMut { t: self.raw_view(layer, kind)?, _cache: PhantomData })
    }

    fn raw_view(&self, layer: u32, kind: ViewKind) -> Result<sys::kvp_tensor> {
        let mut t = MaybeUninit::<sys::kvp_tensor>::zeroed();
        check(unsafe { sys::kvp_cache_get_view(self.ptr.as_ptr(), layer, kind.to_raw(), t.as_mut_ptr()) })?;
        Ok(unsafe { t.assume_init() })
    }

    /// `kvp_concatenate`: writes new keys and values (`[T, H, D]` row-major slices of f32,
    /// [`F16`](crate::F16) or [`Bf16`](crate::Bf16), rows in the order `metadata` was built
    /// with) into one layer of a CPU cache. [`Cache::concatenate_batch`] packs that order
    /// itself.
    pub fn concatenate<T: InputElement>(&mut self, layer: u32, key: &[T], value: &[T], shape: [usize; 3],
                                        metadata: &Metadata) -> Result<()> {
        let (k, v) = host_key_value(key, value, shape)?;
        check(unsafe { sys::kvp_concatenate(self.ptr.as_ptr(), layer, &k, &v, metadata.ptr.as_ptr(), ptr::null_mut()) })
    }

    /// Writes a batch's keys and values into one layer, given **per request, in the order of
    /// the requests passed to [`Batch::build`]**: `keys[i]` and `values[i]` hold request `i`'s
    /// `num_scheduled` new tokens as `[n_i, H, D]` (H, D: the cache's KV heads and head dim;
    /// empty for an inactive request). The rows are packed in the builder's decode-first order
    /// ([`Batch::pack`]), so a caller never reorders by hand.
    pub fn concatenate_batch<T: InputElement>(&mut self, layer: u32, batch: &Batch, keys: &[&[T]], values: &[&[T]])
        -> Result<()> {
        let cfg = self.config()?;
        let row = elements(&[cfg.num_kv_heads() as usize, cfg.head_dim() as usize])?;
        let (k, v) = (batch.pack(keys, row)?, batch.pack(values, row)?);
        let shape = [batch.num_tokens(), cfg.num_kv_heads() as usize, cfg.head_dim() as usize];
        self.concatenate(layer, &k, &v, shape, batch.metadata())
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

    /// `kvp_cache_copy_pages`: page `dst[i]` receives the contents of page `src[i]`, in every
    /// layer. Destinations must be distinct and none of them a source.
    pub fn copy_pages(&mut self, src: &[i32], dst: &[i32]) -> Result<()> {
        if src.len() != dst.len() {
            return Err(invalid(format!("{} source pages but {} destination pages", src.len(), dst.len())));
        }
        check(unsafe {
            sys::kvp_cache_copy_pages(self.ptr.as_ptr(), src.as_ptr(), dst.as_ptr(), src.len(), ptr::null_mut())
        })
    }

    /// `kvp_cache_export_dlpack`: a zero-copy DLPack (0.6) tensor of one view. The tensor
    /// borrows the cache (it cannot outlive it) and calls the DLPack deleter when dropped.
    pub fn export_dlpack(&self, layer: u32, kind: ViewKind) -> Result<DlpackTensor<'_>> {
        let mut out: *mut sys::DLManagedTensor = ptr::null_mut();
        check(unsafe { sys::kvp_cache_export_dlpack(self.ptr.as_ptr(), layer, kind.to_raw(), 0, &mut out) })?;
        let ptr = NonNull::new(out).ok_or_else(|| internal("kvp_cache_export_dlpack returned NULL"))?;
        Ok(DlpackTensor { ptr, _cache: PhantomData })
    }
}

/// Host tensors of a key and a value slice of `shape` (`[T, H, D]`), checked to hold that shape.
pub(crate) fn host_key_value<T: InputElement>(key: &[T], value: &[T], shape: [usize; 3])
    -> Result<(sys::kvp_tensor, sys::kvp_tensor)> {
    let n = elements(&shape)?;
    if key.len() != n || value.len() != n {
        return Err(invalid(format!(
            "key/value hold {}/{} elements, shape {:?} needs {}",
            key.len(),
            value.len(),
            shape,
            n
        )));
    }
    Ok((
        host_tensor_of(key.as_ptr() as *const c_void, T::DTYPE, shape),
        host_tensor_of(value.as_ptr() as *const c_void, T::DTYPE, shape),
    ))
}

impl Drop for Cache {
    fn drop(&mut self) {
        // Cannot fail for a live handle this object owns; nothing useful to do on error.
        unsafe { sys::kvp_cache_destroy(self.ptr.as_ptr()) };
    }
}

/// A strided view of one layer of a [`Cache`] (no copy). Reads of a CUDA cache's view fail with
/// [`ErrorKind::Unsupported`](crate::ErrorKind) (the memory is on the device: use
/// [`Cache::read_layer`]).
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    t: sys::kvp_tensor,
    _cache: PhantomData<&'a Cache>,
}

/// A view of one layer that may be written ([`Cache::view_mut`]); it reads like a [`View`]
/// ([`ViewMut::as_view`]).
#[derive(Debug)]
pub struct ViewMut<'a> {
    t: sys::kvp_tensor,
    _cache: PhantomData<&'a mut Cache>,
}

/// Element offsets (in elements) of the sub-tensor at `prefix`: every element of the remaining
/// dimensions, in row-major order.
fn offsets(t: &sys::kvp_tensor, prefix: &[i64]) -> Result<Vec<isize>> {
    let ndim = t.ndim as usize;
    if prefix.len() > ndim {
        return Err(invalid(format!("index {:?} has more than {} dimensions", prefix, ndim)));
    }
    let mut base = 0i64;
    for (i, &x) in prefix.iter().enumerate() {
        if x < 0 || x >= t.shape[i] {
            return Err(invalid(format!("index {:?} is outside shape {:?}", prefix, &t.shape[..ndim])));
        }
        base += x * t.strides[i];
    }
    let mut out = vec![base as isize];
    for d in prefix.len()..ndim {
        let mut next = Vec::with_capacity(out.len() * t.shape[d] as usize);
        for &o in &out {
            next.extend((0..t.shape[d]).map(|i| o + (i * t.strides[d]) as isize));
        }
        out = next;
    }
    Ok(out)
}

fn host_data(t: &sys::kvp_tensor) -> Result<Dtype> {
    if t.device_type != sys::KVP_DEVICE_CPU {
        return Err(Error::new(sys::KVP_ERR_UNSUPPORTED, "the view is in device memory: use Cache::read_layer"));
    }
    Dtype::from_raw(t.dtype)
}

fn check_type<T: Element>(dtype: Dtype) -> Result<()> {
    if T::DTYPE != dtype {
        return Err(invalid(format!("the view holds {dtype} elements, not {}", T::DTYPE)));
    }
    Ok(())
}

/// Copies the elements at `offs` into `out` (raw bits of `dtype`).
unsafe fn gather(t: &sys::kvp_tensor, dtype: Dtype, offs: &[isize], out: *mut u8) {
    let size = dtype.size_bytes();
    let base = t.data as *const u8;
    for (i, &o) in offs.iter().enumerate() {
        ptr::copy_nonoverlapping(base.offset(o * size as isize), out.add(i * size), size);
    }
}

unsafe fn scatter(t: &sys::kvp_tensor, dtype: Dtype, offs: &[isize], src: *const u8) {
    let size = dtype.size_bytes();
    let base = t.data as *mut u8;
    for (i, &o) in offs.iter().enumerate() {
        ptr::copy_nonoverlapping(src.add(i * size), base.offset(o * size as isize), size);
    }
}

fn read_as<T: Element>(t: &sys::kvp_tensor, prefix: &[i64]) -> Result<Vec<T>> {
    let dtype = host_data(t)?;
    let offs = offsets(t, prefix)?;
    if T::DTYPE == dtype {
        let mut out = vec![T::default(); offs.len()];
        // SAFETY: the offsets are inside the view; `out` holds offs.len() elements of T.
        unsafe { gather(t, dtype, &offs, out.as_mut_ptr() as *mut u8) };
        return Ok(out);
    }
    let mut raw = vec![0u8; offs.len() * dtype.size_bytes()];
    unsafe { gather(t, dtype, &offs, raw.as_mut_ptr()) };
    let mut out = vec![T::default(); offs.len()];
    unsafe { convert_raw(raw.as_ptr() as *const c_void, dtype, out.as_mut_ptr() as *mut c_void, T::DTYPE, offs.len())? };
    Ok(out)
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

    /// Element type of the cache.
    pub fn dtype(&self) -> Result<Dtype> {
        Dtype::from_raw(self.t.dtype)
    }

    /// The raw descriptor (a device pointer for a CUDA cache).
    pub fn raw(&self) -> &sys::kvp_tensor {
        &self.t
    }

    /// The elements of the sub-tensor at the leading indices `prefix` (e.g. `[page, row]` of a
    /// keys view gives one token's `[H, D]`), row-major, as `T`: the bits themselves when `T` is
    /// the cache's dtype, else converted (`kvp_convert`, e.g. a bf16 cache read as f32).
    pub fn read<T: Element>(&self, prefix: &[i64]) -> Result<Vec<T>> {
        read_as(&self.t, prefix)
    }

    /// [`View::read`] as f32, whatever the cache's dtype.
    pub fn read_f32(&self, prefix: &[i64]) -> Result<Vec<f32>> {
        read_as(&self.t, prefix)
    }

    /// One element as f32 (any dtype); `None` when the index is not a full, in-range index or
    /// the memory is on a device.
    pub fn get_f32(&self, index: &[i64]) -> Option<f32> {
        self.get(index)
    }

    /// One element as `T` (converted when the dtypes differ); `None` as for [`View::get_f32`].
    pub fn get<T: Element>(&self, index: &[i64]) -> Option<T> {
        if index.len() != self.t.ndim as usize {
            return None;
        }
        read_as::<T>(&self.t, index).ok().and_then(|v| v.first().copied())
    }
}

impl<'a> ViewMut<'a> {
    /// A read-only view of the same memory, borrowing this one.
    pub fn as_view(&self) -> View<'_> {
        View { t: self.t, _cache: PhantomData }
    }

    /// Overwrites the sub-tensor at `prefix` with `data` (row-major, exactly as many elements as
    /// [`View::read`] returns), converting to the cache's dtype with its rounding.
    pub fn write<T: Element>(&mut self, prefix: &[i64], data: &[T]) -> Result<()> {
        let dtype = host_data(&self.t)?;
        let offs = offsets(&self.t, prefix)?;
        if data.len() != offs.len() {
            return Err(invalid(format!("{} elements given, the sub-tensor at {:?} has {}", data.len(), prefix, offs.len())));
        }
        let mut raw = vec![0u8; offs.len() * dtype.size_bytes()];
        unsafe {
            convert_raw(data.as_ptr() as *const c_void, T::DTYPE, raw.as_mut_ptr() as *mut c_void, dtype, data.len())?;
            scatter(&self.t, dtype, &offs, raw.as_ptr());
        }
        Ok(())
    }

    /// [`ViewMut::write`] of f32 values.
    pub fn write_f32(&mut self, prefix: &[i64], data: &[f32]) -> Result<()> {
        self.write(prefix, data)
    }

    /// Overwrites the sub-tensor with raw elements of exactly the cache's dtype.
    pub fn write_exact<T: Element>(&mut self, prefix: &[i64], data: &[T]) -> Result<()> {
        check_type::<T>(host_data(&self.t)?)?;
        self.write(prefix, data)
    }
}

/// An owned `DLManagedTensor` exported from a [`Cache`]; its deleter runs on drop.
///
/// Hand it to a DLPack consumer with [`DlpackTensor::into_raw`] (the consumer calls the
/// deleter); the data stays valid only while the cache lives, which the borrow enforces for as
/// long as the tensor is held here.
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
