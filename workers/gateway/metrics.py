"""Prometheus metrics of the gateway and of the fleet's queues, in one registry per app.

Label sets are bounded: HTTP metrics are labelled by method, route TEMPLATE (`/v1/instances/
{instance_id}`, or `unmatched` for unknown paths) and status; fleet gauges by instance state,
outbox status or static queue name. No tenant or instance ids ever become label values. (Each
session worker serves its own send/retry/reconnect metrics: workers.session.metrics.)

Gauges read at scrape time (a custom collector, so a scrape always shows the current state of
the whole fleet, whichever gateway replica answers):
    wafleet_sessions{state}                 instances by status (every state, 0 included;
                                            deleted instances excluded)
    wafleet_instances_unowned               live instances no session worker holds a lease on
    wafleet_instances_outbound_paused       live instances whose outbound is paused
    wafleet_outbox_depth{status}            unfinished outbound messages (queued, sending)
    wafleet_outbox_retrying                 queued messages that failed an attempt and wait
                                            for their next one (attempts > 0)
    wafleet_queue_depth{queue}              Redis LLEN of the static Celery queues (Redis broker)
    wafleet_webhook_lag_seconds             age of the oldest pending webhook delivery
    wafleet_webhook_pending                 pending webhook deliveries
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import and_, func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from storage.leases import database_clock
from storage.models import (
    DeliveryStatus,
    Instance,
    InstanceLease,
    InstanceStatus,
    OutboxMessage,
    OutboxStatus,
    WebhookDelivery,
    utcnow,
)
from tasks.queues import ACCEPT_QUEUE, HOUSEKEEPING_QUEUE, INBOUND_QUEUE, WEBHOOKS_QUEUE
from workers.gateway.state import Gateway

logger = logging.getLogger(__name__)
access = logging.getLogger("workers.gateway.access")  # route templates only: no ids, no query

STATIC_QUEUES = (ACCEPT_QUEUE, INBOUND_QUEUE, WEBHOOKS_QUEUE, HOUSEKEEPING_QUEUE)
UNFINISHED = (OutboxStatus.QUEUED, OutboxStatus.SENDING)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class FleetCollector(Collector):
    def __init__(self, gateway: Gateway) -> None:
        self._g = gateway

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sessions = GaugeMetricFamily(
            "wafleet_sessions", "Instances (not deleted) by session state", labels=["state"]
        )
        unowned = GaugeMetricFamily(
            "wafleet_instances_unowned", "Live instances without a session worker's lease"
        )
        paused = GaugeMetricFamily(
            "wafleet_instances_outbound_paused", "Live instances whose outbound is paused"
        )
        outbox = GaugeMetricFamily(
            "wafleet_outbox_depth", "Unfinished outbound messages by status", labels=["status"]
        )
        retrying = GaugeMetricFamily(
            "wafleet_outbox_retrying", "Queued messages waiting for a retry (attempts > 0)"
        )
        lag = GaugeMetricFamily(
            "wafleet_webhook_lag_seconds", "Age of the oldest pending webhook delivery"
        )
        pending = GaugeMetricFamily("wafleet_webhook_pending", "Pending webhook deliveries")
        try:
            with self._g.sessions() as s:
                live = Instance.deleted_at.is_(None)
                states = dict(
                    s.execute(
                        select(Instance.status, func.count()).where(live).group_by(Instance.status)
                    ).all()
                )
                held = and_(
                    InstanceLease.instance_id == Instance.id,
                    InstanceLease.owner.is_not(None),
                    InstanceLease.expires_at > database_clock(s),
                )
                n_unowned = s.scalar(
                    select(func.count())
                    .select_from(Instance)
                    .where(live, ~select(1).where(held).exists())
                )
                n_paused = s.scalar(
                    select(func.count()).select_from(Instance).where(live, Instance.outbound_paused)
                )
                n_retrying = s.scalar(
                    select(func.count())
                    .select_from(OutboxMessage)
                    .where(OutboxMessage.status == OutboxStatus.QUEUED, OutboxMessage.attempts > 0)
                )
                counts = dict(
                    s.execute(
                        select(OutboxMessage.status, func.count())
                        .where(OutboxMessage.status.in_(UNFINISHED))
                        .group_by(OutboxMessage.status)
                    ).all()
                )
                oldest, count = s.execute(
                    select(func.min(WebhookDelivery.created_at), func.count()).where(
                        WebhookDelivery.status == DeliveryStatus.PENDING
                    )
                ).one()
        except Exception:  # a scrape must answer even when the database is down
            logger.warning("metrics: database unavailable", exc_info=True)
        else:
            for state in InstanceStatus:
                sessions.add_metric([state.value], float(states.get(state, 0)))
            unowned.add_metric([], float(n_unowned or 0))
            paused.add_metric([], float(n_paused or 0))
            for status in UNFINISHED:
                outbox.add_metric([status.value], float(counts.get(status, 0)))
            retrying.add_metric([], float(n_retrying or 0))
            age = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
            lag.add_metric([], max(0.0, age))
            pending.add_metric([], float(count))
        yield sessions
        yield unowned
        yield paused
        yield outbox
        yield retrying
        yield lag
        yield pending
        queues = GaugeMetricFamily(
            "wafleet_queue_depth", "Messages waiting in the static Celery queues", labels=["queue"]
        )
        broker = self._g.broker_redis
        if broker is not None:
            try:
                pipe = broker.pipeline()
                for queue in STATIC_QUEUES:
                    # kombu's Redis transport keeps a queue as a list under the global key
                    # prefix; with priority_steps=[0] there is exactly one list per queue.
                    pipe.llen(f"{self._g.key_prefix}:{queue}")
                for queue, depth in zip(STATIC_QUEUES, pipe.execute(), strict=True):
                    queues.add_metric([queue], float(depth))
            except Exception:
                logger.warning("metrics: broker unavailable", exc_info=True)
        yield queues


class Metrics:
    def __init__(self, gateway: Gateway) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "wafleet_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "wafleet_http_request_duration_seconds",
            "HTTP request latency by method and route template",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.websockets = Gauge(
            "wafleet_websocket_connections",
            "Open realtime event connections",
            registry=self.registry,
        )
        self.registry.register(FleetCollector(gateway))


def _route_template(scope: Scope) -> str:
    """The matched route's template, e.g. /v1/instances/{instance_id}; `unmatched` otherwise.

    Rebuilt from the request path and its path parameters (each segment equal to a parameter's
    value becomes `{name}`): FastAPI's route object only knows its path within its router, not
    the prefix it was included under."""
    if scope.get("route") is None:
        return "unmatched"
    names = {str(v): k for k, v in (scope.get("path_params") or {}).items()}
    segments = str(scope.get("path", "")).split("/")
    return "/".join(f"{{{names[s]}}}" if s in names else s for s in segments)


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (pure ASGI, no buffering)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = _route_template(scope)
            method = str(scope.get("method", "GET"))
            method = method if method in METHODS else "OTHER"
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(elapsed)
            access.info("%s %s %s %.1fms", method, route, status, elapsed * 1000)
