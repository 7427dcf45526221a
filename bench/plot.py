"""Turn bench/results/*.json into PNG charts next to them.

    python3 -m bench.plot            # every result file present
    python3 -m bench.plot hub_ingest_nodered   # the hub charts of a --label'd run, named after it
    pip install matplotlib           # (the ``bench`` extra) — used only here

Charts: hub_ingest_rates.png (rate offered vs delivered), hub_ingest_latency.png (publish →
commit p50/p99), hub_ingest_cpu.png (who used the CPU at each hub's best rate),
hub_ingest_hubs.png (fleetpulse, minimal hub and Node-RED side by side: best sustained rate
and CPU per message at it),
agent_cost.png (CPU against collectd, per-call breakdown), storage.png (write paths),
forecast_eval.png (forecast error and warnings per method), neural_cost.png (the neural
models' scoring and training CPU against their numpy baselines).
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.common import RESULTS

HUB_COLORS = {"fleetpulse": "tab:blue", "minimal": "tab:orange", "nodered": "tab:red"}
STYLE = {(hub, qos): (color, "-" if qos else "--") for hub, color in HUB_COLORS.items()
         for qos in (0, 1)}


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _series(windows: list[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    out: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for w in windows:
        if "rows" in w:
            out.setdefault((w["hub"], w["qos"]), []).append(w)
    for ws in out.values():
        ws.sort(key=lambda w: w["rate"])
    return out


def delivered_rate(w: dict[str, Any]) -> float:
    """Rows stored per second, from the first publish to the last commit."""
    g = w["generator"]
    span = g["last_publish"] - g["first_publish"] + max(
        0.0, w["last_commit_after_last_publish_s"] or 0.0)
    return float(w["distinct"]) / span if span > 0 else 0.0


def plot_hub(data: dict[str, Any], name: str = "hub_ingest") -> list[Path]:
    series = _series(data["windows"])
    note = (f"{data['devices']} devices, {data['payload_bytes']}-byte messages, "
            f"{data['window_s']:g} s windows, {data['machine']['nproc']} cores shared by "
            "generator, broker, hub, PostgreSQL" + (f"; {data['note']}" if data.get("note")
                                                    else ""))
    note = textwrap.fill(note, 125)
    paths = []

    fig, ax = plt.subplots(figsize=(8, 5.5))
    top = 0
    for (hub, qos), ws in sorted(series.items()):
        color, line = STYLE.get((hub, qos), ("gray", ":"))
        xs = [w["rate"] for w in ws]
        ys = [delivered_rate(w) for w in ws]
        top = max(top, *xs)
        ax.plot(xs, ys, line, color=color, label=f"{hub} hub, QoS {qos}")
        for w, x, y in zip(ws, xs, ys, strict=True):
            ax.plot(x, y, "o", color=color, markerfacecolor=color if w["sustained"] else "white")
    ax.plot([0, top], [0, top], ":", color="gray", label="delivered = offered")
    ax.set_xlabel("offered rate (msg/s)")
    ax.set_ylabel("delivered rate (rows/s, first publish → last commit)")
    ax.set_title("Hub ingest: offered vs delivered (filled = sustained: 0 lost, 0 dup, "
                 "last commit ≤ 1 s)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.text(0.01, 0.01, note, fontsize=7)
    paths.append(_save(fig, f"{name}_rates.png"))

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for (hub, qos), ws in sorted(series.items()):
        color, line = STYLE.get((hub, qos), ("gray", ":"))
        xs = [w["rate"] for w in ws]
        ax.plot(xs, [w["latency_p99_s"] for w in ws], line, color=color, marker="o",
                label=f"{hub}, QoS {qos}, p99")
        ax.plot(xs, [w["latency_p50_s"] for w in ws], line, color=color, marker="x", alpha=0.5,
                label=f"{hub}, QoS {qos}, p50")
    ax.axhline(1.0, color="red", lw=0.8, label="target p99 ≤ 1 s")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (msg/s)")
    ax.set_ylabel("publish → commit latency (s)")
    ax.set_title("Hub ingest latency (PostgreSQL commit timestamp − ts set at publish)",
                 fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, which="both")
    fig.text(0.01, 0.01, note, fontsize=7)
    paths.append(_save(fig, f"{name}_latency.png"))

    fig, ax = plt.subplots(figsize=(8, 5.5))
    parts = ["hub", "broker", "postgresql", "generator", "interrupts", "others"]
    labels, stacks = [], []
    for (hub, qos), ws in sorted(series.items()):
        ok = [w for w in ws if w["sustained"]]
        w = ok[-1] if ok else ws[0]
        labels.append(f"{hub}\nQoS {qos}\n{w['rate']:,}/s{'' if ok else ' (not sust.)'}")
        stacks.append([max(0.0, w["cpu_percent"].get(p, 0.0)) for p in parts])
    bottom = [0.0] * len(labels)
    for i, part in enumerate(parts):
        values = [s[i] for s in stacks]
        ax.bar(labels, values, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.axhline(100 * data["machine"]["nproc"], color="black", lw=0.8, ls=":",
               label="all cores")
    ax.set_ylabel("% of one core during the window")
    ax.set_title("CPU at each hub's best sustained rate (others: work on the machine that is "
                 "not this benchmark's)", fontsize=9)
    ax.legend(fontsize=7)
    fig.subplots_adjust(bottom=0.2)
    fig.text(0.01, 0.01, note, fontsize=7)
    paths.append(_save(fig, f"{name}_cpu.png"))

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for (hub, qos), ws in sorted(series.items()):
        color, line = STYLE.get((hub, qos), ("gray", ":"))
        ws = [w for w in ws if "cpu_us_per_message" in w]
        xs = [w["rate"] for w in ws]
        ax.plot(xs, [w["cpu_us_per_message"]["hub"] for w in ws], line, color=color,
                marker="o", label=f"{hub} hub process, QoS {qos}")
        ax.plot(xs, [w["cpu_us_per_message"]["postgresql"] for w in ws], line, color=color,
                marker="s", alpha=0.5, label=f"PostgreSQL for {hub}, QoS {qos}")
    ax.set_xlabel("offered rate (msg/s)")
    ax.set_ylabel("CPU µs per stored message (window + drain)")
    ax.set_ylim(bottom=0)
    ax.set_title("What one message costs: hub process and database", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.text(0.01, 0.01, note, fontsize=7)
    paths.append(_save(fig, f"{name}_cost.png"))
    paths.append(plot_hubs(series, note, name))
    return paths


def plot_hubs(series: dict[tuple[str, int], list[dict[str, Any]]], note: str,
              name: str) -> Path:
    """The hubs side by side, per QoS: best sustained rate, and CPU per message at it."""
    hubs = [h for h in HUB_COLORS if any(k[0] == h for k in series)]
    qos_list = sorted({k[1] for k in series}, reverse=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.5))
    width = 0.8 / max(1, len(hubs))
    parts = ["hub", "postgresql", "broker", "generator"]
    hatches = ["", "//", "..", "xx"]
    for i, hub in enumerate(hubs):
        xs = [q + (i - (len(hubs) - 1) / 2) * width for q in range(len(qos_list))]
        best, costs = [], []
        for qos in qos_list:
            ok = [w for w in series.get((hub, qos), []) if w["sustained"]]
            best.append(ok[-1]["rate"] if ok else 0)
            costs.append(ok[-1]["cpu_us_per_message"] if ok else {})
        bars = left.bar(xs, best, width, color=HUB_COLORS[hub], label=hub)
        for bar, rate in zip(bars, best, strict=True):
            left.annotate(f"{rate:,}" if rate else "none", (bar.get_x() + bar.get_width() / 2,
                                                           bar.get_height()),
                          ha="center", va="bottom", fontsize=7)
        bottom = [0.0] * len(xs)
        for part, hatch in zip(parts, hatches, strict=True):
            values = [c.get(part, 0.0) for c in costs]
            right.bar(xs, values, width, bottom=bottom, color=HUB_COLORS[hub], hatch=hatch,
                      edgecolor="white", label=hub if part == "hub" else None)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for ax in (left, right):
        ax.set_xticks(range(len(qos_list)), [f"QoS {q}" for q in qos_list])
        ax.grid(alpha=0.3, axis="y")
    left.set_ylabel("highest sustained rate in the sweep (msg/s)")
    left.set_title("Best sustained rate (0 lost, 0 dup, last commit ≤ 1 s; the sweep's "
                   "rates only)", fontsize=9)
    left.legend(fontsize=8)
    right.set_ylabel("CPU µs per stored message, at that rate")
    right.set_title("CPU per message: hub (plain), PostgreSQL (//), broker (..), "
                    "generator (xx)", fontsize=9)
    right.legend(fontsize=8)
    fig.text(0.01, 0.01, note, fontsize=7)
    return _save(fig, f"{name}_hubs.png")


def plot_agent(data: dict[str, Any]) -> list[Path]:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.5),
                                      gridspec_kw={"width_ratios": [1, 2]})
    runs = {n: r for n, r in data["runs"].items() if r["messages_per_s"] > 0}
    colors = {"agent": "tab:blue", "agent_no_site": "tab:cyan", "agent_baseline": "tab:gray",
              "collectd": "tab:orange", "floor": "tab:olive"}
    names = list(runs)
    bars = left.bar(names, [runs[n]["cpu"]["schedstat_percent"] for n in names],
                    color=[colors.get(n, "tab:gray") for n in names])
    for bar, n in zip(bars, names, strict=True):
        r = runs[n]
        left.annotate(f"{r['cpu']['schedstat_percent']:.3f} %\n{r['values_per_s']:.0f} values/s"
                      f"\n{r['rss_steady_mb']:.1f} MB", (bar.get_x() + bar.get_width() / 2,
                                                          bar.get_height()),
                      ha="center", va="bottom", fontsize=7)
    left.axhline(0.10, color="red", lw=0.8, label="target 0.10 %")
    left.set_ylim(0, max(r["cpu"]["schedstat_percent"] for r in runs.values()) * 1.3)
    left.set_ylabel("CPU, % of one core (schedstat)")
    left.set_title(f"Agents publishing every 1 s ({data['window_s']:.0f} s window)", fontsize=9)
    left.legend(fontsize=7)
    left.tick_params(axis="x", labelsize=8)
    calls = data["breakdown"]["calls"]
    order = [n for n in sorted(calls, key=lambda n: calls[n]["median_us_1hz"])
             if not n.endswith("total") and n not in ("collect+build+encode",
                                                       "Collector._sample_proc")]
    ys = range(len(order))
    right.barh([y + 0.2 for y in ys], [calls[n]["median_us_1hz"] for n in order], height=0.4,
               label="once a second (as the agent runs)")
    right.barh([y - 0.2 for y in ys], [calls[n]["median_us_back_to_back"] or 0 for n in order],
               height=0.4, label="back to back")
    right.set_yticks(list(ys), order, fontsize=7)
    right.set_xlabel("median µs per call")
    total = calls["collect+build+encode"]["median_us_1hz"]
    title = f"One reading at 1 Hz: {total:.0f} µs"
    before = _load("agent_cost_before")
    if before is not None:
        was = before["breakdown"]["calls"]
        title += (f" (before, through psutil: {was['collect+build+encode']['median_us_1hz']:.0f};"
                  f" collect {was['sample() total']['median_us_1hz']:.0f} → "
                  f"{calls['sample() total']['median_us_1hz']:.0f})")
    right.set_title(title, fontsize=9)
    right.legend(fontsize=7)
    fig.tight_layout()
    return [_save(fig, "agent_cost.png")]


def plot_storage(data: dict[str, Any]) -> list[Path]:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = data["methods"]
    bars = ax.bar(list(methods), [m["rows_per_s"] for m in methods.values()],
                  color=["tab:gray", "tab:green", "tab:blue"][:len(methods)])
    for bar in bars:
        ax.annotate(f"{bar.get_height():,.0f}", (bar.get_x() + bar.get_width() / 2,
                                                bar.get_height()), ha="center", va="bottom",
                    fontsize=8)
    ax.set_ylabel("rows/s (commit per batch)")
    b = data["bytes_per_row"]
    ax.set_title(f"Writing {data['rows']:,} rows in batches of {data['batch']:,}; stored: "
                 f"{b['total']:.0f} bytes/row ({b['indexes']:.0f} of it indexes)", fontsize=9)
    return [_save(fig, "storage.png")]


def plot_forecast(data: dict[str, Any]) -> list[Path]:
    fig, axes = plt.subplots(1, len(data["series"]), figsize=(11, 4.2))
    for ax, r in zip(np.atleast_1d(axes), data["series"], strict=True):
        methods = r["methods"]
        steps = sorted(int(h) for h in next(iter(methods.values()))["mae"])
        for label, m in methods.items():
            warned = f"{m['events_warned']}/{r['events']} warned"
            ax.plot(steps, [m["mae"][str(h)] for h in steps], marker="o",
                    label=f"{label}: {warned}, {m['false_warning_steps_per_day']:.1f} false/day")
        ax.set_xlabel(f"steps ahead (1 step = {r['step_s'] / 60:.0f} min)")
        ax.set_ylabel("mean absolute error")
        ax.set_title(r["series"].split("/")[-1], fontsize=9)
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return [_save(fig, "forecast_eval.png")]


def plot_neural_cost(data: dict[str, Any]) -> list[Path]:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    sc = data["scoring"]
    names = ["autoencoder", "novelty", "lstm", "damped_holt"]
    x = np.arange(len(names))
    for off, label in ((-0.2, "one_device"), (0.2, "batched")):
        bars = left.bar(x + off, [sc[f"{n}_{label}_us_per_reading"] for n in names], 0.4,
                        label={"one_device": "one device per call",
                               "batched": "1,000 devices per call"}[label])
        left.bar_label(bars, fmt="%.1f", fontsize=7)
    left.axhline(20, color="red", lw=0.8, label="target 20 µs")
    left.set_xticks(x, ["autoencoder\n(16 signals)", "novelty\n(16 signals)",
                        "LSTM\n(3 signals)", "damped Holt\n(3 signals)"], fontsize=8)
    left.set_yscale("log")
    left.set_ylabel("CPU µs per reading")
    left.legend(fontsize=7)
    tr = data["training_cpu_s_per_device_day"]
    bars = right.bar(list(tr), list(tr.values()), color="tab:gray")
    right.bar_label(bars, fmt="%.2f s", fontsize=7)
    right.axhline(1.0, color="red", lw=0.8, label="target 1 s")
    right.set_xticks(range(len(tr)), [k.removesuffix("_s").replace("_", " ") for k in tr],
                     fontsize=7, rotation=15)
    right.set_ylabel("CPU s per device-day of 1 s data")
    right.legend(fontsize=7)
    mem = data["memory"]
    fig.suptitle(f"Neural models: memory {mem['neural_per_device_bytes']:,} bytes per device "
                 f"({mem['neural_1000_devices_mb']:.0f} MB per 1,000); shared 2-core VM, "
                 "CPU noisy", fontsize=9)
    fig.tight_layout()
    return [_save(fig, "neural_cost.png")]


def _save(fig: Any, name: str) -> Path:
    if name.startswith("hub_ingest"):  # room for the note under the axes
        fig.subplots_adjust(bottom=max(fig.subplotpars.bottom, 0.16))
    path = RESULTS / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> int:
    made: list[Path] = []
    if len(sys.argv) > 1:  # named hub_ingest results (``--label``): charts named after them
        for name in sys.argv[1:]:
            data = _load(name)
            if data is None:
                print(f"no {RESULTS / name}.json", file=sys.stderr)
                return 1
            made += plot_hub(data, name)
    for name, fn in (("hub_ingest", plot_hub), ("agent_cost", plot_agent),
                     ("storage", plot_storage), ("forecast_eval", plot_forecast),
                     ("neural_cost", plot_neural_cost)):
        data = _load(name) if len(sys.argv) == 1 else None
        if data is not None:
            made += fn(data)
    for path in made:
        print(path)
    return 0 if made else 1


if __name__ == "__main__":
    sys.exit(main())
