//! Block stores and the pool's storage tiers: a memory store's round trip and counters, a
//! directory store surviving drop and reopen and scrubbing a damaged file, a pool with a memory
//! tier restoring evicted prefix pages with the bytes computed for them, a plug-in store written
//! in Rust (errors and panics become statuses), listing every store's keys and inspecting the
//! evicted blocks (since 1.5), and bad input giving the library's error with nothing changed.
use std::collections::HashMap;

use kvpages::*;

const H: usize = 2;
const D: usize = 128;
const S: usize = 16;
const K1: StoreKey = [1; 16];
const K2: StoreKey = [2; 16];
const K3: StoreKey = [3; 16];

/// The pool tests' config: 2 layers of H heads x D, page S, f32, 8 pages (7 usable).
fn small_config() -> Config {
    Config::create(&ConfigOptions {
        num_hidden_layers: 2,
        num_kv_heads: H as i64,
        max_model_length: 64,
        head_dim: D as i64,
        page_size: S as i64,
        dtype: Dtype::F32,
        budget_bytes: 8 * 2 * (S * 2 * H * D * 4) as i64,
        ..Default::default()
    })
    .unwrap()
}

fn hex(key: &StoreKey) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn memory_store_round_trip_and_stats() {
    let store = Store::memory(1 << 20).unwrap();
    store.put(&K1, b"hello").unwrap();
    store.put(&K2, &[7u8; 100]).unwrap();
    assert_eq!(store.get(&K1).unwrap().as_deref(), Some(&b"hello"[..]));
    assert_eq!(store.get(&K2).unwrap(), Some(vec![7u8; 100]));
    assert_eq!(store.exists(&[K1, K3, K2]).unwrap(), vec![true, false, true]);
    assert!(store.remove(&K1).unwrap());
    assert!(!store.remove(&K1).unwrap());
    assert_eq!(store.get(&K1).unwrap(), None);
    let st = store.stats().unwrap();
    assert_eq!((st.blocks, st.bytes, st.max_bytes, st.puts, st.hits, st.misses, st.errors, st.evictions),
               (1, 100, 1 << 20, 2, 2, 1, 0, 0));
    assert_eq!(store.scrub().unwrap(), ScrubReport { blocks_checked: 1, blocks_damaged: 0, bytes_freed: 0 });
}

#[test]
fn directory_store_survives_drop_and_reopen_and_scrubs() {
    let dir = std::env::temp_dir().join(format!("kvpages-rust-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        let store = Store::directory(&dir, 1 << 20, &StoreOptions::default()).unwrap();
        store.put(&K1, b"first block").unwrap();
        store.put(&K2, b"second block").unwrap();
    }
    let second = dir.join(format!("{}.kvpb", hex(&K2)));
    assert!(dir.join(format!("{}.kvpb", hex(&K1))).exists() && second.exists());
    let store = Store::directory(&dir, 1 << 20, &StoreOptions { no_sync: true }).unwrap();
    assert_eq!(store.stats().unwrap().blocks, 2);
    assert_eq!(store.get(&K1).unwrap().as_deref(), Some(&b"first block"[..]));
    let mut raw = std::fs::read(&second).unwrap();
    *raw.last_mut().unwrap() ^= 0xFF;
    std::fs::write(&second, &raw).unwrap();
    let report = store.scrub().unwrap();
    assert_eq!(report, ScrubReport { blocks_checked: 2, blocks_damaged: 1, bytes_freed: raw.len() as i64 });
    assert_eq!(store.exists(&[K1, K2]).unwrap(), vec![true, false]);
    assert!(!second.exists());
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn kv(tok: i32, h: usize, d: usize) -> f32 {
    (tok as usize * 1024 + h * 128 + d) as f32
}

/// Writes the pending tokens of `seq` (prompt `toks`) into both layers, then declares them computed.
fn prefill(pool: &mut Pool<'_>, cfg: &Config, seq: SeqId, toks: &[i32]) {
    let req = pool.batch_request(seq).unwrap();
    let (md, _) = Metadata::build(cfg, &[req.clone()]).unwrap();
    let (start, n) = (req.num_computed as usize, req.num_scheduled as usize);
    let key: Vec<f32> =
        toks[start..start + n].iter().flat_map(|&t| (0..H).flat_map(move |h| (0..D).map(move |d| kv(t, h, d)))).collect();
    let value: Vec<f32> = key.iter().map(|x| -x).collect();
    for layer in 0..2 {
        pool.cache_mut().concatenate(layer, &key, &value, [n, H, D], &md).unwrap();
    }
    pool.set_computed(seq, start + n).unwrap();
}

#[test]
fn pool_with_a_memory_tier_restores_evicted_prefix_pages() {
    let cfg = small_config();
    let store = Store::memory(1 << 24).unwrap();
    let mut cache = Cache::new(&cfg).unwrap();
    let mut pool = Pool::new(&mut cache, &PoolOptions::default()).unwrap();
    pool.add_store(&store).unwrap();
    let prompt_a: Vec<i32> = (1000..1040).collect(); // 2 full pages and a partial one
    let (a, _) = pool.add_sequence(&prompt_a, 0, false).unwrap();
    prefill(&mut pool, &cfg, a, &prompt_a);
    pool.free_sequence(a).unwrap(); // its 2 full pages stay cached (evictable)
    let prompt_b: Vec<i32> = (5000..5064).collect();
    let (b, _) = pool.add_sequence(&prompt_b, 0, false).unwrap(); // 4 pages
    prefill(&mut pool, &cfg, b, &prompt_b);
    let prompt_c: Vec<i32> = (7000..7048).collect();
    let (c, _) = pool.add_sequence(&prompt_c, 0, false).unwrap(); // 3 pages: 1 free, a's 2 evicted
    prefill(&mut pool, &cfg, c, &prompt_c);
    let st = pool.tier_stats(0).unwrap();
    assert_eq!((st.num_tiers, st.blocks_written, st.hits, st.restored_tokens, st.errors), (1, 2, 0, 0, 0));
    assert_eq!(store.stats().unwrap().blocks, 2); // the store is shared: usable while the pool is
    pool.free_sequence(c).unwrap();

    let (a, reused) = pool.add_sequence(&prompt_a, 0, false).unwrap(); // the same prompt: from the tier
    assert_eq!(reused, 32);
    let st = pool.tier_stats(0).unwrap();
    assert_eq!((st.hits, st.restored_tokens, st.rejected, st.errors), (2, 32, 0, 0));
    assert!(st.bytes_read > 0 && st.lookups == st.hits + st.misses);
    let pages = pool.page_table(a).unwrap();
    for layer in 0..2 {
        let keys = pool.cache().view(layer, ViewKind::Keys).unwrap();
        let values = pool.cache().view(layer, ViewKind::Values).unwrap();
        for pos in 0..32 {
            let (page, row) = (pages[pos / S] as i64, (pos % S) as i64);
            for (h, d) in [(0, 0), (1, 127), (0, 64)] {
                let want = kv(prompt_a[pos], h, d);
                assert_eq!(keys.get_f32(&[page, row, h as i64, d as i64]), Some(want));
                assert_eq!(values.get_f32(&[page, row, h as i64, d as i64]), Some(-want));
            }
        }
    }
    pool.check_invariants().unwrap();

    // every evicted block, listed and inspected (since 1.5)
    let keys = store.list().unwrap();
    assert!(keys.len() >= 2 && keys.len() as i64 == store.stats().unwrap().blocks);
    let infos: Vec<BlockInfo> = keys.iter().map(|k| inspect_block(&store.get(k).unwrap().unwrap()).unwrap()).collect();
    for (info, key) in infos.iter().zip(&keys) {
        assert_eq!((info.key, info.format_version, info.page_size, info.num_layers, info.salt), (*key, 1, S as u32, 2, 0));
        assert!(info.checksum_ok && info.fingerprint == infos[0].fingerprint);
        assert_eq!(info.page_bytes as usize, S * 2 * H * D * 4);
    }
    assert!(infos.iter().any(|i| keys.contains(&i.parent))); // a's second page's parent is its first
    let mut damaged = store.get(&keys[0]).unwrap().unwrap();
    let at = damaged.len() - 20;
    damaged[at] ^= 1;
    assert!(!inspect_block(&damaged).unwrap().checksum_ok);
    let e = inspect_block(b"not a block").unwrap_err();
    assert_eq!(e.name, "KVP_ERR_FORMAT_MAGIC");
    assert!(e.message.contains("KVPB"), "{}", e.message);
    assert_eq!(inspect_block(&damaged[..damaged.len() - 1]).unwrap_err().name, "KVP_ERR_FORMAT_TRUNCATED");

    let e = pool.tier_stats(1).unwrap_err();
    assert_eq!((e.kind(), e.name.as_str()), (ErrorKind::InvalidArgument, "KVP_ERR_INVALID_ARGUMENT"));
    assert!(e.message.contains("tier"), "{}", e.message);
    let e = pool.add_store(&store).unwrap_err(); // already a tier
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert_eq!(pool.tier_stats(0).unwrap().num_tiers, 1);
}

#[test]
fn pool_with_a_directory_tier_writes_asynchronously_and_flushes() {
    let cfg = small_config();
    let dir = std::env::temp_dir().join(format!("kvpages-rs-flush-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::directory(&dir, 1 << 24, &StoreOptions { no_sync: true }).unwrap();
    let prompt_a: Vec<i32> = (1000..1040).collect(); // 2 full pages and a partial one
    {
        let mut cache = Cache::new(&cfg).unwrap();
        let opts = PoolOptions { write_queue_bytes: 1 << 20, ..Default::default() };
        let mut pool = Pool::new(&mut cache, &opts).unwrap();
        pool.add_store(&store).unwrap();
        let (a, _) = pool.add_sequence(&prompt_a, 0, false).unwrap();
        prefill(&mut pool, &cfg, a, &prompt_a);
        pool.flush_tiers(false).unwrap(); // nothing queued: the cached pages stay unwritten
        assert_eq!((pool.tier_stats(0).unwrap().blocks_written, store.stats().unwrap().puts), (0, 0));
        pool.flush_tiers(true).unwrap(); // the cached prefix persisted
        let st = pool.tier_stats(0).unwrap();
        assert_eq!((st.blocks_written, st.errors, st.dropped), (2, 0, 0));
        pool.flush_tiers(true).unwrap(); // tier 0 holds them: not written again
        assert_eq!(store.stats().unwrap().puts, 2);
    }
    // as after a restart: a fresh cache and pool over the same directory restore the prefix
    let mut cache = Cache::new(&cfg).unwrap();
    let mut pool = Pool::new(&mut cache, &PoolOptions::default()).unwrap();
    pool.add_store(&store).unwrap();
    let (a, reused) = pool.add_sequence(&prompt_a, 0, false).unwrap();
    assert_eq!((reused, pool.tier_stats(0).unwrap().hits), (32, 2));
    let pages = pool.page_table(a).unwrap();
    let keys = pool.cache().view(1, ViewKind::Keys).unwrap();
    for pos in [0usize, 17, 31] {
        let (page, row) = (pages[pos / S] as i64, (pos % S) as i64);
        assert_eq!(keys.get_f32(&[page, row, 1, 127]), Some(kv(prompt_a[pos], 1, 127)));
    }
    drop(pool);
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[derive(Default)]
struct MapBackend {
    blocks: HashMap<StoreKey, Vec<u8>>,
    fail_puts: bool,
    panic_on_remove: bool,
}

impl StoreBackend for MapBackend {
    fn put(&mut self, key: &StoreKey, data: &[u8]) -> Result<()> {
        if self.fail_puts {
            return Err(Error::new(sys::KVP_ERR_IO, "disk on fire"));
        }
        self.blocks.insert(*key, data.to_vec());
        self.fail_puts = true; // the next put fails
        Ok(())
    }
    fn get(&mut self, key: &StoreKey) -> Result<Option<Vec<u8>>> {
        Ok(self.blocks.get(key).cloned())
    }
    fn exists(&mut self, keys: &[StoreKey]) -> Result<Vec<bool>> {
        Ok(keys.iter().map(|k| self.blocks.contains_key(k)).collect())
    }
    fn remove(&mut self, key: &StoreKey) -> Result<bool> {
        if self.panic_on_remove {
            panic!("a bug in the backend");
        }
        self.panic_on_remove = true;
        Ok(self.blocks.remove(key).is_some())
    }
}

#[test]
fn plugin_store_in_rust_errors_and_panics_become_statuses() {
    let store = Store::plugin(MapBackend::default()).unwrap();
    store.put(&K1, &[9u8; 40]).unwrap();
    assert_eq!(store.get(&K1).unwrap(), Some(vec![9u8; 40]));
    assert_eq!(store.get(&K2).unwrap(), None);
    assert_eq!(store.exists(&[K1, K2]).unwrap(), vec![true, false]);
    assert_eq!(store.put(&K2, b"x").unwrap_err().kind(), ErrorKind::Io);
    assert!(store.remove(&K1).unwrap());
    assert_eq!(store.remove(&K1).unwrap_err().kind(), ErrorKind::Internal); // the panic, caught
    let st = store.stats().unwrap();
    assert_eq!((st.blocks, st.bytes, st.max_bytes, st.puts, st.hits, st.misses), (-1, -1, -1, 1, 1, 1));
    assert_eq!(store.scrub().unwrap_err().kind(), ErrorKind::Unsupported);
}

/// A plug-in that lists its keys in key order: the cursor is one past the last key's index.
struct SortedBackend(Vec<StoreKey>);

impl StoreBackend for SortedBackend {
    fn put(&mut self, key: &StoreKey, _: &[u8]) -> Result<()> {
        self.0.push(*key);
        self.0.sort();
        Ok(())
    }
    fn get(&mut self, _: &StoreKey) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
    fn exists(&mut self, keys: &[StoreKey]) -> Result<Vec<bool>> {
        Ok(keys.iter().map(|k| self.0.contains(k)).collect())
    }
    fn remove(&mut self, _: &StoreKey) -> Result<bool> {
        Ok(false)
    }
    fn list(&mut self, cursor: u64, max: usize) -> Result<(Vec<StoreKey>, u64)> {
        let from = cursor as usize;
        let to = (from + max).min(self.0.len());
        Ok((self.0[from..to].to_vec(), if to < self.0.len() { to as u64 } else { 0 }))
    }
}

#[test]
fn list_every_store() {
    let keys: Vec<StoreKey> = (0..10u8).map(|i| [i; 16]).collect();
    let dir = std::env::temp_dir().join(format!("kvpages-list-{}", std::process::id()));
    let directory = Store::directory(&dir, 1 << 20, &StoreOptions { no_sync: true }).unwrap();
    for store in [Store::memory(1 << 20).unwrap(), directory] {
        assert!(store.list().unwrap().is_empty());
        for k in &keys {
            store.put(k, k).unwrap();
        }
        let mut listed = store.list().unwrap();
        listed.sort();
        assert_eq!(listed, keys);
    }
    std::fs::remove_dir_all(&dir).unwrap();
    let many: Vec<StoreKey> = (0..600u32).map(|i| { let mut k = [0u8; 16]; k[..4].copy_from_slice(&i.to_be_bytes()); k }).collect();
    let store = Store::plugin(SortedBackend(Vec::new())).unwrap();
    for k in &many {
        store.put(k, b"v").unwrap();
    }
    assert_eq!(store.list().unwrap(), many); // 256 keys a page, in the plug-in's order
    let store = Store::plugin(MapBackend::default()).unwrap(); // no list: the default
    let e = store.list().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.message.contains("list"), "{}", e.message);
}

#[test]
fn bad_input_gives_the_librarys_error_and_changes_nothing() {
    let e = Store::memory(0).unwrap_err();
    assert_eq!((e.kind(), e.name.as_str()), (ErrorKind::InvalidArgument, "KVP_ERR_INVALID_ARGUMENT"));
    assert!(!e.message.is_empty());
    let missing = std::env::temp_dir().join(format!("kvpages-missing-{}", std::process::id())).join("blocks");
    let e = Store::directory(&missing, 1 << 20, &StoreOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.message.contains("kvpages-missing"), "{}", e.message);
    let store = Store::memory(64).unwrap();
    let e = store.put(&K1, &[0u8; 65]).unwrap_err(); // larger than the bound
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message.contains("65") && e.message.contains("64"), "{}", e.message);
    assert_eq!(store.stats().unwrap().blocks, 0);
    assert_eq!(store.exists(&[K1]).unwrap(), vec![false]);
}

/// Without a server: a bad URL and a refused connection (or Unsupported in a build without
/// Redis); with one (KVP_TEST_REDIS_URL, scripts/with-redis.sh), a round trip.
#[test]
fn redis_store_bad_url_refused_server_and_round_trip() {
    if !build_info().contains("redis=on") {
        assert_eq!(Store::redis("redis://127.0.0.1:6379", 0).unwrap_err().kind(), ErrorKind::Unsupported);
        return;
    }
    let e = Store::redis("redis://no-port", 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message.contains("Redis URL"), "{}", e.message);
    let e = Store::redis("redis://127.0.0.1:1", 200).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.message.contains("127.0.0.1:1"), "{}", e.message);
    let url = match std::env::var("KVP_TEST_REDIS_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => return, // no server: scripts/with-redis.sh starts one
    };
    let store = Store::redis(&format!("{url}?prefix=rs:"), 500).unwrap();
    store.put(&K1, b"abc").unwrap();
    assert_eq!(store.get(&K1).unwrap(), Some(b"abc".to_vec()));
    assert_eq!(store.exists(&[K1, K2]).unwrap(), vec![true, false]);
    store.remove(&K1).unwrap();
    assert_eq!(store.stats().unwrap().blocks, -1);
}

#[test]
fn a_saved_sequence_restores_into_another_pool_and_a_damaged_one_changes_nothing() {
    let cfg = small_config();
    let prompt: Vec<i32> = (1000..1040).collect(); // 2 full pages and 8 tokens
    let path = std::env::temp_dir().join(format!("kvpages-rust-seq-{}.kvpq", std::process::id()));
    let mut cache_a = Cache::new(&cfg).unwrap();
    let mut pool_a = Pool::new(&mut cache_a, &PoolOptions::default()).unwrap();
    let (a, _) = pool_a.add_sequence(&prompt, 3, false).unwrap();
    prefill(&mut pool_a, &cfg, a, &prompt);
    let blob = pool_a.save_sequence(a).unwrap();
    pool_a.save_sequence_to_file(a, &path, false).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), blob);

    let mut cache_b = Cache::new(&cfg).unwrap();
    let mut pool_b = Pool::new(&mut cache_b, &PoolOptions::default()).unwrap();
    let filler: Vec<i32> = (9000..9020).collect();
    pool_b.add_sequence(&filler, 0, false).unwrap(); // pool B hands out other page ids
    let b = pool_b.restore_sequence(&blob, None).unwrap();
    assert_eq!(pool_b.length(b).unwrap(), (40, 40));
    let pages = pool_b.page_table(b).unwrap();
    assert_ne!(pages, pool_a.page_table(a).unwrap());
    for layer in 0..2 {
        let keys = pool_b.cache().view(layer, ViewKind::Keys).unwrap();
        let values = pool_b.cache().view(layer, ViewKind::Values).unwrap();
        for pos in 0..40 {
            let (page, row) = (pages[pos / S] as i64, (pos % S) as i64);
            for (h, d) in [(0, 0), (1, 127), (0, 64)] {
                let want = kv(prompt[pos], h, d);
                assert_eq!(keys.get_f32(&[page, row, h as i64, d as i64]), Some(want));
                assert_eq!(values.get_f32(&[page, row, h as i64, d as i64]), Some(-want));
            }
        }
    }
    // from the file, into shard 0: the full pages are shared with the first restore
    let c = pool_b.restore_sequence_from_file(&path, Some(0)).unwrap();
    let shared = pool_b.page_table(c).unwrap();
    assert_eq!(shared[..2], pages[..2]);
    assert_ne!(shared[2], pages[2]);
    assert_eq!(pool_b.page_state(pages[0]).unwrap().0, 2);

    let mut bad = blob.clone();
    *bad.last_mut().unwrap() ^= 1;
    let before = pool_b.stats().unwrap();
    let e = pool_b.restore_sequence(&bad, None).unwrap_err();
    assert_eq!(e.name, "KVP_ERR_FORMAT_CHECKSUM");
    assert!(e.message.contains("block 2 of 3"), "{}", e.message);
    let e = pool_b.restore_sequence(&blob, Some(1)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    let after = pool_b.stats().unwrap();
    assert_eq!((after.used_pages, after.num_sequences), (before.used_pages, before.num_sequences));
    pool_b.check_invariants().unwrap();
    std::fs::remove_file(&path).unwrap();
}
