"""The vhost-user-blk server process (started before QEMU, stopped after it) and the CPU time
it and its threads use, read from /proc.
"""

import os
import re
import shlex
import signal
import stat
import subprocess
import time

from guest_env import Failure, say

CLK_TCK = os.sysconf("SC_CLK_TCK")


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
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
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


class _Adopted:
    """A backend process that is not our child but our orphan (an upgrade's new process, whose
    parent exited): with the harness a child subreaper (PR_SET_CHILD_SUBREAPER), it is reaped
    here, so its exit status is known as for a child's."""

    def __init__(self, pid):
        self.pid = pid
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1  # reaped elsewhere: gone, status unknown
                return self.returncode
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.02)
        return self.returncode


def become_subreaper():
    """Orphaned descendants (an upgraded backend) are reparented to this process."""
    import ctypes
    PR_SET_CHILD_SUBREAPER = 36
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise Failure("prctl(PR_SET_CHILD_SUBREAPER) failed: cannot follow an upgraded backend")


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

    def upgrade(self, timeout=60):
        """SIGHUP: the backend hands its front end to a new process of its binary and exits 0.
        Follows the new process (needs become_subreaper()). Returns the old process's figure
        for the pause (ms from SIGHUP until the new one serves)."""
        os.kill(self.proc.pid, signal.SIGHUP)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise Failure(f"the backend did not finish its upgrade within {timeout}s")
        tail = self.log_tail(60)
        # The last such line: earlier upgrades' lines may still be in the tail.
        found = re.findall(r"served by pid (\d+) after ([\d.]+) ms", tail)
        if rc != 0 or not found:
            raise Failure(f"the upgrade failed (old process exit {rc}):\n{tail}")
        pid, ms = found[-1]
        self.proc = _Adopted(int(pid))
        return float(ms)

    def restart(self, sig, timeout=20):
        """Ends the backend with `sig` (SIGKILL: a crash; SIGTERM: a clean stop) and starts the
        same command again, its output appended to the same log. Returns the seconds from the
        signal to the new process's start."""
        t0 = time.monotonic()
        if self.alive():
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise Failure(f"the backend ignored {signal.Signals(sig).name} for {timeout}s")
        self.logf.write(f"--- keel guest harness: backend ended by {signal.Signals(sig).name} "
                        f"(exit {self.proc.returncode}); started again ---\n".encode())
        self.logf.flush()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return time.monotonic() - t0

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
                if isinstance(self.proc, _Adopted):
                    os.kill(self.proc.pid, signal.SIGKILL)
                else:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                self.logf.close()
                return None
        self.logf.close()
        return self.proc.returncode
