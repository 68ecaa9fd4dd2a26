"""Instance commands — connect (by QR or pairing code), disconnect, logout, delete — that reach
the instance's current owner wherever it is (DESIGN §3.1, issue #6 §1).

A command is durable first: `command()` writes the desired state on the instance row
(`desired_state`, `link_method`, `link_phone`, and `command_seq + 1`) and commits; only then it
publishes the internal `wafleet.session_command(instance_id, seq)` to the current lease holder's
`wa.session.<worker_id>` queue. The owner's session re-reads the row and makes it true. So:
* an instance with no owner right now (between two owners, no worker alive) is acted on by the
  next owner when it opens the session — it reads the same row;
* a command that reaches a worker which no longer owns the instance (the lease moved while the
  message travelled) is forwarded to the current holder, at most `MAX_HOPS` times; when there is
  no other holder, the durable state is what the next owner applies. Either way it is logged,
  never silently dropped.
* repeats are harmless: the session applies a given `command_seq` once.

Public task `wafleet.instance_command` (queue `wa.accept`, run by routing workers):
    tenant_id, instance_id, command ("connect" | "disconnect" | "logout"),
    method ("qr" | "code", connect only; default qr), phone (E.164, for method "code";
    default: the instance's own number)
Result: {"instance_id", "command", "seq", "owner"} (owner: the worker the command was sent to,
or null when the next owner applies it). Errors: tasks.errors.Rejected — invalid_request,
invalid_phone, unknown_tenant, unknown_instance, instance_deleted.

`on_whatsapp(instance_id, phone)` asks the owner whether a number has a WhatsApp account
(request/reply: `wafleet.check_number` on the owner's queue, the answer through the result
backend, bounded by a timeout); None when nobody owns the instance, it is not connected, or the
owner does not answer in time.

Pause and resume of outbound are not commands: they are the instance row's `outbound_paused`
(the owner's actor checks it before every send) plus `tasks.accept.wake_instance` on resume.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update

from storage.errors import InvalidValue, NotFound
from storage.leases import Leases
from storage.models import DesiredState, Instance, InstanceStatus, LinkMethod
from storage.phone import parse_phone
from storage.repositories import instances as instance_repo
from tasks.app import app
from tasks.errors import Rejected
from tasks.queues import (
    ACCEPT_QUEUE,
    CHECK_NUMBER_TASK,
    INSTANCE_COMMAND_TASK,
    SESSION_COMMAND_TASK,
    session_queue,
)
from tasks.runtime import current

logger = logging.getLogger(__name__)

COMMANDS = {
    "connect": DesiredState.CONNECT,
    "disconnect": DesiredState.DISCONNECT,
    "logout": DesiredState.LOGOUT,
}
NUMBER_CHECK_WAIT = 5.0  # seconds diagnose waits for the owner's usync answer
MAX_HOPS = 3  # forwards of one command between workers before relying on the durable state
DELETE_LOGOUT_WAIT = 15.0  # seconds a delete waits for the owner to log the companion out


@dataclass(frozen=True, slots=True)
class Sent:
    instance_id: uuid.UUID
    command: str
    seq: int
    owner: str | None  # the worker it was published to; None: the next owner applies it

    def as_dict(self) -> dict[str, Any]:
        return {
            "instance_id": str(self.instance_id),
            "command": self.command,
            "seq": self.seq,
            "owner": self.owner,
        }


def _uuid(value: object, code: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise Rejected(code, f"{what} is not a valid id") from None


def owner_of(instance_id: uuid.UUID) -> str | None:
    """The worker holding the instance's live lease, if any."""
    holder = Leases(current().sessions, ttl=1.0).holder(instance_id)
    return None if holder is None else holder.owner


def route(
    instance_id: uuid.UUID, seq: int, hops: int = 0, exclude: str | None = None
) -> str | None:
    """Publish `wafleet.session_command` to the current holder's queue; the holder, or None when
    there is no live holder (other than `exclude`) — the next owner then applies the row."""
    owner = owner_of(instance_id)
    if owner is None or owner == exclude:
        return None
    app.send_task(
        SESSION_COMMAND_TASK, args=[str(instance_id), seq, hops], queue=session_queue(owner)
    )
    return owner


def command(
    instance_id: object,
    name: str,
    *,
    tenant_id: object | None = None,
    method: str | None = None,
    phone: str | None = None,
) -> Sent:
    """Write the desired state durably, then send it to the owner (see the module docstring)."""
    desired = COMMANDS.get(name)
    if desired is None:
        raise Rejected("invalid_request", f"command must be one of {sorted(COMMANDS)}")
    iid = _uuid(instance_id, "unknown_instance", "instance_id")
    values: dict[str, Any] = {"desired_state": desired}
    with current().sessions.begin() as s:
        instance = s.get(Instance, iid, with_for_update=True)
        if instance is None or (
            tenant_id is not None and str(instance.tenant_id) != str(tenant_id)
        ):
            raise Rejected("unknown_instance", "no such instance for this tenant")
        if instance.deleted_at is not None:
            raise Rejected("instance_deleted", "the instance was deleted")
        if desired is DesiredState.CONNECT:
            link = _link_method(method)
            values["link_method"] = link
            if link is LinkMethod.CODE:
                values["link_phone"] = _link_phone(phone, instance.phone_number)
            if instance.status is not InstanceStatus.CONNECTED:
                values["status"] = InstanceStatus.CONNECTING
        elif method is not None or phone is not None:
            raise Rejected("invalid_request", f"{name} takes no method or phone")
        seq = instance.command_seq + 1
        s.execute(update(Instance).where(Instance.id == iid).values(command_seq=seq, **values))
    owner = route(iid, seq)
    if owner is None:
        logger.info(
            "instance %s has no live owner now; its next owner applies %s (seq %d)",
            iid,
            name,
            seq,
        )
    return Sent(iid, name, seq, owner)


def _link_method(method: str | None) -> LinkMethod:
    try:
        return LinkMethod(method or "qr")
    except ValueError:
        raise Rejected("invalid_request", "method must be 'qr' or 'code'") from None


def _link_phone(phone: str | None, own_number: str | None) -> str:
    if phone is None and own_number is None:
        raise Rejected("invalid_phone", "linking by code needs the phone number to link")
    try:
        return parse_phone(phone or own_number or "", field="phone")
    except InvalidValue as exc:
        raise Rejected("invalid_phone", exc.text) from None


def delete(instance_id: uuid.UUID, tenant_id: uuid.UUID, wait: float = DELETE_LOGOUT_WAIT) -> bool:
    """Delete an instance: a linked one is logged out first (the companion disappears from the
    phone), then soft-deleted with its secrets destroyed. Returns whether no linked companion is
    left behind: False when the owner could not log it out within `wait` seconds (nobody owns
    it, or the server is unreachable) — the keys are destroyed anyway and the companion stays
    listed on the phone until removed there."""
    rt = current()
    with rt.sessions() as s:
        instance_repo.get_instance(s, instance_id, tenant_id)
        linked = instance_repo.is_linked(s, instance_id)
    clean = True
    if linked:
        sent = command(instance_id, "logout", tenant_id=tenant_id)
        clean = sent.owner is not None and _wait_unlinked(instance_id, wait)
        if not clean:
            logger.warning(
                "instance %s deleted without a server logout (owner %s did not confirm)",
                instance_id,
                sent.owner,
            )
    with rt.sessions.begin() as s:
        try:
            instance_repo.delete_instance(s, instance_id, tenant_id)
        except NotFound:
            raise Rejected("unknown_instance", "no such instance for this tenant") from None
    return clean


def _wait_unlinked(instance_id: uuid.UUID, wait: float) -> bool:
    tick = threading.Event()
    for _ in range(max(1, int(wait * 5))):
        with current().sessions() as s:
            if not instance_repo.is_linked(s, instance_id):
                return True
        tick.wait(0.2)  # polling the owner's effect in the database
    return False


@app.task(name=INSTANCE_COMMAND_TASK, acks_late=True, queue=ACCEPT_QUEUE, throws=(Rejected,))
def instance_command(
    tenant_id: str,
    instance_id: str,
    command_name: str,
    method: str | None = None,
    phone: str | None = None,
) -> dict[str, Any]:
    """Public task `wafleet.instance_command` (see the module docstring)."""
    return command(
        instance_id, command_name, tenant_id=tenant_id, method=method, phone=phone
    ).as_dict()


@app.task(name=SESSION_COMMAND_TASK, acks_late=True, throws=(Rejected,))
def session_command(instance_id: str, seq: int, hops: int = 0) -> str:
    """Internal: make the instance's session apply its durable command state (session workers).

    Returns "applied", "forwarded" (to the current holder) or "durable" (no other holder: the
    next owner applies the row)."""
    rt = current()
    if rt.command_hook is None:
        raise Rejected("not_a_session_worker", "wafleet.session_command runs on session workers")
    iid = _uuid(instance_id, "unknown_instance", "instance_id")
    if rt.command_hook(iid):
        return "applied"
    if hops >= MAX_HOPS:
        logger.warning(
            "command %s for %s not applied after %d forwards; its next owner applies the row",
            seq,
            iid,
            hops,
        )
        return "durable"
    holder = route(iid, int(seq), hops + 1, exclude=rt.worker_id)
    if holder is None:
        logger.info(
            "command %s for %s: not owned here and no other live owner; the next owner "
            "applies the row",
            seq,
            iid,
        )
        return "durable"
    logger.info("command %s for %s forwarded to %s", seq, iid, holder)
    return "forwarded"


def on_whatsapp(
    instance_id: uuid.UUID, digits: str, wait: float = NUMBER_CHECK_WAIT
) -> bool | None:
    """Whether `digits` (E.164 without '+') has a WhatsApp account, asked through the owner;
    None if it cannot be told now (see the module docstring)."""
    owner = owner_of(instance_id)
    if owner is None:
        return None
    result = app.send_task(
        CHECK_NUMBER_TASK, args=[str(instance_id), digits], queue=session_queue(owner), expires=wait
    )
    try:
        answer = result.get(timeout=wait, propagate=True, disable_sync_subtasks=False)
    except Exception as exc:  # timeout, a rejection, the backend unreachable: unknown
        logger.info("number check through %s for %s failed: %r", owner, instance_id, exc)
        return None
    finally:
        result.forget()
    return answer if isinstance(answer, bool) else None


@app.task(name=CHECK_NUMBER_TASK, acks_late=True, throws=(Rejected,))
def check_number(instance_id: str, digits: str) -> bool | None:
    """Internal: ask WhatsApp through the instance's session (session workers)."""
    rt = current()
    if rt.number_hook is None:
        raise Rejected("not_a_session_worker", "wafleet.check_number runs on session workers")
    return rt.number_hook(_uuid(instance_id, "unknown_instance", "instance_id"), str(digits))


__all__ = [
    "COMMANDS",
    "MAX_HOPS",
    "Sent",
    "command",
    "delete",
    "instance_command",
    "on_whatsapp",
    "route",
]
