"""Enums of the C API (dtypes, layouts, devices, views, flags), the numpy side of dtypes
(``ml_dtypes`` when installed, raw bits otherwise), :func:`convert` (kvp_convert) and the
integer helpers of the reference (cdiv, page sizes, ...).

Everywhere a dtype is taken, a :class:`Dtype`, its C value, a name the library knows ("bf16",
"bfloat16", "fp8_e4m3fn", ...) or a numpy dtype (float32, float16, ml_dtypes' bfloat16 and fp8
types) is accepted; likewise layouts ("v3"), devices ("cpu", "cuda", "cuda:1") and views
("keys")."""
from __future__ import annotations

import ctypes
import enum
from typing import Any, Optional, Tuple, Union

import numpy as np

from ._ffi import _i64, lib
from .errors import NotFound, check, invalid

try:  # optional: real bfloat16 / fp8 numpy dtypes
    import ml_dtypes as _ml_dtypes
except ImportError:  # raw bit patterns (uint16 / uint8) instead
    _ml_dtypes = None


class Dtype(enum.IntEnum):
    """Element types (``KVP_DTYPE_*``). ``str(Dtype.BF16)`` is the library's name, "bf16"."""
    F32 = 1
    F16 = 2
    BF16 = 3
    F8_E4M3FN = 4
    F8_E5M2 = 5
    F64 = 6
    F8_E4M3FNUZ = 7
    F8_E4M3B11FNUZ = 8
    F8_E5M2FNUZ = 9

    @classmethod
    def parse(cls, value: "DtypeLike") -> "Dtype":
        """A Dtype from a Dtype, an int, a name ("bf16", "float16", ...) or a numpy dtype."""
        if isinstance(value, str):
            if value.upper() in cls.__members__:  # "f32", "BF16", "f8_e4m3fn"
                return cls[value.upper()]
            out = ctypes.c_uint32()
            try:
                check(lib.kvp_dtype_from_string(value.encode(), ctypes.byref(out)), "kvp_dtype_from_string")
            except NotFound:
                raise NotFound(3, "unknown dtype %r; expected one of %s" % (value, ", ".join(
                    str(d) for d in cls)), "Dtype.parse") from None
            return cls(out.value)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            try:
                return cls(int(value))
            except ValueError:
                raise NotFound(3, "unknown dtype value %d" % value, "Dtype.parse") from None
        try:
            return _FROM_NUMPY[np.dtype(value)]
        except (TypeError, KeyError):
            raise invalid("not a kvpages dtype: %r (expected a Dtype, a name such as 'bf16', or a float32, "
                          "float16, bfloat16 or fp8 numpy dtype)" % (value,), "Dtype.parse") from None

    def __str__(self) -> str:
        return lib.kvp_dtype_name(self.value).decode()

    @property
    def bits(self) -> int:
        """Bits per element (kvp_dtype_bits)."""
        return int(lib.kvp_dtype_bits(self.value))

    @property
    def packing(self) -> int:
        """Elements per 32-bit word (kvp_dtype_packing)."""
        out = _i64()
        check(lib.kvp_dtype_packing(self.value, ctypes.byref(out)), "kvp_dtype_packing")
        return out.value

    def numpy(self, bits: bool = False) -> np.dtype:
        """The numpy dtype of this element type: float32/float16; bfloat16 and fp8 as ml_dtypes'
        types when installed and ``bits`` is false, else their raw bit patterns (uint16, uint8)."""
        if self in (Dtype.F32, Dtype.F16, Dtype.F64):
            return np.dtype({Dtype.F32: np.float32, Dtype.F16: np.float16, Dtype.F64: np.float64}[self])
        if not bits and _ml_dtypes is not None and self in _ML_NAMES:
            return np.dtype(getattr(_ml_dtypes, _ML_NAMES[self]))
        return np.dtype(np.uint16 if self.bits == 16 else np.uint8)


_ML_NAMES = {Dtype.BF16: "bfloat16", Dtype.F8_E4M3FN: "float8_e4m3fn", Dtype.F8_E5M2: "float8_e5m2"}
_FROM_NUMPY = {np.dtype(np.float32): Dtype.F32, np.dtype(np.float16): Dtype.F16, np.dtype(np.float64): Dtype.F64}
if _ml_dtypes is not None:
    _FROM_NUMPY.update({np.dtype(getattr(_ml_dtypes, n)): d for d, n in _ML_NAMES.items()})

DtypeLike = Union[Dtype, int, str, np.dtype, type]


def has_ml_dtypes() -> bool:
    """Whether ``ml_dtypes`` is installed (bfloat16 and fp8 arrays then have real numpy dtypes)."""
    return _ml_dtypes is not None


class Layout(enum.IntEnum):
    """Storage layout versions (``KVP_LAYOUT_*``); ``str(Layout.V3)`` is "v3"."""
    DEFAULT = 0
    V2 = 2
    V3 = 3

    @classmethod
    def parse(cls, value: Union["Layout", int, str]) -> "Layout":
        if isinstance(value, str):
            out = ctypes.c_uint32()
            check(lib.kvp_layout_from_string(value.encode(), ctypes.byref(out)), "kvp_layout_from_string")
            return cls(out.value)
        try:
            return cls(int(value))
        except ValueError:
            raise NotFound(3, "unknown layout version %r (expected 'v2' or 'v3')" % (value,), "Layout.parse") from None

    def __str__(self) -> str:
        name = lib.kvp_layout_name(self.value)
        return name.decode() if name else "default"


class Device(enum.IntEnum):
    """Device kinds (``KVP_DEVICE_*``, DLPack's values)."""
    CPU = 1
    CUDA = 2

    def __str__(self) -> str:
        return self.name.lower()


DeviceLike = Union[Device, int, str, None]


def parse_device(device: DeviceLike, device_id: Optional[int] = None) -> Tuple[Device, int]:
    """``(Device, ordinal)`` from None (the CPU), a Device, or "cpu" / "cuda" / "cuda:N"."""
    if device is None:
        return Device.CPU, 0
    if isinstance(device, str):
        kind, _, ordinal = device.partition(":")
        try:
            dev = Device[kind.upper()]
        except KeyError:
            raise invalid("unknown device %r (expected 'cpu', 'cuda' or 'cuda:N')" % device, "parse_device") from None
        if ordinal:
            if device_id is not None and device_id != int(ordinal):
                raise invalid("device %r and device_id %d disagree" % (device, device_id), "parse_device")
            device_id = int(ordinal)
    else:
        try:
            dev = Device(int(device))
        except ValueError:
            raise invalid("unknown device type %r" % (device,), "parse_device") from None
    return dev, (device_id or 0) if dev == Device.CUDA else 0


class View(enum.IntEnum):
    """Views of a layer (``KVP_VIEW_*``)."""
    PAGES = 0
    FLAT = 1
    KEYS = 2
    VALUES = 3
    REFERENCE_KEYS = 4
    REFERENCE_VALUES = 5

    @classmethod
    def parse(cls, value: Union["View", int, str]) -> "View":
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                raise invalid("unknown view %r (expected one of %s)" % (
                    value, ", ".join(v.name.lower() for v in cls)), "View.parse") from None
        try:
            return cls(int(value))
        except ValueError:
            raise invalid("unknown view kind %r" % (value,), "View.parse") from None


class BudgetMode(enum.IntEnum):
    """How kvp_config_create budgets memory from device statistics (``KVP_BUDGET_*``)."""
    FREE = 0
    TOTAL = 1


class MetadataField(enum.IntEnum):
    """Arrays of a metadata handle (``KVP_METADATA_*``)."""
    PAGES_TABLES = 0
    CONTEXT_LENS = 1
    QUERY_START_LOC = 2
    NUM_SEQS = 3
    SLOT_MAPPING = 4
    NUM_KV_UPDATE_SLICES = 5
    REQUEST_DISTRIBUTION = 6
    POSITION_IDS = 7
    TOKEN_STARTS = 8


# ---------------------------------------------------------------------------------------------
# Conversions (kvp_convert)

CONVERTIBLE = (Dtype.F32, Dtype.F16, Dtype.BF16, Dtype.F8_E4M3FN, Dtype.F8_E5M2)


def dtype_of_array(a: np.ndarray, dtype: Optional[DtypeLike] = None) -> Dtype:
    """The kvpages dtype of an array: ``dtype`` when given (required for raw bits: uint16 arrays
    holding bf16, uint8 holding fp8), else from the array's numpy dtype."""
    if dtype is not None:
        d = Dtype.parse(dtype)
        if a.dtype.itemsize * 8 != d.bits:
            raise invalid("a %s array cannot hold %s elements (%d bits)" % (a.dtype, d, d.bits), "dtype_of_array")
        return d
    if a.dtype in _FROM_NUMPY:
        return _FROM_NUMPY[a.dtype]
    raise invalid("cannot tell the element type of a %s array; pass dtype= (e.g. 'bf16' for uint16 bit "
                  "patterns)" % a.dtype, "dtype_of_array")


def convert(values: Any, to: DtypeLike, *, src: Optional[DtypeLike] = None, bits: bool = False) -> np.ndarray:
    """Converts host data between f32, f16, bf16 and the fp8 types with the cache's rounding
    (kvp_convert): the result holds exactly the bytes kvp_concatenate stores.

    ``values``: an array-like (lists become float32); ``src`` names its dtype when the array holds
    raw bits; float64 data is first rounded to float32 by numpy. The result has the same shape,
    in ``Dtype.parse(to).numpy(bits)``."""
    a = np.ascontiguousarray(values if isinstance(values, np.ndarray) else np.asarray(values, dtype=np.float32))
    if src is None and a.dtype == np.float64:
        a = a.astype(np.float32)
    s, d = dtype_of_array(a, src), Dtype.parse(to)
    out = np.empty(a.shape, dtype=d.numpy(bits))
    check(lib.kvp_convert(a.ctypes.data, s.value, out.ctypes.data, d.value, a.size), "kvp_convert")
    return out


# ---------------------------------------------------------------------------------------------
# Integer helpers of the reference

def _out_i64(fn: Any, name: str, *args: Any) -> int:
    out = _i64()
    check(fn(*args, ctypes.byref(out)), name)
    return out.value


def cdiv(a: int, b: int) -> int:
    """kvp_cdiv: ceil division with the reference's floor semantics for negatives."""
    return _out_i64(lib.kvp_cdiv, "kvp_cdiv", a, b)


def align_to_multiple(v: int, m: int) -> int:
    """kvp_align_to_multiple: cdiv(v, m) * m."""
    return _out_i64(lib.kvp_align_to_multiple, "kvp_align_to_multiple", v, m)


def previous_power_of_2(n: int) -> int:
    """kvp_previous_power_of_2: the largest power of two <= n (0 when n <= 0)."""
    return int(lib.kvp_previous_power_of_2(n))


def page_size_bytes(page_size: int, num_kv_heads: int, head_size: int, dtype: DtypeLike) -> int:
    """kvp_page_size_bytes: the reference's bytes of one page of one layer (generic v3 formula)."""
    return _out_i64(lib.kvp_page_size_bytes, "kvp_page_size_bytes", page_size, num_kv_heads, head_size,
                    Dtype.parse(dtype).value)


def num_slices_per_kv_cache_update_page(page_size_bytes: int) -> int:
    """kvp_num_slices_per_kv_cache_update_page: the v2 update batching factor."""
    return _out_i64(lib.kvp_num_slices_per_kv_cache_update_page, "kvp_num_slices_per_kv_cache_update_page",
                    page_size_bytes)


__all__ = ["Dtype", "DtypeLike", "Layout", "Device", "DeviceLike", "View", "BudgetMode", "MetadataField",
           "parse_device", "convert", "has_ml_dtypes", "cdiv", "align_to_multiple", "previous_power_of_2",
           "page_size_bytes", "num_slices_per_kv_cache_update_page"]
