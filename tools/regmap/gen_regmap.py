#!/usr/bin/python3
"""Register map generator for keel: one JSON source, three outputs.

Reads hdl/regmap/keel_regs.json and writes
  --cpp  the C++ header (installed as <keel/regs/keel_regs.h>),
  --sv   the SystemVerilog package keel_regs_pkg,
  --md   the register map documentation (docs/regmap.md).
--check-md FILE compares FILE with the documentation that would be generated and exits 1
with a unified diff when they differ.

The work is split by job: regmap_load.py (read and validate the JSON into regmap_model.py's
classes), regmap_cpp.py, regmap_sv.py and regmap_md.py (one output each, sharing
regmap_text.py's formatting). This file is the command line.

Python 3 standard library only. Output is deterministic: same input, same bytes.
Exit status: 0 success, 1 invalid input / stale docs / I/O error, 2 bad command line.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

# Run by CMake from the source tree: no __pycache__ beside the modules imported below.
sys.dont_write_bytecode = True

# The generator's parts, one job each; re-exported so `import gen_regmap` keeps working.
from regmap_cpp import gen_cpp  # noqa: E402
from regmap_load import load_regmap  # noqa: E402
from regmap_md import check_md, gen_md  # noqa: E402
from regmap_model import (CPP_NAMESPACE, GENERATOR_PATH, REGEN_COMMAND,  # noqa: E402,F401
                          SV_CONST_PREFIX, SV_PACKAGE, Block, Constant, Field, RegMap,
                          RegmapError, Register)
from regmap_sv import gen_sv  # noqa: E402


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
