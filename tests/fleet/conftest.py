"""Fleet fixtures: real worker processes on the real test database and Redis (no eager mode).

The end-to-end tests take the broker as a parameter (`e2e_settings`, `e2e_producer`,
`e2e_routing`): Redis (the run's key prefix) and RabbitMQ (a per-run vhost), so every scenario
runs on both brokers DESIGN §3.4 supports.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from config.celery import celery_config
from config.settings import Settings
from protocol.simulator import Simulator
from storage.crypto import Keyring
from storage.models import InstanceStatus
from storage.repositories import instances, tenants
from tests.services import REDIS_URL, rabbitmq_vhost
from workers.routing import configure_producer

ROOT = Path(__file__).resolve().parents[2]
MASTER_KEY = "44" * 32
ARTIFACTS = ROOT / "tests" / "artifacts"  # worker logs of the last run (gitignored)
Popen = subprocess.Popen[bytes]


def poll_until(
    what: str,
    check: Callable[[], Any],
    state: Callable[[], object] = lambda: None,
    *,
    wait: float,
    every: float = 0.2,
) -> Any:
    """Poll `check` (state written by other processes) until it is truthy and return it; fail
    after `wait` seconds naming `what` and `state()`. Modules bind their own `wait`."""
    tick = threading.Event()
    for _ in range(round(wait / every)):
        value = check()
        if value:
            return value
        tick.wait(every)
    raise AssertionError(f"timed out waiting for {what}; state: {state()}")


def log_file(name: str) -> Path:
    """Where a worker process started by a test writes its log (read them when a test fails)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


@pytest.fixture(scope="session")
def fleet_settings(pg_url: str, redis_prefix: str, redis_client: object) -> Settings:
    return Settings(
        database_url=pg_url,
        broker_url=REDIS_URL,
        redis_url=REDIS_URL,
        redis_prefix=f"{redis_prefix}-fleet",
        master_key=MASTER_KEY,
        log_level="WARNING",
        webhook_allow_private=True,  # the test receiver listens on 127.0.0.1
        webhook_max_inflight=1,
        webhook_timeout=20,
    )


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a `wafleet` subprocess load exactly `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAFLEET_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        elif isinstance(value, tuple):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            value = str(value).lower()
        env[f"WAFLEET_{name.upper()}"] = str(value)
    env["WAFLEET_LOG_LEVEL"] = "INFO"  # the worker log (tests/artifacts) explains failures
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.fixture(scope="session")
def producer(fleet_settings: Settings) -> Celery:
    """tasks.app configured to publish to the test run's queues (what other services do)."""
    configure_producer(fleet_settings)
    from tasks.app import app

    return app


SESSION_FACTORY = "workers.session.whatsapp:make_factory"  # the production sessions


def connecting_fleet(
    pg: sessionmaker[Session], label: str, count: int
) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """A new tenant with `count` instances that asked to connect, pacing off (the e2e fleets):
    (tenant id, instance ids in creation order)."""
    keyring = Keyring.from_bytes(bytes.fromhex(MASTER_KEY))
    with pg.begin() as s:
        tenant = tenants.create_tenant(s, f"{label}-{uuid.uuid4().hex[:6]}")
        ids = []
        for n in range(count):
            inst = instances.create_instance(s, keyring, tenant.id, f"{label[0]}{n:02d}")
            inst.status = InstanceStatus.CONNECTING
            inst.pacing = {"rate": 1000, "burst": 1000}
            ids.append(inst.id)
        return tenant.id, ids


def spawn(argv: list[str], settings: Settings, log_name: str) -> tuple[Popen, BinaryIO]:
    """Start `argv` with the environment derived from `settings`, output into an artifact log."""
    log = open(log_file(log_name), "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        argv, env=worker_env(settings), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
    )
    return proc, log


def stop_process(
    proc: subprocess.Popen[Any], log: BinaryIO | None = None, timeout: float = 60.0
) -> None:
    """Warm shutdown (SIGTERM: finish running work, hand over), then SIGKILL past `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if log is not None:
        log.close()


def session_worker_argv(node: str, factory: str = SESSION_FACTORY) -> list[str]:
    return [
        sys.executable,
        "-m",
        "workers.cli",
        "worker",
        "session",
        "--session-factory",
        factory,
        "--node-id",
        node,
    ]


def start_session_worker(
    settings: Settings, node: str, log_name: str, factory: str = SESSION_FACTORY
) -> tuple[Popen, BinaryIO]:
    """A `wafleet worker session` process (stop it with `stop_process`)."""
    return spawn(session_worker_argv(node, factory), settings, log_name)


@contextmanager
def running_session_worker(
    settings: Settings, node: str, log_name: str, factory: str = SESSION_FACTORY
) -> Iterator[Popen]:
    proc, log = start_session_worker(settings, node, log_name, factory)
    try:
        yield proc
    finally:
        stop_process(proc, log)


@contextmanager
def running_routing_worker(settings: Settings, name: str) -> Iterator[Popen]:
    """A `wafleet worker routing` process for `settings`, stopped warm at the end."""
    argv = [
        sys.executable,
        "-m",
        "workers.cli",
        "worker",
        "routing",
        "--pool",
        "prefork",
        "--concurrency",
        "2",
        "--hostname",
        f"{name}-{os.getpid()}@test",
    ]
    proc, log = spawn(argv, settings, f"{name}.log")
    try:
        yield proc
    finally:
        stop_process(proc, log, timeout=30)


@pytest.fixture(scope="session")
def routing_worker(fleet_settings: Settings, producer: Celery) -> Iterator[subprocess.Popen[bytes]]:
    with running_routing_worker(fleet_settings, "routing-worker") as proc:
        yield proc


BROKERS = ("redis", "rabbitmq")


@dataclass(frozen=True, slots=True)
class Broker:
    name: str  # "redis" or "rabbitmq"
    url: str


@pytest.fixture(scope="session", params=BROKERS)
def broker(request: pytest.FixtureRequest, fleet_settings: Settings) -> Iterator[Broker]:
    """The e2e broker; RabbitMQ gets a vhost of its own for the run (deleted at the end)."""
    if request.param == "rabbitmq":
        with rabbitmq_vhost(fleet_settings.redis_prefix) as url:
            yield Broker("rabbitmq", url)
    else:
        yield Broker("redis", fleet_settings.broker_url)


@pytest.fixture(scope="session")
def e2e_settings(fleet_settings: Settings, broker: Broker) -> Settings:
    """fleet_settings on the parametrized broker (the result backend stays on Redis)."""
    return fleet_settings.model_copy(update={"broker_url": broker.url})


@pytest.fixture(scope="session")
def e2e_producer(
    request: pytest.FixtureRequest, e2e_settings: Settings, broker: Broker
) -> Iterator[Celery]:
    """A Celery app publishing to the e2e broker (on Redis: the `producer` fixture's app)."""
    if broker.name == "redis":
        yield request.getfixturevalue("producer")
        return
    app = Celery(f"wafleet-e2e-{broker.name}", set_as_current=False)
    app.conf.update(
        celery_config(
            e2e_settings.broker_url,
            result_backend=e2e_settings.redis_url,
            key_prefix=e2e_settings.redis_prefix,
        )
    )
    yield app
    app.close()


@pytest.fixture(scope="session")
def e2e_routing(
    request: pytest.FixtureRequest, e2e_settings: Settings, e2e_producer: Celery, broker: Broker
) -> Iterator[subprocess.Popen[bytes]]:
    """The routing worker on the e2e broker (on Redis: the `routing_worker` fixture's)."""
    if broker.name == "redis":
        yield request.getfixturevalue("routing_worker")
        return
    with running_routing_worker(e2e_settings, f"routing-{broker.name}") as proc:
        yield proc


class SimulatorThread:
    """The simulator on its own event loop thread, for subprocess workers to connect to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.sim = Simulator()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Simulator:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.sim.start(), self.loop).result(30)
        return self.sim

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.sim.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    with SimulatorThread() as sim:
        yield sim


class NetworkCut:
    """A TCP forwarder between session workers and the simulator that can cut the network.

    Point `wa_server_url` at `ws_url`. `cut()` aborts every forwarded connection (the simulator
    sees the device go offline, the client sees its socket die) and refuses new ones until
    `heal()`: a real partition, with the client's own reconnect backoff in between.
    """

    def __init__(self, target_ws_url: str) -> None:
        rest = target_ws_url.removeprefix("ws://")
        hostport, _, path = rest.partition("/")
        host, _, port = hostport.rpartition(":")
        self._target = (host, int(port))
        self._path = "/" + path
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._cut = False
        self._links: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    def __enter__(self) -> NetworkCut:
        self._thread.start()

        async def start() -> int:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            return int(self._server.sockets[0].getsockname()[1])

        self.port = asyncio.run_coroutine_threadsafe(start(), self._loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self._abort_all()
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self._path}"

    def cut(self) -> None:
        async def go() -> None:
            self._cut = True
            self._abort_all()

        asyncio.run_coroutine_threadsafe(go(), self._loop).result(30)

    def heal(self) -> None:
        async def go() -> None:
            self._cut = False

        asyncio.run_coroutine_threadsafe(go(), self._loop).result(30)

    def _abort_all(self) -> None:
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._links.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, RuntimeError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._links.difference_update((writer, up_writer))
