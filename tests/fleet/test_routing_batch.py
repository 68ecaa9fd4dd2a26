"""Batch routing (`tasks.inbound.route_batch`, the body of `wafleet.route_inbound_batch`) on
Postgres and on SQLite, called in this process on a real database and Redis: one transaction
per batch with the single-message rules (owner → note; client → contact, message, one pending
booking; phone and LID merged), per-message rejections, and redelivery storing and publishing
nothing twice. The same task through a real routing worker is in test_routing.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from storage.bus import EventBus
from storage.crypto import Keyring
from storage.models import Booking, Contact, Instance, Message, Note
from storage.repositories import instances, tenants
from tasks import runtime
from tasks.inbound import InboundMessage, route_batch

Factory = sessionmaker[Session]
OWNER = "5511988880000"
OWN_LID = "900000000000001"
CARLA = "5511977770001"


@pytest.fixture
def rt(db: Factory, redis_client: redis.Redis, redis_prefix: str) -> Iterator[runtime.Runtime]:
    previous = runtime._current
    configured = runtime.Runtime(db, EventBus(redis_client, redis_prefix), redis_client)
    runtime.configure(configured)
    yield configured
    runtime._current = previous


@pytest.fixture
def instance(db: Factory, keyring: Keyring) -> Instance:
    with db.begin() as s:
        tenant = tenants.create_tenant(s, f"salon-{uuid.uuid4().hex[:6]}")
        inst = instances.create_instance(s, keyring, tenant.id, "desk", OWNER)
        inst.wa_lid = f"{OWN_LID}@lid"
        return inst


def _msg(inst: Instance, wa_id: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        instance_id=str(inst.id),
        wa_message_id=wa_id,
        chat_jid=f"{CARLA}@s.whatsapp.net",
        sender_jid=f"{CARLA}:0@s.whatsapp.net",
        timestamp=1_790_000_000,
        type="text",
        text="Oi, tem horário?",
        sender_phone=CARLA,
        push_name="Carla",
    )
    base.update(kw)
    return InboundMessage(**base).to_dict()


def _count(db: Factory, model: type) -> int:
    with db() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _events(rt: runtime.Runtime, inst: Instance) -> list[tuple[str, Any]]:
    return [
        (e.type, e.data["id"] if e.type == "whatsapp:message" else e.data["contact_id"])
        for e in rt.bus.read(inst.tenant_id, count=1000).events
    ]


def test_a_mixed_batch_is_stored_once_in_order_and_bad_messages_alone_are_rejected(
    rt: runtime.Runtime, db: Factory, instance: Instance
) -> None:
    batch: list[Any] = [
        _msg(instance, "M1"),
        _msg(instance, "N1", from_me=True, text="note to self"),
        _msg(instance, "M2", push_name="Carla B"),
        _msg(instance, "G1", instance_id=str(uuid.uuid4())),  # unknown instance
        _msg(instance, "M3", sender_phone=None, sender_lid="800000000000002", push_name="Bia"),
        {"nonsense": 1},  # malformed
        _msg(instance, "M4", sender_phone="5511966660003", push_name=None),
        _msg(instance, "G2", sender_phone=None, sender_lid=None),  # no sender
        # Bia's number: the LID contact (M3) and the number contact (M4) are one person.
        _msg(
            instance,
            "M5",
            sender_phone="5511966660003",
            sender_lid="800000000000002",
            push_name=None,
        ),
        _msg(instance, "G3", instance_id="not-a-uuid"),
        _msg(instance, "M6", push_name="Carla"),
        _msg(instance, "N2", sender_phone=None, sender_lid=OWN_LID),  # the owner by LID
        _msg(instance, "M6"),  # the same message twice in one batch
    ]
    results = route_batch(batch)
    assert [r.get("kind", r.get("rejected")) for r in results] == [
        "message",
        "note",
        "message",
        "unknown_instance",
        "message",
        "invalid_inbound",
        "message",
        "invalid_inbound",
        "message",
        "unknown_instance",
        "message",
        "note",
        "message",
    ]
    assert results[3]["wa_message_id"] == "G1"
    assert [r["created"] for r in results if "kind" in r] == [True] * 8 + [False]
    assert results[-1]["id"] == results[-3]["id"]
    with db() as s:
        people = {c.phone_number: c for c in s.scalars(select(Contact))}
        assert set(people) == {CARLA, "5511966660003"}
        carla, bia = people[CARLA], people["5511966660003"]
        assert (carla.lid, carla.name) == (None, "Carla")
        assert (bia.lid, bia.name) == ("800000000000002", "Bia")  # survivor: seen first
        rows = s.scalars(select(Message).order_by(Message.id)).all()
        assert [m.wa_message_id for m in rows] == ["M1", "M2", "M3", "M4", "M5", "M6"]
        assert [m.contact_id for m in rows] == [carla.id, carla.id] + [bia.id] * 3 + [carla.id]
        bookings = {b.contact_id: b for b in s.scalars(select(Booking))}
        assert {c: b.message_count for c, b in bookings.items()} == {carla.id: 3, bia.id: 3}
        assert bookings[carla.id].first_message_id == rows[0].id
        assert bookings[bia.id].first_message_id == rows[2].id
        assert [n.wa_message_id for n in s.scalars(select(Note).order_by(Note.id))] == [
            "N1",
            "N2",
        ]
        assert s.get(Instance, instance.id).messages_received == 8  # type: ignore[union-attr]
    assert _events(rt, instance) == [
        ("whatsapp:message", "M1"),
        ("booking:created", carla.id),
        ("whatsapp:message", "N1"),
        ("whatsapp:message", "M2"),
        ("whatsapp:message", "M3"),
        ("booking:created", bia.id),
        ("whatsapp:message", "M4"),
        ("whatsapp:message", "M5"),
        ("whatsapp:message", "M6"),
        ("whatsapp:message", "N2"),
    ]

    again = route_batch(batch)  # the whole batch redelivered
    assert again == [{**r, "created": False} if "kind" in r else r for r in results]
    assert (_count(db, Message), _count(db, Note), _count(db, Contact)) == (6, 2, 2)
    with db() as s:
        assert sorted(b.message_count for b in s.scalars(select(Booking))) == [3, 3]
        assert s.get(Instance, instance.id).messages_received == 8  # type: ignore[union-attr]
    assert len(_events(rt, instance)) == 10  # nothing published twice


def test_a_batch_merges_two_stored_contacts_and_folds_their_bookings(
    rt: runtime.Runtime, db: Factory, instance: Instance
) -> None:
    route_batch(
        [
            _msg(instance, "L1", sender_phone=None, sender_lid="800000000000009", push_name=None),
            _msg(instance, "P1", sender_phone="5511966660009", push_name="Duda"),
        ]
    )
    assert _count(db, Contact) == 2
    with db() as s:
        older = s.scalars(select(Contact).order_by(Contact.id)).first()
        assert older is not None
        assert older.lid == "800000000000009"
    results = route_batch(
        [
            _msg(instance, "P2", sender_phone="5511966660009", push_name="Duda"),
            _msg(instance, "B1", sender_phone="5511966660009", sender_lid="800000000000009"),
            _msg(instance, "L2", sender_phone=None, sender_lid="800000000000009"),
        ]
    )
    assert [r["created"] for r in results] == [True] * 3
    with db() as s:
        contact = s.scalars(select(Contact)).one()
        assert contact.id == older.id  # the older row survives
        assert (contact.phone_number, contact.lid, contact.name) == (
            "5511966660009",
            "800000000000009",
            "Carla",  # the last sighting's push name
        )
        assert {m.contact_id for m in s.scalars(select(Message))} == {contact.id}
        booking = s.scalars(select(Booking)).one()
        assert (booking.contact_id, booking.message_count) == (contact.id, 5)


def test_one_message_batches_keep_the_single_message_rules(
    rt: runtime.Runtime, db: Factory, instance: Instance
) -> None:
    for wa_id in ("S1", "S2", "S1"):
        route_batch([_msg(instance, wa_id)])
    with db() as s:
        assert s.scalars(select(Booking)).one().message_count == 2
    assert [t for t, _ in _events(rt, instance)] == [
        "whatsapp:message",
        "booking:created",
        "whatsapp:message",
    ]


def test_a_message_the_database_refuses_is_rejected_alone(
    rt: runtime.Runtime, db: Factory, instance: Instance
) -> None:
    too_long = "9" * 200 + "@s.whatsapp.net"  # chat_jid is VARCHAR(128)
    results = route_batch(
        [_msg(instance, "OK1"), _msg(instance, "BIG", chat_jid=too_long), _msg(instance, "OK2")]
    )
    with db() as s:
        stored = sorted(s.scalars(select(Message.wa_message_id)))
        postgres = s.get_bind().dialect.name == "postgresql"
    if postgres:  # the batch is refused as a whole, then routed one by one
        assert [r.get("kind", r.get("rejected")) for r in results] == [
            "message",
            "invalid_inbound",
            "message",
        ]
        assert stored == ["OK1", "OK2"]
    else:  # SQLite does not enforce VARCHAR lengths: all three are stored
        assert [r["kind"] for r in results] == ["message"] * 3
        assert stored == ["BIG", "OK1", "OK2"]
    with db() as s:
        assert s.scalars(select(Booking)).one().message_count == len(stored)
