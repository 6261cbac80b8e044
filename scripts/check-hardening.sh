#!/usr/bin/env bash
# Checks that keel's programs were built hardened (cmake/KeelWarnings.cmake): a stack
# protector in every program, _FORTIFY_SOURCE's checked libc calls in the optimised daemons
# that take input from guests and clients, and full RELRO. The same checks as Debian's
# hardening-check, without its dependencies.
#
#   scripts/check-hardening.sh BUILD_DIR
set -euo pipefail
BUILD="${1:?usage: check-hardening.sh BUILD_DIR}"
fail=0
checked=0
# Every keel executable in the build tree (ELF, executable, not a CMake probe).
mapfile -t progs < <(find "$BUILD" -type f -perm -u+x -not -path '*/CMakeFiles/*' \
  -not -name '*.so*' -not -name '*.sh' -not -name '*.py' -print | sort)
for p in "${progs[@]}"; do
  head -c 4 "$p" | grep -q $'\x7fELF' || continue
  checked=$((checked + 1))
  syms="$(nm -D --undefined-only "$p" 2>/dev/null || true)"
  if ! grep -q '__stack_chk_fail' <<<"$syms"; then
    echo "check-hardening: $p has no stack protector (no __stack_chk_fail)"; fail=1
  fi
  dyn="$(readelf -d "$p" 2>/dev/null || true)"
  if ! grep -q 'BIND_NOW' <<<"$dyn" || ! readelf -lW "$p" | grep -q GNU_RELRO; then
    echo "check-hardening: $p is not linked with full RELRO (-z relro -z now)"; fail=1
  fi
done
# _FORTIFY_SOURCE turns copies whose destination size is known into checked calls; the
# daemons that parse guests' and clients' input must have some. (Debug builds have none:
# _FORTIFY_SOURCE needs the optimiser.)
build_type="$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$BUILD/CMakeCache.txt")"
if [ "$build_type" != "Debug" ]; then
  for d in keel-vhost-blk keel-nbd; do
    p="$(find "$BUILD" -type f -name "$d" -perm -u+x | head -1)"
    [ -n "$p" ] || continue
    syms="$(nm -D --undefined-only "$p")"  # not piped into grep -q: pipefail, SIGPIPE
    if ! grep -q '__[a-z_]*_chk@' <<<"$syms"; then
      echo "check-hardening: $p has no _FORTIFY_SOURCE checked calls"; fail=1
    fi
  done
fi
[ "$checked" -gt 0 ] || { echo "check-hardening: no programs under $BUILD"; exit 1; }
if [ "$fail" -ne 0 ]; then exit 1; fi
echo "check-hardening: $checked programs in $BUILD: stack protector and full RELRO$(
  [ "$build_type" != Debug ] && echo ', daemons fortified')"
