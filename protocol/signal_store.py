"""Signal operations against a `KeyStore`: load records, run the pure core, store the result.

This is the thin layer between `protocol.core.signal` (pure functions over records, no store)
and `protocol.store` (bytes in, bytes out, no crypto). It lives outside `protocol.core`
because it calls the store, and outside `protocol.store` so the store module stays the plain
interface a SQL implementer mirrors.

Every function runs inside `store.transaction()`: decrypting a `pkmsg` writes the new session,
the trusted identity and removes the one-time prekey together, and any failure (bad MAC,
duplicate, untrusted identity) writes nothing.

Identity keys are trusted on first use. A changed identity is reported, never silent: with
`IdentityPolicy.ACCEPT_CHANGES` (what WhatsApp clients do: a new session and a "security code
changed" notice) the result carries `identity_changed=True`; with `REJECT_CHANGES` it raises
`UntrustedIdentity`. Only a `pkmsg` that builds a new session can change the trusted identity:
a `msg`, or a repeated `pkmsg` for a session we already hold, whose session identity is no
longer the trusted one raises `UntrustedIdentity` (libsignal-node's `isTrustedIdentity` check
in session_cipher.js), so late messages cannot flip trust back to an old key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from protocol.core import curve
from protocol.core.errors import InvalidMessage, NoSession, UntrustedIdentity
from protocol.core.inject import Rng
from protocol.core.signal import keys, messages, sender_keys, session
from protocol.store import KeyStore


class IdentityPolicy(Enum):
    ACCEPT_CHANGES = "accept"  # trust on first use, accept and report later changes
    REJECT_CHANGES = "reject"  # a changed identity raises UntrustedIdentity


@dataclass(frozen=True, slots=True)
class Inbound:
    """A decrypted 1:1 message and what happened to the session."""

    plaintext: bytes = field(repr=False)
    identity_changed: bool = False  # the sender's identity differs from the one we trusted
    new_session: bool = False  # a pkmsg built a new session
    from_closed_session: bool = False  # a late message for a session since replaced


# -- prekeys -------------------------------------------------------------------------------


def generate_prekeys(store: KeyStore, count: int, rng: Rng) -> list[keys.PreKey]:
    """Generate `count` new one-time prekeys with the store's next ids and persist them."""
    with store.transaction():
        fresh = keys.generate_prekeys(store.next_prekey_id(), count, rng)
        store.put_prekeys({p.id: p.to_bytes() for p in fresh})
    return fresh


def prekeys_for_upload(store: KeyStore, count: int, rng: Rng) -> list[keys.PreKey]:
    """`count` prekeys not yet uploaded (oldest first), generating the missing ones."""
    with store.transaction():
        have = store.unuploaded_prekeys(count)
        if len(have) < count:
            generate_prekeys(store, count - len(have), rng)
            have = store.unuploaded_prekeys(count)
    return [keys.PreKey.from_bytes(record) for record in have.values()]


def signed_prekey(store: KeyStore, identity: keys.LocalIdentity, rng: Rng) -> keys.SignedPreKey:
    """The current signed prekey, creating id 1 on first use (SPEC §10.1)."""
    with store.transaction():
        current = store.latest_signed_prekey_id()
        if current is not None:
            record = store.get_signed_prekey(current)
            if record is not None:
                return keys.SignedPreKey.from_bytes(record)
        created = keys.generate_signed_prekey(identity, 1, rng)
        store.put_signed_prekey(created.id, created.to_bytes())
    return created


def rotate_signed_prekey(
    store: KeyStore, identity: keys.LocalIdentity, rng: Rng
) -> keys.SignedPreKey:
    """A new signed prekey with the next id; the old one stays for in-flight pkmsgs."""
    with store.transaction():
        current = store.latest_signed_prekey_id() or 0
        created = keys.generate_signed_prekey(identity, current + 1, rng)
        store.put_signed_prekey(created.id, created.to_bytes())
    return created


# -- 1:1 sessions --------------------------------------------------------------------------


def _load_session(store: KeyStore, address: str) -> session.SessionRecord | None:
    data = store.get_sessions([address]).get(address)
    return None if data is None else session.SessionRecord.from_bytes(data)


def _check_identity(
    store: KeyStore, address: str, identity: bytes, policy: IdentityPolicy
) -> tuple[bool, bool]:
    """(changed, must_store) for `identity` against the trusted one; raises if rejected."""
    trusted = store.get_identities([address]).get(address)
    if trusted is None:
        return False, True
    if trusted == identity:
        return False, False
    if policy is IdentityPolicy.REJECT_CHANGES:
        raise UntrustedIdentity("identity key changed", address=address)
    return True, True


def has_session(store: KeyStore, address: str) -> bool:
    """Whether an open session exists for `address`."""
    record = _load_session(store, address)
    return record is not None and record.open_session is not None


def remote_registration_id(store: KeyStore, address: str) -> int | None:
    """The peer's registration id on the open session (compared on retry receipts, SPEC §15.4)."""
    record = _load_session(store, address)
    state = None if record is None else record.open_session
    return None if state is None else state.remote_registration_id


def build_session(
    store: KeyStore,
    address: str,
    bundle: keys.PreKeyBundle,
    local: keys.LocalIdentity,
    rng: Rng,
    policy: IdentityPolicy = IdentityPolicy.ACCEPT_CHANGES,
) -> bool:
    """Start a session from a peer's bundle (SPEC §13.4); True if the identity changed."""
    with store.transaction():
        identity = curve.strip_djb(bundle.identity_key)
        changed, remember = _check_identity(store, address, identity, policy)
        record = session.initiate(_load_session(store, address), bundle, local, rng)
        store.put_sessions({address: record.to_bytes()})
        if remember:
            store.put_identities({address: identity})
    return changed


def encrypt(
    store: KeyStore, address: str, plaintext: bytes, local: keys.LocalIdentity
) -> session.EncryptedMessage:
    """Encrypt for `address` on its open session (NoSession if there is none)."""
    with store.transaction():
        record = _load_session(store, address) or session.SessionRecord()
        state = record.open_session
        if state is not None:
            trusted = store.get_identities([address]).get(address)
            if trusted is not None and trusted != state.remote_identity:
                raise UntrustedIdentity("session identity is not the trusted one", address=address)
        new_record, message = session.encrypt(record, plaintext, local)
        store.put_sessions({address: new_record.to_bytes()})
    return message


def encrypt_many(
    store: KeyStore, plaintexts: Mapping[str, bytes], local: keys.LocalIdentity
) -> dict[str, session.EncryptedMessage]:
    """Encrypt one plaintext per address (a fan-out to a user's devices) in one transaction
    with one batch read and one batch write. All or nothing: NoSession/UntrustedIdentity for
    any address leaves every session unchanged."""
    addresses = list(plaintexts)
    with store.transaction():
        records = store.get_sessions(addresses)
        trusted = store.get_identities(addresses)
        out: dict[str, session.EncryptedMessage] = {}
        updated: dict[str, bytes] = {}
        for address in addresses:
            data = records.get(address)
            if data is None:
                raise NoSession("no session for this address", address=address)
            record = session.SessionRecord.from_bytes(data)
            state = record.open_session
            known = trusted.get(address)
            if state is not None and known is not None and known != state.remote_identity:
                raise UntrustedIdentity("session identity is not the trusted one", address=address)
            new_record, out[address] = session.encrypt(record, plaintexts[address], local)
            updated[address] = new_record.to_bytes()
        store.put_sessions(updated)
    return out


def decrypt(
    store: KeyStore,
    address: str,
    enc_type: str,
    body: bytes,
    local: keys.LocalIdentity,
    rng: Rng,
    policy: IdentityPolicy = IdentityPolicy.ACCEPT_CHANGES,
) -> Inbound:
    """Decrypt an `<enc type="msg"|"pkmsg">` body from `address`; atomic, all or nothing."""
    if enc_type == "pkmsg":
        return _decrypt_prekey(store, address, body, local, rng, policy)
    if enc_type != "msg":
        raise InvalidMessage("not a 1:1 Signal message type", enc_type=enc_type)
    with store.transaction():
        got = session.decrypt_whisper(_load_session(store, address), body, local, rng)
        trusted = store.get_identities([address]).get(address)
        if trusted is not None and trusted != got.remote_identity:
            raise UntrustedIdentity("session identity is not the trusted one", address=address)
        store.put_sessions({address: got.record.to_bytes()})
        if trusted is None:
            store.put_identities({address: got.remote_identity})
    return Inbound(plaintext=got.plaintext, from_closed_session=got.from_closed_session)


def _decrypt_prekey(
    store: KeyStore,
    address: str,
    body: bytes,
    local: keys.LocalIdentity,
    rng: Rng,
    policy: IdentityPolicy,
) -> Inbound:
    msg = messages.parse_prekey_whisper(body)
    with store.transaction():
        record = _load_session(store, address)
        spk = prekey = None
        if session.prekey_message_needs(record, msg):
            spk_data = store.get_signed_prekey(msg.signed_prekey_id)
            spk = None if spk_data is None else keys.SignedPreKey.from_bytes(spk_data)
            if msg.prekey_id is not None:
                pk_data = store.get_prekeys([msg.prekey_id]).get(msg.prekey_id)
                prekey = None if pk_data is None else keys.PreKey.from_bytes(pk_data)
        got = session.decrypt_prekey_whisper(record, msg, local, spk, prekey, rng)
        if got.new_session:
            changed, remember = _check_identity(store, address, got.remote_identity, policy)
        else:  # a repeat for a session we hold: like a `msg`, its identity must be trusted
            changed, remember = _check_identity(
                store, address, got.remote_identity, IdentityPolicy.REJECT_CHANGES
            )
        store.put_sessions({address: got.record.to_bytes()})
        if got.consumed_prekey_id is not None:
            store.remove_prekeys([got.consumed_prekey_id])
        if remember:
            store.put_identities({address: got.remote_identity})
    return Inbound(
        plaintext=got.plaintext,
        identity_changed=changed,
        new_session=got.new_session,
        from_closed_session=got.from_closed_session,
    )


# -- sender keys ---------------------------------------------------------------------------


def _load_sender_key(store: KeyStore, name: str) -> sender_keys.SenderKeyRecord | None:
    data = store.get_sender_keys([name]).get(name)
    return None if data is None else sender_keys.SenderKeyRecord.from_bytes(data)


def group_distribution(store: KeyStore, name: str, rng: Rng) -> bytes:
    """Our SKDM for sender-key name `name`, creating our sending state on first use."""
    with store.transaction():
        record = _load_sender_key(store, name)
        if record is None or record.current is None or record.current.signing_private is None:
            record = sender_keys.create(rng)
            store.put_sender_keys({name: record.to_bytes()})
        return sender_keys.distribution_message(record)


def process_group_distribution(store: KeyStore, name: str, skdm: bytes) -> None:
    """Remember a peer's SKDM (received inside a 1:1 message) under `name`."""
    with store.transaction():
        record = sender_keys.process_distribution(_load_sender_key(store, name), skdm)
        store.put_sender_keys({name: record.to_bytes()})


def group_encrypt(store: KeyStore, name: str, plaintext: bytes) -> bytes:
    """Encrypt an `skmsg` with our sending state (call `group_distribution` first)."""
    with store.transaction():
        record = _load_sender_key(store, name) or sender_keys.SenderKeyRecord()
        new_record, body = sender_keys.encrypt(record, plaintext)
        store.put_sender_keys({name: new_record.to_bytes()})
    return body


def group_decrypt(store: KeyStore, name: str, body: bytes) -> bytes:
    """Decrypt an `skmsg` from the sender named by `name`; atomic, all or nothing."""
    with store.transaction():
        new_record, plaintext = sender_keys.decrypt(_load_sender_key(store, name), body)
        store.put_sender_keys({name: new_record.to_bytes()})
    return plaintext
