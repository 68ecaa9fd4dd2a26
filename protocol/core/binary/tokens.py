"""Token dictionaries by version, with the lookup tables the codec needs (SPEC §4.3).

Version 3 is current (Baileys ≥ 6.7.19/7.x, whatsmeow); version 2 is what Baileys ≤ 6.7.18 and
npm `latest` 6.17 speak. A client announces its version in the 4th intro byte (SPEC §2.3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol.core.binary import tokens_v2, tokens_v3

# Tag byte of the first double-byte dictionary (SPEC §4.2 `DICTIONARY_0`).
DICTIONARY_0 = 236

DEFAULT_DICT_VERSION = 3  # SPEC §2.3 `DICT_VERSION = 3`
SUPPORTED_DICT_VERSIONS = (2, 3)


@dataclass(frozen=True, slots=True)
class TokenTable:
    """One dictionary version: its tables and the string → wire-bytes map for the encoder."""

    version: int
    single: tuple[str, ...]
    double: tuple[tuple[str, ...], ...]
    encoded: dict[str, bytes] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        encoded: dict[str, bytes] = {}
        # The empty string (single[0]) is never written as a token (SPEC §4.2, §4.5).
        for i, s in enumerate(self.single):
            if i:
                encoded[s] = bytes((i,))
        for d, table in enumerate(self.double):
            for i, s in enumerate(table):
                encoded[s] = bytes((DICTIONARY_0 + d, i))
        object.__setattr__(self, "encoded", encoded)


_TABLES = {
    3: TokenTable(3, tokens_v3.SINGLE_BYTE_TOKENS, tokens_v3.DOUBLE_BYTE_TOKENS),
    2: TokenTable(2, tokens_v2.SINGLE_BYTE_TOKENS, tokens_v2.DOUBLE_BYTE_TOKENS),
}


def token_table(version: int = DEFAULT_DICT_VERSION) -> TokenTable:
    """The table for a dictionary version; `ValueError` for a version we do not know."""
    try:
        return _TABLES[version]
    except KeyError:
        raise ValueError(f"unknown token dictionary version {version}") from None
