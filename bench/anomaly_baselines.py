"""Baseline anomaly detectors for bench/anomaly_eval.py; batch, causal, never shipped.

- :func:`netdata`: Netdata's per-metric method. Each sample becomes a feature vector: the
  1-step difference, smoothed by a 3-sample mean, with its 5 previous values (6 numbers).
  k-means with k = 2 is trained on the last ``window`` samples every ``every`` samples; a
  sample's distance to its nearest centroid is compared with the 99th percentile of the
  training distances. Netdata flags a sample when all of its ``models`` most recent models
  agree; our score is the smallest ``distance / p99`` over those models (>= 1: all agree), so
  the NAB threshold sweep can also pick Netdata's own cut of 1.
- :func:`isolation_forest`: scikit-learn's IsolationForest on the same features plus the raw
  value, trained on the last ``window`` samples every ``every`` samples and scored in batches
  (``score_samples``; one call per row would cost milliseconds).
- :func:`random_scores`: uniform noise, NAB's sanity floor.

Every model is trained only on samples before the ones it scores (no labels, no future).
"""

from __future__ import annotations

import numpy as np

from bench.nab.score import Floats

LAGS = 5


def features(values: Floats, smooth: int = 3, lags: int = LAGS) -> Floats:
    """Netdata's feature vector per sample: smoothed 1-step difference and its ``lags`` lags.

    Row ``i`` describes sample ``i`` from samples ``<= i`` only; the first rows repeat the
    earliest available values.
    """
    x = np.asarray(values, dtype=np.float64)
    diff = np.diff(x, prepend=x[:1])
    kernel = np.ones(smooth) / smooth
    smoothed = np.convolve(np.r_[np.full(smooth - 1, diff[0]), diff], kernel, mode="valid")
    padded = np.r_[np.full(lags, smoothed[0]), smoothed]
    n = len(x)
    return np.stack([padded[lags - j: lags - j + n] for j in range(lags + 1)], axis=1)


def kmeans2(data: Floats, iterations: int = 20) -> Floats:
    """Lloyd's k-means with k = 2, started from the two mutually farthest-ish points."""
    a = data[np.argmax(((data - data.mean(axis=0)) ** 2).sum(axis=1))]
    b = data[np.argmax(((data - a) ** 2).sum(axis=1))]
    centres = np.stack([a, b])
    for _ in range(iterations):
        d = ((data[:, None, :] - centres[None]) ** 2).sum(axis=2)
        label = d.argmin(axis=1)
        new = np.stack([data[label == j].mean(axis=0) if (label == j).any() else centres[j]
                        for j in range(2)])
        if np.allclose(new, centres):
            break
        centres = new
    return centres


def _nearest(data: Floats, centres: Floats) -> Floats:
    out: Floats = np.sqrt(((data[:, None, :] - centres[None]) ** 2).sum(axis=2).min(axis=1))
    return out


def netdata(values: Floats, window: int = 1000, every: int = 250, models: int = 4,
            first: int = 150) -> Floats:
    """Score one series the way Netdata's ML does (see module docstring)."""
    f = features(values)
    n = len(f)
    out = np.zeros(n)
    trained: list[tuple[Floats, float]] = []
    starts = [first, *range(first + every, n, every)]
    for i, t in enumerate(starts):
        train = f[max(0, t - window): t]
        centres = kmeans2(train)
        p99 = float(np.percentile(_nearest(train, centres), 99)) or 1e-12
        trained = [*trained, (centres, p99)][-models:]
        stop = starts[i + 1] if i + 1 < len(starts) else n
        block = f[t:stop]
        ratios = np.stack([_nearest(block, c) / p for c, p in trained])
        out[t:stop] = ratios.min(axis=0)
    return out


def isolation_forest(values: Floats, window: int = 1000, every: int = 1000,
                     first: int = 150, seed: int = 0) -> Floats:
    """Score one series with Isolation Forests retrained on successive windows."""
    from sklearn.ensemble import IsolationForest  # the bench extra only

    x = np.asarray(values, dtype=np.float64)
    f = np.column_stack([x, features(x)])
    n = len(f)
    out = np.zeros(n)
    starts = [first, *range(first + every, n, every)]
    for i, t in enumerate(starts):
        forest = IsolationForest(n_estimators=50, random_state=seed)
        forest.fit(f[max(0, t - window): t])
        stop = starts[i + 1] if i + 1 < len(starts) else n
        out[t:stop] = -forest.score_samples(f[t:stop])
    return out


def random_scores(n: int, seed: int) -> Floats:
    """Uniform noise in [0, 1)."""
    return np.random.default_rng(seed).random(n)
