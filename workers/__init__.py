"""Processes: the `wafleet` CLI, session workers, routing workers, the gateway, the embedded demo.

The top layer. It reads config (settings from the environment), starts Celery workers and
asyncio loops, and wires the layers below together.

Must not import: protocol.simulator, except in the embedded demo (workers.demo) whose purpose
is to run one.

Entry points: `wafleet` (workers.cli:main).
"""
