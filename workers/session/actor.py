"""The outbound actor of one owned instance: the outbox, sent in order (DESIGN §3.3–§3.6).

The Postgres outbox is the truth; the actor only reads it and moves rows forward, each move a
fenced UPDATE that also checks this worker still holds the instance's lease with its token
(storage.leases.held_by). If a move finds the fence gone, the actor stops: another owner has
(or will have) the instance.

Order: per chat, only the lowest unfinished `chat_seq` may be sent (a failed attempt that will
be retried blocks the chat's later messages, so they still leave in accept order); chats are
independent. Pacing (workers.delivery.Pacer) spaces sends of the whole instance. Progressive
retries are driven by `attempts`/`next_attempt_at` in the row (never a broker countdown).
While the session is disconnected, messages are parked: nothing is attempted, so no attempt is
burned; with `park_expiry`, a message parked longer than that expires. A row left `sending` by
a crashed owner is sent again with the same WhatsApp message id, which the recipient's client
treats as the same message.

Outbound paused (the instance row's `outbound_paused`, by the API or a pause-class error) is
checked on every scan and again in the transaction that claims each row, right before its send.

Errors are classified in one place (workers.delivery.classify): retry → back to `queued` with
the next delay; pause → the instance's outbound is paused (until resumed) and the row waits;
permanent → `failed` with the code. Exhausted retries → `failed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from storage.leases import Lease, held_by
from storage.models import Instance, OutboxMessage, OutboxStatus, utcnow
from workers.delivery import Outcome, Pacer, RetryPolicy, SendFailure, Uniform, classify
from workers.session.metrics import METRICS

logger = logging.getLogger(__name__)

IDLE_WAIT = 30.0  # seconds between outbox scans without a wake-up (lost wake-ups are harmless)


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    outbox_id: int
    wa_message_id: str
    chat_jid: str
    kind: str
    payload: dict[str, Any]


class Sender(Protocol):
    """The session's send path: returns when the server acked, raises SendFailed otherwise."""

    def connected(self) -> bool: ...

    async def send(self, message: OutboundMessage) -> None: ...


class SendFailed(Exception):
    def __init__(self, failure: SendFailure) -> None:
        super().__init__(f"{failure.code}: {failure.text}")
        self.failure = failure


class FencedOut(Exception):
    """This worker no longer holds the instance's lease: the actor must stop."""


EventSink = Callable[[str, dict[str, Any]], Awaitable[None]]


class OutboundActor:
    def __init__(
        self,
        *,
        instance_id: uuid.UUID,
        lease: Callable[[], Lease],
        sessions: sessionmaker[Session],
        sender: Sender,
        policy: RetryPolicy,
        pacer: Pacer,
        uniform: Uniform,
        loop_time: Callable[[], float],
        db_now: Callable[[], datetime] = utcnow,
        park_expiry: float = 0.0,
        on_event: EventSink | None = None,
    ) -> None:
        self.instance_id = instance_id
        self._lease = lease
        self._sessions = sessions
        self._sender = sender
        self._policy = policy
        self._pacer = pacer
        self._uniform = uniform
        self._loop_time = loop_time
        self._db_now = db_now
        self._park_expiry = park_expiry
        self._on_event = on_event
        self._wakeup = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        self._wakeup.set()

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def run(self) -> None:
        """Send until stopped or fenced out."""
        pending = self._wakeup.is_set()
        self._wakeup = asyncio.Event()  # bound to the loop that runs the actor
        if pending:
            self._wakeup.set()
        try:
            while not self._stopping:
                wait = await self._step()
                self._wakeup.clear()
                if self.stopping:  # stop() may have been called while we awaited
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), wait)
        except FencedOut:
            logger.warning("outbound actor of %s fenced out; stopping", self.instance_id)

    async def _step(self) -> float:
        """Send every head-of-chat message that is due; return how long to wait."""
        heads, paused = await asyncio.to_thread(self._due_heads)
        if paused:
            return IDLE_WAIT
        if not self._sender.connected():
            await asyncio.to_thread(self._expire_parked)
            return IDLE_WAIT  # parked: a reconnect wakes us, no attempt is burned
        now = self._db_now()
        next_due: datetime | None = None
        for row in heads:
            if self._stopping:
                break
            if row.next_attempt_at > now:
                next_due = (
                    row.next_attempt_at if next_due is None else min(next_due, row.next_attempt_at)
                )
                continue
            ready = self._pacer.ready_at(self._loop_time())
            delay = ready - self._loop_time()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing: a deliberate gap, not synchronisation
            await self._attempt(row)
        if next_due is None:
            return IDLE_WAIT if not heads else 0.0
        return max(0.0, (next_due - self._db_now()).total_seconds())

    # -- database side (threads) --------------------------------------------------------------

    def _due_heads(self) -> tuple[list[OutboxMessage], bool]:
        with self._sessions() as s:
            instance = s.get(Instance, self.instance_id)
            if instance is None or instance.deleted_at is not None:
                raise FencedOut
            if instance.outbound_paused:
                return [], True
            open_rows = (OutboxStatus.QUEUED, OutboxStatus.SENDING)
            heads = (
                select(OutboxMessage.chat_jid, func.min(OutboxMessage.chat_seq).label("seq"))
                .where(
                    OutboxMessage.instance_id == self.instance_id,
                    OutboxMessage.status.in_(open_rows),
                )
                .group_by(OutboxMessage.chat_jid)
                .subquery()
            )
            rows = s.scalars(
                select(OutboxMessage)
                .join(
                    heads,
                    (OutboxMessage.chat_jid == heads.c.chat_jid)
                    & (OutboxMessage.chat_seq == heads.c.seq),
                )
                .where(OutboxMessage.instance_id == self.instance_id)
                .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
            ).all()
            s.expunge_all()
            return list(rows), False

    def _move(
        self, s: Session, row_id: int, expected: tuple[OutboxStatus, ...], **values: Any
    ) -> bool:
        """A fenced state move. False if the row had already moved on (a receipt can advance a
        `sending` row to `delivered` before the server ack is recorded); FencedOut if this
        worker no longer holds the instance."""
        lease = self._lease()
        now = self._db_now()
        fence = held_by(self.instance_id, lease.owner, lease.token, now)
        result = s.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == row_id, OutboxMessage.status.in_(expected), fence)
            .values(updated_at=utcnow(), **values)
            .returning(OutboxMessage.id)
        ).first()
        if result is not None:
            return True
        if not s.scalar(select(fence)):
            raise FencedOut
        return False

    def _mark_sending(self, row: OutboxMessage) -> bool:
        """Claim the row for a send; False if outbound was paused meanwhile (PATCH, a 463):
        the pause takes effect before the next send, not only at the next scan."""
        with self._sessions.begin() as s:
            paused = s.scalar(
                select(Instance.outbound_paused).where(Instance.id == self.instance_id)
            )
            if paused:
                return False
            self._move(
                s, row.id, (OutboxStatus.QUEUED, OutboxStatus.SENDING), status=OutboxStatus.SENDING
            )
            return True

    def _mark_sent(self, row: OutboxMessage) -> None:
        with self._sessions.begin() as s:
            moved = self._move(
                s,
                row.id,
                (OutboxStatus.SENDING,),
                status=OutboxStatus.SENT,
                sent_at=utcnow(),
                attempts=row.attempts + 1,
            )
            if not moved:  # a receipt already moved it past `sent`: record the send anyway
                self._move(
                    s,
                    row.id,
                    (OutboxStatus.DELIVERED, OutboxStatus.READ),
                    sent_at=utcnow(),
                    attempts=row.attempts + 1,
                )
            s.execute(
                update(Instance)
                .where(Instance.id == self.instance_id)
                .values(messages_sent=Instance.messages_sent + 1)
            )

    def _mark_failed_attempt(
        self, row: OutboxMessage, failure: SendFailure, outcome: Outcome
    ) -> OutboxStatus:
        attempts = row.attempts + (0 if outcome is Outcome.PARK else 1)
        with self._sessions.begin() as s:
            if outcome is Outcome.PARK:
                status, next_at = OutboxStatus.QUEUED, self._db_now()
            elif outcome is Outcome.PERMANENT or self._policy.exhausted(attempts):
                status = OutboxStatus.FAILED
                next_at = row.next_attempt_at
            else:
                status = OutboxStatus.QUEUED
                delay = self._policy.delay(attempts, self._uniform)
                next_at = self._db_now() + timedelta(seconds=delay)
            self._move(
                s,
                row.id,
                (OutboxStatus.SENDING,),
                status=status,
                attempts=attempts,
                next_attempt_at=next_at,
                last_error_code=failure.code[:32],
                last_error_text=failure.text[:500],
            )
            if outcome is Outcome.PAUSE:
                s.execute(
                    update(Instance)
                    .where(Instance.id == self.instance_id)
                    .values(outbound_paused=True, pause_reason=failure.code[:200])
                )
        return status

    def _expire_parked(self) -> None:
        """Expire queued messages past their `expires_at` (or parked longer than park_expiry)."""
        now = self._db_now()
        lease = self._lease()
        with self._sessions.begin() as s:
            cond: ColumnElement[bool] = OutboxMessage.expires_at.is_not(None) & (
                OutboxMessage.expires_at <= now
            )
            if self._park_expiry:
                cond = cond | (
                    OutboxMessage.created_at <= now - timedelta(seconds=self._park_expiry)
                )
            s.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.instance_id == self.instance_id,
                    OutboxMessage.status == OutboxStatus.QUEUED,
                    cond,
                    held_by(self.instance_id, lease.owner, lease.token, now),
                )
                .values(status=OutboxStatus.EXPIRED, updated_at=utcnow(), last_error_code="expired")
            )

    # -- one attempt ----------------------------------------------------------------------------

    async def _attempt(self, row: OutboxMessage) -> None:
        if row.expires_at is not None and row.expires_at <= self._db_now():
            await asyncio.to_thread(self._expire_parked)
            return
        if not await asyncio.to_thread(self._mark_sending, row):
            return
        message = OutboundMessage(row.id, row.wa_message_id, row.chat_jid, row.kind, row.payload)
        started = self._loop_time()
        self._pacer.sent(started)
        try:
            await self._sender.send(message)
        except SendFailed as exc:
            outcome = classify(exc.failure)
            status = await asyncio.to_thread(self._mark_failed_attempt, row, exc.failure, outcome)
            METRICS.attempt_failed(exc.failure, outcome, final=status is OutboxStatus.FAILED)
            if status is OutboxStatus.FAILED:
                await self._emit(
                    "whatsapp:message-status",
                    {
                        "id": row.wa_message_id,
                        "status": "failed",
                        "code": exc.failure.code,
                        "outbox_id": row.id,
                        "chat": row.chat_jid,
                    },
                )
            return
        METRICS.acked(row.created_at, self._loop_time() - started)
        await asyncio.to_thread(self._mark_sent, row)
        await self._emit(
            "whatsapp:message-status",
            {"id": row.wa_message_id, "status": "sent", "outbox_id": row.id, "chat": row.chat_jid},
        )

    async def _emit(self, event_type: str, data: dict[str, Any]) -> None:
        if self._on_event is not None:
            await self._on_event(event_type, data)
