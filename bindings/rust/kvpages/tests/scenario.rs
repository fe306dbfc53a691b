//! The shared binding scenario: create a cache, concatenate a small batch, read the tokens back
//! through views, an error path; plus ownership (Drop once, Send) and error mapping.
use kvpages::*;

const H: usize = 2;
const D: usize = 128;
const S: i64 = 16;

fn config() -> Config {
    Config::create(&ConfigOptions {
        num_hidden_layers: 2,
        num_kv_heads: H as i64,
        max_model_length: 64,
        head_dim: D as i64,
        page_size: S,
        dtype: Dtype::F32,
        budget_bytes: 1 << 20,
        ..Default::default()
    })
    .expect("config")
}

fn token(t: usize, h: usize, d: usize) -> f32 {
    (t * 1000 + h * 256 + d) as f32
}

/// Writes a prefill of 3 tokens (page 1) and a decode token at position 5 (page 2) into layer 1.
fn write_batch(cache: &mut Cache, cfg: &Config) -> (Metadata, Vec<f32>, Vec<f32>) {
    let reqs = vec![
        BatchRequest { num_computed: 0, num_scheduled: 3, page_ids: vec![1] },
        BatchRequest { num_computed: 5, num_scheduled: 1, page_ids: vec![2] },
    ];
    let (md, order) = Metadata::build(cfg, &reqs).expect("build");
    assert_eq!(order, vec![1, 0], "the decode request comes first");
    let mut key = Vec::new();
    for t in 0..4 {
        for h in 0..H {
            for d in 0..D {
                key.push(token(t, h, d));
            }
        }
    }
    let value: Vec<f32> = key.iter().map(|x| -x).collect();
    cache.concatenate(1, &key, &value, [4, H, D], &md).expect("concatenate");
    (md, key, value)
}

#[test]
fn version_is_checked() {
    check_abi().expect("compatible library");
    assert!(version().starts_with("1."));
}

#[test]
fn concatenate_then_read_tokens_back_through_views() {
    let cfg = config();
    let mut cache = Cache::new(&cfg).expect("cache");
    let (_md, _key, _value) = write_batch(&mut cache, &cfg);
    let keys = cache.view(1, ViewKind::Keys).unwrap();
    let values = cache.view(1, ViewKind::Values).unwrap();
    assert_eq!(keys.shape(), &[cfg.num_pages(), S, H as i64, D as i64]);
    for h in 0..H {
        for d in 0..D {
            // Row 0 (decode) -> page 2 slot 5; rows 1..3 (prefill) -> page 1 slots 0..2.
            assert_eq!(keys.get_f32(&[2, 5, h as i64, d as i64]), Some(token(0, h, d)));
            assert_eq!(values.get_f32(&[2, 5, h as i64, d as i64]), Some(-token(0, h, d)));
            for t in 0..3 {
                assert_eq!(keys.get_f32(&[1, t, h as i64, d as i64]), Some(token(t as usize + 1, h, d)));
                assert_eq!(values.get_f32(&[1, t, h as i64, d as i64]), Some(-token(t as usize + 1, h, d)));
            }
            // Untouched slots and the other layer stay zero.
            assert_eq!(keys.get_f32(&[2, 4, h as i64, d as i64]), Some(0.0));
            assert_eq!(keys.get_f32(&[1, 3, h as i64, d as i64]), Some(0.0));
            assert_eq!(cache.view(0, ViewKind::Keys).unwrap().get_f32(&[1, 0, h as i64, d as i64]), Some(0.0));
        }
    }
    assert_eq!(keys.get_f32(&[cfg.num_pages(), 0, 0, 0]), None, "out of range index");
}

#[test]
fn error_path_returns_code_and_message_and_changes_nothing() {
    let cfg = config();
    let mut cache = Cache::new(&cfg).unwrap();
    let (md, key, value) = write_batch(&mut cache, &cfg);
    let before: Vec<Option<f32>> = (0..D as i64).map(|d| cache.view(1, ViewKind::Keys).unwrap().get_f32(&[1, 0, 0, d])).collect();
    let err = cache.concatenate(2, &key, &value, [4, H, D], &md).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert_eq!(err.code, 1);
    assert_eq!(err.name, "KVP_ERR_INVALID_ARGUMENT");
    assert!(err.message.contains("layer 2"), "message: {}", err.message);
    assert!(err.to_string().starts_with("KVP_ERR_INVALID_ARGUMENT: "));
    let err = cache.view(7, ViewKind::Pages).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let after: Vec<Option<f32>> = (0..D as i64).map(|d| cache.view(1, ViewKind::Keys).unwrap().get_f32(&[1, 0, 0, d])).collect();
    assert_eq!(before, after);
    let bad = Config::create(&ConfigOptions { num_hidden_layers: 0, ..Default::default() }).unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::InvalidArgument);
    assert!(!bad.message.is_empty());
}

#[test]
fn unknown_codes_map_to_other() {
    let e = Error::new(77, "x");
    assert_eq!(e.kind(), ErrorKind::Other);
    assert_eq!(e.name, "KVP_ERR_UNKNOWN");
}

#[test]
fn drop_releases_exactly_once() {
    let cfg = config();
    let cache = Cache::new(&cfg).unwrap();
    let raw = cache.as_ptr();
    drop(cache);
    // The handle is gone: the library rejects it (API armor) instead of freeing it twice.
    assert_eq!(unsafe { sys::kvp_cache_destroy(raw) }, sys::KVP_ERR_INVALID_HANDLE);
}

#[test]
fn caches_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}
    assert_send_sync::<Cache>();
    assert_send::<Metadata>();
    let cfg = config();
    let mut cache = Cache::new(&cfg).unwrap();
    let handle = std::thread::spawn(move || {
        let (md, _, _) = write_batch(&mut cache, &cfg);
        drop(md);
        cache
    });
    let cache = handle.join().unwrap();
    assert_eq!(cache.view(1, ViewKind::Keys).unwrap().get_f32(&[2, 5, 1, 3]), Some(token(0, 1, 3)));
    // Errors are read on the thread that failed.
    let t = std::thread::spawn(|| Config::create(&ConfigOptions::default()).unwrap_err());
    assert!(!t.join().unwrap().message.is_empty());
}

#[test]
fn dlpack_export_describes_the_view_zero_copy() {
    let cfg = config();
    let mut cache = Cache::new(&cfg).unwrap();
    let (_md, _, _) = write_batch(&mut cache, &cfg);
    let view = cache.view(1, ViewKind::Keys).unwrap();
    let t = cache.export_dlpack(1, ViewKind::Keys).unwrap();
    assert_eq!(t.shape(), view.shape());
    assert_eq!(t.strides(), view.strides());
    assert_eq!((t.tensor().dtype.code, t.tensor().dtype.bits, t.tensor().dtype.lanes), (sys::K_DL_FLOAT, 32, 1));
    assert_eq!(t.tensor().device.device_type, sys::K_DL_CPU);
    // The element (2, 5, 1, 3) read through the DLPack description is the decode token's key.
    let s = t.strides();
    let off = t.tensor().byte_offset as usize + 4 * (2 * s[0] + 5 * s[1] + s[2] + 3) as usize;
    let x = unsafe { *((t.tensor().data as *const u8).add(off) as *const f32) };
    assert_eq!(x, token(0, 1, 3));
    assert_eq!(cache.export_dlpack(5, ViewKind::Keys).unwrap_err().kind(), ErrorKind::InvalidArgument);
}

#[test]
fn layers_copy_through_the_host_and_raw_concatenate_matches() {
    let cfg = config();
    let mut a = Cache::new(&cfg).unwrap();
    let (md, key, value) = write_batch(&mut a, &cfg);
    // The raw entry point (what a CUDA cache is written with, here on host memory) gives the same
    // bytes as the slice one.
    let mut b = Cache::new_on(&cfg, Device::Cpu).unwrap();
    let tensor = |data: &[f32]| {
        let mut t = sys::kvp_tensor {
            data: data.as_ptr() as *mut _,
            dtype: sys::KVP_DTYPE_F32,
            ndim: 3,
            shape: [0; sys::KVP_MAX_DIMS],
            strides: [0; sys::KVP_MAX_DIMS],
            device_type: sys::KVP_DEVICE_CPU,
            device_id: 0,
        };
        t.shape[..3].copy_from_slice(&[4, H as i64, D as i64]);
        t.strides[..3].copy_from_slice(&[(H * D) as i64, D as i64, 1]);
        t
    };
    let (k, v) = (tensor(&key), tensor(&value));
    unsafe { b.concatenate_raw(1, &k, &v, &md, std::ptr::null_mut()) }.unwrap();
    let bytes = a.read_layer(1).unwrap();
    assert_eq!(bytes.len(), a.layer_bytes().unwrap());
    assert!(bytes.iter().any(|&x| x != 0));
    assert_eq!(b.read_layer(1).unwrap(), bytes);
    // write_layer replaces a layer; a wrong size or layer is refused and changes nothing.
    let mut c = Cache::new(&cfg).unwrap();
    c.write_layer(0, &bytes).unwrap();
    assert_eq!(c.read_layer(0).unwrap(), bytes);
    let err = c.write_layer(0, &bytes[1..]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message.contains(&bytes.len().to_string()), "message: {}", err.message);
    assert_eq!(c.write_layer(2, &bytes).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(c.read_layer(0).unwrap(), bytes);
    assert!(c.read_layer(1).unwrap().iter().all(|&x| x == 0));
}

#[test]
fn cuda_cache_needs_a_device() {
    let cfg = config();
    let n = device_count().unwrap();
    match Cache::new_on(&cfg, Device::Cuda(n)) {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::NoDevice);
            assert!(e.message.contains(&n.to_string()), "message: {}", e.message);
        }
        Ok(_) => panic!("a cache on CUDA device {} of {} was created", n, n),
    }
    if n > 0 {
        let c = Cache::new_on(&cfg, Device::Cuda(0)).unwrap();
        assert!(c.read_layer(0).unwrap().iter().all(|&x| x == 0));
    }
}
