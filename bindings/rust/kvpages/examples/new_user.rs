//! The "new user" program: plan a 32-layer, 8-KV-head, head-dim-128 bf16 cache with a 4 GiB
//! budget, create it, write two prefills and three decodes in one mixed batch, read the keys
//! back, save the used pages to a file, load them into a new cache and compare. It asserts
//! everything it prints. Run: `cargo run --example new_user`.
use kvpages::{
    Batch, BatchOptions, BatchRequest, Bf16, Cache, Config, ConfigOptions, Device, Dtype,
    SerializeOptions, ViewKind,
};

const H: usize = 8;
const D: usize = 128;

/// A bf16 value (exactly representable) for request `r`, token `t`, head `h`, lane `d`.
fn value(r: usize, t: usize, h: usize, d: usize) -> Bf16 {
    Bf16::from_f32(((r * 7 + t * 3 + h) * D + d) as f32 / 64.0)
}

/// Request `r`'s `n` new tokens as `[n, H, D]` bf16 (negated for values).
fn tokens(r: usize, n: usize, sign: f32) -> Vec<Bf16> {
    let mut out = Vec::with_capacity(n * H * D);
    for t in 0..n {
        for h in 0..H {
            out.extend((0..D).map(|d| Bf16::from_f32(sign * value(r, t, h, d).to_f32())));
        }
    }
    out
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    kvpages::check_abi()?;
    // Plan: the budget is counted against the device the cache will live on (here the CPU).
    let cfg = Config::create(&ConfigOptions {
        num_hidden_layers: 32,
        num_kv_heads: H as i64,
        head_dim: D as i64,
        max_model_length: 4096,
        page_size: 16,
        dtype: Dtype::Bf16,
        budget_bytes: 4 << 30,
        device: Device::Cpu,
        ..Default::default()
    })?;
    let plan = cfg.plan()?;
    println!("plan: {} pages of {} bytes, {} tokens", plan.num_pages, plan.bytes_per_page, plan.token_capacity);
    assert!(plan.total_bytes <= 4 << 30 && plan.usable_pages == plan.num_pages - 1);
    let mut cache = Cache::new(&cfg)?;

    // One mixed batch: two prefills (20 and 5 tokens) and three decodes (one token each, after
    // 16, 3 and 40 tokens already in the cache). The builder puts the decodes first; Batch
    // packs the per-request tokens in that order, so they are given here in request order.
    let requests = vec![
        BatchRequest { num_computed: 0, num_scheduled: 20, page_ids: vec![1, 2] },
        BatchRequest { num_computed: 16, num_scheduled: 1, page_ids: vec![3, 4] },
        BatchRequest { num_computed: 0, num_scheduled: 5, page_ids: vec![5] },
        BatchRequest { num_computed: 3, num_scheduled: 1, page_ids: vec![6] },
        BatchRequest { num_computed: 40, num_scheduled: 1, page_ids: vec![7, 8, 9] },
    ];
    let batch = Batch::build(&cfg, &requests, &BatchOptions::default())?;
    println!("row order: {:?}", batch.order());
    assert_eq!(batch.order(), &[1, 3, 4, 0, 2]);
    let keys: Vec<Vec<Bf16>> = requests.iter().enumerate().map(|(r, q)| tokens(r, q.num_scheduled as usize, 1.0)).collect();
    let values: Vec<Vec<Bf16>> =
        requests.iter().enumerate().map(|(r, q)| tokens(r, q.num_scheduled as usize, -1.0)).collect();
    let key_refs: Vec<&[Bf16]> = keys.iter().map(Vec::as_slice).collect();
    let value_refs: Vec<&[Bf16]> = values.iter().map(Vec::as_slice).collect();
    for layer in 0..2 {
        cache.concatenate_batch(layer, &batch, &key_refs, &value_refs)?;
    }

    // Read every written key back (as f32 from the bf16 cache) and compare.
    let check_keys = |cache: &Cache| -> Result<(), kvpages::Error> {
        let view = cache.view(1, ViewKind::Keys)?; // [pages, page_size, H, D]
        for (r, q) in requests.iter().enumerate() {
            for t in 0..q.num_scheduled as usize {
                let pos = q.num_computed as usize + t;
                let page = q.page_ids[pos / 16] as i64;
                let got = view.read_f32(&[page, (pos % 16) as i64])?;
                let want: Vec<f32> = keys[r][t * H * D..(t + 1) * H * D].iter().map(|x| x.to_f32()).collect();
                assert_eq!(got, want, "request {r} token {t}");
            }
        }
        Ok(())
    };
    check_keys(&cache)?;
    let sample = cache.view(1, ViewKind::Keys)?.get_f32(&[4, 0, 2, 5]); // position 16: page 4, row 0
    println!("request 1's decode key, head 2, lane 5: {sample:?}");
    assert_eq!(sample, Some(value(1, 0, 2, 5).to_f32()));

    // Save the used pages to a file, load them into a new cache, compare.
    let used: Vec<i32> = requests.iter().flat_map(|q| q.page_ids.iter().copied()).collect();
    let path = std::env::temp_dir().join(format!("kvpages-new-user-{}.kvp", std::process::id()));
    cache.serialize_to_file(&SerializeOptions::pages(&used), &path)?;
    let info = kvpages::inspect_file(&path, true)?;
    println!("saved {} pages ({} bytes) to {}", info.num_stored_pages, info.total_bytes, path.display());
    assert_eq!(info.num_stored_pages, used.len() as u64);
    // A new cache with the blob's config, then the saved pages into it. (Cache::deserialize_from_file
    // creates the cache itself, but its default size limit refuses a 4 GiB cache from a small
    // file: DeserializeOptions::max_cache_bytes lifts it.)
    let mut loaded = Cache::new(&info.config)?;
    let result = loaded.deserialize_into_from_file(&path, None);
    std::fs::remove_file(&path)?;
    result?;
    check_keys(&loaded)?;
    for layer in 0..2 {
        let (a, b) = (cache.view(layer, ViewKind::Values)?, loaded.view(layer, ViewKind::Values)?);
        for &page in &used {
            assert_eq!(a.read::<Bf16>(&[page as i64])?, b.read::<Bf16>(&[page as i64])?, "layer {layer} page {page}");
        }
    }
    println!("loaded cache matches: {} pages compared in 2 layers", used.len());
    Ok(())
}
