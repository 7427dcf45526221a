"""Completeness counts readings expected from a device's first reading, to the second."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from hub.api import HubHealth, create_app
from hub.ingest.batch import DeviceEvents
from hub.read import FleetReader
from hub.store import Store, StorePool
from tests.readings import series, write_readings

# Started 37 s into a minute, 40 minutes ago, and has sent every reading since.
FIRST = datetime(2026, 11, 23, 11, 20, 37, tzinfo=UTC)
NOW = FIRST + timedelta(minutes=40)


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    store = Store(db_url)
    store.migrate()
    write_readings(store, series("young", FIRST, 40 * 60), received_at=NOW)
    store.close()
    pool = StorePool(db_url, size=2)
    app = create_app(FleetReader(pool), streamer=pool, now=lambda: NOW, web_dir=None,
                     health=lambda: HubHealth(True, NOW, 0))
    with TestClient(app) as c:
        yield c
    pool.close()


def test_a_device_started_mid_minute_with_nothing_missing_is_complete(
        client: TestClient) -> None:
    detail = client.get("/api/devices/young").json()
    for window in ("completeness_1h", "completeness_24h"):
        assert detail[window]["stored"] == 2400
        assert detail[window]["expected"] == 2400, window
        assert detail[window]["ratio"] == 1.0
    assert detail["completeness_1h"]["start"] == "2026-11-23T11:20:37Z"


def test_a_window_starting_mid_minute_expects_what_its_whole_minutes_hold(
        client: TestClient) -> None:
    body = client.get("/api/devices/young/completeness",
                      params={"start": "2026-11-23T11:30:10Z", "end": NOW.isoformat()}).json()
    # Stored readings come from whole minutes (11:31 on): 29 min 37 s of them.
    assert body["stored"] == 29 * 60 + 37 and body["expected"] == body["stored"]
    assert body["ratio"] == 1.0


def test_a_gap_still_shows(db_url: str, client: TestClient) -> None:
    store = Store(db_url)
    store.execute([("delete from metrics_1m where device_id = 'young' and bucket = %s",
                    (datetime(2026, 11, 23, 11, 40, tzinfo=UTC),))])
    store.close()
    body = client.get("/api/devices/young/completeness",
                      params={"start": "2026-11-23T11:00:00Z", "end": NOW.isoformat()}).json()
    assert body["expected"] == 2400 and body["stored"] == 2340


def test_an_interval_changed_mid_stream_keeps_completeness_right(db_url: str) -> None:
    # 20 minutes at 1 s, then the hub sets 10 s (settings changed remotely): the agent's
    # meta then says 10 s, but the hour still holds the 1 s readings.
    store = Store(db_url)
    store.migrate()
    switch = FIRST + timedelta(minutes=20)
    readings = series("changed", FIRST, 20 * 60) + [
        {**r, "seq": 20 * 60 + r["seq"]} for r in series("changed", switch, 120, step_s=10.0)]
    write_readings(store, readings, received_at=NOW)  # type: ignore[arg-type]
    events = DeviceEvents()
    events.meta["changed"] = ({"hostname": "changed", "interval_s": 10.0}, NOW)
    store.write([], [], events)
    store.close()
    pool = StorePool(db_url, size=2)
    app = create_app(FleetReader(pool), streamer=pool, now=lambda: NOW, web_dir=None,
                     health=lambda: HubHealth(True, NOW, 0))
    with TestClient(app) as c:
        detail = c.get("/api/devices/changed").json()
    pool.close()
    assert detail["completeness_1h"]["stored"] == 20 * 60 + 120
    assert detail["completeness_1h"]["expected"] == 20 * 60 + 120
    assert detail["completeness_1h"]["ratio"] == 1.0
    assert detail["interval_s"] == 10.0  # the device's current interval
