"""Shared test data for the wire-layer tests: the vector files, the JSON form of nodes used by
the vectors and the node peer, and hypothesis strategies for nodes Baileys represents exactly."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from protocol.core import curve
from protocol.core.binary import Node
from protocol.core.binary.tokens import token_table
from protocol.core.curve import KeyPair
from protocol.core.jid import JID

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def load_vector(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


def kp(b: int) -> KeyPair:
    """SPEC §18.0 `kp(b)`: private key = 32 × byte b."""
    return curve.keypair_from_private(bytes([b]) * 32)


def node_from_json(obj: dict[str, Any]) -> Node:
    content = obj.get("content")
    value: bytes | str | list[Node] | None
    if content is None or isinstance(content, str):
        value = content
    elif isinstance(content, list):
        value = [node_from_json(c) for c in content]
    elif "hex" in content:
        value = bytes.fromhex(content["hex"])
    else:
        value = bytes.fromhex(content["repeat"]) * content["count"]
    return Node(obj["tag"], dict(obj.get("attrs") or {}), value)


def node_to_json(node: Node) -> dict[str, Any]:
    """JSON form with JID attribute values as their text (how Baileys sees them)."""
    content = node.content
    out: Any
    if content is None or isinstance(content, str):
        out = content
    elif isinstance(content, bytes):
        out = {"hex": content.hex()}
    else:
        out = [node_to_json(c) for c in content]
    return {"tag": node.tag, "attrs": {k: str(v) for k, v in node.attrs.items()}, "content": out}


# ---------------------------------------------------------------- strategies

_V3 = token_table(3)
_SINGLE = [s for s in _V3.single if s]
_DOUBLE = [s for table in _V3.double for s in table]
# Strings Baileys mis-encodes because its token map is a plain JS object (prototype members).
_JS_OBJECT_KEYS = frozenset(
    {
        "constructor",
        "__proto__",
        "toString",
        "valueOf",
        "hasOwnProperty",
        "isPrototypeOf",
        "propertyIsEnumerable",
        "toLocaleString",
        "__defineGetter__",
        "__defineSetter__",
        "__lookupGetter__",
        "__lookupSetter__",
    }
)

tokens = st.sampled_from(_SINGLE) | st.sampled_from(_DOUBLE)
nibbles = st.text(alphabet="0123456789-.", min_size=1, max_size=140)
hexes = st.text(alphabet="0123456789ABCDEF", min_size=1, max_size=140)
raw_text = st.text(
    alphabet=st.characters(blacklist_characters="@", blacklist_categories=["Cs"]), max_size=300
).filter(lambda s: s not in _JS_OBJECT_KEYS)
_users = st.text(alphabet="0123456789", min_size=1, max_size=20)
_servers = st.sampled_from(["s.whatsapp.net", "lid", "g.us", "broadcast", "newsletter", "c.us"])


@st.composite
def jid_texts(draw: st.DrawFn) -> str:
    """JID strings that survive Baileys' encode → decode unchanged (SPEC §5.1)."""
    server = draw(_servers)
    user = draw(_users | st.just(""))
    if user and server in ("s.whatsapp.net", "lid") and draw(st.booleans()):
        return f"{user}:{draw(st.integers(1, 255))}@{server}"
    if server == "broadcast" and draw(st.booleans()):
        return "status@broadcast"
    return f"{user}@{server}"


strings = tokens | nibbles | hexes | raw_text | jid_texts()
# Content strings that come back as strings: raw text is written BINARY_n, which is content
# bytes on the way back (SPEC §4.4), so only tokens, packed strings and JIDs qualify.
content_strings = (
    tokens
    | st.text(alphabet="0123456789-.", min_size=1, max_size=127)
    | st.text(alphabet="0123456789ABCDEF", min_size=1, max_size=127)
    | jid_texts()
)
# JS objects iterate integer-like keys first, so Baileys would write them in another order.
attr_keys = (
    tokens | st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
).filter(lambda k: not re.fullmatch(r"0|[1-9][0-9]*", k) and k not in _JS_OBJECT_KEYS)


@st.composite
def baileys_nodes(draw: st.DrawFn, depth: int = 0) -> Node:
    """Nodes Baileys can represent faithfully: string attrs (JID strings included), string,
    bytes or child-list content."""
    tag = draw(
        tokens
        | st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_:", min_size=1, max_size=10).filter(
            lambda t: t not in _JS_OBJECT_KEYS
        )
    )
    attrs = draw(st.dictionaries(attr_keys, strings, max_size=5))
    kinds = ["none", "bytes", "str"] + (["list"] if depth < 3 else [])
    kind = draw(st.sampled_from(kinds))
    content: bytes | str | list[Node] | None
    if kind == "none":
        content = None
    elif kind == "bytes":
        content = draw(st.binary(max_size=300))
    elif kind == "str":
        content = draw(content_strings)
    else:
        content = draw(st.lists(baileys_nodes(depth + 1), max_size=4))
    return Node(tag, attrs, content)


@st.composite
def typed_jids(draw: st.DrawFn) -> JID:
    server = draw(
        st.sampled_from(
            ["s.whatsapp.net", "lid", "g.us", "hosted", "hosted.lid", "msgr", "interop"]
        )
    )
    user = draw(_users)
    if server in ("msgr", "interop"):
        return JID(
            user,
            server,
            device=draw(st.integers(0, 0xFFFF)),
            integrator=draw(st.integers(0, 0xFFFF)) if server == "interop" else 0,
        )
    if server == "g.us":
        return JID(user, server)
    return JID(user, server, device=draw(st.integers(0, 255)))
