#!/usr/bin/python3
"""Checks that scripts/keel.sh's Debian package list installs every pkg-config module the
build asks for, including the modules those require in turn (Requires and Requires.private:
CMake's pkg_check_modules reads both). A package that ships a .pc file but whose Debian
package does not depend on the packages owning the .pc files it requires (libnvme-dev's
libnvme.pc requires openssl, and libnvme-dev does not pull in libssl-dev) works on a machine
that happens to have the other package and fails on a minimal Debian: this test fails instead.

Offline: it reads the installed packages' Depends with dpkg-query, not the archive.
Usage: check_pkgconfig_deps.py <keel source root>
"""
import re
import subprocess
import sys
from pathlib import Path


def packages_from_script(root: Path) -> list[str]:
    text = (root / "scripts" / "keel.sh").read_text()
    m = re.search(r"^PACKAGES=\((.*?)^\)", text, re.S | re.M)
    if not m:
        sys.exit("check_pkgconfig_deps: no PACKAGES=( ... ) in scripts/keel.sh")
    words = []
    for line in m.group(1).splitlines():
        words += line.split("#", 1)[0].split()
    return words


def modules_from_cmake(root: Path) -> set[str]:
    mods = set()
    for f in root.rglob("CMakeLists.txt"):
        if any(part.startswith("build") for part in f.relative_to(root).parts):
            continue
        for m in re.finditer(r"pkg_check_modules\(([^)]*)\)", f.read_text()):
            for w in m.group(1).split()[1:]:
                if w.isupper() or w.startswith("$"):
                    continue  # REQUIRED, IMPORTED_TARGET, QUIET ...
                mods.add(re.split(r"[<>=]", w)[0])
    return mods


def run(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True).stdout


def requires(module: str) -> set[str]:
    out = run("pkg-config", "--print-requires", "--print-requires-private", module)
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def pc_owner(module: str) -> str | None:
    pcdir = run("pkg-config", "--variable=pcfiledir", module).strip()
    if not pcdir:
        return None
    out = run("dpkg-query", "-S", f"{pcdir}/{module}.pc")
    return out.split(":")[0].strip() if out else None


def installed_field(pkg: str, field: str) -> str:
    return run("dpkg-query", "-W", "-f=${" + field + "}", pkg)


def depends_closure(roots: list[str]) -> set[str]:
    provides: dict[str, set[str]] = {}
    for line in run("dpkg-query", "-W", "-f=${Package}\t${Provides}\n").splitlines():
        name, _, prov = line.partition("\t")
        for p in prov.split(","):
            p = p.strip().split(" ")[0]
            if p:
                provides.setdefault(p, set()).add(name)
    seen: set[str] = set()
    pending = list(roots)
    while pending:
        pkg = pending.pop()
        if pkg in seen:
            continue
        seen.add(pkg)
        deps = installed_field(pkg, "Depends") + "," + installed_field(pkg, "Pre-Depends")
        for alt in deps.split(","):
            for choice in alt.split("|"):
                name = choice.strip().split(" ")[0].split(":")[0]
                if not name:
                    continue
                pending.append(name)
                pending.extend(provides.get(name, ()))
    return seen


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    listed = packages_from_script(root)
    closure = depends_closure(listed)
    pending = sorted(modules_from_cmake(root))
    seen: set[str] = set()
    missing = []
    while pending:
        mod = pending.pop()
        if mod in seen:
            continue
        seen.add(mod)
        owner = pc_owner(mod)
        if owner is None:
            missing.append(f"{mod}: no {mod}.pc installed (which package ships it?)")
            continue
        if owner not in closure:
            missing.append(f"{mod}.pc comes from {owner}, which scripts/keel.sh neither lists "
                           f"nor gets through a listed package's Depends: add {owner}")
        pending.extend(requires(mod) - seen)
    print(f"check_pkgconfig_deps: {len(seen)} pkg-config modules ({', '.join(sorted(seen))}), "
          f"{len(listed)} listed packages, {len(closure)} in their Depends closure")
    for m in missing:
        print("MISSING:", m)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
