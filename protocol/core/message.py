"""The plaintext layer inside Signal: padding, the `Message` protobuf, message ids.

Owns (SPEC §10.9, §13.1, §13.2, §15.1):
* `pad` / `unpad` — WhatsApp's random 1..16 byte padding around the serialized `Message`.
* `encode_message` (serialize + pad, for sending) and `decode_message` (unpad + parse, for
  receiving; protobuf garbage becomes `DecodeError`).
* `wrap_for_own_devices` / `unwrap_device_sent` — the `deviceSentMessage` envelope used for the
  sender's own other devices.
* `media_message`, `enc_mediatype`, `stanza_type` — building an outgoing media `Message` and the
  stanza attributes that depend on the content (§11.6, §13.5).
* `extract_content` — the user-visible part of a `Message` as typed values (`Text`, `Media`,
  `Reaction`, `Protocol`, `Unsupported`) that the client turns into events.
* `generate_message_id` — `generateMessageIDV2` ids, time and randomness injected.

Takes and returns bytes and protobuf values; never binary nodes, Signal state or I/O. Must not
import asyncio, time, os, random or anything outside `protocol.core` (SPEC §5 of DESIGN).
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any, NewType

from google.protobuf.message import DecodeError as ProtobufDecodeError

from protocol.core.errors import DecodeError, MediaError
from protocol.core.inject import Clock, Rng
from protocol.core.media import MEDIA_TYPES, EncryptedMedia, MediaType
from protocol.core.proto import e2e_pb2

MessageID = NewType("MessageID", str)

PAD_MASK = 0x0F  # SPEC §10.9: Baileys `writeRandomPadMax16`, n = (random & 0x0F) + 1
MESSAGE_ID_PREFIX = "3EB0"  # SPEC §13.1: `generateMessageIDV2`, whatsmeow `WebMessageIDPrefix`
MESSAGE_ID_HASH_BYTES = 9  # SPEC §13.1: 18 upper-hex characters of SHA-256
MESSAGE_ID_USER_FIELD = 20  # Baileys generics.js: fixed 8 + 20 + 16 byte buffer, user at offset 8
MESSAGE_ID_RANDOM_BYTES = 16  # SPEC §13.1
MESSAGE_ID_USER_SUFFIX = b"@c.us"  # SPEC §13.1


# --- padding (SPEC §10.9) ---------------------------------------------------------------------


def pad(data: bytes, rng: Rng) -> bytes:
    """Append n ∈ 1..16 bytes of value n, n drawn from one rng byte (Baileys' rule)."""
    n = (rng(1)[0] & PAD_MASK) + 1
    return data + bytes([n]) * n


def unpad(data: bytes) -> bytes:
    """Drop the padding. An empty input, a last byte 0 or one longer than the data is an error.

    Like Baileys' `unpadRandomMax16` only the last byte is read; the pad bytes' values are not
    checked (whatsmeow's 1..15 padding and Baileys' 1..16 both pass).
    """
    if not data:
        raise DecodeError("padded plaintext is empty", length=0)
    n = data[-1]
    if n == 0 or n > len(data):
        raise DecodeError("bad plaintext padding", length=len(data), pad=n)
    return data[:-n]


# --- Message protobuf (SPEC §13.2, §15.1) -----------------------------------------------------


def serialize_message(message: e2e_pb2.Message) -> bytes:
    """The protobuf bytes of `message` (field-number order, as protobufjs writes them)."""
    return message.SerializeToString()


def parse_message(data: bytes) -> e2e_pb2.Message:
    """Parse protobuf bytes as `Message`; garbage raises DecodeError."""
    message = e2e_pb2.Message()
    try:
        message.ParseFromString(data)
    except (ProtobufDecodeError, RuntimeError, ValueError) as exc:
        # RuntimeError: recursion limit of nested messages; ValueError: invalid UTF-8 in a
        # string field (upb validates on parse for some field shapes).
        raise DecodeError("plaintext is not a Message protobuf", length=len(data)) from exc
    return message


def encode_message(message: e2e_pb2.Message, rng: Rng) -> bytes:
    """Serialize and pad: the plaintext handed to Signal encryption (SPEC §13.2)."""
    return pad(serialize_message(message), rng)


def decode_message(padded: bytes) -> e2e_pb2.Message:
    """Unpad and parse a decrypted Signal payload (`enc v="2"`, SPEC §15.1)."""
    return parse_message(unpad(padded))


def wrap_for_own_devices(message: e2e_pb2.Message, destination_jid: str) -> e2e_pb2.Message:
    """`Message{deviceSentMessage{destinationJid, message}, messageContextInfo}` (SPEC §13.2).

    The copy sent to the sender's own other devices in 1:1 chats (Baileys `meMsg`); the
    original's `messageContextInfo` is repeated on the outside.
    """
    wrapped = e2e_pb2.Message()
    wrapped.deviceSentMessage.destinationJid = destination_jid
    wrapped.deviceSentMessage.message.CopyFrom(message)
    if message.HasField("messageContextInfo"):
        wrapped.messageContextInfo.CopyFrom(message.messageContextInfo)
    return wrapped


@dataclass(frozen=True, slots=True)
class Unwrapped:
    """A received `Message` with any `deviceSentMessage` envelope removed (SPEC §15.1)."""

    message: e2e_pb2.Message
    destination_jid: str | None  # set iff the message came wrapped from one of our own devices
    sender_key_distribution: SenderKeyDistribution | None


@dataclass(frozen=True, slots=True)
class SenderKeyDistribution:
    """The group sender key carried next to the content (SPEC §10.8, §15.1)."""

    group_id: str
    payload: bytes = field(repr=False)  # serialized SenderKeyDistributionMessage (signal layer)


def unwrap_device_sent(message: e2e_pb2.Message) -> Unwrapped:
    """Use `deviceSentMessage.message` when present, then lift out its sender key distribution.

    As Baileys' `decryptMessageNode`: the inner message replaces the outer one entirely (the
    sender repeats `messageContextInfo` inside), and the SKDM is read after unwrapping.
    """
    destination = None
    if message.HasField("deviceSentMessage"):
        destination = _str(message.deviceSentMessage.destinationJid)
        message = message.deviceSentMessage.message
    skdm = None
    if message.HasField("senderKeyDistributionMessage"):
        s = message.senderKeyDistributionMessage
        skdm = SenderKeyDistribution(
            group_id=_str(s.groupId), payload=s.axolotlSenderKeyDistributionMessage
        )
    return Unwrapped(message=message, destination_jid=destination, sender_key_distribution=skdm)


# --- user-visible content ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageRef:
    """A `MessageKey`: which message a reaction, revoke or edit points at."""

    remote_jid: str
    from_me: bool
    id: str
    participant: str | None


@dataclass(frozen=True, slots=True)
class Quote:
    """The `contextInfo` reply reference of a message, if any."""

    stanza_id: str
    participant: str | None


@dataclass(frozen=True, slots=True)
class Text:
    text: str
    quote: Quote | None = None


@dataclass(frozen=True, slots=True)
class Media:
    """A media message's download and display metadata (SPEC §11.6)."""

    media_type: MediaType
    mimetype: str
    url: str
    direct_path: str
    media_key: bytes = field(repr=False)
    file_sha256: bytes = field(repr=False)
    file_enc_sha256: bytes = field(repr=False)
    file_length: int
    media_key_timestamp: int
    caption: str | None = None
    file_name: str | None = None
    width: int | None = None
    height: int | None = None
    seconds: int | None = None
    quote: Quote | None = None


@dataclass(frozen=True, slots=True)
class Reaction:
    """An emoji reaction; an empty `text` removes the reaction."""

    target: MessageRef
    text: str
    sender_timestamp_ms: int


class ProtocolType(enum.IntEnum):
    """`ProtocolMessage.Type` values of our schema (e2e.proto)."""

    REVOKE = 0
    EPHEMERAL_SETTING = 3
    EPHEMERAL_SYNC_RESPONSE = 4
    HISTORY_SYNC_NOTIFICATION = 5
    APP_STATE_SYNC_KEY_SHARE = 6
    APP_STATE_SYNC_KEY_REQUEST = 7
    MSG_FANOUT_BACKFILL_REQUEST = 8
    INITIAL_SECURITY_NOTIFICATION_SETTING_SYNC = 9
    APP_STATE_FATAL_EXCEPTION_NOTIFICATION = 10
    SHARE_PHONE_NUMBER = 11
    MESSAGE_EDIT = 14
    PEER_DATA_OPERATION_REQUEST_MESSAGE = 16
    PEER_DATA_OPERATION_REQUEST_RESPONSE_MESSAGE = 17


@dataclass(frozen=True, slots=True)
class Protocol:
    """A protocol message (revoke, edit, ephemeral setting, ...). `type` is None if unknown."""

    type: ProtocolType | None
    target: MessageRef | None
    edited: Content | None = None
    ephemeral_expiration: int | None = None


@dataclass(frozen=True, slots=True)
class Unsupported:
    """Nothing we interpret; `fields` names the `Message` fields that were set."""

    fields: tuple[str, ...]


Content = Text | Media | Reaction | Protocol | Unsupported

# Media fields of `Message` and the kind each carries (SPEC §6.5, §13.5 `getMediaType`).
_MEDIA_FIELDS = (
    "imageMessage",
    "videoMessage",
    "audioMessage",
    "documentMessage",
    "stickerMessage",
)
# Containers unwrapped before reading content (whatsmeow `getTypeFromMessage` does the same).
_FUTURE_PROOF_FIELDS = ("ephemeralMessage", "viewOnceMessage")
_MAX_CONTAINER_DEPTH = 4


def normalize(message: e2e_pb2.Message) -> e2e_pb2.Message:
    """The content inside ephemeral / view-once containers (Baileys `normalizeMessageContent`)."""
    for _ in range(_MAX_CONTAINER_DEPTH):
        for name in _FUTURE_PROOF_FIELDS:
            if message.HasField(name):  # type: ignore[arg-type]
                message = getattr(message, name).message
                break
        else:
            break
    return message


def extract_content(message: e2e_pb2.Message) -> Content:
    """The user-visible content of an (unwrapped) `Message` as a typed value."""
    message = normalize(message)
    if message.HasField("conversation"):
        return Text(text=_str(message.conversation))
    if message.HasField("extendedTextMessage"):
        ext = message.extendedTextMessage
        quote = _quote(ext.contextInfo) if ext.HasField("contextInfo") else None
        return Text(text=_str(ext.text), quote=quote)
    for name in _MEDIA_FIELDS:
        if message.HasField(name):  # type: ignore[arg-type]
            return _media(message)
    if message.HasField("reactionMessage"):
        r = message.reactionMessage
        return Reaction(
            target=_ref(r.key), text=_str(r.text), sender_timestamp_ms=r.senderTimestampMs
        )
    if message.HasField("protocolMessage"):
        p = message.protocolMessage
        try:
            ptype: ProtocolType | None = ProtocolType(p.type) if p.HasField("type") else None
        except ValueError:
            ptype = None
        return Protocol(
            type=ptype,
            target=_ref(p.key) if p.HasField("key") else None,
            edited=extract_content(p.editedMessage) if p.HasField("editedMessage") else None,
            ephemeral_expiration=(
                p.ephemeralExpiration if p.HasField("ephemeralExpiration") else None
            ),
        )
    return Unsupported(fields=tuple(fd.name for fd, _ in message.ListFields()))


def media_type_of(message: e2e_pb2.Message) -> MediaType | None:
    """The media kind as Baileys' `getMediaType` names it for the five media fields (§13.5)."""
    if message.HasField("imageMessage"):
        return MediaType.IMAGE
    if message.HasField("videoMessage"):
        return MediaType.GIF if message.videoMessage.gifPlayback else MediaType.VIDEO
    if message.HasField("audioMessage"):
        return MediaType.PTT if message.audioMessage.ptt else MediaType.AUDIO
    if message.HasField("documentMessage"):
        return MediaType.DOCUMENT
    if message.HasField("stickerMessage"):
        return MediaType.STICKER
    return None


def enc_mediatype(message: e2e_pb2.Message) -> str | None:
    """The `mediatype` attribute of `enc` (SPEC §13.5, Baileys `getMediaType`), our schema's part.

    Baileys' order: image, video/gif, audio/ptt, contact (vcard), document, sticker.
    """
    message = normalize(message)
    kind = media_type_of(message)
    if kind in (MediaType.IMAGE, MediaType.VIDEO, MediaType.GIF, MediaType.AUDIO, MediaType.PTT):
        return MEDIA_TYPES[kind].mediatype_attr
    if message.HasField("contactMessage"):
        return "vcard"
    return None if kind is None else MEDIA_TYPES[kind].mediatype_attr


class StanzaType(enum.StrEnum):
    """The `type` attribute of an outgoing `message` stanza (SPEC §13.5, `getMessageType`)."""

    TEXT = "text"
    MEDIA = "media"
    REACTION = "reaction"
    POLL = "poll"
    EVENT = "event"


def stanza_type(message: e2e_pb2.Message) -> StanzaType:
    """`reaction`, `media` (any `enc_mediatype`), else `text` (polls, events: not in our schema)."""
    if normalize(message).HasField("reactionMessage"):
        return StanzaType.REACTION
    if enc_mediatype(message) is not None:
        return StanzaType.MEDIA
    return StanzaType.TEXT


def media_message(
    kind: MediaType,
    upload: EncryptedMedia,
    *,
    mimetype: str,
    url: str,
    direct_path: str,
    media_key_timestamp: int,
    caption: str | None = None,
    file_name: str | None = None,
    seconds: int | None = None,
    width: int | None = None,
    height: int | None = None,
) -> e2e_pb2.Message:
    """A `Message` carrying an uploaded file (SPEC §11.6); the inverse of `extract_content`."""
    msg = e2e_pb2.Message()
    common = {
        "mimetype": mimetype,
        "url": url,
        "directPath": direct_path,
        "mediaKey": upload.media_key,
        "fileSha256": upload.file_sha256,
        "fileEncSha256": upload.file_enc_sha256,
        "fileLength": upload.file_length,
        "mediaKeyTimestamp": media_key_timestamp,
    }
    optional = {
        "caption": caption,
        "fileName": file_name,
        "seconds": seconds,
        "width": width,
        "height": height,
    }
    if kind is MediaType.IMAGE:
        sub: Any = msg.imageMessage
    elif kind in (MediaType.VIDEO, MediaType.GIF):
        sub = msg.videoMessage
        if kind is MediaType.GIF:
            sub.gifPlayback = True
    elif kind in (MediaType.AUDIO, MediaType.PTT):
        sub = msg.audioMessage
        if kind is MediaType.PTT:
            sub.ptt = True
    elif kind is MediaType.DOCUMENT:
        sub = msg.documentMessage
    elif kind is MediaType.STICKER:
        sub = msg.stickerMessage
    else:
        raise MediaError("not a message media kind", media_type=kind.value)
    for name, value in common.items():
        setattr(sub, name, value)
    fields = {f.name for f in sub.DESCRIPTOR.fields}
    for name, value in optional.items():
        if value is None:
            continue
        if name not in fields:
            raise MediaError("field not in this media message", media_type=kind.value, field=name)
        setattr(sub, name, value)
    return msg


def _media(message: e2e_pb2.Message) -> Media:
    kind = media_type_of(message)
    assert kind is not None  # only called when one of _MEDIA_FIELDS is set
    field = next(name for name in _MEDIA_FIELDS if message.HasField(name))  # type: ignore[arg-type]
    m: Any = getattr(message, field)
    declared = m.DESCRIPTOR.fields_by_name

    def optional(name: str) -> Any:
        """The field if this media kind declares it and the sender set it (SPEC §6.5)."""
        return getattr(m, name) if name in declared and m.HasField(name) else None

    caption, file_name = optional("caption"), optional("fileName")
    return Media(
        media_type=kind,
        mimetype=_str(m.mimetype),
        url=_str(m.url),
        direct_path=_str(m.directPath),
        media_key=m.mediaKey,
        file_sha256=m.fileSha256,
        file_enc_sha256=m.fileEncSha256,
        file_length=m.fileLength,
        media_key_timestamp=m.mediaKeyTimestamp,
        caption=None if caption is None else _str(caption),
        file_name=None if file_name is None else _str(file_name),
        width=optional("width"),
        height=optional("height"),
        seconds=optional("seconds"),
        quote=_quote(m.contextInfo) if m.HasField("contextInfo") else None,
    )


def _ref(key: e2e_pb2.MessageKey) -> MessageRef:
    return MessageRef(
        remote_jid=_str(key.remoteJid),
        from_me=key.fromMe,
        id=_str(key.id),
        participant=_str(key.participant) if key.HasField("participant") else None,
    )


def _quote(ctx: e2e_pb2.ContextInfo) -> Quote | None:
    if not ctx.HasField("stanzaId"):
        return None
    return Quote(
        stanza_id=_str(ctx.stanzaId),
        participant=_str(ctx.participant) if ctx.HasField("participant") else None,
    )


def _str(value: str | bytes) -> str:
    # upb hands back a proto2 string field with invalid UTF-8 as bytes; decode it the way
    # protobufjs (Baileys) does, with replacement characters.
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


# --- message ids (SPEC §13.1) -----------------------------------------------------------------


def generate_message_id(now: Clock, rng: Rng, own_user: str | None = None) -> MessageID:
    """`"3EB0"` + 18 upper-hex characters of SHA-256 over time, own user and 16 random bytes.

    Layout as Baileys `generateMessageIDV2` builds it: a fixed 44-byte buffer =
    `uint64_be(unix seconds)` ‖ `(user + "@c.us")` zero-filled/cut to 20 bytes ‖ `rng(16)`.
    whatsmeow concatenates without the zero fill; the two agree for 15-digit users and both
    produce ids of the same format, which is all a peer checks. `own_user` is the user part of
    our JID (no device, no server); None or "" leaves the 20 bytes zero.
    """
    seconds = int(now())
    user_field = b""
    if own_user:
        user_field = own_user.encode() + MESSAGE_ID_USER_SUFFIX
    user_field = user_field[:MESSAGE_ID_USER_FIELD].ljust(MESSAGE_ID_USER_FIELD, b"\x00")
    data = seconds.to_bytes(8, "big") + user_field + rng(MESSAGE_ID_RANDOM_BYTES)
    digest = hashlib.sha256(data).digest()[:MESSAGE_ID_HASH_BYTES]
    return MessageID(MESSAGE_ID_PREFIX + digest.hex().upper())
