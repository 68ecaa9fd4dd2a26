"""ClientPayload builders for login and registration, and DeviceProps (SPEC §7, §16).

Owns: the client identity constants (WA web version, platform, browser tuple, locale) in one
place as `ClientConfig` defaults, and `build_login_payload`, `build_registration_payload`,
`build_device_props`, `build_hash`. With the defaults (Baileys-rc14's config: version
2.3000.1043857760, browser ('Mac OS', 'Chrome', '14.4.1'), country US, syncFullHistory true)
the serialized messages equal Baileys' byte for byte (SPEC §18.2, §18.4). Settings override the
constants by passing a different `ClientConfig`.

Must not import: anything outside protocol.core.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from protocol.core.jid import JID, parse_jid
from protocol.core.proto.companion_reg_pb2 import DeviceProps
from protocol.core.proto.wa6_pb2 import ClientPayload

# SPEC §16: WA web version sent by Baileys-rc14 (`lib/Defaults/index.js`).
WA_VERSION: tuple[int, int, int] = (2, 3000, 1043857760)
# SPEC §16: Baileys default browser `Browsers.macOS('Chrome')` = [os, browser, osVersion].
BROWSER: tuple[str, str, str] = ("Mac OS", "Chrome", "14.4.1")
# SPEC §7.2 common part (Baileys `getUserAgent`): platform WEB (14), release channel RELEASE.
PLATFORM = ClientPayload.UserAgent.WEB
RELEASE_CHANNEL = ClientPayload.UserAgent.RELEASE
MCC = "000"
MNC = "000"
OS_VERSION = "0.1"
OS_BUILD_NUMBER = "0.1"
DEVICE = "Desktop"
LANGUAGE = "en"
COUNTRY = "US"  # Baileys `config.countryCode` default
# SPEC §7.4: DeviceProps.version Baileys sends ({10, 15, 7}) and its history-sync settings.
DEVICE_PROPS_VERSION: tuple[int, int, int] = (10, 15, 7)
HISTORY_STORAGE_QUOTA_MB = 10240


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """What the client says about itself; the defaults are Baileys-rc14's (SPEC §7, §16)."""

    version: tuple[int, int, int] = WA_VERSION
    browser: tuple[str, str, str] = BROWSER
    country: str = COUNTRY
    language: str = LANGUAGE
    sync_full_history: bool = True
    push_name: str | None = None
    mcc: str = MCC
    mnc: str = MNC
    os_version: str = OS_VERSION
    os_build_number: str = OS_BUILD_NUMBER
    device: str = DEVICE
    device_props_version: tuple[int, int, int] = DEVICE_PROPS_VERSION
    platform: int = PLATFORM
    release_channel: int = RELEASE_CHANNEL


DEFAULT_CONFIG = ClientConfig()


def _web_sub_platform(config: ClientConfig) -> int:
    # SPEC §7.2: DARWIN for ('Mac OS', 'Desktop') and WIN32 for ('Windows', 'Desktop'), only
    # with full history sync; WEB_BROWSER otherwise.
    sub = ClientPayload.WebInfo
    os_name, browser, _ = config.browser
    if config.sync_full_history and browser == "Desktop":
        if os_name == "Mac OS":
            return sub.DARWIN
        if os_name == "Windows":
            return sub.WIN32
    return sub.WEB_BROWSER


def _base_payload(config: ClientConfig) -> ClientPayload:
    """The part common to login and registration (SPEC §7.2)."""
    primary, secondary, tertiary = config.version
    user_agent = ClientPayload.UserAgent(
        platform=config.platform,  # type: ignore[arg-type]
        appVersion=ClientPayload.UserAgent.AppVersion(
            primary=primary, secondary=secondary, tertiary=tertiary
        ),
        mcc=config.mcc,
        mnc=config.mnc,
        osVersion=config.os_version,
        device=config.device,
        osBuildNumber=config.os_build_number,
        releaseChannel=config.release_channel,  # type: ignore[arg-type]
        localeLanguageIso6391=config.language,
        localeCountryIso31661Alpha2=config.country,
    )
    payload = ClientPayload(
        userAgent=user_agent,
        webInfo=ClientPayload.WebInfo(webSubPlatform=_web_sub_platform(config)),  # type: ignore[arg-type]
        connectType=ClientPayload.WIFI_UNKNOWN,
        connectReason=ClientPayload.USER_ACTIVATED,
    )
    if config.push_name:
        payload.pushName = config.push_name
    return payload


def build_login_payload(me: JID | str, config: ClientConfig = DEFAULT_CONFIG) -> ClientPayload:
    """The login payload for a paired device `me` (SPEC §7.3, Baileys `generateLoginNode`)."""
    jid = me if isinstance(me, JID) else parse_jid(me)
    payload = _base_payload(config)
    payload.username = int(jid.user)
    payload.passive = True
    payload.pull = True
    payload.device = jid.device
    payload.lidDbMigrated = False
    return payload


def build_hash(version: tuple[int, int, int] = WA_VERSION) -> bytes:
    """MD5 of the version joined with '.' (SPEC §7.4 `buildHash`); an identifier, not security."""
    return hashlib.md5(".".join(map(str, version)).encode(), usedforsecurity=False).digest()


def build_device_props(config: ClientConfig = DEFAULT_CONFIG) -> DeviceProps:
    """DeviceProps as Baileys git/rc14 sends them (SPEC §7.4)."""
    os_name, browser, _ = config.browser
    platform = DeviceProps.PlatformType.DESCRIPTOR.values_by_name.get(browser.upper())
    major, minor, patch = config.device_props_version
    return DeviceProps(
        os=os_name,
        version=DeviceProps.AppVersion(primary=major, secondary=minor, tertiary=patch),
        platformType=platform.number if platform is not None else DeviceProps.CHROME,  # type: ignore[arg-type]
        requireFullSync=config.sync_full_history,
        historySyncConfig=DeviceProps.HistorySyncConfig(
            storageQuotaMb=HISTORY_STORAGE_QUOTA_MB,
            inlineInitialPayloadInE2EeMsg=True,
            supportCallLogHistory=False,
            supportBotUserAgentChatHistory=True,
            supportCagReactionsAndPolls=True,
            supportBizHostedMsg=True,
            supportRecentSyncChunkMessageCountTuning=True,
            supportHostedGroupMsg=True,
            supportFbidBotChatHistory=True,
            supportMessageAssociation=True,
            supportGroupHistory=False,
        ),
    )


def build_registration_payload(
    *,
    registration_id: int,
    identity_public: bytes,
    signed_pre_key_id: int,
    signed_pre_key_public: bytes,
    signed_pre_key_signature: bytes,
    config: ClientConfig = DEFAULT_CONFIG,
) -> ClientPayload:
    """The registration payload of an unpaired device (SPEC §7.4, `generateRegistrationNode`).

    Keys are the raw 32-byte public keys (no 0x05 prefix); the signature is the signed prekey
    signature over `0x05 || spk.public` (SPEC §10.2), made by the caller.
    """
    payload = _base_payload(config)
    payload.passive = False
    payload.pull = False
    payload.devicePairingData.CopyFrom(
        ClientPayload.DevicePairingRegistrationData(
            eRegid=registration_id.to_bytes(4, "big"),
            eKeytype=b"\x05",  # SPEC §1 KEY_BUNDLE_TYPE
            eIdent=identity_public,
            eSkeyId=signed_pre_key_id.to_bytes(3, "big"),
            eSkeyVal=signed_pre_key_public,
            eSkeySig=signed_pre_key_signature,
            buildHash=build_hash(config.version),
            deviceProps=build_device_props(config).SerializeToString(),
        )
    )
    return payload
