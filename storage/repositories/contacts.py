"""Contacts per tenant, keyed by BOTH phone number and LID (DESIGN §3.8).

WhatsApp increasingly hides numbers behind `@lid` addresses, so one person may first appear by
LID and later by number (or the reverse). `upsert_contact` stores both when known and merges two
rows that turn out to be the same person: the older row survives, the other's messages and
bookings move to it (an open pending booking is folded into the survivor's), and it is deleted.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.errors import Conflict, InvalidValue
from storage.models import Booking, BookingStatus, Contact, Message, utcnow

MAX_ATTEMPTS = 5  # concurrent first sightings of one person race on the unique constraints


def upsert_contact(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    phone_number: str | None = None,
    lid: str | None = None,
    name: str | None = None,
) -> Contact:
    """The tenant's contact for this phone number and/or LID, created or merged as needed."""
    if not phone_number and not lid:
        raise InvalidValue("a contact needs a phone number or a LID", field="phone_number")
    for _ in range(MAX_ATTEMPTS):
        try:
            with session.begin_nested():
                return _upsert_once(session, tenant_id, phone_number, lid, name)
        except IntegrityError:
            continue  # another transaction created one of them first; look again
    raise Conflict(
        "contact upsert kept conflicting",
        constraint="uq_contacts",
        phone_number=phone_number,
        lid=lid,
    )


def _upsert_once(
    session: Session, tenant_id: uuid.UUID, phone: str | None, lid: str | None, name: str | None
) -> Contact:
    by_phone = by_lid = None
    if phone:
        by_phone = session.scalar(
            select(Contact)
            .where(Contact.tenant_id == tenant_id, Contact.phone_number == phone)
            .with_for_update()
        )
    if lid:
        by_lid = session.scalar(
            select(Contact)
            .where(Contact.tenant_id == tenant_id, Contact.lid == lid)
            .with_for_update()
        )
    if by_phone is not None and by_lid is not None and by_phone.id != by_lid.id:
        survivor, other = sorted((by_phone, by_lid), key=lambda c: c.id)
        _merge(session, survivor, other)
        contact = survivor
    else:
        contact_or_none = by_phone or by_lid
        if contact_or_none is None:
            contact = Contact(tenant_id=tenant_id, phone_number=phone, lid=lid, name=name)
            session.add(contact)
            session.flush()
            return contact
        contact = contact_or_none
    if phone and contact.phone_number is None:
        contact.phone_number = phone
    if lid and contact.lid is None:
        contact.lid = lid
    if name and contact.name != name:
        contact.name = name
    session.flush()
    return contact


def _merge(session: Session, survivor: Contact, other: Contact) -> None:
    phone = survivor.phone_number or other.phone_number
    lid = survivor.lid or other.lid
    name = survivor.name or other.name
    session.execute(
        update(Message).where(Message.contact_id == other.id).values(contact_id=survivor.id)
    )
    pending = {
        b.contact_id: b
        for b in session.scalars(
            select(Booking).where(
                Booking.contact_id.in_((survivor.id, other.id)),
                Booking.status == BookingStatus.PENDING,
            )
        ).all()
    }
    if survivor.id in pending and other.id in pending:
        keep, fold = pending[survivor.id], pending[other.id]
        keep.message_count += fold.message_count
        keep.updated_at = utcnow()
        session.delete(fold)
        session.flush()
    session.execute(
        update(Booking).where(Booking.contact_id == other.id).values(contact_id=survivor.id)
    )
    session.delete(other)
    session.flush()
    survivor.phone_number, survivor.lid, survivor.name = phone, lid, name
