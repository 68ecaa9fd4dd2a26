"""The gateway process: `create_app(settings)` builds the FastAPI app and its runtime once;
`run_gateway(settings)` serves it with uvicorn on WAFLEET_GATEWAY_HOST/PORT.

The gateway is a producer in the Celery sense: sends run tasks.accept's logic in-process
(outbox row + wake-up on `wa.out.<instance>`), and webhook tests and replays publish to
`wa.webhooks`, so it configures tasks.app and tasks.runtime like a routing worker does.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any
from urllib.parse import parse_qsl

import redis
import uvicorn
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from config.settings import Settings
from tasks import runtime
from workers.gateway import errors
from workers.gateway.metrics import Metrics, MetricsMiddleware
from workers.gateway.routes import ROUTERS, UNVERSIONED
from workers.gateway.state import Gateway, RateLimit
from workers.routing import build_runtime, configure_producer, resolve_urls

logger = logging.getLogger(__name__)

API_PREFIX = "/v1"
# The largest request worth reading: inline media is ≤ 5 MB, i.e. ~6.7 MB of base64, plus the
# JSON or multipart around it. Anything larger is refused before it is buffered.
MAX_BODY_BYTES = 8 * 1024 * 1024
TITLE = "wafleet gateway"
VERSION = "1"


def _gateway(settings: Settings) -> Gateway:
    broker_url, redis_url = resolve_urls(settings)
    configure_producer(settings)
    rt = build_runtime(settings)
    runtime.configure(rt)  # tasks.accept and tasks.webhooks read the process runtime
    broker_redis = (
        redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
        if broker_url.startswith(("redis://", "rediss://", "unix://"))
        else None
    )
    admin = settings.admin_key.get_secret_value().encode() if settings.admin_key else None
    return Gateway(
        runtime=rt,
        redis_url=redis_url,
        broker_url=broker_url,
        broker_redis=broker_redis,
        key_prefix=settings.redis_prefix,
        admin_key=admin or None,
        rate_limit=RateLimit(settings.gateway_rate_limit, settings.gateway_rate_window),
    )


def _too_large() -> errors.ApiError:
    return errors.ApiError(
        413,
        "payload_too_large",
        f"request bodies are limited to {MAX_BODY_BYTES} bytes; send large media by URL",
    )


class BodyLimit:
    """Refuses request bodies over `limit` bytes: by Content-Length before reading, and while
    reading for bodies without one (the error then surfaces through the app's handlers)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await _too_large().response()(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # HTTPException, because FastAPI turns other errors raised while it reads a
                    # body into a generic 400; the error handlers give it the one body.
                    raise HTTPException(413, _too_large().body.message)
            return message

        await self.app(scope, limited, send)


class SingleQueryValues:
    """Refuses an HTTP request that repeats a query parameter (`?phone=1&phone=2`): every query
    parameter of this API takes one value, and silently using the last one would hide the
    caller's mistake. Websocket handshakes are left to their own validation."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("query_string"):
            query = bytes(scope["query_string"]).decode("latin-1")
            names = [name for name, _ in parse_qsl(query, keep_blank_values=True)]
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                error = errors.ApiError(
                    400,
                    "invalid_request",
                    f"query parameter {repeated[0]!r} is given more than once",
                    details={"field": repeated[0]},
                )
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _drop_null_branch(parameter: dict[str, Any]) -> None:
    """An optional parameter is documented as its value's schema alone: FastAPI writes
    `anyOf: [X, {type: null}]`, but a query string, header or path has no null — leaving the
    parameter out is how it is omitted — so the null branch would describe nothing a client can
    send (and schema-driven clients would try to encode one)."""
    schema = parameter.get("schema", {})
    branches = schema.get("anyOf")
    if not isinstance(branches, list):
        return
    kept = [b for b in branches if b != {"type": "null"}]
    if len(kept) == len(branches):
        return
    del schema["anyOf"]
    if len(kept) == 1:
        schema.update(kept[0])
    else:
        schema["anyOf"] = kept


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, with validation failures documented as they are answered: 400 with the
    one error body (FastAPI would describe 422 with its own body)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                _drop_null_branch(parameter)
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault(
                    "400",
                    {
                        "description": "error",
                        "content": {"application/json": {"schema": error_ref}},
                    },
                )
    components = schema.get("components", {}).get("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    app.openapi_schema = schema
    return schema


def build_api() -> FastAPI:
    """The routes, error handlers and OpenAPI document, without a runtime (what docs and schema
    tests need); `create_app` adds the process's state and middleware."""
    app = FastAPI(
        title=TITLE,
        version=VERSION,
        description="Multi-tenant WhatsApp fleet: REST API (v1), realtime events, operations.",
    )
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router, prefix=API_PREFIX)
    for router in UNVERSIONED:
        app.include_router(router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def create_app(settings: Settings) -> FastAPI:
    gateway = _gateway(settings)
    app = build_api()
    app.state.gateway = gateway
    app.state.metrics = Metrics(gateway)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(SingleQueryValues)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app


class RedactSecrets(logging.Filter):
    """Removes API keys from log records: uvicorn logs every websocket handshake with its query
    string, and a client may authenticate with ?token=<API key>."""

    PATTERN = re.compile(r"(token=)[^&\s\"']+|wfk_[A-Za-z0-9]+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.PATTERN.sub(lambda m: (m.group(1) or "") + "[redacted]", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def _log_config() -> dict[str, Any]:
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["filters"] = {"redact": {"()": RedactSecrets}}
    for handler in config["handlers"].values():
        handler["filters"] = ["redact"]
    return config


def run_gateway(settings: Settings) -> None:
    """Serve the app. With WAFLEET_LOG_FORMAT=json the CLI has installed config.logging's JSON
    handler and uvicorn's loggers propagate to it; otherwise text lines as uvicorn's own."""
    as_json = settings.log_format == "json"
    if not as_json:
        logging.basicConfig(
            level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactSecrets())
    app = create_app(settings)
    logger.info("gateway on %s:%s", settings.gateway_host, settings.gateway_port)
    uvicorn.run(
        app,
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_level=settings.log_level.lower(),
        log_config=None if as_json else _log_config(),
        proxy_headers=True,
        # uvicorn's access log prints query strings, and a websocket client may authenticate
        # with ?token=<API key>; MetricsMiddleware logs requests by route template instead.
        access_log=False,
        ws="websockets-sansio",  # the websockets library's current (non-legacy) protocol
    )
