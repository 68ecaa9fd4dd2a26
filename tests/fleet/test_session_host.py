"""SessionHost in process on real Postgres: an owner that cannot renew its lease in time stops
its sessions by itself (DESIGN §3.1 — WhatsApp cannot check our fencing token), and wake-ups
are refused once it is fenced out."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable

from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from storage.crypto import Keyring
from storage.leases import Lease, Leases, Membership
from storage.repositories import instances, tenants
from tasks.queues import out_queue
from workers.assignment import owner_of
from workers.session.host import HostTiming, Session, SessionContext, SessionHost


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.opened = asyncio.Event()
        self.closed = asyncio.Event()
        self.consuming = asyncio.Event()

    def factory(self, ctx: SessionContext) -> Session:
        recorder = self

        class Probe:
            async def open(self) -> None:
                recorder.events.append("open")
                recorder.opened.set()

            async def close(self) -> None:
                recorder.events.append("close")
                recorder.closed.set()

            def wake(self, outbox_id: int) -> None:
                recorder.events.append(f"wake {outbox_id}")

        return Probe()

    def add(self, queue: str) -> None:
        self.events.append(f"consume {queue}")
        self.consuming.set()

    def cancel(self, queue: str) -> None:
        self.events.append(f"cancel {queue}")


class Unreachable(Leases):
    """The lease table as seen while the database is unreachable."""

    def renew(self, owner: str, leases: Iterable[Lease]) -> dict[uuid.UUID, Lease]:
        raise ConnectionError("database unreachable")


def test_owner_that_cannot_renew_stops_itself(
    pg: sessionmaker[DbSession], keyring: Keyring
) -> None:
    with pg.begin() as s:
        tenant = tenants.create_tenant(s, "fence")
        instance_id = instances.create_instance(s, keyring, tenant.id, "i").id
    clock = Clock()
    recorder = Recorder()
    leases = Leases(pg, ttl=30)
    host = SessionHost(
        worker_id="w",
        leases=leases,
        membership=Membership(pg, member_ttl=30),
        list_instances=lambda: [instance_id],
        factory=recorder.factory,
        consumers=recorder,
        timing=HostTiming(
            lease_ttl=30, renew_every=5, heartbeat_every=5, rebalance_every=0.01, stagger=0
        ),
        monotonic=clock,
    )

    async def scenario() -> None:
        runner = asyncio.create_task(host.run())
        await asyncio.wait_for(recorder.opened.wait(), 30)
        await asyncio.wait_for(recorder.consuming.wait(), 30)
        assert host.wake(instance_id, 7)
        host._leases = Unreachable(pg, ttl=30)
        clock.now += 30 * 0.8 + 1  # past the local deadline (TTL minus the safety margin)
        await asyncio.wait_for(recorder.closed.wait(), 30)
        assert not host.wake(instance_id, 8)  # fenced out: no more sends
        await host.shutdown()
        await runner

    asyncio.run(scenario())
    queue = out_queue(instance_id)
    assert recorder.events[:3] == ["open", f"consume {queue}", "wake 7"]
    assert recorder.events[3:5] == [f"cancel {queue}", "close"]
    assert "wake 8" not in recorder.events


def test_a_linking_session_stays_through_a_rebalance_for_the_grace(
    pg: sessionmaker[DbSession], keyring: Keyring
) -> None:
    """A second worker that wins the instance does not take it while a QR is being scanned (the
    person's QR would die, or the pairing be cut before login): the hand-over waits until the
    session is linked, or the grace is over."""
    with pg.begin() as s:
        tenant = tenants.create_tenant(s, "linking")
        instance_id = instances.create_instance(s, keyring, tenant.id, "i").id
    rival = next(
        n for n in (f"z{k}" for k in range(100)) if owner_of(str(instance_id), ["w", n]) == n
    )
    clock = Clock()
    recorder = Recorder()
    linking = {"now": True}

    def factory(ctx: SessionContext) -> Session:
        probe = recorder.factory(ctx)

        class Linking:
            linking = property(lambda self: linking["now"])

            async def open(self) -> None:
                await probe.open()

            async def close(self) -> None:
                await probe.close()

            def wake(self, outbox_id: int) -> None:
                probe.wake(outbox_id)

        return Linking()

    membership = Membership(pg, member_ttl=30)
    host = SessionHost(
        worker_id="w",
        leases=Leases(pg, ttl=30),
        membership=membership,
        list_instances=lambda: [instance_id],
        factory=factory,
        consumers=recorder,
        timing=HostTiming(
            lease_ttl=30,
            renew_every=5,
            heartbeat_every=5,
            rebalance_every=0.01,
            stagger=0,
            link_grace=60,
        ),
        monotonic=clock,
    )

    async def rounds(n: int) -> None:
        for _ in range(n):
            await host._round()
            await asyncio.sleep(0)

    async def scenario() -> None:
        await rounds(1)
        await asyncio.wait_for(recorder.opened.wait(), 30)
        await rounds(3)  # let the opening task finish and start consuming
        assert instance_id in host.owned
        membership.heartbeat(rival)  # the rival joins and wins the instance
        await rounds(3)
        clock.now += 59  # inside the grace: still here, still consuming
        await rounds(3)
        assert instance_id in host.owned
        assert "close" not in recorder.events
        linking["now"] = False  # linked: the next round hands it over
        await rounds(1)
        assert instance_id not in host.owned
        assert recorder.events[-2:] == [f"cancel {out_queue(instance_id)}", "close"]

        # Again, never linked: the grace bounds the wait.
        membership.leave(rival)
        linking["now"] = True
        recorder.opened.clear()
        await rounds(1)
        await asyncio.wait_for(recorder.opened.wait(), 30)
        await rounds(3)
        assert instance_id in host.owned
        membership.heartbeat(rival)
        await rounds(3)
        clock.now += 59
        await rounds(1)
        assert instance_id in host.owned
        clock.now += 2
        await rounds(1)
        assert instance_id not in host.owned
        await host.shutdown()

    asyncio.run(scenario())
