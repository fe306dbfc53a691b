"""pytest suite of the block stores (kvpages.Store, since 1.4): a memory store's round trip and
counters, a directory store surviving close and reopen and scrubbing a damaged file, a pool with a
memory tier restoring evicted prefix pages with the bytes computed for them, a plug-in store
written in Python, listing every store's keys and inspecting the evicted blocks (since 1.5), and
bad input raising the library's error with nothing changed."""
import gc
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import kvpages  # noqa: E402
from test_kvpages import POOL_BUDGET, S, make_config, pool_key, prefill, read_tokens  # noqa: E402

K1, K2, K3 = bytes(range(16)), bytes(range(1, 17)), b"\xff" * 16


def test_memory_store_round_trip_and_stats():
    with kvpages.Store.memory(1 << 20) as store:
        store.put(K1, b"hello")
        store.put(K2, np.arange(100, dtype=np.uint8))
        assert store.get(K1) == b"hello"
        assert store.get(K2) == bytes(range(100))
        assert store.exists([K1, K3, K2]) == [True, False, True]
        store.remove(K1)
        assert store.exists([K1]) == [False]
        with pytest.raises(kvpages.NotFound):
            store.get(K1)
        st = store.stats()
        assert (st.blocks, st.bytes, st.max_bytes, st.puts, st.hits, st.misses, st.errors, st.evictions) == \
            (1, 100, 1 << 20, 2, 2, 1, 0, 0)
        assert store.scrub() == kvpages.ScrubReport(1, 0, 0)


def test_memory_store_drops_the_least_recently_used_block():
    with kvpages.Store.memory(250) as store:
        store.put(K1, b"a" * 100)
        store.put(K2, b"b" * 100)
        store.get(K1)  # K2 is now the least recently used
        store.put(K3, b"c" * 100)
        assert store.exists([K1, K2, K3]) == [True, False, True]
        assert store.stats().evictions == 1


def test_directory_store_survives_close_and_reopen_and_scrubs(tmp_path):
    path = tmp_path / "blocks"
    with kvpages.Store.directory(path, 1 << 20) as store:
        store.put(K1, b"first block")
        store.put(K2, b"second block")
    files = sorted(os.listdir(path))
    assert files == [K1.hex() + ".kvpb", K2.hex() + ".kvpb"]
    with kvpages.Store.directory(str(path), 1 << 20, sync=False) as store:
        assert store.stats().blocks == 2
        assert store.get(K1) == b"first block"
        damaged = path / files[1]  # flip the last byte of the second block
        raw = bytearray(damaged.read_bytes())
        raw[-1] ^= 0xFF
        damaged.write_bytes(bytes(raw))
        assert store.scrub() == kvpages.ScrubReport(2, 1, len(raw))
        assert store.exists([K1, K2]) == [True, False]
        assert sorted(os.listdir(path)) == [files[0]]


def test_pool_with_a_memory_tier_restores_evicted_prefix_pages():
    cfg = make_config(budget_bytes=POOL_BUDGET)  # 7 usable pages of 16 tokens
    cache = kvpages.Cache(cfg)
    store = kvpages.Store.memory(1 << 24)
    pool = kvpages.Pool(cache)
    pool.add_store(store)
    assert pool.stores == [store]
    prompt_a = list(range(1000, 1040))  # 2 full pages and a partial one
    a, reused = pool.add_sequence(prompt_a)
    prefill(pool, cache, cfg, a, 1)
    pool.free_sequence(a)  # its 2 full pages stay cached (evictable)
    b, _ = pool.add_sequence(list(range(5000, 5064)))  # 4 pages
    prefill(pool, cache, cfg, b, 2)
    c, _ = pool.add_sequence(list(range(7000, 7048)))  # 3 pages: 1 free, a's 2 evicted
    prefill(pool, cache, cfg, c, 3)
    st = pool.tier_stats(0)
    assert (st.num_tiers, st.blocks_written, st.hits, st.restored_tokens, st.errors) == (1, 2, 0, 0, 0)
    assert store.stats().blocks == 2
    pool.free_sequence(c)

    a, reused = pool.add_sequence(prompt_a)  # the same prompt again: its prefix comes from the tier
    assert reused == 32
    st = pool.tier_stats(0)
    assert (st.hits, st.restored_tokens, st.rejected, st.errors) == (2, 32, 0, 0)
    assert st.bytes_read > 0 and st.lookups == st.hits + st.misses
    assert pool.stats().reused_tokens == 32
    table = pool.page_table(a)
    for layer in range(2):  # the bytes computed the first time
        k, v = read_tokens(cache, table, range(32), layer)
        np.testing.assert_array_equal(k, pool_key(1, range(32)))
        np.testing.assert_array_equal(v, -pool_key(1, range(32)))
    pool.check_invariants()

    keys = list(store.list())  # every evicted block, each inspected (since 1.5)
    assert len(keys) == len(set(keys)) == store.stats().blocks >= 2
    infos = [kvpages.inspect_block(store.get(k)) for k in keys]
    assert [i.key for i in infos] == keys
    assert all(i.checksum_ok and i.format_version == 1 and i.page_size == 16 and i.num_layers == 2 and
               i.salt == 0 and i.fingerprint == infos[0].fingerprint for i in infos)
    assert any(i.parent in keys for i in infos)  # a's second page's parent is its first
    damaged = bytearray(store.get(keys[0]))
    damaged[-20] ^= 1
    assert not kvpages.inspect_block(damaged).checksum_ok
    with pytest.raises(kvpages.FormatError) as e:
        kvpages.inspect_block(b"not a block")
    assert e.value.name == "KVP_ERR_FORMAT_MAGIC" and "KVPB" in e.value.message
    with pytest.raises(kvpages.FormatError) as e:
        kvpages.inspect_block(bytes(damaged[:-1]))
    assert e.value.name == "KVP_ERR_FORMAT_TRUNCATED"

    with pytest.raises(BufferError):  # the pool uses the store
        store.close()
    with pytest.raises(kvpages.InvalidArgument) as e:
        pool.tier_stats(1)
    assert "tier" in e.value.message and e.value.name == "KVP_ERR_INVALID_ARGUMENT"
    with pytest.raises(kvpages.InvalidArgument) as e:
        pool.add_store(store)  # already a tier
    assert e.value.message
    assert pool.stores == [store] and pool.tier_stats(0).num_tiers == 1
    pool.close()
    store.close()
    gc.collect()
    cache.close()


def test_pool_with_a_directory_tier_writes_asynchronously_and_flushes(tmp_path):
    cfg = make_config(budget_bytes=POOL_BUDGET)  # 7 usable pages of 16 tokens
    cache = kvpages.Cache(cfg)
    store = kvpages.Store.directory(str(tmp_path), 1 << 24, sync=False)
    pool = kvpages.Pool(cache, write_queue_bytes=1 << 20)
    pool.add_store(store)
    prompt_a = list(range(1000, 1040))  # 2 full pages and a partial one
    a, _ = pool.add_sequence(prompt_a)
    prefill(pool, cache, cfg, a, 1)
    pool.flush_tiers()  # nothing queued: the cached pages stay unwritten
    assert (pool.tier_stats(0).blocks_written, store.stats().puts) == (0, 0)
    pool.flush_tiers(cached=True)  # the cached prefix persisted
    st = pool.tier_stats(0)
    assert (st.blocks_written, st.errors, st.dropped) == (2, 0, 0) and store.stats().puts == 2
    pool.flush_tiers(cached=True)  # already held by tier 0: not written again
    assert pool.tier_stats(0).blocks_written == 2
    pool.close()
    cache.close()

    cache = kvpages.Cache(cfg)  # as after a restart: a fresh cache and pool over the directory
    pool = kvpages.Pool(cache)
    pool.add_store(store)
    a, reused = pool.add_sequence(prompt_a)
    assert reused == 32 and pool.tier_stats(0).hits == 2
    table = pool.page_table(a)
    for layer in range(2):
        k, v = read_tokens(cache, table, range(32), layer)
        np.testing.assert_array_equal(k, pool_key(1, range(32)))
        np.testing.assert_array_equal(v, -pool_key(1, range(32)))
    pool.close()
    store.close()
    gc.collect()
    cache.close()


class DictStore:
    """A plug-in store in Python: blocks in a dict, every call recorded."""

    def __init__(self):
        self.blocks, self.calls = {}, []

    def put(self, key, data):
        self.calls.append("put")
        self.blocks[key] = data

    def get(self, key):
        self.calls.append("get")
        return self.blocks.get(key)

    def exists(self, keys):
        self.calls.append("exists")
        return [k in self.blocks for k in keys]

    def remove(self, key):
        self.calls.append("remove")
        return self.blocks.pop(key, None) is not None


def test_plugin_store_in_python_and_exceptions_become_statuses(capsys):
    backend = DictStore()
    with kvpages.Store.plugin(backend) as store:
        store.put(K1, b"x" * 40)
        assert backend.blocks == {K1: b"x" * 40}
        assert store.get(K1) == b"x" * 40
        assert store.exists([K1, K2]) == [True, False]
        with pytest.raises(kvpages.NotFound):
            store.remove(K2)
        store.remove(K1)
        assert backend.blocks == {}
        st = store.stats()
        assert (st.blocks, st.bytes, st.max_bytes, st.puts, st.hits) == (-1, -1, -1, 1, 1)
        with pytest.raises(kvpages.Unsupported):
            store.scrub()

        def broken(key, data):
            raise RuntimeError("disk on fire")
        errors = store.stats().errors
        backend.put = broken  # a Python exception does not cross C: the call fails with KVP_ERR_IO
        with pytest.raises(kvpages.KvpagesIOError):
            store.put(K1, b"y")
        assert "disk on fire" in capsys.readouterr().err
        assert store.stats().errors == errors + 1 and backend.blocks == {}


def test_list_every_store(tmp_path):
    keys = [bytes([i]) * 16 for i in range(10)]
    with kvpages.Store.memory(1 << 20) as memory, kvpages.Store.directory(tmp_path / "d", 1 << 20) as directory:
        for store in (memory, directory):
            assert list(store.list()) == []
            for k in keys:
                store.put(k, k)
            assert sorted(store.list()) == keys
    backend = DictStore()
    with kvpages.Store.plugin(backend) as store:  # without keys(): cannot list
        with pytest.raises(kvpages.Unsupported) as e:
            list(store.list())
        assert "list" in e.value.message
    backend.keys = lambda: list(backend.blocks)
    with kvpages.Store.plugin(backend) as store:  # with keys(): listed 256 at a time
        many = [i.to_bytes(16, "little") for i in range(600)]
        for k in many:
            store.put(k, b"v")
        assert sorted(store.list()) == sorted(many)
        inner, outer = store.list(), store.list()  # two listings at once keep their own cursors
        assert sorted(list(inner) + list(outer)) == sorted(many * 2)


def test_bad_input_raises_the_librarys_error_and_changes_nothing(tmp_path):
    with pytest.raises(kvpages.InvalidArgument) as e:
        kvpages.Store.memory(0)
    assert e.value.name == "KVP_ERR_INVALID_ARGUMENT" and e.value.message
    with pytest.raises(kvpages.KvpagesIOError) as e:
        kvpages.Store.directory(tmp_path / "missing" / "blocks", 1 << 20)
    assert "missing" in e.value.message
    with kvpages.Store.memory(64) as store:
        with pytest.raises(kvpages.InvalidArgument) as e:
            store.put(K1, b"z" * 65)  # larger than the bound
        assert "65" in e.value.message and "64" in e.value.message
        with pytest.raises(kvpages.InvalidArgument):
            store.put(b"short", b"z")  # a key is 16 bytes
        assert store.stats().blocks == 0 and store.exists([K1]) == [False]
    with pytest.raises(kvpages.InvalidHandle):
        store.get(K1)


def test_redis_store_bad_url_refused_server_and_round_trip():
    """Without a server: a bad URL and a refused connection (or Unsupported in a build without
    Redis). With one (KVP_TEST_REDIS_URL, scripts/with-redis.sh): a round trip."""
    if "redis=on" not in kvpages.build_info():
        with pytest.raises(kvpages.Unsupported):
            kvpages.Store.redis("redis://127.0.0.1:6379")
        return
    with pytest.raises(kvpages.InvalidArgument) as e:
        kvpages.Store.redis("redis://no-port")
    assert "Redis URL" in e.value.message
    with pytest.raises(kvpages.KvpagesIOError) as e:
        kvpages.Store.redis("redis://127.0.0.1:1", timeout_ms=200)
    assert "127.0.0.1:1" in e.value.message
    url = os.environ.get("KVP_TEST_REDIS_URL")
    if not url:
        pytest.skip("KVP_TEST_REDIS_URL not set (scripts/with-redis.sh starts a server)")
    with kvpages.Store.redis(url + "?prefix=py:", timeout_ms=500) as store:
        store.put(K1, b"abc")
        assert store.get(K1) == b"abc" and store.exists([K1, K2]) == [True, False]
        store.remove(K1)
        assert store.exists([K1]) == [False] and store.stats().blocks == -1


def test_a_saved_sequence_restores_into_another_pool_and_a_damaged_one_changes_nothing(tmp_path):
    cfg = make_config(budget_bytes=POOL_BUDGET)  # 7 usable pages of 16 tokens
    cache_a, cache_b = kvpages.Cache(cfg), kvpages.Cache(cfg)
    pool_a, pool_b = kvpages.Pool(cache_a), kvpages.Pool(cache_b)
    prompt = list(range(1000, 1040))  # 2 full pages and 8 tokens
    a, _ = pool_a.add_sequence(prompt, salt=3)
    prefill(pool_a, cache_a, cfg, a, 1)
    blob = pool_a.save_sequence(a)
    path = tmp_path / "seq.kvpq"
    pool_a.save_sequence_to_file(a, path, sync=False)
    assert path.read_bytes() == blob

    pool_b.add_sequence(list(range(9000, 9020)))  # pool B hands out other page ids
    b = pool_b.restore_sequence(blob)
    assert (pool_b.length(b), pool_b.computed(b)) == (40, 40)
    table = pool_b.page_table(b)
    assert table != pool_a.page_table(a)
    for layer in range(2):
        k, v = read_tokens(cache_b, table, range(40), layer)
        np.testing.assert_array_equal(k, pool_key(1, range(40)))
        np.testing.assert_array_equal(v, -pool_key(1, range(40)))
    c = pool_b.restore_sequence_from_file(path, shard=0)  # its full pages are shared
    shared = pool_b.page_table(c)
    assert shared[:2] == table[:2] and shared[2] != table[2]
    assert pool_b.page_state(table[0])[0] == 2

    bad = bytearray(blob)
    bad[-1] ^= 1
    before = pool_b.stats()
    with pytest.raises(kvpages.KvpagesError) as e:
        pool_b.restore_sequence(bad)
    assert e.value.name == "KVP_ERR_FORMAT_CHECKSUM" and "block 2 of 3" in e.value.message
    with pytest.raises(kvpages.InvalidArgument):
        pool_b.restore_sequence(blob, shard=1)
    with pytest.raises(kvpages.KvpagesError) as e:
        pool_b.restore_sequence_from_file(tmp_path / "missing.kvpq")
    assert e.value.name == "KVP_ERR_IO"
    assert pool_b.stats() == before
    pool_b.check_invariants()
    for p in (pool_a, pool_b):
        p.close()
    gc.collect()
    cache_a.close()
    cache_b.close()
