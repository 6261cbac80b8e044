#!/usr/bin/env python3
"""Writes the seed corpus of vhost_user_fuzz (tests/fuzz/corpus/vhost_user_fuzz/): scripts in
the target's input format (see vhost_user_fuzz.cpp) of what QEMU's vhost-user-blk-pci does, and
of the fds a hostile front end sends."""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "vhost_user_fuzz")

GET_FEATURES, SET_FEATURES, SET_OWNER, SET_MEM_TABLE = 1, 2, 3, 5
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR = 12, 13, 14
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, SET_VRING_ENABLE = 15, 16, 17, 18
GET_CONFIG = 24
# fd kinds
NONE, EVENTFD, SEALED, UNSEALED, PIPE, FULL_EVENTFD, PREVIOUS = 0, 1, 2, 3, 4, 7, 10
NEED_REPLY = 1
UADDR = 0x7F0000000000  # the front end's address of guest RAM (any number will do)
RAM = 64 << 10


def msg(request, payload=b"", fds=NONE, flags=0):
    return bytes([0, request, flags, fds]) + struct.pack("<H", len(payload)) + payload


def u64(v):
    return struct.pack("<Q", v)


def state(index, num):
    return struct.pack("<II", index, num)


def poke(offset, data):
    """The guest writes its RAM (op 4): `data` at GPA `offset` of the sealed memfd."""
    return bytes([4]) + struct.pack("<HB", offset, len(data)) + data


def read_request():
    """Ring 0 (descriptors at GPA 0, avail at 0x800): one 512-byte read of sector 0."""
    desc = struct.pack("<QIHH", 0x2000, 16, 1, 1)  # header, NEXT
    desc += struct.pack("<QIHH", 0x3000, 512, 3, 2)  # data, NEXT | WRITE
    desc += struct.pack("<QIHH", 0x2010, 1, 2, 0)  # status, WRITE
    return (poke(0, desc) + poke(0x2000, struct.pack("<IIQ", 0, 0, 0)) +
            poke(0x800, struct.pack("<HHH", 0, 1, 0)))


def handshake(call=EVENTFD):
    s = msg(GET_FEATURES)
    s += msg(GET_PROTOCOL_FEATURES)
    s += msg(SET_PROTOCOL_FEATURES, u64(1 | 8 | 512), flags=NEED_REPLY)  # MQ, REPLY_ACK, CONFIG
    s += msg(GET_QUEUE_NUM)
    s += msg(SET_OWNER, flags=NEED_REPLY)
    s += msg(SET_FEATURES, u64((1 << 32) | (1 << 30)), flags=NEED_REPLY)  # VERSION_1, protocol
    s += msg(SET_MEM_TABLE, struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, RAM, UADDR, 0),
             fds=SEALED, flags=NEED_REPLY)
    for q in (0, 1):
        base = UADDR + q * 0x4000
        s += msg(SET_VRING_NUM, state(q, 16), flags=NEED_REPLY)
        s += msg(SET_VRING_BASE, state(q, 0), flags=NEED_REPLY)
        s += msg(SET_VRING_ADDR, struct.pack("<IIQQQQ", q, 0, base, base + 0x1000, base + 0x800,
                                             0), flags=NEED_REPLY)
        s += msg(SET_VRING_KICK, u64(q), fds=EVENTFD, flags=NEED_REPLY)
        s += msg(SET_VRING_CALL, u64(q), fds=call, flags=NEED_REPLY)
        s += msg(SET_VRING_ENABLE, state(q, 1), flags=NEED_REPLY)
    return s


def main():
    os.makedirs(OUT, exist_ok=True)
    run = bytes([5])
    seeds = {
        "handshake": handshake() + read_request() + run + msg(GET_VRING_BASE, state(0, 0)) +
        msg(GET_VRING_BASE, state(1, 0)) + msg(GET_CONFIG, struct.pack("<III", 0, 60, 0) +
                                                bytes(60)),
        "full_call_eventfd": handshake(call=FULL_EVENTFD) + read_request() + run +
        msg(SET_VRING_ERR, u64(0), fds=FULL_EVENTFD, flags=NEED_REPLY) + run +
        msg(GET_VRING_BASE, state(0, 0)),
        "hostile_fds": msg(GET_FEATURES) +
        msg(SET_MEM_TABLE, struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, RAM, UADDR, 0),
            fds=UNSEALED, flags=NEED_REPLY) +
        msg(SET_VRING_CALL, u64(0), fds=PIPE, flags=NEED_REPLY) +
        msg(SET_VRING_KICK, u64(0), fds=EVENTFD, flags=NEED_REPLY) +
        msg(SET_VRING_KICK, u64(1), fds=PREVIOUS, flags=NEED_REPLY),
        "framing": bytes([7, 6]) + struct.pack("<IH", GET_FEATURES, 1) +
        bytes([0, GET_FEATURES, 2, NONE]) + struct.pack("<H", 0) +
        bytes([0, SET_FEATURES, 0, NONE]) + struct.pack("<H", 4100),
    }
    for name, data in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
