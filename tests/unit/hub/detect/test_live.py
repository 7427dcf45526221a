"""Training and live scoring in the hub (pure parts): signals of a reading, the vectorised
Novelty fit against the row-by-row one, too little history, and batched scoring that gives
each device the scores its own detector would."""

from datetime import UTC, datetime

import numpy as np
import pytest

from hub.detect.features import (
    FIXED_FLOORS,
    SIGNALS,
    SOURCE_COLUMNS,
    signal_floors,
    signal_rows,
    signal_values,
)
from hub.detect.live import LiveScorer
from hub.detect.novelty import Novelty
from hub.detect.train import TooLittleHistory, fit_novelty, load_detector, train
from shared.schema import metrics_columns


def _raw(cpu=10.0, cores=(12.0, 8.0), temps=({"sensor": "a", "label": "", "celsius": 40.0},
                                              {"sensor": "b", "label": "", "celsius": 55.5})):
    values = dict.fromkeys(SOURCE_COLUMNS, 1.0)
    values.update(cpu_percent=cpu, cpu_per_core_percent=list(cores),
                  sensors_temperatures=list(temps), memory_swap_used_bytes=None)
    return [values[c] for c in SOURCE_COLUMNS]


def test_signals_spread_hottest_and_missing_values():
    values = dict(zip(SIGNALS, signal_values(_raw()), strict=True))
    assert values["cpu_percent"] == 10.0
    assert values["cpu_core_spread_percent"] == 4.0
    assert values["max_temperature_celsius"] == 55.5
    assert np.isnan(values["memory_swap_used_bytes"])
    empty = dict(zip(SIGNALS, signal_values(_raw(cores=(), temps=())), strict=True))
    assert np.isnan(empty["cpu_core_spread_percent"])
    assert np.isnan(empty["max_temperature_celsius"])
    assert signal_rows([]).shape == (0, len(SIGNALS))


def _history(rows, k, seed=0):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(rows, k)).cumsum(axis=0) * np.linspace(1, 1e6, k)
    h[rng.random(h.shape) < 0.05] = np.nan
    h[:, 1] = np.nan  # a signal the device never has
    h[:300, 2] = np.nan  # one that starts late
    return h


@pytest.mark.parametrize("clip", [0.0, 4.0])
def test_vectorised_fit_leaves_the_state_novelty_fit_leaves(clip):
    h = _history(3000, 6)
    floors = np.array([0.0, 0.0, 5.0, 0.0, 1e5, 0.0])
    slow, fast = Novelty(k=6, shift_clip=clip), Novelty(k=6, shift_clip=clip)
    slow.fit(h, floors)
    fit_novelty(fast, h, floors)
    assert slow.state.keys() == fast.state.keys()
    for name in slow.state:
        np.testing.assert_allclose(fast.state[name], slow.state[name], rtol=1e-9,
                                   err_msg=name)
    x = h[-1] * 1.5
    np.testing.assert_allclose(fast.step(x), slow.step(x), rtol=1e-9)


def test_a_trained_model_has_each_signals_floor_memory_by_the_most_available():
    h = np.full((300, len(SIGNALS)), 1.0)
    memory = SIGNALS.index("memory_available_bytes")
    h[:, memory] = np.linspace(3e9, 4e9, 300)
    h[10, memory] = np.nan
    floors = dict(zip(SIGNALS, signal_floors(h), strict=True))
    assert floors["memory_available_bytes"] == pytest.approx(0.01 * 4e9)
    assert floors["memory_swap_used_bytes"] == pytest.approx(0.01 * 4e9)
    assert floors["cpu_load_1"] == FIXED_FLOORS["cpu_load_1"] > 0
    h[:, memory] = np.nan  # no memory figure: no memory floor, the others stand
    assert signal_floors(h)[memory] == 0.0
    detector = train(_history(300, len(SIGNALS)), "novelty", 100)
    assert isinstance(detector, Novelty)
    np.testing.assert_array_equal(detector.state["floor"][SIGNALS.index("cpu_percent")],
                                  FIXED_FLOORS["cpu_percent"])


def test_too_little_history_says_how_much_there_is_and_what_is_needed():
    h = _history(100, 4)
    h[:30] = np.nan  # rows without any value are not readings
    outcome = train(h, "novelty", 200)
    assert isinstance(outcome, TooLittleHistory)
    assert outcome.rows == 70
    assert "70 readings, a model needs 200" in outcome.message


@pytest.mark.parametrize("kind", ["novelty", "windowed_gaussian"])
def test_trained_detector_round_trips_through_bytes(kind):
    detector = train(_history(400, len(SIGNALS)), kind, 100)
    assert not isinstance(detector, TooLittleHistory)
    again = load_detector(kind, detector.to_bytes())
    x = _history(401, len(SIGNALS))[-1]
    np.testing.assert_allclose(again.step(x), detector.step(x))


def _rows(device_ids, cpu):
    columns = [c.name for c in metrics_columns()]
    rows = []
    for device, value in zip(device_ids, cpu, strict=True):
        values = dict.fromkeys(columns)
        values.update(zip(SOURCE_COLUMNS, _raw(cpu=value), strict=True))
        values["device_id"] = device
        values["ts"] = datetime(2026, 11, 30, tzinfo=UTC)
        rows.append(tuple(values[c] for c in columns))
    return columns, rows


def _quiet(seed):
    rng = np.random.default_rng(seed)
    return np.array([signal_values(_raw(cpu=v)) for v in 10 + rng.normal(0, 1, 400)])


@pytest.mark.parametrize("devices", [3, 8])
def test_batched_scores_equal_each_devices_own_detector(devices):
    ids = [f"dev-{i}" for i in range(devices)]
    models = {d: train(_quiet(i), "novelty", 200) for i, d in enumerate(ids)}
    own = {d: load_detector("novelty", m.to_bytes()) for d, m in models.items()}
    columns, _ = _rows([], [])
    scorer = LiveScorer(columns)
    for d, m in models.items():
        scorer.install(d, m)
    rng = np.random.default_rng(7)
    score_at = columns.index("anomaly_score")
    for _ in range(3):
        # Uneven batches: some devices twice, some absent (both stepping paths), plus a
        # device without a model.
        batch = [d for d in ids if rng.random() < 0.7] + ids[:2] + ["no-model"]
        cpu = list(10 + rng.normal(0, 1, len(batch)))
        cpu[0] = 95.0
        _, rows = _rows(batch, cpu)
        scored = scorer.score(rows)
        for row, original, device, value in zip(scored, rows, batch, cpu, strict=True):
            assert row[:score_at] == original[:score_at]
            if device == "no-model":
                assert row[score_at] is None
                continue
            expected = own[device].step(np.array(signal_values(_raw(cpu=value)))).max()
            assert row[score_at] == pytest.approx(expected, rel=1e-9)
    assert scorer.stats.readings > 0 and scorer.stats.us_per_reading is not None


def test_a_spike_scores_higher_than_quiet_readings():
    columns, _ = _rows([], [])
    scorer = LiveScorer(columns)
    scorer.install("a", train(_quiet(0), "novelty", 200))
    score_at = columns.index("anomaly_score")
    quiet = [scorer.score(_rows(["a"], [10.0])[1])[0][score_at] for _ in range(20)]
    spike = scorer.score(_rows(["a"], [99.0])[1])[0][score_at]
    assert spike > 0.5 > max(quiet)


def test_a_newer_model_replaces_the_devices_state_and_leaves_the_others_alone():
    columns, _ = _rows([], [])
    score_at = columns.index("anomaly_score")
    scorer = LiveScorer(columns)
    first = {d: train(_quiet(i), "novelty", 200) for i, d in enumerate(["a", "b"])}
    for d, m in first.items():
        scorer.install(d, m)
    own_b = load_detector("novelty", first["b"].to_bytes())
    scorer.score(_rows(["a", "b"], [10.0, 10.0])[1])
    own_b.step(np.array(signal_values(_raw(cpu=10.0))))
    newer = train(_quiet(9) * 3, "novelty", 200)
    own_a = load_detector("novelty", newer.to_bytes())
    scorer.install("a", newer)
    third = train(_quiet(5), "novelty", 200)  # a new device in the same round of installs
    own_c = load_detector("novelty", third.to_bytes())
    scorer.install("c", third)
    (row_a, row_b, row_c) = scorer.score(_rows(["a", "b", "c"], [30.0, 30.0, 30.0])[1])
    x = np.array(signal_values(_raw(cpu=30.0)))
    assert row_a[score_at] == pytest.approx(own_a.step(x).max(), rel=1e-9)
    assert row_b[score_at] == pytest.approx(own_b.step(x).max(), rel=1e-9)
    assert row_c[score_at] == pytest.approx(own_c.step(x).max(), rel=1e-9)
    assert scorer.devices == 3


def test_a_retrained_model_with_a_clipped_history_replaces_one_trained_before_the_clip():
    # A hub started with models stored before shift_clip existed (0): the device's
    # retrained model (4) must take its place in the stack, not be left out of it.
    columns, _ = _rows([], [])
    score_at = columns.index("anomaly_score")
    scorer = LiveScorer(columns)
    old = train(_quiet(0), "novelty", 200)
    old.shift_clip = 0.0
    scorer.install("a", load_detector("novelty", old.to_bytes()))
    scorer.install("b", train(_quiet(1), "novelty", 200))
    scorer.score(_rows(["a", "b"], [10.0, 10.0])[1])
    newer = train(_quiet(9) * 3, "novelty", 200)
    assert newer.shift_clip > 0.0
    own_a = load_detector("novelty", newer.to_bytes())
    scorer.install("a", newer)
    (row_a, _) = scorer.score(_rows(["a", "b"], [30.0, 30.0])[1])
    x = np.array(signal_values(_raw(cpu=30.0)))
    assert row_a[score_at] == pytest.approx(own_a.step(x).max(), rel=1e-9)
    assert scorer.devices == 2
