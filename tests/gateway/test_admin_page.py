"""The admin page as served: a shell without tenant data, its assets from the gateway itself
(nothing from elsewhere), a strict Content-Security-Policy, no inline code, and a script that
never turns data into markup. The page's behaviour is tested in a real browser
(test_browser.py)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.gateway.conftest import TenantHandle


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.script_text.append(data)


def _policy(header: str) -> dict[str, list[str]]:
    directives = [d.split() for d in header.split(";") if d.strip()]
    return {d[0]: d[1:] for d in directives}


def test_page_headers_policy_and_markup(client: TestClient) -> None:
    r = client.get("/admin")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    policy = _policy(r.headers["content-security-policy"])
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["img-src"] == ["'self'", "blob:"]
    assert policy["connect-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    assert not any("unsafe" in v for values in policy.values() for v in values)
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store"

    parsed = _Tags()
    parsed.feed(r.text)
    assert parsed.script_text == []  # no inline script
    for tag, attrs in parsed.tags:
        assert "style" not in attrs, tag  # no inline style
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)  # no inline handlers
    inputs = [a for t, a in parsed.tags if t == "input"]
    labelled = {a["for"] for t, a in parsed.tags if t == "label"}
    assert inputs
    assert all(a["id"] in labelled for a in inputs)  # every field has a label
    assert all(a.get("data-testid") for a in inputs)

    assets = [a.get("src") or a.get("href") for t, a in parsed.tags if t in {"script", "link"}]
    assert len(assets) == 2
    for url in assets:
        assert url is not None
        assert url.startswith("/admin/")  # served by the gateway, nothing from elsewhere
        asset = client.get(url)
        assert asset.status_code == 200
        assert asset.headers["x-content-type-options"] == "nosniff"
        assert asset.headers["content-type"].split(";")[0] in {"text/javascript", "text/css"}
        assert not re.search(r"https?://", asset.text)


def test_script_never_assigns_markup(client: TestClient) -> None:
    script = client.get("/admin/admin.js").text
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert "new Function" not in script
    assert "textContent" in script
    assert "sessionStorage" in script  # the key lives in the tab, not in a cookie or localStorage
    assert "localStorage" not in script
    assert "document.cookie" not in script


def test_page_carries_no_tenant_data(
    client: TestClient, tenant: TenantHandle, other: TenantHandle
) -> None:
    """The page is the same for anyone: data only comes through the tenant API in the browser."""
    anonymous = client.get("/admin").text
    assert client.get("/admin", headers=tenant.headers).text == anonymous
    assert client.get("/admin", headers=other.headers).text == anonymous
    for leaked in (tenant.id, tenant.instance_id, tenant.name, other.id, other.name):
        assert leaked not in anonymous


def test_page_is_outside_the_api_schema(gateway_app: FastAPI) -> None:
    paths = gateway_app.openapi()["paths"]
    assert not [p for p in paths if p.startswith("/admin")]
