"""Reads the register map JSON and validates it into a regmap_model.RegMap.

Every problem is collected (not only the first) and raised together as one RegmapError.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from regmap_model import (ACCESS_KINDS, SV_CONST_PREFIX, WIDTHS, Block, Constant, Field,
                          RegMap, RegmapError, Register)

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
