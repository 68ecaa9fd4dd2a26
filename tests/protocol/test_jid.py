"""JIDs (SPEC §5): text forms, helpers, Signal addresses, invalid text."""

from __future__ import annotations

import pytest
from hypothesis import given

from protocol.core.errors import DecodeError
from protocol.core.jid import (
    JID,
    SERVER_JID,
    STATUS_BROADCAST_JID,
    SignalAddress,
    jid,
    parse_jid,
)
from tests.protocol.wire_data import typed_jids


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("15551234567@s.whatsapp.net", JID("15551234567", "s.whatsapp.net")),
        ("15551234567:3@s.whatsapp.net", JID("15551234567", "s.whatsapp.net", 3)),
        ("15551234567.2:3@s.whatsapp.net", JID("15551234567", "s.whatsapp.net", 3, 2)),
        ("123456789012345:7@lid", JID("123456789012345", "lid", 7)),
        ("120363025246125486@g.us", JID("120363025246125486", "g.us")),
        ("status@broadcast", STATUS_BROADCAST_JID),
        ("@s.whatsapp.net", SERVER_JID),
        ("1:0@msgr", JID("1", "msgr")),
        ("7-1:2@interop", JID("1", "interop", 2, integrator=7)),
    ],
)
def test_parse_and_format(text: str, value: JID) -> None:
    assert parse_jid(text) == value
    assert str(value) == text
    assert jid(text) == value
    assert jid(value) is value


def test_device_zero_is_omitted_when_formatting() -> None:
    assert str(parse_jid("1:0@s.whatsapp.net")) == "1@s.whatsapp.net"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no-at-sign",
        "a@",
        "a@b@c",
        "a:b@s.whatsapp.net",
        "a:1:2@s.whatsapp.net",
        "a.x@s.whatsapp.net",
        "a.300@s.whatsapp.net",
        "a:70000@s.whatsapp.net",
        ":3@s.whatsapp.net",
        "1@msgr",
        "1:2@interop",
        "x-1:2@interop",
        "a@b:c",
    ],
)
def test_invalid_text_raises_decode_error(text: str) -> None:
    with pytest.raises(DecodeError) as info:
        parse_jid(text)
    assert info.value.details["jid"] == text


@given(typed_jids())
def test_text_round_trip(value: JID) -> None:
    assert parse_jid(str(value)) == value


def test_helpers() -> None:
    dev = parse_jid("15551234567:3@s.whatsapp.net")
    assert dev.to_non_ad() == JID("15551234567", "s.whatsapp.net")
    plain = dev.to_non_ad()
    assert plain.to_non_ad() is plain
    assert dev.with_device(5).device == 5
    assert dev.is_user
    assert not dev.is_group
    assert not dev.is_lid
    assert not dev.is_server
    assert parse_jid("1-2@g.us").is_group
    assert STATUS_BROADCAST_JID.is_broadcast
    assert STATUS_BROADCAST_JID.is_status_broadcast
    assert parse_jid("1@lid").is_lid
    assert parse_jid("1@hosted.lid").is_lid
    assert SERVER_JID.is_server
    assert not SERVER_JID.is_user


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("15551234567:3@s.whatsapp.net", "15551234567.3"),
        ("15551234567@s.whatsapp.net", "15551234567.0"),
        ("123456789012345:7@lid", "123456789012345_1.7"),
        ("5:2@hosted", "5_128.2"),
        ("5:2@hosted.lid", "5_129.2"),
    ],
)
def test_signal_address(text: str, address: str) -> None:
    # SPEC §5.2: name = user if domainType 0 else user_<domainType>; string name.device.
    assert str(parse_jid(text).signal_address()) == address
    assert isinstance(parse_jid(text).signal_address(), SignalAddress)
