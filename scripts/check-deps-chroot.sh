#!/usr/bin/env bash
# Checks scripts/keel.sh's Debian package list the way a new user meets it: in a fresh minimal
# Debian 12 (debootstrap --variant=minbase), a copy of this checkout, as root. Run it whenever
# the package list or a find_package/pkg_check_modules changes (ctest's deps_pkgconfig test
# catches the pkg-config half on every run; this catches the rest).
#
#   scripts/check-deps-chroot.sh [--full] [DIR]
#
# Default: `keel.sh deps` then CMake's configure step inside the chroot (minutes). --full runs
# `keel.sh test` there instead (the whole suite; as long as CI). DIR defaults to
# /var/tmp/keel-deps-chroot and is reused (debootstrap runs once).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FULL=0
if [ "${1:-}" = "--full" ]; then FULL=1; shift; fi
DIR="${1:-/var/tmp/keel-deps-chroot}"
[ "$(id -u)" -eq 0 ] || { echo "check-deps-chroot: run as root" >&2; exit 2; }
command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap
if [ ! -x "$DIR/usr/bin/apt-get" ]; then
  debootstrap --variant=minbase bookworm "$DIR" http://deb.debian.org/debian
fi
cleanup() { for m in dev/pts dev proc sys; do umount -l "$DIR/$m" 2>/dev/null || true; done; }
trap cleanup EXIT
mount --bind /dev "$DIR/dev"; mount --bind /dev/pts "$DIR/dev/pts"
mount -t proc proc "$DIR/proc"; mount -t sysfs sys "$DIR/sys"
cp /etc/resolv.conf "$DIR/etc/resolv.conf" 2>/dev/null || true
rm -rf "$DIR/keel"; mkdir -p "$DIR/keel"
git -C "$ROOT" ls-files -z | (cd "$ROOT" && xargs -0 cp --parents -t "$DIR/keel")
if [ "$FULL" -eq 1 ]; then
  chroot "$DIR" /bin/bash -c 'cd /keel && ./scripts/keel.sh test'
else
  chroot "$DIR" /bin/bash -c 'cd /keel && ./scripts/keel.sh deps &&
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null &&
    echo "check-deps-chroot: configure succeeded on a minimal Debian 12"'
fi
