"""Block stores (``kvpages/store.h``, since 1.4): where a :class:`Pool` keeps the prefix pages it
evicts (its storage tiers, :meth:`Pool.add_store`), and a key-value store of blocks of bytes in
their own right. Keys are 16 bytes; a store keeps what it is given, bounded in bytes."""
from __future__ import annotations

import collections
import ctypes
import os
import sys
import weakref
from typing import Any, Callable, Iterator, List, Optional, Sequence, Union

from ._ffi import (StoreDestroyFn, StoreExistsFn, StoreGetFn, StoreListFn, StorePutFn, StoreRemoveFn, _u8, _u64, _vp,
                   kvp_store_block_info, kvp_store_key, kvp_store_options, kvp_store_scrub_report, kvp_store_stats,
                   kvp_store_vtable, lib, sized)
from ._handle import Handle
from .errors import KvpagesError, check, invalid

#: KVP_STORE_FLAG_NO_SYNC: a directory store does not fsync its files (faster, less durable).
STORE_FLAG_NO_SYNC = 1
_NOT_FOUND, _BUFFER_TOO_SMALL, _IO = 3, 6, 66  # KVP_ERR_NOT_FOUND, KVP_ERR_BUFFER_TOO_SMALL, KVP_ERR_IO
STORE_VTABLE_VERSION = 2  # version 2 (since 1.5) appends list
_LIST_PAGE = 256  # keys per kvp_store_list call

#: Content and counters of a store (kvp_store_get_stats); ``blocks``, ``bytes`` and ``max_bytes``
#: are -1 for a plug-in store.
StoreStats = collections.namedtuple("StoreStats", [f for f, _ in kvp_store_stats._fields_
                                                   if f not in ("struct_size", "_reserved")])
#: What :meth:`Store.scrub` found: blocks read, damaged ones deleted, and the bytes freed.
ScrubReport = collections.namedtuple("ScrubReport", [f for f, _ in kvp_store_scrub_report._fields_
                                                     if f not in ("struct_size", "_reserved")])

#: What :func:`inspect_block` read in a block a pool wrote (kvp_store_block_inspect, since 1.5):
#: ``key`` and ``parent`` are 16-byte ``bytes``, ``checksum_ok`` a bool.
BlockInfo = collections.namedtuple("BlockInfo", [f for f, _ in kvp_store_block_info._fields_
                                                 if f not in ("struct_size", "_reserved")])

Key = Union[bytes, bytearray, memoryview]


def _key(key: Key) -> kvp_store_key:
    raw = bytes(key)
    if len(raw) != 16:
        raise invalid("a store key is 16 bytes, got %d" % len(raw))
    k = kvp_store_key()
    ctypes.memmove(k.bytes, raw, 16)
    return k


def inspect_block(block: Union[bytes, bytearray, memoryview]) -> BlockInfo:
    """The header of a block a pool wrote to a store (its config fingerprint, key, parent key,
    salt, geometry) and whether its checksum holds (kvp_store_block_inspect, since 1.5). Bytes
    that are not a whole block raise a FormatError."""
    view = memoryview(block).cast("B")
    buf = (ctypes.c_char * len(view)).from_buffer_copy(view) if len(view) else None
    info = sized(kvp_store_block_info)
    check(lib.kvp_store_block_inspect(buf, len(view), ctypes.byref(info)), "kvp_store_block_inspect")
    values = {f: getattr(info, f) for f in BlockInfo._fields}
    values.update(key=bytes(info.key.bytes), parent=bytes(info.parent.bytes), checksum_ok=bool(info.checksum_ok))
    return BlockInfo(**values)


def _options(sync: bool = True, timeout_ms: int = 0) -> kvp_store_options:
    o = kvp_store_options()
    check(lib.kvp_store_options_init(ctypes.byref(o), ctypes.sizeof(o)), "kvp_store_options_init")
    if not sync:
        o.flags |= STORE_FLAG_NO_SYNC
    o.timeout_ms = timeout_ms
    return o


class Store(Handle):
    """A block store (kvp_store_destroy on close). Internally synchronised: threads and pools may
    share one. A pool that uses the store keeps it open: :meth:`close` refuses until the pools
    are closed."""
    _destroy = lib.kvp_store_destroy

    def __init__(self, ptr: int):
        super().__init__(ptr)
        self._pools: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self._callbacks: Optional[tuple] = None

    @classmethod
    def memory(cls, max_bytes: int) -> "Store":
        """A store in host memory holding at most ``max_bytes`` of blocks; over the bound the least
        recently used blocks are dropped (kvp_store_create_memory)."""
        out = _vp()
        check(lib.kvp_store_create_memory(max_bytes, None, ctypes.byref(out)), "kvp_store_create_memory")
        return cls(out.value)

    @classmethod
    def directory(cls, path: Union[str, "os.PathLike[str]"], max_bytes: int, sync: bool = True) -> "Store":
        """Opens (creating it if missing) a store in a directory, one file per block, that survives
        restarts (kvp_store_create_directory). ``sync=False`` skips the fsyncs."""
        out, o = _vp(), _options(sync)
        check(lib.kvp_store_create_directory(os.fsencode(path), max_bytes, ctypes.byref(o), ctypes.byref(out)),
              "kvp_store_create_directory")
        return cls(out.value)

    @classmethod
    def redis(cls, url: str, timeout_ms: int = 0) -> "Store":
        """Connects a store to a Redis server (``redis://HOST:PORT[/DB]``) or a Redis Cluster
        (``redis+cluster://HOST:PORT[,HOST:PORT...]``), optionally ``?prefix=STR`` (default
        ``kvp:``), shared by every process that opens it (kvp_store_create_redis, since 1.5).
        Every connect and command is bounded by ``timeout_ms`` (0: 1000 ms); a server that fails
        raises :class:`KvpagesIOError`, and one that timed out is skipped for a while (its calls
        raise at once; see kvp_store_create_redis). A library built without Redis raises
        :class:`Unsupported`."""
        if not 0 <= timeout_ms < 1 << 32:
            raise invalid("timeout_ms must be in [0, 2**32), got %d" % timeout_ms)
        out, o = _vp(), _options(timeout_ms=timeout_ms)
        check(lib.kvp_store_create_redis(url.encode(), ctypes.byref(o), ctypes.byref(out)), "kvp_store_create_redis")
        return cls(out.value)

    @classmethod
    def plugin(cls, backend: Any) -> "Store":
        """A store whose blocks ``backend`` keeps (kvp_store_create): an object with
        ``put(key: bytes, data: bytes)``, ``get(key) -> bytes or None`` (None: missing),
        ``exists(keys: list of bytes) -> list of bool`` and ``remove(key) -> bool`` (False:
        missing), and optionally ``keys() -> iterable of bytes`` (every key held; without it
        :meth:`list` raises Unsupported). The library calls them one at a time, from the thread that uses the store. An
        exception never crosses the C library: a :class:`KvpagesError` returns its status, any
        other KVP_ERR_IO (a pool counts either as a miss or a failed write)."""
        def guard(f: Callable[..., int]) -> Callable[..., int]:
            def call(*args: Any) -> int:
                try:
                    return f(*args)
                except KvpagesError as e:
                    return e.status
                except BaseException as e:  # never unwind through C
                    print("kvpages plug-in store raised %r" % e, file=sys.stderr)
                    return _IO
            return call

        def put(_: Any, key: Any, data: Any, size: int) -> int:
            backend.put(bytes(key.contents.bytes), ctypes.string_at(data, size) if size else b"")
            return 0

        def get(_: Any, key: Any, dst: Any, capacity: int, size_out: Any) -> int:
            block = backend.get(bytes(key.contents.bytes))
            if block is None:
                return _NOT_FOUND
            block = bytes(block)
            size_out[0] = len(block)
            if len(block) > capacity:
                return _BUFFER_TOO_SMALL
            ctypes.memmove(dst, block, len(block))
            return 0

        def exists(_: Any, keys: Any, count: int, found: Any) -> int:
            answers = list(backend.exists([bytes(keys[i].bytes) for i in range(count)]))
            if len(answers) != count:
                raise ValueError("exists() answered %d keys of %d" % (len(answers), count))
            for i, a in enumerate(answers):
                found[i] = 1 if a else 0
            return 0

        def remove(_: Any, key: Any) -> int:
            return 0 if backend.remove(bytes(key.contents.bytes)) else _NOT_FOUND

        listings: dict = {}  # cursor -> the keys a listing has still to return (keys() at its start)
        next_listing = [1]

        def list_keys(_: Any, cursor: Any, keys: Any, capacity: int, count: Any) -> int:
            at = cursor[0]
            if at == 0:
                at, next_listing[0] = next_listing[0], next_listing[0] + 1
                listings[at] = [bytes(k) for k in backend.keys()]
            pending = listings.pop(at, [])
            n = min(capacity, len(pending))
            for i in range(n):
                ctypes.memmove(keys[i].bytes, _key(pending[i]).bytes, 16)
            if len(pending) > n:
                listings[at] = pending[n:]
            cursor[0], count[0] = (at if at in listings else 0), n
            return 0

        fns = (StorePutFn(guard(put)), StoreGetFn(guard(get)), StoreExistsFn(guard(exists)),
               StoreRemoveFn(guard(remove)), StoreDestroyFn(),  # NULL destroy: the Python objects live on the Store
               StoreListFn(guard(list_keys)) if hasattr(backend, "keys") else StoreListFn())
        vt = kvp_store_vtable(ctypes.sizeof(kvp_store_vtable), STORE_VTABLE_VERSION, None, *fns)
        out = _vp()
        check(lib.kvp_store_create(ctypes.byref(vt), ctypes.byref(out)), "kvp_store_create")
        store = cls(out.value)
        store._callbacks = (backend, fns)  # alive as long as the store
        return store

    def close(self) -> None:
        """Releases the store; refuses (BufferError) while an open :class:`Pool` uses it."""
        with self._lock:
            if any(not p.closed for p in list(self._pools)):
                raise BufferError("kvpages: an open Pool uses this store; close the pool first")
        super().close()

    def put(self, key: Key, data: Union[bytes, bytearray, memoryview]) -> None:
        """Stores ``data`` (any bytes-like object) under ``key``, replacing the block there."""
        k, view = _key(key), memoryview(data).cast("B")
        buf = (ctypes.c_char * len(view)).from_buffer_copy(view) if len(view) else None
        check(lib.kvp_store_put(self.ptr, ctypes.byref(k), buf, len(view)), "kvp_store_put")

    def get(self, key: Key) -> bytes:
        """The block of ``key`` (raises NotFound for a missing key, a FormatError for a damaged
        file, which the store has deleted)."""
        k, size = _key(key), ctypes.c_size_t()
        capacity = 0
        while True:  # size, then fill; again if a larger block replaced it in between
            buf = ctypes.create_string_buffer(capacity) if capacity else None
            status = lib.kvp_store_get(self.ptr, ctypes.byref(k), buf, capacity, ctypes.byref(size))
            if status == _BUFFER_TOO_SMALL:
                capacity = size.value
                continue
            check(status, "kvp_store_get")
            return buf.raw[: size.value] if buf is not None else b""

    def exists(self, keys: Sequence[Key]) -> List[bool]:
        """Which of ``keys`` have a block (one batched query; not a use for the LRU)."""
        arr = (kvp_store_key * max(len(keys), 1))(*[_key(k) for k in keys])
        found = (_u8 * max(len(keys), 1))()
        check(lib.kvp_store_exists(self.ptr, arr, len(keys), found), "kvp_store_exists")
        return [bool(found[i]) for i in range(len(keys))]

    def remove(self, key: Key) -> None:
        """Removes the block of ``key`` (NotFound if there is none)."""
        k = _key(key)
        check(lib.kvp_store_remove(self.ptr, ctypes.byref(k)), "kvp_store_remove")

    def stats(self) -> StoreStats:
        """Content and counters as a :class:`StoreStats`."""
        st = sized(kvp_store_stats)
        check(lib.kvp_store_get_stats(self.ptr, ctypes.byref(st)), "kvp_store_get_stats")
        return StoreStats(*(getattr(st, f) for f in StoreStats._fields))

    def list(self) -> Iterator[bytes]:
        """Every key the store holds, as 16-byte ``bytes`` (kvp_store_list, since 1.5; one call a
        page of keys, the store locked per call): a key present throughout appears at least once,
        keys put or removed meanwhile may or may not. Unsupported for a plug-in without ``keys``."""
        cursor, count = _u64(0), ctypes.c_size_t()
        keys = (kvp_store_key * _LIST_PAGE)()
        while True:
            check(lib.kvp_store_list(self.ptr, ctypes.byref(cursor), keys, _LIST_PAGE, ctypes.byref(count)),
                  "kvp_store_list")
            for i in range(count.value):
                yield bytes(keys[i].bytes)
            if cursor.value == 0:
                return

    def scrub(self) -> ScrubReport:
        """Reads and verifies every block, deleting damaged ones (Unsupported for a plug-in store)."""
        r = sized(kvp_store_scrub_report)
        check(lib.kvp_store_scrub(self.ptr, ctypes.byref(r)), "kvp_store_scrub")
        return ScrubReport(*(getattr(r, f) for f in ScrubReport._fields))
