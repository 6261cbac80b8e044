#!/usr/bin/env bash
# fio's own nbd engine through keel-nbd: a short random-write job with crc32c verification
# (verify_fatal), then a separate verify-only pass over a fresh connection.
#   fio_verify.sh KEEL_NBD_BINARY vf|fallback WORKDIR [KEEL_CARD_BINARY]
# With KEEL_CARD_BINARY, the card is a keel-card process (model, one VF) and keel-nbd gets only
# its VF: a card of one function (--card vfio-user:<run dir>/vf0.sock), the host path on
# keel-card's image, as on a host whose PF is someone else's.
# Exit 77 (skip) when fio or its nbd engine is missing.
set -uo pipefail
bin=$1
path=$2
work=$3
card_bin=${4:-}

if ! command -v fio >/dev/null 2>&1; then
  echo "skip: fio is not installed (apt-get install fio)"
  exit 77
fi
if ! fio --enghelp=nbd 2>/dev/null | grep -q uri; then
  echo "skip: this fio has no nbd engine (fio --enghelp=nbd; Debian's fio has it via libnbd)"
  exit 77
fi

mkdir -p "$work"
sock="$work/keel.sock"
log="$work/keel-nbd.log"
rm -f "$sock"
card_args=()
card_pid=
if [ -n "$card_bin" ]; then
  run="$work/card"
  rm -rf "$run" "$work/card.img"
  mkdir -p "$run"
  "$card_bin" --card model --image "$work/card.img" --size-mib 32 --vfs 1 --run-dir "$run" \
    >"$work/keel-card.log" 2>&1 &
  card_pid=$!
  for _ in $(seq 1 300); do
    [ -S "$run/vf0.sock" ] && break
    kill -0 "$card_pid" 2>/dev/null || { cat "$work/keel-card.log"; echo "FAIL: keel-card exited"; exit 1; }
    sleep 0.1
  done
  [ -S "$run/vf0.sock" ] || { cat "$work/keel-card.log"; echo "FAIL: no VF socket"; exit 1; }
  card_args=(--card "vfio-user:$run/vf0.sock" --image "$work/card.img")
fi
"$bin" --socket "$sock" --size-mib 32 --path "$path" --queue-depth 32 "${card_args[@]}" \
  >"$log" 2>&1 &
pid=$!
cleanup() {
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    wait "$pid"
  fi
  if [ -n "$card_pid" ] && kill -0 "$card_pid" 2>/dev/null; then
    kill -TERM "$card_pid"
    wait "$card_pid"
  fi
}
trap cleanup EXIT

for _ in $(seq 1 300); do
  [ -S "$sock" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "FAIL: keel-nbd exited"; exit 1; }
  sleep 0.1
done
[ -S "$sock" ] || { cat "$log"; echo "FAIL: no socket after 30 s"; exit 1; }

uri="nbd+unix:///?socket=$sock"
common=(--ioengine=nbd "--uri=$uri" --bs=4k --size=16M --verify=crc32c --verify_fatal=1
        --randrepeat=1 --randseed=7)
echo "== write + verify ($path)"
fio --name=write-verify "${common[@]}" --rw=randwrite --iodepth=16 --do_verify=1 \
  --output-format=terse >"$work/write.terse" || { cat "$work/write.terse"; exit 1; }
echo "== verify only, new connection ($path)"
fio --name=write-verify "${common[@]}" --rw=randwrite --iodepth=8 --verify_only=1 \
  --output-format=terse >"$work/verify.terse" || { cat "$work/verify.terse"; exit 1; }

kill -TERM "$pid"
wait "$pid"
rc=$?
cleanup
trap - EXIT
cat "$log"
[ "$rc" -eq 0 ] || { echo "FAIL: keel-nbd exited with $rc"; exit 1; }
if [ "$path" = vf ]; then
  grep -q "fallback_ios=0 " "$log" || { echo "FAIL: path vf used the fallback"; exit 1; }
else
  grep -q " vf_ios=0 " "$log" || { echo "FAIL: path fallback used the VF"; exit 1; }
fi
grep -q "error_replies=0 " "$log" || { echo "FAIL: the server replied with errors"; exit 1; }
echo "PASS: fio crc32c verify through keel-nbd ($path)"
