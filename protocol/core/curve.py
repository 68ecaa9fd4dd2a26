"""Curve25519 keys, X25519 agreement and "curve25519 signatures" (XEdDSA-compatible).

Facts: shared/protocol/SPEC.md §1 (32-byte keys, 0x05 "DJB" prefix for the 33-byte form),
§8.1 (key generation), §10.3 (the signature scheme of curve25519-js `curve25519_sign`, used by
libsignal-node and Baileys).

X25519 is done by `cryptography`. Verification converts the Montgomery public key to its Edwards
form and lets `cryptography`'s Ed25519 verify. Signing cannot be done by `cryptography` (its
Ed25519 keys are seed-derived), so it uses a small Ed25519 scalar multiplication written here.

Constant time, as far as Python allows: both scalar multiplications in signing are by the
fixed base point, done as a 4-bit fixed-window comb over a table of j·16^i·B (64 windows x 16
entries, public data built once on first use). Every window scans all 16 entries and keeps the
wanted one by masking, so no branch and no table index depends on a secret digit; all 64
windows are always added, with the complete, branch-free twisted Edwards addition (the
identity entry included). Python's big integers are not constant-time themselves (their
running time follows the size of the values), so this removes the gross timing channels of
double-and-add and of indexed table lookups, not every one. Signing is deterministic (r is
derived from the key and message, as curve25519-js does when no random is given), so no
randomness enters it.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from protocol.core.errors import CryptoError
from protocol.core.inject import Rng

KEY_LEN = 32
SIGNATURE_LEN = 64
DJB_TYPE = 0x05  # SPEC §1: `KEY_BUNDLE_TYPE = [5]` (Baileys), `ecc.DjbType` (whatsmeow)

# Ed25519 / Curve25519 domain parameters (RFC 7748 §4.1, RFC 8032 §5.1).
_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_D2 = (2 * _D) % _P
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_BY = 46316835694926478169428394003475163141307993866256225615783033603165251855960
_BASE = (_BX, _BY, 1, (_BX * _BY) % _P)
_IDENTITY = (0, 1, 1, 0)

_Point = tuple[int, int, int, int]  # extended twisted Edwards coordinates (X, Y, Z, T)


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A Curve25519 key pair: 32-byte raw private scalar bytes and 32-byte public u-coordinate."""

    private: bytes = field(repr=False)
    public: bytes

    def __repr__(self) -> str:  # never show key material (DESIGN §3.9)
        return f"KeyPair(public={self.public.hex()})"


def generate_keypair(rng: Rng) -> KeyPair:
    """A new key pair from 32 rng bytes, clamped at generation like whatsmeow (SPEC §8.1)."""
    return keypair_from_private(clamp(rng(KEY_LEN)))


def keypair_from_private(private: bytes) -> KeyPair:
    """The key pair for raw private bytes; unclamped bytes are accepted, as Node and Baileys do."""
    return KeyPair(private=bytes(private), public=public_key(private))


def clamp(private: bytes) -> bytes:
    """RFC 7748 clamping: clear the low 3 bits and the top bit, set bit 254."""
    _check_len(private, "private key")
    b = bytearray(private)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return bytes(b)


def public_key(private: bytes) -> bytes:
    """X25519(private, 9)."""
    _check_len(private, "private key")
    pub = X25519PrivateKey.from_private_bytes(private).public_key()
    return pub.public_bytes_raw()


def shared_key(private: bytes, public: bytes) -> bytes:
    """X25519 agreement. A low-order public key (all-zero output) raises CryptoError."""
    _check_len(private, "private key")
    public = strip_djb(public)
    try:
        return X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(public)
        )
    except ValueError as exc:
        raise CryptoError("X25519 agreement with a low-order public key") from exc


def djb(public: bytes) -> bytes:
    """The 33-byte Signal form `0x05 || pub` (SPEC §10.1)."""
    _check_len(public, "public key")
    return bytes([DJB_TYPE]) + public


def strip_djb(public: bytes) -> bytes:
    """Accept a 32-byte key or the 33-byte `0x05 || pub` form; return the 32-byte key."""
    if len(public) == KEY_LEN + 1 and public[0] == DJB_TYPE:
        return public[1:]
    _check_len(public, "public key")
    return public


def sign(private: bytes, message: bytes) -> bytes:
    """The curve25519-js signature of `message` (SPEC §10.3), deterministic, 64 bytes."""
    a_bytes = clamp(private)
    a = int.from_bytes(a_bytes, "little")
    pub_ed = _encode(_base_mult(a))
    sign_bit = pub_ed[31] & 0x80
    r = int.from_bytes(hashlib.sha512(a_bytes + message).digest(), "little") % _L
    r_enc = _encode(_base_mult(r))
    h = int.from_bytes(hashlib.sha512(r_enc + pub_ed + message).digest(), "little") % _L
    s = (r + h * a) % _L
    sig = bytearray(r_enc + s.to_bytes(32, "little"))
    sig[63] |= sign_bit
    return bytes(sig)


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """True iff `signature` is a valid curve25519 signature of `message` under `public`.

    `public` may be 32 bytes or the 33-byte DJB form. Malformed input returns False.
    """
    try:
        public = strip_djb(public)
    except CryptoError:
        return False
    if len(signature) != SIGNATURE_LEN:
        return False
    u = int.from_bytes(public, "little") & ((1 << 255) - 1)
    denominator = (u + 1) % _P
    if denominator == 0:
        return False
    y = ((u - 1) * pow(denominator, _P - 2, _P)) % _P
    ed_pub = bytearray(y.to_bytes(32, "little"))
    ed_pub[31] = (ed_pub[31] & 0x7F) | (signature[63] & 0x80)
    sig = bytearray(signature)
    sig[63] &= 0x7F
    try:
        Ed25519PublicKey.from_public_bytes(bytes(ed_pub)).verify(bytes(sig), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _check_len(key: bytes, what: str) -> None:
    if len(key) != KEY_LEN:
        raise CryptoError(f"{what} must be {KEY_LEN} bytes", length=len(key))


def _add(p: _Point, q: _Point) -> _Point:
    # Complete addition for a = -1 twisted Edwards (Hisil-Wong-Carter-Dawson 2008,
    # "add-2008-hwcd-3"); valid for doubling too, so the ladder has one branch-free formula.
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = ((y1 - x1) * (y2 - x2)) % _P
    b = ((y1 + x1) * (y2 + x2)) % _P
    c = (t1 * _D2 * t2) % _P
    d = (2 * z1 * z2) % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return ((e * f) % _P, (g * h) % _P, (f * g) % _P, (e * h) % _P)


_WINDOW_BITS = 4
_WINDOWS = 64  # 256-bit scalars (the clamped key is < 2^255, r < L < 2^253)
_WINDOW_SIZE = 1 << _WINDOW_BITS


@functools.cache
def _base_table() -> tuple[tuple[_Point, ...], ...]:
    """Row i holds j·16^i·B for j = 0..15 (public constants, computed once per process)."""
    rows = []
    base = _BASE
    for _ in range(_WINDOWS):
        row = [_IDENTITY]
        point = base
        for _j in range(1, _WINDOW_SIZE):
            row.append(point)
            point = _add(point, base)
        rows.append(tuple(row))
        base = point  # 16·base
    return tuple(rows)


def _base_mult(k: int) -> _Point:
    """k·B with a masked scan of every table row (see the module docstring)."""
    acc = _IDENTITY
    for i, row in enumerate(_base_table()):
        digit = (k >> (_WINDOW_BITS * i)) & (_WINDOW_SIZE - 1)
        sx = sy = sz = st = 0
        for j, (x, y, z, t) in enumerate(row):
            mask = -(1 ^ (((j ^ digit) + _WINDOW_SIZE - 1) >> _WINDOW_BITS))  # -1 iff j == digit
            sx |= x & mask
            sy |= y & mask
            sz |= z & mask
            st |= t & mask
        acc = _add(acc, (sx, sy, sz, st))
    return acc


def _encode(point: _Point) -> bytes:
    x, y, z, _ = point
    zi = pow(z, _P - 2, _P)
    x, y = (x * zi) % _P, (y * zi) % _P
    out = bytearray(y.to_bytes(32, "little"))
    out[31] |= (x & 1) << 7
    return bytes(out)
