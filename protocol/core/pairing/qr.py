"""The QR payload shown by the companion and read by the primary (SPEC §8.3, §18.5).

`build_qr` writes the current URL form; `parse_qr` (the simulated phone) reads it and the older
bare `ref,noise,identity,adv` form still emitted by Baileys 6.17. `companion_platform_id` maps a
Baileys browser tuple to the platform id at the end of the URL form.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from dataclasses import dataclass, field

from protocol.core.errors import DecodeError

QR_URL_PREFIX = "https://wa.me/settings/linked_devices#"  # SPEC §8.3, `buildPairingQRData`
QR_KEY_LEN = 32  # SPEC §8.3: raw 32-byte noise key, identity key, adv secret
_B64_32_LEN = 44  # standard base64 with padding of 32 bytes
_PLATFORM_ID = re.compile(r"[0-9a-z]{1,2}")  # SPEC §8.3: digits, whatsmeow also `c`, `e`
_MAX_REF_LEN = 1024  # refs are short server tokens; bound what a phone will accept


class CompanionPlatform(enum.StrEnum):
    """Platform ids (SPEC §8.3: Baileys `CompanionWebClientType`, whatsmeow `PairClientType`)."""

    UNKNOWN = "0"
    CHROME = "1"
    EDGE = "2"
    FIREFOX = "3"
    IE = "4"
    OPERA = "5"
    SAFARI = "6"
    ELECTRON = "7"
    UWP = "8"
    OTHER_WEB_CLIENT = "9"
    MACOS = "c"
    ANDROID = "e"


# SPEC §8.3 / §18.5: Baileys `BROWSER_TO_COMPANION_WEB_CLIENT`.
_BROWSER_PLATFORMS = {
    "Chrome": CompanionPlatform.CHROME,
    "Edge": CompanionPlatform.EDGE,
    "Firefox": CompanionPlatform.FIREFOX,
    "IE": CompanionPlatform.IE,
    "Opera": CompanionPlatform.OPERA,
    "Safari": CompanionPlatform.SAFARI,
}


def companion_platform_id(browser: tuple[str, str, str]) -> CompanionPlatform:
    """Baileys `getCompanionPlatformId`: "Desktop" → Electron (UWP on Windows), else by name."""
    os_name, browser_name, _version = browser
    if browser_name == "Desktop":
        return CompanionPlatform.UWP if os_name == "Windows" else CompanionPlatform.ELECTRON
    return _BROWSER_PLATFORMS.get(browser_name, CompanionPlatform.OTHER_WEB_CLIENT)


@dataclass(frozen=True, slots=True)
class QRPayload:
    """What a QR code carries. `platform_id` is None for the older bare form."""

    ref: str
    noise_public: bytes
    identity_public: bytes
    adv_secret: bytes = field(repr=False)
    platform_id: str | None


def build_qr(
    ref: str,
    noise_public: bytes,
    identity_public: bytes,
    adv_secret: bytes,
    platform_id: str,
) -> str:
    """`https://wa.me/settings/linked_devices#ref,b64(noise),b64(identity),b64(adv),platform`."""
    _check_ref(ref)
    if not _PLATFORM_ID.fullmatch(platform_id):
        raise DecodeError("bad companion platform id", length=len(platform_id))
    parts = [ref]
    for value in (noise_public, identity_public, adv_secret):
        if len(value) != QR_KEY_LEN:
            raise DecodeError("QR keys must be 32 bytes", length=len(value))
        parts.append(base64.b64encode(value).decode())
    parts.append(platform_id)
    return QR_URL_PREFIX + ",".join(parts)


def parse_qr(text: str) -> QRPayload:
    """Parse either QR form; malformed input raises DecodeError (SPEC §8.3)."""
    if text.startswith(QR_URL_PREFIX):
        parts = text[len(QR_URL_PREFIX) :].split(",")
        if len(parts) != 5:
            raise DecodeError("QR URL form needs 5 fields", fields=len(parts))
        platform_id: str | None = parts[4]
        if not _PLATFORM_ID.fullmatch(parts[4]):
            raise DecodeError("bad companion platform id in QR", length=len(parts[4]))
    else:
        parts = text.split(",")
        if len(parts) != 4:
            raise DecodeError("bare QR form needs 4 fields", fields=len(parts))
        platform_id = None
    ref = parts[0]
    _check_ref(ref)
    noise, identity, adv = (_b64_key(p) for p in parts[1:4])
    return QRPayload(
        ref=ref,
        noise_public=noise,
        identity_public=identity,
        adv_secret=adv,
        platform_id=platform_id,
    )


def _check_ref(ref: str) -> None:
    if not ref or len(ref) > _MAX_REF_LEN or "," in ref or not ref.isprintable() or " " in ref:
        raise DecodeError("bad QR ref", length=len(ref))


def _b64_key(text: str) -> bytes:
    if len(text) != _B64_32_LEN or not text.isascii():
        raise DecodeError("QR key is not base64 of 32 bytes", length=len(text))
    try:
        raw = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise DecodeError("QR key is not base64", length=len(text)) from None
    if len(raw) != QR_KEY_LEN or base64.b64encode(raw).decode() != text:
        raise DecodeError("QR key is not canonical base64 of 32 bytes", length=len(raw))
    return raw
