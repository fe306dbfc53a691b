"""Cache.attention (kvp_attention) on the worked example E1 of ATTENTION.md §13: v3, GQA 2:1 (Hkv 1,
Hq 2), D 4, page size 4, an f32 cache of exactly 8 pages, σ 0.5; a decode row of context 6 (pages
3, 7) and a fresh prefill of 3 tokens (page 5). The output table, the slots the fused write stores
(the same bytes as concatenate), the read-only call, padding rows, float16 numpy and DLPack inputs
(bfloat16 too), options that reach C, and errors that change neither the cache nor ``out``."""
import gc
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
import kvpages  # noqa: E402
from test_kvpages import Bf16Producer, DLPackOnly  # noqa: E402

HQ, HKV, D, S, LAYER = 2, 1, 4, 4, 1
CTX_K = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0]], np.float32)[:, None, :]
CTX_V = np.array([[1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 3, 0], [0, 0, 0, 4], [1, 1, 1, 1]], np.float32)[:, None, :]
# T = 4 rows: r 0 = request 0 at position 5, r 1-3 = request 1 at positions 0-2.
Q = np.array([[[2, 0, 0, 0], [0, 0, 2, 2]], [[1, 1, 0, 0], [0, 0, 1, 1]], [[1, -1, 1, -1], [2, 0, 0, 0]],
              [[0, 2, 0, 2], [1, 1, 1, 1]]], np.float32)
K = np.array([[0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0], [0, 1, 0, 1], [1, 1, -1, -1]], np.float32)[:, None, :]
V = np.array([[2, -2, 2, -2], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], np.float32)[:, None, :]
E1 = np.array([[[0.866015, 0.140882, 0.893948, 0.339191], [0.666667, -0.218431, 1.308078, 0.577020]],
               [[1, 0, 0, 0], [1, 0, 0, 0]],
               [[0.880797, 0.119203, 0, 0], [0.731059, 0.268941, 0, 0]],
               [[0.106507, 0.786986, 0.106507, 0], [0.422319, 0.422319, 0.155362, 0]]], np.float32)
# E3: E1 with logits_soft_cap 2 (the correct values).
E3 = np.array([[[0.858565, 0.129843, 0.908200, 0.336628], [0.666667, -0.193173, 1.287872, 0.571968]],
               [[1, 0, 0, 0], [1, 0, 0, 0]],
               [[0.863947, 0.136053, 0, 0], [0.715904, 0.284096, 0, 0]],
               [[0.151818, 0.696364, 0.151818, 0], [0.417217, 0.417217, 0.165566, 0]]], np.float32)
NEW_SLOTS = [(7, 1), (5, 0), (5, 1), (5, 2)]  # where rows 0-3 of the step are stored


def assert_e1(out, want=E1, tol=2e-5):
    np.testing.assert_allclose(np.asarray(out, dtype=np.float32), want, rtol=tol, atol=tol)


def e1_config():
    """Two layers, f32, exactly 8 pages: the budget is 8 pages of the true page size."""
    args = dict(num_hidden_layers=2, num_kv_heads=HKV, max_model_length=16, head_dim=D, page_size=S,
                dtype=kvpages.DTYPE_F32)
    page_bytes = kvpages.Config.create(budget_bytes=1 << 20, **args).layout()["page_bytes_per_layer"]
    cfg = kvpages.Config.create(budget_bytes=2 * 8 * page_bytes, **args)
    assert cfg.num_pages == 8
    return cfg


def context_cache(cfg, step=None):
    """Request 0's five cached tokens (page 3 rows 0-3, page 7 row 0) written by concatenate; with
    ``step``, the step's new tokens too."""
    cache = kvpages.Cache(cfg)
    md, _ = kvpages.Metadata.build(cfg, [(0, 5, [3, 7])])
    cache.concatenate(LAYER, CTX_K, CTX_V, md)
    md.close()
    if step is not None:
        cache.concatenate(LAYER, K, V, step)
    return cache


@pytest.fixture
def e1():
    """(config, step metadata, cache holding the context)."""
    cfg = e1_config()
    md, order = kvpages.Metadata.build(cfg, [(5, 1, [3, 7]), (0, 3, [5])])
    assert order == [0, 1]  # the decode row first
    cache = context_cache(cfg)
    yield cfg, md, cache
    md.close()
    gc.collect()
    cache.close()


def test_e1_output_and_the_fused_write(e1):
    cfg, md, cache = e1
    out = np.full((4, HQ, D), np.nan, np.float32)
    assert cache.attention(LAYER, Q, K, V, md, out, softmax_scale=0.5) is out
    assert_e1(out)
    keys, values = cache.numpy(LAYER, kvpages.VIEW_KEYS), cache.numpy(LAYER, kvpages.VIEW_VALUES)
    for r, (page, row) in enumerate(NEW_SLOTS):
        np.testing.assert_array_equal(keys[page, row], K[r])
        np.testing.assert_array_equal(values[page, row], V[r])
    np.testing.assert_array_equal(keys[7, 0], CTX_K[4])  # cached position 4 kept
    del keys, values
    with context_cache(cfg, md) as ref:  # the same bytes as concatenate
        np.testing.assert_array_equal(cache.read_layer(LAYER), ref.read_layer(LAYER))
    assert not cache.read_layer(0).any()


def test_read_only_call_matches_the_fused_call(e1):
    cfg, md, cache = e1
    want = cache.attention(LAYER, Q, K, V, md, softmax_scale=0.5)  # out=None allocates
    assert want.shape == (4, HQ, D) and want.dtype == np.float32
    with context_cache(cfg, md) as fresh:
        before = fresh.read_layer(LAYER)
        out = np.full((4, HQ, D), 7, np.float32)
        fresh.attention(LAYER, Q, None, None, md, out, softmax_scale=0.5)
        np.testing.assert_array_equal(out.view(np.uint32), want.view(np.uint32))
        np.testing.assert_array_equal(fresh.read_layer(LAYER), before)
    assert_e1(want)


@pytest.mark.parametrize("fill", [np.nan, 7.0])
def test_padding_rows_are_exact_zeros_and_never_written(e1, fill):
    cfg, md, cache = e1
    q = np.concatenate([Q, np.full((2, HQ, D), 9, np.float32)])  # rows 4, 5: no request owns them
    k = np.concatenate([K, np.full((2, HKV, D), 7, np.float32)])
    v = np.concatenate([V, np.full((2, HKV, D), 7, np.float32)])
    out = np.full((6, HQ, D), fill, np.float32)
    cache.attention(LAYER, q, k, v, md, out, softmax_scale=0.5)
    assert_e1(out[:4])
    assert (out[4:].view(np.uint32) == 0).all()  # +0.0, not -0.0 or the fill
    with context_cache(cfg, md) as ref:
        np.testing.assert_array_equal(cache.read_layer(LAYER), ref.read_layer(LAYER))


def test_float16_numpy_inputs_and_output(e1):
    cfg, md, cache = e1
    out = np.zeros((4, HQ, D), np.float16)
    cache.attention(LAYER, Q.astype(np.float16), K.astype(np.float16), V.astype(np.float16), md, out,
                    softmax_scale=0.5)
    assert_e1(out, tol=1e-3)  # one rounding to float16
    with context_cache(cfg, md) as ref:  # E1's keys and values are exact in float16
        np.testing.assert_array_equal(cache.read_layer(LAYER), ref.read_layer(LAYER))
    allocated = cache.attention(LAYER, Q.astype(np.float16), None, None, md, softmax_scale=0.5)
    assert allocated.dtype == np.float16
    np.testing.assert_array_equal(allocated, out)


def test_dlpack_producers_in_and_out(e1):
    cfg, md, cache = e1
    want = np.zeros((4, HQ, D), np.float32)
    with context_cache(cfg) as plain:
        plain.attention(LAYER, Q, K, V, md, want, softmax_scale=0.5)
    # Every tensor through the DLPack importer; queries head-major, seen as [T, Hq, D] through strides.
    q_hm = np.ascontiguousarray(Q.transpose(1, 0, 2))
    out = np.full((4, HQ, D), np.nan, np.float32)
    assert isinstance(cache.attention(LAYER, DLPackOnly(q_hm.transpose(1, 0, 2)), DLPackOnly(K), DLPackOnly(V), md,
                                      DLPackOnly(out), softmax_scale=0.5, stream=7), DLPackOnly)  # CPU ignores stream
    np.testing.assert_array_equal(out.view(np.uint32), want.view(np.uint32))
    # bfloat16 queries, keys and values (E1's numbers are exact in bfloat16), float32 out.
    bits = lambda a: (np.ascontiguousarray(a, np.float32).view(np.uint32) >> 16).astype(np.uint16)  # noqa: E731
    with context_cache(cfg) as bf:
        got = bf.attention(LAYER, Bf16Producer(bits(Q)), Bf16Producer(bits(K)), Bf16Producer(bits(V)), md,
                           softmax_scale=0.5)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
        np.testing.assert_array_equal(bf.read_layer(LAYER), cache.read_layer(LAYER))
    gc.collect()
    assert kvpages.live_exports() == 0


def test_options_reach_the_library(e1):
    cfg, md, cache = e1
    cache.attention(LAYER, Q, K, V, md, softmax_scale=0.5)
    assert_e1(cache.attention(LAYER, Q, None, None, md, softmax_scale=0.5, logits_soft_cap=2.0), E3)
    # Sinks of 0.5: row 1 (one key, logit 0.5 for both heads) becomes V/2; -inf sinks are no sinks.
    out = cache.attention(LAYER, Q, None, None, md, softmax_scale=0.5, sinks=[0.5, 0.5])
    np.testing.assert_allclose(out[1], [[0.5, 0, 0, 0], [0.5, 0, 0, 0]], rtol=2e-5, atol=2e-5)
    assert_e1(cache.attention(LAYER, Q, None, None, md, softmax_scale=0.5, sinks=np.full(HQ, -np.inf)))
    # A window of 1: every query sees only its own key.
    out = cache.attention(LAYER, Q, None, None, md, softmax_scale=0.5, sliding_window=1)
    np.testing.assert_allclose(out, np.repeat(V, HQ, axis=1), rtol=2e-5, atol=2e-5)
    # k_scale 0.5 with scale 1 is scale 0.5; v_scale 2 doubles the output.
    assert_e1(cache.attention(LAYER, Q, None, None, md, softmax_scale=1.0, k_scale=0.5))
    assert_e1(cache.attention(LAYER, Q, None, None, md, softmax_scale=0.5, v_scale=2.0), 2 * E1)
    # The default scale of a v3 cache is 1.0.
    default = cache.attention(LAYER, Q, None, None, md)
    np.testing.assert_array_equal(default, cache.attention(LAYER, Q, None, None, md, softmax_scale=1.0))
    assert abs(default[0, 0, 0] - E1[0, 0, 0]) > 1e-3


def test_errors_change_neither_the_cache_nor_out(e1):
    cfg, md, cache = e1
    before = cache.read_layer(LAYER)
    cases = [
        (dict(sliding_window=-1), (Q, K, V), "sliding_window is -1"),
        (dict(sinks=[0, 0, 0]), (Q, K, V), "num_sinks is 3"),
        (dict(softmax_scale=-1.0), (Q, K, V), "softmax_scale"),
        (dict(sinks=[np.nan, 0]), (Q, K, V), "sinks[0]"),
        (dict(), (Q, K, None), "both"),
        (dict(), (Q, None, V), "both"),
        (dict(), (Q, Q, Q), "2 heads"),
        (dict(sliding_window=1 << 40), (Q, K, V), "does not fit int32"),
    ]
    for kw, (q, k, v), message in cases:
        out = np.full((4, HQ, D), 7, np.float32)
        with pytest.raises(kvpages.InvalidArgument) as e:
            cache.attention(LAYER, q, k, v, md, out, **kw)
        assert e.value.code == 1 and e.value.name == "KVP_ERR_INVALID_ARGUMENT"
        assert message in e.value.message, (kw, e.value.message)
        assert (out == 7).all(), kw
    with pytest.raises(kvpages.InvalidArgument, match="layer 2"):
        cache.attention(2, Q, K, V, md, softmax_scale=0.5)
    # out must be writable memory of a supported dtype.
    read_only = np.zeros((4, HQ, D), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(kvpages.InvalidArgument, match="read-only"):
        cache.attention(LAYER, Q, K, V, md, read_only)
    with pytest.raises(kvpages.InvalidArgument, match="writable"):
        cache.attention(LAYER, Q, K, V, md, DLPackOnly(read_only))
    with pytest.raises(kvpages.InvalidArgument, match="float64"):
        cache.attention(LAYER, Q, K, V, md, np.zeros((4, HQ, D)))
    with pytest.raises(kvpages.InvalidArgument, match="out: expected"):
        cache.attention(LAYER, Q, K, V, md, [0.0] * 32)
    assert not read_only.any()
    # out may not alias the queries (checked by the library).
    q = Q.copy()
    with pytest.raises(kvpages.InvalidArgument, match="overlaps"):
        cache.attention(LAYER, q, None, None, md, q)
    np.testing.assert_array_equal(q, Q)
    np.testing.assert_array_equal(cache.read_layer(LAYER), before)
    md2, _ = kvpages.Metadata.build(cfg, [(0, 1, [1])])
    md2.close()
    with pytest.raises(kvpages.InvalidHandle):
        cache.attention(LAYER, Q, K, V, md2)


def test_attention_example_runs():
    example = os.path.join(os.path.dirname(__file__), "..", "examples", "attention.py")
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(__file__), ".."))
    out = subprocess.run([sys.executable, example], check=True, capture_output=True, text=True, env=env).stdout
    assert "token 2, head 0, lane 5 = -261.0" in out
    assert "KVP_ERR_INVALID_ARGUMENT" in out
