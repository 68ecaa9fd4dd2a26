"""Outbound media of the session: the bytes of an outbox row's media (the session sends them with
protocol.aio `Client.send_media` under the row's preassigned WhatsApp message id).

* Inline media (`data`, base64) was validated and size-capped at accept (tasks.accept).
* URL media is fetched here, at send time: the SSRF guard of the webhooks (every address the
  host resolves to must be public, unless `allow_private` is configured) is checked first;
  redirects are not followed (a redirect could lead past the guard); the body is read in chunks
  and refused beyond the kind's limit (tasks.accept.MAX_MEDIA_BYTES), also when the server
  states no or a false Content-Length.
  Failures are `SendFailed` with codes for workers.delivery.classify: 3xx/4xx or a refused
  address → `media_unavailable` and too large → `media_too_large` (both permanent); 5xx,
  timeouts and connection errors → `media_fetch_failed` (retried by the outbox schedule).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass
from typing import Any

import httpx

from tasks.accept import MAX_MEDIA_BYTES
from tasks.webhooks import BlockedDestination, check_destination
from workers.delivery import SendFailure
from workers.session.actor import SendFailed

HTTP_OK = 200
CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class MediaPolicy:
    allow_private: bool = False
    timeout: float = 30.0


def _fail(code: str, text: str) -> SendFailed:
    return SendFailed(SendFailure(code, text))


async def media_bytes(media: dict[str, Any], policy: MediaPolicy) -> bytes:
    """The file of an outbox row's `media` payload (see the module docstring)."""
    kind = media.get("kind")
    if kind not in MAX_MEDIA_BYTES:
        raise _fail("invalid_payload", f"unknown media kind {kind!r}")
    limit = MAX_MEDIA_BYTES[str(kind)]
    data = media.get("data")
    if isinstance(data, str):
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise _fail("invalid_payload", "media.data is not base64") from None
        if len(raw) > limit:
            raise _fail("media_too_large", f"{len(raw)} bytes; the {kind} limit is {limit}")
        return raw
    url = media.get("url")
    if not isinstance(url, str):
        raise _fail("invalid_payload", "media has neither data nor url")
    return await fetch(url, limit, policy)


async def fetch(url: str, limit: int, policy: MediaPolicy) -> bytes:
    try:
        await asyncio.to_thread(check_destination, url, policy.allow_private)
    except BlockedDestination as exc:
        raise _fail("media_unavailable", f"media URL refused: {exc}") from None
    try:
        async with (
            httpx.AsyncClient(timeout=policy.timeout, follow_redirects=False) as http,
            http.stream("GET", url) as response,
        ):
            status = response.status_code
            if status >= 500:
                raise _fail("media_fetch_failed", f"media URL answered {status}")
            if status != HTTP_OK:
                raise _fail("media_unavailable", f"media URL answered {status}")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise _fail("media_too_large", f"{declared} bytes; the limit is {limit}")
            body = bytearray()
            async for chunk in response.aiter_bytes(CHUNK):
                body += chunk
                if len(body) > limit:
                    raise _fail("media_too_large", f"more than {limit} bytes")
    except httpx.HTTPError as exc:
        raise _fail(
            "media_fetch_failed", f"fetching the media failed: {type(exc).__name__}"
        ) from None
    if not body:
        raise _fail("media_unavailable", "the media URL returned no content")
    return bytes(body)
