"""The session's inbound batcher (workers.session.inbound): full batches leave at once, each
message is confirmed only after its batch was published, in arrival order; a failed publish
confirms nothing of its batch; `flush` sends what waits. The publish is a plain function (the
production one is `app.send_task`, covered end to end in test_inbound_e2e.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from workers.session.inbound import InboundBatcher

WAIT = 60.0  # a bound on waiting for the loop, not a speed check


class Log:
    def __init__(self, fail_first: int = 0) -> None:
        self.entries: list[tuple[str, Any]] = []
        self.fail_first = fail_first
        self.confirmed = asyncio.Event()
        self.expected = 0

    def publish(self, payloads: list[dict[str, Any]]) -> None:
        if self.fail_first:
            self.fail_first -= 1
            raise ConnectionError("broker gone")
        self.entries.append(("publish", [p["n"] for p in payloads]))

    async def confirm(self, ids: list[str]) -> None:
        self.entries += [("confirm", int(n)) for n in ids]
        if sum(1 for kind, _ in self.entries if kind == "confirm") >= self.expected:
            self.confirmed.set()


def _check_acked_after_publish(log: Log) -> list[int]:
    published: set[int] = set()
    confirmed = []
    for kind, value in log.entries:
        if kind == "publish":
            published.update(value)
        else:
            assert value in published  # never acked before its batch is in the broker
            confirmed.append(value)
    return confirmed


def test_full_batches_leave_at_once_and_acks_follow_each_publish() -> None:
    async def main() -> None:
        log = Log()
        batcher = InboundBatcher(log.publish, max_messages=100, linger=3600.0)
        for n in range(250):
            batcher.add({"n": n}, str(n), log.confirm)
        log.expected = 200
        runner = asyncio.create_task(batcher.run())
        await asyncio.wait_for(log.confirmed.wait(), WAIT)  # the linger is never waited out
        assert batcher.waiting == 50
        log.confirmed.clear()
        log.expected = 250
        await batcher.flush()
        await asyncio.wait_for(log.confirmed.wait(), WAIT)
        runner.cancel()
        sizes = [len(v) for kind, v in log.entries if kind == "publish"]
        assert sizes == [100, 100, 50]
        assert _check_acked_after_publish(log) == list(range(250))

    asyncio.run(main())


def test_a_failed_publish_acks_nothing_of_its_batch() -> None:
    async def main() -> None:
        log = Log(fail_first=1)
        batcher = InboundBatcher(log.publish, max_messages=3, linger=0.0)
        runner = asyncio.create_task(batcher.run())
        for n in range(3):
            batcher.add({"n": n}, str(n), log.confirm)
        await batcher.flush()
        for n in range(3, 5):
            batcher.add({"n": n}, str(n), log.confirm)
        log.expected = 2
        await asyncio.wait_for(log.confirmed.wait(), WAIT)  # linger 0: no flush needed
        runner.cancel()
        assert _check_acked_after_publish(log) == [3, 4]  # 0-2 are redelivered by WhatsApp

    asyncio.run(main())
