"""An instance's WhatsApp session: connect (QR or pairing code), disconnect, logout, the QR
being shown (string, PNG, SVG), the pairing code, status with the current owner, and diagnose.

Commands go through tasks.commands: the desired state is written on the instance row first
(durable: a new owner after a handover acts on it), then sent to the current owner's
`wa.session.<worker>` queue; the answer is 202 with the status at that moment. The QR and the
pairing code are what the owner stored in Redis (storage.linking) on its last `Qr` /
`PairingCode` event; realtime updates of both arrive on the websocket (/v1/events).
"""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import segno
from fastapi import APIRouter, Query, Response
from sqlalchemy import func, select

from storage.bus import Event
from storage.errors import InvalidValue
from storage.leases import Leases
from storage.linking import LinkingCodes
from storage.models import Instance, InstanceStatus, OutboxMessage, OutboxStatus
from storage.phone import parse_phone
from tasks import commands
from workers.gateway import auth, schemas, state
from workers.gateway.errors import ApiError, error_responses

router = APIRouter(
    prefix="/instances", tags=["sessions"], responses=error_responses(400, 401, 403, 404, 429)
)
RECENT_ERRORS = 10
EVENT_SCAN = 500  # newest events of the tenant's stream scanned for the instance's disconnects
DISCONNECT_EVENTS = {"whatsapp:disconnected", "whatsapp:logged-out", "whatsapp:qr-exhausted"}
QR_SCALE = 6


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def linking(g: state.Gateway) -> LinkingCodes:
    return LinkingCodes(g.redis, g.bus.prefix)


def status_out(g: state.Gateway, inst: Instance) -> dict[str, Any]:
    holder = Leases(g.sessions, ttl=1.0).holder(inst.id)
    with g.sessions() as s:
        queued = s.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(
                OutboxMessage.instance_id == inst.id,
                OutboxMessage.status.in_((OutboxStatus.QUEUED, OutboxStatus.SENDING)),
            )
        )
    return {
        "id": inst.id,
        "state": inst.status.value,
        "connected": inst.status is InstanceStatus.CONNECTED,
        "owner": None if holder is None else holder.owner,
        "phone_number": inst.phone_number,
        "last_connected_at": inst.last_connected_at,
        "messages_sent": inst.messages_sent,
        "messages_received": inst.messages_received,
        "outbound_paused": inst.outbound_paused,
        "pause_reason": inst.pause_reason,
        "queued": int(queued or 0),
        "desired_state": inst.desired_state.value,
    }


def _load(g: state.Gateway, principal: auth.Principal, instance_id: uuid.UUID) -> Instance:
    with g.sessions() as s:
        inst = auth.visible_instance(s, principal, instance_id)
        s.expunge(inst)
        return inst


def _command(
    g: state.Gateway,
    principal: auth.Principal,
    instance_id: uuid.UUID,
    name: str,
    **options: str | None,
) -> dict[str, Any]:
    _load(g, principal, instance_id)
    commands.command(instance_id, name, tenant_id=principal.tenant_id, **options)
    if name != "connect":
        linking(g).clear(instance_id)  # a stale QR must not be offered any more
    return status_out(g, _load(g, principal, instance_id))


@router.post(
    "/{instance_id}/connect",
    status_code=202,
    response_model=schemas.InstanceStatusOut,
    responses=error_responses(503),
)
def connect(
    instance_id: uuid.UUID, body: schemas.ConnectIn, principal: auth.Admin, g: state.Dep
) -> dict[str, Any]:
    """Connect; an unlinked instance starts linking by QR or by pairing code (`phone`)."""
    if body.method == "code" and body.phone is not None:
        try:
            parse_phone(body.phone, field="phone")
        except InvalidValue as exc:
            raise ApiError(400, "invalid_phone", exc.text, details={"field": "phone"}) from None
    elif body.method == "qr" and body.phone is not None:
        raise ApiError(
            400, "invalid_request", "phone is only for method code", details={"field": "phone"}
        )
    return _command(g, principal, instance_id, "connect", method=body.method, phone=body.phone)


@router.post(
    "/{instance_id}/disconnect",
    status_code=202,
    response_model=schemas.InstanceStatusOut,
    responses=error_responses(503),
)
def disconnect(instance_id: uuid.UUID, principal: auth.Admin, g: state.Dep) -> dict[str, Any]:
    """Close the socket and keep the credentials; no reconnect until the next connect."""
    return _command(g, principal, instance_id, "disconnect")


@router.post(
    "/{instance_id}/logout",
    status_code=202,
    response_model=schemas.InstanceStatusOut,
    responses=error_responses(503),
)
def logout(instance_id: uuid.UUID, principal: auth.Admin, g: state.Dep) -> dict[str, Any]:
    """Remove the companion at WhatsApp and destroy the device credentials."""
    return _command(g, principal, instance_id, "logout")


@router.get("/{instance_id}/status", response_model=schemas.InstanceStatusOut)
def status(instance_id: uuid.UUID, principal: auth.Read, g: state.Dep) -> dict[str, Any]:
    return status_out(g, _load(g, principal, instance_id))


def _qr(g: state.Gateway, principal: auth.Principal, instance_id: uuid.UUID) -> Any:
    _load(g, principal, instance_id)
    shown = linking(g).qr(instance_id)
    if shown is None:
        raise ApiError(404, "no_qr", "this instance is not showing a QR code now")
    return shown


@router.get("/{instance_id}/qr", response_model=schemas.QrOut, responses=error_responses(404))
def qr(instance_id: uuid.UUID, principal: auth.Read, g: state.Dep) -> dict[str, Any]:
    shown = _qr(g, principal, instance_id)
    return {"qr": shown.qr, "expires_at": _at(shown.expires_at), "index": shown.index}


def _image(code: str, kind: str) -> bytes:
    out = io.BytesIO()
    segno.make_qr(code, error="l").save(out, kind=kind, scale=QR_SCALE, border=2)
    return out.getvalue()


@router.get(
    "/{instance_id}/qr.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **error_responses(404)},
)
def qr_png(instance_id: uuid.UUID, principal: auth.Read, g: state.Dep) -> Response:
    shown = _qr(g, principal, instance_id)
    return Response(
        _image(shown.qr, "png"), media_type="image/png", headers={"Cache-Control": "no-store"}
    )


@router.get(
    "/{instance_id}/qr.svg",
    response_class=Response,
    responses={200: {"content": {"image/svg+xml": {}}}, **error_responses(404)},
)
def qr_svg(instance_id: uuid.UUID, principal: auth.Read, g: state.Dep) -> Response:
    shown = _qr(g, principal, instance_id)
    return Response(
        _image(shown.qr, "svg"), media_type="image/svg+xml", headers={"Cache-Control": "no-store"}
    )


@router.get(
    "/{instance_id}/pairing-code",
    response_model=schemas.PairingCodeOut,
    responses=error_responses(404),
)
def pairing_code(instance_id: uuid.UUID, principal: auth.Read, g: state.Dep) -> dict[str, Any]:
    _load(g, principal, instance_id)
    shown = linking(g).code(instance_id)
    if shown is None:
        raise ApiError(404, "no_pairing_code", "this instance is not showing a pairing code now")
    return {"code": shown.code, "expires_at": _at(shown.expires_at)}


@router.get("/{instance_id}/diagnose", response_model=schemas.Diagnosis)
def diagnose(
    instance_id: uuid.UUID,
    principal: auth.Read,
    g: state.Dep,
    phone: Annotated[schemas.Text | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """Is the instance connected, is `phone` a valid number (and on WhatsApp), recent errors,
    and what to do about them."""
    inst = _load(g, principal, instance_id)
    out = status_out(g, inst)
    advice = _state_advice(out, inst)
    check: dict[str, Any] | None = None
    if phone is not None:
        check = {"input": phone, "valid": False, "e164": None, "on_whatsapp": None, "jid": None}
        try:
            digits = parse_phone(phone, field="phone")
        except InvalidValue as exc:
            advice.append(f"{phone!r} is not a valid phone number: {exc.text}")
        else:
            check.update(valid=True, e164=f"+{digits}", jid=f"{digits}@s.whatsapp.net")
            known = (
                commands.on_whatsapp(inst.id, digits)
                if inst.status is InstanceStatus.CONNECTED
                else None
            )
            check["on_whatsapp"] = known
            if known is None:
                advice.append(
                    "whether the number is on WhatsApp could not be checked: that needs the "
                    "instance connected and its session worker answering"
                )
            elif not known:
                advice.append(f"+{digits} has no WhatsApp account: messages to it will fail")
    return {
        "instance": out,
        "phone": check,
        "recent_errors": _recent_errors(g, inst),
        "advice": advice,
    }


def _state_advice(out: dict[str, Any], inst: Instance) -> list[str]:
    advice: list[str] = []
    state_ = InstanceStatus(out["state"])
    base = f"/v1/instances/{inst.id}"
    if state_ is InstanceStatus.CONNECTED:
        pass
    elif state_ in (InstanceStatus.CREATED, InstanceStatus.DISCONNECTED):
        advice.append(f"the instance is not connected: POST {base}/connect")
    elif state_ is InstanceStatus.LOGGED_OUT:
        advice.append(f"the companion was logged out: link it again with POST {base}/connect")
    elif state_ is InstanceStatus.BANNED:
        advice.append("WhatsApp banned this number temporarily: wait, then connect again")
    elif state_ is InstanceStatus.QR_PENDING:
        advice.append(
            f"scan the QR (GET {base}/qr.png) on the phone: Linked devices → Link a device; "
            "or connect with method code"
        )
    elif state_ is InstanceStatus.CODE_PENDING:
        advice.append(
            f"type the pairing code (GET {base}/pairing-code) on the phone: Linked devices → "
            "Link with phone number"
        )
    elif state_ in (InstanceStatus.CONNECTING, InstanceStatus.RECONNECTING):
        advice.append("the instance is connecting; messages wait (parked) until it is connected")
    if out["owner"] is None:
        advice.append(
            "no session worker holds this instance right now: check that `wafleet worker "
            "session` processes are running (commands are applied when one takes it)"
        )
    if inst.outbound_paused:
        advice.append(
            f"outbound is paused ({inst.pause_reason or 'no reason given'}): resume with "
            f'PATCH {base} {{"outbound_paused": false}}'
        )
    if out["queued"] and state_ is not InstanceStatus.CONNECTED:
        advice.append(f"{out['queued']} message(s) wait until the instance is connected")
    return advice


def _recent_errors(g: state.Gateway, inst: Instance) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    with g.sessions() as s:
        rows = s.scalars(
            select(OutboxMessage)
            .where(
                OutboxMessage.instance_id == inst.id,
                OutboxMessage.last_error_code.is_not(None),
            )
            .order_by(OutboxMessage.updated_at.desc())
            .limit(RECENT_ERRORS)
        ).all()
        for row in rows:
            errors.append(
                {
                    "at": row.updated_at,
                    "code": row.last_error_code or "error",
                    "message": f"{row.status.value}: {row.last_error_text or 'no detail'}",
                    "outbox_id": row.id,
                }
            )
    raw: Any = g.redis.xrevrange(g.bus.stream(inst.tenant_id), count=EVENT_SCAN)
    found = 0
    for entry_id, fields in raw or []:
        if found >= RECENT_ERRORS:
            break
        event = Event.from_entry(entry_id, fields)
        if event.instance_id != str(inst.id) or event.type not in DISCONNECT_EVENTS:
            continue
        found += 1
        reason = str(event.data.get("reason") or event.type.removeprefix("whatsapp:"))
        errors.append(
            {
                "at": datetime.fromisoformat(event.timestamp),
                "code": event.type.removeprefix("whatsapp:"),
                "message": reason,
            }
        )
    errors.sort(key=lambda e: e["at"], reverse=True)
    return errors[:RECENT_ERRORS]
