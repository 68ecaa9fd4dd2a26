"""Celery task definitions: the public task API, inbound routing, receipts, webhooks.

Tasks are thin: they take ids or small JSON payloads, are idempotent through the database's
unique constraints, `acks_late`, with stable explicit names (tasks.queues):
    accept     `wafleet.send_message`, `wafleet.send_bulk` (queue wa.accept): validate, write the
               outbox row, wake `wa.out.<instance>` after commit
    commands   `wafleet.instance_command` (wa.accept): connect/disconnect/logout written durably
               on the instance row, then routed to the owner's `wa.session.<worker>` queue
               (`wafleet.session_command`); instance delete with logout; number checks
    inbound    `wafleet.route_inbound_batch`, `wafleet.route_inbound`, `wafleet.message_status`
               (wa.inbound): notes, contacts, messages, pending bookings (a batch per
               transaction), receipts
    webhooks   `wafleet.webhooks.deliver|replay`, `wafleet.housekeeping.webhook_sweep`
    events     webhook outbox rows for fleet events; client: the `Producer` helper for services
Resources (sessions, Redis, event bus, keyring) come from tasks.runtime, configured by the
process entry point.

Must not import: workers, config (the Celery app is configured by the entry point that starts
it). May import: storage, protocol.
"""
