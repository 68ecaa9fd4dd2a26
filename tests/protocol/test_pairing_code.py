"""Link-code pairing, both roles (SPEC §9) against §18.6; bundle fuzzing.

PBKDF2 runs 131072 iterations (~20 ms each): tests that derive keys keep few examples.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.core import curve
from protocol.core.errors import PairingError
from protocol.core.inject import Rng
from protocol.core.pairing import link_code as lc
from protocol.core.pairing.link_code import LinkCodeFailure, PairingCode

V: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "pairing_code.json").read_text()
)

# Fuzz budget: at least 2,000 examples; the "fuzz" hypothesis profile raises it.
FUZZ_EXAMPLES = max(2000, settings().max_examples)


def kp(byte_hex: str) -> curve.KeyPair:
    return curve.keypair_from_private(bytes.fromhex(byte_hex) * 32)


def fixed(*parts: bytes) -> Rng:
    pool = bytearray(b"".join(parts))

    def rng(n: int) -> bytes:
        assert len(pool) >= n, "test rng exhausted"
        out = bytes(pool[:n])
        del pool[:n]
        return out

    return rng


CODE = PairingCode(V["code"])
COMPANION_EPH = kp(V["companion_ephemeral_private_byte"])
PRIMARY_EPH = kp(V["primary_ephemeral_private_byte"])
PRIMARY_IDENT = kp(V["primary_identity_private_byte"])
COMPANION_IDENT = kp(V["companion_identity_private_byte"])


@pytest.mark.parametrize(("data", "expected"), V["crockford"])
def test_crockford_vectors(data: str, expected: str) -> None:
    assert lc.bytes_to_crockford(bytes.fromhex(data)) == expected
    assert PairingCode.generate(lambda n: bytes.fromhex(data)).value == expected


def test_key_and_wrapped_vectors() -> None:
    assert lc.derive_code_key(CODE, bytes.fromhex(V["salt"])).hex() == V["key"]
    wrapped = lc.companion_hello(
        CODE, COMPANION_EPH, fixed(bytes.fromhex(V["salt"]), bytes.fromhex(V["iv"]))
    )
    assert wrapped.hex() == V["wrapped"]
    assert lc.unwrap_key(CODE, wrapped) == COMPANION_EPH.public


def _primary_wrapped() -> bytes:
    return lc.wrap_key(CODE, PRIMARY_EPH.public, fixed(b"\x06" * 32, b"\x07" * 16))


def test_bundle_and_adv_vectors_companion_side() -> None:
    finish = lc.companion_finish(
        companion_ephemeral=COMPANION_EPH,
        companion_identity=COMPANION_IDENT,
        primary_ephemeral_public=lc.unwrap_key(CODE, _primary_wrapped()),
        primary_identity_public=PRIMARY_IDENT.public,
        # Baileys' draw order: advRandom, bundle salt, nonce.
        rng=fixed(
            bytes.fromhex(V["adv_random"]),
            bytes.fromhex(V["bundle_salt"]),
            bytes.fromhex(V["bundle_nonce"]),
        ),
    )
    assert curve.shared_key(COMPANION_EPH.private, PRIMARY_EPH.public).hex() == V["shared"]
    assert finish.wrapped_key_bundle.hex() == V["bundle"]
    assert finish.adv_secret.hex() == V["adv_secret"]
    assert V["adv_secret"] not in repr(finish)


def test_primary_side_mirrors_the_vectors() -> None:
    hello = lc.primary_hello(
        code=CODE,
        wrapped_companion_ephemeral=bytes.fromhex(V["wrapped"]),
        primary_ephemeral=PRIMARY_EPH,
        rng=fixed(b"\x06" * 32, b"\x07" * 16),
    )
    assert hello.companion_ephemeral_public == COMPANION_EPH.public
    assert hello.wrapped_primary_ephemeral == _primary_wrapped()
    secret = lc.primary_finish(
        primary_ephemeral=PRIMARY_EPH,
        primary_identity=PRIMARY_IDENT,
        companion_ephemeral_public=hello.companion_ephemeral_public,
        companion_identity_public=COMPANION_IDENT.public,
        wrapped_key_bundle=bytes.fromhex(V["bundle"]),
    )
    assert secret.hex() == V["adv_secret"]


def _finish(**overrides: Any) -> bytes:
    kwargs: dict[str, Any] = {
        "primary_ephemeral": PRIMARY_EPH,
        "primary_identity": PRIMARY_IDENT,
        "companion_ephemeral_public": COMPANION_EPH.public,
        "companion_identity_public": COMPANION_IDENT.public,
        "wrapped_key_bundle": bytes.fromhex(V["bundle"]),
    }
    kwargs.update(overrides)
    return lc.primary_finish(**kwargs)


def test_tampered_bundle_and_wrong_peers_fail() -> None:
    bundle = bytearray.fromhex(V["bundle"])
    bundle[100] ^= 1
    with pytest.raises(PairingError) as err:
        _finish(wrapped_key_bundle=bytes(bundle))
    assert err.value.details["reason"] is LinkCodeFailure.BUNDLE_DECRYPT
    with pytest.raises(PairingError) as err:
        _finish(wrapped_key_bundle=bytes.fromhex(V["bundle"])[:-1])
    assert err.value.details["reason"] is LinkCodeFailure.BAD_LENGTH
    with pytest.raises(PairingError) as err:  # the stanza names another companion identity
        _finish(companion_identity_public=kp("78").public)
    assert err.value.details["reason"] is LinkCodeFailure.BUNDLE_MISMATCH
    with pytest.raises(PairingError) as err:
        _finish(companion_ephemeral_public=b"\x00" * 32)
    assert err.value.details["reason"] is LinkCodeFailure.BAD_KEY


def test_wrong_code_fails_at_the_bundle() -> None:
    # The companion typed-in code differs: it unwraps a wrong primary key, so the phone's GCM
    # check fails. (CTR wrapping has no tag; this is where a wrong code shows.)
    wrong = PairingCode("ABCD1235")
    finish = lc.companion_finish(
        companion_ephemeral=COMPANION_EPH,
        companion_identity=COMPANION_IDENT,
        primary_ephemeral_public=lc.unwrap_key(wrong, _primary_wrapped()),
        primary_identity_public=PRIMARY_IDENT.public,
        rng=fixed(b"\x01" * 76),
    )
    with pytest.raises(PairingError) as err:
        _finish(wrapped_key_bundle=finish.wrapped_key_bundle)
    assert err.value.details["reason"] in (LinkCodeFailure.BUNDLE_DECRYPT, LinkCodeFailure.BAD_KEY)


def test_code_validation_and_display() -> None:
    code = PairingCode.parse("ABCD-1234")
    assert code == CODE
    assert code.display == "ABCD-1234"
    assert "ABCD" not in repr(code)
    for bad in ["ABCD123", "ABCD12345", "ABCD123O", "abcd1234", "ABCD_1234", "ABC-D1234", ""]:
        with pytest.raises(PairingError):
            PairingCode.parse(bad)
    with pytest.raises(PairingError):
        lc.unwrap_key(CODE, b"\x00" * 79)
    with pytest.raises(PairingError):
        lc.wrap_key(CODE, b"\x00" * 31, fixed(b"\x00" * 48))


@given(st.binary(min_size=5, max_size=5))
def test_generated_codes_are_valid(data: bytes) -> None:
    code = PairingCode.generate(lambda n: data)
    assert PairingCode.parse(code.display) == code


@settings(max_examples=8)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_full_exchange_both_roles(companion_seed: bytes, primary_seed: bytes) -> None:
    c_rng = fixed(companion_seed * 8)
    p_rng = fixed(primary_seed * 8)
    code = PairingCode.generate(c_rng)
    c_eph, c_ident = curve.generate_keypair(c_rng), curve.generate_keypair(c_rng)
    p_eph, p_ident = curve.generate_keypair(p_rng), curve.generate_keypair(p_rng)
    hello = lc.primary_hello(
        code=code,
        wrapped_companion_ephemeral=lc.companion_hello(code, c_eph, c_rng),
        primary_ephemeral=p_eph,
        rng=p_rng,
    )
    finish = lc.companion_finish(
        companion_ephemeral=c_eph,
        companion_identity=c_ident,
        primary_ephemeral_public=lc.unwrap_key(code, hello.wrapped_primary_ephemeral),
        primary_identity_public=p_ident.public,
        rng=c_rng,
    )
    assert len(finish.wrapped_key_bundle) == lc.WRAPPED_BUNDLE_LEN
    secret = lc.primary_finish(
        primary_ephemeral=p_eph,
        primary_identity=p_ident,
        companion_ephemeral_public=hello.companion_ephemeral_public,
        companion_identity_public=c_ident.public,
        wrapped_key_bundle=finish.wrapped_key_bundle,
    )
    assert secret == finish.adv_secret


# --- fuzz ---------------------------------------------------------------------------------------


@settings(max_examples=FUZZ_EXAMPLES)
@given(st.binary(max_size=200), st.binary(max_size=40), st.binary(max_size=40))
def test_fuzz_bundle_decrypt_raises_only_pairing_error(
    bundle: bytes, companion_eph: bytes, companion_ident: bytes
) -> None:
    with pytest.raises(PairingError):
        lc.primary_finish(
            primary_ephemeral=PRIMARY_EPH,
            primary_identity=PRIMARY_IDENT,
            companion_ephemeral_public=companion_eph,
            companion_identity_public=companion_ident,
            wrapped_key_bundle=bundle,
        )


@settings(max_examples=FUZZ_EXAMPLES)
@given(st.binary(min_size=156, max_size=156))
def test_fuzz_well_sized_bundles(bundle: bytes) -> None:
    with pytest.raises(PairingError):
        _finish(wrapped_key_bundle=bundle)


@settings(max_examples=FUZZ_EXAMPLES)
@given(st.text(max_size=12))
def test_fuzz_code_parse(text: str) -> None:
    try:
        code = PairingCode.parse(text)
    except PairingError:
        return
    assert len(code.value) == 8
