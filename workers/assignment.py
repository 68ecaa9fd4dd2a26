"""Which session worker owns which instance: rendezvous (highest-random-weight) hashing.

Every worker computes the same answer from the same live member list (DESIGN §3.2): the owner
of an instance is the member with the highest hash of (member, instance). When a member joins
or leaves, only the instances it wins or held move — about 1/N of them — and nothing else does
(Thaler & Ravishankar 1998; shared/research/celery.md §5.4). Capacity weights use the
logarithmic method, `-weight / ln(u)` with u the hash mapped into (0, 1).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence

_SCALE = float(2**64)


def _unit(member: str, key: str) -> float:
    digest = hashlib.blake2b(f"{member}\x00{key}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / _SCALE  # strictly inside (0, 1)


def owner_of(
    key: str, members: Sequence[str], weights: Mapping[str, int] | None = None
) -> str | None:
    """The member that owns `key`, or None without members."""
    best: str | None = None
    best_score = -math.inf
    for member in members:
        weight = (weights or {}).get(member, 1)
        if weight <= 0:
            continue
        score = -weight / math.log(_unit(member, key))
        if score > best_score or (score == best_score and best is not None and member < best):
            best, best_score = member, score
    return best


def assignment(
    keys: Iterable[str], members: Sequence[str], weights: Mapping[str, int] | None = None
) -> dict[str, str | None]:
    return {key: owner_of(key, members, weights) for key in keys}
