//! Saving and loading caches (`kvpages/serialize.h`): the whole cache or chosen pages, to and
//! from memory, files and `std::io` streams; inspecting a blob.
use std::io::{Read, Write};
use std::mem::size_of;
use std::os::raw::c_void;
use std::path::Path;
use std::ffi::CString;
use std::ptr;

use crate::cache::cache_options;
use crate::{c_path, check, invalid, sys, Cache, Config, Device, Error, ErrorKind, Result, ShardInfo};

/// What to serialize (`kvp_serialize_options`): every page (`pages: None`) or the listed pages
/// in that order, and the checksummed chunk size (0 = 1 MiB).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SerializeOptions<'a> {
    /// Pages to write, each in `[0, num_pages)`, no duplicates; `None` = all.
    pub pages: Option<&'a [i32]>,
    /// Payload bytes per chunk; 0 = 1 MiB, else 64 B … 1 GiB.
    pub chunk_bytes: u64,
}

impl SerializeOptions<'_> {
    /// The options for the listed pages (e.g. the pages a request used).
    pub fn pages(pages: &[i32]) -> SerializeOptions<'_> {
        SerializeOptions { pages: Some(pages), chunk_bytes: 0 }
    }

    /// The C record; `page_ids` borrows `self.pages`.
    fn to_raw(self) -> Result<sys::kvp_serialize_options> {
        let mut o = sys::kvp_serialize_options {
            struct_size: 0,
            abi_version: 0,
            page_ids: ptr::null(),
            num_page_ids: 0,
            flags: 0,
            chunk_bytes: 0,
        };
        check(unsafe { sys::kvp_serialize_options_init(&mut o, size_of::<sys::kvp_serialize_options>() as u32) })?;
        if let Some(p) = self.pages {
            o.page_ids = p.as_ptr();
            o.num_page_ids = u32::try_from(p.len()).map_err(|_| invalid(format!("{} page ids", p.len())))?;
        }
        o.chunk_bytes = self.chunk_bytes;
        Ok(o)
    }
}

/// Options of the loads that create a cache (`kvp_deserialize_options`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeserializeOptions {
    /// Where the new cache lives (default the CPU).
    pub device: Device,
    /// Refuse blobs whose cache would take more bytes ([`ErrorKind::FormatMismatch`]); 0 = the
    /// default (1 GiB plus the input's size when known), `u64::MAX` = no limit.
    pub max_cache_bytes: u64,
}

/// Calls `f` with the C options of `o` (the cache options they point to live on the stack).
fn with_deserialize_options<R>(o: &DeserializeOptions, f: impl FnOnce(&sys::kvp_deserialize_options) -> Result<R>)
    -> Result<R> {
    let cache_opts = cache_options(o.device)?;
    let mut d = sys::kvp_deserialize_options {
        struct_size: 0,
        abi_version: 0,
        cache_options: ptr::null(),
        max_cache_bytes: 0,
        flags: 0,
        _reserved: 0,
    };
    check(unsafe { sys::kvp_deserialize_options_init(&mut d, size_of::<sys::kvp_deserialize_options>() as u32) })?;
    d.cache_options = &cache_opts;
    d.max_cache_bytes = o.max_cache_bytes;
    f(&d)
}

/// Header fields of a blob (`kvp_serialized_info`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SerializedInfo {
    pub format_major: u32,
    pub format_minor: u32,
    pub header_size: u32,
    pub flags: u64,
    /// `version_number()` of the library that wrote the blob.
    pub writer_version: u32,
    pub header_checksum: u64,
    /// Pages carried (per layer); the page-id fields are 0 when only a header was inspected.
    pub num_stored_pages: u64,
    pub first_page_id: u64,
    pub last_page_id: u64,
    pub page_bytes_per_layer: u64,
    pub chunk_bytes: u64,
    pub num_chunks: u64,
    pub payload_bytes: u64,
    pub total_bytes: u64,
    /// The config stored in the blob (for a CPU cache).
    pub config: Config,
    /// The slice the blob holds (since 1.4; a whole cache's blob: ranks 0 of sizes 1).
    pub shard: ShardInfo,
}

impl SerializedInfo {
    fn from_raw(i: &sys::kvp_serialized_info) -> SerializedInfo {
        SerializedInfo {
            format_major: i.format_major,
            format_minor: i.format_minor,
            header_size: i.header_size,
            flags: i.flags,
            writer_version: i.writer_version,
            header_checksum: i.header_checksum,
            num_stored_pages: i.num_stored_pages,
            first_page_id: i.first_page_id,
            last_page_id: i.last_page_id,
            page_bytes_per_layer: i.page_bytes_per_layer,
            chunk_bytes: i.chunk_bytes,
            num_chunks: i.num_chunks,
            payload_bytes: i.payload_bytes,
            total_bytes: i.total_bytes,
            config: Config { raw: i.config, device: Device::Cpu },
            shard: i.shard,
        }
    }
}

fn inspect_with(f: impl FnOnce(&mut sys::kvp_serialized_info) -> sys::kvp_status) -> Result<SerializedInfo> {
    let mut info =
        sys::kvp_serialized_info { struct_size: size_of::<sys::kvp_serialized_info>() as u32, ..Default::default() };
    check(f(&mut info))?;
    Ok(SerializedInfo::from_raw(&info))
}

fn inspect_flags(verify: bool) -> u32 {
    if verify {
        sys::KVP_INSPECT_VERIFY
    } else {
        0
    }
}

/// `kvp_serialized_inspect`: checks a blob's header (`verify`: and every checksum of the whole
/// blob) and returns its fields.
pub fn inspect(blob: &[u8], verify: bool) -> Result<SerializedInfo> {
    inspect_with(|out| unsafe { sys::kvp_serialized_inspect(blob.as_ptr() as *const c_void, blob.len(), inspect_flags(verify), out) })
}

/// `kvp_serialized_inspect_file`: [`inspect`] of a file, streaming.
pub fn inspect_file(path: impl AsRef<Path>, verify: bool) -> Result<SerializedInfo> {
    let p = c_path(path.as_ref())?;
    inspect_with(|out| unsafe { sys::kvp_serialized_inspect_file(p.as_ptr(), inspect_flags(verify), out) })
}

/// State of a writer or reader callback: the stream and the first I/O error it returned.
struct Stream<'a, S: ?Sized> {
    inner: &'a mut S,
    error: Option<std::io::Error>,
}

unsafe extern "C" fn write_cb<W: Write + ?Sized>(data: *const c_void, size: usize, user: *mut c_void) -> i32 {
    let s = &mut *(user as *mut Stream<'_, W>);
    let bytes = std::slice::from_raw_parts(data as *const u8, size);
    // A panic must not unwind into C: it becomes an I/O error.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.inner.write_all(bytes))) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            s.error = Some(e);
            1
        }
        Err(_) => {
            s.error = Some(std::io::Error::new(std::io::ErrorKind::Other, "the writer panicked"));
            2
        }
    }
}

unsafe extern "C" fn read_cb<R: Read + ?Sized>(dst: *mut c_void, size: usize, read_out: *mut usize, user: *mut c_void)
    -> i32 {
    let s = &mut *(user as *mut Stream<'_, R>);
    let buf = std::slice::from_raw_parts_mut(dst as *mut u8, size);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loop {
        match s.inner.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    }));
    match result {
        Ok(Ok(n)) => {
            *read_out = n;
            0
        }
        Ok(Err(e)) => {
            s.error = Some(e);
            1
        }
        Err(_) => {
            s.error = Some(std::io::Error::new(std::io::ErrorKind::Other, "the reader panicked"));
            2
        }
    }
}

/// The result of a streaming call: the stream's own I/O error, when it caused the failure, is
/// put in the message.
fn stream_result<S: ?Sized>(status: sys::kvp_status, stream: &Stream<'_, S>) -> Result<()> {
    check(status).map_err(|e| match (&stream.error, e.kind()) {
        (Some(io), ErrorKind::Io) => Error::new(e.code, format!("{} ({io})", e.message)),
        _ => e,
    })
}

fn page_list(pages: Option<&[i32]>) -> Result<(*const i32, u32)> {
    match pages {
        None => Ok((ptr::null(), 0)),
        Some(p) => Ok((p.as_ptr(), u32::try_from(p.len()).map_err(|_| invalid(format!("{} page ids", p.len())))?)),
    }
}

/// One blob of a set given to [`Cache::deserialize_shards_into`] (`kvp_blob_ref`): in memory or
/// in a file, each exactly one blob.
#[derive(Debug, Clone, Copy)]
pub enum BlobRef<'a> {
    /// A blob in memory.
    Bytes(&'a [u8]),
    /// A file holding one blob.
    File(&'a Path),
}

impl Cache {
    /// `kvp_serialized_size`: the exact size of the blob [`Cache::serialize`] writes.
    pub fn serialized_size(&self, options: &SerializeOptions<'_>) -> Result<usize> {
        let o = options.to_raw()?;
        let mut out = 0usize;
        check(unsafe { sys::kvp_serialized_size(self.ptr.as_ptr(), &o, &mut out) })?;
        Ok(out)
    }

    /// `kvp_serialize`: the blob of the cache (or of the chosen pages) as bytes.
    ///
    /// ```
    /// # use kvpages::*;
    /// # let cfg = Config::create(&ConfigOptions { num_hidden_layers: 1, num_kv_heads: 1, head_dim: 128,
    /// #     max_model_length: 64, page_size: 16, budget_bytes: 1 << 20, ..Default::default() })?;
    /// let cache = Cache::new(&cfg)?;
    /// let blob = cache.serialize(&SerializeOptions::pages(&[1, 2]))?;
    /// assert_eq!(inspect(&blob, true)?.num_stored_pages, 2);
    /// let copy = Cache::deserialize(&blob, &DeserializeOptions::default())?;
    /// assert_eq!(copy.config()?.num_pages(), cfg.num_pages());
    /// # Ok::<(), kvpages::Error>(())
    /// ```
    pub fn serialize(&self, options: &SerializeOptions<'_>) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; self.serialized_size(options)?];
        let n = self.serialize_into(options, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// `kvp_serialize` into a caller buffer; returns the bytes written.
    /// [`ErrorKind::BufferTooSmall`] (nothing written) when `buf` is shorter than
    /// [`Cache::serialized_size`].
    pub fn serialize_into(&self, options: &SerializeOptions<'_>, buf: &mut [u8]) -> Result<usize> {
        let o = options.to_raw()?;
        let mut written = 0usize;
        check(unsafe {
            sys::kvp_serialize(self.ptr.as_ptr(), &o, buf.as_mut_ptr() as *mut c_void, buf.len(), &mut written)
        })?;
        Ok(written)
    }

    /// `kvp_serialize_to_writer`: streams the blob into any `std::io::Write` (about one chunk of
    /// memory). A write error stops it with [`ErrorKind::Io`], the `io::Error` in the message.
    pub fn serialize_to_writer<W: Write + ?Sized>(&self, options: &SerializeOptions<'_>, writer: &mut W) -> Result<()> {
        let o = options.to_raw()?;
        let mut s = Stream { inner: writer, error: None };
        let status = unsafe {
            sys::kvp_serialize_to_writer(self.ptr.as_ptr(), &o, Some(write_cb::<W>), &mut s as *mut _ as *mut c_void)
        };
        stream_result(status, &s)
    }

    /// `kvp_serialize_to_file`: writes the blob to `path`, replacing the file atomically.
    pub fn serialize_to_file(&self, options: &SerializeOptions<'_>, path: impl AsRef<Path>) -> Result<()> {
        let o = options.to_raw()?;
        let p = c_path(path.as_ref())?;
        check(unsafe { sys::kvp_serialize_to_file(self.ptr.as_ptr(), &o, p.as_ptr()) })
    }

    /// `kvp_deserialize_new`: a new cache with the blob's config; its pages are loaded at their
    /// page ids, every other page is zero. The blob must be exactly one blob.
    pub fn deserialize(blob: &[u8], options: &DeserializeOptions) -> Result<Cache> {
        with_deserialize_options(options, |o| {
            let mut out = ptr::null_mut();
            check(unsafe { sys::kvp_deserialize_new(blob.as_ptr() as *const c_void, blob.len(), o, &mut out) })?;
            Cache::from_created(out, "kvp_deserialize_new")
        })
    }

    /// `kvp_deserialize_new_from_reader`: [`Cache::deserialize`] from any `std::io::Read`; reads
    /// exactly the blob's bytes, so the stream may carry more data after it.
    pub fn deserialize_from_reader<R: Read + ?Sized>(reader: &mut R, options: &DeserializeOptions) -> Result<Cache> {
        with_deserialize_options(options, |o| {
            let mut s = Stream { inner: reader, error: None };
            let mut out = ptr::null_mut();
            let status = unsafe {
                sys::kvp_deserialize_new_from_reader(Some(read_cb::<R>), &mut s as *mut _ as *mut c_void, o, &mut out)
            };
            stream_result(status, &s)?;
            Cache::from_created(out, "kvp_deserialize_new_from_reader")
        })
    }

    /// `kvp_deserialize_new_from_file`: [`Cache::deserialize`] of a file.
    pub fn deserialize_from_file(path: impl AsRef<Path>, options: &DeserializeOptions) -> Result<Cache> {
        let p = c_path(path.as_ref())?;
        with_deserialize_options(options, |o| {
            let mut out = ptr::null_mut();
            check(unsafe { sys::kvp_deserialize_new_from_file(p.as_ptr(), o, &mut out) })?;
            Cache::from_created(out, "kvp_deserialize_new_from_file")
        })
    }

    /// `kvp_deserialize_into`: loads a blob's pages into this cache (same geometry; `num_pages`
    /// may differ), at `dst_pages[j]` for the blob's j-th page or at the blob's own page ids
    /// (`None`). Every checksum is verified first: on any error the cache is unchanged.
    pub fn deserialize_into(&mut self, blob: &[u8], dst_pages: Option<&[i32]>) -> Result<()> {
        let (ids, n) = page_list(dst_pages)?;
        check(unsafe { sys::kvp_deserialize_into(self.ptr.as_ptr(), blob.as_ptr() as *const c_void, blob.len(), ids, n) })
    }

    /// `kvp_deserialize_into_from_reader`: [`Cache::deserialize_into`] from a `std::io::Read`.
    pub fn deserialize_into_from_reader<R: Read + ?Sized>(&mut self, reader: &mut R, dst_pages: Option<&[i32]>)
        -> Result<()> {
        let (ids, n) = page_list(dst_pages)?;
        let mut s = Stream { inner: reader, error: None };
        let status = unsafe {
            sys::kvp_deserialize_into_from_reader(self.ptr.as_ptr(), Some(read_cb::<R>), &mut s as *mut _ as *mut c_void,
                                                  ids, n)
        };
        stream_result(status, &s)
    }

    /// `kvp_deserialize_into_from_file`: [`Cache::deserialize_into`] of a file.
    pub fn deserialize_into_from_file(&mut self, path: impl AsRef<Path>, dst_pages: Option<&[i32]>) -> Result<()> {
        let (ids, n) = page_list(dst_pages)?;
        let p = c_path(path.as_ref())?;
        check(unsafe { sys::kvp_deserialize_into_from_file(self.ptr.as_ptr(), p.as_ptr(), ids, n) })
    }

    /// `kvp_deserialize_shards_into` (since 1.4): loads a set of blobs whose slices may differ
    /// from this cache's (re-sharding: shards of a TP 4 save into a TP 2 shard or a whole cache,
    /// a whole save into shards, DP 2 into DP 1). Every blob is checked and the set's coverage
    /// proven before the first byte is written: a missing shard, an overlap or another model is
    /// [`ErrorKind::FormatMismatch`] and changes nothing.
    pub fn deserialize_shards_into(&mut self, blobs: &[BlobRef<'_>]) -> Result<()> {
        let paths = blobs
            .iter()
            .map(|b| match b {
                BlobRef::File(p) => c_path(p).map(Some),
                BlobRef::Bytes(_) => Ok(None),
            })
            .collect::<Result<Vec<Option<CString>>>>()?;
        let refs: Vec<sys::kvp_blob_ref> = blobs
            .iter()
            .zip(&paths)
            .map(|(b, p)| {
                let (data, size) = match b {
                    BlobRef::Bytes(d) => (d.as_ptr() as *const c_void, d.len()),
                    BlobRef::File(_) => (ptr::null(), 0),
                };
                sys::kvp_blob_ref { data, size, path: p.as_ref().map_or(ptr::null(), |c| c.as_ptr()) }
            })
            .collect();
        let n = u32::try_from(refs.len()).map_err(|_| invalid(format!("{} blobs", refs.len())))?;
        check(unsafe { sys::kvp_deserialize_shards_into(self.ptr.as_ptr(), refs.as_ptr(), n) })
    }
}
