"""Settings changed remotely on the dashboard, in real headless Chromium: a device page shows
its settings and changes them (pending, then applied once the device reports them, or
refused with the agent's reason); the fleet page sets the interval of several devices.

The hub's API and pages run in this process over PostgreSQL; the devices' reports are
written as the ingest writer writes them, and the hub's settings round
(``SettingsSync.check``) runs with a recorder in place of the broker: what is tested here
is the page (tests/integration/test_remote_settings.py runs the whole path).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from agent.remote import RemoteState, config_message, refusal
from hub.api import HttpServer, HubHealth, create_app
from hub.ingest.batch import DeviceEvents
from hub.read import FleetReader
from hub.store import Store, StorePool
from hub.sync import SettingsDesk, SettingsSync
from tests.servers import PostgresServer, free_port, wait_for
from tests.web.test_dashboard import _chromium, screenshot

LOCAL = {"interval_s": 1.0, "process_period_s": 10.0, "process_top_n": 10}
DEVICES = ("pi-a", "pi-b", "pi-c")


@dataclass
class Page:
    url: str
    browser: WebDriver
    store: Store
    sync: SettingsSync
    sent: list[tuple[str, bytes]]

    def report(self, device_id: str, state: RemoteState) -> None:
        """Write the device's config report as the ingest writer does."""
        events = DeviceEvents()
        events.config[device_id] = (config_message(device_id, LOCAL, state), datetime.now(UTC))
        self.store.write([], [], events)


@pytest.fixture(scope="module")
def page(postgres: PostgresServer) -> Iterator[Page]:
    db_url = postgres.create_database("settings_page")
    store = Store(db_url)
    store.migrate()
    events = DeviceEvents()
    now = datetime.now(UTC)
    for device in DEVICES:
        events.status[device] = ("online", now)
        events.meta[device] = ({"hostname": device, "interval_s": 1.0}, now)
    store.write([], [], events)
    sent: list[tuple[str, bytes]] = []
    sync = SettingsSync(store, lambda topic, payload: sent.append((topic, payload)),
                        "fleetpulse", lambda: datetime.now(UTC))
    pool = StorePool(db_url, size=4)
    server = HttpServer(create_app(FleetReader(pool), streamer=pool,
                                   health=lambda: HubHealth(True, None, 0),
                                   settings_desk=SettingsDesk(pool), stream_period_s=0.2),
                        "127.0.0.1", free_port())
    server.start()
    browser = _chromium()
    p = Page(f"http://127.0.0.1:{server.port}", browser, store, sync, sent)
    for device in DEVICES[:2]:  # pi-c never reports: an agent from before remote settings
        p.report(device, RemoteState())
    try:
        yield p
    finally:
        browser.quit()
        server.stop()
        pool.close()
        store.close()


def row_text(b: WebDriver, setting: str) -> str:
    text: str = b.find_element(By.CSS_SELECTOR, f'#settings-table tr[data-setting="{setting}"]'
                               ).text
    return text


def open_page(p: Page, hash_: str) -> WebDriver:
    b = p.browser
    b.get("about:blank")
    b.get(f"{p.url}/{hash_}")
    return b


def test_device_page_changes_a_setting_and_shows_it_pending_then_applied(page: Page) -> None:
    b = open_page(page, "#/device/pi-a")
    wait_for(lambda: "1.0" in row_text(b, "interval_s") or "1" in row_text(b, "interval_s"),
             15, "the interval in effect")
    assert "local" in row_text(b, "interval_s")
    b.find_element(By.ID, "set-interval_s").send_keys("0.5")
    b.find_element(By.ID, "set-process_top_n").send_keys("20")
    b.find_element(By.CSS_SELECTOR, "#settings-form button[type=submit]").click()
    wait_for(lambda: "pending" in row_text(b, "interval_s"), 10, "pending")
    assert "0.5" in row_text(b, "interval_s") and "pending" in row_text(b, "process_top_n")
    assert page.sync.check() == 2
    assert ("fleetpulse/pi-a/set/interval_s", b"0.5") in page.sent
    assert ("fleetpulse/pi-a/set/process_top_n", b"20") in page.sent
    # The device applies the interval and reports it; it refuses the top-N (an older agent
    # whose bound is lower).
    seen = refusal(time.time(), "fleetpulse/pi-a/set/process_top_n", b"20",
                   "process_top_n: 20 is out of bounds (from 1 to 16)")
    page.report("pi-a", RemoteState({"interval_s": 0.5}, last_refusal=seen))
    page.sync.check()
    wait_for(lambda: "applied" in row_text(b, "interval_s"), 10, "applied")
    assert "remote" in row_text(b, "interval_s")
    wait_for(lambda: "refused" in row_text(b, "process_top_n"), 10, "refused")
    assert "from 1 to 16" in row_text(b, "process_top_n")
    assert "from 1 to 16" in b.find_element(By.ID, "settings-refusal").text
    assert screenshot(b, "settings-device").stat().st_size > 10_000


def test_a_bad_value_is_refused_with_the_apis_reason(page: Page) -> None:
    b = open_page(page, "#/device/pi-b")
    wait_for(lambda: b.find_element(By.ID, "settings-form").is_displayed(), 15, "the form")
    b.find_element(By.ID, "set-interval_s").send_keys("7200")
    # The browser's own check of max= would stop the form: send it as a script would.
    b.execute_script("document.querySelector('#settings-form').noValidate = true")
    b.find_element(By.CSS_SELECTOR, "#settings-form button[type=submit]").click()
    wait_for(lambda: "out of bounds" in b.find_element(By.ID, "settings-message").text, 10,
             "the API's reason")


def test_an_agent_without_remote_settings_has_no_form(page: Page) -> None:
    b = open_page(page, "#/device/pi-c")
    wait_for(lambda: b.find_element(By.ID, "settings-note").is_displayed(), 15, "the note")
    assert "upgrade its agent" in b.find_element(By.ID, "settings-note").text
    assert not b.find_element(By.ID, "settings-form").is_displayed()


def test_fleet_page_sets_the_interval_of_the_chosen_devices(page: Page) -> None:
    b = open_page(page, "#/")
    wait_for(lambda: len(b.find_elements(By.CSS_SELECTOR, "#bulk-devices input")) == 3, 15,
             "the devices to choose from")
    for device in ("pi-b", "pi-c"):
        b.find_element(By.CSS_SELECTOR, f'#bulk-devices [data-device="{device}"] input').click()
    assert b.find_element(By.ID, "bulk-count").text == "2 chosen"
    b.find_element(By.ID, "bulk-interval").send_keys("2")
    b.find_element(By.CSS_SELECTOR, "#bulk-form button[type=submit]").click()
    wait_for(lambda: "Sent to 1 device" in b.find_element(By.ID, "bulk-message").text, 10,
             "the answer")
    assert "pi-c" in b.find_element(By.ID, "bulk-message").text  # and why it was skipped
    rows: Any = page.store.query("select device_id, value, state from device_settings "
                                 "where setting = 'interval_s' order by device_id")
    assert [(r["device_id"], r["value"], r["state"]) for r in rows if r["device_id"] != "pi-a"] \
        == [("pi-b", 2.0, "pending")]
    assert screenshot(b, "settings-fleet").stat().st_size > 10_000
