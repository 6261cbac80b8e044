"""The guest's initramfs: guest_init.sh as /init, busybox, fio with its libraries and the
kernel's virtio modules, packed in the kernel's newc cpio format without cpio(1). The
kernel-vfio guest's carries the NVMe and VFIO modules and guest_vfio.sh instead of fio and the
virtio modules; the vtpm guest's the virtio modules, keel-tpm and guest_vtpm.sh (FLAVORS).
"""

import hashlib
import json
import os
import re
import stat
import subprocess
import time

from guest_env import Failure, FileLock, find_tool, say
from guest_kernel import BUILDER_VERSION, prepare_kernel

HERE = os.path.dirname(os.path.abspath(__file__))
INIT_SCRIPT = os.path.join(HERE, "guest_init.sh")
# Each kind of guest: its module set (guest_kernel.MODULE_SETS), whether it carries fio, and
# the scripts /init sources (installed path -> file here).
FLAVORS = {
    "fio": {"modules": "virtio", "fio": True, "scripts": {}},
    "kernel-vfio": {"modules": "kernel-vfio", "fio": False,
                    "scripts": {"etc/keel/kernel-vfio.sh": os.path.join(HERE, "guest_vfio.sh")}},
    "vtpm": {"modules": "virtio", "fio": False,
             "scripts": {"etc/keel/vtpm.sh": os.path.join(HERE, "guest_vtpm.sh")}},
    "net": {"modules": "net", "fio": False,
            "scripts": {"etc/keel/net.sh": os.path.join(HERE, "guest_net.sh")}},
}
# The cached initramfs files: initramfs-KEY.cpio (fio), initramfs-FLAVOR-KEY.cpio (the others).
INITRD_NAME = re.compile(r"^initramfs-(?:([a-z][a-z0-9-]*)-)?[0-9a-f]{16}\.cpio$")


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


def build_guest(build_dir, extra_binaries=(), flavor="fio"):
    """Kernel + initramfs under BUILD/guest, rebuilt only when an input changed; one cached
    initramfs per flavor (FLAVORS).

    Returns {"kernel": path, "initrd": path, "version": kver}."""
    spec = FLAVORS[flavor]
    cache = os.path.join(os.path.abspath(build_dir), "guest")
    with FileLock(os.path.join(cache, "build.lock"), "another guest build"):
        kdir, manifest = prepare_kernel(cache)
        busybox = find_tool("busybox", "busybox-static")
        binaries = {"/bin/busybox": busybox}
        if spec["fio"]:
            binaries["/usr/bin/fio"] = find_tool("fio", "fio")
        for b in extra_binaries:
            binaries["/usr/bin/" + os.path.basename(b)] = b
        libs = set()
        for b in binaries.values():
            libs.update(shared_libs(b))
        with open(INIT_SCRIPT, "rb") as f:
            init = f.read()
        scripts = {}
        for dst, src in spec["scripts"].items():
            with open(src, "rb") as f:
                scripts[dst] = f.read()
        modules = manifest["module_sets"][spec["modules"]]
        h = hashlib.sha256()
        h.update(json.dumps(manifest, sort_keys=True).encode())
        h.update(str(BUILDER_VERSION).encode())
        h.update(flavor.encode())
        h.update(init)
        for dst in sorted(scripts):
            h.update(dst.encode() + scripts[dst])
        for p in sorted(set(binaries.values()) | libs):
            st = os.stat(p)
            h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
        key = h.hexdigest()[:16]
        initrd = os.path.join(cache, "initramfs-" + ("" if flavor == "fio" else flavor + "-") +
                              f"{key}.cpio")
        if not os.path.isfile(initrd):
            t0 = time.monotonic()
            for old in os.listdir(cache):
                m = INITRD_NAME.match(old)
                if m and (m.group(1) or "fio") == flavor:
                    os.unlink(os.path.join(cache, old))
            ar = Newc()
            for d in ("dev", "proc", "sys", "tmp", "run", "root", "etc/keel", "sbin",
                      "usr/sbin"):
                ar.dir(d)
            ar.chardev("dev/console", 5, 1)
            ar.chardev("dev/null", 1, 3, 0o666)
            ar.file("init", init, 0o755)
            for dst, data in scripts.items():
                ar.file(dst, data, 0o644)
            for dst, src in binaries.items():
                ar.host_file(dst, src, 0o755)
            for lib in sorted(libs):
                ar.host_file(lib, lib)
            names = []
            for m in modules:
                ar.host_file("lib/modules/" + os.path.basename(m), os.path.join(kdir, m))
                names.append(os.path.basename(m))
            ar.file("etc/keel/modules", ("\n".join(names) + "\n").encode())
            ar.file("etc/keel/kernel", (manifest["version"] + "\n").encode())
            ar.write(initrd)
            say(f"initramfs {os.path.basename(initrd)} ({os.path.getsize(initrd) >> 20} MiB, "
                f"{len(libs)} libraries) built in {time.monotonic() - t0:.1f}s")
        return {"kernel": os.path.join(kdir, manifest["vmlinuz"]), "initrd": initrd,
                "version": manifest["version"]}
