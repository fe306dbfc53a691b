"""DLPack both ways: :class:`DLPackTensor` exports a cache view (``numpy.from_dlpack``,
``torch.from_dlpack``), and the input side reads any DLPack producer as a ``kvp_tensor``.

Exports never run Python code from a capsule destructor. The capsule is created without one,
and the binding keeps a reference to it: a capsule that a consumer renamed ("used_dltensor") now
belongs to the consumer, whose call of the tensor's deleter releases the export; a capsule that
nobody consumed and nobody else references (for example because the consumer raised, as numpy
does for bfloat16) is released by the binding on the next export, :meth:`Cache.close` or
:func:`release_unconsumed`. So a failing consumer never sees a Python callback clobber its
pending exception, and the cache's pin is always released."""
from __future__ import annotations

import ctypes
import sys
import threading
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ._ffi import MAX_DIMS, DLDeleter, DLManagedTensor, _cp, _vp, kvp_tensor, lib
from .errors import check, invalid
from .types import Device, Dtype

# DLPack codes (dlpack.h: DLDeviceType, DLDataTypeCode).
DL_CPU, DL_CUDA, DL_CUDA_HOST = 1, 2, 3
DL_INT, DL_UINT, DL_FLOAT, DL_BFLOAT = 0, 1, 2, 4
_DL_DTYPES = {(DL_FLOAT, 32): Dtype.F32, (DL_FLOAT, 16): Dtype.F16, (DL_BFLOAT, 16): Dtype.BF16}
_CAPSULE_NAME = b"dltensor"

_PyCapsule_New = ctypes.pythonapi.PyCapsule_New
_PyCapsule_New.restype, _PyCapsule_New.argtypes = ctypes.py_object, [_vp, _cp, _vp]
_PyCapsule_IsValid = ctypes.pythonapi.PyCapsule_IsValid
_PyCapsule_IsValid.restype, _PyCapsule_IsValid.argtypes = ctypes.c_int, [ctypes.py_object, _cp]
_PyCapsule_GetPointer = ctypes.pythonapi.PyCapsule_GetPointer
_PyCapsule_GetPointer.restype, _PyCapsule_GetPointer.argtypes = _vp, [ctypes.py_object, _cp]


class _Export:
    """One live export: our managed tensor, the library's, the pin on the cache, the capsule
    (until a consumer takes it) and the shape/strides memory."""
    __slots__ = ("outer", "inner", "pin", "capsule", "dims")

    def __init__(self, outer: DLManagedTensor, inner: Any, pin: Any, dims: Any):
        self.outer, self.inner, self.pin, self.dims = outer, inner, pin, dims
        self.capsule: Any = None


#: Live exports by the address of our DLManagedTensor.
_LIVE_EXPORTS: Dict[int, _Export] = {}
_LIVE_LOCK = threading.Lock()


def _release(address: int) -> None:
    with _LIVE_LOCK:
        entry = _LIVE_EXPORTS.pop(address, None)
    if entry is not None:
        entry.inner.contents.deleter(entry.inner)  # frees the library's descriptor; the pin goes with entry


@DLDeleter
def _deleter(managed: Any) -> None:
    # Called by the consumer that took the capsule (numpy saves its pending exception around it).
    _release(ctypes.addressof(managed.contents))


def release_unconsumed() -> int:
    """Releases exports whose capsule nobody consumed and nobody references any more; forgets
    the capsules consumers took. Returns how many exports were released."""
    released = []
    with _LIVE_LOCK:
        for address, entry in _LIVE_EXPORTS.items():
            if entry.capsule is None:
                continue
            if not _PyCapsule_IsValid(entry.capsule, _CAPSULE_NAME):  # renamed: the consumer owns it
                entry.capsule = None
            elif sys.getrefcount(entry.capsule) <= 2:  # only entry.capsule (and the argument) left
                released.append(address)
    for address in released:
        _release(address)
    return len(released)


def live_exports() -> int:
    """Exports not yet released (after releasing the unconsumed ones)."""
    release_unconsumed()
    return len(_LIVE_EXPORTS)


class DLPackTensor:
    """One DLPack export of a cache view (``Cache.export_dlpack``); pass it to a consumer once.

    bfloat16 is exported as DLPack's ``kDLBfloat`` (torch reads it; numpy cannot and raises),
    or with ``bits=True`` as its uint16 bit patterns (numpy reads those). fp8 is always uint8."""

    def __init__(self, cache: Any, layer: int, kind: int, bits: bool = False):
        self._cache, self._layer, self._kind, self._bits = cache, layer, kind, bits
        self._used = False

    def __dlpack_device__(self) -> Tuple[int, int]:
        dev, ordinal = self._cache.device
        return (DL_CUDA, ordinal) if dev == Device.CUDA else (DL_CPU, 0)

    def __dlpack__(self, *, stream: Any = None, max_version: Any = None, dl_device: Any = None,
                   copy: Optional[bool] = None) -> Any:
        if copy:
            raise BufferError("kvpages exports are zero-copy (copy=True is not supported)")
        if dl_device is not None and tuple(dl_device) != self.__dlpack_device__():
            raise BufferError("kvpages exports stay on the cache's device %s" % (self.__dlpack_device__(),))
        if self._used:
            raise BufferError("this DLPackTensor was already consumed; call Cache.export_dlpack again")
        release_unconsumed()
        inner = ctypes.POINTER(DLManagedTensor)()
        check(lib.kvp_cache_export_dlpack(self._cache.ptr, self._layer, self._kind, 0, ctypes.byref(inner)),
              "kvp_cache_export_dlpack")
        outer, dims = _wrap(inner.contents, self._bits)
        entry = _Export(outer, inner, self._cache._pin(), dims)
        address = ctypes.addressof(outer)
        with _LIVE_LOCK:
            _LIVE_EXPORTS[address] = entry
        self._used = True
        entry.capsule = _PyCapsule_New(address, _CAPSULE_NAME, None)
        return entry.capsule


def _wrap(inner: DLManagedTensor, bits: bool) -> Tuple[DLManagedTensor, Any]:
    """Our managed tensor over the library's tensor (its deleter releases both and the pin)."""
    outer = DLManagedTensor()
    outer.dl_tensor = inner.dl_tensor
    outer.deleter = _deleter
    if bits and inner.dl_tensor.dtype.code == DL_BFLOAT:
        outer.dl_tensor.dtype.code = DL_UINT
    return outer, None


# ---------------------------------------------------------------------------------------------
# Inputs: DLPack producers as kvp_tensor

def dlpack_capsule(a: Any, stream: Any) -> Any:
    """The DLPack capsule of a producer (the producer's own destructor releases it), for
    ``stream`` where its memory is on a CUDA device."""
    dev_type, _ = a.__dlpack_device__()
    if dev_type == DL_CUDA:
        # The consumer's stream: 1 is the legacy default stream, which NULL means to kvpages.
        return a.__dlpack__(stream=1 if stream is None else stream.value)
    return a.__dlpack__()


def capsule_tensor_address(capsule: Any) -> int:
    """The address of the DLManagedTensor (whose first member is the DLTensor) in a capsule."""
    return _PyCapsule_GetPointer(capsule, _CAPSULE_NAME)


def tensor_from_dlpack(a: Any, stream: Any, int_ok: bool = False) -> Tuple[kvp_tensor, Any]:
    """A kvp_tensor for a DLPack producer and what keeps its memory alive (the capsule)."""
    capsule = dlpack_capsule(a, stream)
    return tensor_of_capsule(capsule, int_ok), capsule


def tensor_of_capsule(capsule: Any, int_ok: bool = False) -> kvp_tensor:
    """A kvp_tensor for the DLTensor in a DLPack capsule; raises where kvpages cannot read it."""
    dl = DLManagedTensor.from_address(capsule_tensor_address(capsule)).dl_tensor
    key = (dl.dtype.code, dl.dtype.bits)
    if int_ok and key == (DL_INT, 32):
        dtype = Dtype.F32  # metadata arrays: only the address and shape are used
    elif dl.dtype.lanes != 1 or key not in _DL_DTYPES:
        raise invalid("DLPack input of dtype code %d, %d bits, %d lanes: expected float32, float16 or bfloat16"
                      % (dl.dtype.code, dl.dtype.bits, dl.dtype.lanes), "DLPack input")
    else:
        dtype = _DL_DTYPES[key]
    if dl.ndim > MAX_DIMS:
        raise invalid("DLPack input has %d dimensions (at most %d)" % (dl.ndim, MAX_DIMS), "DLPack input")
    t = kvp_tensor()
    t.data = (dl.data or 0) + dl.byte_offset
    t.dtype, t.ndim = dtype.value, dl.ndim
    step = 1
    for i in reversed(range(dl.ndim)):  # NULL strides mean compact row-major
        t.shape[i] = dl.shape[i]
        t.strides[i] = dl.strides[i] if dl.strides else step
        step *= dl.shape[i]
    if dl.device.device_type == DL_CUDA:
        t.device_type, t.device_id = Device.CUDA, dl.device.device_id
    elif dl.device.device_type in (DL_CPU, DL_CUDA_HOST):
        t.device_type, t.device_id = Device.CPU, 0
    else:
        raise invalid("DLPack input on device type %d: expected CPU or CUDA memory" % dl.device.device_type,
                      "DLPack input")
    return t


def tensor_of_array(a: np.ndarray, dtype: Dtype) -> kvp_tensor:
    """A kvp_tensor describing a host numpy array of ``dtype`` (strides in elements)."""
    if a.ndim > MAX_DIMS:
        raise invalid("numpy input has %d dimensions (at most %d)" % (a.ndim, MAX_DIMS), "input")
    t = kvp_tensor()
    t.data = a.ctypes.data
    t.dtype, t.ndim = dtype.value, a.ndim
    for i in range(a.ndim):
        t.shape[i] = a.shape[i]
        t.strides[i] = a.strides[i] // a.itemsize
    t.device_type = Device.CPU
    return t
