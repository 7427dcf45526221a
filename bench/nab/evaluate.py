"""Run streaming detectors over the NAB corpus and score them; used by bench/anomaly_eval.py.

All 58 series are stepped together as the columns of one matrix (padded with NaN after each
series ends), so a streaming detector's ``step`` is called once per row for every series at
once: the same vectorised call the hub makes for a device's signals.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from bench.nab import score
from bench.nab.corpus import Series
from bench.nab.score import PROFILES, Floats


class Streaming(Protocol):
    def step(self, x: Floats) -> Floats: ...


def matrix(series: Sequence[Series]) -> Floats:
    """Stack the series' values as columns, NaN after each one ends."""
    out = np.full((max(len(s.values) for s in series), len(series)), np.nan)
    for j, s in enumerate(series):
        out[: len(s.values), j] = s.values
    return out


def run_streaming(make: Callable[[int], Streaming], series: Sequence[Series]
                  ) -> tuple[list[Floats], float]:
    """Score every series with one detector made for ``len(series)`` streams; CPU seconds."""
    x = matrix(series)
    det = make(x.shape[1])
    out = np.zeros_like(x)
    t0 = time.process_time()
    for i in range(x.shape[0]):
        out[i] = det.step(x[i])
    cpu = time.process_time() - t0
    return [out[: len(s.values), j].copy() for j, s in enumerate(series)], cpu


def split(series: Sequence[Series]) -> tuple[list[int], list[int]]:
    """Halve the corpus: alternate files of each group (sorted by name) to tune / to test."""
    tune, test = [], []
    seen: dict[str, int] = {}
    for i, s in enumerate(series):
        n = seen.get(s.group, 0)
        (tune if n % 2 == 0 else test).append(i)
        seen[s.group] = n + 1
    return tune, test


def evaluate(scores: Sequence[Floats], series: Sequence[Series],
             subset: Sequence[int] | None = None,
             clear_ratio: float | None = None) -> dict[str, Any]:
    """Score a detector's outputs per profile: one corpus threshold, total and per group.

    With ``clear_ratio``, a detection is an alert opening of the hub's rule (no duration;
    closing below ``clear_ratio`` × the threshold: :func:`score.openings`), not every row at
    or above the threshold.
    """
    idx = list(range(len(series))) if subset is None else list(subset)
    ws = [score.weights(series[i].labels) for i in idx]
    ss = [np.asarray(scores[i], dtype=np.float64) for i in idx]
    n_windows = sum(w.n_windows for w in ws)
    out: dict[str, Any] = {}
    for p in PROFILES:
        if clear_ratio is None:
            best = score.sweep(ss, ws, p)
        else:
            best = score.sweep_openings(ss, ws, p, clear_ratio)
        groups: dict[str, dict[str, Any]] = {}
        for i, s, w in zip(idx, ss, ws, strict=True):
            if clear_ratio is None:
                c = score.score_series(s, w, best.threshold, p)
            else:
                fired = score.openings(s, best.threshold, clear_ratio * best.threshold)
                c = score.score_series(fired, w, 0.5, p)
            g = groups.setdefault(series[i].group, {"raw": 0.0, "windows": 0, "detected": 0,
                                                    "false_positives": 0})
            g["raw"] += c.raw
            g["windows"] += c.n_windows
            g["detected"] += c.detected_windows
            g["false_positives"] += c.false_positives
        for g in groups.values():
            g["score"] = score.normalise(g["raw"], g["windows"], p)
        out[p.name] = {"threshold": best.threshold, "raw": best.raw,
                       "score": score.normalise(best.raw, n_windows, p),
                       "detected": sum(g["detected"] for g in groups.values()),
                       "windows": n_windows,
                       "false_positives": sum(g["false_positives"] for g in groups.values()),
                       "groups": groups}
    return out
