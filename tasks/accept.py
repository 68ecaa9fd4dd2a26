"""The public task API for outbound messages: `wafleet.send_message` and `wafleet.send_bulk`
(queue `wa.accept`), run by routing workers (DESIGN §2).

Accept validates, writes the outbox row (idempotent per tenant: a repeated key returns the same
row and the same WhatsApp message id), commits, and only then publishes the wake-up
`wafleet.deliver(outbox_id)` to `wa.out.<instance_id>`, which the instance's current owner
consumes. A lost or duplicated wake-up is harmless: the owner works from the outbox.

Arguments (JSON):
    tenant_id        the tenant's id (UUID string)
    instance_id      the sending instance (must belong to the tenant)
    to               the recipient's number, E.164 digits ('+', spaces and dashes allowed)
    text             1..4096 characters, or
    media            {"kind": image|video|audio|document|sticker, "mimetype": "...",
                      "url": "https://..." or "data": "<base64>", "caption"?: "...",
                      "filename"?: "..."}
    idempotency_key  optional, ≤ 200 characters; repeats return the first result
    expires_in       optional seconds: give up (status `expired`) if not sent by then
Result: {"outbox_id", "wa_message_id", "status", "created", "idempotency_key"}.
Errors: tasks.errors.Rejected with a code (see that module); nothing is retried for them.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from protocol.core.message import generate_message_id
from storage.errors import Conflict, InvalidValue
from storage.models import Instance, OutboxMessage, OutboxStatus, Tenant, utcnow
from storage.phone import parse_phone
from storage.repositories import outbox
from tasks.app import app
from tasks.errors import Rejected
from tasks.queues import ACCEPT_QUEUE, DELIVER_TASK, SEND_BULK_TASK, SEND_MESSAGE_TASK, out_queue
from tasks.runtime import current

MAX_TEXT = 4096  # characters, the limit wafleet promises its users
MAX_CAPTION = 1024
MAX_FILENAME = 255
MAX_BULK = 1000
# Inline bytes travel through the broker and the outbox row, so they are capped well below
# WhatsApp's own limits; larger files are sent by URL and checked when downloaded.
MAX_INLINE_BYTES = 5 * 1024 * 1024
# Upper bounds per kind (WhatsApp's documented media limits).
MAX_MEDIA_BYTES = {
    "image": 5 * 1024 * 1024,
    "video": 16 * 1024 * 1024,
    "audio": 16 * 1024 * 1024,
    "document": 100 * 1024 * 1024,
    "sticker": 500 * 1024,
}
MIME_FAMILY = {"image": "image/", "video": "video/", "audio": "audio/", "sticker": "image/webp"}


def _uuid(value: object, code: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise Rejected(code, f"{what} is not a valid id") from None


def validate_text(text: object) -> str:
    if not isinstance(text, str) or not text.strip():
        raise Rejected("empty_message", "text is empty")
    if len(text) > MAX_TEXT:
        raise Rejected("text_too_long", f"text has {len(text)} characters; the limit is {MAX_TEXT}")
    return text


def validate_media(media: object) -> dict[str, Any]:
    if not isinstance(media, dict):
        raise Rejected("invalid_media", "media must be an object")
    kind = media.get("kind")
    if kind not in MAX_MEDIA_BYTES:
        raise Rejected("invalid_media", f"media.kind must be one of {sorted(MAX_MEDIA_BYTES)}")
    mimetype = media.get("mimetype")
    if not isinstance(mimetype, str) or "/" not in mimetype.strip("/"):
        raise Rejected("invalid_media", "media.mimetype must be a MIME type such as image/jpeg")
    family = MIME_FAMILY.get(kind)
    if family and not mimetype.startswith(family):
        raise Rejected("invalid_media", f"a {kind} needs a {family}* mimetype, got {mimetype}")
    url, data = media.get("url"), media.get("data")
    if (url is None) == (data is None):
        raise Rejected("invalid_media", "give exactly one of media.url and media.data")
    out: dict[str, Any] = {"kind": kind, "mimetype": mimetype}
    if url is not None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise Rejected("invalid_media", "media.url must be an http(s) URL")
        out["url"] = url
    else:
        try:
            raw = base64.b64decode(str(data), validate=True)
        except (binascii.Error, ValueError):
            raise Rejected("invalid_media", "media.data must be base64") from None
        limit = min(MAX_INLINE_BYTES, MAX_MEDIA_BYTES[kind])
        if not raw:
            raise Rejected("invalid_media", "media.data is empty")
        if len(raw) > limit:
            raise Rejected(
                "media_too_large",
                f"{kind} of {len(raw)} bytes exceeds the inline limit of {limit}; "
                "send larger files by URL",
            )
        out["data"] = str(data)
        out["size"] = len(raw)
    caption = media.get("caption")
    if caption is not None:
        if kind in {"audio", "sticker"}:
            raise Rejected("invalid_media", f"a {kind} cannot have a caption")
        if not isinstance(caption, str) or len(caption) > MAX_CAPTION:
            raise Rejected("invalid_media", f"media.caption must be ≤ {MAX_CAPTION} characters")
        out["caption"] = caption
    filename = media.get("filename")
    if filename is not None:
        if not isinstance(filename, str) or not 0 < len(filename) <= MAX_FILENAME:
            raise Rejected("invalid_media", f"media.filename must be 1..{MAX_FILENAME} characters")
        out["filename"] = filename
    return out


def _accept_one(
    s: Session, tenant: Tenant, instance: Instance, item: dict[str, Any], batch_id: str | None
) -> tuple[OutboxMessage, bool]:
    try:
        phone = parse_phone(str(item.get("to", "")), field="to")
    except InvalidValue as exc:
        raise Rejected("invalid_phone", exc.text) from None
    text, media = item.get("text"), item.get("media")
    if text is not None and media is not None:
        raise Rejected("invalid_request", "send text or media, not both (use media.caption)")
    if media is not None:
        payload: dict[str, Any] = {"media": validate_media(media)}
        kind = payload["media"]["kind"]
    elif text is not None:
        payload, kind = {"text": validate_text(text)}, "text"
    else:
        raise Rejected("empty_message", "give text or media")
    key = item.get("idempotency_key") or f"auto:{uuid.uuid4()}"
    if not isinstance(key, str) or len(key) > outbox.MAX_IDEMPOTENCY_KEY:
        raise Rejected(
            "invalid_request", f"idempotency_key must be a string of ≤ {outbox.MAX_IDEMPOTENCY_KEY}"
        )
    expires_at = None
    expires_in = item.get("expires_in")
    if expires_in is not None:
        if not isinstance(expires_in, int | float) or expires_in <= 0:
            raise Rejected("invalid_request", "expires_in must be a positive number of seconds")
        expires_at = utcnow() + timedelta(seconds=float(expires_in))
    wa_id = generate_message_id(time.time, os.urandom, instance.phone_number)
    try:
        return outbox.accept_outbound(
            s,
            tenant_id=tenant.id,
            instance_id=instance.id,
            idempotency_key=key,
            wa_message_id=wa_id,
            chat_jid=f"{phone}@s.whatsapp.net",
            kind=kind,
            payload=payload,
            batch_id=batch_id,
            expires_at=expires_at,
        )
    except Conflict as exc:
        raise Rejected("idempotency_conflict", exc.text) from None


def _load(s: Session, tenant_id: object, instance_id: object) -> tuple[Tenant, Instance]:
    tid = _uuid(tenant_id, "unknown_tenant", "tenant_id")
    iid = _uuid(instance_id, "unknown_instance", "instance_id")
    tenant = s.get(Tenant, tid)
    if tenant is None or tenant.disabled_at is not None:
        raise Rejected("unknown_tenant", "no such tenant")
    instance = s.get(Instance, iid)
    if instance is None or instance.tenant_id != tid:
        raise Rejected("unknown_instance", "no such instance for this tenant")
    if instance.deleted_at is not None:
        raise Rejected("instance_deleted", "the instance was deleted")
    return tenant, instance


def _result(row: OutboxMessage, created: bool) -> dict[str, Any]:
    return {
        "outbox_id": row.id,
        "wa_message_id": row.wa_message_id,
        "status": row.status.value,
        "created": created,
        "idempotency_key": row.idempotency_key,
    }


def _wake(instance_id: uuid.UUID, outbox_ids: list[int]) -> None:
    for outbox_id in outbox_ids:  # the instance id spares the owner a lookup per wake-up
        app.send_task(
            DELIVER_TASK, args=[outbox_id, str(instance_id)], queue=out_queue(instance_id)
        )


def wake_instance(instance_id: uuid.UUID) -> bool:
    """Wake the instance's owner if it has unsent messages (e.g. after outbound is resumed).

    One wake-up for the oldest open row is enough: the actor rescans the whole backlog.
    """
    with current().sessions() as s:
        oldest = s.scalar(
            select(OutboxMessage.id)
            .where(
                OutboxMessage.instance_id == instance_id,
                OutboxMessage.status.in_((OutboxStatus.QUEUED, OutboxStatus.SENDING)),
            )
            .order_by(OutboxMessage.id)
            .limit(1)
        )
    if oldest is None:
        return False
    _wake(instance_id, [oldest])
    return True


def accept(tenant_id: object, instance_id: object, item: dict[str, Any]) -> dict[str, Any]:
    rt = current()
    with rt.sessions.begin() as s:
        tenant, instance = _load(s, tenant_id, instance_id)
        row, created = _accept_one(s, tenant, instance, item, None)
        result = _result(row, created)
    _wake(instance.id, [row.id])  # also for repeats: a lost first wake-up is re-sent
    return result


@app.task(name=SEND_MESSAGE_TASK, acks_late=True, queue=ACCEPT_QUEUE, throws=(Rejected,))
def send_message(
    tenant_id: str,
    instance_id: str,
    to: str,
    text: str | None = None,
    media: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    expires_in: float | None = None,
) -> dict[str, Any]:
    """Public task `wafleet.send_message` (see the module docstring)."""
    return accept(
        tenant_id,
        instance_id,
        {
            "to": to,
            "text": text,
            "media": media,
            "idempotency_key": idempotency_key,
            "expires_in": expires_in,
        },
    )


@app.task(name=SEND_BULK_TASK, acks_late=True, queue=ACCEPT_QUEUE, throws=(Rejected,))
def send_bulk(
    tenant_id: str, instance_id: str, items: list[dict[str, Any]], batch_id: str | None = None
) -> dict[str, Any]:
    """Public task `wafleet.send_bulk`: each item its own outbox row, paced by the instance.

    Items are validated one by one: a bad item is reported in `results` with its code and does
    not stop the others. Result: {"batch_id", "results": [{...} | {"error", "message"}]}.
    """
    return accept_bulk(tenant_id, instance_id, items, batch_id)


def accept_bulk(
    tenant_id: object, instance_id: object, items: list[dict[str, Any]], batch_id: str | None
) -> dict[str, Any]:
    """The body of `wafleet.send_bulk`, callable in-process (the gateway)."""
    if not isinstance(items, list) or not items:
        raise Rejected("invalid_request", "items must be a non-empty list")
    if len(items) > MAX_BULK:
        raise Rejected("invalid_request", f"at most {MAX_BULK} items per bulk request")
    batch = batch_id or f"batch:{uuid.uuid4()}"
    rt = current()
    results: list[dict[str, Any]] = []
    wake: list[int] = []
    with rt.sessions.begin() as s:
        tenant, instance = _load(s, tenant_id, instance_id)
        for item in items:
            try:
                with s.begin_nested():
                    row, created = _accept_one(s, tenant, instance, dict(item), batch)
            except Rejected as exc:
                results.append({"error": exc.code, "message": exc.text})
                continue
            results.append(_result(row, created))
            wake.append(row.id)
    _wake(instance.id, wake)
    return {"batch_id": batch, "results": results}


__all__ = ["accept", "accept_bulk", "send_bulk", "send_message", "validate_media", "validate_text"]
