"""Guards for the build: generated protobuf code is current, every package ships, and every
package carries the docstring that newcomers read first (STYLE: Layout and direction)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("config", "protocol", "storage", "tasks", "workers")


def _packages() -> list[str]:
    found = []
    for top in FIRST_PARTY:
        for init in sorted((ROOT / top).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT)
            if "node_modules" not in rel.parts:
                found.append(".".join(rel.parts))
    return found


def test_generated_protobuf_code_is_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "tools" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_package_is_in_the_build_config() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    missing = [p for p in _packages() if not any(fnmatch(p, pat) for pat in patterns)]
    assert missing == []


def test_every_package_has_a_docstring() -> None:
    undocumented = [
        name
        for name in _packages()
        if name.split(".")[-1] != "versions"
        and not (importlib.import_module(name).__doc__ or "").strip()
    ]
    assert undocumented == []
