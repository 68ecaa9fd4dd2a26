"""`wafleet beat`: Celery beat for housekeeping (DESIGN §4: run exactly one).

It only publishes the periodic tasks of config.celery's `beat_schedule` (today: the webhook
sweep that re-enqueues due deliveries from the outbox); routing workers run them. Its schedule
state lives in `<WAFLEET_DATA_DIR>/celerybeat-schedule`.
"""

from __future__ import annotations

from config.logging import celery_flags
from config.settings import Settings
from workers.routing import configure_producer


def run_beat(settings: Settings) -> None:
    from tasks.app import app

    configure_producer(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app.start(
        [
            *celery_flags(settings),
            "beat",
            "--loglevel",
            settings.log_level,
            "--schedule",
            str(settings.data_dir / "celerybeat-schedule"),
        ]
    )
