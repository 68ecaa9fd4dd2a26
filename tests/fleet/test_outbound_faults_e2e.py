"""Outbound under faults end to end (issue: the fleet, scenarios d and e), on each broker, over real
sockets: a partitioned instance parks what it is given and sends it in order after the network
heals, burning no attempt while parked; a recipient that is not on WhatsApp must fail fast with
its code `not_on_whatsapp` (usync lists no device for it; the 463 pause is
tests/fleet/test_whatsapp_e2e.py)."""

from __future__ import annotations

import subprocess

import pytest
import redis
from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from protocol.simulator import Simulator
from storage.models import InstanceStatus, OutboxMessage, OutboxStatus
from tests.fleet.conftest import NetworkCut
from tests.fleet.test_whatsapp_e2e import CLIENT, linked, poll

Factory = sessionmaker[Session]
DONE = (OutboxStatus.SENT, OutboxStatus.DELIVERED, OutboxStatus.READ)
PENDING = (OutboxStatus.QUEUED, OutboxStatus.SENDING)
N_PARKED = 6


def rows(pg: Factory) -> dict[str, OutboxMessage]:
    with pg() as s:
        return {r.wa_message_id: r for r in s.scalars(select(OutboxMessage))}


@pytest.mark.timeout(300)
def test_partitioned_instance_parks_then_sends_in_order(
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
        first = rig.send(CLIENT, "antes do corte")["wa_message_id"]
        poll("the first one delivered", lambda: len(rig.inbox(CLIENT)) == 1)
        net.cut()
        poll(
            "the instance saw the socket go",
            lambda: rig.instance().status is InstanceStatus.RECONNECTING,
        )
        parked = [rig.send(CLIENT, f"parada {k}")["wa_message_id"] for k in range(N_PARKED)]
        # Accept woke the owner for each row; while disconnected, nothing is attempted.
        held = rows(pg)
        assert [(held[i].status, held[i].attempts) for i in parked] == [
            (OutboxStatus.QUEUED, 0)
        ] * N_PARKED
        assert rig.instance().status is InstanceStatus.RECONNECTING
        net.heal()
        got = poll(
            "all delivered after the heal",
            lambda: box if len(box := rig.inbox(CLIENT)) == N_PARKED + 1 else None,
        )
        assert [m["id"] for m in got] == [first, *parked]  # accept order
        poll("rows marked sent", lambda: all(r.status in DONE for r in rows(pg).values()))
        final = rows(pg)
        # Parked, not attempted: each went out on its one and only attempt.
        assert [final[i].attempts for i in [first, *parked]] == [1] * (N_PARKED + 1)
        assert all(final[i].last_error_code is None for i in parked)
        assert rig.instance().status is InstanceStatus.CONNECTED


@pytest.mark.timeout(300)
def test_recipient_not_on_whatsapp_fails_fast_with_its_code(
    e2e_routing: subprocess.Popen[bytes],
    e2e_producer: Celery,
    e2e_settings: Settings,
    pg: Factory,
    redis_client: redis.Redis,
    simulator: Simulator,
) -> None:
    nobody = "5511955550000"  # a valid number with no WhatsApp account at the simulator
    with linked(simulator, e2e_settings, pg, redis_client, e2e_producer) as rig:
        sent = rig.send(nobody, "alguém aí?")["wa_message_id"]
        row = poll(
            "a final outcome",
            lambda: r if (r := rows(pg)[sent]).status not in PENDING else None,
        )
        assert (row.status, row.last_error_code, row.attempts) == (
            OutboxStatus.FAILED,
            "not_on_whatsapp",
            1,
        )
        # The instance is not paused: the next message to a real account goes out.
        ok = rig.send(CLIENT, "e você?")["wa_message_id"]
        poll("the next one delivered", lambda: [m["id"] for m in rig.inbox(CLIENT)] == [ok])
