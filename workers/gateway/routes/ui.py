"""The admin page (issue #7 §5): `GET /admin` and its two static assets, served by the gateway
itself (no build step, no CDN, nothing fetched from elsewhere).

The page is a shell: it carries no tenant data. The operator signs in in the browser with a
tenant API key (kept in sessionStorage), and the script talks only to the tenant API (`/v1/...`
with `Authorization: Bearer`) and the realtime websocket (`/v1/events`, authenticated by its first
message so the key never appears in a URL). Whatever a tenant key cannot see through the API, the
page cannot show: isolation is the API's.

Every value from the API reaches the DOM as text (`textContent`, attributes), never as markup, and
the page is served with a strict Content-Security-Policy: scripts and styles only from this
origin, no inline code, images only from this origin or blob: URLs (the QR SVG is fetched with the
key header and shown from a blob), connections only to this origin (which covers ws:/wss: on it).
These routes are not part of the API's OpenAPI document.
"""

from __future__ import annotations

import hashlib
import html
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

router = APIRouter(include_in_schema=False)

CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
ASSET_TYPES = {"admin.js": "text/javascript; charset=utf-8", "admin.css": "text/css; charset=utf-8"}


def _read(name: str) -> bytes:
    return resources.files("workers.gateway.admin").joinpath(name).read_bytes()


ASSETS = {name: _read(name) for name in ASSET_TYPES}
# The page names its assets with a content hash, so a browser never runs a stale script.
VERSIONS = {name: hashlib.sha256(body).hexdigest()[:12] for name, body in ASSETS.items()}


def render_page() -> str:
    """The page's HTML: the template with its asset URLs (escaped like any inserted value)."""
    template = _read("page.html").decode()
    return template.format(
        js=html.escape(f"/admin/admin.js?v={VERSIONS['admin.js']}", quote=True),
        css=html.escape(f"/admin/admin.css?v={VERSIONS['admin.css']}", quote=True),
    )


PAGE = render_page()


@router.get("/admin", response_class=HTMLResponse)
def admin_page() -> HTMLResponse:
    return HTMLResponse(PAGE, headers=SECURITY_HEADERS)


@router.get("/admin/admin.js")
def admin_js() -> Response:
    return _asset("admin.js")


@router.get("/admin/admin.css")
def admin_css() -> Response:
    return _asset("admin.css")


def _asset(name: str) -> Response:
    headers = dict(SECURITY_HEADERS)
    headers["Cache-Control"] = "public, max-age=3600"
    return Response(ASSETS[name], media_type=ASSET_TYPES[name], headers=headers)
