#!/usr/bin/env python3
"""Serialization against the peers a user would pick (issue 19), same process, interleaved, best of N.

kvpages is called through the C API (ctypes prototypes of bindings/python/kvpages/_ffi.py); each
timing covers the C call alone. Peers: numpy (a copy plus xxhash.xxh3_64 of the bytes, the
checksum kvpages also computes; tofile / fromfile / readinto) and safetensors (numpy API:
save / load, save_file / load_file). Every operation's bytes are checked first: what each one
loads equals what was saved. Files go to a temporary directory under --dir (default: this
repository's disk), so every side writes to the same filesystem; its type is printed. kvpages'
save is atomic (temporary file, fsync, rename, directory fsync): its peers there are the ones that
pay the same fsyncs ('safetensors save_file+fsync' syncs the file and the directory, 'numpy
tofile+fsync' the file); with KVP_SERIALIZE_FLAG_NO_SYNC (atomic rename, no fsync) its peers are
the plain 'safetensors save_file' and 'numpy tofile'. The file loads read files that are in the
page cache.

Cache state. By default every in-memory operation first reads its own input (the cache's pages,
the tensors, the blob it loads), so each one starts with its input as warm as the L3 allows and
none inherits a cold input from the operation before it (kvp_serialize streams its blob past the
caches, so the blob kvpages loads next would otherwise come from memory while the peers' inputs
come from the L3); a destination that a peer allocates and frees in a loop is then still in the L3
at the next call (hot). --cold instead reads an eviction buffer (KVP_BENCH_EVICT_MIB, default 64
MiB) before each timed operation, so no input or destination is in any CPU cache: a load of a blob
that came from the network or a file a while ago. Files stay in the page cache in both modes.

Each thread count (--threads, KVP_NUM_THREADS of the library, read once per process) runs in a
child process of this script. Needs numpy, xxhash and safetensors (pip install safetensors xxhash)
and the library: KVPAGES_LIBRARY=/path/to/libkvpages.so.1 (or an installed wheel).

    PYTHONPATH=bindings/python KVPAGES_LIBRARY=build/libkvpages.so.1 \\
        python scripts/bench_serialize_peers.py [--quick] [--cold] [--reps N] [--mib A,B] [--threads 1,2]
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench_peers import evict_mib  # this directory is on sys.path when the script runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS, HEADS, HEAD_DIM, PAGE = 8, 8, 128, 16  # bf16, v3: 64 KiB per page and layer


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def fs_type(path: str) -> str:
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mnt = parts[1]
                if os.path.realpath(path).startswith(mnt) and len(mnt) > len(best):
                    best, kind = mnt, parts[2]
    except OSError:
        pass
    return f"{kind} ({best or '?'})"


def require(ok: bool, what: str) -> None:
    """A byte check before timing (an exception, not an assert: python -O keeps it)."""
    if not ok:
        raise RuntimeError(f"bytes differ: {what}")


# ---- one measurement process -------------------------------------------------------------------

class Kvp:
    """The few C calls the benchmark makes, checked."""

    def __init__(self):
        sys.path.insert(0, os.path.join(REPO, "bindings", "python"))
        from kvpages import _ffi  # noqa: E402 (after the path)
        self.f = _ffi
        self.lib = _ffi.lib

    def ok(self, st: int, what: str) -> None:
        if st != 0:
            raise RuntimeError(f"{what}: {self.lib.kvp_status_name(st).decode()}: "
                               f"{self.lib.kvp_last_error_message().decode()}")

    def cache(self, mib: float):
        f, lib = self.f, self.lib
        co = f.kvp_config_options()
        self.ok(lib.kvp_config_options_init(ctypes.byref(co), ctypes.sizeof(co)), "config_options_init")
        co.num_hidden_layers, co.num_kv_heads, co.kv_head_dim_size = LAYERS, HEADS, HEAD_DIM
        co.max_model_length, co.page_size, co.flags = 8192, PAGE, 2  # KVP_CONFIG_FLAG_NO_SAFETY_MARGIN
        page_bytes = PAGE * 2 * HEADS * HEAD_DIM * 2
        pages = max(1, int(mib * (1 << 20)) // (page_bytes * LAYERS))
        co.budget_bytes = pages * page_bytes * LAYERS
        cfg = f.kvp_config()
        self.ok(lib.kvp_config_create(ctypes.byref(co), ctypes.byref(cfg)), "config_create")
        h = ctypes.c_void_p()
        self.ok(lib.kvp_cache_create(ctypes.byref(cfg), None, ctypes.byref(h)), "cache_create")
        return h

    def layers(self, h) -> list:
        """Each layer's pages as a writable uint8 numpy view."""
        out = []
        for layer in range(LAYERS):
            t = self.f.kvp_tensor()
            self.ok(self.lib.kvp_cache_get_view(h, layer, 0, ctypes.byref(t)), "get_view")  # KVP_VIEW_PAGES
            n = int(np.prod([t.shape[i] for i in range(t.ndim)])) * 2  # bf16
            out.append(np.ctypeslib.as_array(ctypes.cast(t.data, ctypes.POINTER(ctypes.c_uint8)), shape=(n,)))
        return out

    def serialized_size(self, h) -> int:
        n = ctypes.c_size_t()
        self.ok(self.lib.kvp_serialized_size(h, None, ctypes.byref(n)), "serialized_size")
        return n.value


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(mib: float, reps: int, tmpdir: str, cold: bool) -> dict:
    import safetensors.numpy as stn
    import xxhash

    k = Kvp()
    lib = k.lib
    src = k.cache(mib)
    layers = k.layers(src)
    rng = np.random.default_rng(1)
    for a in layers:
        a[:] = rng.integers(0, 256, a.size, dtype=np.uint8)
    data = np.concatenate(layers)              # the peers' tensor: the same bytes, one array
    tensors = {f"layer{i}": a.view(np.uint16).copy() for i, a in enumerate(layers)}  # bf16 bits
    n = k.serialized_size(src)
    blob = np.empty(n, dtype=np.uint8)
    written = ctypes.c_size_t()
    bptr = blob.ctypes.data_as(ctypes.c_void_p)
    kvp_file = os.path.join(tmpdir, "kvp.kvps")
    st_file = os.path.join(tmpdir, "peer.safetensors")
    np_file = os.path.join(tmpdir, "peer.npraw")
    target = k.cache(mib)
    made = ctypes.c_void_p()

    def kvp_ser():
        k.ok(lib.kvp_serialize(src, None, bptr, n, ctypes.byref(written)), "serialize")

    def kvp_new_mem():
        k.ok(lib.kvp_deserialize_new(bptr, n, None, ctypes.byref(made)), "deserialize_new")

    def kvp_save():
        k.ok(lib.kvp_serialize_to_file(src, None, kvp_file.encode()), "serialize_to_file")

    no_sync = k.f.kvp_serialize_options()
    k.ok(lib.kvp_serialize_options_init(ctypes.byref(no_sync), ctypes.sizeof(no_sync)), "serialize_options_init")
    no_sync.flags = k.f.SERIALIZE_FLAG_NO_SYNC

    def kvp_save_no_sync():
        k.ok(lib.kvp_serialize_to_file(src, ctypes.byref(no_sync), kvp_file.encode()), "serialize_to_file")

    def kvp_new_file():
        k.ok(lib.kvp_deserialize_new_from_file(kvp_file.encode(), None, ctypes.byref(made)), "new_from_file")

    def kvp_into_file():
        k.ok(lib.kvp_deserialize_into_from_file(target, kvp_file.encode(), None, 0), "into_from_file")

    copy_dst = np.empty_like(data)
    into_dst = np.empty_like(data)
    peer_out = {}

    def np_copy_hash():  # serialize peer: copy out plus the checksum
        np.copyto(copy_dst, data)
        peer_out["sum"] = xxhash.xxh3_64_intdigest(copy_dst)

    def np_load_hash():  # deserialize_new peer: fresh array plus the checksum
        a = np.frombuffer(copy_dst, dtype=np.uint8).copy()
        peer_out["sum2"] = xxhash.xxh3_64_intdigest(a)
        peer_out["arr"] = a

    def st_save():
        peer_out["st"] = stn.save(tensors)

    def st_load():
        peer_out["st_loaded"] = stn.load(peer_out["st"])

    def st_save_file():
        stn.save_file(tensors, st_file)

    def st_save_file_fsync():  # kvpages' durability: the file, then its directory
        stn.save_file(tensors, st_file)
        fd = os.open(st_file, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        fd = os.open(tmpdir, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    def st_load_file():
        peer_out["st_file_loaded"] = stn.load_file(st_file)

    def np_tofile():
        data.tofile(np_file)

    def np_tofile_fsync():
        with open(np_file, "wb") as f:
            data.tofile(f)
            f.flush()
            os.fsync(f.fileno())

    def np_fromfile():
        peer_out["np_file"] = np.fromfile(np_file, dtype=np.uint8)

    def np_readinto():
        with open(np_file, "rb", buffering=0) as f:
            f.readinto(memoryview(into_dst))

    def destroy_made():
        if made.value:
            k.ok(lib.kvp_cache_destroy(made), "destroy")
            made.value = None

    def same_pages(h) -> bool:
        return all(np.array_equal(a, b) for a, b in zip(k.layers(h), layers))

    # Bytes first: every operation once, its result checked.
    kvp_ser()
    require(written.value == n, "kvp_serialize wrote a different size")
    kvp_new_mem()
    require(same_pages(made), "kvp_deserialize_new")
    destroy_made()
    kvp_save_no_sync()
    with open(kvp_file, "rb") as f:
        require(f.read() == blob.tobytes(), "kvp_serialize_to_file NO_SYNC")
    kvp_save()
    with open(kvp_file, "rb") as f:
        require(f.read() == blob.tobytes(), "kvp_serialize_to_file")
    kvp_new_file()
    require(same_pages(made), "kvp_deserialize_new_from_file")
    destroy_made()
    kvp_into_file()
    require(same_pages(target), "kvp_deserialize_into_from_file")
    np_copy_hash()
    np_load_hash()
    require(np.array_equal(peer_out["arr"], data) and peer_out["sum"] == peer_out["sum2"], "numpy")
    st_save()
    st_load()
    require(all(np.array_equal(peer_out["st_loaded"][key], v) for key, v in tensors.items()), "safetensors")
    st_save_file()
    st_load_file()
    require(all(np.array_equal(peer_out["st_file_loaded"][key], v) for key, v in tensors.items()), "save_file")
    np_tofile()
    np_fromfile()
    require(np.array_equal(peer_out["np_file"], data), "numpy file")
    np_readinto()
    require(np.array_equal(into_dst, data), "numpy readinto")
    peer_out.clear()

    ops = {
        "kvp serialize (memory)": kvp_ser,
        "numpy copy + xxh3": np_copy_hash,
        "safetensors save": st_save,
        "kvp deserialize_new (memory)": kvp_new_mem,
        "numpy new copy + xxh3": np_load_hash,
        "safetensors load": st_load,
        "kvp serialize_to_file": kvp_save,
        "safetensors save_file+fsync": st_save_file_fsync,
        "kvp serialize_to_file NO_SYNC": kvp_save_no_sync,
        "safetensors save_file": st_save_file,
        "numpy tofile": np_tofile,
        "numpy tofile+fsync": np_tofile_fsync,
        "kvp deserialize_new_from_file": kvp_new_file,
        "safetensors load_file": st_load_file,
        "numpy fromfile": np_fromfile,
        "kvp deserialize_into_from_file": kvp_into_file,
        "numpy readinto (existing array)": np_readinto,
    }
    inputs = {  # what each in-memory operation reads (hot mode reads it first)
        "kvp serialize (memory)": lambda: layers,
        "numpy copy + xxh3": lambda: [data],
        "safetensors save": lambda: list(tensors.values()),
        "kvp deserialize_new (memory)": lambda: [blob],
        "numpy new copy + xxh3": lambda: [copy_dst],
        "safetensors load": lambda: [peer_out["st"]],
    }
    evict = np.ones(evict_mib() << 20, dtype=np.uint8) if cold else None
    best = {name: float("inf") for name in ops}
    for _ in range(reps):
        for name, fn in ops.items():  # interleaved: every op sees the same machine load
            if name == "safetensors load":
                st_save()
            for buf in [evict] if cold else inputs.get(name, lambda: [])():
                xxhash.xxh3_64_intdigest(buf)  # a read of every byte
            t = timed(fn)
            best[name] = min(best[name], t)
            destroy_made()
            peer_out.pop("arr", None)
            peer_out.pop("st_loaded", None)
            peer_out.pop("st_file_loaded", None)
            peer_out.pop("np_file", None)
    k.ok(lib.kvp_cache_destroy(src), "destroy")
    k.ok(lib.kvp_cache_destroy(target), "destroy")
    return {"bytes": n, "best": best}


# ---- the driver --------------------------------------------------------------------------------

ROWS = [  # (kvpages operation, its peers)
    ("kvp serialize (memory)", ["numpy copy + xxh3", "safetensors save"]),
    ("kvp deserialize_new (memory)", ["numpy new copy + xxh3", "safetensors load"]),
    ("kvp serialize_to_file", ["safetensors save_file+fsync", "numpy tofile+fsync"]),
    ("kvp serialize_to_file NO_SYNC", ["safetensors save_file", "numpy tofile"]),
    ("kvp deserialize_new_from_file", ["safetensors load_file", "numpy fromfile"]),
    ("kvp deserialize_into_from_file", ["numpy readinto (existing array)", "safetensors load_file"]),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, 3 repetitions")
    ap.add_argument("--reps", type=int, default=None, help="repetitions, best kept (default 7, --quick 3)")
    ap.add_argument("--mib", default=None, help="cache sizes in MiB, comma-separated (default 256,8; --quick 64,4)")
    ap.add_argument("--threads", default="1,2", help="KVP_NUM_THREADS values, comma-separated (default 1,2)")
    ap.add_argument("--cold", action="store_true",
                    help="evict the CPU caches before each timed operation (default: read its input first)")
    ap.add_argument("--dir", default=REPO, help="where the temporary directory goes (default: the repository)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    reps = a.reps or (3 if a.quick else 7)
    sizes = [float(x) for x in (a.mib or ("64,4" if a.quick else "256,8")).split(",")]
    cold_mib = evict_mib() if a.cold else 0  # a bad KVP_BENCH_EVICT_MIB stops here, not in a child

    if a.child:
        out = [measure(mib, reps, a.child, a.cold) for mib in sizes]
        print(json.dumps(out))
        return 0

    tmpdir = tempfile.mkdtemp(prefix="kvp-bench-ser-", dir=a.dir)
    try:
        results = {}
        for t in [int(x) for x in a.threads.split(",")]:
            env = dict(os.environ, KVP_NUM_THREADS=str(t))
            cmd = [sys.executable, os.path.abspath(__file__), "--child", tmpdir, "--reps", str(reps),
                   "--mib", ",".join(str(s) for s in sizes)] + (["--cold"] if a.cold else [])
            p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, check=True, text=True)
            results[t] = json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)

    import safetensors
    import xxhash
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"## Serialization vs peers ({date})\n")
    print(f"Machine: {cpu_model()}, {os.cpu_count()} CPUs; files on {fs_type(tmpdir)}; numpy {np.__version__}, "
          f"safetensors {safetensors.__version__}, xxhash {xxhash.VERSION}; best of {reps}, interleaved; cache "
          f"{LAYERS} layers x {HEADS} KV heads x {HEAD_DIM}, bf16, {PAGE}-token pages. Ratio = peer time / kvpages "
          f"time (> 1: kvpages faster). kvpages' file save is atomic (fsync + rename + directory fsync; NO_SYNC: "
          f"rename only) and is compared with peers that sync as much; the file loads read a file in the page "
          f"cache. " + (f"Cold: {cold_mib} MiB read before each timed operation, so no input or "
          "destination is in a CPU cache." if a.cold else "Hot: each in-memory operation reads its input "
          "first; destinations a peer frees and allocates again stay in the L3 between calls.") + "\n")
    print("| threads | MiB | kvpages operation | kvpages GB/s | peer | peer GB/s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for t, per_size in results.items():
        for mib, r in zip(sizes, per_size):
            best, gb = r["best"], r["bytes"] / 1e9
            for op, peers in ROWS:
                for peer in peers:
                    print(f"| {t} | {mib:g} | {op} | {gb / best[op]:.2f} | {peer} | {gb / best[peer]:.2f} | "
                          f"{best[peer] / best[op]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
