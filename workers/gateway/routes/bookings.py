"""Bookings (one open `pending` booking per contact, opened by inbound routing) and the
tenant's decision on them: confirm or cancel a pending booking. A decision that changes the
status publishes `booking:updated` (webhook outbox rows in the same transaction, then the
tenant's event stream; see tasks.events)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Booking, BookingStatus, utcnow
from tasks import webhooks as webhook_tasks
from tasks.events import BOOKING_UPDATED, booking_data, booking_event_id, record_webhooks
from workers.gateway import auth, pages, schemas, state
from workers.gateway.errors import ApiError, error_responses, not_found
from workers.gateway.routes.records import visible_contact

router = APIRouter(
    prefix="/bookings", tags=["bookings"], responses=error_responses(400, 401, 403, 404, 429)
)


def booking_out(b: Booking) -> dict[str, Any]:
    return {
        "id": b.id,
        "contact_id": b.contact_id,
        "instance_id": b.instance_id,
        "status": b.status.value,
        "source": b.source,
        "first_message_id": b.first_message_id,
        "message_count": b.message_count,
        "created_at": b.created_at,
        "updated_at": b.updated_at,
    }


def _visible(s: Session, principal: auth.Principal, booking_id: int, lock: bool = False) -> Booking:
    booking = s.get(Booking, booking_id, with_for_update=lock)
    if (
        booking is None
        or booking.tenant_id != principal.tenant_id
        or not principal.can_see(booking.instance_id)
    ):
        raise not_found("booking")
    return booking


@router.get("", response_model=schemas.Page[schemas.BookingOut])
def list_bookings(
    principal: auth.Read,
    g: state.Dep,
    status: BookingStatus | None = None,
    instance_id: uuid.UUID | None = None,
    contact_id: Annotated[int | None, Query(ge=1, le=pages.MAX_ID)] = None,
    limit: pages.Limit = pages.DEFAULT_LIMIT,
    cursor: pages.Cursor = None,
) -> dict[str, Any]:
    with g.sessions() as s:
        stmt = select(Booking).where(Booking.tenant_id == principal.tenant_id)
        stmt = auth.on_instance(s, principal, stmt, Booking.instance_id, instance_id)
        if contact_id is not None:
            visible_contact(s, principal, contact_id)
            stmt = stmt.where(Booking.contact_id == contact_id)
        if status is not None:
            stmt = stmt.where(Booking.status == status)
        return pages.page(s, stmt, Booking.id, limit, cursor, booking_out)


@router.get("/{booking_id}", response_model=schemas.BookingOut)
def get_booking(
    booking_id: Annotated[int, pages.IdPath], principal: auth.Read, g: state.Dep
) -> dict[str, Any]:
    with g.sessions() as s:
        return booking_out(_visible(s, principal, booking_id))


def _decide(
    g: state.Gateway, principal: auth.Principal, booking_id: int, to: BookingStatus
) -> dict[str, Any]:
    with g.sessions.begin() as s:
        booking = _visible(s, principal, booking_id, lock=True)
        if booking.status is to:
            return booking_out(booking)  # repeating a decision is harmless
        if booking.status is not BookingStatus.PENDING:
            raise ApiError(
                409,
                "booking_not_pending",
                f"the booking is already {booking.status.value}",
                details={"status": booking.status.value},
            )
        previous = booking.status.value
        booking.status = to
        booking.updated_at = utcnow()
        s.flush()
        data = booking_data(booking, previous_status=previous)
        deliveries = record_webhooks(
            s,
            tenant_id=booking.tenant_id,
            event_id=booking_event_id(BOOKING_UPDATED, booking),
            event_type=BOOKING_UPDATED,
            instance_id=booking.instance_id,
            data=data,
        )
        out = booking_out(booking)
        tenant_id, instance_id = booking.tenant_id, booking.instance_id
    g.bus.publish(tenant_id, BOOKING_UPDATED, instance_id, data)
    webhook_tasks.enqueue(deliveries)
    return out


@router.post(
    "/{booking_id}/confirm", response_model=schemas.BookingOut, responses=error_responses(409)
)
def confirm_booking(
    booking_id: Annotated[int, pages.IdPath], principal: auth.Admin, g: state.Dep
) -> dict[str, Any]:
    return _decide(g, principal, booking_id, BookingStatus.CONFIRMED)


@router.post(
    "/{booking_id}/cancel", response_model=schemas.BookingOut, responses=error_responses(409)
)
def cancel_booking(
    booking_id: Annotated[int, pages.IdPath], principal: auth.Admin, g: state.Dep
) -> dict[str, Any]:
    return _decide(g, principal, booking_id, BookingStatus.CANCELLED)
