"""A session backend for testing ownership without WhatsApp (`--session-factory
tests.fleet.probe:make_factory`).

Each open session is recorded in Redis as a member of `<prefix>:probe:open:<instance>` (the
worker's node id); opening while another member is present counts a violation of DESIGN §3.1 in
`<prefix>:probe:violations`. Wake-ups are appended to `<prefix>:probe:woken:<instance>` as
`<node>:<outbox_id>`. The real sockets' equivalent is the simulator's
`max_concurrent_logins_per_device`.
"""

from __future__ import annotations

import os

import redis

from config.settings import Settings
from workers.session.host import Session, SessionContext, SessionFactory

_OPEN = """
local n = redis.call('SCARD', KEYS[1])
if n > 0 and redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  redis.call('RPUSH', KEYS[2], ARGV[2] .. ' opened while held by ' ..
             table.concat(redis.call('SMEMBERS', KEYS[1]), ','))
end
redis.call('SADD', KEYS[1], ARGV[1])
return n
"""


class ProbeSession:
    def __init__(self, client: redis.Redis, prefix: str, node: str, ctx: SessionContext) -> None:
        self._client = client
        self._node = node
        self._ctx = ctx
        self._open_key = f"{prefix}:probe:open:{ctx.instance_id}"
        self._violations = f"{prefix}:probe:violations"
        self._woken = f"{prefix}:probe:woken:{ctx.instance_id}"

    async def open(self) -> None:
        self._client.eval(
            _OPEN, 2, self._open_key, self._violations, self._node, str(self._ctx.instance_id)
        )

    async def close(self) -> None:
        self._client.srem(self._open_key, self._node)

    def wake(self, outbox_id: int) -> None:
        if self._ctx.is_fenced_in():
            self._client.rpush(self._woken, f"{self._node}:{outbox_id}")


def make_factory(settings: Settings) -> SessionFactory:
    client: redis.Redis = redis.Redis.from_url(settings.redis_url)
    node = os.environ.get("WAFLEET_PROBE_NODE", str(os.getpid()))

    def factory(ctx: SessionContext) -> Session:
        return ProbeSession(client, settings.redis_prefix, node, ctx)

    return factory
