"""Prometheus metrics of one session worker process (the fleet-wide gauges are the gateway's).

One registry per process, served by prometheus_client's own HTTP server when
`WAFLEET_SESSION_METRICS_PORT` is set (`serve`, called by workers.session.worker; 0 = off).
Label values come from bounded sets only — enums and workers.delivery's known codes — never
tenant or instance ids; the scrape target (pod, host:port) tells the workers apart.

    wafleet_send_latency_seconds        histogram  accept (outbox row created) → server ack, of
                                                   each message sent: queueing, pacing, parking
                                                   and retries included
    wafleet_send_duration_seconds       histogram  the one successful attempt: send call → ack
                                                   (media upload included)
    wafleet_send_retries_total          counter    failed attempts after which the message
                                                   stays queued, {outcome, code}; outcome is
                                                   workers.delivery.classify's (retry, park,
                                                   pause), code its `code_label`
    wafleet_send_failures_total         counter    messages that ended `failed` {code}
                                                   (permanent errors, exhausted retries)
    wafleet_reconnects_total            counter    socket ends after which the client connects
                                                   again {reason: protocol DisconnectReason};
                                                   a failed connect attempt counts again
    wafleet_hosted_sessions             gauge      sessions this worker hosts {state: instance
                                                   status}, every state present
    wafleet_leases_held                 gauge      instance leases this worker holds
plus prometheus_client's process_* and python_* collectors.

The hooks are calls into this module from the actor (ack, failed attempt) and the WhatsApp
session (status changes, disconnects); nothing here touches the database or the protocol.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from datetime import datetime
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from protocol.aio import Disconnected, DisconnectReason
from storage.models import InstanceStatus, utcnow
from workers.delivery import Outcome, SendFailure, code_label

logger = logging.getLogger(__name__)

# Accept → ack spans pacing gaps (e.g. 30–45 s profiles) and the retry schedule (up to 300 s a
# step, DESIGN §3.5); one attempt is a round trip, or a media upload.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600)
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class HostedSessions(Collector):
    """The state of each session this process hosts, counted by state at scrape time.

    Sessions report their state (`set`) from the asyncio loop thread; the scrape runs on the
    HTTP server's thread, hence the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[uuid.UUID, InstanceStatus] = {}

    def set(self, instance_id: uuid.UUID, state: InstanceStatus) -> None:
        with self._lock:
            self._states[instance_id] = state

    def forget(self, instance_id: uuid.UUID) -> None:
        with self._lock:
            self._states.pop(instance_id, None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            counts = Tally(self._states.values())
        family = GaugeMetricFamily(
            "wafleet_hosted_sessions", "Sessions hosted by this worker, by state", labels=["state"]
        )
        for state in InstanceStatus:
            family.add_metric([state.value], float(counts[state]))
        yield family


class SessionMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        self.latency = Histogram(
            "wafleet_send_latency_seconds",
            "Accept (outbox row created) to server ack of each sent message",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.duration = Histogram(
            "wafleet_send_duration_seconds",
            "The successful send attempt: send call to server ack",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.retries = Counter(
            "wafleet_send_retries",
            "Failed send attempts after which the message stays queued, by outcome and code",
            ["outcome", "code"],
            registry=self.registry,
        )
        self.failures = Counter(
            "wafleet_send_failures",
            "Messages that ended failed, by code",
            ["code"],
            registry=self.registry,
        )
        self.reconnects = Counter(
            "wafleet_reconnects",
            "Socket ends after which the client connects again, by disconnect reason",
            ["reason"],
            registry=self.registry,
        )
        for reason in DisconnectReason:
            self.reconnects.labels(reason.value)  # every reason present from the start
        self.sessions = HostedSessions()
        self.registry.register(self.sessions)
        self.leases = Gauge(
            "wafleet_leases_held", "Instance leases held by this worker", registry=self.registry
        )

    # -- hooks ------------------------------------------------------------------------------

    def acked(self, created_at: datetime, attempt_seconds: float) -> None:
        """A message was acked by the server; `created_at` is its outbox row's."""
        self.latency.observe(max(0.0, (utcnow() - created_at).total_seconds()))
        self.duration.observe(max(0.0, attempt_seconds))

    def attempt_failed(self, failure: SendFailure, outcome: Outcome, final: bool) -> None:
        """A send attempt failed; `final` when the message ended `failed`."""
        code = code_label(failure)
        if final:
            self.failures.labels(code).inc()
        else:
            self.retries.labels(outcome.value, code).inc()

    def disconnected(self, event: Disconnected) -> None:
        if event.will_reconnect:
            self.reconnects.labels(event.reason.value).inc()

    def count_leases(self, count: Callable[[], int]) -> None:
        self.leases.set_function(lambda: float(count()))

    def serve(self, host: str, port: int) -> WSGIServer:
        """Serve /metrics on host:port from a daemon thread (prometheus_client's server)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        logger.info("session worker metrics on http://%s:%d/metrics", host, port)
        return server


METRICS = SessionMetrics()  # the process's metrics (one session worker per process)
