"""Judging a finished guest run: what the console and the disk image say went wrong, and the
human-readable summary of a result.
"""

import json
import os
import subprocess
import tempfile

from guest_console import DMESG_BAD, FIO_STDERR_BAD, fio_summary
from guest_env import find_tool

def host_verify(image, cfg, offset):
    """Reads the image on the host after the backend exited: every block fio wrote must be
    there, with its crc32c header and offset (proves the data reached the backing file). A
    disk at an offset in the image (a VF's slice of a card's image) is copied out first: fio's
    headers name offsets in the guest's disk, not in the image."""
    if offset:
        size = _fio_bytes(cfg.fio_size)
        with tempfile.NamedTemporaryFile(dir=os.path.dirname(image), suffix=".slice") as t:
            with open(image, "rb") as src:
                src.seek(offset)
                left = size
                while left > 0:
                    chunk = src.read(min(left, 4 << 20))
                    if not chunk:
                        break
                    t.write(chunk)
                    left -= len(chunk)
            t.flush()
            return host_verify(t.name, cfg, 0)
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


def _fio_bytes(text):
    """fio's size syntax as keel's runs use it: 64M, 1G, 4096."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower()
    return int(t[:-1]) * units[t[-1]] if t and t[-1] in units else int(t)


def check_console(cfg, result, console):
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
    if "restarts" in result:
        for r in result["restarts"]:
            out.append(f"  restart: {r['signal']} at {r['at_s']}s into verify-write, new backend "
                       f"{r['down_s']}s later")
        out.append(f"  requests resubmitted from the inflight record: "
                   f"{result.get('resubmitted', '?')}")
    if "pci" in result:
        out.append("  guest PCI: " + " ".join(f"{k}={v}" for k, v in result["pci"].items()))
    for name, st in result.get("steps", {}).items():
        out.append(f"  step {name}: " + (f"rc {st['rc']} ({st['wall_s']}s)" if "rc" in st
                                         else "did not finish"))
        lines = st.get("output", [])
        out.extend("      " + ln for ln in lines[:80])
        if len(lines) > 80:
            out.append(f"      ... {len(lines) - 80} more lines in console.log")
    if result.get("failed_step"):
        out.append(f"  first failed step: {result['failed_step']}")
    if "image_check" in result:
        out.append(f"  backing file: {result['image_check']}")
    if "host_verify_blocks" in result:
        out.append(f"  host-side verify of the image: {result['host_verify_blocks']} blocks")
    for p in result["problems"]:
        out.append(f"  problem: {p}")
    if result.get("backend_tail"):
        out.append("  backend log (last lines):")
        out.extend("    " + line for line in result["backend_tail"].rstrip().splitlines())
    out.append(f"  logs: {result['workdir']}")
    return out
