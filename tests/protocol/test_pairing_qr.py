"""QR payload and platform ids (SPEC §8.3) against §18.5; parser fuzzing."""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.core import curve
from protocol.core.errors import DecodeError
from protocol.core.pairing import qr

V: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "pairing_qr.json").read_text()
)

# Fuzz budget: at least 2,000 examples; the "fuzz" hypothesis profile raises it.
FUZZ_EXAMPLES = max(2000, settings().max_examples)


def test_qr_vector() -> None:
    c = V["qr"]
    noise = curve.public_key(bytes.fromhex(c["noise_private_byte"]) * 32)
    identity = curve.public_key(bytes.fromhex(c["identity_private_byte"]) * 32)
    assert noise.hex() == c["noise_public"]
    assert identity.hex() == c["identity_public"]
    platform = qr.companion_platform_id(tuple(c["browser"]))
    text = qr.build_qr(c["ref"], noise, identity, bytes.fromhex(c["adv_secret"]), platform)
    assert text == c["expected"]
    parsed = qr.parse_qr(text)
    assert parsed == qr.QRPayload(c["ref"], noise, identity, bytes.fromhex(c["adv_secret"]), "1")
    assert c["adv_secret"] not in repr(parsed)


@pytest.mark.parametrize(("browser", "expected"), [(tuple(b), e) for b, e in V["platform_ids"]])
def test_platform_ids(browser: tuple[str, str, str], expected: str) -> None:
    assert qr.companion_platform_id(browser) == expected


def test_parse_bare_legacy_form() -> None:
    keys = [bytes([i]) * 32 for i in (1, 2, 3)]
    text = ",".join(["2@ref", *(base64.b64encode(k).decode() for k in keys)])
    parsed = qr.parse_qr(text)
    assert parsed.platform_id is None
    assert (parsed.noise_public, parsed.identity_public, parsed.adv_secret) == tuple(keys)


B64 = base64.b64encode(b"\x01" * 32).decode()


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "2@ref",
        f"2@ref,{B64},{B64}",
        f"2@ref,{B64},{B64},{B64},1",  # bare form with a platform id
        f"{qr.QR_URL_PREFIX}2@ref,{B64},{B64},{B64}",  # URL form without one
        f"{qr.QR_URL_PREFIX}2@ref,{B64},{B64},{B64},",
        f"{qr.QR_URL_PREFIX}2@ref,{B64},{B64},{B64},ABC",
        f",{B64},{B64},{B64}",
        f"2@ref,{B64[:-1]},{B64},{B64}",
        f"2@ref,{base64.b64encode(b'x' * 31).decode()},{B64},{B64}",
        f"2@ref,{B64[:-2]}!=,{B64},{B64}",
        f"2 ref,{B64},{B64},{B64}",
    ],
)
def test_parse_rejects_malformed(bad: str) -> None:
    with pytest.raises(DecodeError):
        qr.parse_qr(bad)


def test_build_rejects_bad_inputs() -> None:
    with pytest.raises(DecodeError):
        qr.build_qr("a,b", b"\x01" * 32, b"\x01" * 32, b"\x01" * 32, "1")
    with pytest.raises(DecodeError):
        qr.build_qr("ref", b"\x01" * 31, b"\x01" * 32, b"\x01" * 32, "1")
    with pytest.raises(DecodeError):
        qr.build_qr("ref", b"\x01" * 32, b"\x01" * 32, b"\x01" * 32, "x!")


_REF = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=","),
    min_size=1,
    max_size=80,
)


@given(_REF, st.lists(st.binary(min_size=32, max_size=32), min_size=3, max_size=3))
def test_build_parse_round_trip(ref: str, keys: list[bytes]) -> None:
    text = qr.build_qr(ref, keys[0], keys[1], keys[2], "9")
    assert qr.parse_qr(text) == qr.QRPayload(ref, keys[0], keys[1], keys[2], "9")


@settings(max_examples=FUZZ_EXAMPLES)
@given(st.text(max_size=200))
def test_fuzz_parse_raises_only_decode_error(text: str) -> None:
    with contextlib.suppress(DecodeError):
        qr.parse_qr(text)


@settings(max_examples=FUZZ_EXAMPLES)
@given(
    st.booleans(),
    st.lists(
        st.one_of(st.just(B64), _REF, st.text(max_size=50), st.sampled_from(["1", "c", "", "=="])),
        max_size=7,
    ),
)
def test_fuzz_structured_qr(url: bool, fields: list[str]) -> None:
    text = (qr.QR_URL_PREFIX if url else "") + ",".join(fields)
    try:
        parsed = qr.parse_qr(text)
    except DecodeError:
        return
    assert len(parsed.noise_public) == len(parsed.identity_public) == len(parsed.adv_secret) == 32
