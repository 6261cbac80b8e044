"""Formatting shared by the emitters: hex literals, wrapped comments, the generated-file banner."""

from __future__ import annotations

import textwrap

from regmap_model import GENERATOR_PATH, REGEN_COMMAND, Block, RegMap


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
