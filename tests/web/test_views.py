"""The device page's views in real headless Chromium: a young device's long ranges, empty
charts, ranges in the URL, the custom range's export; and the API's interactive docs.

The hub's API and pages run in this process over a seeded PostgreSQL (no broker, no agent):
what is tested here is the page.
"""

from __future__ import annotations

import csv
import io
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from hub.api import HttpServer, HubHealth, create_app
from hub.ingest.batch import DeviceEvents
from hub.read import FleetReader
from hub.store import Store, StorePool
from tests.readings import series, write_readings
from tests.servers import PostgresServer, free_port, wait_for
from tests.web.test_dashboard import _chromium, screenshot

YOUNG = "pi-young"
YOUNG_S = 300  # it has sent a reading every second for the last five minutes
SPAN = "const x = state.charts.cpu.scales.x; return x.max - x.min"


@dataclass
class Page:
    url: str
    browser: WebDriver
    seeded_at: datetime


@pytest.fixture(scope="module")
def page(postgres: PostgresServer) -> Iterator[Page]:
    db_url = postgres.create_database("views")
    now = datetime.now(UTC)
    store = Store(db_url)
    store.migrate()
    # No temperature sensor: its chart has nothing to show.
    write_readings(store, series(YOUNG, now - timedelta(seconds=YOUNG_S), YOUNG_S,
                                 cpu_percent=lambda i: 10.0 + i % 50, memory_percent=35.0,
                                 cpu_per_core_percent=lambda i: [10.0, 20.0]), received_at=now)
    events = DeviceEvents()
    events.meta[YOUNG] = ({"hostname": "young", "interval_s": 1.0}, now)
    events.status[YOUNG] = ("online", now - timedelta(seconds=YOUNG_S))
    store.write([], [], events)
    store.close()
    pool = StorePool(db_url, size=4)
    server = HttpServer(create_app(FleetReader(pool), streamer=pool,
                                   health=lambda: HubHealth(True, None, 0)),
                        "127.0.0.1", free_port())
    server.start()
    browser = _chromium()
    try:
        yield Page(f"http://127.0.0.1:{server.port}", browser, now)
    finally:
        browser.quit()
        server.stop()
        pool.close()


def span(b: WebDriver) -> float:
    value: float = b.execute_script(SPAN)
    return value


def pressed(b: WebDriver) -> str:
    return b.find_element(By.CSS_SELECTOR, 'button.range[aria-pressed="true"]') \
        .get_attribute("data-range") or ""


def open_device(p: Page, suffix: str = "") -> WebDriver:
    b = p.browser
    b.get("about:blank")  # a new document, not a hash change of the same one
    b.get(f"{p.url}/#/device/{YOUNG}{suffix}")
    wait_for(lambda: b.find_element(By.ID, "range-label").get_attribute("data-points"), 15,
             "the first series")
    return b


@pytest.mark.parametrize(("button", "seconds"), [("86400", 86400), ("604800", 604800)])
def test_long_ranges_of_a_young_device_span_the_whole_range(page: Page, button: str,
                                                           seconds: int) -> None:
    b = open_device(page)
    b.find_element(By.CSS_SELECTOR, f'button[data-range="{button}"]').click()
    wait_for(lambda: span(b) >= seconds - 5, 15, f"an x axis of {seconds} s")
    assert span(b) <= seconds + 5
    # The data sit at the right end of the axis, as they do in time (in the newest minute
    # or hour bucket).
    newest = b.execute_script("const t = state.charts.cpu.data[0]; return t[t.length - 2]")
    step = int(b.find_element(By.ID, "range-label").text.split(", ")[1].split(" s ")[0])
    assert b.execute_script("return state.charts.cpu.scales.x.max") - newest <= step + 5
    assert screenshot(b, f"young-{button}").stat().st_size > 10_000


def test_an_empty_chart_is_one_short_line(page: Page) -> None:
    b = open_device(page, "?range=3600")
    temp = b.find_element(By.ID, "chart-temp").find_element(By.XPATH, "..")
    cpu = b.find_element(By.ID, "chart-cpu").find_element(By.XPATH, "..")
    wait_for(lambda: "no data in this range" in temp.text, 15, "the no-data line")
    assert temp.size["height"] < 50, temp.size
    assert cpu.size["height"] > 150, cpu.size
    assert "no data" not in cpu.text
    assert screenshot(b, "young-empty-temp").stat().st_size > 10_000


def test_the_range_is_in_the_url_and_a_reload_shows_the_same_view(page: Page) -> None:
    b = open_device(page)
    assert pressed(b) == "live"
    b.find_element(By.CSS_SELECTOR, 'button[data-range="86400"]').click()
    wait_for(lambda: b.current_url.endswith(f"#/device/{YOUNG}?range=86400"), 10, "the URL")
    b.refresh()
    wait_for(lambda: pressed(b) == "86400", 10, "the 24 h button after the reload")
    wait_for(lambda: span(b) >= 86400 - 5, 15, "the 24 h chart after the reload")


def test_a_custom_range_is_linkable_and_its_export_is_that_window(page: Page) -> None:
    b = open_device(page)
    b.find_element(By.CSS_SELECTOR, 'button[data-range="custom"]').click()
    # Two whole minutes inside the device's five (the inputs hold local minutes).
    start = (page.seeded_at - timedelta(seconds=240)).astimezone().replace(second=0,
                                                                            microsecond=0)
    end = start + timedelta(minutes=2)
    b.execute_script(
        "document.getElementById('custom-start').value = arguments[0];"
        "document.getElementById('custom-end').value = arguments[1];"
        "document.getElementById('custom-apply').click()",
        start.strftime("%Y-%m-%dT%H:%M"), end.strftime("%Y-%m-%dT%H:%M"))
    wait_for(lambda: 115 <= span(b) <= 125, 15, "the custom two minutes")
    linked = b.current_url
    assert "range=custom" in linked

    href = b.find_element(By.ID, "export-csv").get_attribute("href") or ""
    with urllib.request.urlopen(href, timeout=30) as response:
        rows = list(csv.DictReader(io.StringIO(response.read().decode())))
    assert len(rows) == 120
    stamps = [datetime.fromisoformat(r["ts"]) for r in rows]
    assert min(stamps) >= start and max(stamps) < end

    # The link alone brings the same view back.
    b.get("about:blank")
    b.get(linked)
    wait_for(lambda: pressed(b) == "custom", 10, "the custom range from the link")
    wait_for(lambda: 115 <= span(b) <= 125, 15, "the same two minutes from the link")
    assert b.find_element(By.ID, "custom-start").get_attribute("value") == \
        start.strftime("%Y-%m-%dT%H:%M")
    assert b.find_element(By.ID, "export-csv").get_attribute("href") == href


def test_the_interactive_api_docs_render_offline(page: Page) -> None:
    b = page.browser
    b.get("about:blank")
    b.get(page.url + "/docs")
    wait_for(lambda: len(b.find_elements(By.CSS_SELECTOR, ".opblock")) >= 10, 20,
             "the endpoints in Swagger UI")
    text = b.find_element(By.TAG_NAME, "body").text
    assert "/api/devices/{device_id}/series" in text
    loaded = b.execute_script("return performance.getEntriesByType('resource')"
                              ".map(e => e.name)")
    assert loaded and all(url.startswith(page.url) for url in loaded), loaded
    assert screenshot(b, "api-docs").stat().st_size > 10_000
