//! Serve two prompts through a page pool: the second reuses the first one's computed prefix.
use kvpages::{Cache, Config, ConfigOptions, Metadata, Pool, PoolOptions, Dtype};

fn main() -> Result<(), kvpages::Error> {
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
    let mut pool = Pool::new(&mut cache, &PoolOptions { max_sequences: 8, ..Default::default() })?;
    let prompt: Vec<i32> = (100..140).collect(); // 40 tokens: pages of 16, 16 and 8
    let (seq, reused) = pool.add_sequence(&prompt, 0, false)?;
    // Write the K/V of the tokens the pool has pending (all 40 here) into every layer.
    let req = pool.batch_request(seq)?; // num_computed 0, num_scheduled 40, 3 page ids
    let (md, _order) = Metadata::build(&cfg, &[req])?;
    let key = vec![1.0f32; 40 * 2 * 128];
    for layer in 0..2 {
        pool.cache_mut().concatenate(layer, &key, &key, [40, 2, 128], &md)?;
    }
    pool.set_computed(seq, 40)?; // the two full pages enter the prefix cache
    let (other, hit) = pool.add_sequence(&prompt[..36], 0, false)?;
    println!("reused {reused}, then {hit} tokens"); // reused 0, then 32 tokens
    println!("{:?} {:?}", pool.page_table(seq)?, pool.page_table(other)?); // first two ids shared
    pool.free_sequence(seq)?;
    pool.free_sequence(other)?;
    if let Err(e) = pool.free_sequence(seq) {
        println!("{e}"); // KVP_ERR_NOT_FOUND: ...
    }
    let st = pool.stats()?;
    assert_eq!(st.free_pages + st.evictable_pages + st.used_pages, st.total_pages);
    Ok(())
}
