"""The per-call input path of concatenate (kvpages/_tensors.py): numpy arrays, torch CPU tensors
and other DLPack producers are described from their layout, validated once per layout by the
general path (numpy's dtype rules, DLPack for torch and the rest), then only their data pointer is
read. Checked here: both paths write identical bytes (the first call of a layout takes the general
path, the next ones the fast one) for contiguous and strided numpy arrays, torch views and DLPack
producers in f32, f16 and bf16; bad dtypes, devices and ranks raise the general path's errors
after a layout was remembered, and the cache is unchanged; the layout memos stay bounded."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import kvpages  # noqa: E402
from kvpages import _tensors  # noqa: E402
from test_kvpages import DLPackOnly, RawProducer  # noqa: E402

H, D, S = 2, 128, 16
REQUESTS = [(0, 3, [1]), (5, 1, [2]), (17, 2, [3, 4])]  # 6 rows: a prefill, a decode, a page crossing
T = 6


def make_config(dtype):
    return kvpages.Config.create(num_hidden_layers=2, num_kv_heads=H, max_model_length=64, head_dim=D, page_size=S,
                                 dtype=dtype, budget_bytes=1 << 20)


def bf16_bits(shape, seed):
    bits = np.random.default_rng(seed).integers(0, 1 << 16, size=shape, dtype=np.uint16)
    bits[(bits & 0x7F80) == 0x7F80] = 0x3F80  # finite values only
    return bits


def values(dtype, seed, shape=(T, H, D)):
    """numpy data of ``dtype`` ("f32", "f16" or "bf16" as uint16 bits)."""
    if dtype == "bf16":
        return bf16_bits(shape, seed)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32 if dtype == "f32" else np.float16)


def layouts(a):
    """The same values as [T, H, D] arrays in several memory layouts: compact, head-major seen through
    strides, every other row of a twice-as-long array, and at an offset into a larger buffer."""
    head_major = np.ascontiguousarray(a.transpose(1, 0, 2)).transpose(1, 0, 2)
    every_other = np.zeros((2 * T,) + a.shape[1:], a.dtype)
    every_other[::2] = a
    offset = np.zeros((T + 3,) + a.shape[1:], a.dtype)
    offset[3:] = a
    return {"compact": a, "head-major": head_major, "every-other-row": every_other[::2], "offset": offset[3:]}


def written(dtype, write):
    """The bytes of both layers after ``write(cache, metadata)``."""
    cfg = make_config(dtype)
    with kvpages.Cache(cfg) as cache:
        md, _ = kvpages.Metadata.build(cfg, REQUESTS)
        write(cache, md)
        md.close()
        return cache.read_layer(0), cache.read_layer(1)


def test_the_data_pointer_reader_agrees_with_numpy():
    if sys.implementation.name == "cpython":
        assert _tensors._array_data.__name__ == "header"  # the fast reader is in use
    base = np.arange(64, dtype=np.float32)
    for a in [base, base[7:], base.reshape(8, 8)[2:, 1::3], base.view(np.uint8)[3:], np.zeros(0, np.float16),
              np.ma.masked_array(base)[5:], np.asfortranarray(base.reshape(8, 8))]:
        assert _tensors._array_data(a) == a.ctypes.data


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_numpy_inputs_write_what_dlpack_writes_in_every_layout(dtype):
    key, value = values(dtype, 1), values(dtype, 2)
    kw = {"dtype": "bf16"} if dtype == "bf16" else {}

    def via_dlpack(cache, md):  # numpy exports uint16 bits; bf16 through the test's own producer
        if dtype == "bf16":
            from test_kvpages import Bf16Producer
            cache.concatenate(1, Bf16Producer(key), Bf16Producer(value), md)
        else:
            cache.concatenate(1, DLPackOnly(key), DLPackOnly(value), md)
    want = written(dtype, via_dlpack)
    assert want[1].any() and not want[0].any()
    for name, k in layouts(key).items():
        v = layouts(value)[name]

        def twice(cache, md):  # the first call remembers the layout, the second uses it
            cache.concatenate(0, k, v, md, **kw)
            cache.concatenate(1, k, v, md, **kw)
        got = written(dtype, twice)
        np.testing.assert_array_equal(got[0], want[1], err_msg=name)
        np.testing.assert_array_equal(got[1], want[1], err_msg=name)


def test_numpy_bfloat16_of_ml_dtypes_takes_the_same_path():
    if not kvpages.has_ml_dtypes():
        if os.environ.get("KVPAGES_REQUIRE_ML_DTYPES"):
            pytest.fail("ml_dtypes is not installed in the test venv")
        pytest.skip("ml_dtypes is not installed")
    bits, vbits = values("bf16", 3), values("bf16", 4)
    bf = kvpages.Dtype.BF16.numpy()
    want = written("bf16", lambda c, md: c.concatenate(1, bits, vbits, md, dtype="bf16"))
    for _ in range(2):
        got = written("bf16", lambda c, md: c.concatenate(1, bits.view(bf), vbits.view(bf), md))
        np.testing.assert_array_equal(got[1], want[1])
        got = written("bf16", lambda c, md: c.concatenate(1, bits, vbits, md, dtype=kvpages.Dtype.BF16))
        np.testing.assert_array_equal(got[1], want[1])


def test_fp8_inputs_are_widened_every_call():
    f32 = values("f32", 5)
    e4m3 = kvpages.convert(f32, "fp8_e4m3fn", bits=True)
    exact = kvpages.convert(e4m3, "f32", src="fp8_e4m3fn")
    want = written("f16", lambda c, md: c.concatenate(1, exact, exact, md))
    for _ in range(2):
        got = written("f16", lambda c, md: c.concatenate(1, e4m3, e4m3, md, dtype="fp8_e4m3fn"))
        np.testing.assert_array_equal(got[1], want[1])


def test_bad_numpy_inputs_raise_after_a_good_layout_and_change_nothing():
    cfg = make_config("f32")
    key, value = values("f32", 6), values("f32", 7)
    with kvpages.Cache(cfg) as cache:
        md, _ = kvpages.Metadata.build(cfg, REQUESTS)
        cache.concatenate(1, key, value, md)
        cache.concatenate(1, key, value, md)  # remembered
        before = cache.read_layer(1), cache.read_layer(0)
        bad = [(key.astype(np.float64), "float64"),
               (key.view(np.uint32), "uint32"),
               (key.astype(np.float16).view(np.uint16), "uint16"),  # raw bits without dtype=
               (key[:, :1], "heads"),  # the C library checks shapes
               (key.reshape(T, H * D), "rank 3"),
               (key.reshape((T, H, D) + (1,) * 4), "7 dimensions")]
        for k, message in bad:
            for layer in (1, 0):
                with pytest.raises(kvpages.InvalidArgument, match=message):
                    cache.concatenate(layer, k, value, md)
        with pytest.raises(kvpages.InvalidArgument, match="got float32"):  # a 16-bit name on 32-bit data
            cache.concatenate(1, key, value, md, dtype="bf16")
        with pytest.raises(kvpages.InvalidArgument, match="float32, float16"):  # not a dtype: as before
            cache.concatenate(1, key, value, md, dtype=True)
        assert (cache.read_layer(1) == before[0]).all() and (cache.read_layer(0) == before[1]).all()
        md.close()


@pytest.mark.parametrize("memo, wrap", [("_ARRAY_LAYOUTS", lambda a: a), ("_DLPACK_LAYOUTS", DLPackOnly)],
                         ids=["numpy", "dlpack"])
def test_the_layout_memos_stay_bounded(memo, wrap, monkeypatch):
    monkeypatch.setattr(_tensors, "_MAX_LAYOUTS", 3)
    monkeypatch.setattr(_tensors, memo, {})
    cfg = make_config("f32")
    key = values("f32", 8)
    every_third = np.zeros((3 * T,) + key.shape[1:], key.dtype)
    every_third[::3] = key
    cases = dict(layouts(key), every_third_row=every_third[::3])  # four strides (offset: compact's)
    with kvpages.Cache(cfg) as cache:
        md, _ = kvpages.Metadata.build(cfg, REQUESTS)
        want, sizes = None, []
        for _ in range(2):
            for name, k in cases.items():
                cache.concatenate(1, wrap(k), wrap(k), md)
                sizes.append(len(getattr(_tensors, memo)))
                want = cache.read_layer(1) if want is None else want
                np.testing.assert_array_equal(cache.read_layer(1), want, err_msg=name)
        assert max(sizes) == 3 and any(b < a for a, b in zip(sizes, sizes[1:]))  # full, then cleared
        md.close()


# -- other DLPack producers (JAX, CuPy, ...) -------------------------------------------------------

@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_dlpack_producers_write_what_numpy_writes_in_every_layout(dtype, monkeypatch):
    monkeypatch.setattr(_tensors, "_DLPACK_LAYOUTS", {})
    from test_kvpages import Bf16Producer
    key, value = values(dtype, 13), values(dtype, 14)
    kw = {"dtype": "bf16"} if dtype == "bf16" else {}
    want = written(dtype, lambda c, md: c.concatenate(1, key, value, md, **kw))
    assert want[1].any()
    # numpy exports its strides; the bf16 producer passes NULL strides (compact) and bf16's code.
    cases = {"compact": (Bf16Producer(key), Bf16Producer(value))} if dtype == "bf16" else \
        {name: (DLPackOnly(k), DLPackOnly(layouts(value)[name])) for name, k in layouts(key).items()}
    for name, (k, v) in cases.items():
        def twice(cache, md):  # the first call remembers the layout, the second uses it
            cache.concatenate(0, k, v, md)
            cache.concatenate(1, k, v, md)
        got = written(dtype, twice)
        np.testing.assert_array_equal(got[0], want[1], err_msg=name)
        np.testing.assert_array_equal(got[1], want[1], err_msg=name)
    # One layout each: compact (and at an offset: the same strides), head-major, every other row.
    assert len(_tensors._DLPACK_LAYOUTS) == (1 if dtype == "bf16" else 3)


def test_bad_dlpack_inputs_raise_after_a_good_layout_and_change_nothing():
    cfg = make_config("f32")
    key = values("f32", 15)
    opencl = RawProducer(key, 4, 2, 32)  # float32 described as OpenCL memory
    with kvpages.Cache(cfg) as cache:
        md, _ = kvpages.Metadata.build(cfg, REQUESTS)
        cache.concatenate(1, DLPackOnly(key), DLPackOnly(key), md)
        cache.concatenate(1, DLPackOnly(key), DLPackOnly(key), md)  # remembered
        before = cache.read_layer(1)
        bad = [(key.view(np.int32), "code 0, 32 bits"),
               (key.astype(np.float64), "code 2, 64 bits"),
               (key.reshape((T, H, D) + (1,) * 4), "7 dimensions"),
               (key.reshape(T, H * D), "rank 3"),
               (key[:, :1], "heads")]
        for k, message in bad:
            with pytest.raises(kvpages.InvalidArgument, match=message):
                cache.concatenate(1, DLPackOnly(k), DLPackOnly(key), md)
        with pytest.raises(kvpages.InvalidArgument, match="device type 4"):  # same shape, dtype, strides
            cache.concatenate(1, opencl, DLPackOnly(key), md)
        np.testing.assert_array_equal(cache.read_layer(1), before)
        md.close()


# -- torch (skipped without it) ------------------------------------------------------------------

def torch_or_skip():
    return pytest.importorskip("torch")


def torch_of(torch, a, dtype):
    if dtype == "bf16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_torch_cpu_tensors_write_what_dlpack_writes_in_every_layout(dtype):
    torch = torch_or_skip()
    key, value = values(dtype, 9), values(dtype, 10)
    tk, tv = torch_of(torch, key, dtype), torch_of(torch, value, dtype)
    want = written(dtype, lambda c, md: c.concatenate(1, DLPackOnly(tk), DLPackOnly(tv), md))
    assert want[1].any()
    # Views: head-major storage through strides, every other row, an offset into the storage.
    hm = lambda t: t.transpose(0, 1).contiguous().transpose(0, 1)  # noqa: E731
    rows = lambda t: torch.stack([t, torch.zeros_like(t)], 1).reshape((2 * T,) + tuple(t.shape[1:]))[::2]  # noqa: E731
    offset = lambda t: torch.cat([torch.zeros_like(t[:3]), t])[3:]  # noqa: E731
    for name, view in {"compact": lambda t: t, "head-major": hm, "every-other-row": rows, "offset": offset}.items():
        k, v = view(tk), view(tv)
        assert torch.equal(k, tk)

        def twice(cache, md):
            cache.concatenate(0, k, v, md)
            cache.concatenate(1, k, v, md)
        got = written(dtype, twice)
        np.testing.assert_array_equal(got[0], want[1], err_msg=name)
        np.testing.assert_array_equal(got[1], want[1], err_msg=name)


def test_bad_torch_inputs_raise_what_dlpack_raises_and_change_nothing():
    torch = torch_or_skip()
    cfg = make_config("bf16")
    key = torch_of(torch, values("bf16", 11), "bf16")
    with kvpages.Cache(cfg) as cache:
        md, _ = kvpages.Metadata.build(cfg, REQUESTS)
        cache.concatenate(1, key, key, md)
        cache.concatenate(1, key, key, md)  # remembered
        before = cache.read_layer(1)
        bad = [(key.to(torch.int32), kvpages.InvalidArgument, "code 0, 32 bits"),
               (key.to(torch.float64), kvpages.InvalidArgument, "code 2, 64 bits"),
               (key.reshape((T, H, D) + (1,) * 4), kvpages.InvalidArgument, "7 dimensions"),
               (key.reshape(T, H * D), kvpages.InvalidArgument, "rank 3"),
               (key.float().requires_grad_(), BufferError, "gradient"),
               (torch.empty((T, H, D), dtype=torch.bfloat16, device="meta"), Exception, "meta"),
               (key.to_sparse(), Exception, "strided|layout")]
        for k, error, message in bad:
            with pytest.raises(error, match=message):
                cache.concatenate(1, k, key, md)
        np.testing.assert_array_equal(cache.read_layer(1), before)
        md.close()


def test_a_device_the_library_cannot_reach_is_refused_after_a_good_layout():
    """A DLPack producer of OpenCL memory (device type 4) with the shape and dtype of a remembered
    layout still goes through DLPack and is refused."""
    cfg = make_config("f32")
    key = values("f32", 12)
    with kvpages.Cache(cfg) as cache:
        md, _ = kvpages.Metadata.build(cfg, REQUESTS)
        cache.concatenate(1, key, key, md)
        before = cache.read_layer(1)
        with pytest.raises(kvpages.InvalidArgument, match="device type 4"):
            cache.concatenate(1, RawProducer(key, 4, 2, 32), key, md)  # float32 as OpenCL memory
        np.testing.assert_array_equal(cache.read_layer(1), before)
        md.close()
