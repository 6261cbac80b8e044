"""keelctl against a running keel-card (issue 12): --card vfio-user:<run dir>/pf.sock.

VFs enabled by one keelctl are there for the next (the card is keel-card's, not keelctl's);
keel-card makes a socket per VF and removes it with the VF; the JSON of `list` has the same
shape as on an in-process card; IO through a VF, a VF reset and a disable work; keel-card
exits cleanly on SIGTERM with its per-function counters.

usage: live_test.py <keel-card> <keelctl>
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time


def keelctl(exe, pf, *args, ok=True):
    r = subprocess.run([exe, "--card", "vfio-user:" + pf, *args], capture_output=True, text=True,
                       timeout=60)
    if ok:
        assert r.returncode == 0, f"keelctl {' '.join(args)}: {r.returncode}: {r.stderr}"
    return r


def shape(v):
    """The keys of a JSON value, recursively (lists by their first element)."""
    if isinstance(v, dict):
        return {k: shape(x) for k, x in v.items()}
    if isinstance(v, list):
        return [shape(v[0])] if v else []
    return type(v).__name__


def main():
    card_exe, ctl = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as run:
        image = os.path.join(run, "card.img")
        proc = subprocess.Popen([card_exe, "--run-dir", run, "--image", image, "--size-mib", "16",
                                 "--vfs", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            run_checks(proc, run, ctl)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    print("keelctl live: ok")


def run_checks(proc, run, ctl):
    pf = os.path.join(run, "pf.sock")
    for _ in range(400):
        if os.path.exists(pf) or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert os.path.exists(pf), "no pf.sock: " + (proc.communicate()[0] or "")

    listed = json.loads(keelctl(ctl, pf, "--json", "list").stdout)
    assert listed["backend"] == "vfio-user" and listed["num_vfs"] == 0, listed
    # No VF yet: a command that needs one says so and fails.
    r = keelctl(ctl, pf, "id-ctrl", "--vf", "0", ok=False)
    assert r.returncode != 0 and "vf enable" in r.stderr, r.stderr

    enabled = json.loads(keelctl(ctl, pf, "--json", "vf", "enable", "-n", "3", "-q", "2").stdout)
    local_enabled = json.loads(subprocess.run([ctl, "--json", "vf", "enable", "-n", "3"],
                                              capture_output=True, text=True, check=True,
                                              timeout=60).stdout)
    assert shape(enabled) == shape(local_enabled), (shape(enabled), shape(local_enabled))
    for n in range(3):
        assert os.path.exists(os.path.join(run, f"vf{n}.sock")), f"no vf{n}.sock"
    # A new keelctl sees what the last one set.
    listed = json.loads(keelctl(ctl, pf, "--json", "list").stdout)
    assert listed["num_vfs"] == 3, listed
    assert [v["queues"] for v in listed["vfs"]] == [2, 2, 2], listed["vfs"]
    slices = [(v["slice_base"], v["slice_lbas"]) for v in listed["vfs"]]
    assert len(set(slices)) == 3 and all(n > 0 for _, n in slices), slices
    # Same JSON as on a card in keelctl's own process (which has no VFs at its start).
    local = json.loads(subprocess.run([ctl, "--json", "list"], capture_output=True,
                                      text=True, check=True, timeout=60).stdout)
    assert shape(listed)["vfs"] == shape(enabled)["vfs"], shape(listed)
    listed_top, local_top = dict(shape(listed)), dict(shape(local))
    listed_top.pop("vfs")
    local_top.pop("vfs")
    assert listed_top == local_top, (listed_top, local_top)

    data = os.path.join(run, "data")
    with open(data, "wb") as f:
        f.write(os.urandom(8 * 512))
    keelctl(ctl, pf, "write", "--vf", "1", "-s", "16", "-c", "7", "-d", data)
    keelctl(ctl, pf, "verify", "--vf", "1", "-s", "16", "-c", "7", "-d", data)
    shown = json.loads(keelctl(ctl, pf, "--json", "vf", "show", "1").stdout)
    assert shown["vfs"][0]["commands"] > 0, shown
    # A VF pulled from the bus (its guest would fail over) and put back.
    keelctl(ctl, pf, "vf", "remove", "1")
    shown = json.loads(keelctl(ctl, pf, "--json", "vf", "show", "1").stdout)
    assert shown["vfs"][0]["present"] is False, shown
    r = keelctl(ctl, pf, "verify", "--vf", "1", "-s", "16", "-c", "7", "-d", data, ok=False)
    assert r.returncode != 0, "IO on a removed VF succeeded"
    keelctl(ctl, pf, "vf", "restore", "1")
    keelctl(ctl, pf, "vf", "reset", "1")
    keelctl(ctl, pf, "verify", "--vf", "1", "-s", "16", "-c", "7", "-d", data)
    counters = keelctl(ctl, pf, "counters").stdout
    assert "commands" in counters, counters

    keelctl(ctl, pf, "vf", "disable")
    assert not any(os.path.exists(os.path.join(run, f"vf{n}.sock")) for n in range(3)), \
        os.listdir(run)
    assert json.loads(keelctl(ctl, pf, "--json", "list").stdout)["num_vfs"] == 0

    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    print(out)
    assert proc.returncode == 0, f"exit status {proc.returncode}"
    assert "pf   connections=" in out, "counters missing"
    assert not os.path.exists(pf), "the socket outlived the daemon"


if __name__ == "__main__":
    main()
