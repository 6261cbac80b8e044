"""Two guests on one card's NIC (issue 16): keel-card serves a card with two NIC VFs and an
uplink to keel-hostd's software switch; each guest has its own paravisor process
(keel-vhost-net --card vfio-user:<nicvf socket> --switch <the switch>) and its own QEMU
(-netdev vhost-user + virtio-net-pci: the guest's inbox virtio_net driver).

The guests ping each other, then guest 1 runs iperf3 -c against guest 0's iperf3 -s for a few
seconds. In the middle of the stream guest 0's VF is surprise-removed on the card and restored
later: guest 0's traffic moves to the software switch (whose uplink reaches guest 1's VF through
the card's switch) and back, and the TCP stream must finish with all its data (iperf3 reports
no error; sent == received). tests/guest/guest_net.sh is the guests' side.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time

from guest_backend import Backend, become_subreaper
from guest_console import Console, read_new, watch_end
from guest_env import Failure, FileLock, accel_args, detect_accel, find_tool, say
from guest_initramfs import build_guest

# keel-card gives NIC VF n the MAC 02:4b:45:45:4c:<n> ("KEEL") and enables its port.
MACS = ("02:4b:45:45:4c:00", "02:4b:45:45:4c:01")
IPS = ("10.11.0.1", "10.11.0.2")
ROLES = ("server", "client")
STEPS = {"server": ("link", "iperf-server"), "client": ("link", "ping", "iperf")}
# Guest 0's paravisor went to the switch and came back; guest 1's never left its VF.
FAILED_OVER = [r"active -> draining at", r"fallback -> ready at [0-9.]+ s: VF answers again",
               r"ready -> active at [0-9.]+ s: traffic returns to the VF",
               r"\bvf_frames=[1-9]", r"\bfallback_frames=[1-9]", r"\bto_fallback=1\b",
               r"\bto_vf=1\b", r"\bbad=0\b"]
UNTOUCHED = [r"\bvf_frames=[1-9]", r"\bfallback_frames=0\b", r"\bto_fallback=0\b",
             r"\bbad=0\b"]
# iperf3's client counts what it wrote into its socket; the server what it read before the
# test's end: what was still in flight then (socket buffers, at most a few MiB) differs.
IN_FLIGHT_BYTES = 8 << 20


def _qemu_argv(qemu, accel, cfg, guest, workdir, sock, i, seconds):
    cmdline = " ".join(["console=ttyS0", "panic=-1", "loglevel=4", "mitigations=off",
                        "keel.scenario=net", f"keel.role={ROLES[i]}", f"keel.ip={IPS[i]}",
                        f"keel.peer={IPS[1 - i]}", f"keel.seconds={seconds}",
                        cfg.append]).strip()
    return [qemu, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-machine", "q35", *accel_args(accel), "-smp", "1", "-m", f"{cfg.mem_mib}M",
            "-object", f"memory-backend-memfd,id=mem,size={cfg.mem_mib}M,share=on",
            "-numa", "node,memdev=mem",
            "-kernel", guest["kernel"], "-initrd", guest["initrd"], "-append", cmdline,
            "-chardev", f"file,id=con,path={os.path.join(workdir, 'console.log')}",
            "-serial", "chardev:con",
            "-chardev", f"socket,id=vnet,path={sock}",
            "-netdev", "vhost-user,id=net0,chardev=vnet",
            # vectors=0: INTx. QEMU 7.2 under TCG (no irqfd) dereferences a null pointer in
            # virtio_pci_vector_unmask when vhost-user-net starts with MSI-X enabled (found here;
            # under KVM the irqfd path is taken). The guest driver is the same.
            "-device", f"virtio-net-pci,netdev=net0,mac={MACS[i]},vectors=0"]


def _card_fault(keelctl, run_dir, verb):
    r = subprocess.run([keelctl, "--card", f"vfio-user:{run_dir}/nicpf.sock", "nic", "vf", verb,
                        "0"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise Failure(f"keelctl nic vf {verb} 0: {(r.stderr or r.stdout).strip()}")


def run_net(cfg, apps_dir, remove_at=1.5, restore_after=2.0, seconds=8):
    """Returns a result dict: ok, problems, iperf summary, the paravisors' log tails."""
    exe = {n: os.path.join(apps_dir, n) for n in ("keel-card", "keel-hostd", "keel-vhost-net",
                                                  "keelctl")}
    for p in exe.values():
        if not os.access(p, os.X_OK):
            raise Failure(f"{p} is not built")
    iperf3 = find_tool("iperf3", "iperf3")
    qemu = find_tool("qemu-system-x86_64", "qemu-system-x86")
    accel = detect_accel(cfg.accel)
    become_subreaper()
    guest = build_guest(cfg.build_dir, extra_binaries=[iperf3], flavor="net")
    runs = os.path.join(os.path.abspath(cfg.build_dir), "guest", "runs")
    os.makedirs(runs, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="net-", dir=runs)
    run_dir = tempfile.mkdtemp(prefix="keel-net-")  # short socket paths
    switch = os.path.join(run_dir, "switch.sock")
    up_card, up_host = os.path.join(run_dir, "up-card"), os.path.join(run_dir, "up-host")
    hostd = Backend([exe["keel-hostd"], "--net-switch", switch, "--uplink",
                     f"dgram:{up_host},{up_card}", "--log-level", "info"],
                    os.path.join(workdir, "keel-hostd.log"))
    card = Backend([exe["keel-card"], "--card", "model", "--size-mib", "8", "--vfs", "1",
                    "--nic-vfs", "2", "--uplink", f"dgram:{up_card},{up_host}", "--run-dir",
                    run_dir, "--log-level", "info"], os.path.join(workdir, "keel-card.log"))
    pvs = [Backend([exe["keel-vhost-net"], "--socket", os.path.join(run_dir, f"net{i}.sock"),
                    "--card", f"vfio-user:{run_dir}/nicvf{i}.sock", "--mac", MACS[i],
                    "--switch", switch, "--log-level", "info"],
                   os.path.join(workdir, f"keel-vhost-net{i}.log")) for i in range(2)]
    result = {"workdir": workdir, "problems": [], "ok": False}
    problems = result["problems"]
    qemus, consoles, paths, poss = [], [Console(), Console()], [], [0, 0]
    steps = [{}, {}]
    done = [False, False]
    fault_log = []
    t0 = time.monotonic()
    try:
        with FileLock(os.path.join(runs, "qemu.lock"), "another guest test (QEMU)"):
            hostd.start()
            hostd.wait_socket(switch, 30)
            card.start()
            card.wait_socket(os.path.join(run_dir, "nicvf1.sock"), 60)
            for i, pv in enumerate(pvs):
                pv.start()
                pv.wait_socket(os.path.join(run_dir, f"net{i}.sock"), 30)
            for i in range(2):
                gdir = os.path.join(workdir, f"guest{i}")
                os.makedirs(gdir)
                paths.append(os.path.join(gdir, "console.log"))
                argv = _qemu_argv(qemu, accel, cfg, guest, gdir,
                                  os.path.join(run_dir, f"net{i}.sock"), i, seconds)
                say(f"guest {i}: {shlex.join(argv)}")
                qlog = open(os.path.join(gdir, "qemu.log"), "wb")
                qemus.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qlog,
                                              stderr=subprocess.STDOUT, start_new_session=True))
            t_boot = time.monotonic()
            iperf_began = None
            removed = restored = False
            timeout = cfg.timeout or 300
            ends = [None, None]
            while not all(e is not None for e in ends):
                now = time.monotonic()
                for i in range(2):
                    if ends[i] is not None:
                        continue
                    text, poss[i] = read_new(paths[i], poss[i])
                    for kind, kv in consoles[i].feed(text, now):
                        if kind == "STEP-BEGIN":
                            steps[i][kv.get("job")] = None
                            if i == 1 and kv.get("job") == "iperf":
                                iperf_began = now
                        elif kind == "STEP-END":
                            steps[i][kv.get("job")] = int(kv.get("rc", "-1"))
                            say(f"guest {i}: step {kv.get('job')}: rc {kv.get('rc')}")
                        elif kind == "ERROR":
                            problems.append(f"guest {i}: {kv.get('msg')}")
                        elif kind == "DONE":
                            done[i] = True

                    def backends_died():
                        for name, b in (("keel-card", card), ("keel-hostd", hostd),
                                        ("keel-vhost-net 0", pvs[0]),
                                        ("keel-vhost-net 1", pvs[1])):
                            if not b.alive():
                                return f"{name} exited:\n{b.log_tail()}"
                        return None
                    r = {"workdir": os.path.dirname(paths[i]), "boot_s": 0}
                    ends[i] = watch_end(r, consoles[i], qemus[i], done[i], now, t_boot,
                                        cfg.boot_timeout, timeout, paths[i],
                                        check=backends_died)
                # The VF leaves in the middle of the stream and comes back.
                if iperf_began is not None and not removed and now - iperf_began >= remove_at:
                    _card_fault(exe["keelctl"], run_dir, "remove")
                    fault_log.append(("removed", round(now - iperf_began, 2)))
                    say(f"guest 0: NIC VF 0 surprise-removed {now - iperf_began:.1f}s into iperf3")
                    removed = True
                elif removed and not restored and now - iperf_began >= remove_at + restore_after:
                    _card_fault(exe["keelctl"], run_dir, "restore")
                    fault_log.append(("restored", round(now - iperf_began, 2)))
                    say(f"guest 0: NIC VF 0 restored {now - iperf_began:.1f}s into iperf3")
                    restored = True
                time.sleep(0.05)
            for i in range(2):
                if ends[i]:
                    problems.append(f"guest {i}: {ends[i]}")
    finally:
        for q in qemus:
            if q.poll() is None:
                os.killpg(q.pid, signal.SIGKILL)
                q.wait()
        rcs = [pv.stop() for pv in pvs]
        card_rc = card.stop()
        hostd_rc = hostd.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    result["wall_s"] = round(time.monotonic() - t0, 1)
    result["faults"] = fault_log
    for i in range(2):
        for name in STEPS[ROLES[i]]:
            rc = steps[i].get(name, "never ran")
            if rc != 0:
                block = [ln for ln in consoles[i].blocks.get(("STEP", name), []) if ln.strip()]
                problems.append(f"guest {i}: step {name}: rc {rc}: {' | '.join(block[-8:])}")
    for name, rc in (("keel-vhost-net 0", rcs[0]), ("keel-vhost-net 1", rcs[1]),
                     ("keel-card", card_rc), ("keel-hostd", hostd_rc)):
        if rc != 0:
            problems.append(f"{name} exited with {rc}")
    if not (removed and restored):
        problems.append("the VF was not removed and restored during iperf3 (it ended too soon?)")
    # iperf3's report: the stream finished, nothing lost.
    lines = consoles[1].blocks.get(("IPERF-JSON", ""), [])
    text = "\n".join(lines)
    try:
        doc = json.loads(text[text.find("{"):]) if "{" in text else None
    except json.JSONDecodeError:
        doc = None
    if doc is None:
        problems.append("no iperf3 report from guest 1")
    else:
        end = doc.get("end", {})
        sent = end.get("sum_sent", {})
        recv = end.get("sum_received", {})
        result["iperf"] = {"sent_bytes": sent.get("bytes"), "received_bytes": recv.get("bytes"),
                           "mbit_s": round(recv.get("bits_per_second", 0) / 1e6, 1),
                           "retransmits": sent.get("retransmits"),
                           "seconds": round(recv.get("seconds", 0), 2)}
        if doc.get("error"):
            problems.append(f"iperf3: {doc['error']}")
        if (not sent.get("bytes") or not recv.get("bytes") or
                not 0 <= sent["bytes"] - recv["bytes"] <= IN_FLIGHT_BYTES):
            problems.append(f"iperf3: sent {sent.get('bytes')} bytes, the server received "
                            f"{recv.get('bytes')}")
        if recv.get("seconds", 0) < seconds * 0.9:
            problems.append(f"iperf3: the stream lasted {recv.get('seconds')}s of {seconds}s")
    tails = [pv.log_tail(30) for pv in pvs]
    result["paravisor_tails"] = tails
    for pattern in FAILED_OVER:
        if not re.search(pattern, tails[0]):
            problems.append(f"keel-vhost-net 0: no line matching {pattern!r}")
    for pattern in UNTOUCHED:
        if not re.search(pattern, tails[1]):
            problems.append(f"keel-vhost-net 1: no line matching {pattern!r}")
    result["ok"] = not problems
    if result["ok"]:
        shutil.rmtree(workdir, ignore_errors=True)
    return result
