"""Opening an instance's secrets, and master-key rotation (`wafleet keys rotate`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, sessionmaker

from storage.crypto import (
    Keyring,
    RecordCipher,
    WrappedKey,
    open_with_master,
    rewrap_data_key,
    seal_with_master,
    unwrap_data_key,
)
from storage.errors import NotFound
from storage.models import InstanceDataKey, WebhookEndpoint, utcnow

ROTATE_BATCH = 200


def record_cipher(session: Session, keyring: Keyring, instance_id: uuid.UUID) -> RecordCipher:
    """The cipher for an instance's records; KeyUnavailable if the master key does not fit."""
    row = session.get(InstanceDataKey, instance_id)
    if row is None:
        raise NotFound(
            "instance has no data key (deleted or never created)", instance=str(instance_id)
        )
    data_key = unwrap_data_key(keyring, instance_id, WrappedKey(row.master_key_id, row.wrapped_key))
    return RecordCipher(instance_id, data_key)


@dataclass(frozen=True, slots=True)
class RotationReport:
    data_keys: int
    webhook_secrets: int


def _in_batches(
    factory: sessionmaker[Session],
    model: Any,
    stale: ColumnElement[bool],
    fix: Callable[[Any], None],
) -> int:
    """Apply `fix` to every `stale` row, ROTATE_BATCH rows per short transaction."""
    done = 0
    while True:
        with factory.begin() as session:
            rows = session.scalars(
                select(model).where(stale).limit(ROTATE_BATCH).with_for_update()
            ).all()
            for row in rows:
                fix(row)
            done += len(rows)
        if len(rows) < ROTATE_BATCH:
            return done


def rotate_master_key(factory: sessionmaker[Session], keyring: Keyring) -> RotationReport:
    """Re-wrap every data key and re-seal every webhook secret under `keyring.current`.

    Runs in short transactions of ROTATE_BATCH rows so live processes are never blocked for
    long; rows already under the current key are skipped, so an interrupted rotation can simply
    be run again. Rows wrapped by a key missing from the keyring raise KeyUnavailable.
    """
    current = keyring.current.key_id

    def rewrap(row: InstanceDataKey) -> None:
        wrapped = rewrap_data_key(
            keyring, row.instance_id, WrappedKey(row.master_key_id, row.wrapped_key)
        )
        row.master_key_id, row.wrapped_key = wrapped.master_key_id, wrapped.blob
        row.rotated_at = utcnow()

    def reseal(ep: WebhookEndpoint) -> None:
        for purpose, attr in (
            (f"webhook:{ep.id}", "secret_ciphertext"),
            (f"webhook:{ep.id}:previous", "previous_secret_ciphertext"),
        ):
            blob = getattr(ep, attr)
            if blob is not None:
                secret = open_with_master(keyring, ep.master_key_id, purpose, blob)
                setattr(ep, attr, seal_with_master(keyring, purpose, secret))
        ep.master_key_id = current

    return RotationReport(
        data_keys=_in_batches(
            factory, InstanceDataKey, InstanceDataKey.master_key_id != current, rewrap
        ),
        webhook_secrets=_in_batches(
            factory, WebhookEndpoint, WebhookEndpoint.master_key_id != current, reseal
        ),
    )
