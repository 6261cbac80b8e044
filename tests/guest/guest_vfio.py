"""The kernel-vfio guest: keelctl inside the guest drives an NVMe controller through the
guest's own kernel VFIO. QEMU gives the guest an emulated Intel IOMMU and its SR-IOV capable
NVMe controller (nvme-subsys + nvme with sriov_max_vfs); the guest (guest_vfio.sh, sourced by
/init) shows the controller as sysfs sees it, hands it to vfio-pci and runs keelctl id-ctrl,
id-ns, write, verify and read on it. This is the host's side: QEMU's command line, the
console's STEP markers, and the verdict: every step must exit 0, the kernel must log no DMA
fault, and the controller's backing file must hold the pattern the guest wrote.
"""

import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import tempfile
import time

from guest_console import DMESG_BAD, Console, read_new, watch_end
from guest_env import Failure, FileLock, Skip, accel_args, detect_accel, find_tool, say
from guest_initramfs import build_guest

# The controller QEMU gives the guest (the line of /work/shared/notes/qemu-sriov-nvme.md) and
# where the guest finds it: behind the first root port, bus 1.
PF_BDF = "0000:01:00.0"
SRIOV_MAX_VFS = 2
NVME_DEVICE = ("nvme,id=nvme0,serial=deadbeef,subsys=subsys0,bus=rp0,"
               f"sriov_max_vfs={SRIOV_MAX_VFS},sriov_vq_flexible=4,sriov_vi_flexible=2,"
               "max_ioqpairs=8,msix_qsize=5")
IMAGE_MIB = 64
LBA_BYTES = 512
# keelctl's write/verify/read: 128 blocks (64 KiB) from LBA 8 (-c is 0's based).
START_LBA = 8
COUNT0 = 127
# guest_vfio.sh's steps, in the order it runs them.
STEPS = ("modules", "pci", "pattern", "sriov-list", "sriov-enable", "vf-id-ctrl", "vf-write",
         "vf-flr", "vf-verify", "vf-id-ns", "vf-read", "vf-cmp", "vf-perf", "vf-failover",
         "sriov-disable", "bind-vfio", "id-ctrl", "id-ns", "write", "verify", "read", "cmp")
# Besides guest_console.DMESG_BAD: the IOMMU refusing a DMA (a buffer keelctl did not map).
DMESG_VFIO_BAD = re.compile(r"DMAR: \[DMA (Read|Write)|DMAR: DRHD: handling fault|"
                            r"\bDMAR:.*\bfault\b|vfio.*\b(fail|error)")


def qemu_supports(qemu):
    """Skips when this QEMU has no SR-IOV NVMe controller or no Intel IOMMU (QEMU < 7.1)."""
    res = subprocess.run([qemu, "-nodefaults", "-machine", "none", "-device", "nvme,help"],
                         capture_output=True, text=True, timeout=60)
    if "sriov_max_vfs" not in res.stdout + res.stderr:
        raise Skip(f"{qemu}'s nvme device has no sriov_max_vfs (SR-IOV needs QEMU 7.1 or "
                   f"later)")
    res = subprocess.run([qemu, "-nodefaults", "-machine", "none", "-device", "help"],
                         capture_output=True, text=True, timeout=60)
    for dev in ("intel-iommu", "nvme-subsys", "nvme-ns", "pcie-root-port"):
        if f'"{dev}"' not in res.stdout:
            raise Skip(f"{qemu} has no {dev} device")


def run_kernel_vfio(cfg, keelctl, label="kernel-vfio", perf=None):
    """Boots the guest and runs its steps; returns a result dict, raises Failure/Skip."""
    t_start = time.monotonic()
    accel, accel_why = detect_accel(cfg.accel)
    qemu = find_tool("qemu-system-x86_64", "qemu-system-x86")
    qemu_supports(qemu)
    if not os.access(keelctl, os.X_OK):
        raise Failure(f"{keelctl}: not an executable")
    binaries = [keelctl] + ([perf] if perf else [])
    guest = build_guest(cfg.build_dir, extra_binaries=binaries, flavor="kernel-vfio")
    timeout = cfg.timeout or (150 if accel == "kvm" else 300)
    runs = os.path.join(os.path.abspath(cfg.build_dir), "guest", "runs")
    os.makedirs(runs, exist_ok=True)
    workdir = cfg.workdir or tempfile.mkdtemp(prefix=f"{label}-", dir=runs)
    os.makedirs(workdir, exist_ok=True)
    image = os.path.join(workdir, "nvme.img")
    console_path = os.path.join(workdir, "console.log")
    for p in (image, console_path):
        if os.path.exists(p):
            os.unlink(p)
    # A fresh, zeroed image: the pattern found in it afterwards is this run's.
    with open(image, "wb") as f:
        f.truncate(IMAGE_MIB << 20)
    say(f"{label}: accel {accel} ({accel_why}); work dir {workdir}")

    result = {"label": label, "accel": accel, "accel_reason": accel_why,
              "kernel": guest["version"], "workdir": workdir, "smp": cfg.smp, "jobs": {},
              "steps": {}, "problems": []}
    problems = result["problems"]
    cmdline = " ".join([
        "console=ttyS0", "panic=-1", "loglevel=4", "mitigations=off", "intel_iommu=on",
        "iommu=pt", "keel.scenario=kernel-vfio", f"keel.bdf={PF_BDF}",
        f"keel.start={START_LBA}", f"keel.count={COUNT0}", f"keel.lba_bytes={LBA_BYTES}",
        cfg.append]).strip()
    # intel-iommu's interrupt remapping needs the split irqchip; caching-mode lets VFIO in
    # the guest map its DMA (QEMU has to see every mapping the guest's IOMMU driver makes).
    qargv = [qemu, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
             "-machine", "q35,kernel-irqchip=split", *accel_args(accel),
             "-smp", str(cfg.smp), "-m", f"{cfg.mem_mib}M",
             "-device", "intel-iommu,intremap=on,caching-mode=on",
             "-kernel", guest["kernel"], "-initrd", guest["initrd"], "-append", cmdline,
             "-chardev", f"file,id=con,path={console_path}", "-serial", "chardev:con",
             "-device", "pcie-root-port,id=rp0,chassis=1",
             "-drive", f"file={image},if=none,id=nvm0,format=raw",
             "-device", "nvme-subsys,id=subsys0",
             "-device", NVME_DEVICE,
             # shared: the namespace is attached to the secondary controllers (the VFs) too.
             "-device", f"nvme-ns,drive=nvm0,nsid=1,shared=true,"
                        f"logical_block_size={LBA_BYTES},physical_block_size={LBA_BYTES}"]
    result["qemu"] = shlex.join(qargv)
    console = Console()
    qemu_proc = None
    with FileLock(os.path.join(runs, "qemu.lock"), "the other guest (one QEMU at a time)"):
        try:
            qlog = open(os.path.join(workdir, "qemu.log"), "wb")
            t_boot = time.monotonic()
            qemu_proc = subprocess.Popen(qargv, stdin=subprocess.DEVNULL, stdout=qlog,
                                         stderr=subprocess.STDOUT, start_new_session=True)
            _watch(cfg, result, console, qemu_proc, console_path, t_boot, timeout)
        finally:
            if qemu_proc is not None and qemu_proc.poll() is None:
                os.killpg(qemu_proc.pid, signal.SIGKILL)
                qemu_proc.wait()
    check_steps(result, console)
    if result["steps"].get("write", {}).get("rc") == 0 and "pattern" in result:
        ok, why = image_holds_pattern(image, result["pattern"])
        result["image_check"] = "pattern found at LBA %d" % START_LBA if ok else why
        if not ok:
            problems.append(f"after QEMU exited, {image} {why}")
    result["wall_s"] = round(time.monotonic() - t_start, 1)
    result["loadavg"] = round(os.getloadavg()[0], 1)
    result["ok"] = not problems
    if result["ok"]:
        os.unlink(image)
    with open(os.path.join(workdir, "result.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    return result


def image_holds_pattern(image, pattern):
    """(ok, why): the controller's backing file holds the guest's pattern at START_LBA."""
    size = int(pattern.get("bytes", "0"))
    with open(image, "rb") as f:
        f.seek(START_LBA * LBA_BYTES)
        data = f.read(size)
    md5 = hashlib.md5(data).hexdigest()
    if size != (COUNT0 + 1) * LBA_BYTES or md5 != pattern.get("md5"):
        return False, (f"does not hold the guest's pattern at LBA {START_LBA} (md5 {md5} of "
                       f"{len(data)} bytes, the guest's {pattern.get('md5')} of {size})")
    return True, ""


def _watch(cfg, result, console, qemu_proc, console_path, t_boot, timeout):
    problems = result["problems"]
    steps = result["steps"]
    pos = 0
    done = False
    while True:
        now = time.monotonic()
        text, pos = read_new(console_path, pos)
        for kind, kv in console.feed(text, now):
            if kind == "BOOT":
                result["boot_s"] = round(now - t_boot, 1)
                say(f"guest booted to /init in {result['boot_s']}s (kernel {kv.get('kernel')})")
            elif kind == "STEP-BEGIN":
                steps[kv.get("job")] = {"t": now}
            elif kind == "STEP-END":
                st = steps.setdefault(kv.get("job"), {"t": now})
                st["rc"] = int(kv.get("rc", "-1"))
                st["wall_s"] = round(now - st.pop("t"), 1)
                say(f"step {kv.get('job')}: rc {st['rc']} ({st['wall_s']}s)")
            elif kind == "PCI":
                result["pci"] = kv
                say(f"guest PCI: {' '.join(f'{k}={v}' for k, v in kv.items())}")
            elif kind == "PATTERN":
                result["pattern"] = kv
            elif kind == "ERROR":
                problems.append(f"guest: {kv.get('msg')}")
                say(f"guest error: {kv.get('msg')}")
            elif kind == "DONE":
                result["guest_status"] = kv.get("status")
                done = True
        running = [s for s, st in steps.items() if "rc" not in st]
        end = watch_end(result, console, qemu_proc, done, now, t_boot, cfg.boot_timeout, timeout,
                        console_path, during=running[0] if running else "")
        if end is not None:
            if end:
                problems.append(end)
            break
        time.sleep(0.05)
    result["guest_s"] = round(time.monotonic() - t_boot, 1)


def check_steps(result, console):
    """Every step ran and exited 0; the first that did not is named first, with its output."""
    problems = result["problems"]
    steps = result["steps"]
    for name, st in steps.items():
        st["output"] = console.blocks.get(("STEP", name), [])
    failed = [s for s in STEPS if steps.get(s, {}).get("rc", 0) != 0]
    unfinished = [s for s in STEPS if s in steps and "rc" not in steps[s]]
    not_run = [s for s in STEPS if s not in steps]
    if failed:
        result["failed_step"] = failed[0]
    for name in failed:
        st = steps[name]
        out = [ln for ln in st["output"] if ln.strip()]
        problems.append(f"step {name} exited with {st['rc']}: " +
                        " | ".join(out[-6:] or ["(no output)"]))
    for name in unfinished:
        result.setdefault("failed_step", name)
        problems.append(f"step {name} started but never finished")
    if not_run and "guest_status" in result:
        why = f" (step {failed[0]} failed)" if failed else ""
        problems.append(f"steps not run{why}: {' '.join(not_run)}")
    pci = result.get("pci", {})
    if pci and pci.get("totalvfs") not in (str(SRIOV_MAX_VFS), None):
        problems.append(f"{PF_BDF}: the guest's sriov_totalvfs is {pci.get('totalvfs')}, QEMU "
                        f"was given sriov_max_vfs={SRIOV_MAX_VFS}")
    if result.get("guest_status") not in ("ok", None):
        if not failed and not unfinished:
            problems.append(f"guest reported status {result['guest_status']}")
    dmesg = console.blocks.get(("DMESG", ""), [])
    result["dmesg"] = dmesg
    bad = [ln for ln in dmesg if DMESG_BAD.search(ln) or DMESG_VFIO_BAD.search(ln)]
    if bad:
        problems.append("guest kernel reported: " + " | ".join(bad[:5]))
    if "guest_status" not in result and not any("did not" in p for p in problems):
        problems.append("guest never printed KEEL-DONE")


