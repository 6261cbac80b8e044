#!/usr/bin/env bash
# keel's one entry point for people and CI.
#
#   scripts/keel.sh demo    install missing Debian packages, build, run keel-perf (main job)
#   scripts/keel.sh test    install missing Debian packages, build, run every test via ctest
#   scripts/keel.sh deps    only install missing Debian packages
#   scripts/keel.sh build   deps + configure + build
#
# Environment: BUILD_DIR (default build), JOBS (default: number of cores).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
JOBS="${JOBS:-$(nproc)}"

# Every Debian package the build, the tests and the tools need.
PACKAGES=(
  build-essential cmake ninja-build pkg-config python3 clang-format clang libclang-rt-14-dev
  googletest libgtest-dev libgmock-dev libbenchmark-dev
  libnvme-dev libjson-c-dev libssl-dev liburing-dev libxrt-dev uuid-dev libibverbs-dev
  libcli11-dev nlohmann-json3-dev libfmt-dev libspdlog-dev libtpms-dev swtpm
  verilator yosys iverilog python3-matplotlib
  qemu-system-x86 qemu-utils busybox-static fio kmod iperf3
)

die() { echo "keel: $*" >&2; exit 1; }
# Phase timing on stderr, so a slow CI run says where its minutes went.
T0=$SECONDS
phase() { echo "keel: [$((SECONDS - T0))s] $*" >&2; }

deps() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    echo "keel: all ${#PACKAGES[@]} Debian packages are installed"
    return
  fi
  echo "keel: installing ${missing[*]}"
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "run as root (or install sudo) to install: ${missing[*]}"
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}"
}

# build [cmake options...]: a user's build (warnings stay warnings) unless options say more.
build() {
  deps
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@"
  cmake --build "$BUILD_DIR" -j "$JOBS"
}

case "${1:-}" in
  deps) deps ;;
  build) build ;;
  demo)
    build
    # keel's main job: the accelerated path against the software fallback on the C++ reference
    # card running free, short, verified; then the Verilated RTL card (when built) on the VF
    # path, for its cycles per command and the IOPS they project in silicon.
    "$BUILD_DIR/bench/keel-perf" --card model --rw randrw --bs 4k --iodepth 16 --runtime 3s \
      --verify
    "$BUILD_DIR/bench/keel-perf" --card sim --path vf --rw randread --bs 4k --iodepth 32 \
      --runtime 2s --verify
    ;;
  test)
    phase "build"
    # Developers and CI: warnings are errors.
    build -DKEEL_WERROR=ON
    phase "hardening check"
    "$ROOT/scripts/check-hardening.sh" "$BUILD_DIR"
    phase "ctest"
    # The full yosys synthesis (label synth_full, ~5.5 CPU minutes) is left out for CI time;
    # rtl_synth runs synth's coarse stage with the same latch and check assertions.
    ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS" -LE synth_full
    # The same host-side suites under AddressSanitizer + UndefinedBehaviorSanitizer (the
    # Verilated card is left out: it is generated code and slow under ASan; so are the daemons
    # of apps/ and the tools of bench/, which the main run above exercises).
    phase "ASan+UBSan build"
    cmake -S "$ROOT" -B "$BUILD_DIR-asan" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DKEEL_SANITIZE=ON \
      -DKEEL_WERROR=ON \
      -DKEEL_WITH_SIM=OFF -DKEEL_WITH_APPS=OFF -DKEEL_WITH_BENCH=OFF \
      -DCMAKE_CXX_FLAGS_DEBUG=-g1 -DCMAKE_C_FLAGS_DEBUG=-g1
    cmake --build "$BUILD_DIR-asan" -j "$JOBS"
    phase "ASan+UBSan ctest"
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
      ctest --test-dir "$BUILD_DIR-asan" --output-on-failure -j "$JOBS" \
      -L 'unit|model|driver|sriov|fault|paravisor' -E 'format_check|bench_'
    # Every fuzz target (the parsers of what guests, NBD clients and vhost-user front ends
    # send) under libFuzzer, each for a bounded time, from its committed seed corpus. New
    # inputs go to a scratch corpus in the build tree; the committed one is never written.
    # The seed is fixed (FUZZ_SEED, default 1) so that a red run can be run again the same
    # way; longer exploration: FUZZ_SECONDS=600 FUZZ_SEED=0 (0: libFuzzer picks one).
    phase "fuzz"
    cmake -S "$ROOT/tests/fuzz" -B "$BUILD_DIR-fuzz" -G Ninja -DCMAKE_CXX_COMPILER=clang++
    cmake --build "$BUILD_DIR-fuzz" -j "$JOBS"
    for target in $(cat "$BUILD_DIR-fuzz/fuzz_targets.txt"); do
      phase "fuzz $target"
      mkdir -p "$BUILD_DIR-fuzz/corpus-$target"
      seeds=()
      [ -d "$ROOT/tests/fuzz/corpus/$target" ] && seeds=("$ROOT/tests/fuzz/corpus/$target")
      # The servers under fuzz log every refused message: keep that in a file, show its end on
      # a failure (libFuzzer prints the crashing input's path and the sanitizer report last).
      log="$BUILD_DIR-fuzz/$target.log"
      if ! "$BUILD_DIR-fuzz/$target" -max_total_time="${FUZZ_SECONDS:-20}" -timeout=10 \
        -seed="${FUZZ_SEED:-1}" -artifact_prefix="$BUILD_DIR-fuzz/$target-" \
        -rss_limit_mb=2048 -print_final_stats=1 "$BUILD_DIR-fuzz/corpus-$target" "${seeds[@]}" \
        >"$log" 2>&1; then
        tail -n 80 "$log"
        die "fuzz target $target failed (whole log: $log)"
      fi
      grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
    done
    # A user's Release build with the distribution's GCC must build (warnings are not errors
    # there): checked here so a compiler's false positive cannot break users again.
    phase "Release build"
    cmake -S "$ROOT" -B "$BUILD_DIR-release" -G Ninja -DCMAKE_BUILD_TYPE=Release
    cmake --build "$BUILD_DIR-release" -j "$JOBS"
    "$ROOT/scripts/check-hardening.sh" "$BUILD_DIR-release"
    phase "done"
    ;;
  *)
    sed -n '2,12p' "${BASH_SOURCE[0]}" >&2
    exit 2
    ;;
esac
