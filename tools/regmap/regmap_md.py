"""Emits the register map documentation (docs/regmap.md) and checks a committed copy."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from regmap_model import (ACCESS_KINDS, CPP_NAMESPACE, GENERATOR_PATH, REGEN_COMMAND,
                          SV_CONST_PREFIX, SV_PACKAGE, RegMap)
from regmap_text import hexn, offset_digits


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
