"""Outbound delivery policy of an instance actor: retry schedule, pacing, error classes.

Pure and deterministic (rng and clock are passed in), so the rules are tested without sockets:

* `RetryPolicy` — progressive delays (default 5, 15, 30, 60, 120, 300 s, each ±20 %; the last
  repeats) up to `max_attempts`, then `failed` (DESIGN §3.5). The schedule lives in the outbox
  row (`attempts`, `next_attempt_at`), never in a broker countdown.
* `Pacer` — per instance: a gap drawn from [min_gap, max_gap] ± jitter between two sends (e.g.
  the 30–45 s ±10 s profile some tenants want) and a token bucket (rate, burst); `allowance`
  says how many sends may leave back to back (the actor claims that many). Waiting for the
  pacer is not an attempt.
* `classify` — the ONE place that decides what a failed send means: RETRY (timeouts, a server
  hiccup), PARK (the socket closed mid-send: wait for the reconnect, no attempt burned), PAUSE
  the instance (rate limited, 463 reach-out timelock, temporary ban), or PERMANENT (not on
  WhatsApp, invalid payload, logged out). `code_label` maps a code onto the bounded set the
  session worker's metrics label failures with.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Uniform = Callable[[float, float], float]  # random.uniform-like, injected


class Outcome(enum.StrEnum):
    RETRY = "retry"
    PARK = "park"  # the socket went away mid-send: wait for the reconnect, no attempt burned
    PAUSE = "pause"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class SendFailure:
    """Why one send failed: a stable code (e.g. "463", "timeout") and a human text."""

    code: str
    text: str = ""


# Server ack error codes (SPEC §13.6) and client-side failure codes, by outcome.
PAUSE_CODES = frozenset(
    {
        "463",  # reach-out timelock / missing privacy token: the account is restricted for now
        "429",  # rate-overlimit
        "rate_limited",
        "temp_banned",  # <failure reason="402"> temporary ban (SPEC §7.6)
    }
)
PERMANENT_CODES = frozenset(
    {
        "not_on_whatsapp",  # usync found no account for the number
        "invalid_payload",
        "media_unavailable",  # the media URL answered 3xx/4xx or is refused by the SSRF guard
        "media_too_large",  # the media is larger than its kind's limit
        "logged_out",  # the device was removed: nothing can be sent until relinked
        "400",
        "406",
    }
)
PARK_CODES = frozenset({"closed", "disconnected"})
RETRY_CODES = frozenset(
    {
        "timeout",
        "479",  # 479: stale device list, refetch and resend
        "500",
        "503",
        "decrypt_session",
    }
)


KNOWN_CODES = PAUSE_CODES | PERMANENT_CODES | PARK_CODES | RETRY_CODES
UPLOAD_PREFIX = "upload_"  # upload_<HTTP status> from the media host (workers.session.whatsapp)


def code_label(failure: SendFailure) -> str:
    """The failure's code as a metric label from a bounded set: a known code, `upload` for any
    media-host status, else `other` (a server may answer any error attribute)."""
    if failure.code in KNOWN_CODES:
        return failure.code
    return "upload" if failure.code.startswith(UPLOAD_PREFIX) else "other"


def classify(failure: SendFailure) -> Outcome:
    if failure.code in PARK_CODES:
        return Outcome.PARK
    if failure.code in PAUSE_CODES:
        return Outcome.PAUSE
    if failure.code in PERMANENT_CODES:
        return Outcome.PERMANENT
    # Unknown codes retry: a bounded number of attempts is safer than dropping a message.
    return Outcome.RETRY


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    schedule: Sequence[float] = (5, 15, 30, 60, 120, 300)
    jitter: float = 0.2
    max_attempts: int = 7

    def delay(self, attempts: int, uniform: Uniform) -> float:
        """Seconds to wait after the `attempts`-th failed attempt (attempts ≥ 1)."""
        base = self.schedule[min(max(attempts, 1), len(self.schedule)) - 1]
        return base * uniform(1 - self.jitter, 1 + self.jitter)

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts


class Pacer:
    """When the next send of one instance may leave (`ready_at`) and bookkeeping (`sent`)."""

    def __init__(
        self,
        *,
        min_gap: float = 0.0,
        max_gap: float = 0.0,
        jitter: float = 0.0,
        rate: float = 1.0,
        burst: int = 20,
        uniform: Uniform,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("token bucket needs rate > 0 and burst ≥ 1")
        self._min_gap, self._max_gap = min_gap, max(max_gap, min_gap)
        self._jitter = jitter
        self._rate, self._burst = rate, float(burst)
        self._uniform = uniform
        self._tokens = float(burst)
        self._refilled_at: float | None = None
        self._next_gap_at = 0.0

    def _refill(self, now: float) -> None:
        if self._refilled_at is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._refilled_at) * self._rate)
        self._refilled_at = now

    def ready_at(self, now: float) -> float:
        """The earliest time (≥ now) at which a send is allowed."""
        self._refill(now)
        bucket_at = now if self._tokens >= 1 else now + (1 - self._tokens) / self._rate
        return max(now, bucket_at, self._next_gap_at)

    def allowance(self, now: float) -> int:
        """How many sends may leave back to back from `now` (0: not before `ready_at`): the
        whole bucket without a gap, one with a gap (it is drawn anew after each send)."""
        if self.ready_at(now) > now:
            return 0
        if self._max_gap > 0 or self._jitter > 0:
            return 1
        return int(self._tokens)

    def sent(self, now: float) -> None:
        """Record a send at `now` (spends a token, draws the next gap)."""
        self._refill(now)
        self._tokens -= 1
        gap = 0.0
        if self._max_gap > 0 or self._jitter > 0:
            gap = self._uniform(self._min_gap, self._max_gap)
            if self._jitter:
                gap += self._uniform(-self._jitter, self._jitter)
        self._next_gap_at = now + max(0.0, gap)
