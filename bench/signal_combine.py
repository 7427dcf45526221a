"""Should a reading's anomaly score combine its signals' evidence instead of taking the largest?

The hub scores a reading as the largest of its 16 per-signal scores (hub/detect/live.py). A
one-core CPU spin moves three related signals (total CPU, per-core spread, load) each a
little; on the third fault recording none of them alone reached the rule's 0.5. This bench
replays the shipped novelty detector and compares ways of combining the per-signal scores
s_i, each read through the hub's own ``anomaly`` rule (0.5 for 7 s, closing below 0.3):

- ``max``: the largest s_i (shipped);
- ``top2`` / ``top3``: 1 - prod(1 - s_i) over the two / three largest ("noisy or");
- ``all``: 1 - prod(1 - s_i) over every signal.

Data: the three labelled fault recordings (as bench/fault_eval.py splits them: train, then
evaluate after the calibration span), and the real agent's recording of a shared machine
(bench/data/agent-recording.jsonl.xz, unlabelled, not quiet: other people's work ran on it),
trained on its first 25 minutes. On that one every alert is unlabelled activity; what counts
is how often each combination calls an ordinary busy machine anomalous.

    python3 -m bench.signal_combine
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import progress, table, write_result
from bench.detect_cost import recorded_rows, recorded_signals
from bench.fault_eval import SHIPPED, alerts_of, judge, load, recording_split, signal_scores
from hub.alerts import Rule
from hub.detect.features import SOURCE_COLUMNS, signal_rows
from hub.detect.model import Floats
from shared.schema import metrics_columns

DATA = Path(__file__).resolve().parent / "data"
RECORDINGS = ("faults", "faults2", "faults3")
AGENT_FIT = 1500  # readings of the agent's recording that train the detector


def _noisy_or(sorted_scores: Floats, top: int | None) -> Floats:
    chosen = sorted_scores if top is None else sorted_scores[:, -top:]
    out: Floats = 1.0 - np.prod(1.0 - chosen, axis=1)
    return out


COMBINE: dict[str, Callable[[Floats], Floats]] = {
    "max": lambda s: s[:, -1],
    "top2": lambda s: _noisy_or(s, 2),
    "top3": lambda s: _noisy_or(s, 3),
    "all": lambda s: _noisy_or(s, None),
}
RULE = Rule("anomaly", "above", "score", SHIPPED.threshold, SHIPPED.duration_s, SHIPPED.clear)


def _sorted(scores: Floats) -> Floats:
    return np.sort(np.clip(np.nan_to_num(scores, nan=0.0), 0.0, 1.0), axis=1)


def on_faults(name: str) -> dict[str, Any]:
    rec = load(DATA / f"{name}.jsonl.xz")
    fit_end, cal_end = recording_split(rec)
    x = signal_rows([[row[c] for c in SOURCE_COLUMNS] for row in rec.rows])
    ordered = _sorted(signal_scores("novelty", x, fit_end))
    out = {}
    for how, combine in COMBINE.items():
        judged = judge(rec, alerts_of(rec.ts, list(combine(ordered)), RULE, cal_end), cal_end)
        delays = [d for d in judged.delay_s.values() if d is not None]
        out[how] = {"found": sum(judged.recall.values()), "kinds": len(judged.recall),
                    "missed": [k for k, hit in judged.recall.items() if not hit],
                    "median_delay_s": float(np.median(delays)) if delays else None,
                    "false_alerts": judged.false_alerts, "quiet_hours": judged.quiet_hours}
    return out


def on_agent_recording() -> dict[str, Any]:
    rows = recorded_rows()
    at = [c.name for c in metrics_columns()].index("ts")
    ts = [row[at] for row in rows]
    ordered = _sorted(signal_scores("novelty", recorded_signals(rows), AGENT_FIT))
    hours = (ts[-1] - ts[AGENT_FIT]).total_seconds() / 3600
    out = {}
    for how, combine in COMBINE.items():
        score = combine(ordered)[AGENT_FIT:]
        alerts = alerts_of(ts, list(combine(ordered)), RULE, AGENT_FIT)
        out[how] = {"alerts": len(alerts), "hours": hours,
                    "share_above_threshold": float((score > RULE.threshold).mean()),
                    "p99_score": float(np.percentile(score, 99))}
    return out


def main() -> int:
    faults = {}
    for name in RECORDINGS:
        progress(f"{name}: the novelty detector's per-signal scores")
        faults[name] = on_faults(name)
    progress("agent-recording: the same, on a shared machine")
    agent = on_agent_recording()
    rows = []
    for how in COMBINE:
        cells = []
        for name in RECORDINGS:
            r = faults[name][how]
            cells.append(f"{r['found']}/{r['kinds']}, {r['median_delay_s']:.0f} s, "
                         f"{r['false_alerts']} FA")
        a = agent[how]
        rows.append([how, *cells, f"{a['alerts']} in {a['hours']:.2f} h",
                     f"{100 * a['share_above_threshold']:.0f} %", f"{a['p99_score']:.2f}"])
    print(table(["combination", *(f"{n}: found, median delay, false alerts" for n in RECORDINGS),
                 "shared machine: alerts", "readings > 0.5", "p99 score"], rows))
    write_result("signal_combine", {"rule": vars(RULE), "faults": faults,
                                    "agent_recording": agent})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
