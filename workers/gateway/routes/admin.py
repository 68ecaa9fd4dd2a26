"""Admin API (the deployment's admin key): tenants and their API keys."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Response
from sqlalchemy import select

from storage.db import conflicts_wrapped
from storage.errors import Conflict
from storage.models import ApiKey, Tenant, utcnow
from storage.repositories import instances as instance_repo
from storage.repositories import tenants as tenant_repo
from workers.gateway import auth, schemas, state
from workers.gateway.errors import ApiError, error_responses, not_found
from workers.gateway.routes.ops import tenant_stats

router = APIRouter(
    prefix="/tenants",
    tags=["admin"],
    dependencies=[auth.AdminKey],
    responses=error_responses(400, 401, 403, 404, 429),
)


def _tenant_out(t: Tenant) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "created_at": t.created_at,
        "disabled": t.disabled_at is not None,
    }


def _key_out(k: ApiKey) -> dict[str, Any]:
    return {
        "id": k.id,
        "name": k.name,
        "prefix": k.prefix,
        "scopes": k.scopes.split(),
        "instance_id": k.instance_id,
        "created_at": k.created_at,
        "last_used_at": k.last_used_at,
        "revoked_at": k.revoked_at,
    }


def _tenant(s: Any, tenant_id: uuid.UUID) -> Tenant:
    tenant = s.get(Tenant, tenant_id)
    if tenant is None:
        raise not_found("tenant")
    return tenant  # type: ignore[no-any-return]


@router.post("", status_code=201, response_model=schemas.TenantOut, responses=error_responses(409))
def create_tenant(body: schemas.TenantCreate, g: state.Dep) -> dict[str, Any]:
    with g.sessions.begin() as s:
        return _tenant_out(tenant_repo.create_tenant(s, body.name))


@router.get("", response_model=list[schemas.TenantOut])
def list_tenants(g: state.Dep) -> list[dict[str, Any]]:
    with g.sessions() as s:
        return [_tenant_out(t) for t in tenant_repo.list_tenants(s)]


@router.get("/{tenant_id}", response_model=schemas.TenantOut)
def get_tenant(tenant_id: uuid.UUID, g: state.Dep) -> dict[str, Any]:
    with g.sessions() as s:
        return _tenant_out(_tenant(s, tenant_id))


@router.patch("/{tenant_id}", response_model=schemas.TenantOut, responses=error_responses(409))
def update_tenant(tenant_id: uuid.UUID, body: schemas.TenantUpdate, g: state.Dep) -> dict[str, Any]:
    given = body.model_fields_set
    with g.sessions.begin() as s:
        tenant = _tenant(s, tenant_id)
        if "name" in given and body.name is not None:
            tenant.name = body.name.strip()
        if "disabled" in given and body.disabled is not None:
            if body.disabled and tenant.disabled_at is None:
                tenant.disabled_at = utcnow()
            elif not body.disabled:
                tenant.disabled_at = None
        try:
            with conflicts_wrapped():
                s.flush()
        except Conflict:
            raise ApiError(
                409, "conflict", "a tenant with this name exists", details={"field": "name"}
            ) from None
        return _tenant_out(tenant)


@router.get("/{tenant_id}/stats", response_model=schemas.Stats)
def get_tenant_stats(tenant_id: uuid.UUID, g: state.Dep) -> dict[str, Any]:
    with g.sessions() as s:
        _tenant(s, tenant_id)
        return tenant_stats(s, tenant_id, None)


@router.post(
    "/{tenant_id}/api-keys",
    status_code=201,
    response_model=schemas.ApiKeyCreated,
    responses=error_responses(409),
)
def create_api_key(
    tenant_id: uuid.UUID, body: schemas.ApiKeyCreate, g: state.Dep
) -> dict[str, Any]:
    with g.sessions.begin() as s:
        _tenant(s, tenant_id)
        if body.instance_id is not None:
            instance_repo.get_instance(s, body.instance_id, tenant_id)
        row, clear = tenant_repo.create_api_key(
            s, tenant_id, body.name, body.scopes, body.instance_id
        )
        return {**_key_out(row), "key": clear}


@router.get("/{tenant_id}/api-keys", response_model=list[schemas.ApiKeyOut])
def list_api_keys(tenant_id: uuid.UUID, g: state.Dep) -> list[dict[str, Any]]:
    with g.sessions() as s:
        _tenant(s, tenant_id)
        rows = s.scalars(
            select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at)
        ).all()
        return [_key_out(k) for k in rows]


@router.delete("/{tenant_id}/api-keys/{key_id}", status_code=204)
def revoke_api_key(tenant_id: uuid.UUID, key_id: uuid.UUID, g: state.Dep) -> Response:
    with g.sessions.begin() as s:
        key = s.get(ApiKey, key_id)
        if key is None or key.tenant_id != tenant_id:
            raise not_found("API key")
        if key.revoked_at is None:
            tenant_repo.revoke_api_key(s, key_id)
    return Response(status_code=204)
