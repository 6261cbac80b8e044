"""Runs a test command against a card served by keel-card in another process (issue 12): starts
keel-card, points the card suites at its PF socket (KEEL_TEST_BACKENDS=vfio-user:<pf.sock>;
KEEL_CARD_IMAGE: its image, which the paravisor suites' host path uses), runs the command,
stops keel-card. Exit status: the command's, or 1 if keel-card failed.

usage: with_keel_card.py <keel-card> <model|sim> <size MiB> -- <command...>
"""
import os
import signal
import subprocess
import sys
import tempfile
import time


def main():
    sep = sys.argv.index("--")
    keel_card, card, size = sys.argv[1:sep]
    command = sys.argv[sep + 1:]
    with tempfile.TemporaryDirectory(prefix="keel-card-") as run:
        log = open(os.path.join(run, "keel-card.log"), "w+")
        image = os.path.join(run, "card.img")
        proc = subprocess.Popen([keel_card, "--card", card, "--image", image, "--size-mib", size,
                                 "--vfs", "0", "--run-dir", run, "--log-level", "warn"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            pf = os.path.join(run, "pf.sock")
            deadline = time.monotonic() + 60
            while not os.path.exists(pf):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    print("keel-card did not come up:\n" + log.read(), flush=True)
                    return 1
                time.sleep(0.02)
            env = dict(os.environ, KEEL_TEST_BACKENDS="vfio-user:" + pf, KEEL_CARD_IMAGE=image)
            rc = subprocess.call(command, env=env)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.seek(0)
            tail = log.read().splitlines()[-12:]
            print("keel-card:\n" + "\n".join(tail), flush=True)
        if proc.returncode != 0:
            print(f"keel-card exited with {proc.returncode}", flush=True)
            return 1
        return rc


if __name__ == "__main__":
    sys.exit(main())
