#!/usr/bin/python3
"""Boot keel's minimal Linux guest on a vhost-user-blk backend and run fio inside it.

  run_guest.py build [--build-dir B]
      build (or reuse) the kernel + initramfs under B/guest

  run_guest.py run --backend 'CMD {socket} {image} {size_mib} {queues}' [options]
      one guest run against any vhost-user-blk server; placeholders are filled in

  run_guest.py test SCENARIO [--keel-bin PATH]
      a named run, as ctest calls it: qsd, keel-model, keel-sim, keel-model-failover,
      keel-sim-failover, keel-model-absent-vf (the VF is removed before the guest boots and
      restored during verify-write), keel-model-restart and keel-sim-restart (the backend
      killed or stopped and started again under verify-write; QEMU reconnects and the new
      process resubmits from the inflight record), keel-model-upgrade (three SIGHUP upgrades in
      place under verify-write: the session goes to a new process, QEMU never reconnects),
      keel-card-two-guests (two guests, each with its own
      paravisor process, on two VFs of one keel-card; one VF is pulled and put back),
      kernel-vfio (no vhost-user-blk: QEMU's SR-IOV NVMe controller behind an emulated Intel
      IOMMU; inside the guest, keelctl --keelctl-bin drives it through the kernel's VFIO)
      vtpm (the guest's TPM in its paravisor process: PCRs, extend, seal; a restart, unseal;
      a tampered state refused: three boots, tests/guest/guest_vtpm.py)
      net (two guests' inbox virtio_net on keel-vhost-net over two NIC VFs of one keel-card,
      with keel-hostd's software switch as fallback: ping, iperf3 with guest 0's VF removed
      and restored mid-stream: tests/guest/guest_net.py)

Exit status: 0 pass, 1 fail, 77 skipped (this machine cannot run it; the reason is printed).
See docs/guest.md.
"""

import argparse
import json
import os
import signal
import subprocess
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import guest_multi  # noqa: E402
import guest_net  # noqa: E402
import guest_vfio  # noqa: E402
import guest_vtpm  # noqa: E402
import keelguest  # noqa: E402

QSD = ("{qsd} --blockdev driver=file,node-name=disk0,filename={image} "
       "--export type=vhost-user-blk,id=vub0,node-name=disk0,addr.type=unix,"
       "addr.path={socket},writable=on,num-queues={queues}")
KEEL = "{keel} --socket {socket} --card {card} --image {image} --size-mib {size_mib} " \
       "--queues {queues}"
# What keel-vhost-blk prints when the VF goes away and comes back (see docs/guest.md).
# Its exit report counts the switches; the paravisor's error counter must stay 0 across them.
KEEL_FAILOVER_LOG = [r"\bto_fallback=[1-9]", r"\bto_vf=[1-9]", r"\bfallback_ios=[1-9]", r"\berrors=0\b"]
# A guest that boots while its VF is absent: served by the host path, then moved to the VF.
# The VF returns 6 s into verify-write (fio takes a few seconds to start under TCG): by then the
# host path has served the guest's boot and hundreds of fio's requests.
KEEL_ABSENT_VF_LOG = [r"absent\s+->\s+fallback", r"fallback\s+->\s+active", r"\bto_vf=[1-9]",
                      r"\bvf_ios=[1-9]", r"\bfallback_ios=[1-9]\d\d", r"\berrors=0\b"]


# A backend restarted under the guest: the last process's exit report shows no error; every
# process after the first was handed QEMU's inflight record (SET_INFLIGHT_FD) before its rings.
KEEL_RESTART_LOG = [r"\berrors=0\b", r"inflight record from the front end"]


def qsd_template():
    qsd = keelguest.find_tool("qemu-storage-daemon", "qemu-system-common")
    return QSD.replace("{qsd}", qsd)


def keel_template(keel_bin, card, extra=""):
    if not keel_bin or not os.access(keel_bin, os.X_OK):
        raise keelguest.Skip(f"keel-vhost-blk is not built ({keel_bin}): nothing to serve "
                             f"the guest from keel")
    t = KEEL.replace("{keel}", keel_bin).replace("{card}", card)
    return t + (" " + extra if extra else "")


def keel_help(keel_bin):
    try:
        res = subprocess.run([keel_bin, "--help"], capture_output=True, text=True, timeout=30)
    except OSError:
        return ""
    return res.stdout + res.stderr


def add_run_options(p):
    p.add_argument("--build-dir", default=os.environ.get("KEEL_BUILD_DIR", "build"))
    p.add_argument("--accel", choices=["auto", "kvm", "tcg"],
                   default=os.environ.get("KEEL_GUEST_ACCEL", "auto"))
    p.add_argument("--smp", type=int, default=1, help="vCPUs")
    p.add_argument("--mem-mib", type=int, default=1024)
    p.add_argument("--queues", type=int, default=1)
    p.add_argument("--size-mib", type=int, default=128, help="disk size")
    p.add_argument("--fio-size", default="64M", help="region fio writes and reads")
    p.add_argument("--bs", default="4k")
    p.add_argument("--iodepth", type=int, default=16)
    p.add_argument("--runtime", type=int, default=5, help="seconds of the random-read job")
    p.add_argument("--jobs", default="verify-write,randread",
                   help="comma list of verify-write, randread, randwrite")
    p.add_argument("--numjobs", type=int, default=1, help="fio jobs of the time-based runs")
    p.add_argument("--timeout", type=int, default=None, help="hard limit for the guest (s)")
    p.add_argument("--failover", default=None, metavar="REMOVE,RESTORE",
                   help="seconds into verify-write to send SIGUSR1 (remove the VF), then "
                        "seconds later to send SIGUSR2 (restore it)")
    p.add_argument("--vf-absent-at-boot", action="store_true",
                   help="send SIGUSR1 (remove the VF) before QEMU connects; with --failover "
                        "0,T the VF is restored T seconds into verify-write")
    p.add_argument("--restart", default=None, metavar="AT:SIG[,AT:SIG...]",
                   help="end the backend with SIG (KILL, TERM) AT seconds into verify-write and "
                        "start it again; QEMU reconnects (reconnect=1)")
    p.add_argument("--expect-backend-log", action="append", default=[], metavar="REGEX")
    p.add_argument("--no-host-verify", action="store_true",
                   help="skip re-reading the image on the host after the run")
    p.add_argument("--image-offset", type=int, default=0,
                   help="byte offset of the guest's disk inside the image (host verify)")
    p.add_argument("--kernel", default=None,
                   help="boot this kernel instead of the minimal guest's (docs/guest.md)")
    p.add_argument("--initrd", default=None, help="with --kernel: its initramfs")
    p.add_argument("--append", default="", help="more kernel command line")
    p.add_argument("--image", default=None,
                   help="serve this existing raw image (kept as it is; no host-side verify)")
    p.add_argument("--boot-timeout", type=int, default=120,
                   help="seconds until the guest's first KEEL-BOOT line")
    p.add_argument("--workdir", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", default=None, help="write the result here")


def config_from(args):
    failover = None
    if args.failover:
        a, b = args.failover.split(",")
        failover = (float(a), float(b))
    restarts = []
    for item in (args.restart.split(",") if args.restart else []):
        at, sig = item.split(":")
        restarts.append((float(at), getattr(signal, "SIG" + sig.upper().removeprefix("SIG"))))
    return keelguest.RunConfig(
        restarts=restarts,
        build_dir=args.build_dir, accel=args.accel, smp=args.smp, mem_mib=args.mem_mib,
        queues=args.queues, size_mib=args.size_mib, fio_size=args.fio_size, bs=args.bs,
        iodepth=args.iodepth, runtime=args.runtime, jobs=args.jobs, numjobs=args.numjobs,
        timeout=args.timeout, failover=failover, vf_absent_at_boot=args.vf_absent_at_boot,
        expect_backend_log=args.expect_backend_log,
        host_verify=not args.no_host_verify, image_offset=args.image_offset,
        workdir=args.workdir, seed=args.seed, kernel=args.kernel, initrd=args.initrd,
        append=args.append, image=args.image, boot_timeout=args.boot_timeout)


def finish(result, args):
    for line in keelguest.summarize(result):
        print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    return 0 if result["ok"] else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the guest kernel + initramfs")
    b.add_argument("--build-dir", default=os.environ.get("KEEL_BUILD_DIR", "build"))
    r = sub.add_parser("run", help="one run against a backend command")
    r.add_argument("--backend", required=True,
                   help="command line; {socket} {image} {size_mib} {queues} are filled in")
    r.add_argument("--label", default="guest")
    add_run_options(r)
    t = sub.add_parser("test", help="a named scenario (ctest)")
    t.add_argument("scenario", choices=["qsd", "keel-model", "keel-sim", "keel-model-failover",
                                        "keel-sim-failover", "keel-model-absent-vf",
                                        "keel-model-restart", "keel-sim-restart",
                                        "keel-model-upgrade", "keel-card-model-upgrade",
                                        "keel-card-sim-upgrade",
                                        "keel-card-two-guests", "kernel-vfio", "vtpm", "net"])
    t.add_argument("--keel-bin", default=None)
    t.add_argument("--keelctl-bin", default=None,
                   help="kernel-vfio: the keelctl to run in the guest (default B/apps/keelctl)")
    t.add_argument("--perf-bin", default=None,
                   help="kernel-vfio: the keel-perf to run in the guest (default B/bench/keel-perf)")
    t.add_argument("--keel-tpm-bin", default=None,
                   help="vtpm: the TPM client to run in the guest (default B/tests/vtpm/keel-tpm)")
    t.add_argument("--keelctl-target", default="1",
                   help="0 when the build has no keelctl target (kernel-vfio skips)")
    t.add_argument("--keel-target", default="1",
                   help="0 when the build has no keel-vhost-blk target (skip, not fail)")
    t.add_argument("--sim-target", default="1",
                   help="0 when the build has no Verilated card (keel-sim skips)")
    add_run_options(t)
    args = ap.parse_args()

    try:
        if args.cmd == "build":
            g = keelguest.build_guest(args.build_dir)
            print(json.dumps(g, indent=1))
            return 0
        if args.cmd == "run":
            cfg = config_from(args)
            return finish(keelguest.run_guest(cfg, args.backend, args.label), args)
        # test
        keelguest.detect_accel(args.accel)  # skip early, before building anything
        sc = args.scenario
        for tool, pkg in (("busybox", "busybox-static"), ("fio", "fio"),
                          ("dpkg", "dpkg"), ("depmod", "kmod"), ("ldd", "libc-bin")):
            if tool != "fio" or sc != "kernel-vfio":
                keelguest.find_tool(tool, pkg)
        cfg = config_from(args)
        if sc == "kernel-vfio":
            if args.keelctl_target in ("0", "", "false", "FALSE"):
                raise keelguest.Skip("this build has no keelctl target (apps/keelctl)")
            keelctl = args.keelctl_bin or os.path.join(args.build_dir, "apps", "keelctl")
            if not os.access(keelctl, os.X_OK):
                raise keelguest.Failure(f"keelctl is a target of this build but {keelctl!r} "
                                        f"is not there: build it first")
            cfg.smp = args.smp
            perf = args.perf_bin or os.path.join(args.build_dir, "bench", "keel-perf")
            if not os.access(perf, os.X_OK):
                raise keelguest.Failure(f"{perf!r} is not an executable (build keel-perf)")
            return finish(guest_vfio.run_kernel_vfio(cfg, os.path.abspath(keelctl),
                                                     perf=os.path.abspath(perf)), args)
        if sc == "vtpm":
            if args.keel_target in ("0", "", "false", "FALSE"):
                raise keelguest.Skip("this build has no keel-vhost-blk target")
            keel_bin = args.keel_bin or os.path.join(args.build_dir, "apps", "keel-vhost-blk")
            tpm_bin = args.keel_tpm_bin or os.path.join(args.build_dir, "tests", "vtpm",
                                                        "keel-tpm")
            r = guest_vtpm.run_vtpm(cfg, os.path.abspath(keel_bin), os.path.abspath(tpm_bin))
            print(f"vtpm: PCR0 {r.get('pcr0')}; PCR23 {r.get('pcr23')}; unsealed "
                  f"{r.get('unsealed')!r}; tampered state: {r.get('refused_how')}; "
                  f"{r['wall_s']}s; work dir {r['workdir']}", flush=True)
            print("paravisor:\n" + r.get("paravisor_tail", ""), flush=True)
            for p in r["problems"]:
                print(f"PROBLEM: {p}", flush=True)
            return 0 if r["ok"] else 1
        if sc == "net":
            if args.keel_target in ("0", "", "false", "FALSE"):
                raise keelguest.Skip("this build has no apps (keel-card, keel-vhost-net)")
            apps = os.path.dirname(args.keel_bin) if args.keel_bin else os.path.join(
                args.build_dir, "apps")
            r = guest_net.run_net(cfg, os.path.abspath(apps))
            print(f"net: iperf3 {r.get('iperf')}; VF faults {r.get('faults')}; {r['wall_s']}s; "
                  f"work dir {r['workdir']}", flush=True)
            for i, tail in enumerate(r.get("paravisor_tails", [])):
                print(f"keel-vhost-net {i}:\n{tail}", flush=True)
            for p in r["problems"]:
                print(f"PROBLEM: {p}", flush=True)
            return 0 if r["ok"] else 1
        if sc == "keel-card-two-guests":
            if args.keel_target in ("0", "", "false", "FALSE"):
                raise keelguest.Skip("this build has no apps (keel-card, keel-vhost-blk)")
            apps = os.path.dirname(args.keel_bin) if args.keel_bin else os.path.join(
                args.build_dir, "apps")
            ok, results, card_tail = guest_multi.run_two_guests(cfg, apps)
            for r in results:
                for line in keelguest.summarize(r):
                    print(line, flush=True)
            print("keel-card:\n" + card_tail, flush=True)
            return 0 if ok else 1
        if sc.startswith("keel-card-") and sc.endswith("-upgrade"):
            if args.keel_target in ("0", "", "false", "FALSE"):
                raise keelguest.Skip("this build has no apps (keel-card, keel-vhost-blk)")
            card = "sim" if "-sim-" in sc else "model"
            if card == "sim" and args.sim_target in ("0", ""):
                raise keelguest.Skip("this build has no Verilated card (KEEL_WITH_SIM=OFF)")
            if args.fio_size == "64M":
                cfg.fio_size = "120M"  # the verify job outlasts the three upgrades (2, 4, 6 s)
            apps = os.path.dirname(args.keel_bin) if args.keel_bin else os.path.join(
                args.build_dir, "apps")
            ok, result, card_tail = guest_multi.run_card_upgrade(cfg, apps, card)
            for line in keelguest.summarize(result):
                print(line, flush=True)
            print("keel-card:\n" + card_tail, flush=True)
            return 0 if ok else 1
        if sc == "qsd":
            template = qsd_template()
        else:
            if args.keel_target in ("0", "", "false", "FALSE"):
                raise keelguest.Skip("this build has no keel-vhost-blk target "
                                     "(apps/keel-vhost-blk)")
            card = "sim" if sc.startswith("keel-sim") else "model"
            if card == "sim" and args.sim_target in ("0", ""):
                raise keelguest.Skip("this build has no Verilated card (KEEL_WITH_SIM=OFF)")
            keel_bin = args.keel_bin
            if keel_bin is None:
                keel_bin = os.path.join(args.build_dir, "apps", "keel-vhost-blk")
            if args.keel_bin == "" or not os.access(keel_bin, os.X_OK):
                if args.keel_bin is not None and args.keel_target not in ("0", ""):
                    raise keelguest.Failure(f"keel-vhost-blk is a target of this build but "
                                            f"{keel_bin!r} is not there: build it first")
            template = keel_template(keel_bin, card)
            if sc.endswith("-failover") or sc.endswith("-absent-vf"):
                if "SIGUSR1" not in keel_help(keel_bin):
                    raise keelguest.Skip(f"{keel_bin} --help says nothing of SIGUSR1 (remove the "
                                         f"VF) / SIGUSR2 (restore it): it cannot be failed "
                                         f"over under a guest yet")
                absent = sc.endswith("-absent-vf")
                cfg.vf_absent_at_boot = cfg.vf_absent_at_boot or absent
                if cfg.failover is None:
                    cfg.failover = (0.0, 6.0) if absent else (3.0, 4.0)
                if not cfg.expect_backend_log:
                    cfg.expect_backend_log = list(KEEL_ABSENT_VF_LOG if absent
                                                  else KEEL_FAILOVER_LOG)
                # Long enough that the VF leaves and returns while fio writes and verifies.
                if args.fio_size == "64M":
                    cfg.fio_size = "96M"
            if sc.endswith("-upgrade"):
                # Three in-place upgrades (SIGHUP) under the verify job: each time the new
                # process takes the session over; QEMU never reconnects.
                if not cfg.restarts:
                    cfg.restarts = [(2.0, signal.SIGHUP), (4.0, signal.SIGHUP),
                                    (6.0, signal.SIGHUP)]
                if not cfg.expect_backend_log:
                    cfg.expect_backend_log = [r"\berrors=0\b"]
                cfg.backend_log_counts = {
                    r"front end connected": 1,  # the one connection QEMU ever made
                    r"took over the front end's session from another process":
                        sum(1 for _, sig in cfg.restarts if sig == signal.SIGHUP),
                    r"front end disconnected": 1,  # at the end, when QEMU exits
                }
                if args.fio_size == "64M":
                    cfg.fio_size = "96M"
            if sc.endswith("-restart"):
                # A crash, a clean stop, a crash: each time the new process takes the
                # connection QEMU re-makes and resubmits what the old one had taken.
                if not cfg.restarts:
                    cfg.restarts = [(2.0, signal.SIGKILL), (5.0, signal.SIGTERM),
                                    (8.0, signal.SIGKILL)]
                if not cfg.expect_backend_log:
                    cfg.expect_backend_log = KEEL_RESTART_LOG
                if args.fio_size == "64M":
                    cfg.fio_size = "128M"
                # The Verilated card is slow enough (~1k IOPS) that the guest's queue is always
                # full at it: every crash finds requests in flight, which must be resubmitted.
                cfg.expect_resubmitted = card == "sim"
        return finish(keelguest.run_guest(cfg, template, sc), args)
    except keelguest.Skip as e:
        print(f"SKIP: {e}", flush=True)
        return keelguest.SKIP_CODE
    except keelguest.Failure as e:
        print(f"FAIL: {e}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
