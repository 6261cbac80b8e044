# keel's kernel-vfio guest scenario: sourced by guest_init.sh (PID 1 of the minimal guest,
# installed as /etc/keel/kernel-vfio.sh) when the kernel command line says
# keel.scenario=kernel-vfio, once the modules of /etc/keel/modules (nvme, vfio-pci,
# vfio_iommu_type1 and their dependencies) are loaded. Uses guest_init.sh's say, fail, param,
# uptime_s, run_step and OUT; guest_init.sh's finish follows.
#
# The guest runs under QEMU with an emulated Intel IOMMU and an SR-IOV capable NVMe controller
# (tests/guest/guest_vfio.py). This script shows what the kernel made of the controller (the
# nvme driver's view, sriov_totalvfs, the IOMMU group), hands it to vfio-pci the way an
# administrator does, and runs keelctl on it through the kernel's VFIO (/dev/vfio): identify,
# then a 64 KiB pattern written, verified, read back and compared.
#
# Parameters (keel.NAME=VALUE): bdf (the controller, 0000:01:00.0), start (first LBA, 8),
# count (blocks, 0's based as keelctl's -c, 127), lba_bytes (512), step_timeout (s, 90).
#
# Markers, besides guest_init.sh's:
#   KEEL-STEP-BEGIN job=NAME uptime=S      a step starts; its output (stdout and stderr) follows
#   KEEL-STEP-END job=NAME rc=N uptime=S    it ended with exit status N
#   KEEL-PCI bdf=... class=... vendor=... device=... driver=... totalvfs=N numvfs=N group=N
#   KEEL-PATTERN bytes=N md5=...           the pattern the write step writes
# Steps, in order: modules pci pattern sriov-list sriov-enable vf-id-ctrl vf-write vf-flr
# vf-verify vf-id-ns vf-read vf-cmp vf-perf vf-failover sriov-disable bind-vfio id-ctrl id-ns write verify read cmp. modules, pci and bind-vfio
# prepare what follows: when one fails, no later step runs; the vf-* steps need sriov-enable.

BDF=$(param bdf 0000:01:00.0)
START=$(param start 8)
COUNT0=$(param count 127)
LBA_BYTES=$(param lba_bytes 512)
STEP_TIMEOUT=$(param step_timeout 90)
DEV=/sys/bus/pci/devices/$BDF
PAT=/tmp/pat
BACK=/tmp/back
GROUP=

DMESG_PATTERN='nvme|vfio|dmar|iommu|sr-iov|i/o error|error|warn|bug|call trace|fault|oops|hung'
# Kernel messages (the nvme driver letting go, vfio-pci taking over) go to the log buffer,
# printed by finish, instead of cutting into the steps' output.
dmesg -n 1
# VFIO pins the DMA buffers keelctl maps: no limit (root may raise it).
ulimit -l unlimited 2>/dev/null

link_name() {
    if [ -e "$1" ]; then basename "$(readlink "$1")"; else echo -; fi
}

step_modules() {
    rc=0
    for m in nvme vfio vfio_pci vfio_iommu_type1; do
        if [ -d "/sys/module/$m" ]; then
            echo "module $m: loaded"
        else
            echo "module $m: NOT loaded"
            rc=1
        fi
    done
    echo "# lsmod"
    lsmod
    return "$rc"
}

step_pci() {
    echo "# PCI functions (sysfs): address class vendor:device driver iommu_group"
    for d in /sys/bus/pci/devices/*; do
        echo "$(basename "$d") $(cat "$d/class") $(cat "$d/vendor"):$(cat "$d/device")" \
             "driver=$(link_name "$d/driver") iommu_group=$(link_name "$d/iommu_group")"
    done
    echo "# IOMMU groups: $(ls /sys/kernel/iommu_groups 2>/dev/null | wc -l)"
    if [ ! -d "$DEV" ]; then
        echo "no PCI function $BDF"
        return 1
    fi
    # The kernel's nvme driver probes asynchronously: let it bring the controller up before
    # it is taken away (a clean hand-over; its state is a fact worth showing, too).
    ctrl=$(ls "$DEV/nvme" 2>/dev/null | head -n 1)
    if [ -n "$ctrl" ]; then
        i=0
        while [ "$(cat "$DEV/nvme/$ctrl/state" 2>/dev/null)" != live ] && [ "$i" -lt 300 ]; do
            sleep 0.1
            i=$((i + 1))
        done
        for f in state model serial firmware_rev; do
            echo "$ctrl $f: $(cat "$DEV/nvme/$ctrl/$f" 2>/dev/null | sed 's/ *$//')"
        done
        ls /sys/block 2>/dev/null | grep nvme | sed 's/^/block device: /'
    else
        echo "no nvme controller under $DEV (driver $(link_name "$DEV/driver"))"
    fi
    CLASS=$(cat "$DEV/class")
    TOTALVFS=$(cat "$DEV/sriov_totalvfs" 2>/dev/null)
    NUMVFS=$(cat "$DEV/sriov_numvfs" 2>/dev/null)
    GROUP=$(link_name "$DEV/iommu_group")
    echo "$BDF: class $CLASS vendor $(cat "$DEV/vendor") device $(cat "$DEV/device")" \
         "driver $(link_name "$DEV/driver")"
    echo "$BDF: sriov_totalvfs ${TOTALVFS:-none} sriov_numvfs ${NUMVFS:-none}" \
         "iommu_group $GROUP"
    if [ "$GROUP" != - ]; then
        echo "iommu group $GROUP holds:" $(ls "/sys/kernel/iommu_groups/$GROUP/devices")
    fi
    rc=0
    case "$CLASS" in
        0x010802) ;;
        *) echo "$BDF is not an NVMe controller (class $CLASS, not 0x010802)"; rc=1 ;;
    esac
    if [ -z "$TOTALVFS" ] || [ "$TOTALVFS" -eq 0 ]; then
        echo "$BDF has no SR-IOV capability the kernel sees (sriov_totalvfs ${TOTALVFS:-missing})"
        rc=1
    fi
    if [ "$GROUP" = - ]; then
        echo "$BDF is in no IOMMU group: is the IOMMU on (intel_iommu=on)?"
        rc=1
    fi
    return "$rc"
}

step_bind_vfio() {
    echo "# echo vfio-pci > $DEV/driver_override"
    echo vfio-pci >"$DEV/driver_override" || return 1
    if [ -e "$DEV/driver" ]; then
        echo "# echo $BDF > $DEV/driver/unbind    (bound to $(link_name "$DEV/driver"))"
        echo "$BDF" >"$DEV/driver/unbind" || return 1
    fi
    echo "# echo $BDF > /sys/bus/pci/drivers_probe"
    echo "$BDF" >/sys/bus/pci/drivers_probe || return 1
    drv=$(link_name "$DEV/driver")
    echo "$BDF: driver $drv"
    if [ "$drv" != vfio-pci ]; then
        echo "$BDF is bound to $drv, not vfio-pci"
        return 1
    fi
    i=0
    while [ ! -c "/dev/vfio/$GROUP" ] && [ "$i" -lt 50 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    echo "# ls -l /dev/vfio    ($(grep -c devtmpfs /proc/mounts) devtmpfs mount)"
    ls -l /dev/vfio
    rc=0
    for node in /dev/vfio/vfio "/dev/vfio/$GROUP"; do
        if [ ! -c "$node" ]; then
            echo "no character device $node"
            rc=1
        fi
    done
    # VFIO opens a group only when every device in it is bound to vfio-pci (or to nothing).
    for d in "/sys/kernel/iommu_groups/$GROUP/devices"/*; do
        drv=$(link_name "$d/driver")
        echo "group $GROUP: $(basename "$d") driver $drv"
        case "$drv" in
            vfio-pci|-|pcieport) ;;
            *) echo "group $GROUP is not viable: $(basename "$d") is bound to $drv"; rc=1 ;;
        esac
    done
    return "$rc"
}

# SR-IOV of the controller while the kernel's nvme driver holds the PF: keelctl's nvme-pf
# manager gives a secondary controller its queues and interrupts (Virtualization Management),
# creates the VF and hands it to vfio-pci; keelctl then drives the VF through VFIO.
PF_CARD="nvme-pf:$BDF"
VF_START=$((START + 4096))
VF=

step_sriov_list() {
    echo "# keelctl --card $PF_CARD list"
    timeout "$STEP_TIMEOUT" keelctl --card "$PF_CARD" list
}

step_sriov_enable() {
    echo "# keelctl --card $PF_CARD vf enable -n 1"
    timeout "$STEP_TIMEOUT" keelctl --card "$PF_CARD" vf enable -n 1 || return 1
    VF=$(link_name "$DEV/virtfn0")
    echo "$BDF: sriov_numvfs $(cat "$DEV/sriov_numvfs"); VF 0 is $VF," \
         "driver $(link_name "/sys/bus/pci/devices/$VF/driver")," \
         "iommu_group $(link_name "/sys/bus/pci/devices/$VF/iommu_group")"
    [ "$VF" != - ] || { echo "no virtfn0 link"; return 1; }
    [ "$(link_name "/sys/bus/pci/devices/$VF/driver")" = vfio-pci ] || return 1
}

vf_step() {
    echo "# keelctl --card vfio:$VF $*"
    timeout "$STEP_TIMEOUT" keelctl --card "vfio:$VF" "$@"
}

# The whole stack on the VF: keel-perf's in-process guest through the paravisor, on the VF
# (its memory mapped through the IOMMU, completions through MSI-X eventfds) and on the host
# path (the PF's namespace, /dev/nvme0n1, through io_uring), every block verified.
vf_perf_disk() {
    blk=/dev/$(ls /sys/bus/pci/devices/$BDF/nvme/*/ 2>/dev/null | grep -m1 -E '^nvme[0-9]+n1$')
    [ -b "$blk" ] || blk=$(ls /dev/nvme*n1 2>/dev/null | head -n 1)
    echo "$blk"
}

step_vf_perf() {
    blk=$(vf_perf_disk)
    echo "# keel-perf --card vfio:$VF --image $blk --rw randrw --bs 4k --iodepth 8 --runtime 2s --size 8m --verify --no-progress"
    timeout "$STEP_TIMEOUT" keel-perf --card "vfio:$VF" --image "$blk" --rw randrw --bs 4k \
        --iodepth 8 --runtime 2s --size 8m --verify --no-progress --json /tmp/perf.json || return 1
    grep -oE '"(jobname|path_switches|vf_ios|fallback_ios)": [^,]+' /tmp/perf.json
    # The first job is the VF path's: its IO must have gone over the VF (a queue pair the VF
    # could not give it would leave it on the host path, quietly fast enough to pass).
    n=$(grep -oE '"vf_ios": [0-9]+' /tmp/perf.json | head -n 1 | grep -oE '[0-9]+$')
    [ "${n:-0}" -gt 0 ] || { echo "the VF path's job did no IO on the VF"; return 1; }
}

# Surprise removal and return under load: keel-perf writes and verifies on the VF; 2 s in, the
# VF is removed as an administrator does it (sriov_numvfs 0). The kernel asks keel for the
# device back (VFIO's request IRQ); keel lets go at once, so the removal finishes; the
# paravisor notices the VF gone, re-issues what was in flight on the host path (the PF's
# namespace) and carries on there. 1 s later the VF is enabled again (keelctl's nvme-pf
# manager, which hands it to vfio-pci): keel opens it again with its DMA windows, the
# paravisor resets its controller and moves the traffic back. keel-perf ends with every
# block written verified (written on either path, read back on the VF).
step_vf_failover() {
    blk=$(vf_perf_disk)
    log=/tmp/perf-failover.log
    echo "# keel-perf --card vfio:$VF --image $blk --path vf --rw randwrite --bs 4k --iodepth 8 --runtime 9s --size 8m --verify --no-progress &"
    keel-perf --card "vfio:$VF" --image "$blk" --path vf --rw randwrite --bs 4k --iodepth 8 \
        --runtime 9s --size 8m --verify --no-progress --json /tmp/failover.json >"$log" 2>&1 &
    pid=$!
    echo "keel-perf started at uptime $(uptime_s)"
    sleep 2
    echo "# echo 0 > $DEV/sriov_numvfs    (keel-perf is running on $VF)"
    t0=$(uptime_s)
    timeout 20 sh -c "echo 0 > $DEV/sriov_numvfs"
    rc=$?
    echo "keel-perf's VFIO files after the removal (the container only, kept for the VF's" \
         "return; the device and its group are let go):"
    ls -l "/proc/$pid/fd" 2>/dev/null | grep vfio
    held=$(ls -l "/proc/$pid/fd" 2>/dev/null | grep -cE '/dev/vfio/[0-9]+')
    echo "the removal returned $rc after $(awk "BEGIN { print $(uptime_s) - $t0 }") s;" \
         "sriov_numvfs $(cat "$DEV/sriov_numvfs")"
    sleep 1
    echo "# keelctl --card $PF_CARD vf enable -n 1    (at uptime $(uptime_s))"
    timeout "$STEP_TIMEOUT" keelctl --card "$PF_CARD" vf enable -n 1
    erc=$?
    echo "the VF is back at uptime $(uptime_s): $(link_name "$DEV/virtfn0")," \
         "driver $(link_name "/sys/bus/pci/devices/$VF/driver")"
    wait "$pid"
    prc=$?
    cat "$log"
    echo "keel-perf exited with $prc at uptime $(uptime_s) (removal started at $t0)"
    grep -oE '"(path_switches|vf_returns|vf_ios|fallback_ios)": [0-9]+' /tmp/failover.json
    [ "$rc" -eq 0 ] || { echo "the kernel could not take the VF back"; return 1; }
    [ "$held" -eq 0 ] || { echo "keel-perf still held the VF's IOMMU group"; return 1; }
    [ "$erc" -eq 0 ] || { echo "the VF could not be enabled again"; return 1; }
    [ "$prc" -eq 0 ] || return 1
    grep -q "released" "$log" || { echo "keel never released the VF"; return 1; }
    grep -q "back on the bus" "$log" || { echo "keel never opened the VF again"; return 1; }
    grep -q "verify: .* 0 errors" "$log" || { echo "no clean verify"; return 1; }
    value() { grep -oE "\"$1\": [0-9]+" /tmp/failover.json | head -n 1 | grep -oE '[0-9]+$'; }
    [ "$(value path_switches)" = 1 ] || { echo "not one switch to the host path"; return 1; }
    [ "$(value vf_returns)" = 1 ] || { echo "not one return to the VF"; return 1; }
    [ "$(value vf_ios)" -gt 0 ] && [ "$(value fallback_ios)" -gt 0 ] ||
        { echo "the IO did not go over both paths"; return 1; }
}

# A function-level reset of the VF through VFIO (VFIO_DEVICE_RESET): its controller comes back
# disabled; what was written before is still there (vf-verify follows).
step_vf_flr() {
    vf_step vf reset 0 || return 1
}

step_sriov_disable() {
    echo "# keelctl --card $PF_CARD vf disable"
    timeout "$STEP_TIMEOUT" keelctl --card "$PF_CARD" vf disable || return 1
    n=$(cat "$DEV/sriov_numvfs")
    echo "$BDF: sriov_numvfs $n"
    [ "$n" -eq 0 ]
}

keelctl_step() {
    echo "# keelctl --card vfio:$BDF $*"
    timeout "$STEP_TIMEOUT" keelctl --card "vfio:$BDF" "$@"
}

step_pattern() {
    bytes=$(((COUNT0 + 1) * LBA_BYTES))
    echo "# dd if=/dev/urandom of=$PAT bs=$LBA_BYTES count=$((COUNT0 + 1))"
    dd if=/dev/urandom of="$PAT" bs="$LBA_BYTES" count=$((COUNT0 + 1)) || return 1
    size=$(wc -c <"$PAT")
    md5=$(md5sum "$PAT" | cut -d' ' -f1)
    echo "$PAT: $size bytes, md5 $md5"
    [ "$size" -eq "$bytes" ] || { echo "$PAT holds $size bytes, not $bytes"; return 1; }
}

# The pattern's blocks read back from function $1 (an address) at LBA $2 into $BACK.
read_back() {
    rm -f "$BACK"
    echo "# keelctl --card vfio:$1 read -s $2 -c $COUNT0 > $BACK"
    timeout "$STEP_TIMEOUT" keelctl --card "vfio:$1" read -s "$2" -c "$COUNT0" >"$BACK"
    rc=$?
    echo "$BACK: $(wc -c <"$BACK") bytes, md5 $(md5sum "$BACK" | cut -d' ' -f1)"
    return "$rc"
}

step_cmp() {
    echo "# cmp $PAT $BACK"
    cmp "$PAT" "$BACK" && echo "identical"
}

kernel_vfio() {
    run_step modules step_modules || return
    run_step pci step_pci
    rc=$?
    say "PCI bdf=$BDF class=$CLASS vendor=$(cat "$DEV/vendor" 2>/dev/null)" \
        "device=$(cat "$DEV/device" 2>/dev/null) driver=$(link_name "$DEV/driver")" \
        "totalvfs=${TOTALVFS:-none} numvfs=${NUMVFS:-none} group=${GROUP:--}"
    [ "$rc" -eq 0 ] || return
    if run_step pattern step_pattern; then
        say "PATTERN bytes=$(wc -c <"$PAT") md5=$(md5sum "$PAT" | cut -d' ' -f1)"
    fi
    run_step sriov-list step_sriov_list
    if run_step sriov-enable step_sriov_enable; then
        run_step vf-id-ctrl vf_step id-ctrl
        run_step vf-write vf_step write -s "$VF_START" -c "$COUNT0" -d "$PAT"
        run_step vf-flr step_vf_flr
        run_step vf-verify vf_step verify -s "$VF_START" -c "$COUNT0" -d "$PAT"
        run_step vf-id-ns vf_step id-ns
        run_step vf-read read_back "$VF" "$VF_START"
        run_step vf-cmp step_cmp
        run_step vf-perf step_vf_perf
        run_step vf-failover step_vf_failover
    fi
    run_step sriov-disable step_sriov_disable
    run_step bind-vfio step_bind_vfio || return
    # keelctl's commands do not depend on each other's success: each runs, each is reported.
    run_step id-ctrl keelctl_step id-ctrl
    run_step id-ns keelctl_step id-ns
    run_step write keelctl_step write -s "$START" -c "$COUNT0" -d "$PAT"
    run_step verify keelctl_step verify -s "$START" -c "$COUNT0" -d "$PAT"
    run_step read read_back "$BDF" "$START"
    run_step cmp step_cmp
}

kernel_vfio
