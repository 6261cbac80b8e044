#!/usr/bin/env python3
"""keel-card end to end: a vfio-user client written from the spec talks to VF 0, a second
client is turned away, SIGTERM ends the daemon cleanly and its sockets go."""
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

HDR = struct.Struct("<HHIII")  # msg id, command, size, flags, error
VERSION, REGION_READ = 1, 9
REPLY, ERROR = 1, 1 << 5


def call(s, msg_id, command, payload):
    s.sendall(HDR.pack(msg_id, command, HDR.size + len(payload), 0, 0) + payload)
    head = b""
    while len(head) < HDR.size:
        chunk = s.recv(HDR.size - len(head))
        assert chunk, "the server closed the connection"
        head += chunk
    mid, cmd, size, flags, err = HDR.unpack(head)
    body = b""
    while len(body) < size - HDR.size:
        body += s.recv(size - HDR.size - len(body))
    assert (mid, cmd) == (msg_id, command), (mid, cmd)
    assert flags & 0xF == REPLY and not flags & ERROR, f"failed reply: errno {err}"
    return body


def main():
    exe = sys.argv[1]
    with tempfile.TemporaryDirectory() as run:
        proc = subprocess.Popen([exe, "--run-dir", run, "--size-mib", "8", "--vfs", "2"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sock = os.path.join(run, "vf0.sock")
        for _ in range(200):
            if os.path.exists(sock) or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert os.path.exists(sock), "no vf0.sock: " + (proc.communicate()[0] or "")
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.settimeout(10)
        c.connect(sock)
        caps = json.dumps({"capabilities": {"max_msg_fds": 8, "max_data_xfer_size": 4096}})
        reply = call(c, 1, VERSION, struct.pack("<HH", 0, 1) + caps.encode() + b"\0")
        major, minor = struct.unpack_from("<HH", reply)
        assert (major, minor) == (0, 1), (major, minor)
        agreed = json.loads(reply[4:].rstrip(b"\0"))["capabilities"]
        assert agreed["max_data_xfer_size"] == 4096, agreed
        body = call(c, 2, REGION_READ, struct.pack("<QII", 0x8, 0, 4))  # NVMe VS of VF 0
        (vs,) = struct.unpack_from("<I", body, 16)
        assert vs == 0x00010400, hex(vs)

        second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        second.settimeout(10)
        second.connect(sock)
        assert second.recv(1) == b"", "a second client was served"

        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        print(out)
        assert proc.returncode == 0, f"exit status {proc.returncode}"
        assert "vf0  connections=1 turned_away=1 commands=2" in out, "counters missing"
        assert not os.path.exists(sock), "the socket outlived the daemon"
    print("keel-card smoke: ok")


if __name__ == "__main__":
    main()
