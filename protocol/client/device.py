"""The device credentials record: what a companion keeps between connections (SPEC §8.1, §8.4).

`Device` holds the noise key, the Signal identity and registration id, the adv secret, and,
once paired, our JID/LID, the signed ADV identity (`account`) and the phone's platform. It is
persisted as the `KeyStore` device blob: a small versioned JSON object with hex fields (the
SQL store encrypts it at rest). The signed prekey itself lives in the store's signed-prekey
table (protocol.signal_store.signed_prekey); the record names its id.

Must not import: asyncio, os, time, random, secrets (keys come from the injected rng).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from protocol import signal_store
from protocol.core import curve
from protocol.core.errors import DecodeError
from protocol.core.inject import Rng
from protocol.core.jid import JID, parse_jid
from protocol.core.signal import keys
from protocol.store import KeyStore

RECORD_VERSION = 1
ADV_SECRET_LEN = 32  # SPEC §8.1: 32 random bytes


@dataclass(frozen=True, slots=True)
class Device:
    """One companion device's credentials. Never logged: the repr shows only public facts."""

    noise_key: curve.KeyPair = field(repr=False)
    identity: keys.LocalIdentity = field(repr=False)
    signed_prekey_id: int
    adv_secret: bytes = field(repr=False)
    jid: JID | None = None
    lid: JID | None = None
    account: bytes | None = field(default=None, repr=False)  # ADVSignedDeviceIdentity, with key
    platform: str | None = None
    push_name: str | None = None

    @property
    def registered(self) -> bool:
        """Paired: the login payload applies (SPEC §7.1)."""
        return self.jid is not None and self.account is not None

    def paired(self, *, jid: JID, lid: JID | None, account: bytes, platform: str | None) -> Device:
        return replace(self, jid=jid, lid=lid, account=account, platform=platform)

    def with_adv_secret(self, adv_secret: bytes) -> Device:
        return replace(self, adv_secret=adv_secret)

    def to_bytes(self) -> bytes:
        data = {
            "v": RECORD_VERSION,
            "noise_private": self.noise_key.private.hex(),
            "identity_private": self.identity.key_pair.private.hex(),
            "registration_id": self.identity.registration_id,
            "signed_prekey_id": self.signed_prekey_id,
            "adv_secret": self.adv_secret.hex(),
            "jid": None if self.jid is None else str(self.jid),
            "lid": None if self.lid is None else str(self.lid),
            "account": None if self.account is None else self.account.hex(),
            "platform": self.platform,
            "push_name": self.push_name,
        }
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, blob: bytes) -> Device:
        try:
            data = json.loads(blob)
            if data.get("v") != RECORD_VERSION:
                raise DecodeError("unknown device record version", version=data.get("v"))
            return cls(
                noise_key=curve.keypair_from_private(bytes.fromhex(data["noise_private"])),
                identity=keys.LocalIdentity(
                    key_pair=curve.keypair_from_private(bytes.fromhex(data["identity_private"])),
                    registration_id=int(data["registration_id"]),
                ),
                signed_prekey_id=int(data["signed_prekey_id"]),
                adv_secret=bytes.fromhex(data["adv_secret"]),
                jid=None if data["jid"] is None else parse_jid(data["jid"]),
                lid=None if data["lid"] is None else parse_jid(data["lid"]),
                account=None if data["account"] is None else bytes.fromhex(data["account"]),
                platform=data.get("platform"),
                push_name=data.get("push_name"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise DecodeError("device record does not parse") from exc


def new_device(store: KeyStore, rng: Rng) -> Device:
    """Fresh companion credentials (SPEC §8.1); the signed prekey (id 1) goes to the store."""
    noise_key = curve.generate_keypair(rng)
    identity = keys.generate_identity(rng)
    adv_secret = rng(ADV_SECRET_LEN)
    spk = signal_store.signed_prekey(store, identity, rng)
    return Device(
        noise_key=noise_key, identity=identity, signed_prekey_id=spk.id, adv_secret=adv_secret
    )


def load_or_create_device(store: KeyStore, rng: Rng) -> Device:
    """The stored device, or a new one persisted now (one transaction)."""
    with store.transaction():
        blob = store.get_device()
        if blob is not None:
            return Device.from_bytes(blob)
        device = new_device(store, rng)
        store.put_device(device.to_bytes())
    return device
