//! `Cache::attention` (`kvp_attention`) on the worked example E1 of ATTENTION.md §13: v3, GQA 2:1
//! (Hkv 1, Hq 2), D 4, page size 4, an f32 cache of exactly 8 pages, σ 0.5; a decode row of
//! context 6 (pages [3, 7]) and a fresh prefill of 3 tokens (page 5). Checks the output table, the
//! slots the fused write stored (same bytes as `concatenate`), the read-only call, padding rows,
//! options that reach C (soft cap, sinks), and errors that change neither the cache nor `out`.
use kvpages::*;

const HQ: usize = 2;
const HKV: usize = 1;
const D: usize = 4;
const S: i64 = 4;
const LAYER: u32 = 1;

/// Cached positions 0-4 of request 0 (`[pos][d]`, one KV head).
const CTX_K: [f32; 20] = [1., 0., 0., 0., 0., 1., 0., 0., 0., 0., 1., 0., 0., 0., 0., 1., 1., 1., 0., 0.];
const CTX_V: [f32; 20] = [1., 0., 0., 0., 0., 2., 0., 0., 0., 0., 3., 0., 0., 0., 0., 4., 1., 1., 1., 1.];
/// The step's T = 4 rows: r 0 = request 0 at p 5, r 1-3 = request 1 at p 0-2 (`[r][head][d]`).
const Q: [f32; 32] = [2., 0., 0., 0., 0., 0., 2., 2., 1., 1., 0., 0., 0., 0., 1., 1., 1., -1., 1., -1., 2., 0., 0.,
                      0., 0., 2., 0., 2., 1., 1., 1., 1.];
const K: [f32; 16] = [0.5, 0.5, 0.5, 0.5, 1., 0., 1., 0., 0., 1., 0., 1., 1., 1., -1., -1.];
const V: [f32; 16] = [2., -2., 2., -2., 1., 0., 0., 0., 0., 1., 0., 0., 0., 0., 1., 0.];
const E1: [f32; 32] = [0.866015, 0.140882, 0.893948, 0.339191, 0.666667, -0.218431, 1.308078, 0.577020,
                       1., 0., 0., 0., 1., 0., 0., 0.,
                       0.880797, 0.119203, 0., 0., 0.731059, 0.268941, 0., 0.,
                       0.106507, 0.786986, 0.106507, 0., 0.422319, 0.422319, 0.155362, 0.];
/// E3: E1 with logits_soft_cap 2 (the correct values).
const E3: [f32; 32] = [0.858565, 0.129843, 0.908200, 0.336628, 0.666667, -0.193173, 1.287872, 0.571968,
                       1., 0., 0., 0., 1., 0., 0., 0.,
                       0.863947, 0.136053, 0., 0., 0.715904, 0.284096, 0., 0.,
                       0.151818, 0.696364, 0.151818, 0., 0.417217, 0.417217, 0.165566, 0.];

/// A two-layer f32 config with exactly 8 pages: the budget is 8 pages of the true page size.
fn config() -> Config {
    let opts = |budget_bytes| ConfigOptions {
        num_hidden_layers: 2,
        num_kv_heads: HKV as i64,
        max_model_length: 16,
        head_dim: D as i64,
        page_size: S,
        dtype: Dtype::F32,
        budget_bytes,
        ..Default::default()
    };
    let page_bytes = Config::create(&opts(1 << 20)).unwrap().layout().unwrap().page_bytes_per_layer;
    let cfg = Config::create(&opts(2 * 8 * page_bytes)).expect("config");
    assert_eq!(cfg.num_pages(), 8);
    cfg
}

/// A cache holding request 0's five cached tokens (positions 0-4: page 3 rows 0-3, page 7 row 0),
/// written by `concatenate`.
fn cache_with_context(cfg: &Config) -> Cache {
    let mut cache = Cache::new(cfg).expect("cache");
    let (md, _) = Metadata::build(cfg, &[BatchRequest { num_computed: 0, num_scheduled: 5, page_ids: vec![3, 7] }])
        .expect("context metadata");
    cache.concatenate(LAYER, &CTX_K, &CTX_V, [5, HKV, D], &md).expect("context");
    cache
}

/// The step: the decode row of context 6 first, then the fresh prefill of 3 tokens.
fn step(cfg: &Config) -> Metadata {
    let (md, order) = Metadata::build(cfg, &[
        BatchRequest { num_computed: 5, num_scheduled: 1, page_ids: vec![3, 7] },
        BatchRequest { num_computed: 0, num_scheduled: 3, page_ids: vec![5] },
    ])
    .expect("step metadata");
    assert_eq!(order, vec![0, 1]);
    md
}

fn scaled() -> AttentionOptions<'static> {
    AttentionOptions { softmax_scale: 0.5, ..Default::default() }
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 2e-5 + 2e-5 * w.abs(), "{what}: element {i} (row {}, head {}, lane {}) is {g}, want {w}",
                i / (HQ * D), i / D % HQ, i % D);
    }
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn e1_output_and_the_fused_write() {
    let cfg = config();
    let mut cache = cache_with_context(&cfg);
    let md = step(&cfg);
    let mut out = vec![f32::NAN; 4 * HQ * D];
    cache.attention(LAYER, &Q, Some((&K, &V)), [4, HQ, HKV, D], &md, &scaled(), &mut out).expect("attention");
    assert_close(&out, &E1, "E1");

    // The fused write stored exactly the four new tokens: page 7 row 1, page 5 rows 0-2.
    let keys = cache.view(LAYER, ViewKind::Keys).unwrap();
    let values = cache.view(LAYER, ViewKind::Values).unwrap();
    let slots = [(7, 1), (5, 0), (5, 1), (5, 2)];
    for (r, &(page, row)) in slots.iter().enumerate() {
        for d in 0..D {
            assert_eq!(keys.get_f32(&[page, row, 0, d as i64]), Some(K[r * D + d]), "key of row {r}");
            assert_eq!(values.get_f32(&[page, row, 0, d as i64]), Some(V[r * D + d]), "value of row {r}");
        }
    }
    assert_eq!(keys.get_f32(&[7, 0, 0, 1]), Some(1.0), "cached position 4 kept");
    assert_eq!(keys.get_f32(&[5, 3, 0, 0]), Some(0.0));
    // Same bytes as concatenate with the same metadata; layer 0 untouched.
    let mut reference = cache_with_context(&cfg);
    reference.concatenate(LAYER, &K, &V, [4, HKV, D], &md).unwrap();
    assert_eq!(cache.read_layer(LAYER).unwrap(), reference.read_layer(LAYER).unwrap());
    assert!(cache.read_layer(0).unwrap().iter().all(|&b| b == 0));
}

#[test]
fn read_only_call_matches_the_fused_call() {
    let cfg = config();
    let md = step(&cfg);
    let mut fused = cache_with_context(&cfg);
    let mut want = vec![f32::NAN; 4 * HQ * D];
    fused.attention(LAYER, &Q, Some((&K, &V)), [4, HQ, HKV, D], &md, &scaled(), &mut want).unwrap();

    // A fresh copy written by concatenate, then attention without keys and values.
    let mut cache = cache_with_context(&cfg);
    cache.concatenate(LAYER, &K, &V, [4, HKV, D], &md).unwrap();
    let before = cache.read_layer(LAYER).unwrap();
    let mut out = vec![7.0f32; 4 * HQ * D];
    cache.attention(LAYER, &Q, None, [4, HQ, HKV, D], &md, &scaled(), &mut out).unwrap();
    assert_eq!(bits(&out), bits(&want));
    assert_close(&out, &E1, "read-only E1");
    assert_eq!(cache.read_layer(LAYER).unwrap(), before, "a read-only call wrote the cache");

    // Without the new tokens in the pages, the read-only call sees zeros there: different output.
    let mut stale = cache_with_context(&cfg);
    stale.attention(LAYER, &Q, None, [4, HQ, HKV, D], &md, &scaled(), &mut out).unwrap();
    assert!(out[..D].iter().zip(&E1[..D]).any(|(a, b)| (a - b).abs() > 1e-3));
}

#[test]
fn padding_rows_are_exact_zeros_and_not_written() {
    let cfg = config();
    let md = step(&cfg);
    let mut cache = cache_with_context(&cfg);
    // T = 6: rows 4 and 5 belong to no request (queries 9, keys and values 7).
    let mut q = Q.to_vec();
    q.extend(std::iter::repeat(9.0).take(2 * HQ * D));
    let (mut k, mut v) = (K.to_vec(), V.to_vec());
    k.extend(std::iter::repeat(7.0).take(2 * HKV * D));
    v.extend(std::iter::repeat(7.0).take(2 * HKV * D));
    let mut out = vec![f32::NAN; 6 * HQ * D];
    cache.attention(LAYER, &q, Some((&k, &v)), [6, HQ, HKV, D], &md, &scaled(), &mut out).unwrap();
    assert_close(&out[..4 * HQ * D], &E1, "E1 rows");
    assert_eq!(bits(&out[4 * HQ * D..]), vec![0u32; 2 * HQ * D], "padding rows must be +0.0");
    let mut reference = cache_with_context(&cfg);
    reference.concatenate(LAYER, &K, &V, [4, HKV, D], &md).unwrap();
    assert_eq!(cache.read_layer(LAYER).unwrap(), reference.read_layer(LAYER).unwrap(), "padding rows were written");
}

#[test]
fn options_reach_the_library() {
    let cfg = config();
    let md = step(&cfg);
    let shape = [4, HQ, HKV, D];
    // E3: soft cap 2.
    let mut cache = cache_with_context(&cfg);
    let mut out = vec![f32::NAN; 4 * HQ * D];
    let capped = AttentionOptions { logits_soft_cap: 2.0, ..scaled() };
    cache.attention(LAYER, &Q, Some((&K, &V)), shape, &md, &capped, &mut out).unwrap();
    assert_close(&out, &E3, "E3");
    // Sinks of 0.5: row 1 (one key, logit 0.5 for both heads) becomes V/2; -inf sinks change nothing.
    let half = [0.5f32; HQ];
    cache.attention(LAYER, &Q, None, shape, &md, &AttentionOptions { sinks: Some(&half), ..scaled() }, &mut out).unwrap();
    assert_close(&out[HQ * D..2 * HQ * D], &[0.5, 0., 0., 0., 0.5, 0., 0., 0.], "row 1 with sinks");
    let none = [f32::NEG_INFINITY; HQ];
    cache.attention(LAYER, &Q, None, shape, &md, &AttentionOptions { sinks: Some(&none), ..scaled() }, &mut out).unwrap();
    assert_close(&out, &E1, "-inf sinks");
    // Default scale of a v3 cache is 1.0: the same as passing 1.0.
    let mut default_scale = vec![0.0f32; 4 * HQ * D];
    cache.attention(LAYER, &Q, None, shape, &md, &AttentionOptions::default(), &mut default_scale).unwrap();
    let one = AttentionOptions { softmax_scale: 1.0, ..Default::default() };
    cache.attention(LAYER, &Q, None, shape, &md, &one, &mut out).unwrap();
    assert_eq!(bits(&default_scale), bits(&out));
    assert!((default_scale[0] - E1[0]).abs() > 1e-3, "scale 1 must differ from scale 0.5");
}

#[test]
fn raw_variant_matches_the_slice_call() {
    let cfg = config();
    let md = step(&cfg);
    let mut a = cache_with_context(&cfg);
    let mut want = vec![0.0f32; 4 * HQ * D];
    a.attention(LAYER, &Q, Some((&K, &V)), [4, HQ, HKV, D], &md, &scaled(), &mut want).unwrap();

    let tensor = |data: *const f32, heads: usize| {
        let mut t = sys::kvp_tensor {
            data: data as *mut _,
            dtype: sys::KVP_DTYPE_F32,
            ndim: 3,
            shape: [0; sys::KVP_MAX_DIMS],
            strides: [0; sys::KVP_MAX_DIMS],
            device_type: sys::KVP_DEVICE_CPU,
            device_id: 0,
        };
        t.shape[..3].copy_from_slice(&[4, heads as i64, D as i64]);
        t.strides[..3].copy_from_slice(&[(heads * D) as i64, D as i64, 1]);
        t
    };
    let mut b = cache_with_context(&cfg);
    let mut out = vec![f32::NAN; 4 * HQ * D];
    let (q, k, v, o) = (tensor(Q.as_ptr(), HQ), tensor(K.as_ptr(), HKV), tensor(V.as_ptr(), HKV),
                        tensor(out.as_mut_ptr(), HQ));
    unsafe { b.attention_raw(LAYER, &q, Some(&k), Some(&v), &md, &scaled(), &o, std::ptr::null_mut()) }.unwrap();
    assert_eq!(bits(&out), bits(&want));
    assert_eq!(b.read_layer(LAYER).unwrap(), a.read_layer(LAYER).unwrap());

    // Keys without values: refused, nothing written.
    let before = b.read_layer(LAYER).unwrap();
    out.iter_mut().for_each(|x| *x = 7.0);
    let o = tensor(out.as_mut_ptr(), HQ);
    let err = unsafe { b.attention_raw(LAYER, &q, Some(&k), None, &md, &scaled(), &o, std::ptr::null_mut()) }
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message.contains("both"), "message: {}", err.message);
    assert!(out.iter().all(|&x| x == 7.0));
    assert_eq!(b.read_layer(LAYER).unwrap(), before);
}

/// Expects `InvalidArgument` with `needle` in the message, and `out` (all 7) untouched.
#[allow(clippy::too_many_arguments)]
fn expect_invalid(cache: &mut Cache, layer: u32, q: &[f32], kv: Option<(&[f32], &[f32])>, shape: [usize; 4],
                  md: &Metadata, opts: &AttentionOptions<'_>, needle: &str) {
    let mut out = vec![7.0f32; shape[0] * shape[1] * shape[3]];
    let err = cache.attention(layer, q, kv, shape, md, opts, &mut out).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{needle}: {err}");
    assert_eq!(err.code, 1);
    assert_eq!(err.name, "KVP_ERR_INVALID_ARGUMENT");
    assert!(err.message.contains(needle), "want {needle:?} in: {}", err.message);
    assert!(out.iter().all(|&x| x == 7.0), "{needle}: out was written");
}

#[test]
fn errors_change_neither_the_cache_nor_out() {
    let cfg = config();
    let md = step(&cfg);
    let mut cache = cache_with_context(&cfg);
    let before = cache.read_layer(LAYER).unwrap();
    let shape = [4, HQ, HKV, D];
    let kv: Option<(&[f32], &[f32])> = Some((&K, &V));
    let c = &mut cache;
    expect_invalid(c, LAYER, &Q, kv, shape, &md, &AttentionOptions { sliding_window: -1, ..scaled() },
                   "sliding_window is -1");
    let three = [0.0f32; 3];
    expect_invalid(c, LAYER, &Q, kv, shape, &md, &AttentionOptions { sinks: Some(&three), ..scaled() },
                   "num_sinks is 3");
    expect_invalid(c, LAYER, &Q, kv, shape, &md, &AttentionOptions { softmax_scale: -0.5, ..Default::default() },
                   "softmax_scale");
    expect_invalid(c, LAYER, &Q, kv, shape, &md, &AttentionOptions { k_scale: f32::NAN, ..scaled() }, "k_scale");
    expect_invalid(c, 2, &Q, kv, shape, &md, &scaled(), "layer 2");
    // Keys with 2 heads for a cache of 1 KV head.
    expect_invalid(c, LAYER, &Q, Some((&Q, &Q)), [4, HQ, 2, D], &md, &scaled(), "2 heads");
    // Slice lengths are checked by the binding before C sees anything.
    expect_invalid(c, LAYER, &Q, Some((&K[..12], &V)), shape, &md, &scaled(), "keys/values hold 12/16");
    expect_invalid(c, LAYER, &Q[..28], kv, shape, &md, &scaled(), "queries/out hold 28/32");
    // A shape whose element count wraps around usize is refused, not taken for empty slices.
    let err = c.attention(LAYER, &[], None, [1 << 30, 1 << 27, HKV, 128], &md, &scaled(), &mut []).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message.contains("more elements than usize holds"), "{}", err.message);
    assert_eq!(cache.read_layer(LAYER).unwrap(), before);
    assert!(cache.read_layer(0).unwrap().iter().all(|&b| b == 0));
}
