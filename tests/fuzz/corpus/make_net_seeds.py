#!/usr/bin/env python3
"""Writes the seed corpus of net_fuzz (tests/fuzz/corpus/net_fuzz/): well-formed traffic the
fuzzer mutates and a few malformed guests. Format (see net_fuzz.cpp): a configuration byte
(bit 0 on VF 0, bit 1 MRG_RXBUF, bit 2 EVENT_IDX, bits 3-4 MTU 1500/68/9000/576, bit 5 no
fallback port), log2 of the receiveq and transmitq sizes, then commands: the low 4 bits of
the first byte pick it, bit 7 the queue (0 receiveq, 1 transmitq), bit 6 a variant."""
import os
import struct
import sys

VF, MRG, EVENT_IDX = 1, 2, 4
RX, TX = 0x00, 0x80
NEXT, WRITE, INDIRECT = 1, 2, 4
DATA = 0x8000


def u16(v):
    return struct.pack("<H", v & 0xFFFF)


def desc(q, i, addr_mode, addr, len_mode, length, flags, nxt):
    """Command 0: a raw descriptor (addr mode 0: DATA + addr*16, 1: rings, 2: end of RAM - addr,
    3: raw u64; len mode 0: u8, 1: u16, 2: u32, 3: 26 + 8 * u8)."""
    out = bytes([q | 0, i, addr_mode | len_mode << 2])
    out += struct.pack("<Q", addr) if addr_mode == 3 else u16(addr)
    out += {0: bytes([length & 0xFF]), 1: u16(length), 2: struct.pack("<I", length),
            3: bytes([length & 0xFF])}[len_mode]
    return out + bytes([flags, nxt])


def publish(q, head):
    return bytes([q | 1, head])


def chain(q, head, pieces, off, length):
    """Command 2: a well-formed chain of `pieces` buffers at DATA + off*16, published."""
    return bytes([q | 2, head, pieces - 1]) + u16(off) + u16(length - 1)


def frame(off, dst, src, payload, hdr=0, extra=b""):
    """Command 4: virtio-net header (0 zeroes, 1 gso_type, 2 flags, 3 raw) + Ethernet frame of
    12 + payload bytes at DATA + off*16. MAC picks: 0-2 the guests, 3 broadcast, 4 multicast."""
    return bytes([4, *u16(off), dst | src << 3 | hdr << 6]) + u16(payload) + extra


def record_frame(dst, src, payload):
    """Command 5: a FRAME record from the switch."""
    return bytes([5, 3, dst | src << 3]) + u16(payload)


def record_raw(rtype, body):
    return bytes([5, 0, rtype]) + u16(len(body)) + body


def rounds(n):
    return bytes([6, n - 1])


def rx_posts(n, base=0x100):
    return b"".join(chain(RX, i, 1 + i % 2, base + 0x100 * i, 2048) for i in range(n))


def tx_frame(head, off, dst, payload, pieces=1, hdr=0, extra=b""):
    return frame(off, dst, 0, payload, hdr, extra) + chain(TX, head, pieces, off, 24 + payload)


def seeds():
    s = {}
    traffic = rx_posts(8) + b"".join(
        tx_frame(i, 0x2000 + 0x100 * i, 1 + i % 2, 60 + 40 * i, 1 + i % 3) for i in range(6))
    traffic += bytes([11 | 0x00]) + u16(100) + b"\x05" + bytes([11 | 0x80]) + u16(600) + b"\x06"
    s["vf_traffic"] = bytes([VF | MRG | EVENT_IDX, 6, 6]) + traffic + rounds(16) + rounds(16)
    s["vf_no_mrg"] = bytes([VF, 4, 4]) + traffic + rounds(16)
    s["fallback_traffic"] = (bytes([MRG | EVENT_IDX, 5, 5]) + rx_posts(6) +
                             record_frame(0, 1, 200) + record_frame(3, 2, 60) +
                             tx_frame(0, 0x2000, 1, 100) + rounds(8) + rounds(8))
    s["broadcast_jumbo"] = (bytes([VF | MRG | 2 << 3, 6, 6]) + rx_posts(8) +
                            tx_frame(0, 0x2000, 3, 60) + tx_frame(1, 0x3000, 1, 8900, 3) +
                            rounds(16))
    s["failover_and_back"] = (bytes([VF | MRG | EVENT_IDX, 6, 6]) + rx_posts(8) +
                              tx_frame(0, 0x2000, 1, 100) + bytes([12]) +  # one round
                              bytes([7 | 0x40]) + tx_frame(1, 0x2100, 2, 100) + rounds(16) +
                              record_frame(0, 1, 80) + rounds(4) + bytes([8 | 0x40]) +
                              rounds(16) + tx_frame(2, 0x2200, 1, 100) + rounds(16))
    s["surprise_removal"] = (bytes([VF | MRG, 5, 5]) + rx_posts(4) +
                             b"".join(tx_frame(i, 0x2000 + 0x100 * i, 1, 70) for i in range(4)) +
                             bytes([7]) + rounds(16) + bytes([8]) + rounds(16))
    bad = bytes([VF | MRG | EVENT_IDX, 4, 4]) + rx_posts(4)
    bad += tx_frame(0, 0x2000, 1, 64, hdr=1, extra=b"\x04")      # GSO TCPv4
    bad += tx_frame(1, 0x2100, 1, 64, hdr=2, extra=b"\x01")      # NEEDS_CSUM
    bad += desc(TX, 2, 0, 0x2200, 0, 8, 0, 0) + publish(TX, 2)   # too short
    bad += desc(TX, 3, 0, 0x2200, 1, 200, WRITE, 0) + publish(TX, 3)  # writable TX buffer
    bad += desc(TX, 4, 2, 16, 1, 100, 0, 0) + publish(TX, 4)     # across the end of RAM
    bad += desc(TX, 5, 3, 1 << 40, 2, 1 << 31, 0, 0) + publish(TX, 5)  # nowhere, huge
    bad += desc(RX, 6, 0, 0x3000, 1, 2048, 0, 0) + publish(RX, 6)  # readable RX buffer
    bad += desc(RX, 7, 0, 0x3100, 0, 4, WRITE, 0) + publish(RX, 7)  # shorter than a header
    bad += record_raw(9, b"\x00" * 20) + record_raw(3, b"\x01\x02")  # bad records
    bad += rounds(16)
    bad += desc(TX, 8, 0, 0x2300, 1, 100, NEXT, 9) + desc(TX, 9, 0, 0x2300, 1, 100, NEXT, 8)
    bad += publish(TX, 8) + rounds(8)  # a loop: the transmitq needs a reset
    s["malformed_tx"] = bad
    s["indirect_rx"] = (bytes([VF | MRG, 3, 3]) + desc(RX, 0, 0, 0x100, 1, 64, INDIRECT, 0) +
                        publish(RX, 0) + tx_frame(0, 0x2000, 1, 64) + rounds(8))
    s["avail_idx_garbage"] = (bytes([VF | MRG | EVENT_IDX, 3, 3]) + rx_posts(2) +
                              bytes([9 | 0x80]) + u16(0x8000) + u16(1) + u16(0xFFFF) +
                              rounds(4))
    s["rx_over_rings"] = (bytes([VF | MRG, 4, 4]) +
                          desc(RX, 0, 1, 0x4000, 1, 0x3000, WRITE, 0) + publish(RX, 0) +
                          bytes([11]) + u16(1000) + b"\x01" + rounds(16))
    return s


def main(out):
    os.makedirs(out, exist_ok=True)
    for name, data in seeds().items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "net_fuzz"))
