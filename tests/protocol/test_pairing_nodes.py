"""SPEC §18.7 at the node level: the `pair-success` stanza and the companion's
`pair-device-sign` reply, encoded with our binary codec, are byte-identical to Baileys'."""

from __future__ import annotations

import json
from pathlib import Path

from protocol.core import curve
from protocol.core.binary import Node, decode_node, encode_node
from protocol.core.jid import parse_jid
from protocol.core.pairing.adv import process_pair_success

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "pairing_adv.json").read_text()
)
NODES = VECTORS["node_level"]


def test_pair_success_stanza_bytes() -> None:
    container = bytes.fromhex(VECTORS["container"])
    stanza = Node(
        "iq",
        {"from": "s.whatsapp.net", "type": "set", "id": "pair1", "xmlns": "md", "t": "1700000000"},
        [
            Node(
                "pair-success",
                {},
                [
                    Node("device-identity", {}, container),
                    Node("platform", {"name": "android"}),
                    Node(
                        "device",
                        {
                            "jid": parse_jid("15551234567:3@s.whatsapp.net"),
                            "lid": parse_jid("123456789012345:3@lid"),
                        },
                    ),
                ],
            ),
        ],
    )
    assert encode_node(stanza).hex() == NODES["stanza"]
    decoded = decode_node(bytes.fromhex(NODES["stanza"]))
    assert decoded.tag == "iq"
    assert decoded.attrs["id"] == "pair1"


def test_pair_device_sign_reply_bytes() -> None:
    identity = curve.keypair_from_private(b"\x77" * 32)
    paired = process_pair_success(
        bytes.fromhex(VECTORS["container"]),
        adv_secret=bytes.fromhex(VECTORS["adv_secret"]),
        identity=identity,
    )
    reply = Node(
        "iq",
        {"to": parse_jid("@s.whatsapp.net"), "type": "result", "id": "pair1"},
        [
            Node(
                "pair-device-sign",
                {},
                [
                    Node(
                        "device-identity",
                        {"key-index": str(paired.key_index)},
                        paired.reply_identity,
                    ),
                ],
            ),
        ],
    )
    assert encode_node(reply).hex() == NODES["reply"]
