#!/usr/bin/env bash
# Exported-symbol check: the dynamic symbol table of libkvpages.so must contain exactly the
# public functions (every kvp_* declared with KVP_API in include/kvpages/*.h, plus kvp_get_api),
# each versioned with a node of src/kvpages.map, and nothing else (no C++ runtime, no internal
# symbols). Also checks that the dlopen table and the version script list every public function
# (tests/abi/gen_api.py --check).
# Usage: check_exports.sh <path to libkvpages.so>
set -euo pipefail
lib=${1:?usage: check_exports.sh <libkvpages.so>}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail=0

# Version nodes declared by the script, e.g. KVPAGES_1.0.
sed -e 's|/\*.*\*/||g' "$root/src/kvpages.map" | grep -oE '^[[:space:]]*[A-Za-z_][A-Za-z0-9_.]*[[:space:]]*\{' |
  tr -d '{ \t' | sort -u >"$work/nodes"

# nm -D --defined-only: "<addr> <type> <name>@@<node>" (or "<addr> A <node>" for the nodes).
nm -D --defined-only "$lib" >"$work/nm"
while read -r _ type sym; do
  name=${sym%%@*}
  node=${sym##*@}
  if [ "$type" = "A" ]; then
    grep -qx "$name" "$work/nodes" || { echo "check_exports: unknown version node $name"; fail=1; }
    continue
  fi
  case "$name" in
    kvp_*) ;;
    *) echo "check_exports: non-kvp symbol exported: $sym ($type)"; fail=1; continue ;;
  esac
  [ "$type" = "T" ] || { echo "check_exports: $name is exported with type $type (only functions may be)"; fail=1; }
  if [ "$node" = "$sym" ] || ! grep -qx "$node" "$work/nodes"; then
    echo "check_exports: $name has no version from src/kvpages.map ($sym)"
    fail=1
  fi
  echo "$name" >>"$work/exported"
done <"$work/nm"
sort -u -o "$work/exported" "$work/exported"

python3 "$here/gen_api.py" --list | sort -u >"$work/declared"
if ! diff -u --label declared-in-headers --label exported-by-library "$work/declared" "$work/exported" >"$work/diff"; then
  echo "check_exports: public headers and exported symbols differ (- declared only, + exported only):"
  grep -E '^[-+][a-z]' "$work/diff" || true
  fail=1
fi

python3 "$here/gen_api.py" --check || fail=1

if [ $fail -ne 0 ]; then
  echo "check_exports: FAILED"
  exit 1
fi
echo "check_exports: ok ($(wc -l <"$work/exported") functions, versions: $(tr '\n' ' ' <"$work/nodes"))"
