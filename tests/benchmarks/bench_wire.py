"""Wire-layer benchmark: node codec, Noise transport and handshakes, ours vs Baileys.

Run with `make bench` or `.venv/bin/python -m tests.benchmarks wire`. The Baileys figures come
from tests/interop/bench_wire.mjs in the same run (node 20, @whiskeysockets/baileys rc14).
Single-threaded on both sides; each figure is the rate over about SECONDS of repeated work.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

from protocol.core import curve
from protocol.core.binary import BinaryCodec, Node
from protocol.core.inject import CountingRng
from protocol.core.noise import (
    NoiseInitiator,
    NoiseResponder,
    TransportCipher,
    make_cert_chain,
)
from protocol.core.payload import build_login_payload
from tests.interop.node import NodePeer
from tests.protocol.wire_data import node_to_json

SECONDS = 2.0
PAYLOAD_SIZE = 16 * 1024  # one transport frame of a media-less busy session
NOW = 1_800_000_000


def _stanza() -> Node:
    """A 1:1 message to 3 devices: <participants> of 3 <to><enc ~200 B/></to>, device-identity."""
    rng = CountingRng(b"bench-wire")
    participants = [
        Node(
            "to",
            {"jid": f"1555123456{i}:{i + 1}@s.whatsapp.net"},
            [Node("enc", {"v": "2", "type": "pkmsg"}, rng(200))],
        )
        for i in range(3)
    ]
    return Node(
        "message",
        {"id": "3EB0C431C26A1916E07A", "to": "15551234567@s.whatsapp.net", "type": "text"},
        [Node("participants", {}, participants), Node("device-identity", {}, rng(160))],
    )


def _rate(fn: Callable[[], object], seconds: float = SECONDS) -> float:
    n, batch = 0, 1
    start = time.perf_counter()
    while True:
        for _ in range(batch):
            fn()
        n += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed
        batch = min(batch * 2, 4096)


def measure_ours(
    node: Node, cert: bytes, root: curve.KeyPair, s_static: curve.KeyPair
) -> dict[str, float]:
    codec = BinaryCodec()
    body = codec.encode(node)
    encode = _rate(lambda: codec.encode(node))
    decode = _rate(lambda: codec.decode(body))

    plain = bytes(PAYLOAD_SIZE)
    sender = TransportCipher(bytes(32))
    encrypt = _rate(lambda: sender.encrypt(plain))
    sealed = TransportCipher(bytes(32)).encrypt(plain)
    receiver = TransportCipher(bytes(32))

    def decrypt_one() -> bytes:
        receiver.counter = 0  # the same sealed frame each time, as the Baileys side does
        return receiver.decrypt(sealed)

    decrypt = _rate(decrypt_one)

    rng = CountingRng(b"bench-handshake")
    noise_key = curve.generate_keypair(rng)
    payload = build_login_payload("15551234567:3@s.whatsapp.net").SerializeToString()

    def handshake() -> None:
        ini = NoiseInitiator(noise_key, curve.generate_keypair(rng), trusted_root=root.public)
        res = NoiseResponder(s_static, curve.generate_keypair(rng), cert)
        res.read_client_hello(ini.client_hello())
        ini.read_server_hello(res.server_hello(), now=NOW)
        finish, _ = ini.client_finish(payload)
        res.read_client_finish(finish)

    handshakes = _rate(handshake)
    mb = PAYLOAD_SIZE / 1e6
    return {
        "encode": encode,
        "decode": decode,
        "encrypt_mb_s": encrypt * mb,
        "decrypt_mb_s": decrypt * mb,
        "handshakes": handshakes,
    }


def main() -> str:
    node = _stanza()
    rng = CountingRng(b"bench-keys")
    root, inter, s_static = (curve.generate_keypair(rng) for _ in range(3))
    cert = make_cert_chain(
        root_private=root.private,
        intermediate=inter,
        server_static=s_static.public,
        not_before=0,
        not_after=2**32 - 1,
    )
    ours = measure_ours(node, cert, root, s_static)
    with NodePeer("bench_wire.mjs", timeout=300) as peer:
        theirs: dict[str, float] = peer.call(
            {
                "op": "run",
                "node": node_to_json(node),
                "payload_size": PAYLOAD_SIZE,
                "seconds": SECONDS,
                "root_pub": root.public.hex(),
                "s_static": {"private": s_static.private.hex(), "public": s_static.public.hex()},
                "cert": cert.hex(),
            }
        )
    size = len(BinaryCodec().encode(node))
    rows = [
        (f"node encode (message stanza, {size} B)", "encode", "nodes/s", "{:,.0f}"),
        ("node decode (same stanza)", "decode", "nodes/s", "{:,.0f}"),
        ("transport encrypt (16 KiB frames)", "encrypt_mb_s", "MB/s", "{:,.1f}"),
        ("transport decrypt (16 KiB frames)", "decrypt_mb_s", "MB/s", "{:,.1f}"),
        ("Noise handshake, both roles in process", "handshakes", "handshakes/s", "{:,.0f}"),
    ]
    lines = [
        "### Wire layer (framing, Noise, binary nodes)",
        "",
        f"Python {platform.python_version()} vs Baileys 7.0.0-rc14 on node, same run, "
        f"~{SECONDS:.0f} s per figure. Stanza: `<message>` with `<participants>` of 3 `<to>` "
        "each holding a 200-byte `<enc>`, plus a 160-byte `<device-identity>`. Handshake: "
        "client and server sides, fresh ephemeral keys, certificate chain verified, login "
        "ClientPayload encrypted and parsed. The machine is shared with parallel jobs, so single "
        "figures move by tens of percent between runs; the ratios, taken in the same run, are "
        "steadier.",
        "",
        "| operation | unit | wafleet | Baileys | wafleet / Baileys |",
        "|---|---|---:|---:|---:|",
    ]
    for label, key, unit, fmt in rows:
        a, b = ours[key], theirs[key]
        lines.append(f"| {label} | {unit} | {fmt.format(a)} | {fmt.format(b)} | {a / b:.2f} |")
    text = "\n".join(lines)
    print(text)
    return text
