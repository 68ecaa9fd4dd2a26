"""Outbound actor benchmark: session-worker CPU per sent message, and idle CPU per owned instance.

Narrower than bench_fleet: the outbox actors (workers.session.actor) of many instances run in
this process on one asyncio loop with the default 6-thread executor, as in a session worker,
over a fresh Postgres database and Redis (status events go to the tenant's stream). The
WhatsApp side is a sender that acks at once, so the figures are the actor's own work: claiming
rows, fenced moves, status events. Accepts are written by a feeder thread at a fixed rate and
each is followed by a wake-up (the `wafleet.deliver` hand-off, without the Celery task); the
feeder thread's own CPU is subtracted.

Figures are process CPU time (user + system, every thread), not wall clock: the machine is
shared, so the load average is printed too.

* send: CPU ms per sent message at an offered rate over `--senders` instances;
* idle: CPU share of one core with `--instances` actors owned and nothing to send, connected
  (a socket) and parked (unlinked: no socket).

Run: `.venv/bin/python -m tests.benchmarks.bench_outbound [--quick]`. Figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import os
import random
import threading
import time
import uuid
from typing import Any

import redis
from sqlalchemy import func, select, text

from storage import migrations
from storage.bus import EventBus
from storage.crypto import Keyring
from storage.db import create_engine_from_url, session_factory
from storage.leases import Lease, Leases
from storage.models import OutboxMessage, OutboxStatus
from storage.repositories import instances, outbox, tenants
from tasks.events import publish_event
from workers.delivery import Pacer, RetryPolicy
from workers.session import actor as actor_module
from workers.session.actor import OutboundActor, OutboundMessage

RESCAN = float(getattr(actor_module, "RESCAN", 30.0))  # before: IDLE_WAIT, 30 s

DATABASE_URL = os.environ.get(
    "WAFLEET_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("WAFLEET_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MASTER_KEY = "46" * 32


class InstantSender:
    def __init__(self, connected: bool) -> None:
        self.is_connected = connected
        self.sent = 0
        self.target = 0
        self.done = asyncio.Event()

    def connected(self) -> bool:
        return self.is_connected

    async def send(self, message: OutboundMessage) -> None:
        await asyncio.sleep(0)
        self.sent += 1
        if self.sent == self.target:
            self.done.set()


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def _cpu() -> float:
    return time.process_time()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.admin = create_engine_from_url(DATABASE_URL, isolation_level="AUTOCOMMIT")
        self.name = f"wafleet_bench_out_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        self.db_url = DATABASE_URL.rsplit("/", 1)[0] + f"/{self.name}"
        migrations.upgrade(self.db_url)
        self.engine = create_engine_from_url(self.db_url)
        self.pg = session_factory(self.engine)
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.prefix = f"bench-out-{os.getpid()}"
        self.bus = EventBus(self.redis, self.prefix)
        keyring = Keyring.from_bytes(bytes.fromhex(MASTER_KEY))
        with self.pg.begin() as s:
            tenant = tenants.create_tenant(s, "bench-outbound")
            self.tenant_id = tenant.id
            self.ids = [
                instances.create_instance(s, keyring, tenant.id, f"i{n:05d}").id
                for n in range(args.instances)
            ]
        self.leases = Leases(self.pg, ttl=3600)
        self.lease: dict[uuid.UUID, Lease] = {}
        for iid in self.ids:
            lease = self.leases.acquire(iid, "bench")
            assert lease is not None
            self.lease[iid] = lease

    def close(self) -> None:
        self.engine.dispose()
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()
        keys = list(self.redis.scan_iter(f"{self.prefix}*"))
        if keys:
            self.redis.delete(*keys)

    def actor(self, iid: uuid.UUID, sender: InstantSender) -> OutboundActor:
        params = inspect.signature(OutboundActor).parameters
        extra: dict[str, Any] = {}
        if "events" in params:  # this branch: status events recorded with the row moves
            extra["events"] = actor_module.StatusEvents(self.bus, self.tenant_id, lambda ids: None)
            extra["rescan"] = self.args.rescan
        else:  # before: one publish_event transaction per event (as WhatsAppSession._emit)
            tenant_id = self.tenant_id

            async def on_event(event_type: str, data: dict[str, Any]) -> None:
                await asyncio.to_thread(
                    publish_event,
                    self.pg,
                    self.bus,
                    tenant_id=tenant_id,
                    instance_id=iid,
                    event_type=event_type,
                    data=data,
                )

            extra["on_event"] = on_event
        return OutboundActor(
            instance_id=iid,
            lease=lambda: self.lease[iid],
            sessions=self.pg,
            sender=sender,
            policy=RetryPolicy(),
            pacer=Pacer(rate=1_000_000, burst=1_000_000, uniform=random.uniform),
            uniform=random.uniform,
            loop_time=lambda: asyncio.get_running_loop().time(),
            **extra,
        )

    def sent_count(self) -> int:
        with self.pg() as s:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(OutboxMessage)
                    .where(OutboxMessage.status == OutboxStatus.SENT)
                )
                or 0
            )

    async def run_send(self) -> dict[str, float]:
        args = self.args
        senders = self.ids[: args.senders]
        sender = InstantSender(connected=True)
        actors = {iid: self.actor(iid, sender) for iid in senders}
        tasks = [asyncio.create_task(a.run()) for a in actors.values()]
        await asyncio.sleep(2)  # first scans
        loop = asyncio.get_running_loop()
        total = int(args.rate * args.seconds)
        sender.target = total
        feeder_cpu: list[float] = []

        def feed() -> None:
            t0 = time.thread_time()
            start = time.monotonic()
            tick = threading.Event()
            for n in range(total):
                iid = senders[n % len(senders)]
                with self.pg.begin() as s:
                    outbox.accept_outbound(
                        s,
                        tenant_id=self.tenant_id,
                        instance_id=iid,
                        idempotency_key=f"k{n}",
                        wa_message_id=f"3EB0{uuid.uuid4().hex[:18].upper()}",
                        chat_jid=f"55219{n % 20:07d}@s.whatsapp.net",
                        kind="text",
                        payload={"text": f"m{n}"},
                    )
                loop.call_soon_threadsafe(actors[iid].wake)
                ahead = start + (n + 1) / args.rate - time.monotonic()
                if ahead > 0:
                    tick.wait(ahead)  # offered rate
            feeder_cpu.append(time.thread_time() - t0)

        cpu0, wall0 = _cpu(), time.monotonic()
        await asyncio.to_thread(feed)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sender.done.wait(), 120)
        cpu, wall = _cpu() - cpu0 - feeder_cpu[0], time.monotonic() - wall0
        for a in actors.values():
            a.stop()
        await asyncio.gather(*tasks)
        sent = await asyncio.to_thread(self.sent_count)
        return {
            "offered": total / args.seconds,
            "sent": sent,
            "wall": wall,
            "cpu_ms_per_msg": cpu * 1000 / max(1, sender.sent),
            "feeder_ms_per_msg": feeder_cpu[0] * 1000 / total,
        }

    async def run_idle(self, connected: bool) -> dict[str, float]:
        sender = InstantSender(connected=connected)
        actors = [self.actor(iid, sender) for iid in self.ids]
        tasks = [asyncio.create_task(a.run()) for a in actors]
        await asyncio.sleep(self.args.settle)  # every actor's first scan
        cpu0, wall0 = _cpu(), time.monotonic()
        await asyncio.sleep(self.args.idle)
        cpu, wall = _cpu() - cpu0, time.monotonic() - wall0
        for a in actors:
            a.stop()
        await asyncio.gather(*tasks)
        return {"share": cpu / wall, "wall": wall}


def run(args: argparse.Namespace) -> str:
    bench = Bench(args)
    lines = [f"load average at start (1/5/15 min): {_load()}"]
    try:
        send = asyncio.run(bench.run_send())
        lines.append(
            f"send: {send['offered']:.0f} msg/s offered over {args.senders} instances, "
            f"{send['sent']:.0f} sent in {send['wall']:.1f} s: actor CPU "
            f"{send['cpu_ms_per_msg']:.2f} ms per sent message "
            f"(feeder {send['feeder_ms_per_msg']:.2f} ms/msg subtracted); load {_load()}"
        )
        for connected in (True, False) if args.idle else ():
            idle = asyncio.run(bench.run_idle(connected))
            what = "connected" if connected else "parked (no socket)"
            lines.append(
                f"idle, {args.instances} actors {what}, rescan {args.rescan:g} s: "
                f"{idle['share'] * 100:.1f}% of one core over {idle['wall']:.0f} s; load {_load()}"
            )
    finally:
        bench.close()
    text_ = "\n".join(f"- {line}" for line in lines)
    print(text_, flush=True)
    return text_


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="fewer instances, shorter phases")
    p.add_argument("--instances", type=int, default=1000)
    p.add_argument("--senders", type=int, default=100)
    p.add_argument("--rate", type=float, default=100.0, help="offered msg/s")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the send phase")
    p.add_argument("--idle", type=float, default=60.0, help="seconds of each idle phase; 0: none")
    p.add_argument(
        "--rescan", type=float, default=RESCAN, help="actors' safety rescan (this branch only)"
    )
    p.add_argument("--settle", type=float, default=20.0, help="seconds before idle is measured")
    args = p.parse_args(argv)
    if args.quick:
        args.instances, args.senders, args.seconds, args.idle, args.settle = 200, 50, 5, 20, 10
    return args


def main(argv: list[str] | None = None) -> str:
    """Markdown lines of figures (tests.benchmarks writes them under bench:outbound)."""
    return run(parse(argv if argv is not None else []))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
