"""The gateway's routers, one module per resource; `ROUTERS` is what the app mounts under /v1."""

from __future__ import annotations

from workers.gateway.routes import (
    admin,
    bookings,
    events,
    instances,
    messages,
    ops,
    records,
    sessions,
    ui,
    webhooks,
)

ROUTERS = (
    admin.router,
    instances.router,
    sessions.router,
    messages.router,
    records.router,
    bookings.router,
    webhooks.router,
    events.router,
    ops.v1_router,
)
UNVERSIONED = (ops.router, ui.router)  # ui: the admin page, outside the API's schema
