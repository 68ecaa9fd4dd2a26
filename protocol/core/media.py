"""Media crypto: key expansion, encryption, hashes, MAC, upload token (SPEC §11.1–§11.4).

Owns:
* `MediaType` and `MEDIA_TYPES` — per type, in one place: the HKDF info string (§11.1), the
  upload path (§11.4, Baileys `MEDIA_PATH_MAP`) and the `mediatype` attribute of `enc` (§13.5).
* `expand_media_key` — HKDF-SHA256(mediaKey, 112, info) → iv, cipherKey, macKey, refKey.
* `MediaEncryptor` / `MediaDecryptor` — streaming AES-256-CBC + PKCS7 with the 10-byte
  HMAC-SHA256 MAC over `iv || ciphertext` and the SHA-256 hashes, in constant memory; and the
  one-shot `encrypt_media` / `decrypt_media` built on them.
* `upload_token` / `decode_upload_token` — base64url of fileEncSha256.

Pure computation over bytes: no HTTP, files or clocks. Must not import asyncio, os, time,
random, secrets; randomness (the media key) arrives via `rng`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
from dataclasses import dataclass, field
from types import MappingProxyType

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol.core.errors import DecodeError, MediaError
from protocol.core.inject import Rng

MEDIA_KEY_LEN = 32  # SPEC §11.1: mediaKey = 32 random bytes
EXPANDED_LEN = 112  # SPEC §11.1: HKDF output length
MAC_LEN = 10  # SPEC §11.2: HMAC-SHA256 truncated to 10 bytes
AES_BLOCK = 16
SHA256_LEN = 32
MEDIA_RETRY_INFO = b"WhatsApp Media Retry Notification"  # SPEC §11.1, Baileys getMediaRetryKey


class MediaType(enum.Enum):
    """Media kinds, valued by Baileys' `MediaType` names (SPEC §11.1 table)."""

    IMAGE = "image"
    VIDEO = "video"
    GIF = "gif"
    PTV = "ptv"
    AUDIO = "audio"
    PTT = "ptt"
    DOCUMENT = "document"
    STICKER = "sticker"
    PRODUCT = "product"
    BIZ_COVER_PHOTO = "biz-cover-photo"
    HISTORY = "md-msg-hist"
    APP_STATE = "md-app-state"
    LINK_THUMBNAIL = "thumbnail-link"
    THUMBNAIL_IMAGE = "thumbnail-image"
    THUMBNAIL_VIDEO = "thumbnail-video"
    THUMBNAIL_DOCUMENT = "thumbnail-document"
    PAYMENT_BACKGROUND = "payment-bg-image"
    STICKER_PACK = "sticker-pack"
    PROFILE_PICTURE = "ppic"
    PRODUCT_CATALOG_IMAGE = "product-catalog-image"


@dataclass(frozen=True, slots=True)
class MediaTypeInfo:
    """What the protocol says about one media type."""

    hkdf_info: bytes  # SPEC §11.1: "WhatsApp <Type> Keys"
    upload_path: str | None  # SPEC §11.4; None: not uploaded by this path
    mediatype_attr: str | None  # SPEC §13.5: `enc mediatype=`; None: not a message media kind


def _info(kind: str) -> bytes:
    return f"WhatsApp {kind} Keys".encode()


# SPEC §11.1 (Baileys Defaults `MEDIA_HKDF_KEY_MAPPING`, whatsmeow download.go `MediaType`),
# §11.4 (Baileys `MEDIA_PATH_MAP`; whatsmeow `/mms/<type>` for sticker-pack; ptv/gif/ptt travel
# as their base video/audio uploads [inferred from whatsmeow, Baileys has no entry]), §13.5.
MEDIA_TYPES: MappingProxyType[MediaType, MediaTypeInfo] = MappingProxyType(
    {
        MediaType.IMAGE: MediaTypeInfo(_info("Image"), "/mms/image", "image"),
        MediaType.VIDEO: MediaTypeInfo(_info("Video"), "/mms/video", "video"),
        MediaType.GIF: MediaTypeInfo(_info("Video"), "/mms/video", "gif"),
        MediaType.PTV: MediaTypeInfo(_info("Video"), "/mms/video", "ptv"),
        MediaType.AUDIO: MediaTypeInfo(_info("Audio"), "/mms/audio", "audio"),
        MediaType.PTT: MediaTypeInfo(_info("Audio"), "/mms/audio", "ptt"),
        MediaType.DOCUMENT: MediaTypeInfo(_info("Document"), "/mms/document", "document"),
        MediaType.STICKER: MediaTypeInfo(_info("Image"), "/mms/image", "sticker"),
        MediaType.PRODUCT: MediaTypeInfo(_info("Image"), "/mms/image", "product"),
        MediaType.BIZ_COVER_PHOTO: MediaTypeInfo(_info("Image"), "/pps/biz-cover-photo", None),
        MediaType.HISTORY: MediaTypeInfo(_info("History"), "/mms/md-app-state", None),
        MediaType.APP_STATE: MediaTypeInfo(_info("App State"), None, None),
        MediaType.LINK_THUMBNAIL: MediaTypeInfo(_info("Link Thumbnail"), "/mms/image", None),
        MediaType.THUMBNAIL_IMAGE: MediaTypeInfo(_info("Image Thumbnail"), None, None),
        MediaType.THUMBNAIL_VIDEO: MediaTypeInfo(_info("Video Thumbnail"), None, None),
        MediaType.THUMBNAIL_DOCUMENT: MediaTypeInfo(_info("Document Thumbnail"), None, None),
        MediaType.PAYMENT_BACKGROUND: MediaTypeInfo(_info("Payment Background"), None, None),
        MediaType.STICKER_PACK: MediaTypeInfo(_info("Sticker Pack"), "/mms/sticker-pack", None),
        MediaType.PROFILE_PICTURE: MediaTypeInfo(_info(""), None, None),
        MediaType.PRODUCT_CATALOG_IMAGE: MediaTypeInfo(_info(""), "/product/image", None),
    }
)


class MediaCheck(enum.StrEnum):
    """Which download check failed (SPEC §11.2, whatsmeow `validateMedia` order)."""

    MEDIA_KEY = "media_key"
    LENGTH = "length"
    FILE_ENC_SHA256 = "file_enc_sha256"
    MAC = "mac"
    PADDING = "padding"
    FILE_SHA256 = "file_sha256"
    FILE_LENGTH = "file_length"


@dataclass(frozen=True, slots=True)
class MediaKeys:
    """The 112-byte expansion of a media key (SPEC §11.1)."""

    iv: bytes = field(repr=False)
    cipher_key: bytes = field(repr=False)
    mac_key: bytes = field(repr=False)
    ref_key: bytes = field(repr=False)


def expand_media_key(media_key: bytes, media_type: MediaType) -> MediaKeys:
    """HKDF-SHA256(salt none, ikm mediaKey, info per type, 112) split 16/32/32/32."""
    if len(media_key) != MEDIA_KEY_LEN:
        raise MediaError("media key must be 32 bytes", check=MediaCheck.MEDIA_KEY)
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=EXPANDED_LEN,
        salt=None,
        info=MEDIA_TYPES[media_type].hkdf_info,
    ).derive(media_key)
    return MediaKeys(iv=okm[0:16], cipher_key=okm[16:48], mac_key=okm[48:80], ref_key=okm[80:112])


def media_retry_key(media_key: bytes) -> bytes:
    """HKDF(mediaKey, 32, info "WhatsApp Media Retry Notification") (SPEC §11.1)."""
    if len(media_key) != MEDIA_KEY_LEN:
        raise MediaError("media key must be 32 bytes", check=MediaCheck.MEDIA_KEY)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=MEDIA_RETRY_INFO).derive(
        media_key
    )


def new_media_key(rng: Rng) -> bytes:
    return rng(MEDIA_KEY_LEN)


@dataclass(frozen=True, slots=True)
class EncryptedMedia:
    """What a media message carries about an upload (SPEC §11.2, §11.6)."""

    media_key: bytes = field(repr=False)
    mac: bytes = field(repr=False)
    file_sha256: bytes
    file_enc_sha256: bytes
    file_length: int


class MediaEncryptor:
    """Streaming encryptor: `update(plain) -> cipher bytes`, then `finalize() -> (tail, info)`.

    The bytes returned by all `update` calls plus `tail` are the upload body
    `ciphertext || mac`. Memory use is constant: only the cipher, HMAC and hash states are kept.
    """

    __slots__ = (
        "_cipher",
        "_finished",
        "_hmac",
        "_length",
        "_media_key",
        "_padder",
        "_sha_enc",
        "_sha_plain",
    )

    def __init__(self, media_key: bytes, media_type: MediaType) -> None:
        keys = expand_media_key(media_key, media_type)
        self._media_key = media_key
        self._cipher = Cipher(algorithms.AES(keys.cipher_key), modes.CBC(keys.iv)).encryptor()
        self._padder = padding.PKCS7(AES_BLOCK * 8).padder()
        self._hmac = hmac.new(keys.mac_key, keys.iv, hashlib.sha256)
        self._sha_plain = hashlib.sha256()
        self._sha_enc = hashlib.sha256()
        self._length = 0
        self._finished = False

    def update(self, plaintext: bytes) -> bytes:
        if self._finished:
            raise MediaError("encryptor already finalized", check=MediaCheck.LENGTH)
        self._length += len(plaintext)
        self._sha_plain.update(plaintext)
        out = self._cipher.update(self._padder.update(plaintext))
        self._sha_enc.update(out)
        self._hmac.update(out)
        return out

    def finalize(self) -> tuple[bytes, EncryptedMedia]:
        """The last ciphertext bytes followed by the MAC, and the message fields."""
        if self._finished:
            raise MediaError("encryptor already finalized", check=MediaCheck.LENGTH)
        self._finished = True
        out = self._cipher.update(self._padder.finalize()) + self._cipher.finalize()
        self._hmac.update(out)
        mac = self._hmac.digest()[:MAC_LEN]
        tail = out + mac
        self._sha_enc.update(tail)
        return tail, EncryptedMedia(
            media_key=self._media_key,
            mac=mac,
            file_sha256=self._sha_plain.digest(),
            file_enc_sha256=self._sha_enc.digest(),
            file_length=self._length,
        )


class MediaDecryptor:
    """Streaming download verification and decryption of `ciphertext || mac` (SPEC §11.2).

    `update(chunk)` returns plaintext as soon as it can be decrypted; the last 10 bytes seen
    are held back (they may be the MAC) and the padding block is held by the unpadder, so memory
    is constant. The output is **unauthenticated until `finalize()` returns**: `finalize` checks
    the encrypted-file hash, the MAC, the padding and the plaintext hash (in whatsmeow's order
    of reporting) and raises `MediaError(check=...)`; a caller must discard what it received
    when that happens. Expected hashes left None are not checked.
    """

    __slots__ = (
        "_cipher",
        "_expected_enc",
        "_expected_length",
        "_expected_plain",
        "_finished",
        "_held",
        "_hmac",
        "_length",
        "_plain_length",
        "_sha_enc",
        "_sha_plain",
        "_unpadder",
    )

    def __init__(
        self,
        media_key: bytes,
        media_type: MediaType,
        *,
        file_enc_sha256: bytes | None = None,
        file_sha256: bytes | None = None,
        file_length: int | None = None,
    ) -> None:
        keys = expand_media_key(media_key, media_type)
        self._cipher = Cipher(algorithms.AES(keys.cipher_key), modes.CBC(keys.iv)).decryptor()
        self._unpadder = padding.PKCS7(AES_BLOCK * 8).unpadder()
        self._hmac = hmac.new(keys.mac_key, keys.iv, hashlib.sha256)
        self._sha_enc = hashlib.sha256()
        self._sha_plain = hashlib.sha256()
        self._held = b""
        self._length = 0  # ciphertext bytes passed to the cipher
        self._plain_length = 0
        self._expected_enc = file_enc_sha256
        self._expected_plain = file_sha256
        self._expected_length = file_length
        self._finished = False

    def update(self, chunk: bytes) -> bytes:
        if self._finished:
            raise MediaError("decryptor already finalized", check=MediaCheck.LENGTH)
        self._sha_enc.update(chunk)
        data = self._held + chunk
        if len(data) <= MAC_LEN:
            self._held = data
            return b""
        body, self._held = data[:-MAC_LEN], data[-MAC_LEN:]
        self._length += len(body)
        self._hmac.update(body)
        plain = self._unpadder.update(self._cipher.update(body))
        self._sha_plain.update(plain)
        self._plain_length += len(plain)
        return plain

    def finalize(self) -> bytes:
        """Run the checks; return the last plaintext bytes."""
        if self._finished:
            raise MediaError("decryptor already finalized", check=MediaCheck.LENGTH)
        self._finished = True
        if self._expected_enc is not None and not hmac.compare_digest(
            self._sha_enc.digest(), self._expected_enc
        ):
            raise MediaError("encrypted file hash mismatch", check=MediaCheck.FILE_ENC_SHA256)
        if len(self._held) != MAC_LEN or self._length == 0 or self._length % AES_BLOCK:
            raise MediaError(
                "encrypted file has a bad length", check=MediaCheck.LENGTH, length=self._length
            )
        if not hmac.compare_digest(self._hmac.digest()[:MAC_LEN], self._held):
            raise MediaError("media MAC mismatch", check=MediaCheck.MAC)
        try:
            last = self._unpadder.update(self._cipher.finalize()) + self._unpadder.finalize()
        except ValueError:
            raise MediaError("bad PKCS7 padding", check=MediaCheck.PADDING) from None
        self._sha_plain.update(last)
        self._plain_length += len(last)
        if self._expected_plain is not None and not hmac.compare_digest(
            self._sha_plain.digest(), self._expected_plain
        ):
            raise MediaError("plaintext hash mismatch", check=MediaCheck.FILE_SHA256)
        if self._expected_length is not None and self._plain_length != self._expected_length:
            raise MediaError("plaintext length mismatch", check=MediaCheck.FILE_LENGTH)
        return last


def encrypt_media(
    plaintext: bytes, media_type: MediaType, rng: Rng
) -> tuple[bytes, EncryptedMedia]:
    """One shot: a fresh media key from `rng`; returns (`ciphertext || mac`, fields)."""
    return encrypt_media_with_key(plaintext, media_type, new_media_key(rng))


def encrypt_media_with_key(
    plaintext: bytes, media_type: MediaType, media_key: bytes
) -> tuple[bytes, EncryptedMedia]:
    enc = MediaEncryptor(media_key, media_type)
    body = enc.update(plaintext)
    tail, info = enc.finalize()
    return body + tail, info


def decrypt_media(
    enc_file: bytes,
    media_key: bytes,
    media_type: MediaType,
    *,
    file_enc_sha256: bytes | None,
    file_sha256: bytes | None,
    file_length: int | None = None,
) -> bytes:
    """One shot: verify and decrypt a downloaded `ciphertext || mac` (SPEC §11.2)."""
    dec = MediaDecryptor(
        media_key,
        media_type,
        file_enc_sha256=file_enc_sha256,
        file_sha256=file_sha256,
        file_length=file_length,
    )
    return dec.update(enc_file) + dec.finalize()


def upload_token(file_enc_sha256: bytes) -> str:
    """base64url(fileEncSha256) without padding, as Baileys sends it (SPEC §11.4)."""
    return base64.urlsafe_b64encode(file_enc_sha256).rstrip(b"=").decode()


def decode_upload_token(token: str) -> bytes:
    """The 32-byte hash of an upload token; accepts Baileys' (unpadded) and whatsmeow's form."""
    stripped = token.rstrip("=")
    if len(token) - len(stripped) > 2 or not stripped.isascii():
        raise DecodeError("bad upload token", length=len(token))
    try:
        raw = base64.b64decode(stripped + "=" * (-len(stripped) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError("bad upload token", length=len(token)) from None
    if len(raw) != SHA256_LEN or upload_token(raw) != stripped:
        raise DecodeError("upload token is not a SHA-256", length=len(raw))
    return raw
