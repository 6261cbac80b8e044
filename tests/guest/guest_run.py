"""One guest run: the backend, QEMU's command line and process, the failover signals sent
while the guest runs, and the result dict that guest_verdict.py judges.
"""

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time

from guest_backend import Backend, become_subreaper, cpu_delta, cpu_sample
from guest_console import Console, read_new, watch_end
from guest_env import Failure, FileLock, accel_args, detect_accel, find_tool, say
from guest_initramfs import build_guest
from guest_verdict import check_console, host_verify

class RunConfig:
    def __init__(self, **kw):
        self.build_dir = "build"
        self.accel = "auto"
        self.smp = 1
        self.mem_mib = 1024
        self.queues = 1
        self.size_mib = 128        # the disk
        self.fio_size = "64M"      # the region fio works on
        self.bs = "4k"
        self.iodepth = 16
        self.runtime = 5           # seconds of the time-based jobs
        self.jobs = "verify-write,randread"
        self.numjobs = 1
        self.timeout = None        # whole run; default depends on accel
        self.boot_timeout = 120
        self.failover = None       # (remove_after_s, restore_after_s) after verify-write starts
        # The VF is removed before QEMU connects (remove_signal once the socket is up): the guest
        # boots on the host path; with failover=(0, T) the VF is restored T s into verify-write.
        self.vf_absent_at_boot = False
        self.remove_signal = signal.SIGUSR1
        self.restore_signal = signal.SIGUSR2
        self.host_verify = True
        self.image_offset = 0
        self.workdir = None
        self.expect_backend_log = []  # regexes that must appear in the backend's output
        self.kernel = None         # another guest: its kernel and initramfs ...
        self.initrd = None
        self.append = ""           # ... and more kernel command line
        self.image = None          # an existing disk image to serve (kept; no host verify)
        # An image the caller owns and the backend serves a slice of (a card's, shared by
        # guests): not created or removed here; the host verify reads it at image_offset.
        self.shared_image = None
        self.take_qemu_lock = True  # False: the caller holds it (several QEMUs of one test)
        # How the VF is removed and restored (default: remove_signal / restore_signal to the
        # backend); callables for a card in another process (keelctl vf remove/restore).
        self.remove_action = None
        self.restore_action = None
        self.seed = None
        # Backend restarts under the guest: [(seconds into verify-write, signal), ...]. QEMU
        # connects with reconnect=1 and the new backend resubmits what the old one had taken
        # (vhost-user inflight tracking); the guest's verify must not notice but a pause.
        self.restarts = []
        self.expect_resubmitted = False  # some restart must find requests to resubmit
        self.before_upgrade = None  # called right before each SIGHUP upgrade
        # {regex: n}: lines of the backend's output that must match exactly n times
        self.backend_log_counts = {}
        for k, v in kw.items():
            if not hasattr(self, k):
                raise TypeError(f"unknown run option {k}")
            setattr(self, k, v)


def _short_socket_dir(workdir):
    # sun_path holds 108 bytes: fall back to /tmp when the build dir is deep.
    if len(os.path.join(workdir, "vhost.sock")) < 100:
        return workdir
    return tempfile.mkdtemp(prefix="keel-guest-")


def format_backend(template, **values):
    argv = shlex.split(template) if isinstance(template, str) else list(template)
    return [a.format(**values) for a in argv]


def run_guest(cfg, backend_template, label="guest"):
    """Boots the guest against the backend; returns a result dict, raises Failure/Skip."""
    t_start = time.monotonic()
    accel, accel_why = detect_accel(cfg.accel)
    qemu = find_tool("qemu-system-x86_64", "qemu-system-x86")
    if cfg.kernel:
        guest = {"kernel": cfg.kernel, "initrd": cfg.initrd, "version": os.path.basename(
            cfg.kernel)}
        for p in (cfg.kernel, cfg.initrd):
            if p and not os.path.isfile(p):
                raise Failure(f"{p}: no such file")
    else:
        guest = build_guest(cfg.build_dir)
    timeout = cfg.timeout or (150 if accel == "kvm" else 300)
    runs = os.path.join(os.path.abspath(cfg.build_dir), "guest", "runs")
    os.makedirs(runs, exist_ok=True)
    _prune_runs(runs, keep=30)
    workdir = cfg.workdir or tempfile.mkdtemp(prefix=f"{label}-", dir=runs)
    os.makedirs(workdir, exist_ok=True)
    sockdir = _short_socket_dir(workdir)
    sock = os.path.join(sockdir, "vhost.sock")
    own_image = not cfg.image and not cfg.shared_image
    image = os.path.abspath(cfg.image or cfg.shared_image or os.path.join(workdir, "disk.img"))
    console_path = os.path.join(workdir, "console.log")
    for p in (sock, image, console_path) if own_image else (sock, console_path):
        if os.path.exists(p):
            os.unlink(p)
    size_mib = cfg.size_mib
    if cfg.shared_image:
        if not os.path.isfile(image):
            raise Failure(f"{image}: no such image")
    elif cfg.image:
        if not os.path.isfile(image):
            raise Failure(f"{image}: no such image")
        size_mib = os.path.getsize(image) >> 20
    else:
        # A fresh, zeroed image every run: a verify cannot pass on an earlier run's data.
        with open(image, "wb") as f:
            f.truncate(cfg.size_mib << 20)
    seed = cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(4), "little") | 1
    say(f"{label}: accel {accel} ({accel_why}); work dir {workdir}")

    result = {"label": label, "accel": accel, "accel_reason": accel_why,
              "kernel": guest["version"], "workdir": workdir, "queues": cfg.queues,
              "smp": cfg.smp, "fio_size": cfg.fio_size, "bs": cfg.bs, "iodepth": cfg.iodepth,
              "seed": seed, "jobs": {}, "problems": []}
    problems = result["problems"]
    argv = format_backend(backend_template, socket=sock, image=image, size_mib=size_mib,
                          queues=cfg.queues)
    result["backend"] = shlex.join(argv)
    backend = Backend(argv, os.path.join(workdir, "backend.log"))
    if any(sig == signal.SIGHUP for _, sig in cfg.restarts):
        become_subreaper()  # an upgraded backend is the old one's child, orphaned
    qemu_proc = None
    console = Console()
    lock = (FileLock(os.path.join(runs, "qemu.lock"), "the other guest (one QEMU at a time)")
            if cfg.take_qemu_lock else contextlib.nullcontext())
    with lock:
        try:
            backend.start()
            backend.wait_socket(sock, 30)
            if cfg.vf_absent_at_boot:
                _remove_vf_before_boot(cfg, backend, result)
            cmdline = " ".join([
                "console=ttyS0", "panic=-1", "loglevel=4", "mitigations=off",
                f"keel.size={cfg.fio_size}", f"keel.bs={cfg.bs}", f"keel.iodepth={cfg.iodepth}",
                f"keel.runtime={cfg.runtime}", f"keel.seed={seed}", f"keel.jobs={cfg.jobs}",
                f"keel.numjobs={cfg.numjobs}", cfg.append]).strip()
            qargv = [qemu, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                     "-machine", "q35", *accel_args(accel), "-smp", str(cfg.smp),
                     "-m", f"{cfg.mem_mib}M",
                     "-object", f"memory-backend-memfd,id=mem,size={cfg.mem_mib}M,share=on",
                     "-numa", "node,memdev=mem",
                     "-kernel", guest["kernel"],
                     *(["-initrd", guest["initrd"]] if guest["initrd"] else []),
                     "-append", cmdline,
                     "-chardev", f"file,id=con,path={console_path}", "-serial", "chardev:con",
                     "-chardev", f"socket,id=vblk,path={sock}" +
                     (",reconnect=1" if cfg.restarts else ""),
                     "-device", f"vhost-user-blk-pci,chardev=vblk,num-queues={cfg.queues}"]
            result["qemu"] = shlex.join(qargv)
            qlog = open(os.path.join(workdir, "qemu.log"), "wb")
            t_boot = time.monotonic()
            qemu_proc = subprocess.Popen(qargv, stdin=subprocess.DEVNULL, stdout=qlog,
                                         stderr=subprocess.STDOUT, start_new_session=True)
            _watch(cfg, result, console, backend, qemu_proc, console_path, t_boot, timeout)
        finally:
            if qemu_proc is not None and qemu_proc.poll() is None:
                os.killpg(qemu_proc.pid, signal.SIGKILL)
                qemu_proc.wait()
            result["backend_rc"] = backend.stop()
            if sockdir != workdir:
                shutil.rmtree(sockdir, ignore_errors=True)
    if result["backend_rc"] not in (0, -signal.SIGTERM) and not result.get("backend_died"):
        problems.append(f"backend exited with {result['backend_rc']} after SIGTERM")
    check_console(cfg, result, console)
    if cfg.restarts:
        # What the new backends took over (0 when a restart found nothing in flight).
        result["resubmitted"] = sum(
            int(n) for n in re.findall(r"resubmitting (\d+) requests", backend.log_tail(100000)))
        if cfg.expect_resubmitted and result["resubmitted"] == 0:
            problems.append("no restart found requests in flight to resubmit")
    if cfg.expect_backend_log or cfg.backend_log_counts:
        text = backend.log_tail(100000)
        for pat in cfg.expect_backend_log:
            if not re.search(pat, text, re.M):
                problems.append(f"backend output lacks /{pat}/")
        for pat, n in cfg.backend_log_counts.items():
            got = len(re.findall(pat, text, re.M))
            if got != n:
                problems.append(f"backend output has /{pat}/ {got} times, not {n}")
    jobs = cfg.jobs.split(",")
    overwritten = "verify-write" in jobs and "randwrite" in jobs[jobs.index("verify-write"):]
    if cfg.image:
        pass  # the guest's own filesystem is on it: fio wrote a file, not the raw disk
    elif overwritten:
        result["host_verify_blocks"] = "skipped: randwrite overwrote the verified blocks"
    elif cfg.host_verify and "verify-write" in jobs and not any(
            "verify-write" in p for p in problems):
        ok, n, err = host_verify(image, cfg, cfg.image_offset)
        result["host_verify_blocks"] = n
        if not ok:
            problems.append(f"host-side verify of {image} failed after the backend exited "
                            f"(data did not reach the image): {err}")
    result["wall_s"] = round(time.monotonic() - t_start, 1)
    result["loadavg"] = round(os.getloadavg()[0], 1)
    if problems:
        result["ok"] = False
        # CI keeps only this output: the backend's last words (its transitions and counters).
        result["backend_tail"] = backend.log_tail(30)
    else:
        result["ok"] = True
        if own_image:
            os.unlink(image)  # keep the logs, not the disk
    with open(os.path.join(workdir, "result.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    return result


def _prune_runs(runs, keep):
    """Only the newest `keep` run directories stay (each failed run keeps its image)."""
    dirs = [os.path.join(runs, d) for d in os.listdir(runs)
            if os.path.isdir(os.path.join(runs, d))]
    dirs.sort(key=os.path.getmtime)
    for d in dirs[:-keep] if len(dirs) > keep else []:
        shutil.rmtree(d, ignore_errors=True)


def _remove_vf(cfg, backend):
    if cfg.remove_action:
        cfg.remove_action()
    else:
        backend.signal(cfg.remove_signal)


def _restore_vf(cfg, backend):
    if cfg.restore_action:
        cfg.restore_action()
    else:
        backend.signal(cfg.restore_signal)


def _remove_vf_before_boot(cfg, backend, result):
    """Removes the VF before QEMU connects and waits (bounded) until the backend says so."""
    _remove_vf(cfg, backend)
    deadline = time.monotonic() + 10
    while "surprise-removed" not in backend.log_tail(200):
        if not backend.alive() or time.monotonic() > deadline:
            raise Failure(f"the backend did not report the VF removed within 10 s of "
                          f"{signal.Signals(cfg.remove_signal).name}:\n{backend.log_tail()}")
        time.sleep(0.05)
    result["vf_absent_at_boot"] = True
    say(f"VF removed before boot: sent {signal.Signals(cfg.remove_signal).name}")


def _watch(cfg, result, console, backend, qemu_proc, console_path, t_boot, timeout):
    problems = result["problems"]
    samples = {}
    failover = {}
    if cfg.failover:
        result["failover"] = failover
    restarts = []
    if cfg.restarts:
        result["restarts"] = restarts
    pos = 0
    done = False
    verify_start = None
    verify_end = None
    while True:
        now = time.monotonic()
        text, pos = read_new(console_path, pos)
        for kind, kv in console.feed(text, now):
            job = kv.get("job")
            if kind == "BOOT":
                result["boot_s"] = round(now - t_boot, 1)
                say(f"guest booted to /init in {result['boot_s']}s (kernel {kv.get('kernel')})")
            elif kind == "DISK":
                result["disk"] = kv
                say(f"guest disk: {kv}")
            elif kind == "FIO-START":
                samples[job] = cpu_sample(backend.pid)
                say(f"fio {job} started")
                if job == "verify-write":
                    verify_start = now
                if job == "verify-write" and cfg.failover:
                    failover["start"] = now
                    if cfg.vf_absent_at_boot:
                        failover["removed"] = now  # (since before boot) restore counts from here
            elif kind == "FIO-DONE":
                if job in samples and not restarts:  # (a restarted backend is another process)
                    result["jobs"].setdefault(job, {})["backend_cpu"] = cpu_delta(
                        samples[job], cpu_sample(backend.pid))
                result["jobs"].setdefault(job, {})["rc"] = int(kv.get("rc", "-1"))
                result["jobs"][job]["wall_s"] = round(now - samples.get(job, {"t": now})["t"], 1)
                say(f"fio {job} finished: rc {kv.get('rc')}")
                if job == "verify-write":
                    verify_end = now
                if job == "verify-write" and cfg.failover:
                    failover["end"] = now
            elif kind == "ERROR":
                problems.append(f"guest: {kv.get('msg')}")
                say(f"guest error: {kv.get('msg')}")
            elif kind == "DONE":
                result["guest_status"] = kv.get("status")
                done = True
        # Failover: surprise-remove the VF during the verify job, restore it later.
        if cfg.failover and "start" in failover and "end" not in failover:
            remove_after, restore_after = cfg.failover
            if "removed" not in failover and now - failover["start"] >= remove_after:
                _remove_vf(cfg, backend)
                failover["removed"] = now
                how = "keelctl" if cfg.remove_action else signal.Signals(cfg.remove_signal).name
                say(f"failover: removed the VF ({how}) "
                    f"{now - failover['start']:.1f}s into verify-write")
            elif ("removed" in failover and "restored" not in failover and
                  now - failover["removed"] >= restore_after):
                _restore_vf(cfg, backend)
                failover["restored"] = now
                how = "keelctl" if cfg.restore_action else signal.Signals(cfg.restore_signal).name
                say(f"failover: restored the VF ({how}) "
                    f"{now - failover['start']:.1f}s into verify-write")
        # Backend restarts: each at its time into verify-write, while the job runs.
        if verify_start is not None and verify_end is None and len(restarts) < len(cfg.restarts):
            at, sig = cfg.restarts[len(restarts)]
            if now - verify_start >= at and sig == signal.SIGHUP:
                if cfg.before_upgrade:
                    cfg.before_upgrade()
                pause_ms = backend.upgrade()
                restarts.append({"at_s": round(now - verify_start, 1), "signal": "SIGHUP",
                                 "down_s": round(pause_ms / 1000, 3)})
                say(f"upgrade: the backend handed over {now - verify_start:.1f}s into "
                    f"verify-write; the new process served after {pause_ms:.1f} ms")
            elif now - verify_start >= at:
                took = backend.restart(sig)
                restarts.append({"at_s": round(now - verify_start, 1),
                                 "signal": signal.Signals(sig).name, "down_s": round(took, 2)})
                say(f"restart: backend ended by {signal.Signals(sig).name} "
                    f"{now - verify_start:.1f}s into verify-write, started again")
        def backend_died():
            if backend.alive():
                return None
            result["backend_died"] = True
            return (f"backend died ({backend.proc.returncode}) while the guest ran: "
                    f"{backend.log_tail(10).strip()}")

        end = watch_end(result, console, qemu_proc, done, now, t_boot, cfg.boot_timeout, timeout,
                        console_path, check=backend_died)
        if end is not None:
            if end:
                problems.append(end)
            break
        time.sleep(0.05)
    result["guest_s"] = round(time.monotonic() - t_boot, 1)
    if cfg.restarts and len(restarts) < len(cfg.restarts):
        problems.append(f"{len(restarts)} of {len(cfg.restarts)} backend restarts happened "
                        f"during verify-write: make the job larger")
    if cfg.failover:
        for k in ("removed", "restored", "end"):
            if k in failover:
                failover[k + "_at_s"] = round(failover[k] - failover["start"], 1)
        if "removed" not in failover or "restored" not in failover:
            problems.append(f"failover was not injected during verify-write (the job took "
                            f"{failover.get('end_at_s')}s; remove after {cfg.failover[0]}s, "
                            f"restore {cfg.failover[1]}s later): make the job larger")


