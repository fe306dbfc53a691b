//! The page pool (`kvpages/pool.h`): pages handed to sequences, shared by reference count and
//! reused across requests by prefix hash.
use std::path::Path;
use std::ptr::{self, NonNull};

use crate::{c_path, check, internal, sys, BatchRequest, Cache, ErrorKind, Result, Store};

/// Page state flags of [`Pool::page_state`] (`KVP_PAGE_FLAG_*`).
pub use sys::{KVP_PAGE_FLAG_FREE, KVP_PAGE_FLAG_INDEXED, KVP_PAGE_FLAG_NULL};

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
    /// Bytes of staging blocks queued for a tier 0 written asynchronously (since 1.5); at least
    /// one block; 0 = 64 MiB.
    pub write_queue_bytes: u64,
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

/// Counters of one data-parallel shard of a pool (`kvp_pool_shard_stats`, since 1.4): the shard
/// hands out pages `first_page .. end_page`; `free_pages + evictable_pages + used_pages ==
/// total_pages`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolShardStats {
    pub num_shards: u32,
    pub first_page: i32,
    pub end_page: i32,
    pub total_pages: i64,
    pub free_pages: i64,
    pub evictable_pages: i64,
    pub used_pages: i64,
    pub num_sequences: i64,
}

/// Counters of one storage tier of a pool (`kvp_pool_tier_stats`, since 1.4): pages looked up
/// and restored (`restored_tokens`), blocks rejected by the checks, evicted pages written, and
/// (since 1.5) `dropped`: evicted pages not written because the write queue was full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolTierStats {
    pub num_tiers: u32,
    pub lookups: i64,
    pub hits: i64,
    pub misses: i64,
    pub rejected: i64,
    pub errors: i64,
    pub restored_tokens: i64,
    pub bytes_read: i64,
    pub blocks_written: i64,
    pub bytes_written: i64,
    pub dropped: i64,
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
            opts.write_queue_bytes = options.write_queue_bytes;
            if options.no_prefix_cache {
                opts.flags |= sys::KVP_POOL_FLAG_NO_PREFIX_CACHE;
            }
            let mut out: *mut sys::kvp_pool = ptr::null_mut();
            check(sys::kvp_pool_create(cache.as_ptr(), &opts, &mut out))?;
            let ptr = NonNull::new(out).ok_or_else(|| internal("kvp_pool_create returned NULL"))?;
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
        self.add(tokens, salt, if reuse_all { sys::KVP_POOL_ADD_FLAG_REUSE_ALL } else { 0 })
    }

    /// [`Pool::add_sequence`] into data-parallel shard `shard` (`KVP_POOL_ADD_IN_SHARD`) instead
    /// of the one the pool would choose (the longest cached prefix that can hold the rest, else
    /// the most free pages). Prefix matching stays within the shard; a shard at or past the
    /// config's `data_parallel_size` is [`ErrorKind::InvalidArgument`].
    pub fn add_sequence_in_shard(&mut self, tokens: &[i32], salt: u64, reuse_all: bool, shard: u16)
        -> Result<(SeqId, usize)> {
        let reuse = if reuse_all { sys::KVP_POOL_ADD_FLAG_REUSE_ALL } else { 0 };
        self.add(tokens, salt, reuse | sys::KVP_POOL_ADD_FLAG_SHARD | (u32::from(shard) << 16))
    }

    fn add(&mut self, tokens: &[i32], salt: u64, flags: u32) -> Result<(SeqId, usize)> {
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

    /// `kvp_pool_get_sequence_shard`: the data-parallel shard `seq` lives in (0 without shards).
    pub fn sequence_shard(&self, seq: SeqId) -> Result<u32> {
        let mut shard = 0u32;
        check(unsafe { sys::kvp_pool_get_sequence_shard(self.ptr.as_ptr(), seq.c(), &mut shard) })?;
        Ok(shard)
    }

    /// `kvp_pool_get_shard_stats`: the counters of one data-parallel shard (a pool without
    /// shards has one, shard 0).
    pub fn shard_stats(&self, shard: u32) -> Result<PoolShardStats> {
        let mut s = sys::kvp_pool_shard_stats {
            struct_size: std::mem::size_of::<sys::kvp_pool_shard_stats>() as u32,
            ..Default::default()
        };
        check(unsafe { sys::kvp_pool_get_shard_stats(self.ptr.as_ptr(), shard, &mut s) })?;
        Ok(PoolShardStats {
            num_shards: s.num_shards,
            first_page: s.first_page,
            end_page: s.end_page,
            total_pages: s.total_pages,
            free_pages: s.free_pages,
            evictable_pages: s.evictable_pages,
            used_pages: s.used_pages,
            num_sequences: s.num_sequences,
        })
    }

    /// `kvp_pool_add_store`: `store` becomes the pool's next storage tier (at most
    /// `KVP_POOL_MAX_TIERS`). Tier 0 receives the prefix pages the pool evicts; [`Pool::add_sequence`]
    /// restores a prompt's next pages from the tiers in order. The store is borrowed for as long
    /// as the pool lives.
    pub fn add_store(&mut self, store: &'a Store) -> Result<()> {
        check(unsafe { sys::kvp_pool_add_store(self.ptr.as_ptr(), store.as_ptr()) })
    }

    /// `kvp_pool_get_tier_stats`: the counters of tier `tier` (in the order the stores were added).
    pub fn tier_stats(&self, tier: u32) -> Result<PoolTierStats> {
        let mut s = sys::kvp_pool_tier_stats {
            struct_size: std::mem::size_of::<sys::kvp_pool_tier_stats>() as u32,
            ..Default::default()
        };
        check(unsafe { sys::kvp_pool_get_tier_stats(self.ptr.as_ptr(), tier, &mut s) })?;
        Ok(PoolTierStats {
            num_tiers: s.num_tiers,
            lookups: s.lookups,
            hits: s.hits,
            misses: s.misses,
            rejected: s.rejected,
            errors: s.errors,
            restored_tokens: s.restored_tokens,
            bytes_read: s.bytes_read,
            blocks_written: s.blocks_written,
            bytes_written: s.bytes_written,
            dropped: s.dropped,
        })
    }

    /// `kvp_pool_flush_tiers`: waits until every write to tier 0 queued so far has reached its
    /// store (or failed, counted in [`PoolTierStats::errors`]); with `cached`, first writes every
    /// cached prefix page tier 0 does not hold yet (to persist the prefix cache, at exit say).
    pub fn flush_tiers(&mut self, cached: bool) -> Result<()> {
        let flags = if cached { sys::KVP_POOL_FLUSH_CACHED } else { 0 };
        check(unsafe { sys::kvp_pool_flush_tiers(self.ptr.as_ptr(), flags) })
    }

    /// `kvp_pool_save_sequence`: the blob of sequence `seq` (its token ids and its pages' bytes in
    /// every layer), which [`Pool::restore_sequence`] turns into a new sequence of any pool of a
    /// compatible cache. Every token must be computed ([`Pool::set_computed`]).
    pub fn save_sequence(&mut self, seq: SeqId) -> Result<Vec<u8>> {
        let mut size = 0usize;
        let status = unsafe { sys::kvp_pool_save_sequence(self.ptr.as_ptr(), seq.c(), ptr::null_mut(), 0, &mut size) };
        if status != sys::KVP_ERR_BUFFER_TOO_SMALL {
            check(status)?;
        }
        let mut blob = vec![0u8; size];
        check(unsafe {
            sys::kvp_pool_save_sequence(self.ptr.as_ptr(), seq.c(), blob.as_mut_ptr().cast(), blob.len(), &mut size)
        })?;
        blob.truncate(size);
        Ok(blob)
    }

    /// `kvp_pool_save_sequence_to_file`: [`Pool::save_sequence`] into a file replaced atomically;
    /// `sync` = false skips the two `fsync`s (`KVP_POOL_SAVE_FLAG_NO_SYNC`).
    pub fn save_sequence_to_file(&mut self, seq: SeqId, path: impl AsRef<Path>, sync: bool) -> Result<()> {
        let path = c_path(path.as_ref())?;
        let flags = if sync { 0 } else { sys::KVP_POOL_SAVE_FLAG_NO_SYNC };
        check(unsafe { sys::kvp_pool_save_sequence_to_file(self.ptr.as_ptr(), seq.c(), path.as_ptr(), flags) })
    }

    /// `kvp_pool_restore_sequence`: a new sequence from a saved blob, checked whole before the pool
    /// changes; its full pages that the prefix index holds are shared, and every token counts as
    /// computed. `shard` forces a data-parallel shard (`KVP_POOL_ADD_IN_SHARD`); `None` places it
    /// as [`Pool::add_sequence`] does.
    pub fn restore_sequence(&mut self, blob: &[u8], shard: Option<u16>) -> Result<SeqId> {
        let mut seq = sys::kvp_seq_id::default();
        check(unsafe {
            sys::kvp_pool_restore_sequence(self.ptr.as_ptr(), blob.as_ptr().cast(), blob.len(), shard_flags(shard),
                                           &mut seq)
        })?;
        Ok(SeqId(seq.id))
    }

    /// `kvp_pool_restore_sequence_from_file`: [`Pool::restore_sequence`] from a file written by
    /// [`Pool::save_sequence_to_file`].
    pub fn restore_sequence_from_file(&mut self, path: impl AsRef<Path>, shard: Option<u16>) -> Result<SeqId> {
        let path = c_path(path.as_ref())?;
        let mut seq = sys::kvp_seq_id::default();
        check(unsafe {
            sys::kvp_pool_restore_sequence_from_file(self.ptr.as_ptr(), path.as_ptr(), shard_flags(shard), &mut seq)
        })?;
        Ok(SeqId(seq.id))
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

/// The flags of a restore into `shard` (`KVP_POOL_ADD_IN_SHARD`), or 0.
fn shard_flags(shard: Option<u16>) -> u32 {
    shard.map_or(0, |s| sys::KVP_POOL_ADD_FLAG_SHARD | (u32::from(s) << 16))
}

impl Drop for Pool<'_> {
    fn drop(&mut self) {
        // Cannot fail for a live handle this object owns; never touches the cache.
        unsafe { sys::kvp_pool_destroy(self.ptr.as_ptr()) };
    }
}
