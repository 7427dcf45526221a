"""Anomaly models in a real PostgreSQL: trained from both tiers, versioned, too little history
said, retrained by the hub's Retrainer when due, loaded again as a restarted hub does."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import numpy as np

from hub.detect.features import SOURCE_COLUMNS, signal_rows
from hub.detect.live import LiveScorer
from hub.models import (
    KEEP_VERSIONS,
    Retrainer,
    StoredModel,
    latest_models,
    read_history,
    run_train,
    train_device,
)
from hub.retention import ColdStats, Compactor, Retention
from hub.store import Store
from shared.schema import metrics_columns
from tests.readings import partition, series, write_readings

NOW = datetime.now(UTC).replace(microsecond=0)


def _history(store: Store, device: str, count: int, start: datetime) -> None:
    rng = np.random.default_rng(len(device))
    write_readings(store, series(
        device, start, count, cpu_percent=lambda i: float(10 + rng.normal(0, 2)),
        cpu_per_core_percent=lambda i: [12.0 + i % 5, 8.0], cpu_load_1=0.5,
        sensors_temperatures=lambda i: [] if i % 3 == 0 else [
            {"sensor": "cpu_thermal", "label": "", "celsius": 50.0 + i % 7},
            {"sensor": "nvme", "label": "Composite", "celsius": 41.5}],
        memory_available_bytes=lambda i: 2 ** 30 + i, memory_total_bytes=2 ** 31,
        disk_partitions=[partition("/", 40.0)]))


def test_history_of_both_tiers_trains_a_versioned_model(store: Store) -> None:
    # Two hours ago, an hour of readings, then compacted into the cold tier; plus 10 hot ones.
    old = (NOW - timedelta(hours=3)).replace(minute=0, second=0)
    _history(store, "pi-1", 600, old)
    _history(store, "pi-1", 10, NOW - timedelta(minutes=5))
    compactor = Compactor(store, Retention(30, 90, 730, hot_window_h=1), ColdStats(),
                          clock=lambda: NOW)
    assert compactor.round() == 1
    assert store.query("select count(*) as n from metrics where device_id = 'pi-1'")[0]["n"] \
        == 10
    history = read_history(store, "pi-1", NOW - timedelta(hours=4), NOW)
    assert len(history.signals) == 610 and history.start == old
    rows = store.query("select ts, " + ", ".join(SOURCE_COLUMNS) + " from metrics_history("
                       "'pi-1', %s, %s) order by ts", (NOW - timedelta(hours=4), NOW))
    expected = signal_rows([tuple(r[c] for c in SOURCE_COLUMNS) for r in rows])
    np.testing.assert_array_equal(history.signals, expected)

    first = train_device(store, "pi-1", kind="novelty", window_h=4, min_readings=500, now=NOW)
    assert first.model is not None and first.model.version == 1
    assert first.model.history_rows == 610 and first.cpu_s > 0
    for n in range(2, KEEP_VERSIONS + 3):
        again = train_device(store, "pi-1", kind="novelty", window_h=4, min_readings=500,
                             now=NOW + timedelta(seconds=n))
        assert again.model is not None and again.model.version == n
    versions = [r["version"] for r in store.query(
        "select version from detector_models where device_id = 'pi-1' order by 1")]
    newest_version = KEEP_VERSIONS + 2
    assert versions == list(range(newest_version - KEEP_VERSIONS + 1, newest_version + 1))
    (newest,) = latest_models(store)
    assert newest.version == KEEP_VERSIONS + 2 and newest.kind == "novelty"
    state = store.query("select outcome, message from detector_training")[0]
    assert state["outcome"] == "trained" and "on 610 readings" in state["message"]


def test_too_little_history_is_recorded_and_said_one_line_per_device(store: Store) -> None:
    _history(store, "big", 300, NOW - timedelta(minutes=10))
    _history(store, "small", 20, NOW - timedelta(minutes=1))
    out = io.StringIO()
    assert run_train(store, device_id=None, kind="novelty", window_h=1, min_readings=100,
                     now=NOW, out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[1/2] big: trained v1 (novelty) on 300 readings")
    assert lines[1].startswith("[2/2] small: too little history: 20 readings, a model needs "
                               "100 (train_min_readings)")
    assert lines[2].startswith("Trained 1 of 2 devices")
    assert run_train(store, device_id="small", kind="novelty", window_h=1, min_readings=100,
                     now=NOW, out=io.StringIO()) == 1
    unknown = io.StringIO()
    assert run_train(store, device_id="nope", kind="novelty", window_h=1, min_readings=100,
                     now=NOW, out=unknown) == 1
    assert unknown.getvalue() == "Cannot train: device 'nope' is not known.\n"
    outcomes = {r["device_id"]: r["outcome"] for r in store.query(
        "select device_id, outcome from detector_training")}
    assert outcomes == {"big": "trained", "small": "too_little_history"}


def test_retrainer_trains_what_is_due_and_a_restarted_hub_scores_with_the_stored_model(
        store: Store) -> None:
    _history(store, "a", 300, NOW - timedelta(minutes=10))
    _history(store, "b", 20, NOW - timedelta(minutes=1))
    installed: list[StoredModel] = []
    clock = [NOW]
    retrainer = Retrainer(store, installed.append, kind="novelty", window_h=1,
                          min_readings=100, retrain_h=24, duty=1.0, clock=lambda: clock[0],
                          retry_s=3600)
    assert retrainer.round() == 1
    assert [m.device_id for m in installed] == ["a"]
    assert retrainer.round() == 0  # a's model is fresh, b waits retry_s
    clock[0] = NOW + timedelta(hours=25)
    _history(store, "a", 300, clock[0] - timedelta(minutes=10))
    assert retrainer.round() == 1 and installed[-1].version == 2  # older than retrain_h
    # A restart: a new scorer gets the newest model before any reading.
    scorer = LiveScorer([c.name for c in metrics_columns()])
    again = Retrainer(store, lambda m: scorer.install(m.device_id, m.detector),
                      kind="novelty", window_h=1, min_readings=100, retrain_h=0, duty=1.0,
                      clock=lambda: clock[0])
    assert again.load_all() == 1 and again.versions == {"a": 2}
    rows = [tuple(None if c.name != "device_id" else "a" for c in metrics_columns())]
    scored = scorer.score(rows)
    assert scored[0][-1] is not None
    # A model trained elsewhere (fleetpulse-hub train) is picked up.
    train_device(store, "a", kind="novelty", window_h=30, min_readings=100, now=clock[0])
    assert again.pick_up() == 1 and again.versions == {"a": 3}
    # A model an older hub trained over other signals is not used, and its device is due now
    # (not only once the model is older than retrain_h).
    store.execute([("update detector_models set signals = signals[1:15] where device_id = 'a'",
                    None)])
    assert latest_models(store, ["a"]) == []
    assert retrainer.round() == 1 and installed[-1].version == 4
