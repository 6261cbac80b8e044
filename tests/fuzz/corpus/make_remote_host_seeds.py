"""Writes the seed inputs of remote_host_fuzz (tests/fuzz/remote_host_fuzz.cpp's script
format): a confidential session (OPEN with no RAM, ADD_SHARED, OPEN_CHANNEL, REGIONS) and one
that shares guest RAM (OPEN with one region and its memfd, OPEN_CHANNEL, REGIONS, a second
OPEN). Run with /usr/bin/python3 from this directory; it writes into remote_host_fuzz/."""
import os
import struct

TURN = bytes([2])


def req(t, payload=b"", fdsel=0, extra=b""):
    return (bytes([0, t]) + struct.pack("<I", 0) + struct.pack("<H", len(payload)) + payload +
            bytes([fdsel]) + extra)


def main():
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "remote_host_fuzz")
    os.makedirs(here, exist_ok=True)
    open_conf = bytes([0, 1]) + struct.pack("<I", 0) + bytes([1, 1, 0]) + bytes([0])
    open_ram = (bytes([0, 1]) + struct.pack("<I", 0) + bytes([1, 1, 1]) +
                struct.pack("<QII", 0, 1 << 20, 0) + bytes([1, 1]))
    chan = req(3, struct.pack("<I", 16))
    shared = req(2, struct.pack("<QQ", 0, 4096), fdsel=1, extra=bytes([1]))
    regions = req(4)
    with open(os.path.join(here, "confidential"), "wb") as f:
        f.write(open_conf + TURN + shared + TURN + chan + TURN + regions + TURN)
    with open(os.path.join(here, "guest_ram"), "wb") as f:
        f.write(open_ram + TURN + chan + TURN + regions + TURN + open_conf + TURN)


if __name__ == "__main__":
    main()
