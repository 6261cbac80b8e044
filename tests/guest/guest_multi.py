"""Two guests on one card (issue 12): keel-card serves a card whose two VFs are two guests'
disks; each guest has its own paravisor process (keel-vhost-blk --card vfio-user:<vf socket>)
and its own QEMU, and both run fio verify at the same time. Guest 0's VF is pulled from it
during its verify job (keelctl vf remove, then restore): guest 0 fails over and back with no
error, guest 1 never leaves its VF. Every block each guest wrote is read back on the host from
its slice of the card's image.
"""

import copy
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from guest_backend import Backend
from guest_env import Failure, FileLock, say
from guest_run import run_guest

# Guest 0 (its VF pulled and put back) and guest 1 (never touched), from their paravisors' exit
# reports.
FAILED_OVER = [r"\bto_fallback=[1-9]", r"\bto_vf=[1-9]", r"\bfallback_ios=[1-9]", r"\berrors=0\b"]
UNTOUCHED = [r"\bto_fallback=0\b", r"\bvf_ios=[1-9]", r"\bfallback_ios=0\b", r"\berrors=0\b"]


def run_two_guests(cfg, apps_dir, card="model"):
    """Returns (ok, [result of guest 0, result of guest 1], card log tail)."""
    keel_card = os.path.join(apps_dir, "keel-card")
    keelctl = os.path.join(apps_dir, "keelctl")
    keel_vhost = os.path.join(apps_dir, "keel-vhost-blk")
    for exe in (keel_card, keelctl, keel_vhost):
        if not os.access(exe, os.X_OK):
            raise Failure(f"{exe} is not built")
    runs = os.path.join(os.path.abspath(cfg.build_dir), "guest", "runs")
    os.makedirs(runs, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="two-guests-", dir=runs)
    run_dir = tempfile.mkdtemp(prefix="keel-card-")  # short socket paths
    image = os.path.join(workdir, "card.img")
    size = cfg.size_mib
    with open(image, "wb") as f:
        f.truncate(2 * size << 20)
    card_proc = Backend([keel_card, "--card", card, "--image", image, "--size-mib",
                         str(2 * size), "--vfs", "2", "--queues", str(cfg.queues), "--run-dir",
                         run_dir, "--log-level", "info"], os.path.join(workdir, "keel-card.log"))
    pf = f"vfio-user:{run_dir}/pf.sock"

    def keelctl_vf(verb):
        r = subprocess.run([keelctl, "--card", pf, "vf", verb, "0"], capture_output=True,
                           text=True, timeout=60)
        if r.returncode != 0:
            raise Failure(f"keelctl vf {verb} 0: {r.stderr.strip()}")

    results = [None, None]
    errors = [None, None]
    try:
        with FileLock(os.path.join(runs, "qemu.lock"), "the other guest test (QEMU)"):
            card_proc.start()
            card_proc.wait_socket(os.path.join(run_dir, "vf1.sock"), 60)
            cfgs = []
            for i in range(2):
                c = copy.copy(cfg)
                c.shared_image = image
                c.image_offset = i * size << 20
                c.take_qemu_lock = False
                c.workdir = os.path.join(workdir, f"guest{i}")
                if i == 0:
                    c.failover = cfg.failover or (1.0, 1.5)
                    c.remove_action = lambda: keelctl_vf("remove")
                    c.restore_action = lambda: keelctl_vf("restore")
                    c.expect_backend_log = list(FAILED_OVER)
                else:
                    c.failover = None
                    c.expect_backend_log = list(UNTOUCHED)
                cfgs.append(c)

            def one(i):
                template = (f"{keel_vhost} --socket {{socket}} --card vfio-user:{run_dir}/vf{i}.sock "
                            f"--image {{image}} --size-mib {size} --offset-mib {i * size} "
                            f"--queues {{queues}}")
                try:
                    results[i] = run_guest(cfgs[i], template, f"guest{i}")
                except Exception as e:  # reported below, with the other guest's outcome
                    errors[i] = e

            threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
                time.sleep(1)  # the boots need not race each other for the first second
            for t in threads:
                t.join()
    finally:
        rc = card_proc.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    card_tail = card_proc.log_tail(12)
    for i, e in enumerate(errors):
        if e is not None:
            raise Failure(f"guest {i}: {e}") from e
    ok = all(r["ok"] for r in results) and rc == 0
    if rc != 0:
        say(f"keel-card exited with {rc}")
    if ok:
        os.unlink(image)
    return ok, results, card_tail


# The paravisor's upgrades on a card in another process (issue 14): each old keel-vhost-blk keeps
# the VF running and hands its state, DMA arena and card connection over; the card must see no
# controller enable after the first upgrade, one client connection in all, and no reset.
KEPT = [r"\berrors=0\b", r"\bkept_queue_pairs=[1-9]"]


def run_card_upgrade(cfg, apps_dir, card="model"):
    """One guest on VF 0 of keel-card; its keel-vhost-blk upgraded three times (SIGHUP) under
    fio verify. Returns (ok, result, card log tail)."""
    keel_card = os.path.join(apps_dir, "keel-card")
    keel_vhost = os.path.join(apps_dir, "keel-vhost-blk")
    for exe in (keel_card, keel_vhost):
        if not os.access(exe, os.X_OK):
            raise Failure(f"{exe} is not built")
    runs = os.path.join(os.path.abspath(cfg.build_dir), "guest", "runs")
    os.makedirs(runs, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix=f"card-upgrade-{card}-", dir=runs)
    run_dir = tempfile.mkdtemp(prefix="keel-card-")  # short socket paths
    image = os.path.join(workdir, "card.img")
    size = cfg.size_mib
    with open(image, "wb") as f:
        f.truncate(size << 20)
    card_log = os.path.join(workdir, "keel-card.log")
    card_proc = Backend([keel_card, "--card", card, "--image", image, "--size-mib", str(size),
                         "--vfs", "1", "--queues", str(cfg.queues), "--run-dir", run_dir,
                         "--log-level", "info"], card_log)
    enables_at_upgrade = []

    def enables():
        with open(card_log, errors="replace") as f:
            return sum(1 for line in f if "vf0: NVMe controller enabled" in line)

    c = copy.copy(cfg)
    c.shared_image = image
    c.image_offset = 0
    c.workdir = os.path.join(workdir, "guest")
    if not c.restarts:
        c.restarts = [(2.0, signal.SIGHUP), (4.0, signal.SIGHUP), (6.0, signal.SIGHUP)]
    ups = sum(1 for _, sig in c.restarts if sig == signal.SIGHUP)
    c.expect_backend_log = c.expect_backend_log or list(KEPT)
    c.backend_log_counts = {
        r"front end connected": 1,
        r"took over the front end's session from another process": ups,
        r"upgrade: VF kept running \(NVMe keepalive\)": ups,
        r"-> active: VF controller taken over running \(keepalive\)": ups,
    }
    c.before_upgrade = lambda: enables_at_upgrade.append(enables())
    template = (f"{keel_vhost} --socket {{socket}} --card vfio-user:{run_dir}/vf0.sock "
                f"--image {{image}} --size-mib {size} --queues {{queues}} --log-level info")
    try:
        card_proc.start()
        card_proc.wait_socket(os.path.join(run_dir, "vf0.sock"), 60)
        result = run_guest(c, template, f"card-upgrade-{card}")
    finally:
        rc = card_proc.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    card_tail = card_proc.log_tail(12)
    ok = result["ok"] and rc == 0
    final = enables()
    say(f"keel-card: VF 0 controller enables {final} in all; at the upgrades: "
        f"{enables_at_upgrade}")
    if len(enables_at_upgrade) != ups or any(n != final for n in enables_at_upgrade):
        say("FAIL: the VF's controller was enabled again during the upgrades (a reset)")
        ok = False
    counters = [ln for ln in card_tail.splitlines() if ln.startswith("vf0 ")]
    if not counters or "connections=1 " not in counters[-1] or " resets=0 " not in counters[-1]:
        say(f"FAIL: keel-card's VF 0 saw more than one connection or a reset: {counters}")
        ok = False
    if ok:
        os.unlink(image)
    return ok, result, card_tail
