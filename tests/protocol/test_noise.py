"""Noise XX (SPEC §3): the §18.2 transcript in both roles, certificate checks, transport."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.core import curve, framing
from protocol.core.binary import encode_node
from protocol.core.errors import FrameError, HandshakeError
from protocol.core.noise import (
    WA_CERT_ROOT_PUBLIC_KEY,
    HandshakeState,
    HandshakeStep,
    NoiseInitiator,
    NoiseResponder,
    NoiseTransport,
    TransportCipher,
    make_cert_chain,
    verify_cert_chain,
)
from protocol.core.payload import build_login_payload
from protocol.core.proto.wa6_pb2 import CertChain, HandshakeMessage
from tests.protocol.wire_data import kp, load_vector, node_from_json

VEC = load_vector("noise_handshake.json")
EXP: dict[str, str] = VEC["expected"]
KEYS = {name: kp(int(b, 16)) for name, b in VEC["keys"].items() if name != "comment"}
NOW = VEC["now"]


def _cert(**overrides: Any) -> bytes:
    args: dict[str, Any] = {
        "root_private": KEYS["root"].private,
        "intermediate": KEYS["intermediate"],
        "server_static": KEYS["server_static"].public,
        "not_before": VEC["cert"]["not_before"],
        "not_after": VEC["cert"]["not_after"],
    }
    args.update(overrides)
    return make_cert_chain(**args)


def _pair(cert: bytes | None = None) -> tuple[NoiseInitiator, NoiseResponder]:
    ini = NoiseInitiator(
        KEYS["client_static"], KEYS["client_ephemeral"], trusted_root=KEYS["root"].public
    )
    res = NoiseResponder(KEYS["server_static"], KEYS["server_ephemeral"], cert or _cert())
    return ini, res


def test_cert_chain_vector() -> None:
    assert _cert().hex() == EXP["cert_chain"]


def test_full_transcript_matches_spec_vector() -> None:
    ini, res = _pair()
    writer = framing.FrameWriter(framing.encode_intro())
    hello = ini.client_hello()
    assert writer.frame(hello).hex() == EXP["frame1"]

    res.read_client_hello(hello)
    server_hello = res.server_hello()
    assert server_hello.hex() == EXP["server_hello"]

    identity = ini.read_server_hello(server_hello, now=NOW)
    assert identity.static == KEYS["server_static"].public
    assert (identity.leaf.serial, identity.intermediate.serial) == (2, 1)

    payload = build_login_payload(VEC["login_jid"]).SerializeToString()
    assert payload.hex() == EXP["login_payload"]
    finish, transport = ini.client_finish(payload)
    assert finish.hex() == EXP["client_finish"]
    assert transport.send.key.hex() == EXP["client_send_key"]
    assert transport.recv.key.hex() == EXP["client_recv_key"]
    assert ini.state is HandshakeState.DONE

    done = res.read_client_finish(finish)
    assert done.client_static == KEYS["client_static"].public
    assert done.payload == payload
    assert done.client_payload.username == 15551234567
    assert done.client_payload.device == 3
    assert done.transport.send.key == transport.recv.key
    assert done.transport.recv.key == transport.send.key

    t0 = framing.encode_frame(transport.send.encrypt(encode_node(node_from_json(VEC["t0_node"]))))
    assert t0.hex() == EXP["t0"]
    assert done.transport.recv.decrypt(t0[3:]) == encode_node(node_from_json(VEC["t0_node"]))


def test_responder_replays_vector_client_messages() -> None:
    res = NoiseResponder(KEYS["server_static"], KEYS["server_ephemeral"], _cert())
    res.read_client_hello(bytes.fromhex(EXP["frame1"])[7:])
    assert res.server_hello().hex() == EXP["server_hello"]
    done = res.read_client_finish(bytes.fromhex(EXP["client_finish"]))
    assert done.payload.hex() == EXP["login_payload"]
    assert done.transport.recv.decrypt(bytes.fromhex(EXP["t0"])[3:])[:1] == b"\x00"


def test_default_trusted_root_is_whatsapps() -> None:
    ini = NoiseInitiator(KEYS["client_static"], KEYS["client_ephemeral"])
    _, res = _pair()
    res.read_client_hello(ini.client_hello())
    with pytest.raises(HandshakeError) as info:
        ini.read_server_hello(res.server_hello(), now=NOW)
    assert info.value.details["reason"] == "intermediate_signature"
    assert info.value.details["step"] is HandshakeStep.CERTIFICATE
    assert ini.state is HandshakeState.FAILED
    assert WA_CERT_ROOT_PUBLIC_KEY.hex().startswith("142375574d0a")


def _raw_chain(
    leaf_details: bytes, leaf_sig: bytes, inter_details: bytes, inter_sig: bytes
) -> bytes:
    c = CertChain()
    c.leaf.details, c.leaf.signature = leaf_details, leaf_sig
    c.intermediate.details, c.intermediate.signature = inter_details, inter_sig
    return c.SerializeToString()


def _details(
    serial: int, issuer: int, key: bytes, nb: int = 1700000000, na: int = 1900000000
) -> bytes:
    return CertChain.NoiseCertificate.Details(
        serial=serial, issuerSerial=issuer, key=key, notBefore=nb, notAfter=na
    ).SerializeToString()


def _signed_chain(
    inter_details: bytes, leaf_details: bytes, inter_signer: bytes | None = None
) -> bytes:
    root, inter = KEYS["root"], KEYS["intermediate"]
    return _raw_chain(
        leaf_details,
        curve.sign(inter.private, leaf_details),
        inter_details,
        curve.sign(inter_signer or root.private, inter_details),
    )


def _leaf_only() -> bytes:
    c = CertChain()
    c.leaf.details, c.leaf.signature = b"x", bytes(64)
    return c.SerializeToString()


def _unsigned_leaf() -> bytes:
    c = CertChain()
    c.leaf.details = b"x"
    c.intermediate.details, c.intermediate.signature = b"y", bytes(64)
    return c.SerializeToString()


S_PUB = KEYS["server_static"].public
I_PUB = KEYS["intermediate"].public
GOOD_INTER = _details(1, 0, I_PUB)
GOOD_LEAF = _details(2, 1, S_PUB)


@pytest.mark.parametrize(
    ("chain", "reason"),
    [
        (b"\xff\xff", "malformed_chain"),
        (CertChain().SerializeToString(), "missing_certificate"),
        (_leaf_only(), "missing_certificate"),
        (_raw_chain(GOOD_LEAF, b"", GOOD_INTER, bytes(64)), "signature_length"),
        (_unsigned_leaf(), "incomplete_certificate"),
        (_raw_chain(GOOD_LEAF, bytes(63), GOOD_INTER, bytes(64)), "signature_length"),
        (
            _signed_chain(GOOD_INTER, GOOD_LEAF, inter_signer=KEYS["intermediate"].private),
            "intermediate_signature",
        ),
        (_signed_chain(_details(1, 5, I_PUB), GOOD_LEAF), "intermediate_issuer_serial"),
        (_signed_chain(_details(1, 0, I_PUB[:31]), GOOD_LEAF), "intermediate_key_length"),
        (_signed_chain(GOOD_INTER, _details(2, 9, S_PUB)), "leaf_issuer_serial"),
        (_signed_chain(GOOD_INTER, _details(2, 1, I_PUB)), "leaf_key_mismatch"),
        (_signed_chain(_details(1, 0, I_PUB, na=1750000000), GOOD_LEAF), "validity"),
        (_signed_chain(GOOD_INTER, _details(2, 1, S_PUB, nb=1850000000)), "validity"),
    ],
)
def test_certificate_checks(chain: bytes, reason: str) -> None:
    with pytest.raises(HandshakeError) as info:
        verify_cert_chain(chain, server_static=S_PUB, now=NOW, trusted_root=KEYS["root"].public)
    assert info.value.details["reason"] == reason


def test_leaf_signed_by_wrong_key() -> None:
    chain = _raw_chain(
        GOOD_LEAF,
        curve.sign(KEYS["root"].private, GOOD_LEAF),
        GOOD_INTER,
        curve.sign(KEYS["root"].private, GOOD_INTER),
    )
    with pytest.raises(HandshakeError) as info:
        verify_cert_chain(chain, server_static=S_PUB, now=NOW, trusted_root=KEYS["root"].public)
    assert info.value.details["reason"] == "leaf_signature"


def test_valid_chain_through_the_handshake_fails_when_expired() -> None:
    ini, res = _pair()
    res.read_client_hello(ini.client_hello())
    with pytest.raises(HandshakeError) as info:
        ini.read_server_hello(res.server_hello(), now=1900000001)
    assert info.value.details["reason"] == "validity"


def test_tampered_server_hello_fails_to_decrypt() -> None:
    ini, res = _pair()
    res.read_client_hello(ini.client_hello())
    msg = HandshakeMessage.FromString(res.server_hello())
    msg.serverHello.payload = msg.serverHello.payload[:-1] + b"\x00"
    with pytest.raises(HandshakeError) as info:
        ini.read_server_hello(msg.SerializeToString(), now=NOW)
    assert info.value.details == {
        "step": HandshakeStep.SERVER_HELLO,
        "reason": "decrypt_failed",
    }


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            HandshakeMessage(clientHello=HandshakeMessage.ClientHello(ephemeral=bytes(32))),
            "missing_server_hello",
        ),
        (
            HandshakeMessage(serverHello=HandshakeMessage.ServerHello(ephemeral=bytes(31))),
            "ephemeral_length",
        ),
        (
            HandshakeMessage(serverHello=HandshakeMessage.ServerHello(ephemeral=bytes(32))),
            "missing_fields",
        ),
        (
            HandshakeMessage(
                serverHello=HandshakeMessage.ServerHello(
                    ephemeral=bytes(32), static=b"", payload=b""
                )
            ),
            "bad_key",
        ),
    ],
)
def test_server_hello_shape(message: HandshakeMessage, reason: str) -> None:
    ini, _ = _pair()
    ini.client_hello()
    with pytest.raises(HandshakeError) as info:
        ini.read_server_hello(message.SerializeToString(), now=NOW)
    assert info.value.details["reason"] == reason


def test_client_finish_with_bad_payload_is_reported() -> None:
    ini, res = _pair()
    res.read_client_hello(ini.client_hello())
    ini.read_server_hello(res.server_hello(), now=NOW)
    finish, _ = ini.client_finish(b"\xff\xff\xff")
    with pytest.raises(HandshakeError) as info:
        res.read_client_finish(finish)
    assert info.value.details["reason"] == "bad_payload"
    assert info.value.details["step"] is HandshakeStep.CLIENT_FINISH


def test_steps_out_of_order() -> None:
    ini, res = _pair()
    with pytest.raises(HandshakeError) as info:
        ini.client_finish(b"")
    assert info.value.details["reason"] == "wrong_state"
    with pytest.raises(HandshakeError):
        res.server_hello()
    ini.client_hello()
    with pytest.raises(HandshakeError):
        ini.client_hello()


def test_prologue_must_match() -> None:
    ini = NoiseInitiator(
        KEYS["client_static"],
        KEYS["client_ephemeral"],
        prologue=framing.wa_header(2),
        trusted_root=KEYS["root"].public,
    )
    res = NoiseResponder(KEYS["server_static"], KEYS["server_ephemeral"], _cert())
    res.read_client_hello(ini.client_hello())
    with pytest.raises(HandshakeError) as info:
        ini.read_server_hello(res.server_hello(), now=NOW)
    assert info.value.details["reason"] == "decrypt_failed"


def test_v2_prologue_handshake() -> None:
    hdr = framing.wa_header(2)
    ini = NoiseInitiator(
        KEYS["client_static"],
        curve.generate_keypair(lambda n: b"\x42" * n),
        prologue=hdr,
        trusted_root=KEYS["root"].public,
    )
    res = NoiseResponder(KEYS["server_static"], KEYS["server_ephemeral"], _cert(), prologue=hdr)
    res.read_client_hello(ini.client_hello())
    ini.read_server_hello(res.server_hello(), now=NOW)
    finish, t = ini.client_finish(b"")
    assert res.read_client_finish(finish).transport.recv.key == t.send.key


def _transport_pair() -> tuple[NoiseTransport, NoiseTransport]:
    ini, res = _pair()
    res.read_client_hello(ini.client_hello())
    ini.read_server_hello(res.server_hello(), now=NOW)
    finish, client = ini.client_finish(b"")
    return client, res.read_client_finish(finish).transport


@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=100)), max_size=20))
def test_transport_counters_both_ways(messages: list[tuple[bool, bytes]]) -> None:
    client, server = _transport_pair()
    for to_server, data in messages:
        a, b = (client, server) if to_server else (server, client)
        assert b.recv.decrypt(a.send.encrypt(data)) == data
    assert client.send.counter == server.recv.counter
    assert server.send.counter == client.recv.counter


def test_transport_decrypt_failure_advances_counter() -> None:
    client, server = _transport_pair()
    c0 = client.send.encrypt(b"a")
    c1 = client.send.encrypt(b"b")
    with pytest.raises(FrameError) as info:
        server.recv.decrypt(c0[:-1] + bytes([c0[-1] ^ 1]))
    assert info.value.details == {"reason": "decrypt_failed", "counter": 0}
    assert server.recv.decrypt(c1) == b"b"  # counter advanced, like whatsmeow
    assert "key" not in repr(server.recv)


def test_transport_counter_exhaustion() -> None:
    cipher = TransportCipher(bytes(32), counter=0xFFFFFFFF)
    cipher.encrypt(b"")
    with pytest.raises(FrameError) as info:
        cipher.encrypt(b"")
    assert info.value.details["reason"] == "counter_exhausted"
