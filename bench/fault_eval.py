"""Evaluate the anomaly detectors and the threshold rules on a recorded fault run.

Reads a file written by ``bench/fault_run.py`` (the real agent at 1 s: a quiet period, then
labelled injected faults) and replays it reading by reading, as the hub would see it:

- the quiet period is cut in three: the first ``--fit-s`` seconds (25 min) train each
  detector, the next ``--calibrate-s`` (10 min) set each detector's alert threshold (the
  smallest that opens no alert there), the rest of it and everything after it (faults, the
  calm between them and the quiet tail) is the evaluation, never seen while training or
  tuning (a short trial run falls back to halves and quarters of its quiet period);
- the shipped detector is judged twice: with that calibrated threshold, and with the hub's
  own ``anomaly`` rule as shipped (score above 0.5 for 7 s, closing below 0.3);
- an alert is the hub's rule (hub/alerts.py ``evaluate``): the score above the threshold for
  ``--duration-s`` of consecutive readings opens it, below ``clear`` closes it;
- the hub's threshold rules (hub/alerts.py ``DEFAULT_RULES``) run on the same readings.

Reported per detector and per fault kind: recall (an alert opened inside the fault's label
window), detection delay (alert opened − fault start; with the rule's duration in it) and
when the crossing the alert dates from began (``began``), precision (alerts that overlap a label
window / all alerts in the evaluation span), and false alerts per device-hour of the quiet
evaluation data. Memory and disk forecasts (hub/detect/outlook.py) are judged on the leak and
flood faults: how long before the fault's own peak they warned.

    python3 -m bench.fault_eval                          # bench/data/faults.jsonl.xz
    python3 -m bench.fault_eval --data /tmp/faults-short.jsonl.xz --label fault_eval_trial
"""

from __future__ import annotations

import argparse
import json
import lzma
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from bench.anomaly_baselines import isolation_forest, netdata
from bench.common import progress, table, write_result
from hub.alerts import (
    DEFAULT_RULES,
    DeviceState,
    OpenAlert,
    Reading,
    Rule,
    Run,
    evaluate,
    fold,
    reading_values,
)
from hub.detect.features import SIGNALS, SOURCE_COLUMNS, signal_rows
from hub.detect.forecast import DampedHolt, Line, Persistence
from hub.detect.gaussian import WindowedGaussian
from hub.detect.model import Floats
from hub.detect.outlook import (
    DISK_RESTART_POINTS,
    WINDOW,
    Forecaster,
    Series,
    partition_percent,
)
from hub.detect.train import TooLittleHistory, train
from hub.ingest.validate import as_message, decode_metrics
from shared.schema import metrics_columns, metrics_row

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT / "bench" / "data" / "faults.jsonl.xz"


@dataclass(frozen=True)
class Recording:
    header: dict[str, Any]
    ts: list[datetime]
    rows: list[dict[str, Any]]  # stored columns by name, as the hub would store them

    @property
    def labels(self) -> list[tuple[str, datetime, datetime]]:
        tail = timedelta(seconds=float(self.header.get("tail_s", 30.0)))
        return [(lab["kind"], datetime.fromisoformat(lab["start"]),
                 datetime.fromisoformat(lab["end"]) + tail) for lab in self.header["labels"]]


def load(path: Path) -> Recording:
    """Read a fault run: header line, then one agent message a line (decoded as the hub does)."""
    names = [c.name for c in metrics_columns()]
    with lzma.open(path, "rb") as f:
        header = json.loads(f.readline())
        rows, stamps = [], []
        for line in f:
            message = as_message(decode_metrics(line))
            row = dict(zip(names, metrics_row(message, message["ts"]), strict=True))
            rows.append(row)
            stamps.append(message["ts"])
    order = sorted(range(len(rows)), key=lambda i: stamps[i])
    return Recording(header, [stamps[i] for i in order], [rows[i] for i in order])


@dataclass(frozen=True)
class Alert:
    opened: datetime
    started: datetime
    closed: datetime | None


def alerts_of(ts: Sequence[datetime], values: Sequence[float | None], rule: Rule,
              start: int) -> list[Alert]:
    """Replay the hub's rule over one metric from reading ``start`` on; return its alerts."""
    device = DeviceState("bench", "online", None, 1.0, None)
    out: list[Alert] = []
    current: OpenAlert | None = None
    runs: dict[str, Run] = {}
    for i in range(start, len(ts)):
        fold([rule], (Reading(ts[i], {rule.metric: values[i]}),), runs)
        opened = {rule.name: current} if current else {}
        for change in evaluate([rule], device, runs, opened, ts[i]):
            if change.action == "open":
                current = OpenAlert("bench", rule.name, change.started_at, change.peak_value)
                out.append(Alert(ts[i], change.started_at, None))
            elif change.action == "close":
                current = None
                out[-1] = Alert(out[-1].opened, out[-1].started, change.ended_at)
    return out


def score_rule(name: str, threshold: float, duration_s: float) -> Rule:
    return Rule(name, "above", "score", threshold, duration_s, 0.6 * threshold)


def calibrate(ts: Sequence[datetime], scores: Floats, lo: int, hi: int,
              duration_s: float) -> float:
    """The smallest threshold at which the rule opens no alert on readings ``lo:hi``.

    With a duration, that is the largest value the score held for ``duration_s`` there: the
    largest over windows of the smallest score inside each window.
    """
    span = max(1, round(duration_s) + 1)
    part = np.nan_to_num(scores[lo:hi])
    if len(part) < span:
        return float(part.max(initial=0.0)) * 1.0001 + 1e-9
    held = np.lib.stride_tricks.sliding_window_view(part, span).min(axis=1)
    return float(held.max()) * 1.0001 + 1e-9


@dataclass
class Judged:
    recall: dict[str, bool]
    delay_s: dict[str, float | None]  # fault start → alert opened (what an operator sees)
    began_s: dict[str, float | None]  # fault start → the score's crossing the alert dates
    true_alerts: int
    false_alerts: int
    quiet_hours: float


def judge(rec: Recording, alerts: list[Alert], start: int) -> Judged:
    """Compare alerts with the label windows, from reading ``start`` on."""
    labels = rec.labels
    recall: dict[str, bool] = {}
    delay: dict[str, float | None] = {}
    began: dict[str, float | None] = {}
    for kind, begin, end in labels:
        inside = [a for a in alerts if begin <= a.opened < end]
        recall[kind] = bool(inside)
        delay[kind] = (inside[0].opened - begin).total_seconds() if inside else None
        began[kind] = (inside[0].started - begin).total_seconds() if inside else None

    def in_label(a: Alert) -> bool:
        closed = a.closed or a.opened
        return any(a.opened < end and closed >= begin for _, begin, end in labels)

    true = sum(1 for a in alerts if in_label(a))
    quiet = [t for t in rec.ts[start:] if not any(b <= t < e for _, b, e in labels)]
    return Judged(recall, delay, began, true, len(alerts) - true, len(quiet) / 3600.0)


def _max_over_streams(scores: Floats) -> Floats:
    out: Floats = np.nanmax(np.where(np.isnan(scores), -np.inf, scores), axis=1)
    return np.where(np.isfinite(out), out, 0.0)


def signal_scores(name: str, x: Floats, fit_end: int) -> Floats:
    """Each reading's per-signal scores (NaN: no value) from ``novelty`` or
    ``windowed_gaussian``, trained on readings ``:fit_end`` and stepped from there."""
    n, k = x.shape
    model: WindowedGaussian | Any
    if name == "novelty":
        model = train(x[:fit_end], "novelty", min_readings=min(fit_end, 600))
        if isinstance(model, TooLittleHistory):
            raise SystemExit(f"novelty: {model.message}")
    else:
        model = WindowedGaussian(k=k)
        for row in x[:fit_end]:
            model.step(row)
    out = np.zeros((n, k))
    for i in range(fit_end, n):
        out[i] = model.step(x[i])
    return out


def stream_scores(name: str, x: Floats, fit_end: int) -> Floats:
    """One score per reading (the largest over the signals) from detector ``name``."""
    n, k = x.shape
    if name in ("novelty", "windowed_gaussian"):
        return _max_over_streams(signal_scores(name, x, fit_end))
    per_stream: Callable[[Floats], Floats] = {
        "netdata_kmeans": lambda v: netdata(v, first=min(150, fit_end)),
        "isolation_forest": lambda v: isolation_forest(v, first=min(150, fit_end)),
    }[name]
    cols = []
    for j in range(k):
        v = x[:, j]
        if np.isnan(v).all() or np.nanstd(v[:fit_end]) == 0.0:
            continue  # a signal this machine does not have, or one that never moves
        cols.append(per_stream(np.nan_to_num(v, nan=float(np.nanmean(v)))))
    scores = np.stack(cols, axis=1) if cols else np.zeros((n, 1))
    scores[:fit_end] = 0.0
    return _max_over_streams(scores)


DETECTORS = ("novelty", "windowed_gaussian", "netdata_kmeans", "isolation_forest")


SHIPPED = next(r for r in DEFAULT_RULES if r.name == "anomaly")  # the hub's anomaly rule


def split(ts: Sequence[datetime], quiet_end: int, fit_s: float,
          calibrate_s: float) -> tuple[int, int]:
    """Return where fitting and calibration end: after ``fit_s`` and ``calibrate_s`` seconds of
    the quiet readings ``ts[:quiet_end]``, or at its half and three quarters when it is too short
    to leave 10 minutes of quiet readings to the evaluation."""
    quiet_s = (ts[quiet_end - 1] - ts[0]).total_seconds() if quiet_end else 0.0
    if quiet_s < fit_s + calibrate_s + 600.0:
        return quiet_end // 2, (3 * quiet_end) // 4
    def after(seconds: float) -> int:
        return next(i for i, t in enumerate(ts) if (t - ts[0]).total_seconds() >= seconds)

    return after(fit_s), after(fit_s + calibrate_s)


def recording_split(rec: Recording, fit_s: float = 1500.0,
                    calibrate_s: float = 600.0) -> tuple[int, int]:
    """:func:`split` of the recording's quiet period (its header's ``quiet_s``, or up to the
    first fault)."""
    t0 = rec.ts[0]
    quiet_end = next((i for i, t in enumerate(rec.ts) if rec.labels and t >= rec.labels[0][1]),
                     len(rec.ts))
    quiet_s = float(rec.header.get("quiet_s", 0.0))
    q_end = next((i for i, t in enumerate(rec.ts) if (t - t0).total_seconds() >= quiet_s),
                 quiet_end)
    return split(rec.ts, q_end, fit_s, calibrate_s)


def run(rec: Recording, duration_s: float, detectors: Sequence[str], fit_s: float = 1500.0,
        calibrate_s: float = 600.0) -> dict[str, Any]:
    fit_end, cal_end = recording_split(rec, fit_s, calibrate_s)
    x = signal_rows([[row[c] for c in SOURCE_COLUMNS] for row in rec.rows])
    results: dict[str, Any] = {}
    for name in detectors:
        progress(f"{name}: scoring {len(rec.ts):,} readings")
        began = time.process_time()
        scores = stream_scores(name, x, fit_end)
        cpu = time.process_time() - began
        threshold = calibrate(rec.ts, scores, fit_end, cal_end, duration_s)
        alerts = alerts_of(rec.ts, list(scores), score_rule(name, threshold, duration_s),
                           cal_end)
        results[name] = {"threshold": threshold, "cpu_s": cpu,
                         **vars(judge(rec, alerts, cal_end))}
        if name == "novelty":  # as the hub ships it: its own rule, no calibration
            alerts = alerts_of(rec.ts, list(scores), Rule(
                "anomaly", "above", "score", SHIPPED.threshold, SHIPPED.duration_s,
                SHIPPED.clear), cal_end)
            results["novelty (hub rule)"] = {"threshold": SHIPPED.threshold, "cpu_s": cpu,
                                             **vars(judge(rec, alerts, cal_end))}
    # The hub's own threshold rules, on the readings' stored values, same span.
    values = [reading_values(row) for row in rec.rows]
    rule_alerts: list[Alert] = []
    for rule in DEFAULT_RULES:
        if rule.kind == "above" and rule.enabled:
            rule_alerts += alerts_of(rec.ts, [v.get(rule.metric) for v in values], rule,
                                     cal_end)
    rule_alerts.sort(key=lambda a: a.opened)
    results["threshold_rules"] = {"threshold": None, "cpu_s": 0.0,
                                  **vars(judge(rec, rule_alerts, cal_end))}
    forecasts = judge_forecasts(rec)
    return {"readings": len(rec.ts), "signals": list(SIGNALS), "forecasts": forecasts,
            "split": {"fit": fit_end, "calibrate": cal_end - fit_end,
                      "evaluate": len(rec.ts) - cal_end},
            "duration_s": duration_s, "labels": rec.header["labels"],
            "machine": rec.header.get("machine"), "results": results}


# The forecasts on the slow runs (bench/fault_run.py RAMPS): each method, fed the run's
# readings as the hub feeds its own, warns through the hub's forecast rule of that kind.
FORECASTERS: dict[str, Callable[[], Forecaster]] = {
    "linear (shipped)": lambda: Line(window=WINDOW),
    "damped_holt": lambda: DampedHolt(k=1),
    "persistence": lambda: Persistence(k=1),
}
RAMP_RULES = {"memory_ramp": "memory_exhaustion_forecast", "disk_ramp": "disk_full_forecast"}
RAMP_LEAD_S = 300.0  # readings before a run that the forecasts see first (their window)
# The hub warns of exhausted memory 15 min ahead and of a full disk 6 h ahead. A slow run
# fills its 4 GB within minutes, far faster than a disk fills in use, and its threshold is
# a few % above where it starts: both kinds are judged with the memory rule's 15-minute
# horizon (each rule's own duration kept); with 6 h, any write elsewhere before a run would
# count as a warning of it.
RAMP_HORIZON_S = 900.0
RAMP_SHARE = 0.95  # the threshold: this share of the way from the run's start to its extreme


def ramp_values(kind: str, rows: Sequence[dict[str, Any]]) -> list[float | None]:
    """Per reading, what the run moves: memory available in %, or the use in % of the
    partition whose use grew the most over ``rows``."""
    if kind == "memory_ramp":
        return [None if not r["memory_total_bytes"] or r["memory_available_bytes"] is None
                else 100.0 * r["memory_available_bytes"] / r["memory_total_bytes"] for r in rows]
    by_mount: dict[str, list[float | None]] = {}
    for i, r in enumerate(rows):
        for part in r["disk_partitions"] or []:
            series = by_mount.setdefault(str(part.get("mountpoint")), [None] * len(rows))
            series[i] = partition_percent(part)
    if not by_mount:
        return [None] * len(rows)

    def growth(series: list[float | None]) -> float:
        known = [v for v in series if v is not None]
        return max(known) - known[0] if known else 0.0

    return max(by_mount.values(), key=growth)


def judge_ramp(kind: str, ts: Sequence[datetime], values: Sequence[float | None],
               begin: datetime, end: datetime, method: str) -> dict[str, Any]:
    """When ``method`` warned of the run's threshold, how long before the crossing, and how far
    its predicted time of crossing was from the real one."""
    before = [v for t, v in zip(ts, values, strict=True)
              if begin - timedelta(seconds=60) <= t < begin and v is not None]
    during = [(t, v) for t, v in zip(ts, values, strict=True) if begin <= t < end and v is not None]
    out: dict[str, Any] = {"kind": kind, "method": method, "begin": begin.isoformat()}
    if not before or not during:
        return {**out, "error": "no readings around the run"}
    falling = kind == "memory_ramp"
    base = float(np.median(before))
    extreme = min(v for _, v in during) if falling else max(v for _, v in during)
    threshold = base + RAMP_SHARE * (extreme - base)
    crossing = next(t for t, v in during if (v <= threshold if falling else v >= threshold))
    series = Series(threshold, falling=falling, make_model=FORECASTERS[method],
                    restart_back=None if falling else DISK_RESTART_POINTS)
    span = [(t, v) for t, v in zip(ts, values, strict=True)
            if begin - timedelta(seconds=RAMP_LEAD_S) <= t < end]
    etas: list[float | None] = []
    for t, v in span:
        if v is not None:
            series.add(t.timestamp(), v)
        etas.append(series.eta_s)
    hub_rule = next(r for r in DEFAULT_RULES if r.name == RAMP_RULES[kind])
    rule = replace(hub_rule, threshold=RAMP_HORIZON_S, clear=2 * RAMP_HORIZON_S)
    alerts = alerts_of([t for t, _ in span], etas, rule, 0)
    early = [a for a in alerts if a.opened < begin]  # warned of a run not yet started
    warned = next((a.opened for a in alerts if a.opened >= begin), None)
    errors = [((t + timedelta(seconds=e)) - crossing).total_seconds()
              for (t, _), e in zip(span, etas, strict=True)
              if e is not None and begin <= t < crossing]
    at_warning = next((((t + timedelta(seconds=e)) - crossing).total_seconds()
                       for (t, _), e in zip(span, etas, strict=True)
                       if e is not None and warned is not None and t == warned), None)
    return {**out, "base": base, "extreme": extreme, "threshold": threshold,
            "crossing_s": (crossing - begin).total_seconds(),
            "warned_s": None if warned is None else (warned - begin).total_seconds(),
            "lead_s": None if warned is None or warned > crossing
            else (crossing - warned).total_seconds(),
            "early_warnings": len(early),
            "error_at_warning_s": at_warning,
            "median_abs_error_s": float(np.median(np.abs(errors))) if errors else None}


def judge_forecasts(rec: Recording) -> list[dict[str, Any]]:
    """Every method on every slow run of the recording (none: an empty list)."""
    out = []
    for label in rec.header["labels"]:
        if label["kind"] not in RAMP_RULES:
            continue
        begin, end = datetime.fromisoformat(label["start"]), datetime.fromisoformat(label["end"])
        values = ramp_values(label["kind"], [r for r, t in zip(rec.rows, rec.ts, strict=True)
                                             if begin - timedelta(seconds=RAMP_LEAD_S) <= t < end])
        window = [t for t in rec.ts if begin - timedelta(seconds=RAMP_LEAD_S) <= t < end]
        for method in FORECASTERS:
            out.append(judge_ramp(label["kind"], window, values, begin, end, method))
    return out


def forecast_report(runs: list[dict[str, Any]]) -> str:
    headers = ["method", "kind", "runs", "warned ≥ 60 s ahead", "median lead s",
               "median |error| s", "early warnings"]
    rows = []
    for method in FORECASTERS:
        for kind in RAMP_RULES:
            mine = [r for r in runs if r["method"] == method and r["kind"] == kind
                    and "error" not in r]
            if not mine:
                continue
            leads = [r["lead_s"] for r in mine if r["lead_s"] is not None]
            errs = [r["median_abs_error_s"] for r in mine if r["median_abs_error_s"] is not None]
            rows.append([method, kind, len(mine),
                         f"{sum(1 for v in leads if v >= 60.0)}/{len(mine)}",
                         f"{np.median(leads):.0f}" if leads else "—",
                         f"{np.median(errs):.0f}" if errs else "—",
                         sum(r["early_warnings"] for r in mine)])
    return table(headers, rows)


def report(data: dict[str, Any]) -> str:
    kinds = [lab["kind"] for lab in data["labels"]]
    headers = ["detector", *kinds, "recall", "median delay s", "began s", "precision",
               "false/dev-h"]
    rows = []
    for name, r in data["results"].items():
        found = [r["recall"][k] for k in kinds]
        delays = sorted(d for d in r["delay_s"].values() if d is not None)
        began = sorted(d for d in r["began_s"].values() if d is not None)
        total = r["true_alerts"] + r["false_alerts"]
        rows.append([name, *[f"{r['delay_s'][k]:.0f}s" if r["recall"][k] else "—"
                             for k in kinds],
                     f"{sum(found)}/{len(found)}",
                     f"{np.median(delays):.0f}" if delays else "—",
                     f"{np.median(began):.0f}" if began else "—",
                     f"{r['true_alerts'] / total:.2f}" if total else "—",
                     f"{r['false_alerts'] / r['quiet_hours']:.1f}" if r["quiet_hours"] else "—"])
    return table(headers, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--duration-s", type=float, default=SHIPPED.duration_s,
                        help="the alert rule's duration (default: the hub's anomaly rule's, "
                        f"{SHIPPED.duration_s:g} s)")
    parser.add_argument("--fit-s", type=float, default=1500.0,
                        help="quiet seconds that train the detectors")
    parser.add_argument("--calibrate-s", type=float, default=600.0,
                        help="quiet seconds after those that set each detector's threshold")
    parser.add_argument("--detectors", default=",".join(DETECTORS))
    parser.add_argument("--label", default="fault_eval")
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data} does not exist: record one with python3 -m "
                         "bench.fault_run")
    rec = load(args.data)
    data = run(rec, args.duration_s, [d for d in args.detectors.split(",") if d], args.fit_s,
               args.calibrate_s)
    data["data"] = str(args.data)
    text = report(data)
    if data["forecasts"]:
        text += "\n\nForecasts on the slow runs (threshold: 95 % of the way to the run's extreme)\n"
        text += forecast_report(data["forecasts"])
    print(text)
    write_result(args.label, data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
