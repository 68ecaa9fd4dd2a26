"""Durable state: SQLAlchemy 2 models, Alembic migrations, repositories, encryption at rest.

Owns: the schema (storage.models) and its migrations (storage/migrations), engine/session
creation from a URL (storage.db), small repository functions per aggregate
(storage.repositories), AES-256-GCM envelope encryption of per-instance secrets
(storage.crypto), the encrypted SQL `KeyStore` (storage.keystore), instance leases with fencing
tokens and fleet membership (storage.leases), the per-tenant Redis event streams (storage.bus),
the QR / pairing code an instance is showing (storage.linking, Redis with TTL),
E.164 phone numbers (storage.phone), and the storage error tree (storage.errors:
`StorageError`, `Conflict`, `NotFound`, `KeyUnavailable`, `InvalidValue`; `IntegrityError`
never escapes).

Must not import: tasks, workers, config. It takes plain values (URLs, keys) from its callers.
Postgres via psycopg 3 is the production target; SQLite is the embedded default and runs the
same migrations.

Entry points: `storage.db.create_engine_from_url`, `storage.migrations.upgrade`.
"""
