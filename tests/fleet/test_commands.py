"""Instance commands on real sockets: WhatsAppSession (the production session) against the
simulator, on real Postgres and Redis, driven through tasks.commands (durable desired state on
the instance row, then the session applies it — here handed over directly, as the host's command
hook does; the routing between real session workers is in test_commands_fleet.py).

* QR linking stops after `qr_rounds` rounds with exactly one `whatsapp:qr-exhausted` event,
  the client stopped, the desired state back to disconnect — no endless QR loop.
* Linking by pairing code; disconnect keeps the credentials and does not reconnect; connect
  reconnects; logout removes the companion at the server and destroys the device credentials.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import redis
from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from protocol.aio import ClientOptions
from protocol.simulator import Simulator
from storage.bus import EventBus
from storage.crypto import Keyring
from storage.leases import Leases
from storage.linking import LinkingCodes
from storage.models import (
    DesiredState,
    DeviceCredentials,
    Instance,
    InstanceStatus,
    OutboxStatus,
    SignalRecord,
)
from storage.repositories import instances, tenants
from tasks import commands, runtime
from tests.fleet.conftest import MASTER_KEY
from tests.fleet.test_actor import Rig as ActorRig
from workers.session.actor import OutboundMessage
from workers.session.host import SessionContext
from workers.session.media import MediaPolicy
from workers.session.whatsapp import Deps, WhatsAppSession

Factory = sessionmaker[Session]
WAIT = 60.0
OWNER = "5511990000001"
CLIENT = "5511990000002"


async def until(what: str, check: Callable[[], Any], wait: float = WAIT) -> Any:
    """Poll `check` (sync or async) until truthy; state is written by other tasks/processes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while loop.time() < deadline:
        value = check()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.1)  # polling, not synchronisation
    raise AssertionError(f"timed out waiting for {what}")


def fast_clock(factor: float) -> Callable[[], float]:
    """The protocol client's clock running `factor` times faster (QR rounds in seconds)."""
    start = time.time()
    return lambda: start + (time.time() - start) * factor


@dataclass
class Rig:
    sim: Simulator
    http: httpx.AsyncClient
    pg: Factory
    bus: EventBus
    linking: LinkingCodes
    tenant_id: uuid.UUID
    instance_id: uuid.UUID
    session: WhatsAppSession

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [
            e.data for e in self.bus.read(self.tenant_id, count=10_000).events if e.type == kind
        ]

    def instance(self) -> Instance:
        with self.pg() as s:
            inst = s.get(Instance, self.instance_id)
            assert inst is not None
            s.expunge(inst)
            return inst

    def linked(self) -> bool:
        with self.pg() as s:
            return s.get(DeviceCredentials, self.instance_id) is not None

    async def command(self, name: str, **options: Any) -> commands.Sent:
        sent = await asyncio.to_thread(
            commands.command, self.instance_id, name, tenant_id=self.tenant_id, **options
        )
        await self.session.command()  # what the owner's command hook does
        return sent

    async def devices(self, phone: str) -> list[int]:
        account = (await self.http.get(f"/control/accounts/{phone}")).json()
        return [int(d["device"]) for d in account["devices"]]


@contextmanager
def task_runtime(pg: Factory, redis_client: redis.Redis, prefix: str) -> Iterator[None]:
    """tasks.runtime configured like a worker's for this test, then restored."""
    previous = runtime._current
    keyring = Keyring.from_bytes(bytes.fromhex(MASTER_KEY))
    bus = EventBus(redis_client, prefix)
    runtime.configure(runtime.Runtime(sessions=pg, bus=bus, redis=redis_client, keyring=keyring))
    try:
        yield
    finally:
        runtime._current = previous


@asynccontextmanager
async def rig(
    fleet_settings: Settings,
    pg: Factory,
    redis_client: redis.Redis,
    producer: Celery,
    *,
    clock: Callable[[], float] = time.time,
    clock_rate: float = 1.0,
    media: MediaPolicy | None = None,
    **overrides: Any,
) -> AsyncIterator[Rig]:
    """One instance, its real lease held by this test, a WhatsAppSession on it, the simulator
    in this loop; tasks.runtime configured like a worker's."""
    settings = fleet_settings.model_copy(update=overrides)
    sim = Simulator()
    await sim.start()
    http = httpx.AsyncClient(base_url=sim.http_url, timeout=WAIT)
    keyring = Keyring.from_bytes(*settings.master_keys())
    bus = EventBus(redis_client, settings.redis_prefix)
    linking = LinkingCodes(redis_client, settings.redis_prefix)
    stack = ExitStack()
    stack.enter_context(task_runtime(pg, redis_client, settings.redis_prefix))
    try:
        for phone in (OWNER, CLIENT):
            assert (await http.post("/control/accounts", json={"phone": phone})).status_code == 201
        with pg.begin() as s:
            tenant = tenants.create_tenant(s, f"cmd-{uuid.uuid4().hex[:6]}")
            inst = instances.create_instance(s, keyring, tenant.id, "front-desk")
            tenant_id, instance_id = tenant.id, inst.id
        lease = Leases(pg, ttl=600).acquire(instance_id, "test-owner")
        assert lease is not None
        deps = Deps(
            settings,
            pg,
            bus,
            keyring,
            ClientOptions(
                url=sim.ws_url,
                trusted_root=sim.root_public_key,
                prekey_upload_count=30,
                media_scheme="http",
                clock_rate=clock_rate,
            ),
            linking,
            media or MediaPolicy(),
            clock,
        )
        session = WhatsAppSession(SessionContext(instance_id, lease, lambda: True), deps)
        await session.open()
        try:
            yield Rig(sim, http, pg, bus, linking, tenant_id, instance_id, session)
        finally:
            await session.close()
    finally:
        stack.close()
        await http.aclose()
        await sim.stop()


async def link_by_qr(r: Rig) -> None:
    await r.command("connect", method="qr")
    shown = await until("a QR stored for the gateway", lambda: r.linking.qr(r.instance_id))
    linked = await r.http.post(f"/control/accounts/{OWNER}/link", json={"qr": shown.qr})
    assert linked.status_code == 200, linked.text
    await until("connected", lambda: r.instance().status is InstanceStatus.CONNECTED)


def test_qr_rounds_stop_with_one_exhausted_event(
    fleet_settings: Settings, pg: Factory, redis_client: redis.Redis, producer: Celery
) -> None:
    async def main() -> None:
        async with rig(
            fleet_settings,
            pg,
            redis_client,
            producer,
            clock=fast_clock(40),
            clock_rate=40,
            qr_rounds=2,
        ) as r:
            sent = await r.command("connect")
            assert sent.owner == "test-owner"  # routed to the lease holder's queue
            exhausted = await until("qr-exhausted", lambda: r.events("whatsapp:qr-exhausted"))
            assert exhausted == [
                {"rounds": 2, "advice": "link with a pairing code instead (method: code)"}
            ]
            qrs = r.events("whatsapp:qr")
            # Two rounds of the server's six references (SPEC §8.2), nothing after.
            assert [q["index"] for q in qrs] == [0, 1, 2, 3, 4, 5] * 2
            assert len({q["qr"] for q in qrs}) == 12
            inst = r.instance()
            assert (inst.status, inst.desired_state) == (
                InstanceStatus.DISCONNECTED,
                DesiredState.DISCONNECT,
            )
            assert r.linking.qr(r.instance_id) is None
            assert r.session._client is None  # no socket left to produce more QR codes
            stats = (await r.http.get("/control/stats")).json()
            assert stats["connections"] == 2
            # A new connect starts linking again, with fresh rounds.
            await r.command("connect")
            await until("a new QR", lambda: len(r.events("whatsapp:qr")) > 12)
            assert r.instance().desired_state is DesiredState.CONNECT

    asyncio.run(main())


def test_code_link_disconnect_connect_logout(
    fleet_settings: Settings, pg: Factory, redis_client: redis.Redis, producer: Celery
) -> None:
    async def main() -> None:
        async with rig(fleet_settings, pg, redis_client, producer) as r:
            await r.command("connect", method="code", phone=f"+{OWNER}")
            shown = await until("a pairing code", lambda: r.linking.code(r.instance_id))
            assert r.events("whatsapp:pairing-code") == [{"code": shown.code}]
            assert r.events("whatsapp:qr") == []  # linking by code shows no QR
            assert r.instance().status is InstanceStatus.CODE_PENDING
            typed = await r.http.post(f"/control/accounts/{OWNER}/link", json={"code": shown.code})
            assert typed.status_code == 200, typed.text
            await until("connected", lambda: r.instance().status is InstanceStatus.CONNECTED)
            assert r.linking.code(r.instance_id) is None
            assert await r.devices(OWNER) == [0, 1]
            # Is a number on WhatsApp: a usync contact query through the session.
            assert await r.session.on_whatsapp(CLIENT) is True
            assert await r.session.on_whatsapp("5511990009999") is False

            # Disconnect: socket closed, credentials kept, no reconnect.
            await r.command("disconnect")
            inst = r.instance()
            assert (inst.status, inst.desired_state) == (
                InstanceStatus.DISCONNECTED,
                DesiredState.DISCONNECT,
            )
            assert r.linked()
            assert r.session._client is None
            assert await r.session.on_whatsapp(CLIENT) is None  # cannot tell while disconnected
            assert r.events("whatsapp:disconnected")[-1] == {
                "reason": "requested",
                "will_reconnect": False,
            }
            assert await r.devices(OWNER) == [0, 1]  # still linked at the server

            # Connect again: logs in with the stored credentials (no new linking).
            await r.command("connect")
            await until("reconnected", lambda: r.instance().status is InstanceStatus.CONNECTED)
            assert len(r.events("whatsapp:connected")) == 2

            # Logout: the companion is removed at the server, the device forgotten here.
            await r.command("logout")
            assert await r.devices(OWNER) == [0]
            assert not r.linked()
            with pg() as s:
                assert (
                    s.scalars(
                        select(SignalRecord).where(SignalRecord.instance_id == r.instance_id)
                    ).all()
                    == []
                )
            assert r.instance().status is InstanceStatus.LOGGED_OUT
            assert r.events("whatsapp:logged-out") == [
                {"reason": "requested", "server_confirmed": True}
            ]
            # A repeated delivery of the same command is applied once.
            await r.session.command()
            assert len(r.events("whatsapp:logged-out")) == 1

    asyncio.run(main())


def test_phone_removing_the_companion_forgets_the_device(
    fleet_settings: Settings, pg: Factory, redis_client: redis.Redis, producer: Celery
) -> None:
    async def main() -> None:
        async with rig(fleet_settings, pg, redis_client, producer) as r:
            await link_by_qr(r)
            removed = await r.http.post(f"/control/accounts/{OWNER}/devices/1/logout")
            assert removed.status_code == 200, removed.text
            await until("logged out", lambda: r.instance().status is InstanceStatus.LOGGED_OUT)
            await until("device forgotten", lambda: not r.linked())
            # Connecting again links anew (a QR), it does not retry the dead credentials.
            await r.command("connect")
            await until("a QR", lambda: r.linking.qr(r.instance_id))

    asyncio.run(main())


class PausingSender:
    """Sends by recording; its first send pauses the instance, as a PATCH arriving mid-burst."""

    def __init__(self, pg: Factory, instance_id: uuid.UUID) -> None:
        self.pg = pg
        self.instance_id = instance_id
        self.sent: list[str] = []

    def connected(self) -> bool:
        return True

    async def send(self, message: OutboundMessage) -> None:
        self.sent.append(str(message.payload["text"]))
        if len(self.sent) == 1:
            with self.pg.begin() as s:
                s.execute(
                    update(Instance)
                    .where(Instance.id == self.instance_id)
                    .values(outbound_paused=True, pause_reason="paused via the API")
                )


def test_a_pause_stops_the_actor_before_its_next_send(pg: Factory, keyring: Keyring) -> None:
    """Two chats are due in one scan; the pause lands during the first send: the second is not
    sent (the claim re-checks the pause), and goes out once resumed, attempts untouched."""

    async def main() -> None:
        r = ActorRig(pg, keyring)
        r.accept("5511911110001", "one")
        r.accept("5511911110002", "two")
        sender = PausingSender(pg, r.instance_id)
        r.sender = sender  # type: ignore[assignment]
        actor = r.make_actor()
        await actor._step()
        assert sender.sent == ["one"]
        rows = r.rows()
        assert rows["two"].status is OutboxStatus.QUEUED
        assert rows["two"].attempts == 0
        await actor._step()  # paused: nothing is attempted
        assert sender.sent == ["one"]
        with pg.begin() as s:
            s.execute(
                update(Instance).where(Instance.id == r.instance_id).values(outbound_paused=False)
            )
        await actor._step()
        assert sender.sent == ["one", "two"]
        assert r.rows()["two"].status is OutboxStatus.SENT

    asyncio.run(main())


def test_delete_logs_a_linked_instance_out_first(
    fleet_settings: Settings, pg: Factory, redis_client: redis.Redis, producer: Celery
) -> None:
    async def main() -> None:
        async with rig(fleet_settings, pg, redis_client, producer) as r:
            await link_by_qr(r)
            deleting = asyncio.create_task(
                asyncio.to_thread(commands.delete, r.instance_id, r.tenant_id)
            )
            await until(
                "the logout recorded", lambda: r.instance().desired_state is DesiredState.LOGOUT
            )
            await r.session.command()  # the owner's hook, as the routed command would
            assert await deleting is True  # the companion was removed before the delete
            assert await r.devices(OWNER) == [0]
            inst = r.instance()
            assert inst.deleted_at is not None
            assert not r.linked()

    asyncio.run(main())
