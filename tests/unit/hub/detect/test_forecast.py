"""Forecasters and time-to-threshold of hub/detect/forecast.py, checked by hand."""

import math

import numpy as np
import pytest

from hub.detect.forecast import (
    DampedHolt,
    Line,
    Linear,
    Persistence,
    forecast,
    steps_to_threshold,
    steps_to_threshold_1,
)


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


def test_the_scalar_line_fits_as_linear_does_with_gaps_and_large_values():
    rng = np.random.default_rng(7)
    values = list(1e9 + np.cumsum(rng.normal(0.5, 3.0, 80)))
    values[0:2] = [math.nan, math.nan]  # before the first value
    values[40:43] = [math.nan] * 3  # a gap: the previous value repeats
    line, linear = Line(window=12), Linear(1, window=12)
    for v in values:
        line.step(v)
        linear.step(np.array([v]))
        assert line.level == pytest.approx(linear.level[0], rel=0, abs=1e-6)
        assert line.trend == pytest.approx(linear.trend[0], rel=0, abs=1e-9)
        assert len(line.values) <= 12  # it holds its window, not the stream
    assert abs(line.trend) > 0.01  # a line was fitted


def test_steps_to_threshold_of_one_stream_agrees_with_the_array_form():
    cases = [(50.0, 2.0, 60.0), (50.0, -2.0, 60.0), (50.0, 0.0, 60.0), (60.0, 0.0, 60.0),
             (60.0, 1.0, 50.0), (0.0, 1.0, 0.75), (0.0, 1.0, 2.0), (math.nan, 1.0, 5.0),
             (5.0, math.nan, 9.0), (-3.0, -0.5, -10.0)]
    for phi in (1.0, 0.98, 0.5):
        for level, trend, threshold in cases:
            want = steps_to_threshold(np.array([level]), np.array([trend]), threshold, phi)[0]
            got = steps_to_threshold_1(level, trend, threshold, phi)
            assert got == pytest.approx(want), (level, trend, threshold, phi)
