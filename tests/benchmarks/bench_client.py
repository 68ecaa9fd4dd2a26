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

Idle cost: after the RSS reading, at 1,000 and 10,000 sessions, the client process's CPU time
(`time.process_time`, all threads) over an idle window of `KEEPALIVE_WINDOWS` keepalive
intervals, in which every session sends one ping per interval: reported as CPU-% of one core
and as µs per keepalive (CPU ÷ sessions × intervals). RLIMIT_NOFILE is raised to its hard limit
(the simulator and the client children inherit it).

Target (issue #5 §6): ≤ 1 MB RSS per idle session and ≥ 50× less than a Baileys socket.

Run: `.venv/bin/python -m tests.benchmarks client`. Figures only; nothing asserts timings.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import pickle
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from protocol.aio import Client, ClientOptions, Connected, MessageStatus, Qr, Status
from protocol.store import MemoryKeyStore
from tests.interop.node import NodePeer

SIZES = (100, 1000, 10000)
CPU_SIZES = (1000, 10000)  # sizes whose idle keepalive CPU is measured
KEEPALIVE_WINDOWS = 3  # idle window, in keepalive intervals
BAILEYS_SOCKETS = 100  # each Baileys link takes seconds (QR, 515, reopen)
MESSAGES = 200
ACCOUNTS = 20  # companions are spread over accounts (device numbers per phone stay small)
DEVICES_PER_ACCOUNT = 100
LINK_CONCURRENCY = 40
PREKEYS = 30
LOGIN_WAIT = 120.0
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
        accounts = max(ACCOUNTS, n // DEVICES_PER_ACCOUNT)
        phones = [f"1555{n:05d}{i:04d}" for i in range(accounts)]
        for phone in phones:
            await http.post("/control/accounts", json={"phone": phone})
        stores: list[MemoryKeyStore] = []
        semaphore = asyncio.Semaphore(LINK_CONCURRENCY)

        async def link(i: int) -> None:
            async with semaphore:
                stores.append(await _link(sim, http, phones[i % accounts]))

        await asyncio.gather(*(link(i) for i in range(n)))
    return stores


async def _measure(sim: Sim, stores: list[MemoryKeyStore], messages: int) -> dict[str, float]:
    n = len(stores)
    gc.collect()
    before = _rss()
    clients: list[Client] = []
    login: list[float] = []
    late = 0
    for store in stores:
        client = Client(store, _options(sim))
        start = time.perf_counter()
        await client.start()
        try:
            await client.wait_connected(LOGIN_WAIT)
            login.append(time.perf_counter() - start)
        except TimeoutError:
            late += 1  # still reconnecting with backoff; counted, its memory included
        clients.append(client)
    gc.collect()
    rss = (_rss() - before) / n
    idle: dict[str, float] = {}
    if n in CPU_SIZES:
        interval = _options(sim).keepalive_interval
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(KEEPALIVE_WINDOWS * interval)  # the idle window being measured
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        idle = {
            "idle_cpu_pct": cpu / wall * 100,
            "us_per_keepalive": cpu / (n * KEEPALIVE_WINDOWS) * 1e6,
            "connected_after_idle": sum(c.connected for c in clients),
        }
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
        "late_logins": late,
    } | idle
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
            [*base, "measure", *common, str(messages)],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
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


def _raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


RESULTS = Path(tempfile.gettempdir()) / "wafleet_bench_client.json"


def main() -> str:
    """Measure (our sizes, Baileys, then the largest size, whose failure must not lose the
    rest), keeping raw results in `RESULTS` after each step; then render the section.
    `python -m tests.benchmarks.bench_client render` renders the last saved results again."""
    _raise_nofile()
    sim = Sim.launch()
    results: dict[str, object] = {"ours": {}, "theirs": None}
    ours: dict[str, dict[str, float]] = {}
    results["ours"] = ours
    try:
        httpx.post(f"{sim.http}/control/accounts", json={"phone": BOB}, timeout=30)
        for n in SIZES[:-1]:
            started = time.perf_counter()
            ours[str(n)] = _measure_ours(sim, n, MESSAGES if n == SIZES[0] else 0)
            print(f"wafleet {n} sessions ({time.perf_counter() - started:.0f} s): {ours[str(n)]}")
            RESULTS.write_text(json.dumps(results))
        started = time.perf_counter()
        results["theirs"] = _measure_baileys(sim)
        print(f"Baileys {BAILEYS_SOCKETS} ({time.perf_counter() - started:.0f} s): {results}")
        RESULTS.write_text(json.dumps(results))
        started = time.perf_counter()
        try:
            ours[str(SIZES[-1])] = _measure_ours(sim, SIZES[-1], 0)
        except subprocess.CalledProcessError as exc:
            print(f"wafleet {SIZES[-1]} sessions failed: {exc}")
        took = time.perf_counter() - started
        print(f"wafleet {SIZES[-1]} ({took:.0f} s): {ours.get(str(SIZES[-1]))}")
        results["load_average"] = os.getloadavg()[1]
        RESULTS.write_text(json.dumps(results))
    finally:
        sim.close()
    return render(results)


_MISSING: dict[str, float] = {}


def render(results: dict[str, Any]) -> str:
    ours = {int(n): r for n, r in results["ours"].items()}
    theirs: dict[str, float] = results["theirs"]
    small, mid, big = (ours.get(n, _MISSING) for n in SIZES)

    def fmt(r: dict[str, float], key: str, spec: str, scale: float = 1.0) -> str:
        return format(r[key] / scale, spec) if key in r else "n/a"

    def ratio(a: float, b: float) -> str:
        return f"{b / a:.2f}" if a else "-"

    kib = 1024
    rows = [
        (
            "RSS per idle logged-in session (KiB)",
            f"{small['rss_per_session'] / kib:,.0f}",
            fmt(mid, "rss_per_session", ",.0f", kib),
            fmt(big, "rss_per_session", ",.0f", kib),
            f"{theirs['rss_per_socket'] / kib:,.0f}",
            ratio(small["rss_per_session"], theirs["rss_per_socket"]),
        ),
        (
            "idle CPU, keepalives every 30 s (% of one core)",
            "",
            fmt(mid, "idle_cpu_pct", ".2f"),
            fmt(big, "idle_cpu_pct", ".2f"),
            "",
            "",
        ),
        (
            "CPU per keepalive (µs)",
            "",
            fmt(mid, "us_per_keepalive", ",.0f"),
            fmt(big, "us_per_keepalive", ",.0f"),
            "",
            "",
        ),
        (
            "connect + login, p50 (ms)",
            f"{small['login_p50']:.1f}",
            fmt(mid, "login_p50", ".1f"),
            fmt(big, "login_p50", ".1f"),
            f"{theirs['login_p50']:.1f}",
            ratio(small["login_p50"], theirs["login_p50"]),
        ),
        (
            "connect + login, p99 (ms)",
            f"{small['login_p99']:.1f}",
            fmt(mid, "login_p99", ".1f"),
            fmt(big, "login_p99", ".1f"),
            f"{theirs['login_p99']:.1f}",
            ratio(small["login_p99"], theirs["login_p99"]),
        ),
        ("send → server ack, p50 (ms)", f"{small['ack_p50']:.2f}", "", "", "n/a", ""),
        ("send → server ack, p99 (ms)", f"{small['ack_p99']:.2f}", "", "", "n/a", ""),
        (
            "send → delivery receipt, p50 (ms)",
            f"{small['delivered_p50']:.2f}",
            "",
            "",
            f"{theirs['send_p50']:.2f}",
            ratio(small["delivered_p50"], theirs["send_p50"]),
        ),
        (
            "send → delivery receipt, p99 (ms)",
            f"{small['delivered_p99']:.2f}",
            "",
            "",
            f"{theirs['send_p99']:.2f}",
            ratio(small["delivered_p99"], theirs["send_p99"]),
        ),
    ]
    worst = max(r["rss_per_session"] for r in ours.values())
    largest = max(ours)
    top = ours[largest]
    verdict = (
        f"Target (issue #5 §6): ≤ 1 MB RSS per idle session and ≥ 50× less than Baileys. "
        f"Reached: at most {worst / kib:,.0f} KiB per session at any measured size "
        f"({'within' if worst <= 1024 * kib else 'above'} the 1 MB bound), "
        f"{ratio(small['rss_per_session'], theirs['rss_per_socket'])}× less than a Baileys "
        f"socket at {SIZES[0]} sessions and "
        f"{ratio(top['rss_per_session'], theirs['rss_per_socket'])}× at {largest:,}; "
        f"{top.get('connected_after_idle', 0):.0f} of {largest:,} sessions connected after "
        f"the idle window ({top.get('late_logins', 0):.0f} not logged in within "
        f"{LOGIN_WAIT:.0f} s of their start). Load average (5 min) at the end of the run: "
        f"{results.get('load_average', float('nan')):.1f} on 2 cores shared with other jobs."
    )
    if SIZES[-1] not in ours:
        verdict += f" The {SIZES[-1]:,}-session run did not complete in this recording."
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
        f"Idle CPU: the client process's CPU time over {KEEPALIVE_WINDOWS} keepalive "
        f"intervals with every session idle (one ping per session and interval), as % of one "
        f"core and per keepalive; the simulator runs in its own process and is not counted.",
        "",
        f"| figure | wafleet, {SIZES[0]:,} | wafleet, {SIZES[1]:,} | wafleet, {SIZES[2]:,} | "
        f"Baileys, {BAILEYS_SOCKETS} sockets | Baileys / wafleet |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    lines += ["", verdict]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["render"]:
        print(render(json.loads(RESULTS.read_text())))
    elif len(sys.argv) > 1:
        _child(sys.argv[1:])
    else:
        print(main())
