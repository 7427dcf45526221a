"""Detectors of hub/detect on small hand-made series: they flag what they should, stay quiet
on noise, handle NaN, and a model round-trips through bytes mid-stream."""

import numpy as np
import pytest

from hub.detect import model
from hub.detect.gaussian import WindowedGaussian
from hub.detect.novelty import Novelty, shift_history


def _noise(rows, k, seed=0):
    return np.random.default_rng(seed).normal(50.0, 1.0, (rows, k))


def _run(det, rows):
    return np.array([det.step(r) for r in rows])


def _raw(scores):
    return scores / (1.0 - scores)  # undo squash


@pytest.mark.parametrize("make", [lambda k: WindowedGaussian(k, window=200),
                                  lambda k: Novelty(k)])
def test_spike_scores_far_above_noise(make):
    x = _noise(600, 2)
    x[500, 0] = 80.0  # stream 0 spikes; stream 1 is noise throughout
    raw = _raw(_run(make(2), x))
    assert raw[500, 0] > 3 * raw[300:500, 0].max()
    assert raw[500, 0] > 3 * raw[300:, 1].max()


@pytest.mark.parametrize("make", [lambda k: WindowedGaussian(k, window=200),
                                  lambda k: Novelty(k)])
def test_scores_are_in_unit_interval_and_nan_is_skipped(make):
    x = _noise(400, 3)
    x[100:120, 1] = np.nan
    s = _run(make(3), x)
    assert ((s >= 0) & (s < 1)).all()
    assert (s[100:120, 1] == 0).all()


def test_gaussian_z_matches_direct_computation():
    x = _noise(300, 1)
    x[250, 0] = 60.0
    s = _run(WindowedGaussian(1, window=100), x)
    w = x[150:250, 0]
    z = abs(60.0 - w.mean()) / w.std()
    assert s[250, 0] / (1 - s[250, 0]) == pytest.approx(z, rel=1e-6)


def test_gaussian_keeps_precision_on_large_values():
    # bytes/s around 1e9 with a spread of 1: sums of squares must not swamp the variance.
    x = 1e9 + _noise(300, 1) - 50.0
    s = _run(WindowedGaussian(1, window=100), x)
    assert s[150:, 0].max() < 0.9


def test_novelty_flags_a_new_record_even_when_small_in_z():
    # A slow sine; then a value just above its highest ever.
    t = np.arange(800)
    x = (np.sin(t / 20.0) * 10.0)[:, None]
    x[660, 0] = 10.5  # at a crest (sin(33) = 0.9999): a small step up
    s = _raw(_run(Novelty(1), x))
    assert s[660, 0] == pytest.approx(1.0 + 0.5 / 20.0, rel=1e-3)  # 1 + excess / range
    assert s[660, 0] > s[300:660, 0].max()


def test_novelty_raises_its_score_when_a_pattern_changes_inside_the_range():
    # A noisy sine of period 50; rows 2500-2559 go flat at its middle value, inside the range.
    t = np.arange(3000)
    rng = np.random.default_rng(1)
    base = np.sin(2 * np.pi * t / 50) * 10 + rng.normal(0, 0.3, len(t))
    changed = base.copy()
    changed[2500:2560] = rng.normal(0, 0.3, 60)
    # The sequence part alone (the shifted-level part off): it sees the changed pattern.
    s_base = _raw(_run(Novelty(1, shift_scale=np.inf), base[:, None]))[2500:2560, 0]
    s_changed = _raw(_run(Novelty(1, shift_scale=np.inf), changed[:, None]))[2500:2560, 0]
    assert s_changed.max() > 2 * s_base.max()


def test_novelty_flags_a_sustained_shift_that_no_single_value_shows():
    # Noise of deviation 1 around 50; from row 3000 the level moves up by 2 deviations.
    x = _noise(3300, 1, seed=3)
    x[3000:, 0] += 2.0
    s = _raw(_run(Novelty(1), x))[:, 0]
    without = _raw(_run(Novelty(1, shift_scale=np.inf), x))[:, 0]  # the shift part off
    assert s[3010:3060].mean() > 2 * s[2000:3000].mean()
    assert s[3010:3060].mean() > 2 * without[3010:3060].mean()


def test_a_floor_quiets_what_is_near_the_level_and_leaves_a_fault_alone():
    # A quiet stream (deviation 0.01 around 1): a new record by 0.1 is clearly anomalous
    # without a floor; with a floor of 0.5 it is a fifth of a floor from the level and counts
    # a fifth. A fault many floors away (a jump to 10) scores the same either way.
    x = np.random.default_rng(4).normal(1.0, 0.01, (1200, 1))
    small, fault = x.copy(), x.copy()
    small[1100:, 0] = 1.1
    fault[1100:, 0] = 10.0
    floored = Novelty(1)
    floored.fit(x[:1000])
    plain = Novelty.from_bytes(floored.to_bytes())
    floored.state["floor"] = np.array([0.5])
    for data in (small, fault):
        a, b = (Novelty.from_bytes(d.to_bytes()) for d in (floored, plain))
        with_floor, without = _raw(_run(a, data[1000:])), _raw(_run(b, data[1000:]))
        if data is small:
            assert without[100, 0] > 1.0  # a new record: above 1 (0.5 once squashed)
            np.testing.assert_allclose(with_floor[100:110], without[100:110] * 0.2, rtol=0.05)
        else:
            np.testing.assert_array_equal(with_floor[100:], without[100:])


def test_clipped_training_keeps_bursts_in_the_history_from_hiding_a_sustained_shift():
    # A quiet stream (3 ± 1) whose history holds two 40-reading bursts at 90, then live a
    # sustained move to 60: the bursts inflate the slow deviation the shift is measured
    # against. Held within 4 robust deviations (or floors of 10) of the median in training,
    # they count for less: the deviation drops by a third, the shift scores higher, and the
    # quiet readings before it do not score higher.
    rng = np.random.default_rng(5)
    history = rng.normal(3.0, 1.0, (3000, 1))
    for start in (700, 2200):
        history[start:start + 40, 0] = rng.normal(90.0, 3.0, 40)
    live = rng.normal(3.0, 1.0, (400, 1))
    live[200:320, 0] = rng.normal(60.0, 1.0, 120)
    runs = {}
    for clip in (0.0, 4.0):
        det = Novelty(1, shift_clip=clip)
        det.fit(history, np.array([10.0]))
        runs[clip] = (float(np.sqrt(det.state["slow_var"][0])), _run(det, live)[:, 0])
    (plain_sd, plain), (held_sd, held) = runs[0.0], runs[4.0]
    assert held_sd < 0.7 * plain_sd
    assert held[215:320].mean() > 1.3 * plain[215:320].mean()
    assert held[:200].max() <= plain[:200].max()


def test_clipping_leaves_a_history_within_its_bounds_alone():
    h = np.random.default_rng(6).normal(0.0, 1.0, (500, 2))
    h[3, 1] = np.nan
    np.testing.assert_array_equal(shift_history(h, 0.0, np.zeros(2)), h)
    held = shift_history(h, 10.0, np.zeros(2))  # 10 robust deviations: nothing that far
    np.testing.assert_array_equal(held, h)
    h[7, 0] = 100.0
    assert shift_history(h, 4.0, np.zeros(2))[7, 0] == pytest.approx(
        np.median(h[:, 0]) + 4 * 1.4826 * np.median(np.abs(h[:, 0] - np.median(h[:, 0]))))


def test_a_model_stored_before_floors_loads_with_none():
    det = Novelty(2)
    det.fit(_noise(300, 2))
    del det.state["floor"]
    again = Novelty.from_bytes(det.to_bytes())
    np.testing.assert_array_equal(again.state["floor"], [0.0, 0.0])


def test_novelty_waits_for_its_fit_rows_then_scores():
    det = Novelty(2, fit_rows=50)
    s = _run(det, _noise(50, 2))
    assert (s == 0).all() and det.fitted
    assert det.step(np.array([50.0, 500.0]))[1] > 0.9


@pytest.mark.parametrize("make", [lambda: WindowedGaussian(2, window=50), lambda: Novelty(2)])
def test_model_round_trips_through_bytes_mid_stream(make):
    x = _noise(400, 2)
    a = make()
    _run(a, x[:300])
    b = type(a).from_bytes(a.to_bytes())
    np.testing.assert_array_equal(_run(a, x[300:]), _run(b, x[300:]))


def test_fit_then_score_equals_streaming_the_history():
    x = _noise(500, 2)
    streamed = Novelty(2, fit_rows=300)
    _run(streamed, x[:300])
    fitted = Novelty(2)
    fitted.fit(x[:300])
    np.testing.assert_allclose(_run(streamed, x[300:]), _run(fitted, x[300:]))


def test_loading_another_kind_of_model_is_refused():
    data = WindowedGaussian(1, window=10).to_bytes()
    with pytest.raises(ValueError, match="windowed_gaussian"):
        Novelty.from_bytes(data)


def test_squash_keeps_order_and_stays_below_one():
    z = np.array([0.0, 0.5, 3.0, 1e6])
    s = model.squash(z)
    assert (np.diff(s) > 0).all() and s[0] == 0 and s[-1] < 1


def test_novelty_stream_without_history_waits_then_scores_from_its_own_values():
    h = _noise(200, 2)
    h[:, 1] = np.nan  # signal 1 appears only after training (a sensor plugged in later)
    det = Novelty(2, fit_rows=150)
    det.fit(h)
    later = _noise(400, 2, seed=5) + np.array([0.0, 1000.0])
    s = _run(det, later)
    assert (s[:150, 1] == 0).all()  # too little history: no opinion
    assert s[200:, 1].max() < 0.9  # its level is its own, not the 0 it started from
