"""Client benchmark: idle sessions, connect + login latency, send latency; ours vs Baileys.

The simulator runs as its own process (`python -m protocol.simulator`), so the RSS measured here
is the clients' alone. Sessions are linked first (QR through the control API) in one process,
then started again from their saved keys in a fresh process: RSS per idle logged-in session
(`Client` + `Connection` + `MemoryKeyStore` with 30 uploaded prekeys), start → `Connected`
latency (sessions started one after another), and send → server ack / → delivery receipt
from the simulated phone.

Baileys 7.0.0-rc14 (tests/interop/bench_client.mjs) does the same against the same simulator:
sockets linked by QR, reopened from saved creds (`useMultiFileAuthState`), RSS per socket,
open latency, and send → delivery receipt (Baileys reports no server-ack status for 1:1).

Run: `.venv/bin/python -m tests.benchmarks client`. Figures only; nothing asserts timings.
"""

from __future__ import annotations

import asyncio
import gc
import json
import pickle
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from protocol.aio import Client, ClientOptions, Connected, MessageStatus, Qr, Status
from protocol.store import MemoryKeyStore
from tests.interop.node import NodePeer

SIZES = (100, 1000)
BAILEYS_SOCKETS = 100  # each Baileys link takes seconds (QR, 515, reopen)
MESSAGES = 200
ACCOUNTS = 20  # companions are spread over accounts (device numbers per phone stay small)
LINK_CONCURRENCY = 20
PREKEYS = 30
BOB = "15559990000"


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


class Sim:
    """The simulator process (or, in a child, just its address)."""

    def __init__(self, proc: subprocess.Popen[str] | None, ws_url: str, root: bytes) -> None:
        self.proc = proc
        self.ws_url = ws_url
        self.root = root
        self.http = ws_url.removesuffix("/ws/chat").replace("ws://", "http://")

    @classmethod
    def launch(cls) -> Sim:
        proc = subprocess.Popen(
            [sys.executable, "-m", "protocol.simulator", "--port", "0", "--seed", "bench"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        return cls(proc, info["ws_url"], bytes.fromhex(info["root_public_key"]))

    @classmethod
    def attach(cls, ws_url: str, root: bytes) -> Sim:
        return cls(None, ws_url, root)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def _options(sim: Sim) -> ClientOptions:
    return ClientOptions(url=sim.ws_url, trusted_root=sim.root, prekey_upload_count=PREKEYS)


async def _link(sim: Sim, http: httpx.AsyncClient, phone: str) -> MemoryKeyStore:
    store = MemoryKeyStore()
    client = Client(store, _options(sim))
    await client.start()
    try:
        while True:
            event = await asyncio.wait_for(client.events.get(), 60)
            if isinstance(event, Qr):
                r = await http.post(f"/control/accounts/{phone}/link", json={"qr": event.code})
                r.raise_for_status()
            elif isinstance(event, Connected):
                return store
    finally:
        await client.stop()


async def _link_all(sim: Sim, n: int) -> list[MemoryKeyStore]:
    async with httpx.AsyncClient(base_url=sim.http, timeout=60) as http:
        phones = [f"1555{n:04d}{i:04d}" for i in range(ACCOUNTS)]
        for phone in phones:
            await http.post("/control/accounts", json={"phone": phone})
        stores: list[MemoryKeyStore] = []
        semaphore = asyncio.Semaphore(LINK_CONCURRENCY)

        async def link(i: int) -> None:
            async with semaphore:
                stores.append(await _link(sim, http, phones[i % ACCOUNTS]))

        await asyncio.gather(*(link(i) for i in range(n)))
    return stores


async def _measure(sim: Sim, stores: list[MemoryKeyStore], messages: int) -> dict[str, float]:
    n = len(stores)
    gc.collect()
    before = _rss()
    clients: list[Client] = []
    login: list[float] = []
    for store in stores:
        client = Client(store, _options(sim))
        start = time.perf_counter()
        await client.start()
        await client.wait_connected(60)
        login.append(time.perf_counter() - start)
        clients.append(client)
    gc.collect()
    rss = (_rss() - before) / n
    sender = clients[0]
    acked: list[float] = []
    delivered: list[float] = []
    while not sender.events.empty():
        sender.events.get_nowait()
    for i in range(messages):
        start = time.perf_counter()
        msg_id = await sender.send_text(BOB, f"bench {i}")
        while True:
            event = await asyncio.wait_for(sender.events.get(), 30)
            if isinstance(event, MessageStatus) and event.id == msg_id:
                if event.status is Status.SERVER_ACK and len(acked) <= i:
                    acked.append(time.perf_counter() - start)
                elif event.status is Status.DELIVERED:
                    delivered.append(time.perf_counter() - start)
                    break
    await asyncio.gather(*(c.stop() for c in clients))
    result = {
        "rss_per_session": rss,
        "login_p50": _pct(login, 0.5) * 1000,
        "login_p99": _pct(login, 0.99) * 1000,
    }
    if acked:
        result |= {
            "ack_p50": _pct(acked, 0.5) * 1000,
            "ack_p99": _pct(acked, 0.99) * 1000,
            "delivered_p50": _pct(delivered, 0.5) * 1000,
            "delivered_p99": _pct(delivered, 0.99) * 1000,
        }
    return result


def _child(argv: list[str]) -> None:
    """`python -m tests.benchmarks.bench_client link|measure WS_URL ROOT N FILE [MESSAGES]`.

    Linking and measuring run in separate fresh processes, so memory freed by the linking
    phase cannot be reused by the measured sessions and hide their cost. The stores travel
    as their tables (a benchmark may read MemoryKeyStore's private layout).
    """
    mode, ws_url, root, count, path = argv[:5]
    sim = Sim.attach(ws_url, bytes.fromhex(root))
    if mode == "link":
        stores = asyncio.run(_link_all(sim, int(count)))
        Path(path).write_bytes(pickle.dumps([s._tables for s in stores]))
        return
    stores = []
    for tables in pickle.loads(Path(path).read_bytes()):  # our own file, just written
        store = MemoryKeyStore()
        store._tables = tables
        stores.append(store)
    print(json.dumps(asyncio.run(_measure(sim, stores, int(argv[5])))))


def _measure_ours(sim: Sim, n: int, messages: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "stores.pickle")
        base = [sys.executable, "-m", "tests.benchmarks.bench_client"]
        common = [sim.ws_url, sim.root.hex(), str(n), path]
        subprocess.run([*base, "link", *common], check=True)
        out = subprocess.run(
            [*base, "measure", *common, str(messages)], check=True, capture_output=True, text=True
        )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _measure_baileys(sim: Sim) -> dict[str, float]:
    phones = [f"1666{i:07d}" for i in range(ACCOUNTS)]
    for phone in phones:
        httpx.post(f"{sim.http}/control/accounts", json={"phone": phone}, timeout=30)
    with NodePeer("bench_client.mjs", timeout=1800) as peer:
        dirs = peer.call(
            {
                "op": "link",
                "url": sim.ws_url,
                "root": sim.root.hex(),
                "http": sim.http,
                "phones": phones,
                "n": BAILEYS_SOCKETS,
            }
        )
    with NodePeer("bench_client.mjs", timeout=1800) as peer:  # a fresh process
        result: dict[str, float] = peer.call(
            {
                "op": "measure",
                "url": sim.ws_url,
                "root": sim.root.hex(),
                "dirs": dirs,
                "n": BAILEYS_SOCKETS,
                "messages": MESSAGES,
                "to": f"{BOB}@s.whatsapp.net",
            }
        )
    return result


def main() -> str:
    sim = Sim.launch()
    try:
        httpx.post(f"{sim.http}/control/accounts", json={"phone": BOB}, timeout=30)
        ours: dict[int, dict[str, float]] = {}
        for n in SIZES:
            started = time.perf_counter()
            ours[n] = _measure_ours(sim, n, MESSAGES if n == SIZES[0] else 0)
            print(f"wafleet {n} sessions ({time.perf_counter() - started:.0f} s): {ours[n]}")
        started = time.perf_counter()
        theirs = _measure_baileys(sim)
        print(f"Baileys {BAILEYS_SOCKETS} ({time.perf_counter() - started:.0f} s): {theirs}")
    finally:
        sim.close()
    small, big = ours[SIZES[0]], ours[SIZES[1]]

    def ratio(a: float, b: float) -> str:
        return f"{b / a:.2f}" if a else "-"

    kib = 1024
    rows = [
        (
            "RSS per idle logged-in session (KiB)",
            f"{small['rss_per_session'] / kib:,.0f}",
            f"{big['rss_per_session'] / kib:,.0f}",
            f"{theirs['rss_per_socket'] / kib:,.0f}",
            ratio(small["rss_per_session"], theirs["rss_per_socket"]),
        ),
        (
            "connect + login, p50 (ms)",
            f"{small['login_p50']:.1f}",
            f"{big['login_p50']:.1f}",
            f"{theirs['login_p50']:.1f}",
            ratio(small["login_p50"], theirs["login_p50"]),
        ),
        (
            "connect + login, p99 (ms)",
            f"{small['login_p99']:.1f}",
            f"{big['login_p99']:.1f}",
            f"{theirs['login_p99']:.1f}",
            ratio(small["login_p99"], theirs["login_p99"]),
        ),
        ("send → server ack, p50 (ms)", f"{small['ack_p50']:.2f}", "", "n/a", ""),
        ("send → server ack, p99 (ms)", f"{small['ack_p99']:.2f}", "", "n/a", ""),
        (
            "send → delivery receipt, p50 (ms)",
            f"{small['delivered_p50']:.2f}",
            "",
            f"{theirs['send_p50']:.2f}",
            ratio(small["delivered_p50"], theirs["send_p50"]),
        ),
        (
            "send → delivery receipt, p99 (ms)",
            f"{small['delivered_p99']:.2f}",
            "",
            f"{theirs['send_p99']:.2f}",
            ratio(small["delivered_p99"], theirs["send_p99"]),
        ),
    ]
    lines = [
        "### Client sessions against the simulator",
        "",
        f"CPython {platform.python_version()} ({platform.machine()}) vs Baileys 7.0.0-rc14 on "
        f"node, same run, same simulator process (`python -m protocol.simulator`). Sessions are "
        f"linked by QR first, then started from their saved keys one after another in a fresh "
        f"process (both sides); RSS is the growth of that process per idle logged-in session "
        f"(wafleet: `Client` + `Connection` + `MemoryKeyStore` with {PREKEYS} prekeys; "
        f"Baileys: a socket with `useMultiFileAuthState`). Latencies over {MESSAGES} "
        f"sequential 1:1 texts from one session to a simulated phone, which decrypts and "
        f"answers with a delivery receipt. "
        f"Our `Connected` fires on `<success>` (prekey count and upload follow); Baileys emits "
        f"`open` after its own post-login queries. "
        f"Ratios: Baileys / wafleet (above 1 = wafleet uses less or is faster), at "
        f"{SIZES[0]} sessions vs {BAILEYS_SOCKETS} Baileys sockets. Script: "
        f"`tests/benchmarks/bench_client.py` (node side `tests/interop/bench_client.mjs`).",
        "",
        f"| figure | wafleet, {SIZES[0]} sessions | wafleet, {SIZES[1]} sessions | "
        f"Baileys, {BAILEYS_SOCKETS} sockets | Baileys / wafleet |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1:
        _child(sys.argv[1:])
    else:
        print(main())
