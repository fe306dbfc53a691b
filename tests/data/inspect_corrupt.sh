#!/bin/sh
# `kvp inspect` must exit 1 (not 0, not a crash) on a damaged copy of a golden blob.
# usage: inspect_corrupt.sh KVP_EXE GOLDEN_FILE WORK_DIR
set -u
kvp="$1"; golden="$2"; work="$3"
mkdir -p "$work"
bad="$work/damaged.kvps"
cp "$golden" "$bad"
# Flip one byte inside the first payload chunk (offset 1000).
printf '\377' | dd of="$bad" bs=1 seek=1000 count=1 conv=notrunc 2>/dev/null
"$kvp" inspect "$bad" > "$work/out.txt" 2>&1
rc=$?
cat "$work/out.txt"
if [ "$rc" -ne 1 ]; then echo "expected exit status 1, got $rc"; exit 1; fi
grep -q "KVP_ERR_FORMAT_CHECKSUM" "$work/out.txt" || { echo "verdict lacks KVP_ERR_FORMAT_CHECKSUM"; exit 1; }
# A truncated copy is reported as truncated.
head -c 500 "$golden" > "$bad"
"$kvp" inspect "$bad" > "$work/out.txt" 2>&1
rc=$?
cat "$work/out.txt"
if [ "$rc" -ne 1 ]; then echo "expected exit status 1, got $rc"; exit 1; fi
grep -q "KVP_ERR_FORMAT_TRUNCATED" "$work/out.txt" || { echo "verdict lacks KVP_ERR_FORMAT_TRUNCATED"; exit 1; }
exit 0
