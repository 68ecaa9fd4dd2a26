"""Request and response bodies of the HTTP API (pydantic), which are also its OpenAPI schema.

Limits that tasks.accept checks with precise rejection codes (text length, phone format, media
rules) are documented here but not enforced by pydantic, so a caller gets `text_too_long` or
`invalid_phone` rather than a generic validation error.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    model_validator,
)

from tasks.accept import MAX_BULK, MAX_CAPTION, MAX_FILENAME, MAX_TEXT

T = TypeVar("T")
Scope = Literal["read", "send", "admin"]
MediaKind = Literal["image", "video", "audio", "document", "sticker"]


def storable(value: str) -> str:
    """Text Postgres can store: no NUL characters, no lone UTF-16 surrogates (JSON allows both)."""
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return value


def _check_strings(value: Any) -> None:
    if isinstance(value, str):
        storable(value)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key)
            _check_strings(item)


Text = Annotated[str, AfterValidator(storable)]  # for query and form parameters


class Body(BaseModel):
    """A request body: unknown fields are refused, booleans and numbers must be JSON booleans
    and numbers (the schema says so; pydantic would otherwise coerce "1" or 0), and every string
    must be storable text."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _storable_strings(self) -> Body:
        for value in self.__dict__.values():
            if not isinstance(value, BaseModel):  # nested bodies check themselves
                _check_strings(value)
        return self


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null = end")


# --- tenants and keys --------------------------------------------------------------------------
class TenantCreate(Body):
    name: str = Field(min_length=1, max_length=100)


class TenantUpdate(Body):
    name: str | None = Field(default=None, min_length=1, max_length=100)
    disabled: StrictBool | None = Field(
        default=None, description="a disabled tenant's keys stop working; its data stays"
    )


class TenantOut(BaseModel):
    id: uuid.UUID
    name: str
    created_at: datetime
    disabled: bool


class ApiKeyCreate(Body):
    name: str = Field(min_length=1, max_length=100)
    scopes: list[Scope] = Field(default=["read", "send"], min_length=1)
    instance_id: uuid.UUID | None = Field(default=None, description="restrict to one instance")


class ApiKeyOut(BaseModel):
    id: uuid.UUID
    name: str
    prefix: str = Field(description="the key's first characters, to tell keys apart")
    scopes: list[str]
    instance_id: uuid.UUID | None
    created_at: datetime
    last_used_at: datetime | None = Field(description="kept to the minute")
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="the clear key; shown once, stored only as a hash")


# --- instances -----------------------------------------------------------------------------
class Pacing(Body):
    """Per-instance overrides of the WAFLEET_PACING_* settings (unset fields keep them)."""

    min_gap: StrictFloat | None = Field(default=None, ge=0, le=86400)
    max_gap: StrictFloat | None = Field(default=None, ge=0, le=86400)
    gap_jitter: StrictFloat | None = Field(default=None, ge=0, le=86400)
    rate: StrictFloat | None = Field(default=None, gt=0, le=1000)
    burst: StrictInt | None = Field(default=None, ge=1, le=100000)


class InstanceCreate(Body):
    name: str = Field(min_length=1, max_length=100)
    phone_number: str | None = Field(
        default=None, max_length=32, description="owner number, E.164 with country code"
    )


class InstanceUpdate(Body):
    name: str | None = Field(default=None, min_length=1, max_length=100)
    pacing: Pacing | None = Field(default=None, description="replaces the overrides; {} clears")
    outbound_paused: StrictBool | None = Field(default=None, description="hold outbound sending")
    pause_reason: str | None = Field(default=None, max_length=200)


class InstanceOut(BaseModel):
    id: uuid.UUID
    name: str
    phone_number: str | None
    status: str
    outbound_paused: bool
    pause_reason: str | None
    pacing: dict[str, Any] | None
    messages_sent: int
    messages_received: int
    last_connected_at: datetime | None
    created_at: datetime
    updated_at: datetime


# --- sessions (connect, QR, pairing code, status, diagnose) -------------------------------------
InstanceState = Literal[
    "created",
    "connecting",
    "qr_pending",
    "code_pending",
    "connected",
    "reconnecting",
    "disconnected",
    "logged_out",
    "banned",
]


class ConnectIn(Body):
    method: Literal["qr", "code"] = Field(
        default="qr", description="link by QR code, or by a pairing code typed on the phone"
    )
    phone: str | None = Field(
        default=None,
        max_length=32,
        description="E.164 number to link (method code; default: the instance's own number)",
    )


class InstanceStatusOut(BaseModel):
    id: uuid.UUID
    state: InstanceState
    connected: bool
    owner: str | None = Field(description="the session worker holding the instance, if any")
    phone_number: str | None
    last_connected_at: datetime | None
    messages_sent: int
    messages_received: int
    outbound_paused: bool
    pause_reason: str | None
    queued: int = Field(description="outbox rows waiting to be sent")
    desired_state: Literal["auto", "connect", "disconnect", "logout"] = Field(
        description="what the last command asked the owner to make true"
    )


class QrOut(BaseModel):
    qr: str = Field(description="the QR string (render it, or use qr.png / qr.svg)")
    expires_at: datetime
    index: int = Field(description="0 for the first QR of a linking round, then 1, 2, ...")


class PairingCodeOut(BaseModel):
    code: str = Field(description="type it on the phone: Linked devices → Link with phone number")
    expires_at: datetime | None


class PhoneCheck(BaseModel):
    input: str
    valid: bool
    e164: str | None
    on_whatsapp: bool | None = Field(description="null when it could not be checked")
    jid: str | None


class RecentError(BaseModel):
    at: datetime
    code: str
    message: str
    outbox_id: int | None = None


class Diagnosis(BaseModel):
    instance: InstanceStatusOut
    phone: PhoneCheck | None = Field(description="null unless ?phone= was given")
    recent_errors: list[RecentError]
    advice: list[str]


# --- sending -------------------------------------------------------------------------------
class Media(Body):
    kind: MediaKind
    mimetype: str = Field(max_length=255, description="e.g. image/jpeg")
    url: str | None = Field(default=None, max_length=2000, description="http(s) URL, or")
    data: str | None = Field(default=None, description="base64 bytes (≤ 5 MB)")
    caption: str | None = Field(default=None, json_schema_extra={"maxLength": MAX_CAPTION})
    filename: str | None = Field(default=None, json_schema_extra={"maxLength": MAX_FILENAME})


class SendCommon(Body):
    to: str = Field(description="recipient, E.164 digits; '+', spaces and dashes allowed")
    idempotency_key: str | None = Field(
        default=None, description="repeats return the first result (≤ 200 characters)"
    )
    expires_in: StrictFloat | None = Field(
        default=None, description="give up after so many seconds"
    )


class SendText(SendCommon):
    text: str = Field(json_schema_extra={"maxLength": MAX_TEXT})


class SendMedia(SendCommon):
    media: Media


class BulkMedia(Media):
    """As Media; limits beyond the shape are checked per item and reported in `results`."""

    caption: str | None = None
    filename: str | None = None


class BulkItem(SendCommon):
    """One message of a bulk send. Shape errors refuse the whole request (400); content errors
    (number, text length, media rules) are reported for the item in `results`, and the other
    items are still accepted."""

    text: str | None = None
    media: BulkMedia | None = None


class SendBulk(Body):
    items: list[BulkItem] = Field(min_length=1, max_length=MAX_BULK)
    batch_id: str | None = Field(default=None, max_length=64)


class SendResult(BaseModel):
    outbox_id: int
    wa_message_id: str
    status: str
    created: bool = Field(description="false when an idempotency key repeated a request")
    idempotency_key: str


class BulkItemError(BaseModel):
    error: str = Field(description="the rejection code, e.g. invalid_phone")
    message: str


class BulkResult(BaseModel):
    batch_id: str
    results: list[SendResult | BulkItemError]


class OutboxOut(BaseModel):
    id: int
    instance_id: uuid.UUID
    idempotency_key: str
    wa_message_id: str
    chat_jid: str
    kind: str
    status: str
    attempts: int
    last_error_code: str | None
    last_error_text: str | None
    batch_id: str | None
    expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    delivered_at: datetime | None
    read_at: datetime | None


# --- stored records ------------------------------------------------------------------------
class MediaInfo(BaseModel):
    """What is safe to show of a message's media (never its keys or hashes)."""

    mimetype: str | None = None
    caption: str | None = None
    filename: str | None = None
    size: int | None = None


class MessageOut(BaseModel):
    id: int
    instance_id: uuid.UUID
    direction: str
    wa_message_id: str
    chat_jid: str
    sender_jid: str | None
    contact_id: int | None
    type: str
    body: str | None
    media: MediaInfo | None
    status: str
    error_code: str | None
    wa_timestamp: datetime | None
    created_at: datetime


class ContactOut(BaseModel):
    id: int
    phone_number: str | None
    lid: str | None
    name: str | None
    created_at: datetime
    updated_at: datetime


class NoteOut(BaseModel):
    id: int
    instance_id: uuid.UUID
    wa_message_id: str
    chat_jid: str
    body: str | None
    wa_timestamp: datetime | None
    created_at: datetime


class BookingOut(BaseModel):
    id: int
    contact_id: int
    instance_id: uuid.UUID | None
    status: str
    source: str
    first_message_id: int | None
    message_count: int
    created_at: datetime
    updated_at: datetime


# --- webhooks ------------------------------------------------------------------------------
class WebhookCreate(Body):
    url: str = Field(min_length=1, max_length=2000, description="http(s) URL")
    event_types: list[str] | None = Field(
        default=None, max_length=50, description="only these event types; null = all"
    )
    instance_ids: list[uuid.UUID] | None = Field(
        default=None, max_length=100, description="only these instances' events; null = all"
    )
    enabled: StrictBool = True


class WebhookUpdate(Body):
    url: str | None = Field(default=None, min_length=1, max_length=2000)
    event_types: list[str] | None = Field(default=None, max_length=50)
    instance_ids: list[uuid.UUID] | None = Field(default=None, max_length=100)
    enabled: StrictBool | None = None


class WebhookOut(BaseModel):
    id: uuid.UUID
    url: str
    event_types: list[str] | None
    instance_ids: list[str] | None
    enabled: bool
    rotating: bool = Field(description="a previous secret still signs deliveries")
    created_at: datetime
    updated_at: datetime


class WebhookSecret(BaseModel):
    secret: str = Field(
        description="hex; the HMAC-SHA256 key is these 32 bytes (bytes.fromhex(secret)). "
        "Shown once."
    )


class WebhookCreated(WebhookOut, WebhookSecret):
    pass


class AttemptOut(BaseModel):
    attempt: int
    started_at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int | None


class DeliveryOut(BaseModel):
    id: int
    endpoint_id: uuid.UUID
    event_id: str
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class DeliveryDetail(DeliveryOut):
    payload: dict[str, Any]
    log: list[AttemptOut]


class TestDelivery(BaseModel):
    delivery_id: int
    event_id: str


# --- operations ----------------------------------------------------------------------------
class Health(BaseModel):
    status: Literal["ok"]


class Check(BaseModel):
    ok: bool
    error: str | None = None


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, Check]


class Stats(BaseModel):
    instances: dict[str, int] = Field(description="live instances by status")
    outbox: dict[str, int] = Field(description="outbound messages by status")
    messages: dict[str, int] = Field(description="stored messages by direction")
    contacts: int
    notes: int
    bookings: dict[str, int]
    webhook_deliveries: dict[str, int]
