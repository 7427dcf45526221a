"""The anomaly routes against a real PostgreSQL: each device's model state and anomaly rate,
and the band of a range (both tiers)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from hub.alerts import DEFAULT_RULES
from hub.api import HubHealth, create_app
from hub.ingest.batch import DeviceEvents
from hub.models import train_device
from hub.read import FleetReader
from hub.store import Store, StorePool
from shared.schema import metrics_row
from tests.readings import series

# Minute-aligned, so the band's 60 s buckets split the readings where the test expects.
T0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30)


def _write_scored(store: Store, device: str, scores: list[float | None]) -> None:
    readings = series(device, T0, len(scores), cpu_percent=10.0)
    rows = [(*metrics_row(m, T0)[:-1], score) for m, score in zip(readings, scores, strict=True)]
    events = DeviceEvents()
    events.seen[device] = (readings[-1]["ts"], T0)
    store.write(rows, [], events)


def test_anomaly_rates_states_and_band(store: Store, db_url: str) -> None:
    # 200 readings: 150 unscored (before a model), then 50 scored, 10 of them above 0.5.
    scores: list[float | None] = [None] * 150 + [0.1] * 40 + [0.9] * 10
    _write_scored(store, "pi-1", scores)
    _write_scored(store, "pi-2", [None] * 5)
    train_device(store, "pi-1", kind="novelty", window_h=1, min_readings=100,
                 now=T0 + timedelta(seconds=200))
    train_device(store, "pi-2", kind="novelty", window_h=1, min_readings=100,
                 now=T0 + timedelta(seconds=200))
    pool = StorePool(db_url, size=1)
    try:
        client = TestClient(create_app(FleetReader(pool), streamer=pool,
                                       health=lambda: HubHealth(True, None, 0),
                                       rules=DEFAULT_RULES,
                                       now=lambda: T0 + timedelta(seconds=300)))
        one, two = client.get("/api/anomalies").json()
        assert one["state"] == "trained" and one["model"]["version"] == 1
        assert (one["scored"], one["anomalous"], one["rate"]) == (50, 10, 0.2)
        assert one["max_score"] == 0.9
        assert two["state"] == "too_little_history" and two["model"] is None
        assert "5 readings, a model needs 100" in two["message"] and two["rate"] is None
        assert client.get("/api/anomalies?device=pi-2").json() == [two]
        band = client.get("/api/devices/pi-1/anomalies", params={
            "start": T0.isoformat(), "end": (T0 + timedelta(seconds=200)).isoformat(),
            "step_s": 60}).json()
        assert band["threshold"] == 0.5 and band["step_s"] == 60
        assert band["rate"][-1] > 0 and max(band["max"]) == 0.9
        assert all(r == 0 for r in band["rate"][:-1])
        assert client.get("/api/devices/nope/anomalies").status_code == 404
        long = client.get("/api/devices/pi-1/anomalies", params={"start": "10d"}).json()
        assert long["t"] == [] and "up to 7 days" in long["note"]
    finally:
        pool.close()
