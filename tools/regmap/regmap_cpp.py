"""Emits the C++ header <keel/regs/keel_regs.h> from a register map."""

from __future__ import annotations

from regmap_model import CPP_NAMESPACE, RegMap
from regmap_text import comment_lines, header_banner, hexn, offset_digits


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
