"""Flower's Celery app (`celery -A workers.flower flower`) carries the fleet's broker options."""

from __future__ import annotations

import json
import subprocess
import sys

from config.settings import Settings
from tests.fleet.conftest import ROOT, worker_env

PROBE = (
    "import json, workers.flower as f; c = f.app.conf; "
    "print(json.dumps([c.broker_url, c.broker_transport_options]))"
)


def test_flower_app_uses_the_fleet_transport_options(gateway_settings: Settings) -> None:
    # A fresh interpreter: importing workers.flower configures tasks.app from the environment.
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=worker_env(gateway_settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    broker, options = json.loads(out.stdout.strip().splitlines()[-1])
    assert broker == gateway_settings.broker_url
    assert options["priority_steps"] == [0]
    assert options["global_keyprefix"] == f"{gateway_settings.redis_prefix}:"
