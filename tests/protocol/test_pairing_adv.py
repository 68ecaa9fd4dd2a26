"""ADV signed device identity, both roles (SPEC §8.4) against §18.7; container fuzzing."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.core import curve
from protocol.core.errors import PairingError
from protocol.core.pairing import adv
from protocol.core.pairing.adv import AdvEncryptionType, AdvFailure
from protocol.core.proto import adv_pb2

V: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "pairing_adv.json").read_text()
)
ACCOUNT = curve.keypair_from_private(bytes.fromhex(V["account_private_byte"]) * 32)
IDENT = curve.keypair_from_private(bytes.fromhex(V["companion_identity_private_byte"]) * 32)
ADV_SECRET = bytes.fromhex(V["adv_secret"])
CONTAINER = bytes.fromhex(V["container"])

# Fuzz budget: at least 2,000 examples; the "fuzz" hypothesis profile raises it.
FUZZ_EXAMPLES = max(2000, settings().max_examples)


def now() -> float:
    return float(V["timestamp"])


def test_primary_builds_the_vector_container() -> None:
    details = adv.build_device_identity(raw_id=V["raw_id"], key_index=V["key_index"], now=now)
    assert details.hex() == V["details"]
    signed = adv.sign_account(ACCOUNT, details, IDENT.public)
    parsed = adv_pb2.ADVSignedDeviceIdentity.FromString(signed)
    assert parsed.accountSignature.hex() == V["account_signature"]
    assert parsed.accountSignatureKey.hex() == V["account_public"]
    assert adv.build_container(signed, ADV_SECRET) == CONTAINER
    assert (
        adv.build_pair_success_container(
            account=ACCOUNT,
            companion_identity_public=IDENT.public,
            adv_secret=ADV_SECRET,
            raw_id=V["raw_id"],
            key_index=V["key_index"],
            now=now,
        )
        == CONTAINER
    )


def test_companion_processes_the_vector_container() -> None:
    paired = adv.process_pair_success(CONTAINER, adv_secret=ADV_SECRET, identity=IDENT)
    assert paired.device_signature.hex() == V["device_signature"]
    assert paired.account.hex() == V["account_with_key"]
    assert paired.key_index == 1
    assert paired.primary_identity_key == ACCOUNT.public
    assert paired.details == adv.DeviceIdentity(
        12345, 1700000000, 1, AdvEncryptionType.E2EE, AdvEncryptionType.E2EE
    )
    # The pair-device-sign content is the account without its key (the §18.7 reply node holds
    # exactly these bytes: `fc91` + this).
    assert paired.reply_identity == adv.identity_without_key(paired.account)
    assert paired.reply_identity.hex() in V["node_level"]["reply"]
    assert (
        adv_pb2.ADVSignedDeviceIdentity.FromString(paired.reply_identity).HasField(
            "accountSignatureKey"
        )
        is False
    )
    verified = adv.verify_device_signature(
        paired.reply_identity,
        account_public=ACCOUNT.public,
        companion_identity_public=IDENT.public,
        expected_details=bytes.fromhex(V["details"]),
    )
    assert verified.details == paired.details


def test_container_appears_in_the_stanza_vector() -> None:
    assert V["container"] in V["node_level"]["stanza"]


def _reason(exc: pytest.ExceptionInfo[PairingError]) -> object:
    return exc.value.details["reason"]


def test_wrong_adv_secret_is_hmac_mismatch() -> None:
    with pytest.raises(PairingError) as err:
        adv.process_pair_success(CONTAINER, adv_secret=b"\x89" * 32, identity=IDENT)
    assert _reason(err) is AdvFailure.HMAC_MISMATCH
    assert (AdvFailure.HMAC_MISMATCH.error_code, AdvFailure.HMAC_MISMATCH.error_text) == (
        401,
        "hmac-mismatch",
    )
    assert (AdvFailure.DECODE.error_code, AdvFailure.DECODE.error_text) == (500, "internal-error")


def test_other_companion_is_signature_mismatch() -> None:
    other = curve.keypair_from_private(b"\x78" * 32)
    with pytest.raises(PairingError) as err:
        adv.process_pair_success(CONTAINER, adv_secret=ADV_SECRET, identity=other)
    assert _reason(err) is AdvFailure.SIGNATURE_MISMATCH


def test_garbage_details_with_valid_hmac_is_decode() -> None:
    details = b"\x0a\xff"  # length runs past the end
    mac = hmac.new(ADV_SECRET, details, hashlib.sha256).digest()
    container = adv_pb2.ADVSignedDeviceIdentityHMAC(details=details, hmac=mac).SerializeToString()
    with pytest.raises(PairingError) as err:
        adv.process_pair_success(container, adv_secret=ADV_SECRET, identity=IDENT)
    assert _reason(err) is AdvFailure.DECODE


def test_hosted_prefixes_round_trip_and_matter() -> None:
    details = adv.build_device_identity(
        raw_id=7,
        key_index=3,
        now=now,
        account_type=AdvEncryptionType.HOSTED,
        device_type=AdvEncryptionType.HOSTED,
    )
    signed = adv.sign_account(ACCOUNT, details, IDENT.public)
    container = adv.build_container(signed, ADV_SECRET, hosted=True)
    paired = adv.process_pair_success(container, adv_secret=ADV_SECRET, identity=IDENT)
    assert paired.details.device_type is AdvEncryptionType.HOSTED
    assert paired.key_index == 3
    # Same HMAC without the HOSTED marker: the [6,5] prefix is then missing → mismatch.
    plain = adv_pb2.ADVSignedDeviceIdentityHMAC.FromString(container)
    plain.ClearField("accountType")
    with pytest.raises(PairingError) as err:
        adv.process_pair_success(plain.SerializeToString(), adv_secret=ADV_SECRET, identity=IDENT)
    assert _reason(err) is AdvFailure.HMAC_MISMATCH
    # An account signature made with [6,0] over HOSTED details fails the [6,5] check.
    wrong = adv_pb2.ADVSignedDeviceIdentity.FromString(signed)
    wrong.accountSignature = curve.sign(ACCOUNT.private, b"\x06\x00" + details + IDENT.public)
    container = adv.build_container(wrong.SerializeToString(), ADV_SECRET)
    with pytest.raises(PairingError) as err:
        adv.process_pair_success(container, adv_secret=ADV_SECRET, identity=IDENT)
    assert _reason(err) is AdvFailure.SIGNATURE_MISMATCH


def test_primary_rejects_bad_device_signature() -> None:
    paired = adv.process_pair_success(CONTAINER, adv_secret=ADV_SECRET, identity=IDENT)
    forged = adv_pb2.ADVSignedDeviceIdentity.FromString(paired.reply_identity)
    forged.deviceSignature = curve.sign(b"\x78" * 32, b"anything")
    with pytest.raises(PairingError) as err:
        adv.verify_device_signature(
            forged.SerializeToString(),
            account_public=ACCOUNT.public,
            companion_identity_public=IDENT.public,
        )
    assert _reason(err) is AdvFailure.SIGNATURE_MISMATCH
    with pytest.raises(PairingError):
        adv.verify_device_signature(
            paired.reply_identity,
            account_public=ACCOUNT.public,
            companion_identity_public=IDENT.public,
            expected_details=b"\x08\x01",
        )


def test_result_repr_is_free_of_secrets() -> None:
    paired = adv.process_pair_success(CONTAINER, adv_secret=ADV_SECRET, identity=IDENT)
    assert "7777" not in repr(paired)


@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**40),
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=32, max_size=32),
)
@settings(max_examples=60)
def test_both_roles_round_trip(
    raw_id: int, key_index: int, ts: int, acct_priv: bytes, ident_priv: bytes
) -> None:
    account = curve.keypair_from_private(acct_priv)
    ident = curve.keypair_from_private(ident_priv)
    container = adv.build_pair_success_container(
        account=account,
        companion_identity_public=ident.public,
        adv_secret=ADV_SECRET,
        raw_id=raw_id,
        key_index=key_index,
        now=lambda: float(ts),
    )
    paired = adv.process_pair_success(container, adv_secret=ADV_SECRET, identity=ident)
    assert paired.details.raw_id == raw_id
    assert paired.details.timestamp == ts
    assert paired.key_index == key_index
    assert paired.primary_identity_key == account.public
    adv.verify_device_signature(
        paired.reply_identity, account_public=account.public, companion_identity_public=ident.public
    )


# --- fuzz ---------------------------------------------------------------------------------------


@settings(max_examples=FUZZ_EXAMPLES)
@given(st.binary(max_size=200))
def test_fuzz_container_raises_only_pairing_error(data: bytes) -> None:
    with contextlib.suppress(PairingError):
        adv.process_pair_success(data, adv_secret=ADV_SECRET, identity=IDENT)


@settings(max_examples=FUZZ_EXAMPLES)
@given(st.binary(max_size=160), st.booleans())
def test_fuzz_details_behind_a_valid_hmac(details: bytes, hosted: bool) -> None:
    # Random inner bytes authenticated with the right secret reach the inner decoders.
    container = adv.build_container(details, ADV_SECRET, hosted=hosted)
    with pytest.raises(PairingError):
        adv.process_pair_success(container, adv_secret=ADV_SECRET, identity=IDENT)


@settings(max_examples=FUZZ_EXAMPLES)
@given(st.binary(max_size=60), st.binary(max_size=70), st.binary(max_size=40))
def test_fuzz_signed_identity_fields(details: bytes, sig: bytes, key: bytes) -> None:
    signed = adv_pb2.ADVSignedDeviceIdentity(
        details=details, accountSignatureKey=key, accountSignature=sig
    ).SerializeToString()
    container = adv.build_container(signed, ADV_SECRET)
    with pytest.raises(PairingError):
        adv.process_pair_success(container, adv_secret=ADV_SECRET, identity=IDENT)


@settings(max_examples=FUZZ_EXAMPLES)
@given(st.binary(max_size=200))
def test_fuzz_primary_reply_raises_only_pairing_error(data: bytes) -> None:
    with pytest.raises(PairingError):
        adv.verify_device_signature(
            data, account_public=ACCOUNT.public, companion_identity_public=IDENT.public
        )
