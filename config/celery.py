"""The Celery configuration of every wafleet process (DESIGN §3.4, shared/research/celery.md).

Explicit queues and routes; JSON only; late acks with reject-on-worker-lost so a crash redelivers;
prefetch 1 so one slow task never holds others hostage; `priority_steps=[0]` on every producer,
worker and Flower, because kombu's Redis transport re-issues one BRPOP naming every consumed
queue × priority step for every message (measured: 1,000 queues 173 → 440 msg/s with [0]).
Per-instance queues `wa.out.<instance_id>` are declared at runtime by their owner.
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from tasks.queues import (
    ACCEPT_QUEUE,
    DELIVER_TASK,
    HOUSEKEEPING_QUEUE,
    INBOUND_QUEUE,
    INSTANCE_COMMAND_TASK,
    MESSAGE_STATUS_TASK,
    ROUTE_INBOUND_BATCH_TASK,
    ROUTE_INBOUND_TASK,
    SEND_BULK_TASK,
    SEND_MESSAGE_TASK,
    WEBHOOK_SWEEP_TASK,
    WEBHOOKS_QUEUE,
)

# Redis visibility timeout: how long an unacked message may stay reserved before redelivery.
# wafleet never uses long countdowns on Redis (DESIGN §3.5: delays live in the outbox), so this
# only has to exceed the longest task run.
VISIBILITY_TIMEOUT = 3600

BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
    "priority_steps": [0],
    "visibility_timeout": VISIBILITY_TIMEOUT,
}

WEBHOOK_SWEEP_SECONDS = 5.0

STATIC_QUEUES = (ACCEPT_QUEUE, INBOUND_QUEUE, WEBHOOKS_QUEUE, HOUSEKEEPING_QUEUE)


def celery_config(
    broker_url: str, *, result_backend: str | None = None, key_prefix: str = ""
) -> dict[str, Any]:
    """The Celery settings dict for `app.conf.update(...)`.

    `key_prefix` namespaces every broker and result key on Redis (kombu's `global_keyprefix`),
    so several deployments, or test runs, can share one Redis without seeing each other.
    """
    default_exchange = Exchange("wafleet", type="direct")
    transport = dict(BROKER_TRANSPORT_OPTIONS)
    backend_options: dict[str, Any] = {}
    if key_prefix and broker_url.startswith(("redis://", "rediss://", "unix://")):
        transport["global_keyprefix"] = f"{key_prefix}:"
    if key_prefix and result_backend and result_backend.startswith(("redis://", "rediss://")):
        backend_options["global_keyprefix"] = f"{key_prefix}:"
    return {
        "broker_url": broker_url,
        "result_backend": result_backend,
        "result_backend_transport_options": backend_options,
        "result_extended": False,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": HOUSEKEEPING_QUEUE,
        "task_default_exchange": "wafleet",
        "task_queues": tuple(
            Queue(name, default_exchange, routing_key=name) for name in STATIC_QUEUES
        ),
        "task_routes": {
            SEND_MESSAGE_TASK: {"queue": ACCEPT_QUEUE},
            SEND_BULK_TASK: {"queue": ACCEPT_QUEUE},
            INSTANCE_COMMAND_TASK: {"queue": ACCEPT_QUEUE},
            ROUTE_INBOUND_TASK: {"queue": INBOUND_QUEUE},
            ROUTE_INBOUND_BATCH_TASK: {"queue": INBOUND_QUEUE},
            MESSAGE_STATUS_TASK: {"queue": INBOUND_QUEUE},
            "wafleet.webhooks.*": {"queue": WEBHOOKS_QUEUE},
            "wafleet.housekeeping.*": {"queue": HOUSEKEEPING_QUEUE},
            # DELIVER_TASK has no static route: the producer names wa.out.<instance_id>; nor
            # has wafleet.session_command: it names the owner's wa.session.<worker_id>.
        },
        "task_create_missing_queues": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "enable_utc": True,
        "timezone": "UTC",
        "result_expires": 3600,
        # celery beat (DESIGN §4 housekeeping): retries of webhooks come back from the outbox.
        "beat_schedule": {
            "webhook-sweep": {"task": WEBHOOK_SWEEP_TASK, "schedule": WEBHOOK_SWEEP_SECONDS},
        },
        "wafleet_deliver_task": DELIVER_TASK,
    }
