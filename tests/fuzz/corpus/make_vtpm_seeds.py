#!/usr/bin/env python3
"""Writes the seed corpus of vtpm_fuzz (tests/fuzz/corpus/vtpm_fuzz/): what QEMU's tpm-emulator
backend and a guest's driver send a vTPM, as records of vtpm_fuzz.cpp's script (u8 kind, u16
little-endian length, bytes; kind 0 control message, 1 TPM command, 2 state file). The first
byte's low bit starts the TPM before the script."""
import os
import struct
import sys


def ctrl(code, payload=b""):
    body = struct.pack(">I", code) + payload
    return bytes([0]) + struct.pack("<H", len(body)) + body


def tpm(cc, params=b"", tag=0x8001):
    body = struct.pack(">HII", tag, 10 + len(params), cc) + params
    return bytes([1]) + struct.pack("<H", len(body)) + body


PW_SESSION = struct.pack(">I", 9) + struct.pack(">IHBH", 0x40000009, 0, 1, 0)

SEEDS = {
    # QEMU's start: probe on the data channel, capabilities, STOP, buffer size, INIT, the
    # firmware's Startup and a self-test, locality, established flag.
    "qemu_start": bytes([0]) + tpm(0x17A, struct.pack(">III", 6, 0x100, 1)) + ctrl(1) +
    ctrl(0x0e) + ctrl(0x11, struct.pack(">I", 0)) + ctrl(0x0e) +
    ctrl(0x11, struct.pack(">I", 3968)) + ctrl(2, struct.pack(">I", 0)) +
    tpm(0x144, struct.pack(">H", 0)) + tpm(0x143, b"\x01") + ctrl(5, b"\x00\x00\x00\x00") +
    ctrl(4) + ctrl(0x0b, b"\x03\x00\x00\x00"),
    # A running TPM: random bytes, PCR read and extend (with a password session).
    "pcrs": bytes([1]) + tpm(0x17B, struct.pack(">H", 16)) +
    tpm(0x17E, struct.pack(">IHBBBB", 1, 0x000B, 3, 0, 0, 0x80)) +
    tpm(0x182, struct.pack(">I", 23) + PW_SESSION + struct.pack(">IH", 1, 0x000B) +
        bytes(range(32)), tag=0x8002),
    # Migration-style blob traffic: STOP, GET_STATEBLOB, SET_STATEBLOB in two parts, INIT.
    "blobs": bytes([1]) + ctrl(0x0e) + ctrl(0x0c, struct.pack(">III", 0, 1, 0)) +
    ctrl(0x0d, struct.pack(">III", 0, 2, 8)) + b"\x00" * 8 + ctrl(2, struct.pack(">I", 1)),
    # Hashing (locality 4 measurements), volatile state, info and config.
    "hash": bytes([1]) + ctrl(6) + ctrl(7, struct.pack(">I", 4) + b"keel") + ctrl(8) +
    ctrl(0x0a) + ctrl(0x12, struct.pack(">QII", 1, 0, 0)) + ctrl(0x0f) +
    ctrl(0x13, struct.pack(">I", 1)) + ctrl(3),
    # A state file header for the parser.
    "state": bytes([0, 2]) + struct.pack("<H", 40) + b"KEELVTPM" + struct.pack(">II", 1, 4) +
    b"fuzz" + bytes(24),
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__),
                                                             "vtpm_fuzz")
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
