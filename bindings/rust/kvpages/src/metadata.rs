//! Runtime metadata of one step (`kvpages/metadata.h`, `json.h`) and the order-safe batch.
use std::mem::{size_of, MaybeUninit};
use std::os::raw::c_char;
use std::ptr::{self, NonNull};

use crate::{check, internal, invalid, sys, Config, ErrorKind, Layout, Result};

/// One request of a step for [`Batch::build`] / [`Metadata::build`] (`kvp_batch_request`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchRequest {
    /// Tokens already in the cache.
    pub num_computed: i64,
    /// Tokens written this step (0 = inactive, no row).
    pub num_scheduled: i64,
    /// The request's pages in logical order (page 0 is the reserved null page).
    pub page_ids: Vec<i32>,
}

/// Options of the batch builder (`kvp_batch_options`); zero and `false` mean default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOptions {
    /// Page-table rows (≥ active requests); 0 = the config's hint, else the active count.
    pub max_num_reqs: i64,
    /// Token bucket (≥ scheduled tokens); 0 = the config's hint, else the scheduled count.
    pub max_num_tokens: i64,
    /// Emit the seed's distribution `[decode, decode, total]` (`KVP_BATCH_FLAG_SEED_DISTRIBUTION`).
    pub seed_distribution: bool,
    /// v2: tight slice columns (`KVP_BATCH_FLAG_TIGHT_SLICES`).
    pub tight_slices: bool,
    /// Keep the caller's request order, no decode-first reordering (`KVP_BATCH_FLAG_KEEP_ORDER`).
    pub keep_order: bool,
    /// Keys, values and queries stay packed in request order whatever the row order
    /// (`KVP_BATCH_FLAG_REQUEST_ORDER`): the metadata records where each row's tokens are, and
    /// [`Batch::pack`] packs in request order.
    pub request_order: bool,
}

impl BatchOptions {
    fn to_raw(self) -> Result<sys::kvp_batch_options> {
        let mut o = sys::kvp_batch_options::default();
        check(unsafe { sys::kvp_batch_options_init(&mut o, size_of::<sys::kvp_batch_options>() as u32) })?;
        o.max_num_reqs = self.max_num_reqs;
        o.max_num_tokens = self.max_num_tokens;
        o.flags = if self.seed_distribution { sys::KVP_BATCH_FLAG_SEED_DISTRIBUTION } else { 0 }
            | if self.tight_slices { sys::KVP_BATCH_FLAG_TIGHT_SLICES } else { 0 }
            | if self.keep_order { sys::KVP_BATCH_FLAG_KEEP_ORDER } else { 0 }
            | if self.request_order { sys::KVP_BATCH_FLAG_REQUEST_ORDER } else { 0 };
        Ok(o)
    }
}

/// One array of a [`Metadata`] (`KVP_METADATA_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetadataField {
    PagesTables,
    ContextLens,
    QueryStartLoc,
    NumSeqs,
    SlotMapping,
    NumKvUpdateSlices,
    RequestDistribution,
    PositionIds,
    /// Where each row's tokens are in request-order packing (`KVP_BATCH_FLAG_REQUEST_ORDER`).
    TokenStarts,
}

impl MetadataField {
    fn to_raw(self) -> sys::kvp_metadata_field {
        match self {
            MetadataField::PagesTables => sys::KVP_METADATA_PAGES_TABLES,
            MetadataField::ContextLens => sys::KVP_METADATA_CONTEXT_LENS,
            MetadataField::QueryStartLoc => sys::KVP_METADATA_QUERY_START_LOC,
            MetadataField::NumSeqs => sys::KVP_METADATA_NUM_SEQS,
            MetadataField::SlotMapping => sys::KVP_METADATA_SLOT_MAPPING,
            MetadataField::NumKvUpdateSlices => sys::KVP_METADATA_NUM_KV_UPDATE_SLICES,
            MetadataField::RequestDistribution => sys::KVP_METADATA_REQUEST_DISTRIBUTION,
            MetadataField::PositionIds => sys::KVP_METADATA_POSITION_IDS,
            MetadataField::TokenStarts => sys::KVP_METADATA_TOKEN_STARTS,
        }
    }
}

/// Metadata arrays written by hand (host memory), for [`Metadata::from_host_arrays`]. An empty
/// vector is an absent array. v3 needs `pages_tables`, `context_lens`, `query_start_loc` and
/// `request_distribution` (or `num_seqs`); v2 needs `slot_mapping` (`[3, N]` row-major) and
/// `num_kv_update_slices`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostArrays {
    pub layout: Layout,
    /// Tokens per page; 0 = the cache's.
    pub page_size: i64,
    /// `[num_reqs, pages_per_req]` row-major.
    pub pages_tables: Vec<i32>,
    pub pages_per_req: i64,
    pub context_lens: Vec<i32>,
    pub query_start_loc: Vec<i32>,
    pub num_seqs: Vec<i32>,
    pub slot_mapping: Vec<i32>,
    pub num_kv_update_slices: Vec<i32>,
    pub request_distribution: Vec<i32>,
    pub position_ids: Vec<i32>,
}

/// Runtime metadata of one step (`kvp_metadata`). Built by [`Batch::build`] or
/// [`Metadata::build`], read from JSON, or made of [`HostArrays`] (which it then owns).
#[derive(Debug)]
pub struct Metadata {
    pub(crate) ptr: NonNull<sys::kvp_metadata>,
    /// Arrays a borrowed handle points into; their heap memory does not move with the Vec.
    _arrays: Option<Box<HostArrays>>,
}

// SAFETY: host metadata is plain memory owned by this object; moving it between threads is
// allowed, and `&self` methods only read it.
unsafe impl Send for Metadata {}
unsafe impl Sync for Metadata {}

fn opt_array(v: &[i32]) -> (*const i32, i64) {
    if v.is_empty() {
        (ptr::null(), 0)
    } else {
        (v.as_ptr(), v.len() as i64)
    }
}

impl Metadata {
    fn from_created(out: *mut sys::kvp_metadata, what: &str) -> Result<Metadata> {
        let ptr = NonNull::new(out).ok_or_else(|| internal(format!("{what} returned NULL")))?;
        Ok(Metadata { ptr, _arrays: None })
    }

    /// `kvp_metadata_build` with default options. Returns the metadata and the row order:
    /// `order[row]` is the index of the request in that row, and keys/values must be packed in
    /// that order. Prefer [`Batch::build`], which packs for you.
    pub fn build(config: &Config, requests: &[BatchRequest]) -> Result<(Metadata, Vec<usize>)> {
        let batch = Batch::build(config, requests, &BatchOptions::default())?;
        Ok((batch.metadata, batch.order))
    }

    /// `kvp_metadata_create_empty`: an empty batch with consistent shapes (writes nothing).
    pub fn empty(layout: Layout, num_tokens: i64, max_num_reqs: i64, max_pages: i64, page_size: i64)
        -> Result<Metadata> {
        let mut out = ptr::null_mut();
        check(unsafe {
            sys::kvp_metadata_create_empty(layout.to_raw(), num_tokens, max_num_reqs, max_pages, page_size, &mut out)
        })?;
        Metadata::from_created(out, "kvp_metadata_create_empty")
    }

    /// `kvp_metadata_create` over arrays written by hand (checked structurally now, by value
    /// when used).
    pub fn from_host_arrays(arrays: HostArrays) -> Result<Metadata> {
        let arrays = Box::new(arrays);
        let mut d = MaybeUninit::<sys::kvp_metadata_desc>::zeroed();
        check(unsafe { sys::kvp_metadata_desc_init(d.as_mut_ptr(), size_of::<sys::kvp_metadata_desc>() as u32) })?;
        let mut d = unsafe { d.assume_init() };
        d.version = arrays.layout.to_raw();
        d.page_size = arrays.page_size;
        let (p, n) = opt_array(&arrays.pages_tables);
        d.pages_tables = p;
        d.pages_per_req = arrays.pages_per_req;
        d.num_reqs = if arrays.pages_per_req > 0 { n / arrays.pages_per_req } else { 0 };
        if arrays.pages_per_req > 0 && n % arrays.pages_per_req != 0 {
            return Err(invalid(format!("pages_tables has {n} entries, not a multiple of {}", arrays.pages_per_req)));
        }
        (d.context_lens, d.context_lens_len) = opt_array(&arrays.context_lens);
        (d.query_start_loc, d.query_start_loc_len) = opt_array(&arrays.query_start_loc);
        (d.num_seqs, d.num_seqs_len) = opt_array(&arrays.num_seqs);
        let (p, n) = opt_array(&arrays.slot_mapping);
        if n % 3 != 0 {
            return Err(invalid(format!("slot_mapping has {n} entries, not [3, N]")));
        }
        (d.slot_mapping, d.num_slices) = (p, n / 3);
        (d.num_kv_update_slices, d.num_kv_update_slices_len) = opt_array(&arrays.num_kv_update_slices);
        (d.request_distribution, d.request_distribution_len) = opt_array(&arrays.request_distribution);
        (d.position_ids, d.position_ids_len) = opt_array(&arrays.position_ids);
        let mut out = ptr::null_mut();
        check(unsafe { sys::kvp_metadata_create(&d, &mut out) })?;
        let mut md = Metadata::from_created(out, "kvp_metadata_create")?;
        md._arrays = Some(arrays);
        Ok(md)
    }

    /// `kvp_metadata_create` over a caller-built descriptor: metadata whose arrays live in device
    /// memory (`device_type` CUDA, read by the device code of a CUDA cache), or any arrays the
    /// caller keeps elsewhere. The descriptor is read now; its arrays are borrowed.
    ///
    /// # Safety
    /// Every array pointer must be valid for its length (host memory, or device memory of
    /// `desc.device_id` for CUDA metadata) and stay valid, unchanged, while the returned
    /// `Metadata` is used, including by work still queued on a stream.
    pub unsafe fn from_desc(desc: &sys::kvp_metadata_desc) -> Result<Metadata> {
        let mut out = ptr::null_mut();
        check(sys::kvp_metadata_create(desc, &mut out))?;
        Metadata::from_created(out, "kvp_metadata_create")
    }

    /// The raw handle (still owned by this object).
    pub fn as_ptr(&self) -> *mut sys::kvp_metadata {
        self.ptr.as_ptr()
    }

    /// `kvp_metadata_get_array`: one array (empty when absent).
    pub fn array(&self, field: MetadataField) -> Result<&[i32]> {
        let (mut data, mut len) = (ptr::null(), 0i64);
        check(unsafe { sys::kvp_metadata_get_array(self.ptr.as_ptr(), field.to_raw(), &mut data, &mut len) })?;
        if data.is_null() || len <= 0 {
            return Ok(&[]);
        }
        // SAFETY: host arrays owned by (or borrowed for) the handle, valid while it lives.
        Ok(unsafe { std::slice::from_raw_parts(data, len as usize) })
    }

    /// `kvp_metadata_get_desc`: the layout version, page size and array lengths.
    pub fn desc(&self) -> Result<sys::kvp_metadata_desc> {
        let mut d = MaybeUninit::<sys::kvp_metadata_desc>::zeroed();
        unsafe { (*d.as_mut_ptr()).struct_size = size_of::<sys::kvp_metadata_desc>() as u32 };
        check(unsafe { sys::kvp_metadata_get_desc(self.ptr.as_ptr(), d.as_mut_ptr()) })?;
        Ok(unsafe { d.assume_init() })
    }

    /// `kvp_metadata_to_json`.
    pub fn to_json(&self) -> Result<String> {
        json_text(|buf, cap, written| unsafe { sys::kvp_metadata_to_json(self.ptr.as_ptr(), buf, cap, written) })
    }

    /// `kvp_metadata_from_json`: owning host metadata from [`Metadata::to_json`] text.
    pub fn from_json(json: &str) -> Result<Metadata> {
        let mut out = ptr::null_mut();
        check(unsafe { sys::kvp_metadata_from_json(json.as_ptr() as *const c_char, json.len(), &mut out) })?;
        Metadata::from_created(out, "kvp_metadata_from_json")
    }
}

impl Drop for Metadata {
    fn drop(&mut self) {
        unsafe { sys::kvp_metadata_destroy(self.ptr.as_ptr()) };
    }
}

/// Size-then-fill of a JSON writer (`*_to_json`).
pub(crate) fn json_text(write: impl Fn(*mut c_char, usize, *mut usize) -> sys::kvp_status) -> Result<String> {
    let mut need = 0usize;
    match check(write(ptr::null_mut(), 0, &mut need)) {
        Err(e) if e.kind() == ErrorKind::BufferTooSmall => {}
        other => other?,
    }
    let mut buf = vec![0u8; need];
    let mut written = 0usize;
    check(write(buf.as_mut_ptr() as *mut c_char, buf.len(), &mut written))?;
    buf.truncate(written);
    String::from_utf8(buf).map_err(|_| internal("JSON text is not UTF-8"))
}

/// The metadata of one step together with the builder's row order, so keys and values are
/// always packed right: [`Batch::pack`] and [`Cache::concatenate_batch`](crate::Cache::concatenate_batch)
/// take each request's tokens in the caller's request order and put them in the row order the
/// builder chose (decode requests first).
///
/// ```
/// use kvpages::{Batch, BatchOptions, BatchRequest, Config, ConfigOptions, Dtype};
/// let cfg = Config::create(&ConfigOptions { num_hidden_layers: 1, num_kv_heads: 1, head_dim: 128,
///     max_model_length: 64, page_size: 16, dtype: Dtype::F32, budget_bytes: 1 << 20, ..Default::default() })?;
/// let reqs = [BatchRequest { num_computed: 0, num_scheduled: 2, page_ids: vec![1] },  // prefill
///             BatchRequest { num_computed: 5, num_scheduled: 1, page_ids: vec![2] }]; // decode
/// let batch = Batch::build(&cfg, &reqs, &BatchOptions::default())?;
/// assert_eq!(batch.order(), &[1, 0]);                        // the decode row comes first
/// let packed = batch.pack(&[&[10, 11][..], &[20][..]], 1)?;  // per request, in request order
/// assert_eq!(packed, vec![20, 10, 11]);                      // in row order
/// # Ok::<(), kvpages::Error>(())
/// ```
#[derive(Debug)]
pub struct Batch {
    metadata: Metadata,
    order: Vec<usize>,
    scheduled: Vec<usize>,
    request_order: bool,
}

impl Batch {
    /// `kvp_metadata_build`: the metadata of a step for `config`'s layout, remembering which
    /// request occupies each row.
    pub fn build(config: &Config, requests: &[BatchRequest], options: &BatchOptions) -> Result<Batch> {
        let raw: Vec<sys::kvp_batch_request> = requests
            .iter()
            .map(|r| sys::kvp_batch_request {
                num_computed: r.num_computed,
                num_scheduled: r.num_scheduled,
                page_ids: if r.page_ids.is_empty() { ptr::null() } else { r.page_ids.as_ptr() },
                num_pages: r.page_ids.len() as i64,
            })
            .collect();
        let n = u32::try_from(raw.len()).map_err(|_| invalid(format!("{} requests", raw.len())))?;
        let opts = options.to_raw()?;
        let mut order = vec![-1i32; requests.len()];
        let mut out = ptr::null_mut();
        check(unsafe { sys::kvp_metadata_build(&config.raw, raw.as_ptr(), n, &opts, order.as_mut_ptr(), &mut out) })?;
        let metadata = Metadata::from_created(out, "kvp_metadata_build")?;
        let order = order.into_iter().filter(|&i| i >= 0).map(|i| i as usize).collect();
        let scheduled = requests.iter().map(|r| r.num_scheduled.max(0) as usize).collect();
        Ok(Batch { metadata, order, scheduled, request_order: options.request_order })
    }

    /// The metadata, for [`Cache::concatenate`](crate::Cache::concatenate) and attention.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// `order()[row]` is the index (into the requests given to [`Batch::build`]) of the request
    /// in that row; only active requests have a row.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Tokens written by the step (rows of the packed key/value tensors).
    pub fn num_tokens(&self) -> usize {
        self.order.iter().map(|&i| self.scheduled[i]).sum()
    }

    /// Packs per-request data into row order (request order with `request_order`): `per_request[i]` is request `i`'s data (in the
    /// order the requests were given), `row_len` elements per scheduled token (`H * D` for keys
    /// or values). Every slice must hold exactly `num_scheduled * row_len` elements.
    pub fn pack<T: Copy>(&self, per_request: &[&[T]], row_len: usize) -> Result<Vec<T>> {
        if per_request.len() != self.scheduled.len() {
            return Err(invalid(format!(
                "{} per-request slices for a batch of {} requests",
                per_request.len(),
                self.scheduled.len()
            )));
        }
        for (i, (data, &n)) in per_request.iter().zip(&self.scheduled).enumerate() {
            if Some(data.len()) != n.checked_mul(row_len) {
                return Err(invalid(format!(
                    "request {i}: {} elements given, {n} scheduled tokens of {row_len} need {}",
                    data.len(),
                    n.saturating_mul(row_len)
                )));
            }
        }
        let mut out = Vec::with_capacity(self.num_tokens() * row_len);
        if self.request_order {
            per_request.iter().for_each(|data| out.extend_from_slice(data));
        } else {
            self.order.iter().for_each(|&i| out.extend_from_slice(per_request[i]));
        }
        Ok(out)
    }

    /// The metadata, giving up the order.
    pub fn into_metadata(self) -> Metadata {
        self.metadata
    }
}
