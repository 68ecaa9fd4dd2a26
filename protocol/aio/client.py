"""`Client`: one companion device's connection, kept alive (see the package docstring).

Error tree addition (under protocol.core.errors.WhatsAppError):

    WhatsAppError
    └── ClientError            reason: not_connected | iq_timeout | iq_error | stopped

Reconnect policy: after a restart request (515, pairing) at once; otherwise exponential
backoff with full jitter, `delay = uniform(0, min(cap, base · 2^attempt))`, the attempt count
reset by a successful login; never after `LoggedOut`, a replaced stream, a QR timeout, a
temporary ban, or `stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.typing import Origin

from protocol.client import events as ev
from protocol.client.connection import Connection, ConnectionState
from protocol.client.retry import RetryCache
from protocol.core.binary import Node
from protocol.core.errors import WhatsAppError
from protocol.core.inject import Clock, Rng
from protocol.core.jid import JID
from protocol.core.media import (
    MEDIA_TYPES,
    MediaType,
    decrypt_media,
    encrypt_media,
    upload_token,
)
from protocol.core.message import Media, media_message
from protocol.core.noise import WA_CERT_ROOT_PUBLIC_KEY
from protocol.core.payload import DEFAULT_CONFIG, ClientConfig
from protocol.store import KeyStore

log = logging.getLogger(__name__)

DEFAULT_URL = "wss://web.whatsapp.com/ws/chat"  # SPEC §2.1
ORIGIN = "https://web.whatsapp.com"  # SPEC §2.1
MAX_MESSAGE = 1 << 24  # SPEC §2.1 read limit
MAX_BACKOFF_EXPONENT = 30  # keeps base · 2^attempt finite; the cap applies long before
CLOSE_TIMEOUT = 2.0  # seconds to wait for the server's close frame
HTTP_OK = 200
TICK = 1.0  # shortest sleep of the timer task (QR rotation, IQ expiry, keepalive checks)

_T = TypeVar("_T")


class ClientError(WhatsAppError):
    """An asyncio client operation failed; `reason` says how."""

    code = "client_error"


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """Tunables; defaults follow Baileys (SPEC §12.4, §16)."""

    url: str = DEFAULT_URL
    trusted_root: bytes = WA_CERT_ROOT_PUBLIC_KEY
    config: ClientConfig = DEFAULT_CONFIG
    connect_timeout: float = 20.0
    keepalive_interval: float = 30.0
    keepalive_grace: float = 5.0  # no frame for interval + grace → connection lost
    iq_timeout: float = 60.0
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    reconnect: bool = True
    prekey_upload_count: int = 812
    dict_version: int = 3
    media_scheme: str = "https"  # the simulator's media endpoint is plain http
    media_timeout: float = 60.0
    # How many of `now`'s seconds pass per real second: 1 for the wall clock; a test that runs
    # the client on an accelerated clock (QR rounds in seconds) says how fast, so the timer's
    # sleeps, computed on `now`, are scaled to real time.
    clock_rate: float = 1.0


class Client:
    """See the module docstring. `await client.start()`, read `client.events`, `stop()`."""

    def __init__(
        self,
        store: KeyStore,
        options: ClientOptions | None = None,
        *,
        rng: Rng = os.urandom,
        now: Clock = time.time,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.store = store
        self.options = options or ClientOptions()
        self._rng = rng
        self._now = now
        self._jitter = jitter
        self.events: asyncio.Queue[ev.Event] = asyncio.Queue()
        self._conn: Connection | None = None
        self._ws: ClientConnection | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._iqs: dict[str, asyncio.Future[Node | None]] = {}
        self._retry = RetryCache()  # sent plaintexts and retry counts (protocol.client.retry)
        self._connected = asyncio.Event()
        self._done = asyncio.Event()
        self.connections = 0
        self.last_disconnect: ev.Disconnected | None = None
        self._reached_login = False  # this connection logged in (resets the backoff)
        self._lost = False  # this connection ended by keepalive timeout

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._done.clear()
            self._task = asyncio.create_task(self._run(), name="wafleet-client")

    async def stop(self) -> None:
        self._stopping = True
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._done.set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def jid(self) -> JID | None:
        return None if self._conn is None else self._conn.device.jid

    async def wait_connected(self, seconds: float) -> None:
        await asyncio.wait_for(self._connected.wait(), seconds)

    async def wait_stopped(self, seconds: float) -> None:
        """Until the client gave up for good (logged out, replaced, stopped)."""
        await asyncio.wait_for(self._done.wait(), seconds)

    # ------------------------------------------------------------------ operations

    async def send_text(self, to: JID | str, text: str, message_id: str | None = None) -> str:
        """Send a 1:1 text; returns its id. Status arrives as `MessageStatus` events."""
        return await self._call(lambda c: c.send_text(to, text, message_id))

    async def confirm(self, message_id: str) -> bool:
        """The application stored this message: send its receipt (else it is redelivered)."""
        return await self._call(lambda c: c.confirm(message_id))

    async def confirm_many(self, message_ids: Sequence[str]) -> list[bool]:
        """`confirm` for a batch the application stored: one key-store write, their receipts."""
        ids = list(message_ids)
        return await self._call(lambda c: c.confirm_many(ids))

    async def send_media(
        self,
        to: JID | str,
        kind: MediaType,
        data: bytes,
        *,
        mimetype: str,
        caption: str | None = None,
        file_name: str | None = None,
        message_id: str | None = None,
    ) -> str:
        """Encrypt, upload (SPEC §11.3–§11.4) and send a media message; returns its id
        (`message_id` fixes it, as for `send_text`)."""
        info = MEDIA_TYPES[kind]
        if info.upload_path is None or info.mediatype_attr is None:
            raise ClientError("not a message media kind", reason="bad_media", kind=kind.value)
        conn_node = (await self.query("w:m", "set", [Node("media_conn")])).child("media_conn")
        host_node = conn_node.child("host") if conn_node is not None else None
        auth = conn_node.attr("auth") if conn_node is not None else None
        host = host_node.attr("hostname") if host_node is not None else None
        if not auth or not host:
            raise ClientError("media_conn without auth or host", reason="iq_error")
        body, upload = await asyncio.to_thread(encrypt_media, data, kind, self._rng)
        token = upload_token(upload.file_enc_sha256)
        url = f"{self.options.media_scheme}://{host}{info.upload_path}/{token}"
        async with httpx.AsyncClient(timeout=self.options.media_timeout) as http:
            response = await http.post(
                url,
                params={"auth": auth, "token": token},
                content=body,
                headers={"Origin": ORIGIN, "Content-Type": "application/octet-stream"},
            )
        if response.status_code != HTTP_OK:
            raise ClientError("media upload failed", reason="upload", status=response.status_code)
        result = response.json()
        message = media_message(
            kind,
            upload,
            mimetype=mimetype,
            url=str(result["url"]),
            direct_path=str(result["direct_path"]),
            media_key_timestamp=int(self._now()),
            caption=caption,
            file_name=file_name,
        )
        return await self._call(lambda c: c.send_message(to, message, message_id))

    async def download(self, media: Media) -> bytes:
        """Fetch and decrypt a received media message's file (SPEC §11.5)."""
        async with httpx.AsyncClient(timeout=self.options.media_timeout) as http:
            response = await http.get(media.url, headers={"Origin": ORIGIN})
        if response.status_code != HTTP_OK:
            raise ClientError(
                "media download failed", reason="download", status=response.status_code
            )
        return await asyncio.to_thread(
            decrypt_media,
            response.content,
            media.media_key,
            media.media_type,
            file_enc_sha256=media.file_enc_sha256,
            file_sha256=media.file_sha256,
            file_length=media.file_length,
        )

    async def request_pairing_code(self, phone: str) -> str:
        """Pair by phone number (SPEC §9): returns the code to type on the phone."""
        return await self._call(lambda c: c.request_pairing_code(phone))

    async def logout(self) -> None:
        await self._call(lambda c: c.logout())

    async def query(
        self, xmlns: str, iq_type: str, content: list[Node] | None = None, seconds: float = 0
    ) -> Node:
        """An IQ round trip; raises `ClientError` on timeout or an error reply."""
        loop = asyncio.get_running_loop()
        iq_id = await self._call(lambda c: c.send_iq(xmlns, iq_type, content))
        future: asyncio.Future[Node | None] = loop.create_future()
        self._iqs[iq_id] = future
        try:
            node = await asyncio.wait_for(future, seconds or self.options.iq_timeout)
        except TimeoutError:
            raise ClientError("IQ timed out", reason="iq_timeout", xmlns=xmlns) from None
        finally:
            self._iqs.pop(iq_id, None)
        if node is None:
            raise ClientError("IQ timed out", reason="iq_timeout", xmlns=xmlns)
        if node.attr("type") == "error":
            raise ClientError("IQ error", reason="iq_error", node=node)
        return node

    async def on_whatsapp(self, digits: str, seconds: float = 0) -> bool | None:
        """Whether the number `digits` (E.164 without '+') has a WhatsApp account: a usync
        `contact` query (SPEC §13.3, "Other usync protocols"; Baileys
        `src/WAUSync/Protocols/USyncContactProtocol.ts`), answered `type="in"` or `"out"`.
        None when the answer names no contact; `ClientError` on timeout or an error reply."""
        usync = Node(
            "usync",
            {
                "sid": self._rng(8).hex(),
                "mode": "query",
                "context": "interactive",
                "index": "0",
                "last": "true",
            },
            [
                Node("query", {}, [Node("contact")]),
                Node("list", {}, [Node("user", {}, [Node("contact", {}, f"+{digits}")])]),
            ],
        )
        node = await self.query("usync", "get", [usync], seconds=seconds)
        result = node.child("usync")
        users = result.child("list") if result is not None else None
        for user in users.children_by_tag("user") if users is not None else ():
            contact = user.child("contact")
            if contact is not None:
                return contact.attr("type") == "in"
        return None

    async def _call(self, fn: Callable[[Connection], _T]) -> _T:
        conn = self._conn
        if conn is None or conn.closed:
            raise ClientError("not connected", reason="not_connected")
        async with self._lock:

            def step() -> tuple[_T, list[bytes], list[ev.Event]]:
                result = fn(conn)
                return result, conn.data_to_send(), conn.events()

            result, out, events = await asyncio.to_thread(step)
        await self._flush(conn, out, events)
        return result

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        attempt = 0
        try:
            while not self._stopping:
                outcome = await self._connect_once()
                if outcome is None or self._stopping:
                    break
                if not outcome.will_reconnect:
                    break
                if outcome.reason is ev.DisconnectReason.RESTART_REQUIRED:
                    attempt = 0
                    continue
                if self.connections and self._reached_login:
                    attempt = 0
                ceiling = self.options.backoff_base * 2.0 ** min(attempt, MAX_BACKOFF_EXPONENT)
                delay = self._jitter(0.0, min(self.options.backoff_cap, ceiling))
                attempt += 1
                await asyncio.sleep(delay)  # the backoff itself, not synchronisation
        finally:
            self._done.set()

    async def _connect_once(self) -> ev.Disconnected | None:
        opts = self.options
        self._reached_login = False
        try:
            ws = await asyncio.wait_for(
                connect(
                    opts.url,
                    origin=Origin(ORIGIN),
                    max_size=MAX_MESSAGE,
                    ping_interval=None,
                    compression=None,
                    open_timeout=opts.connect_timeout,
                    close_timeout=CLOSE_TIMEOUT,
                ),
                opts.connect_timeout,
            )
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            log.info("connect failed: %r", exc)
            return await self._emit_disconnect(
                ev.Disconnected(ev.DisconnectReason.CONNECTION_LOST, True, 408)
            )
        self._ws = ws
        self.connections += 1

        def build() -> tuple[Connection, list[bytes]]:
            conn = Connection(
                self.store,
                rng=self._rng,
                now=self._now,
                config=opts.config,
                trusted_root=opts.trusted_root,
                dict_version=opts.dict_version,
                prekey_upload_count=opts.prekey_upload_count,
                iq_timeout=opts.iq_timeout,
                retry=self._retry,
            )
            return conn, conn.data_to_send()

        conn, out = await asyncio.to_thread(build)
        self._conn = conn
        ticker = asyncio.create_task(self._ticker(conn, ws))
        final: ev.Disconnected | None = None
        try:
            for data in out:
                await ws.send(data)
            async for message in ws:
                if isinstance(message, str):
                    continue  # SPEC §2.1: binary only
                async with self._lock:

                    def feed(
                        data: bytes = message,
                    ) -> tuple[list[bytes], list[ev.Event]]:
                        conn.receive_data(data)
                        return conn.data_to_send(), conn.events()

                    out, events = await asyncio.to_thread(feed)
                final = await self._flush(conn, out, events) or final
                if conn.closed:
                    break
        except ConnectionClosed:
            pass
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            self._connected.clear()
            with contextlib.suppress(Exception):
                await ws.close()
            self._ws = None
        if final is None:
            if self._lost:
                final = await self._emit_disconnect(
                    ev.Disconnected(ev.DisconnectReason.CONNECTION_LOST, True, 408)
                )
            else:
                async with self._lock:

                    def eof() -> list[ev.Event]:
                        conn.receive_eof()
                        return conn.events()

                    events = await asyncio.to_thread(eof)
                final = await self._flush(conn, [], events)
        self._fail_iqs()
        if final is None:
            final = await self._emit_disconnect(
                ev.Disconnected(ev.DisconnectReason.CONNECTION_CLOSED, True)
            )
        return final

    async def _ticker(self, conn: Connection, ws: ClientConnection) -> None:
        opts = self.options
        self._lost = False
        last_ping = self._now()
        while True:
            await asyncio.sleep(self._tick_delay(conn, last_ping))  # a timer, not a sync
            now = self._now()
            if conn.state is ConnectionState.CONNECTED:
                if now - conn.last_received > opts.keepalive_interval + opts.keepalive_grace:
                    log.info("keepalive timed out; reconnecting")
                    self._lost = True
                    ws.transport.abort()  # a dead peer would not answer a close handshake
                    return
                if now - last_ping >= opts.keepalive_interval:
                    last_ping = now
                    with contextlib.suppress(ClientError):
                        await self._call(lambda c: c.send_ping())
            due = conn.next_deadline()
            if due is not None and due <= now:  # otherwise `tick` has nothing to do
                async with self._lock:

                    def tick() -> tuple[list[bytes], list[ev.Event]]:
                        conn.tick()
                        return conn.data_to_send(), conn.events()

                    out, events = await asyncio.to_thread(tick)
                await self._flush(conn, out, events)
            if conn.closed:
                await ws.close()
                return

    def _tick_delay(self, conn: Connection, last_ping: float) -> float:
        """Sleep until the next ping, keepalive check or `Connection` deadline (at least
        `TICK`): an idle session wakes once per keepalive interval, not once a second. A
        deadline created while asleep is at least `iq_timeout` away, hence that bound."""
        opts = self.options
        now = self._now()
        wake = [
            last_ping + opts.keepalive_interval,
            conn.last_received + opts.keepalive_interval + opts.keepalive_grace,
            now + opts.iq_timeout,
        ]
        due = conn.next_deadline()
        if due is not None:
            wake.append(due)
        return max(TICK, (min(wake) - now) / opts.clock_rate)

    async def _flush(
        self, conn: Connection, out: list[bytes], events: list[ev.Event]
    ) -> ev.Disconnected | None:
        ws = self._ws
        if ws is not None:
            for data in out:
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(data)
        final: ev.Disconnected | None = None
        for event in events:
            if isinstance(event, ev.IqResponse):
                future = self._iqs.get(event.id)
                if future is not None and not future.done():
                    future.set_result(event.node)
                continue
            if isinstance(event, ev.Connected):
                self._reached_login = True
                self._connected.set()
            if isinstance(event, ev.Disconnected):
                final = await self._emit_disconnect(event)
                continue
            self.events.put_nowait(event)
        return final

    async def _emit_disconnect(self, event: ev.Disconnected) -> ev.Disconnected:
        will = event.will_reconnect and self.options.reconnect and not self._stopping
        public = ev.Disconnected(event.reason, will, event.code)
        self.last_disconnect = public
        self._connected.clear()
        self.events.put_nowait(public)
        return public

    def _fail_iqs(self) -> None:
        for future in self._iqs.values():
            if not future.done():
                future.set_result(None)
