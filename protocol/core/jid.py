"""JIDs: WhatsApp addresses as a typed value, their text form and their Signal address.

Owns: the `JID` value, the server constants, `parse_jid` / `str(jid)`, and the mapping to the
Signal protocol address (SPEC §5.2). The binary codec (protocol.core.binary) writes and reads
the wire forms (JID_PAIR, AD_JID, FB_JID, INTEROP_JID, SPEC §5.1) of these values.

Text forms (SPEC §5.1; whatsmeow `types/jid.go` `ParseJID`/`String`, Baileys `jid-utils.ts`):

    user@server                   phone user, group (`123-456@g.us`), `status@broadcast`, …
    user:device@server            a device of a user (`:0` is omitted when formatting)
    user.agent:device@server      raw agent byte of an AD_JID with an unknown domain type
    user:device@msgr              Messenger (FB_JID); the device is always written
    integrator-user:device@interop interop (INTEROP_JID)
    @s.whatsapp.net               a server JID (empty user)

Must not import: anything outside protocol.core.errors (pure values).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocol.core.errors import DecodeError

# Servers (SPEC §5.1; whatsmeow `types/jid.go`).
DEFAULT_USER_SERVER = "s.whatsapp.net"
GROUP_SERVER = "g.us"
LEGACY_USER_SERVER = "c.us"
BROADCAST_SERVER = "broadcast"
HIDDEN_USER_SERVER = "lid"
NEWSLETTER_SERVER = "newsletter"
HOSTED_SERVER = "hosted"
HOSTED_LID_SERVER = "hosted.lid"
BOT_SERVER = "bot"
MESSENGER_SERVER = "msgr"
INTEROP_SERVER = "interop"

# AD_JID domain types (SPEC §5.1 table; Baileys `WAJIDDomains`, whatsmeow `*Domain`).
WHATSAPP_DOMAIN = 0
LID_DOMAIN = 1
HOSTED_DOMAIN = 128
HOSTED_LID_DOMAIN = 129

SERVER_BY_DOMAIN: dict[int, str] = {
    LID_DOMAIN: HIDDEN_USER_SERVER,
    HOSTED_DOMAIN: HOSTED_SERVER,
    HOSTED_LID_DOMAIN: HOSTED_LID_SERVER,
}
DOMAIN_BY_SERVER: dict[str, int] = {server: domain for domain, server in SERVER_BY_DOMAIN.items()}

# Field ranges on the wire: AD_JID device and agent are one byte; FB/INTEROP device and
# integrator two bytes (SPEC §4.2, §5.1).
MAX_AGENT = 0xFF
MAX_DEVICE = 0xFFFF
MAX_INTEGRATOR = 0xFFFF

_NUMBER = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True, slots=True)
class JID:
    """A WhatsApp address. `device`/`agent`/`integrator` are 0 when absent."""

    user: str
    server: str
    device: int = 0
    agent: int = 0
    integrator: int = 0

    def __str__(self) -> str:
        if self.server == MESSENGER_SERVER:
            return f"{self.user}:{self.device}@{self.server}"
        if self.server == INTEROP_SERVER:
            return f"{self.integrator}-{self.user}:{self.device}@{self.server}"
        user = self.user
        if self.agent:
            user = f"{user}.{self.agent}"
        if self.device:
            user = f"{user}:{self.device}"
        return f"{user}@{self.server}"

    @property
    def domain_type(self) -> int:
        """The AD_JID domain byte: from the server for LID/hosted, else the raw agent."""
        return DOMAIN_BY_SERVER.get(self.server, self.agent)

    @property
    def is_group(self) -> bool:
        return self.server == GROUP_SERVER

    @property
    def is_broadcast(self) -> bool:
        return self.server == BROADCAST_SERVER

    @property
    def is_status_broadcast(self) -> bool:
        return self.server == BROADCAST_SERVER and self.user == "status"

    @property
    def is_lid(self) -> bool:
        return self.server in (HIDDEN_USER_SERVER, HOSTED_LID_SERVER)

    @property
    def is_user(self) -> bool:
        """A phone-number (PN) or LID user, possibly a device of one."""
        return bool(self.user) and self.server in (
            DEFAULT_USER_SERVER,
            HIDDEN_USER_SERVER,
            HOSTED_SERVER,
            HOSTED_LID_SERVER,
        )

    @property
    def is_server(self) -> bool:
        """The server itself (`@s.whatsapp.net`): empty user."""
        return not self.user

    def to_non_ad(self) -> JID:
        """The user without device and agent (`123:4@s.whatsapp.net` → `123@s.whatsapp.net`)."""
        if not (self.device or self.agent):
            return self
        return JID(self.user, self.server, integrator=self.integrator)

    def with_device(self, device: int) -> JID:
        return JID(self.user, self.server, device, self.agent, self.integrator)

    def signal_address(self) -> SignalAddress:
        """The Signal protocol address of this device (SPEC §5.2)."""
        domain = self.domain_type
        name = self.user if domain == WHATSAPP_DOMAIN else f"{self.user}_{domain}"
        return SignalAddress(name, self.device)


@dataclass(frozen=True, slots=True)
class SignalAddress:
    """libsignal `ProtocolAddress`: string form `name.device_id` (SPEC §5.2)."""

    name: str
    device_id: int

    def __str__(self) -> str:
        return f"{self.name}.{self.device_id}"


SERVER_JID = JID("", DEFAULT_USER_SERVER)  # SPEC §1 `S`: `@s.whatsapp.net`, wire FA 00 03
STATUS_BROADCAST_JID = JID("status", BROADCAST_SERVER)


def _number(text: str, limit: int, what: str, jid: str) -> int:
    if not _NUMBER.fullmatch(text) or int(text) > limit:
        raise DecodeError("invalid JID number", jid=jid, part=what, value=text)
    return int(text)


def parse_jid(text: str) -> JID:
    """Parse a JID's text form (module docstring); raise `DecodeError` for anything else."""
    user_part, at, server = text.partition("@")
    if not at or not server or "@" in server or ":" in server:
        raise DecodeError("invalid JID: needs exactly one '@' and a server", jid=text)
    device = agent = integrator = 0
    if server in (MESSENGER_SERVER, INTEROP_SERVER):
        user, colon, dev = user_part.rpartition(":")
        if not colon:
            raise DecodeError("invalid JID: device required for this server", jid=text)
        device = _number(dev, MAX_DEVICE, "device", text)
        if server == INTEROP_SERVER:
            integ, dash, user = user.partition("-")
            if not dash:
                raise DecodeError("invalid JID: integrator required", jid=text)
            integrator = _number(integ, MAX_INTEGRATOR, "integrator", text)
    else:
        user, colon, dev = user_part.partition(":")
        if colon:
            device = _number(dev, MAX_DEVICE, "device", text)
        if "." in user:
            user, _, raw_agent = user.partition(".")
            agent = _number(raw_agent, MAX_AGENT, "agent", text)
    if ":" in user:
        raise DecodeError("invalid JID: more than one ':'", jid=text)
    if (device or agent) and not user:
        raise DecodeError("invalid JID: device without user", jid=text)
    return JID(user, server, device, agent, integrator)


def jid(value: str | JID) -> JID:
    """A `JID` from either a typed value or its text form."""
    return value if isinstance(value, JID) else parse_jid(value)
