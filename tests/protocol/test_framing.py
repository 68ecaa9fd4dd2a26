"""Framing (SPEC §2.2–§2.4): intro, ED prefix, length frames, split invariance, limits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.core.errors import FrameError
from protocol.core.framing import (
    MAX_FRAME_SIZE,
    FrameReader,
    FrameWriter,
    Intro,
    encode_frame,
    encode_intro,
    wa_header,
)


def test_intro_and_first_frame() -> None:
    assert wa_header() == bytes.fromhex("57410603")
    assert encode_intro(2) == bytes.fromhex("57410602")
    writer = FrameWriter(encode_intro())
    assert writer.frame(b"ab") == bytes.fromhex("57410603000002") + b"ab"
    assert writer.frame(b"c") == bytes.fromhex("000001") + b"c"  # intro only once


def test_routing_info_prefix() -> None:
    # SPEC §2.4: 45 44 00 01 | len(3 bytes BE) | routing_info | 57 41 06 03
    assert encode_intro(3, b"\x08\x01") == bytes.fromhex(
        "4544000100000208015741 0603".replace(" ", "")
    )
    reader = FrameReader(expect_intro=True)
    assert reader.feed(encode_intro(3, b"\x08\x01") + encode_frame(b"x")) == [b"x"]
    assert reader.intro == Intro(3, b"\x08\x01")
    assert reader.intro.header == wa_header(3)


def test_server_reader_reports_dictionary_version() -> None:
    reader = FrameReader(expect_intro=True)
    assert reader.feed(encode_intro(2) + encode_frame(b"hello")) == [b"hello"]
    assert reader.intro == Intro(2, None)


frames_st = st.lists(st.binary(max_size=300), max_size=8)


@given(frames_st, st.lists(st.integers(0, 2000), max_size=12), st.binary(max_size=40) | st.none())
def test_any_split_yields_the_same_frames(
    frames: list[bytes], cuts: list[int], routing: bytes | None
) -> None:
    writer = FrameWriter(encode_intro(3, routing))
    stream = b"".join(writer.frame(f) for f in frames)
    if not frames:
        stream = encode_intro(3, routing)
    points = sorted({min(c, len(stream)) for c in cuts})
    reader = FrameReader(expect_intro=True)
    got: list[bytes] = []
    last = 0
    for p in [*points, len(stream)]:
        got += reader.feed(stream[last:p])
        last = p
    assert got == frames
    assert reader.intro == Intro(3, routing or None)
    assert reader.buffered == 0


@given(frames_st, st.lists(st.integers(0, 2000), max_size=12))
def test_client_reader_any_split(frames: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(f) for f in frames)
    reader = FrameReader()
    got: list[bytes] = []
    last = 0
    for p in [*sorted(min(c, len(stream)) for c in cuts), len(stream)]:
        got += reader.feed(stream[last:p])
        last = p
    assert got == frames


def test_max_frame_size_enforced_on_both_sides() -> None:
    with pytest.raises(FrameError) as info:
        encode_frame(b"x" * 11, max_frame_size=10)
    assert info.value.details["reason"] == "frame_too_large"
    with pytest.raises(FrameError):
        encode_frame(bytes(MAX_FRAME_SIZE + 1))
    reader = FrameReader(max_frame_size=10)
    with pytest.raises(FrameError) as info:
        reader.feed(b"\x00\x00\x0b")  # refused as soon as the length is known
    assert info.value.details == {"reason": "frame_too_large", "size": 11, "limit": 10}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1", "bad_intro"),
        (b"WA\x05\x03", "bad_intro"),
        (b"WA\x06\x07", "unsupported_dict"),
        (b"EX", "bad_intro"),
        (b"ED\x00\x01\x00\x00\x00XA", "bad_intro"),
    ],
)
def test_bad_intro(data: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as info:
        FrameReader(expect_intro=True).feed(data)
    assert info.value.details["reason"] == reason


def test_partial_intro_waits() -> None:
    reader = FrameReader(expect_intro=True)
    for b in encode_intro(3, b"r"):
        assert reader.feed(bytes([b])) == []
    assert reader.intro == Intro(3, b"r")
