"""Celery task definitions: the public task API, inbound routing, receipts, webhooks, housekeeping.

Tasks are thin: they take ids, are idempotent, `acks_late`, with stable explicit names
(`wafleet.send_message`, `wafleet.deliver`, `wafleet.route_inbound`, ...).

Must not import: workers, config (the Celery app is configured by the entry point that starts it).
May import: storage, protocol.

Entry points: the Celery app object and the task modules, loaded by `wafleet worker ...`.
"""
