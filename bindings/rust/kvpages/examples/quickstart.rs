//! Plan a small f32 cache, write one request's 3 new tokens into layer 0, read a key back.
use kvpages::{BatchRequest, Cache, Config, ConfigOptions, Metadata, Dtype, ViewKind};

fn main() -> Result<(), kvpages::Error> {
    kvpages::check_abi()?;
    let cfg = Config::create(&ConfigOptions {
        num_hidden_layers: 2,
        num_kv_heads: 2,
        max_model_length: 64,
        head_dim: 128,
        page_size: 16,
        dtype: Dtype::F32,
        budget_bytes: 1 << 20,
        ..Default::default()
    })?;
    let mut cache = Cache::new(&cfg)?;
    // One request: 3 new tokens, stored in page 1.
    let (md, _order) = Metadata::build(&cfg, &[BatchRequest { num_computed: 0, num_scheduled: 3, page_ids: vec![1] }])?;
    let key: Vec<f32> = (0..3 * 2 * 128).map(|i| i as f32).collect();
    let value: Vec<f32> = key.iter().map(|x| -x).collect();
    cache.concatenate(0, &key, &value, [3, 2, 128], &md)?;
    let keys = cache.view(0, ViewKind::Keys)?; // [pages, page_size, heads, head_dim]
    println!("token 2, head 1, lane 5 = {:?}", keys.get_f32(&[1, 2, 1, 5])); // Some(645.0)
    if let Err(e) = cache.view(9, ViewKind::Keys) {
        println!("{e}"); // KVP_ERR_INVALID_ARGUMENT: ... layer 9 ...
    }
    Ok(())
}
