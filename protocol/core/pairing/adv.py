"""ADV signed device identity: what `pair-success` carries and how each side checks it (§8.4).

Companion (our client): `process_pair_success(container, adv_secret=, identity=)` verifies the
HMAC and the account signature, signs the device signature and returns `PairedDevice` with the
bytes for the `pair-device-sign` reply and for the `device-identity` of pkmsg sends (§13.5).
Failures raise `PairingError(reason=AdvFailure...)`; `AdvFailure.error_code` / `.error_text`
give the error IQ the client answers with (whatsmeow `handlePair`).

Primary (the simulator's phone): `build_device_identity`, `sign_account`, `build_container`
(or all at once, `build_pair_success_container`), then `verify_device_signature` on the
companion's `pair-device-sign` reply.

Encoding follows Baileys (protobufjs): fields in field-number order, unknown fields dropped,
unset optional fields omitted (SPEC §18.7).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf.message import DecodeError as ProtobufDecodeError

from protocol.core import curve
from protocol.core.curve import KeyPair
from protocol.core.errors import CryptoError, PairingError
from protocol.core.inject import Clock
from protocol.core.proto import adv_pb2

# SPEC §8.4 (Baileys Defaults `WA_ADV_*_SIG_PREFIX`, whatsmeow pair.go).
ADV_ACCOUNT_SIG_PREFIX = b"\x06\x00"
ADV_DEVICE_SIG_PREFIX = b"\x06\x01"
ADV_HOSTED_ACCOUNT_SIG_PREFIX = b"\x06\x05"
ADV_HOSTED_DEVICE_SIG_PREFIX = b"\x06\x06"  # defined, unused by both clients (SPEC §8.4 step 5)

_M = TypeVar(
    "_M",
    adv_pb2.ADVSignedDeviceIdentityHMAC,
    adv_pb2.ADVSignedDeviceIdentity,
    adv_pb2.ADVDeviceIdentity,
)


class AdvEncryptionType(enum.IntEnum):
    """`ADVEncryptionType` (SPEC §6.4)."""

    E2EE = 0
    HOSTED = 1


class AdvFailure(enum.StrEnum):
    """Why `pair-success` was refused; the value is whatsmeow's error text."""

    HMAC_MISMATCH = "hmac-mismatch"
    SIGNATURE_MISMATCH = "signature-mismatch"
    DECODE = "decode"

    @property
    def error_code(self) -> int:
        """The `<error code=…>` of the reply IQ (SPEC §8.4: 401, 401, 500)."""
        return 500 if self is AdvFailure.DECODE else 401

    @property
    def error_text(self) -> str:
        """The `<error text=…>` of the reply IQ (SPEC §8.4)."""
        return "internal-error" if self is AdvFailure.DECODE else self.value


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """`ADVDeviceIdentity` as values (SPEC §6.4)."""

    raw_id: int
    timestamp: int
    key_index: int
    account_type: AdvEncryptionType
    device_type: AdvEncryptionType


@dataclass(frozen=True, slots=True)
class PairedDevice:
    """The companion's result of a verified `pair-success`."""

    details: DeviceIdentity
    key_index: int  # the `key-index` attribute of the reply's device-identity
    primary_identity_key: bytes  # accountSignatureKey: the main device's Signal identity (32)
    device_signature: bytes
    reply_identity: bytes  # ADVSignedDeviceIdentity without accountSignatureKey (pair-device-sign)
    account: bytes  # the full ADVSignedDeviceIdentity (creds.account; device-identity on pkmsg)


# --- companion side ---------------------------------------------------------------------------


def process_pair_success(container: bytes, *, adv_secret: bytes, identity: KeyPair) -> PairedDevice:
    """Verify `ADVSignedDeviceIdentityHMAC` and sign as the companion (SPEC §8.4 steps 1–5)."""
    hmac_msg = _parse(adv_pb2.ADVSignedDeviceIdentityHMAC, container)
    prefix = b""
    if hmac_msg.HasField("accountType") and hmac_msg.accountType == adv_pb2.HOSTED:
        prefix = ADV_HOSTED_ACCOUNT_SIG_PREFIX
    expected = hmac.new(adv_secret, prefix + hmac_msg.details, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, hmac_msg.hmac):
        raise PairingError("ADV HMAC mismatch", reason=AdvFailure.HMAC_MISMATCH)

    signed = _parse(adv_pb2.ADVSignedDeviceIdentity, hmac_msg.details)
    details = _details(signed.details)
    account_prefix = (
        ADV_HOSTED_ACCOUNT_SIG_PREFIX
        if details.device_type == AdvEncryptionType.HOSTED
        else ADV_ACCOUNT_SIG_PREFIX
    )
    account_key = signed.accountSignatureKey
    if not curve.verify(
        account_key, account_prefix + signed.details + identity.public, signed.accountSignature
    ):
        raise PairingError("ADV account signature mismatch", reason=AdvFailure.SIGNATURE_MISMATCH)
    primary_key = _strip(account_key)  # 32 bytes, or 33 in the DJB form verify also accepts

    device_signature = curve.sign(
        identity.private,
        ADV_DEVICE_SIG_PREFIX + signed.details + identity.public + account_key,
    )
    account = _encode_signed(
        details=signed.details,
        account_signature_key=account_key,
        account_signature=signed.accountSignature,
        device_signature=device_signature,
    )
    reply = _encode_signed(
        details=signed.details,
        account_signature_key=None,
        account_signature=signed.accountSignature,
        device_signature=device_signature,
    )
    return PairedDevice(
        details=details,
        key_index=details.key_index,
        primary_identity_key=primary_key,
        device_signature=device_signature,
        reply_identity=reply,
        account=account,
    )


def identity_without_key(account: bytes) -> bytes:
    """Baileys `encodeSignedDeviceIdentity(account, false)`: drop accountSignatureKey."""
    signed = _parse(adv_pb2.ADVSignedDeviceIdentity, account)
    return _encode_signed(
        details=signed.details if signed.HasField("details") else None,
        account_signature_key=None,
        account_signature=signed.accountSignature if signed.HasField("accountSignature") else None,
        device_signature=signed.deviceSignature if signed.HasField("deviceSignature") else None,
    )


# --- primary side -----------------------------------------------------------------------------


def build_device_identity(
    *,
    raw_id: int,
    key_index: int,
    now: Clock,
    account_type: AdvEncryptionType | None = None,
    device_type: AdvEncryptionType | None = None,
) -> bytes:
    """`ADVDeviceIdentity{rawId, timestamp = now, keyIndex, [accountType], [deviceType]}`."""
    msg = adv_pb2.ADVDeviceIdentity(rawId=raw_id, timestamp=int(now()), keyIndex=key_index)
    if account_type is not None:
        msg.accountType = account_type.value  # type: ignore[assignment]
    if device_type is not None:
        msg.deviceType = device_type.value  # type: ignore[assignment]
    return msg.SerializeToString()


def sign_account(account: KeyPair, details: bytes, companion_identity_public: bytes) -> bytes:
    """`ADVSignedDeviceIdentity{details, accountSignatureKey, accountSignature}` (SPEC §8.4).

    The prefix is [6,5] when `details` says deviceType HOSTED, else [6,0].
    """
    parsed = _details(details)
    prefix = (
        ADV_HOSTED_ACCOUNT_SIG_PREFIX
        if parsed.device_type == AdvEncryptionType.HOSTED
        else ADV_ACCOUNT_SIG_PREFIX
    )
    signature = curve.sign(
        account.private, prefix + details + curve.strip_djb(companion_identity_public)
    )
    return _encode_signed(
        details=details,
        account_signature_key=account.public,
        account_signature=signature,
        device_signature=None,
    )


def build_container(signed_identity: bytes, adv_secret: bytes, *, hosted: bool = False) -> bytes:
    """`ADVSignedDeviceIdentityHMAC{details, hmac[, accountType HOSTED]}` (SPEC §8.4 step 2)."""
    prefix = ADV_HOSTED_ACCOUNT_SIG_PREFIX if hosted else b""
    mac = hmac.new(adv_secret, prefix + signed_identity, hashlib.sha256).digest()
    msg = adv_pb2.ADVSignedDeviceIdentityHMAC(details=signed_identity, hmac=mac)
    if hosted:
        msg.accountType = adv_pb2.HOSTED
    return msg.SerializeToString()


def build_pair_success_container(
    *,
    account: KeyPair,
    companion_identity_public: bytes,
    adv_secret: bytes,
    raw_id: int,
    key_index: int,
    now: Clock,
) -> bytes:
    """The primary's `device-identity` content of `pair-success` (E2EE account and device)."""
    details = build_device_identity(raw_id=raw_id, key_index=key_index, now=now)
    return build_container(sign_account(account, details, companion_identity_public), adv_secret)


@dataclass(frozen=True, slots=True)
class VerifiedCompanion:
    """The primary's view of a verified `pair-device-sign` reply."""

    details: DeviceIdentity
    device_signature: bytes = field(repr=False)


def verify_device_signature(
    reply_identity: bytes,
    *,
    account_public: bytes,
    companion_identity_public: bytes,
    expected_details: bytes | None = None,
) -> VerifiedCompanion:
    """Check the companion's `deviceSignature` (and its copy of our account signature).

    `reply_identity` is the `device-identity` content of `pair-device-sign` (no key inside).
    """
    signed = _parse(adv_pb2.ADVSignedDeviceIdentity, reply_identity)
    details = _details(signed.details)
    if expected_details is not None and signed.details != expected_details:
        raise PairingError("device details differ from ours", reason=AdvFailure.SIGNATURE_MISMATCH)
    account_prefix = (
        ADV_HOSTED_ACCOUNT_SIG_PREFIX
        if details.device_type == AdvEncryptionType.HOSTED
        else ADV_ACCOUNT_SIG_PREFIX
    )
    companion = _strip(companion_identity_public)
    if not curve.verify(
        account_public, account_prefix + signed.details + companion, signed.accountSignature
    ):
        raise PairingError("account signature mismatch", reason=AdvFailure.SIGNATURE_MISMATCH)
    device_msg = ADV_DEVICE_SIG_PREFIX + signed.details + companion + _strip(account_public)
    if not curve.verify(companion, device_msg, signed.deviceSignature):
        raise PairingError("device signature mismatch", reason=AdvFailure.SIGNATURE_MISMATCH)
    return VerifiedCompanion(details=details, device_signature=signed.deviceSignature)


# --- encoding ---------------------------------------------------------------------------------


def _encode_signed(
    *,
    details: bytes | None,
    account_signature_key: bytes | None,
    account_signature: bytes | None,
    device_signature: bytes | None,
) -> bytes:
    msg = adv_pb2.ADVSignedDeviceIdentity()
    if details is not None:
        msg.details = details
    if account_signature_key:  # Baileys: an empty key is dropped too
        msg.accountSignatureKey = account_signature_key
    if account_signature is not None:
        msg.accountSignature = account_signature
    if device_signature is not None:
        msg.deviceSignature = device_signature
    return msg.SerializeToString()


def _details(data: bytes) -> DeviceIdentity:
    d = _parse(adv_pb2.ADVDeviceIdentity, data)
    return DeviceIdentity(
        raw_id=d.rawId,
        timestamp=d.timestamp,
        key_index=d.keyIndex,
        account_type=_enc_type(d, "accountType"),
        device_type=_enc_type(d, "deviceType"),
    )


def _enc_type(msg: adv_pb2.ADVDeviceIdentity, name: str) -> AdvEncryptionType:
    # proto2 keeps an unknown enum number as an unknown field: HasField is False → E2EE, which is
    # also how Baileys treats any value other than HOSTED.
    if msg.HasField(name):  # type: ignore[arg-type]
        return AdvEncryptionType(getattr(msg, name))
    return AdvEncryptionType.E2EE


def _strip(key: bytes) -> bytes:
    try:
        return curve.strip_djb(key)
    except CryptoError:
        raise PairingError("malformed identity key", reason=AdvFailure.SIGNATURE_MISMATCH) from None


def _parse(cls: type[_M], data: bytes) -> _M:
    msg = cls()
    try:
        msg.ParseFromString(data)
    except (ProtobufDecodeError, RuntimeError, ValueError):
        raise PairingError(
            f"{cls.__name__} does not decode", reason=AdvFailure.DECODE, length=len(data)
        ) from None
    return msg
