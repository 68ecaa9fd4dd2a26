"""What tasks use at run time — a session factory and the event bus — set up by the process
entry point (`configure`), never read from settings by the tasks themselves."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from sqlalchemy.orm import Session, sessionmaker

from storage.bus import EventBus


@dataclass(frozen=True, slots=True)
class Runtime:
    sessions: sessionmaker[Session]
    bus: EventBus
    redis: redis.Redis


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
