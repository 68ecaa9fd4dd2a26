"""`wafleet.deliver`: a wake-up that names its instance reaches that instance's host without a
database lookup; one with the outbox row id alone is routed by the row; bad ids are refused."""

from __future__ import annotations

import uuid

import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from storage.bus import EventBus
from storage.crypto import Keyring
from storage.repositories import instances, outbox, tenants
from tasks import deliver, runtime
from tasks.errors import Rejected
from tests.fleet.conftest import MASTER_KEY

Factory = sessionmaker[Session]


def test_wake_routes_by_the_named_instance_or_by_the_row(
    pg: Factory, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[uuid.UUID, int]] = []

    def hook(instance_id: uuid.UUID, outbox_id: int) -> bool:
        calls.append((instance_id, outbox_id))
        return True

    monkeypatch.setattr(
        runtime,
        "_current",
        runtime.Runtime(
            sessions=pg,
            bus=EventBus(redis_client, "deliver-test"),
            redis=redis_client,
            deliver_hook=hook,
        ),
    )
    with pg.begin() as s:
        tenant = tenants.create_tenant(s, f"deliver-{uuid.uuid4().hex[:6]}")
        inst = instances.create_instance(
            s, Keyring.from_bytes(bytes.fromhex(MASTER_KEY)), tenant.id, "desk"
        )
        row, _ = outbox.accept_outbound(
            s,
            tenant_id=tenant.id,
            instance_id=inst.id,
            idempotency_key="k1",
            wa_message_id="3EB0DELIVERTEST1",
            chat_jid="5511900000001@s.whatsapp.net",
            kind="text",
            payload={"text": "oi"},
            batch_id=None,
            expires_at=None,
        )
        instance_id, row_id = inst.id, row.id

    other = uuid.uuid4()  # no row needed: the named instance is trusted as the route
    assert deliver.wake(10**12, str(other))
    assert calls == [(other, 10**12)]

    assert deliver.wake(row_id)  # an older wake-up without the instance: looked up by row
    assert calls[-1] == (instance_id, row_id)

    assert not deliver.wake(10**12)  # no such row, no instance named: dropped
    assert len(calls) == 2

    with pytest.raises(Rejected) as refused:
        deliver.wake(row_id, "not-an-id")
    assert refused.value.code == "unknown_instance"
    assert len(calls) == 2
