"""Errors the task API reports to producers.

    WhatsAppError (protocol.core.errors)
    └── TaskError
        └── Rejected          the request is invalid and will not be retried; `code` says why:
                              invalid_phone, text_too_long, empty_message, invalid_media,
                              media_too_large, unknown_tenant, unknown_instance,
                              idempotency_conflict, instance_deleted

`Rejected` keeps (code, text) as its args so it survives Celery's JSON result serialization and
is rebuilt as the same class on the producer's side: `str(exc)` is "code: text".
"""

from __future__ import annotations

from protocol.core.errors import WhatsAppError


class TaskError(WhatsAppError):
    code = "task_error"


class Rejected(TaskError):
    code = "rejected"

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text, reason=code)
        self.code = code
        self.args = (code, text)

    def __str__(self) -> str:
        return f"{self.code}: {self.text}"
