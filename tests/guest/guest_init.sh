#!/bin/busybox sh
# keel's guest check: PID 1 of the minimal test guest (tests/guest/guest_initramfs.py packs it as
# /init), or a boot-time service in a real distribution's image (tests/guest/make_distro_image.sh
# installs it as /usr/local/sbin/keel-guest-check, run by /bin/sh).
#
# As PID 1: loads the inbox virtio modules, waits for the vhost-user-blk disk and runs fio on
# it. As a service: runs fio on a file (keel.file=, default /var/tmp/keel-guest-check.dat) of
# the root filesystem, which is on the vhost-user-blk disk. fio does a random-write job with
# crc32c verify, then a random-read job; everything goes to the serial console between KEEL-*
# marker lines that the host parses; then the guest powers off. Parameters come from the kernel
# command line (keel.NAME=VALUE); the host never types anything into the guest.
#
# keel.jobs=none runs no fio job; keel.shell=1 (PID 1 only) opens a shell on the console before
# power-off. keel.scenario=kernel-vfio (PID 1 only) runs /etc/keel/kernel-vfio.sh
# (tests/guest/guest_vfio.sh: keelctl on an NVMe controller through the kernel's VFIO) after the
# modules are loaded, instead of waiting for a disk and running fio.
#
# Markers (one per line, always at the start of a line):
#   KEEL-BOOT kernel=... uptime=S            the check started
#   KEEL-DISK dev=vda bytes=N queues=N      the virtio-blk disk is there
#   KEEL-FIO-START job=NAME uptime=S        fio is starting NAME
#   KEEL-FIO-DONE job=NAME rc=N uptime=S    fio exited with rc
#   KEEL-FIO-JSON-BEGIN/END job=NAME        fio's --output-format=json between these
#   KEEL-FIO-STDERR-BEGIN/END job=NAME      fio's stderr (verify errors land here)
#   KEEL-DMESG-BEGIN/END                    the kernel log lines about the disk and errors
#   KEEL-ERROR msg=...                      something in the guest went wrong
#   KEEL-DONE status=ok|fail                all done; power-off follows

if [ "$$" -eq 1 ]; then
    MODE=init
    /bin/busybox mkdir -p /proc /sys /dev /tmp /run
    /bin/busybox --install -s /bin
    export PATH=/bin:/sbin:/usr/bin:/usr/sbin
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev 2>/dev/null
    mount -t tmpfs tmpfs /tmp
else
    MODE=service
    export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
fi
OUT=/tmp/keel-guest-check
mkdir -p "$OUT"

uptime_s() { cut -d' ' -f1 /proc/uptime; }
say() { echo "KEEL-$*"; }

param() {
    for word in $(cat /proc/cmdline); do
        case "$word" in
            keel."$1"=*) echo "${word#*=}"; return ;;
        esac
    done
    echo "$2"
}

STATUS=ok
# The kernel log lines finish prints (a scenario may widen it).
DMESG_PATTERN='virtio|vda|blk|i/o error|error|warn|bug|call trace|fault|oops|hung'
fail() {
    STATUS=fail
    say "ERROR msg=$*"
}

# A scenario's step (guest_vfio.sh, guest_vtpm.sh): its output (stdout and stderr) between
# KEEL-STEP-BEGIN and KEEL-STEP-END markers with its exit status; the host names a failed step
# and its output, so no KEEL-ERROR is needed.
run_step() {
    name=$1
    shift
    say "STEP-BEGIN job=$name uptime=$(uptime_s)"
    "$@" 2>&1
    rc=$?
    say "STEP-END job=$name rc=$rc uptime=$(uptime_s)"
    [ "$rc" -eq 0 ] || STATUS=fail
    return "$rc"
}

finish() {
    # keel.shell=1: a shell on the console before powering off (docs/guest.md; by hand only).
    if [ "$MODE" = init ] && [ "$(param shell 0)" = 1 ]; then
        dmesg -n 7
        say "SHELL exit the shell to power off"
        setsid cttyhack sh
    fi
    sync
    say "DMESG-BEGIN"
    dmesg | grep -iE "$DMESG_PATTERN" | tail -n 200
    say "DMESG-END"
    say "DONE status=$STATUS uptime=$(uptime_s)"
    sync
    if [ "$MODE" = service ]; then
        rm -f "$TARGET"
        systemctl --no-block poweroff || poweroff
        exit 0
    fi
    poweroff -f
    sleep 10
    reboot -f
}

say "BOOT kernel=$(uname -r) uptime=$(uptime_s)"

DEV=$(param dev vda)
if [ "$MODE" = init ]; then
    for mod in $(cat /etc/keel/modules); do
        insmod "/lib/modules/$mod" || fail "insmod $mod failed"
    done
    SCENARIO=$(param scenario fio)
    if [ "$SCENARIO" != fio ]; then
        if [ -f "/etc/keel/$SCENARIO.sh" ]; then
            . "/etc/keel/$SCENARIO.sh"
        else
            fail "no scenario $SCENARIO in this initramfs (/etc/keel/$SCENARIO.sh)"
        fi
        finish
    fi
    WAIT=$(param disk_wait 30)
    i=0
    while [ ! -b "/dev/$DEV" ] && [ "$i" -lt $((WAIT * 10)) ]; do
        sleep 0.1
        i=$((i + 1))
    done
    if [ ! -b "/dev/$DEV" ]; then
        fail "no /dev/$DEV after ${WAIT}s (is the vhost-user-blk backend serving?)"
        finish
    fi
    TARGET=/dev/$DEV
else
    TARGET=$(param file /var/tmp/keel-guest-check.dat)
fi
if [ -b "/dev/$DEV" ]; then
    SECTORS=$(cat "/sys/block/$DEV/size")
    QUEUES=$(ls "/sys/block/$DEV/mq" 2>/dev/null | wc -l)
    say "DISK dev=$DEV bytes=$((SECTORS * 512)) queues=$QUEUES target=$TARGET"
fi

# From here on the console carries only our markers and fio's output: kernel messages go to
# the log buffer (printed between DMESG markers at the end) instead of cutting into the JSON.
dmesg -n 1

SIZE=$(param size 64M)
BS=$(param bs 4k)
QD=$(param iodepth 16)
RUNTIME=$(param runtime 5)
SEED=$(param seed 1)
JOBS=$(param jobs verify-write,randread)
NUMJOBS=$(param numjobs 1)

run_fio() {
    job=$1
    shift
    say "FIO-START job=$job uptime=$(uptime_s)"
    fio --name="$job" --filename="$TARGET" --direct=1 --ioengine=libaio --bs="$BS" \
        --iodepth="$QD" --size="$SIZE" --numjobs="$NUMJOBS" --group_reporting=1 \
        --randseed="$SEED" --eta=never --output-format=json --output="$OUT/$job.json" "$@" \
        2>"$OUT/$job.err"
    rc=$?
    echo
    say "FIO-DONE job=$job rc=$rc uptime=$(uptime_s)"
    say "FIO-JSON-BEGIN job=$job"
    cat "$OUT/$job.json"
    echo
    say "FIO-JSON-END job=$job"
    say "FIO-STDERR-BEGIN job=$job"
    cat "$OUT/$job.err"
    say "FIO-STDERR-END job=$job"
    [ "$rc" -eq 0 ] || fail "fio job $job exited with $rc"
}

[ "$JOBS" = none ] && JOBS=
for job in $(echo "$JOBS" | tr ',' ' '); do
    case "$job" in
        verify-write)
            # Every block of the region written once in random order, each carrying a crc32c
            # header with its offset; then all of them read back and checked. Any mismatch
            # stops fio with an error (verify_fatal).
            # One writer only: several jobs on one region would overwrite each other's blocks.
            run_fio verify-write --rw=randwrite --verify=crc32c --verify_fatal=1 \
                --do_verify=1 --verify_dump=0 --numjobs=1
            ;;
        randread)
            run_fio randread --rw=randread --runtime="$RUNTIME" --time_based=1
            ;;
        randwrite)
            run_fio randwrite --rw=randwrite --runtime="$RUNTIME" --time_based=1
            ;;
        *)
            fail "unknown job $job"
            ;;
    esac
done

finish
