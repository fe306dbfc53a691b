//! Fused attention: write one request's 3 new tokens into layer 0 and attend 4 query heads
//! (grouped over the 2 KV heads) to them in the same call.
use kvpages::{AttentionOptions, BatchRequest, Cache, Config, ConfigOptions, Metadata, Dtype};

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
    let (md, _order) = Metadata::build(&cfg, &[BatchRequest { num_computed: 0, num_scheduled: 3, page_ids: vec![1] }])?;
    let key: Vec<f32> = (0..3 * 2 * 128).map(|i| i as f32).collect();
    let value: Vec<f32> = key.iter().map(|x| -x).collect();
    let queries = vec![0.0f32; 3 * 4 * 128]; // zero queries: every visible key weighs the same
    let mut out = vec![0.0f32; queries.len()];
    let opts = AttentionOptions { softmax_scale: 1.0 / (128f32).sqrt(), ..Default::default() };
    // shape [T, Hq, Hkv, D]; Some((keys, values)) writes them first, None only reads.
    cache.attention(0, &queries, Some((&key, &value)), [3, 4, 2, 128], &md, &opts, &mut out)?;
    // Token 2 sees tokens 0-2 (causal): the mean of their values (-5, -261, -517).
    println!("token 2, head 0, lane 5 = {}", out[(2 * 4) * 128 + 5]);
    assert_eq!(out[(2 * 4) * 128 + 5], -261.0);
    let bad = AttentionOptions { sliding_window: -1, ..opts };
    let e = cache.attention(0, &queries, None, [3, 4, 2, 128], &md, &bad, &mut out).unwrap_err();
    println!("{e}"); // KVP_ERR_INVALID_ARGUMENT: kvp_attention: sliding_window is -1; ...
    assert!(e.message.contains("sliding_window is -1"));
    Ok(())
}
