"""The ways bench/signal_combine.py combines a reading's per-signal scores."""

import numpy as np
import pytest

from bench.signal_combine import COMBINE, _sorted


def test_combinations_on_a_hand_made_reading() -> None:
    ordered = _sorted(np.array([[0.4, np.nan, 0.4, 0.0, 0.2]]))
    assert COMBINE["max"](ordered)[0] == pytest.approx(0.4)
    assert COMBINE["top2"](ordered)[0] == pytest.approx(1 - 0.6 * 0.6)
    assert COMBINE["top3"](ordered)[0] == pytest.approx(1 - 0.6 * 0.6 * 0.8)
    assert COMBINE["all"](ordered)[0] == pytest.approx(1 - 0.6 * 0.6 * 0.8)


def test_one_signal_alone_scores_the_same_every_way() -> None:
    ordered = _sorted(np.array([[0.0, 0.7, 0.0, 0.0]]))
    assert {how: round(float(f(ordered)[0]), 9) for how, f in COMBINE.items()} == \
        dict.fromkeys(COMBINE, 0.7)
