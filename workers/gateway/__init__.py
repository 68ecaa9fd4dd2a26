"""The HTTP gateway (DESIGN §4): a versioned REST API (`/v1`), realtime websocket events, health,
readiness and Prometheus metrics. FastAPI on uvicorn; `wafleet gateway` runs it.

Owns: HTTP authentication (admin key, tenant API keys with scopes and instance restriction),
tenant isolation at every endpoint (another tenant's ids answer 404), the one error body, per-key
rate limiting, the OpenAPI schema. Sending goes through tasks.accept in-process; stored records
are read through storage; events come from storage.bus.

It is a process (the top layer): it may import workers.routing, tasks, storage, protocol and
config; nothing imports it except the CLI and tests.

Modules: app (factory, uvicorn), state (what a process holds), auth, errors, schemas, pages
(cursor pagination), metrics, routes/* (one router per resource).
"""

from __future__ import annotations

from workers.gateway.app import build_api, create_app, run_gateway

__all__ = ["build_api", "create_app", "run_gateway"]
