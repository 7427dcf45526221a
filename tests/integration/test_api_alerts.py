"""Alerts end to end: stored readings → rules → alerts table → retained MQTT → the API."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from hub.alerts import DEFAULT_RULES, window_s
from hub.api import HubHealth, create_app
from hub.ingest.batch import DeviceEvents
from hub.read import FleetReader
from hub.store import Store, StorePool
from hub.watch import AlertWatcher
from shared.config import parse_broker_url
from shared.mqtt import MqttConnection
from shared.topics import alert_topic
from tests.readings import series, write_readings
from tests.servers import MosquittoServer, wait_for

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


class Retained:
    """Subscribe afresh and collect what the broker holds retained under a filter."""

    def __init__(self, broker: MosquittoServer, topic_filter: str, sentinel: str) -> None:
        self.messages: dict[str, bytes] = {}
        self.lock = threading.Lock()
        # The sentinel, published retained last, marks the end of what is there.
        publisher = paho.Client(CallbackAPIVersion.VERSION2)
        publisher.connect("127.0.0.1", broker.port)
        publisher.loop_start()
        publisher.publish(sentinel, b"end", qos=1, retain=True).wait_for_publish(10)
        publisher.loop_stop()
        publisher.disconnect()
        client = paho.Client(CallbackAPIVersion.VERSION2)
        client.on_message = lambda c, u, m: self._add(m.topic, m.payload)
        client.connect("127.0.0.1", broker.port)
        client.subscribe(topic_filter, qos=1)
        client.loop_start()
        try:
            wait_for(lambda: sentinel in self.messages, 10, "the retained sentinel")
        finally:
            client.loop_stop()
            client.disconnect()

    def _add(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.messages[topic] = payload


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.migrate()
    events = DeviceEvents()
    events.status["pi-1"] = ("online", T0 - timedelta(hours=1))
    s.write([], [], events)
    yield s
    s.close()


@pytest.fixture
def publisher(broker: MosquittoServer) -> Iterator[MqttConnection]:
    mqtt = MqttConnection(f"alerts-{uuid.uuid4().hex[:8]}", parse_broker_url(broker.url))
    mqtt.start()
    assert mqtt.wait_connected(10)
    yield mqtt
    mqtt.stop()


def test_hot_cpu_opens_a_retained_alert_and_cooling_closes_and_clears_it(
        store: Store, db_url: str, broker: MosquittoServer, prefix: str,
        publisher: MqttConnection) -> None:
    mids = []
    watcher = AlertWatcher(store, lambda t, p: mids.append(publisher.publish(t, p, retain=True)),
                           prefix, DEFAULT_RULES)
    hot = series("pi-1", T0, 70, sensors_cpu_celsius=lambda i: 82.0 + (i == 40) * 9.5)
    write_readings(store, hot, received_at=T0 + timedelta(seconds=70))
    now = T0 + timedelta(seconds=71)

    (opened,) = watcher.check(now)
    assert opened.action == "open" and opened.rule == "cpu_temperature_high"
    assert watcher.check(now) == []  # nothing new: no second open, no update
    topic = alert_topic(prefix, "pi-1", "cpu_temperature_high")
    held = Retained(broker, f"{prefix}/pi-1/alert/#", f"{prefix}/pi-1/alert/zz-end").messages
    payload = orjson.loads(held[topic])
    assert payload["peak_value"] == 91.5 and payload["started_at"] == T0.isoformat()
    assert payload["message"] == ("CPU temperature high: pi-1 peaked at 91.5 °C "
                                  "(threshold 80 °C)")

    cool = series("pi-1", T0 + timedelta(seconds=70), 3, sensors_cpu_celsius=60.0)
    write_readings(store, cool, received_at=T0 + timedelta(seconds=73))
    (closed,) = watcher.check(T0 + timedelta(seconds=74))
    assert closed.action == "close" and closed.ended_at == T0 + timedelta(seconds=70)
    held = Retained(broker, f"{prefix}/pi-1/alert/#", f"{prefix}/pi-1/alert/zz-end2").messages
    assert topic not in held  # the empty retained payload cleared it

    pool = StorePool(db_url, size=1)
    try:
        client = TestClient(create_app(FleetReader(pool), streamer=pool,
                                       health=lambda: HubHealth(True, None, 0),
                                       now=lambda: T0 + timedelta(seconds=80)))
        (alert,) = client.get("/api/alerts").json()
        assert alert["rule"] == "cpu_temperature_high" and alert["peak_value"] == 91.5
        assert alert["started_at"].startswith("2026-11-23T12:00:00")
        assert alert["ended_at"].startswith("2026-11-23T12:01:10")
        assert client.get("/api/fleet").json()["alerting"] == 0
    finally:
        pool.close()


def test_offline_device_alert_opens_after_n_intervals_and_is_republished(
        store: Store, broker: MosquittoServer, prefix: str, publisher: MqttConnection) -> None:
    events = DeviceEvents()
    events.status["pi-1"] = ("offline", T0)
    store.write([], [], events)
    published: list[str] = []

    def publish(topic: str, payload: bytes) -> None:
        published.append(topic)
        publisher.publish(topic, payload, retain=True)

    watcher = AlertWatcher(store, publish, prefix, DEFAULT_RULES)
    assert watcher.check(T0 + timedelta(seconds=59)) == []
    (opened,) = watcher.check(T0 + timedelta(seconds=61))
    assert opened.rule == "device_offline" and opened.started_at == T0
    # A restarted hub announces what is open again (retained, so late subscribers see it).
    restarted = AlertWatcher(store, publish, prefix, DEFAULT_RULES)
    assert restarted.republish_open() == 1
    assert published == [alert_topic(prefix, "pi-1", "device_offline")] * 2
    held = Retained(broker, f"{prefix}/pi-1/alert/#", f"{prefix}/pi-1/alert/zz-end").messages
    assert orjson.loads(held[published[0]])["rule"] == "device_offline"


def test_redelivered_hot_readings_do_not_open_a_second_alert(store: Store, prefix: str) -> None:
    watcher = AlertWatcher(store, lambda t, p: None, prefix, DEFAULT_RULES)
    hot = series("pi-1", T0, 70, sensors_cpu_celsius=85.0)
    write_readings(store, hot, received_at=T0 + timedelta(seconds=70))
    assert len(watcher.check(T0 + timedelta(seconds=71))) == 1
    write_readings(store, hot, received_at=T0 + timedelta(seconds=72))  # redelivered
    assert watcher.check(T0 + timedelta(seconds=72)) == []
    rows = store.query("select count(*) as n from alerts where ended_at is null")
    assert rows[0]["n"] == 1


class CountingStore:
    """The store, counting the readings each query of the watcher returns."""

    def __init__(self, store: Store) -> None:
        self.store, self.rows, self.largest_chunk = store, 0, 0

    def query(self, text: str, params: Any = None) -> list[dict[str, Any]]:
        return self.store.query(text, params)

    def stream(self, text: str, params: Any = None, chunk_rows: int = 5000
               ) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]:
        for names, rows in self.store.stream(text, params, chunk_rows):
            self.rows += len(rows)
            self.largest_chunk = max(self.largest_chunk, len(rows))
            yield names, rows

    def execute(self, statements: Any) -> None:
        self.store.execute(statements)


def test_each_round_reads_only_new_readings_and_keeps_no_window(
        store: Store, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hub.watch.READ_CHUNK_ROWS", 16)  # a round's readings, 16 at a time
    counting = CountingStore(store)
    watcher = AlertWatcher(counting, lambda t, p: None, prefix, DEFAULT_RULES)
    window = int(window_s(DEFAULT_RULES))
    first = series("pi-1", T0, 30, sensors_cpu_celsius=85.0)
    write_readings(store, first, received_at=T0 + timedelta(seconds=30))
    run = watcher.load().runs["pi-1"]["cpu_temperature_high"]
    assert counting.rows == 30 and run.ts == first[-1]["ts"]
    later = series("pi-1", T0 + timedelta(seconds=30), window + 20, sensors_cpu_celsius=85.0)
    write_readings(store, later, received_at=T0 + timedelta(seconds=window + 50))
    counting.rows = 0
    run = watcher.load().runs["pi-1"]["cpu_temperature_high"]
    # Only what is new, and of that only the window before the newest.
    assert counting.rows == len([r for r in later
                                 if (later[-1]["ts"] - r["ts"]).total_seconds() < window])
    assert run.ts == later[-1]["ts"]
    assert run.since == first[0]["ts"]  # a run longer than the window keeps its start
    assert counting.largest_chunk == 16
    counting.rows = 0
    watcher.load()
    assert counting.rows == 0
