"""The fleet's WhatsApp session of one instance: protocol.aio.Client + SqlKeyStore + actor.

`make_factory(settings)` is the production `--session-factory` (workers.session.worker).
A `WhatsAppSession`:
* opens the instance's encrypted key store and starts the asyncio `Client` — only when the
  instance is linked (device credentials exist) or a connect was requested (status connecting,
  qr_pending or code_pending); an unlinked idle instance holds no socket;
* pumps the client's events: QR codes and pairing codes, connected/disconnected/logged out →
  fenced instance status updates + fleet events (webhooks + the tenant's stream); a decrypted
  message → `wafleet.route_inbound` published to the broker, and only then confirmed to
  WhatsApp (ack after persist, DESIGN §3.7); receipts → `wafleet.message_status`;
* runs the `OutboundActor`, whose `Sender` is this session: a send waits for the server ack of
  the preassigned WhatsApp message id and maps errors to `SendFailure` codes for
  workers.delivery.classify.
QR linking stops after `qr_rounds` rounds with a `whatsapp:qr-exhausted` event that suggests the
pairing code, instead of looping forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from config.settings import Settings
from protocol.aio import (
    Client,
    ClientOptions,
    Connected,
    Disconnected,
    DisconnectReason,
    Event,
    LoggedOut,
    Message,
    MessageStatus,
    Paired,
    PairingCode,
    Qr,
    Receipt,
    Status,
)
from protocol.core.errors import WhatsAppError
from protocol.core.message import Media, Text
from storage.bus import EventBus
from storage.crypto import Keyring
from storage.keystore import SqlKeyStore
from storage.leases import database_clock
from storage.models import DeviceCredentials, Instance, InstanceStatus, utcnow
from storage.repositories.instances import update_fenced
from tasks.app import app
from tasks.events import publish_event
from tasks.inbound import InboundMessage
from tasks.queues import INBOUND_QUEUE, MESSAGE_STATUS_TASK, ROUTE_INBOUND_TASK
from tasks.webhooks import enqueue as enqueue_webhooks
from workers.delivery import Pacer, RetryPolicy, SendFailure
from workers.routing import build_runtime
from workers.session.actor import OutboundActor, OutboundMessage, SendFailed
from workers.session.host import Session, SessionContext, SessionFactory

logger = logging.getLogger(__name__)

ACK_TIMEOUT = 30.0  # seconds for the server ack of a sent message (SPEC §13.6)
CONNECT_STATES = {InstanceStatus.CONNECTING, InstanceStatus.QR_PENDING, InstanceStatus.CODE_PENDING}
RECEIPT_STATUS = {None: "delivered", "read": "read", "read-self": "read", "played": "played"}


@dataclass(frozen=True, slots=True)
class Deps:
    settings: Settings
    sessions: sessionmaker[DbSession]
    bus: EventBus
    keyring: Keyring
    options: ClientOptions


class WhatsAppSession:
    def __init__(self, ctx: SessionContext, deps: Deps) -> None:
        self._ctx = ctx
        self._deps = deps
        self._client: Client | None = None
        self._actor: OutboundActor | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: dict[str, asyncio.Future[MessageStatus]] = {}
        self._tenant_id: uuid.UUID | None = None
        self._qr_rounds = 0

    # -- Session ----------------------------------------------------------------------------

    async def open(self) -> None:
        deps, iid = self._deps, self._ctx.instance_id
        instance, linked = await asyncio.to_thread(self._load)
        self._tenant_id = instance.tenant_id
        store = await asyncio.to_thread(SqlKeyStore.open, deps.sessions, deps.keyring, iid)
        s = deps.settings
        self._actor = OutboundActor(
            instance_id=iid,
            lease=lambda: self._ctx.lease,
            sessions=deps.sessions,
            sender=self,
            policy=RetryPolicy(s.retry_schedule, s.retry_jitter, s.max_attempts),
            pacer=self._pacer(instance),
            uniform=random.uniform,
            loop_time=lambda: asyncio.get_running_loop().time(),
            park_expiry=s.park_expiry,
            on_event=self._emit,
        )
        self._tasks.append(asyncio.create_task(self._actor.run()))
        if linked or instance.status in CONNECT_STATES:
            await self._start_client(store)

    async def close(self) -> None:
        if self._actor is not None:
            self._actor.stop()
        if self._client is not None:
            await self._client.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for future in self._pending.values():
            future.cancel()

    def wake(self, outbox_id: int) -> None:
        if self._actor is not None:
            self._actor.wake()

    # -- Sender -------------------------------------------------------------------------------

    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def send(self, message: OutboundMessage) -> None:
        client = self._client
        if client is None or not client.connected:
            raise SendFailed(SendFailure("disconnected", "the session is not connected"))
        text = message.payload.get("text")
        if message.kind != "text" or not isinstance(text, str):
            raise SendFailed(
                SendFailure("invalid_payload", f"sending {message.kind} is not supported yet")
            )
        future: asyncio.Future[MessageStatus] = asyncio.get_running_loop().create_future()
        self._pending[message.wa_message_id] = future
        try:
            await client.send_text(message.chat_jid, text, message_id=message.wa_message_id)
            status = await asyncio.wait_for(future, ACK_TIMEOUT)
        except TimeoutError:
            raise SendFailed(SendFailure("timeout", "no server ack")) from None
        except WhatsAppError as exc:
            code = "disconnected" if not client.connected else "timeout"
            raise SendFailed(SendFailure(code, exc.text)) from None
        finally:
            self._pending.pop(message.wa_message_id, None)
        if status.status is Status.ERROR:
            raise SendFailed(SendFailure(str(status.error or "error"), "server refused"))

    # -- internals -------------------------------------------------------------------------------

    def _load(self) -> tuple[Instance, bool]:
        """The instance row, and whether it is linked (device credentials are stored)."""
        with self._deps.sessions() as s:
            instance = s.get(Instance, self._ctx.instance_id)
            if instance is None:
                raise LookupError("instance vanished")
            linked = s.get(DeviceCredentials, self._ctx.instance_id) is not None
            s.expunge(instance)
        return instance, linked

    def _pacer(self, instance: Instance) -> Pacer:
        s = self._deps.settings
        over = instance.pacing or {}
        return Pacer(
            min_gap=float(over.get("min_gap", s.pacing_min_gap)),
            max_gap=float(over.get("max_gap", s.pacing_max_gap)),
            jitter=float(over.get("gap_jitter", s.pacing_gap_jitter)),
            rate=float(over.get("rate", s.pacing_rate)),
            burst=int(over.get("burst", s.pacing_burst)),
            uniform=random.uniform,
        )

    async def _start_client(self, store: SqlKeyStore) -> None:
        self._client = Client(store, self._deps.options)
        await self._client.start()
        self._tasks.append(asyncio.create_task(self._pump(self._client)))

    async def _pump(self, client: Client) -> None:
        while True:
            event = await client.events.get()
            try:
                await self._handle(client, event)
            except Exception:  # one bad event must not end the session
                logger.exception("handling %s failed", type(event).__name__)

    async def _handle(self, client: Client, event: Event) -> None:
        match event:
            case Qr():
                await self._status(InstanceStatus.QR_PENDING)
                await self._emit(
                    "whatsapp:qr",
                    {"qr": event.code, "expires_at": event.expires_at, "index": event.index},
                )
            case PairingCode():
                await self._status(InstanceStatus.CODE_PENDING)
                await self._emit("whatsapp:pairing-code", {"code": event.code})
            case Paired():
                await self._status(
                    InstanceStatus.CONNECTING,
                    wa_jid=str(event.jid),
                    wa_lid=None if event.lid is None else str(event.lid),
                    phone_number=event.jid.user,
                )
            case Connected():
                self._qr_rounds = 0
                await self._status(
                    InstanceStatus.CONNECTED,
                    last_connected_at=utcnow(),
                    wa_jid=str(event.jid),
                    wa_lid=None if event.lid is None else str(event.lid),
                )
                await self._emit("whatsapp:connected", {"jid": str(event.jid)})
                if self._actor is not None:
                    self._actor.wake()
            case Disconnected():
                if event.reason is DisconnectReason.QR_TIMEOUT:
                    self._qr_rounds += 1
                    if self._qr_rounds >= self._deps.settings.qr_rounds:
                        await client.stop()
                        await self._status(InstanceStatus.DISCONNECTED)
                        await self._emit(
                            "whatsapp:qr-exhausted",
                            {
                                "rounds": self._qr_rounds,
                                "advice": "link with a pairing code instead (method: code)",
                            },
                        )
                        return
                state = (
                    InstanceStatus.RECONNECTING
                    if event.will_reconnect
                    else InstanceStatus.DISCONNECTED
                )
                await self._status(state)
                await self._emit(
                    "whatsapp:disconnected",
                    {"reason": event.reason.value, "will_reconnect": event.will_reconnect},
                )
            case LoggedOut():
                banned = event.reason is DisconnectReason.TEMPORARY_BAN
                await self._status(InstanceStatus.BANNED if banned else InstanceStatus.LOGGED_OUT)
                await self._emit("whatsapp:logged-out", {"reason": event.reason.value})
            case Message():
                await self._inbound(client, event)
            case MessageStatus():
                future = self._pending.get(event.id)
                if (
                    future is not None
                    and not future.done()
                    and event.status in (Status.SERVER_ACK, Status.ERROR)
                ):
                    future.set_result(event)
                elif event.status in (Status.DELIVERED, Status.READ, Status.PLAYED):
                    await self._receipt([event.id], event.status.value)
            case Receipt():
                status = RECEIPT_STATUS.get(event.type)
                if status is not None:
                    await self._receipt(list(event.ids), status)
            case _:
                pass

    async def _inbound(self, client: Client, event: Message) -> None:
        content = event.content
        media: dict[str, Any] | None = None
        text: str | None
        if isinstance(content, Text):
            kind, text = "text", content.text
        elif isinstance(content, Media):
            kind, text = str(content.media_type.value), content.caption
            media = {
                "mimetype": content.mimetype,
                "size": content.file_length,
                "direct_path": content.direct_path,
                "file_name": content.file_name,
            }
        else:
            kind, text = type(content).__name__.lower(), None
        sender = event.sender
        msg = InboundMessage(
            instance_id=str(self._ctx.instance_id),
            wa_message_id=event.id,
            chat_jid=str(event.chat),
            sender_jid=str(sender),
            timestamp=event.timestamp,
            type=kind,
            from_me=event.from_me,
            sender_phone=sender.user if sender.server == "s.whatsapp.net" else None,
            sender_lid=sender.user if sender.server == "lid" else None,
            push_name=event.push_name,
            text=text,
            media=media,
        )
        # Ack after persist (DESIGN §3.7): the task is in the broker before WhatsApp hears back.
        await asyncio.to_thread(
            app.send_task, ROUTE_INBOUND_TASK, args=[msg.to_dict()], queue=INBOUND_QUEUE
        )
        await client.confirm(event.id)

    async def _receipt(self, ids: list[str], status: str) -> None:
        await asyncio.to_thread(
            app.send_task,
            MESSAGE_STATUS_TASK,
            args=[str(self._ctx.instance_id), ids, status],
            queue=INBOUND_QUEUE,
        )

    async def _status(self, status: InstanceStatus, **values: Any) -> None:
        def write() -> bool:
            with self._deps.sessions.begin() as s:
                return update_fenced(
                    s,
                    self._ctx.instance_id,
                    self._ctx.lease,
                    database_clock(s),
                    status=status,
                    **values,
                )

        if not await asyncio.to_thread(write):
            logger.warning("status change of %s refused: lease lost", self._ctx.instance_id)

    async def _emit(self, event_type: str, data: dict[str, Any]) -> None:
        if self._tenant_id is None:
            return
        tenant_id = self._tenant_id
        deliveries = await asyncio.to_thread(
            publish_event,
            self._deps.sessions,
            self._deps.bus,
            tenant_id=tenant_id,
            instance_id=self._ctx.instance_id,
            event_type=event_type,
            data=data,
        )
        if deliveries:
            await asyncio.to_thread(enqueue_webhooks, deliveries)


def make_factory(settings: Settings) -> SessionFactory:
    """The production session factory: real WhatsApp sessions for `settings`."""
    base = build_runtime(settings)
    if base.keyring is None:
        raise ValueError("WAFLEET_MASTER_KEY is required to open instances' key stores")
    options = ClientOptions(
        url=settings.wa_server_url,
        trusted_root=bytes.fromhex(settings.wa_root_key),
        prekey_upload_count=settings.wa_prekey_count,  # SPEC §12.3: 812 like Baileys
    )
    deps = Deps(settings, base.sessions, base.bus, base.keyring, options)

    def factory(ctx: SessionContext) -> Session:
        return WhatsAppSession(ctx, deps)

    return factory
