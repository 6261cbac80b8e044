#!/usr/bin/env python3
"""Seeds for vfio_user_fuzz: scripts in its frame format (see vfio_user_fuzz.cpp).

Byte 0 bit 0: start with a valid VERSION. Then frames: op 0 = a command
(u16 msg id, u8 command - 1, u8 no-reply bit, u16 payload length, payload, u8 fd selector:
1 sealed memfd, 2 unsealed memfd, 4 and 8 eventfds), op 1 = raw bytes (u8 length, bytes),
op 2 = the server handles what arrived."""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vfio_user_fuzz")


def cmd(command, payload=b"", fds=0, msg_id=2):
    return (bytes([0]) + struct.pack("<HBBH", msg_id, command - 1, 0, len(payload)) + payload +
            bytes([fds]))


TURN = bytes([2])
seeds = {
    "info": b"\x01" + cmd(4, struct.pack("<IIII", 16, 0, 0, 0)) + TURN +
            cmd(5, struct.pack("<IIIIQQ", 32, 0, 0, 0, 0, 0)) + TURN +
            cmd(7, struct.pack("<IIII", 16, 0, 2, 0)) + TURN,
    "bar": b"\x01" + cmd(9, struct.pack("<QII", 8, 0, 4)) + TURN +
           cmd(10, struct.pack("<QII", 0x24, 0, 4) + struct.pack("<I", 0x1f001f)) + TURN +
           cmd(9, struct.pack("<QII", 0, 0, 8)) + TURN,
    "dma": b"\x01" + cmd(2, struct.pack("<IIQQQ", 32, 3, 0, 0x200000, 0x200000), fds=1) + TURN +
           cmd(3, struct.pack("<IIQQ", 24, 0, 0x200000, 0x200000)) + TURN +
           cmd(2, struct.pack("<IIQQQ", 32, 3, 0, 0x200000, 0x200000), fds=2) + TURN,
    "irqs": b"\x01" + cmd(8, struct.pack("<IIIII", 20, 0x24, 2, 0, 2), fds=12) + TURN +
            cmd(8, struct.pack("<IIIII", 20, 0x09, 2, 0, 1)) + TURN +
            cmd(13) + TURN,
    "framing": b"\x00" + bytes([1, 8]) + struct.pack("<HHI", 1, 1, 4) + TURN,
}
os.makedirs(OUT, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
print(f"{len(seeds)} seeds in {OUT}")
