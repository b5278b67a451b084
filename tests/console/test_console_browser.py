"""The operators' console end to end in a real headless Chromium (Debian's chromium + chromium-driver,
driven by Selenium): sign in, find the failed message, read why, replay it after the mapping fix, see
its delivery arrive at a receiver on loopback. Every page is saved as a screenshot under
test-artifacts/console/ (git-ignored).

In CI (``CI`` set) a missing browser fails the test; elsewhere it is skipped with the reason.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway import create_app
from gateway.config import REPO_ROOT
from gateway.routing import make_workers
from gateway.routing.receiver import Receiver
from gateway.security.tables import audit_events
from tests.conftest import sample, served
from tests.routing.conftest import fast_routes, wait_until

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SHOTS = REPO_ROOT / "test-artifacts" / "console"
UNKNOWN_SEX = sample("pex_p07_adverse_event.hl7").replace(b"|19900101|M|", b"|19900101|X|")


def _browser(language: str):
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if missing:
        message = f"{', '.join(missing)} missing: apt-get install chromium chromium-driver (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-extensions", "--no-first-run",
                 "--window-size=1400,1000", f"--lang={language}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"intl.accept_languages": language})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.implicitly_wait(10)          # an element a page brings may come a little after the page
    return driver


def _navigate(driver, element) -> None:
    """Click a link or a form's button and wait until the next page has replaced this one: looked
    for at once, an element may still be the old page's (clean-clone CI runs read the unfiltered
    message list as the filtered one, and the replay's flash before its page came)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait
    page = driver.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(driver, 30).until(expected_conditions.staleness_of(page))


def _shot(driver, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(SHOTS / f"{name}.png"))


def _sign_in(driver, base: str, client_id: str, secret: str) -> None:
    from selenium.webdriver.common.by import By
    driver.get(f"{base}/console/")
    assert driver.current_url.endswith("/console/login")
    driver.find_element(By.ID, "client_id").send_keys(client_id)
    driver.find_element(By.ID, "client_secret").send_keys(secret)
    driver.find_element(By.ID, "sign-in").click()
    wait_until(lambda: driver.current_url.endswith("/console/"), timeout=30)


@pytest.fixture
def console_gateway(tmp_path):
    """A gateway whose tables lacked a sex code when a report came in (AE), restarted after the fix,
    serving on loopback with delivery workers and a regulator receiving."""
    mappings = tmp_path / "mappings"
    shutil.copytree(REPO_ROOT / "mappings", mappings)
    receiver = Receiver("province").start()
    settings = {"DATA_DIR": str(tmp_path / "var"), "MAPPINGS_DIR": str(mappings), "TESTING": True,
                "ROUTES_FILE": str(fast_routes(tmp_path, receiver.url())), "DELIVERY_POLL_MS": 20}
    assert create_app(settings).extensions["gateway"].pipeline.ingest(UNKNOWN_SEX).code == "AE"
    tables = mappings / "tables.yaml"
    tables.write_text(tables.read_text(encoding="utf-8").replace(
        "  N: unknown      # not applicable\n", "  N: unknown      # not applicable\n  X: other\n"), encoding="utf-8")
    app = create_app(settings)
    gateway = app.extensions["gateway"]
    workers = make_workers(gateway.config, gateway.store.engine, gateway.routes, 2).start()
    _client, secret = app.extensions["security"].clients.add("ops-admin", "LECHENG_GW", "admin")
    try:
        with served(app) as base:
            yield app, base, secret, receiver
    finally:
        workers.stop()
        receiver.stop()


def test_find_a_failed_message_read_why_replay_it_and_see_it_delivered(console_gateway):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    app, base, secret, receiver = console_gateway
    driver = _browser("en-US")
    try:
        driver.get(f"{base}/console/")
        _shot(driver, "01-sign-in")
        _sign_in(driver, base, "ops-admin", secret)
        assert "1 messages, 1 failed" in driver.find_element(By.ID, "error-rate").text
        _shot(driver, "02-overview")

        _navigate(driver, driver.find_element(By.LINK_TEXT, "Messages"))
        Select(driver.find_element(By.ID, "status")).select_by_visible_text("error")
        _navigate(driver, driver.find_element(By.ID, "search"))
        rows = driver.find_elements(By.CSS_SELECTOR, "#messages tr")[1:]
        assert len(rows) == 1 and "PEX^P07" in rows[0].text and "error" in rows[0].text
        _shot(driver, "03-messages-failed")

        _navigate(driver, rows[0].find_element(By.CLASS_NAME, "message-link"))
        assert "'X' is not a known value of HL7 table 0001" in driver.find_element(By.ID, "errors").text
        assert "MSA|AE|BSH20260402000031" in driver.find_element(By.ID, "ack").text
        assert "Administrative Sex" in driver.page_source
        _shot(driver, "04-message-why")

        _navigate(driver, driver.find_element(By.ID, "replay"))
        assert "replay: error -> processed (AA)" in driver.find_element(By.ID, "flash").text
        assert driver.find_element(By.ID, "status").text == "processed"
        _shot(driver, "05-message-replayed")

        arrived = wait_until(lambda: [r for r in receiver.requests() if "/AdverseEvent/" in r["path"]], timeout=30)
        assert arrived[0]["method"] == "PUT"

        def delivered_on_page():
            driver.get(f"{base}/console/deliveries?status=delivered")
            return [row.text for row in driver.find_elements(By.CSS_SELECTOR, "#deliveries tr")[1:]
                    if "AdverseEvent/" in row.text]
        assert wait_until(delivered_on_page, timeout=30)
        _shot(driver, "06-deliveries")
        driver.get(f"{base}/console/")
        assert "delivered" in driver.find_element(By.ID, "destinations").text
        _shot(driver, "07-overview-after")

        _navigate(driver, driver.find_element(By.LINK_TEXT, "Clients"))
        form = driver.find_element(By.ID, "add-client")
        form.find_element(By.NAME, "client_id").send_keys("haikou-his")
        form.find_element(By.NAME, "organization").send_keys("HAIKOU_PEOPLES_HOSPITAL")
        Select(form.find_element(By.NAME, "role")).select_by_visible_text("hospital")
        _navigate(driver, form.find_element(By.ID, "add"))
        assert "Secret for haikou-his, shown once" in driver.find_element(By.ID, "new-secret").text
        assert app.extensions["security"].clients.get("haikou-his").organization == "HAIKOU_PEOPLES_HOSPITAL"
        _shot(driver, "08-clients")
    finally:
        driver.quit()

    with app.extensions["gateway"].store.engine.connect() as conn:
        events = conn.execute(select(audit_events.c.subtype, audit_events.c.status, audit_events.c.content)
                              .where(audit_events.c.client_id == "ops-admin")).all()
    described = [e.content.decode() for e in events]
    assert any("replay of message" in text and "replay: error -> processed (AA)" in text for text in described)
    assert any("POST /console/clients" in text for text in described)
    assert all(e.subtype == "admin" for e in events)


def test_the_console_speaks_chinese_to_a_chinese_browser(console_gateway):
    from selenium.webdriver.common.by import By
    _app, base, secret, _receiver = console_gateway
    driver = _browser("zh-CN")
    try:
        _sign_in(driver, base, "ops-admin", secret)
        assert driver.find_element(By.TAG_NAME, "h1").text == "概览"
        assert "最近一小时：1 条消息，1 条失败" in driver.find_element(By.ID, "error-rate").text
        _shot(driver, "09-overview-zh-CN")
        _navigate(driver, driver.find_element(By.LINK_TEXT, "消息"))
        _shot(driver, "10-messages-zh-CN")
    finally:
        driver.quit()


def _csrf(client) -> str:
    return client.get("/console/login").get_data(as_text=True).split('name="csrf_token" value="', 1)[1].split('"', 1)[0]


def test_sign_in_refuses_wrong_secrets_other_roles_and_forms_without_their_csrf_token(tmp_path):
    app = create_app({"DATA_DIR": str(tmp_path), "TESTING": True})
    secret = app.extensions["security"].clients.add("ops-admin", "LECHENG_GW", "admin")[1]
    client = app.test_client()
    assert client.get("/console/messages").headers["Location"].endswith("/console/login")
    token = _csrf(client)
    assert client.post("/console/login", data={"client_id": "ops-admin", "client_secret": "wrong",
                                               "csrf_token": token}).status_code == 401
    assert client.post("/console/login", data={"client_id": "ops-admin", "client_secret": secret}).status_code == 400
    signed_in = client.post("/console/login", data={"client_id": "ops-admin", "client_secret": secret,
                                                    "csrf_token": token})
    assert signed_in.status_code == 302
    cookie = signed_in.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/console/messages").status_code == 200
    # an action without the form's token is refused, and changes nothing
    assert client.post("/console/clients", data={"action": "revoke", "client_id": "ops-admin"}).status_code == 400
    assert app.extensions["security"].clients.get("ops-admin").active
    # a revoked admin's session ends at its next page
    app.extensions["security"].clients.revoke("ops-admin")
    assert client.get("/console/messages").headers["Location"].endswith("/console/login")

    hospital_secret = app.extensions["security"].clients.add("his-9", "H9", "hospital")[1]
    other = app.test_client()
    assert other.post("/console/login", data={"client_id": "his-9", "client_secret": hospital_secret,
                                              "csrf_token": _csrf(other)}).status_code == 401
