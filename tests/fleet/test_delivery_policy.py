"""Retry schedule, pacing and error classes of the outbound actor (pure, deterministic)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.delivery import (
    KNOWN_CODES,
    Outcome,
    Pacer,
    RetryPolicy,
    SendFailure,
    classify,
    code_label,
)


def test_default_schedule_with_jitter_bounds() -> None:
    policy = RetryPolicy()
    lows = [policy.delay(n, lambda a, b: a) for n in range(1, 9)]
    highs = [policy.delay(n, lambda a, b: b) for n in range(1, 9)]
    assert lows == pytest.approx([4, 12, 24, 48, 96, 240, 240, 240])
    assert highs == pytest.approx([6, 18, 36, 72, 144, 360, 360, 360])
    assert not policy.exhausted(6)
    assert policy.exhausted(7)


@given(st.integers(min_value=1, max_value=50), st.floats(min_value=0, max_value=0.9))
def test_delay_always_within_jitter(attempts: int, jitter: float) -> None:
    policy = RetryPolicy(schedule=(2, 8), jitter=jitter)
    rng = random.Random(attempts)
    base = 2 if attempts == 1 else 8
    d = policy.delay(attempts, rng.uniform)
    assert base * (1 - jitter) - 1e-9 <= d <= base * (1 + jitter) + 1e-9


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        ("463", Outcome.PAUSE),
        ("429", Outcome.PAUSE),
        ("temp_banned", Outcome.PAUSE),
        ("not_on_whatsapp", Outcome.PERMANENT),
        ("logged_out", Outcome.PERMANENT),
        ("timeout", Outcome.RETRY),
        ("closed", Outcome.PARK),
        ("479", Outcome.RETRY),
        ("something-new", Outcome.RETRY),
    ],
)
def test_classification(code: str, outcome: Outcome) -> None:
    assert classify(SendFailure(code)) is outcome


@given(st.text(max_size=40))
def test_metric_code_labels_are_a_bounded_set(code: str) -> None:
    """Whatever a server or the media host answers, the metrics' `code` label stays in the
    known codes + `upload` + `other` (workers.session.metrics)."""
    label = code_label(SendFailure(code))
    assert label in KNOWN_CODES | {"upload", "other"}
    if code in KNOWN_CODES:
        assert label == code


def test_metric_code_labels() -> None:
    assert code_label(SendFailure("463")) == "463"
    assert code_label(SendFailure("timeout")) == "timeout"
    assert code_label(SendFailure("upload_503")) == "upload"
    assert code_label(SendFailure("4711")) == "other"


def test_gap_profile_30_45_plus_minus_10() -> None:
    rng = random.Random(7)
    pacer = Pacer(min_gap=30, max_gap=45, jitter=10, rate=100, burst=100, uniform=rng.uniform)
    now = 1000.0
    gaps = []
    for _ in range(500):
        at = pacer.ready_at(now)
        gaps.append(at - now)
        now = at
        pacer.sent(now)
    gaps = gaps[1:]
    assert min(gaps) >= 20 - 1e-9
    assert max(gaps) <= 55 + 1e-9
    assert 33 < sum(gaps) / len(gaps) < 42  # centred on 37.5


def test_token_bucket_allows_burst_then_rate() -> None:
    pacer = Pacer(rate=2.0, burst=3, uniform=lambda a, b: a)
    now = 0.0
    times = []
    for _ in range(7):
        now = pacer.ready_at(now)
        times.append(now)
        pacer.sent(now)
    assert times[:3] == [0.0, 0.0, 0.0]  # the burst
    assert times[3:] == pytest.approx([0.5, 1.0, 1.5, 2.0])  # then 2 per second


def test_no_pacing_by_default_means_no_wait() -> None:
    pacer = Pacer(uniform=lambda a, b: a, rate=1000, burst=1000)
    assert pacer.ready_at(5.0) == 5.0
    pacer.sent(5.0)
    assert pacer.ready_at(5.0) == 5.0


def test_allowance_is_the_bucket_without_a_gap_and_one_with_a_gap() -> None:
    bucket = Pacer(rate=1, burst=5, uniform=lambda a, b: a)
    assert bucket.allowance(0.0) == 5
    for _ in range(5):
        bucket.sent(0.0)
    assert bucket.allowance(0.0) == 0  # empty: wait for ready_at
    assert bucket.allowance(2.0) == 2  # refilled two tokens
    gap = Pacer(min_gap=30, max_gap=45, rate=10, burst=20, uniform=lambda a, b: a)
    assert gap.allowance(0.0) == 1  # one at a time: the gap is drawn after each send
    gap.sent(0.0)
    assert gap.allowance(29.0) == 0
    assert gap.allowance(30.0) == 1
