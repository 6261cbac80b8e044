"""The vTPM guest: a real guest's inbox tpm_crb driver on keel's vTPM, hosted by the guest's
paravisor process (keel-vhost-blk --vtpm-ctrl), which also serves its disk.

Three boots of the same guest (tests/guest/guest_vtpm.sh runs in each):
  1. seal: the guest finds /dev/tpm0 and /dev/tpmrm0, reads its PCRs from sysfs (the firmware's
     measurements included), extends PCR 23; the paravisor is upgraded in place (SIGHUP: a new
     process takes the vTPM over, its volatile state resumed); PCR 23 still holds the extended
     value; the guest seals a secret.
  2. unseal, after a paravisor restart (the process stopped and started again on the same state
     file): the guest unseals the secret from the blob the first boot printed.
  3. refused: the state file with one byte flipped: the paravisor refuses it with a clear error,
     leaves the file as it is, and the guest sees a failed TPM.
The host checks each boot's markers, that PCR 23 after the extend is SHA-256(before || digest),
and the paravisor's log.
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

from guest_backend import Backend, become_subreaper
from guest_console import MARKER, Console, parse_kv, read_new, watch_end
from guest_env import Failure, FileLock, accel_args, detect_accel, find_tool, say
from guest_initramfs import build_guest

GUEST_NAME = "vtpm-guest-a"
SECRET = "keel-sealed-secret-42"
DIGEST = hashlib.sha256(b"keel vtpm guest test").hexdigest()
STEPS = {"seal": ("disk", "tpm-dev", "pcrs", "extend", "hold", "pcrs-later", "seal"),
         "unseal": ("disk", "tpm-dev", "pcrs", "unseal"),
         "refused": ("disk", "refused")}
REFUSED_LOG = re.compile(r"authentication failed: the state was tampered with")


def _qemu_argv(qemu, accel, cfg, guest, workdir, vhost_sock, tpm_sock, append):
    cmdline = " ".join(["console=ttyS0", "panic=-1", "loglevel=4", "mitigations=off",
                        "keel.scenario=vtpm", *append, cfg.append]).strip()
    return [qemu, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-machine", "q35", *accel_args(accel), "-smp", "1", "-m", f"{cfg.mem_mib}M",
            "-object", f"memory-backend-memfd,id=mem,size={cfg.mem_mib}M,share=on",
            "-numa", "node,memdev=mem",
            "-kernel", guest["kernel"], "-initrd", guest["initrd"], "-append", cmdline,
            "-chardev", f"file,id=con,path={os.path.join(workdir, 'console.log')}",
            "-serial", "chardev:con",
            "-chardev", f"socket,id=vblk,path={vhost_sock}",
            "-device", "vhost-user-blk-pci,chardev=vblk,num-queues=1",
            "-chardev", f"socket,id=chrtpm,path={tpm_sock}",
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
            "-device", "tpm-crb,tpmdev=tpm0"]


def _boot(cfg, qemu, accel, guest, workdir, backend, vhost_sock, tpm_sock, phase, append,
          after_step=None):
    """One boot of the guest; returns {"steps", "markers", "problems", "console"}.
    after_step(name) is called when the guest ends a step."""
    bootdir = os.path.join(workdir, phase)
    os.makedirs(bootdir, exist_ok=True)
    console_path = os.path.join(bootdir, "console.log")
    qargv = _qemu_argv(qemu, accel, cfg, guest, bootdir, vhost_sock, tpm_sock,
                       [f"keel.phase={phase}", *append])
    out = {"phase": phase, "steps": {}, "markers": [], "problems": [], "qemu": shlex.join(qargv)}
    console = Console()
    timeout = cfg.timeout or 240
    with open(os.path.join(bootdir, "qemu.log"), "wb") as qlog:
        t_boot = time.monotonic()
        proc = subprocess.Popen(qargv, stdin=subprocess.DEVNULL, stdout=qlog,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            pos, done = 0, False
            result = {"workdir": bootdir}
            while True:
                now = time.monotonic()
                text, pos = read_new(console_path, pos)
                for kind, kv in console.feed(text, now):
                    if kind == "BOOT":
                        result["boot_s"] = round(now - t_boot, 1)
                        say(f"{phase}: guest booted to /init in {result['boot_s']}s")
                    elif kind == "STEP-BEGIN":
                        out["steps"][kv.get("job")] = {}
                    elif kind == "STEP-END":
                        out["steps"][kv.get("job")] = {"rc": int(kv.get("rc", "-1"))}
                        say(f"{phase}: step {kv.get('job')}: rc {kv.get('rc')}")
                        if after_step:
                            try:
                                after_step(kv.get("job"))
                            except Failure as e:
                                out["problems"].append(f"{phase}: {e}")
                    elif kind == "ERROR":
                        out["problems"].append(f"{phase}: guest: {kv.get('msg')}")
                    elif kind == "DONE":
                        done = True
                    out["markers"].append((kind, kv))

                def backend_died():
                    return None if backend.alive() else (
                        f"the paravisor exited during the {phase} boot:\n{backend.log_tail()}")
                end = watch_end(result, console, proc, done, now, t_boot, cfg.boot_timeout,
                                timeout, console_path, check=backend_died)
                if end is not None:
                    if end:
                        out["problems"].append(f"{phase}: {end}")
                    break
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    for name in STEPS[phase]:
        st = out["steps"].get(name)
        if st is None or "rc" not in st:
            out["problems"].append(f"{phase}: step {name} " +
                                   ("never finished" if st is not None else "never ran"))
        elif st["rc"] != 0:
            lines = [ln for ln in console.blocks.get(("STEP", name), []) if ln.strip()]
            out["problems"].append(f"{phase}: step {name} exited with {st['rc']}: " +
                                   " | ".join(lines[-6:] or ["(no output)"]))
    out["dmesg"] = console.blocks.get(("DMESG", ""), [])
    # The markers a step prints sit inside its output block.
    for (kind, _), lines in console.blocks.items():
        if kind == "STEP":
            for line in lines:
                m = MARKER.search(line)
                if m:
                    out["markers"].append((m.group(1), parse_kv(m.group(2))))
    return out


def _marker(boot, kind, **match):
    for k, kv in boot["markers"]:
        if k == kind and all(kv.get(a) == b for a, b in match.items()):
            return kv
    return None


def run_vtpm(cfg, keel_vhost_blk, keel_tpm):
    """The three boots; returns a result dict with "ok" and "problems"."""
    t_start = time.monotonic()
    accel, accel_why = detect_accel(cfg.accel)
    qemu = find_tool("qemu-system-x86_64", "qemu-system-x86")
    for b in (keel_vhost_blk, keel_tpm):
        if not os.access(b, os.X_OK):
            raise Failure(f"{b}: not an executable (build it first)")
    guest = build_guest(cfg.build_dir, extra_binaries=[keel_tpm], flavor="vtpm")
    runs = os.path.join(os.path.abspath(cfg.build_dir), "guest", "runs")
    os.makedirs(runs, exist_ok=True)
    workdir = cfg.workdir or tempfile.mkdtemp(prefix="vtpm-", dir=runs)
    os.makedirs(workdir, exist_ok=True)
    sockdir = tempfile.mkdtemp(prefix="keel-vtpm-")  # sun_path is short
    vhost_sock = os.path.join(sockdir, "vhost.sock")
    tpm_sock = os.path.join(sockdir, "tpm.sock")
    state = os.path.join(workdir, "tpm-state.bin")
    key = os.path.join(workdir, "tpm.key")
    image = os.path.join(workdir, "disk.img")
    for p in (state, key, image):
        if os.path.exists(p):
            os.unlink(p)
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, os.urandom(32))
    os.close(fd)
    say(f"vtpm: accel {accel} ({accel_why}); work dir {workdir}")
    argv = [keel_vhost_blk, "--socket", vhost_sock, "--card", "model", "--image", image,
            "--size-mib", "16", "--vtpm-ctrl", tpm_sock, "--vtpm-state", state,
            "--vtpm-key", key, "--vtpm-guest", GUEST_NAME]
    result = {"label": "vtpm", "accel": accel, "workdir": workdir, "boots": [], "problems": []}
    problems = result["problems"]
    backend = Backend(argv, os.path.join(workdir, "paravisor.log"))

    def boot(phase, append, after_step=None):
        backend.wait_socket(vhost_sock, 60)
        backend.wait_socket(tpm_sock, 60)
        b = _boot(cfg, qemu, accel, guest, workdir, backend, vhost_sock, tpm_sock, phase, append,
                  after_step)
        result["boots"].append(b)
        problems.extend(b["problems"])
        return b

    become_subreaper()  # the upgraded paravisor is the old one's child, then our orphan

    def upgrade_after_extend(step):
        if step == "extend":
            result["upgrade_ms"] = backend.upgrade()
            say(f"seal: paravisor upgraded in place: {result['upgrade_ms']} ms")

    with FileLock(os.path.join(runs, "qemu.lock"), "the other guest (one QEMU at a time)"):
        try:
            backend.start()
            # 1. seal, with an upgrade of the paravisor between the extend and the seal
            b1 = boot("seal", [f"keel.digest={DIGEST}", f"keel.secret={SECRET}", "keel.hold=4"],
                      upgrade_after_extend)
            before = _marker(b1, "PCR", idx="23", when="before")
            after = _marker(b1, "PCR", idx="23", when="after")
            if before and after:
                want = hashlib.sha256(bytes.fromhex(before["sha256"]) +
                                      bytes.fromhex(DIGEST)).hexdigest()
                result["pcr23"] = {"before": before["sha256"], "after": after["sha256"],
                                   "expected": want}
                if after["sha256"].lower() != want:
                    problems.append(f"PCR 23 after the extend is {after['sha256']}, expected "
                                    f"SHA-256(before || digest) = {want}")
            later = _marker(b1, "PCR", idx="23", when="later")
            if after and later and later["sha256"] != after["sha256"]:
                problems.append(f"PCR 23 changed across the paravisor's upgrade: {after['sha256']}"
                                f" before, {later['sha256']} after (the TPM's volatile state was "
                                f"not resumed)")
            if "upgrade_ms" not in result:
                problems.append("the paravisor was not upgraded during the seal boot")
            log = backend.log_tail(400)
            for want in (r"vTPM handed over \(TPM running\)",
                         r"taken over from another process \(TPM resumed, client connected\)"):
                if not re.search(want, log):
                    problems.append(f"the paravisor's log lacks /{want}/ after the upgrade")
            pcr0 = _marker(b1, "PCR", idx="0", when="before")
            result["pcr0"] = pcr0["sha256"] if pcr0 else None
            sealed = _marker(b1, "SEALED")
            if not b1["problems"] and not sealed:
                problems.append("seal: no sealed blob printed")
            # 2. the paravisor restarts; the guest boots again and unseals
            backend.restart(signal.SIGTERM)
            if sealed:
                b2 = boot("unseal", [f"keel.blob={sealed['blob']}"])
                got = _marker(b2, "UNSEALED")
                result["unsealed"] = got["secret"] if got else None
                if not b2["problems"] and (not got or got["secret"] != SECRET):
                    problems.append(f"unseal after the restart gave {got and got['secret']!r}, "
                                    f"sealed {SECRET!r}")
            # 3. a tampered state: refused, left alone, the guest sees a failed TPM
            if backend.stop() != 0:
                problems.append(f"the paravisor's clean stop exited with {backend.proc.returncode}")
            with open(state, "r+b") as f:
                data = bytearray(f.read())
                data[len(data) // 2] ^= 0x01
                f.seek(0)
                f.write(data)
            tampered = hashlib.sha256(data).hexdigest()
            backend.start()
            b3 = boot("refused", [])
            refused = _marker(b3, "TPM-REFUSED")
            result["refused_how"] = refused["how"] if refused else None
            with open(state, "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != tampered:
                    problems.append("the refused state file was rewritten; it must be left as "
                                    "it was")
            if not REFUSED_LOG.search(backend.log_tail(200)):
                problems.append("the paravisor's log does not say the state was refused "
                                f"(authentication failed):\n{backend.log_tail(20)}")
        finally:
            rc = backend.stop()
            result["paravisor_tail"] = backend.log_tail(12)
    if rc not in (0, 3):
        problems.append(f"the paravisor exited with {rc} at the end")
    result["wall_s"] = round(time.monotonic() - t_start, 1)
    result["ok"] = not problems
    with open(os.path.join(workdir, "result.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    if result["ok"]:
        os.unlink(image)
    return result
