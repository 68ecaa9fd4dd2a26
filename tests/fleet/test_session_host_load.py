"""SessionHost under load, in process on real Postgres: its lease work never waits for the
sessions' database work (a busy default executor), and a long burst of acquisitions renews the
leases it already holds before they pass their local deadline."""

from __future__ import annotations

import asyncio
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from storage.crypto import Keyring
from storage.leases import Lease, Leases, Membership
from storage.repositories import instances, tenants
from tests.fleet.test_session_host import Clock, Recorder
from workers.session.host import HostTiming, SessionHost


class Counting(Recorder):
    def __init__(self, expected: int) -> None:
        super().__init__()
        self.expected = expected
        self.all_consuming = asyncio.Event()

    def add(self, queue: str) -> None:
        super().add(queue)
        if sum(e.startswith("consume") for e in self.events) == self.expected:
            self.all_consuming.set()


def _instances(pg: sessionmaker[DbSession], keyring: Keyring, n: int) -> list[uuid.UUID]:
    with pg.begin() as s:
        tenant = tenants.create_tenant(s, f"load-{uuid.uuid4().hex[:6]}")
        return [instances.create_instance(s, keyring, tenant.id, f"i{k}").id for k in range(n)]


def _host(
    pg: sessionmaker[DbSession],
    ids: list[uuid.UUID],
    recorder: Recorder,
    leases: Leases,
    clock: Clock | None = None,
) -> SessionHost:
    return SessionHost(
        worker_id=f"w-{uuid.uuid4().hex[:6]}",
        leases=leases,
        membership=Membership(pg, member_ttl=30),
        list_instances=lambda: ids,
        factory=recorder.factory,
        consumers=recorder,
        timing=HostTiming(
            lease_ttl=30, renew_every=5, heartbeat_every=5, rebalance_every=0.01, stagger=0
        ),
        monotonic=clock or Clock(),
    )


def test_lease_work_does_not_queue_behind_session_work(
    pg: sessionmaker[DbSession], keyring: Keyring
) -> None:
    ids = _instances(pg, keyring, 3)
    recorder = Counting(len(ids))
    host = _host(pg, ids, recorder, Leases(pg, ttl=30))

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
        gate = threading.Event()
        busy = loop.run_in_executor(None, gate.wait)  # sessions' database work fills it
        try:
            runner = asyncio.create_task(host.run())
            await asyncio.wait_for(recorder.all_consuming.wait(), 60)
            assert host.owned == set(ids)
            assert not busy.done()  # all of it happened while the default executor was busy
        finally:
            gate.set()
            await busy
        await host.shutdown()
        await runner

    asyncio.run(scenario())


class SlowAcquire(Leases):
    """Each acquisition takes 10 s of (host) clock time: a loaded database."""

    def __init__(self, pg: sessionmaker[DbSession], clock: Clock) -> None:
        super().__init__(pg, ttl=30)
        self.clock = clock
        self.renewals = 0

    def acquire(self, instance_id: uuid.UUID, owner: str) -> Lease | None:
        self.clock.now += 10
        return super().acquire(instance_id, owner)

    def renew(self, owner: str, leases: object) -> dict[uuid.UUID, Lease]:
        self.renewals += 1
        return super().renew(owner, leases)  # type: ignore[arg-type]


def test_long_acquisition_burst_renews_what_it_holds(
    pg: sessionmaker[DbSession], keyring: Keyring
) -> None:
    ids = _instances(pg, keyring, 6)  # 60 s of acquisitions against a 30 s lease TTL
    clock = Clock()
    recorder = Counting(len(ids))
    leases = SlowAcquire(pg, clock)
    host = _host(pg, ids, recorder, leases, clock)

    async def scenario() -> None:
        runner = asyncio.create_task(host.run())
        await asyncio.wait_for(recorder.all_consuming.wait(), 60)
        assert host.owned == set(ids)
        assert "close" not in recorder.events  # nothing self-fenced on the way
        await host.shutdown()
        await runner

    asyncio.run(scenario())
    assert leases.renewals >= 1
