"""Media crypto against live Baileys (tests/interop/media_peer.mjs), both directions."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.core import media
from protocol.core.media import MediaType
from tests.interop.node import NodePeer

pytestmark = pytest.mark.interop

# Every type Baileys' MEDIA_HKDF_KEY_MAPPING knows (it has no sticker-pack).
BAILEYS_TYPES = [t for t in MediaType if t is not MediaType.STICKER_PACK]


@pytest.fixture(scope="module")
def peer() -> Iterator[NodePeer]:
    with NodePeer("media_peer.mjs") as p:
        yield p


@settings(max_examples=200)
@given(st.binary(min_size=32, max_size=32), st.sampled_from(BAILEYS_TYPES))
def test_key_expansion_matches_get_media_keys(
    peer: NodePeer, media_key: bytes, kind: MediaType
) -> None:
    theirs = peer.call({"op": "keys", "mediaKey": media_key.hex(), "type": kind.value})
    ours = media.expand_media_key(media_key, kind)
    assert theirs == {
        "iv": ours.iv.hex(),
        "cipherKey": ours.cipher_key.hex(),
        "macKey": ours.mac_key.hex(),
    }


@settings(max_examples=200)
@given(
    st.binary(max_size=3000), st.binary(min_size=32, max_size=32), st.sampled_from(BAILEYS_TYPES)
)
def test_our_upload_decrypts_in_baileys(
    peer: NodePeer, plain: bytes, media_key: bytes, kind: MediaType
) -> None:
    enc, info = media.encrypt_media_with_key(plain, kind, media_key)
    got = peer.call(
        {"op": "decrypt", "enc": enc.hex(), "mediaKey": media_key.hex(), "type": kind.value}
    )
    assert got == {
        "plain": plain.hex(),
        "macOk": True,
        "fileSha256": info.file_sha256.hex(),
        "fileEncSha256": info.file_enc_sha256.hex(),
    }


@settings(max_examples=200)
@given(st.binary(max_size=3000), st.sampled_from(BAILEYS_TYPES))
def test_baileys_encrypted_stream_decrypts_here(
    peer: NodePeer, plain: bytes, kind: MediaType
) -> None:
    r = peer.call({"op": "encrypt", "plain": plain.hex(), "type": kind.value})
    enc = bytes.fromhex(r["enc"])
    out = media.decrypt_media(
        enc,
        bytes.fromhex(r["mediaKey"]),
        kind,
        file_enc_sha256=bytes.fromhex(r["fileEncSha256"]),
        file_sha256=bytes.fromhex(r["fileSha256"]),
        file_length=r["fileLength"],
    )
    assert out == plain
    # And our encryptor, given Baileys' key, writes the same file and fields.
    ours, info = media.encrypt_media_with_key(plain, kind, bytes.fromhex(r["mediaKey"]))
    assert ours == enc
    assert info.mac.hex() == r["mac"]
    assert hashlib.sha256(ours).hexdigest() == r["fileEncSha256"]


@settings(max_examples=200)
@given(st.binary(min_size=32, max_size=32))
def test_upload_token_matches_baileys(peer: NodePeer, digest: bytes) -> None:
    token = peer.call({"op": "uploadToken", "hash": digest.hex()})
    assert media.upload_token(digest) == token
    assert media.decode_upload_token(token) == digest
