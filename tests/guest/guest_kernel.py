"""The guest's kernel: Debian's linux-image-6.1.*-amd64 package, downloaded with apt-get and
unpacked with dpkg -x (never installed); keeps vmlinuz and the modules the guests load (the
virtio ones of the fio guest, the NVMe and VFIO ones of the kernel-vfio guest).
"""

import json
import lzma
import os
import re
import shutil
import subprocess
import time

from guest_env import Failure, Skip, find_tool, say

# Bump when the layout of the cached kernel or initramfs changes.
BUILDER_VERSION = 4
# The inbox drivers the guest needs; their dependencies come from the kernel's modules.dep.
GUEST_MODULES = ("virtio_pci", "virtio_blk")
# The kernel-vfio guest's (guest_vfio.py): the NVMe driver that first binds the controller,
# then VFIO with the type1 IOMMU backend that takes it over.
VFIO_MODULES = ("nvme", "vfio_pci", "vfio_iommu_type1")
# The network guests' (guest_net.py): virtio-net, the inbox driver on keel's vhost-user-net.
NET_MODULES = ("virtio_pci", "virtio_net")
# Each guest's set, by name; an initramfs carries and loads one set (guest_initramfs.FLAVORS).
MODULE_SETS = {"virtio": GUEST_MODULES, "kernel-vfio": VFIO_MODULES, "net": NET_MODULES}


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
        if manifest.get("builder") == BUILDER_VERSION and set(
                manifest.get("module_sets", {})) == set(MODULE_SETS) and all(
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
        dep_text = f.read()
    sets = {name: module_order(dep_text, wanted) for name, wanted in MODULE_SETS.items()}
    order = []
    for rels in sets.values():
        order += [rel for rel in rels if rel not in order]
    os.makedirs(os.path.join(kdir, "modules"))
    modules = []
    stored = {}
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
        stored[rel] = modules[-1]
    vmlinuz = f"vmlinuz-{kver}"
    shutil.copyfile(os.path.join(tree, "boot", vmlinuz), os.path.join(kdir, vmlinuz))
    shutil.copyfile(os.path.join(tree, "boot", f"config-{kver}"),
                    os.path.join(kdir, f"config-{kver}"))
    shutil.rmtree(tree)
    manifest = {"builder": BUILDER_VERSION, "deb": os.path.basename(deb), "version": kver,
                "vmlinuz": vmlinuz, "modules": modules,
                "module_sets": {name: [stored[rel] for rel in rels]
                                for name, rels in sets.items()}}
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1)
    for name, paths in manifest["module_sets"].items():
        say(f"kernel {kver}: modules of the {name} guest: "
            f"{' '.join(os.path.basename(m) for m in paths)}")
    say(f"kernel {kver} ready in {time.monotonic() - t0:.1f}s")
    return kdir, manifest
