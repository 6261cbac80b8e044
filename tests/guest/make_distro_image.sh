#!/usr/bin/env bash
# Make a real Debian guest image from Debian packages only, for keel-vhost-blk (docs/guest.md).
#
#   tests/guest/make_distro_image.sh OUT_DIR [SIZE_MIB] [SUITE]
#
# Writes OUT_DIR/debian.img (a raw ext4 filesystem, no partition table: the root disk),
# OUT_DIR/vmlinuz and OUT_DIR/initrd.img (the image's own kernel and initramfs, booted with
# QEMU's -kernel/-initrd, root=/dev/vda). Root has no password on the serial console. The
# image carries keel's guest check (tests/guest/guest_init.sh as a service) which runs only
# when the kernel command line says keel.check=1: fio verify + random read on a file of the
# root filesystem, results on ttyS0 between KEEL-* markers, then power-off - so
# run_guest.py can drive and judge a real distribution exactly as it does the minimal guest.
#
# Needs root, mmdebstrap and e2fsprogs (apt-get install mmdebstrap e2fsprogs). Takes 5-25
# minutes, mostly dpkg and mkinitramfs. ROOTFS=DIR reuses an unpacked tree from an earlier run.
set -euo pipefail

OUT="${1:?usage: make_distro_image.sh OUT_DIR [SIZE_MIB] [SUITE]}"
SIZE_MIB="${2:-2048}"
SUITE="${3:-bookworm}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() { echo "make_distro_image: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (mmdebstrap, chroot, mkfs.ext4 -d)"
command -v mmdebstrap >/dev/null || die "mmdebstrap missing: apt-get install mmdebstrap"
command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 missing: apt-get install e2fsprogs"

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
ROOTFS="${ROOTFS:-$OUT/rootfs}"
if [ ! -e "$ROOTFS/etc/os-release" ]; then
  rm -rf "$ROOTFS"
  mmdebstrap --variant=minbase \
    --include=linux-image-amd64,initramfs-tools,systemd-sysv,udev,fio \
    "$SUITE" "$ROOTFS"
fi

# Root login without a password on the console; root filesystem on the vhost-user-blk disk.
chroot "$ROOTFS" passwd -d root >/dev/null
echo "/dev/vda / ext4 defaults 0 1" >"$ROOTFS/etc/fstab"
echo keel-guest >"$ROOTFS/etc/hostname"

# keel's guest check, off unless keel.check=1 is on the kernel command line.
install -m 0755 "$HERE/guest_init.sh" "$ROOTFS/usr/local/sbin/keel-guest-check"
cat >"$ROOTFS/etc/systemd/system/keel-guest-check.service" <<'EOF'
[Unit]
Description=keel guest check: fio verify and random read on the root disk, then power off
ConditionKernelCommandLine=keel.check=1
After=local-fs.target
Before=getty.target serial-getty@ttyS0.service

[Service]
Type=oneshot
ExecStart=/bin/sh /usr/local/sbin/keel-guest-check
StandardOutput=tty
StandardError=journal
TTYPath=/dev/ttyS0

[Install]
WantedBy=multi-user.target
EOF
mkdir -p "$ROOTFS/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/keel-guest-check.service \
  "$ROOTFS/etc/systemd/system/multi-user.target.wants/keel-guest-check.service"

cp -L "$ROOTFS/vmlinuz" "$OUT/vmlinuz"
cp -L "$ROOTFS/initrd.img" "$OUT/initrd.img"
rm -f "$OUT/debian.img"
truncate -s "${SIZE_MIB}M" "$OUT/debian.img"
mkfs.ext4 -q -F -L keel-root -d "$ROOTFS" "$OUT/debian.img"
echo "make_distro_image: $OUT/debian.img (${SIZE_MIB} MiB), $OUT/vmlinuz, $OUT/initrd.img"
