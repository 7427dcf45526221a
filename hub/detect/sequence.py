"""LSTM forecaster: a small recurrent network per stream, run in numpy; pure, streaming.

Each stream has its own one-layer LSTM (``hidden`` units, PyTorch's gate layout i, f, g, o)
reading the normalised value and its last change, and a linear head that predicts the next
``horizon`` changes from the current value. :meth:`LSTMForecaster.predict` gives the
forecast 1..horizon steps ahead in the stream's units; :meth:`LSTMForecaster.steps_to` the
first step at which it reaches a threshold (``inf`` when it does not within the horizon).

Training needs PyTorch (the ``train`` extra, :func:`hub.detect.neural_train.train_sequence`);
the forecaster itself needs numpy alone and stores like the detectors (:mod:`hub.detect.model`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from hub.detect import model
from hub.detect.model import Floats

AnyFloats = npt.NDArray[np.floating[Any]]  # weights: float32 as trained, or float64

# (normalised NaN-free stream, hidden, horizon, seed) -> w_ih, w_hh, b, head_w, head_b
SeqTrainer = Callable[[Floats, int, int, int], dict[str, Floats]]
NAMES = ("w_ih", "w_hh", "b", "head_w", "head_b")
MIN_ROWS = 32  # a stream with less history is not forecast


def _sigmoid(x: Floats) -> Floats:
    out: Floats = 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|
    return out


def lstm_step(w: Mapping[str, AnyFloats], inp: Floats, h: Floats, c: Floats
              ) -> tuple[Floats, Floats]:
    """One LSTM step per stream: ``inp`` (k, 2), ``h`` and ``c`` (k, hidden).

    In the weights' precision (float32 as trained: half the memory and time of float64).
    """
    inp = inp.astype(w["w_ih"].dtype, copy=False)
    h = h.astype(w["w_hh"].dtype, copy=False)
    gates = (np.matmul(w["w_ih"], inp[:, :, None])[:, :, 0]
             + np.matmul(w["w_hh"], h[:, :, None])[:, :, 0] + w["b"])
    i, f, g, o = np.split(gates, 4, axis=1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    h = _sigmoid(o) * np.tanh(c)
    return h, c


def head(w: Mapping[str, AnyFloats], h: Floats) -> Floats:
    """The predicted normalised changes 1..horizon steps ahead, per stream (k, horizon)."""
    out: Floats = np.matmul(w["head_w"], h[:, :, None])[:, :, 0] + w["head_b"]
    return out


def _torch_trainer() -> SeqTrainer:
    try:
        from hub.detect.neural_train import train_sequence
    except ImportError as exc:
        raise RuntimeError("training the LSTM forecaster needs PyTorch: "
                           "pip install 'fleetpulse[train]'") from exc
    return train_sequence


@dataclass
class LSTMForecaster:
    """Forecast ``k`` streams ``horizon`` steps ahead, each with its own small LSTM."""

    k: int
    hidden: int = 16
    horizon: int = 36
    warm_rows: int = 300
    seed: int = 0
    trainer: SeqTrainer | None = field(default=None, repr=False, compare=False)
    weights: dict[str, AnyFloats] = field(default_factory=dict, repr=False)
    state: dict[str, Floats] = field(default_factory=dict, repr=False)

    KIND = "lstm_forecaster"

    def __post_init__(self) -> None:
        if not self.state:
            self.state = {"mean": np.zeros(self.k), "std": np.ones(self.k),
                          "trained": np.zeros(self.k)}
            self.reset()

    @property
    def fitted(self) -> bool:
        return bool(self.weights)

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("trainer", "weights", "state")}

    def reset(self) -> None:
        """Forget the recurrent state (keep the weights): the next step starts cold."""
        self.state.update(h=np.zeros((self.k, self.hidden), np.float32),
                          c=np.zeros((self.k, self.hidden), np.float32),
                          last=np.full(self.k, np.nan))

    def fit(self, history: Floats) -> None:
        """Train each stream's LSTM on its past values (``T x k``), then warm the state."""
        h = np.asarray(history, dtype=np.float64).reshape(-1, self.k)
        trainer = self.trainer or _torch_trainer()
        mean, std, trained = np.zeros(self.k), np.ones(self.k), np.zeros(self.k)
        per_stream: list[dict[str, Floats]] = []
        for j in range(self.k):
            v = h[~np.isnan(h[:, j]), j]
            if len(v):
                mean[j] = v.mean()
                std[j] = max(float(v.std()), 1e-3 * abs(mean[j]), 1e-6)
            trained[j] = len(v) >= MIN_ROWS
            z = (v - mean[j]) / std[j] if trained[j] else np.zeros(MIN_ROWS)
            per_stream.append(trainer(z, self.hidden, self.horizon, self.seed + j))
        self.weights = {n: np.stack([w[n] for w in per_stream]).astype(np.float32)
                        for n in NAMES}
        self.state.update(mean=mean, std=std, trained=trained)
        self.reset()
        for row in h[-self.warm_rows:] if self.warm_rows else h[:0]:
            self.step(row)

    def step(self, x: Floats) -> None:
        """Read one new value per stream (NaN = none: that stream's state is left alone)."""
        if not self.fitted:
            return
        x = np.asarray(x, dtype=np.float64)
        s = self.state
        ok = ~np.isnan(x)
        z = (x - s["mean"]) / s["std"]
        prev = (s["last"] - s["mean"]) / s["std"]
        dz = np.where(np.isnan(prev), 0.0, z - prev)
        inp = np.nan_to_num(np.stack([z, dz], axis=1))
        h, c = lstm_step(self.weights, inp, s["h"], s["c"])
        s["h"] = np.where(ok[:, None], h, s["h"])
        s["c"] = np.where(ok[:, None], c, s["c"])
        s["last"] = np.where(ok, x, s["last"])

    def predict(self) -> Floats:
        """Forecasts 1..horizon steps ahead (k, horizon); NaN for an untrained stream."""
        s = self.state
        pred = s["last"][:, None] + s["std"][:, None] * head(self.weights, s["h"]
                                                             ).astype(np.float64)
        out: Floats = np.where((s["trained"] > 0)[:, None], pred, np.nan)
        return out

    def steps_to(self, threshold: float | Floats) -> Floats:
        """Steps until the forecast reaches ``threshold`` (0 if already there; inf if not soon).

        Upward when the threshold is above the last value, downward when below.
        """
        last = self.state["last"]
        thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), last.shape)
        pred = self.predict()
        up = thr > last
        hit = np.where(up[:, None], pred >= thr[:, None], pred <= thr[:, None])
        first = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1.0, np.inf)
        out: Floats = np.where(last == thr, 0.0, np.where(np.isnan(last), np.inf, first))
        return out

    def nbytes(self) -> int:
        """Bytes of weights and state held in memory."""
        return sum(a.nbytes for a in (*self.weights.values(), *self.state.values()))

    def to_bytes(self) -> bytes:
        arrays = {**{f"weight_{k}": v for k, v in self.weights.items()}, **self.state}
        return model.dump(self.KIND, self.params(), arrays)

    @classmethod
    def from_bytes(cls, data: bytes, trainer: SeqTrainer | None = None) -> LSTMForecaster:
        params, arrays = model.load(data, cls.KIND)
        weights: dict[str, AnyFloats] = {k.removeprefix("weight_"): v.astype(np.float32)
                                         for k, v in arrays.items() if k.startswith("weight_")}
        state = {k: v for k, v in arrays.items() if not k.startswith("weight_")}
        for name in ("h", "c"):
            state[name] = state[name].astype(np.float32)
        return cls(**params, trainer=trainer, weights=weights, state=state)
