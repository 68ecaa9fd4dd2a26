"""`wafleet gateway` as a real process: uvicorn on WAFLEET_GATEWAY_HOST/PORT serving health,
readiness, the API and the websocket; clean exit on SIGTERM; no API key in its log."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from config.settings import Settings
from tests.fleet.conftest import worker_env
from tests.gateway.conftest import TenantHandle

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Process:
    def __init__(self, settings: Settings) -> None:
        self.port = _free_port()
        env = worker_env(settings)
        env["WAFLEET_GATEWAY_PORT"] = str(self.port)
        self.lines: list[str] = []
        self.started = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "gateway"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if "Uvicorn running on" in line:
                self.started.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def gateway_process(gateway_settings: Settings, pg: object) -> Iterator[Process]:
    process = Process(gateway_settings)
    assert process.started.wait(TIMEOUT), "".join(process.lines)
    yield process
    process.proc.send_signal(signal.SIGTERM)
    try:
        process.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.proc.kill()
        process.proc.wait()
    process.reader.join(timeout=30)
    assert process.proc.stdout is not None
    process.proc.stdout.close()


def test_wafleet_gateway_serves_the_api(
    gateway_process: Process, client: object, tenant: TenantHandle
) -> None:
    with httpx.Client(base_url=gateway_process.url, timeout=TIMEOUT) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").json()["status"] == "ready"
        listed = http.get("/v1/instances", headers=tenant.headers)
        assert [i["id"] for i in listed.json()] == [tenant.instance_id]
        ws_url = f"ws://127.0.0.1:{gateway_process.port}/v1/events?token={tenant.key}"
        with connect(ws_url, open_timeout=TIMEOUT) as ws:
            assert json.loads(ws.recv(timeout=TIMEOUT))["type"] == "ready"
    gateway_process.proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the captured signal for its exit status.
    assert gateway_process.proc.wait(timeout=30) in {0, -signal.SIGTERM}
    gateway_process.reader.join(timeout=30)
    log = "".join(gateway_process.lines)
    assert "Finished server process" in log
    assert "GET /v1/instances 200" in log  # the access log names route templates
    assert tenant.key not in log
    assert tenant.key[:12] not in log
