"""The HTTP API against a real PostgreSQL: every endpoint, and the mistakes callers make."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi.testclient import TestClient

from hub.alerts import DEFAULT_RULES
from hub.api import WEB_DIR, HttpServer, HubHealth, create_app
from hub.ingest.batch import DeviceEvents, QuarantineRecord
from hub.read import SERIES_COLUMNS, FleetReader
from hub.store import Store, StorePool
from shared.config import Secret
from tests.readings import partition, series, write_readings
from tests.servers import PostgresServer, free_port, wait_for

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
START = NOW - timedelta(hours=2)
HEALTHY = HubHealth(broker_connected=True, last_write_at=NOW, backlog=3, received=10,
                    stored=9, quarantined=1)


@pytest.fixture(scope="module")
def db_url(postgres: PostgresServer) -> str:
    """One database for the module: its tests only read, so they share the seeded data."""
    return postgres.create_database("api")


@pytest.fixture(scope="module")
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.migrate()
    # pi-1: two hours at 1 s, with a 10-minute gap in the last hour; two cores.
    readings = series("pi-1", START, 7200, cpu_percent=lambda i: float(i % 100),
                      cpu_per_core_percent=lambda i: [float(i % 100), 50.0],
                      memory_percent=40.0, sensors_cpu_celsius=55.0,
                      disk_partitions=[partition("/", 42.0)],
                      throttling_raw=0x50005, throttling_under_voltage_now=True,
                      throttling_throttled_now=True)
    gap = range(5400, 6000)
    kept = [r for i, r in enumerate(readings) if i not in gap]
    for i in range(0, len(kept), 2000):
        write_readings(s, kept[i:i + 2000], received_at=NOW - timedelta(seconds=1))
    # pi-2: said offline an hour ago.
    events = DeviceEvents()
    events.status["pi-2"] = ("offline", NOW - timedelta(hours=1))
    events.meta["pi-1"] = ({"hostname": "kitchen", "pi_model": "Raspberry Pi 4 Model B",
                            "os": "Debian 12", "interval_s": 1.0}, NOW - timedelta(hours=2))
    events.status["pi-1"] = ("online", NOW - timedelta(hours=2))
    s.write([], [QuarantineRecord(NOW - timedelta(minutes=5), "fp/pi-3/metrics", "pi-3",
                                  "payload is not valid JSON: x", b"{"),
                 QuarantineRecord(NOW - timedelta(minutes=4), "fp/pi-3/metrics", "pi-3",
                                  "payload is not valid JSON: x", b"{{")], events)
    s.execute([("insert into alerts (device_id, rule, started_at, peak_value, threshold, "
                "message, updated_at) values ('pi-1', 'under_voltage', %s, 1, 0.5, "
                "'Raspberry Pi under-voltage: pi-1', %s)", (START, START)),
               ("insert into alerts (device_id, rule, started_at, ended_at, peak_value, "
                "threshold, message, updated_at) values ('pi-1', 'cpu_temperature_high', %s, "
                "%s, 83, 80, 'CPU temperature high', %s)", (START, START, START))])
    yield s
    s.close()


def make_app(db_url: str, token: str | None = None,
             health: HubHealth = HEALTHY) -> tuple[TestClient, StorePool]:
    pool = StorePool(db_url, size=2)
    app = create_app(FleetReader(pool), streamer=pool, health=lambda: health,
                     token=Secret(token) if token else None, rules=DEFAULT_RULES,
                     now=lambda: NOW, stream_period_s=0.2)
    return TestClient(app), pool


@pytest.fixture
def client(store: Store, db_url: str) -> Iterator[TestClient]:
    c, pool = make_app(db_url)
    with c:
        yield c
    pool.close()


def test_fleet_summary_counts_devices_by_state_and_alerting(client: TestClient) -> None:
    assert client.get("/api/fleet").json() == {
        "devices": 2, "online": 1, "offline": 1, "silent": 0, "unknown": 0, "alerting": 1,
        "open_alerts": 1}


def test_device_list_shows_status_latest_values_and_open_alerts(client: TestClient) -> None:
    pi1, pi2 = client.get("/api/devices").json()
    assert pi1["device_id"] == "pi-1" and pi1["state"] == "online"
    assert pi1["hostname"] == "kitchen" and pi1["alerts"] == ["under_voltage"]
    latest = pi1["latest"]
    assert latest["cpu_percent"] == float(7199 % 100) and latest["sensors_cpu_celsius"] == 55.0
    assert latest["cpu_per_core_percent"] == [99.0, 50.0]
    assert latest["disk_max_percent"] == 42.0 and latest["throttling_raw"] == 0x50005
    assert pi2["state"] == "offline" and pi2["latest"] is None


def test_device_detail_reports_meta_and_completeness(client: TestClient) -> None:
    body = client.get("/api/devices/pi-1").json()
    assert body["meta"]["pi_model"] == "Raspberry Pi 4 Model B"
    last_hour = body["completeness_1h"]
    assert last_hour["expected"] == 3600 and last_hour["stored"] == 3000
    assert last_hour["ratio"] == pytest.approx(3000 / 3600)


def test_completeness_over_a_given_range(client: TestClient) -> None:
    body = client.get("/api/devices/pi-1/completeness", params={
        "start": START.isoformat(), "end": (START + timedelta(hours=1)).isoformat()}).json()
    assert body["expected"] == 3600 and body["stored"] == 3600 and body["ratio"] == 1.0


@pytest.mark.parametrize("path", ["/api/devices/nope", "/api/devices/nope/series",
                                  "/api/devices/nope/alerts", "/api/devices/nope/export",
                                  "/api/devices/nope/completeness"])
def test_unknown_device_is_404_with_a_clear_message(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.json()["detail"] == ("device 'nope' is not known (GET /api/devices lists "
                                         "the fleet)")


def test_short_range_series_is_per_second_with_per_core_values(client: TestClient) -> None:
    body = client.get("/api/devices/pi-1/series", params={
        "start": (NOW - timedelta(seconds=60)).isoformat(), "end": NOW.isoformat(),
        "columns": "cpu_percent,memory_percent"}).json()
    assert body["source"] == "raw" and body["step_s"] == 1
    assert len(body["t"]) == 60 and set(body["series"]) == {"cpu_percent", "memory_percent"}
    cpu = body["series"]["cpu_percent"]
    assert cpu["mean"] == cpu["min"] == cpu["max"]
    assert cpu["mean"][-1] == 99.0
    assert body["per_core"][1] == [50.0] * 60 and body["per_core"][0][-1] == 99.0


def test_day_range_uses_the_minute_rollup_within_1000_points(client: TestClient) -> None:
    body = client.get("/api/devices/pi-1/series", params={
        "start": (NOW - timedelta(hours=24)).isoformat(), "end": NOW.isoformat()}).json()
    assert body["source"] == "1m" and body["step_s"] == 120
    assert 0 < len(body["t"]) <= 1000 and body["per_core"] is None
    assert set(body["series"]) == set(SERIES_COLUMNS)
    cpu = body["series"]["cpu_percent"]
    assert min(cpu["min"]) == 0.0 and max(cpu["max"]) == 99.0
    assert all(m == 40.0 for m in body["series"]["memory_percent"]["mean"])


def test_quarter_range_uses_the_hour_rollup(client: TestClient) -> None:
    body = client.get("/api/devices/pi-1/series", params={
        "start": (NOW - timedelta(days=90)).isoformat(), "end": NOW.isoformat()}).json()
    assert body["source"] == "1h" and body["step_s"] % 3600 == 0
    assert len(body["t"]) == 1 and body["series"]["cpu_percent"]["max"] == [99.0]


def test_default_series_range_is_the_last_hour(client: TestClient) -> None:
    body = client.get("/api/devices/pi-1/series").json()
    assert body["end"].startswith("2026-11-23T12:00:00")
    assert body["start"].startswith("2026-11-23T11:00:00")


@pytest.mark.parametrize(("params", "message"), [
    ({"start": "2026-11-23T12:00:00Z", "end": "2026-11-23T11:00:00Z"},
     "end (2026-11-23T11:00:00+00:00) must be after start (2026-11-23T12:00:00+00:00)"),
    ({"start": "1900-01-01T00:00:00Z"},
     "days is longer than the 3660 days allowed; ask for a shorter range"),
    ({"start": "yesterday"}, "start: 'yesterday' is not a time: use ISO 8601 "
     "(2026-11-23T17:00:00Z), 'now', or an age like 5m, 24h, 7d"),
    ({"end": "5x"}, "end: '5x' is not a time"),
    ({"columns": "cpu_percent,colour"}, "unknown column(s) colour; known: cpu_percent"),
    ({"resolution": "2s"}, "resolution: Input should be 'auto', 'raw', '1m' or '1h'"),
    ({"resolution": "raw", "start": "2026-10-01T00:00:00Z"},
     "resolution=raw covers at most 7 days"),
    ({"max_points": "5"}, "max_points: Input should be greater than or equal to 10"),
])
def test_bad_series_parameters_are_422_with_a_clear_message(
        client: TestClient, params: dict[str, str], message: str) -> None:
    response = client.get("/api/devices/pi-1/series", params=params)
    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_alerts_list_open_ones_first_and_filter(client: TestClient) -> None:
    every = client.get("/api/alerts").json()
    assert [a["rule"] for a in every] == ["under_voltage", "cpu_temperature_high"]
    assert every[0]["ended_at"] is None and every[1]["peak_value"] == 83.0
    assert [a["rule"] for a in client.get("/api/alerts?open=true").json()] == ["under_voltage"]
    assert len(client.get("/api/devices/pi-1/alerts").json()) == 2
    assert client.get("/api/alerts?device=pi-2").json() == []
    assert client.get("/api/alerts?limit=0").status_code == 422


def test_rules_in_force_are_listed(client: TestClient) -> None:
    rules = {r["name"]: r for r in client.get("/api/rules").json()}
    assert rules["cpu_temperature_high"]["threshold"] == 80.0
    assert rules["cpu_temperature_high"]["clear"] == 75.0


def test_quarantine_summary_groups_by_reason_and_device(client: TestClient) -> None:
    body = client.get("/api/quarantine").json()
    assert body["total"] == 2 and body["bytes"] == 3
    assert body["by_reason"][0]["reason"] == "payload is not valid JSON: x"
    assert body["by_reason"][0]["count"] == 2
    assert body["by_device"] == [{"device_id": "pi-3", "count": 2}]
    assert [r["payload_bytes"] for r in body["recent"]] == [2, 1]
    assert client.get("/api/quarantine?hours=0.01").json()["total"] == 0
    assert client.get("/api/quarantine?hours=-1").status_code == 422


def test_health_reports_broker_database_last_write_and_backlog(client: TestClient) -> None:
    body = client.get("/api/health").json()
    assert body == {"status": "ok", "broker_connected": True, "database_reachable": True,
                    "last_write_at": "2026-11-23T12:00:00Z", "backlog": 3,
                    "received": 10, "stored": 9, "quarantined": 1, "storage": None,
                    "detection": None}


def test_health_is_503_when_the_broker_is_away(store: Store, db_url: str) -> None:
    client, pool = make_app(db_url, health=replace(HEALTHY, broker_connected=False))
    response = client.get("/api/health")
    pool.close()
    assert response.status_code == 503 and response.json()["status"] == "degraded"


def test_health_is_503_when_the_database_is_unreachable() -> None:
    pool = StorePool(f"postgresql://nobody@127.0.0.1:{free_port()}/none", size=1)
    app = create_app(FleetReader(pool), streamer=pool, health=lambda: HEALTHY, now=lambda: NOW)
    body = TestClient(app).get("/api/health")
    assert body.status_code == 503 and body.json()["database_reachable"] is False
    assert TestClient(app).get("/api/devices").json()["detail"].startswith(
        "the database failed: database unreachable")


def test_token_is_required_when_configured(store: Store, db_url: str) -> None:
    client, pool = make_app(db_url, token="s3cret")
    try:
        refused = client.get("/api/fleet")
        assert refused.status_code == 401 and "Bearer" in refused.json()["detail"]
        assert refused.headers["www-authenticate"] == "Bearer"
        assert client.get("/api/fleet", headers={"Authorization": "Bearer wrong"}
                          ).status_code == 401
        assert client.get("/api/fleet", headers={"Authorization": "Bearer s3cret"}
                          ).status_code == 200
        assert client.get("/api/fleet?token=s3cret").status_code == 200
        assert client.get("/api/health").status_code == 200  # probes need no token
        assert client.get("/").status_code == 200  # the page itself holds no data
    finally:
        pool.close()


def test_openapi_describes_every_endpoint(client: TestClient) -> None:
    paths = client.get("/api/openapi.json").json()["paths"]
    assert {"/api/fleet", "/api/devices", "/api/devices/{device_id}",
            "/api/devices/{device_id}/series", "/api/devices/{device_id}/export",
            "/api/alerts", "/api/quarantine", "/api/health", "/api/stream"} <= set(paths)


@pytest.mark.parametrize("path", ["/api/devices/pi-1/series",
                                  "/api/devices/pi-1/completeness",
                                  "/api/devices/pi-1/export"])
def test_times_take_the_clis_syntax_ages_now_and_iso(client: TestClient, path: str) -> None:
    for start, end, expected in (
            ("5m", "now", (NOW - timedelta(minutes=5), NOW)),
            ("24h", "1h", (NOW - timedelta(hours=24), NOW - timedelta(hours=1))),
            ("2026-11-23T11:00:00Z", None, (datetime(2026, 11, 23, 11, tzinfo=UTC), NOW)),
            ("2026-11-23T13:00:00+02:00", None, (datetime(2026, 11, 23, 11, tzinfo=UTC), NOW))):
        params = {"start": start} | ({"end": end} if end else {})
        response = client.get(path, params=params)
        assert response.status_code == 200, (start, response.text)
        if path.endswith("/series"):
            body = response.json()
            got = (datetime.fromisoformat(body["start"]), datetime.fromisoformat(body["end"]))
            assert got == expected
        elif path.endswith("/export"):
            first, last = expected
            assert (f"{first:%Y%m%dT%H%M%SZ}_{last:%Y%m%dT%H%M%SZ}"
                    in response.headers["content-disposition"])


def test_interactive_docs_are_served_without_a_cdn(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert "http://" not in page.text and "https://" not in page.text, page.text
    for asset in ("/docs/static/swagger-ui-bundle.js", "/docs/static/swagger-ui.css"):
        response = client.get(asset)
        assert response.status_code == 200 and len(response.content) > 100_000, asset


def test_dashboard_is_served_with_its_vendored_chart_library(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "fleetpulse" in page.text
    assert client.get("/vendor/uPlot.iife.min.js").status_code == 200
    assert (WEB_DIR / "vendor" / "LICENSE").exists()


def test_stream_sends_the_fleet_every_period(store: Store, db_url: str) -> None:
    pool = StorePool(db_url, size=2)
    app = create_app(FleetReader(pool), streamer=pool, health=lambda: HEALTHY,
                     now=lambda: NOW, stream_period_s=0.2)
    server = HttpServer(app, "127.0.0.1", free_port())
    server.start()
    events: list[str] = []
    try:
        with httpx.stream("GET", f"http://127.0.0.1:{server.port}/api/stream?device=pi-1",
                          timeout=10) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line)
                if len(events) == 3:
                    break
    finally:
        server.stop()
        pool.close()
    assert all('"device_id":"pi-1"' in e and '"pi-2"' not in e for e in events)
    assert '"summary":{"devices":2' in events[0]


def test_stopping_the_server_ends_open_streams_without_an_error(
        store: Store, db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    pool = StorePool(db_url, size=2)
    app = create_app(FleetReader(pool), streamer=pool, health=lambda: HEALTHY,
                     now=lambda: NOW, stream_period_s=0.2)
    server = HttpServer(app, "127.0.0.1", free_port())
    # uvicorn's loggers do not propagate to the root logger that caplog listens on.
    uvicorn_log = logging.getLogger("uvicorn")
    uvicorn_log.addHandler(caplog.handler)
    server.start()
    events = 0
    try:
        with httpx.stream("GET", f"http://127.0.0.1:{server.port}/api/stream",
                          timeout=10) as response:
            for line in response.iter_lines():  # ends when the server closes the stream
                if line.startswith("data: "):
                    events += 1
                    if events == 2:
                        server.stop()
    finally:
        server.stop()
        pool.close()
        uvicorn_log.removeHandler(caplog.handler)
    assert 2 <= events <= 4  # the stream ended within a period or two of the stop
    problems = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")
                or r.exc_info]
    assert not problems, [r.getMessage() for r in problems]


def test_http_server_reports_a_port_in_use(store: Store, db_url: str) -> None:
    pool = StorePool(db_url, size=1)
    app = create_app(FleetReader(pool), streamer=pool, health=lambda: HEALTHY)
    first = HttpServer(app, "127.0.0.1", free_port())
    first.start()
    try:
        with pytest.raises(OSError, match=r"cannot serve HTTP on 127\.0\.0\.1"):
            HttpServer(app, "127.0.0.1", first.port).start()
    finally:
        first.stop()
        pool.close()
    wait_for(lambda: not _listening(first.port), 5, "the server to stop")


def _listening(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=0.5)
        return True
    except httpx.HTTPError:
        return False
