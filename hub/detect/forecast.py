"""Forecast a signal and the time until it crosses a threshold; pure, streaming, numpy only.

Three forecasters, each over ``k`` streams at once, each reduced to a level and a trend per
step so that the time to a threshold has a closed form:

- :class:`Persistence`: tomorrow equals today; never predicts a crossing that has not
  happened (the baseline every forecaster must beat).
- :class:`Linear`: least-squares line through the last ``window`` values, as Prometheus'
  ``predict_linear`` (a ring buffer of the last values; the fit costs O(window)).
- :class:`DampedHolt`: exponential smoothing of level and trend, the trend damped by ``phi``
  per step (Gardner & McKenzie): the forecast ``h`` steps ahead is
  ``level + trend * (phi + phi^2 + ... + phi^h)``, which flattens out instead of running off.

:func:`steps_to_threshold` turns a level, trend and damping into the number of steps until the
forecast reaches a threshold (``inf`` when it never does). Time is in steps: the caller
multiplies by its sampling interval.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field

import numpy as np

from hub.detect.model import Floats


def steps_to_threshold(level: Floats, trend: Floats, threshold: float | Floats,
                       phi: float = 1.0) -> Floats:
    """Return steps until ``level + trend * sum(phi^i, i=1..h)`` reaches ``threshold``.

    0 when the level is already at or past it (in the trend's direction, or on either side
    when the trend is 0 and the level is exactly at it); ``inf`` when the forecast never gets
    there (flat, heading away, or - with damping - flattening out short of it).
    """
    level = np.asarray(level, dtype=np.float64)
    trend = np.asarray(trend, dtype=np.float64)
    gap = np.asarray(threshold, dtype=np.float64) - level
    with np.errstate(divide="ignore", invalid="ignore"):
        if phi >= 1.0:
            h = gap / trend
        else:
            # level + trend * phi (1 - phi^h) / (1 - phi) = threshold
            # => phi^h = 1 - gap (1 - phi) / (trend phi)
            inner = 1.0 - gap * (1.0 - phi) / (trend * phi)
            h = np.where((inner > 0) & (inner < 1), np.log(inner) / np.log(phi), np.inf)
    h = np.where(np.isfinite(h) & (h >= 0), h, np.inf)
    out: Floats = np.where(gap == 0, 0.0, h)
    return out


def steps_to_threshold_1(level: float, trend: float, threshold: float,
                         phi: float = 1.0) -> float:
    """:func:`steps_to_threshold` of one stream, in plain floats (same rules, same results)."""
    gap = threshold - level
    if gap == 0:
        return 0.0
    if math.isnan(gap) or math.isnan(trend) or trend == 0:
        return math.inf
    if phi >= 1.0:
        h = gap / trend
    else:
        inner = 1.0 - gap * (1.0 - phi) / (trend * phi)
        h = math.log(inner) / math.log(phi) if 0 < inner < 1 else math.inf
    return h if math.isfinite(h) and h >= 0 else math.inf


def forecast(level: Floats, trend: Floats, steps: float, phi: float = 1.0) -> Floats:
    """Return the forecast ``steps`` ahead from a level and a (damped) trend."""
    gain = steps if phi >= 1.0 else phi * (1.0 - phi ** steps) / (1.0 - phi)
    out: Floats = np.asarray(level) + np.asarray(trend) * gain
    return out


@dataclass
class Persistence:
    """The last value, with no trend."""

    k: int
    level: Floats = field(init=False)
    phi = 1.0

    def __post_init__(self) -> None:
        self.level = np.full(self.k, np.nan)

    @property
    def trend(self) -> Floats:
        return np.zeros(self.k)

    def step(self, x: Floats) -> None:
        x = np.asarray(x, dtype=np.float64)
        self.level = np.where(np.isnan(x), self.level, x)


@dataclass
class Linear:
    """Least-squares line through the last ``window`` values of each stream (predict_linear).

    The level is the line's value at the newest sample. Values are kept relative to the
    stream's first value so the running sums stay exact for large readings.
    """

    k: int
    window: int = 12
    phi = 1.0
    ring: Floats = field(init=False)
    count: int = field(init=False, default=0)
    ref: Floats = field(init=False)
    _cache: tuple[int, Floats, Floats] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.ring = np.zeros((self.window, self.k))
        self.ref = np.full(self.k, np.nan)

    def step(self, x: Floats) -> None:
        """Add one value per stream (NaN repeats the stream's previous value)."""
        x = np.asarray(x, dtype=np.float64)
        self.ref = np.where(np.isnan(self.ref), x, self.ref)
        last = self.ring[(self.count - 1) % self.window] if self.count else np.zeros(self.k)
        v = np.where(np.isnan(x), last, x - np.nan_to_num(self.ref))
        self.ring[self.count % self.window] = v
        self.count += 1

    def _fit(self) -> tuple[Floats, Floats]:
        if self._cache is not None and self._cache[0] == self.count:
            return self._cache[1], self._cache[2]
        level, slope = self._fit_now()
        self._cache = (self.count, level, slope)
        return level, slope

    def _fit_now(self) -> tuple[Floats, Floats]:
        n = min(self.count, self.window)
        if n == 0:
            return np.full(self.k, np.nan), np.zeros(self.k)
        # Oldest to newest, at times -(n-1) .. 0.
        y = self.ring[(self.count - n + np.arange(n)) % self.window]
        t = np.arange(n, dtype=np.float64) - (n - 1)
        if n == 1:
            return y[-1] + np.nan_to_num(self.ref), np.zeros(self.k)
        tc = t - t.mean()
        slope = (tc[:, None] * (y - y.mean(axis=0))).sum(axis=0) / (tc * tc).sum()
        level = y.mean(axis=0) + slope * (0.0 - t.mean())
        return level + np.nan_to_num(self.ref), slope

    @property
    def level(self) -> Floats:
        return self._fit()[0]

    @property
    def trend(self) -> Floats:
        return self._fit()[1]


@dataclass
class Line:
    """:class:`Linear` of one stream, in plain floats: level and trend are floats.

    The hub's forecasts are thousands of single series (three or more per device), each
    stepped every 10 s; numpy's cost per call made a step of ``Linear(k=1)`` ~70 µs, most
    of the alert watcher's time. Same fit, same results (a test compares them).
    """

    window: int = 12
    phi = 1.0
    # The window's values as C doubles (oldest first): a device holds three or more lines,
    # and a deque of float objects cost ~1.5 KB a line against ~0.3 KB here.
    values: array[float] = field(init=False)
    ref: float | None = field(init=False, default=None)  # the first value: sums stay exact
    level: float = field(init=False, default=math.nan)
    trend: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self.values = array("d")

    def step(self, x: float) -> None:
        """Add one value (NaN repeats the previous one) and fit the line again."""
        if self.ref is None and not math.isnan(x):
            self.ref = x
        ref = self.ref or 0.0
        ys = self.values
        if math.isnan(x):
            ys.append(ys[-1] if ys else 0.0)
        else:
            ys.append(x - ref)
        if len(ys) > self.window:
            del ys[0]  # a move of at most ``window`` doubles
        n = len(ys)
        if n == 1:
            self.level, self.trend = ys[0] + ref, 0.0
            return
        # Times -(n-1) .. 0: their mean is -(n-1)/2 and their squared deviations sum to
        # n (n² - 1) / 12.
        t_mean = -(n - 1) / 2
        y_mean = sum(ys) / n
        covariance = sum((i - (n - 1) / 2) * y for i, y in enumerate(ys))  # Σ (t - t̄) y
        self.trend = covariance / (n * (n * n - 1) / 12)
        self.level = y_mean - self.trend * t_mean + ref


@dataclass
class DampedHolt:
    """Holt's linear exponential smoothing with a damped trend."""

    k: int
    alpha: float = 0.3
    beta: float = 0.05
    phi: float = 0.98
    level: Floats = field(init=False)
    trend: Floats = field(init=False)

    def __post_init__(self) -> None:
        self.level = np.full(self.k, np.nan)
        self.trend = np.zeros(self.k)

    def step(self, x: Floats) -> None:
        x = np.asarray(x, dtype=np.float64)
        ok = ~np.isnan(x)
        start = ok & np.isnan(self.level)
        predicted = self.level + self.phi * self.trend
        level = self.alpha * x + (1.0 - self.alpha) * predicted
        trend = self.beta * (level - self.level) + (1.0 - self.beta) * self.phi * self.trend
        self.level = np.where(start, x, np.where(ok, level, self.level))
        self.trend = np.where(ok & ~start, trend, self.trend)
