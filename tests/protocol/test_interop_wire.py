"""Live interop with the reference client (Baileys 7.0.0-rc14 via tests/interop node peers).

* Binary nodes, both directions, on hypothesis-generated nodes Baileys represents faithfully:
  our bytes equal Baileys' bytes, Baileys decodes ours to the same node, we decode Baileys'.
* Noise: Baileys' `makeNoiseHandler` as initiator (its `processHandshake`, with the test root
  key configured) against our `NoiseResponder`, then 100 transport frames each way through its
  `encodeFrame`/`decodeFrame`; and our `NoiseInitiator` against a Baileys handler driven step
  by step as the responder (SPEC §18.2).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings

from protocol.core import curve, framing
from protocol.core.binary import BinaryCodec, Node, decode_node, encode_node
from protocol.core.inject import CountingRng
from protocol.core.noise import NoiseInitiator, NoiseResponder, make_cert_chain
from protocol.core.payload import build_login_payload
from tests.interop.node import NodePeer
from tests.protocol.wire_data import baileys_nodes, kp, node_to_json

pytestmark = pytest.mark.interop

NOW = 1_800_000_000
ROOT, INTER = kp(0x55), kp(0x66)


@pytest.fixture(scope="module")
def codec_peer() -> Iterator[NodePeer]:
    with NodePeer("wire_codec.mjs") as peer:
        yield peer


@pytest.fixture(scope="module")
def noise_peer() -> Iterator[NodePeer]:
    with NodePeer("wire_noise.mjs") as peer:
        yield peer


@settings(max_examples=1000)
@given(baileys_nodes())
def test_nodes_both_directions(codec_peer: NodePeer, node: Node) -> None:
    ours = encode_node(node)
    [theirs] = codec_peer.call({"op": "encode", "nodes": [node_to_json(node)]})
    assert ours.hex() == theirs  # byte-identical encoder (SPEC §4.5)
    [decoded_by_baileys] = codec_peer.call({"op": "decode", "bodies": [ours.hex()]})
    assert decoded_by_baileys == node_to_json(node)
    assert node_to_json(decode_node(bytes.fromhex(theirs))) == node_to_json(node)


def _stanzas(count: int, seed: bytes) -> list[Node]:
    rng = CountingRng(seed)
    out = []
    for i in range(count):
        size = 1 + rng(1)[0] * 4
        out.append(
            Node(
                "message",
                {
                    "id": rng(8).hex().upper(),
                    "to": f"1555{i:07d}:{1 + i % 9}@s.whatsapp.net",
                    "type": "text",
                },
                [Node("enc", {"v": "2", "type": "msg"}, rng(size)), Node("meta", {"n": str(i)})],
            )
        )
    return out


def test_baileys_initiator_against_our_responder(noise_peer: NodePeer) -> None:
    rng = CountingRng(b"interop-responder")
    s_static, s_eph, c_eph, c_noise = (curve.generate_keypair(rng) for _ in range(4))
    cert = make_cert_chain(
        root_private=ROOT.private,
        intermediate=INTER,
        server_static=s_static.public,
        not_before=0,
        not_after=2**32 - 1,
    )
    routing = b"\x08\x02\x08\x05"
    first = bytes.fromhex(
        noise_peer.call(
            {
                "op": "client_start",
                "ephemeral": c_eph.private.hex(),
                "noise_key": c_noise.private.hex(),
                "root": ROOT.public.hex(),
                "routing_info": routing.hex(),
            }
        )
    )
    reader = framing.FrameReader(expect_intro=True)
    [hello] = reader.feed(first)
    assert reader.intro == framing.Intro(3, routing)
    responder = NoiseResponder(s_static, s_eph, cert, prologue=reader.intro.header)
    responder.read_client_hello(hello)
    jid = "15551234567:3@s.whatsapp.net"
    reply = noise_peer.call(
        {
            "op": "client_server_hello",
            "data": framing.encode_frame(responder.server_hello()).hex(),
            "jid": jid,
        }
    )
    [finish] = reader.feed(bytes.fromhex(reply["frame"]))
    done = responder.read_client_finish(finish)
    assert done.client_static == c_noise.public
    assert done.payload.hex() == reply["payload"]
    assert done.payload == build_login_payload(jid).SerializeToString()

    codec = BinaryCodec()
    ours = _stanzas(100, b"server->client")
    wire = b"".join(
        framing.encode_frame(done.transport.send.encrypt(codec.encode(n))) for n in ours
    )
    # Split in odd places: Baileys buffers partial frames (SPEC §2.2).
    got = []
    for i in range(0, len(wire), 777):
        got += noise_peer.call({"op": "client_recv", "data": wire[i : i + 777].hex()})
    assert got == [node_to_json(n) for n in ours]

    theirs = _stanzas(100, b"client->server")
    data = bytes.fromhex(
        noise_peer.call({"op": "client_send", "nodes": [node_to_json(n) for n in theirs]})
    )
    frames = reader.feed(data)
    decoded = [codec.decode(done.transport.recv.decrypt(f)) for f in frames]
    assert [node_to_json(n) for n in decoded] == [node_to_json(n) for n in theirs]
    assert done.transport.recv.counter == done.transport.send.counter == 100


def test_our_initiator_against_baileys_responder(noise_peer: NodePeer) -> None:
    rng = CountingRng(b"interop-initiator")
    s_static, s_eph, c_eph, c_noise = (curve.generate_keypair(rng) for _ in range(4))
    cert = make_cert_chain(
        root_private=ROOT.private,
        intermediate=INTER,
        server_static=s_static.public,
        not_before=NOW - 10,
        not_after=NOW + 10,
    )
    initiator = NoiseInitiator(c_noise, c_eph, trusted_root=ROOT.public)
    first = framing.FrameWriter(framing.encode_intro()).frame(initiator.client_hello())
    server_hello = noise_peer.call(
        {
            "op": "server_start",
            "data": first.hex(),
            "ephemeral": s_eph.private.hex(),
            "static_key": s_static.private.hex(),
            "cert": cert.hex(),
        }
    )
    [frame] = framing.FrameReader().feed(bytes.fromhex(server_hello))
    identity = initiator.read_server_hello(frame, now=NOW)
    assert identity.static == s_static.public
    payload = build_login_payload("15551234567:3@s.whatsapp.net").SerializeToString()
    finish, _ = initiator.client_finish(payload)
    seen = noise_peer.call({"op": "server_finish", "data": framing.encode_frame(finish).hex()})
    assert seen == {"client_static": c_noise.public.hex(), "payload": payload.hex()}


@pytest.mark.parametrize(
    "text",
    [
        "u_7:2@s.whatsapp.net",
        "x:0@s.whatsapp.net",
        "a:3abc@s.whatsapp.net",
        "a_5x:2@s.whatsapp.net",
        "a_:2@s.whatsapp.net",
        "a: 3 @s.whatsapp.net",
        "a:3.9@s.whatsapp.net",
        "a:300@s.whatsapp.net",
        "a:-1@lid",
        "a_b_c@s.whatsapp.net",
        "a@b@c",
        "@g.us",
        "a:1:2@s.whatsapp.net",
        "1:2@hosted.lid",
        "1@hosted",
    ],
)
def test_odd_jid_strings_encode_like_baileys(codec_peer: NodePeer, text: str) -> None:
    # Baileys' reading of JID-like text (SPEC §5.1, `jidDecode` + `writeJid`), byte for byte.
    node = Node("to", {"jid": text})
    [theirs] = codec_peer.call({"op": "encode", "nodes": [node_to_json(node)]})
    assert encode_node(node).hex() == theirs
