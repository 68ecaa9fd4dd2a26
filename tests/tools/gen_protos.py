"""Regenerate the committed Python (and .pyi stubs) for protocol/core/proto/*.proto.

Run from the repository root: `.venv/bin/python tests/tools/gen_protos.py`. It uses the protoc
bundled with grpcio-tools and the mypy-protobuf plugin, both dev dependencies, so the output does
not depend on what is installed on the machine. `--check` regenerates into a temporary directory
and fails if the committed files differ (run by the test suite).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "protocol" / "core" / "proto"


def generate(out: Path) -> list[Path]:
    protos = sorted(PROTO_DIR.glob("*.proto"))
    rel = [str(p.relative_to(ROOT)) for p in protos]
    plugin = Path(sys.executable).parent / "protoc-gen-mypy"
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"--plugin=protoc-gen-mypy={plugin}",
        f"--python_out={out}",
        f"--mypy_out={out}",
        *rel,
    ]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return [
        out / p.with_suffix("").with_name(p.stem + suffix)
        for p in map(Path, rel)
        for suffix in ("_pb2.py", "_pb2.pyi")
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed files are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        produced = generate(Path(tmp))
        stale = []
        for path in produced:
            target = ROOT / path.relative_to(tmp)
            if args.check:
                if not target.exists() or not filecmp.cmp(path, target, shallow=False):
                    stale.append(str(target.relative_to(ROOT)))
            else:
                shutil.copyfile(path, target)
        if stale:
            print("stale generated protobuf files:", *stale, sep="\n  ")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
