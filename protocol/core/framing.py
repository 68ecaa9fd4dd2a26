"""Transport framing (SPEC §2.2–§2.4): the connection intro and 3-byte length frames.

Owns: `encode_intro` (the client's `WA 06 <dict>` header with the optional `ED` routing-info
prefix), `encode_frame`, `FrameWriter` (the client role: intro on the first frame only) and
`FrameReader` (either role: an incremental reader that yields the same frames for any split of
the byte stream; in the server role it first parses the client's intro and reports the
dictionary version the client asked for).

Framing errors raise `FrameError` with a `reason` field: `bad_intro`, `unsupported_dict`,
`frame_too_large`, `stream_closed`.

Must not import: anything outside protocol.core (no I/O; callers pump bytes in and out).
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.core.errors import FrameError

# SPEC §2.3: intro = 'W' 'A' 0x06 DICT_VERSION (Baileys `NOISE_WA_HEADER`, whatsmeow
# `WAConnHeader`).
WA_MAGIC = b"WA\x06"
WA_HEADER_LEN = 4
DEFAULT_DICT_VERSION = 3
SUPPORTED_DICT_VERSIONS = (2, 3)
# SPEC §2.4: 'E' 'D' 0x00 0x01, then a 3-byte big-endian length and the routing info.
ED_MAGIC = b"ED\x00\x01"
ED_PREFIX_LEN = 7
# SPEC §2.2: 3-byte big-endian length; whatsmeow refuses to send >= 1 << 24.
LENGTH_SIZE = 3
MAX_FRAME_SIZE = (1 << 24) - 1


def wa_header(dict_version: int = DEFAULT_DICT_VERSION) -> bytes:
    """The 4-byte WA header, which is also the Noise prologue (SPEC §3.3)."""
    return WA_MAGIC + bytes((dict_version,))


def encode_intro(
    dict_version: int = DEFAULT_DICT_VERSION, routing_info: bytes | None = None
) -> bytes:
    """The client intro: optional `ED` routing prefix, then the WA header (SPEC §2.3, §2.4)."""
    header = wa_header(dict_version)
    if not routing_info:
        return header
    if len(routing_info) > MAX_FRAME_SIZE:
        raise FrameError("routing info too long", reason="frame_too_large", size=len(routing_info))
    return ED_MAGIC + len(routing_info).to_bytes(LENGTH_SIZE, "big") + routing_info + header


def encode_frame(payload: bytes, max_frame_size: int = MAX_FRAME_SIZE) -> bytes:
    """`LEN(3, BE) || payload` (SPEC §2.2)."""
    n = len(payload)
    if n > max_frame_size:
        raise FrameError("frame too large", reason="frame_too_large", size=n, limit=max_frame_size)
    return n.to_bytes(LENGTH_SIZE, "big") + payload


@dataclass(frozen=True, slots=True)
class Intro:
    """What a client's intro said (server role)."""

    dict_version: int
    routing_info: bytes | None

    @property
    def header(self) -> bytes:
        """The 4-byte WA header: the Noise prologue (SPEC §3.3, never the ED prefix)."""
        return wa_header(self.dict_version)


class FrameWriter:
    """Client-role writer: the intro goes in front of the first frame only (SPEC §2.3)."""

    __slots__ = ("_intro", "_max")

    def __init__(self, intro: bytes | None = None, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._intro = intro
        self._max = max_frame_size

    def frame(self, payload: bytes) -> bytes:
        data = encode_frame(payload, self._max)
        if self._intro is not None:
            data, self._intro = self._intro + data, None
        return data


class FrameReader:
    """Incremental frame reader: `feed(bytes)` returns the frames completed so far.

    With `expect_intro=True` (the server role) the stream must start with a client intro;
    `intro` is set once it has been read. A frame longer than `max_frame_size` raises
    `FrameError` as soon as its length is known, before its body arrives.
    """

    __slots__ = ("_buf", "_expect_intro", "_max", "intro")

    def __init__(self, *, expect_intro: bool = False, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._buf = bytearray()
        self._expect_intro = expect_intro
        self._max = max_frame_size
        self.intro: Intro | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        if self._expect_intro and not self._read_intro():
            return []
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= LENGTH_SIZE:
            n = int.from_bytes(buf[pos : pos + LENGTH_SIZE])
            if n > self._max:
                raise FrameError(
                    "frame too large", reason="frame_too_large", size=n, limit=self._max
                )
            if end - pos - LENGTH_SIZE < n:
                break
            start = pos + LENGTH_SIZE
            frames.append(bytes(buf[start : start + n]))
            pos = start + n
        if pos:
            del buf[:pos]
        return frames

    def _read_intro(self) -> bool:
        """Parse the intro from the buffer; False while more bytes are needed."""
        buf = self._buf
        if not buf:
            return False
        routing: bytes | None = None
        offset = 0
        if buf[0] == ED_MAGIC[0]:
            k = min(len(buf), len(ED_MAGIC))
            if buf[:k] != ED_MAGIC[:k]:
                raise FrameError("bad routing-info prefix", reason="bad_intro")
            if len(buf) < ED_PREFIX_LEN:
                return False
            n = int.from_bytes(buf[len(ED_MAGIC) : ED_PREFIX_LEN])
            if n > self._max:
                raise FrameError("routing info too long", reason="frame_too_large", size=n)
            if len(buf) < ED_PREFIX_LEN + n:
                return False
            routing = bytes(buf[ED_PREFIX_LEN : ED_PREFIX_LEN + n])
            offset = ED_PREFIX_LEN + n
        head = bytes(buf[offset : offset + WA_HEADER_LEN])
        k = min(len(head), len(WA_MAGIC))
        if head[:k] != WA_MAGIC[:k]:
            raise FrameError("bad intro header", reason="bad_intro", got=head.hex())
        if len(head) < WA_HEADER_LEN:
            return False
        version = head[3]
        if version not in SUPPORTED_DICT_VERSIONS:
            raise FrameError(
                "unsupported dictionary version", reason="unsupported_dict", version=version
            )
        self.intro = Intro(version, routing)
        self._expect_intro = False
        del buf[: offset + WA_HEADER_LEN]
        return True
