"""What inbound routing stored for the calling tenant: contacts and the owner's notes.

An instance-restricted key sees the contacts that wrote to (or were written from) its instance
and that instance's notes."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Contact, Message, Note
from workers.gateway import auth, pages, schemas, state
from workers.gateway.errors import error_responses, not_found

router = APIRouter(tags=["records"], responses=error_responses(400, 401, 403, 404, 429))


def contact_out(c: Contact) -> dict[str, Any]:
    return {
        "id": c.id,
        "phone_number": c.phone_number,
        "lid": c.lid,
        "name": c.name,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
    }


def _on_instance(instance_id: uuid.UUID) -> Any:
    return (
        select(Message.id)
        .where(Message.contact_id == Contact.id, Message.instance_id == instance_id)
        .exists()
    )


def visible_contact(s: Session, principal: auth.Principal, contact_id: int) -> Contact:
    stmt = select(Contact).where(Contact.id == contact_id, Contact.tenant_id == principal.tenant_id)
    if principal.instance_id is not None:
        stmt = stmt.where(_on_instance(principal.instance_id))
    contact = s.scalar(stmt)
    if contact is None:
        raise not_found("contact")
    return contact


@router.get("/contacts", response_model=schemas.Page[schemas.ContactOut])
def list_contacts(
    principal: auth.Read,
    g: state.Dep,
    phone_number: Annotated[schemas.Text | None, Query(max_length=15)] = None,
    limit: pages.Limit = pages.DEFAULT_LIMIT,
    cursor: pages.Cursor = None,
) -> dict[str, Any]:
    with g.sessions() as s:
        stmt = select(Contact).where(Contact.tenant_id == principal.tenant_id)
        if principal.instance_id is not None:
            stmt = stmt.where(_on_instance(principal.instance_id))
        if phone_number is not None:
            stmt = stmt.where(Contact.phone_number == phone_number)
        return pages.page(s, stmt, Contact.id, limit, cursor, contact_out)


@router.get("/contacts/{contact_id}", response_model=schemas.ContactOut)
def get_contact(
    contact_id: Annotated[int, pages.IdPath], principal: auth.Read, g: state.Dep
) -> dict[str, Any]:
    with g.sessions() as s:
        return contact_out(visible_contact(s, principal, contact_id))


def note_out(n: Note) -> dict[str, Any]:
    return {
        "id": n.id,
        "instance_id": n.instance_id,
        "wa_message_id": n.wa_message_id,
        "chat_jid": n.chat_jid,
        "body": n.body,
        "wa_timestamp": n.wa_timestamp,
        "created_at": n.created_at,
    }


@router.get("/notes", response_model=schemas.Page[schemas.NoteOut])
def list_notes(
    principal: auth.Read,
    g: state.Dep,
    instance_id: uuid.UUID | None = None,
    limit: pages.Limit = pages.DEFAULT_LIMIT,
    cursor: pages.Cursor = None,
) -> dict[str, Any]:
    with g.sessions() as s:
        stmt = select(Note).where(Note.tenant_id == principal.tenant_id)
        stmt = auth.on_instance(s, principal, stmt, Note.instance_id, instance_id)
        return pages.page(s, stmt, Note.id, limit, cursor, note_out)


@router.get("/notes/{note_id}", response_model=schemas.NoteOut)
def get_note(
    note_id: Annotated[int, pages.IdPath], principal: auth.Read, g: state.Dep
) -> dict[str, Any]:
    with g.sessions() as s:
        note = s.get(Note, note_id)
        if (
            note is None
            or note.tenant_id != principal.tenant_id
            or not principal.can_see(note.instance_id)
        ):
            raise not_found("note")
        return note_out(note)
