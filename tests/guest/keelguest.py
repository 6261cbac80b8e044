#!/usr/bin/python3
"""keel's real-Linux-guest harness (issue 7): library used by run_guest.py and compare.py.

Builds a minimal guest from Debian packages only (the linux-image-6.1.*-amd64 kernel unpacked
with apt-get download + dpkg -x, busybox-static, fio with the libraries ldd lists), boots it
with qemu-system-x86_64 on a vhost-user-blk-pci disk served by a backend command (keel's
keel-vhost-blk or qemu-storage-daemon), lets the guest run fio and parses its serial console.

The work is split by job, one module each: guest_env.py (tools, accelerator, locks, Skip and
Failure), guest_kernel.py (Debian's kernel), guest_initramfs.py (the initramfs),
guest_backend.py (the backend process and its CPU time), guest_console.py (the serial
console's markers), guest_run.py (QEMU and one run) and guest_verdict.py (judging a run);
guest_multi.py (two guests on one card) and guest_vfio.py (keelctl in a guest, through its
kernel's VFIO) are scenarios of their own.
This module re-exports their public names, the harness's interface to its callers.

Python standard library only; run with /usr/bin/python3.
"""

# Callers put this directory on sys.path and set sys.dont_write_bytecode before importing.
from guest_backend import CLK_TCK, Backend, cpu_delta, cpu_sample, process_tree
from guest_console import (DMESG_BAD, FIO_STDERR_BAD, MARKER, Console, fio_summary,
                           parse_kv)
from guest_env import (SKIP_CODE, Failure, FileLock, Skip, accel_args, detect_accel,
                       find_tool, kvm_usable, say)
from guest_initramfs import FLAVORS, HERE, INIT_SCRIPT, Newc, build_guest, shared_libs
from guest_kernel import (BUILDER_VERSION, GUEST_MODULES, MODULE_SETS, VFIO_MODULES,
                          fetch_kernel_deb, kernel_package_name, module_order, prepare_kernel,
                          run_checked)
from guest_run import RunConfig, format_backend, run_guest
from guest_verdict import host_verify, summarize

__all__ = [
    "BUILDER_VERSION", "CLK_TCK", "DMESG_BAD", "FIO_STDERR_BAD", "FLAVORS", "GUEST_MODULES",
    "HERE", "INIT_SCRIPT", "MARKER", "MODULE_SETS", "SKIP_CODE", "VFIO_MODULES", "Backend",
    "Console", "Failure", "FileLock", "Newc", "RunConfig", "Skip", "accel_args", "build_guest",
    "cpu_delta", "cpu_sample", "detect_accel", "fetch_kernel_deb", "find_tool", "fio_summary",
    "format_backend", "host_verify", "kernel_package_name", "kvm_usable", "module_order",
    "parse_kv", "prepare_kernel", "process_tree", "run_checked", "run_guest", "say", "shared_libs",
    "summarize",
]
