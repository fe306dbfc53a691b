"""Shards (since 1.4): the four shards of a TP 2 x DP 2 config hold their slices of the whole
cache after the same batch; their blobs (bytes and paths) load into a new whole cache byte for
byte; an incomplete set and a rank out of range raise with the library's message and change
nothing."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import kvpages  # noqa: E402

H, D = 4, 128


def sharded_config():
    return kvpages.Config.create(num_hidden_layers=2, num_kv_heads=H, head_dim=D, max_model_length=64, page_size=16,
                                 dtype="bf16", kv_head_shards=2, data_parallel_size=2, budget_bytes=1 << 20)


def slice_of(whole, layout, info):
    """The bytes a shard should hold of a whole cache's layer ``[page][row][combined entry][head dim]``."""
    rows, entries = layout.shape[1], layout.storage_num_combined_kv_heads
    w = whole.reshape(-1, rows, entries, layout.storage_head_dim * layout.itemsize)
    return w[info.page_begin:info.page_end, :, info.slot_begin:info.slot_end].reshape(-1)


def layers(cache):
    return [cache.read_layer(layer) for layer in range(2)]


def test_shards_hold_their_slices_and_their_blobs_reshard_into_a_whole_cache(tmp_path):
    cfg = sharded_config()
    whole = kvpages.Cache(cfg)
    info = whole.shard
    assert (info.tp_size, info.dp_size, info.page_begin, info.page_end) == (1, 1, 0, cfg.num_pages)
    shards = []
    for tp in range(2):
        for dp in range(2):
            shard = kvpages.Cache.create_shard(cfg, tp, dp)
            info = shard.shard
            assert info == cfg.shard(tp, dp)
            assert (info.tp_rank, info.tp_size, info.dp_rank, info.dp_size) == (tp, 2, dp, 2)
            assert (info.head_begin, info.head_end, info.global_pages) == (2 * tp, 2 * tp + 2, cfg.num_pages)
            shards.append(shard)

    # A prefill on data rank 0's pages 1-2 and one on data rank 1's second page, full K/V.
    rank1 = cfg.shard(0, 1).page_begin
    md, order = kvpages.Metadata.build(cfg, [(0, 20, [1, 2]), (0, 5, [rank1 + 1])])
    key = (np.arange(25 * H * D) % 251).astype(np.float32).reshape(25, H, D) / 8 - 15
    for layer in range(2):
        whole.concatenate(layer, key, -key, md)
        for shard in shards:
            shard.concatenate(layer, key, -key, md)
    want = layers(whole)
    for layer, w in enumerate(want):
        assert w.any()
        for shard in shards:
            np.testing.assert_array_equal(shard.read_layer(layer), slice_of(w, whole.layout(), shard.shard))

    # Two blobs as bytes, two as files; each says which slice it holds.
    blobs = [shard.to_bytes() for shard in shards]
    for blob, shard in zip(blobs, shards):
        info = kvpages.inspect(blob, verify=True)
        assert info.shard == shard.shard and info.flags & kvpages.serialize.FORMAT_FLAG_SHARD
    paths = [tmp_path / "shard-1-0.kvps", str(tmp_path / "shard-1-1.kvps")]
    for path, shard in zip(paths, shards[2:]):
        shard.save(path)
    copy = kvpages.Cache(cfg)
    copy.load_shards([blobs[0], bytearray(blobs[1])] + paths)
    for got, w in zip(layers(copy), want):
        np.testing.assert_array_equal(got, w)

    # Without tensor rank 1's blobs the set does not cover the whole cache: nothing is written.
    target = kvpages.Cache(cfg)
    with pytest.raises(kvpages.FormatMismatch) as e:
        target.load_shards(blobs[:2])
    assert "kvp_deserialize_shards_into" in e.value.message
    assert not any(layer.any() for layer in layers(target))
    for handle in [whole, copy, target, md] + shards:
        handle.close()


def test_a_rank_out_of_range_raises_invalid_argument_with_the_librarys_message():
    cfg = sharded_config()
    with pytest.raises(kvpages.InvalidArgument) as e:
        kvpages.Cache.create_shard(cfg, 2, 0)
    assert "tp_rank 2 is out of range [0, 2)" in e.value.message
    with pytest.raises(kvpages.InvalidArgument) as e:
        cfg.shard(0, -1)
    assert "dp_rank -1 is out of range [0, 2)" in e.value.message


def test_a_cache_groups_shards_hold_their_slices_of_the_same_batch_written_with_one_call():
    cfg = sharded_config()
    group = kvpages.CacheGroup(cfg)
    assert group.num_shards == 4
    rank1 = cfg.shard(0, 1).page_begin
    md, order = kvpages.Metadata.build(cfg, [(0, 20, [1, 2]), (0, 5, [rank1 + 1])])
    key = (np.arange(25 * H * D) % 241).astype(np.float32).reshape(25, H, D) / 8 - 14
    whole = kvpages.Cache(cfg)
    for layer in range(2):
        whole.concatenate(layer, key, key / 2, md)
        group.concatenate(layer, [key] * 4, [key / 2] * 4, md)
    want = layers(whole)
    assert want[0].any()
    for tp in range(2):
        for dp in range(2):
            shard = group.shard(tp, dp)
            assert shard.shard == cfg.shard(tp, dp)
            for layer, w in enumerate(want):
                np.testing.assert_array_equal(shard.read_layer(layer), slice_of(w, whole.layout(), shard.shard))

    # A borrowed shard's close() leaves the shard in the group; a new object reads the same bytes.
    first = group.shard(0, 0)
    first.close()
    assert first.closed
    again = group.shard(0, 0)
    assert again is not first
    np.testing.assert_array_equal(again.read_layer(0), slice_of(want[0], whole.layout(), again.shard))

    # Shard 3's tensors with 3 heads (neither all 4 nor its own 2): refused, naming the shard,
    # and no shard changes.
    bad = np.ones((25, 3, D), np.float32)
    with pytest.raises(kvpages.InvalidArgument) as e:
        group.concatenate(0, [key] * 3 + [bad], [key] * 3 + [bad], md)
    assert "shard 3 (tp 1, dp 1)" in e.value.message
    for layer in range(2):
        np.testing.assert_array_equal(again.read_layer(layer), slice_of(want[layer], whole.layout(), again.shard))
    with pytest.raises(kvpages.InvalidArgument):
        group.shard(2, 0)

    # The group destroys every shard once and closes the shard objects it handed out; an array
    # of a shard's memory keeps it open until released.
    pages = again.numpy(0)
    with pytest.raises(BufferError):
        group.close()
    assert not group.closed and not again.closed
    del pages
    group.close()
    assert group.closed and again.closed
    again.close()
    group.close()
    for handle in (whole, md):
        handle.close()
