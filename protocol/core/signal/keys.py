"""Long-lived Signal key material: identity, registration id, signed prekey, one-time prekeys,
and the prekey bundle a peer publishes (SPEC §8.1, §10.1, §10.2, §12.3).

Everything is generated from the injected `rng`. Records stored in the key store are opaque
bytes produced here (`PreKey.to_bytes`, `SignedPreKey.to_bytes`); only this module reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf.message import DecodeError as ProtobufDecodeError

from protocol.core import curve
from protocol.core.errors import CryptoError, DecodeError
from protocol.core.inject import Rng
from protocol.core.proto import signal_records_pb2 as rpb

REGISTRATION_ID_MASK = 0x3FFF  # SPEC §8.1: Baileys `generateRegistrationId` = random16 & 0x3FFF
MAX_PREKEY_ID = 0xFFFFFF  # SPEC §10.1/§12.3: prekey ids are 24-bit (3 bytes BE on the wire)
FIRST_PREKEY_ID = 1  # SPEC §12.3: ids start at 1 and increase (Baileys `nextPreKeyId`)

_M = TypeVar("_M", rpb.PreKeyRecord, rpb.SignedPreKeyRecord)


def generate_registration_id(rng: Rng) -> int:
    """A 14-bit registration id like Baileys' (SPEC §8.1)."""
    return int.from_bytes(rng(2), "big") & REGISTRATION_ID_MASK


@dataclass(frozen=True, slots=True)
class LocalIdentity:
    """This device's identity key pair and registration id (from the device credentials)."""

    key_pair: curve.KeyPair
    registration_id: int

    @property
    def public(self) -> bytes:
        return self.key_pair.public


def generate_identity(rng: Rng) -> LocalIdentity:
    """A fresh identity key pair and registration id."""
    key_pair = curve.generate_keypair(rng)
    return LocalIdentity(key_pair=key_pair, registration_id=generate_registration_id(rng))


@dataclass(frozen=True, slots=True)
class PreKey:
    """A one-time prekey (24-bit id)."""

    id: int
    key_pair: curve.KeyPair

    def to_bytes(self) -> bytes:
        return rpb.PreKeyRecord(
            id=self.id, private=self.key_pair.private, public=self.key_pair.public
        ).SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> PreKey:
        msg = _parse(rpb.PreKeyRecord, data, "prekey record")
        return cls(id=msg.id, key_pair=_key_pair(msg.private, msg.public))


@dataclass(frozen=True, slots=True)
class SignedPreKey:
    """The signed prekey: `signature = Sign(identity, 0x05 || pub)` (SPEC §10.2)."""

    id: int
    key_pair: curve.KeyPair
    signature: bytes = field(repr=False)

    def to_bytes(self) -> bytes:
        return rpb.SignedPreKeyRecord(
            id=self.id,
            private=self.key_pair.private,
            public=self.key_pair.public,
            signature=self.signature,
        ).SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedPreKey:
        msg = _parse(rpb.SignedPreKeyRecord, data, "signed prekey record")
        if len(msg.signature) != curve.SIGNATURE_LEN:
            raise DecodeError("signed prekey record has a bad signature length")
        return cls(id=msg.id, key_pair=_key_pair(msg.private, msg.public), signature=msg.signature)


def generate_prekeys(start_id: int, count: int, rng: Rng) -> list[PreKey]:
    """`count` one-time prekeys with consecutive ids from `start_id` (SPEC §12.3)."""
    if start_id < FIRST_PREKEY_ID or start_id + count - 1 > MAX_PREKEY_ID or count < 0:
        raise CryptoError("prekey ids must stay within 1..0xFFFFFF", start=start_id, count=count)
    return [PreKey(id=start_id + i, key_pair=curve.generate_keypair(rng)) for i in range(count)]


def generate_signed_prekey(identity: LocalIdentity, key_id: int, rng: Rng) -> SignedPreKey:
    """A signed prekey with id `key_id`, signed over its 33-byte DJB form (SPEC §10.2)."""
    if not 0 <= key_id <= MAX_PREKEY_ID:
        raise CryptoError("signed prekey id must be 24-bit", key_id=key_id)
    key_pair = curve.generate_keypair(rng)
    signature = curve.sign(identity.key_pair.private, curve.djb(key_pair.public))
    return SignedPreKey(id=key_id, key_pair=key_pair, signature=signature)


@dataclass(frozen=True, slots=True)
class PreKeyBundle:
    """What the server hands out for a peer device (SPEC §13.4): public keys are raw 32 bytes."""

    registration_id: int
    identity_key: bytes
    signed_prekey_id: int
    signed_prekey: bytes
    signed_prekey_signature: bytes
    prekey_id: int | None = None
    prekey: bytes | None = None


def bundle_for(
    identity: LocalIdentity, signed_prekey: SignedPreKey, prekey: PreKey | None
) -> PreKeyBundle:
    """The bundle our own keys form (what the server would hand out for this device)."""
    return PreKeyBundle(
        registration_id=identity.registration_id,
        identity_key=identity.public,
        signed_prekey_id=signed_prekey.id,
        signed_prekey=signed_prekey.key_pair.public,
        signed_prekey_signature=signed_prekey.signature,
        prekey_id=None if prekey is None else prekey.id,
        prekey=None if prekey is None else prekey.key_pair.public,
    )


def _key_pair(private: bytes, public: bytes) -> curve.KeyPair:
    if len(private) != curve.KEY_LEN or len(public) != curve.KEY_LEN:
        raise DecodeError("stored key pair has a bad key length")
    return curve.KeyPair(private=private, public=public)


def _parse(kind: type[_M], data: bytes, what: str) -> _M:
    msg = kind()
    try:
        msg.ParseFromString(data)
    except ProtobufDecodeError as exc:
        raise DecodeError(f"corrupt {what}") from exc
    return msg
