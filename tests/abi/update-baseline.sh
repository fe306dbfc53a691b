#!/usr/bin/env bash
# Regenerates the ABI baseline ON PURPOSE: tests/abi/kvpages.abi (abidw) and tests/abi/layout.c
# (size/offset pins), after checking that the table and version script are complete.
# Run it when a release adds public API (new functions, fields appended to size-versioned
# structs), review `git diff tests/abi`, and commit it with the change. Never run it to make an
# incompatible change pass: see docs/abi-policy.md.
# Usage: tests/abi/update-baseline.sh <configured and built build dir>
set -euo pipefail
build=$(cd "${1:?usage: update-baseline.sh <build dir>}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
python3 "$here/gen_api.py" --check
lib=$(bash "$here/abi_lib.sh" "$build")
geninc=$(dirname "$lib")/include
bash "$here/abidw.sh" "$lib" "$geninc" "$here/kvpages.abi"
python3 "$here/gen_layout.py" "$(dirname "$lib")"
echo "update-baseline: wrote tests/abi/kvpages.abi ($(grep -c '<function-decl' "$here/kvpages.abi") functions) and tests/abi/layout.c"
echo "update-baseline: review with 'git diff tests/abi' before committing"
