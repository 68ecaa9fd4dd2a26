"""Bounded memory for retry receipts (SPEC §15.4), shared by one client's connections.

Sender side: the plaintext of recently sent messages, so that a peer device that could not
decrypt one can get the *same message id* re-encrypted for it. Receiver side: how many retry
receipts we already sent per message id, so a message that keeps failing is given up after
`MAX_RETRIES` instead of looping.

Bounds (memory stays flat however long a session lives; an idle session holds nothing):
* sent messages: at most `SENT_LIMIT` entries (whatsmeow keeps 256 recent messages,
  `recentMessagesSize` in whatsmeow:retry.go), each forgotten `SENT_MAX_AGE` seconds after it was
  sent; a retry receipt for an older or evicted id is logged and not answered.
* retry counts: at most `COUNT_LIMIT` message ids, oldest evicted first.

Lost with the process, like Baileys' in-memory `msgRetryCache`: after a restart a retry for a
message sent before it cannot be answered (the peer then shows "waiting for this message").

Must not import: asyncio, socket, time, os, random, secrets, threading, websockets.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from protocol.core.jid import JID
from protocol.core.proto import e2e_pb2

MAX_RETRIES = 5  # SPEC §15.4: Baileys `maxMsgRetryCount`, whatsmeow's limit
SENT_LIMIT = 256
SENT_MAX_AGE = 24 * 3600.0
COUNT_LIMIT = 1024


@dataclass(frozen=True, slots=True)
class SentMessage:
    """A message we sent, as needed to re-encrypt it for one device."""

    to: JID  # the chat (user JID)
    message: e2e_pb2.Message = field(repr=False)
    sent_at: float


class RetryCache:
    """See the module docstring."""

    __slots__ = ("_counts", "_sent", "count_limit", "sent_limit", "sent_max_age")

    def __init__(
        self,
        *,
        sent_limit: int = SENT_LIMIT,
        sent_max_age: float = SENT_MAX_AGE,
        count_limit: int = COUNT_LIMIT,
    ) -> None:
        self.sent_limit = sent_limit
        self.sent_max_age = sent_max_age
        self.count_limit = count_limit
        self._sent: OrderedDict[str, SentMessage] = OrderedDict()
        self._counts: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sent)

    # -- sender side

    def remember(self, msg_id: str, to: JID, message: e2e_pb2.Message, now: float) -> None:
        self._sent.pop(msg_id, None)
        self._sent[msg_id] = SentMessage(to, message, now)
        self._expire(now)
        while len(self._sent) > self.sent_limit:
            self._sent.popitem(last=False)

    def lookup(self, msg_id: str, now: float) -> SentMessage | None:
        self._expire(now)
        return self._sent.get(msg_id)

    def _expire(self, now: float) -> None:
        while self._sent:
            oldest = next(iter(self._sent.values()))
            if now - oldest.sent_at <= self.sent_max_age:
                return
            self._sent.popitem(last=False)

    # -- receiver side

    def next_count(self, msg_id: str) -> int:
        """Count one more failed decryption of `msg_id`; returns the retry number (1-based)."""
        count = self._counts.pop(msg_id, 0) + 1
        self._counts[msg_id] = count
        while len(self._counts) > self.count_limit:
            self._counts.popitem(last=False)
        return count

    def forget_count(self, msg_id: str) -> None:
        self._counts.pop(msg_id, None)
