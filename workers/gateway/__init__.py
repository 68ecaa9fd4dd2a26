"""The HTTP gateway (DESIGN §4): a versioned REST API (`/v1`), realtime websocket events, health,
readiness, Prometheus metrics and the admin page (`/admin`). FastAPI on uvicorn; `wafleet
gateway` runs it.

Owns: HTTP authentication (admin key, tenant API keys with scopes and instance restriction),
tenant isolation at every endpoint (another tenant's ids answer 404), the one error body, per-key
rate limiting, the OpenAPI schema. Sending goes through tasks.accept in-process; instance
commands (connect, disconnect, logout, delete) through tasks.commands; stored records are read
through storage; events come from storage.bus; the QR / pairing code from storage.linking.

It is a process (the top layer): it may import workers.routing, tasks, storage, protocol and
config; nothing imports it except the CLI and tests.

Modules: app (factory, uvicorn), state (what a process holds), auth, errors, schemas, pages
(cursor pagination), metrics, routes/* (one router per resource; routes.ui serves the admin
page), admin/ (the page's template, script and style).
"""

from __future__ import annotations

from workers.gateway.app import build_api, create_app, run_gateway

__all__ = ["build_api", "create_app", "run_gateway"]
