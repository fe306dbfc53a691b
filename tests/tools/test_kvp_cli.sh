#!/usr/bin/env bash
# Checks the kvp tool from the outside: usage errors exit 2 with a message on stderr that names
# the option and lists the valid values, library errors exit 1 with the library's message,
# `--help` goes to stdout with exit 0, `--opt=value` equals `--opt value`, `kvp plan` prints the
# reference numbers (also from Hugging Face configs, and with --tp), --json prints one valid JSON
# object, save/load/inspect show a progress bar only on a terminal (or --progress always), and
# `kvp demo` serves its requests with correct attention and read-back in both layouts and every
# storage dtype (and a second run restores its prompts from the first run's disk tier), and `kvp store ls/stat/scrub` show and check a directory store that fill_store
# filled with evicted page blocks of two configs, a damaged one and a foreign one.
set -u
kvp=${1:?usage: test_kvp_cli.sh <path to kvp> <path to fill_store>}
fill_store=${2:?usage: test_kvp_cli.sh <path to kvp> <path to fill_store>}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
hf=$here/../data/hf
golden=$here/../data/v1.0/whole-v3-h64-bf16.kvps
golden_shard=$here/../data/v1.1/shard-v3-h64-bf16-tp2-dp2-r1-1.kvps
fails=0
pass=0

fail() {  # <what> <output>
  echo "FAIL: $1"
  echo "$2" | sed 's/^/    /'
  fails=$((fails + 1))
}

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

expect_stdout() {  # <expected exit> <stdout substring> <args...>: the substring on stdout, stderr empty
  local want=$1 needle=$2
  shift 2
  local out err rc
  err=$(mktemp)
  out=$("$kvp" "$@" 2>"$err")
  rc=$?
  if [ "$rc" -ne "$want" ] || [[ "$out" != *"$needle"* ]] || [ -s "$err" ]; then
    fail "kvp $* -> exit $rc (want $want), stdout lacks '$needle' or stderr not empty" "$out$(cat "$err")"
  else
    pass=$((pass + 1))
  fi
  rm -f "$err"
}

same_output() {  # <what> <filter> -- <args A...> -- <args B...>: stdouts equal after sed <filter>
  local what=$1 filter=$2 a=() b=() out_a out_b
  shift 3
  while [ "$1" != "--" ]; do a+=("$1"); shift; done
  shift
  b=("$@")
  out_a=$("$kvp" "${a[@]}" 2>&1 | sed "$filter")
  out_b=$("$kvp" "${b[@]}" 2>&1 | sed "$filter")
  if [ -z "$out_a" ] || [ "$out_a" != "$out_b" ]; then
    fail "$what: kvp ${a[*]} and kvp ${b[*]} differ" "$(diff <(echo "$out_a") <(echo "$out_b"))"
  else
    pass=$((pass + 1))
  fi
}

valid_json() {  # <what> <args...>: stdout is exactly one JSON object
  local what=$1 out
  shift
  out=$("$kvp" "$@" 2>/dev/null)
  if ! printf '%s' "$out" | python3 -c 'import json, sys; d = json.load(sys.stdin); assert isinstance(d, dict)' \
    2>/dev/null; then
    fail "$what: kvp $* does not print one JSON object" "$out"
  else
    pass=$((pass + 1))
  fi
}

json_field() {  # <python expression over d> <args...>: prints the value
  local expr=$1
  shift
  "$kvp" "$@" 2>/dev/null | python3 -c "import json, sys; d = json.load(sys.stdin); print($expr)"
}

expect_value() {  # <what> <expected> <actual>
  if [ "$2" != "$3" ]; then fail "$1: got '$3', want '$2'" ""; else pass=$((pass + 1)); fi
}

expect 2 "usage: kvp"
expect 2 "unknown command 'frobnicate'" frobnicate
expect 0 "commands:" help
expect 0 "kvpages 1." version
# --help: on stdout, exit 0, for every command.
expect_stdout 0 "commands:" --help
expect_stdout 0 "usage: kvp plan" plan --help
expect_stdout 0 "usage: kvp plan" plan -h
expect_stdout 0 "usage: kvp demo" demo --help
expect_stdout 0 "usage: kvp inspect" inspect --help
expect_stdout 0 "usage: kvp load" load --help
expect_stdout 0 "usage: kvp bench" bench --help
expect_stdout 0 "usage: kvp version" version --help
expect 2 "are required" plan --layers 32
expect 2 "invalid value 'x' for --layers" plan --layers x --kv-heads 8 --head-dim 128 --max-len 8192
expect 2 "invalid value '-3' for --kv-heads" plan --layers 2 --kv-heads -3 --head-dim 128 --max-len 8192
# Errors name the option and list the valid values.
dtypes="valid values are bf16, fp16, fp32, fp8_e4m3fn, fp8_e5m2"
expect 2 "invalid value 'int8' for --dtype: $dtypes" plan --layers 2 --kv-heads 8 --head-dim 128 --max-len 8192 --dtype int8
expect 2 "invalid value 'fp64' for --dtype: $dtypes" plan --layers 2 --kv-heads 8 --head-dim 128 --max-len 8192 --dtype fp64
expect 2 "invalid value 'v4' for --layout: valid values are v2, v3" plan --layers 2 --kv-heads 8 --head-dim 128 --max-len 8192 --layout v4
expect 2 "invalid value 'gpu' for --device: valid values are cpu, cuda:N" plan --layers 2 --kv-heads 8 --head-dim 128 --max-len 8192 --device gpu
expect 2 "invalid value 'some' for --mode: valid values are free, total" plan --layers 2 --kv-heads 8 --head-dim 128 --max-len 8192 --mode some
expect 2 "invalid value '1.5' for --util" plan --layers 2 --kv-heads 8 --head-dim 128 --max-len 8192 --util 1.5
expect 2 "unknown option '--bogus' (valid options: --layers, --kv-heads" plan --bogus 1
expect 2 "unknown option '--bogus' (valid options: --quick" bench --bogus=1
expect 2 "needs a value" plan --layers
expect 2 "option '--json' takes no value" plan --json=yes
expect 2 "invalid value 'x' for --layers" plan --layers=x --kv-heads 8 --head-dim 128 --max-len 8192
expect 2 "invalid value 'eventually' for --progress: valid values are auto, always, never" inspect --progress=eventually "$golden"
expect 2 "invalid value 'sometimes' for --progress: valid values are auto, always, never" demo --progress sometimes
expect 2 "invalid value 'x' for --pages: expected page ids and ranges" load "$golden" --save /dev/null --pages x
expect 2 "--pages selects the pages to save; it needs --save OUT" load "$golden" --pages 1
# --opt=value is --opt value.
same_output "--opt=value" "s/x//" -- plan --layers=32 --kv-heads=8 --head-dim=128 --max-len=8192 --budget=24G --dtype=fp8 \
  -- plan --layers 32 --kv-heads 8 --head-dim 128 --max-len 8192 --budget 24G --dtype fp8
# --tp N: the KV heads sharded over N devices, each with the budget: the pages of N x the budget.
plan_section='/^plan$/,$!d'
same_output "--tp 2" "$plan_section" -- plan --layers 32 --kv-heads 8 --head-dim 128 --max-len 8192 --budget 24G --tp 2 \
  -- plan --layers 32 --kv-heads 8 --head-dim 128 --max-len 8192 --budget 48G
expect 0 "KV heads sharded over 4 devices (2 per device)" plan --layers 32 --kv-heads 8 --head-dim 128 --max-len 8192 --budget 24G --tp 4
# --tp N that does not split the heads is resolved as the reference does (SPEC.md §7.3).
expect 0 "replicate: 8 storage groups of bf16 do not split over 3 devices, nor do those of fp32" \
  plan --layers 32 --kv-heads 8 --head-dim 128 --max-len 8192 --budget 24G --tp 3
expect 0 "upcast fp8_e4m3fn → bf16 because 2 storage groups do not split over 4 devices (bf16 has 4: 1 per device)" \
  plan --layers 32 --kv-heads 4 --head-dim 128 --max-len 8192 --budget 24G --dtype fp8_e4m3fn --tp 4
expect 0 "keep bf16: 8 storage groups split over 4 devices (2 per device); pages split over 2 data-parallel shards" \
  plan --layers 32 --kv-heads 8 --head-dim 128 --max-len 8192 --budget 24G --tp 4 --dp 2
# --dp N: the pages of N x the budget, a multiple of N; per device the budget's worth.
same_output "--dp 2" "$plan_section" -- plan --layers 32 --kv-heads 8 --head-dim 128 --max-len 8192 --budget 24G --dp 2 \
  -- plan --layers 32 --kv-heads 8 --head-dim 128 --max-len 8192 --budget 48G
expect_value "--tp 4 --dp 2: pages per device" 6144 "$(json_field "d['sharding']['pages_per_device']" plan --layers 32 --kv-heads 8 --head-dim 128 --max-len 8192 --budget 24G --tp 4 --dp 2 --json)"
expect_value "--tp 4 --dp 2: bytes per device" 25769803776 "$(json_field "d['sharding']['bytes_per_device']" plan --layers 32 --kv-heads 8 --head-dim 128 --max-len 8192 --budget 24G --tp 4 --dp 2 --json)"
expect_value "--tp 3: resolution in JSON" replicate "$(json_field "d['sharding']['resolution']" plan --layers 32 --kv-heads 8 --head-dim 128 --max-len 8192 --budget 24G --tp 3 --json)"
expect 1 "data_parallel_size must be positive and at most 65536" plan --layers 32 --kv-heads 8 --head-dim 128 --max-len 8192 --budget 24G --dp 70000
expect 1 "fewer than data_parallel_size 4" plan --layers 32 --kv-heads 8 --head-dim 128 --max-len 8192 --budget 8M --dp 4
expect 2 "invalid value '0' for --dp" plan --layers 32 --kv-heads 8 --head-dim 128 --max-len 8192 --budget 24G --dp 0
expect_value "--tp in JSON" 2 "$(json_field "d['budget']['kv_head_shards']" plan --layers 32 --kv-heads 8 --head-dim 128 --max-len 8192 --budget 24G --tp 2 --json)"
# kvp plan --hf: three published model configs print the same numbers as the equivalent flags
# (text and JSON; only the line / fields naming the source differ).
no_source='/^  source /d'
no_source_json='s/"source":"[a-z]*","hf_config":\("[^"]*"\|null\),//'
check_hf() {  # <config> <layers> <kv heads> <head dim> <max len>
  local cfg=$hf/$1 flags=(--layers "$2" --kv-heads "$3" --head-dim "$4" --max-len "$5" --dtype bf16)
  same_output "--hf $1" "$no_source" -- plan --hf "$cfg" --budget 80G -- plan "${flags[@]}" --budget 80G
  same_output "--hf $1 --json" "$no_source_json" -- plan --hf "$cfg" --budget 80G --json -- plan "${flags[@]}" --budget 80G --json
  same_output "--hf $1 --tp 2" "$no_source" -- plan --hf "$cfg" --budget 40G --tp 2 -- plan "${flags[@]}" --budget 40G --tp 2
  valid_json "--hf $1 --json" plan --hf "$cfg" --budget 80G --json
  expect_value "--hf $1: hf_config" "$cfg" "$(json_field "d['hf_config']" plan --hf "$cfg" --budget 80G --json)"
}
check_hf llama-3-8b.json 32 8 128 8192
check_hf qwen2-7b.json 28 4 128 32768
check_hf mistral-7b-v0.1.json 32 8 128 32768
expect 0 "Hugging Face config $hf/llama-3-8b.json" plan --hf "$hf/llama-3-8b.json" --budget 80G
# A flag overrides the config's value.
same_output "--hf with --max-len" "$no_source" -- plan --hf "$hf/qwen2-7b.json" --max-len 4096 --dtype fp8_e4m3fn --budget 8G \
  -- plan --layers 28 --kv-heads 4 --head-dim 128 --max-len 4096 --dtype fp8_e4m3fn --budget 8G
# Configs the reader refuses, each with the file and the field named (exit 1), or accepts
# (no num_key_value_heads: one KV head per attention head; explicit head_dim; text_config).
hfdir=$(mktemp -d)
printf '{"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 256, "max_position_embeddings": 512}' >"$hfdir/mha.json"
printf '{"num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 96, "hidden_size": 512, "max_position_embeddings": 512, "torch_dtype": "float32"}' >"$hfdir/headdim.json"
printf '{"model_type": "llava", "text_config": {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 256, "max_position_embeddings": 512, "torch_dtype": "float16"}}' >"$hfdir/nested.json"
printf '{"num_attention_heads": 4, "hidden_size": 256, "max_position_embeddings": 512}' >"$hfdir/nolayers.json"
printf '{"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 256, "max_position_embeddings": 512, "torch_dtype": "int8"}' >"$hfdir/int8.json"
printf '{"num_hidden_layers": -2, "num_attention_heads": 4, "hidden_size": 256, "max_position_embeddings": 512}' >"$hfdir/negative.json"
printf '{"num_hidden_layers": 2, "num_attention_heads": 3, "hidden_size": 256, "max_position_embeddings": 512}' >"$hfdir/indivisible.json"
printf '{"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 256, "max_position_embeddings": 512, "kv_lora_rank": 512}' >"$hfdir/mla.json"
printf '{"num_hidden_layers": 2,' >"$hfdir/truncated.json"
same_output "--hf without num_key_value_heads" "$no_source" -- plan --hf "$hfdir/mha.json" --budget 1G \
  -- plan --layers 2 --kv-heads 4 --head-dim 64 --max-len 512 --budget 1G
same_output "--hf with head_dim and float32" "$no_source" -- plan --hf "$hfdir/headdim.json" --budget 1G \
  -- plan --layers 2 --kv-heads 2 --head-dim 96 --max-len 512 --dtype fp32 --budget 1G
same_output "--hf with text_config" "$no_source" -- plan --hf "$hfdir/nested.json" --budget 1G \
  -- plan --layers 2 --kv-heads 2 --head-dim 64 --max-len 512 --dtype fp16 --budget 1G
expect 1 "nolayers.json: \"num_hidden_layers\" is missing" plan --hf "$hfdir/nolayers.json"
expect 1 "int8.json: \"torch_dtype\" is \"int8\"; valid values are \"bfloat16\", \"float16\", \"float32\"" plan --hf "$hfdir/int8.json"
expect 1 "negative.json: \"num_hidden_layers\" is -2, not a positive integer" plan --hf "$hfdir/negative.json"
expect 1 "\"hidden_size\" 256 is not a multiple of \"num_attention_heads\" 3" plan --hf "$hfdir/indivisible.json"
expect 1 "multi-head latent attention" plan --hf "$hfdir/mla.json"
expect 1 "truncated.json: not valid JSON" plan --hf "$hfdir/truncated.json"
expect 1 "missing.json: cannot open the file" plan --hf "$hfdir/missing.json"
# --json: one object with the documented fields.
valid_json "plan --json" plan --layers 32 --kv-heads 8 --head-dim 128 --max-len 8192 --budget 62545461248 --json
expect_value "plan --json num_pages" 3728 \
  "$(json_field "d['plan']['num_pages']" plan --layers 32 --kv-heads 8 --head-dim 128 --max-len 8192 --budget 62545461248 --json)"
expect_value "plan --json page_shape" "[3728, 128, 8, 2, 128]" \
  "$(json_field "d['geometry']['page_shape']" plan --layers 32 --kv-heads 8 --head-dim 128 --max-len 8192 --budget 62545461248 --json)"
expect_value "plan --json config" 3728 \
  "$(json_field "d['config']['num_pages']" plan --layers 32 --kv-heads 8 --head-dim 128 --max-len 8192 --budget 62545461248 --json)"
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
expect 2 "kvp demo: unknown option '--bogus' (valid options: --layout" demo --bogus
expect 2 "invalid value '0' for --layers: expected an integer in [1, 64]" demo --layers 0
expect 2 "invalid value 'v9' for --layout: valid values are v2, v3" demo --layout=v9
expect_both 0 "hit rate 44.4%; 1 pages copied on write" "attention check passed: 1150 token rows x 2 layers" \
  demo --quiet --layers 2
# Every storage dtype once, each layout with two of them (exit 0 also means the read-back check
# passed); bf16 on v3 is the run above.
for run in "v2 fp32" "v2 fp8_e4m3fn" "v3 fp16" "v3 fp8_e5m2"; do
  set -- $run
  expect 0 "attention check passed" demo --quiet --layers 1 --layout "$1" --dtype "$2"
done

# Storage tiers: the first run persists its cached prefix pages to the directory store, the
# second (a new process) restores 816 prompt tokens from it, and both pass every check; the store
# then holds the 68 blocks of one config.
tiers=$(mktemp -d)
expect_both 0 "0 from $tiers/disk" "read-back check passed" demo --quiet --layers 1 --disk "$tiers/disk"
expect_both 0 "816 from $tiers/disk" "attention check passed" demo --quiet --layers 1 --disk "$tiers/disk"
expect_both 0 "blocks:   68" "damaged:  0" store stat "$tiers/disk"
expect 2 "invalid value '39' for --pages: expected an integer in [40, 4096]" demo --pages 39
touch "$tiers/file"
expect 1 "kvp demo:" demo --quiet --layers 1 --disk "$tiers/file"
rm -rf "$tiers"

# Save (kvp demo --save, kvp load --save), load and inspect, with and without a progress bar.
scratch=$(mktemp -d)
check_progress() {  # <what> <label> <want: bar|none> <command...>: the bar on stderr or none
  local what=$1 label=$2 want=$3 err
  shift 3
  err=$("$@" 2>&1 >/dev/null)
  if [ "$want" = bar ] && { [[ "$err" != *"$label"*"100%"* ]] || [[ "$err" != *$'\r'* ]]; }; then
    fail "$what: no progress bar '$label ... 100%' on stderr" "$err"
  elif [ "$want" = none ] && [[ "$err" == *$'\r'* || "$err" == *"$label ["* ]]; then
    fail "$what: a progress bar on stderr, which is not a terminal" "$err"
  else
    pass=$((pass + 1))
  fi
}
# The default demo cache (4 layers x 320 pages) is a 40 MiB file: above the bar's 32 MiB threshold.
check_progress "demo --save --progress always" saving bar "$kvp" demo --quiet --save "$scratch/demo.kvps" --progress always
check_progress "inspect, stderr not a terminal" verifying none "$kvp" inspect "$scratch/demo.kvps"
check_progress "inspect --progress=always" verifying bar "$kvp" inspect "$scratch/demo.kvps" --progress=always
check_progress "load --progress always" loading bar "$kvp" load "$scratch/demo.kvps" --progress always
check_progress "load --save, stderr not a terminal" saving none "$kvp" load "$scratch/demo.kvps" --save "$scratch/copy.kvps"
check_progress "load --progress never" loading none "$kvp" load "$scratch/demo.kvps" --progress never
cmp -s "$scratch/demo.kvps" "$scratch/copy.kvps" && pass=$((pass + 1)) || fail "load --save: the copy differs" ""
# stderr a terminal (script(1) gives the command a pseudo-terminal): the bar appears unasked.
out=$(script -qec "'$kvp' inspect '$scratch/demo.kvps'" /dev/null 2>&1)
if [[ "$out" != *"verifying ["*"] 100%"* ]] || [[ "$out" != *"verdict:        OK"* ]]; then
  fail "inspect on a terminal: no progress bar" "$out"
else
  pass=$((pass + 1))
fi
out=$(script -qec "'$kvp' load '$scratch/demo.kvps' --save '$scratch/copy2.kvps'" /dev/null 2>&1)
if [[ "$out" != *"loading "*"] 100%"* ]] || [[ "$out" != *"saving "*"] 100%"* ]]; then
  fail "load --save on a terminal: no progress bars" "$out"
else
  pass=$((pass + 1))
fi
cmp -s "$scratch/demo.kvps" "$scratch/copy2.kvps" && pass=$((pass + 1)) || fail "load --save (with a bar): the copy differs" ""
# With a bar or without, the save is the library's (kvp_serialize_to_file): a symbolic link at the
# target stays a link to the replaced file, and a failure exits 1 saying why.
ln -sf copy2.kvps "$scratch/link.kvps"
check_progress "load --save through a link, --progress always" saving bar "$kvp" load "$scratch/demo.kvps" \
  --save "$scratch/link.kvps" --progress always
[[ -L "$scratch/link.kvps" ]] && cmp -s "$scratch/demo.kvps" "$scratch/copy2.kvps" && pass=$((pass + 1)) ||
  fail "load --save --progress always: the link was not followed" ""
expect 1 "saving '$scratch/no-such-dir/x.kvps'" load "$scratch/demo.kvps" --save "$scratch/no-such-dir/x.kvps" \
  --progress always
expect 1 "saving '$scratch/no-such-dir/x.kvps'" load "$scratch/demo.kvps" --save "$scratch/no-such-dir/x.kvps" \
  --progress never
# A page selection: --pages 1-3,7 saves four pages, as inspect and load report.
expect 0 "saved to $scratch/part.kvps" load "$scratch/demo.kvps" --save "$scratch/part.kvps" --pages 1-3,7 --progress=always
expect_value "inspect --json stored_pages" 4 "$(json_field "d['stored_pages']" inspect --json "$scratch/part.kvps")"
expect_value "inspect --json page ids" "1 7" "$(json_field "d['first_page_id'], d['last_page_id']" inspect --json "$scratch/part.kvps")"
expect_value "load --json" "True 4 320 8" \
  "$(json_field "d['ok'], d['stored_pages'], d['num_pages'], d['kv_heads']" load --json "$scratch/part.kvps")"
valid_json "inspect --json" inspect --json "$golden"
expect_value "inspect --json golden" "True KVP_OK v3 bf16" \
  "$(json_field "d['valid'], d['status'], d['layout'], d['dtype']" inspect --json "$golden")"
# A shard's blob (format 1.1) shows which slice it holds; a whole cache's says so.
expect 0 "shard:          tp 1 of 2, dp 1 of 2: combined entries [2, 4) (KV heads 2..3), pages [4, 8)" \
  inspect "$golden_shard"
expect 0 "shard:          none (the whole cache)" inspect "$golden"
expect_value "inspect --json shard" "1 2 1 2 2 4 4 8" \
  "$(json_field "d['shard']['tp_rank'], d['shard']['tp_size'], d['shard']['dp_rank'], d['shard']['dp_size'], d['shard']['head_begin'], d['shard']['head_end'], d['shard']['page_begin'], d['shard']['page_end']" inspect --json "$golden_shard")"
# A damaged file: exit 1, valid false with the status and the reason, in JSON too.
cp "$scratch/demo.kvps" "$scratch/bad.kvps"
printf 'X' | dd of="$scratch/bad.kvps" bs=1 seek=5000000 conv=notrunc status=none
expect 1 "verdict:        INVALID (KVP_ERR_FORMAT_CHECKSUM)" inspect "$scratch/bad.kvps"
expect_value "inspect --json damaged" "False KVP_ERR_FORMAT_CHECKSUM 4" \
  "$(json_field "d['valid'], d['status'], d['layers']" inspect --json "$scratch/bad.kvps")"
expect 1 "kvp load: $scratch/bad.kvps:" load "$scratch/bad.kvps" --progress always
expect_value "load --json damaged" "False KVP_ERR_FORMAT_CHECKSUM" \
  "$(json_field "d['ok'], d['status']" load --json "$scratch/bad.kvps")"
rm -rf "$scratch" "$hfdir"

# bench: smoke runs (the numbers are not checked; they belong in docs/benchmarks.md)
expect 2 "invalid value '0' for --min-ms: expected an integer in [1, 60000]" bench --min-ms 0
expect 2 "invalid value '32,8' for --shape: expected LAYERS,KV_HEADS,HEAD_DIM[,DTYPE]" bench --shape 32,8
expect 2 "invalid value '2,4,64,int4' for --shape: the dtype must be one of bf16, fp16" bench --shape 2,4,64,int4
expect 0 "prefix-match the whole 128k prompt" bench --quick --min-ms 1
expect_both 0 "shape: 28 layers, 4 KV heads x 128, bf16 ($hf/qwen2-7b.json)" "28 layers x" bench --quick --min-ms 1 --hf "$hf/qwen2-7b.json"
valid_json "bench --json" bench --quick --min-ms 1 --shape=2,4,64,fp16 --json
expect_value "bench --json --shape" "2 4 64 fp16 --shape 3 2" \
  "$(json_field "d['shape']['layers'], d['shape']['kv_heads'], d['shape']['head_dim'], d['shape']['dtype'], d['shape']['source'], len(d['concatenate']), d['serialization']['layers']" \
    bench --quick --min-ms 1 --shape 2,4,64,fp16 --json)"

# kvp store: a directory store with 6 evicted page blocks (two configs, 3 + 3), one of them damaged
# inside (the file is sound: ls and stat show it, scrub removes it), and one foreign block.
store=$(mktemp -d)/tier
"$fill_store" "$store" || fail "fill_store $store" ""
expect_stdout 0 "usage: kvp store ls|stat|scrub SPEC" store --help
expect 0 "  store     list, summarise or check a block store" help
expect 2 "an action (ls, stat or scrub) is required" store
expect 2 "SPEC is required" store ls
expect 2 "unknown action 'list' (valid actions: ls, stat, scrub)" store list "$store"
expect 2 "one SPEC only" store ls "$store" "$store"
expect 2 "unknown option '--all' (valid options: --json, --help)" store ls --all "$store"
expect 2 "'http://x' is not a store: give a directory, a redis:// or a redis+cluster:// URL" store ls http://x
expect 1 "'redis://127.0.0.1:1': " store stat redis://127.0.0.1:1 # refused (or a build without Redis)
expect 1 "'redis+cluster://127.0.0.1:1': " store ls redis+cluster://127.0.0.1:1
expect 1 "the store directory '$store-missing' does not exist" store ls "$store-missing"
[ -e "$store-missing" ] && fail "kvp store ls created the missing directory $store-missing" ""
expect 1 "'$hf/qwen2-7b.json' is not a directory" store stat "$hf/qwen2-7b.json"
expect_both 1 "  ok" "kvp store ls: " store ls "$store"
expect_value "store ls: ok/BAD/other lines" "5 1 1" \
  "$("$kvp" store ls "$store" 2>/dev/null | awk '$NF == "ok" {o++} $NF == "BAD" {b++} $NF == "other" {x++} END {print o, b, x}')"
expect_both 1 "blocks:   7 (" "damaged:  1" store stat "$store"
valid_json "store ls --json" store ls --json "$store"
valid_json "store stat --json" store stat --json "$store"
expect_value "store stat --json: configs" "2 [2, 3] [4, 4] [2, 2] 1 1" \
  "$(json_field "len(d['configs']), sorted(c['blocks'] for c in d['configs']), [c['page_size'] for c in d['configs']], [c['layers'] for c in d['configs']], d['damaged'], d['other']" store stat --json "$store")"
expect_value "store ls --json: the damaged block's checksum" "[False]" \
  "$(json_field "[b['checksum_ok'] for b in d['blocks'] if b['state'] == 'BAD']" store ls --json "$store")"
expect_both 1 "1 damaged page blocks (1 removed)" "the block's checksum does not match: removed" store scrub "$store"
expect_value "store scrub removed the damaged block" "6 0" "$(json_field "d['blocks'], d['damaged']" store stat --json "$store")"
expect 0 "0 damaged page blocks (0 removed), 1 other blocks left alone" store scrub "$store"
# a block file damaged on disk: scrub's store check deletes it
victim=$(ls "$store"/*.kvpb | head -1)
python3 -c "import sys; p = sys.argv[1]; b = bytearray(open(p, 'rb').read()); b[200] ^= 1; open(p, 'wb').write(b)" "$victim"
expect 1 "1 damaged (deleted)" store scrub "$store"
[ -e "$victim" ] && fail "kvp store scrub left the damaged file $victim" ""
expect_value "store scrub --json after the repair" "5 0 0" \
  "$(json_field "d['blocks'], d['damaged'], d['store_check']['blocks_damaged']" store scrub --json "$store")"
expect 0 "  ok" store ls "$store"
rm -rf "$(dirname "$store")"

echo "kvp cli: $pass passed, $fails failed"
[ "$fails" -eq 0 ]
