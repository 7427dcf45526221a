"""A small grid over the candidate ``novelty`` detector, chosen on NAB's tune half only.

    python3 -m bench.novelty_grid      # ~3 min on one core

Every variant runs over the whole corpus; the choice is made on the tune half's standard
score alone (alternate files of each group, bench/nab/evaluate.py), and only then is the
test half printed for every variant, so the table shows how much the choice carries over.
Writes bench/results/novelty_grid.json.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

from bench.common import RESULTS
from bench.nab import corpus, evaluate
from hub.detect.novelty import Novelty

GRID = {"z_scale": (30.0, 40.0, 50.0), "markov_scale": (4.0, 5.0, 6.0)}


def main() -> int:
    t0 = time.monotonic()
    series = corpus.load()
    tune, test = evaluate.split(series)
    rows: list[dict[str, Any]] = []
    for values in itertools.product(*GRID.values()):
        params = dict(zip(GRID, values, strict=True))
        scores, _ = evaluate.run_streaming(lambda k, p=params: Novelty(k, **p), series)
        rows.append({"params": params,
                     "tune": evaluate.evaluate(scores, series, tune)["standard"]["score"],
                     "_scores": scores})
        print(f"{params}: tune {rows[-1]['tune']:.1f}", flush=True)
    best = max(rows, key=lambda r: r["tune"])
    for r in rows:  # the test half, only after the choice
        r["test"] = evaluate.evaluate(r.pop("_scores"), series, test)["standard"]["score"]
        r["chosen"] = r is best
    print(f"\n{'params':48s} {'tune':>6s} {'test':>6s}")
    for r in rows:
        print(f"{json.dumps(r['params']):48s} {r['tune']:6.1f} {r['test']:6.1f}"
              + ("  <- chosen on tune" if r["chosen"] else ""))
    data = {"grid": GRID, "rows": rows, "wall_s": time.monotonic() - t0}
    (RESULTS / "novelty_grid.json").write_text(json.dumps(data, indent=1) + "\n")
    print(f"\nwall {data['wall_s']:.0f} s (machine shared)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
