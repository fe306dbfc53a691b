//! Shards (since 1.4): the four shards of a TP 2 x DP 2 config hold their slices of the whole
//! cache after the same batch; their blobs (in memory and in files) load into a new whole cache
//! byte for byte; an incomplete set and a rank out of range fail with the library's message
//! and change nothing. A cache group's shards, written with one call, hold the same slices; they
//! are borrowed (dropping one leaves it in the group) and a bad shard tensor is refused by name.
use kvpages::*;

const H: usize = 4;
const D: usize = 128;

fn sharded_config() -> Config {
    Config::create(&ConfigOptions {
        num_hidden_layers: 2,
        num_kv_heads: H as i64,
        head_dim: D as i64,
        max_model_length: 64,
        page_size: 16,
        dtype: Dtype::Bf16,
        kv_head_shards: 2,
        data_parallel_size: 2,
        budget_bytes: 1 << 20,
        ..Default::default()
    })
    .expect("config")
}

/// The bytes a shard should hold of a whole cache's layer: its pages and, of every row, its
/// combined entries (the layer is `[page][row][combined entry][storage head dim]`).
fn slice_of(whole: &[u8], wl: &LayoutInfo, si: &ShardInfo) -> Vec<u8> {
    let (rows, entries) = (wl.shape[1], wl.storage_num_combined_kv_heads);
    let entry_bytes = (wl.storage_head_dim * wl.itemsize) as usize;
    let len = (si.slot_end - si.slot_begin) as usize * entry_bytes;
    let mut out = Vec::new();
    for page in si.page_begin..si.page_end {
        for row in 0..rows {
            let at = ((page * rows + row) * entries + si.slot_begin) as usize * entry_bytes;
            out.extend_from_slice(&whole[at..at + len]);
        }
    }
    out
}

fn layers(cache: &Cache) -> Vec<Vec<u8>> {
    (0..2).map(|l| cache.read_layer(l).unwrap()).collect()
}

#[test]
fn shards_hold_their_slices_and_their_blobs_reshard_into_a_whole_cache() {
    let cfg = sharded_config();
    let mut whole = Cache::new(&cfg).unwrap();
    let info = whole.shard().unwrap();
    assert_eq!((info.tp_size, info.dp_size, info.page_begin, info.page_end), (1, 1, 0, cfg.num_pages()));
    let mut shards = Vec::new();
    for tp in 0..2 {
        for dp in 0..2 {
            let shard = Cache::new_shard(&cfg, tp, dp).unwrap();
            let info = shard.shard().unwrap();
            assert_eq!(info, cfg.shard(tp, dp).unwrap());
            assert_eq!((info.tp_rank, info.tp_size, info.dp_rank, info.dp_size), (tp, 2, dp, 2));
            assert_eq!((info.head_begin, info.head_end), (2 * tp as i64, 2 * tp as i64 + 2));
            assert_eq!(info.global_pages, cfg.num_pages());
            shards.push(shard);
        }
    }

    // A prefill on data rank 0's pages 1-2 and one on data rank 1's second page, full K/V.
    let rank1 = cfg.shard(0, 1).unwrap().page_begin as i32;
    let requests = [
        BatchRequest { num_computed: 0, num_scheduled: 20, page_ids: vec![1, 2] },
        BatchRequest { num_computed: 0, num_scheduled: 5, page_ids: vec![rank1 + 1] },
    ];
    let batch = Batch::build(&cfg, &requests, &BatchOptions::default()).unwrap();
    let t = 25;
    let key: Vec<f32> = (0..t * H * D).map(|i| (i % 251) as f32 / 8.0 - 15.0).collect();
    let value: Vec<f32> = key.iter().map(|x| -x).collect();
    for layer in 0..2 {
        whole.concatenate(layer, &key, &value, [t, H, D], batch.metadata()).unwrap();
        for shard in &mut shards {
            shard.concatenate(layer, &key, &value, [t, H, D], batch.metadata()).unwrap();
        }
    }
    let wl = whole.layout().unwrap();
    let want = layers(&whole);
    for (layer, w) in want.iter().enumerate() {
        assert!(w.iter().any(|&b| b != 0));
        for shard in &shards {
            assert_eq!(shard.read_layer(layer as u32).unwrap(), slice_of(w, &wl, &shard.shard().unwrap()));
        }
    }

    // Two blobs in memory, two in files; each says which slice it holds.
    let blobs: Vec<Vec<u8>> = shards.iter().map(|s| s.serialize(&SerializeOptions::default()).unwrap()).collect();
    for (blob, shard) in blobs.iter().zip(&shards) {
        let info = inspect(blob, true).unwrap();
        assert_eq!(info.shard, shard.shard().unwrap());
        assert_eq!(info.flags & sys::KVP_FORMAT_FLAG_SHARD, sys::KVP_FORMAT_FLAG_SHARD);
    }
    let dir = std::env::temp_dir().join(format!("kvpages-rust-shards-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files = [dir.join("shard-1-0.kvps"), dir.join("shard-1-1.kvps")];
    for (file, shard) in files.iter().zip(&shards[2..]) {
        shard.serialize_to_file(&SerializeOptions::default(), file).unwrap();
    }
    let set = [BlobRef::Bytes(&blobs[0]), BlobRef::Bytes(&blobs[1]), BlobRef::File(&files[0]), BlobRef::File(&files[1])];
    let mut copy = Cache::new(&cfg).unwrap();
    copy.deserialize_shards_into(&set).unwrap();
    assert_eq!(layers(&copy), want);

    // Without tensor rank 1's blobs the set does not cover the whole cache: nothing is written.
    let mut target = Cache::new(&cfg).unwrap();
    let err = target.deserialize_shards_into(&set[..2]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FormatMismatch, "{err}");
    assert!(err.message.contains("kvp_deserialize_shards_into"), "{err}");
    assert!(layers(&target).iter().all(|l| l.iter().all(|&b| b == 0)));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_rank_out_of_range_is_an_invalid_argument_with_the_librarys_message() {
    let cfg = sharded_config();
    let err = Cache::new_shard(&cfg, 2, 0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message.contains("tp_rank 2 is out of range [0, 2)"), "{err}");
    let err = cfg.shard(0, -1).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message.contains("dp_rank -1 is out of range [0, 2)"), "{err}");
}

#[test]
fn a_cache_groups_shards_hold_their_slices_of_the_same_batch_written_with_one_call() {
    let cfg = sharded_config();
    let mut group = CacheGroup::new(&cfg).unwrap();
    assert_eq!(group.num_shards().unwrap(), 4);
    let rank1 = cfg.shard(0, 1).unwrap().page_begin as i32;
    let requests = [
        BatchRequest { num_computed: 0, num_scheduled: 20, page_ids: vec![1, 2] },
        BatchRequest { num_computed: 0, num_scheduled: 5, page_ids: vec![rank1 + 1] },
    ];
    let batch = Batch::build(&cfg, &requests, &BatchOptions::default()).unwrap();
    let t = 25;
    let key: Vec<f32> = (0..t * H * D).map(|i| (i % 241) as f32 / 8.0 - 14.0).collect();
    let value: Vec<f32> = key.iter().map(|x| 0.5 * x).collect();
    let mut whole = Cache::new(&cfg).unwrap();
    let (keys, values, shapes) = ([&key[..]; 4], [&value[..]; 4], [[t, H, D]; 4]);
    for layer in 0..2 {
        whole.concatenate(layer, &key, &value, [t, H, D], batch.metadata()).unwrap();
        group.concatenate(layer, &keys, &values, &shapes, batch.metadata()).unwrap();
    }
    let wl = whole.layout().unwrap();
    let want = layers(&whole);
    for tp in 0..2 {
        for dp in 0..2 {
            let shard = group.shard(tp, dp).unwrap();
            let info = shard.shard().unwrap();
            assert_eq!(info, cfg.shard(tp, dp).unwrap());
            for (layer, w) in want.iter().enumerate() {
                assert_eq!(shard.read_layer(layer as u32).unwrap(), slice_of(w, &wl, &info));
            }
        } // the borrowed shard is dropped here and stays in the group
    }
    assert!(want[0].iter().any(|&b| b != 0));
    let again = group.shard(1, 1).unwrap();
    assert_eq!(again.read_layer(1).unwrap(), slice_of(&want[1], &wl, &again.shard().unwrap()));
    drop(again);

    // Shard 3's tensors with 3 heads (neither all 4 nor its own 2): refused, naming the shard,
    // and no shard changes.
    let bad_key = vec![1.0f32; t * 3 * D];
    let mut bad_shapes = shapes;
    bad_shapes[3] = [t, 3, D];
    let (mut bad_keys, mut bad_values) = (keys, values);
    bad_keys[3] = &bad_key;
    bad_values[3] = &bad_key;
    let err = group.concatenate(0, &bad_keys, &bad_values, &bad_shapes, batch.metadata()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.message.contains("shard 3 (tp 1, dp 1)"), "{err}");
    let first = group.shard(0, 0).unwrap();
    assert_eq!(first.read_layer(0).unwrap(), slice_of(&want[0], &wl, &first.shard().unwrap()));
    drop(first);
    let err = group.shard(2, 0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    drop(group); // destroys every shard once
}
