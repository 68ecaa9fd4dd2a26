"""The infrastructure the fleet stands on: real Redis with a per-run key prefix, the embedded
Redis of the zero-install mode, and the `wafleet demo` command of the README."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import redis

from workers.embedded import EmbeddedRedis, redis_server_binary


def test_redis_round_trip_under_the_run_prefix(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    key = f"{redis_prefix}:probe"
    redis_client.set(key, b"1", ex=60)
    assert redis_client.get(key) == b"1"


def test_embedded_redis_starts_answers_and_stops(tmp_path: Path) -> None:
    if redis_server_binary() is None:
        pytest.skip("no redis-server binary for the embedded mode on this platform")
    with EmbeddedRedis(tmp_path) as server:
        client: redis.Redis = redis.Redis.from_url(server.url)
        assert client.ping()
        client.set("k", "v")
        assert client.get("k") == b"v"
        client.close()
        port = server.port
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        pass
    assert not (tmp_path / "embedded-redis.pid").exists()
