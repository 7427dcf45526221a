"""Process samples against a real PostgreSQL: stored once, read back exactly, by time, kept
``process_days``; a bad section quarantined while its reading is stored."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from fastapi.testclient import TestClient

from hub.alerts import DEFAULT_RULES
from hub.api import HubHealth, create_app
from hub.ingest.batch import Ack, Batch, Inbound
from hub.ingest.validate import validate
from hub.ingest.write import write_batch
from hub.read import FleetReader
from hub.retention import Retention, housekeep
from hub.store import Store, StorePool
from tests.unit.hub.messages import metrics
from tests.unit.hub.test_processes import info, section

NOW = datetime.now(UTC).replace(microsecond=0)
HEALTHY = HubHealth(broker_connected=True, last_write_at=NOW, backlog=0, received=0, stored=0,
                    quarantined=0)


def message(seq: int, at: datetime, procs: Any = None, device: str = "pi-1") -> Inbound:
    m = metrics(device_id=device, seq=seq, epoch_s=at.timestamp())
    if procs is not None:
        m["processes"] = procs
    return Inbound(f"fp/{device}/metrics", orjson.dumps(m), at, Ack(seq, 1, 0))


def store_messages(store: Store, messages: list[Inbound]) -> None:
    batch = Batch(opened_at=0.0)
    for m in messages:
        batch.add(m, validate(m.topic, m.payload, m.received_at, "fp"))
    assert write_batch(store, batch, threading.Event()) is not None


def count(store: Store, table: str) -> int:
    return int(store.query(f"select count(*) as n from {table}")[0]["n"])


def test_samples_are_stored_once_even_when_redelivered(store: Store) -> None:
    first = section()
    busy = section(top_cpu=[info(99, 180.5, name="make")], top_memory=[])
    messages = [message(1, NOW - timedelta(seconds=30), first),
                message(2, NOW - timedelta(seconds=29)),
                message(3, NOW - timedelta(seconds=20), busy)]
    store_messages(store, messages)
    store_messages(store, messages)  # the broker's redelivery after a restart
    assert count(store, "metrics") == 3 and count(store, "processes") == 2
    rows = store.query("select seq, pid, top_cpu_n, top_memory from processes order by seq")
    assert [(r["seq"], r["pid"], r["top_cpu_n"], r["top_memory"]) for r in rows] == [
        (1, [10, 11, 1, 20], 3, [4, 2, 1]), (3, [99], 1, [])]


def test_a_bad_section_is_quarantined_with_its_reason_and_the_reading_stored(store: Store) -> None:
    bad = section()
    bad["top_memory"][1]["status"] = "x" * 40
    store_messages(store, [message(1, NOW, bad), message(2, NOW + timedelta(seconds=1),
                                                          section(count=9))])
    assert count(store, "metrics") == 2 and count(store, "processes") == 0
    reasons = [r["reason"] for r in store.query("select reason from quarantine order by id")]
    assert len(reasons) == 2
    assert "processes.top_memory.1.status" in reasons[0]
    assert "processes.count is 9" in reasons[1]
    assert all(r.startswith("processes section left out (the reading is stored") for r in reasons)


def test_old_samples_go_after_process_days(store: Store) -> None:
    store_messages(store, [message(1, NOW - timedelta(days=3), section()),
                           message(2, NOW - timedelta(hours=1), section())])
    housekeep(store, Retention(30, 90, 730, process_days=2), NOW)
    assert [r["seq"] for r in store.query("select seq from processes")] == [2]


def test_the_api_gives_the_sample_in_force_at_a_time_and_the_history(store: Store,
                                                                      db_url: str) -> None:
    t0 = NOW - timedelta(minutes=5)
    store_messages(store, [message(i + 1, t0 + timedelta(seconds=10 * i),
                                   section(top_cpu=[info(100 + i, float(i), name=f"job{i}")]))
                           for i in range(30)])
    pool = StorePool(db_url, size=2)
    try:
        app = create_app(FleetReader(pool), streamer=pool, health=lambda: HEALTHY,
                         rules=DEFAULT_RULES, now=lambda: NOW)
        client = TestClient(app)
        latest = client.get("/api/devices/pi-1/processes").json()
        assert latest["sample"]["seq"] == 30
        assert latest["sample"]["top_cpu"][0] == {**info(129, 29.0, name="job29")}
        assert latest["sample"]["top_memory"] == section()["top_memory"]
        at = (t0 + timedelta(seconds=55)).isoformat()
        then = client.get("/api/devices/pi-1/processes", params={"at": at}).json()
        assert then["sample"]["seq"] == 6 and then["sample"]["top_cpu"][0]["name"] == "job5"
        before = client.get("/api/devices/pi-1/processes", params={"at": "2020-01-01T00:00Z"})
        assert before.status_code == 200 and before.json()["sample"] is None
        assert client.get("/api/devices/nope/processes").status_code == 404
        history = client.get("/api/devices/pi-1/processes/history",
                             params={"start": "15m"}).json()
        assert [s["seq"] for s in history["samples"]] == list(range(1, 31))
        assert history["samples"][4]["top_cpu_name"] == "job4"
        assert history["samples"][4]["top_memory_name"] == "postgres"
        assert history["samples"][4]["top_memory_rss_bytes"] == 10**9
        thinned = client.get("/api/devices/pi-1/processes/history",
                             params={"start": "15m", "max_samples": 10}).json()["samples"]
        assert [s["seq"] for s in thinned] == [1, 4, 7, 10, 13, 16, 19, 22, 25, 28]
        wrong = client.get("/api/devices/pi-1/processes/history", params={"start": "40d"})
        assert wrong.status_code == 422 and "31 days" in wrong.json()["detail"]
    finally:
        pool.close()
