"""Pairing with a phone number ("link code"), both sides as pure steps (SPEC §9, §18.6).

Companion (our client):
1. `PairingCode.generate(rng)` (or `PairingCode.parse(text)` for a caller's code), then
   `companion_hello(code, companion_ephemeral, rng)` → the 80-byte wrapped ephemeral key.
2. On the primary's notification: `unwrap_key(code, wrapped_primary_ephemeral)`, then
   `companion_finish(...)` → the 156-byte key bundle for `companion_finish` and the new adv
   secret.

Primary (the simulator's phone):
1. `primary_hello(code, wrapped_companion_ephemeral, primary_ephemeral, rng)` → the companion's
   ephemeral public key and our own wrapped one for the notification.
2. `primary_finish(...)` on `companion_finish` → decrypts the bundle and derives the same adv
   secret.

AES-CTR key wrapping is not authenticated: a wrong code yields a wrong key, not an error. It is
caught where the bundle's AES-GCM tag fails (`primary_finish`), as `PairingError`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from protocol.core import curve
from protocol.core.curve import KeyPair
from protocol.core.errors import CryptoError, PairingError
from protocol.core.inject import Rng

# SPEC §9.1: Baileys `bytesToCrockford` alphabet, whatsmeow base32 encoding.
CROCKFORD_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTVWXYZ"
CODE_RANDOM_BYTES = 5  # SPEC §9.1
CODE_LEN = 8  # SPEC §9.1
PBKDF2_ITERATIONS = 2 << 16  # SPEC §9.1: 131072
PBKDF2_SALT_LEN = 32  # SPEC §9.1
CTR_IV_LEN = 16  # SPEC §9.1
KEY_LEN = 32
WRAPPED_KEY_LEN = PBKDF2_SALT_LEN + CTR_IV_LEN + KEY_LEN  # 80, SPEC §9.1
BUNDLE_SALT_LEN = 32  # SPEC §9.3
BUNDLE_NONCE_LEN = 12  # SPEC §9.3
ADV_RANDOM_LEN = 32  # SPEC §9.3
GCM_TAG_LEN = 16
WRAPPED_BUNDLE_LEN = BUNDLE_SALT_LEN + BUNDLE_NONCE_LEN + 3 * KEY_LEN + GCM_TAG_LEN  # 156, §9.4
BUNDLE_INFO = b"link_code_pairing_key_bundle_encryption_key"  # SPEC §9.3
ADV_SECRET_INFO = b"adv_secret"  # SPEC §9.3


class LinkCodeFailure(enum.StrEnum):
    """Why a link-code step failed (`PairingError.details["reason"]`)."""

    BAD_CODE = "bad-code"
    BAD_LENGTH = "bad-length"
    BAD_KEY = "bad-key"
    BUNDLE_DECRYPT = "bundle-decrypt"
    BUNDLE_MISMATCH = "bundle-mismatch"


@dataclass(frozen=True, slots=True)
class PairingCode:
    """An 8-character code over `CROCKFORD_ALPHABET`; `value` is what key derivation uses."""

    value: str = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.value) != CODE_LEN or any(c not in CROCKFORD_ALPHABET for c in self.value):
            raise PairingError(
                "pairing code must be 8 Crockford characters", reason=LinkCodeFailure.BAD_CODE
            )

    @classmethod
    def generate(cls, rng: Rng) -> PairingCode:
        """5 rng bytes → 8 characters (Baileys `bytesToCrockford(randomBytes(5))`)."""
        return cls(bytes_to_crockford(rng(CODE_RANDOM_BYTES)))

    @classmethod
    def parse(cls, text: str) -> PairingCode:
        """A caller-supplied code: `XXXXXXXX` or the displayed `XXXX-XXXX` (upper case)."""
        if len(text) == CODE_LEN + 1 and text[4] == "-":
            text = text[:4] + text[5:]
        return cls(text)

    @property
    def display(self) -> str:
        """`XXXX-XXXX`, as whatsmeow shows it (SPEC §9.1)."""
        return f"{self.value[:4]}-{self.value[4:]}"


def bytes_to_crockford(data: bytes) -> str:
    """MSB-first 5-bit groups over `CROCKFORD_ALPHABET`, last group zero-filled (§9.1)."""
    value = int.from_bytes(data, "big")
    bits = len(data) * 8
    pad = -bits % 5
    value <<= pad
    groups = (bits + pad) // 5
    return "".join(
        CROCKFORD_ALPHABET[(value >> (5 * (groups - 1 - i))) & 31] for i in range(groups)
    )


def derive_code_key(code: PairingCode, salt: bytes) -> bytes:
    """PBKDF2-HMAC-SHA256(code, salt, 131072, 32) (Baileys `derivePairingCodeKey`)."""
    kdf = PBKDF2HMAC(
        algorithm=hashes.SHA256(), length=KEY_LEN, salt=salt, iterations=PBKDF2_ITERATIONS
    )
    return kdf.derive(code.value.encode("ascii"))


def wrap_key(code: PairingCode, public: bytes, rng: Rng) -> bytes:
    """`salt(32) || iv(16) || AES-256-CTR(PBKDF2(code, salt), iv, public)` (80 bytes, §9.1).

    rng draws in Baileys' order: salt(32), iv(16).
    """
    salt = rng(PBKDF2_SALT_LEN)
    iv = rng(CTR_IV_LEN)
    return seal_key(derive_code_key(code, salt), salt, iv, public)


def unwrap_key(code: PairingCode, wrapped: bytes) -> bytes:
    """Inverse of `wrap_key`. A wrong code is not detectable here (CTR has no tag)."""
    _check_wrapped(wrapped)
    return open_key(derive_code_key(code, wrapped[:PBKDF2_SALT_LEN]), wrapped)


def seal_key(code_key: bytes, salt: bytes, iv: bytes, public: bytes) -> bytes:
    """`wrap_key` with the PBKDF2 step done by the caller (`derive_code_key(code, salt)`)."""
    if len(public) != KEY_LEN:
        raise PairingError("ephemeral key must be 32 bytes", reason=LinkCodeFailure.BAD_LENGTH)
    if len(salt) != PBKDF2_SALT_LEN or len(iv) != CTR_IV_LEN:
        raise PairingError("bad salt or iv length", reason=LinkCodeFailure.BAD_LENGTH)
    return salt + iv + _ctr(code_key, iv, public)


def open_key(code_key: bytes, wrapped: bytes) -> bytes:
    """`unwrap_key` with the PBKDF2 step done by the caller (salt = `wrapped[:32]`)."""
    _check_wrapped(wrapped)
    iv = wrapped[PBKDF2_SALT_LEN : PBKDF2_SALT_LEN + CTR_IV_LEN]
    return _ctr(code_key, iv, wrapped[PBKDF2_SALT_LEN + CTR_IV_LEN :])


def _check_wrapped(wrapped: bytes) -> None:
    if len(wrapped) != WRAPPED_KEY_LEN:
        raise PairingError(
            "wrapped key must be 80 bytes", reason=LinkCodeFailure.BAD_LENGTH, length=len(wrapped)
        )


# --- companion steps --------------------------------------------------------------------------


def companion_hello(code: PairingCode, companion_ephemeral: KeyPair, rng: Rng) -> bytes:
    """Stage 1: `link_code_pairing_wrapped_companion_ephemeral_pub` (SPEC §9.2)."""
    return wrap_key(code, companion_ephemeral.public, rng)


@dataclass(frozen=True, slots=True)
class CompanionFinish:
    """Stage 3 values: the bundle to send and the adv secret that replaces the QR one."""

    wrapped_key_bundle: bytes  # 156 bytes, `link_code_pairing_wrapped_key_bundle`
    adv_secret: bytes = field(repr=False)


def companion_finish(
    *,
    companion_ephemeral: KeyPair,
    companion_identity: KeyPair,
    primary_ephemeral_public: bytes,
    primary_identity_public: bytes,
    rng: Rng,
) -> CompanionFinish:
    """Stage 2 → 3 (SPEC §9.3): agree, encrypt the bundle, derive the adv secret.

    `primary_ephemeral_public` is `unwrap_key(code, <wrapped_primary_ephemeral_pub>)` (the
    PBKDF2 step, kept separate). rng draws in Baileys' order: advRandom(32), bundle
    salt(32), GCM nonce(12).
    """
    primary_ephemeral = _key(primary_ephemeral_public)
    primary_identity = _key(primary_identity_public)
    eph_shared = _agree(companion_ephemeral.private, primary_ephemeral)
    adv_random = rng(ADV_RANDOM_LEN)
    salt = rng(BUNDLE_SALT_LEN)
    nonce = rng(BUNDLE_NONCE_LEN)
    plain = companion_identity.public + primary_identity + adv_random
    sealed = AESGCM(_bundle_key(eph_shared, salt)).encrypt(nonce, plain, b"")
    ident_shared = _agree(companion_identity.private, primary_identity)
    return CompanionFinish(
        wrapped_key_bundle=salt + nonce + sealed,
        adv_secret=_adv_secret(eph_shared, ident_shared, adv_random),
    )


# --- primary steps ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrimaryHello:
    """The phone's answer to `companion_hello`: what goes into the stage-2 notification."""

    companion_ephemeral_public: bytes
    wrapped_primary_ephemeral: bytes  # 80 bytes, `link_code_pairing_wrapped_primary_ephemeral_pub`


def primary_hello(
    *,
    code: PairingCode,
    wrapped_companion_ephemeral: bytes,
    primary_ephemeral: KeyPair,
    rng: Rng,
) -> PrimaryHello:
    """Unwrap the companion's ephemeral key with the code, wrap ours (SPEC §9 simulator)."""
    companion = unwrap_key(code, wrapped_companion_ephemeral)
    return PrimaryHello(
        companion_ephemeral_public=companion,
        wrapped_primary_ephemeral=wrap_key(code, primary_ephemeral.public, rng),
    )


def primary_finish(
    *,
    primary_ephemeral: KeyPair,
    primary_identity: KeyPair,
    companion_ephemeral_public: bytes,
    companion_identity_public: bytes,
    wrapped_key_bundle: bytes,
) -> bytes:
    """Decrypt the companion's bundle and derive the shared adv secret (SPEC §9 simulator).

    A wrong code (on either side) or a tampered bundle fails the GCM tag → PairingError; a
    bundle naming other identity keys than the stanza's → PairingError.
    """
    if len(wrapped_key_bundle) != WRAPPED_BUNDLE_LEN:
        raise PairingError(
            "key bundle must be 156 bytes",
            reason=LinkCodeFailure.BAD_LENGTH,
            length=len(wrapped_key_bundle),
        )
    companion_identity = _key(companion_identity_public)
    eph_shared = _agree(primary_ephemeral.private, _key(companion_ephemeral_public))
    salt = wrapped_key_bundle[:BUNDLE_SALT_LEN]
    nonce = wrapped_key_bundle[BUNDLE_SALT_LEN : BUNDLE_SALT_LEN + BUNDLE_NONCE_LEN]
    sealed = wrapped_key_bundle[BUNDLE_SALT_LEN + BUNDLE_NONCE_LEN :]
    try:
        plain = AESGCM(_bundle_key(eph_shared, salt)).decrypt(nonce, sealed, b"")
    except InvalidTag:
        raise PairingError(
            "key bundle does not decrypt (wrong code or tampered)",
            reason=LinkCodeFailure.BUNDLE_DECRYPT,
        ) from None
    if plain[:KEY_LEN] != companion_identity or plain[KEY_LEN : 2 * KEY_LEN] != (
        primary_identity.public
    ):
        raise PairingError(
            "key bundle names other identities", reason=LinkCodeFailure.BUNDLE_MISMATCH
        )
    adv_random = plain[2 * KEY_LEN :]
    ident_shared = _agree(primary_identity.private, companion_identity)
    return _adv_secret(eph_shared, ident_shared, adv_random)


# --- primitives -------------------------------------------------------------------------------


def _ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    ctx = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return ctx.update(data) + ctx.finalize()


def _bundle_key(eph_shared: bytes, salt: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=salt, info=BUNDLE_INFO).derive(
        eph_shared
    )


def _adv_secret(eph_shared: bytes, ident_shared: bytes, adv_random: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=None, info=ADV_SECRET_INFO).derive(
        eph_shared + ident_shared + adv_random
    )


def _key(public: bytes) -> bytes:
    try:
        return curve.strip_djb(public)
    except CryptoError:
        raise PairingError(
            "public key must be 32 bytes", reason=LinkCodeFailure.BAD_KEY, length=len(public)
        ) from None


def _agree(private: bytes, public: bytes) -> bytes:
    try:
        return curve.shared_key(private, public)
    except CryptoError:
        raise PairingError("X25519 with a low-order key", reason=LinkCodeFailure.BAD_KEY) from None
