#!/usr/bin/python3
"""Self-test of gen_regmap.py: a small valid map generates, and every kind of invalid input is
reported with the name of the offending constant/block/register/field.

Run: /usr/bin/python3 tools/regmap/test_gen_regmap.py  (ctest: regmap_generator_selftest)
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

sys.dont_write_bytecode = True  # keep __pycache__ out of the source tree
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gen_regmap as g  # noqa: E402

REPO = HERE.parents[1]
REAL_JSON = REPO / "hdl" / "regmap" / "keel_regs.json"

SMALL = {
    "name": "tiny",
    "description": "A small map for the generator's self-test.",
    "constants": [
        {"name": "MAGIC", "value": "0x4B45454C", "description": "Magic."},
        {"name": "UNITS", "value": 4, "description": "Instances of UNIT."},
    ],
    "blocks": [
        {
            "name": "TOP", "bar": "BAR0", "base": "0x0000", "description": "Top block.",
            "registers": [
                {"name": "ID", "offset": "0x0", "width": 32, "access": "ro",
                 "reset": "0x4B45454C", "description": "Identity.",
                 "fields": [{"name": "MAGIC", "bits": "31:0", "description": "Magic."}]},
                {"name": "CTRL", "offset": "0x4", "width": 32, "access": "rw", "reset": "0x1",
                 "description": "Control | with a pipe.",
                 "fields": [{"name": "EN", "bits": "0", "description": "Enable."},
                            {"name": "MODE", "bits": "7:4", "description": "Mode."}]},
                {"name": "KICK", "offset": "0x8", "width": 32, "access": "wo", "reset": 0,
                 "description": "Kick.", "fields": []},
                {"name": "BIG", "offset": "0x10", "width": 64, "access": "rw",
                 "reset": "0x8000000000000000", "description": "64-bit register.",
                 "fields": [{"name": "LOW", "bits": "62:0", "description": "Low bits."},
                            {"name": "TOP", "bits": "63", "description": "Top bit."}]},
            ],
        },
        {
            "name": "UNIT", "bar": "BAR0", "base": "0x100", "stride": "0x20", "count": "UNITS",
            "description": "Arrayed block.",
            "registers": [
                {"name": "CFG", "offset": "0x00", "width": 32, "access": "rw", "reset": "0x0",
                 "description": "Config.",
                 "fields": [{"name": "WEIGHT", "bits": "7:0", "description": "Weight."}]},
                {"name": "COUNTER", "offset": "0x18", "width": 64, "access": "ro", "reset": "0x0",
                 "description": "Counter.",
                 "fields": [{"name": "VALUE", "bits": "63:0", "description": "Value."}]},
            ],
        },
    ],
}


def write_json(directory: Path, doc: object, name: str = "map.json") -> Path:
    p = directory / name
    p.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return p


def run_main(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = g.main(argv)
    return rc, err.getvalue()


class TempDirTest(unittest.TestCase):
    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="regmap-test-")
        self.tmp = Path(self._tmp.name)

    def tearDown(self) -> None:
        self._tmp.cleanup()


class ValidMapTest(TempDirTest):
    def test_small_map_generates_all_outputs(self) -> None:
        src = write_json(self.tmp, SMALL)
        out = self.tmp / "out"
        rc, err = run_main(["--input", str(src), "--cpp", str(out / "inc/keel_regs.h"),
                            "--sv", str(out / "keel_regs_pkg.sv"), "--md", str(out / "map.md")])
        self.assertEqual(rc, 0, err)
        cpp = (out / "inc/keel_regs.h").read_text()
        sv = (out / "keel_regs_pkg.sv").read_text()
        md = (out / "map.md").read_text()

        self.assertIn("#pragma once", cpp.splitlines()[:5])
        for needle in ("namespace keel::regs {",
                       "inline constexpr std::uint64_t MAGIC = 0x4B45454Cull;",
                       "inline constexpr std::uint64_t UNITS = 4ull;", "namespace top {",
                       "namespace unit {",
                       "inline constexpr std::uint64_t COUNT = ::keel::regs::UNITS;",
                       "inline constexpr std::uint64_t STRIDE = 0x20ull;",
                       "constexpr std::uint64_t at(unsigned n, std::uint64_t reg) noexcept",
                       "inline constexpr std::uint64_t CTRL = 0x04ull;",
                       "inline constexpr unsigned CTRL_BITS = 32u;",
                       "inline constexpr std::uint64_t CTRL_RESET = 0x00000001ull;",
                       "inline constexpr unsigned CTRL_MODE_SHIFT = 4u;",
                       "inline constexpr unsigned CTRL_MODE_WIDTH = 4u;",
                       "inline constexpr std::uint64_t CTRL_MODE_MASK = 0x000000F0ull;",
                       "inline constexpr std::uint64_t BIG_TOP_MASK = 0x8000000000000000ull;",
                       "/// CTRL.MODE [7:4]: Mode.", "field_get(", "field_set("):
            self.assertIn(needle, cpp)
        self.assertNotIn("namespace top {\n\ninline constexpr std::uint64_t STRIDE", cpp)

        for needle in ("`resetall", "`timescale 1ns / 1ps", "`default_nettype none",
                       "package keel_regs_pkg;", "endpackage : keel_regs_pkg",
                       "localparam logic [63:0] KEEL_MAGIC = 64'h0000_0000_4B45_454C;",
                       "localparam logic [63:0] TOP_CTRL_OFFSET = 64'h0000_0000_0000_0004;",
                       "localparam logic [63:0] TOP_CTRL_RESET = 64'h0000_0000_0000_0001;",
                       "localparam int unsigned TOP_CTRL_MODE_LSB = 32'd4;",
                       "localparam int unsigned TOP_CTRL_MODE_WIDTH = 32'd4;",
                       "localparam logic [63:0] UNIT_BASE = 64'h0000_0000_0000_0100;",
                       "localparam logic [63:0] UNIT_STRIDE = 64'h0000_0000_0000_0020;",
                       "localparam int unsigned UNIT_COUNT = 32'd4;"):
            self.assertIn(needle, sv)
        self.assertTrue(sv.rstrip().endswith("`default_nettype wire\n`resetall"), sv[-200:])

        for needle in ("# tiny register map", "regmap-update", "## Constants", "## TOP block",
                       "| `0x04` | [CTRL](#topctrl) | 32 | rw | `0x00000001` |",
                       "Control \\| with a pipe.", "### UNIT.COUNTER", "| 7:4 | MODE | Mode. |",
                       "| 63 | TOP | Top bit. |"):
            self.assertIn(needle, md)

    def test_output_is_deterministic(self) -> None:
        src = write_json(self.tmp, SMALL)
        a = g.load_regmap(src)
        b = g.load_regmap(src)
        for gen in (g.gen_cpp, g.gen_sv, g.gen_md):
            self.assertEqual(gen(a), gen(b))

    def test_real_register_map_is_valid(self) -> None:
        rm = g.load_regmap(REAL_JSON)
        self.assertEqual(rm.source_label, "hdl/regmap/keel_regs.json")
        self.assertEqual([b.name for b in rm.blocks],
                         ["PF", "VFCFG", "NVME", "NICPF", "NICVFCFG", "NIC", "NICQ"])
        cpp = g.gen_cpp(rm)
        self.assertIn("inline constexpr std::uint64_t MAGIC = 0x4B45454Cull;", cpp)
        self.assertIn("inline constexpr std::uint64_t NIC_MAGIC = 0x4B4E4943ull;", cpp)
        self.assertIn("inline constexpr std::uint64_t CAP_MQES_MASK = 0x000000000000FFFFull;",
                      cpp)

    def test_check_md(self) -> None:
        src = write_json(self.tmp, SMALL)
        md = self.tmp / "regmap.md"
        rc, err = run_main(["--input", str(src), "--md", str(md)])
        self.assertEqual(rc, 0, err)
        rc, err = run_main(["--input", str(src), "--check-md", str(md)])
        self.assertEqual((rc, err), (0, ""))

        md.write_text(md.read_text().replace("Enable.", "Enable (edited by hand)."))
        rc, err = run_main(["--input", str(src), "--check-md", str(md)])
        self.assertEqual(rc, 1)
        self.assertIn("out of date", err)
        self.assertIn(g.REGEN_COMMAND, err)
        self.assertIn("-| 0 | EN | Enable (edited by hand). |", err)
        self.assertIn("+| 0 | EN | Enable. |", err)

        rc, err = run_main(["--input", str(src), "--check-md", str(self.tmp / "missing.md")])
        self.assertEqual(rc, 1)
        self.assertIn("does not exist", err)
        self.assertIn(g.REGEN_COMMAND, err)

    def test_no_output_requested_is_a_usage_error(self) -> None:
        src = write_json(self.tmp, SMALL)
        with self.assertRaises(SystemExit) as cm, contextlib.redirect_stderr(io.StringIO()):
            g.main(["--input", str(src)])
        self.assertEqual(cm.exception.code, 2)

    @unittest.skipUnless(shutil.which("g++"), "g++ not installed")
    def test_small_header_compiles_strictly(self) -> None:
        src = write_json(self.tmp, SMALL)
        hdr = self.tmp / "inc" / "keel_regs.h"
        self.assertEqual(run_main(["--input", str(src), "--cpp", str(hdr)])[0], 0)
        tu = self.tmp / "tu.cpp"
        tu.write_text(
            '#include "keel_regs.h"\n'
            "namespace r = keel::regs;\n"
            "static_assert(r::unit::at(3, r::unit::COUNTER) == 0x100 + 3 * 0x20 + 0x18);\n"
            "static_assert(r::field_get(r::top::BIG_RESET, r::top::BIG_TOP_MASK,"
            " r::top::BIG_TOP_SHIFT) == 1);\n"
            "static_assert(r::field_set(0xFFu, r::top::CTRL_MODE_MASK, r::top::CTRL_MODE_SHIFT,"
            " 0x3) == 0x3F);\n"
            "int main() { return 0; }\n")
        proc = subprocess.run(
            ["g++", "-std=c++20", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-Wconversion",
             "-Wshadow", "-fsyntax-only", f"-I{hdr.parent}", str(tu)],
            capture_output=True, text=True, timeout=120)
        self.assertEqual(proc.returncode, 0, proc.stderr)

    @unittest.skipUnless(shutil.which("verilator"), "verilator not installed")
    def test_small_package_lints(self) -> None:
        src = write_json(self.tmp, SMALL)
        sv = self.tmp / "keel_regs_pkg.sv"
        self.assertEqual(run_main(["--input", str(src), "--sv", str(sv)])[0], 0)
        proc = subprocess.run(
            ["verilator", "--lint-only", "-Wall", "--top-module", "keel_regs_pkg", str(sv)],
            capture_output=True, text=True, timeout=120, cwd=self.tmp)
        self.assertEqual(proc.returncode, 0, proc.stderr)


class ValidationTest(TempDirTest):
    """Each case mutates SMALL and expects an error message mentioning every given word."""

    def assert_invalid(self, mutate, *words: str) -> str:
        doc = copy.deepcopy(SMALL)
        mutate(doc)
        src = write_json(self.tmp, doc)
        with self.assertRaises(g.RegmapError) as cm:
            g.load_regmap(src)
        errors = cm.exception.errors
        self.assertTrue(any(all(w in e for w in words) for e in errors),
                        f"no error mentions {words}; got:\n" + "\n".join(errors))
        # The CLI reports the same thing on stderr and exits 1.
        rc, err = run_main(["--input", str(src), "--md", str(self.tmp / "x.md")])
        self.assertEqual(rc, 1)
        for w in words:
            self.assertIn(w, err)
        self.assertFalse((self.tmp / "x.md").exists(), "no output on invalid input")
        return "\n".join(errors)

    @staticmethod
    def reg(doc, block: int, name: str) -> dict:
        return next(r for r in doc["blocks"][block]["registers"] if r["name"] == name)

    # -- duplicate names --

    def test_duplicate_constant(self) -> None:
        self.assert_invalid(lambda d: d["constants"].append(dict(d["constants"][1])),
                            "constant UNITS", "duplicate")

    def test_duplicate_block(self) -> None:
        def m(d):
            b = copy.deepcopy(d["blocks"][0])
            b["bar"] = "BAR2"
            d["blocks"].append(b)
        self.assert_invalid(m, "block TOP", "duplicate")

    def test_duplicate_register(self) -> None:
        def m(d):
            r = copy.deepcopy(self.reg(d, 0, "KICK"))
            r["offset"] = "0x20"
            d["blocks"][0]["registers"].append(r)
        self.assert_invalid(m, "register KICK", "duplicate")

    def test_duplicate_field(self) -> None:
        def m(d):
            self.reg(d, 0, "CTRL")["fields"].append(
                {"name": "EN", "bits": "9", "description": "Again."})
        self.assert_invalid(m, "register CTRL field EN", "duplicate")

    # -- layout --

    def test_overlapping_registers(self) -> None:
        def m(d):
            d["blocks"][0]["registers"].append(
                {"name": "CLASH", "offset": "0x14", "width": 32, "access": "rw", "reset": 0,
                 "description": "Inside BIG."})
        self.assert_invalid(m, "BIG", "CLASH", "overlap")

    def test_offset_not_aligned_to_width(self) -> None:
        self.assert_invalid(lambda d: self.reg(d, 0, "BIG").update(offset="0x0C"),
                            "register BIG", "not aligned")

    def test_offset_not_aligned_32(self) -> None:
        self.assert_invalid(lambda d: self.reg(d, 0, "KICK").update(offset="0x9"),
                            "register KICK", "not aligned")

    def test_register_beyond_stride(self) -> None:
        self.assert_invalid(lambda d: self.reg(d, 1, "COUNTER").update(offset="0x20"),
                            "block UNIT register COUNTER", "stride")

    def test_register_straddling_stride(self) -> None:
        self.assert_invalid(lambda d: d["blocks"][1].update(stride="0x1C"),
                            "register COUNTER", "stride")

    def test_blocks_overlapping_in_bar(self) -> None:
        self.assert_invalid(lambda d: d["blocks"][1].update(base="0x10"),
                            "block UNIT", "TOP", "overlapping")

    # -- fields --

    def test_field_outside_register(self) -> None:
        self.assert_invalid(
            lambda d: self.reg(d, 0, "CTRL")["fields"].append(
                {"name": "WIDE", "bits": "35:32", "description": "Too high."}),
            "register CTRL field WIDE", "outside the 32-bit register")

    def test_single_bit_field_outside_register(self) -> None:
        self.assert_invalid(
            lambda d: self.reg(d, 0, "KICK")["fields"].append(
                {"name": "GO", "bits": "32", "description": "Too high."}),
            "register KICK field GO", "outside")

    def test_overlapping_fields(self) -> None:
        self.assert_invalid(
            lambda d: self.reg(d, 0, "CTRL")["fields"].append(
                {"name": "SPEED", "bits": "5:3", "description": "Overlaps MODE."}),
            "register CTRL", "MODE", "SPEED", "overlap")

    def test_field_bits_reversed(self) -> None:
        self.assert_invalid(
            lambda d: self.reg(d, 0, "CTRL")["fields"][1].update(bits="4:7"),
            "register CTRL field MODE", "hi < lo")

    def test_field_bits_malformed(self) -> None:
        self.assert_invalid(
            lambda d: self.reg(d, 0, "CTRL")["fields"][1].update(bits="7-4"),
            "register CTRL field MODE", "hi:lo")

    # -- access / reset / width --

    def test_unknown_access(self) -> None:
        self.assert_invalid(lambda d: self.reg(d, 0, "CTRL").update(access="rx"),
                            "register CTRL", "unknown access", "rx")

    def test_reset_does_not_fit(self) -> None:
        self.assert_invalid(lambda d: self.reg(d, 0, "KICK").update(reset="0x100000000"),
                            "register KICK", "does not fit in 32 bits")

    def test_reset_sets_reserved_bits(self) -> None:
        self.assert_invalid(lambda d: self.reg(d, 0, "CTRL").update(reset="0x102"),
                            "register CTRL", "outside every field")

    def test_bad_width(self) -> None:
        self.assert_invalid(lambda d: self.reg(d, 0, "KICK").update(width=16),
                            "register KICK", "width 16")

    def test_bad_number(self) -> None:
        self.assert_invalid(lambda d: self.reg(d, 0, "KICK").update(offset="0xZZ"),
                            "register KICK", "'offset'")

    # -- blocks / constants / names --

    def test_count_names_unknown_constant(self) -> None:
        self.assert_invalid(lambda d: d["blocks"][1].update(count="NO_SUCH"),
                            "block UNIT", "NO_SUCH")

    def test_stride_without_count(self) -> None:
        self.assert_invalid(lambda d: d["blocks"][1].pop("count"), "block UNIT", "together")

    def test_unknown_key(self) -> None:
        self.assert_invalid(lambda d: self.reg(d, 0, "KICK").update(ofset="0x8"),
                            "register KICK", "unknown key 'ofset'")

    def test_lowercase_name(self) -> None:
        self.assert_invalid(lambda d: self.reg(d, 0, "KICK").update(name="kick"),
                            "register #2", "kick", "upper-case")

    def test_block_name_is_cpp_keyword(self) -> None:
        self.assert_invalid(lambda d: d["blocks"][0].update(name="INT"), "block INT", "C++")

    def test_generated_name_collision(self) -> None:
        # Field MODE of register CTRL generates CTRL_MODE_SHIFT; so does register CTRL_MODE_SHIFT.
        def m(d):
            d["blocks"][0]["registers"].append(
                {"name": "CTRL_MODE_SHIFT", "offset": "0x20", "width": 32, "access": "rw",
                 "reset": 0, "description": "Collides."})
        self.assert_invalid(m, "CTRL_MODE_SHIFT", "collides")

    def test_missing_description(self) -> None:
        self.assert_invalid(lambda d: self.reg(d, 0, "KICK").pop("description"),
                            "register KICK", "missing 'description'")

    def test_invalid_json(self) -> None:
        src = self.tmp / "broken.json"
        src.write_text('{"blocks": [}')
        rc, err = run_main(["--input", str(src), "--cpp", str(self.tmp / "x.h")])
        self.assertEqual(rc, 1)
        self.assertIn("invalid JSON", err)
        self.assertIn("broken.json:1:", err)

    def test_duplicate_json_key(self) -> None:
        src = self.tmp / "dup.json"
        src.write_text(json.dumps(SMALL).replace('"name": "KICK", ',
                                                 '"name": "KICK", "offset": "0x20", '))
        rc, err = run_main(["--input", str(src), "--cpp", str(self.tmp / "x.h")])
        self.assertEqual(rc, 1)
        self.assertIn("duplicate key 'offset' in the object named KICK", err)

    def test_count_too_large(self) -> None:
        self.assert_invalid(lambda d: d["blocks"][1].update(count="0x100000000"),
                            "block UNIT", "'count'")

    def test_value_beyond_64_bits(self) -> None:
        self.assert_invalid(lambda d: d["constants"][1].update(value="0x1" + "0" * 16),
                            "constant UNITS", "64 bits")

    def test_all_errors_reported_at_once(self) -> None:
        def m(d):
            self.reg(d, 0, "CTRL").update(access="rx")
            self.reg(d, 0, "KICK").update(reset="0x100000000")
        text = self.assert_invalid(m, "register CTRL", "unknown access")
        self.assertIn("register KICK", text)


if __name__ == "__main__":
    unittest.main()
