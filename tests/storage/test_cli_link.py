"""`wafleet link`: an instance's SQL key store is linked to a simulated phone by QR and by
pairing code, through the CLI, against the simulator running on a loop in a second thread."""

from __future__ import annotations

import asyncio
import io
import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from protocol.simulator import Simulator
from tests.storage.test_cli import env, run  # noqa: F401  (env is a fixture)
from workers.cli import main

PHONE = "15550001111"
WAIT = 30.0


class Lines(io.StringIO):
    """A text stream whose complete lines can be awaited from another thread."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: queue.Queue[str] = queue.Queue()
        self._partial = ""

    def write(self, text: str) -> int:
        self._partial += text
        *done, self._partial = self._partial.split("\n")
        for line in done:
            self.lines.put(line)
        return super().write(text)


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    loop = asyncio.new_event_loop()
    sim = Simulator(seed=b"cli")
    sim.world.create_account(PHONE, "Owner")
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(sim.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(WAIT)
    try:
        yield sim
    finally:
        asyncio.run_coroutine_threadsafe(sim.stop(), loop).result(WAIT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT)
        loop.close()


def _instance() -> str:
    assert run("db", "upgrade")[0] == 0
    assert run("tenant", "create", "salon")[0] == 0
    code, out, _ = run("--json", "instance", "create", "--tenant", "salon", "--name", "desk")
    assert code == 0
    return str(json.loads(out)[0]["id"])


@pytest.mark.parametrize("how", ["qr", "code"])
def test_link_by_qr_and_by_code(env: Path, simulator: Simulator, how: str) -> None:  # noqa: F811
    instance = _instance()
    out, err = Lines(), io.StringIO()
    argv = ["--json", "link", "--instance", instance, "--server", simulator.ws_url]
    argv += ["--root-key", simulator.root_public_key.hex(), "--timeout", "60"]
    argv += ["--qr"] if how == "qr" else ["--code", PHONE]
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(main(argv, out=out, err=err)))
    worker.start()
    first = json.loads(out.lines.get(timeout=WAIT))
    body = {"qr": first["qr"]} if how == "qr" else {"code": first["code"]}
    r = httpx.post(f"{simulator.http_url}/control/accounts/{PHONE}/link", json=body, timeout=WAIT)
    assert r.status_code == 200, r.text
    worker.join(WAIT * 2)
    assert result == [0], err.getvalue()
    assert f'"jid": "{PHONE}:1@s.whatsapp.net"' in out.getvalue()
    code, _, error = run("link", "--instance", instance, "--qr")
    assert code != 0
    assert "already linked" in error
