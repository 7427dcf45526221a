"""Forecasters and time-to-threshold of hub/detect/forecast.py, checked by hand."""

import numpy as np
import pytest

from hub.detect.forecast import DampedHolt, Linear, Persistence, forecast, steps_to_threshold


def test_steps_to_threshold_on_a_straight_line():
    got = steps_to_threshold(np.array([50.0, 50.0, 50.0, 60.0]), np.array([2.0, -2.0, 0.0, 1.0]),
                             60.0)
    assert list(got) == [5.0, np.inf, np.inf, 0.0]


def test_steps_to_threshold_with_damping_reaches_only_what_the_trend_can_add():
    # level 0, trend 1, phi 0.5: the forecast tends to 1 (= trend phi / (1 - phi)).
    assert steps_to_threshold(np.array([0.0]), np.array([1.0]), 0.75, phi=0.5)[0] == (
        pytest.approx(2.0))  # 0.5 + 0.25
    assert steps_to_threshold(np.array([0.0]), np.array([1.0]), 2.0, phi=0.5)[0] == np.inf
    assert forecast(np.array([0.0]), np.array([1.0]), 2, phi=0.5)[0] == pytest.approx(0.75)


def test_linear_recovers_a_line_and_predicts_its_crossing():
    f = Linear(2, window=10)
    for t in range(30):
        f.step(np.array([1e9 + 3.0 * t, 7.0]))
    assert f.trend == pytest.approx([3.0, 0.0])
    assert f.level == pytest.approx([1e9 + 87.0, 7.0])
    assert steps_to_threshold(f.level, f.trend, 1e9 + 99.0)[0] == pytest.approx(4.0)


def test_damped_holt_follows_a_ramp_and_persistence_never_predicts():
    h, p = DampedHolt(1, alpha=0.5, beta=0.3, phi=0.99), Persistence(1)
    for t in range(300):
        h.step(np.array([0.5 * t]))
        p.step(np.array([0.5 * t]))
    assert h.trend[0] == pytest.approx(0.5, rel=0.05)
    assert np.isfinite(steps_to_threshold(h.level, h.trend, 160.0, phi=h.phi)[0])
    assert steps_to_threshold(p.level, p.trend, 160.0)[0] == np.inf


def test_nan_leaves_forecasters_unchanged():
    h = DampedHolt(1)
    for v in (1.0, 2.0, 3.0):
        h.step(np.array([v]))
    level, trend = h.level.copy(), h.trend.copy()
    h.step(np.array([np.nan]))
    assert h.level == level and h.trend == trend
