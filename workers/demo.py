"""`wafleet demo` (`make demo`): the fleet on the embedded default, no servers to install.

Today it brings up what has landed: the SQLite database (migrated), the embedded Redis broker
(workers.embedded), a demo tenant with an API key and an instance, and a status report. As the
simulator and the fleet land it grows into the full demo (DESIGN §6): simulator, session worker
and routing worker as real processes, a simulated phone linked by QR, messages both ways.

Master key: the demo uses WAFLEET_MASTER_KEY when set; otherwise it creates one in
`<data_dir>/master.key` (mode 0600) and says so — production must set its own.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import TextIO

import redis
from sqlalchemy import Engine, func, select

from config.settings import Settings, decode_master_key
from storage import migrations
from storage.crypto import Keyring
from storage.db import create_engine_from_url, session_factory
from storage.errors import NotFound
from storage.models import Instance, Tenant
from storage.repositories import instances as instance_repo
from storage.repositories import tenants as tenant_repo
from workers.embedded import EmbeddedBrokerUnavailable, EmbeddedRedis

DEMO_TENANT = "demo"
DEMO_INSTANCE = "demo-phone"


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


def run_demo(settings: Settings, out: TextIO) -> None:
    data_dir = settings.data_dir.resolve()
    url = settings.effective_database_url
    out.write(f"wafleet demo — embedded default in {data_dir}\n")
    keyring = Keyring.from_bytes(demo_master_key(settings, out))

    data_dir.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(url)
    out.write(f"  database   {url} (schema {migrations.current(url)})\n")

    broker: EmbeddedRedis | None = EmbeddedRedis(data_dir / "redis")
    try:
        assert broker is not None
        broker.start()
        client = redis.Redis.from_url(broker.url)
        info: dict[str, object] = client.info("server")  # type: ignore[assignment]
        version = str(info.get("redis_version", "?"))
        client.close()
        out.write(f"  broker     embedded Redis {version} at {broker.url}\n")
    except EmbeddedBrokerUnavailable as exc:
        broker = None
        out.write(
            f"  broker     UNAVAILABLE: {exc}\n"
            "             (falls back to kombu filesystem://, at-most-once delivery)\n"
        )
    try:
        engine = create_engine_from_url(url)
        try:
            _ensure_demo_rows(engine, keyring, out)
            _report(engine, out)
        finally:
            engine.dispose()
    finally:
        if broker is not None:
            broker.stop()
            out.write("  broker     stopped\n")
    out.write(
        "\nNext: the simulator, session and routing workers join this demo as they land "
        "(see README).\n"
    )


def _ensure_demo_rows(engine: Engine, keyring: Keyring, out: TextIO) -> None:
    factory = session_factory(engine)
    with factory.begin() as s:
        try:
            tenant = tenant_repo.get_tenant(s, DEMO_TENANT)
        except NotFound:
            tenant = tenant_repo.create_tenant(s, DEMO_TENANT)
            _, key = tenant_repo.create_api_key(s, tenant.id, "demo", ["read", "send", "admin"])
            key_file = Path(engine.url.database or ".").parent / "demo-api-key"
            key_file.write_text(key + "\n")
            key_file.chmod(0o600)
            out.write(f"  created    tenant {DEMO_TENANT!r}; its API key is in {key_file}\n")
        names = {i.name for i in instance_repo.list_instances(s, tenant.id)}
        if DEMO_INSTANCE not in names:
            inst = instance_repo.create_instance(s, keyring, tenant.id, DEMO_INSTANCE)
            out.write(f"  created    instance {DEMO_INSTANCE!r} ({inst.id})\n")


def _report(engine: Engine, out: TextIO) -> None:
    factory = session_factory(engine)
    with factory.begin() as s:
        tenants = s.scalar(select(func.count()).select_from(Tenant))
        out.write(f"  status     {tenants} tenant(s)\n")
        for inst in s.scalars(select(Instance).where(Instance.deleted_at.is_(None))):
            out.write(
                f"             instance {inst.name} [{inst.status.value}] "
                f"sent={inst.messages_sent} received={inst.messages_received}\n"
            )
