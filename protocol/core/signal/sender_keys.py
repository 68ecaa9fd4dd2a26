"""Sender keys for group messages (`skmsg`, SPEC §10.8), as pure functions over records.

Facts from Baileys' port (`lib/Signal/Group/`: group_cipher.js, sender-key-state.js,
sender-key-record.js, sender-chain-key.js, sender-message-key.js):

* a record holds up to `MAX_STATES` states (one per distribution received), the newest last;
  a message names its state by key id;
* the chain advances like the 1:1 chain (HMAC 0x01 seed / 0x02 next) and a message may be at
  most `MAX_SKIP` iterations ahead; skipped keys are kept, at most `MAX_MESSAGE_KEYS`;
* the signature (curve25519, SPEC §10.3) covers `0x33 || protobuf` and is checked before any
  state changes.

Our sender uses iterations 0, 1, 2, … . Baileys' sender uses 0 and then `current + 1` (so 0, 2,
4, …, SPEC §10.8); as receivers we simply treat the gaps as skipped iterations.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from google.protobuf.message import DecodeError as ProtobufDecodeError

from protocol.core import curve
from protocol.core.errors import DecodeError, DuplicateMessage, InvalidMessage, NoSession
from protocol.core.inject import Rng
from protocol.core.proto import signal_records_pb2 as rpb
from protocol.core.signal import cipher, kdf, messages

MAX_STATES = 5  # sender-key-record.js MAX_STATES
MAX_MESSAGE_KEYS = 2000  # sender-key-state.js MAX_MESSAGE_KEYS
MAX_SKIP = 2000  # group_cipher.js getSenderKey: "Over 2000 messages into the future!"
KEY_ID_MASK = 0x7FFFFFFF  # SPEC §10.8: key id is random 31-bit (`randomInt(2147483647)`)
RECORD_VERSION = 1  # our stored format (signal_records.proto SenderKeyRecord.version)
_SKIPPED_ENTRY = 4 + kdf.BLOCK  # packed skipped key: iteration u32 BE || 32-byte seed


@dataclass(frozen=True, slots=True)
class SenderKeyState:
    """One sender chain. `signing_private` is set only for our own sending state."""

    key_id: int
    iteration: int
    chain_key: bytes = field(repr=False)
    signing_public: bytes
    signing_private: bytes | None = field(default=None, repr=False)
    # Skipped message keys packed as `iteration (4 bytes BE) || seed (32)`, ascending: a
    # Baileys sender skips every other iteration, so receivers hold up to 2000 of these and
    # a packed blob keeps load/store and trimming at C speed.
    skipped: bytes = field(default=b"", repr=False)

    @property
    def skipped_iterations(self) -> list[int]:
        return [
            int.from_bytes(self.skipped[i : i + 4], "big")
            for i in range(0, len(self.skipped), _SKIPPED_ENTRY)
        ]


@dataclass(frozen=True, slots=True)
class SenderKeyRecord:
    states: tuple[SenderKeyState, ...] = ()  # oldest first; the last is the current one

    @property
    def current(self) -> SenderKeyState | None:
        return self.states[-1] if self.states else None

    def state(self, key_id: int) -> SenderKeyState | None:
        for s in self.states:
            if s.key_id == key_id:
                return s
        return None

    def to_bytes(self) -> bytes:
        out = rpb.SenderKeyRecord(version=RECORD_VERSION)
        for s in self.states:
            p = out.states.add(
                key_id=s.key_id,
                iteration=s.iteration,
                chain_key=s.chain_key,
                signing_public=s.signing_public,
            )
            if s.signing_private is not None:
                p.signing_private = s.signing_private
            if s.skipped:
                p.skipped_keys = s.skipped
        return out.SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> SenderKeyRecord:
        msg = rpb.SenderKeyRecord()
        try:
            msg.ParseFromString(data)
        except ProtobufDecodeError as exc:
            raise DecodeError("corrupt sender key record") from exc
        if msg.version != RECORD_VERSION:
            raise DecodeError("unknown sender key record version", version=msg.version)
        states = []
        for p in msg.states:
            if len(p.chain_key) != kdf.BLOCK or len(p.signing_public) != curve.KEY_LEN:
                raise DecodeError("sender key record holds a key of the wrong length")
            if len(p.skipped_keys) % _SKIPPED_ENTRY:
                raise DecodeError("sender key record holds a truncated skipped key")
            states.append(
                SenderKeyState(
                    key_id=p.key_id,
                    iteration=p.iteration,
                    chain_key=p.chain_key,
                    signing_public=p.signing_public,
                    signing_private=p.signing_private if p.HasField("signing_private") else None,
                    skipped=p.skipped_keys,
                )
            )
        return cls(states=tuple(states))


def create(rng: Rng) -> SenderKeyRecord:
    """A new own sending state: random 31-bit key id, random chain key, new signing key pair."""
    key_id = int.from_bytes(rng(4), "big") & KEY_ID_MASK
    chain_key = rng(kdf.BLOCK)
    signing = curve.generate_keypair(rng)
    return own_record(key_id, 0, chain_key, signing)


def own_record(
    key_id: int, iteration: int, chain_key: bytes, signing: curve.KeyPair
) -> SenderKeyRecord:
    """A record holding exactly one own sending state (Baileys `setSenderKeyState`)."""
    state = SenderKeyState(
        key_id=key_id,
        iteration=iteration,
        chain_key=chain_key,
        signing_public=signing.public,
        signing_private=signing.private,
    )
    return SenderKeyRecord(states=(state,))


def distribution_message(record: SenderKeyRecord) -> bytes:
    """The serialized SKDM for our current state (`0x33 || SKDM`, SPEC §10.8)."""
    state = record.current
    if state is None:
        raise NoSession("no sender key state to distribute")
    return messages.encode_sender_key_distribution(
        messages.SenderKeyDistribution(
            key_id=state.key_id,
            iteration=state.iteration,
            chain_key=state.chain_key,
            signing_key=state.signing_public,
        )
    )


def process_distribution(record: SenderKeyRecord | None, data: bytes) -> SenderKeyRecord:
    """Add the state an SKDM describes (Baileys `GroupSessionBuilder.process`).

    A distribution for a key id we already hold with the same signing key and a chain that is
    not behind ours is ignored, so a redelivered SKDM cannot rewind the chain and reopen
    already-used iterations; any other one for that key id replaces it. At most `MAX_STATES`
    states are kept, the oldest dropped.
    """
    dist = messages.parse_sender_key_distribution(data)
    states = list(record.states) if record is not None else []
    for i, s in enumerate(states):
        if s.key_id == dist.key_id:
            if s.signing_public == dist.signing_key and s.iteration >= dist.iteration:
                return record or SenderKeyRecord()
            del states[i]
            break
    states.append(
        SenderKeyState(
            key_id=dist.key_id,
            iteration=dist.iteration,
            chain_key=dist.chain_key,
            signing_public=dist.signing_key,
        )
    )
    return SenderKeyRecord(states=tuple(states[-MAX_STATES:]))


def encrypt(record: SenderKeyRecord, plaintext: bytes) -> tuple[SenderKeyRecord, bytes]:
    """Encrypt with our current state at its current iteration; returns the `skmsg` bytes."""
    state = record.current
    if state is None or state.signing_private is None:
        raise NoSession("no own sender key state to encrypt with")
    seed, next_chain = kdf.chain_step(state.chain_key)
    key = kdf.group_message_key(seed)
    signed = messages.encode_sender_key_body(
        state.key_id, state.iteration, cipher.encrypt(key.cipher_key, key.iv, plaintext)
    )
    body = signed + curve.sign(state.signing_private, signed)
    new_state = replace(state, iteration=state.iteration + 1, chain_key=next_chain)
    return SenderKeyRecord(states=(*record.states[:-1], new_state)), body


def decrypt(record: SenderKeyRecord | None, data: bytes) -> tuple[SenderKeyRecord, bytes]:
    """Decrypt an `skmsg`; returns the new record and the plaintext. Never mutates on error."""
    msg = messages.parse_sender_key_message(data)
    state = record.state(msg.key_id) if record is not None else None
    if record is None or state is None:
        raise NoSession("no sender key state for this key id", key_id=msg.key_id)
    if not curve.verify(state.signing_public, msg.signed, msg.signature):
        raise InvalidMessage("bad sender key message signature")
    skipped = state.skipped
    if msg.iteration < state.iteration:
        at = _find_skipped(skipped, msg.iteration)
        if at is None:
            raise DuplicateMessage("old sender key iteration", iteration=msg.iteration)
        seed = skipped[at + 4 : at + _SKIPPED_ENTRY]
        new_state = replace(state, skipped=skipped[:at] + skipped[at + _SKIPPED_ENTRY :])
    else:
        if msg.iteration - state.iteration > MAX_SKIP:
            raise InvalidMessage("over 2000 iterations into the future", iteration=msg.iteration)
        chain = state.chain_key
        added = []
        for i in range(state.iteration, msg.iteration):
            s, chain = kdf.chain_step(chain)
            added.append(i.to_bytes(4, "big") + s)
        seed, chain = kdf.chain_step(chain)
        if added:
            skipped = (skipped + b"".join(added))[-MAX_MESSAGE_KEYS * _SKIPPED_ENTRY :]
        new_state = replace(state, iteration=msg.iteration + 1, chain_key=chain, skipped=skipped)
    key = kdf.group_message_key(seed)
    plaintext = cipher.decrypt(key.cipher_key, key.iv, msg.ciphertext)
    states = tuple(new_state if s is state else s for s in record.states)
    return SenderKeyRecord(states=states), plaintext


def _find_skipped(packed: bytes, iteration: int) -> int | None:
    """Byte offset of `iteration` in the ascending packed skipped keys (binary search)."""
    lo, hi = 0, len(packed) // _SKIPPED_ENTRY
    while lo < hi:
        mid = (lo + hi) // 2
        at = mid * _SKIPPED_ENTRY
        value = int.from_bytes(packed[at : at + 4], "big")
        if value == iteration:
            return at
        if value < iteration:
            lo = mid + 1
        else:
            hi = mid
    return None
