"""Score every anomaly detector on the NAB corpus in one run, by NAB's rules (bench/nab/).

    python3 -m bench.anomaly_eval                 # ~2 min of CPU on one core
    python3 -m bench.anomaly_eval --no-iforest    # skip the slowest baseline (~1 min)
    python3 -m bench.anomaly_eval --no-autoencoder   # without PyTorch (the train extra)

Reads the corpus from ../shared/datasets/nab (or $FLEETPULSE_NAB_DIR). For each detector:
the standard, reward-low-FP and reward-low-FN scores (0 = never fires, 100 = perfect), with
one threshold per profile for the corpus (NAB's rule), in total and per data group; the same
on the *tune* half (alternate files of each group, the only data the shipped detector's
parameters were chosen on) and the *test* half (never used for choices; its threshold is
swept on itself); two more readings of the streaming detectors' scores, with NAB's rules
unchanged: one detection per alert (the hub's rule) and new highs only (a score kept where it
tops the previous W rows, W chosen on the tune half); CPU per sample on the corpus; and for
the streaming detectors the cost of one ``step`` for one device's 16 signals. Writes
bench/results/anomaly_eval.json and anomaly_eval.png. Baseline in the same run: the windowed
Gaussian (NAB publishes 39.6 for its own), random (NAB: 11.0 mean over seeds) and the null
detector (0 by construction).

The autoencoder (hub/detect/autoencoder.py) trains with PyTorch inside the run, per series,
on the rows seen so far only (at rows 150, 300, ..., 4,800), and scores in numpy; its
settings were chosen on the tune half like the candidate's. Its step cost is measured with
untrained weights of the same shapes (cost does not depend on the values).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.anomaly_baselines import isolation_forest, netdata, random_scores
from bench.common import RESULTS
from bench.nab import corpus, evaluate, score
from bench.nab.corpus import Series
from bench.nab.score import PROFILES, Floats
from bench.neural_cost import random_weights
from hub.detect.autoencoder import Autoencoder
from hub.detect.gaussian import WindowedGaussian
from hub.detect.novelty import Novelty

PUBLISHED = {  # NAB v1.1 scoreboard: standard, reward_low_FP_rate, reward_low_FN_rate
    "ARTime": (74.9, 65.1, 80.4), "Numenta HTM": (70.5, 62.6, 75.2), "CAD OSE": (69.9, 67.0, 73.2),
    "earthgecko Skyline": (58.2, 46.2, 63.9), "Random Cut Forest": (51.7, 38.4, 59.7),
    "Windowed Gaussian": (39.6, 20.9, 47.4), "Random": (11.0, 1.2, 19.5),
}
STREAMING: dict[str, Callable[[int], Any]] = {
    "novelty (shipped candidate)": lambda k: Novelty(k),
    "windowed Gaussian": lambda k: WindowedGaussian(k, window=6400),
}
AUTOENCODER = "autoencoder (PyTorch-trained, numpy-scored)"
NEURAL: dict[str, Callable[[int], Any]] = {
    AUTOENCODER: lambda k: Autoencoder(k, refit_rows=4800),
}
COST: dict[str, Callable[[int], Any]] = {  # how to time a step without training
    AUTOENCODER: lambda k: Autoencoder(k, trainer=random_weights),
}
RANDOM_SEEDS = 20
# How the hub alerts on a score (hub/alerts.py, rule "anomaly"): an alert opens at the
# threshold and stays open until the score falls below 0.3 / 0.5 = 0.6 × the threshold. NAB
# counts every row at or above the threshold as a detection (each one outside a window a
# false positive); scored as alerts, an episode is one detection, as an operator sees it.
ALERT_CLEAR = 0.3 / 0.5
# A third reading, NAB's own protocol unchanged: the score series kept only where it tops
# the previous W rows (bench/nab/score.py new_highs). W is chosen among these on the tune
# half, on the candidate's scores; the test half is computed after the choice.
NEW_HIGH_WINDOWS = (2, 5, 10, 20, 50, 100, 200, 500, 1000)


def step_cost_us(make: Callable[[int], Any], k: int = 16, steps: int = 3000) -> float:
    """Median-of-3 CPU µs of one ``step`` for ``k`` signals after fitting 2,000 rows."""
    rng = np.random.default_rng(0)
    det = make(k)
    hist = rng.normal(50, 10, (2000, k))
    if hasattr(det, "fit"):
        det.fit(hist)
    rows = rng.normal(50, 10, (steps, k))
    runs = []
    for _ in range(3):
        t0 = time.process_time()
        for r in rows:
            det.step(r)
        runs.append((time.process_time() - t0) / steps * 1e6)
    return float(sorted(runs)[1])


def result(name: str, scores: list[Floats], series: list[Series], cpu_s: float,
           tune: list[int], test: list[int], clear_ratio: float | None = None,
           **extra: Any) -> dict[str, Any]:
    n = sum(len(s.values) for s in series)
    return {"detector": name, "all": evaluate.evaluate(scores, series, None, clear_ratio),
            "tune": evaluate.evaluate(scores, series, tune, clear_ratio),
            "test": evaluate.evaluate(scores, series, test, clear_ratio),
            "cpu_s": cpu_s, "cpu_us_per_sample": cpu_s / n * 1e6, **extra}


def batch(fn: Callable[[Floats], Floats], series: list[Series]) -> tuple[list[Floats], float]:
    t0 = time.process_time()
    out = [fn(s.values) for s in series]
    return out, time.process_time() - t0


def run(iforest: bool, neural: bool) -> dict[str, Any]:
    series = corpus.load()
    tune, test = evaluate.split(series)
    rows: list[dict[str, Any]] = []
    as_alerts: list[dict[str, Any]] = []
    streamed: dict[str, tuple[list[Floats], float]] = {}
    for name, make in {**STREAMING, **(NEURAL if neural else {})}.items():
        print(f"{name} ...", flush=True)
        scores, cpu = evaluate.run_streaming(make, series)
        timed = COST.get(name, make)
        rows.append(result(
            name, scores, series, cpu, tune, test, step_us_16_signals=step_cost_us(timed),
            # The hub can score one batch of readings from many devices in one call:
            # 1,000 devices x 16 signals per step, cost divided by 1,000 readings.
            batched_us_per_reading=step_cost_us(timed, k=16_000, steps=100) / 1000))
        if name in STREAMING:  # the same scores, one detection per alert (see ALERT_CLEAR)
            streamed[name] = (scores, cpu)
            print(f"{name}, one detection per alert ...", flush=True)
            as_alerts.append(result(f"{name.split(' (')[0]}, one detection per alert", scores,
                                    series, cpu, tune, test, clear_ratio=ALERT_CLEAR))
    rows += as_alerts
    grid = new_high_grid(streamed[next(iter(STREAMING))][0], series, tune, test)
    chosen = next(g["window"] for g in grid if g["chosen"])
    for name in STREAMING:
        scores, cpu = streamed[name]
        rows.append(result(f"{name.split(' (')[0]}, new highs only ({chosen} rows)",
                           [score.new_highs(x, chosen) for x in scores], series, cpu,
                           tune, test))
    scores, cpu = batch(netdata, series)
    rows.append(result("Netdata k-means (k=2, 4 models agree)", scores, series, cpu, tune, test))
    if iforest:
        scores, cpu = batch(isolation_forest, series)
        rows.append(result("Isolation Forest (scikit-learn, batches)", scores, series, cpu,
                           tune, test))
    randoms = []
    for seed in range(RANDOM_SEEDS):
        scores, cpu = batch(lambda v, s=seed: random_scores(len(v), s), series)
        randoms.append(result(f"random seed {seed}", scores, series, cpu, tune, test))
    mean = {p.name: float(np.mean([r["all"][p.name]["score"] for r in randoms]))
            for p in PROFILES}
    spread = {p.name: (min(r["all"][p.name]["score"] for r in randoms),
                       max(r["all"][p.name]["score"] for r in randoms)) for p in PROFILES}
    rows.append({**randoms[0], "detector": "random (seed 0)",
                 "random_mean_over_seeds": mean, "random_range_over_seeds": spread})
    never = [np.zeros(len(s.values)) for s in series]
    rows.append(result("null (never fires)", never, series, 0.0, tune, test))
    perfect = []
    for s in series:
        p = np.zeros(len(s.values))
        p[[a for a, _ in s.labels.windows]] = 1.0
        perfect.append(p)
    rows.append(result("perfect (first row of every window)", perfect, series, 0.0, tune, test))
    return {"corpus": {"series": len(series), "rows": sum(len(s.values) for s in series),
                       "windows": sum(len(s.labels.windows) for s in series),
                       "tune_files": [series[i].name for i in tune]},
            "published": PUBLISHED, "detectors": rows, "new_high_grid": grid,
            "machine": {"python": platform.python_version(), "numpy": np.__version__}}


def new_high_grid(scores: list[Floats], series: list[Series], tune: list[int],
                  test: list[int]) -> list[dict[str, Any]]:
    """Standard score of each NEW_HIGH_WINDOWS reading: the best on the tune half is chosen
    (the smaller window of equals), and only then is the test half scored."""
    highs = {w: [score.new_highs(x, w) for x in scores] for w in NEW_HIGH_WINDOWS}
    grid = [{"window": w, "tune": evaluate.evaluate(h, series, tune)["standard"]["score"]}
            for w, h in highs.items()]
    best = max(grid, key=lambda g: g["tune"])
    for g in grid:
        g["test"] = evaluate.evaluate(highs[g["window"]], series, test)["standard"]["score"]
        g["chosen"] = g is best
    return grid


def table(data: dict[str, Any]) -> str:
    head = (f"{'detector':44s} {'std':>6s} {'lowFP':>6s} {'lowFN':>6s} {'tune':>6s} "
            f"{'test':>6s} {'windows':>8s} {'FP':>5s} {'µs/sample':>9s} {'µs/step(16)':>11s} "
            f"{'µs/reading(1000 dev)':>20s}")
    lines = [head]
    for r in data["detectors"]:
        a = r["all"]
        step = r.get("step_us_16_signals")
        batched = r.get("batched_us_per_reading")
        lines.append(
            f"{r['detector']:44s} {a['standard']['score']:6.1f} "
            f"{a['reward_low_FP_rate']['score']:6.1f} {a['reward_low_FN_rate']['score']:6.1f} "
            f"{r['tune']['standard']['score']:6.1f} {r['test']['standard']['score']:6.1f} "
            f"{a['standard']['detected']:>4d}/{a['standard']['windows']:<3d} "
            f"{a['standard']['false_positives']:5d} {r['cpu_us_per_sample']:9.1f} "
            f"{'' if step is None else f'{step:11.1f}'} "
            f"{'' if batched is None else f'{batched:20.1f}'}")
        if "random_mean_over_seeds" in r:
            m, s = r["random_mean_over_seeds"], r["random_range_over_seeds"]
            lines.append(f"{'  random, mean of ' + str(RANDOM_SEEDS) + ' seeds':44s} "
                         + " ".join(f"{m[p.name]:6.1f}" for p in PROFILES)
                         + "   range " + ", ".join(f"{lo:.1f}–{hi:.1f}" for lo, hi in
                                                    (s[p.name] for p in PROFILES)))
    cand, base = data["detectors"][0], data["detectors"][1]
    lines.append(
        f"\n{cand['detector']} vs {base['detector']} (baseline, same run): standard "
        f"{cand['all']['standard']['score'] - base['all']['standard']['score']:+.1f} points, "
        f"test half {cand['test']['standard']['score'] - base['test']['standard']['score']:+.1f};"
        f" CPU per sample {cand['cpu_us_per_sample'] / base['cpu_us_per_sample']:.1f}x")
    for r in data["detectors"]:
        if r["detector"] == AUTOENCODER:
            def gain(other: dict[str, Any], half: str, r: dict[str, Any] = r) -> float:
                return float(r[half]["standard"]["score"] - other[half]["standard"]["score"])

            lines.append(
                f"{r['detector']} (same run): standard {gain(base, 'all'):+.1f} points vs "
                f"{base['detector']} (test half {gain(base, 'test'):+.1f}), "
                f"{gain(cand, 'all'):+.1f} vs the candidate (test half "
                f"{gain(cand, 'test'):+.1f}); CPU per sample "
                f"{r['cpu_us_per_sample'] / base['cpu_us_per_sample']:.1f}x the Gaussian's "
                f"(its training included)")
    grid = data.get("new_high_grid")
    if grid:
        lines.append("\nnew highs only, window chosen on the tune half (standard, tune / test): "
                     + ", ".join(f"{g['window']}: {g['tune']:.1f} / {g['test']:.1f}"
                                 + (" (chosen)" if g["chosen"] else "") for g in grid))
    groups = sorted(data["detectors"][0]["all"]["standard"]["groups"])
    lines.append("\nstandard profile per data group (corpus threshold; raw score where a "
                 "group has no windows):")
    lines.append(f"{'detector':44s} " + " ".join(f"{g[:12]:>12s}" for g in groups))
    for r in data["detectors"]:
        gs = r["all"]["standard"]["groups"]
        cells = [gs[g]["score"] if gs[g]["score"] is not None else gs[g]["raw"] for g in groups]
        lines.append(f"{r['detector']:44s} " + " ".join(f"{c:12.1f}" for c in cells))
    return "\n".join(lines)


def chart(data: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours = []
    for r in data["detectors"]:
        if r["detector"].startswith(("null", "perfect")):
            continue
        if "random_mean_over_seeds" in r:
            ours.append((f"random (mean of {RANDOM_SEEDS} seeds)",
                         [r["random_mean_over_seeds"][p.name] for p in PROFILES]))
        else:
            ours.append((r["detector"], [r["all"][p.name]["score"] for p in PROFILES]))
    theirs = [(f"{k} (published)", list(v)) for k, v in data["published"].items()]
    rows = sorted(ours + theirs, key=lambda r: r[1][0])
    fig, ax = plt.subplots(figsize=(9, 6))
    y = np.arange(len(rows))
    for j, (p, colour) in enumerate(zip(PROFILES, ("tab:blue", "tab:orange", "tab:green"),
                                        strict=True)):
        ax.barh(y + (j - 1) * 0.27, [r[1][j] for r in rows], height=0.27, color=colour,
                label=p.name)
    ax.set_yticks(y, [r[0] for r in rows], fontsize=8)
    for tick, r in zip(ax.get_yticklabels(), rows, strict=True):
        tick.set_color("gray" if r[0].endswith("(published)") else "black")
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_xlabel("NAB score (0 = never fires, 100 = perfect)")
    ax.set_title("NAB v1.1 corpus, 58 series, one threshold per profile; "
                 "gray = published scoreboard", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "anomaly_eval.png", dpi=110)
    plt.close(fig)


def check_published(results_dir: Path) -> dict[str, Any]:
    """Score NAB's own result files (a clone's results/<detector>/...) with our scorer.

    With NAB's stored thresholds (config/thresholds.json beside results/) our scorer must give
    NAB's published scores; our exact sweep may find a slightly better threshold than NAB's.
    """
    series = corpus.load()
    ws = [score.weights(s.labels) for s in series]
    n_windows = sum(w.n_windows for w in ws)
    stored_path = results_dir.parent / "config" / "thresholds.json"
    stored = json.loads(stored_path.read_text()) if stored_path.exists() else {}
    out: dict[str, Any] = {}
    for det in ("numenta", "windowedGaussian", "random", "null"):
        scores = []
        for s in series:
            group, name = s.name.split("/")
            path = results_dir / det / group / f"{det}_{name}"
            with path.open(newline="") as f:
                scores.append(np.array([float(r["anomaly_score"]) for r in csv.DictReader(f)]))
        out[det] = {}
        for p in PROFILES:
            best = score.sweep(scores, ws, p)
            row = {"swept": score.normalise(best.raw, n_windows, p)}
            if det in stored:
                t = stored[det][p.name]["threshold"]
                raw = sum(score.score_series(x, w, t, p).raw for x, w in zip(scores, ws,
                                                                                strict=True))
                row["at_nab_threshold"] = score.normalise(raw, n_windows, p)
            out[det][p.name] = row
    return out


def main() -> int:
    """Run, print the table, write the JSON and the chart (``--chart-only``: redraw)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-iforest", action="store_true", help="skip the Isolation Forest")
    ap.add_argument("--no-autoencoder", action="store_true",
                    help="skip the autoencoder (it trains with PyTorch, the train extra)")
    ap.add_argument("--no-chart", action="store_true", help="do not draw the PNG")
    ap.add_argument("--nab-results", type=Path, metavar="DIR",
                    help="also score NAB's published result files in DIR (a NAB clone's "
                         "results/) to check the scorer, then stop")
    ap.add_argument("--chart-only", action="store_true",
                    help="redraw the PNG from bench/results/anomaly_eval.json")
    args = ap.parse_args()
    if args.chart_only:
        chart(json.loads((RESULTS / "anomaly_eval.json").read_text()))
        return 0
    if args.nab_results:
        print(json.dumps(check_published(args.nab_results), indent=1))
        return 0
    t0 = time.monotonic()
    data = run(iforest=not args.no_iforest, neural=not args.no_autoencoder)
    data["wall_s"] = time.monotonic() - t0
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "anomaly_eval.json").write_text(json.dumps(data, indent=1) + "\n")
    print(table(data))
    print(f"\nwall {data['wall_s']:.0f} s (machine shared); wrote "
          f"{RESULTS / 'anomaly_eval.json'}")
    if not args.no_chart:
        chart(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
