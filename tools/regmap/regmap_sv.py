"""Emits the SystemVerilog package keel_regs_pkg from a register map."""

from __future__ import annotations

from regmap_model import SV_CONST_PREFIX, SV_PACKAGE, RegMap
from regmap_text import comment_lines, header_banner, sv_hex64


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
