"""Interop with libsignal-node 6.0.0, curve25519-js 0.0.4 and Baileys' sender-key port, run live
through tests/interop/signal_peer.cjs (SPEC §10, §18.3, §18.9–§18.11).

Conversations: random interleaving of senders, out-of-order delivery within a window of
`WINDOW` messages per direction, and dropped messages; every delivered message must decrypt on
the other side to what was sent.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import signal_store
from protocol.core import curve
from protocol.core.inject import CountingRng
from protocol.core.signal import kdf, keys, sender_keys
from protocol.store import MemoryKeyStore
from tests.interop.node import NodePeer

pytestmark = pytest.mark.interop

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
MESSAGES = 1000
WINDOW = 4  # reorder among the next 4 in-flight messages of one direction (< 5 chains)
DROP = 0.05


@pytest.fixture(scope="module")
def peer() -> Iterator[NodePeer]:
    with NodePeer("signal_peer.cjs") as p:
        yield p


def vector(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / f"{name}.json").read_text(encoding="utf-8"))
    return data


# -- signatures ----------------------------------------------------------------------------


@settings(max_examples=40)
@given(st.binary(min_size=32, max_size=32), st.binary(max_size=300))
def test_our_signatures_verify_in_curve25519_js(
    peer: NodePeer, private: bytes, message: bytes
) -> None:
    pub = curve.djb(curve.public_key(private))
    sig = curve.sign(private, message)
    assert peer.call(
        {"op": "verify", "pub": pub.hex(), "msg": message.hex(), "sig": sig.hex()}
    ) == {
        "curveJs": True,
        "libsignal": True,
    }


@settings(max_examples=40)
@given(st.binary(min_size=32, max_size=32), st.binary(max_size=300))
def test_libsignal_signatures_verify_here_and_match(
    peer: NodePeer, private: bytes, message: bytes
) -> None:
    sig = bytes.fromhex(peer.call({"op": "sign", "priv": private.hex(), "msg": message.hex()}))
    assert curve.verify(curve.public_key(private), message, sig)
    assert sig == curve.sign(private, message)  # both deterministic: byte-exact


# -- live vectors --------------------------------------------------------------------------


def test_kdf_vectors_live(peer: NodePeer) -> None:
    v = vector("signal_kdf")
    for info, blocks in v["derive_secrets"].items():
        live = peer.call({"op": "kdf", "ikm": v["ikm"], "salt": v["salt"], "info": info})
        ours = [
            b.hex() for b in kdf.derive_secrets(bytes.fromhex(v["ikm"]), bytes(32), info.encode())
        ]
        assert live == ours == blocks
    for seed_byte, expected in ((1, v["message_key_seed"]), (2, v["next_chain_key"])):
        live = peer.call({"op": "mac", "key": v["chain_key"], "data": f"{seed_byte:02x}"})
        assert live == expected
    sig = v["signature"]
    assert (
        peer.call({"op": "sign", "priv": sig["private"], "msg": sig["message"]}) == sig["signature"]
    )


def test_session_vector_live(peer: NodePeer) -> None:
    v = vector("signal_session")
    live = peer.call({"op": "session_vector"})
    assert live["spkSig"] == v["signed_prekey_signature"]
    assert live["e1"] == v["e1_pkmsg"]
    assert live["e1Type"] == 3
    assert live["e2"] == v["e2_pkmsg"]
    assert live["d1"] == v["plaintext"]
    assert live["reply"] == v["reply_msg"]
    assert live["replyType"] == 1
    assert live["d2"] == v["reply_plaintext"]


def test_sender_key_vector_live(peer: NodePeer) -> None:
    v = vector("signal_sender_keys")
    live = peer.call({"op": "sender_key_vector"})
    assert live == {
        "name": v["name"],
        "skdm": v["skdm"],
        "m1": v["skmsg_iteration_0"],
        "m2": v["skmsg_iteration_2"],
    }


# -- 1:1 conversations ---------------------------------------------------------------------


@dataclass
class Channel:
    """In-flight messages of one direction; delivery picks among the first WINDOW."""

    rnd: random.Random
    pending: list[tuple[str, bytes, bytes]] = field(default_factory=list)  # type, body, pt
    delivered: int = 0
    dropped: int = 0

    def take(self, flush: bool = False) -> tuple[str, bytes, bytes] | None:
        while self.pending:
            i = self.rnd.randrange(min(WINDOW, len(self.pending)))
            item = self.pending.pop(i)
            if not flush and self.rnd.random() < DROP:
                self.dropped += 1
                continue
            self.delivered += 1
            return item
        return None


class Ours:
    """Our side: MemoryKeyStore + protocol.signal_store."""

    def __init__(self, seed: bytes) -> None:
        self.rng = CountingRng(seed)
        self.store = MemoryKeyStore()
        self.local = keys.generate_identity(self.rng)
        self.spk = signal_store.signed_prekey(self.store, self.local, self.rng)

    def bundle(self) -> dict[str, Any]:
        prekey = signal_store.prekeys_for_upload(self.store, 1, self.rng)[0]
        self.store.mark_prekeys_uploaded([prekey.id])
        return {
            "registrationId": self.local.registration_id,
            "identityKey": curve.djb(self.local.public).hex(),
            "signedPreKeyId": self.spk.id,
            "signedPreKey": curve.djb(self.spk.key_pair.public).hex(),
            "signature": self.spk.signature.hex(),
            "preKeyId": prekey.id,
            "preKey": curve.djb(prekey.key_pair.public).hex(),
        }


def node_bundle(b: dict[str, Any]) -> keys.PreKeyBundle:
    return keys.PreKeyBundle(
        registration_id=b["registrationId"],
        identity_key=bytes.fromhex(b["identityKey"]),
        signed_prekey_id=b["signedPreKeyId"],
        signed_prekey=bytes.fromhex(b["signedPreKey"]),
        signed_prekey_signature=bytes.fromhex(b["signature"]),
        prekey_id=b.get("preKeyId"),
        prekey=bytes.fromhex(b["preKey"]) if "preKey" in b else None,
    )


def converse(peer: NodePeer, *, we_initiate: bool, seed: int) -> None:
    rnd = random.Random(seed)
    ours = Ours(b"interop-%d" % seed)
    node_name = f"node{seed}"
    our_addr, node_addr = "15550001111.0", "15550002222.0"  # how each side names the other
    peer.call({"op": "new_party", "name": node_name, "registrationId": 4321})
    if we_initiate:
        bundle = node_bundle(peer.call({"op": "bundle", "name": node_name, "withPreKey": True}))
        signal_store.build_session(ours.store, node_addr, bundle, ours.local, ours.rng)
        node_can_send = False
    else:
        peer.call(
            {"op": "init_outgoing", "name": node_name, "address": our_addr, "bundle": ours.bundle()}
        )
        node_can_send = True
    to_node, to_us = Channel(rnd), Channel(rnd)
    sent = 0
    while sent < MESSAGES or to_node.pending or to_us.pending:
        if sent < MESSAGES:
            we_can_send = signal_store.has_session(ours.store, node_addr)
            if we_can_send and (not node_can_send or rnd.random() < 0.5):
                pt = rnd.randbytes(rnd.randrange(1, 200))
                enc = signal_store.encrypt(ours.store, node_addr, pt, ours.local)
                to_node.pending.append((enc.type.enc_type, enc.body, pt))
                sent += 1
            elif node_can_send:
                pt = rnd.randbytes(rnd.randrange(1, 200))
                r = peer.call(
                    {"op": "encrypt", "name": node_name, "address": our_addr, "pt": pt.hex()}
                )
                to_us.pending.append((r["type"], bytes.fromhex(r["body"]), pt))
                sent += 1
        flush = sent >= MESSAGES
        for _ in range(rnd.randrange(0, 3) if not flush else 1):
            item = to_node.take(flush)
            if item is not None:
                typ, body, pt = item
                got = peer.call(
                    {
                        "op": "decrypt",
                        "name": node_name,
                        "address": our_addr,
                        "type": typ,
                        "body": body.hex(),
                    }
                )
                assert got == {"ok": True, "pt": pt.hex()}, got
                node_can_send = True
            item = to_us.take(flush)
            if item is not None:
                typ, body, pt = item
                inbound = signal_store.decrypt(
                    ours.store, node_addr, typ, body, ours.local, ours.rng
                )
                assert inbound.plaintext == pt
                assert not inbound.identity_changed
    assert to_node.delivered + to_us.delivered + to_node.dropped + to_us.dropped == MESSAGES
    assert to_node.delivered > MESSAGES // 4
    assert to_us.delivered > MESSAGES // 4
    assert to_node.dropped + to_us.dropped > 0


def test_conversation_we_initiate(peer: NodePeer) -> None:
    converse(peer, we_initiate=True, seed=1)


def test_conversation_libsignal_initiates(peer: NodePeer) -> None:
    converse(peer, we_initiate=False, seed=2)


def test_prekey_consumed_on_both_sides(peer: NodePeer) -> None:
    ours = Ours(b"prekey-consumption")
    peer.call({"op": "new_party", "name": "pk", "registrationId": 99})
    raw = peer.call({"op": "bundle", "name": "pk", "withPreKey": True})
    signal_store.build_session(ours.store, "2.0", node_bundle(raw), ours.local, ours.rng)
    enc = signal_store.encrypt(ours.store, "2.0", b"hi", ours.local)
    assert enc.type.enc_type == "pkmsg"
    assert peer.call({"op": "has_prekey", "name": "pk", "id": raw["preKeyId"]})
    got = peer.call(
        {"op": "decrypt", "name": "pk", "address": "1.0", "type": "pkmsg", "body": enc.body.hex()}
    )
    assert got == {"ok": True, "pt": b"hi".hex()}
    assert not peer.call({"op": "has_prekey", "name": "pk", "id": raw["preKeyId"]})
    # The reverse: libsignal initiates against our bundle; our prekey is consumed.
    bundle = ours.bundle()
    peer.call({"op": "init_outgoing", "name": "pk", "address": "1.0", "bundle": bundle})
    r = peer.call({"op": "encrypt", "name": "pk", "address": "1.0", "pt": b"yo".hex()})
    assert ours.store.get_prekeys([bundle["preKeyId"]])
    inbound = signal_store.decrypt(
        ours.store, "2.0", r["type"], bytes.fromhex(r["body"]), ours.local, ours.rng
    )
    assert inbound.plaintext == b"yo"
    assert inbound.new_session
    assert ours.store.get_prekeys([bundle["preKeyId"]]) == {}


def test_session_without_one_time_prekey(peer: NodePeer) -> None:
    ours = Ours(b"no-opk")
    peer.call({"op": "new_party", "name": "noopk", "registrationId": 5})
    raw = peer.call({"op": "bundle", "name": "noopk", "withPreKey": False})
    signal_store.build_session(ours.store, "2.0", node_bundle(raw), ours.local, ours.rng)
    enc = signal_store.encrypt(ours.store, "2.0", b"no prekey", ours.local)
    assert signal_store.remote_registration_id(ours.store, "2.0") == 5
    got = peer.call(
        {
            "op": "decrypt",
            "name": "noopk",
            "address": "1.0",
            "type": enc.type.enc_type,
            "body": enc.body.hex(),
        }
    )
    assert got == {"ok": True, "pt": b"no prekey".hex()}
    # The reverse: libsignal initiates from our bundle without a one-time prekey.
    bundle = ours.bundle()
    kept_id = bundle.pop("preKeyId")
    del bundle["preKey"]
    peer.call({"op": "new_party", "name": "noopk2", "registrationId": 7})
    peer.call({"op": "init_outgoing", "name": "noopk2", "address": "1.0", "bundle": bundle})
    r = peer.call({"op": "encrypt", "name": "noopk2", "address": "1.0", "pt": b"none".hex()})
    inbound = signal_store.decrypt(
        ours.store, "3.0", r["type"], bytes.fromhex(r["body"]), ours.local, ours.rng
    )
    assert inbound.plaintext == b"none"
    assert inbound.new_session
    assert ours.store.get_prekeys([kept_id])  # no one-time prekey was consumed


def test_late_messages_for_replaced_sessions_both_ways(peer: NodePeer) -> None:
    ours = Ours(b"replaced sessions")
    peer.call({"op": "new_party", "name": "rs", "registrationId": 6})
    peer.call({"op": "init_outgoing", "name": "rs", "address": "1.0", "bundle": ours.bundle()})

    def node_send(pt: bytes) -> tuple[str, bytes]:
        r = peer.call({"op": "encrypt", "name": "rs", "address": "1.0", "pt": pt.hex()})
        return r["type"], bytes.fromhex(r["body"])

    def node_recv(msg: tuple[str, bytes]) -> Any:
        req = {"op": "decrypt", "name": "rs", "address": "1.0", "type": msg[0]}
        return peer.call({**req, "body": msg[1].hex()})

    def our_recv(msg: tuple[str, bytes]) -> signal_store.Inbound:
        return signal_store.decrypt(ours.store, "2.0", msg[0], msg[1], ours.local, ours.rng)

    assert our_recv(node_send(b"hello")).new_session
    reply = signal_store.encrypt(ours.store, "2.0", b"ack", ours.local)
    assert node_recv((reply.type.enc_type, reply.body))["ok"]
    late_from_node = node_send(b"late from node")
    late_from_us = signal_store.encrypt(ours.store, "2.0", b"late from us", ours.local)
    # libsignal starts over from a fresh bundle of ours; we answer on the new session.
    peer.call({"op": "init_outgoing", "name": "rs", "address": "1.0", "bundle": ours.bundle()})
    assert our_recv(node_send(b"fresh")).new_session
    got = our_recv(late_from_node)
    assert got.plaintext == b"late from node"
    assert got.from_closed_session
    # Now we start over towards libsignal; its late message for the replaced session decrypts.
    late_again = node_send(b"late again")
    raw = peer.call({"op": "bundle", "name": "rs", "withPreKey": True})
    signal_store.build_session(ours.store, "2.0", node_bundle(raw), ours.local, ours.rng)
    fresh = signal_store.encrypt(ours.store, "2.0", b"our fresh start", ours.local)
    assert node_recv((fresh.type.enc_type, fresh.body))["ok"]
    got = our_recv(late_again)
    assert got.plaintext == b"late again"
    assert got.from_closed_session
    # Last (libsignal-node mutates its open session while trying it on a message for an old
    # one, session_cipher.js decryptWithSessions, so this must not precede further traffic):
    # our late message for the first session decrypts there too.
    assert node_recv((late_from_us.type.enc_type, late_from_us.body)) == {
        "ok": True,
        "pt": b"late from us".hex(),
    }


# -- sender keys ---------------------------------------------------------------------------


def group_conversation(peer: NodePeer, *, we_send: bool, seed: int) -> None:
    rnd = random.Random(seed)
    name = f"1203630000000{seed}@g.us::15551234567::3"
    store = MemoryKeyStore()
    rng = CountingRng(b"group-%d" % seed)
    owner = f"baileys{seed}"
    if we_send:
        skdm = signal_store.group_distribution(store, name, rng)
        peer.call({"op": "group_process", "owner": owner, "name": name, "skdm": skdm.hex()})
    else:
        skdm = bytes.fromhex(peer.call({"op": "group_create", "owner": owner, "name": name}))
        signal_store.process_group_distribution(store, name, skdm)
    channel = Channel(rnd)
    for _ in range(MESSAGES):
        pt = rnd.randbytes(rnd.randrange(1, 300))
        if we_send:
            body = signal_store.group_encrypt(store, name, pt)
        else:
            body = bytes.fromhex(
                peer.call({"op": "group_encrypt", "owner": owner, "name": name, "pt": pt.hex()})
            )
        channel.pending.append(("skmsg", body, pt))
        for _ in range(rnd.randrange(0, 2)):
            deliver_group(peer, store, owner, name, channel, we_send, False)
    while channel.pending:
        deliver_group(peer, store, owner, name, channel, we_send, True)
    assert channel.delivered + channel.dropped == MESSAGES
    assert channel.dropped > 0


def deliver_group(
    peer: NodePeer,
    store: MemoryKeyStore,
    owner: str,
    name: str,
    channel: Channel,
    we_send: bool,
    flush: bool,
) -> None:
    item = channel.take(flush)
    if item is None:
        return
    _, body, pt = item
    if we_send:
        got = peer.call({"op": "group_decrypt", "owner": owner, "name": name, "body": body.hex()})
        assert got == {"ok": True, "pt": pt.hex()}, got
    else:
        assert signal_store.group_decrypt(store, name, body) == pt


def test_group_we_send_baileys_receives(peer: NodePeer) -> None:
    group_conversation(peer, we_send=True, seed=11)


def test_group_baileys_sends_we_receive(peer: NodePeer) -> None:
    group_conversation(peer, we_send=False, seed=12)


def test_baileys_skdm_parses_to_its_state(peer: NodePeer) -> None:
    skdm = bytes.fromhex(peer.call({"op": "group_create", "owner": "x", "name": "g@g.us::1::0"}))
    record = sender_keys.process_distribution(None, skdm)
    state = record.current
    assert state is not None
    assert state.iteration == 0
    assert 0 <= state.key_id < 2**31
