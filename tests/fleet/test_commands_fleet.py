"""Instance commands across real session workers (subprocesses, the production WhatsApp
session factory) on the simulator, real Postgres, Redis and a routing worker.

The producer never knows which worker owns the instance: it sends the public task
`wafleet.instance_command`; the routing worker writes the desired state and routes it to the
lease holder's `wa.session.<worker>` queue. A command delivered to a worker that does not own
the instance is forwarded to the one that does. A connect sent while the owner hands over (its
SIGTERM drain) still takes effect: the new owner reads the durable state. A logout removes the
companion at the server and destroys the credentials. The simulator never sees two logins of
one device at a time."""

from __future__ import annotations

import signal
import subprocess
import uuid
from contextlib import AbstractContextManager, ExitStack
from typing import Any

import httpx
import pytest
import redis
from celery import Celery
from sqlalchemy import update

from config.settings import Settings
from protocol.simulator import Simulator
from storage.bus import EventBus
from storage.crypto import Keyring
from storage.leases import Leases, Membership
from storage.models import DesiredState, DeviceCredentials, Instance, InstanceStatus
from storage.repositories import instances, tenants
from tasks import commands
from tasks.queues import INSTANCE_COMMAND_TASK, SESSION_COMMAND_TASK, session_queue
from tests.fleet.conftest import MASTER_KEY, Popen, running_session_worker
from tests.fleet.test_commands import task_runtime
from tests.fleet.test_whatsapp_e2e import OWNER, WAIT, Factory, poll
from workers.assignment import owner_of

pytestmark = pytest.mark.timeout(600)


def session_worker(settings: Settings, node: str) -> AbstractContextManager[Popen]:
    return running_session_worker(settings, node, f"session-commands-{node}.log")


def test_commands_reach_the_owner_wherever_it_is(
    routing_worker: subprocess.Popen[bytes],
    producer: Celery,
    fleet_settings: Settings,
    pg: Factory,
    redis_client: redis.Redis,
    simulator: Simulator,
) -> None:
    http = httpx.Client(base_url=simulator.http_url, timeout=WAIT)
    assert http.post("/control/accounts", json={"phone": OWNER}).status_code == 201
    keyring = Keyring.from_bytes(bytes.fromhex(MASTER_KEY))
    with pg.begin() as s:
        tenant = tenants.create_tenant(s, f"cmds-{uuid.uuid4().hex[:6]}")
        instance_id = instances.create_instance(s, keyring, tenant.id, "front-desk").id
        tenant_id = tenant.id
    bus = EventBus(redis_client, fleet_settings.redis_prefix)
    leases = Leases(pg, ttl=1)
    settings = fleet_settings.model_copy(
        update={
            "wa_server_url": simulator.ws_url,
            "wa_root_key": simulator.root_public_key.hex(),
            "lease_ttl": 10.0,
            "lease_renew": 2.0,
            "rebalance_interval": 0.2,
            "heartbeat_interval": 0.5,
            "wa_prekey_count": 30,
        }
    )

    def events(kind: str) -> list[dict[str, Any]]:
        return [e.data for e in bus.read(tenant_id, count=10_000).events if e.type == kind]

    def instance() -> Instance:
        with pg() as s:
            inst = s.get(Instance, instance_id)
            assert inst is not None
            return inst

    def owner() -> str | None:
        holder = leases.holder(instance_id)
        return None if holder is None else holder.owner

    def command(name: str, **options: Any) -> dict[str, Any]:
        result: dict[str, Any] = producer.send_task(
            INSTANCE_COMMAND_TASK,
            args=[str(tenant_id), str(instance_id), name],
            kwargs=options,
        ).get(WAIT)
        return result

    def devices() -> list[int]:
        account = http.get(f"/control/accounts/{OWNER}").json()
        return [int(d["device"]) for d in account["devices"]]

    with ExitStack() as stack:
        workers = {
            node: stack.enter_context(session_worker(settings, node)) for node in ("ca", "cb")
        }
        # Both workers joined and the instance sits with its rendezvous owner: linking is not
        # interrupted by the start-up rebalance (a handover in the middle of pairing).
        expected = owner_of(str(instance_id), sorted(workers))
        poll("both workers live", lambda: len(Membership(pg, member_ttl=15).live()) == 2)
        first = poll("the rendezvous owner", lambda: owner() == expected and expected)

        # Connect by QR through the public task: the producer does not know the owner.
        sent = command("connect", method="qr")
        assert (sent["command"], sent["owner"]) == ("connect", first)
        qr = poll("a QR", lambda: (q := events("whatsapp:qr")) and q[-1])
        assert (
            http.post(f"/control/accounts/{OWNER}/link", json={"qr": qr["qr"]}).status_code == 200
        )
        poll("connected", lambda: instance().status is InstanceStatus.CONNECTED)
        # diagnose's number check: request/reply through the owner, whoever it is.
        with task_runtime(pg, redis_client, fleet_settings.redis_prefix):
            assert commands.on_whatsapp(instance_id, OWNER) is True
            assert commands.on_whatsapp(instance_id, "5511990009999") is False

        # A command delivered to the worker that does NOT own the instance is forwarded.
        other = next(n for n in workers if n != first)
        with pg.begin() as s:
            s.execute(
                update(Instance)
                .where(Instance.id == instance_id)
                .values(desired_state=DesiredState.DISCONNECT, command_seq=Instance.command_seq + 1)
            )
        seq = instance().command_seq
        producer.send_task(
            SESSION_COMMAND_TASK, args=[str(instance_id), seq, 0], queue=session_queue(other)
        )
        poll("disconnected", lambda: instance().status is InstanceStatus.DISCONNECTED)
        assert events("whatsapp:disconnected")[-1] == {
            "reason": "requested",
            "will_reconnect": False,
        }
        with pg() as s:
            assert s.get(DeviceCredentials, instance_id) is not None  # credentials kept

        # A connect sent while the owner hands over (SIGTERM drain) still takes effect.
        workers[first].send_signal(signal.SIGTERM)
        command("connect")
        poll("the new owner", lambda: owner() == other)
        poll("connected again", lambda: instance().status is InstanceStatus.CONNECTED)
        assert workers[first].wait(timeout=60) == 0

        # Logout: the companion is removed at the server, the credentials destroyed.
        assert devices() == [0, 1]
        assert command("logout")["owner"] == other
        poll("logged out", lambda: instance().status is InstanceStatus.LOGGED_OUT)
        assert devices() == [0]
        with pg() as s:
            assert s.get(DeviceCredentials, instance_id) is None
        assert events("whatsapp:logged-out")[-1] == {
            "reason": "requested",
            "server_confirmed": True,
        }
    stats = http.get("/control/stats").json()
    assert stats["max_concurrent_logins_per_device"] <= 1
    http.close()
