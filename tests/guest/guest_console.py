"""Parsing of the guest's serial console: the KEEL-* markers guest_init.sh prints, the blocks
between them (fio's JSON and stderr, dmesg), and fio's JSON summed up.
"""

import json
import os
import re

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


def read_new(path, pos):
    """What the console file at `path` gained past byte `pos`: (text, new pos); nothing before
    QEMU has created it."""
    try:
        with open(path, "rb") as f:
            f.seek(pos)
            chunk = f.read()
    except FileNotFoundError:
        return "", pos
    return chunk.decode(errors="replace"), pos + len(chunk)


def tail_lines(path, n=20):
    """The last n lines of a text file ("" when it cannot be read)."""
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:]).strip()
    except OSError:
        return ""


def watch_end(result, console, qemu_proc, done, now, t_boot, boot_timeout, timeout,
              console_path, during="", check=None):
    """Whether a watch of the guest's console ends now: None to keep watching, "" when the
    guest finished and QEMU exited, else the problem. `check` (optional) runs once QEMU is
    known to be running and returns a problem of the caller's (a backend that died) or None."""
    if qemu_proc.poll() is not None:
        if done:
            return ""
        qemu_log = tail_lines(os.path.join(result["workdir"], "qemu.log"))
        return f"QEMU exited with {qemu_proc.returncode} before the guest finished: {qemu_log}"
    if check is not None:
        problem = check()
        if problem:
            return problem
    if "boot_s" not in result and now - t_boot > boot_timeout:
        return f"guest did not reach /init within {boot_timeout}s"
    if now > t_boot + timeout:
        return (f"guest did not finish within {timeout}s (killed QEMU)" +
                (f" during step {during}" if during else "") +
                f"; last console lines: {tail_lines(console_path, 5)}")
    if done and now - console.first("DONE")[0] > 30:
        return "guest finished but did not power off within 30s"
    return None


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
