"""A session backend that dies between receiving a message and enqueuing it
(`--session-factory tests.fleet.crashing:make_factory`).

The production WhatsApp session (workers.session.whatsapp), except that a received text
containing `CRASH_MARKER` ends the process at once with `CRASH_EXIT` — after the message was
decrypted, before its `wafleet.route_inbound_batch` reached the broker, so it was never
confirmed to WhatsApp. The simulator must redeliver it to whichever worker owns the instance
next.
"""

from __future__ import annotations

import os

from config.settings import Settings
from protocol.aio import Client, Message
from protocol.core.message import Text
from workers.session import whatsapp
from workers.session.host import Session, SessionContext, SessionFactory

CRASH_MARKER = "[crash before enqueue]"
CRASH_EXIT = 70


class CrashingSession(whatsapp.WhatsAppSession):
    async def _inbound(self, client: Client, event: Message) -> None:
        if isinstance(event.content, Text) and CRASH_MARKER in event.content.text:
            os._exit(CRASH_EXIT)  # a crash: no cleanup, no handover, nothing flushed
        await super()._inbound(client, event)


def make_factory(settings: Settings) -> SessionFactory:
    production = whatsapp.make_factory(settings)

    def factory(ctx: SessionContext) -> Session:
        session = production(ctx)
        assert isinstance(session, whatsapp.WhatsAppSession)
        session.__class__ = CrashingSession  # the production session, built the production way
        return session

    return factory
