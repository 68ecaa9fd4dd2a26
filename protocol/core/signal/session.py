"""1:1 Signal sessions: X3DH set-up both ways and the Double Ratchet (SPEC §10.4–§10.7).

Pure functions over immutable values. Every entry point takes a `SessionRecord` and returns a
new one with its result; on any error it raises and the caller still holds the old record, so
"a failed decrypt changes nothing" is a property of the types, not of careful rollback.

State rules follow libsignal-node 6.0.0 (`session_builder.js`, `session_cipher.js`,
`session_record.js`), which Baileys uses:

* a record holds the open session plus closed ones (at most `MAX_SESSIONS`); a `msg` is tried
  against every session, most recently used first, so late messages for an old session still
  decrypt; a new outgoing bundle or incoming `pkmsg` closes the open session;
* chain counters start at -1; a message may skip at most `MAX_SKIP` keys ahead; skipped keys
  are kept (bounded per chain by `MAX_MESSAGE_KEYS`, and at most `MAX_RECEIVER_CHAINS` chains);
* a used or never-filled counter is a `DuplicateMessage`; a MAC mismatch an `InvalidMessage`.

Time is not used: "most recently used" and "closed when" are a per-record logical clock.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum

from google.protobuf.message import DecodeError as ProtobufDecodeError

from protocol.core import curve
from protocol.core.errors import (
    CryptoError,
    DecodeError,
    DecryptionError,
    DuplicateMessage,
    InvalidMessage,
    NoSession,
)
from protocol.core.inject import Rng
from protocol.core.proto import signal_records_pb2 as rpb
from protocol.core.signal import cipher, kdf, messages
from protocol.core.signal.keys import LocalIdentity, PreKey, PreKeyBundle, SignedPreKey

MAX_SKIP = 2000  # session_cipher.js fillMessageKeys: "Over 2000 messages into the future!"
MAX_SESSIONS = 40  # session_record.js CLOSED_SESSIONS_MAX (removeOldSessions keeps <= 40)
# libsignal-node keeps skipped keys and old chains without bound; we cap them like libsignal
# (Rust, consts.rs MAX_MESSAGE_KEYS / MAX_RECEIVER_CHAINS) and go.mau.fi/libsignal (whatsmeow).
MAX_MESSAGE_KEYS = 2000
MAX_RECEIVER_CHAINS = 5
RECORD_VERSION = 1  # our stored format (signal_records.proto SessionRecord.version)
X3DH_PREFIX = b"\xff" * 32  # SPEC §10.4: secret starts with 32 bytes of 0xFF
MAC_VERSION_BYTE = bytes((messages.VERSION_BYTE,))  # SPEC §10.6: MAC covers the 0x33 byte


class BaseKeyType(Enum):
    """Whose base key names the session (libsignal-node base_key_type.js)."""

    OURS = 1
    THEIRS = 2


class MessageType(Enum):
    """libsignal-node type numbers (SPEC §10.7): 3 → `pkmsg`, 1 → `msg`."""

    MSG = 1
    PKMSG = 3

    @property
    def enc_type(self) -> str:
        """The `type` attribute of the `<enc>` node."""
        return "pkmsg" if self is MessageType.PKMSG else "msg"


@dataclass(frozen=True, slots=True)
class SendingChain:
    chain_key: bytes = field(repr=False)
    counter: int  # last counter used; -1 before the first message


@dataclass(frozen=True, slots=True)
class ReceivingChain:
    ratchet_key: bytes
    chain_key: bytes | None = field(repr=False)  # None once closed (no further keys)
    counter: int
    skipped: Mapping[int, bytes] = field(repr=False)  # counter → message key seed, ascending


@dataclass(frozen=True, slots=True)
class PendingPreKey:
    """Set by the initiator until the peer's first reply decrypts (SPEC §10.7)."""

    prekey_id: int | None
    signed_prekey_id: int
    base_key: bytes


@dataclass(frozen=True, slots=True)
class SessionState:
    remote_registration_id: int
    remote_identity: bytes
    base_key: bytes
    base_key_type: BaseKeyType
    root_key: bytes = field(repr=False)
    ratchet: curve.KeyPair
    last_remote_ratchet: bytes
    previous_counter: int
    sending: SendingChain | None
    receiving: tuple[ReceivingChain, ...]  # oldest first
    pending: PendingPreKey | None
    used: int = 0
    closed: int = 0  # 0 = open; else the record clock when it was closed

    @property
    def is_open(self) -> bool:
        return self.closed == 0


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """All sessions with one peer device, most recently used first, plus a logical clock."""

    sessions: tuple[SessionState, ...] = ()
    clock: int = 0

    @property
    def open_session(self) -> SessionState | None:
        for state in self.sessions:
            if state.is_open:
                return state
        return None

    def to_bytes(self) -> bytes:
        return _record_to_proto(self).SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionRecord:
        msg = rpb.SessionRecord()
        try:
            msg.ParseFromString(data)
        except ProtobufDecodeError as exc:
            raise DecodeError("corrupt session record") from exc
        if msg.version != RECORD_VERSION:
            raise DecodeError("unknown session record version", version=msg.version)
        return SessionRecord(
            sessions=tuple(_state_from_proto(s) for s in msg.sessions), clock=msg.clock
        )


@dataclass(frozen=True, slots=True)
class EncryptedMessage:
    """What `encrypt` produced: the `<enc type=…>` kind, its body, the peer's registration id."""

    type: MessageType
    body: bytes = field(repr=False)
    remote_registration_id: int


@dataclass(frozen=True, slots=True)
class Decrypted:
    """A successful decrypt: the new record to store, the plaintext and facts about it."""

    record: SessionRecord
    plaintext: bytes = field(repr=False)
    remote_identity: bytes
    from_closed_session: bool = False
    consumed_prekey_id: int | None = None  # pkmsg only: the one-time prekey to delete
    new_session: bool = False  # pkmsg only: a session was built from this message


# -- X3DH ----------------------------------------------------------------------------------


def initiate(
    record: SessionRecord | None,
    bundle: PreKeyBundle,
    local: LocalIdentity,
    rng: Rng,
    *,
    verify_signature: bool = True,
) -> SessionRecord:
    """Initiator X3DH from a peer's prekey bundle (SPEC §10.4); the open session is closed.

    rng supplies the base key then the first ratchet key (libsignal-node's order). Unlike
    libsignal-node (which skips it, SPEC §10.2) the signed-prekey signature is checked unless
    `verify_signature` is False.
    """
    identity = curve.strip_djb(bundle.identity_key)
    signed = curve.strip_djb(bundle.signed_prekey)
    if verify_signature and not curve.verify(
        identity, curve.djb(signed), bundle.signed_prekey_signature
    ):
        raise CryptoError("signed prekey signature does not verify")
    one_time = None if bundle.prekey is None else curve.strip_djb(bundle.prekey)
    base = curve.generate_keypair(rng)
    ratchet = curve.generate_keypair(rng)
    secret = [
        X3DH_PREFIX,
        curve.shared_key(local.key_pair.private, signed),
        curve.shared_key(base.private, identity),
        curve.shared_key(base.private, signed),
    ]
    if one_time is not None:
        secret.append(curve.shared_key(base.private, one_time))
    root = kdf.derive_secrets(b"".join(secret), kdf.ZERO_SALT, kdf.INFO_TEXT)[0]
    root, chain_key = kdf.derive_secrets(
        curve.shared_key(ratchet.private, signed), root, kdf.INFO_RATCHET, 2
    )
    state = SessionState(
        remote_registration_id=bundle.registration_id,
        remote_identity=identity,
        base_key=base.public,
        base_key_type=BaseKeyType.OURS,
        root_key=root,
        ratchet=ratchet,
        last_remote_ratchet=signed,
        previous_counter=0,
        sending=SendingChain(chain_key=chain_key, counter=-1),
        receiving=(),
        pending=PendingPreKey(
            prekey_id=bundle.prekey_id if one_time is not None else None,
            signed_prekey_id=bundle.signed_prekey_id,
            base_key=base.public,
        ),
    )
    return _install(record or SessionRecord(), state)


def _respond(
    msg: messages.PreKeyWhisperMessage,
    local: LocalIdentity,
    signed_prekey: SignedPreKey,
    prekey: PreKey | None,
) -> SessionState:
    # Responder X3DH (session_builder.js initIncoming/initSession with isInitiator = false).
    spk = signed_prekey.key_pair.private
    secret = [
        X3DH_PREFIX,
        _agree(spk, msg.identity_key),
        _agree(local.key_pair.private, msg.base_key),
        _agree(spk, msg.base_key),
    ]
    if prekey is not None:
        secret.append(_agree(prekey.key_pair.private, msg.base_key))
    root = kdf.derive_secrets(b"".join(secret), kdf.ZERO_SALT, kdf.INFO_TEXT)[0]
    return SessionState(
        remote_registration_id=msg.registration_id or 0,
        remote_identity=msg.identity_key,
        base_key=msg.base_key,
        base_key_type=BaseKeyType.THEIRS,
        root_key=root,
        ratchet=signed_prekey.key_pair,
        last_remote_ratchet=msg.base_key,
        previous_counter=0,
        sending=None,
        receiving=(),
        pending=None,
    )


def _agree(private: bytes, public: bytes) -> bytes:
    """X25519 with a key taken from a received message: a low-order key is an invalid message."""
    try:
        return curve.shared_key(private, public)
    except CryptoError as exc:
        raise InvalidMessage("message carries an unusable public key") from exc


def _install(record: SessionRecord, state: SessionState) -> SessionRecord:
    """Close the open session, put `state` first, drop the oldest closed ones beyond the cap."""
    clock = record.clock + 1
    others = [s if not s.is_open else replace(s, closed=clock) for s in record.sessions]
    sessions = [replace(state, used=clock, closed=0), *others]
    return SessionRecord(sessions=_trim(sessions), clock=clock)


def _trim(sessions: list[SessionState]) -> tuple[SessionState, ...]:
    while len(sessions) > MAX_SESSIONS:
        oldest = min((s for s in sessions if not s.is_open), key=lambda s: s.closed)
        sessions.remove(oldest)
    return tuple(sessions)


# -- encrypt -------------------------------------------------------------------------------


def encrypt(
    record: SessionRecord, plaintext: bytes, local: LocalIdentity
) -> tuple[SessionRecord, EncryptedMessage]:
    """Encrypt on the open session: a `pkmsg` while the peer has not replied, else a `msg`."""
    state = record.open_session
    if state is None or state.sending is None:
        raise NoSession("no open session to encrypt with")
    seed, chain_key = kdf.chain_step(state.sending.chain_key)
    counter = state.sending.counter + 1
    keys = kdf.message_keys(seed)
    body = messages.encode_whisper_body(
        state.ratchet.public,
        counter,
        state.previous_counter,
        cipher.encrypt(keys.cipher_key, keys.iv, plaintext),
    )
    mac = kdf.hmac_sha256(
        keys.mac_key,
        curve.djb(local.public) + curve.djb(state.remote_identity) + MAC_VERSION_BYTE + body,
    )
    whisper = MAC_VERSION_BYTE + body + mac[: messages.MAC_LEN]
    new_state = replace(state, sending=SendingChain(chain_key=chain_key, counter=counter))
    sessions = tuple(new_state if s is state else s for s in record.sessions)
    new_record = SessionRecord(sessions=sessions, clock=record.clock)
    pending = state.pending
    if pending is None:
        return new_record, EncryptedMessage(MessageType.MSG, whisper, state.remote_registration_id)
    body = messages.encode_prekey_whisper(
        prekey_id=pending.prekey_id,
        signed_prekey_id=pending.signed_prekey_id,
        base_key=pending.base_key,
        identity_key=local.public,
        registration_id=local.registration_id,
        message=whisper,
    )
    return new_record, EncryptedMessage(MessageType.PKMSG, body, state.remote_registration_id)


# -- decrypt -------------------------------------------------------------------------------


def decrypt_whisper(
    record: SessionRecord | None, data: bytes, local: LocalIdentity, rng: Rng
) -> Decrypted:
    """Decrypt a `msg`, trying every session of the record, most recently used first."""
    msg = messages.parse_whisper(data)
    if record is None or not record.sessions:
        raise NoSession("no session for this sender")
    errors: list[DecryptionError] = []
    for state in record.sessions:
        try:
            new_state, plaintext = _decrypt_with(state, msg, local, rng)
        except DecryptionError as exc:
            errors.append(exc)
            continue
        clock = record.clock + 1
        new_state = replace(new_state, used=clock)
        rest = tuple(s for s in record.sessions if s is not state)
        return Decrypted(
            record=SessionRecord(sessions=(new_state, *rest), clock=clock),
            plaintext=plaintext,
            remote_identity=state.remote_identity,
            from_closed_session=not state.is_open,
        )
    duplicate = next((e for e in errors if isinstance(e, DuplicateMessage)), None)
    if duplicate is not None:
        raise duplicate
    raise InvalidMessage(
        "no session could decrypt the message",
        sessions=len(record.sessions),
        reasons=tuple(e.text for e in errors),
    )


def prekey_message_needs(record: SessionRecord | None, msg: messages.PreKeyWhisperMessage) -> bool:
    """Whether decrypting `msg` needs our prekeys (False: it continues an existing session)."""
    return _session_for_base_key(record, msg.base_key) is None


def decrypt_prekey_whisper(
    record: SessionRecord | None,
    msg: messages.PreKeyWhisperMessage,
    local: LocalIdentity,
    signed_prekey: SignedPreKey | None,
    prekey: PreKey | None,
    rng: Rng,
) -> Decrypted:
    """Decrypt a parsed `pkmsg` (`messages.parse_prekey_whisper`), building the session from it
    unless the record already has the session named by its base key (a repeat before our reply).

    The caller looks up `signed_prekey` (by `msg.signed_prekey_id`) and `prekey` (by
    `msg.prekey_id`) and, on success, deletes `consumed_prekey_id` with the new record.
    """
    existing = _session_for_base_key(record, msg.base_key)
    if existing is not None and record is not None:
        new_state, plaintext = _decrypt_with(existing, msg.message, local, rng)
        clock = record.clock + 1
        rest = tuple(s for s in record.sessions if s is not existing)
        return Decrypted(
            record=SessionRecord(sessions=(replace(new_state, used=clock), *rest), clock=clock),
            plaintext=plaintext,
            remote_identity=existing.remote_identity,
            from_closed_session=not existing.is_open,
        )
    if msg.prekey_id is not None and (prekey is None or prekey.id != msg.prekey_id):
        raise InvalidMessage("unknown one-time prekey id", prekey_id=msg.prekey_id)
    if signed_prekey is None or signed_prekey.id != msg.signed_prekey_id:
        raise InvalidMessage("unknown signed prekey id", signed_prekey_id=msg.signed_prekey_id)
    if msg.registration_id is None and (record is None or not record.sessions):
        raise InvalidMessage("PreKeyWhisperMessage without a registration id")
    fresh = _respond(msg, local, signed_prekey, prekey if msg.prekey_id is not None else None)
    new_state, plaintext = _decrypt_with(fresh, msg.message, local, rng)
    return Decrypted(
        record=_install(record or SessionRecord(), new_state),
        plaintext=plaintext,
        remote_identity=msg.identity_key,
        consumed_prekey_id=msg.prekey_id,
        new_session=True,
    )


def _session_for_base_key(record: SessionRecord | None, base_key: bytes) -> SessionState | None:
    if record is None:
        return None
    for state in record.sessions:
        if state.base_key_type is BaseKeyType.THEIRS and state.base_key == base_key:
            return state
    return None


def _decrypt_with(
    state: SessionState, msg: messages.WhisperMessage, local: LocalIdentity, rng: Rng
) -> tuple[SessionState, bytes]:
    """Decrypt with one session state; returns the advanced state. Raises, never mutates."""
    chains = list(state.receiving)
    index = _chain_index(chains, msg.ratchet_key)
    root, ratchet, sending = state.root_key, state.ratchet, state.sending
    last_remote, previous_counter = state.last_remote_ratchet, state.previous_counter
    if index is None:
        # DH ratchet step (session_cipher.js maybeStepRatchet / calculateRatchet).
        if msg.ratchet_key == ratchet.public:
            raise InvalidMessage("message carries our own ratchet key")
        previous = _chain_index(chains, last_remote)
        if previous is not None:
            chains[previous] = _close(_fill(chains[previous], msg.previous_counter))
        shared = _agree(ratchet.private, msg.ratchet_key)
        root, receive_key = kdf.derive_secrets(shared, root, kdf.INFO_RATCHET, 2)
        chains.append(ReceivingChain(msg.ratchet_key, receive_key, -1, {}))
        if len(chains) > MAX_RECEIVER_CHAINS:
            del chains[0]
        if sending is not None:
            previous_counter = sending.counter
        ratchet = curve.generate_keypair(rng)
        shared = _agree(ratchet.private, msg.ratchet_key)
        root, send_key = kdf.derive_secrets(shared, root, kdf.INFO_RATCHET, 2)
        sending = SendingChain(chain_key=send_key, counter=-1)
        last_remote = msg.ratchet_key
        index = len(chains) - 1
    chain = chains[index]
    if msg.counter <= chain.counter:
        seed = chain.skipped.get(msg.counter)
        if seed is None:
            raise DuplicateMessage("message key already used", counter=msg.counter)
        skipped = dict(chain.skipped)
        del skipped[msg.counter]
        chain = replace(chain, skipped=skipped)
    else:
        chain = _fill(chain, msg.counter)
        skipped = dict(chain.skipped)
        seed = skipped.pop(msg.counter)
        chain = replace(chain, skipped=skipped)
    keys = kdf.message_keys(seed)
    expected = kdf.hmac_sha256(
        keys.mac_key,
        curve.djb(state.remote_identity) + curve.djb(local.public) + MAC_VERSION_BYTE + msg.body,
    )[: messages.MAC_LEN]
    if not hmac.compare_digest(expected, msg.mac):
        raise InvalidMessage("bad MAC")
    plaintext = cipher.decrypt(keys.cipher_key, keys.iv, msg.ciphertext)
    chains[index] = chain
    new_state = replace(
        state,
        root_key=root,
        ratchet=ratchet,
        sending=sending,
        last_remote_ratchet=last_remote,
        previous_counter=previous_counter,
        receiving=tuple(chains),
        pending=None,
    )
    return new_state, plaintext


def _chain_index(chains: list[ReceivingChain], ratchet_key: bytes) -> int | None:
    for i in range(len(chains) - 1, -1, -1):
        if chains[i].ratchet_key == ratchet_key:
            return i
    return None


def _fill(chain: ReceivingChain, counter: int) -> ReceivingChain:
    """Derive and keep the keys of `chain` up to `counter` (session_cipher.js fillMessageKeys)."""
    if counter <= chain.counter:
        return chain
    if counter - chain.counter > MAX_SKIP:
        raise InvalidMessage("over 2000 messages into the future", counter=counter)
    key = chain.chain_key
    if key is None:
        raise InvalidMessage("message for a closed chain", counter=counter)
    skipped = dict(chain.skipped)
    for n in range(chain.counter + 1, counter + 1):
        skipped[n], key = kdf.chain_step(key)
    excess = len(skipped) - MAX_MESSAGE_KEYS
    if excess > 0:
        for n in list(skipped)[:excess]:
            del skipped[n]
    return ReceivingChain(chain.ratchet_key, key, counter, skipped)


def _close(chain: ReceivingChain) -> ReceivingChain:
    return replace(chain, chain_key=None)


# -- stored form ---------------------------------------------------------------------------


def _record_to_proto(record: SessionRecord) -> rpb.SessionRecord:
    out = rpb.SessionRecord(version=RECORD_VERSION, clock=record.clock)
    for state in record.sessions:
        s = out.sessions.add()
        s.remote_registration_id = state.remote_registration_id
        s.remote_identity = state.remote_identity
        s.base_key = state.base_key
        s.base_key_ours = state.base_key_type is BaseKeyType.OURS
        s.root_key = state.root_key
        s.ratchet_private = state.ratchet.private
        s.ratchet_public = state.ratchet.public
        s.last_remote_ratchet = state.last_remote_ratchet
        s.previous_counter = state.previous_counter
        s.used = state.used
        s.closed = state.closed
        if state.sending is not None:
            s.sending.chain_key = state.sending.chain_key
            s.sending.counter = state.sending.counter
        for chain in state.receiving:
            c = s.receiving.add()
            c.ratchet_key = chain.ratchet_key
            if chain.chain_key is not None:
                c.chain_key = chain.chain_key
            c.counter = chain.counter
            for index, seed in chain.skipped.items():
                c.skipped.add(index=index, seed=seed)
        if state.pending is not None:
            p = s.pending
            if state.pending.prekey_id is not None:
                p.pre_key_id = state.pending.prekey_id
            p.signed_pre_key_id = state.pending.signed_prekey_id
            p.base_key = state.pending.base_key
    return out


def _bytes32(value: bytes) -> bytes:
    if len(value) != curve.KEY_LEN:
        raise DecodeError("session record holds a key of the wrong length", length=len(value))
    return value


def _state_from_proto(s: rpb.Session) -> SessionState:
    pending = None
    if s.HasField("pending"):
        pending = PendingPreKey(
            prekey_id=s.pending.pre_key_id if s.pending.HasField("pre_key_id") else None,
            signed_prekey_id=s.pending.signed_pre_key_id,
            base_key=_bytes32(s.pending.base_key),
        )
    sending = None
    if s.HasField("sending"):
        sending = SendingChain(_bytes32(s.sending.chain_key), s.sending.counter)
    receiving = tuple(
        ReceivingChain(
            ratchet_key=_bytes32(c.ratchet_key),
            chain_key=_bytes32(c.chain_key) if c.HasField("chain_key") else None,
            counter=c.counter,
            skipped={k.index: _bytes32(k.seed) for k in c.skipped},
        )
        for c in s.receiving
    )
    return SessionState(
        remote_registration_id=s.remote_registration_id,
        remote_identity=_bytes32(s.remote_identity),
        base_key=_bytes32(s.base_key),
        base_key_type=BaseKeyType.OURS if s.base_key_ours else BaseKeyType.THEIRS,
        root_key=_bytes32(s.root_key),
        ratchet=curve.KeyPair(
            private=_bytes32(s.ratchet_private), public=_bytes32(s.ratchet_public)
        ),
        last_remote_ratchet=_bytes32(s.last_remote_ratchet),
        previous_counter=s.previous_counter,
        sending=sending,
        receiving=receiving,
        pending=pending,
        used=s.used,
        closed=s.closed,
    )
