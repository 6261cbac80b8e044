# keel's vTPM guest scenario: sourced by guest_init.sh (PID 1 of the minimal guest, installed as
# /etc/keel/vtpm.sh) when the kernel command line says keel.scenario=vtpm, once the virtio
# modules are loaded. Uses guest_init.sh's say, fail, param, run_step; its finish follows.
#
# The guest's TPM is keel's vTPM in its paravisor process (keel-vhost-blk --vtpm-ctrl), reached
# through QEMU's tpm-crb device and the kernel's inbox tpm_crb driver; the guest's disk is the
# same paravisor's vhost-user-blk device. keel-tpm (tests/vtpm/keel_tpm.cpp) sends the TPM
# commands through /dev/tpmrm0, the kernel's resource manager, as tpm2-tools would.
#
# Parameters (keel.NAME=VALUE): phase (seal, unseal or refused), digest (64 hex digits, the
# PCR 23 extend), secret (seal), blob (unseal: what seal printed), hold (seconds the seal
# phase waits after the extend: the host upgrades the paravisor meanwhile). The host bounds
# the whole boot's time.
#
# Markers, besides guest_init.sh's:
#   KEEL-STEP-BEGIN job=NAME uptime=S / KEEL-STEP-END job=NAME rc=N uptime=S (as guest_vfio.sh)
#   KEEL-PCR idx=N sha256=HEX when=before|after|later  a PCR as /sys/class/tpm/tpm0/pcr-sha256
#                                                  shows it (later: after the hold)
#   KEEL-SEALED blob=HEX                           the sealed object (seal phase)
#   KEEL-UNSEALED secret=TEXT                      what unseal gave back (unseal phase)
#   KEEL-TPM-REFUSED how=...                       refused phase: how the guest saw the failure
# Steps: seal phase: disk tpm-dev pcrs extend hold pcrs-later seal; unseal phase: disk tpm-dev pcrs unseal;
# refused phase: disk refused.

PHASE=$(param phase seal)
SYS=/sys/class/tpm/tpm0
DMESG_PATTERN='tpm|crb|virtio|vda|error|warn|bug|call trace|fault|oops|hung'
dmesg -n 1

step_disk() {
    # The same paravisor process serves the disk: its vhost-user-blk device must be there.
    i=0
    while [ ! -b /dev/vda ] && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    [ -b /dev/vda ] || { echo "no /dev/vda"; return 1; }
    echo "vda: $(cat /sys/block/vda/size) sectors"
}

step_tpm_dev() {
    i=0
    while [ ! -c /dev/tpmrm0 ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    ls -l /dev/tpm0 /dev/tpmrm0 || return 1
    major=$(cat "$SYS/tpm_version_major" 2>/dev/null)
    echo "tpm_version_major: $major"
    [ "$major" = 2 ]
}

print_pcrs() {
    for idx in "$@"; do
        v=$(cat "$SYS/pcr-sha256/$idx") || return 1
        say "PCR idx=$idx sha256=$v when=$WHEN"
    done
}

step_pcrs() {
    WHEN=before print_pcrs 0 1 2 3 4 5 6 7 23
}

step_extend() {
    keel-tpm pcrextend 23 "$(param digest '')" || return 1
    WHEN=after print_pcrs 23
}

step_hold() {
    sleep "$(param hold 0)"
}

step_pcrs_later() {
    WHEN=later print_pcrs 23
}

step_seal() {
    blob=$(keel-tpm seal "$(param secret '')") || return 1
    say "SEALED blob=$blob"
}

step_unseal() {
    secret=$(keel-tpm unseal "$(param blob '')") || return 1
    say "UNSEALED secret=$secret"
}

step_refused() {
    # A refused state: the TPM answers every command with TPM_RC_FAILURE. The kernel's probe
    # fails (no /dev/tpmrm0) or, if a device is there, a command through it must fail.
    sleep 1
    if [ ! -c /dev/tpmrm0 ]; then
        say "TPM-REFUSED how=no-device"
        return 0
    fi
    if keel-tpm getrandom 8; then
        echo "the TPM answered GetRandom: its state was not refused"
        return 1
    fi
    say "TPM-REFUSED how=command-failed"
}

run_step disk step_disk
case "$PHASE" in
    seal)
        run_step tpm-dev step_tpm_dev && run_step pcrs step_pcrs &&
            run_step extend step_extend && run_step hold step_hold &&
            run_step pcrs-later step_pcrs_later && run_step seal step_seal
        ;;
    unseal)
        run_step tpm-dev step_tpm_dev && run_step pcrs step_pcrs && run_step unseal step_unseal
        ;;
    refused)
        run_step refused step_refused
        ;;
    *)
        fail "unknown vtpm phase $PHASE"
        ;;
esac
