"""Train a device's detector from its stored history; pure (the history comes in as a matrix).

:func:`train` decides whether the history is enough (``min_readings`` rows), builds the
detector of the configured kind over :data:`hub.detect.features.SIGNALS` and fits it (a
Novelty detector gets each signal's floor too).

``Novelty.fit`` walks the history one row at a time (~100 µs a row for 15 signals here: 9 s of
CPU per device-day at one reading a second). :func:`fit_novelty` computes the same state in a
few vectorised passes per signal: the exponentially weighted means, whose final values are
weighted sums; the variances, which need the mean before each value (closed form within
chunks short enough that the growth factor stays below 2^20, so no precision is lost); and
the transition table, a histogram of consecutive bin pairs. A unit test checks it against
``Novelty.fit`` on data with gaps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from hub.detect.autoencoder import Autoencoder
from hub.detect.features import SIGNALS, signal_floors
from hub.detect.gaussian import WindowedGaussian
from hub.detect.model import Floats
from hub.detect.novelty import Novelty, _alpha, shift_history


class Detector(Protocol):
    """What the hub needs of a detector (hub/detect/__init__.py describes the contract)."""

    @property
    def KIND(self) -> str: ...  # the detectors' class constant
    @property
    def k(self) -> int: ...

    def fit(self, history: Floats) -> None: ...
    def step(self, x: Floats) -> Floats: ...
    def to_bytes(self) -> bytes: ...


# A device's history is held within this many robust deviations (or floors) of its median
# before the level-shift test learns its slow deviation from it (hub/detect/novelty.py
# ``shift_history``): minutes of unrelated work in the history no longer hide a sustained
# fault of the same size (docs/anomaly.md, "The busy history").
SHIFT_CLIP = 4.0


def _novelty(k: int, min_readings: int) -> Novelty:
    # Its warm-ups (readings before a signal has an opinion, before the level-shift test
    # speaks) never exceed what a trained model is guaranteed to have seen.
    default = Novelty(k=k)
    return Novelty(k=k, fit_rows=min(default.fit_rows, min_readings),
                   shift_warmup=min(default.shift_warmup, min_readings),
                   shift_clip=SHIFT_CLIP)


BUILDERS: dict[str, Callable[[int, int], Detector]] = {
    "novelty": _novelty,
    "windowed_gaussian": lambda k, min_readings: WindowedGaussian(k=k),
    # Selectable, not the default (docs/anomaly.md): training needs PyTorch (the train
    # extra; RuntimeError saying so without it), scoring numpy alone.
    "autoencoder": lambda k, min_readings: Autoencoder(k=k),
}
LOADERS: dict[str, Callable[[bytes], Detector]] = {
    "novelty": Novelty.from_bytes,
    "windowed_gaussian": WindowedGaussian.from_bytes,
    "autoencoder": Autoencoder.from_bytes,
}


def load_detector(kind: str, data: bytes) -> Detector:
    """Rebuild a stored detector; ValueError for a kind this hub does not know."""
    loader = LOADERS.get(kind)
    if loader is None:
        raise ValueError(f"unknown detector kind {kind!r} (known: {', '.join(LOADERS)})")
    return loader(data)


def params_of(detector: Detector) -> dict[str, Any]:
    """The detector's parameters, for people (stored as JSON beside the model)."""
    params = getattr(detector, "params", None)
    if callable(params):
        out: dict[str, Any] = params()
        return out
    return {name: getattr(detector, name) for name in ("k", "window", "min_count")
            if hasattr(detector, name)}


@dataclass(frozen=True)
class TooLittleHistory:
    rows: int
    needed: int

    @property
    def message(self) -> str:
        return (f"too little history: {self.rows:,} readings, a model needs "
                f"{self.needed:,} (train_min_readings)")


def train(history: Floats, kind: str, min_readings: int) -> Detector | TooLittleHistory:
    """Fit a detector of ``kind`` on ``history`` (``T x k``, oldest first), or say why not.

    Rows where every signal is NaN do not count as readings.
    """
    history = np.asarray(history, dtype=np.float64)
    rows = int((~np.isnan(history)).any(axis=1).sum()) if history.size else 0
    if rows < min_readings:
        return TooLittleHistory(rows, min_readings)
    detector = BUILDERS[kind](history.shape[1], min_readings)
    if isinstance(detector, Novelty):
        # a device's signals have floors (a test's few streams none)
        floors = signal_floors(history) if history.shape[1] == len(SIGNALS) else None
        fit_novelty(detector, history, floors)
    else:
        detector.fit(history)
    return detector


# --- the vectorised fit of Novelty ---------------------------------------------------------

_GROWTH_LIMIT = 20.0  # log2 of the largest growth factor inside one chunk


def _ewma_final(v: Floats, start: float, a: float, powers: Floats) -> float:
    """The exponentially weighted mean after ``v``, starting from ``start``.

    ``powers[i]`` is ``(1 - a) ** i`` (computed once for every signal).
    """
    n = len(v)
    return float(powers[n] * start + a * (powers[n - 1::-1] @ v))


def _ewma_with_var(v: Floats, mean: float, var: float, a: float, halflife: float,
                   powers: Floats) -> tuple[float, float]:
    """Mean and variance after ``v`` as Novelty's updates leave them.

    Each step: ``dev = x - mean``; ``mean += a dev``; ``var = (1 - a)(var + a dev²)``.
    """
    n = len(v)
    means = np.empty(n + 1)  # the mean before each value, then the final one
    means[0] = mean
    chunk = max(1, min(n, int(_GROWTH_LIMIT * halflife)))
    growth = 1.0 / powers[1:chunk + 1]
    pos = 0
    while pos < n:
        size = min(chunk, n - pos)
        means[pos + 1:pos + size + 1] = (means[pos] + a * np.cumsum(v[pos:pos + size]
                                                                    * growth[:size])) \
            / growth[:size]
        pos += size
    dev = v - means[:-1]
    # The value i of n (1-based) is weighted by (1 - a)^(n - i + 1).
    return float(means[-1]), float(powers[n] * var + a * (powers[n:0:-1] @ (dev * dev)))


def fit_novelty(detector: Novelty, history: Floats, floors: Floats | None = None) -> None:
    """Set ``detector``'s state exactly as ``detector.fit(history, floors)`` would, vectorised."""
    d = detector
    h = np.asarray(history, dtype=np.float64).reshape(-1, d.k)
    floors = np.zeros(d.k) if floors is None else np.asarray(floors, dtype=np.float64)
    seen = ~np.isnan(h)
    if not seen.any():
        d.fit(h[:0], floors)  # no value at all: the walk over the rows would change nothing
        return
    held = shift_history(h, d.shift_clip, floors)
    quant = np.linspace(0.0, 1.0, d.bins + 1)[1:-1]
    any_seen = seen.any(axis=0)
    edges = np.zeros((d.k, d.bins - 1))
    edges[any_seen] = np.nanquantile(h[:, any_seen], quant, axis=0).T
    first = np.where(any_seen, h[np.argmax(seen, axis=0), np.arange(d.k)], 0.0)
    s: dict[str, Floats] = {
        "edges": edges,
        "counts": np.zeros((d.k, d.bins, d.bins)),
        "context": np.zeros(d.k),
        "lo": np.where(any_seen, np.nanmin(np.where(seen, h, np.inf), axis=0), np.inf),
        "hi": np.where(any_seen, np.nanmax(np.where(seen, h, -np.inf), axis=0), -np.inf),
        "n": seen.sum(axis=0).astype(np.float64),
        "level": first.copy(), "level_var": np.zeros(d.k),
        "change": np.zeros(d.k), "change_var": np.zeros(d.k),
        "previous": first.copy(), "fast": first.copy(),
        "slow": np.zeros(d.k), "slow_var": np.zeros(d.k),
        "surprise": np.zeros(d.k), "surprise_mean": np.zeros(d.k),
        "surprise_var": np.full(d.k, 0.01), "live": np.zeros(d.k),
        "floor": floors.copy(),
    }
    s["slow"][any_seen] = np.nanmean(held[:, any_seen], axis=0)
    s["slow_var"][any_seen] = np.nanvar(held[:, any_seen], axis=0)
    a_level, a_fast, a_slow = (_alpha(d.halflife_level), _alpha(d.halflife_fast),
                               _alpha(d.halflife_slow))
    steps = np.arange(len(h) + 1, dtype=np.float64)
    p_level, p_fast, p_slow = ((1.0 - a) ** steps for a in (a_level, a_fast, a_slow))
    for j in np.flatnonzero(any_seen):
        v = h[seen[:, j], j]
        s["level"][j], s["level_var"][j] = _ewma_with_var(v, v[0], 0.0, a_level,
                                                          d.halflife_level, p_level)
        change = np.diff(v, prepend=v[0])
        s["change"][j], s["change_var"][j] = _ewma_with_var(change, 0.0, 0.0, a_level,
                                                            d.halflife_level, p_level)
        s["previous"][j] = v[-1]
        s["fast"][j] = _ewma_final(v, v[0], a_fast, p_fast)
        s["slow"][j], s["slow_var"][j] = _ewma_with_var(held[seen[:, j], j], s["slow"][j],
                                                        s["slow_var"][j],
                                                        a_slow, d.halflife_slow, p_slow)
        b = np.searchsorted(edges[j], v, side="left")  # edges below the value, as _bin
        context = np.concatenate(([0], b[:-1]))
        s["counts"][j] = np.bincount(context * d.bins + b,
                                     minlength=d.bins * d.bins).reshape(d.bins, d.bins)
        s["context"][j] = b[-1]
    d.state = s
