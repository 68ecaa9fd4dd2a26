"""The fleet's WhatsApp session of one instance: protocol.aio.Client + SqlKeyStore + actor.

`make_factory(settings)` is the production `--session-factory` (workers.session.worker).
A `WhatsAppSession`:
* makes the instance row's desired state true (tasks.commands), on open and on every command
  the host hands it (`command()`, the same code path): `auto` — connect when linked (device
  credentials exist; or, for callers that set the status, when it is connecting/qr_pending/
  code_pending), else hold no socket; `connect` — connect, or link an unlinked instance by QR or
  by pairing code for `link_phone` (a new command restarts linking with fresh rounds);
  `disconnect` — close the socket, keep the credentials, no reconnect; `logout` — the client's
  logout (the server removes the companion), then the device credentials and Signal records
  are destroyed and the state is logged_out. A `command_seq` is applied once;
* pumps the client's events: QR codes and pairing codes (also stored for the gateway in Redis,
  storage.linking, until they expire or the instance connects), connected/disconnected/logged
  out → fenced instance status updates + fleet events (webhooks + the tenant's stream);
  decrypted messages → gathered briefly with those of the worker's other sessions
  (workers.session.inbound; `inbound_batch_size`, `inbound_batch_linger`) into one
  `wafleet.route_inbound_batch` published to the broker, and only then each confirmed to
  WhatsApp (ack after persist, DESIGN §3.7); a closing session publishes what is waiting
  first; receipts → `wafleet.message_status`;
* runs the `OutboundActor`, whose `Sender` is this session: text and media (workers.session.
  media: inline bytes or a guarded URL fetch, uploaded to the server's media host) are sent with
  the preassigned WhatsApp message id; a send waits for the server ack and maps errors to
  `SendFailure` codes for workers.delivery.classify.
QR linking: a round is one connection's QR references (SPEC §8.2, 60 s + 5 × 20 s); when they
run out the session opens a new round, and after `qr_rounds` rounds it stops with one
`whatsapp:qr-exhausted` event that suggests the pairing code (and sets the desired state to
disconnect), instead of looping forever. Linking by code counts rounds the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy import select, update
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
from protocol.core.inject import Clock
from protocol.core.media import MediaType
from protocol.core.message import Media, Text
from storage.bus import EventBus
from storage.crypto import Keyring
from storage.keystore import SqlKeyStore
from storage.leases import database_clock, held_by
from storage.linking import LinkingCodes
from storage.models import (
    DesiredState,
    DeviceCredentials,
    Instance,
    InstanceStatus,
    LinkMethod,
    utcnow,
)
from storage.repositories.instances import destroy_device, update_fenced
from tasks.app import app
from tasks.events import publish_event
from tasks.inbound import InboundMessage
from tasks.queues import INBOUND_QUEUE, MESSAGE_STATUS_TASK, ROUTE_INBOUND_BATCH_TASK
from tasks.webhooks import enqueue as enqueue_webhooks
from workers.delivery import Pacer, RetryPolicy, SendFailure
from workers.routing import build_runtime
from workers.session.actor import OutboundActor, OutboundMessage, SendFailed, StatusEvents
from workers.session.host import Session, SessionContext, SessionFactory
from workers.session.inbound import InboundBatcher
from workers.session.media import MediaPolicy, media_bytes
from workers.session.metrics import METRICS

logger = logging.getLogger(__name__)

ACK_TIMEOUT = 30.0  # seconds for the server ack of a sent message (SPEC §13.6)
LOGOUT_CONNECT_WAIT = 30.0  # seconds a logout waits for the socket to log in first
LOGOUT_WAIT = 15.0  # seconds for the server to confirm the logout (LoggedOut)
NUMBER_QUERY_TIMEOUT = 4.0  # seconds for a usync contact query (diagnose waits 5 s in all)
EARLY_STATUSES = 256  # server acks kept for ids whose send had not registered yet
CONNECT_STATES = {InstanceStatus.CONNECTING, InstanceStatus.QR_PENDING, InstanceStatus.CODE_PENDING}
RECEIPT_STATUS = {None: "delivered", "read": "read", "read-self": "read", "played": "played"}


@dataclass(frozen=True, slots=True)
class Deps:
    settings: Settings
    sessions: sessionmaker[DbSession]
    bus: EventBus
    keyring: Keyring
    options: ClientOptions
    linking: LinkingCodes
    media: MediaPolicy = field(default_factory=MediaPolicy)
    now: Clock = time.time  # the protocol client's clock (QR expiry, message timestamps)
    # The worker's inbound batcher, shared by its sessions (None: each session has its own).
    inbound: InboundBatcher | None = None


class WhatsAppSession:
    def __init__(self, ctx: SessionContext, deps: Deps) -> None:
        self._ctx = ctx
        self._deps = deps
        self._client: Client | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._actor: OutboundActor | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: dict[str, asyncio.Future[MessageStatus]] = {}
        self._early: dict[str, MessageStatus] = {}
        self._tenant_id: uuid.UUID | None = None
        self._qr_rounds = 0
        self._applied_seq = -1
        self._link_method = LinkMethod.QR
        self._link_phone: str | None = None
        self._code_requested = False
        self._logging_out = False
        self._linking = False  # a QR or code is shown, or paired and not yet logged in
        self._lock = asyncio.Lock()  # one reconcile (open or command) at a time
        self._inbound_batches = deps.inbound or inbound_batcher(deps.settings)

    # -- Session ----------------------------------------------------------------------------

    async def open(self) -> None:
        deps, iid = self._deps, self._ctx.instance_id
        async with self._lock:
            instance, linked = await asyncio.to_thread(self._load)
            self._tenant_id = instance.tenant_id
            METRICS.sessions.set(iid, instance.status)
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
                events=StatusEvents(deps.bus, instance.tenant_id, enqueue_webhooks),
                fenced_in=self._ctx.is_fenced_in,
                rescan=s.outbox_rescan,
            )
            self._tasks.append(asyncio.create_task(self._actor.run()))
            self._inbound_batches.start()
            await self._reconcile(instance, linked, opening=True)

    async def command(self) -> None:
        """Apply the instance row's desired state (a command reached this owner)."""
        async with self._lock:
            instance, linked = await asyncio.to_thread(self._load)
            await self._reconcile(instance, linked, opening=False)

    async def close(self) -> None:
        if self._actor is not None:
            self._actor.stop()
            # Drain (DESIGN §3.2): a send in flight gets its server ack and is recorded before
            # the socket goes; cancelling it would leave the row `sending` for the next owner to
            # send again. The actor (the first task) stops at its next check; the ack wait bounds
            # this.
            if self._tasks:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(self._tasks[0]), ACK_TIMEOUT + 5.0)
        linking = self._client is not None and not self._client.connected
        # Messages received but not yet published go to the broker (and are acked) before
        # the socket closes; if this fails they are not acked, and WhatsApp redelivers them.
        with contextlib.suppress(Exception):
            await self._inbound_batches.flush()
        await self._stop_client()
        if linking:  # a QR or code of this socket is dead now; the next owner shows its own
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._deps.linking.clear, self._ctx.instance_id)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for future in self._pending.values():
            future.cancel()
        METRICS.sessions.forget(self._ctx.instance_id)

    @property
    def linking(self) -> bool:
        """In the middle of linking: the host does not hand it over on a rebalance (bounded)."""
        return self._linking and self._client is not None

    def wake(self, outbox_id: int) -> None:
        if self._actor is not None:
            self._actor.wake()

    async def on_whatsapp(self, digits: str) -> bool | None:
        """Whether `digits` has a WhatsApp account (protocol.aio `Client.on_whatsapp`); None
        when not connected or the server did not answer."""
        client = self._client
        if client is None or not client.connected:
            return None
        try:
            return await client.on_whatsapp(digits, seconds=NUMBER_QUERY_TIMEOUT)
        except WhatsAppError as exc:
            logger.info("usync contact query of %s failed: %r", self._ctx.instance_id, exc)
            return None

    # -- Sender -------------------------------------------------------------------------------

    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def send(self, message: OutboundMessage) -> None:
        client = self._client
        if client is None or not client.connected:
            raise SendFailed(SendFailure("disconnected", "the session is not connected"))
        text = message.payload.get("text")
        media = message.payload.get("media")
        start: Callable[[], Awaitable[str]]
        if message.kind == "text" and isinstance(text, str):
            start = partial(
                client.send_text, message.chat_jid, text, message_id=message.wa_message_id
            )
        elif message.kind != "text" and isinstance(media, dict):
            start = partial(
                client.send_media,
                message.chat_jid,
                MediaType(str(media["kind"])),
                await media_bytes(media, self._deps.media),
                message_id=message.wa_message_id,
                mimetype=str(media["mimetype"]),
                caption=media.get("caption"),
                file_name=media.get("filename"),
            )
        else:
            raise SendFailed(SendFailure("invalid_payload", f"unreadable {message.kind} payload"))
        future: asyncio.Future[MessageStatus] = asyncio.get_running_loop().create_future()
        self._pending[message.wa_message_id] = future
        try:
            await start()
            early = self._early.pop(message.wa_message_id, None)
            if early is not None and not future.done():
                future.set_result(early)
            status = await asyncio.wait_for(future, ACK_TIMEOUT)
        except TimeoutError:
            raise SendFailed(SendFailure("timeout", "no server ack")) from None
        except WhatsAppError as exc:
            upload = exc.details.get("reason") == "upload"
            code = (
                "disconnected"
                if not client.connected
                else f"upload_{exc.details.get('status')}"
                if upload
                else "timeout"
            )
            raise SendFailed(SendFailure(code, exc.text)) from None
        finally:
            self._pending.pop(message.wa_message_id, None)
        if status.status is Status.ERROR:
            if status.reason is not None:  # decided by the client, e.g. not_on_whatsapp
                raise SendFailed(SendFailure(status.reason, f"not sent: {status.reason}"))
            raise SendFailed(SendFailure(str(status.error or "error"), "server refused"))

    # -- the desired state ----------------------------------------------------------------------

    async def _reconcile(self, instance: Instance, linked: bool, *, opening: bool) -> None:
        new = instance.command_seq != self._applied_seq
        self._applied_seq = instance.command_seq
        self._link_method = instance.link_method or LinkMethod.QR
        self._link_phone = instance.link_phone
        desired = instance.desired_state
        if not new and not opening:
            return  # a repeated delivery of a command already applied
        logger.log(
            logging.DEBUG if desired is DesiredState.AUTO else logging.INFO,
            "instance %s: applying %s (seq %d, linked %s)",
            self._ctx.instance_id,
            desired.value,
            instance.command_seq,
            linked,
        )
        if desired is DesiredState.DISCONNECT:
            had_client = self._client is not None
            await self._stop_client()
            await asyncio.to_thread(self._deps.linking.clear, self._ctx.instance_id)
            if instance.status not in (InstanceStatus.LOGGED_OUT, InstanceStatus.BANNED):
                await self._status(InstanceStatus.DISCONNECTED)
            if had_client:
                await self._emit(
                    "whatsapp:disconnected", {"reason": "requested", "will_reconnect": False}
                )
        elif desired is DesiredState.LOGOUT:
            if linked:
                await self._logout()
            else:
                await self._stop_client()
                await asyncio.to_thread(self._deps.linking.clear, self._ctx.instance_id)
                if instance.status is not InstanceStatus.LOGGED_OUT:
                    await self._status(InstanceStatus.LOGGED_OUT)
        elif desired is DesiredState.CONNECT:
            if linked:
                if self._client is None:
                    await self._start_client()
            elif self._client is None or new:
                await self._stop_client()
                self._qr_rounds = 0
                await self._start_client()
        elif opening and (linked or instance.status in CONNECT_STATES):
            await self._start_client()

    async def _logout(self) -> None:
        """The client's logout, then the device is forgotten here too (see the docstring)."""
        self._logging_out = True
        try:
            if self._client is None:
                await self._start_client()
            client = self._client
            assert client is not None
            confirmed = False
            try:
                await client.wait_connected(LOGOUT_CONNECT_WAIT)
                await client.logout()
                await client.wait_stopped(LOGOUT_WAIT)
                confirmed = True
            except (TimeoutError, WhatsAppError) as exc:
                logger.warning(
                    "instance %s: the server did not confirm the logout (%r); forgetting the "
                    "device anyway",
                    self._ctx.instance_id,
                    exc,
                )
            await self._stop_client()
            await self._forget_device()
            await asyncio.to_thread(self._deps.linking.clear, self._ctx.instance_id)
            await self._status(InstanceStatus.LOGGED_OUT)
            await self._emit(
                "whatsapp:logged-out", {"reason": "requested", "server_confirmed": confirmed}
            )
        finally:
            self._logging_out = False

    async def _forget_device(self) -> None:
        lease = self._ctx.lease

        def write() -> bool:
            with self._deps.sessions.begin() as s:
                fence = held_by(lease.instance_id, lease.owner, lease.token, database_clock(s))
                if not s.scalar(select(fence)):
                    return False
                destroy_device(s, self._ctx.instance_id)
                return True

        if not await asyncio.to_thread(write):
            logger.warning("device of %s not forgotten: lease lost", self._ctx.instance_id)

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

    async def _start_client(self) -> None:
        deps = self._deps
        store = await asyncio.to_thread(
            SqlKeyStore.open, deps.sessions, deps.keyring, self._ctx.instance_id
        )
        client = Client(store, deps.options, now=deps.now)
        self._client = client
        self._code_requested = False
        await client.start()
        self._pump_task = asyncio.create_task(self._pump(client))

    async def _stop_client(self) -> None:
        """Stop the current client (never its pump from inside that pump: it just ends)."""
        client, pump = self._client, self._pump_task
        self._client, self._pump_task = None, None
        if client is not None:
            await client.stop()
        if pump is not None and pump is not asyncio.current_task():
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _pump(self, client: Client) -> None:
        while self._client is client:
            event = await client.events.get()
            if self._client is not client:
                break  # a replaced or stopped client's leftovers
            try:
                await self._handle(client, event)
            except Exception:  # one bad event must not end the session
                logger.exception("handling %s failed", type(event).__name__)

    async def _handle(self, client: Client, event: Event) -> None:
        iid = self._ctx.instance_id
        match event:
            case Qr():
                if self._link_method is LinkMethod.CODE and self._link_phone:
                    if not self._code_requested:
                        self._code_requested = True
                        await client.request_pairing_code(self._link_phone)
                        self._linking = True
                    return  # linking by code: the QR is not shown
                self._linking = True
                if event.index == 0:
                    await self._status(InstanceStatus.QR_PENDING)
                await asyncio.to_thread(
                    self._deps.linking.put_qr, iid, event.code, event.expires_at, event.index
                )
                await self._emit(
                    "whatsapp:qr",
                    {"qr": event.code, "expires_at": event.expires_at, "index": event.index},
                )
            case PairingCode():
                self._linking = True
                await self._status(InstanceStatus.CODE_PENDING)
                await asyncio.to_thread(self._deps.linking.put_code, iid, event.code)
                await self._emit("whatsapp:pairing-code", {"code": event.code})
            case Paired():
                self._linking = True
                await asyncio.to_thread(self._deps.linking.clear, iid)
                await self._status(
                    InstanceStatus.CONNECTING,
                    wa_jid=str(event.jid),
                    wa_lid=None if event.lid is None else str(event.lid),
                    phone_number=event.jid.user,
                )
            case Connected():
                self._qr_rounds = 0
                self._linking = False
                await asyncio.to_thread(self._deps.linking.clear, iid)
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
                METRICS.disconnected(event)
                if event.reason is DisconnectReason.QR_TIMEOUT:
                    async with self._lock:  # not while a command changes the client
                        if self._client is client:
                            await self._qr_round_over()
                    return
                if self._logging_out:
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
                if self._logging_out:
                    return  # a requested logout: _logout records it
                banned = event.reason is DisconnectReason.TEMPORARY_BAN
                self._linking = False
                # Terminal: this client's closing Disconnected must not overwrite the state.
                await self._stop_client()
                await asyncio.to_thread(self._deps.linking.clear, iid)
                if event.reason is DisconnectReason.LOGGED_OUT:
                    await self._forget_device()  # the companion is gone at the server
                await self._status(InstanceStatus.BANNED if banned else InstanceStatus.LOGGED_OUT)
                await self._emit("whatsapp:logged-out", {"reason": event.reason.value})
            case Message():
                await self._inbound(client, event)
            case MessageStatus():
                future = self._pending.get(event.id)
                if event.status in (Status.SERVER_ACK, Status.ERROR):
                    if future is not None and not future.done():
                        future.set_result(event)
                    elif future is None:
                        self._remember_early(event)
                elif event.status in (Status.DELIVERED, Status.READ, Status.PLAYED):
                    await self._receipt([event.id], event.status.value)
            case Receipt():
                status = RECEIPT_STATUS.get(event.type)
                if status is not None:
                    await self._receipt(list(event.ids), status)
            case _:
                pass

    def _remember_early(self, event: MessageStatus) -> None:
        """An ack that beat the registration of its send (kept for `send`, bounded)."""
        self._early[event.id] = event
        while len(self._early) > EARLY_STATUSES:
            self._early.pop(next(iter(self._early)))

    async def _qr_round_over(self) -> None:
        """Every QR reference of this connection expired: a new round, or give up."""
        self._qr_rounds += 1
        iid = self._ctx.instance_id
        if self._qr_rounds < self._deps.settings.qr_rounds:
            logger.info("instance %s: QR round %d over; next round", iid, self._qr_rounds)
            await self._stop_client()
            await self._start_client()
            return
        logger.info("instance %s: %d QR rounds unscanned; linking stops", iid, self._qr_rounds)
        self._linking = False
        await self._stop_client()
        await asyncio.to_thread(self._deps.linking.clear, iid)
        await self._status(InstanceStatus.DISCONNECTED)
        await self._give_up_linking()
        await self._emit(
            "whatsapp:qr-exhausted",
            {
                "rounds": self._qr_rounds,
                "advice": "link with a pairing code instead (method: code)"
                if self._link_method is LinkMethod.QR
                else "the pairing code was not entered; connect again to get a new one",
            },
        )

    async def _give_up_linking(self) -> None:
        """The connect is over: a new owner must not start linking again (unless a newer
        command came in meanwhile — the sequence number guards it)."""
        lease, seq = self._ctx.lease, self._applied_seq

        def write() -> None:
            with self._deps.sessions.begin() as s:
                s.execute(
                    update(Instance)
                    .where(
                        Instance.id == self._ctx.instance_id,
                        Instance.command_seq == seq,
                        held_by(lease.instance_id, lease.owner, lease.token, database_clock(s)),
                    )
                    .values(desired_state=DesiredState.DISCONNECT, updated_at=utcnow())
                )

        await asyncio.to_thread(write)

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
        # Ack after persist (DESIGN §3.7): the batcher confirms the message to WhatsApp only
        # after its batch task is in the broker.
        self._inbound_batches.add(msg.to_dict(), event.id, client.confirm_many)

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

        if await asyncio.to_thread(write):
            METRICS.sessions.set(self._ctx.instance_id, status)
        else:
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


def _publish_inbound(payloads: list[dict[str, Any]]) -> None:
    """One routing task for a batch of decrypted messages (blocking until the broker has it)."""
    app.send_task(ROUTE_INBOUND_BATCH_TASK, args=[payloads], queue=INBOUND_QUEUE)


def inbound_batcher(settings: Settings) -> InboundBatcher:
    return InboundBatcher(
        _publish_inbound,
        max_messages=settings.inbound_batch_size,
        linger=settings.inbound_batch_linger,
    )


def make_factory(settings: Settings) -> SessionFactory:
    """The production session factory: real WhatsApp sessions for `settings`."""
    base = build_runtime(settings)
    if base.keyring is None:
        raise ValueError("WAFLEET_MASTER_KEY is required to open instances' key stores")
    options = ClientOptions(
        url=settings.wa_server_url,
        trusted_root=bytes.fromhex(settings.wa_root_key),
        prekey_upload_count=settings.wa_prekey_count,  # SPEC §12.3: 812 like Baileys
        # The media host speaks http where the server does (the simulator), else https.
        media_scheme="http" if settings.wa_server_url.startswith("ws://") else "https",
    )
    deps = Deps(
        settings,
        base.sessions,
        base.bus,
        base.keyring,
        options,
        LinkingCodes(base.redis, base.bus.prefix),
        MediaPolicy(settings.media_allow_private, settings.media_fetch_timeout),
        inbound=inbound_batcher(settings),
    )

    def factory(ctx: SessionContext) -> Session:
        return WhatsAppSession(ctx, deps)

    return factory
