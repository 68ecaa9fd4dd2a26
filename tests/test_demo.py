"""The README's run command, `wafleet demo`, on the embedded default: SQLite + an embedded
Redis, with the simulator, a session worker and a routing worker as real processes. It needs
no Postgres or Redis server (every WAFLEET_ setting is removed from the environment)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from workers.cli import main
from workers.embedded import redis_server_binary


def test_demo_links_sends_receives_and_notes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if redis_server_binary() is None:
        pytest.skip("no redis-server binary for the embedded mode on this platform")
    for var in list(os.environ):
        if var.startswith("WAFLEET_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("WAFLEET_DATA_DIR", str(tmp_path / "demo"))
    out, err = io.StringIO(), io.StringIO()
    assert main(["demo"], out=out, err=err) == 0, err.getvalue() + out.getvalue()
    text = out.getvalue()
    for line in (
        "broker     embedded Redis",
        "The instance shows this QR",
        "connected  the instance is linked and logged in",
        "sent       3EB0",
        "received   +5511912340000: 'Obrigada!",
        "[pending]",
        "note       from the owner's phone: 'Nota: reservar duas cadeiras.'",
        "stopped    simulator, workers and broker",
        "created    tenant 'demo'",
    ):
        assert line in text, text
    assert (tmp_path / "demo" / "master.key").stat().st_mode & 0o777 == 0o600
    # A second run works too: a fresh instance, the same tenant, the client's same booking.
    again = io.StringIO()
    assert main(["demo"], out=again, err=err) == 0, err.getvalue() + again.getvalue()
    assert "created    tenant" not in again.getvalue()
    assert "connected  the instance is linked" in again.getvalue()
