"""Signal wire messages: WhisperMessage (`msg`), PreKeyWhisperMessage (`pkmsg`),
SenderKeyMessage (`skmsg`) and SenderKeyDistributionMessage (SPEC §6.6, §10.6–§10.8).

Parsers check everything that later code relies on (version byte, field presence, key and
ciphertext lengths) and raise `InvalidMessage` for anything else, so the session code never
sees a half-formed message. Public keys come out raw (32 bytes); the 0x05 prefix is added on
encode (SPEC §10.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import DecodeError as ProtobufDecodeError

from protocol.core import curve
from protocol.core.errors import InvalidMessage
from protocol.core.proto import signal_pb2 as pb

VERSION = 3  # SPEC §10.6: protocol version 3 (libsignal-node session_cipher.js VERSION)
VERSION_BYTE = (VERSION << 4) | VERSION  # 0x33
MAC_LEN = 8  # SPEC §10.6: HMAC-SHA256 truncated to 8 bytes
AES_BLOCK = 16  # AES-256-CBC ciphertexts are whole blocks (PKCS#7 always pads)
CHAIN_KEY_LEN = 32  # SPEC §10.8: sender chain key
MAX_UINT32 = 0xFFFFFFFF


def check_version(byte: int) -> None:
    """libsignal's rule (session_cipher.js): reject if max version < 3 or min version > 3."""
    if byte >> 4 < VERSION or byte & 0x0F > VERSION:
        raise InvalidMessage("unsupported Signal message version", version=byte)


@dataclass(frozen=True, slots=True)
class WhisperMessage:
    """A parsed `msg`; `body` is the protobuf the MAC covers, after 0x33 (SPEC §10.6)."""

    ratchet_key: bytes
    counter: int
    previous_counter: int
    ciphertext: bytes = field(repr=False)
    body: bytes = field(repr=False)
    mac: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class PreKeyWhisperMessage:
    """A parsed `pkmsg` (SPEC §10.7). `prekey_id` is None when no one-time prekey was used."""

    prekey_id: int | None
    signed_prekey_id: int
    base_key: bytes
    identity_key: bytes
    registration_id: int | None
    message: WhisperMessage


def _key(value: bytes, what: str) -> bytes:
    # SPEC §10.1: 33-byte 0x05||pub; libsignal-node also accepts the bare 32 bytes (curve.js).
    if len(value) == curve.KEY_LEN + 1 and value[0] == curve.DJB_TYPE:
        return value[1:]
    if len(value) == curve.KEY_LEN:
        return value
    raise InvalidMessage(f"bad {what}", length=len(value))


def encode_whisper_body(
    ratchet_key: bytes, counter: int, previous_counter: int, ciphertext: bytes
) -> bytes:
    """The WhisperMessage protobuf (without version byte and MAC)."""
    return pb.WhisperMessage(
        ephemeralKey=curve.djb(ratchet_key),
        counter=counter,
        # protobufjs writes uint32 as `value >>> 0`; a previous counter of -1 never occurs in
        # practice but is encoded the same way rather than rejected.
        previousCounter=previous_counter & MAX_UINT32,
        ciphertext=ciphertext,
    ).SerializeToString()


def parse_whisper(data: bytes) -> WhisperMessage:
    """`0x33 || WhisperMessage || mac8` → WhisperMessage; InvalidMessage on anything else."""
    if len(data) < 1 + MAC_LEN + 1:
        raise InvalidMessage("WhisperMessage too short", length=len(data))
    check_version(data[0])
    body = data[1:-MAC_LEN]
    msg = pb.WhisperMessage()
    try:
        msg.ParseFromString(body)
    except ProtobufDecodeError as exc:
        raise InvalidMessage("WhisperMessage does not decode") from exc
    if not (msg.HasField("ephemeralKey") and msg.HasField("counter")):
        raise InvalidMessage("WhisperMessage lacks its ratchet key or counter")
    ciphertext = msg.ciphertext
    if not ciphertext or len(ciphertext) % AES_BLOCK:
        raise InvalidMessage("WhisperMessage ciphertext is not whole AES blocks")
    return WhisperMessage(
        ratchet_key=_key(msg.ephemeralKey, "ratchet key"),
        counter=msg.counter,
        previous_counter=msg.previousCounter,
        ciphertext=ciphertext,
        body=body,
        mac=data[-MAC_LEN:],
    )


def encode_prekey_whisper(
    *,
    prekey_id: int | None,
    signed_prekey_id: int,
    base_key: bytes,
    identity_key: bytes,
    registration_id: int,
    message: bytes,
) -> bytes:
    """`0x33 || PreKeyWhisperMessage` (SPEC §10.7); preKeyId omitted when there is none."""
    msg = pb.PreKeyWhisperMessage(
        baseKey=curve.djb(base_key),
        identityKey=curve.djb(identity_key),
        message=message,
        registrationId=registration_id,
        signedPreKeyId=signed_prekey_id,
    )
    if prekey_id:
        msg.preKeyId = prekey_id
    return bytes((VERSION_BYTE,)) + msg.SerializeToString()


def parse_prekey_whisper(data: bytes) -> PreKeyWhisperMessage:
    """`0x33 || PreKeyWhisperMessage` → PreKeyWhisperMessage; InvalidMessage otherwise."""
    if len(data) < 2:
        raise InvalidMessage("PreKeyWhisperMessage too short", length=len(data))
    check_version(data[0])
    msg = pb.PreKeyWhisperMessage()
    try:
        msg.ParseFromString(data[1:])
    except ProtobufDecodeError as exc:
        raise InvalidMessage("PreKeyWhisperMessage does not decode") from exc
    if not (msg.HasField("baseKey") and msg.HasField("identityKey") and msg.HasField("message")):
        raise InvalidMessage("PreKeyWhisperMessage lacks a base key, identity or message")
    return PreKeyWhisperMessage(
        # libsignal-node treats preKeyId 0 as absent (session_builder.js initIncoming).
        prekey_id=msg.preKeyId or None,
        signed_prekey_id=msg.signedPreKeyId,
        base_key=_key(msg.baseKey, "base key"),
        identity_key=_key(msg.identityKey, "identity key"),
        registration_id=msg.registrationId if msg.HasField("registrationId") else None,
        message=parse_whisper(msg.message),
    )


@dataclass(frozen=True, slots=True)
class SenderKeyMessage:
    """A parsed `skmsg`: `signed` is the part the signature covers (SPEC §10.8)."""

    key_id: int
    iteration: int
    ciphertext: bytes = field(repr=False)
    signed: bytes = field(repr=False)
    signature: bytes = field(repr=False)


def encode_sender_key_body(key_id: int, iteration: int, ciphertext: bytes) -> bytes:
    """`0x33 || SenderKeyMessage` — the signed part, without the signature."""
    msg = pb.SenderKeyMessage(id=key_id, iteration=iteration, ciphertext=ciphertext)
    return bytes((VERSION_BYTE,)) + msg.SerializeToString()


def parse_sender_key_message(data: bytes) -> SenderKeyMessage:
    """`0x33 || SenderKeyMessage || signature64` → SenderKeyMessage; InvalidMessage otherwise."""
    if len(data) < 1 + curve.SIGNATURE_LEN + 1:
        raise InvalidMessage("SenderKeyMessage too short", length=len(data))
    check_version(data[0])
    signed = data[: -curve.SIGNATURE_LEN]
    msg = pb.SenderKeyMessage()
    try:
        msg.ParseFromString(signed[1:])
    except ProtobufDecodeError as exc:
        raise InvalidMessage("SenderKeyMessage does not decode") from exc
    if not (msg.HasField("id") and msg.HasField("iteration")):
        raise InvalidMessage("SenderKeyMessage lacks its key id or iteration")
    if not msg.ciphertext or len(msg.ciphertext) % AES_BLOCK:
        raise InvalidMessage("SenderKeyMessage ciphertext is not whole AES blocks")
    return SenderKeyMessage(
        key_id=msg.id,
        iteration=msg.iteration,
        ciphertext=msg.ciphertext,
        signed=signed,
        signature=data[-curve.SIGNATURE_LEN :],
    )


@dataclass(frozen=True, slots=True)
class SenderKeyDistribution:
    """A parsed SKDM (SPEC §10.8): the sender's chain at `iteration` and its signing key."""

    key_id: int
    iteration: int
    chain_key: bytes = field(repr=False)
    signing_key: bytes


def encode_sender_key_distribution(dist: SenderKeyDistribution) -> bytes:
    """`0x33 || SenderKeyDistributionMessage{id, iteration, chainKey, signingKey(33)}`."""
    msg = pb.SenderKeyDistributionMessage(
        id=dist.key_id,
        iteration=dist.iteration,
        chainKey=dist.chain_key,
        signingKey=curve.djb(dist.signing_key),
    )
    return bytes((VERSION_BYTE,)) + msg.SerializeToString()


def parse_sender_key_distribution(data: bytes) -> SenderKeyDistribution:
    """Parse an SKDM; InvalidMessage on a bad version, missing fields or bad key lengths."""
    if len(data) < 2:
        raise InvalidMessage("SenderKeyDistributionMessage too short", length=len(data))
    check_version(data[0])
    msg = pb.SenderKeyDistributionMessage()
    try:
        msg.ParseFromString(data[1:])
    except ProtobufDecodeError as exc:
        raise InvalidMessage("SenderKeyDistributionMessage does not decode") from exc
    if not (msg.HasField("id") and msg.HasField("chainKey") and msg.HasField("signingKey")):
        raise InvalidMessage("SenderKeyDistributionMessage lacks a field")
    if len(msg.chainKey) != CHAIN_KEY_LEN:
        raise InvalidMessage("SenderKeyDistributionMessage chain key is not 32 bytes")
    return SenderKeyDistribution(
        key_id=msg.id,
        iteration=msg.iteration,
        chain_key=msg.chainKey,
        signing_key=_key(msg.signingKey, "signing key"),
    )
