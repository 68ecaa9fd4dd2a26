"""The simulated WhatsApp service: accounts, devices, pairing, routing, queues, faults, stats.

Synchronous and I/O-free: sockets are `Peer`s (the server module implements them) that can
`send_node` and `close`. The control API calls the public methods here. Behaviour follows
SPEC §17; details no client shows are marked [inferred].

Must not import: asyncio, websockets, protocol.aio.
"""

from __future__ import annotations

import base64
import enum
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Protocol

from google.protobuf.message import DecodeError as ProtobufDecodeError

from protocol import signal_store
from protocol.core import curve
from protocol.core.binary import Node
from protocol.core.errors import DecodeError, PairingError, WhatsAppError
from protocol.core.inject import Clock, Rng
from protocol.core.jid import DEFAULT_USER_SERVER, HIDDEN_USER_SERVER, JID, SERVER_JID, parse_jid
from protocol.core.message import encode_message, generate_message_id, wrap_for_own_devices
from protocol.core.noise import ClientFinished
from protocol.core.pairing import adv, link_code
from protocol.core.pairing.qr import parse_qr
from protocol.core.proto import e2e_pb2, signal_pb2
from protocol.core.signal import keys
from protocol.core.signal.session import MessageType
from protocol.simulator.phone import PLATFORM, Phone, Received, new_phone

log = logging.getLogger(__name__)

QR_REFS = 6  # SPEC §8.2 [inferred]: 60 + 5 × 20 s = whatsmeow's 160 s
QR_FIRST_TIMEOUT = 60.0  # SPEC §8.2
QR_NEXT_TIMEOUT = 20.0
PREKEY_LOW = 5  # SPEC §17 item 8 [inferred]: notify below the clients' refill threshold
REF_BYTES = 18
MAX_RETRIES = 5  # SPEC §15.4
LID_DIGITS = 15


class ControlError(WhatsAppError):
    """A control API request that cannot be served; `status` is the HTTP status."""

    code = "control_error"

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text, status=status)
        self.status = status


class Peer(Protocol):
    """One client socket as the world sees it."""

    def send_node(self, node: Node) -> None: ...
    def close(self) -> None: ...


class FaultKind(enum.StrEnum):
    LATENCY = "latency"
    DROP = "drop"
    STALL = "stall"
    STREAM_ERROR = "stream_error"
    IQ_ERROR = "iq_error"
    REFUSE_LOGIN = "refuse_login"
    ACK_ERROR = "ack_error"
    GARBAGE = "garbage"
    CORRUPT = "corrupt"
    FORGET_SESSION = "forget_session"
    CLEAR = "clear"


@dataclass(slots=True)
class DeviceRecord:
    """What the server knows of one device (a phone's device 0 or a companion)."""

    jid: JID
    lid: JID
    registration_id: int
    identity: bytes
    signed_prekey: tuple[int, bytes, bytes]  # id, public, signature
    prekeys: dict[int, bytes] = field(default_factory=dict)
    noise_public: bytes | None = None
    key_index: int = 0
    account: bytes | None = None  # the companion's signed ADV identity (device-identity)


@dataclass(slots=True)
class PendingCompanion:
    """A registration connection waiting to be linked (SPEC §8.2)."""

    peer: Peer
    noise_public: bytes
    registration_id: int
    identity: bytes
    signed_prekey: tuple[int, bytes, bytes]
    refs: list[str]
    created: float
    phone: Phone | None = None
    device: int = 0
    pair_iq: str | None = None
    details: bytes | None = None
    code: link_code.PairingCode | None = None
    code_phone: str | None = None
    code_ephemeral: curve.KeyPair | None = None
    code_companion_ephemeral: bytes | None = None
    code_ref: bytes | None = None

    def ref_expiry(self, ref: str) -> float:
        index = self.refs.index(ref)
        return self.created + QR_FIRST_TIMEOUT + QR_NEXT_TIMEOUT * index


@dataclass(slots=True)
class Faults:
    """Active fault injections (control API `POST /control/faults`)."""

    latency: dict[str, float] = field(default_factory=dict)  # device jid → seconds
    iq_errors: dict[str, int] = field(default_factory=dict)  # xmlns → error code
    refuse_logins: dict[str, int] = field(default_factory=dict)  # phone → expire seconds
    ack_errors: dict[str, int] = field(default_factory=dict)  # destination phone → error code
    corrupt: dict[str, int] = field(default_factory=dict)  # device jid → messages left to spoil


@dataclass(slots=True)
class Stats:
    connections: int = 0
    handshakes: int = 0
    logins: int = 0
    registrations: int = 0
    pairings: int = 0
    messages_relayed: int = 0
    receipts_relayed: int = 0
    offline_delivered: int = 0
    bad_stanzas: int = 0
    conflicts: int = 0
    retry_receipts: int = 0
    corrupted: int = 0
    undecryptable: int = 0
    max_concurrent_logins_per_device: int = 0
    delivery_counts: Counter[str] = field(default_factory=Counter)


class World:
    """The whole simulated service; see the module docstring."""

    def __init__(self, *, rng: Rng, now: Clock) -> None:
        self._rng = rng
        self._now = now
        self.phones: dict[str, Phone] = {}
        self.devices: dict[JID, DeviceRecord] = {}
        self.online: dict[JID, list[Peer]] = defaultdict(list)
        self.peer_jid: dict[int, JID] = {}
        self.queues: dict[JID, list[Node]] = defaultdict(list)
        self.inflight: dict[JID, dict[str, Node]] = defaultdict(dict)
        self.pending: dict[int, PendingCompanion] = {}
        self.refs: dict[str, PendingCompanion] = {}
        self.codes: dict[str, PendingCompanion] = {}
        self.faults = Faults()
        self.stats = Stats()
        self._ids = 0
        self.media: dict[str, bytes] = {}
        self._code_waiting: list[PendingCompanion] = []

    @property
    def id_counter(self) -> int:
        return self._ids

    @id_counter.setter
    def id_counter(self, value: int) -> None:
        self._ids = value

    # ------------------------------------------------------------------ helpers

    def _next_id(self) -> str:
        self._ids += 1
        return f"sim-{self._ids}"

    def _t(self) -> str:
        return str(int(self._now()))

    def _send(self, peer: Peer, node: Node) -> None:
        peer.send_node(node)

    def user_devices(self, user: str) -> list[DeviceRecord]:
        return sorted(
            (d for d in self.devices.values() if d.jid.user == user), key=lambda d: d.jid.device
        )

    def resolve(self, jid: JID) -> JID:
        """A LID device JID → the PN device JID (routing is by PN) [inferred]."""
        if jid.server == HIDDEN_USER_SERVER:
            for phone in self.phones.values():
                if phone.lid_user == jid.user:
                    return JID(phone.number, DEFAULT_USER_SERVER, jid.device)
        return JID(jid.user, DEFAULT_USER_SERVER, jid.device) if jid.server == "c.us" else jid

    # ------------------------------------------------------------------ accounts (control)

    def create_account(self, number: str, name: str | None = None) -> Phone:
        if not number.isdigit() or len(number) < 7:
            raise ControlError(400, "phone must be digits only, more than 6")
        if number in self.phones:
            raise ControlError(409, "account exists")
        lid_user = str(10**14 + int.from_bytes(self._rng(6)) % (9 * 10**14))
        phone = new_phone(number, name or number, lid_user, self._rng)
        spk, prekeys = phone.bundle_keys(self._rng)
        self.phones[number] = phone
        self.devices[phone.jid] = DeviceRecord(
            jid=phone.jid,
            lid=phone.lid,
            registration_id=phone.identity.registration_id,
            identity=phone.identity.public,
            signed_prekey=(spk.id, spk.key_pair.public, spk.signature),
            prekeys={p.id: p.key_pair.public for p in prekeys},
        )
        return phone

    def account_json(self, phone: Phone) -> dict[str, object]:
        return {
            "phone": phone.number,
            "name": phone.name,
            "jid": str(phone.jid),
            "lid": str(phone.lid),
            "devices": [
                {"device": d.jid.device, "jid": str(d.jid), "online": bool(self.online.get(d.jid))}
                for d in self.user_devices(phone.number)
            ],
        }

    def phone(self, number: str) -> Phone:
        phone = self.phones.get(number)
        if phone is None:
            raise ControlError(404, "no such account")
        return phone

    # ------------------------------------------------------------------ sockets

    def on_hello(self, peer: Peer, finished: ClientFinished) -> None:
        """The Noise handshake finished: registration or login (SPEC §17 items 3–4)."""
        self.stats.handshakes += 1
        payload = finished.client_payload
        if payload.HasField("devicePairingData"):
            self._register(peer, finished)
        elif payload.HasField("username"):
            self._login(peer, finished)
        else:
            self._send(peer, Node("failure", {"reason": "400"}))
            peer.close()

    def _register(self, peer: Peer, finished: ClientFinished) -> None:
        data = finished.client_payload.devicePairingData
        identity = bytes(data.eIdent)
        spk_pub = bytes(data.eSkeyVal)
        spk_sig = bytes(data.eSkeySig)
        if not curve.verify(identity, curve.djb(spk_pub), spk_sig):
            self._send(peer, Node("failure", {"reason": "400"}))
            peer.close()
            return
        self.stats.registrations += 1
        refs = [base64.b64encode(self._rng(REF_BYTES)).decode() for _ in range(QR_REFS)]
        pending = PendingCompanion(
            peer=peer,
            noise_public=finished.client_static,
            registration_id=int.from_bytes(data.eRegid),
            identity=identity,
            signed_prekey=(int.from_bytes(data.eSkeyId), spk_pub, spk_sig),
            refs=refs,
            created=self._now(),
        )
        self.pending[id(peer)] = pending
        for ref in refs:
            self.refs[ref] = pending
        node = Node(
            "iq",
            {"from": SERVER_JID, "id": self._next_id(), "type": "set", "xmlns": "md"},
            [Node("pair-device", {}, [Node("ref", {}, ref.encode()) for ref in refs])],
        )
        self._send(peer, node)

    def _login(self, peer: Peer, finished: ClientFinished) -> None:
        payload = finished.client_payload
        jid = JID(str(payload.username), DEFAULT_USER_SERVER, payload.device)
        record = self.devices.get(jid)
        if record is None or record.noise_public != finished.client_static:
            # SPEC §17 item 4: unknown or removed device, or another noise key.
            self._send(peer, Node("failure", {"reason": "401", "location": "sim"}))
            peer.close()
            return
        expire = self.faults.refuse_logins.get(jid.user)
        if expire is not None:
            failure = {"reason": "402", "code": "101", "expire": str(expire)}
            self._send(peer, Node("failure", failure))
            peer.close()
            return
        live = self.online[jid]
        self.stats.max_concurrent_logins_per_device = max(
            self.stats.max_concurrent_logins_per_device, len(live) + 1
        )
        for old in list(live):  # SPEC §17 item 9: the newer login wins
            self.stats.conflicts += 1
            self._send(old, Node("stream:error", {}, [Node("conflict", {"type": "replaced"})]))
            self.disconnect(old)
            old.close()
        self.stats.logins += 1
        self.online[jid].append(peer)
        self.peer_jid[id(peer)] = jid
        lid = record.lid
        self._send(peer, Node("success", {"t": self._t(), "lid": lid, "props": "1"}))
        backlog = list(self.inflight[jid].values()) + self.queues.pop(jid, [])
        for node in backlog:
            attrs: dict[str, str | JID] = dict(node.attrs)
            attrs["offline"] = "1"
            redelivered = Node(node.tag, attrs, node.content)
            if node.tag == "message":
                self.inflight[jid][node.attr("id") or ""] = node
                self.stats.delivery_counts[node.attr("id") or ""] += 1
            self.stats.offline_delivered += 1
            self._send(peer, redelivered)
        self._send(peer, Node("ib", {}, [Node("offline", {"count": str(len(backlog))})]))

    def disconnect(self, peer: Peer) -> None:
        """A socket went away (or is being closed by us)."""
        pending = self.pending.pop(id(peer), None)
        if pending is not None:
            for ref in pending.refs:
                self.refs.pop(ref, None)
            if pending.code is not None:
                self.codes.pop(pending.code.value, None)
        jid = self.peer_jid.pop(id(peer), None)
        if jid is not None and peer in self.online.get(jid, []):
            self.online[jid].remove(peer)

    def on_node(self, peer: Peer, node: Node) -> None:
        try:
            jid = self.peer_jid.get(id(peer))
            if node.tag == "iq":
                self._on_iq(peer, jid, node)
            elif jid is None:
                return  # only IQs (pairing) before login
            elif node.tag == "message":
                self._on_message(peer, jid, node)
            elif node.tag == "receipt":
                self._on_receipt(peer, jid, node)
            elif node.tag == "ack":
                self._on_ack(jid, node)
        except (WhatsAppError, KeyError, ValueError, TypeError, AttributeError) as exc:
            self.stats.bad_stanzas += 1
            log.info("bad stanza <%s>: %r", node.tag, exc)

    # ------------------------------------------------------------------ IQs (SPEC §17 item 5)

    def _result(self, peer: Peer, iq: Node, content: list[Node] | None = None) -> None:
        attrs: dict[str, str | JID] = {"from": SERVER_JID, "id": iq.attr("id") or ""}
        attrs["type"] = "result"
        self._send(peer, Node("iq", attrs, content))

    def _error(self, peer: Peer, iq: Node, code: int, text: str) -> None:
        attrs: dict[str, str | JID] = {"from": SERVER_JID, "id": iq.attr("id") or ""}
        attrs["type"] = "error"
        error = Node("error", {"code": str(code), "text": text})
        self._send(peer, Node("iq", attrs, [error]))

    def _on_iq(self, peer: Peer, jid: JID | None, iq: Node) -> None:
        iq_type = iq.attr("type")
        if iq_type in ("result", "error"):
            self._on_iq_reply(peer, iq)
            return
        xmlns = iq.attr("xmlns") or ""
        error = self.faults.iq_errors.get(xmlns)
        if error is not None:
            self._error(peer, iq, error, "injected")
            return
        first = iq.children[0] if iq.children else None
        if xmlns == "md" and first is not None and first.tag == "link_code_companion_reg":
            self._on_link_code(peer, iq, first)
            return
        if jid is None:
            self._error(peer, iq, 401, "not-authorized")
            return
        if xmlns in ("w:p", "passive", "abt", "blocklist", "privacy", "w:stats"):
            self._result(peer, iq)
        elif xmlns == "encrypt":
            self._on_encrypt(peer, jid, iq)
        elif xmlns == "usync":
            self._on_usync(peer, iq)
        elif xmlns == "md" and first is not None and first.tag == "remove-companion-device":
            self._result(peer, iq)
            target = parse_jid(first.attr("jid") or "")
            self.remove_device(target)
        elif xmlns == "w:m" and first is not None and first.tag == "media_conn":
            self._result(peer, iq, [self.media_conn_node()])
        else:
            self._error(peer, iq, 501, "feature-not-implemented")

    media_host = "127.0.0.1"

    def media_conn_node(self) -> Node:
        auth = base64.urlsafe_b64encode(self._rng(16)).decode().rstrip("=")
        host = Node("host", {"hostname": self.media_host})
        return Node("media_conn", {"auth": auth, "ttl": "3600", "auth_ttl": "3600"}, [host])

    def _on_encrypt(self, peer: Peer, jid: JID, iq: Node) -> None:
        record = self.devices[jid]
        first = iq.children[0] if iq.children else None
        if first is None:
            self._error(peer, iq, 400, "bad-request")
            return
        if first.tag == "count":
            self._result(peer, iq, [Node("count", {"value": str(len(record.prekeys))})])
        elif first.tag in ("registration", "list", "identity"):
            for key in _children(iq.child("list"), "key"):
                record.prekeys[_int(key.child("id"))] = _bytes(key.child("value"))
            skey = iq.child("skey")
            if skey is not None:
                record.signed_prekey = (
                    _int(skey.child("id")),
                    _bytes(skey.child("value")),
                    _bytes(skey.child("signature")),
                )
            self._result(peer, iq)
        elif first.tag == "key":
            wanted = [parse_jid(u.attr("jid") or "") for u in first.children]
            self._result(peer, iq, [Node("list", {}, [self._bundle_node(j) for j in wanted])])
            for target in wanted:
                self._check_low(self.resolve(target))
        elif first.tag == "digest":
            self._result(peer, iq, [Node("digest", {})])
        elif first.tag == "rotate":
            skey = first.child("skey")
            if skey is not None:
                record.signed_prekey = (
                    _int(skey.child("id")),
                    _bytes(skey.child("value")),
                    _bytes(skey.child("signature")),
                )
            self._result(peer, iq)
        else:
            self._error(peer, iq, 400, "bad-request")

    def _check_low(self, jid: JID) -> None:
        """SPEC §17 item 8: tell an online companion its one-time prekeys run low."""
        target = self.devices.get(jid)
        if target is None or target.noise_public is None or len(target.prekeys) >= PREKEY_LOW:
            return
        for p in self.online.get(jid, []):
            attrs: dict[str, str | JID] = {"from": SERVER_JID, "id": self._next_id()}
            attrs |= {"type": "encrypt", "t": self._t()}
            count = Node("count", {"value": str(len(target.prekeys))})
            self._send(p, Node("notification", attrs, [count]))

    def take_bundle(self, jid: JID) -> keys.PreKeyBundle | None:
        """A device's bundle, consuming one one-time prekey (SPEC §13.4, §17 item 5)."""
        record = self.devices.get(self.resolve(jid))
        if record is None:
            return None
        prekey_id = min(record.prekeys) if record.prekeys else None
        prekey = record.prekeys.pop(prekey_id) if prekey_id is not None else None
        spk_id, spk_pub, spk_sig = record.signed_prekey
        return keys.PreKeyBundle(
            registration_id=record.registration_id,
            identity_key=record.identity,
            signed_prekey_id=spk_id,
            signed_prekey=spk_pub,
            signed_prekey_signature=spk_sig,
            prekey_id=prekey_id,
            prekey=prekey,
        )

    def _bundle_node(self, jid: JID) -> Node:
        bundle = self.take_bundle(jid)
        if bundle is None:
            error = Node("error", {"code": "404", "text": "item-not-found"})
            return Node("user", {"jid": jid}, [error])
        content = [
            Node("registration", {}, bundle.registration_id.to_bytes(4, "big")),
            Node("type", {}, bytes([curve.DJB_TYPE])),
            Node("identity", {}, bundle.identity_key),
            Node(
                "skey",
                {},
                [
                    Node("id", {}, bundle.signed_prekey_id.to_bytes(3, "big")),
                    Node("value", {}, bundle.signed_prekey),
                    Node("signature", {}, bundle.signed_prekey_signature),
                ],
            ),
        ]
        if bundle.prekey_id is not None and bundle.prekey is not None:
            content.append(
                Node(
                    "key",
                    {},
                    [
                        Node("id", {}, bundle.prekey_id.to_bytes(3, "big")),
                        Node("value", {}, bundle.prekey),
                    ],
                )
            )
        return Node("user", {"jid": jid}, content)

    def _on_usync(self, peer: Peer, iq: Node) -> None:
        usync = iq.child("usync")
        if usync is None:
            self._error(peer, iq, 400, "bad-request")
            return
        query = usync.child("query")
        wants_lid = query is not None and query.child("lid") is not None
        wants_contact = query is not None and query.child("contact") is not None
        wants_devices = query is not None and query.child("devices") is not None
        users: list[Node] = []
        for user in _children(usync.child("list"), "user"):
            text = user.attr("jid")
            contact = user.child("contact")
            if text:
                target = self.resolve(parse_jid(text)).to_non_ad()
            elif contact is not None and isinstance(contact.content, (str, bytes)):
                raw = (
                    contact.content.decode()
                    if isinstance(contact.content, bytes)
                    else contact.content
                )
                target = JID("".join(ch for ch in raw if ch.isdigit()), DEFAULT_USER_SERVER)
            else:
                continue
            phone = self.phones.get(target.user)
            content: list[Node] = []
            if wants_devices:
                device_nodes = [
                    Node("device", {"id": "0"})
                    if d.jid.device == 0
                    else Node("device", {"id": str(d.jid.device), "key-index": str(d.key_index)})
                    for d in self.user_devices(target.user)
                ]
                content.append(
                    Node(
                        "devices",
                        {},
                        [
                            Node("device-list", {}, device_nodes),
                            Node("key-index-list", {"ts": self._t()}, b""),
                        ],
                    )
                )
            if wants_contact:
                content.append(Node("contact", {"type": "in" if phone else "out"}))
            if wants_lid and phone is not None:
                content.append(Node("lid", {"val": phone.lid}))
            users.append(Node("user", {"jid": target}, content))
        attrs = {k: v for k, v in usync.attrs.items()}
        result = Node("usync", attrs, [Node("list", {}, users)])
        self._result(peer, iq, [result])

    # ------------------------------------------------------------------ pairing (SPEC §8, §9)

    def link_qr(self, number: str, qr: str) -> dict[str, object]:
        """The phone scans a QR string (control API)."""
        phone = self.phone(number)
        try:
            payload = parse_qr(qr)
        except DecodeError:
            raise ControlError(400, "not a QR string") from None
        pending = self.refs.get(payload.ref)
        if pending is None:
            raise ControlError(404, "no companion shows this QR")
        if pending.phone is not None:
            raise ControlError(409, "companion already linking")
        if (
            payload.noise_public != pending.noise_public
            or payload.identity_public != pending.identity
        ):
            raise ControlError(409, "QR keys do not match the connected companion")
        if self._now() > pending.ref_expiry(payload.ref):
            raise ControlError(410, "QR expired")
        return self._pair(phone, pending, payload.adv_secret)

    def link_code(self, number: str, code: str) -> dict[str, object]:
        """The phone user types a pairing code (control API; SPEC §9 primary side)."""
        phone = self.phone(number)
        try:
            parsed = link_code.PairingCode.parse(code)
        except (DecodeError, PairingError):
            raise ControlError(400, "not a pairing code") from None
        pending = self.find_code(phone.number, parsed.value)
        if pending is None or pending.code_companion_ephemeral is None:
            raise ControlError(404, "no companion requested this code")
        if pending.code_phone != phone.number:
            raise ControlError(409, "the code was requested for another number")
        if pending.phone is not None:
            raise ControlError(409, "companion already linking")
        if self._now() > pending.created + QR_FIRST_TIMEOUT + QR_NEXT_TIMEOUT * (QR_REFS - 1):
            raise ControlError(410, "code expired")
        ephemeral = curve.generate_keypair(self._rng)
        hello = link_code.primary_hello(
            code=parsed,
            wrapped_companion_ephemeral=pending.code_companion_ephemeral,
            primary_ephemeral=ephemeral,
            rng=self._rng,
        )
        pending.code_ephemeral = ephemeral
        pending.code_companion_ephemeral = hello.companion_ephemeral_public
        pending.phone = phone
        notification = Node(
            "notification",
            {
                "from": SERVER_JID,
                "id": self._next_id(),
                "type": "link_code_companion_reg",
                "t": self._t(),
            },
            [
                Node(
                    "link_code_companion_reg",
                    {"stage": "primary_hello"},  # stage value [unverified], SPEC §9.3
                    [
                        Node("link_code_pairing_ref", {}, pending.code_ref or b""),
                        Node(
                            "link_code_pairing_wrapped_primary_ephemeral_pub",
                            {},
                            hello.wrapped_primary_ephemeral,
                        ),
                        Node("primary_identity_pub", {}, phone.identity.public),
                    ],
                )
            ],
        )
        self._send(pending.peer, notification)
        return {"status": "code_accepted"}

    def _on_link_code(self, peer: Peer, iq: Node, reg: Node) -> None:
        pending = self.pending.get(id(peer))
        if pending is None:
            self._error(peer, iq, 400, "bad-request")
            return
        stage = reg.attr("stage")
        if stage == "companion_hello":
            wrapped = _bytes(reg.child("link_code_pairing_wrapped_companion_ephemeral_pub"))
            number = parse_jid(reg.attr("jid") or "").user
            ref = base64.b64encode(self._rng(REF_BYTES)).decode().encode()
            pending.code_phone = number
            pending.code_companion_ephemeral = wrapped
            pending.code_ref = ref
            # The server cannot read the code: the phone that the user types it into finds
            # the waiting companion by number (find_code) [inferred].
            self._result(
                peer,
                iq,
                [Node("link_code_companion_reg", {}, [Node("link_code_pairing_ref", {}, ref)])],
            )
            self._code_waiting.append(pending)
        elif stage == "companion_finish":
            phone = pending.phone
            if phone is None or pending.code_ephemeral is None:
                self._error(peer, iq, 400, "bad-request")
                return
            companion_identity = _bytes(reg.child("companion_identity_public"))
            try:
                adv_secret = link_code.primary_finish(
                    primary_ephemeral=pending.code_ephemeral,
                    primary_identity=phone.identity.key_pair,
                    companion_ephemeral_public=pending.code_companion_ephemeral or b"",
                    companion_identity_public=companion_identity,
                    wrapped_key_bundle=_bytes(reg.child("link_code_pairing_wrapped_key_bundle")),
                )
            except PairingError:
                self._error(peer, iq, 400, "bad-request")
                return
            self._result(peer, iq)
            pending.phone = None
            self._pair(phone, pending, adv_secret)
        else:
            self._error(peer, iq, 400, "bad-request")

    def find_code(self, number: str, code: str) -> PendingCompanion | None:
        """The companion waiting for `code` on `number`: the one whose wrapped key opens."""
        parsed = link_code.PairingCode.parse(code)
        for pending in reversed(self._code_waiting):
            if pending.code_phone != number or pending.code_companion_ephemeral is None:
                continue
            if id(pending.peer) not in self.pending:
                continue
            try:
                link_code.unwrap_key(parsed, pending.code_companion_ephemeral)
            except PairingError:
                continue
            # AES-CTR unwrapping cannot fail on a wrong code; the companion's finish (GCM)
            # decides. The newest request for this number wins [inferred].
            pending.code = parsed
            self.codes[parsed.value] = pending
            return pending
        return None

    def _pair(
        self, phone: Phone, pending: PendingCompanion, adv_secret: bytes
    ) -> dict[str, object]:
        device = phone.next_device
        key_index = phone.next_key_index
        phone.next_device += 1
        phone.next_key_index += 1
        details = adv.build_device_identity(raw_id=phone.raw_id, key_index=key_index, now=self._now)
        signed = adv.sign_account(phone.identity.key_pair, details, pending.identity)
        container = adv.build_container(signed, adv_secret)
        pending.phone = phone
        pending.device = device
        pending.details = details
        iq_id = self._next_id()
        pending.pair_iq = iq_id
        jid = JID(phone.number, DEFAULT_USER_SERVER, device)
        lid = JID(phone.lid_user, HIDDEN_USER_SERVER, device)
        node = Node(
            "iq",
            {"from": SERVER_JID, "id": iq_id, "type": "result", "t": self._t()},
            [
                Node(
                    "pair-success",
                    {},
                    [
                        Node("device-identity", {}, container),
                        Node("platform", {"name": PLATFORM}),
                        Node("device", {"jid": jid, "lid": lid}),
                    ],
                )
            ],
        )
        self._send(pending.peer, node)
        return {"jid": str(jid), "lid": str(lid), "device": device}

    def _on_iq_reply(self, peer: Peer, iq: Node) -> None:
        pending = self.pending.get(id(peer))
        if pending is None or pending.pair_iq != iq.attr("id") or pending.phone is None:
            return
        phone = pending.phone
        sign = iq.child("pair-device-sign")
        if iq.attr("type") != "result" or sign is None:
            log.info("companion refused pair-success: %s", iq)
            peer.close()
            return
        identity_node = sign.child("device-identity")
        try:
            adv.verify_device_signature(
                _bytes(identity_node),
                account_public=phone.identity.public,
                companion_identity_public=pending.identity,
                expected_details=pending.details,
            )
        except PairingError:
            self._send(peer, Node("stream:error", {"code": "401"}))
            peer.close()
            return
        jid = JID(phone.number, DEFAULT_USER_SERVER, pending.device)
        key_index = int(identity_node.attr("key-index") or 0) if identity_node else 0
        self.devices[jid] = DeviceRecord(
            jid=jid,
            lid=JID(phone.lid_user, HIDDEN_USER_SERVER, pending.device),
            registration_id=pending.registration_id,
            identity=pending.identity,
            signed_prekey=pending.signed_prekey,
            noise_public=pending.noise_public,
            key_index=key_index,
        )
        self.stats.pairings += 1
        self.disconnect(peer)
        self._send(peer, Node("stream:error", {"code": "515"}))  # SPEC §8.5
        peer.close()

    def remove_device(self, jid: JID) -> bool:
        """Unlink a companion: it gets 401 device_removed (SPEC §12.5, §17 item 9)."""
        jid = self.resolve(jid)
        record = self.devices.get(jid)
        if record is None or jid.device == 0:
            return False
        del self.devices[jid]
        self.queues.pop(jid, None)
        self.inflight.pop(jid, None)
        for peer in list(self.online.get(jid, [])):
            error = Node(
                "stream:error", {"code": "401"}, [Node("conflict", {"type": "device_removed"})]
            )
            self._send(peer, error)
            self.disconnect(peer)
            peer.close()
        return True

    # ------------------------------------------------------------------ routing (SPEC §17 6–7)

    def _on_message(self, peer: Peer, sender: JID, node: Node) -> None:
        msg_id = node.attr("id") or ""
        to_text = node.attr("to")
        if not to_text or not msg_id:
            raise DecodeError("message without to/id")
        to_jid = self.resolve(parse_jid(to_text))
        recipient_text = node.attr("recipient")
        # A retry resend (SPEC §15.4) goes to one device; its chat is `recipient` when the
        # device is one of the sender's own.
        chat = (
            self.resolve(parse_jid(recipient_text)).to_non_ad()
            if recipient_text
            else to_jid.to_non_ad()
        )
        error = self.faults.ack_errors.get(chat.user)
        ack: dict[str, str | JID] = {"class": "message", "id": msg_id, "from": chat}
        ack["t"] = self._t()
        if error is not None:
            ack["error"] = str(error)
            self._send(peer, Node("ack", ack))
            return
        participants = node.child("participants")
        identity = node.child("device-identity")
        self._send(peer, Node("ack", ack))  # SPEC §13.6: before any receipt can come back
        if participants is None and node.attr("device_fanout") == "false":
            encs = [c for c in node.children if c.tag == "enc"]
            participants = Node("participants", {}, [Node("to", {"jid": to_jid}, encs)])
        deliveries = 0
        # Our own other devices first, then the chat's [inferred]: the own phone's `sender`
        # receipt (SERVER_ACK) then precedes the recipient's delivery receipt, so a client
        # that keeps the last status it saw (Baileys' event buffer does) ends on DELIVERED.
        fanout = sorted(
            _children(participants, "to"),
            key=lambda to: self.resolve(parse_jid(to.attr("jid") or "")).user != sender.user,
        )
        for to in fanout:
            target = self.resolve(parse_jid(to.attr("jid") or ""))
            encs = [c for c in to.children if c.tag == "enc"]
            if not encs or target not in self.devices:
                continue
            attrs: dict[str, str | JID] = {
                "from": sender,
                "id": msg_id,
                "t": self._t(),
                "type": node.attr("type") or "text",
            }
            if target.user == sender.user and chat.user != sender.user:
                attrs["recipient"] = chat
            else:
                attrs["notify"] = (
                    self.phones[sender.user].name if sender.user in self.phones else ""
                )
            content = list(encs)
            if identity is not None:
                content.append(identity)
            self.deliver(target, Node("message", attrs, content))
            deliveries += 1
        self.stats.messages_relayed += 1 if deliveries else 0

    def deliver(self, target: JID, node: Node) -> None:
        """Hand a stanza to a device: a phone reads it now; a companion online or queued."""
        record = self.devices.get(target)
        if record is None:
            return
        msg_id = node.attr("id") or ""
        if node.tag == "message":
            self.stats.delivery_counts[msg_id] += 1
            node = self._maybe_corrupt(target, node)
        if target.device == 0 and target.user in self.phones:
            self._phone_receive(self.phones[target.user], node)
            return
        if node.tag == "message":
            self.inflight[target][msg_id] = node
        peers = self.online.get(target)
        if peers:
            for p in peers:
                self._send(p, node)
        elif node.tag != "message":
            self.queues[target].append(node)

    def _maybe_corrupt(self, target: JID, node: Node) -> Node:
        """Fault `corrupt`: spoil the MAC of every `enc` so the device cannot decrypt it."""
        left = self.faults.corrupt.get(str(target), 0)
        if left <= 0:
            return node
        if left == 1:
            del self.faults.corrupt[str(target)]
        else:
            self.faults.corrupt[str(target)] = left - 1
        self.stats.corrupted += 1
        content = [
            Node(c.tag, dict(c.attrs), _spoil(c.attr("type") or "", c.content))
            if c.tag == "enc" and isinstance(c.content, bytes)
            else c
            for c in node.children
        ]
        return Node(node.tag, dict(node.attrs), content)

    def _phone_receive(self, phone: Phone, node: Node) -> None:
        if node.tag == "receipt":
            phone.receipts.append(
                {"id": node.attr("id"), "from": node.attr("from"), "type": node.attr("type")}
            )
            sender = node.attrs.get("from")
            if node.attr("type") == "retry" and isinstance(sender, JID):
                self._phone_resend(phone, sender, node)
            return
        if node.tag != "message":
            return
        got = phone.decrypt(node, self._rng, self._now)
        sender = node.attrs.get("from")
        if not isinstance(sender, JID):
            return
        if got is None:
            if node.child("enc") is not None:
                self._phone_retry_request(phone, sender, node)
            return
        phone.retry_counts.pop(got.id, None)
        receipt: dict[str, str | JID] = {"from": phone.jid, "id": got.id, "t": self._t()}
        recipient = node.attrs.get("recipient")
        if recipient is not None:
            receipt["type"] = "sender"
            receipt["recipient"] = recipient
        self.stats.receipts_relayed += 1
        self.deliver(sender, Node("receipt", receipt))

    def _on_receipt(self, peer: Peer, sender: JID, node: Node) -> None:
        msg_id = node.attr("id") or ""
        ack: dict[str, str | JID] = {"class": "receipt", "id": msg_id, "from": sender}
        receipt_type = node.attr("type")
        if receipt_type:
            ack["type"] = receipt_type
        self._send(peer, Node("ack", ack))
        ids = [msg_id] + [i.attr("id") or "" for i in _children(node.child("list"), "item")]
        for i in ids:
            self.inflight[sender].pop(i, None)
        to_text = node.attr("to")
        if not to_text:
            return
        if receipt_type == "retry":
            self.stats.retry_receipts += 1
        target = self.resolve(parse_jid(to_text))
        targets = [target] if target.device or target in self.devices else []
        if not targets:
            targets = [d.jid for d in self.user_devices(target.user)]
        attrs: dict[str, str | JID] = {"from": sender, "id": msg_id, "t": self._t()}
        if receipt_type:
            attrs["type"] = receipt_type
        recipient = node.attrs.get("recipient")
        if recipient is not None:
            attrs["recipient"] = recipient
        content = node.content if isinstance(node.content, list) else None
        for t in targets:
            if t == sender:
                continue
            self.stats.receipts_relayed += 1
            self.deliver(t, Node("receipt", attrs, content))

    def _on_ack(self, sender: JID, node: Node) -> None:
        if node.attr("class") == "message":  # a NACK: the device will not receipt it
            self.inflight[sender].pop(node.attr("id") or "", None)

    # ------------------------------------------------------------------ retry receipts (§15.4)

    def _phone_retry_request(self, phone: Phone, sender: JID, node: Node) -> None:
        """The phone could not decrypt a message: ask the sending device to resend it."""
        msg_id = node.attr("id") or ""
        count = phone.retry_counts.get(msg_id, 0) + 1
        if count > MAX_RETRIES:
            phone.retry_counts.pop(msg_id, None)
            phone.undecryptable.append(msg_id)
            self.stats.undecryptable += 1
            log.info("phone %s gave up on %s after %d retries", phone.number, msg_id, MAX_RETRIES)
            return
        phone.retry_counts[msg_id] = count
        attrs: dict[str, str | JID] = {
            "from": phone.jid,
            "id": msg_id,
            "t": self._t(),
            "type": "retry",
        }
        recipient = node.attrs.get("recipient")
        if recipient is not None:
            attrs["recipient"] = recipient
        retry_attrs = {"count": str(count), "id": msg_id, "t": node.attr("t") or "0", "v": "1"}
        retry = Node("retry", retry_attrs)
        registration = phone.identity.registration_id.to_bytes(4, "big")
        content = [retry, Node("registration", {}, registration)]
        if count > 1:  # SPEC §15.4: a fresh bundle from the second retry on
            spk, _ = phone.bundle_keys(self._rng)
            fresh = signal_store.generate_prekeys(phone.store, 1, self._rng)[0]
            phone.store.mark_prekeys_uploaded([fresh.id])
            content.append(
                Node(
                    "keys",
                    {},
                    [
                        Node("type", {}, bytes([curve.DJB_TYPE])),
                        Node("identity", {}, phone.identity.public),
                        _prekey_node(fresh.id, fresh.key_pair.public),
                        _skey_node(spk.id, spk.key_pair.public, spk.signature),
                    ],
                )
            )
        self.stats.retry_receipts += 1
        self.deliver(sender, Node("receipt", attrs, content))

    def _phone_resend(self, phone: Phone, requester: JID, receipt: Node) -> None:
        """A device could not decrypt what the phone sent: re-encrypt it for that device."""
        msg_id = receipt.attr("id") or ""
        sent = phone.sent.get(msg_id)
        retry = receipt.child("retry")
        count = int(retry.attr("count") or 1) if retry is not None else 1
        if sent is None or count > MAX_RETRIES:
            log.info("phone %s cannot answer the retry of %s", phone.number, msg_id)
            return
        chat_user, raw = sent
        message = e2e_pb2.Message()
        message.ParseFromString(raw)
        address = str(requester.signal_address())
        keys_node = receipt.child("keys")
        if keys_node is not None:
            bundle: keys.PreKeyBundle | None = _retry_bundle(keys_node, receipt)
        else:  # refetch the device's prekeys and start over (Baileys `assertSessions` force)
            bundle = self.take_bundle(requester)
            self._check_low(self.resolve(requester))
        if bundle is None:
            return
        signal_store.build_session(phone.store, address, bundle, phone.identity, self._rng)
        self._phone_deliver(phone, [requester], message, msg_id, chat_user, count)

    # ------------------------------------------------------------------ phone actions

    def phone_send(self, number: str, to: str, text: str) -> str:
        """The phone sends an E2E text to `to` (and copies to its own companions)."""
        phone = self.phone(number)
        target_user = "".join(ch for ch in to.split("@")[0].split(":")[0] if ch.isdigit())
        if target_user not in self.phones:
            raise ControlError(404, "no such recipient")
        message = e2e_pb2.Message()
        message.conversation = text
        msg_id = generate_message_id(self._now, self._rng, phone.number)
        targets = [d.jid for d in self.user_devices(target_user)]
        if target_user != phone.number:
            targets += [d.jid for d in self.user_devices(phone.number) if d.jid.device != 0]
        phone.remember_sent(msg_id, target_user, message.SerializeToString())
        self._phone_deliver(phone, targets, message, msg_id, target_user)
        self.stats.messages_relayed += 1
        return msg_id

    def _phone_deliver(
        self,
        phone: Phone,
        targets: list[JID],
        message: e2e_pb2.Message,
        msg_id: str,
        target_user: str,
        retry_count: int = 0,
    ) -> None:
        """Encrypt `message` for each target device (building missing sessions) and deliver."""
        chat = JID(target_user, DEFAULT_USER_SERVER)
        peer_plain = encode_message(message, self._rng)
        own_plain = encode_message(wrap_for_own_devices(message, str(chat)), self._rng)
        plaintexts: dict[str, bytes] = {}
        by_address: dict[str, JID] = {}
        for t in targets:
            address = str(t.signal_address())
            if not signal_store.has_session(phone.store, address):
                bundle = self.take_bundle(t)
                self._check_low(t)
                if bundle is None:
                    continue
                signal_store.build_session(phone.store, address, bundle, phone.identity, self._rng)
            own = t.user == phone.number and target_user != phone.number
            plaintexts[address] = own_plain if own else peer_plain
            by_address[address] = t
        encrypted = signal_store.encrypt_many(phone.store, plaintexts, phone.identity)
        for address, enc in encrypted.items():
            t = by_address[address]
            attrs: dict[str, str | JID] = {
                "from": phone.jid,
                "id": msg_id,
                "t": self._t(),
                "type": "text",
            }
            if t.user == phone.number and target_user != phone.number:
                attrs["recipient"] = chat
            else:
                attrs["notify"] = phone.name
            enc_type = "pkmsg" if enc.type is MessageType.PKMSG else "msg"
            enc_attrs = {"v": "2", "type": enc_type}
            if retry_count:
                enc_attrs["count"] = str(retry_count)
            self.deliver(t, Node("message", attrs, [Node("enc", enc_attrs, enc.body)]))

    def phone_messages(self, number: str) -> list[Received]:
        return list(self.phone(number).received)

    # ------------------------------------------------------------------ stats

    def stats_json(self) -> dict[str, object]:
        s = self.stats
        return {
            "connections": s.connections,
            "handshakes": s.handshakes,
            "logins": s.logins,
            "registrations": s.registrations,
            "pairings": s.pairings,
            "messages_relayed": s.messages_relayed,
            "receipts_relayed": s.receipts_relayed,
            "offline_delivered": s.offline_delivered,
            "bad_stanzas": s.bad_stanzas,
            "conflicts": s.conflicts,
            "retry_receipts": s.retry_receipts,
            "corrupted": s.corrupted,
            "undecryptable": s.undecryptable,
            "max_concurrent_logins_per_device": s.max_concurrent_logins_per_device,
            "online_devices": sum(1 for peers in self.online.values() if peers),
            "delivery_counts": dict(s.delivery_counts),
        }


def _children(node: Node | None, tag: str) -> list[Node]:
    return [] if node is None else list(node.children_by_tag(tag))


def _bytes(node: Node | None) -> bytes:
    if node is None or not isinstance(node.content, bytes):
        raise DecodeError("expected binary content")
    return node.content


def _int(node: Node | None) -> int:
    return int.from_bytes(_bytes(node))


def _spoil(enc_type: str, body: bytes) -> bytes:
    """`body` with its Signal MAC broken (the last byte of the WhisperMessage, SPEC §10.6/10.7):
    it still parses, and decryption fails as a bad MAC would on a real network."""
    if not body:
        return body
    if enc_type == "pkmsg":
        outer = signal_pb2.PreKeyWhisperMessage()
        try:
            outer.ParseFromString(body[1:])
        except ProtobufDecodeError:
            return body[:-1] + bytes([body[-1] ^ 0xFF])
        if outer.message:
            outer.message = outer.message[:-1] + bytes([outer.message[-1] ^ 0xFF])
            return body[:1] + outer.SerializeToString()
    return body[:-1] + bytes([body[-1] ^ 0xFF])


def _prekey_node(key_id: int, public: bytes) -> Node:
    return Node("key", {}, [Node("id", {}, key_id.to_bytes(3, "big")), Node("value", {}, public)])


def _skey_node(key_id: int, public: bytes, signature: bytes) -> Node:
    return Node(
        "skey",
        {},
        [
            Node("id", {}, key_id.to_bytes(3, "big")),
            Node("value", {}, public),
            Node("signature", {}, signature),
        ],
    )


def _retry_bundle(keys_node: Node, receipt: Node) -> keys.PreKeyBundle:
    """The bundle a retry receipt carries (SPEC §15.4: `<registration>` beside `<keys>`)."""
    skey = keys_node.child("skey")
    key = keys_node.child("key")
    if skey is None:
        raise DecodeError("retry keys without skey")
    return keys.PreKeyBundle(
        registration_id=_int(receipt.child("registration")),
        identity_key=_bytes(keys_node.child("identity")),
        signed_prekey_id=_int(skey.child("id")),
        signed_prekey=_bytes(skey.child("value")),
        signed_prekey_signature=_bytes(skey.child("signature")),
        prekey_id=None if key is None else _int(key.child("id")),
        prekey=None if key is None else _bytes(key.child("value")),
    )
