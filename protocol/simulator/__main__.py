"""`python -m protocol.simulator --host 127.0.0.1 --port N [--seed S] [--data DIR]`: run the
simulator; with `--data` its state survives restarts (protocol.simulator.persist). SIGTERM or
SIGINT stop it cleanly (and save)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from protocol.simulator.server import Simulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protocol.simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", default=None, help="deterministic keys and ids for this seed")
    parser.add_argument(
        "--data", default=None, help="keep accounts, devices, keys and queues in this directory"
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level)
    seed = args.seed.encode() if args.seed is not None else None
    sim = Simulator(host=args.host, port=args.port, seed=seed, data_dir=args.data)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await sim.start()
        # One line for whoever started us (tests read it to learn the port and root key).
        sys.stdout.write(
            f'{{"ws_url": "{sim.ws_url}", "root_public_key": "{sim.root_public_key.hex()}"}}\n'
        )
        sys.stdout.flush()
        await stop.wait()
        await sim.stop()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
