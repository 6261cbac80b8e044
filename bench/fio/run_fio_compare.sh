#!/usr/bin/env bash
# One fio job, driven by fio's own nbd engine, against three NBD exports of a disk of the same
# size, one after the other, and a side-by-side table:
#   keel-vf        keel-nbd --path vf        guest -> paravisor -> VF -> card
#   keel-fallback  keel-nbd --path fallback  guest -> paravisor -> host storage service (io_uring)
#   qsd            qemu-storage-daemon's NBD export of a raw image (file driver)
#
#   bench/fio/run_fio_compare.sh [--keel-nbd BIN] [--rw randrw] [--rwmixread 70] [--bs 4k]
#       [--iodepth 16] [--numjobs 1] [--runtime 10] [--size 64M] [--out DIR] [--image-dir DIR]
#       [--card model] [--targets "keel-vf keel-fallback qsd"] [--keel-queues M]
#
# --numjobs N: N fio jobs at once (group_reporting: the table sums them), each on its own NBD
# connection; keel-nbd then serves them with --connections N (one server worker, virtqueue and
# VF queue pair each; --keel-queues M: spread over M of them instead).
#
# Every fio run writes --output-format=json to DIR/<target>.json. Backend CPU per IO comes from
# /proc/<pid>/stat (utime + stime) of the serving process, sampled right before and right after
# fio; for keel that process also holds the model card's thread (what silicon does on a real
# card) and the NBD server threads (what the guest's own driver does), so keel-nbd's own report
# of its data-path threads (paravisor workers + host service + io_uring workers, from
# --stats-json) is shown beside it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
keel_nbd=""
rw=randrw
rwmixread=70
bs=4k
iodepth=16
numjobs=1
keel_queues=""
runtime=10
size=64M
out=""
image_dir=""
card=model
targets="keel-vf keel-fallback qsd"

usage() { sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --keel-nbd) keel_nbd=$2; shift 2 ;;
    --rw) rw=$2; shift 2 ;;
    --rwmixread) rwmixread=$2; shift 2 ;;
    --bs) bs=$2; shift 2 ;;
    --iodepth) iodepth=$2; shift 2 ;;
    --numjobs) numjobs=$2; shift 2 ;;
    --keel-queues) keel_queues=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --image-dir) image_dir=$2; shift 2 ;;
    --card) card=$2; shift 2 ;;
    --targets) targets=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_fio_compare.sh: unknown option '$1' (--help lists them)" >&2; exit 2 ;;
  esac
done

die() { echo "run_fio_compare.sh: $*" >&2; exit 1; }

# ---- what this needs, checked first ----
command -v fio >/dev/null || die "fio is not installed (Debian: apt-get install fio)"
if ! fio --enghelp=nbd 2>/dev/null | grep -q '^uri'; then
  die "fio's nbd engine does not work here: 'fio --enghelp=nbd' does not list it (fio $(fio --version)); fio must be built with libnbd"
fi
echo "fio: $(fio --version), nbd engine: ok ($(fio --enghelp=nbd 2>/dev/null | head -1 | tr -s ' '))"
if [ -z "$keel_nbd" ]; then
  for c in "$here/../../build/apps/keel-nbd" "$(command -v keel-nbd || true)"; do
    if [ -n "$c" ] && [ -x "$c" ]; then keel_nbd=$c; break; fi
  done
fi
case " $targets " in
  *" keel-"*) [ -x "$keel_nbd" ] || die "keel-nbd not found: build it (ninja keel-nbd) and pass --keel-nbd BIN" ;;
esac
case " $targets " in
  *" qsd "*) command -v qemu-storage-daemon >/dev/null ||
      die "qemu-storage-daemon not found (Debian: apt-get install qemu-system-common); or --targets without qsd" ;;
esac
command -v python3 >/dev/null || die "python3 is needed for the table"

size_bytes=$(numfmt --from=iec "${size%B}" 2>/dev/null) || die "--size '$size': not a size (64M, 1G, ...)"
[ $((size_bytes % 1048576)) -eq 0 ] || die "--size must be a multiple of 1 MiB"
size_mib=$((size_bytes / 1048576))
[ -n "$image_dir" ] || { [ -d /dev/shm ] && image_dir=/dev/shm || image_dir=${TMPDIR:-/tmp}; }
[ -n "$out" ] || out=$(mktemp -d "${TMPDIR:-/tmp}/keel-fio-compare.XXXXXX")
mkdir -p "$out"
tck=$(getconf CLK_TCK)

cpu_ticks() {  # utime + stime of a process, in clock ticks
  local stat
  stat=$(cat "/proc/$1/stat") || return 1
  stat=${stat##*) }  # the fields after "(comm) "
  # shellcheck disable=SC2086
  set -- $stat
  echo $(( ${12} + ${13} ))
}

wait_socket() {  # socket pid log
  for _ in $(seq 1 300); do
    [ -S "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || { cat "$3" >&2; die "the server exited before listening"; }
    sleep 0.1
  done
  cat "$3" >&2
  die "no socket $1 after 30 s"
}

stop_server() {  # pid
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

server_pid=""
cleanup() {
  [ -n "$server_pid" ] && stop_server "$server_pid"
  rm -f "$image_dir/keel-fio-compare-$$-"*.img
}
trap cleanup EXIT

run_fio() {  # target socket
  local target=$1 sock=$2 name
  name=keel
  [ "$target" = qsd ] && name=f  # qsd names an export after its node unless told otherwise
  fio --name="$target" --ioengine=nbd "--uri=nbd+unix:///$name?socket=$sock" \
    --rw="$rw" --rwmixread="$rwmixread" --bs="$bs" --iodepth="$iodepth" --size="$size" \
    --numjobs="$numjobs" --group_reporting --time_based --runtime="$runtime" --lat_percentiles=1 \
    --randrepeat=1 --randseed=1 --output-format=json --output="$out/$target.json"
}

for target in $targets; do
  sock="$out/$target.sock"
  log="$out/$target.log"
  img="$image_dir/keel-fio-compare-$$-$target.img"
  rm -f "$sock" "$img"
  case "$target" in
    keel-vf|keel-fallback)
      "$keel_nbd" --socket "$sock" --card "$card" --image "$img" --size-mib "$size_mib" \
        --path "${target#keel-}" --queue-depth "$((iodepth > 64 ? iodepth : 64))" \
        --connections "$numjobs" ${keel_queues:+--queues "$keel_queues"} \
        --stats-json "$out/$target.keel.json" >"$log" 2>&1 &
      ;;
    qsd)
      truncate -s "$size_bytes" "$img"
      qemu-storage-daemon --blockdev "driver=file,node-name=f,filename=$img" \
        --nbd-server "addr.type=unix,addr.path=$sock" \
        --export type=nbd,id=e,node-name=f,writable=on >"$log" 2>&1 &
      ;;
    *) die "unknown target '$target' (keel-vf, keel-fallback, qsd)" ;;
  esac
  server_pid=$!
  wait_socket "$sock" "$server_pid" "$log"
  echo "== $target: fio $rw ${rwmixread}% reads, bs $bs, iodepth $iodepth, numjobs $numjobs, ${runtime} s, $size (server pid $server_pid)"
  t0=$(cpu_ticks "$server_pid")
  run_fio "$target" "$sock" || { cat "$log" >&2; die "fio failed against $target"; }
  t1=$(cpu_ticks "$server_pid")
  echo "{\"cpu_ns\": $(( (t1 - t0) * (1000000000 / tck) ))}" >"$out/$target.cpu.json"
  stop_server "$server_pid"
  server_pid=""
  rm -f "$img"
done

# shellcheck disable=SC2086 # one argument per target
python3 - "$out" $targets <<'EOF'
import json, os, sys
out, targets = sys.argv[1], sys.argv[2:]
rows = []
for t in targets:
    j = json.load(open(os.path.join(out, t + ".json")))["jobs"][0]
    cpu = json.load(open(os.path.join(out, t + ".cpu.json")))["cpu_ns"]
    r, w = j["read"], j["write"]
    ios = r["total_ios"] + w["total_ios"]
    def lat(d, key):
        if d["total_ios"] == 0:
            return float("nan")
        if key == "mean":
            return d["lat_ns"]["mean"] / 1000
        return d["lat_ns"].get("percentile", {}).get("99.000000", float("nan")) / 1000
    keel = os.path.join(out, t + ".keel.json")
    dp = float("nan")
    if os.path.exists(keel):
        k = json.load(open(keel))
        dp = (k["host_cpu_ns"] + k["server_cpu_ns"]) / max(k["nbd_requests"], 1)
    rows.append((t, r["iops"] + w["iops"], (r["bw_bytes"] + w["bw_bytes"]) / 1e6,
                 lat(r, "mean"), lat(r, "p99"), lat(w, "mean"), lat(w, "p99"),
                 cpu / max(ios, 1), dp))
hdr = ("target", "IOPS", "MB/s", "rd mean us", "rd p99 us", "wr mean us", "wr p99 us",
       "proc CPU ns/IO", "keel data-path ns/IO")
fmt = "{:<14} {:>10} {:>8} {:>11} {:>10} {:>11} {:>10} {:>15} {:>21}"
print()
print(fmt.format(*hdr))
for t, iops, mbs, rm, rp, wm, wp, cpu, dp in rows:
    f = lambda v, p=1: "-" if v != v else f"{v:.{p}f}"
    print(fmt.format(t, f"{iops:.0f}", f(mbs), f(rm), f(rp), f(wm), f(wp), f(cpu, 0), f(dp, 0)))
base = {t: row for t, *row in rows}
if "keel-vf" in base and "keel-fallback" in base and base["keel-fallback"][0] > 0:
    print(f"\nkeel vf / fallback IOPS: {base['keel-vf'][0] / base['keel-fallback'][0]:.2f}x")
if "keel-vf" in base and "qsd" in base and base["qsd"][0] > 0:
    print(f"keel vf / qemu-storage-daemon IOPS: {base['keel-vf'][0] / base['qsd'][0]:.2f}x")
print("\nproc CPU: utime+stime of the serving process over the fio run (/proc/<pid>/stat); for keel")
print("it includes the model card's thread (silicon on a real card) and the NBD server threads (the")
print("guest's driver). keel data-path: paravisor workers + host service + io_uring workers + NBD")
print("server threads, per NBD request, from keel-nbd --stats-json (process lifetime).")
print(f"fio JSON and server logs: {out}")
EOF
