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
    webhooks,
)

ROUTERS = (
    admin.router,
    instances.router,
    messages.router,
    records.router,
    bookings.router,
    webhooks.router,
    events.router,
    ops.v1_router,
)
UNVERSIONED = (ops.router,)
