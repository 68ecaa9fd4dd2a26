"""What one gateway process holds, built once by `create_app` from settings: the task runtime
(database sessions, Redis, event bus, keyring), the broker's address, the admin key and the rate
limit. Endpoints reach it through `of(request)`; nothing here reads settings itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, cast

import redis
from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import HTTPConnection

from storage.bus import EventBus
from storage.crypto import Keyring
from tasks.runtime import Runtime
from workers.gateway.errors import ApiError


@dataclass(frozen=True, slots=True)
class RateLimit:
    requests: int  # per key per window; 0 = unlimited
    window: float  # seconds


@dataclass(slots=True)
class Gateway:
    runtime: Runtime
    redis_url: str
    broker_url: str
    broker_redis: redis.Redis | None  # the broker's Redis, when the broker is Redis
    key_prefix: str
    admin_key: bytes | None = field(repr=False)
    rate_limit: RateLimit

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self.runtime.sessions

    @property
    def bus(self) -> EventBus:
        return self.runtime.bus

    @property
    def redis(self) -> redis.Redis:
        return self.runtime.redis

    def keyring(self) -> Keyring:
        if self.runtime.keyring is None:
            raise ApiError(
                503,
                "master_key_missing",
                "this gateway runs without WAFLEET_MASTER_KEY, so it cannot create or open secrets",
            )
        return self.runtime.keyring


def of(conn: HTTPConnection) -> Gateway:
    return cast(Gateway, conn.app.state.gateway)


def _dependency(request: Request) -> Gateway:
    return of(request)


Dep = Annotated[Gateway, Depends(_dependency)]
