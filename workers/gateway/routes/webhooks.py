"""Webhook endpoints of the calling tenant (tenant-wide keys only): CRUD, secret rotation (the
previous secret keeps signing until the overlap is ended), the delivery log with every attempt,
replay, and a test delivery (`whatsapp:test`) through the same durable path as real events."""

from __future__ import annotations

import os
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.crypto import seal_with_master
from storage.models import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    utcnow,
)
from storage.repositories import webhooks as webhook_repo
from tasks import webhooks as webhook_tasks
from workers.gateway import auth, pages, schemas, state
from workers.gateway.errors import ApiError, error_responses, not_found

router = APIRouter(
    prefix="/webhooks", tags=["webhooks"], responses=error_responses(400, 401, 403, 404, 429)
)
TEST_EVENT = "whatsapp:test"


def webhook_out(e: WebhookEndpoint) -> dict[str, Any]:
    spec = e.events or {}
    return {
        "id": e.id,
        "url": e.url,
        "event_types": spec.get("types"),
        "instance_ids": spec.get("instances"),
        "enabled": e.enabled,
        "rotating": e.previous_secret_ciphertext is not None,
        "created_at": e.created_at,
        "updated_at": e.updated_at,
    }


def _filters(
    s: Session,
    principal: auth.Principal,
    types: list[str] | None,
    instances: list[uuid.UUID] | None,
) -> dict[str, Any] | None:
    spec: dict[str, Any] = {}
    if types:
        spec["types"] = sorted(set(types))
    if instances:
        for instance_id in instances:
            auth.visible_instance(s, principal, instance_id)
        spec["instances"] = sorted({str(i) for i in instances})
    return spec or None


def _check_url(url: str) -> str:
    url = url.strip()
    if not url.startswith(("http://", "https://")) or len(url) <= len("https://"):
        raise ApiError(
            400, "invalid_value", "webhook URL must be http(s)", details={"field": "url"}
        )
    return url


def _endpoint(s: Session, principal: auth.Principal, webhook_id: uuid.UUID) -> WebhookEndpoint:
    endpoint = s.get(WebhookEndpoint, webhook_id)
    if endpoint is None or endpoint.tenant_id != principal.tenant_id:
        raise not_found("webhook")
    return endpoint


@router.post(
    "", status_code=201, response_model=schemas.WebhookCreated, responses=error_responses(503)
)
def create_webhook(
    body: schemas.WebhookCreate, principal: auth.TenantAdmin, g: state.Dep
) -> dict[str, Any]:
    keyring = g.keyring()
    with g.sessions.begin() as s:
        events = _filters(s, principal, body.event_types, body.instance_ids)
        endpoint, secret = webhook_repo.create_endpoint(
            s, keyring, principal.tenant_id, _check_url(body.url), events
        )
        endpoint.enabled = body.enabled
        s.flush()
        return {**webhook_out(endpoint), "secret": secret.hex()}


@router.get("", response_model=list[schemas.WebhookOut])
def list_webhooks(principal: auth.TenantReader, g: state.Dep) -> list[dict[str, Any]]:
    with g.sessions() as s:
        rows = s.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.tenant_id == principal.tenant_id)
            .order_by(WebhookEndpoint.created_at)
        )
        return [webhook_out(e) for e in rows]


@router.get("/{webhook_id}", response_model=schemas.WebhookOut)
def get_webhook(
    webhook_id: uuid.UUID, principal: auth.TenantReader, g: state.Dep
) -> dict[str, Any]:
    with g.sessions() as s:
        return webhook_out(_endpoint(s, principal, webhook_id))


@router.patch("/{webhook_id}", response_model=schemas.WebhookOut)
def update_webhook(
    webhook_id: uuid.UUID, body: schemas.WebhookUpdate, principal: auth.TenantAdmin, g: state.Dep
) -> dict[str, Any]:
    given = body.model_fields_set
    with g.sessions.begin() as s:
        endpoint = _endpoint(s, principal, webhook_id)
        spec = dict(endpoint.events or {})
        if "url" in given and body.url is not None:
            endpoint.url = _check_url(body.url)
        if "enabled" in given and body.enabled is not None:
            endpoint.enabled = body.enabled
        if "event_types" in given or "instance_ids" in given:
            new = _filters(s, principal, body.event_types, body.instance_ids) or {}
            for key, field in (("types", "event_types"), ("instances", "instance_ids")):
                if field in given:
                    spec.pop(key, None)
                    if key in new:
                        spec[key] = new[key]
            endpoint.events = spec or None
        endpoint.updated_at = utcnow()
        s.flush()
        return webhook_out(endpoint)


@router.delete("/{webhook_id}", status_code=204)
def delete_webhook(webhook_id: uuid.UUID, principal: auth.TenantAdmin, g: state.Dep) -> Response:
    with g.sessions.begin() as s:
        s.delete(_endpoint(s, principal, webhook_id))
    return Response(status_code=204)


@router.post(
    "/{webhook_id}/rotate-secret",
    response_model=schemas.WebhookSecret,
    responses=error_responses(503),
)
def rotate_secret(
    webhook_id: uuid.UUID, principal: auth.TenantAdmin, g: state.Dep
) -> dict[str, Any]:
    """A new signing secret; the current one becomes the previous one and keeps signing (both
    signatures are sent) until DELETE .../previous-secret ends the overlap."""
    keyring = g.keyring()
    with g.sessions.begin() as s:
        endpoint = _endpoint(s, principal, webhook_id)
        current = webhook_repo.endpoint_secrets(keyring, endpoint)[0]
        secret = os.urandom(webhook_repo.SECRET_BYTES)
        purpose = f"webhook:{endpoint.id}"
        # Both secrets are re-sealed under the current master key, since the row names one
        # master key for both.
        endpoint.previous_secret_ciphertext = seal_with_master(
            keyring, purpose + ":previous", current
        )
        endpoint.secret_ciphertext = seal_with_master(keyring, purpose, secret)
        endpoint.master_key_id = keyring.current.key_id
        endpoint.updated_at = utcnow()
        return {"secret": secret.hex()}


@router.delete("/{webhook_id}/previous-secret", status_code=204)
def end_rotation(webhook_id: uuid.UUID, principal: auth.TenantAdmin, g: state.Dep) -> Response:
    with g.sessions.begin() as s:
        endpoint = _endpoint(s, principal, webhook_id)
        endpoint.previous_secret_ciphertext = None
        endpoint.updated_at = utcnow()
    return Response(status_code=204)


def delivery_out(d: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "endpoint_id": d.endpoint_id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "status": d.status.value,
        "attempts": d.attempts,
        "next_attempt_at": d.next_attempt_at,
        "last_status_code": d.last_status_code,
        "last_error": d.last_error,
        "created_at": d.created_at,
        "delivered_at": d.delivered_at,
    }


@router.get("/{webhook_id}/deliveries", response_model=schemas.Page[schemas.DeliveryOut])
def list_deliveries(
    webhook_id: uuid.UUID,
    principal: auth.TenantReader,
    g: state.Dep,
    status: DeliveryStatus | None = None,
    limit: pages.Limit = pages.DEFAULT_LIMIT,
    cursor: pages.Cursor = None,
) -> dict[str, Any]:
    with g.sessions() as s:
        _endpoint(s, principal, webhook_id)
        stmt = select(WebhookDelivery).where(
            WebhookDelivery.tenant_id == principal.tenant_id,
            WebhookDelivery.endpoint_id == webhook_id,
        )
        if status is not None:
            stmt = stmt.where(WebhookDelivery.status == status)
        return pages.page(s, stmt, WebhookDelivery.id, limit, cursor, delivery_out)


def _delivery(
    s: Session, principal: auth.Principal, webhook_id: uuid.UUID, delivery_id: int
) -> WebhookDelivery:
    _endpoint(s, principal, webhook_id)
    delivery = s.get(WebhookDelivery, delivery_id)
    if delivery is None or delivery.endpoint_id != webhook_id:
        raise not_found("delivery")
    return delivery


@router.get("/{webhook_id}/deliveries/{delivery_id}", response_model=schemas.DeliveryDetail)
def get_delivery(
    webhook_id: uuid.UUID,
    delivery_id: Annotated[int, pages.IdPath],
    principal: auth.TenantReader,
    g: state.Dep,
) -> dict[str, Any]:
    with g.sessions() as s:
        delivery = _delivery(s, principal, webhook_id, delivery_id)
        attempts = s.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id == delivery_id)
            .order_by(WebhookAttempt.attempt)
        )
        log = [
            {
                "attempt": a.attempt,
                "started_at": a.started_at,
                "status_code": a.status_code,
                "error": a.error,
                "duration_ms": a.duration_ms,
            }
            for a in attempts
        ]
        return {**delivery_out(delivery), "payload": delivery.payload, "log": log}


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/replay",
    status_code=202,
    response_model=schemas.DeliveryOut,
    responses=error_responses(409),
)
def replay_delivery(
    webhook_id: uuid.UUID,
    delivery_id: Annotated[int, pages.IdPath],
    principal: auth.TenantAdmin,
    g: state.Dep,
) -> dict[str, Any]:
    with g.sessions() as s:
        delivery = _delivery(s, principal, webhook_id, delivery_id)
        if delivery.status is DeliveryStatus.PENDING:
            raise ApiError(
                409, "delivery_pending", "the delivery is still being attempted; nothing to replay"
            )
    webhook_tasks.replay_delivery(delivery_id)
    with g.sessions() as s:
        return delivery_out(_delivery(s, principal, webhook_id, delivery_id))


@router.post("/{webhook_id}/test", status_code=202, response_model=schemas.TestDelivery)
def test_delivery(
    webhook_id: uuid.UUID, principal: auth.TenantAdmin, g: state.Dep
) -> dict[str, Any]:
    """Enqueue a `whatsapp:test` event for this endpoint only (sent while it is enabled)."""
    event_id = f"test-{uuid.uuid4().hex}"
    with g.sessions.begin() as s:
        endpoint = _endpoint(s, principal, webhook_id)
        stored = webhook_repo.enqueue_delivery(
            s,
            endpoint=endpoint,
            event_id=event_id,
            event_type=TEST_EVENT,
            payload={
                "id": event_id,
                "type": TEST_EVENT,
                "instance_id": None,
                "data": {"webhook_id": str(endpoint.id), "message": "test delivery from wafleet"},
            },
        )
    webhook_tasks.enqueue([stored.id])
    return {"delivery_id": stored.id, "event_id": event_id}
