"""Tenants and their API keys (stored as SHA-256 hashes; the clear key is shown once)."""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.db import conflicts_wrapped
from storage.errors import Conflict, InvalidValue, NotFound
from storage.models import ApiKey, Tenant, utcnow

MAX_NAME = 100
SCOPES = frozenset({"read", "send", "admin"})
KEY_PREFIX = "wfk_"  # recognisable in logs and secret scanners


def _check_name(name: str, what: str) -> str:
    name = name.strip()
    if not name:
        raise InvalidValue(f"{what} name is empty", field="name")
    if len(name) > MAX_NAME:
        raise InvalidValue(f"{what} name is longer than {MAX_NAME} characters", field="name")
    return name


def create_tenant(session: Session, name: str) -> Tenant:
    tenant = Tenant(name=_check_name(name, "tenant"))
    session.add(tenant)
    try:
        with conflicts_wrapped():
            session.flush()
    except Conflict as exc:
        raise Conflict(
            "a tenant with this name exists", constraint="uq_tenants_name", name=tenant.name
        ) from exc
    return tenant


def list_tenants(session: Session) -> Sequence[Tenant]:
    return session.scalars(select(Tenant).order_by(Tenant.created_at, Tenant.name)).all()


def get_tenant(session: Session, ref: str | uuid.UUID) -> Tenant:
    """A tenant by id or by name."""
    tenant: Tenant | None = None
    if isinstance(ref, uuid.UUID):
        tenant = session.get(Tenant, ref)
    else:
        try:
            tenant = session.get(Tenant, uuid.UUID(ref))
        except ValueError:
            tenant = None
        if tenant is None:
            tenant = session.scalar(select(Tenant).where(Tenant.name == ref.strip()))
    if tenant is None:
        raise NotFound("unknown tenant", tenant=str(ref))
    return tenant


def hash_api_key(key: str) -> str:
    # API keys are 32 random bytes, so a fast unsalted hash is enough: there is nothing to
    # brute-force, and lookups must be O(1) on every request.
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(
    session: Session,
    tenant_id: uuid.UUID,
    name: str,
    scopes: Sequence[str] = ("read", "send"),
    instance_id: uuid.UUID | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the clear key, which is never stored."""
    unknown = set(scopes) - SCOPES
    if unknown or not scopes:
        raise InvalidValue(
            f"scopes must be a non-empty subset of {sorted(SCOPES)}",
            field="scopes",
            unknown=sorted(unknown),
        )
    secret = base64.b32encode(os.urandom(20)).decode().lower().rstrip("=")
    clear = f"{KEY_PREFIX}{secret}"
    row = ApiKey(
        tenant_id=tenant_id,
        name=_check_name(name, "key"),
        prefix=clear[:12],
        key_hash=hash_api_key(clear),
        scopes=" ".join(sorted(set(scopes))),
        instance_id=instance_id,
    )
    session.add(row)
    with conflicts_wrapped():
        session.flush()
    return row, clear


def find_api_key(session: Session, clear: str) -> ApiKey:
    """The live key matching `clear`, or NotFound (unknown, malformed or revoked)."""
    if not clear.startswith(KEY_PREFIX):
        raise NotFound("unknown API key")
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_api_key(clear)))
    if row is None or row.revoked_at is not None:
        raise NotFound("unknown API key")
    return row


def revoke_api_key(session: Session, key_id: uuid.UUID) -> None:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound("unknown API key", key_id=str(key_id))
    row.revoked_at = utcnow()
