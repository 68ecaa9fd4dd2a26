"""The public outbound task API through a real routing worker: validation with precise codes,
idempotent outbox rows with stable WhatsApp ids, per-chat sequence, bulk, and the wake-up on
`wa.out.<instance_id>` published after commit."""

from __future__ import annotations

import base64
import re
import subprocess
import uuid
from typing import Any

import pytest
import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from storage.crypto import Keyring
from storage.models import Instance, OutboxMessage
from storage.repositories import instances, tenants
from tasks.errors import Rejected
from tasks.queues import out_queue
from tests.fleet.conftest import MASTER_KEY
from tests.services import REDIS_URL
from workers.producer import connect

Factory = sessionmaker[Session]
TIMEOUT = 60
WA_ID = re.compile(r"^3EB0[0-9A-F]{18}$")  # SPEC §13.1


@pytest.fixture
def instance(pg: Factory) -> Instance:
    keyring = Keyring.from_bytes(bytes.fromhex(MASTER_KEY))
    with pg.begin() as s:
        tenant = tenants.create_tenant(s, f"clinic-{uuid.uuid4().hex[:6]}")
        return instances.create_instance(s, keyring, tenant.id, "reception", "4915112345678")


@pytest.fixture
def wafleet(fleet_settings: Settings, routing_worker: subprocess.Popen[bytes]) -> Any:
    return connect(REDIS_URL, key_prefix=fleet_settings.redis_prefix)


def _wakeups(client: redis.Redis, settings: Settings, inst: Instance) -> int:
    length: Any = client.llen(f"{settings.redis_prefix}:{out_queue(inst.id)}")
    return int(length)


def test_send_is_idempotent_and_wakes_the_owner_queue(
    wafleet: Any,
    instance: Instance,
    pg: Factory,
    redis_client: redis.Redis,
    fleet_settings: Settings,
) -> None:
    tid, iid = str(instance.tenant_id), str(instance.id)
    first = wafleet.send_message(
        tid, iid, "+55 11 97777-0001", text="Confirmado: 10h", idempotency_key="appt-1"
    ).get(timeout=TIMEOUT)
    again = wafleet.send_message(
        tid, iid, "5511977770001", text="Confirmado: 10h", idempotency_key="appt-1"
    ).get(timeout=TIMEOUT)
    assert first["created"]
    assert not again["created"]
    assert first["wa_message_id"] == again["wa_message_id"]
    assert WA_ID.match(first["wa_message_id"])
    second = wafleet.send_message(tid, iid, "5511977770001", text="Até amanhã").get(timeout=TIMEOUT)
    with pg() as s:
        rows = s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        assert [(r.chat_jid, r.chat_seq, r.status.value) for r in rows] == [
            ("5511977770001@s.whatsapp.net", 1, "queued"),
            ("5511977770001@s.whatsapp.net", 2, "queued"),
        ]
        assert rows[1].id == second["outbox_id"]
    assert _wakeups(redis_client, fleet_settings, instance) == 3  # repeats wake again


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"to": "0800 123", "text": "x"}, "invalid_phone"),
        ({"to": "5511977770001", "text": "x" * 4097}, "text_too_long"),
        ({"to": "5511977770001", "text": "   "}, "empty_message"),
        ({"to": "5511977770001"}, "empty_message"),
        ({"to": "5511977770001", "text": "a", "media": {"kind": "image"}}, "invalid_request"),
        (
            {
                "to": "5511977770001",
                "media": {"kind": "gif", "mimetype": "image/gif", "url": "https://x"},
            },
            "invalid_media",
        ),
        (
            {
                "to": "5511977770001",
                "media": {"kind": "image", "mimetype": "video/mp4", "url": "https://x"},
            },
            "invalid_media",
        ),
        (
            {
                "to": "5511977770001",
                "media": {"kind": "image", "mimetype": "image/png", "data": "!!notbase64"},
            },
            "invalid_media",
        ),
        (
            {
                "to": "5511977770001",
                "media": {
                    "kind": "sticker",
                    "mimetype": "image/webp",
                    "data": base64.b64encode(b"\0" * (600 * 1024)).decode(),
                },
            },
            "media_too_large",
        ),
    ],
)
def test_invalid_requests_are_rejected_precisely(
    wafleet: Any, instance: Instance, kwargs: dict[str, Any], code: str, pg: Factory
) -> None:
    with pytest.raises(Rejected) as err:
        wafleet.send_message(str(instance.tenant_id), str(instance.id), **kwargs).get(
            timeout=TIMEOUT
        )
    assert err.value.code == code
    with pg() as s:
        assert s.scalar(select(func.count()).select_from(OutboxMessage)) == 0


def test_unknown_or_foreign_instances_are_rejected(
    wafleet: Any, instance: Instance, pg: Factory
) -> None:
    keyring = Keyring.from_bytes(bytes.fromhex(MASTER_KEY))
    with pg.begin() as s:
        other = tenants.create_tenant(s, "other-tenant")
        foreign = instances.create_instance(s, keyring, other.id, "theirs")
    cases = [
        (str(instance.tenant_id), str(foreign.id), "unknown_instance"),
        (str(instance.tenant_id), str(uuid.uuid4()), "unknown_instance"),
        (str(uuid.uuid4()), str(instance.id), "unknown_tenant"),
        ("not-a-uuid", str(instance.id), "unknown_tenant"),
    ]
    for tid, iid, code in cases:
        with pytest.raises(Rejected) as err:
            wafleet.send_message(tid, iid, "5511977770001", text="hi").get(timeout=TIMEOUT)
        assert err.value.code == code


def test_idempotency_key_reuse_with_other_content_is_refused(
    wafleet: Any, instance: Instance
) -> None:
    tid, iid = str(instance.tenant_id), str(instance.id)
    wafleet.send_message(tid, iid, "5511977770001", text="A", idempotency_key="k").get(
        timeout=TIMEOUT
    )
    with pytest.raises(Rejected) as err:
        wafleet.send_message(tid, iid, "5511977770001", text="B", idempotency_key="k").get(
            timeout=TIMEOUT
        )
    assert err.value.code == "idempotency_conflict"


def test_bulk_accepts_each_item_on_its_own(
    wafleet: Any,
    instance: Instance,
    pg: Factory,
    redis_client: redis.Redis,
    fleet_settings: Settings,
) -> None:
    items = [
        {"to": "5511900000001", "text": "Promoção 1", "idempotency_key": "b1"},
        {"to": "bad-number", "text": "x"},
        {
            "to": "5511900000002",
            "media": {
                "kind": "image",
                "mimetype": "image/png",
                "url": "https://cdn.example/p.png",
                "caption": "Nova coleção",
            },
        },
    ]
    out = wafleet.send_bulk(str(instance.tenant_id), str(instance.id), items).get(timeout=TIMEOUT)
    results = out["results"]
    assert results[0]["created"]
    assert results[2]["created"]
    assert results[1] == {"error": "invalid_phone", "message": results[1]["message"]}
    with pg() as s:
        rows = s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        assert [r.kind for r in rows] == ["text", "image"]
        assert {r.batch_id for r in rows} == {out["batch_id"]}
    assert _wakeups(redis_client, fleet_settings, instance) == 2
