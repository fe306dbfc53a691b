//! Block stores (`kvpages/store.h`, since 1.4): where a [`Pool`](crate::Pool) keeps the prefix
//! pages it evicts (its storage tiers, [`Pool::add_store`](crate::Pool::add_store)), and a
//! key-value store of blocks of bytes in their own right.
use std::os::raw::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::ptr::{self, NonNull};

use crate::{c_path, check, internal, invalid, sys, ErrorKind, Result};

/// The 16-byte key of a block (`kvp_store_key`).
pub type StoreKey = [u8; 16];

/// Options of the shipped stores (`kvp_store_options`).
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreOptions {
    /// A directory store does not fsync its files (`KVP_STORE_FLAG_NO_SYNC`): faster; after a
    /// power loss a block may be missing or damaged, which every read and [`Store::scrub`] detect.
    pub no_sync: bool,
}

/// Content and counters of a store (`kvp_store_stats`); `blocks`, `bytes` and `max_bytes` are
/// -1 for a plug-in store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub blocks: i64,
    pub bytes: i64,
    pub max_bytes: i64,
    pub puts: i64,
    pub hits: i64,
    pub misses: i64,
    pub errors: i64,
    pub evictions: i64,
}

/// What [`Store::scrub`] found (`kvp_store_scrub_report`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScrubReport {
    pub blocks_checked: i64,
    pub blocks_damaged: i64,
    pub bytes_freed: i64,
}

/// What [`inspect_block`] read in a block a pool wrote to a store (`kvp_store_block_info`, since
/// 1.5): the config's fingerprint, the page's key and its parent's (the prefix chain), the salt,
/// the geometry, and whether the checksum holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockInfo {
    pub format_version: u32,
    pub fingerprint: u64,
    pub key: StoreKey,
    pub parent: StoreKey,
    pub salt: u64,
    pub page_size: u32,
    pub num_layers: u32,
    /// Bytes of the page in one layer.
    pub page_bytes: u64,
    /// Bytes of the whole block.
    pub block_bytes: u64,
    pub checksum_ok: bool,
}

/// `kvp_store_block_inspect` (since 1.5): the header of a block a pool wrote to a store and
/// whether its checksum holds; bytes that are not a whole block are an error of a `Format*` kind.
pub fn inspect_block(block: &[u8]) -> Result<BlockInfo> {
    let mut i = sys::kvp_store_block_info {
        struct_size: std::mem::size_of::<sys::kvp_store_block_info>() as u32,
        ..Default::default()
    };
    check(unsafe { sys::kvp_store_block_inspect(block.as_ptr() as *const c_void, block.len(), &mut i) })?;
    Ok(BlockInfo {
        format_version: i.format_version,
        fingerprint: i.fingerprint,
        key: i.key.bytes,
        parent: i.parent.bytes,
        salt: i.salt,
        page_size: i.page_size,
        num_layers: i.num_layers,
        page_bytes: i.page_bytes,
        block_bytes: i.block_bytes,
        checksum_ok: i.checksum_ok != 0,
    })
}

/// Keys per `kvp_store_list` call of [`Store::list`].
const LIST_PAGE: usize = 256;

/// The blocks of a plug-in store ([`Store::plugin`]), kept by Rust code. The library calls one
/// method at a time (the store's lock is held). An `Err` returns its status to the library; a
/// panic is caught and returns `KVP_ERR_INTERNAL` (it never unwinds into C).
pub trait StoreBackend: Send {
    /// Stores `data` under `key`, replacing the block there.
    fn put(&mut self, key: &StoreKey, data: &[u8]) -> Result<()>;
    /// The block of `key`, `None` when there is none.
    fn get(&mut self, key: &StoreKey) -> Result<Option<Vec<u8>>>;
    /// Whether each of `keys` has a block.
    fn exists(&mut self, keys: &[StoreKey]) -> Result<Vec<bool>>;
    /// Removes the block of `key`; `false` when there was none.
    fn remove(&mut self, key: &StoreKey) -> Result<bool>;
    /// One page of the listing of the keys held ([`Store::list`], since 1.5): from `cursor` (0 =
    /// the start) up to `max` keys and the cursor to continue from, 0 when the listing is
    /// complete. A key present for a whole listing must appear in it. The default cannot list
    /// (`ErrorKind::Unsupported`).
    fn list(&mut self, cursor: u64, max: usize) -> Result<(Vec<StoreKey>, u64)> {
        let _ = (cursor, max);
        Err(crate::Error::new(sys::KVP_ERR_UNSUPPORTED, "this plug-in store cannot list its keys"))
    }
}

/// A block store (`kvp_store`), released by `Drop`. Internally synchronised, so it is `Send` and
/// `Sync` and every method takes `&self`; pools borrow it ([`Pool::add_store`](crate::Pool::add_store)),
/// so it outlives them.
#[derive(Debug)]
pub struct Store {
    ptr: NonNull<sys::kvp_store>,
}

// SAFETY: the C store is internally synchronised (store.h: several pools and threads may share one).
unsafe impl Send for Store {}
unsafe impl Sync for Store {}

fn c_key(key: &StoreKey) -> sys::kvp_store_key {
    sys::kvp_store_key { bytes: *key }
}

fn c_options(options: &StoreOptions) -> Result<sys::kvp_store_options> {
    let mut o = sys::kvp_store_options {
        struct_size: 0,
        abi_version: 0,
        flags: 0,
        timeout_ms: 0,
        allocator: ptr::null(),
    };
    check(unsafe { sys::kvp_store_options_init(&mut o, std::mem::size_of::<sys::kvp_store_options>() as u32) })?;
    if options.no_sync {
        o.flags |= sys::KVP_STORE_FLAG_NO_SYNC;
    }
    Ok(o)
}

impl Store {
    fn from_raw(out: *mut sys::kvp_store) -> Result<Store> {
        Ok(Store { ptr: NonNull::new(out).ok_or_else(|| internal("kvp_store_create returned NULL"))? })
    }

    /// `kvp_store_create_memory`: a store in host memory holding at most `max_bytes` of blocks;
    /// over the bound the least recently used blocks are dropped.
    pub fn memory(max_bytes: u64) -> Result<Store> {
        let mut out = ptr::null_mut();
        check(unsafe { sys::kvp_store_create_memory(max_bytes, ptr::null(), &mut out) })?;
        Store::from_raw(out)
    }

    /// `kvp_store_create_directory`: opens (creating it if missing) a store in a directory, one
    /// file per block, bounded by `max_bytes` of files; it survives restarts.
    pub fn directory(path: impl AsRef<Path>, max_bytes: u64, options: &StoreOptions) -> Result<Store> {
        let path = c_path(path.as_ref())?;
        let opts = c_options(options)?;
        let mut out = ptr::null_mut();
        check(unsafe { sys::kvp_store_create_directory(path.as_ptr(), max_bytes, &opts, &mut out) })?;
        Store::from_raw(out)
    }

    /// `kvp_store_create_redis` (since 1.5): a store in a Redis server (`redis://HOST:PORT[/DB]`)
    /// or a Redis Cluster (`redis+cluster://HOST:PORT[,HOST:PORT...]`), optionally followed by
    /// `?prefix=STR` (default `kvp:`), shared by every process that opens it. Every connect and
    /// command is bounded by `timeout_ms` (`kvp_store_options::timeout_ms`, 0 = 1000 ms); a server
    /// that fails is an [`ErrorKind::Io`](crate::ErrorKind::Io) error, and one that timed out is
    /// skipped for a while (its calls fail at once; see `kvp_store_create_redis`). A library built
    /// without Redis returns [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported).
    pub fn redis(url: &str, timeout_ms: u32) -> Result<Store> {
        let url = std::ffi::CString::new(url).map_err(|_| invalid(format!("Redis URL {url:?} contains NUL")))?;
        let mut opts = c_options(&StoreOptions::default())?;
        opts.timeout_ms = timeout_ms;
        let mut out = ptr::null_mut();
        check(unsafe { sys::kvp_store_create_redis(url.as_ptr(), &opts, &mut out) })?;
        Store::from_raw(out)
    }

    /// `kvp_store_create`: a store whose blocks `backend` keeps (a plug-in store).
    pub fn plugin<B: StoreBackend + 'static>(backend: B) -> Result<Store> {
        let user_data = Box::into_raw(Box::new(backend)) as *mut c_void;
        let vtable = sys::kvp_store_vtable {
            struct_size: std::mem::size_of::<sys::kvp_store_vtable>() as u32,
            abi_version: sys::KVP_STORE_VTABLE_VERSION,
            user_data,
            put: Some(put_trampoline::<B>),
            get: Some(get_trampoline::<B>),
            exists: Some(exists_trampoline::<B>),
            remove: Some(remove_trampoline::<B>),
            destroy: Some(destroy_trampoline::<B>),
            list: Some(list_trampoline::<B>),
        };
        let mut out = ptr::null_mut();
        if let Err(e) = check(unsafe { sys::kvp_store_create(&vtable, &mut out) }) {
            // SAFETY: the failed create did not take the backend; it is still ours.
            drop(unsafe { Box::from_raw(user_data as *mut B) });
            return Err(e);
        }
        Store::from_raw(out)
    }

    /// The raw handle (still owned by this object).
    pub fn as_ptr(&self) -> *mut sys::kvp_store {
        self.ptr.as_ptr()
    }

    /// `kvp_store_put`: stores `data` under `key`, replacing the block there.
    pub fn put(&self, key: &StoreKey, data: &[u8]) -> Result<()> {
        check(unsafe { sys::kvp_store_put(self.as_ptr(), &c_key(key), data.as_ptr() as *const c_void, data.len()) })
    }

    /// `kvp_store_get`: the block of `key`, `None` when there is none. A damaged file of a
    /// directory store is an error of a `Format*` kind (the store has deleted it).
    pub fn get(&self, key: &StoreKey) -> Result<Option<Vec<u8>>> {
        let k = c_key(key);
        let mut block: Vec<u8> = Vec::new();
        loop {
            // size, then fill; again if a larger block replaced it in between
            let mut size = 0usize;
            let status = unsafe {
                sys::kvp_store_get(self.as_ptr(), &k, block.as_mut_ptr() as *mut c_void, block.len(), &mut size)
            };
            match check(status) {
                Ok(()) => {
                    block.truncate(size);
                    return Ok(Some(block));
                }
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                Err(e) if e.kind() == ErrorKind::BufferTooSmall => block.resize(size, 0),
                Err(e) => return Err(e),
            }
        }
    }

    /// `kvp_store_exists`: whether each of `keys` has a block (one batched query; not a use for
    /// the LRU).
    pub fn exists(&self, keys: &[StoreKey]) -> Result<Vec<bool>> {
        let c: Vec<sys::kvp_store_key> = keys.iter().map(c_key).collect();
        let mut found = vec![0u8; keys.len()];
        check(unsafe { sys::kvp_store_exists(self.as_ptr(), c.as_ptr(), c.len(), found.as_mut_ptr()) })?;
        Ok(found.into_iter().map(|f| f != 0).collect())
    }

    /// `kvp_store_remove`: removes the block of `key`; `false` when there was none.
    pub fn remove(&self, key: &StoreKey) -> Result<bool> {
        match check(unsafe { sys::kvp_store_remove(self.as_ptr(), &c_key(key)) }) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `kvp_store_get_stats`.
    pub fn stats(&self) -> Result<StoreStats> {
        let mut s =
            sys::kvp_store_stats { struct_size: std::mem::size_of::<sys::kvp_store_stats>() as u32, ..Default::default() };
        check(unsafe { sys::kvp_store_get_stats(self.as_ptr(), &mut s) })?;
        Ok(StoreStats {
            blocks: s.blocks,
            bytes: s.bytes,
            max_bytes: s.max_bytes,
            puts: s.puts,
            hits: s.hits,
            misses: s.misses,
            errors: s.errors,
            evictions: s.evictions,
        })
    }

    /// `kvp_store_list` (since 1.5): every key the store holds, listed a page at a time (the
    /// store locked per page, not across pages): a key present throughout appears at least once,
    /// keys put or removed meanwhile may or may not ([`ErrorKind::Unsupported`] for a plug-in
    /// store that cannot list).
    pub fn list(&self) -> Result<Vec<StoreKey>> {
        let mut keys = Vec::new();
        let mut page = vec![sys::kvp_store_key::default(); LIST_PAGE];
        let mut cursor = 0u64;
        loop {
            let mut n = 0usize;
            check(unsafe { sys::kvp_store_list(self.as_ptr(), &mut cursor, page.as_mut_ptr(), page.len(), &mut n) })?;
            keys.extend(page[..n].iter().map(|k| k.bytes));
            if cursor == 0 {
                return Ok(keys);
            }
        }
    }

    /// `kvp_store_scrub`: reads and verifies every block, deleting damaged ones
    /// ([`ErrorKind::Unsupported`] for a plug-in store).
    pub fn scrub(&self) -> Result<ScrubReport> {
        let mut r = sys::kvp_store_scrub_report {
            struct_size: std::mem::size_of::<sys::kvp_store_scrub_report>() as u32,
            ..Default::default()
        };
        check(unsafe { sys::kvp_store_scrub(self.as_ptr(), &mut r) })?;
        Ok(ScrubReport { blocks_checked: r.blocks_checked, blocks_damaged: r.blocks_damaged, bytes_freed: r.bytes_freed })
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Cannot fail for a live handle this object owns; the borrow checker has ended every pool
        // that used it.
        unsafe { sys::kvp_store_destroy(self.ptr.as_ptr()) };
    }
}

// ---- The plug-in trampolines: never unwind, every failure is a status ----

fn guarded(f: impl FnOnce() -> Result<()>) -> sys::kvp_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => sys::KVP_OK,
        Ok(Err(e)) => e.code,
        Err(_) => sys::KVP_ERR_INTERNAL,
    }
}

unsafe fn backend<'b, B>(user_data: *mut c_void) -> &'b mut B {
    // SAFETY: user_data is the Box<B> of Store::plugin; the library calls one callback at a time.
    &mut *(user_data as *mut B)
}

unsafe extern "C" fn put_trampoline<B: StoreBackend>(
    user_data: *mut c_void,
    key: *const sys::kvp_store_key,
    data: *const c_void,
    size: usize,
) -> sys::kvp_status {
    guarded(|| {
        let data = if size == 0 { &[][..] } else { std::slice::from_raw_parts(data as *const u8, size) };
        backend::<B>(user_data).put(&(*key).bytes, data)
    })
}

unsafe extern "C" fn get_trampoline<B: StoreBackend>(
    user_data: *mut c_void,
    key: *const sys::kvp_store_key,
    dst: *mut c_void,
    capacity: usize,
    size_out: *mut usize,
) -> sys::kvp_status {
    guarded(|| {
        let block = backend::<B>(user_data)
            .get(&(*key).bytes)?
            .ok_or_else(|| crate::Error::new(sys::KVP_ERR_NOT_FOUND, "no block under this key"))?;
        *size_out = block.len();
        if block.len() > capacity {
            return Err(crate::Error::new(sys::KVP_ERR_BUFFER_TOO_SMALL, "block larger than the buffer"));
        }
        ptr::copy_nonoverlapping(block.as_ptr(), dst as *mut u8, block.len());
        Ok(())
    })
}

unsafe extern "C" fn exists_trampoline<B: StoreBackend>(
    user_data: *mut c_void,
    keys: *const sys::kvp_store_key,
    count: usize,
    found_out: *mut u8,
) -> sys::kvp_status {
    guarded(|| {
        let keys: Vec<StoreKey> = std::slice::from_raw_parts(keys, count).iter().map(|k| k.bytes).collect();
        let found = backend::<B>(user_data).exists(&keys)?;
        if found.len() != count {
            return Err(internal(format!("exists answered {} keys of {count}", found.len())));
        }
        for (i, f) in found.into_iter().enumerate() {
            *found_out.add(i) = u8::from(f);
        }
        Ok(())
    })
}

unsafe extern "C" fn remove_trampoline<B: StoreBackend>(
    user_data: *mut c_void,
    key: *const sys::kvp_store_key,
) -> sys::kvp_status {
    guarded(|| match backend::<B>(user_data).remove(&(*key).bytes)? {
        true => Ok(()),
        false => Err(crate::Error::new(sys::KVP_ERR_NOT_FOUND, "no block under this key")),
    })
}

unsafe extern "C" fn list_trampoline<B: StoreBackend>(
    user_data: *mut c_void,
    cursor: *mut u64,
    keys: *mut sys::kvp_store_key,
    capacity: usize,
    count_out: *mut usize,
) -> sys::kvp_status {
    guarded(|| {
        let (page, next) = backend::<B>(user_data).list(*cursor, capacity)?;
        if page.len() > capacity {
            return Err(internal(format!("list returned {} keys for a capacity of {capacity}", page.len())));
        }
        for (i, k) in page.iter().enumerate() {
            *keys.add(i) = c_key(k);
        }
        *count_out = page.len();
        *cursor = next;
        Ok(())
    })
}

unsafe extern "C" fn destroy_trampoline<B: StoreBackend>(user_data: *mut c_void) {
    // A panic in the backend's Drop is caught too.
    let _ = catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(user_data as *mut B))));
}
