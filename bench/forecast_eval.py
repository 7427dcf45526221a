"""Time-to-threshold forecasts on NAB's real temperature series; baselines in the same run.

    python3 -m bench.forecast_eval        # a few seconds

Series: NAB's ``machine_temperature_system_failure`` (an industrial machine's sensor, 5-minute
samples, 22,695 rows, ends in a failure) and ``ambient_temperature_system_failure`` (an office,
hourly, 7,267 rows), read from ../shared/datasets/nab like bench/anomaly_eval.py.
Forecasters (hub/detect/forecast.py, fixed parameters, nothing tuned on these series):
persistence, linear over the last 12 samples (Prometheus ``predict_linear``), damped Holt;
and the LSTM (hub/detect/sequence.py, 16 units, trained with PyTorch on the first 15 % of
the series only, the same rows that set the thresholds; run in numpy from its weights; needs
the ``train`` extra, ``--no-lstm`` skips it). Its time to a threshold is the first of its
forecast steps 1..36 that reaches it.

1. Forecast error: mean absolute error 1, 12 and 36 steps ahead, after the first 15 %.
2. Warnings: thresholds are the 1st and 99th percentiles of the first 15 % of the series
   (the "training" part). An *event* is a sample beyond a threshold after at least ``H``
   samples inside (H = 12 steps). A method *warns* at step t when its predicted steps to the
   threshold are <= H. Per event: warned or not (within the H steps before it), the lead time
   of the first warning, and the error of the time-to-threshold it predicted then. False
   warnings: steps inside the thresholds that warn with no crossing in the next H steps, per
   day of data. Limits: these are two series with few events; NAB's labels are not used.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.common import RESULTS
from bench.nab import corpus
from bench.nab.score import Floats
from hub.detect.forecast import DampedHolt, Linear, Persistence, forecast, steps_to_threshold
from hub.detect.sequence import LSTMForecaster

SERIES = ("realKnownCause/machine_temperature_system_failure.csv",
          "realKnownCause/ambient_temperature_system_failure.csv")
HORIZON = 12
ERROR_STEPS = (1, 12, 36)
LSTM = "LSTM (16 units, trained on the first 15 %)"

Predict = Callable[[int], Floats]  # steps ahead -> forecast made at every sample
Reach = Callable[[float], Floats]  # threshold -> steps to it predicted at every sample


def makers() -> dict[str, Any]:
    return {"persistence": lambda: Persistence(1), "linear (predict_linear, 12)":
            lambda: Linear(1, window=12),
            "damped Holt (a=0.3, b=0.05, phi=0.98)": lambda: DampedHolt(1)}


def states(make: Any, x: Floats) -> tuple[Floats, Floats, float, float]:
    """Level and trend after each sample (causal), the damping and CPU µs per step."""
    f = make()
    level, trend = np.zeros(len(x)), np.zeros(len(x))
    t0 = time.process_time()
    for i, v in enumerate(x):
        f.step(np.array([v]))
        level[i], trend[i] = f.level[0], f.trend[0]
    us = (time.process_time() - t0) / len(x) * 1e6
    return level, trend, float(f.phi), us


def events(x: Floats, lo: float, hi: float, start: int) -> list[tuple[int, str]]:
    """Samples that cross a threshold after at least HORIZON samples inside."""
    inside = (x >= lo) & (x <= hi)
    out, run = [], 0
    for i in range(start, len(x)):
        if inside[i]:
            run += 1
            continue
        if run >= HORIZON:
            out.append((i, "high" if x[i] > hi else "low"))
        run = 0
    return out


def classic(make: Any, x: Floats) -> tuple[Predict, Reach, dict[str, float]]:
    """A level/trend forecaster's predictions and times to threshold at every sample."""
    level, trend, phi, us = states(make, x)
    return (lambda h: forecast(level, trend, h, phi),
            lambda thr: steps_to_threshold(level, trend, thr, phi), {"cpu_us_per_step": us})


def lstm(x: Floats, start: int, lo: float, hi: float
         ) -> tuple[Predict, Reach, dict[str, float]]:
    """Train on ``x[:start]``, then run from the first sample with a cold state."""
    f = LSTMForecaster(1, horizon=max(ERROR_STEPS))
    t0 = time.process_time()
    f.fit(x[:start, None])
    train_s = time.process_time() - t0
    f.reset()
    n = len(x)
    pred = np.zeros((n, f.horizon))
    reach = {lo: np.zeros(n), hi: np.zeros(n)}
    t0 = time.process_time()
    for i, v in enumerate(x):
        f.step(np.array([v]))
        pred[i] = f.predict()[0]
        for thr, out in reach.items():
            out[i] = f.steps_to(thr)[0]
    us = (time.process_time() - t0) / n * 1e6
    return (lambda h: pred[:, h - 1], lambda thr: reach[thr],
            {"cpu_us_per_step": us, "train_cpu_s": train_s, "train_rows": start})


def evaluate_series(name: str, s: corpus.Series, with_lstm: bool) -> dict[str, Any]:
    x = s.values.astype(np.float64)
    n = len(x)
    start = int(0.15 * n)
    lo, hi = (float(v) for v in np.percentile(x[:start], [1, 99]))
    step_s = float(np.median(np.diff(s.timestamps).astype("timedelta64[s]").astype(float)))
    evs = events(x, lo, hi, start)
    inside = (x >= lo) & (x <= hi)
    result: dict[str, Any] = {"series": name, "rows": n, "step_s": step_s,
                              "thresholds": [lo, hi], "events": len(evs), "methods": {}}
    methods = {label: classic(make, x) for label, make in makers().items()}
    if with_lstm:
        methods[LSTM] = lstm(x, start, lo, hi)
    for label, (predict, reach, cost) in methods.items():
        mae = {}
        for h in ERROR_STEPS:
            pred = predict(h)[start:n - h]
            mae[str(h)] = float(np.mean(np.abs(pred - x[start + h:])))
        ttt_hi, ttt_lo = reach(hi), reach(lo)
        warned_hi, warned_lo = ttt_hi <= HORIZON, ttt_lo <= HORIZON
        leads, errors, hits = [], [], 0
        for i, kind in evs:
            warn, ttt = (warned_hi, ttt_hi) if kind == "high" else (warned_lo, ttt_lo)
            before = np.flatnonzero(warn[i - HORIZON: i])
            if before.size:
                first = i - HORIZON + int(before[0])
                hits += 1
                leads.append((i - first) * step_s)
                errors.append(abs(float(ttt[first]) - (i - first)) * step_s)
        crossing_soon = np.zeros(n, bool)
        for i, _ in evs:
            crossing_soon[max(0, i - HORIZON): i] = True
        false = (warned_hi | warned_lo) & inside & ~crossing_soon
        false[:start] = False
        days = (n - start) * step_s / 86400
        result["methods"][label] = {
            "mae": mae, "mae_vs_persistence": None,
            "events_warned": hits, "recall": hits / len(evs) if evs else None,
            "median_lead_s": float(np.median(leads)) if leads else None,
            "median_ttt_error_s": float(np.median(errors)) if errors else None,
            "false_warning_steps_per_day": float(false.sum() / days), **cost}
    base = result["methods"]["persistence"]["mae"]
    for m in result["methods"].values():
        m["mae_vs_persistence"] = {h: m["mae"][h] / base[h] if base[h] else None
                                   for h in m["mae"]}
    return result


def main() -> int:
    """Evaluate every forecaster on both series; print a table and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-lstm", action="store_true", help="skip the LSTM (needs PyTorch)")
    args = ap.parse_args()
    t0 = time.monotonic()
    by_name = {s.name: s for s in corpus.load()}
    out = [evaluate_series(name, by_name[name], not args.no_lstm) for name in SERIES]
    lines = []
    for r in out:
        lines.append(f"\n{r['series']}: {r['rows']} rows every {r['step_s']:.0f} s; thresholds "
                     f"{r['thresholds'][0]:.1f} / {r['thresholds'][1]:.1f} (1st/99th pct of "
                     f"the first 15 %); {r['events']} crossing events; horizon {HORIZON} steps")
        lines.append(f"  {'method':44s} " + " ".join(f"{'MAE@' + h:>9s}" for h in
                                                       map(str, ERROR_STEPS))
                     + f" {'warned':>7s} {'lead':>8s} {'TTT err':>8s} {'false/day':>9s} "
                       f"{'µs/step':>7s}")
        for label, m in r["methods"].items():
            lead = "-" if m["median_lead_s"] is None else f"{m['median_lead_s'] / 60:.0f} min"
            err = ("-" if m["median_ttt_error_s"] is None
                   else f"{m['median_ttt_error_s'] / 60:.0f} min")
            lines.append(f"  {label:44s} " + " ".join(f"{m['mae'][str(h)]:9.2f}" for h in
                                                      ERROR_STEPS)
                         + f" {m['events_warned']:>3d}/{r['events']:<3d} {lead:>8s} {err:>8s} "
                           f"{m['false_warning_steps_per_day']:9.1f} {m['cpu_us_per_step']:7.1f}")
        if LSTM in r["methods"]:
            m = r["methods"][LSTM]
            lines.append(f"  (LSTM trained on the first {m['train_rows']} rows: "
                         f"{m['train_cpu_s']:.1f} s of CPU, one thread)")
    print("\n".join(lines))
    data = {"horizon_steps": HORIZON, "series": out, "wall_s": time.monotonic() - t0}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "forecast_eval.json").write_text(json.dumps(data, indent=1) + "\n")
    print(f"\nwall {data['wall_s']:.1f} s (machine shared); wrote {RESULTS / 'forecast_eval.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
