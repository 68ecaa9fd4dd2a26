"""Operations: liveness, readiness (Postgres, Redis, broker), Prometheus metrics, and counts per
tenant (`/v1/stats` for a tenant key; admins use `/v1/tenants/{id}/stats`)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from kombu import Connection
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from storage.models import (
    Booking,
    Contact,
    Instance,
    Message,
    Note,
    OutboxMessage,
    WebhookDelivery,
)
from workers.gateway import auth, schemas, state
from workers.gateway.errors import error_responses

BROKER_TIMEOUT = 3.0  # seconds a readiness probe waits for the broker

router = APIRouter(tags=["operations"])
v1_router = APIRouter(tags=["operations"], responses=error_responses(400, 401, 403, 429))


@router.get("/healthz", response_model=schemas.Health)
def healthz() -> dict[str, str]:
    """Liveness: the process answers. Dependencies are /readyz's business."""
    return {"status": "ok"}


def _check(probe: Any) -> schemas.Check:
    try:
        probe()
    except Exception as exc:
        return schemas.Check(ok=False, error=type(exc).__name__)
    return schemas.Check(ok=True)


def _broker_probe(g: state.Gateway) -> None:
    if g.broker_redis is not None:
        g.broker_redis.ping()
        return
    with Connection(g.broker_url, connect_timeout=BROKER_TIMEOUT) as conn:
        conn.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT)


@router.get(
    "/readyz",
    response_model=schemas.Readiness,
    responses={503: {"model": schemas.Readiness, "description": "a dependency is down"}},
)
def readyz(request: Request) -> JSONResponse:
    """Readiness: Postgres, Redis and the broker each answer (per-dependency status)."""
    g = state.of(request)

    def database() -> None:
        with g.sessions() as s:
            s.execute(text("SELECT 1"))

    checks = {
        "database": _check(database),
        "redis": _check(g.redis.ping),
        "broker": _check(lambda: _broker_probe(g)),
    }
    ready = all(c.ok for c in checks.values())
    body = schemas.Readiness(status="ready" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _grouped(s: Session, stmt: Any) -> dict[str, int]:
    return {str(getattr(k, "value", k)): int(v) for k, v in s.execute(stmt).all()}


def tenant_stats(s: Session, tenant_id: uuid.UUID, instance_id: uuid.UUID | None) -> dict[str, Any]:
    """Counts of one tenant's records (of one instance, for an instance-restricted key)."""

    def scoped(stmt: Any, model: Any) -> Any:
        stmt = stmt.where(model.tenant_id == tenant_id)
        if instance_id is not None:
            column = model.id if model is Instance else model.instance_id
            stmt = stmt.where(column == instance_id)
        return stmt

    contacts = select(func.count()).select_from(Contact).where(Contact.tenant_id == tenant_id)
    if instance_id is not None:
        contacts = contacts.where(
            select(Message.id)
            .where(Message.contact_id == Contact.id, Message.instance_id == instance_id)
            .exists()
        )
    deliveries = select(WebhookDelivery.status, func.count()).where(
        WebhookDelivery.tenant_id == tenant_id
    )
    return {
        "instances": _grouped(
            s,
            scoped(select(Instance.status, func.count()), Instance)
            .where(Instance.deleted_at.is_(None))
            .group_by(Instance.status),
        ),
        "outbox": _grouped(
            s,
            scoped(select(OutboxMessage.status, func.count()), OutboxMessage).group_by(
                OutboxMessage.status
            ),
        ),
        "messages": _grouped(
            s, scoped(select(Message.direction, func.count()), Message).group_by(Message.direction)
        ),
        "contacts": int(s.scalar(contacts) or 0),
        "notes": int(s.scalar(scoped(select(func.count()).select_from(Note), Note)) or 0),
        "bookings": _grouped(
            s, scoped(select(Booking.status, func.count()), Booking).group_by(Booking.status)
        ),
        # Webhooks are tenant-wide configuration: an instance-restricted key sees none.
        "webhook_deliveries": {}
        if instance_id is not None
        else _grouped(s, deliveries.group_by(WebhookDelivery.status)),
    }


@v1_router.get("/stats", response_model=schemas.Stats)
def stats(principal: auth.Read, g: state.Dep) -> dict[str, Any]:
    with g.sessions() as s:
        return tenant_stats(s, principal.tenant_id, principal.instance_id)
