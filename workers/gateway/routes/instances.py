"""Instances of the calling tenant: create, list, get, update (name, pacing overrides, outbound
pause), delete (a linked instance is logged out first; then soft, the instance's keys are
destroyed). Connect, disconnect, logout, QR and status are in routes.sessions."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Response
from sqlalchemy import select

from storage.db import conflicts_wrapped
from storage.errors import Conflict
from storage.models import Instance
from storage.repositories import instances as instance_repo
from tasks import commands
from tasks.accept import wake_instance
from workers.gateway import auth, schemas, state
from workers.gateway.errors import ApiError, error_responses

router = APIRouter(
    prefix="/instances", tags=["instances"], responses=error_responses(400, 401, 403, 404, 429)
)
PAUSED_BY_API = "paused via the API"


def instance_out(i: Instance) -> dict[str, Any]:
    return {
        "id": i.id,
        "name": i.name,
        "phone_number": i.phone_number,
        "status": i.status.value,
        "outbound_paused": i.outbound_paused,
        "pause_reason": i.pause_reason,
        "pacing": i.pacing,
        "messages_sent": i.messages_sent,
        "messages_received": i.messages_received,
        "last_connected_at": i.last_connected_at,
        "created_at": i.created_at,
        "updated_at": i.updated_at,
    }


@router.post(
    "",
    status_code=201,
    response_model=schemas.InstanceOut,
    responses=error_responses(409, 503),
)
def create_instance(
    body: schemas.InstanceCreate, principal: auth.TenantAdmin, g: state.Dep
) -> dict[str, Any]:
    keyring = g.keyring()
    with g.sessions.begin() as s:
        inst = instance_repo.create_instance(
            s, keyring, principal.tenant_id, body.name, body.phone_number
        )
        return instance_out(inst)


@router.get("", response_model=list[schemas.InstanceOut])
def list_instances(principal: auth.Read, g: state.Dep) -> list[dict[str, Any]]:
    with g.sessions() as s:
        stmt = (
            select(Instance)
            .where(Instance.tenant_id == principal.tenant_id, Instance.deleted_at.is_(None))
            .order_by(Instance.created_at, Instance.name)
        )
        if principal.instance_id is not None:
            stmt = stmt.where(Instance.id == principal.instance_id)
        return [instance_out(i) for i in s.scalars(stmt)]


@router.get("/{instance_id}", response_model=schemas.InstanceOut)
def get_instance(instance_id: uuid.UUID, principal: auth.Read, g: state.Dep) -> dict[str, Any]:
    with g.sessions() as s:
        return instance_out(auth.visible_instance(s, principal, instance_id))


@router.patch("/{instance_id}", response_model=schemas.InstanceOut, responses=error_responses(409))
def update_instance(
    instance_id: uuid.UUID, body: schemas.InstanceUpdate, principal: auth.Admin, g: state.Dep
) -> dict[str, Any]:
    given = body.model_fields_set
    with g.sessions.begin() as s:
        inst = auth.visible_instance(s, principal, instance_id)
        if "name" in given:
            if body.name is None or not body.name.strip():
                raise ApiError(
                    400, "invalid_value", "name cannot be empty", details={"field": "name"}
                )
            inst.name = body.name.strip()
        if "pacing" in given:
            pacing = body.pacing.model_dump(exclude_none=True) if body.pacing else {}
            low, high = pacing.get("min_gap"), pacing.get("max_gap")
            if low is not None and high is not None and high < low:
                raise ApiError(
                    400,
                    "invalid_value",
                    "pacing.max_gap must be ≥ pacing.min_gap",
                    details={"field": "pacing.max_gap"},
                )
            inst.pacing = pacing or None
        resumed = False
        if "outbound_paused" in given and body.outbound_paused is not None:
            resumed = inst.outbound_paused and not body.outbound_paused
            inst.outbound_paused = body.outbound_paused
            inst.pause_reason = (
                (body.pause_reason or PAUSED_BY_API) if body.outbound_paused else None
            )
        elif "pause_reason" in given and inst.outbound_paused:
            inst.pause_reason = body.pause_reason or PAUSED_BY_API
        try:
            with conflicts_wrapped():
                s.flush()
        except Conflict:
            raise ApiError(
                409,
                "conflict",
                "this tenant already has an instance with this name",
                details={"field": "name"},
            ) from None
        out = instance_out(inst)
    if resumed:  # after commit: the owner's actor must see the instance resumed
        wake_instance(instance_id)
    return out


@router.delete("/{instance_id}", status_code=204)
def delete_instance(instance_id: uuid.UUID, principal: auth.Admin, g: state.Dep) -> Response:
    """A linked instance is logged out first (through its owner, tasks.commands.delete), then
    soft-deleted with its secrets destroyed."""
    with g.sessions() as s:
        auth.visible_instance(s, principal, instance_id)
    commands.delete(instance_id, principal.tenant_id)
    return Response(status_code=204)
