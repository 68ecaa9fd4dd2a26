"""`wafleet.deliver(outbox_id, instance_id)`: the wake-up an instance's owner consumes from
`wa.out.<id>`.

It carries only the outbox row id and its instance's id (DESIGN §3.3): the task hands the
wake-up to the session host of this process (tasks.runtime `deliver_hook`) without a database
round trip. A wake-up that carries the row id alone (published before the instance id was
added) looks the instance up by the row. Lost, duplicated or reordered wake-ups are harmless
because the actor works from the outbox; a wake-up that reaches a process that no longer owns
the instance is dropped for the same reason.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select

from storage.models import OutboxMessage
from tasks.app import app
from tasks.errors import Rejected
from tasks.queues import DELIVER_TASK
from tasks.runtime import current


def wake(outbox_id: int, instance_id: str | None = None) -> bool:
    rt = current()
    if rt.deliver_hook is None:
        raise Rejected("not_a_session_worker", "wafleet.deliver runs only on session workers")
    if instance_id is not None:
        try:
            iid = uuid.UUID(str(instance_id))
        except ValueError:
            raise Rejected("unknown_instance", "instance_id is not a valid id") from None
        return rt.deliver_hook(iid, outbox_id)
    with rt.sessions() as s:
        found = s.scalar(select(OutboxMessage.instance_id).where(OutboxMessage.id == outbox_id))
    if found is None:
        return False  # the row is gone (instance deleted): nothing to send
    return rt.deliver_hook(found, outbox_id)


@app.task(name=DELIVER_TASK, acks_late=True, throws=(Rejected,))
def deliver(outbox_id: int, instance_id: str | None = None) -> bool:
    return wake(int(outbox_id), instance_id)
