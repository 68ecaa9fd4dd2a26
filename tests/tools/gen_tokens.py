"""Transcribe the WABinary token dictionaries (SPEC §4.3) into Python data modules.

The tables are facts (the strings and their order), so this script extracts only the quoted
string literals of `SINGLE_BYTE_TOKENS` and `DOUBLE_BYTE_TOKENS` from a reference file and writes
them as tuples; no reference code is carried over.

Sources:
  v3: tests/interop/node_modules/@whiskeysockets/baileys/lib/WABinary/constants.js
      (npm @whiskeysockets/baileys@7.0.0-rc14)
  v2: Baileys git tag v6.7.18, src/WABinary/constants.ts
      (`git show v6.7.18:src/WABinary/constants.ts` in a Baileys clone)

Usage: .venv/bin/python tests/tools/gen_tokens.py 3 <constants.js>
       .venv/bin/python tests/tools/gen_tokens.py 2 <constants.ts>
The result is checked against the SHA-256 values of SPEC §4.3 by tests/protocol/test_binary.py.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "protocol" / "core" / "binary"

SOURCES = {
    3: "npm @whiskeysockets/baileys@7.0.0-rc14, lib/WABinary/constants.js",
    2: "Baileys git tag v6.7.18, src/WABinary/constants.ts",
}

_STRING = re.compile(r"'((?:[^'\\]|\\.)*)'")


def _array_text(source: str, name: str) -> str:
    """The text between the `[` after `name` and its matching `]`."""
    start = source.index("= [", source.index(f"const {name}")) + 2
    depth = 0
    in_string = False
    i = start
    while True:
        ch = source[i]
        if in_string:
            if ch == "\\":
                i += 1
            elif ch == "'":
                in_string = False
        elif ch == "'":
            in_string = True
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0:
                return source[start + 1 : i]
        i += 1


def _strings(text: str) -> list[str]:
    out = []
    for m in _STRING.finditer(text):
        raw = m.group(1)
        if "\\" in raw:
            raise SystemExit(f"escape sequence in token {raw!r}: transcribe by hand")
        out.append(raw)
    return out


def _split_double(text: str) -> list[list[str]]:
    tables: list[list[str]] = []
    depth = 0
    in_string = False
    start = 0
    for i, ch in enumerate(text):
        if in_string:
            if ch == "'":
                in_string = False
            continue
        if ch == "'":
            in_string = True
        elif ch == "[":
            depth += 1
            start = i + 1
        elif ch == "]":
            depth -= 1
            tables.append(_strings(text[start:i]))
    return tables


def render(version: int, single: list[str], double: list[list[str]]) -> str:
    def digest(entries: list[str]) -> str:
        return hashlib.sha256("\n".join(entries).encode()).hexdigest()

    lines = [
        f'"""WABinary token dictionary version {version} (SPEC §4.3), as data.',
        "",
        f"Transcribed from {SOURCES[version]}",
        "by tests/tools/gen_tokens.py; do not edit by hand. SHA-256 of the entries joined with",
        '"\\n" (the values SPEC §4.3 lists):',
        f"  single    {digest(single)}",
        *(f"  double[{i}] {digest(d)}" for i, d in enumerate(double)),
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "SINGLE_BYTE_TOKENS: tuple[str, ...] = (",
        *(f"    {s!r}," for s in single),
        ")",
        "",
        "DOUBLE_BYTE_TOKENS: tuple[tuple[str, ...], ...] = (",
    ]
    for table in double:
        lines.append("    (")
        lines.extend(f"        {s!r}," for s in table)
        lines.append("    ),")
    lines.append(")")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    version, path = int(argv[0]), Path(argv[1])
    source = path.read_text(encoding="utf-8")
    single = _strings(_array_text(source, "SINGLE_BYTE_TOKENS"))
    double = _split_double(_array_text(source, "DOUBLE_BYTE_TOKENS"))
    if len(single) != 236 or len(double) != 4 or any(len(d) != 256 for d in double):
        raise SystemExit(f"unexpected table sizes: {len(single)}, {[len(d) for d in double]}")
    out = OUT_DIR / f"tokens_v{version}.py"
    out.write_text(render(version, single, double), encoding="utf-8")
    sys.stdout.write(f"wrote {out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
