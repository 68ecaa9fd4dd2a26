"""Signal's key derivations: `deriveSecrets` (HKDF-SHA256 in 32-byte blocks), the symmetric
chain step and the per-message keys (SPEC §10.4, §10.5, §10.8; vectors SPEC §18.9).

Facts from libsignal-node `src/crypto.js` (`deriveSecrets`, `calculateMAC`) and
`src/session_cipher.js` (`fillMessageKeys`): the salt is always 32 bytes and at most three
blocks are returned. Everything here is a pure function over bytes.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from protocol.core.errors import CryptoError

HASH = "sha256"
BLOCK = 32
ZERO_SALT = bytes(32)  # SPEC §1: "no salt" = 32 zero bytes; libsignal passes Buffer.alloc(32)
MESSAGE_KEY_SEED = b"\x01"  # SPEC §10.5: messageKeySeed = HMAC(CK, 0x01)
CHAIN_KEY_SEED = b"\x02"  # SPEC §10.5: CK' = HMAC(CK, 0x02)
INFO_TEXT = b"WhisperText"  # SPEC §10.4: X3DH master secret
INFO_RATCHET = b"WhisperRatchet"  # SPEC §10.4/§10.5: root-key ratchet
INFO_MESSAGE_KEYS = b"WhisperMessageKeys"  # SPEC §10.5: per-message keys
INFO_GROUP = b"WhisperGroup"  # SPEC §10.8: sender-key message keys
MAX_BLOCKS = 3  # libsignal-node crypto.js: deriveSecrets asserts 1 <= chunks <= 3


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """libsignal's `calculateMAC`."""
    return hmac.digest(key, data, HASH)


def derive_secrets(ikm: bytes, salt: bytes, info: bytes, blocks: int = MAX_BLOCKS) -> list[bytes]:
    """RFC 5869 HKDF-SHA256 returning `blocks` 32-byte output blocks T(1)..T(blocks)."""
    if len(salt) != BLOCK:
        raise CryptoError("deriveSecrets salt must be 32 bytes", length=len(salt))
    if not 1 <= blocks <= MAX_BLOCKS:
        raise CryptoError("deriveSecrets returns 1 to 3 blocks", blocks=blocks)
    prk = hmac.digest(salt, ikm, HASH)
    out: list[bytes] = []
    previous = b""
    for i in range(1, blocks + 1):
        previous = hmac.digest(prk, previous + info + bytes((i,)), HASH)
        out.append(previous)
    return out


def chain_step(chain_key: bytes) -> tuple[bytes, bytes]:
    """One symmetric-ratchet step: (message key seed, next chain key)."""
    return (
        hmac.digest(chain_key, MESSAGE_KEY_SEED, HASH),
        hmac.digest(chain_key, CHAIN_KEY_SEED, HASH),
    )


@dataclass(frozen=True, slots=True)
class MessageKeys:
    """AES-256-CBC key, HMAC key and IV for one 1:1 message (SPEC §10.5)."""

    cipher_key: bytes = field(repr=False)
    mac_key: bytes = field(repr=False)
    iv: bytes = field(repr=False)


def message_keys(seed: bytes) -> MessageKeys:
    """Expand a message key seed: HKDF(zero salt, seed, "WhisperMessageKeys") = key|mac|iv."""
    cipher_key, mac_key, iv_block = derive_secrets(seed, ZERO_SALT, INFO_MESSAGE_KEYS)
    return MessageKeys(cipher_key=cipher_key, mac_key=mac_key, iv=iv_block[:16])


@dataclass(frozen=True, slots=True)
class GroupMessageKey:
    """AES-256-CBC key and IV for one sender-key message (SPEC §10.8)."""

    iv: bytes = field(repr=False)
    cipher_key: bytes = field(repr=False)


def group_message_key(seed: bytes) -> GroupMessageKey:
    """HKDF(zero salt, seed, "WhisperGroup"): bytes 0..16 are the IV, 16..48 the key."""
    b0, b1 = derive_secrets(seed, ZERO_SALT, INFO_GROUP, blocks=2)
    return GroupMessageKey(iv=b0[:16], cipher_key=b0[16:] + b1[:16])
