"""What tasks use at run time — a session factory and the event bus — set up by the process
entry point (`configure`), never read from settings by the tasks themselves."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from sqlalchemy.orm import Session, sessionmaker

from storage.bus import EventBus
from storage.crypto import Keyring


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    allow_private: bool = False
    timeout: float = 10.0
    max_attempts: int = 10
    max_inflight: int = 2


@dataclass(frozen=True, slots=True)
class Runtime:
    sessions: sessionmaker[Session]
    bus: EventBus
    redis: redis.Redis
    keyring: Keyring | None = None  # needed to open webhook secrets and instance keys
    webhooks: WebhookPolicy = field(default_factory=WebhookPolicy)
    # Session workers only: hands a wake-up (instance id, outbox id) to the instance's actor;
    # returns False when this process does not own the instance (the wake-up is then dropped:
    # the owner works from the outbox, DESIGN §3.3).
    deliver_hook: Callable[[uuid.UUID, int], bool] | None = None
    # Session workers only: makes the instance's session apply its durable command state
    # (tasks.commands); False when this process does not own the instance.
    command_hook: Callable[[uuid.UUID], bool] | None = None
    # Session workers only: asks WhatsApp (usync, through the instance's session) whether a
    # number has an account; None when this process does not own it or it is not connected.
    number_hook: Callable[[uuid.UUID, str], bool | None] | None = None
    worker_id: str | None = None  # the session worker's id (its `wa.session.<id>` queue)


_current: Runtime | None = None


class NotConfigured(RuntimeError):
    """A task ran in a process whose entry point did not call tasks.runtime.configure()."""


def configure(runtime: Runtime) -> None:
    global _current
    _current = runtime


def current() -> Runtime:
    if _current is None:
        raise NotConfigured("tasks.runtime.configure() was not called by the entry point")
    return _current
