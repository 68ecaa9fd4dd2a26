"""A scripted primary phone: an account's device 0 with its own identity and Signal state.

The phone's identity key is both its Signal identity and the ADV account signature key
(SPEC §8.4 "simulator (phone side)"). It links companions (QR or code), encrypts and decrypts
1:1 messages with protocol.signal_store over a `MemoryKeyStore`, and remembers what it
received for the control API.

Must not import: asyncio, websockets, protocol.aio.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from protocol import signal_store
from protocol.core import curve
from protocol.core.binary import Node
from protocol.core.errors import DecodeError, WhatsAppError
from protocol.core.inject import Clock, Rng
from protocol.core.jid import DEFAULT_USER_SERVER, HIDDEN_USER_SERVER, JID
from protocol.core.message import Text, decode_message, extract_content, unwrap_device_sent
from protocol.core.signal import keys
from protocol.store import MemoryKeyStore

log = logging.getLogger(__name__)

PHONE_PREKEYS = 100  # [inferred] a phone keeps plenty of one-time prekeys on the server
SENT_LIMIT = 256  # messages a phone can still re-encrypt on a retry receipt (SPEC §15.4)
PLATFORM = "android"  # SPEC §8.4 `<platform name=…>`


@dataclass(slots=True)
class Received:
    id: str
    sender: str
    text: str | None
    timestamp: int


@dataclass(slots=True)
class Phone:
    """One simulated account's primary device."""

    number: str
    name: str
    lid_user: str
    identity: keys.LocalIdentity = field(repr=False)
    store: MemoryKeyStore = field(repr=False)
    received: list[Received] = field(default_factory=list)
    received_ids: set[str] = field(default_factory=set, repr=False)
    # Sent messages by id (chat user, plaintext) for retry receipts, oldest first, bounded.
    sent: dict[str, tuple[str, bytes]] = field(default_factory=dict, repr=False)
    retry_counts: dict[str, int] = field(default_factory=dict, repr=False)
    undecryptable: list[str] = field(default_factory=list)
    receipts: list[dict[str, object]] = field(default_factory=list)
    next_device: int = 1
    next_key_index: int = 1
    raw_id: int = 0

    @property
    def jid(self) -> JID:
        return JID(self.number, DEFAULT_USER_SERVER)

    @property
    def lid(self) -> JID:
        return JID(self.lid_user, HIDDEN_USER_SERVER)

    def remember_sent(self, msg_id: str, chat_user: str, message: bytes) -> None:
        self.sent.pop(msg_id, None)
        self.sent[msg_id] = (chat_user, message)
        while len(self.sent) > SENT_LIMIT:
            del self.sent[next(iter(self.sent))]

    def bundle_keys(self, rng: Rng) -> tuple[keys.SignedPreKey, list[keys.PreKey]]:
        spk = signal_store.signed_prekey(self.store, self.identity, rng)
        prekeys = signal_store.prekeys_for_upload(self.store, PHONE_PREKEYS, rng)
        self.store.mark_prekeys_uploaded([p.id for p in prekeys])
        return spk, prekeys

    def decrypt(self, node: Node, rng: Rng, now: Clock) -> Received | None:
        """Decrypt a delivered `<message>` (SPEC §15.1); None if nothing could be read."""
        sender = node.attrs.get("from")
        if not isinstance(sender, JID):
            return None
        text: str | None = None
        ok = False
        for enc in node.children_by_tag("enc"):
            enc_type = enc.attr("type") or ""
            if enc_type not in ("pkmsg", "msg") or not isinstance(enc.content, bytes):
                continue
            try:
                inbound = signal_store.decrypt(
                    self.store,
                    str(sender.signal_address()),
                    enc_type,
                    enc.content,
                    self.identity,
                    rng,
                )
                content = extract_content(
                    unwrap_device_sent(decode_message(inbound.plaintext)).message
                )
            except (WhatsAppError, DecodeError) as exc:
                log.info("phone %s could not read %s: %s", self.number, node.attr("id"), exc.code)
                continue
            ok = True
            if isinstance(content, Text):
                text = content.text
        if not ok:
            return None
        got = Received(
            id=node.attr("id") or "",
            sender=str(sender),
            text=text,
            timestamp=int(node.attr("t") or now()),
        )
        # A resent id (a sender's retry after a crash) is the same message: a phone shows it
        # once and acknowledges it again [inferred from clients keying messages by id].
        if got.id not in self.received_ids:
            self.received_ids.add(got.id)
            self.received.append(got)
        return got


def new_phone(number: str, name: str, lid_user: str, rng: Rng) -> Phone:
    identity = keys.LocalIdentity(
        key_pair=curve.generate_keypair(rng),
        registration_id=keys.generate_registration_id(rng),
    )
    return Phone(
        number=number,
        name=name,
        lid_user=lid_user,
        identity=identity,
        store=MemoryKeyStore(),
        raw_id=int.from_bytes(rng(4)) & 0x7FFFFFFF,
    )
