"""The neural models' numpy inference, without PyTorch.

``data/neural_fixture.npz`` holds small random weights, inputs and PyTorch's own outputs on
them (written by ``python3 -m hub.detect.neural_train --fixture ...``): numpy must reproduce
them. The detectors' streaming behaviour is checked with numpy-made weights.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

from hub.detect import autoencoder, sequence
from hub.detect.autoencoder import Autoencoder
from hub.detect.novelty import Novelty
from hub.detect.sequence import LSTMForecaster

FIXTURE = Path(__file__).parent / "data" / "neural_fixture.npz"


@pytest.fixture(scope="module")
def fixture():
    with np.load(FIXTURE, allow_pickle=False) as f:
        return {k: f[k].astype(np.float64) for k in f.files}


def test_autoencoder_reconstruction_equals_pytorch(fixture):
    weights = {n: fixture[f"ae_{n}"] for n in autoencoder.LAYERS}
    out = autoencoder.reconstruct(weights, fixture["ae_windows"])
    np.testing.assert_allclose(out, fixture["ae_expected"], rtol=1e-5, atol=1e-5)
    assert np.abs(fixture["ae_expected"]).max() > 1.0  # weights large enough to matter


def test_lstm_forecasts_step_by_step_equal_pytorch_over_a_sequence(fixture):
    k = 2
    weights = {n: np.stack([fixture[f"seq{j}_{n}"] for j in range(k)]) for n in sequence.NAMES}
    f = LSTMForecaster(k, hidden=5, horizon=4, weights=weights)
    f.state.update(trained=np.ones(k))  # mean 0, deviation 1: forecasts are in input units
    x = fixture["seq_inputs"]
    for t in range(x.shape[1]):
        f.step(x[:, t])
        expected = x[:, t, None] + np.stack([fixture[f"seq{j}_expected"][t] for j in range(k)])
        np.testing.assert_allclose(f.predict(), expected, rtol=1e-5, atol=1e-5)


def _random_trainer(windows, hidden, code, seed):
    rng = np.random.default_rng(seed)
    k, _, w = windows.shape
    out = {}
    for i, (a, b) in enumerate([(w, hidden), (hidden, code), (code, hidden), (hidden, w)], 1):
        out[f"w{i}"] = rng.normal(0.0, 0.3, (k, a, b))
        out[f"b{i}"] = np.zeros((k, b))
    return out


def _noise(rows, k, seed=0):
    return np.random.default_rng(seed).normal(50.0, 1.0, (rows, k))


def _run(det, rows):
    return np.array([det.step(r) for r in rows])


def test_autoencoder_flags_a_spike_far_above_noise_and_skips_nan():
    x = _noise(600, 2)
    x[500, 0] = 80.0
    x[300:320, 1] = np.nan
    s = _run(Autoencoder(2, trainer=_random_trainer), x)
    assert ((s >= 0) & (s < 1)).all()
    assert (s[:149] == 0).all()  # buffering its training rows (trains at the 150th)
    raw = s / (1 - s)
    assert raw[500, 0] > 3 * raw[200:500, 0].max()
    assert raw[500, 0] > 3 * raw[200:, 1].max()
    assert (s[300:320, 1] == 0).all()


def test_autoencoder_retrains_at_each_doubling_up_to_refit_rows():
    calls = []

    def trainer(windows, hidden, code, seed):
        calls.append(windows.shape[1])
        return _random_trainer(windows, hidden, code, seed)

    det = Autoencoder(1, window=4, fit_rows=50, refit_rows=200, trainer=trainer)
    _run(det, _noise(500, 1))
    assert calls == [47, 97, 197]  # windows in 50, 100 and 200 rows
    assert det.buffer == []


@pytest.mark.parametrize("halflife_long", [0.0, 1000.0])
def test_autoencoder_round_trips_through_bytes_mid_stream(halflife_long):
    x = _noise(500, 3)
    a = Autoencoder(3, trainer=_random_trainer, halflife_long=halflife_long)
    _run(a, x[:300])
    b = Autoencoder.from_bytes(a.to_bytes())
    np.testing.assert_array_equal(_run(a, x[300:]), _run(b, x[300:]))


def test_autoencoder_fit_on_history_then_scores_at_once():
    det = Autoencoder(2, trainer=_random_trainer)
    det.fit(_noise(300, 2))
    assert det.fitted and det.state["filled"].tolist() == [16, 16]  # the last window
    assert det.step(np.array([50.0, 500.0]))[1] > 0.5


def test_a_missing_pytorch_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.delitem(sys.modules, "hub.detect.neural_train", raising=False)
    det = Autoencoder(1, fit_rows=20)
    with pytest.raises(RuntimeError, match=r"pip install 'fleetpulse\[train\]'"):
        _run(det, _noise(20, 1))
    with pytest.raises(RuntimeError, match="PyTorch"):
        LSTMForecaster(1).fit(_noise(100, 1))


def _ramp_weights(k, hidden, horizon):
    """An LSTM whose forecast is the last value plus h deviations, h steps ahead."""
    return {"w_ih": np.zeros((k, 4 * hidden, 2)), "w_hh": np.zeros((k, 4 * hidden, hidden)),
            "b": np.zeros((k, 4 * hidden)), "head_w": np.zeros((k, horizon, hidden)),
            "head_b": np.tile(np.arange(1.0, horizon + 1), (k, 1))}


def test_lstm_steps_to_threshold_up_down_now_and_never():
    f = LSTMForecaster(4, hidden=3, horizon=6, weights=_ramp_weights(4, 3, 6))
    f.state.update(trained=np.ones(4), std=np.full(4, 2.0))
    f.step(np.array([10.0, 10.0, 10.0, np.nan]))
    # Forecasts 12, 14, ..., 22: 15 is reached at step 3, 10 now, 30 not within 6 steps;
    # the ramp goes up, so a threshold below is never reached; no value yet: inf.
    np.testing.assert_array_equal(f.steps_to(np.array([15.0, 10.0, 30.0, 5.0])),
                                  [3.0, 0.0, np.inf, np.inf])
    assert np.isnan(f.predict()[3]).all()  # no value yet: no forecast
    np.testing.assert_array_equal(f.predict()[0], [12.0, 14, 16, 18, 20, 22])


def test_lstm_fit_trains_each_stream_on_its_values_and_round_trips():
    seen = []

    def trainer(z, hidden, horizon, seed):
        seen.append(len(z))
        w = _ramp_weights(1, hidden, horizon)
        return {n: v[0] for n, v in w.items()}

    h = _noise(200, 2)
    h[:100, 1] = np.nan
    f = LSTMForecaster(2, hidden=3, horizon=4, warm_rows=10, trainer=trainer)
    f.fit(h)
    assert seen == [200, 100]
    np.testing.assert_allclose(f.state["mean"], np.nanmean(h, axis=0))
    g = LSTMForecaster.from_bytes(f.to_bytes())
    for row in _noise(20, 2, seed=1):
        f.step(row)
        g.step(row)
    np.testing.assert_array_equal(f.predict(), g.predict())


def test_loading_a_novelty_model_as_an_autoencoder_is_refused():
    with pytest.raises(ValueError, match="novelty"):
        Autoencoder.from_bytes(Novelty(1).to_bytes())


def test_too_little_history_is_not_scored_rather_than_guessed():
    ae = Autoencoder(2, trainer=_random_trainer)
    ae.fit(_noise(10, 2))  # fewer rows than one window
    assert (ae.state["trained"] == 0).all()
    assert (ae.step(np.array([50.0, 500.0])) == 0).all()
    f = LSTMForecaster(2, hidden=3, horizon=4, trainer=lambda z, h, n, s: {
        k: v[0] for k, v in _ramp_weights(1, h, n).items()})
    f.fit(_noise(20, 2))  # fewer rows than MIN_ROWS
    f.step(np.array([50.0, 50.0]))
    assert np.isnan(f.predict()).all()
    assert np.isinf(f.steps_to(60.0)).all()
