"""The `wafleet` command line.

    wafleet db upgrade|downgrade REV|current
    wafleet tenant create NAME | tenant list
    wafleet apikey create --tenant T --name N [--scopes read,send,admin] [--instance ID]
    wafleet instance create --tenant T --name N [--phone DIGITS] | list [--tenant T]
                   | delete ID [--tenant T]
    wafleet keys generate | keys rotate
    wafleet worker routing [--queues Q,...] [--concurrency N] [--pool prefork|threads|solo]
    wafleet worker session --session-factory MODULE:CALLABLE [--concurrency N] [--node-id ID]
    wafleet beat
    wafleet gateway
    wafleet demo

Every command reads settings from the environment (config.settings). Bad input gets one precise
line on stderr and a non-zero exit: 2 for a usage or settings problem, 1 for a refused operation
(unknown tenant, duplicate name, invalid phone number, missing master key...).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from config.logging import configure_logging
from config.settings import Settings, SettingsError, load_settings
from protocol.core.errors import WhatsAppError
from storage import migrations
from storage.crypto import Keyring
from storage.db import create_engine_from_url, session_factory
from storage.models import Instance
from storage.repositories import instances as instance_repo
from storage.repositories import secrets as secret_repo
from storage.repositories import tenants as tenant_repo

EXIT_REFUSED = 1
EXIT_USAGE = 2


class CliError(Exception):
    """One line for stderr, and the exit code."""

    def __init__(self, message: str, code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage dump
        raise CliError(f"{self.prog}: {message}", EXIT_USAGE)


class Context:
    """What a command needs: settings, and lazily the database and the keyring."""

    def __init__(self, settings: Settings, out: TextIO, as_json: bool) -> None:
        self.settings = settings
        self.out = out
        self.as_json = as_json
        self._engine: Engine | None = None

    @property
    def url(self) -> str:
        return self.settings.effective_database_url

    def engine(self) -> Engine:
        if self._engine is None:
            if self.url.startswith("sqlite"):
                self.settings.data_dir.mkdir(parents=True, exist_ok=True)
            self._engine = create_engine_from_url(self.url)
        return self._engine

    def sessions(self) -> sessionmaker[Session]:
        """Sessions on a database whose schema is current; else a precise error."""
        self.engine()  # creates the embedded data directory when needed
        try:
            at = migrations.current(self.url)
        except OperationalError as exc:
            raise CliError(f"cannot reach the database: {_first_line(exc)}") from None
        if at != migrations.head():
            raise CliError(
                "database schema is not current "
                f"(at {at or 'nothing'}, need {migrations.head()}); run `wafleet db upgrade`"
            )
        return session_factory(self.engine())

    def keyring(self) -> Keyring:
        current, previous = self.settings.master_keys()
        return Keyring.from_bytes(current, previous)

    def emit(self, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
        if self.as_json:
            json.dump(list(rows), self.out, default=str, indent=2)
            self.out.write("\n")
            return
        if not rows:
            self.out.write("(none)\n")
            return
        widths = [max(len(c), *(len(_cell(r.get(c))) for r in rows)) for c in columns]
        self.out.write(
            "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()
            + "\n"
        )
        for r in rows:
            self.out.write(
                "  ".join(
                    _cell(r.get(c)).ljust(w) for c, w in zip(columns, widths, strict=True)
                ).rstrip()
                + "\n"
            )

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _uuid(text: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise CliError(f"{what} must be an id (UUID), got {text!r}", EXIT_USAGE) from None


# --- commands -------------------------------------------------------------------------------
def cmd_db_upgrade(ctx: Context, args: argparse.Namespace) -> None:
    ctx.engine()  # creates the SQLite directory when needed
    migrations.upgrade(ctx.url, args.revision)
    ctx.out.write(f"database at {migrations.current(ctx.url)}\n")


def cmd_db_downgrade(ctx: Context, args: argparse.Namespace) -> None:
    migrations.downgrade(ctx.url, args.revision)
    ctx.out.write(f"database at {migrations.current(ctx.url) or 'base (empty)'}\n")


def cmd_db_current(ctx: Context, args: argparse.Namespace) -> None:
    at = migrations.current(ctx.url)
    ctx.out.write(f"{at or 'base (empty)'} (head {migrations.head()})\n")


def cmd_tenant_create(ctx: Context, args: argparse.Namespace) -> None:
    with ctx.sessions().begin() as s:
        tenant = tenant_repo.create_tenant(s, args.name)
        ctx.emit([{"id": tenant.id, "name": tenant.name}], ["id", "name"])


def cmd_tenant_list(ctx: Context, args: argparse.Namespace) -> None:
    with ctx.sessions().begin() as s:
        rows = [
            {"id": t.id, "name": t.name, "created_at": t.created_at.isoformat(timespec="seconds")}
            for t in tenant_repo.list_tenants(s)
        ]
    ctx.emit(rows, ["id", "name", "created_at"])


def cmd_apikey_create(ctx: Context, args: argparse.Namespace) -> None:
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    restrict = _uuid(args.instance, "--instance") if args.instance else None
    with ctx.sessions().begin() as s:
        tenant = tenant_repo.get_tenant(s, args.tenant)
        instance_id = None
        if restrict is not None:
            instance_id = instance_repo.get_instance(s, restrict, tenant.id).id
        row, clear = tenant_repo.create_api_key(s, tenant.id, args.name, scopes, instance_id)
        ctx.emit(
            [{"id": row.id, "tenant": tenant.name, "scopes": row.scopes, "key": clear}],
            ["id", "tenant", "scopes", "key"],
        )
    if not ctx.as_json:
        ctx.out.write("store the key now: it is shown once and kept only as a hash\n")


def cmd_instance_create(ctx: Context, args: argparse.Namespace) -> None:
    keyring = ctx.keyring()
    with ctx.sessions().begin() as s:
        tenant = tenant_repo.get_tenant(s, args.tenant)
        inst = instance_repo.create_instance(s, keyring, tenant.id, args.name, args.phone)
        ctx.emit([_instance_row(inst, tenant.name)], INSTANCE_COLUMNS)


def cmd_instance_list(ctx: Context, args: argparse.Namespace) -> None:
    with ctx.sessions().begin() as s:
        tenants = {t.id: t.name for t in tenant_repo.list_tenants(s)}
        tenant_id = tenant_repo.get_tenant(s, args.tenant).id if args.tenant else None
        rows = [
            _instance_row(i, tenants.get(i.tenant_id, "?"))
            for i in instance_repo.list_instances(s, tenant_id)
        ]
    ctx.emit(rows, INSTANCE_COLUMNS)


def cmd_instance_delete(ctx: Context, args: argparse.Namespace) -> None:
    instance_id = _uuid(args.id, "instance id")
    with ctx.sessions().begin() as s:
        tenant_id = tenant_repo.get_tenant(s, args.tenant).id if args.tenant else None
        inst = instance_repo.delete_instance(s, instance_id, tenant_id)
        ctx.out.write(f"deleted instance {inst.id} ({inst.name}); its keys were destroyed\n")


INSTANCE_COLUMNS = ["id", "tenant", "name", "phone_number", "status", "sent", "received"]


def _instance_row(inst: Instance, tenant: str) -> dict[str, Any]:
    return {
        "id": inst.id,
        "tenant": tenant,
        "name": inst.name,
        "phone_number": inst.phone_number,
        "status": inst.status.value,
        "sent": inst.messages_sent,
        "received": inst.messages_received,
    }


def cmd_keys_generate(ctx: Context, args: argparse.Namespace) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    ctx.out.write(f"{key}\n")
    if not ctx.as_json:
        sys.stderr.write(
            "export it as WAFLEET_MASTER_KEY; keep a copy safe: without it nothing decrypts\n"
        )


def cmd_keys_rotate(ctx: Context, args: argparse.Namespace) -> None:
    keyring = ctx.keyring()
    if not keyring.previous:
        raise CliError(
            "keys rotate needs the old key(s) in WAFLEET_PREVIOUS_MASTER_KEYS and the new one in "
            "WAFLEET_MASTER_KEY"
        )
    report = secret_repo.rotate_master_key(ctx.sessions(), keyring)
    ctx.out.write(
        f"re-wrapped {report.data_keys} instance data keys and {report.webhook_secrets} webhook "
        f"secrets under master key {keyring.current.key_id}\n"
    )


def cmd_worker_routing(ctx: Context, args: argparse.Namespace) -> None:
    from workers.routing import run_routing_worker

    configure_logging(ctx.settings, "routing", worker_id=args.hostname)
    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
    run_routing_worker(
        ctx.settings,
        queues=queues,
        concurrency=args.concurrency,
        pool=args.pool,
        hostname=args.hostname,
    )


def cmd_gateway(ctx: Context, args: argparse.Namespace) -> None:
    from workers.gateway import run_gateway

    configure_logging(ctx.settings, "gateway")
    run_gateway(ctx.settings)


def cmd_link(ctx: Context, args: argparse.Namespace) -> None:
    """Link an instance as a companion device: show QR codes or a pairing code until paired."""
    import asyncio

    from storage.keystore import SqlKeyStore

    instance_id = _uuid(args.instance, "instance")
    store = SqlKeyStore.open(ctx.sessions(), ctx.keyring(), instance_id)
    if store.get_device() is not None and _paired(store):
        raise CliError("instance is already linked; delete it to link again")
    try:
        root = bytes.fromhex(args.root_key) if args.root_key else None
    except ValueError:
        raise CliError("--root-key must be hex") from None
    jid = asyncio.run(_link(ctx, store, args.server, root, args.code, args.timeout))
    ctx.emit([{"instance": str(instance_id), "jid": jid}], ["instance", "jid"])


def _paired(store: Any) -> bool:
    from protocol.client import Device

    blob = store.get_device()
    return blob is not None and Device.from_bytes(blob).registered


async def _link(
    ctx: Context, store: Any, server: str | None, root: bytes | None, phone: str | None, limit: int
) -> str:
    import asyncio

    import segno

    from protocol.aio import Client, ClientOptions, Connected, Disconnected, PairingCode, Qr

    options = ClientOptions()
    if server:
        options = ClientOptions(url=server, trusted_root=root or options.trusted_root)
    client = Client(store, options)
    await client.start()
    code_requested = False
    try:
        async with asyncio.timeout(limit):
            while True:
                event = await client.events.get()
                if isinstance(event, Qr) and phone is None:
                    if ctx.as_json:
                        ctx.out.write(json.dumps({"qr": event.code}) + "\n")
                    else:
                        segno.make(event.code, error="l").terminal(out=ctx.out, compact=True)
                        ctx.out.write("Scan with WhatsApp > Linked devices\n")
                    ctx.out.flush()
                elif isinstance(event, Qr) and not code_requested:
                    code_requested = True
                    await client.request_pairing_code(phone or "")
                elif isinstance(event, PairingCode):
                    line = {"code": event.code} if ctx.as_json else None
                    ctx.out.write(
                        json.dumps(line) + "\n"
                        if line
                        else f"Enter this code on the phone: {event.code}\n"
                    )
                    ctx.out.flush()
                elif isinstance(event, Connected):
                    return str(event.jid)
                elif isinstance(event, Disconnected) and not event.will_reconnect:
                    raise CliError(f"linking failed: {event.reason.value}")
    except TimeoutError:
        raise CliError(f"not linked within {limit} s") from None
    finally:
        await client.stop()


def cmd_worker_session(ctx: Context, args: argparse.Namespace) -> None:
    from workers.session.worker import run_session_worker, worker_id

    node_id = args.node_id or worker_id()  # named here so that every log line carries it
    configure_logging(ctx.settings, "session", worker_id=node_id)
    run_session_worker(
        ctx.settings,
        factory_path=args.session_factory,
        concurrency=args.concurrency,
        node_id=node_id,
    )


def cmd_beat(ctx: Context, args: argparse.Namespace) -> None:
    from workers.beat import run_beat

    configure_logging(ctx.settings, "beat")
    run_beat(ctx.settings)


def cmd_demo(ctx: Context, args: argparse.Namespace) -> None:
    from workers.demo import DemoFailed, run_demo

    configure_logging(ctx.settings, "demo")
    try:
        run_demo(ctx.settings, ctx.out)
    except DemoFailed as exc:
        raise CliError(f"demo: {exc}") from None


# --- parser ---------------------------------------------------------------------------------
Handler = Callable[[Context, argparse.Namespace], None]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wafleet", description="wafleet: a multi-tenant WhatsApp fleet")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(group: Any, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(name, help=help_text)
        p.set_defaults(handler=handler)
        return p

    db = sub.add_parser("db", help="schema migrations").add_subparsers(dest="sub", required=True)
    add(db, "upgrade", cmd_db_upgrade, "migrate to the newest schema").add_argument(
        "--revision", default="head"
    )
    add(db, "downgrade", cmd_db_downgrade, "migrate back").add_argument("revision")
    add(db, "current", cmd_db_current, "show the schema revision")

    tenant = sub.add_parser("tenant", help="tenants").add_subparsers(dest="sub", required=True)
    add(tenant, "create", cmd_tenant_create, "create a tenant").add_argument("name")
    add(tenant, "list", cmd_tenant_list, "list tenants")

    apikey = sub.add_parser("apikey", help="tenant API keys").add_subparsers(
        dest="sub", required=True
    )
    p = add(apikey, "create", cmd_apikey_create, "create an API key (shown once)")
    p.add_argument("--tenant", required=True, help="tenant id or name")
    p.add_argument("--name", required=True)
    p.add_argument("--scopes", default="read,send", help="comma-separated: read,send,admin")
    p.add_argument("--instance", help="restrict the key to one instance")

    inst = sub.add_parser("instance", help="instances").add_subparsers(dest="sub", required=True)
    p = add(inst, "create", cmd_instance_create, "create an instance")
    p.add_argument("--tenant", required=True, help="tenant id or name")
    p.add_argument("--name", required=True)
    p.add_argument("--phone", help="owner number, E.164 digits with country code")
    add(inst, "list", cmd_instance_list, "list live instances").add_argument(
        "--tenant", help="tenant id or name"
    )
    p = add(inst, "delete", cmd_instance_delete, "delete an instance and destroy its keys")
    p.add_argument("id")
    p.add_argument("--tenant", help="tenant id or name (refuses other tenants' instances)")

    keys = sub.add_parser("keys", help="master keys").add_subparsers(dest="sub", required=True)
    add(keys, "generate", cmd_keys_generate, "print a new random master key")
    add(keys, "rotate", cmd_keys_rotate, "re-wrap every data key under WAFLEET_MASTER_KEY")

    worker = sub.add_parser("worker", help="fleet processes").add_subparsers(
        dest="sub", required=True
    )
    p = add(worker, "routing", cmd_worker_routing, "Celery worker for accept/inbound/webhooks")
    p.add_argument("--queues", help="comma-separated queues (default: all stateless queues)")
    p.add_argument("--concurrency", type=int, help="worker processes/threads")
    p.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"])
    p.add_argument("--hostname", help="Celery node name")

    p = add(worker, "session", cmd_worker_session, "session worker owning instances' sockets")
    p.add_argument(
        "--session-factory",
        required=True,
        help="module:callable returning the session factory for the settings",
    )
    p.add_argument("--concurrency", type=int, default=4, help="threads for wake-up tasks")
    p.add_argument("--node-id", help="stable worker id (default: host-pid-random)")

    p = sub.add_parser("beat", help="housekeeping scheduler (run exactly one)")
    p.set_defaults(handler=cmd_beat)

    p = sub.add_parser("link", help="link an instance to a WhatsApp account (QR or code)")
    p.set_defaults(handler=cmd_link)
    p.add_argument("--instance", required=True, help="instance id")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--qr", action="store_true", help="show QR codes to scan")
    how.add_argument("--code", metavar="PHONE", help="pair by phone number with a code")
    p.add_argument("--server", help="ws:// URL of another server (e.g. the simulator)")
    p.add_argument("--root-key", help="hex root public key that server signs with")
    p.add_argument("--timeout", type=int, default=180, help="seconds to wait for the phone")

    p = sub.add_parser("gateway", help="the HTTP API (WAFLEET_GATEWAY_HOST/PORT)")
    p.set_defaults(handler=cmd_gateway)

    p = sub.add_parser("demo", help="run the fleet on the embedded default")
    p.set_defaults(handler=cmd_demo)
    return parser


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    ctx: Context | None = None
    try:
        args = build_parser().parse_args(argv)
        ctx = Context(load_settings(), out, args.json)
        args.handler(ctx, args)
        return 0
    except CliError as exc:
        err.write(f"error: {exc}\n")
        return exc.code
    except SettingsError as exc:
        err.write(f"error: {exc}\n")
        return EXIT_USAGE
    except WhatsAppError as exc:
        err.write(f"error: {_describe(exc)}\n")
        return EXIT_REFUSED
    except (OperationalError, ProgrammingError) as exc:
        err.write(f"error: database: {_first_line(exc.orig or exc)}\n")
        return EXIT_REFUSED
    finally:
        if ctx is not None:
            ctx.close()


def _describe(exc: WhatsAppError) -> str:
    shown = {
        k: v
        for k, v in exc.details.items()
        if k
        in {
            "name",
            "tenant",
            "instance",
            "field",
            "value",
            "phone_number",
            "constraint",
            "master_key_id",
        }
    }
    extra = ", ".join(f"{k}={v}" for k, v in shown.items())
    return f"{exc.text} ({extra})" if extra else exc.text


if __name__ == "__main__":
    raise SystemExit(main())
