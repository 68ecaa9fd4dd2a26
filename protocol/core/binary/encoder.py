"""Node → bytes, byte-identical with Baileys' `encodeBinaryNode` (SPEC §4.4, §4.5).

String preference (Baileys `writeString`, rc14 `lib/WABinary/encode.js`): `""` → BINARY_8 00;
token; double token; nibble; hex; text containing `@` → JID in Baileys' reading of the text
(split at the first `@`, then `:device`, then `_agent`; raw if nothing follows the `@`,
which Baileys would write as an undecodable JID); raw UTF-8. Typed `JID` values are
written by whatsmeow's rule (`writeJID`): FB_JID for `msgr`, INTEROP_JID for `interop`, AD_JID
for a device/agent on a PN/LID server or any hosted JID, JID_PAIR otherwise (see `_write_jid`
for the two cases whatsmeow cannot express).

Programming errors (a value of the wrong type, a device that does not fit its byte) raise
`TypeError`/`ValueError`: they are bugs in the caller, not bad input from the network.
"""

from __future__ import annotations

import re

from protocol.core.binary.node import Node
from protocol.core.binary.tokens import TokenTable
from protocol.core.jid import (
    DEFAULT_USER_SERVER,
    DOMAIN_BY_SERVER,
    HIDDEN_USER_SERVER,
    HOSTED_LID_SERVER,
    HOSTED_SERVER,
    INTEROP_SERVER,
    JID,
    MESSENGER_SERVER,
)

# Tag bytes (SPEC §4.2).
LIST_EMPTY = 0
INTEROP_JID = 245
FB_JID = 246
AD_JID = 247
LIST_8 = 248
LIST_16 = 249
JID_PAIR = 250
HEX_8 = 251
BINARY_8 = 252
BINARY_20 = 253
BINARY_32 = 254
NIBBLE_8 = 255
PACKED_MAX = 127

# Flags byte of an uncompressed frame body (SPEC §4.1: both clients always send 0).
FLAGS_NONE = b"\x00"

_NIBBLE = re.compile(r"[0-9.\-]{1,127}")
_HEX = re.compile(r"[0-9A-F]{1,127}")
_TO_HEX_DIGITS = str.maketrans({"-": "a", ".": "b"})
_EMPTY_STRING = bytes((BINARY_8, 0))
_LEADING_INT = re.compile(r"\s*([+-]?[0-9]+)")
_DECIMAL = re.compile(r"([+-]?[0-9]+)(?:\.[0-9]*)?")


def _write_length(out: bytearray, n: int) -> None:
    # `writeByteLength` (SPEC §4.2): < 256 → BINARY_8, < 2^20 → BINARY_20, else BINARY_32.
    if n < 256:
        out.append(BINARY_8)
        out.append(n)
    elif n < 1 << 20:
        out.append(BINARY_20)
        out += (n & 0xFFFFF).to_bytes(3, "big")
    elif n < 1 << 32:
        out.append(BINARY_32)
        out += n.to_bytes(4, "big")
    else:
        raise ValueError(f"binary value too large to encode: {n} bytes")


def _write_list_start(out: bytearray, n: int) -> None:
    if n == 0:
        out.append(LIST_EMPTY)
    elif n < 256:
        out.append(LIST_8)
        out.append(n)
    elif n < 1 << 16:
        out.append(LIST_16)
        out += n.to_bytes(2, "big")
    else:
        raise ValueError(f"list too long to encode: {n} items")


def _write_string(out: bytearray, s: str, encoded: dict[str, bytes]) -> None:
    token = encoded.get(s)
    if token is not None:
        out += token
        return
    n = len(s)
    if n == 0:
        out += _EMPTY_STRING
        return
    if n <= PACKED_MAX:
        if _NIBBLE.fullmatch(s):
            out.append(NIBBLE_8)
            out.append((n + 1) // 2 | (0x80 if n & 1 else 0))
            digits = s.translate(_TO_HEX_DIGITS)
            out += bytes.fromhex(digits + "f" if n & 1 else digits)
            return
        if _HEX.fullmatch(s):
            out.append(HEX_8)
            out.append((n + 1) // 2 | (0x80 if n & 1 else 0))
            out += bytes.fromhex(s + "F" if n & 1 else s)
            return
    at = s.find("@")
    if 0 <= at < n - 1:
        _write_text_jid(out, s, encoded)
        return
    # Deviation from Baileys: text whose '@' is its last character would be a JID_PAIR with an
    # empty server, which no decoder accepts (SPEC §5.1 readJidPair); it is written raw instead.
    raw = s.encode()
    _write_length(out, len(raw))
    out += raw


def _js_parse_int(text: str) -> int:
    """JS `parseInt(text) || 0` as one byte: Baileys' agent → domainType (`jid-utils.js`)."""
    m = _LEADING_INT.match(text)
    return int(m.group(1)) & 0xFF if m else 0


def _js_number(text: str) -> int:
    """JS `(+text || 0) & 0xff` for decimal text: Baileys' device byte. Other numeric syntaxes
    JS would accept (hex, exponents) count as 0 here; no client writes them in a JID."""
    m = _DECIMAL.fullmatch(text.strip())
    return int(m.group(1)) & 0xFF if m else 0


def _write_text_jid(out: bytearray, s: str, encoded: dict[str, bytes]) -> None:
    # Baileys `jidDecode` (rc14 `lib/WABinary/jid-utils.js`) then `writeJid`.
    user_combined, _, server = s.partition("@")
    parts = user_combined.split(":")
    device = parts[1] if len(parts) > 1 else ""
    user_agent = parts[0].split("_")
    user = user_agent[0]
    if device:
        domain = DOMAIN_BY_SERVER.get(server)
        if domain is None:
            domain = _js_parse_int(user_agent[1]) if len(user_agent) > 1 else 0
        out.append(AD_JID)
        out.append(domain)
        out.append(_js_number(device))
        _write_string(out, user, encoded)
    else:
        out.append(JID_PAIR)
        if user:
            _write_string(out, user, encoded)
        else:
            out.append(LIST_EMPTY)
        _write_string(out, server, encoded)


_AD_SERVERS = frozenset({DEFAULT_USER_SERVER, HIDDEN_USER_SERVER, HOSTED_SERVER, HOSTED_LID_SERVER})


def _write_jid(out: bytearray, jid: JID, encoded: dict[str, bytes]) -> None:
    # whatsmeow `writeJID` (SPEC §5.1), extended so every value the decoder can produce is
    # written in a form that decodes back to it: a device that does not fit AD_JID's byte, or a
    # device on a server without an AD domain, uses the FB_JID layout (user, 2-byte device,
    # server string), which carries any server.
    server = jid.server
    if not server:
        raise ValueError(f"JID without a server: {jid!r}")
    if server == INTEROP_SERVER or jid.integrator:
        out.append(INTEROP_JID)
        _write_string(out, jid.user, encoded)
        out += jid.device.to_bytes(2, "big")
        out += jid.integrator.to_bytes(2, "big")
        _write_string(out, server, encoded)
    elif server == MESSENGER_SERVER or (
        jid.device and (jid.device > 0xFF or server not in _AD_SERVERS)
    ):
        out.append(FB_JID)
        _write_string(out, jid.user, encoded)
        out += jid.device.to_bytes(2, "big")
        _write_string(out, server, encoded)
    elif server in _AD_SERVERS and (
        jid.device or jid.agent or server in (HOSTED_SERVER, HOSTED_LID_SERVER)
    ):
        out.append(AD_JID)
        out.append(jid.domain_type)
        out.append(jid.device)
        _write_string(out, jid.user, encoded)
    else:
        out.append(JID_PAIR)
        if jid.user:
            _write_string(out, jid.user, encoded)
        else:
            out.append(LIST_EMPTY)
        _write_string(out, server, encoded)


def write_node(out: bytearray, node: Node, table: TokenTable) -> None:
    """Append the encoding of `node` (without the flags byte) to `out`."""
    encoded = table.encoded
    attrs = node.attrs
    content = node.content
    _write_list_start(out, 2 * len(attrs) + 1 + (content is not None))
    _write_string(out, node.tag, encoded)
    for key, value in attrs.items():
        _write_string(out, key, encoded)
        if type(value) is str:
            _write_string(out, value, encoded)
        elif isinstance(value, JID):
            _write_jid(out, value, encoded)
        else:
            raise TypeError(f"attribute {key!r} of <{node.tag}>: {type(value).__name__}")
    if content is None:
        return
    if isinstance(content, list):
        _write_list_start(out, len(content))
        for child in content:
            write_node(out, child, table)
    elif isinstance(content, bytes | bytearray | memoryview):
        _write_length(out, len(content))
        out += content
    elif isinstance(content, str):
        _write_string(out, content, encoded)
    else:
        raise TypeError(f"content of <{node.tag}>: {type(content).__name__}")


def encode_string(s: str, table: TokenTable) -> bytes:
    """One string in its wire form (exposed for tests and the benchmark)."""
    out = bytearray()
    _write_string(out, s, table.encoded)
    return bytes(out)
