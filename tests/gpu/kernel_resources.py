#!/usr/bin/env python3
"""Static check of the CUDA kernels' resource use, for machines without a GPU.

Compiles the device code (src/backend/cuda/cuda_concat.cu) for each given architecture with
`nvcc --resource-usage`, reads what ptxas reports for every kernel, prints a summary and fails
when a kernel uses more registers or more local memory (stack frame) than allowed. Registers
decide how many 256-thread blocks fit on an SM (64 registers: at least 4 of them); local memory
means spills, which cost memory traffic in a kernel that should be limited by its own loads and
stores. Neither shows up in tests that only compare bytes.

Usage: kernel_resources.py --nvcc NVCC --arch 90 [--arch 80] --max-registers 64 --max-stack 16
                           --source FILE [--match NAME] [-- extra nvcc arguments (includes, defines)]
"""
import argparse
import re
import subprocess
import sys
import tempfile

FUNC = re.compile(r"Function properties for (\S+)")
STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
REGS = re.compile(r"Used (\d+) registers")


def demangle(names):
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
        return out.stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return list(names)


def check(nvcc, arch, source, extra, max_regs, max_stack, match):
    with tempfile.NamedTemporaryFile(suffix=".o") as obj:
        cmd = [nvcc, "-std=c++17", "--expt-relaxed-constexpr", "-O3", f"-arch=sm_{arch}", "--resource-usage",
               "-c", source, "-o", obj.name] + extra
        res = subprocess.run(cmd, capture_output=True, text=True)
    report = res.stdout + res.stderr
    if res.returncode != 0:
        print(report)
        print(f"sm_{arch}: nvcc failed ({res.returncode}): {' '.join(cmd)}")
        return False
    kernels = {}  # mangled name -> [registers, stack, spill stores, spill loads]
    current = None
    for line in report.splitlines():
        m = FUNC.search(line)
        if m:
            current = m.group(1)
            kernels.setdefault(current, [0, 0, 0, 0])
            continue
        m = STACK.search(line)
        if m and current:
            kernels[current][1:] = [int(g) for g in m.groups()]
            continue
        m = REGS.search(line)
        if m and current:
            kernels[current][0] = int(m.group(1))
            current = None
    kernels = {k: v for k, v in kernels.items() if match in k}
    if not kernels:
        print(report)
        print(f"sm_{arch}: no kernel found in the ptxas report")
        return False
    names = list(kernels)
    pretty = dict(zip(names, demangle(names)))
    regs = [v[0] for v in kernels.values()]
    spilling = [k for k, v in kernels.items() if v[1] > 0]
    print(f"sm_{arch}: {len(kernels)} kernels, {min(regs)}-{max(regs)} registers, "
          f"{len(kernels) - len(spilling)} without local memory")
    for k in sorted(spilling):
        r, st, ss, sl = kernels[k]
        print(f"  local memory: {pretty[k].replace('kvp::detail::cuda::', '')}: {r} registers, {st} bytes stack "
              f"frame, {ss} bytes spill stores, {sl} bytes spill loads")
    ok = True
    for k, (r, st, _, _) in sorted(kernels.items()):
        if r > max_regs:
            print(f"  FAIL: {pretty[k]} uses {r} registers (limit {max_regs})")
            ok = False
        if st > max_stack:
            print(f"  FAIL: {pretty[k]} has a {st}-byte stack frame (limit {max_stack})")
            ok = False
    return ok


def main():
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser()
    ap.add_argument("--nvcc", required=True)
    ap.add_argument("--arch", action="append", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--max-registers", type=int, default=64)
    ap.add_argument("--max-stack", type=int, default=16)
    ap.add_argument("--match", default="_kernel", help="check the kernels whose mangled name contains this")
    a = ap.parse_args(argv)
    ok = all([check(a.nvcc, arch, a.source, extra, a.max_registers, a.max_stack, a.match) for arch in a.arch])
    print("kernel resources: " + ("ok" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
