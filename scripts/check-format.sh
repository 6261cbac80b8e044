#!/usr/bin/env bash
# Fails when a C++ file of keel's own differs from .clang-format. Fix with:
#   scripts/check-format.sh --fix
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mapfile -t files < <(find fpga drivers sriov vmm_glue bench tests hdl tools \
  -name '*.cpp' -o -name '*.h' 2>/dev/null | grep -v '/generated/' | sort)
if [ "${1:-}" = "--fix" ]; then
  clang-format -i "${files[@]}"
  exit 0
fi
if ! clang-format --dry-run --Werror "${files[@]}" 2>/tmp/keel-format.$$; then
  head -40 /tmp/keel-format.$$ >&2
  rm -f /tmp/keel-format.$$
  echo "format: files above differ from .clang-format; run scripts/check-format.sh --fix" >&2
  exit 1
fi
rm -f /tmp/keel-format.$$
echo "format: ${#files[@]} files clean"
