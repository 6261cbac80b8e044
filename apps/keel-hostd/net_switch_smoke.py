#!/usr/bin/env python3
"""keel-hostd --net-switch --uplink dgram:LOCAL,REMOTE end to end: two fallback ports speak
keel/wire/fallback_port.h, the card's end of the uplink appears after the daemon started, frames
cross both ways, SIGTERM prints the switch's counters. Usage: net_switch_smoke.py KEEL_HOSTD"""
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

HELLO, STATE, FRAME = 1, 2, 3
A, B, FAR = bytes([2, 0, 0, 0, 0, 0xA]), bytes([2, 0, 0, 0, 0, 0xB]), bytes([2, 0, 0, 0, 0, 0xF])


def rec(kind, body):
    return bytes([kind, 0, 0, 0]) + body


def frame(dst, src, n=64):
    return dst + src + bytes((i * 7) & 0xFF for i in range(n - 12))


def recv(sock, timeout=5.0):
    r, _, _ = select.select([sock], [], [], timeout)
    if not r:
        raise SystemExit("timed out waiting for a frame")
    return sock.recv(65536)


def connect(path, deadline):
    while True:
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.connect(path)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise SystemExit("keel-hostd never listened on " + path)
            time.sleep(0.02)


def main():
    hostd = sys.argv[1]
    with tempfile.TemporaryDirectory(prefix="keel-hostd-net-") as d:
        sw, local, remote = (os.path.join(d, n) for n in ("switch.sock", "up.local", "up.remote"))
        p = subprocess.Popen([hostd, "--net-switch", sw, "--uplink", f"dgram:{local},{remote}"],
                             stdout=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 10
            a, b = connect(sw, deadline), connect(sw, deadline)
            for s, mac in ((a, A), (b, B)):
                s.sendall(rec(HELLO, mac + struct.pack("=H", 1500)))
                s.sendall(rec(STATE, bytes([1, 0, 0, 0])))
            card = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            card.bind(remote)  # the card's end appears now
            # B's HELLO may still be on its way: A sends until B gets one (bounded).
            f = frame(B, A)
            for _ in range(200):
                a.sendall(rec(FRAME, f))
                r, _, _ = select.select([b], [], [], 0.05)
                if r:
                    break
            got = b.recv(65536)
            assert got == rec(FRAME, f), got
            g = frame(FAR, B, 300)  # unknown unicast: to the card
            b.sendall(rec(FRAME, g))
            while True:
                u = recv(card)
                if u == g:
                    break
                assert u == frame(B, A), u  # earlier frames sent before B was in the table
            h = frame(A, FAR, 100)  # from the card to A
            card.sendto(h, local)
            assert recv(a) == rec(FRAME, h)
        finally:
            p.send_signal(signal.SIGTERM)
            out, _ = p.communicate(timeout=20)
        print(out)
        assert p.returncode == 0, p.returncode
        assert "software switch:" in out and "accepted 2" in out, out
        assert not os.path.exists(local), "the uplink's socket file was left behind"


if __name__ == "__main__":
    main()
