"""The Celery app Flower monitors: `celery -A workers.flower flower`.

Flower must use the same broker, key prefix and transport options as every producer and worker
(DESIGN §3.4: `priority_steps=[0]`, or each of its polls names every queue × 10 priorities), so
it loads them from the WAFLEET_* settings like any wafleet process instead of its own flags.
"""

from __future__ import annotations

from config.settings import load_settings
from tasks.app import app
from workers.routing import configure_producer

configure_producer(load_settings())

__all__ = ["app"]
