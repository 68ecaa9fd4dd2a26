"""A real session worker process serves its own Prometheus metrics (workers.session.metrics on
WAFLEET_SESSION_METRICS_PORT), scraped over HTTP and parsed with prometheus_client's parser:
the hosted session and its lease, a send's latency after the simulator acked it, a retry after
an injected error ack (counted by code, matching the outbox row's attempts), a failure by code,
and a reconnect after the simulator dropped the socket. No tenant or instance id is a label."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable

import httpx
import pytest
import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from protocol.simulator import Simulator
from storage.models import InstanceStatus, OutboxMessage, OutboxStatus
from tests.fleet.conftest import log_file, start_session_worker, stop_process
from tests.fleet.test_whatsapp_e2e import CLIENT, Linked, linked, poll

Factory = sessionmaker[Session]
Labels = tuple[tuple[str, str], ...]
DONE = (OutboxStatus.SENT, OutboxStatus.DELIVERED, OutboxStatus.READ)


class Scrape:
    """One parsed scrape: every sample by name and sorted labels, and the raw text."""

    def __init__(self, url: str) -> None:
        response = httpx.get(url, timeout=30)
        assert response.status_code == 200
        self.text = response.text
        self.samples: dict[str, dict[Labels, float]] = {}
        for family in text_string_to_metric_families(self.text):
            for s in family.samples:
                self.samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value

    def get(self, name: str, **labels: str) -> float:
        return self.samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def states(self) -> dict[str, float]:
        return {dict(k)["state"]: v for k, v in self.samples["wafleet_hosted_sessions"].items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def until(url: str, what: str, check: Callable[[Scrape], bool]) -> Scrape:
    result: Scrape = poll(what, lambda: m if check(m := Scrape(url)) else None)
    return result


def outbox_row(pg: Factory, wa_message_id: str) -> OutboxMessage:
    with pg() as s:
        return s.scalars(
            select(OutboxMessage).where(OutboxMessage.wa_message_id == wa_message_id)
        ).one()


@pytest.mark.timeout(300)
def test_session_worker_metrics_endpoint(
    routing_worker: subprocess.Popen[bytes],
    producer: Celery,
    fleet_settings: Settings,
    pg: Factory,
    redis_client: redis.Redis,
    simulator: Simulator,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    overrides = {"session_metrics_port": port, "session_metrics_host": "127.0.0.1"}
    with linked(simulator, fleet_settings, pg, redis_client, producer, overrides=overrides) as rig:
        first = until(url, "the session hosted as connected", _connected)
        assert first.states() == {s.value: 0.0 for s in InstanceStatus} | {"connected": 1.0}
        assert first.get("wafleet_leases_held") == 1
        assert first.get("wafleet_send_latency_seconds_count") == 0
        assert first.get("process_resident_memory_bytes") > 0

        # A send acked by the simulator: one latency and one attempt duration observed.
        ok = rig.send(CLIENT, "primeira")["wa_message_id"]
        sent = until(url, "a send observed", lambda m: _count(m) == 1)
        poll("the phone got it", lambda: [m["id"] for m in rig.inbox(CLIENT)] == [ok])
        assert sent.get("wafleet_send_latency_seconds_sum") > 0
        assert sent.get("wafleet_send_latency_seconds_bucket", le="+Inf") == 1
        assert sent.get("wafleet_send_duration_seconds_count") == 1
        assert sent.get("wafleet_send_duration_seconds_bucket", le="+Inf") == 1

        # An error ack (500: retryable) → a retry counted by outcome and code; once the fault
        # is gone, the scheduled retry goes out and the row's attempts agree with the counter.
        _fault(rig, {"kind": "ack_error", "phone": CLIENT, "code": 500})
        again = rig.send(CLIENT, "segunda")["wa_message_id"]
        until(url, "a retry counted", lambda m: _retries(m) >= 1)
        _fault(rig, {"kind": "ack_error", "phone": CLIENT, "off": True})
        poll("the retry delivered", lambda: outbox_row(pg, again).status in DONE)
        after = until(url, "the retried send observed", lambda m: _count(m) == 2)
        row = outbox_row(pg, again)
        assert _retries(after) == row.attempts - 1 >= 1
        assert row.last_error_code == "500"
        assert after.get("wafleet_send_failures_total", code="500") == 0

        # A recipient without WhatsApp: a permanent failure by its code, not a retry.
        rig.send("5511955550000", "alguém?")
        failed = until(
            url,
            "a failure counted",
            lambda m: m.get("wafleet_send_failures_total", code="not_on_whatsapp") == 1,
        )
        assert (
            failed.get("wafleet_send_retries_total", outcome="retry", code="not_on_whatsapp") == 0
        )

        # The simulator drops the socket: the client reconnects, counted by its reason.
        before = _reconnects(failed)
        device = rig.instance().wa_jid
        assert device
        _fault(rig, {"kind": "drop", "device": device})
        back = until(
            url,
            "a reconnect counted and the session connected again",
            lambda m: sum(_reconnects(m).values()) > sum(before.values()) and _connected(m),
        )
        grown = {r: n - before[r] for r, n in _reconnects(back).items() if n != before[r]}
        assert grown == {"connection_closed": 1}
        assert rig.instance().status is InstanceStatus.CONNECTED

        # Bounded labels: no tenant or instance id anywhere in the exposition.
        for value in (str(rig.tenant_id), str(rig.instance_id), device, CLIENT):
            assert value not in back.text


@pytest.mark.timeout(180)
def test_a_metrics_port_in_use_stops_the_worker(fleet_settings: Settings, pg: Factory) -> None:
    """Asked for metrics it cannot serve, the worker refuses to start (exit 2, one line naming
    the setting) rather than run unobserved."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = int(busy.getsockname()[1])
        settings = fleet_settings.model_copy(
            update={"session_metrics_port": port, "session_metrics_host": "127.0.0.1"}
        )
        proc, log = start_session_worker(settings, "busy-port", "session-busy-port.log")
        try:
            code = proc.wait(timeout=120)
        finally:
            stop_process(proc, log)
    assert code == 2
    text = log_file("session-busy-port.log").read_text()
    assert f"error: WAFLEET_SESSION_METRICS_PORT: cannot listen on 127.0.0.1:{port}" in text


def _connected(m: Scrape) -> bool:
    return m.states().get("connected") == 1


def _count(m: Scrape) -> float:
    return m.get("wafleet_send_latency_seconds_count")


def _retries(m: Scrape) -> float:
    return m.get("wafleet_send_retries_total", outcome="retry", code="500")


def _reconnects(m: Scrape) -> dict[str, float]:
    return {dict(k)["reason"]: v for k, v in m.samples["wafleet_reconnects_total"].items()}


def _fault(rig: Linked, body: dict[str, object]) -> None:
    assert rig.http.post("/control/faults", json=body).status_code == 200
