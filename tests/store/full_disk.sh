#!/bin/sh
# Runs test_full_disk on a 256 KiB tmpfs mounted in a private mount namespace (unprivileged
# `unshare -r -m`, or a plain mount as root), so that a directory store's writes hit ENOSPC.
# Skips (exit 77, with the reason) where neither works.
#   full_disk.sh TEST_BINARY
set -u
bin=$1
mnt=$(mktemp -d "${TMPDIR:-/tmp}/kvp_full_disk.XXXXXX") || exit 1
trap 'rmdir "$mnt" 2>/dev/null' EXIT
run='mount -t tmpfs -o size=256k kvp_full_disk "$1" && "$2" "$1"; rc=$?; umount "$1" 2>/dev/null; exit $rc'
if unshare -r -m true 2>/dev/null; then
  unshare -r -m sh -c "$run" sh "$mnt" "$bin"
elif [ "$(id -u)" = 0 ] && unshare -m true 2>/dev/null; then
  unshare -m sh -c "$run" sh "$mnt" "$bin"
else
  echo "SKIP: full-disk test: cannot mount a small tmpfs here (no unprivileged user+mount namespace, not root)"
  exit 77
fi
