"""Novelty detector: the shipped candidate. Pure, streaming over ``k`` streams, numpy only.

A value is surprising in four ways, and the score is the largest of the four (each scaled
so that 1 means "clearly anomalous"; the output is ``squash`` of it, in [0, 1)):

1. **Out of range**: beyond the lowest or highest value the stream has ever shown, by a
   fraction of that range: ``1 + excess / range``. A new record is what people label first
   (NAB's own HTM detector adds the same rule on top of its model).
2. **Far from the level**: the z-score of the value, and of its one-step change, against an
   exponentially weighted mean and variance (half-life ``halflife_level`` values), divided by
   ``z_scale``: only extreme jumps count, ordinary noise stays far below 1.
3. **Unusual sequence**: values are cut into ``bins`` quantile bins (edges learned by
   ``fit``); a first-order transition table counts bin → next bin. The surprise of each step,
   ``-log p(next | previous)`` in units of ``log bins``, is averaged over a few steps
   (half-life ``halflife_short``) and compared with its own long-run mean and deviation
   (half-life ``halflife_long``), as an anomaly likelihood: a stream whose pattern changes
   (a daily curve flattening, a periodic job stopping) stands out even inside its range.

4. **Shifted level**: a fast mean (half-life ``halflife_fast``) against a slow mean and
   deviation (half-life ``halflife_slow``), divided by ``shift_scale``: a sustained move
   of a few deviations, too small for any single value to stand out. With ``shift_clip``
   (the hub's device models: hub/detect/train.py ``SHIFT_CLIP``), training learns the slow
   mean and deviation from the history held within that many robust deviations, or floors,
   of its median (:func:`shift_history`): minutes of unrelated work in the history do not
   inflate the deviation enough to hide a sustained fault of their size.

A stream may have a **floor** (state ``floor``, in its own units; 0 unless the trainer sets
it: hub/detect/features.py ``signal_floors``): how far from its long-run level (the slow
mean) a value must be before it can be called anomalous at all. The score is multiplied by
the distance in floors of the value, or of its recent (fast) mean, capped at 1: a quiet
machine's new record by a hair, or a rare sequence within a few MB, counts for little; a
fault, many floors away, is untouched. On NAB, with no floors, nothing changes.

``fit(history, floors)`` learns the bin edges, the transitions, the range and the level from
past rows; ``step`` then scores and keeps learning. Unfitted, the detector buffers its first
``fit_rows`` rows and fits on them (what a streaming benchmark needs: no future data, no labels).

Tuned on half of the NAB corpus (alternate files of each group), reported on the other half
by bench/anomaly_eval.py.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from hub.detect import model
from hub.detect.model import Floats

_LIKELIHOOD_WARMUP = 100  # live steps before the sequence likelihood has a baseline


def _keep(ok: Floats | None, new: Floats | float, old: Floats | float) -> Floats:
    """``new`` where ``ok`` (None = everywhere), else ``old``: NaN leaves a stream alone."""
    if ok is None:
        return np.asarray(new, dtype=np.float64)
    out: Floats = np.where(ok, new, old)
    return out


def _alpha(halflife: float) -> float:
    return float(1.0 - 0.5 ** (1.0 / halflife))


def shift_history(h: Floats, clip: float, floors: Floats) -> Floats:
    """The history the shifted-level test learns its slow mean and deviation from: each
    stream's values held within ``clip`` robust deviations (1.4826 MAD, or its floor where
    that is larger) of its median; unchanged when ``clip`` is 0."""
    if clip <= 0.0 or not np.isfinite(h).any():
        return h
    with warnings.catch_warnings():  # a stream with no value at all: NaN, left alone
        warnings.simplefilter("ignore", RuntimeWarning)
        median = np.nanmedian(h, axis=0)
        spread = 1.4826 * np.nanmedian(np.abs(h - median), axis=0)
    bound = clip * np.maximum(np.nan_to_num(spread), floors)
    out: Floats = np.clip(h, median - bound, median + bound)
    return np.where(np.isnan(h), np.nan, out)


@dataclass
class Novelty:
    """Score ``k`` streams by range excess, extreme z-scores and transition surprise."""

    k: int
    bins: int = 8
    fit_rows: int = 150
    halflife_level: float = 1000.0
    halflife_fast: float = 6.0
    halflife_slow: float = 4000.0
    shift_scale: float = 6.0
    shift_warmup: int = 300
    shift_clip: float = 0.0
    z_scale: float = 40.0
    range_floor: float = 1e-3
    halflife_short: float = 5.0
    halflife_long: float = 1000.0
    markov_scale: float = 5.0
    smoothing: float = 0.5
    state: dict[str, Floats] = field(default_factory=dict, repr=False)
    buffer: list[Floats] = field(default_factory=list, repr=False)

    KIND = "novelty"

    @property
    def fitted(self) -> bool:
        return bool(self.state)

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("state", "buffer")}

    def fit(self, history: Floats, floors: Floats | None = None) -> None:
        """Learn edges, transitions, range and level from past rows (shape ``T x k``), each
        stream with its ``floors`` (none: 0)."""
        h = np.asarray(history, dtype=np.float64).reshape(-1, self.k)
        floors = np.zeros(self.k) if floors is None else np.asarray(floors, dtype=np.float64)
        held = shift_history(h, self.shift_clip, floors)
        seen = ~np.isnan(h)
        any_seen = seen.any(axis=0)
        quant = np.linspace(0.0, 1.0, self.bins + 1)[1:-1]
        edges = np.zeros((self.k, self.bins - 1))
        if any_seen.any():
            edges[any_seen] = np.nanquantile(h[:, any_seen], quant, axis=0).T
        first = np.where(any_seen, h[np.argmax(seen, axis=0), np.arange(self.k)], 0.0)
        s: dict[str, Floats] = {
            "edges": edges,
            "counts": np.zeros((self.k, self.bins, self.bins)),
            "context": np.zeros(self.k),
            "lo": np.where(any_seen, np.nanmin(np.where(seen, h, np.inf), axis=0), np.inf),
            "hi": np.where(any_seen, np.nanmax(np.where(seen, h, -np.inf), axis=0), -np.inf),
            "n": seen.sum(axis=0).astype(np.float64),
            "level": first.copy(), "level_var": np.zeros(self.k),
            "change": np.zeros(self.k), "change_var": np.zeros(self.k),
            "previous": first.copy(),
            # The slow mean forgets over thousands of values: start it from the history's
            # mean and variance, not from its first value.
            "fast": first.copy(),
            "slow": np.zeros(self.k), "slow_var": np.zeros(self.k),
            "surprise": np.zeros(self.k), "surprise_mean": np.zeros(self.k),
            "surprise_var": np.full(self.k, 0.01), "live": np.zeros(self.k),
            "floor": floors.copy(),
        }
        if any_seen.any():
            s["slow"][any_seen] = np.nanmean(held[:, any_seen], axis=0)
            s["slow_var"][any_seen] = np.nanvar(held[:, any_seen], axis=0)
        self.state = s
        a = _alpha(self.halflife_level)
        for row, kept, ok in zip(h, held, seen, strict=True):
            self._learn_level(row, ok, a)
            self._learn_transition(row, ok)
            self._learn_shift(row, ok, kept)

    def _learn_shift(self, x: Floats, ok: Floats | None, held: Floats | None = None) -> Floats:
        """Move the fast mean, measure it against the slow mean and variance, move those (from
        ``held`` where given: in training, the history within its robust bounds)."""
        s = self.state
        xs = _keep(ok, x, 0.0)
        s["fast"] = _keep(ok, s["fast"] + _alpha(self.halflife_fast) * (xs - s["fast"]),
                          s["fast"])
        span = s["hi"] - s["lo"]
        floor = (self.range_floor * np.where(np.isfinite(span), span, 0.0) + 1e-9) ** 2
        z: Floats = np.abs(s["fast"] - s["slow"]) / np.sqrt(s["slow_var"] + floor)
        a = _alpha(self.halflife_slow)
        dev = (xs if held is None else _keep(ok, held, 0.0)) - s["slow"]
        s["slow"] = _keep(ok, s["slow"] + a * dev, s["slow"])
        s["slow_var"] = _keep(ok, (1.0 - a) * (s["slow_var"] + a * dev * dev), s["slow_var"])
        return z

    def _bin(self, x: Floats) -> Floats:
        out: Floats = (np.nan_to_num(x)[:, None] > self.state["edges"]).sum(axis=1)
        return out

    def _learn_transition(self, x: Floats, ok: Floats, b: Floats | None = None) -> None:
        s = self.state
        b = self._bin(x) if b is None else b
        rows = np.flatnonzero(ok)
        ctx = s["context"].astype(np.int64)
        s["counts"][rows, ctx[rows], b[rows].astype(np.int64)] += 1.0
        s["context"] = _keep(ok, b, s["context"])

    def _learn_level(self, x: Floats, ok: Floats | None, a: float) -> None:
        s = self.state
        xs = _keep(ok, x, 0.0)
        d = xs - s["previous"]
        for mean, var, v in (("level", "level_var", xs), ("change", "change_var", d)):
            dev = v - s[mean]
            s[mean] = _keep(ok, s[mean] + a * dev, s[mean])
            s[var] = _keep(ok, (1.0 - a) * (s[var] + a * dev * dev), s[var])
        s["previous"] = _keep(ok, xs, s["previous"])

    def step(self, x: Floats) -> Floats:
        """Score the new values ``x`` (shape ``k``; NaN = none), then learn from them."""
        x = np.asarray(x, dtype=np.float64)
        if not self.fitted:
            self.buffer.append(x.copy())
            if len(self.buffer) >= self.fit_rows:
                self.fit(np.array(self.buffer))
                self.buffer = []
            return np.zeros(self.k)
        s = self.state
        ok: Floats | None = ~np.isnan(x)
        if ok is not None and ok.all():
            ok = None  # every stream has a value: skip the masking (half the cost)
        xs = _keep(ok, x, 0.0)
        first = s["n"] == 0
        if ok is not None:
            first &= ok
        if first.any():  # a stream with no history starts its means at its first value
            for name in ("level", "previous", "fast", "slow"):
                s[name] = np.where(first, xs, s[name])
        span = s["hi"] - s["lo"]
        span = np.where(np.isfinite(span), span, 0.0)
        # how far the value, or its recent mean, is from the long-run level, in floors (1
        # where there is no floor): a bursty fault's lull does not close the gate
        least = s["floor"]
        away = np.maximum(np.abs(xs - s["slow"]), np.abs(s["fast"] - s["slow"]))
        gate = np.where(least > 0.0, np.minimum(away / np.maximum(least, 1e-9), 1.0), 1.0)
        # 1. out of range
        excess = np.maximum(xs - s["hi"], s["lo"] - xs) / np.maximum(span, 1e-9)
        out_of_range = np.where(np.isfinite(excess) & (excess > 0.0), 1.0 + excess, 0.0)
        # 2. far from the level
        floor = (self.range_floor * span + 1e-9) ** 2
        z_level = np.abs(xs - s["level"]) / np.sqrt(s["level_var"] + floor)
        z_change = np.abs(xs - s["previous"] - s["change"]) / np.sqrt(s["change_var"] + floor)
        far = np.maximum(z_level, z_change) / self.z_scale
        # 3. unusual sequence
        b = self._bin(xs)
        idx = np.arange(self.k)
        row = s["counts"][idx, s["context"].astype(np.int64)]
        p = (row[idx, b] + self.smoothing) / (row.sum(axis=1) + self.smoothing * self.bins)
        step_surprise = -np.log(p) / np.log(self.bins)
        a_s, a_l = _alpha(self.halflife_short), _alpha(self.halflife_long)
        s["surprise"] = _keep(ok, s["surprise"] + a_s * (step_surprise - s["surprise"]),
                              s["surprise"])
        likelihood = (s["surprise"] - s["surprise_mean"]) / np.sqrt(s["surprise_var"] + 1e-4)
        dev = s["surprise"] - s["surprise_mean"]
        s["surprise_mean"] = _keep(ok, s["surprise_mean"] + a_l * dev, s["surprise_mean"])
        s["surprise_var"] = _keep(ok, (1.0 - a_l) * (s["surprise_var"] + a_l * dev * dev),
                                  s["surprise_var"])
        s["live"] = s["live"] + (1.0 if ok is None else ok)
        sequence = np.where(s["live"] > _LIKELIHOOD_WARMUP,
                            np.maximum(likelihood, 0.0) / self.markov_scale, 0.0)
        # 4. shifted level
        z_shift = self._learn_shift(xs, ok)
        shifted = np.where(s["n"] + 1 > self.shift_warmup, z_shift / self.shift_scale, 0.0)
        raw = np.maximum(np.maximum(out_of_range, far), np.maximum(sequence, shifted)) * gate
        # A stream with less history than fit_rows has no opinion yet: 0.
        scores = np.where(s["n"] >= self.fit_rows, _keep(ok, model.squash(raw), 0.0), 0.0)
        # learn
        every = np.ones(self.k, dtype=bool) if ok is None else ok
        self._learn_level(xs, ok, _alpha(self.halflife_level))
        self._learn_transition(xs, every, b)
        s["lo"] = _keep(ok, np.minimum(s["lo"], xs), s["lo"])
        s["hi"] = _keep(ok, np.maximum(s["hi"], xs), s["hi"])
        s["n"] = s["n"] + (1.0 if ok is None else ok)
        return scores

    def to_bytes(self) -> bytes:
        """Serialise parameters and state (an unfitted detector stores its buffer)."""
        state = dict(self.state)
        if self.buffer:
            state["buffer"] = np.array(self.buffer)
        return model.dump(self.KIND, self.params(), state)

    @classmethod
    def from_bytes(cls, data: bytes) -> Novelty:
        params, state = model.load(data, cls.KIND)
        buffer = state.pop("buffer", None)
        out = cls(**params)
        if state and "floor" not in state:  # stored before floors existed
            state["floor"] = np.zeros(out.k)
        out.state = state
        out.buffer = list(buffer) if buffer is not None else []
        return out
