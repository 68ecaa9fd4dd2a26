"""bytes → Node (SPEC §4.1–§4.5, §5.1), the hot path of every session.

Reads plain `bytes` with integer indexing and returns `(value, next_offset)` pairs from
module-level functions (no per-byte method calls); packed strings are unpacked with
`bytes.hex()` plus `str.translate` instead of a per-nibble loop. End of data shows up as an
`IndexError` from indexing, turned into `DecodeError` once at the top.

Garbage raises `DecodeError` (with `offset`) and nothing else: nesting is bounded
(`MAX_DEPTH`), compressed bodies are inflated with a size bound, and trailing bytes after the
root node are refused (as whatsmeow does).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from protocol.core.binary.encoder import (
    AD_JID,
    BINARY_8,
    BINARY_20,
    BINARY_32,
    FB_JID,
    HEX_8,
    INTEROP_JID,
    JID_PAIR,
    LIST_8,
    LIST_16,
    LIST_EMPTY,
    NIBBLE_8,
)
from protocol.core.binary.node import AttrValue, Content, Node
from protocol.core.binary.tokens import DICTIONARY_0, TokenTable
from protocol.core.errors import DecodeError
from protocol.core.jid import DEFAULT_USER_SERVER, INTEROP_SERVER, JID, SERVER_BY_DOMAIN

# Flags byte bit meaning "the rest is zlib-compressed" (SPEC §4.1).
FLAG_COMPRESSED = 0x02
# Bound on nested lists / nested JIDs, far above anything the clients send.
MAX_DEPTH = 64
# Default bound on an inflated body: the largest frame a peer may send (SPEC §2.1, 16 MiB).
DEFAULT_MAX_DECOMPRESSED = 1 << 24

_DICTIONARY_3 = DICTIONARY_0 + 3
# Nibble alphabet (SPEC §4.5): hex digits a/b are '-'/'.', f is the '\0' pad; c/d/e are
# invalid and become "!", which cannot otherwise appear, so one substring test finds them.
_NIBBLE_FROM_HEX = str.maketrans({"a": "-", "b": ".", "f": "\0", "c": "!", "d": "!", "e": "!"})


class _Truncated(Exception):
    """Internal: a length field points past the end of the data."""


def _read_bytes(data: bytes, pos: int, n: int) -> tuple[bytes, int]:
    end = pos + n
    if end > len(data):
        raise _Truncated
    return data[pos:end], end


def _read_packed(data: bytes, pos: int, tag: int) -> tuple[str, int]:
    start = data[pos]
    raw, pos = _read_bytes(data, pos + 1, start & 0x7F)
    if tag == NIBBLE_8:
        text = raw.hex().translate(_NIBBLE_FROM_HEX)
        if "!" in text:
            raise DecodeError("invalid nibble", offset=pos)
    else:
        text = raw.hex().upper()
    if start & 0x80:
        text = text[:-1]
    return text, pos


def _read_string(data: bytes, pos: int, t: TokenTable, depth: int) -> tuple[str | JID, int]:
    """A string at `pos` (its tag byte included); JID forms come back as `JID`."""
    tag = data[pos]
    pos += 1
    if 0 < tag < DICTIONARY_0:
        return t.single[tag], pos
    if tag in (JID_PAIR, AD_JID, FB_JID, INTEROP_JID):
        if depth >= MAX_DEPTH:
            raise DecodeError("JIDs nested too deeply", offset=pos)
        return _read_jid(data, pos, tag, t, depth + 1)
    if tag in (NIBBLE_8, HEX_8):
        return _read_packed(data, pos, tag)
    if tag == BINARY_8:
        raw, pos = _read_bytes(data, pos + 1, data[pos])
        return raw.decode("utf-8", "replace"), pos
    if tag <= _DICTIONARY_3:
        if tag == LIST_EMPTY:
            return "", pos
        table = t.double[tag - DICTIONARY_0]
        return table[data[pos]], pos + 1
    if tag == BINARY_20:
        n = ((data[pos] & 0x0F) << 16) | (data[pos + 1] << 8) | data[pos + 2]
        raw, pos = _read_bytes(data, pos + 3, n)
        return raw.decode("utf-8", "replace"), pos
    if tag == BINARY_32:
        raw, pos = _read_bytes(data, pos + 4, int.from_bytes(_read_bytes(data, pos, 4)[0]))
        return raw.decode("utf-8", "replace"), pos
    raise DecodeError("invalid string tag", offset=pos - 1, tag=tag)


def _text(value: str | JID) -> str:
    return value if type(value) is str else str(value)


def _read_jid(data: bytes, pos: int, tag: int, t: TokenTable, depth: int) -> tuple[JID, int]:
    if tag == JID_PAIR:
        user, pos = _read_string(data, pos, t, depth)
        b = data[pos]
        if 0 < b < DICTIONARY_0:  # the server is nearly always a single-byte token
            return JID(_text(user), t.single[b]), pos + 1
        server, pos = _read_string(data, pos, t, depth)
        if not server:
            raise DecodeError("invalid JID pair: empty server", offset=pos)
        return JID(_text(user), _text(server)), pos
    if tag == AD_JID:
        domain = data[pos]
        device = data[pos + 1]
        user, pos = _read_string(data, pos + 2, t, depth)
        known = SERVER_BY_DOMAIN.get(domain)
        if known is None:  # WhatsApp domain, or an unknown one kept as the raw agent
            return JID(_text(user), DEFAULT_USER_SERVER, device, domain), pos
        return JID(_text(user), known, device), pos
    user, pos = _read_string(data, pos, t, depth)
    device = int.from_bytes(_read_bytes(data, pos, 2)[0])
    pos += 2
    if tag == FB_JID:
        server, pos = _read_string(data, pos, t, depth)
        if not server:
            raise DecodeError("invalid FB JID: empty server", offset=pos)
        return JID(_text(user), _text(server), device), pos
    integrator = int.from_bytes(_read_bytes(data, pos, 2)[0])
    pos += 2
    # Baileys tolerates a missing server string after an interop JID (SPEC §5.1).
    server_text = INTEROP_SERVER
    if pos < len(data):
        try:
            value, after = _read_string(data, pos, t, depth)
        except (DecodeError, IndexError, _Truncated):
            pass
        else:
            pos = after
            server_text = _text(value) or INTEROP_SERVER
    return JID(_text(user), server_text, device, integrator=integrator), pos


# Frozen dataclasses assign fields through object.__setattr__ in __init__; on this hot path
# the decoder fills the slots directly through their descriptors (same resulting value, about
# a third of the cost per node).
def _slot_setter(cls: type, name: str) -> Callable[[object, object], None]:
    setter: Callable[[object, object], None] = vars(cls)[name].__set__
    return setter


_new = object.__new__
_set_tag = _slot_setter(Node, "tag")
_set_attrs = _slot_setter(Node, "attrs")
_set_content = _slot_setter(Node, "content")


def _read_node(data: bytes, pos: int, t: TokenTable, depth: int) -> tuple[Node, int]:
    if depth >= MAX_DEPTH:
        raise DecodeError("nodes nested too deeply", offset=pos)
    single = t.single
    b = data[pos]
    if b == LIST_8:
        size = data[pos + 1]
        pos += 2
    elif b == LIST_16:
        size = (data[pos + 1] << 8) | data[pos + 2]
        pos += 3
    elif b == LIST_EMPTY:
        raise DecodeError("invalid node: empty list", offset=pos)
    else:
        raise DecodeError("invalid list tag", offset=pos, tag=b)
    if size == 0:
        raise DecodeError("invalid node: empty list", offset=pos)
    # Strings are read inline when they are single-byte tokens (most tags, keys and values).
    b = data[pos]
    if 0 < b < DICTIONARY_0:
        tag = single[b]
        pos += 1
    else:
        value, pos = _read_string(data, pos, t, depth)
        tag = value if type(value) is str else str(value)
        if not tag:
            raise DecodeError("invalid node: empty tag", offset=pos)
    attrs: dict[str, AttrValue] = {}
    for _ in range((size - 1) >> 1):
        b = data[pos]
        if 0 < b < DICTIONARY_0:
            key = single[b]
            pos += 1
        else:
            value, pos = _read_string(data, pos, t, depth)
            key = value if type(value) is str else str(value)
        b = data[pos]
        if 0 < b < DICTIONARY_0:
            attrs[key] = single[b]
            pos += 1
        else:
            attrs[key], pos = _read_string(data, pos, t, depth)
    content: Content = None
    if not size & 1:
        b = data[pos]
        if b in (LIST_8, LIST_EMPTY, LIST_16):
            if b == LIST_8:
                count = data[pos + 1]
                pos += 2
            elif b == LIST_16:
                count = (data[pos + 1] << 8) | data[pos + 2]
                pos += 3
            else:
                count = 0
                pos += 1
            children = []
            for _ in range(count):
                child, pos = _read_node(data, pos, t, depth + 1)
                children.append(child)
            content = children
        elif b == BINARY_8:
            end = pos + 2 + data[pos + 1]
            if end > len(data):
                raise _Truncated
            content = data[pos + 2 : end]
            pos = end
        elif b == BINARY_20:
            n = ((data[pos + 1] & 0x0F) << 16) | (data[pos + 2] << 8) | data[pos + 3]
            content, pos = _read_bytes(data, pos + 4, n)
        elif b == BINARY_32:
            n = int.from_bytes(_read_bytes(data, pos + 1, 4)[0])
            content, pos = _read_bytes(data, pos + 5, n)
        else:
            value, pos = _read_string(data, pos, t, depth)
            content = value if type(value) is str else str(value)
    node = _new(Node)
    _set_tag(node, tag)
    _set_attrs(node, attrs)
    _set_content(node, content)
    return node, pos


def decode_node_body(data: bytes, table: TokenTable) -> Node:
    """Decode one node that fills `data` exactly (no flags byte)."""
    data = bytes(data)
    try:
        node, pos = _read_node(data, 0, table, 0)
    except (IndexError, _Truncated):
        raise DecodeError("unexpected end of node data", offset=len(data)) from None
    if pos != len(data):
        raise DecodeError("trailing bytes after node", offset=pos, trailing=len(data) - pos)
    return node


def unpack_body(data: bytes, max_decompressed: int = DEFAULT_MAX_DECOMPRESSED) -> bytes:
    """Strip the flags byte and inflate a compressed body, bounded (SPEC §4.1)."""
    if not data:
        raise DecodeError("empty frame body", offset=0)
    if not data[0] & FLAG_COMPRESSED:
        return bytes(data[1:])
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(bytes(data[1:]), max_decompressed)
    except zlib.error as exc:
        raise DecodeError("invalid zlib data", offset=1, reason=str(exc)) from None
    if inflater.unconsumed_tail:
        raise DecodeError("decompressed body too large", limit=max_decompressed)
    if not inflater.eof:
        raise DecodeError("truncated zlib data", offset=len(data))
    return out
