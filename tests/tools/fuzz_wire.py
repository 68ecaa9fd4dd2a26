"""Long fuzz run of the wire layer, outside the suite.

Runs tests/protocol/test_fuzz_wire.py (frame reader, node decoder, protobuf parsing, each
handshake message into each role) with the hypothesis "fuzz" profile (tests/conftest.py), so
every target gets 100,000 examples unless `--examples N` says otherwise. Any exception other
than our FrameError/DecodeError/HandshakeError fails the run and hypothesis prints the input.

Usage: .venv/bin/python tests/tools/fuzz_wire.py [--examples N] [pytest args...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=None, help="examples per target")
    args, rest = parser.parse_known_args(argv)
    env = dict(os.environ, WAFLEET_HYPOTHESIS_PROFILE="fuzz")
    if args.examples is not None:
        env["WAFLEET_FUZZ_EXAMPLES"] = str(args.examples)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "tests/protocol/test_fuzz_wire.py",
        "-q",
        "-p",
        "no:cacheprovider",
        "--timeout=0",
        "--hypothesis-show-statistics",
        *rest,
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
