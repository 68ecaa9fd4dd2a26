"""Repositories: small functions per aggregate over a caller-owned `Session`.

The caller owns the transaction (commit/rollback); functions flush when they need ids or must
detect a conflict, and wrap `IntegrityError` into `storage.errors.Conflict`. Idempotent writes
(inbound messages, notes, webhook deliveries) use the database's `ON CONFLICT DO NOTHING` so
redeliveries are cheap and race-free.

Modules: tenants (and API keys), instances (and their data keys), secrets (record ciphers and
master-key rotation), contacts, inbound (messages, notes, bookings), outbox, webhooks.
"""
