//! Cache groups (`kvpages/group.h`, since 1.4): every shard of a sharded config in one process,
//! written with one call per layer.
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::os::raw::c_void;
use std::ptr::{self, NonNull};

use crate::cache::{cache_options, host_key_value};
use crate::{check, internal, invalid, sys, Cache, Config, Device, InputElement, Metadata, Result};

/// A cache group: the `kv_head_shards` x `data_parallel_size` shard caches of a config. Shard
/// `i` is tensor rank `i / data_parallel_size`, data rank `i % data_parallel_size`; every
/// per-shard slice of this type's methods is in that order.
#[derive(Debug)]
pub struct CacheGroup {
    ptr: NonNull<sys::kvp_cache_group>,
}

// SAFETY: kvpages handles may be moved between threads; `&self` methods call only functions
// documented as thread-safe (`kvp_cache_group_get_num_shards`, `kvp_cache_group_get_shard`).
unsafe impl Send for CacheGroup {}
unsafe impl Sync for CacheGroup {}

impl CacheGroup {
    /// `kvp_cache_group_create` with every shard on the device the config was budgeted for
    /// ([`Config::device`]; the CPU for CPU groups).
    pub fn new(config: &Config) -> Result<CacheGroup> {
        CacheGroup::create(config, config.device, &[])
    }

    /// `kvp_cache_group_create` on CUDA devices: shard `i` on device `device_ids[i]` (one
    /// ordinal per shard).
    pub fn new_cuda(config: &Config, device_ids: &[i32]) -> Result<CacheGroup> {
        CacheGroup::create(config, Device::Cuda(0), device_ids)
    }

    fn create(config: &Config, device: Device, device_ids: &[i32]) -> Result<CacheGroup> {
        let opts = cache_options(device)?;
        let count = u32::try_from(device_ids.len()).map_err(|_| invalid("too many device ids"))?;
        let ids = if device_ids.is_empty() { ptr::null() } else { device_ids.as_ptr() };
        let mut out: *mut sys::kvp_cache_group = ptr::null_mut();
        check(unsafe { sys::kvp_cache_group_create(&config.raw, ids, count, &opts, &mut out) })?;
        let ptr = NonNull::new(out).ok_or_else(|| internal("kvp_cache_group_create returned NULL"))?;
        Ok(CacheGroup { ptr })
    }

    /// The raw handle (still owned by this object).
    pub fn as_ptr(&self) -> *mut sys::kvp_cache_group {
        self.ptr.as_ptr()
    }

    /// `kvp_cache_group_get_num_shards`: `kv_head_shards` x `data_parallel_size`.
    pub fn num_shards(&self) -> Result<u32> {
        let mut out = 0u32;
        check(unsafe { sys::kvp_cache_group_get_num_shards(self.ptr.as_ptr(), &mut out) })?;
        Ok(out)
    }

    /// `kvp_cache_group_get_shard`: the cache of shard (`tp_rank`, `dp_rank`), borrowed from the
    /// group. It reads like any [`Cache`] (views, layers, [`Cache::shard`], serialization) but
    /// cannot outlive the group, and dropping it leaves the shard in the group.
    pub fn shard(&self, tp_rank: i32, dp_rank: i32) -> Result<GroupShard<'_>> {
        let mut out: *mut sys::kvp_cache = ptr::null_mut();
        check(unsafe { sys::kvp_cache_group_get_shard(self.ptr.as_ptr(), tp_rank, dp_rank, &mut out) })?;
        let cache = Cache::from_created(out, "kvp_cache_group_get_shard")?;
        Ok(GroupShard { cache: ManuallyDrop::new(cache), _group: PhantomData })
    }

    /// `kvp_cache_group_concatenate` on CPU shards: `keys[i]` and `values[i]` (row-major f32,
    /// [`F16`](crate::F16) or [`Bf16`](crate::Bf16)) of shape `shapes[i]` are shard `i`'s new
    /// keys and values, the full `[T, H, D]` or the shard's own heads `[T, heads, D]`; one
    /// metadata built for the whole cache serves every shard. Every shard is validated before
    /// any is written: an error names the shard and changes none.
    pub fn concatenate<T: InputElement>(&mut self, layer: u32, keys: &[&[T]], values: &[&[T]], shapes: &[[usize; 3]],
                                        metadata: &Metadata) -> Result<()> {
        if keys.len() != values.len() || keys.len() != shapes.len() {
            return Err(invalid(format!(
                "{} keys, {} values and {} shapes: one of each per shard",
                keys.len(),
                values.len(),
                shapes.len()
            )));
        }
        let mut k = Vec::with_capacity(keys.len());
        let mut v = Vec::with_capacity(keys.len());
        for ((key, value), &shape) in keys.iter().zip(values).zip(shapes) {
            let (kt, vt) = host_key_value(key, value, shape)?;
            k.push(kt);
            v.push(vt);
        }
        // SAFETY: the tensors describe the borrowed host slices, which outlive this CPU call.
        unsafe { self.concatenate_raw(layer, &k, &v, metadata, None) }
    }

    /// `kvp_cache_group_concatenate` with caller-described tensors and streams: the way to write
    /// CUDA shards from device memory. `streams`: one per shard, or `None` (every device's
    /// legacy default stream; ignored for CPU shards).
    ///
    /// # Safety
    /// `keys[i]` and `values[i]` must describe memory valid for their shape and strides on shard
    /// `i`'s device, unchanged until the work is done (when the call returns for CPU shards, when
    /// `streams[i]` reaches it for CUDA shards); each stream must be null or a live
    /// `cudaStream_t` of shard `i`'s device.
    pub unsafe fn concatenate_raw(&mut self, layer: u32, keys: &[sys::kvp_tensor], values: &[sys::kvp_tensor],
                                  metadata: &Metadata, streams: Option<&[*mut c_void]>) -> Result<()> {
        if keys.len() != values.len() || streams.map_or(false, |s| s.len() != keys.len()) {
            return Err(invalid(format!("{} keys, {} values, {:?} streams: one of each per shard", keys.len(),
                                       values.len(), streams.map(|s| s.len()))));
        }
        let count = u32::try_from(keys.len()).map_err(|_| invalid("too many shards"))?;
        let streams = streams.map_or(ptr::null(), |s| s.as_ptr());
        check(sys::kvp_cache_group_concatenate(self.ptr.as_ptr(), layer, keys.as_ptr(), values.as_ptr(), count,
                                               metadata.ptr.as_ptr(), streams))
    }
}

impl Drop for CacheGroup {
    fn drop(&mut self) {
        // Destroys every shard with the group; cannot fail for a live handle this object owns.
        unsafe { sys::kvp_cache_group_destroy(self.ptr.as_ptr()) };
    }
}

/// A shard of a [`CacheGroup`]: a [`Cache`] borrowed from the group (it derefs to `&Cache`),
/// which owns it. Dropping it does not destroy the shard; the borrow keeps the group alive.
#[derive(Debug)]
pub struct GroupShard<'g> {
    cache: ManuallyDrop<Cache>,
    _group: PhantomData<&'g CacheGroup>,
}

impl Deref for GroupShard<'_> {
    type Target = Cache;
    fn deref(&self) -> &Cache {
        &self.cache
    }
}
