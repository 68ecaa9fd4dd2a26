"""Session workers as real processes on real Postgres and Redis (DESIGN §3.1, §3.2): every
instance owned exactly once, by its rendezvous owner; wake-ups reach the owner through its
runtime-added `wa.out.<id>` consumer; scaling 2→3→2 moves about a third and hands over
gracefully; a kill -9 is taken over after the lease expires; and at no moment do two workers
hold a session of the same instance open."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from storage.crypto import Keyring
from storage.repositories import instances, outbox, tenants
from tasks.queues import DELIVER_TASK, out_queue
from tests.fleet.conftest import MASTER_KEY, ROOT, log_file, worker_env
from workers.assignment import assignment

Factory = sessionmaker[Session]
WAIT = 90.0
N_INSTANCES = 12


@pytest.fixture
def quick(fleet_settings: Settings) -> Settings:
    """Short lease and membership timings so takeovers happen within seconds."""
    return fleet_settings.model_copy(
        update={
            "lease_ttl": 3.0,
            "lease_renew": 0.5,
            "member_ttl": 2.0,
            "heartbeat_interval": 0.3,
            "rebalance_interval": 0.2,
            "session_stagger": 0.01,
        }
    )


class Fleet:
    def __init__(self, settings: Settings, pg: Factory, client: redis.Redis) -> None:
        self.settings = settings
        self.pg = pg
        self.redis = client
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[Any] = []

    def start(self, node: str) -> None:
        env = worker_env(self.settings)
        env["WAFLEET_PROBE_NODE"] = node
        log = open(log_file(f"session-{node}.log"), "wb")  # noqa: SIM115
        self._logs.append(log)
        self.procs[node] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "workers.cli",
                "worker",
                "session",
                "--session-factory",
                "tests.fleet.probe:make_factory",
                "--node-id",
                node,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def stop(self, node: str, sig: signal.Signals = signal.SIGTERM) -> None:
        proc = self.procs.pop(node)
        proc.send_signal(sig)
        proc.wait(timeout=WAIT)
        if sig is signal.SIGKILL:
            # The OS closes a killed process's sockets: forget its open probe sessions.
            for key in self.redis.scan_iter(match=f"{self.settings.redis_prefix}:probe:open:*"):
                self.redis.srem(key, node)

    def owners(self) -> dict[str, str | None]:
        with self.pg() as s:
            rows = s.execute(
                text(
                    "SELECT i.id, CASE WHEN l.expires_at > clock_timestamp() THEN l.owner END "
                    "FROM instances i LEFT JOIN instance_leases l ON l.instance_id = i.id "
                    "WHERE i.deleted_at IS NULL"
                )
            ).all()
        return {str(i): owner for i, owner in rows}

    def open_sessions(self, instance: str) -> set[str]:
        members: Any = self.redis.smembers(f"{self.settings.redis_prefix}:probe:open:{instance}")
        return {m.decode() for m in members}

    def violations(self) -> list[str]:
        rows: Any = self.redis.lrange(f"{self.settings.redis_prefix}:probe:violations", 0, -1)
        return [r.decode() for r in rows]

    def close(self) -> None:
        for node in list(self.procs):
            self.stop(node, signal.SIGKILL)
        for log in self._logs:
            log.close()


def wait_until(
    what: str, predicate: Callable[[], bool], state: Callable[[], object] = lambda: None
) -> None:
    tick = threading.Event()
    for _ in range(int(WAIT * 10)):
        if predicate():
            return
        tick.wait(0.1)  # polling the shared state the workers write
    raise AssertionError(f"timed out waiting for: {what}; state: {state()}")


@pytest.fixture
def fleet(quick: Settings, pg: Factory, redis_client: redis.Redis) -> Iterator[Fleet]:
    fleet = Fleet(quick, pg, redis_client)
    yield fleet
    fleet.close()


def describe(fleet: Fleet) -> dict[str, object]:
    owners = fleet.owners()
    return {
        "owners": owners,
        "open": {i: fleet.open_sessions(i) for i in owners},
        "violations": fleet.violations(),
        "alive": sorted(fleet.procs),
    }


def settled(fleet: Fleet, members: list[str]) -> Callable[[], bool]:
    def check() -> bool:
        owners = fleet.owners()
        expected = assignment(owners, members)
        return owners == expected and all(
            fleet.open_sessions(i) == {owner} for i, owner in owners.items() if owner
        )

    return check


def test_ownership_scaling_handover_and_crash_takeover(
    fleet: Fleet, pg: Factory, producer: Celery
) -> None:
    keyring = Keyring.from_bytes(bytes.fromhex(MASTER_KEY))
    with pg.begin() as s:
        tenant = tenants.create_tenant(s, f"fleet-{uuid.uuid4().hex[:6]}")
        ids = [
            instances.create_instance(s, keyring, tenant.id, f"i{n}").id for n in range(N_INSTANCES)
        ]
        rows = {
            i: outbox.accept_outbound(
                s,
                tenant_id=tenant.id,
                instance_id=i,
                idempotency_key=f"k-{i}",
                wa_message_id=f"3EB0{i.hex[:18].upper()}",
                chat_jid="c",
                kind="text",
                payload={"text": "x"},
            )[0].id
            for i in ids
        }

    fleet.start("w1")
    fleet.start("w2")
    wait_until(
        "2 workers own everything by rendezvous",
        settled(fleet, ["w1", "w2"]),
        lambda: describe(fleet),
    )
    two = fleet.owners()
    assert set(two.values()) == {"w1", "w2"}

    # Wake-ups published to wa.out.<id> reach that instance's owner, and only it.
    for instance_id, outbox_id in rows.items():
        producer.send_task(DELIVER_TASK, args=[outbox_id], queue=out_queue(instance_id))

    def woken() -> dict[str, list[str]]:
        out = {}
        for instance_id in rows:
            raw: Any = fleet.redis.lrange(
                f"{fleet.settings.redis_prefix}:probe:woken:{instance_id}", 0, -1
            )
            out[str(instance_id)] = [r.decode() for r in raw]
        return out

    wait_until("every wake-up delivered", lambda: all(woken().values()))
    for key, entries in woken().items():
        assert entries == [f"{two[key]}:{rows[uuid.UUID(key)]}"]

    fleet.start("w3")
    wait_until(
        "3 workers own everything by rendezvous",
        settled(fleet, ["w1", "w2", "w3"]),
        lambda: describe(fleet),
    )
    three = fleet.owners()
    moved = [i for i in ids if two[str(i)] != three[str(i)]]
    assert moved
    assert all(three[str(i)] == "w3" for i in moved)

    fleet.stop("w3")  # SIGTERM: graceful handover
    wait_until("back to 2 workers", settled(fleet, ["w1", "w2"]), lambda: describe(fleet))
    assert fleet.owners() == two

    fleet.stop("w1", signal.SIGKILL)  # crash: no handover, its leases must expire
    wait_until("w2 took over after lease expiry", settled(fleet, ["w2"]), lambda: describe(fleet))
    assert fleet.violations() == []  # never two open sessions of one instance
