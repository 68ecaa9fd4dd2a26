"""Bad input never corrupts state (issue 4 §10, DESIGN §3.10): truncated, forged, replayed and
random Signal messages raise `DecryptionError` subclasses and leave the store unchanged; the
parsers raise only `InvalidMessage`, the record readers only `DecodeError`.

Each property runs 2,000 examples (more under the `fuzz` hypothesis profile).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import signal_store
from protocol.core.errors import DecodeError, DecryptionError, InvalidMessage
from protocol.core.inject import CountingRng
from protocol.core.signal import keys, messages, sender_keys, session
from protocol.store import MemoryKeyStore

EXAMPLES = max(2000, settings().max_examples)  # the `fuzz` profile raises it to 100,000
ALICE, BOB = "15550001111.0", "15550002222.0"
GROUP = "120363000000000001@g.us::15550001111::0"


def mutations(original: bytes) -> st.SearchStrategy[bytes]:
    """Truncations, bit flips, insertions, overwrites of `original`, and unrelated bytes."""
    n = len(original)

    def flip(bit: int) -> bytes:
        b = bytearray(original)
        b[bit // 8] ^= 1 << (bit % 8)
        return bytes(b)

    return st.one_of(
        st.integers(0, n - 1).map(lambda k: original[:k]),
        st.integers(0, n * 8 - 1).map(flip),
        st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=8)).map(
            lambda t: original[: t[0]] + t[1] + original[t[0] :]
        ),
        st.tuples(st.integers(0, n - 1), st.binary(min_size=1, max_size=16)).map(
            lambda t: original[: t[0]] + t[1] + original[t[0] + len(t[1]) :]
        ),
        st.binary(max_size=2 * n),
        st.just(original),  # a replay (after its first delivery: a duplicate)
    )


class Scene:
    """Alice and Bob with a session, one message of each kind in flight to Bob."""

    def __init__(self) -> None:
        self.rng = CountingRng(b"fuzz")
        self.alice, self.bob = keys.generate_identity(self.rng), keys.generate_identity(self.rng)
        self.a_store, self.b_store = MemoryKeyStore(), MemoryKeyStore()
        spk = signal_store.signed_prekey(self.b_store, self.bob, self.rng)
        pk = signal_store.prekeys_for_upload(self.b_store, 1, self.rng)[0]
        bundle = keys.bundle_for(self.bob, spk, pk)
        signal_store.build_session(self.a_store, BOB, bundle, self.alice, self.rng)
        self.pkmsg = signal_store.encrypt(self.a_store, BOB, b"first", self.alice).body
        self.pkmsg_plaintext = b"first"
        # A second Bob store that has already accepted the pkmsg, for `msg` fuzzing.
        self.b2_store = MemoryKeyStore()
        for k, v in self.b_store.get_prekeys([pk.id]).items():
            self.b2_store.put_prekeys({k: v})
        self.b2_store.put_signed_prekey(spk.id, spk.to_bytes())
        signal_store.decrypt(self.b2_store, ALICE, "pkmsg", self.pkmsg, self.bob, self.rng)
        reply = signal_store.encrypt(self.b2_store, ALICE, b"ack", self.bob)
        signal_store.decrypt(
            self.a_store, BOB, reply.type.enc_type, reply.body, self.alice, self.rng
        )
        self.msg = signal_store.encrypt(self.a_store, BOB, b"second", self.alice).body
        # Sender keys: Alice's group state distributed to Bob.
        skdm = signal_store.group_distribution(self.a_store, GROUP, self.rng)
        signal_store.process_group_distribution(self.b2_store, GROUP, skdm)
        self.skmsg = signal_store.group_encrypt(self.a_store, GROUP, b"group")


SCENE = Scene()


def snapshot(store: MemoryKeyStore) -> tuple[object, ...]:
    return (
        store.get_sessions([ALICE, BOB]),
        store.get_identities([ALICE, BOB]),
        store.get_prekeys(list(range(1, 10))),
        store.count_unuploaded_prekeys(),
        store.get_sender_keys([GROUP]),
    )


def check(store: MemoryKeyStore, run: Callable[[], bytes], expected: bytes) -> None:
    before = snapshot(store)
    try:
        plaintext = run()
    except DecryptionError:
        assert snapshot(store) == before
        return
    # Only the genuine message may decrypt, to its own plaintext. (Bytes the MAC does not
    # cover may differ, as with libsignal: accepted version-byte values, unknown outer pkmsg
    # fields.)
    assert plaintext == expected


@settings(max_examples=EXAMPLES)
@given(st.binary(max_size=400))
def test_parsers_raise_only_invalid_message(data: bytes) -> None:
    for parse in (
        messages.parse_whisper,
        messages.parse_prekey_whisper,
        messages.parse_sender_key_message,
        messages.parse_sender_key_distribution,
    ):
        with contextlib.suppress(InvalidMessage):
            parse(data)


@settings(max_examples=EXAMPLES)
@given(st.binary(max_size=400))
def test_record_readers_raise_only_decode_error(data: bytes) -> None:
    readers: tuple[Callable[[bytes], object], ...] = (
        session.SessionRecord.from_bytes,
        sender_keys.SenderKeyRecord.from_bytes,
        keys.PreKey.from_bytes,
        keys.SignedPreKey.from_bytes,
    )
    for read in readers:
        with contextlib.suppress(DecodeError):
            read(data)


@settings(max_examples=EXAMPLES)
@given(mutations(SCENE.msg))
def test_msg_decrypt_fuzz(data: bytes) -> None:
    store = SCENE.b2_store
    check(
        store,
        lambda: signal_store.decrypt(store, ALICE, "msg", data, SCENE.bob, SCENE.rng).plaintext,
        b"second",
    )


@settings(max_examples=EXAMPLES)
@given(mutations(SCENE.pkmsg))
def test_pkmsg_decrypt_fuzz(data: bytes) -> None:
    store = SCENE.b_store
    check(
        store,
        lambda: signal_store.decrypt(store, ALICE, "pkmsg", data, SCENE.bob, SCENE.rng).plaintext,
        SCENE.pkmsg_plaintext,
    )


@settings(max_examples=EXAMPLES)
@given(mutations(SCENE.skmsg))
def test_skmsg_decrypt_fuzz(data: bytes) -> None:
    store = SCENE.b2_store
    check(store, lambda: signal_store.group_decrypt(store, GROUP, data), b"group")


@pytest.mark.parametrize("kind", ["msg", "pkmsg"])
def test_empty_and_tiny_inputs(kind: str) -> None:
    for data in (b"", b"\x33", b"\x33" * 9, b"\x33" + bytes(40)):
        with pytest.raises(InvalidMessage):
            signal_store.decrypt(SCENE.b2_store, ALICE, kind, data, SCENE.bob, SCENE.rng)


@settings(max_examples=300)
@given(
    st.binary(min_size=32, max_size=32),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.binary(min_size=1, max_size=8).map(lambda b: b * 16),
    st.binary(min_size=8, max_size=8),
)
def test_whisper_encode_parse_round_trip(
    key: bytes, counter: int, previous: int, ciphertext: bytes, mac: bytes
) -> None:
    body = messages.encode_whisper_body(key, counter, previous, ciphertext)
    parsed = messages.parse_whisper(b"\x33" + body + mac)
    assert (parsed.ratchet_key, parsed.counter, parsed.previous_counter) == (key, counter, previous)
    assert (parsed.ciphertext, parsed.body, parsed.mac) == (ciphertext, body, mac)
    wrapped = messages.encode_prekey_whisper(
        prekey_id=counter & 0xFFFFFF or None,
        signed_prekey_id=previous & 0xFFFFFF,
        base_key=key,
        identity_key=key[::-1],
        registration_id=previous,
        message=b"\x33" + body + mac,
    )
    pk = messages.parse_prekey_whisper(wrapped)
    assert pk.prekey_id == (counter & 0xFFFFFF or None)
    assert (pk.base_key, pk.identity_key, pk.registration_id) == (key, key[::-1], previous)
    assert pk.message == parsed
