"""Sender keys (SPEC §10.8): chain rules, bounds, signatures, records, store glue."""

from __future__ import annotations

import pytest

from protocol import signal_store
from protocol.core import curve
from protocol.core.errors import DecodeError, DuplicateMessage, InvalidMessage, NoSession
from protocol.core.inject import CountingRng
from protocol.core.signal import kdf, messages, sender_keys
from protocol.store import MemoryKeyStore

NAME = "120363000000000001@g.us::15551234567::3"


def sender() -> tuple[sender_keys.SenderKeyRecord, sender_keys.SenderKeyRecord]:
    own = sender_keys.create(CountingRng(b"sender"))
    rx = sender_keys.process_distribution(None, sender_keys.distribution_message(own))
    return own, rx


def test_sequential_iterations_and_out_of_order() -> None:
    own, rx = sender()
    bodies = []
    for i in range(6):
        own, body = sender_keys.encrypt(own, b"m%d" % i)
        assert messages.parse_sender_key_message(body).iteration == i
        bodies.append(body)
    rx, pt = sender_keys.decrypt(rx, bodies[4])
    assert pt == b"m4"
    for i in (1, 0, 3, 2, 5):
        rx, pt = sender_keys.decrypt(rx, bodies[i])
        assert pt == b"m%d" % i
    assert rx.states[0].skipped_iterations == []
    with pytest.raises(DuplicateMessage):
        sender_keys.decrypt(rx, bodies[2])
    with pytest.raises(DuplicateMessage):
        sender_keys.decrypt(rx, bodies[5])


def test_future_limit_and_skipped_key_bound() -> None:
    own, rx = sender()
    state = own.states[0]
    assert state.signing_private is not None
    signing = curve.KeyPair(state.signing_private, state.signing_public)
    chain = state.chain_key
    for _ in range(2001):
        _, chain = kdf.chain_step(chain)
    far = sender_keys.own_record(state.key_id, 2001, chain, signing)
    _, too_far = sender_keys.encrypt(far, b"x")
    with pytest.raises(InvalidMessage):
        sender_keys.decrypt(rx, too_far)
    chain = state.chain_key
    for _ in range(2000):
        _, chain = kdf.chain_step(chain)
    _, edge = sender_keys.encrypt(sender_keys.own_record(state.key_id, 2000, chain, signing), b"y")
    rx2, pt = sender_keys.decrypt(rx, edge)
    assert pt == b"y"
    assert len(rx2.states[0].skipped_iterations) == sender_keys.MAX_MESSAGE_KEYS
    # Skipping 2001 to reach 2002 exceeds the bound: the oldest kept key (0) is dropped.
    _, nxt = sender_keys.encrypt(
        sender_keys.own_record(
            state.key_id, 2002, kdf.chain_step(kdf.chain_step(chain)[1])[1], signing
        ),
        b"z",
    )
    rx3, _ = sender_keys.decrypt(rx2, nxt)
    kept = rx3.states[0].skipped_iterations
    assert len(kept) == sender_keys.MAX_MESSAGE_KEYS
    assert kept[0] == 1  # 2001 was skipped; 0 dropped
    assert kept[-1] == 2001


def test_bad_signature_unknown_key_and_state_unchanged() -> None:
    own, rx = sender()
    own, body = sender_keys.encrypt(own, b"hello")
    forged = body[:-1] + bytes((body[-1] ^ 1,))
    with pytest.raises(InvalidMessage):
        sender_keys.decrypt(rx, forged)
    other = sender_keys.create(CountingRng(b"other"))
    _, foreign = sender_keys.encrypt(other, b"x")
    with pytest.raises(NoSession):
        sender_keys.decrypt(rx, foreign)
    with pytest.raises(NoSession):
        sender_keys.decrypt(None, body)
    rx, pt = sender_keys.decrypt(rx, body)  # the untouched record still works
    assert pt == b"hello"


def test_at_most_five_states_and_redelivered_skdm_does_not_rewind() -> None:
    rx: sender_keys.SenderKeyRecord | None = None
    owners = [sender_keys.create(CountingRng(b"s%d" % i)) for i in range(7)]
    for own in owners:
        rx = sender_keys.process_distribution(rx, sender_keys.distribution_message(own))
    assert rx is not None
    assert len(rx.states) == sender_keys.MAX_STATES
    assert [s.key_id for s in rx.states] == [o.states[0].key_id for o in owners[2:]]
    own = owners[-1]
    skdm = sender_keys.distribution_message(own)
    own, body = sender_keys.encrypt(own, b"once")
    rx, _ = sender_keys.decrypt(rx, body)
    again = sender_keys.process_distribution(rx, skdm)
    assert again == rx
    with pytest.raises(DuplicateMessage):
        sender_keys.decrypt(again, body)


def test_record_round_trip_and_corruption() -> None:
    own, rx = sender()
    own, _b0 = sender_keys.encrypt(own, b"0")
    own, b1 = sender_keys.encrypt(own, b"1")
    rx, _ = sender_keys.decrypt(rx, b1)
    for record in (own, rx):
        assert sender_keys.SenderKeyRecord.from_bytes(record.to_bytes()) == record
    assert rx.states[0].skipped_iterations == [0]
    with pytest.raises(DecodeError):
        sender_keys.SenderKeyRecord.from_bytes(b"\x0a\x01")
    assert own.states[0].chain_key.hex() not in repr(own)


def test_store_glue() -> None:
    store_a, store_b = MemoryKeyStore(), MemoryKeyStore()
    rng = CountingRng(b"glue")
    skdm = signal_store.group_distribution(store_a, NAME, rng)
    assert signal_store.group_distribution(store_a, NAME, rng) == skdm  # created once
    signal_store.process_group_distribution(store_b, NAME, skdm)
    body = signal_store.group_encrypt(store_a, NAME, b"hi group")
    assert signal_store.group_decrypt(store_b, NAME, body) == b"hi group"
    before = store_b.get_sender_keys([NAME])
    with pytest.raises(DuplicateMessage):
        signal_store.group_decrypt(store_b, NAME, body)
    assert store_b.get_sender_keys([NAME]) == before
    with pytest.raises(NoSession):
        signal_store.group_encrypt(store_b, "other::x::0", b"no state")
    with pytest.raises(NoSession):
        signal_store.group_encrypt(store_b, NAME, b"receive-only state")
