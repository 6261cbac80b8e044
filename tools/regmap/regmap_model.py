"""The register map as data: what gen_regmap.py's loader builds and its emitters read.

Also the names every output shares (the C++ namespace, the SV package, the regeneration
command), so the loader's collision check and the emitters agree on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


class RegmapError(Exception):
    """The register map is invalid; `errors` holds one message per problem."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


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
