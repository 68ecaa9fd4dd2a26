"""The gateway's fleet-wide gauges (workers.gateway.metrics.FleetCollector) follow Postgres:
sessions by state (every state present, deleted instances left out), unowned and paused
instances, and messages waiting for a retry. The exposition is parsed with prometheus_client's
own parser."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from storage.models import Instance, InstanceLease, InstanceStatus, OutboxMessage, utcnow
from tests.gateway.conftest import TenantHandle

Factory = sessionmaker[Session]


def scrape(client: TestClient) -> tuple[str, dict[str, dict[tuple[tuple[str, str], ...], float]]]:
    """The raw text, and every sample as {name: {sorted labels: value}}."""
    response = client.get("/metrics")
    assert response.status_code == 200
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return response.text, samples


def by_state(samples: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> dict[str, float]:
    return {dict(labels)["state"]: v for labels, v in samples["wafleet_sessions"].items()}


def db_by_state(pg: Factory) -> dict[str, float]:
    """What Postgres says, every state present."""
    with pg() as s:
        rows = dict(
            s.execute(
                select(Instance.status, func.count())
                .where(Instance.deleted_at.is_(None))
                .group_by(Instance.status)
            ).all()
        )
    return {state.value: float(rows.get(state, 0)) for state in InstanceStatus}


def single(samples: dict[str, Any], name: str) -> float:
    (value,) = samples[name].values()
    return float(value)


def test_sessions_by_state_follow_the_database(
    client: TestClient, tenant: TenantHandle, pg: Factory
) -> None:
    h = tenant.headers
    ids = [uuid.UUID(tenant.instance_id)]
    for n in range(4):
        r = client.post("/v1/instances", json={"name": f"desk-{n}"}, headers=h)
        assert r.status_code == 201, r.text
        ids.append(uuid.UUID(r.json()["id"]))

    _, samples = scrape(client)
    assert by_state(samples) == {s.value: 0.0 for s in InstanceStatus} | {"created": 5.0}
    assert single(samples, "wafleet_instances_unowned") == 5
    assert single(samples, "wafleet_instances_outbound_paused") == 0

    # Session workers move instances through their states and hold leases on them.
    moves = {
        ids[0]: InstanceStatus.CONNECTED,
        ids[1]: InstanceStatus.CONNECTED,
        ids[2]: InstanceStatus.QR_PENDING,
        ids[3]: InstanceStatus.BANNED,
    }
    with pg.begin() as s:
        for iid, status in moves.items():
            s.execute(update(Instance).where(Instance.id == iid).values(status=status))
        s.execute(update(Instance).where(Instance.id == ids[1]).values(outbound_paused=True))
        now = utcnow()
        s.add(
            InstanceLease(
                instance_id=ids[0], owner="w1", token=1, expires_at=now + timedelta(seconds=60)
            )
        )
        s.add(
            InstanceLease(
                instance_id=ids[1], owner="w1", token=1, expires_at=now + timedelta(seconds=60)
            )
        )
        s.add(
            InstanceLease(
                instance_id=ids[2], owner="w2", token=3, expires_at=now - timedelta(seconds=1)
            )
        )
        s.add(InstanceLease(instance_id=ids[3], owner=None, token=2, expires_at=None))

    _, samples = scrape(client)
    expected = {s.value: 0.0 for s in InstanceStatus} | {
        "connected": 2.0,
        "qr_pending": 1.0,
        "banned": 1.0,
        "created": 1.0,
    }
    assert by_state(samples) == expected == db_by_state(pg)
    assert single(samples, "wafleet_instances_unowned") == 3  # expired and released count
    assert single(samples, "wafleet_instances_outbound_paused") == 1

    # A deleted instance leaves every gauge.
    assert client.delete(f"/v1/instances/{ids[1]}", headers=h).status_code == 204
    text, samples = scrape(client)
    expected["connected"] = 1.0
    assert by_state(samples) == expected == db_by_state(pg)
    assert single(samples, "wafleet_instances_unowned") == 3
    assert single(samples, "wafleet_instances_outbound_paused") == 0
    for iid in ids:
        assert str(iid) not in text
    assert tenant.id not in text


def test_outbox_retrying_counts_queued_messages_after_a_failed_attempt(
    client: TestClient, tenant: TenantHandle, pg: Factory
) -> None:
    h = tenant.headers
    sent = [
        client.post(
            f"/v1/instances/{tenant.instance_id}/send/text",
            json={"to": "5511988887777", "text": f"oi {n}"},
            headers=h,
        ).json()
        for n in range(3)
    ]
    _, samples = scrape(client)
    assert single(samples, "wafleet_outbox_retrying") == 0
    assert samples["wafleet_outbox_depth"][(("status", "queued"),)] == 3
    with pg.begin() as s:  # the owner's attempts failed: two wait for a retry, one ended failed
        s.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id.in_([sent[0]["outbox_id"], sent[1]["outbox_id"]]))
            .values(attempts=2, last_error_code="timeout")
        )
        s.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == sent[2]["outbox_id"])
            .values(attempts=7, status="failed", last_error_code="timeout")
        )
    _, samples = scrape(client)
    assert single(samples, "wafleet_outbox_retrying") == 2
    assert samples["wafleet_outbox_depth"][(("status", "queued"),)] == 2
