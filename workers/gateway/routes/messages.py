"""Outbound sending through tasks.accept in-process (validate, idempotent outbox row, wake-up on
`wa.out.<instance>`; 202 with the outbox result), outbound status by outbox id or idempotency
key, and the stored message history."""

from __future__ import annotations

import base64
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, UploadFile
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from storage.models import Direction, Message, OutboxMessage, OutboxStatus
from tasks import accept as accept_task
from workers.gateway import auth, pages, schemas, state
from workers.gateway.errors import ApiError, error_responses, not_found
from workers.gateway.routes.records import visible_contact

router = APIRouter(tags=["messages"], responses=error_responses(400, 401, 403, 404, 429))
SEND_ERRORS = error_responses(409, 413, 503)
UPLOAD_CHUNK = 64 * 1024


def _send(
    principal: auth.Principal, g: state.Gateway, instance_id: uuid.UUID, item: dict[str, Any]
) -> dict[str, Any]:
    with g.sessions() as s:
        auth.visible_instance(s, principal, instance_id)
    return accept_task.accept(principal.tenant_id, instance_id, item)


@router.post(
    "/instances/{instance_id}/send/text",
    status_code=202,
    response_model=schemas.SendResult,
    responses=SEND_ERRORS,
)
def send_text(
    instance_id: uuid.UUID, body: schemas.SendText, principal: auth.Send, g: state.Dep
) -> dict[str, Any]:
    return _send(principal, g, instance_id, body.model_dump())


@router.post(
    "/instances/{instance_id}/send/media",
    status_code=202,
    response_model=schemas.SendResult,
    responses=SEND_ERRORS,
)
def send_media(
    instance_id: uuid.UUID, body: schemas.SendMedia, principal: auth.Send, g: state.Dep
) -> dict[str, Any]:
    item = body.model_dump()
    item["media"] = body.media.model_dump(exclude_none=True)
    return _send(principal, g, instance_id, item)


@router.post(
    "/instances/{instance_id}/send/upload",
    status_code=202,
    response_model=schemas.SendResult,
    responses=SEND_ERRORS,
)
async def send_upload(
    instance_id: uuid.UUID,
    principal: auth.Send,
    g: state.Dep,
    to: Annotated[schemas.Text, Form()],
    kind: Annotated[schemas.MediaKind, Form()],
    file: Annotated[UploadFile, File(description="the media bytes (≤ 5 MB)")],
    mimetype: Annotated[schemas.Text | None, Form(max_length=255)] = None,
    caption: Annotated[schemas.Text | None, Form()] = None,
    filename: Annotated[schemas.Text | None, Form()] = None,
    idempotency_key: Annotated[schemas.Text | None, Form()] = None,
    expires_in: Annotated[float | None, Form()] = None,
) -> dict[str, Any]:
    """Multipart upload: the file travels inline (base64) like `media.data`."""
    limit = accept_task.MAX_INLINE_BYTES
    raw = bytearray()
    while chunk := await file.read(UPLOAD_CHUNK):
        raw += chunk
        if len(raw) > limit:
            raise ApiError(
                400,
                "media_too_large",
                f"uploads are limited to {limit} bytes; send larger files by URL",
            )
    media: dict[str, Any] = {
        "kind": kind,
        "mimetype": mimetype or file.content_type or "application/octet-stream",
        "data": base64.b64encode(bytes(raw)).decode(),
    }
    if caption is not None:
        media["caption"] = caption
    # A document keeps its file name by default; other kinds only when one is given.
    name = filename or (file.filename if kind == "document" else None)
    if name:
        media["filename"] = name
    item = {
        "to": to,
        "media": media,
        "idempotency_key": idempotency_key,
        "expires_in": expires_in,
    }
    # The accept path is synchronous (database + broker); keep it off the event loop.
    return await run_in_threadpool(_send, principal, g, instance_id, item)


@router.post(
    "/instances/{instance_id}/send/bulk",
    status_code=202,
    response_model=schemas.BulkResult,
    responses=SEND_ERRORS,
)
def send_bulk(
    instance_id: uuid.UUID, body: schemas.SendBulk, principal: auth.Send, g: state.Dep
) -> Any:
    with g.sessions() as s:
        auth.visible_instance(s, principal, instance_id)
    items = [item.model_dump(exclude_none=True) for item in body.items]
    for item in items:
        if "media" in item:
            item["media"] = {k: v for k, v in item["media"].items() if v is not None}
    # The task body runs here, in-process; a bad item is reported in `results`, not raised.
    return accept_task.accept_bulk(principal.tenant_id, instance_id, items, body.batch_id)


def outbox_out(row: OutboxMessage) -> dict[str, Any]:
    return {
        "id": row.id,
        "instance_id": row.instance_id,
        "idempotency_key": row.idempotency_key,
        "wa_message_id": row.wa_message_id,
        "chat_jid": row.chat_jid,
        "kind": row.kind,
        "status": row.status.value,
        "attempts": row.attempts,
        "last_error_code": row.last_error_code,
        "last_error_text": row.last_error_text,
        "batch_id": row.batch_id,
        "expires_at": row.expires_at,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "sent_at": row.sent_at,
        "delivered_at": row.delivered_at,
        "read_at": row.read_at,
    }


def _visible_outbox(principal: auth.Principal, row: OutboxMessage | None) -> OutboxMessage:
    if (
        row is None
        or row.tenant_id != principal.tenant_id
        or not principal.can_see(row.instance_id)
    ):
        raise not_found("outbound message")
    return row


@router.get("/outbox/by-key", response_model=schemas.OutboxOut)
def outbox_by_key(
    idempotency_key: Annotated[schemas.Text, Query(min_length=1, max_length=200)],
    principal: auth.Read,
    g: state.Dep,
) -> dict[str, Any]:
    with g.sessions() as s:
        row = s.scalar(
            select(OutboxMessage).where(
                OutboxMessage.tenant_id == principal.tenant_id,
                OutboxMessage.idempotency_key == idempotency_key,
            )
        )
        return outbox_out(_visible_outbox(principal, row))


@router.get("/outbox/{outbox_id}", response_model=schemas.OutboxOut)
def outbox_by_id(
    outbox_id: Annotated[int, pages.IdPath], principal: auth.Read, g: state.Dep
) -> dict[str, Any]:
    with g.sessions() as s:
        return outbox_out(_visible_outbox(principal, s.get(OutboxMessage, outbox_id)))


@router.get("/instances/{instance_id}/outbox", response_model=schemas.Page[schemas.OutboxOut])
def list_outbox(
    instance_id: uuid.UUID,
    principal: auth.Read,
    g: state.Dep,
    status: OutboxStatus | None = None,
    batch_id: Annotated[schemas.Text | None, Query(max_length=64)] = None,
    limit: pages.Limit = pages.DEFAULT_LIMIT,
    cursor: pages.Cursor = None,
) -> dict[str, Any]:
    with g.sessions() as s:
        auth.visible_instance(s, principal, instance_id)
        stmt = select(OutboxMessage).where(
            OutboxMessage.tenant_id == principal.tenant_id,
            OutboxMessage.instance_id == instance_id,
        )
        if status is not None:
            stmt = stmt.where(OutboxMessage.status == status)
        if batch_id is not None:
            stmt = stmt.where(OutboxMessage.batch_id == batch_id)
        return pages.page(s, stmt, OutboxMessage.id, limit, cursor, outbox_out)


MEDIA_FIELDS = ("mimetype", "caption", "filename", "size")


def message_out(m: Message) -> dict[str, Any]:
    media = None
    if m.media:
        # Only descriptive fields: inbound media records hold download keys and hashes.
        media = {k: m.media.get(k) for k in MEDIA_FIELDS if isinstance(m.media.get(k), str | int)}
    return {
        "id": m.id,
        "instance_id": m.instance_id,
        "direction": m.direction.value,
        "wa_message_id": m.wa_message_id,
        "chat_jid": m.chat_jid,
        "sender_jid": m.sender_jid,
        "contact_id": m.contact_id,
        "type": m.type,
        "body": m.body,
        "media": media,
        "status": m.status.value,
        "error_code": m.error_code,
        "wa_timestamp": m.wa_timestamp,
        "created_at": m.created_at,
    }


@router.get("/messages", response_model=schemas.Page[schemas.MessageOut])
def list_messages(
    principal: auth.Read,
    g: state.Dep,
    instance_id: uuid.UUID | None = None,
    contact_id: Annotated[int | None, Query(ge=1, le=pages.MAX_ID)] = None,
    direction: Direction | None = None,
    limit: pages.Limit = pages.DEFAULT_LIMIT,
    cursor: pages.Cursor = None,
) -> dict[str, Any]:
    with g.sessions() as s:
        stmt = select(Message).where(Message.tenant_id == principal.tenant_id)
        stmt = auth.on_instance(s, principal, stmt, Message.instance_id, instance_id)
        if contact_id is not None:
            visible_contact(s, principal, contact_id)
            stmt = stmt.where(Message.contact_id == contact_id)
        if direction is not None:
            stmt = stmt.where(Message.direction == direction)
        return pages.page(s, stmt, Message.id, limit, cursor, message_out)
