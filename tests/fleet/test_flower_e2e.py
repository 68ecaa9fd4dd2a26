"""Flower (`celery -A workers.flower flower`) started against the fleet's broker shows the session
worker and the per-instance `wa.out.<instance_id>` queues it consumes, on Redis and on RabbitMQ
(its app's transport options: tests/gateway/test_flower.py)."""

from __future__ import annotations

import socket
import sys
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from storage.crypto import Keyring
from storage.repositories import instances, tenants
from tasks.queues import out_queue
from tests.fleet.conftest import MASTER_KEY, poll_until, spawn, start_session_worker, stop_process

Factory = sessionmaker[Session]
WAIT = 120.0
AUTH = ("wafleet", "flower-test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


poll = partial(poll_until, wait=WAIT, every=0.5)


@pytest.fixture
def session_worker(e2e_settings: Settings, pg: Factory) -> Iterator[tuple[str, list[str]]]:
    """A session worker (production factory) owning two unlinked instances: it consumes their
    `wa.out.<id>` queues though it holds no WhatsApp socket for them."""
    keyring = Keyring.from_bytes(bytes.fromhex(MASTER_KEY))
    with pg.begin() as s:
        tenant = tenants.create_tenant(s, f"flower-{uuid.uuid4().hex[:6]}")
        ids = [str(instances.create_instance(s, keyring, tenant.id, f"f{n}").id) for n in (1, 2)]
    node = f"flower-{uuid.uuid4().hex[:6]}"
    settings = e2e_settings.model_copy(
        update={"lease_ttl": 10.0, "lease_renew": 2.0, "rebalance_interval": 0.2}
    )
    proc, log = start_session_worker(settings, node, f"flower-session-{node}.log")
    try:
        yield node, ids
    finally:
        stop_process(proc, log)


@pytest.mark.timeout(300)
def test_flower_shows_the_session_worker_and_its_instance_queues(
    e2e_settings: Settings, session_worker: tuple[str, list[str]]
) -> None:
    node, ids = session_worker
    port = free_port()
    proc, log = spawn(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.flower",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
            f"--basic_auth={AUTH[0]}:{AUTH[1]}",
            "--inspect_timeout=5000",
        ],
        e2e_settings,
        f"flower-{node}.log",
    )
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=AUTH, timeout=30)
    wanted = {out_queue(i) for i in ids}
    try:

        def workers() -> dict[str, Any]:
            try:
                r = http.get("/api/workers", params={"refresh": "true"})
            except httpx.TransportError:
                return {}  # Flower still starting
            return dict(r.json()) if r.status_code == 200 else {}

        def session_queues() -> set[str] | None:
            for name, info in workers().items():
                if name.startswith(f"session-{node}@"):
                    queues = {q["name"] for q in info.get("active_queues") or []}
                    if wanted <= queues:
                        return queues
            return None

        queues = poll("the session worker and its wa.out queues", session_queues, workers)
        assert f"wa.session.{node}" in queues
        if e2e_settings.broker_url.startswith("redis"):
            # The broker page's data: lengths of the active queues, under the fleet's key prefix.
            r = http.get("/api/queues/length")
            assert r.status_code == 200, r.text
            lengths = {q["name"]: q["messages"] for q in r.json()["active_queues"]}
            assert wanted <= set(lengths)
            assert all(lengths[q] == 0 for q in wanted)
    finally:
        http.close()
        stop_process(proc, log)
