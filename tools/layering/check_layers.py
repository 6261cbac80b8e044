#!/usr/bin/env python3
"""Fails when a keel library includes a header of a layer above it.

keel's layers, lowest first (docs/architecture.md draws them):

  common, wire          the base: Result, fds, clock, log, thread CPU; the wire formats
  regs (hdl)            the register map generated from hdl/regmap
  fpga core, fpga/pci   the Card/Function interface, IOMMU model; PCI and SR-IOV sysfs
  fpga/vfio_common      VFIO semantics both VFIO backends share (IOVA space, region info)
  fpga/eswitch          the Ethernet switch (the card's embedded one and the host's software one)
  fpga backends         model, sim, vfio, xrt: the ways a card is reached
  fpga registry         open_card(): the one place that knows every backend
  drivers, sriov        the VF drivers; the PF managers
  host service          the host's storage service (software fallback)
  paravisor             virtqueues, virtio-blk, the worker, vhost-user
  nbd                   the NBD server over the paravisor's stack
  stack                 the composition root: card + PF + host service + paravisor

A source file of a layer may include headers of layers strictly below it and of its own
component; nothing above, and nothing of a sibling at the same rank. Programs (apps/, bench/,
tools/, tests/) sit on top and are not checked. Every "keel/..." include a library makes must
resolve to a header this table owns, so a new folder cannot slip past unlisted.

Usage: check_layers.py [--root DIR]   (exit 1 and one line per violation on failure)
"""
import argparse
import os
import re
import sys

# (path prefix relative to the root, component, rank). The longest matching prefix wins, so a
# file can be placed apart from its folder (host_service.h lives in vmm_glue/include).
LAYERS = [
    ("common/", "common", 0),
    ("wire/", "wire", 0.5),
    ("hdl/", "regs", 1),
    ("fpga/include/", "fpga", 2),
    ("fpga/src/", "fpga", 2),
    ("fpga/pci/", "pci", 2),
    ("fpga/vfio_user/", "vfio_user", 2),
    ("fpga/vfio_common/", "vfio_common", 2.2),
    ("fpga/eswitch/", "eswitch", 2.3),
    ("fpga/model/", "model", 2.5),
    ("fpga/sim/", "sim", 2.5),
    ("fpga/vfio/", "vfio", 2.5),
    ("fpga/xrt/", "xrt", 2.5),
    ("fpga/vfio_user_server/", "vfio_user_server", 2.5),
    ("fpga/vfio_user_client/", "vfio_user_client", 2.5),
    ("fpga/src/open_card.cpp", "registry", 2.8),
    ("drivers/", "drivers", 3),
    ("sriov/", "sriov", 3),
    ("vmm_glue/host_service/", "host_service", 4),
    ("vmm_glue/include/keel/vmm/host_service.h", "host_service", 4),
    ("vmm_glue/include/keel/vmm/remote_host.h", "host_service", 4),
    ("vmm_glue/host_service/include/keel/vmm/soft_switch.h", "host_service", 4),
    ("vmm_glue/include/", "paravisor", 4.5),
    ("vmm_glue/src/", "paravisor", 4.5),
    ("vmm_glue/vtpm/", "vtpm", 4.5),
    ("vmm_glue/nbd/", "nbd", 4.8),
    ("vmm_glue/include/keel/vmm/nbd_server.h", "nbd", 4.8),
    ("stack/", "stack", 5),
]
# Generated headers and where they belong (include name prefix -> component).
GENERATED = {"keel/regs/": "regs"}
# Programs: on top of everything, not checked.
PROGRAM_DIRS = ("apps/", "bench/", "tools/", "tests/", "scripts/", "build")
SOURCE_EXT = (".h", ".hpp", ".cpp", ".cc")
INCLUDE_RE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]')


def place(rel):
    best = None
    for prefix, component, rank in LAYERS:
        if rel == prefix or rel.startswith(prefix):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, component, rank)
    return None if best is None else (best[1], best[2])


def library_files(root):
    for top in sorted(os.listdir(root)):
        if top.startswith(".") or any((top + "/").startswith(p) for p in PROGRAM_DIRS):
            continue
        base = os.path.join(root, top)
        if not os.path.isdir(base):
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if f.endswith(SOURCE_EXT):
                    yield os.path.relpath(os.path.join(dirpath, f), root)


def header_index(root, files):
    """Include name ("keel/x/y.h") -> owning file, for every header under an include/ dir."""
    index = {}
    for rel in files:
        parts = rel.split("/")
        if "include" in parts and rel.endswith((".h", ".hpp")):
            name = "/".join(parts[parts.index("include") + 1:])
            index.setdefault(name, rel)
    return index


def check(root):
    files = list(library_files(root))
    index = header_index(root, files)
    errors = []
    for rel in files:
        where = place(rel)
        if where is None:
            errors.append(f"{rel}: in no layer (add its folder to LAYERS in {__file__})")
            continue
        component, rank = where
        with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                m = INCLUDE_RE.match(line)
                if not m:
                    continue
                name = m.group(1)
                local = os.path.normpath(os.path.join(os.path.dirname(rel), name))
                if os.path.exists(os.path.join(root, local)):
                    target = local
                elif name in index:
                    target = index[name]
                elif any(name.startswith(g) for g in GENERATED):
                    target = None
                    t_component = next(c for g, c in GENERATED.items() if name.startswith(g))
                    t_rank = next(r for _, c, r in LAYERS if c == t_component)
                elif name.startswith("keel/"):
                    errors.append(f"{rel}:{lineno}: includes {name}, which no layer owns")
                    continue
                else:
                    continue  # system or third-party header
                if target is not None:
                    t_where = place(target)
                    if t_where is None:
                        errors.append(f"{rel}:{lineno}: includes {target}, which is in no layer")
                        continue
                    t_component, t_rank = t_where
                if t_component == component or t_rank < rank:
                    continue
                what = "above" if t_rank > rank else "beside"
                errors.append(f"{rel}:{lineno}: {component} (layer {rank}) includes {name} of "
                              f"{t_component} (layer {t_rank}), a layer {what} it")
    return files, errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=os.path.join(os.path.dirname(__file__), "..", ".."))
    args = ap.parse_args()
    files, errors = check(os.path.abspath(args.root))
    for e in errors:
        print(e)
    if errors:
        print(f"check_layers: {len(errors)} violation(s) in {len(files)} library files")
        return 1
    print(f"check_layers: {len(files)} library files, includes go down the layers only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
