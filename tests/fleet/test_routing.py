"""Inbound routing through a real routing worker process (DESIGN §3.7, §3.8): owner → note;
client → contact + message + one pending booking; redeliveries store nothing twice; receipts
only move statuses forward; events reach the tenant's stream."""

from __future__ import annotations

import subprocess
import uuid
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from storage.bus import EventBus
from storage.crypto import Keyring
from storage.models import Booking, Contact, Instance, Message, Note, OutboxMessage, OutboxStatus
from storage.repositories import instances, outbox, tenants, webhooks
from tasks.errors import Rejected
from tasks.inbound import InboundMessage
from tasks.queues import MESSAGE_STATUS_TASK, ROUTE_INBOUND_BATCH_TASK, ROUTE_INBOUND_TASK
from tests.fleet.conftest import MASTER_KEY

Factory = sessionmaker[Session]
OWNER = "5511988880000"
# A bound on waiting, not a speed check: the first task also waits for the session-scoped
# routing worker to start, which takes long on a loaded 2-core machine.
TIMEOUT = 180


@pytest.fixture
def instance(pg: Factory) -> Instance:
    keyring = Keyring.from_bytes(bytes.fromhex(MASTER_KEY))
    with pg.begin() as s:
        tenant = tenants.create_tenant(s, f"salon-{uuid.uuid4().hex[:6]}")
        inst = instances.create_instance(s, keyring, tenant.id, "desk", OWNER)
        inst.wa_lid = "900000000000001@lid"
        webhooks.create_endpoint(
            s, keyring, tenant.id, "https://crm.example/hook", {"types": ["whatsapp:message"]}
        )
        return inst


def _route(app: Celery, msg: InboundMessage) -> Any:
    return app.send_task(ROUTE_INBOUND_TASK, args=[msg.to_dict()]).get(timeout=TIMEOUT)


def _msg(inst: Instance, wa_id: str, **kw: Any) -> InboundMessage:
    base: dict[str, Any] = dict(
        instance_id=str(inst.id),
        wa_message_id=wa_id,
        chat_jid="5511977770001@s.whatsapp.net",
        sender_jid="5511977770001:0@s.whatsapp.net",
        timestamp=1_790_000_000,
        type="text",
        text="Oi, tem horário?",
        sender_phone="5511977770001",
        push_name="Carla",
    )
    base.update(kw)
    return InboundMessage(**base)


def _count(pg: Factory, model: type) -> int:
    with pg() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_client_messages_make_contact_message_and_one_pending_booking(
    routing_worker: subprocess.Popen[bytes],
    producer: Celery,
    pg: Factory,
    instance: Instance,
    fleet_settings: Settings,
    redis_client: Any,
) -> None:
    first = _route(producer, _msg(instance, "3EB0A1"))
    assert first["kind"] == "message"
    assert first["created"]
    again = _route(producer, _msg(instance, "3EB0A1"))  # a redelivery
    assert not again["created"]
    assert again["id"] == first["id"]
    _route(producer, _msg(instance, "3EB0A2", text="Amanhã às 10h?"))
    assert (_count(pg, Contact), _count(pg, Message), _count(pg, Note)) == (1, 2, 0)
    with pg() as s:
        booking = s.scalars(select(Booking)).one()
        assert (booking.status.value, booking.source, booking.message_count) == (
            "pending",
            "whatsapp",
            2,
        )
        assert s.get(Instance, instance.id).messages_received == 2  # type: ignore[union-attr]
        contact = s.scalars(select(Contact)).one()
        assert (contact.phone_number, contact.name) == ("5511977770001", "Carla")
    bus = EventBus(redis_client, fleet_settings.redis_prefix)
    events = bus.read(instance.tenant_id).events
    messages = [e.data["id"] for e in events if e.type == "whatsapp:message"]
    assert messages == ["3EB0A1", "3EB0A2"]  # no duplicate event
    opened = [e.data for e in events if e.type == "booking:created"]
    assert [(b["id"], b["status"]) for b in opened] == [(booking.id, "pending")]  # once
    from storage.models import WebhookDelivery

    assert _count(pg, WebhookDelivery) == 2  # the endpoint takes whatsapp:message only


def test_owner_messages_become_notes(
    routing_worker: subprocess.Popen[bytes], producer: Celery, pg: Factory, instance: Instance
) -> None:
    from_phone = _route(
        producer,
        _msg(
            instance,
            "3EB0B1",
            from_me=True,
            text="note to self",
            chat_jid="5511977770001@s.whatsapp.net",
        ),
    )
    by_number = _route(producer, _msg(instance, "3EB0B2", sender_phone=OWNER, from_me=False))
    by_lid = _route(
        producer, _msg(instance, "3EB0B3", sender_phone=None, sender_lid="900000000000001")
    )
    assert [r["kind"] for r in (from_phone, by_number, by_lid)] == ["note"] * 3
    assert (_count(pg, Note), _count(pg, Message), _count(pg, Contact), _count(pg, Booking)) == (
        3,
        0,
        0,
        0,
    )


def test_lid_then_phone_merges_into_one_contact(
    routing_worker: subprocess.Popen[bytes], producer: Celery, pg: Factory, instance: Instance
) -> None:
    _route(producer, _msg(instance, "L1", sender_phone=None, sender_lid="800000000000002"))
    _route(producer, _msg(instance, "L2", sender_phone="5511966660002", sender_lid=None))
    assert _count(pg, Contact) == 2
    _route(
        producer, _msg(instance, "L3", sender_phone="5511966660002", sender_lid="800000000000002")
    )
    with pg() as s:
        contact = s.scalars(select(Contact)).one()
        assert (contact.phone_number, contact.lid) == ("5511966660002", "800000000000002")
        assert s.scalars(select(Booking)).one().message_count == 3


def test_bad_inbound_is_rejected_precisely(
    routing_worker: subprocess.Popen[bytes], producer: Celery, instance: Instance
) -> None:
    ghost = _msg(instance, "G1", instance_id=str(uuid.uuid4()))
    with pytest.raises(Rejected) as err:
        _route(producer, ghost)
    assert err.value.code == "unknown_instance"
    with pytest.raises(Rejected) as err:
        producer.send_task(ROUTE_INBOUND_TASK, args=[{"nonsense": 1}]).get(timeout=TIMEOUT)
    assert err.value.code == "invalid_inbound"
    with pytest.raises(Rejected):
        _route(producer, _msg(instance, "G2", sender_phone=None, sender_lid=None))


def test_a_batch_task_routes_each_message_once_with_webhooks_and_events(
    routing_worker: subprocess.Popen[bytes],
    producer: Celery,
    pg: Factory,
    instance: Instance,
    fleet_settings: Settings,
    redis_client: Any,
) -> None:
    from storage.models import WebhookDelivery

    batch = [
        _msg(instance, "B1").to_dict(),
        _msg(instance, "B2", from_me=True, text="owner").to_dict(),
        {"nonsense": 1},
        _msg(instance, "B3", sender_phone=None, sender_lid="800000000000003").to_dict(),
        _msg(instance, "B4", instance_id=str(uuid.uuid4())).to_dict(),
        _msg(
            instance, "B5", sender_phone="5511977770001", sender_lid="800000000000003"
        ).to_dict(),  # the LID contact of B3 is Carla: merged inside the batch
        _msg(instance, "B6", text="Amanhã?").to_dict(),
    ]

    def route_all() -> list[dict[str, Any]]:
        result = producer.send_task(ROUTE_INBOUND_BATCH_TASK, args=[batch]).get(timeout=TIMEOUT)
        return list(result)

    first = route_all()
    assert [r.get("kind", r.get("rejected")) for r in first] == [
        "message",
        "note",
        "invalid_inbound",
        "message",
        "unknown_instance",
        "message",
        "message",
    ]
    bus = EventBus(redis_client, fleet_settings.redis_prefix)

    def seen() -> tuple[int, int, int, int, int]:
        events = bus.read(instance.tenant_id).events
        return (
            _count(pg, Message),
            _count(pg, Note),
            _count(pg, Contact),
            _count(pg, WebhookDelivery),
            len(events),
        )

    # 4 messages + 1 note; one contact; webhooks for whatsapp:message only; 5 + 1 booking events
    assert seen() == (4, 1, 1, 5, 6)
    again = route_all()  # a redelivered batch
    assert [r.get("created") for r in again] == [False, False, None, False, None, False, False]
    assert seen() == (4, 1, 1, 5, 6)
    with pg() as s:
        assert s.scalars(select(Booking)).one().message_count == 4
        assert s.get(Instance, instance.id).messages_received == 5  # type: ignore[union-attr]
    with pytest.raises(Rejected) as err:
        producer.send_task(ROUTE_INBOUND_BATCH_TASK, args=[{"not": "a list"}]).get(timeout=TIMEOUT)
    assert err.value.code == "invalid_inbound"


def test_receipts_only_move_status_forward(
    routing_worker: subprocess.Popen[bytes], producer: Celery, pg: Factory, instance: Instance
) -> None:
    with pg.begin() as s:
        row, _ = outbox.accept_outbound(
            s,
            tenant_id=instance.tenant_id,
            instance_id=instance.id,
            idempotency_key="r1",
            wa_message_id="3EB0R1",
            chat_jid="c",
            kind="text",
            payload={"text": "x"},
        )
        row.status = OutboxStatus.SENT

    def receipt(status: str) -> int:
        return int(
            producer.send_task(
                MESSAGE_STATUS_TASK, args=[str(instance.id), ["3EB0R1"], status]
            ).get(timeout=TIMEOUT)
        )

    assert receipt("read") == 1
    assert receipt("delivered") == 0  # late delivery receipt after the read: ignored
    assert receipt("read") == 0
    with pg() as s:
        final = s.scalars(select(OutboxMessage)).one()
        assert final.status is OutboxStatus.READ
        assert final.read_at is not None
        assert final.delivered_at is not None
    with pytest.raises(Rejected):
        receipt("exploded")
