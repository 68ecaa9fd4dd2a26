"""`wafleet.deliver(outbox_id)`: the wake-up an instance's owner consumes from `wa.out.<id>`.

It carries only the outbox row id (DESIGN §3.3): the task looks up the row's instance and hands
the wake-up to the session host of this process (tasks.runtime `deliver_hook`). Lost,
duplicated or reordered wake-ups are harmless because the actor works from the outbox; a
wake-up that reaches a process that no longer owns the instance is dropped for the same reason.
"""

from __future__ import annotations

from sqlalchemy import select

from storage.models import OutboxMessage
from tasks.app import app
from tasks.errors import Rejected
from tasks.queues import DELIVER_TASK
from tasks.runtime import current


def wake(outbox_id: int) -> bool:
    rt = current()
    if rt.deliver_hook is None:
        raise Rejected("not_a_session_worker", "wafleet.deliver runs only on session workers")
    with rt.sessions() as s:
        instance_id = s.scalar(
            select(OutboxMessage.instance_id).where(OutboxMessage.id == outbox_id)
        )
    if instance_id is None:
        return False  # the row is gone (instance deleted): nothing to send
    return rt.deliver_hook(instance_id, outbox_id)


@app.task(name=DELIVER_TASK, acks_late=True, throws=(Rejected,))
def deliver(outbox_id: int) -> bool:
    return wake(int(outbox_id))
