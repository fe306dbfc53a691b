"""The Python binding's CUDA paths against the emulated CUDA runtime (tests/gpu/cuemu), so they are
exercised on machines without a GPU: DLPack producers of device memory (device type and ordinal,
the stream they are asked for), streams, layer copies, page copies and DLPack export of a CUDA
cache on device 1 of the two emulated devices.

Runs only when KVPAGES_LIBRARY is the emulation build (libkvpages_cuemu.so, whose build info says
"cuemu"); ctest runs it that way as cuemu.python_binding. Elsewhere it is skipped."""
import ctypes
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import kvpages  # noqa: E402

_build_info = kvpages.library.kvp_build_info
_build_info.restype = ctypes.c_char_p
if b"cuemu" not in _build_info():
    pytest.skip("needs KVPAGES_LIBRARY set to the emulated-CUDA build (ctest cuemu.python_binding)",
                allow_module_level=True)

H, D, S = 2, 64, 16
lib = kvpages.library
_vp, _sz = ctypes.c_void_p, ctypes.c_size_t
for name, args in {"cudaMalloc": [ctypes.POINTER(_vp), _sz], "cudaFree": [_vp],
                   "cudaMemcpy": [_vp, _vp, _sz, ctypes.c_int], "cudaSetDevice": [ctypes.c_int],
                   "cudaGetDevice": [ctypes.POINTER(ctypes.c_int)],
                   "cudaStreamCreateWithFlags": [ctypes.POINTER(_vp), ctypes.c_uint],
                   "cudaStreamSynchronize": [_vp], "cudaStreamDestroy": [_vp],
                   "cudaDeviceSynchronize": []}.items():
    getattr(lib, name).argtypes = args
    getattr(lib, name).restype = ctypes.c_int


def cuda_ok(err):
    assert err == 0, "CUDA error %d" % err


def current_device():
    d = ctypes.c_int(-1)
    cuda_ok(lib.cudaGetDevice(ctypes.byref(d)))
    return d.value


class DeviceArray:
    """A host array copied into (emulated) device memory of `device`, offered through DLPack as
    kDLCUDA; records the stream each __dlpack__ call was asked for."""

    def __init__(self, host, device, dl_code, dl_bits, label_device=None):
        self.host = np.ascontiguousarray(host)
        self.device = device if label_device is None else label_device
        previous = current_device()
        cuda_ok(lib.cudaSetDevice(device))
        self.ptr = _vp()
        cuda_ok(lib.cudaMalloc(ctypes.byref(self.ptr), self.host.nbytes))
        cuda_ok(lib.cudaMemcpy(self.ptr, self.host.ctypes.data, self.host.nbytes, 1))
        cuda_ok(lib.cudaSetDevice(previous))
        self.shape = (ctypes.c_int64 * self.host.ndim)(*self.host.shape)
        self.managed = kvpages._ffi.DLManagedTensor()
        t = self.managed.dl_tensor
        t.data, t.device, t.ndim = self.ptr.value, kvpages._ffi.DLDevice(2, self.device), self.host.ndim
        t.dtype, t.shape, t.strides, t.byte_offset = kvpages._ffi.DLDataType(dl_code, dl_bits, 1), self.shape, None, 0
        self.streams = []

    def __dlpack_device__(self):
        return (2, self.device)

    def __dlpack__(self, stream=None, **kw):
        self.streams.append(stream)
        new = ctypes.pythonapi.PyCapsule_New
        new.restype, new.argtypes = ctypes.py_object, [_vp, ctypes.c_char_p, _vp]
        return new(ctypes.addressof(self.managed), b"dltensor", None)

    def free(self):
        cuda_ok(lib.cudaFree(self.ptr))


def make_config(dtype=kvpages.DTYPE_BF16):
    return kvpages.Config.create(num_hidden_layers=2, num_kv_heads=H, max_model_length=128, head_dim=D, page_size=S,
                                 dtype=dtype, budget_bytes=1 << 20)


def values(t_count, seed):
    """bf16 bit patterns of finite values, and the same values as float32."""
    bits = np.random.default_rng(seed).integers(0, 1 << 16, size=(t_count, H, D), dtype=np.uint16)
    bits[(bits & 0x7F80) == 0x7F80] = 0x3F80
    return bits, (bits.astype(np.uint32) << 16).view(np.float32)


def test_device_memory_inputs_on_the_second_device():
    assert kvpages.device_count() == 2
    cfg = make_config()
    md, _ = kvpages.Metadata.build(cfg, [(0, 20, [1, 2]), (9, 1, [3]), (3, 6, [4])])
    kb, kf = values(27, 1)
    vb, vf = values(27, 2)
    cuda_ok(lib.cudaSetDevice(0))
    with kvpages.Cache(cfg) as cpu, kvpages.Cache(cfg, kvpages.DEVICE_CUDA, 1) as gpu:
        assert gpu.device_id == 1 and current_device() == 0
        cpu.concatenate(0, kf, vf, md)
        cpu.concatenate(1, kf, vf, md)
        want = cpu.read_layer(0)
        assert want.any()

        # bf16 device arrays on device 1, no stream: the producer is asked for the legacy stream (1).
        k, v = DeviceArray(kb, 1, 4, 16), DeviceArray(vb, 1, 4, 16)
        gpu.concatenate(0, k, v, md)
        assert k.streams == [1] and v.streams == [1]
        np.testing.assert_array_equal(gpu.read_layer(0), want)
        assert current_device() == 0

        # f32 device arrays, on a stream of device 1 given as an int and as an object with .ptr.
        cuda_ok(lib.cudaSetDevice(1))
        s = _vp()
        cuda_ok(lib.cudaStreamCreateWithFlags(ctypes.byref(s), 1))
        cuda_ok(lib.cudaSetDevice(0))
        k32, v32 = DeviceArray(kf, 1, 2, 32), DeviceArray(vf, 1, 2, 32)
        gpu.concatenate(1, k32, v32, md, stream=s.value)

        class CupyLikeStream:
            ptr = s.value

        gpu.copy_pages([1], [7], stream=CupyLikeStream())
        cpu.copy_pages([1], [7])
        cuda_ok(lib.cudaStreamSynchronize(s))
        assert k32.streams == [s.value]
        for layer in (0, 1):
            np.testing.assert_array_equal(gpu.read_layer(layer), cpu.read_layer(layer))

        # Layer copies through the host, and the export names device 1.
        data = np.random.default_rng(9).integers(0, 256, size=gpu.layer_bytes(), dtype=np.uint8)
        gpu.write_layer(1, data)
        np.testing.assert_array_equal(gpu.read_layer(1), data)
        assert gpu.export_dlpack(0).__dlpack_device__() == (2, 1)
        with pytest.raises(kvpages.Unsupported):
            gpu.numpy(0)

        # Inputs that say device 0, and host arrays, are refused; nothing changes.
        k0 = DeviceArray(kb, 1, 4, 16, label_device=0)
        with pytest.raises(kvpages.InvalidArgument, match="device"):
            gpu.concatenate(0, k0, v, md)
        with pytest.raises(kvpages.InvalidArgument, match="key"):
            gpu.concatenate(0, kf, vf, md)
        np.testing.assert_array_equal(gpu.read_layer(0), cpu.read_layer(0))
        assert current_device() == 0

        cuda_ok(lib.cudaDeviceSynchronize())
        for a in (k, v, k32, v32, k0):
            a.free()
        cuda_ok(lib.cudaSetDevice(1))
        cuda_ok(lib.cudaStreamDestroy(s))
        cuda_ok(lib.cudaSetDevice(0))
        md.close()
