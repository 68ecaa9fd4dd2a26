"""Instances: one WhatsApp number of a tenant, with its per-instance data key."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from storage.crypto import Keyring, new_data_key, wrap_data_key
from storage.db import conflicts_wrapped
from storage.errors import Conflict, InvalidValue, NotFound
from storage.leases import Lease, held_by
from storage.models import (
    DeviceCredentials,
    Instance,
    InstanceDataKey,
    InstanceStatus,
    SignalRecord,
    utcnow,
)
from storage.phone import parse_phone

MAX_NAME = 100


def create_instance(
    session: Session,
    keyring: Keyring,
    tenant_id: uuid.UUID,
    name: str,
    phone_number: str | None = None,
) -> Instance:
    """A new instance and its data key (wrapped under the current master key).

    Raises Conflict if the tenant already has a live instance with this name, or a live
    instance anywhere in the fleet owns this number (one socket per number, DESIGN §3.1).
    """
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise InvalidValue(f"instance name must be 1 to {MAX_NAME} characters", field="name")
    phone = parse_phone(phone_number) if phone_number else None
    instance = Instance(id=uuid.uuid4(), tenant_id=tenant_id, name=name, phone_number=phone)
    session.add(instance)
    try:
        with conflicts_wrapped():
            session.flush()
    except Conflict as exc:
        which = str(exc.details.get("constraint", ""))
        if "phone" in which:
            raise Conflict(
                "a live instance already owns this phone number",
                constraint="uq_instances_phone_live",
                phone_number=phone,
            ) from exc
        raise Conflict(
            "this tenant already has an instance with this name",
            constraint="uq_instances_tenant_name_live",
            name=name,
        ) from exc
    wrapped = wrap_data_key(keyring, instance.id, new_data_key())
    session.add(
        InstanceDataKey(
            instance_id=instance.id, master_key_id=wrapped.master_key_id, wrapped_key=wrapped.blob
        )
    )
    session.flush()
    return instance


def list_instances(
    session: Session, tenant_id: uuid.UUID | None = None, *, include_deleted: bool = False
) -> Sequence[Instance]:
    stmt = select(Instance).order_by(Instance.created_at, Instance.name)
    if tenant_id is not None:
        stmt = stmt.where(Instance.tenant_id == tenant_id)
    if not include_deleted:
        stmt = stmt.where(Instance.deleted_at.is_(None))
    return session.scalars(stmt).all()


def get_instance(
    session: Session, instance_id: uuid.UUID, tenant_id: uuid.UUID | None = None
) -> Instance:
    """A live instance; NotFound if missing, deleted, or owned by another tenant."""
    instance = session.get(Instance, instance_id)
    if (
        instance is None
        or instance.deleted_at is not None
        or (tenant_id is not None and instance.tenant_id != tenant_id)
    ):
        raise NotFound("unknown instance", instance=str(instance_id))
    return instance


def delete_instance(
    session: Session, instance_id: uuid.UUID, tenant_id: uuid.UUID | None = None
) -> Instance:
    """Soft-delete the instance and destroy its secrets (crypto-shredding: the data key,
    device credentials and Signal records are deleted; messages and notes stay)."""
    instance = get_instance(session, instance_id, tenant_id)
    instance.deleted_at = utcnow()
    instance.status = InstanceStatus.LOGGED_OUT
    for model in (SignalRecord, DeviceCredentials, InstanceDataKey):
        session.execute(delete(model).where(model.instance_id == instance_id))
    session.flush()
    return instance


def destroy_device(session: Session, instance_id: uuid.UUID) -> bool:
    """Forget the linked device (logout): its credentials and every Signal record go; the data
    key stays, so the instance can be linked again. True if credentials were stored."""
    session.execute(delete(SignalRecord).where(SignalRecord.instance_id == instance_id))
    gone = session.execute(
        delete(DeviceCredentials)
        .where(DeviceCredentials.instance_id == instance_id)
        .returning(DeviceCredentials.instance_id)
    ).first()
    return gone is not None


def is_linked(session: Session, instance_id: uuid.UUID) -> bool:
    """Whether device credentials are stored (the instance was linked and not logged out)."""
    return session.get(DeviceCredentials, instance_id) is not None


def update_fenced(
    session: Session, instance_id: uuid.UUID, lease: Lease, now: datetime, **values: object
) -> bool:
    """Change an instance's state only while `lease` still holds it (DESIGN §3.1: every state
    change checks the fencing token). False if the lease was lost."""
    result = session.execute(
        update(Instance)
        .where(Instance.id == instance_id, held_by(instance_id, lease.owner, lease.token, now))
        .values(updated_at=utcnow(), **values)
        .returning(Instance.id)
    ).first()
    return result is not None
