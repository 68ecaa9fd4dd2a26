"""The gateway's one error body and the mapping of every failure onto it.

Every non-2xx answer of the HTTP API (validation, unknown route, auth, scope, rate limit, storage
refusals, task rejections, unreachable dependencies, unexpected bugs) has the body

    {"code": str, "message": str, "details": {...}, "retryable": bool, "retry_after": float|null}

`code` is stable and machine-readable; `message` is for humans; `details` never carries request
values (a secret may be among them), stack traces or key material.

    ApiError                 raised by endpoints and dependencies; carries status and body
    storage.errors.*         NotFound 404, Conflict 409, InvalidValue 400, KeyUnavailable 503
    tasks.errors.Rejected    400 / 404 / 409 by code (REJECTED_STATUS)
    RequestValidationError   400 invalid_request, with the offending locations
    HTTPException            404 not_found (unknown route), 405 method_not_allowed, ...
    DataError (DB)           400 invalid_value: the database refused a value
    OperationalError (DB), redis.ConnectionError, kombu OperationalError
                             503 <dependency>_unavailable, retryable
    anything else            500 internal_error (logged with its trace, never returned)
"""

from __future__ import annotations

import logging
import re
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerError
from pydantic import BaseModel, Field
from sqlalchemy.exc import DataError as UnstorableValue
from sqlalchemy.exc import OperationalError as DatabaseError
from starlette.exceptions import HTTPException

from storage.errors import Conflict, InvalidValue, KeyUnavailable, NotFound, StorageError
from tasks.errors import Rejected

logger = logging.getLogger(__name__)

# tasks.accept's rejection codes (tasks/errors.py) → HTTP status.
REJECTED_STATUS = {
    "invalid_phone": 400,
    "text_too_long": 400,
    "empty_message": 400,
    "invalid_media": 400,
    "media_too_large": 400,
    "invalid_request": 400,
    "unknown_tenant": 404,
    "unknown_instance": 404,
    "instance_deleted": 404,
    "idempotency_conflict": 409,
}
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}
UNAVAILABLE_RETRY_AFTER = 5.0  # seconds a client should wait when a dependency is down


class ErrorBody(BaseModel):
    """The body of every error answer."""

    code: str = Field(description="stable machine-readable reason, e.g. invalid_phone")
    message: str = Field(description="human-readable explanation")
    details: dict[str, Any] = Field(default_factory=dict)
    retryable: bool = Field(description="whether the same request may succeed later")
    retry_after: float | None = Field(description="seconds to wait before retrying, if known")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(
            code=code,
            message=message,
            details=details or {},
            retryable=retryable,
            retry_after=retry_after,
        )
        self.headers = dict(headers or {})
        if retry_after is not None:
            self.headers.setdefault("Retry-After", str(max(1, round(retry_after))))

    def response(self) -> JSONResponse:
        return JSONResponse(
            self.body.model_dump(mode="json"), status_code=self.status, headers=self.headers
        )


def not_found(what: str, **details: Any) -> ApiError:
    return ApiError(404, "not_found", f"unknown {what}", details=details)


# Details of storage errors that are safe to show (names of fields and constraints, never
# values a caller did not send themselves).
_SAFE_DETAILS = {"field", "constraint", "instance", "tenant", "outbox_id", "key_id"}


def _from_storage(exc: StorageError) -> ApiError:
    details = {k: v for k, v in exc.details.items() if k in _SAFE_DETAILS}
    if isinstance(exc, NotFound):
        return ApiError(404, "not_found", exc.text, details=details)
    if isinstance(exc, Conflict):
        return ApiError(409, "conflict", exc.text, details=details)
    if isinstance(exc, InvalidValue):
        return ApiError(400, "invalid_value", exc.text, details=details)
    if isinstance(exc, KeyUnavailable):
        return ApiError(503, "key_unavailable", "encrypted data cannot be opened", retryable=False)
    return ApiError(500, "storage_error", "the storage layer refused the operation")


def from_rejected(exc: Rejected) -> ApiError:
    status = REJECTED_STATUS.get(exc.code, 400)
    return ApiError(status, exc.code, exc.text)


def _unavailable(dependency: str) -> ApiError:
    return ApiError(
        503,
        f"{dependency}_unavailable",
        f"the {dependency} cannot be reached; try again shortly",
        retryable=True,
        retry_after=UNAVAILABLE_RETRY_AFTER,
    )


def _validation(exc: RequestValidationError) -> ApiError:
    errors: list[dict[str, Any]] = [
        {
            "location": [str(part) for part in err.get("loc", ())],
            "message": str(err.get("msg", "invalid")),
            "type": str(err.get("type", "invalid")),
        }
        for err in exc.errors()
    ]
    where, message = "request", "invalid request"
    if errors:
        where = ".".join(errors[0]["location"][1:]) or where
        message = errors[0]["message"]
    return ApiError(
        400,
        "invalid_request",
        f"{where}: {message}",
        details={"errors": errors},
    )


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into the one error body."""

    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def storage_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StorageError)
        return _from_storage(exc).response()

    async def rejected(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Rejected)
        return from_rejected(exc).response()

    async def validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _validation(exc).response()

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        code = HTTP_CODES.get(exc.status_code, "http_error")
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # The router names only the first route matching the path; list them all.
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return ApiError(exc.status_code, code, message, headers=headers).response()

    async def unstorable(_: Request, exc: Exception) -> JSONResponse:
        # The database refused a value (out of range, malformed): the request's fault. Request
        # bodies are checked before this; it is the net for anything that slipped through.
        logger.warning("database refused a value: %s", type(exc).__name__)
        return ApiError(400, "invalid_value", "a value in the request cannot be stored").response()

    async def database_down(_: Request, exc: Exception) -> JSONResponse:
        logger.warning("database unavailable: %s", type(exc).__name__)
        return _unavailable("database").response()

    async def redis_down(_: Request, exc: Exception) -> JSONResponse:
        logger.warning("redis unavailable: %s", type(exc).__name__)
        return _unavailable("redis").response()

    async def broker_down(_: Request, exc: Exception) -> JSONResponse:
        logger.warning("broker unavailable: %s", type(exc).__name__)
        return _unavailable("broker").response()

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return ApiError(500, "internal_error", "internal error").response()

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StorageError, storage_error)
    app.add_exception_handler(Rejected, rejected)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(DatabaseError, database_down)
    app.add_exception_handler(UnstorableValue, unstorable)
    app.add_exception_handler(redis.ConnectionError, redis_down)
    app.add_exception_handler(redis.TimeoutError, redis_down)
    app.add_exception_handler(BrokerError, broker_down)
    app.add_exception_handler(Exception, internal)


def _allowed_methods(request: Request) -> list[str]:
    """Every method the app serves at this request's path, from its OpenAPI document."""
    templates: list[tuple[re.Pattern[str], list[str]]] | None = getattr(
        request.app.state, "allow_templates", None
    )
    if templates is None:
        templates = [
            (
                re.compile("^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(path)) + "$"),
                [m.upper() for m in operations],
            )
            for path, operations in request.app.openapi().get("paths", {}).items()
        ]
        request.app.state.allow_templates = templates
    path = request.url.path
    return sorted({m for pattern, methods in templates if pattern.match(path) for m in methods})


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries documenting the error body for these statuses."""
    return {status: {"model": ErrorBody, "description": "error"} for status in statuses}
