"""Saving and loading caches (``kvpages/serialize.h``): the whole cache or chosen pages, to and
from bytes, a file path (atomic replace) or a binary file object (streamed through the C
library's writer/reader callbacks), and :func:`inspect` of a blob's header."""
from __future__ import annotations

import ctypes
import dataclasses
import os
from typing import Any, Optional, Sequence, Tuple

from ._ffi import (_P, _i32, _vp, SERIALIZE_FLAG_NO_SYNC, ReadFn, WriteFn, kvp_blob_ref, kvp_cache_options,
                   kvp_deserialize_options, kvp_serialize_options, kvp_serialized_info, lib, sized)
from .config import Config, ShardInfo
from .errors import check, invalid
from .types import DeviceLike, parse_device

#: Flag of inspect(): verify every checksum (KVP_INSPECT_VERIFY).
INSPECT_VERIFY = 1
#: Serialized format written by this library (1.1 since 1.4: blobs of sharded configs; others are 1.0).
FORMAT_MAJOR, FORMAT_MINOR = 1, 1
#: SerializedInfo.flags bit (KVP_FORMAT_FLAG_SHARD, format 1.1): the blob holds one shard's slice.
FORMAT_FLAG_SHARD = 1


@dataclasses.dataclass(frozen=True)
class SerializedInfo:
    """Header of a blob (``kvp_serialized_info``); ``config`` is the stored :class:`Config`."""
    format_major: int
    format_minor: int
    header_size: int
    flags: int
    writer_version: int
    header_checksum: int
    num_stored_pages: int
    first_page_id: int
    last_page_id: int
    page_bytes_per_layer: int
    chunk_bytes: int
    num_chunks: int
    payload_bytes: int
    total_bytes: int
    config: Config
    shard: ShardInfo  # since 1.4: the slice the blob holds (a whole cache's: ranks 0 of sizes 1)


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _path(x: Any) -> bytes:
    return os.fsencode(x)


def _options(pages: Optional[Sequence[int]], chunk_bytes: int, sync: bool = True) -> Tuple[kvp_serialize_options, Any]:
    o = kvp_serialize_options()
    check(lib.kvp_serialize_options_init(ctypes.byref(o), ctypes.sizeof(o)), "kvp_serialize_options_init")
    o.chunk_bytes = chunk_bytes
    o.flags = 0 if sync else SERIALIZE_FLAG_NO_SYNC
    ids = _page_ids(pages)
    if ids is not None:
        o.page_ids, o.num_page_ids = ctypes.cast(ids, _P(_i32)), len(pages)
    return o, ids


def _page_ids(pages: Optional[Sequence[int]]) -> Any:
    if pages is None:
        return None
    pages = [int(p) for p in pages]
    return (_i32 * max(len(pages), 1))(*pages)


def serialized_size(cache: Any, pages: Optional[Sequence[int]] = None, chunk_bytes: int = 0) -> int:
    """kvp_serialized_size: the exact size of the blob."""
    o, keep = _options(pages, chunk_bytes)
    out = ctypes.c_size_t()
    check(lib.kvp_serialized_size(cache.ptr, ctypes.byref(o), ctypes.byref(out)), "kvp_serialized_size")
    return out.value


def to_bytes(cache: Any, pages: Optional[Sequence[int]] = None, chunk_bytes: int = 0) -> bytes:
    """kvp_serialize into a new bytes object."""
    o, keep = _options(pages, chunk_bytes)
    need = serialized_size(cache, pages, chunk_bytes)
    buf = ctypes.create_string_buffer(max(need, 1))
    written = ctypes.c_size_t()
    check(lib.kvp_serialize(cache.ptr, ctypes.byref(o), buf, need, ctypes.byref(written)), "kvp_serialize")
    return buf.raw[: written.value]


class _Callback:
    """Runs a file object's method from a C callback: an exception is kept (the C call then
    fails with KVP_ERR_IO) and re-raised by :meth:`reraise` after the call returns."""

    def __init__(self) -> None:
        self.error: Optional[BaseException] = None

    def guard(self, fn: Any, *args: Any) -> int:
        try:
            fn(*args)
            return 0
        except BaseException as e:  # never unwind through C
            self.error = e
            return 1

    def reraise(self, e: BaseException) -> None:
        if self.error is not None:
            raise self.error from e
        raise e


def _writer(file: Any, cb: _Callback) -> Any:
    def write(data: int, size: int, _: Any) -> int:
        return cb.guard(lambda: _write_all(file, memoryview((ctypes.c_char * size).from_address(data)).cast("B")))
    return WriteFn(write)


def _write_all(file: Any, view: memoryview) -> None:
    while len(view):
        n = file.write(view)
        view = view[len(view) if n is None else n:]


def _reader(file: Any, cb: _Callback) -> Any:
    def read(dst: int, size: int, read_out: Any, _: Any) -> int:
        def fill() -> None:
            read_out[0] = _read_some(file, (ctypes.c_char * size).from_address(dst), size)
        return cb.guard(fill)
    return ReadFn(read)


def _read_some(file: Any, target: Any, size: int) -> int:
    if hasattr(file, "readinto"):
        n = file.readinto(memoryview(target).cast("B"))
        return n or 0
    data = file.read(size)
    if len(data) > size:
        raise ValueError("read(%d) returned %d bytes" % (size, len(data)))
    ctypes.memmove(target, data, len(data))
    return len(data)


def save(cache: Any, target: Any, pages: Optional[Sequence[int]] = None, chunk_bytes: int = 0,
         sync: bool = True) -> None:
    """kvp_serialize_to_file for a path (``sync=False``: KVP_SERIALIZE_FLAG_NO_SYNC), kvp_serialize_to_writer
    for a file object."""
    o, keep = _options(pages, chunk_bytes, sync)
    if _is_path(target):
        check(lib.kvp_serialize_to_file(cache.ptr, ctypes.byref(o), _path(target)), "kvp_serialize_to_file")
        return
    if not hasattr(target, "write"):
        raise invalid("save: expected a path or a binary file object with write(), got %s" % type(target).__name__,
                      "Cache.save")
    cb = _Callback()
    fn = _writer(target, cb)
    try:
        check(lib.kvp_serialize_to_writer(cache.ptr, ctypes.byref(o), fn, None), "kvp_serialize_to_writer")
    except Exception as e:
        cb.reraise(e)


def _deserialize_options(device: DeviceLike, device_id: Optional[int],
                         max_cache_bytes: int) -> Tuple[kvp_deserialize_options, Any]:
    dev, ordinal = parse_device(device, device_id)
    co = kvp_cache_options()
    check(lib.kvp_cache_options_init(ctypes.byref(co), ctypes.sizeof(co)), "kvp_cache_options_init")
    co.device_type, co.device_id = dev.value, ordinal
    o = kvp_deserialize_options()
    check(lib.kvp_deserialize_options_init(ctypes.byref(o), ctypes.sizeof(o)), "kvp_deserialize_options_init")
    o.cache_options, o.max_cache_bytes = ctypes.pointer(co), max_cache_bytes
    return o, co


def _buffer(source: Any) -> Tuple[Any, int, Any]:
    """(address, length, keep-alive) of a bytes-like object (bytes are passed without a copy)."""
    if isinstance(source, bytes):
        return source, len(source), source
    view = memoryview(source).cast("B")
    if view.readonly:
        data = ctypes.create_string_buffer(bytes(view), len(view))  # ctypes needs a writable buffer
        return ctypes.addressof(data), len(view), data
    arr = (ctypes.c_char * len(view)).from_buffer(view) if len(view) else None
    return (ctypes.addressof(arr) if arr is not None else None), len(view), (view, arr)


def load(source: Any, device: DeviceLike = None, device_id: Optional[int] = None, max_cache_bytes: int = 0) -> Any:
    """kvp_deserialize_new (bytes-like), _from_file (path) or _from_reader (file object)."""
    from .cache import Cache
    o, keep = _deserialize_options(device, device_id, max_cache_bytes)
    out = _vp()
    if _is_path(source):
        check(lib.kvp_deserialize_new_from_file(_path(source), ctypes.byref(o), ctypes.byref(out)),
              "kvp_deserialize_new_from_file")
    elif hasattr(source, "read") or hasattr(source, "readinto"):
        cb = _Callback()
        fn = _reader(source, cb)
        try:
            check(lib.kvp_deserialize_new_from_reader(fn, None, ctypes.byref(o), ctypes.byref(out)),
                  "kvp_deserialize_new_from_reader")
        except Exception as e:
            cb.reraise(e)
    else:
        address, n, hold = _buffer(source)
        check(lib.kvp_deserialize_new(address, n, ctypes.byref(o), ctypes.byref(out)), "kvp_deserialize_new")
    return Cache._from_handle(out.value)


def load_into(cache: Any, source: Any, pages: Optional[Sequence[int]] = None) -> None:
    """kvp_deserialize_into / _from_file / _from_reader."""
    ids = _page_ids(pages)
    n_ids = len(pages) if pages is not None else 0
    if _is_path(source):
        check(lib.kvp_deserialize_into_from_file(cache.ptr, _path(source), ids, n_ids), "kvp_deserialize_into_from_file")
    elif hasattr(source, "read") or hasattr(source, "readinto"):
        cb = _Callback()
        fn = _reader(source, cb)
        try:
            check(lib.kvp_deserialize_into_from_reader(cache.ptr, fn, None, ids, n_ids),
                  "kvp_deserialize_into_from_reader")
        except Exception as e:
            cb.reraise(e)
    else:
        address, n, hold = _buffer(source)
        check(lib.kvp_deserialize_into(cache.ptr, address, n, ids, n_ids), "kvp_deserialize_into")


def inspect(source: Any, verify: bool = False) -> SerializedInfo:
    """kvp_serialized_inspect (bytes-like: the header alone is enough unless ``verify``) or
    kvp_serialized_inspect_file (path): the blob's header, checked; ``verify`` also checks every
    chunk checksum."""
    info = sized(kvp_serialized_info)
    flags = INSPECT_VERIFY if verify else 0
    if _is_path(source):
        check(lib.kvp_serialized_inspect_file(_path(source), flags, ctypes.byref(info)), "kvp_serialized_inspect_file")
    else:
        address, n, hold = _buffer(source)
        check(lib.kvp_serialized_inspect(address, n, flags, ctypes.byref(info)), "kvp_serialized_inspect")
    fields = {f: getattr(info, f) for f, _ in info._fields_
              if not f.startswith("_") and f not in ("struct_size", "config", "shard")}
    from ._ffi import kvp_config
    return SerializedInfo(config=Config(kvp_config.from_buffer_copy(info.config)), shard=ShardInfo._of(info.shard),
                          **fields)


def load_shards(cache: Any, sources: Sequence[Any]) -> None:
    """kvp_deserialize_shards_into: each source a bytes-like blob or a path."""
    sources = list(sources)
    refs = (kvp_blob_ref * max(len(sources), 1))()
    keep = []
    for ref, source in zip(refs, sources):
        if _is_path(source):
            ref.path = _path(source)
        else:
            address, ref.size, hold = _buffer(source)
            ref.data = ctypes.cast(address, _vp).value if isinstance(address, bytes) else address
            keep.append(hold)
    check(lib.kvp_deserialize_shards_into(cache.ptr, refs, len(sources)), "kvp_deserialize_shards_into")
