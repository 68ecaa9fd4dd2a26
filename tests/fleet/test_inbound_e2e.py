"""Inbound end to end (issue: the fleet, scenario c), on each broker: simulated phones write to a
linked instance over real sockets while its socket stalls, drops and is partitioned away, so the
simulator redelivers; Postgres ends with exactly the right notes, contacts, messages and
bookings. And a session worker that dies between receiving a message and enqueuing it never
confirmed it: the simulator redelivers it to the next owner, which stores it once (the
plaintext waited in the key store's inbox, since Signal cannot decrypt it twice)."""

from __future__ import annotations

import subprocess
from collections import Counter
from typing import Any

import httpx
import pytest
import redis
from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from protocol.simulator import Simulator
from storage.models import Booking, BookingStatus, Contact, Message, Note
from tests.fleet.conftest import NetworkCut, start_session_worker, stop_process
from tests.fleet.crashing import CRASH_EXIT, CRASH_MARKER
from tests.fleet.test_whatsapp_e2e import CLIENT, OWNER, linked, poll

Factory = sessionmaker[Session]
N_CLIENTS = 10
PER_CLIENT = 50  # 500 client messages
N_NOTES = 50  # the owner's own phone writes 50 times


def counts(pg: Factory) -> tuple[int, ...]:
    with pg() as s:
        return tuple(
            int(s.scalar(select(func.count()).select_from(m)) or 0)
            for m in (Contact, Message, Booking, Note)
        )


def phone_send(http: httpx.Client, phone: str, to: str, text: str) -> str:
    r = http.post(f"/control/accounts/{phone}/messages", json={"to": to, "text": text})
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def fault(http: httpx.Client, **body: Any) -> None:
    r = http.post("/control/faults", json=body)
    assert r.status_code == 200, r.text


@pytest.mark.timeout(600)
def test_inbound_with_redeliveries_is_stored_exactly_once(
    e2e_routing: subprocess.Popen[bytes],
    e2e_producer: Celery,
    e2e_settings: Settings,
    pg: Factory,
    redis_client: redis.Redis,
    simulator: Simulator,
) -> None:
    with (
        NetworkCut(simulator.ws_url) as net,
        linked(
            simulator,
            e2e_settings,
            pg,
            redis_client,
            e2e_producer,
            overrides={"wa_server_url": net.ws_url},
        ) as rig,
    ):
        http = rig.http
        clients = [CLIENT] + [f"55117{n:08d}" for n in range(N_CLIENTS - 1)]
        for phone in clients[1:]:
            assert http.post("/control/accounts", json={"phone": phone}).status_code == 201
        device = rig.instance().wa_jid
        assert device is not None
        # 550 writes in a fixed interleaving: every 11th is the owner's phone writing a client.
        plan: list[tuple[str, str, str]] = []
        for k in range(PER_CLIENT):
            for n, client in enumerate(clients):
                plan.append((client, OWNER, f"c{n}-{k:02d} quero marcar"))
            plan.append((OWNER, clients[k % N_CLIENTS], f"nota {k:02d}"))
        assert len(plan) == N_CLIENTS * PER_CLIENT + N_NOTES
        sent: dict[str, tuple[str, str]] = {}  # wa id → (sender phone, text)

        def send(part: list[tuple[str, str, str]]) -> list[str]:
            ids = []
            for phone, to, text in part:
                msg_id = phone_send(http, phone, to, text)
                sent[msg_id] = (phone, text)
                ids.append(msg_id)
            return ids

        send(plan[:150])
        # Stalled socket: the simulator hands messages out into the void and hears no
        # receipts; then the socket drops. Everything unconfirmed comes again on the new login.
        fault(http, kind="stall", device=device)
        redelivered = send(plan[150:250])
        fault(http, kind="drop", device=device)
        # A partition: the device is offline, its messages wait in the simulator's queue.
        poll("reconnected after the drop", lambda: len(rig.events("whatsapp:connected")) >= 2)
        net.cut()
        redelivered += send(plan[250:400])
        net.heal()
        send(plan[400:])
        assert len(sent) == len(plan)

        expected = (N_CLIENTS, N_CLIENTS * PER_CLIENT, N_CLIENTS, N_NOTES)
        poll(f"{expected} (contacts, messages, bookings, notes)", lambda: counts(pg) == expected)
        stats = http.get("/control/stats").json()
        # Each of these reached the companion at least twice: a real redelivery.
        by_owner_phone = {i for i in redelivered if sent[i][0] != OWNER}
        assert all(stats["delivery_counts"][i] >= 3 for i in by_owner_phone)
        assert all(stats["delivery_counts"][i] >= 2 for i in redelivered)
        assert stats["offline_delivered"] >= len(redelivered)

        with pg() as s:
            contacts = {c.id: c.phone_number for c in s.scalars(select(Contact))}
            messages = s.scalars(select(Message)).all()
            notes = s.scalars(select(Note)).all()
            bookings = s.scalars(select(Booking)).all()
        assert sorted(str(p) for p in contacts.values()) == sorted(clients)
        assert {m.wa_message_id: (contacts[m.contact_id or 0], m.body) for m in messages} == {
            i: v for i, v in sent.items() if v[0] != OWNER
        }
        assert {n.wa_message_id: (OWNER, n.body) for n in notes} == {
            i: v for i, v in sent.items() if v[0] == OWNER
        }
        # One open pending booking per contact, holding all of that contact's messages.
        assert Counter(b.contact_id for b in bookings) == Counter(set(contacts))
        assert all(
            (b.status, b.source, b.message_count) == (BookingStatus.PENDING, "whatsapp", PER_CLIENT)
            for b in bookings
        )


# Why it holds: protocol.client.connection commits the plaintext to the key store's inbox in the
# same transaction as the ratchet step that decrypted it, and `confirm()` removes it; the new
# owner's client, given a redelivery it can no longer decrypt, hands it out from there.
@pytest.mark.timeout(300)
def test_worker_dying_between_receive_and_enqueue_loses_nothing(
    routing_worker: subprocess.Popen[bytes],
    producer: Celery,
    fleet_settings: Settings,
    pg: Factory,
    redis_client: redis.Redis,
    simulator: Simulator,
) -> None:
    """Broker-independent (the message never reached the broker), so it runs on Redis only."""
    with linked(
        simulator,
        fleet_settings,
        pg,
        redis_client,
        producer,
        factory="tests.fleet.crashing:make_factory",
        overrides={"lease_ttl": 6.0, "lease_renew": 1.0, "member_ttl": 3.0},
    ) as rig:
        before = phone_send(rig.http, CLIENT, OWNER, "antes")
        poll("the first message stored", lambda: counts(pg)[1] == 1)
        doomed = phone_send(rig.http, CLIENT, OWNER, f"{CRASH_MARKER} posso remarcar?")
        assert rig.worker.wait(timeout=60) == CRASH_EXIT  # died before enqueueing
        settings = fleet_settings.model_copy(
            update={
                "wa_server_url": simulator.ws_url,
                "wa_root_key": simulator.root_public_key.hex(),
                "lease_ttl": 6.0,
                "lease_renew": 1.0,
                "member_ttl": 3.0,
                "heartbeat_interval": 0.5,
                "rebalance_interval": 0.2,
            }
        )
        proc, log = start_session_worker(settings, "takeover", "inbound-takeover.log")
        try:
            # The simulator redelivers the unconfirmed message at the new owner's login, before
            # anything sent later: once a later message is stored, the redelivery was handled.
            poll(
                "the redelivery at the takeover's login",
                lambda: rig.http.get("/control/stats").json()["delivery_counts"][doomed] >= 3,
            )
            after = phone_send(rig.http, CLIENT, OWNER, "depois")

            def stored() -> Counter[str]:
                with pg() as s:
                    return Counter(s.scalars(select(Message.wa_message_id)))

            poll("the next message stored", lambda: after in stored())
            assert stored() == Counter({before: 1, doomed: 1, after: 1})
            assert counts(pg) == (1, 3, 1, 0)
        finally:
            stop_process(proc, log)
