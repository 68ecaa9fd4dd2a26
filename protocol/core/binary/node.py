"""The binary XML node value (SPEC §4.4) and its log-friendly XML-like text form."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias
from xml.sax.saxutils import quoteattr

from protocol.core.jid import JID

AttrValue: TypeAlias = str | JID
Content: TypeAlias = "bytes | str | list[Node] | None"

# Log form: binary content longer than this is shown as its length and a hex prefix.
REPR_BYTES_PREFIX = 16
REPR_TEXT_MAX = 200


@dataclass(frozen=True, slots=True, repr=False)
class Node:
    """`<tag attrs…>content</tag>`.

    Attribute values are strings, or `JID`s (written as JID_PAIR/AD_JID/… on the wire, which
    whatsmeow peers require for address attributes, SPEC §5.1). Content is absent (`None`),
    bytes (BINARY_8/20/32), a string (token/packed/raw/JID text) or a list of child nodes.
    The decoder returns JID-valued attributes as `JID`, every other value as `str`.
    """

    tag: str
    attrs: Mapping[str, AttrValue] = field(default_factory=dict)
    content: Content = None

    @property
    def children(self) -> list[Node]:
        """The child nodes (empty when the content is not a list)."""
        return self.content if isinstance(self.content, list) else []

    def child(self, tag: str) -> Node | None:
        """The first child with this tag, if any."""
        for c in self.children:
            if c.tag == tag:
                return c
        return None

    def children_by_tag(self, tag: str) -> Iterator[Node]:
        return (c for c in self.children if c.tag == tag)

    def attr(self, key: str) -> str | None:
        """An attribute as text (JIDs formatted), or None when absent."""
        value = self.attrs.get(key)
        return None if value is None else str(value)

    def __repr__(self) -> str:
        return self.to_xml()

    def to_xml(self, indent: int | None = None, _level: int = 0) -> str:
        """Readable XML-like text; bytes shown as `[N bytes: hexprefix…]`, never in full."""
        pad = "" if indent is None else " " * (indent * _level)
        attrs = "".join(f" {k}={quoteattr(str(v))}" for k, v in self.attrs.items())
        content = self.content
        if content is None:
            return f"{pad}<{self.tag}{attrs}/>"
        if isinstance(content, list):
            if not content:
                return f"{pad}<{self.tag}{attrs}></{self.tag}>"
            sep = "" if indent is None else "\n"
            inner = sep.join(c.to_xml(indent, _level + 1) for c in content)
            return f"{pad}<{self.tag}{attrs}>{sep}{inner}{sep}{pad}</{self.tag}>"
        if isinstance(content, bytes):
            more = "…" if len(content) > REPR_BYTES_PREFIX else ""
            body = f"[{len(content)} bytes: {content[:REPR_BYTES_PREFIX].hex()}{more}]"
        else:
            body = content if len(content) <= REPR_TEXT_MAX else content[:REPR_TEXT_MAX] + "…"
        return f"{pad}<{self.tag}{attrs}>{body}</{self.tag}>"
