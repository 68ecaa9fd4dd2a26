"""Contacts per tenant, keyed by BOTH phone number and LID (DESIGN §3.8).

WhatsApp increasingly hides numbers behind `@lid` addresses, so one person may first appear by
LID and later by number (or the reverse). `upsert_contacts` stores both when known and merges
two rows that turn out to be the same person: the older row survives, the other's messages and
bookings move to it (an open pending booking is folded into the survivor's), and it is deleted.

It takes a batch of sightings (inbound routing of a batch): one locking read of every row the
batch names, the sightings applied in order in memory, then one multi-row insert of the new
contacts and updates of the changed ones; a contact created and merged inside the same batch is
never written as two rows (the survivor is the one seen first). `upsert_contact` is the form for
one sighting.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, or_, select, update
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
    """The tenant's contact for this phone number and/or LID, created or merged as needed
    (`upsert_contacts` with one sighting)."""
    (contact_id,) = upsert_contacts(session, tenant_id, [(phone_number, lid, name)])
    contact = session.get(Contact, contact_id)
    assert contact is not None  # written or locked by this transaction
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


@dataclass(slots=True)
class _Slot:
    """One contact while a batch is resolved: a loaded row, or one to create (`row` None)."""

    order: int  # ids of stored rows come first, new rows in the order they were first seen
    phone: str | None
    lid: str | None
    name: str | None
    row: Contact | None = None
    merged_into: _Slot | None = None
    id: int | None = None  # a new row's id once inserted

    def root(self) -> _Slot:
        slot = self
        while slot.merged_into is not None:
            slot = slot.merged_into
        return slot


Sighting = tuple[str | None, str | None, str | None]  # (phone number, LID, push name)


def upsert_contacts(
    session: Session, tenant_id: uuid.UUID, sightings: Sequence[Sighting]
) -> list[int]:
    """The contact id of each (phone, lid, name) sighting, in order, as if each had been
    stored in turn; every sighting needs a phone number or a LID."""
    if not sightings:
        return []
    for phone, lid, _ in sightings:
        if not phone and not lid:
            raise InvalidValue("a contact needs a phone number or a LID", field="phone_number")
    for _ in range(MAX_ATTEMPTS):
        try:
            with session.begin_nested():
                return _upsert_batch_once(session, tenant_id, sightings)
        except IntegrityError:
            continue  # another transaction created one of them first; look again
    raise Conflict("contact upsert kept conflicting", constraint="uq_contacts")


def _upsert_batch_once(
    session: Session, tenant_id: uuid.UUID, sightings: Sequence[Sighting]
) -> list[int]:
    phones = sorted({p for p, _, _ in sightings if p})
    lids = sorted({lid for _, lid, _ in sightings if lid})
    conditions = []
    if phones:
        conditions.append(Contact.phone_number.in_(phones))
    if lids:
        conditions.append(Contact.lid.in_(lids))
    rows = session.scalars(
        select(Contact)
        .where(Contact.tenant_id == tenant_id, or_(*conditions))
        .order_by(Contact.id)  # one lock order for concurrent batches
        .with_for_update()
    ).all()
    by_phone: dict[str, _Slot] = {}
    by_lid: dict[str, _Slot] = {}
    slots: list[_Slot] = []
    for row in rows:
        slot = _Slot(len(slots), row.phone_number, row.lid, row.name, row)
        slots.append(slot)
        if row.phone_number:
            by_phone[row.phone_number] = slot
        if row.lid:
            by_lid[row.lid] = slot
    merges: list[tuple[Contact, Contact]] = []  # (survivor, other): two stored rows
    chosen: list[_Slot] = []
    for phone, lid, name in sightings:
        found_phone = by_phone[phone].root() if phone and phone in by_phone else None
        found_lid = by_lid[lid].root() if lid and lid in by_lid else None
        if found_phone is not None and found_lid is not None and found_phone is not found_lid:
            survivor, other = sorted((found_phone, found_lid), key=_age)
            if survivor.row is not None and other.row is not None:
                merges.append((survivor.row, other.row))
            survivor.phone = survivor.phone or other.phone
            survivor.lid = survivor.lid or other.lid
            survivor.name = survivor.name or other.name
            other.merged_into = survivor
            slot = survivor
        else:
            existing = found_phone or found_lid
            if existing is None:
                slot = _Slot(len(slots), phone, lid, name)
                slots.append(slot)
            else:
                slot = existing
        if phone and slot.phone is None:
            slot.phone = phone
        if lid and slot.lid is None:
            slot.lid = lid
        if name and slot.name != name:
            slot.name = name
        for key, index in ((slot.phone, by_phone), (slot.lid, by_lid)):
            if key:
                index[key] = slot
        chosen.append(slot)
    for survivor_row, other_row in merges:
        _merge(session, survivor_row, other_row)
    new = [s for s in slots if s.row is None and s.merged_into is None]
    if new:
        now = utcnow()
        table: Any = Contact.__table__
        inserted = (
            session.connection()
            .execute(
                insert(table).returning(table.c.id, table.c.phone_number, table.c.lid),
                [
                    {
                        "tenant_id": tenant_id,
                        "phone_number": s.phone,
                        "lid": s.lid,
                        "name": s.name,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for s in new
                ],
            )
            .all()
        )
        ids = {(r.phone_number, r.lid): r.id for r in inserted}
        for slot in new:
            slot.id = ids[(slot.phone, slot.lid)]
    changed = False
    for slot in slots:
        loaded = slot.row
        if loaded is None or slot.merged_into is not None:
            continue
        if (loaded.phone_number, loaded.lid, loaded.name) != (slot.phone, slot.lid, slot.name):
            loaded.phone_number, loaded.lid, loaded.name = slot.phone, slot.lid, slot.name
            changed = True
    if changed:
        session.flush()
    return [_slot_id(slot.root()) for slot in chosen]


def _age(slot: _Slot) -> int:
    return slot.order


def _slot_id(slot: _Slot) -> int:
    if slot.row is not None:
        return slot.row.id
    assert slot.id is not None  # inserted above
    return slot.id
