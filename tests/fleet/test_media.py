"""Media sends through the actor on real sockets: WhatsAppSession (production session) linked to
the simulator, outbox rows written by tasks.accept, a local HTTP server as the media origin.

An image given inline (base64) and a document given by URL are uploaded to the simulator's
media endpoint and reach the client's phone with the preassigned WhatsApp ids (the simulator's
phone view has no media fields: the ids, the outbox rows and the relay counters are checked).
A URL answering 404 fails at once (`media_unavailable`), one too large for its kind fails at
once (`media_too_large`), one answering 500 is retried (`media_fetch_failed`, attempts 1).
The SSRF guard refuses a loopback URL unless configured to allow it."""

from __future__ import annotations

import asyncio
import base64
import functools
import threading
from collections.abc import Awaitable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import select

from config.settings import Settings
from storage.models import OutboxMessage, OutboxStatus
from tasks.accept import MAX_MEDIA_BYTES, accept
from tests.fleet.test_commands import CLIENT, Factory, link_by_qr, rig, until
from workers.session.actor import SendFailed
from workers.session.media import MediaPolicy, fetch

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
PDF = b"%PDF-1.4\n" + b"wafleet document body\n" * 400


class Origin(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/doc.pdf":
            self._answer(200, PDF)
        elif self.path == "/huge.png":
            self._answer(200, b"\0" * (MAX_MEDIA_BYTES["image"] + 1))
        elif self.path == "/boom":
            self._answer(500, b"down")
        elif self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/doc.pdf")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._answer(404, b"no")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def origin() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(10)
    server.server_close()


def test_image_by_data_and_document_by_url_reach_the_phone(
    fleet_settings: Settings,
    pg: Factory,
    redis_client: redis.Redis,
    producer: Celery,
    origin: str,
) -> None:
    async def main() -> None:
        async with rig(
            fleet_settings,
            pg,
            redis_client,
            producer,
            media=MediaPolicy(allow_private=True, timeout=30),
        ) as r:
            await link_by_qr(r)
            relayed = (await r.http.get("/control/stats")).json()["messages_relayed"]

            def send(key: str, media: dict[str, Any]) -> dict[str, Any]:
                item = {"to": CLIENT, "media": media, "idempotency_key": key}
                return accept(r.tenant_id, r.instance_id, item)

            image = send(
                "image",
                {
                    "kind": "image",
                    "mimetype": "image/png",
                    "data": base64.b64encode(PNG).decode(),
                    "caption": "o mapa",
                },
            )
            document = send(
                "document",
                {
                    "kind": "document",
                    "mimetype": "application/pdf",
                    "url": f"{origin}/doc.pdf",
                    "filename": "contrato.pdf",
                },
            )
            r.session.wake(image["outbox_id"])

            async def phone_ids() -> set[str]:
                got = (await r.http.get(f"/control/accounts/{CLIENT}/messages")).json()
                return {m["id"] for m in got}

            want = {image["wa_message_id"], document["wa_message_id"]}
            await until("both media on the phone", lambda: _superset(phone_ids(), want))
            done = (OutboxStatus.SENT, OutboxStatus.DELIVERED, OutboxStatus.READ)
            await until("both rows sent", lambda: _statuses(pg, want) <= set(done))
            stats = (await r.http.get("/control/stats")).json()
            assert stats["messages_relayed"] - relayed == 2
            assert all(stats["delivery_counts"].get(i, 0) >= 1 for i in want)

            # Failures are classified: 404 and too large fail at once, 500 is retried.
            missing = send("missing", _doc(f"{origin}/nope.pdf"))
            moved = send("moved", _doc(f"{origin}/moved"))
            huge = send(
                "huge", {"kind": "image", "mimetype": "image/png", "url": f"{origin}/huge.png"}
            )
            boom = send("boom", _doc(f"{origin}/boom"))
            r.session.wake(missing["outbox_id"])

            def row(result: dict[str, Any]) -> OutboxMessage:
                with pg() as s:
                    found = s.get(OutboxMessage, result["outbox_id"])
                    assert found is not None
                    return found

            for result in (missing, moved):
                got = await until("failed", functools.partial(_failed_row, pg, result))
                assert (got.last_error_code, got.attempts) == ("media_unavailable", 1)
            got = await until("too large", lambda: _failed(row(huge)))
            assert got.last_error_code == "media_too_large"
            retried = await until(
                "a retry scheduled", lambda: row(boom) if row(boom).attempts == 1 else None
            )
            assert (retried.status, retried.last_error_code) == (
                OutboxStatus.QUEUED,
                "media_fetch_failed",
            )

    asyncio.run(main())


def _doc(url: str) -> dict[str, Any]:
    return {"kind": "document", "mimetype": "application/pdf", "url": url}


def _failed_row(pg: Factory, result: dict[str, Any]) -> OutboxMessage | None:
    with pg() as s:
        found = s.get(OutboxMessage, result["outbox_id"])
        return found if found is not None and found.status is OutboxStatus.FAILED else None


async def _superset(ids: Awaitable[set[str]], want: set[str]) -> bool:
    return want <= await ids


def _statuses(pg: Factory, ids: set[str]) -> set[OutboxStatus]:
    with pg() as s:
        return set(
            s.scalars(select(OutboxMessage.status).where(OutboxMessage.wa_message_id.in_(ids)))
        )


def _failed(row: OutboxMessage) -> OutboxMessage | None:
    return row if row.status is OutboxStatus.FAILED else None


def test_ssrf_guard_refuses_loopback_unless_allowed(origin: str) -> None:
    async def main() -> None:
        with pytest.raises(SendFailed) as refused:
            await fetch(f"{origin}/doc.pdf", 1 << 20, MediaPolicy(allow_private=False))
        assert refused.value.failure.code == "media_unavailable"
        assert "refused" in refused.value.failure.text
        body = await fetch(f"{origin}/doc.pdf", 1 << 20, MediaPolicy(allow_private=True))
        assert body == PDF
        with pytest.raises(SendFailed) as small:
            await fetch(f"{origin}/doc.pdf", len(PDF) - 1, MediaPolicy(allow_private=True))
        assert small.value.failure.code == "media_too_large"

    asyncio.run(main())
