//! Ragged paged attention over a cache (`kvpages/attention.h`, since 1.1).
use std::os::raw::c_void;
use std::ptr;

use crate::{check, elements, host_tensor, invalid, sys, Cache, Metadata, Result};

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
                .map_err(|_| invalid(format!("{} sinks", s.len())))?;
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
            return Err(invalid(format!("queries/out hold {}/{} elements, shape {:?} needs {} ([T, Hq, D])",
                                          queries.len(), out.len(), shape, nq)));
        }
        if let Some((key, value)) = kv {
            if key.len() != nkv || value.len() != nkv {
                return Err(invalid(format!("keys/values hold {}/{} elements, shape {:?} needs {} ([T, Hkv, D])",
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

