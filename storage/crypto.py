"""Encryption at rest: AES-256-GCM envelope encryption (DESIGN §3.9).

Each instance has its own random 32-byte data key. The data key is stored wrapped (AES-256-GCM)
by a master key that only the environment holds; every secret of the instance (device
credentials, Signal records) is sealed with the data key. Associated data binds each ciphertext
to where it belongs (instance, record kind, record name), so a blob copied into another row or
instance does not open.

Rotation without downtime: deploy every process with the new master key as current and the old
one among the previous keys (both open data keys), run `wafleet keys rotate` (re-wraps every data
key under the new one, in batches, idempotently), then drop the old key. Master keys are named by
a key id derived from the key (its first 8 SHA-256 bytes, hex), stored beside each wrapped key.

Nothing here logs, and no repr or exception text contains key material.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage.errors import KeyUnavailable

KEY_BYTES = 32
NONCE_BYTES = 12  # AES-GCM standard nonce; random per seal (2^-32 collision bound per key at 2^32)
FORMAT_V1 = b"\x01"  # leading version byte of every sealed blob


@dataclass(frozen=True, slots=True)
class MasterKey:
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise KeyUnavailable("master key must be 32 bytes", length=len(self.key))

    @property
    def key_id(self) -> str:
        return hashlib.sha256(b"wafleet master key id\x00" + self.key).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id})"


@dataclass(frozen=True, slots=True)
class Keyring:
    """The current master key (wraps new keys) and older ones (still unwrap during rotation)."""

    current: MasterKey
    previous: tuple[MasterKey, ...] = ()

    @classmethod
    def from_bytes(cls, current: bytes, previous: tuple[bytes, ...] = ()) -> Keyring:
        return cls(MasterKey(current), tuple(MasterKey(k) for k in previous))

    def by_id(self, key_id: str) -> MasterKey:
        for key in (self.current, *self.previous):
            if key.key_id == key_id:
                return key
        raise KeyUnavailable(
            "data key was wrapped by a master key that is not configured", master_key_id=key_id
        )


@dataclass(frozen=True, slots=True)
class WrappedKey:
    master_key_id: str
    blob: bytes = field(repr=False)


def _aad(*parts: str) -> bytes:
    return b"\x00".join(p.encode() for p in parts)


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return FORMAT_V1 + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, blob: bytes, aad: bytes) -> bytes:
    if len(blob) < 1 + NONCE_BYTES + 16 or blob[:1] != FORMAT_V1:
        raise KeyUnavailable("sealed value is malformed")
    nonce, body = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
    try:
        return AESGCM(key).decrypt(nonce, body, aad)
    except InvalidTag:
        raise KeyUnavailable("sealed value does not open with this key") from None


def new_data_key() -> bytes:
    return os.urandom(KEY_BYTES)


def wrap_data_key(keyring: Keyring, instance_id: uuid.UUID, data_key: bytes) -> WrappedKey:
    """Wrap `data_key` under the current master key, bound to the instance."""
    master = keyring.current
    blob = _seal(master.key, data_key, _aad("data-key", str(instance_id)))
    return WrappedKey(master.key_id, blob)


def unwrap_data_key(keyring: Keyring, instance_id: uuid.UUID, wrapped: WrappedKey) -> bytes:
    master = keyring.by_id(wrapped.master_key_id)
    return _open(master.key, wrapped.blob, _aad("data-key", str(instance_id)))


def rewrap_data_key(keyring: Keyring, instance_id: uuid.UUID, wrapped: WrappedKey) -> WrappedKey:
    """The same data key wrapped under the current master key (for `wafleet keys rotate`)."""
    return wrap_data_key(keyring, instance_id, unwrap_data_key(keyring, instance_id, wrapped))


@dataclass(frozen=True, slots=True)
class RecordCipher:
    """Seals and opens an instance's records with its data key."""

    instance_id: uuid.UUID
    data_key: bytes = field(repr=False)

    def seal(self, kind: str, name: str, plaintext: bytes) -> bytes:
        return _seal(self.data_key, plaintext, _aad(str(self.instance_id), kind, name))

    def open(self, kind: str, name: str, blob: bytes) -> bytes:
        return _open(self.data_key, blob, _aad(str(self.instance_id), kind, name))

    def __repr__(self) -> str:
        return f"RecordCipher(instance_id={self.instance_id})"


def seal_with_master(keyring: Keyring, purpose: str, plaintext: bytes) -> bytes:
    """Seal a small tenant-level secret (e.g. a webhook signing secret) with the master key."""
    return _seal(keyring.current.key, plaintext, _aad("master", purpose))


def open_with_master(keyring: Keyring, master_key_id: str, purpose: str, blob: bytes) -> bytes:
    return _open(keyring.by_id(master_key_id).key, blob, _aad("master", purpose))
