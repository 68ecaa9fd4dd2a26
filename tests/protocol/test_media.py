"""Media crypto (SPEC §11) against the §18.12 vector; streaming, tampering, fuzzing."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.core import media
from protocol.core.errors import DecodeError, MediaError
from protocol.core.media import MediaCheck, MediaType

V: dict[str, Any] = json.loads((Path(__file__).parents[1] / "vectors" / "media.json").read_text())
KEY = bytes.fromhex(V["media_key"])
PLAIN = V["plaintext_utf8"].encode()
ENC = bytes.fromhex(V["enc_file"])
FILE_SHA = base64.b64decode(V["file_sha256_b64"])
FILE_ENC_SHA = base64.b64decode(V["file_enc_sha256_b64"])

# Fuzz budget: at least 2,000 examples; the "fuzz" hypothesis profile raises it.
FUZZ_EXAMPLES = max(2000, settings().max_examples)


def test_key_expansion_vector() -> None:
    keys = media.expand_media_key(KEY, MediaType(V["media_type"]))
    assert (keys.iv + keys.cipher_key + keys.mac_key + keys.ref_key).hex() == V["expanded"]
    assert keys.iv.hex() == V["iv"]
    assert keys.cipher_key.hex() == V["cipher_key"]
    assert keys.mac_key.hex() == V["mac_key"]
    assert keys.ref_key.hex() == V["ref_key"]
    assert V["iv"] not in repr(keys)


def test_encrypt_vector_and_hashes() -> None:
    enc, info = media.encrypt_media_with_key(PLAIN, MediaType.IMAGE, KEY)
    assert enc == ENC
    assert info.file_sha256 == FILE_SHA
    assert info.file_enc_sha256 == FILE_ENC_SHA
    assert info.file_length == len(PLAIN)
    assert info.mac == ENC[-10:]
    assert media.upload_token(info.file_enc_sha256) == V["upload_token"]
    assert KEY.hex() not in repr(info)


def test_one_shot_with_rng_draws_the_key() -> None:
    enc, info = media.encrypt_media(PLAIN, MediaType.IMAGE, lambda n: b"\x01" * n)
    assert enc == ENC
    assert info.media_key == KEY


def test_decrypt_vector() -> None:
    got = media.decrypt_media(
        ENC,
        KEY,
        MediaType.IMAGE,
        file_enc_sha256=FILE_ENC_SHA,
        file_sha256=FILE_SHA,
        file_length=20,
    )
    assert got == PLAIN


def test_info_strings_cover_the_spec_table() -> None:
    info = {t: media.MEDIA_TYPES[t].hkdf_info for t in MediaType}
    assert info[MediaType.STICKER] == b"WhatsApp Image Keys"
    assert info[MediaType.PTV] == b"WhatsApp Video Keys"
    assert info[MediaType.PTT] == b"WhatsApp Audio Keys"
    assert info[MediaType.HISTORY] == b"WhatsApp History Keys"
    assert info[MediaType.APP_STATE] == b"WhatsApp App State Keys"
    assert info[MediaType.LINK_THUMBNAIL] == b"WhatsApp Link Thumbnail Keys"
    assert info[MediaType.THUMBNAIL_DOCUMENT] == b"WhatsApp Document Thumbnail Keys"
    assert info[MediaType.STICKER_PACK] == b"WhatsApp Sticker Pack Keys"
    assert info[MediaType.PROFILE_PICTURE] == b"WhatsApp  Keys"
    assert media.MEDIA_TYPES[MediaType.HISTORY].upload_path == "/mms/md-app-state"
    assert media.MEDIA_TYPES[MediaType.STICKER].upload_path == "/mms/image"
    assert media.MEDIA_TYPES[MediaType.GIF].mediatype_attr == "gif"
    assert set(media.MEDIA_TYPES) == set(MediaType)


def test_media_retry_key_is_hkdf_32() -> None:
    assert len(media.media_retry_key(KEY)) == 32
    assert media.media_retry_key(KEY) != media.media_retry_key(b"\x02" * 32)


@pytest.mark.parametrize(
    ("mutate", "check"),
    [
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), MediaCheck.MAC),
        (lambda b: bytes([b[0] ^ 1]) + b[1:], MediaCheck.MAC),
        (lambda b: b[:16] + b[-10:], MediaCheck.MAC),
        (lambda b: b[:5], MediaCheck.LENGTH),
        (lambda b: b"", MediaCheck.LENGTH),
        (lambda b: b[:-10] + b"\x00" * 3 + b[-10:], MediaCheck.LENGTH),
    ],
)
def test_decrypt_reports_which_check_failed(mutate: Any, check: MediaCheck) -> None:
    bad = mutate(ENC)
    with pytest.raises(MediaError) as err:
        media.decrypt_media(bad, KEY, MediaType.IMAGE, file_enc_sha256=None, file_sha256=FILE_SHA)
    assert err.value.details["check"] is check
    with pytest.raises(MediaError) as err:
        media.decrypt_media(
            bad, KEY, MediaType.IMAGE, file_enc_sha256=FILE_ENC_SHA, file_sha256=FILE_SHA
        )
    assert err.value.details["check"] is MediaCheck.FILE_ENC_SHA256


def test_decrypt_wrong_plain_hash_length_type_and_key() -> None:
    kw: dict[str, Any] = {"file_enc_sha256": FILE_ENC_SHA}
    with pytest.raises(MediaError) as err:
        media.decrypt_media(ENC, KEY, MediaType.IMAGE, file_sha256=b"\x00" * 32, **kw)
    assert err.value.details["check"] is MediaCheck.FILE_SHA256
    with pytest.raises(MediaError) as err:
        media.decrypt_media(ENC, KEY, MediaType.IMAGE, file_sha256=FILE_SHA, file_length=3, **kw)
    assert err.value.details["check"] is MediaCheck.FILE_LENGTH
    with pytest.raises(MediaError) as err:  # another type gives other keys
        media.decrypt_media(ENC, KEY, MediaType.VIDEO, file_sha256=FILE_SHA, **kw)
    assert err.value.details["check"] is MediaCheck.MAC
    with pytest.raises(MediaError) as err:
        media.decrypt_media(ENC, KEY[:31], MediaType.IMAGE, file_sha256=FILE_SHA, **kw)
    assert err.value.details["check"] is MediaCheck.MEDIA_KEY


def test_bad_padding_with_valid_mac_is_reported() -> None:
    # A forger who knows the keys: valid MAC over a ciphertext whose last block has bad padding.
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    keys = media.expand_media_key(KEY, MediaType.IMAGE)
    enc = Cipher(algorithms.AES(keys.cipher_key), modes.CBC(keys.iv)).encryptor()
    ct = enc.update(b"\x00" * 16) + enc.finalize()
    import hmac as hmac_mod

    mac = hmac_mod.new(keys.mac_key, keys.iv + ct, hashlib.sha256).digest()[:10]
    with pytest.raises(MediaError) as err:
        media.decrypt_media(ct + mac, KEY, MediaType.IMAGE, file_enc_sha256=None, file_sha256=None)
    assert err.value.details["check"] is MediaCheck.PADDING


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


@given(
    st.binary(max_size=200),
    st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    st.sampled_from(list(MediaType)),
)
def test_streaming_any_split_equals_one_shot(
    plain: bytes, cuts_in: list[int], cuts_out: list[int], kind: MediaType
) -> None:
    enc = media.MediaEncryptor(KEY, kind)
    parts = [enc.update(p) for p in _split(plain, cuts_in)]
    tail, info = enc.finalize()
    stream = b"".join(parts) + tail
    one, one_info = media.encrypt_media_with_key(plain, kind, KEY)
    assert stream == one
    assert info == one_info
    assert hashlib.sha256(stream).digest() == info.file_enc_sha256
    dec = media.MediaDecryptor(
        KEY,
        kind,
        file_enc_sha256=info.file_enc_sha256,
        file_sha256=info.file_sha256,
        file_length=info.file_length,
    )
    out = b"".join(dec.update(c) for c in _split(stream, cuts_out)) + dec.finalize()
    assert out == plain


def test_streaming_memory_is_constant() -> None:
    chunk = bytes(range(256)) * 256  # 64 KiB
    chunks = 256  # 16 MiB in total
    tracemalloc.start()
    try:
        enc = media.MediaEncryptor(KEY, MediaType.VIDEO)
        dec = media.MediaDecryptor(KEY, MediaType.VIDEO)
        plain_hash = hashlib.sha256()
        for _ in range(chunks):
            plain_hash.update(dec.update(enc.update(chunk)))
        tail, info = enc.finalize()
        plain_hash.update(dec.update(tail))
        plain_hash.update(dec.finalize())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.file_length == len(chunk) * chunks
    assert plain_hash.digest() == info.file_sha256
    assert peak < 1 << 20  # a few chunks at most, never the 16 MiB file


def test_finalized_streams_refuse_more_data() -> None:
    enc = media.MediaEncryptor(KEY, MediaType.IMAGE)
    enc.finalize()
    with pytest.raises(MediaError):
        enc.update(b"x")
    dec = media.MediaDecryptor(KEY, MediaType.IMAGE)
    dec.update(ENC)
    dec.finalize()
    with pytest.raises(MediaError):
        dec.finalize()


@given(st.binary(min_size=32, max_size=32))
def test_upload_token_both_forms(digest: bytes) -> None:
    token = media.upload_token(digest)
    assert "=" not in token
    assert "+" not in token
    assert "/" not in token
    assert media.decode_upload_token(token) == digest
    whatsmeow_form = base64.urlsafe_b64encode(digest).decode()  # keeps the padding
    assert media.decode_upload_token(whatsmeow_form) == digest


@pytest.mark.parametrize(
    "bad", ["", "abc", "tGDSIf3G1fRTFETmGlyhRMgDfuHsu3ZS85xgxZr6/44", "é" * 43]
)
def test_upload_token_rejects_garbage(bad: str) -> None:
    with pytest.raises(DecodeError):
        media.decode_upload_token(bad)


# --- fuzz ---------------------------------------------------------------------------------------


@settings(max_examples=FUZZ_EXAMPLES)
@given(st.binary(max_size=120), st.sampled_from(list(MediaType)), st.booleans())
def test_fuzz_decrypt_raises_only_media_error(data: bytes, kind: MediaType, hashes: bool) -> None:
    digest = hashlib.sha256(data).digest() if hashes else None
    with contextlib.suppress(MediaError):
        media.decrypt_media(data, KEY, kind, file_enc_sha256=digest, file_sha256=None)


@settings(max_examples=FUZZ_EXAMPLES)
@given(st.binary(max_size=60), st.integers(0, 80), st.integers(0, 255))
def test_fuzz_tampered_files_never_decrypt(plain: bytes, pos: int, flip: int) -> None:
    enc, info = media.encrypt_media_with_key(plain, MediaType.DOCUMENT, KEY)
    i = pos % len(enc)
    bad = enc[:i] + bytes([enc[i] ^ (flip or 1)]) + enc[i + 1 :]
    with pytest.raises(MediaError):
        media.decrypt_media(
            bad, KEY, MediaType.DOCUMENT, file_enc_sha256=None, file_sha256=info.file_sha256
        )


@settings(max_examples=FUZZ_EXAMPLES)
@given(st.text(max_size=60))
def test_fuzz_upload_token_decode(token: str) -> None:
    with contextlib.suppress(DecodeError):
        assert len(media.decode_upload_token(token)) == 32
