"""Windowed Gaussian detector: how many standard deviations a value lies from the mean of the
last ``window`` values of its stream; pure, streaming, O(1) per value.

The simplest credible baseline (NAB publishes 39.6 for its own windowed Gaussian). The
window's sum and sum of squares are kept with a ring buffer, so a step costs the same for any
window length; the score is ``squash(|z|)``, order-preserving and never saturating.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hub.detect import model
from hub.detect.model import Floats


@dataclass
class WindowedGaussian:
    """Score ``k`` streams by the z-score of each value against its last ``window`` values."""

    k: int
    window: int = 6400
    min_count: int = 10
    ring: Floats = field(init=False)
    total: Floats = field(init=False)
    total_sq: Floats = field(init=False)
    count: Floats = field(init=False)
    pos: Floats = field(init=False)
    ref: Floats = field(init=False)

    KIND = "windowed_gaussian"

    def __post_init__(self) -> None:
        self.ring = np.full((self.window, self.k), np.nan)
        self.total = np.zeros(self.k)
        self.total_sq = np.zeros(self.k)
        self.count = np.zeros(self.k)
        self.pos = np.zeros(self.k)
        # Values are kept relative to each stream's first value: sums of squares of large
        # readings (bytes/s ~1e9) would otherwise lose the variance to rounding.
        self.ref = np.full(self.k, np.nan)

    def step(self, x: Floats) -> Floats:
        """Score the new values ``x`` (shape ``k``), then add them to the window."""
        x = np.asarray(x, dtype=np.float64)
        ok = ~np.isnan(x)
        self.ref = np.where(np.isnan(self.ref) & ok, x, self.ref)
        x = x - self.ref
        n = np.maximum(self.count, 1.0)
        mean = self.total / n
        var = np.maximum(self.total_sq / n - mean * mean, 0.0)
        z = np.abs(x - mean) / np.sqrt(var + 1e-12 + 1e-9 * mean * mean)
        scores = np.where(ok & (self.count >= self.min_count), model.squash(z), 0.0)
        self._add(x, ok)
        return np.nan_to_num(scores)

    def _add(self, x: Floats, ok: Floats) -> None:
        idx = self.pos.astype(np.int64)
        cols = np.arange(self.k)
        old = self.ring[idx, cols]
        full = ok & ~np.isnan(old)
        self.total -= np.where(full, old, 0.0)
        self.total_sq -= np.where(full, old * old, 0.0)
        self.count -= full
        self.ring[idx, cols] = np.where(ok, x, old)
        xs = np.where(ok, x, 0.0)
        self.total += xs
        self.total_sq += xs * xs
        self.count += ok
        self.pos = np.where(ok, (self.pos + 1) % self.window, self.pos)

    def fit(self, history: Floats) -> None:
        """Warm the state with past rows (shape ``T x k``) without scoring them."""
        for row in np.asarray(history, dtype=np.float64):
            ok = ~np.isnan(row)
            self.ref = np.where(np.isnan(self.ref) & ok, row, self.ref)
            self._add(row - self.ref, ok)

    def to_bytes(self) -> bytes:
        state = {"ring": self.ring, "total": self.total, "total_sq": self.total_sq,
                 "count": self.count, "pos": self.pos, "ref": self.ref}
        return model.dump(self.KIND, {"k": self.k, "window": self.window,
                                      "min_count": self.min_count}, state)

    @classmethod
    def from_bytes(cls, data: bytes) -> WindowedGaussian:
        params, state = model.load(data, cls.KIND)
        out = cls(**params)
        for name, value in state.items():
            setattr(out, name, value)
        return out
