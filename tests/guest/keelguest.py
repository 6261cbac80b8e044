#!/usr/bin/python3
"""keel's real-Linux-guest harness (issue 7): library used by run_guest.py and compare.py.

Builds a minimal guest from Debian packages only (the linux-image-6.1.*-amd64 kernel unpacked
with apt-get download + dpkg -x, busybox-static, fio with the libraries ldd lists), boots it
with qemu-system-x86_64 on a vhost-user-blk-pci disk served by a backend command (keel's
keel-vhost-blk or qemu-storage-daemon), lets the guest run fio and parses its serial console.

Python standard library only; run with /usr/bin/python3.
"""

import fcntl
import hashlib
import json
import lzma
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time

SKIP_CODE = 77
HERE = os.path.dirname(os.path.abspath(__file__))
INIT_SCRIPT = os.path.join(HERE, "guest_init.sh")
# Bump when the layout of the cached kernel or initramfs changes.
BUILDER_VERSION = 3
# The inbox drivers the guest needs; their dependencies come from the kernel's modules.dep.
GUEST_MODULES = ("virtio_pci", "virtio_blk")
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Skip(Exception):
    """This machine cannot run the guest (no QEMU, no accelerator, packages missing)."""


class Failure(Exception):
    """The guest ran and something was wrong."""


def say(msg):
    print(f"[guest] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Guest image: kernel from Debian's package, initramfs with busybox + fio + the virtio modules
# --------------------------------------------------------------------------------------------


def run_checked(argv, what, **kw):
    res = subprocess.run(argv, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise Failure(f"{what} failed ({res.returncode}): {' '.join(argv)}\n"
                      f"{res.stdout[-2000:]}{res.stderr[-2000:]}")
    return res.stdout


def kernel_package_name():
    """The linux-image-6.1.*-amd64 package that Debian's linux-image-amd64 depends on."""
    forced = os.environ.get("KEEL_GUEST_KERNEL_PKG")
    if forced:
        return forced
    apt_cache = find_tool("apt-cache", "apt")

    def lookup():
        res = subprocess.run([apt_cache, "depends", "linux-image-amd64"], capture_output=True,
                             text=True, timeout=120)
        m = re.search(r"Depends:\s*(linux-image-\d+\.\d+\.\d+-\d+-amd64)\b", res.stdout)
        if m:
            return m.group(1)
        res = subprocess.run([apt_cache, "search", "--names-only",
                              r"^linux-image-6\.1\.0-[0-9]+-amd64$"],
                             capture_output=True, text=True, timeout=120)
        names = re.findall(r"^(linux-image-6\.1\.0-(\d+)-amd64)\s", res.stdout, re.M)
        if names:
            return max(names, key=lambda n: int(n[1]))[0]
        return None

    name = lookup()
    if name is None and os.geteuid() == 0:
        say("apt knows no linux-image-amd64: running apt-get update")
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
        name = lookup()
    if name is None:
        raise Skip("apt knows no linux-image-6.1.*-amd64 package (run apt-get update; the "
                   "guest kernel comes from Debian's archive)")
    return name


def fetch_kernel_deb(deb_dir):
    forced = os.environ.get("KEEL_GUEST_KERNEL_DEB")
    if forced:
        if not os.path.isfile(forced):
            raise Skip(f"KEEL_GUEST_KERNEL_DEB={forced} does not exist")
        return forced
    pkg = kernel_package_name()
    os.makedirs(deb_dir, exist_ok=True)
    have = sorted(f for f in os.listdir(deb_dir) if f.startswith(pkg + "_") and
                  f.endswith(".deb"))
    if have:
        return os.path.join(deb_dir, have[-1])
    apt_get = find_tool("apt-get", "apt")
    say(f"apt-get download {pkg} into {deb_dir}")
    # apt drops privileges to _apt for downloads; let it write here (else it warns and
    # downloads as root anyway).
    os.chmod(deb_dir, 0o777)
    res = subprocess.run([apt_get, "download", "-q", pkg], cwd=deb_dir, capture_output=True,
                         text=True, timeout=900)
    if res.returncode != 0 and os.geteuid() == 0:
        # Stale package lists name a version the archive no longer has: refresh, retry.
        say(f"apt-get download {pkg} failed: running apt-get update and retrying")
        subprocess.run([apt_get, "update", "-qq"], capture_output=True, timeout=600)
        pkg = kernel_package_name()
        res = subprocess.run([apt_get, "download", "-q", pkg], cwd=deb_dir,
                             capture_output=True, text=True, timeout=900)
    have = sorted(f for f in os.listdir(deb_dir) if f.startswith(pkg + "_") and
                  f.endswith(".deb"))
    if res.returncode != 0 or not have:
        raise Skip(f"apt-get download {pkg} failed ({res.returncode}): "
                   f"{res.stderr.strip()[-500:]}")
    return os.path.join(deb_dir, have[-1])


def module_order(modules_dep_text, wanted):
    """Dependency-first load order of the modules in `wanted` (names as lsmod prints them)."""
    deps = {}
    by_name = {}
    for line in modules_dep_text.splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        deps[path] = rest.split()
        name = re.sub(r"\.ko(\.(xz|zst|gz))?$", "", os.path.basename(path)).replace("-", "_")
        by_name[name] = path
    order = []

    def visit(path, stack):
        if path in order:
            return
        if path in stack:
            raise Failure(f"module dependency loop at {path}")
        for dep in deps.get(path, []):
            visit(dep, stack + [path])
        order.append(path)

    for name in wanted:
        if name not in by_name:
            raise Failure(f"module {name} is not in this kernel's modules.dep (built in, or "
                          f"missing?)")
        visit(by_name[name], [])
    return order


def prepare_kernel(cache):
    """Unpacks the Debian kernel once; keeps vmlinuz, the guest's modules and a manifest."""
    kdir = os.path.join(cache, "kernel")
    manifest_path = os.path.join(kdir, "kernel.json")
    if os.path.isfile(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
        if manifest.get("builder") == BUILDER_VERSION and all(
                os.path.isfile(os.path.join(kdir, p))
                for p in [manifest["vmlinuz"]] + manifest["modules"]):
            return kdir, manifest
    dpkg = find_tool("dpkg", "dpkg")
    depmod = find_tool("depmod", "kmod")
    deb = fetch_kernel_deb(os.path.join(cache, "deb"))
    tree = os.path.join(cache, "kernel-tree")
    shutil.rmtree(tree, ignore_errors=True)
    shutil.rmtree(kdir, ignore_errors=True)
    t0 = time.monotonic()
    say(f"unpacking {os.path.basename(deb)} (dpkg -x, never installed)")
    run_checked([dpkg, "-x", deb, tree], "dpkg -x")
    versions = os.listdir(os.path.join(tree, "lib", "modules"))
    if len(versions) != 1:
        raise Failure(f"{deb}: expected one kernel under lib/modules, found {versions}")
    kver = versions[0]
    # The package ships no modules.dep: build it for the unpacked tree.
    run_checked([depmod, "-b", tree, kver], "depmod -b")
    moddir = os.path.join(tree, "lib", "modules", kver)
    with open(os.path.join(moddir, "modules.dep")) as f:
        order = module_order(f.read(), GUEST_MODULES)
    os.makedirs(os.path.join(kdir, "modules"))
    modules = []
    for rel in order:
        src = os.path.join(moddir, rel)
        base = os.path.basename(rel)
        if base.endswith(".ko.xz"):
            # busybox insmod may not read compressed modules: store them plain.
            base = base[:-3]
            with lzma.open(src) as fin, open(os.path.join(kdir, "modules", base), "wb") as fout:
                shutil.copyfileobj(fin, fout)
        elif base.endswith(".ko"):
            shutil.copyfile(src, os.path.join(kdir, "modules", base))
        else:
            raise Failure(f"cannot load compressed module {rel} with busybox insmod")
        modules.append(os.path.join("modules", base))
    vmlinuz = f"vmlinuz-{kver}"
    shutil.copyfile(os.path.join(tree, "boot", vmlinuz), os.path.join(kdir, vmlinuz))
    shutil.copyfile(os.path.join(tree, "boot", f"config-{kver}"),
                    os.path.join(kdir, f"config-{kver}"))
    shutil.rmtree(tree)
    manifest = {"builder": BUILDER_VERSION, "deb": os.path.basename(deb), "version": kver,
                "vmlinuz": vmlinuz, "modules": modules}
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1)
    say(f"kernel {kver} ready in {time.monotonic() - t0:.1f}s: modules "
        f"{' '.join(os.path.basename(m) for m in modules)}")
    return kdir, manifest


def shared_libs(binary):
    """Absolute paths of the libraries (and the loader) that ldd lists for binary."""
    res = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if res.returncode != 0 or "not a dynamic executable" in res.stdout + res.stderr:
        return []
    libs = []
    for line in res.stdout.splitlines():
        m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(", line)
        if m:
            libs.append(m.group(1))
        elif "=>" in line and "not found" in line:
            raise Failure(f"ldd {binary}: {line.strip()}")
    return libs


class Newc:
    """A cpio archive in the kernel's initramfs format ("newc"), written without cpio(1)."""

    def __init__(self):
        self.entries = {}  # path -> (mode, data or target, rdev)

    def _parents(self, path):
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            self.entries.setdefault(d, (stat.S_IFDIR | 0o755, b"", (0, 0)))

    def dir(self, path):
        self._parents(path)
        self.entries[path.strip("/")] = (stat.S_IFDIR | 0o755, b"", (0, 0))

    def file(self, path, data, mode=0o644):
        self._parents(path)
        self.entries[path.strip("/")] = (stat.S_IFREG | mode, data, (0, 0))

    def host_file(self, path, src, mode=None):
        with open(src, "rb") as f:
            data = f.read()
        if mode is None:
            mode = os.stat(src).st_mode & 0o777
        self.file(path, data, mode)

    def symlink(self, path, target):
        self._parents(path)
        self.entries[path.strip("/")] = (stat.S_IFLNK | 0o777, target.encode(), (0, 0))

    def chardev(self, path, major, minor, mode=0o600):
        self._parents(path)
        self.entries[path.strip("/")] = (stat.S_IFCHR | mode, b"", (major, minor))

    def write(self, out_path):
        def record(f, ino, name, mode, data, rdev):
            name_b = name.encode() + b"\0"
            fields = [ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data), 0, 0,
                      rdev[0], rdev[1], len(name_b), 0]
            hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
            f.write(hdr + name_b)
            f.write(b"\0" * ((4 - (len(hdr) + len(name_b)) % 4) % 4))
            f.write(data)
            f.write(b"\0" * ((4 - len(data) % 4) % 4))

        tmp = out_path + ".tmp"
        with open(tmp, "wb") as f:
            for ino, name in enumerate(sorted(self.entries), start=1):
                mode, data, rdev = self.entries[name]
                record(f, ino, name, mode, data, rdev)
            record(f, 0, "TRAILER!!!", 0, b"", (0, 0))
        os.replace(tmp, out_path)


def build_guest(build_dir, extra_binaries=()):
    """Kernel + initramfs under BUILD/guest, rebuilt only when an input changed.

    Returns {"kernel": path, "initrd": path, "version": kver}."""
    cache = os.path.join(os.path.abspath(build_dir), "guest")
    with FileLock(os.path.join(cache, "build.lock"), "another guest build"):
        kdir, manifest = prepare_kernel(cache)
        busybox = find_tool("busybox", "busybox-static")
        fio = find_tool("fio", "fio")
        binaries = {"/bin/busybox": busybox, "/usr/bin/fio": fio}
        for b in extra_binaries:
            binaries["/usr/bin/" + os.path.basename(b)] = b
        libs = set()
        for b in binaries.values():
            libs.update(shared_libs(b))
        with open(INIT_SCRIPT, "rb") as f:
            init = f.read()
        h = hashlib.sha256()
        h.update(json.dumps(manifest, sort_keys=True).encode())
        h.update(str(BUILDER_VERSION).encode())
        h.update(init)
        for p in sorted(set(binaries.values()) | libs):
            st = os.stat(p)
            h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
        key = h.hexdigest()[:16]
        initrd = os.path.join(cache, f"initramfs-{key}.cpio")
        if not os.path.isfile(initrd):
            t0 = time.monotonic()
            for old in os.listdir(cache):
                if old.startswith("initramfs-") and old.endswith(".cpio"):
                    os.unlink(os.path.join(cache, old))
            ar = Newc()
            for d in ("dev", "proc", "sys", "tmp", "run", "root", "etc/keel", "sbin",
                      "usr/sbin"):
                ar.dir(d)
            ar.chardev("dev/console", 5, 1)
            ar.chardev("dev/null", 1, 3, 0o666)
            ar.file("init", init, 0o755)
            for dst, src in binaries.items():
                ar.host_file(dst, src, 0o755)
            for lib in sorted(libs):
                ar.host_file(lib, lib)
            names = []
            for m in manifest["modules"]:
                ar.host_file("lib/modules/" + os.path.basename(m), os.path.join(kdir, m))
                names.append(os.path.basename(m))
            ar.file("etc/keel/modules", ("\n".join(names) + "\n").encode())
            ar.file("etc/keel/kernel", (manifest["version"] + "\n").encode())
            ar.write(initrd)
            say(f"initramfs {os.path.basename(initrd)} ({os.path.getsize(initrd) >> 20} MiB, "
                f"{len(libs)} libraries) built in {time.monotonic() - t0:.1f}s")
        return {"kernel": os.path.join(kdir, manifest["vmlinuz"]), "initrd": initrd,
                "version": manifest["version"]}


# --------------------------------------------------------------------------------------------
# The backend process and its CPU time
# --------------------------------------------------------------------------------------------


def _read_stat(path):
    with open(path) as f:
        s = f.read()
    comm = s[s.index("(") + 1:s.rindex(")")]
    fields = s[s.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15, ppid field 4.
    return comm, int(fields[1]), int(fields[11]) + int(fields[12])


def process_tree(root):
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            _, ppid, _ = _read_stat(f"/proc/{d}/stat")
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_sample(root):
    """CPU used so far by process `root` and its descendants.

    ticks: utime+stime from /proc/<pid>/stat (all threads, dead ones included);
    threads: {(pid, tid): [comm, ns]} with ns from /proc/<pid>/task/<tid>/schedstat."""
    sample = {"t": time.monotonic(), "ticks": 0, "threads": {}}
    for pid in process_tree(root):
        try:
            _, _, ticks = _read_stat(f"/proc/{pid}/stat")
            sample["ticks"] += ticks
            for tid in os.listdir(f"/proc/{pid}/task"):
                comm, _, tticks = _read_stat(f"/proc/{pid}/task/{tid}/stat")
                try:
                    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                        ns = int(f.read().split()[0])
                except (OSError, ValueError, IndexError):
                    ns = tticks * 1_000_000_000 // CLK_TCK
                sample["threads"][(pid, int(tid))] = [comm, ns]
        except (OSError, ValueError, IndexError):
            continue
    return sample


def cpu_delta(a, b):
    """{"cpu_s": stat-based seconds, "by_thread": {comm: ns (schedstat)}} between samples."""
    by_comm = {}
    by_tid = []
    for key, (comm, ns) in sorted(b["threads"].items()):
        d = max(0, ns - a["threads"].get(key, [comm, 0])[1])
        by_comm[comm] = by_comm.get(comm, 0) + d
        by_tid.append([key[1], comm, d])
    return {"cpu_s": (b["ticks"] - a["ticks"]) / CLK_TCK, "wall_s": b["t"] - a["t"],
            "sched_ns": sum(by_comm.values()), "by_thread": by_comm, "by_tid": by_tid}


class Backend:
    """The vhost-user-blk server: started before QEMU, stopped after it."""

    def __init__(self, argv, log_path):
        self.argv = argv
        self.log_path = log_path
        self.proc = None

    def start(self):
        say(f"backend: {shlex.join(self.argv)}")
        self.logf = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self.logf,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            raise Failure(f"cannot start backend {self.argv[0]}: {e}") from e

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def log_tail(self, n=40):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def wait_socket(self, path, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise Failure(f"backend exited with {self.proc.returncode} before serving "
                              f"{path}:\n{self.log_tail()}")
            try:
                if stat.S_ISSOCK(os.stat(path).st_mode):
                    return
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        raise Failure(f"backend did not create {path} within {timeout}s:\n{self.log_tail()}")

    def signal(self, sig):
        if self.alive():
            os.kill(self.proc.pid, sig)

    def stop(self, timeout=20):
        """SIGTERM, then SIGKILL after timeout. Returns the exit code (None if killed)."""
        if self.proc is None:
            return None
        if self.alive():
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                say(f"backend ignored SIGTERM for {timeout}s: killing it")
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                self.logf.close()
                return None
        self.logf.close()
        return self.proc.returncode


# --------------------------------------------------------------------------------------------
# Console parsing
# --------------------------------------------------------------------------------------------

MARKER = re.compile(r"KEEL-([A-Z][A-Z-]*[A-Z])(?:\s+(.*))?$")
# Kernel messages that mean the guest saw an IO problem, which keel promises it never does.
DMESG_BAD = re.compile(r"I/O error|blk_update_request|Buffer I/O|critical medium|"
                       r"Call Trace|\bBUG:|\bOops\b|hung_task|blocked for more than|"
                       r"\btimed out\b|virtio_blk.*\b(error|fail)")
FIO_STDERR_BAD = re.compile(r"verify|bad magic|crc|io_u error|error|fail", re.I)


def parse_kv(text):
    out = {}
    if not text:
        return out
    m = re.match(r"msg=(.*)$", text)
    if m:
        return {"msg": m.group(1)}
    for word in text.split():
        if "=" in word:
            k, v = word.split("=", 1)
            out[k] = v
    return out


class Console:
    """Incremental parser of the guest's serial console (see guest_init.sh for markers)."""

    def __init__(self):
        self.events = []  # (monotonic time, kind, kv)
        self.blocks = {}  # (kind, job) -> [lines]
        self._block = None
        self._partial = ""

    def feed(self, text, now):
        """Returns the new events as (kind, kv)."""
        new = []
        data = self._partial + text.replace("\r", "")
        lines = data.split("\n")
        self._partial = lines.pop()
        for line in lines:
            m = MARKER.search(line)
            if self._block is not None:
                if m and m.group(1).endswith("-END"):
                    self._block = None
                else:
                    self.blocks.setdefault(self._block, []).append(line)
                    continue
            if not m:
                continue
            kind, kv = m.group(1), parse_kv(m.group(2))
            if kind.endswith("-BEGIN"):
                self._block = (kind[:-len("-BEGIN")], kv.get("job", ""))
                self.blocks[self._block] = []
            self.events.append((now, kind, kv))
            new.append((kind, kv))
        return new

    def first(self, kind, **match):
        for t, k, kv in self.events:
            if k == kind and all(kv.get(a) == b for a, b in match.items()):
                return t, kv
        return None

    def fio_json(self, job):
        lines = self.blocks.get(("FIO-JSON", job))
        if lines is None:
            return None
        text = "\n".join(lines)
        start = text.find("{")
        if start < 0:
            return None
        try:
            return json.loads(text[start:])
        except json.JSONDecodeError:
            return None


def fio_summary(doc):
    """IO counts and rates of a fio JSON document (all jobs of one run added up)."""
    s = {"error": 0, "read_ios": 0, "write_ios": 0, "read_iops": 0.0, "write_iops": 0.0,
         "read_bytes": 0, "write_bytes": 0, "runtime_ms": 0, "read_clat_p99_us": None,
         "write_clat_p99_us": None}
    for job in doc.get("jobs", []):
        s["error"] = s["error"] or job.get("error", 0)
        s["runtime_ms"] = max(s["runtime_ms"], job.get("job_runtime", 0))
        for d in ("read", "write"):
            part = job.get(d, {})
            s[f"{d}_ios"] += part.get("total_ios", 0)
            s[f"{d}_iops"] += part.get("iops", 0.0)
            s[f"{d}_bytes"] += part.get("io_bytes", 0)
            pct = part.get("clat_ns", {}).get("percentile", {})
            if "99.000000" in pct and part.get("total_ios", 0):
                s[f"{d}_clat_p99_us"] = pct["99.000000"] / 1000.0
    s["ios"] = s["read_ios"] + s["write_ios"]
    # All of the job's IOs over its whole run (verify-write: the writes, then the read-back).
    s["iops"] = s["ios"] * 1000.0 / s["runtime_ms"] if s["runtime_ms"] else 0.0
    return s


# --------------------------------------------------------------------------------------------
# One guest run
# --------------------------------------------------------------------------------------------


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
        self.seed = None
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


def host_verify(image, cfg, offset):
    """Reads the image on the host after the backend exited: every block fio wrote must be
    there, with its crc32c header and offset (proves the data reached the backing file)."""
    fio = find_tool("fio", "fio")
    argv = [fio, "--name=verify-write", f"--filename={image}", "--rw=randwrite",
            f"--bs={cfg.bs}", f"--size={cfg.fio_size}", f"--offset={offset}",
            "--ioengine=psync", "--verify=crc32c", "--verify_fatal=1", "--verify_only",
            "--output-format=json"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    doc = None
    try:
        doc = json.loads(res.stdout[res.stdout.find("{"):])
    except (json.JSONDecodeError, ValueError):
        pass
    s = fio_summary(doc) if doc else None
    ok = res.returncode == 0 and s is not None and s["error"] == 0 and s["read_ios"] > 0
    return ok, (s["read_ios"] if s else 0), res.stderr.strip()[-1000:]


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
    image = os.path.abspath(cfg.image) if cfg.image else os.path.join(workdir, "disk.img")
    console_path = os.path.join(workdir, "console.log")
    for p in (sock, console_path) if cfg.image else (sock, image, console_path):
        if os.path.exists(p):
            os.unlink(p)
    size_mib = cfg.size_mib
    if cfg.image:
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
    qemu_proc = None
    console = Console()
    with FileLock(os.path.join(runs, "qemu.lock"), "the other guest (one QEMU at a time)"):
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
                     "-chardev", f"socket,id=vblk,path={sock}",
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
    _check_console(cfg, result, console)
    if cfg.expect_backend_log:
        text = backend.log_tail(100000)
        for pat in cfg.expect_backend_log:
            if not re.search(pat, text, re.M):
                problems.append(f"backend output lacks /{pat}/")
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
        if not cfg.image:
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


def _remove_vf_before_boot(cfg, backend, result):
    """Removes the VF before QEMU connects and waits (bounded) until the backend says so."""
    backend.signal(cfg.remove_signal)
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
    deadline = t_boot + timeout
    samples = {}
    failover = {}
    if cfg.failover:
        result["failover"] = failover
    pos = 0
    done = False
    while True:
        now = time.monotonic()
        text = ""
        try:
            with open(console_path, "rb") as f:
                f.seek(pos)
                chunk = f.read()
                pos += len(chunk)
                text = chunk.decode(errors="replace")
        except FileNotFoundError:
            pass
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
                if job == "verify-write" and cfg.failover:
                    failover["start"] = now
                    if cfg.vf_absent_at_boot:
                        failover["removed"] = now  # (since before boot) restore counts from here
            elif kind == "FIO-DONE":
                if job in samples:
                    result["jobs"].setdefault(job, {})["backend_cpu"] = cpu_delta(
                        samples[job], cpu_sample(backend.pid))
                result["jobs"].setdefault(job, {})["rc"] = int(kv.get("rc", "-1"))
                result["jobs"][job]["wall_s"] = round(now - samples.get(job, {"t": now})["t"], 1)
                say(f"fio {job} finished: rc {kv.get('rc')}")
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
                backend.signal(cfg.remove_signal)
                failover["removed"] = now
                say(f"failover: sent {signal.Signals(cfg.remove_signal).name} (remove VF) "
                    f"{now - failover['start']:.1f}s into verify-write")
            elif ("removed" in failover and "restored" not in failover and
                  now - failover["removed"] >= restore_after):
                backend.signal(cfg.restore_signal)
                failover["restored"] = now
                say(f"failover: sent {signal.Signals(cfg.restore_signal).name} (restore VF) "
                    f"{now - failover['start']:.1f}s into verify-write")
        if qemu_proc.poll() is not None:
            if not done:
                problems.append(f"QEMU exited with {qemu_proc.returncode} before the guest "
                                f"finished: {_tail(os.path.join(result['workdir'], 'qemu.log'))}")
            break
        if not backend.alive():
            result["backend_died"] = True
            problems.append(f"backend died ({backend.proc.returncode}) while the guest ran: "
                            f"{backend.log_tail(10).strip()}")
            break
        if "boot_s" not in result and now - t_boot > cfg.boot_timeout:
            problems.append(f"guest did not reach /init within {cfg.boot_timeout}s")
            break
        if now > deadline:
            problems.append(f"guest did not finish within {timeout}s (killed QEMU); last "
                            f"console lines: {_tail(console_path, 5)}")
            break
        if done and now - console.first("DONE")[0] > 30:
            problems.append("guest finished but did not power off within 30s")
            break
        time.sleep(0.05)
    result["guest_s"] = round(time.monotonic() - t_boot, 1)
    if cfg.failover:
        for k in ("removed", "restored", "end"):
            if k in failover:
                failover[k + "_at_s"] = round(failover[k] - failover["start"], 1)
        if "removed" not in failover or "restored" not in failover:
            problems.append(f"failover was not injected during verify-write (the job took "
                            f"{failover.get('end_at_s')}s; remove after {cfg.failover[0]}s, "
                            f"restore {cfg.failover[1]}s later): make the job larger")


def _tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:]).strip()
    except OSError:
        return ""


def _check_console(cfg, result, console):
    problems = result["problems"]
    if result.get("guest_status") != "ok" and "guest_status" in result:
        problems.append(f"guest reported status {result['guest_status']}")
    for job in cfg.jobs.split(","):
        info = result["jobs"].setdefault(job, {})
        doc = console.fio_json(job)
        stderr = [ln for ln in console.blocks.get(("FIO-STDERR", job), []) if ln.strip()]
        info["stderr"] = stderr
        if "rc" not in info:
            problems.append(f"fio {job} did not finish")
            continue
        if info["rc"] != 0:
            problems.append(f"fio {job} exited with {info['rc']}: {' | '.join(stderr[:5])}")
        if doc is None:
            problems.append(f"fio {job}: no JSON output on the console")
            continue
        s = fio_summary(doc)
        info.update(s)
        if s["error"]:
            what = ("EILSEQ: data read back did not match what was written" if s["error"] == 84
                    else os.strerror(s["error"]))
            problems.append(f"fio {job}: error {s['error']} ({what})")
        if s["ios"] == 0:
            problems.append(f"fio {job}: no IO done")
        bad = [ln for ln in stderr if FIO_STDERR_BAD.search(ln)]
        if bad:
            problems.append(f"fio {job} stderr: {' | '.join(bad[:5])}")
        if job == "verify-write" and s["read_ios"] < s["write_ios"]:
            problems.append(f"fio verify-write read back {s['read_ios']} of "
                            f"{s['write_ios']} blocks")
        cpu = info.get("backend_cpu")
        if cpu and s["ios"]:
            cpu["ns_per_io"] = round(cpu["cpu_s"] * 1e9 / s["ios"])
            cpu["sched_ns_per_io"] = round(cpu["sched_ns"] / s["ios"])
    dmesg = console.blocks.get(("DMESG", ""), [])
    result["dmesg"] = dmesg
    bad = [ln for ln in dmesg if DMESG_BAD.search(ln)]
    if bad:
        problems.append("guest kernel reported: " + " | ".join(bad[:5]))
    if "guest_status" not in result and not any("did not" in p for p in problems):
        problems.append("guest never printed KEEL-DONE")


def summarize(result):
    """Human-readable lines for a result."""
    out = [f"{result['label']}: {'PASS' if result.get('ok') else 'FAIL'} "
           f"(accel {result['accel']}, boot {result.get('boot_s')}s, guest "
           f"{result.get('guest_s')}s, wall {result.get('wall_s')}s)"]
    for job, info in result["jobs"].items():
        if "ios" not in info:
            continue
        cpu = info.get("backend_cpu") or {}
        out.append(
            f"  {job}: {info['ios']} IOs (read {info['read_ios']}, write {info['write_ios']}), "
            f"{info['iops']:.0f} IOPS; backend CPU "
            f"{cpu.get('cpu_s', 0):.2f}s = {cpu.get('ns_per_io', '?')} ns/IO "
            f"(schedstat {cpu.get('sched_ns_per_io', '?')} ns/IO)")
    if "failover" in result:
        f = result["failover"]
        out.append(f"  failover: removed at {f.get('removed_at_s')}s, restored at "
                   f"{f.get('restored_at_s')}s, verify-write ended at {f.get('end_at_s')}s")
    if "host_verify_blocks" in result:
        out.append(f"  host-side verify of the image: {result['host_verify_blocks']} blocks")
    for p in result["problems"]:
        out.append(f"  problem: {p}")
    if result.get("backend_tail"):
        out.append("  backend log (last lines):")
        out.extend("    " + line for line in result["backend_tail"].rstrip().splitlines())
    out.append(f"  logs: {result['workdir']}")
    return out
