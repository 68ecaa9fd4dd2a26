"""`wafleet worker routing`: the Celery worker for stateless tasks (DESIGN §4).

It consumes wa.accept, wa.inbound, wa.webhooks and wa.housekeeping (or the queues given), with
the prefork pool by default; each child builds its own database engine and Redis client after
the fork (engines and sockets must never cross a fork).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery.signals import worker_process_init

from config.celery import STATIC_QUEUES, celery_config
from config.logging import celery_flags
from config.settings import EMBEDDED, Settings, SettingsError
from storage.bus import EventBus
from storage.crypto import Keyring
from storage.db import create_engine_from_url, session_factory
from tasks import runtime
from tasks.app import app, configure

logger = logging.getLogger(__name__)

TASK_MODULES = ("tasks.accept", "tasks.commands", "tasks.inbound", "tasks.webhooks")


def resolve_urls(settings: Settings) -> tuple[str, str]:
    """(broker URL, Redis URL); 'embedded' is only meaningful under `wafleet demo`."""
    if settings.broker_url == EMBEDDED:
        raise SettingsError(
            "WAFLEET_BROKER_URL",
            "'embedded' works only under `wafleet demo`; set a redis:// or "
            "amqp:// URL for a standalone worker",
        )
    if settings.redis_url == EMBEDDED:
        raise SettingsError(
            "WAFLEET_REDIS_URL", "'embedded' works only under `wafleet demo`; set a redis:// URL"
        )
    return settings.broker_url, settings.redis_url


def configure_producer(settings: Settings) -> None:
    """Configure tasks.app for publishing (and for running tasks in this process)."""
    broker, redis_url = resolve_urls(settings)
    configure(celery_config(broker, result_backend=redis_url, key_prefix=settings.redis_prefix))
    for module in TASK_MODULES:
        __import__(module)


def build_runtime(settings: Settings) -> runtime.Runtime:
    _, redis_url = resolve_urls(settings)
    client: redis.Redis = redis.Redis.from_url(redis_url)
    url = settings.effective_database_url
    pool: dict[str, Any] = {} if url.startswith("sqlite") else {"pool_size": 5, "max_overflow": 5}
    engine = create_engine_from_url(url, **pool)
    keyring = None
    if settings.master_key is not None:
        current_key, previous = settings.master_keys()
        keyring = Keyring.from_bytes(current_key, previous)
    return runtime.Runtime(
        sessions=session_factory(engine),
        bus=EventBus(client, settings.redis_prefix),
        redis=client,
        keyring=keyring,
        webhooks=runtime.WebhookPolicy(
            allow_private=settings.webhook_allow_private,
            timeout=settings.webhook_timeout,
            max_attempts=settings.webhook_max_attempts,
            max_inflight=settings.webhook_max_inflight,
        ),
    )


def run_routing_worker(
    settings: Settings,
    *,
    queues: list[str] | None = None,
    concurrency: int | None = None,
    pool: str = "prefork",
    hostname: str | None = None,
) -> None:
    configure_producer(settings)

    def init_child(**_: Any) -> None:
        runtime.configure(build_runtime(settings))

    worker_process_init.connect(init_child, weak=False)
    if pool != "prefork":
        runtime.configure(build_runtime(settings))
    argv = [
        *celery_flags(settings),
        "worker",
        "--queues",
        ",".join(queues or STATIC_QUEUES),
        "--pool",
        pool,
        "--loglevel",
        settings.log_level,
        "--without-gossip",
        "--without-mingle",
    ]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    if hostname:
        argv += ["--hostname", hostname]
    app.worker_main(argv)
