"""Forecast alerts through the hub's AlertWatcher and a real PostgreSQL: a memory leak opens
``memory_exhaustion_forecast`` before available memory runs out, saying when; a Pi 3B+
warming towards its 60 °C soft limit opens ``thermal_throttling_forecast``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from hub.alerts import DEFAULT_RULES
from hub.store import Store
from hub.watch import AlertWatcher
from shared.topics import alert_topic
from tests.readings import series, write_readings

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
GIB = 2 ** 30


def _rounds(store: Store, watcher: AlertWatcher, readings: list, every: int = 10) -> list:
    """Store the readings ``every`` at a time, checking the rules after each bunch."""
    changes = []
    for i in range(0, len(readings), every):
        bunch = readings[i:i + every]
        write_readings(store, bunch, received_at=bunch[-1]["ts"])
        changes += watcher.check(bunch[-1]["ts"] + timedelta(seconds=1))
    return changes


def test_a_memory_leak_opens_its_forecast_alert_before_memory_runs_out(store: Store,
                                                                       prefix: str) -> None:
    published: dict[str, bytes] = {}
    watcher = AlertWatcher(store, published.__setitem__, prefix, DEFAULT_RULES)
    # 4 GiB, 1 GiB available, 1 MiB a second leaking: 5 % (204.8 MiB) in ~819 s.
    leak = series("pi-1", T0, 300, memory_total_bytes=4 * GIB,
                  memory_available_bytes=lambda i: GIB - i * 2 ** 20)
    changes = _rounds(store, watcher, leak)
    opened = [c for c in changes if c.action == "open"]
    assert [c.rule for c in opened] == ["memory_exhaustion_forecast"]
    alert = opened[0]
    exhausted_at = T0 + timedelta(seconds=(GIB - 0.05 * 4 * GIB) / 2 ** 20)
    assert alert.started_at < exhausted_at - timedelta(minutes=5)  # well before the fact
    assert "available memory falls to 5 % of the total in about" in alert.message
    said = datetime.fromisoformat(alert.message.split("around ", 1)[1].split(" ", 1)[0])
    assert abs((said - exhausted_at).total_seconds()) < 60
    topic = alert_topic(prefix, "pi-1", "memory_exhaustion_forecast")
    assert orjson.loads(published[topic])["rule"] == "memory_exhaustion_forecast"
    # The leak stops and memory comes back: the forecast closes.
    freed = series("pi-1", T0 + timedelta(seconds=300), 400, memory_total_bytes=4 * GIB,
                   memory_available_bytes=3 * GIB)
    for n, m in enumerate(freed):
        m["seq"] = 301 + n
    closed = [c for c in _rounds(store, watcher, freed) if c.action == "close"]
    assert [c.rule for c in closed] == ["memory_exhaustion_forecast"]
    assert published[topic] == b""


def test_a_pi_3b_plus_warming_towards_60_celsius_gets_a_throttling_forecast(
        store: Store, prefix: str) -> None:
    store.execute([("insert into devices (device_id, first_seen, meta) values ('pi3', %s, "
                    "'{\"pi_model\": \"Raspberry Pi 3 Model B Plus Rev 1.3\"}')", (T0,))])
    watcher = AlertWatcher(store, lambda t, p: None, prefix, DEFAULT_RULES)
    warming = series("pi3", T0, 300, sensors_cpu_celsius=lambda i: 45.0 + i * 0.02)
    opened = [c for c in _rounds(store, watcher, warming) if c.action == "open"]
    # At 0.02 °C/s from 45 °C it reaches 60 °C after 750 s: inside the 10 min horizon soon
    # after 150 s; 80 °C (other Pis) would be 1,750 s away.
    assert [c.rule for c in opened] == ["thermal_throttling_forecast"]
    assert "the CPU reaches its throttling temperature" in opened[0].message
