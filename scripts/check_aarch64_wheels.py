#!/usr/bin/env python3
"""Does every runtime requirement install on a Jetson from a binary wheel, never from source?

    python scripts/check_aarch64_wheels.py [--python-version 3.10] [--glibc 2.35] [--setup setup.py]

The target is JetPack 6: Ubuntu 22.04 (glibc 2.35), Python 3.10, aarch64. The requirements are read
from setup.py: install_requires plus the `cpu` extra, and everything they pull in. Two questions,
both asked of pip (with this machine's pip configuration and index), without installing anything:

1. Does the whole set resolve with wheels only (`--only-binary=:all:` for manylinux aarch64, cp310)?
2. Is each wheel found that way also what pip on the Jetson would choose when sources are allowed?
   pip takes the newest version that fits, wheel or sdist; if the newest has no aarch64 wheel,
   question 1 quietly settles on an older release while a real install builds the newest from source.

Optional extras are reported, never failed: `gpu` (PyPI has no aarch64 onnxruntime-gpu; on a Jetson,
NVIDIA's wheel for the JetPack is used) and `journald` (systemd-python is an sdist: it builds).
Exit 0: all wheels; 1: a requirement would build from source (one line names each); 2: cannot check.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_requirements(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """install_requires and extras_require from setup.py's setup() call, without running it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            kwargs = {k.arg: k.value for k in node.keywords}
            return ast.literal_eval(kwargs["install_requires"]), ast.literal_eval(kwargs["extras_require"])
    raise SystemExit(f"check_aarch64_wheels: no setup() call in {path}")


def platform_args(glibc_minor: int, python_version: str) -> list[str]:
    # pip matches --platform tags literally (it does not widen manylinux_2_28 to older glibcs), so every
    # manylinux tag a glibc-2.<minor> aarch64 system accepts is listed, as pip on the Jetson would accept.
    tags = ["manylinux2014_aarch64"] + [f"manylinux_2_{m}_aarch64" for m in range(17, glibc_minor + 1)]
    nodot = python_version.replace(".", "")
    args = [arg for tag in tags for arg in ("--platform", tag)]
    return args + ["--python-version", python_version, "--implementation", "cp", "--abi", f"cp{nodot}"]


def pip_report(requirements: list[str], target_args: list[str], *, wheels_only: bool, no_deps: bool):
    """(returncode, report dict or None, stderr) of a pip dry run for the target platform."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                   "--disable-pip-version-check", "--report", str(report), "--target", str(Path(tmp) / "t"),
                   *target_args]
        if wheels_only:
            command.append("--only-binary=:all:")
        if no_deps:
            command.append("--no-deps")
        proc = subprocess.run(command + requirements, capture_output=True, text=True)
        data = json.loads(report.read_text()) if proc.returncode == 0 and report.exists() else None
    return proc.returncode, data, proc.stderr


def installs(report: dict) -> dict[str, dict]:
    """Canonical name -> {version, file, requires_dist} for each package of a pip report."""
    out = {}
    for item in report["install"]:
        meta = item["metadata"]
        name = meta["name"].lower().replace("_", "-").replace(".", "-")
        out[name] = {"name": meta["name"], "version": meta["version"],
                     "file": item["download_info"]["url"].rsplit("/", 1)[-1],
                     "requires_dist": meta.get("requires_dist") or []}
    return out


def pip_errors(stderr: str) -> str:
    """pip's ERROR lines (its warnings about this machine's index configuration are noise here)."""
    return "\n".join(line for line in stderr.splitlines() if line.startswith("ERROR")) or stderr.strip()


def failing_requirement(stderr: str) -> str:
    for line in stderr.splitlines():
        if "satisfies the requirement" in line:
            return line.split("satisfies the requirement", 1)[1].split("(from")[0].strip()
    return ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-version", default="3.10", help="the Jetson's Python (JetPack 6: 3.10)")
    parser.add_argument("--glibc", default="2.35", help="the Jetson's glibc (JetPack 6, Ubuntu 22.04: 2.35)")
    parser.add_argument("--setup", type=Path, default=ROOT / "setup.py", help="the setup.py to read")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        from packaging.markers import Marker
        from packaging.requirements import Requirement
        from packaging.specifiers import SpecifierSet
        from packaging.utils import canonicalize_name
    except ImportError:
        try:
            from pip._vendor.packaging.markers import Marker
            from pip._vendor.packaging.requirements import Requirement
            from pip._vendor.packaging.specifiers import SpecifierSet
            from pip._vendor.packaging.utils import canonicalize_name
        except ImportError:
            print("check_aarch64_wheels: needs pip (python -m pip) in this interpreter", file=sys.stderr)
            return 2
    pip_version = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
    if pip_version.returncode != 0:
        print("check_aarch64_wheels: needs pip (python -m pip) in this interpreter", file=sys.stderr)
        return 2
    major, minor = (int(x) for x in pip_version.stdout.split()[1].split(".")[:2])
    if (major, minor) < (22, 2):
        print(f"check_aarch64_wheels: needs pip >= 22.2 for --report (this is {pip_version.stdout.split()[1]}): "
              f"{sys.executable} -m pip install --upgrade pip", file=sys.stderr)
        return 2

    install_requires, extras = setup_requirements(args.setup)
    required = install_requires + extras.get("cpu", [])
    target = platform_args(int(args.glibc.split(".")[1]), args.python_version)
    where = f"cp{args.python_version.replace('.', '')} manylinux aarch64 (glibc <= {args.glibc})"
    print(f"check_aarch64_wheels: {len(required)} requirements (install_requires + cpu) for {where}")

    # 1. The whole set, wheels only.
    rc, report, stderr = pip_report(required, target, wheels_only=True, no_deps=False)
    if report is None:
        missing = failing_requirement(stderr)
        print(pip_errors(stderr))
        # "from versions: none" is also what pip says when the index cannot be reached at all.
        name = Requirement(missing or required[0]).name
        probe = subprocess.run([sys.executable, "-m", "pip", "index", "versions", name], capture_output=True, text=True)
        if probe.returncode != 0:
            print(f"check_aarch64_wheels: pip finds no release of {name} at all: the package index cannot be "
                  f"reached (or the name is wrong); nothing was checked", file=sys.stderr)
            return 2
        print(f"FAIL: {missing or 'the requirements'}: no {where} wheel; a Jetson install would build it from source")
        return 1
    wheels = installs(report)

    # 2. The same packages with sources allowed: each one's specifier is the union of what setup.py and
    # the resolved packages' own requirements ask of it, with markers evaluated for the Jetson.
    env = {"python_version": args.python_version, "python_full_version": f"{args.python_version}.12",
           "platform_machine": "aarch64", "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    specs: dict[str, SpecifierSet] = {name: SpecifierSet() for name in wheels}
    sources = [Requirement(r) for r in required]
    for pkg in wheels.values():
        sources += [Requirement(r) for r in pkg["requires_dist"]]
    for req in sources:
        name = canonicalize_name(req.name)
        if name in specs and (req.marker is None or Marker(str(req.marker)).evaluate(env)):
            specs[name] &= req.specifier
    asked = [f"{wheels[name]['name']}{spec}" for name, spec in specs.items()]
    rc, report, stderr = pip_report(asked, target, wheels_only=False, no_deps=True)
    if report is None:
        print(pip_errors(stderr))
        print("FAIL: pip could not resolve the packages with sources allowed (above); "
              "a Jetson install would probably build one from source")
        return 1
    chosen = installs(report)
    failures = []
    for name, pkg in sorted(wheels.items()):
        other = chosen.get(name)
        if other is None or other["version"] != pkg["version"] or not other["file"].endswith(".whl"):
            newest = other["file"] if other else "?"
            failures.append(f"FAIL: {pkg['name']}: pip on a Jetson would install {newest} (from source); "
                            f"the newest with a {where} wheel is {pkg['version']}")
            print(failures[-1])
        else:
            print(f"  ok  {pkg['name']} {pkg['version']}: {pkg['file']}")

    # Optional extras: what a Jetson gets, said plainly.
    notes = {"gpu": ("on a Jetson, NVIDIA's onnxruntime-gpu for the JetPack is installed instead "
                     "(Jetson AI Lab index; docker/Dockerfile.jetson, install.sh --ort-wheel)"),
             "journald": ("optional; builds from source on the Jetson "
                          "(apt-get install libsystemd-dev pkg-config gcc python3-dev)")}
    for extra, note in notes.items():
        for requirement in extras.get(extra, []):
            _, report, _ = pip_report([requirement], target, wheels_only=True, no_deps=True)
            if report is not None:
                pkg = next(iter(installs(report).values()))
                print(f"  note  [{extra}] {requirement}: wheel {pkg['file']}")
            else:
                print(f"  note  [{extra}] {requirement}: no {where} wheel on the index; {note}")

    took = time.monotonic() - started
    if failures:
        print(f"check_aarch64_wheels: {len(failures)} of {len(wheels)} packages would build from source ({took:.0f} s)")
        return 1
    print(f"check_aarch64_wheels: all {len(wheels)} packages install from {where} wheels ({took:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
