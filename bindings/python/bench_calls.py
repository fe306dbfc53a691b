#!/usr/bin/env python3
"""Microseconds per decode-token Cache.concatenate through the Python binding, next to the peers a
user would write instead, same process, interleaved.

Not a test. Each row is one layer's write of one decode token of one request (T = 1) into a cache
of the row's dtype (same-dtype copy), heads x 128:
  kvpages        Cache.concatenate(layer, key, value, metadata) with the row's inputs
  C floor        the same kvp_concatenate called through ctypes with prebuilt descriptors (the
                 library's own cost plus one ctypes call: what no binding can beat)
  torch          key_cache.index_copy_(0, slot, key) and the same for values, into [slots, H, D]
                 torch tensors of the same dtype (the same bytes)
  numpy          key_cache[slot] = key and the same for values, fancy assignment into [slots, H, D]
                 numpy arrays (bf16 as uint16 bits: the same bytes)
Inputs: numpy f32 / f16, numpy bf16 (ml_dtypes' bfloat16 when installed, and uint16 bits with
dtype="bf16"), torch f32 / f16 / bf16 CPU tensors (torch is optional), and a numpy f16 array and
a torch bf16 tensor behind a wrapper that only offers __dlpack__ (the general DLPack path JAX or
CuPy inputs take).
Before timing, the cache's stored key row is checked against the input's bytes.

Timing: best of --reps rounds; in each round every column runs --calls calls back to back, the
columns interleaved. ratio = peer time / kvpages time (> 1: kvpages is faster). With --attention,
one kvp_attention decode call per row (4 query heads per KV head, f32 output) is reported too.

Usage: KVPAGES_LIBRARY=build/libkvpages.so.1 python bindings/python/bench_calls.py
       [--reps 9] [--calls 3000] [--heads 8,1] [--attention]
(Python puts the script's directory first on sys.path: it measures the kvpages package beside it;
copy the script elsewhere and set PYTHONPATH to measure another checkout's binding.)
"""
import argparse
import ctypes
import datetime
import os
import platform
import time

import numpy as np

import kvpages

D, PAGE, PAGE_ID, POSITION = 128, 16, 2, 5
SLOT = PAGE_ID * PAGE + POSITION % PAGE


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_torch():
    if os.environ.get("KVP_BENCH_NO_TORCH"):
        return None
    try:
        import torch  # noqa: PLC0415
    except Exception:  # ImportError, or OSError from a missing shared library
        return None
    return torch


class DLPackOnly:
    """A producer that offers only __dlpack__ / __dlpack_device__ (the binding's general path)."""

    def __init__(self, a):
        self.a = a

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()

    def __dlpack__(self, **kw):
        return self.a.__dlpack__(**kw)


def best_us(fns, reps, calls):
    """Best-of-reps microseconds per call of each function, the functions interleaved per round."""
    best = [float("inf")] * len(fns)
    for fn in fns:  # warm up
        for _ in range(min(calls, 200)):
            fn()
    for _ in range(reps):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            best[i] = min(best[i], (time.perf_counter() - t0) / calls * 1e6)
    return best


def c_floor(cache, key_bits, value_bits, dtype, md):
    """kvp_concatenate through ctypes with descriptors built once (bits: a numpy array of the row)."""
    lib = kvpages._ffi.lib
    descs = []
    for a in (key_bits, value_bits):
        t = kvpages._ffi.kvp_tensor()
        t.data, t.dtype, t.ndim, t.device_type = a.ctypes.data, int(dtype), a.ndim, 1
        for i in range(a.ndim):
            t.shape[i], t.strides[i] = a.shape[i], a.strides[i] // a.itemsize
        descs.append(t)
    refs = [ctypes.byref(t) for t in descs]
    fn, cp, mp = lib.kvp_concatenate, cache.ptr, md.ptr

    def call():
        fn(cp, 0, refs[0], refs[1], mp, None)
    call._keep = descs
    return call


def inputs(torch, heads, rng):
    """(label, cache dtype, key, value, numpy bits of key, numpy bits of value, dtype=, torch dtype)."""
    k32 = rng.standard_normal((1, heads, D)).astype(np.float32)
    v32 = rng.standard_normal((1, heads, D)).astype(np.float32)
    kb, vb = kvpages.convert(k32, "bf16", bits=True), kvpages.convert(v32, "bf16", bits=True)
    rows = [("numpy f32", "f32", k32, v32, k32, v32, None),
            ("numpy f16", "f16", k32.astype(np.float16), v32.astype(np.float16), k32.astype(np.float16),
             v32.astype(np.float16), None)]
    if kvpages.has_ml_dtypes():
        bf = kvpages.Dtype.BF16.numpy()
        rows.append(("numpy bf16 (ml_dtypes)", "bf16", kb.view(bf), vb.view(bf), kb, vb, None))
    rows.append(('numpy bf16 bits, dtype="bf16"', "bf16", kb, vb, kb, vb, "bf16"))
    k16, v16 = rows[1][2], rows[1][3]
    if hasattr(k16, "__dlpack__"):  # numpy >= 1.22
        rows.append(("numpy f16 via __dlpack__ only", "f16", DLPackOnly(k16), DLPackOnly(v16), k16, v16, None))
    if torch is not None:
        for name, td, bits in (("f32", torch.float32, (k32, v32)),
                               ("f16", torch.float16, (k32.astype(np.float16), v32.astype(np.float16))),
                               ("bf16", torch.bfloat16, (kb, vb))):
            tk, tv = (torch.from_numpy(b.view(np.int16) if name == "bf16" else b).view(td) for b in bits)
            rows.append(("torch " + name, name, tk, tv, bits[0], bits[1], None))
        tk, tv = rows[-1][2], rows[-1][3]
        rows.append(("torch bf16 via __dlpack__ only", "bf16", DLPackOnly(tk), DLPackOnly(tv), kb, vb, None))
    return rows


def run_row(torch, heads, row, reps, calls, attention):
    label, cdt, key, value, kbits, vbits, dtype = row
    cfg = kvpages.Config.create(num_hidden_layers=1, num_kv_heads=heads, head_dim=D, max_model_length=256,
                                page_size=PAGE, dtype=cdt, budget_bytes=1 << 22)
    slots = cfg.num_pages * PAGE
    with kvpages.Cache(cfg) as cache:
        md, _ = kvpages.Metadata.build(cfg, [(POSITION, 1, [PAGE_ID])])
        cache.concatenate(0, key, value, md, dtype=dtype)
        stored = cache.numpy(0, "keys", bits=True)[PAGE_ID, POSITION % PAGE]
        if stored.tobytes() != np.ascontiguousarray(kbits).tobytes():
            raise SystemExit("%s: the cache's key row differs from the input's bytes" % label)
        del stored
        kc, vc = np.zeros((slots, heads, D), kbits.dtype), np.zeros((slots, heads, D), vbits.dtype)
        idx = np.array([SLOT])

        def kvp():
            cache.concatenate(0, key, value, md, dtype=dtype)

        def numpy_peer():
            kc[idx] = kbits
            vc[idx] = vbits

        fns = [kvp, c_floor(cache, kbits, vbits, kvpages.Dtype.parse(cdt), md), numpy_peer]
        if torch is not None:
            td = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[cdt]
            tkc, tvc = torch.zeros((slots, heads, D), dtype=td), torch.zeros((slots, heads, D), dtype=td)
            tk = torch.from_numpy(kbits.view(np.int16) if cdt == "bf16" else kbits).view(td)
            tv = torch.from_numpy(vbits.view(np.int16) if cdt == "bf16" else vbits).view(td)
            tidx = torch.tensor([SLOT])

            def torch_peer():
                tkc.index_copy_(0, tidx, tk)
                tvc.index_copy_(0, tidx, tv)
            fns.append(torch_peer)
        if attention:
            q = np.repeat(np.asarray(kbits if cdt != "bf16" else kvpages.convert(kbits, "f32", src="bf16")),
                          4, axis=1).astype(np.float32)
            out = np.empty_like(q)

            def attend():
                cache.attention(0, q, key if dtype is None else kvpages.convert(key, "f32", src=dtype),
                                value if dtype is None else kvpages.convert(value, "f32", src=dtype), md, out,
                                softmax_scale=D ** -0.5)
            fns.append(attend)
        times = best_us(fns, reps, calls)
        md.close()
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--heads", default="8,1")
    ap.add_argument("--attention", action="store_true")
    args = ap.parse_args()
    torch = load_torch()
    if torch is not None:
        torch.set_num_threads(1)
    print("# kvpages Python binding: one decode-token concatenate (1 request, 1 token)")
    print("%s; %s; Python %s; numpy %s; torch %s; kvpages %s (%s); best of %d x %d calls, interleaved" % (
        datetime.date.today().isoformat(), cpu_model(), platform.python_version(), np.__version__,
        torch.__version__ if torch is not None else "absent", kvpages.version(), kvpages.library_path,
        args.reps, args.calls))
    rng = np.random.default_rng(19)
    for heads in (int(h) for h in args.heads.split(",")):
        print("\n## %d x %d (%d bytes per key row)\n" % (heads, D, heads * D))
        head = "| input | kvpages µs | C floor µs | numpy µs | torch µs | numpy/kvp | torch/kvp |"
        if args.attention:
            head += " attention µs |"
        print(head)
        print("|" + "---|" * (head.count("|") - 1))
        for row in inputs(torch, heads, rng):
            t = run_row(torch, heads, row, args.reps, args.calls, args.attention)
            kvp, floor, npy = t[0], t[1], t[2]
            tor = t[3] if torch is not None else float("nan")
            line = "| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |" % (row[0], kvp, floor, npy, tor, npy / kvp,
                                                                          tor / kvp)
            if args.attention:
                line += " %.2f |" % t[-1]
            print(line)


if __name__ == "__main__":
    main()
