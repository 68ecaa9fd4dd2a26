"""`wafleet worker session`: a Celery worker hosting a `SessionHost` (DESIGN §4).

Shape (shared/research/celery.md §2.2, §4.2, §4.4): the worker runs the threads pool (tasks are
quick hand-offs: `wafleet.deliver` wake-ups); a consumer bootstep starts one asyncio loop thread
running the host, and switches consumers of `wa.out.<instance_id>` at runtime through the Celery
consumer (`call_soon(add_task_queue/cancel_task_queue)`, thread-safe in kombu 5.7). Every worker
also consumes its own `wa.session.<worker_id>` queue: `wafleet.session_command` (tasks.commands)
asks the host to have an owned instance's session apply its durable command state (connect,
disconnect, logout), or forwards it to the current owner. Warm shutdown (SIGTERM) hands every
instance over before the process exits; a broker reconnect re-adds the owned queues.

The session backend is a factory named `module:callable` (`--session-factory`): the callable
takes the Settings and returns a `SessionFactory`.

With `WAFLEET_SESSION_METRICS_PORT` set (default 0: off), the process serves its Prometheus
metrics (workers.session.metrics) on `WAFLEET_SESSION_METRICS_HOST`:port/metrics; a port that
cannot be bound stops the worker at start-up.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from celery import bootsteps
from sqlalchemy import select

from config.logging import celery_flags
from config.settings import Settings, SettingsError
from storage.leases import Leases, Membership
from storage.models import Instance
from tasks import runtime
from tasks.queues import SESSION_QUEUE_PREFIX
from workers.routing import build_runtime, configure_producer
from workers.session.host import HostTiming, SessionFactory, SessionHost
from workers.session.metrics import METRICS

logger = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 60.0
COMMAND_TIMEOUT = 120.0  # seconds one command may take on the loop (a logout waits for it)


def load_factory(path: str, settings: Settings) -> SessionFactory:
    """Import `module:callable` and call it with the settings; it returns the SessionFactory."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"session factory must be 'module:callable', got {path!r}")
    maker: Callable[[Settings], SessionFactory] = getattr(
        importlib.import_module(module_name), attr
    )
    return maker(settings)


class CeleryConsumers:
    """ConsumerControl over the Celery consumer; remembers queues to re-add after a restart."""

    def __init__(self) -> None:
        self._consumer: Any = None
        self._queues: set[str] = set()
        self._lock = threading.Lock()

    def bind(self, consumer: Any) -> None:
        with self._lock:
            self._consumer = consumer
            queues = sorted(self._queues)
        for queue in queues:
            consumer.call_soon(consumer.add_task_queue, queue)

    def add(self, queue: str) -> None:
        with self._lock:
            self._queues.add(queue)
            consumer = self._consumer
        if consumer is not None:
            consumer.call_soon(consumer.add_task_queue, queue)

    def cancel(self, queue: str) -> None:
        with self._lock:
            self._queues.discard(queue)
            consumer = self._consumer
        if consumer is not None:
            consumer.call_soon(consumer.cancel_task_queue, queue)


class HostThread:
    """The asyncio loop thread of one worker process, and the host running on it."""

    def __init__(self, host: SessionHost) -> None:
        self.host = host
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="session-host", daemon=True)
        self._done = threading.Event()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        # run_forever, not run_until_complete(host.run()): the shutdown coroutine must still
        # find a running loop after the host's rounds have ended.
        self.loop.create_task(self.host.run())
        try:
            self.loop.run_forever()
        finally:
            self._done.set()

    def start(self) -> None:
        self._thread.start()

    def wake(self, instance_id: uuid.UUID, outbox_id: int) -> bool:
        async def call() -> bool:
            return self.host.wake(instance_id, outbox_id)

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=30)

    def command(self, instance_id: uuid.UUID) -> bool:
        future = asyncio.run_coroutine_threadsafe(self.host.command(instance_id), self.loop)
        return future.result(timeout=COMMAND_TIMEOUT)

    def on_whatsapp(self, instance_id: uuid.UUID, digits: str) -> bool | None:
        future = asyncio.run_coroutine_threadsafe(
            self.host.on_whatsapp(instance_id, digits), self.loop
        )
        return future.result(timeout=COMMAND_TIMEOUT)

    def shutdown(self) -> None:
        future = asyncio.run_coroutine_threadsafe(self.host.shutdown(), self.loop)
        try:
            future.result(timeout=SHUTDOWN_TIMEOUT)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._done.wait(timeout=SHUTDOWN_TIMEOUT)


_STATE: dict[str, Any] = {}


class SessionHostStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer bootstep: (re)binds the consumer, starts the host once, hands over at shutdown."""

    requires: ClassVar[set[str]] = {"celery.worker.consumer.tasks:Tasks"}

    def start(self, c: Any) -> None:
        consumers: CeleryConsumers = _STATE["consumers"]
        consumers.bind(c)
        if "thread" not in _STATE:
            thread = HostThread(_STATE["make_host"]())
            _STATE["thread"] = thread
            thread.start()

    def shutdown(self, c: Any) -> None:
        thread: HostThread | None = _STATE.get("thread")
        if thread is not None:
            logger.info("handing over every owned instance before exit")
            thread.shutdown()


def worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def run_session_worker(
    settings: Settings, *, factory_path: str, concurrency: int = 4, node_id: str | None = None
) -> None:
    from tasks.app import app

    configure_producer(settings)
    __import__("tasks.deliver")
    __import__("tasks.commands")
    me = node_id or worker_id()
    base = build_runtime(settings)
    factory = load_factory(factory_path, settings)
    consumers = CeleryConsumers()

    def list_instances() -> Sequence[uuid.UUID]:
        with base.sessions() as s:
            return list(s.scalars(select(Instance.id).where(Instance.deleted_at.is_(None))))

    def make_host() -> SessionHost:
        host = SessionHost(
            worker_id=me,
            leases=Leases(base.sessions, ttl=settings.lease_ttl),
            membership=Membership(base.sessions, member_ttl=settings.member_ttl),
            list_instances=list_instances,
            factory=factory,
            consumers=consumers,
            timing=HostTiming(
                lease_ttl=settings.lease_ttl,
                renew_every=settings.lease_renew,
                heartbeat_every=settings.heartbeat_interval,
                rebalance_every=settings.rebalance_interval,
                stagger=settings.session_stagger,
                link_grace=settings.link_handover_grace,
            ),
        )
        METRICS.count_leases(lambda: host.lease_count)
        return host

    def deliver_hook(instance_id: uuid.UUID, outbox_id: int) -> bool:
        thread: HostThread | None = _STATE.get("thread")
        return thread is not None and thread.wake(instance_id, outbox_id)

    def command_hook(instance_id: uuid.UUID) -> bool:
        thread: HostThread | None = _STATE.get("thread")
        return thread is not None and thread.command(instance_id)

    def number_hook(instance_id: uuid.UUID, digits: str) -> bool | None:
        thread: HostThread | None = _STATE.get("thread")
        return None if thread is None else thread.on_whatsapp(instance_id, digits)

    runtime.configure(
        runtime.Runtime(
            sessions=base.sessions,
            bus=base.bus,
            redis=base.redis,
            keyring=base.keyring,
            webhooks=base.webhooks,
            deliver_hook=deliver_hook,
            command_hook=command_hook,
            number_hook=number_hook,
            worker_id=me,
        )
    )
    _STATE.update(consumers=consumers, make_host=make_host)
    if settings.session_metrics_port:
        host, port = settings.session_metrics_host, settings.session_metrics_port
        try:
            METRICS.serve(host, port)
        except OSError as exc:
            raise SettingsError(
                "WAFLEET_SESSION_METRICS_PORT", f"cannot listen on {host}:{port}: {exc.strerror}"
            ) from None
    app.steps["consumer"].add(SessionHostStep)
    app.worker_main(
        [
            *celery_flags(settings),
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            str(concurrency),
            "--queues",
            f"{SESSION_QUEUE_PREFIX}{me}",
            "--hostname",
            f"session-{me}@%h",
            "--loglevel",
            settings.log_level,
            "--without-gossip",
            "--without-mingle",
        ]
    )
