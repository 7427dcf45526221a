"""Try to lift the candidate ``novelty`` detector on NAB, choosing on the tune half only.

    python3 -m bench.novelty_grid      # ~4 min on one core; the autoencoder needs PyTorch

Candidates: a grid over its z and sequence scales; the mean and the median of six settings
of its shifted-level part (shift scale 6/7/8 x slow half-life 2,000/4,000); and the largest of
its surprise and a fraction of the autoencoder's. Every candidate runs over the whole corpus;
the choice is made on the tune half's standard score alone (alternate files of each group,
bench/nab/evaluate.py), and only then is the test half computed for every candidate, so the
table shows how much each choice carries over. Writes bench/results/novelty_grid.json.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.common import RESULTS
from bench.nab import corpus, evaluate
from bench.nab.corpus import Series
from bench.nab.score import Floats
from hub.detect.autoencoder import Autoencoder
from hub.detect.novelty import Novelty

GRID = {"z_scale": (30.0, 40.0, 50.0), "markov_scale": (4.0, 5.0, 6.0)}
SHIFTS = list(itertools.product((6.0, 7.0, 8.0), (2000.0, 4000.0)))
AE_WEIGHTS = (0.25, 0.5, 1.0)


def surprise(make: Callable[[int], Any], series: list[Series]) -> list[Floats]:
    """Each series' raw surprise (``squash`` undone) under one detector."""
    scores, _ = evaluate.run_streaming(make, series)
    return [s / np.maximum(1.0 - s, 1e-12) for s in scores]


def squash(raw: list[Floats]) -> list[Floats]:
    return [r / (1.0 + r) for r in raw]


def main() -> int:
    t0 = time.monotonic()
    series = corpus.load()
    tune, test = evaluate.split(series)
    cands: dict[str, list[Floats]] = {}
    for values in itertools.product(*GRID.values()):
        params = dict(zip(GRID, values, strict=True))
        cands[json.dumps(params)] = surprise(lambda k, p=params: Novelty(k, **p), series)
        print(json.dumps(params), flush=True)
    shipped = cands[json.dumps({"z_scale": 40.0, "markov_scale": 5.0})]
    shifted = [surprise(lambda k, s=s, h=h: Novelty(k, shift_scale=s, halflife_slow=h), series)
               for s, h in SHIFTS]
    for name, fn in (("mean", np.mean), ("median", np.median)):
        cands[f"{name} of 6 shift settings"] = [fn([r[i] for r in shifted], axis=0)
                                                 for i in range(len(series))]
    print("autoencoder", flush=True)
    ae = surprise(lambda k: Autoencoder(k, refit_rows=4800), series)
    for w in AE_WEIGHTS:
        cands[f"max(novelty, {w:g} x autoencoder)"] = [np.maximum(a, w * b)
                                                        for a, b in zip(shipped, ae, strict=True)]
    rows = [{"candidate": name, "tune": evaluate.evaluate(squash(raw), series, tune)
             ["standard"]["score"]} for name, raw in cands.items()]
    best = max(rows, key=lambda r: r["tune"])  # first of equals: the grid's order
    for r in rows:  # the test half, only after the choice
        r["test"] = evaluate.evaluate(squash(cands[r["candidate"]]), series, test
                                      )["standard"]["score"]
        r["chosen"] = r is best
    print(f"\n{'candidate':48s} {'tune':>6s} {'test':>6s}")
    for r in rows:
        print(f"{r['candidate']:48s} {r['tune']:6.1f} {r['test']:6.1f}"
              + ("  <- chosen on tune" if r["chosen"] else ""))
    data = {"grid": GRID, "shifts": SHIFTS, "rows": rows, "wall_s": time.monotonic() - t0}
    (RESULTS / "novelty_grid.json").write_text(json.dumps(data, indent=1) + "\n")
    print(f"\nwall {data['wall_s']:.0f} s (machine shared)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
