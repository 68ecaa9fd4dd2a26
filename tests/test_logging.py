"""JSON logs (WAFLEET_LOG_FORMAT=json): the formatter's fields, and real processes — a routing
worker (Celery's own loggers included), a session worker and `wafleet gateway` — whose every
output line is one JSON object."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from celery import Celery

from config.logging import JsonFormatter, celery_flags, configure_logging
from config.settings import Settings
from tasks.queues import ROUTE_INBOUND_TASK
from tests.fleet.conftest import (  # noqa: F401  (fixtures)
    ROOT,
    fleet_settings,
    producer,
    worker_env,
)
from tests.gateway.test_process import Process

WAIT = 90.0


def _record(**extra: Any) -> logging.LogRecord:
    logger = logging.getLogger("wafleet.test")
    return logger.makeRecord(
        "wafleet.test", logging.WARNING, __file__, 1, "sent %s to %s", (3, "x"), None, extra=extra
    )


def test_formatter_fields_extra_and_exception() -> None:
    tenant, instance = uuid.uuid4(), uuid.uuid4()
    line = JsonFormatter("routing", "node-1").format(
        _record(instance_id=instance, tenant_id=str(tenant), attempt=2, note="a\nb")
    )
    assert "\n" not in line
    got = json.loads(line)
    assert got["level"] == "WARNING"
    assert got["logger"] == "wafleet.test"
    assert got["message"] == "sent 3 to x"
    assert got["role"] == "routing"
    assert got["worker_id"] == "node-1"
    assert got["instance_id"] == str(instance)  # not JSON itself: its str
    assert got["tenant_id"] == str(tenant)
    assert got["attempt"] == 2
    assert got["note"] == "a\nb"
    assert got["timestamp"].endswith("Z")
    assert isinstance(got["pid"], int)
    assert "args" not in got
    assert "msg" not in got

    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    got = json.loads(JsonFormatter("gateway").format(record))
    assert "worker_id" not in got
    assert got["exception"].startswith("Traceback")
    assert "ValueError: boom" in got["exception"]


def test_configure_logging_json_and_text(fleet_settings: Settings) -> None:  # noqa: F811
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        assert configure_logging(fleet_settings, "beat") is None  # text: nothing changes
        assert root.handlers == saved[0]
        assert celery_flags(fleet_settings) == []
        as_json = fleet_settings.model_copy(update={"log_format": "json", "log_level": "INFO"})
        out = io.StringIO()
        handler = configure_logging(as_json, "beat", stream=out)
        assert root.handlers == [handler]
        logging.getLogger("celery.beat").info("tick", extra={"tenant_id": "t-1"})
        (line,) = out.getvalue().splitlines()
        got = json.loads(line)
        assert (got["logger"], got["message"], got["role"]) == ("celery.beat", "tick", "beat")
        assert got["tenant_id"] == "t-1"
        assert celery_flags(as_json) == ["--quiet"]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


class Output:
    """A subprocess's log (stderr), line by line, read on a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()

    def records(self) -> list[dict[str, Any]]:
        parsed = []
        for line in list(self.lines):
            assert line.startswith("{"), f"not a JSON log line: {line!r} in {self.lines[-8:]}"
            parsed.append(json.loads(line))
        return parsed

    def wait_for(self, what: str, check: Any) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((r for r in self.records() if check(r)), None)

        with self.changed:
            assert self.changed.wait_for(lambda: found() is not None, timeout=WAIT), (
                f"no log line with {what}:\n{''.join(self.lines)[-4000:]}"
            )
        record = found()
        assert record is not None
        return record


@contextmanager
def process(argv: list[str], settings: Settings) -> Iterator[Output]:
    env = worker_env(settings)
    env["WAFLEET_LOG_FORMAT"] = "json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", *argv],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,  # Celery's direct notices ("worker: Warm shutdown")
        stderr=subprocess.PIPE,
        text=True,
    )
    out = Output(proc)
    try:
        yield out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.reader.join(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()


@pytest.mark.timeout(400)
def test_routing_worker_logs_json_lines(
    fleet_settings: Settings,  # noqa: F811
    producer: Celery,  # noqa: F811
    pg: object,
) -> None:
    name = f"routing-json-{uuid.uuid4().hex[:6]}@test"
    # Its own queue: a session's other routing worker must not take this test's task.
    queue = f"wa.test.{name}"
    argv = ["worker", "routing", "--pool", "prefork", "--concurrency", "1", "--hostname", name]
    argv += ["--queues", queue]
    with process(argv, fleet_settings) as out:
        ready = out.wait_for("ready", lambda r: r["message"] == f"{name} ready.")
        assert ready["role"] == "routing"
        assert ready["worker_id"] == name
        assert ready["logger"].startswith("celery.")  # Celery's own logger, our format

        # A task that logs in the pool process, with the instance id passed as `extra`.
        instance = str(uuid.uuid4())
        message = {
            "instance_id": instance,
            "wa_message_id": "3EB0JSONLOG",
            "chat_jid": "5511911112222@s.whatsapp.net",
            "sender_jid": "5511911112222@s.whatsapp.net",
            "timestamp": 1_700_000_000,
            "type": "text",
            "sender_phone": "5511911112222",
            "text": "hi",
        }
        producer.send_task(ROUTE_INBOUND_TASK, args=[message], queue=queue)
        warned = out.wait_for("the task's warning", lambda r: r["logger"] == "tasks.inbound")
        assert warned["level"] == "WARNING"
        assert warned["instance_id"] == instance
        assert warned["role"] == "routing"
        assert "3EB0JSONLOG" in warned["message"]
        outcome = out.wait_for(
            "Celery's task outcome",
            lambda r: r["logger"].startswith("celery.app.trace"),
        )
        assert "raised expected" in outcome["message"]
        assert "data" not in outcome  # Celery's argument reprs stay out of the log
        assert all("5511911112222" not in json.dumps(r) for r in out.records())
        out.proc.terminate()
        out.proc.wait(timeout=60)
        out.reader.join(timeout=30)
    records = out.records()  # every line, shutdown included, is JSON
    assert {r["role"] for r in records} == {"routing"}
    assert all({"timestamp", "level", "logger", "message"} <= set(r) for r in records)


@pytest.mark.timeout(400)
def test_session_worker_and_gateway_log_json_lines(
    fleet_settings: Settings,  # noqa: F811
    pg: object,
) -> None:
    node = f"json-{uuid.uuid4().hex[:6]}"
    argv = ["worker", "session", "--session-factory", "tests.fleet.probe:make_factory"]
    with process([*argv, "--node-id", node], fleet_settings) as out:
        ready = out.wait_for("ready", lambda r: r["message"].endswith(" ready."))
        assert (ready["role"], ready["worker_id"]) == ("session", node)
    assert all(r["worker_id"] == node for r in out.records())

    settings = fleet_settings.model_copy(update={"log_format": "json"})
    gateway = Process(settings)
    try:
        assert gateway.started.wait(WAIT), "".join(gateway.lines)
    finally:
        gateway.proc.terminate()
        gateway.proc.wait(timeout=60)
        gateway.reader.join(timeout=30)
        assert gateway.proc.stdout is not None
        gateway.proc.stdout.close()
    records = [json.loads(line) for line in gateway.lines]
    assert {r["role"] for r in records} == {"gateway"}
    assert any(r["logger"].startswith("uvicorn") for r in records)
    assert any("Uvicorn running on" in r["message"] for r in records)
