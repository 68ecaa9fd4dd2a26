"""The storage layer's errors; `IntegrityError` and driver errors never escape it.

WhatsAppError (protocol.core.errors)
└── StorageError             anything the database layer refuses
    ├── Conflict             a unique or check constraint was violated (`constraint` names it)
    ├── NotFound             the row does not exist (or belongs to another tenant)
    ├── KeyUnavailable       a secret cannot be decrypted: no master key, or a wrong one
    └── InvalidValue         a value is malformed (phone number, name); `field` names it
"""

from __future__ import annotations

from protocol.core.errors import WhatsAppError


class StorageError(WhatsAppError):
    code = "storage_error"


class Conflict(StorageError):
    """A uniqueness or integrity rule was violated; `details['constraint']` names which."""

    code = "conflict"


class NotFound(StorageError):
    code = "not_found"


class KeyUnavailable(StorageError):
    """Encrypted data cannot be opened with the configured master key(s)."""

    code = "key_unavailable"


class InvalidValue(StorageError):
    """A value the schema would store is malformed; `details['field']` names it."""

    code = "invalid_value"
