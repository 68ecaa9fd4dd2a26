"""The simulator's I/O: one asyncio TCP port for the WebSocket endpoint and the control API.

A connection's HTTP head decides: `GET /ws/chat` with `Upgrade: websocket` is handed to
websockets' sans-I/O `ServerProtocol` and then to a `ServerConnection` + the `World`; anything
else is plain HTTP/1.1 (JSON bodies, `Connection: close`) for `/control/...` and the media
endpoints (SPEC §17 item 10). websockets' own server refuses request bodies, hence this small
handler.

Control API (README "Simulator control API"):
    GET  /control/info                                   ws_url, root_public_key, dictionaries
    POST /control/accounts {"phone", "name"?}             201 account | 409
    GET  /control/accounts/{phone}                        account with devices
    POST /control/accounts/{phone}/link {"qr"}|{"code"}   links that companion | 400/404/409/410
    POST /control/accounts/{phone}/messages {"to","text"} the phone sends; {"id"}
    GET  /control/accounts/{phone}/messages               what the phone received, decrypted
    GET  /control/accounts/{phone}/receipts               receipts the phone got
    POST /control/accounts/{phone}/devices/{n}/logout     unlink companion n (401 device_removed)
    POST /control/faults {"kind", …}                      latency|drop|stall|stream_error|
                                                          iq_error|refuse_login|ack_error|
                                                          garbage|corrupt|forget_session|clear
    GET  /control/stats                                   counters

Must not import: storage, tasks, workers, config, protocol.aio.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from types import TracebackType

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from protocol import signal_store
from protocol.core import curve
from protocol.core.binary import Node
from protocol.core.errors import FrameError, HandshakeError, WhatsAppError
from protocol.core.inject import Clock, CountingRng, Rng
from protocol.core.jid import DEFAULT_USER_SERVER, JID, parse_jid
from protocol.core.media import decode_upload_token
from protocol.core.noise import ClientFinished, make_cert_chain
from protocol.simulator import persist
from protocol.simulator.session import ServerConnection
from protocol.simulator.world import ControlError, FaultKind, World

log = logging.getLogger(__name__)

WS_PATH = "/ws/chat"  # SPEC §2.1
MAX_FRAME = 1 << 24  # SPEC §2.1 read limit
MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024
CERT_VALIDITY = 10 * 365 * 86400
READ_SIZE = 65536
STOP_GRACE = 5.0
SAVE_INTERVAL = 0.5  # seconds between `--data` saves while something changed
_CLOSE = b""


class _Peer:
    """One WebSocket client; implements the World's `Peer`."""

    def __init__(
        self,
        sim: Simulator,
        proto: ServerProtocol,
        conn: ServerConnection,
        writer: asyncio.StreamWriter,
    ) -> None:
        self._sim = sim
        self._proto = proto
        self.conn = conn
        self._writer = writer
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.latency = 0.0
        self.stalled = False
        self.closed = False
        self._task = asyncio.create_task(self._write_loop())

    def send_node(self, node: Node) -> None:
        if self.stalled:
            return
        self.send_frame(self.conn.send(node))

    def send_frame(self, frame: bytes) -> None:
        if self.closed or self._proto.state is not State.OPEN:
            return  # the socket is closing: late stanzas are lost, as on a real network
        self._proto.send_binary(frame)
        self._flush()

    def send_garbage(self) -> None:
        self._proto.send_binary(self.conn.send_raw_body(b"\x00\xf8\x03\xff\xff\xff"))
        self._flush()

    def _flush(self) -> None:
        for chunk in self._proto.data_to_send():
            self._queue.put_nowait(chunk)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self._proto.send_close(1000)
        for chunk in self._proto.data_to_send():
            self._queue.put_nowait(chunk)
        self._queue.put_nowait(_CLOSE)

    def drop(self) -> None:
        """Fault: the TCP connection disappears without a close handshake."""
        self.closed = True
        self._writer.transport.abort()

    async def _write_loop(self) -> None:
        try:
            while True:
                chunk = await self._queue.get()
                if self.latency:
                    await asyncio.sleep(self.latency)  # injected latency, not synchronisation
                if chunk == _CLOSE:
                    self._writer.close()
                    return
                if not self.stalled:
                    self._writer.write(chunk)
        except (ConnectionError, RuntimeError):
            return

    async def wait_closed(self) -> None:
        self._queue.put_nowait(_CLOSE)
        with contextlib.suppress(Exception):
            await self._task


class Simulator:
    """The simulator server. `async with Simulator(port=0) as sim:`; see the module docstring."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: bytes | None = None,
        now: Clock = time.time,
        data_dir: str | Path | None = None,
    ) -> None:
        self.host = host
        self._port = port
        self._now = now
        self.rng: Rng = CountingRng(seed) if seed is not None else os.urandom
        self.world = World(rng=self.rng, now=now)
        self.data_dir = None if data_dir is None else Path(data_dir)
        saved = None if self.data_dir is None else persist.load(self.data_dir)
        if saved is not None:  # --data: the same root key, accounts, devices and queues
            self.root, self._static, self.cert_chain = persist.restore_keys(saved)
            persist.restore_world(self.world, saved["world"])
        else:
            self.root = curve.generate_keypair(self.rng)
            self._static = curve.generate_keypair(self.rng)
            intermediate = curve.generate_keypair(self.rng)
            issued = int(now())
            self.cert_chain = make_cert_chain(
                root_private=self.root.private,
                intermediate=intermediate,
                server_static=self._static.public,
                not_before=issued - 86400,
                not_after=issued + CERT_VALIDITY,
            )
        self._dirty = self.data_dir is not None
        self._saver: asyncio.Task[None] | None = None
        self._server: asyncio.Server | None = None
        self._peers: set[_Peer] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        if self._server is None:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}{WS_PATH}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def root_public_key(self) -> bytes:
        return self.root.public

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self._port)
        self.world.media_host = f"{self.host}:{self.port}"
        if self.data_dir is not None:
            self.save()
            self._saver = asyncio.create_task(self._autosave())

    def save(self) -> None:
        """Write the state to `--data DIR` now (atomic; see protocol.simulator.persist)."""
        if self.data_dir is None:
            return
        state = {
            "format": persist.FORMAT,
            "keys": persist.keys_state(self.root, self._static, self.cert_chain),
            "world": persist.world_state(self.world),
        }
        persist.save(self.data_dir, state)
        self._dirty = False

    async def _autosave(self) -> None:
        while True:
            await asyncio.sleep(SAVE_INTERVAL)  # a periodic timer, not synchronisation
            if self._dirty:
                self.save()

    async def stop(self) -> None:
        if self._saver is not None:
            self._saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._saver
            self._saver = None
        if self._server is not None:
            self._server.close()
        for peer in list(self._peers):
            peer.drop()
        if self._tasks:  # dropped sockets end their handlers; cancel only stragglers
            _, late = await asyncio.wait(list(self._tasks), timeout=STOP_GRACE)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self.save()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def serve_forever(self) -> None:
        await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    # ------------------------------------------------------------------ per connection

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > MAX_HEAD:
                return
            method, path, headers = _parse_head(head)
            if headers.get("upgrade", "").lower() == "websocket":
                await self._websocket(head, path, reader, writer)
            else:
                await self._http(method, path, headers, reader, writer)
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            ValueError,
        ):
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    async def _websocket(
        self, head: bytes, path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        proto = ServerProtocol(max_size=MAX_FRAME)
        proto.receive_data(head)
        request = next((e for e in proto.events_received() if isinstance(e, Request)), None)
        if request is None:
            return
        if path.split("?")[0] != WS_PATH:
            response = proto.reject(404, "not found\n")
        else:
            response = proto.accept(request)
        proto.send_response(response)
        writer.write(b"".join(proto.data_to_send()))
        if response.status_code != 101:
            return
        self.world.stats.connections += 1
        conn = ServerConnection(static=self._static, cert_chain=self.cert_chain, rng=self.rng)
        peer = _Peer(self, proto, conn, writer)
        self._peers.add(peer)
        pieces: list[bytes] = []
        try:
            while not peer.closed:
                data = await reader.read(READ_SIZE)
                if not data:
                    proto.receive_eof()
                    break
                if peer.stalled:
                    continue
                proto.receive_data(data)
                for event in proto.events_received():
                    if not isinstance(event, Frame):
                        continue
                    if event.opcode in (Opcode.BINARY, Opcode.TEXT, Opcode.CONT):
                        pieces.append(bytes(event.data))
                        if event.fin:
                            message, pieces = b"".join(pieces), []
                            self._on_ws_message(peer, message)
                peer._flush()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.world.disconnect(peer)
            self._peers.discard(peer)
            peer.close()
            await peer.wait_closed()

    def _on_ws_message(self, peer: _Peer, message: bytes) -> None:
        try:
            items, replies = peer.conn.receive_data(message)
        except (FrameError, HandshakeError) as exc:
            log.info("closing a client after %s", exc.code)
            self.world.disconnect(peer)
            peer.close()
            return
        for frame in replies:
            peer.send_frame(frame)
        for item in items:
            if self.data_dir is not None and not _is_ping(item):  # keepalives change nothing
                self._dirty = True
            if isinstance(item, ClientFinished):
                self.world.on_hello(peer, item)
            else:
                self.world.on_node(peer, item)

    # ------------------------------------------------------------------ HTTP

    async def _http(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        length = int(headers.get("content-length", "0") or 0)
        if length > MAX_BODY:
            _respond(writer, 413, {"error": "body too large"})
            return
        body = await reader.readexactly(length) if length else b""
        self._dirty = self.data_dir is not None
        try:
            status, payload = self.route(method, path, body)
        except ControlError as exc:
            status, payload = exc.status, {"error": exc.text}
        except (WhatsAppError, ValueError, KeyError, TypeError) as exc:
            status, payload = 400, {"error": f"bad request: {type(exc).__name__}"}
        if isinstance(payload, bytes):
            _respond_bytes(writer, status, payload)
        else:
            _respond(writer, status, payload)
        await writer.drain()

    def route(self, method: str, path: str, body: bytes) -> tuple[int, object]:
        """Serve one control/media request: (HTTP status, JSON value or raw bytes)."""
        path = path.partition("?")[0]
        parts = [p for p in path.split("/") if p]
        world = self.world
        data = json.loads(body) if body and parts[:1] == ["control"] else {}
        if parts[:1] == ["mms"] and method == "POST" and len(parts) >= 2:
            token = parts[-1]
            # SPEC §11.4: the token is base64url(fileEncSha256) of the body.
            if decode_upload_token(token) != hashlib.sha256(body).digest():
                raise ControlError(400, "token does not match the body")
            key = f"/mms/{parts[1]}/{token.rstrip('=')}"
            world.media[key] = body
            url = f"{self.http_url}{key}"
            return 200, {"url": url, "direct_path": key}
        if parts[:1] == ["mms"] and method == "GET":
            blob = world.media.get(path)
            if blob is None:
                raise ControlError(404, "no such media")
            return 200, blob
        if parts[:1] != ["control"]:
            raise ControlError(404, "not found")
        rest = parts[1:]
        if rest == ["info"] and method == "GET":
            return 200, {
                "ws_url": self.ws_url,
                "root_public_key": self.root_public_key.hex(),
                "dictionaries": [2, 3],
                "media_url": self.http_url,
            }
        if rest == ["stats"] and method == "GET":
            return 200, world.stats_json()
        if rest == ["accounts"] and method == "POST":
            phone = world.create_account(str(data["phone"]), data.get("name"))
            return 201, world.account_json(phone)
        if rest == ["faults"] and method == "POST":
            return 200, self.apply_fault(data)
        if len(rest) >= 2 and rest[0] == "accounts":
            number = rest[1]
            tail = rest[2:]
            if not tail and method == "GET":
                return 200, world.account_json(world.phone(number))
            if tail == ["link"] and method == "POST":
                if "qr" in data:
                    return 200, world.link_qr(number, str(data["qr"]))
                if "code" in data:
                    return 200, world.link_code(number, str(data["code"]))
                raise ControlError(400, "give qr or code")
            if tail == ["messages"] and method == "POST":
                return 200, {"id": world.phone_send(number, str(data["to"]), str(data["text"]))}
            if tail == ["messages"] and method == "GET":
                received = world.phone_messages(number)
                return 200, [
                    {"id": r.id, "from": r.sender, "text": r.text, "timestamp": r.timestamp}
                    for r in received
                ]
            if tail == ["receipts"] and method == "GET":
                return 200, world.phone(number).receipts
            if len(tail) == 3 and tail[0] == "devices" and tail[2] == "logout" and method == "POST":
                world.phone(number)
                jid = JID(number, DEFAULT_USER_SERVER, int(tail[1]))
                if not world.remove_device(jid):
                    raise ControlError(404, "no such companion")
                return 200, {"removed": str(jid)}
        raise ControlError(404, "not found")

    def peers_of(self, device: str) -> list[_Peer]:
        jid = parse_jid(device)
        return [p for p in self.world.online.get(jid, []) if isinstance(p, _Peer)]

    def apply_fault(self, data: dict[str, object]) -> dict[str, object]:
        """`POST /control/faults` (see the module docstring for the kinds)."""
        kind = FaultKind(str(data["kind"]))
        faults = self.world.faults
        device = str(data.get("device", ""))
        code = int(str(data.get("code", 0)))
        affected = 0
        if kind is FaultKind.CLEAR:
            self.world.faults = type(faults)()
            for peer in self._peers:
                peer.latency = 0.0
            return {"cleared": True}
        if kind is FaultKind.LATENCY:
            seconds = float(str(data.get("seconds", 0)))
            faults.latency[device] = seconds
            for peer in self.peers_of(device):
                peer.latency = seconds
                affected += 1
        elif kind in (FaultKind.DROP, FaultKind.STALL, FaultKind.STREAM_ERROR, FaultKind.GARBAGE):
            for peer in self.peers_of(device):
                affected += 1
                if kind is FaultKind.DROP:
                    self.world.disconnect(peer)
                    peer.drop()
                elif kind is FaultKind.STALL:
                    peer.stalled = True
                elif kind is FaultKind.GARBAGE:
                    peer.send_garbage()
                    peer.send_node(Node("bogus-stanza", {"x": "1"}, [Node("y", {}, b"\xff")]))
                    peer.send_node(Node("message", {"id": "garbage-1"}, b"not nodes"))
                else:
                    peer.send_node(Node("stream:error", {"code": str(code or 503)}))
                    self.world.disconnect(peer)
                    peer.close()
        elif kind is FaultKind.CORRUPT:
            target = str(self.world.resolve(parse_jid(device)))
            faults.corrupt[target] = int(str(data.get("count", 1)))
        elif kind is FaultKind.FORGET_SESSION:
            owner = self.world.phone(str(data["phone"]))
            address = str(self.world.resolve(parse_jid(str(data["peer"]))).signal_address())
            affected = int(signal_store.has_session(owner.store, address))
            owner.store.delete_sessions([address])
        elif kind is FaultKind.IQ_ERROR:
            faults.iq_errors[str(data["xmlns"])] = code or 500
        elif kind is FaultKind.REFUSE_LOGIN:
            phone = str(data["phone"])
            if data.get("off"):
                faults.refuse_logins.pop(phone, None)
            else:
                faults.refuse_logins[phone] = int(str(data.get("expire", 3600)))
        elif kind is FaultKind.ACK_ERROR:
            phone = str(data["phone"])
            if data.get("off"):
                faults.ack_errors.pop(phone, None)
            else:
                faults.ack_errors[phone] = code or 463
        return {"kind": kind.value, "affected": affected, "faults": asdict(faults)}


def _is_ping(item: ClientFinished | Node) -> bool:
    return isinstance(item, Node) and item.tag == "iq" and item.attr("xmlns") == "w:p"


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return method, path, headers


_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found", 409: "Conflict"}


def _respond(writer: asyncio.StreamWriter, status: int, payload: object) -> None:
    body = json.dumps(payload).encode()
    _write(writer, status, "application/json", body)


def _respond_bytes(writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
    _write(writer, status, "application/octet-stream", body)


def _write(writer: asyncio.StreamWriter, status: int, content_type: str, body: bytes) -> None:
    reason = _REASONS.get(status, "Error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
