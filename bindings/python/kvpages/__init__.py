"""Python bindings of kvpages, a paged KV cache for LLM inference (C library through ctypes).

``pip install ./bindings/python`` builds a wheel with ``libkvpages.so.1`` inside; the loader
takes, in order, that bundled library, ``$KVPAGES_LIBRARY``, then the system's
(``LD_LIBRARY_PATH``, the loader's paths).

Quick tour::

    cfg = kvpages.Config.create(num_hidden_layers=32, num_kv_heads=8, head_dim=128,
                                max_model_length=8192, dtype="bf16", budget_bytes=4 << 30)
    with kvpages.Cache(cfg) as cache:                     # device: the one cfg was planned for
        md, order = kvpages.Metadata.build(cfg, requests)    # decode-first rows
        cache.concatenate_requests(0, keys, values, md)      # per-request arrays, packed for you
        k = cache.read(0, "keys", "f32")                     # any dtype, via kvp_convert
        cache.save("used.kvp", pages=[1, 2, 3])
    copy = kvpages.Cache.load("used.kvp")

Handles (:class:`Cache`, :class:`CacheGroup`, :class:`Metadata`, :class:`Pool`, :class:`Store`) are
released exactly once (close(), ``with``, or garbage collection); a group's shard is a
:class:`Cache` borrowed from the group, destroyed with it. Failures raise a :class:`KvpagesError`
subclass that is also the matching built-in (``ValueError``, ``MemoryError``, ``OSError``, ...).
Dtypes, layouts, devices and views are enums that also accept strings ("bf16", "v3", "cuda:0", "keys").
"""
from __future__ import annotations

import ctypes
from typing import Callable, Optional

from . import _ffi
from ._ffi import BINDING_VERSION_NUMBER, library, library_path, lib
from .errors import (BufferTooSmall, DeviceError, DeviceLost, DeviceOutOfMemory, FormatChecksum, FormatCorrupt,
                     FormatError, FormatMagic, FormatMismatch, FormatTruncated, FormatVersion, InternalError,
                     InvalidArgument, InvalidHandle, KvpagesError, KvpagesIOError, KvpError, NoDevice, NotFound,
                     OutOfMemory, OutOfPages, Unsupported, VersionMismatch, check, last_error_message)
from .types import (BudgetMode, Device, Dtype, Layout, MetadataField, View, align_to_multiple, cdiv, convert,
                    has_ml_dtypes, num_slices_per_kv_cache_update_page, page_size_bytes, previous_power_of_2)


def version() -> str:
    """The loaded library's version string, e.g. "1.2.0" (kvp_version_string)."""
    return lib.kvp_version_string().decode()


def version_number() -> int:
    """The loaded library's MAJOR*10000 + MINOR*100 + PATCH (kvp_version_number)."""
    return int(lib.kvp_version_number())


def build_info() -> str:
    """Version, revision, compiler, backends and CPU level of the loaded library (kvp_build_info)."""
    return lib.kvp_build_info().decode()


def check_abi(header_version_number: int = BINDING_VERSION_NUMBER) -> None:
    """Raises VersionMismatch unless the loaded library is compatible with these bindings."""
    check(lib.kvp_check_abi(header_version_number), "kvp_check_abi")


check_abi()
_ffi.bind(_ffi.LATER)  # functions newer than 1.0, once the version is known to have them

from .cache import Cache  # noqa: E402
from .config import (DEFAULT_SAFETY_MARGIN, FALLBACK_BUDGET, Config, HeadSharding, LayoutInfo, MemoryStats,  # noqa: E402
                     Plan, ShardInfo, hbm_budget_bytes, memory_stats)
from .dlpack import DLPackTensor, live_exports, release_unconsumed  # noqa: E402
from .group import CacheGroup  # noqa: E402
from .metadata import BatchRequest, Metadata  # noqa: E402
from .pool import (PAGE_FLAG_FREE, PAGE_FLAG_INDEXED, PAGE_FLAG_NULL, Pool, PoolShardStats, PoolStats,  # noqa: E402
                   PoolTierStats, SeqId)
from .serialize import SerializedInfo, inspect  # noqa: E402
from .store import STORE_FLAG_NO_SYNC, BlockInfo, ScrubReport, Store, StoreStats, inspect_block  # noqa: E402


def device_count() -> int:
    """Usable CUDA devices (0 without CUDA, a driver or a GPU; kvp_device_count)."""
    n = ctypes.c_int32()
    check(lib.kvp_device_count(ctypes.byref(n)), "kvp_device_count")
    return n.value


_misuse_handler = None  # the installed ctypes callback, kept alive


def set_misuse_handler(handler: Optional[Callable[[str], None]]) -> None:
    """kvp_set_misuse_handler: ``handler(what)`` is called on every detected API misuse (a bad
    handle) before the error returns; None restores the default. Exceptions it raises are
    printed and ignored (they cannot cross the C library)."""
    global _misuse_handler
    if handler is None:
        lib.kvp_set_misuse_handler(ctypes.cast(None, _ffi.MisuseFn), None)
        _misuse_handler = None
        return

    def call(what: bytes, _: object) -> None:
        try:
            handler(what.decode("utf-8", "replace"))
        except Exception as e:  # never unwind through C
            import sys
            print("kvpages misuse handler raised %r" % e, file=sys.stderr)
    fn = _ffi.MisuseFn(call)
    lib.kvp_set_misuse_handler(fn, None)
    _misuse_handler = fn


# Constants of the 1.0/1.1 bindings (the enums are ints, so they compare equal).
DTYPE_F32, DTYPE_F16, DTYPE_BF16 = Dtype.F32, Dtype.F16, Dtype.BF16
DTYPE_F8_E4M3FN, DTYPE_F8_E5M2 = Dtype.F8_E4M3FN, Dtype.F8_E5M2
LAYOUT_V2, LAYOUT_V3 = Layout.V2, Layout.V3
DEVICE_CPU, DEVICE_CUDA = Device.CPU, Device.CUDA
VIEW_PAGES, VIEW_FLAT, VIEW_KEYS, VIEW_VALUES = View.PAGES, View.FLAT, View.KEYS, View.VALUES
VIEW_REFERENCE_KEYS, VIEW_REFERENCE_VALUES = View.REFERENCE_KEYS, View.REFERENCE_VALUES

__version__ = version()

__all__ = [
    "KvpagesError", "KvpError", "InvalidArgument", "InvalidHandle", "NotFound", "VersionMismatch", "Unsupported",
    "BufferTooSmall", "OutOfMemory", "OutOfPages", "KvpagesIOError", "DeviceError", "DeviceLost", "NoDevice",
    "DeviceOutOfMemory", "FormatError", "FormatMagic", "FormatVersion", "FormatTruncated", "FormatChecksum",
    "FormatCorrupt", "FormatMismatch", "InternalError",
    "Dtype", "Layout", "Device", "View", "BudgetMode", "MetadataField",
    "Config", "LayoutInfo", "Plan", "ShardInfo", "HeadSharding", "MemoryStats", "memory_stats", "hbm_budget_bytes", "DEFAULT_SAFETY_MARGIN",
    "FALLBACK_BUDGET", "Cache", "CacheGroup", "Metadata", "BatchRequest", "Pool", "PoolStats", "PoolShardStats",
    "PoolTierStats", "SeqId", "Store", "StoreStats", "ScrubReport", "BlockInfo", "inspect_block", "STORE_FLAG_NO_SYNC", "DLPackTensor",
    "SerializedInfo", "inspect", "convert", "has_ml_dtypes", "live_exports", "release_unconsumed",
    "cdiv", "align_to_multiple", "previous_power_of_2", "page_size_bytes", "num_slices_per_kv_cache_update_page",
    "version", "version_number", "build_info", "check_abi", "device_count", "set_misuse_handler",
    "last_error_message", "library", "library_path", "BINDING_VERSION_NUMBER",
    "DTYPE_F32", "DTYPE_F16", "DTYPE_BF16", "DTYPE_F8_E4M3FN", "DTYPE_F8_E5M2", "LAYOUT_V2", "LAYOUT_V3",
    "DEVICE_CPU", "DEVICE_CUDA", "VIEW_PAGES", "VIEW_FLAT", "VIEW_KEYS", "VIEW_VALUES", "VIEW_REFERENCE_KEYS",
    "VIEW_REFERENCE_VALUES", "PAGE_FLAG_NULL", "PAGE_FLAG_FREE", "PAGE_FLAG_INDEXED",
]
