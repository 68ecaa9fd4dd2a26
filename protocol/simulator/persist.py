"""`--data DIR`: the simulator's state as one JSON file, written atomically.

Kept: the root, intermediate-signed server keys and certificate chain (so clients keep trusting
the same root key), the accounts — each phone's identity, Signal store, what it received and
sent — the companion devices with their prekeys, noise keys and signed identities, the offline
queues and in-flight messages (as binary nodes), media blobs and the id counter. Not kept:
live sockets, pending QR/code registrations (a client simply registers again), faults, stats.

File: `DIR/simulator.json`; written to a temporary file in DIR, fsynced and renamed over the
old one, so a crash leaves either the previous or the new state, never half of one.
Bytes are hex; MemoryKeyStore rows are tagged pairs (keys str|int, values bytes|bool|int).

Must not import: asyncio, websockets, protocol.aio.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from protocol.core.binary import BinaryCodec, Node
from protocol.core.curve import KeyPair
from protocol.core.errors import DecodeError
from protocol.core.jid import parse_jid
from protocol.core.signal import keys
from protocol.simulator.phone import Phone, Received
from protocol.simulator.world import DeviceRecord, World
from protocol.store import MemoryKeyStore

STATE_FILE = "simulator.json"
FORMAT = 1
_codec = BinaryCodec(3)


class StateError(DecodeError):
    """A `--data` state file that cannot be read back."""

    code = "simulator_state_error"


def state_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / STATE_FILE


def load(data_dir: str | Path) -> dict[str, Any] | None:
    """The saved state, or None when DIR holds none yet."""
    path = state_path(data_dir)
    if not path.exists():
        return None
    try:
        state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StateError("unreadable simulator state", path=str(path)) from exc
    if state.get("format") != FORMAT:
        raise StateError("unknown simulator state format", path=str(path))
    return state


def save(data_dir: str | Path, state: dict[str, Any]) -> None:
    """Write `state` atomically (temporary file, fsync, rename, fsync the directory)."""
    directory = Path(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    body = json.dumps(state, separators=(",", ":")).encode()
    fd, tmp = tempfile.mkstemp(prefix=".simulator-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, state_path(directory))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ---------------------------------------------------------------------- keys


def keys_state(root: KeyPair, static: KeyPair, cert_chain: bytes) -> dict[str, str]:
    return {
        "root_private": root.private.hex(),
        "root_public": root.public.hex(),
        "static_private": static.private.hex(),
        "static_public": static.public.hex(),
        "cert_chain": cert_chain.hex(),
    }


def restore_keys(state: dict[str, Any]) -> tuple[KeyPair, KeyPair, bytes]:
    k = state["keys"]
    root = KeyPair(bytes.fromhex(k["root_private"]), bytes.fromhex(k["root_public"]))
    static = KeyPair(bytes.fromhex(k["static_private"]), bytes.fromhex(k["static_public"]))
    return root, static, bytes.fromhex(k["cert_chain"])


# ---------------------------------------------------------------------- world


def _value(v: object) -> object:
    if isinstance(v, bytes):
        return {"b": v.hex()}
    if isinstance(v, (bool, int, str)):
        return v
    raise StateError("unexpected store value", type=type(v).__name__)


def _unvalue(v: object) -> object:
    if isinstance(v, dict):
        return bytes.fromhex(str(v["b"]))
    return v


def _node(node: Node) -> str:
    return _codec.encode(node).hex()


def _unnode(text: str) -> Node:
    return _codec.decode(bytes.fromhex(text))


def _opt_hex(b: bytes | None) -> str | None:
    return None if b is None else b.hex()


def _opt_bytes(text: str | None) -> bytes | None:
    return None if text is None else bytes.fromhex(text)


def _phone_state(p: Phone) -> dict[str, Any]:
    rows = p.store.export_rows()
    return {
        "number": p.number,
        "name": p.name,
        "lid_user": p.lid_user,
        "identity_private": p.identity.key_pair.private.hex(),
        "identity_public": p.identity.key_pair.public.hex(),
        "registration_id": p.identity.registration_id,
        "store": {t: [[_value(k), _value(v)] for k, v in r] for t, r in rows.items()},
        "received": [[r.id, r.sender, r.text, r.timestamp] for r in p.received],
        "receipts": p.receipts,
        "next_device": p.next_device,
        "next_key_index": p.next_key_index,
        "raw_id": p.raw_id,
        "sent": [[i, chat, raw.hex()] for i, (chat, raw) in p.sent.items()],
        "retry_counts": p.retry_counts,
        "undecryptable": p.undecryptable,
    }


def _restore_phone(d: dict[str, Any]) -> Phone:
    store = MemoryKeyStore()
    store.import_rows(
        {table: [(_unvalue(k), _unvalue(v)) for k, v in rows] for table, rows in d["store"].items()}
    )
    identity = keys.LocalIdentity(
        key_pair=KeyPair(bytes.fromhex(d["identity_private"]), bytes.fromhex(d["identity_public"])),
        registration_id=int(d["registration_id"]),
    )
    received = [Received(id=r[0], sender=r[1], text=r[2], timestamp=r[3]) for r in d["received"]]
    return Phone(
        number=d["number"],
        name=d["name"],
        lid_user=d["lid_user"],
        identity=identity,
        store=store,
        received=received,
        received_ids={r.id for r in received},
        receipts=list(d["receipts"]),
        next_device=int(d["next_device"]),
        next_key_index=int(d["next_key_index"]),
        raw_id=int(d["raw_id"]),
        sent={i: (chat, bytes.fromhex(raw)) for i, chat, raw in d["sent"]},
        retry_counts={str(k): int(v) for k, v in d["retry_counts"].items()},
        undecryptable=list(d["undecryptable"]),
    )


def _device_state(r: DeviceRecord) -> dict[str, Any]:
    spk_id, spk_pub, spk_sig = r.signed_prekey
    return {
        "jid": str(r.jid),
        "lid": str(r.lid),
        "registration_id": r.registration_id,
        "identity": r.identity.hex(),
        "signed_prekey": [spk_id, spk_pub.hex(), spk_sig.hex()],
        "prekeys": [[i, pub.hex()] for i, pub in r.prekeys.items()],
        "noise_public": _opt_hex(r.noise_public),
        "key_index": r.key_index,
        "account": _opt_hex(r.account),
    }


def _restore_device(d: dict[str, Any]) -> DeviceRecord:
    spk_id, spk_pub, spk_sig = d["signed_prekey"]
    return DeviceRecord(
        jid=parse_jid(d["jid"]),
        lid=parse_jid(d["lid"]),
        registration_id=int(d["registration_id"]),
        identity=bytes.fromhex(d["identity"]),
        signed_prekey=(int(spk_id), bytes.fromhex(spk_pub), bytes.fromhex(spk_sig)),
        prekeys={int(i): bytes.fromhex(pub) for i, pub in d["prekeys"]},
        noise_public=_opt_bytes(d["noise_public"]),
        key_index=int(d["key_index"]),
        account=_opt_bytes(d["account"]),
    )


def world_state(world: World) -> dict[str, Any]:
    return {
        "ids": world.id_counter,
        "phones": [_phone_state(p) for p in world.phones.values()],
        "devices": [_device_state(r) for r in world.devices.values()],
        "queues": {str(j): [_node(n) for n in q] for j, q in world.queues.items() if q},
        "inflight": {
            str(j): [_node(n) for n in m.values()] for j, m in world.inflight.items() if m
        },
        "media": {k: v.hex() for k, v in world.media.items()},
    }


def restore_world(world: World, state: dict[str, Any]) -> None:
    """Fill a fresh `World` with a saved state."""
    try:
        world.id_counter = int(state["ids"])
        for d in state["phones"]:
            phone = _restore_phone(d)
            world.phones[phone.number] = phone
        for d in state["devices"]:
            record = _restore_device(d)
            world.devices[record.jid] = record
        for jid, nodes in state["queues"].items():
            world.queues[parse_jid(jid)] = [_unnode(n) for n in nodes]
        for jid, nodes in state["inflight"].items():
            world.inflight[parse_jid(jid)] = {
                node.attr("id") or "": node for node in map(_unnode, nodes)
            }
        world.media.update({k: bytes.fromhex(v) for k, v in state["media"].items()})
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError("incomplete simulator state", error=repr(exc)) from exc
