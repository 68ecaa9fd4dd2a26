"""Typed events a client `Connection` emits (and the asyncio `Client` hands to applications).

Values only: frozen slotted dataclasses and enums, no key material. Must not import anything
but protocol.core values.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from protocol.core.binary import Node
from protocol.core.jid import JID
from protocol.core.message import Content


class DisconnectReason(enum.StrEnum):
    """Why a connection ended (SPEC §7.6; names follow Baileys' `DisconnectReason`)."""

    RESTART_REQUIRED = "restart_required"  # <stream:error code="515"/> after pairing
    CONNECTION_CLOSED = "connection_closed"  # xmlstreamend or the socket closed
    CONNECTION_LOST = "connection_lost"  # keepalive timed out (decided by the aio client)
    CONNECTION_REPLACED = "connection_replaced"  # <conflict type="replaced"/>
    LOGGED_OUT = "logged_out"  # 401 / device_removed: terminal
    QR_TIMEOUT = "qr_timeout"  # every pair-device ref expired unscanned
    HANDSHAKE_FAILED = "handshake_failed"
    LOGIN_FAILED = "login_failed"  # <failure reason=…> other than the logged-out ones
    TEMPORARY_BAN = "temporary_ban"  # <failure reason="402">
    STREAM_ERROR = "stream_error"  # any other <stream:error>
    PROTOCOL_ERROR = "protocol_error"  # undecryptable transport or frame error


class Status(enum.StrEnum):
    """A sent message's state (SPEC §13.6, §13.7 `getStatusFromReceiptType`)."""

    SERVER_ACK = "server_ack"
    DELIVERED = "delivered"
    READ = "read"
    PLAYED = "played"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Qr:
    """A QR string to show until `expires_at` (unix seconds); the next one follows (§8.2)."""

    code: str = field(repr=False)
    expires_at: float
    index: int


@dataclass(frozen=True, slots=True)
class PairingCode:
    """The 8-character code to type on the phone (SPEC §9.1), shown as XXXX-XXXX."""

    code: str


@dataclass(frozen=True, slots=True)
class Paired:
    """The phone accepted this companion; a 515 restart follows (SPEC §8.4, §8.5)."""

    jid: JID
    lid: JID | None
    platform: str | None


@dataclass(frozen=True, slots=True)
class Connected:
    """Logged in (`<success>`, SPEC §7.5)."""

    jid: JID
    lid: JID | None


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection ended; `will_reconnect` says whether a client should connect again."""

    reason: DisconnectReason
    will_reconnect: bool
    code: int | None = None


@dataclass(frozen=True, slots=True)
class LoggedOut:
    """The device was removed or its login refused for good: delete credentials, stop."""

    reason: DisconnectReason
    code: int | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """A decrypted incoming message. Confirm it (`Connection.confirm`) once stored."""

    id: str
    chat: JID
    sender: JID  # the sending device
    from_me: bool  # sent by one of our own other devices
    timestamp: int
    content: Content
    push_name: str | None = None
    offline: bool = False


@dataclass(frozen=True, slots=True)
class Receipt:
    """A receipt from a peer device for messages we sent (SPEC §15.2)."""

    ids: tuple[str, ...]
    sender: JID
    type: str | None  # None = delivered; "read", "played", "sender", "retry", …
    timestamp: int


@dataclass(frozen=True, slots=True)
class MessageStatus:
    """A state change of a message we sent."""

    id: str
    status: Status
    error: int | None = None  # the server's error code (e.g. 463, 479), when it gave one
    reason: str | None = None  # a client-side failure: NOT_ON_WHATSAPP


# `MessageStatus.reason` when usync lists no device for the recipient: the number has no account.
NOT_ON_WHATSAPP = "not_on_whatsapp"


@dataclass(frozen=True, slots=True)
class Undecryptable:
    """An incoming message that still did not decrypt after `retries` retry receipts
    (SPEC §15.4): nothing readable arrived, it was NACKed and will not come again."""

    id: str
    chat: JID
    sender: JID  # the sending device
    retries: int


@dataclass(frozen=True, slots=True)
class IqResponse:
    """The answer to an application IQ sent with `Connection.send_iq` (None: timed out)."""

    id: str
    node: Node | None


Event = (
    Qr
    | PairingCode
    | Paired
    | Connected
    | Disconnected
    | LoggedOut
    | Message
    | Receipt
    | MessageStatus
    | Undecryptable
    | IqResponse
)
