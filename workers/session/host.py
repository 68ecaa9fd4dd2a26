"""The session host: which instances this worker owns, and the order of every ownership change.

One `SessionHost` runs in each session worker's asyncio loop (DESIGN §3.1, §3.2):

* **Membership.** It heartbeats into `fleet_members`; the live, non-draining members are the
  candidates of rendezvous assignment (workers.assignment), so every worker computes the same
  owner for every instance and a join or leave moves only ~1/N of them.
* **Acquire.** For an instance assigned to it, the host takes the lease (the fencing token grows
  on every acquisition); if the previous owner still holds it, it simply tries again on the next
  round — so a crashed owner's instances move once its lease expires. Sessions are opened
  staggered (no thundering herd at start-up), then the host starts consuming `wa.out.<id>`.
* **Renew and self-fence.** All leases are renewed in one statement per round. A lease missing
  from the renewal is lost: its session is closed at once. Independently, every lease has a local
  deadline (the renewal's start on the monotonic clock + TTL − margin): when the host could not
  renew in time — database unreachable, process paused — it closes those sessions itself, because
  WhatsApp cannot check our token (a second socket for a device gets "conflict/replaced").
* **Hand over** (assignment moved, or SIGTERM): stop consuming the queue → close the session
  (which drains in-flight sends) → release the lease. The new owner then acquires (token + 1),
  opens, consumes, and rebuilds the backlog from the outbox. A rebalance leaves a session that
  is in the middle of linking (`Linkable.linking`: a QR or code shown, or paired and not yet
  logged in) with its owner for up to `link_grace` seconds; SIGTERM and a lost lease do not wait.

The host knows nothing about WhatsApp: sessions come from a `SessionFactory`, consumers are
switched through a `ConsumerControl` (the Celery consumer in production), and the host's database
calls run on a thread of its own (the stores are synchronous), so renewals never queue behind the
sessions' database work.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from storage.leases import Lease, Leases, Membership, assigned
from tasks.queues import out_queue
from workers.assignment import owner_of

logger = logging.getLogger(__name__)

FENCE_MARGIN = 0.2  # fraction of the lease TTL kept as a safety margin on the local deadline

T = TypeVar("T")


class Session(Protocol):
    """One instance's live WhatsApp connection, as the host drives it."""

    async def open(self) -> None:
        """Connect and log in (or wait for linking); return once running."""

    async def close(self) -> None:
        """Stop sending, drain in-flight sends, close the socket."""

    def wake(self, outbox_id: int) -> None:
        """An outbox row may be ready to send."""


@runtime_checkable
class Commandable(Protocol):
    """A session that applies instance commands (the instance row's desired state)."""

    async def command(self) -> None: ...


@runtime_checkable
class Linkable(Protocol):
    """A session that can be in the middle of linking (a QR or code shown, or paired and not yet
    logged in)."""

    linking: bool


def _is_linking(session: object) -> bool:
    return isinstance(session, Linkable) and session.linking


@runtime_checkable
class NumberChecker(Protocol):
    """A session that can ask WhatsApp whether a number has an account."""

    async def on_whatsapp(self, digits: str) -> bool | None: ...


@dataclass(frozen=True, slots=True)
class SessionContext:
    """What a session is given: its instance, its lease, and the fence to check before acting."""

    instance_id: uuid.UUID
    lease: Lease
    is_fenced_in: Callable[[], bool]  # True while this worker may still act for the instance


SessionFactory = Callable[[SessionContext], Session]


class ConsumerControl(Protocol):
    def add(self, queue: str) -> None: ...
    def cancel(self, queue: str) -> None: ...


@dataclass(slots=True)
class _Owned:
    lease: Lease
    deadline: float  # monotonic time by which the lease must have been renewed
    session: Session | None = None
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    closing: bool = False  # a hand-over or drop began: never start consuming again
    linking_since: float | None = None  # when a rebalance first found it linking


@dataclass(frozen=True, slots=True)
class HostTiming:
    lease_ttl: float
    renew_every: float
    heartbeat_every: float
    rebalance_every: float
    stagger: float
    # A rebalance leaves a linking session with its owner this long: handing it over would kill
    # the QR or code a person is scanning, or cut the pairing between pair-success and the
    # login (the new owner would log in as a device the server never registered → 401).
    link_grace: float = 120.0


class SessionHost:
    def __init__(
        self,
        *,
        worker_id: str,
        leases: Leases,
        membership: Membership,
        list_instances: Callable[[], Sequence[uuid.UUID]],
        factory: SessionFactory,
        consumers: ConsumerControl,
        timing: HostTiming,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.worker_id = worker_id
        self._leases = leases
        self._membership = membership
        self._list_instances = list_instances
        self._factory = factory
        self._consumers = consumers
        self._timing = timing
        self._monotonic = monotonic
        self._owned: dict[uuid.UUID, _Owned] = {}
        self._stopping = asyncio.Event()
        self._next_renew = 0.0
        self._next_heartbeat = 0.0
        self._starts = 0  # sessions opened in the current burst (for staggering)
        self._run_task: asyncio.Task[None] | None = None
        # The host's own database calls (heartbeat, renewals, assignment, acquire, release) get
        # a thread of their own: queued in the loop's default executor behind the sessions'
        # database work, a renewal can miss its deadline under load and self-fence every
        # instance at once (seen at 1,000 instances: tests/benchmarks/bench_fleet.py).
        self._control = ThreadPoolExecutor(max_workers=1, thread_name_prefix="session-host")

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one of the host's own blocking calls on its control thread."""
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._control, call)

    # -- public surface (called from the loop, or thread-safely by the Celery glue) -----------

    @property
    def owned(self) -> set[uuid.UUID]:
        return set(self._owned)

    @property
    def lease_count(self) -> int:
        """Leases held now (a plain length: safe to read from another thread, e.g. a scrape)."""
        return len(self._owned)

    def wake(self, instance_id: uuid.UUID, outbox_id: int) -> bool:
        """Route a wake-up to the instance's session; False if this host does not own it."""
        owned = self._owned.get(instance_id)
        if owned is None or owned.session is None or not self._fenced_in(instance_id):
            return False
        owned.session.wake(outbox_id)
        return True

    async def command(self, instance_id: uuid.UUID, open_wait: float = 60.0) -> bool:
        """Have the instance's session apply its durable command state; False if this host does
        not own it (or is handing it over). A session still opening is waited for first: it may
        have read the row before the command was written."""
        owned = self._owned.get(instance_id)
        if owned is None or owned.closing or not self._fenced_in(instance_id):
            return False
        if owned.session is None and owned.task is not None and not owned.task.done():
            await asyncio.wait({owned.task}, timeout=open_wait)  # opened, or failed to
        session = owned.session
        if session is None or owned.closing or self._owned.get(instance_id) is not owned:
            return False
        if not isinstance(session, Commandable):
            logger.warning("session of %s takes no commands", instance_id)
            return False
        await session.command()
        return True

    async def on_whatsapp(self, instance_id: uuid.UUID, digits: str) -> bool | None:
        """Ask through the instance's session; None if not owned here or not answerable."""
        owned = self._owned.get(instance_id)
        session = None if owned is None else owned.session
        if session is None or not self._fenced_in(instance_id):
            return None
        if not isinstance(session, NumberChecker):
            return None
        return await session.on_whatsapp(digits)

    async def run(self) -> None:
        """Run rounds until `shutdown()` is called."""
        self._run_task = asyncio.current_task()
        while not self._stopping.is_set():
            try:
                await self._round()
            except Exception:  # a failed round (database down...) must not end the host
                logger.exception("session host round failed; retrying")
            self._enforce_fence()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._timing.rebalance_every)

    async def shutdown(self) -> None:
        """Graceful handover of everything this worker owns (SIGTERM)."""
        self._stopping.set()
        if self._run_task is not None and not self._run_task.done():
            await asyncio.wait({self._run_task})  # finish the round in progress first
        with contextlib.suppress(Exception):
            await self._call(self._membership.heartbeat, self.worker_id, draining=True)
        await asyncio.gather(*(self._hand_over(i) for i in list(self._owned)))
        with contextlib.suppress(Exception):
            await self._call(self._membership.leave, self.worker_id)
        self._control.shutdown(wait=False)

    # -- one round ----------------------------------------------------------------------------

    async def _round(self) -> None:
        now = self._monotonic()
        if now >= self._next_heartbeat:
            await self._call(self._membership.heartbeat, self.worker_id)
            self._next_heartbeat = now + self._timing.heartbeat_every
        if now >= self._next_renew and self._owned:
            await self._renew()
        members = assigned(await self._call(self._membership.live))
        instances = await self._call(self._list_instances)
        desired = {i for i in instances if owner_of(str(i), members) == self.worker_id}
        for instance_id in [i for i in self._owned if i not in desired]:
            if not self._linking_holds(instance_id, now):
                await self._hand_over(instance_id)
        self._starts = 0
        for instance_id in sorted(desired - set(self._owned), key=str):
            if self._stopping.is_set():
                break
            if self._owned and self._monotonic() >= self._next_renew:
                await self._renew()  # a long burst of acquisitions must not outlive the first
            await self._acquire(instance_id)

    def _linking_holds(self, instance_id: uuid.UUID, now: float) -> bool:
        """Whether a rebalance leaves this instance here for now: it is linking, and has not
        been for longer than the grace. Shutdown (SIGTERM) and a lost lease do not wait."""
        owned = self._owned[instance_id]
        if not _is_linking(owned.session):
            owned.linking_since = None
            return False
        if owned.linking_since is None:
            owned.linking_since = now
            logger.info("instance %s is linking; its hand-over waits", instance_id)
        return now - owned.linking_since < self._timing.link_grace

    async def _acquire(self, instance_id: uuid.UUID) -> None:
        started = self._monotonic()
        lease = await self._call(self._leases.acquire, instance_id, self.worker_id)
        if lease is None:
            return  # the previous owner still holds it; its lease expires or it releases
        owned = _Owned(lease=lease, deadline=self._deadline(started))
        self._owned[instance_id] = owned
        delay = self._starts * self._timing.stagger
        self._starts += 1
        owned.task = asyncio.create_task(self._open(instance_id, owned, delay))

    async def _open(self, instance_id: uuid.UUID, owned: _Owned, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)  # staggered start: pacing, not synchronisation
        context = SessionContext(instance_id, owned.lease, lambda: self._fenced_in(instance_id))
        session = self._factory(context)
        try:
            await session.open()
        except Exception:
            logger.exception("session %s failed to open", instance_id)
            with contextlib.suppress(Exception):
                await session.close()
            self._owned.pop(instance_id, None)
            await self._call(self._leases.release, owned.lease)
            return
        owned.session = session
        owned.opened.set()
        if (
            not owned.closing
            and self._owned.get(instance_id) is owned
            and self._fenced_in(instance_id)
        ):
            self._consumers.add(out_queue(instance_id))

    async def _renew(self) -> None:
        started = self._monotonic()
        current = [o.lease for o in self._owned.values()]
        renewed = await self._call(self._leases.renew, self.worker_id, current)
        self._next_renew = started + self._timing.renew_every
        for instance_id, owned in list(self._owned.items()):
            lease = renewed.get(instance_id)
            if lease is None:
                logger.warning("lease on %s was lost; closing its session", instance_id)
                await self._drop(instance_id)
            else:
                owned.lease = lease
                owned.deadline = self._deadline(started)

    def _deadline(self, renewal_started: float) -> float:
        ttl = self._timing.lease_ttl
        return renewal_started + ttl - ttl * FENCE_MARGIN

    def _fenced_in(self, instance_id: uuid.UUID) -> bool:
        owned = self._owned.get(instance_id)
        return owned is not None and self._monotonic() < owned.deadline

    def _enforce_fence(self) -> None:
        for instance_id in [i for i in self._owned if not self._fenced_in(i)]:
            logger.warning("could not renew the lease on %s in time; stopping it", instance_id)
            asyncio.get_running_loop().create_task(self._drop(instance_id))

    async def _drop(self, instance_id: uuid.UUID) -> None:
        """Stop at once without releasing: the lease is (or is about to be) someone else's."""
        owned = self._owned.pop(instance_id, None)
        if owned is None:
            return
        owned.closing = True
        self._consumers.cancel(out_queue(instance_id))
        await self._close(owned)

    async def _hand_over(self, instance_id: uuid.UUID) -> None:
        """Stop consuming → close (drain) → release: the order of DESIGN §3.2."""
        owned = self._owned.get(instance_id)
        if owned is None or owned.closing:
            return
        owned.closing = True
        self._consumers.cancel(out_queue(instance_id))
        await self._close(owned)
        self._owned.pop(instance_id, None)
        await self._call(self._leases.release, owned.lease)

    async def _close(self, owned: _Owned) -> None:
        if owned.task is not None and not owned.task.done():
            await asyncio.wait({owned.task})  # let a half-open session finish opening first
        if owned.session is not None:
            try:
                await owned.session.close()
            except Exception:
                logger.exception("closing a session failed")
