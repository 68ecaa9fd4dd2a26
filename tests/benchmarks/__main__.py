"""Run the benchmarks: `make bench` or `.venv/bin/python -m tests.benchmarks [name ...]`.

Each `bench_<area>.py` module here has `main() -> str`, which runs its measurements, prints them
and returns a Markdown section; that section replaces the block between
`<!-- bench:<area> -->` and `<!-- /bench:<area> -->` in docs/BENCHMARKS.md. Benchmarks are never
part of the test suite and nothing asserts timings.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys
from pathlib import Path

import tests.benchmarks as package

DOC = Path(__file__).resolve().parents[2] / "docs" / "BENCHMARKS.md"


def write_section(area: str, markdown: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    begin, end = f"<!-- bench:{area} -->", f"<!-- /bench:{area} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text}\n{block}\n"
    DOC.write_text(text, encoding="utf-8")


def main(argv: list[str]) -> int:
    names = sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules(package.__path__)
        if m.name.startswith("bench_")
    )
    wanted = argv or names
    for area in wanted:
        if area not in names:
            print(f"unknown benchmark {area!r}; known: {', '.join(names)}")
            return 2
        module = importlib.import_module(f"tests.benchmarks.bench_{area}")
        write_section(area, module.main())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
