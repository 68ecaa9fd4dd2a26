"""1:1 session semantics (SPEC §10.4–§10.7): ratchet, skipped keys and their bounds, duplicate
detection, closed sessions, identity changes, atomic store updates."""

from __future__ import annotations

import pytest

from protocol import signal_store
from protocol.core import curve
from protocol.core.errors import (
    CryptoError,
    DecodeError,
    DuplicateMessage,
    InvalidMessage,
    NoSession,
    UntrustedIdentity,
)
from protocol.core.inject import CountingRng
from protocol.core.signal import keys, messages, session
from protocol.store import MemoryKeyStore

ALICE, BOB = "15550001111.0", "15550002222.0"  # how each side names the other


class Device:
    """One of our devices: store + identity + keys, talking through protocol.signal_store."""

    def __init__(self, seed: bytes) -> None:
        self.rng = CountingRng(seed)
        self.store = MemoryKeyStore()
        self.local = keys.generate_identity(self.rng)
        self.spk = signal_store.signed_prekey(self.store, self.local, self.rng)

    def bundle(self, with_prekey: bool = True) -> keys.PreKeyBundle:
        prekey = None
        if with_prekey:
            prekey = signal_store.prekeys_for_upload(self.store, 1, self.rng)[0]
            self.store.mark_prekeys_uploaded([prekey.id])
        return keys.bundle_for(self.local, self.spk, prekey)

    def send(self, to: str, pt: bytes) -> tuple[str, bytes]:
        enc = signal_store.encrypt(self.store, to, pt, self.local)
        return enc.type.enc_type, enc.body

    def recv(self, frm: str, msg: tuple[str, bytes]) -> signal_store.Inbound:
        return signal_store.decrypt(self.store, frm, msg[0], msg[1], self.local, self.rng)

    def snapshot(self, address: str) -> tuple[object, ...]:
        s = self.store
        return (
            s.get_sessions([address]),
            s.get_identities([address]),
            s.get_prekeys(list(range(1, 50))),
            s.next_prekey_id(),
            s.count_unuploaded_prekeys(),
        )


def pair() -> tuple[Device, Device]:
    alice, bob = Device(b"alice"), Device(b"bob")
    signal_store.build_session(alice.store, BOB, bob.bundle(), alice.local, alice.rng)
    return alice, bob


def test_keys_generation_rules() -> None:
    rng = CountingRng(b"keys")
    ids = {keys.generate_registration_id(rng) for _ in range(200)}
    assert max(ids) <= 0x3FFF
    assert len(ids) > 150
    identity = keys.generate_identity(rng)
    spk = keys.generate_signed_prekey(identity, 7, rng)
    assert curve.verify(identity.public, curve.djb(spk.key_pair.public), spk.signature)
    assert keys.SignedPreKey.from_bytes(spk.to_bytes()) == spk
    pks = keys.generate_prekeys(5, 3, rng)
    assert [p.id for p in pks] == [5, 6, 7]
    assert keys.PreKey.from_bytes(pks[0].to_bytes()) == pks[0]
    with pytest.raises(CryptoError):
        keys.generate_prekeys(0xFFFFFF, 2, rng)


def test_reprs_hide_key_material() -> None:
    alice, bob = pair()
    bob.recv(ALICE, alice.send(BOB, b"hello"))
    alice.send(BOB, b"skipped")
    bob.recv(ALICE, alice.send(BOB, b"after"))
    record = session.SessionRecord.from_bytes(bob.store.get_sessions([ALICE])[ALICE])
    state = record.sessions[0]
    secrets = [state.root_key, state.ratchet.private, bob.local.key_pair.private]
    secrets += [c.chain_key for c in state.receiving if c.chain_key is not None]
    secrets += [seed for c in state.receiving for seed in c.skipped.values()]
    assert state.sending is not None
    secrets.append(state.sending.chain_key)
    prekey = keys.generate_prekeys(1, 1, bob.rng)[0]
    secrets.append(prekey.key_pair.private)
    text = " ".join(repr(x) for x in (record, bob.local, bob.spk, prekey, bob.store))
    assert len(secrets) >= 7
    for secret in secrets:
        assert secret.hex() not in text


def test_store_prekey_ids_continue_after_use() -> None:
    d = Device(b"ids")
    first = signal_store.generate_prekeys(d.store, 3, d.rng)
    assert [p.id for p in first] == [1, 2, 3]
    d.store.remove_prekeys([3])
    assert [p.id for p in signal_store.generate_prekeys(d.store, 2, d.rng)] == [4, 5]
    upload = signal_store.prekeys_for_upload(d.store, 6, d.rng)
    assert [p.id for p in upload] == [1, 2, 4, 5, 6, 7]
    assert signal_store.rotate_signed_prekey(d.store, d.local, d.rng).id == 2
    assert signal_store.signed_prekey(d.store, d.local, d.rng).id == 2


def test_conversation_round_trips_and_pkmsg_phase() -> None:
    alice, bob = pair()
    m1, m2 = alice.send(BOB, b"one"), alice.send(BOB, b"two")
    assert m1[0] == m2[0] == "pkmsg"
    got = bob.recv(ALICE, m2)
    assert got.plaintext == b"two"
    assert got.new_session
    assert bob.recv(ALICE, m1).plaintext == b"one"  # same base key: no second session
    assert (
        len(session.SessionRecord.from_bytes(bob.store.get_sessions([ALICE])[ALICE]).sessions) == 1
    )
    assert bob.store.get_prekeys([1]) == {}  # consumed
    assert alice.recv(BOB, bob.send(ALICE, b"three")).plaintext == b"three"
    assert alice.send(BOB, b"four")[0] == "msg"  # reply seen: pkmsg phase over
    for i in range(30):  # ping-pong ratchets both ways
        sender, receiver, to, frm = (alice, bob, BOB, ALICE) if i % 3 else (bob, alice, ALICE, BOB)
        assert receiver.recv(frm, sender.send(to, b"m%d" % i)).plaintext == b"m%d" % i


def test_out_of_order_duplicates_and_unchanged_state() -> None:
    alice, bob = pair()
    bob.recv(ALICE, alice.send(BOB, b"hello"))
    alice.recv(BOB, bob.send(ALICE, b"hi"))
    msgs = [alice.send(BOB, b"%d" % i) for i in range(10)]
    assert bob.recv(ALICE, msgs[9]).plaintext == b"9"
    assert bob.recv(ALICE, msgs[3]).plaintext == b"3"
    before = bob.snapshot(ALICE)
    with pytest.raises(DuplicateMessage):
        bob.recv(ALICE, msgs[3])
    with pytest.raises(DuplicateMessage):
        bob.recv(ALICE, msgs[9])
    assert bob.snapshot(ALICE) == before
    for i in (0, 1, 2, 4, 5, 6, 7, 8):
        assert bob.recv(ALICE, msgs[i]).plaintext == b"%d" % i


def test_skip_limit_is_2000() -> None:
    alice, bob = pair()
    bob.recv(ALICE, alice.send(BOB, b"start"))
    alice.recv(BOB, bob.send(ALICE, b"ack"))
    record = session.SessionRecord.from_bytes(alice.store.get_sessions([BOB])[BOB])
    msgs = []
    for _ in range(2002):
        record, enc = session.encrypt(record, b"x", alice.local)
        msgs.append(enc.body)
    before = bob.snapshot(ALICE)
    with pytest.raises(InvalidMessage):
        bob.recv(ALICE, ("msg", msgs[2001]))  # counter 2002 after counter 0: 2002 ahead
    assert bob.snapshot(ALICE) == before
    assert bob.recv(ALICE, ("msg", msgs[1999])).plaintext == b"x"  # exactly 2000 ahead
    assert bob.recv(ALICE, ("msg", msgs[0])).plaintext == b"x"  # a skipped key, kept
    state = session.SessionRecord.from_bytes(bob.store.get_sessions([ALICE])[ALICE]).sessions[0]
    assert len(state.receiving[-1].skipped) == 1998
    assert bob.recv(ALICE, ("msg", msgs[2001])).plaintext == b"x"  # now within reach


def test_receiver_chain_bound() -> None:
    alice, bob = pair()
    bob.recv(ALICE, alice.send(BOB, b"start"))
    held = alice.send(BOB, b"held back")  # on alice's first chain
    for i in range(session.MAX_RECEIVER_CHAINS + 1):  # each round trip opens a new chain
        alice.recv(BOB, bob.send(ALICE, b"r%d" % i))
        bob.recv(ALICE, alice.send(BOB, b"a%d" % i))
    state = session.SessionRecord.from_bytes(bob.store.get_sessions([ALICE])[ALICE]).sessions[0]
    assert len(state.receiving) == session.MAX_RECEIVER_CHAINS
    with pytest.raises(InvalidMessage):
        bob.recv(ALICE, held)


def test_closed_sessions_still_decrypt_late_messages() -> None:
    alice, bob = pair()
    bob.recv(ALICE, alice.send(BOB, b"first"))
    alice.recv(BOB, bob.send(ALICE, b"ack"))
    late = alice.send(BOB, b"late")
    # Alice starts over from a fresh bundle (e.g. after a retry receipt): new session.
    signal_store.build_session(alice.store, BOB, bob.bundle(), alice.local, alice.rng)
    fresh = alice.send(BOB, b"fresh")
    assert fresh[0] == "pkmsg"
    assert bob.recv(ALICE, fresh).new_session
    got = bob.recv(ALICE, late)
    assert got.plaintext == b"late"
    assert got.from_closed_session
    record = session.SessionRecord.from_bytes(bob.store.get_sessions([ALICE])[ALICE])
    assert len(record.sessions) == 2
    assert record.open_session is not None
    assert sum(s.is_open for s in record.sessions) == 1


def test_record_keeps_at_most_40_sessions() -> None:
    alice, bob = Device(b"a40"), Device(b"b40")
    for i in range(session.MAX_SESSIONS + 5):
        signal_store.build_session(alice.store, BOB, bob.bundle(), alice.local, alice.rng)
        assert bob.recv(ALICE, alice.send(BOB, b"%d" % i)).new_session
    for d, addr in ((alice, BOB), (bob, ALICE)):
        record = session.SessionRecord.from_bytes(d.store.get_sessions([addr])[addr])
        assert len(record.sessions) == session.MAX_SESSIONS
        assert sum(s.is_open for s in record.sessions) == 1


def test_session_without_one_time_prekey() -> None:
    alice, bob = Device(b"a-noopk"), Device(b"b-noopk")
    signal_store.build_session(alice.store, BOB, bob.bundle(False), alice.local, alice.rng)
    msg = alice.send(BOB, b"x")
    assert messages.parse_prekey_whisper(msg[1]).prekey_id is None
    got = bob.recv(ALICE, msg)
    assert got.plaintext == b"x"
    assert got.new_session


def test_identity_change_is_reported_or_rejected() -> None:
    alice, bob = pair()
    bob.recv(ALICE, alice.send(BOB, b"hello"))
    # Alice reinstalls: new identity, new session towards Bob.
    alice2 = Device(b"alice reinstalled")
    signal_store.build_session(alice2.store, BOB, bob.bundle(), alice2.local, alice2.rng)
    msg = alice2.send(BOB, b"new me")
    before = bob.snapshot(ALICE)
    with pytest.raises(UntrustedIdentity):
        signal_store.decrypt(
            bob.store, ALICE, *msg, bob.local, bob.rng, signal_store.IdentityPolicy.REJECT_CHANGES
        )
    assert bob.snapshot(ALICE) == before
    got = bob.recv(ALICE, msg)
    assert got.plaintext == b"new me"
    assert got.identity_changed
    assert got.new_session
    assert bob.store.get_identities([ALICE]) == {ALICE: alice2.local.public}
    # A late message on the old identity's session is now untrusted, and changes nothing.
    old = alice.send(BOB, b"old me")
    before = bob.snapshot(ALICE)
    with pytest.raises(UntrustedIdentity):
        bob.recv(ALICE, old)
    assert bob.snapshot(ALICE) == before
    # And encrypting towards a peer whose trusted identity moved on is refused.
    bob.store.put_identities({ALICE: b"\x09" * 32})
    with pytest.raises(UntrustedIdentity):
        bob.send(ALICE, b"x")
    assert signal_store.build_session(bob.store, ALICE, alice2.bundle(), bob.local, bob.rng)


def test_failed_pkmsg_consumes_nothing() -> None:
    alice, bob = pair()
    kind, body = alice.send(BOB, b"hello")
    forged = body[:-1] + bytes((body[-1] ^ 1,))  # flips the inner MAC's last byte
    before = bob.snapshot(ALICE)
    with pytest.raises(InvalidMessage):
        bob.recv(ALICE, (kind, forged))
    assert bob.snapshot(ALICE) == before
    assert bob.store.get_prekeys([1])  # still there
    assert bob.recv(ALICE, (kind, body)).plaintext == b"hello"


def test_missing_prekeys_and_sessions() -> None:
    alice, bob = pair()
    msg = alice.send(BOB, b"hello")
    bob.store.remove_prekeys([1])
    with pytest.raises(InvalidMessage):
        bob.recv(ALICE, msg)
    a2, b2 = pair()
    b2.recv(ALICE, a2.send(BOB, b"x"))
    a2.recv(BOB, b2.send(ALICE, b"y"))
    plain = a2.send(BOB, b"z")
    assert plain[0] == "msg"
    with pytest.raises(NoSession):
        Device(b"fresh").recv(ALICE, plain)
    with pytest.raises(NoSession):
        Device(b"stranger").send(BOB, b"x")
    with pytest.raises(InvalidMessage):
        signal_store.decrypt(bob.store, ALICE, "skmsg", b"\x33", bob.local, bob.rng)


def test_foreign_message_is_invalid() -> None:
    alice, bob = pair()
    carol = Device(b"carol")
    bob.recv(ALICE, alice.send(BOB, b"hello"))
    alice.recv(BOB, bob.send(ALICE, b"hi"))
    signal_store.build_session(carol.store, BOB, bob.bundle(), carol.local, carol.rng)
    bob.recv("carol.0", carol.send(BOB, b"c"))
    carol.recv(BOB, bob.send("carol.0", b"c2"))
    foreign = carol.send(BOB, b"for bob from carol")
    before = bob.snapshot(ALICE)
    with pytest.raises(InvalidMessage):
        bob.recv(ALICE, foreign)  # right recipient, wrong sender's session
    assert bob.snapshot(ALICE) == before


def test_version_byte_rules() -> None:
    alice, bob = pair()
    bob.recv(ALICE, alice.send(BOB, b"hello"))
    _, body = bob.send(ALICE, b"hi")
    for bad in (0x23, 0x34, 0x13):
        with pytest.raises(InvalidMessage):
            messages.parse_whisper(bytes((bad,)) + body[1:])
    # libsignal accepts other version bytes with max >= 3 and min <= 3; the MAC uses 0x33.
    assert alice.recv(BOB, ("msg", b"\x43" + body[1:])).plaintext == b"hi"


def test_record_round_trip_and_corruption() -> None:
    alice, bob = pair()
    bob.recv(ALICE, alice.send(BOB, b"hello"))
    for _ in range(3):
        alice.send(BOB, b"skipped")
    bob.recv(ALICE, alice.send(BOB, b"after skip"))
    data = bob.store.get_sessions([ALICE])[ALICE]
    record = session.SessionRecord.from_bytes(data)
    assert record.to_bytes() == data
    assert record.sessions[0].receiving[0].skipped
    assert record.sessions[0].root_key.hex() not in repr(record)
    with pytest.raises(DecodeError):
        session.SessionRecord.from_bytes(b"\xff\xff")
    with pytest.raises(DecodeError):
        session.SessionRecord.from_bytes(b"")  # version 0


def test_bad_signed_prekey_signature_is_refused() -> None:
    alice, bob = Device(b"a-sig"), Device(b"b-sig")
    good = bob.bundle()
    bad = keys.PreKeyBundle(
        registration_id=good.registration_id,
        identity_key=good.identity_key,
        signed_prekey_id=good.signed_prekey_id,
        signed_prekey=good.signed_prekey,
        signed_prekey_signature=bytes(64),
        prekey_id=good.prekey_id,
        prekey=good.prekey,
    )
    with pytest.raises(CryptoError):
        signal_store.build_session(alice.store, BOB, bad, alice.local, alice.rng)
    assert alice.store.get_sessions([BOB]) == {}
    assert alice.store.get_identities([BOB]) == {}


def test_encrypt_many_is_all_or_nothing() -> None:
    alice, bob = pair()
    bob2 = Device(b"bob second device")
    signal_store.build_session(alice.store, "15550002222.1", bob2.bundle(), alice.local, alice.rng)
    out = signal_store.encrypt_many(
        alice.store, {BOB: b"to phone", "15550002222.1": b"to companion"}, alice.local
    )
    assert bob.recv(ALICE, (out[BOB].type.enc_type, out[BOB].body)).plaintext == b"to phone"
    second = out["15550002222.1"]
    assert bob2.recv(ALICE, (second.type.enc_type, second.body)).plaintext == b"to companion"
    before = alice.store.get_sessions([BOB, "15550002222.1"])
    with pytest.raises(NoSession):
        signal_store.encrypt_many(alice.store, {BOB: b"x", "15550009999.0": b"y"}, alice.local)
    assert alice.store.get_sessions([BOB, "15550002222.1"]) == before
