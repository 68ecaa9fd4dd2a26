"""Repositories and every schema constraint, on real Postgres and on SQLite.

Each unique/check constraint is hit twice: through the repository (which must answer with
storage's own `Conflict`/`InvalidValue`, or converge idempotently) and by a raw insert (which
proves the schema itself enforces it, whatever code writes).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from storage.crypto import Keyring
from storage.db import conflicts_wrapped
from storage.errors import Conflict, InvalidValue, NotFound
from storage.models import (
    ApiKey,
    Booking,
    BookingStatus,
    Contact,
    DeviceCredentials,
    Direction,
    Instance,
    InstanceDataKey,
    Message,
    MessageStatus,
    Note,
    OutboxMessage,
    SignalRecord,
    Tenant,
    WebhookDelivery,
)
from storage.phone import parse_phone
from storage.repositories import contacts, inbound, instances, outbox, tenants, webhooks

Factory = sessionmaker[Session]


def _raw_insert_conflicts(db: Factory, make: Callable[[], Any]) -> str:
    """Insert `make()` directly; the schema must refuse it. Returns the constraint text."""

    def insert() -> None:
        with db() as s, conflicts_wrapped():
            s.add(make())
            s.flush()

    with pytest.raises(Conflict) as err:
        insert()
    return str(err.value.details["constraint"])


def _tenant(db: Factory, name: str = "salon") -> uuid.UUID:
    with db.begin() as s:
        return tenants.create_tenant(s, name).id


def _instance(
    db: Factory,
    keyring: Keyring,
    tenant_id: uuid.UUID,
    name: str = "front-desk",
    phone: str | None = None,
) -> uuid.UUID:
    with db.begin() as s:
        return instances.create_instance(s, keyring, tenant_id, name, phone).id


# --- tenants and API keys --------------------------------------------------------------------
def test_tenant_names_are_unique(db: Factory) -> None:
    _tenant(db, "salon")
    with db.begin() as s, pytest.raises(Conflict) as err:
        tenants.create_tenant(s, "salon")
    assert err.value.details["constraint"] == "uq_tenants_name"
    _raw_insert_conflicts(db, lambda: Tenant(name="salon"))
    with db.begin() as s, pytest.raises(InvalidValue):
        tenants.create_tenant(s, "   ")


def test_unknown_tenant_is_not_found(db: Factory) -> None:
    with db.begin() as s, pytest.raises(NotFound):
        tenants.get_tenant(s, "nobody")
    with db.begin() as s, pytest.raises(NotFound):
        tenants.get_tenant(s, uuid.uuid4())


def test_api_keys_are_hashed_unique_scoped_and_revocable(db: Factory) -> None:
    tid = _tenant(db)
    with db.begin() as s:
        row, clear = tenants.create_api_key(s, tid, "crm", ["read", "send"])
        key_hash = row.key_hash
    assert clear.startswith("wfk_")
    assert clear not in key_hash
    with db.begin() as s:
        assert tenants.find_api_key(s, clear).tenant_id == tid
        with pytest.raises(NotFound):
            tenants.find_api_key(s, clear + "x")
        with pytest.raises(NotFound):
            tenants.find_api_key(s, "not-a-key")
        with pytest.raises(InvalidValue):
            tenants.create_api_key(s, tid, "bad", ["root"])
    _raw_insert_conflicts(
        db,
        lambda: ApiKey(tenant_id=tid, name="dup", prefix="wfk_", key_hash=key_hash, scopes="read"),
    )
    with db.begin() as s:
        tenants.revoke_api_key(s, tenants.find_api_key(s, clear).id)
    with db.begin() as s, pytest.raises(NotFound):
        tenants.find_api_key(s, clear)


# --- instances -------------------------------------------------------------------------------
def test_instance_name_unique_per_live_tenant(db: Factory, keyring: Keyring) -> None:
    a, b = _tenant(db, "a"), _tenant(db, "b")
    first = _instance(db, keyring, a, "desk")
    with db.begin() as s, pytest.raises(Conflict) as err:
        instances.create_instance(s, keyring, a, "desk")
    assert err.value.details["constraint"] == "uq_instances_tenant_name_live"
    _instance(db, keyring, b, "desk")  # another tenant may use the name
    _raw_insert_conflicts(db, lambda: Instance(tenant_id=a, name="desk"))
    with db.begin() as s:
        instances.delete_instance(s, first, a)
    _instance(db, keyring, a, "desk")  # the name is free again after a soft delete


def test_owner_number_unique_among_live_instances(db: Factory, keyring: Keyring) -> None:
    a, b = _tenant(db, "a"), _tenant(db, "b")
    first = _instance(db, keyring, a, "one", "+55 11 98765-4321")
    with db.begin() as s:
        assert instances.get_instance(s, first).phone_number == "5511987654321"
    with db.begin() as s, pytest.raises(Conflict) as err:
        instances.create_instance(s, keyring, b, "two", "5511987654321")
    assert err.value.details["constraint"] == "uq_instances_phone_live"
    _raw_insert_conflicts(db, lambda: Instance(tenant_id=b, name="x", phone_number="5511987654321"))
    with db.begin() as s:
        instances.delete_instance(s, first)
    _instance(db, keyring, b, "two", "5511987654321")


def test_phone_length_check_constraint(db: Factory) -> None:
    tid = _tenant(db)
    text = _raw_insert_conflicts(db, lambda: Instance(tenant_id=tid, name="x", phone_number="123"))
    assert "phone_length" in text or "CHECK" in text


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("", "empty"),
        ("55 11 9876x", "only digits"),
        ("0115551234", "country code"),
        ("1234567", "8 to 15"),
        ("1234567890123456", "8 to 15"),
        ("٥٥١١٩٨٧٦٥٤٣٢١", "only digits"),  # non-ASCII digits are not E.164
    ],
)
def test_invalid_phone_numbers_are_refused_precisely(raw: str, problem: str) -> None:
    with pytest.raises(InvalidValue) as err:
        parse_phone(raw)
    assert problem in err.value.text
    assert err.value.details["field"] == "phone_number"


def test_instances_are_tenant_isolated_and_deletion_shreds_keys(
    db: Factory, keyring: Keyring
) -> None:
    a, b = _tenant(db, "a"), _tenant(db, "b")
    iid = _instance(db, keyring, a)
    with db.begin() as s:
        s.add(DeviceCredentials(instance_id=iid, ciphertext=b"x"))
        s.add(SignalRecord(instance_id=iid, kind="session", name="1.0", ciphertext=b"y"))
    with db.begin() as s, pytest.raises(NotFound):
        instances.get_instance(s, iid, tenant_id=b)
    with db.begin() as s, pytest.raises(NotFound):
        instances.delete_instance(s, iid, tenant_id=b)
    with db.begin() as s:
        instances.delete_instance(s, iid, tenant_id=a)
    with db.begin() as s:
        for model in (InstanceDataKey, DeviceCredentials, SignalRecord):
            assert s.scalar(select(func.count()).select_from(model)) == 0
        assert instances.list_instances(s, a) == []
        assert len(instances.list_instances(s, a, include_deleted=True)) == 1
        with pytest.raises(NotFound):
            instances.get_instance(s, iid)


# --- contacts --------------------------------------------------------------------------------
def test_contact_phone_and_lid_unique_per_tenant(db: Factory) -> None:
    a, b = _tenant(db, "a"), _tenant(db, "b")
    with db.begin() as s:
        contacts.upsert_contact(s, a, phone_number="5511900000001", lid="100000000000001")
        contacts.upsert_contact(s, b, phone_number="5511900000001", lid="100000000000001")
    _raw_insert_conflicts(db, lambda: Contact(tenant_id=a, phone_number="5511900000001"))
    _raw_insert_conflicts(db, lambda: Contact(tenant_id=a, lid="100000000000001"))
    text = _raw_insert_conflicts(db, lambda: Contact(tenant_id=a, name="nobody"))
    assert "phone_or_lid" in text or "CHECK" in text
    with db.begin() as s:
        assert s.scalar(select(func.count()).select_from(Contact)) == 2
        with pytest.raises(InvalidValue):
            contacts.upsert_contact(s, a)


def test_contact_fills_in_lid_then_phone(db: Factory) -> None:
    tid = _tenant(db)
    with db.begin() as s:
        c1 = contacts.upsert_contact(s, tid, lid="200000000000002", name="Ana")
        c2 = contacts.upsert_contact(s, tid, lid="200000000000002", phone_number="5511900000002")
        assert c1.id == c2.id
        assert c2.phone_number == "5511900000002"
        assert c2.name == "Ana"
        c3 = contacts.upsert_contact(s, tid, phone_number="5511900000002", name="Ana Maria")
        assert c3.id == c1.id
        assert c3.lid == "200000000000002"
        assert c3.name == "Ana Maria"


def test_contacts_merge_when_phone_and_lid_meet(db: Factory, keyring: Keyring) -> None:
    tid = _tenant(db)
    iid = _instance(db, keyring, tid)
    with db.begin() as s:
        by_phone = contacts.upsert_contact(s, tid, phone_number="5511900000003", name="Bia")
        by_lid = contacts.upsert_contact(s, tid, lid="300000000000003")
        ids = (by_phone.id, by_lid.id)
        for n, cid in enumerate(ids):
            m = inbound.store_inbound_message(
                s,
                tenant_id=tid,
                instance_id=iid,
                wa_message_id=f"M{n}",
                chat_jid="c",
                sender_jid="s",
                contact_id=cid,
                type="text",
                body=f"hi {n}",
            )
            inbound.attach_to_pending_booking(
                s, tenant_id=tid, contact_id=cid, instance_id=iid, message_id=m.id
            )
    with db.begin() as s:
        merged = contacts.upsert_contact(
            s, tid, phone_number="5511900000003", lid="300000000000003"
        )
        assert merged.id == min(ids)
        assert (merged.phone_number, merged.lid, merged.name) == (
            "5511900000003",
            "300000000000003",
            "Bia",
        )
    with db.begin() as s:
        assert s.scalar(select(func.count()).select_from(Contact)) == 1
        assert set(s.scalars(select(Message.contact_id))) == {min(ids)}
        pending = s.scalars(select(Booking).where(Booking.status == BookingStatus.PENDING)).all()
        assert [(b.contact_id, b.message_count) for b in pending] == [(min(ids), 2)]


def test_concurrent_first_sightings_create_one_contact_and_booking(
    pg: Factory, keyring: Keyring
) -> None:
    tid = _tenant(pg)
    iid = _instance(pg, keyring, tid)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            with pg.begin() as s:
                c = contacts.upsert_contact(s, tid, phone_number="5511900000009", lid=None)
                m = inbound.store_inbound_message(
                    s,
                    tenant_id=tid,
                    instance_id=iid,
                    wa_message_id=f"R{n}",
                    chat_jid="c",
                    sender_jid="s",
                    contact_id=c.id,
                    type="text",
                    body="x",
                )
                inbound.attach_to_pending_booking(
                    s, tenant_id=tid, contact_id=c.id, instance_id=iid, message_id=m.id
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    with pg.begin() as s:
        assert s.scalar(select(func.count()).select_from(Contact)) == 1
        booking = s.scalars(select(Booking)).one()
        assert (booking.status, booking.message_count) == (BookingStatus.PENDING, 8)


# --- messages, notes, bookings ---------------------------------------------------------------
def test_inbound_messages_are_idempotent_per_instance_and_direction(
    db: Factory, keyring: Keyring
) -> None:
    tid = _tenant(db)
    iid = _instance(db, keyring, tid)
    kwargs: dict[str, Any] = dict(
        tenant_id=tid,
        instance_id=iid,
        wa_message_id="3EB0AA",
        chat_jid="5511900000004@s.whatsapp.net",
        sender_jid=None,
        contact_id=None,
        type="text",
        body="hello",
    )
    with db.begin() as s:
        first = inbound.store_inbound_message(s, **kwargs)
        again = inbound.store_inbound_message(s, **kwargs)
    assert first.created
    assert not again.created
    assert first.id == again.id
    _raw_insert_conflicts(
        db,
        lambda: Message(
            tenant_id=tid,
            instance_id=iid,
            direction=Direction.IN,
            wa_message_id="3EB0AA",
            chat_jid="c",
            type="text",
            status=MessageStatus.RECEIVED,
        ),
    )
    with db.begin() as s:  # the same id in the other direction is a different message
        s.add(
            Message(
                tenant_id=tid,
                instance_id=iid,
                direction=Direction.OUT,
                wa_message_id="3EB0AA",
                chat_jid="c",
                type="text",
                status=MessageStatus.SENT,
            )
        )


def test_notes_are_idempotent(db: Factory, keyring: Keyring) -> None:
    tid = _tenant(db)
    iid = _instance(db, keyring, tid)
    with db.begin() as s:
        a = inbound.store_note(
            s,
            tenant_id=tid,
            instance_id=iid,
            wa_message_id="N1",
            chat_jid="c",
            body="remember the 3pm slot",
        )
        b = inbound.store_note(
            s,
            tenant_id=tid,
            instance_id=iid,
            wa_message_id="N1",
            chat_jid="c",
            body="remember the 3pm slot",
        )
    assert a.created
    assert not b.created
    assert a.id == b.id
    _raw_insert_conflicts(
        db, lambda: Note(tenant_id=tid, instance_id=iid, wa_message_id="N1", chat_jid="c")
    )


def test_one_open_pending_booking_per_contact(db: Factory, keyring: Keyring) -> None:
    tid = _tenant(db)
    iid = _instance(db, keyring, tid)
    with db.begin() as s:
        cid = contacts.upsert_contact(s, tid, phone_number="5511900000005").id
        results = [
            inbound.attach_to_pending_booking(
                s, tenant_id=tid, contact_id=cid, instance_id=iid, message_id=None
            )
            for _ in range(3)
        ]
    assert [r.created for r in results] == [True, False, False]
    assert len({r.id for r in results}) == 1
    _raw_insert_conflicts(db, lambda: Booking(tenant_id=tid, contact_id=cid, source="api"))
    with db.begin() as s:  # once confirmed, a new pending booking may open
        s.get(Booking, results[0].id).status = BookingStatus.CONFIRMED  # type: ignore[union-attr]
    with db.begin() as s:
        fresh = inbound.attach_to_pending_booking(
            s, tenant_id=tid, contact_id=cid, instance_id=iid, message_id=None
        )
        assert fresh.created
        assert fresh.id != results[0].id
        s.add(
            Booking(tenant_id=tid, contact_id=cid, source="api", status=BookingStatus.CANCELLED)
        )  # closed bookings are unlimited


# --- outbox ----------------------------------------------------------------------------------
def _accept(
    s: Session,
    tid: uuid.UUID,
    iid: uuid.UUID,
    key: str,
    chat: str = "chat-1",
    text: str = "hi",
    wa_id: str | None = None,
) -> tuple[OutboxMessage, bool]:
    return outbox.accept_outbound(
        s,
        tenant_id=tid,
        instance_id=iid,
        idempotency_key=key,
        wa_message_id=wa_id or f"3EB0{uuid.uuid4().hex[:18].upper()}",
        chat_jid=chat,
        kind="text",
        payload={"text": text},
    )


def test_outbox_idempotency_returns_the_same_row_and_whatsapp_id(
    db: Factory, keyring: Keyring
) -> None:
    tid = _tenant(db)
    iid = _instance(db, keyring, tid)
    with db.begin() as s:
        row, created = _accept(s, tid, iid, "order-42")
        again, created_again = _accept(s, tid, iid, "order-42")
    assert created
    assert not created_again
    assert (again.id, again.wa_message_id) == (row.id, row.wa_message_id)
    with db.begin() as s, pytest.raises(Conflict) as err:
        _accept(s, tid, iid, "order-42", text="something else")
    assert "different message" in err.value.text
    _raw_insert_conflicts(
        db,
        lambda: OutboxMessage(
            tenant_id=tid,
            instance_id=iid,
            idempotency_key="order-42",
            wa_message_id="OTHER",
            chat_jid="z",
            chat_seq=1,
            kind="text",
            payload={},
        ),
    )
    other = _tenant(db, "other")
    other_iid = _instance(db, keyring, other, "x")
    with db.begin() as s:  # keys are per tenant
        assert _accept(s, other, other_iid, "order-42")[1]


def test_outbox_assigns_per_chat_sequence_and_unique_whatsapp_ids(
    db: Factory, keyring: Keyring
) -> None:
    tid = _tenant(db)
    iid = _instance(db, keyring, tid)
    with db.begin() as s:
        seqs = [
            _accept(s, tid, iid, f"k{n}", chat="A" if n % 2 else "B")[0].chat_seq for n in range(6)
        ]
        assert seqs == [1, 1, 2, 2, 3, 3]
        _accept(s, tid, iid, "w1", wa_id="3EB0FIXED")
    with db.begin() as s, pytest.raises(Conflict) as err:
        _accept(s, tid, iid, "w2", wa_id="3EB0FIXED")
    assert err.value.details["constraint"] == "uq_outbox_instance_id_wa_message_id"
    _raw_insert_conflicts(
        db,
        lambda: OutboxMessage(
            tenant_id=tid,
            instance_id=iid,
            idempotency_key="dup-seq",
            wa_message_id="X2",
            chat_jid="A",
            chat_seq=1,
            kind="text",
            payload={},
        ),
    )
    with db.begin() as s:
        backlog = outbox.pending_for_instance(s, iid)
        assert [(r.chat_jid, r.chat_seq) for r in backlog] == [
            ("A", 1),
            ("A", 2),
            ("A", 3),
            ("B", 1),
            ("B", 2),
            ("B", 3),
            ("chat-1", 1),
        ]
        with pytest.raises(InvalidValue):
            _accept(s, tid, iid, "")


def test_concurrent_accepts_to_one_chat_get_distinct_sequences(
    pg: Factory, keyring: Keyring
) -> None:
    tid = _tenant(pg)
    iid = _instance(pg, keyring, tid)
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            with pg.begin() as s:
                _accept(s, tid, iid, f"race-{n}", chat="same")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    with pg.begin() as s:
        assert sorted(s.scalars(select(OutboxMessage.chat_seq))) == [1, 2, 3, 4, 5, 6]


# --- webhooks --------------------------------------------------------------------------------
def test_webhook_deliveries_unique_per_endpoint_and_event(db: Factory, keyring: Keyring) -> None:
    tid = _tenant(db)
    with db.begin() as s:
        ep, secret = webhooks.create_endpoint(s, keyring, tid, "https://crm.example/hook")
        assert webhooks.endpoint_secrets(keyring, ep) == (secret,)
        a = webhooks.enqueue_delivery(
            s, endpoint=ep, event_id="e1", event_type="message", payload={"a": 1}
        )
        b = webhooks.enqueue_delivery(
            s, endpoint=ep, event_id="e1", event_type="message", payload={"a": 1}
        )
        assert a.created
        assert not b.created
        assert a.id == b.id
        with pytest.raises(InvalidValue):
            webhooks.create_endpoint(s, keyring, tid, "ftp://nope")
        ep_id = ep.id
    _raw_insert_conflicts(
        db,
        lambda: WebhookDelivery(
            tenant_id=tid, endpoint_id=ep_id, event_id="e1", event_type="x", payload={}
        ),
    )
