"""The Python API over the whole C library, group by group: enums and strings, exceptions,
planning, JSON, metadata (build options, packing, arrays, JSON), typed reads and writes in every
dtype (compared with kvp_convert's bytes), serialization to bytes, paths and file objects,
inspect, async errors, versions, the misuse hook, and the DLPack regression (a consumer that
raises releases the export and the cache closes)."""
import ctypes
import gc
import io
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import kvpages  # noqa: E402
from kvpages import Dtype  # noqa: E402

H, D, S = 2, 128, 16
HERE = os.path.dirname(os.path.abspath(__file__))


def make_config(**kw):
    args = dict(num_hidden_layers=2, num_kv_heads=H, max_model_length=64, head_dim=D, page_size=S,
                dtype="bf16", budget_bytes=1 << 20)
    args.update(kw)
    return kvpages.Config.create(**args)


REQUESTS = [(0, 3, [1]), (5, 1, [2]), (0, 2, [3])]  # prefill, decode, prefill


def per_request(seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n, H, D)) * scale).astype(np.float32) for _, n, _ in REQUESTS]


# -- enums, strings, exceptions ----------------------------------------------------------------

def test_dtype_accepts_enums_names_and_numpy_dtypes():
    assert Dtype.parse("bf16") is Dtype.BF16 and Dtype.parse("bfloat16") is Dtype.BF16
    assert Dtype.parse("f32") is Dtype.F32 and Dtype.parse(np.float16) is Dtype.F16 and Dtype.parse(3) is Dtype.BF16
    assert str(Dtype.BF16) == "bf16" and Dtype.BF16.bits == 16 and Dtype.F8_E5M2.packing == 4
    assert kvpages.Layout.parse("v2") is kvpages.Layout.V2 and str(kvpages.Layout.V3) == "v3"
    assert kvpages.View.parse("keys") is kvpages.View.KEYS
    assert make_config(dtype="fp8_e4m3fn").dtype is Dtype.F8_E4M3FN
    with pytest.raises(LookupError) as e:
        Dtype.parse("int8")
    assert isinstance(e.value, kvpages.NotFound) and "int8" in str(e.value) and "bf16" in str(e.value)
    with pytest.raises(ValueError, match="unknown view"):
        kvpages.View.parse("diagonal")


def test_exceptions_subclass_the_builtins_and_carry_status_and_message(tmp_path):
    with pytest.raises(ValueError) as e:
        make_config(num_hidden_layers=0)
    assert isinstance(e.value, kvpages.InvalidArgument) and isinstance(e.value, kvpages.KvpagesError)
    assert e.value.status == 1 and e.value.name == "KVP_ERR_INVALID_ARGUMENT" and "num_hidden_layers" in e.value.message
    with pytest.raises(OSError) as e:
        kvpages.Cache.load(str(tmp_path / "missing.kvp"))
    assert isinstance(e.value, kvpages.KvpagesIOError) and e.value.status == 66 and "missing.kvp" in str(e.value)
    with pytest.raises(ValueError) as e:
        kvpages.inspect(b"not a kvpages blob, but long enough for a header" * 4)
    assert isinstance(e.value, kvpages.FormatMagic) and isinstance(e.value, kvpages.FormatError)
    assert issubclass(kvpages.OutOfMemory, MemoryError) and issubclass(kvpages.DeviceOutOfMemory, MemoryError)
    assert issubclass(kvpages.Unsupported, NotImplementedError) and kvpages.KvpError is kvpages.KvpagesError


def test_context_managers_close_handles():
    cfg = make_config()
    with kvpages.Cache(cfg) as cache, kvpages.Metadata.build(cfg, REQUESTS)[0] as md:
        assert not cache.closed and not md.closed
    assert cache.closed and md.closed
    with pytest.raises(ValueError, match="closed"):
        cache.layout()


# -- planning and JSON ---------------------------------------------------------------------------

def test_config_sharding_resolution():
    """SPEC.md §7.3: KV-head shards kept, upcast or replicated; DP pages; recorded in the config,
    its JSON and the plan."""
    mk = lambda **kw: kvpages.Config.create(num_hidden_layers=1, max_model_length=4096, head_dim=128,
                                            budget_bytes=1 << 20, no_safety_margin=True, **kw)
    up = mk(num_kv_heads=4, dtype="fp8_e4m3fn", kv_head_shards=4, data_parallel_size=2)
    assert up.dtype is kvpages.Dtype.BF16 and up.requested_kvdtype is kvpages.Dtype.F8_E4M3FN
    assert up.kv_head_shards == 4 and up.data_parallel_size == 2 and up.num_pages == 32
    plan = up.plan()
    assert plan.head_sharding is kvpages.HeadSharding.UPCAST and plan.units_per_device == 1
    assert plan.pages_per_device == 16 and plan.bytes_per_device == plan.total_bytes // 8
    assert "upcast fp8_e4m3fn \u2192 bf16 because 2 storage groups do not split over 4 devices" in plan.sharding_message
    back = kvpages.Config.from_json(up.to_json())
    assert back == up and '"data_parallel_size": 2, "kv_head_shards": 4' in up.to_json()
    rep = mk(num_kv_heads=1, kv_head_shards=1024)
    assert rep.kv_head_shards == 1 and rep.requested_kv_head_shards == 1024 and rep.requested_kvdtype is None
    assert rep.plan().head_sharding is kvpages.HeadSharding.REPLICATE
    assert mk(num_kv_heads=8, kv_head_shards=4).plan().head_sharding is kvpages.HeadSharding.KEEP
    with pytest.raises(kvpages.InvalidArgument, match="data_parallel_size"):
        mk(num_kv_heads=8, data_parallel_size=-1)
    with pytest.raises(kvpages.InvalidArgument, match="kv_head_shards 3"):
        up.replace(kv_head_shards=3).validate()


def test_config_create_takes_every_option():
    base = make_config()
    plan = base.plan()
    assert plan.num_pages == base.num_pages and plan.usable_pages == base.num_pages - 1
    assert plan.total_bytes == plan.num_pages * plan.bytes_per_page and plan.page_size == S
    assert base.layout().layer_bytes == base.num_pages * base.layout().page_bytes_per_layer
    assert make_config(kv_head_shards=2).num_pages == 2 * base.num_pages
    assert make_config(k_headdim=D, v_headdim=D, head_dim=0).num_pages == base.num_pages
    v2 = make_config(layout="v2", max_num_tokens=32, max_num_reqs=4)
    assert v2.version is kvpages.Layout.V2 and v2.max_num_tokens == 32 and v2.max_num_reqs == 4
    assert v2.padded_num_slices() > 0
    # Budget from injected statistics: 256 MiB total, 0.5 of it, no margin.
    stats = [kvpages.MemoryStats(bytes_limit=256 << 20)]
    want = kvpages.hbm_budget_bytes(stats, 0.5, kvpages.BudgetMode.TOTAL, 0)
    assert want == 128 << 20
    c = make_config(budget_bytes=0, memory_stats=stats, hbm_utilization=0.5, budget_mode="TOTAL" and 1,
                    no_safety_margin=True)
    assert c.num_pages == want // plan.bytes_per_page
    assert make_config(reference_budget=True).plan().reference_bytes_per_page > 0
    margin = make_config(budget_bytes=0, memory_stats=stats, hbm_utilization=0.5, safety_margin_bytes=64 << 20)
    assert margin.num_pages == (want - (64 << 20)) // plan.bytes_per_page  # FREE mode: nothing in use
    host = kvpages.memory_stats("cpu")
    assert host.valid and host.bytes_total > 0
    # The budget comes from the device the cache will live on: this build has no CUDA.
    if kvpages.device_count() == 0:
        with pytest.raises(kvpages.NoDevice):
            make_config(budget_bytes=0, device="cuda:0")
    assert make_config(device="cpu").device is kvpages.Device.CPU


def test_config_json_round_trips_and_validate_names_the_field():
    cfg = make_config()
    text = cfg.to_json()
    assert '"_kvdtype_str": "bf16"' in text and '"version": "v3"' in text
    assert kvpages.Config.from_json(text) == cfg
    bad = cfg.replace(num_pages=0)
    with pytest.raises(kvpages.InvalidArgument, match="num_pages"):
        bad.validate()
    assert kvpages.Config.defaults().page_size == 128
    with pytest.raises(kvpages.InvalidArgument):
        kvpages.Config.from_json("{")


def test_integer_helpers():
    assert kvpages.cdiv(7, 2) == 4 and kvpages.align_to_multiple(7, 4) == 8 and kvpages.previous_power_of_2(9) == 8
    assert kvpages.page_size_bytes(16, 2, 128, "bf16") == 16 * 4 * 128 * 2
    assert kvpages.num_slices_per_kv_cache_update_page(1 << 20) == 16
    with pytest.raises(kvpages.InvalidArgument):
        kvpages.cdiv(1, 0)


# -- metadata ------------------------------------------------------------------------------------

def test_build_reorders_decodes_first_and_pack_follows_the_order():
    cfg = make_config()
    keys = per_request()
    with kvpages.Cache(cfg) as a, kvpages.Cache(cfg) as b:
        md, order = kvpages.Metadata.build(cfg, REQUESTS)
        assert order == [1, 0, 2] == md.order
        packed = md.pack(keys)
        np.testing.assert_array_equal(packed[0], keys[1][0])  # the decode row first
        a.concatenate(0, packed, packed, md)
        b.concatenate_requests(0, keys, keys, md)
        np.testing.assert_array_equal(a.read_layer(0), b.read_layer(0))
        for (computed, n, pages), want in zip(REQUESTS, keys):
            got = b.read_tokens(0, pages, computed, n, "keys", "f32")
            np.testing.assert_array_equal(got, kvpages.convert(kvpages.convert(want, "bf16", bits=True), "f32", src="bf16"))
        before = b.read_layer(0)
        with pytest.raises(kvpages.InvalidArgument, match="request 2 schedules 2 tokens"):
            b.concatenate_requests(0, keys[:2] + [keys[0]], keys, md)
        with pytest.raises(kvpages.InvalidArgument, match="3 requests"):
            md.pack(keys[:2])
        np.testing.assert_array_equal(b.read_layer(0), before)
        md.close()


def test_request_order_keeps_the_callers_packing():
    cfg = make_config()
    keys = per_request(seed=3)
    with kvpages.Cache(cfg) as a, kvpages.Cache(cfg) as b:
        rows, _ = kvpages.Metadata.build(cfg, REQUESTS)
        ordered, order = kvpages.Metadata.build(cfg, REQUESTS, request_order=True)
        assert order == [1, 0, 2]
        by_request = np.concatenate(keys, axis=0)
        np.testing.assert_array_equal(ordered.pack(keys), by_request)  # no repacking
        assert ordered.array("token_starts").tolist() == [3, 0, 4]  # rows: decode, prefill, prefill
        a.concatenate(0, rows.pack(keys), rows.pack(keys), rows)
        b.concatenate(0, by_request, by_request, ordered)
        np.testing.assert_array_equal(a.read_layer(0), b.read_layer(0))
        rows.close()
        ordered.close()


def test_build_options_arrays_json_empty_and_borrowed_metadata():
    cfg = make_config()
    md, order = kvpages.Metadata.build(cfg, REQUESTS, max_num_reqs=5, max_num_tokens=8, keep_order=False)
    desc = md.desc()
    assert desc["num_reqs"] == 5 and desc["version"] is kvpages.Layout.V3 and desc["position_ids_len"] == 8
    np.testing.assert_array_equal(md.array("context_lens"), [6, 3, 2, 0, 0])
    np.testing.assert_array_equal(md.array(kvpages.MetadataField.QUERY_START_LOC), [0, 1, 4, 6, 6, 6])
    np.testing.assert_array_equal(md.array("request_distribution"), [1, 3, 3])
    assert md.array("pages_tables").shape == (5, cfg.max_num_pages_per_req)
    seed = kvpages.Metadata.build(cfg, REQUESTS, seed_distribution=True)[0]
    np.testing.assert_array_equal(seed.array("request_distribution"), [1, 1, 3])
    kept = kvpages.Metadata.build(cfg, REQUESTS, keep_order=True)[0]
    assert kept.order == [0, 1, 2]
    kept.close()
    again = kvpages.Metadata.from_json(md.to_json())
    for f in kvpages.MetadataField:
        np.testing.assert_array_equal(again.array(f), md.array(f))
    borrowed = kvpages.Metadata.from_arrays(
        "v3", pages_tables=md.array("pages_tables"), context_lens=md.array("context_lens"),
        query_start_loc=md.array("query_start_loc"), request_distribution=md.array("request_distribution"))
    empty = kvpages.Metadata.empty("v3", num_tokens=4, max_num_reqs=2, max_pages=cfg.max_num_pages_per_req)
    packed = md.pack(per_request())
    padded = np.zeros((8, H, D), np.float32)
    padded[: len(packed)] = packed
    with kvpages.Cache(cfg) as a, kvpages.Cache(cfg) as b:
        a.concatenate(1, padded[:6], padded[:6], md)
        b.concatenate(1, padded[:6], padded[:6], borrowed)
        np.testing.assert_array_equal(a.read_layer(1), b.read_layer(1))
        b.concatenate(0, padded[:4], padded[:4], empty)
        assert not b.read_layer(0).any()
    with pytest.raises(kvpages.InvalidArgument, match="unknown metadata arrays"):
        kvpages.Metadata.from_arrays(pages=[1])
    for m in (md, seed, again, borrowed, empty):
        m.close()


# -- typed reads and writes -----------------------------------------------------------------------

def test_convert_matches_known_bit_patterns():
    one = kvpages.convert([1.0, -2.0, 0.1], "bf16", bits=True)
    np.testing.assert_array_equal(one, np.array([0x3F80, 0xC000, 0x3DCD], np.uint16))
    back = kvpages.convert(one, "f32", src="bf16")
    np.testing.assert_array_equal(back, np.array([1.0, -2.0, 0.10009765625], np.float32))
    np.testing.assert_array_equal(kvpages.convert([448.0, 1e6], "fp8_e4m3fn", bits=True), [0x7E, 0x7F])
    with pytest.raises(kvpages.InvalidArgument, match="dtype="):
        kvpages.convert(np.zeros(3, np.uint16), "f32")


@pytest.mark.parametrize("ml", [True, False], ids=["ml_dtypes", "raw-bits"])
def test_bf16_cache_reads_and_writes_the_c_librarys_bytes(ml, monkeypatch):
    if not ml:
        monkeypatch.setattr(kvpages.types, "_ml_dtypes", None)
    elif not kvpages.has_ml_dtypes():
        if os.environ.get("KVPAGES_REQUIRE_ML_DTYPES"):  # set by bindings/run-tests.sh: no skips in CI
            pytest.fail("ml_dtypes is not installed in the test venv")
        pytest.skip("ml_dtypes is not installed (pip install ml_dtypes)")
    cfg = make_config()
    keys = per_request(1)
    want_bits = [kvpages.convert(k, "bf16", bits=True) for k in keys]  # what kvp_convert stores
    with kvpages.Cache(cfg) as cache:
        md, _ = kvpages.Metadata.build(cfg, REQUESTS)
        cache.concatenate_requests(0, keys, keys, md)
        view = cache.numpy(0, "keys")
        assert view.dtype == (np.dtype("bfloat16") if ml else np.uint16)
        for (computed, n, pages), bits in zip(REQUESTS, want_bits):
            got = cache.read_tokens(0, pages, computed, n, "keys", "bf16")
            np.testing.assert_array_equal(got.view(np.uint16), bits)
            raw = view[pages[0], computed:computed + n].view(np.uint16)
            np.testing.assert_array_equal(raw, bits)
        # Writes in any dtype land as the cache's bf16.
        cache.write(1, "values", np.full((H, D), 0.1, np.float32), index=(3, 2))
        assert cache.numpy(1, "values", bits=True)[3, 2, 0, 0] == 0x3DCD
        cache.write(1, "values", kvpages.convert(np.full((H, D), 3.0), "bf16", bits=True), index=(3, 3), dtype="bf16")
        assert cache.read(1, "values", "f32", index=(3, 3, 1, 5)) == 3.0
        # bf16 inputs (ml_dtypes arrays, or bits with dtype=) write what f32 inputs write.
        md2, _ = kvpages.Metadata.build(cfg, [(0, 3, [4])])
        cache.concatenate(1, kvpages.convert(keys[0], "bf16"), kvpages.convert(keys[0], "bf16"), md2,
                          dtype=None if ml else "bf16")
        np.testing.assert_array_equal(cache.read_tokens(1, [4], 0, 3, "keys", "bf16").view(np.uint16), want_bits[0])
        del view, raw  # views pin the cache
        md.close(), md2.close()


def test_fp8_and_f16_caches_read_and_write():
    for dtype in ("fp8_e4m3fn", "fp8_e5m2", "f16"):
        cfg = make_config(dtype=dtype)
        keys = per_request(2)
        with kvpages.Cache(cfg) as cache:
            md, _ = kvpages.Metadata.build(cfg, REQUESTS)
            cache.concatenate_requests(0, keys, keys, md)
            got = cache.read_tokens(0, [1], 0, 3, "keys", dtype)
            np.testing.assert_array_equal(got.view(np.uint8), kvpages.convert(keys[0], dtype, bits=True).view(np.uint8))
            # fp8 inputs are widened exactly, so an fp8 tensor stores its own bytes.
            if dtype != "f16":
                md2, _ = kvpages.Metadata.build(cfg, [(0, 3, [5])])
                cache.concatenate(0, kvpages.convert(keys[0], dtype, bits=True), got, md2, dtype=dtype)
                np.testing.assert_array_equal(cache.read_tokens(0, [5], 0, 3, "keys", dtype).view(np.uint8),
                                              got.view(np.uint8))
                md2.close()
            md.close()


# -- serialization ---------------------------------------------------------------------------------

def filled_cache(cfg):
    cache = kvpages.Cache(cfg)
    md, _ = kvpages.Metadata.build(cfg, REQUESTS)
    keys = per_request(3)
    for layer in range(cfg.num_hidden_layers):
        cache.concatenate_requests(layer, keys, [-k for k in keys], md)
    md.close()
    return cache


def test_serialize_whole_or_pages_to_bytes_paths_and_file_objects(tmp_path):
    cfg = make_config()
    with filled_cache(cfg) as cache:
        blob = cache.to_bytes()
        assert len(blob) == cache.serialized_size() and kvpages.inspect(blob, verify=True).num_stored_pages == cfg.num_pages
        with kvpages.Cache.from_bytes(blob) as copy:
            for layer in range(2):
                np.testing.assert_array_equal(copy.read_layer(layer), cache.read_layer(layer))
        path = tmp_path / "pages.kvp"
        cache.save(path, pages=[1, 2, 3], chunk_bytes=4096)
        info = kvpages.inspect(str(path), verify=True)
        assert (info.num_stored_pages, info.first_page_id, info.last_page_id, info.chunk_bytes) == (3, 1, 3, 4096)
        assert info.config == cache.config and info.format_major == 1
        stream = io.BytesIO()
        cache.save(stream, pages=[1, 2, 3], chunk_bytes=4096)
        assert stream.getvalue() == path.read_bytes()
        unsynced = tmp_path / "unsynced.kvp"
        cache.save(unsynced, pages=[1, 2, 3], chunk_bytes=4096, sync=False)  # KVP_SERIALIZE_FLAG_NO_SYNC
        assert unsynced.read_bytes() == path.read_bytes()
        with kvpages.Cache(cfg) as fresh:
            fresh.load_into(io.BytesIO(stream.getvalue()), pages=[6, 5, 4])  # moved to other pages
            fresh.load_into(path)  # and to their own ids
            keys = cache.numpy(1, "keys", bits=True)
            moved = fresh.numpy(1, "keys", bits=True)
            np.testing.assert_array_equal(moved[[6, 5, 4]], keys[[1, 2, 3]])
            np.testing.assert_array_equal(moved[[1, 2, 3]], keys[[1, 2, 3]])
            del keys, moved
        with open(path, "rb") as f, kvpages.Cache.load(f, max_cache_bytes=2**64 - 1) as loaded:
            assert loaded.config == cache.config
        with kvpages.Cache.load(bytearray(blob)) as loaded:
            np.testing.assert_array_equal(loaded.read_layer(1), cache.read_layer(1))


def test_bad_blobs_and_failing_streams_raise_and_change_nothing(tmp_path):
    cfg = make_config()
    with filled_cache(cfg) as cache, kvpages.Cache(cfg) as target:
        blob = bytearray(cache.to_bytes(pages=[1, 2]))
        blob[-10] ^= 0xFF
        with pytest.raises(kvpages.FormatChecksum):
            target.load_into(bytes(blob))
        with pytest.raises(kvpages.FormatTruncated):
            target.load_into(bytes(blob[:-100]))
        assert not target.read_layer(0).any() and not target.read_layer(1).any()

        class Broken(io.RawIOBase):
            def write(self, data):
                raise OSError(28, "disk full")

            def readinto(self, buf):
                raise OSError(5, "read error")
        with pytest.raises(OSError, match="disk full"):
            cache.save(Broken())
        with pytest.raises(OSError, match="read error"):
            kvpages.Cache.load(Broken())
        with pytest.raises(kvpages.InvalidArgument, match="more than once"):
            cache.to_bytes(pages=[1, 1])
        with pytest.raises(kvpages.InvalidArgument, match="path or a binary file"):
            cache.save(42)


# -- device, async errors, versions, misuse ------------------------------------------------------------

def test_device_async_error_and_versions():
    with kvpages.Cache(make_config()) as cache:
        assert cache.device == (kvpages.Device.CPU, 0)
        assert cache.async_error() is None
        cache.check_async_error()
        cache.clear_async_error()
        assert cache.layout() == cache.config.layout()
    assert kvpages.version_number() >= kvpages.BINDING_VERSION_NUMBER
    assert kvpages.version() in kvpages.build_info() and kvpages.__version__ == kvpages.version()
    kvpages.check_abi()
    if kvpages.device_count() == 0:
        with pytest.raises(kvpages.NoDevice):
            kvpages.Cache(make_config(), "cuda")


def test_misuse_handler_sees_stale_handles():
    seen = []
    kvpages.set_misuse_handler(seen.append)
    try:
        cache = kvpages.Cache(make_config())
        raw = cache.ptr
        cache.close()
        assert kvpages.lib.kvp_cache_destroy(raw) == 2
        assert seen and "kvp_cache_destroy" in seen[-1]
    finally:
        kvpages.set_misuse_handler(None)


# -- DLPack ------------------------------------------------------------------------------------------

def test_dlpack_bf16_to_numpy_raises_cleanly_and_releases_the_pin():
    """Regression: numpy cannot import bfloat16; its error used to be replaced by SystemError
    (the capsule destructor ran Python code while the error was pending), the export leaked and
    close() refused forever."""
    cache = kvpages.Cache(make_config())
    for _ in range(3):
        with pytest.raises(Exception) as e:
            np.from_dlpack(cache.export_dlpack(0, "keys"))
        assert not isinstance(e.value, SystemError), e.value
    assert kvpages.live_exports() == 0
    cache.close()
    assert cache.closed


def test_dlpack_consumer_that_raises_releases_the_export():
    cache = kvpages.Cache(make_config())

    def consumer(producer):
        capsule = producer.__dlpack__()  # taken, never renamed
        raise RuntimeError("consumer failed")
    with pytest.raises(RuntimeError, match="consumer failed"):
        consumer(cache.export_dlpack(1))
    with pytest.raises(BufferError):  # the producer refuses a second export
        t = cache.export_dlpack(1)
        t.__dlpack__()
        t.__dlpack__()
    gc.collect()
    cache.close()


def test_dlpack_bits_export_is_zero_copy_for_numpy():
    cfg = make_config()
    with filled_cache(cfg) as cache:
        arr = np.from_dlpack(cache.export_dlpack(0, "keys", bits=True))
        assert arr.dtype == np.uint16
        np.testing.assert_array_equal(arr, cache.numpy(0, "keys", bits=True))
        with pytest.raises(BufferError):
            cache.close()
        del arr
        gc.collect()
        assert kvpages.live_exports() == 0


# -- examples ------------------------------------------------------------------------------------------

def test_new_user_example_runs():
    example = os.path.join(HERE, "..", "examples", "new_user.py")
    env = dict(os.environ, PYTHONPATH=os.path.join(HERE, ".."))
    out = subprocess.run([sys.executable, example], check=True, capture_output=True, text=True, env=env).stdout
    assert "row order (decodes first): [2, 3, 4, 0, 1]" in out and "identical" in out
