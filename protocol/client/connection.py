"""The client `Connection`: one socket's protocol life as a sans-I/O state machine.

python-websockets style: the caller feeds bytes with `receive_data`, collects `data_to_send()`
(one WebSocket message each) and `events()`. Time and randomness are injected (`now`, `rng`);
the `KeyStore` is called synchronously (the asyncio client runs calls in a worker thread).

One `Connection` serves one socket: intro + Noise (SPEC §2, §3) → registration (pair-device,
QR refs, pair-success, 515, SPEC §8) or login (success, prekeys, SPEC §7, §12) → steady
state: IQs matched by id, 1:1 text send (usync → prekey bundles → fan-out with
DeviceSentMessage to our own devices → ack, SPEC §13), receive (decrypt → `Message` event; the
receipt is sent only after `confirm(id)`, SPEC §15; until then the plaintext waits in the store's
inbox, so a redelivery after a crash is handed out again), receipts, notifications, stream errors
(SPEC §7.6). A stanza that cannot be understood is logged and dropped; the session goes on.

    HANDSHAKE ──ServerHello/ClientFinish──► PAIRING ──pair-success──► (515) CLOSED
                                        └─► LOGGING_IN ──success──► CONNECTED ──► CLOSED

Must not import: asyncio, socket, time, os, random, secrets, threading, websockets.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

from protocol import signal_store
from protocol.client import events as ev
from protocol.client.device import Device, load_or_create_device
from protocol.client.retry import MAX_RETRIES, RetryCache
from protocol.core import curve
from protocol.core.binary import BinaryCodec, Node
from protocol.core.errors import (
    DecodeError,
    DecryptionError,
    DuplicateMessage,
    FrameError,
    HandshakeError,
    PairingError,
    WhatsAppError,
)
from protocol.core.framing import FrameReader, FrameWriter, encode_intro, wa_header
from protocol.core.inject import Clock, Rng
from protocol.core.jid import DEFAULT_USER_SERVER, JID, SERVER_JID, parse_jid
from protocol.core.message import (
    decode_message,
    enc_mediatype,
    encode_message,
    extract_content,
    generate_message_id,
    stanza_type,
    unwrap_device_sent,
    wrap_for_own_devices,
)
from protocol.core.noise import WA_CERT_ROOT_PUBLIC_KEY, NoiseInitiator, NoiseTransport
from protocol.core.pairing import adv, link_code
from protocol.core.pairing.qr import build_qr, companion_platform_id
from protocol.core.payload import (
    DEFAULT_CONFIG,
    ClientConfig,
    build_login_payload,
    build_registration_payload,
)
from protocol.core.proto import e2e_pb2
from protocol.core.signal import keys
from protocol.core.signal.session import MessageType
from protocol.store import KeyStore

log = logging.getLogger(__name__)

# SPEC §8.2: the first ref is shown for 60 s, each following one for 20 s.
QR_FIRST_TIMEOUT = 60.0
QR_NEXT_TIMEOUT = 20.0
# SPEC §12.1: Baileys `defaultQueryTimeoutMs`.
IQ_TIMEOUT = 60.0
# SPEC §12.3: first upload 812 (Baileys/whatsmeow); refill when the server has 5 or fewer.
INITIAL_PREKEY_COUNT = 812
MIN_PREKEY_COUNT = 5
# SPEC §7.6: failure reasons after which the credentials are dead.
LOGGED_OUT_FAILURES = frozenset({401, 403, 406})
TEMP_BAN_FAILURE = 402
RESTART_REQUIRED = 515
UNIFIED_SESSION_WEEK_MS = 7 * 24 * 3600 * 1000  # SPEC §12.6
UNIFIED_SESSION_OFFSET_MS = 3 * 24 * 3600 * 1000
# SPEC §13.7 `getStatusFromReceiptType`.
RECEIPT_STATUS = {
    None: ev.Status.DELIVERED,
    "": ev.Status.DELIVERED,
    "inactive": ev.Status.DELIVERED,
    "sender": ev.Status.SERVER_ACK,
    "read": ev.Status.READ,
    "read-self": ev.Status.READ,
    "played": ev.Status.PLAYED,
}
NACK_UNHANDLED = 500  # SPEC §15.2 NACK codes
NACK_UNRECOGNIZED = 488


class ConnectionState(enum.Enum):
    HANDSHAKE = "handshake"
    PAIRING = "pairing"
    LOGGING_IN = "logging_in"
    CONNECTED = "connected"
    CLOSED = "closed"


class _IqKind(enum.Enum):
    APP = "app"
    PING = "ping"
    PREKEY_COUNT = "prekey_count"
    PREKEY_UPLOAD = "prekey_upload"
    USYNC = "usync"
    KEYS = "keys"
    IGNORE = "ignore"


@dataclass(slots=True)
class _Outgoing:
    """A 1:1 send in progress (SPEC §13)."""

    id: str
    to: JID
    message: e2e_pb2.Message = field(repr=False)
    devices: list[JID] = field(default_factory=list)
    retry_count: int = 0  # > 0: a resend for one device after its retry receipt (SPEC §15.4)
    recipient: str | JID | None = None  # the retry receipt's `recipient`, copied back


@dataclass(slots=True)
class _PendingIq:
    kind: _IqKind
    deadline: float
    context: object = None


@dataclass(frozen=True, slots=True)
class _PendingReceipt:
    node: Node


@dataclass(slots=True)
class _LinkCode:
    code: link_code.PairingCode
    ephemeral: curve.KeyPair = field(repr=False)
    phone: str
    ref: bytes | None = None


class Connection:
    """See the module docstring. One instance per socket; create a new one to reconnect."""

    def __init__(
        self,
        store: KeyStore,
        *,
        rng: Rng,
        now: Clock,
        config: ClientConfig = DEFAULT_CONFIG,
        trusted_root: bytes = WA_CERT_ROOT_PUBLIC_KEY,
        dict_version: int = 3,
        prekey_upload_count: int = INITIAL_PREKEY_COUNT,
        iq_timeout: float = IQ_TIMEOUT,
        retry: RetryCache | None = None,
    ) -> None:
        self._store = store
        # Sent plaintexts and retry counts (SPEC §15.4), also shared across reconnects.
        self._retry = RetryCache() if retry is None else retry
        self._rng = rng
        self._now = now
        self._config = config
        self._prekey_upload_count = prekey_upload_count
        self._iq_timeout = iq_timeout
        self.device: Device = load_or_create_device(store, rng)
        self._codec = BinaryCodec(dict_version)
        self._reader = FrameReader()
        self._writer = FrameWriter(encode_intro(dict_version))
        self._noise = NoiseInitiator(
            self.device.noise_key,
            curve.generate_keypair(rng),
            prologue=wa_header(dict_version),
            trusted_root=trusted_root,
        )
        self._transport: NoiseTransport | None = None
        self._out: list[bytes] = []
        self._events: list[ev.Event] = []
        self._pending: dict[str, _PendingIq] = {}
        self._awaiting_ack: dict[str, float] = {}
        self._unconfirmed: dict[str, _PendingReceipt] = {}
        self._id_prefix = f"{int.from_bytes(rng(2))}.{int.from_bytes(rng(2))}-"
        self._id_counter = 0
        self._qr_refs: list[str] = []
        self._qr_index = -1
        self._qr_expires = 0.0
        self._link_code: _LinkCode | None = None
        self.state = ConnectionState.HANDSHAKE
        self.last_received = now()
        self.bad_stanzas = 0
        self._out.append(self._writer.frame(self._noise.client_hello()))

    def __repr__(self) -> str:
        return f"Connection(state={self.state.value}, jid={self.device.jid})"

    # ------------------------------------------------------------------ byte pump

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the socket (any split)."""
        if self.state is ConnectionState.CLOSED:
            return
        self.last_received = self._now()
        try:
            frames = self._reader.feed(data)
        except FrameError as exc:
            self._close(ev.DisconnectReason.PROTOCOL_ERROR, True, error=exc)
            return
        for frame in frames:
            if self.closed:
                return
            if self._transport is None:
                self._handshake(frame)
                continue
            try:
                body = self._transport.recv.decrypt(frame)
                node = self._codec.decode(body)
            except (FrameError, DecodeError) as exc:
                self.bad_stanzas += 1
                log.warning("dropped an undecodable frame: %s", exc.code)
                continue
            self._dispatch(node)

    def receive_eof(self) -> None:
        """The socket closed (by the peer or the network)."""
        if self.state is not ConnectionState.CLOSED:
            self._close(ev.DisconnectReason.CONNECTION_CLOSED, True)

    def data_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def events(self) -> list[ev.Event]:
        out, self._events = self._events, []
        return out

    @property
    def closed(self) -> bool:
        return self.state is ConnectionState.CLOSED

    def send_node(self, node: Node) -> None:
        if self._transport is None or self.state is ConnectionState.CLOSED:
            raise WhatsAppError("not connected", state=self.state.value)
        self._out.append(self._writer.frame(self._transport.send.encrypt(self._codec.encode(node))))

    # ------------------------------------------------------------------ handshake

    def _handshake(self, frame: bytes) -> None:
        try:
            self._noise.read_server_hello(frame, now=self._now())
            device = self.device
            if device.registered and device.jid is not None:
                payload = build_login_payload(device.jid, self._config)
                self.state = ConnectionState.LOGGING_IN
            else:
                spk = signal_store.signed_prekey(self._store, device.identity, self._rng)
                payload = build_registration_payload(
                    registration_id=device.identity.registration_id,
                    identity_public=device.identity.public,
                    signed_pre_key_id=spk.id,
                    signed_pre_key_public=spk.key_pair.public,
                    signed_pre_key_signature=spk.signature,
                    config=self._config,
                )
                self.state = ConnectionState.PAIRING
            finish, transport = self._noise.client_finish(payload.SerializeToString())
        except HandshakeError as exc:
            self._close(ev.DisconnectReason.HANDSHAKE_FAILED, True, error=exc)
            return
        self._out.append(self._writer.frame(finish))
        self._transport = transport

    # ------------------------------------------------------------------ ids, IQs, timers

    def _next_id(self) -> str:
        self._id_counter += 1
        return f"{self._id_prefix}{self._id_counter}"

    def _send_iq(
        self,
        kind: _IqKind,
        xmlns: str,
        iq_type: str,
        content: list[Node] | None = None,
        context: object = None,
    ) -> str:
        iq_id = self._next_id()
        attrs: dict[str, str | JID] = {"id": iq_id, "to": SERVER_JID, "type": iq_type}
        attrs["xmlns"] = xmlns
        self.send_node(Node("iq", attrs, content))
        self._pending[iq_id] = _PendingIq(kind, self._now() + self._iq_timeout, context)
        return iq_id

    def send_iq(self, xmlns: str, iq_type: str, content: list[Node] | None = None) -> str:
        """An application IQ; its answer arrives as an `IqResponse` event with this id."""
        return self._send_iq(_IqKind.APP, xmlns, iq_type, content)

    def send_ping(self) -> str:
        """A keepalive IQ (SPEC §12.4, Baileys' form with a `<ping/>` child)."""
        return self._send_iq(_IqKind.PING, "w:p", "get", [Node("ping")])

    def tick(self) -> None:
        """Expire IQs and rotate the QR; call about once a second."""
        now = self._now()
        for iq_id, pending in list(self._pending.items()):
            if pending.deadline <= now:
                del self._pending[iq_id]
                self._iq_failed(iq_id, pending, None)
        for msg_id, deadline in list(self._awaiting_ack.items()):
            if deadline <= now:
                del self._awaiting_ack[msg_id]
                self._events.append(ev.MessageStatus(msg_id, ev.Status.ERROR, 408))
        if self.state is ConnectionState.PAIRING and self._qr_refs and now >= self._qr_expires:
            self._next_qr()

    def next_deadline(self) -> float | None:
        """When `tick` next has work (an IQ or ack timing out, the QR rotating); None: never.
        Lets an idle session sleep instead of ticking every second."""
        deadlines = [p.deadline for p in self._pending.values()]
        deadlines += self._awaiting_ack.values()
        if self.state is ConnectionState.PAIRING and self._qr_refs:
            deadlines.append(self._qr_expires)
        return min(deadlines, default=None)

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, node: Node) -> None:
        try:
            handler = self._HANDLERS.get(node.tag)
            if handler is None:
                log.debug("ignored stanza <%s>", node.tag)
                return
            handler(self, node)
        except (WhatsAppError, KeyError, ValueError, TypeError, AttributeError) as exc:
            # The stanza boundary: one bad stanza must not end the session.
            self.bad_stanzas += 1
            log.warning("dropped a stanza <%s> that failed: %r", node.tag, exc)

    def _on_iq(self, node: Node) -> None:
        iq_type = node.attr("type")
        iq_id = node.attr("id") or ""
        if iq_type in ("result", "error"):
            pending = self._pending.pop(iq_id, None)
            if pending is None:
                first = node.children[0] if node.children else None
                if first is not None and first.tag == "pair-success":
                    self._on_pair_success(node, first)
                return
            if iq_type == "error":
                self._iq_failed(iq_id, pending, node)
            else:
                self._iq_result(iq_id, pending, node)
            return
        first = node.children[0] if node.children else None
        if first is None:
            if node.attr("xmlns") == "urn:xmpp:ping":  # server ping [inferred]
                self._reply_result(node)
            return
        if first.tag == "pair-device":
            self._on_pair_device(node, first)
        elif first.tag == "pair-success":
            self._on_pair_success(node, first)
        else:
            self._reply_result(node)

    def _reply_result(self, node: Node, content: list[Node] | None = None) -> None:
        to = node.attrs.get("from", SERVER_JID)
        self.send_node(
            Node("iq", {"to": to, "id": node.attr("id") or "", "type": "result"}, content)
        )

    def _iq_result(self, iq_id: str, pending: _PendingIq, node: Node) -> None:
        kind = pending.kind
        if kind is _IqKind.APP:
            self._events.append(ev.IqResponse(iq_id, node))
        elif kind is _IqKind.PREKEY_COUNT:
            count_node = node.child("count")
            count = int(count_node.attr("value") or 0) if count_node is not None else 0
            if count <= MIN_PREKEY_COUNT:
                self._upload_prekeys(self._prekey_upload_count if count == 0 else 50)
        elif kind is _IqKind.PREKEY_UPLOAD:
            ids = pending.context
            assert isinstance(ids, list)
            with self._store.transaction():
                self._store.mark_prekeys_uploaded(ids)
        elif kind is _IqKind.USYNC:
            assert isinstance(pending.context, _Outgoing)
            self._on_usync(pending.context, node)
        elif kind is _IqKind.KEYS:
            assert isinstance(pending.context, _Outgoing)
            self._on_keys(pending.context, node)

    def _iq_failed(self, iq_id: str, pending: _PendingIq, node: Node | None) -> None:
        if pending.kind is _IqKind.APP:
            self._events.append(ev.IqResponse(iq_id, node))
        elif pending.kind in (_IqKind.USYNC, _IqKind.KEYS):
            out = pending.context
            assert isinstance(out, _Outgoing)
            code = _error_code(node) if node is not None else 408
            if out.retry_count:  # the original send succeeded; only this resend failed
                log.warning("no prekeys to answer the retry of %s: %s", out.id, code)
                return
            self._events.append(ev.MessageStatus(out.id, ev.Status.ERROR, code))

    # ------------------------------------------------------------------ pairing (SPEC §8, §9)

    def _on_pair_device(self, iq: Node, pair_device: Node) -> None:
        self._reply_result(iq)
        refs = [r.content for r in pair_device.children_by_tag("ref")]
        self._qr_refs = [r.decode() if isinstance(r, bytes) else str(r) for r in refs if r]
        self._qr_index = -1
        self._next_qr()

    def _next_qr(self) -> None:
        self._qr_index += 1
        if self._qr_index >= len(self._qr_refs):
            self._qr_refs = []
            self._close(ev.DisconnectReason.QR_TIMEOUT, False, code=408)
            return
        device = self.device
        platform = companion_platform_id(self._config.browser)
        code = build_qr(
            self._qr_refs[self._qr_index],
            device.noise_key.public,
            device.identity.public,
            device.adv_secret,
            platform.value,
        )
        timeout = QR_FIRST_TIMEOUT if self._qr_index == 0 else QR_NEXT_TIMEOUT
        self._qr_expires = self._now() + timeout
        self._events.append(ev.Qr(code, self._qr_expires, self._qr_index))

    def request_pairing_code(self, phone: str) -> str:
        """Stage 1 of pairing by phone number (SPEC §9.2); returns the code (also an event)."""
        if self.state is not ConnectionState.PAIRING:
            raise WhatsAppError("pairing codes need an unpaired connection", state=self.state.value)
        digits = "".join(ch for ch in phone if ch.isdigit())
        code = link_code.PairingCode.generate(self._rng)
        ephemeral = curve.generate_keypair(self._rng)
        wrapped = link_code.companion_hello(code, ephemeral, self._rng)
        self._link_code = _LinkCode(code, ephemeral, digits)
        os_name, browser, _ = self._config.browser
        platform = companion_platform_id(self._config.browser)
        reg = Node(
            "link_code_companion_reg",
            {
                "jid": JID(digits, "s.whatsapp.net"),
                "stage": "companion_hello",
                "should_show_push_notification": "true",
            },
            [
                Node("link_code_pairing_wrapped_companion_ephemeral_pub", {}, wrapped),
                Node("companion_server_auth_key_pub", {}, self.device.noise_key.public),
                Node("companion_platform_id", {}, platform.value),
                Node("companion_platform_display", {}, f"{browser} ({os_name})"),
                Node("link_code_pairing_nonce", {}, "0"),
            ],
        )
        self._send_iq(_IqKind.IGNORE, "md", "set", [reg])
        display = code.display
        self._events.append(ev.PairingCode(display))
        return display

    def _on_link_code_notification(self, reg: Node) -> None:
        pending = self._link_code
        if pending is None:
            return
        ref = _bytes(reg.child("link_code_pairing_ref"))
        wrapped = _bytes(reg.child("link_code_pairing_wrapped_primary_ephemeral_pub"))
        primary_identity = _bytes(reg.child("primary_identity_pub"))
        primary_ephemeral = link_code.unwrap_key(pending.code, wrapped)
        finish = link_code.companion_finish(
            companion_ephemeral=pending.ephemeral,
            companion_identity=self.device.identity.key_pair,
            primary_ephemeral_public=primary_ephemeral,
            primary_identity_public=primary_identity,
            rng=self._rng,
        )
        self.device = self.device.with_adv_secret(finish.adv_secret)
        self._save_device()
        node = Node(
            "link_code_companion_reg",
            {"jid": JID(pending.phone, "s.whatsapp.net"), "stage": "companion_finish"},
            [
                Node("link_code_pairing_wrapped_key_bundle", {}, finish.wrapped_key_bundle),
                Node("companion_identity_public", {}, self.device.identity.public),
                Node("link_code_pairing_ref", {}, ref),
            ],
        )
        self._send_iq(_IqKind.IGNORE, "md", "set", [node])

    def _on_pair_success(self, iq: Node, success: Node) -> None:
        device = self.device
        iq_id = iq.attr("id") or ""
        try:
            paired = adv.process_pair_success(
                _bytes(success.child("device-identity")),
                adv_secret=device.adv_secret,
                identity=device.identity.key_pair,
            )
        except PairingError as exc:
            reason = exc.details.get("reason")
            failure = reason if isinstance(reason, adv.AdvFailure) else adv.AdvFailure.DECODE
            error = Node("error", {"code": str(failure.error_code), "text": failure.error_text})
            self.send_node(Node("iq", {"to": SERVER_JID, "type": "error", "id": iq_id}, [error]))
            self._close(ev.DisconnectReason.HANDSHAKE_FAILED, False, error=exc)
            return
        dev_node = success.child("device")
        if dev_node is None:
            raise DecodeError("pair-success without <device>")
        jid = parse_jid(dev_node.attr("jid") or "")
        lid_text = dev_node.attr("lid")
        lid = parse_jid(lid_text) if lid_text else None
        platform_node = success.child("platform")
        platform = platform_node.attr("name") if platform_node is not None else None
        self.device = device.paired(jid=jid, lid=lid, account=paired.account, platform=platform)
        # SPEC §8.4 step 6: the primary's identity is trusted for device 0 (PN and LID).
        trusted = {str(jid.with_device(0).signal_address()): paired.primary_identity_key}
        if lid is not None:
            trusted[str(lid.with_device(0).signal_address())] = paired.primary_identity_key
        with self._store.transaction():
            self._store.put_identities(trusted)
            self._store.put_device(self.device.to_bytes())
        sign = Node(
            "pair-device-sign",
            {},
            [Node("device-identity", {"key-index": str(paired.key_index)}, paired.reply_identity)],
        )
        self.send_node(Node("iq", {"to": SERVER_JID, "type": "result", "id": iq_id}, [sign]))
        self._qr_refs = []
        self._events.append(ev.Paired(jid, lid, platform))

    def _save_device(self) -> None:
        self._store.put_device(self.device.to_bytes())

    # ------------------------------------------------------------------ login (SPEC §7, §12)

    def _on_success(self, node: Node) -> None:
        device = self.device
        lid_text = node.attr("lid")
        if lid_text:
            lid = parse_jid(lid_text)
            if device.jid is not None and lid.device != device.jid.device:
                lid = lid.with_device(device.jid.device)
            if lid != device.lid:
                self.device = device = replace(device, lid=lid)
                self._save_device()
        self.state = ConnectionState.CONNECTED
        assert device.jid is not None
        self._send_iq(_IqKind.PREKEY_COUNT, "encrypt", "get", [Node("count")])
        self._send_iq(_IqKind.IGNORE, "passive", "set", [Node("active")])
        session_id = (int(self._now() * 1000) + UNIFIED_SESSION_OFFSET_MS) % UNIFIED_SESSION_WEEK_MS
        self.send_node(Node("ib", {}, [Node("unified_session", {"id": str(session_id)})]))
        self._events.append(ev.Connected(device.jid, device.lid))

    def _upload_prekeys(self, count: int) -> None:
        device = self.device
        spk = signal_store.signed_prekey(self._store, device.identity, self._rng)
        prekeys = signal_store.prekeys_for_upload(self._store, count, self._rng)
        content = [
            Node("registration", {}, device.identity.registration_id.to_bytes(4, "big")),
            Node("type", {}, bytes([curve.DJB_TYPE])),
            Node("identity", {}, device.identity.public),
            Node("list", {}, [_key_node(p.id, p.key_pair.public) for p in prekeys]),
            _skey_node(spk),
        ]
        self._send_iq(_IqKind.PREKEY_UPLOAD, "encrypt", "set", content, [p.id for p in prekeys])

    def _on_failure(self, node: Node) -> None:
        code = int(node.attr("reason") or 500)
        if code in LOGGED_OUT_FAILURES:
            self._logged_out(ev.DisconnectReason.LOGGED_OUT, code)
        elif code == TEMP_BAN_FAILURE:
            self._close(ev.DisconnectReason.TEMPORARY_BAN, False, code=code)
        else:
            self._close(ev.DisconnectReason.LOGIN_FAILED, code >= 500, code=code)

    def _on_stream_error(self, node: Node) -> None:
        code_text = node.attr("code")
        code = int(code_text) if code_text and code_text.isdigit() else None
        conflict = node.child("conflict")
        conflict_type = conflict.attr("type") if conflict is not None else None
        if conflict_type == "device_removed" or code == 401:
            self._logged_out(ev.DisconnectReason.LOGGED_OUT, 401)
        elif conflict_type == "replaced":
            self._close(ev.DisconnectReason.CONNECTION_REPLACED, False, code=440)
        elif code == RESTART_REQUIRED:
            self._close(ev.DisconnectReason.RESTART_REQUIRED, True, code=code)
        else:
            self._close(ev.DisconnectReason.STREAM_ERROR, True, code=code)

    def _on_stream_end(self, node: Node) -> None:
        self._close(ev.DisconnectReason.CONNECTION_CLOSED, True, code=428)

    def _logged_out(self, reason: ev.DisconnectReason, code: int) -> None:
        self.state = ConnectionState.CLOSED
        self._events.append(ev.LoggedOut(reason, code))
        self._events.append(ev.Disconnected(reason, False, code))

    def _close(
        self,
        reason: ev.DisconnectReason,
        will_reconnect: bool,
        *,
        code: int | None = None,
        error: WhatsAppError | None = None,
    ) -> None:
        if self.state is ConnectionState.CLOSED:
            return
        if error is not None:
            log.warning("connection closing (%s): %r", reason.value, error)
        self.state = ConnectionState.CLOSED
        self._events.append(ev.Disconnected(reason, will_reconnect, code))

    def logout(self) -> None:
        """Ask the server to remove this companion (SPEC §12.5)."""
        jid = self.device.jid
        if jid is None:
            raise WhatsAppError("not paired")
        node = Node("remove-companion-device", {"jid": jid, "reason": "user_initiated"})
        self._send_iq(_IqKind.IGNORE, "md", "set", [node])

    # ------------------------------------------------------------------ send (SPEC §13)

    def send_text(self, to: JID | str, text: str, message_id: str | None = None) -> str:
        """Start sending `text` to a user; returns the message id (status arrives as events).

        `message_id` lets the caller fix the id (the fleet assigns it at accept time and reuses
        it on every retry, DESIGN §3.3); by default a new one is generated (SPEC §13.1).
        """
        message = e2e_pb2.Message()
        message.conversation = text
        return self.send_message(to, message, message_id)

    def send_message(
        self, to: JID | str, message: e2e_pb2.Message, message_id: str | None = None
    ) -> str:
        if self.state is not ConnectionState.CONNECTED:
            raise WhatsAppError("not logged in", state=self.state.value)
        me = self.device.jid
        assert me is not None
        chat = _user_jid(to)
        msg_id = message_id or generate_message_id(self._now, self._rng, me.user)
        out = _Outgoing(msg_id, chat, message)
        self._retry.remember(msg_id, chat, message, self._now())
        users = [Node("user", {"jid": chat})]
        if chat.user != me.user:
            users.append(Node("user", {"jid": me.to_non_ad()}))
        usync = Node(
            "usync",
            {
                "sid": self._next_id(),
                "mode": "query",
                "context": "message",
                "index": "0",
                "last": "true",
            },
            [
                Node("query", {}, [Node("devices", {"version": "2"})]),
                Node("list", {}, users),
            ],
        )
        self._send_iq(_IqKind.USYNC, "usync", "get", [usync], out)
        return msg_id

    def _on_usync(self, out: _Outgoing, node: Node) -> None:
        me = self.device.jid
        assert me is not None
        usync = node.child("usync")
        devices: list[JID] = []
        user_list = usync.child("list") if usync is not None else None
        for user in user_list.children_by_tag("user") if user_list is not None else ():
            base = parse_jid(user.attr("jid") or "").to_non_ad()
            devs = user.child("devices")
            dev_list = devs.child("device-list") if devs is not None else None
            for d in dev_list.children_by_tag("device") if dev_list is not None else ():
                number = int(d.attr("id") or 0)
                # SPEC §13.3: Baileys drops non-zero devices without key-index.
                if number != 0 and d.attr("key-index") is None:
                    continue
                jid = base.with_device(number)
                if jid.user == me.user and jid.device == me.device:
                    continue
                devices.append(jid)
        own_users = {me.user} | ({self.device.lid.user} if self.device.lid is not None else set())
        if (
            not out.retry_count
            and out.to.user not in own_users
            and not any(d.user not in own_users for d in devices)
        ):
            # Every account has at least its primary, device 0 (SPEC §5.2, §13.3): no device for the
            # recipient means the number is not on WhatsApp. Nothing is sent (Baileys would send
            # to our own devices only and get a server ack for a message nobody can receive).
            self._events.append(
                ev.MessageStatus(out.id, ev.Status.ERROR, reason=ev.NOT_ON_WHATSAPP)
            )
            return
        out.devices = devices
        missing = [
            d for d in devices if not signal_store.has_session(self._store, str(d.signal_address()))
        ]
        if missing:
            users = [Node("user", {"jid": d}) for d in missing]
            self._send_iq(_IqKind.KEYS, "encrypt", "get", [Node("key", {}, users)], out)
        else:
            self._encrypt_and_send(out)

    def _on_keys(self, out: _Outgoing, node: Node) -> None:
        list_node = node.child("list")
        failed: set[JID] = set()
        for user in list_node.children_by_tag("user") if list_node is not None else ():
            jid = parse_jid(user.attr("jid") or "")
            if user.child("error") is not None:
                failed.add(jid)
                continue
            try:
                bundle = _parse_bundle(user)
                signal_store.build_session(
                    self._store,
                    str(jid.signal_address()),
                    bundle,
                    self.device.identity,
                    self._rng,
                )
            except WhatsAppError as exc:
                log.warning("no session for %s: %r", jid, exc)
                failed.add(jid)
        out.devices = [d for d in out.devices if d not in failed]
        self._encrypt_and_send(out)

    def _encrypt_and_send(self, out: _Outgoing) -> None:
        device = self.device
        me = device.jid
        assert me is not None
        if not out.devices and out.retry_count:
            return
        peer_plain = encode_message(out.message, self._rng)
        own_plain = encode_message(wrap_for_own_devices(out.message, str(out.to)), self._rng)
        addresses: dict[str, JID] = {}
        plaintexts: dict[str, bytes] = {}
        for d in out.devices:
            address = str(d.signal_address())
            addresses[address] = d
            own = d.user == me.user and out.to.user != me.user
            plaintexts[address] = own_plain if own else peer_plain
        encrypted = signal_store.encrypt_many(self._store, plaintexts, device.identity)
        participants: list[Node] = []
        any_pkmsg = False
        mediatype = enc_mediatype(out.message)
        for address, enc in encrypted.items():
            enc_type = "pkmsg" if enc.type is MessageType.PKMSG else "msg"
            any_pkmsg = any_pkmsg or enc_type == "pkmsg"
            enc_attrs = {"v": "2", "type": enc_type}
            if mediatype:
                enc_attrs["mediatype"] = mediatype
            if out.retry_count:
                enc_attrs["count"] = str(out.retry_count)
            participants.append(
                Node("to", {"jid": addresses[address]}, [Node("enc", enc_attrs, enc.body)])
            )
        attrs: dict[str, str | JID] = {
            "id": out.id,
            "to": out.to,
            "type": stanza_type(out.message).value,
        }
        if out.retry_count:
            # SPEC §15.4: the same id, straight to the one device, no fan-out.
            content = list(participants[0].children) if participants else []
            attrs["to"] = out.devices[0]
            attrs["device_fanout"] = "false"
            if out.recipient is not None:
                attrs["recipient"] = out.recipient
        else:
            content = [Node("participants", {}, participants)]
        if any_pkmsg and device.account is not None:
            content.append(Node("device-identity", {}, device.account))
        self.send_node(Node("message", attrs, content))
        if not out.retry_count:  # a resend's ack is not a new status
            self._awaiting_ack[out.id] = self._now() + self._iq_timeout

    def _on_ack(self, node: Node) -> None:
        cls = node.attr("class")
        msg_id = node.attr("id") or ""
        if cls != "message" or self._awaiting_ack.pop(msg_id, None) is None:
            return
        error = node.attr("error")
        if error and error != "0":
            self._events.append(ev.MessageStatus(msg_id, ev.Status.ERROR, int(error)))
        else:
            self._events.append(ev.MessageStatus(msg_id, ev.Status.SERVER_ACK))

    # ------------------------------------------------------------------ receive (SPEC §15)

    def _on_message(self, node: Node) -> None:
        device = self.device
        me = device.jid
        assert me is not None
        msg_id = node.attr("id") or ""
        sender = parse_jid(node.attr("from") or "")
        participant = node.attr("participant")
        recipient = node.attr("recipient")
        if sender.is_group or sender.is_broadcast:
            # Group and status messages are out of this slice: acknowledge without content.
            self._nack(node, NACK_UNHANDLED)
            return
        own_users = {me.user} | ({device.lid.user} if device.lid is not None else set())
        from_me = sender.user in own_users
        chat = parse_jid(recipient).to_non_ad() if recipient else sender.to_non_ad()
        address = str(sender.signal_address())
        inbox_key = _inbox_key(msg_id)
        plaintext: bytes | None = None
        duplicate = False
        failed = False
        for enc in node.children_by_tag("enc"):
            enc_type = enc.attr("type") or ""
            if enc_type not in ("pkmsg", "msg") or not isinstance(enc.content, bytes):
                continue
            try:
                # The ratchet step and the plaintext commit together: after a crash before
                # confirm(), the redelivery (which no longer decrypts) is served from the store.
                with self._store.transaction():
                    inbound = signal_store.decrypt(
                        self._store, address, enc_type, enc.content, device.identity, self._rng
                    )
                    self._store.put_inbox({inbox_key: _inbox_record(address, inbound)})
            except DuplicateMessage:
                duplicate = True
                stored = self._store.get_inbox([inbox_key]).get(inbox_key)
                plaintext = _inbox_plaintext(stored, address)
                if plaintext is not None:
                    break
                continue
            except DecryptionError as exc:
                log.warning("message %s from %s did not decrypt: %s", msg_id, sender, exc.code)
                failed = True
                continue
            plaintext = inbound.plaintext
            break
        content = None
        if plaintext is not None:
            unwrapped = unwrap_device_sent(decode_message(plaintext))
            if from_me and unwrapped.destination_jid:
                chat = parse_jid(unwrapped.destination_jid).to_non_ad()
            content = extract_content(unwrapped.message)
        receipt_attrs: dict[str, str | JID] = {"id": msg_id, "to": sender}
        if participant:
            receipt_attrs["participant"] = parse_jid(participant)
        if from_me:
            receipt_attrs["type"] = "sender"
            receipt_attrs["recipient"] = chat
        elif recipient:
            receipt_attrs["recipient"] = parse_jid(recipient)
        receipt = Node("receipt", receipt_attrs)
        if content is None:
            if duplicate:  # decrypted and confirmed before: just receipt it again
                self.send_node(receipt)
            elif failed:
                self._request_retry(node, sender, chat)
            else:
                self._nack(node, NACK_UNRECOGNIZED if not node.child("enc") else NACK_UNHANDLED)
            return
        self._retry.forget_count(msg_id)
        self._unconfirmed[msg_id] = _PendingReceipt(receipt)
        message = ev.Message(
            id=msg_id,
            chat=chat,
            sender=sender,
            from_me=from_me,
            timestamp=int(node.attr("t") or 0),
            content=content,
            push_name=node.attr("notify"),
            offline=node.attr("offline") is not None,
        )
        self._events.append(message)

    def _request_retry(self, node: Node, sender: JID, chat: JID) -> None:
        """Ask the sender device to re-encrypt a message we could not decrypt (SPEC §15.4)."""
        msg_id = node.attr("id") or ""
        count = self._retry.next_count(msg_id)
        if count > MAX_RETRIES:
            self._retry.forget_count(msg_id)
            log.warning("message %s from %s given up after %d retries", msg_id, sender, MAX_RETRIES)
            self._nack(node, NACK_UNHANDLED)
            self._events.append(ev.Undecryptable(msg_id, chat, sender, MAX_RETRIES))
            return
        attrs: dict[str, str | JID] = {"id": msg_id, "to": sender, "type": "retry"}
        for name in ("participant", "recipient"):
            value = node.attrs.get(name)
            if value is not None:
                attrs[name] = value
        if node.attr("category") == "peer":
            attrs["category"] = "peer"
        identity = self.device.identity
        retry = Node(
            "retry", {"count": str(count), "id": msg_id, "t": node.attr("t") or "0", "v": "1"}
        )
        content = [retry, Node("registration", {}, identity.registration_id.to_bytes(4, "big"))]
        if count > 1:  # SPEC §15.4: from the second retry on, hand the sender a fresh bundle
            content.append(self._retry_keys())
        self.send_node(Node("receipt", attrs, content))

    def _retry_keys(self) -> Node:
        device = self.device
        with self._store.transaction():
            fresh = signal_store.generate_prekeys(self._store, 1, self._rng)[0]
            # Handed to the sender directly: never upload it to the server as well.
            self._store.mark_prekeys_uploaded([fresh.id])
            spk = signal_store.signed_prekey(self._store, device.identity, self._rng)
        content = [
            Node("type", {}, bytes([curve.DJB_TYPE])),
            Node("identity", {}, device.identity.public),
            _key_node(fresh.id, fresh.key_pair.public),
            _skey_node(spk),
        ]
        if device.account is not None:
            content.append(Node("device-identity", {}, device.account))
        return Node("keys", {}, content)

    def _on_retry_receipt(self, node: Node, requester: JID) -> None:
        """A device could not decrypt a message we sent: re-encrypt it for that device only
        (SPEC §15.4; Baileys `sendMessagesAgain`, whatsmeow `handleRetryReceipt`)."""
        msg_id = node.attr("id") or ""
        retry = node.child("retry")
        count = int(retry.attr("count") or 1) if retry is not None else 1
        me = self.device.jid
        assert me is not None
        if requester.user == me.user and requester.device == me.device:
            return
        sent = self._retry.lookup(msg_id, self._now())
        if sent is None:
            log.warning("retry receipt for %s, which is no longer cached: not resent", msg_id)
            return
        if count > MAX_RETRIES:
            log.warning("retry %d for %s from %s ignored", count, msg_id, requester)
            return
        out = _Outgoing(
            msg_id,
            sent.to,
            sent.message,
            devices=[requester],
            retry_count=count,
            recipient=node.attrs.get("recipient"),
        )
        keys_node = node.child("keys")
        if keys_node is not None:
            bundle = _parse_bundle(keys_node, registration=node.child("registration"))
            signal_store.build_session(
                self._store,
                str(requester.signal_address()),
                bundle,
                self.device.identity,
                self._rng,
            )
            self._encrypt_and_send(out)
            return
        # No bundle: the peer may have lost our session; start a new one from fresh prekeys
        # (Baileys `assertSessions(..., force)`).
        user = Node("user", {"jid": requester})
        self._send_iq(_IqKind.KEYS, "encrypt", "get", [Node("key", {}, [user])], out)

    def confirm(self, message_id: str) -> bool:
        """The application stored `message_id`: send its delivery receipt (SPEC §15.2)."""
        self._store.delete_inbox([_inbox_key(message_id)])
        pending = self._unconfirmed.pop(message_id, None)
        if pending is None:
            return False
        if self.state is not ConnectionState.CLOSED:
            self.send_node(pending.node)
        return True

    def confirm_many(self, message_ids: Sequence[str]) -> list[bool]:
        """`confirm` for several messages: one key-store write, then their receipts in order."""
        self._store.delete_inbox([_inbox_key(m) for m in message_ids])
        done = []
        for message_id in message_ids:
            pending = self._unconfirmed.pop(message_id, None)
            if pending is not None and self.state is not ConnectionState.CLOSED:
                self.send_node(pending.node)
            done.append(pending is not None)
        return done

    def _nack(self, node: Node, error: int) -> None:
        attrs: dict[str, str | JID] = {
            "id": node.attr("id") or "",
            "to": node.attrs.get("from", SERVER_JID),
            "class": node.tag,
            "error": str(error),
        }
        self.send_node(Node("ack", attrs))

    def _on_receipt(self, node: Node) -> None:
        sender = parse_jid(node.attr("from") or "")
        receipt_type = node.attr("type")
        ids = [node.attr("id") or ""]
        list_node = node.child("list")
        if list_node is not None:
            ids += [i.attr("id") or "" for i in list_node.children_by_tag("item")]
        ack: dict[str, str | JID] = {"id": ids[0], "to": sender, "class": "receipt"}
        if receipt_type:
            ack["type"] = receipt_type
        participant = node.attrs.get("participant")
        if participant is not None:
            ack["participant"] = participant
        self.send_node(Node("ack", ack))
        self._events.append(ev.Receipt(tuple(ids), sender, receipt_type, int(node.attr("t") or 0)))
        if receipt_type == "retry":
            self._on_retry_receipt(node, sender)
            return
        status = RECEIPT_STATUS.get(receipt_type)
        if status is not None:
            for msg_id in ids:
                self._events.append(ev.MessageStatus(msg_id, status))

    def _on_notification(self, node: Node) -> None:
        ntype = node.attr("type")
        ack: dict[str, str | JID] = {
            "id": node.attr("id") or "",
            "to": node.attrs.get("from", SERVER_JID),
            "class": "notification",
        }
        if ntype:
            ack["type"] = ntype
        self.send_node(Node("ack", ack))
        if ntype == "encrypt":
            count = node.child("count")
            if count is not None and int(count.attr("value") or 0) < MIN_PREKEY_COUNT:
                self._upload_prekeys(50)
        elif ntype == "link_code_companion_reg":
            reg = node.child("link_code_companion_reg")
            if reg is not None:
                self._on_link_code_notification(reg)

    def _on_ib(self, node: Node) -> None:
        if node.child("offline_preview") is not None:
            self.send_node(Node("ib", {}, [Node("offline_batch", {"count": "100"})]))

    _HANDLERS: ClassVar[dict[str, Callable[[Connection, Node], None]]] = {
        "iq": _on_iq,
        "success": _on_success,
        "failure": _on_failure,
        "stream:error": _on_stream_error,
        "xmlstreamend": _on_stream_end,
        "message": _on_message,
        "receipt": _on_receipt,
        "ack": _on_ack,
        "notification": _on_notification,
        "ib": _on_ib,
    }


# ---------------------------------------------------------------------- node helpers


def _user_jid(to: JID | str) -> JID:
    """A chat JID from a JID, its text, or a bare phone number (`+1 555…` allowed)."""
    if isinstance(to, JID):
        return to.to_non_ad()
    if "@" not in to:
        digits = "".join(ch for ch in to if ch.isdigit())
        if not digits:
            raise DecodeError("not a phone number or JID", length=len(to))
        return JID(digits, DEFAULT_USER_SERVER)
    return parse_jid(to).to_non_ad()


def _bytes(node: Node | None) -> bytes:
    if node is None or not isinstance(node.content, bytes):
        raise DecodeError("expected a node with binary content")
    return node.content


def _error_code(node: Node) -> int:
    error = node.child("error")
    code = error.attr("code") if error is not None else None
    return int(code) if code and code.isdigit() else 500


_INBOX_KEY_MAX = 128  # longer ids (never seen from WhatsApp) are stored under their digest


def _inbox_key(message_id: str) -> str:
    if len(message_id) <= _INBOX_KEY_MAX:
        return message_id
    return "sha256:" + hashlib.sha256(message_id.encode()).hexdigest()


def _inbox_record(address: str, inbound: signal_store.Inbound) -> bytes:
    """The sender's Signal address (so another sender reusing the id gets nothing) + plaintext."""
    name = address.encode()
    return len(name).to_bytes(2, "big") + name + inbound.plaintext


def _inbox_plaintext(record: bytes | None, address: str) -> bytes | None:
    if record is None or len(record) < 2:
        return None
    size = int.from_bytes(record[:2], "big")
    if record[2 : 2 + size] != address.encode():
        return None
    return record[2 + size :]


def _key_node(key_id: int, public: bytes) -> Node:
    return Node("key", {}, [Node("id", {}, key_id.to_bytes(3, "big")), Node("value", {}, public)])


def _skey_node(spk: keys.SignedPreKey) -> Node:
    return Node(
        "skey",
        {},
        [
            Node("id", {}, spk.id.to_bytes(3, "big")),
            Node("value", {}, spk.key_pair.public),
            Node("signature", {}, spk.signature),
        ],
    )


def _parse_bundle(user: Node, registration: Node | None = None) -> keys.PreKeyBundle:
    """A `<user>` of the prekey fetch result (SPEC §13.4), keys directly or under `<keys>`;
    or a retry receipt's `<keys>` with its sibling `registration` (SPEC §15.4)."""
    holder = user.child("keys") or user
    skey = holder.child("skey")
    if skey is None:
        raise DecodeError("bundle without skey")
    key = holder.child("key")
    return keys.PreKeyBundle(
        registration_id=int.from_bytes(_bytes(registration or holder.child("registration"))),
        identity_key=_bytes(holder.child("identity")),
        signed_prekey_id=int.from_bytes(_bytes(skey.child("id"))),
        signed_prekey=_bytes(skey.child("value")),
        signed_prekey_signature=_bytes(skey.child("signature")),
        prekey_id=None if key is None else int.from_bytes(_bytes(key.child("id"))),
        prekey=None if key is None else _bytes(key.child("value")),
    )
