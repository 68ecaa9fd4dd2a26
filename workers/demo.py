"""`wafleet demo` (`make demo`): the whole fleet on the embedded default, no servers to install.

What it runs (DESIGN §6), all as real processes with real Celery workers (no eager mode):
* the SQLite database in `<data_dir>/wafleet.sqlite3` (migrated) and a private Redis
  (workers.embedded) as the broker, the lease/event store;
* the WhatsApp simulator (`python -m protocol.simulator`) with two simulated phones: the salon's
  own number and a client;
* a routing worker and a session worker (`wafleet worker routing|session`).

What it shows: the demo instance asks to connect, its QR arrives as a `whatsapp:qr` event and is
printed; the salon's simulated phone scans it; the instance connects; a message accepted
through the public task API reaches the client's phone; the client's reply lands in the
database as a contact, a message and a pending booking; a message the owner writes on the phone
becomes an internal note. It prints where to look, then stops everything it started.

Master key: WAFLEET_MASTER_KEY when set; otherwise one is created in `<data_dir>/master.key`
(mode 0600) and the demo says so — production must set its own.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TextIO, TypeVar

import httpx
import redis
import segno
from sqlalchemy import Engine, func, select

from config.settings import Settings, decode_master_key
from storage import migrations
from storage.bus import EventBus
from storage.crypto import Keyring
from storage.db import create_engine_from_url, session_factory
from storage.errors import NotFound
from storage.models import (
    Booking,
    BookingStatus,
    Contact,
    Instance,
    InstanceStatus,
    Message,
    Note,
)
from storage.repositories import instances as instance_repo
from storage.repositories import tenants as tenant_repo
from tasks.client import Producer
from workers.embedded import EmbeddedBrokerUnavailable, EmbeddedRedis
from workers.producer import connect

DEMO_TENANT = "demo"
DEMO_INSTANCE = "demo-phone"
SALON_PHONE = "5511987650000"  # the simulated phone that owns the demo instance
CLIENT_PHONE = "5511912340000"  # a simulated client of the salon
STEP_TIMEOUT = 90.0
DEMO_PREFIX = "wafleet-demo"

T = TypeVar("T")


class DemoFailed(RuntimeError):
    """A demo step did not complete; the message names it and where the logs are."""


def demo_master_key(settings: Settings, out: TextIO) -> bytes:
    if settings.master_key is not None:
        return settings.master_keys()[0]
    path = settings.data_dir / "master.key"
    if path.exists():
        return decode_master_key(path.read_text())
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    key = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(key).decode() + "\n")
    out.write(f"  created a demo master key in {path} (production: set WAFLEET_MASTER_KEY)\n")
    return key


def wait_for(what: str, check: Callable[[], T | None], logs: Path) -> T:
    tick = threading.Event()
    deadline = time.monotonic() + STEP_TIMEOUT
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        tick.wait(0.2)  # polling state that other processes write
    raise DemoFailed(f"timed out waiting for {what}; see the logs in {logs}")


@contextmanager
def child(
    name: str, argv: list[str], env: dict[str, str], logs: Path, stdout: int | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process that is stopped (SIGTERM, then SIGKILL) when the demo ends."""
    log = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
        [sys.executable, *argv], env=env, stdout=stdout or log, stderr=log, stdin=subprocess.DEVNULL
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()


def run_demo(settings: Settings, out: TextIO) -> None:
    data_dir = settings.data_dir.resolve()
    url = settings.effective_database_url
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out.write(f"wafleet demo — embedded default in {data_dir}\n")
    master = demo_master_key(settings, out)
    keyring = Keyring.from_bytes(master)
    migrations.upgrade(url)
    out.write(f"  database   {url} (schema {migrations.current(url)})\n")
    try:
        broker = EmbeddedRedis(data_dir / "redis")
        broker.start()
    except EmbeddedBrokerUnavailable as exc:
        raise DemoFailed(f"the embedded broker cannot start here: {exc}") from None
    engine = create_engine_from_url(url)
    try:
        with ExitStack() as stack:
            stack.callback(broker.stop)
            out.write(f"  broker     embedded Redis at {broker.url}\n")
            _run(settings, out, keyring, master, broker.url, engine, logs, stack)
    finally:
        engine.dispose()
        out.write("  stopped    simulator, workers and broker\n")


def _run(
    settings: Settings,
    out: TextIO,
    keyring: Keyring,
    master: bytes,
    broker_url: str,
    engine: Engine,
    logs: Path,
    stack: ExitStack,
) -> None:
    factory = session_factory(engine)
    tenant_id, instance_id = _fresh_demo_instance(factory, keyring, out)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAFLEET_")}
    env.update(
        {
            "WAFLEET_DATA_DIR": str(settings.data_dir.resolve()),
            "WAFLEET_DATABASE_URL": settings.effective_database_url,
            "WAFLEET_BROKER_URL": broker_url,
            "WAFLEET_REDIS_URL": broker_url,
            "WAFLEET_REDIS_PREFIX": DEMO_PREFIX,
            "WAFLEET_MASTER_KEY": base64.b64encode(master).decode(),
            "WAFLEET_LOG_LEVEL": "INFO",
            "WAFLEET_LOG_FORMAT": settings.log_format,  # the children log like the demo
            "WAFLEET_REBALANCE_INTERVAL": "0.5",
        }
    )

    sim = stack.enter_context(
        child(
            "simulator",
            ["-m", "protocol.simulator", "--port", "0"],
            env,
            logs,
            stdout=subprocess.PIPE,
        )
    )
    assert sim.stdout is not None
    info = json.loads(sim.stdout.readline() or b"{}")
    if "ws_url" not in info:
        raise DemoFailed(f"the simulator did not start; see {logs / 'simulator.log'}")
    env["WAFLEET_WA_SERVER_URL"] = info["ws_url"]
    env["WAFLEET_WA_ROOT_KEY"] = info["root_public_key"]
    control = httpx.Client(
        base_url=info["ws_url"].split("/ws/")[0].replace("ws://", "http://"), timeout=30
    )
    stack.callback(control.close)
    for phone, name in ((SALON_PHONE, "Salão Bella (owner)"), (CLIENT_PHONE, "Carla (client)")):
        control.post("/control/accounts", json={"phone": phone, "name": name})
    out.write(
        f"  simulator  {info['ws_url']} with phones +{SALON_PHONE} (salon), "
        f"+{CLIENT_PHONE} (client)\n"
    )

    cli = ["-m", "workers.cli", "worker"]
    stack.enter_context(
        child(
            "routing-worker",
            [*cli, "routing", "--pool", "threads", "--concurrency", "4"],
            env,
            logs,
        )
    )
    stack.enter_context(
        child(
            "session-worker",
            [
                *cli,
                "session",
                "--session-factory",
                "workers.session.whatsapp:make_factory",
                "--node-id",
                "demo",
            ],
            env,
            logs,
        )
    )
    out.write(f"  workers    routing worker and session worker started (logs in {logs})\n")

    client: redis.Redis = redis.Redis.from_url(broker_url)
    stack.callback(client.close)
    bus = EventBus(client, DEMO_PREFIX)

    def event(kind: str) -> dict[str, Any] | None:
        found = [e.data for e in bus.read(tenant_id).events if e.type == kind]
        return found[-1] if found else None

    qr = wait_for("the instance's QR code", lambda: event("whatsapp:qr"), logs)
    out.write("\n  The instance shows this QR (a whatsapp:qr event):\n\n")
    buffer = io.StringIO()
    segno.make(qr["qr"], error="l").terminal(out=buffer, compact=True)
    out.write(buffer.getvalue())
    out.write(f"\n  The salon's simulated phone +{SALON_PHONE} scans it...\n")
    linked = control.post(f"/control/accounts/{SALON_PHONE}/link", json={"qr": qr["qr"]})
    if linked.status_code != 200:
        raise DemoFailed(f"the simulator refused the link: {linked.text}")
    wait_for("the instance to connect", lambda: event("whatsapp:connected"), logs)
    out.write("  connected  the instance is linked and logged in\n")

    producer: Producer = connect(broker_url, key_prefix=DEMO_PREFIX)
    text = "Olá Carla! Seu horário de amanhã às 10h está confirmado."
    sent = producer.send_message(
        str(tenant_id),
        str(instance_id),
        CLIENT_PHONE,
        text=text,
        idempotency_key=f"demo-confirmation-{instance_id}",
    ).get(timeout=STEP_TIMEOUT)
    wait_for(
        "the client's phone to receive the message",
        lambda: [
            m
            for m in control.get(f"/control/accounts/{CLIENT_PHONE}/messages").json()
            if m["id"] == sent["wa_message_id"]
        ],
        logs,
    )
    out.write(f"  sent       {sent['wa_message_id']} → +{CLIENT_PHONE}: {text!r}\n")

    control.post(
        f"/control/accounts/{CLIENT_PHONE}/messages",
        json={"to": SALON_PHONE, "text": "Obrigada! Posso levar minha filha também?"},
    )
    control.post(
        f"/control/accounts/{SALON_PHONE}/messages",
        json={"to": CLIENT_PHONE, "text": "Nota: reservar duas cadeiras."},
    )

    def stored() -> bool:
        with factory() as s:
            message = s.scalar(
                select(func.count()).select_from(Message).where(Message.instance_id == instance_id)
            )
            note = s.scalar(
                select(func.count()).select_from(Note).where(Note.instance_id == instance_id)
            )
            # One open pending booking per contact (DESIGN §3.8): a client known from an
            # earlier demo run keeps the booking she already has.
            booking = s.scalar(
                select(func.count())
                .select_from(Booking)
                .join(Contact)
                .where(
                    Contact.phone_number == CLIENT_PHONE, Booking.status == BookingStatus.PENDING
                )
            )
        return (message, note, booking) == (1, 1, 1)

    wait_for("the reply and the note to be stored", stored, logs)
    _report(factory, instance_id, out, settings)


def _fresh_demo_instance(factory: Any, keyring: Keyring, out: TextIO) -> tuple[Any, Any]:
    """The demo tenant (created once, with an API key) and a fresh demo instance that asks to
    connect (a previous run's instance was linked to a simulator that no longer exists)."""
    with factory.begin() as s:
        try:
            tenant = tenant_repo.get_tenant(s, DEMO_TENANT)
        except NotFound:
            tenant = tenant_repo.create_tenant(s, DEMO_TENANT)
            _, key = tenant_repo.create_api_key(s, tenant.id, "demo", ["read", "send", "admin"])
            out.write(f"  created    tenant {DEMO_TENANT!r} (API key: {key})\n")
        for old in instance_repo.list_instances(s, tenant.id):
            if old.name == DEMO_INSTANCE:
                instance_repo.delete_instance(s, old.id, tenant.id)
        inst = instance_repo.create_instance(s, keyring, tenant.id, DEMO_INSTANCE)
        inst.status = InstanceStatus.CONNECTING
        out.write(f"  instance   {DEMO_INSTANCE!r} ({inst.id}) asks to connect\n")
        return tenant.id, inst.id


def _report(factory: Any, instance_id: Any, out: TextIO, settings: Settings) -> None:
    with factory() as s:
        inst = s.get(Instance, instance_id)
        contact = s.scalars(select(Contact).where(Contact.phone_number == CLIENT_PHONE)).first()
        message = s.scalars(select(Message).where(Message.instance_id == instance_id)).one()
        note = s.scalars(select(Note).where(Note.instance_id == instance_id)).one()
        booking = s.scalars(
            select(Booking).where(
                Booking.contact_id == contact.id, Booking.status == BookingStatus.PENDING
            )
        ).one()
        out.write(
            f"  received   +{CLIENT_PHONE}: {message.body!r}\n"  # noqa: S608 - text, not SQL
            f"             → contact #{contact.id if contact else '?'} "
            f"({contact.name if contact else '?'}), booking #{booking.id} "
            f"[{booking.status.value}], message #{message.id}\n"
            f"  note       from the owner's phone: {note.body!r}\n"
            f"  instance   {inst.name} [{inst.status.value}] owner +{inst.phone_number} "
            f"sent={inst.messages_sent} received={inst.messages_received}\n\n"
            f"Where to look: the database is {settings.effective_database_url}\n"
            f"  (e.g. `sqlite3 {settings.data_dir / 'wafleet.sqlite3'} "
            "'select body from messages'`),\n"
            f"  `WAFLEET_DATA_DIR={settings.data_dir} .venv/bin/wafleet instance list`, "
            f"and the logs in {settings.data_dir / 'logs'}.\n"
        )
