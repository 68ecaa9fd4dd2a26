"""Talk to a reference implementation (Baileys, libsignal) running in node.

A `NodePeer` starts one long-lived `node <script>` in tests/interop and exchanges one JSON object
per line: the script reads a request line from stdin and writes exactly one response line to
stdout. Bytes travel as hex strings. One process serves thousands of requests, so hypothesis
can compare our code with the reference on every example without a process per example.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.services import ensure_reference_packages, unavailable


class NodePeerError(RuntimeError):
    """The node side reported an error or died."""


class NodePeer:
    def __init__(self, script: str, *, timeout: float = 60.0) -> None:
        directory = ensure_reference_packages()
        node = shutil.which("node")
        if node is None:
            unavailable("node not on PATH")
        path = Path(directory) / script
        self._timeout = timeout
        self._proc = subprocess.Popen(
            [node, str(path)],
            cwd=directory,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def call(self, request: dict[str, Any]) -> Any:
        """Send one request; return the decoded `result` of the response line."""
        proc = self._proc
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
        except BrokenPipeError as exc:
            raise NodePeerError(self._stderr()) from exc
        line = proc.stdout.readline()
        if not line:
            raise NodePeerError(f"node exited: {self._stderr()}")
        response = json.loads(line)
        if "error" in response:
            raise NodePeerError(str(response["error"]))
        return response.get("result")

    def _stderr(self) -> str:
        proc = self._proc
        if proc.poll() is None:
            return "(node still running)"
        assert proc.stderr is not None
        return proc.stderr.read()[-4000:]

    def close(self) -> None:
        proc = self._proc
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> NodePeer:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
