"""Where the test suite finds real services, and what happens when one is missing.

Under CI (`CI=true`) or with `WAFLEET_REQUIRE_SERVICES=1` (set by `.ci/run` and `make test`), a
missing Postgres, Redis, RabbitMQ or node is a test failure, never a skip. Elsewhere the tests
that need it are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
INTEROP_DIR = ROOT / "tests" / "interop"

DATABASE_URL = os.environ.get(
    "WAFLEET_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("WAFLEET_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("WAFLEET_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


def services_required() -> bool:
    return (
        os.environ.get("CI", "").lower() == "true"
        or os.environ.get("WAFLEET_REQUIRE_SERVICES", "") == "1"
    )


def unavailable(reason: str) -> NoReturn:
    """Fail (CI, `make test`) or skip (a developer's ad-hoc run) a test whose service is missing."""
    if services_required():
        pytest.fail(f"required service unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


def ensure_reference_packages() -> Path:
    """Install the pinned reference client (Baileys, libsignal) into tests/interop once.

    Uses `npm ci --ignore-scripts` against the committed lockfile: registry packages only, no
    install scripts. Returns the interop directory.
    """
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        unavailable("node/npm not on PATH (needed for the reference-client interop tests)")
    marker = INTEROP_DIR / "node_modules" / ".wafleet-installed"
    lock = INTEROP_DIR / "package-lock.json"
    if not marker.exists() or marker.stat().st_mtime < lock.stat().st_mtime:
        proc = subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=INTEROP_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            unavailable(f"npm ci in tests/interop failed: {proc.stderr[-2000:]}")
        marker.touch()
    return INTEROP_DIR


def _rabbitmqctl(*args: str) -> None:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        unavailable("rabbitmqctl not on PATH (needed for a per-run RabbitMQ vhost)")
    proc = subprocess.run([ctl, *args], capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        unavailable(f"rabbitmqctl {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")


@contextmanager
def rabbitmq_vhost(name: str) -> Iterator[str]:
    """A fresh RabbitMQ vhost for one test run (its queues vanish with it); yields its AMQP URL.

    RabbitMQ has no key prefix (kombu's `global_keyprefix` is Redis-only), so a run is isolated
    by its own vhost, created and deleted with `rabbitmqctl` (the management plugin is not
    needed). Missing RabbitMQ follows the fail-don't-skip rule above.
    """
    parts = urlsplit(RABBITMQ_URL)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        unavailable(f"RabbitMQ at {host}:{port}: {exc}")
    user = parts.username or "guest"
    _rabbitmqctl("add_vhost", name)
    try:
        _rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
        yield urlunsplit((parts.scheme, parts.netloc, "/" + quote(name, safe=""), "", ""))
    finally:
        _rabbitmqctl("delete_vhost", name)
