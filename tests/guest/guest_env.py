"""What the guest harness needs from this machine: tools, an accelerator, one-at-a-time locks.

Also the harness's two outcomes besides a result (Skip: this machine cannot run the guest;
Failure: the guest ran and something was wrong) and its progress printer.
"""

import fcntl
import os
import shutil
import subprocess

SKIP_CODE = 77


class Skip(Exception):
    """This machine cannot run the guest (no QEMU, no accelerator, packages missing)."""


class Failure(Exception):
    """The guest ran and something was wrong."""


def say(msg):
    print(f"[guest] {msg}", flush=True)


def find_tool(name, package):
    path = shutil.which(name)
    if not path:
        for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
            if os.access(os.path.join(d, name), os.X_OK):
                path = os.path.join(d, name)
                break
    if not path:
        raise Skip(f"{name} not found: install Debian package {package} "
                   f"(scripts/keel.sh deps does)")
    return path


def kvm_usable():
    """(ok, why). PVM's /dev/kvm cannot run a stock Debian kernel, so it does not count."""
    if os.path.isdir("/sys/module/kvm_pvm"):
        return False, ("/dev/kvm is PVM (/sys/module/kvm_pvm), which cannot run a stock "
                       "Debian kernel")
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return False, f"/dev/kvm not usable ({e.strerror})"
    os.close(fd)
    return True, "/dev/kvm is usable"


def detect_accel(preference="auto"):
    """Returns (accel, reason): 'kvm' where it works, else 'tcg'. Raises Skip if neither."""
    qemu = find_tool("qemu-system-x86_64", "qemu-system-x86")
    res = subprocess.run([qemu, "-accel", "help"], capture_output=True, text=True, timeout=60)
    have = set(res.stdout.split())
    kvm_ok, kvm_why = kvm_usable()
    kvm_ok = kvm_ok and "kvm" in have
    if preference == "kvm":
        if not kvm_ok:
            raise Skip(f"KVM was asked for but {kvm_why}")
        return "kvm", kvm_why
    if preference == "tcg" or not kvm_ok:
        if "tcg" not in have:
            raise Skip(f"neither KVM ({kvm_why}) nor TCG (not in {qemu} -accel help) can run")
        why = "TCG was asked for" if preference == "tcg" else f"TCG because {kvm_why}"
        return "tcg", why
    return "kvm", kvm_why


def accel_args(accel):
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg,thread=multi", "-cpu", "max"]


class FileLock:
    """flock on a file: one guest build, or one QEMU, at a time per build directory."""

    def __init__(self, path, what):
        self.path, self.what = path, what
        self.fd = None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for {self.what} ({self.path})")
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
