#!/usr/bin/env bash
# Package test: install kvpages to a temporary prefix, then build and run consumers of the
# installed copy through pkg-config and through find_package(kvpages CONFIG), and check the
# SONAME and that the prefix is relocatable (the pkg-config file works after moving it).
set -euo pipefail
build=${1:?usage: run.sh <build dir>}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cmake --install "$build" --prefix "$work/prefix" >/dev/null
lib=$(find "$work/prefix" -name 'libkvpages.so.*.*' | head -n1)
soname=$(objdump -p "$lib" | awk '/SONAME/ {print $2}')
[ "$soname" = "libkvpages.so.1" ] || { echo "package: unexpected SONAME '$soname'"; exit 1; }

# Relocate the whole prefix: nothing may point at the original location.
mv "$work/prefix" "$work/moved"
prefix="$work/moved"
pcdir=$(dirname "$(find "$prefix" -name kvpages.pc | head -n1)")
libdir=$(dirname "$(find "$prefix" -name 'libkvpages.so' | head -n1)")

# 1. pkg-config
PKG_CONFIG_PATH="$pcdir" cc -std=c99 -Wall -Wextra -Werror "$here/consumer.c" -o "$work/consumer_pc" \
  $(PKG_CONFIG_PATH="$pcdir" pkg-config --cflags --libs kvpages)
LD_LIBRARY_PATH="$libdir" "$work/consumer_pc"

# 1b. every INIT macro, warning-free as C and C++ (-Wall -Wextra -Werror through pkg-config)
pc_flags=$(PKG_CONFIG_PATH="$pcdir" pkg-config --cflags --libs kvpages)
cc -std=c99 -Wall -Wextra -Werror "$here/init_macros.c" -o "$work/init_c" $pc_flags
LD_LIBRARY_PATH="$libdir" "$work/init_c"
for std in c++11 c++17; do
  c++ -std=$std -Wall -Wextra -Werror -x c++ "$here/init_macros.c" -o "$work/init_$std" $pc_flags
  LD_LIBRARY_PATH="$libdir" "$work/init_$std"
done

# 2. find_package
cmake -S "$here/cmake" -B "$work/cm" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$work/cm" >/dev/null
LD_LIBRARY_PATH="$libdir" "$work/cm/consumer"

# 3. further package checks (dlopen smoke test) when present
if [ -f "$here/dlopen.c" ]; then
  cc -std=c99 -Wall -Wextra -Werror -I"$prefix/include" "$here/dlopen.c" -o "$work/dlopen" -ldl
  "$work/dlopen" "$libdir/libkvpages.so.1"
fi
# 4. add_subdirectory embedding with the oldest supported CMake, static library included
bash "$here/embed.sh"
echo "package: ok (SONAME $soname; pkg-config and find_package consumers ran from a relocated prefix)"
