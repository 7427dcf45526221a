"""The dashboard in real headless Chromium, fed by a real hub and a real agent.

One hub and one agent (processes, as a user runs them) serve every test of this module;
the database also holds a week of history for the range selector and a second device with
an open alert. Screenshots go to tests/web/screenshots/ (ignored by git) for a person to look at.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from hub.api import HttpServer, HubHealth, create_app
from hub.ingest.batch import DeviceEvents
from hub.processes import INSERT_SQL, process_row
from hub.read import FleetReader
from hub.store import Store, StorePool
from shared.config import Secret
from shared.topics import alert_topic
from tests import processes
from tests.readings import partition, series, write_readings
from tests.servers import MosquittoServer, PostgresServer, free_port, wait_for

SCREENSHOTS = Path(__file__).parent / "screenshots"
AGENT = "web-1"
# A process sample two days back, for the history view (the agent sends the live ones).
PAST_SAMPLE_AGO = timedelta(days=2, minutes=7, seconds=30)


@dataclass
class Site:
    url: str
    db_url: str
    browser: WebDriver
    broker: MosquittoServer
    prefix: str


def _chromium() -> WebDriver:
    binary = shutil.which("chromium") or "/usr/bin/chromium"
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not Path(binary).exists() or not Path(driver).exists():
        raise RuntimeError("chromium and chromium-driver are not installed "
                           "(apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    profile = tempfile.mkdtemp(prefix="fleetpulse-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(driver))
    browser.set_page_load_timeout(30)
    return browser


def _seed(db_url: str, now: datetime) -> None:
    """A week of minute readings of the agent's device, and a hot, throttled second Pi."""
    store = Store(db_url)
    store.migrate()
    week = now - timedelta(days=7)
    history = series(AGENT, week, 7 * 24 * 60 - 30, step_s=60.0,
                     cpu_percent=lambda i: 20.0 + 15.0 * ((i // 60) % 4),
                     memory_percent=lambda i: 30.0 + (i % 1440) / 100,
                     sensors_cpu_celsius=lambda i: 45.0 + (i % 1440) / 144,
                     disk_read_bytes_per_s=lambda i: float(i % 97) * 4096,
                     network_bytes_recv_per_s=lambda i: float(i % 61) * 10000)
    kitchen = series("pi-kitchen", now - timedelta(minutes=10), 600,
                     cpu_percent=lambda i: 70.0 + i % 20, memory_percent=55.0,
                     sensors_cpu_celsius=lambda i: 81.0 + (i % 5),
                     cpu_per_core_percent=lambda i: [70.0, 80.0, 90.0, 75.0],
                     disk_partitions=[partition("/", 93.0)], throttling_raw=0x50005,
                     throttling_under_voltage_now=True, throttling_throttled_now=True)
    for i in range(0, len(history), 5000):
        write_readings(store, history[i:i + 5000], received_at=now)
    write_readings(store, kitchen, received_at=now - timedelta(minutes=1))
    events = DeviceEvents()
    events.meta["pi-kitchen"] = ({"hostname": "kitchen", "pi_model": "Raspberry Pi 4 Model B",
                                  "interval_s": 1.0}, now)
    events.status["pi-kitchen"] = ("offline", now - timedelta(seconds=30))
    store.write([], [], events)
    backup = {"pid": 4242, "name": "nightly-backup", "user": "root", "cpu_percent": 88.5,
              "rss_bytes": 3 * 2**30, "memory_percent": 40.0, "threads": 4, "status": "running",
              "io_read_bytes": 2**40, "io_write_bytes": 0}
    past = now - PAST_SAMPLE_AGO
    store.execute([(INSERT_SQL, process_row(
        AGENT, past, "s-past", 1, past,
        {"period_s": 10.0, "count": 1, "running": 1, "sleeping": 0, "zombie": 0, "other": 0,
         "top_cpu": [backup], "top_memory": [backup]}))])
    store.close()


@pytest.fixture(scope="module")
def site(postgres: PostgresServer, broker: MosquittoServer) -> Iterator[Site]:
    db_url = postgres.create_database("web")
    _seed(db_url, datetime.now(UTC))
    workdir = Path(tempfile.mkdtemp(prefix="fleetpulse-web-"))
    prefix = f"fpweb-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = processes.base_env(broker_url=broker.url, db=db_url, topic_prefix=prefix,
                             client_id=f"{prefix}-hub", http_port=str(port),
                             data_dir=str(workdir / "hub"), batch_max_age_s="0.2",
                             alert_check_s="1", compact_duty_percent="100",
                             hot_window_h="48")
    hub = processes.Process(["-m", "hub.main", "run"], env, workdir / "hub.log").start()
    agent = processes.agent(workdir, broker_url=broker.url, prefix=prefix, device_id=AGENT,
                            interval_s="1", process_period_s="2")
    browser = None
    try:
        processes.wait_hub_subscribed(hub)
        agent.start()
        processes.wait_rows(db_url, 3, where=f"device_id = '{AGENT}' and ts > now() - "
                            "interval '1 minute'")
        browser = _chromium()
        yield Site(f"http://127.0.0.1:{port}", db_url, browser, broker, prefix)
    finally:
        if browser is not None:
            browser.quit()
        agent.stop()
        hub.stop()
    assert "Traceback" not in hub.log(), hub.log()[-3000:]


def screenshot(browser: WebDriver, name: str) -> Path:
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    browser.save_screenshot(str(path))
    return path


def cell(browser: WebDriver, device: str, column: str) -> str:
    text: str = browser.find_element(
        By.CSS_SELECTOR, f'tr[data-device="{device}"] td[data-col="{column}"]').text
    return text


def rows(browser: WebDriver) -> list[str]:
    return [r.get_attribute("data-device") or ""
            for r in browser.find_elements(By.CSS_SELECTOR, "#fleet tbody tr")]


def test_fleet_page_lists_every_device_with_live_values(site: Site) -> None:
    b = site.browser
    b.get(site.url + "/#/")
    wait_for(lambda: len(rows(b)) == 2, 15, "both devices in the table")
    assert cell(b, AGENT, "state") == "online"
    assert cell(b, "pi-kitchen", "state") == "offline"
    assert cell(b, "pi-kitchen", "throttling") == "under-voltage, throttled"
    assert cell(b, "pi-kitchen", "temp") in {"81.0", "82.0", "83.0", "84.0", "85.0"}
    float(cell(b, AGENT, "cpu"))  # a number from the agent's real reading
    # The agent's newest reading arrives over the event stream, second after second.
    first = b.execute_script(f"return state.devices.find(d => d.device_id == '{AGENT}')"
                             ".latest.ts")
    wait_for(lambda: b.execute_script(
        f"return state.devices.find(d => d.device_id == '{AGENT}').latest.ts") != first,
        10, "a newer reading on the page")
    assert b.find_element(By.ID, "live").text == "live"
    assert b.find_element(By.CSS_SELECTOR, '[data-summary="online"] b').text == "1"
    wait_for(lambda: "CPU temperature high" in b.find_element(By.ID, "open-alerts").text, 20,
             "the kitchen Pi's temperature alert in the open alerts")
    assert screenshot(b, "fleet").stat().st_size > 10_000


def test_fleet_table_sorts_and_filters(site: Site) -> None:
    b = site.browser
    b.get(site.url + "/#/")
    wait_for(lambda: len(rows(b)) == 2, 15, "both devices")
    assert rows(b) == sorted(rows(b))
    header = b.find_element(By.CSS_SELECTOR, 'th[data-sort="temp"]')
    header.click()
    header.click()  # descending: the hot kitchen Pi first
    wait_for(lambda: rows(b)[0] == "pi-kitchen", 5, "hottest first")
    assert header.get_attribute("aria-sort") == "descending"
    b.find_element(By.ID, "filter").send_keys("kitch")
    wait_for(lambda: rows(b) == ["pi-kitchen"], 5, "only the kitchen Pi")
    b.find_element(By.ID, "filter").clear()
    b.execute_script("const s = document.getElementById('state-filter'); s.value = 'online';"
                     "s.dispatchEvent(new Event('change'))")
    wait_for(lambda: rows(b) == [AGENT], 5, "only online devices")


def test_device_page_charts_live_values_and_follows_the_range_selector(site: Site) -> None:
    b = site.browser
    b.get(site.url + f"/#/device/{AGENT}")
    wait_for(lambda: b.find_element(By.ID, "current-cpu").text.endswith("%"), 15,
             "current values")
    points = "return state.charts.cpu.data[0].length"
    wait_for(lambda: b.execute_script(points) >= 3, 15, "a few live points")
    before = b.execute_script(points)
    stamp = b.find_element(By.ID, "current-ts").text
    wait_for(lambda: b.execute_script(points) > before, 10, "the live chart to grow")
    wait_for(lambda: b.find_element(By.ID, "current-ts").text != stamp, 10,
             "the current values to change")
    live_span = b.execute_script("const x = state.charts.cpu.scales.x; return x.max - x.min")
    assert live_span <= 65, live_span
    assert screenshot(b, "device-live").stat().st_size > 10_000

    b.find_element(By.CSS_SELECTOR, 'button[data-range="86400"]').click()
    label = b.find_element(By.ID, "range-label")
    wait_for(lambda: label.get_attribute("data-source") == "1m", 15, "the minute rollup")
    span = b.execute_script("const x = state.charts.cpu.scales.x; return x.max - x.min")
    assert span > 20 * 3600, span
    assert "minute rollup" in label.text
    assert screenshot(b, "device-24h").stat().st_size > 10_000

    b.find_element(By.CSS_SELECTOR, 'button[data-range="604800"]').click()
    wait_for(lambda: b.execute_script(
        "const x = state.charts.cpu.scales.x; return x.max - x.min") > 6 * 86400, 15,
        "a week on the chart")
    assert int(label.get_attribute("data-points") or 0) <= 1000
    assert screenshot(b, "device-7d").stat().st_size > 10_000

    b.find_element(By.CSS_SELECTOR, 'button[data-range="custom"]').click()
    end = datetime.now() - timedelta(days=2)  # the browser's local time, as the input wants
    start = end - timedelta(hours=2)
    b.execute_script(
        "document.getElementById('custom-start').value = arguments[0];"
        "document.getElementById('custom-end').value = arguments[1];"
        "document.getElementById('custom-apply').click()",
        start.strftime("%Y-%m-%dT%H:%M"), end.strftime("%Y-%m-%dT%H:%M"))
    wait_for(lambda: 7000 <= b.execute_script(
        "const x = state.charts.cpu.scales.x; return x.max - x.min") <= 7300, 15,
        "the custom two hours")
    error = b.find_element(By.ID, "error")
    assert not error.is_displayed(), error.text


def test_range_across_the_cold_tier_boundary_shows_every_reading(site: Site) -> None:
    """The hub compacts what is older than 48 h; a range across that edge shows both tiers."""
    edge = datetime.now(UTC) - timedelta(hours=48)
    with psycopg.connect(site.db_url, autocommit=True) as conn:
        def compacted() -> bool:
            row = conn.execute("select count(*) from metrics where device_id = %s and ts < "
                               "date_trunc('hour', %s::timestamptz)", (AGENT, edge)).fetchone()
            return row == (0,)
        wait_for(compacted, 60, "the hub to compact what is older than 48 h")
        boundary = edge.replace(minute=0, second=0, microsecond=0)  # cold before, hot after
        start, end = boundary - timedelta(minutes=40), boundary + timedelta(minutes=40)
        row = conn.execute("select count(*) filter (where hot), count(*) filter (where not hot) "
                           "from (select true as hot, ts from metrics where device_id = %(d)s "
                           "union all select false, ts from metrics_cold_rows(%(d)s, "
                           "'-infinity', 'infinity')) m where ts >= %(s)s and ts < %(e)s",
                           {"d": AGENT, "s": start, "e": end}).fetchone()
    assert row is not None and row[0] > 0 and row[1] > 0, row  # both tiers in the range
    b = site.browser
    b.get(site.url + f"/#/device/{AGENT}")
    wait_for(lambda: b.find_element(By.ID, "current-cpu").text.endswith("%"), 15,
             "current values")
    b.find_element(By.CSS_SELECTOR, 'button[data-range="custom"]').click()
    local = datetime.now().astimezone().tzinfo
    b.execute_script(
        "document.getElementById('custom-start').value = arguments[0];"
        "document.getElementById('custom-end').value = arguments[1];"
        "document.getElementById('custom-apply').click()",
        start.astimezone(local).strftime("%Y-%m-%dT%H:%M"),
        end.astimezone(local).strftime("%Y-%m-%dT%H:%M"))
    label = b.find_element(By.ID, "range-label")
    # Per-second source, one point per reading (a reading a minute, 5 s per point).
    wait_for(lambda: label.get_attribute("data-source") == "raw" and int(
        label.get_attribute("data-points") or 0) == row[0] + row[1], 15,
        f"{row[0] + row[1]} points from both tiers")
    assert not b.find_element(By.ID, "error").is_displayed()
    assert screenshot(b, "device-across-tiers").stat().st_size > 10_000
    # Months: the 90-day button asks the hour rollup, which covers both tiers too.
    b.find_element(By.CSS_SELECTOR, 'button[data-range="7776000"]').click()
    wait_for(lambda: label.get_attribute("data-source") == "1h", 15, "the hour rollup")
    # A week of data at 3 h per point (90 days in at most 1,000 points).
    assert 7 * 8 - 2 <= int(label.get_attribute("data-points") or 0) <= 1000
    b.get(site.url + "/#/")
    wait_for(lambda: "Cold tier" in b.find_element(By.ID, "health").text, 90,
             "the hub panel's storage tiers")


def test_device_page_shows_the_devices_alerts_and_completeness(site: Site) -> None:
    b = site.browser
    b.get(site.url + "/#/device/pi-kitchen")
    wait_for(lambda: "cpu temperature high" in b.find_element(By.ID, "device-alerts").text,
             20, "the open temperature alert")
    assert "%" in b.find_element(By.ID, "completeness").text
    assert b.find_element(By.ID, "current-throttling").text == "under-voltage, throttled"
    assert b.find_element(By.ID, "device-facts").text.startswith("kitchen")
    assert screenshot(b, "device-alerts").stat().st_size > 10_000


def process_rows(browser: WebDriver) -> list[dict[str, str]]:
    # Read in one script: the live table may be redrawn between two WebDriver calls.
    rows: list[dict[str, str]] = browser.execute_script(
        "return [...document.querySelectorAll('#processes tbody tr')].map(tr => ({"
        "pid: tr.dataset.pid, name: tr.querySelector('[data-col=name]').textContent, "
        "cpu: tr.querySelector('[data-col=cpu]').textContent, "
        "rss: tr.querySelector('[data-col=rss]').textContent}))")
    return rows


# The table's pids and the shown sample's memory list by RSS (arguments[0]: 1 ascending,
# -1 descending; ties by pid), read together.
SHOWN_AND_BY_MEMORY = (
    "return [[...document.querySelectorAll('#processes tbody tr')].map(tr => "
    "Number(tr.dataset.pid)), [...state.procs.sample.top_memory].sort((a, b) => "
    "(a.rss_bytes - b.rss_bytes) * arguments[0] || a.pid - b.pid).map(p => p.pid)]")


def test_device_page_shows_the_top_processes_live_and_sorts_them(site: Site) -> None:
    b = site.browser
    b.get(site.url + f"/#/device/{AGENT}")
    wait_for(lambda: len(process_rows(b)) > 0, 30, "the agent's top processes in the table")
    counts = b.find_element(By.ID, "processes-counts").text
    assert " processes: " in counts and " running, " in counts, counts
    assert b.find_element(By.ID, "processes-when").text.startswith("live, sampled ")
    # The agent scans every 2 s here: the table follows the stream to newer samples.
    first = b.execute_script("return state.procs.sample.ts")
    wait_for(lambda: b.execute_script("return state.procs.sample.ts") != first, 20,
             "a newer process sample on the page")
    cpu = [float(r["cpu"]) for r in process_rows(b) if r["cpu"] != "–"]
    assert cpu == sorted(cpu, reverse=True), cpu
    header = b.find_element(By.CSS_SELECTOR, '#processes th[data-sort="memory"]')
    header.click()
    wait_for(lambda: b.execute_script("return state.procs.sort.key") == "memory", 5, "by memory")
    assert header.get_attribute("aria-sort") == "descending"
    shown, by_memory = b.execute_script(SHOWN_AND_BY_MEMORY, -1)
    assert shown == by_memory and len(shown) > 1
    header.click()  # again: ascending
    wait_for(lambda: header.get_attribute("aria-sort") == "ascending", 5, "ascending")
    shown, ascending = b.execute_script(SHOWN_AND_BY_MEMORY, 1)
    assert shown == ascending and ascending != by_memory
    b.execute_script("document.getElementById('processes-panel').scrollIntoView()")
    assert screenshot(b, "device-processes").stat().st_size > 10_000


def test_device_page_shows_the_processes_at_a_chosen_moment(site: Site) -> None:
    b = site.browser
    b.get(site.url + f"/#/device/{AGENT}?range=604800")
    # The week's chart, not the live one the previous page left (it is replaced, and an
    # element of it found meanwhile would be stale).
    wait_for(lambda: b.execute_script("const c = state.charts.cpu; return c && "
                                      "c.scales.x.max - c.scales.x.min > 6 * 86400"), 15,
             "the week's chart")
    # The week's samples on their own chart: the one two days back and the agent's.
    # (The page may still show the live range's chart for a moment: wait for the week's.)
    past = (datetime.now(UTC) - PAST_SAMPLE_AGO).timestamp()
    wait_for(lambda: b.execute_script(
        "const c = state.procs.chart; return c && c.scales.x.min <= arguments[0] && "
        "arguments[0] <= c.scales.x.max && c.data[1].filter(v => v !== null).length >= 2",
        past), 15, "the week's process history chart")
    moment = datetime.now() - PAST_SAMPLE_AGO + timedelta(seconds=4)  # local, as the input
    b.execute_script("document.getElementById('processes-at').value = arguments[0];"
                     "document.getElementById('processes-show').click()",
                     moment.strftime("%Y-%m-%dT%H:%M:%S"))
    wait_for(lambda: [r["name"] for r in process_rows(b)] == ["nightly-backup"], 15,
             "the sample two days back")
    row = process_rows(b)[0]
    assert row["cpu"] == "88.5" and row["rss"] == "3.0 GB"
    assert b.find_element(By.ID, "processes-live").get_attribute("aria-pressed") == "false"
    assert not b.find_element(By.ID, "processes-when").text.startswith("live")
    b.execute_script("document.getElementById('processes-panel').scrollIntoView()")
    assert screenshot(b, "device-processes-at").stat().st_size > 10_000
    # A moment with no sample says so; a click on the chart picks the moment under the cursor.
    over = b.find_element(By.CSS_SELECTOR, "#chart-cpu .u-over")
    ActionChains(b).move_to_element_with_offset(over, 0, 0).click().perform()  # its middle
    wait_for(lambda: b.execute_script("return state.procs.at && state.procs.at.getTime()")
             not in (None, int(moment.timestamp() * 1000)), 10, "the moment clicked")
    picked = b.execute_script("return state.procs.at.getTime()") / 1000
    low, high = b.execute_script("const x = state.charts.cpu.scales.x; return [x.min, x.max]")
    assert abs(picked - (low + high) / 2) < 0.05 * (high - low), (picked, low, high)
    wait_for(lambda: b.find_element(By.ID, "processes-none").is_displayed(), 10,
             "no sample at that moment")
    assert "No process sample in the 5 minutes up to" in b.find_element(
        By.ID, "processes-none").text
    b.find_element(By.ID, "processes-live").click()
    wait_for(lambda: b.find_element(By.ID, "processes-when").text.startswith("live"), 15,
             "back to live")


def test_unknown_device_page_says_so(site: Site) -> None:
    b = site.browser
    b.get(site.url + "/#/device/nope")
    error = b.find_element(By.ID, "error")
    wait_for(lambda: "device 'nope' is not known" in error.text, 10, "the error message")


def test_with_a_token_the_page_asks_for_it_then_shows_the_fleet(site: Site) -> None:
    pool = StorePool(site.db_url, size=2)
    app = create_app(FleetReader(pool), streamer=pool,
                     health=lambda: HubHealth(True, None, 0), token=Secret("s3cret"))
    server = HttpServer(app, "127.0.0.1", free_port())
    server.start()
    b = site.browser
    try:
        b.get(f"http://127.0.0.1:{server.port}/#/")
        form = b.find_element(By.ID, "token-form")
        wait_for(form.is_displayed, 10, "the token form")
        assert rows(b) == []
        b.find_element(By.ID, "token-input").send_keys("s3cret")
        b.find_element(By.CSS_SELECTOR, "#token-submit button").click()
        wait_for(lambda: len(rows(b)) == 2, 15, "the fleet, once the token is given")
        assert not form.is_displayed()
        b.execute_script("localStorage.removeItem('fleetpulse.token')")
    finally:
        server.stop()
        pool.close()


def test_hub_process_makes_partitions_ahead_and_publishes_alerts_retained(site: Site) -> None:
    today = datetime.now(UTC).date()
    with psycopg.connect(site.db_url) as conn:
        names = {r[0] for r in conn.execute(
            "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid "
            "where i.inhparent = 'metrics'::regclass")}
    assert {f"metrics_{today + timedelta(days=d):%Y%m%d}" for d in range(3)} <= names
    received: dict[str, bytes] = {}
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: received.__setitem__(m.topic, m.payload)
    client.connect("127.0.0.1", site.broker.port)
    client.subscribe(f"{site.prefix}/pi-kitchen/alert/#", qos=1)
    client.loop_start()
    try:
        topic = alert_topic(site.prefix, "pi-kitchen", "cpu_temperature_high")
        wait_for(lambda: topic in received, 20, "the retained temperature alert")
    finally:
        client.loop_stop()
        client.disconnect()
    alert = orjson.loads(received[topic])
    assert alert["device_id"] == "pi-kitchen" and alert["peak_value"] == 85.0
