"""ClientPayload / DeviceProps builders (SPEC §7, §18.2, §18.4)."""

from __future__ import annotations

from protocol.core import curve
from protocol.core.jid import parse_jid
from protocol.core.payload import (
    WA_VERSION,
    ClientConfig,
    build_device_props,
    build_hash,
    build_login_payload,
    build_registration_payload,
)
from protocol.core.proto import parse
from protocol.core.proto.companion_reg_pb2 import DeviceProps
from protocol.core.proto.wa6_pb2 import ClientPayload
from tests.protocol.wire_data import kp, load_vector

VEC = load_vector("client_payload.json")
REG = VEC["registration"]


def test_defaults_are_the_vector_config() -> None:
    cfg = VEC["config"]
    default = ClientConfig()
    assert list(default.version) == cfg["version"] == list(WA_VERSION)
    assert list(default.browser) == cfg["browser"]
    assert default.country == cfg["countryCode"]
    assert default.sync_full_history is cfg["syncFullHistory"]


def test_login_payload_vector() -> None:
    payload = build_login_payload(VEC["login"]["jid"])
    assert payload.SerializeToString().hex() == VEC["login"]["payload"]
    assert build_login_payload(parse_jid(VEC["login"]["jid"])) == payload


def test_registration_vectors() -> None:
    ident, spk = kp(int(REG["identity_key"], 16)), kp(int(REG["signed_pre_key"], 16))
    signature = curve.sign(ident.private, curve.djb(spk.public))
    assert signature.hex() == REG["signed_pre_key_signature"]
    assert build_hash().hex() == REG["build_hash"]
    assert build_device_props().SerializeToString().hex() == REG["device_props"]
    payload = build_registration_payload(
        registration_id=REG["registration_id"],
        identity_public=ident.public,
        signed_pre_key_id=REG["signed_pre_key_id"],
        signed_pre_key_public=spk.public,
        signed_pre_key_signature=signature,
    )
    assert payload.SerializeToString().hex() == REG["payload"]
    back = parse(ClientPayload, bytes.fromhex(REG["payload"]))
    assert back.devicePairingData.eRegid == (4321).to_bytes(4, "big")


def test_overrides() -> None:
    cfg = ClientConfig(
        version=(2, 3000, 1),
        browser=("Windows", "Desktop", "10"),
        country="DE",
        push_name="bot",
    )
    payload = build_login_payload("49123:2@s.whatsapp.net", cfg)
    assert payload.userAgent.appVersion.tertiary == 1
    assert payload.userAgent.localeCountryIso31661Alpha2 == "DE"
    assert payload.pushName == "bot"
    assert payload.webInfo.webSubPlatform == ClientPayload.WebInfo.WIN32
    props = build_device_props(cfg)
    assert props.platformType == DeviceProps.DESKTOP
    assert props.os == "Windows"
    assert build_device_props(ClientConfig(browser=("x", "Netscape", "1"))).platformType == (
        DeviceProps.CHROME
    )
    mac = build_login_payload("1:1@s.whatsapp.net", ClientConfig(browser=("Mac OS", "Desktop", "")))
    assert mac.webInfo.webSubPlatform == ClientPayload.WebInfo.DARWIN
    assert build_hash((2, 3000, 1)) != build_hash()
