"""Fleet fixtures: real worker processes on the real test database and Redis (no eager mode)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from config.settings import Settings
from tests.services import REDIS_URL
from workers.routing import configure_producer

ROOT = Path(__file__).resolve().parents[2]
MASTER_KEY = "44" * 32
ARTIFACTS = ROOT / "tests" / "artifacts"  # worker logs of the last run (gitignored)


def log_file(name: str) -> Path:
    """Where a worker process started by a test writes its log (read them when a test fails)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


@pytest.fixture(scope="session")
def fleet_settings(pg_url: str, redis_prefix: str, redis_client: object) -> Settings:
    return Settings(
        database_url=pg_url,
        broker_url=REDIS_URL,
        redis_url=REDIS_URL,
        redis_prefix=f"{redis_prefix}-fleet",
        master_key=MASTER_KEY,
        log_level="WARNING",
        webhook_allow_private=True,  # the test receiver listens on 127.0.0.1
        webhook_max_inflight=1,
        webhook_timeout=20,
    )


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a `wafleet` subprocess load exactly `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAFLEET_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        elif isinstance(value, tuple):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            value = str(value).lower()
        env[f"WAFLEET_{name.upper()}"] = str(value)
    env["WAFLEET_LOG_LEVEL"] = "INFO"  # the worker log (tests/artifacts) explains failures
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.fixture(scope="session")
def producer(fleet_settings: Settings) -> Celery:
    """tasks.app configured to publish to the test run's queues (what other services do)."""
    configure_producer(fleet_settings)
    from tasks.app import app

    return app


@pytest.fixture(scope="session")
def routing_worker(fleet_settings: Settings, producer: Celery) -> Iterator[subprocess.Popen[bytes]]:
    log = open(log_file("routing-worker.log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workers.cli",
            "worker",
            "routing",
            "--pool",
            "prefork",
            "--concurrency",
            "2",
            "--hostname",
            f"routing-{os.getpid()}@test",
        ],
        env=worker_env(fleet_settings),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    yield proc
    proc.send_signal(signal.SIGTERM)  # warm shutdown: finish running tasks
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()
