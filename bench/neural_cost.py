"""What the neural models cost: training CPU, scoring CPU, memory, and PyTorch's install.

    python3 -m bench.neural_cost              # ~1 min; needs the train extra (PyTorch)
    python3 -m bench.neural_cost --install    # also time `pip install torch==2.13.0` into a
                                              # temporary directory (~1 GB of disk, ~40 s)

One device-day of 1 s data (86,400 rows) of a made-up but realistic shape (a daily cycle, a
slow random walk and noise per signal; training cost does not depend on the values: a fixed
number of optimiser steps on sampled windows). Measured, each against the numpy baseline of
the same job in the same run:

- training CPU per device-day: the autoencoder on 16 signals (baseline: fitting ``novelty``
  on the same rows), the LSTM on 3 forecast signals (memory, disk, temperature; baseline:
  damped Holt run over them);
- scoring CPU per reading: one device's step (16 signals) and 1,000 devices in one call
  (16,000 streams, cost / 1,000 readings); the LSTM's step + forecast + time to threshold
  for 3 signals per device; median of 3 runs;
- memory per device: bytes of weights and state in memory, and serialised;
- with ``--install``: wall and CPU time of ``pip install --target TMP torch==2.13.0`` and the
  bytes it writes (torch and everything it pulls in); the temporary directory is removed.

CPU is ``time.process_time`` (all threads; PyTorch is set to one). The machine is shared:
CPU figures are noisy, bytes exact. Writes bench/results/neural_cost.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, machine
from hub.detect.autoencoder import Autoencoder
from hub.detect.forecast import DampedHolt
from hub.detect.model import Floats
from hub.detect.novelty import Novelty
from hub.detect.sequence import LSTMForecaster

DAY = 86_400
SIGNALS = 16
FORECAST_SIGNALS = 3
DEVICES = 1000
TORCH_SPEC = "torch==2.13.0"


def device_day(signals: int, seed: int = 0) -> Floats:
    """One day at 1 s: a daily cycle, a slow random walk and noise per signal."""
    rng = np.random.default_rng(seed)
    t = np.arange(DAY)[:, None]
    cycle = 10.0 * np.sin(2 * np.pi * t / DAY + rng.uniform(0, 6.3, signals))
    walk = np.cumsum(rng.normal(0.0, 0.05, (DAY, signals)), axis=0)
    out: Floats = 50.0 + cycle + walk + rng.normal(0.0, 1.0, (DAY, signals))
    return out


def random_weights(windows: Floats, hidden: int, code: int, seed: int) -> dict[str, Floats]:
    """Untrained weights of the right shapes: scoring cost does not depend on their values."""
    rng = np.random.default_rng(seed)
    k, _, w = windows.shape
    out = {}
    for i, (a, b) in enumerate([(w, hidden), (hidden, code), (code, hidden), (hidden, w)], 1):
        out[f"w{i}"] = rng.normal(0.0, 0.3, (k, a, b))
        out[f"b{i}"] = np.zeros((k, b))
    return out


def random_sequence(z: Floats, hidden: int, horizon: int, seed: int) -> dict[str, Floats]:
    rng = np.random.default_rng(seed)
    return {"w_ih": rng.normal(0, 0.3, (4 * hidden, 2)),
            "w_hh": rng.normal(0, 0.3, (4 * hidden, hidden)),
            "b": np.zeros(4 * hidden), "head_w": rng.normal(0, 0.3, (horizon, hidden)),
            "head_b": np.zeros(horizon)}


def cpu(fn: Callable[[], object]) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def median_us(step: Callable[[], object], calls: int, per: int) -> float:
    """Median over 3 runs of CPU µs per ``per`` readings, ``calls`` calls a run."""
    runs = []
    for _ in range(3):
        t0 = time.process_time()
        for _ in range(calls):
            step()
        runs.append((time.process_time() - t0) / calls / per * 1e6)
    return float(sorted(runs)[1])


def training(day: Floats) -> dict[str, Any]:
    # PyTorch loads its kernels on first use (~1 s once per process): not a training cost.
    Autoencoder(SIGNALS).fit(day[:500])
    LSTMForecaster(1).fit(day[:500, :1])
    ae = Autoencoder(SIGNALS)
    novelty = Novelty(SIGNALS)
    lstm = LSTMForecaster(FORECAST_SIGNALS)
    holt = DampedHolt(FORECAST_SIGNALS)
    three = day[:, :FORECAST_SIGNALS]
    out = {
        "autoencoder_16_signals_s": cpu(lambda: ae.fit(day)),
        "novelty_fit_16_signals_s": cpu(lambda: novelty.fit(day)),
        "lstm_3_signals_s": cpu(lambda: lstm.fit(three)),
        "damped_holt_run_3_signals_s": cpu(lambda: [holt.step(r) for r in three]),
    }
    return {k: round(v, 3) for k, v in out.items()}


def cycling(step: Callable[[Floats], object], rows: Floats) -> Callable[[], object]:
    """A call of ``step`` on the next row of ``rows``, round and round."""
    it = itertools.cycle(rows)
    return lambda: step(next(it))


def scoring() -> dict[str, Any]:
    rng = np.random.default_rng(1)
    out: dict[str, Any] = {}
    for k, label, calls in ((SIGNALS, "one_device", 2000), (SIGNALS * DEVICES, "batched", 30)):
        per = 1 if k == SIGNALS else DEVICES
        rows = rng.normal(50, 10, (calls, k))
        hist = rng.normal(50, 10, (400, k))
        ae = Autoencoder(k, trainer=random_weights)
        ae.fit(hist)
        nov = Novelty(k)
        nov.fit(hist)
        out[f"autoencoder_{label}_us_per_reading"] = median_us(cycling(ae.step, rows), calls,
                                                               per)
        out[f"novelty_{label}_us_per_reading"] = median_us(cycling(nov.step, rows), calls, per)
        kf = FORECAST_SIGNALS * per
        fr = rng.normal(50, 10, (calls, kf))
        lstm = LSTMForecaster(kf, trainer=random_sequence, warm_rows=0)
        lstm.fit(rng.normal(50, 10, (64, kf)))
        thr = np.full(kf, 90.0)

        def lstm_step(x: Floats, f: LSTMForecaster = lstm, t: Floats = thr) -> None:
            f.step(x)  # read the value, then the time to the threshold as an alert needs
            f.steps_to(t)

        out[f"lstm_{label}_us_per_reading"] = median_us(cycling(lstm_step, fr), calls, per)
        out[f"damped_holt_{label}_us_per_reading"] = median_us(
            cycling(DampedHolt(kf).step, fr), calls, per)
    return {k: round(v, 2) for k, v in out.items()}


def memory(day: Floats) -> dict[str, Any]:
    ae = Autoencoder(SIGNALS, trainer=random_weights)
    ae.fit(day[:2000])
    lstm = LSTMForecaster(FORECAST_SIGNALS, trainer=random_sequence)
    lstm.fit(day[:2000, :FORECAST_SIGNALS])
    nov = Novelty(SIGNALS)
    nov.fit(day[:2000])
    nov_bytes = sum(a.nbytes for a in nov.state.values())
    per_device = ae.nbytes() + lstm.nbytes()
    return {"autoencoder_bytes": ae.nbytes(), "autoencoder_serialised_bytes":
            len(ae.to_bytes()), "lstm_3_signals_bytes": lstm.nbytes(),
            "lstm_serialised_bytes": len(lstm.to_bytes()), "novelty_bytes": nov_bytes,
            "neural_per_device_bytes": per_device,
            "neural_1000_devices_mb": per_device * DEVICES / 1e6}


def install() -> dict[str, Any]:
    """Time a fresh ``pip install`` of PyTorch (and what it pulls in) into a temporary dir."""
    with tempfile.TemporaryDirectory(prefix="fleetpulse-torch-") as tmp:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", tmp,
                        TORCH_SPEC], check=True)
        wall = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        sizes: dict[str, int] = {}
        for entry in Path(tmp).iterdir():
            name = entry.name.split("-")[0] if entry.name.endswith(".dist-info") else entry.name
            if entry.is_dir():
                n = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
            else:
                n = entry.stat().st_size
            sizes[name] = sizes.get(name, 0) + n
        shutil.rmtree(tmp, ignore_errors=True)
    total = sum(sizes.values())
    top = dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:8])
    return {"spec": TORCH_SPEC, "wall_s": round(wall, 1),
            "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
                           1), "bytes": total, "largest": top}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--install", action="store_true",
                    help=f"also time `pip install {TORCH_SPEC}` into a temporary directory")
    args = ap.parse_args()
    t0 = time.monotonic()
    day = device_day(SIGNALS)
    print("training on one device-day ...", flush=True)
    data: dict[str, Any] = {"training_cpu_s_per_device_day": training(day)}
    print("scoring ...", flush=True)
    data["scoring"] = scoring()
    data["memory"] = memory(day)
    if args.install:
        print(f"pip install {TORCH_SPEC} into a temporary directory ...", flush=True)
        data["install"] = install()
    data["wall_s"] = round(time.monotonic() - t0, 1)
    data["machine"] = machine()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "neural_cost.json").write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps({k: v for k, v in data.items() if k != "machine"}, indent=1))
    print(f"wall {data['wall_s']:.0f} s (machine shared: CPU noisy, bytes exact); wrote "
          f"{RESULTS / 'neural_cost.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
