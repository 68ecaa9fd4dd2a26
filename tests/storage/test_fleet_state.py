"""Leases with fencing tokens, membership, rendezvous assignment and the event bus, on real
Postgres and Redis. Time is injected: tests move the database clock instead of sleeping."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from storage.bus import EventBus
from storage.crypto import Keyring
from storage.leases import Leases, Membership, assigned, held_by
from storage.models import OutboxMessage, OutboxStatus
from storage.repositories import instances, outbox, tenants
from workers.assignment import assignment, owner_of

Factory = sessionmaker[Session]


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self, _session: Session) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def instance_id(db: Factory, keyring: Keyring) -> uuid.UUID:
    with db.begin() as s:
        t = tenants.create_tenant(s, "t")
        return instances.create_instance(s, keyring, t.id, "i").id


def test_fencing_token_grows_on_every_acquisition(db: Factory, instance_id: uuid.UUID) -> None:
    clock = FakeClock()
    leases = Leases(db, ttl=30, clock=clock)
    a = leases.acquire(instance_id, "worker-a")
    assert a is not None
    assert a.token == 1
    assert leases.acquire(instance_id, "worker-b") is None  # held
    assert leases.acquire(instance_id, "worker-a") is None  # no silent re-acquisition
    clock.advance(31)  # a could not renew: its lease lapses
    assert leases.holder(instance_id) is None
    b = leases.acquire(instance_id, "worker-b")
    assert b is not None
    assert b.token == 2
    assert leases.renew("worker-a", [a]) == {}  # the old owner learns it lost the lease
    assert leases.release(a) is False
    assert leases.release(b) is True
    c = leases.acquire(instance_id, "worker-a")
    assert c is not None
    assert c.token == 3


def test_renewal_extends_only_current_tenures(db: Factory, instance_id: uuid.UUID) -> None:
    clock = FakeClock()
    leases = Leases(db, ttl=30, clock=clock)
    a = leases.acquire(instance_id, "w")
    assert a is not None
    for _ in range(5):
        clock.advance(20)
        renewed = leases.renew("w", [a])
        assert list(renewed) == [instance_id]
        a = renewed[instance_id]
    assert leases.holder(instance_id) == a
    assert leases.owned_by("w") == [a]
    stale = type(a)(a.instance_id, a.owner, a.token - 1, a.expires_at)
    assert leases.renew("w", [stale]) == {}  # a token from an older tenure is refused


def test_fenced_update_refuses_a_stale_owner(
    db: Factory, keyring: Keyring, instance_id: uuid.UUID
) -> None:
    clock = FakeClock()
    leases = Leases(db, ttl=30, clock=clock)
    with db.begin() as s:
        tid = instances.get_instance(s, instance_id).tenant_id
        row, _ = outbox.accept_outbound(
            s,
            tenant_id=tid,
            instance_id=instance_id,
            idempotency_key="k",
            wa_message_id="3EB0X",
            chat_jid="c",
            kind="text",
            payload={"text": "x"},
        )
    old = leases.acquire(instance_id, "old")
    assert old is not None
    clock.advance(31)
    new = leases.acquire(instance_id, "new")
    assert new is not None

    def mark_sending(owner: str, token: int) -> int:
        with db.begin() as s:
            result = s.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row.id, held_by(instance_id, owner, token, clock.now))
                .values(status=OutboxStatus.SENDING)
                .returning(OutboxMessage.id)
            ).all()
        return len(result)

    assert mark_sending("old", old.token) == 0
    assert mark_sending("new", new.token) == 1
    with db.begin() as s:
        assert s.scalar(select(OutboxMessage.status)) == OutboxStatus.SENDING


def test_membership_heartbeats_and_draining(db: Factory) -> None:
    clock = FakeClock()
    members = Membership(db, member_ttl=10, clock=clock)
    members.heartbeat("w1")
    members.heartbeat("w2")
    clock.advance(6)
    members.heartbeat("w2", draining=True)
    assert [m.worker_id for m in members.live()] == ["w1", "w2"]
    assert assigned(members.live()) == ["w1"]
    clock.advance(6)  # w1 missed its heartbeats
    assert [m.worker_id for m in members.live()] == ["w2"]
    assert members.prune(older_than=10) == 1
    members.leave("w2")
    assert members.live() == []


def test_rendezvous_moves_about_one_nth_on_scale() -> None:
    keys = [str(uuid.UUID(int=n)) for n in range(3000)]
    two = assignment(keys, ["w1", "w2"])
    three = assignment(keys, ["w1", "w2", "w3"])
    moved = [k for k in keys if two[k] != three[k]]
    assert all(three[k] == "w3" for k in moved)  # only moves onto the new member
    assert 0.25 < len(moved) / len(keys) < 0.42  # about a third
    back = assignment(keys, ["w1", "w2"])
    assert back == two  # deterministic: removing w3 restores the old homes
    counts = Counter(three.values())
    assert min(counts.values()) > 850
    assert owner_of("x", []) is None
    heavy = Counter(assignment(keys, ["w1", "w2"], {"w1": 3, "w2": 1}).values())
    assert heavy["w1"] > 2 * heavy["w2"]


def test_event_bus_publish_read_resume(redis_client: redis.Redis, redis_prefix: str) -> None:
    bus = EventBus(redis_client, redis_prefix, maxlen=5)
    tenant, other = uuid.uuid4(), uuid.uuid4()
    ids = [bus.publish(tenant, "whatsapp:message", "inst-1", {"n": n}) for n in range(3)]
    bus.publish(other, "whatsapp:qr", "inst-2", {"qr": "x"})
    batch = bus.read(tenant)
    assert [e.data["n"] for e in batch.events] == [0, 1, 2]
    assert [e.id for e in batch.events] == ids
    assert not batch.gap
    assert all(e.type == "whatsapp:message" and e.instance_id == "inst-1" for e in batch.events)
    resumed = bus.read(tenant, after=ids[0])
    assert [e.data["n"] for e in resumed.events] == [1, 2]
    assert bus.read(tenant, after=ids[-1]).events == []
    for n in range(3, 300):  # overflow the retention window
        bus.publish(tenant, "whatsapp:message", "inst-1", {"n": n})
    assert bus.read(tenant, after=ids[0]).gap  # the client is told it missed events
    assert [e.data["qr"] for e in bus.read(other).events] == ["x"]  # tenants never mix
