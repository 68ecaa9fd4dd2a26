"""Webhook delivery from the Postgres outbox (issue: durable, signed webhooks).

`wafleet.webhooks.deliver(delivery_id)` posts one pending delivery; `wafleet.webhooks.sweep`
(housekeeping, run by beat every few seconds) re-enqueues the ones whose `next_attempt_at` has
come, so retries survive any worker or gateway restart: the schedule is in the row.

Request: `POST <url>` with the JSON event as body and the headers
    X-Wafleet-Event: <event type>            X-Wafleet-Delivery: <delivery id>
    X-Wafleet-Timestamp: <unix seconds>
    X-Wafleet-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>[,v1=<with previous>]
During a secret rotation both secrets sign, so receivers accept either. 2xx = delivered;
410 = the receiver is gone (dead at once); anything else, a timeout or a refused connection is
retried on a progressive schedule, then the delivery is `dead` (replayable). Every attempt is
logged in `webhook_attempts`.

Isolation: each attempt has a hard timeout and each endpoint at most `max_inflight` attempts at
once (a Redis semaphore); a delivery that finds its endpoint busy is deferred, not attempted, so
a slow or dead receiver occupies at most that many worker slots and never delays other tenants.
SSRF guard: the target's addresses are resolved just before the request and loopback, private,
link-local, multicast, reserved and unspecified addresses are refused unless configured.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
import uuid
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
from sqlalchemy import func, select, update

from storage.models import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    utcnow,
)
from storage.repositories.webhooks import endpoint_secrets
from tasks.app import app
from tasks.queues import (
    WEBHOOK_DELIVER_TASK,
    WEBHOOK_REPLAY_TASK,
    WEBHOOK_SWEEP_TASK,
    WEBHOOKS_QUEUE,
)
from tasks.runtime import current

logger = logging.getLogger(__name__)

RETRY_SCHEDULE = (10, 30, 120, 600, 1800, 3600, 10800, 21600)  # seconds; the last repeats
BUSY_DEFER = 2.0  # seconds to push a delivery back when its endpoint is at its in-flight limit
SWEEP_BATCH = 500
USER_AGENT = "wafleet-webhooks/1"

_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1] - ARGV[3])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], math.ceil(ARGV[3]))
return 1
"""


class BlockedDestination(Exception):
    """The webhook URL resolves to an address the SSRF guard refuses."""


def check_destination(url: str, allow_private: bool) -> None:
    """Raise BlockedDestination unless every address `url`'s host resolves to is public."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise BlockedDestination("webhook URL must be http(s) with a host")
    if allow_private:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise BlockedDestination(f"cannot resolve {parts.hostname}: {exc.strerror}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if (
            address.is_private
            or address.is_loopback
            or address.is_link_local
            or address.is_multicast
            or address.is_reserved
            or address.is_unspecified
        ):
            raise BlockedDestination(f"{parts.hostname} resolves to a non-public address")


def signature_header(secrets: tuple[bytes, ...], timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return ",".join("v1=" + hmac.new(s, signed, hashlib.sha256).hexdigest() for s in secrets)


def _delay(attempts: int) -> float:
    return float(RETRY_SCHEDULE[min(attempts, len(RETRY_SCHEDULE)) - 1])


def deliver_once(delivery_id: int) -> str:
    """Attempt one delivery; returns what happened: delivered, retry, dead, deferred, skipped."""
    rt = current()
    policy = rt.webhooks
    if rt.keyring is None:
        raise RuntimeError("webhook delivery needs the master key (runtime.keyring)")
    with rt.sessions.begin() as s:
        # Claim the delivery: one conditional UPDATE pushes next_attempt_at past the attempt's
        # deadline, so a duplicate wake-up or a sweep finds nothing due and skips it.
        now_db = utcnow()
        claimed = s.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == DeliveryStatus.PENDING,
                WebhookDelivery.next_attempt_at <= now_db + timedelta(seconds=1),
            )
            .values(next_attempt_at=now_db + timedelta(seconds=policy.timeout * 2 + 5))
            .returning(WebhookDelivery.endpoint_id)
        ).first()
        if claimed is None:
            return "skipped"  # not pending, not due, or another worker has it
        endpoint = s.get(WebhookEndpoint, claimed.endpoint_id)
        delivery = s.get(WebhookDelivery, delivery_id)
        if endpoint is None or not endpoint.enabled or delivery is None:
            return "skipped"
        url, event_type, payload = endpoint.url, delivery.event_type, delivery.payload
        secrets = endpoint_secrets(rt.keyring, endpoint)
    slot_key = rt.bus.key("webhooks", "inflight", endpoint.id)
    token = uuid.uuid4().hex
    now = time.time()
    if not rt.redis.eval(
        _ACQUIRE, 1, slot_key, now, token, policy.timeout * 2, policy.max_inflight
    ):
        _reschedule(delivery_id, BUSY_DEFER)
        return "deferred"
    started = time.monotonic()
    status_code: int | None = None
    error: str | None = None
    try:
        check_destination(url, policy.allow_private)
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        ts = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Wafleet-Event": event_type,
            "X-Wafleet-Delivery": str(delivery_id),
            "X-Wafleet-Timestamp": str(ts),
            "X-Wafleet-Signature": signature_header(secrets, ts, body),
        }
        response = httpx.post(
            url, content=body, headers=headers, timeout=policy.timeout, follow_redirects=False
        )
        status_code = response.status_code
    except BlockedDestination as exc:
        error = f"blocked: {exc}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        rt.redis.zrem(slot_key, token)
    elapsed = int((time.monotonic() - started) * 1000)
    return _record(delivery_id, status_code, error, elapsed, policy.max_attempts)


def _record(
    delivery_id: int,
    status_code: int | None,
    error: str | None,
    elapsed_ms: int,
    max_attempts: int,
) -> str:
    rt = current()
    with rt.sessions.begin() as s:
        delivery = s.get(WebhookDelivery, delivery_id, with_for_update=True)
        if delivery is None or delivery.status is not DeliveryStatus.PENDING:
            return "skipped"
        # The log numbers attempts over the delivery's whole life (replays included);
        # `delivery.attempts` counts those since the last replay, for the dead-letter limit.
        logged = s.scalar(
            select(func.count())
            .select_from(WebhookAttempt)
            .where(WebhookAttempt.delivery_id == delivery_id)
        )
        attempt = delivery.attempts + 1
        s.add(
            WebhookAttempt(
                delivery_id=delivery_id,
                attempt=int(logged or 0) + 1,
                status_code=status_code,
                error=error,
                duration_ms=elapsed_ms,
            )
        )
        delivery.attempts = attempt
        delivery.last_status_code = status_code
        delivery.last_error = error
        if status_code is not None and 200 <= status_code < 300:
            delivery.status = DeliveryStatus.DELIVERED
            delivery.delivered_at = utcnow()
            return "delivered"
        permanent = status_code == 410 or (error or "").startswith("blocked:")
        if permanent or attempt >= max_attempts:
            delivery.status = DeliveryStatus.DEAD
            return "dead"
        delivery.next_attempt_at = utcnow() + timedelta(seconds=_delay(attempt))
        return "retry"


def _reschedule(delivery_id: int, seconds: float) -> None:
    with current().sessions.begin() as s:
        delivery = s.get(WebhookDelivery, delivery_id, with_for_update=True)
        if delivery is not None and delivery.status is DeliveryStatus.PENDING:
            delivery.next_attempt_at = utcnow() + timedelta(seconds=seconds)


def enqueue(delivery_ids: list[int]) -> None:
    for delivery_id in delivery_ids:
        # Fire and forget (the outcome is the delivery row): no result subscription, which the
        # Redis backend would otherwise open per calling thread.
        app.send_task(
            WEBHOOK_DELIVER_TASK, args=[delivery_id], queue=WEBHOOKS_QUEUE, ignore_result=True
        )


def due_deliveries(limit: int = SWEEP_BATCH) -> list[int]:
    with current().sessions() as s:
        return list(
            s.scalars(
                select(WebhookDelivery.id)
                .where(
                    WebhookDelivery.status == DeliveryStatus.PENDING,
                    WebhookDelivery.next_attempt_at <= utcnow(),
                )
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(limit)
            )
        )


def replay_delivery(delivery_id: int) -> bool:
    """Send a delivered or dead delivery again, with a fresh retry schedule."""
    with current().sessions.begin() as s:
        delivery = s.get(WebhookDelivery, delivery_id, with_for_update=True)
        if delivery is None:
            return False
        delivery.status = DeliveryStatus.PENDING
        delivery.attempts = 0
        delivery.next_attempt_at = utcnow()
        delivery.delivered_at = None
    enqueue([delivery_id])
    return True


@app.task(name=WEBHOOK_DELIVER_TASK, acks_late=True, queue=WEBHOOKS_QUEUE)
def deliver(delivery_id: int) -> str:
    return deliver_once(int(delivery_id))


@app.task(name=WEBHOOK_SWEEP_TASK, acks_late=True)
def sweep() -> int:
    ids = due_deliveries()
    enqueue(ids)
    return len(ids)


@app.task(name=WEBHOOK_REPLAY_TASK, acks_late=True, queue=WEBHOOKS_QUEUE)
def replay(delivery_id: int) -> bool:
    return replay_delivery(int(delivery_id))


__all__ = [
    "BlockedDestination",
    "check_destination",
    "deliver",
    "deliver_once",
    "due_deliveries",
    "enqueue",
    "replay",
    "signature_header",
    "sweep",
]
