"""The cache (``kvp_cache``): views (numpy, DLPack), typed reads and writes in any dtype,
concatenate (packed tensors or per-request arrays), attention, layer and page copies, async
errors, and saving (whole or chosen pages, to bytes, a path or a file object)."""
from __future__ import annotations

import ctypes
import operator
import os
import weakref
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from ._ffi import _P, _f32, _i32, _vp, config_record, kvp_attention_options, kvp_cache_options, kvp_layout_info
from ._ffi import kvp_shard_info, kvp_tensor, lib, sized
from ._handle import Handle
from ._tensors import input_descriptor, output_descriptor
from .config import Config, LayoutInfo, ShardInfo
from .dlpack import DLPackTensor, release_unconsumed
from .errors import KvpagesError, Unsupported, check, error_for, invalid
from .metadata import Metadata
from .types import Device, DeviceLike, Dtype, DtypeLike, View, convert, dtype_of_array, parse_device

_concatenate = lib.kvp_concatenate

ViewLike = Union[View, int, str]
PathLike = Union[str, "os.PathLike[str]"]


class _Pin:
    """Keeps a Cache alive while an array or export uses its memory (tracked weakly by the cache)."""
    __slots__ = ("cache", "__weakref__")

    def __init__(self, cache: "Cache"):
        self.cache = cache


class Cache(Handle):
    """A kvpages cache (kvp_cache_create / kvp_cache_destroy); ``with Cache(cfg) as cache:``.

    ``device`` ("cpu", "cuda", "cuda:N", a :class:`Device`) defaults to the device the config
    was planned for. :meth:`close` refuses (BufferError) while numpy arrays or DLPack exports use
    the cache's memory or an open :class:`Pool` uses its pages."""
    _destroy = lib.kvp_cache_destroy

    def __init__(self, config: Config, device: DeviceLike = None, device_id: Optional[int] = None):
        opts = _cache_options(config, device, device_id)
        out = _vp()
        check(lib.kvp_cache_create(ctypes.byref(config._raw), ctypes.byref(opts), ctypes.byref(out)),
              "kvp_cache_create")
        self._adopt(out.value)

    @classmethod
    def create_shard(cls, config: Config, tp_rank: int, dp_rank: int, device: DeviceLike = None,
                     device_id: Optional[int] = None) -> "Cache":
        """kvp_cache_create_shard (since 1.4): the slice tensor rank ``tp_rank`` and data rank
        ``dp_rank`` of a sharded config hold, on ``device`` (default: the config's). Its views and
        layer bytes are the local slice; :meth:`concatenate` takes the whole cache's metadata and
        the full key/value arrays or only the shard's heads (:attr:`shard`)."""
        opts = _cache_options(config, device, device_id)
        out = _vp()
        check(lib.kvp_cache_create_shard(ctypes.byref(config._raw), tp_rank, dp_rank, ctypes.byref(opts),
                                         ctypes.byref(out)), "kvp_cache_create_shard")
        return cls._from_handle(out.value)

    @classmethod
    def _from_handle(cls, ptr: int) -> "Cache":
        cache = cls.__new__(cls)
        cache._adopt(ptr)
        return cache

    def _adopt(self, ptr: int) -> None:
        Handle.__init__(self, ptr)
        self._pins: "weakref.WeakSet[_Pin]" = weakref.WeakSet()
        self._pools: "weakref.WeakSet[Any]" = weakref.WeakSet()
        kind, ordinal = _i32(), _i32()
        check(lib.kvp_cache_get_device(ptr, ctypes.byref(kind), ctypes.byref(ordinal)), "kvp_cache_get_device")
        self.device_type, self.device_id = Device(kind.value), ordinal.value
        self._dtype = self.config.dtype  # a cache's config never changes: read once, not per read/write

    def _pin(self) -> _Pin:
        p = _Pin(self)
        self._pins.add(p)
        return p

    def close(self) -> None:
        """Destroys the cache (a shard borrowed from a :class:`CacheGroup`: only detaches this
        object, the group destroys the shard); raises BufferError while arrays or exports still
        use its memory or an open Pool uses its pages (close the pool first)."""
        if self._ptr is not None:
            self._check_unused()
        super().close()

    def _check_unused(self) -> None:
        release_unconsumed()
        if len(self._pins) > 0:
            raise BufferError("kvpages: %d array(s) or export(s) still use this cache's memory" % len(self._pins))
        if any(not p.closed for p in list(self._pools)):
            raise BufferError("kvpages: an open Pool uses this cache; close the pool first")

    # -- properties ------------------------------------------------------------------------------

    @property
    def device(self) -> Tuple[Device, int]:
        """``(Device, ordinal)`` of the cache's memory (kvp_cache_get_device)."""
        return self.device_type, self.device_id

    @property
    def config(self) -> Config:
        raw = config_record()
        check(lib.kvp_cache_get_config(self.ptr, ctypes.byref(raw)), "kvp_cache_get_config")
        return Config(raw, self.device_type, self.device_id)

    @property
    def dtype(self) -> Dtype:
        """The storage dtype of the pages."""
        return self._dtype

    @property
    def shard(self) -> ShardInfo:
        """kvp_cache_get_shard (since 1.4): which slice of its config this cache holds."""
        info = sized(kvp_shard_info)
        check(lib.kvp_cache_get_shard(self.ptr, ctypes.byref(info)), "kvp_cache_get_shard")
        return ShardInfo._of(info)

    def layout(self) -> LayoutInfo:
        """kvp_cache_get_layout: the geometry of the layer buffers."""
        info = sized(kvp_layout_info)
        check(lib.kvp_cache_get_layout(self.ptr, ctypes.byref(info)), "kvp_cache_get_layout")
        return LayoutInfo._of(info)

    def layer_bytes(self) -> int:
        return self.layout().layer_bytes

    # -- async errors ----------------------------------------------------------------------------

    def async_error(self) -> Optional[KvpagesError]:
        """kvp_cache_get_async_error: the recorded asynchronous error as an exception object
        (not raised), or None."""
        status = _i32()
        check(lib.kvp_cache_get_async_error(self.ptr, ctypes.byref(status)), "kvp_cache_get_async_error")
        if status.value == 0:
            return None
        from .errors import last_error_message
        return error_for(status.value, last_error_message(), "kvp_cache_get_async_error")

    def check_async_error(self) -> None:
        """Raises the recorded asynchronous error, if any."""
        err = self.async_error()
        if err is not None:
            raise err

    def clear_async_error(self) -> None:
        """kvp_cache_clear_async_error (raises DeviceLost for a sticky device fault)."""
        check(lib.kvp_cache_clear_async_error(self.ptr), "kvp_cache_clear_async_error")

    # -- views -----------------------------------------------------------------------------------

    def view(self, layer: int, kind: ViewLike = View.PAGES) -> kvp_tensor:
        """kvp_cache_get_view: the raw ``kvp_tensor`` descriptor."""
        t = kvp_tensor()
        check(lib.kvp_cache_get_view(self.ptr, layer, View.parse(kind).value, ctypes.byref(t)), "kvp_cache_get_view")
        return t

    def numpy(self, layer: int, kind: ViewLike = View.PAGES, *, bits: bool = False) -> np.ndarray:
        """A zero-copy, writable numpy view of a layer (CPU caches). bfloat16 and fp8 come as
        ml_dtypes' types when installed (and ``bits`` is false), else as uint16 / uint8 bits.

        The array keeps the cache alive; writes go to the cache."""
        t = self.view(layer, kind)
        if t.device_type != Device.CPU:
            raise Unsupported(5, "numpy views need a CPU cache (use read() or export_dlpack())", "Cache.numpy")
        dt = Dtype(t.dtype).numpy(bits)
        shape = tuple(t.shape[: t.ndim])
        strides = tuple(s * dt.itemsize for s in t.strides[: t.ndim])
        span = (sum((n - 1) * s for n, s in zip(shape, t.strides[: t.ndim])) + 1) * dt.itemsize
        buf = (ctypes.c_char * span).from_address(t.data)
        buf._kvp_pin = self._pin()
        flat = np.frombuffer(buf, dtype=dt)
        return np.lib.stride_tricks.as_strided(flat, shape=shape, strides=strides)

    def read(self, layer: int, kind: ViewLike = View.KEYS, dtype: DtypeLike = Dtype.F32,
             index: Any = ()) -> np.ndarray:
        """A copy of (part of) a view converted to ``dtype`` with kvp_convert: e.g. the keys of a
        bf16 cache as float32. ``index`` selects like numpy indexing on the view. CPU and CUDA
        caches (a CUDA cache's layer is copied to the host first)."""
        raw = self._host_view(layer, kind)[index]
        return convert(np.ascontiguousarray(raw), dtype, src=self.dtype, bits=False)

    def read_tokens(self, layer: int, page_ids: Sequence[int], start: int, count: int, kind: ViewLike = View.KEYS,
                    dtype: DtypeLike = Dtype.F32) -> np.ndarray:
        """The keys (or values) of ``count`` tokens of one sequence from position ``start``, as
        [count, H, D] in ``dtype``: position p is row ``p % page_size`` of page
        ``page_ids[p // page_size]`` (the sequence's page table)."""
        view = View.parse(kind)
        if view not in (View.KEYS, View.VALUES):
            raise invalid("read_tokens reads the keys or values view, not %s" % view.name.lower(), "Cache.read_tokens")
        size = self.config.page_size
        positions = np.arange(start, start + count)
        table = np.asarray(page_ids, dtype=np.int64)
        if count and (start < 0 or positions[-1] // size >= len(table)):
            raise invalid("read_tokens: positions %d..%d need %d pages, the page table has %d"
                          % (start, start + count - 1, positions[-1] // size + 1, len(table)), "Cache.read_tokens")
        return self.read(layer, view, dtype, (table[positions // size], positions % size))

    def write(self, layer: int, kind: ViewLike, values: Any, index: Any = (), dtype: Optional[DtypeLike] = None) -> None:
        """Stores ``values`` (f32, f16, bf16 or fp8 data; ``dtype`` names raw bits) into (part of)
        a view of a CPU cache, converted to the cache's dtype with kvp_convert."""
        cache_dtype = self.dtype
        a = np.asarray(values, dtype=None if isinstance(values, np.ndarray) else np.float32)
        stored = convert(a, cache_dtype, src=dtype_of_array(a, dtype), bits=True)
        target = self.numpy(layer, kind, bits=True)
        target[index] = stored

    def _host_view(self, layer: int, kind: ViewLike) -> np.ndarray:
        """The view's raw bits: zero-copy for a CPU cache, from a layer copy for a CUDA one."""
        if self.device_type == Device.CPU:
            return self.numpy(layer, kind, bits=True)
        t = self.view(layer, kind)
        base = self.view(layer, View.PAGES).data
        dt = Dtype(t.dtype).numpy(bits=True)
        flat = self.read_layer(layer).view(dt)
        offset = (t.data - base) // dt.itemsize
        return np.lib.stride_tricks.as_strided(flat[offset:], shape=tuple(t.shape[: t.ndim]),
                                               strides=tuple(s * dt.itemsize for s in t.strides[: t.ndim]))

    def export_dlpack(self, layer: int, kind: ViewLike = View.PAGES, *, bits: bool = False) -> DLPackTensor:
        """A DLPack producer of a view (kvp_cache_export_dlpack) for ``numpy.from_dlpack`` or
        ``torch.from_dlpack``. numpy cannot import bfloat16: pass ``bits=True`` to export bf16 as
        its uint16 bit patterns, or use :meth:`numpy`."""
        self.ptr  # raises when closed
        return DLPackTensor(self, layer, View.parse(kind).value, bits)

    # -- writes ----------------------------------------------------------------------------------

    def _stream(self, stream: Any) -> Any:
        return stream_handle(stream) if self.device_type == Device.CUDA else None

    def concatenate(self, layer: int, key: Any, value: Any, metadata: Metadata, stream: Any = None,
                    dtype: Optional[DtypeLike] = None) -> None:
        """kvp_concatenate: writes ``key``/``value``, each [T, H, D] packed in the metadata's row
        order (see :meth:`concatenate_requests` to pass them per request instead).

        Inputs: numpy arrays of float32, float16, bfloat16 or fp8 (ml_dtypes' types, or raw bits
        with ``dtype=`` such as "bf16"), or any DLPack producer of float32, float16 or bfloat16
        on the cache's device. CUDA caches: enqueued on ``stream`` (None = the legacy default
        stream; an int ``cudaStream_t`` or an object with ``cuda_stream`` or ``ptr``)."""
        st = None if stream is None else self._stream(stream)
        k, keep_k = input_descriptor(key, st, dtype)
        v, keep_v = input_descriptor(value, st, dtype)
        status = _concatenate(self.ptr, layer, k, v, metadata.ptr, st)
        if status:
            check(status, "kvp_concatenate")
        del keep_k, keep_v  # the producers' memory is held until the call has returned

    def concatenate_requests(self, layer: int, keys: Sequence[Any], values: Sequence[Any], metadata: Metadata,
                             dtype: Optional[DtypeLike] = None) -> None:
        """kvp_concatenate with per-request host arrays, indexed like the ``requests`` given to
        :meth:`Metadata.build` (each [num_scheduled, H, D]): packed in the metadata's row order
        for you, so the decode-first reordering cannot put tokens in the wrong place. CPU caches;
        for a CUDA cache pack device tensors in ``metadata.order`` (e.g.
        ``torch.cat([keys[i] for i in md.order])``) and call :meth:`concatenate`."""
        if self.device_type != Device.CPU:
            raise invalid("concatenate_requests packs host arrays, for CPU caches; for a CUDA cache pack device "
                          "tensors in metadata.order and call concatenate()", "Cache.concatenate_requests")
        self.concatenate(layer, metadata.pack(keys), metadata.pack(values), metadata, dtype=dtype)

    def attention(self, layer: int, queries: Any, keys: Any, values: Any, metadata: Metadata, out: Any = None, *,
                  softmax_scale: float = 0.0, logits_soft_cap: float = 0.0, sliding_window: int = 0,
                  k_scale: float = 0.0, v_scale: float = 0.0, sinks: Any = None, stream: Any = None) -> Any:
        """kvp_attention: writes the step's new ``keys``/``values`` into one layer (as
        :meth:`concatenate`), then attends every query token to its request's keys and values in
        the pages and writes the result into ``out``, which it returns.

        ``queries``/``out`` [T, Hq, D], ``keys``/``values`` [T, Hkv, D] (both None: only read),
        taken like :meth:`concatenate`'s inputs. ``out=None`` (CPU caches) allocates a numpy
        array shaped like the queries (float32 for bfloat16 queries). Options as in
        ``kvp_attention_options`` (0 = default; ``softmax_scale`` 0 is 1.0 for a v3 cache: pass
        your model's, usually ``head_dim ** -0.5``). On an error neither the cache nor ``out``
        changes."""
        st = self._stream(stream)
        o = kvp_attention_options()
        check(lib.kvp_attention_options_init(ctypes.byref(o), ctypes.sizeof(o)), "kvp_attention_options_init")
        window = operator.index(sliding_window)
        if not -(1 << 31) <= window < (1 << 31):
            raise invalid("sliding_window %d does not fit int32" % window, "Cache.attention")
        o.softmax_scale, o.logits_soft_cap, o.sliding_window = softmax_scale, logits_soft_cap, window
        o.k_scale, o.v_scale = k_scale, v_scale
        keep_s = None
        if sinks is not None:
            keep_s = np.ascontiguousarray(sinks, dtype=np.float32).reshape(-1)
            o.num_sinks = keep_s.shape[0]
            if keep_s.shape[0]:
                o.sinks = keep_s.ctypes.data_as(_P(_f32))
        tq, keep_q = input_descriptor(queries, st)
        if out is None:
            out = self._new_output(kvp_tensor.from_buffer_copy(tq))
        to, keep_o = output_descriptor(out, st)
        tk, keep_k = input_descriptor(keys, st) if keys is not None else (None, None)
        tv, keep_v = input_descriptor(values, st) if values is not None else (None, None)
        check(lib.kvp_attention(self.ptr, layer, tq, tk, tv, metadata.ptr, ctypes.byref(o), to, st), "kvp_attention")
        del keep_q, keep_k, keep_v, keep_o, keep_s  # held until the call has returned
        return out

    def _new_output(self, tq: kvp_tensor) -> np.ndarray:
        if self.device_type != Device.CPU:
            raise invalid("attention: out=None allocates host memory; pass out (device memory) for a CUDA cache",
                          "Cache.attention")
        dtype = np.float16 if tq.dtype == Dtype.F16 else np.float32
        return np.empty(tuple(tq.shape[: tq.ndim]), dtype=dtype)

    # -- copies ----------------------------------------------------------------------------------

    def copy_pages(self, src: Sequence[int], dst: Sequence[int], stream: Any = None) -> None:
        """kvp_cache_copy_pages: page ``dst[i]`` receives page ``src[i]``, in every layer."""
        if len(src) != len(dst):
            raise invalid("copy_pages: %d source(s) but %d destination(s)" % (len(src), len(dst)), "Cache.copy_pages")
        n = len(src)
        s, d = (_i32 * max(n, 1))(*src), (_i32 * max(n, 1))(*dst)
        check(lib.kvp_cache_copy_pages(self.ptr, s, d, n, self._stream(stream)), "kvp_cache_copy_pages")

    def read_layer(self, layer: int, stream: Any = None) -> np.ndarray:
        """kvp_cache_read_layer: a copy of the layer's bytes as a uint8 array (waits for ``stream``)."""
        out = np.empty(self.layer_bytes(), dtype=np.uint8)
        check(lib.kvp_cache_read_layer(self.ptr, layer, out.ctypes.data, out.nbytes, self._stream(stream)),
              "kvp_cache_read_layer")
        return out

    def write_layer(self, layer: int, data: Any, stream: Any = None) -> None:
        """kvp_cache_write_layer: replaces the layer's bytes with ``data`` (exactly layer_bytes())."""
        buf = np.ascontiguousarray(np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray)
                                   else data).view(np.uint8).reshape(-1)
        check(lib.kvp_cache_write_layer(self.ptr, layer, buf.ctypes.data, buf.nbytes, self._stream(stream)),
              "kvp_cache_write_layer")

    # -- serialization (see kvpages.serialize) ---------------------------------------------------

    def serialized_size(self, pages: Optional[Sequence[int]] = None, chunk_bytes: int = 0) -> int:
        from .serialize import serialized_size
        return serialized_size(self, pages, chunk_bytes)

    def to_bytes(self, pages: Optional[Sequence[int]] = None, chunk_bytes: int = 0) -> bytes:
        """kvp_serialize: the blob of the whole cache, or of ``pages`` (in that order)."""
        from .serialize import to_bytes
        return to_bytes(self, pages, chunk_bytes)

    def save(self, target: Any, pages: Optional[Sequence[int]] = None, chunk_bytes: int = 0,
             sync: bool = True) -> None:
        """Saves the whole cache or ``pages``: to a path (kvp_serialize_to_file, atomic; ``sync=False``
        skips its fsyncs: KVP_SERIALIZE_FLAG_NO_SYNC) or to a binary file object with ``write``
        (kvp_serialize_to_writer, streaming)."""
        from .serialize import save
        save(self, target, pages, chunk_bytes, sync)

    def load_into(self, source: Any, pages: Optional[Sequence[int]] = None) -> None:
        """Loads a blob (bytes-like, path, or binary file object with ``readinto``/``read``) into
        this cache: its pages go to ``pages`` (one id per stored page) or to their own ids.
        Every checksum is verified first: on failure the cache is unchanged."""
        from .serialize import load_into
        load_into(self, source, pages)

    def load_shards(self, sources: Sequence[Any]) -> None:
        """kvp_deserialize_shards_into (since 1.4): loads a set of blobs (bytes-like or paths)
        whose slices may differ from this cache's: re-sharding. Every blob is checked and the
        set's coverage proven first: a missing shard, an overlap or another model raises
        FormatMismatch and changes nothing."""
        from .serialize import load_shards
        load_shards(self, sources)

    @classmethod
    def load(cls, source: Any, device: DeviceLike = None, device_id: Optional[int] = None,
             max_cache_bytes: int = 0) -> "Cache":
        """A new cache from a blob (bytes-like, path, or binary file object), on ``device``."""
        from .serialize import load
        return load(source, device, device_id, max_cache_bytes)

    @classmethod
    def from_bytes(cls, data: Any, device: DeviceLike = None, max_cache_bytes: int = 0) -> "Cache":
        from .serialize import load
        return load(memoryview(data), device, None, max_cache_bytes)

    def __repr__(self) -> str:
        if self.closed:
            return "Cache(closed)"
        c = self.config
        return "Cache(%s, layers=%d, pages=%d, dtype=%s)" % (self.device_type, c.num_hidden_layers, c.num_pages, c.dtype)


def _cache_options(config: Config, device: DeviceLike, device_id: Optional[int]) -> kvp_cache_options:
    """Cache options for ``device`` (default: the device ``config`` was planned for)."""
    if device is None and device_id is None:
        dev, ordinal = config.device, config.device_id
    else:
        dev, ordinal = parse_device(device, device_id)
    opts = kvp_cache_options()
    check(lib.kvp_cache_options_init(ctypes.byref(opts), ctypes.sizeof(opts)), "kvp_cache_options_init")
    opts.device_type, opts.device_id = dev.value, ordinal
    return opts


# ---------------------------------------------------------------------------------------------
# Streams

def stream_handle(stream: Any) -> Any:
    """A ``cudaStream_t`` value for the C API from None, an int, or a stream object."""
    if stream is None:
        return None
    for attr in ("cuda_stream", "ptr"):  # torch.cuda.Stream / cupy.cuda.Stream
        if hasattr(stream, attr):
            stream = getattr(stream, attr)
            break
    try:
        stream = operator.index(stream)  # int, numpy integer, ...
    except TypeError:
        raise invalid("stream must be None, an int cudaStream_t, or an object with cuda_stream or ptr; got %s"
                      % type(stream).__name__, "stream") from None
    return _vp(stream) if stream != 0 else None
