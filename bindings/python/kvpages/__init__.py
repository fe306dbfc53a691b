"""Python bindings of kvpages, through ctypes (no compiler needed).

The shared library is found through, in order: the ``KVPAGES_LIBRARY`` environment variable (a
path to ``libkvpages.so.1``), then the dynamic loader (``LD_LIBRARY_PATH``, the system paths).

Handles (:class:`Cache`, :class:`Metadata`) are released exactly once: by ``close()``, by a
``with`` block, or when the object is garbage-collected. Every non-OK status raises
:class:`KvpError` (or its subclass for the code) carrying the code, its name and the library's
message for the failing call.

Zero-copy access to the pages: :meth:`Cache.numpy` (buffer protocol) and
:meth:`Cache.export_dlpack` (``numpy.from_dlpack``; ``torch.from_dlpack`` for CUDA caches). Both
keep the cache alive while an array uses its memory, and :meth:`Cache.close` refuses to destroy a
cache whose memory is still referenced by an array.

The page pool (:class:`Pool`, ``kvpages/pool.h``) hands a cache's pages to sequences
(:class:`SeqId`), shares them by fork and reuses them across prompts by prefix hash. A pool keeps
a reference to its cache, and :meth:`Cache.close` refuses to destroy a cache while an open pool
uses it.

Attention (``kvpages/attention.h``, since 1.1): :meth:`Cache.attention` writes a step's new keys and
values and computes ragged paged attention over the pages into an output tensor.

CUDA caches (``Cache(config, DEVICE_CUDA, device_id)``): :meth:`Cache.concatenate` takes any
DLPack producer (``torch.Tensor``, CuPy arrays, ...) besides numpy arrays, in float32, float16 or
bfloat16, and a ``stream`` (an int ``cudaStream_t``, or an object with ``cuda_stream`` or ``ptr``
such as ``torch.cuda.Stream``); :meth:`Cache.read_layer` / :meth:`Cache.write_layer` copy a
layer's bytes to and from the host.
"""
import collections
import ctypes
import ctypes.util
import operator
import os
import threading
import weakref

import numpy as np

__all__ = [
    "KvpError", "InvalidArgument", "InvalidHandle", "NotFound", "VersionMismatch", "Unsupported",
    "OutOfMemory", "OutOfPages", "BufferTooSmall", "Config", "Cache", "Metadata", "Pool", "SeqId",
    "BatchRequest", "PoolStats", "library", "version", "check_abi", "device_count", "DEVICE_CPU", "DEVICE_CUDA",
    "DTYPE_F32", "DTYPE_F16", "DTYPE_BF16", "DTYPE_F8_E4M3FN", "DTYPE_F8_E5M2",
    "LAYOUT_V2", "LAYOUT_V3", "VIEW_PAGES", "VIEW_FLAT", "VIEW_KEYS", "VIEW_VALUES",
    "VIEW_REFERENCE_KEYS", "VIEW_REFERENCE_VALUES", "PAGE_FLAG_NULL", "PAGE_FLAG_FREE", "PAGE_FLAG_INDEXED",
]

# Constants (include/kvpages/*.h).
OK = 0
DTYPE_F32, DTYPE_F16, DTYPE_BF16, DTYPE_F8_E4M3FN, DTYPE_F8_E5M2 = 1, 2, 3, 4, 5
LAYOUT_V2, LAYOUT_V3 = 2, 3
DEVICE_CPU, DEVICE_CUDA = 1, 2
VIEW_PAGES, VIEW_FLAT, VIEW_KEYS, VIEW_VALUES, VIEW_REFERENCE_KEYS, VIEW_REFERENCE_VALUES = range(6)
CONFIG_FLAG_REFERENCE_BUDGET, CONFIG_FLAG_NO_SAFETY_MARGIN = 1, 2
MAX_DIMS = 6
POOL_FLAG_NO_PREFIX_CACHE, POOL_OPTIONS_VERSION, POOL_ADD_FLAG_REUSE_ALL = 1, 1, 1
PAGE_FLAG_NULL, PAGE_FLAG_FREE, PAGE_FLAG_INDEXED = 1, 2, 4
ATTENTION_OPTIONS_VERSION = 1
#: The header version these bindings were written against (KVP_VERSION_NUMBER of 1.1.0:
#: kvp_attention).
BINDING_VERSION_NUMBER = 10100

_i32, _u32, _i64, _u64, _f64 = ctypes.c_int32, ctypes.c_uint32, ctypes.c_int64, ctypes.c_uint64, ctypes.c_double
_vp, _cp = ctypes.c_void_p, ctypes.c_char_p


# ---------------------------------------------------------------------------------------------
# Structs (layouts are checked against the C compiler by tests/test_layout.py)

class kvp_config(ctypes.Structure):
    _fields_ = [("struct_size", _u32), ("abi_version", _u32), ("num_hidden_layers", _i64),
                ("max_model_length", _i64), ("num_kv_heads", _i64), ("k_headdim", _i64), ("v_headdim", _i64),
                ("hbm_utilization", _f64), ("page_size", _i64), ("num_pages", _i64),
                ("max_num_pages_per_req", _i64), ("num_slices_per_kv_cache_update_page", _i64),
                ("max_num_tokens", _i64), ("max_num_reqs", _i64), ("version", _u32), ("kvdtype", _u32)]


class kvp_config_options(ctypes.Structure):
    _fields_ = [("struct_size", _u32), ("abi_version", _u32), ("num_hidden_layers", _i64), ("num_kv_heads", _i64),
                ("max_model_length", _i64), ("kv_head_dim_size", _i64), ("k_headdim", _i64), ("v_headdim", _i64),
                ("hbm_utilization", _f64), ("page_size", _i64), ("kvdtype", _u32), ("version", _u32),
                ("budget_mode", _u32), ("flags", _u32), ("budget_bytes", _i64), ("safety_margin_bytes", _i64),
                ("memory_stats", _vp), ("num_memory_stats", _u32), ("device_type", _i32), ("device_id", _i32),
                ("_reserved0", _u32), ("kv_head_shards", _i64), ("max_num_tokens", _i64), ("max_num_reqs", _i64)]


class kvp_cache_options(ctypes.Structure):
    _fields_ = [("struct_size", _u32), ("abi_version", _u32), ("device_type", _i32), ("device_id", _i32),
                ("allocator", _vp)]


class kvp_tensor(ctypes.Structure):
    _fields_ = [("data", _vp), ("dtype", _u32), ("ndim", _i32), ("shape", _i64 * MAX_DIMS),
                ("strides", _i64 * MAX_DIMS), ("device_type", _i32), ("device_id", _i32)]


class kvp_layout_info(ctypes.Structure):
    _fields_ = [("struct_size", _u32), ("is_h64", _u32), ("kv_head_packing", _i64),
                ("storage_num_combined_kv_heads", _i64), ("storage_num_kv_groups", _i64), ("storage_head_dim", _i64),
                ("itemsize", _i64), ("ndim", _i32), ("_reserved", _i32), ("shape", _i64 * 5), ("layer_bytes", _i64),
                ("page_bytes_per_layer", _i64), ("max_num_seqs", _i64)]


class kvp_batch_request(ctypes.Structure):
    _fields_ = [("num_computed", _i64), ("num_scheduled", _i64), ("page_ids", ctypes.POINTER(_i32)),
                ("num_pages", _i64)]


class kvp_seq_id(ctypes.Structure):
    _fields_ = [("id", _u32)]


class kvp_pool_options(ctypes.Structure):
    _fields_ = [("struct_size", _u32), ("abi_version", _u32), ("max_sequences", _u32), ("flags", _u32),
                ("allocator", _vp)]


class kvp_pool_stats(ctypes.Structure):
    _fields_ = [("struct_size", _u32), ("max_sequences", _u32), ("page_size", _i64),
                ("max_pages_per_sequence", _i64), ("total_pages", _i64), ("free_pages", _i64),
                ("evictable_pages", _i64), ("used_pages", _i64), ("indexed_pages", _i64), ("num_sequences", _i64),
                ("prompt_tokens", _i64), ("reused_tokens", _i64), ("evictions", _i64), ("cow_copies", _i64)]


class kvp_attention_options(ctypes.Structure):
    _fields_ = [("struct_size", _u32), ("abi_version", _u32), ("softmax_scale", ctypes.c_float),
                ("logits_soft_cap", ctypes.c_float), ("sliding_window", _i32), ("k_scale", ctypes.c_float),
                ("v_scale", ctypes.c_float), ("num_sinks", _u32), ("sinks", ctypes.POINTER(ctypes.c_float))]


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int), ("device_id", ctypes.c_int)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [("data", _vp), ("device", DLDevice), ("ndim", ctypes.c_int), ("dtype", DLDataType),
                ("shape", ctypes.POINTER(_i64)), ("strides", ctypes.POINTER(_i64)), ("byte_offset", _u64)]


class DLManagedTensor(ctypes.Structure):
    pass


_DLDeleter = ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManagedTensor))
DLManagedTensor._fields_ = [("dl_tensor", DLTensor), ("manager_ctx", _vp), ("deleter", _DLDeleter)]


# ---------------------------------------------------------------------------------------------
# Loading

def _load():
    path = os.environ.get("KVPAGES_LIBRARY")
    candidates = [path] if path else ["libkvpages.so.1", ctypes.util.find_library("kvpages")]
    errors = []
    for c in candidates:
        if not c:
            continue
        try:
            return ctypes.CDLL(c)
        except OSError as e:  # try the next candidate
            errors.append(str(e))
    raise ImportError("kvpages: cannot load libkvpages.so.1 (set KVPAGES_LIBRARY or LD_LIBRARY_PATH): %s"
                      % "; ".join(errors))


library = _load()
_P = ctypes.POINTER


def _fn(name, restype, *argtypes):
    f = getattr(library, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


_status_name = _fn("kvp_status_name", _cp, _i32)
_last_error_copy = _fn("kvp_last_error_copy", ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t)
_version_number = _fn("kvp_version_number", _u32)
_version_string = _fn("kvp_version_string", _cp)
_check_abi = _fn("kvp_check_abi", _i32, _u32)
_config_options_init = _fn("kvp_config_options_init", _i32, _P(kvp_config_options), _u32)
_config_create = _fn("kvp_config_create", _i32, _P(kvp_config_options), _P(kvp_config))
_config_get_layout = _fn("kvp_config_get_layout", _i32, _P(kvp_config), _P(kvp_layout_info))
_cache_create = _fn("kvp_cache_create", _i32, _P(kvp_config), _P(kvp_cache_options), _P(_vp))
_cache_destroy = _fn("kvp_cache_destroy", _i32, _vp)
_cache_get_config = _fn("kvp_cache_get_config", _i32, _vp, _P(kvp_config))
_cache_get_view = _fn("kvp_cache_get_view", _i32, _vp, _u32, _u32, _P(kvp_tensor))
_cache_get_layout = _fn("kvp_cache_get_layout", _i32, _vp, _P(kvp_layout_info))
_cache_read_layer = _fn("kvp_cache_read_layer", _i32, _vp, _u32, _vp, ctypes.c_size_t, _vp)
_cache_write_layer = _fn("kvp_cache_write_layer", _i32, _vp, _u32, _vp, ctypes.c_size_t, _vp)
_device_count = _fn("kvp_device_count", _i32, _P(_i32))
_cache_export_dlpack = _fn("kvp_cache_export_dlpack", _i32, _vp, _u32, _u32, _u32, _P(_P(DLManagedTensor)))
_metadata_build = _fn("kvp_metadata_build", _i32, _P(kvp_config), _P(kvp_batch_request), _u32, _vp,
                      _P(_i32), _P(_vp))
_metadata_destroy = _fn("kvp_metadata_destroy", _i32, _vp)
_concatenate = _fn("kvp_concatenate", _i32, _vp, _u32, _P(kvp_tensor), _P(kvp_tensor), _vp, _vp)
_cache_copy_pages = _fn("kvp_cache_copy_pages", _i32, _vp, _P(_i32), _P(_i32), ctypes.c_size_t, _vp)
_size, _seq = ctypes.c_size_t, kvp_seq_id
_pool_options_init = _fn("kvp_pool_options_init", _i32, _P(kvp_pool_options), _u32)
_pool_create = _fn("kvp_pool_create", _i32, _vp, _P(kvp_pool_options), _P(_vp))
_pool_destroy = _fn("kvp_pool_destroy", _i32, _vp)
_pool_add_sequence = _fn("kvp_pool_add_sequence", _i32, _vp, _P(_i32), _size, _u64, _u32, _P(_seq), _P(_size))
_pool_append = _fn("kvp_pool_append", _i32, _vp, _seq, _P(_i32), _size, _vp)
_pool_set_computed = _fn("kvp_pool_set_computed", _i32, _vp, _seq, _size)
_pool_truncate = _fn("kvp_pool_truncate", _i32, _vp, _seq, _size)
_pool_fork = _fn("kvp_pool_fork", _i32, _vp, _seq, _u32, _P(_seq))
_pool_free_sequence = _fn("kvp_pool_free_sequence", _i32, _vp, _seq)
_pool_get_sequence_length = _fn("kvp_pool_get_sequence_length", _i32, _vp, _seq, _P(_size), _P(_size))
_pool_get_page_table = _fn("kvp_pool_get_page_table", _i32, _vp, _seq, _P(_i32), _size, _P(_size))
_pool_get_slots = _fn("kvp_pool_get_slots", _i32, _vp, _seq, _size, _size, _P(_i32))
_pool_get_batch_request = _fn("kvp_pool_get_batch_request", _i32, _vp, _seq, _P(kvp_batch_request))
_pool_get_page_state = _fn("kvp_pool_get_page_state", _i32, _vp, _i32, _P(_u32), _P(_u32))
_pool_get_stats = _fn("kvp_pool_get_stats", _i32, _vp, _P(kvp_pool_stats))
_pool_check_invariants = _fn("kvp_pool_check_invariants", _i32, _vp)
_pool_clear_prefix_cache = _fn("kvp_pool_clear_prefix_cache", _i32, _vp)


# ---------------------------------------------------------------------------------------------
# Errors

class KvpError(Exception):
    """A kvpages call failed: ``code`` (int), ``name`` ("KVP_ERR_..."), ``message`` (detail)."""

    def __init__(self, code, message, function=None):
        self.code = code
        self.name = _status_name(code).decode()
        self.message = message
        self.function = function
        super().__init__("%s: %s" % (self.name, message) if message else self.name)


class InvalidArgument(KvpError):
    pass


class InvalidHandle(KvpError):
    pass


class NotFound(KvpError):
    pass


class VersionMismatch(KvpError):
    pass


class Unsupported(KvpError):
    pass


class BufferTooSmall(KvpError):
    pass


class OutOfMemory(KvpError):
    pass


class OutOfPages(KvpError):
    pass


_ERRORS = {1: InvalidArgument, 2: InvalidHandle, 3: NotFound, 4: VersionMismatch, 5: Unsupported, 6: BufferTooSmall,
           64: OutOfMemory, 65: OutOfPages}


def _last_message():
    n = _last_error_copy(None, 0)
    buf = ctypes.create_string_buffer(n + 1)
    _last_error_copy(buf, n + 1)
    return buf.value.decode("utf-8", "replace")


def _check(status, function=None):
    # The message is thread-local; ctypes runs the call on this same OS thread, so reading it
    # right away sees the message of this call.
    if status != OK:
        raise _ERRORS.get(status, KvpError)(status, _last_message(), function)


def version():
    """The loaded library's version string, e.g. "1.1.0"."""
    return _version_string().decode()


def check_abi(header_version_number=BINDING_VERSION_NUMBER):
    """Raises VersionMismatch unless the loaded library is compatible with these bindings."""
    _check(_check_abi(header_version_number), "kvp_check_abi")


check_abi()

# Since 1.1 (symbol node KVPAGES_1.1): looked up after the version check, so a 1.0 library fails
# with VersionMismatch rather than a missing symbol.
_attention_options_init = _fn("kvp_attention_options_init", _i32, _P(kvp_attention_options), _u32)
_attention = _fn("kvp_attention", _i32, _vp, _u32, _P(kvp_tensor), _P(kvp_tensor), _P(kvp_tensor), _vp,
                 _P(kvp_attention_options), _P(kvp_tensor), _vp)


def device_count():
    """kvp_device_count(): usable CUDA devices (0 without CUDA, a driver or a GPU)."""
    n = _i32()
    _check(_device_count(ctypes.byref(n)), "kvp_device_count")
    return n.value


# ---------------------------------------------------------------------------------------------
# Config

class Config:
    """A validated cache configuration (a copy of the C ``kvp_config`` record)."""

    def __init__(self, raw):
        self._raw = raw

    @classmethod
    def create(cls, *, num_hidden_layers, num_kv_heads, max_model_length, head_dim, page_size=0,
               dtype=DTYPE_BF16, layout=LAYOUT_V3, budget_bytes=0, hbm_utilization=0.0, flags=0,
               max_num_reqs=0, max_num_tokens=0):
        """kvp_config_create(): derives num_pages from the memory budget."""
        o = kvp_config_options()
        _check(_config_options_init(ctypes.byref(o), ctypes.sizeof(o)), "kvp_config_options_init")
        o.num_hidden_layers, o.num_kv_heads, o.max_model_length = num_hidden_layers, num_kv_heads, max_model_length
        o.kv_head_dim_size, o.page_size, o.kvdtype, o.version = head_dim, page_size, dtype, layout
        o.budget_bytes, o.hbm_utilization, o.flags = budget_bytes, hbm_utilization, flags
        o.max_num_reqs, o.max_num_tokens = max_num_reqs, max_num_tokens
        raw = kvp_config()
        _check(_config_create(ctypes.byref(o), ctypes.byref(raw)), "kvp_config_create")
        return cls(raw)

    def __getattr__(self, name):
        raw = self.__dict__.get("_raw")
        if raw is not None and name in dict(kvp_config._fields_):
            return getattr(raw, name)
        raise AttributeError(name)

    def layout(self):
        """kvp_config_get_layout() as a dict."""
        li = kvp_layout_info()
        li.struct_size = ctypes.sizeof(li)
        _check(_config_get_layout(ctypes.byref(self._raw), ctypes.byref(li)), "kvp_config_get_layout")
        d = {f: getattr(li, f) for f, _ in kvp_layout_info._fields_ if not f.startswith("_")}
        d["shape"] = tuple(li.shape[: li.ndim])
        return d


# ---------------------------------------------------------------------------------------------
# Handles

class _Handle:
    _destroy = None

    def __init__(self, ptr):
        self._ptr = ptr
        self._lock = threading.Lock()

    @property
    def ptr(self):
        if self._ptr is None:
            raise InvalidHandle(2, "%s is closed" % type(self).__name__)
        return self._ptr

    @property
    def closed(self):
        return self._ptr is None

    def close(self):
        """Releases the handle; later calls are no-ops."""
        with self._lock:
            ptr, self._ptr = self._ptr, None
        if ptr is not None:
            _check(type(self)._destroy(ptr), type(self).__name__ + ".close")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # never raise from a finalizer
            pass


class _Pin:
    """Keeps a Cache alive while an array uses its memory (tracked by the cache weakly)."""
    __slots__ = ("cache", "__weakref__")

    def __init__(self, cache):
        self.cache = cache


_NUMPY_DTYPES = {DTYPE_F32: np.float32, DTYPE_F16: np.float16, DTYPE_BF16: np.uint16,
                 DTYPE_F8_E4M3FN: np.uint8, DTYPE_F8_E5M2: np.uint8}
_KVP_DTYPES = {np.dtype(np.float32): DTYPE_F32, np.dtype(np.float16): DTYPE_F16}

# Live DLPack exports: address of our DLManagedTensor -> (struct, library tensor, pin).
_LIVE_EXPORTS = {}
_LIVE_LOCK = threading.Lock()


@_DLDeleter
def _dlpack_deleter(managed):
    with _LIVE_LOCK:
        entry = _LIVE_EXPORTS.pop(ctypes.addressof(managed.contents), None)
    if entry is not None:
        _, inner, _ = entry
        inner.contents.deleter(inner)  # the library's deleter frees its descriptor


_PyCapsule_New = ctypes.pythonapi.PyCapsule_New
_PyCapsule_New.restype = ctypes.py_object
_PyCapsule_New.argtypes = [_vp, _cp, _vp]
_PyCapsule_IsValid = ctypes.pythonapi.PyCapsule_IsValid
_PyCapsule_IsValid.restype = ctypes.c_int
_PyCapsule_IsValid.argtypes = [_vp, _cp]
_PyCapsule_GetPointer = ctypes.pythonapi.PyCapsule_GetPointer
_PyCapsule_GetPointer.restype = _vp
_PyCapsule_GetPointer.argtypes = [_vp, _cp]


@ctypes.CFUNCTYPE(None, _vp)
def _capsule_destructor(capsule):
    # An unconsumed capsule ("dltensor") still owns the tensor; a consumer renames it.
    if _PyCapsule_IsValid(capsule, b"dltensor"):
        ptr = _PyCapsule_GetPointer(capsule, b"dltensor")
        _dlpack_deleter(ctypes.cast(ptr, ctypes.POINTER(DLManagedTensor)))


class DLPackTensor:
    """One DLPack export of a cache view; pass it to ``numpy.from_dlpack`` (once)."""

    def __init__(self, cache, layer, kind):
        self._cache = cache
        self._layer, self._kind = layer, kind
        self._used = False

    def __dlpack_device__(self):
        if self._cache.device_type == DEVICE_CUDA:
            return (_DL_CUDA, self._cache.device_id)
        return (_DL_CPU, 0)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        if copy:
            raise BufferError("kvpages exports are zero-copy")
        if self._used:
            raise BufferError("this DLPackTensor was already consumed; call Cache.export_dlpack again")
        inner = ctypes.POINTER(DLManagedTensor)()
        _check(_cache_export_dlpack(self._cache.ptr, self._layer, self._kind, 0, ctypes.byref(inner)),
               "kvp_cache_export_dlpack")
        # Wrap the library's tensor in one whose deleter also releases the pin on the cache.
        outer = DLManagedTensor()
        outer.dl_tensor = inner.contents.dl_tensor
        outer.deleter = _dlpack_deleter
        pin = self._cache._pin()
        with _LIVE_LOCK:
            _LIVE_EXPORTS[ctypes.addressof(outer)] = (outer, inner, pin)
        self._used = True
        return _PyCapsule_New(ctypes.addressof(outer), b"dltensor", ctypes.cast(_capsule_destructor, _vp))


class Cache(_Handle):
    """A kvpages cache (kvp_cache_create / kvp_cache_destroy)."""
    _destroy = _cache_destroy

    def __init__(self, config, device_type=DEVICE_CPU, device_id=0):
        opts = kvp_cache_options(ctypes.sizeof(kvp_cache_options), 1, device_type, device_id, None)
        out = _vp()
        _check(_cache_create(ctypes.byref(config._raw), ctypes.byref(opts), ctypes.byref(out)), "kvp_cache_create")
        super().__init__(out.value)
        self.device_type = device_type
        self.device_id = device_id if device_type == DEVICE_CUDA else 0
        self._pins = weakref.WeakSet()
        self._pools = weakref.WeakSet()

    def _pin(self):
        p = _Pin(self)
        self._pins.add(p)
        return p

    def close(self):
        """Destroys the cache; raises BufferError while numpy arrays still use its memory or an
        open :class:`Pool` uses its pages (close the pool first)."""
        if self._ptr is not None and len(self._pins) > 0:
            raise BufferError("kvpages: %d array(s) still use this cache's memory" % len(self._pins))
        if self._ptr is not None and any(not p.closed for p in list(self._pools)):
            raise BufferError("kvpages: an open Pool uses this cache; close the pool first")
        super().close()

    @property
    def config(self):
        raw = kvp_config()
        _check(_cache_get_config(self.ptr, ctypes.byref(raw)), "kvp_cache_get_config")
        return Config(raw)

    def view(self, layer, kind=VIEW_PAGES):
        """kvp_cache_get_view(): the raw ``kvp_tensor`` descriptor."""
        t = kvp_tensor()
        _check(_cache_get_view(self.ptr, layer, kind, ctypes.byref(t)), "kvp_cache_get_view")
        return t

    def numpy(self, layer, kind=VIEW_PAGES):
        """A zero-copy numpy view of a layer (bf16 as uint16 bits, fp8 as uint8 bits).

        The array keeps the cache alive; writes go to the cache."""
        t = self.view(layer, kind)
        if t.device_type != DEVICE_CPU:
            raise Unsupported(5, "numpy views need a CPU cache")
        dt = np.dtype(_NUMPY_DTYPES[t.dtype])
        shape = tuple(t.shape[: t.ndim])
        strides = tuple(s * dt.itemsize for s in t.strides[: t.ndim])
        span = (sum((n - 1) * s for n, s in zip(shape, t.strides[: t.ndim])) + 1) * dt.itemsize
        buf = (ctypes.c_char * span).from_address(t.data)
        buf._kvp_pin = self._pin()
        flat = np.frombuffer(buf, dtype=dt)
        return np.lib.stride_tricks.as_strided(flat, shape=shape, strides=strides)

    def export_dlpack(self, layer, kind=VIEW_PAGES):
        """A DLPack producer for ``numpy.from_dlpack`` (kvp_cache_export_dlpack)."""
        self.ptr  # raises when closed
        return DLPackTensor(self, layer, kind)

    def _stream(self, stream):
        return _stream_handle(stream) if self.device_type == DEVICE_CUDA else None

    def copy_pages(self, src, dst, stream=None):
        """kvp_cache_copy_pages(): page ``dst[i]`` receives page ``src[i]``, in every layer.

        CUDA caches: enqueued on ``stream`` (None = the device's legacy default stream)."""
        if len(src) != len(dst):
            raise InvalidArgument(1, "copy_pages: %d source(s) but %d destination(s)" % (len(src), len(dst)))
        n = len(src)
        s, d = (_i32 * max(n, 1))(*src), (_i32 * max(n, 1))(*dst)
        _check(_cache_copy_pages(self.ptr, s, d, n, self._stream(stream)), "kvp_cache_copy_pages")

    def concatenate(self, layer, key, value, metadata, stream=None):
        """kvp_concatenate(): writes ``key``/``value``, each [T, H, D]: a float32/float16 numpy
        array, or any DLPack producer (``__dlpack__``) of float32, float16 or bfloat16 on the
        cache's device (a CPU cache takes host memory, a CUDA cache that GPU's memory).

        CUDA caches: enqueued on ``stream`` (None = the device's legacy default stream; an int
        ``cudaStream_t``, or an object with ``cuda_stream`` or ``ptr``). DLPack producers are
        asked to make their data ready on that stream."""
        st = self._stream(stream)
        tk, keep_k = _input_tensor(key, st)
        tv, keep_v = _input_tensor(value, st)
        _check(_concatenate(self.ptr, layer, ctypes.byref(tk), ctypes.byref(tv), metadata.ptr, st),
               "kvp_concatenate")
        del keep_k, keep_v  # the producers' memory is held until the call has returned

    def attention(self, layer, queries, keys, values, metadata, out=None, *, softmax_scale=0.0, logits_soft_cap=0.0,
                  sliding_window=0, k_scale=0.0, v_scale=0.0, sinks=None, stream=None):
        """kvp_attention(): writes the step's new ``keys``/``values`` into one layer (exactly as
        :meth:`concatenate` with the same metadata), then attends every query token to its
        request's keys and values, read in place from the pages, and writes the result into ``out``.
        Returns ``out``.

        ``queries`` and ``out`` are [T, Hq, D], ``keys`` and ``values`` [T, Hkv, D] (Hkv the cache's
        KV heads, Hq a multiple of it: grouped-query attention), taken like :meth:`concatenate`'s
        inputs: float32/float16 numpy arrays or DLPack producers of float32, float16 or bfloat16,
        any strides, rows in the metadata's order. ``keys`` and ``values`` both None only reads
        (keys written before with :meth:`concatenate`). ``out`` is written in place: a writable
        float32/float16 numpy array, or a DLPack producer of writable memory (float32, float16 or
        bfloat16) on the cache's device; every row is written, rows that no processed request owns
        become 0. ``out=None`` (CPU caches) allocates a new numpy array shaped like ``queries``, of
        their dtype (float32 for bfloat16 queries).

        Options (zero means default, as in ``kvp_attention_options``): ``softmax_scale`` (0 = the
        reference's default: 1.0 for a v3 cache, 1/sqrt(head_dim) for v2; models pass their own,
        usually ``head_dim ** -0.5``), ``logits_soft_cap`` (0 = none), ``sliding_window`` (0 = none),
        ``k_scale``/``v_scale`` (0 = 1), ``sinks`` (one logit per query head, or None).
        ``stream`` as for :meth:`concatenate`. On an error neither the cache nor ``out`` changes."""
        st = self._stream(stream)
        o = kvp_attention_options()
        _check(_attention_options_init(ctypes.byref(o), ctypes.sizeof(o)), "kvp_attention_options_init")
        window = operator.index(sliding_window)
        if not -(1 << 31) <= window < (1 << 31):
            raise InvalidArgument(1, "sliding_window %d does not fit int32" % window)
        o.softmax_scale, o.logits_soft_cap, o.sliding_window = softmax_scale, logits_soft_cap, window
        o.k_scale, o.v_scale = k_scale, v_scale
        keep_s = None
        if sinks is not None:
            keep_s = np.ascontiguousarray(sinks, dtype=np.float32).reshape(-1)
            o.num_sinks = keep_s.shape[0]
            if keep_s.shape[0]:
                o.sinks = keep_s.ctypes.data_as(_P(ctypes.c_float))
        tq, keep_q = _input_tensor(queries, st)
        if out is None:
            out = self._new_output(tq)
        to, keep_o = _output_tensor(out, st)
        tk, keep_k = _input_tensor(keys, st) if keys is not None else (None, None)
        tv, keep_v = _input_tensor(values, st) if values is not None else (None, None)
        _check(_attention(self.ptr, layer, ctypes.byref(tq), None if tk is None else ctypes.byref(tk),
                          None if tv is None else ctypes.byref(tv), metadata.ptr, ctypes.byref(o), ctypes.byref(to),
                          st), "kvp_attention")
        del keep_q, keep_k, keep_v, keep_o, keep_s  # held until the call has returned
        return out

    def _new_output(self, tq):
        if self.device_type != DEVICE_CPU:
            raise InvalidArgument(1, "attention: out=None allocates host memory; pass out (device memory) for a "
                                     "CUDA cache")
        dtype = np.float16 if tq.dtype == DTYPE_F16 else np.float32
        return np.empty(tuple(tq.shape[: tq.ndim]), dtype=dtype)

    def layer_bytes(self):
        """Bytes of one layer (kvp_cache_get_layout)."""
        li = kvp_layout_info()
        li.struct_size = ctypes.sizeof(kvp_layout_info)
        _check(_cache_get_layout(self.ptr, ctypes.byref(li)), "kvp_cache_get_layout")
        return li.layer_bytes

    def read_layer(self, layer, stream=None):
        """kvp_cache_read_layer(): a copy of the layer's bytes as a uint8 numpy array (for a CUDA
        cache ordered on ``stream``, which the call waits for)."""
        out = np.empty(self.layer_bytes(), dtype=np.uint8)
        _check(_cache_read_layer(self.ptr, layer, out.ctypes.data, out.nbytes, self._stream(stream)),
               "kvp_cache_read_layer")
        return out

    def write_layer(self, layer, data, stream=None):
        """kvp_cache_write_layer(): replaces the layer's bytes with ``data`` (bytes-like or a numpy
        array of exactly ``layer_bytes()`` bytes)."""
        buf = np.ascontiguousarray(np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray)
                                   else data).view(np.uint8).reshape(-1)
        _check(_cache_write_layer(self.ptr, layer, buf.ctypes.data, buf.nbytes, self._stream(stream)),
               "kvp_cache_write_layer")


def _stream_handle(stream):
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
        raise InvalidArgument(1, "stream must be None, an int cudaStream_t, or an object with cuda_stream or "
                                 "ptr; got %s" % type(stream).__name__) from None
    return _vp(stream) if stream != 0 else None


# DLPack codes read by the importer (dlpack.h: DLDeviceType, DLDataTypeCode).
_DL_CPU, _DL_CUDA, _DL_CUDA_HOST = 1, 2, 3
_DL_FLOAT, _DL_BFLOAT = 2, 4
_DL_DTYPES = {(_DL_FLOAT, 32): DTYPE_F32, (_DL_FLOAT, 16): DTYPE_F16, (_DL_BFLOAT, 16): DTYPE_BF16}
_capsule_pointer = ctypes.PYFUNCTYPE(_vp, ctypes.py_object, _cp)(("PyCapsule_GetPointer", ctypes.pythonapi))


def _input_tensor(a, stream):
    """A kvp_tensor for a numpy array or a DLPack producer, and what keeps its memory alive."""
    if isinstance(a, np.ndarray):
        return _tensor_of(a), a
    if hasattr(a, "__dlpack__") and hasattr(a, "__dlpack_device__"):
        return _tensor_from_dlpack(a, stream)
    raise InvalidArgument(1, "expected a numpy array or a DLPack producer (__dlpack__), got %s" % type(a).__name__)


def _output_tensor(a, stream):
    """A kvp_tensor for the writable output of attention (numpy array or DLPack producer)."""
    if isinstance(a, np.ndarray):
        if not a.flags.writeable:
            raise InvalidArgument(1, "out: the numpy array is read-only; out must be writable")
        return _tensor_of(a), a
    if hasattr(a, "__dlpack__") and hasattr(a, "__dlpack_device__"):
        try:
            return _tensor_from_dlpack(a, stream)
        except BufferError as e:  # e.g. numpy refuses to export a read-only array
            raise InvalidArgument(1, "out: the DLPack producer refused to export (%s); out must be writable "
                                     "memory" % e) from None
    raise InvalidArgument(1, "out: expected a numpy array or a DLPack producer (__dlpack__), got %s"
                          % type(a).__name__)


def _tensor_from_dlpack(a, stream):
    dev_type, _ = a.__dlpack_device__()
    if dev_type == _DL_CUDA:
        # The consumer's stream: 1 is the legacy default stream, which NULL means to kvpages.
        capsule = a.__dlpack__(stream=1 if stream is None else stream.value)
    else:
        capsule = a.__dlpack__()
    # Not renamed to "used_dltensor": the capsule keeps ownership and its destructor calls the
    # producer's deleter once it is released after the call.
    dl = DLManagedTensor.from_address(_capsule_pointer(capsule, b"dltensor")).dl_tensor
    key = (dl.dtype.code, dl.dtype.bits)
    if dl.dtype.lanes != 1 or key not in _DL_DTYPES:
        raise InvalidArgument(1, "DLPack input of dtype code %d, %d bits, %d lanes: expected float32, float16 or "
                                 "bfloat16" % (dl.dtype.code, dl.dtype.bits, dl.dtype.lanes))
    if dl.ndim > MAX_DIMS:
        raise InvalidArgument(1, "DLPack input has %d dimensions (at most %d)" % (dl.ndim, MAX_DIMS))
    t = kvp_tensor()
    t.data = (dl.data or 0) + dl.byte_offset
    t.dtype = _DL_DTYPES[key]
    t.ndim = dl.ndim
    step = 1
    for i in reversed(range(dl.ndim)):  # NULL strides mean compact row-major
        t.shape[i] = dl.shape[i]
        t.strides[i] = dl.strides[i] if dl.strides else step
        step *= dl.shape[i]
    if dl.device.device_type == _DL_CUDA:
        t.device_type, t.device_id = DEVICE_CUDA, dl.device.device_id
    elif dl.device.device_type in (_DL_CPU, _DL_CUDA_HOST):
        t.device_type, t.device_id = DEVICE_CPU, 0
    else:
        raise InvalidArgument(1, "DLPack input on device type %d: expected CPU or CUDA memory" % dl.device.device_type)
    return t, capsule


def _tensor_of(a):
    if a.dtype not in _KVP_DTYPES:
        raise InvalidArgument(1, "expected a float32 or float16 numpy array, got %s (use a DLPack producer "
                                 "for bfloat16)" % a.dtype)
    t = kvp_tensor()
    t.data = a.ctypes.data
    t.dtype = _KVP_DTYPES[a.dtype]
    t.ndim = a.ndim
    for i in range(a.ndim):
        t.shape[i] = a.shape[i]
        t.strides[i] = a.strides[i] // a.itemsize
    t.device_type = DEVICE_CPU
    return t


class Metadata(_Handle):
    """Runtime metadata of one step (kvp_metadata_build / kvp_metadata_destroy)."""
    _destroy = _metadata_destroy

    @classmethod
    def build(cls, config, requests):
        """Builds metadata for ``requests`` = [(num_computed, num_scheduled, [page ids]), ...].

        Returns (metadata, order): ``order[row]`` is the index of the request in that row, the
        order in which to pack the new keys and values."""
        n = len(requests)
        reqs = (kvp_batch_request * max(n, 1))()
        keep = []
        for i, (computed, scheduled, pages) in enumerate(requests):
            arr = (_i32 * max(len(pages), 1))(*pages)
            keep.append(arr)
            reqs[i] = kvp_batch_request(computed, scheduled, ctypes.cast(arr, _P(_i32)), len(pages))
        order = (_i32 * max(n, 1))()
        out = _vp()
        _check(_metadata_build(ctypes.byref(config._raw), reqs, n, None, order, ctypes.byref(out)),
               "kvp_metadata_build")
        return cls(out.value), [order[i] for i in range(n) if order[i] >= 0]


# ---------------------------------------------------------------------------------------------
# Page pool

#: A request of :meth:`Metadata.build` (it also accepts plain ``(computed, scheduled, pages)`` tuples).
BatchRequest = collections.namedtuple("BatchRequest", "num_computed num_scheduled page_ids")

#: Counters of a pool (kvp_pool_get_stats); ``free_pages + evictable_pages + used_pages == total_pages``.
PoolStats = collections.namedtuple("PoolStats", [f for f, _ in kvp_pool_stats._fields_ if f != "struct_size"])


class SeqId:
    """Identifies a sequence of a :class:`Pool` (opaque; ``int(seq)`` gives the raw value for logs).

    Hashable and comparable for equality. Freeing the sequence makes the id stale: later calls
    with it raise :class:`NotFound`."""
    __slots__ = ("_id",)

    def __init__(self, raw):
        object.__setattr__(self, "_id", int(raw))

    def __setattr__(self, name, value):
        raise AttributeError("SeqId is immutable")

    def __int__(self):
        return self._id

    def __eq__(self, other):
        return isinstance(other, SeqId) and other._id == self._id

    def __hash__(self):
        return hash(("kvp_seq_id", self._id))

    def __repr__(self):
        return "SeqId(0x%08x)" % self._id


def _seq(seq):
    if not isinstance(seq, SeqId):
        raise TypeError("expected a kvpages.SeqId, got %s" % type(seq).__name__)
    return kvp_seq_id(seq._id)


def _tokens(tokens):
    """Token ids (a sequence of ints or a 1-D integer array) as int32 C memory: (array, pointer, count)."""
    a = np.ascontiguousarray(tokens, dtype=np.int32)
    if a.ndim != 1:
        raise InvalidArgument(1, "expected a 1-D sequence of token ids, got %d dimensions" % a.ndim)
    return a, a.ctypes.data_as(_P(_i32)), a.shape[0]


class Pool(_Handle):
    """A page pool over one cache (kvp_pool_create / kvp_pool_destroy).

    Keeps a reference to its cache; :meth:`Cache.close` refuses while the pool is open. Not
    internally synchronised: calls that modify the pool must not run concurrently. Every failed
    call raises and leaves the pool unchanged."""
    _destroy = _pool_destroy

    def __init__(self, cache, max_sequences=0, no_prefix_cache=False):
        o = kvp_pool_options()
        _check(_pool_options_init(ctypes.byref(o), ctypes.sizeof(o)), "kvp_pool_options_init")
        o.max_sequences = max_sequences
        if no_prefix_cache:
            o.flags |= POOL_FLAG_NO_PREFIX_CACHE
        out = _vp()
        _check(_pool_create(cache.ptr, ctypes.byref(o), ctypes.byref(out)), "kvp_pool_create")
        super().__init__(out.value)
        self.cache = cache
        cache._pools.add(self)
        self._max_pages = self.stats().max_pages_per_sequence

    def add_sequence(self, tokens, salt=0, reuse_all=False):
        """Adds a sequence holding the prompt ``tokens``, reusing the longest cached prefix of full
        pages (unless ``reuse_all``, at least one token is left to compute).

        Returns ``(seq, reused_tokens)``; the reused tokens count as computed."""
        keep, arr, n = _tokens(tokens)
        seq, reused = kvp_seq_id(), _size()
        flags = POOL_ADD_FLAG_REUSE_ALL if reuse_all else 0
        _check(_pool_add_sequence(self.ptr, arr, n, salt, flags, ctypes.byref(seq), ctypes.byref(reused)),
               "kvp_pool_add_sequence")
        return SeqId(seq.id), reused.value

    def append(self, seq, tokens):
        """Appends tokens (every token already in the sequence then counts as computed); a shared
        partial tail page is copied first."""
        keep, arr, n = _tokens(tokens)
        _check(_pool_append(self.ptr, _seq(seq), arr, n, None), "kvp_pool_append")

    def set_computed(self, seq, num_tokens):
        """Declares the K/V of the first ``num_tokens`` tokens written (full pages get indexed)."""
        _check(_pool_set_computed(self.ptr, _seq(seq), num_tokens), "kvp_pool_set_computed")

    def truncate(self, seq, new_length):
        _check(_pool_truncate(self.ptr, _seq(seq), new_length), "kvp_pool_truncate")

    def fork(self, seq, num_children):
        """Forks ``seq`` into ``num_children`` sequences sharing all its pages; returns their ids."""
        out = (kvp_seq_id * max(num_children, 1))()
        _check(_pool_fork(self.ptr, _seq(seq), num_children, out), "kvp_pool_fork")
        return [SeqId(out[i].id) for i in range(num_children)]

    def free_sequence(self, seq):
        """Releases the sequence's pages; ``seq`` becomes stale."""
        _check(_pool_free_sequence(self.ptr, _seq(seq)), "kvp_pool_free_sequence")

    def _length(self, seq):
        n, computed = _size(), _size()
        _check(_pool_get_sequence_length(self.ptr, _seq(seq), ctypes.byref(n), ctypes.byref(computed)),
               "kvp_pool_get_sequence_length")
        return n.value, computed.value

    def length(self, seq):
        """Tokens in the sequence."""
        return self._length(seq)[0]

    def computed(self, seq):
        """The computed watermark: tokens whose K/V is written."""
        return self._length(seq)[1]

    def page_table(self, seq):
        """The sequence's page ids in logical order (a list)."""
        buf, n = (_i32 * max(self._max_pages, 1))(), _size()
        _check(_pool_get_page_table(self.ptr, _seq(seq), buf, self._max_pages, ctypes.byref(n)),
               "kvp_pool_get_page_table")
        return buf[: n.value]

    def slots(self, seq, start, count):
        """Cache slots (``page * page_size + row``) of positions ``start … start + count - 1``."""
        buf = (_i32 * max(count, 1))()
        _check(_pool_get_slots(self.ptr, _seq(seq), start, count, buf), "kvp_pool_get_slots")
        return buf[:count]

    def batch_request(self, seq):
        """A :class:`BatchRequest` for :meth:`Metadata.build`: the computed watermark, the pending
        tokens and a copy of the page ids (so it stays valid after the pool changes)."""
        r = kvp_batch_request()
        _check(_pool_get_batch_request(self.ptr, _seq(seq), ctypes.byref(r)), "kvp_pool_get_batch_request")
        return BatchRequest(r.num_computed, r.num_scheduled, r.page_ids[: r.num_pages])

    def page_state(self, page):
        """``(refcount, flags)`` of a page; flags are ``PAGE_FLAG_*`` bits."""
        ref, flags = _u32(), _u32()
        _check(_pool_get_page_state(self.ptr, page, ctypes.byref(ref), ctypes.byref(flags)),
               "kvp_pool_get_page_state")
        return ref.value, flags.value

    def stats(self):
        """The pool's counters as a :class:`PoolStats`."""
        st = kvp_pool_stats()
        st.struct_size = ctypes.sizeof(st)
        _check(_pool_get_stats(self.ptr, ctypes.byref(st)), "kvp_pool_get_stats")
        return PoolStats(*(getattr(st, f) for f in PoolStats._fields))

    def check_invariants(self):
        """Raises KvpError (KVP_ERR_INTERNAL, naming the violation) if the bookkeeping is inconsistent."""
        _check(_pool_check_invariants(self.ptr), "kvp_pool_check_invariants")

    def clear_prefix_cache(self):
        """Empties the prefix index (after a model or weight change)."""
        _check(_pool_clear_prefix_cache(self.ptr), "kvp_pool_clear_prefix_cache")
