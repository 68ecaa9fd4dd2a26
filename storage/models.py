"""The schema, as SQLAlchemy 2 typed models. Alembic migrations (storage/migrations) create it;
a test checks that the migrated database and these models agree.

Tables and their invariants (DESIGN §3):
    tenants, api_keys                       keys stored as SHA-256 hashes, never in clear
    instances                               one WhatsApp number of a tenant; soft delete; a live
                                            instance name is unique per tenant and a live owner
                                            number unique across the fleet
    instance_data_keys                      per-instance AES key, wrapped by the master key
    device_credentials, signal_records      encrypted opaque blobs per instance (the key store)
    contacts                                per tenant; phone number and LID each unique when set
    messages                                unique (instance, direction, wa_message_id)
    notes                                   the owner's own messages; unique (instance, wa id)
    bookings                                at most one open `pending` booking per contact
                                            (a partial unique index)
    outbox                                  the truth for outbound (DESIGN §3.3): idempotency key
                                            unique per tenant, WhatsApp id and per-chat sequence
                                            unique per instance
    webhook_endpoints, webhook_deliveries   the webhook outbox; one delivery per endpoint+event
    webhook_attempts                        every HTTP attempt of a delivery (the delivery log)
    instance_leases                         who owns each instance's socket, with a fencing token
                                            that grows on every acquisition (DESIGN §3.1)
    fleet_members                           live session workers and their heartbeats (§3.2)
Leases and membership live here, beside the outbox, so fenced state changes are checked in the
same database where they take effect (storage.leases).
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT primary keys on Postgres; SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=24,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


class InstanceStatus(enum.StrEnum):
    CREATED = "created"
    CONNECTING = "connecting"
    QR_PENDING = "qr_pending"
    CODE_PENDING = "code_pending"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    DISCONNECTED = "disconnected"
    LOGGED_OUT = "logged_out"
    BANNED = "banned"


class LinkMethod(enum.StrEnum):
    QR = "qr"
    CODE = "code"


class DesiredState(enum.StrEnum):
    """What an instance's owner must make true (instance commands, tasks.commands).

    auto        connect if linked (device credentials stored), else hold no socket
    connect     connect; if not linked, link by `link_method` (QR, or a code for `link_phone`)
    disconnect  hold no socket (credentials kept) until the next connect
    logout      remove the companion at the server and destroy the device credentials
    """

    AUTO = "auto"
    CONNECT = "connect"
    DISCONNECT = "disconnect"
    LOGOUT = "logout"


class Direction(enum.StrEnum):
    IN = "in"
    OUT = "out"


class MessageStatus(enum.StrEnum):
    RECEIVED = "received"
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    EXPIRED = "expired"


class BookingStatus(enum.StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"


class OutboxStatus(enum.StrEnum):
    """DESIGN §3.3: queued → sending → sent → delivered → read | failed | expired."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    EXPIRED = "expired"


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON().with_variant(JSONB(), "postgresql"),
        bytes: LargeBinary(),
    }


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[datetime | None]

    __table_args__ = (CheckConstraint("length(name) > 0", name="name_not_empty"),)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))  # shown to humans to tell keys apart
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 hex of the key
    scopes: Mapped[str] = mapped_column(String(100))  # space-separated: read send admin
    instance_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE")
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    __table_args__ = (Index(None, "tenant_id"),)


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    phone_number: Mapped[str | None] = mapped_column(String(15))  # owner, E.164 digits
    status: Mapped[InstanceStatus] = mapped_column(
        _enum(InstanceStatus, "instance_status"), default=InstanceStatus.CREATED
    )
    link_method: Mapped[LinkMethod | None] = mapped_column(_enum(LinkMethod, "link_method"))
    desired_state: Mapped[DesiredState] = mapped_column(
        _enum(DesiredState, "desired_state"), default=DesiredState.AUTO, server_default="auto"
    )
    link_phone: Mapped[str | None] = mapped_column(String(15))  # pairing-code link target
    command_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    wa_jid: Mapped[str | None] = mapped_column(String(64))  # own device JID once linked
    wa_lid: Mapped[str | None] = mapped_column(String(64))
    outbound_paused: Mapped[bool] = mapped_column(Boolean, default=False)
    pause_reason: Mapped[str | None] = mapped_column(String(200))
    pacing: Mapped[dict[str, Any] | None]  # per-instance overrides of the pacing settings
    messages_sent: Mapped[int] = mapped_column(BigInteger, default=0)
    messages_received: Mapped[int] = mapped_column(BigInteger, default=0)
    last_connected_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[datetime | None]

    tenant: Mapped[Tenant] = relationship(lazy="raise")

    __table_args__ = (
        Index(
            "uq_instances_tenant_name_live",
            "tenant_id",
            "name",
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
            sqlite_where=text("deleted_at IS NULL"),
        ),
        Index(
            "uq_instances_phone_live",
            "phone_number",
            unique=True,
            postgresql_where=text("deleted_at IS NULL AND phone_number IS NOT NULL"),
            sqlite_where=text("deleted_at IS NULL AND phone_number IS NOT NULL"),
        ),
        CheckConstraint(
            "phone_number IS NULL OR length(phone_number) BETWEEN 8 AND 15", name="phone_length"
        ),
    )


class InstanceDataKey(Base):
    """The instance's data key, AES-GCM-wrapped by the master key named by `master_key_id`."""

    __tablename__ = "instance_data_keys"

    instance_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True
    )
    master_key_id: Mapped[str] = mapped_column(String(16))
    wrapped_key: Mapped[bytes]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    rotated_at: Mapped[datetime | None]


class DeviceCredentials(Base):
    """The linked device's credentials (noise key, identity, ADV account...), encrypted."""

    __tablename__ = "device_credentials"

    instance_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True
    )
    ciphertext: Mapped[bytes]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class SignalRecord(Base):
    """One encrypted Signal record (session, identity, prekey, sender key...) of an instance."""

    __tablename__ = "signal_records"

    instance_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(24), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    ciphertext: Mapped[bytes]
    uploaded: Mapped[bool | None] = mapped_column(Boolean)  # prekeys: sent to the server yet?
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Contact(Base):
    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    phone_number: Mapped[str | None] = mapped_column(String(15))
    lid: Mapped[str | None] = mapped_column(String(32))  # the user part of `<lid>@lid`
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        UniqueConstraint("tenant_id", "phone_number"),
        UniqueConstraint("tenant_id", "lid"),
        CheckConstraint("phone_number IS NOT NULL OR lid IS NOT NULL", name="phone_or_lid"),
    )


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    instance_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    direction: Mapped[Direction] = mapped_column(_enum(Direction, "direction"))
    wa_message_id: Mapped[str] = mapped_column(String(128))
    chat_jid: Mapped[str] = mapped_column(String(128))
    sender_jid: Mapped[str | None] = mapped_column(String(128))
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id", ondelete="SET NULL"))
    type: Mapped[str] = mapped_column(String(24))
    body: Mapped[str | None] = mapped_column(Text)
    media: Mapped[dict[str, Any] | None]
    status: Mapped[MessageStatus] = mapped_column(_enum(MessageStatus, "message_status"))
    error_code: Mapped[str | None] = mapped_column(String(32))
    wa_timestamp: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        UniqueConstraint("instance_id", "direction", "wa_message_id"),
        Index(None, "tenant_id", "created_at"),
        Index(None, "contact_id"),
    )


class Note(Base):
    """An internal note: a message the instance's owner sent (from the phone or "from me")."""

    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    instance_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    wa_message_id: Mapped[str] = mapped_column(String(128))
    chat_jid: Mapped[str] = mapped_column(String(128))
    body: Mapped[str | None] = mapped_column(Text)
    media: Mapped[dict[str, Any] | None]
    wa_timestamp: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("instance_id", "wa_message_id"),)


class Booking(Base):
    __tablename__ = "bookings"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    instance_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("instances.id", ondelete="SET NULL")
    )
    status: Mapped[BookingStatus] = mapped_column(
        _enum(BookingStatus, "booking_status"), default=BookingStatus.PENDING
    )
    source: Mapped[str] = mapped_column(String(24))
    first_message_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL")
    )
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        # DESIGN §3.8: at most one open pending booking per contact, enforced by the schema.
        Index(
            "uq_bookings_one_pending_per_contact",
            "contact_id",
            unique=True,
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        Index(None, "tenant_id", "status"),
    )


class OutboxMessage(Base):
    """One outbound message: the truth for delivery, retries and order (DESIGN §3.3, §3.5)."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    instance_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    idempotency_key: Mapped[str] = mapped_column(String(200))
    wa_message_id: Mapped[str] = mapped_column(String(64))
    chat_jid: Mapped[str] = mapped_column(String(128))
    chat_seq: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(24))  # text, image, video, audio, document...
    payload: Mapped[dict[str, Any]]
    status: Mapped[OutboxStatus] = mapped_column(
        _enum(OutboxStatus, "outbox_status"), default=OutboxStatus.QUEUED
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error_code: Mapped[str | None] = mapped_column(String(32))
    last_error_text: Mapped[str | None] = mapped_column(String(500))
    batch_id: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    sent_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    read_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        UniqueConstraint("instance_id", "wa_message_id"),
        UniqueConstraint("instance_id", "chat_jid", "chat_seq"),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        Index(None, "instance_id", "status", "next_attempt_at"),
    )


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[dict[str, Any] | None]  # {"types": [...], "instances": [...]}; null = all
    secret_ciphertext: Mapped[bytes]  # sealed with the master key
    previous_secret_ciphertext: Mapped[bytes | None]  # still signed with during rotation
    master_key_id: Mapped[str] = mapped_column(String(16))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (Index(None, "tenant_id"),)


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]]
    status: Mapped[DeliveryStatus] = mapped_column(
        _enum(DeliveryStatus, "delivery_status"), default=DeliveryStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id"),
        Index(None, "status", "next_attempt_at"),
    )


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: the per-delivery log."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(String(500))
    duration_ms: Mapped[int | None]

    __table_args__ = (UniqueConstraint("delivery_id", "attempt"),)


class InstanceLease(Base):
    """Ownership of an instance's socket. `token` grows on every acquisition (never reset)."""

    __tablename__ = "instance_leases"

    instance_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True
    )
    owner: Mapped[str | None] = mapped_column(String(128))
    token: Mapped[int] = mapped_column(BigInteger, default=0)
    expires_at: Mapped[datetime | None]
    acquired_at: Mapped[datetime | None]

    __table_args__ = (Index(None, "owner"),)


class FleetMember(Base):
    """A live session worker: its heartbeat, and whether it is draining (leaving)."""

    __tablename__ = "fleet_members"

    worker_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    heartbeat_at: Mapped[datetime]
    started_at: Mapped[datetime]
    draining: Mapped[bool] = mapped_column(Boolean, default=False)
    capacity: Mapped[int] = mapped_column(Integer, default=1)


__all__ = [
    "ApiKey",
    "Base",
    "Booking",
    "BookingStatus",
    "Contact",
    "DeliveryStatus",
    "DeviceCredentials",
    "Direction",
    "FleetMember",
    "Instance",
    "InstanceDataKey",
    "InstanceLease",
    "InstanceStatus",
    "LinkMethod",
    "Message",
    "MessageStatus",
    "Note",
    "OutboxMessage",
    "OutboxStatus",
    "SignalRecord",
    "Tenant",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "utcnow",
]
