#!/usr/bin/env bash
# Checks the kvp tool from the outside: usage errors exit 2 with a message on stderr, library
# errors exit 1 with the library's message, `kvp plan` prints the reference numbers, and
# `kvp demo` serves its requests with correct attention and read-back in both layouts and every
# storage dtype.
set -u
kvp=${1:?usage: test_kvp_cli.sh <path to kvp>}
fails=0
pass=0

expect() {  # <expected exit> <stderr|stdout substring> <args...>
  expect_both "$1" "$2" "$2" "${@:3}"
}

expect_both() {  # <expected exit> <substring> <another substring> <args...>
  local want=$1 needle=$2 other=$3
  shift 3
  local out rc
  out=$("$kvp" "$@" 2>&1)
  rc=$?
  if [ "$rc" -ne "$want" ] || [[ "$out" != *"$needle"* ]] || [[ "$out" != *"$other"* ]]; then
    echo "FAIL: kvp $* -> exit $rc (want $want), output lacks '$needle' or '$other':"
    echo "$out" | sed 's/^/    /'
    fails=$((fails + 1))
  else
    pass=$((pass + 1))
  fi
}

expect 2 "usage: kvp"
expect 2 "unknown command 'frobnicate'" frobnicate
expect 0 "commands:" help
expect 0 "kvpages 1." version
expect 0 "usage: kvp plan" plan --help
expect 2 "are required" plan --layers 32
expect 2 "invalid value 'x' for --layers" plan --layers x --kv-heads 8 --head-dim 128 --max-len 8192
expect 2 "invalid value '-3' for --kv-heads" plan --layers 2 --kv-heads -3 --head-dim 128 --max-len 8192
expect 2 "invalid value 'int8' for --dtype" plan --layers 2 --kv-heads 8 --head-dim 128 --max-len 8192 --dtype int8
expect 2 "invalid value 'v4' for --layout" plan --layers 2 --kv-heads 8 --head-dim 128 --max-len 8192 --layout v4
expect 2 "invalid value '1.5' for --util" plan --layers 2 --kv-heads 8 --head-dim 128 --max-len 8192 --util 1.5
expect 2 "unknown option '--bogus'" plan --bogus 1
expect 2 "needs a value" plan --layers
# Library errors surface with the library's message and exit 1.
expect 1 "too small for one page" plan --layers 32 --kv-heads 8 --head-dim 128 --max-len 8192 --budget 1M
expect 1 "Number of slices should be positive" plan --layers 1 --kv-heads 16 --head-dim 128 --max-len 8192 --page-size 2048 --dtype fp32 --budget 64G
# SPEC.md §2.5 row A (reference budget) and row I with and without the reference formula.
expect 0 "3728 (3727 usable" plan --layers 32 --kv-heads 8 --head-dim 128 --max-len 8192 --budget 62545461248 --reference-budget
expect 0 "(3728, 128, 8, 2, 128)" plan --layers 32 --kv-heads 8 --head-dim 128 --max-len 8192 --budget 62545461248
expect 0 "1242 (1241 usable" plan --layers 32 --kv-heads 32 --head-dim 96 --max-len 4096 --budget 62545461248 --reference-budget
expect 0 "932 (931 usable" plan --layers 32 --kv-heads 32 --head-dim 96 --max-len 4096 --budget 62545461248
expect 0 "(14912, 128, 16, 64)" plan --layers 16 --kv-heads 8 --head-dim 64 --max-len 8192 --budget 62545461248 --layout v2 --reference-budget
# Issue 17, defect 11: budgets that are not a finite, whole number of bytes >= 1 and device ids
# out of int32 range are refused, naming the option and the value (NaN became an integer; 0.5 and
# 1e-300 became 0 and planned from host memory; cuda:4294967296 became device 0).
shape=(--layers 2 --kv-heads 2 --head-dim 64 --max-len 1024)
expect 2 "invalid value 'nan' for --budget: not a finite number" plan "${shape[@]}" --budget nan
expect 2 "invalid value 'inf' for --budget: not a finite number" plan "${shape[@]}" --budget inf
expect 2 "invalid value '-infG' for --budget: not a finite number" plan "${shape[@]}" --budget -infG
expect 2 "invalid value '0.5' for --budget: less than one byte" plan "${shape[@]}" --budget 0.5
expect 2 "invalid value '1e-300' for --budget: less than one byte" plan "${shape[@]}" --budget 1e-300
expect 2 "invalid value '0' for --budget: less than one byte" plan "${shape[@]}" --budget 0
expect 2 "invalid value '1000.5' for --budget: not a whole number of bytes" plan "${shape[@]}" --budget 1000.5
expect 2 "invalid value '1e30' for --budget: too large" plan "${shape[@]}" --budget 1e30
expect 2 "invalid value '8X' for --budget: unknown unit" plan "${shape[@]}" --budget 8X
expect 0 "explicit budget 1.50 GiB" plan "${shape[@]}" --budget 1.5G
expect 2 "invalid value 'cuda:4294967296' for --device: the device id must be an integer in [0, 2147483647]" \
  plan "${shape[@]}" --device cuda:4294967296
expect 2 "invalid value 'cuda:2147483648' for --device" plan "${shape[@]}" --device cuda:2147483648
expect 2 "invalid value 'cuda:-1' for --device" plan "${shape[@]}" --device cuda:-1
expect 2 "invalid value 'cuda:' for --device" plan "${shape[@]}" --device cuda:
# `kvp inspect` refuses what is not a regular file instead of blocking on a FIFO (under a
# timeout, so that a regression fails instead of hanging).
scratch=$(mktemp -d)
mkfifo "$scratch/fifo"
out=$(timeout 10 "$kvp" inspect "$scratch/fifo" 2>&1)
rc=$?
if [ "$rc" -ne 1 ] || [[ "$out" != *"'$scratch/fifo' is a FIFO, not a serialized cache file"* ]]; then
  echo "FAIL: kvp inspect FIFO -> exit $rc (want 1; 124 = it blocked):"
  echo "$out" | sed 's/^/    /'
  fails=$((fails + 1))
else
  pass=$((pass + 1))
fi
expect 1 "is a directory, not a serialized cache file" inspect "$scratch"
expect 1 "cannot open" inspect "$scratch/missing.kvps"
rm -rf "$scratch"
# Budget from the host's memory works without --budget.
expect 0 "from host memory" plan --layers 2 --kv-heads 2 --head-dim 64 --max-len 1024
# The demo: an inference loop over a page pool with prefix caching; it exits 1 on any attention
# output off the dense recomputation, read-back mismatch or pool invariant failure, so passing
# it checks reused prefixes against recomputation.
expect 2 "usage: kvp demo" demo --bogus
expect 2 "--layers needs an integer" demo --layers 0
expect_both 0 "hit rate 44.4%; 1 pages copied on write" "attention check passed: 1150 token rows x 2 layers" \
  demo --quiet --layers 2
# Every storage dtype once, each layout with two of them (exit 0 also means the read-back check
# passed); bf16 on v3 is the run above.
for run in "v2 fp32" "v2 fp8_e4m3fn" "v3 fp16" "v3 fp8_e5m2"; do
  set -- $run
  expect 0 "attention check passed" demo --quiet --layers 1 --layout "$1" --dtype "$2"
done

# bench: a smoke run (the numbers are not checked; they belong in docs/benchmarks.md)
expect 2 "usage: kvp bench" bench --bogus
expect 2 "--min-ms needs an integer in [1, 60000]" bench --min-ms 0
expect 0 "prefix-match the whole 128k prompt" bench --quick --min-ms 1

echo "kvp cli: $pass passed, $fails failed"
[ "$fails" -eq 0 ]
