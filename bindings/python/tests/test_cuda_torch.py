"""CUDA caches from Python with PyTorch tensors: what the binding writes on the GPU from torch CUDA
tensors (through DLPack, on a torch stream) equals what a CPU cache gets from the same values, and
a CUDA cache's pages export to torch without a copy.

Skipped unless torch with CUDA is importable and the loaded kvpages has a usable CUDA device (CI
has neither). Runs under pytest, or directly (``python3 test_cuda_torch.py``, as
scripts/gpu-check.sh does on a GPU machine, where pytest may be missing)."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import kvpages  # noqa: E402

try:
    import torch
except ImportError:  # CI: no torch
    torch = None

H, D, S = 8, 128, 16


def _usable():
    return torch is not None and torch.cuda.is_available() and kvpages.device_count() > 0


def _skip_unless_gpu():
    if not _usable():
        import pytest
        pytest.skip("needs torch with CUDA and a kvpages built with CUDA on a machine with a GPU")


def _config():
    return kvpages.Config.create(num_hidden_layers=2, num_kv_heads=H, max_model_length=256, head_dim=D, page_size=S,
                                 dtype=kvpages.DTYPE_BF16, budget_bytes=64 << 20)


def test_torch_cuda_tensors_write_what_the_cpu_cache_gets():
    _skip_unless_gpu()
    cfg = _config()
    # A 40-token prefill, a decode token and a 9-token chunk (the builder orders the rows).
    md, _ = kvpages.Metadata.build(cfg, [(0, 40, [1, 2, 3]), (17, 1, [4, 5]), (5, 9, [6])])
    T = 50
    g = torch.Generator().manual_seed(0)
    key = torch.randn(T, H, D, generator=g).to(torch.bfloat16)
    value = torch.randn(T, H, D, generator=g).to(torch.bfloat16)
    with kvpages.Cache(cfg) as cpu, kvpages.Cache(cfg, kvpages.DEVICE_CUDA, 0) as gpu:
        assert gpu.device_id == 0
        # bf16 on a torch stream.
        cpu.concatenate(0, key, value, md)
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            kd, vd = key.cuda(), value.cuda()
        gpu.concatenate(0, kd, vd, md, stream=s)
        s.synchronize()
        want = cpu.read_layer(0)
        assert want.any()
        np.testing.assert_array_equal(gpu.read_layer(0), want)
        # float32 from a head-major buffer seen as [T, H, D] (strided), on the default stream.
        k32 = torch.randn(H, T, D, device="cuda").transpose(0, 1)
        v32 = torch.randn(H, T, D, device="cuda").transpose(0, 1)
        gpu.concatenate(1, k32, v32, md)
        cpu.concatenate(1, k32.cpu(), v32.cpu(), md)
        torch.cuda.synchronize()
        np.testing.assert_array_equal(gpu.read_layer(1), cpu.read_layer(1))
        # The pages of the CUDA cache, seen by torch without a copy.
        pages = torch.from_dlpack(gpu.export_dlpack(0))
        assert pages.device.type == "cuda" and pages.dtype == torch.bfloat16
        got = pages.contiguous().view(torch.uint8).cpu().numpy().reshape(-1)
        np.testing.assert_array_equal(got, want)
        del pages
        # A tensor on the CPU for a CUDA cache is refused, and nothing changes.
        try:
            gpu.concatenate(0, key, value, md)
            raise AssertionError("a CPU tensor was accepted by a CUDA cache")
        except kvpages.InvalidArgument as e:
            assert "key" in str(e)
        np.testing.assert_array_equal(gpu.read_layer(0), want)
        md.close()


if __name__ == "__main__":
    if not _usable():
        print("test_cuda_torch: skipped (needs torch with CUDA and a kvpages built with CUDA on a GPU machine)")
        sys.exit(0)
    test_torch_cuda_tensors_write_what_the_cpu_cache_gets()
    print("test_cuda_torch: passed (torch %s, %s)" % (torch.__version__, torch.cuda.get_device_name(0)))
