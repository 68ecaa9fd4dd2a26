"""The outbound actor of one owned instance: the outbox, sent in order (DESIGN §3.3–§3.6).

The Postgres outbox is the truth; the actor only reads it and moves rows forward through the
fenced statements of storage.repositories.outbox: every claim and every move also checks that
this worker still holds the instance's lease with its token. If a move finds the fence gone,
the actor stops: another owner has (or will have) the instance.

One pass, in as few transactions as possible:
* **claim** — one statement moves up to N due chat heads to `sending` (N = what pacing allows
  back to back, at most MAX_BATCH; one per chat by construction), only while the lease is held
  and outbound is not paused;
* **send** them one after another, each waiting for its server ack. Before each send the host's
  local lease deadline (`fenced_in`) is checked, and a row is sent only within CLAIM_FRESH of
  the last database fence check; otherwise the rest go back through a new claim;
* **settle** — after each send one transaction records its outcome (`sent` and the instance's
  counter, a retry, a failure; expiries; releases) with the status event's webhook rows; then,
  while claimed rows remain, it re-checks that outbound was not paused meanwhile (else they go
  back to `queued`), and once none remain it claims the next batch. Status events reach the
  tenant's stream after that commit.
So a message costs two transactions when it arrives alone, and one plus a share of a claim in
a burst (before: a head scan, a `sending` move, a `sent` move and an event, each its own).

Order: per chat, only the lowest unfinished `chat_seq` may be sent (a failed attempt that will
be retried blocks the chat's later messages, so they still leave in accept order); chats are
independent. Pacing (workers.delivery.Pacer) spaces sends of the whole instance. Progressive
retries are driven by `attempts`/`next_attempt_at` in the row (never a broker countdown).
While the session is disconnected, messages are parked: nothing is attempted, so no attempt is
burned; with `park_expiry`, a message parked longer than that expires. A row left `sending` by
a crashed owner is claimed again and sent with the same WhatsApp message id, which the
recipient's client treats as the same message.

Idle: the actor sleeps until a wake-up (`wafleet.deliver`, a reconnect, a command), the
earliest due time it knows of (a retry's `next_attempt_at`, a pacing gap, a parked message's
expiry), or a jittered safety rescan every `rescan` seconds (lost wake-ups are harmless, just
late) — not a poll per instance.

Outbound paused (the instance row's `outbound_paused`, by the API or a pause-class error) is
checked by every claim; a batch stops at a pause-class error and its unsent rows go back.

Errors are classified in one place (workers.delivery.classify): retry → back to `queued` with
the next delay; pause → the instance's outbound is paused (until resumed) and the row waits;
park → back to `queued`, no attempt counted; permanent → `failed` with the code. Exhausted
retries → `failed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from storage.bus import EventBus
from storage.leases import Lease
from storage.models import OutboxStatus, utcnow
from storage.repositories import outbox
from storage.repositories.outbox import Claimed, Fence
from tasks.events import record_webhooks_many
from workers.delivery import Outcome, Pacer, RetryPolicy, SendFailure, Uniform, classify
from workers.session.metrics import METRICS

logger = logging.getLogger(__name__)

RESCAN = 300.0  # default seconds between an idle actor's safety rescans (Settings.outbox_rescan)
RESCAN_JITTER = 0.2  # ± fraction, so a thousand actors do not rescan together
MAX_BATCH = 16  # chat heads claimed in one statement
CLAIM_FRESH = 1.0  # seconds: a claimed row is sent only this soon after its claim's fence check
RECHECK = 0.05  # seconds: floor of the wait when a due head could not be claimed (row locked)
STATUS_EVENT = "whatsapp:message-status"


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


Event = tuple[str, str, dict[str, Any]]  # (event id, type, data)


@dataclass(frozen=True, slots=True)
class StatusEvents:
    """Where the actor's `whatsapp:message-status` events go: webhook rows in the transaction
    that moves the rows, then the tenant's stream and the webhook tasks after its commit."""

    bus: EventBus
    tenant_id: uuid.UUID
    enqueue_webhooks: Callable[[list[int]], None]

    def record(self, session: Session, instance_id: uuid.UUID, events: list[Event]) -> list[int]:
        return record_webhooks_many(
            session,
            self.tenant_id,
            [(e_id, e_type, instance_id, data) for e_id, e_type, data in events],
        )

    def announce(self, instance_id: uuid.UUID, events: list[Event], deliveries: list[int]) -> None:
        for _, event_type, data in events:
            self.bus.publish(self.tenant_id, event_type, instance_id, data)
        if deliveries:
            self.enqueue_webhooks(deliveries)


@dataclass(frozen=True, slots=True)
class _Sent:
    row: Claimed
    acked_at: datetime


@dataclass(frozen=True, slots=True)
class _Failed:
    row: Claimed
    failure: SendFailure
    outcome: Outcome


@dataclass(slots=True)
class _Batch:
    """What one batch of sends did, for the settling transaction."""

    sent: list[_Sent] = field(default_factory=list)
    failed: list[_Failed] = field(default_factory=list)
    expired: list[Claimed] = field(default_factory=list)
    unsent: list[Claimed] = field(default_factory=list)  # claimed, not attempted: released


@dataclass(frozen=True, slots=True)
class _Pass:
    rows: list[Claimed]  # newly claimed
    wait: float | None  # seconds until something is known to fall due; None: nothing known
    went_on: bool = True  # False: outbound was paused meanwhile, the queued rows went back


def _always() -> bool:
    return True


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
        events: StatusEvents | None = None,
        fenced_in: Callable[[], bool] = _always,
        rescan: float = RESCAN,
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
        self._events = events
        self._fenced_in = fenced_in  # the host's local lease deadline (no database round trip)
        self._rescan = rescan
        self._wakeup = asyncio.Event()
        self._stopping = False
        self.passes = 0  # passes over the outbox so far (tests, metrics)

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
                self._wakeup.clear()  # a wake-up from here on means "look again"
                wait = await self._step()
                self.passes += 1
                if self.stopping:  # stop() may have been called while we awaited
                    break
                rescan = self._rescan * self._uniform(1 - RESCAN_JITTER, 1 + RESCAN_JITTER)
                wait = rescan if wait is None else min(wait, rescan)
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), wait)
        except FencedOut:
            logger.warning("outbound actor of %s fenced out; stopping", self.instance_id)

    async def _step(self) -> float | None:
        """Send every head-of-chat message that is due; return how long until more may be."""
        if not self._sender.connected():
            # Parked: a reconnect wakes us; no attempt is burned. Only expiries fall due.
            return await asyncio.to_thread(self._park)
        limit = self._allowance()
        if limit == 0:
            return self._pacing_wait()
        step = await asyncio.to_thread(self._settle_and_claim, _Batch(), [], limit)
        queue = step.rows
        claimed_at = self._loop_time()
        while queue:
            batch = _Batch()
            while queue and not batch.sent and not batch.failed:
                await self._attempt(queue, batch, claimed_at)
            more = not queue and not self.stopping and self._sender.connected()
            limit = self._allowance() if more else 0
            step = await asyncio.to_thread(self._settle_and_claim, batch, queue, limit)
            claimed_at = self._loop_time()  # its fenced moves or its claim checked the fence
            if step.rows:
                queue = step.rows
            elif not step.went_on:
                return None  # paused meanwhile (the rest went back): a resume wakes us
            if not queue and limit == 0 and not self.stopping:
                return self._pacing_wait()
        return step.wait

    def _allowance(self) -> int:
        """How many sends pacing allows back to back now (0: not yet)."""
        return min(MAX_BATCH, self._pacer.allowance(self._loop_time()))

    def _pacing_wait(self) -> float:
        now = self._loop_time()
        return max(0.0, self._pacer.ready_at(now) - now)

    # -- sending ----------------------------------------------------------------------------

    async def _attempt(self, queue: list[Claimed], batch: _Batch, claimed_at: float) -> None:
        """Send the first claimed row of `queue` (popped), or give the whole queue back."""
        if not self._fenced_in():
            raise FencedOut  # the host could not renew the lease in time; it closes us
        now = self._loop_time()
        if (
            self.stopping
            or now - claimed_at > CLAIM_FRESH
            or self._pacer.ready_at(now) > now
            or not self._sender.connected()
        ):
            batch.unsent.extend(queue)
            queue.clear()
            return
        row = queue.pop(0)
        if row.expires_at is not None and row.expires_at <= self._db_now():
            batch.expired.append(row)
            return
        self._pacer.sent(now)
        message = OutboundMessage(row.id, row.wa_message_id, row.chat_jid, row.kind, row.payload)
        try:
            await self._sender.send(message)
        except SendFailed as exc:
            outcome = classify(exc.failure)
            batch.failed.append(_Failed(row, exc.failure, outcome))
            if outcome in (Outcome.PAUSE, Outcome.PARK):
                batch.unsent.extend(queue)
                queue.clear()
            return
        METRICS.acked(row.created_at, self._loop_time() - now)
        batch.sent.append(_Sent(row, self._db_now()))

    # -- database side (threads) --------------------------------------------------------------

    def _fence(self) -> Fence:
        lease = self._lease()
        return Fence(self.instance_id, lease.owner, lease.token, self._db_now())

    def _settle_and_claim(self, batch: _Batch, queue: list[Claimed], limit: int) -> _Pass:
        """One transaction: record what was sent; then, if claimed rows are still queued, check
        that outbound was not paused meanwhile (else give them back); else claim the next batch
        (up to `limit`)."""
        events: list[Event] = []
        deliveries: list[int] = []
        went_on = True
        with self._sessions.begin() as s:
            conn = s.connection()
            fence = self._fence()
            finals = self._settle(conn, fence, batch, events)
            if events and self._events is not None:
                deliveries = self._events.record(s, self.instance_id, events)
            if queue and not outbox.sendable(conn, fence):
                outbox.release(conn, fence, [row.id for row in queue])
                went_on = False
            rows = outbox.claim_heads(conn, fence, limit) if limit else []
            wait: float | None = 0.0
            fenced_out = False
            if limit and not rows:  # why nothing, and when the next head falls due
                state = outbox.head_state(conn, fence)
                fenced_out = state.gone or not state.fenced_in
                if state.paused or state.next_due is None:
                    wait = None  # a resume or an accept wakes us
                else:
                    due_in = (state.next_due - fence.now).total_seconds()
                    wait = max(RECHECK, due_in)  # ≤ 0: a due head is locked; look again soon
        if events and self._events is not None:
            try:
                self._events.announce(self.instance_id, events, deliveries)
            except Exception:  # the moves and webhook rows are committed; the stream is a notice
                logger.exception("status events of %s not announced", self.instance_id)
        for failed, final in zip(batch.failed, finals, strict=True):  # committed: count them
            METRICS.attempt_failed(failed.failure, failed.outcome, final=final)
        if fenced_out:  # after the commit: what this batch did is recorded
            raise FencedOut
        return _Pass(rows, wait, went_on)

    def _settle(self, conn: Any, fence: Fence, batch: _Batch, events: list[Event]) -> list[bool]:
        """Record the batch's outcomes; returns, per failed attempt, whether it ended `failed`."""
        finals: list[bool] = []
        for sent in batch.sent:
            row = sent.row
            if not outbox.mark_sent(conn, fence, row.id, sent.acked_at):
                self._moved_elsewhere(conn, fence)
            events.append(self._event(row, "sent"))
        outbox.count_sent(conn, self.instance_id, len(batch.sent))
        for failed in batch.failed:
            status = self._record_failure(conn, fence, failed)
            finals.append(status is OutboxStatus.FAILED)
            if status is OutboxStatus.FAILED:
                events.append(self._event(failed.row, "failed", code=failed.failure.code))
        for row in batch.expired:
            outbox.mark_expired(conn, fence, row.id)
        outbox.release(conn, fence, [row.id for row in batch.unsent])
        return finals

    def _record_failure(self, conn: Any, fence: Fence, failed: _Failed) -> OutboxStatus:
        row, failure, outcome = failed.row, failed.failure, failed.outcome
        attempts = row.attempts + (0 if outcome is Outcome.PARK else 1)
        if outcome is Outcome.PARK:
            status, next_at = OutboxStatus.QUEUED, fence.now
        elif outcome is Outcome.PERMANENT or self._policy.exhausted(attempts):
            status, next_at = OutboxStatus.FAILED, row.next_attempt_at
        else:
            status = OutboxStatus.QUEUED
            delay = self._policy.delay(attempts, self._uniform)
            next_at = fence.now + timedelta(seconds=delay)
        moved = outbox.mark_failed(
            conn,
            fence,
            row.id,
            status=status,
            attempts=attempts,
            next_attempt_at=next_at,
            code=failure.code,
            text=failure.text,
        )
        if not moved:
            self._moved_elsewhere(conn, fence)
        if outcome is Outcome.PAUSE:
            outbox.pause_outbound(conn, self.instance_id, failure.code)
        return status

    @staticmethod
    def _moved_elsewhere(conn: Any, fence: Fence) -> None:
        """A move found its row elsewhere: fine (a receipt, an API cancel), unless the fence
        is gone."""
        if not outbox.is_fenced_in(conn, fence):
            raise FencedOut

    def _event(self, row: Claimed, status: str, **extra: str) -> Event:
        data: dict[str, Any] = {"id": row.wa_message_id, "status": status, **extra}
        data.update(outbox_id=row.id, chat=row.chat_jid)
        return (f"ev:{uuid.uuid4()}", STATUS_EVENT, data)

    def _park(self) -> float | None:
        """Expire parked messages that are due to; return when the next one will be."""
        with self._sessions.begin() as s:
            fence = self._fence()
            expires, oldest = outbox.expire_parked(s.connection(), fence, self._park_expiry)
        due = [expires] if expires is not None else []
        if self._park_expiry and oldest is not None:
            due.append(oldest + timedelta(seconds=self._park_expiry))
        if not due:
            return None
        return max(RECHECK, (min(due) - fence.now).total_seconds())
