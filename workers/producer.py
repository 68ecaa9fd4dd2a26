"""`connect()`: a ready Producer (tasks.client) for a broker URL, with wafleet's Celery config
(JSON, `priority_steps=[0]`, the deployment's key prefix)."""

from __future__ import annotations

from celery import Celery

from config.celery import celery_config
from tasks.client import Producer


def connect(
    broker_url: str, *, result_backend: str | None = None, key_prefix: str = "wafleet"
) -> Producer:
    app = Celery("wafleet-producer", set_as_current=False)
    app.conf.update(
        celery_config(
            broker_url, result_backend=result_backend or broker_url, key_prefix=key_prefix
        )
    )
    return Producer(app)
