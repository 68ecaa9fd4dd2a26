"""A small helper for Python producers of outbound messages.

    from workers.producer import connect
    wafleet = connect("redis://broker:6379/0", key_prefix="wafleet")
    result = wafleet.send_message(tenant_id, instance_id, "+5511987654321", text="Olá!",
                                  idempotency_key="booking-42-reminder")
    result.get(timeout=10)   # {"outbox_id", "wa_message_id", "status", "created", ...}

Services without wafleet installed enqueue the same thing with plain Celery:
`app.send_task("wafleet.send_message", kwargs={...}, queue="wa.accept")`, with
`broker_transport_options={"priority_steps": [0], "global_keyprefix": "<prefix>:"}` on Redis.
"""

from __future__ import annotations

from typing import Any

from tasks.errors import Rejected
from tasks.queues import ACCEPT_QUEUE, SEND_BULK_TASK, SEND_MESSAGE_TASK

# Celery rebuilds a task's exception on the producer side only from modules already imported
# there; importing the error tree here makes a rejection arrive as tasks.errors.Rejected.
__all__ = ["Producer", "Rejected"]


class Producer:
    """Publishes wafleet's public tasks on a configured Celery app."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def send_message(
        self,
        tenant_id: str,
        instance_id: str,
        to: str,
        *,
        text: str | None = None,
        media: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        expires_in: float | None = None,
    ) -> Any:
        """Enqueue `wafleet.send_message`; returns the Celery AsyncResult."""
        kwargs = {
            "tenant_id": str(tenant_id),
            "instance_id": str(instance_id),
            "to": to,
            "text": text,
            "media": media,
            "idempotency_key": idempotency_key,
            "expires_in": expires_in,
        }
        return self.app.send_task(SEND_MESSAGE_TASK, kwargs=kwargs, queue=ACCEPT_QUEUE)

    def send_bulk(
        self,
        tenant_id: str,
        instance_id: str,
        items: list[dict[str, Any]],
        batch_id: str | None = None,
    ) -> Any:
        """Enqueue `wafleet.send_bulk` (each item: to, text|media, idempotency_key?)."""
        kwargs = {
            "tenant_id": str(tenant_id),
            "instance_id": str(instance_id),
            "items": items,
            "batch_id": batch_id,
        }
        return self.app.send_task(SEND_BULK_TASK, kwargs=kwargs, queue=ACCEPT_QUEUE)
