"""Fleet e2e under a crash (issue: the fleet, scenario a): two session workers, 50 instances
linked by QR, 2,000 outbound messages (the RabbitMQ repeat: 20 instances, 800 messages); one
worker is killed with SIGKILL mid-run. Every message reaches its recipient's phone exactly once
(by WhatsApp message id), each chat keeps accept order, the dead worker's instances are re-homed,
and the simulator never sees two logins of one device at once. Real processes, real Postgres,
Redis (or RabbitMQ as the broker) and simulator."""

from __future__ import annotations

import signal
import subprocess
from collections import defaultdict
from functools import partial
from typing import Any

import httpx
import pytest
import redis
from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from protocol.simulator import Simulator
from storage.bus import EventBus
from storage.models import (
    Instance,
    InstanceLease,
    InstanceStatus,
    OutboxMessage,
    OutboxStatus,
)
from tasks.queues import SEND_BULK_TASK
from tests.fleet.conftest import (
    SimulatorThread,
    connecting_fleet,
    poll_until,
    start_session_worker,
)

Factory = sessionmaker[Session]
N_INSTANCES = 50
N_INSTANCES_AMQP = 20
N_CLIENTS = 10
PER_INSTANCE = 40  # 2,000 messages in all
WAIT = 240.0
DONE = (OutboxStatus.SENT, OutboxStatus.DELIVERED, OutboxStatus.READ)


poll = partial(poll_until, wait=WAIT)


@pytest.mark.timeout(900)  # 50 linkings and 2,000 sends: ~1 min alone, slower under load
def test_crash_mid_run_loses_and_duplicates_nothing(
    e2e_routing: subprocess.Popen[bytes],
    e2e_producer: Celery,
    e2e_settings: Settings,
    pg: Factory,
    redis_client: redis.Redis,
) -> None:
    with SimulatorThread() as sim:
        # The RabbitMQ repeat runs fewer instances (the same 40 messages each) to save time.
        n = N_INSTANCES if e2e_settings.broker_url.startswith("redis") else N_INSTANCES_AMQP
        _scenario(sim, e2e_producer, e2e_settings, pg, redis_client, n)


def _scenario(
    sim: Simulator,
    producer: Celery,
    fleet_settings: Settings,
    pg: Factory,
    redis_client: redis.Redis,
    n_instances: int,
) -> None:
    http = httpx.Client(base_url=sim.http_url, timeout=60)
    owners = [f"55119{n:08d}" for n in range(n_instances)]
    total = n_instances * PER_INSTANCE
    clients = [f"55118{n:08d}" for n in range(N_CLIENTS)]
    for phone in owners + clients:
        assert http.post("/control/accounts", json={"phone": phone}).status_code == 201
    tenant_id, ids = connecting_fleet(pg, "crash", n_instances)
    owner_of = {str(i): owners[n] for n, i in enumerate(ids)}

    settings = fleet_settings.model_copy(
        update={
            "wa_server_url": sim.ws_url,
            "wa_root_key": sim.root_public_key.hex(),
            "lease_ttl": 20.0,
            "lease_renew": 2.0,
            "member_ttl": 6.0,
            "heartbeat_interval": 1.0,
            "rebalance_interval": 0.3,
            "session_stagger": 0.02,
            "wa_prekey_count": 30,
        }
    )
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = []
    for node in ("a", "b"):
        procs[node], log = start_session_worker(settings, node, f"crash-{node}.log")
        logs.append(log)
    bus = EventBus(redis_client, fleet_settings.redis_prefix)
    try:
        # Link every instance: each QR event is scanned by that instance's owner phone.
        linked: set[str] = set()

        def link_all() -> bool:
            for event in bus.read(tenant_id, count=10_000).events:
                iid = event.instance_id or ""
                if event.type == "whatsapp:qr" and iid not in linked:
                    r = http.post(
                        f"/control/accounts/{owner_of[iid]}/link", json={"qr": event.data["qr"]}
                    )
                    if r.status_code == 200:
                        linked.add(iid)
            with pg() as s:
                states = s.scalars(
                    select(Instance.status).where(Instance.tenant_id == tenant_id)
                ).all()
            return all(st is InstanceStatus.CONNECTED for st in states)

        poll("all instances connected", link_all, lambda: len(linked))

        # 2,000 messages: each instance writes 10 messages to each of 4 clients.
        plan: dict[tuple[str, str], list[str]] = defaultdict(list)  # (owner, client) → texts
        results = []
        for n, iid in enumerate(ids):
            items = []
            for k in range(PER_INSTANCE):
                client = clients[(n + k % 4) % N_CLIENTS]
                text = f"m{n:02d}-{k:02d}"
                plan[(owners[n], client)].append(text)
                items.append({"to": client, "text": text, "idempotency_key": text})
            results.append(
                producer.send_task(
                    SEND_BULK_TASK,
                    kwargs={"tenant_id": str(tenant_id), "instance_id": str(iid), "items": items},
                )
            )
        for r in results:
            assert all("wa_message_id" in x for x in r.get(timeout=120)["results"])

        def inboxes() -> dict[str, list[dict[str, Any]]]:
            return {c: list(http.get(f"/control/accounts/{c}/messages").json()) for c in clients}

        def delivered() -> int:
            return sum(len(v) for v in inboxes().values())

        poll("a quarter delivered", lambda: delivered() >= total // 4, delivered)
        with pg() as s:
            on_a = {
                str(r.instance_id)
                for r in s.scalars(select(InstanceLease).where(InstanceLease.owner == "a"))
            }
        crashed = procs.pop("a")
        crashed.send_signal(signal.SIGKILL)  # crash: no handover, leases expire
        crashed.wait(timeout=30)
        poll("all delivered", lambda: delivered() >= total, delivered)

        def all_done() -> bool:
            with pg() as s:
                return all(st in DONE for st in s.scalars(select(OutboxMessage.status)))

        poll("every outbox row sent", all_done)
        boxes = inboxes()
        by_id = {m["id"]: m for box in boxes.values() for m in box}
        with pg() as s:
            rows = s.scalars(select(OutboxMessage)).all()
            wa_ids = {r.wa_message_id for r in rows}
            seq = {r.wa_message_id: r.chat_seq for r in rows}
            instance_of = {r.wa_message_id: str(r.instance_id) for r in rows}
        assert len(rows) == total
        assert set(by_id) == wa_ids
        assert sum(len(b) for b in boxes.values()) == total  # nothing shown twice
        for client, box in boxes.items():  # per-chat order kept, retries and crash included
            per_sender: dict[str, list[int]] = defaultdict(list)
            for m in box:
                per_sender[m["from"].split("@")[0].split(":")[0]].append(seq[m["id"]])
            for sender, order in per_sender.items():
                assert order == sorted(order), (client, sender)
        stats = http.get("/control/stats").json()
        assert stats["max_concurrent_logins_per_device"] <= 1
        # Each message goes to the client's phone and, as a from-me copy, to the owner's phone:
        # 2 relays. More means a resend with the same id, which only a message in flight on the
        # crashed worker may need — at most one per instance it owned (actors send one at a
        # time), and never from an instance the survivor owned all along.
        resent = [i for i, n in stats["delivery_counts"].items() if i in wa_ids and n > 2]
        assert len(resent) <= len(on_a)
        assert {instance_of[i] for i in resent} <= on_a
        with pg() as s:  # the survivor owns everything now
            leases = s.scalars(select(InstanceLease)).all()
            assert {lease.owner for lease in leases} == {"b"}
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
        http.close()
