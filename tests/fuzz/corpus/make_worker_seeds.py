#!/usr/bin/env python3
"""Writes the seed corpus of worker_fuzz (tests/fuzz/corpus/worker_fuzz/): a few well-formed
virtqueues the fuzzer mutates, each for the VF path and (suffix _host) the host path. Layout
(see worker_fuzz.cpp): 4 bytes of limits (byte 2 bit 2: the host path), the descriptor
table (256 x 16 bytes at GPA 0x1000), the available ring (at 0x2000), then data from 0x4000;
guest memory is two adjacent 32 KiB regions (0x0-0x8000, 0x8000-0x10000)."""
import os
import struct
import sys

Q = 256
DESC, AVAIL, DATA = 0x1000, 0x2000, 0x4000
NEXT, WRITE = 1, 2


def seed(limits, chains):
    """chains: list of (header(type, sector) or None, [(gpa, len, flags)]): the header is put at
    a fixed place per chain, status bytes after it."""
    desc = bytearray(16 * Q)
    data = bytearray(0x10000 - DATA)
    avail = bytearray(4 + 2 * Q + 2)
    idx = 0
    hdr_at = 0x7000
    for n, (hdr, segs) in enumerate(chains):
        head = idx
        h = hdr_at + 32 * n
        struct.pack_into("<IIQ", data, h - DATA, hdr[0], 0, hdr[1])
        items = [(h, 16, 0)] + segs + [(h + 16, 1, WRITE)]
        for k, (gpa, ln, fl) in enumerate(items):
            last = k == len(items) - 1
            struct.pack_into("<QIHH", desc, 16 * idx, gpa, ln, fl | (0 if last else NEXT),
                             0 if last else idx + 1)
            idx += 1
        struct.pack_into("<H", avail, 4 + 2 * n, head)
    struct.pack_into("<HH", avail, 0, 0, len(chains))
    return bytes(limits) + bytes(desc) + bytes(avail) + bytes(data)


def main(out):
    os.makedirs(out, exist_ok=True)
    kin, kout, kflush = 0, 1, 4
    # The issue-10 shape: a write of 125 one-byte descriptors and one of 387 bytes.
    one = [(0x4000 + i, 1, 0) for i in range(125)] + [(0x4100, 387, 0)]
    seeds = {
        "write_125x1_387": seed([125, 2 * 11, 0, 10], [((kout, 8), one)]),
        # A read whose buffer crosses from region 0 into region 1.
        "read_across_regions": seed([125, 2 * 11, 0, 10],
                                    [((kin, 0), [(0x8000 - 2048, 4096, WRITE)])]),
        # 40 whole-sector pieces (more than a sub-request takes) and a flush.
        "write_40x512_flush": seed([125, 2 * 11, 2, 10],
                                   [((kout, 16), [(0x4000 + 1024 * i, 512, 0) for i in range(40)]),
                                    ((kflush, 0), [])]),
        # 4 KiB blocks: an aligned and an unaligned read.
        "read_4k_blocks": seed([125, 2 * 11, 1, 10],
                               [((kin, 8), [(0x9000, 8192, WRITE)]),
                                ((kin, 1), [(0xB000, 4096, WRITE)])]),
    }
    for name, blob in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(blob)
        # The same chains through the worker on the host path (limits byte 2, bit 2).
        host = bytearray(blob)
        host[2] |= 4
        with open(os.path.join(out, name + "_host"), "wb") as f:
            f.write(bytes(host))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "worker_fuzz"))
