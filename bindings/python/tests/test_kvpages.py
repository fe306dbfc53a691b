"""pytest suite of the Python bindings: the shared scenario (create a cache, concatenate a small
batch, read the tokens back through views, an error path) plus handle ownership and DLPack, and
the page pool scenario (prefix reuse, fork, copy-on-write, errors that change nothing)."""
import ctypes
import gc
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import kvpages  # noqa: E402

H, D, S = 2, 128, 16


def make_config(**kw):
    args = dict(num_hidden_layers=2, num_kv_heads=H, max_model_length=64, head_dim=D, page_size=S,
                dtype=kvpages.DTYPE_F32, budget_bytes=1 << 20)
    args.update(kw)
    return kvpages.Config.create(**args)


def token_data(t_count):
    t = np.arange(t_count, dtype=np.float32)[:, None, None]
    h = np.arange(H, dtype=np.float32)[None, :, None]
    d = np.arange(D, dtype=np.float32)[None, None, :]
    key = (t * 1000 + h * 256 + d).astype(np.float32)
    return key, -key


def write_batch(cache, cfg, layer=1):
    # Request 0: a prefill of 3 tokens into page 1; request 1: one decode token at position 5
    # of page 2. The builder puts the decode row first.
    md, order = kvpages.Metadata.build(cfg, [(0, 3, [1]), (5, 1, [2])])
    assert order == [1, 0]
    key, value = token_data(4)
    cache.concatenate(layer, key, value, md)
    return md, key, value


def test_version_matches_the_bindings():
    assert kvpages.version().startswith("1.")
    kvpages.check_abi()
    with pytest.raises(kvpages.VersionMismatch):
        kvpages.check_abi(20000)


def test_config_create_derives_pages():
    cfg = make_config()
    page_bytes = 2 * S * (2 * H) * D * 4  # two layers, f32, v3 with packing 1
    assert cfg.num_pages == (1 << 20) // page_bytes
    assert cfg.layout()["shape"] == (cfg.num_pages, S, 2 * H, 1, D)


def test_concatenate_then_read_tokens_back_through_views():
    cfg = make_config()
    with kvpages.Cache(cfg) as cache:
        md, key, value = write_batch(cache, cfg)
        keys = cache.numpy(1, kvpages.VIEW_KEYS)
        values = cache.numpy(1, kvpages.VIEW_VALUES)
        assert keys.shape == (cfg.num_pages, S, H, D)
        # Row 0 (the decode token) went to page 2, slot 5; rows 1..3 to page 1, slots 0..2.
        np.testing.assert_array_equal(keys[2, 5], key[0])
        np.testing.assert_array_equal(values[2, 5], value[0])
        np.testing.assert_array_equal(keys[1, 0:3], key[1:4])
        np.testing.assert_array_equal(values[1, 0:3], value[1:4])
        # Everything else is still zero: other slots, other pages, the other layer.
        written = np.zeros(keys.shape, dtype=bool)
        written[2, 5] = True
        written[1, 0:3] = True
        assert not keys[~written].any() and not values[~written].any()
        assert not cache.numpy(0).any()
        md.close()
        del keys, values


def test_error_path_raises_with_the_message_and_changes_nothing():
    cfg = make_config()
    with kvpages.Cache(cfg) as cache:
        md, key, value = write_batch(cache, cfg)
        before = cache.numpy(1).copy()
        with pytest.raises(kvpages.InvalidArgument) as e:
            cache.concatenate(2, key, value, md)
        assert e.value.code == 1 and e.value.name == "KVP_ERR_INVALID_ARGUMENT"
        assert "layer 2" in e.value.message
        bad = key[:, :1, :]  # wrong head count
        with pytest.raises(kvpages.InvalidArgument):
            cache.concatenate(1, bad, bad, md)
        np.testing.assert_array_equal(cache.numpy(1), before)
        with pytest.raises(kvpages.InvalidArgument):
            kvpages.Config.create(num_hidden_layers=0, num_kv_heads=1, max_model_length=8, head_dim=64,
                                  budget_bytes=1 << 20)
        md.close()
        gc.collect()


def test_handles_are_released_exactly_once():
    cache = kvpages.Cache(make_config())
    raw = cache.ptr
    cache.close()
    cache.close()  # second close is a no-op in the binding
    assert cache.closed
    with pytest.raises(kvpages.InvalidHandle):
        cache.view(0)
    # The library itself rejects the stale pointer (API armor) instead of touching freed memory.
    assert kvpages.lib.kvp_cache_destroy(raw) == 2


def test_a_finalizer_between_a_failed_call_and_its_check_keeps_the_message():
    # Garbage collected between a failing C call and check() reading the thread's message: the
    # finalizer only queues its destroy (a destroy called there would empty the message); the
    # next check() runs it.
    from kvpages.errors import _deferred, check
    cache = kvpages.Cache(make_config())
    raw = cache.ptr
    status = kvpages.lib.kvp_config_validate(None)
    del cache  # the finalizer runs here
    assert len(_deferred) == 1
    with pytest.raises(kvpages.InvalidArgument) as e:
        check(status, "kvp_config_validate")
    assert "'cfg' must not be NULL" in e.value.message
    assert len(_deferred) == 0
    assert kvpages.lib.kvp_cache_destroy(raw) == 2  # it was destroyed, once


def test_numpy_view_keeps_the_cache_alive_and_close_refuses():
    cfg = make_config()
    cache = kvpages.Cache(cfg)
    arr = cache.numpy(0, kvpages.VIEW_KEYS)
    with pytest.raises(BufferError):
        cache.close()
    del cache
    gc.collect()
    arr[0, 0, 0, 0] = 7.0  # memory still valid: the array pins the cache
    assert arr[0, 0, 0, 0] == 7.0


def test_dlpack_export_is_zero_copy_and_matches_the_view():
    cfg = make_config()
    cache = kvpages.Cache(cfg)
    md, key, _ = write_batch(cache, cfg)
    keys = np.from_dlpack(cache.export_dlpack(1, kvpages.VIEW_KEYS))
    assert keys.shape == (cfg.num_pages, S, H, D)
    np.testing.assert_array_equal(keys[2, 5], key[0])
    np.testing.assert_array_equal(keys, cache.numpy(1, kvpages.VIEW_KEYS))
    # Zero-copy: a write into the cache is visible through the imported array (numpy imports
    # DLPack 0.6 capsules read-only, so write through Cache.numpy).
    cache.numpy(1, kvpages.VIEW_KEYS)[3, 1, 1, 2] = 42.0
    assert keys[3, 1, 1, 2] == 42.0
    pages = np.from_dlpack(cache.export_dlpack(1, kvpages.VIEW_PAGES))
    assert pages.shape == tuple(cfg.layout()["shape"])
    with pytest.raises(BufferError):
        cache.close()
    md.close()
    del keys, pages
    gc.collect()
    assert kvpages.live_exports() == 0
    cache.close()


def test_unconsumed_dlpack_capsule_is_released():
    cache = kvpages.Cache(make_config())
    cap = cache.export_dlpack(0).__dlpack__()
    assert kvpages.live_exports() == 1
    del cap
    gc.collect()
    assert kvpages.live_exports() == 0
    cache.close()


class DLPackOnly:
    """Exposes an array through DLPack alone (so the binding's DLPack importer is used)."""

    def __init__(self, a):
        self.a = a

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()

    def __dlpack__(self, **kw):
        return self.a.__dlpack__(**kw)


class RawProducer:
    """A minimal DLPack producer that describes an array's bytes as it is told: DLPack device type
    ``device`` and dtype ``(code, bits)``, compact (NULL strides). For what numpy cannot export."""

    def __init__(self, a, device, code, bits):
        self.a = np.ascontiguousarray(a)
        self.device = device
        self.shape = (ctypes.c_int64 * self.a.ndim)(*self.a.shape)
        self.managed = kvpages._ffi.DLManagedTensor()
        t = self.managed.dl_tensor
        t.data = self.a.ctypes.data
        t.device = kvpages._ffi.DLDevice(device, 0)
        t.ndim = self.a.ndim
        t.dtype = kvpages._ffi.DLDataType(code, bits, 1)
        t.shape = self.shape
        t.strides = None
        t.byte_offset = 0

    def __dlpack_device__(self):
        return (self.device, 0)

    def __dlpack__(self, **kw):
        new = ctypes.pythonapi.PyCapsule_New
        new.restype, new.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        return new(ctypes.addressof(self.managed), b"dltensor", None)


def Bf16Producer(bits):  # noqa: N802 (used like the class it was)
    """bfloat16 (numpy has none): the bit patterns of a uint16 array, as CPU kDLBfloat 16."""
    return RawProducer(np.asarray(bits, dtype=np.uint16), 1, 4, 16)


def test_concatenate_takes_dlpack_producers():
    cfg = make_config()
    key, value = token_data(4)
    with kvpages.Cache(cfg) as ref, kvpages.Cache(cfg) as via_dlpack, kvpages.Cache(cfg) as strided:
        md, _ = kvpages.Metadata.build(cfg, [(0, 3, [1]), (5, 1, [2])])
        ref.concatenate(1, key, value, md)
        via_dlpack.concatenate(1, DLPackOnly(key), DLPackOnly(value), md, stream=7)  # stream: CPU ignores it
        # Head-major storage seen as [T, H, D] through strides.
        k_hm, v_hm = np.ascontiguousarray(key.transpose(1, 0, 2)), np.ascontiguousarray(value.transpose(1, 0, 2))
        strided.concatenate(1, DLPackOnly(k_hm.transpose(1, 0, 2)), DLPackOnly(v_hm.transpose(1, 0, 2)), md)
        want = ref.read_layer(1)
        assert want.any()
        np.testing.assert_array_equal(via_dlpack.read_layer(1), want)
        np.testing.assert_array_equal(strided.read_layer(1), want)
        md.close()


def test_concatenate_takes_bfloat16_through_dlpack():
    cfg = make_config(dtype=kvpages.DTYPE_BF16)
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 1 << 16, size=(4, H, D), dtype=np.uint16)
    bits[(bits & 0x7F80) == 0x7F80] = 0x3F80  # finite values only, so f32 and bf16 inputs agree
    as_f32 = (bits.astype(np.uint32) << 16).view(np.float32)  # the same values, exactly
    with kvpages.Cache(cfg) as a, kvpages.Cache(cfg) as b:
        md, _ = kvpages.Metadata.build(cfg, [(0, 3, [1]), (5, 1, [2])])
        a.concatenate(0, as_f32, -as_f32, md)
        b.concatenate(0, Bf16Producer(bits), Bf16Producer(bits ^ 0x8000), md)
        assert a.read_layer(0).any()
        np.testing.assert_array_equal(b.read_layer(0), a.read_layer(0))
        md.close()


def test_bad_inputs_raise_and_change_nothing():
    cfg = make_config()
    key, value = token_data(4)
    with kvpages.Cache(cfg) as cache:
        md, _ = kvpages.Metadata.build(cfg, [(0, 3, [1]), (5, 1, [2])])
        cache.concatenate(1, key, value, md)
        before = cache.read_layer(1)
        with pytest.raises(kvpages.InvalidArgument, match="code 0, 32 bits"):  # int32 through DLPack
            cache.concatenate(1, DLPackOnly(key.astype(np.int32)), DLPackOnly(value), md)
        with pytest.raises(kvpages.InvalidArgument, match="float64"):
            cache.concatenate(1, key.astype(np.float64), value, md)
        with pytest.raises(kvpages.InvalidArgument, match="list"):
            cache.concatenate(1, key.tolist(), value, md)
        with pytest.raises(kvpages.InvalidArgument, match="stream"):
            kvpages.cache.stream_handle("not a stream")
        with pytest.raises(kvpages.InvalidArgument, match="layer 5"):
            cache.write_layer(5, before)
        with pytest.raises(kvpages.InvalidArgument, match=str(before.nbytes)):
            cache.write_layer(0, before[:-1])
        np.testing.assert_array_equal(cache.read_layer(1), before)
        assert not cache.read_layer(0).any()
        md.close()


def test_read_and_write_layer_round_trip():
    cfg = make_config()
    with kvpages.Cache(cfg) as cache:
        n = cache.layer_bytes()
        data = np.random.default_rng(3).integers(0, 256, size=n, dtype=np.uint8)
        cache.write_layer(1, data)
        np.testing.assert_array_equal(cache.read_layer(1), data)
        cache.write_layer(1, data.tobytes())
        np.testing.assert_array_equal(cache.read_layer(1), data)
        np.testing.assert_array_equal(cache.numpy(1).view(np.uint8).reshape(-1), data)
        assert not cache.read_layer(0).any()
    assert kvpages.device_count() >= 0


def test_struct_layouts_match_the_c_compiler(tmp_path):
    """ctypes struct sizes and offsets equal what the C compiler computes from the headers."""
    inc = os.environ.get("KVPAGES_INCLUDE_DIRS")
    if not inc:
        pytest.skip("KVPAGES_INCLUDE_DIRS not set (bindings/run-tests.sh sets it)")
    structs = kvpages._ffi.STRUCTS
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <kvpages.h>", "int main(void) {"]
    for s in structs:
        lines.append('printf("%%zu\\n", sizeof(%s));' % s.__name__)
        for f, _ in s._fields_:
            lines.append('printf("%%zu\\n", offsetof(%s, %s));' % (s.__name__, f))
    lines.append("return 0; }")
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    flags = sum((["-I", d] for d in inc.split(os.pathsep)), [])
    subprocess.run(["cc", "-std=c99"] + flags + [str(src), "-o", str(exe)], check=True)
    got = [int(x) for x in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()]
    want = []
    for s in structs:
        want.append(ctypes.sizeof(s))
        want += [getattr(s, f).offset for f, _ in s._fields_]
    assert got == want


def test_quickstart_example_runs():
    example = os.path.join(os.path.dirname(__file__), "..", "examples", "quickstart.py")
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(__file__), ".."))
    out = subprocess.run([sys.executable, example], check=True, capture_output=True, text=True, env=env).stdout
    assert "token 2, head 1, lane 5 = 645.0" in out
    assert "KVP_ERR_INVALID_ARGUMENT" in out


# ---------------------------------------------------------------------------------------------
# Page pool

POOL_BUDGET = 8 * 2 * S * (2 * H) * D * 4  # 8 pages of 64 KiB: 7 usable (page 0 is the null page)


def pool_key(tag, positions):
    """K/V written for ``positions`` of the sequence ``tag``: [len(positions), H, D] float32."""
    pos = np.asarray(positions, dtype=np.float32)[:, None, None]
    h = np.arange(H, dtype=np.float32)[None, :, None]
    d = np.arange(D, dtype=np.float32)[None, None, :]
    return (tag * 100000 + pos * 512 + h * 128 + d).astype(np.float32)


def prefill(pool, cache, cfg, seq, tag):
    """Writes the pending tokens of ``seq`` into both layers through metadata built from the pool's
    batch request, then declares them computed."""
    req = pool.batch_request(seq)
    md, order = kvpages.Metadata.build(cfg, [req])
    assert order == [0]
    key = pool_key(tag, range(req.num_computed, req.num_computed + req.num_scheduled))
    for layer in range(2):
        cache.concatenate(layer, key, -key, md)
    md.close()
    pool.set_computed(seq, req.num_computed + req.num_scheduled)


def read_tokens(cache, table, positions, layer=0):
    """(keys, values) at ``positions`` of a page table, read through the zero-copy views."""
    keys, values = cache.numpy(layer, kvpages.VIEW_KEYS), cache.numpy(layer, kvpages.VIEW_VALUES)
    rows = [(table[p // S], p % S) for p in positions]
    return np.stack([keys[pg, r] for pg, r in rows]), np.stack([values[pg, r] for pg, r in rows])


@pytest.fixture
def pool_setup():
    cfg = make_config(budget_bytes=POOL_BUDGET)
    cache = kvpages.Cache(cfg)
    pool = kvpages.Pool(cache)
    yield cfg, cache, pool
    pool.close()
    gc.collect()
    cache.close()


def test_pool_prefix_reuse_fork_and_free(pool_setup):
    cfg, cache, pool = pool_setup
    assert cfg.num_pages == 8
    st = pool.stats()
    assert (st.total_pages, st.free_pages, st.page_size, st.max_pages_per_sequence) == (7, 7, S, 4)

    # Sequence a: a 40-token prompt (3 pages) written through its batch request.
    prompt_a = list(range(1000, 1040))
    a, reused = pool.add_sequence(prompt_a)
    assert isinstance(a, kvpages.SeqId) and reused == 0
    req = pool.batch_request(a)
    assert (req.num_computed, req.num_scheduled, len(req.page_ids)) == (0, 40, 3)
    prefill(pool, cache, cfg, a, 1)
    assert (pool.length(a), pool.computed(a)) == (40, 40)
    table_a = pool.page_table(a)
    assert table_a == req.page_ids  # the request's page ids are a copy, still valid
    for layer in range(2):
        k, v = read_tokens(cache, table_a, range(40), layer)
        np.testing.assert_array_equal(k, pool_key(1, range(40)))
        np.testing.assert_array_equal(v, -pool_key(1, range(40)))
    assert pool.slots(a, 30, 4) == [table_a[1] * S + 14, table_a[1] * S + 15, table_a[2] * S, table_a[2] * S + 1]

    # Sequence b shares the first 32 tokens: its first 2 pages come from the prefix cache.
    prompt_b = prompt_a[:32] + [x + 5000 for x in prompt_a[32:]]
    b, reused = pool.add_sequence(np.array(prompt_b, dtype=np.int64))
    assert reused == 32
    assert (pool.length(b), pool.computed(b)) == (40, 32)
    prefill(pool, cache, cfg, b, 2)
    table_b = pool.page_table(b)
    assert table_b[:2] == table_a[:2] and table_b[2] != table_a[2]
    for layer in range(2):
        k, v = read_tokens(cache, table_b, range(32), layer)  # a's bytes, read through b's page table
        np.testing.assert_array_equal(k, pool_key(1, range(32)))
        np.testing.assert_array_equal(v, -pool_key(1, range(32)))
        k, _ = read_tokens(cache, table_b, range(32, 40), layer)
        np.testing.assert_array_equal(k, pool_key(2, range(32, 40)))
        k, _ = read_tokens(cache, table_a, range(32, 40), layer)  # a's tail untouched
        np.testing.assert_array_equal(k, pool_key(1, range(32, 40)))
    assert pool.page_state(table_a[0]) == (2, kvpages.PAGE_FLAG_INDEXED)
    assert pool.page_state(table_a[2]) == (1, 0)
    assert pool.page_state(0)[1] == kvpages.PAGE_FLAG_NULL

    # Fork b into two children: references, no copies.
    kids = pool.fork(b, 2)
    assert len(kids) == 2 and len({a, b, *kids}) == 4
    assert (pool.length(kids[1]), pool.computed(kids[1])) == (40, 40)
    assert pool.page_state(table_b[0])[0] == 4 and pool.page_state(table_b[2])[0] == 3
    st = pool.stats()
    assert (st.num_sequences, st.used_pages, st.indexed_pages, st.prompt_tokens, st.reused_tokens, st.cow_copies) == \
        (4, 4, 2, 80, 32, 0)

    # An append into the shared partial tail copies it first.
    pool.append(kids[0], [7])
    table_k = pool.page_table(kids[0])
    assert table_k[:2] == table_b[:2] and table_k[2] != table_b[2]
    k, _ = read_tokens(cache, table_k, range(32, 40), 1)
    np.testing.assert_array_equal(k, pool_key(2, range(32, 40)))
    assert pool.page_state(table_b[2])[0] == 2
    assert (pool.length(kids[0]), pool.computed(kids[0])) == (41, 40)
    st = pool.stats()
    assert (st.cow_copies, st.used_pages) == (1, 5)
    pool.truncate(kids[1], 20)  # keeps 2 pages
    assert pool.page_state(table_b[2])[0] == 1 and pool.page_state(table_b[1])[0] == 4
    assert pool.length(kids[1]) == 20
    pool.check_invariants()

    # Page copies: a free page receives a's first page.
    free = [p for p in range(1, cfg.num_pages) if pool.page_state(p)[1] & kvpages.PAGE_FLAG_FREE]
    assert len(free) == 2
    cache.copy_pages([table_a[0]], [free[0]])
    k, v = read_tokens(cache, [free[0]], range(16), 1)
    np.testing.assert_array_equal(k, pool_key(1, range(16)))
    np.testing.assert_array_equal(v, -pool_key(1, range(16)))
    with pytest.raises(kvpages.InvalidArgument) as e:
        cache.copy_pages([free[0]], [free[0]])
    assert "both a source and a destination" in e.value.message

    # Free everything: the indexed pages stay cached (evictable), the rest is free.
    for s in (a, b, *kids):
        pool.free_sequence(s)
    pool.check_invariants()
    st = pool.stats()
    assert st.free_pages + st.evictable_pages + st.used_pages == st.total_pages
    assert (st.used_pages, st.num_sequences, st.evictable_pages, st.indexed_pages) == (0, 0, 2, 2)
    pool.clear_prefix_cache()
    st = pool.stats()
    assert (st.free_pages, st.evictable_pages, st.indexed_pages) == (7, 0, 0)
    pool.check_invariants()


def test_pool_errors_carry_code_and_message_and_change_nothing(pool_setup):
    cfg, cache, pool = pool_setup
    a, _ = pool.add_sequence(range(40))
    b, _ = pool.add_sequence(range(100, 140))
    c, _ = pool.add_sequence([9])  # all 7 pages used
    before = pool.stats()
    assert (before.free_pages, before.used_pages) == (0, 7)

    with pytest.raises(kvpages.InvalidArgument) as e:
        pool.add_sequence(range(65))  # max_model_length is 64
    assert e.value.code == 1 and e.value.name == "KVP_ERR_INVALID_ARGUMENT"
    assert "exceeds max_model_length 64" in e.value.message
    assert pool.stats() == before

    with pytest.raises(kvpages.OutOfPages) as e:
        pool.add_sequence(range(500, 532))  # needs 2 pages, none free
    assert e.value.code == 65 and e.value.name == "KVP_ERR_OUT_OF_PAGES"
    assert "needs 2 new page(s)" in e.value.message
    assert pool.stats() == before

    with pytest.raises(kvpages.OutOfPages):
        pool.append(a, range(10))  # crosses into a 4th page
    assert pool.stats() == before and pool.length(a) == 40

    pool.free_sequence(b)
    before = pool.stats()
    for call in (lambda: pool.free_sequence(b), lambda: pool.append(b, [1]), lambda: pool.length(b),
                 lambda: pool.page_table(b), lambda: pool.batch_request(b), lambda: pool.fork(b, 1)):
        with pytest.raises(kvpages.NotFound) as e:
            call()
        assert e.value.code == 3 and e.value.name == "KVP_ERR_NOT_FOUND"
        assert "is stale" in e.value.message
        assert pool.stats() == before

    with pytest.raises(kvpages.InvalidArgument):
        pool.set_computed(a, 41)
    with pytest.raises(kvpages.InvalidArgument):
        pool.truncate(a, 41)
    with pytest.raises(kvpages.InvalidArgument):
        pool.slots(a, 39, 2)
    with pytest.raises(kvpages.InvalidArgument):
        pool.page_state(cfg.num_pages)
    with pytest.raises(kvpages.InvalidArgument):
        pool.add_sequence([[1, 2], [3, 4]])
    with pytest.raises(TypeError):
        pool.length(int(a))
    assert pool.stats() == before
    pool.free_sequence(a)
    pool.free_sequence(c)
    pool.check_invariants()
    st = pool.stats()
    assert (st.free_pages, st.used_pages, st.num_sequences) == (st.total_pages, 0, 0)


def test_pool_options_and_lifetime():
    cfg = make_config(budget_bytes=POOL_BUDGET)
    cache = kvpages.Cache(cfg)
    pool = kvpages.Pool(cache, max_sequences=2, no_prefix_cache=True)
    a, _ = pool.add_sequence([3] * 33, salt=9, reuse_all=True)
    pool.set_computed(a, 33)
    pool.free_sequence(a)
    st = pool.stats()
    assert (st.max_sequences, st.indexed_pages, st.free_pages) == (2, 0, st.total_pages)
    b, reused = pool.add_sequence([3] * 33, salt=9, reuse_all=True)
    assert reused == 0 and b != a
    empty, _ = pool.add_sequence([])
    assert (pool.length(empty), pool.page_table(empty)) == (0, [])
    with pytest.raises(kvpages.OutOfPages) as e:
        pool.add_sequence([1])
    assert "sequence slots are in use" in e.value.message
    with pytest.raises(kvpages.OutOfPages):
        pool.fork(b, 1)

    # The pool keeps its cache alive, and the cache refuses to close under an open pool.
    with pytest.raises(BufferError):
        cache.close()
    assert not cache.closed
    del cache
    gc.collect()
    assert pool.length(b) == 33
    cache = pool.cache
    raw = pool.ptr
    pool.close()
    pool.close()  # second close is a no-op in the binding
    with pytest.raises(kvpages.InvalidHandle):
        pool.stats()
    assert kvpages.lib.kvp_pool_destroy(raw) == 2  # the library rejects the stale pointer
    cache.close()
    with pytest.raises(kvpages.InvalidHandle):
        kvpages.Pool(cache)


def test_pool_with_blocks_close_in_order():
    cfg = make_config(budget_bytes=POOL_BUDGET)
    with kvpages.Cache(cfg) as cache, kvpages.Pool(cache) as pool:
        seq, _ = pool.add_sequence(range(10))
        assert pool.page_table(seq) == [pool.slots(seq, 0, 1)[0] // S]
    assert pool.closed and cache.closed


def test_pool_data_parallel_shards():
    cfg = make_config(budget_bytes=POOL_BUDGET, data_parallel_size=2)  # 16 pages: 1..7 and 8..15
    assert cfg.num_pages == 16
    with kvpages.Cache(cfg) as cache, kvpages.Pool(cache) as pool:
        s0, s1 = pool.shard_stats(0), pool.shard_stats(1)
        assert (s0.num_shards, s0.first_page, s0.end_page, s0.total_pages) == (2, 1, 8, 7)
        assert (s1.first_page, s1.end_page, s1.free_pages) == (8, 16, 8)
        seq, _ = pool.add_sequence(range(10))  # shard 1 has more free pages
        assert pool.sequence_shard(seq) == 1
        assert pool.page_table(seq) == list(range(8, 8 + kvpages.cdiv(10, S)))  # the shard's lowest pages
        forced, _ = pool.add_sequence(range(10), shard=0)
        assert pool.sequence_shard(forced) == 0
        assert all(1 <= p < 8 for p in pool.page_table(forced))
        assert pool.shard_stats(0).num_sequences == 1 and pool.shard_stats(1).used_pages == kvpages.cdiv(10, S)
        pool.add_sequence(range(100, 164), shard=0)  # 4 more pages: 2 left in shard 0
        before = pool.stats()
        with pytest.raises(kvpages.InvalidArgument, match="shard 2 is out of range"):
            pool.add_sequence(range(4), shard=2)
        with pytest.raises(kvpages.InvalidArgument, match="shard 2 is out of range"):
            pool.shard_stats(2)
        with pytest.raises(kvpages.OutOfPages, match="in data-parallel shard 0 of 2"):
            pool.add_sequence(range(200, 264), shard=0)
        assert pool.stats() == before
        pool.check_invariants()


def test_pool_example_runs():
    example = os.path.join(os.path.dirname(__file__), "..", "examples", "pool.py")
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(__file__), ".."))
    out = subprocess.run([sys.executable, example], check=True, capture_output=True, text=True, env=env).stdout
    assert "reused 32 tokens" in out
    assert "KVP_ERR_NOT_FOUND" in out
