"""Caller tensors as ``kvp_tensor`` descriptors for a call: numpy arrays, DLPack producers (torch,
JAX, CuPy, ...) and torch CPU tensors, each packed into the 120 bytes of the C struct (a ``bytes``
object, passed to the library as ``const kvp_tensor *``), with what keeps its memory alive.

Everything in a descriptor but the data pointer follows from the input's layout: the numpy dtype
(and ``dtype=``) with the shape and strides of an array; the dtype, shape and strides of a torch
tensor; the device, dtype, shape and strides of a DLTensor. The first input of a layout goes
through the general path (``_array_tensor``, or DLPack's ``tensor_of_capsule``), which validates
it and raises its errors; its descriptor without the data pointer is then remembered, and later
inputs of that layout only add their data pointer. So a decode step's call costs a dictionary
lookup per tensor (after the capsule round trip a DLPack producer needs) instead of a ctypes
struct read and filled field by field, and every input is still validated exactly as the general
path does: a layout is only remembered once that path accepted it, and anything else takes that
path."""
from __future__ import annotations

import ctypes
import struct
import sys
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ._ffi import MAX_DIMS, DLTensor, kvp_tensor
from .dlpack import capsule_tensor_address, dlpack_capsule, tensor_from_dlpack, tensor_of_array, tensor_of_capsule
from .errors import KvpagesError, invalid
from .types import CONVERTIBLE, Device, Dtype, DtypeLike, convert, dtype_of_array

#: Bytes of a kvp_tensor before its dtype field: the data pointer (packed per call).
_HEAD = kvp_tensor.dtype.offset
_pack_data = struct.Struct("P").pack
assert struct.calcsize("P") == _HEAD

#: Validated layouts: key -> the descriptor's bytes after the data pointer. Cleared when full.
_ARRAY_LAYOUTS: Dict[Any, bytes] = {}
_TORCH_LAYOUTS: Dict[Any, bytes] = {}
_DLPACK_LAYOUTS: Dict[Any, bytes] = {}
_MAX_LAYOUTS = 4096


def _remember(layouts: Dict[Any, bytes], key: Any, descriptor: bytes) -> None:
    if len(layouts) >= _MAX_LAYOUTS:
        layouts.clear()
    layouts[key] = descriptor[_HEAD:]


def _array_data_reader() -> Any:
    """A function that returns a numpy array's data address. numpy's array object starts with the
    object header and then its ``char *data`` (PyArrayObject_fields, fixed by numpy's C ABI), and
    in CPython ``id()`` is the object's address: reading that pointer takes ~0.15 µs, where
    ``__array_interface__`` (a new dict) or ``.ctypes.data`` takes ~1.5 µs. Used only where it
    reads what ``__array_interface__`` says for probe arrays (offset views included)."""
    def interface(a: np.ndarray) -> int:
        return a.__array_interface__["data"][0]
    if sys.implementation.name != "cpython":
        return interface
    at, offset = ctypes.c_void_p.from_address, object.__basicsize__

    def header(a: np.ndarray) -> int:
        return at(id(a) + offset).value or 0
    base = np.arange(16, dtype=np.float32)
    probes = [base, base[3:], base.reshape(4, 4)[1:, ::2], base.view(np.uint16)[5:].reshape(3, 9)]
    return header if all(header(p) == interface(p) for p in probes) else interface


_array_data = _array_data_reader()


# ---------------------------------------------------------------------------------------------
# numpy arrays

def _array_tensor(a: np.ndarray, dtype: Optional[DtypeLike]) -> Tuple[kvp_tensor, Any]:
    """The general path of a numpy input: validates its dtype, widens fp8 to float32."""
    try:
        d = dtype_of_array(a, dtype)
    except KvpagesError:
        raise invalid("expected a float32, float16, bfloat16 or fp8 numpy array, got %s (raw bits: pass dtype=, "
                      "e.g. 'bf16')" % a.dtype, "input") from None
    if d not in CONVERTIBLE:
        raise invalid("%s input (%s) is not supported: expected float32, float16, bfloat16 or fp8" % (a.dtype, d),
                      "input")
    if d in (Dtype.F8_E4M3FN, Dtype.F8_E5M2):  # kvp_concatenate reads f32/f16/bf16: widen exactly
        a, d = convert(a, Dtype.F32, src=d), Dtype.F32
    return tensor_of_array(a, d), a


def _array_descriptor(a: np.ndarray, dtype: Optional[DtypeLike], key: Any) -> Tuple[bytes, Any]:
    """The general path of a numpy input; remembers its layout under ``key`` (None: not at all)."""
    t, keep = _array_tensor(a, dtype)
    descriptor = bytes(t)
    if key is not None and keep is a:  # not an fp8 input widened into a new array
        _remember(_ARRAY_LAYOUTS, key, descriptor)
    return descriptor, keep


# ---------------------------------------------------------------------------------------------
# torch CPU tensors (duck-typed: torch is never imported here)

#: torch.Tensor, learned from the first one passed in.
_torch_tensor: Optional[type] = None


def _is_torch_tensor(kind: type) -> bool:
    """Whether ``kind`` is torch.Tensor itself (not a subclass, which may override __dlpack__)."""
    global _torch_tensor
    if _torch_tensor is None and kind.__module__ == "torch" and kind.__name__ == "Tensor" and \
            all(hasattr(kind, name) for name in ("data_ptr", "stride", "is_cpu", "requires_grad", "__dlpack__")):
        _torch_tensor = kind
    return kind is _torch_tensor


def _torch_descriptor(a: Any, stream: Any) -> Optional[Tuple[bytes, Any]]:
    """A CPU tensor's descriptor, or None where DLPack must decide (device memory: the stream
    handshake; a tensor that requires grad, which torch refuses to export)."""
    if a.requires_grad or not a.is_cpu:
        return None
    try:
        key = (a.dtype, a.shape, a.stride())
    except RuntimeError:  # no strides (sparse, mkldnn): torch refuses to export those
        return None
    tail = _TORCH_LAYOUTS.get(key)
    if tail is not None:
        return _pack_data(a.data_ptr()) + tail, a
    t, capsule = tensor_from_dlpack(a, stream)
    descriptor = bytes(t)
    if t.data == a.data_ptr() and t.device_type == Device.CPU:
        _remember(_TORCH_LAYOUTS, key, descriptor)
    return descriptor, capsule


# ---------------------------------------------------------------------------------------------
# Other DLPack producers (JAX, CuPy, ...): the DLTensor read as bytes

#: DLTensor: data, device type and id, ndim, dtype code, bits and lanes, shape, strides, byte_offset.
_dltensor = struct.Struct("@PiiiBBHPPQ")
assert _dltensor.size == ctypes.sizeof(DLTensor)
_string_at = ctypes.string_at


def _dlpack_descriptor(a: Any, stream: Any) -> Tuple[bytes, Any]:
    """A DLPack producer's descriptor: the capsule's DLTensor read with one ``string_at`` per
    field group, its layout (everything but the data address) looked up; a new layout takes the
    general path."""
    capsule = dlpack_capsule(a, stream)
    data, dev, dev_id, ndim, code, bits, lanes, shape, strides, offset = _dltensor.unpack(
        _string_at(capsule_tensor_address(capsule), _dltensor.size))
    key = None
    if 0 < ndim <= MAX_DIMS and shape:
        key = (dev, dev_id, code, bits, lanes, _string_at(shape, 8 * ndim),
               _string_at(strides, 8 * ndim) if strides else None)
        tail = _DLPACK_LAYOUTS.get(key)
        if tail is not None:
            return _pack_data((data or 0) + offset) + tail, capsule
    descriptor = bytes(tensor_of_capsule(capsule))
    if key is not None:
        _remember(_DLPACK_LAYOUTS, key, descriptor)
    return descriptor, capsule


# ---------------------------------------------------------------------------------------------
# Inputs and outputs of a call

def input_descriptor(a: Any, stream: Any, dtype: Optional[DtypeLike] = None) -> Tuple[bytes, Any]:
    """The kvp_tensor of a numpy array or a DLPack producer, and what keeps its memory alive."""
    if isinstance(a, np.ndarray):
        # Remembered for dtype= None, a name or a Dtype (not ints: 1 == True would mix them up).
        key = (a.dtype, dtype, a.shape, a.strides) if dtype is None or type(dtype) in (str, Dtype) else None
        tail = _ARRAY_LAYOUTS.get(key)
        if tail is not None:
            return _pack_data(_array_data(a)) + tail, a
        return _array_descriptor(a, dtype, key)
    if type(a) is _torch_tensor or _is_torch_tensor(type(a)):
        found = _torch_descriptor(a, stream)
        if found is not None:
            return found
    if hasattr(a, "__dlpack__") and hasattr(a, "__dlpack_device__"):
        return _dlpack_descriptor(a, stream)
    raise invalid("expected a numpy array or a DLPack producer (__dlpack__), got %s" % type(a).__name__, "input")


def output_descriptor(a: Any, stream: Any) -> Tuple[bytes, Any]:
    """The kvp_tensor of the writable output of attention (numpy array or DLPack producer)."""
    if isinstance(a, np.ndarray):
        if not a.flags.writeable:
            raise invalid("out: the numpy array is read-only; out must be writable", "Cache.attention")
        if a.dtype not in (np.float32, np.float16):
            raise invalid("out: expected float32 or float16, got %s" % a.dtype, "Cache.attention")
        return bytes(tensor_of_array(a, dtype_of_array(a))), a
    if hasattr(a, "__dlpack__") and hasattr(a, "__dlpack_device__"):
        try:
            t, keep = tensor_from_dlpack(a, stream)
        except BufferError as e:  # e.g. numpy refuses to export a read-only array
            raise invalid("out: the DLPack producer refused to export (%s); out must be writable memory" % e,
                          "Cache.attention") from None
        return bytes(t), keep
    raise invalid("out: expected a numpy array or a DLPack producer (__dlpack__), got %s" % type(a).__name__,
                  "Cache.attention")
