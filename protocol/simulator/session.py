"""The server side of one socket as a sans-I/O state machine (SPEC §2, §3, §17 items 1–2).

`ServerConnection.receive_data(bytes)` returns what arrived: one `ClientFinished` when the
handshake completes (the client's noise key and ClientPayload), then `Node`s. `send(node)`
returns the bytes of one transport frame. Token dictionary: whatever the intro asked for (2 or
3). Undecodable frames are counted and dropped.

Must not import: asyncio, websockets (the server module pumps the bytes).
"""

from __future__ import annotations

import enum
import logging

from protocol.core import curve
from protocol.core.binary import BinaryCodec, Node
from protocol.core.curve import KeyPair
from protocol.core.errors import DecodeError, FrameError, HandshakeError
from protocol.core.framing import FrameReader, encode_frame
from protocol.core.inject import Rng
from protocol.core.noise import ClientFinished, NoiseResponder, NoiseTransport

log = logging.getLogger(__name__)


class ServerState(enum.Enum):
    INTRO = "intro"
    HELLO = "hello"
    FINISH = "finish"
    OPEN = "open"
    FAILED = "failed"


class ServerConnection:
    """One client socket on the server side. See the module docstring."""

    __slots__ = (
        "_cert",
        "_codec",
        "_reader",
        "_responder",
        "_rng",
        "_static",
        "_transport",
        "bad_frames",
        "dict_version",
        "state",
    )

    def __init__(self, *, static: KeyPair, cert_chain: bytes, rng: Rng) -> None:
        self._static = static
        self._cert = cert_chain
        self._rng = rng
        self._reader = FrameReader(expect_intro=True)
        self._responder: NoiseResponder | None = None
        self._transport: NoiseTransport | None = None
        self._codec = BinaryCodec(3)
        self.dict_version = 3
        self.state = ServerState.INTRO
        self.bad_frames = 0

    def receive_data(self, data: bytes) -> tuple[list[ClientFinished | Node], list[bytes]]:
        """(what arrived, frames to send back). Raises FrameError/HandshakeError: drop socket."""
        if self.state is ServerState.FAILED:
            return [], []
        items: list[ClientFinished | Node] = []
        replies: list[bytes] = []
        try:
            frames = self._reader.feed(data)
        except FrameError:
            self.state = ServerState.FAILED
            raise
        for frame in frames:
            if self._responder is None:
                intro = self._reader.intro
                assert intro is not None
                self.dict_version = intro.dict_version
                self._codec = BinaryCodec(intro.dict_version)
                self._responder = NoiseResponder(
                    self._static,
                    curve.generate_keypair(self._rng),
                    self._cert,
                    prologue=intro.header,
                )
                try:
                    self._responder.read_client_hello(frame)
                except HandshakeError:
                    self.state = ServerState.FAILED
                    raise
                replies.append(encode_frame(self._responder.server_hello()))
                self.state = ServerState.FINISH
            elif self._transport is None:
                try:
                    finished = self._responder.read_client_finish(frame)
                except HandshakeError:
                    self.state = ServerState.FAILED
                    raise
                self._transport = finished.transport
                self.state = ServerState.OPEN
                items.append(finished)
            else:
                try:
                    items.append(self._codec.decode(self._transport.recv.decrypt(frame)))
                except (FrameError, DecodeError) as exc:
                    self.bad_frames += 1
                    log.info("dropped a bad frame from a client: %s", exc.code)
        return items, replies

    def send(self, node: Node) -> bytes:
        if self._transport is None:
            raise HandshakeError("no transport yet", reason="not_open")
        return encode_frame(self._transport.send.encrypt(self._codec.encode(node)))

    def send_raw_body(self, body: bytes) -> bytes:
        """An encrypted frame with an arbitrary body (for fault injection of garbage)."""
        if self._transport is None:
            raise HandshakeError("no transport yet", reason="not_open")
        return encode_frame(self._transport.send.encrypt(body))
