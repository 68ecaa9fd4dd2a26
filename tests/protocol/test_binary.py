"""Binary nodes (SPEC §4): §18.1 vectors, token tables, round trips, v2, errors, log form."""

from __future__ import annotations

import dataclasses
import hashlib
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.core.binary import BinaryCodec, Node, decode_node, encode_node, token_table
from protocol.core.binary.decoder import MAX_DEPTH
from protocol.core.binary.encoder import encode_string
from protocol.core.errors import DecodeError
from protocol.core.jid import JID, SERVER_JID
from tests.protocol.wire_data import (
    baileys_nodes,
    load_vector,
    node_from_json,
    node_to_json,
    typed_jids,
)

VECTORS = load_vector("binary_nodes.json")


@pytest.mark.parametrize("vec", VECTORS["encode"], ids=lambda v: v["name"])
def test_spec_encode_vectors(vec: dict[str, object]) -> None:
    node = node_from_json(vec["node"])  # type: ignore[arg-type]
    assert encode_node(node).hex() == vec["hex"]
    assert node_to_json(decode_node(bytes.fromhex(str(vec["hex"])))) == node_to_json(node)


def test_spec_binary20_vector() -> None:
    vec = VECTORS["encode_digest"][0]
    data = encode_node(node_from_json(vec["node"]))
    assert data.hex().startswith(vec["prefix"])
    assert len(data) == vec["length"]
    assert hashlib.sha256(data).hexdigest() == vec["sha256"]
    assert decode_node(data).content == b"\xab" * 300


def test_spec_compressed_vector() -> None:
    vec = VECTORS["decode"][0]
    assert node_to_json(decode_node(bytes.fromhex(vec["hex"]))) == vec["node"]


def test_typed_server_jid_encodes_as_jid_pair() -> None:
    # SPEC §5.1: from="@s.whatsapp.net" must be FA 00 03 (whatsmeow needs a typed JID).
    node = Node("iq", {"to": SERVER_JID})
    assert encode_node(node) == encode_node(Node("iq", {"to": "@s.whatsapp.net"}))
    assert encode_node(node).endswith(bytes.fromhex("11fa0003"))
    assert decode_node(encode_node(node)).attrs["to"] == SERVER_JID


# SPEC §4.3 integrity hashes: entries joined with "\n".
TABLE_HASHES = {
    3: (
        "1e8302d2aba0d8c40d09fd79fc9c70347350cb00926dd0e3565683b347be35a5",
        "c19c763b07f7684fc58490eb838873edeec498d59bf4d56bbb33d8e7af4cb112",
        "e8894a798e1d92bc5f5f5cd1c2ffeef43a5c03acb1775b34d121ffe0a19b8f6a",
        "8f4081781e324d9ab95574b01ff37a44753403cebd0d1feeeb985661cc86cae8",
        "8e397aec42a6a503621910cf3d7a8f9e287e94192031265b6e55519e0e19fadc",
    ),
    2: (
        "d3cdc34911227e23a1e1f5ba397bb180bf61379533489c150d1fa11fd1996f09",
        "f0a47dc4eb2cfc950362a61b3fc2b3152af63f21a92cc76df517344f58ade61e",
        "4fddd53f761565077443f04b69e17a87a2f462b95b0468211bc8feb81af3f31e",
        "ca6c819ca6e5ed738d637dc4977b9787c0f816b274f4315994889d6d72fd23c5",
        "2c13a800618ff0a999510862ce4060b97cf10af5c29234b20bf133d8f8bc101d",
    ),
}


@pytest.mark.parametrize("version", [2, 3])
def test_token_tables_match_spec_hashes(version: int) -> None:
    table = token_table(version)
    assert len(table.single) == 236
    assert [len(d) for d in table.double] == [256] * 4
    digests = [
        hashlib.sha256("\n".join(t).encode()).hexdigest() for t in (table.single, *table.double)
    ]
    assert tuple(digests) == TABLE_HASHES[version]


def test_token_spot_checks() -> None:
    v3, v2 = token_table(3), token_table(2)
    assert (v3.single[1], v3.single[3], v3.single[19], v3.single[25], v3.single[235]) == (
        "xmlstreamstart",
        "s.whatsapp.net",
        "message",
        "iq",
        "screen_height",
    )
    assert (v3.double[0][0], v3.double[0][255], v3.double[3][255]) == (
        "read-self",
        "mute_v2",
        "1961",
    )
    assert (v2.single[17], v2.single[25], v2.single[29]) == ("class", "xmlns", "t")
    assert v2.double[0][0] == "media-for1-1.cdn.whatsapp.net"
    with pytest.raises(ValueError, match="dictionary"):
        token_table(4)


def test_v2_codec_uses_its_own_table() -> None:
    node = Node("iq", {"xmlns": "w:p", "type": "get"}, [Node("ping")])
    v2 = BinaryCodec(dict_version=2)
    data = v2.encode(node)
    assert data != encode_node(node)
    assert data[3] == token_table(2).single.index("iq")
    assert v2.decode(data) == node
    # A v3 reader sees other strings (or fails): the two tables are different.
    try:
        other: Node | None = decode_node(data)
    except DecodeError:
        other = None
    assert other != node


@pytest.mark.parametrize(
    ("text", "hex_"),
    [
        ("", "fc00"),  # Baileys writes "" raw (SPEC §4.5), not as token 0
        ("0", "2d"),  # a token wins over nibble
        ("123", "ff82123f"),
        ("-.", "ff01ab"),
        ("ABCDEF0", "fb84abcdef0f"),
        ("abcdef0", "fc0761626364656630"),  # lowercase is not hex-packed
        ("1" * 127, "ff" + "c0" + "11" * 63 + "1f"),
        ("1" * 128, "fc80" + "31" * 128),  # longer than PACKED_MAX: raw
        ("a@b", "fafc0161fc0162"),
        ("a@", "fc026140"),  # empty server: raw (Baileys' JID here would not decode)
        ("u_7:2@s.whatsapp.net", "f70702fc0175"),  # Baileys: _agent → domainType
        ("u:2@hosted", "f78002fc0175"),
        ("x:0@s.whatsapp.net", "f70000fc0178"),  # explicit :0 → AD_JID
    ],
)
def test_string_encoding_preference(text: str, hex_: str) -> None:
    assert encode_string(text, token_table(3)).hex() == hex_


def _enc(s: str) -> str:
    return encode_string(s, token_table(3)).hex()


@pytest.mark.parametrize(
    ("jid", "parts"),
    [
        (JID("5551", "s.whatsapp.net", 3), ["f70003", "user"]),
        (JID("5551", "lid", 3), ["f70103", "user"]),
        (JID("5551", "hosted"), ["f78000", "user"]),
        (JID("5551", "msgr", 258), ["f6", "user", "0102", "msgr"]),
        (JID("5551", "interop", 2, integrator=7), ["f5", "user", "00020007", "interop"]),
        (JID("5551", "g.us"), ["fa", "user", "g.us"]),
        (JID("", "s.whatsapp.net"), ["fa00", "s.whatsapp.net"]),
    ],
)
def test_typed_jid_wire_forms(jid: JID, parts: list[str]) -> None:
    # whatsmeow `writeJID` rules (SPEC §5.1).
    names = {"user": jid.user, "msgr": "msgr", "interop": "interop", "g.us": "g.us"}
    names["s.whatsapp.net"] = "s.whatsapp.net"
    expected = "".join(_enc(names[p]) if p in names else p for p in parts)
    body = BinaryCodec().encode_raw(Node("to", {"jid": jid}))
    assert body.hex() == "f803110c" + expected
    assert decode_node(encode_node(Node("to", {"jid": jid}))).attrs["jid"] == jid


@given(baileys_nodes())
def test_round_trip_baileys_representable(node: Node) -> None:
    assert node_to_json(decode_node(encode_node(node))) == node_to_json(node)


@given(typed_jids(), st.sampled_from([2, 3]))
def test_typed_jid_round_trip(jid: JID, version: int) -> None:
    codec = BinaryCodec(dict_version=version)
    node = Node("to", {"jid": jid}, [Node("x", {"p": jid})])
    assert codec.decode(codec.encode(node)) == node


@given(st.binary(max_size=200))
def test_decoded_nodes_reencode_to_equal_nodes(data: bytes) -> None:
    try:
        node = decode_node(b"\x00" + data)
    except DecodeError:
        return
    again = decode_node(encode_node(node))  # "" content may come back as b"" once
    assert decode_node(encode_node(again)) == again


def test_empty_string_content_becomes_bytes_like_baileys() -> None:
    # NIBBLE_8 00 is the empty string; the writer emits "" as BINARY_8 00 (SPEC §4.5), which
    # is content bytes on the way back (§4.4).
    node = decode_node(bytes.fromhex("00f80219ff00"))
    assert node.content == ""
    assert encode_node(node).hex() == "00f80219fc00"
    assert decode_node(encode_node(node)).content == b""


def test_unknown_ad_domain_is_kept_as_agent() -> None:
    data = bytes.fromhex("00f803110cf7050355")
    jid = decode_node(data).attrs["jid"]
    assert jid == JID("1", "s.whatsapp.net", device=3, agent=5)
    assert str(jid) == "1.5:3@s.whatsapp.net"


def test_interop_jid_without_server() -> None:
    # Baileys tolerates a missing server after INTEROP_JID (SPEC §5.1).
    data = bytes.fromhex("00f801f5" + "55" + "0002" + "0007")
    assert decode_node(data).tag == "7-1:2@interop"


@pytest.mark.parametrize(
    ("hex_", "what"),
    [
        ("", "empty frame body"),
        ("00", "end"),
        ("00f8", "end"),
        ("00f800", "empty list"),
        ("00f80100", "empty tag"),
        ("00f801f0", "invalid string tag"),
        ("00f801fc05616263", "end"),
        ("00f80219fe00000010", "end"),  # BINARY_32 content longer than the data
        ("00f8011900", "trailing"),
        ("00f80219f802", "end"),
        ("00f80219ff01cd", "nibble"),
        ("00f80219fa0000", "empty server"),
        ("00f80219f5", "end"),
        ("0278", "truncated zlib"),
        ("02deadbeef", "invalid zlib"),
        ("00fa", "invalid list tag"),
    ],
)
def test_malformed_input_raises_decode_error(hex_: str, what: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_node(bytes.fromhex(hex_))
    assert what in info.value.text


def test_deep_nesting_is_bounded() -> None:
    data = b"\x00" + bytes.fromhex("f80219f801") * (MAX_DEPTH + 5) + bytes.fromhex("f80119")
    with pytest.raises(DecodeError, match="deeply"):
        decode_node(data)
    jids = b"\x00\xf8\x01" + b"\xfa\x00" * (MAX_DEPTH + 5) + b"\x03" * (MAX_DEPTH + 5)
    with pytest.raises(DecodeError, match="deeply"):
        decode_node(jids)


def test_zip_bomb_is_refused() -> None:
    codec = BinaryCodec(max_decompressed=1 << 16)
    inner = BinaryCodec().encode_raw(Node("value", {}, bytes(1 << 20)))
    bomb = b"\x02" + zlib.compress(inner, 9)
    assert len(bomb) < 2000
    with pytest.raises(DecodeError) as info:
        codec.decode(bomb)
    assert info.value.details["limit"] == 1 << 16
    assert BinaryCodec().decode(bomb).content == bytes(1 << 20)


def test_log_form_abbreviates_binary_content() -> None:
    node = Node(
        "message",
        {"to": JID("123", "s.whatsapp.net", 2), "id": 'a"b'},
        [Node("enc", {"v": "2"}, bytes(range(200))), Node("body", {}, "hi"), Node("empty", {}, [])],
    )
    text = repr(node)
    assert text == (
        '<message to="123:2@s.whatsapp.net" id=\'a"b\'>'
        '<enc v="2">[200 bytes: 000102030405060708090a0b0c0d0e0f…]</enc>'
        "<body>hi</body><empty></empty></message>"
    )
    assert "\n  <enc" in node.to_xml(indent=2)


def test_node_accessors() -> None:
    node = Node("iq", {"to": SERVER_JID, "id": "1"}, [Node("a"), Node("b"), Node("a", {"n": "2"})])
    assert node.attr("to") == "@s.whatsapp.net"
    assert node.attr("missing") is None
    assert node.child("a") == Node("a")
    assert [c.attrs.get("n") for c in node.children_by_tag("a")] == [None, "2"]
    assert Node("x", {}, b"1").children == []
    decoded = decode_node(encode_node(node))
    assert decoded == node
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoded.tag = "x"  # type: ignore[misc]


def test_encoder_rejects_wrong_types() -> None:
    with pytest.raises(TypeError):
        encode_node(Node("x", {"a": 1}))  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        encode_node(Node("x", {}, 5))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="server"):
        encode_node(Node("x", {"a": JID("1", "")}))


@pytest.mark.parametrize(
    "value",
    [
        JID("1", "s.whatsapp.net", 300),  # device too big for AD_JID
        JID("1", "g.us", 2),  # a device on a server without an AD domain
        JID("1", "lid", 0, integrator=3),
    ],
)
def test_unusual_typed_jids_still_round_trip(value: JID) -> None:
    assert decode_node(encode_node(Node("x", {"a": value}))).attrs["a"] == value
