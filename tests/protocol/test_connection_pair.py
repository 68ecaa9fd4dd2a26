"""Sans-I/O pairs: the client `Connection` ⇄ the simulator's `ServerConnection` + `World`,
pumped in memory with fixed rng and clock (no sockets, no asyncio). Both token dictionaries;
the same seeds replay the same bytes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from protocol.client import (
    Connected,
    Connection,
    Disconnected,
    DisconnectReason,
    Event,
    Message,
    MessageStatus,
    Paired,
    Qr,
    Status,
)
from protocol.core import curve
from protocol.core.binary import Node
from protocol.core.inject import CountingRng
from protocol.core.message import Text
from protocol.core.noise import ClientFinished, make_cert_chain
from protocol.simulator.session import ServerConnection
from protocol.simulator.world import ControlError, World
from protocol.store import MemoryKeyStore

OWNER = "15550001111"
BOB = "15550002222"
T0 = 1_800_000_000.0


class Wire:
    """The server end of one in-memory socket (the World's `Peer`)."""

    def __init__(self, conn: ServerConnection) -> None:
        self.conn = conn
        self.out: list[bytes] = []
        self.closed = False

    def send_node(self, node: Node) -> None:
        if not self.closed:
            self.out.append(self.conn.send(node))

    def close(self) -> None:
        self.closed = True


class Server:
    def __init__(self, seed: bytes, now: Callable[[], float] = lambda: T0) -> None:
        self.rng = CountingRng(seed)
        self.world = World(rng=self.rng, now=now)
        self.root = curve.generate_keypair(self.rng)
        self.static = curve.generate_keypair(self.rng)
        self.chain = make_cert_chain(
            root_private=self.root.private,
            intermediate=curve.generate_keypair(self.rng),
            server_static=self.static.public,
            not_before=int(T0) - 60,
            not_after=int(T0) + 3600,
        )

    def wire(self) -> Wire:
        return Wire(ServerConnection(static=self.static, cert_chain=self.chain, rng=self.rng))


def pump(client: Connection, server: Server, wire: Wire, sent: list[bytes]) -> list[Event]:
    """Move bytes both ways until nothing moves; return the client's events."""
    events: list[Event] = []
    while True:
        moved = False
        for data in client.data_to_send():
            moved = True
            sent.append(data)
            items, replies = wire.conn.receive_data(data)
            wire.out += replies
            for item in items:
                if isinstance(item, ClientFinished):
                    server.world.on_hello(wire, item)
                else:
                    server.world.on_node(wire, item)
        if wire.out:
            moved = True
            data, wire.out = b"".join(wire.out), []
            client.receive_data(data)
        if wire.closed and not client.closed:
            server.world.disconnect(wire)
            client.receive_eof()
        events += client.events()
        if not moved:
            return events


def scenario(dict_version: int, seed: bytes) -> tuple[list[Event], list[bytes], Server]:
    server = Server(seed)
    server.world.create_account(OWNER, "Owner")
    server.world.create_account(BOB, "Bob")
    store = MemoryKeyStore()
    sent: list[bytes] = []

    def connect() -> tuple[Connection, Wire]:
        return (
            Connection(
                store,
                rng=CountingRng(seed + b"-client"),
                now=lambda: T0,
                trusted_root=server.root.public,
                dict_version=dict_version,
                prekey_upload_count=10,
            ),
            server.wire(),
        )

    client, wire = connect()
    events = pump(client, server, wire, sent)
    qr = next(e for e in events if isinstance(e, Qr))
    server.world.link_qr(OWNER, qr.code)
    events += pump(client, server, wire, sent)
    assert client.closed
    client, wire = connect()
    events += pump(client, server, wire, sent)
    msg_id = client.send_text(BOB, "hello")
    events += pump(client, server, wire, sent)
    statuses = [e.status for e in events if isinstance(e, MessageStatus) and e.id == msg_id]
    assert statuses[0] is Status.SERVER_ACK  # the server's ack comes first
    assert Status.DELIVERED in statuses
    server.world.phone_send(BOB, OWNER, "back")
    events += pump(client, server, wire, sent)
    server.world.phone_send(OWNER, BOB, "mine")
    events += pump(client, server, wire, sent)
    return events, sent, server


@pytest.mark.parametrize("dict_version", [2, 3])
def test_pairing_login_and_text_in_memory(dict_version: int) -> None:
    events, _, server = scenario(dict_version, b"pair")
    kinds = [type(e) for e in events]
    assert (
        kinds.index(Qr) < kinds.index(Paired) < kinds.index(Disconnected) < kinds.index(Connected)
    )
    restart = next(e for e in events if isinstance(e, Disconnected))
    assert restart.reason is DisconnectReason.RESTART_REQUIRED
    texts = [(m.content, m.from_me) for m in events if isinstance(m, Message)]
    assert texts == [(Text("back"), False), (Text("mine"), True)]
    assert [r.text for r in server.world.phones[BOB].received] == ["hello", "mine"]


def test_same_seeds_replay_the_same_bytes() -> None:
    _, first, _ = scenario(3, b"replay")
    _, second, _ = scenario(3, b"replay")
    assert first == second
    _, other, _ = scenario(3, b"other")
    assert other != first


def test_garbage_after_login_is_survived() -> None:
    server = Server(b"garbage")
    server.world.create_account(OWNER)
    server.world.create_account(BOB)
    store = MemoryKeyStore()
    sent: list[bytes] = []
    client = Connection(
        store, rng=CountingRng(b"g"), now=lambda: T0, trusted_root=server.root.public
    )
    wire = server.wire()
    qr = next(e for e in pump(client, server, wire, sent) if isinstance(e, Qr))
    server.world.link_qr(OWNER, qr.code)
    pump(client, server, wire, sent)
    client = Connection(
        store, rng=CountingRng(b"g2"), now=lambda: T0, trusted_root=server.root.public
    )
    wire = server.wire()
    pump(client, server, wire, sent)
    for body in (b"\x00\xff\xff", b"\x02not zlib", b"", b"\x00\xf8\x02\x13\x00"):
        wire.out.append(wire.conn.send_raw_body(body))
    wire.send_node(Node("message", {"id": "x"}, b"junk"))
    wire.send_node(Node("receipt", {"id": "y"}))
    wire.send_node(Node("iq", {"type": "result", "id": "nobody"}))
    pump(client, server, wire, sent)
    assert client.bad_stanzas >= 3
    assert not client.closed
    msg_id = client.send_text(BOB, "still here")
    events = pump(client, server, wire, sent)
    assert MessageStatus(msg_id, Status.SERVER_ACK) in events


def test_qr_refs_rotate_then_time_out_and_expired_refs_are_refused() -> None:
    clock = [T0]
    server = Server(b"qr-timeout", lambda: clock[0])
    server.world.create_account(OWNER)
    client = Connection(
        MemoryKeyStore(),
        rng=CountingRng(b"q"),
        now=lambda: clock[0],
        trusted_root=server.root.public,
    )
    wire = server.wire()
    sent: list[bytes] = []
    events = pump(client, server, wire, sent)
    shown = [e for e in events if isinstance(e, Qr)]
    for _ in range(10):
        clock[0] += 20.0  # SPEC §8.2: 60 s for the first ref, 20 s for each next one
        client.tick()
        events = client.events()
        shown += [e for e in events if isinstance(e, Qr)]
        if client.closed:
            break
    assert [q.index for q in shown] == [0, 1, 2, 3, 4, 5]
    assert Disconnected(DisconnectReason.QR_TIMEOUT, False, 408) in events
    with pytest.raises(ControlError) as expired:
        server.world.link_qr(OWNER, shown[0].code)
    assert expired.value.status == 410


def test_low_prekeys_are_refilled_after_the_server_notifies() -> None:
    server = Server(b"prekeys")
    for phone in (OWNER, BOB, "15550003333"):
        server.world.create_account(phone)
    store = MemoryKeyStore()
    sent: list[bytes] = []
    client = Connection(
        store, rng=CountingRng(b"p"), now=lambda: T0, trusted_root=server.root.public
    )
    wire = server.wire()
    qr = next(e for e in pump(client, server, wire, sent) if isinstance(e, Qr))
    server.world.link_qr(OWNER, qr.code)
    pump(client, server, wire, sent)
    client = Connection(
        store,
        rng=CountingRng(b"p2"),
        now=lambda: T0,
        trusted_root=server.root.public,
        prekey_upload_count=6,
    )
    wire = server.wire()
    pump(client, server, wire, sent)
    record = server.world.devices[next(j for j in server.world.devices if j.device == 1)]
    assert len(record.prekeys) == 6
    server.world.phone_send(BOB, OWNER, "one")  # each new sender consumes one prekey
    server.world.phone_send("15550003333", OWNER, "two")
    events = pump(client, server, wire, sent)
    assert len([e for e in events if isinstance(e, Message)]) == 2
    assert len(record.prekeys) > 6  # SPEC §12.3: notified below 5, the client uploaded more
