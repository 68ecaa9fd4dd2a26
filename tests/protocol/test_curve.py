"""curve25519 keys and signatures against SPEC §18.3 / §18.2 vectors and libsignal semantics."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.core import curve
from protocol.core.errors import CryptoError

# SPEC §18.3: libsignal `curve.calculateSignature(Buffer.alloc(32, 0xa1), 'hello')`.
SIG_A1_HELLO = bytes.fromhex(
    "062afe2a5aa70e9daa7e2b5932dd5dd02ad2ef5d49fd38877a25b8fab6c218b3"
    "3d205dc1ec624b0862a99ec7a63ccb004927cc916eb1aaf4ed426eb053fb9b84"
)
PUB_A1 = bytes.fromhex("c306fb0ef2bf8b7f93bad98155fa37daec74db0c4cbeda6c6f1dba9d36558252")


def test_signature_vector_is_byte_exact() -> None:
    assert curve.sign(b"\xa1" * 32, b"hello") == SIG_A1_HELLO
    assert curve.public_key(b"\xa1" * 32) == PUB_A1
    assert curve.verify(PUB_A1, b"hello", SIG_A1_HELLO)
    assert curve.verify(curve.djb(PUB_A1), b"hello", SIG_A1_HELLO)


def test_seed_public_keys_match_spec_table() -> None:
    # SPEC §18.0 table of kp(b) public keys.
    assert curve.public_key(b"\x11" * 32).hex() == (
        "7b4e909bbe7ffe44c465a220037d608ee35897d31ef972f07f74892cb0f73f13"
    )
    assert curve.public_key(b"\x55" * 32).hex() == (
        "38ab664bd86f77d7e66bdd9ae0792913a94fd8b33a1260027e4b46c1f4884c67"
    )


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=200))
def test_sign_verify_round_trip(private: bytes, message: bytes) -> None:
    kp = curve.keypair_from_private(private)
    sig = curve.sign(kp.private, message)
    assert curve.verify(kp.public, message, sig)
    assert not curve.verify(kp.public, message + b"x", sig)
    tampered = bytearray(sig)
    tampered[5] ^= 1
    assert not curve.verify(kp.public, message, bytes(tampered))


@given(st.binary(max_size=40), st.binary(max_size=40), st.binary(max_size=70))
def test_verify_never_raises_on_garbage(public: bytes, message: bytes, sig: bytes) -> None:
    assert curve.verify(public, message, sig) in (True, False)


def test_shared_key_rejects_low_order_point() -> None:
    with pytest.raises(CryptoError):
        curve.shared_key(b"\x01" * 32, b"\x00" * 32)


def test_keypair_repr_hides_private_key() -> None:
    kp = curve.keypair_from_private(b"\xa1" * 32)
    assert "a1a1" not in repr(kp)
    assert PUB_A1.hex() in repr(kp)


def test_generate_keypair_is_clamped_and_deterministic() -> None:
    kp = curve.generate_keypair(lambda n: b"\xff" * n)
    assert kp.private[0] & 7 == 0
    assert kp.private[31] & 0x80 == 0
    assert kp.private[31] & 0x40
    assert kp == curve.generate_keypair(lambda n: b"\xff" * n)
