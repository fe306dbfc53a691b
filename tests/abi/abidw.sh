#!/usr/bin/env bash
# Writes the ABI description (abidw XML) of a debug-info libkvpages.so.1 restricted to the public
# headers. Usage: abidw.sh <libkvpages.so.1> <generated include dir> <output.abi>
set -euo pipefail
lib=$1 geninc=$2 out=$3
root=$(cd "$(dirname "$0")/../.." && pwd)
abidw --no-corpus-path --no-comp-dir-path --short-locs --no-show-locs --no-elf-needed --type-id-style hash \
  --drop-private-types --exported-interfaces-only \
  --headers-dir "$root/include" --headers-dir "$geninc" \
  --suppressions "$root/tests/abi/kvpages.suppr" \
  --out-file "$out" "$lib"
