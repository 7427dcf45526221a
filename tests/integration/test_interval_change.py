"""A device whose interval changes mid-stream (1 s → 5 s → 0.5 s): rollups, completeness and
alert durations stay right (real PostgreSQL, the hub's own write path and API).

Each reading carries ``interval_s``: it covers the ``interval_s`` seconds up to its ``ts``.
A mean over time weighs each reading by the time it covers; completeness expects, minute by
minute, readings at the interval the device had then; an alert's duration is time, not a
number of readings.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from hub.alerts import DEFAULT_RULES
from hub.api import HubHealth, create_app
from hub.ingest.batch import DeviceEvents
from hub.read import FleetReader
from hub.store import Store, StorePool
from hub.watch import AlertWatcher
from shared.schema import MetricsV1
from tests.readings import reading, write_readings

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
# (interval, seconds, cpu %, °C): 150 s at 1 s, 300 s at 5 s, 150 s at 0.5 s.
SEGMENTS = ((1.0, 150, 10.0, 50.0), (5.0, 300, 80.0, 50.0), (0.5, 150, 20.0, 50.0))
END = T0 + timedelta(seconds=600)
AFTER = END + timedelta(seconds=1)  # the last reading is stamped END


def changing(device: str = "vary", segments: tuple[tuple[float, int, float, float], ...]
             = SEGMENTS, start: datetime = T0, skip: range = range(0)) -> list[MetricsV1]:
    """Readings stamped at the end of the interval each covers; ``skip``: seqs left out."""
    out = []
    offset, seq = 0.0, 0
    for interval, seconds, cpu, celsius in segments:
        for _ in range(round(seconds / interval)):
            offset += interval
            seq += 1
            if seq in skip:
                continue
            out.append(reading(device, start + timedelta(seconds=offset), seq=seq,
                               interval_s=interval, cpu_percent=cpu,
                               sensors_cpu_celsius=celsius))
    return out


def weighted(readings: list[MetricsV1], step_s: int) -> dict[datetime, float]:
    """Time-weighted mean CPU % per bucket of ``step_s``, buckets by each reading's ts."""
    sums: dict[datetime, list[float]] = {}
    for r in readings:
        epoch = r["ts"].timestamp()
        bucket = datetime.fromtimestamp(epoch - epoch % step_s, UTC)
        acc = sums.setdefault(bucket, [0.0, 0.0])
        acc[0] += r["cpu"]["percent"] * r["interval_s"]  # type: ignore[operator]
        acc[1] += r["interval_s"]
    return {b: s / t for b, (s, t) in sums.items()}


def api(db_url: str, now: datetime) -> TestClient:
    pool = StorePool(db_url, size=2)
    return TestClient(create_app(FleetReader(pool), streamer=pool, now=lambda: now,
                                 web_dir=None, health=lambda: HubHealth(True, now, 0)))


def series_means(client: TestClient, resolution: str, end: datetime = AFTER,
                 max_points: int = 1000) -> dict[datetime, float]:
    body = client.get("/api/devices/vary/series", params={
        "start": T0.isoformat(), "end": end.isoformat(), "resolution": resolution,
        "columns": "cpu_percent", "max_points": max_points}).json()
    assert "detail" not in body, body
    return {datetime.fromtimestamp(t, UTC): v for t, v in
            zip(body["t"], body["series"]["cpu_percent"]["mean"], strict=True)}


def test_rollups_weigh_each_reading_by_the_time_it_covers(store: Store, db_url: str) -> None:
    readings = changing()
    assert len(readings) == 150 + 60 + 300
    write_readings(store, readings)
    counts = store.query("select bucket, readings, interval_s_sum from metrics_1m "
                         "where device_id = 'vary' order by bucket")
    # The minute 10:02 holds 31 readings at 1 s and 5 at 5 s; 10:07 7 at 5 s and 59 at 0.5 s.
    assert [r["readings"] for r in counts] == [59, 60, 36, 12, 12, 12, 12, 66, 120, 120, 1]
    client = api(db_url, END + timedelta(minutes=1))
    by_minute = series_means(client, "1m")
    expected = weighted(readings, 60)
    assert by_minute.keys() == expected.keys()
    for bucket, mean in expected.items():
        assert by_minute[bucket] == pytest.approx(mean, rel=1e-9), bucket
    assert by_minute[T0 + timedelta(minutes=2)] == pytest.approx((31 * 10 + 25 * 80) / 56)
    # The hour: 150 s at 10 %, 300 s at 80 %, 150 s at 20 % (a mean over readings would
    # say 24.1 %, as 300 readings of the last 150 s outnumber the 60 of the middle 300 s).
    (hour,) = series_means(client, "1h").values()
    assert hour == pytest.approx((150 * 10 + 300 * 80 + 150 * 20) / 600)
    raw = series_means(client, "raw", END, 10)  # per-second rows binned 60 s wide
    assert len(raw) == 10
    for bucket, mean in weighted([r for r in readings if r["ts"] < END], 60).items():
        assert raw[bucket] == pytest.approx(mean, rel=1e-9), bucket


def expected_stored(client: TestClient, start: datetime, end: datetime) -> tuple[int, int]:
    body = client.get("/api/devices/vary/completeness",
                      params={"start": start.isoformat(), "end": end.isoformat()}).json()
    return body["expected"], body["stored"]


def test_completeness_expects_readings_at_the_interval_of_each_moment(store: Store,
                                                                       db_url: str) -> None:
    write_readings(store, changing())
    events = DeviceEvents()
    # The device's meta says its interval now: 0.5 s. Over the whole stream that would
    # expect 1,200 readings where 510 are due.
    events.meta["vary"] = ({"hostname": "vary", "interval_s": 0.5}, END)
    store.write([], [], events)
    client = api(db_url, AFTER)
    expected, stored = expected_stored(client, T0 - timedelta(hours=1), AFTER)
    assert stored == 510 and expected == 510
    body = client.get("/api/devices/vary").json()
    assert body["completeness_1h"]["ratio"] == 1.0


def test_completeness_counts_a_gap_at_the_interval_it_fell_in(store: Store, db_url: str) -> None:
    # 60 readings missing in the 0.5 s part (30 s of it): 60 missing, not 30 or 6.
    write_readings(store, changing(skip=range(300, 360)))
    client = api(db_url, AFTER)
    expected, stored = expected_stored(client, T0 - timedelta(hours=1), AFTER)
    assert stored == 450 and expected == 510
    # A whole silent minute after the change to 5 s (10:03, 12 readings) is expected at
    # 5 s, not at the blended 1.6 s of the minute before it.
    silent = range(156, 168)  # the readings stamped 10:03:00 to 10:03:55
    write_readings(store, changing("quiet", skip=silent))
    body = client.get("/api/devices/quiet/completeness",
                      params={"start": T0.isoformat(), "end": AFTER.isoformat()}).json()
    assert body["stored"] == 498 and body["expected"] == 510, body


def test_alert_durations_are_time_whatever_the_interval(store: Store) -> None:
    # The rule: over 80 °C for 60 s, measured from the first reading above to the newest.
    cool = (1.0, 10, 10.0, 40.0)
    cases = {  # device: (segments after 10 s cool, alert expected); a segment's first
        # reading is stamped one interval after it starts.
        "five-short": (((5.0, 60, 10.0, 85.0),), False),    # 12 readings: 55 s above
        "five": (((5.0, 65, 10.0, 85.0),), True),            # 13 readings: 60 s
        "half-short": (((0.5, 60, 10.0, 85.0),), False),    # 120 readings: 59.5 s
        "half": (((0.5, 60.5, 10.0, 85.0),), True),          # 121 readings: 60 s
        # Above across a change from 5 s to 0.5 s: 25 s (6 readings), then 34.5 or 35 s.
        "mixed-short": (((5.0, 30, 10.0, 85.0), (0.5, 34.5, 10.0, 85.0)), False),
        "mixed": (((5.0, 30, 10.0, 85.0), (0.5, 35, 10.0, 85.0)), True),
    }
    events = DeviceEvents()
    written = {}
    for device, (hot, _) in cases.items():
        events.status[device] = ("online", T0)
        written[device] = changing(device, (cool, *hot))
        write_readings(store, written[device])
    store.write([], [], events)
    watcher = AlertWatcher(store, lambda t, p: None, "fp", DEFAULT_RULES)
    changes = watcher.check(T0 + timedelta(seconds=80))
    opened = {c.device_id: c for c in changes if c.rule == "cpu_temperature_high"}
    assert sorted(opened) == sorted(d for d, (_, fires) in cases.items() if fires)
    for device, change in opened.items():
        first_hot = next(r["ts"] for r in written[device] if r["sensors"]["cpu_celsius"] > 80)
        assert change.started_at == first_hot, device


def test_silence_is_judged_by_the_interval_the_device_sends_at(store: Store,
                                                                db_url: str) -> None:
    # Its meta still says 1 s (sent at its start), but it now sends every 60 s: 30 s
    # without a reading is not "no data" (10 intervals), nor "silent" on the dashboard.
    slow = changing("slow", ((1.0, 60, 10.0, 40.0), (60.0, 180, 10.0, 40.0)))
    last = slow[-1]["ts"]
    write_readings(store, slow, received_at=last)
    events = DeviceEvents()
    events.status["slow"] = ("online", T0)
    events.meta["slow"] = ({"hostname": "slow", "interval_s": 1.0}, T0)
    store.write([], [], events)
    watcher = AlertWatcher(store, lambda t, p: None, "fp", DEFAULT_RULES)
    assert watcher.check(last + timedelta(seconds=30)) == []
    assert api(db_url, last + timedelta(seconds=30)).get(
        "/api/devices/slow").json()["state"] == "online"
    late = watcher.check(last + timedelta(seconds=601))
    assert [(c.action, c.rule) for c in late] == [("open", "no_data")]
    assert api(db_url, last + timedelta(seconds=601)).get(
        "/api/devices/slow").json()["state"] == "silent"


def test_a_bucket_written_before_the_weights_existed_keeps_its_readings_in_the_mean(
        store: Store, db_url: str) -> None:
    # A minute rolled up by an older hub (no weights: null), then readings of the same
    # minute at another interval from this hub: both parts count, each by its time.
    old = changing("vary", ((1.0, 30, 10.0, 40.0),))
    write_readings(store, old)
    store.execute([("update metrics_1m set cpu_percent_wsum = null, cpu_percent_wtime = null",
                    ())])
    new = changing("vary", ((0.5, 20, 40.0, 40.0),), start=T0 + timedelta(seconds=30))
    new = [{**r, "seq": r["seq"] + 100} for r in new]  # type: ignore[misc]
    write_readings(store, new)  # type: ignore[arg-type]
    means = series_means(api(db_url, END), "1m", T0 + timedelta(minutes=1), 10)
    assert means[T0] == pytest.approx((30 * 10 + 20 * 40) / 50)
