#!/usr/bin/env python3
"""kvpages' KV write (kvp_concatenate) against the peers a user would pick, same data, same process.

Not a test: prints markdown tables; exits non-zero only when a call fails. Run through
scripts/bench-peers.sh, which builds the library, ggml and the C harness
(scripts/bench_peers_harness.c), makes the venv and sets KVPAGES_LIBRARY / KVP_PEERS_HARNESS.

One write = the K and V rows of N tokens, [N, H, D] each, into one layer's cache, at the slots a
batch gives: decode (N one-token requests, each on its own page of a shuffled pool) or, for
N >= 16, prefill (requests of up to 512 tokens). Peers, all on the same slots:
  kvpages  kvp_concatenate into a v3 paged cache (page size 16; 8x64 uses the h64 layout with K
           and V in one 128-lane row; 32x96 pads rows to 128 lanes)
  memcpy   memcpy of the same K+V input bytes into a contiguous buffer (split over the threads)
  stream   the same copy with non-temporal stores (the bandwidth limit when the data misses cache)
  ggml     two set_rows nodes (K, V) into [kv_size, H*D] caches as llama.cpp's KV cache writes,
           graph planned once, ggml_graph_compute on a reused threadpool; set_rows takes f32 or
           f16 rows, so bf16 rows run through it as f16 (a byte copy: the same bytes)
  numpy    cache[slots] = rows into [kv_size, H, D] caches (bf16 as uint16; f32 rows
           .astype(float16) first, inside the timed call: a converting fancy assignment is
           about 50x slower; bf16 rows into an fp8 cache .astype(ml_dtypes.float8_e4m3fn) first,
           ml_dtypes being what JAX casts with; ggml has no fp8 type, torch is not timed there)
  torch    cache.index_copy_(0, slots, rows) into the same memory (f32 rows .to(float16) first,
           inside the timed call, as a torch user must: index_copy_ wants equal dtypes)
The peers' caches hold plain rows (96 lanes for 32x96; kvpages writes its padding too); bytes
counted = K+V input bytes.

Timing: kvpages, memcpy, stream and ggml are timed in C loops in the harness; numpy and torch in
Python loops (interpreter overhead included, as Python users see them). Each timing runs a peer
back to back enough times to take about 0.5 ms (the count from the fastest of three single calls
after a warm-up call); the peers are interleaved (rotated each
repetition) and the best of --reps repetitions is kept. Back to back, a destination that fits the
L3 is still there at the next call (hot destinations). --cold times what a model step meets
instead, where the other layers' writes and attention run between two writes of one layer: before
each timed call the harness reads an eviction buffer (KVP_BENCH_EVICT_MIB, default 64 MiB) and
then the K and V inputs (as the layer's projection leaves them), and times one call; best of
--reps. Threads: KVP_NUM_THREADS for kvpages (read
once per process, so the script re-runs itself per thread count), ggml n_threads, OpenMP threads
for the copies, torch.set_num_threads; numpy is single-threaded.

Bytes first: before timing, every KV-writing peer writes once over sentinel rows and its rows at
the slots are compared with kvpages' (read back through kvp_cache_get_view KEYS / VALUES). The
f32 inputs (magnitudes 2^-8 .. 2^3) hold exact f16 ties (every 16th value) and values in f16's
subnormal range (every 1024th), so agreement means the same round-to-nearest-even. A peer that differs is marked '≠' and its first differences are printed.

Usage: bench_peers.py [--quick] [--cold] [--shape 8x128,1x128] [--threads 1,2] [--reps 9] [--tokens 1,1024]
"""
import argparse
import ctypes
import datetime
import os
import platform
import subprocess
import sys
import time

import numpy as np

F32, F16, BF16, E4M3 = 1, 2, 3, 4
KVPAGES, MEMCPY, STREAM, GGML = 0, 1, 2, 3
SHAPES = {"8x128": "llama3-8b", "8x64": "h64", "1x128": "MQA", "32x96": "padded to 128"}
DTYPES = [("bf16->bf16", BF16, BF16), ("f16->f16", F16, F16), ("f32->f16", F32, F16), ("bf16->fp8", BF16, E4M3)]
TOKENS = [1, 4, 16, 64, 256, 1024, 4096, 16384]
QUICK = {"shapes": ["8x128", "1x128"], "tokens": [1, 64, 1024], "threads": [1], "reps": 3}
TARGET_S = 5e-4  # back-to-back time per sample
PEERS = ["kvpages", "memcpy", "stream", "ggml", "numpy", "torch"]


class Bufs(ctypes.Structure):
    _fields_ = [("k_in", ctypes.c_void_p), ("v_in", ctypes.c_void_p), ("slots", ctypes.c_void_p),
                ("peer_k", ctypes.c_void_p), ("peer_v", ctypes.c_void_p), ("kv_size", ctypes.c_int64),
                ("num_requests", ctypes.c_int64)]


def load_harness():
    lib = ctypes.CDLL(os.environ["KVP_PEERS_HARNESS"])
    lib.kvpb_case_new.restype = ctypes.c_void_p
    lib.kvpb_case_new.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                                  ctypes.c_int, ctypes.c_int]
    lib.kvpb_case_free.argtypes = [ctypes.c_void_p]
    lib.kvpb_case_bufs.restype = ctypes.POINTER(Bufs)
    lib.kvpb_case_bufs.argtypes = [ctypes.c_void_p]
    lib.kvpb_kvpages_rows.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.kvpb_time.restype = ctypes.c_double
    lib.kvpb_time.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.kvpb_time_cold.restype = ctypes.c_double
    lib.kvpb_time_cold.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.kvpb_evict.argtypes = [ctypes.c_void_p]
    for name in ("kvpb_error", "kvpb_ggml_version", "kvp_build_info"):
        getattr(lib, name).restype = ctypes.c_char_p
        getattr(lib, name).argtypes = []
    return lib


def load_torch():
    """(torch module or None, reason text)."""
    if os.environ.get("KVP_BENCH_NO_TORCH"):
        return None, "KVP_BENCH_NO_TORCH is set"
    try:
        import torch  # noqa: PLC0415
    except Exception as e:  # ImportError, or OSError from a missing shared library
        return None, "cannot import torch: %s: %s" % (type(e).__name__, e)
    return torch, "torch %s" % torch.__version__


def ml_dtypes_version():
    try:
        import ml_dtypes  # noqa: PLC0415
    except ImportError:
        return "(not installed)"
    return ml_dtypes.__version__


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def wrap(addr, ctype, shape):
    """A numpy array over C memory (no copy, no ownership)."""
    return np.ctypeslib.as_array((ctype * int(np.prod(shape))).from_address(addr)).reshape(shape)


class Case:
    """One write (shape, dtype, tokens, pattern) set up in the harness, with numpy / torch views of
    its input rows and peer caches."""

    def __init__(self, lib, torch, h, d, dt, n, prefill, threads, cold):
        self.lib, self.torch, self.n, self.prefill, self.cold = lib, torch, n, prefill, cold
        self.name, din, dcache = dt
        self.ptr = lib.kvpb_case_new(h, d, din, dcache, n, int(prefill), threads)
        if not self.ptr:
            raise RuntimeError("kvpb_case_new: " + lib.kvpb_error().decode())
        b = lib.kvpb_case_bufs(self.ptr).contents
        self.requests = b.num_requests
        self.slots = wrap(b.slots, ctypes.c_int64, (n,))
        rows = (b.kv_size, h, d)
        self.fp8 = dcache == E4M3
        self.cache_bits = [wrap(p, ctypes.c_uint8 if self.fp8 else ctypes.c_uint16, rows) for p in (b.peer_k, b.peer_v)]
        in_type = ctypes.c_float if din == F32 else ctypes.c_uint16
        self.inputs = [wrap(p, in_type, (n, h, d)) for p in (b.k_in, b.v_in)]
        self.in_bytes = 2 * self.inputs[0].nbytes
        # numpy: f16 caches as float16 (so f32 rows are converted on assignment), bf16 as raw bits;
        # fp8: bf16 rows viewed as ml_dtypes.bfloat16, cast to float8_e4m3fn, stored as bits.
        as_np = (lambda a: a.view(np.float16)) if dcache == F16 else (lambda a: a)
        self.np_caches = [as_np(c) for c in self.cache_bits]
        self.np_inputs = [as_np(x) if din == F16 else x for x in self.inputs]
        self.np_dtype = np.float16 if din == F32 else None
        if self.fp8:
            import ml_dtypes  # noqa: PLC0415
            self.np_inputs = [x.view(ml_dtypes.bfloat16) for x in self.inputs]
            self.np_caches = [c.view(ml_dtypes.float8_e4m3fn) for c in self.cache_bits]
            self.np_dtype = ml_dtypes.float8_e4m3fn
        if torch is not None and not self.fp8:
            tdt = torch.float16 if dcache == F16 else torch.bfloat16
            self.t_caches = [torch.from_numpy(c.view(np.int16)).view(tdt) for c in self.cache_bits]
            self.t_inputs = [torch.from_numpy(x) if din == F32 else torch.from_numpy(x.view(np.int16)).view(tdt)
                             for x in self.inputs]
            self.t_slots = torch.from_numpy(self.slots)
            self.t_dtype = tdt if din == F32 else None

    def free(self):
        self.lib.kvpb_case_free(self.ptr)
        self.ptr = None

    def numpy_write(self):
        (k, v), (kx, vx) = self.np_caches, self.np_inputs
        if self.np_dtype is not None:  # far faster than a converting fancy assignment
            kx, vx = kx.astype(self.np_dtype), vx.astype(self.np_dtype)
        k[self.slots] = kx
        v[self.slots] = vx

    def torch_write(self):
        (k, v), (kx, vx) = self.t_caches, self.t_inputs
        if self.t_dtype is not None:
            kx, vx = kx.to(self.t_dtype), vx.to(self.t_dtype)
        k.index_copy_(0, self.t_slots, kx)
        v.index_copy_(0, self.t_slots, vx)

    def c_timer(self, peer):
        def run(inner):
            t = self.lib.kvpb_time_cold(self.ptr, peer) if self.cold else self.lib.kvpb_time(self.ptr, peer, inner)
            if t < 0:
                raise RuntimeError(self.lib.kvpb_error().decode())
            return t
        return run

    def py_timer(self, fn):
        def run(inner):
            if self.cold and self.lib.kvpb_evict(self.ptr) != 0:
                raise RuntimeError(self.lib.kvpb_error().decode())
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            return (time.perf_counter() - t0) / inner
        return run

    def timers(self):
        t = {"kvpages": self.c_timer(KVPAGES), "memcpy": self.c_timer(MEMCPY), "stream": self.c_timer(STREAM),
             "numpy": self.py_timer(self.numpy_write)}
        if not self.fp8:
            t["ggml"] = self.c_timer(GGML)
            if self.torch is not None:
                t["torch"] = self.py_timer(self.torch_write)
        return t

    def check(self):
        """{peer: None if its rows equal kvpages', else a text with the first differences}."""
        self.c_timer(KVPAGES)(1)
        want = [np.empty_like(self.cache_bits[0][:self.n]) for _ in range(2)]
        if self.lib.kvpb_kvpages_rows(self.ptr, want[0].ctypes.data, want[1].ctypes.data) != 0:
            raise RuntimeError(self.lib.kvpb_error().decode())
        writers = {"numpy": self.numpy_write}
        if not self.fp8:
            writers["ggml"] = lambda: self.c_timer(GGML)(1)
            if self.torch is not None:
                writers["torch"] = self.torch_write
        out = {}
        for peer, write in writers.items():
            for c in self.cache_bits:
                c[self.slots] = 0xFF if self.fp8 else 0x7E01  # a NaN no peer writes (finite inputs)
            write()
            out[peer] = None
            for kv, (c, w) in enumerate(zip(self.cache_bits, want)):
                got = c[self.slots]
                bad = np.argwhere(got != w)
                if len(bad):
                    first = ["row %d head %d lane %d: input %s, kvpages 0x%04x, %s 0x%04x" % (
                        i, j, l, fmt_input(self.inputs[kv][i, j, l]), w[i, j, l], peer, got[i, j, l])
                        for i, j, l in bad[:3]]
                    out[peer] = "%s %s: %d of %d values differ; %s" % (
                        peer, "KV"[kv], len(bad), got.size, "; ".join(first))
                    break
        return out


def fmt_input(x):
    return "0x%04x" % x if x.dtype == np.uint16 else "%s (%.9g)" % (float(x).hex(), x)


def best_times(timers, reps, cold):
    """Best seconds per call of each timer, interleaved: one sample of each per repetition (of one
    call when cold)."""
    inner = {}
    for name, run in timers.items():
        run(1)  # warm-up: first touch
        # Calls per sample from the fastest of three single calls: the first calls after the
        # warm-up may still be settling (caches, pages, a library's own choices), and one slow call
        # would shorten every sample of that peer to a few calls.
        inner[name] = 1 if cold else max(1, min(100000, int(TARGET_S / max(min(run(1) for _ in range(3)), 1e-9))))
    best = dict.fromkeys(timers, float("inf"))
    names = list(timers)
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            best[name] = min(best[name], timers[name](inner[name]))
    return best


def fmt_us(t):
    return "%.2f" % (t * 1e6) if t < 1e-4 else "%.0f" % (t * 1e6)


def row(case, shape, best, bad):
    kvp = best["kvpages"]
    copy = min(best["memcpy"], best["stream"])
    pattern = "prefill %d req" % case.requests if case.prefill else "decode"
    cells = [shape, case.name, pattern, str(case.n), fmt_us(kvp), "%.1f" % (case.in_bytes / kvp / 1e9),
             fmt_us(best["memcpy"]), fmt_us(best["stream"]), "%.2f" % (copy / kvp)]
    for peer in ("ggml", "numpy", "torch"):
        if peer not in best:
            cells += ["—", "—"]
            continue
        mark = " ≠" if bad.get(peer) else ""
        cells += [fmt_us(best[peer]) + mark, "%.2f" % (best[peer] / kvp)]
    return "| " + " | ".join(cells) + " |"


def child(args, threads):
    lib = load_harness()
    torch, torch_note = load_torch()
    if torch is not None:
        torch.set_num_threads(threads)
    print("\n## %d thread%s (KVP_NUM_THREADS=%d, ggml n_threads=%d, torch.set_num_threads(%d))\n"
          % (threads, "" if threads == 1 else "s", threads, threads, threads))
    if torch is None:
        print("torch columns empty: %s\n" % torch_note)
    notes = []
    for shape in args.shapes:
        h, d = (int(x) for x in shape.split("x"))
        print("### %s (%s)\n" % (shape, SHAPES.get(shape, "custom")))
        print("| shape | dtype | batch | tokens | kvpages µs | GB/s | memcpy µs | stream µs | × copy "
              "| ggml µs | × ggml | numpy µs | × numpy | torch µs | × torch |")
        print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for dt in DTYPES:
            for n in args.tokens:
                for prefill in ([False, True] if n >= 16 else [False]):
                    case = Case(lib, torch, h, d, dt, n, prefill, threads, args.cold)
                    try:
                        bad = case.check()
                        best = best_times(case.timers(), args.reps, args.cold)
                    finally:
                        case.free()
                    notes += [m for m in bad.values() if m]
                    print(row(case, shape, best, bad), flush=True)
        print()
    for m in notes:
        print("- ≠ %s" % m)


def header(lib, torch_note, args):
    commit = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "--short",
                             "HEAD"], capture_output=True, text=True, check=False).stdout.strip() or "unknown"
    print("# kvp_concatenate against its peers\n")
    print("- date: %s" % datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    print("- machine: %s, %d logical CPUs" % (cpu_model(), os.cpu_count() or 1))
    print("- kvpages: %s; repository at %s" % (lib.kvp_build_info().decode(), commit))
    print("- ggml: %s, from the %s source distribution (GGML_NATIVE=ON, CPU backend)"
          % (lib.kvpb_ggml_version().decode(), os.environ.get("KVP_PEERS_GGML_FROM", "llama-cpp-python")))
    print("- numpy %s; %s" % (np.__version__, torch_note))
    print("- best of %d, peers interleaved; kvpages, memcpy, stream and ggml timed in C loops; numpy and "
          "torch timed from Python (their interpreter overhead counts, as Python users see them)" % args.reps)
    if args.cold:
        print("- cold destinations: before each timed call (one call per sample) %s MiB are read to evict the "
              "caches, then the K and V inputs are read back in, as in a model step where other layers and "
              "attention run between two writes of a layer" % evict_mib())
    else:
        print("- hot destinations: each sample calls a peer back to back for about 0.5 ms, so a destination "
              "that fits the L3 stays there between calls (--cold: evicted before each call)")
    print("- GB/s = K+V input bytes / kvpages time; × copy = min(memcpy, stream) time / kvpages time; "
          "× peer = peer time / kvpages time (> 1: kvpages is faster)")
    print("- every peer's rows were compared with kvpages' before timing; ≠ marks a difference "
          "(listed under the table); bf16 rows run through ggml set_rows as f16 (a byte copy)")
    print("- bf16->fp8: an fp8 e4m3fn cache; numpy casts with ml_dtypes %s (.astype(float8_e4m3fn)); "
          "ggml has no fp8 type and torch is not timed there" % ml_dtypes_version())
    print("- ggml, numpy and torch write plain rows into separate K and V caches [kv_size, H*D] (llama.cpp's "
          "layout) at kvpages' slots; memcpy and stream copy the K+V input bytes contiguously (glibc memcpy; "
          "the streaming copy uses the widest non-temporal store of -march=native)")
    print("- 32x96: kvpages stores 128-lane rows (padding written too), the peers 96-lane rows; "
          "8x64: kvpages' h64 layout, [K|V] in one 128-lane row")


def evict_mib() -> int:
    """KVP_BENCH_EVICT_MIB (default 64), checked: the MiB that --cold reads before each timed call
    (also used by bench_serialize_peers.py)."""
    mib = os.environ.get("KVP_BENCH_EVICT_MIB", "64")
    if not mib.isdigit() or int(mib) == 0:
        raise SystemExit(f"KVP_BENCH_EVICT_MIB={mib!r}: a positive whole number of MiB")
    return int(mib)


def parse_list(s, conv=str):
    return [conv(x) for x in s.split(",") if x]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help="few shapes and token counts, 1 thread (a smoke run)")
    ap.add_argument("--shape", help="comma list of HxD (default 8x128,8x64,1x128,32x96)")
    ap.add_argument("--threads", help="comma list (default 1,2)")
    ap.add_argument("--tokens", help="comma list (default 1,4,...,16384)")
    ap.add_argument("--reps", type=int, help="repetitions, best kept (default 9; --quick 3)")
    ap.add_argument("--cold", action="store_true",
                    help="evict the caches before each timed call (one call per sample), as in a model step")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.shapes = parse_list(args.shape) if args.shape else (QUICK["shapes"] if args.quick else list(SHAPES))
    args.tokens = parse_list(args.tokens, int) if args.tokens else (QUICK["tokens"] if args.quick else TOKENS)
    args.reps = args.reps or (QUICK["reps"] if args.quick else 9)
    if args.child:
        child(args, args.child)
        return 0
    threads = parse_list(args.threads, int) if args.threads else (QUICK["threads"] if args.quick else [1, 2])
    if args.cold:
        evict_mib()  # a bad KVP_BENCH_EVICT_MIB stops here, not in the harness (which would read 64)
    header(load_harness(), load_torch()[1], args)
    sys.stdout.flush()
    for n in threads:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", str(n), "--shape", ",".join(args.shapes),
               "--tokens", ",".join(map(str, args.tokens)), "--reps", str(args.reps)] + (["--cold"] if args.cold else [])
        env = dict(os.environ, KVP_NUM_THREADS=str(n), OMP_NUM_THREADS=str(n))
        if subprocess.run(cmd, env=env, check=False).returncode != 0:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
