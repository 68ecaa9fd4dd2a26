"""Authentication, authorisation and per-key rate limiting of the HTTP API.

* Admin endpoints (`/v1/tenants...`) take `Authorization: Bearer <WAFLEET_ADMIN_KEY>`, compared
  in constant time; without the setting they are off (401 admin_disabled).
* Everything else takes a tenant API key `Authorization: Bearer wfk_...`, found by its SHA-256
  hash (storage.repositories.tenants.find_api_key). Scopes: `read` (GET), `send` (messages),
  `admin` (instances, webhooks, booking decisions). A key restricted to one instance sees only
  that instance and what belongs to it; tenant-wide configuration (creating instances, webhooks)
  needs an unrestricted key.
* Another tenant's ids are never distinguishable from missing ones: endpoints answer 404.
* Rate limit: a fixed-window counter per key in Redis (`<prefix>:ratelimit:<key>:<window>`);
  over the limit → 429 with `retry_after` and `Retry-After`. Fixed windows allow a burst of 2×
  at a window edge, which is acceptable for abuse protection and costs one INCR per request.
"""

from __future__ import annotations

import hmac
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, TypeVar

from fastapi import Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Select, or_, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from storage.errors import NotFound
from storage.models import ApiKey, Instance, Tenant, utcnow
from storage.repositories import tenants as tenant_repo
from workers.gateway import state
from workers.gateway.errors import ApiError

tenant_bearer = HTTPBearer(
    scheme_name="TenantKey", auto_error=False, description="a tenant API key: wfk_..."
)
admin_bearer = HTTPBearer(
    scheme_name="AdminKey", auto_error=False, description="the deployment's WAFLEET_ADMIN_KEY"
)

READ, SEND, ADMIN = "read", "send", "admin"
LAST_USED_RESOLUTION = timedelta(minutes=1)  # how fresh api_keys.last_used_at is kept


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a tenant key (or the admin key, with tenant_id None)."""

    key_id: str
    tenant_id: uuid.UUID
    scopes: frozenset[str]
    instance_id: uuid.UUID | None  # the key's instance restriction

    def can_see(self, instance_id: uuid.UUID | None) -> bool:
        return self.instance_id is None or instance_id == self.instance_id


def _unauthorized(code: str, message: str) -> ApiError:
    return ApiError(401, code, message, headers={"WWW-Authenticate": "Bearer"})


def authenticate_key(g: state.Gateway, clear: str) -> Principal:
    """The principal of a tenant API key, or 401. Used by HTTP and websocket endpoints."""
    if not clear.isascii():  # keys are ASCII; anything else cannot even be hashed as sent
        raise _unauthorized("invalid_api_key", "unknown or revoked API key")
    with g.sessions() as s:
        try:
            row = tenant_repo.find_api_key(s, clear)
        except NotFound:
            raise _unauthorized("invalid_api_key", "unknown or revoked API key") from None
        tenant = s.get(Tenant, row.tenant_id)
        if tenant is None or tenant.disabled_at is not None:
            raise _unauthorized("invalid_api_key", "unknown or revoked API key")
        if row.instance_id is not None:
            inst = s.get(Instance, row.instance_id)
            if inst is None or inst.deleted_at is not None:
                # The key's only instance is gone: the key can do nothing any more.
                raise _unauthorized("invalid_api_key", "unknown or revoked API key")
        now = utcnow()
        if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
            # At most one write per key per LAST_USED_RESOLUTION, however busy the key is.
            s.execute(
                update(ApiKey)
                .where(
                    ApiKey.id == row.id,
                    or_(
                        ApiKey.last_used_at.is_(None),
                        ApiKey.last_used_at < now - LAST_USED_RESOLUTION,
                    ),
                )
                .values(last_used_at=now)
            )
            s.commit()
        return Principal(
            key_id=str(row.id),
            tenant_id=row.tenant_id,
            scopes=frozenset(row.scopes.split()),
            instance_id=row.instance_id,
        )


def enforce_rate_limit(g: state.Gateway, key_id: str, response: Response | None) -> None:
    limit = g.rate_limit
    if limit.requests <= 0:
        return
    now = time.time()
    window = math.floor(now / limit.window)
    key = g.bus.key("ratelimit", key_id, window)
    pipe = g.redis.pipeline()
    pipe.incr(key)
    pipe.expire(key, math.ceil(limit.window) + 1)
    count = int(pipe.execute()[0])
    remaining = max(0, limit.requests - count)
    if count > limit.requests:
        retry_after = round((window + 1) * limit.window - now, 3)
        raise ApiError(
            429,
            "rate_limited",
            f"more than {limit.requests} requests in {limit.window:g} s with this key",
            details={"limit": limit.requests, "window": limit.window},
            retryable=True,
            retry_after=max(retry_after, 0.001),
            headers={"X-RateLimit-Limit": str(limit.requests), "X-RateLimit-Remaining": "0"},
        )
    if response is not None:
        response.headers["X-RateLimit-Limit"] = str(limit.requests)
        response.headers["X-RateLimit-Remaining"] = str(remaining)


def tenant_key(scope: str, *, unrestricted: bool = False) -> Callable[..., Principal]:
    """A dependency: the calling tenant key, which must hold `scope` (and, if `unrestricted`,
    must not be limited to one instance)."""

    def dependency(
        request: Request,
        response: Response,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(tenant_bearer)],
    ) -> Principal:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise _unauthorized("missing_api_key", "send Authorization: Bearer <API key>")
        g = state.of(request)
        principal = authenticate_key(g, credentials.credentials)
        enforce_rate_limit(g, principal.key_id, response)
        if scope not in principal.scopes:
            raise ApiError(
                403,
                "insufficient_scope",
                f"this API key lacks the '{scope}' scope",
                details={"required": scope, "granted": sorted(principal.scopes)},
            )
        if unrestricted and principal.instance_id is not None:
            raise ApiError(
                403,
                "instance_restricted_key",
                "this API key is restricted to one instance; use a tenant-wide key",
            )
        return principal

    return dependency


def admin_key(
    request: Request,
    response: Response,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(admin_bearer)],
) -> None:
    """A dependency: the caller presents the deployment's admin key."""
    g = state.of(request)
    if g.admin_key is None:
        raise _unauthorized("admin_disabled", "the admin API is off (WAFLEET_ADMIN_KEY unset)")
    if credentials is None:
        raise _unauthorized("missing_admin_key", "send Authorization: Bearer <admin key>")
    if not hmac.compare_digest(credentials.credentials.encode(), g.admin_key):
        if credentials.credentials.startswith(tenant_repo.KEY_PREFIX):
            raise ApiError(403, "admin_key_required", "tenant API keys cannot use the admin API")
        raise _unauthorized("invalid_admin_key", "wrong admin key")
    enforce_rate_limit(g, "admin", response)


Read = Annotated[Principal, Depends(tenant_key(READ))]
Send = Annotated[Principal, Depends(tenant_key(SEND))]
Admin = Annotated[Principal, Depends(tenant_key(ADMIN))]
TenantAdmin = Annotated[Principal, Depends(tenant_key(ADMIN, unrestricted=True))]
TenantReader = Annotated[Principal, Depends(tenant_key(READ, unrestricted=True))]
AdminKey = Depends(admin_key)


def visible_instance(s: Session, principal: Principal, instance_id: uuid.UUID) -> Instance:
    """The caller's live instance, or 404 (missing, deleted, another tenant's, or outside the
    key's instance restriction — indistinguishable on purpose)."""
    instance = s.get(Instance, instance_id)
    if (
        instance is None
        or instance.deleted_at is not None
        or instance.tenant_id != principal.tenant_id
        or not principal.can_see(instance.id)
    ):
        raise ApiError(404, "not_found", "unknown instance")
    return instance


Row = TypeVar("Row")


def on_instance(
    s: Session,
    principal: Principal,
    stmt: Select[Row],
    column: InstrumentedAttribute[uuid.UUID] | InstrumentedAttribute[uuid.UUID | None],
    instance_id: uuid.UUID | None,
) -> Select[Row]:
    """Narrow a listing of the caller's rows to `instance_id` when asked (404 unless visible)
    and always to the key's instance restriction."""
    if instance_id is not None:
        visible_instance(s, principal, instance_id)
        stmt = stmt.where(column == instance_id)
    if principal.instance_id is not None:
        stmt = stmt.where(column == principal.instance_id)
    return stmt
