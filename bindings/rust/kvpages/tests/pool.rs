//! The pool scenario: a prompt written through the pool's batch request, a second prompt that
//! reuses its first two pages (same ids, same bytes), fork and copy-on-write, freeing, and the
//! error paths (stale id, prompt too long, out of pages), each leaving the stats unchanged.
use kvpages::*;

const L: u32 = 2;
const H: usize = 2;
const D: usize = 128;
const S: usize = 16;
const MAX_LEN: usize = 64;

fn config() -> Config {
    Config::create(&ConfigOptions {
        num_hidden_layers: L as i64,
        num_kv_heads: H as i64,
        max_model_length: MAX_LEN as i64,
        head_dim: D as i64,
        page_size: S as i64,
        dtype: Dtype::F32,
        budget_bytes: 1 << 20,
        ..Default::default()
    })
    .expect("config")
}

/// The key of token id `tok` at position `pos` (values are its negation); exact in f32.
fn kv(tok: i32, pos: usize, layer: u32, h: usize, d: usize) -> f32 {
    ((tok as usize * 64 + pos) * 1024 + layer as usize * 512 + h * 128 + d) as f32
}

/// Writes the pending tokens of `seqs` (id and all its token ids) into every layer through the
/// pool's batch requests, then declares them computed.
fn write_pending(pool: &mut Pool<'_>, cfg: &Config, seqs: &[(SeqId, &[i32])]) {
    let reqs: Vec<BatchRequest> = seqs.iter().map(|(s, _)| pool.batch_request(*s).unwrap()).collect();
    let (md, order) = Metadata::build(cfg, &reqs).expect("build");
    let rows: usize = reqs.iter().map(|r| r.num_scheduled as usize).sum();
    for layer in 0..L {
        let mut key = Vec::with_capacity(rows * H * D);
        for &i in &order {
            let (r, toks) = (&reqs[i], seqs[i].1);
            let start = r.num_computed as usize;
            for (pos, &tok) in toks.iter().enumerate().skip(start).take(r.num_scheduled as usize) {
                for h in 0..H {
                    for d in 0..D {
                        key.push(kv(tok, pos, layer, h, d));
                    }
                }
            }
        }
        let value: Vec<f32> = key.iter().map(|x| -x).collect();
        pool.cache_mut().concatenate(layer, &key, &value, [rows, H, D], &md).expect("concatenate");
    }
    for (i, (s, _)) in seqs.iter().enumerate() {
        let r = &reqs[i];
        pool.set_computed(*s, (r.num_computed + r.num_scheduled) as usize).expect("set_computed");
    }
}

/// Checks that positions `range` of a sequence read back (through the views and its page
/// table) as token ids `toks` written at those positions.
fn check_tokens(pool: &Pool<'_>, seq: SeqId, toks: &[i32], range: std::ops::Range<usize>) {
    let pages = pool.page_table(seq).unwrap();
    for layer in 0..L {
        let keys = pool.cache().view(layer, ViewKind::Keys).unwrap();
        let values = pool.cache().view(layer, ViewKind::Values).unwrap();
        for pos in range.clone() {
            let (page, row) = (pages[pos / S] as i64, (pos % S) as i64);
            for h in 0..H {
                for d in (0..D).step_by(7) {
                    let want = kv(toks[pos], pos, layer, h, d);
                    assert_eq!(keys.get_f32(&[page, row, h as i64, d as i64]), Some(want), "pos {pos} layer {layer}");
                    assert_eq!(values.get_f32(&[page, row, h as i64, d as i64]), Some(-want));
                }
            }
        }
    }
}

fn assert_balanced(st: &PoolStats) {
    assert_eq!(st.free_pages + st.evictable_pages + st.used_pages, st.total_pages, "{st:?}");
}

#[test]
fn pool_scenario_prefix_reuse_fork_free_and_errors() {
    let cfg = config();
    let mut cache = Cache::new(&cfg).unwrap();
    let mut pool = Pool::new(&mut cache, &PoolOptions { max_sequences: 64, ..Default::default() }).unwrap();
    let st0 = pool.stats().unwrap();
    assert_eq!(st0.total_pages, cfg.num_pages() - 1);
    assert_eq!((st0.page_size, st0.max_pages_per_sequence, st0.max_sequences), (S as i64, 4, 64));
    assert_eq!(st0.free_pages, st0.total_pages);

    // Sequence a: a 40-token prompt, written through the batch request, then computed.
    let prompt_a: Vec<i32> = (100..140).collect();
    let (a, reused) = pool.add_sequence(&prompt_a, 0, false).unwrap();
    assert_eq!(reused, 0);
    let req = pool.batch_request(a).unwrap();
    assert_eq!((req.num_computed, req.num_scheduled, req.page_ids.len()), (0, 40, 3));
    assert_eq!(req.page_ids, pool.page_table(a).unwrap());
    write_pending(&mut pool, &cfg, &[(a, &prompt_a)]);
    assert_eq!(pool.length(a).unwrap(), (40, 40));
    check_tokens(&pool, a, &prompt_a, 0..40);
    let pages_a = pool.page_table(a).unwrap();
    let slots = pool.slots(a, 14, 4).unwrap();
    assert_eq!(slots, vec![pages_a[0] * 16 + 14, pages_a[0] * 16 + 15, pages_a[1] * 16, pages_a[1] * 16 + 1]);

    // Sequence b: same first 32 tokens, so its first two pages are a's (bytes included).
    let mut prompt_b: Vec<i32> = prompt_a[..32].to_vec();
    prompt_b.extend(500..508);
    let (b, reused) = pool.add_sequence(&prompt_b, 0, false).unwrap();
    assert_eq!(reused, 32);
    assert_eq!(pool.length(b).unwrap(), (40, 32));
    let pages_b = pool.page_table(b).unwrap();
    assert_eq!(pages_b[..2], pages_a[..2]);
    assert_ne!(pages_b[2], pages_a[2]);
    check_tokens(&pool, b, &prompt_a, 0..32);
    let req = pool.batch_request(b).unwrap();
    assert_eq!((req.num_computed, req.num_scheduled), (32, 8));
    write_pending(&mut pool, &cfg, &[(b, &prompt_b)]);
    check_tokens(&pool, b, &prompt_b, 0..40);
    check_tokens(&pool, a, &prompt_a, 0..40);
    for &p in &pages_a[..2] {
        assert_eq!(pool.page_state(p).unwrap(), (2, KVP_PAGE_FLAG_INDEXED));
    }
    assert_eq!(pool.page_state(pages_a[2]).unwrap(), (1, 0));
    assert_eq!(pool.page_state(0).unwrap().1 & KVP_PAGE_FLAG_NULL, KVP_PAGE_FLAG_NULL);
    let st = pool.stats().unwrap();
    assert_eq!((st.used_pages, st.indexed_pages, st.num_sequences), (4, 2, 2));
    assert_eq!((st.prompt_tokens, st.reused_tokens), (80, 32));
    assert_balanced(&st);

    // Fork b twice: every page of b gains two references; the first append copies the tail.
    let children = pool.fork(b, 2).unwrap();
    assert_eq!(children.len(), 2);
    assert!(children[0] != children[1] && children[0] != b);
    assert_eq!(pool.length(children[0]).unwrap(), (40, 40));
    assert_eq!(pool.page_table(children[1]).unwrap(), pages_b);
    assert_eq!(pool.page_state(pages_b[0]).unwrap().0, 4);
    assert_eq!(pool.page_state(pages_b[2]).unwrap().0, 3);
    assert_eq!(pool.stats().unwrap().num_sequences, 4);
    pool.append(children[0], &[900]).unwrap();
    let pages_c = pool.page_table(children[0]).unwrap();
    assert_eq!(pages_c[..2], pages_b[..2]);
    assert_ne!(pages_c[2], pages_b[2]);
    assert_eq!(pool.page_state(pages_b[2]).unwrap().0, 2);
    let st = pool.stats().unwrap();
    assert_eq!((st.cow_copies, st.used_pages), (1, 5));
    assert_balanced(&st);
    check_tokens(&pool, children[0], &prompt_b, 0..40); // the copied tail holds b's K/V
    assert_eq!(pool.length(children[0]).unwrap(), (41, 40));
    pool.truncate(children[0], 40).unwrap();
    assert_eq!(pool.length(children[0]).unwrap(), (40, 40));
    pool.check_invariants().unwrap();

    // copy_pages: a free page receives a's first page, in every layer.
    let free = (1..cfg.num_pages() as i32).find(|&p| pool.page_state(p).unwrap().1 == KVP_PAGE_FLAG_FREE).unwrap();
    pool.cache_mut().copy_pages(&[pages_a[0]], &[free]).unwrap();
    for layer in 0..L {
        let keys = pool.cache().view(layer, ViewKind::Keys).unwrap();
        for row in 0..S as i64 {
            assert_eq!(keys.get_f32(&[free as i64, row, 1, 5]), keys.get_f32(&[pages_a[0] as i64, row, 1, 5]));
        }
    }
    let e = pool.cache_mut().copy_pages(&[free], &[free]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);

    // Free everything: full computed pages stay cached (evictable), the rest is free.
    for s in [a, b, children[0], children[1]] {
        pool.free_sequence(s).unwrap();
    }
    pool.check_invariants().unwrap();
    let st = pool.stats().unwrap();
    assert_balanced(&st);
    assert_eq!((st.used_pages, st.num_sequences, st.evictable_pages, st.indexed_pages), (0, 0, 2, 2));
    assert_eq!(pool.page_state(pages_a[0]).unwrap(), (0, KVP_PAGE_FLAG_INDEXED));

    // Error paths: each reports its kind and a message, and changes nothing.
    let before = pool.stats().unwrap();
    let e = pool.free_sequence(a).unwrap_err();
    assert_eq!((e.kind(), e.code, e.name.as_str()), (ErrorKind::NotFound, sys::KVP_ERR_NOT_FOUND, "KVP_ERR_NOT_FOUND"));
    assert!(!e.message.is_empty());
    assert_eq!(pool.length(a).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(pool.append(b, &[1]).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(pool.stats().unwrap(), before);
    let too_long: Vec<i32> = (0..MAX_LEN as i32 + 1).collect();
    let e = pool.add_sequence(&too_long, 0, false).unwrap_err();
    assert_eq!((e.kind(), e.code), (ErrorKind::InvalidArgument, sys::KVP_ERR_INVALID_ARGUMENT));
    assert!(e.message.contains("65"), "message: {}", e.message);
    assert_eq!(pool.stats().unwrap(), before);
    assert_eq!(pool.page_state(cfg.num_pages() as i32).unwrap_err().kind(), ErrorKind::InvalidArgument);

    // Out of pages: fill the pool with full-length sequences until one no longer fits.
    let mut live = Vec::new();
    let err = loop {
        let toks: Vec<i32> = (0..MAX_LEN as i32).map(|t| 10_000 + 100 * live.len() as i32 + t).collect();
        let before = pool.stats().unwrap();
        match pool.add_sequence(&toks, 7, false) {
            Ok((s, reused)) => {
                assert_eq!(reused, 0);
                live.push(s);
            }
            Err(e) => {
                assert_eq!(pool.stats().unwrap(), before, "a failed add changed the pool");
                break e;
            }
        }
        assert!(live.len() < 64, "never ran out of pages");
    };
    assert_eq!((err.kind(), err.code), (ErrorKind::OutOfPages, sys::KVP_ERR_OUT_OF_PAGES));
    assert!(!err.message.is_empty());
    let st = pool.stats().unwrap();
    assert_eq!(st.used_pages, 4 * live.len() as i64);
    assert!(st.free_pages + st.evictable_pages < 4, "{st:?}");
    for s in live {
        pool.free_sequence(s).unwrap();
    }
    pool.clear_prefix_cache().unwrap();
    pool.check_invariants().unwrap();
    let st = pool.stats().unwrap();
    assert_eq!((st.free_pages, st.evictable_pages, st.indexed_pages), (st.total_pages, 0, 0));
    drop(pool);
    // The borrow has ended: the cache is usable again.
    cache.view(0, ViewKind::Keys).unwrap();
}

#[test]
fn no_prefix_cache_and_reuse_all() {
    let cfg = config();
    let mut cache = Cache::new(&cfg).unwrap();
    {
        let mut pool = Pool::new(&mut cache, &PoolOptions { max_sequences: 4, no_prefix_cache: true, ..Default::default() }).unwrap();
        let toks: Vec<i32> = (0..32).collect();
        let (s, _) = pool.add_sequence(&toks, 0, false).unwrap();
        write_pending(&mut pool, &cfg, &[(s, &toks)]);
        pool.free_sequence(s).unwrap();
        let (_, reused) = pool.add_sequence(&toks, 0, true).unwrap();
        assert_eq!(reused, 0);
        assert_eq!(pool.stats().unwrap().indexed_pages, 0);
    }
    let mut pool = Pool::new(&mut cache, &PoolOptions::default()).unwrap();
    let toks: Vec<i32> = (0..32).collect();
    let (s, _) = pool.add_sequence(&toks, 3, false).unwrap();
    write_pending(&mut pool, &cfg, &[(s, &toks)]);
    assert_eq!(pool.add_sequence(&toks, 3, false).unwrap().1, 16, "one token left to compute");
    assert_eq!(pool.add_sequence(&toks, 3, true).unwrap().1, 32);
    assert_eq!(pool.add_sequence(&toks, 4, true).unwrap().1, 0, "another salt");
    assert_eq!(pool.fork(s, 0).unwrap(), vec![]);
    drop(pool);
    let e = Pool::new(&mut cache, &PoolOptions { max_sequences: 1 << 21, ..Default::default() }).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn pool_drop_releases_exactly_once_and_is_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Pool<'static>>();
    let cfg = config();
    let mut cache = Cache::new(&cfg).unwrap();
    let pool = Pool::new(&mut cache, &PoolOptions::default()).unwrap();
    let raw = pool.as_ptr();
    // Send: the pool moves to another thread and back; Sync: two threads read it at once.
    let pool = std::thread::scope(|sc| {
        sc.spawn(move || {
            assert_eq!(pool.stats().unwrap().num_sequences, 0);
            pool
        })
        .join()
        .unwrap()
    });
    std::thread::scope(|sc| {
        let p = &pool;
        let t = sc.spawn(move || p.stats().unwrap());
        assert_eq!(p.stats().unwrap(), t.join().unwrap());
    });
    drop(pool);
    assert_eq!(unsafe { sys::kvp_pool_destroy(raw) }, sys::KVP_ERR_INVALID_HANDLE);
}

#[test]
fn pool_data_parallel_shards() {
    let cfg = Config::create(&ConfigOptions {
        num_hidden_layers: L as i64,
        num_kv_heads: H as i64,
        max_model_length: MAX_LEN as i64,
        head_dim: D as i64,
        page_size: S as i64,
        dtype: Dtype::F32,
        budget_bytes: 1 << 20,
        data_parallel_size: 2,
        ..Default::default()
    })
    .expect("config");
    let half = (cfg.num_pages() / 2) as i32;
    let mut cache = Cache::new(&cfg).unwrap();
    let mut pool = Pool::new(&mut cache, &PoolOptions::default()).unwrap();
    let (s0, s1) = (pool.shard_stats(0).unwrap(), pool.shard_stats(1).unwrap());
    assert_eq!((s0.num_shards, s0.first_page, s0.end_page), (2, 1, half));
    assert_eq!((s1.first_page, s1.end_page, s1.free_pages), (half, 2 * half, half as i64));
    let prompt: Vec<i32> = (0..40).collect();
    let (a, _) = pool.add_sequence(&prompt, 0, false).unwrap(); // shard 1 has one more free page
    assert_eq!(pool.sequence_shard(a).unwrap(), 1);
    assert_eq!(pool.page_table(a).unwrap(), vec![half, half + 1, half + 2]);
    let (b, _) = pool.add_sequence_in_shard(&prompt, 0, false, 0).unwrap();
    assert_eq!(pool.sequence_shard(b).unwrap(), 0);
    assert!(pool.page_table(b).unwrap().iter().all(|&p| 1 <= p && p < half));
    assert_eq!(pool.shard_stats(0).unwrap().num_sequences, 1);
    let before = pool.stats().unwrap();
    let e = pool.add_sequence_in_shard(&prompt, 0, false, 2).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message.contains("shard 2 is out of range"), "{}", e.message);
    assert_eq!(pool.shard_stats(2).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(pool.stats().unwrap(), before);
    pool.check_invariants().unwrap();
}
