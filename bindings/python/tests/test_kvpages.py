"""pytest suite of the Python bindings: the shared scenario (create a cache, concatenate a small
batch, read the tokens back through views, an error path) plus handle ownership and DLPack."""
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
    assert kvpages._cache_destroy(raw) == 2


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
    assert len(kvpages._LIVE_EXPORTS) == 0
    cache.close()


def test_unconsumed_dlpack_capsule_is_released():
    cache = kvpages.Cache(make_config())
    cap = cache.export_dlpack(0).__dlpack__()
    assert len(kvpages._LIVE_EXPORTS) == 1
    del cap
    gc.collect()
    assert len(kvpages._LIVE_EXPORTS) == 0
    cache.close()


def test_struct_layouts_match_the_c_compiler(tmp_path):
    """ctypes struct sizes and offsets equal what the C compiler computes from the headers."""
    inc = os.environ.get("KVPAGES_INCLUDE_DIRS")
    if not inc:
        pytest.skip("KVPAGES_INCLUDE_DIRS not set (bindings/run-tests.sh sets it)")
    structs = [kvpages.kvp_config, kvpages.kvp_config_options, kvpages.kvp_cache_options, kvpages.kvp_tensor,
               kvpages.kvp_layout_info, kvpages.kvp_batch_request]
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
