"""Autoencoder detector: a small neural network per stream, scored in numpy; pure, streaming.

Each stream keeps its last ``window`` values. The window is normalised by the stream's mean
and deviation in its training history, passed through the stream's own autoencoder
(``window`` → ``hidden`` → ``code`` → ``hidden`` → ``window``, tanh between layers) and
reconstructed. The error is the newest value's reconstruction error (``error = "last"``,
the default) or the root mean square over the window (``"window"``), divided by its 99th
percentile over the training history. With ``halflife_long`` > 0 (the default) the surprise
is how far the recent error stands above its own long-run level, in long-run deviations (an
anomaly likelihood, as NAB's HTM scores its errors); with 0, the scaled error itself. The
score is ``squash`` of the surprise, in [0, 1). The defaults were chosen on the tune half of
NAB (bench/anomaly_eval.py); the detector loses to the simpler ones there (docs/anomaly.md).

Training needs PyTorch (the ``train`` extra, :mod:`hub.detect.neural_train`); scoring needs
numpy alone: a model is its exported weights plus its state, stored like the other detectors
(:mod:`hub.detect.model`). ``trainer`` can be any function with :data:`Trainer`'s signature;
unset, the PyTorch one is imported when the detector first trains.

Unfitted, the detector buffers its first ``fit_rows`` rows and trains on them (no future
data, no labels); with ``refit_rows`` above ``fit_rows`` it trains again on everything seen
so far each time the row count doubles, up to ``refit_rows``.
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

# (windows k x n x window, normalised, NaN = none; hidden; code; seed) -> weights by LAYERS
Bools = npt.NDArray[np.bool_]
Trainer = Callable[[Floats, int, int, int], dict[str, Floats]]
LAYERS = ("w1", "b1", "w2", "b2", "w3", "b3", "w4", "b4")
MIN_WINDOWS = 8  # a stream with fewer complete training windows is not scored
QUANTILE = 0.99
SCALE_WINDOWS = 20_000  # the error's scale is measured on the most recent windows


def _dense(x: AnyFloats, w: AnyFloats, b: AnyFloats) -> AnyFloats:
    """Apply each stream's own layer: ``x`` (k, n, a) @ ``w`` (k, a, b) + ``b`` (k, b)."""
    out: AnyFloats = np.matmul(x, w) + b[:, None, :]
    return out


def reconstruct(weights: Mapping[str, AnyFloats], z: AnyFloats) -> AnyFloats:
    """Reconstruct normalised windows ``z`` (k, n, window) with each stream's autoencoder.

    In the weights' precision (float32 as trained: half the memory and time of float64).
    """
    x = z.astype(weights["w1"].dtype, copy=False)
    h = np.tanh(_dense(x, weights["w1"], weights["b1"]))
    c = _dense(h, weights["w2"], weights["b2"])
    h = np.tanh(_dense(c, weights["w3"], weights["b3"]))
    return _dense(h, weights["w4"], weights["b4"])


def _torch_trainer() -> Trainer:
    try:
        from hub.detect.neural_train import train_autoencoder
    except ImportError as exc:  # torch missing: say what to install, once
        raise RuntimeError("training the autoencoder needs PyTorch: "
                           "pip install 'fleetpulse[train]'") from exc
    return train_autoencoder


@dataclass
class Autoencoder:
    """Score ``k`` streams by how badly each one's autoencoder rebuilds its last values."""

    k: int
    window: int = 16
    hidden: int = 8
    code: int = 3
    error: str = "last"
    fit_rows: int = 150
    refit_rows: int = 0
    halflife_short: float = 5.0
    halflife_long: float = 1000.0
    likelihood_scale: float = 5.0
    seed: int = 0
    trainer: Trainer | None = field(default=None, repr=False, compare=False)
    weights: dict[str, AnyFloats] = field(default_factory=dict, repr=False)
    state: dict[str, Floats] = field(default_factory=dict, repr=False)
    buffer: list[Floats] = field(default_factory=list, repr=False)

    KIND = "autoencoder"

    def __post_init__(self) -> None:
        if self.error not in ("window", "last"):
            raise ValueError(f"error must be 'window' or 'last', not {self.error!r}")
        if not self.state:
            self.state = {"ring": np.full((self.k, self.window), np.nan),
                          "filled": np.zeros(self.k), "seen": np.zeros(1)}

    @property
    def fitted(self) -> bool:
        return bool(self.weights)

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("trainer", "weights", "state", "buffer")}

    def _windows(self, z: Floats) -> Floats:
        """Every run of ``window`` consecutive rows of ``z`` (T x k) as (k, n, window)."""
        if len(z) < self.window:
            return np.full((self.k, 0, self.window), np.nan)
        view: Floats = np.lib.stride_tricks.sliding_window_view(z, self.window, axis=0)
        return view.transpose(1, 0, 2)  # a view: no copy of a long history

    def _errors(self, z: Floats) -> Floats:
        """Reconstruction error of windows (k, n, window), NaN where a window is incomplete."""
        out = reconstruct(self.weights, np.nan_to_num(z)) - z
        sq = out[..., -1] ** 2 if self.error == "last" else np.mean(out * out, axis=-1)
        err: Floats = np.sqrt(sq)
        return err

    def _train(self, history: Floats) -> None:
        h = np.asarray(history, dtype=np.float64).reshape(-1, self.k)
        seen = ~np.isnan(h)
        has = seen.any(axis=0)
        mean = np.zeros(self.k)
        std = np.ones(self.k)
        if has.any():
            mean[has] = np.nanmean(h[:, has], axis=0)
            std[has] = np.nanstd(h[:, has], axis=0)
        # A flat stream still gets a scale: a tiny share of its level, or an absolute floor.
        std = np.maximum(std, np.maximum(1e-3 * np.abs(mean), 1e-6))
        windows = self._windows((h - mean) / std)
        trainer = self.trainer or _torch_trainer()
        self.weights = {name: np.asarray(w, dtype=np.float32) for name, w in
                        trainer(windows, self.hidden, self.code, self.seed).items()}
        err = self._errors(windows[:, -SCALE_WINDOWS:])
        complete = ~np.isnan(err)
        trained = complete.sum(axis=1) >= MIN_WINDOWS
        scale = np.ones(self.k)
        if trained.any():
            scale[trained] = np.nanquantile(err[trained], QUANTILE, axis=1)
        self.state.update(mean=mean, std=std, scale=np.maximum(scale, 1e-6),
                          trained=trained.astype(np.float64))

    def fit(self, history: Floats) -> None:
        """Train on past rows (shape ``T x k``) and keep their last values as the window."""
        h = np.asarray(history, dtype=np.float64).reshape(-1, self.k)
        self._train(h)
        ring = np.full((self.k, self.window), np.nan)
        filled = np.zeros(self.k)
        for j in range(self.k):
            values = h[~np.isnan(h[:, j]), j][-self.window:]
            ring[j, self.window - len(values):] = values
            filled[j] = len(values)
        self.state.update(ring=ring, filled=filled, seen=np.array([float(len(h))]))
        self.buffer = []

    def step(self, x: Floats) -> Floats:
        """Score the new values ``x`` (shape ``k``; NaN = none) with the window they end."""
        x = np.asarray(x, dtype=np.float64)
        s = self.state
        ok = ~np.isnan(x)
        s["ring"] = np.where(ok[:, None],
                             np.concatenate([s["ring"][:, 1:], x[:, None]], axis=1),
                             s["ring"])
        s["filled"] = s["filled"] + ok
        s["seen"] = s["seen"] + 1.0
        rows = int(s["seen"][0])
        if not self.fitted or self.buffer:  # still collecting its training rows
            last = max(self.fit_rows, self.refit_rows)
            self.buffer.append(x.copy())
            if self._due(rows, last):
                self._train(np.array(self.buffer))
            if rows >= last:
                self.buffer = []
        if not self.fitted:
            return np.zeros(self.k)
        return self.score(ok)

    def _due(self, rows: int, last: int) -> bool:
        """Train at ``fit_rows``, then at each doubling of it up to ``refit_rows``."""
        n = self.fit_rows
        while n < rows:
            n *= 2
        return n == rows and rows <= last

    def score(self, ok: Bools | None = None) -> Floats:
        """Score each stream's current window (0 where incomplete, untrained or ``~ok``)."""
        s = self.state
        z = ((s["ring"] - s["mean"][:, None]) / s["std"][:, None])[:, None, :]
        raw = np.nan_to_num(self._errors(z)[:, 0] / s["scale"])
        live: Bools = (s["filled"] >= self.window) & (s["trained"] > 0)
        if ok is not None:
            live &= ok
        if self.halflife_long > 0:
            raw = self._likelihood(raw, live)
        out: Floats = np.where(live, model.squash(raw), 0.0)
        return out

    def _likelihood(self, raw: Floats, live: Bools) -> Floats:
        """How far the recent error (short half-life) stands above its long-run mean, in
        long-run deviations / ``likelihood_scale``: a stream whose errors are always large
        is not always anomalous (NAB's HTM scores its errors the same way)."""
        s = self.state
        for name, start in (("short", 0.0), ("long", 0.0), ("long_var", 1.0)):
            s.setdefault(name, np.full(self.k, start))
        a_s = 1.0 - 0.5 ** (1.0 / self.halflife_short)
        a_l = 1.0 - 0.5 ** (1.0 / self.halflife_long)
        s["short"] = np.where(live, s["short"] + a_s * (raw - s["short"]), s["short"])
        dev = s["short"] - s["long"]
        z = dev / np.sqrt(s["long_var"] + 1e-4)
        s["long"] = np.where(live, s["long"] + a_l * dev, s["long"])
        s["long_var"] = np.where(live, (1.0 - a_l) * (s["long_var"] + a_l * dev * dev),
                                 s["long_var"])
        out: Floats = np.maximum(z, 0.0) / self.likelihood_scale
        return out

    def nbytes(self) -> int:
        """Bytes of weights and state held in memory."""
        return sum(a.nbytes for a in (*self.weights.values(), *self.state.values()))

    def to_bytes(self) -> bytes:
        """Serialise parameters, weights and state (an unfitted detector stores its buffer)."""
        arrays = {**{f"weight_{k}": v for k, v in self.weights.items()}, **self.state}
        if self.buffer:
            arrays["buffer"] = np.array(self.buffer)
        return model.dump(self.KIND, self.params(), arrays)

    @classmethod
    def from_bytes(cls, data: bytes, trainer: Trainer | None = None) -> Autoencoder:
        params, arrays = model.load(data, cls.KIND)
        buffer = arrays.pop("buffer", None)
        weights: dict[str, AnyFloats] = {k.removeprefix("weight_"): v.astype(np.float32)
                                         for k, v in arrays.items() if k.startswith("weight_")}
        state = {k: v for k, v in arrays.items() if not k.startswith("weight_")}
        return cls(**params, trainer=trainer, weights=weights, state=state,
                   buffer=list(buffer) if buffer is not None else [])
