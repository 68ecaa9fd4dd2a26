"""Realtime events over a websocket: `GET /v1/events` (upgrade).

Protocol (JSON text frames):
  1. Authenticate with `?token=wfk_...`, or send first `{"token": "wfk_..."}` within
     AUTH_TIMEOUT seconds. Filters come as query parameters or in that first message:
     `instance_id` (one instance), `types` (comma-separated or a list), `last_event_id`.
  2. The server answers `{"type": "ready", "last_event_id": ...}`; from then on every event of the
     tenant's stream that passes the filters arrives as `{id, type, instance_id, timestamp,
     data}` (event types contain a colon, e.g. `whatsapp:message`; control frames do not).
  3. With `last_event_id` the stream resumes right after that event. If events after it were
     already trimmed, a `{"type": "gap", ...}` frame comes first, then the oldest retained ones.
Refusals are an `{"type": "error", "code", "message", ...}` frame (the API's error body plus
`type`), then a close with code 4400 (bad request), 4401 (auth), 4403 (scope) or 4404.

Reads use an asyncio Redis client per connection (XREAD BLOCK), so an idle subscriber holds a
socket, not a worker thread.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from typing import Any

import anyio
import redis.asyncio as aioredis
from fastapi import APIRouter, WebSocket
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from storage.bus import Event, id_before
from workers.gateway import auth, state
from workers.gateway.errors import ApiError

router = APIRouter(tags=["events"])

AUTH_TIMEOUT = 10.0  # seconds to send the first (token) message
POLL_MS = 5_000  # XREAD BLOCK: wake at least this often to notice a closed socket
BATCH = 100
STREAM_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")
CLOSE_CODES = {400: 4400, 401: 4401, 403: 4403, 404: 4404, 429: 4429}


class Subscription:
    def __init__(
        self,
        principal: auth.Principal,
        instance_id: str | None,
        types: frozenset[str] | None,
        last_event_id: str | None,
    ) -> None:
        self.principal = principal
        self.instance_id = instance_id
        self.types = types
        self.last_event_id = last_event_id

    def wants(self, event: Event) -> bool:
        restricted = self.principal.instance_id
        if restricted is not None and event.instance_id != str(restricted):
            return False
        if self.instance_id is not None and event.instance_id != self.instance_id:
            return False
        return self.types is None or event.type in self.types


async def _first_message(ws: WebSocket) -> dict[str, Any]:
    with anyio.fail_after(AUTH_TIMEOUT):
        text = await ws.receive_text()
    try:
        hello = json.loads(text)
    except ValueError:
        hello = None
    if not isinstance(hello, dict):
        raise ApiError(400, "invalid_request", 'the first message must be {"token": "wfk_..."}')
    return hello


def _types(value: Any) -> frozenset[str] | None:
    if value is None or value == "":
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
        raise ApiError(400, "invalid_request", "types must be a list of event types")
    return frozenset(t.strip() for t in items if t.strip()) or None


def _subscribe(g: state.Gateway, params: dict[str, Any]) -> Subscription:
    """Authenticate and validate the filters (sync: database lookups)."""
    token = params.get("token")
    if not isinstance(token, str) or not token:
        raise ApiError(401, "missing_api_key", "send ?token=<API key> or a first {token} message")
    principal = auth.authenticate_key(g, token)
    auth.enforce_rate_limit(g, principal.key_id, None)
    if auth.READ not in principal.scopes:
        raise ApiError(403, "insufficient_scope", "this API key lacks the 'read' scope")
    instance_id = params.get("instance_id")
    if instance_id is not None:
        try:
            wanted = uuid.UUID(str(instance_id))
        except ValueError:
            raise ApiError(400, "invalid_request", "instance_id is not an id") from None
        with g.sessions() as s:
            auth.visible_instance(s, principal, wanted)
        instance_id = str(wanted)
    last = params.get("last_event_id")
    if last is not None and (not isinstance(last, str) or not STREAM_ID.match(last)):
        raise ApiError(400, "invalid_request", "last_event_id must be an event id like 1700-0")
    return Subscription(principal, instance_id, _types(params.get("types")), last)


async def _refuse(ws: WebSocket, exc: ApiError) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await ws.send_json({"type": "error", **exc.body.model_dump(mode="json")})
        await ws.close(CLOSE_CODES.get(exc.status, 4400))


@router.websocket("/events")
async def events(ws: WebSocket) -> None:
    g = state.of(ws)
    await ws.accept()
    params: dict[str, Any] = dict(ws.query_params)
    try:
        if "token" not in params:
            params.update(await _first_message(ws))
        sub = await run_in_threadpool(_subscribe, g, params)
    except ApiError as exc:
        await _refuse(ws, exc)
        return
    except TimeoutError:
        await _refuse(ws, ApiError(401, "missing_api_key", "no token within the time limit"))
        return
    except WebSocketDisconnect:
        return
    metrics = ws.app.state.metrics
    metrics.websockets.inc()
    client: aioredis.Redis = aioredis.Redis.from_url(g.redis_url)
    try:
        async with anyio.create_task_group() as tg:

            async def watch_close() -> None:
                # Client frames after the handshake are ignored; a close ends the session.
                with contextlib.suppress(WebSocketDisconnect):
                    while True:
                        message = await ws.receive()
                        if message["type"] == "websocket.disconnect":
                            break
                tg.cancel_scope.cancel()

            tg.start_soon(watch_close)
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                await _pump(ws, client, g, sub)
            tg.cancel_scope.cancel()
    finally:
        metrics.websockets.dec()
        # Shielded: when the server cancels this handler (shutdown, client gone), the Redis
        # connection must still be closed, not left to the garbage collector.
        with anyio.CancelScope(shield=True):
            await client.aclose()


async def _pump(ws: WebSocket, client: aioredis.Redis, g: state.Gateway, sub: Subscription) -> None:
    key = g.bus.stream(sub.principal.tenant_id)
    after = sub.last_event_id
    if after is None:
        # Start after the newest event now, resolved to a concrete id: reading "$" in a loop
        # would skip whatever is published between two reads.
        newest: Any = await client.xrevrange(key, count=1)
        after = _text(newest[0][0]) if newest else "0-0"
    await ws.send_json({"type": "ready", "last_event_id": after})
    while True:
        if after != "0-0":
            oldest: Any = await client.xrange(key, count=1)
            if oldest and id_before(after, _text(oldest[0][0])):
                await ws.send_json(
                    {
                        "type": "gap",
                        "message": "events after last_event_id were trimmed; resuming from the "
                        "oldest retained event",
                        "last_event_id": after,
                        "resume_from": _text(oldest[0][0]),
                    }
                )
        raw: Any = await client.xread({key: after}, count=BATCH, block=POLL_MS)
        for _stream, entries in raw or []:
            for entry_id, fields in entries:
                event = Event.from_entry(entry_id, fields)
                after = event.id
                if sub.wants(event):
                    await ws.send_json(event.as_json())


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
