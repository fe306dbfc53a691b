"""Cache groups (``kvp_cache_group``, since 1.4): every shard of a sharded config in one process,
written with one call per layer. Shard ``i`` is tensor rank ``i // data_parallel_size``, data
rank ``i % data_parallel_size``; every per-shard sequence here is in that order."""
from __future__ import annotations

import ctypes
import weakref
from typing import Any, Optional, Sequence, Tuple

from ._ffi import _i32, _u32, _vp, lib
from ._handle import Handle
from ._tensors import input_descriptor
from .cache import Cache, _cache_options, stream_handle
from .config import Config
from .errors import check, invalid
from .metadata import Metadata
from .types import DeviceLike, DtypeLike


class CacheGroup(Handle):
    """kvp_cache_group_create / kvp_cache_group_destroy; ``with CacheGroup(cfg) as group:``.

    ``device`` ("cpu", "cuda", a :class:`Device`) defaults to the device the config was planned
    for; ``device_ids`` (one ordinal per shard, e.g. ``[0, 1, 2, 3]`` with ``"cuda"``) places
    shard ``i`` on device ``device_ids[i]``; None puts every shard on ``device``. :meth:`close`
    destroys every shard and closes the :class:`Cache` objects :meth:`shard` returned; it refuses
    (BufferError) while arrays or exports still use a shard's memory."""
    _destroy = lib.kvp_cache_group_destroy

    def __init__(self, config: Config, device: DeviceLike = None, device_ids: Optional[Sequence[int]] = None):
        opts = _cache_options(config, device, None)
        ids = None if device_ids is None else (_i32 * len(device_ids))(*device_ids)
        out = _vp()
        check(lib.kvp_cache_group_create(ctypes.byref(config._raw), ids, 0 if ids is None else len(ids),
                                         ctypes.byref(opts), ctypes.byref(out)), "kvp_cache_group_create")
        Handle.__init__(self, out.value)
        self._shards: "weakref.WeakValueDictionary[Tuple[int, int], Cache]" = weakref.WeakValueDictionary()

    @property
    def num_shards(self) -> int:
        """kvp_cache_group_get_num_shards: ``kv_head_shards`` x ``data_parallel_size``."""
        n = _u32()
        check(lib.kvp_cache_group_get_num_shards(self.ptr, ctypes.byref(n)), "kvp_cache_group_get_num_shards")
        return n.value

    def shard(self, tp_rank: int, dp_rank: int) -> Cache:
        """kvp_cache_group_get_shard: the :class:`Cache` of shard (``tp_rank``, ``dp_rank``),
        borrowed from the group: it keeps the group alive, its close() never destroys the shard,
        and it is closed with the group. The same object while it is referenced."""
        cache = self._shards.get((tp_rank, dp_rank))
        if cache is not None and not cache.closed:
            return cache
        out = _vp()
        check(lib.kvp_cache_group_get_shard(self.ptr, tp_rank, dp_rank, ctypes.byref(out)),
              "kvp_cache_group_get_shard")
        cache = Cache._from_handle(out.value)
        cache._owner = self
        self._shards[(tp_rank, dp_rank)] = cache
        return cache

    def concatenate(self, layer: int, keys: Sequence[Any], values: Sequence[Any], metadata: Metadata,
                    streams: Optional[Sequence[Any]] = None, dtype: Optional[DtypeLike] = None) -> None:
        """kvp_cache_group_concatenate: ``keys[i]``/``values[i]`` are shard ``i``'s new keys and
        values (the inputs of :meth:`Cache.concatenate`: the full [T, H, D] or the shard's own
        heads, on shard ``i``'s device), ``metadata`` the whole cache's. CUDA shards: shard
        ``i``'s write is enqueued on ``streams[i]`` (None: every device's legacy default stream).
        Every shard is validated before any is written: an error names the shard and changes none."""
        n = len(keys)
        if len(values) != n or (streams is not None and len(streams) != n):
            raise invalid("%d keys, %d values, %s streams: one of each per shard"
                          % (n, len(values), "no" if streams is None else len(streams)), "CacheGroup.concatenate")
        sts = [None] * n if streams is None else [stream_handle(s) for s in streams]
        k = [input_descriptor(a, st, dtype) for a, st in zip(keys, sts)]
        v = [input_descriptor(a, st, dtype) for a, st in zip(values, sts)]
        raw_streams = None if streams is None else (_vp * n)(*[None if s is None else s.value for s in sts])
        status = lib.kvp_cache_group_concatenate(self.ptr, layer, b"".join(d for d, _ in k), b"".join(d for d, _ in v),
                                                 n, metadata.ptr, raw_streams)
        if status:
            check(status, "kvp_cache_group_concatenate")
        del k, v  # the producers' memory is held until the call has returned

    def close(self) -> None:
        if self._ptr is not None:
            shards = [c for c in list(self._shards.values()) if not c.closed]
            for cache in shards:
                cache._check_unused()
            for cache in shards:
                cache.close()
        super().close()

    def __repr__(self) -> str:
        return "CacheGroup(closed)" if self.closed else "CacheGroup(shards=%d)" % self.num_shards
