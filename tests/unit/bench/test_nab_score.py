"""NAB scoring (bench/nab/score.py) on hand-made series whose scores are computed by hand."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.nab import score
from bench.nab.score import LOW_FN, LOW_FP, PROFILES, STANDARD, Labels

# 100 rows: probation is rows 0-14; one window of 10 rows, 40-49.
ONE = Labels(100, ((40, 49),))


def _fires(n, rows):
    s = np.zeros(n)
    s[list(rows)] = 1.0
    return s


def _raw(rows, labels=ONE, profile=STANDARD):
    return score.score_series(_fires(labels.n_rows, rows), score.weights(labels), 0.5, profile).raw


def test_scaled_sigmoid_matches_the_published_points():
    # NAB's documented values: left edge 0.98661, mid-window 0.84828, right edge 0, past -0.98661.
    assert score.scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert score.scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert score.scaled_sigmoid(0.0) == pytest.approx(0.0)
    assert score.scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert score.scaled_sigmoid(3.0) == -1.0


def test_probation_is_15_percent_capped_at_750_rows():
    assert score.probation_rows(100) == 15
    assert score.probation_rows(4032) == 604
    assert score.probation_rows(22695) == 750


def test_first_row_of_window_earns_the_full_reward():
    assert _raw([40]) == pytest.approx(1.0)


def test_mid_window_detection_earns_tanh_ratio():
    # row 45: position -(49 - 45 + 1) / 10 = -0.5; reward tanh(1.25) / tanh(2.5).
    assert _raw([45]) == pytest.approx(math.tanh(1.25) / math.tanh(2.5))
    assert _raw([45]) == pytest.approx(0.859792, abs=1e-6)


def test_late_detection_earns_little():
    # last row: position -0.1; reward tanh(0.25) / tanh(2.5) = 0.248242.
    assert _raw([49]) == pytest.approx(0.248242, abs=1e-6)


def test_only_the_earliest_detection_of_a_window_counts():
    assert _raw([42, 44, 48]) == pytest.approx(_raw([42]))


def test_missed_window_costs_fn_weight_per_profile():
    assert _raw([]) == -1.0
    assert _raw([], profile=LOW_FN) == -2.0


def test_false_positive_before_any_window_costs_full_fp_weight():
    assert _raw([20, 40]) == pytest.approx(1.0 - 0.11)
    assert _raw([20, 40], profile=LOW_FP) == pytest.approx(1.0 - 0.22)


def test_false_positive_just_after_a_window_costs_less_than_far_away():
    # row 51: (51 - 49) / (10 - 1) widths past the window: cost 0.11 * tanh(2.5 * 2 / 9).
    near = _raw([40, 51]) - 1.0
    assert near == pytest.approx(-0.11 * math.tanh(2.5 * 2 / 9))
    far = _raw([40, 90]) - 1.0  # 41 / 9 > 3 widths: full cost
    assert far == pytest.approx(-0.11)
    assert far < near < 0


def test_detections_in_probation_are_ignored():
    assert _raw([0, 5, 14, 40]) == pytest.approx(1.0)
    assert _raw([14]) == -1.0


def test_window_ending_in_probation_is_refused():
    with pytest.raises(ValueError, match="probation"):
        score.weights(Labels(100, ((2, 10),)))


CORPUS = [Labels(100, ((40, 49),)), Labels(200, ((60, 79), (150, 159))), Labels(120, ())]


@pytest.mark.parametrize("profile", PROFILES)
def test_never_fires_scores_0_and_perfect_scores_100(profile):
    ws = [score.weights(lb) for lb in CORPUS]
    n = sum(w.n_windows for w in ws)
    never = score.sweep([np.zeros(lb.n_rows) for lb in CORPUS], ws, profile)
    assert score.normalise(never.raw, n, profile) == 0.0
    perfect = [_fires(lb.n_rows, [a for a, _ in lb.windows]) for lb in CORPUS]
    best = score.sweep(perfect, ws, profile)
    assert score.normalise(best.raw, n, profile) == pytest.approx(100.0)
    assert best.threshold == 1.0


def test_sweep_trades_false_positives_against_an_early_detection():
    # Window rows 40-49. Scores: 0.9 at row 20 (FP), 0.8 at row 41, 0.7 at row 30 (FP).
    s = np.zeros(100)
    s[20], s[41], s[30] = 0.9, 0.8, 0.7
    w = score.weights(ONE)
    best = score.sweep([s], [w], STANDARD)
    # At 0.8: one FP (-0.11) + reward at row 41 - better than nothing (-1) or 0.7 (another FP).
    assert best.threshold == 0.8
    assert best.raw == pytest.approx(-0.11 + math.tanh(2.5 * 9 / 10) / math.tanh(2.5))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=200, max_size=200), st.sampled_from(PROFILES))
def test_sweep_equals_the_best_of_every_threshold(levels, profile):
    labels = [Labels(100, ((30, 39), (70, 79))), Labels(100, ((50, 59),))]
    scores = [np.array(levels[:100]) / 10.0, np.array(levels[100:]) / 10.0]
    ws = [score.weights(lb) for lb in labels]
    found = score.sweep(scores, ws, profile)
    pairs = list(zip(scores, ws, strict=True))
    brute = max(sum(score.score_series(s, w, t, profile).raw for s, w in pairs)
                for t in [*np.arange(10) / 10.0, 1.0])
    assert found.raw == pytest.approx(brute)
    total = sum(score.score_series(s, w, found.threshold, profile).raw
                for s, w in zip(scores, ws, strict=True))
    assert total == pytest.approx(found.raw)


def test_an_alert_opens_once_per_episode_and_again_only_after_it_clears():
    s = np.array([0.1, 0.6, 0.7, 0.4, 0.6, 0.2, 0.55, 0.1])
    # 0.4 is above the clear level (0.3): still open, so 0.6 after it opens nothing new;
    # 0.2 closes it and 0.55 opens a second alert.
    assert list(score.openings(s, 0.5, 0.3)) == [0, 1, 0, 0, 0, 0, 1, 0]
    # Clearing at the threshold itself: every rise through it is an opening.
    assert list(score.openings(s, 0.5, 0.5)) == [0, 1, 0, 0, 1, 0, 1, 0]


def test_one_detection_per_alert_forgives_a_long_false_episode():
    # A window at 40-49 detected at its first row, and a false episode of 20 rows at 70-89.
    s = np.zeros(100)
    s[40] = s[70:90] = 0.9
    w = score.weights(ONE)
    per_row = score.sweep([s], [w], STANDARD)
    per_alert = score.sweep_openings([s], [w], STANDARD, 0.6)
    assert per_alert.raw > per_row.raw
    expected = score.score_series(_fires(100, [40, 70]), w, 0.5, STANDARD).raw
    assert per_alert.raw == pytest.approx(expected)


def test_new_highs_keep_the_rises_of_an_episode_and_nothing_else():
    s = np.array([0.1, 0.9, 0.9, 0.95, 0.2, 0.2, 0.8, 0.1])
    assert list(score.new_highs(s, 3)) == [0.1, 0.9, 0, 0.95, 0, 0, 0, 0]
    # Once the window has forgotten the episode, a rise counts again.
    assert list(score.new_highs(s, 2)) == [0.1, 0.9, 0, 0.95, 0, 0, 0.8, 0]
    # A window of 0 keeps every row; an empty series stays empty.
    assert list(score.new_highs(s, 0)) == list(s)
    assert len(score.new_highs(np.zeros(0), 5)) == 0


def test_new_highs_forgive_a_long_false_episode_at_any_threshold():
    # As for one detection per alert, but as a score series: the sweep itself is unchanged.
    s = np.zeros(100)
    s[40] = 0.9
    s[70:90] = 0.9
    w = score.weights(ONE)
    per_row = score.sweep([s], [w], STANDARD)
    rises = score.sweep([score.new_highs(s, 20)], [w], STANDARD)
    assert rises.raw > per_row.raw
    assert rises.raw == pytest.approx(
        score.score_series(_fires(100, [40, 70]), w, 0.5, STANDARD).raw)
