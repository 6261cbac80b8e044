#!/usr/bin/python3
"""Register map generator for keel: one JSON source, three outputs.

Reads hdl/regmap/keel_regs.json and writes
  --cpp  the C++ header (installed as <keel/regs/keel_regs.h>),
  --sv   the SystemVerilog package keel_regs_pkg,
  --md   the register map documentation (docs/regmap.md).
--check-md FILE compares FILE with the documentation that would be generated and exits 1
with a unified diff when they differ.

Python 3 standard library only. Output is deterministic: same input, same bytes.
Exit status: 0 success, 1 invalid input / stale docs / I/O error, 2 bad command line.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

REGEN_COMMAND = "cmake --build build --target regmap-update"
GENERATOR_PATH = "tools/regmap/gen_regmap.py"
SV_PACKAGE = "keel_regs_pkg"
SV_CONST_PREFIX = "KEEL_"
CPP_NAMESPACE = "keel::regs"

ACCESS_KINDS = {
    "ro": "read-only",
    "rw": "read/write",
    "wo": "write-only",
}
WIDTHS = (32, 64)

NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
HEX_RE = re.compile(r"^0[xX][0-9A-Fa-f]+$")
DEC_RE = re.compile(r"^[0-9]+$")
BITS_RE = re.compile(r"^\s*(\d+)\s*(?::\s*(\d+)\s*)?$")

# Lowercased block names become C++ namespaces: they must not be keywords.
CPP_KEYWORDS = frozenset("""
    alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t
    char16_t char32_t class compl concept const consteval constexpr constinit const_cast
    continue co_await co_return co_yield decltype default delete do double dynamic_cast else
    enum explicit export extern false float for friend goto if inline int long mutable
    namespace new noexcept not not_eq nullptr operator or or_eq private protected public
    register reinterpret_cast requires return short signed sizeof static static_assert
    static_cast struct switch template this thread_local throw true try typedef typeid
    typename union unsigned using virtual void volatile wchar_t while xor xor_eq
    std keel regs field_get field_set
""".split())

TOP_KEYS = {"name", "description", "constants", "blocks"}
CONST_KEYS = {"name", "value", "description"}
BLOCK_KEYS = {"name", "bar", "base", "stride", "count", "description", "registers"}
REG_KEYS = {"name", "offset", "width", "access", "reset", "description", "fields"}
FIELD_KEYS = {"name", "bits", "description"}


class RegmapError(Exception):
    """The register map is invalid; `errors` holds one message per problem."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


@dataclass
class Constant:
    name: str
    value: int
    is_hex: bool
    description: str


@dataclass
class Field:
    name: str
    hi: int
    lo: int
    description: str

    @property
    def width(self) -> int:
        return self.hi - self.lo + 1

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.lo

    @property
    def bits_text(self) -> str:
        return str(self.lo) if self.hi == self.lo else f"{self.hi}:{self.lo}"


@dataclass
class Register:
    name: str
    offset: int
    width: int
    access: str
    reset: int
    description: str
    fields: list[Field] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.width // 8


@dataclass
class Block:
    name: str
    bar: str
    base: int
    stride: int | None
    count: int | None
    count_name: str | None  # constant named by "count", if any
    description: str
    registers: list[Register] = field(default_factory=list)

    @property
    def arrayed(self) -> bool:
        return self.stride is not None

    @property
    def ns(self) -> str:
        return self.name.lower()

    @property
    def span(self) -> int:
        """Bytes of the BAR the block occupies (all instances)."""
        if self.arrayed:
            return self.stride * self.count
        return max((r.offset + r.size for r in self.registers), default=0)


@dataclass
class RegMap:
    name: str
    description: str
    constants: list[Constant]
    blocks: list[Block]
    source_label: str = "hdl/regmap/keel_regs.json"


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------


class _Loader:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def err(self, where: str, msg: str) -> None:
        self.errors.append(f"{where}: {msg}")

    # -- primitive readers; return None (and record an error) when the value is unusable --

    def keys(self, obj: dict, allowed: set[str], where: str) -> None:
        for k in sorted(set(obj) - allowed):
            self.err(where, f"unknown key '{k}' (expected one of: {', '.join(sorted(allowed))})")

    def string(self, obj: dict, key: str, where: str, required: bool = True) -> str | None:
        if key not in obj:
            if required:
                self.err(where, f"missing '{key}'")
            return None
        v = obj[key]
        if not isinstance(v, str) or not v.strip():
            self.err(where, f"'{key}' must be a non-empty string, got {json.dumps(v)}")
            return None
        return " ".join(v.split())

    def name(self, obj: dict, where: str) -> str | None:
        n = self.string(obj, "name", where)
        if n is None:
            return None
        if not NAME_RE.match(n) or "__" in n:
            self.err(where, f"name '{n}' must be an upper-case identifier "
                            "([A-Z][A-Z0-9_]*, no '__')")
            return None
        return n

    def integer(self, obj: dict, key: str, where: str,
                required: bool = True) -> tuple[int, bool] | None:
        """Returns (value, written_in_hex)."""
        if key not in obj:
            if required:
                self.err(where, f"missing '{key}'")
            return None
        v = obj[key]
        parsed: tuple[int, bool] | None = None
        if isinstance(v, bool):
            pass
        elif isinstance(v, int):
            if v >= 0:
                parsed = v, False
        elif isinstance(v, str):
            s = v.strip().replace("_", "")
            if HEX_RE.match(s):
                parsed = int(s[2:], 16), True
            elif DEC_RE.match(s):
                parsed = int(s, 10), False
        if parsed is not None:
            if parsed[0] >= 1 << 64:
                self.err(where, f"'{key}' {json.dumps(v)} does not fit in 64 bits")
                return None
            return parsed
        self.err(where, f"'{key}' must be a non-negative integer or a \"0x...\" hex string, "
                        f"got {json.dumps(v)}")
        return None

    # -- structure --

    def load(self, doc: object, source_label: str) -> RegMap:
        if not isinstance(doc, dict):
            raise RegmapError(["top level: must be a JSON object"])
        self.keys(doc, TOP_KEYS, "top level")
        name = self.string(doc, "name", "top level", required=False) or "keel"
        desc = self.string(doc, "description", "top level", required=False) or ""

        constants = self.constants(doc.get("constants", []))
        consts_by_name = {c.name: c for c in constants}
        blocks_raw = doc.get("blocks")
        if not isinstance(blocks_raw, list) or not blocks_raw:
            self.err("top level", "'blocks' must be a non-empty list")
            blocks_raw = []
        blocks = []
        seen: dict[str, int] = {}
        for i, b in enumerate(blocks_raw):
            blk = self.block(b, i, consts_by_name)
            if blk is None:
                continue
            if blk.name in seen:
                self.err(f"block {blk.name}", f"duplicate block name '{blk.name}' "
                                              f"(blocks #{seen[blk.name]} and #{i})")
                continue
            seen[blk.name] = i
            blocks.append(blk)

        self.check_block_overlap(blocks)
        rm = RegMap(name=name, description=desc, constants=constants, blocks=blocks,
                    source_label=source_label)
        if not self.errors:
            self.check_identifiers(rm)
        if self.errors:
            raise RegmapError(self.errors)
        return rm

    def constants(self, raw: object) -> list[Constant]:
        if not isinstance(raw, list):
            self.err("top level", "'constants' must be a list")
            return []
        out: list[Constant] = []
        seen: set[str] = set()
        for i, c in enumerate(raw):
            where = f"constant #{i}"
            if not isinstance(c, dict):
                self.err(where, "must be an object")
                continue
            n = self.name(c, where)
            if n is not None:
                where = f"constant {n}"
            self.keys(c, CONST_KEYS, where)
            v = self.integer(c, "value", where)
            d = self.string(c, "description", where)
            if v is not None and v[0] >= 1 << 64:
                self.err(where, f"value {v[0]:#x} does not fit in 64 bits")
                v = None
            if n is None or v is None or d is None:
                continue
            if n in seen:
                self.err(where, f"duplicate constant name '{n}'")
                continue
            seen.add(n)
            out.append(Constant(n, v[0], v[1], d))
        return out

    def block(self, b: object, index: int, consts: dict[str, Constant]) -> Block | None:
        where = f"block #{index}"
        if not isinstance(b, dict):
            self.err(where, "must be an object")
            return None
        n = self.name(b, where)
        if n is not None:
            where = f"block {n}"
            if n.lower() in CPP_KEYWORDS:
                self.err(where, f"name '{n}' lowercases to '{n.lower()}', which cannot be a "
                                "C++ namespace in keel::regs")
        self.keys(b, BLOCK_KEYS, where)
        bar = self.string(b, "bar", where)
        desc = self.string(b, "description", where)
        base = self.integer(b, "base", where)

        stride = count = None
        count_name = None
        has_stride, has_count = "stride" in b, "count" in b
        if has_stride != has_count:
            self.err(where, "'stride' and 'count' must be given together (arrayed block) "
                            "or not at all")
        elif has_stride:
            s = self.integer(b, "stride", where)
            if s is not None:
                stride = s[0]
                if stride == 0:
                    self.err(where, "'stride' must be greater than 0")
            c = b["count"]
            if isinstance(c, str) and NAME_RE.match(c.strip()):
                count_name = c.strip()
                if count_name not in consts:
                    self.err(where, f"'count' names constant '{count_name}', "
                                    "which is not defined in 'constants'")
                else:
                    count = consts[count_name].value
            else:
                cv = self.integer(b, "count", where)
                count = cv[0] if cv is not None else None
            if count is not None and not 0 < count < 1 << 32:
                self.err(where, f"'count' must be between 1 and {(1 << 32) - 1}, got {count}")
                count = None

        regs_raw = b.get("registers")
        if not isinstance(regs_raw, list) or not regs_raw:
            self.err(where, "'registers' must be a non-empty list")
            regs_raw = []
        regs: list[Register] = []
        seen: set[str] = set()
        for i, r in enumerate(regs_raw):
            reg = self.register(r, i, n or f"#{index}")
            if reg is None:
                continue
            if reg.name in seen:
                self.err(f"block {n} register {reg.name}",
                         f"duplicate register name '{reg.name}'")
                continue
            seen.add(reg.name)
            regs.append(reg)

        if n is None or bar is None or desc is None or base is None:
            return None
        if (has_stride or has_count) and (stride is None or count is None or stride == 0):
            return None
        blk = Block(n, bar, base[0], stride, count, count_name, desc, regs)
        self.check_layout(blk)
        return blk

    def register(self, r: object, index: int, block: str) -> Register | None:
        where = f"block {block} register #{index}"
        if not isinstance(r, dict):
            self.err(where, "must be an object")
            return None
        n = self.name(r, where)
        if n is not None:
            where = f"block {block} register {n}"
        self.keys(r, REG_KEYS, where)
        desc = self.string(r, "description", where)
        off = self.integer(r, "offset", where)
        width = r.get("width")
        if "width" not in r:
            self.err(where, "missing 'width'")
            width = None
        elif isinstance(width, bool) or width not in WIDTHS:
            self.err(where, f"width {json.dumps(width)} is not supported (use 32 or 64)")
            width = None
        access = r.get("access")
        if "access" not in r:
            self.err(where, "missing 'access'")
            access = None
        elif access not in ACCESS_KINDS:
            self.err(where, f"unknown access {json.dumps(access)} "
                            f"(expected one of: {', '.join(ACCESS_KINDS)})")
            access = None
        reset = self.integer(r, "reset", where)

        if off is not None and width is not None and off[0] % (width // 8):
            self.err(where, f"offset {off[0]:#x} is not aligned to the register width "
                            f"({width} bits = {width // 8} bytes)")
        if reset is not None and width is not None and reset[0] >= 1 << width:
            self.err(where, f"reset value {reset[0]:#x} does not fit in {width} bits")
            reset = None

        fields_raw = r.get("fields", [])
        if not isinstance(fields_raw, list):
            self.err(where, "'fields' must be a list")
            fields_raw = []
        fields: list[Field] = []
        seen: set[str] = set()
        for i, f in enumerate(fields_raw):
            fl = self.field(f, i, where, width)
            if fl is None:
                continue
            if fl.name in seen:
                self.err(f"{where} field {fl.name}", f"duplicate field name '{fl.name}'")
                continue
            seen.add(fl.name)
            fields.append(fl)

        by_lo = sorted(fields, key=lambda f: f.lo)
        for a, b in zip(by_lo, by_lo[1:]):
            if b.lo <= a.hi:
                self.err(where, f"fields {a.name} [{a.bits_text}] and {b.name} "
                                f"[{b.bits_text}] overlap")
        if fields and reset is not None:
            covered = 0
            for f in fields:
                covered |= f.mask
            stray = reset[0] & ~covered
            if stray:
                self.err(where, f"reset value {reset[0]:#x} sets bits outside every field "
                                f"(mask {stray:#x})")

        if None in (n, desc, off, width, access, reset):
            return None
        return Register(n, off[0], width, access, reset[0], desc, fields)

    def field(self, f: object, index: int, reg_where: str, width: int | None) -> Field | None:
        where = f"{reg_where} field #{index}"
        if not isinstance(f, dict):
            self.err(where, "must be an object")
            return None
        n = self.name(f, where)
        if n is not None:
            where = f"{reg_where} field {n}"
        self.keys(f, FIELD_KEYS, where)
        desc = self.string(f, "description", where)
        bits = f.get("bits")
        hi = lo = None
        if "bits" not in f:
            self.err(where, "missing 'bits'")
        else:
            m = BITS_RE.match(bits) if isinstance(bits, str) else None
            if isinstance(bits, int) and not isinstance(bits, bool) and bits >= 0:
                hi = lo = bits
            elif m:
                hi = int(m.group(1))
                lo = int(m.group(2)) if m.group(2) is not None else hi
            else:
                self.err(where, f"bits {json.dumps(bits)} must be \"hi:lo\" or \"n\"")
            if hi is not None and lo is not None and hi < lo:
                self.err(where, f"bits \"{bits}\" has hi < lo (write \"{lo}:{hi}\")")
                hi = lo = None
            if hi is not None and width is not None and hi >= width:
                self.err(where, f"bits \"{bits}\" lie outside the {width}-bit register "
                                f"(highest bit is {width - 1})")
                hi = lo = None
        if n is None or desc is None or hi is None or lo is None:
            return None
        return Field(n, hi, lo, desc)

    def check_layout(self, blk: Block) -> None:
        regs = sorted(blk.registers, key=lambda r: r.offset)
        for a, b in zip(regs, regs[1:]):
            if b.offset < a.offset + a.size:
                self.err(f"block {blk.name}",
                         f"registers {a.name} (0x{a.offset:X}..0x{a.offset + a.size - 1:X}) "
                         f"and {b.name} (0x{b.offset:X}..0x{b.offset + b.size - 1:X}) overlap")
        max_size = max((r.size for r in blk.registers), default=1)
        if blk.base % max_size:
            self.err(f"block {blk.name}", f"base 0x{blk.base:X} is not aligned to its widest "
                                          f"register ({max_size} bytes)")
        if not blk.arrayed:
            return
        for r in blk.registers:
            if r.offset + r.size > blk.stride:
                self.err(f"block {blk.name} register {r.name}",
                         f"offset 0x{r.offset:X} + {r.size} bytes extends beyond the block "
                         f"stride 0x{blk.stride:X}")
        if blk.stride % max_size:
            self.err(f"block {blk.name}", f"stride 0x{blk.stride:X} is not a multiple of its "
                                          f"widest register ({max_size} bytes)")

    def check_block_overlap(self, blocks: list[Block]) -> None:
        for i, a in enumerate(blocks):
            for b in blocks[i + 1:]:
                if a.bar != b.bar or not a.span or not b.span:
                    continue
                if a.base < b.base + b.span and b.base < a.base + a.span:
                    self.err(f"block {b.name}",
                             f"occupies 0x{b.base:X}..0x{b.base + b.span - 1:X} of {b.bar}, "
                             f"overlapping block {a.name} "
                             f"(0x{a.base:X}..0x{a.base + a.span - 1:X})")

    def check_identifiers(self, rm: RegMap) -> None:
        """Generated names must be unique in each C++ namespace and in the SV package."""

        def claim(table: dict[str, str], ident: str, origin: str, lang: str) -> None:
            if ident in table and table[ident] != origin:
                self.err(origin, f"generated {lang} name '{ident}' collides with the one "
                                 f"generated for {table[ident]}")
            table.setdefault(ident, origin)

        cpp_top: dict[str, str] = {}
        sv: dict[str, str] = {}
        for c in rm.constants:
            claim(cpp_top, c.name, f"constant {c.name}", "C++")
            claim(sv, SV_CONST_PREFIX + c.name, f"constant {c.name}", "SV")
        for blk in rm.blocks:
            bw = f"block {blk.name}"
            claim(cpp_top, blk.ns, bw, "C++")
            cpp: dict[str, str] = {}
            for ident in ("BASE", "STRIDE", "COUNT", "at"):
                claim(cpp, ident, f"{bw} (block constant {ident})", "C++")
            for ident in ("BASE", "STRIDE", "COUNT"):
                claim(sv, f"{blk.name}_{ident}", f"{bw} (block constant {ident})", "SV")
            for r in blk.registers:
                rw = f"{bw} register {r.name}"
                for suffix in ("", "_BITS", "_RESET"):
                    claim(cpp, r.name + suffix, rw, "C++")
                for suffix in ("_OFFSET", "_BITS", "_RESET"):
                    claim(sv, f"{blk.name}_{r.name}{suffix}", rw, "SV")
                for f in r.fields:
                    fw = f"{rw} field {f.name}"
                    for suffix in ("_SHIFT", "_WIDTH", "_MASK"):
                        claim(cpp, f"{r.name}_{f.name}{suffix}", fw, "C++")
                    for suffix in ("_LSB", "_MSB", "_WIDTH", "_MASK"):
                        claim(sv, f"{blk.name}_{r.name}_{f.name}{suffix}", fw, "SV")


def default_source_label(path: Path) -> str:
    """Path shown in generated files: repo-relative when the input lives in this repo."""
    repo = Path(__file__).resolve().parents[2]
    try:
        return Path(path).resolve().relative_to(repo).as_posix()
    except ValueError:
        return Path(path).name


def load_regmap(path: Path | str, source_label: str | None = None) -> RegMap:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RegmapError([f"{path}: cannot read: {e.strerror}"]) from None
    dup_keys: list[str] = []

    def no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
        obj: dict = {}
        for k, v in pairs:
            if k in obj:
                where = f" in the object named {obj['name']}" if isinstance(obj.get("name"),
                                                                             str) else ""
                dup_keys.append(f"{path}: duplicate key '{k}'{where}")
            obj[k] = v
        return obj

    try:
        doc = json.loads(text, object_pairs_hook=no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise RegmapError([f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}"]) from None
    if dup_keys:
        raise RegmapError(dup_keys)
    label = source_label or default_source_label(path)
    try:
        return _Loader().load(doc, label)
    except RegmapError as e:
        raise RegmapError([f"{path}: {m}" for m in e.errors]) from None


# --------------------------------------------------------------------------------------------
# Formatting helpers
# --------------------------------------------------------------------------------------------


def hexn(v: int, digits: int) -> str:
    return f"0x{v:0{digits}X}"


def offset_digits(blk: Block) -> int:
    top = max((r.offset for r in blk.registers), default=0)
    return max(2, len(f"{top:X}"))


def comment_lines(prefix: str, text: str, width: int = 100) -> list[str]:
    # Never end a // comment with a backslash (it would continue onto the next line).
    text = text.rstrip("\\ ")
    return textwrap.wrap(text, width=width, initial_indent=prefix, subsequent_indent=prefix,
                         break_long_words=False, break_on_hyphens=False) or [prefix.rstrip()]


def sv_hex64(v: int) -> str:
    digits = f"{v:016X}"
    return "64'h" + "_".join(digits[i:i + 4] for i in range(0, 16, 4))


def header_banner(rm: RegMap, comment: str) -> list[str]:
    return [
        f"{comment} Generated from {rm.source_label} by {GENERATOR_PATH}. Do not edit:",
        f"{comment} change the JSON and rebuild (docs: {REGEN_COMMAND}).",
    ]


# --------------------------------------------------------------------------------------------
# C++ header
# --------------------------------------------------------------------------------------------


def gen_cpp(rm: RegMap) -> str:
    out: list[str] = []
    w = out.append
    out += header_banner(rm, "//")
    w("")
    w("#pragma once")
    w("")
    w("#include <cstdint>")
    w("")
    if rm.description:
        out += comment_lines("/// ", rm.description)
        w("///")
    w("/// Naming: every register `R` of block `B` is `keel::regs::b::R` (offset from `b::BASE`),")
    w("/// with `R_BITS` and `R_RESET`; every field `F` has `R_F_SHIFT`, `R_F_WIDTH` and")
    w("/// `R_F_MASK` (mask already shifted into place).")
    w(f"namespace {CPP_NAMESPACE} {{")
    w("")
    w("/// Value of the field selected by `mask`/`shift` in register value `v`.")
    w("constexpr std::uint64_t field_get(std::uint64_t v, std::uint64_t mask, "
      "unsigned shift) noexcept {")
    w("  return (v & mask) >> shift;")
    w("}")
    w("")
    w("/// `v` with the field selected by `mask`/`shift` replaced by `field` (excess high bits of")
    w("/// `field` are dropped).")
    w("constexpr std::uint64_t field_set(std::uint64_t v, std::uint64_t mask, unsigned shift,")
    w("                                  std::uint64_t field) noexcept {")
    w("  return (v & ~mask) | ((field << shift) & mask);")
    w("}")

    if rm.constants:
        w("")
        w("// ---- Constants " + "-" * 82)
        for c in rm.constants:
            w("")
            out += comment_lines("/// ", c.description)
            lit = f"0x{c.value:X}ull" if c.is_hex else f"{c.value}ull"
            w(f"inline constexpr std::uint64_t {c.name} = {lit};")

    for blk in rm.blocks:
        digits = offset_digits(blk)
        w("")
        w(f"// ---- {blk.name} " + "-" * max(3, 91 - len(blk.name)))
        w("")
        out += comment_lines("/// ", f"{blk.name} ({blk.bar}): {blk.description}")
        w(f"namespace {blk.ns} {{")
        w("")
        if blk.arrayed:
            w(f"/// Offset of instance 0 in {blk.bar}; instance n is at BASE + n * STRIDE.")
        else:
            w(f"/// Offset of the block in {blk.bar}.")
        w(f"inline constexpr std::uint64_t BASE = {hexn(blk.base, 4)}ull;")
        if blk.arrayed:
            w("/// Bytes between consecutive instances.")
            w(f"inline constexpr std::uint64_t STRIDE = {hexn(blk.stride, 2)}ull;")
            w("/// Number of instances.")
            if blk.count_name:
                w(f"inline constexpr std::uint64_t COUNT = ::keel::regs::{blk.count_name};")
            else:
                w(f"inline constexpr std::uint64_t COUNT = {blk.count}ull;")
            w(f"/// Address in {blk.bar} of register `reg` (an offset such as CTRL) "
              "of instance n.")
            w("constexpr std::uint64_t at(unsigned n, std::uint64_t reg) noexcept {")
            w("  return BASE + n * STRIDE + reg;")
            w("}")
        for r in blk.registers:
            hd = r.width // 4
            w("")
            out += comment_lines("/// ", f"{r.name} ({r.access}, {r.width}-bit): {r.description}")
            w(f"inline constexpr std::uint64_t {r.name} = {hexn(r.offset, digits)}ull;")
            w(f"inline constexpr unsigned {r.name}_BITS = {r.width}u;")
            w(f"inline constexpr std::uint64_t {r.name}_RESET = {hexn(r.reset, hd)}ull;")
            for f in r.fields:
                out += comment_lines("/// ", f"{r.name}.{f.name} [{f.bits_text}]: "
                                             f"{f.description}")
                p = f"{r.name}_{f.name}"
                w(f"inline constexpr unsigned {p}_SHIFT = {f.lo}u;")
                w(f"inline constexpr unsigned {p}_WIDTH = {f.width}u;")
                w(f"inline constexpr std::uint64_t {p}_MASK = {hexn(f.mask, hd)}ull;")
        w("")
        w(f"}}  // namespace {blk.ns}")
    w("")
    w(f"}}  // namespace {CPP_NAMESPACE}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# SystemVerilog package
# --------------------------------------------------------------------------------------------


def gen_sv(rm: RegMap) -> str:
    out: list[str] = []
    w = out.append
    out += header_banner(rm, "//")
    w("")
    w("`resetall")
    w("`timescale 1ns / 1ps")
    w("`default_nettype none")
    w("")
    if rm.description:
        out += comment_lines("// ", rm.description)
        w("//")
    w("// Naming: constant C is KEEL_C; register R of block B has B_R_OFFSET (from B_BASE),")
    w("// B_R_BITS and B_R_RESET; field F has B_R_F_LSB, _MSB, _WIDTH and _MASK (in place).")
    w(f"package {SV_PACKAGE};")
    w("")
    w("  // A design uses a few of these constants; unused ones are not a problem.")
    w("  /* verilator lint_off UNUSEDPARAM */")

    def param(kind: str, name: str, value: str, doc: str) -> None:
        out.extend(comment_lines("  // ", doc))
        w(f"  localparam {kind} {name} = {value};")

    L64 = "logic [63:0]"
    UINT = "int unsigned"
    if rm.constants:
        w("")
        w("  // ---- Constants " + "-" * 80)
        for c in rm.constants:
            param(L64, SV_CONST_PREFIX + c.name, sv_hex64(c.value), c.description)

    for blk in rm.blocks:
        w("")
        w(f"  // ---- {blk.name} " + "-" * max(3, 89 - len(blk.name)))
        out += comment_lines("  // ", f"{blk.name} ({blk.bar}): {blk.description}")
        w("")
        if blk.arrayed:
            param(L64, f"{blk.name}_BASE", sv_hex64(blk.base),
                  f"Offset of instance 0 in {blk.bar}; instance n is at "
                  f"{blk.name}_BASE + n * {blk.name}_STRIDE.")
            param(L64, f"{blk.name}_STRIDE", sv_hex64(blk.stride),
                  "Bytes between consecutive instances.")
            count_doc = "Number of instances" + (f" (KEEL_{blk.count_name})." if blk.count_name
                                                 else ".")
            param(UINT, f"{blk.name}_COUNT", f"32'd{blk.count}", count_doc)
        else:
            param(L64, f"{blk.name}_BASE", sv_hex64(blk.base), f"Offset of the block in {blk.bar}.")
        for r in blk.registers:
            p = f"{blk.name}_{r.name}"
            w("")
            out += comment_lines("  // ", f"{r.name} ({r.access}, {r.width}-bit, offset from "
                                          f"{blk.name}_BASE): {r.description}")
            w(f"  localparam logic [63:0] {p}_OFFSET = {sv_hex64(r.offset)};")
            w(f"  localparam int unsigned {p}_BITS = 32'd{r.width};")
            w(f"  localparam logic [63:0] {p}_RESET = {sv_hex64(r.reset)};")
            for f in r.fields:
                fp = f"{p}_{f.name}"
                out += comment_lines("  // ", f"{r.name}.{f.name} [{f.bits_text}]: "
                                              f"{f.description}")
                w(f"  localparam int unsigned {fp}_LSB = 32'd{f.lo};")
                w(f"  localparam int unsigned {fp}_MSB = 32'd{f.hi};")
                w(f"  localparam int unsigned {fp}_WIDTH = 32'd{f.width};")
                w(f"  localparam logic [63:0] {fp}_MASK = {sv_hex64(f.mask)};")
    w("")
    w("  /* verilator lint_on UNUSEDPARAM */")
    w("")
    w(f"endpackage : {SV_PACKAGE}")
    w("")
    w("`default_nettype wire")
    w("`resetall")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def md_cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def md_anchor(text: str) -> str:
    """GitHub-style heading anchor."""
    a = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return a.replace(" ", "-")


def gen_md(rm: RegMap) -> str:
    out: list[str] = []
    w = out.append
    w(f"# {rm.name} register map")
    w("")
    w(f"<!-- Generated from {rm.source_label} by {GENERATOR_PATH}. Do not edit. -->")
    w("")
    w(f"Generated from `{rm.source_label}` by `{GENERATOR_PATH}`; do not edit by hand. "
      f"After changing the JSON, regenerate this file with `{REGEN_COMMAND}` and commit it "
      "(the `regmap_doc_up_to_date` test fails while it is stale).")
    w("")
    if rm.description:
        w(md_cell(rm.description))
        w("")
    w("The same source generates the C++ header `<keel/regs/keel_regs.h>` (namespace "
      f"`{CPP_NAMESPACE}`) and the SystemVerilog package `{SV_PACKAGE}`. Names in code:")
    w("")
    w("| Item | C++ | SystemVerilog |")
    w("|---|---|---|")
    w(f"| constant `C` | `{CPP_NAMESPACE}::C` | `{SV_CONST_PREFIX}C` |")
    w("| block `B` base | `b::BASE` (`b` = lower-case `B`) | `B_BASE` |")
    w("| arrayed block `B` | `b::STRIDE`, `b::COUNT`, `b::at(n, b::R)` | "
      "`B_STRIDE`, `B_COUNT` |")
    w("| register `R` of `B` | `b::R` (offset from base), `b::R_BITS`, `b::R_RESET` | "
      "`B_R_OFFSET`, `B_R_BITS`, `B_R_RESET` |")
    w("| field `F` of `R` | `b::R_F_SHIFT`, `b::R_F_WIDTH`, `b::R_F_MASK` (in place) | "
      "`B_R_F_LSB`, `B_R_F_MSB`, `B_R_F_WIDTH`, `B_R_F_MASK` |")
    w("")
    w("Access: `ro` read-only, `rw` read/write, `wo` write-only. Offsets are relative to the "
      "block base; bits not covered by a field are reserved.")
    w("")
    w("## Contents")
    w("")
    if rm.constants:
        w("- [Constants](#constants)")
    for blk in rm.blocks:
        title = f"{blk.name} block"
        w(f"- [{title}](#{md_anchor(title)})")
    if rm.constants:
        w("")
        w("## Constants")
        w("")
        w("| Name | Value | Description |")
        w("|---|---|---|")
        for c in rm.constants:
            val = f"0x{c.value:X}" if c.is_hex else str(c.value)
            w(f"| `{c.name}` | `{val}` | {md_cell(c.description)} |")
    for blk in rm.blocks:
        digits = offset_digits(blk)
        w("")
        w(f"## {blk.name} block")
        w("")
        w(md_cell(blk.description))
        w("")
        w(f"- BAR: {md_cell(blk.bar)}")
        if blk.arrayed:
            cnt = f"{blk.count_name} = {blk.count}" if blk.count_name else str(blk.count)
            w(f"- Base: `0x{blk.base:X}` + n * `0x{blk.stride:X}` for instance n = 0 .. "
              f"{blk.count - 1} ({cnt} instances)")
        else:
            w(f"- Base: `0x{blk.base:X}`")
        w("")
        w("| Offset | Name | Width | Access | Reset | Description |")
        w("|---|---|---|---|---|---|")
        for r in blk.registers:
            anchor = md_anchor(f"{blk.name}.{r.name}")
            w(f"| `{hexn(r.offset, digits)}` | [{r.name}](#{anchor}) | {r.width} | {r.access} | "
              f"`{hexn(r.reset, r.width // 4)}` | {md_cell(r.description)} |")
        for r in blk.registers:
            w("")
            w(f"### {blk.name}.{r.name}")
            w("")
            w(f"Offset `{hexn(r.offset, digits)}`, {r.width} bits, {ACCESS_KINDS[r.access]}, "
              f"reset `{hexn(r.reset, r.width // 4)}`. {md_cell(r.description)}")
            if not r.fields:
                continue
            w("")
            w("| Bits | Name | Description |")
            w("|---|---|---|")
            for f in r.fields:
                w(f"| {f.bits_text} | {f.name} | {md_cell(f.description)} |")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def write_file(path: Path, text: str) -> None:
    """Writes atomically so a failed run never leaves a half-written output behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def check_md(rm: RegMap, path: Path) -> tuple[bool, str]:
    """Returns (up_to_date, message)."""
    want = gen_md(rm)
    try:
        have = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return False, (f"error: {path} does not exist; generate it with: {REGEN_COMMAND}\n")
    except OSError as e:
        return False, f"error: cannot read {path}: {e.strerror}\n"
    if have == want:
        return True, ""
    diff = "".join(difflib.unified_diff(
        have.splitlines(keepends=True), want.splitlines(keepends=True),
        fromfile=f"{path} (committed)", tofile=f"{path} (generated from {rm.source_label})"))
    msg = (f"error: {path} is out of date with {rm.source_label}.\n"
           f"Regenerate it with:  {REGEN_COMMAND}\n"
           f"and commit the result. Differences (- committed, + expected):\n{diff}")
    if not msg.endswith("\n"):
        msg += "\n"
    return False, msg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Generate the keel C++ header, SystemVerilog package and register-map "
                    "docs from the register map JSON.")
    ap.add_argument("--input", required=True, type=Path, help="register map JSON "
                    "(hdl/regmap/keel_regs.json)")
    ap.add_argument("--cpp", type=Path, help="write the C++ header here")
    ap.add_argument("--sv", type=Path, help="write the SystemVerilog package here")
    ap.add_argument("--md", type=Path, help="write the markdown documentation here")
    ap.add_argument("--check-md", type=Path, metavar="FILE",
                    help="exit 1 with a diff if FILE differs from the generated documentation")
    args = ap.parse_args(argv)
    if not (args.cpp or args.sv or args.md or args.check_md):
        ap.error("nothing to do: give at least one of --cpp, --sv, --md, --check-md")

    try:
        rm = load_regmap(args.input)
    except RegmapError as e:
        n = len(e.errors)
        sys.stderr.write(f"gen_regmap: invalid register map ({n} problem{'s' * (n != 1)}):\n")
        for m in e.errors:
            sys.stderr.write(f"  {m}\n")
        return 1

    try:
        if args.cpp:
            write_file(args.cpp, gen_cpp(rm))
        if args.sv:
            write_file(args.sv, gen_sv(rm))
        if args.md:
            write_file(args.md, gen_md(rm))
    except OSError as e:
        sys.stderr.write(f"gen_regmap: cannot write {e.filename}: {e.strerror}\n")
        return 1

    if args.check_md:
        ok, msg = check_md(rm, args.check_md)
        if not ok:
            sys.stderr.write(msg)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
