"""The plaintext layer (SPEC §10.9, §13.1, §13.2, §15.1) against Baileys vectors, plus fuzzing."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.core import message as m
from protocol.core.errors import DecodeError, MediaError
from protocol.core.inject import Rng
from protocol.core.media import EncryptedMedia, MediaType
from protocol.core.proto import e2e_pb2

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "message.json").read_text()
)

# Fuzz budget: at least 2,000 examples; the "fuzz" hypothesis profile raises it.
FUZZ_EXAMPLES = max(2000, settings().max_examples)


def fixed(data: bytes) -> Rng:
    pool = bytearray(data)

    def rng(n: int) -> bytes:
        assert len(pool) >= n
        out = bytes(pool[:n])
        del pool[:n]
        return out

    return rng


@pytest.mark.parametrize("case", VECTORS["encode"], ids=lambda c: c["name"])
def test_encode_message_matches_baileys(case: dict[str, str]) -> None:
    msg = m.parse_message(bytes.fromhex(case["message"]))
    padded = m.encode_message(msg, fixed(bytes.fromhex(case["random_byte"])))
    assert padded.hex() == case["padded"]
    assert m.decode_message(padded) == msg


@pytest.mark.parametrize("case", VECTORS["message_id"], ids=lambda c: str(c["own_user"]))
def test_message_id_matches_baileys(case: dict[str, Any]) -> None:
    mid = m.generate_message_id(
        lambda: case["now_ms"] / 1000, fixed(bytes.fromhex(case["random"])), case["own_user"]
    )
    assert mid == case["expected"]


def test_device_sent_vector_is_our_wrapping() -> None:
    case = next(c for c in VECTORS["encode"] if c["name"] == "device_sent")
    inner = next(c for c in VECTORS["encode"] if c["name"] == "extended_text_with_secret")
    wrapped = m.wrap_for_own_devices(
        m.parse_message(bytes.fromhex(inner["message"])), "15550002222@s.whatsapp.net"
    )
    assert m.serialize_message(wrapped).hex() == case["message"]


@given(st.integers(min_value=0, max_value=255), st.binary(max_size=64))
def test_pad_length_and_round_trip(byte: int, data: bytes) -> None:
    padded = m.pad(data, lambda n: bytes([byte]) * n)
    n = (byte & 0x0F) + 1
    assert padded == data + bytes([n]) * n
    assert m.unpad(padded) == data


@pytest.mark.parametrize("bad", [b"", b"\x00", b"abc\x00", b"\x02", b"ab\x04", b"\xff" * 3])
def test_unpad_rejects_bad_padding(bad: bytes) -> None:
    with pytest.raises(DecodeError):
        m.unpad(bad)


def test_unpad_accepts_whole_buffer_of_padding() -> None:
    assert m.unpad(b"\x03\x03\x03") == b""


def test_decode_message_rejects_garbage_protobuf() -> None:
    with pytest.raises(DecodeError):
        m.decode_message(b"\x0a\x05hel\x01")  # length 5, only 3 bytes before the pad


def test_wrap_and_unwrap_for_own_devices() -> None:
    original = e2e_pb2.Message(conversation="hi")
    original.messageContextInfo.messageSecret = b"\x07" * 32
    wrapped = m.wrap_for_own_devices(original, "15550002222@s.whatsapp.net")
    assert wrapped.messageContextInfo == original.messageContextInfo
    assert wrapped.deviceSentMessage.message == original
    un = m.unwrap_device_sent(m.decode_message(m.encode_message(wrapped, lambda n: b"\x05" * n)))
    assert un.destination_jid == "15550002222@s.whatsapp.net"
    assert un.message == original
    assert m.extract_content(un.message) == m.Text("hi")
    plain = m.unwrap_device_sent(original)
    assert plain.destination_jid is None
    assert plain.message == original


def test_unwrap_lifts_sender_key_distribution() -> None:
    msg = e2e_pb2.Message(conversation="x")
    msg.senderKeyDistributionMessage.groupId = "123-456@g.us"
    msg.senderKeyDistributionMessage.axolotlSenderKeyDistributionMessage = b"\x33" * 10
    un = m.unwrap_device_sent(msg)
    assert un.sender_key_distribution == m.SenderKeyDistribution("123-456@g.us", b"\x33" * 10)
    assert "3333" not in repr(un.sender_key_distribution)


def test_extract_text_forms() -> None:
    assert m.extract_content(e2e_pb2.Message(conversation="a")) == m.Text("a")
    ext = e2e_pb2.Message()
    ext.extendedTextMessage.text = "b"
    ext.extendedTextMessage.contextInfo.stanzaId = "3EB0X"
    ext.extendedTextMessage.contextInfo.participant = "1@s.whatsapp.net"
    assert m.extract_content(ext) == m.Text("b", m.Quote("3EB0X", "1@s.whatsapp.net"))
    eph = e2e_pb2.Message()
    eph.ephemeralMessage.message.conversation = "c"
    assert m.extract_content(eph) == m.Text("c")


def test_extract_media() -> None:
    msg = e2e_pb2.Message()
    v = msg.videoMessage
    v.url, v.mimetype, v.directPath = "https://x/y", "video/mp4", "/v/t62/abc"
    v.mediaKey, v.fileSha256, v.fileEncSha256 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    v.fileLength, v.seconds, v.gifPlayback, v.mediaKeyTimestamp = 1234, 7, True, 1700000000
    content = m.extract_content(msg)
    assert isinstance(content, m.Media)
    assert content.media_type is MediaType.GIF
    assert (content.file_length, content.seconds, content.direct_path) == (1234, 7, "/v/t62/abc")
    assert "0101" not in repr(content)
    audio = e2e_pb2.Message()
    audio.audioMessage.ptt = True
    assert m.media_type_of(audio) is MediaType.PTT
    doc = e2e_pb2.Message()
    doc.documentMessage.fileName = "a.pdf"
    d = m.extract_content(doc)
    assert isinstance(d, m.Media)
    assert d.file_name == "a.pdf"
    assert d.media_type is MediaType.DOCUMENT


def test_extract_reaction_and_protocol() -> None:
    msg = e2e_pb2.Message()
    r = msg.reactionMessage
    r.key.remoteJid, r.key.fromMe, r.key.id = "1@s.whatsapp.net", True, "3EB0A"
    r.text, r.senderTimestampMs = "👍", 5
    assert m.extract_content(msg) == m.Reaction(
        m.MessageRef("1@s.whatsapp.net", True, "3EB0A", None), "👍", 5
    )
    edit = e2e_pb2.Message()
    p = edit.protocolMessage
    p.type = e2e_pb2.ProtocolMessage.MESSAGE_EDIT
    p.key.id = "3EB0B"
    p.editedMessage.conversation = "fixed"
    got = m.extract_content(edit)
    assert isinstance(got, m.Protocol)
    assert got.type is m.ProtocolType.MESSAGE_EDIT
    assert got.edited == m.Text("fixed")
    assert got.target is not None
    assert got.target.id == "3EB0B"


def test_extract_unsupported_names_fields() -> None:
    msg = e2e_pb2.Message()
    msg.locationMessage.degreesLatitude = 1.5
    assert m.extract_content(msg) == m.Unsupported(("locationMessage",))


@given(st.floats(min_value=0, max_value=2**40), st.binary(min_size=16, max_size=16))
def test_message_id_format(now: float, random: bytes) -> None:
    mid = m.generate_message_id(lambda: now, lambda n: random, "15551234567")
    assert re.fullmatch(r"3EB0[0-9A-F]{18}", mid)


_BYTES_FIELDS = {"media_key", "file_sha256", "file_enc_sha256", "payload"}


def _check_types(value: object) -> None:
    # Untrusted strings must come out as str (upb returns invalid UTF-8 as bytes).
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if isinstance(v, bytes):
                assert f.name in _BYTES_FIELDS, f.name
            _check_types(v)


def test_invalid_utf8_becomes_replacement_characters() -> None:
    assert m.extract_content(m.decode_message(b"\x0a\x02\xff\xfe\x01")) == m.Text("\ufffd\ufffd")


# --- fuzz: unpad + Message parse + content extraction of untrusted plaintext -------------------


@settings(max_examples=FUZZ_EXAMPLES)
@given(st.binary(max_size=300))
def test_fuzz_decode_message_raises_only_decode_error(data: bytes) -> None:
    try:
        msg = m.decode_message(data)
    except DecodeError:
        return
    un = m.unwrap_device_sent(msg)
    _check_types(un)
    _check_types(m.extract_content(un.message))


_FIELD_BYTES = st.sampled_from(
    [b"\x0a", b"\x1a", b"\x32", b"\x62", b"\xf2\x02", b"\xfa\x01", b"\x9a\x02", b"\xc2\x02"]
)


@settings(max_examples=FUZZ_EXAMPLES)
@given(st.lists(st.tuples(_FIELD_BYTES, st.binary(max_size=40)), max_size=6), st.integers(1, 16))
def test_fuzz_structured_messages(fields: list[tuple[bytes, bytes]], n: int) -> None:
    # Length-delimited fields with plausible tags reach the nested parsers and string decoding.
    body = b"".join(tag + bytes([len(v)]) + v for tag, v in fields)
    try:
        msg = m.decode_message(body + bytes([n]) * n)
    except DecodeError:
        return
    un = m.unwrap_device_sent(msg)
    _check_types(un)
    _check_types(m.extract_content(un.message))


def test_media_message_round_trips_through_extract() -> None:
    upload = EncryptedMedia(b"\x01" * 32, b"\x02" * 10, b"\x03" * 32, b"\x04" * 32, 99)
    msg = m.media_message(
        MediaType.PTT,
        upload,
        mimetype="audio/ogg; codecs=opus",
        url="https://mmg.whatsapp.net/x",
        direct_path="/v/t62/x",
        media_key_timestamp=1700000000,
        seconds=4,
    )
    assert m.enc_mediatype(msg) == "ptt"
    assert m.stanza_type(msg) is m.StanzaType.MEDIA
    got = m.extract_content(m.decode_message(m.encode_message(msg, lambda n: b"\x00")))
    assert got == m.Media(
        media_type=MediaType.PTT,
        mimetype="audio/ogg; codecs=opus",
        url="https://mmg.whatsapp.net/x",
        direct_path="/v/t62/x",
        media_key=b"\x01" * 32,
        file_sha256=b"\x03" * 32,
        file_enc_sha256=b"\x04" * 32,
        file_length=99,
        media_key_timestamp=1700000000,
        seconds=4,
    )
    with pytest.raises(MediaError):
        m.media_message(
            MediaType.STICKER,
            upload,
            mimetype="",
            url="",
            direct_path="",
            media_key_timestamp=0,
            caption="no captions on stickers",
        )
    with pytest.raises(MediaError):
        m.media_message(
            MediaType.HISTORY, upload, mimetype="", url="", direct_path="", media_key_timestamp=0
        )


def test_stanza_type_and_mediatype() -> None:
    assert m.stanza_type(e2e_pb2.Message(conversation="x")) is m.StanzaType.TEXT
    assert m.enc_mediatype(e2e_pb2.Message(conversation="x")) is None
    r = e2e_pb2.Message()
    r.ephemeralMessage.message.reactionMessage.text = "x"
    assert m.stanza_type(r) is m.StanzaType.REACTION
    c = e2e_pb2.Message()
    c.contactMessage.vcard = "BEGIN:VCARD"
    assert m.enc_mediatype(c) == "vcard"
    assert m.stanza_type(c) is m.StanzaType.MEDIA
    v = e2e_pb2.Message()
    v.viewOnceMessage.message.videoMessage.gifPlayback = True
    assert m.enc_mediatype(v) == "gif"


def test_sender_key_distribution_is_read_after_unwrapping() -> None:
    inner = e2e_pb2.Message(conversation="x")
    inner.senderKeyDistributionMessage.groupId = "inner@g.us"
    wrapped = m.wrap_for_own_devices(inner, "1@s.whatsapp.net")
    wrapped.senderKeyDistributionMessage.groupId = "outer@g.us"
    un = m.unwrap_device_sent(wrapped)
    assert un.sender_key_distribution is not None
    assert un.sender_key_distribution.group_id == "inner@g.us"
