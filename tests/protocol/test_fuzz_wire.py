"""Garbage never raises anything but our own errors (issue 3 item 6).

Each target gets ≥ 2,000 hypothesis examples: random bytes, and mutations of valid inputs so
the fuzzer gets past the first checks. The longer run is tests/tools/fuzz_wire.py.
"""

from __future__ import annotations

import os
import zlib

import pytest
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.core import framing
from protocol.core.binary import BinaryCodec, Node, encode_node
from protocol.core.errors import DecodeError, FrameError, HandshakeError
from protocol.core.noise import NoiseInitiator, NoiseResponder, TransportCipher, make_cert_chain
from protocol.core.payload import build_login_payload
from protocol.core.proto import adv_pb2, companion_reg_pb2, e2e_pb2, parse, signal_pb2, wa6_pb2
from tests.protocol.wire_data import baileys_nodes, kp

# ≥ 2,000 in the suite; the "fuzz" profile (tests/tools/fuzz_wire.py) raises it, and
# WAFLEET_FUZZ_EXAMPLES sets it outright.
EXAMPLES = int(os.environ.get("WAFLEET_FUZZ_EXAMPLES", max(2000, settings().max_examples)))
ROOT, INTER, C_E, C_S, S_E, S_S = kp(0x55), kp(0x66), kp(0x11), kp(0x22), kp(0x33), kp(0x44)
CERT = make_cert_chain(
    root_private=ROOT.private,
    intermediate=INTER,
    server_static=S_S.public,
    not_before=0,
    not_after=2**32,
)
NOW = 1_800_000_000


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """A valid input with a few bytes flipped, inserted, or cut off."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        else:
            del data[pos:]
    return bytes(data)


# ---------------------------------------------------------------- frame reader


@settings(max_examples=EXAMPLES)
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6), st.booleans())
def test_fuzz_frame_reader(data: bytes, cuts: list[int], server: bool) -> None:
    reader = framing.FrameReader(expect_intro=server, max_frame_size=1000)
    last = 0
    try:
        for p in [*sorted(cuts), len(data)]:
            for frame in reader.feed(data[last:p]):
                assert len(frame) <= 1000
            last = max(last, p)
    except FrameError:
        pass


# ---------------------------------------------------------------- node decoder

valid_bodies = baileys_nodes().map(encode_node)
compressed_bodies = valid_bodies.map(lambda b: b"\x02" + zlib.compress(b[1:]))


@settings(max_examples=EXAMPLES)
@given(
    st.binary(max_size=400) | mutated(valid_bodies) | mutated(compressed_bodies),
    st.sampled_from([2, 3]),
)
def test_fuzz_node_decoder(data: bytes, version: int) -> None:
    codec = BinaryCodec(dict_version=version, max_decompressed=1 << 16)
    try:
        node = codec.decode(data)
    except DecodeError:
        return
    assert isinstance(node, Node)
    # One re-encoding may normalise (an empty packed string comes back as empty bytes, as in
    # Baileys); after that, encode/decode is a fixed point.
    again = codec.decode(codec.encode(node))
    assert codec.decode(codec.encode(again)) == again


# ---------------------------------------------------------------- protobufs

MESSAGE_TYPES: list[type[Message]] = [
    wa6_pb2.HandshakeMessage,
    wa6_pb2.CertChain,
    wa6_pb2.CertChain.NoiseCertificate.Details,
    wa6_pb2.ClientPayload,
    companion_reg_pb2.DeviceProps,
    adv_pb2.ADVSignedDeviceIdentityHMAC,
    adv_pb2.ADVSignedDeviceIdentity,
    adv_pb2.ADVDeviceIdentity,
    e2e_pb2.Message,
    signal_pb2.PreKeyWhisperMessage,
    signal_pb2.WhisperMessage,
]
valid_payloads = st.sampled_from(
    [CERT, build_login_payload("1:2@s.whatsapp.net").SerializeToString()]
)


@settings(max_examples=EXAMPLES)
@given(st.sampled_from(MESSAGE_TYPES), st.binary(max_size=300) | mutated(valid_payloads))
def test_fuzz_protobuf_parse(message_type: type[Message], data: bytes) -> None:
    try:
        message = parse(message_type, data)
    except DecodeError:
        return
    message.SerializeToString()
    str(message)


# ---------------------------------------------------------------- handshake messages


def _responder_after_hello() -> tuple[NoiseInitiator, NoiseResponder, bytes]:
    ini = NoiseInitiator(C_S, C_E, trusted_root=ROOT.public)
    res = NoiseResponder(S_S, S_E, CERT)
    res.read_client_hello(ini.client_hello())
    return ini, res, res.server_hello()


def _valid_client_finish() -> bytes:
    ini, _, server_hello = _responder_after_hello()
    ini.read_server_hello(server_hello, now=NOW)
    return ini.client_finish(b"\x08\x01")[0]


VALID_SERVER_HELLO = _responder_after_hello()[2]
VALID_CLIENT_FINISH = _valid_client_finish()
VALID_CLIENT_HELLO = NoiseInitiator(C_S, C_E).client_hello()


def _handshake_fields(field_names: list[str]) -> st.SearchStrategy[dict[str, bytes]]:
    return st.fixed_dictionaries(
        {},
        optional={
            f: st.binary(max_size=80) | st.binary(min_size=32, max_size=32) for f in field_names
        },
    )


server_hellos = _handshake_fields(["ephemeral", "static", "payload"]).map(
    lambda f: wa6_pb2.HandshakeMessage(
        serverHello=wa6_pb2.HandshakeMessage.ServerHello(**f)
    ).SerializeToString()
)
client_hellos = _handshake_fields(["ephemeral", "static", "payload"]).map(
    lambda f: wa6_pb2.HandshakeMessage(
        clientHello=wa6_pb2.HandshakeMessage.ClientHello(
            ephemeral=f.get("ephemeral"), static=f.get("static"), payload=f.get("payload")
        )
    ).SerializeToString()
)
client_finishes = _handshake_fields(["static", "payload"]).map(
    lambda f: wa6_pb2.HandshakeMessage(
        clientFinish=wa6_pb2.HandshakeMessage.ClientFinish(**f)
    ).SerializeToString()
)


@settings(max_examples=EXAMPLES)
@given(st.binary(max_size=300) | server_hellos | mutated(st.just(VALID_SERVER_HELLO)))
def test_fuzz_server_hello_into_initiator(data: bytes) -> None:
    ini = NoiseInitiator(C_S, C_E, trusted_root=ROOT.public)
    ini.client_hello()
    try:
        ini.read_server_hello(data, now=NOW)
    except HandshakeError:
        return
    assert data == VALID_SERVER_HELLO or ini.state.value == "server_hello_read"


@settings(max_examples=EXAMPLES)
@given(st.binary(max_size=300) | client_hellos | mutated(st.just(VALID_CLIENT_HELLO)))
def test_fuzz_client_hello_into_responder(data: bytes) -> None:
    res = NoiseResponder(S_S, S_E, CERT)
    try:
        res.read_client_hello(data)
        res.server_hello()
    except HandshakeError:
        return


@settings(max_examples=EXAMPLES)
@given(st.binary(max_size=300) | client_finishes | mutated(st.just(VALID_CLIENT_FINISH)))
def test_fuzz_client_finish_into_responder(data: bytes) -> None:
    _, res, _ = _responder_after_hello()
    try:
        done = res.read_client_finish(data)
    except HandshakeError:
        return
    assert done.client_static == C_S.public


@settings(max_examples=EXAMPLES)
@given(st.binary(max_size=200), st.integers(0, 3))
def test_fuzz_transport_decrypt(data: bytes, counter: int) -> None:
    cipher = TransportCipher(bytes(32), counter)
    with pytest.raises(FrameError) as info:  # random bytes never authenticate
        cipher.decrypt(data)
    assert info.value.details["reason"] == "decrypt_failed"
    assert cipher.counter == counter + 1
