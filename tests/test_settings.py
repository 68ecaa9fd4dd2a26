"""Settings: defaults, parsing, and one precise line per bad value."""

from __future__ import annotations

import base64
import os

import pytest

from config.celery import celery_config
from config.settings import SettingsError, load_settings
from tasks.queues import ACCEPT_QUEUE, INBOUND_QUEUE, WEBHOOKS_QUEUE, out_queue

KEY_HEX = "11" * 32


def test_defaults_are_the_embedded_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("WAFLEET_"):
            monkeypatch.delenv(var)
    s = load_settings()
    assert s.broker_url == "embedded"
    assert s.redis_url == "embedded"
    assert s.effective_database_url.startswith("sqlite:///")
    assert s.retry_schedule == (5.0, 15.0, 30.0, 60.0, 120.0, 300.0)
    assert s.retry_jitter == 0.2
    assert s.qr_rounds == 3


def test_values_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAFLEET_DATABASE_URL", "postgresql://u@db/wafleet")
    monkeypatch.setenv("WAFLEET_RETRY_SCHEDULE", "1, 2.5,10")
    monkeypatch.setenv("WAFLEET_MASTER_KEY", base64.b64encode(bytes(range(32))).decode())
    monkeypatch.setenv("WAFLEET_PREVIOUS_MASTER_KEYS", f"{KEY_HEX},{'22' * 32}")
    monkeypatch.setenv("WAFLEET_LOG_LEVEL", "debug")
    s = load_settings()
    assert s.effective_database_url == "postgresql://u@db/wafleet"
    assert s.retry_schedule == (1.0, 2.5, 10.0)
    current, previous = s.master_keys()
    assert current == bytes(range(32))
    assert previous == (b"\x11" * 32, b"\x22" * 32)
    assert s.log_level == "DEBUG"
    assert bytes(range(32)).hex() not in repr(s)
    assert KEY_HEX not in repr(s)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("WAFLEET_MASTER_KEY", "abc", "WAFLEET_MASTER_KEY: must decode to 32 bytes"),
        ("WAFLEET_MASTER_KEY", "zz" * 32, "WAFLEET_MASTER_KEY: must be 32 bytes"),
        ("WAFLEET_PREVIOUS_MASTER_KEYS", "nope", "WAFLEET_PREVIOUS_MASTER_KEYS:"),
        ("WAFLEET_RETRY_SCHEDULE", "5,-1", "WAFLEET_RETRY_SCHEDULE: delays must be positive"),
        ("WAFLEET_RETRY_SCHEDULE", "5,soon", "WAFLEET_RETRY_SCHEDULE:"),
        ("WAFLEET_RETRY_SCHEDULE", " , ", "WAFLEET_RETRY_SCHEDULE: must list at least one"),
        ("WAFLEET_LEASE_RENEW", "45", "WAFLEET_LEASE_RENEW: must be shorter than"),
        ("WAFLEET_GATEWAY_PORT", "99999", "WAFLEET_GATEWAY_PORT:"),
        ("WAFLEET_DATABASE_URL", "my-db", "WAFLEET_DATABASE_URL: must be a URL"),
        ("WAFLEET_LOG_LEVEL", "chatty", "WAFLEET_LOG_LEVEL:"),
        ("WAFLEET_WA_ROOT_KEY", "xyz", "WAFLEET_WA_ROOT_KEY: must be 64 hex digits"),
        ("WAFLEET_RETRY_JITTER", "1.5", "WAFLEET_RETRY_JITTER:"),
    ],
)
def test_bad_values_give_one_precise_line(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    message = str(err.value)
    assert message.startswith(expected)
    assert "\n" not in message
    assert err.value.variable == variable
    if "MASTER_KEY" in variable:
        assert value not in message  # secrets are never echoed


def test_missing_master_key_is_reported_when_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WAFLEET_MASTER_KEY", raising=False)
    with pytest.raises(SettingsError) as err:
        load_settings().master_keys()
    assert str(err.value).startswith("WAFLEET_MASTER_KEY: not set")


def test_celery_config_follows_the_design() -> None:
    conf = celery_config("redis://127.0.0.1:6379/0")
    assert conf["broker_transport_options"]["priority_steps"] == [0]
    assert conf["task_acks_late"]
    assert conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["accept_content"] == ["json"]
    assert conf["task_serializer"] == "json"
    names = {q.name for q in conf["task_queues"]}
    assert {ACCEPT_QUEUE, INBOUND_QUEUE, WEBHOOKS_QUEUE} <= names
    assert conf["task_routes"]["wafleet.send_message"] == {"queue": ACCEPT_QUEUE}
    assert out_queue("abc") == "wa.out.abc"
