"""The admin page end to end in headless Chromium (Debian's `chromium` + `chromium-driver`, driven
by Selenium; no browser download): the real stack as processes — the simulator, a session worker
with the production WhatsApp factory, a routing worker, and `wafleet gateway` on a free port.

Through the page only, an operator signs in with a tenant key, creates an instance (whose name is
markup, shown as text), links the simulated owner phone by QR (the QR string the page received
over the websocket goes to the simulator's "scan"), sees "connected", and sends a message that
arrives at the simulated client phone; a second instance is linked by pairing code. Screenshots
are saved under tests/artifacts/. `make test` installs the browser when it is missing (root);
with WAFLEET_REQUIRE_SERVICES=1 a missing browser fails the test (tests/services.py).
"""

from __future__ import annotations

import os
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By

from config.settings import Settings
from protocol.simulator import Simulator
from tests.fleet.conftest import (
    ARTIFACTS,
    log_file,
    simulator,  # noqa: F401  (fixture)
    start_session_worker,
    stop_process,
)
from tests.gateway.conftest import ADMIN
from tests.gateway.test_process import Process
from tests.services import unavailable

pytestmark = pytest.mark.timeout(900)

CHROMIUM = Path(os.environ.get("WAFLEET_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("WAFLEET_CHROMEDRIVER", "/usr/bin/chromedriver"))
WAIT = 120.0  # generous: two shared cores run Chromium, the workers and the simulator
OWNER = "5511990000101"
CLIENT = "5511990000102"
CODE_OWNER = "5511990000103"
HOSTILE_NAME = '<img src=x onerror="window.__pwned=1">Front desk & "co"'

T = TypeVar("T")


def until(what: str, check: Callable[[], T | None], timeout: float = WAIT) -> T:
    """Poll `check` (state written by other processes or the browser) until it is truthy."""
    tick = threading.Event()
    for _ in range(int(timeout * 5)):
        try:
            value = check()
        except StaleElementReferenceException:
            value = None  # the page re-rendered that part between finding and reading it
        if value:
            return value
        tick.wait(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        unavailable(
            f"{CHROMIUM} or {CHROMEDRIVER} missing (apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in containers
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1600",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(str(CHROMEDRIVER), log_output=str(log_file("chromedriver.log")))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def fleet(
    gateway_settings: Settings,
    simulator: Simulator,  # noqa: F811
    routing_worker: subprocess.Popen[bytes],
    pg: object,
) -> Iterator[tuple[Process, httpx.Client]]:
    """The gateway process and a session worker on the simulator; yields (gateway, simulator
    control client)."""
    settings = gateway_settings.model_copy(
        update={
            "wa_server_url": simulator.ws_url,
            "wa_root_key": simulator.root_public_key.hex(),
            "lease_ttl": 10.0,
            "lease_renew": 2.0,
            "rebalance_interval": 0.2,
            "heartbeat_interval": 0.5,
            "wa_prekey_count": 30,
        }
    )
    control = httpx.Client(base_url=simulator.http_url, timeout=WAIT)
    for phone in (OWNER, CLIENT, CODE_OWNER):
        assert control.post("/control/accounts", json={"phone": phone}).status_code == 201
    worker, log = start_session_worker(settings, "browser", "session-browser.log")
    gateway = Process(settings)
    try:
        assert gateway.started.wait(WAIT), "".join(gateway.lines)
        yield gateway, control
    finally:
        stop_process(gateway.proc)
        stop_process(worker, log)
        gateway.reader.join(timeout=30)
        assert gateway.proc.stdout is not None
        gateway.proc.stdout.close()
        log_file("gateway-browser.log").write_text("".join(gateway.lines))
        control.close()


def _tenant_key(http: httpx.Client) -> str:
    r = http.post("/v1/tenants", json={"name": f"browser-{uuid.uuid4().hex[:6]}"}, headers=ADMIN)
    assert r.status_code == 201, r.text
    r = http.post(
        f"/v1/tenants/{r.json()['id']}/api-keys",
        json={"name": "admin page", "scopes": ["read", "send", "admin"]},
        headers=ADMIN,
    )
    assert r.status_code == 201, r.text
    key: str = r.json()["key"]
    return key


def _screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


def test_admin_page_links_by_qr_and_code_and_sends(
    browser: Any, fleet: tuple[Process, httpx.Client]
) -> None:
    gateway, control = fleet
    driver = browser
    http = httpx.Client(base_url=gateway.url, timeout=WAIT)
    key = _tenant_key(http)
    auth = {"Authorization": f"Bearer {key}"}

    def testid(name: str) -> Any:
        return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{name}"]')

    def attr(name: str, attribute: str) -> str | None:
        value: str | None = testid(name).get_attribute(attribute)
        return value

    def fill(name: str, value: str) -> None:
        field = testid(name)
        field.clear()
        field.send_keys(value)

    def state() -> str:
        return str(attr("instance-state", "data-state") or "")

    try:
        driver.get(f"{gateway.url}/admin")
        assert driver.title == "wafleet admin"
        # A wrong key is refused on the page, and nothing of the app shows.
        fill("api-key", "wfk_not-a-key")
        testid("sign-in").click()
        until("the refusal", lambda: "Could not sign in" in testid("signin-error").text)
        assert not driver.find_element(By.ID, "app").is_displayed()

        fill("api-key", key)
        testid("sign-in").click()
        until("live events", lambda: attr("live-status", "data-live") == "true")
        assert driver.execute_script("return sessionStorage.getItem('wafleet.apiKey')") == key

        # Create an instance named with markup: it is shown as text, nothing runs.
        fill("create-name", HOSTILE_NAME)
        testid("create-instance").click()
        until(
            "the new row",
            lambda: driver.find_elements(By.CSS_SELECTOR, '[data-testid="instance-row"]'),
        )
        (row,) = driver.find_elements(By.CSS_SELECTOR, '[data-testid="instance-row"]')
        instance_id = row.get_attribute("data-instance-id")
        assert row.find_element(By.CSS_SELECTOR, '[data-testid="row-name"]').text == HOSTILE_NAME
        assert driver.find_elements(By.CSS_SELECTOR, "#instances img") == []
        assert testid("panel-name").text == HOSTILE_NAME
        assert driver.execute_script("return window.__pwned === undefined")
        assert state() == "created"

        # Link by QR: the QR arrives over the websocket; its image is the gateway's SVG.
        testid("connect-qr").click()
        qr = until("the QR on the page", lambda: attr("qr-image", "data-qr"))
        until(
            "the QR image to load",
            lambda: driver.execute_script(
                "const i = document.getElementById('qr-image');"
                "return i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0;"
            ),
        )
        until("qr_pending on the page", lambda: state() == "qr_pending")
        shown = http.get(f"/v1/instances/{instance_id}/qr", headers=auth).json()
        assert shown["qr"] == qr  # the page shows the QR the instance is offering
        _screenshot(driver, "admin-page-qr.png")
        linked = control.post(f"/control/accounts/{OWNER}/link", json={"qr": qr})
        assert linked.status_code == 200, linked.text
        until("connected on the page", lambda: state() == "connected")
        assert testid("instance-state").text == "connected"
        assert not driver.find_element(By.ID, "qr-box").is_displayed()
        row_state = driver.find_element(
            By.CSS_SELECTOR, f'[data-instance-id="{instance_id}"] [data-testid="row-state"]'
        )
        until("the row's state", lambda: row_state.text == "connected")

        # Send a test message; it reaches the simulated client's phone.
        text = f"hello from the admin page {uuid.uuid4().hex[:6]}"
        fill("send-to", f"+{CLIENT}")
        fill("send-text", text)
        testid("send-message").click()
        until("the acceptance", lambda: "Accepted as #" in testid("send-result").text)
        got = until(
            "the message at the client's phone",
            lambda: [
                m
                for m in control.get(f"/control/accounts/{CLIENT}/messages").json()
                if m.get("text") == text
            ],
        )
        assert len(got) == 1
        until(
            "the send's status on the page",
            lambda: any(
                cell.text in {"sent", "delivered", "read"}
                for cell in driver.find_elements(By.CSS_SELECTOR, '[data-testid="outbox-status"]')
            ),
        )
        assert driver.find_elements(
            By.CSS_SELECTOR, '[data-testid="event"][data-type="whatsapp:connected"]'
        )
        _screenshot(driver, "admin-page-connected.png")

        # A second instance, linked by pairing code typed on the phone.
        fill("create-name", "Reception")
        testid("create-instance").click()
        until("the second instance's panel", lambda: testid("panel-name").text == "Reception")
        fill("code-phone", f"+{CODE_OWNER}")
        testid("connect-code").click()
        code = until("the pairing code on the page", lambda: testid("pairing-code").text)
        until("code_pending on the page", lambda: state() == "code_pending")
        typed = control.post(f"/control/accounts/{CODE_OWNER}/link", json={"code": code})
        assert typed.status_code == 200, typed.text
        until("the second instance connected", lambda: state() == "connected")
        _screenshot(driver, "admin-page-code.png")

        # Signing out forgets the key.
        testid("sign-out").click()
        assert driver.execute_script("return sessionStorage.getItem('wafleet.apiKey')") is None
        assert driver.find_element(By.ID, "signin").is_displayed()
        errors = [
            entry
            for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and "Content Security Policy" in entry["message"]
        ]
        assert errors == []  # nothing on the page needed more than its policy allows
    except BaseException:
        _screenshot(driver, "admin-page-failure.png")
        (ARTIFACTS / "admin-page-failure.html").write_text(driver.page_source)
        raise
    finally:
        http.close()
