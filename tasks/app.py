"""The Celery application object every wafleet task is registered on.

It carries no configuration of its own: the process that starts it (a `wafleet worker ...`
command, the gateway, a producer using tasks.client) calls `configure(conf)` with the dict
from config.celery, so tasks never read settings themselves.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

app = Celery("wafleet", set_as_current=False)


def configure(conf: dict[str, Any]) -> Celery:
    app.conf.update(conf)
    return app
