"""Score anomaly detectors by the rules of the Numenta Anomaly Benchmark (NAB v1.1); pure.

Written from NAB's published rules (its README, whitepaper and the scoring code of the public
NAB repository, commit ea702d7), in our own words and with numpy:

- Each series has labelled anomaly windows. A row is *detected* when its anomaly score is at
  or above the threshold.
- A detection inside a window earns the window a reward from a scaled sigmoid of its position:
  the first row of the window earns the full ``tp_weight``, the reward falls towards 0 at the
  window's right edge. Only the best (earliest) detection of a window counts; later ones in the
  same window are free.
- A window with no detection costs ``fn_weight``.
- A detection outside every window costs ``fp_weight`` times a sigmoid of its distance past the
  end of the preceding window (measured in that window's widths): a detection just after a
  window costs almost nothing, one more than a few widths away (or before the first window)
  costs the full ``fp_weight``.
- The first 15 % of each series (at most 750 rows) is probation: nothing there counts.
- One threshold per profile for the whole corpus, the one that maximises the summed raw score.
- The raw score is normalised so that the null detector (never fires: every window missed)
  scores 0 and the perfect detector (fires on the first row of every window, nowhere else)
  scores 100: ``100 * (raw - null) / (perfect - null)``.

Row weights depend only on the labels, so they are computed once per series (:func:`weights`);
a threshold sweep over the whole corpus is then one sort (:func:`sweep`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]

PROBATION_FRACTION = 0.15
PROBATION_MAX_ROWS = 750  # NAB caps probation at 15 % of 5,000 rows


@dataclass(frozen=True)
class Profile:
    """Weights of one NAB application profile."""

    name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float


STANDARD = Profile("standard", tp_weight=1.0, fp_weight=0.11, fn_weight=1.0)
LOW_FP = Profile("reward_low_FP_rate", tp_weight=1.0, fp_weight=0.22, fn_weight=1.0)
LOW_FN = Profile("reward_low_FN_rate", tp_weight=1.0, fp_weight=0.11, fn_weight=2.0)
PROFILES = (STANDARD, LOW_FP, LOW_FN)

OUTSIDE = -1  # window id of a row outside every window
PROBATION = -2  # window id of a row in the probation period (never scored)


def scaled_sigmoid(position: Floats | float) -> Floats:
    """Map a relative position to a reward in (-1, 1): -1 → 0.987, 0 → 0, +1 → -0.987.

    Negative positions lie inside a window (-1 = its left edge, 0 = just past its right edge);
    positive ones lie after a window, in window widths. From 3 widths on the value is -1.
    """
    p = np.asarray(position, dtype=np.float64)
    out = 2.0 / (1.0 + np.exp(5.0 * p)) - 1.0
    return np.where(p >= 3.0, -1.0, out)


MAX_TP = float(scaled_sigmoid(-1.0))


def probation_rows(n_rows: int) -> int:
    """Return how many leading rows of an ``n_rows`` series are probation."""
    return int(min(math.floor(PROBATION_FRACTION * n_rows), PROBATION_MAX_ROWS))


@dataclass(frozen=True)
class Labels:
    """The labels of one series as row numbers: windows are inclusive ``(first, last)`` rows."""

    n_rows: int
    windows: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class RowWeights:
    """What detecting each row is worth, per profile-independent parts.

    ``window[i]`` is the window number (0-based within the series) of row ``i``, or
    :data:`OUTSIDE` / :data:`PROBATION`. ``tp[i]`` is the reward (before ``tp_weight``) of a
    first detection at row ``i`` if it is in a window; ``fp[i]`` the cost factor (negative,
    before ``fp_weight``) of a detection at row ``i`` if it is outside.
    """

    window: Ints
    tp: Floats
    fp: Floats
    n_windows: int


def weights(labels: Labels) -> RowWeights:
    """Compute each row's window, reward and cost from the labels alone."""
    n = labels.n_rows
    window = np.full(n, OUTSIDE, dtype=np.int64)
    tp = np.zeros(n)
    fp = np.full(n, -1.0)  # before the first window: full cost
    idx = np.arange(n, dtype=np.float64)
    previous_end = -1
    for k, (first, last) in enumerate(labels.windows):
        if not (0 <= first <= last < n) or first <= previous_end:
            raise ValueError(f"window {k} ({first}, {last}) is not inside {n} rows in order")
        width = last - first + 1
        inside = slice(first, last + 1)
        window[inside] = k
        # The first row is at position -1 (full reward); the last at -1/width.
        tp[inside] = scaled_sigmoid(-(last - idx[inside] + 1.0) / width) / MAX_TP
        fp[inside] = 0.0
        stop = labels.windows[k + 1][0] if k + 1 < len(labels.windows) else n
        after = slice(last + 1, stop)
        fp[after] = scaled_sigmoid((idx[after] - last) / max(width - 1, 1))
        previous_end = last
    probation = probation_rows(n)
    if labels.windows and labels.windows[0][1] < probation:
        # NAB's labeller deletes such windows; a window nothing can detect is a label error.
        raise ValueError(f"window {labels.windows[0]} ends inside the probation period")
    window[:probation] = PROBATION
    return RowWeights(window=window, tp=tp, fp=fp, n_windows=len(labels.windows))


@dataclass(frozen=True)
class Counts:
    """Raw score and its parts for one series or a group, at one threshold."""

    raw: float
    detected_windows: int
    n_windows: int
    false_positives: int
    tp_reward: float
    fp_cost: float


def score_series(
    scores: Floats, w: RowWeights, threshold: float, profile: Profile
) -> Counts:
    """Return the raw NAB score of one series at ``threshold``."""
    if len(scores) != len(w.window):
        raise ValueError(f"{len(scores)} scores for {len(w.window)} rows")
    fired = np.asarray(scores, dtype=np.float64) >= threshold
    fp_rows = fired & (w.window == OUTSIDE)
    fp_cost = profile.fp_weight * float(w.fp[fp_rows].sum())
    in_window = fired & (w.window >= 0)
    best = np.full(w.n_windows, -np.inf)
    np.maximum.at(best, w.window[in_window], w.tp[in_window])
    hit = np.isfinite(best)
    detected = int(hit.sum())
    tp_reward = profile.tp_weight * float(best[hit].sum())
    fn_cost = profile.fn_weight * (w.n_windows - detected)
    return Counts(raw=tp_reward + fp_cost - fn_cost, detected_windows=detected,
                  n_windows=w.n_windows, false_positives=int(fp_rows.sum()),
                  tp_reward=tp_reward, fp_cost=fp_cost)


@dataclass(frozen=True)
class Sweep:
    """The best corpus threshold of one profile and the raw score it gives."""

    threshold: float
    raw: float


def sweep(
    scores: Sequence[Floats], ws: Sequence[RowWeights], profile: Profile
) -> Sweep:
    """Find the threshold that maximises the corpus's summed raw score.

    Lowering the threshold past a row adds its cost if it is outside every window; inside a
    window it adds how much it raises the window's best reward (a first detection also cancels
    the window's ``fn_weight``). Sorting every scored row once by descending score and adding
    these increments gives the raw score at every distinct threshold. Among equal raw scores
    the highest threshold wins. A threshold above every score (nothing detected) is a candidate.
    """
    s_parts, gain_parts = [], []
    window_base = 0
    for s, w in zip(scores, ws, strict=True):
        keep = w.window != PROBATION
        s_parts.append(np.asarray(s, dtype=np.float64)[keep])
        win = w.window[keep]
        gain = np.where(win == OUTSIDE, profile.fp_weight * w.fp[keep], 0.0)
        win = np.where(win >= 0, win + window_base, OUTSIDE)
        gain_parts.append((gain, win, profile.tp_weight * w.tp[keep]))
        window_base += w.n_windows
    all_s = np.concatenate(s_parts) if s_parts else np.zeros(0)
    if np.isnan(all_s).any():
        raise ValueError("anomaly scores contain NaN")
    gain = np.concatenate([g for g, _, _ in gain_parts]) if s_parts else np.zeros(0)
    win = np.concatenate([x for _, x, _ in gain_parts]) if s_parts else np.zeros(0, np.int64)
    reward = np.concatenate([r for _, _, r in gain_parts]) if s_parts else np.zeros(0)
    order = np.argsort(-all_s, kind="stable")
    s_sorted, gain, win, reward = all_s[order], gain[order], win[order], reward[order]
    inside = np.flatnonzero(win >= 0)
    if inside.size:
        # Per window, the running best reward as the threshold falls (rows in sorted order).
        by_window = inside[np.argsort(win[inside], kind="stable")]
        w_sorted = win[by_window]
        starts = np.flatnonzero(np.r_[True, w_sorted[1:] != w_sorted[:-1]])
        for a, b in zip(starts, np.r_[starts[1:], len(by_window)], strict=True):
            rows = by_window[a:b]
            best = np.maximum.accumulate(reward[rows] + profile.fn_weight)
            gain[rows] = np.diff(best, prepend=0.0)
    base = -profile.fn_weight * window_base
    totals = base + np.cumsum(gain)
    # A threshold equal to a score detects every row with that score: read the total at the
    # last row of each run of equal scores.
    last_of_run = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True]) if len(
        s_sorted) else np.zeros(0, np.int64)
    candidates = np.r_[base, totals[last_of_run]]
    best_i = int(np.argmax(candidates))
    if best_i == 0:
        top = float(s_sorted[0]) if len(s_sorted) else 0.0
        return Sweep(threshold=math.nextafter(top, math.inf), raw=float(base))
    return Sweep(threshold=float(s_sorted[last_of_run[best_i - 1]]),
                 raw=float(candidates[best_i]))


def openings(scores: Floats, threshold: float, clear: float) -> Floats:
    """1.0 at each row where an alert opens, else 0.0: the hub's rule with no duration.

    An alert opens when the score reaches ``threshold`` while none is open, and closes when
    the score falls below ``clear`` (≤ ``threshold``); rows in between open nothing new.
    """
    s = np.asarray(scores, dtype=np.float64)
    event = np.where(s >= threshold, 1, np.where(s < clear, 0, -1))  # -1: keeps the state
    last = np.maximum.accumulate(np.where(event >= 0, np.arange(len(s)), -1))
    state = np.where(last >= 0, event[np.maximum(last, 0)], 0)
    opened = (state == 1) & (np.r_[0, state[:-1]] == 0)
    return opened.astype(np.float64)


def new_highs(scores: Floats, window: int) -> Floats:
    """Keep a row's score only where it is above every score of the ``window`` rows before
    it (0.0 elsewhere): an episode of high scores becomes its rises.

    Causal and independent of the threshold, so the result is an ordinary score series for
    NAB's sweep: at any threshold, a detection is a row that reaches it and tops the recent
    past, not every row of a long episode (each one outside a window a false positive).
    """
    s = np.asarray(scores, dtype=np.float64)
    if window < 1 or not len(s):
        return s.copy()
    before = np.lib.stride_tricks.sliding_window_view(
        np.r_[np.full(window, -np.inf), s[:-1]], window).max(axis=1)
    return np.where(s > before, s, 0.0)


def sweep_openings(scores: Sequence[Floats], ws: Sequence[RowWeights], profile: Profile,
                   clear_ratio: float, candidates: int = 300) -> Sweep:
    """Like :func:`sweep`, with a detection being an alert opening (:func:`openings`, clearing
    at ``clear_ratio`` × the threshold): the raw score at each of ``candidates`` thresholds
    (quantiles of the scores above their median, and the largest scores), best kept."""
    every = np.concatenate([np.asarray(x, dtype=np.float64) for x in scores])
    top = np.unique(every)[-50:]
    grid = np.unique(np.r_[np.quantile(every, np.linspace(0.5, 1.0, candidates)), top])
    base = -profile.fn_weight * sum(w.n_windows for w in ws)
    best = Sweep(threshold=math.nextafter(float(every.max()), math.inf), raw=float(base))
    for t in grid[::-1]:  # from the highest: among equal raw scores the highest wins
        raw = sum(score_series(openings(x, t, clear_ratio * t), w, 0.5, profile).raw
                  for x, w in zip(scores, ws, strict=True))
        if raw > best.raw:
            best = Sweep(threshold=float(t), raw=raw)
    return best


def null_raw(n_windows: int, profile: Profile) -> float:
    """Return the raw score of a detector that never fires."""
    return -profile.fn_weight * n_windows


def perfect_raw(n_windows: int, profile: Profile) -> float:
    """Return the raw score of a detector that fires on the first row of every window only."""
    return profile.tp_weight * n_windows


def normalise(raw: float, n_windows: int, profile: Profile) -> float | None:
    """Map a raw score to NAB's 0 (null) to 100 (perfect) scale; None with no windows."""
    low, high = null_raw(n_windows, profile), perfect_raw(n_windows, profile)
    if high == low:
        return None
    return 100.0 * (raw - low) / (high - low)
