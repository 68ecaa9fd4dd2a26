"""Processes: the `wafleet` CLI, session workers, routing workers, the gateway, the embedded demo.

The top layer. It reads config (settings from the environment), starts Celery workers and
asyncio loops, and wires the layers below together:
    cli         `wafleet` (db, tenant, apikey, instance, keys, worker routing, demo)
    routing     `wafleet worker routing`: the Celery worker for the stateless queues
    producer    `connect()`: a configured task producer for other Python services
    delivery    the outbound actor's policy: retry schedule, pacing, error classification
    assignment  rendezvous hashing of instances over live session workers
    embedded    the private Redis of the zero-install mode; demo: `wafleet demo`

Must not import: protocol.simulator, except in the embedded demo whose purpose is to run one.

Entry points: `wafleet` (workers.cli:main).
"""
