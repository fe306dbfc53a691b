#!/usr/bin/env python3
"""kvpages attention against PyTorch's CPU scaled_dot_product_attention, same data, same process.

Not a test: prints markdown tables and exits non-zero only when a call fails or the outputs
disagree. Run through scripts/bench-attention-peers.sh, which builds the library, makes a venv
with numpy and torch and sets PYTHONPATH / KVPAGES_LIBRARY.

Prefill (the default): llama3-8b shape (8 KV heads, 32 query heads, head dim 128), one request,
a fresh prompt of P tokens (512 and 2048), bf16 cache (v3, page size 16, the request's pages
shuffled in a pool of four prompts), float32 queries / keys / values / output, causal, scale
1/sqrt(128). kvpages: one Cache.attention call that writes the whole prompt into the pages and
attends (repeated calls rewrite the same slots with the same values). torch: the same keys and
values, gathered back from the cache's pages (so both sides compute on the values as stored in
bf16: the float32 inputs are rounded to bf16 first, which the cache then stores exactly), as dense
[1, Hkv, P, D] tensors, and scaled_dot_product_attention(is_causal=True, scale=...) with GQA
(enable_gqa=True where torch has it and it is the faster path here, else K/V repeated per
query head once, untimed), in float32 and in bfloat16 (torch's fast path; its inputs converted
once, untimed). The path used is printed under each table.

--decode adds decode rows: B requests with a context of C tokens each, one query token per
request; kvpages reads its pages (keys/values None, the context written before with
Cache.concatenate); torch gets dense [B, Hkv, C, D] keys and values and queries [B, Hq, 1, D]
(is_causal=False: the one query sees the whole context). The kvpages side of decode includes the
Python binding's per-call overhead (ctypes, option and tensor descriptors: about 10 us per call on
a 2-vCPU Xeon VM, against about 20 us of the library's own fixed cost for a tiny call).

Timing: best of N, the kvpages call and the torch calls interleaved in each repetition, all on the
same thread count: KVP_NUM_THREADS for kvpages (read once per process, so the script re-runs
itself per thread count, like bench_attention) and torch.set_num_threads for torch.
ratio = torch time / kvpages time (> 1: kvpages is faster). Before timing, the outputs are
compared: kvpages against torch float32 (max abs diff, must be < 2e-3) and against a float64
numpy evaluation of three query tokens (must be < 2e-3); torch bfloat16 is reported, not judged.

Without torch (not installed, or it fails to import) the kvpages side still runs and the torch
columns say why they are empty.

Usage: bench_attention_peers.py [--quick] [--prompts 512,2048] [--decode] [--contexts 1024,4096]
                                [--batches 1,8] [--reps N] [--threads N]
"""
import argparse
import ctypes
import datetime
import math
import os
import platform
import subprocess
import sys
import time

import numpy as np

import kvpages as kvp

HKV, HQ, HD, PAGE = 8, 32, 128, 16
SCALE = 1.0 / math.sqrt(HD)
TOL = 2e-3


def round_bf16(x):
    """float32 -> the nearest bfloat16 value (round to nearest even), still as float32."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    u = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return u.view(np.float32)


def bf16_bits_to_f32(b):
    return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def build_info():
    f = kvp.library.kvp_build_info
    f.restype = ctypes.c_char_p
    f.argtypes = []
    return f().decode()


def load_torch():
    """(torch module or None, reason text)."""
    if os.environ.get("KVP_BENCH_NO_TORCH"):
        return None, "KVP_BENCH_NO_TORCH is set"
    try:
        import torch  # noqa: PLC0415
        import torch.nn.functional  # noqa: F401,PLC0415
    except Exception as e:  # ImportError, or OSError from a missing shared library
        return None, "cannot import torch: %s: %s" % (type(e).__name__, e)
    if not hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        return None, "torch %s has no scaled_dot_product_attention (needs >= 2.1)" % torch.__version__
    try:
        x = torch.zeros(1, 1, 2, 8)
        torch.nn.functional.scaled_dot_product_attention(x, x, x, is_causal=True, scale=0.5)
    except TypeError:
        return None, "torch %s: scaled_dot_product_attention takes no scale= (needs >= 2.1)" % torch.__version__
    return torch, "torch %s" % torch.__version__


class Bench:
    def __init__(self, args, torch):
        self.args = args
        self.torch = torch
        self.rng = np.random.default_rng(20261206)
        self.gqa_note = {}

    # ---- kvpages cache ----------------------------------------------------------------------
    def cache_for(self, max_len, nreq):
        """A one-layer bf16 cache with room for nreq requests of max_len tokens, and each request's
        pages (a shuffled slice of the pool)."""
        ppr = -(-max_len // PAGE)
        probe = kvp.Config.create(num_hidden_layers=1, num_kv_heads=HKV, max_model_length=max_len, head_dim=HD,
                                  page_size=PAGE, dtype=kvp.Dtype.BF16, layout=kvp.Layout.V3,
                                  budget_bytes=1 << 30, no_safety_margin=True)
        page_bytes = probe.layout()["page_bytes_per_layer"]
        cfg = kvp.Config.create(num_hidden_layers=1, num_kv_heads=HKV, max_model_length=max_len, head_dim=HD,
                                page_size=PAGE, dtype=kvp.Dtype.BF16, layout=kvp.Layout.V3,
                                budget_bytes=page_bytes * (nreq * ppr + 1), no_safety_margin=True)
        cache = kvp.Cache(cfg)
        perm = self.rng.permutation(np.arange(1, cfg.num_pages, dtype=np.int32))
        tables = [perm[i * ppr:(i + 1) * ppr].tolist() for i in range(nreq)]
        return cfg, cache, tables

    @staticmethod
    def gather(cache, table, ntok):
        """The keys and values of one request as stored (bf16 -> float32), [ntok, Hkv, D] each."""
        idx = np.asarray(table, dtype=np.int64)
        out = []
        for kind in (kvp.View.KEYS, kvp.View.VALUES):
            view = cache.numpy(0, kind)  # [pages, S, H, D] bf16 bits (uint16)
            x = np.ascontiguousarray(view[idx]).reshape(-1, HKV, HD)[:ntok]
            out.append(bf16_bits_to_f32(x))
            del view
        return out

    # ---- torch ------------------------------------------------------------------------------
    def sdpa_fn(self, q, k, v, causal, key):
        """The faster of enable_gqa=True and K/V repeated per query head (repeat_interleave, done once
        here and not timed, which favours torch) for these tensors, best of two calls each."""
        torch, F = self.torch, self.torch.nn.functional
        rep = HQ // HKV

        def gqa():
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=SCALE, enable_gqa=True)

        kr, vr = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)

        def repeated():
            return F.scaled_dot_product_attention(q, kr, vr, is_causal=causal, scale=SCALE)

        def best_of(fn, n=2):
            t = math.inf
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                t = min(t, time.perf_counter() - t0)
            return t

        best, name = repeated, "K/V repeated per query head"
        try:
            with torch.inference_mode():
                gqa()  # warm-up, and a TypeError where enable_gqa does not exist
                repeated()
                if best_of(gqa) <= best_of(repeated):
                    best, name = gqa, "enable_gqa=True"
        except (TypeError, RuntimeError) as e:
            name += " (enable_gqa unavailable: %s)" % str(e).splitlines()[0][:80]
        self.gqa_note[key] = name
        return best

    # ---- one comparison ---------------------------------------------------------------------
    def compare(self, label, kvp_call, kvp_out, q_dense, k_dense, v_dense, causal, flops, ref_rows):
        """Checks, then times kvp_call and torch f32 / bf16 interleaved. kvp_out(): the kvpages
        output as [B, Hq, T, D] float32 (after kvp_call). ref_rows: (b, t) pairs to check against
        a float64 evaluation. Returns the table row."""
        torch = self.torch
        kvp_call()
        o = kvp_out()
        if not np.all(np.isfinite(o)):
            raise SystemExit("%s: kvpages output is not finite" % label)
        err_ref = 0.0
        for b, t in ref_rows:
            ref = ref_attention(q_dense[b, :, t], k_dense[b], v_dense[b], t if causal else k_dense.shape[2] - 1)
            err_ref = max(err_ref, float(np.max(np.abs(o[b, :, t].astype(np.float64) - ref))))
        if not err_ref < TOL:
            raise SystemExit("%s: kvpages differs from the float64 evaluation by %g" % (label, err_ref))
        row = {"kvp": math.inf, "t32": math.inf, "t16": math.inf, "err32": None, "err16": None, "ref": err_ref}
        if torch is not None:
            with torch.inference_mode():
                q32, k32, v32 = (torch.from_numpy(np.ascontiguousarray(x)) for x in (q_dense, k_dense, v_dense))
                q16, k16, v16 = (x.to(torch.bfloat16) for x in (q32, k32, v32))
                f32 = self.sdpa_fn(q32, k32, v32, causal, (label, "f32"))
                f16 = self.sdpa_fn(q16, k16, v16, causal, (label, "bf16"))
                row["err32"] = float((f32().float() - torch.from_numpy(o)).abs().max())
                row["err16"] = float((f16().float() - torch.from_numpy(o)).abs().max())
            if not row["err32"] < TOL:
                raise SystemExit("%s: kvpages and torch float32 differ by %g" % (label, row["err32"]))
        for _ in range(self.args.reps):
            t0 = time.perf_counter()
            kvp_call()
            row["kvp"] = min(row["kvp"], time.perf_counter() - t0)
            if torch is not None:
                with torch.inference_mode():
                    t0 = time.perf_counter()
                    f32()
                    row["t32"] = min(row["t32"], time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    f16()
                    row["t16"] = min(row["t16"], time.perf_counter() - t0)
        row["flops"] = flops
        return row

    def prefill(self, prompt):
        cfg, cache, tables = self.cache_for(prompt, 4)
        md, _ = kvp.Metadata.build(cfg, [(0, prompt, tables[0])])
        q = self.rng.standard_normal((prompt, HQ, HD), dtype=np.float32)
        k = round_bf16(self.rng.standard_normal((prompt, HKV, HD), dtype=np.float32))
        v = round_bf16(self.rng.standard_normal((prompt, HKV, HD), dtype=np.float32))
        out = np.empty((prompt, HQ, HD), dtype=np.float32)

        def call():
            cache.attention(0, q, k, v, md, out=out, softmax_scale=SCALE)

        call()  # writes the prompt: gather what the cache stores
        kg, vg = self.gather(cache, tables[0], prompt)
        if not (np.array_equal(kg, k) and np.array_equal(vg, v)):
            raise SystemExit("prefill %d: the keys/values gathered from the pages differ from the input" % prompt)
        qd = q.transpose(1, 0, 2)[None]  # [1, Hq, P, D]
        kd, vd = kg.transpose(1, 0, 2)[None], vg.transpose(1, 0, 2)[None]
        flops = 4.0 * HQ * HD * prompt * (prompt + 1) / 2
        rows = [(0, 0), (0, prompt // 2), (0, prompt - 1)]
        r = self.compare("prefill %d" % prompt, call, lambda: out.transpose(1, 0, 2)[None], qd, kd, vd, True, flops,
                         rows)
        md.close()
        cache.close()
        return r

    def decode(self, batch, ctx):
        cfg, cache, tables = self.cache_for(ctx, batch)
        k = round_bf16(self.rng.standard_normal((batch, ctx, HKV, HD), dtype=np.float32))
        v = round_bf16(self.rng.standard_normal((batch, ctx, HKV, HD), dtype=np.float32))
        for b in range(batch):  # the context, one request per concatenate call
            mdf, _ = kvp.Metadata.build(cfg, [(0, ctx, tables[b])])
            cache.concatenate(0, k[b], v[b], mdf)
            mdf.close()
        md, order = kvp.Metadata.build(cfg, [(ctx - 1, 1, tables[b]) for b in range(batch)])
        q = self.rng.standard_normal((batch, HQ, HD), dtype=np.float32)
        out = np.empty((batch, HQ, HD), dtype=np.float32)

        def call():
            cache.attention(0, q, None, None, md, out=out, softmax_scale=SCALE)

        kd = np.empty((batch, HKV, ctx, HD), dtype=np.float32)
        vd = np.empty_like(kd)
        for row, b in enumerate(order):
            kg, vg = self.gather(cache, tables[b], ctx)
            kd[row], vd[row] = kg.transpose(1, 0, 2), vg.transpose(1, 0, 2)
        qd = q[:, :, None, :]  # [B, Hq, 1, D]
        flops = 4.0 * HQ * HD * batch * ctx
        rows = [(0, 0), (batch - 1, 0)]
        r = self.compare("decode %dx%d" % (batch, ctx), call, lambda: out[:, :, None, :], qd, kd, vd, False,
                         flops, rows)
        md.close()
        cache.close()
        return r


def ref_attention(q, k, v, last):
    """float64 attention of one token's query heads q [Hq, D] over keys/values [Hkv, T, D],
    positions 0..last. Returns [Hq, D]."""
    rep = HQ // HKV
    kk = np.repeat(k[:, : last + 1].astype(np.float64), rep, axis=0)
    vv = np.repeat(v[:, : last + 1].astype(np.float64), rep, axis=0)
    s = np.einsum("hd,htd->ht", q.astype(np.float64), kk) * SCALE
    s -= s.max(axis=1, keepdims=True)
    w = np.exp(s)
    return np.einsum("ht,htd->hd", w, vv) / w.sum(axis=1)[:, None]


def fmt_us(t):
    return "n/a" if not math.isfinite(t) else "%.1f" % (t * 1e6)


def child(args):
    threads = args.child
    torch, why = load_torch()
    if torch is not None:
        torch.set_num_threads(threads)
    bench = Bench(args, torch)
    tname = "torch %s" % torch.__version__ if torch is not None else "torch: n/a (%s)" % why
    print("\n### %d thread%s (KVP_NUM_THREADS=%d%s)\n" % (threads, "" if threads == 1 else "s", threads,
          ", torch.set_num_threads(%d): %s" % (threads, tname) if torch is not None else "; " + tname))
    print("| case | shape | thr | reps | kvpages us | GFLOP/s | torch f32 us | GFLOP/s | ratio f32 | torch bf16 us "
          "| GFLOP/s | ratio bf16 | max diff f32 | max diff bf16 | max diff f64 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    sys.stdout.flush()
    cases = [("prefill", "prompt %d (causal)" % p, lambda p=p: bench.prefill(p)) for p in args.prompts]
    if args.decode:
        for c in args.contexts:
            for b in args.batches:
                cases.append(("decode", "%d x context %d" % (b, c), lambda b=b, c=c: bench.decode(b, c)))
    for name, shape, fn in cases:
        r = fn()
        gf = lambda t: "n/a" if not math.isfinite(t) else "%.1f" % (r["flops"] / t / 1e9)  # noqa: E731
        ratio = lambda t: "n/a" if not math.isfinite(t) else "%.2f" % (t / r["kvp"])  # noqa: E731
        diff = lambda e: "n/a" if e is None else "%.1e" % e  # noqa: E731
        print("| %s | %s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            name, shape, threads, args.reps, fmt_us(r["kvp"]), gf(r["kvp"]), fmt_us(r["t32"]), gf(r["t32"]),
            ratio(r["t32"]), fmt_us(r["t16"]), gf(r["t16"]), ratio(r["t16"]), diff(r["err32"]), diff(r["err16"]),
            diff(r["ref"])))
        sys.stdout.flush()
    if bench.gqa_note:
        print()
        paths = sorted(set("%s %s: %s" % (k[0], k[1], v) for k, v in bench.gqa_note.items()))
        print("- torch GQA path (the faster of the two, per case): " + "; ".join(paths))
    sys.stdout.flush()


def parse_list(s):
    try:
        v = [int(x) for x in s.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError("expected a comma-separated list of integers: %r" % s) from None
    if not v or min(v) <= 0:
        raise argparse.ArgumentTypeError("expected positive integers: %r" % s)
    return v


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes (prompt 128; decode 1x256)")
    ap.add_argument("--prompts", type=parse_list, default=None, help="prefill prompt lengths (default 512,2048)")
    ap.add_argument("--decode", action="store_true", help="add decode rows")
    ap.add_argument("--contexts", type=parse_list, default=None, help="decode contexts (default 1024,4096)")
    ap.add_argument("--batches", type=parse_list, default=None, help="decode batches (default 1,8)")
    ap.add_argument("--reps", type=int, default=None, help="best of N (default 5, --quick 3)")
    ap.add_argument("--threads", type=int, default=0, help="only this thread count (default: 1 and all CPUs)")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.prompts is None:
        args.prompts = [128] if args.quick else [512, 2048]
    if args.contexts is None:
        args.contexts = [256] if args.quick else [1024, 4096]
    if args.batches is None:
        args.batches = [1] if args.quick else [1, 8]
    if args.reps is None:
        args.reps = 3 if args.quick else 5
    args.reps = max(1, args.reps)
    if args.child:
        child(args)
        return 0

    ncpu = os.cpu_count() or 1
    counts = [args.threads] if args.threads > 0 else sorted({1, ncpu})
    torch, why = load_torch()
    print("# kvp_attention vs torch scaled_dot_product_attention (CPU)\n")
    print("- date: %s" % datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    print("- machine: %s, %d logical CPUs" % (cpu_model(), ncpu))
    print("- kvpages: %s (%s)" % (build_info(), os.environ.get("KVPAGES_LIBRARY", "found by the loader")))
    print("- python %s, numpy %s, %s" % (platform.python_version(), np.__version__,
                                         why if torch is None else "torch %s (%s)" % (
                                             torch.__version__, "CUDA build, run on the CPU"
                                             if torch.version.cuda else "CPU build")))
    if torch is not None:
        cfg = torch.__config__.parallel_info().splitlines()
        par = [line.strip() for line in cfg if line.strip().startswith(("ATen parallel backend", "MKL", "MKLDNN"))]
        if par:
            print("- torch parallel: " + "; ".join(par))
    print("- shape: llama3-8b (8 KV heads, 32 query heads, head dim 128); kvpages: bf16 cache, v3 layout, page size "
          "16, pages shuffled; float32 queries/keys/values/output; scale 1/sqrt(128)")
    print("- prefill: one fresh prompt, causal; the kvpages call writes the prompt into the pages and attends; torch "
          "gets the keys/values gathered back from the pages (bf16 values) as dense [1, 8, P, 128] tensors")
    if args.decode:
        print("- decode: B requests x context C, one query token each; kvpages reads the pages (no write), torch "
              "gets dense [B, 8, C, 128]; kvpages time includes the binding's per-call overhead")
    print("- GFLOP = 4 x 32 x 128 x (query, key) pairs attended (causal); best of %d, kvpages and torch "
          "interleaved; ratio = torch time / kvpages time (> 1: kvpages is faster); max diff = max |kvpages - x| "
          "over the whole output for torch f32 / bf16, over 2-3 query tokens for a float64 numpy evaluation"
          % args.reps)
    sys.stdout.flush()
    del torch
    rc = 0
    for n in counts:
        env = dict(os.environ, KVP_NUM_THREADS=str(n), OMP_NUM_THREADS=str(n))
        cmd = [sys.executable, os.path.abspath(__file__), "--child", str(n)] + [a for a in sys.argv[1:]]
        p = subprocess.run(cmd, env=env, check=False)
        if p.returncode != 0:
            print("\n(the %d-thread run failed with exit code %d)" % (n, p.returncode))
            rc = 1
            break
    return rc


if __name__ == "__main__":
    sys.exit(main())
