//! One test per group of the library: dtypes (bf16 against the C library's bytes), planning and
//! budgets, the order-safe batch, views, serialization (bytes, files, io streams, page
//! selections), inspect, JSON, metadata arrays, async errors, devices, versions. Bad input is
//! checked for its error kind, its message and that nothing changed.
use kvpages::*;
use std::io::Cursor;

const H: usize = 2;
const D: usize = 128;

fn config(dtype: Dtype) -> Config {
    Config::create(&ConfigOptions {
        num_hidden_layers: 2,
        num_kv_heads: H as i64,
        head_dim: D as i64,
        max_model_length: 64,
        page_size: 16,
        dtype,
        budget_bytes: 1 << 20,
        ..Default::default()
    })
    .expect("config")
}

/// Values that need rounding in bf16 (and ties), sign changes, a subnormal-ish one.
fn input(n: usize) -> Vec<f32> {
    (0..n).map(|i| (i as f32 - 300.0) * 1.001_953_1 + 1.0 / 3.0).collect()
}

fn one_prefill(cfg: &Config, n: i64) -> Batch {
    Batch::build(cfg, &[BatchRequest { num_computed: 0, num_scheduled: n, page_ids: vec![1] }], &BatchOptions::default())
        .expect("batch")
}

#[test]
fn bf16_cache_stores_the_c_librarys_rounding_and_reads_back() {
    let cfg = config(Dtype::Bf16);
    let mut cache = Cache::new(&cfg).unwrap();
    let batch = one_prefill(&cfg, 3);
    let key = input(3 * H * D);
    let value: Vec<f32> = key.iter().map(|x| -x).collect();
    cache.concatenate(0, &key, &value, [3, H, D], batch.metadata()).unwrap();
    // The bits the C library's kvp_convert produces, through the sys crate directly.
    let mut want_bits = vec![0u16; key.len()];
    let status = unsafe {
        sys::kvp_convert(key.as_ptr() as *const _, sys::KVP_DTYPE_F32, want_bits.as_mut_ptr() as *mut _,
                         sys::KVP_DTYPE_BF16, key.len())
    };
    assert_eq!(status, sys::KVP_OK);
    let view = cache.view(0, ViewKind::Keys).unwrap();
    assert_eq!(view.dtype().unwrap(), Dtype::Bf16);
    let mut got_bits = Vec::new();
    for t in 0..3 {
        got_bits.extend(view.read::<Bf16>(&[1, t]).unwrap().iter().map(|b| b.to_bits()));
    }
    assert_eq!(got_bits, want_bits, "the cache holds kvp_convert's bf16 bits");
    // The newtype rounds the same way, and f32 reads are exact widenings.
    let mine: Vec<u16> = key.iter().map(|&x| Bf16::from_f32(x).to_bits()).collect();
    assert_eq!(mine, want_bits);
    let wide: Vec<f32> = want_bits.iter().map(|&b| f32::from_bits((b as u32) << 16)).collect();
    assert_eq!(view.read_f32(&[1, 2]).unwrap(), wide[2 * H * D..]);
    // And the layer bytes (kvp_cache_read_layer) agree with the view.
    let layer = cache.read_layer(0).unwrap();
    assert!(layer.len() == cache.layer_bytes().unwrap());
}

#[test]
fn bf16_and_f16_inputs_and_every_storage_dtype() {
    for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16, Dtype::F8E4M3Fn, Dtype::F8E5M2] {
        let cfg = config(dtype);
        let mut cache = Cache::new(&cfg).unwrap();
        let batch = one_prefill(&cfg, 1);
        let key: Vec<Bf16> = from_f32_slice(&input(H * D));
        let value: Vec<Bf16> = key.iter().map(|x| Bf16::from_f32(-x.to_f32())).collect();
        cache.concatenate(1, &key, &value, [1, H, D], batch.metadata()).unwrap();
        let want: Vec<f32> = match dtype {
            Dtype::F32 => to_f32_vec(&key),
            Dtype::F16 => to_f32_vec(&from_f32_slice::<F16>(&to_f32_vec(&key))),
            Dtype::Bf16 => to_f32_vec(&key),
            Dtype::F8E4M3Fn => to_f32_vec(&from_f32_slice::<F8E4M3Fn>(&to_f32_vec(&key))),
            _ => to_f32_vec(&from_f32_slice::<F8E5M2>(&to_f32_vec(&key))),
        };
        let got = cache.view(1, ViewKind::Keys).unwrap().read_f32(&[1, 0]).unwrap();
        let same = got.iter().zip(&want).all(|(a, b)| a == b || (a.is_nan() && b.is_nan()));
        assert!(same, "{dtype}: read back differs");
    }
    let f16: Vec<F16> = from_f32_slice(&[1.0, 65504.0, 1e6]);
    assert_eq!(f16.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), vec![0x3c00, 0x7bff, 0x7c00]);
    assert_eq!(F8E4M3Fn::from_f32(448.0).to_bits(), 0x7e);
    assert!(F8E4M3Fn::from_f32(1000.0).to_f32().is_nan(), "no saturation: NaN beyond 448");
    assert_eq!(F8E5M2::from_f32(1e6).to_f32(), f32::INFINITY);
    let mut short = [Bf16::default(); 1];
    let e = convert(&[1.0f32, 2.0], &mut short).unwrap_err();
    assert_eq!((e.kind(), short[0]), (ErrorKind::InvalidArgument, Bf16::default()));
    let mut out = [0u8; 4];
    let e = convert_bytes(&[0u8; 8], Dtype::F64, &mut out, Dtype::F32).unwrap_err();
    assert_eq!((e.kind(), out), (ErrorKind::Unsupported, [0u8; 4]), "{e}");
    let e = convert_bytes(&[0u8; 3], Dtype::Bf16, &mut out, Dtype::F32).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    convert_bytes(&Bf16::from_f32(2.5).to_bits().to_le_bytes(), Dtype::Bf16, &mut out, Dtype::F32).unwrap();
    assert_eq!(f32::from_le_bytes(out), 2.5);
}

#[test]
fn view_writes_convert_and_bad_indices_change_nothing() {
    let cfg = config(Dtype::Bf16);
    let mut cache = Cache::new(&cfg).unwrap();
    let row = input(H * D);
    cache.view_mut(0, ViewKind::Values).unwrap().write_f32(&[3, 4], &row).unwrap();
    let back = cache.view(0, ViewKind::Values).unwrap().read_f32(&[3, 4]).unwrap();
    assert_eq!(back, to_f32_vec(&from_f32_slice::<Bf16>(&row)));
    let mut v = cache.view_mut(0, ViewKind::Values).unwrap();
    let e = v.write_f32(&[3, 4], &row[1..]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message.contains("elements given"), "{e}");
    let e = v.write_exact(&[3, 4], &row).unwrap_err();
    assert!(e.message.contains("bf16"), "{e}");
    assert_eq!(v.write_f32(&[99], &row).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(v.as_view().read_f32(&[3, 4]).unwrap(), back, "nothing changed");
    assert_eq!(cache.view(0, ViewKind::Keys).unwrap().get::<Bf16>(&[3, 4, 0]), None, "not a full index");
}

#[test]
fn plan_budget_and_device_statistics() {
    let opts = ConfigOptions {
        num_hidden_layers: 32,
        num_kv_heads: 8,
        head_dim: 128,
        max_model_length: 8192,
        budget_bytes: 4 << 30,
        ..Default::default()
    };
    let cfg = Config::create(&opts).unwrap();
    assert_eq!((cfg.dtype().unwrap(), cfg.layout_version().unwrap(), cfg.device()), (Dtype::Bf16, Layout::V3, Device::Cpu));
    let plan = cfg.plan().unwrap();
    assert_eq!(plan.bytes_per_page, 32 * 2 * 8 * 128 * 2 * 128);
    assert_eq!(plan.num_pages, (4i64 << 30) / plan.bytes_per_page);
    assert_eq!(plan.token_capacity, plan.usable_pages * 128);
    // Sharding multiplies the budget; injected statistics replace the device's.
    let sharded = Config::create(&ConfigOptions { kv_head_shards: 2, ..opts.clone() }).unwrap();
    assert_eq!(sharded.num_pages(), 2 * cfg.num_pages());
    let stats = MemoryStats { bytes_limit: 10 << 30, valid: true, ..Default::default() };
    let injected = ConfigOptions { budget_bytes: 0, memory_stats: vec![stats], hbm_utilization: 0.5, ..opts.clone() };
    let want = hbm_budget_bytes(&[stats], 0.5, BudgetMode::Free, 256 << 20).unwrap();
    assert_eq!(want, (5i64 << 30) - (256 << 20));
    assert_eq!(Config::create(&injected).unwrap().num_pages(), want / plan.bytes_per_page);
    // From the CPU's own statistics (the default device).
    let host = device_memory_stats(Device::Cpu).unwrap();
    assert!(host.valid && host.bytes_total > 0);
    let from_host = Config::create(&ConfigOptions { budget_bytes: 0, ..opts.clone() }).unwrap();
    assert!(from_host.num_pages() >= 1);
    // A CUDA budget needs the device: NoDevice on a machine or build without it.
    if device_count().unwrap() == 0 {
        let e = Config::create(&ConfigOptions { budget_bytes: 0, device: Device::Cuda(0), ..opts.clone() }).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoDevice, "{e}");
        assert_eq!(Cache::new_on(&cfg, Device::Cuda(0)).unwrap_err().kind(), ErrorKind::NoDevice);
    }
    let e = Config::create(&ConfigOptions { dtype: Dtype::F64, ..opts.clone() }).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    let e = Config::create(&ConfigOptions { k_headdim: 128, v_headdim: 64, ..opts }).unwrap_err();
    assert!(e.message.contains("headdim"), "{e}");
    assert_eq!(cfg.padded_num_slices(0, 0).unwrap() > 0, true);
    assert_eq!(cfg.layout().unwrap().ndim, 5);
}

#[test]
fn config_json_and_records() {
    let cfg = config(Dtype::F16);
    let json = cfg.to_json().unwrap();
    assert!(json.contains("\"_kvdtype_str\": \"fp16\""), "{json}");
    let back = Config::from_json(&json).unwrap();
    back.validate().unwrap();
    assert_eq!(back.raw(), cfg.raw());
    let e = Config::from_json("{\"num_hidden_layers\": 2}").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message.contains("max_model_length") || e.message.contains("missing"), "{e}");
    let mut rec = Config::default_record();
    assert_eq!((rec.page_size, rec.num_pages), (128, -1));
    rec.num_hidden_layers = 1;
    assert_eq!(Config::from_raw(rec).unwrap_err().kind(), ErrorKind::InvalidArgument);
}

#[test]
fn batch_packs_in_row_order_and_rejects_wrong_sizes() {
    let cfg = config(Dtype::F32);
    let mut cache = Cache::new(&cfg).unwrap();
    let reqs = vec![
        BatchRequest { num_computed: 0, num_scheduled: 3, page_ids: vec![1] },
        BatchRequest { num_computed: 0, num_scheduled: 0, page_ids: vec![] },
        BatchRequest { num_computed: 5, num_scheduled: 1, page_ids: vec![2] },
    ];
    let batch = Batch::build(&cfg, &reqs, &BatchOptions::default()).unwrap();
    assert_eq!((batch.order(), batch.num_tokens()), (&[2usize, 0][..], 4));
    let k0: Vec<f32> = (0..3 * H * D).map(|i| i as f32).collect();
    let k2: Vec<f32> = (0..H * D).map(|i| 10000.0 + i as f32).collect();
    let v0: Vec<f32> = k0.iter().map(|x| -x).collect();
    let v2: Vec<f32> = k2.iter().map(|x| -x).collect();
    let before = cache.read_layer(0).unwrap();
    let e = cache.concatenate_batch(0, &batch, &[&k0, &[], &k2[1..]], &[&v0, &[], &v2]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message.contains("request 2"), "{e}");
    let e = cache.concatenate_batch(0, &batch, &[&k0, &k2], &[&v0, &v2]).unwrap_err();
    assert!(e.message.contains("2 per-request slices for a batch of 3"), "{e}");
    assert_eq!(cache.read_layer(0).unwrap(), before, "nothing written");
    cache.concatenate_batch(0, &batch, &[&k0, &[], &k2], &[&v0, &[], &v2]).unwrap();
    let keys = cache.view(0, ViewKind::Keys).unwrap();
    assert_eq!(keys.read_f32(&[1, 2]).unwrap(), k0[2 * H * D..], "prefill token 2 at page 1 row 2");
    assert_eq!(keys.read_f32(&[2, 5]).unwrap(), k2, "the decode token at page 2 row 5");
    // request_order: the same pages from keys packed in request order, nothing repacked.
    let ordered = Batch::build(&cfg, &reqs, &BatchOptions { request_order: true, ..Default::default() }).unwrap();
    assert_eq!(ordered.order(), batch.order());
    let packed = ordered.pack(&[&k0, &[], &k2], H * D).unwrap();
    assert_eq!(packed[..k0.len()], k0[..], "request 0 first, as given");
    let vpacked = ordered.pack(&[&v0, &[], &v2], H * D).unwrap();
    let mut other = Cache::new(&cfg).unwrap();
    other.concatenate(0, &packed, &vpacked, [4, H, D], ordered.metadata()).unwrap();
    assert_eq!(other.read_layer(0).unwrap(), cache.read_layer(0).unwrap());
    assert_eq!(ordered.metadata().array(MetadataField::TokenStarts).unwrap(), &[3, 0]);
    // A descriptor of borrowed arrays (here another handle's host arrays) gives the same writes.
    let desc = ordered.metadata().desc().unwrap();
    let borrowed = unsafe { Metadata::from_desc(&desc) }.unwrap();
    let mut third = Cache::new(&cfg).unwrap();
    third.concatenate(0, &packed, &vpacked, [4, H, D], &borrowed).unwrap();
    assert_eq!(third.read_layer(0).unwrap(), cache.read_layer(0).unwrap());
    let mut bad = desc;
    bad.token_starts_len = 1;
    let e = unsafe { Metadata::from_desc(&bad) }.unwrap_err();
    assert!(e.message.contains("token_starts has 1 entries"), "{e}");
    // keep_order keeps the caller's order (v3 then needs decodes first).
    let kept = Batch::build(&cfg, &[reqs[2].clone(), reqs[0].clone()], &BatchOptions { keep_order: true, ..Default::default() })
        .unwrap();
    assert_eq!(kept.order(), &[0, 1]);
    let md = kept.metadata();
    assert_eq!(md.array(MetadataField::RequestDistribution).unwrap(), &[1, 2, 2]);
    let seed = Batch::build(&cfg, &reqs, &BatchOptions { seed_distribution: true, max_num_reqs: 4, ..Default::default() })
        .unwrap();
    assert_eq!(seed.metadata().array(MetadataField::RequestDistribution).unwrap(), &[1, 1, 2]);
    assert_eq!(seed.metadata().array(MetadataField::ContextLens).unwrap(), &[6, 3, 0, 0]);
    let e = Batch::build(&cfg, &[BatchRequest { num_computed: 0, num_scheduled: 40, page_ids: vec![1] }],
                         &BatchOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn metadata_json_arrays_and_host_arrays() {
    let cfg = config(Dtype::F32);
    let batch = one_prefill(&cfg, 3);
    let json = batch.metadata().to_json().unwrap();
    let md = Metadata::from_json(&json).unwrap();
    for field in [MetadataField::PagesTables, MetadataField::ContextLens, MetadataField::PositionIds] {
        assert_eq!(md.array(field).unwrap(), batch.metadata().array(field).unwrap());
    }
    assert_eq!(Metadata::from_json(&md.to_json().unwrap()).unwrap().to_json().unwrap(), md.to_json().unwrap());
    assert_eq!(md.array(MetadataField::QueryStartLoc).unwrap(), &[0, 3]);
    assert_eq!(md.desc().unwrap().num_reqs, 1);
    assert!(Metadata::from_json("[1").is_err());
    let empty = Metadata::empty(Layout::V3, 4, 2, 4, 0).unwrap();
    assert_eq!(empty.array(MetadataField::PositionIds).unwrap(), &[0, 0, 0, 0]);
    // Hand-written v3 arrays: the same write as the builder's.
    let arrays = HostArrays {
        layout: Layout::V3,
        pages_tables: vec![1, 0, 0, 0],
        pages_per_req: 4,
        context_lens: vec![3],
        query_start_loc: vec![0, 3],
        num_seqs: vec![1],
        request_distribution: vec![0, 1, 1],
        ..Default::default()
    };
    let hand = Metadata::from_host_arrays(arrays).unwrap();
    let key = input(3 * H * D);
    let (mut a, mut b) = (Cache::new(&cfg).unwrap(), Cache::new(&cfg).unwrap());
    a.concatenate(0, &key, &key, [3, H, D], &hand).unwrap();
    b.concatenate(0, &key, &key, [3, H, D], batch.metadata()).unwrap();
    assert_eq!(a.read_layer(0).unwrap(), b.read_layer(0).unwrap());
    let e = Metadata::from_host_arrays(HostArrays { slot_mapping: vec![1, 2], ..Default::default() }).unwrap_err();
    assert!(e.message.contains("slot_mapping"), "{e}");
}

/// A cache with pages 1 and 2 of layer 0 written.
fn written_cache(cfg: &Config) -> Cache {
    let mut cache = Cache::new(cfg).unwrap();
    let batch = Batch::build(cfg, &[BatchRequest { num_computed: 0, num_scheduled: 20, page_ids: vec![1, 2] }],
                             &BatchOptions::default())
        .unwrap();
    let key = input(20 * H * D);
    cache.concatenate(0, &key, &key, [20, H, D], batch.metadata()).unwrap();
    cache
}

#[test]
fn serialization_round_trips_through_bytes_streams_and_files() {
    let cfg = config(Dtype::Bf16);
    let cache = written_cache(&cfg);
    let opts = SerializeOptions { pages: Some(&[1, 2]), chunk_bytes: 4096 };
    let blob = cache.serialize(&opts).unwrap();
    assert_eq!(blob.len(), cache.serialized_size(&opts).unwrap());
    let info = inspect(&blob, true).unwrap();
    assert_eq!((info.num_stored_pages, info.first_page_id, info.last_page_id), (2, 1, 2));
    assert_eq!((info.chunk_bytes, info.config.raw()), (4096, cfg.raw()));
    // A stream (std::io::Write / Read) gives the same bytes; the reader reads exactly the blob.
    let mut stream = Vec::new();
    cache.serialize_to_writer(&opts, &mut stream).unwrap();
    assert_eq!(stream, blob);
    stream.extend_from_slice(b"trailing data");
    let mut reader = Cursor::new(stream);
    let copy = Cache::deserialize_from_reader(&mut reader, &DeserializeOptions::default()).unwrap();
    assert_eq!(reader.position() as usize, blob.len());
    assert_eq!(copy.read_layer(0).unwrap(), cache.read_layer(0).unwrap());
    let whole = Cache::deserialize(&cache.serialize(&SerializeOptions::default()).unwrap(), &DeserializeOptions::default())
        .unwrap();
    assert_eq!(whole.read_layer(0).unwrap(), cache.read_layer(0).unwrap());
    // Into chosen pages of an existing cache, from a buffer, a reader and a file.
    let mut target = Cache::new(&cfg).unwrap();
    target.deserialize_into(&blob, Some(&[5, 6])).unwrap();
    let (src, dst) = (cache.view(0, ViewKind::Keys).unwrap(), target.view(0, ViewKind::Keys).unwrap());
    assert_eq!(src.read::<Bf16>(&[2]).unwrap(), dst.read::<Bf16>(&[6]).unwrap());
    let mut t2 = Cache::new(&cfg).unwrap();
    t2.deserialize_into_from_reader(&mut Cursor::new(&blob), None).unwrap();
    assert_eq!(t2.read_layer(0).unwrap(), cache.read_layer(0).unwrap());
    let path = std::env::temp_dir().join(format!("kvpages-rs-test-{}.kvp", std::process::id()));
    cache.serialize_to_file(&opts, &path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), blob);
    assert_eq!(inspect_file(&path, false).unwrap().total_bytes, blob.len() as u64);
    let mut t3 = Cache::new(&cfg).unwrap();
    t3.deserialize_into_from_file(&path, None).unwrap();
    let from_file = Cache::deserialize_from_file(&path, &DeserializeOptions::default()).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(t3.read_layer(0).unwrap(), cache.read_layer(0).unwrap());
    assert_eq!(from_file.read_layer(0).unwrap(), cache.read_layer(0).unwrap());
    let mut small = vec![0u8; 10];
    assert_eq!(cache.serialize_into(&opts, &mut small).unwrap_err().kind(), ErrorKind::BufferTooSmall);
    assert_eq!(small, vec![0u8; 10]);
}

#[test]
fn bad_blobs_are_format_errors_and_leave_the_target_unchanged() {
    let cfg = config(Dtype::Bf16);
    let cache = written_cache(&cfg);
    let blob = cache.serialize(&SerializeOptions::pages(&[1])).unwrap();
    let mut target = written_cache(&cfg);
    target.view_mut(1, ViewKind::Keys).unwrap().write_f32(&[1, 0, 0], &[7.0; D]).unwrap();
    let before = (target.read_layer(0).unwrap(), target.read_layer(1).unwrap());
    let mut flipped = blob.clone();
    let last = flipped.len() - 20;
    flipped[last] ^= 0x40;
    let e = target.deserialize_into(&flipped, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FormatChecksum, "{e}");
    let e = target.deserialize_into(&blob[..blob.len() - 1], None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FormatTruncated, "{e}");
    let e = Cache::deserialize(b"not a kvpages blob at all, just text", &DeserializeOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FormatMagic);
    let other = written_cache(&config(Dtype::F16)).serialize(&SerializeOptions::pages(&[1])).unwrap();
    assert_eq!(target.deserialize_into(&other, None).unwrap_err().kind(), ErrorKind::FormatMismatch);
    assert_eq!((target.read_layer(0).unwrap(), target.read_layer(1).unwrap()), before, "target unchanged");
    let e = cache.serialize(&SerializeOptions::pages(&[1, 1])).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    // An io::Error from the stream is reported as KVP_ERR_IO with the stream's message.
    struct Full;
    impl std::io::Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::new(std::io::ErrorKind::Other, "disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let e = cache.serialize_to_writer(&SerializeOptions::default(), &mut Full).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.message.contains("disk full"), "{e}");
    let io: std::io::Error = Cache::deserialize(&blob[..8], &DeserializeOptions::default()).unwrap_err().into();
    assert_eq!(io.kind(), std::io::ErrorKind::InvalidData);
    let e = Cache::deserialize(&blob, &DeserializeOptions { max_cache_bytes: 1000, ..Default::default() }).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FormatMismatch);
    assert!(e.message.contains("max_cache_bytes"), "{e}");
}

#[test]
fn devices_async_errors_dlpack_versions_and_helpers() {
    let cfg = config(Dtype::Bf16);
    let mut cache = Cache::new(&cfg).unwrap();
    assert_eq!(cache.device().unwrap(), Device::Cpu);
    assert_eq!(cache.async_error().unwrap(), None);
    cache.clear_async_error().unwrap();
    let t = cache.export_dlpack(0, ViewKind::Keys).unwrap();
    assert_eq!((t.tensor().dtype.code, t.tensor().dtype.bits), (sys::K_DL_BFLOAT, 16));
    assert_eq!(t.shape(), cache.view(0, ViewKind::Keys).unwrap().shape());
    drop(t);
    check_abi().unwrap();
    assert_eq!(version_number() / 10000, 1);
    assert!(version_number() >= 10300 && version().starts_with("1."));
    assert!(build_info().starts_with("kvpages "));
    assert_eq!(status_name(sys::KVP_ERR_FORMAT_CORRUPT), "KVP_ERR_FORMAT_CORRUPT");
    assert_eq!(Error::new(sys::KVP_ERR_FORMAT_CORRUPT, "x").kind(), ErrorKind::FormatCorrupt);
    assert_eq!((cdiv(-1, 4).unwrap(), cdiv(5, -2).unwrap()), (0, -1));
    assert_eq!(cdiv(1, 0).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(align_to_multiple(5, 4).unwrap(), 8);
    assert_eq!(previous_power_of_2(100), 64);
    assert_eq!(page_size_bytes(16, 2, 128, Dtype::Bf16).unwrap(), 16 * 4 * 128 * 2);
    assert_eq!(num_slices_per_kv_cache_update_page(1 << 20).unwrap(), 16);
    assert_eq!(("fp8".parse::<Dtype>().unwrap(), Dtype::F8E5M2.packing().unwrap()), (Dtype::F8E5M2, 4));
    assert_eq!(("v2".parse::<Layout>().unwrap(), Layout::V3.to_string()), (Layout::V2, "v3".to_string()));
    assert_eq!("v9".parse::<Layout>().unwrap_err().kind(), ErrorKind::NotFound);
    assert!(last_error_message().contains("v9"));
}

#[test]
fn misuse_handler_sees_bad_handles() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    fn handler(what: &str) {
        assert!(what.contains("kvp_cache_destroy"), "{what}");
        CALLS.fetch_add(1, Ordering::SeqCst);
    }
    set_misuse_handler(Some(handler));
    let cfg = config(Dtype::F32);
    let raw = Cache::new(&cfg).unwrap().as_ptr(); // dropped: destroyed
    assert_eq!(unsafe { sys::kvp_cache_destroy(raw) }, sys::KVP_ERR_INVALID_HANDLE);
    set_misuse_handler(None);
    assert_eq!(CALLS.load(Ordering::SeqCst), 1);
}

#[test]
fn config_sharding_resolution() {
    // SPEC.md §7.3: 4 fp8 heads over 4 devices have 2 storage groups; bf16 has 4: upcast.
    let opts = ConfigOptions {
        num_hidden_layers: 1, num_kv_heads: 4, head_dim: 128, max_model_length: 4096, dtype: Dtype::F8E4M3Fn,
        budget_bytes: 1 << 20, no_safety_margin: true, kv_head_shards: 4, data_parallel_size: 2, ..Default::default()
    };
    let cfg = Config::create(&opts).unwrap();
    assert_eq!((cfg.dtype().unwrap(), cfg.kv_head_shards(), cfg.data_parallel_size()), (Dtype::Bf16, 4, 2));
    assert_eq!(cfg.num_pages(), 32); // 256 KiB bf16 pages, 1 MiB x 4 x 2
    let plan = cfg.plan().unwrap();
    assert_eq!(plan.head_sharding, sys::KVP_HEAD_SHARDING_UPCAST);
    assert_eq!((plan.units_per_device, plan.pages_per_device, plan.bytes_per_device), (1, 16, plan.total_bytes / 8));
    assert!(cfg.sharding_message().unwrap().starts_with("upcast fp8_e4m3fn \u{2192} bf16 because 2 storage groups"));
    // 1 head over 1024 devices: nothing splits it, every device holds all heads.
    let rep = Config::create(&ConfigOptions { num_kv_heads: 1, kv_head_shards: 1024, data_parallel_size: 0,
        dtype: Dtype::Bf16, ..opts.clone() }).unwrap();
    assert_eq!((rep.kv_head_shards(), rep.raw().requested_kv_head_shards), (1, 1024));
    assert_eq!(rep.plan().unwrap().head_sharding, sys::KVP_HEAD_SHARDING_REPLICATE);
    // Bad input: status, message.
    let err = Config::create(&ConfigOptions { data_parallel_size: -1, ..opts }).unwrap_err();
    assert!(err.to_string().contains("data_parallel_size"), "{}", err);
}
